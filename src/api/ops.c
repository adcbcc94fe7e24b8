/*
 * ops.c — operational endpoints (/healthz, /readyz, /metrics,
 * /openapi.json), models and harnesses (read-only built-ins).
 */
#include "api/api.h"
#include "core/builtins.h"
#include "http/server.h"
#include "limits.h"
#include <stdlib.h>
#include <string.h>

extern const char loopd_console_html[];
extern const unsigned long loopd_console_html_len;
extern const char loopd_openapi_json[];
extern const unsigned long loopd_openapi_json_len;

void h_healthz(struct req *r)
{
    reply_text(r, 200, "application/json", "{\"status\":\"ok\"}", 15, 0);
}

static void reply_ready(struct req *r)
{
    reply_text(r, 200, "application/json", "{\"status\":\"ready\"}", 18, 0);
}

static void probe_done(struct store_op *op)
{
    struct req *r = op->ud;
    if (op->err == LD_OK)
        reply_ready(r);
    else
        reply_problem(r, LD_E_UNAVAILABLE,
                      "Writes to the store are failing (a test write just failed too: %s); "
                      "loopd retries them and is ready again once the disk takes them",
                      op->detail[0] ? op->detail : ld_err_title(op->err));
}

/* Ready: the store reads, and writes reach the disk.  While commits fail
 * (a failing or full disk), each call makes one test write: not ready
 * until one commits, so readiness comes back with the disk even when no
 * client writes. */
void h_readyz(struct req *r)
{
    struct session_stats s;
    if (store_session_stats(r->st, DEFAULT_ORG_ID, &s) != LD_OK) {
        reply_problem(r, LD_E_UNAVAILABLE, "The store is not readable");
        return;
    }
    struct store_metrics m;
    store_metrics(r->st, &m);
    if (!m.write_failing) {
        reply_ready(r);
        return;
    }
    op_submit(r, op_new(r, SOP_PROBE, probe_done));
}

void h_metrics(struct req *r)
{
    struct buf b;
    buf_init(&b, 1 << 20);
    server_metrics_render(r->srv, &b);
    sessions_cache_metrics(&b);
    size_t len;
    char *text = buf_take(&b, &len);
    reply_text(r, 200, "text/plain; version=0.0.4", text, len, 1);
    free(text);
}

/* The console: one page from the binary.  The API calls it makes carry
 * the key; the page itself needs none.  Strict CSP: nothing but this origin. */
void h_console(struct req *r)
{
    struct reply_header h[3] = {
        {"Content-Security-Policy",
         "default-src 'self'; script-src 'self' 'unsafe-inline'; style-src 'self' "
         "'unsafe-inline'; img-src 'self' data:; connect-src 'self'; frame-ancestors 'none'"},
        {"Cache-Control", "no-cache"},
        {"X-Content-Type-Options", "nosniff"}};
    struct buf b;
    buf_init(&b, loopd_console_html_len + 1);
    buf_add(&b, loopd_console_html, loopd_console_html_len);
    reply_html(r, &b, h, 3);
}

void h_openapi(struct req *r)
{
    reply_text(r, 200, "application/json", loopd_openapi_json, loopd_openapi_json_len, 0);
}

void h_models_list(struct req *r)
{
    struct buf b;
    buf_init(&b, 65536);
    struct jw w;
    jw_init(&w, &b);
    jw_obj(&w);
    jw_key(&w, "data");
    jw_arr(&w);
    for (int i = 0; i < builtin_model_count; i++) {
        jw_obj(&w);
        jw_kstr(&w, "id", builtin_models[i].id);
        jw_kstr(&w, "name", builtin_models[i].name);
        jw_kstr(&w, "display_name", builtin_models[i].display_name);
        jw_kstr(&w, "provider", builtin_models[i].provider);
        jw_kbool(&w, "is_default", strcmp(builtin_models[i].id, DEFAULT_MODEL_ID) == 0);
        jw_kstr(&w, "status", "active");
        jw_end(&w);
    }
    jw_end(&w);
    jw_end(&w);
    reply_json(r, 200, &b);
}

void h_harnesses_list(struct req *r)
{
    const char *search = req_query(r, "search");
    if (search && !*search) search = NULL;
    if (search && strlen(search) > LD_SEARCH_MAX) {
        reply_problem(r, LD_E_BAD_REQUEST, "search: longer than %d bytes", LD_SEARCH_MAX);
        return;
    }
    struct harness_rec *rows;
    int n;
    if (store_harness_list(r->st, r->who.org_id, search, &r->arena, &rows, &n) != LD_OK) {
        reply_problem(r, LD_E_STORAGE, "Storage error");
        return;
    }
    struct buf b;
    buf_init(&b, LD_MAX_RESPONSE);
    struct jw w;
    jw_init(&w, &b);
    jw_obj(&w);
    jw_key(&w, "data");
    jw_arr(&w);
    for (int i = 0; i < n; i++)
        render_harness(r, &w, &rows[i]);
    jw_end(&w);
    jw_end(&w);
    reply_json(r, 200, &b);
}

void h_harness_get(struct req *r)
{
    const char *p = r->params[0];
    if (strncmp(p, "harness_", 8) == 0) {
        if (path_id(r, 0, "harness", "harness")) return;
    } else if (!slug_valid(p)) {
        reply_problem(r, LD_E_BAD_REQUEST, "Invalid harness ID: not a harness ID or a valid name");
        return;
    }
    struct harness_rec h;
    enum ld_err e = store_harness_get(r->st, r->who.org_id,
                                      strcmp(p, "default") == 0 ? "generic" : p, &r->arena, &h);
    if (e != LD_OK) {
        reply_problem(r, e, e == LD_E_NOT_FOUND ? "Harness not found" : "Storage error");
        return;
    }
    h.session_count = store_harness_sessions(r->st, h.id);
    struct buf b;
    buf_init(&b, LD_MAX_RESPONSE);
    struct jw w;
    jw_init(&w, &b);
    render_harness(r, &w, &h);
    reply_json(r, 200, &b);
}
