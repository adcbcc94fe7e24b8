/*
 * vmfreeze.c — how long the whole virtual machine stood still during a
 * benchmark run, measured from inside it (bench/run, bench/turns.py).
 *
 *   vmfreeze [SECONDS]    measure for SECONDS, or until SIGINT or SIGTERM
 *                         when SECONDS is 0 or absent; then prints
 *   VMFREEZE secs=.. cpus=N rt=0|1 frozen_ms=.. frozen_pct=.. episodes=..
 *            max_ms=..
 *
 * One thread per CPU, pinned to it, at real-time priority when allowed
 * (rt=1), sleeps 1 ms at a time and notes every wake-up that comes more
 * than GAP_MS late.  A single CPU can be late on its own (a long
 * non-preemptible kernel path), but when every CPU is late over the same
 * interval, no vCPU of the guest was running: the host had stopped the
 * VM.  `frozen_ms` is the total of those common intervals and
 * `frozen_pct` its share of the wall time; `episodes` counts them.
 *
 * Why it exists: on the Firecracker/PVM VMs we measure on, both vCPUs stop
 * for 3-15 ms about every 100 ms once the guest's CPU use plus the host's
 * work for its I/O (a flush per durable commit) exceeds what the host grants
 * it.  Everything in the guest waits then, loopd, the load generator and the
 * disk alike, so a latency figure means little without this one beside it.
 * The probe itself costs ~2,000 wake-ups a second.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <pthread.h>
#include <sched.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#define MAX_CPUS 64
#define MAX_GAPS 100000
#define GAP_MS 1.5 /* late by more than this: the CPU did not run us */

struct gap {
    double start, end; /* ms */
};

struct probe {
    pthread_t th;
    int cpu;
    int ngaps;
    struct gap *gaps;
};

static volatile sig_atomic_t stop;
static double deadline_ms; /* 0: until a signal */
static int rt_ok = 1;

static double now_ms(void)
{
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return t.tv_sec * 1e3 + t.tv_nsec / 1e6;
}

static void on_signal(int sig)
{
    (void)sig;
    stop = 1;
}

static void *run(void *arg)
{
    struct probe *p = arg;
    cpu_set_t set;
    CPU_ZERO(&set);
    CPU_SET(p->cpu, &set);
    pthread_setaffinity_np(pthread_self(), sizeof(set), &set);
    struct sched_param sp = {.sched_priority = 50};
    if (pthread_setschedparam(pthread_self(), SCHED_FIFO, &sp) != 0) rt_ok = 0;
    const struct timespec ms = {0, 1000000};
    double last = now_ms();
    while (!stop && (deadline_ms == 0 || last < deadline_ms)) {
        nanosleep(&ms, NULL);
        double t = now_ms();
        if (t - last > 1.0 + GAP_MS && p->ngaps < MAX_GAPS)
            p->gaps[p->ngaps++] = (struct gap){last + 1.0, t};
        last = t;
    }
    return NULL;
}

/* the intervals common to every CPU's list of gaps (each list in time order) */
static void common(struct probe *ps, int n, double *total, int *episodes, double *max)
{
    int idx[MAX_CPUS] = {0};
    *total = 0;
    *episodes = 0;
    *max = 0;
    double last_end = -1;
    for (;;) {
        double s = -1e300, e = 1e300;
        for (int i = 0; i < n; i++) {
            if (idx[i] >= ps[i].ngaps) return;
            struct gap g = ps[i].gaps[idx[i]];
            if (g.start > s) s = g.start;
            if (g.end < e) e = g.end;
        }
        if (e > s) {
            *total += e - s;
            if (s > last_end) ++*episodes;
            if (e - s > *max) *max = e - s;
            last_end = e;
        }
        /* drop the gap that ends first; the others may still overlap the next */
        int first = 0;
        for (int i = 1; i < n; i++)
            if (ps[i].gaps[idx[i]].end < ps[first].gaps[idx[first]].end) first = i;
        idx[first]++;
    }
}

int main(int argc, char **argv)
{
    char *end = NULL;
    double secs = argc > 1 ? strtod(argv[1], &end) : 0;
    if (argc > 2 || secs < 0 || (end && (end == argv[1] || *end))) {
        fprintf(stderr, "usage: vmfreeze [SECONDS]   (0 or none: until SIGINT/SIGTERM)\n");
        return 2;
    }
    long ncpu = sysconf(_SC_NPROCESSORS_ONLN);
    if (ncpu < 1) ncpu = 1;
    if (ncpu > MAX_CPUS) ncpu = MAX_CPUS;
    struct sigaction sa;
    memset(&sa, 0, sizeof(sa));
    sa.sa_handler = on_signal;
    sigaction(SIGINT, &sa, NULL);
    sigaction(SIGTERM, &sa, NULL);
    double t0 = now_ms();
    if (secs > 0) deadline_ms = t0 + secs * 1e3;
    static struct probe ps[MAX_CPUS];
    for (int i = 0; i < ncpu; i++) {
        ps[i].cpu = i;
        ps[i].gaps = calloc(MAX_GAPS, sizeof(struct gap));
        int rc = ps[i].gaps ? pthread_create(&ps[i].th, NULL, run, &ps[i]) : ENOMEM;
        if (rc != 0) {
            fprintf(stderr, "vmfreeze: no probe for CPU %d: %s\n", i, strerror(rc));
            return 1;
        }
    }
    for (int i = 0; i < ncpu; i++)
        pthread_join(ps[i].th, NULL);
    double wall = now_ms() - t0, total, max;
    int episodes;
    common(ps, (int)ncpu, &total, &episodes, &max);
    printf("VMFREEZE secs=%.1f cpus=%ld rt=%d frozen_ms=%.1f frozen_pct=%.2f episodes=%d "
           "max_ms=%.1f\n",
           wall / 1e3, ncpu, rt_ok, total, 100 * total / wall, episodes, max);
    for (int i = 0; i < ncpu; i++)
        free(ps[i].gaps);
    return 0;
}
