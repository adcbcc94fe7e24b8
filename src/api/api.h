/*
 * api.h — shared by the resource files of api/: body parsing with jansson,
 * typed field readers that answer 400 naming the field, rendering helpers,
 * idempotency, and the handlers the route table points to.
 *
 * Field readers return 0 when the field is absent or null (out untouched),
 * 1 when present and valid, and -1 after answering a 400 for a wrong type or
 * value — the handler then just returns.
 */
#ifndef LOOPD_API_H
#define LOOPD_API_H
#include "http/http.h"
#include "store/store.h"
#include <jansson.h>

/* Parses the body as a JSON object.  An empty body is {} when allow_empty
 * (and JSON `null` too).  NULL after answering 400.  The caller owns the
 * result (json_decref). */
json_t *body_object(struct req *r, int allow_empty);

int field_str(struct req *r, json_t *o, const char *key, size_t maxlen, const char **out);
/* like field_str, but the limit counts characters (UTF-8 code points) */
int field_text(struct req *r, json_t *o, const char *key, size_t maxchars, const char **out);
int field_bool(struct req *r, json_t *o, const char *key, int *out);
int field_int(struct req *r, json_t *o, const char *key, int64_t min, int64_t max, int64_t *out);
/* tags: array of strings, checked against the limits and reserved prefixes;
 * out is canonical JSON text */
int field_tags(struct req *r, json_t *o, const char *key, const char **out);
/* an ID of the given prefix: 400 "Invalid <what> ID: <why>" */
int field_id(struct req *r, json_t *o, const char *key, const char *prefix, const char *what,
             const char **out);
int field_slug(struct req *r, json_t *o, const char *key, const char **out);
int field_locale(struct req *r, json_t *o, const char *key, const char **out);
/* Validates the create-time config fields shared by sessions and agents
 * (capabilities, tools, mcpServers/mcp_servers, system_prompt,
 * initial_files, network_access, max_iterations, parallel_tool_calls, and
 * for sessions hints) and writes them as members of `extra`.  -1 after a
 * 400.  caps_json gets the capabilities array text (or NULL). */
int fields_config(struct req *r, json_t *o, int with_hints, struct jw *extra,
                  const char **caps_json);

int locale_normalize(const char *in, char *out, size_t n);
int slug_valid(const char *s);

/* A path parameter that must be an ID; answers 400 "Invalid <what> ID: …". */
int path_id(struct req *r, int i, const char *prefix, const char *what);

/* The session named by the path (org-scoped): 400 malformed, 404 unknown. */
int session_from_path(struct req *r, struct session_rec *s);
/* the caller's session `id` (already validated) into s; else answers 404
 * or a storage problem and returns -1 */
int session_load(struct req *r, const char *id, struct session_rec *s);

/* Pagination query: offset (>=0) and limit (1..100, larger clamped). */
int page_params(struct req *r, long *offset, long *limit);
void page_links(struct req *r, struct jw *w, long offset, long limit, int64_t total);

/*
 * A list page ({data, <alias>, total, offset, limit, next_url, prev_url}).
 * Items are rendered as the store reads them (list_item gives the writer,
 * or NULL once the page is past LD_LIST_BUFFERED bytes: then only the id
 * is kept).  list_end answers the page buffered, or, when it is past that,
 * streams it (reply_stream), reading each item again by id with `again`
 * (0 rendered, 1 gone since: left out, -1 storage error).  A page is at
 * most 100 items but an item may be a megabyte (system prompts): built at
 * once, such a page was a 500 or, past the request arena, a crash.
 */
typedef int (*list_again_fn)(struct req *r, struct jw *w, const char *id, struct arena *a);
/* replycache.c: answers kept while nothing has been written to the store */
#define RC_KEY_MAX 512
struct rc_entry {
    char key[RC_KEY_MAX], org_id[ID_MAX];
    char user_id[sizeof(((struct principal *)0)->user_id)];
    char etag[32];        /* "" for none; as etag_of writes it */
    uint64_t gen;         /* store_write_generation when kept */
    struct rc_body *body; /* shared with the answers being sent from it */
};
struct replycache {
    int nslots;            /* a power of two */
    size_t max_body;       /* longer answers are not kept */
    struct rc_entry *e;    /* allocated at first use */
    uint64_t hits, misses; /* lookups answered from a copy, and not */
};
/* the entry for key of r's user and org, if nothing was written since */
const struct rc_entry *replycache_find(struct replycache *c, struct req *r, const char *key);
/* keeps the answer b (and its ETag, or NULL) for key; call before the
 * handler returns */
