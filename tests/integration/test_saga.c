/* Integration tests of saga compensation plans ([pool] saga_plans), with a
 * real broker, on the SQLite store and on the test's PostgreSQL server
 * (CW_TEST_PG_URL; those are skipped without it). The steps are tasks of
 * the ledger test plugin's type it.apply, which records every call and
 * every application (with their times):
 *
 *   - order under duplicates and a kill: plans of three stages (the second
 *     of two steps that run together), each published twice, through two
 *     workers of four handler threads, one worker SIGKILLed mid-run: no step
 *     is called before every step of the stage before it was applied, each
 *     step's effect is written once, every saga ends done;
 *   - stuck and resumed: a step that fails permanently halts its saga
 *     (saga show says stuck, and why; the next stage never starts); fixed
 *     and replayed with dlq replay, the plan goes on to its end, and the
 *     history says who replayed it;
 *   - a deadline passed: one alert (error_class saga-deadline) through the
 *     webhook, however long the saga stays overdue; saga list --overdue;
 *   - hostile plans (not an object, unknown step types, bodies that are not
 *     objects, nested stages, no saga ID, too many steps): each dead-lettered
 *     as invalid with its reason, no step of any run. */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>

#include <json-c/json.h>
#include <signal.h>
#include <sqlite3.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include "cwtest.h"
#include "saga/plan.h"

#define WAIT_MS CWTEST_TIMEOUT_MS

static cwtest_env *begin(void **state, const char *test, bool pg, const char *extra_pool,
                         const char *alert)
{
    char store[1024] = "", pool[512], extra[512];
    if (pg) {
        char schema[64];
        snprintf(schema, sizeof schema, "it_saga_%s_%ld", test, (long)getpid());
        cwtest_pg_store_lines(store, sizeof store, schema);
    }
    snprintf(pool, sizeof pool, "workers = 2\nconcurrency = 4\nsaga_plans = true\n%s",
             extra_pool ? extra_pool : "");
    snprintf(extra, sizeof extra,
             "concurrent = true\nstore_effects = true\n\n[retry]\nmax_attempts = 2\n"
             "interval = 100ms\nmax_delay = 200ms\n%s",
             alert ? alert : "");
    cwtest_pool_opts po = {.queue_type = "classic",
                           .pool_lines = pool,
                           .store_lines = pg ? store : NULL,
                           .extra = extra};
    return cwtest_begin(state, test, &po);
}

static void publish_plan(cwtest_env *env, const char *plan_id, const char *saga, const char *body)
{
    cwtest_out m = {.exchange = "cw.tasks",
                    .routing_key = CW_PLAN_TYPE,
                    .message_id = plan_id,
                    .type = CW_PLAN_TYPE,
                    .correlation_id = saga,
                    .content_type = "application/json",
                    .body = body};
    cwtest_send(env, &m);
}

/* Waits until `saga show --json` says the saga's `state`. */
static void wait_state(cwtest_env *env, const char *saga, const char *state, int timeout_ms)
{
    static char out[65536];
    int64_t deadline = cwtest_now_ms() + timeout_ms;
    for (;;) {
        if (cwtest_cli(env, out, sizeof out, false, "saga", "show", "-c", env->ini, "--json", saga,
                       NULL) == 0) {
            json_object *o = json_tokener_parse(out);
            const char *now = o ? cwtest_json_str(o, "state") : NULL;
            bool there = now && strcmp(now, state) == 0;
            json_object_put(o);
            if (there)
                return;
        }
        if (cwtest_now_ms() > deadline)
            fail_msg("saga %s is not %s after %d ms: %.600s", saga, state, timeout_ms, out);
        cwtest_sleep_ms(100);
    }
}

static int64_t ledger_int(cwtest_env *env, const char *sql, const char *p1)
{
    sqlite3 *db;
    sqlite3_stmt *st;
    if (sqlite3_open_v2(env->ledger, &db, SQLITE_OPEN_READONLY, NULL) != SQLITE_OK ||
        sqlite3_prepare_v2(db, sql, -1, &st, NULL) != SQLITE_OK)
        fail_msg("%s: %s", env->ledger, sqlite3_errmsg(db));
    if (p1)
        sqlite3_bind_text(st, 1, p1, -1, SQLITE_STATIC);
    int64_t v = sqlite3_step(st) == SQLITE_ROW ? sqlite3_column_int64(st, 0) : -1;
    sqlite3_finalize(st);
    sqlite3_close(db);
    return v;
}

