/*
 * engine.c — live sessions, event batches and the turn state machine.
 *
 * DESIGN
 *  - A `live` record exists for a session while it has a turn, a
 *    subscriber or writes in flight; it holds the next sequence (loaded
 *    from the log once) and the turn.  All of it belongs to the loop.
 *  - Events are appended in batches: one store op carries the events of a
 *    step and the session columns they change.  Writer order is FIFO, so
 *    sequences commit in order; `done` then hands each event to the
 *    subscribers and lets the turn go on.
 *  - Turn states (one writer: turn_set):
 *
 *      STARTING --commit--> THINKING --(latency: deltas on timers)--> FINISHING
 *          |                    |                                        |
 *          |                    +--fail--> FINISHING (turn.failed)       |
 *          +--------- cancel (any state before FINISHING) --> CANCELLED  |
 *                                                 FINISHING --commit--> DONE
 *
 *    STARTING  -> THINKING   [step_start]  input, activation committed
 *    THINKING  -> FINISHING  [step_finish] last batch (answer, completion) queued
 *    *         -> CANCELLED  [engine_cancel]
 *    FINISHING -> DONE       [finished]    idle committed; a queued message
 *                                           starts the next turn
 *  - Commits per plain turn with llmsim at zero latency: two (the input
 *    with the activation; the answer with the completion).
 *  - Messages while a turn runs: before FINISHING they are steered into it
 *    (it makes one more model call that sees them); during FINISHING they
 *    are queued and start the next turn as soon as the idle is durable.
 *  - A batch that fails (its commit, or a full writer queue) stops the
 *    session's turn; the session is then read back from its log and the
 *    turn resumed or failed, as after a restart ("Repair", at the end).
 */
#include "engine/engine.h"
#include "core/builtins.h"
#include "limits.h"
#include "engine/tools.h"
#include "llm/llm.h"
#include "llm/sim.h"
#include "log.h"
#include "loop.h"
#include "util/buf.h"
#include "util/timeutil.h"
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

enum turn_state {
    T_STARTING,
    T_THINKING,
    T_TOOLS,   /* server-side tools run (their tool.started is durable) */
    T_WAITING, /* waiting_for_tool_results: client-side calls out */
    T_FINISHING,
    T_CANCELLED,
    T_DONE
};

struct pending_call {
    char id[40];
    char *name, *arguments;
    int client;   /* the client runs it (tool.call_requested) */
    int answered; /* its tool.completed is emitted */
};

struct live;

struct turn {
    struct live *ls;
    int state;
    char id[ID_MAX];
    char input_msg_id[ID_MAX];
    char out_msg_id[ID_MAX];
    int iteration;
    int64_t started_mono;
    int64_t in_tokens, out_tokens;
    struct arena arena; /* the plan's strings */
    struct sim_plan plan;
    int delta_i;
    struct buf acc;  /* accumulated answer */
    struct buf pend; /* streamed text not yet in a delta event (real drivers) */
    struct loop_timer *timer;
    struct loop_timer *pend_timer; /* emits `pend` when due */
    struct llm_call *call;         /* a model call in flight (real drivers) */
    char model_id[ID_MAX];         /* controls.model_id of the message that started it */
    int refs;                      /* batches in flight that point here */
    struct pending_call calls[SIM_MAX_CALLS];
    int ncalls;
    struct buf results; /* "name: result" of this turn's tool calls, for the model */
    int tool_calls_total;
};

struct live {
    struct live *next; /* hash chain */
    char id[ID_MAX];
    char org_id[ID_MAX];
    char harness_id[ID_MAX];
    char agent_id[ID_MAX];
    char model_id[ID_MAX];
    int64_t next_seq;
    int64_t committed_seq;
    int64_t in_tokens, out_tokens, cache_read, cache_creation; /* cumulative */
    struct turn *turn;
    int steered; /* messages taken while thinking */
    int queued;  /* messages waiting for the next turn */
    char queued_msg_id[ID_MAX];
    char *last_text; /* newest user text, for the model */
    char *last_hints;
    char *system_prompt;     /* harness chain, agent, session: assembled once */
    char *tool_defs;         /* JSON array of {name, description, parameters} */
    int parallel_tool_calls; /* -1 unset (session, else agent) */
    int inflight;            /* batches not yet committed */
    struct engine_sub *subs;
    struct cid_wait *cids; /* client_message_ids whose message is not yet durable */
    char *client_tools;    /* "\nname\nname\n": the session's and agent's client tools */
    int max_iterations;
    int broken;                      /* a batch failed: repaired from the log (see Repair) */
    long repair_ms;                  /* the next repair's delay (backoff) */
    struct loop_timer *repair_timer; /* the repair, once no batch is in flight */
};

#define LIVE_BUCKETS 4096

struct engine {
    struct store *st;
    struct loop *loop;
    struct llm *llm;
    struct llm_provider openai, anthropic;
    struct live *buckets[LIVE_BUCKETS];
    long running;
    long delta_ms; /* --delta-interval-ms */
};

/* a posted message with a client_message_id, until it is durable; repeats
 * of the id that arrive meanwhile wait on it */
struct dup_waiter {
    struct dup_waiter *next;
    engine_msg_fn fn;
    void *ud;
};
struct cid_wait {
    struct cid_wait *next;
    char cid[40];
    struct dup_waiter *waiters;
};

/* one batch of events = one store op */
struct batch {
    struct store_op op;
    struct arena arena;
    struct engine *e;
    struct live *ls;
    struct turn *turn;
    struct event_rec ev[24];
    struct session_update upd;
    void (*first)(struct batch *b); /* after commit and fan-out, before `then` */
    void (*then)(struct batch *b);  /* after commit and fan-out */
    void *cb;                       /* the API's callback */
    void *cb_ud;
    const char *reply_msg; /* message JSON for engine_msg_fn */
    const char *delivery;
    struct cid_wait *cid; /* this message's client_message_id, if any */
};

static unsigned hash_id(const char *s)
{
    unsigned h = 2166136261u;
    while (*s)
        h = (h ^ (unsigned char)*s++) * 16777619u;
    return h % LIVE_BUCKETS;
}

static struct live *live_find(struct engine *e, const char *id)
{
    for (struct live *l = e->buckets[hash_id(id)]; l; l = l->next)
        if (strcmp(l->id, id) == 0) return l;
    return NULL;
}

/* the client-side tools (names, and definitions for model calls) and
 * max_iterations of session or agent */
static void collect_tools(struct buf *names, struct buf *defs, int *ndefs, const char *extra_json,
                          int *max_iter, int *parallel)
{
    json_t *x = json_loads(extra_json ? extra_json : "{}", 0, NULL);
    size_t i;
    json_t *t;
    json_array_foreach(json_object_get(x, "tools"), i, t)
    {
        const char *n = json_string_value(json_object_get(t, "name"));
        if (n) {
            buf_puts(names, n);
            buf_putc(names, '\n');
            json_t *d = json_pack("{s:s,s:O,s:O}", "name", n, "description",
                                  json_object_get(t, "description") ?: json_string(""),
                                  "parameters", json_object_get(t, "parameters") ?: json_object());
            char *ds = json_dumps(d, JSON_COMPACT);
            if ((*ndefs)++) buf_putc(defs, ',');
            buf_puts(defs, ds);
            free(ds);
            json_decref(d);
        }
    }
    json_t *mi = json_object_get(x, "max_iterations");
    if (json_is_integer(mi) && *max_iter == 0) *max_iter = (int)json_integer_value(mi);
    json_t *ptc = json_object_get(x, "parallel_tool_calls");
    if (json_is_boolean(ptc) && *parallel < 0) *parallel = json_is_true(ptc);
    json_decref(x);
}

/* The system prompt (reference 8.3): harness chain, parent first; the
 * agent's; the session's prepended to the agent's. */
static void prompt_add(struct buf *p, const char *text)
{
    if (!text || !*text) return;
    if (p->len) buf_puts(p, "\n\n");
    buf_puts(p, text);
}

static void live_load_config(struct engine *e, struct live *l, const struct session_rec *s)
{
    struct buf names, defs, prompt;
    buf_init(&names, 1 << 16);
    buf_init(&defs, 1 << 20);
    buf_init(&prompt, 4u << 20);
    buf_putc(&names, '\n');
    buf_putc(&defs, '[');
    int mi = 0, ndefs = 0;
    struct arena a;
    arena_init(&a);
    struct harness_rec h, parent;
    if (store_harness_get(e->st, s->org_id, s->harness_id, &a, &h) == LD_OK) {
        if (h.parent_id[0] &&
            store_harness_get(e->st, s->org_id, h.parent_id, &a, &parent) == LD_OK)
            prompt_add(&prompt, parent.system_prompt);
        prompt_add(&prompt, h.system_prompt);
    }
    json_t *x = json_loads(s->extra ? s->extra : "{}", 0, NULL);
    prompt_add(&prompt, json_string_value(json_object_get(x, "system_prompt")));
    json_decref(x);
    int par = -1;
    collect_tools(&names, &defs, &ndefs, s->extra, &mi, &par);
    if (s->agent_id[0]) {
        struct agent_rec ag;
        if (store_agent_get(e->st, s->org_id, s->agent_id, &a, &ag) == LD_OK) {
            prompt_add(&prompt, ag.system_prompt);
            collect_tools(&names, &defs, &ndefs, ag.extra, &mi, &par);
        }
    }
    tools_builtin_defs(s, &defs, &ndefs);
    buf_putc(&defs, ']');
    arena_free(&a);
    l->client_tools = xstrdup(names.data ? names.data : "\n");
    l->tool_defs = xstrdup(defs.data);
    l->system_prompt = xstrdup(prompt.data ? prompt.data : "");
    l->max_iterations = mi > 0 ? mi : 10;
    l->parallel_tool_calls = par;
    buf_free(&names);
    buf_free(&defs);
    buf_free(&prompt);
}

static int is_client_tool(const struct live *l, const char *name)
{
    char key[80];
    snprintf(key, sizeof(key), "\n%.64s\n", name);
    return strstr(l->client_tools, key) != NULL;
}

