/* Integration tests of retries, poison messages and alert hooks (DESIGN.md,
 * "Retry and backoff" and "Dead-letter queue, alerts, replay"), against a
 * real RabbitMQ node and the real compworker executable running
 * tests/plugins/ledger_plugin.so.
 *
 * The ledger records every handler call (table `calls`, with a monotonic
 * time) before the handler decides, so the gaps between attempts are
 * measured where the handler runs. Each test has a pool of its own. */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>

#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <json.h>

#include "cwtest.h"

#define WAIT_MS CWTEST_TIMEOUT_MS
#define STOP_MS 15000
/* A measured gap between two attempts may be this much shorter than the
 * delay asked for (clock granularity) ... */
#define EARLY_MS 50
/* ... and this much longer (delays are rounded up to 100 ms, then the
 * broker's expiry and dead-lettering latency, the worker's poll). */
#define LATE_MS 700

/* ---- helpers ------------------------------------------------------------ */

static const cwtest_msg *find_by_id(const cwtest_msg *m, size_t n, const char *id)
{
    for (size_t i = 0; i < n; i++) {
        if (m[i].message_id && strcmp(m[i].message_id, id) == 0)
            return &m[i];
    }
    return NULL;
}

static void expect_header(const cwtest_msg *m, const char *key, const char *want)
{
    const char *got = cwtest_msg_str(m, key);
    if (!got)
        fail_msg("message '%s': header %s is missing (want '%s')",
                 m->message_id ? m->message_id : "(none)", key, want);
    if (strcmp(got, want) != 0)
        fail_msg("message '%s': header %s is '%s', want '%s'",
                 m->message_id ? m->message_id : "(none)", key, got, want);
}

static void expect_header_has(const cwtest_msg *m, const char *key, const char *part)
{
    const char *got = cwtest_msg_str(m, key);
    if (!got)
        fail_msg("message '%s': header %s is missing (want it to contain '%s')",
                 m->message_id ? m->message_id : "(none)", key, part);
    if (!strstr(got, part))
        fail_msg("message '%s': header %s is '%s', which does not contain '%s'",
                 m->message_id ? m->message_id : "(none)", key, got, part);
}

static void expect_header_int(const cwtest_msg *m, const char *key, int64_t want)
{
    int64_t got;
    if (!cwtest_msg_int(m, key, &got))
        fail_msg("message '%s': header %s is missing or not an integer",
                 m->message_id ? m->message_id : "(none)", key);
    if (got != want)
        fail_msg("message '%s': header %s is %lld, want %lld",
                 m->message_id ? m->message_id : "(none)", key, (long long)got, (long long)want);
}

/* Appends to the pool file. With no `extra` in the pool options the file
 * ends in [plugin ledger], so lines before any section header go there. */
static void append_ini(const cwtest_env *env, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));
static void append_ini(const cwtest_env *env, const char *fmt, ...)
{
    FILE *f = fopen(env->ini, "a");
    if (!f)
        fail_msg("cannot append to %s: %s", env->ini, strerror(errno));
    va_list ap;
    va_start(ap, fmt);
    vfprintf(f, fmt, ap);
    va_end(ap);
    if (fclose(f) != 0)
        fail_msg("cannot append to %s: %s", env->ini, strerror(errno));
}

/* Publishes one it.apply task to cw.tasks and waits for the confirm. */
static void publish_task(cwtest_env *env, const char *id, const char *saga, const char *body)
{
    cwtest_send_task(env, id, saga, body);
    cwtest_confirm_all(env);
}

static void stop_worker(cwtest_env *env)
{
    int code = cwtest_worker_stop(env, SIGTERM, STOP_MS);
    if (code != 0)
        fail_msg("the worker exited with code %d after SIGTERM, not 0; see %s", code, env->log);
}

static void expect_queues(cwtest_env *env, uint32_t ready, uint32_t dead)
{
    cwtest_queue_wait_idle(env, env->queue, WAIT_MS);
    uint32_t q = cwtest_queue_count(env, env->queue);
    uint32_t d = cwtest_queue_count(env, env->dlq);
    if (q != ready || d != dead)
        fail_msg("the pool queue holds %u and the DLQ %u messages; want %u and %u", q, d, ready,
                 dead);
}

/* The calls of `id`: exactly `n`, with attempts 0, 1, ... n-1 (with
 * `redelivered`: attempt 0 each time, as a redelivery leaves the message as
 * it was). The array is the caller's to free(). */
static cwtest_call *expect_calls_of(const cwtest_env *env, const char *id, size_t n,
                                    bool redelivered)
{
    size_t got = 0;
    cwtest_call *c = cwtest_calls_read(env, id, &got);
    if (got != n) {
        free(c);
        fail_msg("task %s: the handler was called %zu times, want %zu", id, got, n);
    }
    for (size_t i = 0; i < n; i++) {
        size_t want = redelivered ? 0 : i;
        if (c[i].attempt != want) {
            unsigned a = c[i].attempt;
            free(c);
            fail_msg("task %s: call %zu saw attempt %u, want %zu", id, i + 1, a, want);
        }
    }
    return c;
}

