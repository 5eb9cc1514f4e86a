/* Integration tests of the worker pool (DESIGN.md, "Worker pools"): the
 * supervisor and its worker processes against a real RabbitMQ node, with
 * tests/plugins/ledger_plugin.so counting what each task did.
 *
 *   - a worker killed with SIGKILL mid-run is replaced, nothing lost;
 *   - SIGTERM under load: in-flight tasks settle, exit 0 within the
 *     timeout, nothing lost, nothing applied twice; past shutdown_timeout
 *     the worker is killed and its task redelivered;
 *   - SIGHUP rolls the workers one by one onto the new file (an invalid file
 *     is refused and the pool goes on);
 *   - /metrics (scraped with libcurl) counts what was sent, across workers
 *     and across a worker's death;
 *   - /healthz is 503 while the broker is stopped, 200 again after;
 *   - a plugin that keeps crashing kills only its worker, the restarts back
 *     off, and the crash loop raises an alert through [alert] command;
 *   - --workers, JSON logs and `compworker config check`;
 *   - READY=1 and STOPPING=1 to $NOTIFY_SOCKET (Type=notify), when built
 *     with libsystemd. */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>

#include <curl/curl.h>
#include <json.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <unistd.h>

#include "cwtest.h"

#define WAIT_MS CWTEST_TIMEOUT_MS

/* ---- helpers ------------------------------------------------------------ */

/* Starts the pool and waits until `workers` more workers consume. */
static void pool_start(cwtest_env *env, unsigned workers)
{
    unsigned before = cwtest_log_count(env, "consuming from");
    cwtest_worker_start(env);
    cwtest_log_wait(env, "consuming from", before + workers, WAIT_MS);
}

/* The pid of worker `index` as last started, from the supervisor's log. */
static long worker_pid(const cwtest_env *env, unsigned index)
{
    char *log = cwtest_log_read(env);
    char needle[64];
    snprintf(needle, sizeof needle, "msg=\"worker %u started (pid ", index);
    long pid = 0;
    for (const char *p = log; (p = strstr(p, needle)); p++)
        pid = strtol(p + strlen(needle), NULL, 10);
    free(log);
    if (pid <= 0)
        fail_msg("no 'worker %u started' line in %s", index, env->log);
    return pid;
}

/* The sum of the samples of metric `name` whose labels contain `has`. */
static double sample_sum(const char *body, const char *name, const char *has)
{
    double sum = 0;
    size_t n = strlen(name);
    for (const char *p = body; p && *p; p = strchr(p, '\n'), p = p ? p + 1 : NULL) {
        if (strncmp(p, name, n) != 0 || p[n] != '{')
            continue;
        const char *close = strstr(p, "} ");
        const char *end = strchr(p, '\n');
        if (!close || (end && close > end))
            continue;
        char labels[512];
        snprintf(labels, sizeof labels, "%.*s", (int)(close - p), p);
        if (!has || strstr(labels, has))
            sum += strtod(close + 2, NULL);
    }
    return sum;
}

/* `name{pool="<pool>"<rest>}` */
static const char *series(const cwtest_env *env, const char *name, const char *rest)
{
    static char s[512];
    snprintf(s, sizeof s, "%s{pool=\"%s\"%s}", name, env->name, rest ? rest : "");
    return s;
}

/* Waits until the sample is `want`; returns the last body (free() it). */
static char *metrics_wait(cwtest_env *env, const char *base, const char *ser, double want,
                          int timeout_ms)
{
    int64_t deadline = cwtest_now_ms() + timeout_ms;
    for (;;) {
        long code;
        char *body = cwtest_http_get(base, "/metrics", &code);
        double got = cwtest_metric(body, ser);
        if (code == 200 && got == want)
            return body;
        if (cwtest_now_ms() >= deadline) {
            fprintf(stderr, "%s\n", body);
            free(body);
            fail_msg("%s is %g, not %g, after %d ms (HTTP %ld)", ser, got, want, timeout_ms, code);
        }
        free(body);
        if (!cwtest_worker_alive(env))
            fail_msg("the pool exited (code %d); see %s", env->last_exit, env->log);
        cwtest_sleep_ms(200);
    }
}

