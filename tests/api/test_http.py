"""The HTTP/1.1 layer itself (src/http/server.c), over raw sockets: keep-alive,
pipelining, Expect: 100-continue, HTTP/1.0, chunked request bodies, HEAD,
and malformed request lines and headers answered with problems."""
import json
import socket
import time

import requests

from conftest import (assert_problem, expect, parse_raw_response, raw_connect, raw_request,
                      recv_until, validate, wait_for)


def _get(path, key, extra=b"", version=b"HTTP/1.1"):
    return (b"GET %s %s\r\nHost: x\r\nAuthorization: %s\r\n" % (path.encode(), version, key.encode())
            + extra + b"\r\n")


def _split_responses(buf):
    """Every complete Content-Length-framed response at the start of buf."""
    out = []
    while True:
        he = buf.find(b"\r\n\r\n")
        if he < 0:
            return out, buf
        resp = parse_raw_response(buf)
        if resp is None:
            return out, buf
        n = he + 4 + int(resp.headers.get("content-length", "0"))
        out.append(resp)
        buf = buf[n:]


def test_keep_alive_serves_many_requests_on_one_connection(server):
    with raw_connect(server.port) as s:
        for _ in range(5):
            s.sendall(_get("/v1/sessions?limit=1", server.key))
            buf, eof = recv_until(s, lambda b: len(_split_responses(b)[0]) == 1)
            (resp,), _ = _split_responses(buf)
            assert resp.status_code == 200, resp
            assert resp.headers.get("connection", "").lower() != "close"
            validate(resp.json(), "PaginatedResponse_WithUrls_Session")


def test_pipelined_requests_are_answered_in_order(api, server):
    sid = expect(api.post("/v1/sessions", {"title": "pipelined"}), 201).json()["id"]
    data = (_get("/v1/sessions/" + sid, server.key) + _get("/healthz", server.key)
            + _get("/v1/sessions/session_" + "0" * 32, server.key))
    with raw_connect(server.port) as s:
        s.sendall(data)
        buf, _ = recv_until(s, lambda b: len(_split_responses(b)[0]) == 3)
    resps, rest = _split_responses(buf)
    assert [r.status_code for r in resps] == [200, 200, 404], resps
    assert resps[0].json()["id"] == sid
    assert_problem(resps[2], 404)
    assert rest == b""


def test_expect_100_continue_gets_an_interim_answer(server):
    body = json.dumps({"title": "expect continue"}).encode()
    head = (b"POST /v1/sessions HTTP/1.1\r\nHost: x\r\nAuthorization: %s\r\n"
            b"Content-Type: application/json\r\nContent-Length: %d\r\nExpect: 100-continue\r\n\r\n"
            % (server.key.encode(), len(body)))
    with raw_connect(server.port) as s:
        s.sendall(head)
        buf, _ = recv_until(s, lambda b: b"\r\n\r\n" in b, timeout=5)
        assert buf == b"HTTP/1.1 100 Continue\r\n\r\n", buf[:200]
        s.sendall(body)
        buf, _ = recv_until(s, lambda b: len(_split_responses(b)[0]) == 1)
    (resp,), _ = _split_responses(buf)
    assert resp.status_code == 201, resp
    assert resp.json()["title"] == "expect continue"


def test_oversized_body_refused_before_it_is_sent_with_expect(server):
    head = (b"POST /v1/sessions HTTP/1.1\r\nHost: x\r\nAuthorization: %s\r\n"
            b"Content-Type: application/json\r\nContent-Length: 999999999\r\n"
            b"Expect: 100-continue\r\n\r\n" % server.key.encode())
    resp = raw_request(server.port, head)
    assert_problem(resp, 413)
    assert resp.headers.get("connection", "").lower() == "close"


def test_http10_closes_after_the_answer(server):
    with raw_connect(server.port) as s:
        s.sendall(_get("/healthz", server.key, version=b"HTTP/1.0"))
        buf, eof = recv_until(s, lambda b: False, timeout=5)
    assert eof, "the server kept an HTTP/1.0 connection open"
    resp = parse_raw_response(buf)
    assert resp.status_code == 200
    assert resp.headers.get("connection", "").lower() == "close"


def test_connection_close_is_honoured(server):
    with raw_connect(server.port) as s:
        s.sendall(_get("/healthz", server.key, extra=b"Connection: close\r\n"))
        buf, eof = recv_until(s, lambda b: False, timeout=5)
    assert eof
    assert parse_raw_response(buf).status_code == 200


