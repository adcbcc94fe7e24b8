/*
 * sessions.c — /v1/sessions: create, get, patch, delete, list, stats, pin,
 * and the per-user chat singleton (reference sections 8-13).
 *
 * Create resolves agent, harness and model on the loop (reads), builds the
 * whole record and its response body, then hands one INSERT to the writer;
 * the 201 leaves only after the commit.  The Idempotency-Key record (with
 * that body) commits in the same transaction, so a replay returns exactly
 * the first response.
 */
#include "api/api.h"
#include "core/builtins.h"
#include "engine/engine.h"
#include "limits.h"
#include "util/timeutil.h"
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static void etag_of(int64_t version, char out[32])
{
    /* not snprintf: it was a tenth of what a create's answer costs */
    size_t n = i64_dec(version < 0 ? 0 : version, out + 1);
    out[0] = '"';
    out[n + 1] = '"';
    out[n + 2] = 0;
}

/* answers kept while nothing has been written (replycache.c): single
 * sessions (~2.2 KB each) and list pages */
static struct replycache get_cache = {.nslots = 1024, .max_body = LD_GET_CACHE_BODY_MAX};
static struct replycache list_cache = {.nslots = 64, .max_body = LD_LIST_CACHE_BODY_MAX};

/* Answers with the session and its ETag; a GET's answer is kept in keep. */
static void reply_session(struct req *r, int status, const struct session_rec *s,
                          struct replycache *keep)
{
    struct buf b;
    buf_init(&b, LD_MAX_RESPONSE);
    buf_reserve(&b, LD_SESSION_RENDER_HINT);
    struct jw w;
    jw_init(&w, &b);
    render_session(r, &w, s);
    char etag[32];
    etag_of(s->version, etag);
    if (keep) replycache_keep(keep, r, s->id, &b, etag);
    struct reply_header h = {"ETag", etag};
    reply_json_h(r, status, &b, &h, 1);
}

/* Re-reads a session after a committed write and answers with it. */
static void reply_fresh(struct req *r, const char *id, int status)
{
    struct session_rec s;
    if (session_load(r, id, &s) == 0) reply_session(r, status, &s, NULL);
}

/* ---- create ---- */

static void created_done(struct store_op *op)
{
    struct req *r = op->ud;
    if (op->err == LD_OK) {
        char etag[32];
        etag_of(1, etag);
        struct reply_header h[2] = {{"ETag", etag}, {"Location", NULL}};
        char loc[400];
        if (session_url(r, op->session->id, loc, sizeof(loc))) h[1].value = loc;
        struct buf b;
        buf_init(&b, LD_MAX_RESPONSE);
        buf_reserve(&b, LD_SESSION_RENDER_HINT);
        buf_puts(&b, op->idem ? op->idem->body : "");
        if (!op->idem) {
            struct jw w;
            jw_init(&w, &b);
            render_session(r, &w, op->session);
        }
        reply_json_h(r, 201, &b, h, 2);
        return;
    }
    if (op->idem_conflict) {
        idem_replay_after_conflict(r, op->idem);
        return;
    }
    reply_op_error(r, op);
}

