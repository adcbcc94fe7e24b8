/*
 * common.c — request-body parsing and field validation shared by every
 * resource.  jansson parses untrusted input strictly (UTF-8, no NUL, no
 * duplicate keys, int64), after util/jfast.c has taken the common shapes
 * the cheap way (it yields what jansson would, or declines); each reader
 * below checks one field and answers a 400 whose detail names it.  Nothing
 * here touches SQL.
 */
#include "api/api.h"
#include "core/builtins.h"
#include "limits.h"
#include "util/jfast.h"
#include "util/sha256.h"
#include "util/timeutil.h"
#include <ctype.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

json_t *body_object(struct req *r, int allow_empty)
{
    const char *p = r->body.data ? r->body.data : "";
    size_t n = r->body.len;
    size_t i = 0;
    while (i < n && (p[i] == ' ' || p[i] == '\t' || p[i] == '\r' || p[i] == '\n'))
        i++;
    if (i == n) {
        if (allow_empty) return json_object();
        reply_problem(r, LD_E_BAD_REQUEST, "A JSON object body is required");
        return NULL;
    }
    json_error_t e;
    json_t *v = jfast_parse(p, n);
    if (!v) v = json_loadb(p, n, JSON_REJECT_DUPLICATES | JSON_DECODE_ANY, &e);
    if (!v) {
        /* jansson names its own flag here, which means nothing to a client */
        static const char flag[] = " without JSON_ALLOW_NUL";
        char *f = strstr(e.text, flag);
        if (f) memmove(f, f + sizeof flag - 1, strlen(f + sizeof flag - 1) + 1);
        reply_problem(r, LD_E_BAD_JSON, "Malformed JSON at line %d, column %d: %s", e.line,
                      e.column, e.text);
        return NULL;
    }
    if (json_is_null(v) && allow_empty) {
        json_decref(v);
        return json_object();
    }
    if (!json_is_object(v)) {
        json_decref(v);
        reply_problem(r, LD_E_BAD_REQUEST, "The request body must be a JSON object");
        return NULL;
    }
    return v;
}

/* A member's value, NULL if absent or null.  A handler asks for every
 * field it knows (23 for a create), nearly all absent from a body of a few
 * members: walking those members, first bytes compared before strcmp,
 * costs ~115 instructions a lookup; json_object_get, which hashes the key
 * each time, ~165. */
static json_t *present(json_t *o, const char *key)
{
    json_t *v = NULL;
    if (json_object_size(o) <= 4) {
        for (void *it = json_object_iter(o); it; it = json_object_iter_next(o, it)) {
            const char *k = json_object_iter_key(it);
            if (k[0] == key[0] && strcmp(k, key) == 0) {
                v = json_object_iter_value(it);
                break;
            }
        }
    } else {
        v = json_object_get(o, key);
    }
    return v && !json_is_null(v) ? v : NULL;
}

static size_t utf8_chars(const char *s, size_t n)
{
    size_t c = 0;
    for (size_t i = 0; i < n; i++)
        if (((unsigned char)s[i] & 0xc0) != 0x80) c++;
    return c;
}

int field_text(struct req *r, json_t *o, const char *key, size_t maxchars, const char **out)
{
    json_t *v = present(o, key);
    if (!v) return 0;
    if (json_is_string(v) && utf8_chars(json_string_value(v), json_string_length(v)) > maxchars) {
        reply_problem(r, LD_E_LIMIT, "%s: longer than the limit of %zu characters", key, maxchars);
        return -1;
    }
    return field_str(r, o, key, maxchars * 4, out);
}

int field_str(struct req *r, json_t *o, const char *key, size_t maxlen, const char **out)
{
    json_t *v = present(o, key);
    if (!v) return 0;
    if (!json_is_string(v)) {
        reply_problem(r, LD_E_BAD_REQUEST, "%s: expected a string", key);
        return -1;
    }
    size_t n = json_string_length(v);
    if (n > maxlen) {
        reply_problem(r, LD_E_LIMIT, "%s: longer than the limit of %zu bytes", key, maxlen);
        return -1;
    }
    if (memchr(json_string_value(v), 0, n)) {
        reply_problem(r, LD_E_BAD_REQUEST, "%s: must not contain NUL characters", key);
        return -1;
    }
    *out = arena_strndup(&r->arena, json_string_value(v), n);
    return 1;
}

