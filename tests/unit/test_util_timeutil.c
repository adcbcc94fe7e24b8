/* test_util_timeutil.c — RFC 3339 formatting and parsing, and the clocks. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include "util/timeutil.h"
#include <string.h>
#include <time.h>

/* 2026-05-27T15:24:00Z */
#define T0 INT64_C(1779895440000000)

static void check_format(int64_t us, const char *want)
{
    char out[40];
    memset(out, 'X', sizeof(out));
    time_format(us, out, sizeof(out));
    assert_string_equal(out, want);
}

static void test_format_epoch(void **state)
{
    check_format(0, "1970-01-01T00:00:00.000000Z");
}

static void test_format_known(void **state)
{
    check_format(T0 + 123456, "2026-05-27T15:24:00.123456Z");
    check_format(T0, "2026-05-27T15:24:00.000000Z");
    check_format(T0 + 1, "2026-05-27T15:24:00.000001Z");
    check_format(T0 + 999999, "2026-05-27T15:24:00.999999Z");
    /* leap day, end of year */
    check_format(INT64_C(951782400) * 1000000, "2000-02-29T00:00:00.000000Z");
    check_format(INT64_C(1767225599) * 1000000 + 500000, "2025-12-31T23:59:59.500000Z");
}

static void test_format_negative(void **state)
{
    check_format(-1, "1969-12-31T23:59:59.999999Z");
    check_format(-1000000, "1969-12-31T23:59:59.000000Z");
}

/* The documented size: 27 characters and the NUL. */
static void test_format_fits_28_bytes(void **state)
{
    char out[28];
    time_format(T0 + 123456, out, sizeof(out));
    assert_int_equal(strlen(out), 27);
    assert_string_equal(out, "2026-05-27T15:24:00.123456Z");
}

static void check_parse(const char *s, int64_t want)
{
    int64_t us = -42;
    if (time_parse(s, &us) != 0) fail_msg("time_parse rejected '%s'", s);
    if (us != want)
        fail_msg("time_parse('%s') = %lld, want %lld", s, (long long)us, (long long)want);
}

static void check_reject(const char *s)
{
    int64_t us = 0;
    if (time_parse(s, &us) == 0) fail_msg("time_parse accepted '%s' (= %lld)", s, (long long)us);
}

static void test_parse_utc(void **state)
{
    check_parse("2026-05-27T15:24:00Z", T0);
    check_parse("1970-01-01T00:00:00Z", 0);
    check_parse("2000-02-29T00:00:00Z", INT64_C(951782400) * 1000000);
}

static void test_parse_offsets(void **state)
{
    check_parse("2026-05-27T17:24:00+02:00", T0);
    check_parse("2026-05-27T13:24:00-02:00", T0);
    check_parse("2026-05-27T09:54:00-05:30", T0);
    check_parse("2026-05-27T15:24:00+00:00", T0);
    check_parse("2026-05-27T15:24:00-00:00", T0);
    /* an offset that crosses midnight */
    check_parse("2026-05-28T01:24:00+10:00", T0);
}

static void test_parse_fractions(void **state)
{
    check_parse("2026-05-27T15:24:00.1Z", T0 + 100000);
    check_parse("2026-05-27T15:24:00.12Z", T0 + 120000);
    check_parse("2026-05-27T15:24:00.123Z", T0 + 123000);
    check_parse("2026-05-27T15:24:00.1234Z", T0 + 123400);
    check_parse("2026-05-27T15:24:00.12345Z", T0 + 123450);
    check_parse("2026-05-27T15:24:00.123456Z", T0 + 123456);
    /* past microseconds the digits are dropped, not rounded */
    check_parse("2026-05-27T15:24:00.1234567Z", T0 + 123456);
    check_parse("2026-05-27T15:24:00.12345678Z", T0 + 123456);
    check_parse("2026-05-27T15:24:00.123456789Z", T0 + 123456);
    check_parse("2026-05-27T15:24:00.999999999Z", T0 + 999999);
    check_parse("2026-05-27T15:24:00.000001Z", T0 + 1);
    check_parse("2026-05-27T17:24:00.5+02:00", T0 + 500000);
}

