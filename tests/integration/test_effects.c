/* Integration tests of exactly-once effects: a handler (the ledger test
 * plugin with store_effects and followup) that writes its effect through
 * cw_task_sqlite() / cw_task_pg() into the store's own database, and sends
 * one follow-up message per task with cw_task_send(), through a pool of
 * handler threads, on the SQLite store and on the test's PostgreSQL server
 * (CW_TEST_PG_URL; skipped without it):
 *
 *   - tasks published twice: one effect row and one follow-up each, the
 *     follow-up's message ID the UUIDv5 of the task's, its saga ID and type,
 *     and nothing left in the store's follow-up table;
 *   - a handler that fails or asks for a retry after writing: its effect
 *     rolled back and its follow-up never sent, at every attempt;
 *   - a handler that commits, rolls back or begins on the connection itself,
 *     or sends a follow-up cw_task_send() refuses: dead-lettered with a
 *     reason that says why, nothing of it committed or sent;
 *   - a follow-up left in the store by a worker that died after its commit
 *     is published by a worker of the pool, and removed;
 *   - without store_effects (the follow-up rides on the worker's own
 *     settle commit): sent only with the done outcome.
 * Each test has a store (file, or schema) of its own. */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>

#include <libpq-fe.h>
#include <signal.h>
#include <sqlite3.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "cwtest.h"
#include "framework/task.h"

#define WAIT_MS CWTEST_TIMEOUT_MS

typedef struct effects_env {
    cwtest_env *env;
    bool pg;
    char schema[64];
    char store[512]; /* the SQLite file */
    char followups[200];
} effects_env;

/* A pool of 2 workers x 4 handler threads whose ledger handler writes its
 * effect in the store's transaction (when `store_effects`) and sends one
 * follow-up to queue <pool queue>.followups. */
static effects_env *begin(void **state, const char *test, bool pg, bool store_effects)
{
    effects_env *e = calloc(1, sizeof *e);
    e->pg = pg;
    char store[1024] = "", extra[512];
    if (pg) {
        snprintf(e->schema, sizeof e->schema, "it_%s_%ld", test, (long)getpid());
        cwtest_pg_store_lines(store, sizeof store, e->schema);
    }
    /* The follow-ups' queue: named after the pool, which cwtest_begin() names. */
    char q[200];
    snprintf(q, sizeof q, "cw.it-%s-%ld.followups", test, (long)getpid());
    snprintf(extra, sizeof extra,
             "concurrent = true\nstore_effects = %s\nfollowup = %s\n"
             "\n[retry]\nmax_attempts = 3\ninterval = 100ms\nmax_delay = 200ms\n",
             store_effects ? "true" : "false", q);
    cwtest_pool_opts po = {.pool_lines = "workers = 2\nconcurrency = 4\n",
                           .store_lines = pg ? store : NULL,
                           .extra = extra};
    e->env = cwtest_begin(state, test, &po);
    snprintf(e->followups, sizeof e->followups, "%s", q);
    if (strncmp(e->env->queue, q, strlen(e->env->queue)) != 0)
        fail_msg("the follow-up queue %s is not named after the pool queue %s", q, e->env->queue);
    snprintf(e->store, sizeof e->store, "%s/store.db", e->env->dir);
    cwtest_queue_declare(e->env, e->followups);
    return e;
}

static void start(effects_env *e)
{
    cwtest_worker_start(e->env);
    cwtest_log_wait(e->env, "consuming from", 2, WAIT_MS);
}

static void finish(effects_env *e)
{
    assert_int_equal(cwtest_worker_stop(e->env, SIGTERM, 30000), 0);
    cwtest_pass(e->env);
    free(e);
}

