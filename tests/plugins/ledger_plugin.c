/* Test plugin: a handler that records every application in an SQLite ledger,
 * so that integration tests can count how often each task was applied.
 *
 *     [plugin ledger]
 *     path = /tmp/.../ledger.db     (required: init fails without it)
 *
 * Type "it.apply". The JSON payload steers the outcome:
 *   {"fail":"why"}   -> cw_task_fail(task, "%s", why)  (nothing recorded)
 *   {"retry":"why"}  -> cw_task_retry(task, "%s", why) (nothing recorded)
 *   {"sleep_ms":N}   -> sleeps N ms, then applies
 *   anything else    -> applies
 * Applying inserts one row (message_id, saga_id, attempt, at) into table
 * `applied`. message_id is deliberately not unique: a task applied twice
 * shows as two rows. */
#include <errno.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <json.h>
#include <sqlite3.h>

#include <compworker/compworker.h>

CW_PLUGIN_DECLARE("ledger", "1.0.0");

typedef struct ledger {
    sqlite3 *db;
    sqlite3_stmt *insert;
} ledger;

static int64_t now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

/* Sleeps the whole of `ms`, even when a signal (SIGTERM) interrupts it: a
 * task being handled is finished before the worker stops. */
static void sleep_ms(int64_t ms)
{
    struct timespec ts = {.tv_sec = (time_t)(ms / 1000), .tv_nsec = (long)(ms % 1000) * 1000000L};
    while (nanosleep(&ts, &ts) != 0 && errno == EINTR)
        ;
}

static const char *string_member(json_object *obj, const char *key)
{
    json_object *v;
    if (!json_object_object_get_ex(obj, key, &v) || !json_object_is_type(v, json_type_string))
        return NULL;
    return json_object_get_string(v);
}

static cw_outcome apply(cw_task *task, void *user_data)
{
    ledger *l = user_data;
    json_object *payload = cw_task_payload(task);
    const char *why;

    if ((why = string_member(payload, "fail")))
        return cw_task_fail(task, "%s", why);
    if ((why = string_member(payload, "retry")))
        return cw_task_retry(task, "%s", why);
    json_object *v;
    if (json_object_object_get_ex(payload, "sleep_ms", &v)) {
        int64_t ms = json_object_get_int64(v);
        if (ms > 0)
            sleep_ms(ms > 60000 ? 60000 : ms);
    }

    sqlite3_stmt *st = l->insert;
    sqlite3_reset(st);
    sqlite3_bind_text(st, 1, cw_task_message_id(task), -1, SQLITE_TRANSIENT);
    sqlite3_bind_text(st, 2, cw_task_saga_id(task), -1, SQLITE_TRANSIENT);
    sqlite3_bind_int64(st, 3, (sqlite3_int64)cw_task_attempt(task));
    sqlite3_bind_int64(st, 4, (sqlite3_int64)now_ms());
    int rc = sqlite3_step(st);
    sqlite3_reset(st);
    sqlite3_clear_bindings(st);
    if (rc != SQLITE_DONE)
        return cw_task_retry(task, "ledger insert failed: %s", sqlite3_errmsg(l->db));
    return CW_OK;
}

static void ledger_close(ledger *l)
{
    if (!l)
        return;
    sqlite3_finalize(l->insert);
    sqlite3_close(l->db);
    free(l);
}

static void teardown(void *user_data)
{
    ledger_close(user_data);
}

int cw_plugin_init(cw_registry *reg)
{
    const char *path = cw_registry_setting(reg, "path", NULL);
    if (!path || !path[0]) {
        fprintf(stderr, "ledger plugin: [plugin ledger] path is required\n");
        return -1;
    }
    ledger *l = calloc(1, sizeof *l);
    if (!l)
        return -1;
    static const char schema[] =
        "PRAGMA journal_mode=WAL;"
        "CREATE TABLE IF NOT EXISTS applied ("
        "  row INTEGER PRIMARY KEY,"
        "  message_id TEXT NOT NULL,"
        "  saga_id TEXT NOT NULL,"
        "  attempt INTEGER NOT NULL,"
        "  at INTEGER NOT NULL);";
    if (sqlite3_open_v2(path, &l->db, SQLITE_OPEN_READWRITE | SQLITE_OPEN_CREATE, NULL) !=
            SQLITE_OK ||
        sqlite3_busy_timeout(l->db, 10000) != SQLITE_OK ||
        sqlite3_exec(l->db, schema, NULL, NULL, NULL) != SQLITE_OK ||
        sqlite3_prepare_v2(l->db,
                           "INSERT INTO applied (message_id, saga_id, attempt, at) "
                           "VALUES (?1, ?2, ?3, ?4)",
                           -1, &l->insert, NULL) != SQLITE_OK) {
        fprintf(stderr, "ledger plugin: %s: %s\n", path,
                l->db ? sqlite3_errmsg(l->db) : "out of memory");
        ledger_close(l);
        return -1;
    }
    int rc;
    if ((rc = cw_register_handler(reg, "it.apply", apply, l)) < 0 ||
        (rc = cw_register_teardown(reg, teardown, l)) < 0) {
        ledger_close(l);
        return rc;
    }
    return 0;
}
