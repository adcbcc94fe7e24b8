/* test_store_walvfs.c — the loopd-wal VFS (src/store/walvfs.c): a commit
 * reaches the file system as one write and one sync, another connection
 * sees every acknowledged commit at once, a transaction that spills its
 * cache into the log reads its own frames back, the log restarts after a
 * checkpoint through the VFS, a sync with nothing written is skipped, and
 * what was written opens intact with the default VFS afterwards. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include "store/sqlite_int.h"
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

static char dir[64], path[128];

static int setup(void **state)
{
    (void)state;
    snprintf(dir, sizeof(dir), "/tmp/loopd-walvfs.XXXXXX");
    if (!mkdtemp(dir)) return -1;
    snprintf(path, sizeof(path), "%s/t.db", dir);
    return walvfs_register() == SQLITE_OK ? 0 : -1;
}

static int teardown(void **state)
{
    (void)state;
    char p[160];
    const char *suffix[] = {"", "-wal", "-shm"};
    for (int i = 0; i < 3; i++) {
        snprintf(p, sizeof(p), "%s%s", path, suffix[i]);
        unlink(p);
    }
    rmdir(dir);
    return 0;
}

static void open_ok(struct conn *c, enum conn_mode mode)
{
    char err[256] = "";
    int rc = conn_open(c, path, mode, err, sizeof(err));
    if (rc) fail_msg("conn_open: %s", err);
}

static long count_rows(struct conn *c)
{
    sqlite3_stmt *st = conn_stmt(c, "SELECT count(*) FROM t");
    assert_non_null(st);
    assert_int_equal(sqlite3_step(st), SQLITE_ROW);
    long n = sqlite3_column_int64(st, 0);
    sqlite3_reset(st);
    return n;
}

static void insert_rows(struct conn *c, int n, int size)
{
    char *v = malloc((size_t)size + 1);
    assert_non_null(v);
    memset(v, 'x', (size_t)size);
    v[size] = 0;
    sqlite3_stmt *st = conn_stmt(c, "INSERT INTO t(v) VALUES(?)");
    assert_non_null(st);
    for (int i = 0; i < n; i++) {
        v[i % size] = (char)('a' + i % 26); /* pages differ from commit to commit */
        sqlite3_bind_text(st, 1, v, size, SQLITE_TRANSIENT);
        assert_int_equal(sqlite3_step(st), SQLITE_DONE);
        sqlite3_reset(st);
    }
    free(v);
}

static void assert_intact(struct conn *c)
{
    sqlite3_stmt *st = conn_stmt(c, "PRAGMA integrity_check");
    assert_non_null(st);
    assert_int_equal(sqlite3_step(st), SQLITE_ROW);
    assert_string_equal((const char *)sqlite3_column_text(st, 0), "ok");
    sqlite3_reset(st);
}

static void test_commit_is_one_write_and_visible(void **state)
{
    (void)state;
    struct conn w, r;
    open_ok(&w, CONN_WRITER);
    assert_int_equal(conn_exec(&w, "CREATE TABLE t(id INTEGER PRIMARY KEY, v TEXT)"), 0);
    open_ok(&r, CONN_RO);
    for (int i = 1; i <= 20; i++) {
        struct walvfs_stats a, b;
        walvfs_get_stats(&a);
        assert_int_equal(conn_exec(&w, "BEGIN IMMEDIATE"), 0);
        insert_rows(&w, 40, 300); /* several pages: 2 writes a page without the VFS */
        assert_int_equal(conn_exec(&w, "COMMIT"), 0);
        walvfs_get_stats(&b);
        assert_int_equal(b.writes - a.writes, 1);
        assert_int_equal(b.syncs - a.syncs, 1);
        /* acknowledged = visible to another connection, at once */
        assert_int_equal(count_rows(&r), 40L * i);
    }
    conn_close(&r);
    conn_close(&w);
}

