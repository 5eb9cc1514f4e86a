/* "cw-wal": a VFS shim over SQLite's default one that writes a transaction's
 * WAL frames with one pwrite() instead of two per frame.
 *
 * SQLite appends each frame to the -wal file as two writes (its 24-byte
 * header, then the page), so a batch of 500 new tasks, which dirties some
 * 400 index pages, costs some 800 system calls; on the worker's profile they
 * were a fifth of its CPU time. This shim keeps the writes that continue the
 * WAL file sequentially in a buffer and writes the buffer at once:
 *
 * - before the commit becomes visible: SQLite publishes a commit by writing
 *   the wal-index header in shared memory, with an xShmBarrier() call (on the
 *   database file) between its two copies; readers take the header only when
 *   both copies agree. The shim's barrier writes every pending buffer first,
 *   so that no connection, in this process or another, can see a commit
 *   whose frames are not in the file. A kill of the process after that loses
 *   nothing committed; a kill before it loses the uncommitted transaction,
 *   as a kill during SQLite's own writes would.
 * - before anything reads, syncs, truncates or sizes the file, and when a
 *   write does not continue the buffer, or the buffer is full.
 *
 * A write that fails at the barrier cannot be reported to SQLite (the call
 * returns nothing), so the shim makes sure that it cannot fail for want of
 * space: before buffering past the space reserved for the file, it reserves
 * more with fallocate(FALLOC_FL_KEEP_SIZE), and a refused reservation is the
 * write's own SQLITE_FULL, as a direct write would have been. A file system
 * without fallocate gets its writes through unbuffered. If a write at the
 * barrier fails all the same (an I/O error), the file answers every later
 * call with SQLITE_IOERR, so the store's next operation fails and the worker
 * exits (its supervisor starts another, which recovers the WAL).
 *
 * Only a worker's store connection uses it (sqlite3_open_v2(..., "cw-wal")). */
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <sqlite3.h>

#include "framework/log.h"
#include "framework/store_sqlite.h"

#define CW_WAL_BUF_MAX (4u << 20) /* bytes buffered at most */
#define CW_WAL_RESERVE (16 << 20) /* reserved ahead of the buffer at a time */

typedef struct wal_file wal_file;
struct wal_file {
    sqlite3_file base;   /* our methods */
    sqlite3_file *real;  /* the default VFS's file, right after this struct */
    bool wal;            /* a -wal file: buffered */
    _Atomic bool failed; /* a write at the barrier failed: refuse everything */
    pthread_mutex_t mu;  /* the buffer (a barrier may come from another connection) */
    unsigned char *buf;
    size_t len;
    sqlite3_int64 off;      /* file offset of buf[0] */
    sqlite3_int64 reserved; /* fallocate()d up to here */
    int fd;                 /* own descriptor for fallocate, -1 without */
    wal_file *next;         /* in wal_files */
};

static pthread_mutex_t wal_files_mu = PTHREAD_MUTEX_INITIALIZER;
static wal_file *wal_files;

static sqlite3_vfs *real_vfs(sqlite3_vfs *v)
{
    return v->pAppData;
}

/* Writes the buffer, with the shim's own descriptor (the default VFS's
 * xWrite takes less than 128 KiB at a time); call with f->mu held. */
static int flush_locked(wal_file *f)
{
    const unsigned char *p = f->buf;
    size_t left = f->len;
    sqlite3_int64 off = f->off;
    f->len = 0;
    while (left) {
        ssize_t n = pwrite(f->fd, p, left, off);
        if (n < 0 && errno == EINTR)
            continue;
        if (n <= 0)
            return n < 0 && errno == ENOSPC ? SQLITE_FULL : SQLITE_IOERR_WRITE;
        p += n;
        left -= (size_t)n;
        off += n;
    }
    return SQLITE_OK;
}

static int flush(wal_file *f)
{
    if (!f->wal)
        return SQLITE_OK;
    pthread_mutex_lock(&f->mu);
    int rc = f->failed ? SQLITE_IOERR : flush_locked(f);
    pthread_mutex_unlock(&f->mu);
    return rc;
}

