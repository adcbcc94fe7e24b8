/* siphash.h — SipHash-2-4, a keyed hash of short inputs (a pseudorandom
 * function for a secret 128-bit key): the API-key cache's key. */
#ifndef LOOPD_SIPHASH_H
#define LOOPD_SIPHASH_H
#include <stddef.h>
#include <stdint.h>

uint64_t siphash24(const unsigned char key[16], const void *p, size_t n);

#endif
