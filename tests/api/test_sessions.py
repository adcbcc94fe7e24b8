"""Session create / get / patch / delete / pin / cancel / stats."""
import http.client
import json
import re
import socket
import threading
import time
import uuid

import pytest
import requests

from conftest import (DEFAULT_ORG, GENERIC_FEATURES, HARNESS_BASE, HARNESS_CHAT, HARNESS_GENERIC,
                      SESSION_ID_RE, assert_limit_error, assert_no_nulls, assert_problem, expect,
                      get_events, id_re, parse_ts, post_message, validate, wait_turn_end)

IDENTITY = ("id", "organization_id", "workspace_id", "harness_id", "owner_principal_id",
            "created_at", "model_id")


def check_session(srv, s, status="started"):
    """Invariants of every session representation."""
    validate(s, "WithUrls_Session")
    assert_no_nulls(s)
    assert SESSION_ID_RE.match(s["id"]), s["id"]
    hexpart = s["id"][len("session_"):]
    assert s["workspace_id"] == "wsp_" + hexpart
    assert id_re("org").match(s["organization_id"])
    assert id_re("harness").match(s["harness_id"])
    assert id_re("principal").match(s["owner_principal_id"]), s["owner_principal_id"]
    assert id_re("model").match(s.get("model_id", "")), "model_id missing or malformed: %r" % s.get("model_id")
    assert isinstance(s["tags"], list)
    assert s["status"] == status
    for ts in ("created_at", "updated_at"):
        assert s[ts].endswith("Z"), "%s is not UTC with Z: %r" % (ts, s[ts])
    assert parse_ts(s["updated_at"]) >= parse_ts(s["created_at"])
    assert s["self_url"] == "%s/v1/sessions/%s" % (srv.base, s["id"])
    assert s["view_url"] == "%s/sessions/%s/chat" % (srv.base, s["id"])
    assert s["ui_link"] == s["view_url"]
    check_actions(srv, s)


def check_actions(srv, s):
    acts = s.get("allowed_actions")
    assert isinstance(acts, list) and acts, "allowed_actions missing: %r" % s
    rels = [a["rel"] for a in acts]
    assert len(rels) == len(set(rels)), rels
    want = {"self", "events", "stream", "update", "delete",
            "unpin" if s.get("is_pinned") else "pin"}
    if s["status"] == "active":
        want.add("cancel")
    assert set(rels) == want, "allowed_actions rels %r, expected %r" % (rels, sorted(want))
    base = "%s/v1/sessions/%s" % (srv.base, s["id"])
    expected = {"self": ("GET", base), "events": ("GET", base + "/events"),
                "stream": ("GET", base + "/sse"), "update": ("PATCH", base),
                "delete": ("DELETE", base), "pin": ("PUT", base + "/pin"),
                "unpin": ("DELETE", base + "/pin"), "cancel": ("POST", base + "/cancel")}
    for a in acts:
        method, href = expected[a["rel"]]
        assert a.get("method") == method, a
        assert a.get("href") == href, a


# ---------------------------------------------------------------- create

def test_create_empty_object(server, api):
    r = expect(api.post("/v1/sessions", {}), 201)
    s = r.json()
    check_session(server, s)
    assert s["organization_id"] == DEFAULT_ORG
    assert s["harness_id"] == HARNESS_GENERIC
    assert s["tags"] == []
    assert set(s["features"]) == GENERIC_FEATURES
    assert len(s["features"]) == len(set(s["features"]))
    for absent in ("title", "agent_id", "usage", "started_at", "finished_at", "system_prompt",
                   "locale", "initial_files", "capabilities", "tools"):
        assert absent not in s, "%s should be omitted when unset: %r" % (absent, s)
    assert r.headers["Content-Type"].startswith("application/json")


def test_create_ids_unique_uuidv7(api):
    ids = [api.create_session()["id"] for _ in range(5)]
    assert len(set(ids)) == 5
    for sid in ids:
        assert uuid.UUID(sid[len("session_"):]).version == 7, sid


@pytest.mark.parametrize("headers,body", [
    ({"Content-Type": "application/json"}, b""),
    ({}, b""),
    ({"Content-Type": "application/json; charset=utf-8"}, b"{}"),
    ({"Content-Type": "application/json"}, b"  {}  \n"),
])
def test_create_empty_or_bare_body(server, api, headers, body):
    r = api.post("/v1/sessions", data=body, headers=headers)
    expect(r, 201)
    check_session(server, r.json())


def test_create_ignores_unknown_fields(server, api):
    r = api.post("/v1/sessions", {"title": "unknown fields", "no_such_field": {"x": [1, 2]},
                                  "parent_session_id": "session_0123456789abcdef0123456789abcdef",
                                  "seed": 42, "id": "session_0123456789abcdef0123456789abcdef",
                                  "status": "idle", "organization_id": "org_0123456789abcdef0123456789abcdef"})
    expect(r, 201)
    s = r.json()
    check_session(server, s)
    assert s["title"] == "unknown fields"
    assert "no_such_field" not in s and "parent_session_id" not in s and "seed" not in s
    assert s["id"] != "session_0123456789abcdef0123456789abcdef"
    assert s["organization_id"] == DEFAULT_ORG
    assert s["status"] == "started"


def test_create_roundtrip_fields(server, api):
    body = {
        "harness_name": "generic",
        "title": "Debug login issue",
        "tags": ["debugging", "urgent", "ünïcødé ✓"],
        "locale": "uk-UA",
        "system_prompt": "Be terse.\nReally.",
        "hints": {"rich_media": True, "nested": {"a": [1, 2.5, "x", None]}},
        "network_access": {"allowed": ["example.com", "*.example.org"], "blocked": ["evil.test"]},
        "max_iterations": 7,
        "parallel_tool_calls": False,
        "initial_files": [{"path": "/workspace/notes.md", "content": "hello", "encoding": "text",
                           "is_readonly": True}],
        "source": "chat",
    }
    s = expect(api.post("/v1/sessions", body), 201).json()
    check_session(server, s)
    assert s["harness_id"] == HARNESS_GENERIC
    for k in ("title", "tags", "locale", "system_prompt", "hints", "network_access",
              "max_iterations", "parallel_tool_calls", "source"):
        assert s[k] == body[k], (k, s.get(k))
    assert len(s["initial_files"]) == 1
    f = s["initial_files"][0]
    assert f["content"] == "hello" and f["is_readonly"] is True
    assert f["path"] in ("/workspace/notes.md", "notes.md", "/notes.md"), f
    got = expect(api.get("/v1/sessions/" + s["id"]), 200).json()
    for k in body:
        if k != "harness_name":
            assert got[k] == s[k], k


