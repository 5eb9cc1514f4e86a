/* order-saga example — the shared ledger (see ledger.h). */
#include "ledger.h"

#include <errno.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <json-c/json.h>

static const char ledger_schema[] =
    "CREATE TABLE IF NOT EXISTS payments ("
    "  payment_id TEXT PRIMARY KEY,"
    "  order_id TEXT NOT NULL,"
    "  amount_cents INTEGER NOT NULL CHECK (amount_cents >= 0),"
    "  refunded_cents INTEGER NOT NULL DEFAULT 0"
    "    CHECK (refunded_cents BETWEEN 0 AND amount_cents));"
    "CREATE TABLE IF NOT EXISTS stock ("
    "  sku TEXT PRIMARY KEY,"
    "  on_hand INTEGER NOT NULL);"
    "CREATE TABLE IF NOT EXISTS shipments ("
    "  shipment_id TEXT PRIMARY KEY,"
    "  order_id TEXT NOT NULL,"
    "  status TEXT NOT NULL CHECK (status IN ('booked', 'cancelled', 'delivered')));"
    "CREATE TABLE IF NOT EXISTS effects ("
    "  id INTEGER PRIMARY KEY AUTOINCREMENT,"
    "  message_id TEXT NOT NULL,"
    "  kind TEXT NOT NULL,"
    "  order_id TEXT NOT NULL,"
    "  detail TEXT NOT NULL,"
    "  at TEXT NOT NULL);"
    "CREATE INDEX IF NOT EXISTS effects_message_id ON effects (message_id);";

const char *ledger_path(const char *configured)
{
    const char *env;

    if (configured != NULL)
        return configured;
    env = getenv(LEDGER_ENV);
    if (env != NULL && env[0] != '\0')
        return env;
    return LEDGER_DEFAULT_PATH;
}

int ledger_open(sqlite3 **out, const char *path, char *err, size_t err_len)
{
    sqlite3 *db = NULL;
    char *msg = NULL;
    int rc;

    *out = NULL;
    rc = sqlite3_open_v2(path, &db, SQLITE_OPEN_READWRITE | SQLITE_OPEN_CREATE, NULL);
    if (rc != SQLITE_OK) {
        snprintf(err, err_len, "cannot open %s: %s", path,
                 db != NULL ? sqlite3_errmsg(db) : sqlite3_errstr(rc));
        goto out_close;
    }
    sqlite3_busy_timeout(db, LEDGER_BUSY_TIMEOUT_MS);
    sqlite3_extended_result_codes(db, 1);

    /* journal_mode answers with a row; only the mode change matters here. */
    rc = sqlite3_exec(db, "PRAGMA journal_mode = WAL", NULL, NULL, &msg);
    if (rc == SQLITE_OK)
        rc = sqlite3_exec(db, "PRAGMA synchronous = FULL", NULL, NULL, &msg);
    if (rc == SQLITE_OK)
        rc = ledger_begin(db);
    if (rc == SQLITE_OK) {
        rc = sqlite3_exec(db, ledger_schema, NULL, NULL, &msg);
        if (rc == SQLITE_OK)
            rc = ledger_commit(db);
        else
            ledger_rollback(db);
    }
    if (rc != SQLITE_OK) {
        snprintf(err, err_len, "cannot prepare %s: %s", path,
                 msg != NULL ? msg : sqlite3_errmsg(db));
        goto out_free_msg;
    }
    *out = db;
    return SQLITE_OK;

out_free_msg:
    sqlite3_free(msg);
out_close:
    sqlite3_close(db);
    return rc != SQLITE_OK ? rc : SQLITE_ERROR;
}

struct ledger_pool {
    bool in_store; /* ledger = store: through cw_task_sqlite() */
    long latency_ms;
    char *path;
    pthread_key_t key;    /* this thread's connection */
    pthread_mutex_t lock; /* all[] */
    sqlite3 **all;        /* every connection opened, to close at teardown */
    size_t n, cap;
};

