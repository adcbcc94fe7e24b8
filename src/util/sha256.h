/* sha256.h — SHA-256 (FIPS 180-4), used to store API keys hashed. */
#ifndef LOOPD_SHA256_H
#define LOOPD_SHA256_H
#include <stddef.h>
#include <stdint.h>

struct sha256 {
    uint32_t h[8];
    uint64_t len;
    unsigned char blk[64];
    size_t n;
};
void sha256_init(struct sha256 *s);
void sha256_update(struct sha256 *s, const void *p, size_t n);
void sha256_final(struct sha256 *s, unsigned char out[32]);
/* out: 65 bytes, lowercase hex of SHA-256(p[0..n)). */
void sha256_hex(const void *p, size_t n, char out[65]);
/* Constant-time equality of two equal-length byte strings. */
int ct_equal(const void *a, const void *b, size_t n);

#endif
