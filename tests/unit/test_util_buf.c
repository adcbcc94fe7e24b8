/* test_util_buf.c — the capped buffer (sticky overflow) and the JSON writer.
 * Every JSON document produced here is also parsed back with jansson. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include "limits.h"
#include "util/buf.h"
#include "util/timeutil.h"
#include <jansson.h>
#include <stdlib.h>
#include <string.h>

/* Parses b's contents as JSON (NULs allowed); fails the test if invalid. */
static json_t *parse(const struct buf *b)
{
    json_error_t err;
    assert_false(b->overflow);
    json_t *j = json_loadb(b->data, b->len, JSON_DECODE_ANY | JSON_ALLOW_NUL, &err);
    if (!j) fail_msg("not JSON (%s): %.*s", err.text, (int)b->len, b->data);
    return j;
}

/* ---- struct buf ---- */

static void test_add_and_terminate(void **state)
{
    struct buf b;
    buf_init(&b, 64);
    assert_int_equal(b.len, 0);
    assert_int_equal(buf_puts(&b, "abc"), 0);
    assert_int_equal(buf_putc(&b, 'd'), 0);
    assert_int_equal(buf_add(&b, "ef\0gh", 5), 0); /* binary-safe */
    assert_int_equal(b.len, 9);
    assert_memory_equal(b.data, "abcdef\0gh", 9);
    assert_int_equal(b.data[9], '\0');
    assert_int_equal(b.overflow, 0);
    buf_free(&b);
    assert_null(b.data);
    assert_int_equal(b.len, 0);
}

static void test_cap_overflow_sticky(void **state)
{
    struct buf b;
    buf_init(&b, 8);
    assert_int_equal(buf_puts(&b, "12345"), 0);
    /* 5 + 4 > 8: refused whole, nothing written */
    assert_int_equal(buf_puts(&b, "6789"), -1);
    assert_int_equal(b.overflow, 1);
    assert_int_equal(b.len, 5);
    assert_string_equal(b.data, "12345");
    /* sticky: even an append that would fit is refused now */
    assert_int_equal(buf_putc(&b, 'x'), -1);
    assert_int_equal(buf_puts(&b, ""), -1);
    assert_int_equal(buf_i64(&b, 1), -1);
    assert_int_equal(buf_printf(&b, "%d", 1), -1);
    assert_int_equal(buf_json_str(&b, "a"), -1);
    assert_int_equal(b.len, 5);
    assert_string_equal(b.data, "12345");
    assert_int_equal(b.overflow, 1);
    /* reset clears the flag and the contents */
    buf_reset(&b);
    assert_int_equal(b.overflow, 0);
    assert_int_equal(b.len, 0);
    assert_string_equal(b.data, "");
    assert_int_equal(buf_puts(&b, "abc"), 0);
    assert_string_equal(b.data, "abc");
    buf_free(&b);
}

static void test_cap_exact_fit(void **state)
{
    struct buf b;
    buf_init(&b, 8);
    assert_int_equal(buf_puts(&b, "1234"), 0);
    assert_int_equal(buf_puts(&b, "5678"), 0); /* exactly cap */
    assert_int_equal(b.len, 8);
    assert_string_equal(b.data, "12345678");
    assert_int_equal(b.overflow, 0);
    assert_int_equal(buf_putc(&b, '9'), -1);
    assert_int_equal(b.overflow, 1);
    assert_int_equal(b.len, 8);
    buf_free(&b);

    /* a single append larger than the cap, on an empty buffer */
    buf_init(&b, 4);
    assert_int_equal(buf_puts(&b, "12345"), -1);
    assert_int_equal(b.overflow, 1);
    assert_int_equal(b.len, 0);
    buf_free(&b);

    /* cap 0 takes nothing but the empty append */
    buf_init(&b, 0);
    assert_int_equal(buf_puts(&b, ""), 0);
    assert_int_equal(buf_putc(&b, 'a'), -1);
    assert_int_equal(b.len, 0);
    buf_free(&b);
}