/* Resolves harness/agent/model and fills the record; -1 after answering. */
static int resolve(struct req *r, json_t *body, struct session_rec *s, struct jw *extra)
{
    const char *harness_id = NULL, *harness_name = NULL, *agent_id = NULL, *agent_name = NULL,
               *model_id = NULL, *workspace_id = NULL, *identity = NULL;
    if (field_id(r, body, "harness_id", "harness", "harness", &harness_id) < 0 ||
        field_slug(r, body, "harness_name", &harness_name) < 0 ||
        field_id(r, body, "agent_id", "agent", "agent", &agent_id) < 0 ||
        field_str(r, body, "agent_name", 1024, &agent_name) < 0 ||
        field_id(r, body, "model_id", "model", "model", &model_id) < 0 ||
        field_id(r, body, "workspace_id", "wsp", "workspace", &workspace_id) < 0 ||
        field_id(r, body, "agent_identity_id", "identity", "agent identity", &identity) < 0)
        return -1;
    if (harness_id && harness_name) {
        reply_problem(r, LD_E_BAD_REQUEST, "Cannot specify both harness_id and harness_name");
        return -1;
    }
    if (agent_id && agent_name) {
        reply_problem(r, LD_E_BAD_REQUEST, "Cannot specify both agent_id and agent_name");
        return -1;
    }
    if (identity) {
        reply_problem(r, LD_E_NOT_FOUND, "Agent identity not found");
        return -1;
    }
    struct agent_rec agent;
    int have_agent = 0;
    if (agent_id || agent_name) {
        enum ld_err e = store_agent_get(r->st, r->who.org_id, agent_id ? agent_id : agent_name,
                                        &r->arena, &agent);
        if (e == LD_OK && agent_id && strcmp(agent.id, agent_id) != 0) e = LD_E_NOT_FOUND;
        if (e != LD_OK) {
            reply_problem(r, e, e == LD_E_NOT_FOUND ? "Agent not found" : "Storage error");
            return -1;
        }
        if (agent.archived) {
            reply_problem(r, LD_E_BAD_REQUEST, "Archived or deleted agents cannot be assigned");
            return -1;
        }
        have_agent = 1;
        str_copy(s->agent_id, sizeof(s->agent_id), agent.id);
    }
    const char *want = harness_id ? harness_id
                       : harness_name
                           ? (strcmp(harness_name, "default") == 0 ? "generic" : harness_name)
                       : have_agent ? agent.harness_id
                                    : "generic";
    struct harness_rec h;
    enum ld_err e = store_harness_get(r->st, r->who.org_id, want, &r->arena, &h);
    if (e == LD_OK && harness_id && strcmp(h.id, harness_id) != 0) e = LD_E_NOT_FOUND;
    if (e != LD_OK) {
        reply_problem(r, e, e == LD_E_NOT_FOUND ? "Harness not found" : "Storage error");
        return -1;
    }
    str_copy(s->harness_id, sizeof(s->harness_id), h.id);
    if (model_id && !model_find(model_id)) {
        reply_problem(r, LD_E_NOT_FOUND, "Model not found");
        return -1;
    }
    const char *m = model_id                                  ? model_id
                    : have_agent && agent.default_model_id[0] ? agent.default_model_id
                    : h.default_model_id[0]                   ? h.default_model_id
                                                              : DEFAULT_MODEL_ID;
    str_copy(s->model_id, sizeof(s->model_id), m);
    /* features: harness chain + agent + session capabilities (reference 18) */
    unsigned seen = 0;
    features_add(h.capabilities, &seen);
    if (h.parent_id[0]) {
        struct harness_rec parent;
        if (store_harness_get(r->st, r->who.org_id, h.parent_id, &r->arena, &parent) == LD_OK)
            features_add(parent.capabilities, &seen);
    }
    if (have_agent) {
        json_t *ax = json_loads(agent.extra, 0, NULL);
        json_t *caps = json_object_get(ax, "capabilities");
        if (caps) {
            char *d = json_dumps(caps, JSON_COMPACT);
            features_add(d, &seen);
            free(d);
        }
        json_decref(ax);
    }
    const char *caps_json = NULL;
    if (fields_config(r, body, 1, extra, &caps_json)) return -1;
    if (caps_json) features_add(caps_json, &seen);
    struct buf fb;
    buf_init(&fb, 1024);
    if (features_json(seen, &fb)) s->features = arena_strdup(&r->arena, fb.data);
    buf_free(&fb);
    if (workspace_id) {
        char sid[ID_MAX];
        struct session_rec other;
        id_with_hex("session", id_hex(workspace_id), sid);
        if (store_session_get(r->st, r->who.org_id, sid, r->who.user_id, &r->arena, &other) !=
            LD_OK) {
            reply_problem(r, LD_E_NOT_FOUND, "Workspace not found");
            return -1;
        }
        str_copy(s->workspace_id, sizeof(s->workspace_id), workspace_id);
    }
    return 0;
}