static struct live *live_get(struct engine *e, const struct session_rec *s)
{
    struct live *l = live_find(e, s->id);
    if (l) return l;
    l = xcalloc(1, sizeof(*l));
    str_copy(l->id, sizeof(l->id), s->id);
    str_copy(l->org_id, sizeof(l->org_id), s->org_id);
    str_copy(l->harness_id, sizeof(l->harness_id), s->harness_id);
    str_copy(l->agent_id, sizeof(l->agent_id), s->agent_id);
    str_copy(l->model_id, sizeof(l->model_id), s->model_id);
    l->committed_seq = store_events_max_seq(e->st, s->id);
    l->next_seq = l->committed_seq + 1;
    live_load_config(e, l, s);
    l->in_tokens = s->in_tokens;
    l->out_tokens = s->out_tokens;
    l->cache_read = s->cache_read_tokens;
    l->cache_creation = s->cache_creation_tokens;
    unsigned h = hash_id(s->id);
    l->next = e->buckets[h];
    e->buckets[h] = l;
    return l;
}

/* Frees a live record nobody needs; the log on disk is the truth. */
static void live_maybe_free(struct engine *e, struct live *l)
{
    if (l->turn || l->subs || l->inflight || l->queued || l->cids || l->broken) return;
    for (struct live **p = &e->buckets[hash_id(l->id)]; *p; p = &(*p)->next)
        if (*p == l) {
            *p = l->next;
            free(l->last_text);
            free(l->last_hints);
            free(l->client_tools);
            free(l->tool_defs);
            free(l->system_prompt);
            free(l);
            return;
        }
}

/* ---- events ---- */

static struct batch *batch_new(struct engine *e, struct live *ls, struct turn *t)
{
    struct batch *b = xcalloc(1, sizeof(*b));
    arena_init(&b->arena);
    b->e = e;
    b->ls = ls;
    b->turn = t;
    if (t) t->refs++;
    b->op.kind = SOP_EVENTS_APPEND;
    b->op.arena = &b->arena;
    b->op.id = ls->id;
    b->op.org_id = ls->org_id;
    b->op.events = b->ev;
    b->op.update = &b->upd;
    b->op.ud = b;
    b->upd.now = time_now_us();
    return b;
}

static void ms_time(int64_t us, char out[32])
{
    time_format(us, out, 32); /* 2026-05-27T15:24:01.512345Z -> .512Z */
    out[23] = 'Z';
    out[24] = 0;
}

/* Appends an event; data is a JSON object text; message (or NULL) is a
 * Message JSON text written with "%SEQ%" where its sequence goes. */
static struct event_rec *emit(struct batch *b, const char *type, const char *data,
                              const char *message)
{
    if (b->op.nevents == (int)(sizeof(b->ev) / sizeof(b->ev[0]))) abort(); /* a bug */
    struct event_rec *ev = &b->ev[b->op.nevents++];
    struct live *ls = b->ls;
    ev->seq = ls->next_seq++;
    /* the ID carries the sequence (see id_new_tail and migration 8) */
    if (ev->seq <= (int64_t)UINT32_MAX)
        id_new_tail("event", (uint32_t)ev->seq, ev->id);
    else
        id_new("event", ev->id);
    ev->type = type;
    ev->ts = time_now_us();
    struct turn *t = b->turn;
    ev->turn_id = t ? t->id : NULL;
    char ts[32];
    ms_time(ev->ts, ts);
    struct buf o;
    buf_init(&o, LD_MAX_RESPONSE);
    struct jw w;
    jw_init(&w, &o);
    jw_obj(&w);
    jw_kstr(&w, "id", ev->id);
    jw_kstr(&w, "type", type);
    jw_kstr(&w, "ts", ts);
    jw_kstr(&w, "session_id", ls->id);
    jw_ki64(&w, "sequence", ev->seq);
    jw_key(&w, "context");
    jw_obj(&w);
    if (t) {
        jw_kstr(&w, "turn_id", t->id);
        jw_kstr_opt(&w, "input_message_id", t->input_msg_id);
    }
    jw_end(&w);
    jw_kraw(&w, "data", data);
    jw_end(&w);
    ev->body = arena_strdup(&b->arena, o.data);
    buf_free(&o);
    ev->message = message ? arena_strdup(&b->arena, message) : NULL;
    return ev;
}

static void batch_done(struct store_op *op);

static void batch_refused(void *ud)
{
    struct batch *b = ud;
    batch_done(&b->op);
}

static void batch_submit(struct batch *b)
{
    b->op.done = batch_done;
    b->ls->inflight++;
    if (store_submit(b->e->st, &b->op) != LD_OK) {
        /* failed like a commit, after the caller has returned: the session
         * is repaired from the log then (see Repair) */
        b->op.err = LD_E_UNAVAILABLE;
        snprintf(b->op.detail, sizeof(b->op.detail), "The server is busy; retry shortly");
        loop_timer_add(b->e->loop, 0, batch_refused, b);
    }
}

static void turn_release(struct engine *e, struct turn *t);
static void turn_free_calls(struct turn *t);
static void live_break(struct engine *e, struct live *ls);
static void repair_schedule(struct engine *e, struct live *ls);

static void batch_done(struct store_op *op)
{
    struct batch *b = op->ud;
    struct live *ls = b->ls;
    ls->inflight--;
    if (op->err == LD_OK) {
        for (int i = 0; i < op->nevents; i++) {
            ls->committed_seq = b->ev[i].seq;
            for (struct engine_sub *s = ls->subs, *n; s; s = n) {
                n = s->next; /* a subscriber may leave inside its callback */
                s->on_event(s, &b->ev[i]);
            }
        }
        ls->repair_ms = 0;
    } else {
        /* the sequences of this batch were never stored, and the batches
         * after it fail as well (ops.c keeps each log gapless): the turn
         * stops here and the session is repaired from its log (which finds
         * a session deleted meanwhile gone, and forgets it) */
        if (op->err == LD_E_NOT_FOUND)
            log_info("session deleted; its turn stops", "session", ls->id, NULL);
        else
            log_error("event commit failed", "session", ls->id, "err", op->detail, NULL);
        live_break(b->e, ls);
    }
    if (b->first) b->first(b);
    if (b->then) b->then(b);
    struct turn *t = b->turn;
    struct engine *e = b->e;
    arena_free(&b->arena);
    free(b);
    if (t) turn_release(e, t);
    if (ls->broken && !ls->inflight) repair_schedule(e, ls);
    live_maybe_free(e, ls);
}

/* ---- messages as JSON ---- */

/* [{"type":"text","text":<text>}] */
static void text_parts(struct jw *w, const char *text)
{
    jw_arr(w);
    jw_obj(w);
    jw_kstr(w, "type", "text");
    jw_kstr(w, "text", text);
    jw_end(w);
    jw_end(w);
}

/* opens a Message object: id, session_id, sequence, role */
static void message_head(struct jw *w, const char *id, const char *session_id, int64_t seq,
                         const char *role)
{
    jw_obj(w);
    jw_kstr(w, "id", id);
    jw_kstr(w, "session_id", session_id);
    jw_ki64(w, "sequence", seq);
    jw_kstr(w, "role", role);
}

static const char *user_message(struct arena *a, const char *id, const char *session_id,
                                int64_t seq, const char *content, const char *controls,
                                const char *metadata, const char *client_id, int64_t ts)
{
    struct buf o;
    buf_init(&o, LD_MAX_RESPONSE);
    struct jw w;
    jw_init(&w, &o);
    message_head(&w, id, session_id, seq, "user");
    jw_kraw(&w, "content", content);
    if (controls) jw_kraw(&w, "controls", controls);
    if (metadata) jw_kraw(&w, "metadata", metadata);
    if (client_id) jw_kstr(&w, "client_message_id", client_id);
    jw_ktime(&w, "created_at", ts);
    jw_end(&w);
    const char *r = arena_strdup(a, o.data);
    buf_free(&o);
    return r;
}

static const char *agent_message(struct arena *a, const char *id, const char *session_id,
                                 int64_t seq, const char *text, int64_t ts)
{
    struct buf o;
    buf_init(&o, LD_MAX_RESPONSE);
    struct jw w;
    jw_init(&w, &o);
    message_head(&w, id, session_id, seq, "agent");
    jw_key(&w, "content");
    text_parts(&w, text);
    jw_kstr(&w, "phase", "final_answer");
    jw_ktime(&w, "created_at", ts);
    jw_end(&w);
    const char *r = arena_strdup(a, o.data);
    buf_free(&o);
    return r;
}

/* the message event's data: {"message": <msg>} */
static const char *wrap_message(struct arena *a, const char *msg, const char *extra_members)
{
    struct buf o;
    buf_init(&o, LD_MAX_RESPONSE);
    buf_puts(&o, "{\"message\":");
    buf_puts(&o, msg);
    if (extra_members) {
        buf_putc(&o, ',');
        buf_puts(&o, extra_members);
    }
    buf_putc(&o, '}');
    const char *r = arena_strdup(a, o.data);
    buf_free(&o);
    return r;
}

static void usage_json(struct buf *o, int64_t in, int64_t out)
{
    buf_printf(o, "{\"input_tokens\":%lld,\"output_tokens\":%lld}", (long long)in, (long long)out);
}

/* session.idled with the session's cumulative usage: the session goes idle */
static void emit_idled(struct batch *b, struct turn *t)
{
    struct live *ls = b->ls;
    struct buf u, d;
    buf_init(&u, 256);
    usage_json(&u, ls->in_tokens, ls->out_tokens);
    buf_init(&d, 1024);
    buf_printf(&d, "{\"turn_id\":\"%s\",\"iterations\":%d,\"usage\":%s}", t->id, t->iteration,
               u.data);
    emit(b, "session.idled", d.data, NULL);
    buf_free(&d);
    buf_free(&u);
    b->upd.set_status = 1;
    b->upd.status = SS_IDLE;
    b->upd.turn_id = "";
}

/* ---- turns ---- */

static void turn_free_calls(struct turn *t)
{
    for (int i = 0; i < t->ncalls; i++) {
        free(t->calls[i].name);
        free(t->calls[i].arguments);
    }
    t->ncalls = 0;
}

/* Stops what would move a turn on by itself: its timers, and its model
 * stream (no callback of it runs again).  Text already streamed stays in
 * t->pend for pending_delta. */
