/*
 * messages.c — /v1/sessions/{id}/messages, /events and /cancel
 * (reference sections 12, 14, 15).  Messages are rebuilt from the event
 * log; posting one appends input.message and starts (or steers) a turn,
 * and the 201 leaves once the input is durable.
 */
#include "api/api.h"
#include "core/builtins.h"
#include "engine/engine.h"
#include "limits.h"
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* ---- POST messages ---- */

static void posted(void *ud, enum ld_err err, const char *detail, const char *msg,
                   const char *delivery)
{
    struct req *r = ud;
    if (err != LD_OK) {
        reply_problem(r, err, "%s", detail && *detail ? detail : "The message was not stored");
        return;
    }
    struct buf b;
    buf_init(&b, LD_MAX_RESPONSE);
    size_t n = strlen(msg);
    buf_add(&b, msg, n - 1); /* the Message object, plus its delivery */
    buf_printf(&b, ",\"delivery\":\"%s\"}", delivery);
    reply_json(r, strcmp(delivery, "duplicate") == 0 ? 200 : 201, &b);
}

static int uuid_valid(const char *s)
{
    if (strlen(s) != 36) return 0;
    for (int i = 0; i < 36; i++) {
        char c = s[i];
        if (i == 8 || i == 13 || i == 18 || i == 23) {
            if (c != '-') return 0;
        } else if (!((c >= '0' && c <= '9') || (c >= 'a' && c <= 'f') || (c >= 'A' && c <= 'F'))) {
            return 0;
        }
    }
    return 1;
}

/* checks the content parts; returns the joined text (arena) or NULL after a 400 */
static const char *check_content(struct req *r, json_t *content)
{
    if (!json_is_array(content) || json_array_size(content) == 0 ||
        json_array_size(content) > 100) {
        reply_problem(r, LD_E_BAD_REQUEST, "message.content: expected 1 to 100 content parts");
        return NULL;
    }
    struct buf text;
    buf_init(&text, LD_MAX_BODY_BOUND);
    size_t i;
    json_t *part;
    json_array_foreach(content, i, part)
    {
        const char *type =
            json_is_object(part) ? json_string_value(json_object_get(part, "type")) : NULL;
        if (!type) {
            reply_problem(r, LD_E_BAD_REQUEST, "message.content[%zu].type: expected a string", i);
            buf_free(&text);
            return NULL;
        }
        if (strcmp(type, "text") == 0) {
            json_t *t = json_object_get(part, "text");
            if (!json_is_string(t)) {
                reply_problem(r, LD_E_BAD_REQUEST, "message.content[%zu].text: expected a string",
                              i);
                buf_free(&text);
                return NULL;
            }
            if (text.len) buf_putc(&text, '\n');
            buf_add(&text, json_string_value(t), json_string_length(t));
        } else if (strcmp(type, "image") != 0 && strcmp(type, "image_file") != 0) {
            reply_problem(r, LD_E_BAD_REQUEST,
                          "message.content[%zu].type: must be text, image or image_file", i);
            buf_free(&text);
            return NULL;
        }
    }
    const char *out = arena_strdup(&r->arena, text.data ? text.data : "");
    buf_free(&text);
    return out;
}

static const char *dump(struct req *r, json_t *v)
{
    char *d = json_dumps(v, JSON_COMPACT | JSON_ENCODE_ANY);
    const char *s = arena_strdup(&r->arena, d);
    free(d);
    return s;
}