/* Growing through many reallocations keeps the contents. */
static void test_grow_large(void **state)
{
    struct buf b;
    buf_init(&b, 1 << 20);
    for (int i = 0; i < 10000; i++)
        assert_int_equal(buf_puts(&b, "0123456789"), 0);
    assert_int_equal(b.len, 100000);
    assert_true(b.alloc >= b.len + 1);
    assert_true(b.alloc <= b.cap + 1);
    for (size_t i = 0; i < b.len; i++)
        assert_int_equal(b.data[i], '0' + (char)(i % 10));
    assert_int_equal(b.data[b.len], '\0');
    buf_free(&b);
}

/* Reserving the room a session's JSON is given takes one 4 KiB block, and
 * a rendered session (~2.2 KB) fits in it without another allocation. */
static void test_reserve_session_hint(void **state)
{
    struct buf b;
    buf_init(&b, 1 << 20);
    assert_int_equal(buf_reserve(&b, LD_SESSION_RENDER_HINT), 0);
    assert_int_equal(b.alloc, 4096);
    char *first = b.data;
    for (int i = 0; i < 250; i++)
        assert_int_equal(buf_puts(&b, "0123456789"), 0);
    assert_ptr_equal(b.data, first);
    buf_free(&b);
}

static void test_printf(void **state)
{
    struct buf b;
    buf_init(&b, 4096);
    assert_int_equal(buf_printf(&b, "%s=%d;", "x", 42), 0);
    assert_string_equal(b.data, "x=42;");
    /* longer than the 512-byte stack buffer */
    char big[1500];
    memset(big, 'q', sizeof(big) - 1);
    big[sizeof(big) - 1] = 0;
    assert_int_equal(buf_printf(&b, "[%s]", big), 0);
    assert_int_equal(b.len, 5 + 1501);
    assert_int_equal(b.data[5], '[');
    assert_int_equal(b.data[6], 'q');
    assert_int_equal(b.data[5 + 1499], 'q');
    assert_int_equal(b.data[5 + 1500], ']');
    assert_int_equal(b.data[b.len], '\0');
    assert_int_equal(buf_puts(&b, "!"), 0);
    assert_int_equal(b.data[b.len - 1], '!');
    buf_free(&b);

    /* a long printf over the cap is refused and sets overflow */
    buf_init(&b, 1000);
    assert_int_equal(buf_printf(&b, "%s", big), -1);
    assert_int_equal(b.overflow, 1);
    assert_int_equal(b.len, 0);
    buf_free(&b);
}

static void test_take(void **state)
{
    struct buf b;
    buf_init(&b, 64);
    buf_puts(&b, "hello");
    size_t n = 0;
    char *p = buf_take(&b, &n);
    assert_int_equal(n, 5);
    assert_string_equal(p, "hello");
    assert_null(b.data);
    assert_int_equal(b.len, 0);
    free(p);
    /* the buffer is usable again after a take */
    assert_int_equal(buf_puts(&b, "again"), 0);
    assert_string_equal(b.data, "again");
    buf_free(&b);

    /* an empty buffer gives an empty, freeable string */
    buf_init(&b, 64);
    p = buf_take(&b, &n);
    assert_non_null(p);
    assert_string_equal(p, "");
    assert_int_equal(n, 0);
    free(p);
    buf_free(&b);
}

static void test_i64(void **state)
{
    static const struct {
        int64_t v;
        const char *s;
    } v[] = {
        {0, "0"},
        {7, "7"},
        {-1, "-1"},
        {1234567890, "1234567890"},
        {INT64_MAX, "9223372036854775807"},
        {INT64_MIN, "-9223372036854775808"},
        {INT64_MIN + 1, "-9223372036854775807"},
    };
    for (size_t i = 0; i < sizeof(v) / sizeof(v[0]); i++) {
        struct buf b;
        buf_init(&b, 64);
        assert_int_equal(buf_i64(&b, v[i].v), 0);
        assert_string_equal(b.data, v[i].s);
        json_t *j = parse(&b);
        assert_true(json_is_integer(j));
        assert_true(json_integer_value(j) == v[i].v);
        json_decref(j);
        buf_free(&b);
    }
}

/* ---- JSON strings ---- */

static void check_json_str(const char *in, const char *want)
{
    struct buf b;
    buf_init(&b, 1024);
    assert_int_equal(buf_json_str(&b, in), 0);
    assert_string_equal(b.data, want);
    json_t *j = parse(&b);
    assert_true(json_is_string(j));
    assert_string_equal(json_string_value(j), in);
    json_decref(j);
    buf_free(&b);
}

