/* Deferred durability for a worker's SQLite store: the outcomes' commit is
 * made with synchronous=NORMAL (no fsync, so the write lock is held only for
 * the WAL appends), and a thread of the store's own then fdatasync()s the WAL
 * file: once that returns, every frame appended before it began is on disk,
 * which is what synchronous=FULL gives at commit. The worker acks a batch
 * only when its mark is durable, and meanwhile claims and runs the next one.
 *
 * The same deferral moves the WAL checkpoints (the copy of the WAL back into
 * the database file, with two fsyncs) off the committing call: the
 * connection's WAL hook tells a second thread, which checkpoints on a
 * connection of its own once the WAL holds CW_SQ_CHECKPOINT_FRAMES frames --
 * most of it without blocking the workers' writers, see checkpoint().
 *
 * Why an fdatasync of our own descriptor suffices: in WAL mode a commit is
 * the frames appended to the -wal file (pwrite) and the wal-index update in
 * shared memory; the database file is written only by checkpoints, which at
 * synchronous=NORMAL sync the WAL before and the database after copying. So
 * a committed frame is either still in the WAL (our fdatasync makes it
 * durable) or already copied and synced. The -wal file is unlinked only by
 * the last connection to close, after a full checkpoint; this store holds a
 * connection, and the thread reopens the file if it was replaced anyway. */
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <unistd.h>

#include "framework/error.h"
#include "framework/log.h"
#include "framework/store_sqlite.h"

struct cw_sq_sync {
    pthread_mutex_t mu;
    pthread_cond_t work; /* to the syncer: more to sync, or stop */
    pthread_cond_t ckpt; /* to the checkpointer: the WAL is long, or stop */
    pthread_t syncer, checkpointer;
    bool syncer_on, checkpointer_on;
    bool stop;
    uint64_t committed;       /* marks handed out (under mu) */
    _Atomic uint64_t durable; /* the highest mark made durable */
    _Atomic bool failed;      /* an fdatasync failed: nothing is durable any more */
    char why[256];            /* its reason (set before `failed`) */
    bool ckpt_due;            /* under mu */
    _Atomic int wal_frames;   /* the WAL's length at the store's last commit */
    int wal_fd;               /* the -wal file, for fdatasync only */
    char *wal_path;
    char *db_path;
    int event_fd; /* readable when `durable` grew */
};

/* (Re)opens the -wal file when it is not open or was unlinked. */
static int wal_open(cw_sq_sync *y)
{
    if (y->wal_fd >= 0) {
        struct stat sb;
        if (fstat(y->wal_fd, &sb) == 0 && sb.st_nlink > 0)
            return 0;
        close(y->wal_fd);
        y->wal_fd = -1;
    }
    y->wal_fd = open(y->wal_path, O_RDONLY | O_CLOEXEC);
    return y->wal_fd >= 0 ? 0 : -1;
}

static void *syncer_main(void *arg)
{
    cw_sq_sync *y = arg;
    pthread_mutex_lock(&y->mu);
    for (;;) {
        while (!y->stop && (y->committed == atomic_load(&y->durable) || atomic_load(&y->failed)))
            pthread_cond_wait(&y->work, &y->mu);
        if (y->committed == atomic_load(&y->durable) || atomic_load(&y->failed))
            break; /* a stop, with nothing (more) to sync */
        uint64_t target = y->committed;
        pthread_mutex_unlock(&y->mu);
        /* Every commit up to `target` returned before its mark was handed
         * out, so its frames are in the file now. */
        int err = 0;
        if (wal_open(y) != 0 || fdatasync(y->wal_fd) != 0)
            err = errno;
        if (err) {
            snprintf(y->why, sizeof y->why, "%s: making the commit durable: %s: %s", y->db_path,
                     y->wal_path, strerror(err));
            atomic_store(&y->failed, true);
        } else {
            atomic_store(&y->durable, target);
        }
        uint64_t one = 1;
        if (write(y->event_fd, &one, sizeof one) < 0 && errno != EAGAIN)
            cw_log_warn(NULL, "store %s: waking the worker: %s", y->db_path, strerror(errno));
        pthread_mutex_lock(&y->mu);
    }
    pthread_mutex_unlock(&y->mu);
    return NULL;
}

/* fdatasync()s the database file through the checkpoint connection's own
 * handle (this thread's alone), holding no lock: the writers go on. */
static int db_sync(sqlite3 *db)
{
    sqlite3_file *f = NULL;
    int rc = sqlite3_file_control(db, "main", SQLITE_FCNTL_FILE_POINTER, &f);
    if (rc != SQLITE_OK)
        return rc;
    if (!f || !f->pMethods)
        return SQLITE_MISUSE;
    return f->pMethods->xSync(f, SQLITE_SYNC_NORMAL);
}

