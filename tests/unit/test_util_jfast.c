/* test_util_jfast.c — the fast JSON parse (src/util/jfast.c) against
 * jansson's json_loadb with the flags request bodies are parsed with: every
 * text the fast parse takes must give the value json_loadb gives, keys in
 * the same order; every text it declines is json_loadb's to answer. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <cmocka.h>

#include "util/buf.h"
#include "util/jfast.h"

#define FLAGS (JSON_REJECT_DUPLICATES | JSON_DECODE_ANY)

/* 1: taken and equal to json_loadb's value, 0: declined; fails the test
 * if taken where json_loadb refuses or gives another value */
static int same_as_jansson(const char *p, size_t n)
{
    json_t *f = jfast_parse(p, n);
    json_error_t e;
    json_t *j = json_loadb(p, n, FLAGS, &e);
    if (f) {
        if (!j) fail_msg("taken, but json_loadb refuses it (%s): %.*s", e.text, (int)n, p);
        char *a = json_dumps(f, JSON_COMPACT | JSON_ENCODE_ANY);
        char *b = json_dumps(j, JSON_COMPACT | JSON_ENCODE_ANY);
        if (!json_equal(f, j) || strcmp(a, b) != 0)
            fail_msg("taken as %s, json_loadb says %s: %.*s", a, b, (int)n, p);
        free(a);
        free(b);
        json_decref(f);
    }
    json_decref(j);
    return f != NULL;
}

static int taken(const char *s)
{
    return same_as_jansson(s, strlen(s));
}

static void test_common_bodies_taken(void **state)
{
    (void)state;
    static const char *const ok[] = {
        "{\"title\":\"bench\",\"tags\":[\"a\",\"b\"]}",
        "{}",
        " \t\r\n{ \"a\" : 1 , \"b\" : [ ] , \"c\" : { } } \n",
        "{\"n\":0,\"m\":-0,\"k\":-12,\"big\":999999999999999999,\"neg\":-999999999999999999}",
        "{\"t\":true,\"f\":false,\"z\":null,\"e\":\"\",\"\":\"empty key\"}",
        "{\"nested\":{\"deeper\":[1,[2,[3,{\"x\":\"y\"}]]]}}",
        "{\"z\":1,\"a\":2,\"m\":3}", /* the order kept, not sorted */
        "{\"printable\":\" !#$%&'()*+,-./09:;<=>?@AZ[]^_`az{|}~\x7f\"}",
        "[1,2,3]",
        "\"top-level string\"",
        "42",
        "null",
        "true",
    };
    for (size_t i = 0; i < sizeof(ok) / sizeof(*ok); i++)
        if (!taken(ok[i])) fail_msg("declined: %s", ok[i]);
}

static void test_the_rest_declined(void **state)
{
    (void)state;
    static const char *const no[] = {
        /* valid JSON that is json_loadb's alone */
        "{\"a\":\"tab\\tescape\"}", "{\"a\":\"\\u00e9\"}", "{\"a\":\"caf\xc3\xa9\"}",
        "{\"caf\xc3\xa9\":1}", "{\"a\":1.5}", "{\"a\":1e3}", "{\"a\":1E3}",
        "{\"a\":1234567890123456789}", "{\"a\":-1234567890123456789}",
        /* refused by json_loadb: the error is its to word */
        "", "   ", "{", "}", "{\"a\"}", "{\"a\":}", "{\"a\":1,}", "{,}", "[1,]", "[,1]",
        "{\"a\":1 \"b\":2}", "{\"a\":1}x", "{\"a\":1}{}", "{\"a\":tru}", "{\"a\":truex}",
        "{\"a\":nul}", "{\"a\":01}", "{\"a\":-}", "{\"a\":--1}", "{\"a\":+1}", "{\"a\":.5}",
        "{\"a\":1-2}", "{\"a\":\"x}", "{\"a\":\"ctl\x01\"}", "{\"a\":\"nl\n\"}", "{'a':1}", "{a:1}",
        "{\"a\":1,\"a\":2}", "{\"a\":{\"b\":1,\"b\":1}}", "\xef\xbb\xbf{}", "{\"a\":[1 2]}",
        "{\"a\":NaN}", "{\"a\":Infinity}"};
    for (size_t i = 0; i < sizeof(no) / sizeof(*no); i++)
        if (taken(no[i])) fail_msg("taken: %s", no[i]);
    /* a NUL inside a string, and after the value */
    assert_int_equal(same_as_jansson("{\"a\":\"x\0y\"}", 11), 0);
    assert_int_equal(same_as_jansson("{}\0", 3), 0);
    assert_int_equal(same_as_jansson("{\"a\":1}", 5), 0); /* cut short */
}

