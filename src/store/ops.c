/*
 * ops.c — the SQL of each write op.  Runs on the writer thread inside the
 * op's SAVEPOINT; on failure it sets op->err and op->detail and the writer
 * rolls the savepoint back.  Every value is bound, never spliced.
 */
#include "store/sqlite_int.h"
#include "util/timeutil.h"
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static int fail(struct store_op *op, enum ld_err e, const char *detail)
{
    op->err = e;
    str_copy(op->detail, sizeof(op->detail), detail);
    return -1;
}

static int step_done(struct conn *c, sqlite3_stmt *st, struct store_op *op)
{
    if (!st) return fail(op, LD_E_STORAGE, "Storage error");
    int rc = sqlite3_step(st);
    if (rc == SQLITE_DONE || rc == SQLITE_ROW) return 0;
    if ((rc & 0xff) == SQLITE_CONSTRAINT) return fail(op, LD_E_CONFLICT, "Conflict");
    fprintf(stderr, "level=error msg=\"write failed\" err=\"%s\"\n", sqlite3_errmsg(c->db));
    return fail(op, LD_E_STORAGE, "Storage error");
}

static int insert_idem(struct conn *c, struct store_op *op)
{
    if (!op->idem) return 0;
    sqlite3_stmt *st = conn_stmt(c, "INSERT INTO idempotency(org_id, key, fingerprint, status,"
                                    " body, created_at) VALUES(?,?,?,?,?,?)");
    if (!st) return fail(op, LD_E_STORAGE, "Storage error");
    bind_text(st, 1, op->idem->org_id);
    bind_text(st, 2, op->idem->key);
    bind_text(st, 3, op->idem->fingerprint);
    sqlite3_bind_int(st, 4, op->idem->status);
    bind_text(st, 5, op->idem->body);
    sqlite3_bind_int64(st, 6, op->idem->created_at);
    if (step_done(c, st, op)) {
        /* the key was taken by a request committed moments ago: the caller
         * re-reads it and replays (or answers 422) */
        if (op->err == LD_E_CONFLICT) op->idem_conflict = 1;
        return -1;
    }
    return 0;
}

static const char *INSERT_SESSION =
    "INSERT INTO sessions(id, org_id, workspace_id, harness_id, agent_id, owner_principal_id,"
    " owner_user_id, model_id, agent_identity_id, title, goal, locale, tags, extra, features,"
    " singleton_key, status, outcome, source, created_at, updated_at, last_activity_at, version)"
    " VALUES(?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,0,?,?,?,?,1)";

static void bind_session(sqlite3_stmt *st, const struct session_rec *s)
{
    bind_text(st, 1, s->id);
    bind_text(st, 2, s->org_id);
    bind_text(st, 3, s->workspace_id);
    bind_text(st, 4, s->harness_id);
    bind_text_opt(st, 5, s->agent_id);
    bind_text(st, 6, s->owner_principal_id);
    bind_text_opt(st, 7, s->owner_user_id);
    bind_text_opt(st, 8, s->model_id);
    bind_text_opt(st, 9, s->agent_identity_id);
    if (s->title)
        bind_text(st, 10, s->title);
    else
        sqlite3_bind_null(st, 10);
    bind_text_opt(st, 11, s->goal);
    bind_text_opt(st, 12, s->locale);
    bind_text(st, 13, s->tags);
    bind_text(st, 14, s->extra);
    bind_text_opt(st, 15, s->features);
    bind_text_opt(st, 16, s->singleton_key);
    sqlite3_bind_int(st, 17, s->status);
    bind_text(st, 18, s->source);
    sqlite3_bind_int64(st, 19, s->created_at);
    sqlite3_bind_int64(st, 20, s->updated_at);
    sqlite3_bind_int64(st, 21, s->created_at);
}

/*
 * Session counts: session_counts (per org and status, for `total` and
 * /v1/sessions/stats) and resource_session_counts (per harness and agent).
 * AFTER INSERT triggers used to keep them: two trigger programs and three
 * upserts for every new session, a third of the writer's time per insert
 * (measured, README).  Now each insert notes its +1s here; the writer keeps
 * them when the op succeeds (ops_counts_op_end) and, before the batch
 * commits, upserts each distinct count once (ops_counts_flush), in the
 * same transaction.  Deletes and status changes still go through triggers
 * (schema 9); those add and subtract with upserts too, so the order in
 * which a batch's changes land does not matter.
 */
