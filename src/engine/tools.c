/* tools.c — the built-in server-side tools (see tools.h). */
#include "engine/tools.h"
#include "util/timeutil.h"
#include <jansson.h>
#include <stdio.h>
#include <string.h>

static int has_feature(const struct session_rec *s, const char *f)
{
    char key[40];
    snprintf(key, sizeof(key), "\"%s\"", f);
    return s->features && strstr(s->features, key) != NULL;
}

int tool_available(const struct session_rec *s, const char *name)
{
    if (strcmp(name, "current_time") == 0) return 1;
    if (!strcmp(name, "read_file") || !strcmp(name, "write_file") || !strcmp(name, "list_files") ||
        !strcmp(name, "grep_files"))
        return has_feature(s, "file_system");
    if (!strncmp(name, "storage_", 8) || !strcmp(name, "secret_set"))
        return has_feature(s, "key_value") || has_feature(s, "secrets");
    return 0;
}

/* "/workspace/a/b", "a/b" and "/a/b" are the same file: "/a/b" */
static const char *norm_path(struct arena *a, const char *p)
{
    if (!p || !*p || strlen(p) > 1024 || strstr(p, "..") || strstr(p, "//")) return NULL;
    if (strncmp(p, "/workspace/", 11) == 0) p += 10;
    char *out = arena_alloc(a, strlen(p) + 2);
    snprintf(out, strlen(p) + 2, "%s%s", p[0] == '/' ? "" : "/", p);
    return out;
}

/* a pending write of this same batch, newest first */
static const struct tool_effect *pending(struct tool_ctx *c, int kind, const char *key)
{
    for (int i = c->neffects - 1; i >= 0; i--)
        if (strcmp(c->effects[i].key, key) == 0 &&
            (c->effects[i].kind == kind ||
             (kind == TE_KV_SET && c->effects[i].kind == TE_KV_DELETE)))
            return &c->effects[i];
    return NULL;
}

static int add_effect(struct tool_ctx *c, int kind, const char *key, const char *value, int secret)
{
    if (c->neffects == TOOL_MAX_EFFECTS) return -1;
    struct tool_effect *e = &c->effects[c->neffects++];
    e->kind = kind;
    e->key = arena_strdup(c->a, key);
    e->value = value ? arena_strdup(c->a, value) : NULL;
    e->secret = secret;
    return 0;
}

/* the session's starter files (initial_files), as a fallback under writes */
static const char *initial_file(struct tool_ctx *c, const char *path)
{
    json_t *x = json_loads(c->session->extra ? c->session->extra : "{}", 0, NULL);
    const char *found = NULL;
    size_t i;
    json_t *f;
    json_array_foreach(json_object_get(x, "initial_files"), i, f)
    {
        const char *p = norm_path(c->a, json_string_value(json_object_get(f, "path")));
        if (p && strcmp(p, path) == 0) {
            found = arena_strdup(c->a, json_string_value(json_object_get(f, "content")));
            break;
        }
    }
    json_decref(x);
    return found;
}

static const char *file_read(struct tool_ctx *c, const char *path)
{
    const struct tool_effect *e = pending(c, TE_FILE_WRITE, path);
    if (e) return e->value;
    const char *content = NULL;
    if (store_file_get(c->st, c->session->id, path, c->a, &content) == LD_OK) return content;
    return initial_file(c, path);
}

struct lister {
    struct tool_ctx *c;
    struct buf *out;
    const char *prefix, *pattern;
    int n;
};

static void list_one(struct lister *l, const char *path, const char *content)
{
    if (l->prefix && strncmp(path, l->prefix, strlen(l->prefix)) != 0) return;
    if (!l->pattern) {
        buf_printf(l->out, "%s%s", l->n++ ? "\n" : "", path);
        return;
    }
    /* lines are searched in place: copying each one (to the batch's arena)
     * made a grep cost as much memory as all the session's files */
    size_t plen = strlen(l->pattern);
    int line = 1;
    for (const char *p = content; p && *p; line++) {
        const char *nl = strchr(p, '\n');
        size_t len = nl ? (size_t)(nl - p) : strlen(p);
        if (memmem(p, len, l->pattern, plen))
            buf_printf(l->out, "%s%s:%d: %.*s", l->n++ ? "\n" : "", path, line,
                       (int)(len < 200 ? len : 200), p);
        p = nl ? nl + 1 : NULL;
    }
}

