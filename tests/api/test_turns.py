"""Turns over HTTP: messages, the llmsim agent loop, the event log, cancel,
steering, idempotency and the event filters (reference sections 12, 14, 15,
16.3, 16.4 and 23), against the real binary.

No sleeps are used to synchronise: turns are followed on SSE streams read
with deadlines, or by polling with bounded deadlines.
"""
import collections
import json
import re
import time
import uuid
from concurrent.futures import ThreadPoolExecutor

import pytest

from conftest import (
    MESSAGE_ID_RE, SCHEMA8_INSERT_TRIGGERS, TURN_ID_RE, assert_problem, check_log, expect, get_events,
    get_session, open_sse, post_message, raw_connect, read_raw_response, sse_event,
    user_message, validate, wait_for, wait_turn_end,
)

PLAIN_ORDER_HEAD = ["input.message", "session.activated", "turn.started", "reason.started",
                    "output.message.started"]
PLAIN_ORDER_TAIL = ["llm.generation", "output.message.completed", "reason.completed",
                    "turn.completed", "session.idled"]
TURN_TYPES = {"session.activated", "turn.started", "output.message.started",
              "output.message.delta", "turn.completed", "turn.failed", "turn.cancelled",
              "session.idled"}


def schema_errors(events, name="TypedEvent"):
    """Validate every event; return the violations (asserted at the end of a
    test so that the other checks still run)."""
    errs = []
    for ev in events:
        try:
            validate(ev, name)
        except AssertionError as exc:
            errs.append("%s (seq %s): %s" % (ev.get("type"), ev.get("sequence"), str(exc)[:700]))
    return errs


def types_of(events):
    return [e["type"] for e in events]


def collapse_deltas(types):
    out = []
    for t in types:
        if t == "output.message.delta" and out and out[-1] == "output.message.delta*":
            continue
        out.append("output.message.delta*" if t == "output.message.delta" else t)
    return out


def text_of(msg):
    return "".join(p.get("text", "") for p in msg["content"] if p.get("type") == "text")


def check_plain_turn(evs, user_msg, answer=None):
    """One complete plain-answer turn (reference 15.4.1, 15.3 shapes)."""
    types = types_of(evs)
    assert collapse_deltas(types) == PLAIN_ORDER_HEAD + ["output.message.delta*"] + PLAIN_ORDER_TAIL, \
        "event order: %s" % types
    by = {}
    for e in evs:
        by.setdefault(e["type"], []).append(e)
    # input.message: the API's event, context {}
    inp = by["input.message"][0]
    assert inp["context"] == {}, inp
    assert inp["data"]["message"]["id"] == user_msg["id"]
    assert inp["data"]["message"]["role"] == "user"
    assert inp["data"]["message"]["content"] == user_msg["content"]
    assert inp["sequence"] == user_msg["sequence"]
    turn_id = by["turn.started"][0]["data"]["turn_id"]
    assert TURN_ID_RE.match(turn_id), turn_id
    for e in evs[1:]:
        assert e["context"].get("turn_id") == turn_id, "context.turn_id of %s: %r" % (e["type"], e)
        assert e["context"].get("input_message_id") == user_msg["id"], e
        if e["type"] in TURN_TYPES:
            assert e["data"].get("turn_id") == turn_id, "data.turn_id of %s: %r" % (e["type"], e)
    for t in ("session.activated", "turn.started"):
        assert by[t][0]["data"]["input_message_id"] == user_msg["id"]
    started = by["output.message.started"][0]["data"]
    mid = started["message_id"]
    assert MESSAGE_ID_RE.match(mid), started
    deltas = by["output.message.delta"]
    acc = ""
    for d in deltas:
        assert d["data"]["message_id"] == mid, d
        acc += d["data"]["delta"]
        assert d["data"]["accumulated"] == acc, d
    done = by["output.message.completed"][0]["data"]
    msg = done["message"]
    assert msg["role"] == "agent", done
    assert msg["id"] == mid, "the completed message id must be the started message_id"
    assert msg["session_id"] == inp["session_id"]
    assert text_of(msg) == acc, "the deltas do not add up to the answer"
    if answer is not None:
        assert text_of(msg) == answer
    assert msg.get("phase") == "final_answer", msg
    rc = by["reason.completed"][0]["data"]
    assert rc["success"] is True and rc["has_tool_calls"] is False and rc["tool_call_count"] == 0, rc
    gen = by["llm.generation"][0]["data"]
    assert gen["output"]["text"] == text_of(msg) and gen["metadata"]["success"] is True, gen
    tc = by["turn.completed"][0]["data"]
    assert tc["iterations"] == 1, tc
    assert tc.get("final_message_id", mid) == mid, tc
    idled = by["session.idled"][0]["data"]
    assert idled["turn_id"] == turn_id
    return turn_id, msg


# --------------------------------------------------------------------------
# the SDK flow (reference section 23)
# --------------------------------------------------------------------------

