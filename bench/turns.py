#!/usr/bin/python3
"""bench/turns.py — the turn benchmark of `make bench` (issue 4, "Benchmark").

Drives build/turnload (bench/turnload.c: one thread, epoll, raw HTTP/1.1)
against build/loopd with llmsim at zero latency.  loopd is pinned to one CPU
and the load generator to another (taskset), so "turns/s" is on one core.

Cases (a fresh loopd data dir for 0-3, another for 4):
  0. client floor: GET /healthz round trip on one keep-alive connection
  1. 1 session, sequential: BENCH_TURNS_N turns after BENCH_TURNS_WARM;
     latency = POST sent -> `turn.completed` frame read from the SSE stream
  2. BENCH_TURNS_SESSIONS sessions, each a closed loop (post, wait for
     turn.completed + session.idled + the 201, post again) for
     BENCH_TURNS_DURATION s after BENCH_TURNS_WARMUP s: p50/p99, turns/s
  3. durable commits and SQL statements per turn: /metrics deltas over
     case 2 (and case 1), every session idle at both ends of the window
  4. BENCH_IDLE_STREAMS idle SSE streams, each on its own session: loopd
     VmRSS delta / streams; then BENCH_LIVE_STREAMS live streams on their own
     sessions, turns posted on them at BENCH_LIVE_RATE/s (open loop) for
     BENCH_LIVE_DURATION s with the idle streams still open: delivery
     latency = POST sent -> `input.message` on that session's stream
Any non-2xx, dropped stream, gap in a session's event sequence, failed or
unfinished turn is an error: exit 1.  Targets print PASS/MISS only.

How the issue's targets are read (decided in session 10, README "Turn
benchmark targets"): "at 100 concurrent sessions" is the open loop of case
4 without idle streams (100 sessions, turns offered at BENCH_TURNS_OPEN_RATE/s),
not the closed loop of case 2, where 100 turns are always in flight and the
latency is 100 / turns-per-second by Little's law (p50 < 1 ms would need
100,000 turns/s); that case measures throughput.  "Delivery latency" is
from the moment an event is durable (it exists for readers; nothing is
shown before) to its arrival on a live stream; from the POST, which adds
the write's own commit, is printed beside it.

  turns.py [--report FILE]   the table on stdout; appended to FILE if given

Environment (defaults): BENCH_TURNS_N=2000 BENCH_TURNS_WARM=200
BENCH_TURNS_SESSIONS=100 BENCH_TURNS_DURATION=10 BENCH_TURNS_WARMUP=2
BENCH_IDLE_STREAMS=10000 BENCH_LIVE_STREAMS=1000 BENCH_LIVE_RATE=500
BENCH_LIVE_DURATION=5 BENCH_TURNS_TIMEOUT=60 (per wait)
BENCH_SERVER_CPU=1 BENCH_WRK_CPU=0 (pinning; none on a 1-CPU machine).
Only 127.0.0.1 is contacted.
"""
import os
import resource
import secrets
import signal
import socket
import subprocess
import sys
import tempfile
import time
import shutil

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import util  # noqa: E402  (freeport, wait)

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
LOOPD = os.path.join(ROOT, "build", "loopd")
TURNLOAD = os.path.join(ROOT, "build", "turnload")
VMFREEZE = os.path.join(ROOT, "build", "vmfreeze")
SRC = os.path.join(ROOT, "bench", "turnload.c")

# Everruns' published figures (issue 4)
REF_P50_MS = 39.0
REF_TPS = (18.5, 33.6)
REF_STMTS = 284.0


def env_num(name, default, kind=int):
    v = os.environ.get(name, str(default))
    try:
        x = kind(v)
    except ValueError:
        x = -1
    if x < 0:
        sys.stderr.write("turns.py: %s must be a non-negative number (got %r)\n" % (name, v))
        sys.exit(2)
    return x


def log(msg):
    sys.stderr.write("bench: turns: %s\n" % msg)
    sys.stderr.flush()


