"""The real model drivers (OpenAI-compatible Chat Completions, Anthropic
Messages) against a fake provider on loopback that speaks their streaming
formats: answers, deltas, usage, tool calls, errors, retries, timeouts,
malformed chunks and cancel."""
import hashlib

import pytest

from conftest import expect, get_events, get_session, post_message, validate, wait_for, wait_turn_end
from fake_provider import Fake


def model_id(provider, name):
    return "model_" + hashlib.sha256(("%s/%s" % (provider, name)).encode()).hexdigest()[:32]


@pytest.fixture(scope="module")
def fake():
    f = Fake()
    yield f
    f.close()


@pytest.fixture(scope="module")
def srv(fake):
    from conftest import start_server
    s = start_server(["--openai-base-url", fake.base, "--openai-models", "gpt-fake",
                      "--anthropic-base-url", fake.base, "--anthropic-models", "claude-fake",
                      "--llm-timeout", "2", "--llm-retries", "2",
                      "--delta-interval-ms", "0"],  # one event per chunk: counts are exact
                     env={"LOOPD_OPENAI_API_KEY": "sk-test-openai",
                          "LOOPD_ANTHROPIC_API_KEY": "sk-test-anthropic"})
    yield s
    s.stop_clean()


PROVIDERS = [("openai", "gpt-fake"), ("anthropic", "claude-fake")]


def session(c, provider, name, **extra):
    body = {"model_id": model_id(provider, name)}
    body.update(extra)
    return c.create_session(body)["id"]


def test_models_lists_the_configured_ones(srv):
    c = srv.client()
    data = expect(c.get("/v1/models"), 200).json()["data"]
    ids = {m["id"]: m for m in data}
    for provider, name in PROVIDERS:
        assert ids[model_id(provider, name)]["name"] == name
        assert ids[model_id(provider, name)]["provider"] == provider


def test_config_log_never_shows_api_keys(srv):
    log = srv.stderr_tail(200000)
    assert "sk-test-openai" not in log and "sk-test-anthropic" not in log


@pytest.mark.parametrize("provider,name", PROVIDERS)
def test_streamed_answer(srv, fake, provider, name):
    c = srv.client()
    sid = session(c, provider, name, system_prompt="Be brief.")
    post_message(c, sid, "hello world")
    evs = wait_turn_end(c, sid)
    t = [e["type"] for e in evs]
    deltas = [e["data"]["delta"] for e in evs if e["type"] == "output.message.delta"]
    assert "".join(deltas) == "echo: hello world" and len(deltas) == 3
    done = [e for e in evs if e["type"] == "output.message.completed"][-1]
    assert done["data"]["message"]["content"][0]["text"] == "echo: hello world"
    assert t[-2:] == ["turn.completed", "session.idled"]
    for e in evs:
        validate(e, "TypedEvent")
    s = get_session(c, sid)
    assert s["usage"]["input_tokens"] == 20 and s["usage"]["output_tokens"] == 7
    assert s["usage"]["cache_read_tokens"] == 4
    req = fake.requests[-1]
    assert req["body"]["model"] == name and req["body"]["stream"] is True
    if provider == "openai":
        assert req["path"] == "/v1/chat/completions"
        assert req["headers"]["Authorization"] == "Bearer sk-test-openai"
        assert req["body"]["messages"][0] == {"role": "system", "content": req["body"]["messages"][0]["content"]}
        assert "Be brief." in req["body"]["messages"][0]["content"]
    else:
        assert req["path"] == "/v1/messages"
        assert req["headers"]["x-api-key"] == "sk-test-anthropic"
        assert "Be brief." in req["body"]["system"]
    # the model is offered the built-in tools of a generic session
    names = {t.get("name") or t.get("function", {}).get("name") for t in req["body"]["tools"]}
    assert {"current_time", "read_file", "storage_get"} <= names


@pytest.mark.parametrize("provider,name", PROVIDERS)
def test_tool_call_round_trip(srv, fake, provider, name):
    c = srv.client()
    sid = session(c, provider, name)
    post_message(c, sid, "tool:current_time")
    evs = wait_turn_end(c, sid)
    started = [e["data"]["tool_call"] for e in evs if e["type"] == "tool.started"]
    assert started and started[0]["name"] == "current_time" and started[0]["arguments"] == {"x": 1}
    done = [e["data"] for e in evs if e["type"] == "tool.completed"][0]
    assert done["success"] is True
    # the second call carried the tool result back to the model
    req = fake.requests[-1]["body"]["messages"]
    if provider == "openai":
        assert any(m.get("role") == "tool" for m in req)
        assert any(m.get("tool_calls") for m in req if m.get("role") == "assistant")
    else:
        assert any(isinstance(m["content"], list) and any(p["type"] == "tool_result" for p in m["content"])
                   for m in req)
    assert evs[-2]["type"] == "turn.completed" and evs[-2]["data"]["iterations"] == 2