def test_sdk_flow_agent_session_message_sse_messages(server, api):
    agent = api.create_agent("sdk-flow-" + uuid.uuid4().hex[:8], "You answer briefly.")
    r = api.post("/v1/sessions", {"agent_id": agent["id"], "title": "sdk flow"})
    expect(r, 201)
    sess = r.json()
    sid = sess["id"]
    assert sess["status"] == "started"
    with open_sse(server, sid) as stream:
        r = api.post("/v1/sessions/%s/messages" % sid,
                     user_message("What is the capital of France?", {"text": "Paris is the capital."}))
        expect(r, 201)
        created = r.json()
        assert created["delivery"] == "started", created
        validate({k: v for k, v in created.items() if k != "delivery"}, "Message")
        assert MESSAGE_ID_RE.match(created["id"]), created
        assert created["session_id"] == sid and created["role"] == "user"
        assert created["sequence"] == 1
        assert created["content"] == [{"type": "text", "text": "What is the capital of France?"}]
        frames = stream.read_until(lambda f: f.event == "session.idled", timeout=10)
    streamed = [sse_event(f, sid) for f in frames]
    assert "turn.completed" in types_of(streamed)
    errs = schema_errors(streamed)
    for f in frames:
        assert f.retry == 100, f
    turn_id, agent_msg = check_plain_turn(streamed, created, "Paris is the capital.")
    rs = [e for e in streamed if e["type"] == "reason.started"][0]["data"]
    assert rs["agent_id"] == agent["id"] and rs["harness_id"] == sess["harness_id"], rs
    # the stream is exactly the log
    log = get_events(api, sid)
    check_log(log, sid)
    assert log == streamed, "SSE events differ from GET /events"
    # messages, with the TS SDK alias
    body = expect(api.get("/v1/sessions/%s/messages" % sid), 200).json()
    try:
        validate(body, "ListResponse_Message")
    except AssertionError as exc:
        errs.append(str(exc))
    assert body["messages"] == body["data"], "messages alias differs from data"
    msgs = body["data"]
    assert [m["role"] for m in msgs] == ["user", "agent"], msgs
    assert {k: v for k, v in msgs[0].items()} == {k: v for k, v in created.items() if k != "delivery"}
    assert msgs[1]["id"] == agent_msg["id"] and text_of(msgs[1]) == "Paris is the capital."
    assert msgs[1]["sequence"] == [e for e in log if e["type"] == "output.message.completed"][0]["sequence"]
    for m in msgs:
        assert m["session_id"] == sid
    # the session: idle, usage = the cumulative usage of session.idled
    s = get_session(api, sid)
    validate(s, "WithUrls_Session")
    assert s["status"] == "idle", s
    idled = log[-1]["data"]
    assert s["usage"]["input_tokens"] == idled["usage"]["input_tokens"] > 0
    assert s["usage"]["output_tokens"] == idled["usage"]["output_tokens"] > 0
    tc = [e for e in log if e["type"] == "turn.completed"][0]["data"]
    assert tc["usage"] == idled["usage"]  # first turn: turn usage = session usage
    assert not errs, "events violate the Event schema:\n" + "\n".join(errs)


def test_every_event_of_each_path_validates_against_event_schema(api):
    """Plain, failed and cancelled turns: every logged event is a valid Event
    (TypedEvent: Event with data checked against its type's variant)."""
    sid = api.create_session()["id"]
    post_message(api, sid, "plain")
    wait_turn_end(api, sid, 1)
    post_message(api, sid, "fail", {"fail": "llm_error"})
    wait_turn_end(api, sid, 2)
    post_message(api, sid, "slow", {"latency_ms": 3000})
    wait_for(lambda: types_of(get_events(api, sid)).count("output.message.started") == 2, 5,
             "the third turn to stream")
    assert expect(api.post("/v1/sessions/%s/cancel" % sid), 200).json()["status"] == "cancelled"
    log = get_events(api, sid)
    check_log(log, sid)
    errs = schema_errors(log)
    assert not errs, "%d of %d events violate the Event schema:\n%s" % (
        len(errs), len(log), "\n".join(errs))


def test_usage_accumulates_across_turns(api):
    sid = api.create_session()["id"]
    post_message(api, sid, "one", {"text": "first answer here"})
    log1 = wait_turn_end(api, sid, 1)
    u1 = log1[-1]["data"]["usage"]
    post_message(api, sid, "two", {"text": "a second, longer answer than the first one"})
    log2 = wait_turn_end(api, sid, 2)
    u2 = log2[-1]["data"]["usage"]
    tc2 = [e for e in log2 if e["type"] == "turn.completed"][-1]["data"]["usage"]
    for k in ("input_tokens", "output_tokens"):
        assert u2[k] == u1[k] + tc2[k], (u1, tc2, u2)
    s = get_session(api, sid)
    assert s["usage"]["input_tokens"] == u2["input_tokens"]
    assert s["usage"]["output_tokens"] == u2["output_tokens"]
    check_log(log2, sid)


def test_same_input_same_answer(api):
    """llmsim is deterministic."""
    answers = []
    for _ in range(2):
        sid = api.create_session()["id"]
        post_message(api, sid, "Tell me something reproducible")
        log = wait_turn_end(api, sid, 1)
        done = [e for e in log if e["type"] == "output.message.completed"][0]
        answers.append((text_of(done["data"]["message"]),
                        [e["data"]["delta"] for e in log if e["type"] == "output.message.delta"],
                        done["data"]["usage"]))
    assert answers[0] == answers[1]
    assert len(answers[0][1]) >= 2, "llmsim should stream several deltas"


# --------------------------------------------------------------------------
# status transitions, failure, cancel
# --------------------------------------------------------------------------

def test_status_active_during_latency_turn_then_idle(server, api):
    sid = api.create_session()["id"]
    with open_sse(server, sid) as stream:
        m = post_message(api, sid, "slow one", {"latency_ms": 800})
        assert m["delivery"] == "started"
        # the 201 leaves once input and activation are durable
        assert get_session(api, sid)["status"] == "active"
        frames = stream.read_until(lambda f: f.event == "output.message.delta", 5)
        assert get_session(api, sid)["status"] == "active", "not active mid-stream"
        frames += stream.read_until(lambda f: f.event == "session.idled", 10)
    evs = [sse_event(f, sid) for f in frames]
    check_plain_turn(evs, m)
    s = get_session(api, sid)
    assert s["status"] == "idle", s
    assert s.get("activity") in (None, "completed", "idle"), s


