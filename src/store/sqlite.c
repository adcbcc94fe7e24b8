/*
 * sqlite.c — the SQLite store: open and migrate, bootstrap of orgs, users
 * and keys, and the read path.  Reads use `rd`, a read-only connection
 * owned by the event-loop thread; in WAL mode a read sees the last commit
 * and never waits for the writer.  Administrative writes (bootstrap, keys)
 * run at start or from the `loopd keys` command on a short-lived
 * connection of their own, never on the loop.
 */
#include "core/builtins.h"
#include "limits.h"
#include "core/id.h"
#include "store/sqlite_int.h"
#include "util/sha256.h"
#include "util/timeutil.h"
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

struct store *store_open(const char *dir, char *err, size_t errlen)
{
    /* Only possible before SQLite initializes:
     *  - SQLite's memory statistics take a global mutex on every
     *    allocation; loopd reads none of them.
     *  - The writer runs each op of a batch inside a SAVEPOINT, whose
     *    sub-journal keeps the original of every page the op changes (and
     *    statements with triggers keep one of their own).  Kept in memory
     *    (temp_store=MEMORY) that journal is a list of 1 KiB chunks: five
     *    malloc/free pairs per page, beyond glibc's per-thread cache.
     *    With a spill size the in-memory part is one chunk of that size,
     *    and a journal past it (an op that rewrites more than 29 pages:
     *    deleting a session with a long log) goes on in a temporary file
     *    (SQLite's temporary directory: $SQLITE_TMPDIR, $TMPDIR, /var/tmp,
     *    /usr/tmp or /tmp; mode 0600, unlinked when opened).  Measured
     *    with callgrind over 3,200 POSTs: 181k instructions per POST before,
     *    163k after (-10 %). */
    static int configured;
    if (!configured) {
        sqlite3_config(SQLITE_CONFIG_MEMSTATUS, 0);
        sqlite3_config(SQLITE_CONFIG_STMTJRNL_SPILL, LD_STMT_JOURNAL_MEM);
        configured = 1;
    }
    if (walvfs_register() != SQLITE_OK) {
        snprintf(err, errlen, "cannot register the loopd-wal SQLite VFS");
        return NULL;
    }
    struct store *st = xcalloc(1, sizeof(*st));
    snprintf(st->path, sizeof(st->path), "%s/loopd.db", dir);
    struct conn mig;
    if (conn_open(&mig, st->path, CONN_RW, err, errlen)) goto fail;
    int rc = schema_migrate(&mig, err, errlen);
    conn_close(&mig);
    if (rc) goto fail;
    st->ac = authcache_open(dir);
    if (conn_open(&st->rd, st->path, CONN_RO, err, errlen)) goto fail;
    st->rd.snapshot = 1;
    st->w = writer_start(st->path, err, errlen);
    if (!st->w) {
        conn_close(&st->rd);
        goto fail;
    }
    return st;
fail:
    authcache_close(st->ac);
    free(st);
    return NULL;
}

static void harness_cache_free(struct store *st);

void store_close(struct store *st)
{
    if (!st) return;
    writer_stop(st->w);
    conn_close(&st->rd);
    harness_cache_free(st);
    authcache_close(st->ac);
    free(st);
}

int store_notify_fd(struct store *st)
{
    return writer_fd(st->w);
}

enum ld_err store_submit(struct store *st, struct store_op *op)
{
    return writer_submit(st->w, op);
}

void store_drain(struct store *st)
{
    /* what just committed must be visible to whoever hears of it */
    conn_end_snapshot(&st->rd);
    st->writes_seen++;
    writer_drain(st->w);
}

uint64_t store_write_generation(const struct store *st)
{
    return st->writes_seen;
}

void store_end_reads(struct store *st)
{
    conn_end_snapshot(&st->rd);
    writer_release(st->w);
}

long store_pending(struct store *st)
{
    return writer_pending(st->w);
}

void store_flush(struct store *st)
{
    st->writes_seen++; /* before the `done`s it runs, and after */
    writer_flush(st->w);
    conn_end_snapshot(&st->rd);
    st->writes_seen++;
}

void store_quiesce(struct store *st)
{
    writer_quiesce(st->w);
}

void store_set_queue_max(struct store *st, long n)
{
    writer_set_queue_max(st->w, n);
}

void store_metrics(struct store *st, struct store_metrics *m)
{
    writer_metrics(st->w, m);
    authcache_counts(st->ac, &m->auth_hits, &m->auth_misses);
}

/* ---- administrative writes on a connection of their own ---- */

static int admin_open(struct store *st, struct conn *c)
{
    char err[256];
    if (conn_open(c, st->path, CONN_RW, err, sizeof(err))) {
        fprintf(stderr, "level=error msg=\"%s\"\n", err);
        return -1;
    }
    return 0;
}

static int exec_bind(struct conn *c, const char *sql, int n, const char **vals)
{
    sqlite3_stmt *s = conn_stmt(c, sql);
    if (!s) return -1;
    for (int i = 0; i < n; i++)
        bind_text_opt(s, i + 1, vals[i]);
    int rc = sqlite3_step(s);
    sqlite3_reset(s);
    return rc == SQLITE_DONE || rc == SQLITE_ROW ? 0 : -1;
}

