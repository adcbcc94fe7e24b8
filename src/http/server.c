/*
 * server.c — loopd's HTTP/1.1 server, on the loop's epoll.
 *
 * Until 2026-11 this was libmicrohttpd glue; measurements and the bad-input
 * catalog said otherwise (README, "HTTP server"): MHD answers framing errors
 * it detects itself (malformed Content-Length or chunk size, oversized heads)
 * with its own HTML, it keeps a 32 KiB pool per connection, and every
 * suspend/resume costs two epoll_ctl calls.  HTTP/1.1 as loopd needs it is
 * small, so it is written here, in the manner of nginx's request parser.
 *
 * DESIGN
 *  - One `struct hconn` per accepted socket, level-triggered in the loop's
 *    epoll.  Input accumulates in `in` (allocated only while bytes are
 *    pending); output is one writev of the response head and body.
 *  - States: CS_NEW/CS_IDLE (waiting for a request head), CS_BODY (reading
 *    a body: Content-Length or chunked), CS_BUSY (the handler runs or waits
 *    for the store: the socket is not watched, so nothing is read ahead),
 *    CS_WRITE (the answer is being sent), CS_LINGER (after an error answer
 *    that closes the connection: the write side is shut and what the client
 *    still sends is read and dropped for a moment, so that it sees the
 *    answer rather than a reset).
 *  - Every error is an RFC 9457 problem: 400 for bad framing, 413 for a
 *    body over --max-body (at once when Content-Length says so), 414/431
 *    for oversized heads, 501 for an unknown transfer coding, 505 for an
 *    unknown HTTP version, 408 past the deadline.
 *  - Deadlines (one sweep per loop tick): a request head must arrive within
 *    --request-timeout of the connection's first byte (of the accept for a
 *    new connection; an idle keep-alive connection may wait --idle-timeout
 *    first), and a body within --request-timeout of its head.  A client
 *    that does not read its answer is dropped after --request-timeout
 *    without progress.
 *  - A handler answers at once (reply_*) or parks the request (req_suspend)
 *    until a store op's `done` answers it; the answer is written then.
 *    Requests parked are counted in `inflight`; on SIGTERM the server stops
 *    accepting, lets them finish, then stops.
 *  - Keep-alive by default for HTTP/1.1 (Connection: close honoured),
 *    opt-in for HTTP/1.0; pipelined requests are served in order.
 *  - Limits: --max-connections in all, --max-connections-per-ip (answered
 *    503 and closed).
 */
#include "http/server.h"
#include "api/routes.h"
#include "core/id.h"
#include "engine/engine.h"
#include "http/http.h"
#include "limits.h"
#include "log.h"
#include "store/store.h"
#include "util/timeutil.h"
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <sys/uio.h>
#include <time.h>
#include <unistd.h>

enum conn_state { CS_NEW, CS_IDLE, CS_BODY, CS_BUSY, CS_WRITE, CS_LINGER };

/* The request line may be this long (RFC 9112 suggests supporting 8000). */
#define MAX_REQUEST_LINE 8192
/* a problem's `instance` (the request path) is left out past this; the
 * body's worst case, every byte of a 511-byte detail escaped as \u00XX and
 * every byte of the instance as \", stays far below PROBLEM_BODY_MAX */
#define MAX_INSTANCE 2048
#define PROBLEM_BODY_MAX 16384
#define MAX_CHUNK_LINE 1024
#define READ_CHUNK 16384
#define IN_FIRST 4096 /* a connection's first input buffer: most requests fit */
#define LINGER_US (2 * 1000000)
#define STREAM_PIECES_PER_TURN 4 /* pieces of a streamed answer per loop iteration */
#define IP_BUCKETS 1024

struct resp {
    struct buf head; /* status line and headers */
    char *body;
    size_t blen;
    int body_static; /* not ours to free */
    /* a shared body (reply_json_shared): body_release(body_owner) when done */
    void (*body_release)(void *);
    void *body_owner;
    int no_body; /* HEAD, 204, 304: the body is not sent */
    /* a streamed body (reply_stream): pieces made as the socket takes them */
    reply_more_fn more;
    void (*release)(void *ud);
    void *ud;
    struct buf piece;
    int chunked; /* HTTP/1.1: each piece a chunk; HTTP/1.0: the close ends it */
    int ended;   /* `more` said nothing follows */
};

struct hconn {
    struct hconn *prev, *next;
    struct server *s;
    int fd;
    uint32_t ip; /* network order */
    int state;
    int64_t deadline; /* monotonic µs; 0 = none */
    int watching;     /* events registered in the loop */
    int close_after;  /* close once the answer is out */
    int dead, detached;
    int eof;             /* the client sent FIN */
    int queued;          /* on the ready list */
    struct hconn *rnext; /* ready list */
    char *in;
    size_t in_len, in_cap;
    struct req *r;
    /* body framing */
    int chunked, ch_state;
    uint64_t body_left; /* Content-Length left, or the current chunk's */
    /* output */
    struct iovec iov[2];
    int niov;
    struct hconn *dnext; /* on the dead list */
};

enum { CH_SIZE, CH_DATA, CH_DATA_CRLF, CH_TRAILER };

struct ipcount {
    struct ipcount *next;
    uint32_t ip;
    long n;
};

#define N_STATUS 20
static const int status_list[N_STATUS] = {200, 201, 204, 304, 400, 401, 403, 404, 405, 408,
                                          409, 412, 413, 414, 422, 429, 431, 500, 503, 505};
#define N_LAT 13
static const int64_t lat_bounds_us[N_LAT - 1] = {100,   250,   500,   1000,   2500,   5000,
                                                 10000, 25000, 50000, 100000, 250000, 1000000};

struct server {
    const struct config *cfg;
    struct store *st;
    struct engine *eng;
    struct loop *loop;
    int lfd; /* listening socket; -1 once quiesced */
    int quiescing;
    char base_url[300];
    struct hconn conns; /* list head */
    long nconns;
    long inflight;
    uint64_t req_id;
    char rid_prefix[8];
    struct ipcount *ips[IP_BUCKETS];
    struct hconn *dead;  /* freed after each loop iteration */
    struct hconn *ready; /* to write an answer, or to parse buffered input */
    char date[40];       /* cached Date header value */
    time_t date_sec;
    /* metrics */
    uint64_t *by_route; /* [route_count + 1][N_STATUS + 1] */
    uint64_t lat[N_LAT];
    uint64_t lat_count;
    double lat_sum;
};

static int64_t now_us(void)
{
    return time_mono_us();
}

/* ---- metrics ---- */

static void count_request(struct server *s, struct req *r)
{
    int ri = r->route >= 0 ? r->route : route_count;
    int si = N_STATUS;
    for (int i = 0; i < N_STATUS; i++)
        if (status_list[i] == r->status) si = i;
    s->by_route[ri * (N_STATUS + 1) + si]++;
    int64_t d = now_us() - r->t0;
    int b = 0;
    while (b < N_LAT - 1 && d > lat_bounds_us[b])
        b++;
    s->lat[b]++;
    s->lat_count++;
    s->lat_sum += (double)d / 1e6;
}

