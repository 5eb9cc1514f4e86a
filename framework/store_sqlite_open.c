/* Opening a SQLite store: the file's directory, the connection and its
 * pragmas (WAL, the busy handler), the schema and its migration, the
 * prepared statements; and probing a file for config check. */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/types.h>
#include <time.h>

#include "framework/clock.h"
#include "framework/error.h"
#include "framework/log.h"
#include "framework/store_sqlite.h"

/* SQLite's busy handler: the workers of a host take turns at the write lock,
 * each for one batch's commit (well under a millisecond without the fsync).
 * sqlite3_busy_timeout() would sleep 1, 2, 5, 10... ms between tries, so a
 * waiting worker would idle for many of its neighbour's commits; this one
 * retries after 50 us, doubling up to 2 ms, for CW_SQ_BUSY_TIMEOUT_MS in all. */
static int sq_busy_wait(void *arg, int count)
{
    cw_sq_store *q = arg;
    int64_t now = cw__mono_ns() / 1000;
    if (count == 0)
        q->busy_since_us = now;
    if (now - q->busy_since_us >= (int64_t)CW_SQ_BUSY_TIMEOUT_MS * 1000)
        return 0;
    unsigned shift = count < 6 ? (unsigned)count : 6;
    struct timespec ts = {0, (50L << shift) * 1000L};
    nanosleep(&ts, NULL);
    return 1;
}

/* mkdir -p of the directory holding `path`. */
static int sq_mkdir_parent(const char *path)
{
    char *dir = strdup(path);
    if (!dir)
        return cw__error(CW_STATUS_NOMEM, "%s: out of memory", path);
    int rc = 0;
    char *slash = strrchr(dir, '/');
    if (!slash || slash == dir)
        goto out_free;
    *slash = '\0';
    for (char *p = dir + 1;; p++) {
        if (*p != '/' && *p != '\0')
            continue;
        char c = *p;
        *p = '\0';
        if (mkdir(dir, 0750) != 0 && errno != EEXIST) {
            int err = errno;
            rc = cw__error(CW_STATUS_STORE, "%s: cannot create directory %s: %s", path, dir,
                           strerror(err));
            goto out_free;
        }
        *p = c;
        if (c == '\0')
            break;
    }
out_free:
    free(dir);
    return rc;
}

static int sq_exec(const cw_sq_store *q, const char *sql, const char *op)
{
    return sqlite3_exec(q->db, sql, NULL, NULL, NULL) == SQLITE_OK ? 0 : cw__sq_fail(q, op);
}

/* Reads a one-value pragma as an integer. */
static int sq_pragma_int(const cw_sq_store *q, const char *sql, int *out)
{
    sqlite3_stmt *st;
    if (sqlite3_prepare_v2(q->db, sql, -1, &st, NULL) != SQLITE_OK)
        return cw__sq_fail(q, sql);
    int rc = sqlite3_step(st) == SQLITE_ROW ? 0 : cw__sq_fail(q, sql);
    if (rc == 0)
        *out = sqlite3_column_int(st, 0);
    sqlite3_finalize(st);
    return rc;
}

static int sq_configure(const cw_sq_store *q, bool memory, bool sync_full)
{
    if (!memory) {
        sqlite3_stmt *st;
        if (sqlite3_prepare_v2(q->db, "PRAGMA journal_mode = WAL", -1, &st, NULL) != SQLITE_OK)
            return cw__sq_fail(q, "journal_mode");
        int rc = 0;
        if (sqlite3_step(st) != SQLITE_ROW) {
            rc = cw__sq_fail(q, "journal_mode");
        } else {
            const char *mode = (const char *)sqlite3_column_text(st, 0);
            if (!mode || strcmp(mode, "wal") != 0)
                cw_log_warn(NULL,
                            "store %s: journal_mode is %s, not wal: writers will block readers",
                            q->path, mode ? mode : "unknown");
        }
        sqlite3_finalize(st);
        if (rc)
            return rc;
    }
    const char *const pragmas[] = {
        sync_full ? "PRAGMA synchronous = FULL" : "PRAGMA synchronous = NORMAL",
        "PRAGMA foreign_keys = OFF",
        "PRAGMA temp_store = MEMORY",
        "PRAGMA wal_autocheckpoint = 8192",
        "PRAGMA cache_size = -" CW_SQ_STRINGIFY(CW_SQ_CACHE_KIB), /* negative: KiB */
    };
    for (size_t i = 0; i < sizeof pragmas / sizeof *pragmas; i++) {
        int rc = sq_exec(q, pragmas[i], pragmas[i]);
        if (rc)
            return rc;
    }
    return 0;
}