/* Waits until /healthz answers `want`. */
static void health_wait(const char *base, long want, int timeout_ms)
{
    int64_t t0 = cwtest_now_ms();
    for (;;) {
        long code;
        char *body = cwtest_http_get(base, "/healthz", &code);
        if (code == want) {
            print_message("/healthz %ld after %lld ms: %s", code, (long long)(cwtest_now_ms() - t0),
                          body);
            free(body);
            return;
        }
        if (cwtest_now_ms() - t0 >= timeout_ms) {
            fail_msg("/healthz answers %ld (%s), not %ld, after %d ms", code, body, want,
                     timeout_ms);
        }
        free(body);
        cwtest_sleep_ms(200);
    }
}

/* Sends `n` tasks "<prefix>-<i>" with `body`, confirmed. */
static void send_tasks(cwtest_env *env, const char *prefix, int from, int n, const char *body)
{
    char id[96];
    for (int i = from; i < from + n; i++) {
        snprintf(id, sizeof id, "%s-%04d", prefix, i);
        cwtest_send_task(env, id, "saga-pool", body);
    }
    cwtest_confirm_all(env);
}

/* Every task "<prefix>-<i>", i < n, applied exactly once; nothing else. */
static void expect_exactly_once(cwtest_env *env, long n)
{
    long rows = cwtest_ledger_rows(env), distinct = cwtest_ledger_distinct(env);
    long most = cwtest_ledger_max_per_id(env);
    if (rows != n || distinct != n || most != 1)
        fail_msg("ledger: %ld rows, %ld message IDs, at most %ld per ID; want %ld, %ld and 1", rows,
                 distinct, most, n, n);
}

/* Waits until `n` distinct message IDs were applied. */
static void distinct_wait(cwtest_env *env, long n, int timeout_ms)
{
    int64_t deadline = cwtest_now_ms() + timeout_ms;
    while (cwtest_ledger_distinct(env) < n) {
        if (!cwtest_worker_alive(env))
            fail_msg("the pool exited (code %d); see %s", env->last_exit, env->log);
        if (cwtest_now_ms() >= deadline)
            fail_msg("%ld of %ld message IDs applied after %d ms", cwtest_ledger_distinct(env), n,
                     timeout_ms);
        cwtest_sleep_ms(50);
    }
}

static void stop_pool(cwtest_env *env, int timeout_ms)
{
    int code = cwtest_worker_stop(env, SIGTERM, timeout_ms);
    if (code != 0)
        fail_msg("the pool exited with code %d after SIGTERM, not 0; see %s", code, env->log);
}

/* ---- 1. kill -9 a worker ------------------------------------------------ */

#define KILL_N 200

static void test_kill9_replaced(void **state)
{
    cwtest_pool_opts po = {.pool_lines = "workers = 2\n", .extra = "[broker]\nprefetch = 8\n"};
    cwtest_env *env = cwtest_begin(state, "kill9", &po);
    pool_start(env, 2);
    send_tasks(env, "k", 0, KILL_N, "{\"sleep_ms\":10}");
    cwtest_ledger_wait(env, 40, WAIT_MS);

    long victim = worker_pid(env, 1);
    assert_int_equal(kill((pid_t)victim, SIGKILL), 0);
    cwtest_log_wait(env, "killed by SIGKILL", 1, WAIT_MS);
    cwtest_log_wait(env, "msg=\"worker 1 started", 2, WAIT_MS);
    assert_true(worker_pid(env, 1) != victim);

    distinct_wait(env, KILL_N, WAIT_MS);
    cwtest_queue_wait(env, env->queue, 0, WAIT_MS);
    /* Nothing lost. A kill between a handler's effect and its record makes
     * that task run again on redelivery: at most the batch in hand. */
    long rows = cwtest_ledger_rows(env);
    print_message("kill -9: %d tasks, %ld applications (%ld again after the kill)\n", KILL_N, rows,
                  rows - KILL_N);
    assert_true(rows - KILL_N <= 4);
    assert_true(cwtest_worker_alive(env));
    stop_pool(env, 30000);
    cwtest_pass(env);
}

/* ---- 2. SIGTERM under load ---------------------------------------------- */

#define TERM_N 300