/* ---- order ---------------------------------------------------------------------- */

#define SAGAS 30

static const char order_plan[] =
    "{\"steps\":[{\"type\":\"it.apply\",\"body\":{\"pause_ms\":30}},"
    "[{\"type\":\"it.apply\",\"body\":{\"pause_ms\":20,\"part\":1}},"
    "{\"type\":\"it.apply\",\"body\":{\"part\":2}}],"
    "{\"type\":\"it.apply\",\"body\":{\"last\":true}}],\"deadline\":\"10m\"}";

static void plans_in_order(void **state, bool pg)
{
    cwtest_env *env = begin(state, pg ? "order_pg" : "order", pg, NULL, NULL);
    cwtest_worker_start(env);
    for (int i = 0; i < SAGAS; i++) {
        char plan[64], saga[64];
        snprintf(plan, sizeof plan, "plan-%ld-%d", (long)getpid(), i);
        snprintf(saga, sizeof saga, "saga-%ld-%d", (long)getpid(), i);
        publish_plan(env, plan, saga, order_plan);
        publish_plan(env, plan, saga, order_plan); /* a publisher's retry */
    }
    cwtest_confirm_all(env);
    /* One worker SIGKILLed while the plans run. */
    cwtest_sleep_ms(300);
    char *log = cwtest_log_read(env);
    const char *p = strstr(log, "worker 1 started (pid ");
    long victim = p ? strtol(p + strlen("worker 1 started (pid "), NULL, 10) : 0;
    free(log);
    if (victim > 0)
        kill((pid_t)victim, SIGKILL);
    for (int i = 0; i < SAGAS; i++) {
        char saga[64];
        snprintf(saga, sizeof saga, "saga-%ld-%d", (long)getpid(), i);
        wait_state(env, saga, "done", WAIT_MS);
    }
    for (int i = 0; i < SAGAS; i++) {
        char plan[64];
        snprintf(plan, sizeof plan, "plan-%ld-%d", (long)getpid(), i);
        char id[3][2][37];
        for (int k = 0; k < 3; k++)
            for (int j = 0; j < 2; j++)
                cw_plan_step_id(plan, (size_t)k, (size_t)j, id[k][j]);
        /* stage k+1's first call comes after each of stage k's steps was applied */
        for (int k = 0; k + 1 < 3; k++) {
            int64_t next = INT64_MAX;
            for (int j = 0; j < (k + 1 == 1 ? 2 : 1); j++) {
                int64_t c = ledger_int(env, "SELECT min(wall_ms) FROM calls WHERE message_id = ?1",
                                       id[k + 1][j]);
                if (c < next)
                    next = c;
            }
            for (int j = 0; j < (k == 1 ? 2 : 1); j++) {
                int64_t applied = ledger_int(env,
                                             "SELECT min(at) FROM applied WHERE message_id = ?1",
                                             id[k][j]);
                if (applied <= 0 || next < applied)
                    fail_msg("plan %s: stage %d started at %lld, before step %d.%d was applied "
                             "(%lld)",
                             plan, k + 2, (long long)next, k + 1, j + 1, (long long)applied);
            }
        }
    }
    assert_int_equal(cwtest_worker_stop(env, SIGTERM, 30000), 0);
    if (!pg) {
        /* No step applied twice, kill or not: each step's effect, written in
         * its done record's transaction, is in the store once. */
        char path[400];
        snprintf(path, sizeof path, "%s/store.db", env->dir);
        sqlite3 *db;
        sqlite3_stmt *st;
        assert_int_equal(sqlite3_open_v2(path, &db, SQLITE_OPEN_READONLY, NULL), SQLITE_OK);
        assert_int_equal(sqlite3_prepare_v2(db,
                                            "SELECT count(*), count(DISTINCT message_id),"
                                            " (SELECT count(*) FROM cw_sagas WHERE state = 'done')"
                                            " FROM it_effects",
                                            -1, &st, NULL),
                         SQLITE_OK);
        assert_int_equal(sqlite3_step(st), SQLITE_ROW);
        assert_int_equal(sqlite3_column_int(st, 0), SAGAS * 4); /* the plans' four steps */
        assert_int_equal(sqlite3_column_int(st, 1), SAGAS * 4);
        assert_int_equal(sqlite3_column_int(st, 2), SAGAS);
        sqlite3_finalize(st);
        sqlite3_close(db);
    }
    cwtest_pass(env);
}

