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
/* Checks --listen and binds its address without listening yet: main calls
 * it before it creates or opens the data dir, so that a bad or taken
 * address leaves nothing behind, and connections are refused, not left
 * waiting, until server_start listens.  Returns the socket, or -1. */
int server_bind(const struct config *cfg, char *err, size_t errlen);
/* Listens on fd (from server_bind; closed on failure) and serves. */
struct server *server_start(const struct config *cfg, int fd, struct store *st, struct engine *eng,
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