static void test_json_str_escapes(void **state)
{
    check_json_str("", "\"\"");
    check_json_str("plain", "\"plain\"");
    check_json_str("a\"b", "\"a\\\"b\"");
    check_json_str("a\\b", "\"a\\\\b\"");
    check_json_str("line\nnext", "\"line\\nnext\"");
    check_json_str("tab\there", "\"tab\\there\"");
    check_json_str("\r\b\f", "\"\\r\\b\\f\"");
    check_json_str("\x01", "\"\\u0001\"");
    check_json_str("x\x1fy", "\"x\\u001fy\"");
    check_json_str("\x7f", "\"\x7f\""); /* DEL needs no escape */
    check_json_str("/", "\"/\"");
    check_json_str("\"\\\n\t\x01", "\"\\\"\\\\\\n\\t\\u0001\"");
}

static void test_json_str_utf8_unchanged(void **state)
{
    /* 2-, 3- and 4-byte sequences pass through byte for byte */
    const char *s = "h\xc3\xa9llo \xe2\x9c\x93 \xf0\x9f\x98\x80 \xd0\xbf\xd1\x80\xd0\xb8";
    struct buf b;
    buf_init(&b, 1024);
    assert_int_equal(buf_json_str(&b, s), 0);
    assert_int_equal(b.len, strlen(s) + 2);
    assert_memory_equal(b.data + 1, s, strlen(s));
    json_t *j = parse(&b);
    assert_string_equal(json_string_value(j), s);
    json_decref(j);
    buf_free(&b);
}

static void test_json_strn_nul(void **state)
{
    struct buf b;
    buf_init(&b, 64);
    assert_int_equal(buf_json_strn(&b, "a\0b", 3), 0);
    assert_string_equal(b.data, "\"a\\u0000b\"");
    json_t *j = parse(&b);
    assert_int_equal(json_string_length(j), 3);
    assert_memory_equal(json_string_value(j), "a\0b", 3);
    json_decref(j);
    /* only n bytes are read */
    buf_reset(&b);
    assert_int_equal(buf_json_strn(&b, "abcdef", 2), 0);
    assert_string_equal(b.data, "\"ab\"");
    buf_free(&b);
}

/* Escapes that grow the string past the cap end in overflow, not in a
 * buffer overrun. */
/* Reference escaper, one byte at a time, for comparison with the writer
 * (which skips eight bytes at a time). */
static void ref_escape(const unsigned char *s, size_t n, char *out)
{
    char *o = out;
    *o++ = '"';
    for (size_t i = 0; i < n; i++) {
        unsigned char c = s[i];
        if (c == '"' || c == '\\') {
            *o++ = '\\';
            *o++ = (char)c;
        } else if (c == '\n') {
            o += sprintf(o, "\\n");
        } else if (c == '\r') {
            o += sprintf(o, "\\r");
        } else if (c == '\t') {
            o += sprintf(o, "\\t");
        } else if (c == '\b') {
            o += sprintf(o, "\\b");
        } else if (c == '\f') {
            o += sprintf(o, "\\f");
        } else if (c < 0x20) {
            o += sprintf(o, "\\u%04x", c);
        } else {
            *o++ = (char)c;
        }
    }
    *o++ = '"';
    *o = 0;
}

/* Every byte that needs escaping, at every offset of long strings of plain
 * ASCII and of UTF-8, comes out as the byte-at-a-time escaper writes it. */
static void test_json_strn_every_offset(void **state)
{
    (void)state;
    static const unsigned char specials[] = {'"',  '\\', '\n', 0x01, 0x1f,
                                             0x00, '\t', 0x7f, 0x80, 0xff};
    unsigned char in[40];
    char want[40 * 6 + 3];
    for (size_t sp = 0; sp < sizeof(specials); sp++)
        for (size_t len = 1; len <= sizeof(in); len++)
            for (size_t at = 0; at < len; at++) {
                for (size_t i = 0; i < len; i++)
                    in[i] = (unsigned char)(i % 3 == 0 ? 0xc3 : 'a' + i % 26);
                in[at] = specials[sp];
                struct buf b;
                buf_init(&b, 1024);
                assert_int_equal(buf_json_strn(&b, (const char *)in, len), 0);
                ref_escape(in, len, want);
                assert_string_equal(b.data, want);
                buf_free(&b);
            }
}

