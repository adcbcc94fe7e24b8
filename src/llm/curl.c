/*
 * curl.c — streaming model calls over libcurl multi, driven by our loop
 * (curl_multi_socket_action: curl tells us which sockets and which timer
 * to watch; nothing blocks).
 *
 * DESIGN
 *  - One multi handle; each call is one easy handle at a time (a retry
 *    makes a new one).  The write callback parses the provider's SSE
 *    stream line by line; text deltas go to the caller as they come.
 *  - A non-2xx answer's body is kept (bounded) for the error text.
 *  - 429 and 5xx, and connection failures, are retried with backoff
 *    (250 ms, doubling) up to `retries` times, but only while no delta was
 *    delivered: a half-streamed answer is never restarted.
 *  - Each attempt has a total deadline (CURLOPT_TIMEOUT_MS) and a stall
 *    limit (no byte for 30 s); a timeout ends the call with llm_timeout.
 *  - Cancel removes the transfer at once; no callback runs after it.
 */
#include "llm/llm.h"
#include "limits.h"
#include "loop.h"
#include "util/buf.h"
#include "util/mem.h"
#include <curl/curl.h>
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>

#define LLM_MAX_LINE (4u * 1024 * 1024)
#define LLM_MAX_ERROR_BODY 4096

struct llm {
    CURLM *multi;
    struct loop *loop;
    struct loop_timer *timer;
    long timeout_ms;
    int retries;
};

struct tool_acc {
    char id[64];
    struct buf name, args;
};

struct llm_call {
    struct llm *m;
    CURL *easy;
    struct curl_slist *headers;
    char *url, *body;
    int anthropic;
    llm_delta_fn on_delta;
    llm_done_fn on_done;
    void *ud;
    struct loop_timer *retry_timer;
    int attempt;
    long status;
    int delivered; /* a delta reached the caller */
    int bad;       /* a malformed chunk */
    struct buf line, text, errbody;
    struct tool_acc tools[SIM_MAX_CALLS];
    int ntools;
    int64_t in_tokens, out_tokens, cache_read;
    struct arena arena;
};

/* ---- curl <-> loop ---- */

static void check_done(struct llm *m);

struct sockctx {
    struct llm *m;
    curl_socket_t fd;
};

static void sock_ready(void *ud, uint32_t events)
{
    struct sockctx *sc = ud;
    int flags = 0;
    if (events & EPOLLIN) flags |= CURL_CSELECT_IN;
    if (events & EPOLLOUT) flags |= CURL_CSELECT_OUT;
    if (events & (EPOLLERR | EPOLLHUP)) flags |= CURL_CSELECT_ERR;
    int running;
    struct llm *m = sc->m;
    curl_multi_socket_action(m->multi, sc->fd, flags, &running);
    check_done(m);
}

static int sock_cb(CURL *e, curl_socket_t fd, int what, void *userp, void *socketp)
{
    struct llm *m = userp;
    struct sockctx *sc = socketp;
    if (what == CURL_POLL_REMOVE) {
        loop_del_fd(m->loop, fd);
        free(sc);
        curl_multi_assign(m->multi, fd, NULL);
        return 0;
    }
    if (!sc) {
        sc = xcalloc(1, sizeof(*sc));
        sc->m = m;
        sc->fd = fd;
        curl_multi_assign(m->multi, fd, sc);
    }
    uint32_t ev = (what & CURL_POLL_IN ? EPOLLIN : 0) | (what & CURL_POLL_OUT ? EPOLLOUT : 0);
    loop_add_fd(m->loop, fd, ev, sock_ready, sc);
    return 0;
}

static void timer_fired(void *ud)
{
    struct llm *m = ud;
    m->timer = NULL;
    int running;
    curl_multi_socket_action(m->multi, CURL_SOCKET_TIMEOUT, 0, &running);
    check_done(m);
}