class Loopd:
    def __init__(self, tmp, name, key, pin):
        self.dir = os.path.join(tmp, name)
        with socket.socket() as so:
            so.bind(("127.0.0.1", 0))
            self.port = so.getsockname()[1]
        self.logf = os.path.join(tmp, name + ".log")
        env = dict(os.environ, LOOPD_BOOTSTRAP_KEY=key)
        with open(self.logf, "ab") as lf:
            self.p = subprocess.Popen(pin + [LOOPD, "--listen", "127.0.0.1:%d" % self.port, "--data-dir", self.dir,
                                             "--log-level", "warn", "--max-connections", "30000",
                                             "--max-connections-per-ip", "30000"],
                                      env=env, stdout=lf, stderr=lf, stdin=subprocess.DEVNULL)
        self.rc = None
        try:
            util.cmd_wait(self.port, 30)
        except SystemExit:
            self.stop()
            raise RuntimeError("loopd did not become healthy: %s" % self.tail())

    def tail(self, n=5):
        try:
            with open(self.logf, errors="replace") as f:
                return " | ".join(l.strip() for l in f.readlines()[-n:])
        except OSError:
            return ""

    def stop(self):
        """SIGTERM, up to 15 s, then SIGKILL; returns the exit status."""
        if self.rc is not None:
            return self.rc
        if self.p.poll() is None:
            self.p.send_signal(signal.SIGTERM)
            try:
                self.p.wait(15)
            except subprocess.TimeoutExpired:
                self.p.kill()
                self.p.wait(5)
        self.rc = self.p.returncode
        return self.rc


class Freeze:
    """bench/vmfreeze.c around one run: the share of its wall time in which
    every vCPU stood still at once (the host had stopped the VM)."""

    def __init__(self):
        self.p = None
        if os.access(VMFREEZE, os.X_OK):
            self.p = subprocess.Popen([VMFREEZE], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                                      stdin=subprocess.DEVNULL)

    def stop(self):
        """'P % of the time (N episodes, longest M ms)' or 'not measured'"""
        if not self.p:
            return "not measured"
        self.p.send_signal(signal.SIGTERM)
        try:
            out = self.p.communicate(timeout=10)[0].decode()
        except subprocess.TimeoutExpired:
            self.p.kill()
            self.p.wait()
            return "not measured"
        f = dict(kv.split("=", 1) for kv in out.split()[1:] if "=" in kv)
        if "frozen_pct" not in f:
            return "not measured"
        return "%s %% of the time (%s episodes, longest %s ms)" % (f["frozen_pct"], f["episodes"], f["max_ms"])


def run_turnload(mode, srv, key, pin, args, timeout):
    cmd = pin + [TURNLOAD, mode, "port=%d" % srv.port, "key=" + key, "pid=%d" % srv.p.pid] + \
        ["%s=%s" % kv for kv in args.items()]
    log("%s: %s" % (mode, " ".join("%s=%s" % kv for kv in args.items())))
    try:
        r = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, timeout=timeout,
                           stdin=subprocess.DEVNULL)
        out, errout, rc = r.stdout.decode(), r.stderr.decode(), r.returncode
    except subprocess.TimeoutExpired as e:  # run() has killed it
        out = (e.stdout or b"").decode()
        errout = (e.stderr or b"").decode() + "\nturnload killed after %d s" % timeout
        rc = -1
    res = {}
    for line in out.splitlines():
        if line.startswith("RESULT "):
            k, _, v = line[7:].partition("=")
            try:
                res[k] = float(v)
            except ValueError:
                res[k] = v
    for line in errout.splitlines():
        sys.stderr.write("  %s\n" % line)
    errs = [l for l in errout.splitlines() if "ERROR" in l or "FATAL" in l or "killed" in l]
    if rc != 0 and not errs:
        errs = ["turnload %s exited with status %d" % (mode, rc)]
    return res, errs


def fmt_us(u):
    if u is None or u != u:
        return "—"
    return "%.0f µs" % u if u < 1000 else "%.2f ms" % (u / 1000)


def fmt_int(x):
    return "{:,.0f}".format(x)