static void test_utf8_valid(void **state)
{
    (void)state;
    static const struct {
        const char *s;
        int ok;
    } v[] = {
        {"", 1},
        {"plain ascii", 1},
        {"\xc3\xa9", 1},         /* é */
        {"\xe2\x82\xac", 1},     /* € */
        {"\xf0\x9f\x98\x80", 1}, /* U+1F600 */
        {"\xf4\x8f\xbf\xbf", 1}, /* U+10FFFF */
        {"\xff", 0},             /* never a UTF-8 byte */
        {"\x80", 0},             /* a continuation alone */
        {"\xc3", 0},             /* truncated */
        {"\xc0\xaf", 0},         /* overlong '/' */
        {"\xe0\x80\xaf", 0},     /* overlong */
        {"\xed\xa0\x80", 0},     /* surrogate U+D800 */
        {"\xf4\x90\x80\x80", 0}, /* past U+10FFFF */
        {"\xf5\x80\x80\x80", 0}, /* past U+10FFFF */
        {"ok \xe2\x82", 0},      /* truncated at the end */
        {"\xe2\x28\xa1", 0},     /* bad continuation */
    };
    for (size_t i = 0; i < sizeof(v) / sizeof(v[0]); i++)
        if (utf8_valid(v[i].s, strlen(v[i].s)) != v[i].ok)
            fail_msg("utf8_valid case %zu: want %d", i, v[i].ok);
}

/* utf8_scrub keeps valid text byte for byte, replaces exactly the bytes
 * that start no valid sequence, and always leaves valid UTF-8 */
static void test_utf8_scrub(void **state)
{
    (void)state;
    static const struct {
        const char *in, *out;
        size_t n;
    } v[] = {
        {"", "", 0},
        {"Content-Length 12", "Content-Length 12", 0},
        {"caf\xc3\xa9 \xe2\x82\xac \xf0\x9f\x98\x80", "caf\xc3\xa9 \xe2\x82\xac \xf0\x9f\x98\x80",
         0},
        {"got '13\x86'", "got '13?'", 1},
        {"\xff\xfe", "??", 2},
        {"cut \xe2\x82", "cut ??", 2}, /* a sequence cut short, as at a limit */
        {"\xed\xa0\x80!",
         "???"
         "!",
         3},                              /* surrogate */
        {"\xc0\xaf", "??", 2},            /* overlong */
        {"a\tb\r\nc", "a b  c", 3},       /* control bytes: one line */
        {"\xc3\xc3\xa9", "?\xc3\xa9", 1}, /* a lead byte before a whole sequence */
    };
    for (size_t i = 0; i < sizeof(v) / sizeof(v[0]); i++) {
        char s[64];
        snprintf(s, sizeof(s), "%s", v[i].in);
        size_t n = utf8_scrub(s);
        if (strcmp(s, v[i].out) != 0 || n != v[i].n)
            fail_msg("utf8_scrub case %zu: got '%s' (%zu replaced)", i, s, n);
    }
    /* every two-byte string comes out valid and of the same length */
    for (unsigned a = 1; a < 256; a++)
        for (unsigned b = 1; b < 256; b++) {
            char s[3] = {(char)a, (char)b, 0};
            utf8_scrub(s);
            assert_int_equal(strlen(s), 2);
            assert_true(utf8_valid(s, 2));
            assert_true((unsigned char)s[0] >= 0x20 && (unsigned char)s[1] >= 0x20);
        }
}

static void test_json_str_escape_overflow(void **state)
{
    struct buf b;
    buf_init(&b, 16);
    assert_int_equal(buf_json_str(&b, "\x01\x01\x01\x01\x01"), -1); /* needs 32 */
    assert_int_equal(b.overflow, 1);
    assert_true(b.len <= b.cap);
    buf_free(&b);
}

/* ---- the writer ---- */