void server_metrics_render(struct server *s, struct buf *o)
{
    buf_puts(o, "# HELP loopd_http_requests_total HTTP requests by route and status.\n"
                "# TYPE loopd_http_requests_total counter\n");
    for (int ri = 0; ri <= route_count; ri++)
        for (int si = 0; si <= N_STATUS; si++) {
            uint64_t n = s->by_route[ri * (N_STATUS + 1) + si];
            if (!n) continue;
            const char *name = ri < route_count ? routes[ri].name : "unmatched";
            const char *method = "";
            if (ri < route_count) {
                static const char *const m[] = {"GET",   "HEAD",   "POST",    "PUT",
                                                "PATCH", "DELETE", "OPTIONS", "OTHER"};
                method = m[routes[ri].method];
            }
            if (si < N_STATUS)
                buf_printf(o,
                           "loopd_http_requests_total{route=\"%s\",method=\"%s\",status=\"%d\"} "
                           "%llu\n",
                           name, method, status_list[si], (unsigned long long)n);
            else
                buf_printf(o,
                           "loopd_http_requests_total{route=\"%s\",method=\"%s\",status=\"other\"}"
                           " %llu\n",
                           name, method, (unsigned long long)n);
        }
    buf_puts(o, "# HELP loopd_http_request_duration_seconds Time from headers to answer.\n"
                "# TYPE loopd_http_request_duration_seconds histogram\n");
    uint64_t cum = 0;
    for (int b = 0; b < N_LAT; b++) {
        cum += s->lat[b];
        if (b < N_LAT - 1)
            buf_printf(o, "loopd_http_request_duration_seconds_bucket{le=\"%g\"} %llu\n",
                       (double)lat_bounds_us[b] / 1e6, (unsigned long long)cum);
        else
            buf_printf(o, "loopd_http_request_duration_seconds_bucket{le=\"+Inf\"} %llu\n",
                       (unsigned long long)cum);
    }
    buf_printf(o, "loopd_http_request_duration_seconds_sum %.6f\n", s->lat_sum);
    buf_printf(o, "loopd_http_request_duration_seconds_count %llu\n",
               (unsigned long long)s->lat_count);
    buf_printf(o,
               "# HELP loopd_open_connections Open HTTP connections.\n"
               "# TYPE loopd_open_connections gauge\nloopd_open_connections %ld\n",
               s->nconns);
    buf_printf(o,
               "# HELP loopd_turns_running Turns in progress (waiting for tool results "
               "included).\n"
               "# TYPE loopd_turns_running gauge\nloopd_turns_running %ld\n",
               s->eng ? engine_running(s->eng) : 0L);
    buf_printf(o,
               "# HELP loopd_inflight_writes Requests waiting for a durable commit.\n"
               "# TYPE loopd_inflight_writes gauge\nloopd_inflight_writes %ld\n",
               s->inflight);
    struct store_metrics m;
    store_metrics(s->st, &m);
    static const char *const le[STORE_BATCH_BUCKETS] = {"1",  "2",  "4",   "8",
                                                        "16", "64", "256", "+Inf"};
    buf_puts(o, "# HELP loopd_store_commit_batch_size Write operations per durable commit.\n"
                "# TYPE loopd_store_commit_batch_size histogram\n");
    cum = 0;
    for (int b = 0; b < STORE_BATCH_BUCKETS; b++) {
        cum += m.batch_hist[b];
        buf_printf(o, "loopd_store_commit_batch_size_bucket{le=\"%s\"} %llu\n", le[b],
                   (unsigned long long)cum);
    }
    buf_printf(o, "loopd_store_commit_batch_size_sum %llu\n", (unsigned long long)m.ops);
    buf_printf(o, "loopd_store_commit_batch_size_count %llu\n", (unsigned long long)m.commits);
    buf_printf(o,
               "# HELP loopd_store_commit_failures_total Commits that failed.\n"
               "# TYPE loopd_store_commit_failures_total counter\n"
               "loopd_store_commit_failures_total %llu\n",
               (unsigned long long)m.commit_failures);
    buf_printf(o,
               "# HELP loopd_store_writes_refused_total Writes refused at once (503): as many "
               "as --max-pending-writes were waiting for the disk.\n"
               "# TYPE loopd_store_writes_refused_total counter\n"
               "loopd_store_writes_refused_total %llu\n",
               (unsigned long long)m.refused);
    buf_printf(o,
               "# HELP loopd_store_write_failing 1 while the last commit that wrote failed.\n"
               "# TYPE loopd_store_write_failing gauge\n"
               "loopd_store_write_failing %d\n",
               m.write_failing);
    buf_printf(o,
               "# HELP loopd_store_statements_total SQL statements run by the writer.\n"
               "# TYPE loopd_store_statements_total counter\n"
               "loopd_store_statements_total %llu\n",
               (unsigned long long)m.statements);
    buf_printf(o,
               "# HELP loopd_store_commit_seconds_total Time spent committing.\n"
               "# TYPE loopd_store_commit_seconds_total counter\n"
               "loopd_store_commit_seconds_total %.6f\n",
               (double)m.commit_us_total / 1e6);
    buf_printf(o,
               "# HELP loopd_store_wal_restarts_total Times the writer let the WAL start over.\n"
               "# TYPE loopd_store_wal_restarts_total counter\n"
               "loopd_store_wal_restarts_total %llu\n",
               (unsigned long long)m.wal_catch_ups);
    buf_printf(o,
               "# HELP loopd_auth_cache_lookups_total API keys looked up in the key cache.\n"
               "# TYPE loopd_auth_cache_lookups_total counter\n"
               "loopd_auth_cache_lookups_total{outcome=\"hit\"} %llu\n"
               "loopd_auth_cache_lookups_total{outcome=\"miss\"} %llu\n",
               (unsigned long long)m.auth_hits, (unsigned long long)m.auth_misses);
}

/* ---- request accessors ---- */

static const char *kv_find(const struct req_kv *kv, int n, const char *name, int nocase)
{
    for (int i = 0; i < n; i++) {
        /* a first byte that differs even in case rules the call out (a
         * request asks for 4-5 headers, each compared with all it sent) */
        if ((kv[i].name[0] | 0x20) != (name[0] | 0x20)) continue;
        if (nocase ? strcasecmp(kv[i].name, name) == 0 : strcmp(kv[i].name, name) == 0)
            return kv[i].value;
    }
    return NULL;
}

const char *req_header(struct req *r, const char *name)
{
    return kv_find(r->hdrs, r->nhdrs, name, 1);
}

const char *req_query(struct req *r, const char *name)
{
    return kv_find(r->query, r->nquery, name, 0);
}

int req_query_all(struct req *r, const char *name, const char **out, int max)
{
    int n = 0;
    for (int i = 0; i < r->nquery; i++)
        if (strcmp(r->query[i].name, name) == 0) {
            if (n < max) out[n] = r->query[i].value;
            n++;
        }
    return n;
}

const char *req_base_url(struct req *r)
{
    return r->srv->base_url;
}

static int unreserved(unsigned char c)
{
    return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '-' ||
           c == '_' || c == '.' || c == '~';
}

static void put_escaped(struct buf *b, const char *s)
{
    static const char hex[] = "0123456789ABCDEF";
    for (const unsigned char *p = (const unsigned char *)s; *p; p++) {
        if (unreserved(*p)) {
            buf_putc(b, (char)*p);
        } else {
            char e[3] = {'%', hex[*p >> 4], hex[*p & 15]};
            buf_add(b, e, 3);
        }
    }
}

const char *req_url(struct req *r)
{
    if (r->url) return r->url;
    struct buf b;
    buf_init(&b, 16384);
    buf_puts(&b, r->srv->base_url);
    buf_puts(&b, r->path);
    for (int i = 0; i < r->nquery; i++) {
        buf_putc(&b, i ? '&' : '?');
        put_escaped(&b, r->query[i].name);
        buf_putc(&b, '=');
        put_escaped(&b, r->query[i].value);
    }
    r->url = arena_strdup(&r->arena, b.data ? b.data : "");
    buf_free(&b);
    return r->url;
}

struct loop *server_loop(struct server *s)
{
    return s->loop;
}

/* ---- answers ---- */

static void start_write(struct hconn *c);
static void schedule(struct hconn *c);
static void req_free(struct server *s, struct req *r);

/* A response: its head is completed (Content-Length, Connection, Date) when
 * it is written, since only then is it known whether the connection stays
 * open. */
static struct resp *resp_new(int status, const char *ctype)
{
    struct resp *p = xcalloc(1, sizeof(*p));
    buf_init(&p->head, 64 * 1024);
    buf_puts(&p->head, "HTTP/1.1 ");
    buf_i64(&p->head, status);
    buf_putc(&p->head, ' ');
    buf_puts(&p->head, ld_status_reason(status));
    buf_puts(&p->head, "\r\n");
    if (ctype) {
        buf_puts(&p->head, "Content-Type: ");
        buf_puts(&p->head, ctype);
        buf_puts(&p->head, "\r\n");
    }
    return p;
}

static void resp_header(struct resp *p, const char *name, const char *value)
{
    /* values come from the handlers, never raw from a request; CR/LF would
     * split the header, so a value holding one is dropped */
    if (!name || !value || strpbrk(value, "\r\n")) return;
    buf_puts(&p->head, name);
    buf_puts(&p->head, ": ");
    buf_puts(&p->head, value);
    buf_puts(&p->head, "\r\n");
}

static void resp_free(struct resp *p)
{
    if (!p) return;
    if (p->release) p->release(p->ud);
    buf_free(&p->piece);
    buf_free(&p->head);
    if (!p->body_static) free(p->body);
    if (p->body_release) p->body_release(p->body_owner);
    free(p);
}

static void set_response(struct req *r, int status, struct resp *p)
{
    if (r->resp || r->detached) { /* a second answer is a bug; keep the first */
        resp_free(p);
        return;
    }
    resp_header(p, "X-Request-Id", r->rid);
    r->resp = p;
    r->status = status;
    if (r->suspended) {
        r->suspended = 0;
        r->srv->inflight--;
    }
    struct hconn *c = r->conn;
    if (!c) { /* its connection closed while it waited for the store */
        req_free(r->srv, r);
        return;
    }
    /* written after the handler or callback returns (it may still look at
     * the request), from the loop's after-poll pass */
    if (r->dispatched) schedule(c);
}