int field_bool(struct req *r, json_t *o, const char *key, int *out)
{
    json_t *v = present(o, key);
    if (!v) return 0;
    if (!json_is_boolean(v)) {
        reply_problem(r, LD_E_BAD_REQUEST, "%s: expected true or false", key);
        return -1;
    }
    *out = json_is_true(v);
    return 1;
}

int field_int(struct req *r, json_t *o, const char *key, int64_t min, int64_t max, int64_t *out)
{
    json_t *v = present(o, key);
    if (!v) return 0;
    if (!json_is_integer(v)) {
        reply_problem(r, LD_E_BAD_REQUEST, "%s: expected an integer", key);
        return -1;
    }
    json_int_t x = json_integer_value(v);
    if (x < min || x > max) {
        reply_problem(r, LD_E_BAD_REQUEST, "%s: must be from %lld to %lld", key, (long long)min,
                      (long long)max);
        return -1;
    }
    *out = x;
    return 1;
}

static const char *const reserved_tag_prefixes[] = {
    "__internal:", "app:", "app_channel:", "slack:app:", "ag_ui:app:"};

int field_tags(struct req *r, json_t *o, const char *key, const char **out)
{
    json_t *v = present(o, key);
    if (!v) return 0;
    if (!json_is_array(v)) {
        reply_problem(r, LD_E_BAD_REQUEST, "%s: expected an array of strings", key);
        return -1;
    }
    if ((long)json_array_size(v) > r->cfg->max_tags) {
        reply_problem(r, LD_E_LIMIT, "%s: more than %ld tags", key, r->cfg->max_tags);
        return -1;
    }
    size_t i;
    json_t *t;
    json_array_foreach(v, i, t)
    {
        if (!json_is_string(t)) {
            reply_problem(r, LD_E_BAD_REQUEST, "%s[%zu]: expected a string", key, i);
            return -1;
        }
        const char *s = json_string_value(t);
        size_t n = json_string_length(t);
        if (n == 0 || (long)utf8_chars(s, n) > r->cfg->max_tag_len || memchr(s, 0, n)) {
            reply_problem(r, LD_E_LIMIT, "%s[%zu]: a tag must be 1 to %ld characters, without NUL",
                          key, i, r->cfg->max_tag_len);
            return -1;
        }
        for (size_t k = 0; k < sizeof(reserved_tag_prefixes) / sizeof(*reserved_tag_prefixes); k++)
            if (strncmp(s, reserved_tag_prefixes[k], strlen(reserved_tag_prefixes[k])) == 0) {
                reply_problem(r, LD_E_BAD_REQUEST, "%s[%zu]: the prefix '%s' is reserved", key, i,
                              reserved_tag_prefixes[k]);
                return -1;
            }
    }
    /* stored as JSON text, written here (json_dumps was a sixth of a POST's
     * validation) */
    struct buf b;
    buf_init(&b, 2 + json_array_size(v) * (3 + 6 * (size_t)r->cfg->max_tag_len * 4));
    struct jw w;
    jw_init(&w, &b);
    jw_arr(&w);
    json_array_foreach(v, i, t) jw_str(&w, json_string_value(t));
    jw_end(&w);
    *out = arena_strndup(&r->arena, b.data, b.len);
    buf_free(&b);
    return 1;
}

int field_id(struct req *r, json_t *o, const char *key, const char *prefix, const char *what,
             const char **out)
{
    const char *s = NULL;
    int rc = field_str(r, o, key, 128, &s);
    if (rc <= 0) return rc;
    char why[160];
    if (id_check(prefix, s, why, sizeof(why))) {
        reply_problem(r, LD_E_BAD_REQUEST, "Invalid %s ID: %s", what, why);
        return -1;
    }
    *out = s;
    return 1;
}

int slug_valid(const char *s)
{
    size_t n = strlen(s);
    if (n == 0 || n > LD_MAX_NAME) return 0;
    int prev_dash = 1;
    for (const char *p = s; *p; p++) {
        if (*p == '-') {
            if (prev_dash) return 0;
            prev_dash = 1;
        } else if ((*p >= 'a' && *p <= 'z') || (*p >= '0' && *p <= '9')) {
            prev_dash = 0;
        } else {
            return 0;
        }
    }
    return !prev_dash;
}

