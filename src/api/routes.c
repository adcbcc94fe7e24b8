/* routes.c — the route table and its matcher (see routes.h). */
#include "api/routes.h"
#include "api/api.h"
#include <stdio.h>
#include <string.h>

const struct route routes[] = {
    {M_GET, "/healthz", h_healthz, 1, "healthz"},
    {M_GET, "/readyz", h_readyz, 1, "readyz"},
    {M_GET, "/metrics", h_metrics, 1, "metrics"},
    {M_GET, "/openapi.json", h_openapi, 1, "openapi"},
    {M_GET, "/", h_console, 1, "console"},
    {M_GET, "/agents", h_console, 1, "console"},
    {M_GET, "/sessions/{}/chat", h_console, 1, "console"},
    {M_GET, "/v1/models", h_models_list, 0, "models"},
    {M_GET, "/v1/harnesses", h_harnesses_list, 0, "harnesses"},
    {M_GET, "/v1/harnesses/{}", h_harness_get, 0, "harness"},
    {M_POST, "/v1/agents", h_agents_create, 0, "agents"},
    {M_GET, "/v1/agents", h_agents_list, 0, "agents"},
    {M_GET, "/v1/agents/{}", h_agent_get, 0, "agent"},
    {M_PATCH, "/v1/agents/{}", h_agent_patch, 0, "agent"},
    {M_PUT, "/v1/agents/{}", h_agent_put, 0, "agent"},
    {M_DELETE, "/v1/agents/{}", h_agent_delete, 0, "agent"},
    {M_POST, "/v1/sessions", h_sessions_create, 0, "sessions"},
    {M_GET, "/v1/sessions", h_sessions_list, 0, "sessions"},
    {M_GET, "/v1/sessions/stats", h_sessions_stats, 0, "sessions_stats"},
    {M_POST, "/v1/sessions/chat", h_sessions_chat, 0, "sessions_chat"},
    {M_POST, "/v1/sessions/platform-chat", h_sessions_chat, 0, "sessions_chat"},
    {M_GET, "/v1/sessions/{}", h_session_get, 0, "session"},
    {M_PATCH, "/v1/sessions/{}", h_session_patch, 0, "session"},
    {M_DELETE, "/v1/sessions/{}", h_session_delete, 0, "session"},
    {M_POST, "/v1/sessions/{}/cancel", h_session_cancel, 0, "session_cancel"},
    {M_POST, "/v1/sessions/{}/messages", h_messages_post, 0, "messages"},
    {M_GET, "/v1/sessions/{}/messages", h_messages_list, 0, "messages"},
    {M_GET, "/v1/sessions/{}/events", h_events_list, 0, "events"},
    {M_GET, "/v1/sessions/{}/sse", h_sse, 0, "sse"},
    {M_POST, "/v1/sessions/{}/tool-results", h_tool_results, 0, "tool_results"},
    {M_PUT, "/v1/sessions/{}/pin", h_session_pin, 0, "session_pin"},
    {M_DELETE, "/v1/sessions/{}/pin", h_session_unpin, 0, "session_pin"},
};
const int route_count = sizeof(routes) / sizeof(routes[0]);

/* Matches path against pattern; returns the number of `{}` segments
 * (params filled), or -1.  A `{}` is a whole segment of the pattern and
 * takes one non-empty segment of the path.  One pass over both strings:
 * most routes differ from the path within a few bytes (every request tries
 * them all; strchr/strlen per segment had made routing 4 % of a POST). */
static int match(const char *pattern, const char *path, struct arena *a, const char **params)
{
    int np = 0;
    const char *p = pattern, *s = path;
    for (;;) {
        if (p[0] == '{' && p[1] == '}') {
            const char *e = s;
            while (*e && *e != '/')
                e++;
            if (e == s) return -1;
            if (np < REQ_MAX_PARAMS && a) params[np] = arena_strndup(a, s, (size_t)(e - s));
            np++;
            p += 2;
            s = e;
            continue;
        }
        if (*p != *s) return -1;
        if (!*p) return np;
        p++;
        s++;
    }
}

int route_match(int method, const char *path, struct arena *a, const char **params, char *allow,
                size_t allowlen)
{
    static const char *const mnames[] = {"GET",   "HEAD",   "POST",    "PUT",
                                         "PATCH", "DELETE", "OPTIONS", "OTHER"};
    int np[sizeof(routes) / sizeof(routes[0])];
    int best = 99, hit = -1;
    for (int i = 0; i < route_count; i++) {
        np[i] = match(routes[i].pattern, path, NULL, NULL);
        if (np[i] < 0) continue;
        if (np[i] < best) {
            best = np[i];
            hit = -1;
        }
        if (np[i] == best && routes[i].method == method && hit < 0) hit = i;
        if (best == 0 && hit >= 0) break; /* no route can match better */
    }
    if (best == 99) return -1;
    if (hit >= 0) {
        match(routes[hit].pattern, path, a, params);
        return hit;
    }
    size_t n = 0;
    allow[0] = 0;
    for (int i = 0; i < route_count; i++) {
        if (np[i] != best) continue;
        const char *m = mnames[routes[i].method];
        if (!strstr(allow, m)) {
            n += (size_t)snprintf(allow + n, n < allowlen ? allowlen - n : 0, "%s%s", n ? ", " : "",
                                  m);
            if (routes[i].method == M_GET && n < allowlen)
                n += (size_t)snprintf(allow + n, allowlen - n, ", HEAD");
        }
    }
    return -2;
}