static cwtest_call *expect_calls(const cwtest_env *env, const char *id, size_t n)
{
    return expect_calls_of(env, id, n, false);
}

/* The gap between calls i-1 and i is `want` ms, within EARLY_MS/LATE_MS. */
static int64_t expect_gap(cwtest_call *c, size_t i, int64_t want, const char *id)
{
    int64_t gap = c[i].mono_ms - c[i - 1].mono_ms;
    if (gap < want - EARLY_MS || gap > want + LATE_MS) {
        free(c);
        fail_msg("task %s: %lld ms between attempts %zu and %zu; want %lld ms (-%d/+%d)", id,
                 (long long)gap, i - 1, i, (long long)want, EARLY_MS, LATE_MS);
        abort(); /* not reached (fail_msg jumps out); tells the compiler `c` is not used again */
    }
    return gap;
}

/* Waits until the DLQ holds `n`, failing early if the worker died. */
static void dlq_wait(cwtest_env *env, uint32_t n, int timeout_ms)
{
    int64_t deadline = cwtest_now_ms() + timeout_ms;
    for (;;) {
        uint32_t got = cwtest_queue_count(env, env->dlq);
        if (got >= n) {
            if (got > n)
                fail_msg("the DLQ holds %u messages, want %u", got, n);
            return;
        }
        if (env->worker > 0 && !cwtest_worker_alive(env))
            fail_msg("the worker exited (code %d) while waiting for the DLQ; see %s",
                     env->last_exit, env->log);
        if (cwtest_now_ms() >= deadline)
            fail_msg("the DLQ holds %u messages, not %u, after %d ms", got, n, timeout_ms);
        cwtest_sleep_ms(25);
    }
}

static void expect_iso8601(const char *what, const char *got)
{
    if (!got || strlen(got) != 24 || got[4] != '-' || got[10] != 'T' || got[23] != 'Z')
        fail_msg("%s is '%s', not an ISO 8601 UTC time", what, got ? got : "(missing)");
}

/* ---- 1. fails twice, then succeeds ---------------------------------------- */

static void test_fails_twice_then_succeeds(void **state)
{
    cwtest_pool_opts po = {.extra = "\n[retry]\n"
                                    "max_attempts = 5\n"
                                    "interval = 500ms\n"
                                    "backoff_rate = 2.0\n"
                                    "jitter = none\n"};
    cwtest_env *env = cwtest_begin(state, "twice", &po);
    cwtest_worker_start(env);

    publish_task(env, "twice-1", "saga-twice", "{\"fail_times\":2}");
    cwtest_ledger_wait(env, 1, WAIT_MS);

    cwtest_call *c = expect_calls(env, "twice-1", 3);
    int64_t g1 = expect_gap(c, 1, 500, "twice-1");
    int64_t g2 = expect_gap(c, 2, 1000, "twice-1");
    free(c);
    print_message("fails twice: gaps %lld ms and %lld ms (policy 500 and 1000)\n", (long long)g1,
                  (long long)g2);

    stop_worker(env);
    assert_int_equal(cwtest_ledger_rows(env), 1);
    assert_int_equal(cwtest_ledger_count_id(env, "twice-1"), 1);
    assert_int_equal(cwtest_calls_count(env, NULL), 3);
    expect_queues(env, 0, 0);
    cwtest_stats st;
    cwtest_log_stats(env, &st);
    assert_int_equal(st.received, 3);
    assert_int_equal(st.applied, 1);
    assert_int_equal(st.retried, 2);
    assert_int_equal(st.dead_lettered, 0);
    cwtest_pass(env);
}

/* ---- 2. jitter spreads the delays ------------------------------------------ */

#define JITTER_N 20

static void test_jitter_spreads(void **state)
{
    cwtest_pool_opts po = {.extra = "\n[retry]\n"
                                    "max_attempts = 3\n"
                                    "interval = 2s\n"
                                    "jitter = full\n"};
    cwtest_env *env = cwtest_begin(state, "jitter", &po);
    cwtest_worker_start(env);

    char id[32];
    for (int i = 0; i < JITTER_N; i++) {
        snprintf(id, sizeof id, "jitter-%02d", i);
        cwtest_send_task(env, id, "saga-jitter", "{\"fail_times\":1}");
    }
    cwtest_confirm_all(env);
    cwtest_ledger_wait(env, JITTER_N, WAIT_MS);

    int64_t lo = INT64_MAX, hi = INT64_MIN;
    for (int i = 0; i < JITTER_N; i++) {
        snprintf(id, sizeof id, "jitter-%02d", i);
        cwtest_call *c = expect_calls(env, id, 2);
        int64_t gap = c[1].mono_ms - c[0].mono_ms;
        free(c);
        if (gap < 0 || gap > 2000 + LATE_MS)
            fail_msg("task %s: %lld ms between its attempts, outside [0, %d]", id, (long long)gap,
                     2000 + LATE_MS);
        if (gap < lo)
            lo = gap;
        if (gap > hi)
            hi = gap;
    }
    print_message("jitter: %d gaps from %lld to %lld ms (full jitter of 2 s)\n", JITTER_N,
                  (long long)lo, (long long)hi);
    if (hi - lo < 500)
        fail_msg("full jitter spread %d delays of 2 s over only %lld ms (%lld..%lld)", JITTER_N,
                 (long long)(hi - lo), (long long)lo, (long long)hi);

    stop_worker(env);
    assert_int_equal(cwtest_ledger_rows(env), JITTER_N);
    assert_int_equal(cwtest_ledger_max_per_id(env), 1);
    expect_queues(env, 0, 0);
    cwtest_pass(env);
}