def test_chunked_body_with_extension_and_trailer(api, server):
    body = json.dumps({"title": "chunked body", "tags": ["x"]}).encode()
    a, b = body[:7], body[7:]
    data = (b"POST /v1/sessions HTTP/1.1\r\nHost: x\r\nAuthorization: %s\r\n"
            b"Content-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n"
            b"%x;name=value\r\n%s\r\n%X\r\n%s\r\n0\r\nX-Trailer: yes\r\n\r\n"
            % (server.key.encode(), len(a), a, len(b), b))
    resp = raw_request(server.port, data)
    assert resp.status_code == 201, resp
    sid = resp.json()["id"]
    assert expect(api.get("/v1/sessions/" + sid), 200).json()["title"] == "chunked body"


def test_head_has_the_length_and_no_body(api, server):
    sid = expect(api.post("/v1/sessions", {"title": "head"}), 201).json()["id"]
    full = expect(api.get("/v1/sessions/" + sid), 200)
    req = (b"HEAD /v1/sessions/%s HTTP/1.1\r\nHost: x\r\nAuthorization: %s\r\n\r\n"
           % (sid.encode(), server.key.encode()))
    with raw_connect(server.port) as s:
        s.sendall(req + _get("/healthz", server.key))
        buf, _ = recv_until(s, lambda b: b.count(b"HTTP/1.1 200") >= 2 and b.endswith(b"}"), timeout=5)
    head_end = buf.find(b"\r\n\r\n")
    head = buf[:head_end].decode("latin-1").lower()
    assert "content-length: %d" % len(full.content) in head, head
    # the next bytes are the second answer, not a body
    assert buf[head_end + 4:].startswith(b"HTTP/1.1 200 OK"), buf[head_end:head_end + 100]


def test_query_plus_is_a_space(api, server):
    title = "plus sign %d" % time.monotonic_ns()
    sid = expect(api.post("/v1/sessions", {"title": title}), 201).json()["id"]
    q = title.replace(" ", "+")
    resp = raw_request(server.port, _get("/v1/sessions?search=" + q, server.key))
    assert resp.status_code == 200, resp
    assert [s["id"] for s in resp.json()["data"]] == [sid]


def test_malformed_query_escape_is_a_problem(server):
    """The 400 names the parameter and what is wrong with its value."""
    for q, says in (("search=%zz", ("'search'", "malformed percent-escape")),
                    ("limit=5&search=a%2", ("'search'", "malformed percent-escape")),
                    ("search=a%00b", ("'search'", "%00", "NUL")),
                    ("order=%ff", ("'order'", "not UTF-8")),
                    ("sea%zzrch=x", ("name", "malformed percent-escape")),
                    ("%00=x", ("name", "%00"))):
        resp = raw_request(server.port, _get("/v1/sessions?" + q, server.key))
        assert_problem(resp, 400, detail_contains=says)


def test_query_or_path_not_utf8_is_a_problem_in_valid_json(server):
    """%ff decodes to a byte that is not UTF-8: refused, and never echoed
    into a detail (which would make the problem body invalid JSON)."""
    for q in ("status=%ff", "search=%c0%af", "order=%ed%a0%80"):
        resp = raw_request(server.port, _get("/v1/sessions?" + q, server.key))
        assert_problem(resp, 400, detail_contains="UTF-8")
    for path in ("/v1/agents/%ff", "/v1/sessions/session_%ff"):
        resp = raw_request(server.port, _get(path, server.key))
        assert 400 <= resp.status_code < 500, resp
        assert_problem(resp, resp.status_code)


def test_unknown_http_version_is_505(server):
    for version in (b"HTTP/2.0", b"HTTP/3.0", b"HTTP/0.9"):
        resp = raw_request(server.port, _get("/healthz", server.key, version=version))
        # the detail quotes the version alone, not the header line after it
        assert_problem(resp, 505, detail="HTTP version '%s' is not supported; use HTTP/1.1"
                       % version.decode())


def test_malformed_http_version_is_400(server):
    """Only a well-formed HTTP/d.d is an unsupported version (505); any
    other text in its place makes a malformed request line."""
    for version in (b"HTTP/1.1x", b"HTTP/1.1 extra", b"HTTP/11", b"HTTP/", b"HTTP/a.b",
                    b"http/1.1", b"HTTP/1.10"):
        resp = raw_request(server.port, _get("/healthz", server.key, version=version))
        assert_problem(resp, 400, detail="Malformed request line")


def _post_te(port, key, te_lines, body=b"2\r\n{}\r\n0\r\n\r\n"):
    head = b"POST /v1/sessions HTTP/1.1\r\nHost: x\r\nAuthorization: %s\r\n" % key.encode()
    head += b"Content-Type: application/json\r\n"
    head += b"".join(b"Transfer-Encoding: %s\r\n" % v for v in te_lines)
    return raw_request(port, head + b"\r\n" + body)