static void set_body(struct resp *p, struct buf *body)
{
    p->body = buf_take(body, &p->blen);
}

void reply_json_h(struct req *r, int status, struct buf *body, const struct reply_header *h, int nh)
{
    if (body->overflow) {
        buf_free(body);
        reply_problem(r, LD_E_INTERNAL, "The response exceeded the server's size limit");
        return;
    }
    struct resp *p = resp_new(status, "application/json");
    set_body(p, body);
    for (int i = 0; i < nh; i++)
        resp_header(p, h[i].name, h[i].value);
    set_response(r, status, p);
}

void reply_json_shared(struct req *r, int status, const char *body, size_t len,
                       void (*release)(void *owner), void *owner, const struct reply_header *h,
                       int nh)
{
    struct resp *p = resp_new(status, "application/json");
    p->body = (char *)body;
    p->blen = len;
    p->body_static = 1;
    p->body_release = release;
    p->body_owner = owner;
    for (int i = 0; i < nh; i++)
        resp_header(p, h[i].name, h[i].value);
    set_response(r, status, p);
}

void reply_stream(struct req *r, int status, const char *ctype, reply_more_fn more,
                  void (*release)(void *ud), void *ud)
{
    reply_stream_h(r, status, ctype, NULL, 0, more, release, ud);
}

void reply_stream_h(struct req *r, int status, const char *ctype, const struct reply_header *h,
                    int nh, reply_more_fn more, void (*release)(void *ud), void *ud)
{
    struct resp *p = resp_new(status, ctype);
    for (int i = 0; i < nh; i++)
        resp_header(p, h[i].name, h[i].value);
    p->more = more;
    p->release = release;
    p->ud = ud;
    buf_init(&p->piece, LD_MAX_STREAM_PIECE);
    set_response(r, status, p);
}

void reply_html(struct req *r, struct buf *body, const struct reply_header *h, int nh)
{
    struct resp *p = resp_new(200, "text/html; charset=utf-8");
    set_body(p, body);
    for (int i = 0; i < nh; i++)
        resp_header(p, h[i].name, h[i].value);
    set_response(r, 200, p);
}

void reply_json(struct req *r, int status, struct buf *body)
{
    reply_json_h(r, status, body, NULL, 0);
}

void reply_text(struct req *r, int status, const char *ctype, const char *text, size_t len,
                int copy)
{
    struct resp *p = resp_new(status, ctype);
    if (copy) {
        p->body = xmalloc(len + 1);
        memcpy(p->body, text, len);
    } else {
        p->body = (char *)text;
        p->body_static = 1;
    }
    p->blen = len;
    set_response(r, status, p);
}

void reply_empty(struct req *r, int status, const struct reply_header *h, int nh)
{
    struct resp *p = resp_new(status, NULL);
    for (int i = 0; i < nh; i++)
        resp_header(p, h[i].name, h[i].value);
    set_response(r, status, p);
}

static void problem_body(struct buf *b, enum ld_err e, const char *detail, const char *instance)
{
    struct jw w;
    jw_init(&w, b);
    jw_obj(&w);
    jw_kstr(&w, "type", "about:blank");
    jw_kstr(&w, "title", ld_err_title(e));
    jw_ki64(&w, "status", ld_err_status(e));
    jw_kstr(&w, "detail", detail);
    jw_kstr(&w, "code", ld_err_code(e));
    if (instance) jw_kstr(&w, "instance", instance);
    if (e == LD_E_RATE_LIMITED || e == LD_E_UNAVAILABLE) jw_ki64(&w, "retry_after_seconds", 1);
    jw_end(&w);
}

static void vproblem(struct req *r, enum ld_err e, const struct reply_header *h, int nh,
                     const char *fmt, va_list ap)
{
    char detail[512];
    vsnprintf(detail, sizeof(detail), fmt, ap);
    /* one line of valid UTF-8 whatever a detail quotes from the request
     * (a header's obs-text bytes) and wherever the 512 bytes cut it */
    utf8_scrub(detail);
    /* The path is echoed as `instance` once it is known to be printable,
     * and only when short: a request line may be 8 KiB, and the body must
     * stay whole (a path of 7 KB once overflowed the buffer, and the answer
     * went out without its closing brace). */
    const char *instance = r->path && r->path[0] == '/' ? r->path : NULL;
    if (instance && strlen(instance) > MAX_INSTANCE) instance = NULL;
    struct buf b;
    buf_init(&b, PROBLEM_BODY_MAX);
    problem_body(&b, e, detail, instance);
    if (b.overflow) { /* cannot happen within the bounds above; never send a cut body */
        buf_reset(&b);
        problem_body(&b, e, ld_err_title(e), NULL);
    }
    struct resp *p = resp_new(ld_err_status(e), "application/problem+json");
    set_body(p, &b);
    if (e == LD_E_RATE_LIMITED || e == LD_E_UNAVAILABLE) resp_header(p, "Retry-After", "1");
    for (int i = 0; i < nh; i++)
        resp_header(p, h[i].name, h[i].value);
    set_response(r, ld_err_status(e), p);
}

void reply_problem(struct req *r, enum ld_err e, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vproblem(r, e, NULL, 0, fmt, ap);
    va_end(ap);
}

void reply_problem_h(struct req *r, enum ld_err e, const struct reply_header *h, int nh,
                     const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vproblem(r, e, h, nh, fmt, ap);
    va_end(ap);
}

void req_suspend(struct req *r)
{
    if (r->resp || r->suspended) return;
    r->suspended = 1;
    r->srv->inflight++;
}

/* ---- connections ---- */

static void watch(struct hconn *c, uint32_t ev);

static struct ipcount **ip_slot(struct server *s, uint32_t ip)
{
    struct ipcount **p = &s->ips[(ip * 2654435761u) >> 22 & (IP_BUCKETS - 1)];
    while (*p && (*p)->ip != ip)
        p = &(*p)->next;
    return p;
}

static void ip_release(struct server *s, uint32_t ip)
{
    struct ipcount **p = ip_slot(s, ip);
    if (*p && --(*p)->n == 0) {
        struct ipcount *e = *p;
        *p = e->next;
        free(e);
    }
}

static void log_request(struct server *s, struct req *r)
{
    if (!log_enabled(LOG_INFO)) return;
    static const char *const m[] = {"GET",   "HEAD",   "POST",    "PUT",
                                    "PATCH", "DELETE", "OPTIONS", "OTHER"};
    char st[8], dur[24];
    snprintf(st, sizeof(st), "%d", r->status);
    snprintf(dur, sizeof(dur), "%lld", (long long)(now_us() - r->t0));
    log_kv(LOG_INFO, "request", "rid", r->rid, "method", m[r->method], "path",
           r->path ? r->path : "-", "status", st, "dur_us", dur, "org",
           r->who.org_id[0] ? r->who.org_id : "-", NULL);
}

static void req_free(struct server *s, struct req *r)
{
    if (!r->resp && !r->status) r->status = 499; /* client went away */
    count_request(s, r);
    log_request(s, r);
    resp_free(r->resp);
    buf_free(&r->body);
    arena_free(&r->arena);
    free(r);
}

/* The request is over (answered and written, or its client is gone). */
static void req_finish(struct hconn *c)
{
    struct req *r = c->r;
    if (!r) return;
    c->r = NULL;
    if (r->suspended) {
        /* the store op still holds the request: its answer frees it */
        r->conn = NULL;
        return;
    }
    req_free(c->s, r);
}

static void conn_close(struct hconn *c)
{
    if (c->dead) return;
    c->dead = 1;
    struct server *s = c->s;
    if (c->watching) loop_del_fd(s->loop, c->fd);
    c->watching = 0;
    if (!c->detached) close(c->fd);
    c->fd = -1;
    req_finish(c);
    c->prev->next = c->next;
    c->next->prev = c->prev;
    s->nconns--;
    ip_release(s, c->ip);
    c->dnext = s->dead;
    s->dead = c;
}

static void free_dead(struct server *s)
{
    while (s->dead) {
        struct hconn *c = s->dead;
        s->dead = c->dnext;
        free(c->in);
        free(c);
    }
}

static void on_conn(void *ud, uint32_t events);