static void test_jw_nested_commas(void **state)
{
    struct buf b;
    struct jw w;
    buf_init(&b, 4096);
    jw_init(&w, &b);
    jw_obj(&w);
    jw_ki64(&w, "a", 1);
    jw_key(&w, "b");
    jw_arr(&w);
    jw_i64(&w, 1);
    jw_str(&w, "x");
    jw_obj(&w);
    jw_kbool(&w, "c", 1);
    jw_end(&w);
    jw_arr(&w);
    jw_end(&w);
    jw_null(&w);
    jw_end(&w);
    jw_key(&w, "d");
    jw_obj(&w);
    jw_end(&w);
    jw_key(&w, "e");
    jw_null(&w);
    jw_key(&w, "f");
    jw_obj(&w);
    jw_kbool(&w, "g", 0);
    jw_kraw(&w, "h", "[1,2]");
    jw_end(&w);
    jw_kstr(&w, "i", NULL); /* NULL string is written as "" */
    jw_end(&w);
    assert_string_equal(b.data, "{\"a\":1,\"b\":[1,\"x\",{\"c\":true},[],null],\"d\":{},\"e\":null,"
                                "\"f\":{\"g\":false,\"h\":[1,2]},\"i\":\"\"}");
    json_t *j = parse(&b);
    assert_int_equal(json_integer_value(json_object_get(j, "a")), 1);
    json_t *arr = json_object_get(j, "b");
    assert_int_equal(json_array_size(arr), 5);
    assert_string_equal(json_string_value(json_array_get(arr, 1)), "x");
    assert_true(json_is_true(json_object_get(json_array_get(arr, 2), "c")));
    assert_true(json_is_null(json_object_get(j, "e")));
    assert_true(json_is_false(json_object_get(json_object_get(j, "f"), "g")));
    json_decref(j);
    buf_free(&b);
}

/* keys are written in one copy unless they need escaping; both ways
 * respect the cap (the buffer's overflow flag is sticky) */
static void test_jw_key_escaped_and_capped(void **state)
{
    struct buf b;
    struct jw w;
    buf_init(&b, 4096);
    jw_init(&w, &b);
    jw_obj(&w);
    jw_ki64(&w, "plain", 1);
    jw_ki64(&w, "q\"u\\o\n", 2);
    jw_end(&w);
    assert_string_equal(b.data, "{\"plain\":1,\"q\\\"u\\\\o\\n\":2}");
    json_t *j = parse(&b);
    assert_int_equal(json_integer_value(json_object_get(j, "q\"u\\o\n")), 2);
    json_decref(j);
    buf_free(&b);
    for (size_t cap = 0; cap < 16; cap++) {
        buf_init(&b, cap);
        jw_init(&w, &b);
        jw_obj(&w);
        jw_ki64(&w, "abcdef", 7);
        jw_end(&w);
        if (cap >= strlen("{\"abcdef\":7}")) {
            assert_false(b.overflow);
            assert_string_equal(b.data, "{\"abcdef\":7}");
        } else {
            assert_true(b.overflow);
            assert_true(b.len <= cap);
        }
        buf_free(&b);
    }
}

static void test_jw_top_level_array(void **state)
{
    struct buf b;
    struct jw w;
    buf_init(&b, 4096);
    jw_init(&w, &b);
    jw_arr(&w);
    for (int i = 0; i < 3; i++) {
        jw_obj(&w);
        jw_ki64(&w, "i", i);
        jw_end(&w);
    }
    jw_raw(&w, "{\"r\":true}");
    jw_bool(&w, 0);
    jw_end(&w);
    assert_string_equal(b.data, "[{\"i\":0},{\"i\":1},{\"i\":2},{\"r\":true},false]");
    json_t *j = parse(&b);
    assert_int_equal(json_array_size(j), 5);
    assert_int_equal(json_integer_value(json_object_get(json_array_get(j, 2), "i")), 2);
    json_decref(j);
    buf_free(&b);
}

static void test_jw_deep_nesting(void **state)
{
    struct buf b;
    struct jw w;
    buf_init(&b, 4096);
    jw_init(&w, &b);
    jw_obj(&w);
    for (int i = 0; i < 20; i++) {
        jw_key(&w, "k");
        jw_obj(&w);
        jw_ki64(&w, "n", i);
    }
    for (int i = 0; i < 20; i++) {
        jw_end(&w);
        jw_kbool(&w, "after", 1); /* a member after a closed child needs a comma */
    }
    jw_end(&w);
    json_t *j = parse(&b);
    json_t *o = j;
    for (int i = 0; i < 20; i++) {
        assert_true(json_is_true(json_object_get(o, "after")));
        o = json_object_get(o, "k");
        assert_int_equal(json_integer_value(json_object_get(o, "n")), i);
    }
    json_decref(j);
    buf_free(&b);
}

