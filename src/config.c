/*
 * config.c — the option table.  Precedence: defaults < LOOPD_* environment
 * < command-line flags.  Every numeric option has bounds; a value outside
 * them is refused at start with a message, never clamped silently.
 */
#include "config.h"
#include "limits.h"
#include "log.h"
#include "version.h"
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

enum opt_type { OPT_STR, OPT_LONG, OPT_ENUM };

struct opt {
    const char *name; /* flag without "--"; env is LOOPD_<NAME upper, - -> _> */
    enum opt_type type;
    size_t off;        /* offset in struct config */
    size_t size;       /* for OPT_STR */
    long min, max;     /* for OPT_LONG */
    const char *def;   /* default, as text */
    const char *enums; /* for OPT_ENUM: "a|b|c", value = index */
    const char *help;
};

#define O(f) offsetof(struct config, f)
static const struct opt opts[] = {
    {"listen", OPT_STR, O(listen), sizeof(((struct config *)0)->listen), 0, 0, "127.0.0.1:9300",
     NULL, "address to serve on, HOST:PORT"},
    {"data-dir", OPT_STR, O(data_dir), sizeof(((struct config *)0)->data_dir), 0, 0, "./data", NULL,
     "directory for the SQLite database and the admin key (created)"},
    {"public-url", OPT_STR, O(public_url), sizeof(((struct config *)0)->public_url), 0, 0, "", NULL,
     "public base URL for self_url/view_url (default http://LISTEN)"},
    {"auth", OPT_ENUM, O(auth), 0, 0, 0, "keys", "keys|none",
     "keys: API keys required; none: every request is the anonymous user"},
    {"log-level", OPT_ENUM, O(log_level), 0, 0, 0, "info", "debug|info|warn|error",
     "least severe level logged"},
    {"log-format", OPT_ENUM, O(log_json), 0, 0, 0, "logfmt", "logfmt|json", "log line format"},
    {"max-body", OPT_LONG, O(max_body), 0, 1024, LD_MAX_BODY_BOUND, "2097152", NULL,
     "largest request body in bytes (413 above)"},
    {"max-header", OPT_LONG, O(max_header), 0, 1024, LD_MAX_HEADER_BOUND, "16384", NULL,
     "largest request header block in bytes (431 above)"},
    {"request-timeout", OPT_LONG, O(request_timeout), 0, 1, 3600, "30", NULL,
     "seconds to receive a whole request, headers and body (408 after)"},
    {"idle-timeout", OPT_LONG, O(idle_timeout), 0, 1, 3600, "75", NULL,
     "seconds an idle keep-alive connection stays open"},
    {"max-connections", OPT_LONG, O(max_connections), 0, 16, 1000000, "10000", NULL,
     "most open connections in all"},
    {"max-connections-per-ip", OPT_LONG, O(max_connections_per_ip), 0, 1, 1000000, "1000", NULL,
     "most open connections from one IP address"},
    {"max-title", OPT_LONG, O(max_title), 0, 1, 65536, "255", NULL,
     "longest session title in bytes"},
    {"max-tags", OPT_LONG, O(max_tags), 0, 0, 10000, "100", NULL, "most tags on a session"},
    {"max-tag-length", OPT_LONG, O(max_tag_len), 0, 1, 65536, "255", NULL, "longest tag in bytes"},
    {"reply-cache", OPT_ENUM, O(reply_cache_off), 0, 0, 0, "on", "on|off",
     "on: a GET of a session or of a session list page repeated with nothing written "
     "since is answered from a copy"},
    {"shutdown-timeout", OPT_LONG, O(shutdown_timeout), 0, 0, 3600, "10", NULL,
     "seconds to finish in-flight requests on SIGTERM"},
    {"max-pending-writes", OPT_LONG, O(max_pending_writes), 0, 1, 1000000, "65536", NULL,
     "most writes waiting for the disk (503 with Retry-After above)"},
    {"openai-base-url", OPT_STR, O(openai_base_url), sizeof(((struct config *)0)->openai_base_url),
     0, 0, "", NULL,
     "OpenAI-compatible API base (vLLM, Ollama, OpenRouter...), e.g. http://host/v1"},
    {"openai-api-key", OPT_STR, O(openai_api_key), sizeof(((struct config *)0)->openai_api_key), 0,
     0, "", NULL, "API key sent as Authorization: Bearer"},
    {"openai-models", OPT_STR, O(openai_models), sizeof(((struct config *)0)->openai_models), 0, 0,
     "", NULL, "comma-separated model names served by that API"},
    {"anthropic-base-url", OPT_STR, O(anthropic_base_url),
     sizeof(((struct config *)0)->anthropic_base_url), 0, 0, "", NULL,
     "Anthropic Messages API base, e.g. https://api.anthropic.com/v1"},
    {"anthropic-api-key", OPT_STR, O(anthropic_api_key),
     sizeof(((struct config *)0)->anthropic_api_key), 0, 0, "", NULL, "sent as x-api-key"},
    {"anthropic-models", OPT_STR, O(anthropic_models),
     sizeof(((struct config *)0)->anthropic_models), 0, 0, "", NULL,
     "comma-separated Anthropic model names"},
    {"llm-timeout", OPT_LONG, O(llm_timeout), 0, 1, 3600, "120", NULL,
     "seconds one model call attempt may take"},
    {"llm-retries", OPT_LONG, O(llm_retries), 0, 0, 10, "3", NULL,
     "retries of a model call on 429/5xx/connection errors, with backoff"},
    {"delta-interval-ms", OPT_LONG, O(delta_interval_ms), 0, 0, 10000, "100", NULL,
     "a real model's streamed text is gathered this long into one output.message.delta "
     "(0: one event per provider chunk)"},
    {"sse-heartbeat", OPT_LONG, O(sse_heartbeat), 0, 1, 3600, "15", NULL,
     "seconds between SSE heartbeat comments"},
    {"sse-cycle", OPT_LONG, O(sse_cycle), 0, 1, 86400, "300", NULL,
     "seconds before an SSE stream says `disconnecting` and closes (+-20 %)"},
    {"fault-point", OPT_LONG, O(fault_point), 0, 0, 100, "0", NULL,
     "testing only: number of a fail point to enable (0 = none)"},
};
#define NOPTS (sizeof(opts) / sizeof(opts[0]))