int field_slug(struct req *r, json_t *o, const char *key, const char **out)
{
    const char *s = NULL;
    int rc = field_str(r, o, key, 1024, &s);
    if (rc <= 0) return rc;
    if (!slug_valid(s)) {
        reply_problem(r, LD_E_BAD_REQUEST,
                      "%s: must be 1-64 lowercase letters, digits and single dashes "
                      "(^[a-z0-9]+(-[a-z0-9]+)*$)",
                      key);
        return -1;
    }
    *out = s;
    return 1;
}

/* BCP 47 subset: language (2-3 letters), optional script (4 letters),
 * optional region (2 letters or 3 digits).  "_" is read as "-"; output is
 * canonical case (en-US, zh-Hant-TW). */
int locale_normalize(const char *in, char *out, size_t n)
{
    while (isspace((unsigned char)*in))
        in++;
    size_t len = strlen(in);
    while (len && isspace((unsigned char)in[len - 1]))
        len--;
    if (len == 0 || len > LD_MAX_LOCALE || len + 1 > n) return -1;
    char tmp[LD_MAX_LOCALE + 1];
    memcpy(tmp, in, len);
    tmp[len] = 0;
    /* no empty subtags: no leading, trailing or doubled separator */
    for (size_t i = 0; i < len; i++) {
        int sep = tmp[i] == '-' || tmp[i] == '_';
        if (sep && (i == 0 || i + 1 == len || tmp[i + 1] == '-' || tmp[i + 1] == '_')) return -1;
    }
    char *parts[4];
    int np = 0;
    for (char *p = tmp, *save = NULL; np < 4; p = NULL) {
        char *t = strtok_r(p, "-_", &save);
        if (!t) break;
        parts[np++] = t;
    }
    if (np == 0 || np > 3) return -1;
    size_t o = 0;
    size_t l0 = strlen(parts[0]);
    if (l0 < 2 || l0 > 3) return -1;
    for (size_t i = 0; i < l0; i++) {
        if (!isalpha((unsigned char)parts[0][i])) return -1;
        out[o++] = (char)tolower((unsigned char)parts[0][i]);
    }
    int have_script = 0, have_region = 0;
    for (int k = 1; k < np; k++) {
        size_t l = strlen(parts[k]);
        out[o++] = '-';
        if (l == 4 && !have_script && !have_region) {
            for (size_t i = 0; i < 4; i++) {
                if (!isalpha((unsigned char)parts[k][i])) return -1;
                out[o++] = (char)(i ? tolower((unsigned char)parts[k][i])
                                    : toupper((unsigned char)parts[k][i]));
            }
            have_script = 1;
        } else if ((l == 2 || l == 3) && !have_region) {
            for (size_t i = 0; i < l; i++) {
                unsigned char c = (unsigned char)parts[k][i];
                if (l == 2 ? !isalpha(c) : !isdigit(c)) return -1;
                out[o++] = (char)toupper(c);
            }
            have_region = 1;
        } else {
            return -1;
        }
    }
    out[o] = 0;
    return 0;
}

int field_locale(struct req *r, json_t *o, const char *key, const char **out)
{
    const char *s = NULL;
    int rc = field_str(r, o, key, 1024, &s);
    if (rc <= 0) return rc;
    char norm[LD_MAX_LOCALE + 1];
    if (locale_normalize(s, norm, sizeof(norm))) {
        reply_problem(r, LD_E_BAD_REQUEST,
                      "%s: not a supported locale (a BCP 47 tag such as en-US, at most %d bytes)",
                      key, LD_MAX_LOCALE);
        return -1;
    }
    *out = arena_strdup(&r->arena, norm);
    return 1;
}

static void put_member(struct jw *w, const char *key, json_t *v)
{
    char *dump = json_dumps(v, JSON_COMPACT | JSON_ENCODE_ANY);
    jw_kraw(w, key, dump);
    free(dump);
}