void h_messages_post(struct req *r)
{
    struct session_rec s;
    if (session_from_path(r, &s)) return;
    json_t *body = body_object(r, 0);
    if (!body) return;
    struct engine_input in;
    memset(&in, 0, sizeof(in));
    json_t *m = json_object_get(body, "message");
    if (!json_is_object(m)) {
        reply_problem(r, LD_E_BAD_REQUEST, "message: expected an object {role, content}");
        goto out;
    }
    json_t *role = json_object_get(m, "role");
    if (role && !json_is_null(role) &&
        (!json_is_string(role) || strcmp(json_string_value(role), "user") != 0)) {
        reply_problem(r, LD_E_BAD_REQUEST, "message.role: only \"user\" messages can be posted");
        goto out;
    }
    json_t *content = json_object_get(m, "content");
    if (!(in.text = check_content(r, content))) goto out;
    in.content = dump(r, content);
    json_t *controls = json_object_get(body, "controls");
    if (controls && !json_is_null(controls)) {
        if (!json_is_object(controls)) {
            reply_problem(r, LD_E_BAD_REQUEST, "controls: expected an object");
            goto out;
        }
        json_t *mj = json_object_get(controls, "model_id");
        const char *model = json_string_value(mj);
        if (mj && !json_is_null(mj) && !model) {
            reply_problem(r, LD_E_BAD_REQUEST, "controls.model_id: expected a string");
            goto out;
        }
        if (model) {
            char why[160];
            if (id_check("model", model, why, sizeof(why))) {
                reply_problem(r, LD_E_BAD_REQUEST, "controls.model_id: Invalid model ID: %s", why);
                goto out;
            }
            if (!model_find(model)) {
                reply_problem(r, LD_E_NOT_FOUND, "Model not found");
                goto out;
            }
            in.model_id = arena_strdup(&r->arena, model);
        }
        json_t *hints = json_object_get(controls, "hints");
        if (hints && !json_is_null(hints) && !json_is_object(hints)) {
            reply_problem(r, LD_E_BAD_REQUEST, "controls.hints: expected an object");
            goto out;
        }
        json_t *sim = json_object_get(hints, "llmsim");
        if (json_is_object(sim)) in.hints = dump(r, sim);
        in.controls = dump(r, controls);
    }
    json_t *meta = json_object_get(body, "metadata");
    if (meta && !json_is_null(meta)) {
        if (!json_is_object(meta)) {
            reply_problem(r, LD_E_BAD_REQUEST, "metadata: expected an object");
            goto out;
        }
        in.metadata = dump(r, meta);
    }
    const char *cid = NULL;
    if (field_str(r, body, "client_message_id", 64, &cid) < 0) goto out;
    if (cid && !uuid_valid(cid)) {
        reply_problem(r, LD_E_BAD_REQUEST, "client_message_id: expected a UUID");
        goto out;
    }
    in.client_message_id = cid;
    /* the engine may answer at once (a duplicate): suspend only if not */
    engine_post_message(r->eng, &s, &in, posted, r);
    if (!r->resp) req_suspend(r);
out:
    json_decref(body);
}

/* ---- GET messages ---- */

struct list_ctx {
    struct buf *b;
    int n;
};

static void add_msg(const char *json, void *ud)
{
    struct list_ctx *c = ud;
    if (c->n++) buf_putc(c->b, ',');
    buf_puts(c->b, json);
}

/* A message list past LD_MESSAGES_BUFFERED bytes is streamed (reply_stream)
 * instead of built at once: a session's messages have no bound, and the
 * answer holds them twice (`data` and the `messages` alias); built in one
 * buffer, a history past 8 MiB was a 500.  Both passes stop at the log's
 * end as it was when the request came (`upto`), so they list the same
 * messages however many are added meanwhile. */
#define LD_MESSAGES_BUFFERED (4u * 1024 * 1024)
#define MESSAGES_PAGE 64

struct msg_stream {
    struct store *st;
    char session_id[ID_MAX];
    int64_t upto, cursor;
    int pass; /* 0: not begun, 1: `data`, 2: `messages` */
    int n;    /* items written in this pass */
    struct buf *out;
};

static void stream_msg(const char *json, int64_t seq, void *ud)
{
    struct msg_stream *m = ud;
    if (m->n++) buf_putc(m->out, ',');
    buf_puts(m->out, json);
    m->cursor = seq;
}

static int msg_stream_more(void *ud, struct buf *out)
{
    struct msg_stream *m = ud;
    m->out = out;
    if (m->pass == 0) {
        buf_puts(out, "{\"data\":[");
        m->pass = 1;
    }
    while (out->len < LD_STREAM_PIECE_TARGET) {
        int n;
        if (store_messages_page(m->st, m->session_id, m->cursor, m->upto, MESSAGES_PAGE, stream_msg,
                                m, &n) != LD_OK)
            return -1;
        if (n == MESSAGES_PAGE) continue;
        if (m->pass == 2) {
            buf_puts(out, "]}");
            return 0;
        }
        buf_puts(out, "],\"messages\":[");
        m->pass = 2;
        m->cursor = 0;
        m->n = 0;
    }
    return 1;
}