static void watch(struct hconn *c, uint32_t ev)
{
    if (c->dead) return;
    if (!ev) {
        if (c->watching) loop_del_fd(c->s->loop, c->fd);
        c->watching = 0;
        return;
    }
    if (c->watching == (int)ev) return;
    if (loop_add_fd(c->s->loop, c->fd, ev, on_conn, c) == 0)
        c->watching = (int)ev;
    else
        conn_close(c);
}

static void date_header(struct server *s)
{
    time_t t = time(NULL);
    if (t == s->date_sec) return;
    s->date_sec = t;
    struct tm tm;
    gmtime_r(&t, &tm);
    strftime(s->date, sizeof(s->date), "%a, %d %b %Y %H:%M:%S GMT", &tm);
}

/* Completes the head of the answer and starts sending it. */
static void start_write(struct hconn *c)
{
    struct req *r = c->r;
    struct resp *p = r->resp;
    struct server *s = c->s;
    if (s->quiescing) c->close_after = 1;
    if (r->status == 204 || r->status == 304 || r->method == M_HEAD) p->no_body = 1;
    if (p->more) { /* no length: chunked, or up to the close for HTTP/1.0 */
        if (r->http10)
            c->close_after = 1;
        else {
            p->chunked = 1;
            buf_puts(&p->head, "Transfer-Encoding: chunked\r\n");
        }
    } else if (r->status != 204 && r->status != 304) {
        buf_puts(&p->head, "Content-Length: ");
        buf_i64(&p->head, (int64_t)p->blen);
        buf_puts(&p->head, "\r\n");
    }
    date_header(s);
    buf_puts(&p->head, "Date: ");
    buf_puts(&p->head, s->date);
    buf_puts(&p->head, c->close_after ? "\r\nConnection: close\r\n\r\n" : "\r\n\r\n");
    if (p->head.overflow) { /* a handler's headers passed 64 KiB: cannot be sent */
        c->close_after = 1;
        conn_close(c);
        return;
    }
    c->iov[0].iov_base = p->head.data;
    c->iov[0].iov_len = p->head.len;
    c->niov = 1;
    if (!p->no_body && p->blen) {
        c->iov[1].iov_base = p->body;
        c->iov[1].iov_len = p->blen;
        c->niov = 2;
    }
    c->state = CS_WRITE;
    c->deadline = now_us() + s->cfg->request_timeout * 1000000;
    on_conn(c, EPOLLOUT);
}

static void process(struct hconn *c);

/* The answer is out: next request, or close. */
static void request_done(struct hconn *c)
{
    req_finish(c);
    if (c->close_after) {
        /* let the client read the answer before it sees the close */
        shutdown(c->fd, SHUT_WR);
        c->state = CS_LINGER;
        c->deadline = now_us() + LINGER_US;
        c->in_len = 0;
        watch(c, EPOLLIN | EPOLLRDHUP);
        return;
    }
    c->state = CS_IDLE;
    c->chunked = 0;
    c->body_left = 0;
    c->deadline = now_us() + (c->s->cfg->idle_timeout + c->s->cfg->request_timeout) * 1000000;
    if (c->in_len) {
        schedule(c); /* a pipelined request is already here */
        return;
    }
    free(c->in); /* an idle connection holds no buffer */
    c->in = NULL;
    c->in_cap = 0;
    watch(c, EPOLLIN | EPOLLRDHUP);
}

/* The next piece of a streamed body into iov[1]: 1 when one is queued, 0
 * when the body is complete, -1 when the connection was closed. */
static int next_piece(struct hconn *c)
{
    struct resp *p = c->r ? c->r->resp : NULL;
    if (!p || !p->more || p->no_body || p->ended) return 0;
    buf_reset(&p->piece);
    if (p->chunked) buf_puts(&p->piece, "00000000\r\n"); /* size filled in below */
    int rc = p->more(p->ud, &p->piece);
    if (rc < 0 || p->piece.overflow) { /* the client sees a cut body */
        log_error("streamed answer cut short", "rid", c->r->rid, NULL);
        conn_close(c);
        return -1;
    }
    if (rc == 0) p->ended = 1;
    if (p->chunked) {
        size_t n = p->piece.len - 10;
        if (n) {
            char hex[9]; /* n < LD_MAX_STREAM_PIECE: 8 hex digits */
            snprintf(hex, sizeof(hex), "%08x", (unsigned)n);
            memcpy(p->piece.data, hex, 8);
            buf_puts(&p->piece, "\r\n");
        } else {
            buf_reset(&p->piece); /* a zero-size chunk would end the body */
        }
        if (p->ended) buf_puts(&p->piece, "0\r\n\r\n");
    }
    if (!p->piece.len) return p->ended ? 0 : next_piece(c);
    c->iov[0].iov_len = 0;
    c->iov[1].iov_base = p->piece.data;
    c->iov[1].iov_len = p->piece.len;
    c->niov = 2;
    return 1;
}

static void flush_out(struct hconn *c)
{
    /* a streamed body yields to the loop every few pieces: a fast reader
     * of a long answer must not hold up every other connection */
    int pieces = 0;
again:
    while (c->niov) {
        struct iovec *v = c->iov;
        int n = c->niov;
        if (!v[0].iov_len) {
            v = c->iov + 1;
            n = 1;
        }
        struct msghdr mh = {.msg_iov = v, .msg_iovlen = (size_t)n};
        ssize_t w = sendmsg(c->fd, &mh, MSG_NOSIGNAL | MSG_DONTWAIT);
        if (w < 0) {
            if (errno == EINTR) continue;
            if (errno == EAGAIN || errno == EWOULDBLOCK) {
                watch(c, EPOLLOUT);
                return;
            }
            conn_close(c);
            return;
        }
        size_t left = (size_t)w;
        for (int i = 0; i < c->niov && left; i++) {
            size_t k = left < c->iov[i].iov_len ? left : c->iov[i].iov_len;
            c->iov[i].iov_base = (char *)c->iov[i].iov_base + k;
            c->iov[i].iov_len -= k;
            left -= k;
        }
        if (c->iov[c->niov - 1].iov_len == 0) c->niov = 0;
        c->deadline = now_us() + c->s->cfg->request_timeout * 1000000;
    }
    struct resp *rp = c->r ? c->r->resp : NULL;
    if (pieces == STREAM_PIECES_PER_TURN && rp && rp->more && !rp->ended) {
        watch(c, EPOLLOUT); /* writable: back on the next loop iteration */
        return;
    }
    int k = next_piece(c);
    if (k < 0) return;
    if (k > 0) {
        pieces++;
        goto again;
    }
    request_done(c);
}

/* ---- request parsing ---- */

static int method_of(const char *m, size_t n)
{
    static const char *const names[] = {"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"};
    for (int i = 0; i < 7; i++)
        if (strlen(names[i]) == n && memcmp(m, names[i], n) == 0) return i;
    return M_OTHER;
}

static int is_tchar(unsigned char c)
{
    return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
           (c && strchr("!#$%&'*+-.^_`|~", c));
}

/* [p, e) is a non-empty RFC 9110 token (a method, a header name) */
static int is_token(const char *p, const char *e)
{
    if (p == e) return 0;
    for (; p < e; p++)
        if (!is_tchar((unsigned char)*p)) return 0;
    return 1;
}

static int is_digit(char ch)
{
    return ch >= '0' && ch <= '9';
}

static int hexval(int c)
{
    if (c >= '0' && c <= '9') return c - '0';
    if (c >= 'a' && c <= 'f') return c - 'a' + 10;
    if (c >= 'A' && c <= 'F') return c - 'A' + 10;
    return -1;
}