static void test_jw_members(void **state)
{
    struct buf b;
    struct jw w;
    buf_init(&b, 4096);
    jw_init(&w, &b);
    jw_obj(&w);
    jw_members(&w, "{\"a\":1}"); /* as the first member */
    jw_members(&w, "{}");        /* nothing, and no stray comma */
    jw_kstr(&w, "b", "x");
    jw_members(&w, "{\"c\":[1],\"d\":{\"e\":null}}");
    jw_members(&w, "{}");
    jw_members(&w, "not an object"); /* ignored */
    jw_members(&w, "");
    jw_ki64(&w, "f", 2);
    jw_end(&w);
    assert_string_equal(b.data, "{\"a\":1,\"b\":\"x\",\"c\":[1],\"d\":{\"e\":null},\"f\":2}");
    json_t *j = parse(&b);
    assert_int_equal(json_object_size(j), 5);
    json_decref(j);
    buf_free(&b);

    /* an object whose only splice is {} stays {} */
    buf_init(&b, 64);
    jw_init(&w, &b);
    jw_obj(&w);
    jw_members(&w, "{}");
    jw_end(&w);
    assert_string_equal(b.data, "{}");
    buf_free(&b);
}

static void test_jw_kstr_opt(void **state)
{
    struct buf b;
    struct jw w;
    buf_init(&b, 4096);
    jw_init(&w, &b);
    jw_obj(&w);
    jw_kstr_opt(&w, "none", NULL);
    jw_kstr_opt(&w, "empty", "");
    jw_kstr_opt(&w, "x", "v");
    jw_kstr_opt(&w, "none2", NULL);
    jw_kstr_opt(&w, "y", "w\"q");
    jw_end(&w);
    assert_string_equal(b.data, "{\"x\":\"v\",\"y\":\"w\\\"q\"}");
    json_t *j = parse(&b);
    assert_null(json_object_get(j, "none"));
    assert_null(json_object_get(j, "empty"));
    assert_string_equal(json_string_value(json_object_get(j, "y")), "w\"q");
    json_decref(j);
    buf_free(&b);
}

static void test_jw_keys_escaped(void **state)
{
    struct buf b;
    struct jw w;
    buf_init(&b, 4096);
    jw_init(&w, &b);
    jw_obj(&w);
    jw_kstr(&w, "k\"\n", "v");
    jw_end(&w);
    json_t *j = parse(&b);
    assert_string_equal(json_string_value(json_object_get(j, "k\"\n")), "v");
    json_decref(j);
    buf_free(&b);
}

static void test_jw_ktime(void **state)
{
    struct buf b;
    struct jw w;
    buf_init(&b, 4096);
    jw_init(&w, &b);
    jw_obj(&w);
    jw_ktime(&w, "created_at", INT64_C(1779895440123456));
    jw_end(&w);
    assert_string_equal(b.data, "{\"created_at\":\"2026-05-27T15:24:00.123456Z\"}");
    json_t *j = parse(&b);
    int64_t us = 0;
    assert_int_equal(time_parse(json_string_value(json_object_get(j, "created_at")), &us), 0);
    assert_true(us == INT64_C(1779895440123456));
    json_decref(j);
    buf_free(&b);
}

/* Members with nothing to escape are written in one copy, the others
 * through the escaping path: the bytes are the same either way, commas
 * included, whatever the lengths around the 8-byte steps. */
static void test_jw_kstr_plain_and_escaped(void **state)
{
    struct buf b;
    struct jw w;
    buf_init(&b, 4096);
    jw_init(&w, &b);
    jw_obj(&w);
    jw_kstr(&w, "id", "session_0123456789abcdef0123456789abcdef");
    jw_kstr(&w, "t", "tab\there");
    jw_kstr(&w, "eight_ch", "12345678");
    jw_kstr(&w, "q", "ends with a quote\"");
    jw_kstr(&w, "", "");
    jw_kstr(&w, "k\\", "v");
    jw_kstr(&w, "u", "\xc3\xa9t\xc3\xa9");
    jw_end(&w);
    assert_string_equal(b.data, "{\"id\":\"session_0123456789abcdef0123456789abcdef\","
                                "\"t\":\"tab\\there\",\"eight_ch\":\"12345678\","
                                "\"q\":\"ends with a quote\\\"\",\"\":\"\",\"k\\\\\":\"v\","
                                "\"u\":\"\xc3\xa9t\xc3\xa9\"}");
    buf_free(&b);
}

