/*
 * buf.c — bounded byte buffer and the JSON writer used for every response
 * and event.  Nothing here allocates without a cap; an append that would
 * pass the cap sets the sticky `overflow` flag and writes nothing.
 */
#include "util/buf.h"
#include "util/mem.h"
#include "util/timeutil.h"
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

void buf_init(struct buf *b, size_t cap)
{
    memset(b, 0, sizeof(*b));
    b->cap = cap;
}

void buf_free(struct buf *b)
{
    free(b->data);
    b->data = NULL;
    b->len = b->alloc = 0;
    b->overflow = 0;
}

void buf_reset(struct buf *b)
{
    b->len = 0;
    b->overflow = 0;
    if (b->data) b->data[0] = 0;
}

char *buf_take(struct buf *b, size_t *len)
{
    char *p = b->data;
    if (!p) p = xstrdup("");
    if (len) *len = b->len;
    b->data = NULL;
    b->len = b->alloc = 0;
    return p;
}

static int grow(struct buf *b, size_t n)
{
    if (b->overflow) return -1;
    if (n > b->cap || b->len + n > b->cap) {
        b->overflow = 1;
        return -1;
    }
    size_t need = b->len + n + 1;
    if (need > b->alloc) {
        size_t a = b->alloc ? b->alloc : 256;
        while (a < need)
            a *= 2;
        if (a > b->cap + 1) a = b->cap + 1;
        b->data = xrealloc(b->data, a);
        b->alloc = a;
    }
    return 0;
}

int buf_reserve(struct buf *b, size_t n)
{
    return grow(b, n);
}

int buf_add_slow(struct buf *b, const void *p, size_t n)
{
    if (grow(b, n)) return -1;
    memcpy(b->data + b->len, p, n);
    b->len += n;
    b->data[b->len] = 0;
    return 0;
}

int buf_puts(struct buf *b, const char *s)
{
    return buf_add(b, s, strlen(s));
}

int buf_putc(struct buf *b, char c)
{
    return buf_add(b, &c, 1);
}

int buf_printf(struct buf *b, const char *fmt, ...)
{
    char tmp[512];
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(tmp, sizeof(tmp), fmt, ap);
    va_end(ap);
    if (n < 0) return -1;
    if ((size_t)n < sizeof(tmp)) return buf_add(b, tmp, (size_t)n);
    if (grow(b, (size_t)n)) return -1;
    va_start(ap, fmt);
    vsnprintf(b->data + b->len, (size_t)n + 1, fmt, ap);
    va_end(ap);
    b->len += (size_t)n;
    return 0;
}

size_t i64_dec(int64_t v, char out[20])
{
    char tmp[20], *p = tmp + sizeof(tmp);
    uint64_t u = v < 0 ? (uint64_t)0 - (uint64_t)v : (uint64_t)v;
    do {
        *--p = (char)('0' + u % 10);
        u /= 10;
    } while (u);
    if (v < 0) *--p = '-';
    size_t n = (size_t)(tmp + sizeof(tmp) - p);
    memcpy(out, p, n);
    return n;
}

int buf_i64(struct buf *b, int64_t v)
{
    char d[20];
    return buf_add(b, d, i64_dec(v, d));
}

#define ONES 0x0101010101010101ull
#define HIGHS 0x8080808080808080ull
/* Some byte of v is a control character (< 0x20), '"' or '\\' (the
 * exact tests of "Bit Twiddling Hacks"; bytes >= 0x80 never match). */
static inline int needs_escape8(uint64_t v)
{
    uint64_t q = v ^ (ONES * '"'), bs = v ^ (ONES * '\\');
    return (((v - ONES * 0x20) & ~v) | ((q - ONES) & ~q) | ((bs - ONES) & ~bs)) & HIGHS ? 1 : 0;
}

/* c is written into a JSON string as it is */
static inline int json_plain(unsigned char c)
{
    return c >= 0x20 && c != '"' && c != '\\';
}

