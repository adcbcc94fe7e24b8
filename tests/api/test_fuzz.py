"""Randomised requests against a running loopd: whatever arrives, the answer
is one well-formed HTTP response, never a 5xx, and the server lives on.

The bad-input catalog (test_bad_input.py) holds the cases someone thought
of; this module makes up the rest.  Each case starts from a valid request
to one of the routes (bodies with every field, real IDs, query strings)
and changes it at one or more levels: JSON values swapped for other types,
huge numbers, odd strings, keys removed or added; bytes of the body
flipped, cut, repeated; the path's ID bent; query parameters invented;
headers removed, repeated, garbled; Content-Length wrong; the request line
itself changed; sent after a valid request on the same connection, or in
pieces, or by a client that hangs up before the answer.  Every case is sent on its own connection and must get:

  - a response within the deadline (the server's request timeout is 2 s;
    a request that stops short gets its 408 then);
  - a status below 500, but for the 505 and 501 HTTP defines for a
    well-formed version or transfer coding this server does not support;
  - for 4xx, an RFC 9457 application/problem+json body whose `status` is
    the HTTP code and whose `detail` is a non-empty string;
  - for 2xx with a JSON content type, a body that parses as JSON.

One case in five carries a second org's key while naming the first org's
IDs: no 2xx for a path with such an ID, no such ID in a 2xx body that
the request did not send, no session bound to the other org's agent.

At the end /healthz still answers, the session counts of /stats equal the
rows a list counts (before and after a restart), and the server exits 0
on SIGTERM (so under `make api-asan` no sanitizer report went unnoticed).

Cases are reproducible: case i of seed S is built from Random(S * 10**7 + i)
against the same set-up, so a failure names the seed and the case, and
FUZZ_SEED=S FUZZ_ONLY=i replays that one case.

  FUZZ_CASES=N   cases per run (default 1500; `make fuzz` runs 100,000)
  FUZZ_SEED=S    the run's seed (default 1)
  FUZZ_ONLY=i    run case i alone (with its seed)
"""
import json
import os
import random
import re
import socket
import struct
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import requests

from conftest import (DEFAULT_ORG, expect, post_message, raw_connect, read_raw_response, recv_until,
                      user_message, wait_for, wait_turn_end)

CASES = int(os.environ.get("FUZZ_CASES", "1500"))
SEED = int(os.environ.get("FUZZ_SEED", "1"))
ONLY = os.environ.get("FUZZ_ONLY")
WORKERS = 8
DEADLINE = 8.0  # seconds for one answer: 4x the server's request timeout

ODD_STRINGS = [
    "", " ", "a", "x" * 300, "x" * 5000, "ünïcødé ✓", "😀" * 40, "\u0000", "a\u0000b",
    "\u2028\u2029", "\ufeff", "\\", "\"", "'; DROP TABLE sessions; --", "%00", "%ff",
    "../../etc/passwd", "<script>", "session_", "session_" + "0" * 32,
    # (ID-shaped, but no real one: an org may store any string, and the
    # isolation check looks for the other org's IDs in what it is shown)
    "session_" + "F" * 32, "agent_" + "1" * 32, "org_" + "0" * 31 + "9", "null", "true",
    "1e999", "-0", "9" * 40, "\t\n\r", "\x7f", "\U0010ffff",
]
ODD_NUMBERS = [0, -1, 1, 7, 2**31, -2**31 - 1, 2**53 + 1, 2**63 - 1, 2**63, -2**63,
               2**64, 10**40, 0.5, -0.0, 1e308, -1e-308, 3.14]
ODD_RAW = [b"1e999", b"-1e999", b"NaN", b"Infinity", b"-", b"01", b"1.", b".5", b"1e",
           b"0x10", b"+1", b"\"\\ud800\"", b"\"\\udc00\\ud800\"", b"\"\\u00\"", b"\"\\x41\"",
           b"\"\xff\xfe\"", b"\"\xc3\"", b"\"\xed\xa0\x80\"", b"\"\xf4\x90\x80\x80\"",
           b"[" * 200 + b"]" * 200, b"{\"a\":" * 100 + b"1" + b"}" * 100, b"tru", b"nul"]