/* Whatever the length (around the 8- and 16-byte steps) and wherever a
 * byte that needs escaping sits, jw_kstr writes what the escaping path
 * writes: buf_json_str's string after the key. */
static void test_jw_kstr_every_length_and_position(void **state)
{
    static const unsigned char odd[] = {'"', '\\', '\n', 0x01, 0x1f, 0x20, 0x7f, 0x80, 0xff};
    char s[48];
    for (size_t n = 0; n < sizeof(s); n++) {
        for (size_t pos = 0; pos <= n; pos++) {
            for (size_t k = 0; k < sizeof(odd); k++) {
                memset(s, 'a', n);
                s[n] = 0;
                if (pos < n) s[pos] = (char)odd[k];
                struct buf got, want;
                struct jw w;
                buf_init(&got, 4096);
                buf_init(&want, 4096);
                jw_init(&w, &got);
                jw_obj(&w);
                jw_kstr(&w, "k", s);
                jw_end(&w);
                buf_puts(&want, "{\"k\":");
                buf_json_strn(&want, s, n);
                buf_putc(&want, '}');
                assert_string_equal(got.data, want.data);
                buf_free(&got);
                buf_free(&want);
                if (pos == n) break; /* no odd byte: one case is enough */
            }
        }
    }
}

/* One copy or not, a member that does not fit sets overflow and leaves
 * the buffer no longer than its cap; one that fits exactly is written. */
static void test_jw_kstr_at_the_cap(void **state)
{
    struct buf b;
    struct jw w;
    buf_init(&b, 10); /* {"k":"vv" is 9 bytes, the closing brace the 10th */
    jw_init(&w, &b);
    jw_obj(&w);
    jw_kstr(&w, "k", "vv");
    jw_end(&w);
    assert_int_equal(b.overflow, 0);
    assert_string_equal(b.data, "{\"k\":\"vv\"}");
    buf_free(&b);
    buf_init(&b, 9);
    jw_init(&w, &b);
    jw_obj(&w);
    jw_kstr(&w, "k", "vvv");
    assert_int_equal(b.overflow, 1);
    assert_true(b.len <= 9);
    buf_free(&b);
}

/* A writer on a small buffer reports overflow instead of writing past it. */
static void test_jw_overflow(void **state)
{
    struct buf b;
    struct jw w;
    buf_init(&b, 16);
    jw_init(&w, &b);
    jw_obj(&w);
    jw_kstr(&w, "key", "a value that is far too long");
    jw_end(&w);
    assert_int_equal(b.overflow, 1);
    assert_true(b.len <= 16);
    buf_free(&b);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_add_and_terminate),
        cmocka_unit_test(test_cap_overflow_sticky),
        cmocka_unit_test(test_cap_exact_fit),
        cmocka_unit_test(test_grow_large),
        cmocka_unit_test(test_reserve_session_hint),
        cmocka_unit_test(test_printf),
        cmocka_unit_test(test_take),
        cmocka_unit_test(test_i64),
        cmocka_unit_test(test_json_str_escapes),
        cmocka_unit_test(test_json_str_utf8_unchanged),
        cmocka_unit_test(test_json_strn_nul),
        cmocka_unit_test(test_json_strn_every_offset),
        cmocka_unit_test(test_utf8_valid),
        cmocka_unit_test(test_utf8_scrub),
        cmocka_unit_test(test_json_str_escape_overflow),
        cmocka_unit_test(test_jw_nested_commas),
        cmocka_unit_test(test_jw_key_escaped_and_capped),
        cmocka_unit_test(test_jw_top_level_array),
        cmocka_unit_test(test_jw_deep_nesting),
        cmocka_unit_test(test_jw_members),
        cmocka_unit_test(test_jw_kstr_opt),
        cmocka_unit_test(test_jw_keys_escaped),
        cmocka_unit_test(test_jw_ktime),
        cmocka_unit_test(test_jw_overflow),
        cmocka_unit_test(test_jw_kstr_plain_and_escaped),
        cmocka_unit_test(test_jw_kstr_at_the_cap),
        cmocka_unit_test(test_jw_kstr_every_length_and_position),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
