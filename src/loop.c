/*
 * loop.c — epoll dispatch and a coarse periodic tick.  Deadlines in loopd
 * are coarse (seconds), so one tick sweeping the few lists that have
 * deadlines is simpler than a timer tree and costs nothing when idle.
 */
#include "loop.h"
#include "util/mem.h"
#include "util/timeutil.h"
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <unistd.h>

#define MAX_TICKS 8
#define MAX_AFTER 4

struct watch {
    int fd;
    loop_fd_fn fn;
    void *ud;
};

struct loop_timer {
    struct loop_timer *next;
    int64_t due; /* monotonic µs */
    loop_tick_fn fn;
    void *ud;
};

struct loop {
    int ep;
    struct loop_timer *timers; /* sorted by due */
    struct watch *w;           /* indexed by fd; fn == NULL: not watched */
    int nw;                    /* entries allocated */
    struct {
        loop_tick_fn fn;
        void *ud;
    } ticks[MAX_TICKS];
    int nticks;
    loop_timeout_fn tfn;
    void *tud;
    struct {
        loop_tick_fn fn;
        void *ud;
    } after[MAX_AFTER];
    int nafter;
    int64_t next_tick;
};

struct loop *loop_new(void)
{
    struct loop *l = xcalloc(1, sizeof(*l));
    l->ep = epoll_create1(EPOLL_CLOEXEC);
    if (l->ep < 0) {
        free(l);
        return NULL;
    }
    l->next_tick = time_mono_us() + LOOP_TICK_MS * 1000;
    return l;
}

void loop_free(struct loop *l)
{
    if (!l) return;
    while (l->timers) {
        struct loop_timer *t = l->timers;
        l->timers = t->next;
        free(t);
    }
    free(l->w);
    close(l->ep);
    free(l);
}

int loop_add_fd(struct loop *l, int fd, uint32_t events, loop_fd_fn fn, void *ud)
{
    if (fd < 0) return -1;
    if (fd >= l->nw) {
        int n = l->nw ? l->nw : 64;
        while (n <= fd)
            n *= 2;
        l->w = xrealloc(l->w, sizeof(*l->w) * (size_t)n);
        memset(l->w + l->nw, 0, sizeof(*l->w) * (size_t)(n - l->nw));
        l->nw = n;
    }
    struct epoll_event ev = {.events = events, .data.fd = fd};
    int op = l->w[fd].fn ? EPOLL_CTL_MOD : EPOLL_CTL_ADD;
    if (epoll_ctl(l->ep, op, fd, &ev) < 0) return -1;
    l->w[fd] = (struct watch){fd, fn, ud};
    return 0;
}

void loop_del_fd(struct loop *l, int fd)
{
    if (fd < 0 || fd >= l->nw || !l->w[fd].fn) return;
    epoll_ctl(l->ep, EPOLL_CTL_DEL, fd, NULL);
    l->w[fd].fn = NULL;
}

void loop_on_tick(struct loop *l, loop_tick_fn fn, void *ud)
{
    if (l->nticks < MAX_TICKS) {
        l->ticks[l->nticks].fn = fn;
        l->ticks[l->nticks].ud = ud;
        l->nticks++;
    }
}

void loop_on_timeout(struct loop *l, loop_timeout_fn fn, void *ud)
{
    l->tfn = fn;
    l->tud = ud;
}

void loop_after_poll(struct loop *l, loop_tick_fn fn, void *ud)
{
    if (l->nafter < MAX_AFTER) {
        l->after[l->nafter].fn = fn;
        l->after[l->nafter].ud = ud;
        l->nafter++;
    }
}

struct loop_timer *loop_timer_add(struct loop *l, long ms, loop_tick_fn fn, void *ud)
{
    struct loop_timer *t = xcalloc(1, sizeof(*t));
    t->due = time_mono_us() + (int64_t)ms * 1000;
    t->fn = fn;
    t->ud = ud;
    struct loop_timer **p = &l->timers;
    while (*p && (*p)->due <= t->due)
        p = &(*p)->next;
    t->next = *p;
    *p = t;
    return t;
}

void loop_timer_cancel(struct loop *l, struct loop_timer *t)
{
    for (struct loop_timer **p = &l->timers; *p; p = &(*p)->next)
        if (*p == t) {
            *p = t->next;
            free(t);
            return;
        }
}

static void run_timers(struct loop *l)
{
    int64_t now = time_mono_us();
    while (l->timers && l->timers->due <= now) {
        struct loop_timer *t = l->timers;
        l->timers = t->next;
        loop_tick_fn fn = t->fn;
        void *ud = t->ud;
        free(t);
        fn(ud);
    }
}

void loop_run_once(struct loop *l, long max_ms)
{
    int64_t now = time_mono_us();
    long wait = (long)((l->next_tick - now) / 1000);
    if (l->timers) {
        long tw = (long)((l->timers->due - now + 999) / 1000);
        if (tw < wait) wait = tw;
    }
    if (wait < 0) wait = 0;
    if (max_ms >= 0 && max_ms < wait) wait = max_ms;
    if (l->tfn) {
        long t = l->tfn(l->tud);
        if (t >= 0 && t < wait) wait = t;
    }
    struct epoll_event evs[32];
    int n = epoll_wait(l->ep, evs, 32, (int)wait);
    for (int i = 0; i < n; i++) {
        int fd = evs[i].data.fd;
        if (fd < l->nw && l->w[fd].fn) l->w[fd].fn(l->w[fd].ud, evs[i].events);
    }
    run_timers(l);
    for (int i = 0; i < l->nafter; i++)
        l->after[i].fn(l->after[i].ud);
    now = time_mono_us();
    if (now >= l->next_tick) {
        l->next_tick = now + LOOP_TICK_MS * 1000;
        for (int i = 0; i < l->nticks; i++)
            l->ticks[i].fn(l->ticks[i].ud);
    }
}