void h_messages_list(struct req *r)
{
    struct session_rec s;
    if (session_from_path(r, &s)) return;
    struct buf arr;
    buf_init(&arr, LD_MESSAGES_BUFFERED);
    struct list_ctx c = {&arr, 0};
    buf_putc(&arr, '[');
    if (store_messages(r->st, s.id, add_msg, &c) != LD_OK) {
        buf_free(&arr);
        reply_problem(r, LD_E_STORAGE, "Storage error");
        return;
    }
    if (arr.overflow) {
        buf_free(&arr);
        struct msg_stream *m = xcalloc(1, sizeof(*m));
        m->st = r->st;
        str_copy(m->session_id, sizeof(m->session_id), s.id);
        m->upto = store_events_max_seq(r->st, s.id); /* same read snapshot */
        reply_stream(r, 200, "application/json", msg_stream_more, free, m);
        return;
    }
    buf_putc(&arr, ']');
    struct buf b;
    buf_init(&b, 2 * LD_MESSAGES_BUFFERED + 64);
    buf_puts(&b, "{\"data\":");
    buf_add(&b, arr.data, arr.len);
    buf_puts(&b, ",\"messages\":");
    buf_add(&b, arr.data, arr.len);
    buf_putc(&b, '}');
    buf_free(&arr);
    reply_json(r, 200, &b);
}

/* ---- event filters (shared with SSE) ---- */

static const char *const event_types[] = {
    "input.message",
    "output.message.started",
    "output.message.delta",
    "output.message.completed",
    "output.message.replaced",
    "turn.started",
    "turn.completed",
    "turn.failed",
    "turn.sealed",
    "turn.cancelled",
    "reason.started",
    "reason.completed",
    "reason.recovered",
    "reason.thinking.started",
    "reason.thinking.delta",
    "reason.thinking.completed",
    "reason.item",
    "act.started",
    "act.completed",
    "tool.started",
    "tool.completed",
    "tool.progress",
    "tool.output.delta",
    "tool.call_requested",
    "tool.call_repaired",
    "transcript.repaired",
    "llm.generation",
    "session.started",
    "session.activated",
    "session.idled",
    "schedule.triggered",
    "context.compacting",
    "context.compacted",
    "budget.warning",
    "budget.paused",
    "budget.exhausted",
    "budget.resumed",
    "file.written",
    "capability.usage",
};

int event_type_known(const char *t)
{
    for (size_t i = 0; i < sizeof(event_types) / sizeof(*event_types); i++)
        if (strcmp(event_types[i], t) == 0) return 1;
    return 0;
}

#define MAX_TYPE_FILTER 25

int event_filter_parse(struct req *r, struct event_filter *f)
{
    memset(f, 0, sizeof(*f));
    const char *names[2] = {"types", "exclude"};
    for (int k = 0; k < 2; k++) {
        const char **out = k ? f->exclude : f->types;
        int n = req_query_all(r, names[k], out, MAX_TYPE_FILTER);
        if (n > MAX_TYPE_FILTER) {
            reply_problem(r, LD_E_BAD_REQUEST, "%s: too many values (%d, max %d)", names[k], n,
                          MAX_TYPE_FILTER);
            return -1;
        }
        for (int i = 0; i < n; i++)
            if (!event_type_known(out[i])) {
                reply_problem(r, LD_E_BAD_REQUEST, "%s: unknown event type '%.64s'", names[k],
                              out[i]);
                return -1;
            }
        if (k)
            f->nexclude = n;
        else
            f->ntypes = n;
    }
    return 0;
}

int event_filter_match(const struct event_filter *f, const char *type)
{
    if (f->ntypes) {
        int hit = 0;
        for (int i = 0; i < f->ntypes; i++)
            if (strcmp(f->types[i], type) == 0) hit = 1;
        if (!hit) return 0;
    }
    for (int i = 0; i < f->nexclude; i++)
        if (strcmp(f->exclude[i], type) == 0) return 0;
    return 1;
}

