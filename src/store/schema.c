/*
 * schema.c — versioned migrations, run at start inside one transaction.
 * `PRAGMA user_version` holds the number of migrations applied; each entry
 * of migrations[] moves it up by one and is never edited once released —
 * a change is a new entry.
 *
 * Counters: session_counts keeps per-org, per-status counts in step with
 * the sessions table through triggers, so `total` of an unfiltered list
 * and /v1/sessions/stats are O(1) at any number of sessions;
 * resource_session_counts does the same per harness and per agent.
 */
#include "log.h"
#include "store/sqlite_int.h"
#include "util/mem.h"
#include "util/timeutil.h"
#include <stdio.h>
#include <stdlib.h>

static const char *const migrations[] = {
    /* 1: the foundation */
    "CREATE TABLE orgs(id TEXT PRIMARY KEY, name TEXT NOT NULL, created_at INTEGER NOT NULL);"
    "CREATE TABLE users(id TEXT PRIMARY KEY, email TEXT, name TEXT,"
    "  created_at INTEGER NOT NULL);"
    "CREATE TABLE members(org_id TEXT NOT NULL REFERENCES orgs(id), user_id TEXT NOT NULL"
    "  REFERENCES users(id), role TEXT NOT NULL, principal_id TEXT NOT NULL UNIQUE,"
    "  PRIMARY KEY(org_id, user_id)) WITHOUT ROWID;"
    "CREATE TABLE api_keys(id TEXT PRIMARY KEY, hash TEXT NOT NULL UNIQUE, prefix TEXT NOT NULL,"
    "  name TEXT, user_id TEXT NOT NULL, org_id TEXT NOT NULL, created_at INTEGER NOT NULL,"
    "  revoked_at INTEGER);"
    "CREATE TABLE harnesses(id TEXT PRIMARY KEY, org_id TEXT NOT NULL, name TEXT NOT NULL,"
    "  display_name TEXT, description TEXT, system_prompt TEXT, parent_id TEXT,"
    "  default_model_id TEXT, capabilities TEXT NOT NULL DEFAULT '[]',"
    "  tags TEXT NOT NULL DEFAULT '[]', is_built_in INTEGER NOT NULL DEFAULT 0,"
    "  created_at INTEGER NOT NULL, updated_at INTEGER NOT NULL, UNIQUE(org_id, name));"
    "CREATE TABLE agents(id TEXT PRIMARY KEY, org_id TEXT NOT NULL, name TEXT NOT NULL,"
    "  display_name TEXT, description TEXT, system_prompt TEXT NOT NULL,"
    "  harness_id TEXT NOT NULL, default_model_id TEXT, tags TEXT NOT NULL,"
    "  extra TEXT NOT NULL, archived_at INTEGER, created_at INTEGER NOT NULL,"
    "  updated_at INTEGER NOT NULL, version INTEGER NOT NULL DEFAULT 1,"
    "  UNIQUE(org_id, name));"
    "CREATE INDEX agents_org_created ON agents(org_id, created_at);"
    "CREATE TABLE sessions(seq INTEGER PRIMARY KEY, id TEXT NOT NULL UNIQUE,"
    "  org_id TEXT NOT NULL, workspace_id TEXT NOT NULL, harness_id TEXT NOT NULL,"
    "  agent_id TEXT, owner_principal_id TEXT NOT NULL, owner_user_id TEXT, model_id TEXT,"
    "  agent_identity_id TEXT, title TEXT, goal TEXT, locale TEXT, preview TEXT,"
    "  output_preview TEXT, tags TEXT NOT NULL, extra TEXT NOT NULL, features TEXT,"
    "  singleton_key TEXT UNIQUE, status INTEGER NOT NULL, outcome INTEGER NOT NULL DEFAULT 0,"
    "  source TEXT NOT NULL, created_at INTEGER NOT NULL, updated_at INTEGER NOT NULL,"
    "  started_at INTEGER, last_activity_at INTEGER NOT NULL,"
    "  in_tokens INTEGER NOT NULL DEFAULT 0, out_tokens INTEGER NOT NULL DEFAULT 0,"
    "  cache_read_tokens INTEGER NOT NULL DEFAULT 0,"
    "  cache_creation_tokens INTEGER NOT NULL DEFAULT 0, version INTEGER NOT NULL DEFAULT 1);"
    "CREATE INDEX sessions_org_created ON sessions(org_id, created_at);"
    "CREATE INDEX sessions_org_activity ON sessions(org_id, last_activity_at);"
    "CREATE INDEX sessions_org_agent ON sessions(org_id, agent_id, created_at)"
    "  WHERE agent_id IS NOT NULL;"
    "CREATE TABLE pins(user_id TEXT NOT NULL, session_id TEXT NOT NULL,"
    "  created_at INTEGER NOT NULL, PRIMARY KEY(user_id, session_id)) WITHOUT ROWID;"
    "CREATE INDEX pins_session ON pins(session_id);"
    "CREATE TABLE session_counts(org_id TEXT NOT NULL, status INTEGER NOT NULL,"
    "  n INTEGER NOT NULL, PRIMARY KEY(org_id, status)) WITHOUT ROWID;"
    "CREATE TRIGGER sessions_ai AFTER INSERT ON sessions BEGIN"
    "  INSERT INTO session_counts(org_id, status, n) VALUES(new.org_id, new.status, 1)"
    "    ON CONFLICT(org_id, status) DO UPDATE SET n = n + 1;"
    "END;"
    "CREATE TRIGGER sessions_ad AFTER DELETE ON sessions BEGIN"
    "  UPDATE session_counts SET n = n - 1 WHERE org_id = old.org_id AND status = old.status;"
    "  DELETE FROM pins WHERE session_id = old.id;"
    "END;"
    "CREATE TRIGGER sessions_au AFTER UPDATE OF status ON sessions"
    "  WHEN old.status <> new.status BEGIN"
    "  UPDATE session_counts SET n = n - 1 WHERE org_id = old.org_id AND status = old.status;"
    "  INSERT INTO session_counts(org_id, status, n) VALUES(new.org_id, new.status, 1)"
    "    ON CONFLICT(org_id, status) DO UPDATE SET n = n + 1;"
    "END;"
    "CREATE TABLE idempotency(org_id TEXT NOT NULL, key TEXT NOT NULL,"
    "  fingerprint TEXT NOT NULL, status INTEGER NOT NULL, body TEXT NOT NULL,"
    "  created_at INTEGER NOT NULL, PRIMARY KEY(org_id, key)) WITHOUT ROWID;"
    "CREATE INDEX idempotency_created ON idempotency(created_at);",
    /* 2: the event log.  Append-only: each session's events are numbered
     * from 1 with no gaps (the loop assigns, the writer commits in order).
     * `body` is the whole Event JSON as sent; `message` the Message JSON of
     * events that carry one (input.message, output.message.completed,
     * tool.completed), from which GET .../messages is rebuilt.  No index on
     * `id`: a cursor is looked up within its session's rows only (on a
     * reconnect), while every event would pay for the index. */
    "CREATE TABLE events(session_id TEXT NOT NULL, sequence INTEGER NOT NULL,"
    "  id TEXT NOT NULL, type TEXT NOT NULL, ts INTEGER NOT NULL, turn_id TEXT,"
    "  body TEXT NOT NULL, message TEXT, PRIMARY KEY(session_id, sequence)) WITHOUT ROWID;"
    "CREATE TRIGGER events_no_update BEFORE UPDATE ON events BEGIN"
    "  SELECT RAISE(ABORT, 'events are immutable');"
    "END;"
    "CREATE TRIGGER sessions_ad_events AFTER DELETE ON sessions BEGIN"
    "  DELETE FROM events WHERE session_id = old.id;"
    "END;"
    "ALTER TABLE sessions ADD COLUMN turn_id TEXT;",
    /* 3: what server-side tools keep per session: key-value pairs and
     * secrets (session_storage) and files (session_file_system).  Written
     * only in the transaction that commits the tool call's tool.completed,
     * so a call's effect and its ledger entry are durable together. */
    "CREATE TABLE session_kv(session_id TEXT NOT NULL, key TEXT NOT NULL,"
    "  value TEXT NOT NULL, is_secret INTEGER NOT NULL DEFAULT 0,"
    "  updated_at INTEGER NOT NULL, PRIMARY KEY(session_id, key)) WITHOUT ROWID;"
    "CREATE TABLE session_files(session_id TEXT NOT NULL, path TEXT NOT NULL,"
    "  content TEXT NOT NULL, updated_at INTEGER NOT NULL,"
    "  PRIMARY KEY(session_id, path)) WITHOUT ROWID;"
    "CREATE TRIGGER sessions_ad_tools AFTER DELETE ON sessions BEGIN"
    "  DELETE FROM session_kv WHERE session_id = old.id;"
    "  DELETE FROM session_files WHERE session_id = old.id;"
    "END;",
    /* 4: sessions per harness and per agent (`session_count` of
     * ResourceWithCounts), kept by triggers like session_counts: counting
     * on read was a scan of every session for a harness (no index on
     * harness_id) and of every session of each listed agent.  A session's
     * harness and agent never change, so inserts and deletes are enough.
     * IDs are unique across kinds (their prefix says which). */
    "CREATE TABLE resource_session_counts(resource_id TEXT PRIMARY KEY,"
    "  n INTEGER NOT NULL) WITHOUT ROWID;"
    "INSERT INTO resource_session_counts(resource_id, n)"
    "  SELECT harness_id, count(*) FROM sessions GROUP BY harness_id;"
    "INSERT INTO resource_session_counts(resource_id, n)"
    "  SELECT agent_id, count(*) FROM sessions WHERE agent_id IS NOT NULL GROUP BY agent_id;"
    "CREATE TRIGGER sessions_ai_resources AFTER INSERT ON sessions BEGIN"
    "  INSERT INTO resource_session_counts(resource_id, n) VALUES(new.harness_id, 1)"
    "    ON CONFLICT(resource_id) DO UPDATE SET n = n + 1;"
    "  INSERT INTO resource_session_counts(resource_id, n) SELECT new.agent_id, 1"
    "    WHERE new.agent_id IS NOT NULL ON CONFLICT(resource_id) DO UPDATE SET n = n + 1;"
    "END;"
    "CREATE TRIGGER sessions_ad_resources AFTER DELETE ON sessions BEGIN"
    "  UPDATE resource_session_counts SET n = n - 1"
    "    WHERE resource_id = old.harness_id OR resource_id = old.agent_id;"
    "END;",
    /* 5: events by id.  Migration 2 looked a cursor (since_id,
     * Last-Event-ID) up by scanning its session's rows: 60 ms for a session
     * of 100,000 events, on the loop, per reconnect or page request, and as
     * long for an unknown id (measured).  Event ids are UUIDv7, so new
     * entries land at the index's right edge: about one more page per
     * commit (measured with bench/turns.py, README). */
    "CREATE INDEX events_id ON events(id);",
    /* 6: each session's count of events other than output.message.delta
     * (X-Total-Count of GET .../events), kept by the writer with the
     * events: counting on read went over every row of the session (77 ms
     * at 108,000 events). */
    "ALTER TABLE sessions ADD COLUMN events_total INTEGER NOT NULL DEFAULT 0;"
    "UPDATE sessions SET events_total = (SELECT count(*) FROM events"
    "  WHERE session_id = sessions.id AND type <> 'output.message.delta');",
    /* 7: events in a rowid table, in commit order.  Keyed by (session_id,
     * sequence) WITHOUT ROWID, each turn's ~14 rows went into the middle of
     * the tree among the other sessions' rows: page splits rewrote 13 pages
     * per commit for ~10 KB of events, pages were a third empty, and the
     * log, the checkpoints and the fsyncs carried it all (measured with
     * 100 sessions at 1,000 turns/s: 21 pages per commit, turn p99
     * 10-12 ms).  Appended by rowid they fill the last page; the
     * (session_id, sequence) key becomes a small index (15 pages per
     * commit, p99 4-5 ms).  Reads of a session go through that index. */
    "DROP TRIGGER sessions_ad_events;"
    "CREATE TABLE events_new(session_id TEXT NOT NULL, sequence INTEGER NOT NULL,"
    "  id TEXT NOT NULL, type TEXT NOT NULL, ts INTEGER NOT NULL, turn_id TEXT,"
    "  body TEXT NOT NULL, message TEXT, PRIMARY KEY(session_id, sequence));"
    "INSERT INTO events_new(session_id, sequence, id, type, ts, turn_id, body, message)"
    "  SELECT session_id, sequence, id, type, ts, turn_id, body, message FROM events"
    "  ORDER BY session_id, sequence;"
    "DROP TABLE events;"
    "ALTER TABLE events_new RENAME TO events;"
    "CREATE INDEX events_id ON events(id);"
    "CREATE TRIGGER events_no_update BEFORE UPDATE ON events BEGIN"
    "  SELECT RAISE(ABORT, 'events are immutable');"
    "END;"
    "CREATE TRIGGER sessions_ad_events AFTER DELETE ON sessions BEGIN"
    "  DELETE FROM events WHERE session_id = old.id;"
    "END;",
    /* 8: event IDs made from now on end with their sequence (id_new_tail),
     * so a cursor is found at (session_id, sequence) and those rows need no
     * entry in events_id, which cost three pages per commit at 100 sessions
     * (a fifth of the log).  The index keeps the older IDs. */
    "DROP INDEX events_id;"
    "CREATE INDEX events_id ON events(id) WHERE " EVENTS_ID_INDEXED ";",
    /* 9: the writer counts new sessions once per batch (ops.c, "Session
     * counts"): the AFTER INSERT triggers cost a third of each insert.  The
     * triggers left subtract with upserts, so that a count the batch has not
     * yet added can go below zero for a moment instead of being missed. */
    "DROP TRIGGER sessions_ai;"
    "DROP TRIGGER sessions_ai_resources;"
    "DROP TRIGGER sessions_ad;"
    "CREATE TRIGGER sessions_ad AFTER DELETE ON sessions BEGIN"
    "  INSERT INTO session_counts(org_id, status, n) VALUES(old.org_id, old.status, -1)"
    "    ON CONFLICT(org_id, status) DO UPDATE SET n = n - 1;"
    "  DELETE FROM pins WHERE session_id = old.id;"
    "END;"
    "DROP TRIGGER sessions_au;"
    "CREATE TRIGGER sessions_au AFTER UPDATE OF status ON sessions"
    "  WHEN old.status <> new.status BEGIN"
    "  INSERT INTO session_counts(org_id, status, n) VALUES(old.org_id, old.status, -1)"
    "    ON CONFLICT(org_id, status) DO UPDATE SET n = n - 1;"
    "  INSERT INTO session_counts(org_id, status, n) VALUES(new.org_id, new.status, 1)"
    "    ON CONFLICT(org_id, status) DO UPDATE SET n = n + 1;"
    "END;"
    "DROP TRIGGER sessions_ad_resources;"
    "CREATE TRIGGER sessions_ad_resources AFTER DELETE ON sessions BEGIN"
    "  INSERT INTO resource_session_counts(resource_id, n) VALUES(old.harness_id, -1)"
    "    ON CONFLICT(resource_id) DO UPDATE SET n = n - 1;"
    "  INSERT INTO resource_session_counts(resource_id, n) SELECT old.agent_id, -1"
    "    WHERE old.agent_id IS NOT NULL ON CONFLICT(resource_id) DO UPDATE SET n = n - 1;"
    "END;",
    /* 10: one row /readyz rewrites to test the disk after a failed commit */
    "CREATE TABLE IF NOT EXISTS probe(id INTEGER PRIMARY KEY CHECK (id = 1), at INTEGER NOT NULL);",
    /* 11: rebuild_sessions() below */
    "",
};
#define NMIGRATIONS (int)(sizeof(migrations) / sizeof(migrations[0]))