def test_create_roundtrip_tools(server, api):
    tool = {"type": "client_side", "name": "get_weather", "description": "Weather for a city",
            "parameters": {"type": "object", "properties": {"city": {"type": "string"}},
                           "required": ["city"]}}
    s = expect(api.post("/v1/sessions", {"tools": [tool]}), 201).json()
    check_session(server, s)
    assert len(s["tools"]) == 1
    for k, v in tool.items():
        assert s["tools"][0][k] == v, k
    got = expect(api.get("/v1/sessions/" + s["id"]), 200).json()
    assert got["tools"] == s["tools"]


def test_create_source_default_and_values(api):
    s = api.create_session()
    assert s.get("source", "api") == "api"
    assert api.create_session({"source": "api"}).get("source") == "api"
    assert_problem(api.post("/v1/sessions", {"source": "slack"}), 400, detail_contains="source")
    assert_problem(api.post("/v1/sessions", {"source": "CHAT"}), 400, detail_contains="source")


def test_create_locale_normalized(api):
    s = api.create_session({"locale": "uk_UA"})
    assert s["locale"] == "uk-UA"
    assert_problem(api.post("/v1/sessions", {"locale": "x" * 65}), 400)


def test_create_with_harness_by_id_and_name(server, api):
    s = api.create_session({"harness_id": HARNESS_CHAT})
    assert s["harness_id"] == HARNESS_CHAT
    s = api.create_session({"harness_name": "platform-chat"})
    assert s["harness_id"] == HARNESS_CHAT
    s = api.create_session({"harness_name": "base"})
    check_session(server, s)
    assert s["harness_id"] == HARNESS_BASE
    assert "features" not in s, s
    s = api.create_session({"harness_id": HARNESS_GENERIC, "title": "g"})
    assert set(s["features"]) == GENERIC_FEATURES


def test_create_harness_conflicts_and_unknowns(api):
    assert_problem(api.post("/v1/sessions", {"harness_id": HARNESS_GENERIC, "harness_name": "generic"}),
                   400, detail_contains=("harness_id", "harness_name"))
    assert_problem(api.post("/v1/sessions", {"harness_name": "no-such-harness"}), 404)
    assert_problem(api.post("/v1/sessions", {"harness_id": "harness_0123456789abcdef0123456789abcdef"}), 404)
    assert_problem(api.post("/v1/sessions", {"harness_id": "harness_XYZ"}), 400)
    assert_problem(api.post("/v1/sessions", {"harness_name": "Not A Slug"}), 400)


def test_create_agent_conflicts_and_unknowns(api):
    assert_problem(api.post("/v1/sessions", {"agent_id": "agent_0123456789abcdef0123456789abcdef",
                                             "agent_name": "x"}), 400,
                   detail_contains=("agent_id", "agent_name"))
    assert_problem(api.post("/v1/sessions", {"agent_id": "agent_0123456789abcdef0123456789abcdef"}), 404)
    assert_problem(api.post("/v1/sessions", {"agent_name": "no-such-agent"}), 404)
    assert_problem(api.post("/v1/sessions", {"agent_id": "agent_nothex"}), 400)


def test_create_model(api):
    s = api.create_session()
    model = s["model_id"]
    s2 = api.create_session({"model_id": model})
    assert s2["model_id"] == model
    assert_problem(api.post("/v1/sessions", {"model_id": "model_0123456789abcdef0123456789abcdef"}), 404)
    assert_problem(api.post("/v1/sessions", {"model_id": "model_bad"}), 400)


@pytest.mark.parametrize("body,field", [
    ({"title": "t" * 256}, "title"),
    ({"tags": ["t%d" % i for i in range(101)]}, "tags"),
    ({"tags": ["x" * 256]}, "tags"),
    ({"initial_files": [{"path": "/workspace/f%d.txt" % i, "content": "x"} for i in range(101)]},
     "initial_files"),
])
def test_create_limits(api, body, field):
    assert_limit_error(api.post("/v1/sessions", body), field)


def test_create_at_limits_ok(api):
    s = api.create_session({"title": "t" * 255, "tags": ["x" * 255] + ["t%d" % i for i in range(99)],
                            "initial_files": [{"path": "/workspace/f%d.txt" % i, "content": "x"}
                                              for i in range(100)]})
    assert len(s["title"]) == 255 and len(s["tags"]) == 100
    assert len(s["initial_files"]) == 100
    # Multi-byte characters: 255 characters of a 3-byte character.
    s = api.create_session({"title": "€" * 255})
    assert s["title"] == "€" * 255


@pytest.mark.parametrize("tag", ["__internal:x", "app:foo", "app_channel:1", "slack:app:2", "ag_ui:app:3"])
def test_create_reserved_tags(api, tag):
    assert_problem(api.post("/v1/sessions", {"tags": ["ok", tag]}), 400)


def test_create_bad_initial_files(api):
    for files in ([{"path": "/workspace/../etc/passwd", "content": "x"}],
                  [{"path": "/workspace", "content": "x"}],
                  [{"path": "/workspace/a", "content": "x", "encoding": "rot13"}],
                  [{"path": "/workspace/a", "content": "x"}, {"path": "/workspace/a", "content": "y"}],
                  [{"content": "x"}]):
        assert_problem(api.post("/v1/sessions", {"initial_files": files}), 400)


def test_system_prompt_limit(fresh_server):
    srv = fresh_server(["--max-body", str(3 * 1024 * 1024)])
    c = srv.client()
    mib = 1024 * 1024
    s = c.create_session({"system_prompt": "p" * mib})
    assert len(s["system_prompt"]) == mib
    assert_limit_error(c.post("/v1/sessions", {"system_prompt": "p" * (mib + 1)}), "system_prompt")


