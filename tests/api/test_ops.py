"""Operations endpoints, routing errors, command line."""
import os
import re
import stat
import subprocess
import time

import requests

from conftest import (LOOPD_BIN, assert_problem, expect, loopd_env, metric_value, random_key,
                      run_loopd)


def test_healthz_needs_no_key(server):
    r = requests.get(server.base + "/healthz", timeout=5)
    expect(r, 200)


def test_readyz_needs_no_key(server):
    r = requests.get(server.base + "/readyz", timeout=5)
    expect(r, 200)


def test_metrics_prometheus_text(api):
    # Make sure at least one API request was counted.
    expect(api.get("/v1/sessions"), 200)
    r = expect(api.get("/metrics"), 200)
    assert r.headers["Content-Type"].startswith("text/plain"), r.headers
    text = r.text
    assert "loopd_http_requests_total" in text
    # Every non-comment line is `name{labels} value`.
    sample = re.compile(r'^[a-zA-Z_:][a-zA-Z0-9_:]*(\{[^}]*\})? -?[0-9.eE+-]+|[+-]Inf|NaN')
    for line in text.splitlines():
        if line and not line.startswith("#"):
            assert sample.match(line), "bad Prometheus line: %r" % line
    counted = [l for l in text.splitlines() if l.startswith("loopd_http_requests_total")]
    assert counted and any(float(l.rsplit(" ", 1)[1]) >= 1 for l in counted), counted


def test_metrics_cover_routes_latency_commits_connections(api):
    """Requests by route and status, a latency histogram, commit batch
    sizes and open connections (issue item 10)."""
    api.create_session()
    text = expect(api.get("/metrics"), 200).text
    lines = text.splitlines()
    created = [l for l in lines if l.startswith("loopd_http_requests_total{")
               and 'status="201"' in l and "route=" in l]
    assert created, "no per-route/status counter for a 201: %s" % text[:2000]
    hist = [l.split()[2] for l in lines if l.startswith("# TYPE") and l.endswith(" histogram")]
    assert any("duration" in h or "latency" in h for h in hist), hist
    assert any("batch" in h for h in hist), hist
    gauges = [l.split()[2] for l in lines if l.startswith("# TYPE") and l.endswith(" gauge")]
    assert any("connections" in g for g in gauges), gauges


def test_metrics_turns_running_gauge(fresh_server):
    """loopd_turns_running counts the turns in progress: one while a slow
    turn streams, none once it ended."""
    from conftest import open_sse, post_message, wait_turn_end
    srv = fresh_server()
    c = srv.client()
    assert metric_value(c, "loopd_turns_running") == 0
    sid = c.create_session()["id"]
    with open_sse(srv, sid) as st:
        post_message(c, sid, "slow", {"latency_ms": 1500})
        st.read_until(lambda f: f.event == "output.message.delta", 10)
        assert metric_value(c, "loopd_turns_running") == 1
        wait_turn_end(c, sid)
    assert metric_value(c, "loopd_turns_running") == 0


def test_metrics_counter_increases(api):
    def total():
        text = expect(api.get("/metrics"), 200).text
        return sum(float(l.rsplit(" ", 1)[1]) for l in text.splitlines()
                   if l.startswith("loopd_http_requests_total"))
    before = total()
    for _ in range(3):
        expect(api.get("/v1/sessions/stats"), 200)
    assert total() >= before + 3


def test_openapi_document(api):
    r = expect(api.get("/openapi.json"), 200)
    assert r.headers["Content-Type"].startswith("application/json"), r.headers
    doc = r.json()
    assert str(doc["openapi"]).startswith("3."), doc.get("openapi")
    paths = doc["paths"]
    for p in ("/v1/sessions", "/v1/sessions/{session_id}", "/v1/sessions/chat",
              "/v1/sessions/stats", "/v1/agents", "/v1/harnesses"):
        assert p in paths, "%s missing from /openapi.json paths: %s" % (p, sorted(paths))
    # Every operation this suite exercises is documented.
    norm = {(re.sub(r"\{[^}]*\}", "{}", p), m.upper()) for p, ops in paths.items() for m in ops}
    served = [("/healthz", "GET"), ("/readyz", "GET"), ("/metrics", "GET"), ("/openapi.json", "GET"),
              ("/v1/sessions", "GET"), ("/v1/sessions", "POST"), ("/v1/sessions/{}", "GET"),
              ("/v1/sessions/{}", "PATCH"), ("/v1/sessions/{}", "DELETE"), ("/v1/sessions/chat", "POST"),
              ("/v1/sessions/platform-chat", "POST"), ("/v1/sessions/stats", "GET"),
              ("/v1/sessions/{}/pin", "PUT"), ("/v1/sessions/{}/pin", "DELETE"),
              ("/v1/sessions/{}/cancel", "POST"), ("/v1/agents", "GET"), ("/v1/agents", "POST"),
              ("/v1/agents/{}", "GET"), ("/v1/agents/{}", "PUT"), ("/v1/agents/{}", "PATCH"),
              ("/v1/agents/{}", "DELETE"), ("/v1/harnesses", "GET"), ("/v1/harnesses/{}", "GET")]
    missing = [op for op in served if op not in norm]
    assert not missing, "served but undocumented: %s" % missing


