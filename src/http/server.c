/*
 * server.c — libmicrohttpd glue.
 *
 * DESIGN
 *  - MHD runs with MHD_USE_EPOLL and no thread of its own; its epoll fd is
 *    one fd of our loop, and MHD_run() runs when it is readable or when
 *    MHD's own timeout comes.
 *  - Request life: the access handler is called (1) once when headers are
 *    in: we create the `struct req`, check header size (431) and
 *    Content-Length (413); (2) once per body chunk: appended to a buffer
 *    capped at --max-body; (3) with no data: dispatch.  A handler answers
 *    at once or suspends; when the store op completes, the answer is set
 *    and the connection resumed, and MHD calls (3) again, which queues it.
 *    A response is never queued on call (1) of a good request, because MHD
 *    0.9.75 then adds `Connection: close` (stack-measurements 2.5).
 *  - Deadlines: MHD's timeout counts idle time only.  Each connection has
 *    an absolute deadline while it is receiving a request: idle start +
 *    idle timeout + request timeout before the headers, and first handler
 *    call + request timeout for the body.  The tick sweeps connections;
 *    one past its deadline gets a 408 problem written directly on the
 *    socket (MHD has written nothing yet in those states) and the socket
 *    is shut down, so MHD closes it on its next read.
 *  - Requests whose answer waits for the writer are counted in `inflight`;
 *    on SIGTERM the server stops accepting, lets them finish, then stops.
 */
#include "http/server.h"
#include "api/routes.h"
#include "core/id.h"
#include "http/http.h"
#include "limits.h"
#include "log.h"
#include "store/store.h"
#include "util/timeutil.h"
#include <arpa/inet.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <microhttpd.h>
#include <netdb.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <unistd.h>

enum conn_state {
    CS_NEW,  /* accepted, no request yet: deadline = accept + request timeout */
    CS_IDLE, /* keep-alive between requests: + idle timeout */
    CS_BODY, /* headers in, body arriving */
    CS_BUSY  /* being answered; no receive deadline */
};

struct conn_track {
    struct conn_track *prev, *next;
    int fd;
    int state;
    int64_t deadline; /* monotonic µs; 0 = none */
    int timed_out;
};

#define N_STATUS 18
static const int status_list[N_STATUS] = {200, 201, 204, 304, 400, 401, 403, 404, 405,
                                          408, 409, 412, 413, 422, 429, 431, 500, 503};
#define N_LAT 13
static const int64_t lat_bounds_us[N_LAT - 1] = {100,   250,   500,   1000,   2500,   5000,
                                                 10000, 25000, 50000, 100000, 250000, 1000000};

struct server {
    const struct config *cfg;
    struct store *st;
    struct engine *eng;
    struct loop *loop;
    struct MHD_Daemon *d;
    int mhd_fd;
    char base_url[300];
    struct conn_track conns; /* list head */
    long nconns;
    long inflight;
    uint64_t req_id;
    char rid_prefix[8];
    int kick; /* a connection was resumed outside MHD: run it */
    /* metrics */
    uint64_t *by_route; /* [route_count + 1][N_STATUS + 1] */
    uint64_t lat[N_LAT];
    uint64_t lat_count;
    double lat_sum;
};

static void raw_problem(int fd, enum ld_err e, const char *detail);

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
}

/* ---- request accessors ---- */

const char *req_header(struct req *r, const char *name)
{
    return MHD_lookup_connection_value(r->mc, MHD_HEADER_KIND, name);
}

const char *req_query(struct req *r, const char *name)
{
    return MHD_lookup_connection_value(r->mc, MHD_GET_ARGUMENT_KIND, name);
}

struct qall {
    const char *name;
    const char **out;
    int n, max;
};

static enum MHD_Result qall_cb(void *cls, enum MHD_ValueKind kind, const char *key,
                               const char *value)
{
    struct qall *q = cls;
    if (strcmp(key, q->name) == 0) {
        if (q->n < q->max) q->out[q->n] = value ? value : "";
        q->n++;
    }
    return MHD_YES;
}

