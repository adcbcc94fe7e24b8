"""Storage faults: the disk fails under loopd, then recovers.

build/failio.so (tests/faults/failio.c), preloaded into loopd, makes every
sync of the write-ahead log fail with EIO, or every write of it fail with
ENOSPC, while a control file says so.  Each failed write is answered with a
5xx problem and is not served afterwards; everything that got a 2xx stays,
before and after a restart; loopd never crashes and serves again as soon as
the disk does.  A turn whose events fail to commit mid-stream stops, and its
session is repaired from its log: the turn resumes (reason.recovered) or
fails, the session ends idle, and every log stays gapless, also for a
client that was streaming it.
"""
import http.client
import importlib.util
import json
import os
import socket
import threading
from concurrent.futures import ThreadPoolExecutor

import pytest
import requests

_HERE = os.path.dirname(os.path.abspath(__file__))
_spec = importlib.util.spec_from_file_location(
    "loopd_api_helpers", os.path.join(_HERE, "..", "api", "conftest.py"))
h = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(h)

FAILIO = os.path.join(h.REPO, "build", "failio.so")


class Disk:
    """The control file of failio.so: fail("sync"|"write"), heal()."""

    def __init__(self, path):
        self.path = path

    def fail(self, mode):
        with open(self.path, "w") as f:
            f.write(mode)

    def heal(self):
        if os.path.exists(self.path):
            os.unlink(self.path)

    def hits(self):
        try:
            return os.path.getsize(self.path + ".hits")
        except FileNotFoundError:
            return 0


def start_faulty(extra_args=()):
    if not os.path.exists(FAILIO):
        pytest.fail("%s is missing: run `make build/failio.so` (make api builds it)" % FAILIO)
    ctl = os.path.join(h.tmp_root(), "failio-%s" % h.random_key()[-12:])
    env = {"LD_PRELOAD": FAILIO, "FAILIO_CTL": ctl}
    if "asan" in h.LOOPD_BIN:  # the sanitizer runtime need not be first then
        env["ASAN_OPTIONS"] = os.environ.get("ASAN_OPTIONS", "") + ":verify_asan_link_order=0"
    return h.start_server(list(extra_args), env=env), Disk(ctl)


def listed_ids(c):
    """Every session ID the list shows, page by page, and its total."""
    ids, offset = set(), 0
    while True:
        r = h.expect(c.get("/v1/sessions", params={"limit": 100, "offset": offset}), 200).json()
        h.validate(r, "PaginatedResponse_WithUrls_Session")
        ids |= {s["id"] for s in r["data"]}
        offset += len(r["data"])
        if not r["data"] or offset >= r["total"]:
            return ids, r["total"]


def stats_total(c):
    return h.expect(c.get("/v1/sessions/stats"), 200).json()["total"]


@pytest.mark.parametrize("mode", ["sync", "write"])
def test_failed_commits_answer_5xx_and_keep_every_acknowledged_write(mode):
    srv, disk = start_faulty()
    try:
        c = srv.client()
        kept = c.create_session({"title": "kept", "tags": ["a"]})
        talked = c.create_session({"title": "talked"})
        h.post_message(c, talked["id"], "before the fault")
        h.wait_turn_end(c, talked["id"])
        log_before = h.get_events(c, talked["id"])

        disk.fail(mode)
        r = c.post("/v1/sessions", {"title": "lost"})
        h.assert_problem(r, 500, detail="The write could not be made durable")
        r = c.patch("/v1/sessions/" + kept["id"], {"title": "changed"})
        h.assert_problem(r, 500, detail="The write could not be made durable")
        r = c.post("/v1/sessions/%s/messages" % talked["id"], h.user_message("during"))
        assert r.status_code in (500, 503), h.describe(r)
        h.check_problem_body(r.json(), r.status_code)
        r = c.post("/v1/agents", {"name": "lost-agent", "system_prompt": "x"})
        assert r.status_code == 500, h.describe(r)
        assert disk.hits() > 0, "the fault never happened"

        # reads go on, and show nothing of the failed writes
        assert h.get_session(c, kept["id"])["title"] == "kept"
        ids, total = listed_ids(c)
        assert ids == {kept["id"], talked["id"]} and total == 2
        assert stats_total(c) == 2
        assert h.get_events(c, talked["id"]) == log_before
        h.expect(c.get("/v1/agents/lost-agent"), 404)

        disk.heal()
        # the session the failed message hit is repaired; then all works again
        h.wait_for(lambda: c.post("/v1/sessions/%s/messages" % talked["id"],
                                  h.user_message("after")).status_code == 201,
                   what="a message to be taken again")
        log = h.wait_turn_end(c, talked["id"], 2)
        h.check_log(log, talked["id"])
        assert log[:len(log_before)] == log_before
        assert [e["type"] for e in log].count("input.message") == 2
        patched = h.expect(c.patch("/v1/sessions/" + kept["id"], {"title": "changed"}), 200).json()
        h.validate(patched, "WithUrls_Session")
        new = c.create_session({"title": "new"})
        ids, total = listed_ids(c)
        assert ids == {kept["id"], talked["id"], new["id"]} and total == 3

        srv.restart()
        c = srv.client()
        assert h.get_session(c, kept["id"])["title"] == "changed"
        assert h.get_events(c, talked["id"]) == log
        ids, total = listed_ids(c)
        assert ids == {kept["id"], talked["id"], new["id"]} and total == 3
        assert stats_total(c) == 3
    finally:
        disk.heal()
        srv.stop()