void replycache_keep(struct replycache *c, struct req *r, const char *key, const struct buf *b,
                     const char *etag);
/* answers 200 with the entry's body and ETag */
void replycache_reply(struct req *r, const struct rc_entry *e);
void replycache_free(struct replycache *c);

struct list_page {
    struct req *r;
    struct buf b;
    struct jw w;
    size_t start; /* the data array's first byte in b */
    int over;     /* streamed */
    int n;
    char (*ids)[ID_MAX];
    const char *alias;
    list_again_fn again;
    struct replycache *keep; /* if set, a page answered whole is kept there */
    const char *keep_key;
};
void list_begin(struct list_page *p, struct req *r, long limit, const char *alias,
                list_again_fn again);
struct jw *list_item(struct list_page *p, const char *id);
/* past LD_LIST_BUFFERED: the page will be streamed (then the store need
 * read only the ids of the rows left) */
int list_full(struct list_page *p);
void list_end(struct list_page *p, int64_t total, long offset, long limit);

/* Idempotency: returns 1 if answered (replay or 422), 0 to proceed (then
 * *idem is set when a key was given), -1 after a 400. */
int idem_check(struct req *r, struct idem_rec **idem);
/* After a create's op fails with idem_conflict: replay what won. */
void idem_replay_after_conflict(struct req *r, struct idem_rec *idem);

/* rendering */
void render_session(struct req *r, struct jw *w, const struct session_rec *s);
/* <base URL>/v1/sessions/<id> into out; its length, 0 (out "") if it does not fit */
size_t session_url(struct req *r, const char *id, char *out, size_t size);
void render_agent(struct req *r, struct jw *w, const struct agent_rec *a, int with_counts);
void render_harness(struct req *r, struct jw *w, const struct harness_rec *h);
/* answers with the op's error as a problem */
void reply_op_error(struct req *r, struct store_op *op);
struct store_op *op_new(struct req *r, enum store_op_kind kind, void (*done)(struct store_op *));
/* submits the op and suspends the request; answers 503 if the queue is full */
void op_submit(struct req *r, struct store_op *op);

/* handlers */
void h_healthz(struct req *r);
void h_readyz(struct req *r);
void h_metrics(struct req *r);
void h_openapi(struct req *r);
void h_console(struct req *r);
void h_models_list(struct req *r);
void h_sessions_create(struct req *r);
void h_sessions_list(struct req *r);
void h_sessions_stats(struct req *r);
void h_sessions_chat(struct req *r);
void h_session_get(struct req *r);
/* frees what GET /v1/sessions and /v1/sessions/{id} kept; at shutdown */
void sessions_cache_free(void);
/* their hits and misses, as Prometheus text (/metrics) */
void sessions_cache_metrics(struct buf *o);
void h_session_patch(struct req *r);
void h_session_delete(struct req *r);
void h_session_pin(struct req *r);
void h_session_unpin(struct req *r);
void h_agents_create(struct req *r);
void h_agents_list(struct req *r);
void h_agent_get(struct req *r);
void h_agent_patch(struct req *r);
void h_agent_put(struct req *r);
void h_agent_delete(struct req *r);
void h_harnesses_list(struct req *r);
void h_harness_get(struct req *r);
void h_session_cancel(struct req *r);

void h_messages_post(struct req *r);
void h_messages_list(struct req *r);
void h_events_list(struct req *r);
void h_sse(struct req *r);
void h_tool_results(struct req *r);
/* shutdown: every SSE stream ends (returns how many were open) */
long sse_close_all(void);
long sse_open_streams(void);

/* event filters: types / exclude (repeated keys), shared by /events and /sse */
struct event_filter {
    const char *types[26], *exclude[26];
    int ntypes, nexclude;
};
int event_type_known(const char *t);
int event_filter_parse(struct req *r, struct event_filter *f);
int event_filter_match(const struct event_filter *f, const char *type);
/* since_id (and, for SSE, Last-Event-ID) -> the sequence after which to read */
int event_cursor(struct req *r, const char *session_id, int sse, int64_t *after);

/* auth: fills r->who; answers 401/404 and returns -1 on failure */
int auth_resolve(struct req *r);

#endif