/* Creates the schema on a new database; refuses one from a newer version. */
static int sq_migrate(const cw_sq_store *q)
{
    int version = 0;
    int rc = sq_pragma_int(q, "PRAGMA user_version", &version);
    if (rc || version == CW_SQ_SCHEMA_VERSION)
        return rc;
    /* Under the write lock, since other workers may be starting too. */
    rc = sq_exec(q, "BEGIN IMMEDIATE", "schema");
    if (rc)
        return rc;
    rc = sq_pragma_int(q, "PRAGMA user_version", &version);
    if (rc)
        goto out_rollback;
    if (version > CW_SQ_SCHEMA_VERSION) {
        rc = cw__error(CW_STATUS_STORE,
                       "%s: store schema version %d is newer than this compworker supports (%d)",
                       q->path, version, CW_SQ_SCHEMA_VERSION);
        goto out_rollback;
    }
    if (version < CW_SQ_SCHEMA_VERSION) {
        /* A file of version 2 has the follow-ups table without headers. */
        rc = version == 2 ? sq_exec(q, cw__sq_migrate_v2, "schema") : 0;
        if (rc == 0)
            rc = sq_exec(q, cw__sq_schema, "schema");
        if (rc == 0)
            rc = sq_exec(q, "PRAGMA user_version = " CW_SQ_STRINGIFY(CW_SQ_SCHEMA_VERSION),
                         "schema");
        if (rc)
            goto out_rollback;
    }
    return sq_exec(q, "COMMIT", "schema");

out_rollback:
    sqlite3_exec(q->db, "ROLLBACK", NULL, NULL, NULL);
    return rc;
}

static int sq_prepare(cw_sq_store *q)
{
    for (int i = 0; i < CW_SQ_COUNT; i++) {
        if (sqlite3_prepare_v3(q->db, cw__sq_sql[i], -1, SQLITE_PREPARE_PERSISTENT, &q->st[i],
                               NULL) != SQLITE_OK)
            return cw__sq_fail(q, "prepare");
    }
    return 0;
}

