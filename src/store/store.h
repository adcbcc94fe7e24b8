/*
 * store.h — the storage interface.  No SQLite type leaks out of store/, so a
 * PostgreSQL backend (multinode.md) is a new implementation of this file.
 *
 * Two paths:
 *  - Reads (store_*_get/list) run synchronously on the caller's thread (the
 *    event loop) on a read-only connection.  In WAL mode they never wait for
 *    the writer.
 *  - Writes are `struct store_op`s handed to the writer thread with
 *    store_submit().  The writer runs queued ops in one transaction (group
 *    commit, each op inside its own SAVEPOINT so one op's failure does not
 *    undo its neighbours), commits with synchronous=FULL, and only then
 *    hands every op back to the loop, where op->done runs.  So a 2xx sent
 *    from `done` means the write is on disk.
 */
#ifndef LOOPD_STORE_H
#define LOOPD_STORE_H
#include "core/err.h"
#include "core/model.h"
#include "util/mem.h"

struct store;

enum store_op_kind {
    SOP_SESSION_INSERT,     /* session (+ idem) */
    SOP_SESSION_PATCH,      /* org_id, id, patch -> session */
    SOP_SESSION_DELETE,     /* org_id, id */
    SOP_CHAT_GET_OR_CREATE, /* session (to insert if absent) -> session, created */
    SOP_PIN,                /* org_id, id, user_id, flag */
    SOP_AGENT_INSERT,       /* agent (+ idem) */
    SOP_AGENT_UPDATE,       /* agent (full new row; if_match version) */
    SOP_AGENT_ARCHIVE,      /* org_id, id */
    SOP_NOOP,               /* commits nothing; for tests of the queue */
    SOP_EVENTS_APPEND,      /* id (session), events[], optional update */
    SOP_PROBE,              /* rewrites the probe row: a commit that writes */
};

/* The detail of a write refused because an earlier batch of the same
 * session failed (SOP_EVENTS_APPEND keeps each log gapless); the engine
 * answers the same while it repairs such a session from its log. */
#define STORE_REPAIR_DETAIL                                                                        \
    "A write to this session failed; it is being repaired from its log. Retry shortly."

/* One event of the log, as stored. */
struct event_rec {
    int64_t seq;
    char id[ID_MAX];
    const char *type;
    const char *turn_id; /* NULL if none */
    int64_t ts;          /* µs */
    const char *body;    /* the Event JSON */
    const char *message; /* the Message JSON, or NULL */
};

/* A server-side tool's change to the session's storage or files, committed
 * with the events of the same op. */
enum tool_effect_kind { TE_KV_SET, TE_KV_DELETE, TE_FILE_WRITE };
struct tool_effect {
    int kind;
    const char *key; /* or the file path */
    const char *value;
    int secret;
};

/* Session columns a turn changes with its events; 0/NULL = unchanged. */
struct session_update {
    int set_status, status;
    int set_outcome, outcome;
    const char *turn_id; /* "" clears */
    int64_t started_at;  /* set if not yet set */
    int64_t add_in, add_out, add_cache_read, add_cache_creation;
    const char *preview, *output_preview; /* preview only if unset */
    int64_t now;
};

struct idem_rec {
    const char *org_id, *key, *fingerprint, *body;
    int status;
    int64_t created_at;
};

struct store_op {
    struct store_op *next;
    enum store_op_kind kind;
    struct arena *arena;               /* results are allocated here */
    void (*done)(struct store_op *op); /* runs on the loop thread after commit */
    void *ud;

    /* arguments */
    const char *org_id, *id, *user_id;
    struct session_rec *session;
    struct session_patch *patch;
    struct agent_rec *agent;
    struct idem_rec *idem; /* inserted in the same transaction, if set */
    int flag;
    int64_t if_match;
    struct event_rec *events;
    int nevents;
    struct session_update *update;
    struct tool_effect *effects;
    int neffects;

    /* results */
    enum ld_err err;
    char detail[256];
    int created;       /* SOP_CHAT_GET_OR_CREATE: 1 if this op inserted the row */
    int idem_conflict; /* the Idempotency-Key was committed by another request */
};

/* Opens (creating) <dir>/loopd.db, runs migrations, starts the writer.
 * notify_fd: an eventfd the writer signals when ops are done. */
