"""Fixtures and helpers for the loopd black-box API suite.

Run with:  /usr/bin/python3 -m pytest -q tests/api
The binary under test is $LOOPD_BIN (default <repo>/build/loopd).
"""
import json
import os
import re
import secrets
import select
import signal
import socket
import subprocess
import tempfile
import time
from datetime import datetime
from urllib.parse import urlsplit

import jsonschema
import pytest
import requests

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
LOOPD_BIN = os.path.abspath(os.environ.get("LOOPD_BIN") or os.path.join(REPO, "build", "loopd"))
SCHEMA_FILE = os.path.join(REPO, "tests", "schemas", "everruns-subset.json")

DEFAULT_ORG = "org_00000000000000000000000000000001"
ANON_USER = "00000000-0000-0000-0000-000000000001"
HARNESS_BASE = "harness_01933b5a000070008000000000000601"
HARNESS_GENERIC = "harness_01933b5a000070008000000000000602"
HARNESS_CHAT = "harness_01933b5a000070008000000000000603"

# The AFTER INSERT triggers that kept the session counts until schema 9 (the
# writer counts new sessions since).  A test that turns a database back into
# an older schema puts them back first, as such a database has them.
SCHEMA8_INSERT_TRIGGERS = (
    "CREATE TRIGGER sessions_ai AFTER INSERT ON sessions BEGIN"
    "  INSERT INTO session_counts(org_id, status, n) VALUES(new.org_id, new.status, 1)"
    "    ON CONFLICT(org_id, status) DO UPDATE SET n = n + 1;"
    " END;"
    " CREATE TRIGGER sessions_ai_resources AFTER INSERT ON sessions BEGIN"
    "  INSERT INTO resource_session_counts(resource_id, n) VALUES(new.harness_id, 1)"
    "    ON CONFLICT(resource_id) DO UPDATE SET n = n + 1;"
    "  INSERT INTO resource_session_counts(resource_id, n) SELECT new.agent_id, 1"
    "    WHERE new.agent_id IS NOT NULL ON CONFLICT(resource_id) DO UPDATE SET n = n + 1;"
    " END;")
GENERIC_FEATURES = {"file_system", "secrets", "key_value"}


def schema10_sessions_sql(db):
    """SQL that turns an open database's sessions table back into schema
    10's (singleton_key a UNIQUE column, no partial sessions_singleton
    index), its rows, other indexes and triggers kept.  Ends with ';'."""
    import re
    table = db.execute("SELECT sql FROM sqlite_schema WHERE name = 'sessions'").fetchone()[0]
    assert "singleton_key TEXT," in table, table
    others = [r[0] for r in db.execute(
        "SELECT sql FROM sqlite_schema WHERE tbl_name = 'sessions' AND type IN ('index', 'trigger')"
        " AND sql IS NOT NULL AND name <> 'sessions_singleton'")]
    return (re.sub(r'^CREATE TABLE "?sessions"?\(', "CREATE TABLE s10(", table)
              .replace("singleton_key TEXT,", "singleton_key TEXT UNIQUE,", 1) + ";"
            " INSERT INTO s10 SELECT * FROM sessions; DROP TABLE sessions;"
            " ALTER TABLE s10 RENAME TO sessions; " + "; ".join(others) + ";")

# The deadline passed as --request-timeout to servers started by the suite.
REQUEST_TIMEOUT = 2
STARTUP_DEADLINE = 10.0
STOP_DEADLINE = 15.0


def id_re(prefix):
    return re.compile(r"^%s_[0-9a-f]{32}$" % re.escape(prefix))


SESSION_ID_RE = id_re("session")
UUID_RE = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$")
RFC3339_RE = re.compile(
    r"^(\d{4})-(\d{2})-(\d{2})[Tt](\d{2}):(\d{2}):(\d{2})(\.\d+)?([Zz]|[+-]\d{2}:\d{2})$")


def parse_ts(text):
    """Parse an RFC 3339 timestamp into an aware datetime (microsecond
    precision; extra fractional digits are truncated)."""
    m = RFC3339_RE.match(text)
    assert m, "not an RFC 3339 timestamp: %r" % (text,)
    frac = (m.group(7) or ".0")[1:7].ljust(6, "0")
    tz = m.group(8)
    tz = "+00:00" if tz in ("Z", "z") else tz
    return datetime.fromisoformat("%s-%s-%sT%s:%s:%s.%s%s" % (
        m.group(1), m.group(2), m.group(3), m.group(4), m.group(5), m.group(6), frac, tz))