/* ---- 3. exhausted retries reach the DLQ ------------------------------------- */

static void test_exhausted(void **state)
{
    cwtest_pool_opts po = {.extra = "\n[retry]\n"
                                    "max_attempts = 3\n"
                                    "interval = 200ms\n"
                                    "jitter = none\n"};
    cwtest_env *env = cwtest_begin(state, "exhausted", &po);
    cwtest_worker_start(env);

    static const char body[] = "{\"fail_times\":99,\"refund\":\"r-1\"}";
    publish_task(env, "exhausted-1", "saga-exhausted", body);
    dlq_wait(env, 1, WAIT_MS);
    free(expect_calls(env, "exhausted-1", 3));

    size_t n = 0;
    cwtest_msg *dead = cwtest_drain(env, env->dlq, &n);
    assert_int_equal(n, 1);
    const cwtest_msg *d = find_by_id(dead, n, "exhausted-1");
    assert_non_null(d);
    expect_header(d, "cw-error-class", "exhausted");
    expect_header_has(d, "cw-error", "gateway timeout 2");
    expect_header_int(d, "cw-attempt", 3);
    expect_header(d, "cw-original-exchange", "cw.tasks");
    expect_header(d, "cw-original-routing-key", "it.apply");
    expect_header(d, "cw-queue", env->queue);
    expect_header_has(d, "cw-handler", "ledger");
    expect_iso8601("cw-failed-at", cwtest_msg_str(d, "cw-failed-at"));
    assert_non_null(d->correlation_id);
    assert_string_equal(d->correlation_id, "saga-exhausted");
    assert_non_null(d->type);
    assert_string_equal(d->type, "it.apply");
    assert_int_equal(d->body_len, sizeof body - 1);
    assert_memory_equal(d->body, body, sizeof body - 1);
    cwtest_msgs_free(dead, n);

    stop_worker(env);
    assert_int_equal(cwtest_ledger_rows(env), 0);
    assert_int_equal(cwtest_calls_count(env, NULL), 3);
    expect_queues(env, 0, 0);
    cwtest_stats st;
    cwtest_log_stats(env, &st);
    assert_int_equal(st.retried, 2);
    assert_int_equal(st.dead_lettered, 1);
    cwtest_pass(env);
}

/* ---- 4. [handler TYPE] overrides the pool's [retry] ------------------------- */

static void test_handler_override(void **state)
{
    cwtest_pool_opts po = {.extra = "\n[retry]\n"
                                    "max_attempts = 5\n"
                                    "interval = 100ms\n"
                                    "jitter = none\n"
                                    "\n[handler it.apply]\n"
                                    "max_attempts = 2\n"};
    cwtest_env *env = cwtest_begin(state, "override", &po);
    cwtest_worker_start(env);

    publish_task(env, "override-1", "saga-override", "{\"fail_times\":99}");
    dlq_wait(env, 1, WAIT_MS);
    free(expect_calls(env, "override-1", 2));

    size_t n = 0;
    cwtest_msg *dead = cwtest_drain(env, env->dlq, &n);
    assert_int_equal(n, 1);
    expect_header(&dead[0], "cw-error-class", "exhausted");
    expect_header_has(&dead[0], "cw-error", "gateway timeout 1");
    expect_header_int(&dead[0], "cw-attempt", 2);
    cwtest_msgs_free(dead, n);

    stop_worker(env);
    assert_int_equal(cwtest_calls_count(env, NULL), 2);
    expect_queues(env, 0, 0);
    cwtest_pass(env);
}

/* ---- 5. a handler asks for its delay ---------------------------------------- */

