/* test_core_id.c — typed UUIDv7 IDs: format, time order, validation
 * messages (worded as upstream), and the UUIDv4 helper. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include "core/id.h"
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

static int is_lower_hex(char c)
{
    return (c >= '0' && c <= '9') || (c >= 'a' && c <= 'f');
}

static int hexval(char c)
{
    return c <= '9' ? c - '0' : c - 'a' + 10;
}

/* The 48-bit millisecond timestamp in the first 12 hex digits. */
static uint64_t id_ms(const char *id)
{
    const char *h = id_hex(id);
    uint64_t ms = 0;
    for (int i = 0; i < 12; i++)
        ms = ms << 4 | (uint64_t)hexval(h[i]);
    return ms;
}

static void check_format(const char *prefix, const char *id)
{
    size_t pl = strlen(prefix);
    assert_int_equal(strlen(id), pl + 1 + ID_HEX);
    assert_memory_equal(id, prefix, pl);
    assert_int_equal(id[pl], '_');
    const char *h = id + pl + 1;
    for (int i = 0; i < ID_HEX; i++)
        assert_true(is_lower_hex(h[i]));
    assert_int_equal(h[12], '7');               /* version nibble */
    assert_int_equal(hexval(h[16]) & 0xc, 0x8); /* variant bits 10xx */
}

static void test_new_format(void **state)
{
    static const char *const prefixes[] = {"session", "agent", "harness",
                                           "apikey",  "org",   "principal"};
    for (size_t p = 0; p < sizeof(prefixes) / sizeof(prefixes[0]); p++) {
        for (int i = 0; i < 200; i++) { /* the random nibbles vary; check many */
            char id[ID_MAX];
            id_new(prefixes[p], id);
            check_format(prefixes[p], id);
        }
    }
}

static void test_new_timestamp_is_now(void **state)
{
    uint64_t before = (uint64_t)time(NULL) * 1000;
    char id[ID_MAX];
    id_new("session", id);
    uint64_t after = (uint64_t)time(NULL) * 1000 + 1000;
    uint64_t ms = id_ms(id);
    assert_true(ms + 3000 >= before);
    assert_true(ms <= after + 3000);
}

/* An event ID with its sequence at the end: still a valid UUIDv7 ID of
 * the current time, the last 8 hex digits are the value, the digits before
 * them stay random, and id_tail reads the value back (and refuses a tail
 * that is not 8 lowercase hex digits). */
static void test_new_tail(void **state)
{
    const uint32_t tails[] = {0, 1, 0xabcdef, 0xffffffffu};
    char prev[ID_MAX] = "";
    for (size_t i = 0; i < sizeof(tails) / sizeof(tails[0]); i++) {
        char id[ID_MAX], why[128];
        uint32_t back = 7;
        uint64_t before = (uint64_t)time(NULL) * 1000;
        id_new_tail("event", tails[i], id);
        assert_int_equal(id_check("event", id, why, sizeof(why)), 0);
        assert_int_equal(id[6 + 12], '7');
        assert_true(id_ms(id) + 3000 >= before);
        char want[9];
        snprintf(want, sizeof(want), "%08x", tails[i]);
        assert_string_equal(id + strlen(id) - 8, want);
        assert_int_equal(id_tail(id, &back), 0);
        assert_int_equal(back, tails[i]);
        assert_memory_not_equal(id, prev, 6 + 24); /* random part differs */
        memcpy(prev, id, sizeof(prev));
    }
    uint32_t v = 0;
    assert_int_equal(id_tail("event_0123456789abcdef0123456789ABCDEF", &v), -1);
    assert_int_equal(id_tail("event_0123456789abcdef0123456789abcde-", &v), -1);
    assert_int_equal(id_tail("1234567", &v), -1);
    assert_int_equal(id_tail("x0000002a", &v), 0);
    assert_int_equal(v, 42);
}

/* IDs made one after another never go back in time, and once the
 * millisecond changes the later ID sorts after the earlier one as a plain
 * string (what ORDER BY id relies on). */
static void test_new_sorts_by_time(void **state)
{
    char first[ID_MAX], prev[ID_MAX], cur[ID_MAX];
    id_new("session", first);
    strcpy(prev, first);
    int crossed = 0;
    for (long i = 0; i < 50000000 && !crossed; i++) {
        id_new("session", cur);
        assert_true(id_ms(cur) >= id_ms(prev));
        if (id_ms(cur) > id_ms(prev)) {
            assert_true(strcmp(prev, cur) < 0);
            assert_true(strcmp(first, cur) < 0);
            crossed = 1;
        }
        strcpy(prev, cur);
    }
    assert_true(crossed); /* the clock moved by at least 1 ms */
}

static int cmp_id(const void *a, const void *b)
{
    return strcmp(a, b);
}

static void test_new_unique(void **state)
{
    enum { N = 2000 };
    char(*ids)[ID_MAX] = calloc(N, ID_MAX);
    assert_non_null(ids);
    for (int i = 0; i < N; i++)
        id_new("agent", ids[i]);
    qsort(ids, N, ID_MAX, cmp_id);
    for (int i = 1; i < N; i++)
        assert_string_not_equal(ids[i - 1], ids[i]);
    free(ids);
}

static void test_check_valid(void **state)
{
    char id[ID_MAX], why[128] = "";
    id_new("session", id);
    assert_int_equal(id_check("session", id, why, sizeof(why)), 0);
    assert_int_equal(
        id_check("harness", "harness_01933b5a000070008000000000000602", why, sizeof(why)), 0);
}

