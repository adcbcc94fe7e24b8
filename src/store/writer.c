/*
 * writer.c — the writer thread: the only writer of the database in this
 * process.
 *
 * DESIGN
 *  - The loop hands ops in through a FIFO bounded by --max-pending-writes
 *    (LD_WRITER_QUEUE_MAX by default); past it writer_submit() answers
 *    LD_E_UNAVAILABLE (the API says 503) and counts the refusal.
 *    What one loop iteration submits reaches the FIFO at the iteration's
 *    end, all at once (writer_release): woken by the first op of a burst,
 *    the thread would commit it alone and make the rest of the burst wait
 *    for that commit's fsync (a tenth of all batches were of one op).
 *  - The thread takes everything queued (at most LD_WRITER_BATCH_MAX) and
 *    runs it in ONE transaction: BEGIN IMMEDIATE, then each op inside its
 *    own SAVEPOINT (a failing op is rolled back alone and reports its
 *    error), then COMMIT.  With synchronous=FULL the commit returns after
 *    the WAL is fsynced, so every op of the batch is durable at once: group
 *    commit.  While one batch syncs, the next accumulates.  The session
 *    counts the batch's new sessions add are upserted once per batch,
 *    just before COMMIT (ops.c, "Session counts").
 *  - If those counts or COMMIT fail, every op of the batch reports LD_E_STORAGE: none of
 *    them is acknowledged.
 *  - Finished ops go to a done list in FIFO order and the loop is woken
 *    through an eventfd; their `done` callbacks run on the loop thread
 *    (writer_drain), never here.
 *  - Checkpoints do not run on the commit path: the writer connection has
 *    wal_autocheckpoint off, and a checkpointer thread with its own
 *    connection copies the WAL back into the database (PASSIVE, so it never
 *    blocks the writer) every WAL_CHECKPOINT_COMMITS commits, or every
 *    CHECKPOINT_EVERY_MS.  The log starts over when the writer, past
 *    WAL_RESET_FRAMES, closes the short gap itself (wal_catch_up).
 *  - The queue, the done list and the metrics are the only state shared by
 *    the threads, all under `mu`.
 */
#include "limits.h"
#include "store/sqlite_int.h"
#include "util/timeutil.h"
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <fcntl.h>
#include <sys/eventfd.h>
#include <sys/stat.h>
#include <unistd.h>

/* The checkpointer's sync of the database and a commit's sync of the log
 * share the disk: a commit that syncs while a checkpoint run syncs waits
 * for the run's pages too, so the fewer pages a run syncs, the shorter the
 * slow commits.  100 sessions at 1,000 turns/s (per-batch timestamps, 4
 * alternating rounds, rounds where the VM stood still left out): a run
 * every 32 commits, slow commits p90 3.6-4.0 ms, turn p99 5.1-9.9 ms;
 * every 16, 2.1-2.5 ms and 3.1-4.5 ms at the same CPU; every 8, 1.3-2.0
 * ms and 3.1-3.4 ms for ~5 % more CPU.  Saturating POSTs did the same at
 * 8, 16 and 32 within the noise. */
#define WAL_CHECKPOINT_COMMITS 16
#define CHECKPOINT_EVERY_MS 1000
#define WAL_RESET_FRAMES 4096 /* 16 MiB of 4 KiB pages */
#define WAL_HARD_FRAMES (16 * WAL_RESET_FRAMES)
#define WAL_TAIL_FRAMES 64 /* what the writer copies itself when it restarts the log */