static void turn_halt(struct engine *e, struct turn *t)
{
    if (t->timer) {
        loop_timer_cancel(e->loop, t->timer);
        t->timer = NULL;
    }
    if (t->pend_timer) {
        loop_timer_cancel(e->loop, t->pend_timer);
        t->pend_timer = NULL;
    }
    if (t->call) {
        llm_cancel(t->call);
        t->call = NULL;
        t->refs--;
    }
}

static void turn_release(struct engine *e, struct turn *t)
{
    if (--t->refs > 0) return;
    if (t->state != T_DONE && t->state != T_CANCELLED) return;
    if (t->timer) loop_timer_cancel(e->loop, t->timer);
    if (t->pend_timer) loop_timer_cancel(e->loop, t->pend_timer);
    if (t->ls->turn == t) t->ls->turn = NULL;
    turn_free_calls(t);
    buf_free(&t->acc);
    buf_free(&t->pend);
    buf_free(&t->results);
    arena_free(&t->arena);
    free(t);
    e->running--;
}

static void step_start(struct engine *e, struct turn *t);
static void step_call(struct engine *e, struct turn *t, const struct builtin_model *model);
static void delta_event(struct batch *b, struct turn *t, const char *delta);
static void step_delta(void *ud);
static void step_finish(struct engine *e, struct turn *t, struct batch *b);

static struct turn *turn_new(struct engine *e, struct live *ls, const char *input_msg_id)
{
    struct turn *t = xcalloc(1, sizeof(*t));
    t->ls = ls;
    t->state = T_STARTING;
    id_new("turn", t->id);
    str_copy(t->input_msg_id, sizeof(t->input_msg_id), input_msg_id);
    t->started_mono = time_mono_us();
    t->refs = 1; /* the live record's reference, dropped at DONE */
    arena_init(&t->arena);
    buf_init(&t->acc, LD_MAX_RESPONSE);
    buf_init(&t->pend, LD_MAX_RESPONSE);
    buf_init(&t->results, 64 * 1024);
    ls->turn = t;
    e->running++;
    return t;
}

/* session.activated + turn.started into batch b (the turn is new) */
static void emit_activation(struct batch *b, struct turn *t, int64_t now)
{
    char data[256];
    snprintf(data, sizeof(data), "{\"turn_id\":\"%s\",\"input_message_id\":\"%s\"}", t->id,
             t->input_msg_id);
    emit(b, "session.activated", data, NULL);
    emit(b, "turn.started", data, NULL);
    b->upd.set_status = 1;
    b->upd.status = SS_ACTIVE;
    b->upd.turn_id = t->id;
    b->upd.started_at = now;
}

static void abandon_turn(struct batch *b);

static void after_activation(struct batch *b)
{
    if (b->op.err != LD_OK) {
        abandon_turn(b);
        return;
    }
    if (!b->turn || b->turn->state != T_STARTING) return;
    step_start(b->e, b->turn);
}

static void delta_event(struct batch *b, struct turn *t, const char *delta)
{
    buf_puts(&t->acc, delta);
    struct buf d;
    buf_init(&d, LD_MAX_RESPONSE);
    struct jw w;
    jw_init(&w, &d);
    jw_obj(&w);
    jw_kstr(&w, "turn_id", t->id);
    jw_kstr(&w, "message_id", t->out_msg_id);
    jw_kstr(&w, "delta", delta);
    jw_kstr(&w, "accumulated", t->acc.data ? t->acc.data : "");
    jw_kstr(&w, "phase", "final_answer");
    jw_end(&w);
    emit(b, "output.message.delta", d.data, NULL);
    buf_free(&d);
}

/* llmsim's answer to the turn's newest input, into t->plan */
static void sim_plan_for(struct turn *t)
{
    struct live *ls = t->ls;
    size_t prompt = 256 + (ls->last_text ? strlen(ls->last_text) : 0);
    sim_plan(ls->last_text ? ls->last_text : "", prompt, ls->last_hints, t->results.data, &t->arena,
             &t->plan);
}

/* THINKING: plan the model call and open the answer; with b_in (from
 * step_start_merged) the plan is already made and the answer goes into b_in */
static void step_start_with(struct engine *e, struct turn *t, struct batch *b_in)
{
    struct live *ls = t->ls;
    t->state = T_THINKING;
    t->iteration++;
    t->delta_i = 0;
    buf_reset(&t->acc);
    ls->steered = 0;
    const struct builtin_model *model = model_find(t->model_id[0] ? t->model_id : ls->model_id);
    if (model && strcmp(model->provider, "llmsim") != 0) {
        step_call(e, t, model);
        return;
    }
    if (!b_in) sim_plan_for(t);
    id_new("message", t->out_msg_id);
    struct batch *b = b_in ? b_in : batch_new(e, ls, t);
    char data[512];
    /* ModelMetadata.model_id is a bare UUID upstream; the typed model id
     * is on the session, so only the model's name goes here */
    snprintf(data, sizeof(data),
             "{\"harness_id\":\"%s\"%s%s%s,\"metadata\":{\"model\":\"llmsim\"}}", ls->harness_id,
             ls->agent_id[0] ? ",\"agent_id\":\"" : "", ls->agent_id, ls->agent_id[0] ? "\"" : "");
    emit(b, "reason.started", data, NULL);
    if (!t->plan.fail_code) {
        snprintf(data, sizeof(data),
                 "{\"turn_id\":\"%s\",\"message_id\":\"%s\",\"model\":\"llmsim\",\"iteration\":%d,"
                 "\"phase\":\"final_answer\"}",
                 t->id, t->out_msg_id, t->iteration);
        emit(b, "output.message.started", data, NULL);
    }
    if (t->plan.latency_ms > 0) {
        /* stream: this batch now, the deltas on timers, then the end */
        batch_submit(b);
        int n = t->plan.ndeltas ? t->plan.ndeltas : 1;
        t->timer = loop_timer_add(e->loop, t->plan.latency_ms / n, step_delta, t);
        return;
    }
    /* no latency: the whole model step and the turn's end share a commit */
    for (int i = 0; i < t->plan.ndeltas; i++)
        delta_event(b, t, t->plan.deltas[i]);
    t->delta_i = t->plan.ndeltas;
    step_finish(e, t, b);
}

static void step_start(struct engine *e, struct turn *t)
{
    step_start_with(e, t, NULL);
}

/*
 * A new turn on llmsim at zero latency that calls no tool is decided at
 * once: its model step and its end go into the batch of the message that
 * starts it, so the whole turn is one commit (one fsync on the path from
 * POST to turn.completed instead of two).  All of it becomes durable, or
 * none.  Returns 0, having changed nothing, when the turn is of another
 * kind.
 */
static int step_start_merged(struct engine *e, struct turn *t, struct batch *b)
{
    struct live *ls = t->ls;
    const struct builtin_model *model = model_find(t->model_id[0] ? t->model_id : ls->model_id);
    if (model && strcmp(model->provider, "llmsim") != 0) return 0;
    sim_plan_for(t); /* made again by step_start if this returns 0 */
    const struct sim_plan *plan = &t->plan;
    if (plan->latency_ms > 0 || plan->ncalls) return 0;
    if (b->op.nevents + 10 + plan->ndeltas > (int)(sizeof(b->ev) / sizeof(b->ev[0]))) return 0;
    step_start_with(e, t, b);
    return 1;
}

static struct engine *g_engine; /* for timer callbacks: the one engine */
static int g_fault_point;

void engine_set_fault_point(int n)
{
    g_fault_point = n;
}

static void step_delta(void *ud)
{
    struct turn *t = ud;
    struct engine *e = g_engine;
    t->timer = NULL;
    if (t->state != T_THINKING) return;
    if (t->plan.fail_code || t->delta_i >= t->plan.ndeltas) {
        step_finish(e, t, NULL);
        return;
    }
    struct batch *b = batch_new(e, t->ls, t);
    delta_event(b, t, t->plan.deltas[t->delta_i++]);
    batch_submit(b);
    int n = t->plan.ndeltas ? t->plan.ndeltas : 1;
    t->timer = loop_timer_add(e->loop, t->plan.latency_ms / n, step_delta, t);
}

/* ---- tools ---- */

static void tool_result_message(struct batch *b, struct pending_call *c, const char *result_text,
                                const char *error, int64_t dur_ms)
{
    struct live *ls = b->ls;
    char mid[ID_MAX];
    id_new("message", mid);
    struct buf m;
    buf_init(&m, LD_MAX_RESPONSE);
    struct jw w;
    jw_init(&w, &m);
    message_head(&w, mid, ls->id, ls->next_seq, "tool_result");
    jw_key(&w, "content");
    jw_arr(&w);
    jw_obj(&w);
    jw_kstr(&w, "type", "tool_result");
    jw_kstr(&w, "tool_call_id", c->id);
    if (error)
        jw_kstr(&w, "error", error);
    else
        jw_kstr(&w, "result", result_text);
    jw_end(&w);
    jw_end(&w);
    jw_ktime(&w, "created_at", time_now_us());
    jw_end(&w);
    struct buf d;
    buf_init(&d, LD_MAX_RESPONSE);
    jw_init(&w, &d);
    jw_obj(&w);
    jw_kstr(&w, "tool_call_id", c->id);
    jw_kstr(&w, "tool_name", c->name);
    jw_kbool(&w, "success", error == NULL);
    jw_kstr(&w, "status", error ? "error" : "success");
    if (error) {
        jw_kstr(&w, "error", error);
    } else {
        jw_key(&w, "result");
        text_parts(&w, result_text);
    }
    jw_ki64(&w, "duration_ms", dur_ms);
    jw_key(&w, "message");
    jw_raw(&w, m.data);
    jw_end(&w);
    emit(b, "tool.completed", d.data, m.data);
    c->answered = 1;
    struct turn *t = b->turn;
    if (t) {
        if (t->results.len) buf_puts(&t->results, "; ");
        buf_printf(&t->results, "%.64s: ", c->name);
        buf_puts(&t->results, error ? error : result_text);
    }
    buf_free(&m);
    buf_free(&d);
}