# --------------------------------------------------------------------------
# JSON Schema validation against tests/schemas/everruns-subset.json
# --------------------------------------------------------------------------

with open(SCHEMA_FILE, encoding="utf-8") as _fh:
    SCHEMA_DOC = json.load(_fh)

FORMATS = jsonschema.FormatChecker(formats=())


@FORMATS.checks("date-time", raises=(ValueError, AssertionError))
def _check_date_time(value):
    if not isinstance(value, str):
        return True
    parse_ts(value)
    return True


@FORMATS.checks("uuid", raises=ValueError)
def _check_uuid(value):
    if not isinstance(value, str):
        return True
    if not UUID_RE.match(value.lower()):
        raise ValueError("not a hyphenated UUID: %r" % value)
    return True


_VALIDATORS = {}


def validator_for(name):
    if name not in _VALIDATORS:
        if name not in SCHEMA_DOC["components"]["schemas"]:
            raise KeyError("schema %s is not in %s" % (name, SCHEMA_FILE))
        root = "urn:everruns-subset"
        ref = {"$ref": root + "#/components/schemas/" + name}
        try:  # jsonschema >= 4.18: the `referencing` library
            from referencing import Registry, Resource
            from referencing.jsonschema import DRAFT202012
            registry = Registry().with_resource(
                root, Resource.from_contents(SCHEMA_DOC, default_specification=DRAFT202012))
            _VALIDATORS[name] = jsonschema.Draft202012Validator(
                ref, registry=registry, format_checker=FORMATS)
        except ImportError:  # Debian 12: jsonschema 4.10 with RefResolver
            resolver = jsonschema.RefResolver(base_uri=root, referrer=SCHEMA_DOC,
                                              store={root: SCHEMA_DOC})
            _VALIDATORS[name] = jsonschema.Draft202012Validator(
                ref, resolver=resolver, format_checker=FORMATS)
    return _VALIDATORS[name]


def validate(obj, name):
    """Validate `obj` against component schema `name`; raise AssertionError
    listing every violation."""
    errors = sorted(validator_for(name).iter_errors(obj), key=lambda e: list(e.absolute_path))
    if errors:
        lines = []
        for err in errors[:20]:
            where = "/".join(str(p) for p in err.absolute_path) or "<root>"
            lines.append("  at %s: %s" % (where, err.message[:300]))
        body = json.dumps(obj)[:2000]
        raise AssertionError("response does not match schema %s:\n%s\nbody: %s"
                             % (name, "\n".join(lines), body))


# --------------------------------------------------------------------------
# HTTP helpers
# --------------------------------------------------------------------------

_MISSING = object()


class Client:
    """Minimal HTTP client.  Sends `Authorization: <key>` (bare, like the
    SDKs).  Every call opens a fresh connection, so idle-connection timeouts
    of the server can never make a request flaky."""

    def __init__(self, base, key=None, org=None):
        self.base = base.rstrip("/")
        self.key = key
        self.org = org

    def request(self, method, path, json_body=_MISSING, data=None, headers=None,
                auth=_MISSING, params=None, timeout=15):
        hdrs = {}
        key = self.key if auth is _MISSING else auth
        if key is not None:
            hdrs["Authorization"] = key
        if self.org:
            hdrs["X-Org-Id"] = self.org
        if json_body is not _MISSING:
            data = json.dumps(json_body).encode()
            hdrs["Content-Type"] = "application/json"
        if headers:
            for k, v in headers.items():
                if v is None:
                    hdrs.pop(k, None)
                else:
                    hdrs[k] = v
        url = path if path.startswith("http") else self.base + path
        return requests.request(method, url, data=data, headers=hdrs, params=params,
                                timeout=timeout, allow_redirects=False)

    def get(self, path, **kw):
        return self.request("GET", path, **kw)

    def post(self, path, json_body=_MISSING, **kw):
        return self.request("POST", path, json_body=json_body, **kw)

    def patch(self, path, json_body=_MISSING, **kw):
        return self.request("PATCH", path, json_body=json_body, **kw)

    def put(self, path, json_body=_MISSING, **kw):
        return self.request("PUT", path, json_body=json_body, **kw)

    def delete(self, path, **kw):
        return self.request("DELETE", path, **kw)

    # Convenience wrappers that assert success.
    def create_session(self, body=None, **kw):
        r = self.post("/v1/sessions", {} if body is None else body, **kw)
        expect(r, 201)
        validate(r.json(), "WithUrls_Session")
        return r.json()

    def create_agent(self, name, system_prompt="You are helpful.", **extra):
        body = {"name": name, "system_prompt": system_prompt}
        body.update(extra)
        r = self.post("/v1/agents", body)
        expect(r, 201)
        validate(r.json(), "WithUrls_Agent")
        return r.json()