/*
 * 11: the chat singleton's key moves from the column's UNIQUE constraint
 * to a partial unique index of the rows that have one.  The constraint
 * indexed every session, nearly all with a NULL key: one more b-tree insert
 * per create (9,500 of its 164,000 instructions, callgrind) and 2.2 more
 * pages in each group commit's log (of 21).  SQLite cannot drop a column
 * constraint, so the table is rebuilt as its documentation prescribes: a
 * new table, the rows copied (rowids and all), the old one dropped, the
 * new one renamed, and its indexes and triggers made again from the SQL
 * the database holds for them.  No other table refers to sessions, and the
 * statements that find a session by its key (`singleton_key = ?`) are
 * ones the partial index serves.  At 1,000,000 sessions this took 24 s
 * here, once, and leaves the old table's pages free in the file for the
 * rows to come.
 */
#define SESSIONS_COLUMNS                                                                           \
    "seq, id, org_id, workspace_id, harness_id, agent_id, owner_principal_id, owner_user_id,"      \
    " model_id, agent_identity_id, title, goal, locale, preview, output_preview, tags, extra,"     \
    " features, singleton_key, status, outcome, source, created_at, updated_at, started_at,"       \
    " last_activity_at, in_tokens, out_tokens, cache_read_tokens, cache_creation_tokens,"          \
    " version, turn_id, events_total"