int cw__store_sqlite_open(cw_store **out, const cw_store_opts *opts)
{
    *out = NULL;
    if (!opts->path || !*opts->path)
        return cw__error(CW_STATUS_CONFIG, "store: sqlite: no path given");
    /* An owner must fit cw_claim.owner and cw_task_record.owner whole. */
    const size_t owner_max = sizeof((cw_claim *)NULL)->owner - 1;
    if (!opts->owner || !*opts->owner || strlen(opts->owner) > owner_max)
        return cw__error(CW_STATUS_CONFIG, "store: owner must be 1 to %zu bytes", owner_max);
    if (opts->lease_ms <= 0)
        return cw__error(CW_STATUS_CONFIG, "store: lease must be positive, not %lld ms",
                         (long long)opts->lease_ms);

    cw_sq_store *q = calloc(1, sizeof *q);
    if (!q)
        return cw__error(CW_STATUS_NOMEM, "%s: out of memory", opts->path);
    q->base.ops = &cw__sq_ops;
    q->base.lease_ms = opts->lease_ms;
    q->base.owner_alive = opts->owner_alive;
    q->base.owner_alive_data = opts->owner_alive_data;
    q->base.owner = strdup(opts->owner);
    q->path = strdup(opts->path);
    q->sync_full = opts->sync_full;
    q->synced_full = opts->sync_full;
    int rc;
    if (!q->base.owner || !q->path) {
        rc = cw__error(CW_STATUS_NOMEM, "%s: out of memory", opts->path);
        goto out_free;
    }

    bool memory = strcmp(q->path, CW_SQ_MEMORY) == 0;
    if (!memory) {
        rc = sq_mkdir_parent(q->path);
        if (rc)
            goto out_free;
    }
    /* A worker's connection writes each commit's WAL frames at once. */
    bool deferred = opts->deferred && opts->sync_full && !memory;
    rc = sqlite3_open_v2(q->path, &q->db,
                         SQLITE_OPEN_READWRITE | SQLITE_OPEN_CREATE | SQLITE_OPEN_NOMUTEX,
                         deferred && cw__sq_vfs_ready() ? CW_SQ_VFS : NULL);
    if (rc != SQLITE_OK) {
        rc = cw__error(CW_STATUS_STORE, "%s: cannot open: %s", q->path,
                       q->db ? sqlite3_errmsg(q->db) : sqlite3_errstr(rc));
        goto out_free;
    }
    sqlite3_busy_handler(q->db, sq_busy_wait, q);
    /* The prepared statements keep lookaside slots for good; a larger pool
     * (SQLite allocates it) leaves room for what a step allocates, which
     * would otherwise go to malloc() several times a message. */
    sqlite3_db_config(q->db, SQLITE_DBCONFIG_LOOKASIDE, NULL, 512, 1024);
    rc = sq_configure(q, memory, opts->sync_full);
    if (rc == 0)
        rc = sq_migrate(q);
    if (rc == 0)
        rc = sq_prepare(q);
    if (rc == 0 && deferred)
        rc = cw__sq_sync_start(q);
    if (rc)
        goto out_free;
    *out = &q->base;
    return 0;

out_free:
    cw__sq_free(&q->base);
    return rc;
}

int cw__store_sqlite_probe(const cw_store_opts *opts, char *out, size_t cap)
{
    if (!opts->path || !*opts->path)
        return cw__error(CW_STATUS_CONFIG, "store: sqlite: no path given");
    struct stat sb;
    if (stat(opts->path, &sb) != 0) {
        snprintf(out, cap, "%s does not exist yet (the first worker creates it)", opts->path);
        return 0;
    }
    sqlite3 *db = NULL;
    int rc = sqlite3_open_v2(opts->path, &db, SQLITE_OPEN_READONLY | SQLITE_OPEN_NOMUTEX, NULL);
    sqlite3_stmt *st = NULL;
    if (rc != SQLITE_OK ||
        sqlite3_prepare_v2(db, "PRAGMA user_version", -1, &st, NULL) != SQLITE_OK ||
        sqlite3_step(st) != SQLITE_ROW) {
        rc = cw__error(CW_STATUS_STORE, "%s: cannot read: %s", opts->path,
                       db ? sqlite3_errmsg(db) : sqlite3_errstr(rc));
        goto out_close;
    }
    int version = sqlite3_column_int(st, 0);
    if (version == 0)
        snprintf(out, cap, "%s exists, without a schema yet (the first worker creates it)",
                 opts->path);
    else if (version > CW_SQ_SCHEMA_VERSION)
        snprintf(out, cap,
                 "%s has schema version %d, newer than this compworker supports (%d): workers "
                 "will refuse it",
                 opts->path, version, CW_SQ_SCHEMA_VERSION);
    else
        snprintf(out, cap, "%s, schema version %d", opts->path, version);
    rc = 0;
out_close:
    sqlite3_finalize(st);
    sqlite3_close(db);
    return rc;
}