/* who: how the value was given ("--max-body", "LOOPD_MAX_BODY"), so a
 * complaint names what the user typed; a built-in default passes the bare
 * name (it fails only if the table above is wrong) */
static int set_opt(struct config *c, const struct opt *o, const char *v, const char *who)
{
    char *base = (char *)c + o->off;
    switch (o->type) {
    case OPT_STR:
        if (strlen(v) >= o->size) {
            fprintf(stderr, "loopd: %s: value too long (at most %zu bytes)\n", who, o->size - 1);
            return -1;
        }
        strcpy(base, v);
        return 0;
    case OPT_LONG: {
        errno = 0;
        char *end;
        long x = strtol(v, &end, 10);
        if (errno || end == v || *end || x < o->min || x > o->max) {
            fprintf(stderr, "loopd: %s: '%s' is not a whole number from %ld to %ld\n", who, v,
                    o->min, o->max);
            return -1;
        }
        *(long *)(void *)base = x;
        return 0;
    }
    case OPT_ENUM: {
        const char *p = o->enums;
        for (int i = 0; p && *p; i++) {
            const char *bar = strchr(p, '|');
            size_t n = bar ? (size_t)(bar - p) : strlen(p);
            if (strlen(v) == n && memcmp(v, p, n) == 0) {
                *(int *)(void *)base = i;
                return 0;
            }
            p = bar ? bar + 1 : NULL;
        }
        fprintf(stderr, "loopd: %s: '%s' is not one of %s\n", who, v, o->enums);
        return -1;
    }
    }
    return -1;
}

static void env_name(const char *name, char *out, size_t n)
{
    size_t i = 0;
    i += (size_t)snprintf(out, n, "LOOPD_");
    for (const char *p = name; *p && i + 1 < n; p++)
        out[i++] = *p == '-' ? '_' : (char)(*p >= 'a' && *p <= 'z' ? *p - 32 : *p);
    out[i] = 0;
}

void config_usage(const char *prog)
{
    printf("usage: %s [options]                 serve the Everruns v1 API\n"
           "       %s keys create|list|revoke  manage API keys (see `%s keys --help`)\n\n"
           "options (each also as an environment variable LOOPD_<NAME>):\n",
           prog, prog, prog);
    for (size_t i = 0; i < NOPTS; i++) {
        char env[64];
        env_name(opts[i].name, env, sizeof(env));
        printf("  --%-24s %s\n  %26s default: %s%s%s; env %s\n", opts[i].name, opts[i].help, "",
               *opts[i].def ? opts[i].def : "(none)", opts[i].enums ? "; one of " : "",
               opts[i].enums ? opts[i].enums : "", env);
    }
    printf("  --%-24s %s\n  --%-24s %s\n\nLOOPD_BOOTSTRAP_KEY sets the first admin API key.\n",
           "help", "print this help", "version", "print the version");
}

/* An absolute http(s) URL without query or fragment, of characters a URL
 * may hold unescaped: --public-url is copied into every self_url,
 * view_url and Location as is (a `"` there made the bodies invalid JSON),
 * and the model base URLs go to libcurl. */