static void fail(struct hconn *c, enum ld_err e, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

/* Percent-decodes [s, s+n) into the arena ('+' is a space in a query);
 * NULL if an escape is malformed or the result would hold a NUL or invalid
 * UTF-8, with *why (if given) saying which. */
static char *decode(struct arena *a, const char *s, size_t n, int plus, const char **why)
{
    char *o = arena_alloc(a, n + 1), *q = o;
    for (size_t i = 0; i < n; i++) {
        char ch = s[i];
        if (ch == '%') {
            int hi = i + 1 < n ? hexval((unsigned char)s[i + 1]) : -1;
            int lo = i + 2 < n ? hexval((unsigned char)s[i + 2]) : -1;
            if (hi < 0 || lo < 0) {
                if (why) *why = "a malformed percent-escape (a % must begin %XX)";
                return NULL;
            }
            ch = (char)(hi * 16 + lo);
            if (!ch) {
                if (why) *why = "%00 (a NUL byte is not allowed)";
                return NULL;
            }
            i += 2;
        } else if (ch == '+' && plus) {
            ch = ' ';
        }
        *q++ = ch;
    }
    *q = 0;
    /* values reach JSON (problem details, stored fields): UTF-8 only */
    if (utf8_valid(o, (size_t)(q - o))) return o;
    if (why) *why = "bytes that are not UTF-8 once decoded";
    return NULL;
}

/* 0, or -1 with the 400 answered naming the parameter and the fault */
static int parse_query(struct hconn *c, const char *q, size_t n)
{
    struct req *r = c->r;
    int cap = 1;
    for (size_t i = 0; i < n; i++)
        if (q[i] == '&') cap++;
    r->query = arena_alloc(&r->arena, sizeof(*r->query) * (size_t)cap);
    size_t i = 0;
    while (i < n) {
        size_t j = i;
        while (j < n && q[j] != '&')
            j++;
        if (j > i) {
            const char *eq = memchr(q + i, '=', j - i);
            size_t kl = eq ? (size_t)(eq - (q + i)) : j - i;
            const char *why = NULL;
            char *k = decode(&r->arena, q + i, kl, 1, &why);
            if (!k) {
                fail(c, LD_E_BAD_REQUEST, "A query parameter's name holds %s", why);
                return -1;
            }
            char *v = eq ? decode(&r->arena, eq + 1, (size_t)(q + j - eq - 1), 1, &why)
                         : arena_strdup(&r->arena, "");
            if (!v) {
                fail(c, LD_E_BAD_REQUEST, "Query parameter '%.64s' holds %s", k, why);
                return -1;
            }
            r->query[r->nquery].name = k;
            r->query[r->nquery].value = v;
            r->nquery++;
        }
        i = j + 1;
    }
    return 0;
}

static struct req *req_new(struct hconn *c)
{
    struct server *s = c->s;
    struct req *r = xcalloc(1, sizeof(*r));
    r->srv = s;
    r->st = s->st;
    r->eng = s->eng;
    r->cfg = s->cfg;
    r->conn = c;
    r->route = -1;
    r->t0 = now_us();
    r->method = M_OTHER;
    arena_init(&r->arena);
    /* "%s%08llx" by hand: snprintf was ~1,000 instructions a request */
    unsigned long long id = ++s->req_id;
    size_t pl = strlen(s->rid_prefix);
    int nd = 8;
    while (nd < 16 && pl + (size_t)nd + 1 < sizeof(r->rid) && id >> (4 * nd))
        nd++;
    memcpy(r->rid, s->rid_prefix, pl);
    for (int i = 0; i < nd; i++)
        r->rid[pl + (size_t)i] = "0123456789abcdef"[(id >> (4 * (nd - 1 - i))) & 15];
    r->rid[pl + (size_t)nd] = 0;
    buf_init(&r->body, (size_t)s->cfg->max_body);
    c->r = r;
    return r;
}

/* An error found while receiving: answer it and close the connection. */
static void fail(struct hconn *c, enum ld_err e, const char *fmt, ...)
{
    struct req *r = c->r ? c->r : req_new(c);
    char d[256];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(d, sizeof(d), fmt, ap);
    va_end(ap);
    c->close_after = 1;
    c->state = CS_BUSY;
    r->dispatched = 1;
    reply_problem(r, e, "%s", d);
}

/* Transfer-Encoding: RFC 9112 6.1 and 6.3.  Its lines are one list, in
 * order (RFC 9110 5.3), read a line at a time into struct codings (so many
 * lines cost no more than one long one). */
struct codings {
    int n, chunked, last_chunked;
    const char *other; /* the first coding that is not chunked */
    size_t other_len;
};

/* adds one line's codings; -1 if the line is not a list of them (an empty
 * member, a byte no token has: no body can be framed by it) */
static int codings_add(struct codings *k, const char *p)
{
    for (;;) {
        while (*p == ' ' || *p == '\t')
            p++;
        const char *b = p;
        while (is_tchar((unsigned char)*p))
            p++;
        const char *e = p;
        while (*p == ' ' || *p == '\t')
            p++;
        if (b == e || (*p && *p != ',')) return -1;
        k->n++;
        k->last_chunked = (size_t)(e - b) == 7 && strncasecmp(b, "chunked", 7) == 0;
        if (k->last_chunked) {
            k->chunked++;
        } else if (!k->other) {
            k->other = b;
            k->other_len = (size_t)(e - b);
        }
        if (!*p) return 0;
        p++;
    }
}

/* A list that does not end in chunked, or applies it twice, cannot frame a
 * body: 400.  A list that ends in chunked after a coding this server does
 * not decode (gzip, chunked): 501.  Returns 0 for plain chunked. */
static int codings_check(struct hconn *c, const struct codings *k, int malformed)
{
    if (malformed || !k->last_chunked || k->chunked > 1) {
        fail(c, LD_E_BAD_REQUEST, "%s",
             malformed        ? "Transfer-Encoding is not a list of transfer codings"
             : k->chunked > 1 ? "Transfer-Encoding applies chunked more than once"
                              : "Transfer-Encoding must end with chunked to frame a request body");
        return -1;
    }
    if (k->n > 1) {
        fail(c, LD_E_NOT_IMPLEMENTED,
             "Transfer coding '%.*s' is not supported; send the body chunked or with "
             "Content-Length",
             (int)(k->other_len > 40 ? 40 : k->other_len), k->other);
        return -1;
    }
    return 0;
}

/* Headers that may appear once (the first H_NSINGLE), then the two list
 * headers whose lines are joined; header_kind() finds them by length first,
 * since most headers are none of these. */
enum { H_HOST, H_AUTH, H_ORG, H_IDEM, H_CTYPE, H_LEID, H_NSINGLE, H_IFM = H_NSINGLE, H_IFNM };
static const char *const single_name[H_NSINGLE] = {
    "Host", "Authorization", "X-Org-Id", "Idempotency-Key", "Content-Type", "Last-Event-ID"};

static int header_kind(const char *name, size_t n)
{
    switch (n) {
    case 4:
        return strcasecmp(name, "Host") == 0 ? H_HOST : -1;
    case 8:
        if (strcasecmp(name, "X-Org-Id") == 0) return H_ORG;
        return strcasecmp(name, "If-Match") == 0 ? H_IFM : -1;
    case 12:
        return strcasecmp(name, "Content-Type") == 0 ? H_CTYPE : -1;
    case 13:
        if (strcasecmp(name, "Authorization") == 0) return H_AUTH;
        if (strcasecmp(name, "Last-Event-ID") == 0) return H_LEID;
        return strcasecmp(name, "If-None-Match") == 0 ? H_IFNM : -1;
    case 15:
        return strcasecmp(name, "Idempotency-Key") == 0 ? H_IDEM : -1;
    default:
        return -1;
    }
}

/* Parses the head in in[0, hlen): request line and headers.  0 ok, -1
 * answered (the connection closes). */
static int parse_head(struct hconn *c, size_t hlen)
{
    struct server *s = c->s;
    struct req *r = req_new(c);
    const char *p = c->in, *end = c->in + hlen - 2; /* before the last CRLF */
    const char *eol = memchr(p, '\r', (size_t)(end - p) + 1);
    if (!eol || eol[1] != '\n') {
        fail(c, LD_E_BAD_REQUEST, "Malformed request line");
        return -1;
    }
    const char *sp1 = memchr(p, ' ', (size_t)(eol - p));
    const char *sp2 = sp1 ? memchr(sp1 + 1, ' ', (size_t)(eol - sp1 - 1)) : NULL;
    if (!sp1 || !sp2 || !is_token(p, sp1)) {
        fail(c, LD_E_BAD_REQUEST, "Malformed request line");
        return -1;
    }
    r->method = method_of(p, (size_t)(sp1 - p));
    const char *ver = sp2 + 1;
    size_t vl = (size_t)(eol - ver);
    if (vl == 8 && memcmp(ver, "HTTP/1.1", 8) == 0) {
        r->http10 = 0;
    } else if (vl == 8 && memcmp(ver, "HTTP/1.0", 8) == 0) {
        r->http10 = 1;
    } else if (vl == 8 && memcmp(ver, "HTTP/", 5) == 0 && is_digit(ver[5]) && ver[6] == '.' &&
               is_digit(ver[7])) {
        /* a well-formed version this server does not speak (RFC 9110 15.6.6);
         * anything else in its place is a malformed request line */
        fail(c, LD_E_VERSION, "HTTP version '%.8s' is not supported; use HTTP/1.1", ver);
        return -1;
    } else {
        fail(c, LD_E_BAD_REQUEST, "Malformed request line");
        return -1;
    }
    /* the target: origin-form only */
    const char *t = sp1 + 1;
    size_t tl = (size_t)(sp2 - t);
    if (tl > MAX_REQUEST_LINE) {
        fail(c, LD_E_URI_TOO_LONG, "The request target exceeds the limit of %d bytes",
             MAX_REQUEST_LINE);
        return -1;
    }
    if (!tl || t[0] != '/') {
        fail(c, LD_E_BAD_REQUEST, "The request target must be an absolute path");
        return -1;
    }
    for (size_t i = 0; i < tl; i++)
        if ((unsigned char)t[i] <= 0x20 || (unsigned char)t[i] >= 0x7f) {
            fail(c, LD_E_BAD_REQUEST, "The request target holds an invalid character");
            return -1;
        }
    const char *qm = memchr(t, '?', tl);
    size_t pl = qm ? (size_t)(qm - t) : tl;
    /* a path that does not decode (a bad escape, or %00) is routed as it
     * came, so the answer names what is wrong with it (an ID, a route) */
    const char *path = decode(&r->arena, t, pl, 0, NULL);
    r->path = path ? path : arena_strndup(&r->arena, t, pl);
    if (qm && parse_query(c, qm + 1, (size_t)(t + tl - qm - 1))) return -1;
    /* headers */
    size_t hbytes = hlen - (size_t)(eol + 2 - c->in);
    if (hbytes > (size_t)s->cfg->max_header) {
        fail(c, LD_E_HEADERS_TOO_LARGE, "Request headers exceed the limit of %ld bytes",
             s->cfg->max_header);
        return -1;
    }
    int cap = 8;
    for (const char *q = eol + 2; q < end && (q = memchr(q, '\n', (size_t)(end - q))); q++)
        cap++;
    r->hdrs = arena_alloc(&r->arena, sizeof(*r->hdrs) * (size_t)cap);
    const char *cl = NULL, *te = NULL, *expect = NULL, *conn = NULL;
    int cl_conflict = 0, te_malformed = 0;
    unsigned seen = 0;         /* H_* bits of the single-valued headers met */
    int list_at[2] = {-1, -1}; /* r->hdrs index of If-Match, If-None-Match */
    struct codings codings = {0};
    for (p = eol + 2; p < end;) {
        const char *le = memchr(p, '\r', (size_t)(end - p) + 1);
        if (!le || le[1] != '\n') {
            fail(c, LD_E_BAD_REQUEST, "Malformed header line");
            return -1;
        }
        if (*p == ' ' || *p == '\t') {
            fail(c, LD_E_BAD_REQUEST, "Folded header lines are not accepted");
            return -1;
        }
        const char *colon = memchr(p, ':', (size_t)(le - p));
        if (!colon || !is_token(p, colon)) {
            fail(c, LD_E_BAD_REQUEST, "Malformed header line");
            return -1;
        }
        const char *v = colon + 1, *ve = le;
        while (v < ve && (*v == ' ' || *v == '\t'))
            v++;
        while (ve > v && (ve[-1] == ' ' || ve[-1] == '\t'))
            ve--;
        /* no CR: the line ends at its first (le) */
        if (memchr(v, '\n', (size_t)(ve - v)) || memchr(v, 0, (size_t)(ve - v))) {
            fail(c, LD_E_BAD_REQUEST, "A header value holds a control character");
            return -1;
        }
        char *name = arena_strndup(&r->arena, p, (size_t)(colon - p));
        char *value = arena_strndup(&r->arena, v, (size_t)(ve - v));
        size_t nl = (size_t)(colon - p);
        int h = header_kind(name, nl);
        if (h >= 0 && h < H_NSINGLE) {
            /* one value or none: which of two would count is a guess that a
             * proxy in front of loopd may have guessed otherwise */
            if (seen & 1u << h) {
                fail(c, LD_E_BAD_REQUEST, "More than one %s header", single_name[h]);
                return -1;
            }
            seen |= 1u << h;
        } else if (h >= H_NSINGLE) {
            /* a list may come on several lines: one value, in order (RFC 9110 5.3) */
            int at = list_at[h - H_NSINGLE];
            if (at >= 0) {
                struct req_kv *prev = &r->hdrs[at];
                size_t n1 = strlen(prev->value), n2 = (size_t)(ve - v);
                char *joined = arena_alloc(&r->arena, n1 + n2 + 3);
                memcpy(joined, prev->value, n1);
                memcpy(joined + n1, ", ", 2);
                memcpy(joined + n1 + 2, value, n2 + 1);
                prev->value = joined;
                p = le + 2;
                continue;
            }
            list_at[h - H_NSINGLE] = r->nhdrs;
        }
        r->hdrs[r->nhdrs].name = name;
        r->hdrs[r->nhdrs].value = value;
        r->nhdrs++;
        /* by length first: most headers are none of these four */
        if (nl == 14 && strcasecmp(name, "Content-Length") == 0) {
            if (cl && strcmp(cl, value) != 0) cl_conflict = 1;
            cl = value;
        } else if (nl == 17 && strcasecmp(name, "Transfer-Encoding") == 0) {
            te = value;
            if (codings_add(&codings, value)) te_malformed = 1;
        } else if (nl == 6 && strcasecmp(name, "Expect") == 0) {
            expect = value;
        } else if (nl == 10 && strcasecmp(name, "Connection") == 0) {
            conn = value;
        }
        p = le + 2;
    }
    if (!r->http10 && !(seen & 1u << H_HOST)) { /* RFC 9112 3.2 */
        fail(c, LD_E_BAD_REQUEST, "An HTTP/1.1 request needs a Host header");
        return -1;
    }
    if (c->eof)
        c->close_after = 1;
    else if (r->http10)
        c->close_after = !(conn && strcasestr(conn, "keep-alive"));
    else
        c->close_after = conn && strcasestr(conn, "close") != NULL;
    /* RFC 9112 6.3: conflicting lengths, or a length beside a transfer
     * coding, cannot be framed safely; only chunked is understood */
    if (cl_conflict || (te && cl)) {
        fail(c, LD_E_BAD_REQUEST, "%s",
             cl_conflict ? "Conflicting Content-Length headers"
                         : "Content-Length with Transfer-Encoding");
        return -1;
    }
    if (te) {
        if (codings_check(c, &codings, te_malformed)) return -1;
        if (r->http10) {
            fail(c, LD_E_BAD_REQUEST, "Transfer-Encoding is not allowed in HTTP/1.0");
            return -1;
        }
        c->chunked = 1;
        c->ch_state = CH_SIZE;
    } else if (cl) {
        uint64_t n = 0;
        size_t len = strlen(cl);
        if (!len || len > 19 || strspn(cl, "0123456789") != len) {
            fail(c, LD_E_BAD_REQUEST, "Content-Length must be a non-negative integer, got '%.40s'",
                 cl);
            return -1;
        }
        for (size_t i = 0; i < len; i++)
            n = n * 10 + (uint64_t)(cl[i] - '0');
        if (n > (uint64_t)s->cfg->max_body) {
            fail(c, LD_E_TOO_LARGE, "Request body exceeds the limit of %ld bytes",
                 s->cfg->max_body);
            return -1;
        }
        c->body_left = n;
    }
    if (expect && strcasecmp(expect, "100-continue") == 0 && !r->http10 &&
        (c->chunked || c->body_left) && c->in_len == hlen) {
        static const char cont[] = "HTTP/1.1 100 Continue\r\n\r\n";
        ssize_t w = send(c->fd, cont, sizeof(cont) - 1, MSG_NOSIGNAL | MSG_DONTWAIT);
        (void)w; /* if it does not fit, the client sends the body anyway */
    }
    return 0;
}

static void consume(struct hconn *c, size_t n)
{
    memmove(c->in, c->in + n, c->in_len - n);
    c->in_len -= n;
}

static void dispatch(struct hconn *c)
{
    struct req *r = c->r;
    c->state = CS_BUSY;
    c->deadline = 0;
    char allow[128];
    int ri = route_match(r->method == M_HEAD ? M_GET : r->method, r->path, &r->arena, r->params,
                         allow, sizeof(allow));
    if (ri == -1) {
        reply_problem(r, LD_E_NOT_FOUND, "No route for %s", r->path);
        return;
    }
    if (ri == -2) {
        struct reply_header h = {"Allow", allow};
        reply_problem_h(r, LD_E_METHOD, &h, 1, "Method not allowed; this path accepts %s", allow);
        return;
    }
    r->route = ri;
    if (!routes[ri].public_) {
        extern int auth_resolve(struct req * r);
        if (auth_resolve(r)) return; /* answered 401/404 */
    }
    routes[ri].fn(r);
}

/* Routes the request; answers written once the handler has returned. */
static void run_request(struct hconn *c)
{
    struct req *r = c->r;
    dispatch(c);
    r->dispatched = 1;
    if (c->detached) {
        conn_close(c); /* the handler owns the socket now */
        return;
    }
    if (r->resp) start_write(c);
}

/* Reads what the body framing allows from `in`; 1 when the body is
 * complete, 0 for more, -1 answered (error). */
static int take_body(struct hconn *c)
{
    struct req *r = c->r;
    long max = c->s->cfg->max_body;
    if (!c->chunked) {
        size_t k = c->in_len < c->body_left ? c->in_len : (size_t)c->body_left;
        buf_add(&r->body, c->in, k);
        consume(c, k);
        c->body_left -= k;
        return c->body_left == 0;
    }
    for (;;) {
        switch (c->ch_state) {
        case CH_SIZE: {
            char *le = memmem(c->in, c->in_len, "\r\n", 2);
            if (!le) {
                if (c->in_len > MAX_CHUNK_LINE) {
                    fail(c, LD_E_BAD_REQUEST, "Chunk size line too long");
                    return -1;
                }
                return 0;
            }
            uint64_t n = 0;
            int digits = 0;
            char *q = c->in;
            for (; q < le && hexval((unsigned char)*q) >= 0; q++, digits++) {
                if (n >> 56) break;
                n = n * 16 + (uint64_t)hexval((unsigned char)*q);
            }
            while (q < le && (*q == ' ' || *q == '\t'))
                q++;
            if (!digits || (q < le && *q != ';')) {
                fail(c, LD_E_BAD_REQUEST, "Invalid chunk size in a chunked body");
                return -1;
            }
            if (n > (uint64_t)max || r->body.len + n > (uint64_t)max) {
                fail(c, LD_E_TOO_LARGE, "Request body exceeds the limit of %ld bytes", max);
                return -1;
            }
            consume(c, (size_t)(le + 2 - c->in));
            c->body_left = n;
            c->ch_state = n ? CH_DATA : CH_TRAILER;
            break;
        }
        case CH_DATA: {
            size_t k = c->in_len < c->body_left ? c->in_len : (size_t)c->body_left;
            buf_add(&r->body, c->in, k);
            consume(c, k);
            c->body_left -= k;
            if (c->body_left) return 0;
            c->ch_state = CH_DATA_CRLF;
            break;
        }
        case CH_DATA_CRLF:
            if (c->in_len < 2) return 0;
            if (c->in[0] != '\r' || c->in[1] != '\n') {
                fail(c, LD_E_BAD_REQUEST, "A chunk is longer than its size");
                return -1;
            }
            consume(c, 2);
            c->ch_state = CH_SIZE;
            break;
        case CH_TRAILER: {
            char *le = memmem(c->in, c->in_len, "\r\n", 2);
            if (!le) {
                if (c->in_len > (size_t)c->s->cfg->max_header) {
                    fail(c, LD_E_HEADERS_TOO_LARGE, "Chunked trailer too large");
                    return -1;
                }
                return 0;
            }
            int empty = le == c->in;
            consume(c, (size_t)(le + 2 - c->in));
            if (empty) return 1;
            break;
        }
        }
    }
}

/* The first "\r\n\r\n" in the n bytes at p, or NULL: found from the line
 * ends memchr finds (glibc's memmem cost ~850 instructions per request). */
static char *head_end(char *p, size_t n)
{
    for (char *q = p, *end = p + n; (q = memchr(q, '\n', (size_t)(end - q))); q++)
        if (q - p >= 3 && q[-1] == '\r' && q[-2] == '\n' && q[-3] == '\r') return q - 3;
    return NULL;
}

/* Runs the state machine over what `in` holds. */
static void process(struct hconn *c)
{
    struct server *s = c->s;
    for (;;) {
        if (c->dead) return;
        if (c->state == CS_NEW || c->state == CS_IDLE) {
            if (!c->in_len) return;
            if (c->state == CS_IDLE) {
                /* the first byte of a request starts its deadline */
                int64_t d = now_us() + s->cfg->request_timeout * 1000000;
                if (d < c->deadline) c->deadline = d;
                c->state = CS_NEW;
            }
            char *he = head_end(c->in, c->in_len);
            if (!he) {
                const char *eol = memchr(c->in, '\n', c->in_len);
                if (!eol && c->in_len > MAX_REQUEST_LINE + 64)
                    fail(c, LD_E_URI_TOO_LONG, "The request target exceeds the limit of %d bytes",
                         MAX_REQUEST_LINE);
                else if (c->in_len > (size_t)s->cfg->max_header + MAX_REQUEST_LINE + 64)
                    fail(c, LD_E_HEADERS_TOO_LARGE, "Request headers exceed the limit of %ld bytes",
                         s->cfg->max_header);
                else
                    break;
                return;
            }
            size_t hlen = (size_t)(he + 4 - c->in);
            if (parse_head(c, hlen)) return;
            consume(c, hlen);
            if (c->chunked || c->body_left) {
                c->state = CS_BODY;
                c->deadline = c->r->t0 + s->cfg->request_timeout * 1000000;
            } else {
                run_request(c);
                return;
            }
        }
        if (c->state == CS_BODY) {
            int rc = take_body(c);
            if (rc < 0) return;
            if (rc == 0) break;
            run_request(c);
            return;
        }
        return;
    }
    if (!c->eof) watch(c, EPOLLIN | EPOLLRDHUP); /* more input is needed */
}

/* Reads what the socket has into `in` (at most a head's worth plus one
 * read ahead of what process() consumes).  -1 if the connection closed. */
static int read_in(struct hconn *c)
{
    size_t limit = (size_t)c->s->cfg->max_header + MAX_REQUEST_LINE + 128 + READ_CHUNK;
    for (;;) {
        if (c->in_cap - c->in_len < 1024) {
            if (c->in_len >= limit) return 0; /* process() answers or consumes */
            size_t cap = c->in_cap ? c->in_cap * 2 : IN_FIRST;
            c->in = xrealloc(c->in, cap);
            c->in_cap = cap;
        }
        ssize_t n = recv(c->fd, c->in + c->in_len, c->in_cap - c->in_len, MSG_DONTWAIT);
        if (n > 0) {
            c->in_len += (size_t)n;
            if (c->in_len < c->in_cap) return 0; /* drained */
            if (c->state == CS_BODY) {
                process(c); /* make room: the body moves out of `in` */
                if (c->dead) return -1;
                if (c->state != CS_BODY) return 0;
            }
            continue;
        }
        if (n < 0 && errno == EINTR) continue;
        if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) return 0;
        if (n < 0) {
            conn_close(c);
            return -1;
        }
        /* EOF: the client is done sending (maybe a half-close): what it
         * sent in full is answered, then the connection closes */
        c->eof = 1;
        c->close_after = 1;
        watch(c, 0);
        if (c->state == CS_BUSY) return -1;
        if (c->in_len) process(c);
        if (!c->dead && (c->state == CS_NEW || c->state == CS_IDLE || c->state == CS_BODY))
            conn_close(c); /* a request cut short is not answered */
        return -1;
    }
}