struct store *store_open(const char *dir, char *err, size_t errlen);
void store_close(struct store *st);
int store_notify_fd(struct store *st);
/* Most ops queued at once (default LD_WRITER_QUEUE_MAX; --max-pending-writes). */
void store_set_queue_max(struct store *st, long n);
/* Queues an op.  LD_E_UNAVAILABLE when the queue is full or closing. */
enum ld_err store_submit(struct store *st, struct store_op *op);
/* Runs `done` for every op the writer has finished (call on the loop). */
void store_drain(struct store *st);
/* A number that changes whenever writes may have committed since it was
 * last read, before anyone hears of them (store_drain, store_flush): what
 * the loop read under one value is still what the store holds while the
 * value is the same. */
uint64_t store_write_generation(const struct store *st);
/* Reads on the loop share one snapshot (one read transaction, so no
 * locking syscalls per statement) until this is called: at the end of each
 * loop iteration and before write completions are delivered, so a write
 * acknowledged to anyone is visible to every later read.  It also hands
 * the writes submitted since the last call to the writer, together. */
void store_end_reads(struct store *st);
/* Ops queued or running. */
long store_pending(struct store *st);
/* Stops taking ops; returns when the writer has finished all queued ones. */
void store_quiesce(struct store *st);
/* Waits until every queued op is committed and runs their `done` (only
 * before the loop runs, e.g. recovery at start). */
void store_flush(struct store *st);

/* metrics: histogram of batch sizes (ops per commit) */
#define STORE_BATCH_BUCKETS 8
struct store_metrics {
    uint64_t commits, ops, commit_failures;
    uint64_t refused; /* ops refused: the queue was full (--max-pending-writes) */
    uint64_t batch_hist[STORE_BATCH_BUCKETS]; /* <=1,2,4,8,16,64,256,inf */
    uint64_t commit_us_total;
    uint64_t statements;             /* SQL statements the writer ran */
    uint64_t wal_catch_ups;          /* times the writer closed the log's gap to restart it */
    uint64_t auth_hits, auth_misses; /* API keys found in the key cache, and not */
    int write_failing;               /* the last batch that wrote failed to commit (/readyz) */
};
void store_metrics(struct store *st, struct store_metrics *m);

/* ---- bootstrap, orgs, keys (used at start and by `loopd keys`) ---- */
#define DEFAULT_ORG_ID "org_00000000000000000000000000000001"
#define DEFAULT_USER_ID "00000000-0000-0000-0000-000000000001"

/* Ensures the default org, user and built-ins exist.  If no key exists yet,
 * creates one (bootstrap_key if given, else random) and returns it in
 * key_out (else key_out is ""). */
enum ld_err store_bootstrap(struct store *st, const char *bootstrap_key, char *key_out,
                            size_t keylen);
/* Creates a new org with its own user; returns the org and user ids. */
enum ld_err store_org_create(struct store *st, const char *name, char org_out[ID_MAX],
                             char user_out[40]);
/* Creates a key for user in org; returns the token and the key id. */
enum ld_err store_key_create(struct store *st, const char *org_id, const char *user_id,
                             const char *name, const char *token_or_null, char *token_out,
                             size_t toklen, char key_id_out[ID_MAX]);
enum ld_err store_key_revoke(struct store *st, const char *key_id);
/* Calls fn for every key (one JSON object per call). */
void store_key_list(struct store *st, void (*fn)(const char *json, void *ud), void *ud);

/* ---- reads ---- */
/* Resolves a token to a principal; org_hint is X-Org-Id or NULL.
 * LD_E_UNAUTHORIZED (detail set) or LD_E_NOT_FOUND for a non-member org. */
enum ld_err store_auth(struct store *st, const char *token, const char *org_hint,
                       struct principal *p, char *detail, size_t dlen);
/* The principal of user in org (for --auth none). */
enum ld_err store_principal(struct store *st, const char *org_id, const char *user_id,
                            struct principal *p);

enum ld_err store_session_get(struct store *st, const char *org_id, const char *id,
                              const char *user_id, struct arena *a, struct session_rec *out);
enum ld_err store_session_by_singleton(struct store *st, const char *org_id, const char *key,
                                       const char *user_id, struct arena *a,
                                       struct session_rec *out);
/* Calls fn with each of up to f->limit records, in order (a record lives
 * until fn returns); once fn returns nonzero, the records after that one
 * carry only their id (big rows are not read).  *total gets the count of
 * all matches. */