static int base_url_ok(const char *u)
{
    const char *h = strncmp(u, "http://", 7) == 0    ? u + 7
                    : strncmp(u, "https://", 8) == 0 ? u + 8
                                                     : NULL;
    if (!h || !*h || *h == '/' || *h == ':') return 0;
    for (const char *p = u; *p; p++) {
        unsigned char ch = (unsigned char)*p;
        if (ch <= 0x20 || ch >= 0x7f || strchr("\"<>\\^`{|}?#", ch)) return 0;
    }
    return 1;
}

static int check_urls(const struct config *c)
{
    static const struct {
        const char *flag;
        size_t off;
    } urls[] = {{"public-url", O(public_url)},
                {"openai-base-url", O(openai_base_url)},
                {"anthropic-base-url", O(anthropic_base_url)}};
    for (size_t i = 0; i < sizeof(urls) / sizeof(urls[0]); i++) {
        const char *u = (const char *)c + urls[i].off;
        if (*u && !base_url_ok(u)) {
            fprintf(stderr,
                    "loopd: --%s must be an http:// or https:// URL with a host and no query, "
                    "fragment, spaces or quotes, got '%s'\n",
                    urls[i].flag, u);
            return -1;
        }
    }
    return 0;
}

int config_load(struct config *c, int argc, char **argv, int *rest)
{
    memset(c, 0, sizeof(*c));
    for (size_t i = 0; i < NOPTS; i++)
        if (set_opt(c, &opts[i], opts[i].def, opts[i].name)) return -1;
    for (size_t i = 0; i < NOPTS; i++) {
        char env[64];
        env_name(opts[i].name, env, sizeof(env));
        const char *v = getenv(env);
        if (v && set_opt(c, &opts[i], v, env)) return -1;
    }
    int a = 1;
    for (; a < argc; a++) {
        const char *arg = argv[a];
        if (strncmp(arg, "--", 2) != 0) break;
        arg += 2;
        if (strcmp(arg, "help") == 0) {
            config_usage(argv[0]);
            return 1;
        }
        if (strcmp(arg, "version") == 0) {
            printf("loopd %s\n", LOOPD_VERSION);
            return 1;
        }
        const char *eq = strchr(arg, '=');
        size_t nl = eq ? (size_t)(eq - arg) : strlen(arg);
        const struct opt *o = NULL;
        for (size_t i = 0; i < NOPTS; i++)
            if (strlen(opts[i].name) == nl && memcmp(opts[i].name, arg, nl) == 0) o = &opts[i];
        if (!o) {
            fprintf(stderr, "loopd: unknown option --%.*s (see --help)\n", (int)nl, arg);
            return -1;
        }
        const char *v = eq ? eq + 1 : (a + 1 < argc ? argv[++a] : NULL);
        if (!v) {
            fprintf(stderr, "loopd: option --%s needs a value\n", o->name);
            return -1;
        }
        char who[64];
        snprintf(who, sizeof(who), "--%s", o->name);
        if (set_opt(c, o, v, who)) return -1;
    }
    if (check_urls(c)) return -1;
    if (rest) *rest = a;
    return 0;
}

void config_log(const struct config *c)
{
    char lines[NOPTS][64];
    const char *kv[2 * NOPTS + 1];
    size_t k = 0;
    for (size_t i = 0; i < NOPTS; i++) {
        const char *base = (const char *)c + opts[i].off;
        kv[k++] = opts[i].name;
        switch (opts[i].type) {
        case OPT_STR:
            /* secrets are never logged */
            kv[k++] = strstr(opts[i].name, "api-key") && *base ? "(set)" : base;
            break;
        case OPT_LONG:
            snprintf(lines[i], sizeof(lines[i]), "%ld", *(const long *)(const void *)base);
            kv[k++] = lines[i];
            break;
        case OPT_ENUM: {
            int idx = *(const int *)(const void *)base;
            const char *p = opts[i].enums;
            for (int j = 0; j < idx && p; j++) {
                p = strchr(p, '|');
                if (p) p++;
            }
            size_t n = p ? strcspn(p, "|") : 0;
            snprintf(lines[i], sizeof(lines[i]), "%.*s", (int)n, p ? p : "");
            kv[k++] = lines[i];
            break;
        }
        }
    }
    /* log_kv takes a NULL-terminated vararg list; pass the pairs explicitly */
    kv[k] = NULL;
    char line[4096];
    size_t n = 0;
    for (size_t i = 0; kv[i] && n < sizeof(line) - 1; i += 2)
        n +=
            (size_t)snprintf(line + n, sizeof(line) - n, "%s%s=%s", i ? " " : "", kv[i], kv[i + 1]);
    log_kv(LOG_INFO, "config", "effective", line, NULL);
}
