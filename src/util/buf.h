/*
 * buf.h — a growable byte buffer with a hard cap fixed at creation (curl's
 * dynbuf), plus a JSON writer on top of it.  Appends past the cap fail and
 * set `overflow`, which is sticky: callers check once at the end.  Memory
 * exhaustion aborts (see util/mem.h).
 */
#ifndef LOOPD_BUF_H
#define LOOPD_BUF_H
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

struct buf {
    char *data;   /* NUL-terminated while len < cap */
    size_t len;   /* bytes used */
    size_t alloc; /* bytes allocated */
    size_t cap;   /* most bytes ever allowed */
    int overflow; /* set once an append did not fit */
};

void buf_init(struct buf *b, size_t cap);
void buf_free(struct buf *b);
void buf_reset(struct buf *b);
/* Hands the data to the caller (free()); the buffer is left empty. */
char *buf_take(struct buf *b, size_t *len);
/* Makes room for n more bytes now (0), or sets overflow (-1). */
int buf_reserve(struct buf *b, size_t n);
int buf_add_slow(struct buf *b, const void *p, size_t n);
/* Appends n bytes; the common case (room already allocated) is inline. */
static inline int buf_add(struct buf *b, const void *p, size_t n)
{
    if (!b->overflow && n < b->alloc - b->len) { /* alloc > len while any is held */
        memcpy(b->data + b->len, p, n);
        b->len += n;
        b->data[b->len] = 0;
        return 0;
    }
    return buf_add_slow(b, p, n);
}
int buf_puts(struct buf *b, const char *s);
int buf_putc(struct buf *b, char c);
int buf_printf(struct buf *b, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
int buf_i64(struct buf *b, int64_t v);
/* v in decimal at out (at most 20 bytes, no NUL); returns the length */
size_t i64_dec(int64_t v, char out[20]);

/* 1 if [s, s+n) is valid UTF-8 (RFC 3629: no overlong forms, no
 * surrogates, nothing past U+10FFFF), else 0. */
int utf8_valid(const char *s, size_t n);
/* Makes the string s valid UTF-8 on one line, in place: each control
 * byte (< 0x20) becomes a space and each byte that starts no valid
 * sequence (a stray continuation byte, a sequence cut short, an overlong
 * form or surrogate) a '?'.  For text that quotes raw request bytes, such
 * as a problem's detail.  Returns how many bytes it replaced. */
size_t utf8_scrub(char *s);

/* JSON: strings are written with RFC 8259 escapes; the input must be valid
 * UTF-8 (all request input is validated by jansson first). */
int buf_json_str(struct buf *b, const char *s);
int buf_json_strn(struct buf *b, const char *s, size_t n);

/*
 * A JSON writer that tracks commas.  Usage:
 *   jw_obj(w); jw_key(w, "id"); jw_str(w, id); jw_end(w);
 */
#define JW_DEPTH 32
struct jw {
    struct buf *b;
    int depth;
    unsigned char first[JW_DEPTH]; /* 1 while no member written at that depth */
    char closer[JW_DEPTH];         /* '}' or ']' for each open level */
};
void jw_init(struct jw *w, struct buf *b);
void jw_obj(struct jw *w);
void jw_arr(struct jw *w);
void jw_end(struct jw *w); /* closes the innermost object or array */
void jw_key(struct jw *w, const char *k);
void jw_str(struct jw *w, const char *s);
void jw_i64(struct jw *w, int64_t v);
void jw_bool(struct jw *w, int v);
void jw_null(struct jw *w);
void jw_raw(struct jw *w, const char *json); /* a complete JSON value */
/* Splices the members of a JSON object text "{...}" into the current object. */
void jw_members(struct jw *w, const char *obj_json);
/* key + value shorthands; the _opt forms write nothing for NULL/"" */
void jw_kstr(struct jw *w, const char *k, const char *s);
void jw_kstr_opt(struct jw *w, const char *k, const char *s);
void jw_ki64(struct jw *w, const char *k, int64_t v);
void jw_kbool(struct jw *w, const char *k, int v);
void jw_kraw(struct jw *w, const char *k, const char *json);
void jw_ktime(struct jw *w, const char *k, int64_t us);

#endif
