"""The bad-input catalog.

Every case is data: method, path, headers, raw body and the expected 4xx.
Each must produce an RFC 9457 problem (application/problem+json, valid
ErrorResponse, `status` equal to the HTTP code, non-empty `detail`); after
the whole catalog the stored data must be unchanged.

Placeholders in paths/headers: {sid} a pre-created session, {aname} a
pre-created agent's name, {org2} another org's id, {key} the admin key.
Header value None removes the default Authorization header.
"""
import json
import select
import time

import pytest

from conftest import (REQUEST_TIMEOUT, RawResponse, assert_problem, expect,
                      random_key, raw_connect, raw_request, read_raw_response, send_streaming,
                      start_server)

JSON = {"Content-Type": "application/json"}
UNKNOWN_SID = "session_0123456789abcdef0123456789abcdef"
HEX = "0123456789abcdef0123456789abcdef"


def J(obj):
    return json.dumps(obj).encode()


def case(cid, method, path, body=None, status=400, headers=None, detail=None, detail_has=(),
         detail_startswith=None):
    h = dict(JSON) if body is not None else {}
    h.update(headers or {})
    return {"id": cid, "method": method, "path": path, "body": body, "status": status,
            "headers": h, "detail": detail, "detail_has": detail_has,
            "detail_startswith": detail_startswith}


def create(cid, body, status=400, **kw):
    return case(cid, "POST", "/v1/sessions", body, status, **kw)


def patch(cid, body, status=400, **kw):
    return case(cid, "PATCH", "/v1/sessions/{sid}", body, status, **kw)


SYNTAX = ("line", "column")

