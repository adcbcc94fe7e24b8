"""POST /v1/sessions/chat: the per-user global chat singleton."""
import json
import threading

import pytest

from conftest import HARNESS_CHAT, UUID_RE, assert_problem, expect, validate


def chat(c, **kw):
    r = expect(c.post("/v1/sessions/chat", **kw), 200)
    s = r.json()
    validate(s, "WithUrls_Session")
    return s


def test_chat_singleton(fresh_server):
    srv = fresh_server()
    c = srv.client()
    first = chat(c)
    assert first["harness_id"] == HARNESS_CHAT
    assert first["title"] == "platform-chat"
    assert first["status"] == "started"
    assert len(first["tags"]) == 2 and first["tags"][0] == "global-chat"
    assert first["tags"][1].startswith("user:")
    assert UUID_RE.match(first["tags"][1][len("user:"):]), first["tags"]
    assert first.get("source", "chat") == "chat"
    assert first["self_url"] == "%s/v1/sessions/%s" % (srv.base, first["id"])
    # platform-chat inherits generic's capabilities.
    assert {"file_system", "secrets", "key_value"} <= set(first.get("features", []))

    # Every later call (any accepted body form) returns the same session.
    for kw in ({}, {"json_body": None}, {"json_body": {}}, {"json_body": {"locale": "uk-UA"}},
               {"data": b"", "headers": {"Content-Type": "application/json"}},
               {"data": b"null", "headers": {"Content-Type": "application/json"}}):
        again = chat(c, **kw)
        assert again["id"] == first["id"], kw
    alias = expect(c.post("/v1/sessions/platform-chat"), 200).json()
    validate(alias, "WithUrls_Session")
    assert alias["id"] == first["id"]

    # It is an ordinary session otherwise: GET works and the list holds one.
    got = expect(c.get("/v1/sessions/" + first["id"]), 200).json()
    assert got["tags"] == first["tags"]
    lst = expect(c.get("/v1/sessions", params={"limit": 100}), 200).json()
    assert lst["total"] == 1 and lst["data"][0]["id"] == first["id"]


def test_chat_locale_only_on_create(fresh_server):
    srv = fresh_server()
    c = srv.client()
    s = chat(c, json_body={"locale": "uk_UA"})
    assert s["locale"] == "uk-UA"
    s2 = chat(c, json_body={"locale": "en-US"})
    assert s2["id"] == s["id"] and s2["locale"] == "uk-UA"


def test_chat_bad_bodies(fresh_server):
    srv = fresh_server()
    c = srv.client()
    assert_problem(c.post("/v1/sessions/chat", {"locale": "x" * 65}), 400)
    assert_problem(c.post("/v1/sessions/chat", {"locale": 5}), 400, detail_contains="locale")
    assert_problem(c.post("/v1/sessions/chat", data=b"[1]", headers={"Content-Type": "application/json"}), 400)
    assert_problem(c.post("/v1/sessions/chat", data=b"{", headers={"Content-Type": "application/json"}), 400)
    # Nothing was created by the failed calls.
    assert expect(c.get("/v1/sessions"), 200).json()["total"] == 0


def test_chat_per_user_and_org(fresh_server):
    srv = fresh_server()
    c1 = srv.client()
    info = srv.new_org()
    c2 = srv.client(key=info["key"])
    s1 = chat(c1)
    s2 = chat(c2)
    assert s1["id"] != s2["id"]
    assert s2["organization_id"] == info["org_id"]
    assert s2["tags"] == ["global-chat", "user:" + info["user_id"]]
    h = expect(c2.get("/v1/harnesses/platform-chat"), 200).json()
    assert s2["harness_id"] == h["id"]
    assert chat(c2)["id"] == s2["id"]
    assert chat(c1)["id"] == s1["id"]


def test_chat_renamed_stays_singleton(fresh_server):
    """Renaming the chat session keeps it the user's singleton."""
    srv = fresh_server()
    c = srv.client()
    s = chat(c)
    expect(c.patch("/v1/sessions/" + s["id"], {"title": "renamed"}), 200)
    again = chat(c)
    assert again["id"] == s["id"] and again["title"] == "renamed"