void h_sessions_create(struct req *r)
{
    struct idem_rec *idem;
    int rc = idem_check(r, &idem);
    if (rc) return;
    json_t *body = body_object(r, 1);
    if (!body) return;
    struct session_rec *s = arena_alloc(&r->arena, sizeof(*s));
    struct buf xb;
    buf_init(&xb, LD_MAX_BODY_BOUND);
    struct jw x;
    jw_init(&x, &xb);
    jw_obj(&x);
    const char *source = "api";
    if (field_text(r, body, "title", (size_t)r->cfg->max_title, &s->title) < 0 ||
        field_str(r, body, "goal", LD_MAX_GOAL, &s->goal) < 0 ||
        field_locale(r, body, "locale", &s->locale) < 0 ||
        field_tags(r, body, "tags", &s->tags) < 0 ||
        field_str(r, body, "source", 64, &source) < 0 || resolve(r, body, s, &x) < 0)
        goto out;
    if (strcmp(source, "api") != 0 && strcmp(source, "chat") != 0) {
        reply_problem(r, LD_E_BAD_REQUEST, "source must be one of chat, api (got %.32s)", source);
        goto out;
    }
    jw_end(&x);
    id_new("session", s->id);
    str_copy(s->org_id, sizeof(s->org_id), r->who.org_id);
    if (!s->workspace_id[0]) id_with_hex("wsp", id_hex(s->id), s->workspace_id);
    str_copy(s->owner_principal_id, sizeof(s->owner_principal_id), r->who.principal_id);
    str_copy(s->owner_user_id, sizeof(s->owner_user_id), r->who.user_id);
    str_copy(s->source, sizeof(s->source), source);
    if (!s->tags) s->tags = "[]";
    s->extra = arena_strdup(&r->arena, xb.data);
    s->status = SS_STARTED;
    s->created_at = s->updated_at = time_now_us();
    s->version = 1;
    s->pinned = 0;
    struct store_op *op = op_new(r, SOP_SESSION_INSERT, created_done);
    op->session = s;
    if (idem) {
        struct buf b;
        buf_init(&b, LD_MAX_RESPONSE);
        struct jw w;
        jw_init(&w, &b);
        render_session(r, &w, s);
        idem->body = arena_strdup(&r->arena, b.data);
        idem->status = 201;
        buf_free(&b);
        op->idem = idem;
    }
    op_submit(r, op);
out:
    buf_free(&xb);
    json_decref(body);
}

/* ---- get ---- */

void sessions_cache_metrics(struct buf *o)
{
    buf_puts(o, "# HELP loopd_reply_cache_lookups_total GETs looked up in the reply cache, by"
                " cache and outcome.\n# TYPE loopd_reply_cache_lookups_total counter\n");
    const struct replycache *c[2] = {&get_cache, &list_cache};
    const char *name[2] = {"session", "list"};
    for (int i = 0; i < 2; i++) {
        buf_printf(o, "loopd_reply_cache_lookups_total{cache=\"%s\",outcome=\"hit\"} %llu\n",
                   name[i], (unsigned long long)c[i]->hits);
        buf_printf(o, "loopd_reply_cache_lookups_total{cache=\"%s\",outcome=\"miss\"} %llu\n",
                   name[i], (unsigned long long)c[i]->misses);
    }
}

void sessions_cache_free(void)
{
    replycache_free(&get_cache);
    replycache_free(&list_cache);
}

/* If-None-Match is "*" or a list of entity tags, any of which matches by
 * the weak comparison (RFC 9110 13.1.2): `"1", W/"2"` matches "2". */