CATALOG = [
    # --- malformed JSON -------------------------------------------------
    create("truncated-object", b'{"title": "x"', detail_has=SYNTAX),
    create("truncated-after-colon", b'{"title":', detail_has=SYNTAX),
    create("lone-brace", b'{', detail_has=SYNTAX),
    create("not-json", b'hello', detail_has=SYNTAX),
    create("trailing-garbage", b'{"title":"a"} x', detail_has=SYNTAX),
    create("two-objects", b'{}{}', detail_has=SYNTAX),
    create("single-quotes", b"{'title':'a'}", detail_has=SYNTAX),
    create("trailing-comma", b'{"title":"a",}', detail_has=SYNTAX),
    create("unterminated-string", b'{"title":"abc}', detail_has=SYNTAX),
    create("bad-escape", b'{"title":"a\\qb"}'),
    create("bare-nan", b'{"max_iterations": NaN}'),
    create("json-array", b'[]'),
    create("json-array-of-object", b'[{"title":"a"}]'),
    create("json-string", b'"x"'),
    create("json-number", b'5'),
    create("deep-nesting", b'{"hints":{"a":' + b'[' * 50000 + b']' * 50000 + b'}}'),
    # --- wrong types, one per create field --------------------------------
    create("title-number", J({"title": 5}), detail_has="title"),
    create("title-array", J({"title": []}), detail_has="title"),
    create("title-object", J({"title": {}}), detail_has="title"),
    create("title-bool", J({"title": True}), detail_has="title"),
    create("tags-string", J({"tags": "x"}), detail_has="tags"),
    create("tags-numbers", J({"tags": [1]}), detail_has="tags"),
    create("tags-null-item", J({"tags": [None]}), detail_has="tags"),
    create("tags-object", J({"tags": {"a": 1}}), detail_has="tags"),
    create("max-iterations-negative", J({"max_iterations": -1}), detail_has="max_iterations"),
    create("max-iterations-string", J({"max_iterations": "5"}), detail_has="max_iterations"),
    create("max-iterations-float", J({"max_iterations": 1.5}), detail_has="max_iterations"),
    create("max-iterations-bool", J({"max_iterations": True}), detail_has="max_iterations"),
    create("parallel-tool-calls-string", J({"parallel_tool_calls": "yes"}), detail_has="parallel_tool_calls"),
    create("parallel-tool-calls-int", J({"parallel_tool_calls": 1}), detail_has="parallel_tool_calls"),
    create("harness-name-number", J({"harness_name": 7}), detail_has="harness_name"),
    create("harness-id-number", J({"harness_id": 7}), detail_has="harness_id"),
    create("agent-id-array", J({"agent_id": []}), detail_has="agent_id"),
    create("agent-name-object", J({"agent_name": {}}), detail_has="agent_name"),
    create("locale-number", J({"locale": 5}), detail_has="locale"),
    create("model-id-bool", J({"model_id": True}), detail_has="model_id"),
    create("system-prompt-number", J({"system_prompt": 1}), detail_has="system_prompt"),
    create("hints-string", J({"hints": "x"}), detail_has="hints"),
    create("hints-array", J({"hints": [1]}), detail_has="hints"),
    create("initial-files-string", J({"initial_files": "x"}), detail_has="initial_files"),
    create("initial-files-number-item", J({"initial_files": [1]}), detail_has="initial_files"),
    create("network-access-string", J({"network_access": "x"}), detail_has="network_access"),
    create("source-number", J({"source": 5}), detail_has="source"),
    create("capabilities-string", J({"capabilities": "x"}), detail_has="capabilities"),
    create("tools-string", J({"tools": "x"}), detail_has="tools"),
    # --- huge numbers ----------------------------------------------------------
    create("max-iterations-1e400", b'{"max_iterations": 1e400}'),
    create("max-iterations-2^64", b'{"max_iterations": 18446744073709551616}'),
    create("max-iterations-2^63", b'{"max_iterations": 9223372036854775808}'),
    create("max-iterations-huge-negative", b'{"max_iterations": -99999999999999999999999}'),
    create("title-huge-number", b'{"title": 1e400}'),
    # --- invalid UTF-8 and NUL bytes -------------------------------------------
    create("utf8-invalid-bytes", b'{"title":"\xff\xfe"}'),
    create("utf8-overlong", b'{"title":"\xc0\xaf"}'),
    create("utf8-surrogate-encoded", b'{"title":"\xed\xa0\x80"}'),
    create("utf8-truncated-sequence", b'{"title":"\xe2\x82"}'),
    create("utf8-invalid-in-key", b'{"ti\xfftle":"a"}'),
    create("nul-raw-in-string", b'{"title":"a\x00b"}'),
    create("nul-escaped-in-string", b'{"title":"a\\u0000b"}',
           detail_has=SYNTAX + ("\\u0000 is not allowed",)),
    create("nul-after-object", b'{}\x00'),
    create("nul-escaped-in-tag", b'{"tags":["a\\u0000"]}'),
    # --- duplicate keys --------------------------------------------------------
    create("duplicate-key", b'{"title":"a","title":"b"}'),
    create("duplicate-key-tags", b'{"tags":[],"tags":["x"]}'),
    create("duplicate-key-nested", b'{"hints":{"a":1,"a":2}}'),
    # --- create semantics ------------------------------------------------------
    create("both-harness-fields", J({"harness_id": "harness_01933b5a000070008000000000000602",
                                     "harness_name": "generic"})),
    create("both-agent-fields", J({"agent_id": "agent_" + HEX, "agent_name": "x"})),
    create("unknown-harness-name", J({"harness_name": "no-such-harness"}), 404),
    create("unknown-harness-id", J({"harness_id": "harness_" + HEX}), 404),
    create("unknown-agent-id", J({"agent_id": "agent_" + HEX}), 404),
    create("unknown-agent-name", J({"agent_name": "no-such-agent"}), 404),
    create("unknown-model", J({"model_id": "model_" + HEX}), 404),
    create("bad-source", J({"source": "slack"}), detail_has="source"),
    create("reserved-tag-internal", J({"tags": ["__internal:x"]})),
    create("reserved-tag-app", J({"tags": ["app:x"]})),
    create("reserved-tag-app-channel", J({"tags": ["app_channel:x"]})),
    create("reserved-tag-slack", J({"tags": ["slack:app:x"]})),
    create("reserved-tag-ag-ui", J({"tags": ["ag_ui:app:x"]})),
    create("title-256", J({"title": "t" * 256})),
    create("tags-101", J({"tags": ["t%d" % i for i in range(101)]})),
    create("tag-256", J({"tags": ["x" * 256]})),
    create("initial-files-101", J({"initial_files": [{"path": "/workspace/f%d" % i, "content": "x"}
                                                     for i in range(101)]})),
    # --- PATCH -----------------------------------------------------------------
    patch("patch-title-number", J({"title": 5}), detail_has="title"),
    patch("patch-title-array", J({"title": []}), detail_has="title"),
    patch("patch-tags-string", J({"tags": "x"}), detail_has="tags"),
    patch("patch-tags-numbers", J({"tags": [1]}), detail_has="tags"),
    patch("patch-tags-null-item", J({"tags": [None]}), detail_has="tags"),
    patch("patch-locale-number", J({"locale": 5}), detail_has="locale"),
    patch("patch-array-body", b'[]'),
    patch("patch-truncated", b'{"title":"x"', detail_has=SYNTAX),
    patch("patch-duplicate-keys", b'{"title":"a","title":"b"}'),
    patch("patch-invalid-utf8", b'{"title":"\xff"}'),
    patch("patch-title-256", J({"title": "t" * 256})),
    patch("patch-reserved-tag", J({"tags": ["app:x"]})),
    patch("patch-stale-if-match", J({"title": "x"}), 412, headers={"If-Match": '"stale"'}),
    # --- path IDs --------------------------------------------------------------
    case("id-uppercase-hex", "GET", "/v1/sessions/session_" + HEX.upper(),
         detail_startswith="Invalid session ID: "),
    case("id-31-hex", "GET", "/v1/sessions/session_" + HEX[:31], detail_startswith="Invalid session ID: "),
    case("id-33-hex", "GET", "/v1/sessions/session_" + HEX + "0", detail_startswith="Invalid session ID: "),
    case("id-wrong-prefix", "GET", "/v1/sessions/agent_" + HEX, detail_startswith="Invalid session ID: "),
    case("id-no-prefix", "GET", "/v1/sessions/" + HEX, detail_startswith="Invalid session ID: "),
    case("id-non-hex", "GET", "/v1/sessions/session_" + HEX[:31] + "g", detail_startswith="Invalid session ID: "),
    case("id-empty-hex", "GET", "/v1/sessions/session_", detail_startswith="Invalid session ID: "),
    case("id-percent-encoded-nul", "GET", "/v1/sessions/session_%00" + HEX[:31],
         detail_startswith="Invalid session ID: "),
    case("id-bad-patch", "PATCH", "/v1/sessions/session_XYZ", J({"title": "x"}),
         detail_startswith="Invalid session ID: "),
    case("id-bad-delete", "DELETE", "/v1/sessions/session_XYZ", detail_startswith="Invalid session ID: "),
    case("id-bad-pin", "PUT", "/v1/sessions/session_XYZ/pin", detail_startswith="Invalid session ID: "),
    case("id-bad-cancel", "POST", "/v1/sessions/session_XYZ/cancel", detail_startswith="Invalid session ID: "),
    case("id-unknown-get", "GET", "/v1/sessions/" + UNKNOWN_SID, status=404),
    case("id-unknown-patch", "PATCH", "/v1/sessions/" + UNKNOWN_SID, J({"title": "x"}), 404),
    case("id-unknown-delete", "DELETE", "/v1/sessions/" + UNKNOWN_SID, status=404),
    case("agent-id-malformed", "GET", "/v1/agents/agent_" + HEX[:30], detail_startswith="Invalid agent ID: "),
    case("harness-unknown", "GET", "/v1/harnesses/harness_" + HEX, status=404),
    # --- auth and org ----------------------------------------------------------
    case("auth-missing", "GET", "/v1/sessions", status=401, headers={"Authorization": None},
         detail="Authentication required"),
    case("auth-missing-create", "POST", "/v1/sessions", J({"title": "x"}), 401,
         headers={"Authorization": None}),
    case("auth-empty", "GET", "/v1/sessions", status=401, headers={"Authorization": ""}),
    case("auth-basic", "GET", "/v1/sessions", status=401, headers={"Authorization": "Basic eHl6OnB3"}),
    case("auth-unknown-key", "GET", "/v1/sessions", status=401,
         headers={"Authorization": random_key()}, detail="Invalid API key"),
    case("auth-unknown-key-create", "POST", "/v1/sessions", J({}), 401,
         headers={"Authorization": "Bearer " + random_key()}),
    case("auth-bearer-no-token", "GET", "/v1/sessions", status=401, headers={"Authorization": "Bearer"}),
    case("auth-key-with-garbage", "GET", "/v1/sessions", status=401, headers={"Authorization": "{key}x"}),
    case("org-other", "GET", "/v1/sessions", status=404, headers={"X-Org-Id": "{org2}"},
         detail="Organization not found"),
    case("org-other-create", "POST", "/v1/sessions", J({}), 404, headers={"X-Org-Id": "{org2}"}),
    case("org-other-session", "GET", "/v1/sessions/{sid}", status=404, headers={"X-Org-Id": "{org2}"}),
    case("org-malformed", "GET", "/v1/sessions", status=401, headers={"X-Org-Id": "org_nope"},
         detail="Invalid organization ID format"),
    # --- sizes -----------------------------------------------------------------
    case("header-20kb", "GET", "/v1/sessions", status=431, headers={"X-Big": "a" * 20480}),
    case("header-40kb", "GET", "/v1/sessions", status=431, headers={"X-Big": "a" * 40960}),
    case("header-100kb", "GET", "/v1/sessions", status=431,
         headers={"X-Big": "a" * 102400}),
    case("many-headers-20kb", "GET", "/v1/sessions", status=431,
         headers={"X-H-%03d" % i: "v" * 64 for i in range(300)}),
    # --- routing ---------------------------------------------------------------
    case("route-unknown", "GET", "/v1/no-such-route", status=404),
    case("route-unknown-post", "POST", "/v1/sessions/{sid}/nope", J({}), 404),
    case("method-not-allowed", "PUT", "/v1/sessions", J({}), 405),
    case("method-not-allowed-chat", "GET", "/v1/sessions/chat", status=405),
    # --- list parameters -------------------------------------------------------
    case("list-limit-0", "GET", "/v1/sessions?limit=0"),
    case("list-offset-negative", "GET", "/v1/sessions?offset=-1"),
    case("list-limit-text", "GET", "/v1/sessions?limit=ten"),
    case("list-status-unknown", "GET", "/v1/sessions?status=bogus"),
    case("list-created-after-bad", "GET", "/v1/sessions?created_after=yesterday"),
    case("list-order-bad", "GET", "/v1/sessions?order=title"),
    # --- agents ----------------------------------------------------------------
    case("agent-bad-name", "POST", "/v1/agents", J({"name": "Bad Name", "system_prompt": "x"})),
    case("agent-name-65", "POST", "/v1/agents", J({"name": "a" * 65, "system_prompt": "x"})),
    case("agent-missing-prompt", "POST", "/v1/agents", J({"name": "no-prompt"}), detail_has="system_prompt"),
    case("agent-name-number", "POST", "/v1/agents", J({"name": 5, "system_prompt": "x"}), detail_has="name"),
    case("agent-array-body", "POST", "/v1/agents", b'[{"name":"arr","system_prompt":"x"}]'),
    case("agent-truncated", "POST", "/v1/agents", b'{"name":"trunc"', detail_has=SYNTAX),
    case("agent-duplicate-keys", "POST", "/v1/agents", b'{"name":"dup-a","name":"dup-b","system_prompt":"x"}'),
    case("agent-name-taken", "POST", "/v1/agents", J({"name": "{aname}", "system_prompt": "x"}), 409),
    case("agent-patch-bad-name", "PATCH", "/v1/agents/{aname}", J({"name": "Bad"})),
    # --- chat ------------------------------------------------------------------
    case("chat-array-body", "POST", "/v1/sessions/chat", b'[1]'),
    case("chat-locale-number", "POST", "/v1/sessions/chat", J({"locale": 5}), detail_has="locale"),
    case("chat-truncated", "POST", "/v1/sessions/chat", b'{"locale":', detail_has=SYNTAX),
]