static void on_conn(void *ud, uint32_t events)
{
    struct hconn *c = ud;
    if (c->dead) return;
    if (c->state == CS_WRITE) {
        if (events & (EPOLLOUT | EPOLLERR | EPOLLHUP)) flush_out(c);
        return;
    }
    if (c->state == CS_LINGER) {
        char junk[4096];
        for (;;) {
            ssize_t n = recv(c->fd, junk, sizeof(junk), MSG_DONTWAIT);
            if (n > 0) continue;
            if (n < 0 && errno == EINTR) continue;
            if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) return;
            conn_close(c);
            return;
        }
    }
    if (read_in(c)) return;
    if (c->state == CS_BUSY) {
        /* bytes sent ahead while the answer is pending wait in `in`; past
         * what `in` may hold, stop reading until the answer is out */
        if (c->in_len >= (size_t)c->s->cfg->max_header + MAX_REQUEST_LINE + 128 + READ_CHUNK)
            watch(c, 0);
        return;
    }
    process(c);
}

static void schedule(struct hconn *c)
{
    if (c->queued || c->dead) return;
    c->queued = 1;
    c->rnext = c->s->ready;
    c->s->ready = c;
}

/* Answers ready to go out and pipelined requests, then the dead. */
static void drain_ready(struct server *s)
{
    while (s->ready) {
        struct hconn *c = s->ready;
        s->ready = c->rnext;
        c->queued = 0;
        if (c->dead) continue;
        if (c->state == CS_BUSY && c->r && c->r->resp)
            start_write(c);
        else if (c->state == CS_IDLE || c->state == CS_NEW)
            process(c);
    }
    free_dead(s);
}