static int inm_matches(const char *list, const char *etag)
{
    size_t n = strlen(etag);
    const char *p = list;
    for (;;) {
        while (*p == ' ' || *p == '\t' || *p == ',')
            p++;
        if (!*p) return 0;
        if (*p == '*') return 1;
        if (strncmp(p, "W/", 2) == 0) p += 2;
        const char *end = *p == '"' ? strchr(p + 1, '"') : NULL;
        if (!end) return 0; /* not an entity tag: nothing further can be trusted */
        end++;
        if ((size_t)(end - p) == n && memcmp(p, etag, n) == 0) return 1;
        p = end;
    }
}

static int not_modified(struct req *r, const char *etag)
{
    const char *inm = req_header(r, "If-None-Match");
    if (!inm || !inm_matches(inm, etag)) return 0;
    struct reply_header h = {"ETag", etag};
    reply_empty(r, 304, &h, 1);
    return 1;
}

void h_session_get(struct req *r)
{
    if (path_id(r, 0, "session", "session")) return;
    const struct rc_entry *c = replycache_find(&get_cache, r, r->params[0]);
    if (c) {
        if (!not_modified(r, c->etag)) replycache_reply(r, c);
        return;
    }
    struct session_rec s; /* the id was checked above */
    if (session_load(r, r->params[0], &s)) return;
    char etag[32];
    etag_of(s.version, etag);
    if (not_modified(r, etag)) return;
    reply_session(r, 200, &s, &get_cache);
}

/* ---- patch ---- */

static void patched_done(struct store_op *op)
{
    struct req *r = op->ud;
    if (op->err != LD_OK) {
        reply_op_error(r, op);
        return;
    }
    reply_fresh(r, op->id, 200);
}

/* If-Match: "*" or a list of entity tags, any of which may match (RFC 9110
 * 13.1.1).  A session's ETag is its version, so the list goes to the store
 * as ",v1,v2,", the versions it names, for the UPDATE to find the current
 * one in; *out stays NULL for none or "*".  A tag that is not a version can
 * never match, and a list without one is a 412 at once.  W/ is taken as if
 * strong: a compressing proxy weakens the tags it passes on, and a client
 * echoing one still means the version it read.  0, or -1 after the 412. */
static int if_match(struct req *r, const char **out)
{
    *out = NULL;
    const char *p = req_header(r, "If-Match");
    if (!p) return 0;
    struct buf v;
    buf_init(&v, strlen(p) + 2); /* never longer than the header: `"n"` gives `n,` */
    int any = 0;
    for (;;) {
        while (*p == ' ' || *p == '\t' || *p == ',')
            p++;
        if (!*p) break;
        if (*p == '*') {
            any = 1;
            break;
        }
        if (strncmp(p, "W/", 2) == 0) p += 2;
        const char *end = *p == '"' ? strchr(p + 1, '"') : NULL;
        if (!end) break; /* not an entity tag: nothing further can be trusted */
        const char *d = p + 1;
        size_t n = (size_t)(end - d);
        if (n > 0 && n <= 18 && *d != '0' && strspn(d, "0123456789") == n)
            buf_printf(&v, "%s%.*s,", v.len ? "" : ",", (int)n, d);
        p = end + 1;
    }
    if (!any && v.len) *out = arena_strdup(&r->arena, v.data);
    buf_free(&v);
    if (any || *out) return 0;
    reply_problem(r, LD_E_PRECONDITION,
                  "If-Match does not match the current ETag of this resource");
    return -1;
}

