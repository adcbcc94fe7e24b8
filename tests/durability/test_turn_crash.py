"""Durability of turns: kill -9 in the middle of streamed turns, restart on
the same data dir.

Every turn that was running is resumed on restart: a model call that was
in progress starts again (reason.recovered {mode: restart}) and the turn
completes; a turn waiting for client tool results waits again and resumes
when they come.  The logs stay gapless; every event a client saw before the
crash is still there, unchanged; a client that resumes from the last id it
saw (since_id or Last-Event-ID) gets exactly the rest; and
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


def kill9_and_restart(srv):
    """kill -9, start again on the same data dir; a client of the new process."""
    srv.expect_dead = True
    srv.stop(signal.SIGKILL)
    srv.expect_dead = False
    srv.start()
    return srv.client()


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
                       {"latency_ms": 3000})
        seen = [h.sse_event(f, watched) for f in
                stream.read_until(lambda f: f.event == "output.message.delta", 5)]
        turn_id = [e for e in seen if e["type"] == "turn.started"][0]["data"]["turn_id"]
        for i, sid in enumerate(others):
            h.post_message(c, sid, "busy %d" % i, {"latency_ms": 3000})
        before = {sid: h.get_events(c, sid) for sid in others + [watched, done]}
        assert all(h.get_session(c, sid)["status"] == "active" for sid in others + [watched])

        srv.expect_dead = True
        srv.stop(signal.SIGKILL)
        stream.close()
        srv.expect_dead = False
        srv.start()
        c = srv.client()

        # the watched session: the interrupted model call starts again and the
        # turn completes; what was seen before the crash is unchanged
        log = h.wait_turn_end(c, watched, 1, timeout=30)
        s = h.get_session(c, watched)
        assert s["status"] == "idle", s
        h.check_log(log, watched)
        assert log[:len(seen)] == seen, "events seen before the crash changed or vanished"
        assert log[:len(before[watched])] == before[watched]
        tail = log[len(before[watched]):]
        types = [e["type"] for e in tail]
        assert types[0] == "reason.recovered" and tail[0]["data"]["mode"] == "restart", types
        assert types[1:3] == ["reason.started", "output.message.started"], types
        assert types[-2:] == ["turn.completed", "session.idled"], types
        assert "turn.failed" not in types
        for e in tail:
            h.validate(e, "TypedEvent")
            assert e["context"].get("turn_id") == turn_id, e
        assert tail[-2]["data"]["turn_id"] == turn_id
        answer = [e for e in tail if e["type"] == "output.message.completed"][-1]
        assert "a slow answer that the crash interrupts" in \
            answer["data"]["message"]["content"][0]["text"]

        # resume from the last id seen before the crash: exactly the rest
        for kw in ({"params": {"since_id": seen[-1]["id"]}},
                   {"headers": {"Last-Event-ID": seen[-1]["id"]}}):
            with h.open_sse(srv, watched, **kw) as st:
                frames = st.read_until(lambda f: f.event == "session.idled", 5)
                st.expect_silence(0.3)
            assert seen + [h.sse_event(f, watched) for f in frames] == log

        # every other interrupted session resumed the same way
        for sid in others:
            log = h.wait_turn_end(c, sid, 1, timeout=30)
            h.check_log(log, sid)
            assert log[:len(before[sid])] == before[sid]
            types = [e["type"] for e in log[len(before[sid]):]]
            assert types[0] == "reason.recovered" and types[-2:] == ["turn.completed",
                                                                     "session.idled"], types
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
        c = kill9_and_restart(srv)
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


def test_kill9_while_waiting_for_tool_results_waits_again():
    srv = h.start_server()
    try:
        c = srv.client()
        tool = {"type": "client_side", "name": "ask_user", "description": "ask",
                "parameters": {"type": "object"}}
        sid = c.create_session({"tools": [tool]})["id"]
        h.post_message(c, sid, "need input", {"tools": [
            {"name": "ask_user", "arguments": {"q": "ok?"}},
            {"name": "storage_set", "arguments": {"key": "k", "value": "v"}}]})
        h.wait_for(lambda: h.get_session(c, sid)["status"] == "waitingfortoolresults",
                   what="waiting")
        before = h.get_events(c, sid)
        call = [e for e in before if e["type"] == "tool.call_requested"][-1]["data"]["tool_calls"][0]
        c = kill9_and_restart(srv)
        assert h.get_session(c, sid)["status"] == "waitingfortoolresults"
        assert h.get_events(c, sid) == before  # nothing redone, nothing added
        r = h.expect(c.post("/v1/sessions/%s/tool-results" % sid,
                            {"tool_results": [{"tool_call_id": call["id"], "result": "yes"}]}), 200)
        assert r.json()["status"] == "active"
        log = h.wait_turn_end(c, sid, 1, timeout=15)
        h.check_log(log, sid)
        # the server-side call ran once, before the crash
        assert sum(1 for e in log if e["type"] == "tool.completed"
                   and e["data"]["tool_name"] == "storage_set") == 1
        assert [e["type"] for e in log][-2:] == ["turn.completed", "session.idled"]
    finally:
        if srv.alive():
            srv.stop(signal.SIGKILL)


def test_crash_between_tool_ledger_and_tool_run_runs_each_call_once():
    """--fault-point 1 makes loopd abort right after a turn's act.started and
    tool.started are durable, before the tools run.  After a restart the
    calls run (once) and the turn completes."""
    srv = h.start_server(["--fault-point", "1"])
    try:
        c = srv.client()
        sid = c.create_session({})["id"]
        srv.expect_dead = True
        h.post_message(c, sid, "save two things", {"tools": [
            {"name": "storage_set", "arguments": {"key": "a", "value": "1"}},
            {"name": "write_file", "arguments": {"path": "/f.txt", "content": "once"}}]})
        h.wait_for(lambda: not srv.alive(), what="the fault point to stop loopd")
        srv.stop()
        srv.expect_dead = False
        srv.extra_args = []
        srv.start()
        c = srv.client()
        log = h.wait_turn_end(c, sid, 1, timeout=15)
        h.check_log(log, sid)
        types = [e["type"] for e in log]
        assert types.count("act.started") == 1 and types.count("tool.started") == 2, types
        done = [e["data"] for e in log if e["type"] == "tool.completed"]
        assert sorted(d["tool_name"] for d in done) == ["storage_set", "write_file"]
        assert all(d["success"] for d in done)
        assert types[-2:] == ["turn.completed", "session.idled"]
        # the effects are there, exactly as written
        h.post_message(c, sid, "read", {"tools": [
            {"name": "storage_get", "arguments": {"key": "a"}},
            {"name": "read_file", "arguments": {"path": "/f.txt"}}]})
        log = h.wait_turn_end(c, sid, 2, timeout=15)
        got = [e["data"]["result"][0]["text"] for e in log if e["type"] == "tool.completed"][-2:]
        assert got == ["1", "once"]
    finally:
        if srv.alive():
            srv.stop(signal.SIGKILL)


def test_restart_with_many_running_sessions_of_megabyte_prompts():
    """Recovery read every running session whole into one arena: 70 turns
    left running on sessions with 1 MiB system prompts at a crash (70 MiB,
    past the arena's 64 MiB) made loopd abort at every start.  It reads them
    one at a time now.  The turns wait for a client-side tool's result, so
    every one is still running at the kill whatever the machine's speed;
    after the restart each waits again and completes with its result."""
    srv = h.start_server()
    try:
        c = srv.client()
        prompt = "q" * ((1 << 20) - 16)
        tool = {"type": "client_side", "name": "ask_user", "description": "ask",
                "parameters": {"type": "object"}}
        sids = [c.create_session({"system_prompt": prompt, "tools": [tool]})["id"]
                for _ in range(70)]
        for sid in sids:
            h.post_message(c, sid, "need input",
                           {"tools": [{"name": "ask_user", "arguments": {"q": "ok?"}}]})
        for sid in sids:
            h.wait_for(lambda: h.get_session(c, sid)["status"] == "waitingfortoolresults",
                       what="waiting")
        c = kill9_and_restart(srv)
        for sid in sids:
            assert h.get_session(c, sid)["status"] == "waitingfortoolresults"
            call = [e for e in h.get_events(c, sid)
                    if e["type"] == "tool.call_requested"][-1]["data"]["tool_calls"][0]
            h.expect(c.post("/v1/sessions/%s/tool-results" % sid,
                            {"tool_results": [{"tool_call_id": call["id"], "result": "yes"}]}), 200)
        for sid in sids:
            log = h.wait_turn_end(c, sid, 1, timeout=60)
            assert [e["type"] for e in log][-2:] == ["turn.completed", "session.idled"]
        assert h.get_session(c, sids[0])["system_prompt"] == prompt
        stats = h.expect(c.get("/v1/sessions/stats"), 200).json()
        assert stats.get("active", 0) == 0 and stats.get("waitingfortoolresults", 0) == 0
    finally:
        srv.stop_clean()