static int seed_org(struct conn *c, const char *org_id, const char *name, const char *user_id,
                    const char *principal_id, int fixed)
{
    char now[24];
    snprintf(now, sizeof(now), "%lld", (long long)time_now_us());
    const char *o[] = {org_id, name, now};
    if (exec_bind(c, "INSERT OR IGNORE INTO orgs(id, name, created_at) VALUES(?,?,?)", 3, o))
        return -1;
    char email[80];
    snprintf(email, sizeof(email), "%s@local",
             strcmp(user_id, DEFAULT_USER_ID) == 0 ? "anonymous" : user_id);
    const char *u[] = {user_id, email,
                       strcmp(user_id, DEFAULT_USER_ID) == 0 ? "Anonymous" : "Admin", now};
    if (exec_bind(c, "INSERT OR IGNORE INTO users(id, email, name, created_at) VALUES(?,?,?,?)", 4,
                  u))
        return -1;
    const char *m[] = {org_id, user_id, principal_id};
    if (exec_bind(c,
                  "INSERT OR IGNORE INTO members(org_id, user_id, role, principal_id)"
                  " VALUES(?,?,'owner',?)",
                  3, m))
        return -1;
    /* built-in harnesses, parents first (the table is ordered so) */
    for (int i = 0; i < builtin_harness_count; i++) {
        const struct builtin_harness *h = &builtin_harnesses[i];
        char id[ID_MAX], parent[ID_MAX] = "";
        sqlite3_stmt *s = conn_stmt(c, "SELECT id FROM harnesses WHERE org_id = ? AND name = ?");
        bind_text(s, 1, org_id);
        bind_text(s, 2, h->name);
        int have = sqlite3_step(s) == SQLITE_ROW;
        sqlite3_reset(s);
        if (have) continue;
        if (fixed)
            str_copy(id, sizeof(id), h->default_org_id);
        else
            id_new("harness", id);
        if (h->parent) {
            s = conn_stmt(c, "SELECT id FROM harnesses WHERE org_id = ? AND name = ?");
            bind_text(s, 1, org_id);
            bind_text(s, 2, h->parent);
            if (sqlite3_step(s) == SQLITE_ROW) col_copy(s, 0, parent, sizeof(parent));
            sqlite3_reset(s);
        }
        const char *v[] = {id,
                           org_id,
                           h->name,
                           h->display_name,
                           h->description,
                           h->system_prompt,
                           parent,
                           h->capabilities,
                           h->tags,
                           now,
                           now};
        if (exec_bind(c,
                      "INSERT INTO harnesses(id, org_id, name, display_name, description,"
                      " system_prompt, parent_id, capabilities, tags, is_built_in,"
                      " created_at, updated_at) VALUES(?,?,?,?,?,?,?,?,?,1,?,?)",
                      11, v))
            return -1;
    }
    return 0;
}

static void principal_for(const char *user_id, int fixed, char out[ID_MAX])
{
    if (fixed) {
        id_with_hex("principal", "00000000000000000000000000000001", out);
        return;
    }
    id_new("principal", out);
}

static enum ld_err insert_key(struct conn *c, const char *org_id, const char *user_id,
                              const char *name, const char *token, char key_id[ID_MAX])
{
    char hash[65], now[24], prefix[16];
    sha256_hex(token, strlen(token), hash);
    snprintf(prefix, sizeof(prefix), "%.12s", token);
    snprintf(now, sizeof(now), "%lld", (long long)time_now_us());
    id_new("apikey", key_id);
    const char *v[] = {key_id, hash, prefix, name, user_id, org_id, now};
    if (exec_bind(c,
                  "INSERT INTO api_keys(id, hash, prefix, name, user_id, org_id, created_at)"
                  " VALUES(?,?,?,?,?,?,?)",
                  7, v))
        return LD_E_CONFLICT;
    return LD_OK;
}

static void new_token(char *out, size_t n)
{
    char hex[49];
    random_hex(hex, 24);
    snprintf(out, n, "evr_pat_%s", hex);
}

enum ld_err store_bootstrap(struct store *st, const char *bootstrap_key, char *key_out,
                            size_t keylen)
{
    struct conn c;
    key_out[0] = 0;
    if (admin_open(st, &c)) return LD_E_STORAGE;
    enum ld_err e = LD_E_STORAGE;
    if (conn_exec(&c, "BEGIN IMMEDIATE")) goto out;
    char principal[ID_MAX];
    principal_for(DEFAULT_USER_ID, 1, principal);
    if (seed_org(&c, DEFAULT_ORG_ID, "Default", DEFAULT_USER_ID, principal, 1)) goto rollback;
    sqlite3_stmt *s = conn_stmt(&c, "SELECT count(*) FROM api_keys");
    int nkeys = s && sqlite3_step(s) == SQLITE_ROW ? sqlite3_column_int(s, 0) : 0;
    if (s) sqlite3_reset(s);
    if (bootstrap_key && *bootstrap_key) {
        /* a given bootstrap key is (re)installed if absent, so scripts can
         * rely on it across restarts */
        char hash[65];
        sha256_hex(bootstrap_key, strlen(bootstrap_key), hash);
        s = conn_stmt(&c, "SELECT 1 FROM api_keys WHERE hash = ?");
        bind_text(s, 1, hash);
        int have = sqlite3_step(s) == SQLITE_ROW;
        sqlite3_reset(s);
        if (!have) {
            char kid[ID_MAX];
            if (insert_key(&c, DEFAULT_ORG_ID, DEFAULT_USER_ID, "bootstrap", bootstrap_key, kid))
                goto rollback;
            str_copy(key_out, keylen, bootstrap_key);
        }
    } else if (nkeys == 0) {
        char tok[80], kid[ID_MAX];
        new_token(tok, sizeof(tok));
        if (insert_key(&c, DEFAULT_ORG_ID, DEFAULT_USER_ID, "admin", tok, kid)) goto rollback;
        str_copy(key_out, keylen, tok);
    }
    if (conn_exec(&c, "COMMIT")) goto rollback;
    e = LD_OK;
    goto out;
rollback:
    conn_exec(&c, "ROLLBACK");
    key_out[0] = 0;
out:
    conn_close(&c);
    return e;
}

enum ld_err store_org_create(struct store *st, const char *name, char org_out[ID_MAX],
                             char user_out[40])
{
    struct conn c;
    if (admin_open(st, &c)) return LD_E_STORAGE;
    enum ld_err e = LD_E_STORAGE;
    char principal[ID_MAX];
    id_new("org", org_out);
    uuid_v4_str(user_out);
    principal_for(user_out, 0, principal);
    if (conn_exec(&c, "BEGIN IMMEDIATE") == 0) {
        if (seed_org(&c, org_out, name, user_out, principal, 0) == 0 &&
            conn_exec(&c, "COMMIT") == 0)
            e = LD_OK;
        else
            conn_exec(&c, "ROLLBACK");
    }
    conn_close(&c);
    return e;
}