static void test_sigterm_under_load(void **state)
{
    cwtest_pool_opts po = {.pool_lines = "workers = 2\nshutdown_timeout = 10s\n",
                           .extra = "[broker]\nprefetch = 20\n"};
    cwtest_env *env = cwtest_begin(state, "term", &po);
    pool_start(env, 2);
    send_tasks(env, "t", 0, TERM_N, "{\"sleep_ms\":20}");
    cwtest_ledger_wait(env, 50, WAIT_MS);

    int64_t t0 = cwtest_now_ms();
    stop_pool(env, 12000);
    int64_t took = cwtest_now_ms() - t0;
    long applied = cwtest_ledger_rows(env);
    print_message("SIGTERM under load: exit 0 after %lld ms, %ld of %d applied\n", (long long)took,
                  applied, TERM_N);
    assert_true(took < 10000);
    /* Both workers settled their batch and stopped. */
    assert_int_equal(cwtest_log_count(env, "has stopped (exited with code 0)"), 2);
    expect_exactly_once(env, applied);
    /* What was not applied is back in the queue: nothing lost. */
    cwtest_queue_wait_idle(env, env->queue, WAIT_MS);
    assert_int_equal(cwtest_queue_count(env, env->queue), (uint32_t)(TERM_N - applied));

    pool_start(env, 2);
    distinct_wait(env, TERM_N, WAIT_MS);
    cwtest_queue_wait(env, env->queue, 0, WAIT_MS);
    stop_pool(env, 12000);
    expect_exactly_once(env, TERM_N);
    cwtest_pass(env);
}

/* Past shutdown_timeout the worker is killed; its task goes back. */
static void test_shutdown_timeout(void **state)
{
    cwtest_pool_opts po = {.pool_lines = "workers = 1\nshutdown_timeout = 2s\n"};
    cwtest_env *env = cwtest_begin(state, "shuttimeout", &po);
    pool_start(env, 1);
    cwtest_send_task(env, "hang-1", "saga-hang", "{\"hang_ms\":60000}");
    cwtest_confirm_all(env);
    cwtest_calls_wait(env, "hang-1", 1, WAIT_MS);

    int64_t t0 = cwtest_now_ms();
    stop_pool(env, 10000);
    int64_t took = cwtest_now_ms() - t0;
    print_message("shutdown_timeout 2s: exit 0 after %lld ms\n", (long long)took);
    assert_true(took >= 1900 && took < 5000);
    assert_int_equal(cwtest_log_count(env, "did not stop within shutdown_timeout"), 1);
    /* Unacknowledged: the broker has it again. */
    cwtest_queue_wait(env, env->queue, 1, WAIT_MS);
    assert_int_equal(cwtest_ledger_rows(env), 0);
    cwtest_pass(env);
}

/* ---- 3. SIGHUP: a rolling restart ---------------------------------------- */

#define HUP_N 240

static void write_pool_file(cwtest_env *env, unsigned workers, const char *extra)
{
    char ini[4096];
    snprintf(ini, sizeof ini,
             "[broker]\nurl = %s\nprefetch = 10\n[pool]\nname = %s\nworkers = %u\n"
             "plugins = %s/ledger_plugin.so\nshutdown_timeout = 10s\n[store]\npath = %s/store.db\n"
             "[plugin ledger]\npath = %s\n%s",
             env->url, env->name, workers, CW_TEST_PLUGIN_DIR, env->dir, env->ledger,
             extra ? extra : "");
    cwtest_write_file(env->ini, ini, 0644);
}

static void test_sighup_rolls(void **state)
{
    cwtest_env *env = cwtest_begin(state, "hup", NULL);
    write_pool_file(env, 2, NULL);
    pool_start(env, 2);
    long old1 = worker_pid(env, 1), old2 = worker_pid(env, 2);

    send_tasks(env, "h", 0, HUP_N / 2, "{\"sleep_ms\":15}");
    cwtest_ledger_wait(env, 20, WAIT_MS);
    /* Three workers now, while tasks flow. */
    write_pool_file(env, 3, NULL);
    assert_int_equal(kill(env->worker, SIGHUP), 0);
    send_tasks(env, "h", HUP_N / 2, HUP_N / 2, "{\"sleep_ms\":15}");
    cwtest_log_wait(env, "rolling restart done", 1, WAIT_MS);
    assert_true(worker_pid(env, 1) != old1);
    assert_true(worker_pid(env, 2) != old2);
    (void)worker_pid(env, 3);
    /* The old workers stopped gracefully, one after the other. */
    assert_true(cwtest_log_count(env, "has stopped (exited with code 0)") >= 2);
    assert_false(kill((pid_t)old1, 0) == 0);
    assert_false(kill((pid_t)old2, 0) == 0);

    distinct_wait(env, HUP_N, WAIT_MS);
    cwtest_queue_wait(env, env->queue, 0, WAIT_MS);
    expect_exactly_once(env, HUP_N);

    /* An invalid file is refused; the running workers go on. */
    long cur1 = worker_pid(env, 1);
    cwtest_write_file(env->ini, "[pool]\nworkers = lots\n", 0644);
    assert_int_equal(kill(env->worker, SIGHUP), 0);
    cwtest_log_wait(env, "the configuration is not valid, keeping the running one", 1, WAIT_MS);
    send_tasks(env, "h", HUP_N, 1, "{}");
    distinct_wait(env, HUP_N + 1, WAIT_MS);
    assert_int_equal(worker_pid(env, 1), cur1);
    write_pool_file(env, 3, NULL); /* so that the stop below reads a valid file */
    stop_pool(env, 15000);
    expect_exactly_once(env, HUP_N + 1);
    cwtest_pass(env);
}