static void emit_call_requested(struct batch *b, struct turn *t)
{
    struct buf d;
    buf_init(&d, LD_MAX_RESPONSE);
    buf_puts(&d, "{\"tool_calls\":[");
    int n = 0;
    for (int i = 0; i < t->ncalls; i++) {
        struct pending_call *c = &t->calls[i];
        if (!c->client || c->answered) continue;
        buf_printf(&d, "%s{\"id\":\"%s\",\"name\":", n++ ? "," : "", c->id);
        buf_json_str(&d, c->name);
        buf_printf(&d, ",\"arguments\":%s}", c->arguments);
    }
    buf_puts(&d, "]}");
    emit(b, "tool.call_requested", d.data, NULL);
    buf_free(&d);
    b->upd.set_status = 1;
    b->upd.status = SS_WAITING;
    t->state = T_WAITING;
}

static void next_iteration(struct batch *b);
static void fail_turn(struct engine *e, struct turn *t, struct batch *b, const char *code,
                      const char *text);

/* after the tool.started ledger is durable: run the server-side calls */
static void run_server_tools(struct batch *done)
{
    struct turn *t = done->turn;
    struct engine *e = done->e;
    if (done->op.err != LD_OK || t->state != T_TOOLS) return;
    if (g_fault_point == 1) abort(); /* testing: die between ledger and tools */
    struct batch *b = batch_new(e, t->ls, t);
    int ok = 0, bad = 0;
    /* the tools read committed state; their writes commit with their
     * tool.completed in this batch (see tools.h) */
    struct session_rec srec;
    struct tool_ctx ctx;
    memset(&ctx, 0, sizeof(ctx));
    ctx.st = e->st;
    ctx.a = &b->arena;
    ctx.session = &srec;
    int have = store_session_get(e->st, t->ls->org_id, t->ls->id, "", &b->arena, &srec) == LD_OK;
    for (int i = 0; i < t->ncalls; i++) {
        struct pending_call *c = &t->calls[i];
        if (c->client || c->answered) continue;
        struct buf out;
        buf_init(&out, TOOL_MAX_OUTPUT + 256);
        const char *error = NULL;
        int64_t t0 = time_mono_us();
        if (!have || !tool_available(&srec, c->name))
            error = "Unknown tool: no client-side or built-in tool of that name in this session";
        else
            tool_run(&ctx, c->name, c->arguments, &out, &error);
        tool_result_message(b, c, out.data ? out.data : "", error, (time_mono_us() - t0) / 1000);
        error ? bad++ : ok++;
        buf_free(&out);
    }
    if (ctx.neffects) {
        b->op.effects = arena_alloc(&b->arena, sizeof(ctx.effects[0]) * (size_t)ctx.neffects);
        memcpy(b->op.effects, ctx.effects, sizeof(ctx.effects[0]) * (size_t)ctx.neffects);
        b->op.neffects = ctx.neffects;
    }
    char data[160];
    snprintf(data, sizeof(data), "{\"completed\":true,\"success_count\":%d,\"error_count\":%d}", ok,
             bad);
    emit(b, "act.completed", data, NULL);
    int client_left = 0;
    for (int i = 0; i < t->ncalls; i++)
        if (t->calls[i].client && !t->calls[i].answered) client_left = 1;
    if (client_left) {
        emit_call_requested(b, t);
        batch_submit(b);
        return;
    }
    t->state = T_STARTING;
    b->then = next_iteration;
    batch_submit(b);
}

/* The calls of a step go on: the server-side ones not yet answered get
 * their ledger (act.started, tool.started), committed before they run
 * (run_server_tools); with only client-side ones open, they are requested. */
static void start_tools(struct batch *b, struct turn *t)
{
    int server = 0;
    for (int i = 0; i < t->ncalls; i++)
        if (!t->calls[i].client && !t->calls[i].answered) server++;
    if (!server) {
        emit_call_requested(b, t);
        return;
    }
    struct buf d;
    buf_init(&d, LD_MAX_RESPONSE);
    buf_puts(&d, "{\"tool_calls\":[");
    int n = 0;
    for (int i = 0; i < t->ncalls; i++) {
        if (t->calls[i].client || t->calls[i].answered) continue;
        buf_printf(&d, "%s{\"id\":\"%s\",\"name\":", n++ ? "," : "", t->calls[i].id);
        buf_json_str(&d, t->calls[i].name);
        buf_putc(&d, '}');
    }
    buf_puts(&d, "]}");
    emit(b, "act.started", d.data, NULL);
    for (int i = 0; i < t->ncalls; i++) {
        if (t->calls[i].client || t->calls[i].answered) continue;
        buf_reset(&d);
        buf_printf(&d, "{\"tool_call\":{\"id\":\"%s\",\"name\":", t->calls[i].id);
        buf_json_str(&d, t->calls[i].name);
        buf_printf(&d, ",\"arguments\":%s}}", t->calls[i].arguments);
        emit(b, "tool.started", d.data, NULL);
    }
    buf_free(&d);
    t->state = T_TOOLS;
    b->then = run_server_tools;
}

/* the model asked for tools: record the calls, run or request them */
static void tool_step(struct engine *e, struct turn *t, struct batch *b, int64_t now, int64_t dur)
{
    struct live *ls = t->ls;
    const struct sim_plan *p = &t->plan;
    turn_free_calls(t);
    struct buf d;
    buf_init(&d, LD_MAX_RESPONSE);
    struct buf calls;
    buf_init(&calls, LD_MAX_RESPONSE);
    struct buf parts;
    buf_init(&parts, LD_MAX_RESPONSE);
    for (int i = 0; i < p->ncalls; i++) {
        struct pending_call *c = &t->calls[t->ncalls++];
        str_copy(c->id, sizeof(c->id), p->calls[i].id);
        c->name = xstrdup(p->calls[i].name);
        c->arguments = xstrdup(p->calls[i].arguments);
        c->client = is_client_tool(ls, c->name);
        buf_printf(&calls, "%s{\"id\":\"%s\",\"name\":", i ? "," : "", c->id);
        buf_json_str(&calls, c->name);
        buf_printf(&calls, ",\"arguments\":%s}", c->arguments);
        buf_printf(&parts, "%s{\"type\":\"tool_call\",\"id\":\"%s\",\"name\":", i ? "," : "",
                   c->id);
        buf_json_str(&parts, c->name);
        buf_printf(&parts, ",\"arguments\":%s}", c->arguments);
    }
    t->tool_calls_total += t->ncalls;
    struct buf u;
    buf_init(&u, 256);
    usage_json(&u, p->input_tokens, p->output_tokens);
    buf_printf(&d,
               "{\"messages\":[],\"output\":{\"tool_calls\":[%s]},\"metadata\":{\"model\":"
               "\"llmsim\",\"provider\":\"llmsim\",\"usage\":%s,\"duration_ms\":%lld,"
               "\"success\":true}}",
               calls.data, u.data, (long long)dur);
    emit(b, "llm.generation", d.data, NULL);
    struct buf m;
    buf_init(&m, LD_MAX_RESPONSE);
    buf_printf(&m,
               "{\"id\":\"%s\",\"session_id\":\"%s\",\"sequence\":%lld,\"role\":\"agent\","
               "\"content\":[%s],\"phase\":\"commentary\",\"created_at\":",
               t->out_msg_id, ls->id, (long long)ls->next_seq, parts.data);
    char ts[40];
    time_format(now, ts, sizeof(ts));
    buf_printf(&m, "\"%s\"}", ts);
    buf_reset(&d);
    buf_printf(&d, "\"metadata\":{\"model\":\"llmsim\"},\"usage\":%s", u.data);
    emit(b, "output.message.completed", wrap_message(&b->arena, m.data, d.data), m.data);
    buf_reset(&d);
    buf_printf(&d,
               "{\"success\":true,\"has_tool_calls\":true,\"tool_call_count\":%d,"
               "\"duration_ms\":%lld,\"usage\":%s}",
               t->ncalls, (long long)dur, u.data);
    emit(b, "reason.completed", d.data, NULL);
    start_tools(b, t);
    buf_free(&d);
    buf_free(&u);
    buf_free(&m);
    buf_free(&calls);
    buf_free(&parts);
    batch_submit(b);
}

/* after tool results: one more model call, unless max_iterations is hit */
static void next_iteration(struct batch *done)
{
    struct turn *t = done->turn;
    if (done->op.err != LD_OK || !t || t->state != T_STARTING) return;
    if (t->iteration >= t->ls->max_iterations) {
        fail_turn(done->e, t, NULL, "max_iterations",
                  "The turn reached max_iterations without a final answer.");
        return;
    }
    step_start(done->e, t);
}

/* ---- real model calls (llm/curl.c) ---- */

/* The conversation in OpenAI chat format, rebuilt from the log. */
struct hist {
    struct buf *o;
    int n;
};

static void hist_add(const char *json, void *ud)
{
    struct hist *h = ud;
    json_t *m = json_loads(json, 0, NULL);
    const char *role = json_string_value(json_object_get(m, "role"));
    json_t *content = json_object_get(m, "content");
    struct buf text;
    buf_init(&text, LD_MAX_RESPONSE);
    json_t *calls = json_array();
    size_t i;
    json_t *p;
    json_array_foreach(content, i, p)
    {
        const char *type = json_string_value(json_object_get(p, "type"));
        if (!type) continue;
        if (strcmp(type, "text") == 0) {
            if (text.len) buf_putc(&text, '\n');
            buf_puts(&text, json_string_value(json_object_get(p, "text")));
        } else if (strcmp(type, "tool_call") == 0) {
            char *args =
                json_dumps(json_object_get(p, "arguments"), JSON_COMPACT | JSON_ENCODE_ANY);
            json_array_append_new(calls, json_pack("{s:O,s:s,s:{s:O,s:s}}", "id",
                                                   json_object_get(p, "id"), "type", "function",
                                                   "function", "name", json_object_get(p, "name"),
                                                   "arguments", args ? args : "{}"));
            free(args);
        } else if (strcmp(type, "tool_result") == 0) {
            const char *err = json_string_value(json_object_get(p, "error"));
            const char *res = json_string_value(json_object_get(p, "result"));
            json_t *tm = json_pack("{s:s,s:O,s:s}", "role", "tool", "tool_call_id",
                                   json_object_get(p, "tool_call_id"), "content",
                                   err   ? err
                                   : res ? res
                                         : "");
            char *d = json_dumps(tm, JSON_COMPACT);
            if (h->n++) buf_putc(h->o, ',');
            buf_puts(h->o, d);
            free(d);
            json_decref(tm);
        }
    }
    if (role && strcmp(role, "tool_result") != 0) {
        json_t *om =
            json_pack("{s:s,s:s}", "role", strcmp(role, "agent") == 0 ? "assistant" : "user",
                      "content", text.data ? text.data : "");
        if (json_array_size(calls)) json_object_set(om, "tool_calls", calls);
        char *d = json_dumps(om, JSON_COMPACT);
        if (h->n++) buf_putc(h->o, ',');
        buf_puts(h->o, d);
        free(d);
        json_decref(om);
    }
    json_decref(calls);
    buf_free(&text);
    json_decref(m);
}