@pytest.mark.parametrize("how", ["hints", "marker"])
def test_failed_turn(api, how):
    sid = api.create_session()["id"]
    if how == "hints":
        m = post_message(api, sid, "please fail", {"fail": "llm_error"})
        code = "llm_error"
    else:
        m = post_message(api, sid, "please fail llmsim:fail=provider_rate_limited")
        code = "provider_rate_limited"
    log = wait_turn_end(api, sid, 1)
    check_log(log, sid)
    types = types_of(log)
    assert types[:4] == ["input.message", "session.activated", "turn.started", "reason.started"], types
    assert types[-4:] == ["reason.completed", "output.message.completed", "turn.failed",
                          "session.idled"], types
    assert "turn.completed" not in types
    turn_id = log[2]["data"]["turn_id"]
    rc, omc, tf, idled = log[-4:]
    assert rc["data"]["success"] is False and rc["data"].get("error"), rc
    assert omc["data"]["message"]["role"] == "agent" and text_of(omc["data"]["message"]), omc
    assert omc["data"]["error_code"] == code, omc
    assert tf["data"] == {**tf["data"], "turn_id": turn_id, "error_code": code}, tf
    assert isinstance(tf["data"]["error"], str) and tf["data"]["error"], tf
    assert idled["data"]["turn_id"] == turn_id
    for e in log[1:]:
        assert e["context"].get("turn_id") == turn_id, e
    s = get_session(api, sid)
    assert s["status"] == "idle", s
    msgs = expect(api.get("/v1/sessions/%s/messages" % sid), 200).json()["data"]
    assert [x["role"] for x in msgs] == ["user", "agent"]
    assert msgs[0]["id"] == m["id"]
    # the session takes the next message normally
    post_message(api, sid, "now answer", {"text": "fine"})
    log = wait_turn_end(api, sid, 2)
    assert log[-2]["type"] == "turn.completed", types_of(log)


def test_cancel_mid_stream_then_no_op(server, api):
    sid = api.create_session()["id"]
    with open_sse(server, sid) as stream:
        m = post_message(api, sid, "a long answer please", {"latency_ms": 1600})
        before = stream.read_until(lambda f: f.event == "output.message.delta", 5)
        r = expect(api.post("/v1/sessions/%s/cancel" % sid), 200)
        body = r.json()
        validate(body, "CancelTurnResponse")
        assert body == {"status": "cancelled", "message": "Turn cancelled successfully"}, body
        # the cancel is durable when it is answered
        assert get_session(api, sid)["status"] == "idle"
        after = stream.read_until(lambda f: f.event == "session.idled", 5)
        # nothing of the cancelled model call arrives later
        stream.expect_silence(1.2)
    evs = [sse_event(f, sid) for f in before + after]
    log = get_events(api, sid)
    check_log(log, sid)
    assert log == evs, "the stream differs from the log"
    types = types_of(log)
    assert types[-4:] == ["turn.cancelled", "input.message", "output.message.completed",
                          "session.idled"], types
    assert "turn.completed" not in types and "turn.failed" not in types
    turn_id = log[2]["data"]["turn_id"]
    tc, inp, omc, idled = log[-4:]
    assert tc["data"]["turn_id"] == turn_id and tc["data"].get("reason"), tc
    assert text_of(inp["data"]["message"]) == "User requested to cancel the work.", inp
    assert omc["data"]["message"]["role"] == "agent", omc
    assert idled["data"]["turn_id"] == turn_id
    # idempotent: nothing runs now
    for _ in range(2):
        body = expect(api.post("/v1/sessions/%s/cancel" % sid), 200).json()
        assert body == {"status": "no_op", "message": "No turn currently running"}, body
    assert len(get_events(api, sid)) == len(log), "a no_op cancel must not log anything"
    # the session still works
    post_message(api, sid, "again", {"text": "back"})
    log2 = wait_turn_end(api, sid, 2)
    check_log(log2, sid)
    assert log2[-2]["type"] == "turn.completed"
    assert m["id"] != log2[len(log)]["data"]["message"]["id"]


def test_cancel_never_run_session_is_no_op(api):
    sid = api.create_session()["id"]
    body = expect(api.post("/v1/sessions/%s/cancel" % sid), 200).json()
    assert body["status"] == "no_op", body
    assert get_events(api, sid) == []


# --------------------------------------------------------------------------
# messages during a turn
# --------------------------------------------------------------------------

def test_message_during_turn_is_steered_into_it(server, api):
    sid = api.create_session()["id"]
    with open_sse(server, sid) as stream:
        m1 = post_message(api, sid, "first question", {"latency_ms": 1000, "text": "first answer"})
        assert m1["delivery"] == "started"
        stream.read_until(lambda f: f.event == "output.message.started", 5)
        m2 = post_message(api, sid, "second question", {"text": "second answer"})
        assert m2["delivery"] == "steered", m2
        assert m2["sequence"] > m1["sequence"]
        stream.read_until(lambda f: f.event == "session.idled", 10)
    log = get_events(api, sid)
    check_log(log, sid)
    types = types_of(log)
    assert types.count("turn.started") == 1, types
    assert types.count("session.idled") == 1, types
    end = types.index("turn.completed")
    completed = [e for e in log[:end] if e["type"] == "output.message.completed"]
    assert len(completed) == 2, "the steered message must be answered within the same turn: %s" % types
    assert [text_of(e["data"]["message"]) for e in completed] == ["first answer", "second answer"]
    assert completed[1]["sequence"] > m2["sequence"], "the second answer must follow the steered input"
    assert log[end]["data"]["iterations"] == 2, log[end]
    turn_id = log[2]["data"]["turn_id"]
    assert all(e["data"]["message"]["role"] == "agent" for e in completed)
    assert log[end]["data"]["turn_id"] == turn_id
    msgs = expect(api.get("/v1/sessions/%s/messages" % sid), 200).json()["data"]
    assert [(x["role"], x["id"]) for x in msgs if x["role"] == "user"] == [("user", m1["id"]),
                                                                          ("user", m2["id"])]
    assert [text_of(x) for x in msgs if x["role"] == "agent"] == ["first answer", "second answer"]
    assert [x["sequence"] for x in msgs] == sorted(x["sequence"] for x in msgs)
    assert get_session(api, sid)["status"] == "idle"


