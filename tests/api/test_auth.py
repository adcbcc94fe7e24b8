"""Authentication, API keys, organizations and tenant isolation."""
import re

import pytest
import requests

from conftest import (ANON_USER, DEFAULT_ORG, HARNESS_GENERIC, assert_problem, expect,
                      random_key, run_loopd, validate, id_re)


@pytest.mark.parametrize("scheme", ["", "Bearer ", "bearer ", "BEARER ", "ApiKey ", "apikey ", "APIKEY "])
def test_accepted_auth_schemes(server, scheme):
    r = requests.get(server.base + "/v1/sessions/stats",
                     headers={"Authorization": scheme + server.key}, timeout=5)
    expect(r, 200)
    validate(r.json(), "SessionStatsResponse")


def test_missing_key_is_401(server):
    r = requests.get(server.base + "/v1/sessions", timeout=5)
    assert_problem(r, 401, detail="Authentication required")


def test_unknown_key_is_401(server):
    for value in (random_key(), "Bearer " + random_key(), "ApiKey " + random_key()):
        r = requests.get(server.base + "/v1/sessions", headers={"Authorization": value}, timeout=5)
        assert_problem(r, 401, detail="Invalid API key")


@pytest.mark.parametrize("value", ["Basic eHl6OnB3", "Basic xyz", "Digest abc", "Bearer", "Bearer ",
                                   "evr_pat_", "Token KEY"])
def test_rejected_auth_values(server, value):
    value = value.replace("KEY", server.key)
    r = requests.get(server.base + "/v1/sessions", headers={"Authorization": value}, timeout=5)
    assert_problem(r, 401)


def test_unauthenticated_write_creates_nothing(server, api):
    before = expect(api.get("/v1/sessions/stats"), 200).json()["total"]
    r = requests.post(server.base + "/v1/sessions", json={"title": "nope"}, timeout=5)
    assert_problem(r, 401)
    r = requests.post(server.base + "/v1/sessions/chat", timeout=5)
    assert_problem(r, 401)
    r = requests.post(server.base + "/v1/agents", json={"name": "nope", "system_prompt": "x"}, timeout=5)
    assert_problem(r, 401)
    assert expect(api.get("/v1/sessions/stats"), 200).json()["total"] == before


def test_default_org_and_x_org_id(api):
    s = api.create_session()
    assert s["organization_id"] == DEFAULT_ORG
    r = api.get("/v1/sessions/" + s["id"], headers={"X-Org-Id": DEFAULT_ORG})
    expect(r, 200)


@pytest.mark.parametrize("org", ["org_123", "ORG_00000000000000000000000000000001",
                                 "org_0000000000000000000000000000000G", "not-an-org",
                                 "org_0000000000000000000000000000001"])
def test_malformed_x_org_id_is_401(api, org):
    r = api.get("/v1/sessions", headers={"X-Org-Id": org})
    assert_problem(r, 401, detail="Invalid organization ID format")


def test_x_org_id_not_member_is_404(api):
    r = api.get("/v1/sessions", headers={"X-Org-Id": "org_0123456789abcdef0123456789abcdef"})
    assert_problem(r, 404, detail="Organization not found")


