/* test_config.c — the option table: defaults < LOOPD_* environment < flags,
 * both flag forms, and refusal of bad values. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include "config.h"
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

extern char **environ;

#define ARGC(a) ((int)(sizeof(a) / sizeof((a)[0])))

/* config_load prints to stderr (bad values) and stdout (--help); tests that
 * expect that run it with both pointed at /dev/null. */
static int saved_out = -1, saved_err = -1;

static void quiet(void)
{
    fflush(stdout);
    fflush(stderr);
    int null = open("/dev/null", O_WRONLY);
    assert_true(null >= 0);
    saved_out = dup(1);
    saved_err = dup(2);
    dup2(null, 1);
    dup2(null, 2);
    close(null);
}

static void loud(void)
{
    fflush(stdout);
    fflush(stderr);
    dup2(saved_out, 1);
    dup2(saved_err, 2);
    close(saved_out);
    close(saved_err);
    saved_out = saved_err = -1;
}

static int load_quiet(struct config *c, int argc, char **argv, int *rest)
{
    quiet();
    int rc = config_load(c, argc, argv, rest);
    loud();
    return rc;
}

/* Removes every LOOPD_* variable so the host environment cannot leak in. */
static int clear_env(void **state)
{
    for (;;) {
        char name[256] = "";
        for (char **e = environ; e && *e; e++) {
            if (strncmp(*e, "LOOPD_", 6) == 0) {
                size_t n = strcspn(*e, "=");
                if (n >= sizeof(name)) n = sizeof(name) - 1;
                memcpy(name, *e, n);
                name[n] = 0;
                break;
            }
        }
        if (!*name) return 0;
        unsetenv(name);
    }
}

static void test_defaults(void **state)
{
    char *argv[] = {"loopd"};
    struct config c;
    int rest = -1;
    assert_int_equal(config_load(&c, ARGC(argv), argv, &rest), 0);
    assert_int_equal(rest, 1);
    assert_string_equal(c.listen, "127.0.0.1:9300");
    assert_string_equal(c.data_dir, "./data");
    assert_string_equal(c.public_url, "");
    assert_int_equal(c.auth, AUTH_KEYS);
    assert_int_equal(c.log_level, LOG_INFO);
    assert_int_equal(c.log_json, 0);
    assert_int_equal(c.max_body, 2097152);
    assert_int_equal(c.max_header, 16384);
    assert_int_equal(c.request_timeout, 30);
    assert_int_equal(c.idle_timeout, 75);
    assert_int_equal(c.max_connections, 10000);
    assert_int_equal(c.max_connections_per_ip, 1000);
    assert_int_equal(c.max_title, 255);
    assert_int_equal(c.max_tags, 100);
    assert_int_equal(c.max_tag_len, 255);
    assert_int_equal(c.shutdown_timeout, 10);
    assert_int_equal(c.fault_point, 0);
}

/* rest may be NULL */
static void test_rest_optional(void **state)
{
    char *argv[] = {"loopd", "--max-title=10"};
    struct config c;
    assert_int_equal(config_load(&c, ARGC(argv), argv, NULL), 0);
    assert_int_equal(c.max_title, 10);
}

static void test_env_override(void **state)
{
    setenv("LOOPD_MAX_BODY", "4096", 1);
    setenv("LOOPD_LISTEN", "0.0.0.0:1234", 1);
    setenv("LOOPD_AUTH", "none", 1);
    setenv("LOOPD_MAX_CONNECTIONS_PER_IP", "7", 1); /* dashes become underscores */
    char *argv[] = {"loopd"};
    struct config c;
    assert_int_equal(config_load(&c, ARGC(argv), argv, NULL), 0);
    assert_int_equal(c.max_body, 4096);
    assert_string_equal(c.listen, "0.0.0.0:1234");
    assert_int_equal(c.auth, AUTH_NONE);
    assert_int_equal(c.max_connections_per_ip, 7);
    assert_int_equal(c.max_header, 16384); /* untouched ones keep defaults */
}

static void test_flag_beats_env(void **state)
{
    setenv("LOOPD_MAX_BODY", "4096", 1);
    setenv("LOOPD_LISTEN", "0.0.0.0:1234", 1);
    char *argv[] = {"loopd", "--max-body=8192", "--listen", "10.0.0.1:80"};
    struct config c;
    assert_int_equal(config_load(&c, ARGC(argv), argv, NULL), 0);
    assert_int_equal(c.max_body, 8192);
    assert_string_equal(c.listen, "10.0.0.1:80");
}

/* A later flag wins over an earlier one. */
static void test_last_flag_wins(void **state)
{
    char *argv[] = {"loopd", "--max-body=8192", "--max-body", "9000"};
    struct config c;
    assert_int_equal(config_load(&c, ARGC(argv), argv, NULL), 0);
    assert_int_equal(c.max_body, 9000);
}

