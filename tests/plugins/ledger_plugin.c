/* Test plugin: a handler that records every application in an SQLite ledger,
 * so that integration tests can count how often each task was applied.
 *
 *     [plugin ledger]
 *     path = /tmp/.../ledger.db          (required: init fails without it)
 *     alerts = /tmp/.../cb-alerts.jsonl  (optional: see below)
 *     concurrent = true                  (optional: registers the handler with
 *                                         cw_register_handler_opts() as one that
 *                                         may run on several threads at once;
 *                                         by default it is registered the old
 *                                         way, one call at a time)
 *     synchronous = normal               (optional: the ledger's own SQLite
 *                                         `synchronous`, full by default;
 *                                         normal still survives a SIGKILL of
 *                                         the worker, which is all a chaos run
 *                                         needs, at a fraction of the fsyncs)
 *     store_effects = true               (optional: each application also
 *                                         writes a row to table it_effects of
 *                                         the store's own database, through
 *                                         cw_task_sqlite() or cw_task_pg(): in
 *                                         the transaction of the task's done
 *                                         record, so exactly once)
 *     followup = ROUTING_KEY             (optional: each application sends one
 *                                         follow-up with cw_task_send() to the
 *                                         default exchange with this routing
 *                                         key (a queue's name), type
 *                                         "it.applied", body
 *                                         {"task":MESSAGE_ID,"attempt":N})
 *
 * Type "it.apply". Every call first inserts one row (message_id, attempt,
 * mono_ms, wall_ms, pid) into table `calls` (mono_ms: CLOCK_MONOTONIC, comparable
 * with the test's cwtest_now_ms(); wall_ms: CLOCK_REALTIME), then the JSON
 * payload steers the outcome:
 *   {"pause_ms":N}    -> first sleeps N ms (at most 60 s), then goes on below:
 *                        the call is in progress that long whatever it decides
 *   {"crash":true}    -> raise(SIGSEGV): the worker dies in the handler
 *   {"fail":"why"}    -> cw_task_fail(task, "%s", why)  (nothing applied)
 *   {"fail_unless_file":"/path"}
 *                     -> cw_task_fail(task, "missing /path") while that file does
 *                        not exist: a permanent failure whose cause a test fixes
 *                        by creating the file (then a replay applies it)
 *   {"retry":"why"}   -> cw_task_retry(task, "%s", why) (nothing applied)
 *   {"fail_times":N}  -> while cw_task_attempt(task) < N:
 *                        cw_task_retry(task, "gateway timeout %u", attempt),
 *                        with {"retry_after_ms":M} as well
 *                        cw_task_retry_after(task, M, ...) instead
 *   {"hang_ms":N}     -> sleeps N ms (at most 10 min), then goes on
 *   {"sleep_ms":N}    -> sleeps N ms (at most 60 s), then goes on
 *   {"after_effect":"retry"|"fail"|"crash"|"sleep_ms:N"|"COMMIT"|"ROLLBACK"|"BEGIN"|"bad_sql"|"bad_send"}
 *                     -> with store_effects: once the effect row is written
 *                        (and the follow-up sent), asks for a retry, fails,
 *                        crashes, sleeps, runs that statement on the store's
 *                        connection itself, runs a statement that fails, or
 *                        sends a follow-up that cw_task_send() refuses
 *   otherwise         -> applies
 * Applying inserts one row (message_id, saga_id, attempt, at, pid) into table
 * `applied`. message_id is deliberately not unique: a task applied twice
 * shows as two rows. `pid` is the worker process's getpid(), so that a test
 * that kills workers can tell which process made each application (and
 * match a second application of a task to the kill of the first's worker);
 * `at` is CLOCK_REALTIME ms, committed before the handler returns.
 *
 * With `alerts` set, the plugin also registers an alert hook that appends
 * every JSON document it receives, one per line, to that file. */
#include <errno.h>
#include <pthread.h>
#include <signal.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include <json.h>
#include <libpq-fe.h>
#include <sqlite3.h>

#include <compworker/compworker.h>

CW_PLUGIN_DECLARE("ledger", "1.0.0");

typedef struct ledger {
    sqlite3 *db;
    sqlite3_stmt *insert;
    sqlite3_stmt *call;
    pthread_mutex_t db_lock; /* the statements, when handlers run on several threads */
    char *alerts;            /* the alert hook's file, or NULL */
    pthread_mutex_t alerts_lock;
    bool store_effects;
    char *followup; /* routing key of the follow-ups, or NULL */
} ledger;