def test_max_body_flag(fresh_server):
    srv = fresh_server(["--max-body", "2000"])
    c = srv.client()
    expect(c.post("/v1/sessions", {"title": "x" * 100}), 201)
    assert_problem(c.post("/v1/sessions", {"title": "x" * 2500}), 413)
    stats = expect(c.get("/v1/sessions/stats"), 200).json()
    assert stats["total"] == 1


# ---------------------------------------------------------------- get

def test_get_matches_create(server, api):
    s = api.create_session({"title": "get me", "tags": ["a", "b"]})
    r = expect(api.get("/v1/sessions/" + s["id"]), 200)
    got = r.json()
    check_session(server, got)
    a = {k: v for k, v in s.items() if k != "is_pinned"}
    b = {k: v for k, v in got.items() if k != "is_pinned"}
    assert a == b
    assert got.get("is_pinned", False) is False


def test_get_etag_and_if_none_match(api):
    s = api.create_session({"title": "etag"})
    path = "/v1/sessions/" + s["id"]
    r = expect(api.get(path), 200)
    etag = r.headers.get("ETag")
    assert etag and etag.strip('W/').startswith('"') and etag.endswith('"'), r.headers
    r2 = api.get(path, headers={"If-None-Match": etag})
    expect(r2, 304)
    assert r2.content == b""
    assert r2.headers.get("ETag") == etag
    expect(api.get(path, headers={"If-None-Match": '"something-else"'}), 200)
    # Repeated GETs give the same ETag; a change gives a new one.
    assert expect(api.get(path), 200).headers["ETag"] == etag
    expect(api.patch(path, {"title": "etag 2"}), 200)
    r3 = expect(api.get(path, headers={"If-None-Match": etag}), 200)
    assert r3.json()["title"] == "etag 2"
    assert r3.headers["ETag"] != etag


def test_if_none_match_takes_a_list(api):
    """If-None-Match is a list of entity tags compared weakly (RFC 9110
    13.1.2), as caches send it: any member matching is a 304."""
    s = api.create_session({"title": "etag list"})
    path = "/v1/sessions/" + s["id"]
    etag = expect(api.get(path), 200).headers["ETag"]
    for inm in ('"x", ' + etag, etag + ',"x"', '"a",  W/' + etag + ' , "b"', '"a", *'):
        r = api.get(path, headers={"If-None-Match": inm})
        assert r.status_code == 304 and r.headers.get("ETag") == etag, (inm, r.status_code)
    for inm in ('"x", "y"', etag[:-1], 'x' + etag, '"x" ' + etag[1:], ""):
        expect(api.get(path, headers={"If-None-Match": inm}), 200)


def test_get_bad_and_unknown_ids(api):
    for bad in ("not-a-session-id", "session_0123456789ABCDEF0123456789ABCDEF",
                "session_0123456789abcdef0123456789abcde", "session_0123456789abcdef0123456789abcdef0",
                "agent_0123456789abcdef0123456789abcdef", "session_0123456789abcdef0123456789abcdeg",
                "session-0123456789abcdef0123456789abcdef"):
        assert_problem(api.get("/v1/sessions/" + bad), 400, detail_startswith="Invalid session ID: ")
    assert_problem(api.get("/v1/sessions/session_0123456789abcdef0123456789abcdef"), 404)


# ---------------------------------------------------------------- patch

def test_patch_title_only(server, api):
    s = api.create_session({"title": "before", "tags": ["keep"], "locale": "en-US"})
    r = expect(api.patch("/v1/sessions/" + s["id"], {"title": "after"}), 200)
    p = r.json()
    check_session(server, p)
    assert p["title"] == "after"
    assert p["tags"] == ["keep"] and p["locale"] == "en-US"
    for k in IDENTITY:
        assert p[k] == s[k], k
    assert parse_ts(p["updated_at"]) > parse_ts(s["updated_at"])
    got = expect(api.get("/v1/sessions/" + s["id"]), 200).json()
    assert got["title"] == "after" and got["updated_at"] == p["updated_at"]


def test_patch_tags_replace_and_locale(api):
    s = api.create_session({"title": "t", "tags": ["a", "b"]})
    p = expect(api.patch("/v1/sessions/" + s["id"], {"tags": ["c"]}), 200).json()
    assert p["tags"] == ["c"] and p["title"] == "t"
    p2 = expect(api.patch("/v1/sessions/" + s["id"], {"tags": []}), 200).json()
    assert p2["tags"] == []
    assert parse_ts(p2["updated_at"]) > parse_ts(p["updated_at"])
    p3 = expect(api.patch("/v1/sessions/" + s["id"], {"locale": "uk_UA"}), 200).json()
    assert p3["locale"] == "uk-UA"
    assert parse_ts(p3["updated_at"]) > parse_ts(p2["updated_at"])


def test_patch_nulls_leave_fields_unchanged(api):
    s = api.create_session({"title": "stay", "tags": ["x"], "locale": "en-US"})
    p = expect(api.patch("/v1/sessions/" + s["id"], {"title": None, "tags": None, "locale": None}), 200).json()
    assert p["title"] == "stay" and p["tags"] == ["x"] and p["locale"] == "en-US"


def test_patch_cannot_change_identity_or_status(api):
    s = api.create_session({"title": "id"})
    body = {"title": "id2", "id": "session_0123456789abcdef0123456789abcdef",
            "organization_id": "org_0123456789abcdef0123456789abcdef",
            "workspace_id": "wsp_0123456789abcdef0123456789abcdef", "harness_id": HARNESS_BASE,
            "agent_id": "agent_0123456789abcdef0123456789abcdef",
            "owner_principal_id": "principal_0123456789abcdef0123456789abcdef",
            "created_at": "2000-01-01T00:00:00Z", "model_id": "model_0123456789abcdef0123456789abcdef",
            "status": "idle", "updated_at": "2000-01-01T00:00:00Z"}
    p = expect(api.patch("/v1/sessions/" + s["id"], body), 200).json()
    assert p["title"] == "id2"
    for k in IDENTITY:
        assert p[k] == s[k], k
    assert "agent_id" not in p
    assert p["status"] == "started"
    assert parse_ts(p["updated_at"]) > parse_ts(s["updated_at"])