static void test_spilled_frames_read_back(void **state)
{
    (void)state;
    struct conn w, r;
    open_ok(&w, CONN_WRITER);
    /* a 2-page cache makes the transaction spill frames into the log
     * before it commits and read them back while it goes on */
    assert_int_equal(conn_exec(&w, "PRAGMA cache_size=2"), 0);
    assert_int_equal(conn_exec(&w, "CREATE TABLE t(id INTEGER PRIMARY KEY, v TEXT)"), 0);
    assert_int_equal(conn_exec(&w, "CREATE INDEX t_v ON t(v)"), 0);
    assert_int_equal(conn_exec(&w, "BEGIN IMMEDIATE"), 0);
    insert_rows(&w, 3000, 700);
    assert_int_equal(count_rows(&w), 3000);
    assert_int_equal(conn_exec(&w, "COMMIT"), 0);
    open_ok(&r, CONN_RO);
    assert_int_equal(count_rows(&r), 3000);
    assert_intact(&r);
    assert_intact(&w);
    conn_close(&r);
    conn_close(&w);
}

static void test_big_rows(void **state)
{
    (void)state;
    struct conn w, r;
    open_ok(&w, CONN_WRITER);
    open_ok(&r, CONN_RO);
    assert_int_equal(conn_exec(&w, "CREATE TABLE t(id INTEGER PRIMARY KEY, v TEXT)"), 0);
    /* overflow chains longer than the buffer, alone and after small rows */
    for (int i = 0; i < 3; i++) {
        assert_int_equal(conn_exec(&w, "BEGIN IMMEDIATE"), 0);
        insert_rows(&w, 3, 100);
        insert_rows(&w, 1, 1024 * 1024);
        assert_int_equal(conn_exec(&w, "COMMIT"), 0);
        assert_int_equal(count_rows(&r), 4L * (i + 1));
    }
    assert_intact(&r);
    conn_close(&r);
    conn_close(&w);
}

static void test_restart_and_skipped_sync(void **state)
{
    (void)state;
    struct conn w, ck, r;
    open_ok(&w, CONN_WRITER);
    open_ok(&ck, CONN_WRITER);
    open_ok(&r, CONN_RO);
    assert_int_equal(conn_exec(&w, "CREATE TABLE t(id INTEGER PRIMARY KEY, v TEXT)"), 0);
    long total = 0;
    for (int round = 0; round < 5; round++) {
        for (int i = 0; i < 10; i++) {
            assert_int_equal(conn_exec(&w, "BEGIN IMMEDIATE"), 0);
            insert_rows(&w, 25, 500);
            assert_int_equal(conn_exec(&w, "COMMIT"), 0);
            total += 25;
        }
        /* the checkpointer's handle wrote nothing to the log: its sync of
         * the log before copying is skipped */
        struct walvfs_stats a, b;
        walvfs_get_stats(&a);
        int log = -1, copied = -1;
        assert_int_equal(
            sqlite3_wal_checkpoint_v2(ck.db, NULL, SQLITE_CHECKPOINT_PASSIVE, &log, &copied),
            SQLITE_OK);
        walvfs_get_stats(&b);
        assert_true(log > 0);
        assert_int_equal(copied, log);
        assert_true(b.syncs_skipped > a.syncs_skipped);
        assert_int_equal(b.syncs, a.syncs);
        /* the writer's next commit starts the log over from frame 1 */
        assert_int_equal(conn_exec(&w, "BEGIN IMMEDIATE"), 0);
        insert_rows(&w, 1, 10);
        assert_int_equal(conn_exec(&w, "COMMIT"), 0);
        total += 1;
        assert_int_equal(
            sqlite3_wal_checkpoint_v2(ck.db, NULL, SQLITE_CHECKPOINT_PASSIVE, &log, &copied),
            SQLITE_OK);
        assert_true(log < 10);
        assert_int_equal(count_rows(&r), total);
    }
    conn_close(&r);
    conn_close(&ck);
    conn_close(&w);
    /* what the VFS wrote opens with the default VFS, intact */
    struct conn plain;
    open_ok(&plain, CONN_RW);
    assert_int_equal(count_rows(&plain), total);
    assert_intact(&plain);
    conn_close(&plain);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_commit_is_one_write_and_visible, setup, teardown),
        cmocka_unit_test_setup_teardown(test_spilled_frames_read_back, setup, teardown),
        cmocka_unit_test_setup_teardown(test_big_rows, setup, teardown),
        cmocka_unit_test_setup_teardown(test_restart_and_skipped_sync, setup, teardown),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