def describe(resp):
    body = resp.content[:1500]
    req = getattr(resp, "request", None)
    what = "%s %s" % (req.method, req.url) if req is not None else "raw request"
    return "%s -> %d %s\nheaders: %s\nbody: %r" % (
        what, resp.status_code, getattr(resp, "reason", ""), dict(resp.headers), body)


def expect(resp, status):
    assert resp.status_code == status, "expected %d, got:\n%s" % (status, describe(resp))
    return resp


def assert_problem(resp, status, detail=None, detail_startswith=None, detail_contains=()):
    """The response is an RFC 9457 problem with the given status."""
    expect(resp, status)
    ctype = resp.headers.get("Content-Type", "")
    assert ctype.split(";")[0].strip().lower() == "application/problem+json", \
        "error content type is %r:\n%s" % (ctype, describe(resp))
    body = resp.json()
    check_problem_body(body, status)
    if detail is not None:
        assert body["detail"] == detail, describe(resp)
    if detail_startswith is not None:
        assert body["detail"].startswith(detail_startswith), describe(resp)
    if isinstance(detail_contains, str):
        detail_contains = (detail_contains,)
    for part in detail_contains:
        assert part.lower() in body["detail"].lower(), \
            "detail should mention %r:\n%s" % (part, describe(resp))
    return body


def check_problem_body(body, status):
    validate(body, "ErrorResponse")
    assert body["status"] == status, "problem status %r != HTTP %d: %r" % (body["status"], status, body)
    assert isinstance(body.get("title"), str) and body["title"], body
    assert isinstance(body.get("detail"), str) and body["detail"].strip(), body


def assert_limit_error(resp, field):
    """400 with the vague limits message or a detail naming the field."""
    body = assert_problem(resp, 400)
    assert body["detail"] == "Input exceeds allowed limits" or field in body["detail"], \
        "detail should be 'Input exceeds allowed limits' or name %r:\n%s" % (field, describe(resp))


def assert_no_nulls(obj, skip=("hints", "blueprint_config")):
    """Unset optional keys are omitted, never null (top level and actions)."""
    for k, v in obj.items():
        if k in skip:
            continue
        assert v is not None, "key %r is null in %s" % (k, json.dumps(obj)[:1500])
        if k == "allowed_actions":
            for act in v:
                for ak, av in act.items():
                    assert av is not None, "allowed_actions.%s is null: %r" % (ak, act)


# --------------------------------------------------------------------------
# Raw-socket HTTP (for cases `requests` cannot express)
# --------------------------------------------------------------------------

class RawResponse:
    def __init__(self, status, headers, body):
        self.status_code = status
        self.headers = requests.structures.CaseInsensitiveDict(headers)
        self.content = body
        self.request = None
        self.reason = ""

    @property
    def text(self):
        return self.content.decode("utf-8", "replace")

    def json(self):
        return json.loads(self.content)

    def __repr__(self):
        return "RawResponse(%d, %r, %r)" % (self.status_code, self.headers, self.content[:500])


def parse_raw_response(buf):
    """Parse the first HTTP response in `buf`; return RawResponse or None if
    incomplete."""
    head_end = buf.find(b"\r\n\r\n")
    if head_end < 0:
        return None
    head = buf[:head_end].decode("latin-1")
    lines = head.split("\r\n")
    parts = lines[0].split(" ", 2)
    status = int(parts[1])
    headers = {}
    for line in lines[1:]:
        if ":" in line:
            k, v = line.split(":", 1)
            headers[k.strip().lower()] = v.strip()
    rest = buf[head_end + 4:]
    if "content-length" in headers:
        n = int(headers["content-length"])
        if len(rest) < n:
            return None
        return RawResponse(status, headers, rest[:n])
    if headers.get("transfer-encoding", "").lower() == "chunked":
        body = b""
        pos = 0
        while True:
            eol = rest.find(b"\r\n", pos)
            if eol < 0:
                return None
            size = int(rest[pos:eol].split(b";")[0], 16)
            if size == 0:
                return RawResponse(status, headers, body)
            if len(rest) < eol + 2 + size + 2:
                return None
            body += rest[eol + 2:eol + 2 + size]
            pos = eol + 2 + size + 2
    if status in (204, 304) or 100 <= status < 200:
        return RawResponse(status, headers, b"")
    return None  # body delimited by close


