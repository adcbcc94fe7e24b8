/*
 * server.h — the HTTP/1.1 server on the loop's epoll, with loopd's own limits (body cap, header
 * cap, total request deadline), metrics and graceful shutdown.
 */
#ifndef LOOPD_SERVER_H
#define LOOPD_SERVER_H
#include "config.h"
#include "loop.h"
#include "util/buf.h"

struct store;
struct server;

struct engine;
struct server *server_start(const struct config *cfg, struct store *st, struct engine *eng,
                            struct loop *l, char *err, size_t errlen);
/* Stops accepting new connections (SIGTERM, step 1). */
void server_quiesce(struct server *s);
/* Requests being processed or waiting for the store. */
long server_inflight(struct server *s);
void server_stop(struct server *s);
const char *server_base_url(struct server *s);

/* metrics, rendered by api/ops.c */
struct store;
void server_metrics_render(struct server *s, struct buf *out);

#endif