int ledger_open_for_plugin(cw_registry *reg, const char *plugin, ledger_pool **out)
{
    const char *path = ledger_path(cw_registry_setting(reg, "ledger", NULL));
    char err[512];
    sqlite3 *db;

    *out = NULL;
    const char *latency = cw_registry_setting(reg, "latency_ms", "0");
    char *end;
    long latency_ms = strtol(latency, &end, 10);
    if (*latency == '\0' || *end != '\0' || latency_ms < 0 || latency_ms > 60000) {
        fprintf(stderr, "%s: latency_ms must be a number of milliseconds up to 60000, not '%s'\n",
                plugin, latency);
        return -1;
    }
    if (strcmp(path, LEDGER_IN_STORE) == 0) {
        ledger_pool *p = calloc(1, sizeof *p);
        if (p == NULL) {
            fprintf(stderr, "%s: ledger: out of memory\n", plugin);
            return -1;
        }
        p->in_store = true;
        p->latency_ms = latency_ms;
        pthread_mutex_init(&p->lock, NULL);
        *out = p;
        return 0;
    }
    if (ledger_open(&db, path, err, sizeof err) != SQLITE_OK) {
        fprintf(stderr, "%s: ledger: %s\n", plugin, err);
        return -1;
    }
    sqlite3_close(db); /* created and checked; the handler threads open their own */
    ledger_pool *p = calloc(1, sizeof *p);
    if (p == NULL || (p->path = strdup(path)) == NULL || pthread_key_create(&p->key, NULL) != 0) {
        fprintf(stderr, "%s: ledger: out of memory\n", plugin);
        if (p != NULL)
            free(p->path);
        free(p);
        return -1;
    }
    pthread_mutex_init(&p->lock, NULL);
    p->latency_ms = latency_ms;
    *out = p;
    return 0;
}

void ledger_gateway_call(const ledger_pool *p)
{
    struct timespec ts = {.tv_sec = p->latency_ms / 1000,
                          .tv_nsec = (p->latency_ms % 1000) * 1000000L};
    while (nanosleep(&ts, &ts) != 0 && errno == EINTR)
        ;
}

/* This thread's own connection (opened on its first call), or NULL with the
 * reason in `err`. */
static sqlite3 *ledger_db(ledger_pool *p, char *err, size_t err_len)
{
    sqlite3 *db = pthread_getspecific(p->key);
    if (db != NULL)
        return db;
    if (ledger_open(&db, p->path, err, err_len) != SQLITE_OK)
        return NULL;
    pthread_mutex_lock(&p->lock);
    if (p->n == p->cap) {
        size_t cap = p->cap ? 2 * p->cap : 8;
        sqlite3 **grown = realloc(p->all, cap * sizeof *grown);
        if (grown == NULL) {
            pthread_mutex_unlock(&p->lock);
            sqlite3_close(db);
            snprintf(err, err_len, "out of memory");
            return NULL;
        }
        p->all = grown;
        p->cap = cap;
    }
    p->all[p->n++] = db;
    pthread_mutex_unlock(&p->lock);
    pthread_setspecific(p->key, db);
    return db;
}

/* Whether this handler thread made the ledger's tables in the store's file. */
static __thread bool store_schema_ready;

int ledger_start(ledger_pool *p, cw_task *task, ledger_tx *tx, char *err, size_t err_len)
{
    int rc;

    tx->in_store = p->in_store;
    if (p->in_store) {
        tx->db = cw_task_sqlite(task);
        if (tx->db == NULL) {
            snprintf(err, err_len, "ledger = store needs the sqlite store's transaction: %s",
                     cw_error_last());
            return SQLITE_ERROR;
        }
        /* Inside the transaction, under the file's write lock. */
        if (!store_schema_ready) {
            rc = sqlite3_exec(tx->db, ledger_schema, NULL, NULL, NULL);
            if (rc != SQLITE_OK) {
                snprintf(err, err_len, "creating the ledger's tables: %s", sqlite3_errmsg(tx->db));
                return rc;
            }
            store_schema_ready = true;
        }
        return SQLITE_OK;
    }
    tx->db = ledger_db(p, err, err_len);
    if (tx->db == NULL)
        return SQLITE_CANTOPEN;
    rc = ledger_begin(tx->db);
    if (rc != SQLITE_OK)
        snprintf(err, err_len, "begin: %s", sqlite3_errmsg(tx->db));
    return rc;
}

