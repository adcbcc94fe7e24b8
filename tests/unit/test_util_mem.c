/* test_util_mem.c — the request arena: zeroed aligned allocations, big
 * ones in chunks of their own, and arena_reset for per-row reuse (store
 * list functions read each row into one arena emptied after it). */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include "util/mem.h"
#include <string.h>

static void test_alloc_zeroed_aligned(void **state)
{
    struct arena a;
    arena_init(&a);
    for (size_t n = 1; n < 5000; n = n * 3 + 1) {
        unsigned char *p = arena_alloc(&a, n);
        assert_int_equal((uintptr_t)p % 16, 0);
        for (size_t i = 0; i < n; i++)
            assert_int_equal(p[i], 0);
        memset(p, 0xab, n);
    }
    assert_string_equal(arena_strdup(&a, "row"), "row");
    assert_string_equal(arena_strndup(&a, "rowid", 3), "row");
    assert_null(arena_strdup(&a, NULL));
    arena_free(&a);
    assert_null(a.head);
}

static void test_reset_keeps_one_chunk_and_memory_bounded(void **state)
{
    struct arena a;
    arena_init(&a);
    arena_reset(&a); /* empty: nothing to keep */
    assert_null(a.head);
    assert_int_equal(a.total, 0);
    size_t first_total = 0;
    for (int row = 0; row < 200; row++) {
        /* a row: small fields and one megabyte string */
        char *small = arena_alloc(&a, 100);
        char *big = arena_alloc(&a, 1u << 20);
        memset(small, 'a', 99);
        memset(big, 'b', (1u << 20) - 1);
        assert_int_equal(small[0], 'a'); /* the big one did not overlap it */
        assert_true(a.total >= (1u << 20));
        arena_reset(&a);
        if (row == 0) first_total = a.total;
        /* what is kept after a reset is the same every row: no growth */
        assert_int_equal(a.total, first_total);
        assert_true(a.total < (1u << 20));
        /* and it is empty: the next allocation is zeroed */
        unsigned char *p = arena_alloc(&a, 64);
        for (int i = 0; i < 64; i++)
            assert_int_equal(p[i], 0);
        arena_reset(&a);
    }
    arena_free(&a);
}

static void test_str_copy(void **state)
{
    char d[6];
    str_copy(d, sizeof(d), "abc");
    assert_string_equal(d, "abc");
    str_copy(d, sizeof(d), "abcde"); /* exactly fits */
    assert_string_equal(d, "abcde");
    memset(d, 'X', sizeof(d));
    str_copy(d, sizeof(d), "abcdefgh"); /* cut, terminated */
    assert_string_equal(d, "abcde");
    str_copy(d, sizeof(d), "");
    assert_string_equal(d, "");
    str_copy(d, sizeof(d), NULL);
    assert_string_equal(d, "");
    str_copy(d, 1, "xyz");
    assert_string_equal(d, "");
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_alloc_zeroed_aligned),
        cmocka_unit_test(test_reset_keeps_one_chunk_and_memory_bounded),
        cmocka_unit_test(test_str_copy),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
