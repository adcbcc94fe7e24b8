"""GET /v1/sessions/{id}/sse (reference section 16) against the real binary:
framing, replay, resume with since_id and Last-Event-ID at random points of
a streamed turn, heartbeats, connection cycling, filters, isolation and
errors.  Streams are read with deadlines; nothing sleeps to synchronise.
"""
import json
import os
import random
import signal
import threading
import time


from conftest import (
    assert_problem, check_log, get_events, open_sse, post_message,
    sse_event, validate, wait_turn_end, SSEStream,
)

SEED = int(os.environ.get("LOOPD_TEST_SEED") or random.randrange(1 << 30))


def test_connected_first_then_nothing_for_empty_session(server, api):
    sid = api.create_session()["id"]
    with open_sse(server, sid) as s:
        assert s.headers.get("cache-control", "").lower() == "no-cache", s.headers
        f = s.frames_seen[0]
        assert f.retry is not None and f.retry > 0, f
        assert f.fields[0] == "event", "connected frame should start with event: %r" % f.fields
        s.expect_silence(0.5)


def test_replay_whole_history(server, api):
    sid = api.create_session()["id"]
    post_message(api, sid, "first")
    wait_turn_end(api, sid, 1)
    post_message(api, sid, "second", {"fail": "llm_error"})
    log = wait_turn_end(api, sid, 2)
    check_log(log, sid)
    with open_sse(server, sid) as s:
        frames = s.read_until(lambda f: f.id == log[-1]["id"], 5)
        s.expect_silence(0.5)
    assert [sse_event(f, sid) for f in frames] == log
    for f in frames:
        assert f.retry == 100, f
        assert f.fields[:2] == ["event", "id"], f.fields


def test_replay_then_live_without_gap(server, api):
    """A stream opened between two turns gets the first from the log and
    the second live, exactly once each, and stays open after the turn."""
    sid = api.create_session()["id"]
    post_message(api, sid, "one")
    first = wait_turn_end(api, sid, 1)
    with open_sse(server, sid) as s:
        post_message(api, sid, "two", {"latency_ms": 300})
        frames = s.read_until(lambda f: f.event == "session.idled" and f.id != first[-1]["id"], 10)
        s.expect_silence(0.6)   # no end of stream after the turn
    log = get_events(api, sid)
    check_log(log, sid)
    assert [sse_event(f, sid) for f in frames] == log


def test_since_id_query_and_last_event_id_header(server, api):
    sid = api.create_session()["id"]
    post_message(api, sid, "hello")
    log = wait_turn_end(api, sid, 1)
    for k in (0, 4, len(log) - 2):
        with open_sse(server, sid, params={"since_id": log[k]["id"]}) as s:
            frames = s.read_until(lambda f: f.id == log[-1]["id"], 5)
        assert [sse_event(f, sid) for f in frames] == log[k + 1:]
        with open_sse(server, sid, headers={"Last-Event-ID": log[k]["id"]}) as s:
            frames = s.read_until(lambda f: f.id == log[-1]["id"], 5)
        assert [sse_event(f, sid) for f in frames] == log[k + 1:]
    # since_id wins over the header
    with open_sse(server, sid, params={"since_id": log[5]["id"]},
                  headers={"Last-Event-ID": log[1]["id"]}) as s:
        frames = s.read_until(lambda f: f.id == log[-1]["id"], 5)
    assert [sse_event(f, sid) for f in frames] == log[6:]
    # the last id: nothing to replay
    with open_sse(server, sid, headers={"Last-Event-ID": log[-1]["id"]}) as s:
        s.expect_silence(0.4)


def resume_loop(server, api, sid, rng, turns, deadline_s=30):
    """Stream `turns` latency turns of `sid`, disconnecting at random points
    and resuming from the last id seen (alternating since_id and
    Last-Event-ID).  Returns (events received, number of connections)."""
    got = []
    last_id = None
    conns = 0
    idled = 0
    posted = 0
    deadline = time.monotonic() + deadline_s
    while idled < turns:
        assert time.monotonic() < deadline, "resume loop did not finish"
        if posted == idled and posted < turns:
            post_message(api, sid, "turn %d of the resume test" % posted,
                         {"latency_ms": 400 + rng.randrange(400)})
            posted += 1
        conns += 1
        if last_id is None:
            kw = {}
        elif conns % 2:
            kw = {"params": {"since_id": last_id}}
        else:
            kw = {"headers": {"Last-Event-ID": last_id}}
        with open_sse(server, sid, **kw) as s:
            want = rng.choice([0, 1, 1, 2, 3, 5, 8])
            for _ in range(want):
                f = s.next_event(10)
                assert f is not None, "stream ended unexpectedly"
                ev = sse_event(f, sid)
                got.append(ev)
                last_id = ev["id"]
                if ev["type"] == "session.idled":
                    idled += 1
                    if idled == turns:
                        break
                    if posted == idled:
                        break   # disconnect; the next turn is posted before resuming
    return got, conns