@pytest.mark.parametrize("mode", ["sync", "write"])
def test_readyz_is_503_while_writes_fail_and_ready_again_with_the_disk(mode):
    """A load balancer asks /readyz (no key): ready while commits reach the
    disk, 503 once one failed, and ready again as soon as the disk takes
    writes, even when no client writes meanwhile (each /readyz during the
    failure makes one test write)."""
    srv, disk = start_faulty()
    try:
        c = srv.client()
        ready = requests.get(srv.base + "/readyz", timeout=5)
        assert ready.status_code == 200 and ready.json() == {"status": "ready"}
        commits = h.metric_value(c, "loopd_store_commit_batch_size_count")
        h.expect(requests.get(srv.base + "/readyz", timeout=5), 200)
        assert h.metric_value(c, "loopd_store_commit_batch_size_count") == commits, \
            "a healthy /readyz wrote"
        assert h.metric_value(c, "loopd_store_write_failing") == 0

        disk.fail(mode)
        h.assert_problem(c.post("/v1/sessions", {"title": "lost"}), 500)
        assert h.metric_value(c, "loopd_store_write_failing") == 1
        hits = disk.hits()
        r = requests.get(srv.base + "/readyz", timeout=5)
        h.assert_problem(r, 503, detail_contains="Writes to the store are failing")
        assert r.headers.get("Retry-After") == "1", r.headers
        assert disk.hits() > hits, "the /readyz did not try a write"
        # reads still work
        assert listed_ids(c) == (set(), 0)

        disk.heal()
        ready = requests.get(srv.base + "/readyz", timeout=5)
        assert ready.status_code == 200 and ready.json() == {"status": "ready"}, h.describe(ready)
        assert h.metric_value(c, "loopd_store_write_failing") == 0
        assert c.create_session({"title": "after"})["title"] == "after"
    finally:
        disk.heal()
        srv.stop()


def start_streaming_turns(srv, c, n, latency_ms, streams, frames):
    """n new sessions, each with an SSE stream (into `streams`) and a turn
    that streams its answer over latency_ms; returns once every stream has
    had a delta (frames so far into `frames`).  The session IDs."""
    sids = [c.create_session({"title": "streamed %d" % i})["id"] for i in range(n)]
    for sid in sids:
        streams[sid] = h.open_sse(srv, sid)
    for sid in sids:
        h.post_message(c, sid, "a slow answer", {"latency_ms": latency_ms})
    for sid in sids:
        frames[sid] = streams[sid].read_until(lambda f: f.event == "output.message.delta", 10)
    return sids


def ended_one_turn(c, sids, streams, frames):
    """Each session's log once its one turn has ended: gapless, valid, the
    session idle, and equal to what its stream delivered.  The logs."""
    logs = {}
    for sid in sids:
        logs[sid] = h.wait_turn_end(c, sid, 1, timeout=30)
        h.check_log(logs[sid], sid)
        assert h.get_session(c, sid)["status"] == "idle"
        types = [e["type"] for e in logs[sid]]
        assert types[-1] == "session.idled", types
        assert types.count("turn.started") == 1, types
        for e in logs[sid]:
            h.validate(e, "TypedEvent")
    for sid in sids:  # each stream got exactly the log: nothing twice, nothing skipped
        frames[sid] += streams[sid].read_until(lambda f: f.event == "session.idled", 10)
        assert [h.sse_event(f, sid) for f in frames[sid]] == logs[sid], \
            "stream of %s differs from its log" % sid
    return logs


