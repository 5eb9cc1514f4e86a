/* order-saga example — the ledger the compensations are applied to.
 *
 * One SQLite file stands in for the payment, inventory and shipping systems
 * of the story. The three plugins and the demo publisher share it (WAL, with
 * a busy timeout, since several worker processes may write at once):
 *
 *   payments(payment_id PK, order_id, amount_cents, refunded_cents)
 *   stock(sku PK, on_hand)
 *   shipments(shipment_id PK, order_id, status 'booked'|'cancelled'|'delivered')
 *   effects(id PK AUTOINCREMENT, message_id, kind, order_id, detail, at)
 *
 * Every applied compensation adds one `effects` row naming the message that
 * caused it. `effects.message_id` is deliberately NOT unique: the ledger plays
 * a downstream system with no idempotency key of its own, so a task applied
 * twice would show as two rows. That compworker never lets it happen is what
 * the demo report checks. (A real system that accepts an idempotency key
 * should be given cw_task_message_id().)
 *
 * Where the ledger is the store's own SQLite file (`ledger = store`), each
 * compensation is written through cw_task_sqlite(), in the transaction that
 * records the task done: it commits exactly when the done record does, so a
 * worker killed at any moment never leaves it applied twice. Elsewhere (a
 * ledger of its own, or a PostgreSQL store) the plugins use a connection of
 * their own per handler thread, and a kill between their commit and the
 * store's may apply a compensation again.
 */
#ifndef ORDER_SAGA_LEDGER_H
#define ORDER_SAGA_LEDGER_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include <sqlite3.h>

#include <compworker/compworker.h>

/* Where the ledger is when nothing else says. */
#define LEDGER_DEFAULT_PATH "var/ledger.db"
/* The environment variable naming the ledger. */
#define LEDGER_ENV "ORDER_SAGA_LEDGER"
/* How long a writer waits for another one before SQLITE_BUSY, in ms. */
#define LEDGER_BUSY_TIMEOUT_MS 5000

/* The ledger path: `configured` when not NULL, else $ORDER_SAGA_LEDGER when
 * set and not empty, else LEDGER_DEFAULT_PATH. Borrowed (one of the inputs,
 * the environment or a literal). */
const char *ledger_path(const char *configured);

/* Opens (creating if needed) the ledger at `path`: busy timeout, WAL,
 * foreign-key-free schema created if absent. On success *out is an open
 * connection to close with sqlite3_close(). On failure *out is NULL, the
 * SQLite result code is returned and `err` (of `err_len` bytes) says why. */
int ledger_open(sqlite3 **out, const char *path, char *err, size_t err_len);

/* The ledger connections of a plugin whose handlers run on several threads
 * at once: one connection per handler thread (a SQLite connection holds one
 * transaction at a time), opened on the thread's first task. */
typedef struct ledger_pool ledger_pool;

/* The ledger setting that means "in the store's own SQLite file". */
#define LEDGER_IN_STORE "store"

/* For a plugin's cw_plugin_init(): the ledger named by the `ledger` setting
 * of the plugin's [plugin NAME] section (else as ledger_path()), opened once
 * here to create it and check it; or, for `ledger = store`, the store's
 * file, reached through each task's cw_task_sqlite(). `plugin` names the plugin in the error
 * line written to stderr (the worker's log) on failure. Returns 0 with *out
 * set, or -1. */
int ledger_open_for_plugin(cw_registry *reg, const char *plugin, ledger_pool **out);

/* Waits the `latency_ms` setting of the plugin's section (0 by default):
 * the demo's stand-in for the call to the downstream service (a payment
 * gateway) that a real compensation makes before it records its effect. */
void ledger_gateway_call(const ledger_pool *pool);

/* One task's ledger work: its connection, and who commits it. */
typedef struct ledger_tx {
    sqlite3 *db;
    bool in_store; /* compworker commits it with the task's done record */
} ledger_tx;

/* Begins the task's ledger work: in the store's transaction (cw_task_sqlite)
 * for `ledger = store`, else BEGIN IMMEDIATE on this thread's connection
 * (opened on its first call). SQLITE_OK, or an SQLite result code with the
 * reason in `err`. Thread-safe. */
int ledger_start(ledger_pool *pool, cw_task *task, ledger_tx *tx, char *err, size_t err_len);

/* Ends it when the compensation is applied: COMMIT on the plugin's own
 * connection (on failure rolled back); nothing in the store's transaction,
 * which compworker commits once the handler returns CW_OK. */
int ledger_finish(ledger_tx *tx);

/* Ends it without applying anything: ROLLBACK on the plugin's own
 * connection; nothing in the store's transaction, which compworker rolls
 * back for any outcome but CW_OK. */
void ledger_abandon(ledger_tx *tx);

/* A cw_teardown_fn closing every connection of the pool given as user data. */
void ledger_teardown(void *pool);

/* Runs SQL text without results (a literal, never built from input). */
int ledger_exec(sqlite3 *db, const char *sql);

/* BEGIN IMMEDIATE: takes the write lock up front, so a transaction never has
 * to upgrade a read lock (which SQLite cannot wait for). For the plugin's
 * own connection and the demo's tools only: in the store's transaction
 * compworker refuses it. */
int ledger_begin(sqlite3 *db);

/* COMMIT; on failure the transaction is rolled back. */
int ledger_commit(sqlite3 *db);

/* ROLLBACK, if a transaction is open. */
void ledger_rollback(sqlite3 *db);

/* Appends an effects row stamped with the current UTC time. */
int ledger_add_effect(sqlite3 *db, const char *message_id, const char *kind, const char *order_id,
                      const char *detail);

/* The outcome of a task whose ledger work failed with SQLite result `rc`
 * during `what` ("read", "update", ...): cw_task_retry() for a transient
 * condition (ledger_transient()), else cw_task_fail(). Call it before rolling
 * back, so the reason carries SQLite's own message. */
cw_outcome ledger_failure(cw_task *task, sqlite3 *db, int rc, const char *what);

/* Whether a SQLite result code is worth trying again later (busy, locked,
 * disk full, I/O error) rather than a fault of the task. */
bool ledger_transient(int rc);

/* The string member `key` of `obj`, or NULL when it is absent, not a string
 * or empty. Borrowed from `obj`. */
const char *ledger_field_string(struct json_object *obj, const char *key);

/* The integer member `key` of `obj` into *out when it is present, an integer
 * (not a float or a string) and between 1 and `max`. */
bool ledger_field_count(struct json_object *obj, const char *key, int64_t max, int64_t *out);

#endif