static void list_cb(const char *path, const char *content, void *ud)
{
    list_one(ud, path, content);
}

static void list_files(struct tool_ctx *c, struct buf *out, const char *prefix, const char *pattern)
{
    struct lister l = {c, out, prefix, pattern, 0};
    store_files_list(c->st, c->session->id, list_cb, &l);
    /* starter files not written over, and this batch's writes */
    json_t *x = json_loads(c->session->extra ? c->session->extra : "{}", 0, NULL);
    size_t i;
    json_t *f;
    json_array_foreach(json_object_get(x, "initial_files"), i, f)
    {
        const char *p = norm_path(c->a, json_string_value(json_object_get(f, "path")));
        if (p && !pending(c, TE_FILE_WRITE, p) &&
            store_file_get(c->st, c->session->id, p, NULL, NULL) != LD_OK)
            list_one(&l, p, json_string_value(json_object_get(f, "content")));
    }
    json_decref(x);
    for (int k = 0; k < c->neffects; k++)
        if (c->effects[k].kind == TE_FILE_WRITE) {
            if (store_file_get(c->st, c->session->id, c->effects[k].key, NULL, NULL) != LD_OK)
                list_one(&l, c->effects[k].key, c->effects[k].value);
        }
    if (!l.n) buf_puts(out, pattern ? "(no matches)" : "(no files)");
}

static void kv_cb(const char *key, int secret, void *ud)
{
    struct buf *out = ud;
    buf_printf(out, "%s%s%s", out->len ? "\n" : "", key, secret ? " (secret)" : "");
}

void tool_run(struct tool_ctx *c, const char *name, const char *args_json, struct buf *out,
              const char **error)
{
    *error = NULL;
    json_t *args = json_loads(args_json ? args_json : "{}", 0, NULL);
    const char *path = norm_path(c->a, json_string_value(json_object_get(args, "path")));
    const char *key = json_string_value(json_object_get(args, "key"));
    const char *value = json_string_value(json_object_get(args, "value"));
    const char *content = json_string_value(json_object_get(args, "content"));
    if (strcmp(name, "current_time") == 0) {
        char ts[40];
        time_format(time_now_us(), ts, sizeof(ts));
        buf_puts(out, ts);
    } else if (strcmp(name, "read_file") == 0) {
        const char *text = path ? file_read(c, path) : NULL;
        if (!path)
            *error = "path: expected a file path without '..' or '//'";
        else if (!text)
            *error = "No such file";
        else
            buf_add(out, text, strlen(text) < TOOL_MAX_OUTPUT ? strlen(text) : TOOL_MAX_OUTPUT);
    } else if (strcmp(name, "write_file") == 0) {
        if (!path || !content)
            *error = "path and content: expected strings (no '..' or '//' in path)";
        else if (strlen(content) > TOOL_MAX_FILE)
            *error = "content: larger than 1 MiB";
        else if (add_effect(c, TE_FILE_WRITE, path, content, 0))
            *error = "Too many changes in one step";
        else
            buf_printf(out, "Wrote %zu bytes to %s", strlen(content), path);
    } else if (strcmp(name, "list_files") == 0) {
        list_files(c, out, json_string_value(json_object_get(args, "prefix")), NULL);
    } else if (strcmp(name, "grep_files") == 0) {
        const char *pattern = json_string_value(json_object_get(args, "pattern"));
        if (!pattern || !*pattern)
            *error = "pattern: expected a non-empty string";
        else
            list_files(c, out, NULL, pattern);
    } else if (strcmp(name, "storage_get") == 0) {
        const struct tool_effect *e = key ? pending(c, TE_KV_SET, key) : NULL;
        const char *v = NULL;
        int secret = 0;
        if (!key)
            *error = "key: expected a string";
        else if (e)
            e->kind == TE_KV_DELETE ? (void)(*error = "No such key") : buf_puts(out, e->value);
        else if (store_kv_get(c->st, c->session->id, key, c->a, &v, &secret) == LD_OK)
            buf_puts(out, v);
        else
            *error = "No such key";
    } else if (strcmp(name, "storage_set") == 0 || strcmp(name, "secret_set") == 0) {
        if (!key || !value || strlen(key) > 256 || strlen(value) > TOOL_MAX_OUTPUT)
            *error = "key and value: expected strings (key at most 256 bytes, value 64 KiB)";
        else if (add_effect(c, TE_KV_SET, key, value, name[1] == 'e'))
            *error = "Too many changes in one step";
        else
            buf_printf(out, "Stored %s", key);
    } else if (strcmp(name, "storage_delete") == 0) {
        if (!key)
            *error = "key: expected a string";
        else if (add_effect(c, TE_KV_DELETE, key, NULL, 0))
            *error = "Too many changes in one step";
        else
            buf_printf(out, "Deleted %s", key);
    } else if (strcmp(name, "storage_list") == 0) {
        store_kv_list(c->st, c->session->id, kv_cb, out);
        if (!out->len) buf_puts(out, "(no keys)");
    } else {
        *error = "Unknown tool";
    }
    json_decref(args);
}

