/*
 * agents.c — /v1/agents (reference 19.1): create, list, get by id or name,
 * patch, put (upsert by id or name), delete (archive).  Names are slugs,
 * unique per org (archived agents keep their name; PUT revives them).
 */
#include "api/api.h"
#include "core/builtins.h"
#include "limits.h"
#include "util/timeutil.h"
#include <stdio.h>
#include <string.h>

static void reply_agent(struct req *r, int status, const struct agent_rec *a)
{
    struct buf b;
    buf_init(&b, LD_MAX_RESPONSE);
    struct jw w;
    jw_init(&w, &b);
    render_agent(r, &w, a, 1);
    char etag[32];
    snprintf(etag, sizeof(etag), "\"%lld\"", (long long)a->version);
    struct reply_header h = {"ETag", etag};
    reply_json_h(r, status, &b, &h, 1);
}

static void reply_agent_fresh(struct req *r, const char *id, int status)
{
    struct agent_rec a;
    enum ld_err e = store_agent_get(r->st, r->who.org_id, id, &r->arena, &a);
    if (e == LD_OK)
        reply_agent(r, status, &a);
    else
        reply_problem(r, e, e == LD_E_NOT_FOUND ? "Agent not found" : "Storage error");
}

/*
 * Reads the agent fields of body into a (which may hold the current row for
 * a patch: absent fields keep their values).  `full`: name and
 * system_prompt are required (create, and PUT of a new agent).
 */
static int read_agent_body(struct req *r, json_t *body, struct agent_rec *a, int full,
                           int keep_extra)
{
    const char *name = NULL, *sp = NULL, *harness_id = NULL, *harness_name = NULL, *model = NULL;
    int rc_name = field_slug(r, body, "name", &name);
    if (rc_name < 0) return -1;
    if (field_str(r, body, "system_prompt", LD_MAX_SYSTEM_PROMPT, &sp) < 0 ||
        field_str(r, body, "display_name", LD_MAX_DISPLAY_NAME, &a->display_name) < 0 ||
        field_str(r, body, "description", LD_MAX_DESCRIPTION, &a->description) < 0 ||
        field_id(r, body, "harness_id", "harness", "harness", &harness_id) < 0 ||
        field_slug(r, body, "harness_name", &harness_name) < 0 ||
        field_id(r, body, "default_model_id", "model", "model", &model) < 0 ||
        field_tags(r, body, "tags", &a->tags) < 0)
        return -1;
    if (full && (!name || !sp)) {
        reply_problem(r, LD_E_BAD_REQUEST, "%s: required", !name ? "name" : "system_prompt");
        return -1;
    }
    if (name) a->name = name;
    if (sp) a->system_prompt = sp;
    if (harness_id && harness_name) {
        reply_problem(r, LD_E_BAD_REQUEST, "Cannot specify both harness_id and harness_name");
        return -1;
    }
    if (harness_id || harness_name || !a->harness_id[0]) {
        struct harness_rec h;
        const char *want = harness_id ? harness_id : harness_name ? harness_name : "generic";
        enum ld_err e = store_harness_get(r->st, r->who.org_id, want, &r->arena, &h);
        if (e == LD_OK && harness_id && strcmp(h.id, harness_id) != 0) e = LD_E_NOT_FOUND;
        if (e != LD_OK) {
            reply_problem(r, e, e == LD_E_NOT_FOUND ? "Harness not found" : "Storage error");
            return -1;
        }
        str_copy(a->harness_id, sizeof(a->harness_id), h.id);
    }
    if (model) {
        if (!model_find(model)) {
            reply_problem(r, LD_E_NOT_FOUND, "Model not found");
            return -1;
        }
        str_copy(a->default_model_id, sizeof(a->default_model_id), model);
    }
    /* the config fields: given ones replace, absent ones are kept */
    json_t *old = keep_extra && a->extra ? json_loads(a->extra, 0, NULL) : NULL;
    struct buf xb;
    buf_init(&xb, LD_MAX_BODY_BOUND);
    struct jw x;
    jw_init(&x, &xb);
    jw_obj(&x);
    const char *caps = NULL;
    if (fields_config(r, body, 0, &x, &caps)) {
        buf_free(&xb);
        json_decref(old);
        return -1;
    }
    jw_end(&x);
    if (old) {
        json_t *neu = json_loads(xb.data, 0, NULL);
        static const char *const keys[] = {"capabilities",       "tools",          "mcpServers",
                                           "initial_files",      "network_access", "max_iterations",
                                           "parallel_tool_calls"};
        for (size_t i = 0; i < sizeof(keys) / sizeof(*keys); i++) {
            const char *k = keys[i];
            int given = json_object_get(body, k) != NULL ||
                        (strcmp(k, "mcpServers") == 0 && json_object_get(body, "mcp_servers"));
            if (!given && json_object_get(old, k)) json_object_set(neu, k, json_object_get(old, k));
        }
        char *d = json_dumps(neu, JSON_COMPACT);
        a->extra = arena_strdup(&r->arena, d);
        free(d);
        json_decref(neu);
        json_decref(old);
    } else {
        a->extra = arena_strdup(&r->arena, xb.data);
    }
    buf_free(&xb);
    if (!a->tags) a->tags = "[]";
    return 0;
}