static void test_depth(void **state)
{
    (void)state;
    char deep[2 * (JFAST_MAX_DEPTH + 2) + 1];
    for (int d = JFAST_MAX_DEPTH; d <= JFAST_MAX_DEPTH + 1; d++) {
        memset(deep, '[', (size_t)d);
        memset(deep + d, ']', (size_t)d);
        assert_int_equal(same_as_jansson(deep, 2 * (size_t)d), d <= JFAST_MAX_DEPTH);
    }
}

/* xorshift64*: the same inputs every run */
static uint64_t rng = 0x9e3779b97f4a7c15ULL;
static unsigned rnd(unsigned n)
{
    rng ^= rng >> 12;
    rng ^= rng << 25;
    rng ^= rng >> 27;
    return (unsigned)((rng * 0x2545f4914f6cdd1dULL) >> 33) % n;
}

static void gen(struct buf *b, int depth)
{
    static const char *const atoms[] = {"0",
                                        "-0",
                                        "7",
                                        "-42",
                                        "123456789012345678",
                                        "1234567890123456789",
                                        "1.5",
                                        "-2e3",
                                        "true",
                                        "false",
                                        "null",
                                        "\"\"",
                                        "\"a\"",
                                        "\"b\"",
                                        "\"x y\"",
                                        "\"\\n\"",
                                        "\"\\u0041\"",
                                        "\"\xc3\xa9\"",
                                        "\"\\u0000\""};
    static const char *const keys[] = {"\"a\"", "\"b\"", "\"title\"", "\"\"", "\"t\\u0061gs\""};
    static const char *const ws[] = {"", "", "", " ", "\n", "\t", "\r\n "};
    unsigned k = depth > 5 ? 0 : rnd(4);
    if (k == 0 || k == 1) {
        buf_puts(b, atoms[rnd(sizeof(atoms) / sizeof(*atoms))]);
    } else {
        int obj = k == 2;
        buf_putc(b, obj ? '{' : '[');
        unsigned n = rnd(4);
        for (unsigned i = 0; i < n; i++) {
            if (i) buf_putc(b, ',');
            buf_puts(b, ws[rnd(sizeof(ws) / sizeof(*ws))]);
            if (obj) {
                buf_puts(b, keys[rnd(sizeof(keys) / sizeof(*keys))]);
                buf_puts(b, ws[rnd(sizeof(ws) / sizeof(*ws))]);
                buf_putc(b, ':');
            }
            buf_puts(b, ws[rnd(sizeof(ws) / sizeof(*ws))]);
            gen(b, depth + 1);
        }
        buf_putc(b, obj ? '}' : ']');
    }
}

/* generated texts, then the same cut short, with a byte changed, or with a
 * byte put in: every one the fast parse takes equals json_loadb's value */
static void test_differential(void **state)
{
    (void)state;
    static const char bytes[] = "{}[],:\" \\-01e.tfnx\n\x80\xff";
    long n_taken = 0, n_valid = 0, n = 0;
    struct buf b;
    buf_init(&b, 1 << 16);
    for (int round = 0; round < 40000; round++) {
        buf_reset(&b);
        gen(&b, 0);
        char text[4096];
        size_t len = b.len < sizeof(text) ? b.len : sizeof(text);
        memcpy(text, b.data, len);
        for (int v = 0; v < 4; v++) {
            char t[4097];
            size_t tl = len;
            memcpy(t, text, len);
            if (v == 1 && len) {
                tl = rnd((unsigned)len);
            } else if (v == 2 && len) {
                t[rnd((unsigned)len)] = bytes[rnd(sizeof(bytes) - 1)];
            } else if (v == 3) {
                size_t at = rnd((unsigned)len + 1);
                memmove(t + at + 1, t + at, len - at);
                t[at] = bytes[rnd(sizeof(bytes) - 1)];
                tl = len + 1;
            }
            json_t *j = json_loadb(t, tl, FLAGS, NULL);
            n_valid += j != NULL;
            json_decref(j);
            n_taken += same_as_jansson(t, tl);
            n++;
        }
    }
    buf_free(&b);
    /* the inputs reach both sides: many taken, many valid but declined */
    assert_true(n_taken > n / 10);
    assert_true(n_valid - n_taken > n / 20);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_common_bodies_taken),
        cmocka_unit_test(test_the_rest_declined),
        cmocka_unit_test(test_depth),
        cmocka_unit_test(test_differential),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
