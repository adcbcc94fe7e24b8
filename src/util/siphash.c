/*
 * siphash.c — SipHash-2-4 (J.-P. Aumasson and D. J. Bernstein, "SipHash: a
 * fast short-input PRF", 2012): two rounds per 8-byte word of the message,
 * four to finish.  Words are read little-endian whatever the host.
 */
#include "util/siphash.h"

static uint64_t rotl(uint64_t x, int b)
{
    return x << b | x >> (64 - b);
}

static uint64_t le64(const unsigned char *p, size_t n)
{
    uint64_t v = 0;
    for (size_t i = n; i-- > 0;)
        v = v << 8 | p[i];
    return v;
}

struct sip {
    uint64_t v0, v1, v2, v3;
};

static void rounds(struct sip *s, int n)
{
    while (n-- > 0) {
        s->v0 += s->v1;
        s->v1 = rotl(s->v1, 13) ^ s->v0;
        s->v0 = rotl(s->v0, 32);
        s->v2 += s->v3;
        s->v3 = rotl(s->v3, 16) ^ s->v2;
        s->v0 += s->v3;
        s->v3 = rotl(s->v3, 21) ^ s->v0;
        s->v2 += s->v1;
        s->v1 = rotl(s->v1, 17) ^ s->v2;
        s->v2 = rotl(s->v2, 32);
    }
}

static void absorb(struct sip *s, uint64_t m)
{
    s->v3 ^= m;
    rounds(s, 2);
    s->v0 ^= m;
}

uint64_t siphash24(const unsigned char key[16], const void *p, size_t n)
{
    const unsigned char *in = p;
    uint64_t k0 = le64(key, 8), k1 = le64(key + 8, 8);
    struct sip s = {k0 ^ 0x736f6d6570736575ULL, k1 ^ 0x646f72616e646f6dULL,
                    k0 ^ 0x6c7967656e657261ULL, k1 ^ 0x7465646279746573ULL};
    size_t whole = n - n % 8;
    for (size_t i = 0; i < whole; i += 8)
        absorb(&s, le64(in + i, 8));
    absorb(&s, (uint64_t)(n & 0xff) << 56 | le64(in + whole, n % 8));
    s.v2 ^= 0xff;
    rounds(&s, 4);
    return s.v0 ^ s.v1 ^ s.v2 ^ s.v3;
}