/* One integer a query of the store's database returns. */
static long store_long(const effects_env *e, const char *sql)
{
    long v = -1;
    if (e->pg) {
        PGconn *c = PQconnectdb(getenv("CW_TEST_PG_URL"));
        PGresult *r = PQexec(c, sql);
        if (PQresultStatus(r) != PGRES_TUPLES_OK)
            fail_msg("%s: %s", sql, PQresultErrorMessage(r));
        v = atol(PQgetvalue(r, 0, 0));
        PQclear(r);
        PQfinish(c);
        return v;
    }
    sqlite3 *db;
    if (sqlite3_open_v2(e->store, &db, SQLITE_OPEN_READWRITE, NULL) != SQLITE_OK)
        fail_msg("open %s", e->store);
    sqlite3_busy_timeout(db, 10000);
    sqlite3_stmt *st;
    if (sqlite3_prepare_v2(db, sql, -1, &st, NULL) == SQLITE_OK && sqlite3_step(st) == SQLITE_ROW)
        v = (long)sqlite3_column_int64(st, 0);
    else if (strstr(sqlite3_errmsg(db), "no such table"))
        v = 0; /* it_effects before the first effect */
    else
        fail_msg("%s: %s", sql, sqlite3_errmsg(db));
    sqlite3_finalize(st);
    sqlite3_close(db);
    return v;
}

static void store_sql(const effects_env *e, const char *sql)
{
    if (e->pg) {
        PGconn *c = PQconnectdb(getenv("CW_TEST_PG_URL"));
        PGresult *r = PQexec(c, sql);
        if (PQresultStatus(r) != PGRES_COMMAND_OK)
            fail_msg("%s: %s", sql, PQresultErrorMessage(r));
        PQclear(r);
        PQfinish(c);
        return;
    }
    sqlite3 *db;
    assert_int_equal(sqlite3_open(e->store, &db), SQLITE_OK);
    sqlite3_busy_timeout(db, 10000);
    if (sqlite3_exec(db, sql, NULL, NULL, NULL) != SQLITE_OK)
        fail_msg("%s: %s", sql, sqlite3_errmsg(db));
    sqlite3_close(db);
}

/* Effect rows of one task in the store's database. */
static long effects_of(const effects_env *e, const char *id)
{
    char sql[256];
    snprintf(sql, sizeof sql, "SELECT count(*) FROM %sit_effects WHERE message_id = '%s'",
             e->pg ? "public." : "", id);
    return store_long(e, sql);
}

static long followups_stored(const effects_env *e)
{
    char sql[256];
    if (e->pg)
        snprintf(sql, sizeof sql, "SELECT count(*) FROM %s.cw_followups", e->schema);
    else
        snprintf(sql, sizeof sql, "SELECT count(*) FROM followups");
    return store_long(e, sql);
}

static void wait_stored_followups(const effects_env *e, long n)
{
    int64_t until = cwtest_now_ms() + WAIT_MS;
    long got;
    while ((got = followups_stored(e)) != n && cwtest_now_ms() < until)
        cwtest_sleep_ms(100);
    assert_int_equal(got, n);
}

/* The dead-lettered copy of `id`: its cw-error-class and cw-error-reason. */
static void dead_reason(cwtest_env *env, const char *id, char *cls, char *why, size_t cap)
{
    size_t n;
    cwtest_msg *m = cwtest_peek(env, env->dlq, &n);
    cls[0] = why[0] = '\0';
    for (size_t i = 0; i < n; i++) {
        if (!m[i].message_id || strcmp(m[i].message_id, id) != 0)
            continue;
        const char *c = cwtest_msg_str(&m[i], "cw-error-class");
        const char *r = cwtest_msg_str(&m[i], "cw-error");
        snprintf(cls, cap, "%s", c ? c : "");
        snprintf(why, cap, "%s", r ? r : "");
    }
    cwtest_msgs_free(m, n);
}

static void task_id(char *out, size_t cap, const char *test, unsigned i)
{
    snprintf(out, cap, "%s-%ld-%04u", test, (long)getpid(), i);
}

/* ---- done: once, with its follow-up ------------------------------------------- */

#define N_TASKS 40

