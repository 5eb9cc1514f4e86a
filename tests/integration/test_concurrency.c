/* Integration tests of handler threads (DESIGN.md, "Scale"), against the test
 * broker with tests/plugins/ledger_plugin.so, whose `calls` and `applied`
 * tables give each call's start and end:
 *
 *   - [pool] concurrency = 8 runs 8 handlers of a concurrent type at once, no
 *     more, each task once;
 *   - a handler registered the old way (not concurrent) runs one at a time
 *     whatever concurrency says, and the worker and config check say so;
 *   - [handler TYPE] concurrency caps the type; [handler TYPE] rate_limit is
 *     kept by the pool's workers together;
 *   - heartbeats flow while a handler runs for longer than three heartbeat
 *     intervals: the connection stays, the task is applied once;
 *   - /metrics shows the handlers in flight and their waits for a thread. */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>

#include <curl/curl.h>
#include <signal.h>
#include <sqlite3.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include "cwtest.h"

#define WAIT_MS CWTEST_TIMEOUT_MS

static void pool_start(cwtest_env *env, unsigned workers)
{
    unsigned before = cwtest_log_count(env, "consuming from");
    cwtest_worker_start(env);
    cwtest_log_wait(env, "consuming from", before + workers, WAIT_MS);
}

static void send_n(cwtest_env *env, const char *prefix, int n, const char *body)
{
    char id[64];
    for (int i = 0; i < n; i++) {
        snprintf(id, sizeof id, "%s-%03d", prefix, i);
        cwtest_send_task(env, id, "saga-conc", body);
    }
    cwtest_confirm_all(env);
}

/* The most handler calls that ran at once, from the ledger: each applied
 * task's interval from its call's start to its application (wall clock). */
static long most_at_once(const cwtest_env *env)
{
    sqlite3 *db;
    if (sqlite3_open_v2(env->ledger, &db, SQLITE_OPEN_READONLY, NULL) != SQLITE_OK)
        fail_msg("open %s", env->ledger);
    sqlite3_busy_timeout(db, 10000);
    const char *sql = "WITH iv AS (SELECT c.wall_ms AS s, a.at AS e FROM calls c JOIN applied a"
                      "  ON a.message_id = c.message_id)"
                      " SELECT max((SELECT count(*) FROM iv o WHERE o.s <= i.s AND o.e > i.s))"
                      " FROM iv i";
    sqlite3_stmt *st;
    long v = -1;
    if (sqlite3_prepare_v2(db, sql, -1, &st, NULL) == SQLITE_OK && sqlite3_step(st) == SQLITE_ROW)
        v = (long)sqlite3_column_int64(st, 0);
    else
        fail_msg("%s: %s", sql, sqlite3_errmsg(db));
    sqlite3_finalize(st);
    sqlite3_close(db);
    return v;
}

/* The most handler starts within any `window_ms`, from the ledger. */
static long most_starts_within(const cwtest_env *env, int window_ms)
{
    sqlite3 *db;
    if (sqlite3_open_v2(env->ledger, &db, SQLITE_OPEN_READONLY, NULL) != SQLITE_OK)
        fail_msg("open %s", env->ledger);
    sqlite3_busy_timeout(db, 10000);
    char sql[512];
    snprintf(sql, sizeof sql,
             "SELECT max((SELECT count(*) FROM calls o WHERE o.mono_ms >= i.mono_ms"
             " AND o.mono_ms < i.mono_ms + %d)) FROM calls i",
             window_ms);
    sqlite3_stmt *st;
    long v = -1;
    if (sqlite3_prepare_v2(db, sql, -1, &st, NULL) == SQLITE_OK && sqlite3_step(st) == SQLITE_ROW)
        v = (long)sqlite3_column_int64(st, 0);
    sqlite3_finalize(st);
    sqlite3_close(db);
    return v;
}

