/* Integration tests of the fleet store (DESIGN.md, "Idempotency store"): pools
 * of one pool name on several "hosts" -- separate directories, processes and
 * configuration files on this machine -- sharing one PostgreSQL store on the
 * test server (CW_TEST_PG_URL), against the test broker.
 *
 *   - two hosts, every task published twice with the same message ID: none
 *     applied twice;
 *   - one host's pool SIGKILLed mid-run (supervisor and workers): the other
 *     applies its tasks within 60 s, none lost, a second application only
 *     of a task the killed host had applied and not yet recorded;
 *   - the PostgreSQL server stopped mid-run: the workers hold what they have
 *     unacked, /healthz says 503 "store unreachable", and when it is back
 *     they resume -- nothing lost, nothing applied twice, no worker
 *     restarted;
 *   - the server unreachable at start: the pool waits and tries again with a
 *     logged reason; `config check` fails at once with libpq's reason;
 *   - the safety net of a pool on SQLite: a consumer of its queue that is
 *     not one of its workers (another host) is warned about after 30 s and
 *     counted in /metrics.
 *
 * Each test uses a schema of its own. Skipped without CW_TEST_PG_URL. */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>

#include <amqp.h>
#include <amqp_tcp_socket.h>
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

/* ---- helpers -------------------------------------------------------------- */

/* A pool of `workers` workers on the PostgreSQL store, schema `schema`,
 * writing to `ledger` (NULL: its own). */
static cwtest_env *host(void **state, const char *test, const char *schema, unsigned workers,
                        const char *ledger, const char *more_pool_lines)
{
    char store[1024], pool[512];
    cwtest_pg_store_lines(store, sizeof store, schema);
    snprintf(pool, sizeof pool, "workers = %u\n%s", workers,
             more_pool_lines ? more_pool_lines : "");
    cwtest_pool_opts po = {.pool_lines = pool,
                           .store_lines = store,
                           .ledger = ledger,
                           .extra = "\n[broker]\nprefetch = 20\n"};
    return cwtest_begin(state, test, &po);
}

static void pool_start(cwtest_env *env, unsigned workers)
{
    unsigned before = cwtest_log_count(env, "consuming from");
    cwtest_worker_start(env);
    cwtest_log_wait(env, "consuming from", before + workers, WAIT_MS);
}

static void schema_name(char *out, size_t cap, const char *test)
{
    snprintf(out, cap, "it_%s_%ld", test, (long)getpid());
}

/* The pids of the workers a supervisor's log says it started. */
static size_t worker_pids(const cwtest_env *env, long *pids, size_t cap)
{
    char *log = cwtest_log_read(env);
    size_t n = 0;
    const char *needle = "started (pid ";
    for (const char *p = log; (p = strstr(p, needle)) && n < cap; p++)
        pids[n++] = strtol(p + strlen(needle), NULL, 10);
    free(log);
    return n;
}