static void applied_once_with_followup(void **state, bool pg, bool store_effects)
{
    const char *test = store_effects ? (pg ? "eff_pg" : "eff_sq") : (pg ? "fu_pg" : "fu_sq");
    effects_env *e = begin(state, test, pg, store_effects);
    start(e);
    char id[96], saga[96];
    for (unsigned i = 0; i < N_TASKS; i++) {
        task_id(id, sizeof id, test, i);
        snprintf(saga, sizeof saga, "saga-%u", i);
        cwtest_send_task(e->env, id, saga, "{\"sleep_ms\":5}");
        if (i % 4 == 0) /* a duplicate, with the same message ID */
            cwtest_send_task(e->env, id, saga, "{\"sleep_ms\":5}");
    }
    cwtest_confirm_all(e->env);
    cwtest_queue_wait(e->env, e->followups, N_TASKS, WAIT_MS);
    assert_int_equal(cwtest_ledger_distinct(e->env), N_TASKS);
    size_t n;
    cwtest_msg *m = cwtest_drain(e->env, e->followups, &n);
    assert_int_equal(n, N_TASKS);
    unsigned seen[N_TASKS] = {0};
    for (size_t k = 0; k < n; k++) {
        /* Which task sent it: its body says, and its message ID agrees. */
        char task[96];
        const char *at = strstr((const char *)m[k].body, "\"task\":\"");
        assert_non_null(at);
        snprintf(task, sizeof task, "%.*s", (int)strcspn(at + 8, "\""), at + 8);
        unsigned i = (unsigned)atoi(strrchr(task, '-') + 1);
        assert_true(i < N_TASKS);
        seen[i]++;
        char want[37];
        cw__followup_id(task, 0, want);
        assert_string_equal(m[k].message_id, want);
        snprintf(saga, sizeof saga, "saga-%u", i);
        assert_string_equal(m[k].correlation_id, saga);
        assert_string_equal(m[k].type, "it.applied");
        assert_string_equal(m[k].content_type, "application/json");
    }
    cwtest_msgs_free(m, n);
    for (unsigned i = 0; i < N_TASKS; i++) {
        assert_int_equal(seen[i], 1);
        task_id(id, sizeof id, test, i);
        assert_int_equal(cwtest_ledger_count_id(e->env, id), 1);
        if (store_effects)
            assert_int_equal(effects_of(e, id), 1);
    }
    /* Confirmed follow-ups leave the store. */
    wait_stored_followups(e, 0);
    finish(e);
}

static void applied_once_sqlite(void **state)
{
    applied_once_with_followup(state, false, true);
}

static void applied_once_pg(void **state)
{
    applied_once_with_followup(state, true, true);
}

static void followup_on_settle_sqlite(void **state)
{
    applied_once_with_followup(state, false, false);
}

static void followup_on_settle_pg(void **state)
{
    applied_once_with_followup(state, true, false);
}

/* ---- not done: nothing of it ---------------------------------------------------- */