static void test_check_wrong_prefix(void **state)
{
    char id[ID_MAX], why[128] = "";
    id_new("agent", id);
    assert_int_equal(id_check("session", id, why, sizeof(why)), -1);
    assert_string_equal(why, "invalid prefix: expected 'session', got 'agent'");

    /* a longer prefix that starts with the expected one */
    assert_int_equal(
        id_check("session", "sessions_01933b5a000070008000000000000602", why, sizeof(why)), -1);
    assert_string_equal(why, "invalid prefix: expected 'session', got 'sessions'");
    /* and a shorter one */
    assert_int_equal(id_check("session", "sess_01933b5a000070008000000000000602", why, sizeof(why)),
                     -1);
    assert_string_equal(why, "invalid prefix: expected 'session', got 'sess'");
}

static void test_check_length(void **state)
{
    char why[128] = "";
    assert_int_equal(
        id_check("session", "session_01933b5a00007000800000000000060", why, sizeof(why)), -1);
    assert_string_equal(why, "invalid length: expected 32, got 31");
    assert_int_equal(
        id_check("session", "session_01933b5a0000700080000000000006020", why, sizeof(why)), -1);
    assert_string_equal(why, "invalid length: expected 32, got 33");
    assert_int_equal(id_check("session", "session_", why, sizeof(why)), -1);
    assert_string_equal(why, "invalid length: expected 32, got 0");
}

static void test_check_uppercase_hex(void **state)
{
    char why[128] = "";
    const char *id = "session_01933B5A000070008000000000000602";
    assert_int_equal(id_check("session", id, why, sizeof(why)), -1);
    assert_string_equal(why, "invalid hex in ID: 01933B5A000070008000000000000602");
    /* not hex at all, in the last position */
    assert_int_equal(
        id_check("session", "session_0193300000007000800000000000060g", why, sizeof(why)), -1);
    assert_string_equal(why, "invalid hex in ID: 0193300000007000800000000000060g");
}

static void test_check_missing_underscore(void **state)
{
    char why[128] = "";
    assert_int_equal(
        id_check("session", "session01933b5a000070008000000000000602", why, sizeof(why)), -1);
    assert_string_equal(why, "invalid prefix: expected 'session', got "
                             "'session01933b5a000070008000000000000602'");
    assert_int_equal(id_check("session", "", why, sizeof(why)), -1);
    assert_string_equal(why, "invalid prefix: expected 'session', got ''");
    /* a bare hex string is not an ID */
    assert_int_equal(id_check("session", "01933b5a000070008000000000000602", why, sizeof(why)), -1);
    assert_true(strncmp(why, "invalid prefix: ", 16) == 0);
}

/* A long garbage value is cut in the message and never overflows why. */
static void test_check_message_bounded(void **state)
{
    char big[300];
    memset(big, 'x', sizeof(big) - 1);
    big[sizeof(big) - 1] = 0;
    char why[160];
    assert_int_equal(id_check("session", big, why, sizeof(why)), -1);
    assert_true(strlen(why) < sizeof(why));
    assert_true(strncmp(why, "invalid prefix: expected 'session', got 'xxxx", 45) == 0);

    char tiny[8];
    assert_int_equal(id_check("session", "agent_x", tiny, sizeof(tiny)), -1);
    assert_int_equal(strlen(tiny), sizeof(tiny) - 1);
}

static void test_hex_and_with_hex(void **state)
{
    char id[ID_MAX], copy[ID_MAX], why[128];
    id_new("session", id);
    const char *h = id_hex(id);
    assert_ptr_equal(h, id + strlen("session_"));
    assert_int_equal(strlen(h), ID_HEX);

    id_with_hex("agent", h, copy);
    assert_int_equal(id_check("agent", copy, why, sizeof(why)), 0);
    assert_string_equal(id_hex(copy), h);
    assert_int_equal(strncmp(copy, "agent_", 6), 0);
}

static void test_uuid_v4(void **state)
{
    char a[37], b[37];
    for (int n = 0; n < 200; n++) {
        uuid_v4_str(a);
        assert_int_equal(strlen(a), 36);
        for (int i = 0; i < 36; i++) {
            if (i == 8 || i == 13 || i == 18 || i == 23)
                assert_int_equal(a[i], '-');
            else
                assert_true(is_lower_hex(a[i]));
        }
        assert_int_equal(a[14], '4');
        assert_int_equal(hexval(a[19]) & 0xc, 0x8);
    }
    uuid_v4_str(b);
    assert_string_not_equal(a, b);
}

static void test_random_hex(void **state)
{
    char out[2 * 100 + 2];
    memset(out, 'X', sizeof(out));
    random_hex(out, 100); /* more than one internal chunk */
    assert_int_equal(strlen(out), 200);
    assert_int_equal(out[201], 'X');
    for (int i = 0; i < 200; i++)
        assert_true(is_lower_hex(out[i]));
    random_hex(out, 0);
    assert_string_equal(out, "");
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_new_format),
        cmocka_unit_test(test_new_timestamp_is_now),
        cmocka_unit_test(test_new_sorts_by_time),
        cmocka_unit_test(test_new_tail),
        cmocka_unit_test(test_new_unique),
        cmocka_unit_test(test_check_valid),
        cmocka_unit_test(test_check_wrong_prefix),
        cmocka_unit_test(test_check_length),
        cmocka_unit_test(test_check_uppercase_hex),
        cmocka_unit_test(test_check_missing_underscore),
        cmocka_unit_test(test_check_message_bounded),
        cmocka_unit_test(test_hex_and_with_hex),
        cmocka_unit_test(test_uuid_v4),
        cmocka_unit_test(test_random_hex),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