/* JSON Schemas of the built-in tools, for model calls */
static const struct {
    const char *name, *feature, *description, *parameters;
} defs[] = {
    {"current_time", NULL, "The current date and time (UTC, RFC 3339).",
     "{\"type\":\"object\",\"properties\":{}}"},
    {"read_file", "file_system", "Read a file of the session's workspace.",
     "{\"type\":\"object\",\"properties\":{\"path\":{\"type\":\"string\"}},\"required\":[\"path\"]"
     "}"},
    {"write_file", "file_system", "Write (create or replace) a file of the session's workspace.",
     "{\"type\":\"object\",\"properties\":{\"path\":{\"type\":\"string\"},\"content\":{\"type\":"
     "\"string\"}},\"required\":[\"path\",\"content\"]}"},
    {"list_files", "file_system", "List the workspace's files (optionally under a prefix).",
     "{\"type\":\"object\",\"properties\":{\"prefix\":{\"type\":\"string\"}}}"},
    {"grep_files", "file_system", "Find lines containing a text in the workspace's files.",
     "{\"type\":\"object\",\"properties\":{\"pattern\":{\"type\":\"string\"}},\"required\":["
     "\"pattern\"]}"},
    {"storage_get", "key_value", "Read a value of the session's key-value storage.",
     "{\"type\":\"object\",\"properties\":{\"key\":{\"type\":\"string\"}},\"required\":[\"key\"]}"},
    {"storage_set", "key_value", "Store a value under a key in the session's storage.",
     "{\"type\":\"object\",\"properties\":{\"key\":{\"type\":\"string\"},\"value\":{\"type\":"
     "\"string\"}},"
     "\"required\":[\"key\",\"value\"]}"},
    {"storage_delete", "key_value", "Delete a key of the session's storage.",
     "{\"type\":\"object\",\"properties\":{\"key\":{\"type\":\"string\"}},\"required\":[\"key\"]}"},
    {"storage_list", "key_value", "List the keys of the session's storage.",
     "{\"type\":\"object\",\"properties\":{}}"},
    {"secret_set", "secrets", "Store a secret under a key in the session's storage.",
     "{\"type\":\"object\",\"properties\":{\"key\":{\"type\":\"string\"},\"value\":{\"type\":"
     "\"string\"}},"
     "\"required\":[\"key\",\"value\"]}"},
};

void tools_builtin_defs(const struct session_rec *s, struct buf *out, int *n)
{
    for (size_t i = 0; i < sizeof(defs) / sizeof(defs[0]); i++) {
        if (!tool_available(s, defs[i].name)) continue;
        if ((*n)++) buf_putc(out, ',');
        buf_printf(out, "{\"name\":\"%s\",\"description\":\"%s\",\"parameters\":%s}", defs[i].name,
                   defs[i].description, defs[i].parameters);
    }
}