struct writer {
    pthread_t th, ckpt_th;
    pthread_cond_t ckpt_cv; /* wakes the checkpointer */
    long commits_since_ckpt;
    char path[600];
    pthread_mutex_t mu;
    pthread_cond_t cv;   /* signalled when ops are queued or on stop */
    pthread_cond_t idle; /* signalled when the queue is empty and no batch runs */
    struct store_op *head, *tail;
    long queued;
    long queue_max; /* ops queued at most (writer_submit); loop thread only */
    int running;    /* a batch is in progress */
    struct store_op *done_head, *done_tail;
    int closing, stop;
    int efd;
    struct conn c;
    struct store_metrics m;
    /* ops submitted during the loop's current iteration, handed over at
     * its end (writer_release): loop thread only */
    struct store_op *staged, *staged_tail;
    long nstaged;
    int wal_frames; /* writer thread only */
    /* the restart handshake (see wal_catch_up), under `mu` but ckpt_want */
    int ckpt_force;    /* the writer wants a checkpoint now */
    long ckpt_started; /* checkpointer runs begun */
    long ckpt_done;    /* ... and finished */
    int ckpt_copied;   /* frames the last finished run left copied */
    long ckpt_want;    /* the run the writer waits for (0: none; writer thread only) */
};

/* wrote: -1 the commit failed, 1 it wrote something, 0 nothing to write */
static void finish_batch(struct writer *w, struct store_op *batch, struct store_op *last, int n,
                         int64_t us, int wrote)
{
    pthread_mutex_lock(&w->mu);
    if (wrote) w->m.write_failing = wrote < 0;
    if (w->done_tail)
        w->done_tail->next = batch;
    else
        w->done_head = batch;
    w->done_tail = last;
    w->running = 0;
    w->m.commits++;
    w->m.ops += (uint64_t)n;
    w->m.commit_us_total += (uint64_t)us;
    w->m.statements = w->c.nstmt;
    static const int bounds[STORE_BATCH_BUCKETS - 1] = {1, 2, 4, 8, 16, 64, 256};
    int b = 0;
    while (b < STORE_BATCH_BUCKETS - 1 && n > bounds[b])
        b++;
    w->m.batch_hist[b]++;
    if (!w->head) pthread_cond_broadcast(&w->idle);
    if (++w->commits_since_ckpt >= WAL_CHECKPOINT_COMMITS) pthread_cond_signal(&w->ckpt_cv);
    pthread_mutex_unlock(&w->mu);
    uint64_t one = 1;
    ssize_t r = write(w->efd, &one, sizeof(one));
    (void)r;
}

static void *checkpointer_main(void *arg)
{
    struct writer *w = arg;
    struct conn c;
    char err[256];
    if (conn_open(&c, w->path, CONN_WRITER, err, sizeof(err))) {
        fprintf(stderr, "level=error msg=\"checkpointer: %s\"\n", err);
        return NULL;
    }
    conn_exec(&c, "PRAGMA wal_autocheckpoint=0");
    sqlite3_busy_timeout(c.db, 2000);
    /* A checkpoint run copies hundreds of pages in one CPU burst, and a
     * loop woken by a finished commit on the same core waited behind it:
     * with 100 sessions at 1,000 turns/s on one core, commit finished ->
     * its callback on the loop took p99 1.65-1.80 ms.  Yielding every 16
     * log reads (one per page copied) lets the loop and the writer in
     * between: 0.33-0.48 ms, turn p90 2.6-3.7 -> 1.9-2.7 ms (3 alternating
     * rounds each of 8, 32 and none).  Unlike a lower priority (nice 19
     * did as well), the checkpointer keeps its fair share of the CPU and
     * cannot starve; under saturating POSTs throughput was unchanged within
     * the noise (4 rounds) and the log peaked at 20-26 MB instead of 18 MB. */
    walvfs_yield_every(16);
    int dbfd = open(w->path, O_RDONLY | O_CLOEXEC);
    pthread_mutex_lock(&w->mu);
    while (!w->stop) {
        struct timespec ts;
        clock_gettime(CLOCK_REALTIME, &ts);
        ts.tv_sec += CHECKPOINT_EVERY_MS / 1000;
        if (w->commits_since_ckpt < WAL_CHECKPOINT_COMMITS && !w->ckpt_force)
            pthread_cond_timedwait(&w->ckpt_cv, &w->mu, &ts);
        if (w->stop) break;
        if (w->commits_since_ckpt == 0 && !w->ckpt_force) continue;
        w->commits_since_ckpt = 0;
        w->ckpt_force = 0;
        w->ckpt_started++;
        pthread_mutex_unlock(&w->mu);
        /* PASSIVE never waits: it copies what is committed and never holds
         * the writer back.  It keeps the part of the log not yet copied
         * short, so that the writer's own catch-up (see wal_catch_up) is
         * cheap. */
        int copied = 0;
        sqlite3_wal_checkpoint_v2(c.db, NULL, SQLITE_CHECKPOINT_PASSIVE, NULL, &copied);
        /* A checkpoint that stops short of the log's end leaves the pages it
         * copied unsynced; the one that restarts the log (the writer's) would
         * sync them all, holding the writer.  Sync them here instead. */
        if (dbfd >= 0 && copied > 0) fdatasync(dbfd);
        pthread_mutex_lock(&w->mu);
        w->ckpt_done++;
        w->ckpt_copied = copied;
    }
    pthread_mutex_unlock(&w->mu);
    /* a last full checkpoint at shutdown keeps the WAL small for the next start */
    sqlite3_wal_checkpoint_v2(c.db, NULL, SQLITE_CHECKPOINT_TRUNCATE, NULL, NULL);
    if (dbfd >= 0) close(dbfd);
    conn_close(&c);
    return NULL;
}