INTERESTING_BYTES = [b"\"", b"\\", b"{", b"}", b"[", b"]", b",", b":", b"\x00", b"\xff",
                     b"\xc3", b"\\u", b"\\ud800", b"0", b"-", b"e", b" ", b"\r\n", b"%",
                     b"\x80", b"\xef\xbb\xbf"]
QUERY_KEYS = ["limit", "offset", "order", "status", "search", "agent_id", "created_after",
              "created_before", "since_id", "since", "types", "exclude", "after", "before",
              "include_archived", "cursor", "after_sequence", "pinned", "x"]
QUERY_VALUES = ["", "0", "1", "-1", "20", "1000000", "99999999999999999999", "abc", "asc",
                "desc", "active", "started", "idle", "2026-01-01T00:00:00Z",
                "2026-13-45T99:99:99Z", "%", "%zz", "%00", "%e2%9c%93", "a+b", "true",
                "session_" + "0" * 32, "x" * 3000, "turn.completed", "output.message.delta",
                "event_" + "0" * 32, "event_" + "f" * 32]
HEADER_NAMES = ["Authorization", "X-Org-Id", "Content-Type", "Content-Length", "If-Match",
                "If-None-Match", "Idempotency-Key", "Transfer-Encoding", "Expect",
                "Connection", "Accept", "Last-Event-ID", "Host", "X-Junk"]