/* Copies the WAL back into the database and has the next commit start it
 * over from its beginning.
 *
 * A PASSIVE checkpoint never blocks a writer, but SQLite starts the WAL over
 * only at a commit that finds every frame copied, and under a steady stream
 * of commits a passive pass never copies them all: those committed during
 * its two fsyncs are left. Passive passes alone let a busy worker's WAL grow
 * without bound (737 MB after 15 s of one worker at 30k tasks/s), and each
 * pass, of the few frames left by the one before, cost its two fsyncs: some
 * 80 a second, a fifth of the worker's CPU time.
 *
 * So a RESTART pass ends the round. It holds the write lock while it copies
 * what the passive passes left and syncs the database, then waits for the
 * WAL's readers, CW_SQ_RESTART_WAIT_MS at most for either; the next commit
 * starts the WAL over. A pass that gives up (a long reader) is tried again
 * at the next commit past the threshold.
 *
 * What the writers wait for is that sync, so the round leaves it little to
 * do. A passive pass that leaves frames behind does not sync the database
 * (SQLite syncs it only once the pass has copied every frame there is), and
 * the restart pass's one fsync used to write back every page the passive
 * pass had copied: 270-590 ms under the write lock on a store of 10 million
 * records, whose new IDs dirty random pages of the message ID index. Here
 * each passive pass is followed by a sync of the database file that holds
 * no lock, and passes repeat (CW_SQ_PASSIVE_PASSES at most) while more than
 * CW_SQ_RESTART_FRAMES frames are left: each pass copies what was committed
 * during the one before, about half as much. The restart pass on that store
 * then holds the lock 40-130 ms; on a fresh store 5-25 ms. */
static void checkpoint(cw_sq_sync *y, sqlite3 *db)
{
    int frames = 0, copied = 0, passes = 0, rc;
    do {
        rc = sqlite3_wal_checkpoint_v2(db, NULL, SQLITE_CHECKPOINT_PASSIVE, &frames, &copied);
        if (rc == SQLITE_OK && copied > 0 && (rc = db_sync(db)) != SQLITE_OK) {
            cw_log_warn(NULL, "store %s: checkpoint: syncing the database file: %s", y->db_path,
                        sqlite3_errstr(rc));
            return;
        }
    } while (rc == SQLITE_OK && ++passes < CW_SQ_PASSIVE_PASSES &&
             atomic_load(&y->wal_frames) - copied > CW_SQ_RESTART_FRAMES);
    if (rc == SQLITE_OK) {
        sqlite3_busy_timeout(db, CW_SQ_RESTART_WAIT_MS);
        rc = sqlite3_wal_checkpoint_v2(db, NULL, SQLITE_CHECKPOINT_RESTART, &frames, &copied);
        sqlite3_busy_timeout(db, 1000);
    }
    if (rc != SQLITE_OK && rc != SQLITE_BUSY)
        cw_log_warn(NULL, "store %s: checkpoint: %s", y->db_path, sqlite3_errmsg(db));
}

static void *checkpointer_main(void *arg)
{
    cw_sq_sync *y = arg;
    sqlite3 *db = NULL;
    /* Copying the WAL back can wait for the work that starts handlers and
     * acks deliveries: this thread yields the CPU to them (Linux's nice
     * applies to the thread). */
    if (setpriority(PRIO_PROCESS, (id_t)gettid(), CW_SQ_CHECKPOINT_NICE) != 0)
        cw_log_debug(NULL, "store %s: checkpoint thread keeps its priority: %s", y->db_path,
                     strerror(errno));
    if (sqlite3_open_v2(y->db_path, &db, SQLITE_OPEN_READWRITE | SQLITE_OPEN_NOMUTEX, NULL) !=
            SQLITE_OK ||
        sqlite3_exec(db, "PRAGMA synchronous = NORMAL", NULL, NULL, NULL) != SQLITE_OK) {
        cw_log_warn(NULL,
                    "store %s: the checkpoint thread cannot open it (%s): the WAL grows "
                    "until the worker stops",
                    y->db_path, db ? sqlite3_errmsg(db) : "out of memory");
        sqlite3_close(db);
        return NULL;
    }
    sqlite3_busy_timeout(db, 1000);
    pthread_mutex_lock(&y->mu);
    for (;;) {
        while (!y->stop && !y->ckpt_due)
            pthread_cond_wait(&y->ckpt, &y->mu);
        if (y->stop)
            break;
        y->ckpt_due = false;
        pthread_mutex_unlock(&y->mu);
        /* The commits made during the last checkpoint asked for another;
         * the WAL may have started over since. */
        if (atomic_load(&y->wal_frames) >= CW_SQ_CHECKPOINT_FRAMES)
            checkpoint(y, db);
        pthread_mutex_lock(&y->mu);
    }
    pthread_mutex_unlock(&y->mu);
    sqlite3_close(db);
    return NULL;
}

