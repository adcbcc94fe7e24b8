/*
 * walvfs.c — a VFS over the default one that gathers the writer's WAL
 * appends into one write.
 *
 * SQLite writes a commit to the WAL one frame at a time: a 24-byte header
 * and then the page, two pwrite() calls per page, 30-60 per group commit
 * here.  On the VM we measure on each call costs 1.5-2 µs of CPU outside
 * any contention and much more when the loop thread shares the core; one
 * pwrite of the whole run costs about 6 µs.  So the WAL file of the writer
 * connection buffers writes that continue the previous one and hands them
 * to the file in one call when SQLite syncs, reads, truncates, asks the
 * size, closes, or writes elsewhere (at most WALBUF_CAP bytes a call).
 *
 * A sync of the WAL through a handle that wrote nothing since its last sync
 * returns at once.  SQLite syncs the log before each checkpoint copies
 * frames into the database; every frame a checkpoint can see was synced by
 * the commit that wrote it, so for the checkpointer's handle and for the
 * writer's own catch-up (writer.c) that sync is a device flush for nothing,
 * competing with the next commit's.
 *
 * Why nothing can be lost or read stale: other connections read WAL frames
 * only once the wal-index says they are committed, and the writer updates
 * the wal-index only after the commit's xSync (synchronous=FULL: every
 * commit syncs; CONN_WRITER connections are always opened that way, see
 * conn_open).  Frames written without a sync (a transaction that spills its
 * cache) are read back only by the writer itself, through xRead, which
 * flushes first.  A crash loses exactly what an unsynced write loses
 * without the buffer: frames of no acknowledged commit.
 *
 * Both hold only because every connection that writes the WAL syncs each
 * commit: this VFS serves the writer thread's connection and the
 * checkpointer's (which never writes the log), nothing else.
 * Only files opened with SQLITE_OPEN_WAL through this VFS are wrapped; every
 * other file is the default VFS's own, opened in place.
 *
 * A thread that reads the log in bulk can ask to give up its CPU every n
 * reads (walvfs_yield_every, thread-local): the checkpointer reads one
 * frame per page it copies, and its copy would otherwise be one burst that
 * the loop, sharing its core, waits behind (writer.c has the figures).
 */
#include "store/sqlite_int.h"
#include <sched.h>
#include <stdlib.h>
#include <string.h>

/* The unix VFS writes at most 128 KiB - 1 in one call (seekAndWrite masks
 * the length with 0x1ffff; a longer write fails as SQLITE_FULL), and
 * SQLite's own writes are never longer than a page and its frame header. */
#define WALBUF_CAP (120 * 1024)

struct walfile {
    sqlite3_file base;  /* pMethods = &wal_methods */
    sqlite3_file *real; /* the default VFS's file, right after this struct */
    char *buf;          /* pending bytes, written at `off` */
    size_t len;
    sqlite3_int64 off;
    int unsynced; /* written through this handle since its last sync */
};

static sqlite3_vfs walvfs;
static sqlite3_vfs *base_vfs;
static struct walvfs_stats stats; /* updated with relaxed atomics */

static void count(unsigned long *c)
{
    __atomic_fetch_add(c, 1, __ATOMIC_RELAXED);
}

void walvfs_get_stats(struct walvfs_stats *out)
{
    out->writes = __atomic_load_n(&stats.writes, __ATOMIC_RELAXED);
    out->syncs = __atomic_load_n(&stats.syncs, __ATOMIC_RELAXED);
    out->syncs_skipped = __atomic_load_n(&stats.syncs_skipped, __ATOMIC_RELAXED);
}

static int wal_flush(struct walfile *f)
{
    if (f->len == 0) return SQLITE_OK;
    count(&stats.writes);
    int rc = f->real->pMethods->xWrite(f->real, f->buf, (int)f->len, f->off);
    f->len = 0;
    return rc;
}

static int wal_close(sqlite3_file *p)
{
    struct walfile *f = (struct walfile *)p;
    int rc = wal_flush(f);
    int rc2 = f->real->pMethods->xClose(f->real);
    free(f->buf);
    f->buf = NULL;
    return rc != SQLITE_OK ? rc : rc2;
}

/* set by walvfs_yield_every() in the thread that reads the log in bulk */
static _Thread_local int yield_every, reads_since_yield;

void walvfs_yield_every(int n)
{
    yield_every = n;
    reads_since_yield = 0;
}

static int wal_read(sqlite3_file *p, void *out, int amt, sqlite3_int64 ofst)
{
    struct walfile *f = (struct walfile *)p;
    if (yield_every > 0 && ++reads_since_yield >= yield_every) {
        reads_since_yield = 0;
        sched_yield();
    }
    int rc = wal_flush(f);
    return rc != SQLITE_OK ? rc : f->real->pMethods->xRead(f->real, out, amt, ofst);
}

