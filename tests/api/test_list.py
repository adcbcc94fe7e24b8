"""GET /v1/sessions: envelope, pagination links, filters, ordering.

Uses its own server so that totals are exact."""
from datetime import timedelta
from urllib.parse import parse_qs, urlsplit

import pytest

from conftest import assert_problem, expect, parse_ts, start_server, validate

N_ALPHA = 15   # titles "Alpha <i>"
N_BETA = 10    # titles "beta <i>", created with an agent


@pytest.fixture(scope="module")
def lsrv(_binary_exists):
    srv = start_server()
    c = srv.client()
    agent = c.create_agent("lister")
    created = []
    for i in range(N_ALPHA):
        created.append(c.create_session({"title": "Alpha %d" % i}))
    for i in range(N_BETA):
        created.append(c.create_session({"title": "beta %d" % i, "agent_id": agent["id"]}))
    srv.created = created
    srv.agent = agent
    yield srv
    srv.stop_clean()


def query(url):
    return {k: v[0] for k, v in parse_qs(urlsplit(url).query).items()}


def listing(c, **params):
    r = expect(c.get("/v1/sessions", params=params), 200)
    body = r.json()
    validate(body, "PaginatedResponse_WithUrls_Session")
    assert body["sessions"] == body["data"], "sessions must alias data"
    return body


def test_default_page(lsrv):
    c = lsrv.client()
    b = listing(c)
    total = N_ALPHA + N_BETA
    assert (b["total"], b["offset"], b["limit"]) == (total, 0, 20)
    assert len(b["data"]) == 20
    # Newest first.
    expected = [s["id"] for s in reversed(lsrv.created)]
    assert [s["id"] for s in b["data"]] == expected[:20]
    stamps = [parse_ts(s["created_at"]) for s in b["data"]]
    assert stamps == sorted(stamps, reverse=True)
    assert "prev_url" not in b
    nxt = b["next_url"]
    assert nxt.startswith(lsrv.base + "/v1/sessions?"), nxt
    assert urlsplit(nxt).path == "/v1/sessions"
    q = query(nxt)
    assert q["offset"] == "20" and q.get("limit", "20") == "20"
    # Following next_url gives the rest.
    r = expect(c.get(nxt), 200).json()
    assert [s["id"] for s in r["data"]] == expected[20:]
    assert r["offset"] == 20 and "next_url" not in r
    assert query(r["prev_url"])["offset"] == "0"
    # Every item is a full session with URLs.
    for s in b["data"]:
        assert s["self_url"] == "%s/v1/sessions/%s" % (lsrv.base, s["id"])


def test_offset_limit(lsrv):
    c = lsrv.client()
    expected = [s["id"] for s in reversed(lsrv.created)]
    b = listing(c, offset=5, limit=7)
    assert (b["offset"], b["limit"]) == (5, 7)
    assert [s["id"] for s in b["data"]] == expected[5:12]
    assert query(b["next_url"])["offset"] == "12" and query(b["next_url"])["limit"] == "7"
    assert query(b["prev_url"])["offset"] == "0"
    b = listing(c, offset=3, limit=2)
    assert query(b["prev_url"])["offset"] == "1"
    b = listing(c, offset=1000)
    assert b["data"] == [] and b["total"] == N_ALPHA + N_BETA and "next_url" not in b
    b = listing(c, limit=100)
    assert len(b["data"]) == N_ALPHA + N_BETA and "next_url" not in b
    b = listing(c, limit=1000)
    assert b["limit"] == 100 and len(b["data"]) == N_ALPHA + N_BETA


@pytest.mark.parametrize("params", [{"limit": 0}, {"limit": -1}, {"offset": -1}, {"limit": "abc"},
                                    {"offset": "1x"}, {"limit": "1e3"}, {"limit": "2.5"},
                                    {"offset": 1000000001}, {"offset": 2**63 - 1}])
def test_bad_pagination(lsrv, params):
    r = lsrv.client().get("/v1/sessions", params=params)
    assert_problem(r, 400)
    # the detail names the accepted range, the upper bound included
    word = "offset" if "offset" in params else "limit"
    assert r.json()["detail"].startswith(word + ": must be a whole number from "), r.json()


