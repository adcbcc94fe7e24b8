#!/usr/bin/python3
"""Instructions per request: loopd's CPU work counted, not timed.

    bench/instr.py [--report FILE]

The wall-clock cases of bench/run move with the speed of the VM (the same
binary measured 123,000 to 204,000 POSTs in 8 s within one hour here), so
a change that saves 5 % of the CPU cannot be seen in them.  This counts
the user-space instructions loopd executes per request under callgrind
(valgrind), which the host's speed does not change.  The kernel's share
(TCP, the fsyncs) is not counted: perf's figures for it are in the README.

Cases, each against a fresh data dir, counting only between the
callgrind_control switches (start-up and warm-up are left out):
  post_seq   2,000 POST /v1/sessions one after another on one connection
             (each commit holds one create: the writer's per-commit cost
             is all in it)
  post_load  wrk, 64 connections, BENCH_INSTR_SECONDS (4) of POSTs: group
             commits form as in case 3 of bench/run (valgrind runs one
             thread at a time, so batches are smaller than at full speed);
             split by thread: the loop, the writer, the checkpointer
  get_seq    2,000 GET /v1/sessions/{id} of one session, --reply-cache off
             (each read and rendered)
  turn_seq   BENCH_INSTR_TURNS (300) turns of one session one after another
             (build/turnload seq: a message POSTed, llmsim's answer, the
             turn's events on the session's SSE stream), all threads; the
             turn benchmarks' latency moves with the disk, this does not

Prints one `INSTR name=value ...` line per case and, with --report, appends
a Markdown section to FILE.  Needs valgrind, wrk, build/loopd and
build/turnload (bench/run compiles it; BENCH_INSTR_LOOPD=path counts
another loopd, e.g. an older build).
"""
import http.client
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import time

HOST = "127.0.0.1"
KEY = "evr_pat_benchinstrbenchinstrbenchinstr"
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
LOOPD = os.environ.get("BENCH_INSTR_LOOPD") or os.path.join(ROOT, "build", "loopd")
LUA = os.path.join(ROOT, "bench", "loopd.lua")
N_SEQ = int(os.environ.get("BENCH_INSTR_N", "2000"))
N_TURNS = int(os.environ.get("BENCH_INSTR_TURNS", "300"))
TURNLOAD = os.path.join(ROOT, "build", "turnload")
SECONDS = int(os.environ.get("BENCH_INSTR_SECONDS", "4"))
BODY = json.dumps({"title": "bench", "tags": ["a", "b"]})  # what bench/loopd.lua posts


def freeport():
    s = socket.socket()
    s.bind((HOST, 0))
    port = s.getsockname()[1]
    s.close()
    return port