@pytest.mark.parametrize("mode", ["sync", "write"])
def test_commit_failing_mid_turn_repairs_the_session_from_its_log(mode):
    srv, disk = start_faulty()
    streams, frames = {}, {}
    try:
        c = srv.client()
        sids = start_streaming_turns(srv, c, 6, 1500, streams, frames)

        disk.fail(mode)
        h.wait_for(lambda: disk.hits() >= 1, what="a failed write of the log")
        # the disk stays failed until no turn runs any more: every turn has
        # either stopped at its failed write or failed its own last writes
        h.wait_for(lambda: h.metric_value(c, "loopd_turns_running") == 0, timeout=20,
                   what="no turn running")
        # a session whose batch failed is being repaired (503), or its
        # message is queued behind a batch of it that will fail (503 from the
        # store's gap check, same detail), or it takes the message and fails
        # to store it (500): never a 2xx, never a crash
        for sid in sids:
            r = c.post("/v1/sessions/%s/messages" % sid, h.user_message("meanwhile"))
            assert r.status_code in (500, 503), h.describe(r)
            h.check_problem_body(r.json(), r.status_code)
            if r.status_code == 503:
                assert r.headers.get("Retry-After") == "1", r.headers
                assert "being repaired" in r.json()["detail"], r.json()
        disk.heal()

        logs = ended_one_turn(c, sids, streams, frames)
        for sid in sids:
            assert logs[sid][-2]["type"] in ("turn.completed", "turn.failed"), logs[sid][-2]
        repaired = [sid for sid in sids
                    if any(e["type"] == "reason.recovered" for e in logs[sid])]
        assert repaired, "no turn was interrupted by the fault"
        for sid in repaired:
            assert [e["type"] for e in logs[sid]][-2] == "turn.completed"

        for sid in sids:  # every session takes turns again
            h.post_message(c, sid, "after the fault")
        for sid in sids:
            logs[sid] = h.wait_turn_end(c, sid, 2)
            h.check_log(logs[sid], sid)

        srv.restart()
        c = srv.client()
        for sid in sids:
            assert h.get_events(c, sid) == logs[sid]
            assert h.get_session(c, sid)["status"] == "idle"
        st = h.expect(c.get("/v1/sessions/stats"), 200).json()
        assert st["total"] == len(sids) and st["idle"] == len(sids) and st["active"] == 0, st
    finally:
        for s in streams.values():
            s.close()
        disk.heal()
        srv.stop()


def test_a_full_write_queue_answers_503_at_once_and_loses_nothing():
    """The disk cannot keep up (each sync of the log takes 200 ms more) and
    at most 4 writes may wait for it (--max-pending-writes 4) while clients
    keep creating sessions.  A write past
    that is answered 503 with Retry-After at once, and is not stored; a
    turn whose events find the queue full stops and its session is repaired
    from its log, as after a failed commit.  Once the disk keeps up again
    every session ends idle with a gapless log equal to what its stream
    delivered, and every write answered 201 is there after a restart."""
    srv, disk = start_faulty(["--max-pending-writes", "4"])
    streams, frames = {}, {}
    try:
        c = srv.client()
        sids = start_streaming_turns(srv, c, 4, 4000, streams, frames)

        disk.fail("slow")
        h.wait_for(lambda: disk.hits() >= 1, what="a slow sync of the log")
        # 16 clients create sessions without pause: the queue stays full, so
        # the streaming turns' own writes find it full too
        made, refused, stop, lock = set(), [0], threading.Event(), threading.Lock()

        def flood(i):
            s = requests.Session()
            s.headers["Authorization"] = "Bearer " + srv.key
            while not stop.is_set():
                r = s.post(srv.base + "/v1/sessions", json={"title": "queued %d" % i}, timeout=60)
                assert r.status_code in (201, 503), h.describe(r)
                if r.status_code == 201:
                    with lock:
                        made.add(r.json()["id"])
                    continue
                h.assert_problem(r, 503,
                                 detail="The server is busy or shutting down; retry shortly")
                assert r.headers.get("Retry-After") == "1", r.headers
                with lock:
                    refused[0] += 1

        with ThreadPoolExecutor(16) as pool:
            clients = [pool.submit(flood, i) for i in range(16)]
            try:
                # at most 16 of the clients' refusals are not counted yet
                h.wait_for(lambda: h.metric_value(c, "loopd_store_writes_refused_total")
                           > refused[0] + 16, timeout=30, what="a turn's events refused")
            finally:
                stop.set()
            for f in clients:
                f.result()
        assert refused[0] > 0 and made, (refused[0], len(made))
        assert h.metric_value(c, "loopd_store_writes_refused_total") > refused[0]
        disk.heal()

        logs = ended_one_turn(c, sids, streams, frames)
        assert any(e["type"] == "reason.recovered" for sid in sids for e in logs[sid]), \
            "no turn was stopped by the full queue"

        ids, total = listed_ids(c)
        assert ids == made | set(sids) and total == len(made) + len(sids)
        srv.restart()
        c = srv.client()
        ids, total = listed_ids(c)
        assert ids == made | set(sids) and total == len(made) + len(sids)
        for sid in sids:
            assert h.get_events(c, sid) == logs[sid]
    finally:
        for st in streams.values():
            st.close()
        disk.heal()
        srv.stop()