def test_provider_error_is_turn_failed(srv):
    c = srv.client()
    sid = session(c, "openai", "gpt-fake")
    post_message(c, sid, "status:400")
    evs = wait_turn_end(c, sid)
    failed = [e["data"] for e in evs if e["type"] == "turn.failed"][0]
    assert failed["error_code"] == "llm_error" and "HTTP 400" in failed["error"]
    assert get_session(c, sid)["activity"] == "failed"


def test_rate_limit_after_retries(srv, fake):
    c = srv.client()
    sid = session(c, "openai", "gpt-fake")
    before = len(fake.requests)
    post_message(c, sid, "status:429")
    evs = wait_turn_end(c, sid)
    failed = [e["data"] for e in evs if e["type"] == "turn.failed"][0]
    assert failed["error_code"] == "provider_rate_limited"
    assert len(fake.requests) - before == 3  # the first try and --llm-retries 2


def test_retry_then_success(srv, fake):
    c = srv.client()
    sid = session(c, "anthropic", "claude-fake")
    post_message(c, sid, "flaky:503")
    evs = wait_turn_end(c, sid)
    assert evs[-2]["type"] == "turn.completed"


def test_malformed_chunk(srv):
    c = srv.client()
    sid = session(c, "openai", "gpt-fake")
    post_message(c, sid, "garbage")
    evs = wait_turn_end(c, sid)
    failed = [e["data"] for e in evs if e["type"] == "turn.failed"][0]
    assert failed["error_code"] == "llm_error" and "malformed" in failed["error"]


def test_timeout(srv):
    c = srv.client()
    sid = session(c, "openai", "gpt-fake")
    post_message(c, sid, "slow")
    evs = wait_turn_end(c, sid, timeout=20)
    failed = [e["data"] for e in evs if e["type"] == "turn.failed"][0]
    assert failed["error_code"] == "llm_timeout"


def test_cancel_mid_call(srv):
    c = srv.client()
    sid = session(c, "anthropic", "claude-fake")
    post_message(c, sid, "slow")
    wait_for(lambda: any(e["type"] == "output.message.started" for e in get_events(c, sid)),
             what="the call to start")
    r = expect(c.post("/v1/sessions/%s/cancel" % sid), 200)
    assert r.json()["status"] == "cancelled"
    evs = get_events(c, sid)
    assert [e["type"] for e in evs][-1] == "session.idled"
    assert get_session(c, sid)["status"] == "idle"
    assert not any(e["type"] in ("turn.failed", "turn.completed") for e in evs)


def test_controls_model_id_picks_the_model_for_one_turn(srv, fake):
    c = srv.client()
    sid = c.create_session({})["id"]  # llmsim by default
    before = len(fake.requests)
    post_message(c, sid, "hi there", controls={"model_id": model_id("openai", "gpt-fake")})
    evs = wait_turn_end(c, sid)
    done = [e for e in evs if e["type"] == "output.message.completed"][-1]
    assert done["data"]["message"]["content"][0]["text"] == "echo: hi there"
    assert len(fake.requests) == before + 1
    # the session's own model is unchanged: the next turn is llmsim again
    post_message(c, sid, "again")
    evs = wait_turn_end(c, sid, turns=2)
    assert len(fake.requests) == before + 1
    r = c.post("/v1/sessions/%s/messages" % sid,
               {"message": {"content": [{"type": "text", "text": "x"}]},
                "controls": {"model_id": "model_" + "0" * 32}})
    assert r.status_code == 404


def test_parallel_tool_calls_setting_reaches_openai(srv, fake):
    c = srv.client()
    sid = session(c, "openai", "gpt-fake", parallel_tool_calls=False)
    post_message(c, sid, "hello")
    wait_turn_end(c, sid)
    assert fake.requests[-1]["body"]["parallel_tool_calls"] is False
    sid = session(c, "openai", "gpt-fake")
    post_message(c, sid, "hello")
    wait_turn_end(c, sid)
    assert "parallel_tool_calls" not in fake.requests[-1]["body"]


