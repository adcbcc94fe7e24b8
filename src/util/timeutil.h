/* timeutil.h — wall-clock and monotonic time, RFC 3339 in and out. */
#ifndef LOOPD_TIMEUTIL_H
#define LOOPD_TIMEUTIL_H
#include <stddef.h>
#include <stdint.h>

int64_t time_now_us(void);  /* wall clock, microseconds since the epoch */
int64_t time_mono_us(void); /* monotonic, microseconds */
/* "2026-05-27T15:24:00.123456Z"; out needs 28 bytes. */
void time_format(int64_t us, char *out, size_t n);
/* Parses RFC 3339 (any offset, optional fraction).  0 on success. */
int time_parse(const char *s, int64_t *us);

#endif