/*
 * A real model streams its answer in chunks of a token or a few.  One event
 * per chunk would make one durable write per token, and since every delta
 * carries the whole text so far (`accumulated`), a stored answer would grow
 * with the square of its length.  So the text is gathered for
 * --delta-interval-ms (100 ms, as Everruns batches) and goes out as one
 * delta; whatever is gathered goes out before anything else the turn
 * emits (the answer's end, a failure, a cancel).
 */
static struct batch *pending_delta(struct engine *e, struct turn *t, struct batch *b)
{
    if (t->pend_timer) {
        loop_timer_cancel(e->loop, t->pend_timer);
        t->pend_timer = NULL;
    }
    if (t->pend.len == 0) return b;
    if (!b) b = batch_new(e, t->ls, t);
    delta_event(b, t, t->pend.data);
    buf_reset(&t->pend);
    return b;
}

static void pending_due(void *ud)
{
    struct turn *t = ud;
    t->pend_timer = NULL;
    if (t->state != T_THINKING) return;
    struct batch *b = pending_delta(g_engine, t, NULL);
    if (b) batch_submit(b);
}

static void call_delta(void *ud, const char *delta)
{
    struct turn *t = ud;
    struct engine *e = g_engine;
    if (t->state != T_THINKING) return;
    buf_puts(&t->pend, delta);
    if (e->delta_ms <= 0)
        pending_due(t); /* one event per chunk */
    else if (!t->pend_timer)
        t->pend_timer = loop_timer_add(e->loop, e->delta_ms, pending_due, t);
}

static void call_done(void *ud, const struct llm_result *r)
{
    struct turn *t = ud;
    struct engine *e = g_engine;
    t->call = NULL;
    if (t->state == T_THINKING) {
        struct sim_plan *p = &t->plan;
        memset(p, 0, sizeof(*p));
        p->text = arena_strdup(&t->arena, r->text);
        p->input_tokens = r->input_tokens;
        p->output_tokens = r->output_tokens;
        p->cache_read_tokens = r->cache_read_tokens;
        if (r->error_code) {
            p->fail_code = arena_strdup(&t->arena, r->error_code);
            p->fail_text = arena_strdup(&t->arena, r->error_text ? r->error_text : "");
        }
        for (int i = 0; i < r->ncalls; i++) {
            struct sim_call *c = &p->calls[p->ncalls++];
            if (r->calls[i].id[0])
                str_copy(c->id, sizeof(c->id), r->calls[i].id);
            else
                snprintf(c->id, sizeof(c->id), "call_%d_%d", t->iteration, i);
            c->name = arena_strdup(&t->arena, r->calls[i].name);
            c->arguments = arena_strdup(&t->arena, r->calls[i].arguments);
        }
        step_finish(e, t, pending_delta(e, t, NULL));
    }
    turn_release(e, t); /* the call's reference */
}

/* THINKING with a real model: open the answer, then stream it */
static void step_call(struct engine *e, struct turn *t, const struct builtin_model *model)
{
    struct live *ls = t->ls;
    id_new("message", t->out_msg_id);
    struct batch *b = batch_new(e, ls, t);
    struct buf d;
    buf_init(&d, 4096);
    buf_printf(&d, "{\"harness_id\":\"%s\"", ls->harness_id);
    if (ls->agent_id[0]) buf_printf(&d, ",\"agent_id\":\"%s\"", ls->agent_id);
    buf_puts(&d, ",\"metadata\":{\"model\":");
    buf_json_str(&d, model->name);
    buf_puts(&d, "}}");
    emit(b, "reason.started", d.data, NULL);
    buf_reset(&d);
    buf_printf(&d, "{\"turn_id\":\"%s\",\"message_id\":\"%s\",\"model\":", t->id, t->out_msg_id);
    buf_json_str(&d, model->name);
    buf_printf(&d, ",\"iteration\":%d,\"phase\":\"final_answer\"}", t->iteration);
    emit(b, "output.message.started", d.data, NULL);
    buf_free(&d);
    batch_submit(b);
    struct buf msgs;
    buf_init(&msgs, 64u << 20);
    buf_putc(&msgs, '[');
    struct hist h = {&msgs, 0};
    if (ls->system_prompt && *ls->system_prompt) {
        buf_puts(&msgs, "{\"role\":\"system\",\"content\":");
        buf_json_str(&msgs, ls->system_prompt);
        buf_putc(&msgs, '}');
        h.n++;
    }
    store_messages(e->st, ls->id, hist_add, &h);
    buf_putc(&msgs, ']');
    const struct llm_provider *prov =
        strcmp(model->provider, "anthropic") == 0 ? &e->anthropic : &e->openai;
    t->refs++; /* held by the call until call_done or cancel */
    /* a history past the buffer would go out cut, as invalid JSON */
    t->call = msgs.overflow ? NULL
                            : llm_start(e->llm, prov, model->name, msgs.data, ls->tool_defs,
                                        ls->parallel_tool_calls, call_delta, call_done, t);
    int too_big = msgs.overflow;
    buf_free(&msgs);
    if (!t->call) {
        t->refs--;
        struct llm_result r = {.text = "",
                               .error_code = "llm_error",
                               .error_text = too_big ? "The session's history is over 64 MiB, more "
                                                       "than is sent to a model."
                                                     : "The model call could not be started."};
        t->refs++;
        call_done(t, &r);
    }
}

static void finished(struct batch *b);

/* A failing turn never answers what was steered into it: the newest such
 * message starts the next turn instead (see finished). */
static void requeue_steered(struct live *ls)
{
    if (!ls->steered) return;
    ls->steered = 0;
    ls->queued = 1;
}

/* The model call is over: the answer (or failure) and, unless messages
 * were steered in meanwhile, the end of the turn. */
static void step_finish(struct engine *e, struct turn *t, struct batch *b)
{
    struct live *ls = t->ls;
    if (!b) b = batch_new(e, ls, t);
    int64_t now = time_now_us();
    int64_t dur = (time_mono_us() - t->started_mono) / 1000;
    const struct sim_plan *p = &t->plan;
    t->in_tokens += p->input_tokens;
    t->out_tokens += p->output_tokens;
    b->upd.add_in = p->input_tokens;
    b->upd.add_out = p->output_tokens;
    b->upd.add_cache_read = p->cache_read_tokens;
    ls->in_tokens += p->input_tokens;
    ls->out_tokens += p->output_tokens;
    ls->cache_read += p->cache_read_tokens;
    struct buf d;
    buf_init(&d, LD_MAX_RESPONSE);
    struct buf u;
    buf_init(&u, 256);
    usage_json(&u, p->input_tokens, p->output_tokens);
    if (!p->fail_code && p->ncalls) {
        buf_free(&d);
        buf_free(&u);
        tool_step(e, t, b, now, dur);
        return;
    }
    if (p->fail_code) {
        buf_puts(&d, "{\"success\":false,\"has_tool_calls\":false,\"tool_call_count\":0,"
                     "\"error\":");
        buf_json_str(&d, p->fail_text);
        buf_printf(&d, ",\"duration_ms\":%lld}", (long long)dur);
        emit(b, "reason.completed", d.data, NULL);
        /* the user-facing text, then the failure */
        const char *msg =
            agent_message(&b->arena, t->out_msg_id, ls->id, ls->next_seq,
                          "Sorry, the model could not answer. Please try again.", now);
        char extra[160];
        snprintf(extra, sizeof(extra), "\"error_code\":\"%.100s\"", p->fail_code);
        emit(b, "output.message.completed", wrap_message(&b->arena, msg, extra), msg);
        buf_reset(&d);
        buf_printf(&d, "{\"turn_id\":\"%s\",\"error\":", t->id);
        buf_json_str(&d, p->fail_text);
        buf_puts(&d, ",\"error_code\":");
        buf_json_str(&d, p->fail_code);
        buf_putc(&d, '}');
        emit(b, "turn.failed", d.data, NULL);
        b->upd.set_outcome = 1;
        b->upd.outcome = TO_FAILED;
        requeue_steered(ls);
    } else {
        const char *text = p->text;
        /* llm.generation: the call, its output and usage */
        buf_printf(&d, "{\"messages\":[");
        buf_puts(&d, "],\"output\":{\"text\":");
        buf_json_str(&d, text);
        buf_printf(&d,
                   ",\"tool_calls\":[]},\"metadata\":{\"model\":\"llmsim\",\"provider\":\"llmsim\","
                   "\"usage\":%s,\"duration_ms\":%lld,\"success\":true}}",
                   u.data, (long long)dur);
        emit(b, "llm.generation", d.data, NULL);
        const char *msg = agent_message(&b->arena, t->out_msg_id, ls->id, ls->next_seq, text, now);
        buf_reset(&d);
        buf_puts(&d, "\"metadata\":{\"model\":\"llmsim\"},\"usage\":");
        buf_puts(&d, u.data);
        emit(b, "output.message.completed", wrap_message(&b->arena, msg, d.data), msg);
        buf_reset(&d);
        buf_printf(&d,
                   "{\"success\":true,\"has_tool_calls\":false,\"tool_call_count\":0,"
                   "\"duration_ms\":%lld,\"usage\":%s,\"text_preview\":",
                   (long long)dur, u.data);
        buf_json_strn(&d, text, strlen(text) > 200 ? 200 : strlen(text));
        buf_putc(&d, '}');
        emit(b, "reason.completed", d.data, NULL);
        b->upd.output_preview =
            arena_strndup(&b->arena, text, strlen(text) > 200 ? 200 : strlen(text));
        if (ls->steered > 0) {
            /* messages arrived while thinking: one more model call */
            buf_free(&d);
            buf_free(&u);
            t->state = T_STARTING;
            b->then = after_activation;
            batch_submit(b);
            return;
        }
        buf_reset(&d);
        struct buf tu;
        buf_init(&tu, 256);
        usage_json(&tu, t->in_tokens, t->out_tokens);
        buf_printf(&d,
                   "{\"turn_id\":\"%s\",\"iterations\":%d,\"duration_ms\":%lld,\"usage\":%s,"
                   "\"final_message_id\":\"%s\",\"final_answer_preview\":",
                   t->id, t->iteration, (long long)dur, tu.data, t->out_msg_id);
        buf_json_strn(&d, text, strlen(text) > 200 ? 200 : strlen(text));
        buf_printf(&d, ",\"llm_call_count\":%d,\"tool_call_count\":%d,\"status\":\"completed\"}",
                   t->iteration, t->tool_calls_total);
        emit(b, "turn.completed", d.data, NULL);
        buf_free(&tu);
        b->upd.set_outcome = 1;
        b->upd.outcome = TO_COMPLETED;
    }
    buf_free(&d);
    buf_free(&u);
    emit_idled(b, t);
    t->state = T_FINISHING;
    b->then = finished;
    batch_submit(b);
}

