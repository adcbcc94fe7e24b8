/* test_api_routes.c — the route matcher: literal segments before `{}`
 * parameters, parameters as whole non-empty segments, 405 with Allow. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include "api/routes.h"
#include <stdio.h>
#include <string.h>

/* the route's pattern, or "404" / "405:<allow>" */
static const char *route(int method, const char *path, struct arena *a, const char **params)
{
    static char out[128];
    char allow[64];
    params[0] = params[1] = NULL;
    int i = route_match(method, path, a, params, allow, sizeof(allow));
    if (i == -1) return "404";
    if (i == -2) {
        snprintf(out, sizeof(out), "405:%s", allow);
        return out;
    }
    return routes[i].pattern;
}

static void test_literals_and_params(void **state)
{
    struct arena a;
    arena_init(&a);
    const char *p[REQ_MAX_PARAMS];
    assert_string_equal(route(M_GET, "/healthz", &a, p), "/healthz");
    assert_string_equal(route(M_GET, "/", &a, p), "/");
    assert_string_equal(route(M_POST, "/v1/sessions", &a, p), "/v1/sessions");
    assert_null(p[0]);
    assert_string_equal(route(M_GET, "/v1/sessions/session_abc", &a, p), "/v1/sessions/{}");
    assert_string_equal(p[0], "session_abc");
    /* a literal segment wins over a parameter */
    assert_string_equal(route(M_GET, "/v1/sessions/stats", &a, p), "/v1/sessions/stats");
    assert_string_equal(route(M_POST, "/v1/sessions/chat", &a, p), "/v1/sessions/chat");
    assert_string_equal(route(M_PUT, "/v1/sessions/x1/pin", &a, p), "/v1/sessions/{}/pin");
    assert_string_equal(p[0], "x1");
    assert_string_equal(route(M_GET, "/sessions/s9/chat", &a, p), "/sessions/{}/chat");
    assert_string_equal(p[0], "s9");
    arena_free(&a);
}

static void test_no_match(void **state)
{
    struct arena a;
    arena_init(&a);
    const char *p[REQ_MAX_PARAMS];
    static const char *const paths[] = {
        "",
        "/v1/session",
        "/v1/sessionsX",
        "/v1/sessions/",       /* a parameter is never empty */
        "/v1/sessions//pin",   /* nor here */
        "/v1/sessions/a/b",    /* nor does it span segments */
        "/v1/sessions/a/pin/", /* trailing slash */
        "//v1/sessions",
        "/healthz/",
        "/v1/sessions/a/pinX",
    };
    for (size_t i = 0; i < sizeof(paths) / sizeof(paths[0]); i++)
        if (strcmp(route(M_GET, paths[i], &a, p), "404") != 0)
            fail_msg("'%s' matched %s", paths[i], route(M_GET, paths[i], &a, p));
    arena_free(&a);
}

static void test_wrong_method_lists_allow(void **state)
{
    struct arena a;
    arena_init(&a);
    const char *p[REQ_MAX_PARAMS];
    assert_string_equal(route(M_PUT, "/v1/sessions", &a, p), "405:POST, GET, HEAD");
    assert_string_equal(route(M_POST, "/v1/sessions/s1/pin", &a, p), "405:PUT, DELETE");
    assert_string_equal(route(M_DELETE, "/healthz", &a, p), "405:GET, HEAD");
    arena_free(&a);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_literals_and_params),
        cmocka_unit_test(test_no_match),
        cmocka_unit_test(test_wrong_method_lists_allow),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