static int check_capabilities(struct req *r, json_t *v, const char *key)
{
    if (!json_is_array(v)) {
        reply_problem(r, LD_E_BAD_REQUEST, "%s: expected an array of {ref, config}", key);
        return -1;
    }
    if (json_array_size(v) > LD_MAX_CAPABILITIES) {
        reply_problem(r, LD_E_LIMIT, "%s: more than %d capabilities", key, LD_MAX_CAPABILITIES);
        return -1;
    }
    size_t i;
    json_t *c;
    json_array_foreach(v, i, c)
    {
        json_t *ref = json_is_object(c) ? json_object_get(c, "ref") : NULL;
        if (!json_is_string(ref)) {
            reply_problem(r, LD_E_BAD_REQUEST, "%s[%zu].ref: expected a string", key, i);
            return -1;
        }
        if (!capability_known(json_string_value(ref))) {
            reply_problem(r, LD_E_BAD_REQUEST, "%s[%zu].ref: unknown capability '%.64s'", key, i,
                          json_string_value(ref));
            return -1;
        }
    }
    return 0;
}

/* Keeps client_side tools (the only kind sessions and agents accept) and
 * checks their limits; returns a new array, or NULL after a 400. */
static json_t *check_tools(struct req *r, json_t *v, const char *key)
{
    if (!json_is_array(v)) {
        reply_problem(r, LD_E_BAD_REQUEST, "%s: expected an array of tool definitions", key);
        return NULL;
    }
    json_t *out = json_array();
    size_t i;
    json_t *t;
    json_array_foreach(v, i, t)
    {
        if (!json_is_object(t)) {
            reply_problem(r, LD_E_BAD_REQUEST, "%s[%zu]: expected an object", key, i);
            goto fail;
        }
        const char *type = json_string_value(json_object_get(t, "type"));
        if (type && strcmp(type, "client_side") != 0) continue; /* dropped, as upstream */
        json_t *name = json_object_get(t, "name");
        if (!json_is_string(name) || json_string_length(name) == 0 ||
            json_string_length(name) > LD_MAX_TOOL_NAME) {
            reply_problem(r, LD_E_BAD_REQUEST, "%s[%zu].name: expected a string of 1-%d bytes", key,
                          i, LD_MAX_TOOL_NAME);
            goto fail;
        }
        json_t *desc = json_object_get(t, "description");
        if (desc && !json_is_null(desc) &&
            (!json_is_string(desc) || json_string_length(desc) > LD_MAX_TOOL_DESCRIPTION)) {
            reply_problem(r, LD_E_LIMIT,
                          "%s[%zu].description: expected a string of at most %d bytes", key, i,
                          LD_MAX_TOOL_DESCRIPTION);
            goto fail;
        }
        json_t *params = json_object_get(t, "parameters");
        if (params && !json_is_null(params)) {
            char *d = json_dumps(params, JSON_COMPACT | JSON_ENCODE_ANY);
            size_t n = d ? strlen(d) : 0;
            free(d);
            if (!json_is_object(params) || n > LD_MAX_TOOL_PARAMS) {
                reply_problem(r, LD_E_LIMIT,
                              "%s[%zu].parameters: expected a JSON Schema object of at most %u "
                              "bytes",
                              key, i, LD_MAX_TOOL_PARAMS);
                goto fail;
            }
        }
        json_t *copy = json_deep_copy(t);
        json_object_set_new(copy, "type", json_string("client_side"));
        json_array_append_new(out, copy);
    }
    if (json_array_size(out) > LD_MAX_TOOLS) {
        reply_problem(r, LD_E_LIMIT, "%s: more than %d tools", key, LD_MAX_TOOLS);
        goto fail;
    }
    return out;
fail:
    json_decref(out);
    return NULL;
}

static int b64_decoded_len(const char *s, size_t n, size_t *out)
{
    size_t k = 0, pad = 0;
    for (size_t i = 0; i < n; i++) {
        char c = s[i];
        if (isalnum((unsigned char)c) || c == '+' || c == '/') {
            if (pad) return -1;
            k++;
        } else if (c == '=') {
            pad++;
        } else if (c == '\n' || c == '\r') {
            continue;
        } else {
            return -1;
        }
    }
    if (pad > 2 || (k + pad) % 4 == 1) return -1;
    *out = k * 3 / 4;
    return 0;
}