def test_resume_at_random_points_equals_log(server, api):
    rng = random.Random(SEED)
    sid = api.create_session()["id"]
    got, conns = resume_loop(server, api, sid, rng, turns=3)
    log = get_events(api, sid)
    check_log(log, sid)
    ids = [e["id"] for e in got]
    assert len(ids) == len(set(ids)), "an event was delivered twice (seed %d)" % SEED
    assert got == log, "the union of the resumed streams differs from the log (seed %d): " \
        "got %d events, log has %d" % (SEED, len(got), len(log))
    assert any(e["type"] == "output.message.delta" for e in got), "deltas must be replayed"
    assert conns > 3


def test_live_stream_matches_log_with_deltas(server, api):
    sid = api.create_session()["id"]
    with open_sse(server, sid) as s:
        post_message(api, sid, "stream this answer slowly, piece by piece", {"latency_ms": 600})
        frames = s.read_until(lambda f: f.event == "session.idled", 10)
    evs = [sse_event(f, sid) for f in frames]
    assert evs == get_events(api, sid)
    deltas = [e for e in evs if e["type"] == "output.message.delta"]
    assert len(deltas) >= 2
    for e in evs:
        validate(e, "EventEnvelope")


def test_heartbeat_and_disconnecting(fresh_server):
    srv = fresh_server(["--sse-heartbeat", "1", "--sse-cycle", "3"])
    c = srv.client()
    sid = c.create_session()["id"]
    t0 = time.monotonic()
    s = open_sse(srv, sid)
    try:
        heartbeats = 0
        end = None
        while True:
            f = s.next_frame(6)
            assert f is not None, "stream closed without a disconnecting frame"
            if f.is_comment:
                assert f.comments == ["heartbeat"], f
                heartbeats += 1
                continue
            end = f
            break
        elapsed = time.monotonic() - t0
        assert end.event == "disconnecting", end
        assert end.id is None, end
        assert json.loads(end.data) == {"reason": "connection_cycle", "retry_ms": 100}, end
        assert end.retry == 100, end
        assert 3 * 0.8 - 0.25 <= elapsed <= 3 * 1.2 + 1.0, "cycled after %.2fs" % elapsed
        assert heartbeats >= 1, "no heartbeat within %.1fs" % elapsed
        assert s.next_frame(3) is None, "the stream must end after disconnecting"
    finally:
        s.close()
    # reconnecting works
    with open_sse(srv, sid) as s2:
        f = s2.next_frame(3)
        assert f is not None and f.comments == ["heartbeat"], f


def test_disconnecting_during_turn_loses_nothing(fresh_server):
    """Cycling mid-turn: resuming from the last id gets the rest exactly."""
    srv = fresh_server(["--sse-heartbeat", "1", "--sse-cycle", "1"])
    c = srv.client()
    sid = c.create_session()["id"]
    post_message(c, sid, "a long one", {"latency_ms": 2500})
    got, last, cycles = [], None, 0
    deadline = time.monotonic() + 15
    while not got or got[-1]["type"] != "session.idled":
        assert time.monotonic() < deadline
        with open_sse(srv, sid, headers={"Last-Event-ID": last} if last else None) as s:
            while True:
                f = s.next_event(5)
                if f is None:
                    break
                if f.event == "disconnecting":
                    cycles += 1
                    continue
                ev = sse_event(f, sid)
                got.append(ev)
                last = ev["id"]
                if ev["type"] == "session.idled":
                    break
    assert cycles >= 1
    assert got == get_events(c, sid)