void h_session_patch(struct req *r)
{
    if (path_id(r, 0, "session", "session")) return;
    const char *im;
    if (if_match(r, &im)) return;
    json_t *body = body_object(r, 1);
    if (!body) return;
    struct session_patch *p = arena_alloc(&r->arena, sizeof(*p));
    if (field_text(r, body, "title", (size_t)r->cfg->max_title, &p->title) < 0 ||
        field_str(r, body, "goal", LD_MAX_GOAL, &p->goal) < 0 ||
        field_locale(r, body, "locale", &p->locale) < 0 ||
        field_tags(r, body, "tags", &p->tags) < 0)
        goto out;
    json_t *ident = json_object_get(body, "agent_identity_id");
    if (ident) {
        if (json_is_null(ident)) {
            p->set_identity = 1;
            p->agent_identity_id = "";
        } else {
            const char *id = NULL;
            if (field_id(r, body, "agent_identity_id", "identity", "agent identity", &id) < 0)
                goto out;
            reply_problem(r, LD_E_NOT_FOUND, "Agent identity not found");
            goto out;
        }
    }
    p->if_match = im;
    p->now = time_now_us();
    struct store_op *op = op_new(r, SOP_SESSION_PATCH, patched_done);
    op->org_id = r->who.org_id;
    op->id = r->params[0];
    op->patch = p;
    op_submit(r, op);
out:
    json_decref(body);
}

/* ---- delete ---- */

static void deleted_done(struct store_op *op)
{
    struct req *r = op->ud;
    if (op->err != LD_OK)
        reply_op_error(r, op);
    else
        reply_empty(r, 204, NULL, 0);
}

static void session_deleted_done(struct store_op *op)
{
    struct req *r = op->ud;
    if (op->err == LD_OK) engine_session_deleted(r->eng, op->id);
    deleted_done(op);
}

void h_session_delete(struct req *r)
{
    struct session_rec cur;
    if (session_from_path(r, &cur)) return;
    if (engine_session_busy(r->eng, cur.id)) {
        reply_problem(r, LD_E_CONFLICT,
                      "Session has a turn in progress; cancel it (POST .../cancel) first");
        return;
    }
    struct store_op *op = op_new(r, SOP_SESSION_DELETE, session_deleted_done);
    op->org_id = r->who.org_id;
    op->id = r->params[0];
    op_submit(r, op);
}

/* ---- pin ---- */

static void pin_common(struct req *r, int flag)
{
    if (path_id(r, 0, "session", "session")) return;
    if (!r->who.user_id[0]) {
        reply_problem(r, LD_E_UNAUTHORIZED, "Authentication required to %s sessions",
                      flag ? "pin" : "unpin");
        return;
    }
    struct store_op *op = op_new(r, SOP_PIN, deleted_done);
    op->org_id = r->who.org_id;
    op->id = r->params[0];
    op->user_id = r->who.user_id;
    op->flag = flag;
    op->if_match = time_now_us();
    op_submit(r, op);
}

void h_session_pin(struct req *r)
{
    pin_common(r, 1);
}

void h_session_unpin(struct req *r)
{
    pin_common(r, 0);
}

/* ---- list ---- */

static int parse_status_filter(struct req *r, const char *v, struct session_filter *f)
{
    char tmp[256];
    if (strlen(v) >= sizeof(tmp)) {
        reply_problem(r, LD_E_BAD_REQUEST, "status: too long");
        return -1;
    }
    str_copy(tmp, sizeof(tmp), v);
    char *save = NULL;
    for (char *t = strtok_r(tmp, ",", &save); t; t = strtok_r(NULL, ",", &save)) {
        while (*t == ' ')
            t++;
        int st = session_status_parse(t);
        if (st >= 0)
            f->status_mask |= 1 << st;
        else if (strcmp(t, "running") == 0)
            f->status_mask |= 1 << SS_ACTIVE | 1 << SS_WAITING;
        else if (strcmp(t, "paused") == 0)
            f->status_mask |= 1 << SS_PAUSED;
        else if (strcmp(t, "completed") == 0)
            f->outcome_mask |= 1 << TO_COMPLETED;
        else if (strcmp(t, "failed") == 0)
            f->outcome_mask |= 1 << TO_FAILED | 1 << TO_CANCELLED;
        else {
            reply_problem(r, LD_E_BAD_REQUEST,
                          "status: unknown value '%.40s' (use running, paused, failed, "
                          "completed, idle, or a session status)",
                          t);
            return -1;
        }
    }
    return 0;
}