def read_raw_response(sock, deadline, buf=b""):
    """Read one response until complete, EOF or reset, after the bytes
    already received in `buf`.  Returns (RawResponse or None, bytes
    received, how it ended)."""
    ended = "complete"
    while True:
        resp = parse_raw_response(buf) if buf else None
        if resp is not None:
            return resp, buf, ended
        left = deadline - time.monotonic()
        if left <= 0:
            return None, buf, "timeout"
        r, _, _ = select.select([sock], [], [], left)
        if not r:
            return None, buf, "timeout"
        try:
            chunk = sock.recv(65536)
        except (ConnectionResetError, BrokenPipeError):
            ended = "reset"
            break
        if not chunk:
            ended = "eof"
            break
        buf += chunk
    resp = parse_raw_response(buf) if buf else None
    if resp is None and buf.find(b"\r\n\r\n") >= 0:
        # Body delimited by connection close.
        head_end = buf.find(b"\r\n\r\n")
        head = buf[:head_end].decode("latin-1").split("\r\n")
        headers = {}
        for line in head[1:]:
            if ":" in line:
                k, v = line.split(":", 1)
                headers[k.strip().lower()] = v.strip()
        resp = RawResponse(int(head[0].split(" ", 2)[1]), headers, buf[head_end + 4:])
    return resp, buf, ended


def recv_until(sock, pred, timeout=10, buf=b""):
    """Receive onto `buf` until pred(buf) is true, EOF (or a reset), or the
    timeout; returns (buf, eof)."""
    deadline = time.monotonic() + timeout
    while not pred(buf):
        left = deadline - time.monotonic()
        if left <= 0:
            return buf, False
        r, _, _ = select.select([sock], [], [], left)
        if not r:
            continue
        try:
            chunk = sock.recv(65536)
        except ConnectionResetError:
            return buf, True
        if not chunk:
            return buf, True
        buf += chunk
    return buf, False


def raw_connect(port, timeout=10):
    s = socket.create_connection(("127.0.0.1", port), timeout=timeout)
    s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return s


def raw_request(port, data, timeout=10):
    """Send `data` verbatim and read one response (tolerant of a reset
    after the response)."""
    with raw_connect(port) as s:
        try:
            s.sendall(data)
        except (BrokenPipeError, ConnectionResetError):
            pass
        resp, buf, ended = read_raw_response(s, time.monotonic() + timeout)
    assert resp is not None, "no HTTP response (%s) after sending %r...; got %r" % (
        ended, data[:200], buf[:500])
    return resp


def send_streaming(port, head, total, block=b"x" * 65536, tail=b"", timeout=20):
    """Send request head, then repeat `block` until `total` bytes went out,
    stopping as soon as the server answers or closes.  Returns
    (RawResponse or None, bytes sent, how the read ended)."""
    deadline = time.monotonic() + timeout
    with raw_connect(port) as s:
        s.sendall(head)
        sent = 0
        pending = b""
        while (sent < total or pending) and time.monotonic() < deadline:
            r, w, _ = select.select([s], [s], [], max(0.0, deadline - time.monotonic()))
            if r:
                break  # the server answered early (or closed)
            if w:
                if not pending:
                    pending = block
                try:
                    n = s.send(pending)
                except (BrokenPipeError, ConnectionResetError):
                    break
                sent += n
                pending = pending[n:]
                if sent >= total and not pending:
                    try:
                        s.sendall(tail)
                    except (BrokenPipeError, ConnectionResetError):
                        pass
                    break
        resp, buf, ended = read_raw_response(s, deadline)
    return resp, sent, ended


# --------------------------------------------------------------------------
# Server process management
# --------------------------------------------------------------------------

