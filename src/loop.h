/*
 * loop.h — the event loop: one epoll set on one thread.  File descriptors
 * register a callback; a periodic tick (every LOOP_TICK_MS) runs the
 * deadline sweeps.  Nothing registered here may block.
 */
#ifndef LOOPD_LOOP_H
#define LOOPD_LOOP_H
#include <stdint.h>

#define LOOP_TICK_MS 250

struct loop;
typedef void (*loop_fd_fn)(void *ud, uint32_t events);
typedef void (*loop_tick_fn)(void *ud);
/* Called before each wait: returns the most ms the loop may sleep (-1 any). */
typedef long (*loop_timeout_fn)(void *ud);

struct loop *loop_new(void);
void loop_free(struct loop *l);
/* Watches fd (or changes what is watched); one watcher per fd. */
int loop_add_fd(struct loop *l, int fd, uint32_t events, loop_fd_fn fn, void *ud);
void loop_del_fd(struct loop *l, int fd);
void loop_on_tick(struct loop *l, loop_tick_fn fn, void *ud);
void loop_on_timeout(struct loop *l, loop_timeout_fn fn, void *ud);
/* Runs after every wait, whatever fired, in the order added (at most 4). */
void loop_after_poll(struct loop *l, loop_tick_fn fn, void *ud);
/* One-shot timers with millisecond precision (turn latencies, SSE
 * heartbeats).  The handle stays valid until the timer fires or is
 * cancelled; cancelling a fired or cancelled timer is a bug. */
struct loop_timer;
struct loop_timer *loop_timer_add(struct loop *l, long ms, loop_tick_fn fn, void *ud);
void loop_timer_cancel(struct loop *l, struct loop_timer *t);

/* Runs one iteration: waits at most max_ms, dispatches. */
void loop_run_once(struct loop *l, long max_ms);

#endif