class Loopd:
    """build/loopd under callgrind with instrumentation off until asked."""

    def __init__(self, tmp, name, *extra):
        self.port = freeport()
        self.out = os.path.join(tmp, name + ".callgrind")
        self.data = os.path.join(tmp, name + "-data")
        env = dict(os.environ, LOOPD_BOOTSTRAP_KEY=KEY)
        self.log = open(os.path.join(tmp, name + ".log"), "wb")
        self.p = subprocess.Popen(
            ["valgrind", "--tool=callgrind", "--instr-atstart=no",
             "--callgrind-out-file=" + self.out, LOOPD, "--listen", "%s:%d" % (HOST, self.port),
             "--data-dir", self.data, "--log-level", "error", "--request-timeout", "120"] + list(extra),
            env=env, stdout=self.log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 60
        while True:
            try:
                if self.request("GET", "/healthz")[0] == 200:
                    break
            except OSError:
                pass
            if self.p.poll() is not None or time.monotonic() > deadline:
                sys.exit("instr.py: loopd under valgrind did not start (see %s.log)" % name)
            time.sleep(0.2)

    def request(self, method, path, body=None, conn=None):
        c = conn or http.client.HTTPConnection(HOST, self.port, timeout=120)
        h = {"Authorization": "Bearer " + KEY}
        if body is not None:
            h["Content-Type"] = "application/json"
        c.request(method, path, body=body, headers=h)
        r = c.getresponse()
        data = r.read()
        if conn is None:
            c.close()
        return r.status, data

    def instrument(self, on):
        subprocess.run(["callgrind_control", "-i", "on" if on else "off", str(self.p.pid)],
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=True)

    def metric(self, name):
        _, text = self.request("GET", "/metrics")
        for line in text.decode().splitlines():
            if line.startswith(name + " "):
                return float(line.split()[1])
        return 0.0

    def stop(self):
        self.p.terminate()
        self.p.wait(120)
        self.log.close()

    def counts(self):
        """instructions in all, and by thread start function (inclusive)"""
        files = [f for f in os.listdir(os.path.dirname(self.out))
                 if f.startswith(os.path.basename(self.out))]
        total, by = 0, {}
        for f in files:
            out = subprocess.run(["callgrind_annotate", "--inclusive=yes", "--threshold=100",
                                  os.path.join(os.path.dirname(self.out), f)],
                                 capture_output=True, text=True, check=True).stdout
            for line in out.splitlines():
                m = re.match(r"\s*([\d,]+) .*PROGRAM TOTALS", line)
                if m:
                    total += int(m.group(1).replace(",", ""))
                m = re.match(r"\s*([\d,]+) \(.*\)\s+\S*:(writer_main|checkpointer_main) \[", line)
                if m and m.group(2) not in by:
                    by[m.group(2)] = int(m.group(1).replace(",", ""))
        return total, by


def one_at_a_time(s, method, path, body, status):
    """200 requests to warm up, then N_SEQ counted, on one connection"""
    c = http.client.HTTPConnection(HOST, s.port, timeout=120)
    for _ in range(200):
        s.request(method, path, body, c)
    s.instrument(True)
    for _ in range(N_SEQ):
        st, _ = s.request(method, path, body, c)
        if st != status:
            sys.exit("instr.py: %s %s answered %d" % (method, path, st))
    s.instrument(False)
    s.stop()
    total, _ = s.counts()
    return {"per_request": total // N_SEQ, "requests": N_SEQ}


def post_seq(tmp):
    return one_at_a_time(Loopd(tmp, "post_seq"), "POST", "/v1/sessions", BODY, 201)


def post_load(tmp):
    s = Loopd(tmp, "post_load")
    env = dict(os.environ, BENCH_KEY="Bearer " + KEY, BENCH_MODE="post")
    url = "http://%s:%d/v1/sessions" % (HOST, s.port)
    wrk = ["wrk", "-t1", "-c64", "-s", LUA, url]
    subprocess.run(wrk[:3] + ["-d2s"] + wrk[3:], env=env, stdout=subprocess.DEVNULL, check=True)
    commits0 = s.metric("loopd_store_commit_batch_size_count")
    s.instrument(True)
    out = subprocess.run(wrk[:3] + ["-d%ds" % SECONDS] + wrk[3:], env=env,
                         capture_output=True, text=True, check=True).stdout
    s.instrument(False)
    commits = s.metric("loopd_store_commit_batch_size_count") - commits0
    s.stop()
    m = re.search(r"BENCH_RESULT requests=(\d+).* err_status=(\d+) err_connect=(\d+) err_read=(\d+)"
                  r" err_write=(\d+) err_timeout=(\d+)", out)
    if not m or int(m.group(1)) == 0 or any(int(x) for x in m.groups()[1:]):
        sys.exit("instr.py: the loaded POST run saw errors or no requests:\n" + out)
    n = int(m.group(1))
    total, by = s.counts()
    w, k = by.get("writer_main", 0), by.get("checkpointer_main", 0)
    return {"per_request": total // n, "loop": (total - w - k) // n, "writer": w // n,
            "checkpointer": k // n, "requests": n,
            "per_commit": round(n / commits, 1) if commits else 0}


def get_seq(tmp):
    s = Loopd(tmp, "get_seq", "--reply-cache", "off")
    _, body = s.request("POST", "/v1/sessions", BODY)
    return one_at_a_time(s, "GET", "/v1/sessions/" + json.loads(body)["id"], None, 200)


def turn_seq(tmp):
    s = Loopd(tmp, "turn_seq")

    def turns(n, warm):
        r = subprocess.run([TURNLOAD, "seq", "port=%d" % s.port, "key=" + KEY, "pid=%d" % s.p.pid,
                            "n=%d" % n, "warm=%d" % warm, "timeout=120"],
                           capture_output=True, text=True, timeout=600)
        if r.returncode != 0 or "ERROR" in r.stderr:
            sys.exit("instr.py: turnload seq failed:\n" + r.stdout + r.stderr)

    turns(50, 10)
    s.instrument(True)
    turns(N_TURNS, 0)
    s.instrument(False)
    s.stop()
    total, _ = s.counts()
    return {"per_turn": total // N_TURNS, "turns": N_TURNS}


def main():
    report = None
    if len(sys.argv) == 3 and sys.argv[1] == "--report":
        report = sys.argv[2]
    elif len(sys.argv) != 1:
        sys.exit(__doc__)
    for tool in ("valgrind", "callgrind_control", "callgrind_annotate", "wrk"):
        if not shutil.which(tool):
            sys.exit("instr.py: %s is not installed (scripts/install-deps --bench)" % tool)
    if not os.access(TURNLOAD, os.X_OK):
        sys.exit("instr.py: %s is missing (make bench compiles it from bench/turnload.c)" % TURNLOAD)
    tmp = tempfile.mkdtemp(prefix="loopd-instr-")
    try:
        res = {}
        for name, fn in (("post_seq", post_seq), ("post_load", post_load), ("get_seq", get_seq),
                         ("turn_seq", turn_seq)):
            res[name] = fn(tmp)
            print("INSTR case=%s %s" % (name, " ".join("%s=%s" % kv for kv in res[name].items())),
                  flush=True)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    if report:
        pl = res["post_load"]
        with open(report, "a") as f:
            f.write("\n## Instructions per request (callgrind; user space; the host's speed cannot move them)\n\n")
            f.write("| case | instructions / request |\n|---|---:|\n")
            f.write("| POST /v1/sessions, one at a time (one create per commit) | {:,} |\n".format(
                res["post_seq"]["per_request"]))
            f.write("| POST /v1/sessions, 64 connections, {} creates per commit | {:,} (loop {:,}, writer {:,},"
                    " checkpointer {:,}) |\n".format(pl["per_commit"], pl["per_request"], pl["loop"],
                                                     pl["writer"], pl["checkpointer"]))
            f.write("| GET /v1/sessions/{{id}}, --reply-cache off | {:,} |\n".format(
                res["get_seq"]["per_request"]))
            f.write("| a turn of one session (message POST, llmsim, events on SSE), per turn | {:,} |\n"
                    .format(res["turn_seq"]["per_turn"]))


if __name__ == "__main__":
    main()