static void plans_in_order_file(void **state)
{
    plans_in_order(state, false);
}
static void plans_in_order_pg(void **state)
{
    plans_in_order(state, true);
}

/* ---- stuck and resumed ------------------------------------------------------------ */

/* Waits until the pool's sample `series` is `want`. */
static void wait_metric(cwtest_env *env, const char *base, const char *series, double want)
{
    char name[256];
    snprintf(name, sizeof name, "%s{pool=\"%s\"}", series, env->name);
    int64_t deadline = cwtest_now_ms() + WAIT_MS;
    double got = -1;
    while (cwtest_now_ms() < deadline) {
        long code;
        char *body = cwtest_http_get(base, "/metrics", &code);
        got = cwtest_metric(body, name);
        free(body);
        if (got == want)
            return;
        cwtest_sleep_ms(200);
    }
    fail_msg("%s is %g, not %g", name, got, want);
}

static void stuck_and_resumed(void **state, bool pg)
{
    cwtest_env *env = begin(state, pg ? "stuck_pg" : "stuck", pg, "metrics_listen = 127.0.0.1:0\n",
                            NULL);
    char fixed[400], body[1024];
    snprintf(fixed, sizeof fixed, "%s/fixed", env->dir);
    snprintf(body, sizeof body,
             "{\"steps\":[{\"type\":\"it.apply\",\"body\":{}},"
             "{\"type\":\"it.apply\",\"body\":{\"fail_unless_file\":\"%s\"}},"
             "{\"type\":\"it.apply\",\"body\":{\"third\":true}}]}",
             fixed);
    char plan[64], saga[64];
    snprintf(plan, sizeof plan, "plan-stuck-%ld", (long)getpid());
    snprintf(saga, sizeof saga, "saga-stuck-%ld", (long)getpid());
    cwtest_worker_start(env);
    publish_plan(env, plan, saga, body);
    cwtest_confirm_all(env);
    wait_state(env, saga, "stuck", WAIT_MS);
    char out[65536];
    assert_int_equal(cwtest_cli(env, out, sizeof out, false, "saga", "show", "-c", env->ini, saga,
                                NULL),
                     0);
    if (!strstr(out, "stuck at step 2.1 of 3 stages: it.apply") || !strstr(out, "missing"))
        fail_msg("saga show does not say where and why it is stuck:\n%s", out);
    char third[37];
    cw_plan_step_id(plan, 2, 0, third);
    cwtest_sleep_ms(1000);
    assert_int_equal(ledger_int(env, "SELECT count(*) FROM calls WHERE message_id = ?1", third), 0);
    assert_int_equal(cwtest_cli(env, out, sizeof out, false, "saga", "list", "-c", env->ini,
                                "--stuck", NULL),
                     0);
    assert_non_null(strstr(out, saga));
    char base[128];
    cwtest_metrics_base(env, base, sizeof base);
    wait_metric(env, base, "compworker_sagas_stuck", 1);
    wait_metric(env, base, "compworker_sagas_started_total", 1);

    /* The operator fixes the cause and replays the step. */
    FILE *f = fopen(fixed, "w");
    assert_non_null(f);
    fclose(f);
    char second[37];
    cw_plan_step_id(plan, 1, 0, second);
    assert_int_equal(cwtest_cli(env, out, sizeof out, false, "dlq", "replay", "-c", env->ini,
                                second, NULL),
                     0);
    wait_state(env, saga, "done", WAIT_MS);
    assert_int_equal(ledger_int(env, "SELECT count(*) FROM applied WHERE message_id = ?1", third),
                     1);
    wait_metric(env, base, "compworker_sagas_done_total", 1);
    wait_metric(env, base, "compworker_sagas_stuck", 0);
    assert_int_equal(cwtest_cli(env, out, sizeof out, false, "saga", "show", "-c", env->ini, saga,
                                NULL),
                     0);
    if (!strstr(out, "replayed by") || !strstr(out, "all 3 steps done"))
        fail_msg("saga show's history lacks the replay or the end:\n%s", out);
    assert_int_equal(cwtest_worker_stop(env, SIGTERM, 30000), 0);
    cwtest_pass(env);
}