def test_search_case_insensitive(lsrv):
    c = lsrv.client()
    b = listing(c, search="ALPHA")
    assert b["total"] == N_ALPHA
    assert all(s["title"].startswith("Alpha") for s in b["data"])
    b = listing(c, search="a 1")  # "Alpha 1", "Alpha 10".."Alpha 14", "beta 1"
    titles = sorted(s["title"] for s in b["data"])
    assert titles == sorted(["Alpha 1"] + ["Alpha %d" % i for i in range(10, 15)] + ["beta 1"])
    assert listing(c, search="no such title")["total"] == 0
    # next_url keeps the other query parameters.
    b = listing(c, search="alpha", limit=5)
    q = query(b["next_url"])
    assert q["search"] == "alpha" and q["offset"] == "5" and q["limit"] == "5"
    # SQL LIKE wildcards are matched literally.
    assert listing(c, search="%")["total"] == 0
    assert listing(c, search="_")["total"] == 0


def test_filter_agent_id(lsrv):
    c = lsrv.client()
    b = listing(c, agent_id=lsrv.agent["id"], limit=100)
    assert b["total"] == N_BETA
    assert all(s["agent_id"] == lsrv.agent["id"] for s in b["data"])
    b = listing(c, agent_id="agent_0123456789abcdef0123456789abcdef")
    assert b["total"] == 0 and b["data"] == []
    # a malformed ID (a name, another kind, bad hex) is a 400, as in a path
    for bad in ("agent_x", lsrv.agent["name"], "session_0123456789abcdef0123456789abcdef",
                "agent_0123456789ABCDEF0123456789ABCDEF"):
        assert_problem(c.get("/v1/sessions", params={"agent_id": bad}), 400,
                       detail_startswith="agent_id: Invalid agent ID: ")


def test_filter_status(lsrv):
    c = lsrv.client()
    total = N_ALPHA + N_BETA
    assert listing(c, status="started")["total"] == total
    assert listing(c, status="active")["total"] == 0
    assert listing(c, status="idle")["total"] == 0
    assert listing(c, status="running")["total"] == 0
    assert listing(c, status="waiting_for_tool_results")["total"] == 0
    assert listing(c, status="waitingfortoolresults")["total"] == 0
    assert listing(c, status="started,idle")["total"] == total
    for bad in ("bogus", "started,bogus"):
        assert_problem(c.get("/v1/sessions", params={"status": bad}), 400)


def test_filter_created_range(lsrv):
    c = lsrv.client()
    total = N_ALPHA + N_BETA
    assert listing(c, created_after="2000-01-01T00:00:00Z")["total"] == total
    assert listing(c, created_after="2999-01-01T00:00:00Z")["total"] == 0
    assert listing(c, created_before="2000-01-01T00:00:00Z")["total"] == 0
    assert listing(c, created_before="2999-01-01T00:00:00+02:00")["total"] == total
    # Split at the 10th session: inclusive or exclusive at the boundary,
    # but everything strictly after/before must be on the right side.
    pivot = lsrv.created[9]["created_at"]
    pt = parse_ts(pivot)
    after = {s["id"] for s in listing(c, created_after=pivot, limit=100)["data"]}
    before = {s["id"] for s in listing(c, created_before=pivot, limit=100)["data"]}
    for s in lsrv.created:
        t = parse_ts(s["created_at"])
        if t > pt:
            assert s["id"] in after and s["id"] not in before
        elif t < pt:
            assert s["id"] in before and s["id"] not in after
    # Offsets other than Z are honoured.
    shifted = (pt + timedelta(hours=2)).strftime("%Y-%m-%dT%H:%M:%S.%f") + "+02:00"
    after2 = {s["id"] for s in listing(c, created_after=shifted, limit=100)["data"]}
    assert after2 == after
    for bad in ("yesterday", "2024-13-01T00:00:00Z", "2024-01-01", "1700000000"):
        assert_problem(c.get("/v1/sessions", params={"created_after": bad}), 400)
        assert_problem(c.get("/v1/sessions", params={"created_before": bad}), 400)


def test_order(lsrv):
    c = lsrv.client()
    a = listing(c, order="created_at", limit=100)
    assert [s["id"] for s in a["data"]] == [s["id"] for s in reversed(lsrv.created)]
    b = listing(c, order="last_activity", limit=100)
    assert sorted(s["id"] for s in b["data"]) == sorted(s["id"] for s in lsrv.created)
    assert_problem(c.get("/v1/sessions", params={"order": "title"}), 400)