/* ---- 4. metrics ----------------------------------------------------------- */

static void test_metrics_match(void **state)
{
    cwtest_pool_opts po = {.pool_lines = "workers = 2\nmetrics_listen = 127.0.0.1:0\n",
                           .extra = "[retry]\ninterval = 100ms\njitter = none\n"};
    cwtest_env *env = cwtest_begin(state, "metrics", &po);
    pool_start(env, 2);
    char base[128];
    cwtest_metrics_base(env, base, sizeof base);
    long code;
    char *body = cwtest_http_get(base, "/healthz", &code);
    assert_int_equal(code, 200);
    free(body);

    send_tasks(env, "ok", 0, 30, "{}");
    send_tasks(env, "fail", 0, 5, "{\"fail\":\"no such payment\"}");
    send_tasks(env, "flaky", 0, 4, "{\"fail_times\":1}");
    cwtest_out bad = {.exchange = "cw.tasks",
                      .routing_key = "it.apply",
                      .type = "it.apply",
                      .message_id = "bad-1",
                      .body = "{not json"};
    cwtest_publish(env, &bad);
    bad.message_id = "bad-2";
    cwtest_publish(env, &bad);
    distinct_wait(env, 34, WAIT_MS);
    send_tasks(env, "ok", 0, 6, "{}"); /* duplicates of applied tasks */

    const char *t = ",type=\"it.apply\"";
    free(metrics_wait(env, base, series(env, "compworker_tasks_duplicates_skipped_total", t), 6,
                      WAIT_MS));
    body = metrics_wait(env, base, series(env, "compworker_tasks_succeeded_total", t), 34, WAIT_MS);
    /* received: 30 + 5 + 4 x 2 (a retry is a delivery) + 2 invalid + 6 duplicates */
    assert_int_equal(sample_sum(body, "compworker_tasks_received_total", NULL), 51);
    assert_int_equal(cwtest_metric(body, series(env, "compworker_tasks_retried_total", t)), 4);
    assert_int_equal(cwtest_metric(body, series(env, "compworker_tasks_dead_lettered_total",
                                                ",type=\"it.apply\",error_class=\"permanent\"")),
                     5);
    assert_int_equal(sample_sum(body, "compworker_tasks_dead_lettered_total",
                                "error_class=\"invalid\""),
                     2);
    /* Handler runs: 30 + 5 + 8. */
    assert_int_equal(cwtest_metric(body,
                                   series(env, "compworker_handler_duration_seconds_count", t)),
                     43);
    assert_int_equal(cwtest_metric(body, series(env, "compworker_handler_duration_seconds_bucket",
                                                ",type=\"it.apply\",le=\"+Inf\"")),
                     43);
    /* Measured from when each run began: these handlers return at once. */
    assert_int_equal(cwtest_metric(body, series(env, "compworker_handler_duration_seconds_bucket",
                                                ",type=\"it.apply\",le=\"10\"")),
                     43);
    assert_int_equal(cwtest_metric(body, series(env, "compworker_workers", NULL)), 2);
    assert_int_equal(cwtest_metric(body, series(env, "compworker_workers_connected", NULL)), 2);
    assert_int_equal(cwtest_metric(body, series(env, "compworker_worker_restarts_total", NULL)), 0);
    assert_non_null(strstr(body, "# TYPE compworker_handler_duration_seconds histogram\n"));
    free(body);
    /* The depths come from the monitor's own passive declares. */
    char dlq_series[400];
    snprintf(dlq_series, sizeof dlq_series, "compworker_dlq_messages{pool=\"%s\",queue=\"%s\"}",
             env->name, env->dlq);
    free(metrics_wait(env, base, dlq_series, 7, WAIT_MS));

    /* A worker killed: counters keep what it counted, restarts count it. */
    assert_int_equal(kill((pid_t)worker_pid(env, 2), SIGKILL), 0);
    body = metrics_wait(env, base, series(env, "compworker_worker_restarts_total", NULL), 1,
                        WAIT_MS);
    assert_int_equal(cwtest_metric(body, series(env, "compworker_tasks_succeeded_total", t)), 34);
    assert_int_equal(sample_sum(body, "compworker_tasks_received_total", NULL), 51);
    free(body);
    free(metrics_wait(env, base, series(env, "compworker_workers_connected", NULL), 2, WAIT_MS));
    print_message("metrics: every counter matches the 47 tasks sent\n");
    stop_pool(env, 15000);
    cwtest_pass(env);
}