RUNNING = []  # servers currently started by the suite


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def loopd_env(**extra):
    """os.environ without LOOPD_* (the shell running the tests must not
    configure the server under test), plus extra."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("LOOPD_")}
    env.update(extra)
    return env


def run_loopd(*args, timeout=30, **extra_env):
    """Runs `build/loopd ARGS` to its end in loopd_env(**extra_env)."""
    return subprocess.run([LOOPD_BIN] + list(args), env=loopd_env(**extra_env),
                          capture_output=True, timeout=timeout)


def random_key():
    return "evr_pat_" + secrets.token_hex(24)


class Server:
    def __init__(self, data_dir, extra_args=(), env=None, key=None):
        self.data_dir = data_dir
        self.extra_args = list(extra_args)
        self.extra_env = dict(env or {})
        self.key = key or random_key()
        self.proc = None
        self.port = None
        self.stderr_path = os.path.join(data_dir, "..", os.path.basename(data_dir) + ".stderr.log")
        self.stderr_path = os.path.abspath(self.stderr_path)
        self.expect_dead = False

    # -- lifecycle --
    def start(self):
        os.makedirs(self.data_dir, exist_ok=True)
        env = loopd_env(**{"LOOPD_BOOTSTRAP_KEY": self.key, **self.extra_env})
        last_err = ""
        for _attempt in range(3):
            self.port = free_port()
            args = [LOOPD_BIN, "--listen", "127.0.0.1:%d" % self.port,
                    "--data-dir", self.data_dir] + self.extra_args
            self._stderr = open(self.stderr_path, "ab")
            self._stderr.write(("\n=== %s\n" % " ".join(args)).encode())
            self._stderr.flush()
            self.proc = subprocess.Popen(args, env=env, stdin=subprocess.DEVNULL,
                                         stdout=self._stderr, stderr=self._stderr)
            if self._wait_ready():
                RUNNING.append(self)
                return self
            last_err = self.stderr_tail()
            if self.proc.poll() is None:
                self.proc.kill()
                self.proc.wait()
            self._stderr.close()
            if "in use" not in last_err.lower():
                break
        raise AssertionError("loopd did not become ready (exit %r):\n%s"
                             % (self.proc.returncode, last_err))

    def _wait_ready(self):
        deadline = time.monotonic() + STARTUP_DEADLINE
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                return False
            try:
                r = requests.get(self.base + "/healthz", timeout=1)
                if r.status_code == 200:
                    return True
            except requests.RequestException:
                pass
            time.sleep(0.02)  # polling interval, not synchronisation
        return False

    def stop(self, sig=signal.SIGTERM):
        """Stop the server and return its exit code."""
        if self in RUNNING:
            RUNNING.remove(self)
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout=STOP_DEADLINE)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
                self._stderr.close()
                raise AssertionError("loopd did not exit within %ss of %s:\n%s"
                                     % (STOP_DEADLINE, sig, self.stderr_tail()))
        self._stderr.close()
        return self.proc.returncode

    def stop_clean(self):
        rc = self.stop()
        assert rc == 0, "loopd exited with %r (expected 0):\n%s" % (rc, self.stderr_tail())

    def restart(self):
        self.stop_clean()
        self.start()
        return self

    def alive(self):
        return self.proc is not None and self.proc.poll() is None

    # -- helpers --
    @property
    def base(self):
        return "http://127.0.0.1:%d" % self.port

    def client(self, key=_MISSING, org=None):
        return Client(self.base, self.key if key is _MISSING else key, org)

    def stderr_tail(self, n=6000):
        try:
            with open(self.stderr_path, "rb") as fh:
                data = fh.read()
        except OSError:
            return "<no stderr>"
        return data[-n:].decode("utf-8", "replace")

    def cli(self, *args, check=True):
        """Run `loopd <args> --data-dir DIR` (keys subcommands)."""
        argv = list(args[:2]) + ["--data-dir", self.data_dir] + list(args[2:])
        res = run_loopd(*argv)
        if check:
            assert res.returncode == 0, "%s failed (%d):\nstdout: %s\nstderr: %s" % (
                argv, res.returncode, res.stdout.decode(errors="replace"),
                res.stderr.decode(errors="replace"))
        return res

    def new_org(self):
        """Create a new org with its own key: {key, org_id, user_id, key_id}."""
        res = self.cli("keys", "create", "--org", "new")
        lines = [l for l in res.stdout.decode().splitlines() if l.strip()]
        assert len(lines) == 1, "keys create should print one line, got %r" % lines
        info = json.loads(lines[0])
        for field in ("key", "org_id", "user_id", "key_id"):
            assert isinstance(info.get(field), str) and info[field], info
        return info

    def keys_list(self):
        res = self.cli("keys", "list")
        return [json.loads(l) for l in res.stdout.decode().splitlines() if l.strip()]


_tmp_root = None


def tmp_root():
    global _tmp_root
    if _tmp_root is None:
        _tmp_root = tempfile.mkdtemp(prefix="loopd-api-")
    return _tmp_root


def start_server(extra_args=(), env=None, key=None, timeout_args=True):
    data_dir = tempfile.mkdtemp(prefix="data-", dir=tmp_root())
    args = list(extra_args)
    if timeout_args and "--request-timeout" not in args:
        args += ["--request-timeout", str(REQUEST_TIMEOUT)]
    return Server(data_dir, args, env, key).start()


@pytest.fixture(scope="session", autouse=True)
def _binary_exists():
    if not os.access(LOOPD_BIN, os.X_OK):
        pytest.exit("loopd binary not found at %s (run `make` or set LOOPD_BIN)" % LOOPD_BIN, 2)


@pytest.fixture(scope="session")
def server(_binary_exists):
    """One server shared by tests that tolerate other tests' data."""
    srv = start_server()
    yield srv
    srv.stop_clean()


