/*
 * sse.c — GET /v1/sessions/{id}/sse (reference section 16).
 *
 * DESIGN
 *  - Once the request is validated, the stream takes its socket from the
 *    HTTP server (req_detach) and writes the response itself: status line,
 *    headers, then events as chunks (HTTP/1.0: delimited by the close).  A
 *    stream is then a small struct, an fd in the loop's epoll and an output
 *    buffer that exists only while bytes are pending: an idle stream costs
 *    about 4 KB in all.
 *  - Writes are batched: whatever adds bytes puts the stream on a dirty
 *    list, and one pass after each loop iteration sends each dirty
 *    stream's bytes with one send().  What the socket does not take waits
 *    for EPOLLOUT.
 *  - Order: `connected`, then the replay of the log after the cursor
 *    (since_id, else Last-Event-ID, else the whole history) read in pages
 *    as the client drains them, then live events.  The stream subscribes
 *    to the engine first; until the replay has reached the end of the log
 *    live events are ignored, because the log already holds them (events
 *    reach subscribers only after commit), and `cursor` (the last sequence
 *    written) keeps anything from being sent twice.
 *  - Bounded: an event for a stream whose socket, at the last send,
 *    refused SSE_MAX_BACKLOG bytes or more (`stuck`) ends the stream
 *    instead; the client resumes from the last id it got.  Bytes added
 *    since that send do not count, so one event bigger than the bound (a
 *    3 MB message) still reaches a reader that keeps up; the buffer's cap
 *    (SSE_OUT_CAP) holds the largest event there can be.  A stream that is
 *    ending and whose peer takes nothing for SSE_LINGER_S is closed hard.
 *    A slow reader never holds up the loop or other streams.
 *  - `: heartbeat` every --sse-heartbeat seconds; after --sse-cycle seconds
 *    (+-20 %) a `disconnecting` frame is sent on its own, when nothing else
 *    is pending, and the stream ends.  Both come from one sweep per tick.
 *  - The peer closing is seen at once (EPOLLIN/EPOLLRDHUP, recv() == 0).
 */
#include "api/api.h"
#include "engine/engine.h"
#include "limits.h"
#include "log.h"
#include "loop.h"
#include "util/timeutil.h"
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <unistd.h>

#define SSE_MAX_BACKLOG (1u << 20)
/* the backlog, the events of one loop iteration, and one event of the
 * largest size a request or a tool can make */
#define SSE_OUT_CAP ((size_t)SSE_MAX_BACKLOG * 2 + (size_t)LD_MAX_BODY_BOUND * 2)
#define SSE_PAGE 200
#define SSE_LINGER_S 10

struct sse {
    struct sse *prev, *next; /* all open streams */
    struct sse *dirty_next;  /* on the dirty list */
    struct engine_sub sub;
    struct engine *eng;
    struct store *st;
    struct loop *loop;
    int fd;
    char session_id[ID_MAX];
    char *types[26], *exclude[26];
    struct event_filter f;
    int64_t cursor; /* last sequence replayed or sent */
    int live;
    int closing, dead, dirty, want_out;
    int chunked; /* HTTP/1.1: chunked body; HTTP/1.0: ends at close */
    struct buf out;
    size_t off;
    size_t stuck;                            /* unsent bytes the socket refused at the last send */
    int64_t next_hb, cycle_at, linger_until; /* monotonic µs */
    int64_t hb_us;
};

extern struct loop *server_loop(struct server *s);

static struct sse *g_streams; /* loop-owned list of open streams */
static long g_nstreams;
static struct sse *g_dirty;

static void mark_dirty(struct sse *x)
{
    if (x->dirty) return;
    x->dirty = 1;
    x->dirty_next = g_dirty;
    g_dirty = x;
}

long sse_close_all(void)
{
    long n = 0;
    for (struct sse *x = g_streams; x; x = x->next) {
        if (!x->closing) {
            x->closing = 1;
            x->linger_until = time_mono_us() + SSE_LINGER_S * 1000000;
            n++;
        }
        mark_dirty(x);
    }
    return n;
}