static int check_files(struct req *r, json_t *v, const char *key)
{
    if (!json_is_array(v)) {
        reply_problem(r, LD_E_BAD_REQUEST, "%s: expected an array of {path, content}", key);
        return -1;
    }
    if (json_array_size(v) > LD_MAX_INITIAL_FILES) {
        reply_problem(r, LD_E_LIMIT, "%s: more than %d files", key, LD_MAX_INITIAL_FILES);
        return -1;
    }
    size_t total = 0, i;
    json_t *f;
    json_array_foreach(v, i, f)
    {
        json_t *path = json_is_object(f) ? json_object_get(f, "path") : NULL;
        json_t *content = json_is_object(f) ? json_object_get(f, "content") : NULL;
        if (!json_is_string(path) || !json_is_string(content)) {
            reply_problem(r, LD_E_BAD_REQUEST, "%s[%zu]: path and content must be strings", key, i);
            return -1;
        }
        const char *p = json_string_value(path);
        size_t pl = json_string_length(path);
        if (pl == 0 || pl > 1024 || memchr(p, 0, pl) || strstr(p, "..") || strstr(p, "//") ||
            strcmp(p, "/workspace") == 0 || strcmp(p, "/workspace/") == 0) {
            reply_problem(r, LD_E_BAD_REQUEST,
                          "%s[%zu].path: must be a file path without '..', '//' or NUL", key, i);
            return -1;
        }
        for (size_t k = 0; k < i; k++)
            if (json_equal(json_object_get(json_array_get(v, k), "path"), path)) {
                reply_problem(r, LD_E_BAD_REQUEST, "%s[%zu].path: duplicate path", key, i);
                return -1;
            }
        const char *enc = json_string_value(json_object_get(f, "encoding"));
        json_t *ro = json_object_get(f, "is_readonly");
        if (ro && !json_is_null(ro) && !json_is_boolean(ro)) {
            reply_problem(r, LD_E_BAD_REQUEST, "%s[%zu].is_readonly: expected true or false", key,
                          i);
            return -1;
        }
        size_t n = json_string_length(content);
        if (enc && strcmp(enc, "base64") == 0) {
            if (b64_decoded_len(json_string_value(content), n, &n)) {
                reply_problem(r, LD_E_BAD_REQUEST, "%s[%zu].content: invalid base64", key, i);
                return -1;
            }
        } else if (enc && strcmp(enc, "text") != 0) {
            reply_problem(r, LD_E_BAD_REQUEST, "%s[%zu].encoding: must be text or base64", key, i);
            return -1;
        }
        total += n;
    }
    if (total > LD_MAX_INITIAL_FILES_BYTES) {
        reply_problem(r, LD_E_LIMIT, "%s: more than %u bytes in all", key,
                      LD_MAX_INITIAL_FILES_BYTES);
        return -1;
    }
    return 0;
}

static int check_network(struct req *r, json_t *v, const char *key)
{
    if (!json_is_object(v)) {
        reply_problem(r, LD_E_BAD_REQUEST, "%s: expected {allowed: [...], blocked: [...]}", key);
        return -1;
    }
    const char *lists[] = {"allowed", "blocked"};
    for (int k = 0; k < 2; k++) {
        json_t *a = json_object_get(v, lists[k]);
        if (!a || json_is_null(a)) continue;
        if (!json_is_array(a) || json_array_size(a) > 1000) {
            reply_problem(r, LD_E_BAD_REQUEST, "%s.%s: expected an array of patterns", key,
                          lists[k]);
            return -1;
        }
        size_t i;
        json_t *p;
        json_array_foreach(a, i, p) if (!json_is_string(p) || json_string_length(p) > 2048)
        {
            reply_problem(r, LD_E_BAD_REQUEST, "%s.%s[%zu]: expected a string", key, lists[k], i);
            return -1;
        }
    }
    return 0;
}

