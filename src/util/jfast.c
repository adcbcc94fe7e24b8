/*
 * jfast.c — the fast parse of common JSON bodies (see jfast.h).
 *
 * Recursive descent over the bytes; every value is built with jansson's
 * own constructors, as json_loadb builds it.  Any doubt returns NULL and
 * frees what was built: the caller's json_loadb decides.
 */
#include "util/jfast.h"
#include <stdint.h>
#include <string.h>

struct jp {
    const unsigned char *p, *end;
};

static void skip_ws(struct jp *j)
{
    while (j->p < j->end && (*j->p == ' ' || *j->p == '\n' || *j->p == '\r' || *j->p == '\t'))
        j->p++;
}

/* A string at j->p (past its opening quote): printable ASCII, no escapes.
 * Sets *s and *n and moves past the closing quote; -1 if not that. */
static int scan_string(struct jp *j, const char **s, size_t *n)
{
    const unsigned char *q = j->p;
    while (q < j->end && *q >= 0x20 && *q < 0x80 && *q != '"' && *q != '\\')
        q++;
    if (q == j->end || *q != '"') return -1;
    *s = (const char *)j->p;
    *n = (size_t)(q - j->p);
    j->p = q + 1;
    return 0;
}

/* -?(0|[1-9][0-9]*) of at most 18 digits, not followed by '.', 'e' or 'E' */
static json_t *scan_integer(struct jp *j)
{
    int neg = 0;
    if (*j->p == '-') {
        neg = 1;
        j->p++;
    }
    const unsigned char *d = j->p;
    int64_t v = 0;
    while (j->p < j->end && *j->p >= '0' && *j->p <= '9') {
        if (j->p - d == 18) return NULL;
        v = v * 10 + (*j->p++ - '0');
    }
    if (j->p == d || (*d == '0' && j->p - d > 1)) return NULL;
    if (j->p < j->end && (*j->p == '.' || *j->p == 'e' || *j->p == 'E')) return NULL;
    return json_integer(neg ? -v : v);
}

static int literal(struct jp *j, const char *word, size_t n)
{
    if ((size_t)(j->end - j->p) < n || memcmp(j->p, word, n) != 0) return -1;
    j->p += n;
    return 0;
}

static json_t *value(struct jp *j, int depth);

/* After whitespace: `close` (consumed; 1), ',' (consumed; 0) or else -1 */
static int next(struct jp *j, char close)
{
    skip_ws(j);
    if (j->p < j->end && (*j->p == close || *j->p == ',')) return *j->p++ == close;
    return -1;
}

/* after whitespace: `close` is consumed and 1, else 0 */
static int closes(struct jp *j, char close)
{
    skip_ws(j);
    if (j->p < j->end && *j->p == close) {
        j->p++;
        return 1;
    }
    return 0;
}

static json_t *object(struct jp *j, int depth)
{
    json_t *o = json_object();
    if (!o) return NULL;
    if (closes(j, '}')) return o;
    for (int more = 0; more == 0;) {
        const char *k;
        size_t kn;
        skip_ws(j);
        if (j->p == j->end || *j->p != '"') break;
        j->p++;
        if (scan_string(j, &k, &kn)) break;
        skip_ws(j);
        if (j->p == j->end || *j->p != ':') break;
        j->p++;
        json_t *v = value(j, depth);
        size_t before = json_object_size(o);
        /* a repeated key replaces nothing here: json_loadb refuses it */
        if (!v || json_object_setn_new_nocheck(o, k, kn, v) || json_object_size(o) == before) break;
        if ((more = next(j, '}')) == 1) return o;
    }
    json_decref(o);
    return NULL;
}

static json_t *array(struct jp *j, int depth)
{
    json_t *a = json_array();
    if (!a) return NULL;
    if (closes(j, ']')) return a;
    for (int more = 0; more == 0;) {
        json_t *v = value(j, depth);
        if (!v || json_array_append_new(a, v)) break;
        if ((more = next(j, ']')) == 1) return a;
    }
    json_decref(a);
    return NULL;
}

static json_t *value(struct jp *j, int depth)
{
    skip_ws(j);
    if (j->p == j->end) return NULL;
    switch (*j->p) {
    case '{':
        if (depth >= JFAST_MAX_DEPTH) return NULL;
        j->p++;
        return object(j, depth + 1);
    case '[':
        if (depth >= JFAST_MAX_DEPTH) return NULL;
        j->p++;
        return array(j, depth + 1);
    case '"': {
        const char *s;
        size_t n;
        j->p++;
        return scan_string(j, &s, &n) ? NULL : json_stringn_nocheck(s, n);
    }
    case 't':
        return literal(j, "true", 4) ? NULL : json_true();
    case 'f':
        return literal(j, "false", 5) ? NULL : json_false();
    case 'n':
        return literal(j, "null", 4) ? NULL : json_null();
    default:
        if (*j->p == '-' || (*j->p >= '0' && *j->p <= '9')) return scan_integer(j);
        return NULL;
    }
}

json_t *jfast_parse(const char *p, size_t n)
{
    struct jp j = {(const unsigned char *)p, (const unsigned char *)p + n};
    json_t *v = value(&j, 0);
    if (!v) return NULL;
    skip_ws(&j);
    if (j.p != j.end) {
        json_decref(v);
        return NULL;
    }
    return v;
}