static int parse_time_param(struct req *r, const char *name, int64_t *out)
{
    const char *v = req_query(r, name);
    if (!v) return 0;
    if (time_parse(v, out) || *out <= 0) {
        reply_problem(r, LD_E_BAD_REQUEST, "%s: expected an RFC 3339 timestamp", name);
        return -1;
    }
    return 0;
}

/* a row of the list query (list_page) */
static int list_session_row(const struct session_rec *s, void *ud)
{
    struct list_page *p = ud;
    struct jw *w = list_item(p, s->id);
    if (w) render_session(p->r, w, s);
    return list_full(p); /* streamed: only ids from here on */
}

/* a row of a streamed page, read again when its turn comes */
static int session_again(struct req *r, struct jw *w, const char *id, struct arena *a)
{
    struct session_rec s;
    enum ld_err e = store_session_get(r->st, r->who.org_id, id, r->who.user_id, a, &s);
    if (e == LD_E_NOT_FOUND) return 1;
    if (e != LD_OK) return -1;
    render_session(r, w, &s);
    return 0;
}

void h_sessions_list(struct req *r)
{
    struct session_filter f;
    memset(&f, 0, sizeof(f));
    if (page_params(r, &f.offset, &f.limit)) return;
    f.agent_id = req_query(r, "agent_id");
    if (f.agent_id && !*f.agent_id) f.agent_id = NULL;
    /* an unknown agent is an empty page (section 12), a malformed ID a 400 */
    char why[160];
    if (f.agent_id && id_check("agent", f.agent_id, why, sizeof(why))) {
        reply_problem(r, LD_E_BAD_REQUEST, "agent_id: Invalid agent ID: %s", why);
        return;
    }
    f.search = req_query(r, "search");
    if (f.search && !*f.search) f.search = NULL;
    if (f.search && strlen(f.search) > LD_SEARCH_MAX) {
        reply_problem(r, LD_E_BAD_REQUEST, "search: longer than %d bytes", LD_SEARCH_MAX);
        return;
    }
    const char *st = req_query(r, "status");
    if (st && *st && parse_status_filter(r, st, &f)) return;
    if (parse_time_param(r, "created_after", &f.created_after) ||
        parse_time_param(r, "created_before", &f.created_before))
        return;
    /* loopd extension: pinned=true lists the caller's pinned sessions only,
     * pinned=false the others (the console shows pinned ones first) */
    const char *pin = req_query(r, "pinned");
    if (pin && *pin) {
        if (strcmp(pin, "true") == 0)
            f.pinned = 1;
        else if (strcmp(pin, "false") == 0)
            f.pinned = -1;
        else {
            reply_problem(r, LD_E_BAD_REQUEST, "pinned: must be true or false");
            return;
        }
    }
    const char *order = req_query(r, "order");
    if (order && *order) {
        if (strcmp(order, "last_activity") == 0)
            f.order_activity = 1;
        else if (strcmp(order, "created_at") != 0) {
            reply_problem(r, LD_E_BAD_REQUEST, "order: must be created_at or last_activity");
            return;
        }
    }
    const char *url = req_url(r);
    const struct rc_entry *c = replycache_find(&list_cache, r, url);
    if (c) {
        replycache_reply(r, c);
        return;
    }
    struct list_page p;
    list_begin(&p, r, f.limit, "sessions", session_again);
    p.keep = &list_cache;
    p.keep_key = url;
    int64_t total;
    enum ld_err e = store_session_list(r->st, r->who.org_id, r->who.user_id, &f, &r->arena,
                                       list_session_row, &p, &total);
    if (e != LD_OK) {
        buf_free(&p.b);
        reply_problem(r, e, "Storage error");
        return;
    }
    list_end(&p, total, f.offset, f.limit);
}

