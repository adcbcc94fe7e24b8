/* id.c — UUIDv7 generation and strict typed-ID validation. */
#include "core/id.h"
#include "util/timeutil.h"
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>

static const char hexd[] = "0123456789abcdef";

static void fill(unsigned char *q, size_t n)
{
    while (n) {
        ssize_t r = getrandom(q, n, 0);
        if (r < 0 && errno == EINTR) continue;
        if (r <= 0) abort(); /* no randomness: IDs and keys cannot be made safely */
        q += r;
        n -= (size_t)r;
    }
}

/* Kernel randomness fetched 512 bytes at a time (one system call per ~50
 * IDs instead of one each); each byte is handed out once, then wiped. */
void random_bytes(void *p, size_t n)
{
    static _Thread_local unsigned char pool[512];
    static _Thread_local size_t left;
    unsigned char *q = p;
    if (n > sizeof(pool)) {
        fill(q, n);
        return;
    }
    while (n) {
        if (!left) {
            fill(pool, sizeof(pool));
            left = sizeof(pool);
        }
        size_t k = n < left ? n : left;
        unsigned char *src = pool + sizeof(pool) - left;
        memcpy(q, src, k);
        memset(src, 0, k);
        left -= k;
        q += k;
        n -= k;
    }
}

void random_hex(char *out, size_t nbytes)
{
    unsigned char b[64];
    while (nbytes) {
        size_t k = nbytes < sizeof(b) ? nbytes : sizeof(b);
        random_bytes(b, k);
        for (size_t i = 0; i < k; i++) {
            *out++ = hexd[b[i] >> 4];
            *out++ = hexd[b[i] & 15];
        }
        nbytes -= k;
    }
    *out = 0;
}

/* UUIDv7 with `ntail` of the last random bytes replaced by `tail`
 * (big-endian) */
static void id_make(const char *prefix, uint32_t tail, int ntail, char out[ID_MAX])
{
    unsigned char u[16];
    uint64_t ms = (uint64_t)(time_now_us() / 1000);
    random_bytes(u + 6, (size_t)(10 - ntail));
    for (int i = 0; i < ntail; i++)
        u[15 - i] = (unsigned char)(tail >> (8 * i));
    for (int i = 0; i < 6; i++)
        u[i] = (unsigned char)(ms >> (40 - 8 * i));
    u[6] = (unsigned char)(0x70 | (u[6] & 0x0f)); /* version 7 */
    u[8] = (unsigned char)(0x80 | (u[8] & 0x3f)); /* variant 10 */
    size_t pl = strlen(prefix);
    memcpy(out, prefix, pl);
    out[pl] = '_';
    for (int i = 0; i < 16; i++) {
        out[pl + 1 + 2 * i] = hexd[u[i] >> 4];
        out[pl + 2 + 2 * i] = hexd[u[i] & 15];
    }
    out[pl + 1 + ID_HEX] = 0;
}

void id_new(const char *prefix, char out[ID_MAX])
{
    id_make(prefix, 0, 0, out);
}

void id_new_tail(const char *prefix, uint32_t tail, char out[ID_MAX])
{
    id_make(prefix, tail, 4, out);
}

int id_tail(const char *id, uint32_t *tail)
{
    size_t n = strlen(id);
    if (n < 8) return -1;
    uint32_t v = 0;
    for (const char *p = id + n - 8; *p; p++) {
        int d = *p >= '0' && *p <= '9' ? *p - '0' : *p >= 'a' && *p <= 'f' ? *p - 'a' + 10 : -1;
        if (d < 0) return -1;
        v = v << 4 | (uint32_t)d;
    }
    *tail = v;
    return 0;
}

void id_with_hex(const char *prefix, const char *hex32, char out[ID_MAX])
{
    snprintf(out, ID_MAX, "%s_%.32s", prefix, hex32);
}

int id_check(const char *prefix, const char *s, char *why, size_t whylen)
{
    const char *us = strchr(s, '_');
    size_t pl = strlen(prefix);
    if (!us || (size_t)(us - s) != pl || memcmp(s, prefix, pl) != 0) {
        size_t got = us ? (size_t)(us - s) : strlen(s);
        if (got > 64) got = 64;
        snprintf(why, whylen, "invalid prefix: expected '%s', got '%.*s'", prefix, (int)got, s);
        return -1;
    }
    const char *h = us + 1;
    size_t n = strlen(h);
    if (n != ID_HEX) {
        snprintf(why, whylen, "invalid length: expected 32, got %zu", n);
        return -1;
    }
    for (size_t i = 0; i < n; i++) {
        char c = h[i];
        if (!((c >= '0' && c <= '9') || (c >= 'a' && c <= 'f'))) {
            snprintf(why, whylen, "invalid hex in ID: %s", h);
            return -1;
        }
    }
    return 0;
}

const char *id_hex(const char *id)
{
    const char *us = strchr(id, '_');
    return us ? us + 1 : id;
}

void uuid_v4_str(char out[37])
{
    unsigned char u[16];
    random_bytes(u, 16);
    u[6] = (unsigned char)(0x40 | (u[6] & 0x0f));
    u[8] = (unsigned char)(0x80 | (u[8] & 0x3f));
    char *p = out;
    for (int i = 0; i < 16; i++) {
        if (i == 4 || i == 6 || i == 8 || i == 10) *p++ = '-';
        *p++ = hexd[u[i] >> 4];
        *p++ = hexd[u[i] & 15];
    }
    *p = 0;
}
