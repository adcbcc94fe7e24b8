/* sim.c — the llmsim plan: deterministic text, deltas and usage. */
#include "llm/sim.h"
#include "core/id.h"
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static long marker_num(const char *text, const char *key)
{
    const char *p = strstr(text, key);
    if (!p) return -1;
    return strtol(p + strlen(key), NULL, 10);
}

static const char *marker_word(const char *text, const char *key, struct arena *a)
{
    const char *p = strstr(text, key);
    if (!p) return NULL;
    p += strlen(key);
    size_t n = 0;
    while (p[n] && ((p[n] >= 'a' && p[n] <= 'z') || p[n] == '_') && n < 64)
        n++;
    return n ? arena_strndup(a, p, n) : NULL;
}

static void add_call(struct sim_plan *p, json_t *name, json_t *args, struct arena *a)
{
    if (!json_is_string(name) || p->ncalls == SIM_MAX_CALLS) return;
    struct sim_call *c = &p->calls[p->ncalls++];
    char hex[25];
    random_hex(hex, 12);
    snprintf(c->id, sizeof(c->id), "call_%s", hex);
    c->name = arena_strdup(a, json_string_value(name));
    char *d = json_is_object(args) ? json_dumps(args, JSON_COMPACT) : NULL;
    c->arguments = arena_strdup(a, d ? d : "{}");
    free(d);
}

void sim_plan(const char *user_text, size_t prompt_bytes, const char *hints_json,
              const char *tool_results, struct arena *a, struct sim_plan *p)
{
    memset(p, 0, sizeof(*p));
    const char *text = NULL;
    json_t *h = hints_json ? json_loads(hints_json, 0, NULL) : NULL;
    int have_results = tool_results && *tool_results;
    if (json_is_object(h) && !have_results) {
        add_call(p, json_object_get(h, "tool"), json_object_get(h, "arguments"), a);
        size_t i;
        json_t *c;
        json_array_foreach(json_object_get(h, "tools"), i, c)
            add_call(p, json_object_get(c, "name"), json_object_get(c, "arguments"), a);
    }
    if (json_is_object(h)) {
        const char *t = json_string_value(json_object_get(h, "text"));
        if (t) text = arena_strdup(a, t);
        const char *f = json_string_value(json_object_get(h, "fail"));
        if (f) {
            /* an error code is a snake_case word; anything else is llm_error */
            int ok = *f && strlen(f) <= 64;
            for (const char *c = f; *c; c++)
                if (!((*c >= 'a' && *c <= 'z') || (*c >= '0' && *c <= '9') || *c == '_')) ok = 0;
            p->fail_code = ok ? arena_strdup(a, f) : "llm_error";
        }
        json_t *l = json_object_get(h, "latency_ms");
        if (json_is_integer(l)) p->latency_ms = (long)json_integer_value(l);
    }
    json_decref(h);
    if (!p->fail_code) p->fail_code = marker_word(user_text, "llmsim:fail=", a);
    if (!p->latency_ms) {
        long l = marker_num(user_text, "llmsim:latency=");
        if (l > 0) p->latency_ms = l;
    }
    if (p->latency_ms < 0) p->latency_ms = 0;
    if (p->latency_ms > 600000) p->latency_ms = 600000;
    if (p->fail_code) {
        p->fail_text = "The model provider returned an error (simulated by llmsim).";
        p->input_tokens = (int64_t)(prompt_bytes + 3) / 4;
        return;
    }
    if (p->ncalls) {
        p->input_tokens = (int64_t)(prompt_bytes + 3) / 4;
        p->output_tokens = 8 * p->ncalls;
        return;
    }
    if (!text && have_results) {
        char buf[600];
        size_t n = strlen(tool_results);
        snprintf(buf, sizeof(buf), "The tools returned: %.*s%s", (int)(n > 400 ? 400 : n),
                 tool_results, n > 400 ? "..." : "");
        text = arena_strdup(a, buf);
    }
    if (!text) {
        /* deterministic: an echo of a bounded prefix of the question */
        char buf[400];
        size_t n = strlen(user_text);
        snprintf(buf, sizeof(buf),
                 "You said: \"%.*s%s\". I am llmsim, loopd's deterministic model.",
                 (int)(n > 200 ? 200 : n), user_text, n > 200 ? "..." : "");
        text = arena_strdup(a, buf);
    }
    p->text = text;
    /* split at spaces into up to 4 pieces of similar size */
    size_t len = strlen(text);
    int want = len < 16 ? 1 : 4;
    size_t start = 0;
    for (int i = 0; i < want && start < len; i++) {
        size_t end = i == want - 1 ? len : (len * (size_t)(i + 1)) / (size_t)want;
        while (end < len && text[end] != ' ')
            end++;
        if (end <= start) continue;
        p->deltas[p->ndeltas++] = arena_strndup(a, text + start, end - start);
        start = end;
    }
    if (start < len) p->deltas[p->ndeltas++] = arena_strdup(a, text + start);
    p->input_tokens = (int64_t)(prompt_bytes + 3) / 4;
    p->output_tokens = (int64_t)(len + 3) / 4;
}