static void agent_created_done(struct store_op *op)
{
    struct req *r = op->ud;
    if (op->err == LD_OK) {
        struct buf b;
        buf_init(&b, LD_MAX_RESPONSE);
        if (op->idem) {
            buf_puts(&b, op->idem->body);
        } else {
            struct jw w;
            jw_init(&w, &b);
            render_agent(r, &w, op->agent, 1);
        }
        struct reply_header h = {"ETag", "\"1\""};
        reply_json_h(r, 201, &b, &h, 1);
        return;
    }
    if (op->idem_conflict) {
        idem_replay_after_conflict(r, op->idem);
        return;
    }
    reply_op_error(r, op);
}

static void agent_insert(struct req *r, struct agent_rec *a, struct idem_rec *idem)
{
    a->created_at = a->updated_at = time_now_us();
    a->version = 1;
    a->session_count = 0;
    str_copy(a->org_id, sizeof(a->org_id), r->who.org_id);
    struct store_op *op = op_new(r, SOP_AGENT_INSERT, agent_created_done);
    op->agent = a;
    if (idem) {
        struct buf b;
        buf_init(&b, LD_MAX_RESPONSE);
        struct jw w;
        jw_init(&w, &b);
        render_agent(r, &w, a, 1);
        idem->body = arena_strdup(&r->arena, b.data);
        idem->status = 201;
        buf_free(&b);
        op->idem = idem;
    }
    op_submit(r, op);
}

void h_agents_create(struct req *r)
{
    struct idem_rec *idem;
    if (idem_check(r, &idem)) return;
    json_t *body = body_object(r, 0);
    if (!body) return;
    struct agent_rec *a = arena_alloc(&r->arena, sizeof(*a));
    const char *id = NULL;
    if (field_id(r, body, "id", "agent", "agent", &id) < 0 || read_agent_body(r, body, a, 1, 0) < 0)
        goto out;
    if (id)
        str_copy(a->id, sizeof(a->id), id);
    else
        id_new("agent", a->id);
    agent_insert(r, a, idem);
out:
    json_decref(body);
}

/* a row of the list query (list_page) */
static int list_agent_row(const struct agent_rec *ag, void *ud)
{
    struct list_page *p = ud;
    struct jw *w = list_item(p, ag->id);
    if (w) render_agent(p->r, w, ag, 1);
    return list_full(p); /* streamed: only ids from here on */
}

/* a row of a streamed page, read again when its turn comes */
static int agent_again(struct req *r, struct jw *w, const char *id, struct arena *a)
{
    struct agent_rec ag;
    enum ld_err e = store_agent_get(r->st, r->who.org_id, id, a, &ag);
    if (e == LD_E_NOT_FOUND) return 1;
    if (e != LD_OK) return -1;
    render_agent(r, w, &ag, 1);
    return 0;
}

void h_agents_list(struct req *r)
{
    long offset, limit;
    if (page_params(r, &offset, &limit)) return;
    const char *search = req_query(r, "search");
    if (search && !*search) search = NULL;
    if (search && strlen(search) > LD_SEARCH_MAX) {
        reply_problem(r, LD_E_BAD_REQUEST, "search: longer than %d bytes", LD_SEARCH_MAX);
        return;
    }
    const char *ia = req_query(r, "include_archived");
    int include = ia && (strcmp(ia, "true") == 0 || strcmp(ia, "1") == 0);
    struct list_page p;
    list_begin(&p, r, limit, "agents", agent_again); /* `agents`: what the TS SDK reads */
    int64_t total;
    enum ld_err e = store_agent_list(r->st, r->who.org_id, search, include, offset, limit,
                                     &r->arena, list_agent_row, &p, &total);
    if (e != LD_OK) {
        buf_free(&p.b);
        reply_problem(r, e, "Storage error");
        return;
    }
    list_end(&p, total, offset, limit);
}