/* The barrier's flush of every buffered -wal file of the process. */
static void flush_all(void)
{
    pthread_mutex_lock(&wal_files_mu);
    for (wal_file *f = wal_files; f; f = f->next) {
        pthread_mutex_lock(&f->mu);
        size_t len = f->len;
        sqlite3_int64 off = f->off;
        int rc = f->failed ? SQLITE_OK : flush_locked(f);
        if (rc != SQLITE_OK) {
            int err = errno;
            f->failed = true;
            cw_log_error(NULL,
                         "store: writing %zu bytes of the WAL at offset %lld failed at a commit "
                         "(%s, %s): the store refuses every further call on this connection",
                         len, (long long)off, sqlite3_errstr(rc), strerror(err));
        }
        pthread_mutex_unlock(&f->mu);
    }
    pthread_mutex_unlock(&wal_files_mu);
}

#define REAL(f) (((wal_file *)(f))->real)
#define CHECK(f)                                                                                   \
    do {                                                                                           \
        if (((wal_file *)(f))->failed)                                                             \
            return SQLITE_IOERR;                                                                   \
    } while (0)

static int x_close(sqlite3_file *file)
{
    wal_file *f = (wal_file *)file;
    int rc = SQLITE_OK;
    if (f->wal) {
        pthread_mutex_lock(&wal_files_mu);
        for (wal_file **p = &wal_files; *p; p = &(*p)->next) {
            if (*p == f) {
                *p = f->next;
                break;
            }
        }
        pthread_mutex_unlock(&wal_files_mu);
        rc = flush(f);
        free(f->buf);
        if (f->fd >= 0)
            close(f->fd);
        pthread_mutex_destroy(&f->mu);
    }
    int rc2 = f->real->pMethods->xClose(f->real);
    return rc != SQLITE_OK ? rc : rc2;
}

static int x_read(sqlite3_file *file, void *p, int amt, sqlite3_int64 off)
{
    CHECK(file);
    int rc = flush((wal_file *)file);
    return rc != SQLITE_OK ? rc : REAL(file)->pMethods->xRead(REAL(file), p, amt, off);
}

/* Reserves the file's blocks up to `end` at least; false when it cannot. */
static bool reserve(wal_file *f, sqlite3_int64 end)
{
    if (end <= f->reserved)
        return true;
    sqlite3_int64 upto = end + CW_WAL_RESERVE;
    if (fallocate(f->fd, FALLOC_FL_KEEP_SIZE, f->reserved, upto - f->reserved) != 0)
        return false;
    f->reserved = upto;
    return true;
}

static int x_write(sqlite3_file *file, const void *p, int amt, sqlite3_int64 off)
{
    wal_file *f = (wal_file *)file;
    CHECK(file);
    if (!f->wal || f->fd < 0)
        return f->real->pMethods->xWrite(f->real, p, amt, off);
    pthread_mutex_lock(&f->mu);
    int rc = SQLITE_OK;
    bool follows = f->len && f->off + (sqlite3_int64)f->len == off;
    if (!follows || f->len + (size_t)amt > CW_WAL_BUF_MAX)
        rc = flush_locked(f);
    if (rc == SQLITE_OK && (size_t)amt >= CW_WAL_BUF_MAX) {
        rc = f->real->pMethods->xWrite(f->real, p, amt, off);
    } else if (rc == SQLITE_OK) {
        if (!f->len)
            f->off = off;
        if (!reserve(f, off + amt)) {
            /* Written through, so that it fails (or not) here, with its own
             * code (SQLITE_FULL for ENOSPC). */
            rc = flush_locked(f);
            if (rc == SQLITE_OK)
                rc = f->real->pMethods->xWrite(f->real, p, amt, off);
        } else {
            memcpy(f->buf + f->len, p, (size_t)amt);
            f->len += (size_t)amt;
        }
    }
    pthread_mutex_unlock(&f->mu);
    return rc;
}

static int x_truncate(sqlite3_file *file, sqlite3_int64 size)
{
    CHECK(file);
    int rc = flush((wal_file *)file);
    return rc != SQLITE_OK ? rc : REAL(file)->pMethods->xTruncate(REAL(file), size);
}

static int x_sync(sqlite3_file *file, int flags)
{
    CHECK(file);
    int rc = flush((wal_file *)file);
    return rc != SQLITE_OK ? rc : REAL(file)->pMethods->xSync(REAL(file), flags);
}

static int x_file_size(sqlite3_file *file, sqlite3_int64 *size)
{
    CHECK(file);
    int rc = flush((wal_file *)file);
    return rc != SQLITE_OK ? rc : REAL(file)->pMethods->xFileSize(REAL(file), size);
}

static int x_lock(sqlite3_file *file, int lock)
{
    return REAL(file)->pMethods->xLock(REAL(file), lock);
}

static int x_unlock(sqlite3_file *file, int lock)
{
    return REAL(file)->pMethods->xUnlock(REAL(file), lock);
}