enum ld_err store_key_create(struct store *st, const char *org_id, const char *user_id,
                             const char *name, const char *token_or_null, char *token_out,
                             size_t toklen, char key_id_out[ID_MAX])
{
    struct conn c;
    if (admin_open(st, &c)) return LD_E_STORAGE;
    char tok[128];
    if (token_or_null)
        str_copy(tok, sizeof(tok), token_or_null);
    else
        new_token(tok, sizeof(tok));
    const char *v[] = {org_id, user_id};
    sqlite3_stmt *s = conn_stmt(&c, "SELECT 1 FROM members WHERE org_id = ? AND user_id = ?");
    bind_text(s, 1, v[0]);
    bind_text(s, 2, v[1]);
    int member = sqlite3_step(s) == SQLITE_ROW;
    sqlite3_reset(s);
    enum ld_err e =
        member ? insert_key(&c, org_id, user_id, name, tok, key_id_out) : LD_E_NOT_FOUND;
    if (e == LD_OK) str_copy(token_out, toklen, tok);
    conn_close(&c);
    return e;
}

enum ld_err store_key_revoke(struct store *st, const char *key_id)
{
    struct conn c;
    if (admin_open(st, &c)) return LD_E_STORAGE;
    sqlite3_stmt *s = conn_stmt(&c, "UPDATE api_keys SET revoked_at = ? WHERE id = ?"
                                    " AND revoked_at IS NULL");
    sqlite3_bind_int64(s, 1, time_now_us());
    bind_text(s, 2, key_id);
    int rc = sqlite3_step(s);
    int n = sqlite3_changes(c.db);
    sqlite3_reset(s);
    conn_close(&c);
    if (rc != SQLITE_DONE) return LD_E_STORAGE;
    if (n != 1) return LD_E_NOT_FOUND;
    authcache_bump(st->ac); /* committed: a running server forgets the key */
    return LD_OK;
}

void store_key_list(struct store *st, void (*fn)(const char *json, void *ud), void *ud)
{
    struct conn c;
    if (admin_open(st, &c)) return;
    sqlite3_stmt *s = conn_stmt(&c, "SELECT id, org_id, user_id, prefix, name, created_at,"
                                    " revoked_at FROM api_keys ORDER BY created_at");
    while (s && sqlite3_step(s) == SQLITE_ROW) {
        struct buf b;
        struct jw w;
        buf_init(&b, 4096);
        jw_init(&w, &b);
        jw_obj(&w);
        jw_kstr(&w, "key_id", (const char *)sqlite3_column_text(s, 0));
        jw_kstr(&w, "org_id", (const char *)sqlite3_column_text(s, 1));
        jw_kstr(&w, "user_id", (const char *)sqlite3_column_text(s, 2));
        jw_kstr(&w, "prefix", (const char *)sqlite3_column_text(s, 3));
        jw_kstr(&w, "name", (const char *)sqlite3_column_text(s, 4));
        jw_ktime(&w, "created_at", sqlite3_column_int64(s, 5));
        jw_kbool(&w, "revoked", sqlite3_column_type(s, 6) != SQLITE_NULL);
        jw_end(&w);
        fn(b.data, ud);
        buf_free(&b);
    }
    if (s) sqlite3_reset(s);
    conn_close(&c);
}

/* ---- reads (loop thread) ---- */

enum ld_err store_principal(struct store *st, const char *org_id, const char *user_id,
                            struct principal *p)
{
    sqlite3_stmt *s = conn_stmt(&st->rd, "SELECT principal_id, role FROM members"
                                         " WHERE org_id = ? AND user_id = ?");
    if (!s) return LD_E_STORAGE;
    bind_text(s, 1, org_id);
    bind_text(s, 2, user_id);
    enum ld_err e = LD_E_NOT_FOUND;
    if (sqlite3_step(s) == SQLITE_ROW) {
        str_copy(p->org_id, sizeof(p->org_id), org_id);
        str_copy(p->user_id, sizeof(p->user_id), user_id);
        col_copy(s, 0, p->principal_id, sizeof(p->principal_id));
        p->is_admin = 1;
        e = LD_OK;
    }
    sqlite3_reset(s);
    return e;
}

enum ld_err store_auth(struct store *st, const char *token, const char *org_hint,
                       struct principal *p, char *detail, size_t dlen)
{
    char hash[65], stored[65] = "";
    if (authcache_get(st->ac, token, org_hint, p)) return LD_OK;
    sha256_hex(token, strlen(token), hash);
    /* the epoch before the lookup, and a read transaction begun after it:
     * a revocation committed before the epoch moved is seen by the query,
     * one committed later voids the entry (authcache.c) */
    uint64_t epoch = authcache_epoch(st->ac);
    conn_end_snapshot(&st->rd);
    /* one statement: the key, and the caller's membership in the org asked
     * for (X-Org-Id) or else the key's own org */
    sqlite3_stmt *s = conn_stmt(&st->rd, "SELECT k.hash, k.user_id, m.org_id, m.principal_id"
                                         " FROM api_keys k LEFT JOIN members m ON"
                                         " m.user_id = k.user_id AND m.org_id = coalesce(?2,"
                                         " k.org_id) WHERE k.hash = ?1 AND k.revoked_at IS NULL");
    if (!s) return LD_E_STORAGE;
    bind_text(s, 1, hash);
    bind_text_opt(s, 2, org_hint);
    int found = sqlite3_step(s) == SQLITE_ROW;
    int member = 0;
    if (found) {
        col_copy(s, 0, stored, sizeof(stored));
        member = sqlite3_column_type(s, 2) != SQLITE_NULL;
        memset(p, 0, sizeof(*p));
        col_copy(s, 1, p->user_id, sizeof(p->user_id));
        col_copy(s, 2, p->org_id, sizeof(p->org_id));
        col_copy(s, 3, p->principal_id, sizeof(p->principal_id));
        p->is_admin = 1;
    }
    sqlite3_reset(s);
    /* the index found the row by hash; compare again in constant time so
     * that no early-exit comparison of secrets happens anywhere */
    if (!found || !ct_equal(stored, hash, 64)) {
        snprintf(detail, dlen, "Invalid API key");
        return LD_E_UNAUTHORIZED;
    }
    if (!member) {
        snprintf(detail, dlen, "Organization not found");
        return LD_E_NOT_FOUND;
    }
    authcache_put(st->ac, token, org_hint, p, epoch);
    return LD_OK;
}

static const char *session_select(void)
{
    return "SELECT " SESSION_COLS ", EXISTS(SELECT 1 FROM pins p WHERE p.user_id = ?1"
           " AND p.session_id = s.id) FROM sessions s";
}