int buf_json_strn(struct buf *b, const char *s, size_t n)
{
    static const char hex[] = "0123456789abcdef";
    if (grow(b, n + 2)) return -1;
    b->data[b->len++] = '"';
    size_t start = 0;
    for (size_t i = 0; i < n; i++) {
        /* eight bytes at a time while none needs escaping */
        while (i + 8 <= n) {
            uint64_t v;
            memcpy(&v, s + i, 8);
            if (needs_escape8(v)) break;
            i += 8;
        }
        if (i >= n) break;
        unsigned char c = (unsigned char)s[i];
        if (json_plain(c)) continue;
        if (buf_add(b, s + start, i - start)) return -1;
        start = i + 1;
        char esc[7] = {'\\', 0};
        size_t el = 2;
        switch (c) {
        case '"':
            esc[1] = '"';
            break;
        case '\\':
            esc[1] = '\\';
            break;
        case '\n':
            esc[1] = 'n';
            break;
        case '\r':
            esc[1] = 'r';
            break;
        case '\t':
            esc[1] = 't';
            break;
        case '\b':
            esc[1] = 'b';
            break;
        case '\f':
            esc[1] = 'f';
            break;
        default:
            esc[1] = 'u';
            esc[2] = '0';
            esc[3] = '0';
            esc[4] = hex[c >> 4];
            esc[5] = hex[c & 15];
            el = 6;
        }
        if (buf_add(b, esc, el)) return -1;
    }
    if (buf_add(b, s + start, n - start)) return -1;
    return buf_putc(b, '"');
}

int buf_json_str(struct buf *b, const char *s)
{
    return buf_json_strn(b, s, strlen(s));
}

/* ---- JSON writer ---- */

void jw_init(struct jw *w, struct buf *b)
{
    w->b = b;
    w->depth = 0;
    w->first[0] = 1;
}

static void sep(struct jw *w)
{
    if (!w->first[w->depth]) buf_putc(w->b, ',');
    w->first[w->depth] = 0;
}

static void open_(struct jw *w, char c)
{
    sep(w);
    buf_putc(w->b, c);
    if (w->depth + 1 >= JW_DEPTH) { /* deeper than the writer tracks: a bug */
        w->b->overflow = 1;
        return;
    }
    w->depth++;
    w->first[w->depth] = 1;
    w->closer[w->depth] = c == '{' ? '}' : ']';
}

void jw_obj(struct jw *w)
{
    open_(w, '{');
}

void jw_arr(struct jw *w)
{
    open_(w, '[');
}

void jw_end(struct jw *w)
{
    if (w->depth == 0) { /* unbalanced: a bug; poison the output */
        w->b->overflow = 1;
        return;
    }
    buf_putc(w->b, w->closer[w->depth]);
    w->depth--;
}

/* nothing in s[0..n) needs escaping in a JSON string */
static int plain_run(const char *s, size_t n)
{
    size_t i = 0;
    for (; i + 8 <= n; i += 8) {
        uint64_t v;
        memcpy(&v, s + i, 8);
        if (needs_escape8(v)) return 0;
    }
    for (; i < n; i++)
        if (!json_plain((unsigned char)s[i])) return 0;
    return 1;
}

void jw_key(struct jw *w, const char *k)
{
    /* Keys are names from the code: written in one copy when nothing in
     * them needs escaping (the general path made keys 2.5 % of a POST). */
    size_t n = strlen(k);
    struct buf *b = w->b;
    if (!plain_run(k, n) || grow(b, n + 4)) {
        sep(w);
        buf_json_str(b, k);
        buf_putc(b, ':');
    } else {
        char *o = b->data + b->len;
        if (!w->first[w->depth]) *o++ = ',';
        *o++ = '"';
        memcpy(o, k, n);
        o += n;
        *o++ = '"';
        *o++ = ':';
        *o = 0;
        b->len = (size_t)(o - b->data);
    }
    w->first[w->depth] = 1; /* the value that follows takes no comma */
}

void jw_str(struct jw *w, const char *s)
{
    sep(w);
    buf_json_str(w->b, s ? s : "");
}

void jw_i64(struct jw *w, int64_t v)
{
    sep(w);
    buf_i64(w->b, v);
}

