/*
 * replycache.c — answers kept while nothing has been written.
 *
 * A GET of a session, or of a page of the session list, asked for again by
 * the same user of the same org with nothing committed to the store since
 * (store_write_generation changes before anyone hears of a commit) is
 * answered from a copy of the first answer: no SQL, no rendering.  Pollers
 * ask exactly that: the console refreshes its list every two seconds,
 * clients wait for a session's status to change.  Any commit at all voids
 * every entry, so no write can be missed, at the price of few hits under
 * steady writes (then each lookup costs a few comparisons).
 *
 * Entries are direct-mapped by key (FNV-1a); a newer answer takes the slot.
 * `--reply-cache off` turns it off.  Everything runs on the loop thread.  A handler keeps its
 * answer before it returns, so the generation it read the store under is the current one.
 */
#include "api/api.h"
#include "limits.h"
#include <stdlib.h>
#include <string.h>

static struct rc_entry *slot_of(struct replycache *c, const char *key)
{
    uint32_t h = 2166136261u;
    for (const char *p = key; *p; p++)
        h = (h ^ (unsigned char)*p) * 16777619u;
    if (!c->e) c->e = xcalloc((size_t)c->nslots, sizeof(*c->e));
    return &c->e[h & (uint32_t)(c->nslots - 1)];
}

const struct rc_entry *replycache_find(struct replycache *c, struct req *r, const char *key)
{
    if (r->cfg->reply_cache_off) return NULL;
    struct rc_entry *e = slot_of(c, key);
    if (!e->body || e->gen != store_write_generation(r->st) || strcmp(e->key, key) != 0 ||
        strcmp(e->org_id, r->who.org_id) != 0 || strcmp(e->user_id, r->who.user_id) != 0) {
        c->misses++;
        return NULL;
    }
    c->hits++;
    return e;
}

void replycache_keep(struct replycache *c, struct req *r, const char *key, const struct buf *b,
                     const char *etag)
{
    if (r->cfg->reply_cache_off || b->overflow || b->len > c->max_body || strlen(key) >= RC_KEY_MAX)
        return;
    struct rc_entry *e = slot_of(c, key);
    char *copy = realloc(e->body, b->len ? b->len : 1);
    if (!copy) return;
    memcpy(copy, b->data, b->len);
    e->body = copy;
    e->len = b->len;
    e->gen = store_write_generation(r->st);
    str_copy(e->key, sizeof(e->key), key);
    str_copy(e->org_id, sizeof(e->org_id), r->who.org_id);
    str_copy(e->user_id, sizeof(e->user_id), r->who.user_id);
    str_copy(e->etag, sizeof(e->etag), etag ? etag : "");
}

void replycache_reply(struct req *r, const struct rc_entry *e)
{
    struct buf b;
    buf_init(&b, LD_MAX_RESPONSE);
    buf_add(&b, e->body, e->len);
    struct reply_header h = {"ETag", e->etag};
    reply_json_h(r, 200, &b, &h, e->etag[0] ? 1 : 0);
}

void replycache_free(struct replycache *c)
{
    for (int i = 0; c->e && i < c->nslots; i++)
        free(c->e[i].body);
    free(c->e);
    c->e = NULL;
}
