/* A handler thread's transaction on the SQLite store (cw_task_sqlite).
 *
 * The thread has a connection of its own to the store's file, opened as the
 * store is (WAL, the busy handler, the schema checked). A task's transaction
 * is BEGIN IMMEDIATE, then its claim taken as done; the handler's writes
 * follow on the same connection; its follow-ups and the COMMIT come after it
 * returned done, a ROLLBACK otherwise. While the handler holds it, an
 * authorizer refuses every statement that would begin, commit or end a
 * transaction (savepoints stay allowed: they nest inside it), and notes the
 * try so that the task fails with the reason. */
#include <sqlite3.h>
#include <stdlib.h>
#include <string.h>

#include "framework/error.h"
#include "framework/store_sqlite.h"

typedef struct sq_tx {
    cw_store_tx base;
    cw_sq_store *q; /* the thread's own connection, as a store */
    bool open;
    bool guard;   /* the handler holds the connection */
    bool refused; /* the authorizer refused a transaction statement of the handler's */
} sq_tx;

static sq_tx *tx_of(cw_store_tx *tx)
{
    return (sq_tx *)tx;
}

static int sq_tx_authorize(void *ud, int action, const char *a, const char *b, const char *c,
                           const char *d)
{
    (void)a, (void)b, (void)c, (void)d;
    sq_tx *x = ud;
    if (x->guard && action == SQLITE_TRANSACTION) {
        x->refused = true;
        return SQLITE_DENY;
    }
    return SQLITE_OK;
}

static int sq_tx_fail(sq_tx *x, sqlite3_stmt *st, const char *op)
{
    int rc = cw__error(CW_STATUS_STORE, "%s: handler transaction: %s: %s", x->q->path, op,
                       sqlite3_errmsg(x->q->db));
    if (st)
        sqlite3_reset(st);
    return rc;
}

static int sq_tx_step(sq_tx *x, int stmt, const char *op)
{
    sqlite3_stmt *st = x->q->st[stmt];
    if (sqlite3_step(st) != SQLITE_DONE)
        return sq_tx_fail(x, st, op);
    sqlite3_reset(st);
    sqlite3_clear_bindings(st);
    return 0;
}

static void sq_tx_rollback(cw_store_tx *tx)
{
    sq_tx *x = tx_of(tx);
    x->guard = false;
    if (!sqlite3_get_autocommit(x->q->db))
        sqlite3_exec(x->q->db, "ROLLBACK", NULL, NULL, NULL);
    x->open = false;
    x->refused = false;
}

static int sq_tx_begin(cw_store_tx *tx, int64_t ticket, int64_t now_ms)
{
    sq_tx *x = tx_of(tx);
    if (x->open)
        sq_tx_rollback(tx);
    x->refused = false;
    int rc = sq_tx_step(x, CW_SQ_BEGIN, "begin");
    if (rc)
        return rc;
    sqlite3_stmt *st = x->q->st[CW_SQ_TX_TAKE];
    if (sqlite3_bind_int64(st, 1, ticket) != SQLITE_OK ||
        sqlite3_bind_text(st, 2, tx->owner, -1, SQLITE_STATIC) != SQLITE_OK ||
        sqlite3_bind_int64(st, 3, now_ms) != SQLITE_OK)
        rc = sq_tx_fail(x, st, "taking the claim");
    else
        rc = sq_tx_step(x, CW_SQ_TX_TAKE, "taking the claim");
    if (rc == 0 && sqlite3_changes(x->q->db) != 1)
        rc = cw__error(CW_STATUS_EXISTS,
                       "%s: handler transaction: the task's claim is no longer this worker's "
                       "(its lease ran out and another worker took it)",
                       x->q->path);
    if (rc) {
        sqlite3_exec(x->q->db, "ROLLBACK", NULL, NULL, NULL);
        return rc;
    }
    x->open = true;
    return 0;
}