static void test_listen_forms(void **state)
{
    struct config c;
    int rest = -1;
    char *a1[] = {"loopd", "--listen=0.0.0.0:8080"};
    assert_int_equal(config_load(&c, ARGC(a1), a1, &rest), 0);
    assert_string_equal(c.listen, "0.0.0.0:8080");
    assert_int_equal(rest, 2);

    char *a2[] = {"loopd", "--listen", "[::1]:8081"};
    assert_int_equal(config_load(&c, ARGC(a2), a2, &rest), 0);
    assert_string_equal(c.listen, "[::1]:8081");
    assert_int_equal(rest, 3);

    /* a value may itself contain '=' */
    char *a3[] = {"loopd", "--public-url=http://h/p=q"};
    assert_int_equal(config_load(&c, ARGC(a3), a3, NULL), 0);
    assert_string_equal(c.public_url, "http://h/p=q");
}

/* --public-url is copied into every self_url, view_url and Location as is,
 * and the model base URLs go to libcurl: each must be an absolute http(s)
 * URL of characters a URL holds unescaped. */
static void test_urls_checked(void **state)
{
    (void)state;
    struct config c;
    static const char *good[] = {"http://h", "https://api.example.com:8443/v1",
                                 "http://127.0.0.1:9300/base/", "https://h/a%20b/~x;y=z"};
    static const char *bad[] = {"ftp://h",    "h:9300",      "http://",     "http:///path",
                                "http://:9",  "http://h\"x", "http://h x",  "http://h/<a>",
                                "http://h?q", "http://h/#f", "http://h\\x", "https://h/\x01"};
    static const char *flags[] = {"--public-url", "--openai-base-url", "--anthropic-base-url"};
    for (size_t f = 0; f < sizeof(flags) / sizeof(flags[0]); f++) {
        for (size_t i = 0; i < sizeof(good) / sizeof(good[0]); i++) {
            char *a[] = {"loopd", (char *)flags[f], (char *)good[i]};
            assert_int_equal(config_load(&c, ARGC(a), a, NULL), 0);
        }
        for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
            char *a[] = {"loopd", (char *)flags[f], (char *)bad[i]};
            assert_int_equal(config_load(&c, ARGC(a), a, NULL), -1);
        }
    }
}

/* Flags stop at the first non-flag word (a subcommand such as `keys`). */
static void test_rest_index(void **state)
{
    struct config c;
    int rest = -1;
    char *a1[] = {"loopd", "--listen", "1.2.3.4:5", "keys", "list", "--max-body=1"};
    assert_int_equal(config_load(&c, ARGC(a1), a1, &rest), 0);
    assert_int_equal(rest, 3);
    assert_string_equal(a1[rest], "keys");
    assert_int_equal(c.max_body, 2097152); /* after the subcommand: not read */

    char *a2[] = {"loopd", "keys", "--listen", "x"};
    assert_int_equal(config_load(&c, ARGC(a2), a2, &rest), 0);
    assert_int_equal(rest, 1);
    assert_string_equal(c.listen, "127.0.0.1:9300");
}

static void test_enums(void **state)
{
    char *argv[] = {"loopd", "--auth=none", "--log-level=debug", "--log-format", "json"};
    struct config c;
    assert_int_equal(config_load(&c, ARGC(argv), argv, NULL), 0);
    assert_int_equal(c.auth, AUTH_NONE);
    assert_int_equal(c.log_level, LOG_DEBUG);
    assert_int_equal(c.log_json, 1);
    char *a2[] = {"loopd", "--log-level=error", "--auth=keys"};
    assert_int_equal(config_load(&c, ARGC(a2), a2, NULL), 0);
    assert_int_equal(c.log_level, LOG_ERROR);
    assert_int_equal(c.auth, AUTH_KEYS);
}

static void test_numbers_bounds(void **state)
{
    struct config c;
    char *lo[] = {"loopd", "--max-body=1024"};
    assert_int_equal(config_load(&c, ARGC(lo), lo, NULL), 0);
    assert_int_equal(c.max_body, 1024);
    char *hi[] = {"loopd", "--max-body=16777216"}; /* LD_MAX_BODY_BOUND */
    assert_int_equal(config_load(&c, ARGC(hi), hi, NULL), 0);
    assert_int_equal(c.max_body, 16777216);
    char *zero[] = {"loopd", "--max-tags=0", "--shutdown-timeout=0"};
    assert_int_equal(config_load(&c, ARGC(zero), zero, NULL), 0);
    assert_int_equal(c.max_tags, 0);
    assert_int_equal(c.shutdown_timeout, 0);
}

static void test_out_of_range(void **state)
{
    struct config c;
    char *below[] = {"loopd", "--max-body=1023"};
    assert_int_equal(load_quiet(&c, ARGC(below), below, NULL), -1);
    char *above[] = {"loopd", "--max-body=16777217"};
    assert_int_equal(load_quiet(&c, ARGC(above), above, NULL), -1);
    char *neg[] = {"loopd", "--request-timeout=-1"};
    assert_int_equal(load_quiet(&c, ARGC(neg), neg, NULL), -1);
    char *huge[] = {"loopd", "--max-body=99999999999999999999999"};
    assert_int_equal(load_quiet(&c, ARGC(huge), huge, NULL), -1);
}

