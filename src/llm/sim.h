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
 *   {"tool": "name", "arguments": {...}}   first call that tool, then answer
 *   {"tools": [{"name": ..., "arguments": ...}, ...]}  several calls at once
 *   text markers: "llmsim:fail=CODE", "llmsim:latency=MS"
 */
#ifndef LOOPD_SIM_H
#define LOOPD_SIM_H
#include "util/mem.h"
#include <stdint.h>

#define SIM_MAX_DELTAS 8

#define SIM_MAX_CALLS 8

struct sim_call {
    char id[40]; /* call_<hex> */
    const char *name;
    const char *arguments; /* JSON object text */
};

struct sim_plan {
    struct sim_call calls[SIM_MAX_CALLS]; /* tool calls instead of an answer */
    int ncalls;
    const char *text;                   /* the whole answer */
    const char *deltas[SIM_MAX_DELTAS]; /* pieces, in order; concatenated = text */
    int ndeltas;
    long latency_ms;
    const char *fail_code; /* NULL = success */
    const char *fail_text;
    int64_t input_tokens, output_tokens, cache_read_tokens;
};

/* user_text: the newest user message; prompt_bytes: the size of everything
 * sent (system prompt + history), for the usage; hints_json: the llmsim
 * object of the hints, or NULL.  Strings live in the arena. */
/* tool_results: the results the turn's earlier calls got ("" or NULL when
 * none): with results, llmsim answers from them instead of calling again. */
void sim_plan(const char *user_text, size_t prompt_bytes, const char *hints_json,
              const char *tool_results, struct arena *a, struct sim_plan *p);

#endif