static void stuck_and_resumed_file(void **state)
{
    stuck_and_resumed(state, false);
}
static void stuck_and_resumed_pg(void **state)
{
    stuck_and_resumed(state, true);
}

/* ---- deadlines -------------------------------------------------------------------- */

static void deadline_alert_once(void **state)
{
    /* The webhook's port is known once the server runs: start it on a
     * first env, then write the pool's file with it. */
    cwtest_env *env = begin(state, "deadline", false, NULL, NULL);
    cwtest_http *hook = cwtest_http_start(env, "/hook");
    char alert[256];
    snprintf(alert, sizeof alert, "\n[alert]\nwebhook = http://127.0.0.1:%u/hook\nrate_limit = 0\n",
             cwtest_http_port(hook));
    FILE *f = fopen(env->ini, "a");
    assert_non_null(f);
    fputs(alert, f);
    fclose(f);
    char plan[64], saga[64];
    snprintf(plan, sizeof plan, "plan-late-%ld", (long)getpid());
    snprintf(saga, sizeof saga, "saga-late-%ld", (long)getpid());
    cwtest_worker_start(env);
    publish_plan(env, plan, saga,
                 "{\"steps\":[{\"type\":\"it.apply\",\"body\":{\"fail\":\"gateway says no\"}},"
                 "{\"type\":\"it.apply\",\"body\":{}}],\"deadline\":\"2s\"}");
    cwtest_confirm_all(env);
    size_t seen = 0;
    int64_t until = cwtest_now_ms() + 20000;
    while (cwtest_now_ms() < until) {
        seen = 0;
        for (size_t i = 0; i < cwtest_http_count(hook); i++) {
            char *doc = cwtest_http_body(hook, i);
            if (strstr(doc, "\"error_class\":\"saga-deadline\"") && strstr(doc, saga)) {
                seen++;
                if (!strstr(doc, "stage 1 of 2 (it.apply dead-lettered: gateway says no)"))
                    fail_msg("the deadline's alert does not say the step it is on and why: %s",
                             doc);
            }
            free(doc);
        }
        if (seen)
            break;
        cwtest_sleep_ms(200);
    }
    assert_int_equal(seen, 1);
    cwtest_sleep_ms(3000); /* still overdue: no second alert */
    seen = 0;
    for (size_t i = 0; i < cwtest_http_count(hook); i++) {
        char *doc = cwtest_http_body(hook, i);
        if (strstr(doc, "\"error_class\":\"saga-deadline\"") && strstr(doc, saga))
            seen++;
        free(doc);
    }
    assert_int_equal(seen, 1);
    char out[65536];
    assert_int_equal(cwtest_cli(env, out, sizeof out, false, "saga", "list", "-c", env->ini,
                                "--overdue", NULL),
                     0);
    assert_non_null(strstr(out, saga));
    assert_int_equal(cwtest_worker_stop(env, SIGTERM, 30000), 0);
    cwtest_pass(env);
}

/* ---- hostile plans ---------------------------------------------------------------- */