static void test_parse_lowercase_and_space(void **state)
{
    check_parse("2026-05-27t15:24:00z", T0);
    check_parse("2026-05-27t15:24:00.25Z", T0 + 250000);
    check_parse("2026-05-27T15:24:00.25z", T0 + 250000);
    check_parse("2026-05-27 15:24:00Z", T0); /* RFC 3339 section 5.6 note */
}

static void test_parse_rejects(void **state)
{
    check_reject("");
    check_reject("2026-05-27T15:24:00");   /* missing zone */
    check_reject("2026-05-27T15:24:00.5"); /* missing zone after fraction */
    check_reject("2026-13-01T00:00:00Z");  /* month 13 */
    check_reject("2026-02-30T00:00:00Z");  /* no such day */
    check_reject("2025-02-29T00:00:00Z");  /* not a leap year */
    check_reject("2026-04-31T00:00:00Z");
    check_reject("2026-00-01T00:00:00Z");  /* month 0 */
    check_reject("2026-05-00T00:00:00Z");  /* day 0 */
    check_reject("2026-05-32T00:00:00Z");  /* day 32 */
    check_reject("2026-05-27T24:00:00Z");  /* hour 24 */
    check_reject("2026-05-27T15:60:00Z");  /* minute 60 */
    check_reject("2026-05-27T15:24:61Z");  /* second 61 */
    check_reject("2026-05-27T15:24:00Zx"); /* garbage suffix */
    check_reject("2026-05-27T15:24:00Z "); /* trailing space */
    check_reject("2026-05-27T15:24:00+02:00x");
    check_reject("2026-05-27T15:24:00.Z");  /* empty fraction */
    check_reject("2026-05-27T15:24:00,5Z"); /* comma fraction */
    check_reject("2026-05-27T15:24:00+0200");
    check_reject("2026-05-27T15:24:00+02");
    check_reject("2026-05-27T15:24:00+24:00");
    check_reject("2026-05-27T15:24:00+02:60");
    check_reject("2026-05-27T15:24Z"); /* no seconds */
    check_reject("2026-05-27");
    check_reject("2026-5-27T15:24:00Z");
    check_reject("26-05-27T15:24:00Z");
    check_reject("2026/05/27T15:24:00Z");
    check_reject("2026-05-27X15:24:00Z");
    check_reject("2026-05-27T15:24:00UTC");
    check_reject(" 2026-05-27T15:24:00Z");
    check_reject("yesterday");
    check_reject("1779895440");
}

/* format -> parse gives back the same microseconds */
static void test_round_trip(void **state)
{
    static const int64_t v[] = {0,
                                1,
                                999999,
                                T0,
                                T0 + 123456,
                                INT64_C(951782400) * 1000000 + 7,
                                INT64_C(4102444799) * 1000000 + 999999, /* 2099-12-31 */
                                INT64_C(253402300799) * 1000000};       /* 9999-12-31 */
    for (size_t i = 0; i < sizeof(v) / sizeof(v[0]); i++) {
        char s[40];
        time_format(v[i], s, sizeof(s));
        int64_t back = -1;
        assert_int_equal(time_parse(s, &back), 0);
        if (back != v[i]) fail_msg("%lld -> %s -> %lld", (long long)v[i], s, (long long)back);
    }
    /* and parse -> format is canonical UTC */
    int64_t us;
    char s[40];
    assert_int_equal(time_parse("2026-05-27t17:24:00.5+02:00", &us), 0);
    time_format(us, s, sizeof(s));
    assert_string_equal(s, "2026-05-27T15:24:00.500000Z");
}

static void test_clocks(void **state)
{
    int64_t now = time_now_us();
    int64_t t = (int64_t)time(NULL) * 1000000;
    assert_true(now > t - 5000000 && now < t + 5000000);
    int64_t m1 = time_mono_us();
    int64_t m2 = time_mono_us();
    assert_true(m2 >= m1);
    assert_true(m1 > 0);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_format_epoch),    cmocka_unit_test(test_format_known),
        cmocka_unit_test(test_format_negative), cmocka_unit_test(test_format_fits_28_bytes),
        cmocka_unit_test(test_parse_utc),       cmocka_unit_test(test_parse_offsets),
        cmocka_unit_test(test_parse_fractions), cmocka_unit_test(test_parse_lowercase_and_space),
        cmocka_unit_test(test_parse_rejects),   cmocka_unit_test(test_round_trip),
        cmocka_unit_test(test_clocks),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