# Raw-socket cases: a function (ctx) -> response object.


def _head(ctx, method, path, extra=b""):
    return (b"%s %s HTTP/1.1\r\nHost: 127.0.0.1:%d\r\nAuthorization: %s\r\n" % (
        method.encode(), path.encode(), ctx["port"], ctx["key"].encode())) + extra


def raw_content_length_10mb(ctx):
    total = 10 * 1024 * 1024
    head = _head(ctx, "POST", "/v1/sessions",
                 b"Content-Type: application/json\r\nContent-Length: %d\r\n\r\n" % total)
    resp, _sent, ended = send_streaming(ctx["port"], head, total)
    assert resp is not None, "no response to a 10 MB body (%s)" % ended
    return resp


def raw_chunked_10mb(ctx):
    total = 10 * 1024 * 1024
    head = _head(ctx, "POST", "/v1/sessions",
                 b"Content-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n")
    block = b"10000\r\n" + b" " * 0x10000 + b"\r\n"
    resp, _sent, ended = send_streaming(ctx["port"], head, total, block=block, tail=b"0\r\n\r\n")
    assert resp is not None, "no response to a 10 MB chunked body (%s)" % ended
    return resp


def raw_slow_drip_stall(ctx):
    """Part of the body, then silence: 408 within the request deadline."""
    body = J({"title": "slow"})
    head = _head(ctx, "POST", "/v1/sessions",
                 b"Content-Type: application/json\r\nContent-Length: %d\r\n\r\n" % (len(body) + 100))
    start = time.monotonic()
    with raw_connect(ctx["port"]) as s:
        s.sendall(head + body[:5])
        resp, buf, ended = read_raw_response(s, start + REQUEST_TIMEOUT + 5)
    elapsed = time.monotonic() - start
    assert resp is not None, "no 408 after %.1fs (%s): %r" % (elapsed, ended, buf[:300])
    assert elapsed <= REQUEST_TIMEOUT + 4, elapsed
    return resp