static void not_done_leaves_nothing(void **state, bool pg)
{
    const char *test = pg ? "nd_pg" : "nd_sq";
    effects_env *e = begin(state, test, pg, true);
    start(e);
    struct {
        const char *body, *cls, *why;
    } cases[] = {
        {"{\"after_effect\":\"retry\"}", "exhausted", "asked to retry after the effect"},
        {"{\"after_effect\":\"fail\"}", "permanent", "asked to fail after the effect"},
        {"{\"after_effect\":\"COMMIT\"}", "permanent", "began, committed or rolled back"},
        {"{\"after_effect\":\"ROLLBACK\"}", "permanent", "began, committed or rolled back"},
        {"{\"after_effect\":\"BEGIN\"}", "permanent", "began, committed or rolled back"},
        {"{\"after_effect\":\"bad_send\"}", "permanent", "cw_task_send refused follow-up 2"},
        /* PostgreSQL aborts the transaction: retried, then exhausted */
        {"{\"after_effect\":\"bad_sql\"}", "exhausted", "a statement failed"},
    };
    size_t n_cases = sizeof cases / sizeof *cases - (pg ? 0 : 1);
    char id[96];
    for (size_t i = 0; i < n_cases; i++) {
        task_id(id, sizeof id, test, (unsigned)i);
        cwtest_send_task(e->env, id, "saga-x", cases[i].body);
    }
    cwtest_confirm_all(e->env);
    cwtest_queue_wait(e->env, e->env->dlq, (uint32_t)n_cases, WAIT_MS);
    for (size_t i = 0; i < n_cases; i++) {
        task_id(id, sizeof id, test, (unsigned)i);
        char cls[64], why[1024];
        dead_reason(e->env, id, cls, why, sizeof why);
        if (strcmp(cls, cases[i].cls) != 0 || !strstr(why, cases[i].why))
            fail_msg("%s: dead-lettered as %s: %s; expected %s: ...%s...", cases[i].body, cls, why,
                     cases[i].cls, cases[i].why);
        assert_int_equal(effects_of(e, id), 0);
        /* The handler ran each attempt, and wrote each time: never kept. */
        assert_true(cwtest_calls_count(e->env, id) >= 1);
    }
    assert_int_equal(cwtest_queue_count(e->env, e->followups), 0);
    assert_int_equal(followups_stored(e), 0);
    finish(e);
}

static void not_done_sqlite(void **state)
{
    not_done_leaves_nothing(state, false);
}

static void not_done_pg(void **state)
{
    not_done_leaves_nothing(state, true);
}

/* ---- a follow-up its worker did not publish -------------------------------------- */

static void orphan_published(void **state, bool pg)
{
    const char *test = pg ? "orph_pg" : "orph_sq";
    effects_env *e = begin(state, test, pg, true);
    start(e); /* creates the store's schema */
    /* As a worker that died between its commit and its publish leaves it. */
    char sql[1024];
    snprintf(sql, sizeof sql,
             "INSERT INTO %s%sfollowups (message_id, task_id, saga_id, type, exchange, routing_key,"
             " body, created_at) VALUES ('orphan-%ld', 1, 'saga-o', 'it.applied', '', '%s',"
             " '{\"task\":\"orphan\"}', %lld)",
             pg ? e->schema : "", pg ? ".cw_" : "", (long)getpid(), e->followups,
             (long long)(cwtest_now_ms() - 60000));
    store_sql(e, sql);
    cwtest_queue_wait(e->env, e->followups, 1, 30000);
    size_t n;
    cwtest_msg *m = cwtest_drain(e->env, e->followups, &n);
    assert_int_equal(n, 1);
    char want[64];
    snprintf(want, sizeof want, "orphan-%ld", (long)getpid());
    assert_string_equal(m[0].message_id, want);
    assert_string_equal(m[0].correlation_id, "saga-o");
    cwtest_msgs_free(m, n);
    wait_stored_followups(e, 0);
    cwtest_log_wait(e->env, "left unpublished by a worker", 1, WAIT_MS);
    finish(e);
}

static void orphan_sqlite(void **state)
{
    orphan_published(state, false);
}

static void orphan_pg(void **state)
{
    orphan_published(state, true);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_teardown(applied_once_sqlite, cwtest_teardown),
        cmocka_unit_test_teardown(applied_once_pg, cwtest_teardown),
        cmocka_unit_test_teardown(followup_on_settle_sqlite, cwtest_teardown),
        cmocka_unit_test_teardown(followup_on_settle_pg, cwtest_teardown),
        cmocka_unit_test_teardown(not_done_sqlite, cwtest_teardown),
        cmocka_unit_test_teardown(not_done_pg, cwtest_teardown),
        cmocka_unit_test_teardown(orphan_sqlite, cwtest_teardown),
        cmocka_unit_test_teardown(orphan_pg, cwtest_teardown),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
