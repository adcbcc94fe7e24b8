/* test_api_common.c — the pure validators of api/common.c: locale
 * normalisation (a BCP 47 subset) and slugs. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include "api/api.h"
#include "limits.h"
#include <string.h>

static void check_locale(const char *in, const char *want)
{
    char out[LD_MAX_LOCALE + 1]; /* what field_locale passes */
    memset(out, 'X', sizeof(out));
    if (locale_normalize(in, out, sizeof(out)) != 0) fail_msg("rejected '%s'", in);
    assert_string_equal(out, want);
}

static void check_locale_reject(const char *in)
{
    char out[LD_MAX_LOCALE + 1];
    if (locale_normalize(in, out, sizeof(out)) == 0) fail_msg("accepted '%s' as '%s'", in, out);
}

static void test_locale_canonical_case(void **state)
{
    check_locale("en", "en");
    check_locale("EN", "en");
    check_locale("en-US", "en-US");
    check_locale("en-us", "en-US");
    check_locale("en_us", "en-US");
    check_locale("EN_us", "en-US");
    check_locale("uk-UA", "uk-UA");
    check_locale("zh-hant-tw", "zh-Hant-TW");
    check_locale("ZH_HANT_TW", "zh-Hant-TW");
    check_locale("zh-Hant", "zh-Hant");
    check_locale("sr-latn", "sr-Latn");
    check_locale("es-419", "es-419");
    check_locale("fil-PH", "fil-PH"); /* 3-letter language */
}

static void test_locale_trims_space(void **state)
{
    check_locale(" uk-UA ", "uk-UA");
    check_locale("\tde-de\n", "de-DE");
}

static void test_locale_rejects(void **state)
{
    check_locale_reject("");
    check_locale_reject("   ");
    check_locale_reject("e");
    check_locale_reject("english");
    check_locale_reject("en--US");
    check_locale_reject("-en");
    check_locale_reject("en-");
    check_locale_reject("en-US-extra-x");
    check_locale_reject("en-US-extra");
    check_locale_reject("en-US-GB");   /* two regions */
    check_locale_reject("en-US-Latn"); /* script after region */
    check_locale_reject("en-Latn-Cyrl");
    check_locale_reject("e1");
    check_locale_reject("12-US");
    check_locale_reject("en-U1");
    check_locale_reject("en-41");   /* a numeric region has 3 digits */
    check_locale_reject("en-41a");  /* ...all digits */
    check_locale_reject("en-Lat1"); /* script is letters */
    check_locale_reject("en-USA");  /* alphabetic regions have 2 letters */
    check_locale_reject("en US");
    check_locale_reject("en.US");

    char big[66];
    memset(big, 'a', 65);
    big[65] = 0;
    check_locale_reject(big); /* 65 bytes */
    /* 64 bytes of letters: long enough, but no tag has a 64-letter subtag */
    big[64] = 0;
    check_locale_reject(big);
}

/* The output never exceeds the buffer the caller gives. */
static void test_locale_small_buffer(void **state)
{
    char out[6];
    assert_int_equal(locale_normalize("en-US", out, sizeof(out)), 0);
    assert_string_equal(out, "en-US");
    char small[5];
    memset(small, 'X', sizeof(small));
    assert_int_not_equal(locale_normalize("en-US", small, sizeof(small)), 0);
}

static void test_slug_valid(void **state)
{
    assert_true(slug_valid("a"));
    assert_true(slug_valid("my-agent-2"));
    assert_true(slug_valid("0"));
    assert_true(slug_valid("a1-b2-c3"));
    assert_true(slug_valid("2024-report"));
}

static void test_slug_invalid(void **state)
{
    assert_false(slug_valid(""));
    assert_false(slug_valid("-a"));
    assert_false(slug_valid("a-"));
    assert_false(slug_valid("-"));
    assert_false(slug_valid("a--b"));
    assert_false(slug_valid("A"));
    assert_false(slug_valid("my-Agent"));
    assert_false(slug_valid("a_b"));
    assert_false(slug_valid("a b"));
    assert_false(slug_valid("a.b"));
    assert_false(slug_valid("a/b"));
    assert_false(slug_valid("caf\xc3\xa9"));
}

static void test_slug_length(void **state)
{
    char s[LD_MAX_NAME + 2];
    memset(s, 'a', sizeof(s));
    s[64] = 0;
    assert_true(slug_valid(s)); /* 64 chars */
    s[64] = 'a';
    s[65] = 0;
    assert_false(slug_valid(s)); /* 65 chars */
    /* 64 chars with dashes inside */
    for (int i = 1; i < 63; i += 2)
        s[i] = '-';
    s[64] = 0;
    assert_true(slug_valid(s));
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_locale_canonical_case),
        cmocka_unit_test(test_locale_trims_space),
        cmocka_unit_test(test_locale_rejects),
        cmocka_unit_test(test_locale_small_buffer),
        cmocka_unit_test(test_slug_valid),
        cmocka_unit_test(test_slug_invalid),
        cmocka_unit_test(test_slug_length),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