def test_openapi_describes_only_served_routes(fresh_server):
    """Every (path, method) in /openapi.json is routed (never 404-route/405)."""
    srv = fresh_server()
    c = srv.client()
    doc = expect(c.get("/openapi.json"), 200).json()
    dummy = "0190000000007000800000000000abcd"
    unrouted = c.get("/v1/definitely-not-a-route-" + dummy)
    assert_problem(unrouted, 404)
    unrouted_detail = unrouted.json()["detail"].replace("/v1/definitely-not-a-route-" + dummy, "")
    checked = 0
    for path, ops in sorted(doc["paths"].items()):
        concrete = re.sub(r"\{([a-z_]*)\}", lambda m: {
            "session_id": "session_" + dummy, "agent_id": "agent_" + dummy,
            "harness_id": "harness_" + dummy}.get(m.group(1), "x-" + dummy), path)
        for method in ops:
            if method.upper() not in ("GET", "POST", "PUT", "PATCH", "DELETE"):
                continue
            r = c.request(method.upper(), concrete, data=b"", headers={"Content-Type": "application/json"})
            assert r.status_code != 405, "%s %s is documented but answers 405" % (method, concrete)
            if r.status_code == 404:
                detail = r.json().get("detail", "").replace(concrete, "")
                assert detail != unrouted_detail, \
                    "%s %s answers like an unknown route: %r" % (method, concrete, detail)
            checked += 1
    assert checked >= 10


def test_unknown_route_is_404_problem(api):
    assert_problem(api.get("/v1/nope"), 404)
    assert_problem(api.get("/nope"), 404)
    assert_problem(api.post("/v1/sessions/chat/extra", {}), 404)


def test_wrong_method_is_405_with_allow(api):
    r = api.put("/v1/sessions", {})
    assert_problem(r, 405)
    allow = {m.strip().upper() for m in r.headers.get("Allow", "").split(",")}
    assert {"GET", "POST"} <= allow, r.headers

    sid = api.create_session()["id"]
    r = api.post("/v1/sessions/" + sid, {})
    assert_problem(r, 405)
    allow = {m.strip().upper() for m in r.headers.get("Allow", "").split(",")}
    assert {"GET", "PATCH", "DELETE"} <= allow, r.headers

    r = api.request("DELETE", "/v1/sessions/stats")
    assert_problem(r, 405)
    assert "GET" in r.headers.get("Allow", "").upper()


def test_help_and_version():
    for flag in ("--help", "--version"):
        res = run_loopd(flag, timeout=10)
        assert res.returncode == 0, (flag, res)
        out = (res.stdout + res.stderr).decode()
        assert out.strip(), flag
    res = run_loopd("--help", timeout=10)
    text = (res.stdout + res.stderr).decode()
    for opt in ("--listen", "--data-dir", "--auth", "--max-body"):
        assert opt in text, "--help does not mention %s" % opt


def test_unknown_flag_fails():
    res = run_loopd("--no-such-flag", timeout=10)
    assert res.returncode == 2, res
    assert b"--no-such-flag" in res.stderr, res


def test_bad_value_names_the_flag_or_variable_as_given(tmp_path):
    """A bad value exits 2 before anything is created, and the message
    names the option the way the user gave it: --flag or LOOPD_VAR."""
    cases = (
        (("--max-body", "abc"), {}, "--max-body: 'abc' is not a whole number from 1024"),
        (("--max-body=99",), {}, "--max-body: '99' is not a whole number"),
        (("--log-level", "loud"), {}, "--log-level: 'loud' is not one of debug|info"),
        (("--listen", "a" * 300), {}, "--listen: value too long"),
        ((), {"LOOPD_MAX_BODY": "abc"}, "LOOPD_MAX_BODY: 'abc' is not a whole number"),
        ((), {"LOOPD_AUTH": "maybe"}, "LOOPD_AUTH: 'maybe' is not one of keys|none"),
    )
    for i, (args, env, words) in enumerate(cases):
        data = tmp_path / ("data%d" % i)
        res = run_loopd("--data-dir", str(data), *args, timeout=10, **env)
        err = res.stderr.decode()
        assert res.returncode == 2, (args, env, err)
        assert err.startswith("loopd: " + words), (args, env, err)
        assert not data.exists(), (args, env)


def test_bad_or_taken_listen_address_leaves_nothing_behind(tmp_path):
    """A typo in --listen, or a port another process holds, fails at once
    with a message naming it, before the data dir or a key is created."""
    import socket
    holder = socket.socket()
    holder.bind(("127.0.0.1", 0))
    holder.listen()
    taken = "127.0.0.1:%d" % holder.getsockname()[1]
    try:
        for listen, words in (("127.0.0.1:80000", "bad port"), ("nohost:9300", "not an IPv4"),
                              ("9300", "HOST:PORT"), (taken, "in use")):
            data = tmp_path / ("data-" + listen.replace(":", "_"))
            res = run_loopd("--listen", listen, "--data-dir", str(data), timeout=10)
            err = res.stderr.decode()
            assert res.returncode == 1, (listen, err)
            assert words in err and "evr_pat_" not in err, (listen, err)
            assert not data.exists(), listen
    finally:
        holder.close()


