"""Agents (section 19.1) and harnesses (section 19.2)."""
import os
import secrets
import sqlite3
import uuid

import pytest

from conftest import (GENERIC_FEATURES, HARNESS_BASE, HARNESS_CHAT, HARNESS_GENERIC,
                      SCHEMA8_INSERT_TRIGGERS,
                      assert_limit_error, assert_no_nulls, assert_problem, expect, id_re, parse_ts,
                      validate)

AGENT_ID_RE = id_re("agent")


def uname(prefix="agent"):
    return "%s-%s" % (prefix, secrets.token_hex(4))


def check_agent(a, schema="WithUrls_Agent"):
    validate(a, schema)
    assert_no_nulls(a)
    assert AGENT_ID_RE.match(a["id"]), a["id"]
    for ts in ("created_at", "updated_at"):
        assert a[ts].endswith("Z"), a[ts]


# ---------------------------------------------------------------- agents

def test_create_agent(api):
    name = uname()
    r = expect(api.post("/v1/agents", {"name": name, "system_prompt": "You are helpful."}), 201)
    a = r.json()
    check_agent(a)
    assert a["name"] == name and a["system_prompt"] == "You are helpful."
    assert a["status"] == "active"
    assert a["harness_id"] == HARNESS_GENERIC
    for absent in ("archived_at", "deleted_at", "description", "display_name"):
        assert absent not in a, absent


def test_create_agent_all_fields(api):
    name = uname()
    body = {"name": name, "system_prompt": "p", "display_name": "Nice Name",
            "description": "Does things", "harness_name": "base", "tags": ["t1", "t2"],
            "max_iterations": 3, "parallel_tool_calls": True,
            "network_access": {"allowed": ["example.com"], "blocked": []},
            "initial_files": [{"path": "/workspace/a.txt", "content": "a", "encoding": "text",
                               "is_readonly": False}],
            "model": "ignored-sdk-field"}
    a = expect(api.post("/v1/agents", body), 201).json()
    check_agent(a)
    assert a["harness_id"] == HARNESS_BASE
    for k in ("display_name", "description", "tags", "max_iterations", "parallel_tool_calls",
              "network_access"):
        assert a[k] == body[k], k
    assert a["initial_files"][0]["content"] == "a"
    got = expect(api.get("/v1/agents/" + a["id"]), 200).json()
    for k in ("display_name", "description", "tags", "max_iterations", "parallel_tool_calls",
              "network_access", "harness_id", "system_prompt", "name"):
        assert got[k] == a[k], k


def test_create_agent_client_supplied_id(api):
    aid = "agent_" + uuid.uuid4().hex
    a = expect(api.post("/v1/agents", {"id": aid, "name": uname(), "system_prompt": "x"}), 201).json()
    assert a["id"] == aid
    assert expect(api.get("/v1/agents/" + aid), 200).json()["id"] == aid
    assert_problem(api.post("/v1/agents", {"id": "agent_XYZ", "name": uname(), "system_prompt": "x"}), 400)


@pytest.mark.parametrize("name", ["Bad", "a--b", "-a", "a-", "a_b", "", "a b", "ä", "a" * 65, "a.b"])
def test_agent_bad_names(api, name):
    assert_problem(api.post("/v1/agents", {"name": name, "system_prompt": "x"}), 400)


def test_agent_name_edges_ok(api):
    for name in ("a", "0", "a" * 64, "a-1-b2", "%s-x" % secrets.token_hex(8)):
        a = expect(api.post("/v1/agents", {"name": name, "system_prompt": "x"}), 201).json()
        assert a["name"] == name


def test_agent_missing_or_wrong_fields(api):
    assert_problem(api.post("/v1/agents", {"system_prompt": "x"}), 400, detail_contains="name")
    assert_problem(api.post("/v1/agents", {"name": uname()}), 400, detail_contains="system_prompt")
    assert_problem(api.post("/v1/agents", {"name": 5, "system_prompt": "x"}), 400, detail_contains="name")
    assert_problem(api.post("/v1/agents", {"name": uname(), "system_prompt": ["x"]}), 400,
                   detail_contains="system_prompt")
    assert_problem(api.post("/v1/agents", {"name": uname(), "system_prompt": "x", "tags": "t"}), 400,
                   detail_contains="tags")
    assert_problem(api.post("/v1/agents", {"name": uname(), "system_prompt": "x", "harness_name": "nope"}), 404)
    assert_problem(api.post("/v1/agents", {"name": uname(), "system_prompt": "x",
                                           "harness_id": HARNESS_GENERIC, "harness_name": "generic"}), 400)
    assert_limit_error(api.post("/v1/agents", {"name": uname(), "system_prompt": "x",
                                               "description": "d" * (10 * 1024 + 1)}), "description")