@pytest.fixture(scope="session")
def api(server):
    return server.client()


@pytest.fixture(scope="session")
def org2(server):
    """A second org (with its own key) on the shared server."""
    info = server.new_org()
    info["client"] = server.client(key=info["key"])
    return info


@pytest.fixture
def fresh_server(_binary_exists):
    """Factory: fresh_server(extra_args=[...], env={...}) starts a server on a
    new data dir; every server is stopped (and must exit 0) at teardown."""
    started = []

    def factory(extra_args=(), env=None, key=None, timeout_args=True):
        srv = start_server(extra_args, env, key, timeout_args)
        started.append(srv)
        return srv

    yield factory
    errors = []
    for srv in started:
        if srv.proc.poll() is None or srv in RUNNING:
            try:
                srv.stop_clean()
            except AssertionError as exc:
                errors.append(str(exc))
    assert not errors, "\n".join(errors)


@pytest.fixture(autouse=True)
def _servers_stay_alive(request):
    """Fail a test during which a running server died (crash, sanitizer)."""
    yield
    dead = [s for s in list(RUNNING) if not s.alive() and not s.expect_dead]
    for s in dead:
        RUNNING.remove(s)
    assert not dead, "loopd died during this test (exit %r):\n%s" % (
        dead[0].proc.returncode, dead[0].stderr_tail())


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    report = outcome.get_result()
    if report.failed:
        for srv in list(RUNNING):
            report.sections.append(("loopd stderr (port %s, tail)" % srv.port, srv.stderr_tail(3000)))


def url_path(url):
    return urlsplit(url).path


# --------------------------------------------------------------------------
# Turns, events and SSE (helpers for test_turns.py, test_sse.py and
# tests/durability/test_turn_crash.py)
# --------------------------------------------------------------------------

EVENT_ID_RE = id_re("event")
TURN_ID_RE = id_re("turn")
MESSAGE_ID_RE = id_re("message")
EVENT_TS_RE = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}\.\d{3}Z$")
DELTA_TYPES = ("output.message.delta",)


def user_message(text, hints=None, **extra):
    """A POST /messages body with one text part (and llmsim hints)."""
    body = {"message": {"role": "user", "content": [{"type": "text", "text": text}]}}
    if hints is not None:
        body["controls"] = {"hints": {"llmsim": hints}}
    body.update(extra)
    return body


def post_message(client, sid, text="hello", hints=None, status=201, **extra):
    """POST a user message; assert `status`; return the Message JSON."""
    r = client.post("/v1/sessions/%s/messages" % sid, user_message(text, hints, **extra))
    expect(r, status)
    return r.json()


def get_events(client, sid, params=None):
    r = expect(client.get("/v1/sessions/%s/events" % sid, params=params), 200)
    body = r.json()
    assert isinstance(body.get("data"), list), body
    return body["data"]


def metric_value(client, name):
    """The value of an unlabelled sample of GET /metrics."""
    for line in expect(client.get("/metrics"), 200).text.splitlines():
        if line.startswith(name + " "):
            return float(line.split()[1])
    raise AssertionError("%s not in /metrics" % name)


def get_session(client, sid):
    return expect(client.get("/v1/sessions/%s" % sid), 200).json()


def wait_for(pred, timeout=10.0, what="condition", interval=0.02):
    """Poll `pred()` until it returns a truthy value (returned) or the
    deadline passes (AssertionError).  Polling bounded by a deadline."""
    deadline = time.monotonic() + timeout
    last = None
    while True:
        last = pred()
        if last:
            return last
        if time.monotonic() >= deadline:
            raise AssertionError("timed out after %.1fs waiting for %s (last: %r)"
                                 % (timeout, what, last))
        time.sleep(interval)  # polling interval, not synchronisation