int fields_config(struct req *r, json_t *o, int with_hints, struct jw *x, const char **caps_json)
{
    json_t *v;
    *caps_json = NULL;
    if ((v = present(o, "capabilities"))) {
        if (check_capabilities(r, v, "capabilities")) return -1;
        if (json_array_size(v)) {
            char *d = json_dumps(v, JSON_COMPACT);
            *caps_json = arena_strdup(&r->arena, d);
            free(d);
            jw_kraw(x, "capabilities", *caps_json);
        }
    }
    if ((v = present(o, "tools"))) {
        json_t *tools = check_tools(r, v, "tools");
        if (!tools) return -1;
        if (json_array_size(tools)) put_member(x, "tools", tools);
        json_decref(tools);
    }
    const char *mk = present(o, "mcpServers") ? "mcpServers" : "mcp_servers";
    if ((v = present(o, mk))) {
        if (!json_is_object(v)) {
            reply_problem(r, LD_E_BAD_REQUEST, "%s: expected an object of server configs", mk);
            return -1;
        }
        void *it;
        const char *name;
        json_t *cfg;
        json_object_foreach_safe(v, it, name, cfg) if (!json_is_object(cfg))
        {
            reply_problem(r, LD_E_BAD_REQUEST, "%s.%.64s: expected an object", mk, name);
            return -1;
        }
        if (json_object_size(v)) put_member(x, "mcpServers", v);
    }
    const char *sp = NULL;
    if (field_str(r, o, "system_prompt", LD_MAX_SYSTEM_PROMPT, &sp) < 0) return -1;
    if (sp) jw_kstr(x, "system_prompt", sp);
    if ((v = present(o, "initial_files"))) {
        if (check_files(r, v, "initial_files")) return -1;
        if (json_array_size(v)) put_member(x, "initial_files", v);
    }
    if (with_hints && (v = present(o, "hints"))) {
        if (!json_is_object(v)) {
            reply_problem(r, LD_E_BAD_REQUEST, "hints: expected an object");
            return -1;
        }
        put_member(x, "hints", v);
    }
    if ((v = present(o, "network_access"))) {
        if (check_network(r, v, "network_access")) return -1;
        put_member(x, "network_access", v);
    }
    int64_t mi;
    int rc = field_int(r, o, "max_iterations", 0, 10000, &mi);
    if (rc < 0) return -1;
    if (rc) jw_ki64(x, "max_iterations", mi);
    int ptc;
    rc = field_bool(r, o, "parallel_tool_calls", &ptc);
    if (rc < 0) return -1;
    if (rc) jw_kbool(x, "parallel_tool_calls", ptc);
    return 0;
}

int session_from_path(struct req *r, struct session_rec *s)
{
    if (path_id(r, 0, "session", "session")) return -1;
    return session_load(r, r->params[0], s);
}

int session_load(struct req *r, const char *id, struct session_rec *s)
{
    enum ld_err e = store_session_get(r->st, r->who.org_id, id, r->who.user_id, &r->arena, s);
    if (e != LD_OK) {
        reply_problem(r, e, e == LD_E_NOT_FOUND ? "Session not found" : "Storage error");
        return -1;
    }
    return 0;
}

int path_id(struct req *r, int i, const char *prefix, const char *what)
{
    char why[160];
    if (id_check(prefix, r->params[i], why, sizeof(why))) {
        reply_problem(r, LD_E_BAD_REQUEST, "Invalid %s ID: %s", what, why);
        return -1;
    }
    return 0;
}

static int parse_long(const char *s, long *out)
{
    if (!s || !*s) return -1;
    char *end;
    long v = strtol(s, &end, 10);
    if (*end) return -1;
    *out = v;
    return 0;
}

int page_params(struct req *r, long *offset, long *limit)
{
    const char *o = req_query(r, "offset"), *l = req_query(r, "limit");
    *offset = 0;
    *limit = LD_PAGE_DEFAULT;
    if (o && (parse_long(o, offset) || *offset < 0 || *offset > 1000000000L)) {
        reply_problem(r, LD_E_BAD_REQUEST, "offset: must be a whole number from 0 to 1000000000");
        return -1;
    }
    if (l && (parse_long(l, limit) || *limit < 1)) {
        reply_problem(r, LD_E_BAD_REQUEST, "limit: must be a whole number from 1 to %d",
                      LD_PAGE_MAX);
        return -1;
    }
    if (*limit > LD_PAGE_MAX) *limit = LD_PAGE_MAX; /* clamped, as upstream */
    return 0;
}

static void link_with_offset(struct req *r, struct jw *w, const char *key, long offset, long limit)
{
    /* rebuild the URL with offset/limit replaced, other parameters kept */
    const char *url = req_url(r);
    struct buf b;
    buf_init(&b, 16384);
    const char *q = strchr(url, '?');
    buf_add(&b, url, q ? (size_t)(q - url) : strlen(url));
    int n = 0;
    if (q) {
        const char *p = q + 1;
        while (*p) {
            const char *amp = strchr(p, '&');
            size_t len = amp ? (size_t)(amp - p) : strlen(p);
            if (!(len >= 7 && strncmp(p, "offset=", 7) == 0) &&
                !(len >= 6 && strncmp(p, "limit=", 6) == 0)) {
                buf_putc(&b, n++ ? '&' : '?');
                buf_add(&b, p, len);
            }
            p += len + (amp ? 1 : 0);
        }
    }
    buf_printf(&b, "%coffset=%ld&limit=%ld", n ? '&' : '?', offset, limit);
    jw_kstr(w, key, b.data);
    buf_free(&b);
}