static void test_retry_after(void **state)
{
    cwtest_pool_opts po = {.extra = "\n[retry]\n"
                                    "interval = 100ms\n"
                                    "jitter = none\n"};
    cwtest_env *env = cwtest_begin(state, "after", &po);
    cwtest_worker_start(env);

    publish_task(env, "after-1", "saga-after", "{\"fail_times\":1,\"retry_after_ms\":1500}");
    cwtest_ledger_wait(env, 1, WAIT_MS);
    cwtest_call *c = expect_calls(env, "after-1", 2);
    int64_t gap = c[1].mono_ms - c[0].mono_ms;
    free(c);
    print_message("retry_after 1500 ms: gap %lld ms\n", (long long)gap);
    if (gap < 1500 - EARLY_MS || gap > 1500 + LATE_MS)
        fail_msg("retry_after 1500 ms with interval 100ms: %lld ms between the attempts",
                 (long long)gap);

    stop_worker(env);
    assert_int_equal(cwtest_ledger_rows(env), 1);
    expect_queues(env, 0, 0);
    cwtest_pass(env);
}

/* ---- 6. a short delay is not held up behind a long one ---------------------- */

static void test_short_not_behind_long(void **state)
{
    cwtest_pool_opts po = {.extra = "\n[retry]\n"
                                    "interval = 100ms\n"
                                    "jitter = none\n"};
    cwtest_env *env = cwtest_begin(state, "shortlong", &po);
    cwtest_worker_start(env);

    /* A is in the delay topology (5 s) when B (300 ms) follows it. */
    publish_task(env, "long-a", "saga-a", "{\"fail_times\":1,\"retry_after_ms\":5000}");
    cwtest_log_wait(env, "retrying in", 1, WAIT_MS);
    publish_task(env, "short-b", "saga-b", "{\"fail_times\":1,\"retry_after_ms\":300}");

    cwtest_calls_wait(env, "short-b", 2, WAIT_MS);
    long a_calls = cwtest_calls_count(env, "long-a");
    cwtest_call *b = expect_calls(env, "short-b", 2);
    int64_t b_gap = b[1].mono_ms - b[0].mono_ms;
    int64_t b_second = b[1].mono_ms;
    free(b);
    if (a_calls != 1)
        fail_msg("task A (5 s) was called %ld times when B's retry (300 ms) arrived", a_calls);
    if (b_gap > 1200)
        fail_msg("B's retry (300 ms) came %lld ms after its first attempt, held up behind A",
                 (long long)b_gap);
    if (b_gap < 300 - EARLY_MS)
        fail_msg("B's retry (300 ms) came after only %lld ms", (long long)b_gap);

    cwtest_calls_wait(env, "long-a", 2, WAIT_MS);
    cwtest_call *a = expect_calls(env, "long-a", 2);
    int64_t a_gap = a[1].mono_ms - a[0].mono_ms;
    int64_t a_second = a[1].mono_ms;
    free(a);
    print_message("short behind long: B's gap %lld ms, A's gap %lld ms\n", (long long)b_gap,
                  (long long)a_gap);
    assert_true(b_second < a_second);
    if (a_gap < 5000 - EARLY_MS || a_gap > 5000 + LATE_MS)
        fail_msg("A's retry (5 s) came after %lld ms", (long long)a_gap);

    cwtest_ledger_wait(env, 2, WAIT_MS);
    stop_worker(env);
    assert_int_equal(cwtest_ledger_count_id(env, "long-a"), 1);
    assert_int_equal(cwtest_ledger_count_id(env, "short-b"), 1);
    expect_queues(env, 0, 0);
    cwtest_pass(env);
}

/* ---- 7. a retry returns only to the queue that failed ------------------------ */

/* The second pool's env. */
static void *twoq_other;

static int teardown_two(void **state)
{
    cwtest_teardown(&twoq_other);
    return cwtest_teardown(state);
}

static void test_two_queues_share_binding(void **state)
{
    cwtest_pool_opts po = {.extra = "\n[retry]\n"
                                    "interval = 300ms\n"
                                    "jitter = none\n"};
    /* Two pools, both bound to cw.tasks by it.apply: one task reaches both. */
    cwtest_env *x = cwtest_begin(state, "twoq-x", &po);
    cwtest_env *y = cwtest_begin(&twoq_other, "twoq-y", &po);
    cwtest_worker_start(x);
    cwtest_worker_start(y);

    publish_task(x, "twoq-1", "saga-twoq", "{\"fail_times\":1}");
    cwtest_ledger_wait(x, 1, WAIT_MS);
    cwtest_ledger_wait(y, 1, WAIT_MS);
    /* A retry routed by the task's routing key would reach the other pool
     * about when its own did: give it time to show. */
    cwtest_sleep_ms(800);

    cwtest_env *pools[] = {x, y};
    for (int i = 0; i < 2; i++) {
        cwtest_env *e = pools[i];
        stop_worker(e);
        free(expect_calls(e, "twoq-1", 2));
        assert_int_equal(cwtest_ledger_rows(e), 1);
        cwtest_stats st;
        cwtest_log_stats(e, &st);
        if (st.received != 2 || st.duplicates != 0)
            fail_msg("pool %s received %llu deliveries (%llu duplicates); want 2 (0): a "
                     "retry reached a queue that did not fail",
                     e->name, st.received, st.duplicates);
        assert_int_equal(st.retried, 1);
        assert_int_equal(st.applied, 1);
        expect_queues(e, 0, 0);
    }
    cwtest_pass(y);
    cwtest_pass(x);
}