static int timer_cb(CURLM *multi, long ms, void *userp)
{
    struct llm *m = userp;
    if (m->timer) {
        loop_timer_cancel(m->loop, m->timer);
        m->timer = NULL;
    }
    if (ms >= 0) m->timer = loop_timer_add(m->loop, ms, timer_fired, m);
    return 0;
}

struct llm *llm_new(struct loop *l, long timeout_ms, int retries)
{
    static int inited;
    if (!inited) {
        curl_global_init(CURL_GLOBAL_DEFAULT);
        inited = 1;
    }
    struct llm *m = xcalloc(1, sizeof(*m));
    m->loop = l;
    m->timeout_ms = timeout_ms;
    m->retries = retries;
    m->multi = curl_multi_init();
    curl_multi_setopt(m->multi, CURLMOPT_SOCKETFUNCTION, sock_cb);
    curl_multi_setopt(m->multi, CURLMOPT_SOCKETDATA, m);
    curl_multi_setopt(m->multi, CURLMOPT_TIMERFUNCTION, timer_cb);
    curl_multi_setopt(m->multi, CURLMOPT_TIMERDATA, m);
    curl_multi_setopt(m->multi, CURLMOPT_MAX_HOST_CONNECTIONS, 1024L);
    curl_multi_setopt(m->multi, CURLMOPT_MAX_TOTAL_CONNECTIONS, 4096L);
    return m;
}

void llm_free(struct llm *m)
{
    if (!m) return;
    if (m->timer) loop_timer_cancel(m->loop, m->timer);
    curl_multi_cleanup(m->multi);
    free(m);
}

/* ---- parsing the stream ---- */

static struct tool_acc *tool_at(struct llm_call *c, int index)
{
    if (index < 0 || index >= SIM_MAX_CALLS) return NULL;
    while (c->ntools <= index) {
        struct tool_acc *t = &c->tools[c->ntools++];
        buf_init(&t->name, 256);
        buf_init(&t->args, 1 << 20);
    }
    return &c->tools[index];
}

static void deliver(struct llm_call *c, const char *s)
{
    if (!s || !*s) return;
    buf_puts(&c->text, s);
    c->delivered = 1;
    c->on_delta(c->ud, s);
}

static void openai_chunk(struct llm_call *c, json_t *j)
{
    json_t *choice = json_array_get(json_object_get(j, "choices"), 0);
    json_t *delta = json_object_get(choice, "delta");
    deliver(c, json_string_value(json_object_get(delta, "content")));
    size_t i;
    json_t *tc;
    json_array_foreach(json_object_get(delta, "tool_calls"), i, tc)
    {
        json_t *idx = json_object_get(tc, "index");
        struct tool_acc *t =
            tool_at(c, json_is_integer(idx) ? (int)json_integer_value(idx) : (int)i);
        if (!t) continue;
        const char *id = json_string_value(json_object_get(tc, "id"));
        if (id) str_copy(t->id, sizeof(t->id), id);
        json_t *fn = json_object_get(tc, "function");
        const char *name = json_string_value(json_object_get(fn, "name"));
        if (name) buf_puts(&t->name, name);
        const char *args = json_string_value(json_object_get(fn, "arguments"));
        if (args) buf_puts(&t->args, args);
    }
    json_t *u = json_object_get(j, "usage");
    if (json_is_object(u)) {
        int64_t prompt = json_integer_value(json_object_get(u, "prompt_tokens"));
        int64_t cached = json_integer_value(
            json_object_get(json_object_get(u, "prompt_tokens_details"), "cached_tokens"));
        c->in_tokens = prompt - cached; /* disjoint buckets (reference 17) */
        c->cache_read = cached;
        c->out_tokens = json_integer_value(json_object_get(u, "completion_tokens"));
    }
}

