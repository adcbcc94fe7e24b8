"""Tools: client-side calls and tool-results, the built-in server-side
tools, the tool ledger and max_iterations (reference sections 7.2, 12,
15.3, 15.4), against the real binary."""
import signal

from conftest import (
    assert_problem, check_log, expect, get_events, get_session, post_message, validate,
    wait_for, wait_turn_end,
)

WEATHER = {"type": "client_side", "name": "get_weather", "description": "Weather for a city",
           "parameters": {"type": "object", "properties": {"city": {"type": "string"}}}}


def types(evs):
    return [e["type"] for e in evs]


def waiting(c, sid):
    return wait_for(lambda: get_session(c, sid)["status"] == "waitingfortoolresults",
                    what="waitingfortoolresults")


def requested_calls(c, sid):
    evs = get_events(c, sid, {"types": "tool.call_requested"})
    assert evs, "no tool.call_requested"
    return evs[-1]["data"]["tool_calls"]


def test_client_tool_round_trip(api):
    sid = api.create_session({"tools": [WEATHER]})["id"]
    post_message(api, sid, "weather in Paris?",
                 hints={"tool": "get_weather", "arguments": {"city": "Paris"}})
    waiting(api, sid)
    calls = requested_calls(api, sid)
    assert [(x["name"], x["arguments"]) for x in calls] == [("get_weather", {"city": "Paris"})]
    # a second post before the result is steered: so first, wrong inputs
    r = api.post("/v1/sessions/%s/tool-results" % sid, {"tool_results": []})
    assert_problem(r, 400, detail="tool_results must not be empty")
    r = api.post("/v1/sessions/%s/tool-results" % sid,
                 {"tool_results": [{"tool_call_id": "call_nope", "result": "x"}]})
    assert_problem(r, 400, detail_contains="not a pending call")
    assert get_session(api, sid)["status"] == "waitingfortoolresults"
    r = expect(api.post("/v1/sessions/%s/tool-results" % sid,
                        {"tool_results": [{"tool_call_id": calls[0]["id"],
                                           "result": {"temp_c": 21}}]}), 200)
    assert r.json() == {"accepted": 1, "status": "active"}
    evs = wait_turn_end(api, sid)
    check_log(evs, sid)
    t = types(evs)
    i = t.index("tool.call_requested")
    assert t[i + 1] == "tool.completed"
    done = evs[i + 1]["data"]
    assert done["tool_call_id"] == calls[0]["id"] and done["success"] is True
    assert t[-2:] == ["turn.completed", "session.idled"]
    assert evs[-2]["data"]["iterations"] == 2
    final = [e for e in evs if e["type"] == "output.message.completed"][-1]
    assert "temp_c" in final["data"]["message"]["content"][0]["text"]
    for e in evs:
        validate(e, "TypedEvent")
    # the messages: user, agent tool call, tool result, agent answer
    msgs = expect(api.get("/v1/sessions/%s/messages" % sid), 200).json()["data"]
    assert [m["role"] for m in msgs] == ["user", "agent", "tool_result", "agent"]
    assert msgs[1]["content"][0]["type"] == "tool_call"
    assert msgs[2]["content"][0]["tool_call_id"] == calls[0]["id"]
    # not waiting any more: 409 with the text the SDK retries on
    r = api.post("/v1/sessions/%s/tool-results" % sid,
                 {"tool_results": [{"tool_call_id": calls[0]["id"], "result": "again"}]})
    assert_problem(r, 409)
    assert "not waiting for tool results" in r.json()["detail"]


def test_parallel_client_calls_resume_after_all_results(api):
    sid = api.create_session({"tools": [WEATHER, dict(WEATHER, name="get_time_zone")]})["id"]
    post_message(api, sid, "two things", hints={"tools": [
        {"name": "get_weather", "arguments": {"city": "Oslo"}},
        {"name": "get_time_zone", "arguments": {"city": "Oslo"}}]})
    waiting(api, sid)
    calls = requested_calls(api, sid)
    assert len(calls) == 2
    r = expect(api.post("/v1/sessions/%s/tool-results" % sid,
                        {"tool_results": [{"tool_call_id": calls[0]["id"], "result": "cold"}]}),
               200)
    assert r.json() == {"accepted": 1, "status": "waitingfortoolresults"}
    assert get_session(api, sid)["status"] == "waitingfortoolresults"
    r = expect(api.post("/v1/sessions/%s/tool-results" % sid,
                        {"tool_results": [{"tool_call_id": calls[1]["id"],
                                           "error": "no such zone"}]}), 200)
    assert r.json()["status"] == "active"
    evs = wait_turn_end(api, sid)
    failed = [e["data"] for e in evs if e["type"] == "tool.completed" and not e["data"]["success"]]
    assert failed and failed[0]["error"] == "no such zone" and failed[0]["status"] == "error"