/* ---- 8. a handler that segfaults is poison ---------------------------------- */

/* The pool's supervisor restarts the worker each time it dies; waits until
 * the DLQ holds one message. Every death must be logged by the supervisor as
 * `how` ("killed by SIGSEGV", "exited with code 3"), each after one more
 * call of `id` (`deaths` of them so far); returns the deaths in all. */
static int deaths_until_dead_lettered(cwtest_env *env, const char *how, const char *id, int deaths,
                                      int max_deaths)
{
    for (;;) {
        int64_t deadline = cwtest_now_ms() + WAIT_MS;
        for (;;) {
            if (cwtest_queue_count(env, env->dlq) > 0)
                return deaths;
            if ((int)cwtest_log_count(env, how) > deaths)
                break;
            if (!cwtest_worker_alive(env))
                fail_msg("the pool exited (code %d); see %s", env->last_exit, env->log);
            if (cwtest_now_ms() >= deadline)
                fail_msg("the worker neither died nor dead-lettered %s within %d ms", id, WAIT_MS);
            cwtest_sleep_ms(25);
        }
        int64_t died_at = cwtest_now_ms();
        deaths++;
        if (cwtest_log_count(env, "; restarting in") != (unsigned)deaths)
            fail_msg("worker death %d is not '%s'; see %s", deaths, how, env->log);
        /* It died in the handler, on this task. */
        size_t n = 0;
        cwtest_call *c = cwtest_calls_read(env, id, &n);
        int64_t last = n ? c[n - 1].mono_ms : 0;
        free(c);
        if ((int)n != deaths)
            fail_msg("after %d worker deaths the handler was called %zu times on %s", deaths, n,
                     id);
        print_message("worker death %d (%s) %lld ms after its call of %s\n", deaths, how,
                      (long long)(died_at - last), id);
        if (deaths > max_deaths)
            fail_msg("%s is still not dead-lettered after %d worker deaths", id, deaths);
    }
}

static void test_poison_segfault(void **state)
{
    cwtest_pool_opts po = {.extra = "\n[retry]\n"
                                    "max_deliveries = 2\n"};
    cwtest_env *env = cwtest_begin(state, "poison", &po);
    cwtest_worker_start(env);

    publish_task(env, "poison-1", "saga-poison", "{\"crash\":true}");
    int deaths = deaths_until_dead_lettered(env, "killed by SIGSEGV", "poison-1", 0, 5);
    /* Run max_deliveries times, then dead-lettered without running. */
    assert_int_equal(deaths, 2);
    dlq_wait(env, 1, WAIT_MS);
    free(expect_calls_of(env, "poison-1", 2, true));

    size_t n = 0;
    cwtest_msg *dead = cwtest_drain(env, env->dlq, &n);
    assert_int_equal(n, 1);
    const cwtest_msg *d = &dead[0];
    assert_non_null(d->message_id);
    assert_string_equal(d->message_id, "poison-1");
    expect_header(d, "cw-error-class", "poison");
    expect_header(d, "cw-crash-signal", "SIGSEGV");
    expect_header_has(d, "cw-plugin", "ledger");
    expect_header_has(d, "cw-error", "SIGSEGV");
    expect_header(d, "cw-queue", env->queue);
    expect_header(d, "cw-original-routing-key", "it.apply");
    assert_non_null(d->correlation_id);
    assert_string_equal(d->correlation_id, "saga-poison");
    print_message("poison: cw-error '%s'\n", cwtest_msg_str(d, "cw-error"));
    cwtest_msgs_free(dead, n);

    /* The last worker keeps serving. */
    publish_task(env, "poison-after", "saga-ok", "{}");
    cwtest_ledger_wait(env, 1, WAIT_MS);
    assert_true(cwtest_ledger_applied(env, "poison-after"));
    assert_true(cwtest_worker_alive(env));
    stop_worker(env);
    assert_int_equal(cwtest_calls_count(env, "poison-1"), 2);
    expect_queues(env, 0, 0);
    cwtest_pass(env);
}

/* ---- 9. a handler past handler_timeout is poison ------------------------------ */