def raw_slow_drip_trickle(ctx):
    """One byte every 0.2 s keeps the connection busy but must still hit
    the total deadline."""
    head = _head(ctx, "POST", "/v1/sessions", b"Content-Type: application/json\r\nContent-Length: 1000\r\n\r\n")
    start = time.monotonic()
    deadline = start + REQUEST_TIMEOUT + 5
    with raw_connect(ctx["port"]) as s:
        s.sendall(head + b'{"title":"')
        while time.monotonic() < deadline:
            r, _, _ = select.select([s], [], [], 0.2)  # pacing of the trickle
            if r:
                break
            try:
                s.send(b"a")
            except (BrokenPipeError, ConnectionResetError):
                break
        resp, buf, ended = read_raw_response(s, deadline)
    elapsed = time.monotonic() - start
    assert resp is not None, "no 408 after %.1fs (%s): %r" % (elapsed, ended, buf[:300])
    assert elapsed <= REQUEST_TIMEOUT + 4, elapsed
    return resp


def raw_bad_content_length(ctx):
    return raw_request(ctx["port"], _head(ctx, "POST", "/v1/sessions",
                                          b"Content-Type: application/json\r\nContent-Length: abc\r\n\r\n{}"))


def raw_negative_content_length(ctx):
    return raw_request(ctx["port"], _head(ctx, "POST", "/v1/sessions",
                                          b"Content-Type: application/json\r\nContent-Length: -1\r\n\r\n{}"))