static void run_batch(struct writer *w, struct store_op *batch)
{
    int64_t t0 = time_mono_us();
    int n = 0;
    struct store_op *last = batch;
    sqlite3_int64 changes = sqlite3_total_changes64(w->c.db);
    /* cached: parsing BEGIN and COMMIT was 3.6 % of a POST committed alone */
    int began = conn_step(&w->c, "BEGIN IMMEDIATE") == 0, lost = 0, wrote = 0;
    for (struct store_op *op = batch; op; op = op->next) {
        last = op;
        n++;
        op->err = LD_OK;
        if (!began || lost) {
            op->err = LD_E_STORAGE;
            snprintf(op->detail, sizeof(op->detail), "Storage is unavailable");
            continue;
        }
        /* an op of one statement needs no savepoint: a statement that fails
         * is undone by SQLite alone, and the savepoint's journal copied
         * every page the op touched (4 % of a POST's CPU) */
        int sp = !ops_single_statement(op);
        if (sp) conn_step(&w->c, "SAVEPOINT op");
        ops_run(&w->c, op);
        if (sp && op->err != LD_OK) conn_step(&w->c, "ROLLBACK TO op");
        if (sp) conn_step(&w->c, "RELEASE op");
        ops_counts_op_end(&w->c, op->err == LD_OK);
        /* after an I/O error or a full disk SQLite may roll the whole
         * transaction back by itself: the ops before are gone, and those
         * after must not run in autocommit mode */
        if (sqlite3_get_autocommit(w->c.db)) lost = 1;
    }
    /* the batch's session counts go in with it, or nothing does */
    if (lost) ops_counts_drop(&w->c);
    if (began && (lost || ops_counts_flush(&w->c) != 0 || conn_step(&w->c, "COMMIT") != 0)) {
        fprintf(stderr, "level=error msg=\"commit failed\" err=\"%s\"\n", sqlite3_errmsg(w->c.db));
        conn_exec(&w->c, "ROLLBACK");
        pthread_mutex_lock(&w->mu);
        w->m.commit_failures++;
        pthread_mutex_unlock(&w->mu);
        for (struct store_op *op = batch; op; op = op->next) {
            op->err = LD_E_STORAGE;
            snprintf(op->detail, sizeof(op->detail), "The write could not be made durable");
        }
        wrote = -1;
    } else if (!began) {
        wrote = -1;
    } else if (sqlite3_total_changes64(w->c.db) != changes) {
        wrote = 1;
    }
    finish_batch(w, batch, last, n, time_mono_us() - t0, wrote);
}

/* sqlite3_wal_hook: after each commit, the log's length in frames */
static int on_wal_commit(void *ud, sqlite3 *db, const char *name, int frames)
{
    (void)db;
    (void)name;
    ((struct writer *)ud)->wal_frames = frames;
    return SQLITE_OK;
}

