/*
 * render.c — the JSON of sessions, agents and harnesses, written with our
 * own writer (no tree).  Unset optional keys are omitted; `tags` is always
 * there; status is spelled as upstream sends it (reference 7.1).
 */
#include "api/api.h"
#include <stdio.h>
#include <string.h>

static void action(struct jw *w, const char *base, const char *rel, const char *method,
                   const char *op, const char *path, const char *hint, const char *schema)
{
    jw_obj(w);
    jw_kstr(w, "rel", rel);
    jw_kstr(w, "method", method);
    jw_kstr(w, "operation_id", op);
    jw_key(w, "href");
    buf_putc(w->b, '"');
    buf_puts(w->b, base);
    buf_puts(w->b, path);
    buf_putc(w->b, '"');
    w->first[w->depth] = 0;
    jw_kstr(w, "hint", hint);
    if (schema) jw_kstr(w, "schema_ref", schema);
    jw_end(w);
}

void render_session(struct req *r, struct jw *w, const struct session_rec *s)
{
    const char *base = req_base_url(r);
    char p[160];
    jw_obj(w);
    jw_kstr(w, "id", s->id);
    jw_kstr(w, "organization_id", s->org_id);
    jw_kstr(w, "workspace_id", s->workspace_id);
    jw_kstr(w, "harness_id", s->harness_id);
    jw_kstr_opt(w, "agent_id", s->agent_id);
    jw_kstr_opt(w, "agent_identity_id", s->agent_identity_id);
    jw_kstr(w, "owner_principal_id", s->owner_principal_id);
    jw_kstr_opt(w, "resolved_owner_user_id", s->owner_user_id);
    if (s->title) jw_kstr(w, "title", s->title);
    jw_kstr_opt(w, "goal", s->goal);
    jw_kstr_opt(w, "locale", s->locale);
    jw_kstr_opt(w, "preview", s->preview);
    jw_kstr_opt(w, "output_preview", s->output_preview);
    jw_kraw(w, "tags", s->tags);
    jw_kstr_opt(w, "model_id", s->model_id);
    jw_members(w, s->extra);
    jw_kstr(w, "status", session_status_wire(s->status));
    jw_kstr(w, "source", s->source);
    jw_kstr(w, "activity", session_activity(s->status, s->outcome));
    jw_ktime(w, "created_at", s->created_at);
    jw_ktime(w, "updated_at", s->updated_at);
    if (s->started_at) jw_ktime(w, "started_at", s->started_at);
    if (s->in_tokens + s->out_tokens > 0) {
        jw_key(w, "usage");
        jw_obj(w);
        jw_ki64(w, "input_tokens", s->in_tokens);
        jw_ki64(w, "output_tokens", s->out_tokens);
        if (s->cache_read_tokens) jw_ki64(w, "cache_read_tokens", s->cache_read_tokens);
        if (s->cache_creation_tokens) jw_ki64(w, "cache_creation_tokens", s->cache_creation_tokens);
        jw_end(w);
    }
    if (s->pinned >= 0) jw_kbool(w, "is_pinned", s->pinned);
    if (s->features) jw_kraw(w, "features", s->features);
    snprintf(p, sizeof(p), "/v1/sessions/%s", s->id);
    jw_key(w, "self_url");
    buf_putc(w->b, '"');
    buf_puts(w->b, base);
    buf_puts(w->b, p);
    buf_putc(w->b, '"');
    w->first[w->depth] = 0;
    char view[200];
    snprintf(view, sizeof(view), "/sessions/%s/chat", s->id);
    jw_key(w, "view_url");
    buf_putc(w->b, '"');
    buf_puts(w->b, base);
    buf_puts(w->b, view);
    buf_putc(w->b, '"');
    w->first[w->depth] = 0;
    jw_key(w, "ui_link");
    buf_putc(w->b, '"');
    buf_puts(w->b, base);
    buf_puts(w->b, view);
    buf_putc(w->b, '"');
    w->first[w->depth] = 0;
    jw_key(w, "allowed_actions");
    jw_arr(w);
    char sub[200];
    action(w, base, "self", "GET", "get_session", p,
           "Fetch the latest representation of this session.", NULL);
    snprintf(sub, sizeof(sub), "%s/events", p);
    action(w, base, "events", "GET", "list_events", sub, "List the events of this session.", NULL);
    snprintf(sub, sizeof(sub), "%s/sse", p);
    action(w, base, "stream", "GET", "stream_sse", sub, "Stream this session's events (SSE).",
           NULL);
    if (s->status == SS_ACTIVE || s->status == SS_WAITING) {
        snprintf(sub, sizeof(sub), "%s/cancel", p);
        action(w, base, "cancel", "POST", "cancel_turn", sub, "Cancel the running turn.", NULL);
    }
    action(w, base, "update", "PATCH", "update_session", p,
           "Change the title, tags or locale of this session.",
           "#/components/schemas/UpdateSessionRequest");
    snprintf(sub, sizeof(sub), "%s/pin", p);
    if (s->pinned == 1)
        action(w, base, "unpin", "DELETE", "unpin_session", sub, "Unpin this session.", NULL);
    else
        action(w, base, "pin", "PUT", "pin_session", sub, "Pin this session.", NULL);
    action(w, base, "delete", "DELETE", "delete_session", p, "Delete this session and its history.",
           NULL);
    jw_end(w);
    jw_end(w);
}