struct count_delta {
    char key[ID_MAX]; /* org id, or harness or agent id */
    int status;       /* session_counts' status; -1 for resource_session_counts */
    int64_t n;
};

static void count_note(struct conn *c, const char *key, int status)
{
    if (c->ndeltas == c->capdeltas) {
        c->capdeltas = c->capdeltas ? c->capdeltas * 2 : 16;
        c->deltas = xrealloc(c->deltas, sizeof(*c->deltas) * (size_t)c->capdeltas);
    }
    struct count_delta *d = &c->deltas[c->ndeltas++];
    str_copy(d->key, sizeof(d->key), key);
    d->status = status;
    d->n = 1;
}

void ops_counts_op_end(struct conn *c, int ok)
{
    for (int i = c->nkept; ok && i < c->ndeltas; i++) {
        struct count_delta *d = &c->deltas[i];
        int j = 0;
        while (j < c->nkept &&
               (c->deltas[j].status != d->status || strcmp(c->deltas[j].key, d->key)))
            j++;
        if (j < c->nkept)
            c->deltas[j].n += d->n;
        else if (c->nkept++ != i)
            c->deltas[j] = *d;
    }
    c->ndeltas = c->nkept;
}

void ops_counts_drop(struct conn *c)
{
    c->ndeltas = c->nkept = 0;
}

int ops_counts_flush(struct conn *c)
{
    int rc = 0;
    for (int i = 0; i < c->nkept && rc == 0; i++) {
        const struct count_delta *d = &c->deltas[i];
        sqlite3_stmt *st;
        if (d->status >= 0) {
            st = conn_stmt(c, "INSERT INTO session_counts(org_id, status, n) VALUES(?,?,?)"
                              " ON CONFLICT(org_id, status) DO UPDATE SET n = n + excluded.n");
            if (st) sqlite3_bind_int(st, 2, d->status);
        } else
            st = conn_stmt(c, "INSERT INTO resource_session_counts(resource_id, n) VALUES(?,?3)"
                              " ON CONFLICT(resource_id) DO UPDATE SET n = n + excluded.n");
        if (!st) {
            rc = -1;
            break;
        }
        bind_text(st, 1, d->key);
        sqlite3_bind_int64(st, 3, d->n);
        if (sqlite3_step(st) != SQLITE_DONE) rc = -1;
        sqlite3_reset(st);
    }
    ops_counts_drop(c);
    return rc;
}

static void session_insert(struct conn *c, struct store_op *op)
{
    sqlite3_stmt *st = conn_stmt(c, INSERT_SESSION);
    if (!st) {
        fail(op, LD_E_STORAGE, "Storage error");
        return;
    }
    const struct session_rec *s = op->session;
    bind_session(st, s);
    if (step_done(c, st, op)) return;
    if (insert_idem(c, op)) return;
    count_note(c, s->org_id, s->status);
    count_note(c, s->harness_id, -1);
    if (*s->agent_id) count_note(c, s->agent_id, -1);
}

static void chat_get_or_create(struct conn *c, struct store_op *op)
{
    /* the UNIQUE singleton_key makes this race-free: the first op inserts,
     * every later one finds the row (all writes are serialized here) */
    sqlite3_stmt *st = conn_stmt(c, "SELECT 1 FROM sessions WHERE singleton_key = ?");
    if (!st) {
        fail(op, LD_E_STORAGE, "Storage error");
        return;
    }
    bind_text(st, 1, op->session->singleton_key);
    int found = sqlite3_step(st) == SQLITE_ROW;
    sqlite3_reset(st);
    if (found) return;
    session_insert(c, op);
    if (op->err == LD_OK) op->created = 1;
}

static int exists(struct conn *c, const char *sql, const char *a, const char *b)
{
    sqlite3_stmt *st = conn_stmt(c, sql);
    if (!st) return 0;
    bind_text(st, 1, a);
    bind_text(st, 2, b);
    int r = sqlite3_step(st) == SQLITE_ROW;
    sqlite3_reset(st);
    return r;
}