def main():
    report = None
    a = sys.argv[1:]
    if a[:1] == ["--report"] and len(a) == 2:
        report = a[1]
    elif a:
        sys.stderr.write(__doc__)
        return 2

    n_seq = env_num("BENCH_TURNS_N", 2000)
    n_warm = env_num("BENCH_TURNS_WARM", 200)
    n_sess = env_num("BENCH_TURNS_SESSIONS", 100)
    dur = env_num("BENCH_TURNS_DURATION", 10, float)
    warmup = env_num("BENCH_TURNS_WARMUP", 2, float)
    n_idle = env_num("BENCH_IDLE_STREAMS", 10000)
    n_live = env_num("BENCH_LIVE_STREAMS", 1000)
    rate = env_num("BENCH_LIVE_RATE", 500, float)
    live_dur = env_num("BENCH_LIVE_DURATION", 5, float)
    open_rate = env_num("BENCH_TURNS_OPEN_RATE", 1000, float)
    wait_to = env_num("BENCH_TURNS_TIMEOUT", 60, float)
    if n_seq < 1 or n_sess < 1 or dur <= 0 or rate <= 0:
        sys.stderr.write("turns.py: bad settings\n")
        return 2

    if not os.access(LOOPD, os.X_OK):
        sys.stderr.write("turns.py: %s not built (make all)\n" % LOOPD)
        return 1
    if not os.access(TURNLOAD, os.X_OK) or os.path.getmtime(TURNLOAD) < os.path.getmtime(SRC):
        log("compiling build/turnload")
        subprocess.check_call(["cc", "-O2", "-Wall", "-o", TURNLOAD, SRC, "-lm"])

    notes, errors = [], []
    # file descriptors: loopd holds one per stream, turnload one per stream
    # and one per live session's POST connection
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    limit = hard if hard != resource.RLIM_INFINITY else 1 << 20
    need = n_idle + 2 * n_live + 256
    if need > limit:
        n_idle = max(0, limit - 2 * n_live - 256)
        notes.append("open-file limit %d: idle streams cut to %d" % (limit, n_idle))

    ncpu = os.cpu_count() or 1
    if ncpu >= 2:
        scpu = os.environ.get("BENCH_SERVER_CPU", "1")
        ccpu = os.environ.get("BENCH_WRK_CPU", "0")
        spin, cpin = ["taskset", "-c", scpu], ["taskset", "-c", ccpu]
        pin_desc = "loopd pinned to CPU%s, turnload to CPU%s" % (scpu, ccpu)
    else:
        spin = cpin = []
        pin_desc = "1 CPU: no pinning"

    key = "evr_pat_" + secrets.token_hex(16)
    tmp = tempfile.mkdtemp(prefix="loopd-turns.")
    servers = []
    t_start = time.monotonic()
    load0 = open("/proc/loadavg").read().split()[:3]

    def on_signal(sig, _frame):
        raise SystemExit(128 + sig)

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)

    def stop(srv):
        rc = srv.stop()
        if rc != 0:
            n = "loopd exited with status %d on SIGTERM (%s)" % (rc, srv.tail(2))
            notes.append(n)
            log(n)

    counts = {"not_started": 0, "live_skipped": 0}

    def gather(res, errs, name):
        for k in counts:
            counts[k] += int(res.get(k, 0))
        for e in errs:
            errors.append("%s: %s" % (name, e.split("ERROR: ", 1)[-1].split("FATAL: ", 1)[-1]))

    R = {}
    frozen = {}
    try:
        # ---------------------------------------------------- cases 0-3
        srv = Loopd(tmp, "data", key, spin)
        servers.append(srv)
        log("loopd on 127.0.0.1:%d (pid %d); %s" % (srv.port, srv.p.pid, pin_desc))
        tl_to = int(wait_to * 3 + 60)
        r, e = run_turnload("floor", srv, key, cpin, {"n": n_seq, "warm": n_warm}, tl_to)
        gather(r, e, "floor")
        R.update(r)
        r, e = run_turnload("seq", srv, key, cpin, {"n": n_seq, "warm": n_warm, "timeout": wait_to},
                            tl_to + n_seq // 50)
        gather(r, e, "1 session")
        R.update(r)
        r, e = run_turnload("conc", srv, key, cpin, {"sessions": n_sess, "warmup": warmup, "duration": dur,
                                                     "timeout": wait_to}, int(tl_to + warmup + dur))
        gather(r, e, "%d sessions" % n_sess)
        R.update(r)
        if open_rate > 0:
            # the same sessions' latency below saturation: open loop, no idle streams
            fz = Freeze()
            r, e = run_turnload("streams", srv, key, cpin, {"idle": 0, "live": n_sess, "rate": open_rate,
                                                            "duration": dur / 2, "timeout": wait_to},
                                int(tl_to + dur))
            frozen["open"] = fz.stop()
            gather(r, e, "%d sessions at %g turns/s" % (n_sess, open_rate))
            R.update({"open_" + k: v for k, v in r.items()})
        stop(srv)

        # ---------------------------------------------------- case 4
        if n_idle + n_live > 0:
            srv = Loopd(tmp, "data-streams", key, spin)
            servers.append(srv)
            fz = Freeze()
            r, e = run_turnload("streams", srv, key, cpin,
                                {"idle": n_idle, "live": n_live, "rate": rate, "duration": live_dur,
                                 "timeout": wait_to},
                                int(tl_to + live_dur + (n_idle + n_live) / 100))
            frozen["streams"] = fz.stop()
            gather(r, e, "streams")
            R.update(r)
            stop(srv)
    finally:
        for s in servers:
            s.stop()
        shutil.rmtree(tmp, ignore_errors=True)

    # ---------------------------------------------------------- the table
    out = []
    say = out.append
    g = R.get

    def verdict(ok, info=False):
        if ok is None:
            return "—"
        return ("PASS" if ok else "MISS") + (" (info)" if info else "")

    def lt(v, lim):
        return None if v is None else v < lim

    say("")
    say("## Turns (issue 4): llmsim, zero latency")
    say("")
    say("- method: bench/turnload.c (one thread, epoll, raw HTTP/1.1 keep-alive; one POST connection and one SSE")
    say("  stream per session); %s; latency = POST written -> `turn.completed` frame read on the" % pin_desc)
    say("  session's SSE stream; load average at start %s (a test run or other work on the machine skews this)"
        % " ".join(load0))
    say("")
    say("| case | loopd | target | result | Everruns (published) | ratio |")
    say("|---|---:|---|---|---:|---:|")
    p50_1, p99_1 = g("seq_turn_p50_us"), g("seq_turn_p99_us")
    p50_c, p99_c = g("conc_turn_p50_us"), g("conc_turn_p99_us")
    tps = g("conc_turns_per_s")

    def faster(u):
        if not u:
            return "—"
        r = REF_P50_MS * 1000 / u
        return "%.0f× lower" % r if r >= 1.5 else "%.2f× (ours / theirs: %.1f)" % (r, 1 / r)

    say("| turn overhead p50, 1 session (%s turns) | %s | < 1 ms | %s | %.0f ms end-to-end p50 | %s |"
        % (fmt_int(n_seq), fmt_us(p50_1), verdict(lt(p50_1, 1000)), REF_P50_MS, faster(p50_1)))
    say("| turn overhead p99, 1 session | %s | < 5 ms | %s | — | |" % (fmt_us(p99_1), verdict(lt(p99_1, 5000))))
    if g("open_live_turn_p50_us") is not None:
        op50, op99 = g("open_live_turn_p50_us"), g("open_live_turn_p99_us")
        say("| turn overhead p50, %d sessions, open loop at %g turns/s | %s | < 1 ms | %s | %.0f ms end-to-end p50 | %s |"
            % (n_sess, open_rate, fmt_us(op50), verdict(op50 < 1000), REF_P50_MS, faster(op50)))
        say("| turn overhead p99, %d sessions, open loop | %s | < 5 ms | %s | — | |"
            % (n_sess, fmt_us(op99), verdict(op99 < 5000)))
    say("| turn latency p50 / p99, %d sessions, closed loop %gs (saturated: Little's law, see below) | %s / %s | — | info | | |"
        % (n_sess, dur, fmt_us(p50_c), fmt_us(p99_c)))
    if tps is not None:
        say("| turns/s, %d sessions, loopd on one core | %s | ≥ 2,000 | %s | %.1f–%.1f | %.0f–%.0f× |"
            % (n_sess, fmt_int(tps), verdict(tps >= 2000), REF_TPS[0], REF_TPS[1], tps / REF_TPS[1], tps / REF_TPS[0]))
    else:
        say("| turns/s, %d sessions | — | ≥ 2,000 | — | | |" % n_sess)
    for k, label in (("conc", "%d sessions (group commit)" % n_sess), ("seq", "1 session")):
        c = g(k + "_commits_per_turn")
        say("| durable commits per turn, %s | %s | ≤ 3 | %s | — | |"
            % (label, "—" if c is None else "%.2f" % c, verdict(None if c is None else c <= 3)))
    for k, label in (("conc", "%d sessions" % n_sess), ("seq", "1 session")):
        s = g(k + "_statements_per_turn")
        say("| SQL statements per turn (writer), %s | %s | — | info | ~%.0f | %s |"
            % (label, "—" if s is None else "%.1f" % s, REF_STMTS, "%.0f× fewer" % (REF_STMTS / s) if s else "—"))
    bpi = g("bytes_per_idle_stream")
    say("| memory per idle SSE stream (VmRSS delta / %s) | %s | < 16 KB | %s | — | |"
        % (fmt_int(n_idle), "—" if bpi is None else "%.1f KB" % (bpi / 1024), verdict(lt(bpi, 16384))))
    fp99 = g("live_fanout_p99_us")
    say("| delivery p99, %s live + %s idle streams, %g turns/s: event durable -> on its stream "
        "(201 received -> input.message received; both leave after the same commit) | %s | < 2 ms | %s | — | |"
        % (fmt_int(n_live), fmt_int(n_idle), rate, fmt_us(fp99), verdict(lt(fp99, 2000))))
    dp99 = g("live_deliv_p99_us")
    say("| the same from the POST: POST sent -> input.message on the stream (the write's durable commit "
        "included) | %s | — | info | — | |" % fmt_us(dp99))
    say("")

    def lat(prefix):
        return "p50 %s, p99 %s, max %s" % (fmt_us(g(prefix + "_p50_us")), fmt_us(g(prefix + "_p99_us")),
                                          fmt_us(g(prefix + "_max_us")))

    say("- client floor (turnload GET /healthz round trip, 1 keep-alive connection): %s" % lat("floor"))
    if g("seq_turns_per_s") is not None:
        say("- 1 session: POST -> 201 (input durable) %s; POST -> input.message on SSE %s; %.0f turns/s;"
            % (lat("seq_ack"), lat("seq_deliv"), g("seq_turns_per_s")))
        say("  loopd CPU %.0f µs/turn, turnload CPU %.0f µs/turn"
            % (g("seq_server_cpu_us_per_turn"), g("seq_client_cpu_us_per_turn")))
    if tps is not None:
        say("- %d sessions: %s turns in %.1f s; POST -> 201 %s; loopd CPU %.0f%% of its core (%.0f µs/turn),"
            % (n_sess, fmt_int(g("conc_turns", 0)), g("conc_seconds", 0), lat("conc_ack"),
               g("conc_server_cpu_pct", 0), g("conc_server_cpu_us_per_turn", 0)))
        say("  turnload CPU %.0f%% of its core; %.1f writes per commit"
            % (g("conc_client_cpu_pct", 0), g("conc_ops_per_commit", 0)))
    if g("rss_before_kb") is not None:
        say("- streams: loopd VmRSS %.1f MB with %s sessions and no stream, %.1f MB with %s idle streams, "
            "%.1f MB with %s live more (%.1f KB each), %.1f MB after the live turns"
            % (g("rss_before_kb") / 1024, fmt_int(n_idle + n_live), g("rss_idle_kb") / 1024, fmt_int(n_idle),
               g("rss_live_kb") / 1024, fmt_int(n_live), g("bytes_per_live_stream_open", 0) / 1024,
               g("rss_after_kb", 0) / 1024))
        say("- live phase: %s turns in %.1f s (%s skipped: session still busy); POST -> 201 %s; "
            "201 -> input.message %s; POST -> turn.completed %s; loopd CPU %.0f%%, turnload CPU %.0f%%; streams open %s before, %s after"
            % (fmt_int(g("live_turns", 0)), g("live_seconds", 0), fmt_int(g("live_skipped", 0)), lat("live_ack"),
               lat("live_fanout"), lat("live_turn"), g("live_server_cpu_pct", 0), g("live_client_cpu_pct", 0),
               fmt_int(g("streams_open_before", 0)), fmt_int(g("streams_open_after", 0))))
    say("- commits and statements: loopd_store_commit_batch_size_count and loopd_store_statements_total deltas over")
    say("  the window (writer statements only; reads are not counted); Everruns: published figures, not measured here")
    if tps:
        say("- the closed-loop row has no think time: %d turns always in flight, so by Little's law p50 is about"
            % n_sess)
        say("  %d / turns/s (%s at %s turns/s); p50 < 1 ms there would need %s turns/s. The open-loop rows (the"
            % (n_sess, fmt_us(n_sess / tps * 1e6), fmt_int(tps), fmt_int(n_sess * 1000)))
        say("  targets) show the same sessions below saturation, each posting a turn every %.0f ms on average."
            % (n_sess / open_rate * 1000))
    if frozen:
        say("- the whole VM stood still (every vCPU at once; bench/vmfreeze.c, host descheduling): open loop %s;"
            % frozen.get("open", "not run"))
        say("  streams run (sessions and streams set up, then the live phase) %s" % frozen.get("streams", "not run"))
    if counts["not_started"]:
        notes.append("%d POSTs answered with a delivery other than `started`" % counts["not_started"])
    seen = set()
    notes = [n for n in notes if not (n in seen or seen.add(n))]
    for n in notes:
        say("- NOTE: %s" % n)
    for e in errors[:20]:
        say("- ERROR: %s" % e)
    if len(errors) > 20:
        say("- ERROR: ... %d more" % (len(errors) - 20))
    say("- turn benchmark time %.0f s" % (time.monotonic() - t_start))
    text = "\n".join(out) + "\n"
    sys.stdout.write(text)
    if report:
        with open(report, "a") as f:
            f.write(text)
    return 1 if errors else 0


if __name__ == "__main__":
    sys.exit(main())