def test_messages_posted_during_turn_are_never_lost(api):
    """A burst of messages while a turn streams: each one is accepted
    (steered or queued, never an error) and every one gets answered."""
    sid = api.create_session()["id"]
    first = post_message(api, sid, "start", {"latency_ms": 400})
    posted = [first]
    for i in range(5):
        m = post_message(api, sid, "follow-up %d" % i, {"text": "answer %d" % i})
        assert m["delivery"] in ("steered", "queued", "started"), m
        posted.append(m)

    def settled():
        evs = get_events(api, sid)
        if get_session(api, sid)["status"] != "idle" or not evs or evs[-1]["type"] != "session.idled":
            return None
        return evs
    log = wait_for(settled, 15, "the session to settle")
    check_log(log, sid)
    inputs = [e["data"]["message"]["id"] for e in log if e["type"] == "input.message"]
    assert inputs == [m["id"] for m in posted]
    last_input = max(m["sequence"] for m in posted)
    after = [e for e in log if e["sequence"] > last_input]
    assert any(e["type"] == "output.message.completed" for e in after), \
        "the newest message was never answered: %s" % types_of(log)
    assert types_of(log).count("turn.started") == types_of(log).count("session.idled")


# --------------------------------------------------------------------------
# client_message_id
# --------------------------------------------------------------------------

def test_client_message_id_duplicate(api):
    sid = api.create_session()["id"]
    cid = str(uuid.uuid4())
    m = post_message(api, sid, "once", client_message_id=cid)
    assert m["delivery"] == "started" and m["client_message_id"] == cid, m
    log = wait_turn_end(api, sid, 1)
    r = api.post("/v1/sessions/%s/messages" % sid, user_message("once", client_message_id=cid))
    expect(r, 200)
    dup = r.json()
    assert dup["delivery"] == "duplicate", dup
    assert {k: v for k, v in dup.items() if k != "delivery"} == \
        {k: v for k, v in m.items() if k != "delivery"}
    # different content, same id: still the stored message
    r = api.post("/v1/sessions/%s/messages" % sid, user_message("other text", client_message_id=cid))
    expect(r, 200)
    assert r.json()["id"] == m["id"] and r.json()["content"] == m["content"]
    assert get_events(api, sid) == log, "a duplicate must not log or start anything"
    assert get_session(api, sid)["status"] == "idle"
    # scoped to the session
    sid2 = api.create_session()["id"]
    m2 = post_message(api, sid2, "once", client_message_id=cid)
    assert m2["delivery"] == "started" and m2["id"] != m["id"]
    wait_turn_end(api, sid2, 1)


def test_client_message_id_concurrent_duplicates_store_one(server, api):
    """The same client_message_id posted concurrently (16 connections
    opened first, the requests then sent back to back): one message is
    stored, every other answer is a 200 duplicate of it."""
    sid = api.create_session()["id"]
    cid = str(uuid.uuid4())
    body = json.dumps(user_message("racing", {"latency_ms": 300},
                                   client_message_id=cid)).encode()
    req = ("POST /v1/sessions/%s/messages HTTP/1.1\r\nHost: x\r\nAuthorization: %s\r\n"
           "Content-Type: application/json\r\nContent-Length: %d\r\nConnection: close\r\n\r\n"
           % (sid, server.key, len(body))).encode() + body
    socks = [raw_connect(server.port) for _ in range(16)]
    try:
        for s in socks:
            s.sendall(req)
        rs = [read_raw_response(s, time.monotonic() + 10)[0] for s in socks]
    finally:
        for s in socks:
            s.close()
    for r in rs:
        assert r is not None and r.status_code in (200, 201), r
    created = [r.json() for r in rs if r.status_code == 201]
    ids = {r.json()["id"] for r in rs}
    wait_for(lambda: get_session(api, sid)["status"] == "idle", 10, "idle")
    inputs = [e for e in get_events(api, sid) if e["type"] == "input.message"]
    assert len(created) == 1 and len(ids) == 1 and len(inputs) == 1, \
        "client_message_id %s stored %d times (statuses %s)" % (
            cid, len(inputs), [r.status_code for r in rs])


def test_client_message_id_not_confused_with_metadata(api):
    """Only a message's own client_message_id makes a duplicate, not a
    metadata value that happens to look like one."""
    sid = api.create_session()["id"]
    cid = str(uuid.uuid4())
    m1 = post_message(api, sid, "first", metadata={"client_message_id": cid})
    assert m1["metadata"] == {"client_message_id": cid}
    wait_turn_end(api, sid, 1)
    r = api.post("/v1/sessions/%s/messages" % sid, user_message("second", client_message_id=cid))
    assert r.status_code == 201 and r.json()["delivery"] == "started", \
        "a new client_message_id was taken for a duplicate of a message whose metadata " \
        "holds that value: %d %s" % (r.status_code, r.text[:400])


# --------------------------------------------------------------------------
# validation
# --------------------------------------------------------------------------

@pytest.mark.parametrize("body,field", [
    ({"message": {"role": "user", "content": []}}, "content"),
    ({"message": {"role": "agent", "content": [{"type": "text", "text": "x"}]}}, "role"),
    ({"message": {"role": "assistant", "content": [{"type": "text", "text": "x"}]}}, "role"),
    ({"message": {"role": "user", "content": [{"type": "text", "text": "x"}]},
      "client_message_id": "not-a-uuid"}, "client_message_id"),
    ({"message": {"role": "user", "content": [{"type": "text", "text": "x"}]},
      "client_message_id": 42}, "client_message_id"),
    ({"message": {"role": "user", "content": "just text"}}, "content"),
    ({"message": {"role": "user", "content": [{"type": "tool_call", "id": "c", "name": "n",
                                                "arguments": {}}]}}, "type"),
    ({"message": {"role": "user", "content": [{"type": "text", "text": 5}]}}, "text"),
    ({"message": {"role": "user", "content": [{"text": "no type"}]}}, "type"),
    ({}, "message"),
    ({"message": "hi"}, "message"),
    ({"message": {"role": "user", "content": [{"type": "text", "text": "x"}]},
      "controls": "fast"}, "controls"),
    ({"message": {"role": "user", "content": [{"type": "text", "text": "x"}]},
      "metadata": [1]}, "metadata"),
])
def test_post_message_validation(api, body, field):
    sid = api.create_session()["id"]
    assert_problem(api.post("/v1/sessions/%s/messages" % sid, body), 400, detail_contains=field)
    assert get_events(api, sid) == [], "a rejected message must not be logged"
    assert get_session(api, sid)["status"] == "started"