int ledger_finish(ledger_tx *tx)
{
    return tx->in_store ? SQLITE_OK : ledger_commit(tx->db);
}

void ledger_abandon(ledger_tx *tx)
{
    if (!tx->in_store)
        ledger_rollback(tx->db);
}

void ledger_teardown(void *pool)
{
    ledger_pool *p = pool;
    for (size_t i = 0; i < p->n; i++)
        sqlite3_close(p->all[i]);
    if (!p->in_store)
        pthread_key_delete(p->key);
    pthread_mutex_destroy(&p->lock);
    free(p->all);
    free(p->path);
    free(p);
}

int ledger_exec(sqlite3 *db, const char *sql)
{
    return sqlite3_exec(db, sql, NULL, NULL, NULL);
}

int ledger_begin(sqlite3 *db)
{
    return ledger_exec(db, "BEGIN IMMEDIATE");
}

int ledger_commit(sqlite3 *db)
{
    int rc = ledger_exec(db, "COMMIT");

    if (rc != SQLITE_OK)
        ledger_rollback(db);
    return rc;
}

void ledger_rollback(sqlite3 *db)
{
    if (!sqlite3_get_autocommit(db))
        (void)ledger_exec(db, "ROLLBACK");
}

int ledger_add_effect(sqlite3 *db, const char *message_id, const char *kind, const char *order_id,
                      const char *detail)
{
    static const char sql[] = "INSERT INTO effects (message_id, kind, order_id, detail, at)"
                              " VALUES (?1, ?2, ?3, ?4, strftime('%Y-%m-%dT%H:%M:%fZ', 'now'))";
    sqlite3_stmt *st;
    int rc = sqlite3_prepare_v2(db, sql, -1, &st, NULL);

    if (rc != SQLITE_OK)
        return rc;
    sqlite3_bind_text(st, 1, message_id, -1, SQLITE_STATIC);
    sqlite3_bind_text(st, 2, kind, -1, SQLITE_STATIC);
    sqlite3_bind_text(st, 3, order_id, -1, SQLITE_STATIC);
    sqlite3_bind_text(st, 4, detail, -1, SQLITE_STATIC);
    rc = sqlite3_step(st);
    sqlite3_finalize(st);
    return rc == SQLITE_DONE ? SQLITE_OK : rc;
}

cw_outcome ledger_failure(cw_task *task, sqlite3 *db, int rc, const char *what)
{
    const char *why = sqlite3_extended_errcode(db) == rc ? sqlite3_errmsg(db) : sqlite3_errstr(rc);

    if (ledger_transient(rc))
        return cw_task_retry(task, "ledger %s: %s", what, why);
    return cw_task_fail(task, "ledger %s: %s", what, why);
}

bool ledger_transient(int rc)
{
    switch (rc & 0xff) {
    case SQLITE_BUSY:
    case SQLITE_LOCKED:
    case SQLITE_FULL:
    case SQLITE_IOERR:
    case SQLITE_PROTOCOL: return true;
    default: return false;
    }
}

const char *ledger_field_string(struct json_object *obj, const char *key)
{
    struct json_object *v;
    const char *s;

    if (!json_object_object_get_ex(obj, key, &v) || !json_object_is_type(v, json_type_string))
        return NULL;
    s = json_object_get_string(v);
    return s != NULL && s[0] != '\0' ? s : NULL;
}

bool ledger_field_count(struct json_object *obj, const char *key, int64_t max, int64_t *out)
{
    struct json_object *v;
    int64_t n;

    if (!json_object_object_get_ex(obj, key, &v) || !json_object_is_type(v, json_type_int))
        return false;
    n = json_object_get_int64(v);
    if (n < 1 || n > max)
        return false;
    *out = n;
    return true;
}