/* ---- accepting ---- */

static void refuse(int fd, enum ld_err e, const char *detail)
{
    struct buf b, h;
    buf_init(&b, 2048);
    buf_init(&h, 4096);
    problem_body(&b, e, detail, NULL);
    buf_printf(&h,
               "HTTP/1.1 %d %s\r\nContent-Type: application/problem+json\r\nRetry-After: 1\r\n"
               "Content-Length: %zu\r\nConnection: close\r\n\r\n",
               ld_err_status(e), ld_err_title(e), b.len);
    buf_add(&h, b.data, b.len);
    ssize_t w = send(fd, h.data, h.len, MSG_DONTWAIT | MSG_NOSIGNAL);
    (void)w;
    buf_free(&b);
    buf_free(&h);
    close(fd);
}

static void on_listen(void *ud, uint32_t events)
{
    struct server *s = ud;
    (void)events;
    for (int i = 0; i < 64 && s->lfd >= 0; i++) {
        struct sockaddr_in sa;
        socklen_t sl = sizeof(sa);
        int fd = accept4(s->lfd, (struct sockaddr *)&sa, &sl, SOCK_NONBLOCK | SOCK_CLOEXEC);
        if (fd < 0) {
            if (errno == EINTR || errno == ECONNABORTED) continue;
            return; /* EAGAIN, or out of descriptors: the next wake-up retries */
        }
        uint32_t ip = sa.sin_family == AF_INET ? sa.sin_addr.s_addr : 0;
        if (s->nconns >= s->cfg->max_connections) {
            refuse(fd, LD_E_UNAVAILABLE, "Too many open connections");
            continue;
        }
        struct ipcount **slot = ip_slot(s, ip);
        if (*slot && (*slot)->n >= s->cfg->max_connections_per_ip) {
            refuse(fd, LD_E_UNAVAILABLE, "Too many open connections from this address");
            continue;
        }
        if (!*slot) {
            *slot = xcalloc(1, sizeof(**slot));
            (*slot)->ip = ip;
        }
        (*slot)->n++;
        int on = 1;
        setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &on, sizeof(on));
        struct hconn *c = xcalloc(1, sizeof(*c));
        c->s = s;
        c->fd = fd;
        c->ip = ip;
        c->state = CS_NEW;
        c->deadline = now_us() + s->cfg->request_timeout * 1000000;
        c->next = s->conns.next;
        c->prev = &s->conns;
        s->conns.next->prev = c;
        s->conns.next = c;
        s->nconns++;
        watch(c, EPOLLIN | EPOLLRDHUP);
    }
}

