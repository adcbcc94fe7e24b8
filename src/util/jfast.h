/*
 * jfast.h — a fast parse of the JSON request bodies clients send most
 * (objects of ASCII strings, small integers, booleans, null, arrays) into
 * jansson values.
 *
 * jansson's json_loadb reads a byte at a time through a stream with a
 * growing token buffer: ~7,800 instructions for a 34-byte create body, a
 * tenth of a durable POST's user-space work.  jfast_parse handles the
 * common shapes in one pass and declines everything else (returns NULL):
 * any backslash, any byte outside printable ASCII in a string, real
 * numbers, integers past 18 digits, duplicate keys, nesting past
 * JFAST_MAX_DEPTH, and every malformed text.  The caller then parses with
 * json_loadb, which gives the value or the error and its wording, so a
 * text jfast_parse takes yields the very value json_loadb would
 * (JSON_REJECT_DUPLICATES | JSON_DECODE_ANY), and every other text is
 * json_loadb's alone.
 */
#ifndef LOOPD_JFAST_H
#define LOOPD_JFAST_H
#include <jansson.h>
#include <stddef.h>

#define JFAST_MAX_DEPTH 32

/* The value of the n bytes at p, or NULL: not a shape handled here. */
json_t *jfast_parse(const char *p, size_t n);

#endif
