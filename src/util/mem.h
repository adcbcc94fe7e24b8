/*
 * mem.h — allocation policy.  loopd does not try to limp on after malloc
 * fails: every request is bounded (limits.h), so failure means the machine
 * is out of memory, and xmalloc() logs and aborts (as Redis zmalloc does).
 *
 * An arena is owned by one request (or one writer operation): everything
 * allocated from it dies with arena_free(), at the one exit of the request.
 */
#ifndef LOOPD_MEM_H
#define LOOPD_MEM_H
#include <stddef.h>

void *xmalloc(size_t n);
void *xcalloc(size_t n, size_t m);
void *xrealloc(void *p, size_t n);
char *xstrdup(const char *s);
char *xstrndup(const char *s, size_t n);
/* Copies src into dst[size] (size > 0), cut to fit and always terminated,
 * like snprintf(dst, size, "%s", src) at a tenth of the cost (a NULL src
 * copies ""). */
void str_copy(char *dst, size_t size, const char *src);

struct arena_chunk;
struct arena {
    struct arena_chunk *head;
    size_t total; /* bytes allocated so far */
};
void arena_init(struct arena *a);
void *arena_alloc(struct arena *a, size_t n); /* zeroed, 16-aligned */
char *arena_strdup(struct arena *a, const char *s);
char *arena_strndup(struct arena *a, const char *s, size_t n);
void arena_free(struct arena *a);
/* Empties the arena for reuse: keeps one standard chunk, frees the rest. */
void arena_reset(struct arena *a);

#endif