long sse_open_streams(void)
{
    return g_nstreams;
}

/* With chunked framing, each piece of the stream is one chunk whose size
 * line is written with a fixed width (leading zeros are allowed) and filled
 * in when the piece is complete. */
static size_t piece_begin(struct sse *x)
{
    size_t at = x->out.len;
    if (x->chunked) buf_puts(&x->out, "00000000\r\n");
    return at;
}

static void piece_end(struct sse *x, size_t at)
{
    if (!x->chunked || x->out.overflow) return;
    size_t n = x->out.len - at - 10;
    char hex[9];
    snprintf(hex, sizeof(hex), "%08zx", n);
    memcpy(x->out.data + at, hex, 8);
    buf_puts(&x->out, "\r\n");
}

static void put_piece(struct sse *x, const char *text)
{
    size_t at = piece_begin(x);
    buf_puts(&x->out, text);
    piece_end(x, at);
}

static void frame(struct sse *x, const struct event_rec *ev)
{
    size_t at = piece_begin(x);
    buf_puts(&x->out, "event: ");
    buf_puts(&x->out, ev->type);
    buf_puts(&x->out, "\nid: ");
    buf_puts(&x->out, ev->id);
    buf_puts(&x->out, "\nretry: 100\ndata: ");
    buf_puts(&x->out, ev->body);
    buf_puts(&x->out, "\n\n");
    piece_end(x, at);
}

static void compact(struct sse *x)
{
    if (x->off == 0) return;
    memmove(x->out.data, x->out.data + x->off, x->out.len - x->off);
    x->out.len -= x->off;
    x->off = 0;
    if (x->out.data) x->out.data[x->out.len] = 0;
}

static void end_stream(struct sse *x)
{
    if (x->closing) return;
    if (x->chunked) buf_puts(&x->out, "0\r\n\r\n");
    x->closing = 1;
    x->linger_until = time_mono_us() + SSE_LINGER_S * 1000000;
}

static void on_event(struct engine_sub *sub, const struct event_rec *ev)
{
    struct sse *x = sub->ud;
    if (!x->live || x->closing || x->dead || ev->seq <= x->cursor) return;
    x->cursor = ev->seq;
    if (!event_filter_match(&x->f, ev->type)) return;
    compact(x);
    if (x->stuck >= SSE_MAX_BACKLOG) {
        /* too slow a reader: end the stream; it resumes from its last id
         * and gets this event from the log */
        end_stream(x);
        mark_dirty(x);
        return;
    }
    size_t before = x->out.len;
    frame(x, ev);
    if (x->out.overflow) { /* drop the partial frame; the resume replays it */
        x->out.overflow = 0;
        x->out.len = before;
        x->out.data[before] = 0;
        end_stream(x);
    }
    mark_dirty(x);
}

/* the session is gone: the stream ends (a client that reconnects is told
 * 404) once what it was sent before has gone out */
static void on_gone(struct engine_sub *sub)
{
    struct sse *x = sub->ud;
    if (x->dead) return;
    end_stream(x);
    mark_dirty(x);
}

static void replay_page(struct sse *x)
{
    struct arena a;
    arena_init(&a);
    struct event_rec *rows;
    int n = 0, more = 0;
    if (store_events_page(x->st, x->session_id, x->cursor, 0, SSE_PAGE, 0, &a, &rows, &n, &more) !=
        LD_OK) {
        end_stream(x);
        arena_free(&a);
        return;
    }
    compact(x);
    int i = 0;
    for (; i < n && x->out.len < SSE_MAX_BACKLOG; i++) {
        if (event_filter_match(&x->f, rows[i].type)) {
            size_t before = x->out.len;
            frame(x, &rows[i]);
            if (x->out.overflow) { /* bigger than any event can be (SSE_OUT_CAP) */
                x->out.overflow = 0;
                x->out.len = before;
                if (x->out.data) x->out.data[before] = 0;
                end_stream(x);
                break;
            }
        }
        x->cursor = rows[i].seq;
    }
    if (i == n && !more) x->live = 1;
    arena_free(&a);
}