def test_post_message_bad_json(api):
    sid = api.create_session()["id"]
    r = api.post("/v1/sessions/%s/messages" % sid, data=b"{not json",
                 headers={"Content-Type": "application/json"})
    assert_problem(r, 400)


def test_unknown_malformed_and_foreign_sessions(api, org2):
    unknown = "session_0190000000007000800000000000abcd"
    for path in ("/v1/sessions/%s/messages", "/v1/sessions/%s/events", "/v1/sessions/%s/cancel"):
        method = api.post if path.endswith("cancel") else api.get
        assert_problem(method(path % unknown), 404)
        assert_problem(method(path % "session_nope"), 400)
    assert_problem(api.post("/v1/sessions/%s/messages" % unknown, user_message("x")), 404)
    assert_problem(api.post("/v1/sessions/%s/messages" % "sess_123", user_message("x")), 400)
    # another org's session is not found, whatever the operation
    sid = api.create_session()["id"]
    post_message(api, sid, "mine")
    wait_turn_end(api, sid, 1)
    c2 = org2["client"]
    assert_problem(c2.post("/v1/sessions/%s/messages" % sid, user_message("theirs")), 404)
    assert_problem(c2.get("/v1/sessions/%s/messages" % sid), 404)
    assert_problem(c2.get("/v1/sessions/%s/events" % sid), 404)
    assert_problem(c2.post("/v1/sessions/%s/cancel" % sid), 404)
    assert len(get_events(api, sid)) == len(wait_turn_end(api, sid, 1))
    # and without a key
    assert_problem(api.get("/v1/sessions/%s/events" % sid, auth=None), 401)
    assert_problem(api.post("/v1/sessions/%s/messages" % sid, user_message("x"), auth=None), 401)


# --------------------------------------------------------------------------
# GET /events filters and cursors
# --------------------------------------------------------------------------

@pytest.fixture(scope="module")
def two_turns(api):
    sid = api.create_session()["id"]
    post_message(api, sid, "first turn please")
    wait_turn_end(api, sid, 1)
    post_message(api, sid, "second turn please", {"fail": "llm_error"})
    log = wait_turn_end(api, sid, 2)
    check_log(log, sid)
    return sid, log


def test_events_types_filter(api, two_turns):
    sid, log = two_turns
    got = get_events(api, sid, [("types", "turn.started"), ("types", "turn.completed")])
    assert got == [e for e in log if e["type"] in ("turn.started", "turn.completed")]
    assert types_of(got) == ["turn.started", "turn.completed", "turn.started"]
    got = get_events(api, sid, {"types": "turn.failed"})
    assert got == [e for e in log if e["type"] == "turn.failed"] and len(got) == 1


def test_events_exclude_filter(api, two_turns):
    sid, log = two_turns
    got = get_events(api, sid, {"exclude": "output.message.delta"})
    assert got == [e for e in log if e["type"] != "output.message.delta"]
    got = get_events(api, sid, [("types", "turn.started"), ("types", "session.idled"),
                                ("exclude", "session.idled")])
    assert got == [e for e in log if e["type"] == "turn.started"]


def test_events_filter_errors(api, two_turns):
    sid, _ = two_turns
    assert_problem(api.get("/v1/sessions/%s/events" % sid, params={"types": "x"}), 400,
                   detail="types: unknown event type 'x'")
    assert_problem(api.get("/v1/sessions/%s/events" % sid, params={"exclude": "message.user"}),
                   400, detail="exclude: unknown event type 'message.user'")
    assert_problem(api.get("/v1/sessions/%s/events" % sid,
                           params=[("types", "turn.started")] * 26), 400,
                   detail_contains="too many values")
    assert expect(api.get("/v1/sessions/%s/events" % sid,
                          params=[("types", "turn.started")] * 25), 200)
    for bad in ("0", "1001", "-1", "abc", ""):
        assert_problem(api.get("/v1/sessions/%s/events" % sid, params={"limit": bad}), 400,
                       detail_contains="limit")


def test_events_limit_is_last_n_with_total_count(api, two_turns):
    sid, log = two_turns
    non_delta = len([e for e in log if e["type"] != "output.message.delta"])
    for n in (1, 3, 1000):
        r = expect(api.get("/v1/sessions/%s/events" % sid, params={"limit": n}), 200)
        assert r.json()["data"] == log[-n:], "limit=%d is not the last %d events" % (n, n)
        assert r.headers.get("X-Total-Count") == str(non_delta), r.headers


def test_events_since_id_and_after_sequence(api, two_turns):
    sid, log = two_turns
    for k in (0, 1, 5, len(log) - 1):
        got = get_events(api, sid, {"since_id": log[k]["id"]})
        assert got == log[k + 1:], "since_id of seq %d" % log[k]["sequence"]
        got = get_events(api, sid, {"after_sequence": log[k]["sequence"]})
        assert got == log[k + 1:], "after_sequence=%d" % log[k]["sequence"]
    got = get_events(api, sid, {"since_id": log[3]["id"], "types": "session.idled"})
    assert got == [e for e in log[4:] if e["type"] == "session.idled"]
    got = get_events(api, sid, {"since_id": log[3]["id"], "limit": 2})
    assert got == log[-2:]
    assert_problem(api.get("/v1/sessions/%s/events" % sid, params={"since_id": "event_zz"}), 400)
    r = api.get("/v1/sessions/%s/events" % sid,
                params={"since_id": "event_0190000000007000800000000000abcd"})
    assert r.status_code in (400, 404), r.text
    assert_problem(r, r.status_code)
    # an event of another session is not a cursor here
    other = api.create_session()["id"]
    post_message(api, other, "elsewhere")
    olog = wait_turn_end(api, other, 1)
    r = api.get("/v1/sessions/%s/events" % sid, params={"since_id": olog[0]["id"]})
    assert r.status_code in (400, 404), r.text
    # an event ID ends with its sequence, which is a hint, not a key: the
    # same ending with other random digits names no event
    real = log[5]["id"]
    forged = real[:-12] + ("0" if real[-12] != "0" else "1") + real[-11:]
    assert real.endswith("%08x" % log[5]["sequence"])
    r = api.get("/v1/sessions/%s/events" % sid, params={"since_id": forged})
    assert r.status_code in (400, 404), r.text


