/*
 * sqlite_int.h — private to store/: the connection wrapper with its cache of
 * prepared statements, and helpers shared by the store's files.
 */
#ifndef LOOPD_SQLITE_INT_H
#define LOOPD_SQLITE_INT_H
#include "store/store.h"
#include <pthread.h>
#include <sqlite3.h>

#define STMT_CACHE 48

/* The rows events_id holds (schema 8): those whose ID does not end with
 * their sequence in hex; a query must repeat it to use the index. */
#define EVENTS_ID_INDEXED "substr(id, -8) <> printf('%08x', sequence)"

struct conn {
    sqlite3 *db;
    struct {
        char *sql; /* owned copy (dynamic SQL is cached too) */
        sqlite3_stmt *st;
        uint64_t used;
    } cache[STMT_CACHE];
    uint64_t tick;
    uint64_t nstmt; /* statements handed out: SQL executed on this connection */
    int snapshot;   /* reads share one transaction until conn_end_snapshot */
    int in_txn;
    sqlite3_stmt *begin, *commit; /* the snapshot's, prepared once */
    /* writer: the session counts its batch changed (ops.c, ops_counts_*) */
    struct count_delta *deltas;
    int ndeltas, nkept, capdeltas;
};

/* CONN_RW: read-write; CONN_RO: read-only; CONN_WRITER: read-write through
 * the loopd-wal VFS (walvfs.c: WAL appends gathered into one write, no
 * sync of a log this handle did not write), for the writer thread's and the
 * checkpointer's connections only. */
enum conn_mode { CONN_RW, CONN_RO, CONN_WRITER };
int conn_open(struct conn *c, const char *path, enum conn_mode mode, char *err, size_t errlen);
/* walvfs.c: registers the "loopd-wal" VFS (idempotent; before threads start) */
int walvfs_register(void);
const char *walvfs_name(void);
/* from now on, this thread yields its CPU every n reads of a log (0: never):
 * the checkpointer's copy is otherwise one long CPU burst (writer.c) */
void walvfs_yield_every(int n);
/* what the loopd-wal VFS did to WAL files, since the start (for tests) */
struct walvfs_stats {
    unsigned long writes;        /* writes handed to the file system */
    unsigned long syncs;         /* syncs handed to the file system */
    unsigned long syncs_skipped; /* syncs of a handle that wrote nothing since */
};
void walvfs_get_stats(struct walvfs_stats *out);
void conn_close(struct conn *c);
/* A prepared, reset statement for sql (cached by text). NULL on error. */
sqlite3_stmt *conn_stmt(struct conn *c, const char *sql);
int conn_exec(struct conn *c, const char *sql);
/* Runs one statement without parameters through the cache (conn_exec
 * parses its text on every call): 0 when it ran to the end. */
int conn_step(struct conn *c, const char *sql);
/* Ends the shared read transaction of a snapshot connection, if open. */
void conn_end_snapshot(struct conn *c);

/* binding helpers: NULL or "" binds SQL NULL for _opt */
void bind_text(sqlite3_stmt *s, int i, const char *v);
void bind_text_opt(sqlite3_stmt *s, int i, const char *v);
const char *col_text(sqlite3_stmt *s, int i, struct arena *a); /* NULL if SQL NULL */
void col_copy(sqlite3_stmt *s, int i, char *out, size_t n);    /* "" if NULL */

int schema_migrate(struct conn *c, char *err, size_t errlen);

struct writer;
/* Harnesses never change once created (built-ins, made at bootstrap), so
 * the loop keeps the ones it has read; entries live until store_close. */
#define HARNESS_CACHE 64
struct harness_cached {
    char org_id[ID_MAX];
    char key[ID_MAX + 64]; /* the id or name asked for */
    struct harness_rec rec;
};
/* authcache.c: API keys verified by this process, trusted while the
 * data dir's auth.epoch holds the value they were verified under (NULL
 * cache: none, every call misses) */
struct authcache;
struct authcache *authcache_open(const char *dir);
void authcache_close(struct authcache *ac);
uint64_t authcache_epoch(struct authcache *ac);
int authcache_get(struct authcache *ac, const char *token, const char *org_hint,
                  struct principal *p);
void authcache_put(struct authcache *ac, const char *token, const char *org_hint,
                   const struct principal *p, uint64_t epoch);
/* after a committed change of keys: every process's entries are void */
void authcache_bump(struct authcache *ac);
void authcache_counts(const struct authcache *ac, uint64_t *hits, uint64_t *misses);
/* the set a key and X-Org-Id are kept in (for the unit tests) */
int authcache_set_of(struct authcache *ac, const char *token, const char *org_hint);
struct store {
    char path[600];
    struct authcache *ac;
    uint64_t writes_seen; /* store_write_generation */
    struct conn rd;       /* loop-thread reads */
    struct writer *w;
    struct harness_cached hcache[HARNESS_CACHE];
    int nhcache;
};

struct writer *writer_start(const char *path, char *err, size_t errlen);
void writer_set_queue_max(struct writer *w, long n);
void writer_stop(struct writer *w);
int writer_fd(struct writer *w);
enum ld_err writer_submit(struct writer *w, struct store_op *op);
void writer_drain(struct writer *w);
long writer_pending(struct writer *w);
/* hands the ops submitted since the last call to the thread (loop thread) */
void writer_release(struct writer *w);
void writer_quiesce(struct writer *w);
void writer_flush(struct writer *w);
void writer_metrics(struct writer *w, struct store_metrics *m);

/* the SQL each op runs (store/ops.c), inside a SAVEPOINT on the writer */
void ops_run(struct conn *c, struct store_op *op);
/* 1 if op changes the database with at most one statement (no savepoint) */
int ops_single_statement(const struct store_op *op);
/* after each op: keep (ok) or drop the session counts it changed */
void ops_counts_op_end(struct conn *c, int ok);
/* before the batch's COMMIT: the counts kept, added to the tables; 0 or -1
 * (then the batch must not commit).  Always starts the next batch afresh. */
int ops_counts_flush(struct conn *c);
/* forgets them (the batch's transaction is gone) */
void ops_counts_drop(struct conn *c);

/* session row reading shared by reads and ops */
#define SESSION_COLS                                                                               \
    "s.id, s.org_id, s.workspace_id, s.harness_id, s.agent_id, s.owner_principal_id, "             \
    "s.owner_user_id, s.model_id, s.agent_identity_id, s.title, s.goal, s.locale, s.preview, "     \
    "s.output_preview, s.tags, s.extra, s.features, s.singleton_key, s.status, s.outcome, "        \
    "s.source, s.created_at, s.updated_at, s.started_at, s.last_activity_at, s.in_tokens, "        \
    "s.out_tokens, s.cache_read_tokens, s.cache_creation_tokens, s.version, s.turn_id"
#define SESSION_NCOLS 31
void read_session(sqlite3_stmt *s, struct arena *a, struct session_rec *r);

#endif