static int rebuild_sessions(struct conn *c, char *err, size_t errlen)
{
    /* the indexes and triggers of the table as this database has them (but
     * the one made here, which only a database turned back by hand has) */
    char *saved[32];
    int n = 0, rc = 0;
    sqlite3_stmt *st = NULL;
    if (sqlite3_prepare_v2(c->db,
                           "SELECT sql FROM sqlite_schema WHERE tbl_name = 'sessions'"
                           " AND type IN ('index', 'trigger') AND sql IS NOT NULL"
                           " AND name <> 'sessions_singleton' ORDER BY rowid",
                           -1, &st, NULL) != SQLITE_OK)
        rc = -1;
    while (rc == 0 && sqlite3_step(st) == SQLITE_ROW) {
        if (n == (int)(sizeof(saved) / sizeof(saved[0]))) {
            snprintf(err, errlen, "more indexes and triggers on sessions than expected");
            rc = -2;
            break;
        }
        saved[n++] = xstrdup((const char *)sqlite3_column_text(st, 0));
    }
    sqlite3_finalize(st);
    static const char *const rebuild =
        "CREATE TABLE sessions_new(seq INTEGER PRIMARY KEY, id TEXT NOT NULL UNIQUE,"
        "  org_id TEXT NOT NULL, workspace_id TEXT NOT NULL, harness_id TEXT NOT NULL,"
        "  agent_id TEXT, owner_principal_id TEXT NOT NULL, owner_user_id TEXT, model_id TEXT,"
        "  agent_identity_id TEXT, title TEXT, goal TEXT, locale TEXT, preview TEXT,"
        "  output_preview TEXT, tags TEXT NOT NULL, extra TEXT NOT NULL, features TEXT,"
        "  singleton_key TEXT, status INTEGER NOT NULL, outcome INTEGER NOT NULL DEFAULT 0,"
        "  source TEXT NOT NULL, created_at INTEGER NOT NULL, updated_at INTEGER NOT NULL,"
        "  started_at INTEGER, last_activity_at INTEGER NOT NULL,"
        "  in_tokens INTEGER NOT NULL DEFAULT 0, out_tokens INTEGER NOT NULL DEFAULT 0,"
        "  cache_read_tokens INTEGER NOT NULL DEFAULT 0,"
        "  cache_creation_tokens INTEGER NOT NULL DEFAULT 0, version INTEGER NOT NULL DEFAULT 1,"
        "  turn_id TEXT, events_total INTEGER NOT NULL DEFAULT 0);"
        "INSERT INTO sessions_new(" SESSIONS_COLUMNS ") SELECT " SESSIONS_COLUMNS " FROM sessions;"
        "DROP TABLE sessions;"
        "ALTER TABLE sessions_new RENAME TO sessions;"
        "CREATE UNIQUE INDEX sessions_singleton ON sessions(singleton_key)"
        "  WHERE singleton_key IS NOT NULL;";
    char *msg = NULL;
    if (rc == 0 && sqlite3_exec(c->db, rebuild, NULL, NULL, &msg) != SQLITE_OK) rc = -1;
    for (int i = 0; i < n; i++) {
        if (rc == 0 && sqlite3_exec(c->db, saved[i], NULL, NULL, &msg) != SQLITE_OK) rc = -1;
        free(saved[i]);
    }
    if (rc == -1) snprintf(err, errlen, "%s", msg ? msg : sqlite3_errmsg(c->db));
    sqlite3_free(msg);
    return rc;
}