static void test_handler_timeout(void **state)
{
    cwtest_pool_opts po = {.pool_lines = "handler_timeout = 1s\n",
                           .extra = "\n[retry]\n"
                                    "max_deliveries = 2\n"};
    cwtest_env *env = cwtest_begin(state, "timeout", &po);
    cwtest_worker_start(env);

    publish_task(env, "hang-1", "saga-hang", "{\"hang_ms\":60000}");
    cwtest_calls_wait(env, "hang-1", 1, WAIT_MS);
    /* Ended within ~3 s of its call (the supervisor logs it, then starts
     * the next worker). */
    int64_t deadline = cwtest_now_ms() + 5000;
    while (cwtest_log_count(env, "exited with code 3") == 0 && cwtest_now_ms() < deadline)
        cwtest_sleep_ms(20);
    size_t n = 0;
    cwtest_call *c = cwtest_calls_read(env, "hang-1", &n);
    int64_t ended = cwtest_now_ms() - (n ? c[0].mono_ms : 0);
    free(c);
    if (cwtest_log_count(env, "exited with code 3") == 0)
        fail_msg("the worker did not exit with code 3 within %lld ms of the handler's hang; "
                 "see %s",
                 (long long)ended, env->log);
    if (ended > 3000)
        fail_msg("the worker ended %lld ms after the handler began (handler_timeout 1s)",
                 (long long)ended);
    print_message("handler_timeout 1s: worker ended %lld ms after the call\n", (long long)ended);

    int deaths = deaths_until_dead_lettered(env, "exited with code 3", "hang-1", 1, 5);
    assert_int_equal(deaths, 2);
    dlq_wait(env, 1, WAIT_MS);
    free(expect_calls_of(env, "hang-1", 2, true));

    cwtest_msg *dead = cwtest_drain(env, env->dlq, &n);
    assert_int_equal(n, 1);
    expect_header(&dead[0], "cw-error-class", "poison");
    expect_header(&dead[0], "cw-crash-signal", "timeout");
    expect_header_has(&dead[0], "cw-plugin", "ledger");
    expect_header_has(&dead[0], "cw-error", "timeout");
    cwtest_msgs_free(dead, n);

    publish_task(env, "timeout-after", "saga-ok", "{}");
    cwtest_ledger_wait(env, 1, WAIT_MS);
    assert_true(cwtest_worker_alive(env));
    stop_worker(env);
    expect_queues(env, 0, 0);
    cwtest_pass(env);
}

/* ---- 10. every alert kind delivers the JSON --------------------------------- */

static void expect_alert(json_object *doc, const char *sink, const cwtest_env *env)
{
    const char *s;
    int64_t v;
#define WANT_STR(key, want)                                                                        \
    do {                                                                                           \
        s = cwtest_json_str(doc, key);                                                             \
        if (!s || strcmp(s, want) != 0)                                                            \
            fail_msg("%s alert: \"%s\" is %s%s%s, want \"%s\": %s", sink, key, s ? "\"" : "",      \
                     s ? s : "missing", s ? "\"" : "", want, json_object_to_json_string(doc));     \
    } while (0)
    WANT_STR("message_id", "alert-1");
    WANT_STR("saga_id", "saga-alert");
    WANT_STR("type", "it.apply");
    WANT_STR("error_class", "exhausted");
    WANT_STR("queue", env->queue);
#undef WANT_STR
    s = cwtest_json_str(doc, "reason");
    if (!s || !strstr(s, "gateway timeout 0"))
        fail_msg("%s alert: reason is '%s', want 'gateway timeout 0'", sink, s ? s : "missing");
    if (!cwtest_json_int(doc, "attempts", &v) || v != 1)
        fail_msg("%s alert: attempts is not 1: %s", sink, json_object_to_json_string(doc));
    expect_iso8601("failed_at", cwtest_json_str(doc, "failed_at"));
    s = cwtest_json_str(doc, "worker");
    if (!s || !s[0])
        fail_msg("%s alert: no worker: %s", sink, json_object_to_json_string(doc));
    s = cwtest_json_str(doc, "handler");
    if (!s || !strstr(s, "ledger"))
        fail_msg("%s alert: handler does not name the plugin: %s", sink,
                 json_object_to_json_string(doc));
}