/* A ledger query's single integer. */
static long ledger_long(const char *ledger, const char *sql)
{
    sqlite3 *db;
    if (sqlite3_open_v2(ledger, &db, SQLITE_OPEN_READONLY, NULL) != SQLITE_OK)
        fail_msg("open %s", ledger);
    sqlite3_busy_timeout(db, 10000);
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

/* Waits until nothing of the pool is on its way: its queue empty and the
 * short delay levels (where busy duplicates wait 2 s) empty, twice in a row. */
static void wait_quiet(cwtest_env *env, int timeout_ms)
{
    int64_t until = cwtest_now_ms() + timeout_ms;
    for (unsigned quiet = 0; quiet < 2;) {
        uint32_t n = cwtest_queue_count(env, env->queue);
        for (int l = 0; l < 6; l++) {
            char q[32];
            snprintf(q, sizeof q, "cw.delay.%02d", l);
            n += cwtest_queue_count(env, q);
        }
        quiet = n == 0 ? quiet + 1 : 0;
        if (cwtest_now_ms() > until)
            fail_msg("queue %s and the delay levels still hold %u messages", env->queue, n);
        cwtest_sleep_ms(500);
    }
}

static long wait_distinct(cwtest_env *env, long n, int timeout_ms)
{
    int64_t until = cwtest_now_ms() + timeout_ms;
    long d;
    while ((d = cwtest_ledger_distinct(env)) < n && cwtest_now_ms() < until)
        cwtest_sleep_ms(100);
    return d;
}

typedef struct body {
    char *data;
    size_t len;
} body;

static size_t on_body(char *p, size_t size, size_t n, void *ud)
{
    body *b = ud;
    char *grown = realloc(b->data, b->len + size * n + 1);
    if (!grown)
        return 0;
    memcpy(grown + b->len, p, size * n);
    b->len += size * n;
    grown[b->len] = '\0';
    b->data = grown;
    return size * n;
}

/* GET PATH of the pool's monitor: the status code, the body into out. */
static long monitor_get(cwtest_env *env, const char *path, char *out, size_t cap)
{
    cwtest_log_wait(env, "serving metrics at http://", 1, WAIT_MS);
    char *log = cwtest_log_read(env);
    const char *p = strstr(log, "serving metrics at ") + strlen("serving metrics at ");
    char url[256];
    size_t n = strcspn(p + 7, "/\"") + 7;
    snprintf(url, sizeof url, "%.*s%s", (int)n, p, path);
    free(log);
    CURL *c = curl_easy_init();
    body b = {calloc(1, 1), 0};
    curl_easy_setopt(c, CURLOPT_URL, url);
    curl_easy_setopt(c, CURLOPT_WRITEFUNCTION, on_body);
    curl_easy_setopt(c, CURLOPT_WRITEDATA, &b);
    curl_easy_setopt(c, CURLOPT_TIMEOUT_MS, 5000L);
    curl_easy_setopt(c, CURLOPT_NOSIGNAL, 1L);
    long code = 0;
    if (curl_easy_perform(c) == CURLE_OK)
        curl_easy_getinfo(c, CURLINFO_RESPONSE_CODE, &code);
    curl_easy_cleanup(c);
    snprintf(out, cap, "%s", b.data ? b.data : "");
    free(b.data);
    return code;
}

static long healthz(cwtest_env *env, char *out, size_t cap)
{
    return monitor_get(env, "/healthz", out, cap);
}

/* Runs `compworker config check -c ini`: its exit code, stderr into out. */
static int config_check(cwtest_env *env, char *out, size_t cap)
{
    char errpath[400];
    snprintf(errpath, sizeof errpath, "%s/check.err", env->dir);
    pid_t pid = fork();
    if (pid == 0) {
        freopen("/dev/null", "w", stdout);
        freopen(errpath, "w", stderr);
        execl(env->exe, env->exe, "config", "check", "-c", env->ini, (char *)NULL);
        _exit(127);
    }
    int st;
    waitpid(pid, &st, 0);
    FILE *f = fopen(errpath, "r");
    size_t n = f ? fread(out, 1, cap - 1, f) : 0;
    out[n] = '\0';
    if (f)
        fclose(f);
    return WIFEXITED(st) ? WEXITSTATUS(st) : 128 + WTERMSIG(st);
}

/* ---- two hosts -------------------------------------------------------------- */

static void test_two_hosts_no_double_apply(void **state)
{
    char schema[96];
    schema_name(schema, sizeof schema, "twohosts");
    cwtest_env *a = host(state, "twohosts", schema, 2, NULL, NULL);
    void *state_b = NULL;
    cwtest_env *b = host(&state_b, "twohosts", schema, 2, a->ledger, NULL);
    assert_string_equal(a->queue, b->queue); /* one pool, two hosts */
    pool_start(a, 2);
    pool_start(b, 2);

    enum {
        N = 400
    };
    char id[64];
    for (int i = 0; i < N; i++) {
        snprintf(id, sizeof id, "fleet-%04d", i);
        /* Each task twice, back to back: the copies reach different workers
         * of the two hosts at the same moment. */
        cwtest_send_task(a, id, "saga-fleet", "{}");
        cwtest_send_task(a, id, "saga-fleet", "{}");
    }
    cwtest_confirm_all(a);
    assert_int_equal(wait_distinct(a, N, 2 * WAIT_MS), N);
    wait_quiet(a, WAIT_MS);
    assert_int_equal(cwtest_worker_stop(a, SIGTERM, 30000), 0);
    assert_int_equal(cwtest_worker_stop(b, SIGTERM, 30000), 0);

    assert_int_equal(cwtest_ledger_rows(a), N);
    assert_int_equal(cwtest_ledger_max_per_id(a), 1);
    /* Both hosts worked, and between them skipped every second copy. */
    long by_a = 0, by_b = 0;
    long pa[16], pb[16];
    size_t na = worker_pids(a, pa, 16), nb = worker_pids(b, pb, 16);
    for (size_t i = 0; i < na; i++) {
        char q[128];
        snprintf(q, sizeof q, "SELECT count(*) FROM applied WHERE pid = %ld", pa[i]);
        by_a += ledger_long(a->ledger, q);
    }
    for (size_t i = 0; i < nb; i++) {
        char q[128];
        snprintf(q, sizeof q, "SELECT count(*) FROM applied WHERE pid = %ld", pb[i]);
        by_b += ledger_long(a->ledger, q);
    }
    print_message("host A applied %ld, host B %ld; none twice\n", by_a, by_b);
    assert_true(by_a > 0 && by_b > 0);
    assert_int_equal(by_a + by_b, N);
    cwtest_pass(b);
    cwtest_teardown(&state_b);
    cwtest_pass(a);
}

/* ---- a host lost ---------------------------------------------------------------- */

static void test_host_killed_other_takes_over(void **state)
{
    char schema[96];
    schema_name(schema, sizeof schema, "hostkill");
    cwtest_env *a = host(state, "hostkill", schema, 2, NULL, NULL);
    void *state_b = NULL;
    cwtest_env *b = host(&state_b, "hostkill", schema, 2, a->ledger, NULL);
    pool_start(a, 2);
    pool_start(b, 2);

    enum {
        N = 300
    };
    char id[64];
    for (int i = 0; i < N; i++) {
        snprintf(id, sizeof id, "lost-%04d", i);
        cwtest_send_task(a, id, "saga-lost", "{\"sleep_ms\":20}");
    }
    cwtest_confirm_all(a);
    cwtest_ledger_wait(a, 60, WAIT_MS);

    /* Host A is lost: every process of its pool at once, no goodbye. */
    long pids[16];
    size_t n = worker_pids(a, pids, 16);
    assert_true(n >= 2);
    for (size_t i = 0; i < n; i++)
        kill((pid_t)pids[i], SIGKILL);
    int64_t killed_at_wall;
    {
        struct timespec ts;
        clock_gettime(CLOCK_REALTIME, &ts);
        killed_at_wall = (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
    }
    cwtest_worker_stop(a, SIGKILL, 10000);
    int64_t t0 = cwtest_now_ms();
    long got = wait_distinct(a, N, 60000);
    int64_t took = cwtest_now_ms() - t0;
    print_message("host B applied the rest %lld ms after host A was killed\n", (long long)took);
    assert_int_equal(got, N); /* none lost, within 60 s */
    wait_quiet(b, WAIT_MS);
    assert_int_equal(cwtest_worker_stop(b, SIGTERM, 30000), 0);

    /* A task applied twice was first applied by host A before its death
     * (the window between a handler's effect and the store's record). */
    char q[1024];
    int off = snprintf(q, sizeof q,
                       "SELECT count(*) FROM (SELECT message_id FROM applied GROUP BY message_id"
                       " HAVING count(*) > 1) d WHERE NOT EXISTS (SELECT 1 FROM applied f"
                       " WHERE f.message_id = d.message_id AND f.at <= %lld AND f.pid IN (",
                       (long long)killed_at_wall);
    for (size_t i = 0; i < n; i++)
        off += snprintf(q + off, sizeof q - (size_t)off, "%s%ld", i ? "," : "", pids[i]);
    snprintf(q + off, sizeof q - (size_t)off, "))");
    assert_int_equal(ledger_long(a->ledger, q), 0);
    long twice = ledger_long(a->ledger, "SELECT count(*) FROM (SELECT message_id FROM applied"
                                        " GROUP BY message_id HAVING count(*) > 1)");
    print_message("%ld applied twice, each in host A's kill window\n", twice);
    assert_true(twice <= 2 * 20); /* at most what its two workers held */
    cwtest_pass(b);
    cwtest_teardown(&state_b);
    cwtest_pass(a);
}

/* ---- the server away ---------------------------------------------------------------- */

static void test_store_outage_mid_run(void **state)
{
    char schema[96], text[512];
    schema_name(schema, sizeof schema, "outage");
    cwtest_env *env = host(state, "outage", schema, 2, NULL, "metrics_listen = 127.0.0.1:0\n");
    pool_start(env, 2);
    assert_int_equal(healthz(env, text, sizeof text), 200);

    enum {
        N = 300
    };
    char id[64];
    for (int i = 0; i < N; i++) {
        snprintf(id, sizeof id, "outage-%04d", i);
        cwtest_send_task(env, id, "saga-outage", "{\"sleep_ms\":10}");
    }
    cwtest_confirm_all(env);
    cwtest_ledger_wait(env, 40, WAIT_MS);
    cwtest_pg_harness("stop-server");
    cwtest_log_wait(env, "store unreachable", 1, WAIT_MS);
    long code = 0;
    int64_t until = cwtest_now_ms() + 20000;
    while ((code = healthz(env, text, sizeof text)) != 503 && cwtest_now_ms() < until)
        cwtest_sleep_ms(200);
    assert_int_equal(code, 503);
    assert_non_null(strstr(text, "store unreachable"));
    long during = cwtest_ledger_distinct(env);
    cwtest_sleep_ms(2000);
    /* Nothing is settled while the store is away (a handler already running
     * may finish its effect). */
    assert_true(cwtest_ledger_distinct(env) <= during + 2 * 20);
    cwtest_pg_harness("start-server");

    assert_int_equal(wait_distinct(env, N, 2 * WAIT_MS), N);
    wait_quiet(env, WAIT_MS);
    until = cwtest_now_ms() + 20000;
    while ((code = healthz(env, text, sizeof text)) != 200 && cwtest_now_ms() < until)
        cwtest_sleep_ms(200);
    assert_int_equal(code, 200);
    assert_int_equal(cwtest_worker_stop(env, SIGTERM, 30000), 0);
    assert_int_equal(cwtest_ledger_rows(env), N);
    assert_int_equal(cwtest_ledger_max_per_id(env), 1);
    /* The workers rode it out: none was started again. */
    long pids[16];
    assert_int_equal(worker_pids(env, pids, 16), 2);
    assert_true(cwtest_log_count(env, "store reachable again") >= 1);
    cwtest_pass(env);
}

static void test_store_unreachable_at_start(void **state)
{
    char schema[96], text[2048];
    schema_name(schema, sizeof schema, "atstart");
    cwtest_env *env = host(state, "atstart", schema, 1, NULL, NULL);
    cwtest_pg_harness("stop-server");
    /* config check fails at once, with libpq's reason, in one line. */
    int code = config_check(env, text, sizeof text);
    if (code == 0 || !strstr(text, "store") || strchr(text, '\n') != strrchr(text, '\n')) {
        cwtest_pg_harness("start-server");
        fail_msg("config check exited %d with: %s", code, text);
    }
    assert_null(strstr(text, "cw-test-secret"));

    cwtest_worker_start_nowait(env);
    cwtest_log_wait(env, "store unreachable", 2, WAIT_MS);
    bool alive = cwtest_worker_alive(env);
    char *log = cwtest_log_read(env);
    bool reason = strstr(log, "cannot connect") != NULL;
    free(log);
    cwtest_pg_harness("start-server");
    assert_true(alive);
    assert_true(reason);
    cwtest_log_wait(env, "consuming from", 1, WAIT_MS);
    for (int i = 0; i < 10; i++) {
        char id[32];
        snprintf(id, sizeof id, "start-%d", i);
        cwtest_send_task(env, id, "saga-start", "{}");
    }
    cwtest_confirm_all(env);
    assert_int_equal(wait_distinct(env, 10, WAIT_MS), 10);
    assert_int_equal(cwtest_worker_stop(env, SIGTERM, 30000), 0);
    assert_int_equal(config_check(env, text, sizeof text), 0);
    cwtest_pass(env);
}

/* ---- the SQLite pool's safety net ---------------------------------------------------- */

static void test_sqlite_pool_warns_of_other_consumers(void **state)
{
    cwtest_pool_opts po = {.pool_lines = "workers = 1\nmetrics_listen = 127.0.0.1:0\n"};
    cwtest_env *env = cwtest_begin(state, "foreign", &po);
    pool_start(env, 1);
    /* Another host's pool of the same name, as the broker sees it: one more
     * consumer of the queue, on a connection of its own. */
    struct amqp_connection_info ci;
    char url[512];
    snprintf(url, sizeof url, "%s", env->url);
    assert_int_equal(amqp_parse_url(url, &ci), AMQP_STATUS_OK);
    if (!ci.vhost || !ci.vhost[0])
        ci.vhost = "/";
    amqp_connection_state_t other = amqp_new_connection();
    amqp_socket_t *sock = amqp_tcp_socket_new(other);
    assert_int_equal(amqp_socket_open(sock, ci.host, ci.port), AMQP_STATUS_OK);
    assert_int_equal(amqp_login(other, ci.vhost, 0, 131072, 0, AMQP_SASL_METHOD_PLAIN, ci.user,
                                ci.password)
                         .reply_type,
                     AMQP_RESPONSE_NORMAL);
    amqp_channel_open(other, 1);
    amqp_basic_qos(other, 1, 0, 1, 0);
    amqp_basic_consume(other, 1, amqp_cstring_bytes(env->queue), amqp_empty_bytes, 0, 0, 0,
                       amqp_empty_table);
    assert_int_equal(amqp_get_rpc_reply(other).reply_type, AMQP_RESPONSE_NORMAL);

    int64_t t0 = cwtest_now_ms();
    cwtest_log_wait(env, "that are not this pool's workers", 1, 90000);
    int64_t took = cwtest_now_ms() - t0;
    print_message("warned after %lld ms\n", (long long)took);
    assert_true(took >= 25000); /* not before it lasted ~30 s */
    char *log = cwtest_log_read(env);
    assert_non_null(strstr(log, "backend = postgresql"));
    free(log);
    char text[65536];
    assert_int_equal(monitor_get(env, "/metrics", text, sizeof text), 200);
    char want[512];
    snprintf(want, sizeof want, "compworker_queue_foreign_consumers{pool=\"%s\",queue=\"%s\"} 1",
             env->name, env->queue);
    if (!strstr(text, want))
        fail_msg("no '%s' in /metrics", want);

    amqp_connection_close(other, AMQP_REPLY_SUCCESS);
    amqp_destroy_connection(other);
    assert_int_equal(cwtest_worker_stop(env, SIGTERM, 30000), 0);
    cwtest_pass(env);
}

int main(void)
{
    curl_global_init(CURL_GLOBAL_DEFAULT);
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_teardown(test_two_hosts_no_double_apply, cwtest_teardown),
        cmocka_unit_test_teardown(test_host_killed_other_takes_over, cwtest_teardown),
        cmocka_unit_test_teardown(test_store_outage_mid_run, cwtest_teardown),
        cmocka_unit_test_teardown(test_store_unreachable_at_start, cwtest_teardown),
        cmocka_unit_test_teardown(test_sqlite_pool_warns_of_other_consumers, cwtest_teardown),
    };
    int rc = cmocka_run_group_tests(tests, NULL, NULL);
    curl_global_cleanup();
    return rc;
}