static void on_io(void *ud, uint32_t events);

/* Sends what is pending; refills from the log while replaying.  Marks the
 * stream dead when it is finished or its peer is gone. */
static void flush(struct sse *x)
{
    for (;;) {
        size_t have = x->out.len - x->off;
        if (!have) {
            if (x->closing) {
                x->dead = 1;
                return;
            }
            if (!x->live) {
                replay_page(x);
                continue;
            }
            break;
        }
        ssize_t n = send(x->fd, x->out.data + x->off, have, MSG_DONTWAIT | MSG_NOSIGNAL);
        if (n > 0) {
            x->off += (size_t)n;
            if (x->off == x->out.len) x->off = x->out.len = 0;
            continue;
        }
        if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) {
            x->stuck = have;
            if (!x->want_out) {
                x->want_out = 1;
                loop_add_fd(x->loop, x->fd, EPOLLIN | EPOLLRDHUP | EPOLLOUT, on_io, x);
            }
            return;
        }
        if (n < 0 && errno == EINTR) continue;
        x->dead = 1; /* EPIPE, ECONNRESET: the peer is gone */
        return;
    }
    x->stuck = 0;
    if (x->want_out) {
        x->want_out = 0;
        loop_add_fd(x->loop, x->fd, EPOLLIN | EPOLLRDHUP, on_io, x);
    }
    if (x->out.alloc) {
        /* an idle stream holds no buffer */
        size_t cap = x->out.cap;
        buf_free(&x->out);
        buf_init(&x->out, cap);
    }
}

static void destroy(struct sse *x)
{
    if (x->prev)
        x->prev->next = x->next;
    else
        g_streams = x->next;
    if (x->next) x->next->prev = x->prev;
    g_nstreams--;
    engine_unsubscribe(x->eng, x->session_id, &x->sub);
    loop_del_fd(x->loop, x->fd);
    close(x->fd);
    for (int i = 0; i < 26; i++) {
        free(x->types[i]);
        free(x->exclude[i]);
    }
    buf_free(&x->out);
    free(x);
}

/* After each loop iteration: one send per stream that has new bytes. */
static void flush_dirty(void *ud)
{
    (void)ud;
    while (g_dirty) {
        struct sse *x = g_dirty;
        g_dirty = x->dirty_next;
        x->dirty = 0;
        if (!x->dead) flush(x);
        if (x->dead) destroy(x);
    }
}

static void on_io(void *ud, uint32_t events)
{
    struct sse *x = ud;
    if (x->dead) return;
    if (events & (EPOLLIN | EPOLLRDHUP | EPOLLHUP | EPOLLERR)) {
        /* a client sends nothing after its request; read and drop, and
         * learn of its leaving */
        char junk[512];
        for (;;) {
            ssize_t n = recv(x->fd, junk, sizeof(junk), MSG_DONTWAIT);
            if (n > 0) continue;
            if (n < 0 && errno == EINTR) continue;
            if (n == 0 || (errno != EAGAIN && errno != EWOULDBLOCK)) x->dead = 1;
            break;
        }
        if (events & (EPOLLHUP | EPOLLERR)) x->dead = 1;
    }
    /* a dead stream is destroyed by the dirty pass, never in the middle of
     * a dispatch */
    if (x->dead || (events & EPOLLOUT)) mark_dirty(x);
}

/*
 * Heartbeats, cycling and lingering for all streams from the loop's tick:
 * one pass over the list every LOOP_TICK_MS, rather than a timer per
 * stream.
 */
