/* test_store_authcache.c — the cache of verified API keys
 * (src/store/authcache.c): a key put under the current epoch is found
 * again; another key (one byte apart, or a prefix) or another X-Org-Id
 * is not; a bump through another
 * mapping of the same data dir (as `loopd keys revoke`, another process,
 * does) voids every entry; an entry verified under an older epoch is never
 * trusted; two keys of one set both stay; without a usable data dir
 * there is no cache and every lookup misses. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include "store/sqlite_int.h"
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

static char dir[64];

static int setup(void **state)
{
    (void)state;
    snprintf(dir, sizeof(dir), "/tmp/loopd-authcache.XXXXXX");
    return mkdtemp(dir) ? 0 : -1;
}

static int teardown(void **state)
{
    (void)state;
    char p[128];
    snprintf(p, sizeof(p), "%s/auth.epoch", dir);
    unlink(p);
    rmdir(dir);
    return 0;
}

static void principal(struct principal *p, const char *org)
{
    memset(p, 0, sizeof(*p));
    str_copy(p->org_id, sizeof(p->org_id), org);
    str_copy(p->user_id, sizeof(p->user_id), "00000000-0000-0000-0000-000000000001");
    str_copy(p->principal_id, sizeof(p->principal_id), "principal_1");
    p->is_admin = 1;
}

static void test_put_get_and_revocation_by_another_mapping(void **state)
{
    (void)state;
    struct authcache *server = authcache_open(dir), *cli = authcache_open(dir);
    assert_non_null(server);
    assert_non_null(cli);
    const char *hash = "evr_pat_0123456789abcdef0123456789abcdef0123456789abcdef";
    const char *other = "evr_pat_0123456789abcdef0123456789abcdef0123456789abcdee";
    struct principal p, got;
    principal(&p, "org_a");

    assert_int_equal(authcache_get(server, hash, NULL, &got), 0); /* empty */
    uint64_t e = authcache_epoch(server);
    authcache_put(server, hash, NULL, &p, e);
    assert_int_equal(authcache_get(server, hash, NULL, &got), 1);
    assert_string_equal(got.org_id, "org_a");
    assert_string_equal(got.principal_id, "principal_1");
    /* keyed by the X-Org-Id asked for too, and by the whole key */
    assert_int_equal(authcache_get(server, hash, "org_a", &got), 0);
    assert_int_equal(authcache_get(server, "evr_pat_0123456789abcdef", NULL, &got), 0);
    assert_int_equal(authcache_get(server, "", NULL, &got), 0);
    assert_int_equal(authcache_get(server, other, NULL, &got), 0);
    authcache_put(server, hash, "org_a", &p, e);
    assert_int_equal(authcache_get(server, hash, "org_a", &got), 1);
    /* one key with and without X-Org-Id: two entries, neither evicts the other */
    assert_int_equal(authcache_get(server, hash, NULL, &got), 1);

    /* another process's bump (its own mapping of the file) voids them all */
    authcache_bump(cli);
    assert_int_equal(authcache_epoch(server), e + 1);
    assert_int_equal(authcache_get(server, hash, NULL, &got), 0);
    assert_int_equal(authcache_get(server, hash, "org_a", &got), 0);

    /* verified before the bump (older epoch): never trusted after it */
    authcache_put(server, hash, NULL, &p, e);
    assert_int_equal(authcache_get(server, hash, NULL, &got), 0);
    authcache_put(server, hash, NULL, &p, authcache_epoch(server));
    assert_int_equal(authcache_get(server, hash, NULL, &got), 1);
    authcache_close(cli);
    authcache_close(server);

    /* the epoch is kept in the data dir: a later opener continues from it */
    struct authcache *again = authcache_open(dir);
    assert_non_null(again);
    assert_int_equal(authcache_epoch(again), e + 1);
    authcache_close(again);
}

/* Keys that share a set both stay (one asked for with X-Org-Id, one
 * without); a third makes room by dropping the one used longest ago. */
static void test_a_set_keeps_two(void **state)
{
    (void)state;
    struct authcache *ac = authcache_open(dir);
    assert_non_null(ac);
    const char *one = "evr_pat_set_one";
    int set = authcache_set_of(ac, one, NULL);
    /* tokens tried until two more land in that set (1 in 128 each) */
    char two[64] = "", three[64] = "", t[64];
    for (int i = 0; i < 100000 && !(two[0] && three[0]); i++) {
        snprintf(t, sizeof(t), "evr_pat_set_%d", i);
        if (!two[0] && authcache_set_of(ac, t, "org_b") == set)
            snprintf(two, sizeof(two), "%s", t);
        else if (!three[0] && authcache_set_of(ac, t, NULL) == set)
            snprintf(three, sizeof(three), "%s", t);
    }
    assert_true(two[0] && three[0]);
    struct principal a, b, got;
    principal(&a, "org_a");
    principal(&b, "org_b");
    uint64_t e = authcache_epoch(ac);
    authcache_put(ac, one, NULL, &a, e);
    authcache_put(ac, two, "org_b", &b, e);
    for (int round = 0; round < 3; round++) { /* asked in turn: both found */
        assert_int_equal(authcache_get(ac, one, NULL, &got), 1);
        assert_string_equal(got.org_id, "org_a");
        assert_int_equal(authcache_get(ac, two, "org_b", &got), 1);
        assert_string_equal(got.org_id, "org_b");
    }
    /* `one` was used longest ago: the third key takes its entry */
    authcache_put(ac, three, NULL, &a, e);
    assert_int_equal(authcache_get(ac, one, NULL, &got), 0);
    assert_int_equal(authcache_get(ac, two, "org_b", &got), 1);
    assert_int_equal(authcache_get(ac, three, NULL, &got), 1);
    /* put again for a key it holds: its own entry, not the other's */
    authcache_put(ac, three, NULL, &b, e);
    assert_int_equal(authcache_get(ac, two, "org_b", &got), 1);
    assert_int_equal(authcache_get(ac, three, NULL, &got), 1);
    assert_string_equal(got.org_id, "org_b");
    authcache_close(ac);
}

static void test_no_data_dir_means_no_cache(void **state)
{
    (void)state;
    struct authcache *ac = authcache_open("/nonexistent/loopd-authcache");
    assert_null(ac);
    const char *hash = "evr_pat_one";
    struct principal p, got;
    principal(&p, "org_a");
    authcache_put(ac, hash, NULL, &p, authcache_epoch(ac)); /* no-ops, no crash */
    authcache_bump(ac);
    assert_int_equal(authcache_get(ac, hash, NULL, &got), 0);
    authcache_close(ac);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_put_get_and_revocation_by_another_mapping),
        cmocka_unit_test(test_a_set_keeps_two),
        cmocka_unit_test(test_no_data_dir_means_no_cache),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}