void render_agent(struct req *r, struct jw *w, const struct agent_rec *a, int with_counts)
{
    jw_obj(w);
    jw_kstr(w, "id", a->id);
    jw_kstr(w, "name", a->name);
    jw_kstr_opt(w, "display_name", a->display_name);
    jw_kstr_opt(w, "description", a->description);
    jw_kstr(w, "system_prompt", a->system_prompt ? a->system_prompt : "");
    jw_kstr(w, "harness_id", a->harness_id);
    jw_kstr_opt(w, "default_model_id", a->default_model_id);
    jw_kraw(w, "tags", a->tags);
    jw_members(w, a->extra);
    jw_kstr(w, "status", a->archived ? "archived" : "active");
    jw_ktime(w, "created_at", a->created_at);
    jw_ktime(w, "updated_at", a->updated_at);
    if (a->archived) jw_ktime(w, "archived_at", a->archived_at);
    if (with_counts && a->session_count >= 0) {
        jw_ki64(w, "session_count", a->session_count);
        jw_ki64(w, "app_count", 0);
    }
    char p[160];
    snprintf(p, sizeof(p), "%s/v1/agents/%s", req_base_url(r), a->id);
    jw_kstr(w, "self_url", p);
    jw_kstr(w, "view_url", p);
    jw_kstr(w, "ui_link", p);
    jw_end(w);
}

void render_harness(struct req *r, struct jw *w, const struct harness_rec *h)
{
    jw_obj(w);
    jw_kstr(w, "id", h->id);
    jw_kstr(w, "name", h->name);
    jw_kstr_opt(w, "display_name", h->display_name);
    jw_kstr_opt(w, "description", h->description);
    jw_kstr_opt(w, "system_prompt", h->system_prompt);
    jw_kstr_opt(w, "parent_harness_id", h->parent_id);
    jw_kstr_opt(w, "default_model_id", h->default_model_id);
    jw_kraw(w, "capabilities", h->capabilities ? h->capabilities : "[]");
    jw_kraw(w, "tags", h->tags ? h->tags : "[]");
    jw_kbool(w, "is_built_in", h->is_built_in);
    jw_kstr(w, "status", "active");
    jw_ktime(w, "created_at", h->created_at);
    jw_ktime(w, "updated_at", h->updated_at);
    jw_ki64(w, "session_count", h->session_count);
    jw_ki64(w, "app_count", 0);
    char p[200];
    snprintf(p, sizeof(p), "%s/v1/harnesses/%s", req_base_url(r), h->id);
    jw_kstr(w, "self_url", p);
    jw_kstr(w, "view_url", p);
    jw_kstr(w, "ui_link", p);
    jw_end(w);
}
