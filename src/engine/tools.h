/*
 * tools.h — loopd's built-in server-side tools.  A tool reads committed
 * state through the store's read path and returns its changes as
 * effects; the engine commits them in the same transaction as the call's
 * tool.completed, so a call's effect and its ledger entry are durable
 * together and a call id never runs twice.
 *
 *   current_time {}                          always
 *   read_file {path}, write_file {path, content}, list_files {prefix?},
 *   grep_files {pattern}                     with the file_system feature
 *   storage_get {key}, storage_set {key, value}, storage_delete {key},
 *   storage_list {}, secret_set {key, value} with key_value / secrets
 */
#ifndef LOOPD_TOOLS_H
#define LOOPD_TOOLS_H
#include "store/store.h"
#include "util/buf.h"

#define TOOL_MAX_EFFECTS 16
#define TOOL_MAX_OUTPUT (64u * 1024)
#define TOOL_MAX_FILE (1u * 1024 * 1024)

struct tool_ctx {
    struct store *st;
    const struct session_rec *session; /* extra holds initial_files */
    struct arena *a;
    struct tool_effect effects[TOOL_MAX_EFFECTS];
    int neffects;
};

/* 1 if `name` is a built-in tool this session may use */
int tool_available(const struct session_rec *s, const char *name);
/* Runs one call; the result text goes to out, or *error is set. */
void tool_run(struct tool_ctx *ctx, const char *name, const char *args_json, struct buf *out,
              const char **error);

/* Appends the definitions ({name, description, parameters}) of the tools
 * this session may use to an open JSON array; *n counts the items. */
void tools_builtin_defs(const struct session_rec *s, struct buf *out, int *n);

#endif
