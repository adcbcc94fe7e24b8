/*
 * conn.c — one SQLite connection and its prepared-statement cache.  Every
 * connection runs WAL with synchronous=FULL (a commit is on disk when
 * sqlite3_step returns) and a busy timeout, since `loopd keys` may write
 * from another process.  The sub-journals of savepoints stay in memory up
 * to LD_STMT_JOURNAL_MEM, in one chunk (see store_open).
 * Statements are cached by SQL text with LRU eviction, so dynamic list
 * queries are prepared once per shape.
 */
#include "store/sqlite_int.h"
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

int conn_open(struct conn *c, const char *path, enum conn_mode mode, char *err, size_t errlen)
{
    memset(c, 0, sizeof(*c));
    int readonly = mode == CONN_RO;
    int flags = readonly ? SQLITE_OPEN_READONLY : (SQLITE_OPEN_READWRITE | SQLITE_OPEN_CREATE);
    flags |= SQLITE_OPEN_NOMUTEX; /* each connection has one owning thread */
    if (sqlite3_open_v2(path, &c->db, flags, mode == CONN_WRITER ? walvfs_name() : NULL) !=
        SQLITE_OK) {
        snprintf(err, errlen, "cannot open %s: %s", path,
                 c->db ? sqlite3_errmsg(c->db) : "out of memory");
        sqlite3_close(c->db);
        c->db = NULL;
        return -1;
    }
    sqlite3_busy_timeout(c->db, 5000);
    sqlite3_extended_result_codes(c->db, 1);
    const char *pragmas = readonly ? "PRAGMA foreign_keys=ON; PRAGMA cache_size=-16384;"
                                   : "PRAGMA journal_mode=WAL; PRAGMA synchronous=FULL; "
                                     "PRAGMA foreign_keys=ON; PRAGMA cache_size=-16384;";
    char *msg = NULL;
    if (sqlite3_exec(c->db, pragmas, NULL, NULL, &msg) != SQLITE_OK) {
        snprintf(err, errlen, "cannot configure %s: %s", path, msg ? msg : "?");
        sqlite3_free(msg);
        conn_close(c);
        return -1;
    }
    return 0;
}

void conn_close(struct conn *c)
{
    for (int i = 0; i < STMT_CACHE; i++) {
        sqlite3_finalize(c->cache[i].st);
        free(c->cache[i].sql);
    }
    sqlite3_finalize(c->begin);
    sqlite3_finalize(c->commit);
    sqlite3_close(c->db);
    free(c->deltas);
    memset(c, 0, sizeof(*c));
}

sqlite3_stmt *conn_stmt(struct conn *c, const char *sql)
{
    int victim = 0;
    c->tick++;
    c->nstmt++;
    if (c->snapshot && !c->in_txn) {
        /* a deferred BEGIN: the snapshot is taken by the first read, so
         * reads until conn_end_snapshot cost no locking syscalls */
        if (!c->begin)
            sqlite3_prepare_v3(c->db, "BEGIN", -1, SQLITE_PREPARE_PERSISTENT, &c->begin, NULL);
        if (c->begin && sqlite3_step(c->begin) == SQLITE_DONE) c->in_txn = 1;
        sqlite3_reset(c->begin);
    }
    for (int i = 0; i < STMT_CACHE; i++) {
        if (c->cache[i].sql && strcmp(c->cache[i].sql, sql) == 0) {
            c->cache[i].used = c->tick;
            sqlite3_reset(c->cache[i].st);
            sqlite3_clear_bindings(c->cache[i].st);
            return c->cache[i].st;
        }
        if (c->cache[i].used < c->cache[victim].used) victim = i;
    }
    sqlite3_stmt *st = NULL;
    if (sqlite3_prepare_v3(c->db, sql, -1, SQLITE_PREPARE_PERSISTENT, &st, NULL) != SQLITE_OK) {
        fprintf(stderr, "level=error msg=\"prepare failed\" err=\"%s\"\n", sqlite3_errmsg(c->db));
        return NULL;
    }
    sqlite3_finalize(c->cache[victim].st);
    free(c->cache[victim].sql);
    c->cache[victim].sql = strdup(sql);
    c->cache[victim].st = st;
    c->cache[victim].used = c->tick;
    return st;
}