void jw_bool(struct jw *w, int v)
{
    sep(w);
    buf_puts(w->b, v ? "true" : "false");
}

void jw_null(struct jw *w)
{
    sep(w);
    buf_puts(w->b, "null");
}

void jw_raw(struct jw *w, const char *json)
{
    sep(w);
    buf_puts(w->b, json);
}

void jw_members(struct jw *w, const char *obj)
{
    size_t n = strlen(obj);
    /* obj is a canonical compact object "{...}" written by jansson or us */
    if (n < 2 || obj[0] != '{' || obj[n - 1] != '}') return;
    if (n == 2) return;
    sep(w);
    buf_add(w->b, obj + 1, n - 2);
}

void jw_kstr(struct jw *w, const char *k, const char *s)
{
    /* the usual member, nothing to escape in its key or its value (IDs,
     * names, titles), in one copy: a session has a dozen */
    if (!s) s = "";
    size_t kn = strlen(k), sn = strlen(s);
    struct buf *b = w->b;
    if (plain_run(k, kn) && plain_run(s, sn) && !grow(b, kn + sn + 6)) {
        char *o = b->data + b->len;
        if (!w->first[w->depth]) *o++ = ',';
        w->first[w->depth] = 0;
        *o++ = '"';
        memcpy(o, k, kn);
        o += kn;
        memcpy(o, "\":\"", 3);
        o += 3;
        memcpy(o, s, sn);
        o += sn;
        *o++ = '"';
        *o = 0;
        b->len = (size_t)(o - b->data);
        return;
    }
    jw_key(w, k);
    jw_str(w, s);
}

void jw_kstr_opt(struct jw *w, const char *k, const char *s)
{
    if (s && *s) jw_kstr(w, k, s);
}

void jw_ki64(struct jw *w, const char *k, int64_t v)
{
    jw_key(w, k);
    jw_i64(w, v);
}

void jw_kbool(struct jw *w, const char *k, int v)
{
    jw_key(w, k);
    jw_bool(w, v);
}

void jw_kraw(struct jw *w, const char *k, const char *json)
{
    jw_key(w, k);
    jw_raw(w, json);
}

void jw_ktime(struct jw *w, const char *k, int64_t us)
{
    char t[40];
    time_format(us, t, sizeof(t));
    jw_kstr(w, k, t);
}

/* the length of the valid UTF-8 sequence at p (before e), 0 if there is none */
static int utf8_seq(const unsigned char *p, const unsigned char *e)
{
    unsigned c = *p;
    if (c < 0x80) return 1;
    int len;
    unsigned lo = 0x80, hi = 0xbf; /* bounds of the second byte */
    if (c >= 0xc2 && c <= 0xdf) {
        len = 2;
    } else if (c >= 0xe0 && c <= 0xef) {
        len = 3;
        if (c == 0xe0) lo = 0xa0; /* overlong */
        if (c == 0xed) hi = 0x9f; /* surrogates */
    } else if (c >= 0xf0 && c <= 0xf4) {
        len = 4;
        if (c == 0xf0) lo = 0x90; /* overlong */
        if (c == 0xf4) hi = 0x8f; /* past U+10FFFF */
    } else {
        return 0;
    }
    if (e - p < len) return 0;
    if (p[1] < lo || p[1] > hi) return 0;
    for (int i = 2; i < len; i++)
        if (p[i] < 0x80 || p[i] > 0xbf) return 0;
    return len;
}

int utf8_valid(const char *s, size_t n)
{
    const unsigned char *p = (const unsigned char *)s, *e = p + n;
    while (p < e) {
        if (*p < 0x80) {
            p++;
            continue;
        }
        int len = utf8_seq(p, e);
        if (!len) return 0;
        p += len;
    }
    return 1;
}

size_t utf8_scrub(char *s)
{
    unsigned char *p = (unsigned char *)s, *e = p + strlen(s);
    size_t n = 0;
    while (p < e) {
        int len = *p < 0x20 ? 0 : utf8_seq(p, e);
        if (len) {
            p += len;
            continue;
        }
        *p = *p < 0x20 ? ' ' : '?';
        p++;
        n++;
    }
    return n;
}