/* since_id (or Last-Event-ID for SSE): the sequence to start after */
int event_cursor(struct req *r, const char *session_id, int sse, int64_t *after)
{
    *after = 0;
    const char *since = req_query(r, "since_id");
    if ((!since || !*since) && sse) since = req_header(r, "Last-Event-ID");
    if (!since || !*since) return 0;
    char why[160];
    if (id_check("event", since, why, sizeof(why))) {
        reply_problem(r, LD_E_BAD_REQUEST, "since_id: Invalid event ID: %s", why);
        return -1;
    }
    enum ld_err e = store_event_seq(r->st, session_id, since, after);
    if (e == LD_E_NOT_FOUND) {
        reply_problem(r, LD_E_NOT_FOUND, "since_id: no such event in this session");
        return -1;
    }
    if (e != LD_OK) {
        reply_problem(r, e, "Storage error");
        return -1;
    }
    return 0;
}

/* ---- GET events ---- */

/*
 * The answer is built in one buffer while it stays under LD_LIST_BUFFERED
 * bytes, else streamed (reply_stream): "without limit, everything" may be a
 * session's whole log, and 1,000 events of a megabyte do not fit one
 * buffer (they were a 500, or a crash past the request arena).  The log
 * is read a page at a time, each page in its own arena.  A streamed
 * answer stops at the log's end as it was when the request came.
 */
#define EVENTS_PAGE 500 /* rows read from the store at a time */

struct ev_stream {
    struct store *st;
    char session_id[ID_MAX];
    struct event_filter f; /* its strings are the request's query: alive */
    char *head;            /* what was built before streaming began */
    int64_t cursor, upto;  /* forward: the last sequence done, the end */
    int64_t *seqs;         /* limit: the sequences to send, in order */
    int nseqs, iseq;
    int n_out, done;
};

static void ev_put(struct ev_stream *x, struct buf *out, const char *body)
{
    if (x->n_out++) buf_putc(out, ',');
    buf_puts(out, body);
}

static int ev_more(void *ud, struct buf *out)
{
    struct ev_stream *x = ud;
    if (x->head) {
        buf_puts(out, x->head);
        free(x->head);
        x->head = NULL;
    }
    while (!x->done && out->len < LD_STREAM_PIECE_TARGET) {
        struct arena pa;
        arena_init(&pa);
        struct event_rec *rows;
        int n;
        if (x->seqs) { /* limit: one chosen event at a time */
            if (x->iseq == x->nseqs) {
                x->done = 1;
                arena_free(&pa);
                break;
            }
            int64_t q = x->seqs[x->iseq++];
            int more;
            if (store_events_page(x->st, x->session_id, q - 1, q, 1, 0, &pa, &rows, &n, &more) !=
                LD_OK) {
                arena_free(&pa);
                return -1;
            }
            if (n) ev_put(x, out, rows[0].body);
        } else {
            int more;
            if (store_events_page(x->st, x->session_id, x->cursor, x->upto, EVENTS_PAGE, 0, &pa,
                                  &rows, &n, &more) != LD_OK) {
                arena_free(&pa);
                return -1;
            }
            for (int i = 0; i < n; i++)
                if (event_filter_match(&x->f, rows[i].type)) ev_put(x, out, rows[i].body);
            if (n) x->cursor = rows[n - 1].seq;
            if (!more) x->done = 1;
        }
        arena_free(&pa);
    }
    if (!x->done) return 1;
    buf_puts(out, "]}");
    return 0;
}

static void ev_release(void *ud)
{
    struct ev_stream *x = ud;
    free(x->head);
    free(x->seqs);
    free(x);
}