class Setup:
    """IDs that exist on the server, so that valid requests reach deep."""

    def __init__(self, srv):
        api = srv.client()
        self.key = srv.key
        agent = expect(api.post("/v1/agents", {"name": "fuzz-agent", "system_prompt": "hi"}),
                       201).json()
        self.agent_id, self.agent_name = agent["id"], agent["name"]
        self.harness_id = expect(api.get("/v1/harnesses"), 200).json()["data"][0]["id"]
        self.sessions = []
        for i in range(3):
            s = expect(api.post("/v1/sessions", {"title": "fuzz %d" % i, "tags": ["f"]}),
                       201).json()
            self.sessions.append(s["id"])
        post_message(api, self.sessions[0], "hello")
        events = wait_turn_end(api, self.sessions[0])
        self.event_id = events[len(events) // 2]["id"]
        # a second org, with a session and an agent of its own: one case in
        # five is sent with its key, at the first org's IDs
        org2 = srv.new_org()
        self.key2 = org2["key"]
        api2 = srv.client(key=self.key2)
        s2 = expect(api2.post("/v1/sessions", {"title": "other org"}), 201).json()
        a2 = expect(api2.post("/v1/agents", {"name": "other-agent", "system_prompt": "x"}), 201).json()
        # what each org's answers must never show of the other's
        self.owned = {
            1: {org2["org_id"].encode(), s2["id"].encode(), a2["id"].encode()},
            2: {DEFAULT_ORG.encode(), self.agent_id.encode(), self.event_id.encode()}
            | {sid.encode() for sid in self.sessions},
        }


def session_body(rng, st):
    body = {
        "title": "Debug login issue", "tags": ["debugging", "urgent"], "locale": "uk-UA",
        "system_prompt": "Be terse.", "hints": {"rich_media": True, "n": [1, 2.5, None]},
        "network_access": {"allowed": ["example.com"], "blocked": ["evil.test"]},
        "max_iterations": 7, "parallel_tool_calls": False,
        "initial_files": [{"path": "/workspace/notes.md", "content": "hello",
                           "encoding": "text", "is_readonly": True}],
        "tools": [{"type": "client_side", "name": "get_weather", "description": "w",
                   "parameters": {"type": "object",
                                  "properties": {"city": {"type": "string"}}}}],
        "capabilities": ["file_system"], "harness_id": st.harness_id,
        "agent_id": st.agent_id, "model_id": "llmsim", "harness_name": "generic",
        "agent_name": st.agent_name, "mcpServers": {}, "workspace_id": None,
    }
    keys = list(body)
    rng.shuffle(keys)
    return {k: body[k] for k in keys[:rng.randint(0, len(keys))]}


def agent_body(rng, st):
    body = {
        "name": "fz-%d" % rng.randint(0, 10**6), "display_name": "Fuzz",
        "description": "d", "system_prompt": "Be kind.", "tags": ["t"],
        "default_model_id": "llmsim", "capabilities": ["file_system"],
        "harness_id": st.harness_id, "max_iterations": 3, "parallel_tool_calls": True,
        "network_access": {"allowed": []}, "initial_files": [], "tools": [],
    }
    if rng.random() < 0.7:
        keys = list(body)
        rng.shuffle(keys)
        body = {k: body[k] for k in keys[:rng.randint(1, len(keys))] or ["name"]}
    return body


def message_body(rng, st):
    body = {"message": {"role": "user", "content": [{"type": "text", "text": "hi"}]}}
    if rng.random() < 0.5:
        body["controls"] = {"hints": {"llmsim": {"reply": "ok"}}}
    if rng.random() < 0.3:
        body["metadata"] = {"k": "v"}
        body["tags"] = ["m"]
    return body


def seed_request(rng, st, org):
    """One valid request: (method, path, query dict, headers list, body or None)."""
    sid = rng.choice(st.sessions)
    aid = rng.choice([st.agent_id, st.agent_name])
    choices = [
        ("POST", "/v1/sessions", session_body(rng, st)),
        ("GET", "/v1/sessions", None),
        ("GET", "/v1/sessions/stats", None),
        ("POST", "/v1/sessions/chat", {} if rng.random() < 0.5 else {"title": "chat"}),
        ("POST", "/v1/sessions/platform-chat", None),
        ("GET", "/v1/sessions/" + sid, None),
        ("PATCH", "/v1/sessions/" + sid,
         {"title": "t", "tags": ["a", "b"], "locale": "en-US"}),
        ("DELETE", "/v1/sessions/" + st.sessions[2], None),
        ("PUT", "/v1/sessions/%s/pin" % sid, None),
        ("DELETE", "/v1/sessions/%s/pin" % sid, None),
        ("POST", "/v1/sessions/%s/cancel" % sid, None),
        ("POST", "/v1/sessions/%s/messages" % sid, message_body(rng, st)),
        ("GET", "/v1/sessions/%s/messages" % sid, None),
        ("GET", "/v1/sessions/%s/events" % sid, None),
        ("GET", "/v1/sessions/%s/sse" % sid, None),
        ("POST", "/v1/sessions/%s/tool-results" % sid,
         {"tool_results": [{"tool_call_id": "call_x", "result": {"ok": 1}}]}),
        ("POST", "/v1/agents", agent_body(rng, st)),
        ("GET", "/v1/agents", None),
        ("GET", "/v1/agents/" + aid, None),
        ("PATCH", "/v1/agents/" + aid, {"description": "new", "tags": ["x"]}),
        ("PUT", "/v1/agents/" + aid, agent_body(rng, st)),
        ("DELETE", "/v1/agents/fz-%d" % rng.randint(0, 10**6), None),
        ("GET", "/v1/harnesses", None),
        ("GET", "/v1/harnesses/" + st.harness_id, None),
        ("GET", "/v1/models", None),
        ("GET", "/healthz", None),
        ("GET", "/readyz", None),
        ("GET", "/metrics", None),
        ("GET", "/openapi.json", None),
        ("GET", "/", None),
    ]
    method, path, body = rng.choice(choices)
    headers = [("Host", "127.0.0.1"),
               ("Authorization", "Bearer " + (st.key if org == 1 else st.key2))]
    if body is not None:
        headers.append(("Content-Type", "application/json"))
    if method == "POST" and path in ("/v1/sessions", "/v1/agents") and rng.random() < 0.3:
        headers.append(("Idempotency-Key", "fz-%d" % rng.randint(0, 20)))
    query = {}
    if path.endswith("/sse"):
        if rng.random() < 0.5:
            query = {"since_id": st.event_id, "types": "turn.completed"}
        else:
            headers.append(("Last-Event-ID", st.event_id))
    elif method == "GET" and rng.random() < 0.5:
        query = {"limit": "5", "offset": "0", "order": "desc"}
    return method, path, query, headers, body


# ------------------------------------------------------------------ mutators

def odd_value(rng, depth=0):
    r = rng.random()
    if r < 0.25:
        return rng.choice(ODD_STRINGS)
    if r < 0.5:
        return rng.choice(ODD_NUMBERS)
    if r < 0.6:
        return rng.choice([None, True, False])
    if r < 0.8 and depth < 3:
        return [odd_value(rng, depth + 1) for _ in range(rng.randint(0, 4))]
    if depth < 3:
        return {rng.choice(ODD_STRINGS + ["title", "tags", "type", "name"]):
                odd_value(rng, depth + 1) for _ in range(rng.randint(0, 4))}
    return rng.choice(ODD_STRINGS)


def mutate_json(rng, value, depth=0):
    """A copy of `value` with some members or items changed."""
    if isinstance(value, dict):
        out = dict(value)
        for _ in range(rng.randint(1, 3)):
            r = rng.random()
            if out and r < 0.35:
                k = rng.choice(list(out))
                out[k] = odd_value(rng) if rng.random() < 0.6 else mutate_json(rng, out[k], depth + 1)
            elif out and r < 0.55:
                del out[rng.choice(list(out))]
            elif r < 0.75:
                out[rng.choice(ODD_STRINGS + ["title", "tags", "message", "role"])] = odd_value(rng)
            elif out:
                k = rng.choice(list(out))
                out[k] = mutate_json(rng, out[k], depth + 1)
        return out
    if isinstance(value, list):
        out = list(value)
        r = rng.random()
        if out and r < 0.4:
            i = rng.randrange(len(out))
            out[i] = mutate_json(rng, out[i], depth + 1) if rng.random() < 0.5 else odd_value(rng)
        elif r < 0.7:
            out.append(odd_value(rng))
        elif r < 0.85:
            out = out * rng.randint(2, 60)
        elif out:
            out.pop()
        return out
    return odd_value(rng)


def mutate_bytes(rng, data):
    data = bytearray(data)
    for _ in range(rng.randint(1, 4)):
        r = rng.random()
        pos = rng.randint(0, len(data))
        if r < 0.25 and data:
            data[min(pos, len(data) - 1)] = rng.randrange(256)
        elif r < 0.5:
            data[pos:pos] = rng.choice(INTERESTING_BYTES)
        elif r < 0.65 and data:
            del data[pos:pos + rng.randint(1, 8)]
        elif r < 0.75:
            del data[pos:]
        elif r < 0.85 and data:
            a = rng.randrange(len(data))
            data[pos:pos] = data[a:a + rng.randint(1, 40)]
        else:
            data[pos:pos] = rng.choice(ODD_RAW)
    return bytes(data)


def mutate_path(rng, path):
    r = rng.random()
    segs = path.split("/")
    if r < 0.3 and len(segs) > 3:
        i = rng.randrange(3, len(segs))
        s = segs[i]
        segs[i] = rng.choice([
            s.upper(), s[:-1], s + "0", s.replace("_", "-"), "session_" + s[-32:][::-1],
            "%2e%2e", "%2F", s + "%00", "x" * 600, "", s.split("_")[-1], "agent_" + s[-32:]])
        return "/".join(segs)
    if r < 0.45:
        return path + rng.choice(["/", "//", "/x", "/.", "/..", "%", "?", "#frag", "/pin/x"])
    if r < 0.55:
        return path.replace("/", "//", 1)
    if r < 0.65:
        return rng.choice(["*", "", "x", "http://127.0.0.1/v1/sessions", "/v1", "/v2/sessions",
                           "/v1/sessions/../agents", "/%76%31/sessions"])
    return path


def mutate_query(rng, query):
    query = list(query.items())
    for _ in range(rng.randint(1, 4)):
        key = rng.choice(QUERY_KEYS)
        # a key given many times (types=...&types=...) now and then
        for _ in range(rng.choice([1, 1, 1, 2, 30])):
            query.append((key, rng.choice(QUERY_VALUES)))
    return query


def mutate_headers(rng, headers, st):
    headers = list(headers)
    for _ in range(rng.randint(1, 3)):
        r = rng.random()
        if r < 0.2 and headers:
            del headers[rng.randrange(len(headers))]
        elif r < 0.5:
            name = rng.choice(HEADER_NAMES)
            value = rng.choice([
                "", "x", "Bearer", "Bearer " + st.key, "ApiKey " + st.key, st.key,
                "Basic YTpi", "Bearer evr_pat_" + "0" * 48, "org_" + "0" * 31 + "1",
                "org_" + "f" * 32, "org_xyz", "application/json; charset=utf-8", "text/plain",
                "\"W/x\"", "*", "W/\"abc\"", "chunked", "gzip, chunked", "100-continue",
                "close", "keep-alive", "-1", "99999999999999999999", "0", " 12", "1 2",
                "x" * 9000, "\xff\xfe", "é"])
            headers.append((name, value))
        elif headers:
            i = rng.randrange(len(headers))
            headers.insert(i, headers[i])
    return headers


def build(rng, st):
    """One case: (bytes to send, a short description, the org whose key it
    carries)."""
    org = 2 if rng.random() < 0.2 else 1
    method, path, query, headers, body = seed_request(rng, st, org)
    what = ["org 2"] if org == 2 else []
    raw_body = json.dumps(body).encode() if body is not None else b""
    # one case in ten is sent as it is: those create sessions and agents,
    # post messages and start turns while the rest arrive
    layers = rng.sample(["json", "bytes", "path", "query", "headers", "method", "length",
                         "line", "head"], rng.choice([0, 1, 1, 1, 1, 2, 2, 2, 3, 3]))
    if "json" in layers and body is not None:
        raw_body = json.dumps(mutate_json(rng, body), ensure_ascii=rng.random() < 0.5).encode(
            "utf-8", "surrogatepass")
        what.append("json")
    elif "json" in layers:
        raw_body = json.dumps(odd_value(rng)).encode()
        headers.append(("Content-Type", "application/json"))
        what.append("json-body-added")
    if "bytes" in layers:
        raw_body = mutate_bytes(rng, raw_body or b"{}")
        what.append("bytes")
    if "path" in layers:
        path = mutate_path(rng, path)
        what.append("path")
    if "query" in layers:
        query = mutate_query(rng, query)
        what.append("query")
    if "method" in layers:
        method = rng.choice(["GET", "POST", "PUT", "PATCH", "DELETE", "OPTIONS", "TRACE",
                             "CONNECT", "get", "PROPFIND", "X" * 40, ""])
        what.append("method")
    if "headers" in layers:
        headers = mutate_headers(rng, headers, st)
        what.append("headers")
    target = path
    if query:
        pairs = query.items() if isinstance(query, dict) else query
        target += "?" + "&".join("%s=%s" % kv for kv in pairs)
    length = len(raw_body)
    if "length" in layers:
        length = rng.choice([0, max(0, length - rng.randint(1, 10)), length + 0])
        what.append("length")
    has_te = any(k.lower() == "transfer-encoding" for k, _ in headers)
    if (raw_body or method in ("POST", "PUT", "PATCH")) and not has_te:
        headers.append(("Content-Length", str(length)))
    elif has_te:
        raw_body = rng.choice([b"0\r\n\r\n", b"5\r\nhello\r\n0\r\n\r\n", b"zz\r\n",
                               b"ffffffffffffffffff\r\nx\r\n0\r\n\r\n",
                               b"2\r\n{}\r\n0\r\n\r\n"])
    version = "HTTP/1.1"
    if "line" in layers:
        version = rng.choice(["HTTP/1.0", "HTTP/2.0", "HTTP/1.1x", "HTTP/9", "", "http/1.1",
                              "HTTP/1.1 extra"])
        what.append("line")
    head = ("%s %s %s\r\n" % (method, target, version)).encode("utf-8", "surrogatepass")
    head += b"".join(("%s: %s\r\n" % (k, v)).encode("utf-8", "surrogatepass")
                     for k, v in headers)
    if "head" in layers:
        head = mutate_bytes(rng, head)
        if not head.endswith(b"\r\n"):
            head += b"\r\n"
        what.append("head")
    data = head + b"\r\n" + raw_body
    return data, "%s %s [%s]" % (method, target[:80], ",".join(what) or "valid"), org


TOKEN_RE = re.compile(rb"^[!#$%&'*+.^_`|~0-9A-Za-z-]+$")


def protocol_5xx_allowed(code, sent):
    """The two 5xx answers HTTP defines for a request this server cannot
    take: 505 for a well-formed version it does not speak (RFC 9110
    15.6.6) and 501 for a transfer coding it does not decode before the
    final chunked (RFC 9112 6.1).  Anything malformed must be a 400."""
    head = sent.split(b"\r\n\r\n", 1)[0].split(b"\r\n")
    if code == 505:
        version = head[0].rsplit(b" ", 1)[-1]
        return (re.match(rb"^HTTP/[0-9]\.[0-9]$", version) is not None
                and version not in (b"HTTP/1.0", b"HTTP/1.1"))
    if code == 501:
        values = [line.split(b":", 1)[1] for line in head[1:]
                  if line.lower().startswith(b"transfer-encoding:")]
        codings = [c.strip(b" \t") for c in b",".join(values).split(b",")]
        return (len(codings) > 1 and all(TOKEN_RE.match(c) for c in codings)
                and codings[-1].lower() == b"chunked"
                and [c.lower() for c in codings].count(b"chunked") == 1)
    return False


def check(resp, buf, ended, sent):
    """None if the answer is acceptable, else what is wrong with it."""
    if resp is None:
        return "no response (%s); got %r" % (ended, buf[:300])
    code = resp.status_code
    if code >= 500 and not protocol_5xx_allowed(code, sent):
        return "status %d: %r" % (code, resp.content[:500])
    ctype = resp.headers.get("content-type", "")
    if code >= 400:
        if not ctype.startswith("application/problem+json"):
            return "status %d with content-type %r" % (code, ctype)
        try:
            p = json.loads(resp.content)
        except ValueError:
            return "status %d, problem body is not JSON: %r" % (code, resp.content[:300])
        if not isinstance(p, dict) or p.get("status") != code:
            return "status %d, problem status %r" % (code, p.get("status") if isinstance(p, dict) else p)
        if not isinstance(p.get("detail"), str) or not p["detail"]:
            return "status %d, problem without a detail: %r" % (code, p)
    elif 200 <= code < 300 and "json" in ctype and resp.content:
        try:
            json.loads(resp.content)
        except ValueError:
            return "status %d, body is not JSON: %r" % (code, resp.content[:300])
    return None


def check_isolation(resp, sent, foreign, foreign_key):
    """None unless the answer shows what belongs to another org: one of its
    IDs in a 2xx body (that the request did not send), a 2xx for a path
    naming one of its IDs, or a resource bound to its agent.  (Not judged
    when a mutation put the other org's key into the request.)"""
    if resp is None or not 200 <= resp.status_code < 300 or foreign_key.encode() in sent:
        return None
    line = sent.split(b"\r\n", 1)[0].split(b" ")
    path = line[1].split(b"?")[0] if len(line) > 1 else b""
    for fid in foreign:
        if fid in path:
            return "another org's %r answered %d: %r" % (fid, resp.status_code, resp.content[:300])
        if fid in resp.content and fid not in sent:
            return "another org's %r shown: %r" % (fid, resp.content[:600])
    try:
        body = json.loads(resp.content) if resp.content else None
    except ValueError:
        body = None
    if isinstance(body, dict) and str(body.get("agent_id", "")).encode() in foreign:
        return "bound to another org's agent: %r" % (resp.content[:600],)
    return None


def first_response_length(buf):
    """Bytes taken by the first response in buf (one with a Content-Length),
    or None while it is incomplete."""
    head_end = buf.find(b"\r\n\r\n")
    if head_end < 0:
        return None
    n = 0
    for line in buf[:head_end].split(b"\r\n")[1:]:
        if line.lower().startswith(b"content-length:"):
            n = int(line.split(b":", 1)[1])
    return head_end + 4 + n if len(buf) >= head_end + 4 + n else None


class Tally:
    """What the cases of a run got, from all the worker threads."""

    def __init__(self, ignore_failures_once=None):
        self.lock = threading.Lock()
        self.statuses = {}  # status code (or "timeout", "200 sse") -> cases
        self.created = []   # sessions whose create was answered 201
        self.failures = []
        self.ignore = ignore_failures_once  # an Event: set, failures no longer count

    def add(self, status, created=None, failure=None):
        with self.lock:
            self.statuses[status] = self.statuses.get(status, 0) + 1
            if created:
                self.created.append(created)
            if failure and not (self.ignore and self.ignore.is_set()):
                self.failures.append(failure)

    def summary(self):
        with self.lock:
            return ", ".join("%s: %d" % kv for kv in sorted(self.statuses.items(), key=str))


def run_case(port, st, i, tally):
    """Builds case i, sends it, judges the answer; the verdict goes to tally."""
    rng = random.Random(SEED * 10**7 + i)
    data, what, org = build(rng, st)
    name = "case %d (FUZZ_SEED=%d FUZZ_ONLY=%d) %s" % (i, SEED, i, what)
    # one case in five follows a valid request on the same connection: the
    # connection's state after one request must not leak into the next
    first = b""
    if rng.random() < 0.2:
        first = (b"GET /v1/sessions/%s HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer %s\r\n\r\n"
                 % (st.sessions[1].encode(), st.key.encode()))
        name += ", after a GET"
    # one case in five arrives in pieces (a head or body split anywhere)
    out = first + data
    cuts = sorted(rng.sample(range(1, len(out)), min(4, len(out) - 1))) \
        if rng.random() < 0.2 else []
    if cuts:
        name += ", in %d pieces" % (len(cuts) + 1)
    # one case in twenty hangs up without reading the answer: after all of
    # the request or part of it, with a FIN or a reset (the server's health
    # at the end, and a sanitizer build's clean exit, judge those)
    hang_up = rng.random() < 0.05
    if hang_up:
        out = out[:rng.randint(1, len(out))]
    with raw_connect(port, timeout=DEADLINE) as s:
        try:
            for a, b in zip([0] + cuts, cuts + [len(out)]):
                s.sendall(out[a:b])
        except (BrokenPipeError, ConnectionResetError):
            pass
        if hang_up:
            if rng.random() < 0.5:
                s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            tally.add("hung up")
            return
        deadline = time.monotonic() + DEADLINE
        buf = b""
        if first:
            buf, _ = recv_until(s, lambda b: first_response_length(b) is not None,
                                deadline - time.monotonic(), buf)
            n = first_response_length(buf)
            if n is None:
                tally.add("no answer to the GET", failure=name + ": no answer to the GET before it")
                return
            buf = buf[n:]
        line = data.split(b"\r\n", 1)[0].split(b" ")
        if len(line) > 1 and line[1].split(b"?")[0].endswith(b"/sse"):
            # a stream that opens never ends: its head is the whole answer
            buf, _ = recv_until(s, lambda b: b"\r\n\r\n" in b, deadline - time.monotonic(), buf)
            head = buf.split(b"\r\n\r\n", 1)[0].lower()
            if head.startswith(b"http/1.1 200") and b"content-type: text/event-stream" in head:
                tally.add("200 sse")
                return
        resp, buf, ended = read_raw_response(s, deadline, buf)
    err = check(resp, buf, ended, data) or check_isolation(resp, data, st.owned[org],
                                                               st.key if org == 2 else st.key2)
    created = None
    if resp is not None and resp.status_code == 201:
        try:
            created = json.loads(resp.content).get("id")
        except (ValueError, AttributeError):
            pass
    tally.add(resp.status_code if resp is not None else ended,
              created if isinstance(created, str) and created.startswith("session_") else None,
              "%s: %s\nsent: %r" % (name, err, data[:600]) if err else None)


def test_random_requests_get_well_formed_answers(fresh_server):
    srv = fresh_server()
    st = Setup(srv)
    cases = [int(ONLY)] if ONLY is not None else range(CASES)
    tally = Tally()
    with ThreadPoolExecutor(WORKERS) as pool:
        for n, _ in enumerate(pool.map(lambda i: run_case(srv.port, st, i, tally), cases), 1):
            if len(cases) >= 20000 and n % (len(cases) // 10) == 0:
                print("fuzz: %d of %d cases, %d failed" % (n, len(cases), len(tally.failures)),
                      flush=True)
    # what the cases reached, for whoever tunes the mutators (pytest -s)
    print("fuzz: %d cases, answers by status: %s" % (len(cases), tally.summary()))
    assert srv.alive(), "loopd died:\n" + srv.stderr_tail()
    assert not tally.failures, "%d of %d cases failed; the first ones:\n%s" % (
        len(tally.failures), len(cases),
        "\n\n".join(sorted(tally.failures)[:int(os.environ.get("FUZZ_SHOW", "8"))]))
    expect(srv.client().get("/healthz"), 200)
    # the counts the writer keeps beside the rows still match the rows, once
    # the turns the cases started are over, and again after a restart
    assert_counts_match_rows(srv.client())
    srv.restart()
    assert_counts_match_rows(srv.client())
    srv.stop_clean()


def assert_counts_match_rows(api):
    statuses = ("started", "active", "idle", "waitingfortoolresults")

    def counts():
        st = expect(api.get("/v1/sessions/stats"), 200).json()
        rows = {k: expect(api.get("/v1/sessions", params={"status": k, "limit": 1}), 200)
                .json()["total"] for k in statuses}
        total = expect(api.get("/v1/sessions", params={"limit": 1}), 200).json()["total"]
        kept = (st["total"], st["started"], st["active"], st["idle"],
                st["waiting_for_tool_results"])
        stored = (total,) + tuple(rows[k] for k in statuses)
        return (kept == stored and st["active"] == 0) or (kept, stored)

    got = wait_for(lambda: counts() is True, timeout=30, what="no turn running")
    assert got is True
    final = counts()
    assert final is True, "stats (total, started, active, idle, waiting) %r != rows %r" % final


def test_kill9_amid_random_requests_loses_nothing_and_leaves_nothing_running(fresh_server):
    """Random requests from 8 clients, each case followed by a valid write
    (a create, or a message that starts a turn), the server killed with
    SIGKILL in the middle of them (turns running, writes in flight), then
    started again on the same data: every session whose create was answered
    201 is there, every message answered 201 is in its session, no session
    stays active (each turn in flight is resumed and ends), the counts still
    match the rows, no event outlives its session, and the database passes
    integrity_check."""
    import signal
    import sqlite3
    srv = fresh_server()
    st = Setup(srv)
    n = min(CASES, 3000)
    killed = threading.Event()
    tally = Tally(ignore_failures_once=killed)  # what fails once the kill is on its way
    done = [0]
    acked_msgs = []  # (session, message) whose POST was answered 201
    api = srv.client()

    def write(i):
        """A valid write beside each random case: a create, or a message
        to a session created so, which starts a turn (llmsim, a few ms)."""
        with tally.lock:
            mine = list(tally.created)
        if i % 3 == 0 or not mine:
            r = api.post("/v1/sessions", {"title": "w%d" % i, "tags": ["kill9"]}, timeout=5)
            if r.status_code == 201:
                with tally.lock:
                    tally.created.append(r.json()["id"])
        else:
            sid = mine[i % len(mine)]
            r = api.post("/v1/sessions/%s/messages" % sid,
                         user_message("turn %d" % i, {"latency_ms": 5}), timeout=5)
            if r.status_code == 201:
                with tally.lock:
                    acked_msgs.append((sid, r.json()["id"]))

    def one(i):
        if killed.is_set():
            return
        try:
            run_case(srv.port, st, i, tally)
            write(i)
        except (OSError, requests.RequestException):
            tally.add("connection failed", failure="case %d: connection failed" % i)
        with tally.lock:
            done[0] += 1
            if done[0] == n * 3 // 5 and not killed.is_set():
                killed.set()
                srv.expect_dead = True
                srv.proc.send_signal(signal.SIGKILL)

    with ThreadPoolExecutor(WORKERS) as pool:
        list(pool.map(one, range(n)))
    assert killed.is_set()
    assert not tally.failures, "\n\n".join(tally.failures[:8])
    srv.stop(signal.SIGKILL)
    srv.expect_dead = False
    srv.start()
    active = expect(srv.client().get("/v1/sessions/stats"), 200).json()["active"]
    created = tally.created
    assert created, "no create was answered before the kill"
    c1, c2 = srv.client(), srv.client(key=st.key2)
    for sid in created:
        if c1.get("/v1/sessions/" + sid).status_code != 200:
            expect(c2.get("/v1/sessions/" + sid), 200)
    for sid, mid in acked_msgs:
        msgs = expect(c1.get("/v1/sessions/%s/messages" % sid, params={"limit": 100}),
                      200).json()["data"]
        assert mid in [m["id"] for m in msgs], (sid, mid)
    print("kill9: %d creates and %d messages answered before the kill, %d sessions active"
          " at restart" % (len(created), len(acked_msgs), active))
    assert_counts_match_rows(c1)
    assert_counts_match_rows(c2)
    srv.stop_clean()
    db = sqlite3.connect(os.path.join(srv.data_dir, "loopd.db"))
    assert db.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    orphans = db.execute("SELECT count(*) FROM events WHERE session_id NOT IN"
                         " (SELECT id FROM sessions)").fetchone()[0]
    db.close()
    assert orphans == 0
