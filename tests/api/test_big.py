"""Sessions whose events are as big as a request may be (16 MiB): every way
of reading the log (GET events with and without limit, SSE replay, the
resume of a turn after a crash) reads it a bounded page at a time.  Seven
15 MB messages made one page of ~105 MB: past the request arena's bound,
which aborts loopd.  Not in the valgrind run (hundreds of MB of JSON)."""
import signal

from conftest import (expect, get_session, open_sse, post_message, validate, wait_for,
                      wait_turn_end)


def test_a_log_of_huge_events_is_read_in_bounded_pages(fresh_server):
    srv = fresh_server(["--max-body", str(16 << 20)])
    c = srv.client()
    tool = {"type": "client_side", "name": "ask_user", "description": "ask",
            "parameters": {"type": "object"}}
    sid = c.create_session({"tools": [tool]})["id"]
    texts = [chr(ord("a") + i) * (15 << 20) for i in range(7)]
    for i, t in enumerate(texts):
        post_message(c, sid, t)
        wait_for(lambda: get_session(c, sid)["status"] == "idle", what="turn %d" % i, timeout=60)
    # a turn left waiting for a client-side tool, across a crash
    post_message(c, sid, "need input", {"tools": [{"name": "ask_user", "arguments": {"q": 1}}]})
    wait_for(lambda: get_session(c, sid)["status"] == "waitingfortoolresults", what="waiting")

    def inputs(evs):
        return [e["data"]["message"]["content"][0]["text"] for e in evs
                if e["type"] == "input.message"]

    r = expect(c.get("/v1/sessions/%s/events" % sid, timeout=120), 200)
    log = r.json()["data"]
    assert [e["sequence"] for e in log] == list(range(1, len(log) + 1))
    assert inputs(log)[:7] == texts
    r = expect(c.get("/v1/sessions/%s/events" % sid, params={"limit": 1000}, timeout=120), 200)
    assert [e["id"] for e in r.json()["data"]] == [e["id"] for e in log]
    stream = open_sse(srv, sid)
    frames = stream.read_until(lambda f: f.id == log[-1]["id"], timeout=120)
    assert [f.id for f in frames] == [e["id"] for e in log]
    stream.close()

    srv.expect_dead = True
    srv.stop(signal.SIGKILL)
    srv.expect_dead = False
    srv.start()
    c = srv.client()
    assert get_session(c, sid)["status"] == "waitingfortoolresults"
    call = [e for e in log if e["type"] == "tool.call_requested"][-1]["data"]["tool_calls"][0]
    expect(c.post("/v1/sessions/%s/tool-results" % sid,
                  {"tool_results": [{"tool_call_id": call["id"], "result": "yes"}]}), 200)
    wait_for(lambda: get_session(c, sid)["status"] == "idle", what="the resumed turn", timeout=60)
    last = expect(c.get("/v1/sessions/%s/events" % sid, params={"limit": 2}), 200).json()["data"]
    assert [e["type"] for e in last] == ["turn.completed", "session.idled"]
    for e in last:
        validate(e, "TypedEvent")