def wait_turn_end(client, sid, turns=1, timeout=15.0):
    """Poll the log until `turns` turns ended (session.idled count) and the
    session is idle; return the whole log."""
    def done():
        evs = get_events(client, sid)
        n = sum(1 for e in evs if e["type"] == "session.idled")
        if n >= turns and get_session(client, sid)["status"] == "idle":
            return evs
        return None
    return wait_for(done, timeout, "%d turn(s) of %s to end" % (turns, sid))


def check_log(events, sid=None):
    """A session's whole log: sequences 1..N without gaps, unique ids."""
    seqs = [e.get("sequence") for e in events]
    assert seqs == list(range(1, len(events) + 1)), "sequences not 1..N gapless: %s" % seqs
    ids = [e["id"] for e in events]
    assert len(set(ids)) == len(ids), "duplicate event ids"
    for e in events:
        assert EVENT_ID_RE.match(e["id"]), e
        assert EVENT_TS_RE.match(e["ts"]), "ts not RFC 3339 UTC with ms: %r" % e["ts"]
        if sid is not None:
            assert e["session_id"] == sid, e


class SSEFrame:
    """One dispatched SSE block: `event`, `id`, `retry`, `data` (text, or
    None) and `comments` (the comment lines without ': ')."""

    def __init__(self):
        self.event = None
        self.id = None
        self.retry = None
        self.data = None
        self.comments = []
        self.fields = []

    @property
    def is_comment(self):
        return self.event is None and self.data is None and bool(self.comments)

    def json(self):
        return json.loads(self.data)

    def __repr__(self):
        return "SSEFrame(event=%r, id=%r, retry=%r, comments=%r, data=%r)" % (
            self.event, self.id, self.retry, self.comments, (self.data or "")[:200])