/*
 * Under endless writes a concurrent checkpoint never catches the end of
 * the log, so the log would never start over and grow without bound.  Past
 * WAL_RESET_FRAMES the writer, between two batches, copies the few frames
 * the checkpointer has not copied yet itself (PASSIVE: nothing can be
 * committed meanwhile, so it reaches the end); the next commit then starts
 * the log from the beginning.  That costs one short pause, where a RESTART
 * checkpoint held the writer back for the whole copy (tens to hundreds of
 * ms under load: the p99 of durable writes).  The pause is kept short in
 * two ways: the writer first asks the checkpointer for a run of its own
 * and goes on committing; it copies only once a run begun after the ask
 * has left at most WAL_TAIL_FRAMES uncopied (measured: 2-8 ms pauses
 * became ~2 ms; what is left is mostly the database's and the restarted
 * log's fsyncs).  And the checkpointer syncs the database after each run,
 * so the catch-up's sync covers its own few pages, not every page copied
 * since the last restart.  Only if readers keep the log from starting over
 * until WAL_HARD_FRAMES does the writer wait (RESTART).
 */
static void wal_catch_up(struct writer *w)
{
    if (w->wal_frames < WAL_RESET_FRAMES) {
        w->ckpt_want = 0;
        return;
    }
    if (w->wal_frames < WAL_HARD_FRAMES) {
        pthread_mutex_lock(&w->mu);
        int asked = w->ckpt_want != 0, finished = asked && w->ckpt_done >= w->ckpt_want;
        int ready = finished && w->wal_frames - w->ckpt_copied <= WAL_TAIL_FRAMES;
        if (!ready && (!asked || finished)) {
            w->ckpt_want = w->ckpt_started + 1; /* a run that begins from now on */
            w->ckpt_force = 1;
            pthread_cond_signal(&w->ckpt_cv);
        }
        pthread_mutex_unlock(&w->mu);
        if (!ready) return;
    }
    sqlite3_wal_checkpoint_v2(w->c.db, NULL,
                              w->wal_frames >= WAL_HARD_FRAMES ? SQLITE_CHECKPOINT_RESTART
                                                               : SQLITE_CHECKPOINT_PASSIVE,
                              NULL, NULL);
    w->ckpt_want = 0;
    pthread_mutex_lock(&w->mu);
    w->m.wal_catch_ups++;
    pthread_mutex_unlock(&w->mu);
}

static void *writer_main(void *arg)
{
    struct writer *w = arg;
    for (;;) {
        pthread_mutex_lock(&w->mu);
        while (!w->head && !w->stop)
            pthread_cond_wait(&w->cv, &w->mu);
        if (!w->head && w->stop) {
            pthread_mutex_unlock(&w->mu);
            break;
        }
        struct store_op *batch = w->head, *p = batch;
        int n = 1;
        while (p->next && n < LD_WRITER_BATCH_MAX) {
            p = p->next;
            n++;
        }
        w->head = p->next;
        if (!w->head) w->tail = NULL;
        p->next = NULL;
        w->queued -= n;
        w->running = 1;
        pthread_mutex_unlock(&w->mu);
        run_batch(w, batch);
        wal_catch_up(w);
    }
    return NULL;
}

struct writer *writer_start(const char *path, char *err, size_t errlen)
{
    struct writer *w = xcalloc(1, sizeof(*w));
    if (conn_open(&w->c, path, CONN_WRITER, err, errlen)) {
        free(w);
        return NULL;
    }
    conn_exec(&w->c, "PRAGMA wal_autocheckpoint=0");
    sqlite3_wal_hook(w->c.db, on_wal_commit, w);
    w->efd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
    w->queue_max = LD_WRITER_QUEUE_MAX;
    str_copy(w->path, sizeof(w->path), path);
    pthread_mutex_init(&w->mu, NULL);
    pthread_cond_init(&w->cv, NULL);
    pthread_cond_init(&w->idle, NULL);
    pthread_cond_init(&w->ckpt_cv, NULL);
    if (w->efd < 0 || pthread_create(&w->th, NULL, writer_main, w) != 0 ||
        pthread_create(&w->ckpt_th, NULL, checkpointer_main, w) != 0) {
        snprintf(err, errlen, "cannot start the writer thread");
        conn_close(&w->c);
        if (w->efd >= 0) close(w->efd);
        free(w);
        return NULL;
    }
    return w;
}