def raw_bad_chunk_size(ctx):
    return raw_request(ctx["port"], _head(ctx, "POST", "/v1/sessions",
                                          b"Content-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n"
                                          b"zz\r\n{}\r\n0\r\n\r\n"))


def raw_conflicting_content_length(ctx):
    """Two different Content-Length values: RFC 9112 section 6.3 makes this
    an unrecoverable error (request smuggling vector), not a 201."""
    return raw_request(ctx["port"], _head(ctx, "POST", "/v1/sessions",
                                          b"Content-Type: application/json\r\nContent-Length: 2\r\n"
                                          b"Content-Length: 3\r\n\r\n{} "))


def raw_header_invalid_utf8_auth(ctx):
    data = (b"GET /v1/sessions HTTP/1.1\r\nHost: x\r\nAuthorization: evr_pat_\xff\xfe\r\n\r\n")
    return raw_request(ctx["port"], data)


RAW_CATALOG = [
    {"id": "body-10mb-content-length", "fn": raw_content_length_10mb, "status": 413},
    {"id": "body-10mb-chunked", "fn": raw_chunked_10mb, "status": 413},
    {"id": "slow-drip-stall", "fn": raw_slow_drip_stall, "status": 408},
    {"id": "slow-drip-trickle", "fn": raw_slow_drip_trickle, "status": 408},
    {"id": "content-length-not-a-number", "fn": raw_bad_content_length, "status": 400},
    {"id": "content-length-negative", "fn": raw_negative_content_length, "status": 400},
    {"id": "auth-invalid-utf8", "fn": raw_header_invalid_utf8_auth, "status": 401},
    {"id": "chunk-size-not-hex", "fn": raw_bad_chunk_size, "status": 400},
    {"id": "content-length-conflicting", "fn": raw_conflicting_content_length, "status": 400},
]