# ---- gathering streamed text into delta events (--delta-interval-ms) ----

def _gathering_server(fake, interval_ms):
    from conftest import start_server
    return start_server(["--openai-base-url", fake.base, "--openai-models", "gpt-fake",
                         "--anthropic-base-url", fake.base, "--anthropic-models", "claude-fake",
                         "--llm-timeout", "20", "--delta-interval-ms", str(interval_ms)],
                        env={"LOOPD_OPENAI_API_KEY": "sk-test-openai",
                             "LOOPD_ANTHROPIC_API_KEY": "sk-test-anthropic"})


@pytest.fixture(scope="module")
def srv_gather(fake):
    """An interval no test call lasts: only the answer's end emits the text."""
    s = _gathering_server(fake, 10000)
    yield s
    s.stop_clean()


@pytest.fixture(scope="module")
def srv_tick(fake):
    s = _gathering_server(fake, 20)
    yield s
    s.stop_clean()


def _deltas(evs):
    return [e["data"] for e in evs if e["type"] == "output.message.delta"]


def _check_accumulated(deltas):
    acc = ""
    for d in deltas:
        acc += d["delta"]
        assert d["accumulated"] == acc


@pytest.mark.parametrize("provider,name", PROVIDERS)
def test_a_burst_of_chunks_is_one_delta_event(srv_gather, provider, name):
    c = srv_gather.client()
    sid = session(c, provider, name)
    post_message(c, sid, "burst:200")
    evs = wait_turn_end(c, sid)
    text = "".join("w%d " % i for i in range(200))
    deltas = _deltas(evs)
    assert len(deltas) == 1, [d["delta"] for d in deltas]
    assert deltas[0]["delta"] == text and deltas[0]["accumulated"] == text
    done = [e for e in evs if e["type"] == "output.message.completed"][-1]
    assert done["data"]["message"]["content"][0]["text"] == text
    t = [e["type"] for e in evs]
    assert t.index("output.message.delta") < t.index("output.message.completed")
    for e in evs:
        validate(e, "TypedEvent")
    msgs = expect(c.get("/v1/sessions/%s/messages" % sid), 200).json()["data"]
    assert msgs[-1]["role"] == "agent" and msgs[-1]["content"][0]["text"] == text


@pytest.mark.parametrize("provider,name", PROVIDERS)
def test_gathered_text_is_emitted_while_the_stream_is_still_open(srv_tick, fake, provider, name):
    c = srv_tick.client()
    sid = session(c, provider, name)
    fake.held.clear()
    fake.release.clear()
    try:
        post_message(c, sid, "hold")
        # the provider holds its stream open after "held ": only the
        # interval's timer can emit that text now
        evs = wait_for(lambda: (lambda evs: evs if _deltas(evs) else None)(get_events(c, sid)),
                       what="the held text as a delta")
        assert fake.held.is_set() and not fake.release.is_set()
        assert [d["delta"] for d in _deltas(evs)] == ["held "]
        assert not any(e["type"] == "turn.completed" for e in evs)
        assert get_session(c, sid)["status"] == "active"
    finally:
        fake.release.set()
    evs = wait_turn_end(c, sid)
    deltas = _deltas(evs)
    assert "".join(d["delta"] for d in deltas) == "held released"
    _check_accumulated(deltas)


def test_cancel_emits_gathered_text_before_the_cancel(srv_gather, fake):
    c = srv_gather.client()
    sid = session(c, "openai", "gpt-fake")
    fake.held.clear()
    fake.release.clear()
    try:
        post_message(c, sid, "hold")
        wait_for(fake.held.is_set, what="the provider to send the first chunk")
        expect(c.post("/v1/sessions/%s/cancel" % sid), 200)
    finally:
        fake.release.set()
    evs = wait_turn_end(c, sid)
    t = [e["type"] for e in evs]
    assert "turn.cancelled" in t and "turn.completed" not in t
    deltas = _deltas(evs)
    # loopd may or may not have read the chunk before the cancel; if it did,
    # the text comes out before the cancel, never after it
    assert [d["delta"] for d in deltas] in ([], ["held "])
    if deltas:
        assert t.index("output.message.delta") < t.index("turn.cancelled")
    _check_accumulated(deltas)