static void drained(cwtest_env *env, long n)
{
    assert_int_equal(cwtest_ledger_wait(env, n, 2 * WAIT_MS), n);
    cwtest_queue_wait(env, env->queue, 0, WAIT_MS);
    assert_int_equal(cwtest_worker_stop(env, SIGTERM, 30000), 0);
    assert_int_equal(cwtest_ledger_rows(env), n);
    assert_int_equal(cwtest_ledger_max_per_id(env), 1);
}

/* `compworker config check -c ini`'s standard output (free() it). */
static char *config_check(cwtest_env *env)
{
    char out[400];
    snprintf(out, sizeof out, "%s/check.out", env->dir);
    pid_t pid = fork();
    if (pid == 0) {
        if (!freopen(out, "w", stdout) || !freopen("/dev/null", "w", stderr))
            _exit(127);
        execl(env->exe, env->exe, "config", "check", "-c", env->ini, (char *)NULL);
        _exit(127);
    }
    int st;
    waitpid(pid, &st, 0);
    assert_true(WIFEXITED(st) && WEXITSTATUS(st) == 0);
    FILE *f = fopen(out, "r");
    assert_non_null(f);
    char *text = calloc(1, 65536);
    size_t n = fread(text, 1, 65535, f);
    text[n] = '\0';
    fclose(f);
    return text;
}

static void test_concurrent_handlers(void **state)
{
    cwtest_pool_opts po = {.pool_lines = "workers = 1\nconcurrency = 8\n",
                           .extra = "concurrent = true\n"};
    cwtest_env *env = cwtest_begin(state, "conc8", &po);
    pool_start(env, 1);
    char *log = cwtest_log_read(env);
    assert_non_null(strstr(log, "8 handler threads: it.apply: concurrent"));
    free(log);
    send_n(env, "c8", 32, "{\"sleep_ms\":300}");
    drained(env, 32);
    long most = most_at_once(env);
    print_message("at most %ld handlers at once (concurrency 8)\n", most);
    assert_int_equal(most, 8);
    cwtest_pass(env);
}

static void test_old_handlers_one_at_a_time(void **state)
{
    cwtest_pool_opts po = {.pool_lines = "workers = 1\nconcurrency = 8\n"};
    cwtest_env *env = cwtest_begin(state, "legacy", &po);
    char *check = config_check(env);
    if (!strstr(check, "it.apply (ledger 1.0.0): one at a time: not registered as concurrent"))
        fail_msg("config check does not say how it.apply runs:\n%s", check);
    free(check);
    pool_start(env, 1);
    char *log = cwtest_log_read(env);
    assert_non_null(strstr(log, "it.apply: one at a time (not registered as concurrent)"));
    free(log);
    send_n(env, "old", 10, "{\"sleep_ms\":100}");
    drained(env, 10);
    assert_int_equal(most_at_once(env), 1);
    cwtest_pass(env);
}

static void test_type_limit_and_rate(void **state)
{
    cwtest_pool_opts po = {.pool_lines = "workers = 2\nconcurrency = 8\n",
                           .extra = "concurrent = true\n"
                                    "\n[handler it.apply]\nconcurrency = 2\nrate_limit = 20/s\n"};
    cwtest_env *env = cwtest_begin(state, "limits", &po);
    char *check = config_check(env);
    if (!strstr(check, "it.apply (ledger 1.0.0): concurrent, at most 2 at once; at most 20 a "
                       "second on this host"))
        fail_msg("config check does not say how it.apply runs:\n%s", check);
    free(check);
    pool_start(env, 2);
    send_n(env, "lim", 40, "{\"sleep_ms\":50}");
    drained(env, 40);
    /* Two workers, two each at once at most. */
    long most = most_at_once(env);
    print_message("at most %ld at once (2 workers x 2)\n", most);
    assert_true(most <= 4);
    /* 20 a second, kept by both workers together: never many more than 20
     * starts in a second (the first of a burst and the clock's grain). */
    long starts = most_starts_within(env, 1000);
    print_message("at most %ld starts within a second (rate_limit 20/s)\n", starts);
    assert_true(starts <= 22);
    assert_true(starts >= 10);
    cwtest_pass(env);
}