int req_query_all(struct req *r, const char *name, const char **out, int max)
{
    struct qall q = {name, out, 0, max};
    MHD_get_connection_values(r->mc, MHD_GET_ARGUMENT_KIND, qall_cb, &q);
    return q.n;
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

struct urlb {
    struct buf *b;
    int n;
};

static enum MHD_Result url_cb(void *cls, enum MHD_ValueKind kind, const char *key,
                              const char *value)
{
    struct urlb *u = cls;
    buf_putc(u->b, u->n++ ? '&' : '?');
    for (const unsigned char *p = (const unsigned char *)key; *p; p++)
        unreserved(*p) ? buf_putc(u->b, (char)*p) : buf_printf(u->b, "%%%02X", *p);
    if (value) {
        buf_putc(u->b, '=');
        for (const unsigned char *p = (const unsigned char *)value; *p; p++)
            unreserved(*p) ? buf_putc(u->b, (char)*p) : buf_printf(u->b, "%%%02X", *p);
    }
    return MHD_YES;
}

const char *req_url(struct req *r)
{
    struct buf b;
    buf_init(&b, 16384);
    buf_puts(&b, r->srv->base_url);
    buf_puts(&b, r->path);
    struct urlb u = {&b, 0};
    MHD_get_connection_values(r->mc, MHD_GET_ARGUMENT_KIND, url_cb, &u);
    const char *s = arena_strdup(&r->arena, b.data ? b.data : "");
    buf_free(&b);
    return s;
}

/* ---- answers ---- */

static void set_response(struct req *r, int status, struct MHD_Response *resp)
{
    if (r->resp) { /* a second answer is a bug; keep the first */
        MHD_destroy_response(resp);
        return;
    }
    MHD_add_response_header(resp, "X-Request-Id", r->rid);
    r->resp = resp;
    r->status = status;
    if (r->suspended) {
        r->suspended = 0;
        r->srv->inflight--;
        MHD_resume_connection(r->mc);
        r->srv->kick = 1;
    }
}

static struct MHD_Response *make_resp(struct buf *body)
{
    size_t len = 0;
    char *data = buf_take(body, &len);
    return MHD_create_response_from_buffer(len, data, MHD_RESPMEM_MUST_FREE);
}

int req_detach(struct req *r)
{
    if (r->resp || r->detached) return -1;
    const union MHD_ConnectionInfo *ci =
        MHD_get_connection_info(r->mc, MHD_CONNECTION_INFO_CONNECTION_FD);
    if (!ci) return -1;
    int fd = fcntl(ci->connect_fd, F_DUPFD_CLOEXEC, 3);
    if (fd < 0) return -1;
    /* MHD may have left the socket corked between its own sends */
    int off = 0, on = 1;
    setsockopt(fd, IPPROTO_TCP, TCP_CORK, &off, sizeof(off));
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &on, sizeof(on));
    r->detached = 1;
    r->status = 200;
    return fd;
}

struct loop *server_loop(struct server *s)
{
    return s->loop;
}

void reply_json_h(struct req *r, int status, struct buf *body, const struct reply_header *h, int nh)
{
    if (body->overflow) {
        buf_free(body);
        reply_problem(r, LD_E_INTERNAL, "The response exceeded the server's size limit");
        return;
    }
    struct MHD_Response *resp = make_resp(body);
    MHD_add_response_header(resp, "Content-Type", "application/json");
    for (int i = 0; i < nh; i++)
        if (h[i].name && h[i].value) MHD_add_response_header(resp, h[i].name, h[i].value);
    set_response(r, status, resp);
}

void reply_html(struct req *r, struct buf *body, const struct reply_header *h, int nh)
{
    struct MHD_Response *resp = make_resp(body);
    MHD_add_response_header(resp, "Content-Type", "text/html; charset=utf-8");
    for (int i = 0; i < nh; i++)
        MHD_add_response_header(resp, h[i].name, h[i].value);
    set_response(r, 200, resp);
}

void reply_json(struct req *r, int status, struct buf *body)
{
    reply_json_h(r, status, body, NULL, 0);
}