def test_agent_name_taken(api):
    name = uname()
    api.create_agent(name)
    r = api.post("/v1/agents", {"name": name, "system_prompt": "other"})
    assert_problem(r, 409, detail_contains=name)
    assert expect(api.get("/v1/agents/" + name), 200).json()["system_prompt"] == "You are helpful."


def test_get_agent_by_id_and_name(api):
    name = uname()
    a = api.create_agent(name)
    by_id = expect(api.get("/v1/agents/" + a["id"]), 200).json()
    check_agent(by_id, "WithUrls_ResourceWithCounts_Agent")
    by_name = expect(api.get("/v1/agents/" + name), 200).json()
    check_agent(by_name, "WithUrls_ResourceWithCounts_Agent")
    assert by_id == by_name
    assert by_id["session_count"] == 0
    api.create_session({"agent_id": a["id"]})
    assert expect(api.get("/v1/agents/" + name), 200).json()["session_count"] == 1
    assert_problem(api.get("/v1/agents/agent_0123456789abcdef0123456789abcdef"), 404)
    assert_problem(api.get("/v1/agents/no-such-agent-name"), 404)
    assert_problem(api.get("/v1/agents/agent_0123"), 400, detail_startswith="Invalid agent ID: ")


def test_list_agents(fresh_server):
    srv = fresh_server()
    c = srv.client()
    names = ["list-%02d" % i for i in range(5)]
    for n in names:
        c.create_agent(n)
    r = expect(c.get("/v1/agents"), 200).json()
    validate(r, "PaginatedResponse_WithUrls_ResourceWithCounts_Agent")
    assert r["agents"] == r["data"]
    assert (r["total"], r["offset"], r["limit"]) == (5, 0, 20)
    assert sorted(a["name"] for a in r["data"]) == names
    r = expect(c.get("/v1/agents", params={"limit": 2, "offset": 1}), 200).json()
    validate(r, "PaginatedResponse_WithUrls_ResourceWithCounts_Agent")
    assert len(r["data"]) == 2 and r["total"] == 5 and r["limit"] == 2
    assert "next_url" in r and "prev_url" in r
    r = expect(c.get("/v1/agents", params={"search": "LIST-03"}), 200).json()
    assert [a["name"] for a in r["data"]] == ["list-03"]
    assert_problem(c.get("/v1/agents", params={"limit": 0}), 400)
    assert_problem(c.get("/v1/agents", params={"offset": -1}), 400)


def test_patch_agent(api):
    name = uname()
    a = api.create_agent(name, display_name="Old")
    r = expect(api.patch("/v1/agents/" + a["id"], {"display_name": "New", "description": "d"}), 200)
    p = r.json()
    check_agent(p)
    assert p["display_name"] == "New" and p["description"] == "d"
    assert p["name"] == name and p["system_prompt"] == a["system_prompt"]
    assert p["id"] == a["id"] and p["created_at"] == a["created_at"]
    assert parse_ts(p["updated_at"]) > parse_ts(a["updated_at"])
    p2 = expect(api.patch("/v1/agents/" + name, {"system_prompt": "changed"}), 200).json()
    assert p2["system_prompt"] == "changed" and p2["display_name"] == "New"
    assert_problem(api.patch("/v1/agents/" + a["id"], {"name": "Bad Name"}), 400)
    assert_problem(api.patch("/v1/agents/" + a["id"], {"system_prompt": 5}), 400, detail_contains="system_prompt")
    assert_problem(api.patch("/v1/agents/agent_0123456789abcdef0123456789abcdef", {"description": "x"}), 404)
    other = api.create_agent(uname())
    assert_problem(api.patch("/v1/agents/" + other["id"], {"name": name}), 409)