def _last_event(c, sid):
    r = expect(c.get("/v1/sessions/%s/events" % sid, params={"limit": 1}), 200)
    return (r.json()["data"] or [None])[0]


def test_events_and_messages_of_a_log_bigger_than_one_buffer_are_streamed(fresh_server):
    """Without `limit` the whole log is answered (as the spec says), and
    with `limit` up to 1,000 events: past 4 MiB the answer is streamed
    (chunked) instead of built in one buffer, where a log past 16 MiB was a
    500 and 1,000 big events crashed loopd.  The messages of such a log are
    streamed too."""
    srv = fresh_server()
    c = srv.client()
    sid = c.create_session()["id"]
    big = "x" * 1900000
    for i in range(9):  # ~1.9 MB per input.message: the log passes 16 MiB
        post_message(c, sid, big + str(i))
        wait_for(lambda: (_last_event(c, sid) or {}).get("type") == "session.idled"
                 and get_session(c, sid)["status"] == "idle", what="turn %d to end" % i)
    last_seq = _last_event(c, sid)["sequence"]
    non_delta = None
    for params in (None, {"limit": 1000}, {"since_id": None}):
        if params and "since_id" in params:
            params = {"since_id": first_id}
        r = expect(c.get("/v1/sessions/%s/events" % sid, params=params), 200)
        assert r.headers.get("Transfer-Encoding") == "chunked", params
        got = r.json()["data"]
        seqs = [e["sequence"] for e in got]
        assert seqs == list(range(2 if params and "since_id" in params else 1, last_seq + 1)), params
        assert sum(1 for e in got if e["type"] == "input.message") == \
            (8 if params and "since_id" in params else 9)
        if non_delta is None:
            first_id = got[0]["id"]
            non_delta = len([e for e in got if e["type"] != "output.message.delta"])
        assert r.headers["X-Total-Count"] == str(non_delta)
    r = expect(c.get("/v1/sessions/%s/events" % sid,
                     params={"limit": 3, "types": "input.message"}), 200)
    assert [e["data"]["message"]["content"][0]["text"] for e in r.json()["data"]] == \
        [big + str(i) for i in (6, 7, 8)]

    # the messages of that log (~17 MB, twice: `data` and `messages`) are
    # streamed, chunked, instead of built in one buffer (which was a 500)
    r = expect(c.get("/v1/sessions/%s/messages" % sid), 200)
    assert r.headers.get("Transfer-Encoding") == "chunked" and "Content-Length" not in r.headers
    body = r.json()
    assert body["data"] == body["messages"]
    assert [m["role"] for m in body["data"]] == ["user", "agent"] * 9
    assert [m["content"][0]["text"] for m in body["data"][0::2]] == [big + str(i) for i in range(9)]
    for m in body["data"][:2]:
        validate(m, "Message")
    # over HTTP/1.0 the same answer ends at the close
    with raw_connect(srv.port, timeout=30) as so:
        so.sendall(("GET /v1/sessions/%s/messages HTTP/1.0\r\nAuthorization: %s\r\n\r\n"
                    % (sid, srv.key)).encode())
        raw = bytearray()
        while True:
            chunk = so.recv(1 << 20)
            if not chunk:
                break
            raw += chunk
    head, _, rest = bytes(raw).partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200") and b"transfer-encoding" not in head.lower(), head
    assert json.loads(rest)["messages"] == body["data"]
    # a client that goes away mid-answer costs nothing (the ASan and
    # valgrind runs check that the stream's state is freed)
    with raw_connect(srv.port) as so:
        so.sendall(("GET /v1/sessions/%s/messages HTTP/1.1\r\nHost: x\r\nAuthorization: %s\r\n\r\n"
                    % (sid, srv.key)).encode())
        assert so.recv(65536).startswith(b"HTTP/1.1 200")
    expect(c.get("/healthz"), 200)
    # a small history is still one buffered answer with a length
    small = c.create_session()["id"]
    post_message(c, small, "hi")
    wait_turn_end(c, small)
    r = expect(c.get("/v1/sessions/%s/messages" % small), 200)
    assert "Content-Length" in r.headers and len(r.json()["messages"]) == 2


def test_events_limit_reads_back_across_pages(fresh_server):
    """`limit` answers the newest matches, read backwards from the log's end
    a page (500 rows) at a time; X-Total-Count is the session's non-delta
    count whatever the filter (kept by the writer, not counted per read)."""
    srv = fresh_server()
    c = srv.client()
    sid = c.create_session()["id"]
    for i in range(40):  # 14 events a turn: 560 events, more than a page
        post_message(c, sid, "turn %d" % i)
    log = wait_turn_end(c, sid, 40)
    assert len(log) > 500
    non_delta = len([e for e in log if e["type"] != "output.message.delta"])
    for params, want in (({"limit": 1000}, log),
                         ({"limit": 520}, log[-520:]),
                         ({"limit": 7, "types": "turn.completed"},
                          [e for e in log if e["type"] == "turn.completed"][-7:]),
                         ({"limit": 3, "types": "input.message", "since_id": log[len(log) - 30]["id"]},
                          [e for e in log[len(log) - 29:] if e["type"] == "input.message"][-3:]),
                         ({"limit": 5, "exclude": "output.message.delta"},
                          [e for e in log if e["type"] != "output.message.delta"][-5:])):
        r = expect(c.get("/v1/sessions/%s/events" % sid, params=params), 200)
        assert r.json()["data"] == want, params
        assert r.headers["X-Total-Count"] == str(non_delta), params
        assert "Link" not in r.headers
    srv.restart()
    c = srv.client()
    r = expect(c.get("/v1/sessions/%s/events" % sid, params={"limit": 2}), 200)
    assert r.headers["X-Total-Count"] == str(non_delta)