static void test_alert_kinds(void **state)
{
    cwtest_env *env = cwtest_begin(state, "alerts", NULL);
    cwtest_http *http = cwtest_http_start(env, "/hook");
    char script[400], cmd_out[400], cb_out[400], text[600];
    snprintf(script, sizeof script, "%s/alert.sh", env->dir);
    snprintf(cmd_out, sizeof cmd_out, "%s/cmd-alerts.jsonl", env->dir);
    snprintf(cb_out, sizeof cb_out, "%s/cb-alerts.jsonl", env->dir);
    cwtest_write_file(script, "#!/bin/sh\ncat >> \"$1\"\n", 0755);
    append_ini(env,
               "alerts = %s\n"
               "\n[retry]\n"
               "max_attempts = 1\n"
               "\n[alert]\n"
               "command = %s %s\n"
               "webhook = http://127.0.0.1:%u/hook\n"
               "timeout = 10s\n",
               cb_out, script, cmd_out, cwtest_http_port(http));
    cwtest_worker_start(env);

    publish_task(env, "alert-1", "saga-alert", "{\"fail_times\":99}");
    dlq_wait(env, 1, WAIT_MS);
    cwtest_json_wait(cb_out, 1, WAIT_MS);
    cwtest_json_wait(cmd_out, 1, WAIT_MS);
    cwtest_http_wait(http, 1, WAIT_MS);
    /* Nothing more comes. */
    cwtest_sleep_ms(300);

    size_t n = 0;
    json_object **docs = cwtest_json_read(cb_out, &n);
    if (n != 1)
        fail_msg("the plugin's alert hook received %zu documents, want 1", n);
    expect_alert(docs[0], "callback", env);
    cwtest_json_free(docs, n);

    docs = cwtest_json_read(cmd_out, &n);
    if (n != 1)
        fail_msg("the alert command received %zu documents, want 1", n);
    expect_alert(docs[0], "command", env);
    cwtest_json_free(docs, n);

    assert_int_equal(cwtest_http_count(http), 1);
    assert_int_equal(cwtest_http_others(http), 0);
    char *body = cwtest_http_body(http, 0);
    snprintf(text, sizeof text, "%s", body);
    json_object *doc = json_tokener_parse(body);
    free(body);
    if (!doc)
        fail_msg("the webhook received a body that is not JSON: %s", text);
    expect_alert(doc, "webhook", env);
    json_object_put(doc);

    stop_worker(env);
    assert_int_equal(cwtest_ledger_rows(env), 0);
    cwtest_pass(env);
}

/* ---- 11. a hanging hook does not slow consumption ---------------------------- */

#define HANG_FAILS 20
#define HANG_GOOD 200

/* PIDs listed in env->pids that are still running. */
static int listed_alive(const cwtest_env *env, int *listed)
{
    *listed = 0;
    FILE *f = fopen(env->pids, "r");
    if (!f)
        return 0;
    long pid;
    int alive = 0;
    while (fscanf(f, "%ld", &pid) == 1) {
        (*listed)++;
        if (pid > 1 && kill((pid_t)pid, 0) == 0)
            alive++;
    }
    fclose(f);
    return alive;
}

static void test_hanging_hook(void **state)
{
    cwtest_env *env = cwtest_begin(state, "hang", NULL);
    char script[400], text[800];
    snprintf(script, sizeof script, "%s/hang.sh", env->dir);
    snprintf(text, sizeof text, "#!/bin/sh\necho $$ >> '%s'\nexec sleep 30\n", env->pids);
    cwtest_write_file(script, text, 0755);
    append_ini(env,
               "\n[alert]\n"
               "command = %s\n"
               "timeout = 20s\n"
               "rate_limit = 0\n",
               script);
    cwtest_worker_start(env);

    char id[32], body[64];
    int64_t t0 = cwtest_now_ms();
    for (int i = 0; i < HANG_FAILS + HANG_GOOD; i++) {
        /* The failures first, so that the hook hangs while the rest run. */
        if (i < HANG_FAILS) {
            snprintf(id, sizeof id, "hang-fail-%02d", i);
            snprintf(body, sizeof body, "{\"fail\":\"x%d\"}", i);
        } else {
            snprintf(id, sizeof id, "hang-ok-%03d", i);
            snprintf(body, sizeof body, "{\"n\":%d}", i);
        }
        cwtest_send_task(env, id, "saga-hang", body);
    }
    cwtest_confirm_all(env);
    int64_t deadline = t0 + 10000;
    for (;;) {
        uint32_t dead = cwtest_queue_count(env, env->dlq);
        long rows = cwtest_ledger_rows(env);
        if (dead == HANG_FAILS && rows == HANG_GOOD)
            break;
        if (!cwtest_worker_alive(env))
            fail_msg("the worker exited (code %d); see %s", env->last_exit, env->log);
        if (cwtest_now_ms() >= deadline)
            fail_msg("10 s after publishing: %u of %d in the DLQ, %ld of %d applied", dead,
                     HANG_FAILS, rows, HANG_GOOD);
        cwtest_sleep_ms(25);
    }
    int64_t took = cwtest_now_ms() - t0;

    /* The first alert's command hangs all along; it is the only one run. */
    int listed = 0, alive = 0;
    int64_t hook_deadline = cwtest_now_ms() + 5000;
    while ((alive = listed_alive(env, &listed)) < 1 && cwtest_now_ms() < hook_deadline)
        cwtest_sleep_ms(25);
    if (listed != 1 || alive != 1)
        fail_msg("the alert command was started %d times (%d still running); want 1 hanging",
                 listed, alive);
    print_message("hanging hook: %d dead-lettered and %d applied in %lld ms\n", HANG_FAILS,
                  HANG_GOOD, (long long)took);
    assert_true(cwtest_worker_alive(env));
    /* Stopping would wait for the hook (up to 2 x timeout): kill instead;
     * teardown kills the hanging command. */
    assert_int_equal(cwtest_worker_stop(env, SIGKILL, STOP_MS), 128 + SIGKILL);
    assert_int_equal(cwtest_ledger_max_per_id(env), 1);
    cwtest_pass(env);
}