static void hostile_plans(void **state)
{
    cwtest_env *env = begin(state, "hostile", false, NULL, NULL);
    static const struct {
        const char *body, *says;
        bool no_saga;
    } plans[] = {
        {"[1,2,3]", "not an object", false},
        {"{\"steps\":[{\"type\":\"payment.refnd\",\"body\":{}}]}", "unknown type 'payment.refnd'",
         false},
        {"{\"steps\":[{\"type\":\"it.apply\",\"body\":[1]}]}", "\"body\" is a JSON array", false},
        {"{\"steps\":[[[{\"type\":\"it.apply\",\"body\":{}}]]]}", "is an array", false},
        {"{\"steps\":[{\"type\":\"cw.saga.plan\",\"body\":{\"steps\":[]}}]}", "cannot be a plan",
         false},
        {"{\"steps\":[{\"type\":\"it.apply\",\"body\":{}}]}", "correlation_id", true},
        {"{\"steps\":[{\"type\":\"it.apply\",\"body\":{}}],\"deadline\":\"whenever\"}",
         "\"deadline\"", false},
    };
    size_t n = sizeof plans / sizeof *plans;
    cwtest_worker_start(env);
    for (size_t i = 0; i < n; i++) {
        char plan[64], saga[64];
        snprintf(plan, sizeof plan, "hostile-%ld-%zu", (long)getpid(), i);
        snprintf(saga, sizeof saga, "saga-hostile-%ld-%zu", (long)getpid(), i);
        publish_plan(env, plan, plans[i].no_saga ? NULL : saga, plans[i].body);
    }
    cwtest_confirm_all(env);
    cwtest_queue_wait(env, env->dlq, (uint32_t)n, WAIT_MS);
    size_t got;
    cwtest_msg *m = cwtest_drain(env, env->dlq, &got);
    assert_int_equal(got, n);
    for (size_t i = 0; i < got; i++) {
        size_t k = n;
        for (size_t c = 0; c < n; c++) {
            char plan[64];
            snprintf(plan, sizeof plan, "hostile-%ld-%zu", (long)getpid(), c);
            if (m[i].message_id && strcmp(m[i].message_id, plan) == 0)
                k = c;
        }
        if (k == n)
            fail_msg("a dead-letter not of this test: %s", m[i].message_id);
        const char *cls = cwtest_msg_str(&m[i], "cw-error-class");
        const char *why = cwtest_msg_str(&m[i], "cw-error");
        if (!cls || strcmp(cls, "invalid") != 0 || !why || !strstr(why, plans[k].says))
            fail_msg("plan %zu: dead-lettered as %s with '%s', not invalid saying '%s'", k,
                     cls ? cls : "?", why ? why : "?", plans[k].says);
    }
    cwtest_msgs_free(m, got);
    assert_int_equal(ledger_int(env, "SELECT count(*) FROM calls", NULL), 0);
    assert_int_equal(cwtest_worker_stop(env, SIGTERM, 30000), 0);
    cwtest_pass(env);
}

/* ---- retention ------------------------------------------------------------------ */

static void retention_removes_done_sagas(void **state)
{
    cwtest_env *env = begin(state, "retention", false, NULL, "\n[store]\nretention = 2s\n");
    cwtest_worker_start(env);
    char plan[64], saga[64];
    snprintf(plan, sizeof plan, "plan-kept-%ld", (long)getpid());
    snprintf(saga, sizeof saga, "saga-kept-%ld", (long)getpid());
    publish_plan(env, plan, saga, "{\"steps\":[{\"type\":\"it.apply\",\"body\":{}}]}");
    cwtest_confirm_all(env);
    wait_state(env, saga, "done", WAIT_MS);
    /* gone after the retention: saga show knows it no more */
    char out[4096];
    int64_t deadline = cwtest_now_ms() + 20000;
    int rc;
    while ((rc = cwtest_cli(env, out, sizeof out, false, "saga", "show", "-c", env->ini, saga,
                            NULL)) == 0 &&
           cwtest_now_ms() < deadline)
        cwtest_sleep_ms(200);
    assert_int_equal(rc, 1);
    assert_int_equal(cwtest_worker_stop(env, SIGTERM, 30000), 0);
    cwtest_pass(env);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_teardown(plans_in_order_file, cwtest_teardown),
        cmocka_unit_test_teardown(plans_in_order_pg, cwtest_teardown),
        cmocka_unit_test_teardown(stuck_and_resumed_file, cwtest_teardown),
        cmocka_unit_test_teardown(stuck_and_resumed_pg, cwtest_teardown),
        cmocka_unit_test_teardown(deadline_alert_once, cwtest_teardown),
        cmocka_unit_test_teardown(hostile_plans, cwtest_teardown),
        cmocka_unit_test_teardown(retention_removes_done_sagas, cwtest_teardown),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