static void start_turn_for(struct engine *e, struct live *ls, const char *input_msg_id,
                           void (*then)(struct batch *), struct batch *b_in);

/* the session is idle (durably): a message queued meanwhile starts its turn */
static void queued_next(struct batch *b)
{
    struct live *ls = b->ls;
    if (b->op.err != LD_OK || ls->turn || !ls->queued) return;
    ls->queued = 0;
    start_turn_for(b->e, ls, ls->queued_msg_id, after_activation, NULL);
}

/* FINISHING -> DONE: the idle is durable; a queued message starts the next turn */
static void finished(struct batch *b)
{
    struct turn *t = b->turn;
    struct engine *e = b->e;
    if (b->op.err != LD_OK) return; /* live_break let the turn go */
    if (t->state == T_FINISHING) t->state = T_DONE;
    if (b->ls->turn == t) b->ls->turn = NULL;
    turn_release(e, t); /* the live record's reference */
    queued_next(b);
}

/* ends a running turn with turn.failed + session.idled */
static void fail_turn(struct engine *e, struct turn *t, struct batch *b, const char *code,
                      const char *text)
{
    struct live *ls = t->ls;
    if (!b) b = batch_new(e, ls, t);
    char data[512];
    snprintf(data, sizeof(data), "{\"turn_id\":\"%s\",\"error\":\"%s\",\"error_code\":\"%s\"}",
             t->id, text, code);
    emit(b, "turn.failed", data, NULL);
    emit_idled(b, t);
    b->upd.set_outcome = 1;
    b->upd.outcome = TO_FAILED;
    requeue_steered(ls);
    t->state = T_FINISHING;
    b->then = finished;
    batch_submit(b);
}

static void start_turn_for(struct engine *e, struct live *ls, const char *input_msg_id,
                           void (*then)(struct batch *), struct batch *b_in)
{
    struct turn *t = turn_new(e, ls, input_msg_id);
    struct batch *b = b_in ? b_in : batch_new(e, ls, t);
    if (b_in) {
        b->turn = t;
        t->refs++;
    }
    emit_activation(b, t, time_now_us());
    b->then = then;
    if (!b_in) batch_submit(b);
}

/* ---- posting messages ---- */

static void abandon_turn(struct batch *b);

/* answers the repeats of a client_message_id that waited for this batch */
static void release_cid(struct batch *b)
{
    struct cid_wait *c = b->cid;
    if (!c) return;
    for (struct cid_wait **p = &b->ls->cids; *p; p = &(*p)->next)
        if (*p == c) {
            *p = c->next;
            break;
        }
    while (c->waiters) {
        struct dup_waiter *w = c->waiters;
        c->waiters = w->next;
        if (b->op.err == LD_OK)
            w->fn(w->ud, LD_OK, NULL, b->reply_msg, "duplicate");
        else
            w->fn(w->ud, b->op.err, b->op.detail, NULL, NULL);
        free(w);
    }
    free(c);
    b->cid = NULL;
}

/* answers the POST: the message is durable (or failed) */
static void message_answer(struct batch *b)
{
    engine_msg_fn fn = (engine_msg_fn)(void (*)(void))b->cb;
    release_cid(b);
    if (b->op.err != LD_OK) {
        fn(b->cb_ud, b->op.err, b->op.detail, NULL, NULL);
        abandon_turn(b);
        return;
    }
    fn(b->cb_ud, LD_OK, NULL, b->reply_msg, b->delivery);
}

static void message_committed(struct batch *b)
{
    message_answer(b);
    if (b->op.err == LD_OK && b->turn && b->turn->state == T_STARTING) step_start(b->e, b->turn);
}

/* a turn whose first commit failed never ran: forget it */
static void abandon_turn(struct batch *b)
{
    struct turn *t = b->turn;
    if (!t || t->state != T_STARTING) return;
    t->state = T_DONE;
    if (b->ls->turn == t) b->ls->turn = NULL;
    turn_release(b->e, t);
}

struct dup_find {
    const char *cid;
    char *found;
};

/* a stored message whose own client_message_id is the one looked for (not
 * one that merely mentions it, in its metadata say) */
static void dup_cb(const char *json, void *ud)
{
    struct dup_find *d = ud;
    if (d->found || !strstr(json, d->cid)) return;
    json_t *m = json_loads(json, 0, NULL);
    const char *v = json_string_value(json_object_get(m, "client_message_id"));
    if (v && strcmp(v, d->cid) == 0) d->found = strdup(json);
    json_decref(m);
}

void engine_post_message(struct engine *e, const struct session_rec *s,
                         const struct engine_input *in, engine_msg_fn fn, void *ud)
{
    struct live *ls = live_get(e, s);
    if (ls->broken) {
        fn(ud, LD_E_UNAVAILABLE, STORE_REPAIR_DETAIL, NULL, NULL);
        return;
    }
    struct cid_wait *cw = NULL;
    if (in->client_message_id) {
        for (struct cid_wait *c = ls->cids; c; c = c->next)
            if (strcmp(c->cid, in->client_message_id) == 0) {
                /* the first post of this id is not durable yet: answer with it */
                struct dup_waiter *w = xcalloc(1, sizeof(*w));
                w->fn = fn;
                w->ud = ud;
                w->next = c->waiters;
                c->waiters = w;
                return;
            }
        struct dup_find d = {in->client_message_id, NULL};
        store_messages(e->st, s->id, dup_cb, &d);
        if (d.found) {
            fn(ud, LD_OK, NULL, d.found, "duplicate");
            free(d.found);
            live_maybe_free(e, ls);
            return;
        }
        cw = xcalloc(1, sizeof(*cw));
        str_copy(cw->cid, sizeof(cw->cid), in->client_message_id);
        cw->next = ls->cids;
        ls->cids = cw;
    }
    free(ls->last_text);
    ls->last_text = xstrdup(in->text ? in->text : "");
    free(ls->last_hints);
    ls->last_hints = in->hints ? xstrdup(in->hints) : NULL;
    struct batch *b = batch_new(e, ls, NULL);
    b->cb = (void *)(void (*)(void))fn;
    b->cb_ud = ud;
    b->cid = cw;
    char msg_id[ID_MAX];
    id_new("message", msg_id);
    int64_t now = time_now_us();
    const char *msg = user_message(&b->arena, msg_id, ls->id, ls->next_seq, in->content,
                                   in->controls, in->metadata, in->client_message_id, now);
    b->reply_msg = msg;
    b->upd.preview = arena_strndup(&b->arena, ls->last_text,
                                   strlen(ls->last_text) > 200 ? 200 : strlen(ls->last_text));
    b->then = message_committed;
    if (!ls->turn) {
        /* idle: the input, the activation and the turn's start share a commit */
        struct event_rec *ev = emit(b, "input.message", wrap_message(&b->arena, msg, NULL), msg);
        (void)ev;
        b->delivery = "started";
        struct turn *t = turn_new(e, ls, msg_id);
        if (in->model_id) str_copy(t->model_id, sizeof(t->model_id), in->model_id);
        b->turn = t;
        t->refs++;
        emit_activation(b, t, now);
        ev->turn_id = NULL;
        /* answered first, whether the batch is submitted here or below */
        b->first = message_answer;
        b->then = NULL;
        if (step_start_merged(e, t, b)) return; /* step_finish set `then`, submitted */
        b->first = NULL;
        b->then = message_committed;
    } else if (ls->turn->state == T_WAITING) {
        /* the user spoke instead of answering the tool calls: close them,
         * and the turn goes on with the new message */
        struct turn *t = ls->turn;
        b->turn = t;
        t->refs++;
        for (int i = 0; i < t->ncalls; i++)
            if (t->calls[i].client && !t->calls[i].answered)
                tool_result_message(b, &t->calls[i], NULL,
                                    "Cancelled because the user sent a message instead", 0);
        /* the message's sequence moved: build it again */
        msg = user_message(&b->arena, msg_id, ls->id, ls->next_seq, in->content, in->controls,
                           in->metadata, in->client_message_id, now);
        b->reply_msg = msg;
        emit(b, "input.message", wrap_message(&b->arena, msg, NULL), msg);
        b->upd.set_status = 1;
        b->upd.status = SS_ACTIVE;
        b->delivery = "steered";
        buf_reset(&t->results);
        t->state = T_STARTING;
    } else if (ls->turn->state == T_FINISHING) {
        emit(b, "input.message", wrap_message(&b->arena, msg, NULL), msg);
        b->delivery = "queued";
        ls->queued++;
        str_copy(ls->queued_msg_id, sizeof(ls->queued_msg_id), msg_id);
    } else {
        emit(b, "input.message", wrap_message(&b->arena, msg, NULL), msg);
        b->delivery = "steered";
        ls->steered++;
        /* if the turn fails before it answers, this starts the next one */
        str_copy(ls->queued_msg_id, sizeof(ls->queued_msg_id), msg_id);
    }
    batch_submit(b);
}

/* ---- tool results (client-side tools) ---- */