/* ---- 5. /healthz and the broker ------------------------------------------- */

static void test_healthz_broker_stopped(void **state)
{
    cwtest_pool_opts po = {.pool_lines = "workers = 2\nmetrics_listen = 127.0.0.1:0\n"};
    cwtest_env *env = cwtest_begin(state, "healthz", &po);
    pool_start(env, 2);
    char base[128];
    cwtest_metrics_base(env, base, sizeof base);
    health_wait(base, 200, WAIT_MS);

    cwtest_harness(env, "stop-app");
    health_wait(base, 503, 20000);
    cwtest_harness(env, "start-app");
    health_wait(base, 200, 90000);

    send_tasks(env, "hz", 0, 3, "{}");
    distinct_wait(env, 3, WAIT_MS);
    stop_pool(env, 15000);
    cwtest_pass(env);
}

/* ---- 6. a crashing plugin: its worker dies, the pool alerts --------------- */

static void test_crash_loop_alert(void **state)
{
    char extra[1024];
    cwtest_pool_opts po = {.pool_lines = "workers = 2\nmetrics_listen = 127.0.0.1:0\n",
                           .extra = extra};
    /* The alert command appends what it receives to alerts.jsonl. */
    char dir[256];
    snprintf(dir, sizeof dir, "/tmp/cw-it-crashloop-%ld", (long)getpid());
    snprintf(extra, sizeof extra,
             "[broker]\nprefetch = 1\n[retry]\nmax_deliveries = 3\n[alert]\ncommand = "
             "%s/alert.sh\nrate_limit = 0\n",
             dir);
    mkdir(dir, 0700);
    char script[512], alerts[512];
    snprintf(script, sizeof script, "%s/alert.sh", dir);
    snprintf(alerts, sizeof alerts, "%s/alerts.jsonl", dir);
    char text[1200];
    snprintf(text, sizeof text, "#!/bin/sh\ncat >> %s\necho >> %s\n", alerts, alerts);
    cwtest_write_file(script, text, 0755);

    cwtest_env *env = cwtest_begin(state, "crashloop", &po);
    pool_start(env, 2);
    char base[128];
    cwtest_metrics_base(env, base, sizeof base);
    /* Two tasks that crash their worker: 3 deliveries each (one at a time:
     * prefetch 1), then poison. */
    send_tasks(env, "boom", 0, 2, "{\"crash\":true}");
    send_tasks(env, "fine", 0, 10, "{}");
    cwtest_queue_wait(env, env->dlq, 2, 90000);
    distinct_wait(env, 10, WAIT_MS);
    assert_true(cwtest_worker_alive(env)); /* the supervisor never died */
    unsigned deaths = cwtest_log_count(env, "killed by SIGSEGV");
    assert_true(deaths >= 5);
    cwtest_log_wait(env, "crash loop: 5 worker exits within", 1, WAIT_MS);

    /* The alert: through the hook, with error_class crash-loop. */
    int64_t deadline = cwtest_now_ms() + WAIT_MS;
    bool found = false;
    while (!found && cwtest_now_ms() < deadline) {
        size_t n = 0;
        struct json_object **docs = cwtest_json_read(alerts, &n);
        for (size_t i = 0; i < n; i++) {
            const char *cls = cwtest_json_str(docs[i], "error_class");
            if (cls && strcmp(cls, "crash-loop") == 0) {
                found = true;
                const char *reason = cwtest_json_str(docs[i], "reason");
                assert_non_null(reason);
                assert_non_null(strstr(reason, "killed by SIGSEGV"));
                print_message("crash-loop alert: %s\n", reason);
            }
        }
        cwtest_json_free(docs, n);
        if (!found)
            cwtest_sleep_ms(100);
    }
    if (!found)
        fail_msg("no crash-loop alert in %s", alerts);
    long code;
    char *body = cwtest_http_get(base, "/metrics", &code);
    assert_int_equal(cwtest_metric(body, series(env, "compworker_crash_loops_total", NULL)), 1);
    assert_true(cwtest_metric(body, series(env, "compworker_worker_restarts_total", NULL)) >= 5);
    assert_int_equal(cwtest_metric(body, series(env, "compworker_tasks_dead_lettered_total",
                                                ",type=\"it.apply\",error_class=\"poison\"")),
                     2);
    free(body);
    print_message("crash loop: %u worker deaths, the pool kept serving\n", deaths);
    stop_pool(env, 15000);
    unlink(script);
    unlink(alerts);
    rmdir(dir);
    cwtest_pass(env);
}

