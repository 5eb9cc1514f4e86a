/* Internal to the PostgreSQL store backend: its state and what its files
 * share. framework/store_pg_conn.c holds the connection (connecting,
 * reconnecting after a lost server, the schema and its migration, the
 * heartbeat thread, messages without credentials); framework/store_pg.c the
 * operations of the store interface.
 *
 * A store object is one connection for its operations, used from one thread
 * at a time, plus, with cw_store_opts.heartbeat, a thread of its own with a
 * second connection that keeps the owner's heartbeat row fresh. Open it after
 * fork(), never across one. */
#ifndef CW_FRAMEWORK_STORE_PG_H
#define CW_FRAMEWORK_STORE_PG_H

#include <libpq-fe.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "framework/pg.h"
#include "framework/store.h"
#include "framework/store_pg_sql.h"

/* How often a worker's heartbeat row is refreshed, and how old it may be
 * before its claims are taken over (a lost host). */
#define CW_PG_HEARTBEAT_MS 2000
#define CW_PG_STALE_MS 10000

typedef struct cw_pg_store {
    cw_store base;          /* first: what cw_store_open hands out */
    PGconn *conn;           /* NULL while the server is away */
    char *url;              /* as given: may hold a password, never shown */
    char *label;            /* the server as messages name it, no password */
    char *password;         /* what must never appear in a message, or NULL */
    char *schema;           /* as configured, unquoted */
    char *sql[CW_PG_COUNT]; /* statement texts with the schema quoted in */
    bool in_batch;          /* inside cw_store_begin() .. commit/rollback */
    bool lost;              /* the connection broke: reconnect before the next use */
    bool tx_only;           /* a handler thread's connection (store_pg_tx.c): it
                               neither migrates nor registers as a worker */
    char owner_pid[16];

    /* the heartbeat thread (opts.heartbeat) */
    pthread_t beat;
    bool beat_running;
    pthread_mutex_t beat_mu;
    pthread_cond_t beat_cv;
    bool beat_stop;
    atomic_bool beat_ok; /* the last beat reached the server */
} cw_pg_store;

/* Fills `q` from `opts` (URL, schema), connects, creates or migrates the
 * schema and, with opts->heartbeat, starts the heartbeat thread. On failure
 * the caller frees what was set with cw__pg_close(). */
int cw__pg_open_conn(cw_pg_store *q, const cw_store_opts *opts);

/* Connects (or reconnects) the store's connection: session settings, the
 * prepared statements, and, when `migrate`, the schema under the migration
 * lock. 0; CW_STATUS_STORE_UNAVAILABLE when the server does not answer;
 * CW_STATUS_STORE when it answers but refuses (authentication, a newer
 * schema, missing rights), with the reason in cw_error_last(). */
int cw__pg_connect(cw_pg_store *q, bool migrate);

/* Makes sure the connection is up before an operation (reconnecting after
 * a loss); the status of cw__pg_connect otherwise. */
int cw__pg_ready(cw_pg_store *q);

/* Turns a failed result (or a NULL one) of `op` into a status with the
 * server's message: CW_STATUS_STORE_UNAVAILABLE when the connection is lost
 * (the store reconnects at its next use), CW_STATUS_STORE otherwise. Clears
 * `res`. */
int cw__pg_fail(cw_pg_store *q, PGresult *res, const char *op);

/* Whether a failed result is worth running again at once: a deadlock or a
 * serialization failure (SQLSTATE 40P01, 40001). */
bool cw__pg_retryable(const PGresult *res);

/* Runs prepared statement `stmt` with text parameters (NULL = SQL NULL);
 * returns the result (check PQresultStatus) or NULL when the connection is
 * down. */
PGresult *cw__pg_exec(cw_pg_store *q, int stmt, int nparams, const char *const *values);

/* Runs a statement without parameters; 0 or the status of cw__pg_fail. */
int cw__pg_command(cw_pg_store *q, const char *sql, const char *op);

/* Starts / stops the heartbeat thread. */
int cw__pg_beat_start(cw_pg_store *q);
void cw__pg_beat_stop(cw_pg_store *q);

/* Copies a server message into out as one line, without the password. */
void cw__pg_scrub(const cw_pg_store *q, const char *msg, char *out, size_t cap);

/* Closes the connection and frees the store's own memory. */
void cw__pg_close(cw_pg_store *q);

/* Appends the follow-ups' message IDs, saga IDs, types, exchanges, routing
 * keys, bodies and headers to b[0..6], one element each (framework/pg.h's arrays). */
#define CW_PG_FOLLOWUP_ARRAYS 7 /* and headers */
void cw__pg_followup_arrays(cw_pg_buf b[CW_PG_FOLLOWUP_ARRAYS], const cw_followup *f, size_t n);

#endif