/* {id_or_name}: an agent_… ID is checked strictly; anything else is a name */
static int agent_param(struct req *r)
{
    const char *p = r->params[0];
    if (strncmp(p, "agent_", 6) == 0) return path_id(r, 0, "agent", "agent");
    if (!slug_valid(p)) {
        reply_problem(r, LD_E_BAD_REQUEST, "Invalid agent ID: not an agent ID or a valid name");
        return -1;
    }
    return 0;
}

void h_agent_get(struct req *r)
{
    if (agent_param(r)) return;
    reply_agent_fresh(r, r->params[0], 200);
}

static void agent_updated_done(struct store_op *op)
{
    struct req *r = op->ud;
    if (op->err != LD_OK) {
        reply_op_error(r, op);
        return;
    }
    reply_agent_fresh(r, op->agent->id, op->flag ? 201 : 200);
}

static void agent_update(struct req *r, json_t *body, struct agent_rec *a, int revive)
{
    if (read_agent_body(r, body, a, 0, 1) < 0) return;
    if (revive) a->archived = 0;
    a->updated_at = time_now_us();
    struct store_op *op = op_new(r, SOP_AGENT_UPDATE, agent_updated_done);
    op->agent = a;
    op->if_match = a->version;
    op_submit(r, op);
}

void h_agent_patch(struct req *r)
{
    if (agent_param(r)) return;
    json_t *body = body_object(r, 1);
    if (!body) return;
    struct agent_rec *a = arena_alloc(&r->arena, sizeof(*a));
    enum ld_err e = store_agent_get(r->st, r->who.org_id, r->params[0], &r->arena, a);
    if (e != LD_OK) {
        reply_problem(r, e, e == LD_E_NOT_FOUND ? "Agent not found" : "Storage error");
    } else {
        const char *status = NULL;
        if (field_str(r, body, "status", 32, &status) >= 0) {
            if (status && strcmp(status, "active") && strcmp(status, "archived"))
                reply_problem(r, LD_E_BAD_REQUEST, "status: must be active or archived");
            else {
                if (status) {
                    a->archived = strcmp(status, "archived") == 0;
                    if (a->archived && !a->archived_at) a->archived_at = time_now_us();
                }
                agent_update(r, body, a, 0);
            }
        }
    }
    json_decref(body);
}

void h_agent_put(struct req *r)
{
    if (agent_param(r)) return;
    json_t *body = body_object(r, 0);
    if (!body) return;
    struct agent_rec *a = arena_alloc(&r->arena, sizeof(*a));
    enum ld_err e = store_agent_get(r->st, r->who.org_id, r->params[0], &r->arena, a);
    if (e == LD_OK) {
        agent_update(r, body, a, 1);
    } else if (e == LD_E_NOT_FOUND) {
        memset(a, 0, sizeof(*a));
        if (read_agent_body(r, body, a, 1, 0) == 0) {
            const char *p = r->params[0];
            if (strncmp(p, "agent_", 6) == 0) {
                str_copy(a->id, sizeof(a->id), p);
            } else {
                id_new("agent", a->id);
                if (strcmp(a->name, p) != 0) {
                    reply_problem(r, LD_E_BAD_REQUEST,
                                  "name: must equal the name in the path ('%.64s')", p);
                    goto out;
                }
            }
            agent_insert(r, a, NULL);
        }
    } else {
        reply_problem(r, e, "Storage error");
    }
out:
    json_decref(body);
}

static void archived_done(struct store_op *op)
{
    struct req *r = op->ud;
    if (op->err != LD_OK)
        reply_op_error(r, op);
    else
        reply_empty(r, 204, NULL, 0);
}

void h_agent_delete(struct req *r)
{
    if (agent_param(r)) return;
    struct agent_rec a;
    enum ld_err e = store_agent_get(r->st, r->who.org_id, r->params[0], &r->arena, &a);
    if (e != LD_OK) {
        reply_problem(r, e, e == LD_E_NOT_FOUND ? "Agent not found" : "Storage error");
        return;
    }
    struct store_op *op = op_new(r, SOP_AGENT_ARCHIVE, archived_done);
    op->org_id = r->who.org_id;
    op->id = arena_strdup(&r->arena, a.id);
    op->if_match = time_now_us();
    op_submit(r, op);
}
