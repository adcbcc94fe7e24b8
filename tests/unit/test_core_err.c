/* test_core_err.c — every ld_err maps to an HTTP status, the matching
 * reason phrase and a stable snake_case code. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include "core/err.h"
#include <string.h>

static int snake_case(const char *s)
{
    if (!s || !*s || *s == '_') return 0;
    for (const char *p = s; *p; p++) {
        if (*p == '_') {
            if (p[1] == '_' || p[1] == 0) return 0;
        } else if (!((*p >= 'a' && *p <= 'z') || (*p >= '0' && *p <= '9'))) {
            return 0;
        }
    }
    return 1;
}

/* RFC 9110 reason phrases (plus 429 from RFC 6585, 431 likewise). */
static const char *reason(int status)
{
    switch (status) {
    case 200:
        return "OK";
    case 400:
        return "Bad Request";
    case 401:
        return "Unauthorized";
    case 403:
        return "Forbidden";
    case 404:
        return "Not Found";
    case 405:
        return "Method Not Allowed";
    case 408:
        return "Request Timeout";
    case 409:
        return "Conflict";
    case 412:
        return "Precondition Failed";
    case 413:
        return "Content Too Large";
    case 415:
        return "Unsupported Media Type";
    case 422:
        return "Unprocessable Content";
    case 429:
        return "Too Many Requests";
    case 431:
        return "Request Header Fields Too Large";
    case 500:
        return "Internal Server Error";
    case 503:
        return "Service Unavailable";
    case 501:
        return "Not Implemented";
    case 414:
        return "URI Too Long";
    case 505:
        return "HTTP Version Not Supported";
    }
    return NULL;
}

static void test_every_code_mapped(void **state)
{
    for (int i = LD_OK; i < LD_E__COUNT; i++) {
        enum ld_err e = (enum ld_err)i;
        int st = ld_err_status(e);
        if (st < 200 || st > 599) fail_msg("ld_err %d: status %d", i, st);
        const char *t = ld_err_title(e);
        assert_non_null(t);
        if (!*t) fail_msg("ld_err %d: empty title", i);
        const char *c = ld_err_code(e);
        if (!snake_case(c)) fail_msg("ld_err %d: code '%s' is not snake_case", i, c ? c : "(null)");
        /* the title is the reason phrase of the status */
        const char *want = reason(st);
        if (!want) fail_msg("ld_err %d: unexpected status %d", i, st);
        if (strcmp(t, want) != 0) fail_msg("ld_err %d: title '%s' for status %d", i, t, st);
        /* only LD_OK is a success */
        if (i == LD_OK)
            assert_int_equal(st, 200);
        else
            assert_true(st >= 400);
    }
}

/* The statuses documented next to each code in err.h. */
static void test_documented_statuses(void **state)
{
    static const struct {
        enum ld_err e;
        int status;
    } v[] = {
        {LD_OK, 200},
        {LD_E_BAD_REQUEST, 400},
        {LD_E_BAD_JSON, 400},
        {LD_E_LIMIT, 400},
        {LD_E_UNAUTHORIZED, 401},
        {LD_E_FORBIDDEN, 403},
        {LD_E_NOT_FOUND, 404},
        {LD_E_METHOD, 405},
        {LD_E_TIMEOUT, 408},
        {LD_E_CONFLICT, 409},
        {LD_E_PRECONDITION, 412},
        {LD_E_TOO_LARGE, 413},
        {LD_E_MEDIA_TYPE, 415},
        {LD_E_UNPROCESSABLE, 422},
        {LD_E_HEADERS_TOO_LARGE, 431},
        {LD_E_RATE_LIMITED, 429},
        {LD_E_INTERNAL, 500},
        {LD_E_UNAVAILABLE, 503},
        {LD_E_STORAGE, 500},
        {LD_E_NOT_IMPLEMENTED, 501},
        {LD_E_URI_TOO_LONG, 414},
        {LD_E_VERSION, 505},
    };
    assert_int_equal(sizeof(v) / sizeof(v[0]), LD_E__COUNT);
    for (size_t i = 0; i < sizeof(v) / sizeof(v[0]); i++)
        if (ld_err_status(v[i].e) != v[i].status)
            fail_msg("ld_err %d: status %d, want %d", (int)v[i].e, ld_err_status(v[i].e),
                     v[i].status);
}

static void test_specific(void **state)
{
    assert_int_equal(ld_err_status(LD_E_NOT_FOUND), 404);
    assert_string_equal(ld_err_title(LD_E_NOT_FOUND), "Not Found");
    assert_string_equal(ld_err_code(LD_E_NOT_FOUND), "not_found");
    assert_int_equal(ld_err_status(LD_E_METHOD), 405);
    assert_string_equal(ld_err_title(LD_E_METHOD), "Method Not Allowed");
    assert_int_equal(ld_err_status(LD_E_TOO_LARGE), 413);
    assert_int_equal(ld_err_status(LD_E_HEADERS_TOO_LARGE), 431);
    assert_int_equal(ld_err_status(LD_E_UNAVAILABLE), 503);
    assert_string_equal(ld_err_title(LD_E_UNAVAILABLE), "Service Unavailable");
    assert_string_equal(ld_err_code(LD_E_BAD_JSON), "invalid_json");
}

/* Codes are distinct, except that a storage failure is reported exactly
 * as an internal error (nothing about the store leaks to clients). */
static void test_codes_distinct(void **state)
{
    for (int i = LD_OK; i < LD_E__COUNT; i++)
        for (int j = i + 1; j < LD_E__COUNT; j++) {
            if (i == LD_E_INTERNAL && j == LD_E_STORAGE) continue;
            if (strcmp(ld_err_code((enum ld_err)i), ld_err_code((enum ld_err)j)) == 0)
                fail_msg("ld_err %d and %d share code '%s'", i, j, ld_err_code((enum ld_err)i));
        }
    assert_int_equal(ld_err_status(LD_E_STORAGE), ld_err_status(LD_E_INTERNAL));
    assert_string_equal(ld_err_title(LD_E_STORAGE), ld_err_title(LD_E_INTERNAL));
    assert_string_equal(ld_err_code(LD_E_STORAGE), ld_err_code(LD_E_INTERNAL));
}

/* The sentinel is not a code, but asking for it is still answered safely. */
static void test_sentinel_is_internal(void **state)
{
    assert_int_equal(ld_err_status(LD_E__COUNT), 500);
    assert_string_equal(ld_err_title(LD_E__COUNT), "Internal Server Error");
    assert_string_equal(ld_err_code(LD_E__COUNT), "internal_error");
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_every_code_mapped),
        cmocka_unit_test(test_documented_statuses),
        cmocka_unit_test(test_specific),
        cmocka_unit_test(test_codes_distinct),
        cmocka_unit_test(test_sentinel_is_internal),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