static void results_committed(struct batch *b)
{
    engine_results_fn fn = (engine_results_fn)(void (*)(void))b->cb;
    struct turn *t = b->turn;
    int resumed = t && t->state == T_STARTING;
    fn(b->cb_ud, b->op.err, b->op.detail, b->op.nevents, resumed);
    if (b->op.err == LD_OK && resumed) next_iteration(b);
}

void engine_tool_results(struct engine *e, const struct session_rec *s,
                         const struct engine_tool_result *res, int n, engine_results_fn fn,
                         void *ud)
{
    struct live *ls = live_find(e, s->id);
    struct turn *t = ls ? ls->turn : NULL;
    if (ls && ls->broken) {
        fn(ud, LD_E_UNAVAILABLE, STORE_REPAIR_DETAIL, 0, 0);
        return;
    }
    if (!t || t->state != T_WAITING) {
        fn(ud, LD_E_CONFLICT, "not waiting", 0, 0);
        return;
    }
    for (int i = 0; i < n; i++) {
        int hit = 0;
        for (int k = 0; k < t->ncalls; k++)
            if (t->calls[k].client && !t->calls[k].answered &&
                strcmp(t->calls[k].id, res[i].tool_call_id) == 0)
                hit = 1;
        for (int j = 0; j < i; j++)
            if (strcmp(res[j].tool_call_id, res[i].tool_call_id) == 0) hit = 0;
        if (!hit) {
            char d[160];
            snprintf(d, sizeof(d), "tool_results[%d].tool_call_id: '%.60s' is not a pending call",
                     i, res[i].tool_call_id);
            fn(ud, LD_E_BAD_REQUEST, d, 0, 0);
            return;
        }
    }
    struct batch *b = batch_new(e, ls, t);
    b->cb = (void *)(void (*)(void))fn;
    b->cb_ud = ud;
    for (int i = 0; i < n; i++)
        for (int k = 0; k < t->ncalls; k++)
            if (strcmp(t->calls[k].id, res[i].tool_call_id) == 0)
                tool_result_message(b, &t->calls[k], res[i].result, res[i].error, 0);
    int left = 0;
    for (int k = 0; k < t->ncalls; k++)
        if (t->calls[k].client && !t->calls[k].answered) left++;
    if (!left) {
        b->upd.set_status = 1;
        b->upd.status = SS_ACTIVE;
        t->state = T_STARTING;
    }
    b->then = results_committed;
    batch_submit(b);
}

/* ---- cancel ---- */

static void cancel_committed(struct batch *b)
{
    engine_cancel_fn fn = (engine_cancel_fn)(void (*)(void))b->cb;
    fn(b->cb_ud, b->op.err, b->op.err == LD_OK);
}

void engine_cancel(struct engine *e, const struct session_rec *s, engine_cancel_fn fn, void *ud)
{
    struct live *ls = live_find(e, s->id);
    struct turn *t = ls ? ls->turn : NULL;
    if (ls && ls->broken) {
        fn(ud, LD_E_UNAVAILABLE, 0);
        return;
    }
    if (!t || t->state == T_FINISHING || t->state == T_DONE || t->state == T_CANCELLED) {
        fn(ud, LD_OK, 0);
        return;
    }
    t->state = T_CANCELLED;
    turn_halt(e, t);
    /* the text streamed so far goes out before the cancel */
    struct batch *b = pending_delta(e, t, batch_new(e, ls, t));
    b->cb = (void *)(void (*)(void))fn;
    b->cb_ud = ud;
    int64_t now = time_now_us();
    struct buf d;
    buf_init(&d, 1024);
    struct buf u;
    buf_init(&u, 256);
    usage_json(&u, t->in_tokens, t->out_tokens);
    buf_printf(&d, "{\"turn_id\":\"%s\",\"reason\":\"User requested cancellation\",\"usage\":%s}",
               t->id, u.data);
    emit(b, "turn.cancelled", d.data, NULL);
    char mid[ID_MAX];
    id_new("message", mid);
    const char *um = user_message(&b->arena, mid, ls->id, ls->next_seq,
                                  "[{\"type\":\"text\",\"text\":\"User requested to cancel the "
                                  "work.\"}]",
                                  NULL, NULL, NULL, now);
    emit(b, "input.message", wrap_message(&b->arena, um, NULL), um);
    id_new("message", mid);
    const char *am =
        agent_message(&b->arena, mid, ls->id, ls->next_seq, "Work was cancelled by user.", now);
    emit(b, "output.message.completed", wrap_message(&b->arena, am, NULL), am);
    buf_free(&d);
    buf_free(&u);
    emit_idled(b, t);
    b->upd.set_outcome = 1;
    b->upd.outcome = TO_CANCELLED;
    b->then = cancel_committed;
    ls->turn = NULL;
    ls->steered = 0;
    t->refs--; /* the live record's reference */
    batch_submit(b);
    /* a message queued behind the cancelled turn starts its own */
    if (ls->queued) {
        ls->queued = 0;
        start_turn_for(e, ls, ls->queued_msg_id, after_activation, NULL);
    }
}

/* ---- subscribers ---- */

int64_t engine_subscribe(struct engine *e, const struct session_rec *s, struct engine_sub *sub)
{
    struct live *ls = live_get(e, s);
    sub->next = ls->subs;
    ls->subs = sub;
    return ls->committed_seq;
}

void engine_session_deleted(struct engine *e, const char *session_id)
{
    struct live *ls = live_find(e, session_id);
    if (!ls) return;
    /* on_gone only marks a stream to end; it leaves the list as it is */
    for (struct engine_sub *s = ls->subs; s; s = s->next)
        if (s->on_gone) s->on_gone(s);
}

void engine_unsubscribe(struct engine *e, const char *session_id, struct engine_sub *sub)
{
    struct live *ls = live_find(e, session_id);
    if (!ls) return;
    for (struct engine_sub **p = &ls->subs; *p; p = &(*p)->next)
        if (*p == sub) {
            *p = sub->next;
            break;
        }
    live_maybe_free(e, ls);
}

/* ---- life ---- */

struct engine *engine_new(struct store *st, struct loop *l, const struct config *cfg)
{
    struct engine *e = xcalloc(1, sizeof(*e));
    e->st = st;
    e->loop = l;
    e->llm = llm_new(l, cfg->llm_timeout * 1000, (int)cfg->llm_retries);
    e->delta_ms = cfg->delta_interval_ms;
    e->openai = (struct llm_provider){"openai", cfg->openai_base_url, cfg->openai_api_key};
    e->anthropic =
        (struct llm_provider){"anthropic", cfg->anthropic_base_url, cfg->anthropic_api_key};
    g_engine = e;
    return e;
}

void engine_free(struct engine *e)
{
    if (!e) return;
    for (int i = 0; i < LIVE_BUCKETS; i++)
        while (e->buckets[i]) {
            struct live *l = e->buckets[i];
            e->buckets[i] = l->next;
            if (l->turn) {
                if (l->turn->timer) loop_timer_cancel(e->loop, l->turn->timer);
                if (l->turn->pend_timer) loop_timer_cancel(e->loop, l->turn->pend_timer);
                turn_free_calls(l->turn);
                buf_free(&l->turn->acc);
                buf_free(&l->turn->pend);
                buf_free(&l->turn->results);
                arena_free(&l->turn->arena);
                free(l->turn);
            }
            while (l->cids) {
                struct cid_wait *c = l->cids;
                l->cids = c->next;
                while (c->waiters) {
                    struct dup_waiter *w = c->waiters;
                    c->waiters = w->next;
                    free(w);
                }
                free(c);
            }
            if (l->repair_timer) loop_timer_cancel(e->loop, l->repair_timer);
            free(l->last_text);
            free(l->last_hints);
            free(l->client_tools);
            free(l->tool_defs);
            free(l->system_prompt);
            free(l);
        }
    if (g_engine == e) g_engine = NULL;
    llm_free(e->llm);
    free(e);
}

int engine_session_busy(struct engine *e, const char *session_id)
{
    struct live *l = live_find(e, session_id);
    return l && (l->turn || l->queued || l->inflight || l->broken);
}

long engine_running(struct engine *e)
{
    return e->running;
}

/* ---- resuming a turn after a crash ----
 *
 * The log says how far a turn got; every step's events commit together,
 * so the turn is at one of these points, and goes on from there:
 *   - waiting for client tool results: it waits again (nothing emitted);
 *   - server-side calls whose tool.started is durable but not their
 *     tool.completed: their effects commit with tool.completed, so none
 *     happened; they run now (once);
 *   - calls answered, or an answer given with messages steered in: the
 *     next model call;
 *   - a model call in progress: it starts again (reason.recovered
 *     {mode:"restart"}); a completed one is never redone.
 * A turn that has restarted 3 times without getting further is failed.
 */
struct replay {
    struct turn *t;
    int found, ended, waiting, acted, recovered, step_open;
    char input_text[4096];
    char *hints;
};