/* the op's session (op->org_id, op->id) is stored */
static int session_exists(struct conn *c, const struct store_op *op)
{
    return exists(c, "SELECT 1 FROM sessions WHERE org_id = ? AND id = ?", op->org_id, op->id);
}

static void session_patch(struct conn *c, struct store_op *op)
{
    const struct session_patch *p = op->patch;
    sqlite3_stmt *st = conn_stmt(
        c, "UPDATE sessions SET title = coalesce(?3, title), tags = coalesce(?4, tags),"
           " locale = coalesce(?5, locale), goal = coalesce(?6, goal),"
           " agent_identity_id = CASE WHEN ?7 THEN nullif(?8, '') ELSE agent_identity_id END,"
           " updated_at = max(?9, updated_at + 1), version = version + 1"
           " WHERE org_id = ?1 AND id = ?2"
           " AND (?10 IS NULL OR instr(?10, ',' || version || ',') > 0)");
    if (!st) {
        fail(op, LD_E_STORAGE, "Storage error");
        return;
    }
    bind_text(st, 1, op->org_id);
    bind_text(st, 2, op->id);
    if (p->title) bind_text(st, 3, p->title);
    if (p->tags) bind_text(st, 4, p->tags);
    if (p->locale) bind_text(st, 5, p->locale);
    if (p->goal) bind_text(st, 6, p->goal);
    sqlite3_bind_int(st, 7, p->set_identity);
    bind_text(st, 8, p->agent_identity_id);
    sqlite3_bind_int64(st, 9, p->now);
    if (p->if_match) bind_text(st, 10, p->if_match);
    if (step_done(c, st, op)) return;
    if (sqlite3_changes(c->db) == 1) return;
    if (session_exists(c, op))
        fail(op, LD_E_PRECONDITION,
             "The session was changed since the ETag given in If-Match; fetch it again");
    else
        fail(op, LD_E_NOT_FOUND, "Session not found");
}

/* A session whose stored status says a turn runs is not deleted.  The API
 * checks the engine first, but a message can start a turn between that
 * check and this op (both queued for the same batch): whichever the writer
 * runs first wins, the delete (the message's events then find no session,
 * events_append) or the turn (this answers 409). */
static void session_delete(struct conn *c, struct store_op *op)
{
    sqlite3_stmt *st = conn_stmt(c, "DELETE FROM sessions WHERE org_id = ? AND id = ?"
                                    " AND status NOT IN (?, ?)");
    if (!st) {
        fail(op, LD_E_STORAGE, "Storage error");
        return;
    }
    bind_text(st, 1, op->org_id);
    bind_text(st, 2, op->id);
    sqlite3_bind_int(st, 3, SS_ACTIVE);
    sqlite3_bind_int(st, 4, SS_WAITING);
    if (step_done(c, st, op)) return;
    if (sqlite3_changes(c->db) == 1) return;
    if (session_exists(c, op))
        fail(op, LD_E_CONFLICT,
             "Session has a turn in progress; cancel it (POST .../cancel) first");
    else
        fail(op, LD_E_NOT_FOUND, "Session not found");
}

static void pin(struct conn *c, struct store_op *op)
{
    if (!session_exists(c, op)) {
        fail(op, LD_E_NOT_FOUND, "Session not found");
        return;
    }
    sqlite3_stmt *st = op->flag
                           ? conn_stmt(c, "INSERT INTO pins(user_id, session_id, created_at)"
                                          " VALUES(?, ?, ?) ON CONFLICT DO NOTHING")
                           : conn_stmt(c, "DELETE FROM pins WHERE user_id = ? AND session_id = ?");
    if (!st) {
        fail(op, LD_E_STORAGE, "Storage error");
        return;
    }
    bind_text(st, 1, op->user_id);
    bind_text(st, 2, op->id);
    if (op->flag) sqlite3_bind_int64(st, 3, op->if_match /* carries now */);
    if (step_done(c, st, op)) return;
    /* the representation changed: a new ETag */
    st = conn_stmt(c, "UPDATE sessions SET version = version + 1 WHERE org_id = ? AND id = ?");
    bind_text(st, 1, op->org_id);
    bind_text(st, 2, op->id);
    step_done(c, st, op);
}

