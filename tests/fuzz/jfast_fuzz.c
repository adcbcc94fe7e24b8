/*
 * jfast_fuzz.c — coverage-guided differential fuzzing of jfast_parse
 * against jansson's json_loadb (libFuzzer; `make fuzz-jfast`).
 *
 * jfast_parse may decline any text, but a text it takes must be one
 * json_loadb takes too (with the flags request bodies are parsed with),
 * giving an equal value with its keys in the same order.  Anything else
 * aborts, and libFuzzer saves the input.  The unit test
 * (tests/unit/test_util_jfast.c) checks the same on a fixed corpus; this
 * lets coverage find the texts no generator thought of.
 */
#include "util/jfast.h"
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define FLAGS (JSON_REJECT_DUPLICATES | JSON_DECODE_ANY)

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    const char *p = (const char *)data;
    json_t *f = jfast_parse(p, size);
    if (!f) return 0;
    json_error_t e;
    json_t *j = json_loadb(p, size, FLAGS, &e);
    if (!j) {
        fprintf(stderr, "jfast took a text json_loadb refuses (%s)\n", e.text);
        abort();
    }
    char *a = json_dumps(f, JSON_COMPACT | JSON_ENCODE_ANY);
    char *b = json_dumps(j, JSON_COMPACT | JSON_ENCODE_ANY);
    if (!a || !b || !json_equal(f, j) || strcmp(a, b) != 0) {
        fprintf(stderr, "jfast: %s\njansson: %s\n", a ? a : "?", b ? b : "?");
        abort();
    }
    free(a);
    free(b);
    json_decref(f);
    json_decref(j);
    return 0;
}
