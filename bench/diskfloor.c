/*
 * diskfloor.c — the disk's own durable-write latency, the floor under every
 * durable loopd write, measured in the same bench run (bench/run).
 *
 *   diskfloor DIR KB N [BUSYCPU]
 *                         append KB kilobytes then fdatasync(), N times, to
 *                         a new file in DIR (removed afterwards); prints
 *   DISKFLOOR n=N kb=KB p50_us=.. p90_us=.. p99_us=.. max_us=.. over5ms=..
 *             stalled_pct=..
 *
 * With BUSYCPU, a thread spins on that CPU while the syncs are timed, as
 * the load generator keeps its CPU busy during a benchmark.  On the
 * Firecracker VMs we measure on, that alone changes the disk: with one
 * vCPU busy and the other syncing, the host stops the whole VM (both vCPUs,
 * not only the disk: bench/vmfreeze.c sees it) for 3-15 ms about every
 * 100 ms, more often the more flushes a second (measured beside a spinning
 * vCPU: none at 1,000 syncs/s, ~0.1 % of the time at 2,000/s, ~9 % at
 * 3,000/s), so a durable write's tail there is the host's, not the
 * server's.  `over5ms` counts
 * the syncs that took longer than 5 ms and `stalled_pct` the share of the
 * run's wall time they took: a server's request that arrives during a
 * stall waits for it, so that share, not the share of syncs, is the share
 * of requests a stall can delay.
 *
 * A group commit of loopd is about this: one append of a few dozen pages
 * to the WAL, then fdatasync.  The file is preallocated by writing it once
 * first, as SQLite's log is after its first pass, so that the timed
 * syncs carry data only, not a growing file's size.
 */
#define _GNU_SOURCE
#include <fcntl.h>
#include <pthread.h>
#include <sched.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

static double now_us(void)
{
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return t.tv_sec * 1e6 + t.tv_nsec / 1e3;
}

static volatile int spinning = 1;

static void *spin(void *arg)
{
    cpu_set_t set;
    CPU_ZERO(&set);
    CPU_SET((int)(long)arg, &set);
    pthread_setaffinity_np(pthread_self(), sizeof(set), &set);
    while (spinning)
        ;
    return NULL;
}

static int cmp(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return x < y ? -1 : x > y;
}

int main(int argc, char **argv)
{
    if (argc != 4 && argc != 5) {
        fprintf(stderr, "usage: diskfloor DIR KB N [BUSYCPU]\n");
        return 2;
    }
    long kb = atol(argv[2]), n = atol(argv[3]);
    if (kb < 1 || kb > 1024 || n < 10 || n > 1000000) {
        fprintf(stderr, "diskfloor: KB must be 1-1024 and N 10-1000000\n");
        return 2;
    }
    char path[4096];
    snprintf(path, sizeof(path), "%s/diskfloor.%ld", argv[1], (long)getpid());
    int fd = open(path, O_CREAT | O_EXCL | O_WRONLY | O_CLOEXEC, 0600);
    if (fd < 0) {
        perror(path);
        return 1;
    }
    size_t sz = (size_t)kb * 1024;
    long slots = 256; /* the file wraps around like a restarted log */
    char *buf = malloc(sz);
    double *lat = malloc(sizeof(double) * (size_t)n);
    if (!buf || !lat) return 1;
    memset(buf, 'x', sz);
    for (long i = 0; i < slots; i++)
        if (pwrite(fd, buf, sz, (off_t)(i * (long)sz)) != (ssize_t)sz) {
            perror("pwrite");
            return 1;
        }
    if (fsync(fd) != 0) {
        perror("fsync");
        return 1;
    }
    pthread_t spinner;
    int busy = argc == 5 && pthread_create(&spinner, NULL, spin, (void *)atol(argv[4])) == 0;
    double t_start = now_us();
    for (long i = 0; i < n; i++) {
        buf[i % sz] ^= 1;
        double t = now_us();
        if (pwrite(fd, buf, sz, (off_t)((i % slots) * (long)sz)) != (ssize_t)sz ||
            fdatasync(fd) != 0) {
            perror("write/fdatasync");
            return 1;
        }
        lat[i] = now_us() - t;
    }
    double elapsed = now_us() - t_start;
    if (busy) {
        spinning = 0;
        pthread_join(spinner, NULL);
    }
    close(fd);
    unlink(path);
    qsort(lat, (size_t)n, sizeof(double), cmp);
    long over = 0;
    double stalled = 0;
    for (long i = 0; i < n; i++)
        if (lat[i] > 5000) {
            over++;
            stalled += lat[i];
        }
    printf("DISKFLOOR n=%ld kb=%ld p50_us=%.0f p90_us=%.0f p99_us=%.0f max_us=%.0f over5ms=%ld "
           "stalled_pct=%.1f\n",
           n, kb, lat[n / 2], lat[n * 9 / 10], lat[n * 99 / 100], lat[n - 1], over,
           100 * stalled / elapsed);
    free(buf);
    free(lat);
    return 0;
}