void h_events_list(struct req *r)
{
    struct session_rec s;
    if (session_from_path(r, &s)) return;
    struct event_filter f;
    if (event_filter_parse(r, &f)) return;
    int64_t after;
    if (event_cursor(r, s.id, 0, &after)) return;
    long limit = 0;
    const char *l = req_query(r, "limit");
    if (l) {
        char *end;
        limit = strtol(l, &end, 10);
        if (*end || limit < 1 || limit > 1000) {
            reply_problem(r, LD_E_BAD_REQUEST, "limit: must be a whole number from 1 to 1000");
            return;
        }
    }
    const char *as = req_query(r, "after_sequence");
    if (as) {
        char *end;
        long long v = strtoll(as, &end, 10);
        if (*end || v < 0) {
            reply_problem(r, LD_E_BAD_REQUEST, "after_sequence: must be a whole number >= 0");
            return;
        }
        if (v > after) after = v;
    }
    char tc[24];
    snprintf(tc, sizeof(tc), "%lld", (long long)store_events_total(r->st, s.id));
    struct reply_header h = {"X-Total-Count", tc};
    /* the end of the log now: a streamed answer stops there */
    int64_t upto = store_events_max_seq(r->st, s.id);
    struct buf b;
    buf_init(&b, LD_LIST_BUFFERED + LD_MAX_STREAM_PIECE);
    buf_puts(&b, "{\"data\":[");
    struct ev_stream *x = xcalloc(1, sizeof(*x));
    x->st = r->st;
    str_copy(x->session_id, sizeof(x->session_id), s.id);
    x->f = f;
    x->upto = upto;
    int stream = 0;
    if (limit) {
        /* the newest `limit` matches: read backwards from the end; their
         * bodies are kept while they fit the buffered answer, their
         * sequences always (then the answer is streamed) */
        const char **keep = arena_alloc(&r->arena, sizeof(*keep) * (size_t)limit);
        x->seqs = xcalloc((size_t)limit, sizeof(*x->seqs));
        size_t kept_bytes = 0;
        int nkeep = 0;
        for (int64_t hi = upto; nkeep < limit && hi > after;) {
            struct arena pa;
            arena_init(&pa);
            struct event_rec *rows;
            int n, more;
            if (store_events_page(r->st, s.id, after, hi, EVENTS_PAGE, 1, &pa, &rows, &n, &more) !=
                LD_OK) {
                arena_free(&pa);
                buf_free(&b);
                ev_release(x);
                reply_problem(r, LD_E_STORAGE, "Storage error");
                return;
            }
            for (int i = n - 1; i >= 0 && nkeep < limit; i--) {
                if (!event_filter_match(&f, rows[i].type)) continue;
                x->seqs[nkeep] = rows[i].seq;
                size_t len = strlen(rows[i].body);
                kept_bytes += len + 1;
                if (kept_bytes > LD_LIST_BUFFERED) stream = 1;
                keep[nkeep++] = stream ? NULL : arena_strndup(&r->arena, rows[i].body, len);
            }
            hi = n ? rows[0].seq - 1 : 0;
            arena_free(&pa);
            if (!more) break;
        }
        x->nseqs = nkeep;
        for (int i = 0, j = nkeep - 1; i < j; i++, j--) { /* oldest first */
            int64_t t = x->seqs[i];
            x->seqs[i] = x->seqs[j];
            x->seqs[j] = t;
        }
        if (!stream)
            for (int i = nkeep - 1; i >= 0; i--)
                ev_put(x, &b, keep[i]);
    } else {
        /* from the cursor on; past the buffered size, the rest streams */
        x->cursor = after;
        while (!x->done && !stream) {
            struct arena pa;
            arena_init(&pa);
            struct event_rec *rows;
            int n, more;
            if (store_events_page(r->st, s.id, x->cursor, upto, EVENTS_PAGE, 0, &pa, &rows, &n,
                                  &more) != LD_OK) {
                arena_free(&pa);
                buf_free(&b);
                ev_release(x);
                reply_problem(r, LD_E_STORAGE, "Storage error");
                return;
            }
            for (int i = 0; i < n; i++) {
                if (event_filter_match(&f, rows[i].type)) ev_put(x, &b, rows[i].body);
                x->cursor = rows[i].seq;
                if (b.len > LD_LIST_BUFFERED) {
                    stream = 1;
                    break;
                }
            }
            if (!stream && !more) x->done = 1;
            arena_free(&pa);
        }
    }
    if (!stream) {
        ev_release(x);
        buf_puts(&b, "]}");
        reply_json_h(r, 200, &b, &h, 1);
        return;
    }
    if (limit) {
        buf_free(&b); /* rebuilt by the stream, from the sequences */
        x->n_out = 0;
        x->head = xstrdup("{\"data\":[");
    } else {
        x->head = buf_take(&b, NULL);
    }
    reply_stream_h(r, 200, "application/json", &h, 1, ev_more, ev_release, x);
}

