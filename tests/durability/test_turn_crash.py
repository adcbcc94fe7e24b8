"""Durability of turns: kill -9 in the middle of streamed turns, restart on
the same data dir.

Every session left active ends with turn.failed (processing_error) and
session.idled and is idle; the logs stay gapless; every event a client saw
before the crash is still there, unchanged; a client that resumes from the
last id it saw (since_id or Last-Event-ID) gets exactly the rest; and
GET /v1/sessions/stats agrees with the sessions.
"""
import importlib.util
import os
import signal

_HERE = os.path.dirname(os.path.abspath(__file__))
_spec = importlib.util.spec_from_file_location(
    "loopd_api_helpers", os.path.join(_HERE, "..", "api", "conftest.py"))
h = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(h)


def statuses(client, sids):
    return {sid: h.get_session(client, sid)["status"] for sid in sids}


def test_kill9_mid_turn_then_restart_recovers_and_replays():
    srv = h.start_server(["--sse-heartbeat", "1"])
    try:
        c = srv.client()
        # a finished turn, a session never used, and sessions mid-turn
        done = c.create_session({"title": "done"})["id"]
        h.post_message(c, done, "finish me")
        done_log = h.wait_turn_end(c, done, 1)
        unused = c.create_session({"title": "unused"})["id"]
        watched = c.create_session({"title": "watched"})["id"]
        others = [c.create_session({"title": "busy %d" % i})["id"] for i in range(20)]
        stream = h.open_sse(srv, watched)
        h.post_message(c, watched, "a slow answer that the crash interrupts",
                       {"latency_ms": 8000})
        seen = [h.sse_event(f, watched) for f in
                stream.read_until(lambda f: f.event == "output.message.delta", 5)]
        turn_id = [e for e in seen if e["type"] == "turn.started"][0]["data"]["turn_id"]
        for i, sid in enumerate(others):
            h.post_message(c, sid, "busy %d" % i, {"latency_ms": 8000})
        before = {sid: h.get_events(c, sid) for sid in others + [watched, done]}
        assert all(h.get_session(c, sid)["status"] == "active" for sid in others + [watched])

        srv.expect_dead = True
        srv.stop(signal.SIGKILL)
        stream.close()
        srv.expect_dead = False
        srv.start()
        c = srv.client()

        # the watched session: idle, its log = what was seen + turn.failed + session.idled
        s = h.get_session(c, watched)
        assert s["status"] == "idle", s
        log = h.get_events(c, watched)
        h.check_log(log, watched)
        assert log[:len(seen)] == seen, "events seen before the crash changed or vanished"
        tail = log[len(before[watched]):]
        assert log[:len(before[watched])] == before[watched]
        assert [e["type"] for e in tail] == ["turn.failed", "session.idled"], \
            [e["type"] for e in log]
        tf, idled = tail
        assert tf["data"]["turn_id"] == turn_id and idled["data"]["turn_id"] == turn_id, tail
        assert tf["data"]["error_code"] == "processing_error", tf
        assert isinstance(tf["data"]["error"], str) and tf["data"]["error"], tf
        for e in tail:
            h.validate(e, "TypedEvent")
            assert e["context"].get("turn_id") in (None, turn_id), e

        # resume from the last id seen before the crash: exactly the rest
        for kw in ({"params": {"since_id": seen[-1]["id"]}},
                   {"headers": {"Last-Event-ID": seen[-1]["id"]}}):
            with h.open_sse(srv, watched, **kw) as st:
                frames = st.read_until(lambda f: f.event == "session.idled", 5)
                st.expect_silence(0.3)
            assert seen + [h.sse_event(f, watched) for f in frames] == log

        # every other interrupted session recovered the same way
        for sid in others:
            log = h.get_events(c, sid)
            h.check_log(log, sid)
            assert log[:len(before[sid])] == before[sid]
            assert [e["type"] for e in log[len(before[sid]):]] == ["turn.failed", "session.idled"]
            assert h.get_session(c, sid)["status"] == "idle"
        # the finished turn is untouched
        assert h.get_events(c, done) == done_log
        assert h.get_session(c, done)["status"] == "idle"

        # stats agree with the sessions
        sids = others + [watched, done, unused]
        st = statuses(c, sids)
        stats = h.expect(c.get("/v1/sessions/stats"), 200).json()
        h.validate(stats, "SessionStatsResponse")
        assert stats["total"] == len(sids), stats
        assert stats["active"] == 0, stats
        assert stats["idle"] == sum(1 for v in st.values() if v == "idle") == len(sids) - 1, stats
        assert stats["started"] == 1, stats
        assert stats.get("waiting_for_tool_results", 0) == 0, stats
        listed = h.expect(c.get("/v1/sessions", params={"limit": 100}), 200).json()
        assert listed["total"] == stats["total"]

        # a second crash and restart recovers nothing twice
        logs = {sid: h.get_events(c, sid) for sid in sids}
        srv.expect_dead = True
        srv.stop(signal.SIGKILL)
        srv.expect_dead = False
        srv.start()
        c = srv.client()
        for sid in sids:
            assert h.get_events(c, sid) == logs[sid], "the log of %s changed" % sid
        # the session takes new turns after recovery
        h.post_message(c, watched, "are you back?", {"text": "yes"})
        log = h.wait_turn_end(c, watched, 2)
        h.check_log(log, watched)
        assert [e["type"] for e in log][-2:] == ["turn.completed", "session.idled"]
        stats = h.expect(c.get("/v1/sessions/stats"), 200).json()
        assert stats["active"] == 0 and stats["total"] == len(sids), stats
    finally:
        if srv.alive():
            srv.stop(signal.SIGKILL)