def test_list_reflects_patch_and_delete(lsrv):
    c = lsrv.client()
    s = c.create_session({"title": "gamma one"})
    expect(c.patch("/v1/sessions/" + s["id"], {"title": "gamma two"}), 200)
    b = listing(c, search="gamma")
    assert [x["title"] for x in b["data"]] == ["gamma two"]
    expect(c.delete("/v1/sessions/" + s["id"]), 204)
    assert listing(c, search="gamma")["total"] == 0
    assert listing(c)["total"] == N_ALPHA + N_BETA


def test_unknown_query_parameters_ignored(lsrv):
    c = lsrv.client()
    assert listing(c, foo="bar", limit=100)["total"] == N_ALPHA + N_BETA


def test_search_unicode_and_quotes(lsrv):
    c = lsrv.client()
    a = c.create_session({"title": "Ünïcødé \"quoted\" it's"})
    try:
        assert [s["id"] for s in listing(c, search="Ünïcødé")["data"]] == [a["id"]]
        assert [s["id"] for s in listing(c, search="\"quoted\" it's")["data"]] == [a["id"]]
    finally:
        expect(c.delete("/v1/sessions/" + a["id"]), 204)


def test_pinned_filter_lists_the_callers_pinned_sessions(fresh_server):
    srv = fresh_server()
    c = srv.client()
    ids = [c.create_session({"title": "p%d" % i})["id"] for i in range(4)]
    for sid in ids[:2]:
        assert c.put("/v1/sessions/%s/pin" % sid).status_code == 204
    got = c.get("/v1/sessions", params={"pinned": "true"}).json()
    assert {s["id"] for s in got["data"]} == set(ids[:2]) and got["total"] == 2
    assert all(s["is_pinned"] for s in got["data"])
    rest = c.get("/v1/sessions", params={"pinned": "false"}).json()
    assert {s["id"] for s in rest["data"]} == set(ids[2:]) and rest["total"] == 2
    r = c.get("/v1/sessions", params={"pinned": "yes"})
    assert r.status_code == 400 and "pinned" in r.json()["detail"]


def test_pages_of_megabyte_sessions_and_agents_are_streamed(fresh_server):
    """Sessions and agents may carry a 1 MiB system prompt, and a page holds
    up to 100 of them.  Built at once, 17 such sessions were a 500 (past the
    16 MiB answer) and 65 crashed loopd (past the request's 64 MiB arena).
    Past 4 MiB a page is streamed, an item at a time; both arrays and the
    links are as for a small page."""
    srv = fresh_server()
    c = srv.client()
    prompt = "p" * ((1 << 20) - 16)
    ids = [c.create_session({"system_prompt": prompt, "title": "big %d" % i})["id"] for i in range(66)]
    r = expect(c.get("/v1/sessions", params={"limit": 100}), 200)
    assert r.headers.get("Transfer-Encoding") == "chunked"
    page = r.json()
    assert page["data"] == page["sessions"]
    assert [s["id"] for s in page["data"]] == ids[::-1]
    assert all(s["system_prompt"] == prompt for s in page["data"])
    assert (page["total"], page["offset"], page["limit"]) == (66, 0, 100)
    validate(page, "PaginatedResponse_WithUrls_Session")
    r = expect(c.get("/v1/sessions", params={"limit": 50, "offset": 10}), 200)
    page = r.json()
    assert [s["id"] for s in page["data"]] == ids[::-1][10:60]
    assert "offset=60" in page["next_url"] and "offset=0" in page["prev_url"]
    # agents: the same, with their `agents` alias
    names = ["big-agent-%d" % i for i in range(20)]
    for n in names:
        c.create_agent(n, system_prompt=prompt)
    page = expect(c.get("/v1/agents", params={"limit": 100}), 200).json()
    assert page["data"] == page["agents"]
    assert [a["name"] for a in page["data"]] == names[::-1]
    assert all(a["system_prompt"] == prompt for a in page["data"])
    assert page["total"] == 20
    # small pages are still one buffered answer with a length
    r = expect(c.get("/v1/sessions", params={"limit": 2}), 200)
    assert "Content-Length" in r.headers and len(r.json()["sessions"]) == 2
    expect(c.get("/healthz"), 200)
