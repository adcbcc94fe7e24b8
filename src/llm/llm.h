/*
 * llm.h — model drivers that stream over libcurl multi on the event loop
 * (no thread per call).  A call streams text deltas to on_delta and ends
 * with exactly one on_done, unless cancelled first (then neither runs
 * again).  Failures end in on_done with error_code set: retries (429 and
 * 5xx before any byte of an answer, with backoff) and the per-call
 * deadline are handled here.
 */
#ifndef LOOPD_LLM_H
#define LOOPD_LLM_H
#include "llm/sim.h"
#include <stddef.h>
#include <stdint.h>

struct loop;
struct llm;      /* the driver set: one curl multi handle on the loop */
struct llm_call; /* one model call */

struct llm_provider {
    const char *kind;     /* "openai" (Chat Completions) or "anthropic" (Messages) */
    const char *base_url; /* e.g. https://api.openai.com/v1 */
    const char *api_key;  /* may be "" */
};

struct llm_result {
    const char *text;                     /* whole answer ("" if none) */
    struct sim_call calls[SIM_MAX_CALLS]; /* tool calls asked for */
    int ncalls;
    int64_t input_tokens, output_tokens, cache_read_tokens;
    const char *error_code; /* NULL on success */
    const char *error_text;
    int attempts;
};

typedef void (*llm_delta_fn)(void *ud, const char *delta);
typedef void (*llm_done_fn)(void *ud, const struct llm_result *r);

struct llm *llm_new(struct loop *l, long timeout_ms, int retries);
void llm_free(struct llm *m);
/* messages: a JSON array in OpenAI chat format (system first); tools: a
 * JSON array of {name, description, parameters} or NULL. */
/* parallel: -1 unset, else the session's/agent's parallel_tool_calls */
struct llm_call *llm_start(struct llm *m, const struct llm_provider *p, const char *model,
                           const char *messages, const char *tools, int parallel,
                           llm_delta_fn on_delta, llm_done_fn on_done, void *ud);
void llm_cancel(struct llm_call *c);

#endif
