/*
 * sse.c — GET /v1/sessions/{id}/sse (reference section 16).
 *
 * DESIGN
 *  - The response is an MHD callback response of unknown size.  Its reader
 *    hands out the stream's pending bytes; with none, it suspends the
 *    connection and returns 0 (MHD's rule), and whoever adds bytes resumes
 *    it.  No thread per stream.
 *  - Order: `connected`, then the replay of the log after the cursor
 *    (since_id, else Last-Event-ID, else the whole history) read in pages
 *    as the client drains them, then live events.  The stream subscribes
 *    to the engine first; until the replay has reached the end of the log
 *    live events are ignored, because the log already holds them (events
 *    reach subscribers only after commit), and `cursor` (the last sequence
 *    written) keeps anything from being sent twice.
 *  - Bounded: past SSE_MAX_BACKLOG unsent bytes the stream is closed; the
 *    client resumes from the last id it got.  A slow reader never holds up
 *    the loop or other streams.
 *  - `: heartbeat` every --sse-heartbeat seconds (it also finds dead
 *    peers: a suspended connection sees no disconnect); after --sse-cycle
 *    seconds (+-20 %) a `disconnecting` frame is sent on its own, when
 *    nothing else is pending, and the stream ends.
 */
#include "api/api.h"
#include "engine/engine.h"
#include "loop.h"
#include "util/timeutil.h"
#include <microhttpd.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define SSE_MAX_BACKLOG (1u << 20)
#define SSE_PAGE 200

struct sse {
    struct sse *prev, *next; /* all open streams, for shutdown */
    struct engine_sub sub;
    struct engine *eng;
    struct store *st;
    struct loop *loop;
    struct MHD_Connection *mc;
    struct server *srv;
    char session_id[ID_MAX];
    char *types[26], *exclude[26];
    struct event_filter f;
    int64_t cursor; /* last sequence replayed or sent */
    int live;
    int suspended;
    int closing, ended;
    struct buf out;
    size_t off;
    int64_t next_hb, cycle_at; /* monotonic µs */
    int64_t hb_us;
};

extern struct loop *server_loop(struct server *s);

static struct sse *g_streams; /* loop-owned list of open streams */

long sse_close_all(void)
{
    long n = 0;
    for (struct sse *x = g_streams; x; x = x->next) {
        if (!x->closing) {
            x->closing = 1;
            n++;
        }
        if (x->suspended) {
            x->suspended = 0;
            MHD_resume_connection(x->mc);
            server_kick(x->srv);
        }
    }
    return n;
}

long sse_open_streams(void)
{
    long n = 0;
    for (struct sse *x = g_streams; x; x = x->next)
        n++;
    return n;
}

static void wake(struct sse *x)
{
    if (x->suspended) {
        x->suspended = 0;
        MHD_resume_connection(x->mc);
        server_kick(x->srv);
    }
}

static void frame(struct sse *x, const struct event_rec *ev)
{
    buf_puts(&x->out, "event: ");
    buf_puts(&x->out, ev->type);
    buf_puts(&x->out, "\nid: ");
    buf_puts(&x->out, ev->id);
    buf_puts(&x->out, "\nretry: 100\ndata: ");
    buf_puts(&x->out, ev->body);
    buf_puts(&x->out, "\n\n");
}

static void compact(struct sse *x)
{
    if (x->off == 0) return;
    memmove(x->out.data, x->out.data + x->off, x->out.len - x->off);
    x->out.len -= x->off;
    x->off = 0;
    if (x->out.data) x->out.data[x->out.len] = 0;
}

static void on_event(struct engine_sub *sub, const struct event_rec *ev)
{
    struct sse *x = sub->ud;
    if (!x->live || x->closing || ev->seq <= x->cursor) return;
    x->cursor = ev->seq;
    if (!event_filter_match(&x->f, ev->type)) return;
    compact(x);
    frame(x, ev);
    if (x->out.overflow || x->out.len > SSE_MAX_BACKLOG) {
        /* too slow a reader: end the stream; it resumes from its last id */
        x->closing = 1;
        x->out.overflow = 0;
    }
    wake(x);
}

static void replay_page(struct sse *x)
{
    struct arena a;
    arena_init(&a);
    struct event_rec *rows;
    int n = 0;
    if (store_events_page(x->st, x->session_id, x->cursor, 0, SSE_PAGE, 0, &a, &rows, &n) !=
        LD_OK) {
        x->closing = 1;
        arena_free(&a);
        return;
    }
    compact(x);
    for (int i = 0; i < n; i++) {
        x->cursor = rows[i].seq;
        if (event_filter_match(&x->f, rows[i].type)) frame(x, &rows[i]);
    }
    if (n < SSE_PAGE) x->live = 1;
    arena_free(&a);
}

