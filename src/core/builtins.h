/*
 * builtins.h — the built-in harnesses every org gets, the built-in models,
 * and the capability -> feature table (reference 18, 19.2).
 */
#ifndef LOOPD_BUILTINS_H
#define LOOPD_BUILTINS_H
#include "util/buf.h"

struct builtin_harness {
    const char *name, *display_name, *description, *system_prompt;
    const char *parent;         /* name of the parent built-in, or NULL */
    const char *capabilities;   /* JSON array of {ref, config?} */
    const char *tags;           /* JSON array */
    const char *default_org_id; /* fixed id in the default org */
};
extern const struct builtin_harness builtin_harnesses[];
extern const int builtin_harness_count;

/* The models loopd can call: llmsim, then the ones configured with
 * --openai-models / --anthropic-models.  Registered at start, read-only
 * after.  A configured model's id is model_<first 32 hex of
 * SHA-256("provider/name")>, stable across restarts. */
struct builtin_model {
    char id[48];
    const char *name, *provider, *display_name;
};
extern struct builtin_model builtin_models[];
extern int builtin_model_count;
const struct builtin_model *model_find(const char *id);
/* Adds a model (provider "openai" or "anthropic"); returns it or NULL. */
const struct builtin_model *model_register(const char *provider, const char *name);
#define DEFAULT_MODEL_ID "model_01933b5a000070008000000000000201"

/* Appends to `features` (a JSON-array writer) the features of the
 * capabilities in caps_json (an array of {ref}), skipping duplicates.
 * seen is a bitmask carried across calls. */
void features_add(const char *caps_json, unsigned *seen);
/* Writes the JSON array for a feature bitmask, or NULL (returns 0) when empty. */
int features_json(unsigned seen, struct buf *out);
/* 1 if ref names a capability loopd knows. */
int capability_known(const char *ref);

#endif