def test_patch_updated_at_strictly_increases(api):
    s = api.create_session()
    last = parse_ts(s["updated_at"])
    for i in range(5):
        p = expect(api.patch("/v1/sessions/" + s["id"], {"title": "n%d" % i}), 200).json()
        now = parse_ts(p["updated_at"])
        assert now > last, (p["updated_at"], last)
        last = now


def test_patch_if_match(api):
    s = api.create_session({"title": "v1"})
    path = "/v1/sessions/" + s["id"]
    etag = expect(api.get(path), 200).headers["ETag"]
    # Two editors read the same version; the first wins, the second gets 412.
    r1 = expect(api.patch(path, {"title": "editor one"}, headers={"If-Match": etag}), 200)
    assert r1.json()["title"] == "editor one"
    new_etag = r1.headers.get("ETag") or expect(api.get(path), 200).headers["ETag"]
    assert new_etag != etag
    assert_problem(api.patch(path, {"title": "editor two"}, headers={"If-Match": etag}), 412)
    assert expect(api.get(path), 200).json()["title"] == "editor one"
    r3 = expect(api.patch(path, {"title": "editor two"}, headers={"If-Match": new_etag}), 200)
    assert r3.json()["title"] == "editor two"
    assert_problem(api.patch(path, {"title": "x"}, headers={"If-Match": '"bogus"'}), 412)
    assert expect(api.get(path), 200).json()["title"] == "editor two"


def test_patch_concurrent_if_match_only_one_wins(api):
    s = api.create_session({"title": "race"})
    path = "/v1/sessions/" + s["id"]
    etag = expect(api.get(path), 200).headers["ETag"]
    barrier = threading.Barrier(10)
    codes = []
    lock = threading.Lock()

    def worker(i):
        barrier.wait()
        r = api.patch(path, {"title": "writer %d" % i}, headers={"If-Match": etag})
        with lock:
            codes.append((r.status_code, r.json().get("title")))

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(10)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    ok = [c for c in codes if c[0] == 200]
    assert len(codes) == 10 and len(ok) == 1, codes
    assert all(c[0] == 412 for c in codes if c[0] != 200), codes
    assert expect(api.get(path), 200).json()["title"] == ok[0][1]


def test_patch_errors(api):
    assert_problem(api.patch("/v1/sessions/session_0123456789abcdef0123456789abcdef", {"title": "x"}), 404)
    assert_problem(api.patch("/v1/sessions/bad-id", {"title": "x"}), 400, detail_startswith="Invalid session ID: ")
    s = api.create_session({"title": "p"})
    assert_limit_error(api.patch("/v1/sessions/" + s["id"], {"title": "t" * 256}), "title")
    assert_limit_error(api.patch("/v1/sessions/" + s["id"], {"tags": ["t%d" % i for i in range(101)]}), "tags")
    assert_problem(api.patch("/v1/sessions/" + s["id"], {"tags": ["app:x"]}), 400)
    assert_problem(api.patch("/v1/sessions/" + s["id"], {"locale": "x" * 65}), 400)
    got = expect(api.get("/v1/sessions/" + s["id"]), 200).json()
    assert got["title"] == "p" and got["tags"] == [] and got["updated_at"] == s["updated_at"]


def test_patch_empty_body_ok(api):
    s = api.create_session({"title": "e"})
    for data in (b"{}", b""):
        r = api.patch("/v1/sessions/" + s["id"], data=data, headers={"Content-Type": "application/json"})
        expect(r, 200)
        assert r.json()["title"] == "e"


# ---------------------------------------------------------------- delete

def test_delete(api):
    s = api.create_session({"title": "doomed"})
    path = "/v1/sessions/" + s["id"]
    r = expect(api.delete(path), 204)
    assert r.content == b""
    assert_problem(api.get(path), 404)
    assert_problem(api.delete(path), 404)
    assert_problem(api.patch(path, {"title": "x"}), 404)
    assert_problem(api.put(path + "/pin"), 404)
    lst = expect(api.get("/v1/sessions", params={"search": "doomed"}), 200).json()
    assert s["id"] not in [x["id"] for x in lst["data"]]
    assert_problem(api.delete("/v1/sessions/bad"), 400, detail_startswith="Invalid session ID: ")


def test_delete_a_session_with_a_long_log(api):
    """Deleting a session rewrites every page of its log inside the op's
    savepoint: ~2 MB here, past the sub-journal's 512 KiB in memory, so
    the rest goes to a temporary file.  The delete is whole and nothing
    else changes."""
    keep = api.create_session({"title": "kept"})
    post_message(api, keep["id"], "stay")
    kept_log = wait_turn_end(api, keep["id"])
    s = api.create_session({"title": "long log"})
    for i in range(8):
        post_message(api, s["id"], chr(ord("a") + i) * 250_000)
    wait_turn_end(api, s["id"], turns=8, timeout=60)
    path = "/v1/sessions/" + s["id"]
    expect(api.delete(path), 204)
    assert_problem(api.get(path), 404)
    assert_problem(api.get(path + "/events"), 404)
    assert get_events(api, keep["id"]) == kept_log
    assert expect(api.get("/v1/sessions/" + keep["id"]), 200).json()["title"] == "kept"
    # the database goes on taking writes
    again = api.create_session({"title": "after"})
    post_message(api, again["id"], "x" * 250_000)
    wait_turn_end(api, again["id"])


def test_delete_with_json_content_type(api):
    s = api.create_session()
    expect(api.delete("/v1/sessions/" + s["id"], headers={"Content-Type": "application/json"}), 204)


# ---------------------------------------------------------------- pin