static void bind_agent(sqlite3_stmt *st, const struct agent_rec *a)
{
    bind_text(st, 1, a->id);
    bind_text(st, 2, a->org_id);
    bind_text(st, 3, a->name);
    bind_text_opt(st, 4, a->display_name);
    bind_text_opt(st, 5, a->description);
    bind_text(st, 6, a->system_prompt);
    bind_text(st, 7, a->harness_id);
    bind_text_opt(st, 8, a->default_model_id);
    bind_text(st, 9, a->tags);
    bind_text(st, 10, a->extra);
    if (a->archived)
        sqlite3_bind_int64(st, 11, a->archived_at);
    else
        sqlite3_bind_null(st, 11);
    sqlite3_bind_int64(st, 12, a->created_at);
    sqlite3_bind_int64(st, 13, a->updated_at);
}

static void agent_insert(struct conn *c, struct store_op *op)
{
    sqlite3_stmt *st = conn_stmt(
        c, "INSERT INTO agents(id, org_id, name, display_name, description, system_prompt,"
           " harness_id, default_model_id, tags, extra, archived_at, created_at, updated_at,"
           " version) VALUES(?,?,?,?,?,?,?,?,?,?,?,?,?,1)");
    if (!st) {
        fail(op, LD_E_STORAGE, "Storage error");
        return;
    }
    bind_agent(st, op->agent);
    if (step_done(c, st, op)) {
        if (op->err == LD_E_CONFLICT) {
            if (exists(c, "SELECT 1 FROM agents WHERE org_id = ? AND name = ?", op->agent->org_id,
                       op->agent->name))
                snprintf(op->detail, sizeof(op->detail), "Agent name '%s' is already taken",
                         op->agent->name);
            else
                snprintf(op->detail, sizeof(op->detail), "Agent ID '%s' is already taken",
                         op->agent->id);
        }
        return;
    }
    insert_idem(c, op);
}

static void agent_update(struct conn *c, struct store_op *op)
{
    sqlite3_stmt *st = conn_stmt(
        c, "UPDATE agents SET name = ?3, display_name = ?4, description = ?5,"
           " system_prompt = ?6, harness_id = ?7, default_model_id = ?8, tags = ?9, extra = ?10,"
           " archived_at = ?11, updated_at = max(?13, updated_at + 1), version = version + 1"
           " WHERE id = ?1 AND org_id = ?2 AND (?14 = 0 OR version = ?14)");
    if (!st) {
        fail(op, LD_E_STORAGE, "Storage error");
        return;
    }
    bind_agent(st, op->agent);
    sqlite3_bind_int64(st, 14, op->if_match);
    if (step_done(c, st, op)) {
        if (op->err == LD_E_CONFLICT)
            snprintf(op->detail, sizeof(op->detail), "Agent name '%s' is already taken",
                     op->agent->name);
        return;
    }
    if (sqlite3_changes(c->db) == 1) return;
    if (exists(c, "SELECT 1 FROM agents WHERE id = ? AND org_id = ?", op->agent->id,
               op->agent->org_id))
        fail(op, LD_E_PRECONDITION, "The agent was changed concurrently; fetch it again");
    else
        fail(op, LD_E_NOT_FOUND, "Agent not found");
}

static void agent_archive(struct conn *c, struct store_op *op)
{
    sqlite3_stmt *st = conn_stmt(c, "UPDATE agents SET archived_at = coalesce(archived_at, ?3),"
                                    " updated_at = max(?3, updated_at + 1), version = version + 1"
                                    " WHERE org_id = ?1 AND id = ?2");
    if (!st) {
        fail(op, LD_E_STORAGE, "Storage error");
        return;
    }
    bind_text(st, 1, op->org_id);
    bind_text(st, 2, op->id);
    sqlite3_bind_int64(st, 3, op->if_match /* carries now */);
    if (step_done(c, st, op)) return;
    if (sqlite3_changes(c->db) != 1) fail(op, LD_E_NOT_FOUND, "Agent not found");
}

