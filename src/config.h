/*
 * config.h — every tunable is one row of the option table in config.c (as
 * Redis's static_configs[]): name, environment variable, bounds, default
 * and help.  The table drives the flags, the LOOPD_* environment, --help,
 * and the line that logs the effective values at start.
 */
#ifndef LOOPD_CONFIG_H
#define LOOPD_CONFIG_H
#include <stddef.h>

enum log_level { LOG_DEBUG, LOG_INFO, LOG_WARN, LOG_ERROR };
enum auth_mode { AUTH_KEYS, AUTH_NONE };

struct config {
    char listen[128];     /* HOST:PORT */
    char data_dir[512];   /* created if missing */
    char public_url[256]; /* base for self_url/view_url; "" = http://<listen> */
    int auth;             /* enum auth_mode */
    int log_level;        /* enum log_level */
    int log_json;         /* 1: JSON lines, 0: logfmt */
    long max_body;
    long max_header;
    long request_timeout; /* seconds, total per request */
    long idle_timeout;    /* seconds, keep-alive idle */
    long max_connections;
    long max_connections_per_ip;
    long max_title;
    long max_tags;
    long max_tag_len;
    int reply_cache_off;     /* --reply-cache off (api/replycache.c) */
    long shutdown_timeout;   /* seconds to finish in-flight work on SIGTERM */
    long max_pending_writes; /* writes queued for the writer thread (503 above) */
    long fault_point;        /* test-only fail point (see store/writer.c) */
    char openai_base_url[256];
    char openai_api_key[512];
    char openai_models[512];
    char anthropic_base_url[256];
    char anthropic_api_key[512];
    char anthropic_models[512];
    long llm_timeout; /* seconds per model call attempt */
    long llm_retries;
    long delta_interval_ms; /* streamed text gathered per output.message.delta */
    long sse_heartbeat;     /* seconds between `: heartbeat` comments */
    long sse_cycle;         /* seconds before a stream is cycled (+-20 %) */
};

/* Fills defaults, then the environment, then argv (flags win).  Returns 0,
 * or 1 when the program should exit 0 (--help/--version printed), or -1 on
 * a bad flag (message printed).  *rest gets the index of the first
 * non-flag argument. */
int config_load(struct config *c, int argc, char **argv, int *rest);
void config_usage(const char *prog);
/* One log line with every effective value. */
void config_log(const struct config *c);

#endif