static void anthropic_chunk(struct llm_call *c, json_t *j)
{
    const char *type = json_string_value(json_object_get(j, "type"));
    if (!type) return;
    if (strcmp(type, "message_start") == 0) {
        json_t *u = json_object_get(json_object_get(j, "message"), "usage");
        c->in_tokens = json_integer_value(json_object_get(u, "input_tokens"));
        c->cache_read = json_integer_value(json_object_get(u, "cache_read_input_tokens"));
    } else if (strcmp(type, "content_block_start") == 0) {
        json_t *b = json_object_get(j, "content_block");
        if (strcmp(json_string_value(json_object_get(b, "type")) ?: "", "tool_use") == 0) {
            struct tool_acc *t = tool_at(c, (int)json_integer_value(json_object_get(j, "index")));
            if (t) {
                snprintf(t->id, sizeof(t->id), "%s",
                         json_string_value(json_object_get(b, "id")) ?: "");
                buf_puts(&t->name, json_string_value(json_object_get(b, "name")) ?: "");
            }
        }
    } else if (strcmp(type, "content_block_delta") == 0) {
        json_t *d = json_object_get(j, "delta");
        const char *dt = json_string_value(json_object_get(d, "type")) ?: "";
        if (strcmp(dt, "text_delta") == 0) {
            deliver(c, json_string_value(json_object_get(d, "text")));
        } else if (strcmp(dt, "input_json_delta") == 0) {
            struct tool_acc *t = tool_at(c, (int)json_integer_value(json_object_get(j, "index")));
            if (t) buf_puts(&t->args, json_string_value(json_object_get(d, "partial_json")) ?: "");
        }
    } else if (strcmp(type, "message_delta") == 0) {
        json_t *u = json_object_get(j, "usage");
        if (json_is_object(u))
            c->out_tokens = json_integer_value(json_object_get(u, "output_tokens"));
    } else if (strcmp(type, "error") == 0) {
        c->bad = 1;
    }
}

static void on_line(struct llm_call *c, char *line)
{
    size_t n = strlen(line);
    if (n && line[n - 1] == '\r') line[--n] = 0;
    if (strncmp(line, "data:", 5) != 0) return; /* event:, id:, comments */
    char *p = line + 5;
    while (*p == ' ')
        p++;
    if (strcmp(p, "[DONE]") == 0) return;
    json_error_t err;
    json_t *j = json_loads(p, 0, &err);
    if (!json_is_object(j)) {
        c->bad = 1;
        json_decref(j);
        return;
    }
    if (c->anthropic)
        anthropic_chunk(c, j);
    else
        openai_chunk(c, j);
    json_decref(j);
}

static size_t on_write(char *data, size_t sz, size_t nm, void *ud)
{
    struct llm_call *c = ud;
    size_t n = sz * nm;
    if (!c->status) curl_easy_getinfo(c->easy, CURLINFO_RESPONSE_CODE, &c->status);
    if (c->status < 200 || c->status >= 300) {
        if (c->errbody.len < LLM_MAX_ERROR_BODY)
            buf_add(&c->errbody, data,
                    n < LLM_MAX_ERROR_BODY - c->errbody.len ? n
                                                            : LLM_MAX_ERROR_BODY - c->errbody.len);
        return n;
    }
    for (size_t i = 0; i < n; i++) {
        if (data[i] == '\n') {
            on_line(c, c->line.data ? c->line.data : (char[]){0});
            buf_reset(&c->line);
        } else if (buf_putc(&c->line, data[i])) {
            c->bad = 1; /* a line past LLM_MAX_LINE */
            return 0;
        }
    }
    return n;
}

/* ---- calls ---- */