static void events_append(struct conn *c, struct store_op *op)
{
    /* A session's log has no gaps: events continue the stored sequence or
     * are not stored.  A batch of the same session that failed before this
     * one (a failed commit, a full queue) would otherwise leave a hole that
     * no reader could tell from a lost event; this one fails too, and the
     * engine repairs the session from what is stored (engine.c, "Repair").
     * The session itself may have been deleted since the engine read it (by
     * an op of this very batch): no events without their session.  Its
     * events went with it, so the gap check finds that too; the first
     * batch of a log, which has no event before it, looks the session up. */
    if (!op->nevents || op->events[0].seq == 1) {
        if (!session_exists(c, op)) {
            fail(op, LD_E_NOT_FOUND, "Session not found");
            return;
        }
    } else {
        sqlite3_stmt *q =
            conn_stmt(c, "SELECT 1 FROM events WHERE session_id = ? AND sequence = ?");
        if (!q) {
            fail(op, LD_E_STORAGE, "Storage error");
            return;
        }
        bind_text(q, 1, op->id);
        sqlite3_bind_int64(q, 2, op->events[0].seq - 1);
        int found = sqlite3_step(q) == SQLITE_ROW;
        sqlite3_reset(q);
        if (!found) {
            if (!session_exists(c, op))
                fail(op, LD_E_NOT_FOUND, "Session not found");
            else
                fail(op, LD_E_UNAVAILABLE, STORE_REPAIR_DETAIL);
            return;
        }
    }
    sqlite3_stmt *st = conn_stmt(c, "INSERT INTO events(session_id, sequence, id, type, ts,"
                                    " turn_id, body, message) VALUES(?,?,?,?,?,?,?,?)");
    if (!st) {
        fail(op, LD_E_STORAGE, "Storage error");
        return;
    }
    int64_t counted = 0; /* X-Total-Count leaves deltas out */
    for (int i = 0; i < op->nevents; i++) {
        const struct event_rec *e = &op->events[i];
        if (strcmp(e->type, "output.message.delta") != 0) counted++;
        sqlite3_reset(st);
        sqlite3_clear_bindings(st);
        bind_text(st, 1, op->id);
        sqlite3_bind_int64(st, 2, e->seq);
        bind_text(st, 3, e->id);
        bind_text(st, 4, e->type);
        sqlite3_bind_int64(st, 5, e->ts);
        bind_text_opt(st, 6, e->turn_id);
        bind_text(st, 7, e->body);
        bind_text_opt(st, 8, e->message);
        if (step_done(c, st, op)) return;
    }
    int64_t now = op->update ? op->update->now : 0;
    for (int i = 0; i < op->neffects; i++) {
        const struct tool_effect *x = &op->effects[i];
        switch (x->kind) {
        case TE_KV_SET:
            st = conn_stmt(c, "INSERT INTO session_kv(session_id, key, value, is_secret,"
                              " updated_at) VALUES(?1, ?2, ?3, ?4, ?5)"
                              " ON CONFLICT(session_id, key) DO UPDATE SET value = excluded.value,"
                              " is_secret = excluded.is_secret, updated_at = excluded.updated_at");
            break;
        case TE_KV_DELETE:
            st = conn_stmt(c, "DELETE FROM session_kv WHERE session_id = ?1 AND key = ?2");
            break;
        default:
            st = conn_stmt(c, "INSERT INTO session_files(session_id, path, content, updated_at)"
                              " VALUES(?1, ?2, ?3, ?4) ON CONFLICT(session_id, path) DO UPDATE"
                              " SET content = excluded.content, updated_at = excluded.updated_at");
        }
        if (!st) {
            fail(op, LD_E_STORAGE, "Storage error");
            return;
        }
        bind_text(st, 1, op->id);
        bind_text(st, 2, x->key);
        if (x->kind == TE_KV_SET) {
            bind_text(st, 3, x->value);
            sqlite3_bind_int(st, 4, x->secret);
            sqlite3_bind_int64(st, 5, now);
        } else if (x->kind == TE_FILE_WRITE) {
            bind_text(st, 3, x->value);
            sqlite3_bind_int64(st, 4, now);
        }
        if (step_done(c, st, op)) return;
    }
    const struct session_update *u = op->update;
    if (!u) {
        if (!counted) return;
        st = conn_stmt(c, "UPDATE sessions SET events_total = events_total + ?2 WHERE id = ?1");
        if (!st) {
            fail(op, LD_E_STORAGE, "Storage error");
            return;
        }
        bind_text(st, 1, op->id);
        sqlite3_bind_int64(st, 2, counted);
        step_done(c, st, op);
        return;
    }
    st = conn_stmt(
        c, "UPDATE sessions SET status = CASE WHEN ?2 THEN ?3 ELSE status END,"
           " outcome = CASE WHEN ?4 THEN ?5 ELSE outcome END,"
           " turn_id = CASE WHEN ?6 IS NULL THEN turn_id ELSE nullif(?6, '') END,"
           " started_at = coalesce(started_at, ?7),"
           " in_tokens = in_tokens + ?8, out_tokens = out_tokens + ?9,"
           " cache_read_tokens = cache_read_tokens + ?10,"
           " cache_creation_tokens = cache_creation_tokens + ?11,"
           " preview = coalesce(preview, ?12), output_preview = coalesce(?13, output_preview),"
           " last_activity_at = ?14, updated_at = max(?14, updated_at + 1), version = version + 1,"
           " events_total = events_total + ?15 WHERE id = ?1");
    if (!st) {
        fail(op, LD_E_STORAGE, "Storage error");
        return;
    }
    bind_text(st, 1, op->id);
    sqlite3_bind_int(st, 2, u->set_status);
    sqlite3_bind_int(st, 3, u->status);
    sqlite3_bind_int(st, 4, u->set_outcome);
    sqlite3_bind_int(st, 5, u->outcome);
    if (u->turn_id) bind_text(st, 6, u->turn_id);
    if (u->started_at) sqlite3_bind_int64(st, 7, u->started_at);
    sqlite3_bind_int64(st, 8, u->add_in);
    sqlite3_bind_int64(st, 9, u->add_out);
    sqlite3_bind_int64(st, 10, u->add_cache_read);
    sqlite3_bind_int64(st, 11, u->add_cache_creation);
    bind_text_opt(st, 12, u->preview);
    bind_text_opt(st, 13, u->output_preview);
    sqlite3_bind_int64(st, 14, u->now);
    sqlite3_bind_int64(st, 15, counted);
    step_done(c, st, op);
}

