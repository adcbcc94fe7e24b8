/*
 * engine.h — runs turns and owns the event log's live side.
 *
 * Every event gets its session's next sequence on the loop thread, is
 * committed by the writer (several events share one commit), and only then
 * reaches subscribers, in sequence order: a subscriber never sees an event
 * that is not on disk, and a reader of the log after sequence N finds every
 * event a subscriber was or will be given.
 */
#ifndef LOOPD_ENGINE_H
#define LOOPD_ENGINE_H
#include "core/err.h"
#include "core/model.h"
#include "store/store.h"

struct engine;
struct loop;

/* Testing only (--fault-point): 1 = abort right after a turn's tool ledger
 * (act.started, tool.started) is durable, before the tools run. */
void engine_set_fault_point(int n);
struct config;
struct engine *engine_new(struct store *st, struct loop *l, const struct config *cfg);
void engine_free(struct engine *e);
/* At start, before serving: every session left active by a crash gets
 * turn.failed + session.idled and goes idle.  Returns how many. */
int engine_recover(struct engine *e);
/* 1 if a turn of this session runs (or is queued to). */
int engine_session_busy(struct engine *e, const char *session_id);
/* Turns running (for shutdown and metrics). */
long engine_running(struct engine *e);

/* Answer of a posted message: err, or the Message JSON and its delivery
 * ("started", "steered", "queued" or "duplicate"). */
typedef void (*engine_msg_fn)(void *ud, enum ld_err err, const char *detail,
                              const char *message_json, const char *delivery);
struct engine_input {
    const char *content;           /* JSON array of content parts */
    const char *text;              /* the text parts joined, for the model */
    const char *controls;          /* JSON object or NULL */
    const char *metadata;          /* JSON object or NULL */
    const char *hints;             /* llmsim hints (JSON) or NULL */
    const char *client_message_id; /* or NULL */
    const char *model_id;          /* controls.model_id: this turn's model, or NULL */
};
void engine_post_message(struct engine *e, const struct session_rec *s,
                         const struct engine_input *in, engine_msg_fn fn, void *ud);

/* Client-side tool results.  err LD_E_CONFLICT: not waiting;
 * LD_E_BAD_REQUEST: an id that is not a pending call (detail says which).
 * resumed=1 when every pending call has its result and the turn goes on. */
struct engine_tool_result {
    const char *tool_call_id;
    const char *result; /* text, or NULL */
    const char *error;  /* or NULL */
};
typedef void (*engine_results_fn)(void *ud, enum ld_err err, const char *detail, int accepted,
                                  int resumed);
void engine_tool_results(struct engine *e, const struct session_rec *s,
                         const struct engine_tool_result *res, int n, engine_results_fn fn,
                         void *ud);

/* Cancel: cancelled=1 after the cancel events are durable, 0 if no turn ran. */
typedef void (*engine_cancel_fn)(void *ud, enum ld_err err, int cancelled);
void engine_cancel(struct engine *e, const struct session_rec *s, engine_cancel_fn fn, void *ud);

/* Subscribers get every committed event of one session, in order, and
 * on_gone (if set) once the session is deleted: nothing more will come. */
struct engine_sub {
    struct engine_sub *next;
    void (*on_event)(struct engine_sub *sub, const struct event_rec *ev);
    void (*on_gone)(struct engine_sub *sub);
    void *ud;
};
/* Returns the highest committed sequence at subscription time. */
int64_t engine_subscribe(struct engine *e, const struct session_rec *s, struct engine_sub *sub);
void engine_unsubscribe(struct engine *e, const char *session_id, struct engine_sub *sub);
/* The session was deleted (its delete is durable): tells its subscribers. */
void engine_session_deleted(struct engine *e, const char *session_id);

#endif