def test_event_cursors_are_indexed_also_after_an_upgrade(fresh_server):
    """A cursor (since_id, Last-Event-ID) is found without scanning the
    session's events (60 ms per lookup at 100,000 events): event IDs made
    since schema 8 end with their sequence, older ones are in the events_id
    index.  A database from schema 4 (no index, no events_total counter,
    random event IDs) gets both at start, with a log line, its cursors and
    X-Total-Count keep working, and its events move to a rowid table
    (schema 7) unchanged."""
    import os
    import sqlite3
    srv = fresh_server()
    c = srv.client()
    sid = c.create_session()["id"]
    for i in range(2):
        post_message(c, sid, "cursor %d" % i)
        log = wait_turn_end(c, sid, i + 1)
    srv.stop_clean()
    path = os.path.join(srv.data_dir, "loopd.db")
    db = sqlite3.connect(path)
    # the events as an older loopd wrote them: IDs all random
    renamed = {e["id"]: "event_" + uuid.uuid4().hex for e in log}
    db.execute("DROP TRIGGER events_no_update")
    for old_id, new_id in renamed.items():
        db.execute("UPDATE events SET id = ?2, body = json_set(body, '$.id', ?2) WHERE id = ?1",
                   (old_id, new_id))
    db.commit()
    log = [dict(e, id=renamed[e["id"]]) for e in log]
    db.executescript(SCHEMA8_INSERT_TRIGGERS +
                     " DROP INDEX events_id; ALTER TABLE sessions DROP COLUMN events_total;"
                     " PRAGMA user_version = 4;")
    db.close()
    srv.start()
    c = srv.client()
    assert "migrating the database schema" in srv.stderr_tail()
    for k in (0, 7, len(log) - 1):
        assert get_events(c, sid, {"since_id": log[k]["id"]}) == log[k + 1:]
    # migration 6 counted the stored events for X-Total-Count
    r = expect(c.get("/v1/sessions/%s/events" % sid, params={"limit": 1}), 200)
    assert r.headers["X-Total-Count"] == str(len([e for e in log if e["type"] != "output.message.delta"]))
    # migration 7 moved the events into a rowid table: the same log, the
    # same order, and still immutable and deleted with their session
    assert get_events(c, sid) == log
    other = c.create_session()["id"]
    post_message(c, other, "after the upgrade")
    other_log = wait_turn_end(c, other, 1)
    for k in (0, 5, len(other_log) - 1):
        assert get_events(c, other, {"since_id": other_log[k]["id"]}) == other_log[k + 1:]
    srv.stop_clean()
    db = sqlite3.connect(path)
    assert db.execute("PRAGMA user_version").fetchone()[0] >= 8  # 8 and any later ran
    # the older IDs are in the index (and the planner uses it for them),
    # the new ones end with their sequence and are not
    legacy = "substr(id, -8) <> printf('%08x', sequence)"
    plan = " ".join(r[3] for r in db.execute(
        "EXPLAIN QUERY PLAN SELECT sequence FROM events WHERE id = ? AND session_id = ? AND " + legacy,
        ("x", "y")))
    assert "events_id" in plan, plan
    assert db.execute("SELECT count(*) FROM events WHERE session_id = ? AND " + legacy,
                      (sid,)).fetchone()[0] == len(log)
    assert db.execute("SELECT count(*) FROM events WHERE session_id = ? AND NOT " + legacy,
                      (other,)).fetchone()[0] == len(other_log)
    sql = db.execute("SELECT sql FROM sqlite_master WHERE name = 'events'").fetchone()[0]
    assert "WITHOUT ROWID" not in sql.upper(), sql
    with pytest.raises(sqlite3.DatabaseError, match="immutable"):
        db.execute("UPDATE events SET body = '{}' WHERE session_id = ?", (sid,))
    db.close()
    srv.start()
    c = srv.client()
    expect(c.delete("/v1/sessions/%s" % sid), 204)
    assert get_events(c, other) == other_log
    srv.stop_clean()
    db = sqlite3.connect(path)
    assert db.execute("SELECT count(*) FROM events WHERE session_id = ?", (sid,)).fetchone()[0] == 0
    assert db.execute("SELECT count(*) FROM events WHERE session_id = ?", (other,)).fetchone()[0] == len(other_log)
    db.close()
    srv.start()


def test_events_of_new_session_empty(api):
    sid = api.create_session()["id"]
    r = expect(api.get("/v1/sessions/%s/events" % sid), 200)
    assert r.json()["data"] == []


# --------------------------------------------------------------------------
# many sessions at once
# --------------------------------------------------------------------------

def test_200_sessions_run_turns_at_once(fresh_server):
    srv = fresh_server()
    c = srv.client()
    n = 200
    with ThreadPoolExecutor(32) as pool:
        sids = list(pool.map(lambda i: c.create_session({"title": "load %d" % i})["id"], range(n)))

        def post(i):
            return post_message(c, sids[i], "load %d" % i,
                                 {"latency_ms": 300, "text": "answer %d" % i})
        msgs = list(pool.map(post, range(n)))
    assert all(m["delivery"] == "started" for m in msgs)
    stats = expect(c.get("/v1/sessions/stats"), 200).json()
    assert stats["total"] == n
    assert stats["active"] + stats["idle"] == n, stats

    def all_idle():
        st = expect(c.get("/v1/sessions/stats"), 200).json()
        return st if st["idle"] == n else None
    stats = wait_for(all_idle, 20, "all %d sessions to go idle" % n, interval=0.1)
    assert stats["active"] == 0 and stats["total"] == n, stats
    with ThreadPoolExecutor(32) as pool:
        logs = list(pool.map(lambda sid: get_events(c, sid), sids))
    for i, (sid, log) in enumerate(zip(sids, logs)):
        check_log(log, sid)
        types = types_of(log)
        assert types[-2:] == ["turn.completed", "session.idled"], (sid, types)
        assert types.count("turn.started") == 1
        done = [e for e in log if e["type"] == "output.message.completed"][0]
        assert text_of(done["data"]["message"]) == "answer %d" % i, "session %d got another's answer" % i