/* Whether this handler thread made table it_effects already. */
static __thread bool effects_table_ready;

static int64_t clock_ms(clockid_t clock)
{
    struct timespec ts;
    clock_gettime(clock, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static int64_t now_ms(void)
{
    return clock_ms(CLOCK_REALTIME);
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

/* The integer member `key`, or -1 when absent. */
static int64_t int_member(json_object *obj, const char *key)
{
    json_object *v;
    if (!json_object_object_get_ex(obj, key, &v))
        return -1;
    return json_object_get_int64(v);
}

/* Records the call in table `calls`; false when it could not. */
static bool record_call(ledger *l, cw_task *task)
{
    pthread_mutex_lock(&l->db_lock);
    sqlite3_stmt *st = l->call;
    sqlite3_reset(st);
    sqlite3_bind_text(st, 1, cw_task_message_id(task), -1, SQLITE_TRANSIENT);
    sqlite3_bind_int64(st, 2, (sqlite3_int64)cw_task_attempt(task));
    sqlite3_bind_int64(st, 3, (sqlite3_int64)clock_ms(CLOCK_MONOTONIC));
    sqlite3_bind_int64(st, 4, (sqlite3_int64)now_ms());
    sqlite3_bind_int64(st, 5, (sqlite3_int64)getpid());
    int rc = sqlite3_step(st);
    sqlite3_reset(st);
    sqlite3_clear_bindings(st);
    pthread_mutex_unlock(&l->db_lock);
    return rc == SQLITE_DONE;
}

/* Runs one statement on the store's SQLite connection or PostgreSQL
 * session; false with the database's message in `err` when it failed. */
static bool store_exec(sqlite3 *db, PGconn *pg, const char *sql, char *err, size_t cap)
{
    if (db) {
        if (sqlite3_exec(db, sql, NULL, NULL, NULL) == SQLITE_OK)
            return true;
        snprintf(err, cap, "%s", sqlite3_errmsg(db));
        return false;
    }
    PGresult *r = PQexec(pg, sql);
    bool ok = PQresultStatus(r) == PGRES_COMMAND_OK || PQresultStatus(r) == PGRES_TUPLES_OK;
    if (!ok)
        snprintf(err, cap, "%s", PQerrorMessage(pg));
    PQclear(r);
    return ok;
}

/* The effect in the store's own database, in the transaction of the task's
 * done record, and the follow-up; then what after_effect asks for. */
static cw_outcome effect_in_store(ledger *l, cw_task *task)
{
    char err[512] = "";
    sqlite3 *db = NULL;
    PGconn *pg = NULL;
    if (l->store_effects) {
        db = cw_task_sqlite(task);
        if (!db && !(pg = cw_task_pg(task)))
            return cw_task_retry(task, "no store transaction: %s", cw_error_last());
        if (!effects_table_ready) {
            /* In the transaction: SQLite holds the write lock, and on
             * PostgreSQL the advisory lock keeps threads from racing. */
            const char *ddl =
                db ? "CREATE TABLE IF NOT EXISTS it_effects (message_id TEXT NOT NULL,"
                     " attempt INTEGER NOT NULL, pid INTEGER NOT NULL)"
                   : "SELECT pg_advisory_xact_lock(4242);"
                     "CREATE TABLE IF NOT EXISTS public.it_effects (message_id text"
                     " NOT NULL, attempt integer NOT NULL, pid integer NOT NULL)";
            if (!store_exec(db, pg, ddl, err, sizeof err))
                return cw_task_retry(task, "creating it_effects: %s", err);
            effects_table_ready = true;
        }
        char sql[512];
        /* The message ID is a UUID the test made: no quote can be in it. */
        snprintf(sql, sizeof sql,
                 "INSERT INTO %sit_effects (message_id, attempt, pid) VALUES"
                 " ('%s', %u, %ld)",
                 pg ? "public." : "", cw_task_message_id(task), cw_task_attempt(task),
                 (long)getpid());
        if (strchr(cw_task_message_id(task), '\'') || !store_exec(db, pg, sql, err, sizeof err))
            return cw_task_retry(task, "writing the effect: %s", err);
    }
    if (l->followup) {
        char body[512];
        snprintf(body, sizeof body, "{\"task\":\"%s\",\"attempt\":%u}", cw_task_message_id(task),
                 cw_task_attempt(task));
        if (cw_task_send(task, "", l->followup, "it.applied", body, 0) != 0)
            return cw_task_retry(task, "follow-up refused: %s", cw_error_last());
    }
    const char *after = string_member(cw_task_payload(task), "after_effect");
    if (!after)
        return CW_OK;
    if (strcmp(after, "retry") == 0)
        return cw_task_retry(task, "asked to retry after the effect");
    if (strcmp(after, "fail") == 0)
        return cw_task_fail(task, "asked to fail after the effect");
    if (strcmp(after, "crash") == 0)
        raise(SIGSEGV);
    if (strncmp(after, "sleep_ms:", 9) == 0)
        sleep_ms(atoi(after + 9) > 60000 ? 60000 : atoi(after + 9));
    if (strcmp(after, "COMMIT") == 0 || strcmp(after, "ROLLBACK") == 0 ||
        strcmp(after, "BEGIN") == 0)
        store_exec(db, pg, after, err, sizeof err);
    if (strcmp(after, "bad_sql") == 0)
        store_exec(db, pg, "INSERT INTO no_such_table VALUES (1)", err, sizeof err);
    if (strcmp(after, "bad_send") == 0)
        cw_task_send(task, "", l->followup ? l->followup : "q", "it.applied", "not json", 0);
    return CW_OK;
}

static cw_outcome apply(cw_task *task, void *user_data)
{
    ledger *l = user_data;
    json_object *payload = cw_task_payload(task);
    const char *why;
    json_object *v;

    if (!record_call(l, task))
        return cw_task_retry(task, "ledger call insert failed");
    int64_t pause = int_member(payload, "pause_ms");
    if (pause > 0)
        sleep_ms(pause > 60000 ? 60000 : pause);
    if (json_object_object_get_ex(payload, "crash", &v) && json_object_get_boolean(v))
        raise(SIGSEGV);
    if ((why = string_member(payload, "fail")))
        return cw_task_fail(task, "%s", why);
    if ((why = string_member(payload, "fail_unless_file")) && access(why, F_OK) != 0)
        return cw_task_fail(task, "missing %s", why);
    if ((why = string_member(payload, "retry")))
        return cw_task_retry(task, "%s", why);
    int64_t fail_times = int_member(payload, "fail_times");
    unsigned attempt = cw_task_attempt(task);
    if (fail_times > 0 && (int64_t)attempt < fail_times) {
        int64_t after = int_member(payload, "retry_after_ms");
        if (after >= 0)
            return cw_task_retry_after(task, after, "gateway timeout %u", attempt);
        return cw_task_retry(task, "gateway timeout %u", attempt);
    }
    int64_t hang = int_member(payload, "hang_ms");
    if (hang > 0)
        sleep_ms(hang > 600000 ? 600000 : hang);
    int64_t ms = int_member(payload, "sleep_ms");
    if (ms > 0)
        sleep_ms(ms > 60000 ? 60000 : ms);

    pthread_mutex_lock(&l->db_lock);
    sqlite3_stmt *st = l->insert;
    sqlite3_reset(st);
    sqlite3_bind_text(st, 1, cw_task_message_id(task), -1, SQLITE_TRANSIENT);
    sqlite3_bind_text(st, 2, cw_task_saga_id(task), -1, SQLITE_TRANSIENT);
    sqlite3_bind_int64(st, 3, (sqlite3_int64)cw_task_attempt(task));
    sqlite3_bind_int64(st, 4, (sqlite3_int64)now_ms());
    sqlite3_bind_int64(st, 5, (sqlite3_int64)getpid());
    int rc = sqlite3_step(st);
    sqlite3_reset(st);
    sqlite3_clear_bindings(st);
    pthread_mutex_unlock(&l->db_lock);
    if (rc != SQLITE_DONE)
        return cw_task_retry(task, "ledger insert failed (%d)", rc);
    if (l->store_effects || l->followup)
        return effect_in_store(l, task);
    return CW_OK;
}

/* The alert hook: appends the document as one line. Runs on the worker's
 * alert thread; the mutex keeps lines whole should it ever run on two. */
static void on_alert(const char *json, void *user_data)
{
    ledger *l = user_data;
    pthread_mutex_lock(&l->alerts_lock);
    FILE *f = fopen(l->alerts, "a");
    if (f) {
        fprintf(f, "%s\n", json);
        fclose(f);
    } else {
        fprintf(stderr, "ledger plugin: cannot append to %s: %s\n", l->alerts, strerror(errno));
    }
    pthread_mutex_unlock(&l->alerts_lock);
}

static void ledger_close(ledger *l)
{
    if (!l)
        return;
    sqlite3_finalize(l->insert);
    sqlite3_finalize(l->call);
    sqlite3_close(l->db);
    pthread_mutex_destroy(&l->alerts_lock);
    pthread_mutex_destroy(&l->db_lock);
    free(l->alerts);
    free(l->followup);
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
    pthread_mutex_init(&l->alerts_lock, NULL);
    pthread_mutex_init(&l->db_lock, NULL);
    const char *alerts = cw_registry_setting(reg, "alerts", NULL);
    if (alerts && alerts[0] && !(l->alerts = strdup(alerts))) {
        ledger_close(l);
        return -1;
    }
    const char *sync = cw_registry_setting(reg, "synchronous", "full");
    if (strcmp(sync, "full") != 0 && strcmp(sync, "normal") != 0) {
        fprintf(stderr,
                "ledger plugin: [plugin ledger] synchronous must be full or normal, not '%s'\n",
                sync);
        ledger_close(l);
        return -1;
    }
    bool sync_normal = strcmp(sync, "normal") == 0;
    l->store_effects = strcmp(cw_registry_setting(reg, "store_effects", "false"), "true") == 0;
    const char *followup = cw_registry_setting(reg, "followup", NULL);
    if (followup && followup[0] && !(l->followup = strdup(followup))) {
        ledger_close(l);
        return -1;
    }
    static const char schema[] = "PRAGMA journal_mode=WAL;"
                                 "CREATE TABLE IF NOT EXISTS applied ("
                                 "  row INTEGER PRIMARY KEY,"
                                 "  message_id TEXT NOT NULL,"
                                 "  saga_id TEXT NOT NULL,"
                                 "  attempt INTEGER NOT NULL,"
                                 "  at INTEGER NOT NULL,"
                                 "  pid INTEGER NOT NULL);"
                                 "CREATE TABLE IF NOT EXISTS calls ("
                                 "  row INTEGER PRIMARY KEY,"
                                 "  message_id TEXT NOT NULL,"
                                 "  attempt INTEGER NOT NULL,"
                                 "  mono_ms INTEGER NOT NULL,"
                                 "  wall_ms INTEGER NOT NULL,"
                                 "  pid INTEGER NOT NULL);";
    if (sqlite3_open_v2(path, &l->db, SQLITE_OPEN_READWRITE | SQLITE_OPEN_CREATE, NULL) !=
            SQLITE_OK ||
        sqlite3_busy_timeout(l->db, 10000) != SQLITE_OK ||
        sqlite3_exec(l->db, schema, NULL, NULL, NULL) != SQLITE_OK ||
        (sync_normal &&
         sqlite3_exec(l->db, "PRAGMA synchronous=NORMAL", NULL, NULL, NULL) != SQLITE_OK) ||
        sqlite3_prepare_v2(l->db,
                           "INSERT INTO applied (message_id, saga_id, attempt, at, pid) "
                           "VALUES (?1, ?2, ?3, ?4, ?5)",
                           -1, &l->insert, NULL) != SQLITE_OK ||
        sqlite3_prepare_v2(l->db,
                           "INSERT INTO calls (message_id, attempt, mono_ms, wall_ms, pid) "
                           "VALUES (?1, ?2, ?3, ?4, ?5)",
                           -1, &l->call, NULL) != SQLITE_OK) {
        fprintf(stderr, "ledger plugin: %s: %s\n", path,
                l->db ? sqlite3_errmsg(l->db) : "out of memory");
        ledger_close(l);
        return -1;
    }
    int rc;
    cw_handler_opts ho = CW_HANDLER_OPTS_INIT;
    ho.concurrent = strcmp(cw_registry_setting(reg, "concurrent", "false"), "true") == 0;
    if ((rc = cw_register_handler_opts(reg, "it.apply", apply, l, &ho)) < 0 ||
        (l->alerts && (rc = cw_register_alert_hook(reg, on_alert, l)) < 0) ||
        (rc = cw_register_teardown(reg, teardown, l)) < 0) {
        ledger_close(l);
        return rc;
    }
    return 0;
}
