/*
 * routes.h — the route table: method + path pattern -> handler.  Literal
 * segments win over `{}` parameters, so /v1/sessions/chat and /stats are
 * never read as session IDs.  A path that matches with another method is
 * a 405 with `Allow`.
 */
#ifndef LOOPD_ROUTES_H
#define LOOPD_ROUTES_H
#include "http/http.h"

typedef void (*handler_fn)(struct req *r);

struct route {
    int method;
    const char *pattern; /* "/v1/sessions/{}/pin" */
    handler_fn fn;
    int public_;      /* no API key needed */
    const char *name; /* metrics label */
};

extern const struct route routes[];
extern const int route_count;

/* Returns the route index (params filled), -1 for no such path, or -2 for
 * a path served with other methods (allow gets "GET, POST"). */
int route_match(int method, const char *path, struct arena *a, const char **params, char *allow,
                size_t allowlen);

#endif