void h_sessions_stats(struct req *r)
{
    struct session_stats s;
    enum ld_err e = store_session_stats(r->st, r->who.org_id, &s);
    if (e != LD_OK) {
        reply_problem(r, e, "Storage error");
        return;
    }
    struct buf b;
    buf_init(&b, 1024);
    struct jw w;
    jw_init(&w, &b);
    jw_obj(&w);
    jw_ki64(&w, "total", s.total);
    for (int i = 0; i < SS__COUNT; i++)
        jw_ki64(&w, session_status_db(i), s.n[i]);
    jw_end(&w);
    reply_json(r, 200, &b);
}

/* ---- chat singleton (reference 11) ---- */

static void chat_done(struct store_op *op)
{
    struct req *r = op->ud;
    if (op->err != LD_OK) {
        reply_op_error(r, op);
        return;
    }
    struct session_rec s;
    enum ld_err e = store_session_by_singleton(r->st, r->who.org_id, op->session->singleton_key,
                                               r->who.user_id, &r->arena, &s);
    if (e != LD_OK) {
        reply_problem(r, e, "Storage error");
        return;
    }
    reply_session(r, 200, &s, NULL);
}

void h_sessions_chat(struct req *r)
{
    json_t *body = body_object(r, 1);
    if (!body) return;
    const char *locale = NULL;
    if (field_locale(r, body, "locale", &locale) < 0) {
        json_decref(body);
        return;
    }
    json_decref(body);
    char key[ID_MAX + 48];
    snprintf(key, sizeof(key), "chat/%s/%s", r->who.org_id, r->who.user_id);
    struct session_rec found;
    enum ld_err e =
        store_session_by_singleton(r->st, r->who.org_id, key, r->who.user_id, &r->arena, &found);
    if (e == LD_OK) {
        reply_session(r, 200, &found, NULL);
        return;
    }
    struct harness_rec h;
    if (store_harness_get(r->st, r->who.org_id, "platform-chat", &r->arena, &h) != LD_OK) {
        reply_problem(r, LD_E_NOT_FOUND, "Global chat is not configured for this platform");
        return;
    }
    struct session_rec *s = arena_alloc(&r->arena, sizeof(*s));
    id_new("session", s->id);
    str_copy(s->org_id, sizeof(s->org_id), r->who.org_id);
    id_with_hex("wsp", id_hex(s->id), s->workspace_id);
    str_copy(s->harness_id, sizeof(s->harness_id), h.id);
    str_copy(s->owner_principal_id, sizeof(s->owner_principal_id), r->who.principal_id);
    str_copy(s->owner_user_id, sizeof(s->owner_user_id), r->who.user_id);
    snprintf(s->model_id, sizeof(s->model_id), "%s",
             h.default_model_id[0] ? h.default_model_id : DEFAULT_MODEL_ID);
    snprintf(s->source, sizeof(s->source), "chat");
    s->title = arena_strdup(&r->arena, h.name);
    s->locale = locale;
    char tags[128];
    snprintf(tags, sizeof(tags), "[\"global-chat\",\"user:%s\"]", r->who.user_id);
    s->tags = arena_strdup(&r->arena, tags);
    s->extra = "{}";
    unsigned seen = 0;
    features_add(h.capabilities, &seen);
    if (h.parent_id[0]) {
        struct harness_rec parent;
        if (store_harness_get(r->st, r->who.org_id, h.parent_id, &r->arena, &parent) == LD_OK)
            features_add(parent.capabilities, &seen);
    }
    struct buf fb;
    buf_init(&fb, 1024);
    if (features_json(seen, &fb)) s->features = arena_strdup(&r->arena, fb.data);
    buf_free(&fb);
    s->singleton_key = arena_strdup(&r->arena, key);
    s->status = SS_STARTED;
    s->created_at = s->updated_at = time_now_us();
    struct store_op *op = op_new(r, SOP_CHAT_GET_OR_CREATE, chat_done);
    op->session = s;
    op_submit(r, op);
}