static void sweep(void *ud)
{
    (void)ud;
    int64_t now = time_mono_us();
    for (struct sse *x = g_streams; x; x = x->next) {
        if (x->dead) continue;
        if (x->closing) {
            if (now >= x->linger_until) {
                x->off = x->out.len = 0; /* the peer takes nothing: drop it */
                mark_dirty(x);
            }
            continue;
        }
        if (now >= x->cycle_at && x->out.len == x->off && x->live) {
            /* `disconnecting` goes on its own, once nothing else is pending */
            compact(x);
            put_piece(x, "event: disconnecting\nretry: 100\ndata: "
                         "{\"reason\":\"connection_cycle\",\"retry_ms\":100}\n\n");
            end_stream(x);
            mark_dirty(x);
        } else if (now >= x->next_hb) {
            x->next_hb = now + x->hb_us;
            compact(x);
            put_piece(x, ": heartbeat\n\n");
            mark_dirty(x);
        }
    }
}

void h_sse(struct req *r)
{
    struct session_rec s;
    if (session_from_path(r, &s)) return;
    struct event_filter f;
    if (event_filter_parse(r, &f)) return;
    int64_t after;
    if (event_cursor(r, s.id, 1, &after)) return;
    if (g_nstreams >= r->cfg->max_connections) {
        reply_problem(r, LD_E_UNAVAILABLE, "Too many open event streams (limit %ld)",
                      r->cfg->max_connections);
        return;
    }
    int fd = req_detach(r);
    if (fd < 0) {
        reply_problem(r, LD_E_UNAVAILABLE, "The event stream could not be started");
        return;
    }
    struct sse *x = xcalloc(1, sizeof(*x));
    x->fd = fd;
    x->eng = r->eng;
    x->st = r->st;
    x->loop = server_loop(r->srv);
    str_copy(x->session_id, sizeof(x->session_id), s.id);
    for (int i = 0; i < f.ntypes; i++)
        x->f.types[i] = x->types[i] = xstrdup(f.types[i]);
    for (int i = 0; i < f.nexclude; i++)
        x->f.exclude[i] = x->exclude[i] = xstrdup(f.exclude[i]);
    x->f.ntypes = f.ntypes;
    x->f.nexclude = f.nexclude;
    x->cursor = after;
    buf_init(&x->out, SSE_OUT_CAP);
    x->chunked = !r->http10 && r->method != M_HEAD;
    buf_printf(&x->out,
               "HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\n"
               "Cache-Control: no-cache\r\nX-Accel-Buffering: no\r\nX-Request-Id: %s\r\n"
               "%sConnection: close\r\n\r\n",
               r->rid, x->chunked ? "Transfer-Encoding: chunked\r\n" : "");
    if (r->method == M_HEAD) {
        x->live = 1;
        x->closing = 1;
    } else {
        put_piece(x, "event: connected\nretry: 100\ndata: {\"status\":\"connected\"}\n\n");
    }
    x->sub.on_event = on_event;
    x->sub.on_gone = on_gone;
    x->sub.ud = x;
    x->next = g_streams;
    if (g_streams) g_streams->prev = x;
    g_streams = x;
    g_nstreams++;
    engine_subscribe(r->eng, &s, &x->sub);
    static struct loop *hooked;
    if (hooked != x->loop) {
        loop_on_tick(x->loop, sweep, NULL);
        loop_after_poll(x->loop, flush_dirty, NULL);
        hooked = x->loop;
    }
    int64_t now = time_mono_us();
    x->hb_us = r->cfg->sse_heartbeat * 1000000;
    x->next_hb = now + x->hb_us;
    int64_t cyc = r->cfg->sse_cycle * 1000000;
    unsigned jitter;
    random_bytes(&jitter, sizeof(jitter));
    x->cycle_at = now + cyc * 8 / 10 + (int64_t)(jitter % (uint64_t)(cyc * 4 / 10 + 1));
    if (loop_add_fd(x->loop, fd, EPOLLIN | EPOLLRDHUP, on_io, x) < 0) x->dead = 1;
    mark_dirty(x);
}