/* migrations made of more than one SQL text: run after their entry's text */
static int (*const migration_code[NMIGRATIONS])(struct conn *, char *, size_t) = {
    [10] = rebuild_sessions,
};

int schema_migrate(struct conn *c, char *err, size_t errlen)
{
    if (conn_exec(c, "BEGIN IMMEDIATE")) {
        snprintf(err, errlen, "migrate: %s", sqlite3_errmsg(c->db));
        return -1;
    }
    sqlite3_stmt *st = NULL;
    int version = 0;
    if (sqlite3_prepare_v2(c->db, "PRAGMA user_version", -1, &st, NULL) == SQLITE_OK &&
        sqlite3_step(st) == SQLITE_ROW)
        version = sqlite3_column_int(st, 0);
    sqlite3_finalize(st);
    if (version > NMIGRATIONS) {
        conn_exec(c, "ROLLBACK");
        snprintf(err, errlen, "database schema version %d is newer than this loopd (%d)", version,
                 NMIGRATIONS);
        return -1;
    }
    /* an existing database's migration may rebuild tables or indexes of
     * every row: say so, and how long it took */
    int64_t t0 = time_mono_us();
    char from[16], to[16];
    snprintf(from, sizeof(from), "%d", version);
    snprintf(to, sizeof(to), "%d", NMIGRATIONS);
    if (version > 0 && version < NMIGRATIONS)
        log_info("migrating the database schema (once; may take a while on a big database)", "from",
                 from, "to", to, NULL);
    for (int v = version; v < NMIGRATIONS; v++) {
        char *msg = NULL, why[256] = "?";
        int failed = sqlite3_exec(c->db, migrations[v], NULL, NULL, &msg) != SQLITE_OK;
        if (failed && msg) snprintf(why, sizeof(why), "%s", msg);
        sqlite3_free(msg);
        if (!failed && migration_code[v]) failed = migration_code[v](c, why, sizeof(why)) != 0;
        if (failed) {
            snprintf(err, errlen, "migration %d failed: %s", v + 1, why);
            conn_exec(c, "ROLLBACK");
            return -1;
        }
        char pv[64];
        snprintf(pv, sizeof(pv), "PRAGMA user_version=%d", v + 1);
        conn_exec(c, pv);
    }
    if (conn_exec(c, "COMMIT")) {
        snprintf(err, errlen, "migrate commit: %s", sqlite3_errmsg(c->db));
        conn_exec(c, "ROLLBACK");
        return -1;
    }
    if (version > 0 && version < NMIGRATIONS) {
        char ms[32];
        snprintf(ms, sizeof(ms), "%lld", (long long)((time_mono_us() - t0) / 1000));
        log_info("database schema migrated", "to", to, "ms", ms, NULL);
    }
    return 0;
}