class SSEStream:
    """A GET .../sse over a raw socket, read with deadlines.  Handles chunked
    and close-delimited bodies; frames are parsed per the SSE spec."""

    def __init__(self, server, path, key=_MISSING, headers=None, params=None, timeout=10.0):
        self.server = server
        key = server.key if key is _MISSING else key
        target = path
        if params:
            from urllib.parse import urlencode
            target += "?" + urlencode(params, doseq=True)
        lines = ["GET %s HTTP/1.1" % target, "Host: 127.0.0.1:%d" % server.port,
                 "Accept: text/event-stream"]
        if key is not None:
            lines.append("Authorization: %s" % key)
        for k, v in (headers or {}).items():
            lines.append("%s: %s" % (k, v))
        self.sock = raw_connect(server.port)
        self.sock.sendall(("\r\n".join(lines) + "\r\n\r\n").encode())
        self.raw = b""       # bytes after the header block, not yet de-chunked
        self.body = b""      # de-chunked body not yet parsed into frames
        self.eof = False
        self.chunked = False
        self.frames_seen = []
        self.status = None
        self.headers = {}
        self.error_body = b""
        self._read_head(time.monotonic() + timeout)

    def _recv(self, deadline):
        left = deadline - time.monotonic()
        if left <= 0:
            return False
        r, _, _ = select.select([self.sock], [], [], left)
        if not r:
            return False
        try:
            chunk = self.sock.recv(65536)
        except (ConnectionResetError, BrokenPipeError):
            chunk = b""
        if not chunk:
            self.eof = True
            return True
        self.raw += chunk
        return True

    def _read_head(self, deadline):
        while b"\r\n\r\n" not in self.raw:
            if self.eof or not self._recv(deadline):
                raise AssertionError("no SSE response head (eof=%s): %r" % (self.eof, self.raw[:500]))
        head, self.raw = self.raw.split(b"\r\n\r\n", 1)
        lines = head.decode("latin-1").split("\r\n")
        self.status = int(lines[0].split(" ", 2)[1])
        for line in lines[1:]:
            if ":" in line:
                k, v = line.split(":", 1)
                self.headers[k.strip().lower()] = v.strip()
        self.chunked = self.headers.get("transfer-encoding", "").lower() == "chunked"
        if self.status != 200:
            # read the (small) error body completely
            while not self.eof:
                if "content-length" in self.headers and \
                        len(self.raw) >= int(self.headers["content-length"]):
                    break
                if self.chunked and self.raw.endswith(b"0\r\n\r\n"):
                    break
                if not self._recv(deadline):
                    break
            self._dechunk()
            self.error_body = self.body
            if "content-length" in self.headers:
                self.error_body = self.error_body[:int(self.headers["content-length"])]

    def _dechunk(self):
        if not self.chunked:
            self.body += self.raw
            self.raw = b""
            return
        while True:
            eol = self.raw.find(b"\r\n")
            if eol < 0:
                return
            size = int(self.raw[:eol].split(b";")[0], 16)
            if size == 0:
                self.raw = b""
                self.eof = True
                return
            if len(self.raw) < eol + 2 + size + 2:
                return
            self.body += self.raw[eol + 2:eol + 2 + size]
            self.raw = self.raw[eol + 2 + size + 2:]

    def problem(self):
        """The error response as a RawResponse (for assert_problem)."""
        return RawResponse(self.status, self.headers, self.error_body)

    def next_frame(self, timeout=10.0):
        """The next frame, or None at end of stream.  AssertionError when
        nothing complete arrives before the deadline."""
        deadline = time.monotonic() + timeout
        while True:
            self._dechunk()
            self.body = self.body.replace(b"\r\n", b"\n")
            end = self.body.find(b"\n\n")
            if end >= 0:
                block, self.body = self.body[:end], self.body[end + 2:]
                frame = SSEFrame()
                for line in block.decode("utf-8").split("\n"):
                    if line.startswith(":"):
                        frame.comments.append(line[1:].lstrip(" "))
                        continue
                    name, _, value = line.partition(":")
                    if value.startswith(" "):
                        value = value[1:]
                    frame.fields.append(name)
                    if name == "event":
                        frame.event = value
                    elif name == "id":
                        frame.id = value
                    elif name == "retry":
                        frame.retry = int(value)
                    elif name == "data":
                        frame.data = value if frame.data is None else frame.data + "\n" + value
                self.frames_seen.append(frame)
                return frame
            if self.eof:
                assert not self.body.strip(), "stream ended inside a frame: %r" % self.body[:300]
                return None
            if not self._recv(deadline):
                raise AssertionError("no complete SSE frame within %.1fs; pending %r"
                                     % (timeout, self.body[:300]))

    def next_event(self, timeout=10.0):
        """The next frame that is not a comment (heartbeat), or None at EOF."""
        deadline = time.monotonic() + timeout
        while True:
            f = self.next_frame(max(0.0, deadline - time.monotonic()))
            if f is None or not f.is_comment:
                return f

    def read_until(self, pred, timeout=10.0):
        """Event frames (not comments) up to and including the first one for
        which pred(frame) is true."""
        deadline = time.monotonic() + timeout
        out = []
        while True:
            f = self.next_event(max(0.0, deadline - time.monotonic()))
            assert f is not None, "stream ended before the awaited frame; got %r" % out[-5:]
            out.append(f)
            if pred(f):
                return out

    def expect_silence(self, seconds):
        """No event frame (comments allowed) and no EOF for `seconds`."""
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            try:
                f = self.next_frame(max(0.0, deadline - time.monotonic()))
            except AssertionError:
                return
            assert f is not None, "stream closed during the quiet period"
            assert f.is_comment, "unexpected frame during the quiet period: %r" % f

    def close(self):
        try:
            self.sock.close()
        except OSError:
            pass

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def open_sse(server, sid, key=_MISSING, headers=None, params=None, connected=True):
    """Open /v1/sessions/{sid}/sse; with connected=True assert a 200
    text/event-stream whose first frame is `connected`."""
    s = SSEStream(server, "/v1/sessions/%s/sse" % sid, key=key, headers=headers, params=params)
    if connected:
        assert s.status == 200, "SSE open failed: %d %r" % (s.status, s.error_body[:500])
        ctype = s.headers.get("content-type", "")
        assert ctype.split(";")[0].strip() == "text/event-stream", s.headers
        f = s.next_frame(5)
        assert f is not None and f.event == "connected", "first frame is not connected: %r" % f
        assert f.id is None, "connected must carry no id: %r" % f
        assert json.loads(f.data) == {"status": "connected"}, f
    return s


def sse_event(frame, sid=None):
    """An event frame's Event JSON, with the frame/JSON agreement checked."""
    assert frame.event and frame.data is not None, frame
    ev = json.loads(frame.data)
    assert "\n" not in frame.data, "data must be on one line"
    assert frame.event == ev["type"], "event: %r != type %r" % (frame.event, ev["type"])
    assert frame.id == ev["id"], "id: %r != %r" % (frame.id, ev["id"])
    if sid is not None:
        assert ev["session_id"] == sid, "foreign event on %s's stream: %r" % (sid, ev)
    return ev