def test_put_agent_upsert(api):
    name = uname("put")
    r = api.put("/v1/agents/" + name, {"name": name, "system_prompt": "v1"})
    expect(r, 201)
    a = r.json()
    check_agent(a)
    assert a["name"] == name and a["system_prompt"] == "v1"
    r2 = expect(api.put("/v1/agents/" + name, {"name": name, "system_prompt": "v2"}), 200)
    b = r2.json()
    check_agent(b)
    assert b["id"] == a["id"] and b["system_prompt"] == "v2"
    assert expect(api.get("/v1/agents/" + a["id"]), 200).json()["system_prompt"] == "v2"
    # By id, with a client-chosen id.
    aid = "agent_" + uuid.uuid4().hex
    n2 = uname("put")
    c = expect(api.put("/v1/agents/" + aid, {"name": n2, "system_prompt": "x"}), 201).json()
    assert c["id"] == aid and c["name"] == n2
    d = expect(api.put("/v1/agents/" + aid, {"name": n2, "system_prompt": "y"}), 200).json()
    assert d["id"] == aid and d["system_prompt"] == "y"
    n3 = uname("put")
    assert_problem(api.put("/v1/agents/" + n3, {"name": n3}), 400, detail_contains="system_prompt")
    assert_problem(api.get("/v1/agents/" + n3), 404)


def test_delete_agent_archives(api):
    name = uname("del")
    a = api.create_agent(name)
    r = expect(api.delete("/v1/agents/" + a["id"]), 204)
    assert r.content == b""
    got = expect(api.get("/v1/agents/" + a["id"]), 200).json()
    validate(got, "WithUrls_ResourceWithCounts_Agent")
    assert got["status"] == "archived"
    lst = expect(api.get("/v1/agents", params={"search": name}), 200).json()
    assert lst["total"] == 0
    lst = expect(api.get("/v1/agents", params={"search": name, "include_archived": "true"}), 200).json()
    assert [x["id"] for x in lst["data"]] == [a["id"]]
    # An archived agent cannot start sessions.
    assert_problem(api.post("/v1/sessions", {"agent_id": a["id"]}), 400)
    assert_problem(api.delete("/v1/agents/agent_0123456789abcdef0123456789abcdef"), 404)
    assert_problem(api.delete("/v1/agents/agent_bad"), 400, detail_startswith="Invalid agent ID: ")


def test_session_with_agent(server, api):
    name = uname("sess")
    a = api.create_agent(name, harness_name="base")
    s = api.create_session({"agent_id": a["id"], "title": "with agent"})
    assert s["agent_id"] == a["id"]
    assert s["harness_id"] == HARNESS_BASE  # inherited from the agent
    assert "features" not in s
    s2 = api.create_session({"agent_name": name})
    assert s2["agent_id"] == a["id"] and s2["harness_id"] == HARNESS_BASE
    # An explicit harness wins over the agent's.
    s3 = api.create_session({"agent_id": a["id"], "harness_name": "generic"})
    assert s3["harness_id"] == HARNESS_GENERIC
    assert set(s3["features"]) == GENERIC_FEATURES
    # The session keeps its agent across a PATCH.
    p = expect(api.patch("/v1/sessions/" + s["id"], {"title": "x"}), 200).json()
    assert p["agent_id"] == a["id"]


def test_idempotency_key_agents(api):
    key = "idem-agent-" + uuid.uuid4().hex
    name = uname("idem")
    body = {"name": name, "system_prompt": "x"}
    r1 = expect(api.post("/v1/agents", body, headers={"Idempotency-Key": key}), 201)
    r2 = expect(api.post("/v1/agents", body, headers={"Idempotency-Key": key}), 201)
    assert r2.headers.get("Idempotent-Replayed") == "true", r2.headers
    assert r2.json() == r1.json()
    assert_problem(api.post("/v1/agents", dict(body, system_prompt="y"), headers={"Idempotency-Key": key}), 422)
    # Without the key, the same body conflicts on the name.
    assert_problem(api.post("/v1/agents", body), 409)


# ---------------------------------------------------------------- harnesses