/* the probe row, rewritten: a commit that must reach the disk */
static void probe_write(struct conn *c, struct store_op *op)
{
    sqlite3_stmt *st = conn_stmt(c, "INSERT INTO probe(id, at) VALUES(1, ?)"
                                    " ON CONFLICT(id) DO UPDATE SET at = excluded.at");
    if (st) sqlite3_bind_int64(st, 1, time_now_us());
    step_done(c, st, op);
}

int ops_single_statement(const struct store_op *op)
{
    /* session_insert: the INSERT alone (no trigger since schema 9), unless
     * the Idempotency-Key record goes in after it */
    return op->kind == SOP_SESSION_INSERT && !op->idem;
}

void ops_run(struct conn *c, struct store_op *op)
{
    switch (op->kind) {
    case SOP_SESSION_INSERT:
        session_insert(c, op);
        break;
    case SOP_SESSION_PATCH:
        session_patch(c, op);
        break;
    case SOP_SESSION_DELETE:
        session_delete(c, op);
        break;
    case SOP_CHAT_GET_OR_CREATE:
        chat_get_or_create(c, op);
        break;
    case SOP_PIN:
        pin(c, op);
        break;
    case SOP_AGENT_INSERT:
        agent_insert(c, op);
        break;
    case SOP_AGENT_UPDATE:
        agent_update(c, op);
        break;
    case SOP_AGENT_ARCHIVE:
        agent_archive(c, op);
        break;
    case SOP_EVENTS_APPEND:
        events_append(c, op);
        break;
    case SOP_NOOP:
        break;
    case SOP_PROBE:
        probe_write(c, op);
        break;
    }
}