def test_admin_key_file(fresh_server):
    srv = fresh_server()
    path = os.path.join(srv.data_dir, "admin-key")
    st = os.stat(path)
    assert stat.S_IMODE(st.st_mode) == 0o600, oct(st.st_mode)
    with open(path) as fh:
        assert fh.read().strip() == srv.key


def test_restart_keeps_data_and_key(fresh_server):
    srv = fresh_server()
    c = srv.client()
    s = c.create_session({"title": "survives restart", "tags": ["a"]})
    srv.restart()
    got = expect(srv.client().get("/v1/sessions/" + s["id"]), 200).json()
    for k in ("id", "title", "tags", "created_at", "updated_at", "harness_id", "model_id",
              "workspace_id", "owner_principal_id"):
        assert got[k] == s[k], k


def test_env_variables_configure_listen(tmp_path):
    """LOOPD_* environment variables work like the flags."""
    from conftest import free_port
    port = free_port()
    env = loopd_env(LOOPD_LISTEN="127.0.0.1:%d" % port, LOOPD_DATA_DIR=str(tmp_path / "envdata"),
                    LOOPD_BOOTSTRAP_KEY=random_key(), LOOPD_AUTH="none")
    proc = subprocess.Popen([LOOPD_BIN], env=env, stdout=subprocess.DEVNULL,
                            stderr=open(str(tmp_path / "env.log"), "wb"))
    try:
        deadline = time.monotonic() + 10
        ok = False
        while time.monotonic() < deadline and proc.poll() is None:
            try:
                if requests.get("http://127.0.0.1:%d/healthz" % port, timeout=1).status_code == 200:
                    ok = True
                    break
            except requests.RequestException:
                pass
            time.sleep(0.02)
        assert ok, open(str(tmp_path / "env.log")).read()[-3000:]
        # LOOPD_AUTH=none: no key needed.
        r = requests.get("http://127.0.0.1:%d/v1/sessions" % port, timeout=5)
        expect(r, 200)
        assert os.path.exists(str(tmp_path / "envdata"))
    finally:
        if proc.poll() is None:
            proc.terminate()
        assert proc.wait(timeout=15) == 0, open(str(tmp_path / "env.log")).read()[-3000:]


def test_sigint_exits_cleanly(fresh_server):
    import signal
    srv = fresh_server()
    srv.client().create_session()
    assert srv.stop(signal.SIGINT) == 0, srv.stderr_tail()


def test_log_lines_carry_request_id(server, api):
    marker = "session_" + os.urandom(16).hex()
    assert_problem(api.get("/v1/sessions/" + marker), 404)
    deadline = time.monotonic() + 5
    line = None
    while time.monotonic() < deadline and line is None:
        for l in server.stderr_tail(200000).splitlines():
            if marker in l:
                line = l
        if line is None:
            time.sleep(0.05)  # polling the log file
    assert line, "no log line for the request"
    assert re.search(r'(rid|request_id|req_id)"?\s*[=:]\s*"?[0-9A-Za-z-]{4,}', line), line
    assert "404" in line, line


def test_connection_limit_per_ip(fresh_server):
    import socket as socketmod
    srv = fresh_server(["--max-connections-per-ip", "3"])
    from conftest import read_raw_response
    held = []
    for _ in range(3):
        s = socketmod.create_connection(("127.0.0.1", srv.port))
        held.append(s)
        # A served keep-alive request proves the connection is accepted and open.
        s.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        resp, _b, _e = read_raw_response(s, time.monotonic() + 5)
        assert resp is not None and resp.status_code == 200
    try:
        refused = False
        try:
            r = requests.get(srv.base + "/healthz", timeout=5)
            refused = r.status_code == 503
            if refused:
                assert_problem(r, 503)
        except requests.ConnectionError:
            refused = True
        assert refused, "a 4th connection from the same IP was served"
    finally:
        for s in held:
            s.close()
    # Once the held connections are closed, requests are served again.
    deadline = time.monotonic() + 5
    while True:
        try:
            if requests.get(srv.base + "/healthz", timeout=2).status_code == 200:
                break
        except requests.ConnectionError:
            pass
        assert time.monotonic() < deadline, "server did not recover after connections closed"
        time.sleep(0.05)  # polling


def test_idle_keepalive_connection_closed(fresh_server):
    from conftest import raw_connect, read_raw_response
    srv = fresh_server(["--idle-timeout", "1"])
    with raw_connect(srv.port) as s:
        s.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        resp, _buf, _ended = read_raw_response(s, time.monotonic() + 5)
        assert resp is not None and resp.status_code == 200
        start = time.monotonic()
        resp2, buf, ended = read_raw_response(s, start + 6)
        assert ended in ("eof", "reset") and not buf, (ended, buf)
        assert time.monotonic() - start < 5