static int wal_write(sqlite3_file *p, const void *data, int amt, sqlite3_int64 ofst)
{
    struct walfile *f = (struct walfile *)p;
    f->unsynced = 1;
    if (f->len > 0 && ofst == f->off + (sqlite3_int64)f->len &&
        f->len + (size_t)amt <= WALBUF_CAP) {
        memcpy(f->buf + f->len, data, (size_t)amt);
        f->len += (size_t)amt;
        return SQLITE_OK;
    }
    int rc = wal_flush(f);
    if (rc != SQLITE_OK) return rc;
    if ((size_t)amt > WALBUF_CAP) {
        count(&stats.writes);
        return f->real->pMethods->xWrite(f->real, data, amt, ofst);
    }
    memcpy(f->buf, data, (size_t)amt);
    f->len = (size_t)amt;
    f->off = ofst;
    return SQLITE_OK;
}

static int wal_truncate(sqlite3_file *p, sqlite3_int64 size)
{
    struct walfile *f = (struct walfile *)p;
    f->unsynced = 1;
    int rc = wal_flush(f);
    return rc != SQLITE_OK ? rc : f->real->pMethods->xTruncate(f->real, size);
}

static int wal_sync(sqlite3_file *p, int flags)
{
    struct walfile *f = (struct walfile *)p;
    if (!f->unsynced) { /* see the top of the file */
        count(&stats.syncs_skipped);
        return SQLITE_OK;
    }
    int rc = wal_flush(f);
    count(&stats.syncs);
    if (rc == SQLITE_OK) rc = f->real->pMethods->xSync(f->real, flags);
    if (rc == SQLITE_OK) f->unsynced = 0;
    return rc;
}

static int wal_file_size(sqlite3_file *p, sqlite3_int64 *size)
{
    struct walfile *f = (struct walfile *)p;
    int rc = wal_flush(f);
    return rc != SQLITE_OK ? rc : f->real->pMethods->xFileSize(f->real, size);
}

/* the rest only forward */
static int wal_lock(sqlite3_file *p, int l)
{
    struct walfile *f = (struct walfile *)p;
    return f->real->pMethods->xLock(f->real, l);
}
static int wal_unlock(sqlite3_file *p, int l)
{
    struct walfile *f = (struct walfile *)p;
    return f->real->pMethods->xUnlock(f->real, l);
}
static int wal_check_reserved(sqlite3_file *p, int *out)
{
    struct walfile *f = (struct walfile *)p;
    return f->real->pMethods->xCheckReservedLock(f->real, out);
}
static int wal_file_control(sqlite3_file *p, int op, void *arg)
{
    struct walfile *f = (struct walfile *)p;
    int rc = wal_flush(f);
    return rc != SQLITE_OK ? rc : f->real->pMethods->xFileControl(f->real, op, arg);
}
static int wal_sector_size(sqlite3_file *p)
{
    struct walfile *f = (struct walfile *)p;
    return f->real->pMethods->xSectorSize(f->real);
}
static int wal_device_characteristics(sqlite3_file *p)
{
    struct walfile *f = (struct walfile *)p;
    return f->real->pMethods->xDeviceCharacteristics(f->real);
}

/* version 1: SQLite never asks a WAL file for shared memory or mmap */
static const sqlite3_io_methods wal_methods = {
    1,
    wal_close,
    wal_read,
    wal_write,
    wal_truncate,
    wal_sync,
    wal_file_size,
    wal_lock,
    wal_unlock,
    wal_check_reserved,
    wal_file_control,
    wal_sector_size,
    wal_device_characteristics,
    NULL,
    NULL,
    NULL,
    NULL,
    NULL,
    NULL,
};

static int walvfs_open(sqlite3_vfs *vfs, sqlite3_filename name, sqlite3_file *p, int flags,
                       int *out_flags)
{
    (void)vfs;
    if (!(flags & SQLITE_OPEN_WAL)) return base_vfs->xOpen(base_vfs, name, p, flags, out_flags);
    struct walfile *f = (struct walfile *)p;
    memset(f, 0, sizeof(*f));
    f->real = (sqlite3_file *)(f + 1);
    f->buf = malloc(WALBUF_CAP);
    if (!f->buf) return SQLITE_NOMEM;
    int rc = base_vfs->xOpen(base_vfs, name, f->real, flags, out_flags);
    if (rc != SQLITE_OK) {
        /* xClose is not called after a failed xOpen unless pMethods is set */
        free(f->buf);
        f->buf = NULL;
        if (f->real->pMethods) f->real->pMethods->xClose(f->real);
        return rc;
    }
    f->base.pMethods = &wal_methods;
    return SQLITE_OK;
}

const char *walvfs_name(void)
{
    return walvfs.zName;
}

int walvfs_register(void)
{
    if (base_vfs) return SQLITE_OK;
    base_vfs = sqlite3_vfs_find(NULL);
    if (!base_vfs) return SQLITE_ERROR;
    walvfs = *base_vfs;
    walvfs.zName = "loopd-wal";
    walvfs.pNext = NULL;
    walvfs.xOpen = walvfs_open;
    int need = (int)sizeof(struct walfile) + base_vfs->szOsFile;
    walvfs.szOsFile = need > base_vfs->szOsFile ? need : base_vfs->szOsFile;
    walvfs.pAppData = base_vfs->pAppData;
    return sqlite3_vfs_register(&walvfs, 0);
}