static int attempt(struct llm_call *c)
{
    c->status = 0;
    buf_reset(&c->line);
    buf_reset(&c->errbody);
    c->easy = curl_easy_init();
    if (!c->easy) return -1;
    curl_easy_setopt(c->easy, CURLOPT_URL, c->url);
    curl_easy_setopt(c->easy, CURLOPT_POSTFIELDS, c->body);
    curl_easy_setopt(c->easy, CURLOPT_HTTPHEADER, c->headers);
    curl_easy_setopt(c->easy, CURLOPT_WRITEFUNCTION, on_write);
    curl_easy_setopt(c->easy, CURLOPT_WRITEDATA, c);
    curl_easy_setopt(c->easy, CURLOPT_PRIVATE, c);
    curl_easy_setopt(c->easy, CURLOPT_NOSIGNAL, 1L);
    curl_easy_setopt(c->easy, CURLOPT_TIMEOUT_MS, c->m->timeout_ms);
    curl_easy_setopt(c->easy, CURLOPT_CONNECTTIMEOUT_MS,
                     c->m->timeout_ms < 10000 ? c->m->timeout_ms : 10000L);
    curl_easy_setopt(c->easy, CURLOPT_LOW_SPEED_LIMIT, 1L);
    curl_easy_setopt(c->easy, CURLOPT_LOW_SPEED_TIME, 30L);
    curl_easy_setopt(c->easy, CURLOPT_PROTOCOLS_STR, "http,https");
    c->attempt++;
    return curl_multi_add_handle(c->m->multi, c->easy) == CURLM_OK ? 0 : -1;
}

static void call_free(struct llm_call *c)
{
    if (c->retry_timer) loop_timer_cancel(c->m->loop, c->retry_timer);
    if (c->easy) {
        curl_multi_remove_handle(c->m->multi, c->easy);
        curl_easy_cleanup(c->easy);
    }
    curl_slist_free_all(c->headers);
    free(c->url);
    free(c->body);
    buf_free(&c->line);
    buf_free(&c->text);
    buf_free(&c->errbody);
    for (int i = 0; i < c->ntools; i++) {
        buf_free(&c->tools[i].name);
        buf_free(&c->tools[i].args);
    }
    arena_free(&c->arena);
    free(c);
}

static void retry_now(void *ud)
{
    struct llm_call *c = ud;
    c->retry_timer = NULL;
    if (attempt(c)) {
        struct llm_result r = {.text = "",
                               .error_code = "llm_error",
                               .error_text = "The model call could not be started."};
        c->on_done(c->ud, &r);
        call_free(c);
    }
}

static void finish(struct llm_call *c, CURLcode rc)
{
    struct llm_result r;
    memset(&r, 0, sizeof(r));
    r.attempts = c->attempt;
    if (!c->status && c->easy) curl_easy_getinfo(c->easy, CURLINFO_RESPONSE_CODE, &c->status);
    curl_multi_remove_handle(c->m->multi, c->easy);
    curl_easy_cleanup(c->easy);
    c->easy = NULL;
    int transient =
        rc != CURLE_OK ? rc != CURLE_OPERATION_TIMEDOUT : (c->status == 429 || c->status >= 500);
    if (transient && !c->delivered && c->attempt <= c->m->retries) {
        long backoff = 250L << (c->attempt - 1);
        c->retry_timer = loop_timer_add(c->m->loop, backoff, retry_now, c);
        return;
    }
    char *err = arena_alloc(&c->arena, 512);
    if (rc == CURLE_OPERATION_TIMEDOUT) {
        r.error_code = "llm_timeout";
        snprintf(err, 512, "The model provider did not answer in time.");
    } else if (rc != CURLE_OK) {
        r.error_code = "llm_error";
        snprintf(err, 512, "Could not reach the model provider: %s", curl_easy_strerror(rc));
    } else if (c->status == 429) {
        r.error_code = "provider_rate_limited";
        snprintf(err, 512, "The model provider is rate limiting requests (HTTP 429).");
    } else if (c->status < 200 || c->status >= 300) {
        r.error_code = "llm_error";
        snprintf(err, 512, "The model provider answered HTTP %ld: %.300s", c->status,
                 c->errbody.data ? c->errbody.data : "");
    } else if (c->bad) {
        r.error_code = "llm_error";
        snprintf(err, 512, "The model provider sent a malformed stream.");
    }
    if (r.error_code) {
        for (char *p = err; *p; p++)
            if ((unsigned char)*p < 0x20) *p = ' ';
        r.error_text = err;
    }
    if (c->line.len && !r.error_code) on_line(c, c->line.data); /* a last line without \n */
    r.text = c->text.data ? c->text.data : "";
    for (int i = 0; i < c->ntools && r.ncalls < SIM_MAX_CALLS; i++) {
        struct sim_call *sc = &r.calls[r.ncalls++];
        str_copy(sc->id, sizeof(sc->id), c->tools[i].id);
        sc->name = c->tools[i].name.data ? c->tools[i].name.data : "";
        const char *a = c->tools[i].args.data;
        json_t *j = a && *a ? json_loads(a, 0, NULL) : json_object();
        if (!json_is_object(j)) {
            json_decref(j);
            j = json_object();
        }
        char *d = json_dumps(j, JSON_COMPACT);
        sc->arguments = arena_strdup(&c->arena, d);
        free(d);
        json_decref(j);
    }
    r.input_tokens = c->in_tokens;
    r.output_tokens = c->out_tokens;
    r.cache_read_tokens = c->cache_read;
    c->on_done(c->ud, &r);
    call_free(c);
}