static cw_tx_state sq_tx_state(cw_store_tx *tx)
{
    sq_tx *x = tx_of(tx);
    if (!x->open)
        return CW_TX_NONE;
    if (x->refused)
        return CW_TX_MISUSED;
    /* An error that rolls a whole transaction back (a full disk, an I/O
     * error) leaves the connection in autocommit mode. */
    if (sqlite3_get_autocommit(x->q->db))
        return CW_TX_ENDED;
    return CW_TX_OPEN;
}

static int sq_tx_commit(cw_store_tx *tx, const cw_followup *f, size_t n)
{
    sq_tx *x = tx_of(tx);
    x->guard = false;
    cw_tx_state state = sq_tx_state(tx);
    if (state != CW_TX_OPEN) {
        sq_tx_rollback(tx);
        return cw__error(CW_STATUS_STORE, "%s: handler transaction: %s", x->q->path,
                         state == CW_TX_MISUSED ? "the handler tried to end it"
                                                : "it was rolled back by an error");
    }
    int rc = 0;
    for (size_t i = 0; i < n && rc == 0; i++)
        rc = cw__sq_followup_insert(x->q->db, x->q->st[CW_SQ_FOLLOWUP_INSERT], &f[i], tx->ticket,
                                    tx->now_ms, x->q->path);
    if (rc) {
        sq_tx_rollback(tx);
        return rc;
    }
    if (sqlite3_step(x->q->st[CW_SQ_COMMIT]) != SQLITE_DONE) {
        /* Whether a failed COMMIT left anything on disk is not known here:
         * the caller treats the task as unsettled (redelivered, and then a
         * duplicate or run again, as the file says). */
        rc = cw__error(CW_STATUS_STORE_UNAVAILABLE, "%s: handler transaction: commit: %s",
                       x->q->path, sqlite3_errmsg(x->q->db));
        sqlite3_reset(x->q->st[CW_SQ_COMMIT]);
        sq_tx_rollback(tx);
        return rc;
    }
    sqlite3_reset(x->q->st[CW_SQ_COMMIT]);
    x->open = false;
    return 0;
}

static void sq_tx_guard(cw_store_tx *tx, bool on)
{
    tx_of(tx)->guard = on;
}

static const char *sq_tx_error(cw_store_tx *tx)
{
    return sqlite3_errmsg(tx_of(tx)->q->db);
}

static void sq_tx_free(cw_store_tx *tx)
{
    sq_tx *x = tx_of(tx);
    sq_tx_rollback(tx);
    cw__sq_free(&x->q->base);
    free(tx->owner);
    free(x);
}

static const cw_store_tx_ops sq_tx_ops = {
    .begin = sq_tx_begin,
    .commit = sq_tx_commit,
    .rollback = sq_tx_rollback,
    .state = sq_tx_state,
    .guard = sq_tx_guard,
    .error = sq_tx_error,
    .free = sq_tx_free,
};

int cw__store_sqlite_tx_new(cw_store_tx **out, const cw_store_opts *opts)
{
    if (opts->path && strcmp(opts->path, CW_SQ_MEMORY) == 0)
        return cw__error(CW_STATUS_INVALID_ARG,
                         "store: an in-memory SQLite store has no file a handler can share");
    sq_tx *x = calloc(1, sizeof *x);
    if (!x)
        return cw__error(CW_STATUS_NOMEM, "store: out of memory");
    cw_store *s;
    int rc = cw__store_sqlite_open(&s, opts);
    if (rc) {
        free(x);
        return rc;
    }
    x->q = (cw_sq_store *)s;
    x->base.ops = &sq_tx_ops;
    x->base.backend = "sqlite";
    x->base.handle = x->q->db;
    x->base.owner = strdup(opts->owner);
    if (!x->base.owner) {
        cw__sq_free(s);
        free(x);
        return cw__error(CW_STATUS_NOMEM, "store: out of memory");
    }
    sqlite3_set_authorizer(x->q->db, sq_tx_authorize, x);
    *out = &x->base;
    return 0;
}