_IDS = [c["id"] for c in CATALOG] + [c["id"] for c in RAW_CATALOG]
assert len(_IDS) >= 40 and len(_IDS) == len(set(_IDS)), "catalog ids must be unique"


# ---------------------------------------------------------------------------

def snapshot(srv, ctx):
    c = srv.client()
    c2 = srv.client(key=ctx["org2_key"])
    r = expect(c.get("/v1/sessions/" + ctx["sid"]), 200)
    return {
        "session": r.json(),
        "etag": r.headers.get("ETag"),
        "list": [s["id"] for s in expect(c.get("/v1/sessions", params={"limit": 100}), 200).json()["data"]],
        "stats": expect(c.get("/v1/sessions/stats"), 200).json(),
        "stats2": expect(c2.get("/v1/sessions/stats"), 200).json(),
        "agents": sorted((a["id"], a["name"], a["updated_at"]) for a in
                         expect(c.get("/v1/agents", params={"limit": 100, "include_archived": "true"}),
                                200).json()["data"]),
        "agents2": expect(c2.get("/v1/agents"), 200).json()["total"],
    }


@pytest.fixture(scope="module")
def bad(_binary_exists):
    srv = start_server()
    c = srv.client()
    org = srv.new_org()
    s = c.create_session({"title": "precious", "tags": ["keep"], "locale": "en-US"})
    a = c.create_agent("catalog-agent")
    ctx = {"sid": s["id"], "org2": org["org_id"], "org2_key": org["key"], "key": srv.key,
           "aname": a["name"], "port": srv.port}
    srv.ctx = ctx
    srv.before = snapshot(srv, ctx)
    yield srv
    srv.stop_clean()


def fill(text, ctx):
    for k in ("sid", "org2", "key", "aname"):
        text = text.replace("{%s}" % k, ctx[k])
    return text


