/*
 * id.h — typed IDs: "<prefix>_<32 lowercase hex>" (reference section 3).
 * New IDs are UUIDv7 (48-bit millisecond time, then random), so they sort
 * by creation time.  Validation is purely syntactic and each failure has
 * its own message, as upstream words it.
 */
#ifndef LOOPD_ID_H
#define LOOPD_ID_H
#include <stddef.h>
#include <stdint.h>

#define ID_HEX 32
#define ID_MAX 48 /* longest prefix + '_' + 32 hex + NUL, with room */

/* Writes "<prefix>_<uuidv7 hex>" into out (ID_MAX bytes). */
void id_new(const char *prefix, char out[ID_MAX]);
/* The same with the last 32 bits (8 hex digits) set to `tail` instead of
 * random: an event's ID carries its sequence, so that a cursor finds its
 * event without an index of every ID (store_event_seq).  62 - 32 + 12 = 42
 * random bits remain beside the millisecond time. */
void id_new_tail(const char *prefix, uint32_t tail, char out[ID_MAX]);
/* The value of the last 8 characters of id as lowercase hex: 0, or -1 if
 * they are not 8 lowercase hex digits. */
int id_tail(const char *id, uint32_t *tail);
/* Writes "<prefix>_<hex>" where hex is copied from another ID's suffix. */
void id_with_hex(const char *prefix, const char *hex32, char out[ID_MAX]);
/* 0 if s is a valid ID of that prefix; else -1 with a message in why
 * ("invalid prefix: expected 'session', got 'x'"). */
int id_check(const char *prefix, const char *s, char *why, size_t whylen);
/* The 32-hex part of a valid ID. */
const char *id_hex(const char *id);
/* A random UUID in hyphenated form (36 chars + NUL), version 4. */
void uuid_v4_str(char out[37]);
/* Fills p with n cryptographically random bytes (getrandom). */
void random_bytes(void *p, size_t n);
/* Lowercase hex of n random bytes; out needs 2n+1. */
void random_hex(char *out, size_t nbytes);

#endif
