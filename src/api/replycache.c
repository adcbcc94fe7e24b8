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
 * An answer from the cache is sent from the entry's body itself, which
 * counts its users: a newer answer that takes the slot, or a write, leaves
 * the bytes in place for the answers still being sent (a list page is
 * ~86 KB: its copy was 6 % of the CPU of a cached list GET).
 *
 * Entries are direct-mapped by key (FNV-1a); a newer answer takes the slot.
 * `--reply-cache off` turns it off.  Everything runs on the loop thread.  A handler keeps its
 * answer before it returns, so the generation it read the store under is the current one.
 */
#include "api/api.h"
#include "limits.h"
#include <stdlib.h>
#include <string.h>

struct rc_body {
    long refs; /* the entry's, plus one per answer being sent */
    size_t len;
    char data[];
};

static void body_unref(void *owner)
{
    struct rc_body *b = owner;
    if (b && --b->refs == 0) free(b);
}

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
    struct rc_body *copy = malloc(sizeof(*copy) + b->len);
    if (!copy) return;
    copy->refs = 1;
    copy->len = b->len;
    memcpy(copy->data, b->data, b->len);
    body_unref(e->body);
    e->body = copy;
    e->gen = store_write_generation(r->st);
    str_copy(e->key, sizeof(e->key), key);
    str_copy(e->org_id, sizeof(e->org_id), r->who.org_id);
    str_copy(e->user_id, sizeof(e->user_id), r->who.user_id);
    str_copy(e->etag, sizeof(e->etag), etag ? etag : "");
}

void replycache_reply(struct req *r, const struct rc_entry *e)
{
    struct reply_header h = {"ETag", e->etag};
    e->body->refs++;
    reply_json_shared(r, 200, e->body->data, e->body->len, body_unref, e->body, &h,
                      e->etag[0] ? 1 : 0);
}

void replycache_free(struct replycache *c)
{
    for (int i = 0; c->e && i < c->nslots; i++)
        body_unref(c->e[i].body);
    free(c->e);
    c->e = NULL;
}