void page_links(struct req *r, struct jw *w, long offset, long limit, int64_t total)
{
    if (offset + limit < total) link_with_offset(r, w, "next_url", offset + limit, limit);
    if (offset > 0) link_with_offset(r, w, "prev_url", offset > limit ? offset - limit : 0, limit);
}

void list_begin(struct list_page *p, struct req *r, long limit, const char *alias,
                list_again_fn again)
{
    memset(p, 0, sizeof(*p));
    p->r = r;
    p->alias = alias;
    p->again = again;
    p->ids = arena_alloc(&r->arena, sizeof(*p->ids) * (size_t)(limit > 0 ? limit : 1));
    buf_init(&p->b, LD_MAX_RESPONSE);
    buf_reserve(&p->b, (size_t)limit * 2 * 2560 + 1024); /* a session renders to ~2.2 KB */
    jw_init(&p->w, &p->b);
    jw_obj(&p->w);
    jw_key(&p->w, "data");
    p->start = p->b.len;
    jw_arr(&p->w);
}

int list_full(struct list_page *p)
{
    if (p->b.len > LD_LIST_BUFFERED) p->over = 1;
    return p->over;
}

struct jw *list_item(struct list_page *p, const char *id)
{
    size_t len = strnlen(id, ID_MAX - 1); /* IDs from the store: always shorter */
    memcpy(p->ids[p->n], id, len);
    p->ids[p->n++][len] = 0;
    return list_full(p) ? NULL : &p->w;
}

/* total, offset, limit and the links, into the page object open in w */
static void page_tail(struct req *r, struct jw *w, int64_t total, long offset, long limit)
{
    jw_ki64(w, "total", total);
    jw_ki64(w, "offset", offset);
    jw_ki64(w, "limit", limit);
    page_links(r, w, offset, limit, total);
}

struct list_stream {
    struct req *r;
    const char *alias;
    list_again_fn again;
    char (*ids)[ID_MAX];
    int n, i, k, pass;
    char *tail; /* ,"total":…} */
};

static int list_more(void *ud, struct buf *out)
{
    struct list_stream *x = ud;
    if (x->pass == 0) {
        buf_puts(out, "{\"data\":[");
        x->pass = 1;
    }
    while (out->len < LD_STREAM_PIECE_TARGET) {
        if (x->i == x->n) {
            if (x->pass == 2) {
                buf_putc(out, ']');
                buf_puts(out, x->tail);
                return 0;
            }
            buf_printf(out, "],\"%s\":[", x->alias);
            x->pass = 2;
            x->i = x->k = 0;
            continue;
        }
        size_t at = out->len;
        if (x->k) buf_putc(out, ',');
        struct arena a;
        arena_init(&a);
        struct jw w;
        jw_init(&w, out);
        int rc = x->again(x->r, &w, x->ids[x->i++], &a);
        arena_free(&a);
        if (rc < 0) return -1;
        if (rc > 0) { /* gone since the page was read */
            out->len = at;
            if (out->data) out->data[at] = 0;
        } else {
            x->k++;
        }
    }
    return 1;
}

static void list_release(void *ud)
{
    struct list_stream *x = ud;
    free(x->tail);
    free(x);
}