def test_message_while_waiting_closes_the_calls(api):
    sid = api.create_session({"tools": [WEATHER]})["id"]
    post_message(api, sid, "weather?", hints={"tool": "get_weather"})
    waiting(api, sid)
    call = requested_calls(api, sid)[0]
    m = post_message(api, sid, "never mind, just say hi")
    assert m["delivery"] == "steered"
    evs = wait_turn_end(api, sid)
    closed = [e["data"] for e in evs if e["type"] == "tool.completed"]
    assert closed[0]["tool_call_id"] == call["id"] and closed[0]["success"] is False
    assert "user sent a message" in closed[0]["error"]
    assert types(evs)[-2:] == ["turn.completed", "session.idled"]


def test_server_side_tools_and_their_ledger(api):
    sid = api.create_session({"initial_files": [{"path": "/docs/readme.md",
                                                 "content": "hello\nworld"}]})["id"]
    post_message(api, sid, "write", hints={"tools": [
        {"name": "write_file", "arguments": {"path": "notes/a.txt", "content": "alpha beta"}},
        {"name": "storage_set", "arguments": {"key": "color", "value": "blue"}},
        {"name": "current_time"}]})
    evs = wait_turn_end(api, sid)
    t = types(evs)
    # the ledger: act.started and every tool.started are committed before
    # any tool.completed
    assert t.index("act.started") < t.index("tool.started") < t.index("tool.completed")
    started = [e["data"]["tool_call"]["id"] for e in evs if e["type"] == "tool.started"]
    completed = [e["data"]["tool_call_id"] for e in evs if e["type"] == "tool.completed"]
    assert sorted(started) == sorted(completed) and len(set(completed)) == 3
    post_message(api, sid, "read", hints={"tools": [
        {"name": "read_file", "arguments": {"path": "/notes/a.txt"}},
        {"name": "storage_get", "arguments": {"key": "color"}},
        {"name": "grep_files", "arguments": {"pattern": "wor"}},
        {"name": "list_files"},
        {"name": "read_file", "arguments": {"path": "/missing"}},
        {"name": "no_such_tool"}]})
    evs = wait_turn_end(api, sid, turns=2)
    res = {}
    for e in evs[-20:]:
        if e["type"] == "tool.completed":
            d = e["data"]
            res.setdefault(d["tool_name"], []).append(
                d["result"][0]["text"] if d["success"] else "ERR " + d["error"])
    assert res["read_file"] == ["alpha beta", "ERR No such file"]
    assert res["storage_get"] == ["blue"]
    assert res["grep_files"] == ["/docs/readme.md:2: world"]
    assert res["list_files"] == ["/docs/readme.md\n/notes/a.txt"] or \
        res["list_files"] == ["/notes/a.txt\n/docs/readme.md"]
    assert res["no_such_tool"][0].startswith("ERR Unknown tool")


def test_base_harness_has_no_file_tools(api):
    sid = api.create_session({"harness_name": "base"})["id"]
    post_message(api, sid, "x", hints={"tool": "write_file",
                                       "arguments": {"path": "/a", "content": "b"}})
    evs = wait_turn_end(api, sid)
    done = [e["data"] for e in evs if e["type"] == "tool.completed"][0]
    assert done["success"] is False and done["error"].startswith("Unknown tool")


def test_max_iterations_ends_the_turn(api):
    sid = api.create_session({"max_iterations": 1})["id"]
    post_message(api, sid, "x", hints={"tool": "current_time"})
    evs = wait_turn_end(api, sid)
    failed = [e["data"] for e in evs if e["type"] == "turn.failed"]
    assert failed and failed[0]["error_code"] == "max_iterations"
    assert types(evs)[-1] == "session.idled"
    assert get_session(api, sid)["activity"] == "failed"


def test_cancel_while_waiting(api):
    sid = api.create_session({"tools": [WEATHER]})["id"]
    post_message(api, sid, "weather?", hints={"tool": "get_weather"})
    waiting(api, sid)
    r = expect(api.post("/v1/sessions/%s/cancel" % sid), 200)
    assert r.json()["status"] == "cancelled"
    s = get_session(api, sid)
    assert s["status"] == "idle"
    assert types(get_events(api, sid))[-1] == "session.idled"


def test_tool_effects_survive_kill9(fresh_server):
    srv = fresh_server()
    c = srv.client()
    sid = c.create_session({})["id"]
    post_message(c, sid, "save", hints={"tool": "storage_set",
                                        "arguments": {"key": "k", "value": "kept"}})
    wait_turn_end(c, sid)
    srv.stop(signal.SIGKILL)
    srv.start()
    c = srv.client()
    post_message(c, sid, "load", hints={"tool": "storage_get", "arguments": {"key": "k"}})
    evs = wait_turn_end(c, sid, turns=2)
    got = [e["data"] for e in evs if e["type"] == "tool.completed"][-1]
    assert got["success"] and got["result"][0]["text"] == "kept"
