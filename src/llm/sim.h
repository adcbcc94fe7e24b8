/*
 * sim.h — llmsim, loopd's built-in deterministic model.  Given the user's
 * text and the turn's hints it returns the same answer every time, split
 * into several deltas, with token usage, so tests and benchmarks can drive
 * every path with no network.
 *
 * Steering (in `controls.hints.llmsim` of the message, or as markers in
 * the message text):
 *   {"text": "..."}          answer exactly this
 *   {"fail": "llm_error"}    the call fails with that error_code
 *   {"latency_ms": 200}      the answer streams over this many ms
 *   text markers: "llmsim:fail=CODE", "llmsim:latency=MS"
 */
#ifndef LOOPD_SIM_H
#define LOOPD_SIM_H
#include "util/mem.h"
#include <stdint.h>

#define SIM_MAX_DELTAS 8

struct sim_plan {
    const char *text;                   /* the whole answer */
    const char *deltas[SIM_MAX_DELTAS]; /* pieces, in order; concatenated = text */
    int ndeltas;
    long latency_ms;
    const char *fail_code; /* NULL = success */
    const char *fail_text;
    int64_t input_tokens, output_tokens;
};

/* user_text: the newest user message; prompt_bytes: the size of everything
 * sent (system prompt + history), for the usage; hints_json: the llmsim
 * object of the hints, or NULL.  Strings live in the arena. */
void sim_plan(const char *user_text, size_t prompt_bytes, const char *hints_json, struct arena *a,
              struct sim_plan *p);

#endif