void reply_text(struct req *r, int status, const char *ctype, const char *text, size_t len,
                int copy)
{
    struct MHD_Response *resp = MHD_create_response_from_buffer(
        len, (void *)text, copy ? MHD_RESPMEM_MUST_COPY : MHD_RESPMEM_PERSISTENT);
    MHD_add_response_header(resp, "Content-Type", ctype);
    set_response(r, status, resp);
}

void reply_empty(struct req *r, int status, const struct reply_header *h, int nh)
{
    struct MHD_Response *resp =
        MHD_create_response_from_buffer(0, (void *)"", MHD_RESPMEM_PERSISTENT);
    for (int i = 0; i < nh; i++)
        if (h[i].name && h[i].value) MHD_add_response_header(resp, h[i].name, h[i].value);
    set_response(r, status, resp);
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
    /* one line, valid UTF-8 is guaranteed by callers quoting only validated
     * input; strip control characters defensively */
    for (char *p = detail; *p; p++)
        if ((unsigned char)*p < 0x20) *p = ' ';
    struct buf b;
    buf_init(&b, 4096);
    problem_body(&b, e, detail, r->path);
    struct MHD_Response *resp = make_resp(&b);
    MHD_add_response_header(resp, "Content-Type", "application/problem+json");
    if (e == LD_E_RATE_LIMITED || e == LD_E_UNAVAILABLE)
        MHD_add_response_header(resp, "Retry-After", "1");
    for (int i = 0; i < nh; i++)
        if (h[i].name && h[i].value) MHD_add_response_header(resp, h[i].name, h[i].value);
    set_response(r, ld_err_status(e), resp);
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
    MHD_suspend_connection(r->mc);
}

/* ---- the access handler ---- */

static int method_of(const char *m)
{
    static const char *const names[] = {"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"};
    for (int i = 0; i < 7; i++)
        if (strcmp(m, names[i]) == 0) return i;
    return M_OTHER;
}

/* What the first look at the headers finds: their size, and the framing
 * headers that request smuggling plays on. */
struct hscan {
    size_t n;
    int n_cl;        /* Content-Length headers */
    int cl_conflict; /* two of them with different values */
    const char *cl;
    const char *te; /* Transfer-Encoding */
};

static enum MHD_Result hscan_cb(void *cls, enum MHD_ValueKind kind, const char *key,
                                const char *value)
{
    struct hscan *h = cls;
    h->n += strlen(key) + (value ? strlen(value) : 0) + 4;
    if (strcasecmp(key, "Content-Length") == 0) {
        if (h->n_cl++ && (!value || !h->cl || strcmp(value, h->cl) != 0)) h->cl_conflict = 1;
        h->cl = value;
    } else if (strcasecmp(key, "Transfer-Encoding") == 0) {
        h->te = value ? value : "";
    }
    return MHD_YES;
}

static struct conn_track *track_of(struct MHD_Connection *mc)
{
    const union MHD_ConnectionInfo *ci =
        MHD_get_connection_info(mc, MHD_CONNECTION_INFO_SOCKET_CONTEXT);
    return ci ? (struct conn_track *)ci->socket_context : NULL;
}