/* One session by a unique column ("s.id" or "s.singleton_key") in an org. */
static enum ld_err session_one(struct store *st, int by_key, const char *org_id, const char *value,
                               const char *user_id, struct arena *a, struct session_rec *out)
{
    static char sql[2][1024];
    char *q = sql[by_key];
    if (!q[0])
        snprintf(q, sizeof(sql[0]), "%s WHERE %s = ?2 AND s.org_id = ?3", session_select(),
                 by_key ? "s.singleton_key" : "s.id");
    sqlite3_stmt *s = conn_stmt(&st->rd, q);
    if (!s) return LD_E_STORAGE;
    bind_text(s, 1, user_id);
    bind_text(s, 2, value);
    bind_text(s, 3, org_id);
    enum ld_err e = LD_E_NOT_FOUND;
    if (sqlite3_step(s) == SQLITE_ROW) {
        read_session(s, a, out);
        out->pinned = sqlite3_column_int(s, SESSION_NCOLS);
        e = LD_OK;
    }
    sqlite3_reset(s);
    return e;
}

enum ld_err store_session_get(struct store *st, const char *org_id, const char *id,
                              const char *user_id, struct arena *a, struct session_rec *out)
{
    return session_one(st, 0, org_id, id, user_id, a, out);
}

enum ld_err store_session_by_singleton(struct store *st, const char *org_id, const char *key,
                                       const char *user_id, struct arena *a,
                                       struct session_rec *out)
{
    return session_one(st, 1, org_id, key, user_id, a, out);
}

/* A LIKE pattern matching `text` anywhere, with %, _ and \ escaped. */
static char *like_pattern(struct arena *a, const char *text)
{
    size_t n = strlen(text);
    char *like = arena_alloc(a, 2 * n + 3), *p = like;
    *p++ = '%';
    for (const char *c = text; *c; c++) {
        if (*c == '%' || *c == '_' || *c == '\\') *p++ = '\\';
        *p++ = *c;
    }
    *p++ = '%';
    *p = 0;
    return like;
}

/* Builds the WHERE clause of a session list from the filter.  Only fixed
 * SQL text is appended; every value is a numbered parameter. */
static void list_where(struct buf *q, const struct session_filter *f)
{
    buf_puts(q, " WHERE s.org_id = ?2");
    if (f->agent_id) buf_puts(q, " AND s.agent_id = ?3");
    if (f->search) buf_puts(q, " AND s.title LIKE ?4 ESCAPE '\\'");
    if (f->status_mask || f->outcome_mask) {
        buf_puts(q, " AND (0");
        for (int i = 0; i < SS__COUNT; i++)
            if (f->status_mask & (1 << i)) buf_printf(q, " OR s.status = %d", i);
        for (int i = 0; i < 4; i++)
            if (f->outcome_mask & (1 << i))
                buf_printf(q, " OR (s.status IN (%d,%d) AND s.outcome = %d)", SS_STARTED, SS_IDLE,
                           i);
        buf_puts(q, ")");
    }
    if (f->created_after) buf_puts(q, " AND s.created_at > ?5");
    if (f->created_before) buf_puts(q, " AND s.created_at < ?6");
    if (f->pinned)
        buf_puts(q, f->pinned > 0
                        ? " AND s.id IN (SELECT session_id FROM pins WHERE user_id = ?1)"
                        : " AND s.id NOT IN (SELECT session_id FROM pins WHERE user_id = ?1)");
}

static void list_bind(sqlite3_stmt *s, const char *org_id, const struct session_filter *f,
                      const char *like)
{
    bind_text(s, 2, org_id);
    if (f->agent_id) bind_text(s, 3, f->agent_id);
    if (f->search) bind_text(s, 4, like);
    if (f->created_after) sqlite3_bind_int64(s, 5, f->created_after);
    if (f->created_before) sqlite3_bind_int64(s, 6, f->created_before);
}

/* A page of the session list: `head` (the columns, FROM sessions s), the
 * filter, the order, LIMIT and OFFSET, bound and ready to step. */
static sqlite3_stmt *list_page_stmt(struct store *st, struct buf *q, const char *head,
                                    const struct session_filter *f, const char *org_id,
                                    const char *user_id, const char *like, long limit, long offset)
{
    buf_reset(q);
    buf_puts(q, head);
    list_where(q, f);
    buf_puts(q, f->order_activity ? " ORDER BY s.last_activity_at DESC, s.seq DESC"
                                  : " ORDER BY s.created_at DESC, s.seq DESC");
    buf_puts(q, " LIMIT ?7 OFFSET ?8");
    sqlite3_stmt *s = conn_stmt(&st->rd, q->data);
    if (!s) return NULL;
    bind_text(s, 1, user_id);
    list_bind(s, org_id, f, like);
    sqlite3_bind_int64(s, 7, limit);
    sqlite3_bind_int64(s, 8, offset);
    return s;
}

enum ld_err store_session_list(struct store *st, const char *org_id, const char *user_id,
                               const struct session_filter *f, struct arena *a,
                               int (*fn)(const struct session_rec *s, void *ud), void *ud,
                               int64_t *total)
{
    char *like = f->search ? like_pattern(a, f->search) : NULL;
    int unfiltered = !f->agent_id && !f->search && !f->status_mask && !f->outcome_mask &&
                     !f->created_after && !f->created_before && !f->pinned;
    struct buf q;
    buf_init(&q, 4096);
    sqlite3_stmt *s;
    /* total */
    if (unfiltered) {
        s = conn_stmt(&st->rd, "SELECT coalesce(sum(n), 0) FROM session_counts WHERE org_id = ?");
        if (!s) goto fail;
        bind_text(s, 1, org_id);
    } else {
        buf_puts(&q, "SELECT count(*) FROM sessions s");
        list_where(&q, f);
        s = conn_stmt(&st->rd, q.data);
        if (!s) goto fail;
        bind_text(s, 1, user_id);
        list_bind(s, org_id, f, like);
    }
    *total = sqlite3_step(s) == SQLITE_ROW ? sqlite3_column_int64(s, 0) : 0;
    sqlite3_reset(s);
    /* page */
    s = list_page_stmt(st, &q, session_select(), f, org_id, user_id, like, f->limit, f->offset);
    if (!s) goto fail;
    /* each row in an arena emptied after it: a page may be 100 sessions
     * of 1 MiB */
    struct arena ra;
    arena_init(&ra);
    long k = 0;
    int ids_only = 0;
    while (k < f->limit && !ids_only && sqlite3_step(s) == SQLITE_ROW) {
        struct session_rec r;
        read_session(s, &ra, &r);
        r.pinned = sqlite3_column_int(s, SESSION_NCOLS);
        ids_only = fn(&r, ud);
        arena_reset(&ra);
        k++;
    }
    arena_free(&ra);
    sqlite3_reset(s);
    if (ids_only && k < f->limit) {
        /* fn wants only ids now: a query of ids alone, which does not
         * read the rows (SQLite reads every selected column of a row) */
        s = list_page_stmt(st, &q, "SELECT s.id FROM sessions s", f, org_id, user_id, like,
                           f->limit - k, f->offset + k);
        if (!s) goto fail;
        while (sqlite3_step(s) == SQLITE_ROW) {
            struct session_rec r;
            memset(&r, 0, sizeof(r));
            col_copy(s, 0, r.id, sizeof(r.id));
            fn(&r, ud);
        }
        sqlite3_reset(s);
    }
    buf_free(&q);
    return LD_OK;
fail:
    buf_free(&q);
    return LD_E_STORAGE;
}