static int x_check_reserved(sqlite3_file *file, int *out)
{
    return REAL(file)->pMethods->xCheckReservedLock(REAL(file), out);
}

static int x_file_control(sqlite3_file *file, int op, void *arg)
{
    int rc = flush((wal_file *)file);
    return rc != SQLITE_OK ? rc : REAL(file)->pMethods->xFileControl(REAL(file), op, arg);
}

static int x_sector_size(sqlite3_file *file)
{
    return REAL(file)->pMethods->xSectorSize(REAL(file));
}

static int x_device(sqlite3_file *file)
{
    return REAL(file)->pMethods->xDeviceCharacteristics(REAL(file));
}

static int x_shm_map(sqlite3_file *file, int page, int size, int extend, void volatile **pp)
{
    return REAL(file)->pMethods->xShmMap(REAL(file), page, size, extend, pp);
}

/* The wal-index lock a writer holds for its whole transaction (slot 0 of
 * the shared-memory locks, SQLite's WAL_WRITE_LOCK). */
#define CW_WAL_WRITE_LOCK 0

/* Drops what is buffered, unwritten, in every -wal file of the process. */
static void discard_all(void)
{
    pthread_mutex_lock(&wal_files_mu);
    for (wal_file *f = wal_files; f; f = f->next) {
        pthread_mutex_lock(&f->mu);
        f->len = 0;
        pthread_mutex_unlock(&f->mu);
    }
    pthread_mutex_unlock(&wal_files_mu);
}

static int x_shm_lock(sqlite3_file *file, int offset, int n, int flags)
{
    /* A writer gives up the write lock: after a commit its frames were
     * written at the barrier; after a rollback what is still buffered are
     * frames SQLite has undone (pages spilled during the transaction), which
     * must not reach the file later, over frames the next writer put at the
     * same offsets. No other connection can hold frames of its own now (it
     * would need the lock), so every buffer is dropped, before the lock is. */
    if (offset == CW_WAL_WRITE_LOCK && (flags & SQLITE_SHM_UNLOCK) &&
        (flags & SQLITE_SHM_EXCLUSIVE))
        discard_all();
    return REAL(file)->pMethods->xShmLock(REAL(file), offset, n, flags);
}

static void x_shm_barrier(sqlite3_file *file)
{
    flush_all();
    REAL(file)->pMethods->xShmBarrier(REAL(file));
}

static int x_shm_unmap(sqlite3_file *file, int del)
{
    return REAL(file)->pMethods->xShmUnmap(REAL(file), del);
}

static int x_fetch(sqlite3_file *file, sqlite3_int64 off, int amt, void **pp)
{
    return REAL(file)->pMethods->xFetch(REAL(file), off, amt, pp);
}

static int x_unfetch(sqlite3_file *file, sqlite3_int64 off, void *p)
{
    return REAL(file)->pMethods->xUnfetch(REAL(file), off, p);
}

static const sqlite3_io_methods wal_methods = {
    .iVersion = 3,
    .xClose = x_close,
    .xRead = x_read,
    .xWrite = x_write,
    .xTruncate = x_truncate,
    .xSync = x_sync,
    .xFileSize = x_file_size,
    .xLock = x_lock,
    .xUnlock = x_unlock,
    .xCheckReservedLock = x_check_reserved,
    .xFileControl = x_file_control,
    .xSectorSize = x_sector_size,
    .xDeviceCharacteristics = x_device,
    .xShmMap = x_shm_map,
    .xShmLock = x_shm_lock,
    .xShmBarrier = x_shm_barrier,
    .xShmUnmap = x_shm_unmap,
    .xFetch = x_fetch,
    .xUnfetch = x_unfetch,
};