def test_pin_unpin(server, api):
    s = api.create_session({"title": "pin me"})
    path = "/v1/sessions/" + s["id"]
    r = expect(api.put(path + "/pin"), 204)
    assert r.content == b""
    got = expect(api.get(path), 200).json()
    assert got["is_pinned"] is True
    check_session(server, got)
    expect(api.put(path + "/pin", headers={"Content-Type": "application/json"}), 204)  # idempotent
    lst = expect(api.get("/v1/sessions", params={"search": "pin me"}), 200).json()
    assert [x for x in lst["data"] if x["id"] == s["id"]][0]["is_pinned"] is True
    expect(api.delete(path + "/pin"), 204)
    got = expect(api.get(path), 200).json()
    assert got["is_pinned"] is False
    check_session(server, got)
    expect(api.delete(path + "/pin"), 204)  # idempotent
    assert_problem(api.put("/v1/sessions/session_0123456789abcdef0123456789abcdef/pin"), 404)
    assert_problem(api.put("/v1/sessions/nope/pin"), 400, detail_startswith="Invalid session ID: ")


def test_pin_only_affects_that_session(api):
    a = api.create_session({"title": "pin a"})
    b = api.create_session({"title": "pin b"})
    expect(api.put("/v1/sessions/%s/pin" % a["id"]), 204)
    assert expect(api.get("/v1/sessions/" + b["id"]), 200).json()["is_pinned"] is False


# ---------------------------------------------------------------- cancel

@pytest.mark.parametrize("headers,data", [({}, None), ({"Content-Type": "application/json"}, b""),
                                          ({"Content-Type": "application/json"}, b"{}")])
def test_cancel_idle_session_is_no_op(api, headers, data):
    s = api.create_session()
    r = expect(api.post("/v1/sessions/%s/cancel" % s["id"], data=data, headers=headers), 200)
    body = r.json()
    validate(body, "CancelTurnResponse")
    assert body["status"] == "no_op"
    assert body["message"]
    got = expect(api.get("/v1/sessions/" + s["id"]), 200).json()
    assert got["status"] == "started"


def test_cancel_errors(api):
    assert_problem(api.post("/v1/sessions/session_0123456789abcdef0123456789abcdef/cancel"), 404)
    assert_problem(api.post("/v1/sessions/xyz/cancel"), 400, detail_startswith="Invalid session ID: ")


def test_get_again_shows_every_write_at_once(api, org2):
    """GET /v1/sessions/{id} answers a repeat from a copy while nothing was
    written; every kind of write shows in the very next GET, each user sees
    their own pin, another org still gets 404, and a deleted session 404."""
    c = api
    sid = c.create_session({"title": "cached"})["id"]

    def get(cl=c):
        r = expect(cl.get("/v1/sessions/" + sid), 200)
        body = r.json()
        validate(body, "WithUrls_Session")
        return body, r.headers["ETag"]

    def lookups(outcome):
        text = expect(c.get("/metrics"), 200).text
        m = re.search(r'^loopd_reply_cache_lookups_total\{cache="session",outcome="%s"\} (\d+)$'
                      % outcome, text, re.M)
        assert m, text[-2000:]
        return int(m.group(1))

    first, tag = get()
    hits = lookups("hit")
    assert get() == (first, tag)  # a repeat: same body, same ETag, from the copy
    assert lookups("hit") == hits + 1
    assert c.get("/v1/sessions/" + sid, headers={"If-None-Match": tag}).status_code == 304

    p = expect(c.patch("/v1/sessions/" + sid, {"title": "renamed"}), 200).json()
    now, tag2 = get()
    assert now["title"] == "renamed" and now == p and tag2 != tag
    assert c.get("/v1/sessions/" + sid, headers={"If-None-Match": tag}).status_code == 200

    expect(c.put("/v1/sessions/" + sid + "/pin"), 204)
    assert get()[0]["is_pinned"] is True
    expect(c.delete("/v1/sessions/" + sid + "/pin"), 204)
    assert get()[0]["is_pinned"] is False

    post_message(c, sid, "hello")
    wait_turn_end(c, sid, 1)
    after, _ = get()
    assert after["status"] == "idle" and after["usage"]["output_tokens"] > 0

    # another org: 404 whether or not the session was just served
    get()
    assert_problem(org2["client"].get("/v1/sessions/" + sid), 404)
    assert get()[0] == after

    expect(c.delete("/v1/sessions/" + sid), 204)
    assert_problem(c.get("/v1/sessions/" + sid), 404)


@pytest.mark.parametrize("cache", ["on", "off"])
def test_list_again_shows_every_write_at_once(fresh_server, cache):
    """A list page asked for again is answered from a copy while nothing was
    written (unless --reply-cache off); a create, a patch, a pin and a
    delete each show in the very next page, with the right total, and each
    org and user sees their own."""
    srv = fresh_server(extra_args=["--reply-cache", cache])
    c = srv.client()
    o = srv.new_org()
    c2 = srv.client(key=o["key"])
    first = c.create_session({"title": "one"})["id"]

    def page(cl=c, **params):
        body = expect(cl.get("/v1/sessions", params=dict(limit=5, **params)), 200).json()
        validate(body, "PaginatedResponse_WithUrls_Session")
        return body

    a = page()
    assert page() == a and a["total"] == 1
    assert page(cl=c2)["total"] == 0  # same URL, other org
    second = c.create_session({"title": "two"})["id"]
    b = page()
    assert b["total"] == 2 and [s["id"] for s in b["data"]] == [second, first]
    expect(c.patch("/v1/sessions/" + first, {"title": "one again"}), 200)
    assert page()["data"][1]["title"] == "one again"
    assert page(pinned="true")["total"] == 0
    expect(c.put("/v1/sessions/" + first + "/pin"), 204)
    pinned = page(pinned="true")
    assert [s["id"] for s in pinned["data"]] == [first] and pinned["data"][0]["is_pinned"] is True
    assert page(cl=c2, pinned="true")["total"] == 0
    expect(c.delete("/v1/sessions/" + second), 204)
    d = page()
    assert d["total"] == 1 and [s["id"] for s in d["data"]] == [first]
    assert d["sessions"] == d["data"]