static void check_done(struct llm *m)
{
    CURLMsg *msg;
    int left;
    while ((msg = curl_multi_info_read(m->multi, &left))) {
        if (msg->msg != CURLMSG_DONE) continue;
        struct llm_call *c = NULL;
        curl_easy_getinfo(msg->easy_handle, CURLINFO_PRIVATE, (char **)&c);
        if (c) finish(c, msg->data.result);
    }
}

/* OpenAI chat messages -> Anthropic: system apart, tool results as user */
static char *anthropic_body(const char *model, const char *messages, const char *tools)
{
    json_t *in = json_loads(messages, 0, NULL);
    json_t *out = json_array(), *body = json_object();
    struct buf sys;
    buf_init(&sys, LD_MAX_SYSTEM_PROMPT * 2);
    size_t i;
    json_t *m;
    json_array_foreach(in, i, m)
    {
        const char *role = json_string_value(json_object_get(m, "role")) ?: "";
        const char *content = json_string_value(json_object_get(m, "content"));
        if (strcmp(role, "system") == 0) {
            if (content) buf_puts(&sys, content);
            continue;
        }
        json_t *parts = json_array();
        if (strcmp(role, "tool") == 0) {
            json_array_append_new(
                parts, json_pack("{s:s,s:s,s:s}", "type", "tool_result", "tool_use_id",
                                 json_string_value(json_object_get(m, "tool_call_id")) ?: "",
                                 "content", content ? content : ""));
            json_array_append_new(out, json_pack("{s:s,s:o}", "role", "user", "content", parts));
            continue;
        }
        if (content && *content)
            json_array_append_new(parts, json_pack("{s:s,s:s}", "type", "text", "text", content));
        size_t k;
        json_t *tc;
        json_array_foreach(json_object_get(m, "tool_calls"), k, tc)
        {
            json_t *fn = json_object_get(tc, "function");
            json_t *args =
                json_loads(json_string_value(json_object_get(fn, "arguments")) ?: "{}", 0, NULL);
            json_array_append_new(
                parts, json_pack("{s:s,s:s,s:s,s:o}", "type", "tool_use", "id",
                                 json_string_value(json_object_get(tc, "id")) ?: "", "name",
                                 json_string_value(json_object_get(fn, "name")) ?: "", "input",
                                 args ? args : json_object()));
        }
        json_array_append_new(out, json_pack("{s:s,s:o}", "role",
                                             strcmp(role, "assistant") == 0 ? "assistant" : "user",
                                             "content", parts));
    }
    json_object_set_new(body, "model", json_string(model));
    json_object_set_new(body, "max_tokens", json_integer(4096));
    json_object_set_new(body, "stream", json_true());
    if (sys.len) json_object_set_new(body, "system", json_string(sys.data));
    json_object_set_new(body, "messages", out);
    json_t *tl = tools ? json_loads(tools, 0, NULL) : NULL;
    if (json_array_size(tl)) {
        json_t *at = json_array();
        json_t *t;
        json_array_foreach(tl, i, t) json_array_append_new(
            at, json_pack("{s:O,s:O,s:O}", "name", json_object_get(t, "name"), "description",
                          json_object_get(t, "description") ?: json_string(""), "input_schema",
                          json_object_get(t, "parameters") ?: json_object()));
        json_object_set_new(body, "tools", at);
    }
    json_decref(tl);
    char *s = json_dumps(body, JSON_COMPACT);
    json_decref(body);
    json_decref(in);
    buf_free(&sys);
    return s;
}

