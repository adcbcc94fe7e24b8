/*
 * authcache.c — the API keys the loop has verified, so that a request with
 * a known key runs no SQL to authenticate (the key lookup was 12 % of the
 * CPU of a GET /v1/sessions/{id}; GETs +7 % on average over six
 * alternating rounds: README).
 *
 * Keys are revoked by `loopd keys revoke`, another process, so the loop
 * must learn of a revocation before that command returns.  The data dir
 * holds `auth.epoch`, one 64-bit counter that every process of the data dir
 * maps shared: `loopd keys` adds one once its change is committed
 * (authcache_bump), and the loop trusts an entry only while the counter
 * still holds the value it was verified under.  A request sent after
 * `loopd keys revoke` returned is therefore checked against the database
 * again, and refused.
 *
 * Entries are keyed by a MAC of the token (never the token itself) and the
 * X-Org-Id asked for, compared in constant time; only successes are kept,
 * in a small table of sets of two, the one used longest ago making room
 * (direct-mapped, any two keys in use shared a slot in one start in 256,
 * and then each evicted the other: a miss on every request).  The MAC is
 * SipHash-2-4 under two secret keys drawn at start (128 bits): a request
 * whose token is not the cached one cannot match it but by a 2^-128
 * chance, and it costs a tenth of the SHA-256 (4,700 instructions, 3 % of
 * a POST and more of a GET) that a miss still computes for the database.
 * If the file cannot be made or mapped, there is no cache: every request
 * asks the database, as before.
 */
#include "store/sqlite_int.h"
#include "util/sha256.h"
#include "util/siphash.h"
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#define AUTHCACHE_SLOTS 256 /* entries, in sets of two; a power of two */

struct authcache_entry {
    uint64_t mac[2];
    char org[ID_MAX]; /* the X-Org-Id asked for, "" without one */
    uint64_t epoch;
    uint64_t used; /* when last found or put (the cache's tick); 0: empty */
    struct principal p;
};

struct authcache {
    unsigned char key[2][16]; /* the MAC's secret keys */
    uint64_t *epoch;          /* shared with every process of the data dir */
    uint64_t hits, misses, tick;
    struct authcache_entry e[AUTHCACHE_SLOTS];
};

struct authcache *authcache_open(const char *dir)
{
    char path[700];
    if ((size_t)snprintf(path, sizeof(path), "%s/auth.epoch", dir) >= sizeof(path)) return NULL;
    int fd = open(path, O_RDWR | O_CREAT | O_CLOEXEC, 0600);
    if (fd < 0) return NULL;
    struct stat sb;
    void *m = MAP_FAILED;
    /* a process that finds it shorter makes it 8 bytes; never shorter */
    if (fstat(fd, &sb) == 0 && (sb.st_size >= 8 || ftruncate(fd, 8) == 0))
        m = mmap(NULL, 8, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
    close(fd);
    if (m == MAP_FAILED) {
        fprintf(stderr, "level=warn msg=\"no API key cache: cannot map %s\"\n", path);
        return NULL;
    }
    struct authcache *ac = xcalloc(1, sizeof(*ac));
    ac->epoch = m;
    random_bytes(ac->key, sizeof(ac->key));
    return ac;
}

void authcache_close(struct authcache *ac)
{
    if (!ac) return;
    munmap(ac->epoch, 8);
    free(ac);
}

void authcache_bump(struct authcache *ac)
{
    if (ac) __atomic_add_fetch(ac->epoch, 1, __ATOMIC_SEQ_CST);
}

static void mac(const struct authcache *ac, const char *token, uint64_t out[2])
{
    size_t n = strlen(token);
    out[0] = siphash24(ac->key[0], token, n);
    out[1] = siphash24(ac->key[1], token, n);
}

/* the key's set (two entries): its MAC (evenly spread) mixed with the org
 * asked for */
static unsigned set_of(const uint64_t m[2], const char *org)
{
    unsigned v = (unsigned)m[0];
    for (const char *p = org; *p; p++)
        v = (v ^ (unsigned char)*p) * 16777619u;
    return v & (AUTHCACHE_SLOTS / 2 - 1);
}

/* the entry of the set kept for this MAC and org, or NULL */
static struct authcache_entry *find(struct authcache *ac, const uint64_t m[2], const char *org)
{
    struct authcache_entry *s = &ac->e[2 * set_of(m, org)];
    for (int i = 0; i < 2; i++)
        if (s[i].used && ct_equal(s[i].mac, m, 2 * sizeof(m[0])) && strcmp(s[i].org, org) == 0)
            return &s[i];
    return NULL;
}

int authcache_get(struct authcache *ac, const char *token, const char *org_hint,
                  struct principal *p)
{
    if (!ac) return 0;
    const char *org = org_hint ? org_hint : "";
    uint64_t m[2];
    mac(ac, token, m);
    struct authcache_entry *e = find(ac, m, org);
    if (!e || e->epoch != __atomic_load_n(ac->epoch, __ATOMIC_SEQ_CST)) {
        ac->misses++;
        return 0;
    }
    ac->hits++;
    e->used = ++ac->tick;
    *p = e->p;
    return 1;
}

void authcache_put(struct authcache *ac, const char *token, const char *org_hint,
                   const struct principal *p, uint64_t epoch)
{
    const char *org = org_hint ? org_hint : "";
    if (!ac || strlen(org) >= ID_MAX) return;
    uint64_t m[2];
    mac(ac, token, m);
    struct authcache_entry *e = find(ac, m, org);
    if (!e) { /* the entry used longest ago (an empty one first) makes room */
        struct authcache_entry *s = &ac->e[2 * set_of(m, org)];
        e = s[0].used <= s[1].used ? &s[0] : &s[1];
    }
    memcpy(e->mac, m, sizeof(m));
    str_copy(e->org, sizeof(e->org), org);
    e->epoch = epoch;
    e->p = *p;
    e->used = ++ac->tick;
}

int authcache_set_of(struct authcache *ac, const char *token, const char *org_hint)
{
    uint64_t m[2];
    mac(ac, token, m);
    return (int)set_of(m, org_hint ? org_hint : "");
}

uint64_t authcache_epoch(struct authcache *ac)
{
    return ac ? __atomic_load_n(ac->epoch, __ATOMIC_SEQ_CST) : 0;
}

void authcache_counts(const struct authcache *ac, uint64_t *hits, uint64_t *misses)
{
    *hits = ac ? ac->hits : 0;
    *misses = ac ? ac->misses : 0;
}