static ssize_t reader(void *cls, uint64_t pos, char *buf, size_t max)
{
    struct sse *x = cls;
    (void)pos;
    for (;;) {
        size_t have = x->out.len - x->off;
        if (have) {
            size_t n = have < max ? have : max;
            memcpy(buf, x->out.data + x->off, n);
            x->off += n;
            if (x->off == x->out.len) x->off = x->out.len = 0;
            return (ssize_t)n;
        }
        if (x->closing) {
            x->ended = 1;
            return MHD_CONTENT_READER_END_OF_STREAM;
        }
        if (!x->live) {
            replay_page(x);
            continue;
        }
        x->suspended = 1;
        MHD_suspend_connection(x->mc);
        return 0;
    }
}

/*
 * Heartbeats and cycling for all streams from the loop's tick: one pass
 * over the list every LOOP_TICK_MS, rather than a timer per stream (with
 * 10,000 streams, timers cost an O(n) insertion each and a separate MHD
 * run per wake-up; this batches every wake-up of a tick into one).
 */
static void sweep(void *ud)
{
    (void)ud;
    int64_t now = time_mono_us();
    for (struct sse *x = g_streams; x; x = x->next) {
        if (x->closing) continue;
        if (now >= x->cycle_at && x->out.len == x->off) {
            /* `disconnecting` goes on its own, once nothing else is pending */
            compact(x);
            buf_puts(&x->out, "event: disconnecting\nretry: 100\ndata: "
                              "{\"reason\":\"connection_cycle\",\"retry_ms\":100}\n\n");
            x->closing = 1;
            wake(x);
        } else if (now >= x->next_hb) {
            x->next_hb = now + x->hb_us;
            compact(x);
            buf_puts(&x->out, ": heartbeat\n\n");
            wake(x);
        }
    }
}

static void sse_free(void *cls)
{
    struct sse *x = cls;
    if (x->prev)
        x->prev->next = x->next;
    else
        g_streams = x->next;
    if (x->next) x->next->prev = x->prev;
    engine_unsubscribe(x->eng, x->session_id, &x->sub);
    for (int i = 0; i < 26; i++) {
        free(x->types[i]);
        free(x->exclude[i]);
    }
    buf_free(&x->out);
    free(x);
}

void h_sse(struct req *r)
{
    struct session_rec s;
    if (session_from_path(r, &s)) return;
    struct event_filter f;
    if (event_filter_parse(r, &f)) return;
    int64_t after;
    if (event_cursor(r, s.id, 1, &after)) return;
    struct sse *x = xcalloc(1, sizeof(*x));
    x->eng = r->eng;
    x->st = r->st;
    x->loop = server_loop(r->srv);
    x->mc = r->mc;
    x->srv = r->srv;
    snprintf(x->session_id, sizeof(x->session_id), "%s", s.id);
    for (int i = 0; i < f.ntypes; i++)
        x->f.types[i] = x->types[i] = xstrdup(f.types[i]);
    for (int i = 0; i < f.nexclude; i++)
        x->f.exclude[i] = x->exclude[i] = xstrdup(f.exclude[i]);
    x->f.ntypes = f.ntypes;
    x->f.nexclude = f.nexclude;
    x->cursor = after;
    buf_init(&x->out, 2 * SSE_MAX_BACKLOG);
    buf_puts(&x->out, "event: connected\nretry: 100\ndata: {\"status\":\"connected\"}\n\n");
    x->sub.on_event = on_event;
    x->sub.ud = x;
    x->next = g_streams;
    if (g_streams) g_streams->prev = x;
    g_streams = x;
    engine_subscribe(r->eng, &s, &x->sub);
    static int swept;
    if (!swept) {
        loop_on_tick(x->loop, sweep, NULL);
        swept = 1;
    }
    int64_t now = time_mono_us();
    x->hb_us = r->cfg->sse_heartbeat * 1000000;
    x->next_hb = now + x->hb_us;
    int64_t cyc = r->cfg->sse_cycle * 1000000;
    unsigned jitter;
    random_bytes(&jitter, sizeof(jitter));
    x->cycle_at = now + cyc * 8 / 10 + (int64_t)(jitter % (uint64_t)(cyc * 4 / 10 + 1));
    struct MHD_Response *resp =
        MHD_create_response_from_callback(MHD_SIZE_UNKNOWN, 4096, reader, x, sse_free);
    MHD_add_response_header(resp, "Content-Type", "text/event-stream");
    MHD_add_response_header(resp, "Cache-Control", "no-cache");
    MHD_add_response_header(resp, "X-Accel-Buffering", "no");
    reply_raw(r, 200, resp);
}