/* ---- 7. --workers, JSON logs, config check --------------------------------- */

static void test_flags_json_logs(void **state)
{
    cwtest_pool_opts po = {.extra = "[log]\nformat = json\n"};
    cwtest_env *env = cwtest_begin(state, "jsonlogs", &po);
    env->run_args[0] = "--workers";
    env->run_args[1] = "3";
    pool_start(env, 3);
    send_tasks(env, "j", 0, 3, "{\"fail\":\"declined\"}");
    cwtest_queue_wait(env, env->dlq, 3, WAIT_MS);
    stop_pool(env, 15000);

    /* Every line is one JSON object; task lines carry the IDs. */
    char *log = cwtest_log_read(env);
    unsigned lines = 0, task_lines = 0, workers_started = 0;
    for (char *line = strtok(log, "\n"); line; line = strtok(NULL, "\n")) {
        json_object *o = json_tokener_parse(line);
        if (!o)
            fail_msg("not a JSON line: %s", line);
        lines++;
        const char *msg = cwtest_json_str(o, "msg");
        assert_non_null(cwtest_json_str(o, "ts"));
        assert_non_null(cwtest_json_str(o, "level"));
        assert_non_null(msg);
        if (strstr(msg, "dead-lettered to")) {
            task_lines++;
            assert_non_null(cwtest_json_str(o, "message_id"));
            assert_string_equal(cwtest_json_str(o, "saga_id"), "saga-pool");
            assert_string_equal(cwtest_json_str(o, "type"), "it.apply");
        }
        if (strstr(msg, "started (pid"))
            workers_started++;
        json_object_put(o);
    }
    free(log);
    assert_int_equal(task_lines, 3);
    assert_int_equal(workers_started, 3); /* --workers 3 won over the file's default */
    print_message("json logs: %u lines, all JSON\n", lines);

    /* config check: every value, with its source; the password masked. */
    char cmd[2048];
    snprintf(cmd, sizeof cmd, "CW_POOL_SHUTDOWN_TIMEOUT=7s %s config check -c %s --workers 4",
             env->exe, env->ini);
    FILE *p = popen(cmd, "r");
    assert_non_null(p);
    char out[16384];
    size_t n = fread(out, 1, sizeof out - 1, p);
    out[n] = '\0';
    assert_int_equal(pclose(p), 0);
    assert_non_null(strstr(out, "workers = 4"));
    assert_non_null(strstr(out, "; flag --workers"));
    assert_non_null(strstr(out, "shutdown_timeout = 7s"));
    assert_non_null(strstr(out, "; env CW_POOL_SHUTDOWN_TIMEOUT"));
    assert_non_null(strstr(out, "format = json"));
    assert_non_null(strstr(out, "exchange = cw.tasks"));
    assert_non_null(strstr(out, "guest:***@"));
    assert_null(strstr(out, "guest:guest@"));
    snprintf(cmd, sizeof cmd, "%s config check -c %s --workers 0 2>&1", env->exe, env->ini);
    p = popen(cmd, "r");
    n = fread(out, 1, sizeof out - 1, p);
    out[n] = '\0';
    assert_int_equal(WEXITSTATUS(pclose(p)), 2);
    assert_non_null(strstr(out, "--workers: [pool] workers: '0' is not between 1 and 64"));
    cwtest_pass(env);
}