# --------------------------------------------------------------------------
# the OpenAPI document knows these routes
# --------------------------------------------------------------------------

def test_openapi_documents_turn_routes(api):
    doc = expect(api.get("/openapi.json"), 200).json()
    paths = doc["paths"]
    msgs = paths["/v1/sessions/{session_id}/messages"]
    assert set(msgs) >= {"get", "post"}
    post = msgs["post"]
    assert {"200", "201", "400", "404"} <= set(post["responses"]), post["responses"].keys()
    assert post["requestBody"]["content"]["application/json"]["schema"]
    lst = msgs["get"]["responses"]["200"]["content"]["application/json"]["schema"]
    ref = lst["$ref"].rsplit("/", 1)[1]
    assert "messages" in doc["components"]["schemas"][ref]["properties"], "no messages alias"
    ev = paths["/v1/sessions/{session_id}/events"]["get"]
    names = {p.get("name") for p in ev["parameters"]}
    assert {"since_id", "types", "exclude", "limit"} <= names, names
    assert "X-Total-Count" in ev["responses"]["200"].get("headers", {})
    sse = paths["/v1/sessions/{session_id}/sse"]["get"]
    assert "text/event-stream" in sse["responses"]["200"]["content"]
    names = {p.get("name") for p in sse["parameters"]}
    assert {"since_id", "types", "exclude", "Last-Event-ID"} <= names, names
    text = json.dumps(doc)
    for name in re.findall(r'"#/components/schemas/([^"]+)"', text):
        assert name in doc["components"]["schemas"], "dangling $ref " + name


def test_message_steered_into_a_failing_turn_gets_its_own_turn(api):
    sid = api.create_session({})["id"]
    post_message(api, sid, "this fails slowly", {"fail": "llm_error", "latency_ms": 600})
    wait_for(lambda: any(e["type"] == "reason.started" for e in get_events(api, sid)),
             what="the first turn to think")
    m = post_message(api, sid, "but answer me")
    assert m["delivery"] == "steered"
    evs = wait_turn_end(api, sid, turns=2)
    check_log(evs, sid)
    t = [e["type"] for e in evs]
    assert "turn.failed" in t and t[-2:] == ["turn.completed", "session.idled"], t
    second = [e for e in evs if e["type"] == "turn.started"][-1]
    assert second["data"]["input_message_id"] == m["id"]
    answer = [e for e in evs if e["type"] == "output.message.completed"][-1]
    assert "but answer me" in answer["data"]["message"]["content"][0]["text"]


def test_delete_racing_a_message_one_of_them_wins(fresh_server):
    """A DELETE and a message to the same idle session, sent together: the
    API's busy check passes the DELETE before the message starts its turn,
    and both ops reach the writer in one batch.  Whichever it runs first
    wins: the session is gone and the message answers 404, or the turn runs
    and the DELETE answers 409.  Never a 503, no events left without their
    session, no session left active, nothing logged as a failed write."""
    srv = fresh_server()
    c = srv.client()
    sids = [c.create_session({"title": "race %d" % i})["id"] for i in range(60)]
    # a first turn each, so that the racing message's events continue a log
    for sid in sids:
        post_message(c, sid, "first")
    for sid in sids:
        wait_turn_end(c, sid)
    auth = ("Authorization: %s\r\n" % srv.key).encode()
    body = json.dumps(user_message("second")).encode()
    outcomes = {}
    for sid in sids:
        with raw_connect(srv.port) as a, raw_connect(srv.port) as b:
            a.sendall(b"DELETE /v1/sessions/%s HTTP/1.1\r\nHost: x\r\n%s\r\n" % (sid.encode(), auth))
            b.sendall(b"POST /v1/sessions/%s/messages HTTP/1.1\r\nHost: x\r\n%sContent-Type: "
                      b"application/json\r\nContent-Length: %d\r\n\r\n%s"
                      % (sid.encode(), auth, len(body), body))
            deadline = time.monotonic() + 10
            ra, _, _ = read_raw_response(a, deadline)
            rb, _, _ = read_raw_response(b, deadline)
        assert ra is not None and rb is not None, sid
        outcomes[sid] = (ra.status_code, rb.status_code)
        assert outcomes[sid] in ((204, 404), (409, 201)), (sid, ra, rb)
        if rb.status_code == 404:
            assert_problem(rb, 404)
        if ra.status_code == 409:
            assert_problem(ra, 409)
    print("race outcomes:", sorted(collections.Counter(outcomes.values()).items()))
    for sid, (d, m) in outcomes.items():
        if d == 204:
            expect(c.get("/v1/sessions/%s" % sid), 404)
            expect(c.get("/v1/sessions/%s/events" % sid), 404)
        else:
            wait_turn_end(c, sid, turns=2)
    log = srv.stderr_tail(10**7)
    assert "event commit failed" not in log and "repaired a session" not in log, log[-3000:]
    srv.stop_clean()
    import os
    import sqlite3
    db = sqlite3.connect(os.path.join(srv.data_dir, "loopd.db"))
    orphans = db.execute("SELECT count(*) FROM events WHERE session_id NOT IN"
                         " (SELECT id FROM sessions)").fetchone()[0]
    db.close()
    assert orphans == 0