enum ld_err store_session_stats(struct store *st, const char *org_id, struct session_stats *out)
{
    memset(out, 0, sizeof(*out));
    sqlite3_stmt *s = conn_stmt(&st->rd, "SELECT status, n FROM session_counts WHERE org_id = ?");
    if (!s) return LD_E_STORAGE;
    bind_text(s, 1, org_id);
    while (sqlite3_step(s) == SQLITE_ROW) {
        int k = sqlite3_column_int(s, 0);
        int64_t n = sqlite3_column_int64(s, 1);
        if (k >= 0 && k < SS__COUNT) out->n[k] = n;
        out->total += n;
    }
    sqlite3_reset(s);
    return LD_OK;
}

#define AGENT_COLS                                                                                 \
    "a.id, a.org_id, a.name, a.display_name, a.description, a.system_prompt, a.harness_id,"        \
    " a.default_model_id, a.tags, a.extra, a.archived_at, a.created_at, a.updated_at,"             \
    " a.version"

static void read_agent(sqlite3_stmt *s, struct arena *a, struct agent_rec *r)
{
    memset(r, 0, sizeof(*r));
    col_copy(s, 0, r->id, sizeof(r->id));
    col_copy(s, 1, r->org_id, sizeof(r->org_id));
    r->name = col_text(s, 2, a);
    r->display_name = col_text(s, 3, a);
    r->description = col_text(s, 4, a);
    r->system_prompt = col_text(s, 5, a);
    col_copy(s, 6, r->harness_id, sizeof(r->harness_id));
    col_copy(s, 7, r->default_model_id, sizeof(r->default_model_id));
    r->tags = col_text(s, 8, a);
    r->extra = col_text(s, 9, a);
    r->archived = sqlite3_column_type(s, 10) != SQLITE_NULL;
    r->archived_at = sqlite3_column_int64(s, 10);
    r->created_at = sqlite3_column_int64(s, 11);
    r->updated_at = sqlite3_column_int64(s, 12);
    r->version = sqlite3_column_int64(s, 13);
    r->session_count = -1;
    if (!r->tags) r->tags = "[]";
    if (!r->extra) r->extra = "{}";
}

/* kept by triggers (schema.c, migration 4) */
#define AGENT_SESSIONS                                                                             \
    "coalesce((SELECT n FROM resource_session_counts WHERE resource_id = a.id), 0)"

enum ld_err store_agent_get(struct store *st, const char *org_id, const char *id_or_name,
                            struct arena *a, struct agent_rec *out)
{
    sqlite3_stmt *s = conn_stmt(&st->rd, "SELECT " AGENT_COLS ", " AGENT_SESSIONS
                                         " FROM agents a WHERE a.org_id = ?1 AND"
                                         " (a.id = ?2 OR a.name = ?2)");
    if (!s) return LD_E_STORAGE;
    bind_text(s, 1, org_id);
    bind_text(s, 2, id_or_name);
    enum ld_err e = LD_E_NOT_FOUND;
    if (sqlite3_step(s) == SQLITE_ROW) {
        read_agent(s, a, out);
        out->session_count = sqlite3_column_int64(s, 14);
        e = LD_OK;
    }
    sqlite3_reset(s);
    return e;
}

enum ld_err store_agent_list(struct store *st, const char *org_id, const char *search,
                             int include_archived, long offset, long limit, struct arena *a,
                             int (*fn)(const struct agent_rec *ag, void *ud), void *ud,
                             int64_t *total)
{
    char *like = search ? like_pattern(a, search) : NULL;
    const char *where = " WHERE a.org_id = ?1 AND (?2 OR a.archived_at IS NULL) AND (?3 IS NULL"
                        " OR a.name LIKE ?3 ESCAPE '\\' OR a.display_name LIKE ?3 ESCAPE '\\')";
    char sql[1024];
    snprintf(sql, sizeof(sql), "SELECT count(*) FROM agents a%s", where);
    sqlite3_stmt *s = conn_stmt(&st->rd, sql);
    if (!s) return LD_E_STORAGE;
    bind_text(s, 1, org_id);
    sqlite3_bind_int(s, 2, include_archived);
    bind_text_opt(s, 3, like);
    *total = sqlite3_step(s) == SQLITE_ROW ? sqlite3_column_int64(s, 0) : 0;
    sqlite3_reset(s);
    snprintf(sql, sizeof(sql),
             "SELECT " AGENT_COLS ", " AGENT_SESSIONS " FROM agents a%s"
             " ORDER BY a.created_at DESC, a.id DESC"
             " LIMIT ?4 OFFSET ?5",
             where);
    s = conn_stmt(&st->rd, sql);
    if (!s) return LD_E_STORAGE;
    bind_text(s, 1, org_id);
    sqlite3_bind_int(s, 2, include_archived);
    bind_text_opt(s, 3, like);
    sqlite3_bind_int64(s, 4, limit);
    sqlite3_bind_int64(s, 5, offset);
    struct arena ra; /* emptied after each row, as for sessions */
    arena_init(&ra);
    int ids_only = 0; /* as for sessions */
    for (long k = 0; k < limit && sqlite3_step(s) == SQLITE_ROW; k++) {
        struct agent_rec ag;
        if (ids_only) {
            memset(&ag, 0, sizeof(ag));
            col_copy(s, 0, ag.id, sizeof(ag.id));
        } else {
            read_agent(s, &ra, &ag);
            ag.session_count = sqlite3_column_int64(s, 14);
        }
        ids_only |= fn(&ag, ud);
        arena_reset(&ra);
    }
    arena_free(&ra);
    sqlite3_reset(s);
    return LD_OK;
}