/* ---- cancel ---- */

static void cancelled(void *ud, enum ld_err err, int did)
{
    struct req *r = ud;
    if (err != LD_OK) {
        reply_problem(r, err, "The cancel could not be stored");
        return;
    }
    struct buf b;
    buf_init(&b, 256);
    buf_puts(&b, did ? "{\"status\":\"cancelled\",\"message\":\"Turn cancelled successfully\"}"
                     : "{\"status\":\"no_op\",\"message\":\"No turn currently running\"}");
    reply_json(r, 200, &b);
}

void h_session_cancel(struct req *r)
{
    struct session_rec s;
    if (session_from_path(r, &s)) return;
    engine_cancel(r->eng, &s, cancelled, r);
    if (!r->resp) req_suspend(r);
}

/* ---- tool results (reference 12) ---- */

static void results_done(void *ud, enum ld_err err, const char *detail, int accepted, int resumed)
{
    struct req *r = ud;
    if (err == LD_E_CONFLICT) {
        reply_problem(r, err, "Session is not waiting for tool results (current status: %s)",
                      "active");
        return;
    }
    if (err != LD_OK) {
        reply_problem(r, err, "%s", detail && *detail ? detail : "The results were not stored");
        return;
    }
    struct buf b;
    buf_init(&b, 256);
    buf_printf(&b, "{\"accepted\":%d,\"status\":\"%s\"}", accepted,
               resumed ? "active" : "waitingfortoolresults");
    reply_json(r, 200, &b);
}

#define LD_MAX_TOOL_RESULT (100u * 1024)

void h_tool_results(struct req *r)
{
    struct session_rec s;
    if (session_from_path(r, &s)) return;
    json_t *body = body_object(r, 0);
    if (!body) return;
    json_t *arr = json_object_get(body, "tool_results");
    size_t n = json_is_array(arr) ? json_array_size(arr) : 0;
    if (!json_is_array(arr) && arr && !json_is_null(arr)) {
        reply_problem(r, LD_E_BAD_REQUEST, "tool_results: expected an array");
        goto out;
    }
    if (n == 0) {
        reply_problem(r, LD_E_BAD_REQUEST, "tool_results must not be empty");
        goto out;
    }
    if (n > 64) {
        reply_problem(r, LD_E_LIMIT, "tool_results: more than 64 results");
        goto out;
    }
    if (s.status != SS_WAITING) {
        reply_problem(r, LD_E_CONFLICT,
                      "Session is not waiting for tool results (current status: %s)",
                      session_status_db(s.status));
        goto out;
    }
    struct engine_tool_result *res = arena_alloc(&r->arena, sizeof(*res) * n);
    for (size_t i = 0; i < n; i++) {
        json_t *x = json_array_get(arr, i);
        json_t *id = json_is_object(x) ? json_object_get(x, "tool_call_id") : NULL;
        if (!json_is_string(id) || json_string_length(id) == 0 || json_string_length(id) > 128) {
            reply_problem(r, LD_E_BAD_REQUEST, "tool_results[%zu].tool_call_id: expected a string",
                          i);
            goto out;
        }
        res[i].tool_call_id = arena_strdup(&r->arena, json_string_value(id));
        json_t *err = json_object_get(x, "error");
        if (err && !json_is_null(err)) {
            if (!json_is_string(err)) {
                reply_problem(r, LD_E_BAD_REQUEST, "tool_results[%zu].error: expected a string", i);
                goto out;
            }
            res[i].error = arena_strdup(&r->arena, json_string_value(err));
        }
        json_t *val = json_object_get(x, "result");
        if (!res[i].error) {
            const char *text = json_is_string(val) ? arena_strdup(&r->arena, json_string_value(val))
                                                   : dump(r, val ? val : json_null());
            if (strlen(text) > LD_MAX_TOOL_RESULT) {
                reply_problem(r, LD_E_LIMIT, "tool_results[%zu].result: larger than %u bytes", i,
                              LD_MAX_TOOL_RESULT);
                goto out;
            }
            res[i].result = text;
        }
    }
    engine_tool_results(r->eng, &s, res, (int)n, results_done, r);
    if (!r->resp) req_suspend(r);
out:
    json_decref(body);
}