int req_detach(struct req *r)
{
    struct hconn *c = r->conn;
    if (r->resp || r->detached || !c || c->dead) return -1;
    r->detached = 1;
    r->status = 200;
    c->detached = 1;
    if (c->watching) loop_del_fd(c->s->loop, c->fd);
    c->watching = 0;
    return c->fd;
}

/* The tick: connections past their deadline. */
static void sweep(void *ud)
{
    struct server *s = ud;
    int64_t now = now_us();
    for (struct hconn *c = s->conns.next, *n; c != &s->conns; c = n) {
        n = c->next;
        if (!c->deadline || now < c->deadline) continue;
        if (c->state == CS_BODY || (c->state == CS_NEW && c->in_len)) {
            fail(c, LD_E_TIMEOUT, "The request was not received within the deadline");
        } else if (c->state == CS_NEW && !c->r) {
            /* nothing sent at all: a 408 still tells the client why */
            fail(c, LD_E_TIMEOUT, "The request was not received within the deadline");
        } else {
            conn_close(c); /* idle, lingering, or not reading its answer */
        }
    }
    drain_ready(s);
}

static void on_store(void *ud, uint32_t events)
{
    struct server *s = ud;
    (void)events;
    store_drain(s->st);
}

static void after_poll(void *ud)
{
    drain_ready(ud);
}

static int parse_listen(const char *listen, struct sockaddr_in *sa, char *err, size_t errlen)
{
    char host[128];
    const char *colon = strrchr(listen, ':');
    if (!colon || colon == listen || (size_t)(colon - listen) >= sizeof(host)) {
        snprintf(err, errlen, "--listen must be HOST:PORT, got '%s'", listen);
        return -1;
    }
    memcpy(host, listen, (size_t)(colon - listen));
    host[colon - listen] = 0;
    char *end;
    long port = strtol(colon + 1, &end, 10);
    if (*end || port < 0 || port > 65535) {
        snprintf(err, errlen, "--listen: bad port in '%s'", listen);
        return -1;
    }
    memset(sa, 0, sizeof(*sa));
    sa->sin_family = AF_INET;
    sa->sin_port = htons((uint16_t)port);
    if (strcmp(host, "localhost") == 0) snprintf(host, sizeof(host), "127.0.0.1");
    if (inet_pton(AF_INET, host, &sa->sin_addr) != 1) {
        snprintf(err, errlen, "--listen: '%s' is not an IPv4 address", host);
        return -1;
    }
    return 0;
}

int server_bind(const struct config *cfg, char *err, size_t errlen)
{
    struct sockaddr_in sa;
    if (parse_listen(cfg->listen, &sa, err, errlen)) return -1;
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    int on = 1;
    if (fd < 0 || setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &on, sizeof(on)) < 0 ||
        bind(fd, (struct sockaddr *)&sa, sizeof(sa)) < 0) {
        snprintf(err, errlen, "cannot listen on %s (%s)", cfg->listen, strerror(errno));
        if (fd >= 0) close(fd);
        return -1;
    }
    return fd;
}

struct server *server_start(const struct config *cfg, int fd, struct store *st, struct engine *eng,
                            struct loop *l, char *err, size_t errlen)
{
    if (listen(fd, 4096) < 0) {
        snprintf(err, errlen, "cannot listen on %s (%s)", cfg->listen, strerror(errno));
        close(fd);
        return NULL;
    }
    struct server *s = xcalloc(1, sizeof(*s));
    s->cfg = cfg;
    s->st = st;
    s->eng = eng;
    s->loop = l;
    s->lfd = fd;
    s->conns.next = s->conns.prev = &s->conns;
    s->by_route = xcalloc((size_t)(route_count + 1) * (N_STATUS + 1), sizeof(uint64_t));
    random_hex(s->rid_prefix, 2);
    if (cfg->public_url[0]) {
        str_copy(s->base_url, sizeof(s->base_url), cfg->public_url);
        size_t n = strlen(s->base_url);
        while (n && s->base_url[n - 1] == '/')
            s->base_url[--n] = 0;
    } else {
        struct sockaddr_in bound;
        socklen_t bl = sizeof(bound);
        getsockname(fd, (struct sockaddr *)&bound, &bl);
        char host[64];
        inet_ntop(AF_INET, &bound.sin_addr, host, sizeof(host));
        if (strcmp(host, "0.0.0.0") == 0) snprintf(host, sizeof(host), "127.0.0.1");
        snprintf(s->base_url, sizeof(s->base_url), "http://%s:%u", host,
                 (unsigned)ntohs(bound.sin_port));
    }
    loop_add_fd(l, fd, EPOLLIN, on_listen, s);
    loop_add_fd(l, store_notify_fd(st), EPOLLIN, on_store, s);
    loop_on_tick(l, sweep, s);
    loop_after_poll(l, after_poll, s);
    return s;
}

const char *server_base_url(struct server *s)
{
    return s->base_url;
}

void server_quiesce(struct server *s)
{
    s->quiescing = 1;
    if (s->lfd >= 0) {
        loop_del_fd(s->loop, s->lfd);
        close(s->lfd);
        s->lfd = -1;
    }
    /* idle keep-alive connections have nothing to finish */
    for (struct hconn *c = s->conns.next, *n; c != &s->conns; c = n) {
        n = c->next;
        if (c->state == CS_IDLE || (c->state == CS_NEW && !c->in_len)) conn_close(c);
    }
    drain_ready(s);
}

long server_inflight(struct server *s)
{
    return s->inflight;
}

void server_stop(struct server *s)
{
    if (!s) return;
    while (s->conns.next != &s->conns)
        conn_close(s->conns.next);
    s->ready = NULL;
    free_dead(s);
    if (s->lfd >= 0) {
        loop_del_fd(s->loop, s->lfd);
        close(s->lfd);
    }
    for (int i = 0; i < IP_BUCKETS; i++)
        while (s->ips[i]) {
            struct ipcount *e = s->ips[i];
            s->ips[i] = e->next;
            free(e);
        }
    free(s->by_route);
    free(s);
}