def test_transfer_codings_follow_rfc_9112(server):
    """RFC 9112 6.1 / 6.3: a body is framed only when chunked is the last
    coding, applied once (else 400); a well-formed list with a coding this
    server does not decode before it is 501; several lines are one list."""
    before = server.client().get("/v1/sessions/stats").json()["total"]
    for lines in ([b"gzip"], [b"chunked, gzip"], [b"chunked, chunked"], [b"chunked", b"chunked"],
                  [b"1 2"], [b""], [b"chunked,"], [b", chunked"], [b"chunked;q=1"]):
        assert_problem(_post_te(server.port, server.key, lines), 400, detail_contains="Transfer-Encoding")
    for lines in ([b"gzip, chunked"], [b"gzip", b"chunked"], [b"x-custom ,\tchunked"],
                  [b"gzip"] * 300 + [b"chunked"]):
        body = assert_problem(_post_te(server.port, server.key, lines), 501)
        assert body["detail"].startswith("Transfer coding '"), body
    # nothing of those was stored, and plain chunked (any case) still works
    assert server.client().get("/v1/sessions/stats").json()["total"] == before
    for te in (b"chunked", b"Chunked", b" chunked "):
        resp = _post_te(server.port, server.key, [te])
        assert resp.status_code == 201, resp


def test_problem_detail_is_utf8_whatever_the_request_quoted(server):
    """A detail that quotes a header's bytes (obs-text, not UTF-8) is still
    valid UTF-8 JSON: each stray byte is shown as '?'."""
    for raw, shown in ((b"13\x86", "'13?'"), (b"\xc3" + b"1", "'?1'"), (b"\xff\xfe7", "'??7'")):
        resp = raw_request(server.port, b"POST /v1/sessions HTTP/1.1\r\nHost: x\r\nAuthorization: "
                           + server.key.encode() + b"\r\nContent-Length: " + raw + b"\r\n\r\n{}")
        body = assert_problem(resp, 400)  # the body parses as UTF-8 JSON
        assert body["detail"] == "Content-Length must be a non-negative integer, got " + shown, body


def test_garbage_request_line_is_400(server):
    for line in (b"GARBAGE\r\n\r\n", b"GET\r\n\r\n", b"GET /x\r\n\r\n", b"GET http://x/ HTTP/1.1\r\n\r\n",
                 b"G(T / HTTP/1.1\r\n\r\n"):
        resp = raw_request(server.port, line)
        assert_problem(resp, 400)
        assert resp.headers.get("connection", "").lower() == "close"


def test_folded_or_malformed_headers_are_400(server):
    for extra in (b"X-A: 1\r\n  folded\r\n", b"No colon here\r\n", b"Bad Name: 1\r\n", b": empty\r\n"):
        resp = raw_request(server.port, _get("/healthz", server.key, extra=extra))
        assert_problem(resp, 400)


def test_control_bytes_in_header_values_are_400(server):
    """A NUL or a bare LF inside a header value (anywhere in it, in any
    header) is refused, never taken as part of the value or as a line end."""
    for extra in (b"X-A: a\x00b\r\n", b"X-A: \x00\r\n", b"X-A: ab\x00\r\n",
                  b"X-A: a\nb\r\n", b"X-A: ab\n\r\n", b"X-Long: " + b"v" * 300 + b"\x00\r\n",
                  b"X-A: ok\r\nX-B: x\ny\r\n"):
        resp = raw_request(server.port, _get("/healthz", server.key, extra=extra))
        assert_problem(resp, 400, detail="A header value holds a control character")
    # a tab, other control bytes and UTF-8 in a value are left alone
    resp = raw_request(server.port, _get("/healthz", server.key, extra=b"X-A: a\tb\x01\xc3\xa9\r\n"))
    assert resp.status_code == 200, resp.content[:200]


def test_client_leaving_during_a_write_does_not_hurt(server, api):
    """A client that sends a POST and leaves at once: the write still
    commits, nothing crashes, the server keeps serving."""
    body = json.dumps({"title": "left early"}).encode()
    for _ in range(20):
        s = socket.create_connection(("127.0.0.1", server.port))
        s.sendall(b"POST /v1/sessions HTTP/1.1\r\nHost: x\r\nAuthorization: %s\r\n"
                  b"Content-Type: application/json\r\nContent-Length: %d\r\n\r\n%s"
                  % (server.key.encode(), len(body), body))
        s.close()
    # the writes were sent in full before the close: each is committed
    wait_for(lambda: expect(api.get("/v1/sessions", params={"search": "left early"}), 200)
             .json()["total"] == 20, what="20 sessions from clients that left")
    expect(requests.get(server.base + "/healthz", timeout=5), 200)