#define HARNESS_COLS                                                                               \
    "id, org_id, parent_id, default_model_id, name, display_name, description,"                    \
    " system_prompt, capabilities, tags, is_built_in, created_at, updated_at"

/* kept by triggers (schema.c, migration 4), read each time: the harness
 * itself is cached, its count changes */
int64_t store_harness_sessions(struct store *st, const char *id)
{
    sqlite3_stmt *s = conn_stmt(&st->rd, "SELECT n FROM resource_session_counts"
                                         " WHERE resource_id = ?");
    if (!s) return 0;
    bind_text(s, 1, id);
    int64_t n = sqlite3_step(s) == SQLITE_ROW ? sqlite3_column_int64(s, 0) : 0;
    sqlite3_reset(s);
    return n;
}

static void read_harness(sqlite3_stmt *s, struct arena *a, struct harness_rec *r)
{
    memset(r, 0, sizeof(*r));
    col_copy(s, 0, r->id, sizeof(r->id));
    col_copy(s, 1, r->org_id, sizeof(r->org_id));
    col_copy(s, 2, r->parent_id, sizeof(r->parent_id));
    col_copy(s, 3, r->default_model_id, sizeof(r->default_model_id));
    r->name = col_text(s, 4, a);
    r->display_name = col_text(s, 5, a);
    r->description = col_text(s, 6, a);
    r->system_prompt = col_text(s, 7, a);
    r->capabilities = col_text(s, 8, a);
    r->tags = col_text(s, 9, a);
    r->is_built_in = sqlite3_column_int(s, 10);
    r->created_at = sqlite3_column_int64(s, 11);
    r->updated_at = sqlite3_column_int64(s, 12);
}

static char *dup_opt(const char *s)
{
    return s ? xstrdup(s) : NULL;
}

enum ld_err store_harness_get(struct store *st, const char *org_id, const char *id_or_name,
                              struct arena *a, struct harness_rec *out)
{
    for (int i = 0; i < st->nhcache; i++) {
        struct harness_cached *h = &st->hcache[i];
        if (strcmp(h->key, id_or_name) == 0 && strcmp(h->org_id, org_id) == 0) {
            *out = h->rec; /* its strings live as long as the store */
            return LD_OK;
        }
    }
    sqlite3_stmt *s = conn_stmt(&st->rd, "SELECT " HARNESS_COLS " FROM harnesses WHERE"
                                         " org_id = ?1 AND (id = ?2 OR name = ?2)");
    if (!s) return LD_E_STORAGE;
    bind_text(s, 1, org_id);
    bind_text(s, 2, id_or_name);
    enum ld_err e = LD_E_NOT_FOUND;
    if (sqlite3_step(s) == SQLITE_ROW) {
        read_harness(s, a, out);
        e = LD_OK;
    }
    sqlite3_reset(s);
    if (e == LD_OK && st->nhcache < HARNESS_CACHE && strlen(org_id) < ID_MAX &&
        strlen(id_or_name) < sizeof(st->hcache[0].key)) {
        struct harness_cached *h = &st->hcache[st->nhcache++];
        str_copy(h->org_id, sizeof(h->org_id), org_id);
        str_copy(h->key, sizeof(h->key), id_or_name);
        h->rec = *out;
        h->rec.name = dup_opt(out->name);
        h->rec.display_name = dup_opt(out->display_name);
        h->rec.description = dup_opt(out->description);
        h->rec.system_prompt = dup_opt(out->system_prompt);
        h->rec.capabilities = dup_opt(out->capabilities);
        h->rec.tags = dup_opt(out->tags);
    }
    return e;
}

static void harness_cache_free(struct store *st)
{
    for (int i = 0; i < st->nhcache; i++) {
        struct harness_rec *r = &st->hcache[i].rec;
        free((char *)r->name);
        free((char *)r->display_name);
        free((char *)r->description);
        free((char *)r->system_prompt);
        free((char *)r->capabilities);
        free((char *)r->tags);
    }
    st->nhcache = 0;
}

enum ld_err store_harness_list(struct store *st, const char *org_id, const char *search,
                               struct arena *a, struct harness_rec **rows, int *nrows)
{
    sqlite3_stmt *s = conn_stmt(&st->rd, "SELECT " HARNESS_COLS ", coalesce((SELECT n FROM"
                                         " resource_session_counts WHERE resource_id = id), 0)"
                                         " FROM harnesses WHERE org_id = ?1 AND (?2 IS NULL OR"
                                         " instr(lower(name), lower(?2)) > 0)"
                                         " ORDER BY created_at, name LIMIT 1000");
    if (!s) return LD_E_STORAGE;
    bind_text(s, 1, org_id);
    bind_text_opt(s, 2, search);
    int cap = 16;
    *rows = arena_alloc(a, sizeof(struct harness_rec) * (size_t)cap);
    *nrows = 0;
    while (sqlite3_step(s) == SQLITE_ROW) {
        if (*nrows == cap) {
            struct harness_rec *n = arena_alloc(a, sizeof(struct harness_rec) * (size_t)cap * 2);
            memcpy(n, *rows, sizeof(struct harness_rec) * (size_t)cap);
            *rows = n;
            cap *= 2;
        }
        read_harness(s, a, &(*rows)[*nrows]);
        (*rows)[(*nrows)++].session_count = sqlite3_column_int64(s, 13);
    }
    sqlite3_reset(s);
    return LD_OK;
}

enum ld_err store_idem_get(struct store *st, const char *org_id, const char *key, struct arena *a,
                           struct idem_rec *out)
{
    sqlite3_stmt *s = conn_stmt(&st->rd, "SELECT fingerprint, status, body, created_at FROM"
                                         " idempotency WHERE org_id = ? AND key = ?");
    if (!s) return LD_E_STORAGE;
    bind_text(s, 1, org_id);
    bind_text(s, 2, key);
    enum ld_err e = LD_E_NOT_FOUND;
    if (sqlite3_step(s) == SQLITE_ROW) {
        memset(out, 0, sizeof(*out));
        out->fingerprint = col_text(s, 0, a);
        out->status = sqlite3_column_int(s, 1);
        out->body = col_text(s, 2, a);
        out->created_at = sqlite3_column_int64(s, 3);
        e = LD_OK;
    }
    sqlite3_reset(s);
    return e;
}

