#!/usr/bin/python3
"""Seed N sessions straight into a stopped loopd's SQLite database.

    bench/seed.py DB N

loopd must not be running on DB.  The newest existing session (created
through the API by bench/run just before) is the template: every column
is copied from it, so the rows match whatever the current schema holds,
and only the per-row fields are replaced:

  id / workspace_id  session_<uuidv7> / wsp_<same hex>, unique, time-ordered
  created_at, updated_at, last_activity_at  increasing microseconds, all
                     before the template (so they sort after it, newest first)
  tags '[]', extra '{}', version 1, seq assigned by SQLite, singleton_key NULL

loopd's writer adds new sessions to session_counts and
resource_session_counts itself, once per batch (schema 9: no AFTER INSERT
trigger on sessions), so this script does the same: one UPSERT each, in the
transaction of the insert.  The other triggers on sessions are dropped for
the insert (faster) and re-created from their saved SQL.
"""
import random
import sqlite3
import sys
import time

ORG = "org_00000000000000000000000000000001"
PRINCIPAL = "principal_00000000000000000000000000000001"
HARNESS = "harness_01933b5a000070008000000000000602"
STEP_US = 1000  # 1 ms apart: 1M sessions span ~17 minutes of history


def uuid7_hex(ms, rnd):
    """UUIDv7 as 32 lowercase hex: 48-bit ms, version 7, variant 10, random."""
    ra = rnd >> 62 & 0xFFF
    rb = rnd & ((1 << 62) - 1)
    v = (ms << 80) | (0x7 << 76) | (ra << 64) | (0b10 << 62) | rb
    return "%032x" % v


def main():
    if len(sys.argv) != 3:
        sys.exit("usage: seed.py DB N")
    path, n = sys.argv[1], int(sys.argv[2])
    t0 = time.monotonic()
    db = sqlite3.connect(path, isolation_level=None)
    db.execute("PRAGMA synchronous=OFF")  # bench data; loopd reopens it with FULL
    db.execute("PRAGMA cache_size=-262144")
    cur = db.execute("SELECT * FROM sessions ORDER BY seq DESC LIMIT 1")
    cols = [d[0] for d in cur.description]
    tmpl = cur.fetchone()
    if tmpl is None:
        sys.exit("seed: no template session in the database (create one through the API first)")
    t = dict(zip(cols, tmpl))
    for k, want in (("org_id", ORG), ("owner_principal_id", PRINCIPAL),
                    ("harness_id", HARNESS), ("status", 0), ("source", "api")):
        if k in t and t[k] != want:
            sys.exit("seed: template session has %s=%r, expected %r" % (k, t[k], want))
    needed = {"seq", "id", "workspace_id", "created_at", "updated_at", "last_activity_at",
              "tags", "extra", "version", "org_id", "status"}
    missing = needed - set(cols)
    if missing:
        sys.exit("seed: sessions table lacks columns %s; update bench/seed.py" % sorted(missing))

    start_us = min(t["created_at"], int(time.time() * 1e6)) - (n + 1) * STEP_US
    fixed = {k: v for k, v in t.items()}
    fixed.update(seq=None, tags="[]", extra="{}", version=1)
    if "singleton_key" in fixed:
        fixed["singleton_key"] = None
    varying = ["id", "workspace_id", "created_at", "updated_at", "last_activity_at"]
    const_cols = [c for c in cols if c not in varying]
    ins_cols = varying + const_cols
    const_vals = tuple(fixed[c] for c in const_cols)
    sql = "INSERT INTO sessions(%s) VALUES(%s)" % (
        ",".join(ins_cols), ",".join("?" * len(ins_cols)))

    rbits = random.SystemRandom().getrandbits(64)
    rnd = random.Random(rbits).getrandbits  # seeded from the OS; fast per row

    def rows():
        for i in range(n):
            us = start_us + i * STEP_US
            h = uuid7_hex(us // 1000, rnd(74))
            yield ("session_" + h, "wsp_" + h, us, us, us) + const_vals

    triggers = db.execute(
        "SELECT name, sql FROM sqlite_master WHERE type='trigger' AND tbl_name='sessions'").fetchall()
    ai = sorted(nm for nm, s in triggers if "AFTER INSERT" in s.upper())
    if ai:  # this script would not know what they do
        sys.exit("seed: unexpected AFTER INSERT triggers %s on sessions; update bench/seed.py" % ai)
    before = dict(((o, s), c) for o, s, c in db.execute("SELECT org_id, status, n FROM session_counts"))

    # one big append: a rollback journal in memory instead of a 600 MB WAL written
    # twice (log + checkpoint); WAL mode is restored before closing
    db.execute("PRAGMA journal_mode=MEMORY")
    db.execute("BEGIN IMMEDIATE")
    for name, _ in triggers:
        db.execute('DROP TRIGGER "%s"' % name)
    db.executemany(sql, rows())
    # what loopd's writer adds for new sessions: n more rows of (org, status)
    db.execute("INSERT INTO session_counts(org_id, status, n) VALUES(?, ?, ?)"
               " ON CONFLICT(org_id, status) DO UPDATE SET n = n + excluded.n",
               (fixed["org_id"], fixed["status"], n))
    # and n more on the harness (and agent)
    for rid in (fixed["harness_id"], fixed.get("agent_id")):
        if rid:
            db.execute("INSERT INTO resource_session_counts(resource_id, n) VALUES(?, ?)"
                       " ON CONFLICT(resource_id) DO UPDATE SET n = n + excluded.n", (rid, n))
    for _, s in triggers:
        db.execute(s)
    db.execute("COMMIT")

    # check: counts now match the table exactly for every (org, status)
    real = dict(((o, s), c) for o, s, c in db.execute(
        "SELECT org_id, status, count(*) FROM sessions GROUP BY org_id, status"))
    counts = dict(((o, s), c) for o, s, c in db.execute("SELECT org_id, status, n FROM session_counts"))
    counts = {k: v for k, v in counts.items() if v}
    if real != counts:
        sys.exit("seed: session_counts %r does not match sessions %r" % (counts, real))
    for col in ("harness_id", "agent_id"):
        by = dict(db.execute("SELECT %s, count(*) FROM sessions WHERE %s IS NOT NULL"
                             " GROUP BY %s" % (col, col, col)))
        kept = dict(db.execute("SELECT resource_id, n FROM resource_session_counts"
                               " WHERE resource_id IN (SELECT %s FROM sessions)" % col))
        if by != kept:
            sys.exit("seed: resource_session_counts %r does not match sessions by %s %r"
                     % (kept, col, by))
    db.execute("PRAGMA journal_mode=WAL")
    db.close()
    tot = sum(real.values())
    print("seeded %d sessions in %.1f s (table now %d; counts before %r)"
          % (n, time.monotonic() - t0, tot, sum(before.values())))


if __name__ == "__main__":
    main()