def test_cached_page_sent_whole_while_replaced(fresh_server):
    """An answer from the reply cache is sent from the cached bytes
    themselves.  A client that reads a ~220 KB cached page slowly gets
    exactly that page, while a write voids the cache and newer pages take
    the slot (the bytes it is being sent from must outlive them)."""
    srv = fresh_server()
    c = srv.client()
    for i in range(50):
        c.create_session({"title": "page filler %03d %s" % (i, "x" * 32)})
    path = "/v1/sessions?limit=50"
    first = expect(c.get(path), 200)
    assert 200_000 < len(first.content) < 256 * 1024  # kept: under the cache's 256 KB
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)  # the server cannot send it all
    s.settimeout(15)
    s.connect(("127.0.0.1", srv.port))
    with s:
        s.sendall(("GET %s HTTP/1.1\r\nHost: x\r\nAuthorization: %s\r\n\r\n"
                   % (path, c.key)).encode())
        head = b""
        while b"\r\n\r\n" not in head:
            head += s.recv(1)
        newer = []
        for i in range(3):  # each write voids the page, each GET keeps a newer one
            c.create_session({"title": "newer %d" % i})
            newer.append(expect(c.get(path), 200).content)
            assert newer[-1] != first.content
        status = head.split(b"\r\n", 1)[0]
        assert status == b"HTTP/1.1 200 OK", head
        length = int(re.search(rb"(?i)content-length: *(\d+)", head).group(1))
        body = b""
        while len(body) < length:
            chunk = s.recv(65536)
            assert chunk, "connection closed after %d of %d bytes" % (len(body), length)
            body += chunk
    assert body == first.content
    assert expect(c.get(path), 200).content == newer[-1]


# ---------------------------------------------------------------- stats

def test_stats_counts(fresh_server):
    srv = fresh_server()
    c = srv.client()
    st = expect(c.get("/v1/sessions/stats"), 200).json()
    validate(st, "SessionStatsResponse")
    keys = ("total", "active", "idle", "started", "waiting_for_tool_results")
    assert {k: st[k] for k in keys} == dict.fromkeys(keys, 0)
    ids = [c.create_session()["id"] for _ in range(3)]
    st = expect(c.get("/v1/sessions/stats"), 200).json()
    assert st["total"] == 3 and st["started"] == 3 and st["active"] == 0 and st["idle"] == 0
    expect(c.delete("/v1/sessions/" + ids[0]), 204)
    st = expect(c.get("/v1/sessions/stats"), 200).json()
    validate(st, "SessionStatsResponse")
    assert st["total"] == 2 and st["started"] == 2
    # Another org's sessions are not counted.
    o = srv.new_org()
    c2 = srv.client(key=o["key"])
    c2.create_session()
    assert expect(c.get("/v1/sessions/stats"), 200).json()["total"] == 2
    assert expect(c2.get("/v1/sessions/stats"), 200).json()["total"] == 1


def test_counts_of_sessions_created_in_one_batch(fresh_server):
    """Sessions created at once share the writer's batches, which add them
    to the counts once per batch: creates, chat get-or-creates, idempotent
    retries that lose their race inside a batch (rolled back) and deletes,
    all in flight together, leave stats, list totals and harness and agent
    session_count equal to what is stored, before and after a restart."""
    srv = fresh_server()
    c = srv.client()
    agent = c.create_agent("counted-" + uuid.uuid4().hex[:8])
    doomed = [c.create_session()["id"] for _ in range(6)]
    key = "idem-batch-" + uuid.uuid4().hex
    calls = ([("post", {"title": "same key"}, {"Idempotency-Key": key})] * 12
             + [("post", {"title": "plain"}, {})] * 16
             + [("post", {"agent_id": agent["id"]}, {})] * 8
             + [("chat", {}, {})] * 8
             + [("delete", sid, {}) for sid in doomed])
    # every request on its own connection, all connected first and then
    # sent back to back, so that they reach the server together and share
    # batches (several of the same Idempotency-Key get to the writer)
    socks = [socket.create_connection(("127.0.0.1", srv.port), timeout=30) for _ in calls]
    wire = []
    for kind, body, hdrs in calls:
        method, path, data = {"post": ("POST", "/v1/sessions", json.dumps(body)),
                              "chat": ("POST", "/v1/sessions/chat", "{}"),
                              "delete": ("DELETE", "/v1/sessions/%s" % body, "")}[kind]
        head = ["%s %s HTTP/1.1" % (method, path), "Host: 127.0.0.1",
                "Authorization: Bearer " + srv.key, "Content-Type: application/json",
                "Content-Length: %d" % len(data), "Connection: close"]
        head += ["%s: %s" % kv for kv in hdrs.items()]
        wire.append(("\r\n".join(head) + "\r\n\r\n" + data).encode())
    for sk, w in zip(socks, wire):
        sk.sendall(w)
    results = []
    for sk in socks:
        r = http.client.HTTPResponse(sk)
        r.begin()
        results.append((r.status, r.read()))
        sk.close()
    made = set()
    for (kind, _, _), (status, body) in zip(calls, results):
        assert status == {"post": 201, "chat": 200, "delete": 204}[kind], (kind, status, body)
        if kind != "delete":
            made.add(json.loads(body)["id"])
    # one session per idempotency key, one chat session, 16 + 8 others
    assert len(made) == 1 + 16 + 8 + 1

    def check():
        st = expect(c.get("/v1/sessions/stats"), 200).json()
        validate(st, "SessionStatsResponse")
        listed = expect(c.get("/v1/sessions", params={"limit": 100}), 200).json()
        assert {s["id"] for s in listed["data"]} == made
        assert st["total"] == listed["total"] == len(made) and st["started"] == len(made)
        by_harness = {}
        for s in listed["data"]:
            by_harness[s["harness_id"]] = by_harness.get(s["harness_id"], 0) + 1
        hs = {h["id"]: h["session_count"] for h in expect(c.get("/v1/harnesses"), 200).json()["data"]}
        assert {h: hs[h] for h in by_harness} == by_harness
        assert by_harness[HARNESS_CHAT] == 1
        assert sum(hs.values()) == len(made)
        assert expect(c.get("/v1/agents/" + agent["id"]), 200).json()["session_count"] == 8

    check()
    srv.restart()
    c = srv.client()
    check()


# ---------------------------------------------------------------- idempotency