static void dispatch(struct req *r)
{
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

static enum MHD_Result queue(struct req *r)
{
    enum MHD_Result ok = MHD_queue_response(r->mc, (unsigned)r->status, r->resp);
    return ok;
}

static enum MHD_Result on_request(void *cls, struct MHD_Connection *mc, const char *url,
                                  const char *method, const char *version, const char *upload_data,
                                  size_t *upload_data_size, void **con_cls)
{
    struct server *s = cls;
    struct req *r = *con_cls;
    if (!r) {
        r = xcalloc(1, sizeof(*r));
        *con_cls = r;
        r->srv = s;
        r->st = s->st;
        r->eng = s->eng;
        r->cfg = s->cfg;
        r->mc = mc;
        r->ct = track_of(mc);
        r->route = -1;
        r->t0 = now_us();
        arena_init(&r->arena);
        r->method = method_of(method);
        r->http10 = version && strcmp(version, "HTTP/1.0") == 0;
        r->path = arena_strdup(&r->arena, url);
        snprintf(r->rid, sizeof(r->rid), "%s%08llx", s->rid_prefix,
                 (unsigned long long)++s->req_id);
        buf_init(&r->body, (size_t)s->cfg->max_body);
        struct conn_track *ct = r->ct;
        if (ct) {
            ct->state = CS_BODY;
            ct->deadline = r->t0 + s->cfg->request_timeout * 1000000;
        }
        struct hscan hs = {0};
        MHD_get_connection_values(mc, MHD_HEADER_KIND, hscan_cb, &hs);
        if (hs.n > (size_t)s->cfg->max_header) {
            reply_problem(r, LD_E_HEADERS_TOO_LARGE,
                          "Request headers exceed the limit of %ld bytes", s->cfg->max_header);
            return queue(r);
        }
        /* RFC 9112 6.3: conflicting lengths, or a length beside a transfer
         * coding, cannot be framed safely; only chunked is understood */
        if (hs.cl_conflict || (hs.te && hs.n_cl)) {
            reply_problem(r, LD_E_BAD_REQUEST, "%s",
                          hs.cl_conflict ? "Conflicting Content-Length headers"
                                         : "Content-Length with Transfer-Encoding");
            return queue(r);
        }
        if (hs.te && strcasecmp(hs.te, "chunked") != 0) {
            reply_problem(r, LD_E_NOT_IMPLEMENTED, "Transfer-Encoding '%.40s' is not supported",
                          hs.te);
            return queue(r);
        }
        const char *cl = hs.cl;
        if (cl) {
            char *end;
            unsigned long long n = strtoull(cl, &end, 10);
            if (*end || n > (unsigned long long)s->cfg->max_body) {
                reply_problem(r, LD_E_TOO_LARGE, "Request body exceeds the limit of %ld bytes",
                              s->cfg->max_body);
                return queue(r);
            }
        }
        return MHD_YES;
    }
    if (*upload_data_size) {
        if (!r->body_too_large && buf_add(&r->body, upload_data, *upload_data_size)) {
            /* a chunked body past the cap: MHD 0.9 cannot queue a response
             * mid-upload, so answer on the socket and close */
            char d[96];
            snprintf(d, sizeof(d), "Request body exceeds the limit of %ld bytes", s->cfg->max_body);
            struct conn_track *ct = r->ct;
            if (ct) {
                raw_problem(ct->fd, LD_E_TOO_LARGE, d);
                ct->timed_out = 1;
            }
            r->status = 413;
            return MHD_NO;
        }
        *upload_data_size = 0;
        return MHD_YES;
    }
    if (r->resp) return queue(r);
    if (r->dispatched) return MHD_YES; /* suspended; resumed when answered */
    r->dispatched = 1;
    if (r->ct) {
        ((struct conn_track *)r->ct)->state = CS_BUSY;
        ((struct conn_track *)r->ct)->deadline = 0;
    }
    dispatch(r);
    if (r->resp) return queue(r);
    /* a detached connection is ours now: MHD closes its descriptor (with
     * MHD_USE_TURBO it does not shut the socket down) and forgets it */
    if (r->detached) return MHD_NO;
    return MHD_YES;
}

static void log_request(struct server *s, struct req *r)
{
    if (!log_enabled(LOG_INFO)) return;
    static const char *const m[] = {"GET",   "HEAD",   "POST",    "PUT",
                                    "PATCH", "DELETE", "OPTIONS", "OTHER"};
    char st[8], dur[24];
    snprintf(st, sizeof(st), "%d", r->status);
    snprintf(dur, sizeof(dur), "%lld", (long long)(now_us() - r->t0));
    log_kv(LOG_INFO, "request", "rid", r->rid, "method", m[r->method], "path", r->path, "status",
           st, "dur_us", dur, "org", r->who.org_id[0] ? r->who.org_id : "-", NULL);
}

static void on_completed(void *cls, struct MHD_Connection *mc, void **con_cls,
                         enum MHD_RequestTerminationCode toe)
{
    struct server *s = cls;
    struct req *r = *con_cls;
    if (!r) return;
    *con_cls = NULL;
    if (!r->resp && !r->status) r->status = 499; /* client went away, or deadline */
    count_request(s, r);
    log_request(s, r);
    if (r->resp) MHD_destroy_response(r->resp);
    if (r->suspended) s->inflight--;
    struct conn_track *ct = r->ct;
    if (ct && !ct->timed_out) {
        ct->state = CS_IDLE;
        ct->deadline = now_us() + (s->cfg->idle_timeout + s->cfg->request_timeout) * 1000000;
    }
    buf_free(&r->body);
    arena_free(&r->arena);
    free(r);
}

static void on_connection(void *cls, struct MHD_Connection *mc, void **socket_context,
                          enum MHD_ConnectionNotificationCode toe)
{
    struct server *s = cls;
    if (toe == MHD_CONNECTION_NOTIFY_STARTED) {
        struct conn_track *ct = xcalloc(1, sizeof(*ct));
        const union MHD_ConnectionInfo *ci =
            MHD_get_connection_info(mc, MHD_CONNECTION_INFO_CONNECTION_FD);
        ct->fd = ci ? ci->connect_fd : -1;
        ct->state = CS_NEW;
        ct->deadline = now_us() + s->cfg->request_timeout * 1000000;
        ct->next = s->conns.next;
        ct->prev = &s->conns;
        s->conns.next->prev = ct;
        s->conns.next = ct;
        s->nconns++;
        *socket_context = ct;
    } else {
        struct conn_track *ct = *socket_context;
        if (!ct) return;
        ct->prev->next = ct->next;
        ct->next->prev = ct->prev;
        s->nconns--;
        free(ct);
        *socket_context = NULL;
    }
}

/*
 * Writes a complete problem response straight to the socket.  Only for a
 * connection on which MHD has sent nothing of a response (it is still
 * receiving the request), just before the connection is closed.
 */
static void raw_problem(int fd, enum ld_err e, const char *detail)
{
    struct buf b, h;
    buf_init(&b, 2048);
    buf_init(&h, 4096);
    problem_body(&b, e, detail, NULL);
    buf_printf(&h,
               "HTTP/1.1 %d %s\r\nContent-Type: application/problem+json\r\n"
               "Content-Length: %zu\r\nConnection: close\r\n\r\n",
               ld_err_status(e), ld_err_title(e), b.len);
    buf_add(&h, b.data, b.len);
    ssize_t w = send(fd, h.data, h.len, MSG_DONTWAIT | MSG_NOSIGNAL);
    (void)w;
    buf_free(&b);
    buf_free(&h);
}

/* The tick: cut off connections past their receive deadline with a 408. */
static void sweep(void *ud)
{
    struct server *s = ud;
    int64_t now = now_us();
    for (struct conn_track *ct = s->conns.next; ct != &s->conns; ct = ct->next) {
        if (!ct->deadline || now < ct->deadline || ct->timed_out || ct->fd < 0) continue;
        ct->timed_out = 1;
        if (ct->state == CS_BODY || ct->state == CS_NEW)
            raw_problem(ct->fd, LD_E_TIMEOUT, "The request was not received within the deadline");
        shutdown(ct->fd, SHUT_RDWR);
    }
}

static void on_mhd(void *ud, uint32_t events)
{
    struct server *s = ud;
    MHD_run(s->d);
}

static void on_store(void *ud, uint32_t events)
{
    struct server *s = ud;
    store_drain(s->st);
    MHD_run(s->d); /* queue the answers of resumed connections now */
}

static long mhd_timeout(void *ud)
{
    struct server *s = ud;
    MHD_UNSIGNED_LONG_LONG t;
    if (MHD_get_timeout(s->d, &t) == MHD_YES) return (long)t;
    return -1;
}

/* After each wait: MHD keeps connections with buffered work on an internal
 * ready list (its epoll is edge-triggered), and says so with a timeout of
 * 0; such work must be run now, or a large upload stalls. */
static void after_poll(void *ud)
{
    struct server *s = ud;
    MHD_UNSIGNED_LONG_LONG t;
    if (s->kick || (MHD_get_timeout(s->d, &t) == MHD_YES && t == 0)) {
        s->kick = 0;
        MHD_run(s->d);
    }
}

void server_kick(struct server *s)
{
    s->kick = 1;
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

struct server *server_start(const struct config *cfg, struct store *st, struct engine *eng,
                            struct loop *l, char *err, size_t errlen)
{
    struct sockaddr_in sa;
    if (parse_listen(cfg->listen, &sa, err, errlen)) return NULL;
    struct server *s = xcalloc(1, sizeof(*s));
    s->cfg = cfg;
    s->st = st;
    s->eng = eng;
    s->loop = l;
    s->conns.next = s->conns.prev = &s->conns;
    s->by_route = xcalloc((size_t)(route_count + 1) * (N_STATUS + 1), sizeof(uint64_t));
    random_hex(s->rid_prefix, 2);
    s->d = MHD_start_daemon(
        MHD_USE_EPOLL | MHD_ALLOW_SUSPEND_RESUME | MHD_USE_TURBO, 0, NULL, NULL, on_request, s,
        MHD_OPTION_SOCK_ADDR, (struct sockaddr *)&sa, MHD_OPTION_NOTIFY_COMPLETED, on_completed, s,
        MHD_OPTION_NOTIFY_CONNECTION, on_connection, s, MHD_OPTION_CONNECTION_LIMIT,
        (unsigned)cfg->max_connections, MHD_OPTION_PER_IP_CONNECTION_LIMIT,
        (unsigned)cfg->max_connections_per_ip, MHD_OPTION_CONNECTION_MEMORY_LIMIT,
        (size_t)LD_MHD_POOL, MHD_OPTION_CONNECTION_TIMEOUT, (unsigned)cfg->idle_timeout,
        MHD_OPTION_LISTEN_BACKLOG_SIZE, 4096u, MHD_OPTION_END);
    if (!s->d) {
        snprintf(err, errlen, "cannot listen on %s (address in use or not available)", cfg->listen);
        free(s->by_route);
        free(s);
        return NULL;
    }
    const union MHD_DaemonInfo *di = MHD_get_daemon_info(s->d, MHD_DAEMON_INFO_EPOLL_FD);
    s->mhd_fd = di->epoll_fd;
    if (cfg->public_url[0]) {
        snprintf(s->base_url, sizeof(s->base_url), "%s", cfg->public_url);
        size_t n = strlen(s->base_url);
        while (n && s->base_url[n - 1] == '/')
            s->base_url[--n] = 0;
    } else {
        const union MHD_DaemonInfo *pi = MHD_get_daemon_info(s->d, MHD_DAEMON_INFO_BIND_PORT);
        char host[64];
        inet_ntop(AF_INET, &sa.sin_addr, host, sizeof(host));
        if (strcmp(host, "0.0.0.0") == 0) snprintf(host, sizeof(host), "127.0.0.1");
        snprintf(s->base_url, sizeof(s->base_url), "http://%s:%u", host,
                 pi ? (unsigned)pi->port : (unsigned)ntohs(sa.sin_port));
    }
    loop_add_fd(l, s->mhd_fd, EPOLLIN, on_mhd, s);
    loop_add_fd(l, store_notify_fd(st), EPOLLIN, on_store, s);
    loop_on_tick(l, sweep, s);
    loop_on_timeout(l, mhd_timeout, s);
    loop_after_poll(l, after_poll, s);
    return s;
}

const char *server_base_url(struct server *s)
{
    return s->base_url;
}

void server_quiesce(struct server *s)
{
    MHD_socket fd = MHD_quiesce_daemon(s->d);
    if (fd != MHD_INVALID_SOCKET) close(fd);
}

long server_inflight(struct server *s)
{
    return s->inflight;
}

void server_stop(struct server *s)
{
    if (!s) return;
    loop_del_fd(s->loop, s->mhd_fd);
    MHD_stop_daemon(s->d);
    free(s->by_route);
    free(s);
}