@pytest.mark.parametrize("c", CATALOG, ids=[c["id"] for c in CATALOG])
def test_catalog(bad, c):
    ctx = bad.ctx
    client = bad.client()
    headers = {}
    for k, v in c["headers"].items():
        headers[k] = None if v is None else fill(v, ctx)
    body = c["body"]
    if body is not None and b"{" in body:
        body = fill(body.decode("latin-1"), ctx).encode("latin-1")
    r = client.request(c["method"], fill(c["path"], ctx), data=body, headers=headers, timeout=20)
    assert_problem(r, c["status"], detail=c["detail"], detail_contains=c["detail_has"],
                   detail_startswith=c["detail_startswith"])
    # the detail speaks of the request, never of the parser's own option names
    assert "JSON_" not in r.json()["detail"], r.json()["detail"]


@pytest.mark.parametrize("c", RAW_CATALOG, ids=[c["id"] for c in RAW_CATALOG])
def test_raw_catalog(bad, c):
    resp = c["fn"](bad.ctx)
    assert isinstance(resp, RawResponse)
    assert_problem(resp, c["status"])


def test_slow_headers_are_cut_off(bad):
    """A client that never finishes its headers is answered 408 or
    disconnected within the deadline; it cannot hold the connection."""
    start = time.monotonic()
    with raw_connect(bad.port) as s:
        s.sendall(b"GET /v1/sessions HTTP/1.1\r\nHost: x\r\nX-Slow: ")
        resp, buf, ended = read_raw_response(s, start + REQUEST_TIMEOUT + 5)
    elapsed = time.monotonic() - start
    assert ended in ("complete", "eof", "reset"), "connection still open after %.1fs" % elapsed
    assert elapsed <= REQUEST_TIMEOUT + 4, elapsed
    if resp is not None:
        assert_problem(resp, 408)


def test_unsupported_transfer_encoding_answered_at_once(bad):
    """`Transfer-Encoding: gzip` (chunked not last) cannot be framed: the
    answer is 400 (RFC 9112 6.3 says MUST), right away, not a 408 later."""
    start = time.monotonic()
    with raw_connect(bad.port) as s:
        s.sendall(_head(bad.ctx, "POST", "/v1/sessions",
                        b"Content-Type: application/json\r\nTransfer-Encoding: gzip\r\n\r\n{}"))
        resp, buf, ended = read_raw_response(s, start + REQUEST_TIMEOUT + 4)
    assert resp is not None, (ended, buf[:300])
    assert_problem(resp, 400)
    assert time.monotonic() - start < REQUEST_TIMEOUT, "answered only after the request deadline"


@pytest.mark.parametrize("n", [17000, 40000, 100000])
def test_long_url_is_a_problem(bad, n):
    """An over-long request target is refused with a problem (414, or 431 if
    counted with the headers), never the HTTP library's own HTML page."""
    r = bad.client().get("/v1/sessions?search=" + "a" * n)
    assert r.status_code in (400, 414, 431), r.status_code
    assert_problem(r, r.status_code)


@pytest.mark.parametrize("n", [100, 2000, 4000, 7000, 8000])
def test_long_unknown_path_gets_a_whole_problem(bad, n):
    """An unknown path up to the request-line limit (8 KiB) is a 404 whose
    problem body is whole JSON (a 7 KB path once overflowed the body and
    cut its closing brace); the path comes back as `instance` when short."""
    path = ("/v1/sessions/session_01a23f08ad467a959750ca327fda0836/x" + "a&b=1-" * n)[:n]
    r = bad.client().post(path, data=b"")
    assert_problem(r, 404)
    body = r.json()
    if len(path) <= 2048:
        assert body["instance"] == path, body
    else:
        assert "instance" not in body, sorted(body)


def test_server_still_serves_after_catalog(bad):
    # Normal requests still work, including a large-but-allowed header.
    c = bad.client()
    expect(c.get("/v1/sessions", headers={"X-Big": "a" * 8000}), 200)
    expect(c.get("/healthz"), 200)


def test_data_unchanged_after_catalog(bad):
    after = snapshot(bad, bad.ctx)
    assert after == bad.before
    r = bad.client().get("/v1/sessions/" + bad.ctx["sid"], headers={"If-None-Match": bad.before["etag"]})
    expect(r, 304)