def test_keys_create_makes_isolated_org(server, api, org2):
    assert id_re("org").match(org2["org_id"]), org2
    assert org2["org_id"] != DEFAULT_ORG
    assert org2["key"].startswith("evr_pat_")
    c2 = org2["client"]

    # The new org starts empty and sees none of the default org's data.
    mine = api.create_session({"title": "org1 private"})
    lst = expect(c2.get("/v1/sessions", params={"search": "org1 private"}), 200).json()
    assert lst["total"] == 0 and lst["data"] == []

    theirs = c2.create_session({"title": "org2 private"})
    assert theirs["organization_id"] == org2["org_id"]
    # Org 2 uses its own generic harness, addressed by name.
    h = expect(c2.get("/v1/harnesses/generic"), 200).json()
    assert theirs["harness_id"] == h["id"]

    # Cross-org access by id answers 404 (not 403), for every verb.
    for c, sid in ((c2, mine["id"]), (api, theirs["id"])):
        assert_problem(c.get("/v1/sessions/" + sid), 404)
        assert_problem(c.patch("/v1/sessions/" + sid, {"title": "hijack"}), 404)
        assert_problem(c.put("/v1/sessions/" + sid + "/pin"), 404)
        assert_problem(c.delete("/v1/sessions/" + sid + "/pin"), 404)
        assert_problem(c.post("/v1/sessions/" + sid + "/cancel"), 404)
        assert_problem(c.delete("/v1/sessions/" + sid), 404)
    # Nothing was changed by the attempts.
    assert expect(api.get("/v1/sessions/" + mine["id"]), 200).json()["title"] == "org1 private"
    assert expect(c2.get("/v1/sessions/" + theirs["id"]), 200).json()["title"] == "org2 private"

    # Org 2's key cannot select org 1, and org 1's key cannot select org 2.
    assert_problem(c2.get("/v1/sessions", headers={"X-Org-Id": DEFAULT_ORG}), 404,
                   detail="Organization not found")
    assert_problem(api.get("/v1/sessions", headers={"X-Org-Id": org2["org_id"]}), 404,
                   detail="Organization not found")
    expect(c2.get("/v1/sessions", headers={"X-Org-Id": org2["org_id"]}), 200)


def test_cross_org_agents_invisible(api, org2):
    a = api.create_agent("org-one-agent")
    c2 = org2["client"]
    assert_problem(c2.get("/v1/agents/" + a["id"]), 404)
    assert_problem(c2.get("/v1/agents/org-one-agent"), 404)
    assert_problem(c2.post("/v1/sessions", {"agent_id": a["id"]}), 404)
    assert_problem(c2.post("/v1/sessions", {"agent_name": "org-one-agent"}), 404)
    # The same name is free in the other org.
    b = c2.create_agent("org-one-agent")
    assert b["id"] != a["id"]


def test_keys_list_and_revoke(fresh_server):
    srv = fresh_server()
    info = srv.new_org()
    keys = srv.keys_list()
    assert len(keys) == 2, keys
    by_id = {k["key_id"]: k for k in keys}
    assert info["key_id"] in by_id
    for k in keys:
        for field in ("key_id", "org_id", "prefix", "name", "created_at", "revoked"):
            assert field in k, (field, k)
        assert k["revoked"] is False
        # The full secret is never listed; the prefix identifies it.
        assert srv.key not in str(k) and info["key"] not in str(k), k
    assert info["key"].startswith(by_id[info["key_id"]]["prefix"])
    assert by_id[info["key_id"]]["org_id"] == info["org_id"]
    boot = [k for k in keys if k["key_id"] != info["key_id"]][0]
    assert boot["org_id"] == DEFAULT_ORG
    assert srv.key.startswith(boot["prefix"])

    c2 = srv.client(key=info["key"])
    c2_org = srv.client(key=info["key"], org=info["org_id"])

    def key_cache_hits():
        text = expect(srv.client().get("/metrics"), 200).text
        return int(re.search(r'^loopd_auth_cache_lookups_total\{outcome="hit"\} (\d+)$',
                             text, re.M).group(1))

    for _ in range(3):  # known to the server (its key cache) before the revocation
        expect(c2.get("/v1/sessions"), 200)
        expect(c2_org.get("/v1/sessions"), 200)
    # The cache is direct-mapped by a MAC under keys drawn at start: in one
    # start in 256 the two entries share a slot and evict each other, so
    # c2's entry is made again first (with or without the other's there).
    expect(c2.get("/v1/sessions"), 200)
    before = key_cache_hits()
    expect(c2.get("/v1/sessions"), 200)
    assert key_cache_hits() == before + 1  # that GET, from the cache (/metrics needs no key)
    srv.cli("keys", "revoke", info["key_id"])
    # refused from the first request after the command returned
    assert_problem(c2.get("/v1/sessions"), 401)
    assert_problem(c2_org.get("/v1/sessions"), 401)
    assert [k for k in srv.keys_list() if k["key_id"] == info["key_id"]][0]["revoked"] is True
    # The bootstrap key still works.
    expect(srv.client().get("/v1/sessions"), 200)


