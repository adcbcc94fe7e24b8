/*
 * render.c — the JSON of sessions, agents and harnesses, written with our
 * own writer (no tree).  Unset optional keys are omitted; `tags` is always
 * there; status is spelled as upstream sends it (reference 7.1).
 */
#include "api/api.h"
#include <stdio.h>
#include <string.h>

/* allowed_actions entries: everything but the href is constant text,
 * kept with its length (six of them in every session body) */
#define ACTION_HEAD(REL, METHOD, OP)                                                               \
    "{\"rel\":\"" REL "\",\"method\":\"" METHOD "\",\"operation_id\":\"" OP "\",\"href\":\""
#define ACTION_TAIL(HINT, TAIL) "\",\"hint\":\"" HINT "\"" TAIL "}"
#define ACTION(REL, METHOD, OP, HINT, TAIL)                                                        \
    {                                                                                              \
        ACTION_HEAD(REL, METHOD, OP), ACTION_TAIL(HINT, TAIL),                                     \
            sizeof(ACTION_HEAD(REL, METHOD, OP)) - 1, sizeof(ACTION_TAIL(HINT, TAIL)) - 1          \
    }
struct action {
    const char *head, *tail;
    size_t hlen, tlen;
};
static const struct action A_SELF =
    ACTION("self", "GET", "get_session", "Fetch the latest representation of this session.", "");
static const struct action A_EVENTS =
    ACTION("events", "GET", "list_events", "List the events of this session.", "");
static const struct action A_STREAM =
    ACTION("stream", "GET", "stream_sse", "Stream this session's events (SSE).", "");
static const struct action A_CANCEL =
    ACTION("cancel", "POST", "cancel_turn", "Cancel the running turn.", "");
static const struct action A_UPDATE =
    ACTION("update", "PATCH", "update_session", "Change the title, tags or locale of this session.",
           ",\"schema_ref\":\"#/components/schemas/UpdateSessionRequest\"");
static const struct action A_PIN = ACTION("pin", "PUT", "pin_session", "Pin this session.", "");
static const struct action A_UNPIN =
    ACTION("unpin", "DELETE", "unpin_session", "Unpin this session.", "");
static const struct action A_DELETE =
    ACTION("delete", "DELETE", "delete_session", "Delete this session and its history.", "");

static void action(struct buf *b, const struct action *a, const char *self, size_t n,
                   const char *suffix, int first)
{
    if (!first) buf_putc(b, ',');
    buf_add(b, a->head, a->hlen);
    buf_add(b, self, n);
    buf_puts(b, suffix);
    buf_add(b, a->tail, a->tlen);
}

/* "key":"<base><mid><id><end>" with no escaping: every part is ours */
static void kurl(struct jw *w, const char *key, const char *base, const char *mid, const char *id,
                 const char *end)
{
    jw_key(w, key);
    jw_raw(w, "\"");
    buf_puts(w->b, base);
    buf_puts(w->b, mid);
    buf_puts(w->b, id);
    buf_puts(w->b, end);
    buf_putc(w->b, '"');
}

size_t session_url(struct req *r, const char *id, char *out, size_t size)
{
    const char *base = req_base_url(r);
    size_t bl = strlen(base), il = strlen(id);
    if (bl + 13 + il >= size) { /* "/v1/sessions/"; cannot happen: both are bounded */
        if (size) out[0] = 0;
        return 0;
    }
    memcpy(out, base, bl);
    memcpy(out + bl, "/v1/sessions/", 13);
    memcpy(out + bl + 13, id, il + 1);
    return bl + 13 + il;
}

void render_session(struct req *r, struct jw *w, const struct session_rec *s)
{
    const char *base = req_base_url(r);
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
    /* built once: self_url and every action's href start with it */
    char self[400];
    size_t sl = session_url(r, s->id, self, sizeof(self));
    jw_key(w, "self_url");
    jw_raw(w, "\"");
    buf_add(w->b, self, sl);
    buf_putc(w->b, '"');
    kurl(w, "view_url", base, "/sessions/", s->id, "/chat");
    kurl(w, "ui_link", base, "/sessions/", s->id, "/chat");
    jw_key(w, "allowed_actions");
    jw_raw(w, "[");
    struct buf *o = w->b;
    action(o, &A_SELF, self, sl, "", 1);
    action(o, &A_EVENTS, self, sl, "/events", 0);
    action(o, &A_STREAM, self, sl, "/sse", 0);
    if (s->status == SS_ACTIVE || s->status == SS_WAITING)
        action(o, &A_CANCEL, self, sl, "/cancel", 0);
    action(o, &A_UPDATE, self, sl, "", 0);
    action(o, s->pinned == 1 ? &A_UNPIN : &A_PIN, self, sl, "/pin", 0);
    action(o, &A_DELETE, self, sl, "", 0);
    buf_putc(o, ']');
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
