/* A handler thread's transaction on the PostgreSQL store (cw_task_pg).
 *
 * The thread has a session of its own to the store's database (it neither
 * migrates the schema nor beats as a worker). A task's transaction is BEGIN,
 * then its claim taken as done with a mark (unsettled = -1) that the
 * deferred trigger cw_tx_guard checks at COMMIT; the handler's writes follow
 * on the same session. When the handler returned done, compworker takes the
 * mark off, allows the commit in the transaction's settings, stores the
 * follow-ups and commits; otherwise it rolls back. A COMMIT the handler sends
 * itself meets the mark without the setting and fails, so nothing of it
 * commits; a ROLLBACK ends the transaction, which compworker sees; a BEGIN
 * inside it draws the server's warning (SQLSTATE 25001), which a notice
 * receiver catches. Either way the task fails with the reason. Outside
 * its transactions the session is read-only, so that what a handler writes
 * after ending the transaction fails rather than commits on its own. */
#include <inttypes.h>
#include <libpq-fe.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "framework/error.h"
#include "framework/store_pg.h"

typedef struct pg_tx {
    cw_store_tx base;
    cw_pg_store q; /* the session, as the store's code knows one */
    bool open;
    bool guard;
    bool misused;       /* the handler sent a BEGIN inside the transaction */
    PGconn *configured; /* the session the settings below were made on */
    char error[512];
} pg_tx;

static pg_tx *tx_of(cw_store_tx *tx)
{
    return (pg_tx *)tx;
}

static void pg_tx_notice(void *arg, const PGresult *res)
{
    pg_tx *x = arg;
    const char *st = PQresultErrorField(res, PG_DIAG_SQLSTATE);
    if (x->guard && st && strcmp(st, "25001") == 0)
        x->misused = true;
}

/* Runs a command without parameters on the session; 0 or the status. */
static int pg_tx_command(pg_tx *x, const char *sql, const char *op)
{
    return cw__pg_command(&x->q, sql, op);
}

static void pg_tx_rollback(cw_store_tx *tx)
{
    pg_tx *x = tx_of(tx);
    x->guard = false;
    if (x->q.conn && !x->q.lost && PQtransactionStatus(x->q.conn) != PQTRANS_IDLE)
        PQclear(PQexec(x->q.conn, "ROLLBACK"));
    x->open = false;
    x->misused = false;
}

static int pg_tx_begin(cw_store_tx *tx, int64_t ticket, int64_t now_ms)
{
    pg_tx *x = tx_of(tx);
    if (x->open)
        pg_tx_rollback(tx);
    x->misused = false;
    /* The handler may have met a broken session that the store's own code
     * has not seen. */
    if (x->q.conn && PQstatus(x->q.conn) != CONNECTION_OK)
        x->q.lost = true;
    int rc = cw__pg_ready(&x->q);
    if (rc)
        return rc;
    tx->handle = x->q.conn;
    if (x->configured != x->q.conn) {
        /* Outside compworker's own transactions the session only reads: a
         * handler that ended the transaction cannot write on in autocommit
         * mode (its writes fail instead of committing on their own). */
        PQsetNoticeReceiver(x->q.conn, pg_tx_notice, x);
        if ((rc = pg_tx_command(x, "SET default_transaction_read_only = on",
                                "handler transaction: configuring the session")))
            return rc;
        x->configured = x->q.conn;
    }
    if ((rc = pg_tx_command(x, "BEGIN READ WRITE", "handler transaction: begin")))
        return rc;
    char id[24], now[24];
    snprintf(id, sizeof id, "%" PRId64, ticket);
    snprintf(now, sizeof now, "%" PRId64, now_ms);
    const char *values[3] = {id, tx->owner, now};
    PGresult *res = cw__pg_exec(&x->q, CW_PG_TX_TAKE, 3, values);
    if (!res || PQresultStatus(res) != PGRES_COMMAND_OK) {
        rc = cw__pg_fail(&x->q, res, "handler transaction: taking the claim");
        pg_tx_rollback(tx);
        return rc;
    }
    bool took = strcmp(PQcmdTuples(res), "1") == 0;
    PQclear(res);
    if (!took) {
        pg_tx_rollback(tx);
        return cw__error(CW_STATUS_EXISTS,
                         "store %s: handler transaction: the task's claim is no longer this "
                         "worker's (its lease ran out and another worker took it)",
                         x->q.label);
    }
    x->open = true;
    return 0;
}

static cw_tx_state pg_tx_state(cw_store_tx *tx)
{
    pg_tx *x = tx_of(tx);
    if (!x->open)
        return CW_TX_NONE;
    if (x->misused)
        return CW_TX_MISUSED;
    switch (x->q.conn ? PQtransactionStatus(x->q.conn) : PQTRANS_UNKNOWN) {
    case PQTRANS_INTRANS: return CW_TX_OPEN;
    case PQTRANS_INERROR: return CW_TX_FAILED;
    case PQTRANS_IDLE: return CW_TX_MISUSED; /* only a COMMIT or ROLLBACK of the handler's */
    default: return CW_TX_ENDED;             /* the session broke: the server rolls back */
    }
}