def test_chat_race_50_first_calls(fresh_server):
    srv = fresh_server()
    c = srv.client()
    n = 50
    barrier = threading.Barrier(n)
    results = []
    lock = threading.Lock()

    def worker():
        barrier.wait()
        try:
            r = c.post("/v1/sessions/chat", timeout=30)
            res = (r.status_code, r.json().get("id"))
        except Exception as exc:  # noqa: BLE001 - recorded and asserted below
            res = ("error", repr(exc))
        with lock:
            results.append(res)

    threads = [threading.Thread(target=worker) for _ in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert len(results) == n
    assert all(code == 200 for code, _ in results), results
    ids = {sid for _, sid in results}
    assert len(ids) == 1, ids
    lst = expect(c.get("/v1/sessions", params={"limit": 100}), 200).json()
    assert lst["total"] == 1, lst
    assert expect(c.get("/v1/sessions/stats"), 200).json()["total"] == 1
    # After a restart the same singleton is returned.
    srv.restart()
    assert chat(srv.client())["id"] == ids.pop()


def test_chat_deleted_then_recreated(fresh_server):
    srv = fresh_server()
    c = srv.client()
    s = chat(c)
    expect(c.delete("/v1/sessions/" + s["id"]), 204)
    s2 = chat(c)
    assert s2["id"] != s["id"]
    assert chat(c)["id"] == s2["id"]


def test_chat_is_per_user_not_per_key(fresh_server):
    """A second key of the same user (same org) reaches the same chat."""
    srv = fresh_server()
    res = srv.cli("keys", "create", "--org", "org_00000000000000000000000000000001")
    info = json.loads(res.stdout.decode().strip().splitlines()[0])
    s1 = chat(srv.client())
    s2 = chat(srv.client(key=info["key"]))
    assert s1["id"] == s2["id"]


def test_upgrade_moves_the_singleton_key_to_a_partial_index(fresh_server):
    """Schema 11 rebuilds the sessions table so that only chat sessions have
    an entry for their singleton key.  A schema-10 database (the key a
    UNIQUE column) upgrades at start with a log line and keeps every
    session as it was, the chat singleton stays one per user, and the
    rebuilt table's indexes and triggers all work: pins, deletes with their
    events, counts."""
    import os
    import sqlite3
    from conftest import post_message, schema10_sessions_sql, wait_turn_end
    srv = fresh_server()
    c = srv.client()
    the_chat = chat(c)
    a = c.create_agent("upgrade-agent")
    plain = [c.create_session({"title": "plain %d" % i, "tags": ["t%d" % i]}) for i in range(3)]
    with_agent = c.create_session({"agent_id": a["id"]})
    expect(c.put("/v1/sessions/%s/pin" % plain[0]["id"]), 204)
    post_message(c, plain[1]["id"], "before the upgrade")
    wait_turn_end(c, plain[1]["id"], 1)
    ids = [the_chat["id"], with_agent["id"]] + [s["id"] for s in plain]
    before = {sid: expect(c.get("/v1/sessions/" + sid), 200).json() for sid in ids}
    listed = expect(c.get("/v1/sessions", params={"limit": 100}), 200).json()["data"]
    stats = expect(c.get("/v1/sessions/stats"), 200).json()
    old_base = srv.base
    srv.stop_clean()

    # the sessions table as schema 10 had it: singleton_key UNIQUE
    path = os.path.join(srv.data_dir, "loopd.db")
    db = sqlite3.connect(path)
    db.executescript(schema10_sessions_sql(db) +
        " PRAGMA user_version = 10;")
    assert db.execute("SELECT count(*) FROM pragma_index_list('sessions') WHERE origin = 'u'").fetchone()[0] == 2
    db.close()

    srv.start()
    c = srv.client()
    assert "migrating the database schema" in srv.stderr_tail()

    def same(x):  # the bodies' URLs name the address the server listens on
        return json.loads(json.dumps(x).replace(old_base, srv.base))
    assert {sid: expect(c.get("/v1/sessions/" + sid), 200).json() for sid in ids} == same(before)
    assert expect(c.get("/v1/sessions", params={"limit": 100}), 200).json()["data"] == same(listed)
    assert expect(c.get("/v1/sessions/stats"), 200).json() == stats
    assert chat(c)["id"] == the_chat["id"]
    # the triggers of the rebuilt table: a delete takes its events and pin
    # along and the counts follow; a new session counts too
    expect(c.delete("/v1/sessions/" + plain[1]["id"]), 204)
    expect(c.delete("/v1/sessions/" + plain[0]["id"]), 204)
    c.create_session()
    assert expect(c.get("/v1/sessions/stats"), 200).json()["total"] == stats["total"] - 1
    h = expect(c.get("/v1/harnesses/" + HARNESS_CHAT), 200).json()
    assert h["session_count"] == 1
    srv.stop_clean()

    db = sqlite3.connect(path)
    assert db.execute("PRAGMA user_version").fetchone()[0] >= 11
    assert db.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    # one unique index left from a constraint (id); the key's is partial and
    # holds the chat session only
    assert db.execute("SELECT count(*) FROM pragma_index_list('sessions') WHERE origin = 'u'").fetchone()[0] == 1
    assert db.execute("SELECT partial FROM pragma_index_list('sessions')"
                      " WHERE name = 'sessions_singleton'").fetchone()[0] == 1
    plan = " ".join(r[3] for r in db.execute(
        "EXPLAIN QUERY PLAN SELECT 1 FROM sessions WHERE singleton_key = ?", ("x",)))
    assert "sessions_singleton" in plan, plan
    key = db.execute("SELECT singleton_key FROM sessions WHERE id = ?", (the_chat["id"],)).fetchone()[0]
    assert key
    with pytest.raises(sqlite3.IntegrityError, match="UNIQUE"):
        db.execute("UPDATE sessions SET singleton_key = ? WHERE id = ?", (key, with_agent["id"]))
    for table in ("events", "pins"):
        assert db.execute("SELECT count(*) FROM %s WHERE session_id IN (?, ?)" % table,
                          (plain[0]["id"], plain[1]["id"])).fetchone()[0] == 0
    db.close()
