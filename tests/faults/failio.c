/*
 * failio.c — storage faults for the tests: an LD_PRELOAD library that makes
 * writes or syncs of loopd's write-ahead log fail while a control file says
 * so (tests/durability/test_storage_faults.py).
 *
 *   LD_PRELOAD=build/failio.so FAILIO_CTL=/path/to/ctl loopd ...
 *
 * On every write and sync of a file whose name ends in "-wal", the control
 * file is read: "sync" fails fsync/fdatasync with EIO (a failing disk),
 * "write" fails pwrite64 (SQLite's write) with ENOSPC (a full disk), "once"
 * fails the next such write only and then removes the control file;
 * anything else, or no file, lets the call through.  Each failure is counted in FAILIO_CTL.hits
 * (one byte appended per failure), so a test can wait for the fault to
 * have happened instead of sleeping.  Other files are never touched.
 */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/types.h>
#include <time.h>
#include <unistd.h>

enum mode { PASS, FAIL_SYNC, FAIL_WRITE, FAIL_ONCE, SLOW_SYNC };

static int is_wal(int fd)
{
    char link[64], path[4096];
    snprintf(link, sizeof(link), "/proc/self/fd/%d", fd);
    ssize_t n = readlink(link, path, sizeof(path) - 1);
    if (n < 4) return 0;
    path[n] = 0;
    return strcmp(path + n - 4, "-wal") == 0;
}

static enum mode mode_now(void)
{
    const char *ctl = getenv("FAILIO_CTL");
    if (!ctl) return PASS;
    int fd = open(ctl, O_RDONLY | O_CLOEXEC);
    if (fd < 0) return PASS;
    char buf[16] = {0};
    ssize_t n = read(fd, buf, sizeof(buf) - 1);
    close(fd);
    if (n <= 0) return PASS;
    if (strncmp(buf, "sync", 4) == 0) return FAIL_SYNC;
    if (strncmp(buf, "write", 5) == 0) return FAIL_WRITE;
    if (strncmp(buf, "once", 4) == 0) return FAIL_ONCE;
    if (strncmp(buf, "slow", 4) == 0) return SLOW_SYNC;
    return PASS;
}

static void count_hit(void)
{
    const char *ctl = getenv("FAILIO_CTL");
    char path[4096];
    snprintf(path, sizeof(path), "%s.hits", ctl);
    int fd = open(path, O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0600);
    if (fd < 0) return;
    ssize_t r = write(fd, "x", 1);
    (void)r;
    close(fd);
}

/* 1 if this call on fd fails with `err` (errno set) */
static int fault(int fd, enum mode m, int err)
{
    enum mode now = mode_now();
    if ((now != m && !(now == FAIL_ONCE && m == FAIL_WRITE)) || !is_wal(fd)) return 0;
    if (now == FAIL_ONCE) unlink(getenv("FAILIO_CTL"));
    count_hit();
    errno = err;
    return 1;
}

typedef int (*sync_fn)(int);
typedef ssize_t (*pwrite_fn)(int, const void *, size_t, off_t);

static void *next_fn(const char *name)
{
    return dlsym(RTLD_NEXT, name);
}

/* a sync of the log in "slow" mode first waits 200 ms */
static void maybe_slow(int fd)
{
    if (mode_now() != SLOW_SYNC || !is_wal(fd)) return;
    count_hit();
    struct timespec ts = {0, 200 * 1000 * 1000};
    while (nanosleep(&ts, &ts) != 0 && errno == EINTR)
        ;
}

int fsync(int fd)
{
    static sync_fn real;
    if (!real) real = (sync_fn)next_fn("fsync");
    maybe_slow(fd);
    return fault(fd, FAIL_SYNC, EIO) ? -1 : real(fd);
}

int fdatasync(int fd)
{
    static sync_fn real;
    if (!real) real = (sync_fn)next_fn("fdatasync");
    maybe_slow(fd);
    return fault(fd, FAIL_SYNC, EIO) ? -1 : real(fd);
}

ssize_t pwrite64(int fd, const void *buf, size_t n, off_t off)
{
    static pwrite_fn real;
    if (!real) real = (pwrite_fn)next_fn("pwrite64");
    return fault(fd, FAIL_WRITE, ENOSPC) ? -1 : real(fd, buf, n, off);
}