/* ---- 8. systemd readiness (Type=notify) ----------------------------------- */

static void test_sd_notify(void **state)
{
    cwtest_pool_opts po = {.pool_lines = "workers = 2\n"};
    cwtest_env *env = cwtest_begin(state, "notify", &po);
    char cmd[1024], out[512] = "";
    snprintf(cmd, sizeof cmd, "%s config check -c %s", env->exe, env->ini);
    FILE *p = popen(cmd, "r");
    if (!p || !fgets(out, sizeof out, p))
        fail_msg("%s printed nothing", cmd);
    pclose(p);
    if (!strstr(out, "sd_notify: yes")) {
        print_message("built without libsystemd: no readiness notification to test\n");
        cwtest_pass(env);
        return;
    }
    /* Play systemd: a datagram socket in NOTIFY_SOCKET. */
    char path[300];
    snprintf(path, sizeof path, "%s/notify.sock", env->dir);
    int fd = socket(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC, 0);
    assert_true(fd >= 0);
    struct sockaddr_un sa = {.sun_family = AF_UNIX};
    if (strlen(path) >= sizeof sa.sun_path)
        fail_msg("socket path too long: %s", path);
    memcpy(sa.sun_path, path, strlen(path) + 1);
    assert_int_equal(bind(fd, (struct sockaddr *)&sa, sizeof sa), 0);
    setenv("NOTIFY_SOCKET", path, 1);
    cwtest_worker_start(env);
    unsetenv("NOTIFY_SOCKET");

    char got[4096] = "";
    int64_t deadline = cwtest_now_ms() + WAIT_MS;
    while (!strstr(got, "READY=1") && cwtest_now_ms() < deadline) {
        struct pollfd pf = {.fd = fd, .events = POLLIN};
        if (poll(&pf, 1, 200) == 1) {
            char msg[512];
            ssize_t n = recv(fd, msg, sizeof msg - 1, 0);
            if (n > 0) {
                msg[n] = '\0';
                strncat(got, msg, sizeof got - strlen(got) - 2);
                strcat(got, "\n");
            }
        }
    }
    print_message("sd_notify: %s", got);
    assert_non_null(strstr(got, "READY=1"));
    assert_non_null(strstr(got, "STATUS=2 of 2 workers running"));
    /* STOPPING=1 comes when SIGTERM does. */
    assert_int_equal(kill(env->worker, SIGTERM), 0);
    deadline = cwtest_now_ms() + WAIT_MS;
    while (!strstr(got, "STOPPING=1") && cwtest_now_ms() < deadline) {
        struct pollfd pf = {.fd = fd, .events = POLLIN};
        if (poll(&pf, 1, 200) == 1) {
            char msg[512];
            ssize_t n = recv(fd, msg, sizeof msg - 1, 0);
            if (n > 0) {
                msg[n] = '\0';
                strncat(got, msg, sizeof got - strlen(got) - 2);
            }
        }
    }
    assert_non_null(strstr(got, "STOPPING=1"));
    assert_int_equal(cwtest_worker_wait_exit(env, 15000), 0);
    close(fd);
    cwtest_pass(env);
}

int main(void)
{
    curl_global_init(CURL_GLOBAL_DEFAULT);
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_teardown(test_kill9_replaced, cwtest_teardown),
        cmocka_unit_test_teardown(test_sigterm_under_load, cwtest_teardown),
        cmocka_unit_test_teardown(test_shutdown_timeout, cwtest_teardown),
        cmocka_unit_test_teardown(test_sighup_rolls, cwtest_teardown),
        cmocka_unit_test_teardown(test_metrics_match, cwtest_teardown),
        cmocka_unit_test_teardown(test_healthz_broker_stopped, cwtest_teardown),
        cmocka_unit_test_teardown(test_crash_loop_alert, cwtest_teardown),
        cmocka_unit_test_teardown(test_flags_json_logs, cwtest_teardown),
        cmocka_unit_test_teardown(test_sd_notify, cwtest_teardown),
    };
    int rc = cmocka_run_group_tests(tests, NULL, NULL);
    curl_global_cleanup();
    return rc;
}