def test_half_closed_client_still_gets_its_answer(server):
    """A client that shuts down its sending side after a write request (as
    some scripts do) still reads the 201: the write is answered, then the
    connection closes."""
    body = json.dumps({"title": "half close"}).encode()
    with raw_connect(server.port) as s:
        s.sendall(b"POST /v1/sessions HTTP/1.1\r\nHost: x\r\nAuthorization: %s\r\n"
                  b"Content-Type: application/json\r\nContent-Length: %d\r\n\r\n%s"
                  % (server.key.encode(), len(body), body))
        s.shutdown(socket.SHUT_WR)
        buf, eof = recv_until(s, lambda b: False, timeout=10)
    assert eof
    resp = parse_raw_response(buf)
    assert resp is not None and resp.status_code == 201, buf[:300]
    assert resp.json()["title"] == "half close"


def test_a_single_valued_header_sent_twice_is_refused(api, server):
    """Which of two Authorization (or X-Org-Id, Idempotency-Key, ...) lines
    counts is a guess a proxy in front may have made otherwise: 400 naming
    the header, and nothing is written."""
    key = server.key.encode()
    org = b"org_00000000000000000000000000000001"
    before = expect(api.get("/v1/sessions?limit=1"), 200).json()["total"]
    body = b'{"title": "twice"}'
    post = (b"POST /v1/sessions HTTP/1.1\r\nAuthorization: %s\r\nContent-Length: %d\r\n"
            % (key, len(body)))
    for extra, name in ((b"Host: x\r\nHost: y\r\n", "Host"),
                        (b"Host: x\r\nAuthorization: Bearer evr_pat_other\r\n", "Authorization"),
                        (b"Host: x\r\nX-Org-Id: %s\r\nx-org-id: %s\r\n" % (org, org), "X-Org-Id"),
                        (b"Host: x\r\nIdempotency-Key: a\r\nIdempotency-Key: b\r\n",
                         "Idempotency-Key"),
                        (b"Host: x\r\nContent-Type: application/json\r\n"
                         b"Content-Type: text/plain\r\n", "Content-Type")):
        resp = raw_request(server.port, post + extra + b"\r\n" + body)
        assert_problem(resp, 400, detail="More than one %s header" % name)
    resp = raw_request(server.port, _get("/v1/sessions/x/sse", server.key,
                                         extra=b"Last-Event-ID: a\r\nLast-Event-ID: b\r\n"))
    assert_problem(resp, 400, detail="More than one Last-Event-ID header")
    assert expect(api.get("/v1/sessions?limit=1"), 200).json()["total"] == before


def test_http11_needs_a_host_header(server):
    """RFC 9112 3.2: an HTTP/1.1 request without Host is a 400; HTTP/1.0
    had no Host and is served."""
    resp = raw_request(server.port, b"GET /healthz HTTP/1.1\r\n\r\n")
    assert_problem(resp, 400, detail="An HTTP/1.1 request needs a Host header")
    resp = raw_request(server.port, b"GET /healthz HTTP/1.0\r\n\r\n")
    assert resp.status_code == 200, resp


def test_a_list_header_on_two_lines_is_one_list(api, server):
    """RFC 9110 5.3: If-None-Match or If-Match sent as two lines means the
    two lists joined; the second line counts as much as the first."""
    sid = expect(api.post("/v1/sessions", {"title": "two lines"}), 201).json()["id"]
    path = "/v1/sessions/" + sid
    etag = expect(api.get(path), 200).headers["ETag"].encode()
    resp = raw_request(server.port, _get(path, server.key,
                                         extra=b'If-None-Match: "x"\r\nIf-None-Match: %s\r\n' % etag))
    assert resp.status_code == 304, resp
    resp = raw_request(server.port, _get(path, server.key,
                                         extra=b'If-None-Match: "x"\r\nIf-None-Match: "y"\r\n'))
    assert resp.status_code == 200, resp
    body = b'{"title": "second line"}'
    resp = raw_request(server.port, b"PATCH %s HTTP/1.1\r\nHost: x\r\nAuthorization: %s\r\n"
                       b'Content-Type: application/json\r\nIf-Match: "x"\r\nIf-Match: %s\r\n'
                       b"Content-Length: %d\r\n\r\n%s"
                       % (path.encode(), server.key.encode(), etag, len(body), body))
    assert resp.status_code == 200, resp
    assert expect(api.get(path), 200).json()["title"] == "second line"