/* ---- 12. rate limit, then a digest ----------------------------------------- */

#define RATE_N 5

static void test_rate_limit(void **state)
{
    cwtest_env *env = cwtest_begin(state, "ratelimit", NULL);
    cwtest_http *http = cwtest_http_start(env, "/hook");
    append_ini(env,
               "\n[alert]\n"
               "webhook = http://127.0.0.1:%u/hook\n"
               "rate_limit = 2s\n",
               cwtest_http_port(http));
    cwtest_worker_start(env);

    char id[32], body[64];
    int64_t t0 = cwtest_now_ms();
    for (int i = 0; i < RATE_N; i++) {
        snprintf(id, sizeof id, "rate-%d", i);
        snprintf(body, sizeof body, "{\"fail\":\"unknown refund %d\"}", i);
        cwtest_send_task(env, id, "saga-rate", body);
    }
    cwtest_confirm_all(env);
    dlq_wait(env, RATE_N, WAIT_MS);
    if (cwtest_now_ms() - t0 > 1000)
        print_message("rate limit: the %d failures took %lld ms (more than 1 s)\n", RATE_N,
                      (long long)(cwtest_now_ms() - t0));

    cwtest_http_wait(http, 1, WAIT_MS);
    int64_t first_at = cwtest_http_at(http, 0);
    char *b = cwtest_http_body(http, 0);
    json_object *first = json_tokener_parse(b);
    free(b);
    assert_non_null(first);
    const char *cls = cwtest_json_str(first, "error_class");
    const char *mid = cwtest_json_str(first, "message_id");
    json_object *dig;
    bool first_is_digest = json_object_object_get_ex(first, "digest", &dig);
    if (first_is_digest || !cls || strcmp(cls, "permanent") != 0 || !mid ||
        strncmp(mid, "rate-", 5) != 0)
        fail_msg("the first alert is not one failure of class permanent: %s",
                 json_object_to_json_string(first));
    json_object_put(first);

    /* Held back until the window ends, then one digest. */
    cwtest_http_wait(http, 2, WAIT_MS);
    int64_t digest_at = cwtest_http_at(http, 1);
    b = cwtest_http_body(http, 1);
    json_object *digest = json_tokener_parse(b);
    free(b);
    assert_non_null(digest);
    int64_t held = -1;
    bool is_digest = json_object_object_get_ex(digest, "digest", &dig) &&
                     json_object_get_boolean(dig);
    cls = cwtest_json_str(digest, "error_class");
    const char *type = cwtest_json_str(digest, "type");
    if (!is_digest || !cwtest_json_int(digest, "held_back", &held) || held != RATE_N - 1 || !cls ||
        strcmp(cls, "permanent") != 0 || !type || strcmp(type, "it.apply") != 0)
        fail_msg("the second alert is not a digest of %d held back: %s", RATE_N - 1,
                 json_object_to_json_string(digest));
    json_object_put(digest);
    int64_t gap = digest_at - first_at;
    print_message("rate limit: digest %lld ms after the first alert (window 2 s)\n",
                  (long long)gap);
    if (gap < 1500 || gap > 2000 + 2500)
        fail_msg("the digest came %lld ms after the first alert; the window is 2 s",
                 (long long)gap);

    cwtest_sleep_ms(300);
    assert_int_equal(cwtest_http_count(http), 2);
    assert_int_equal(cwtest_http_others(http), 0);
    stop_worker(env);
    assert_int_equal(cwtest_http_count(http), 2);
    cwtest_pass(env);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_teardown(test_fails_twice_then_succeeds, cwtest_teardown),
        cmocka_unit_test_teardown(test_jitter_spreads, cwtest_teardown),
        cmocka_unit_test_teardown(test_exhausted, cwtest_teardown),
        cmocka_unit_test_teardown(test_handler_override, cwtest_teardown),
        cmocka_unit_test_teardown(test_retry_after, cwtest_teardown),
        cmocka_unit_test_teardown(test_short_not_behind_long, cwtest_teardown),
        cmocka_unit_test_teardown(test_two_queues_share_binding, teardown_two),
        cmocka_unit_test_teardown(test_poison_segfault, cwtest_teardown),
        cmocka_unit_test_teardown(test_handler_timeout, cwtest_teardown),
        cmocka_unit_test_teardown(test_alert_kinds, cwtest_teardown),
        cmocka_unit_test_teardown(test_hanging_hook, cwtest_teardown),
        cmocka_unit_test_teardown(test_rate_limit, cwtest_teardown),
    };
    /* CW_TEST_FILTER=test_poison* runs a subset. */
    const char *filter = getenv("CW_TEST_FILTER");
    if (filter && filter[0])
        cmocka_set_test_filter(filter);
    return cmocka_run_group_tests(tests, NULL, NULL);
}
