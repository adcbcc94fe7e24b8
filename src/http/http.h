/*
 * http.h — what api/ sees of HTTP: the request, its arena, and the ways to
 * answer.  A handler either answers at once (reply_*), or submits a store
 * op and calls req_suspend(); the op's `done` callback later answers and
 * the connection resumes.  Exactly one answer per request.
 */
#ifndef LOOPD_HTTP_H
#define LOOPD_HTTP_H
#include "config.h"
#include "core/err.h"
#include "core/model.h"
#include "util/buf.h"
#include "util/mem.h"
#include <stdint.h>

struct server;
struct store;
struct engine;

enum http_method { M_GET, M_HEAD, M_POST, M_PUT, M_PATCH, M_DELETE, M_OPTIONS, M_OTHER };

#define REQ_MAX_PARAMS 2
#define REQ_MAX_HEADERS 8

struct req {
    struct server *srv;
    struct store *st;
    struct engine *eng;
    const struct config *cfg;
    void *conn; /* struct hconn * (http/server.c) */
    /* the request head, parsed into the arena */
    struct req_kv {
        const char *name, *value;
    } * hdrs, *query;
    int nhdrs, nquery;
    struct arena arena;
    int method;
    const char *path; /* without the query string */
    char rid[20];
    int64_t t0; /* monotonic µs at the first byte we saw */
    struct buf body;
    int body_too_large;
    int dispatched, suspended, detached;
    int http10; /* the request said HTTP/1.0 */
    int route;  /* index in the route table, -1 none */
    const char *params[REQ_MAX_PARAMS];
    const char *url; /* req_url, once built */
    struct principal who;
    /* the answer: non-NULL once answered */
    void *resp; /* struct resp * (http/server.c) */
    int status;
};

/* request accessors */
const char *req_header(struct req *r, const char *name);
const char *req_query(struct req *r, const char *name);
/* Every value of a repeated query key, in order; returns the count. */
int req_query_all(struct req *r, const char *name, const char **out, int max);
/* The base URL for links: the public URL, or http://<listen address>. */
const char *req_base_url(struct req *r);
/* The full request URL (base + path + query) for next/prev links; built
 * once per request. */
const char *req_url(struct req *r);

/* answers: body ownership passes to the response */
struct reply_header {
    const char *name, *value;
};
void reply_json(struct req *r, int status, struct buf *body);
void reply_html(struct req *r, struct buf *body, const struct reply_header *h, int nh);
void reply_json_h(struct req *r, int status, struct buf *body, const struct reply_header *h,
                  int nh);
void reply_text(struct req *r, int status, const char *ctype, const char *text, size_t len,
                int copy);
/* A JSON answer of the len bytes at body, sent from where they are (no
 * copy): they must stay as they are until release(owner), called once when
 * the answer is done with them, sent or not. */
void reply_json_shared(struct req *r, int status, const char *body, size_t len,
                       void (*release)(void *owner), void *owner, const struct reply_header *h,
                       int nh);
void reply_empty(struct req *r, int status, const struct reply_header *h, int nh);
/* A body too big to build at once, made a piece at a time as the socket
 * takes it: `more` appends the next piece to `out` and returns 1, or 0
 * after the last piece, or -1 on an error (the connection is closed: the
 * client sees a cut body).  `release(ud)` runs once the answer is over,
 * sent or not.  HTTP/1.1: chunked, keep-alive; HTTP/1.0: ends at the close. */
typedef int (*reply_more_fn)(void *ud, struct buf *out);
void reply_stream(struct req *r, int status, const char *ctype, reply_more_fn more,
                  void (*release)(void *ud), void *ud);
void reply_stream_h(struct req *r, int status, const char *ctype, const struct reply_header *h,
                    int nh, reply_more_fn more, void (*release)(void *ud), void *ud);
/* RFC 9457 problem; detail is printf-style, one line. */
void reply_problem(struct req *r, enum ld_err e, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
void reply_problem_h(struct req *r, enum ld_err e, const struct reply_header *h, int nh,
                     const char *fmt, ...) __attribute__((format(printf, 5, 6)));

/* Takes the connection out of the HTTP server for a stream (SSE): returns
 * a non-blocking descriptor of the socket, on which the caller writes the
 * whole response, status line included, and which it closes; the server
 * counts the request as a 200 and never touches the socket again.  -1 if
 * that cannot be done (the caller still answers normally). */
int req_detach(struct req *r);

/* parks the request until a store op completes; the op's done callback
 * must then reply (which resumes the connection) */
void req_suspend(struct req *r);

#endif