def test_idempotency_key_sessions(api):
    key = "idem-" + uuid.uuid4().hex
    title = "idem " + key
    r1 = expect(api.post("/v1/sessions", {"title": title}, headers={"Idempotency-Key": key}), 201)
    assert r1.headers.get("Idempotent-Replayed", "false").lower() != "true"
    r2 = expect(api.post("/v1/sessions", {"title": title}, headers={"Idempotency-Key": key}), 201)
    assert r2.headers.get("Idempotent-Replayed") == "true", r2.headers
    assert r2.json() == r1.json()
    lst = expect(api.get("/v1/sessions", params={"search": title}), 200).json()
    assert lst["total"] == 1
    r3 = api.post("/v1/sessions", {"title": title + " other"}, headers={"Idempotency-Key": key})
    assert_problem(r3, 422)
    assert expect(api.get("/v1/sessions", params={"search": title}), 200).json()["total"] == 1
    # Another key creates another session.
    r4 = expect(api.post("/v1/sessions", {"title": title}, headers={"Idempotency-Key": key + "-2"}), 201)
    assert r4.json()["id"] != r1.json()["id"]
    # Without the header, every POST creates.
    expect(api.post("/v1/sessions", {"title": title}), 201)
    assert expect(api.get("/v1/sessions", params={"search": title}), 200).json()["total"] == 3


def test_idempotency_key_is_per_org(api, org2):
    key = "idem-org-" + uuid.uuid4().hex
    r1 = expect(api.post("/v1/sessions", {"title": "k"}, headers={"Idempotency-Key": key}), 201)
    r2 = expect(org2["client"].post("/v1/sessions", {"title": "k"}, headers={"Idempotency-Key": key}), 201)
    assert r2.json()["id"] != r1.json()["id"]
    assert r2.json()["organization_id"] == org2["org_id"]
    assert r2.headers.get("Idempotent-Replayed", "false").lower() != "true"


