/* Internal to the SQLite store backend: its state and what its files share.
 * framework/store_sqlite.c holds the operations of the store interface;
 * framework/store_sqlite_open.c opening a database (its directory, the
 * pragmas, the schema and its migration, the statements) and probing one for
 * config check; framework/store_sqlite_sql.c the SQL. */
#ifndef CW_FRAMEWORK_STORE_SQLITE_H
#define CW_FRAMEWORK_STORE_SQLITE_H

#include <sqlite3.h>
#include <stdbool.h>
#include <stdint.h>

#include "framework/store.h"
#include "framework/store_sqlite_sql.h"

#define CW_SQ_SCHEMA_VERSION 3
#define CW_SQ_BUSY_TIMEOUT_MS 10000
#define CW_SQ_CACHE_KIB 8192
#define CW_SQ_MEMORY ":memory:"

#define CW_SQ_STR_(x) #x
#define CW_SQ_STRINGIFY(x) CW_SQ_STR_(x)

/* The WAL's size, in frames, past which the checkpoint thread of a store
 * with deferred durability copies it back into the database and has it
 * start over (see checkpoint() in store_sqlite_sync.c). */
#define CW_SQ_CHECKPOINT_FRAMES 16384
/* How long the checkpoint's restart pass waits for the write lock, and then
 * for readers of the WAL, before it gives up until the next checkpoint. */
#define CW_SQ_RESTART_WAIT_MS 20
/* Its passive passes, each followed by a sync of the database file that
 * holds no lock: at most this many, while more than CW_SQ_RESTART_FRAMES
 * frames are left for the restart pass, which holds the write lock. */
#define CW_SQ_PASSIVE_PASSES 3
#define CW_SQ_RESTART_FRAMES 1024
#define CW_SQ_CHECKPOINT_NICE 10 /* the checkpoint thread's nice value */

typedef struct cw_sq_sync cw_sq_sync;

typedef struct cw_sq_store {
    cw_store base; /* first: what cw_store_open hands out */
    sqlite3 *db;
    char *path; /* the file, or ":memory:"; for messages */
    sqlite3_stmt *st[CW_SQ_COUNT];
    bool sync_full;        /* durable commits fsync the WAL */
    bool synced_full;      /* the connection's current synchronous setting */
    int64_t sweep_after;   /* the sweep's next pass starts after this row id */
    int64_t busy_since_us; /* when the current wait for the write lock began */
    cw_sq_sync *sync;      /* deferred durability (store_sqlite_sync.c), or NULL */
} cw_sq_store;

/* The table of operations of the backend. */
extern const cw_store_ops cw__sq_ops;

/* Records SQLite's message for `op` and returns CW_STATUS_STORE. Call it
 * before resetting the failed statement. */
int cw__sq_fail(const cw_sq_store *q, const char *op);

/* Frees the store: its statements, its connection (rolling back an open
 * batch), its memory. */
void cw__sq_free(cw_store *s);

/* Deferred durability (framework/store_sqlite_sync.c): starts the threads
 * that fdatasync the WAL and checkpoint it for the store's connection (which
 * then checkpoints no more itself); stops them, making what was committed
 * durable first. */
int cw__sq_sync_start(cw_sq_store *q);
void cw__sq_sync_stop(cw_sq_store *q);

/* Asks for everything committed so far on q's connection to be made
 * durable; returns the mark cw__sq_durable() reaches once it is. */
uint64_t cw__sq_sync_request(cw_sq_store *q);
int cw__sq_durable(cw_store *s, uint64_t *mark);
int cw__sq_durable_fd(cw_store *s);

/* The VFS of a worker's store connection (framework/store_sqlite_vfs.c):
 * SQLite's default one, with each commit's WAL frames written at once.
 * cw__sq_vfs_ready() registers it (once, thread-safe) and says whether it
 * is there to be named in sqlite3_open_v2(). */
#define CW_SQ_VFS "cw-wal"
bool cw__sq_vfs_ready(void);

/* Stores one follow-up of task row `task_id` with statement `st`
 * (CW_SQ_FOLLOWUP_INSERT's text, prepared on `db`); `where` names the file
 * in the error. */
int cw__sq_followup_insert(sqlite3 *db, sqlite3_stmt *st, const cw_followup *f, int64_t task_id,
                           int64_t now_ms, const char *where);

#endif