void list_end(struct list_page *p, int64_t total, long offset, long limit)
{
    struct req *r = p->r;
    if (!list_full(p)) {
        struct jw *w = &p->w;
        jw_end(w);
        /* `data` per the spec; the alias is what the TS SDK reads: the same
         * array twice, rendered once and copied */
        size_t alen = p->b.len - p->start;
        jw_key(w, p->alias);
        jw_raw(w, "");
        if (buf_reserve(&p->b, alen) == 0) { /* room first: the copy reads from b itself */
            memcpy(p->b.data + p->b.len, p->b.data + p->start, alen);
            p->b.len += alen;
            p->b.data[p->b.len] = 0;
        }
        page_tail(r, w, total, offset, limit);
        jw_end(w);
        if (p->keep) replycache_keep(p->keep, r, p->keep_key, &p->b, NULL);
        reply_json(r, 200, &p->b);
        return;
    }
    buf_free(&p->b);
    struct buf t;
    buf_init(&t, 64 * 1024);
    struct jw w;
    jw_init(&w, &t);
    jw_obj(&w);
    page_tail(r, &w, total, offset, limit);
    jw_end(&w);
    struct list_stream *x = xcalloc(1, sizeof(*x));
    x->r = r;
    x->alias = p->alias;
    x->again = p->again;
    x->ids = p->ids;
    x->n = p->n;
    x->tail = xstrdup(t.data ? t.data : "{}");
    x->tail[0] = ','; /* the object's members go on after the arrays */
    buf_free(&t);
    reply_stream(r, 200, "application/json", list_more, list_release, x);
}

int idem_check(struct req *r, struct idem_rec **idem)
{
    *idem = NULL;
    const char *key = req_header(r, "Idempotency-Key");
    if (!key) return 0;
    size_t n = strlen(key);
    if (n == 0 || n > LD_MAX_IDEMPOTENCY_KEY) {
        reply_problem(r, LD_E_BAD_REQUEST, "Idempotency-Key: must be 1 to %d characters",
                      LD_MAX_IDEMPOTENCY_KEY);
        return -1;
    }
    struct sha256 h;
    unsigned char d[32];
    char fp[65];
    static const char hex[] = "0123456789abcdef";
    sha256_init(&h);
    sha256_update(&h, r->path, strlen(r->path));
    sha256_update(&h, "\n", 1);
    sha256_update(&h, r->body.data ? r->body.data : "", r->body.len);
    sha256_final(&h, d);
    for (int i = 0; i < 32; i++) {
        fp[2 * i] = hex[d[i] >> 4];
        fp[2 * i + 1] = hex[d[i] & 15];
    }
    fp[64] = 0;
    struct idem_rec *rec = arena_alloc(&r->arena, sizeof(*rec));
    rec->org_id = r->who.org_id;
    rec->key = arena_strdup(&r->arena, key);
    rec->fingerprint = arena_strdup(&r->arena, fp);
    rec->created_at = time_now_us();
    struct idem_rec old;
    enum ld_err e = store_idem_get(r->st, r->who.org_id, key, &r->arena, &old);
    if (e == LD_OK) {
        if (strcmp(old.fingerprint, fp) != 0) {
            reply_problem(r, LD_E_UNPROCESSABLE,
                          "Idempotency-Key '%.64s' was already used with a different request", key);
            return 1;
        }
        struct buf b;
        buf_init(&b, strlen(old.body) + 1);
        buf_puts(&b, old.body);
        struct reply_header rh = {"Idempotent-Replayed", "true"};
        reply_json_h(r, old.status, &b, &rh, 1);
        return 1;
    }
    if (e != LD_E_NOT_FOUND) {
        reply_problem(r, e, "Storage error");
        return 1;
    }
    *idem = rec;
    return 0;
}

void idem_replay_after_conflict(struct req *r, struct idem_rec *idem)
{
    struct idem_rec *ignored;
    (void)idem;
    if (idem_check(r, &ignored) == 0)
        reply_problem(r, LD_E_CONFLICT, "Idempotency-Key conflict; retry the request");
}

void reply_op_error(struct req *r, struct store_op *op)
{
    if (op->err == LD_E_UNAVAILABLE) {
        reply_problem(r, op->err, "The server is busy; retry shortly");
        return;
    }
    reply_problem(r, op->err, "%s", op->detail[0] ? op->detail : ld_err_title(op->err));
}

struct store_op *op_new(struct req *r, enum store_op_kind kind, void (*done)(struct store_op *))
{
    struct store_op *op = arena_alloc(&r->arena, sizeof(*op));
    op->kind = kind;
    op->arena = &r->arena;
    op->done = done;
    op->ud = r;
    return op;
}

void op_submit(struct req *r, struct store_op *op)
{
    enum ld_err e = store_submit(r->st, op);
    if (e != LD_OK) {
        reply_problem(r, e, "The server is busy or shutting down; retry shortly");
        return;
    }
    req_suspend(r);
}