static void test_not_a_number(void **state)
{
    struct config c;
    char *trailing[] = {"loopd", "--max-body=4096k"};
    assert_int_equal(load_quiet(&c, ARGC(trailing), trailing, NULL), -1);
    char *empty[] = {"loopd", "--max-body="};
    assert_int_equal(load_quiet(&c, ARGC(empty), empty, NULL), -1);
    char *word[] = {"loopd", "--idle-timeout", "soon"};
    assert_int_equal(load_quiet(&c, ARGC(word), word, NULL), -1);
}

static void test_env_bad_value(void **state)
{
    struct config c;
    char *argv[] = {"loopd"};
    setenv("LOOPD_MAX_BODY", "12", 1);
    assert_int_equal(load_quiet(&c, ARGC(argv), argv, NULL), -1);
    unsetenv("LOOPD_MAX_BODY");
    setenv("LOOPD_LOG_LEVEL", "loud", 1);
    assert_int_equal(load_quiet(&c, ARGC(argv), argv, NULL), -1);
}

static void test_unknown_flag(void **state)
{
    struct config c;
    char *a1[] = {"loopd", "--no-such-flag"};
    assert_int_equal(load_quiet(&c, ARGC(a1), a1, NULL), -1);
    char *a2[] = {"loopd", "--no-such-flag=1"};
    assert_int_equal(load_quiet(&c, ARGC(a2), a2, NULL), -1);
    /* a prefix of a real flag is not that flag */
    char *a3[] = {"loopd", "--max=1"};
    assert_int_equal(load_quiet(&c, ARGC(a3), a3, NULL), -1);
    char *a4[] = {"loopd", "--listenx=1:2"};
    assert_int_equal(load_quiet(&c, ARGC(a4), a4, NULL), -1);
}

static void test_bad_enum(void **state)
{
    struct config c;
    char *a1[] = {"loopd", "--auth=maybe"};
    assert_int_equal(load_quiet(&c, ARGC(a1), a1, NULL), -1);
    char *a2[] = {"loopd", "--auth=KEYS"}; /* case matters */
    assert_int_equal(load_quiet(&c, ARGC(a2), a2, NULL), -1);
    char *a3[] = {"loopd", "--log-format=key"}; /* a prefix of an allowed value */
    assert_int_equal(load_quiet(&c, ARGC(a3), a3, NULL), -1);
    char *a4[] = {"loopd", "--log-level="};
    assert_int_equal(load_quiet(&c, ARGC(a4), a4, NULL), -1);
}

static void test_missing_value(void **state)
{
    struct config c;
    char *argv[] = {"loopd", "--listen"};
    assert_int_equal(load_quiet(&c, ARGC(argv), argv, NULL), -1);
}

static void test_string_too_long(void **state)
{
    struct config c;
    char v[200];
    memset(v, 'h', sizeof(v) - 1);
    v[sizeof(v) - 1] = 0;
    char flag[] = "--listen";
    char *argv[] = {"loopd", flag, v};
    assert_int_equal(load_quiet(&c, ARGC(argv), argv, NULL), -1);
    /* 127 bytes still fit listen[128] */
    v[127] = 0;
    assert_int_equal(config_load(&c, ARGC(argv), argv, NULL), 0);
    assert_int_equal(strlen(c.listen), 127);
}

static void test_help_and_version(void **state)
{
    struct config c;
    char *h[] = {"loopd", "--help"};
    assert_int_equal(load_quiet(&c, ARGC(h), h, NULL), 1);
    char *v[] = {"loopd", "--version"};
    assert_int_equal(load_quiet(&c, ARGC(v), v, NULL), 1);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup(test_defaults, clear_env),
        cmocka_unit_test_setup(test_rest_optional, clear_env),
        cmocka_unit_test_setup(test_env_override, clear_env),
        cmocka_unit_test_setup(test_flag_beats_env, clear_env),
        cmocka_unit_test_setup(test_last_flag_wins, clear_env),
        cmocka_unit_test_setup(test_listen_forms, clear_env),
        cmocka_unit_test_setup(test_rest_index, clear_env),
        cmocka_unit_test_setup(test_urls_checked, clear_env),
        cmocka_unit_test_setup(test_enums, clear_env),
        cmocka_unit_test_setup(test_numbers_bounds, clear_env),
        cmocka_unit_test_setup(test_out_of_range, clear_env),
        cmocka_unit_test_setup(test_not_a_number, clear_env),
        cmocka_unit_test_setup(test_env_bad_value, clear_env),
        cmocka_unit_test_setup(test_unknown_flag, clear_env),
        cmocka_unit_test_setup(test_bad_enum, clear_env),
        cmocka_unit_test_setup(test_missing_value, clear_env),
        cmocka_unit_test_setup(test_string_too_long, clear_env),
        cmocka_unit_test_setup(test_help_and_version, clear_env),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