def test_list_harnesses(server, api):
    r = expect(api.get("/v1/harnesses"), 200).json()
    validate(r, "ListResponse_WithUrls_ResourceWithCounts_Harness")
    by_name = {h["name"]: h for h in r["data"]}
    assert by_name["base"]["id"] == HARNESS_BASE
    assert by_name["generic"]["id"] == HARNESS_GENERIC
    assert by_name["platform-chat"]["id"] == HARNESS_CHAT
    for n in ("base", "generic", "platform-chat"):
        h = by_name[n]
        assert h["status"] == "active"
        assert h.get("is_built_in") is True
        assert_no_nulls(h)
    assert by_name["platform-chat"].get("parent_harness_id") == HARNESS_GENERIC


def test_get_harness(api):
    for hid, name in ((HARNESS_BASE, "base"), (HARNESS_GENERIC, "generic"), (HARNESS_CHAT, "platform-chat")):
        a = expect(api.get("/v1/harnesses/" + hid), 200).json()
        validate(a, "WithUrls_ResourceWithCounts_Harness")
        b = expect(api.get("/v1/harnesses/" + name), 200).json()
        validate(b, "WithUrls_ResourceWithCounts_Harness")
        assert a["id"] == b["id"] == hid and a["name"] == name
    assert_problem(api.get("/v1/harnesses/harness_0123456789abcdef0123456789abcdef"), 404)
    assert_problem(api.get("/v1/harnesses/no-such-harness"), 404)


def test_harnesses_per_org(api, org2):
    c2 = org2["client"]
    r = expect(c2.get("/v1/harnesses"), 200).json()
    validate(r, "ListResponse_WithUrls_ResourceWithCounts_Harness")
    names = {h["name"] for h in r["data"]}
    assert {"base", "generic", "platform-chat"} <= names
    s = c2.create_session()
    assert s["harness_id"] == {h["name"]: h["id"] for h in r["data"]}["generic"]
    assert set(s["features"]) == GENERIC_FEATURES


def test_session_counts_of_harnesses_and_agents(fresh_server):
    """session_count follows creates and deletes, survives a restart, and is
    rebuilt from the sessions when the counters are made (migration 4)."""
    srv = fresh_server()
    c = srv.client()

    def counts():
        listed = {h["id"]: h["session_count"] for h in expect(c.get("/v1/harnesses"), 200).json()["data"]}
        for hid in (HARNESS_GENERIC, HARNESS_CHAT):
            one = expect(c.get("/v1/harnesses/" + hid), 200).json()
            validate(one, "WithUrls_ResourceWithCounts_Harness")
            assert one["session_count"] == listed[hid]
        agent = expect(c.get("/v1/agents/" + a["id"]), 200).json()
        in_list = [x for x in expect(c.get("/v1/agents"), 200).json()["data"] if x["id"] == a["id"]]
        assert in_list[0]["session_count"] == agent["session_count"]
        return listed[HARNESS_GENERIC], listed[HARNESS_CHAT], agent["session_count"]

    a = c.create_agent(uname())
    assert counts() == (0, 0, 0)
    plain = [c.create_session() for _ in range(3)]
    c.create_session({"agent_id": a["id"]})
    c.create_session({"agent_id": a["id"]})
    expect(c.post("/v1/sessions/chat", {}), 200)
    assert counts() == (5, 1, 2)
    expect(c.delete("/v1/sessions/" + plain[0]["id"]), 204)
    assert counts() == (4, 1, 2)

    srv.restart()
    c = srv.client()
    assert counts() == (4, 1, 2)

    # an older database: no counters yet; they are built from what is stored
    srv.stop_clean()
    db = sqlite3.connect(os.path.join(srv.data_dir, "loopd.db"))
    db.executescript(SCHEMA8_INSERT_TRIGGERS +
                     " DROP TRIGGER sessions_ai_resources; DROP TRIGGER sessions_ad_resources;"
                     " DROP TABLE resource_session_counts;"
                     # and what later migrations added: a real schema-3 database
                     " DROP INDEX events_id; ALTER TABLE sessions DROP COLUMN events_total;"
                     " PRAGMA user_version = 3;")
    db.close()
    srv.start()
    c = srv.client()
    assert counts() == (4, 1, 2)
    # and the upgraded database keeps counting: creates and deletes after it
    c.create_session({"agent_id": a["id"]})
    expect(c.delete("/v1/sessions/" + plain[1]["id"]), 204)
    assert counts() == (4, 1, 3)
    st = expect(c.get("/v1/sessions/stats"), 200).json()
    assert st["total"] == expect(c.get("/v1/sessions"), 200).json()["total"] == 5