def test_idempotency_concurrent_same_key(api):
    key = "idem-race-" + uuid.uuid4().hex
    title = "race " + key
    barrier = threading.Barrier(8)
    out = []
    lock = threading.Lock()

    def worker():
        barrier.wait()
        r = api.post("/v1/sessions", {"title": title}, headers={"Idempotency-Key": key})
        with lock:
            out.append((r.status_code, r.json().get("id")))

    threads = [threading.Thread(target=worker) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert len(out) == 8
    created = {sid for code, sid in out if code == 201}
    assert len(created) == 1, out
    # Losers either replay (201, same id) or are told to retry (409); never 5xx.
    assert all(code in (201, 409) for code, _ in out), out
    assert expect(api.get("/v1/sessions", params={"search": title}), 200).json()["total"] == 1


# ---------------------------------------------------------------- more edges

def test_etag_changes_when_pin_changes(api):
    s = api.create_session({"title": "etag pin"})
    path = "/v1/sessions/" + s["id"]
    etag = expect(api.get(path), 200).headers["ETag"]
    expect(api.put(path + "/pin"), 204)
    r = api.get(path, headers={"If-None-Match": etag})
    expect(r, 200)  # a 304 here would hand the client a stale is_pinned
    assert r.json()["is_pinned"] is True


def test_if_match_star(api):
    s = api.create_session({"title": "star"})
    r = expect(api.patch("/v1/sessions/" + s["id"], {"title": "star 2"}, headers={"If-Match": "*"}), 200)
    assert r.json()["title"] == "star 2"


def test_if_match_takes_a_list(api):
    """If-Match is "*" or a list of entity tags (RFC 9110 13.1.1): the PATCH
    goes ahead when any of them is the current ETag, else 412 and nothing
    changes.  Weak tags are taken as the version they name."""
    s = api.create_session({"title": "list 0"})
    path = "/v1/sessions/" + s["id"]
    for i, im in enumerate(('"x", {0}', '{0},"x"', '"7", W/{0} , "9"', '"a", *', '{0} ,')):
        etag = expect(api.get(path), 200).headers["ETag"]
        title = "list %d" % (i + 1)
        r = expect(api.patch(path, {"title": title}, headers={"If-Match": im.format(etag)}), 200)
        assert r.json()["title"] == title and r.headers["ETag"] != etag, im
    etag = expect(api.get(path), 200).headers["ETag"]
    v = int(etag.strip('"'))
    for im in ('"x", "y"', '"%d", "%d"' % (v - 1, v + 1), etag[:-1], 'x' + etag, '"0%d"' % v,
               '"%d"' % (v + 10 ** 18), '"%d ", " %d"' % (v, v), '"-%d"' % v, ",", ""):
        assert_problem(api.patch(path, {"title": "lost"}, headers={"If-Match": im}), 412)
    after = expect(api.get(path), 200)
    assert after.headers["ETag"] == etag and after.json()["title"] == "list 5"


def test_json_escapes_roundtrip(api):
    title = 'quote " backslash \\ newline \n tab \t ctrl \x01 emoji \U0001F600 ü'
    s = api.create_session({"title": title, "tags": ["\U0001F600", "a/b", "<script>"]})
    assert s["title"] == title
    assert s["tags"] == ["\U0001F600", "a/b", "<script>"]
    # A surrogate-pair escape decodes to the same character.
    r = api.post("/v1/sessions", data=b'{"title":"\\ud83d\\ude00"}', headers={"Content-Type": "application/json"})
    assert expect(r, 201).json()["title"] == "\U0001F600"
    got = expect(api.get("/v1/sessions/" + s["id"]), 200).json()
    assert got["title"] == title


def test_zero_and_false_values_are_kept(api):
    s = api.create_session({"max_iterations": 0, "parallel_tool_calls": False, "hints": {},
                            "system_prompt": "x"})
    assert s["max_iterations"] == 0
    assert s["parallel_tool_calls"] is False
    got = expect(api.get("/v1/sessions/" + s["id"]), 200).json()
    assert got["max_iterations"] == 0 and got["parallel_tool_calls"] is False


def test_parallel_creates(fresh_server):
    srv = fresh_server()
    c = srv.client()
    ids = []
    errors = []
    lock = threading.Lock()

    def worker(n):
        for i in range(5):
            r = c.post("/v1/sessions", {"title": "p%d-%d" % (n, i)})
            with lock:
                if r.status_code == 201:
                    ids.append(r.json()["id"])
                else:
                    errors.append((r.status_code, r.text[:200]))

    threads = [threading.Thread(target=worker, args=(n,)) for n in range(20)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert not errors, errors[:5]
    assert len(ids) == 100 and len(set(ids)) == 100
    assert expect(c.get("/v1/sessions/stats"), 200).json()["total"] == 100
    lst = expect(c.get("/v1/sessions", params={"limit": 100}), 200).json()
    assert lst["total"] == 100 and {s["id"] for s in lst["data"]} == set(ids)


def test_expect_100_continue(server):
    """curl sends `Expect: 100-continue` for larger bodies."""
    from conftest import raw_connect, read_raw_response
    import time as _t
    body = json.dumps({"title": "continue", "system_prompt": "x" * 4000}).encode()
    head = (b"POST /v1/sessions HTTP/1.1\r\nHost: x\r\nAuthorization: %s\r\n"
            b"Content-Type: application/json\r\nContent-Length: %d\r\nExpect: 100-continue\r\n\r\n"
            % (server.key.encode(), len(body)))
    with raw_connect(server.port) as s:
        s.sendall(head)
        interim, _buf, _ended = read_raw_response(s, _t.monotonic() + 5)
        assert interim is not None and interim.status_code == 100, interim
        s.sendall(body)
        resp, _buf, _ended = read_raw_response(s, _t.monotonic() + 5)
    assert resp is not None and resp.status_code == 201, resp
    assert json.loads(resp.content)["title"] == "continue"


def test_expect_100_continue_too_large(server):
    from conftest import raw_connect, read_raw_response
    import time as _t
    head = (b"POST /v1/sessions HTTP/1.1\r\nHost: x\r\nAuthorization: %s\r\n"
            b"Content-Type: application/json\r\nContent-Length: %d\r\nExpect: 100-continue\r\n\r\n"
            % (server.key.encode(), 50 * 1024 * 1024))
    with raw_connect(server.port) as s:
        s.sendall(head)
        resp, _buf, _ended = read_raw_response(s, _t.monotonic() + 5)
    assert resp is not None, "no answer to an oversized Expect: 100-continue request"
    assert_problem(resp, 413)


def test_idempotency_survives_restart(fresh_server):
    """The point of an Idempotency-Key is retrying after a failure: a retry
    after the server restarted still replays the first response."""
    srv = fresh_server()
    key = "idem-restart-" + uuid.uuid4().hex
    r1 = expect(srv.client().post("/v1/sessions", {"title": "once"}, headers={"Idempotency-Key": key}), 201)
    srv.restart()
    c = srv.client()
    r2 = expect(c.post("/v1/sessions", {"title": "once"}, headers={"Idempotency-Key": key}), 201)
    assert r2.headers.get("Idempotent-Replayed") == "true", r2.headers
    assert r2.json()["id"] == r1.json()["id"]
    assert expect(c.get("/v1/sessions/stats"), 200).json()["total"] == 1


def test_sigterm_finishes_inflight_writes(fresh_server):
    """SIGTERM under write load: the server exits 0, and every create that
    was answered 201 is stored after a restart."""
    import signal
    srv = fresh_server()
    c = srv.client()
    acked = []
    lock = threading.Lock()
    stop = threading.Event()
    started = threading.Barrier(9)

    def worker(n):
        started.wait()
        i = 0
        while not stop.is_set():
            try:
                r = c.post("/v1/sessions", {"title": "w%d-%d" % (n, i)}, timeout=10)
            except requests.RequestException:
                return  # the server stopped accepting
            if r.status_code == 201:
                with lock:
                    acked.append(r.json())
            elif r.status_code != 503:
                return
            i += 1

    threads = [threading.Thread(target=worker, args=(n,)) for n in range(8)]
    for t in threads:
        t.start()
    started.wait()
    deadline = time.monotonic() + 10
    while len(acked) < 50 and time.monotonic() < deadline:
        time.sleep(0.01)  # polling progress of the load
    assert len(acked) >= 50, "load did not start"
    rc = srv.stop(signal.SIGTERM)
    stop.set()
    for t in threads:
        t.join(30)
    assert rc == 0, srv.stderr_tail()
    srv.start()
    c = srv.client()
    for s in acked:
        got = expect(c.get("/v1/sessions/" + s["id"]), 200).json()
        assert got["title"] == s["title"]
    assert expect(c.get("/v1/sessions/stats"), 200).json()["total"] >= len(acked)


def test_the_largest_body_the_bound_allows_is_served(fresh_server, tmp_path):
    """--max-body is bounded at 16 MiB: a message of that size is taken,
    stored and listed, and the server stays up (with the old 64 MiB bound a
    40 MB message aborted it: a message needs about twice its size of the
    request's 64 MiB arena).  A larger --max-body is refused at start."""
    import subprocess
    from conftest import LOOPD_BIN, user_message, wait_turn_end
    bound = 16 * 1024 * 1024
    res = subprocess.run([LOOPD_BIN, "--max-body", str(bound + 1), "--data-dir", str(tmp_path)],
                         capture_output=True, timeout=10)
    assert res.returncode != 0 and b"max-body" in res.stderr, res
    srv = fresh_server(["--max-body", str(bound)])
    c = srv.client()
    sid = c.create_session()["id"]
    text = "m" * (bound - 200)
    # 16 MiB parsed, stored twice (event and message) and synced: ~15 s of
    # the suite's valgrind run alone, past the client's usual 15 s
    r = c.post("/v1/sessions/%s/messages" % sid, user_message(text), timeout=120)
    expect(r, 201)
    log = wait_turn_end(c, sid, timeout=60)
    assert log[0]["data"]["message"]["content"][0]["text"] == text
    msgs = expect(c.get("/v1/sessions/%s/messages" % sid), 200).json()
    assert msgs["data"][0]["content"][0]["text"] == text
    expect(c.get("/healthz"), 200)