int64_t store_events_max_seq(struct store *st, const char *session_id)
{
    sqlite3_stmt *s =
        conn_stmt(&st->rd, "SELECT coalesce(max(sequence), 0) FROM events WHERE session_id = ?");
    if (!s) return 0;
    bind_text(s, 1, session_id);
    int64_t v = sqlite3_step(s) == SQLITE_ROW ? sqlite3_column_int64(s, 0) : 0;
    sqlite3_reset(s);
    return v;
}

int64_t store_events_total(struct store *st, const char *session_id)
{
    sqlite3_stmt *s = conn_stmt(&st->rd, "SELECT events_total FROM sessions WHERE id = ?");
    if (!s) return 0;
    bind_text(s, 1, session_id);
    int64_t v = sqlite3_step(s) == SQLITE_ROW ? sqlite3_column_int64(s, 0) : 0;
    sqlite3_reset(s);
    return v;
}

/* A cursor's sequence.  An event ID made since schema 8 ends with its
 * sequence as 8 hex digits (id_new_tail): one look at (session, sequence)
 * confirms it.  Older IDs are in events_id, which holds only the rows whose
 * ID does not end with their sequence (the same expression as the index's
 * WHERE, so that the planner may use it). */
enum ld_err store_event_seq(struct store *st, const char *session_id, const char *event_id,
                            int64_t *seq)
{
    uint32_t tail;
    if (id_tail(event_id, &tail) == 0) {
        sqlite3_stmt *s = conn_stmt(&st->rd, "SELECT 1 FROM events"
                                             " WHERE session_id = ? AND sequence = ? AND id = ?");
        if (!s) return LD_E_STORAGE;
        bind_text(s, 1, session_id);
        sqlite3_bind_int64(s, 2, tail);
        bind_text(s, 3, event_id);
        int found = sqlite3_step(s) == SQLITE_ROW;
        sqlite3_reset(s);
        if (found) {
            *seq = tail;
            return LD_OK;
        }
    }
    sqlite3_stmt *s =
        conn_stmt(&st->rd, "SELECT sequence FROM events WHERE id = ? AND session_id = ?"
                           " AND " EVENTS_ID_INDEXED);
    if (!s) return LD_E_STORAGE;
    bind_text(s, 1, event_id);
    bind_text(s, 2, session_id);
    enum ld_err e = LD_E_NOT_FOUND;
    if (sqlite3_step(s) == SQLITE_ROW) {
        *seq = sqlite3_column_int64(s, 0);
        e = LD_OK;
    }
    sqlite3_reset(s);
    return e;
}

/* sequence, id, type, ts, turn_id, body (not `message`: no reader of a
 * page needs it, and it may be as big as the body) */
#define EVENT_COLS "sequence, id, type, ts, turn_id, body"

static void read_event(sqlite3_stmt *s, struct arena *a, struct event_rec *e)
{
    memset(e, 0, sizeof(*e));
    e->seq = sqlite3_column_int64(s, 0);
    col_copy(s, 1, e->id, sizeof(e->id));
    e->type = col_text(s, 2, a);
    e->ts = sqlite3_column_int64(s, 3);
    e->turn_id = col_text(s, 4, a);
    e->body = col_text(s, 5, a);
}

enum ld_err store_events_page(struct store *st, const char *session_id, int64_t after, int64_t upto,
                              long limit, int last, struct arena *a, struct event_rec **rows,
                              int *n, int *more)
{
    /* `last`: the newest `limit` rows, read backwards then reversed */
    sqlite3_stmt *s = conn_stmt(
        &st->rd, last ? "SELECT " EVENT_COLS " FROM events"
                        " WHERE session_id = ?1 AND sequence > ?2 AND (?3 = 0 OR sequence <= ?3)"
                        " ORDER BY sequence DESC LIMIT ?4"
                      : "SELECT " EVENT_COLS " FROM events"
                        " WHERE session_id = ?1 AND sequence > ?2 AND (?3 = 0 OR sequence <= ?3)"
                        " ORDER BY sequence LIMIT ?4");
    *n = 0;
    *more = 0;
    if (!s) return LD_E_STORAGE;
    bind_text(s, 1, session_id);
    sqlite3_bind_int64(s, 2, after);
    sqlite3_bind_int64(s, 3, upto);
    sqlite3_bind_int64(s, 4, limit);
    *rows = arena_alloc(a, sizeof(struct event_rec) * (size_t)(limit > 0 ? limit : 1));
    size_t bytes = 0;
    int rc = SQLITE_DONE;
    while (*n < limit) {
        if (bytes >= LD_EVENTS_PAGE_BYTES) { /* a page of big events: stop early */
            *more = 1;
            break;
        }
        if ((rc = sqlite3_step(s)) != SQLITE_ROW) break;
        read_event(s, a, &(*rows)[(*n)++]);
        bytes += (size_t)sqlite3_column_bytes(s, 5);
    }
    if (*n == limit) *more = 1;
    sqlite3_reset(s);
    if (rc != SQLITE_ROW && rc != SQLITE_DONE) return LD_E_STORAGE;
    if (last)
        for (int i = 0, j = *n - 1; i < j; i++, j--) {
            struct event_rec t = (*rows)[i];
            (*rows)[i] = (*rows)[j];
            (*rows)[j] = t;
        }
    return LD_OK;
}

enum ld_err store_event_find(struct store *st, const char *session_id, const char *type,
                             const char *turn_id, int64_t before, struct arena *a,
                             struct event_rec *out)
{
    sqlite3_stmt *s = conn_stmt(&st->rd, "SELECT " EVENT_COLS " FROM events"
                                         " WHERE session_id = ?1 AND type = ?2"
                                         " AND (?3 IS NULL OR turn_id = ?3)"
                                         " AND (?4 = 0 OR sequence < ?4)"
                                         " ORDER BY sequence DESC LIMIT 1");
    if (!s) return LD_E_STORAGE;
    bind_text(s, 1, session_id);
    bind_text(s, 2, type);
    bind_text_opt(s, 3, turn_id);
    sqlite3_bind_int64(s, 4, before);
    int rc = sqlite3_step(s);
    enum ld_err e = rc == SQLITE_ROW ? LD_OK : rc == SQLITE_DONE ? LD_E_NOT_FOUND : LD_E_STORAGE;
    if (e == LD_OK) read_event(s, a, out);
    sqlite3_reset(s);
    return e;
}