static int v_open(sqlite3_vfs *vfs, const char *name, sqlite3_file *file, int flags, int *out_flags)
{
    wal_file *f = (wal_file *)file;
    memset(f, 0, sizeof *f);
    f->fd = -1;
    f->real = (sqlite3_file *)(f + 1);
    int rc = real_vfs(vfs)->xOpen(real_vfs(vfs), name, f->real, flags, out_flags);
    if (rc != SQLITE_OK || !f->real->pMethods) {
        f->base.pMethods = NULL; /* SQLite then does not call xClose */
        return rc;
    }
    if (f->real->pMethods->iVersion < 3) {
        /* Not the default VFS this shim forwards to (no shared memory). */
        f->real->pMethods->xClose(f->real);
        f->base.pMethods = NULL;
        return SQLITE_CANTOPEN;
    }
    f->base.pMethods = &wal_methods;
    if ((flags & SQLITE_OPEN_WAL) && name) {
        f->wal = true;
        pthread_mutex_init(&f->mu, NULL);
        f->buf = malloc(CW_WAL_BUF_MAX);
        f->fd = f->buf ? open(name, O_RDWR | O_CLOEXEC) : -1;
        if (f->fd >= 0 && fallocate(f->fd, FALLOC_FL_KEEP_SIZE, 0, CW_WAL_RESERVE) == 0)
            f->reserved = CW_WAL_RESERVE;
        else if (f->fd >= 0) {
            close(f->fd); /* no fallocate here: written through */
            f->fd = -1;
        }
        pthread_mutex_lock(&wal_files_mu);
        f->next = wal_files;
        wal_files = f;
        pthread_mutex_unlock(&wal_files_mu);
    }
    return SQLITE_OK;
}

static int v_delete(sqlite3_vfs *vfs, const char *name, int sync_dir)
{
    return real_vfs(vfs)->xDelete(real_vfs(vfs), name, sync_dir);
}

static int v_access(sqlite3_vfs *vfs, const char *name, int flags, int *out)
{
    return real_vfs(vfs)->xAccess(real_vfs(vfs), name, flags, out);
}

static int v_full_pathname(sqlite3_vfs *vfs, const char *name, int n, char *out)
{
    return real_vfs(vfs)->xFullPathname(real_vfs(vfs), name, n, out);
}

static void *v_dl_open(sqlite3_vfs *vfs, const char *name)
{
    return real_vfs(vfs)->xDlOpen(real_vfs(vfs), name);
}

static void v_dl_error(sqlite3_vfs *vfs, int n, char *msg)
{
    real_vfs(vfs)->xDlError(real_vfs(vfs), n, msg);
}

static void (*v_dl_sym(sqlite3_vfs *vfs, void *h, const char *sym))(void)
{
    return real_vfs(vfs)->xDlSym(real_vfs(vfs), h, sym);
}

static void v_dl_close(sqlite3_vfs *vfs, void *h)
{
    real_vfs(vfs)->xDlClose(real_vfs(vfs), h);
}

static int v_randomness(sqlite3_vfs *vfs, int n, char *out)
{
    return real_vfs(vfs)->xRandomness(real_vfs(vfs), n, out);
}

static int v_sleep(sqlite3_vfs *vfs, int us)
{
    return real_vfs(vfs)->xSleep(real_vfs(vfs), us);
}

static int v_current_time(sqlite3_vfs *vfs, double *out)
{
    return real_vfs(vfs)->xCurrentTime(real_vfs(vfs), out);
}

static int v_last_error(sqlite3_vfs *vfs, int n, char *out)
{
    return real_vfs(vfs)->xGetLastError(real_vfs(vfs), n, out);
}

static int v_current_time64(sqlite3_vfs *vfs, sqlite3_int64 *out)
{
    return real_vfs(vfs)->xCurrentTimeInt64(real_vfs(vfs), out);
}

static sqlite3_vfs wal_vfs = {
    .iVersion = 2,
    .zName = CW_SQ_VFS,
    .xOpen = v_open,
    .xDelete = v_delete,
    .xAccess = v_access,
    .xFullPathname = v_full_pathname,
    .xDlOpen = v_dl_open,
    .xDlError = v_dl_error,
    .xDlSym = v_dl_sym,
    .xDlClose = v_dl_close,
    .xRandomness = v_randomness,
    .xSleep = v_sleep,
    .xCurrentTime = v_current_time,
    .xGetLastError = v_last_error,
    .xCurrentTimeInt64 = v_current_time64,
};

static int register_rc = SQLITE_ERROR;
static pthread_once_t register_once = PTHREAD_ONCE_INIT;

static void register_vfs(void)
{
    sqlite3_vfs *real = sqlite3_vfs_find(NULL);
    if (!real || real->iVersion < 2 || !real->xCurrentTimeInt64)
        return;
    wal_vfs.szOsFile = (int)sizeof(wal_file) + real->szOsFile;
    wal_vfs.mxPathname = real->mxPathname;
    wal_vfs.pAppData = real;
    register_rc = sqlite3_vfs_register(&wal_vfs, 0);
}

bool cw__sq_vfs_ready(void)
{
    pthread_once(&register_once, register_vfs);
    return register_rc == SQLITE_OK;
}