static void replay_event(struct replay *r, json_t *ev, struct live *ls)
{
    const char *type = json_string_value(json_object_get(ev, "type"));
    json_t *data = json_object_get(ev, "data");
    struct turn *t = r->t;
    if (!type) return;
    if (strcmp(type, "input.message") == 0) {
        json_t *m = json_object_get(data, "message");
        json_t *p0 = json_array_get(json_object_get(m, "content"), 0);
        const char *txt = json_string_value(json_object_get(p0, "text"));
        if (txt) str_copy(r->input_text, sizeof(r->input_text), txt);
        json_t *h =
            json_object_get(json_object_get(json_object_get(m, "controls"), "hints"), "llmsim");
        free(r->hints);
        r->hints = json_is_object(h) ? json_dumps(h, JSON_COMPACT) : NULL;
    } else if (strcmp(type, "reason.started") == 0) {
        t->iteration++;
        r->step_open = 1;
        r->waiting = r->acted = 0;
        turn_free_calls(t);
    } else if (strcmp(type, "output.message.completed") == 0) {
        r->step_open = 0;
        size_t i;
        json_t *p;
        json_array_foreach(json_object_get(json_object_get(data, "message"), "content"), i, p)
        {
            if (strcmp(json_string_value(json_object_get(p, "type")) ?: "", "tool_call") != 0 ||
                t->ncalls == SIM_MAX_CALLS)
                continue;
            struct pending_call *c = &t->calls[t->ncalls++];
            str_copy(c->id, sizeof(c->id), json_string_value(json_object_get(p, "id")) ?: "");
            c->name = xstrdup(json_string_value(json_object_get(p, "name")) ?: "");
            char *args =
                json_dumps(json_object_get(p, "arguments"), JSON_COMPACT | JSON_ENCODE_ANY);
            c->arguments = xstrdup(args ? args : "{}");
            free(args);
            c->client = is_client_tool(ls, c->name);
        }
        t->tool_calls_total += t->ncalls;
    } else if (strcmp(type, "reason.completed") == 0) {
        r->step_open = 0;
    } else if (strcmp(type, "act.started") == 0) {
        r->acted = 1;
    } else if (strcmp(type, "tool.call_requested") == 0) {
        r->waiting = 1;
    } else if (strcmp(type, "tool.completed") == 0) {
        const char *id = json_string_value(json_object_get(data, "tool_call_id")) ?: "";
        for (int i = 0; i < t->ncalls; i++)
            if (strcmp(t->calls[i].id, id) == 0) t->calls[i].answered = 1;
        const char *err = json_string_value(json_object_get(data, "error"));
        json_t *res0 = json_array_get(json_object_get(data, "result"), 0);
        if (t->results.len) buf_puts(&t->results, "; ");
        buf_printf(&t->results, "%.64s: %s",
                   json_string_value(json_object_get(data, "tool_name")) ?: "",
                   err ? err : json_string_value(json_object_get(res0, "text")) ?: "");
    } else if (strcmp(type, "reason.recovered") == 0) {
        r->recovered++;
    } else if (!strncmp(type, "turn.", 5) && strcmp(type, "turn.started") != 0) {
        r->ended = 1;
    }
}

static int resume_turn(struct engine *e, struct live *ls, const char *tid)
{
    /* the turn's start, the newest input before it, then the turn's own
     * events a page at a time (each page in its own arena: events may be
     * megabytes) */
    struct arena a;
    arena_init(&a);
    struct event_rec start;
    if (store_event_find(e->st, ls->id, "turn.started", tid, 0, &a, &start) != LD_OK) {
        arena_free(&a);
        return 0;
    }
    json_t *ts = json_loads(start.body, 0, NULL);
    const char *input =
        json_string_value(json_object_get(json_object_get(ts, "data"), "input_message_id"));
    struct turn *t = turn_new(e, ls, input ? input : "");
    json_decref(ts);
    str_copy(t->id, sizeof(t->id), tid);
    struct replay r;
    memset(&r, 0, sizeof(r));
    r.t = t;
    struct event_rec in;
    if (store_event_find(e->st, ls->id, "input.message", NULL, start.seq + 1, &a, &in) == LD_OK) {
        json_t *ev = json_loads(in.body, 0, NULL);
        replay_event(&r, ev, ls);
        json_decref(ev);
    }
    int64_t cur = start.seq;
    arena_free(&a);
    for (int more = 1; more;) {
        struct arena pa;
        arena_init(&pa);
        struct event_rec *rows;
        int n = 0;
        if (store_events_page(e->st, ls->id, cur, 0, 500, 0, &pa, &rows, &n, &more) != LD_OK)
            more = 0;
        for (int i = 0; i < n; i++) {
            json_t *ev = json_loads(rows[i].body, 0, NULL);
            replay_event(&r, ev, ls);
            json_decref(ev);
            cur = rows[i].seq;
        }
        arena_free(&pa);
    }
    free(ls->last_text);
    ls->last_text = xstrdup(r.input_text);
    free(ls->last_hints);
    ls->last_hints = r.hints;
    if (r.ended || r.recovered >= 3) {
        t->state = T_DONE;
        ls->turn = NULL;
        turn_release(e, t);
        return 0;
    }
    int server_open = 0, client_open = 0, calls = t->ncalls;
    for (int i = 0; i < t->ncalls; i++)
        if (!t->calls[i].answered) t->calls[i].client ? client_open++ : server_open++;
    if (calls && (server_open || client_open)) {
        if (!server_open && r.waiting) {
            t->state = T_WAITING; /* the client may still answer */
            return 1;
        }
        if (server_open && r.acted) {
            t->state = T_TOOLS; /* the ledger holds their tool.started */
            struct batch fake;
            memset(&fake, 0, sizeof(fake));
            fake.e = e;
            fake.turn = t;
            run_server_tools(&fake);
            return 1;
        }
        struct batch *b = batch_new(e, ls, t);
        start_tools(b, t);
        batch_submit(b);
        return 1;
    }
    struct batch *b = batch_new(e, ls, t);
    t->state = T_STARTING;
    if (r.step_open) {
        char data[256];
        snprintf(data, sizeof(data),
                 "{\"turn_id\":\"%s\",\"mode\":\"restart\",\"accumulated_len\":0}", t->id);
        emit(b, "reason.recovered", data, NULL);
        b->then = after_activation;
    } else {
        b->then = next_iteration; /* calls answered, or steered input */
    }
    batch_submit(b);
    return 1;
}

/* Ends or resumes the turn the stored session says is running (after a
 * restart, or a repair).  `why` goes into the turn.failed of a turn that
 * cannot be resumed. */
static void recover_turn(struct engine *e, struct live *ls, const char *tid, const char *why)
{
    if (tid[0] && resume_turn(e, ls, tid)) {
        log_warn("resuming a turn left running", "session", ls->id, "turn", tid, NULL);
        return;
    }
    struct batch *b = batch_new(e, ls, NULL);
    char data[512];
    /* a stand-in turn, only so that the events carry its id as context */
    struct turn ctx;
    memset(&ctx, 0, sizeof(ctx));
    str_copy(ctx.id, sizeof(ctx.id), tid);
    if (tid[0]) b->turn = &ctx;
    snprintf(data, sizeof(data),
             "{\"turn_id\":\"%s\",\"error\":\"%s\",\"error_code\":\"processing_error\"}", tid, why);
    struct event_rec *ev = emit(b, "turn.failed", data, NULL);
    ev->turn_id = tid[0] ? arena_strdup(&b->arena, tid) : NULL;
    snprintf(data, sizeof(data), "{\"turn_id\":\"%s\"}", tid);
    ev = emit(b, "session.idled", data, NULL);
    ev->turn_id = tid[0] ? arena_strdup(&b->arena, tid) : NULL;
    b->turn = NULL;
    b->upd.set_status = 1;
    b->upd.status = SS_IDLE;
    b->upd.set_outcome = 1;
    b->upd.outcome = TO_FAILED;
    b->upd.turn_id = "";
    b->then = queued_next;
    batch_submit(b);
    log_warn("recovered a turn left running", "session", ls->id, "turn", tid, NULL);
}

int engine_recover(struct engine *e)
{
    struct arena a, ra; /* ra: one session at a time, emptied after it */
    arena_init(&a);
    arena_init(&ra);
    struct session_ref *refs;
    int n;
    store_sessions_running(e->st, &a, &refs, &n);
    for (int i = 0; i < n; i++) {
        arena_reset(&ra);
        struct session_rec row;
        if (store_session_get(e->st, refs[i].org_id, refs[i].id, "", &ra, &row) != LD_OK) continue;
        recover_turn(e, live_get(e, &row), row.turn_id,
                     "The server stopped while this turn was running; it could not be resumed.");
    }
    arena_free(&ra);
    arena_free(&a);
    return n;
}

/* ---- Repair ----
 *
 * When a batch of a session fails (its commit failed, or the writer's
 * queue was full), its events were never stored and every later batch of
 * the session in flight fails too (ops.c stores a batch only right after
 * the one before it).  The session's turn stops at once: its timers and its
 * model call are cancelled.  Once no batch of the session is in flight, the
 * session is read back from the store, as after a restart: the next
 * sequence follows the stored log, and a turn the stored session says is
 * running is resumed from its log, or failed (recover_turn).  Until then the
 * session answers new messages, tool results and cancels with 503.  If the
 * store still fails, the repair fails the same way and is tried again after
 * a delay that doubles from REPAIR_FIRST_MS to REPAIR_MAX_MS. */
#define REPAIR_FIRST_MS 10
#define REPAIR_MAX_MS 2000

static void live_break(struct engine *e, struct live *ls)
{
    ls->broken = 1;
    struct turn *t = ls->turn;
    if (!t) return;
    ls->turn = NULL;
    ls->steered = 0; /* the log has the steered messages; the repair reads them */
    t->state = T_DONE;
    turn_halt(e, t);
    turn_release(e, t); /* the live record's reference */
}

static void repair(struct engine *e, struct live *ls)
{
    struct arena a;
    arena_init(&a);
    struct session_rec row;
    enum ld_err err = store_session_get(e->st, ls->org_id, ls->id, "", &a, &row);
    if (err != LD_OK && err != LD_E_NOT_FOUND) {
        arena_free(&a);
        repair_schedule(e, ls);
        return;
    }
    ls->broken = 0;
    ls->committed_seq = store_events_max_seq(e->st, ls->id);
    ls->next_seq = ls->committed_seq + 1;
    if (err == LD_E_NOT_FOUND) {
        ls->queued = 0; /* deleted meanwhile */
        engine_session_deleted(e, ls->id);
    } else if (row.status == SS_ACTIVE || row.status == SS_WAITING) {
        recover_turn(e, ls, row.turn_id,
                     "A write of this turn failed and the turn could not be resumed.");
    } else if (ls->queued) {
        ls->queued = 0;
        start_turn_for(e, ls, ls->queued_msg_id, after_activation, NULL);
    }
    if (err != LD_E_NOT_FOUND)
        log_warn("repaired a session after a failed write", "session", ls->id, NULL);
    arena_free(&a);
    live_maybe_free(e, ls);
}

static void repair_due(void *ud)
{
    struct live *ls = ud;
    ls->repair_timer = NULL;
    if (!ls->inflight) repair(g_engine, ls); /* else the last batch_done asks again */
}

static void repair_schedule(struct engine *e, struct live *ls)
{
    if (ls->repair_timer) return;
    ls->broken = 1;
    ls->repair_ms = ls->repair_ms ? ls->repair_ms * 2 : REPAIR_FIRST_MS;
    if (ls->repair_ms > REPAIR_MAX_MS) ls->repair_ms = REPAIR_MAX_MS;
    ls->repair_timer = loop_timer_add(e->loop, ls->repair_ms, repair_due, ls);
}