enum ld_err store_messages(struct store *st, const char *session_id,
                           void (*fn)(const char *json, void *ud), void *ud)
{
    sqlite3_stmt *s = conn_stmt(&st->rd, "SELECT message FROM events WHERE session_id = ?"
                                         " AND message IS NOT NULL ORDER BY sequence");
    if (!s) return LD_E_STORAGE;
    bind_text(s, 1, session_id);
    while (sqlite3_step(s) == SQLITE_ROW)
        fn((const char *)sqlite3_column_text(s, 0), ud);
    sqlite3_reset(s);
    return LD_OK;
}

enum ld_err store_messages_page(struct store *st, const char *session_id, int64_t after,
                                int64_t upto, int limit,
                                void (*fn)(const char *json, int64_t seq, void *ud), void *ud,
                                int *n)
{
    sqlite3_stmt *s = conn_stmt(&st->rd, "SELECT sequence, message FROM events"
                                         " WHERE session_id = ?1 AND sequence > ?2"
                                         " AND sequence <= ?3 AND message IS NOT NULL"
                                         " ORDER BY sequence LIMIT ?4");
    *n = 0;
    if (!s) return LD_E_STORAGE;
    bind_text(s, 1, session_id);
    sqlite3_bind_int64(s, 2, after);
    sqlite3_bind_int64(s, 3, upto);
    sqlite3_bind_int(s, 4, limit);
    int rc;
    while ((rc = sqlite3_step(s)) == SQLITE_ROW) {
        fn((const char *)sqlite3_column_text(s, 1), sqlite3_column_int64(s, 0), ud);
        (*n)++;
    }
    sqlite3_reset(s);
    return rc == SQLITE_DONE ? LD_OK : LD_E_STORAGE;
}

void store_sessions_running(struct store *st, struct arena *a, struct session_ref **refs, int *n)
{
    *n = 0;
    int cap = 64;
    *refs = arena_alloc(a, sizeof(struct session_ref) * (size_t)cap);
    char sql[256];
    snprintf(sql, sizeof(sql), "SELECT org_id, id FROM sessions WHERE status IN (%d, %d)",
             SS_ACTIVE, SS_WAITING);
    sqlite3_stmt *s = conn_stmt(&st->rd, sql);
    if (!s) return;
    while (sqlite3_step(s) == SQLITE_ROW) {
        if (*n == cap) {
            struct session_ref *g = arena_alloc(a, sizeof(struct session_ref) * (size_t)cap * 2);
            memcpy(g, *refs, sizeof(struct session_ref) * (size_t)cap);
            *refs = g;
            cap *= 2;
        }
        struct session_ref *r = &(*refs)[(*n)++];
        col_copy(s, 0, r->org_id, sizeof(r->org_id));
        col_copy(s, 1, r->id, sizeof(r->id));
    }
    sqlite3_reset(s);
}

enum ld_err store_kv_get(struct store *st, const char *session_id, const char *key, struct arena *a,
                         const char **value, int *secret)
{
    sqlite3_stmt *s = conn_stmt(&st->rd, "SELECT value, is_secret FROM session_kv"
                                         " WHERE session_id = ? AND key = ?");
    if (!s) return LD_E_STORAGE;
    bind_text(s, 1, session_id);
    bind_text(s, 2, key);
    enum ld_err e = LD_E_NOT_FOUND;
    if (sqlite3_step(s) == SQLITE_ROW) {
        *value = col_text(s, 0, a);
        *secret = sqlite3_column_int(s, 1);
        e = LD_OK;
    }
    sqlite3_reset(s);
    return e;
}

void store_kv_list(struct store *st, const char *session_id,
                   void (*fn)(const char *key, int secret, void *ud), void *ud)
{
    sqlite3_stmt *s = conn_stmt(&st->rd, "SELECT key, is_secret FROM session_kv"
                                         " WHERE session_id = ? ORDER BY key LIMIT 1000");
    if (!s) return;
    bind_text(s, 1, session_id);
    while (sqlite3_step(s) == SQLITE_ROW)
        fn((const char *)sqlite3_column_text(s, 0), sqlite3_column_int(s, 1), ud);
    sqlite3_reset(s);
}

enum ld_err store_file_get(struct store *st, const char *session_id, const char *path,
                           struct arena *a, const char **content)
{
    sqlite3_stmt *s = conn_stmt(&st->rd, "SELECT content FROM session_files"
                                         " WHERE session_id = ? AND path = ?");
    if (!s) return LD_E_STORAGE;
    bind_text(s, 1, session_id);
    bind_text(s, 2, path);
    enum ld_err e = LD_E_NOT_FOUND;
    if (sqlite3_step(s) == SQLITE_ROW) {
        if (a) *content = col_text(s, 0, a);
        e = LD_OK;
    }
    sqlite3_reset(s);
    return e;
}

void store_files_list(struct store *st, const char *session_id,
                      void (*fn)(const char *path, const char *content, void *ud), void *ud)
{
    sqlite3_stmt *s = conn_stmt(&st->rd, "SELECT path, content FROM session_files"
                                         " WHERE session_id = ? ORDER BY path LIMIT 10000");
    if (!s) return;
    bind_text(s, 1, session_id);
    while (sqlite3_step(s) == SQLITE_ROW)
        fn((const char *)sqlite3_column_text(s, 0), (const char *)sqlite3_column_text(s, 1), ud);
    sqlite3_reset(s);
}

void store_idem_expire(struct store *st, int64_t before_us)
{
    struct conn c;
    if (admin_open(st, &c)) return;
    sqlite3_stmt *s = conn_stmt(&c, "DELETE FROM idempotency WHERE created_at < ?");
    if (s) {
        sqlite3_bind_int64(s, 1, before_us);
        sqlite3_step(s);
        sqlite3_reset(s);
    }
    conn_close(&c);
}