static char *openai_body(const char *model, const char *messages, const char *tools, int parallel)
{
    json_t *body = json_object();
    json_object_set_new(body, "model", json_string(model));
    json_object_set_new(body, "messages", json_loads(messages, 0, NULL));
    json_object_set_new(body, "stream", json_true());
    json_object_set_new(body, "stream_options", json_pack("{s:b}", "include_usage", 1));
    json_t *tl = tools ? json_loads(tools, 0, NULL) : NULL;
    if (json_array_size(tl)) {
        json_t *ot = json_array(), *t;
        size_t i;
        json_array_foreach(tl, i, t) json_array_append_new(
            ot, json_pack("{s:s,s:{s:O,s:O,s:O}}", "type", "function", "function", "name",
                          json_object_get(t, "name"), "description",
                          json_object_get(t, "description") ?: json_string(""), "parameters",
                          json_object_get(t, "parameters") ?: json_object()));
        json_object_set_new(body, "tools", ot);
        if (parallel >= 0) json_object_set_new(body, "parallel_tool_calls", json_boolean(parallel));
    }
    json_decref(tl);
    char *s = json_dumps(body, JSON_COMPACT);
    json_decref(body);
    return s;
}

struct llm_call *llm_start(struct llm *m, const struct llm_provider *p, const char *model,
                           const char *messages, const char *tools, int parallel,
                           llm_delta_fn on_delta, llm_done_fn on_done, void *ud)
{
    struct llm_call *c = xcalloc(1, sizeof(*c));
    c->m = m;
    c->on_delta = on_delta;
    c->on_done = on_done;
    c->ud = ud;
    arena_init(&c->arena);
    buf_init(&c->line, LLM_MAX_LINE);
    buf_init(&c->text, LD_MAX_RESPONSE);
    buf_init(&c->errbody, LLM_MAX_ERROR_BODY + 1);
    c->anthropic = strcmp(p->kind, "anthropic") == 0;
    size_t ul = strlen(p->base_url) + 32;
    c->url = xmalloc(ul);
    snprintf(c->url, ul, "%s%s", p->base_url, c->anthropic ? "/messages" : "/chat/completions");
    c->body = c->anthropic ? anthropic_body(model, messages, tools)
                           : openai_body(model, messages, tools, parallel);
    c->headers = curl_slist_append(NULL, "Content-Type: application/json");
    c->headers = curl_slist_append(c->headers, "Accept: text/event-stream");
    char h[1100];
    if (p->api_key && *p->api_key) {
        if (c->anthropic)
            snprintf(h, sizeof(h), "x-api-key: %.1000s", p->api_key);
        else
            snprintf(h, sizeof(h), "Authorization: Bearer %.1000s", p->api_key);
        c->headers = curl_slist_append(c->headers, h);
    }
    if (c->anthropic) c->headers = curl_slist_append(c->headers, "anthropic-version: 2023-06-01");
    if (!c->body || attempt(c)) {
        call_free(c);
        return NULL;
    }
    return c;
}

void llm_cancel(struct llm_call *c)
{
    if (c) call_free(c);
}