void conn_end_snapshot(struct conn *c)
{
    if (!c->in_txn) return;
    for (sqlite3_stmt *s = sqlite3_next_stmt(c->db, NULL); s; s = sqlite3_next_stmt(c->db, s))
        if (s != c->commit && sqlite3_stmt_busy(s)) sqlite3_reset(s);
    if (!c->commit)
        sqlite3_prepare_v3(c->db, "COMMIT", -1, SQLITE_PREPARE_PERSISTENT, &c->commit, NULL);
    if (!c->commit || sqlite3_step(c->commit) != SQLITE_DONE)
        sqlite3_exec(c->db, "ROLLBACK", NULL, NULL, NULL); /* a read-only snapshot: same effect */
    sqlite3_reset(c->commit);
    c->in_txn = 0;
}

int conn_exec(struct conn *c, const char *sql)
{
    c->nstmt++;
    return sqlite3_exec(c->db, sql, NULL, NULL, NULL) == SQLITE_OK ? 0 : -1;
}

int conn_step(struct conn *c, const char *sql)
{
    sqlite3_stmt *st = conn_stmt(c, sql);
    if (!st) return -1;
    int rc = sqlite3_step(st);
    sqlite3_reset(st);
    return rc == SQLITE_DONE || rc == SQLITE_ROW ? 0 : -1;
}

void bind_text(sqlite3_stmt *s, int i, const char *v)
{
    sqlite3_bind_text(s, i, v ? v : "", -1, SQLITE_STATIC);
}

void bind_text_opt(sqlite3_stmt *s, int i, const char *v)
{
    if (v && *v)
        sqlite3_bind_text(s, i, v, -1, SQLITE_STATIC);
    else
        sqlite3_bind_null(s, i);
}

const char *col_text(sqlite3_stmt *s, int i, struct arena *a)
{
    const unsigned char *t = sqlite3_column_text(s, i);
    if (!t) return NULL;
    return arena_strndup(a, (const char *)t, (size_t)sqlite3_column_bytes(s, i));
}

void col_copy(sqlite3_stmt *s, int i, char *out, size_t n)
{
    const unsigned char *t = sqlite3_column_text(s, i);
    size_t len = t ? (size_t)sqlite3_column_bytes(s, i) : 0;
    if (!n) return;
    if (len >= n) len = n - 1; /* truncated, as snprintf would */
    memcpy(out, t ? (const char *)t : "", len);
    out[len] = 0;
}

void read_session(sqlite3_stmt *s, struct arena *a, struct session_rec *r)
{
    memset(r, 0, sizeof(*r));
    col_copy(s, 0, r->id, sizeof(r->id));
    col_copy(s, 1, r->org_id, sizeof(r->org_id));
    col_copy(s, 2, r->workspace_id, sizeof(r->workspace_id));
    col_copy(s, 3, r->harness_id, sizeof(r->harness_id));
    col_copy(s, 4, r->agent_id, sizeof(r->agent_id));
    col_copy(s, 5, r->owner_principal_id, sizeof(r->owner_principal_id));
    col_copy(s, 6, r->owner_user_id, sizeof(r->owner_user_id));
    col_copy(s, 7, r->model_id, sizeof(r->model_id));
    col_copy(s, 8, r->agent_identity_id, sizeof(r->agent_identity_id));
    r->title = col_text(s, 9, a);
    r->goal = col_text(s, 10, a);
    r->locale = col_text(s, 11, a);
    r->preview = col_text(s, 12, a);
    r->output_preview = col_text(s, 13, a);
    r->tags = col_text(s, 14, a);
    r->extra = col_text(s, 15, a);
    r->features = col_text(s, 16, a);
    r->singleton_key = col_text(s, 17, a);
    r->status = sqlite3_column_int(s, 18);
    r->outcome = sqlite3_column_int(s, 19);
    col_copy(s, 20, r->source, sizeof(r->source));
    r->created_at = sqlite3_column_int64(s, 21);
    r->updated_at = sqlite3_column_int64(s, 22);
    r->started_at = sqlite3_column_int64(s, 23);
    r->last_activity_at = sqlite3_column_int64(s, 24);
    r->in_tokens = sqlite3_column_int64(s, 25);
    r->out_tokens = sqlite3_column_int64(s, 26);
    r->cache_read_tokens = sqlite3_column_int64(s, 27);
    r->cache_creation_tokens = sqlite3_column_int64(s, 28);
    r->version = sqlite3_column_int64(s, 29);
    col_copy(s, 30, r->turn_id, sizeof(r->turn_id));
    r->pinned = -1;
    if (!r->tags) r->tags = "[]";
    if (!r->extra) r->extra = "{}";
}
