"""Durability: a 2xx for a write means it survives kill -9.

Concurrent clients create sessions and patch their titles against the real
binary; once enough writes were acknowledged, the server is killed with
SIGKILL in the middle of the load and restarted on the same data dir.  Every
acknowledged create must be there, and every session's title must be its
last acknowledged value (or the value of the one patch that was still in
flight, unacknowledged, when the server died).
"""
import os
import secrets
import signal
import socket
import subprocess
import tempfile
import threading
import time

import requests

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
BIN = os.environ.get("LOOPD_BIN", os.path.join(ROOT, "build", "loopd"))


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    p = s.getsockname()[1]
    s.close()
    return p


def start(data_dir, key, port):
    env = dict(os.environ, LOOPD_BOOTSTRAP_KEY=key)
    log = open(os.path.join(data_dir, "stderr.log"), "ab")
    p = subprocess.Popen([BIN, "--listen", f"127.0.0.1:{port}", "--data-dir", data_dir,
                          "--log-level", "warn"], env=env, stdout=log, stderr=log)
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        assert p.poll() is None, "loopd exited during start"
        try:
            if requests.get(f"http://127.0.0.1:{port}/healthz", timeout=1).status_code == 200:
                return p
        except requests.RequestException:
            pass
        time.sleep(0.02)  # polling for readiness, bounded by the deadline
    p.kill()
    raise AssertionError("loopd did not become ready")


def test_kill9_under_load_loses_no_acknowledged_write():
    key = "evr_pat_" + secrets.token_hex(24)
    port = free_port()
    with tempfile.TemporaryDirectory() as d:
        proc = start(d, key, port)
        base = f"http://127.0.0.1:{port}"
        acked = {}      # session id -> last acknowledged title
        inflight = {}   # session id -> title of the patch sent but not answered
        lock = threading.Lock()
        enough = threading.Event()
        stop = threading.Event()
        count = [0]

        def worker(n):
            s = requests.Session()
            s.headers["Authorization"] = key
            mine = []
            i = 0
            while not stop.is_set():
                i += 1
                try:
                    if len(mine) < 5 or i % 3 == 0:
                        r = s.post(base + "/v1/sessions", json={"title": f"w{n}-{i}"}, timeout=5)
                        if r.status_code == 201:
                            sid = r.json()["id"]
                            mine.append(sid)
                            with lock:
                                acked[sid] = f"w{n}-{i}"
                    else:
                        sid = mine[i % len(mine)]
                        title = f"p{n}-{i}"
                        with lock:
                            inflight[sid] = title
                        r = s.patch(base + f"/v1/sessions/{sid}", json={"title": title}, timeout=5)
                        with lock:
                            if r.status_code == 200:
                                assert r.json()["title"] == title
                                acked[sid] = title
                            inflight.pop(sid, None)
                    with lock:
                        count[0] += 1
                        if count[0] >= 1500:
                            enough.set()
                except requests.RequestException:
                    return  # the server died under us: this request is unacknowledged

        threads = [threading.Thread(target=worker, args=(n,)) for n in range(16)]
        for t in threads:
            t.start()
        assert enough.wait(60), "the load did not reach 1500 writes"
        proc.send_signal(signal.SIGKILL)   # mid-load: requests are in flight
        proc.wait()
        stop.set()
        for t in threads:
            t.join(10)
        with lock:
            acked_snapshot = dict(acked)
            inflight_snapshot = dict(inflight)
        assert len(acked_snapshot) > 50

        proc = start(d, key, port)
        try:
            s = requests.Session()
            s.headers["Authorization"] = key
            for sid, title in acked_snapshot.items():
                r = s.get(base + f"/v1/sessions/{sid}", timeout=5)
                assert r.status_code == 200, f"acknowledged session {sid} lost"
                got = r.json()["title"]
                assert got == title or got == inflight_snapshot.get(sid), \
                    f"{sid}: title {got!r}, acknowledged {title!r}"
            total = s.get(base + "/v1/sessions", timeout=5).json()["total"]
            assert total >= len(acked_snapshot)
            stats = s.get(base + "/v1/sessions/stats", timeout=5).json()
            assert stats["total"] == total
        finally:
            proc.send_signal(signal.SIGTERM)
            assert proc.wait(20) == 0