/* The store connection's WAL hook: after each commit, with the WAL's length. */
static int wal_hook(void *arg, sqlite3 *db, const char *name, int frames)
{
    (void)db;
    (void)name;
    cw_sq_sync *y = arg;
    atomic_store(&y->wal_frames, frames);
    if (frames >= CW_SQ_CHECKPOINT_FRAMES) {
        pthread_mutex_lock(&y->mu);
        if (!y->ckpt_due) {
            y->ckpt_due = true;
            pthread_cond_signal(&y->ckpt);
        }
        pthread_mutex_unlock(&y->mu);
    }
    return SQLITE_OK;
}

static void sync_free(cw_sq_sync *y)
{
    if (y->wal_fd >= 0)
        close(y->wal_fd);
    if (y->event_fd >= 0)
        close(y->event_fd);
    pthread_cond_destroy(&y->work);
    pthread_cond_destroy(&y->ckpt);
    pthread_mutex_destroy(&y->mu);
    free(y->wal_path);
    free(y->db_path);
    free(y);
}

int cw__sq_sync_start(cw_sq_store *q)
{
    cw_sq_sync *y = calloc(1, sizeof *y);
    if (!y)
        return cw__error(CW_STATUS_NOMEM, "%s: out of memory", q->path);
    y->wal_fd = -1;
    y->event_fd = -1;
    pthread_mutex_init(&y->mu, NULL);
    pthread_cond_init(&y->work, NULL);
    pthread_cond_init(&y->ckpt, NULL);
    size_t n = strlen(q->path);
    y->wal_path = malloc(n + 5);
    y->db_path = strdup(q->path);
    if (!y->wal_path || !y->db_path) {
        sync_free(y);
        return cw__error(CW_STATUS_NOMEM, "%s: out of memory", q->path);
    }
    memcpy(y->wal_path, q->path, n);
    memcpy(y->wal_path + n, "-wal", 5);
    int rc = 0;
    if (wal_open(y) != 0)
        rc = cw__error(CW_STATUS_STORE, "%s: cannot open its WAL %s: %s", q->path, y->wal_path,
                       strerror(errno));
    else if ((y->event_fd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC)) < 0)
        rc = cw__error(CW_STATUS_STORE, "%s: eventfd: %s", q->path, strerror(errno));
    else if ((errno = pthread_create(&y->syncer, NULL, syncer_main, y)) != 0)
        rc = cw__error(CW_STATUS_STORE, "%s: cannot start its sync thread: %s", q->path,
                       strerror(errno));
    if (rc) {
        sync_free(y);
        return rc;
    }
    y->syncer_on = true;
    if ((errno = pthread_create(&y->checkpointer, NULL, checkpointer_main, y)) == 0) {
        y->checkpointer_on = true;
        /* From now on the hook, not the connection, decides on checkpoints. */
        sqlite3_wal_hook(q->db, wal_hook, y);
    } else {
        cw_log_warn(NULL, "store %s: no checkpoint thread (%s): commits checkpoint as usual",
                    q->path, strerror(errno));
    }
    q->sync = y;
    return 0;
}

void cw__sq_sync_stop(cw_sq_store *q)
{
    cw_sq_sync *y = q->sync;
    if (!y)
        return;
    sqlite3_wal_hook(q->db, NULL, NULL);
    pthread_mutex_lock(&y->mu);
    y->stop = true;
    pthread_cond_broadcast(&y->work);
    pthread_cond_broadcast(&y->ckpt);
    pthread_mutex_unlock(&y->mu);
    if (y->syncer_on)
        pthread_join(y->syncer, NULL);
    if (y->checkpointer_on)
        pthread_join(y->checkpointer, NULL);
    q->sync = NULL;
    sync_free(y);
}

uint64_t cw__sq_sync_request(cw_sq_store *q)
{
    cw_sq_sync *y = q->sync;
    pthread_mutex_lock(&y->mu);
    uint64_t mark = ++y->committed;
    pthread_cond_signal(&y->work);
    pthread_mutex_unlock(&y->mu);
    return mark;
}

int cw__sq_durable(cw_store *s, uint64_t *mark)
{
    cw_sq_sync *y = ((cw_sq_store *)s)->sync;
    uint64_t drained;
    while (read(y->event_fd, &drained, sizeof drained) > 0) {
    }
    if (atomic_load(&y->failed))
        return cw__error(CW_STATUS_STORE, "%s", y->why);
    *mark = atomic_load(&y->durable);
    return 0;
}

int cw__sq_durable_fd(cw_store *s)
{
    const cw_sq_sync *y = ((cw_sq_store *)s)->sync;
    return y ? y->event_fd : -1;
}