static void test_heartbeats_during_a_long_handler(void **state)
{
    /* The broker closes a connection that misses two heartbeats: 1 s here,
     * a handler of 5 s. */
    cwtest_pool_opts po = {.pool_lines = "workers = 1\nhandler_timeout = 1m\n",
                           .extra = "\n[broker]\nheartbeat = 1s\n"};
    cwtest_env *env = cwtest_begin(state, "heartbeat", &po);
    pool_start(env, 1);
    send_n(env, "hb", 1, "{\"sleep_ms\":5000}");
    assert_int_equal(cwtest_ledger_wait(env, 1, WAIT_MS), 1);
    cwtest_sleep_ms(1500);
    assert_int_equal(cwtest_worker_stop(env, SIGTERM, 30000), 0);
    assert_int_equal(cwtest_ledger_rows(env), 1);
    /* One session all along: no reconnection, no redelivery. */
    assert_int_equal(cwtest_log_count(env, "consuming from"), 1);
    assert_int_equal(cwtest_log_count(env, "broker session lost"), 0);
    assert_int_equal(cwtest_log_count(env, "duplicate skipped"), 0);
    cwtest_pass(env);
}

/* The pool's /metrics now; free() it. */
static char *scrape(cwtest_env *env)
{
    char base[256];
    cwtest_metrics_base(env, base, sizeof base);
    long code;
    char *body = cwtest_http_get(base, "/metrics", &code);
    if (code != 200)
        fail_msg("GET %s/metrics: HTTP %ld", base, code);
    return body;
}

static void test_metrics_in_flight_and_waits(void **state)
{
    cwtest_pool_opts po = {.pool_lines =
                               "workers = 1\nconcurrency = 4\nmetrics_listen = 127.0.0.1:0\n",
                           .extra = "concurrent = true\n"};
    cwtest_env *env = cwtest_begin(state, "inflight", &po);
    pool_start(env, 1);
    send_n(env, "fl", 12, "{\"sleep_ms\":1500}");
    char want[512];
    snprintf(want, sizeof want, "compworker_handlers_in_flight{pool=\"%s\",type=\"it.apply\"} 4",
             env->name);
    bool seen = false;
    for (int i = 0; i < 50 && !seen; i++) {
        char *m = scrape(env);
        seen = strstr(m, want) != NULL;
        free(m);
        if (!seen)
            cwtest_sleep_ms(100);
    }
    assert_true(seen);
    assert_int_equal(cwtest_ledger_wait(env, 12, WAIT_MS), 12);
    cwtest_sleep_ms(500);
    char *m = scrape(env);
    snprintf(want, sizeof want,
             "compworker_handler_wait_seconds_count{pool=\"%s\",type=\"it.apply\"} 12", env->name);
    if (!strstr(m, want))
        fail_msg("no '%s' in:\n%s", want, m);
    snprintf(want, sizeof want, "compworker_handlers_in_flight{pool=\"%s\",type=\"it.apply\"} 0",
             env->name);
    assert_non_null(strstr(m, want));
    free(m);
    assert_int_equal(cwtest_worker_stop(env, SIGTERM, 30000), 0);
    cwtest_pass(env);
}

int main(void)
{
    curl_global_init(CURL_GLOBAL_DEFAULT);
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_teardown(test_concurrent_handlers, cwtest_teardown),
        cmocka_unit_test_teardown(test_old_handlers_one_at_a_time, cwtest_teardown),
        cmocka_unit_test_teardown(test_type_limit_and_rate, cwtest_teardown),
        cmocka_unit_test_teardown(test_heartbeats_during_a_long_handler, cwtest_teardown),
        cmocka_unit_test_teardown(test_metrics_in_flight_and_waits, cwtest_teardown),
    };
    int rc = cmocka_run_group_tests(tests, NULL, NULL);
    curl_global_cleanup();
    return rc;
}