void writer_stop(struct writer *w)
{
    if (!w) return;
    writer_release(w);
    pthread_mutex_lock(&w->mu);
    w->stop = 1;
    w->closing = 1;
    pthread_cond_broadcast(&w->cv);
    pthread_mutex_unlock(&w->mu);
    pthread_join(w->th, NULL);
    pthread_mutex_lock(&w->mu);
    pthread_cond_signal(&w->ckpt_cv);
    pthread_mutex_unlock(&w->mu);
    pthread_join(w->ckpt_th, NULL);
    writer_drain(w);
    conn_close(&w->c);
    close(w->efd);
    pthread_mutex_destroy(&w->mu);
    pthread_cond_destroy(&w->cv);
    pthread_cond_destroy(&w->idle);
    pthread_cond_destroy(&w->ckpt_cv);
    free(w);
}

void writer_set_queue_max(struct writer *w, long n)
{
    w->queue_max = n > 0 ? n : 1;
}

int writer_fd(struct writer *w)
{
    return w->efd;
}

enum ld_err writer_submit(struct writer *w, struct store_op *op)
{
    op->next = NULL;
    pthread_mutex_lock(&w->mu);
    int full = w->closing || w->queued + w->nstaged >= w->queue_max;
    if (full && !w->closing) w->m.refused++;
    pthread_mutex_unlock(&w->mu);
    if (full) return LD_E_UNAVAILABLE;
    if (w->staged_tail)
        w->staged_tail->next = op;
    else
        w->staged = op;
    w->staged_tail = op;
    w->nstaged++;
    return LD_OK;
}

void writer_release(struct writer *w)
{
    if (!w->staged) return;
    pthread_mutex_lock(&w->mu);
    if (w->tail)
        w->tail->next = w->staged;
    else
        w->head = w->staged;
    w->tail = w->staged_tail;
    w->queued += w->nstaged;
    pthread_cond_signal(&w->cv);
    pthread_mutex_unlock(&w->mu);
    w->staged = w->staged_tail = NULL;
    w->nstaged = 0;
}

void writer_drain(struct writer *w)
{
    uint64_t v;
    ssize_t r = read(w->efd, &v, sizeof(v));
    (void)r;
    pthread_mutex_lock(&w->mu);
    struct store_op *op = w->done_head;
    w->done_head = w->done_tail = NULL;
    pthread_mutex_unlock(&w->mu);
    while (op) {
        struct store_op *next = op->next;
        op->next = NULL;
        if (op->done) op->done(op);
        op = next;
    }
}

long writer_pending(struct writer *w)
{
    pthread_mutex_lock(&w->mu);
    long n = w->nstaged + w->queued + (w->running ? 1 : 0);
    for (struct store_op *op = w->done_head; op; op = op->next)
        n++;
    pthread_mutex_unlock(&w->mu);
    return n;
}

void writer_flush(struct writer *w)
{
    writer_release(w);
    pthread_mutex_lock(&w->mu);
    while (w->head || w->running)
        pthread_cond_wait(&w->idle, &w->mu);
    pthread_mutex_unlock(&w->mu);
    writer_drain(w);
}

void writer_quiesce(struct writer *w)
{
    writer_release(w);
    pthread_mutex_lock(&w->mu);
    w->closing = 1;
    while (w->head || w->running)
        pthread_cond_wait(&w->idle, &w->mu);
    pthread_mutex_unlock(&w->mu);
}

void writer_metrics(struct writer *w, struct store_metrics *m)
{
    pthread_mutex_lock(&w->mu);
    *m = w->m;
    pthread_mutex_unlock(&w->mu);
}