def test_a_write_failing_inside_a_batch_fails_every_write_of_that_batch():
    """One write of the log fails in the middle of a batch: a message too big
    for the writer's page cache spills pages to the log before its batch
    commits, and that spill fails (ENOSPC, once).  SQLite then rolls the
    whole transaction back by itself, so the writes of the batch before the
    message are gone too, and those after it must not be committed one by
    one outside any transaction.  Whatever shares the batch: every write
    answered 201 is stored, every one answered 5xx is not, before and after
    a restart, and loopd goes on."""
    # 15 MB bodies on connections opened up front: the suite's 2 s request
    # deadline is too short for them on a loaded machine (408, not the test)
    srv, disk = start_faulty(["--max-body", str(16 << 20), "--request-timeout", "60"])
    try:
        c = srv.client()
        big_sid = c.create_session({"title": "big"})["id"]
        big = json.dumps(h.user_message("x" * (15 << 20))).encode()
        big_head = ("POST /v1/sessions/%s/messages HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                    "Authorization: Bearer %s\r\nContent-Type: application/json\r\n"
                    "Content-Length: %d\r\nConnection: close\r\n\r\n"
                    % (big_sid, srv.key, len(big))).encode()
        small = []
        for i in range(24):
            body = json.dumps({"title": "small %d" % i}).encode()
            small.append(("POST /v1/sessions HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                          "Authorization: Bearer %s\r\nContent-Type: application/json\r\n"
                          "Content-Length: %d\r\nConnection: close\r\n\r\n"
                          % (srv.key, len(body))).encode() + body)
        # a decoy keeps the loop parsing 15 MB of JSON that turns out
        # malformed at its end (400, nothing written) while the big message's
        # last byte and every small create arrive: the loop then takes them
        # in one turn and they reach the writer in one batch
        decoy = b'{"title": "' + b"y" * (15 << 20) + b'"'
        decoy_head = ("POST /v1/sessions HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                      "Authorization: Bearer %s\r\nContent-Type: application/json\r\n"
                      "Content-Length: %d\r\nConnection: close\r\n\r\n"
                      % (srv.key, len(decoy))).encode()
        big_sock = socket.create_connection(("127.0.0.1", srv.port), timeout=60)
        decoy_sock = socket.create_connection(("127.0.0.1", srv.port), timeout=60)
        socks = [socket.create_connection(("127.0.0.1", srv.port), timeout=60) for _ in small]
        big_sock.sendall(big_head + big[:-1])
        disk.fail("once")
        decoy_sock.sendall(decoy_head + decoy)
        big_sock.sendall(big[-1:])
        for sk, w in zip(socks, small):
            sk.sendall(w)
        r = http.client.HTTPResponse(decoy_sock)
        r.begin()
        h.check_problem_body(json.loads(r.read()), 400)
        decoy_sock.close()
        results = []
        for sk in [big_sock] + socks:
            r = http.client.HTTPResponse(sk)
            r.begin()
            results.append((r.status, r.read()))
            sk.close()
        assert disk.hits() == 1, "the fault did not happen"
        for status, body in results:
            assert status in (201, 500, 503), (status, body[:300])
            if status != 201:
                h.check_problem_body(json.loads(body), status)
        made = {json.loads(b)["id"] for s, b in results[1:] if s == 201}
        failed = [json.loads(b) for s, b in results[1:] if s != 201]
        big_stored = results[0][0] == 201

        def check(cl):
            ids, total = listed_ids(cl)
            assert ids == made | {big_sid} and total == len(made) + 1
            assert stats_total(cl) == len(made) + 1
            inputs = [e for e in h.get_events(cl, big_sid) if e["type"] == "input.message"]
            assert len(inputs) == (1 if big_stored else 0)

        check(c)
        assert failed or not big_stored, "nothing failed although a write of the log did"
        # it goes on: the big session takes a message, creates work
        h.wait_for(lambda: c.post("/v1/sessions/%s/messages" % big_sid,
                                  h.user_message("small")).status_code == 201,
                   what="the session to take a message")
        made.add(c.create_session({"title": "after"})["id"])
        h.wait_turn_end(c, big_sid, 2 if big_stored else 1, timeout=60)
        srv.restart()
        c = srv.client()
        ids, total = listed_ids(c)
        assert ids == made | {big_sid} and total == len(made) + 1
        h.check_log(h.get_events(c, big_sid), big_sid)
    finally:
        disk.heal()
        srv.stop()