def test_cross_session_isolation(server, api):
    sids = [api.create_session()["id"] for _ in range(3)]
    streams = [open_sse(server, sid) for sid in sids]
    results = {}
    try:
        for i, sid in enumerate(sids):
            post_message(api, sid, "session %d" % i, {"latency_ms": 300, "text": "answer %d" % i})

        def read(i):
            frames = streams[i].read_until(lambda f: f.event == "session.idled", 10)
            results[i] = [sse_event(f, sids[i]) for f in frames]
        threads = [threading.Thread(target=read, args=(i,)) for i in range(3)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(15)
    finally:
        for s in streams:
            s.close()
    for i, sid in enumerate(sids):
        assert i in results, "stream %d did not finish" % i
        assert results[i] == get_events(api, sid)
        done = [e for e in results[i] if e["type"] == "output.message.completed"]
        assert [m["data"]["message"]["content"][0]["text"] for m in done] == ["answer %d" % i]


def test_sse_filters(server, api):
    sid = api.create_session()["id"]
    post_message(api, sid, "filter me")
    log = wait_turn_end(api, sid, 1)
    with open_sse(server, sid, params=[("types", "turn.completed"), ("types", "session.idled")]) as s:
        frames = s.read_until(lambda f: f.event == "session.idled", 5)
        assert [sse_event(f, sid) for f in frames] == \
            [e for e in log if e["type"] in ("turn.completed", "session.idled")]
        # live events are filtered too
        post_message(api, sid, "again", {"latency_ms": 200})
        frames = s.read_until(lambda f: f.event == "session.idled", 10)
        assert [f.event for f in frames] == ["turn.completed", "session.idled"]
    with open_sse(server, sid, params={"exclude": "output.message.delta"}) as s:
        log = get_events(api, sid)
        frames = s.read_until(lambda f: f.id == log[-1]["id"], 5)
        assert [sse_event(f, sid) for f in frames] == \
            [e for e in log if e["type"] != "output.message.delta"]
    with open_sse(server, sid, params={"since_id": log[2]["id"], "types": "turn.started"}) as s:
        f = s.next_event(5)
        assert sse_event(f, sid) == [e for e in log[3:] if e["type"] == "turn.started"][0]


def test_sse_errors(server, api, org2):
    sid = api.create_session()["id"]
    post_message(api, sid, "x")
    log = wait_turn_end(api, sid, 1)

    def problem(status, target, **kw):
        s = SSEStream(server, "/v1/sessions/%s/sse" % target, **kw)
        try:
            return assert_problem(s.problem(), status)
        finally:
            s.close()
    problem(400, "session_nope")
    problem(400, "not-an-id")
    problem(404, "session_0190000000007000800000000000abcd")
    problem(404, sid, key=org2["key"])          # another org's session
    problem(401, sid, key=None)
    body = problem(400, sid, params={"types": "bogus"})
    assert body["detail"] == "types: unknown event type 'bogus'", body
    body = problem(400, sid, params={"exclude": "bogus.too"})
    assert body["detail"] == "exclude: unknown event type 'bogus.too'", body
    problem(400, sid, params=[("types", "turn.started")] * 26)
    problem(400, sid, params={"since_id": "event_xyz"})
    problem(400, sid, headers={"Last-Event-ID": "garbage"})
    s = SSEStream(server, "/v1/sessions/%s/sse" % sid,
                  params={"since_id": "event_0190000000007000800000000000abcd"})
    try:
        assert s.status in (400, 404), s.status
        assert_problem(s.problem(), s.status)
    finally:
        s.close()
    other = api.create_session()["id"]
    post_message(api, other, "y")
    olog = wait_turn_end(api, other, 1)
    s = SSEStream(server, "/v1/sessions/%s/sse" % sid, params={"since_id": olog[0]["id"]})
    try:
        assert s.status in (400, 404), "another session's event id is not a cursor here"
    finally:
        s.close()
    assert get_events(api, sid) == log


def test_many_streams_one_session(server, api):
    sid = api.create_session()["id"]
    streams = [open_sse(server, sid) for _ in range(20)]
    try:
        post_message(api, sid, "fan out", {"latency_ms": 200})
        outs = [s.read_until(lambda f: f.event == "session.idled", 10) for s in streams]
    finally:
        for s in streams:
            s.close()
    log = get_events(api, sid)
    for frames in outs:
        assert [sse_event(f, sid) for f in frames] == log


def test_sigterm_with_open_streams_exits_cleanly(fresh_server):
    """Shutdown with SSE streams open (one idle, one whose client left)."""
    srv = fresh_server()
    c = srv.client()
    sid = c.create_session()["id"]
    s1 = open_sse(srv, sid)
    s2 = open_sse(srv, sid)
    s2.close()
    post_message(c, sid, "x")
    s1.read_until(lambda f: f.event == "session.idled", 5)
    rc = srv.stop(signal.SIGTERM)
    s1.close()
    assert rc == 0, "loopd exited with %r on SIGTERM with open SSE streams:\n%s" % (
        rc, srv.stderr_tail(1500))


def test_events_bigger_than_the_backlog_bound_reach_live_and_replayed_streams(fresh_server):
    """A single event larger than the stream's backlog bound (1 MiB) or its
    old buffer (2 MiB), here a 3 MB message, reaches a stream that is keeping
    up, live and in a replay, without ending it: the bound is for readers
    that fall behind, not for one big event."""
    srv = fresh_server(["--max-body", str(8 << 20)])
    c = srv.client()
    sid = c.create_session()["id"]
    text = "y" * (3 << 20)
    live = open_sse(srv, sid)
    post_message(c, sid, text)
    frames = live.read_until(lambda f: f.event == "session.idled", timeout=30)
    assert frames[0].event == "input.message"
    assert frames[0].json()["data"]["message"]["content"][0]["text"] == text
    post_message(c, sid, "small one after")
    more = live.read_until(lambda f: f.event == "session.idled", timeout=30)
    assert more[0].event == "input.message"
    log = wait_turn_end(c, sid, 2)
    assert [f.id for f in frames + more] == [e["id"] for e in log]
    # the same from the log (replay, the big event first)
    replay = open_sse(srv, sid)
    got = replay.read_until(lambda f: f.id == log[-1]["id"], timeout=30)
    assert [f.id for f in got] == [e["id"] for e in log]
    assert got[0].json()["data"]["message"]["content"][0]["text"] == text


def test_a_reader_that_stops_reading_is_ended_and_resumes_without_gaps(fresh_server, monkeypatch):
    """A stream whose client stops reading does not hold up the loop or the
    other streams of the session; once its socket has refused 1 MiB it is
    ended, and the client, resuming with Last-Event-ID, gets exactly the
    rest of the log."""
    import socket
    import conftest

    def small_window(port, timeout=10):
        s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        s.settimeout(timeout)
        s.connect(("127.0.0.1", port))
        return s

    srv = fresh_server()
    c = srv.client()
    sid = c.create_session()["id"]
    fast = open_sse(srv, sid)
    monkeypatch.setattr(conftest, "raw_connect", small_window)
    slow = open_sse(srv, sid)  # reads `connected`, then nothing until the end
    monkeypatch.undo()
    fast_ids = []
    for i in range(24):  # 24 messages of 512 KiB: ~12 MB for each stream
        post_message(c, sid, ("%02d" % i) * (256 << 10))
        fast_ids += [f.id for f in fast.read_until(lambda f: f.event == "session.idled", timeout=30)]
    log = wait_turn_end(c, sid, 24)
    ids = [e["id"] for e in log]
    assert fast_ids == ids  # the other stream got everything, in time
    got = []
    while True:
        f = slow.next_event(timeout=30)
        if f is None:
            break
        got.append(f.id)
    assert 0 < len(got) < len(ids), "the stalled stream was not ended (%d events)" % len(got)
    assert got == ids[:len(got)]
    resumed = open_sse(srv, sid, headers={"Last-Event-ID": got[-1]})
    rest = resumed.read_until(lambda f: f.id == ids[-1], timeout=30)
    assert got + [f.id for f in rest] == ids


def test_deleting_a_session_ends_its_streams(server, api):
    """Streams of a deleted session end (after what they were sent) instead
    of idling forever; one that reconnects is told 404.  Streams of other
    sessions go on."""
    sid = api.create_session()["id"]
    other = api.create_session()["id"]
    post_message(api, sid, "before the delete")
    log = wait_turn_end(api, sid)
    streams = [open_sse(server, sid) for _ in range(3)]
    keep = open_sse(server, other)
    try:
        for s in streams:  # each has replayed the log and is live
            frames = s.read_until(lambda f: f.event == "session.idled", 10)
            assert [sse_event(f, sid) for f in frames] == log
        r = api.delete("/v1/sessions/" + sid)
        assert r.status_code == 204, r.text
        for s in streams:
            assert s.next_event(10) is None, "the stream did not end"
            assert s.eof
        again = SSEStream(server, "/v1/sessions/%s/sse" % sid)
        assert again.status == 404, again.status
        again.close()
        keep.expect_silence(0.3)  # still open: no EOF, nothing sent
        post_message(api, other, "still here")
        frames = keep.read_until(lambda f: f.event == "session.idled", 10)
        assert [sse_event(f, other) for f in frames] == wait_turn_end(api, other)
    finally:
        for s in streams + [keep]:
            s.close()