static int pg_tx_commit(cw_store_tx *tx, const cw_followup *f, size_t n)
{
    pg_tx *x = tx_of(tx);
    x->guard = false;
    cw_tx_state state = pg_tx_state(tx);
    if (state != CW_TX_OPEN) {
        pg_tx_rollback(tx);
        return cw__error(CW_STATUS_STORE, "store %s: handler transaction: %s", x->q.label,
                         state == CW_TX_MISUSED  ? "the handler tried to begin or end it"
                         : state == CW_TX_FAILED ? "a statement in it failed"
                                                 : "the session to the server broke");
    }
    cw_pg_buf b[CW_PG_FOLLOWUP_ARRAYS] = {{0}};
    for (int k = 0; k < CW_PG_FOLLOWUP_ARRAYS; k++)
        cw__pg_buf_reset(&b[k]);
    cw__pg_followup_arrays(b, f, n);
    char id[24], now[24];
    snprintf(id, sizeof id, "%" PRId64, tx->ticket);
    snprintf(now, sizeof now, "%" PRId64, tx->now_ms);
    const char *values[3 + CW_PG_FOLLOWUP_ARRAYS] = {id, tx->owner, now};
    int rc = 0;
    for (int k = 0; k < CW_PG_FOLLOWUP_ARRAYS; k++) {
        if (!(values[3 + k] = cw__pg_array_end(&b[k])))
            rc = cw__error(CW_STATUS_NOMEM, "store %s: handler transaction: out of memory",
                           x->q.label);
    }
    PGresult *res = rc ? NULL
                       : cw__pg_exec(&x->q, CW_PG_TX_COMMIT, 3 + CW_PG_FOLLOWUP_ARRAYS, values);
    for (int k = 0; k < CW_PG_FOLLOWUP_ARRAYS; k++)
        cw__pg_buf_free(&b[k]);
    if (rc == 0 && (!res || PQresultStatus(res) != PGRES_TUPLES_OK)) {
        rc = cw__pg_fail(&x->q, res, "handler transaction: storing the outcome");
        res = NULL;
        if (rc == CW_STATUS_STORE_UNAVAILABLE)
            rc = CW_STATUS_STORE; /* nothing was committed: the server rolls back */
    } else if (rc == 0 && strcmp(PQgetvalue(res, 0, 0), "1") != 0) {
        rc = cw__error(CW_STATUS_STORE,
                       "store %s: handler transaction: the claim's done record is gone (the "
                       "handler ended the transaction and began another)",
                       x->q.label);
    }
    PQclear(res);
    if (rc) {
        pg_tx_rollback(tx);
        return rc;
    }
    res = PQexec(x->q.conn, "COMMIT");
    if (!res || PQresultStatus(res) != PGRES_COMMAND_OK || strcmp(PQcmdStatus(res), "COMMIT")) {
        /* A session that broke during COMMIT leaves its outcome unknown
         * (CW_STATUS_STORE_UNAVAILABLE); a COMMIT the server refused
         * committed nothing. */
        rc = cw__pg_fail(&x->q, res, "handler transaction: commit");
        if (rc == CW_STATUS_STORE && x->q.conn && PQtransactionStatus(x->q.conn) != PQTRANS_IDLE)
            PQclear(PQexec(x->q.conn, "ROLLBACK"));
        x->open = false;
        return rc;
    }
    PQclear(res);
    x->open = false;
    return 0;
}

static void pg_tx_guard(cw_store_tx *tx, bool on)
{
    tx_of(tx)->guard = on;
}

static const char *pg_tx_error(cw_store_tx *tx)
{
    pg_tx *x = tx_of(tx);
    cw__pg_scrub(&x->q, x->q.conn ? PQerrorMessage(x->q.conn) : "", x->error, sizeof x->error);
    return x->error;
}

static void pg_tx_free(cw_store_tx *tx)
{
    pg_tx *x = tx_of(tx);
    pg_tx_rollback(tx);
    cw__pg_close(&x->q); /* frees the owner too */
    free(x);
}

static const cw_store_tx_ops pg_tx_ops = {
    .begin = pg_tx_begin,
    .commit = pg_tx_commit,
    .rollback = pg_tx_rollback,
    .state = pg_tx_state,
    .guard = pg_tx_guard,
    .error = pg_tx_error,
    .free = pg_tx_free,
};

int cw__store_pg_tx_new(cw_store_tx **out, const cw_store_opts *opts)
{
    if (!opts->url || !*opts->url)
        return cw__error(CW_STATUS_CONFIG, "[store] url: required with backend = postgresql");
    if (!opts->owner || !*opts->owner)
        return cw__error(CW_STATUS_CONFIG, "store: owner required");
    pg_tx *x = calloc(1, sizeof *x);
    if (!x)
        return cw__error(CW_STATUS_NOMEM, "store: out of memory");
    x->q.tx_only = true;
    x->q.base.owner = strdup(opts->owner);
    cw_store_opts o = *opts;
    o.heartbeat = false;
    int rc = x->q.base.owner ? cw__pg_open_conn(&x->q, &o)
                             : cw__error(CW_STATUS_NOMEM, "store: out of memory");
    if (rc) {
        cw__pg_close(&x->q);
        free(x);
        return rc;
    }
    x->base.ops = &pg_tx_ops;
    x->base.backend = "postgresql";
    x->base.owner = x->q.base.owner;
    x->base.handle = x->q.conn;
    *out = &x->base;
    return 0;
}
