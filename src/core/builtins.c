/*
 * builtins.c — built-in harnesses and models, and the feature mapping.
 * The default org's built-ins have the fixed IDs upstream uses; other orgs
 * get fresh IDs (address built-ins by name).
 */
#include "core/builtins.h"
#include "util/sha256.h"
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define GENERIC_CAPS                                                                               \
    "[{\"ref\":\"session_file_system\"},{\"ref\":\"virtual_bash\"},"                               \
    "{\"ref\":\"web_fetch\",\"config\":{\"enable_file_download\":true}},"                          \
    "{\"ref\":\"session_storage\"},{\"ref\":\"session\"},{\"ref\":\"agent_instructions\"},"        \
    "{\"ref\":\"current_time\"}]"

const struct builtin_harness builtin_harnesses[] = {
    {"base", "Base", "A bare harness with no capabilities.", "You are a helpful assistant.", NULL,
     "[]", "[\"base\",\"built-in\"]", "harness_01933b5a000070008000000000000601"},
    {"generic", "Generic", "The default harness: files, storage and time.",
     "You are a helpful assistant. Use the tools available to you when they help.", NULL,
     GENERIC_CAPS, "[\"generic\",\"default\",\"built-in\"]",
     "harness_01933b5a000070008000000000000602"},
    {"platform-chat", "Platform Chat", "The harness of each user's global chat session.",
     "You are the platform assistant. Help the user work with their agents and sessions.",
     "generic", "[{\"ref\":\"platform_management\"},{\"ref\":\"platform_docs\"}]",
     "[\"chat\",\"built-in\"]", "harness_01933b5a000070008000000000000603"},
};
const int builtin_harness_count = sizeof(builtin_harnesses) / sizeof(builtin_harnesses[0]);

#define MAX_MODELS 64
struct builtin_model builtin_models[MAX_MODELS] = {
    {DEFAULT_MODEL_ID, "llmsim", "llmsim", "LLM Simulator (deterministic)"},
};
int builtin_model_count = 1;

const struct builtin_model *model_register(const char *provider, const char *name)
{
    if (builtin_model_count == MAX_MODELS || !*name) return NULL;
    struct builtin_model *m = &builtin_models[builtin_model_count++];
    char key[300], hex[65];
    snprintf(key, sizeof(key), "%s/%s", provider, name);
    sha256_hex(key, strlen(key), hex);
    snprintf(m->id, sizeof(m->id), "model_%.32s", hex);
    m->name = strdup(name);
    m->provider = provider;
    m->display_name = m->name;
    return m;
}

const struct builtin_model *model_find(const char *id)
{
    for (int i = 0; i < builtin_model_count; i++)
        if (strcmp(builtin_models[i].id, id) == 0) return &builtin_models[i];
    return NULL;
}

/* capability -> feature bits; the order of features[] is the output order */
static const char *const features[] = {"file_system",  "secrets",          "key_value", "schedules",
                                       "sql_database", "leased_resources", "openui"};
enum { F_FS = 1, F_SECRETS = 2, F_KV = 4, F_SCHED = 8, F_SQL = 16, F_LEASED = 32, F_OPENUI = 64 };

static const struct {
    const char *ref;
    unsigned bits;
} cap_features[] = {
    {"session_file_system", F_FS},
    {"virtual_bash", F_FS},
    {"sample_data", F_FS},
    {"data_knowledge", F_FS},
    {"session_storage", F_SECRETS | F_KV},
    {"session_schedule", F_SCHED},
    {"session_sql_database", F_SQL},
    {"daytona", F_LEASED},
    {"deno", F_LEASED},
    {"docker_container", F_LEASED},
    {"e2b", F_LEASED},
    {"openui", F_OPENUI},
    {"web_fetch", 0},
    {"session", 0},
    {"agent_instructions", 0},
    {"current_time", 0},
    {"skills", 0},
    {"infinity_context", 0},
    {"openai_tool_search", 0},
    {"budgeting", 0},
    {"compaction", 0},
    {"tool_output_persistence", 0},
    {"platform_management", 0},
    {"platform_docs", 0},
};
#define NCAPS (sizeof(cap_features) / sizeof(cap_features[0]))

int capability_known(const char *ref)
{
    if (strncmp(ref, "mcp:", 4) == 0 && ref[4]) return 1;
    for (size_t i = 0; i < NCAPS; i++)
        if (strcmp(cap_features[i].ref, ref) == 0) return 1;
    return 0;
}

/* Feature bits of one capabilities array, parsed once per distinct text:
 * harness and agent capability lists repeat on every create.  A small
 * direct-mapped cache owned by the loop thread (the only caller). */
#define FEATURE_CACHE 64
static struct {
    char *text;
    unsigned bits;
} fcache[FEATURE_CACHE];

static unsigned parse_features(const char *caps_json)
{
    unsigned seen = 0;
    json_t *arr = json_loads(caps_json, 0, NULL);
    size_t i;
    json_t *c;
    json_array_foreach(arr, i, c)
    {
        const char *ref = json_string_value(json_object_get(c, "ref"));
        if (!ref) continue;
        for (size_t k = 0; k < NCAPS; k++)
            if (strcmp(cap_features[k].ref, ref) == 0) seen |= cap_features[k].bits;
    }
    json_decref(arr);
    return seen;
}

void features_add(const char *caps_json, unsigned *seen)
{
    if (!caps_json || !*caps_json) return;
    /* the slot: FNV-1a of the length and the first and last 32 bytes (a
     * harness's list is ~300 bytes, hashed whole on every create); the
     * strcmp below decides */
    size_t n = strlen(caps_json), head = n < 32 ? n : 32, tail = n < 64 ? n - head : 32;
    unsigned h = (2166136261u ^ (unsigned)n) * 16777619u;
    for (size_t i = 0; i < head; i++)
        h = (h ^ (unsigned char)caps_json[i]) * 16777619u;
    for (size_t i = n - tail; i < n; i++)
        h = (h ^ (unsigned char)caps_json[i]) * 16777619u;
    unsigned slot = h % FEATURE_CACHE;
    if (fcache[slot].text && strcmp(fcache[slot].text, caps_json) == 0) {
        *seen |= fcache[slot].bits;
        return;
    }
    unsigned bits = parse_features(caps_json);
    if (n < 4096) {
        free(fcache[slot].text);
        fcache[slot].text = strdup(caps_json);
        fcache[slot].bits = bits;
    }
    *seen |= bits;
}

int features_json(unsigned seen, struct buf *out)
{
    if (!seen) return 0;
    struct jw w;
    jw_init(&w, out);
    jw_arr(&w);
    for (size_t i = 0; i < sizeof(features) / sizeof(features[0]); i++)
        if (seen & (1u << i)) jw_str(&w, features[i]);
    jw_end(&w);
    return 1;
}