enum ld_err store_session_list(struct store *st, const char *org_id, const char *user_id,
                               const struct session_filter *f, struct arena *a,
                               int (*fn)(const struct session_rec *s, void *ud), void *ud,
                               int64_t *total);
enum ld_err store_session_stats(struct store *st, const char *org_id, struct session_stats *s);

enum ld_err store_agent_get(struct store *st, const char *org_id, const char *id_or_name,
                            struct arena *a, struct agent_rec *out);
enum ld_err store_agent_list(struct store *st, const char *org_id, const char *search,
                             int include_archived, long offset, long limit, struct arena *a,
                             int (*fn)(const struct agent_rec *ag, void *ud), void *ud,
                             int64_t *total); /* fn: as for store_session_list */

enum ld_err store_harness_get(struct store *st, const char *org_id, const char *id_or_name,
                              struct arena *a, struct harness_rec *out);
enum ld_err store_harness_list(struct store *st, const char *org_id, const char *search,
                               struct arena *a, struct harness_rec **rows, int *nrows);
/* Sessions on a harness (its session_count; store_harness_get, which the
 * hot paths call, leaves it 0 and serves a cache).  List rows have it. */
int64_t store_harness_sessions(struct store *st, const char *harness_id);

enum ld_err store_idem_get(struct store *st, const char *org_id, const char *key, struct arena *a,
                           struct idem_rec *out);

/* ---- the event log ---- */
/* Highest sequence stored for the session (0 if none). */
int64_t store_events_max_seq(struct store *st, const char *session_id);
/* the session's events other than output.message.delta (kept by the writer) */
int64_t store_events_total(struct store *st, const char *session_id);
/* The sequence of an event of that session; LD_E_NOT_FOUND if none. */
enum ld_err store_event_seq(struct store *st, const char *session_id, const char *event_id,
                            int64_t *seq);
/* Up to `limit` events with after < sequence <= upto (upto 0 = no bound),
 * ascending (or the LAST `limit` of them when `last` is set), fewer once
 * the rows read hold LD_EVENTS_PAGE_BYTES (at least one row).  *more: the
 * page stopped at `limit` or at that size, so rows may follow.  `message`
 * is not read (NULL). */
enum ld_err store_events_page(struct store *st, const char *session_id, int64_t after, int64_t upto,
                              long limit, int last, struct arena *a, struct event_rec **rows,
                              int *n, int *more);
/* The newest event of `type` (and of `turn_id` unless NULL) with a
 * sequence below `before` (0: any); LD_E_NOT_FOUND if none. */
enum ld_err store_event_find(struct store *st, const char *session_id, const char *type,
                             const char *turn_id, int64_t before, struct arena *a,
                             struct event_rec *out);
/* Messages (in event order), calling fn with each Message JSON. */
enum ld_err store_messages(struct store *st, const char *session_id,
                           void (*fn)(const char *json, void *ud), void *ud);
/* Up to `limit` of those after sequence `after` and at most `upto`, in
 * order; fn gets each with its sequence.  *n: how many. */
enum ld_err store_messages_page(struct store *st, const char *session_id, int64_t after,
                                int64_t upto, int limit,
                                void (*fn)(const char *json, int64_t seq, void *ud), void *ud,
                                int *n);
/* Sessions whose status says a turn runs (active, waiting): for recovery. */
/* The sessions left active or waiting (at start: a crash left them so);
 * only their ids, since each record may be a megabyte: read them one at a
 * time with store_session_get. */
struct session_ref {
    char org_id[ID_MAX], id[ID_MAX];
};
void store_sessions_running(struct store *st, struct arena *a, struct session_ref **refs, int *n);

/* ---- what server-side tools read ---- */
/* value of a key (secret: whether it is one); LD_E_NOT_FOUND if none */
enum ld_err store_kv_get(struct store *st, const char *session_id, const char *key, struct arena *a,
                         const char **value, int *secret);
void store_kv_list(struct store *st, const char *session_id,
                   void (*fn)(const char *key, int secret, void *ud), void *ud);
/* a: NULL to ask whether the file exists only (content is not read) */
enum ld_err store_file_get(struct store *st, const char *session_id, const char *path,
                           struct arena *a, const char **content);
void store_files_list(struct store *st, const char *session_id,
                      void (*fn)(const char *path, const char *content, void *ud), void *ud);

/* Deletes idempotency records older than `before_us` (housekeeping). */
void store_idem_expire(struct store *st, int64_t before_us);

#endif
