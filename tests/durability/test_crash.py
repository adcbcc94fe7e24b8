"""Durability: a 2xx for a write means it survives kill -9.

Concurrent clients create sessions and patch their titles against the real
binary; once enough writes were acknowledged, the server is killed with
SIGKILL in the middle of the load and restarted on the same data dir.  Every
acknowledged create must be there, and every session's title must be its
last acknowledged value (or the value of the one patch that was still in
flight, unacknowledged, when the server died).
"""
import importlib.util
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
_spec = importlib.util.spec_from_file_location(
    "loopd_api_helpers", os.path.join(ROOT, "tests", "api", "conftest.py"))
h = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(h)


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    p = s.getsockname()[1]
    s.close()
    return p


def start(data_dir, key, port, timeout=15, wait=True, level="warn"):
    env = dict(os.environ, LOOPD_BOOTSTRAP_KEY=key)
    log = open(os.path.join(data_dir, "stderr.log"), "ab")
    p = subprocess.Popen([BIN, "--listen", f"127.0.0.1:{port}", "--data-dir", data_dir,
                          "--log-level", level], env=env, stdout=log, stderr=log)
    if not wait:
        return p
    deadline = time.monotonic() + timeout
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


def test_kill9_during_a_schema_migration_loses_nothing():
    """A migration runs in one transaction: killed in the middle of schema
    11's rebuild of a big sessions table, the database is the schema-10 one
    it was, whole, and the next start migrates it with every session as it
    was and the chat singleton still one."""
    import json
    import sqlite3
    key = "evr_pat_" + secrets.token_hex(24)
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    with tempfile.TemporaryDirectory() as d:
        proc = start(d, key, port)
        s = requests.Session()
        s.headers["Authorization"] = key
        chat = s.post(base + "/v1/sessions/chat", timeout=5).json()["id"]
        ids = [s.post(base + "/v1/sessions", json={"title": "kept %d" % i}, timeout=5).json()["id"]
               for i in range(3)]
        assert s.put(base + f"/v1/sessions/{ids[0]}/pin", timeout=5).status_code == 204
        before = {sid: s.get(base + f"/v1/sessions/{sid}", timeout=5).json() for sid in [chat] + ids}
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(20) == 0

        # schema 10's table (singleton_key UNIQUE) holding 200,000 more sessions
        n_more = 200000
        path = os.path.join(d, "loopd.db")
        db = sqlite3.connect(path)
        db.executescript(
            h.schema10_sessions_sql(db) +
            " WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < %d)"
            " INSERT INTO sessions(id, org_id, workspace_id, harness_id, owner_principal_id,"
            "   owner_user_id, model_id, title, tags, extra, features, status, source, created_at,"
            "   updated_at, last_activity_at)"
            " SELECT printf('session_%%032x', i), org_id, printf('wsp_%%032x', i), harness_id,"
            "   owner_principal_id, owner_user_id, model_id, 'bulk', tags, extra, features, status,"
            "   source, created_at - i, created_at - i, created_at - i FROM n,"
            "   (SELECT * FROM sessions WHERE id = '%s');"
            " UPDATE session_counts SET n = n + %d WHERE status = 0;"
            " PRAGMA user_version = 10;" % (n_more, ids[1], n_more))
        db.close()

        proc = start(d, key, port, wait=False, level="info")  # the migration's log line
        log = os.path.join(d, "stderr.log")
        deadline = time.monotonic() + 30
        while "migrating the database schema" not in open(log).read():
            assert proc.poll() is None and time.monotonic() < deadline, open(log).read()[-2000:]
            time.sleep(0.005)  # polling the log for the line, bounded by the deadline
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        db = sqlite3.connect(path)
        # the kill landed mid-migration: nothing of it stayed
        assert db.execute("PRAGMA user_version").fetchone()[0] == 10, open(log).read()[-2000:]
        assert db.execute("SELECT count(*) FROM sessions").fetchone()[0] == n_more + 4
        assert db.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        db.close()

        proc = start(d, key, port, timeout=120, level="info")
        try:
            assert "database schema migrated" in open(log).read()
            old_base = before[chat]["self_url"].split("/v1/")[0]
            for sid, body in before.items():
                got = s.get(base + f"/v1/sessions/{sid}", timeout=5).json()
                assert got == json.loads(json.dumps(body).replace(old_base, base))
            assert s.get(base + "/v1/sessions", timeout=30).json()["total"] == n_more + 4
            assert s.get(base + "/v1/sessions/stats", timeout=5).json()["total"] == n_more + 4
            assert s.post(base + "/v1/sessions/chat", timeout=5).json()["id"] == chat
        finally:
            proc.send_signal(signal.SIGTERM)
            assert proc.wait(20) == 0
        db = sqlite3.connect(path)
        assert db.execute("PRAGMA user_version").fetchone()[0] >= 11
        assert db.execute("SELECT count(*) FROM sessions WHERE singleton_key IS NOT NULL").fetchone()[0] == 1
        db.close()