def test_keys_revoke_unknown_fails(fresh_server):
    srv = fresh_server()
    res = srv.cli("keys", "revoke", "key_0123456789abcdef0123456789abcdef", check=False)
    assert res.returncode != 0


def test_bootstrap_key_on_a_later_start(fresh_server):
    """A restart with another LOOPD_BOOTSTRAP_KEY keeps the stored key and
    adds the new one (a script can count on its key); a bootstrap key that
    was revoked stays revoked however often the server starts with it."""
    srv = fresh_server()
    first = srv.key
    srv.stop_clean()
    srv.key = random_key()
    srv.start()
    expect(srv.client(key=first).get("/v1/sessions"), 200)
    expect(srv.client().get("/v1/sessions"), 200)
    second = srv.key
    assert sorted(k["name"] for k in srv.keys_list()) == ["bootstrap", "bootstrap"]
    boot = [k for k in srv.keys_list() if second.startswith(k["prefix"])]
    assert len(boot) == 1, boot
    srv.cli("keys", "revoke", boot[0]["key_id"])
    assert_problem(srv.client(key=second).get("/v1/sessions"), 401)
    srv.stop_clean()
    srv.start()  # LOOPD_BOOTSTRAP_KEY is still the revoked key
    assert_problem(srv.client(key=second).get("/v1/sessions"), 401)
    expect(srv.client(key=first).get("/v1/sessions"), 200)
    assert len(srv.keys_list()) == 2


def test_auth_none_mode(fresh_server):
    srv = fresh_server(["--auth", "none"])
    r = requests.get(srv.base + "/v1/sessions", timeout=5)
    expect(r, 200)
    r = requests.post(srv.base + "/v1/sessions", json={}, timeout=5)
    expect(r, 201)
    s = r.json()
    validate(s, "WithUrls_Session")
    assert s["organization_id"] == DEFAULT_ORG
    assert s["harness_id"] == HARNESS_GENERIC
    r = requests.post(srv.base + "/v1/sessions/chat", timeout=5)
    expect(r, 200)
    assert r.json()["tags"] == ["global-chat", "user:" + ANON_USER]
    # A header, even an unknown one, does not matter in this mode.
    r = requests.get(srv.base + "/v1/sessions/" + s["id"], headers={"Authorization": "junk"}, timeout=5)
    expect(r, 200)
    # Pinning works for the anonymous user.
    expect(requests.put(srv.base + "/v1/sessions/%s/pin" % s["id"], timeout=5), 204)
    assert requests.get(srv.base + "/v1/sessions/" + s["id"], timeout=5).json()["is_pinned"] is True


def test_keys_commands_need_the_servers_database(tmp_path):
    """`loopd keys` against a data dir with no database (a mistyped path)
    fails and names the path; it creates no database, org or key there."""
    for args in (["create"], ["create", "--org", "new"], ["list"],
                 ["revoke", "key_0123456789abcdef0123456789abcdef"]):
        data = tmp_path / "typo"
        res = run_loopd("keys", args[0], "--data-dir", str(data), *args[1:])
        err = res.stderr.decode()
        assert res.returncode == 1, (args, res)
        assert "no loopd database in " + str(data) in err, (args, err)
        assert b"evr_pat_" not in res.stdout + res.stderr, args
        assert not data.exists(), args
    res = run_loopd("keys", "frob", "--data-dir", str(tmp_path))
    assert res.returncode == 2 and b"unknown command" in res.stderr, res


@pytest.mark.parametrize("key", ["short", "evr_pat_ with space", "x" * 201,
                                 "evr_pat_" + "\u00e9" * 8])
def test_weak_or_malformed_bootstrap_key_is_refused(tmp_path, key):
    """LOOPD_BOOTSTRAP_KEY must be a usable secret: 16 to 200 visible ASCII
    characters.  Otherwise loopd exits 1 before it creates anything."""
    data = tmp_path / "data"
    res = run_loopd("--listen", "127.0.0.1:0", "--data-dir", str(data), LOOPD_BOOTSTRAP_KEY=key)
    assert res.returncode == 1, res
    assert b"LOOPD_BOOTSTRAP_KEY must be" in res.stderr, res.stderr
    assert not data.exists()
