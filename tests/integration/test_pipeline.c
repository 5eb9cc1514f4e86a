/* Integration tests of the pipeline of one delivery (DESIGN.md, "The pipeline
 * of one delivery" and "Message contract"), against a real RabbitMQ node and
 * the real compworker executable running tests/plugins/ledger_plugin.so.
 *
 * Each test has a pool (queue, DLQ, store, ledger) of its own; the ledger
 * counts applications per message ID, so "exactly once" is checked on what a
 * handler actually did. */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>

#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "compworker/client.h"
#include "cwtest.h"

#define WAIT_MS CWTEST_TIMEOUT_MS
#define STOP_MS 15000

/* ---- helpers ------------------------------------------------------------ */

static const cwtest_msg *find_by_id(const cwtest_msg *m, size_t n, const char *id)
{
    for (size_t i = 0; i < n; i++) {
        if (m[i].message_id && strcmp(m[i].message_id, id) == 0)
            return &m[i];
    }
    return NULL;
}

static const cwtest_msg *find_by_body(const cwtest_msg *m, size_t n, const void *body, size_t len)
{
    for (size_t i = 0; i < n; i++) {
        if (m[i].body_len == len && memcmp(m[i].body, body, len) == 0)
            return &m[i];
    }
    return NULL;
}

/* Header `key` of `m` is the string `want`. */
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

/* Header `key` of `m` is a string containing `part`. */
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

/* "2026-11-24T21:50:03.123Z" */
static void expect_timestamp(const cwtest_msg *m, const char *key)
{
    const char *got = cwtest_msg_str(m, key);
    if (!got || strlen(got) != 24 || got[4] != '-' || got[10] != 'T' || got[23] != 'Z')
        fail_msg("message '%s': header %s is '%s', not an ISO 8601 UTC time",
                 m->message_id ? m->message_id : "(none)", key, got ? got : "(missing)");
}

/* Stops the worker with SIGTERM and expects exit code 0 within STOP_MS. */
static void stop_worker(cwtest_env *env)
{
    int code = cwtest_worker_stop(env, SIGTERM, STOP_MS);
    if (code != 0)
        fail_msg("the worker exited with code %d after SIGTERM, not 0; see %s", code, env->log);
}

/* Once the stopped worker's consumer is gone (its unacked deliveries back in
 * the queue), the pool queue holds `ready` and the DLQ `dead` messages. */
static void expect_queues(cwtest_env *env, uint32_t ready, uint32_t dead)
{
    cwtest_queue_wait_idle(env, env->queue, WAIT_MS);
    uint32_t q = cwtest_queue_count(env, env->queue);
    uint32_t d = cwtest_queue_count(env, env->dlq);
    if (q != ready || d != dead)
        fail_msg("the pool queue holds %u and the DLQ %u messages; want %u and %u", q, d, ready,
                 dead);
}

/* The ledger holds `n` rows, one per message ID. */
static void expect_ledger_exactly_once(const cwtest_env *env, long n)
{
    long rows = cwtest_ledger_rows(env);
    long distinct = cwtest_ledger_distinct(env);
    long most = cwtest_ledger_max_per_id(env);
    if (rows != n || distinct != n || (n > 0 && most != 1))
        fail_msg("ledger: %ld rows, %ld distinct message IDs, at most %ld per ID; want %ld, %ld "
                 "and 1",
                 rows, distinct, most, n, n);
}

/* ---- 1. happy path ------------------------------------------------------ */

#define HAPPY_N 500

static void test_happy_path(void **state)
{
    static char ids[HAPPY_N][CW_MESSAGE_ID_MAX + 1];
    cwtest_env *env = cwtest_begin(state, "happy", NULL);
    cwtest_worker_start(env);

    cw_client *c = cwtest_client(env);
    for (int i = 0; i < HAPPY_N; i++) {
        char body[64], saga[32];
        snprintf(body, sizeof body, "{\"n\":%d}", i);
        snprintf(saga, sizeof saga, "saga-happy-%d", i % 17);
        cw_publish_opts o = CW_PUBLISH_OPTS_INIT;
        o.type = "it.apply";
        o.saga_id = saga;
        o.body = body;
        int rc = cw_client_publish(c, &o, ids[i], sizeof ids[i]);
        if (rc)
            fail_msg("cw_client_publish #%d: %s: %s", i, cw_status_name(rc), cw_error_last());
    }

    cwtest_ledger_wait(env, HAPPY_N, WAIT_MS);
    stop_worker(env);
    expect_ledger_exactly_once(env, HAPPY_N);
    expect_queues(env, 0, 0);
    for (int i = 0; i < HAPPY_N; i++) {
        long k = cwtest_ledger_count_id(env, ids[i]);
        if (k != 1)
            fail_msg("task %d (%s) applied %ld times", i, ids[i], k);
    }
    cwtest_stats st;
    cwtest_log_stats(env, &st);
    assert_int_equal(st.applied, HAPPY_N);
    assert_int_equal(st.dead_lettered, 0);
    assert_int_equal(st.invalid, 0);
    cwtest_pass(env);
}

/* ---- 2. duplicates ------------------------------------------------------ */

#define DUP_N 200
#define DUP_ADJACENT 50 /* ids 0..49: a second copy right behind the first */
#define DUP_LATE 50     /* ids 50..99: a second copy after all were applied */

static void dup_id(char *out, size_t cap, int i)
{
    snprintf(out, cap, "dup-%03d", i);
}

static void test_duplicates(void **state)
{
    cwtest_pool_opts po = {.queue_type = "classic"};
    cwtest_env *env = cwtest_begin(state, "dups", &po);

    /* A first run declares the topology; the tasks then queue up while no
     * worker runs, so that the adjacent copies reach one batch together. */
    cwtest_worker_start(env);
    stop_worker(env);

    char id[32], body[64];
    for (int i = 0; i < DUP_N; i++) {
        dup_id(id, sizeof id, i);
        snprintf(body, sizeof body, "{\"i\":%d}", i);
        cwtest_send_task(env, id, "saga-dups", body);
        if (i < DUP_ADJACENT)
            cwtest_send_task(env, id, "saga-dups", body);
    }
    cwtest_confirm_all(env);
    assert_int_equal(cwtest_queue_count(env, env->queue), DUP_N + DUP_ADJACENT);

    cwtest_worker_start(env);
    cwtest_ledger_wait(env, DUP_N, WAIT_MS);
    cwtest_log_wait(env, "duplicate skipped", DUP_ADJACENT, WAIT_MS);

    for (int i = DUP_ADJACENT; i < DUP_ADJACENT + DUP_LATE; i++) {
        dup_id(id, sizeof id, i);
        snprintf(body, sizeof body, "{\"i\":%d}", i);
        cwtest_send_task(env, id, "saga-dups", body);
    }
    cwtest_confirm_all(env);
    /* Wait for the late copies to be skipped, failing at once if one of
     * them is applied instead. */
    int64_t deadline = cwtest_now_ms() + WAIT_MS;
    while (cwtest_log_count(env, "duplicate skipped") < DUP_ADJACENT + DUP_LATE) {
        long rows = cwtest_ledger_rows(env);
        if (rows > DUP_N)
            fail_msg("a duplicate was applied: the ledger has %ld rows for %d IDs", rows, DUP_N);
        if (cwtest_now_ms() >= deadline)
            fail_msg("the worker skipped %u duplicates, not %d, within %d ms",
                     cwtest_log_count(env, "duplicate skipped"), DUP_ADJACENT + DUP_LATE, WAIT_MS);
        assert_true(cwtest_worker_alive(env));
        cwtest_sleep_ms(25);
    }

    stop_worker(env);
    expect_ledger_exactly_once(env, DUP_N);
    expect_queues(env, 0, 0);
    for (int i = 0; i < DUP_N; i++) {
        dup_id(id, sizeof id, i);
        assert_int_equal(cwtest_ledger_count_id(env, id), 1);
    }
    cwtest_stats st;
    cwtest_log_stats(env, &st);
    assert_int_equal(st.duplicates, DUP_ADJACENT + DUP_LATE);
    assert_int_equal(st.applied, DUP_N);
    assert_int_equal(st.dead_lettered, 0);
    cwtest_pass(env);
}

/* ---- 3. invalid messages ------------------------------------------------ */

#define BIG_BODY 4096

typedef struct bad_case {
    const char *name;
    cwtest_out m;
    const char *want; /* in cw-error */
} bad_case;

static void test_invalid_messages(void **state)
{
    cwtest_pool_opts po = {.pool_lines = "max_body_size = 1KiB\n"};
    cwtest_env *env = cwtest_begin(state, "invalid", &po);
    cwtest_worker_start(env);

    static char long_id[201], big[BIG_BODY + 1];
    memset(long_id, 'x', 200);
    long_id[200] = '\0';
    static const char big_head[] = "{\"case\":\"too-large\",\"pad\":\"";
    memcpy(big, big_head, sizeof big_head - 1);
    memset(big + sizeof big_head - 1, 'p', BIG_BODY - (sizeof big_head - 1) - 2);
    memcpy(big + BIG_BODY - 2, "\"}", 2);
    big[BIG_BODY] = '\0';

    const char *json = "application/json";
    const cwtest_header attempt_negative[] = {{"cw-attempt", CWTEST_I32, NULL, -1}};
    const cwtest_header attempt_string[] = {{"cw-attempt", CWTEST_STR, "2", 0}};
#define TASKS_TO(id_, body_)                                                                       \
    .exchange = "cw.tasks", .routing_key = "it.apply", .type = "it.apply", .message_id = (id_),    \
    .body = (body_)
#define QUEUE_TO(id_, body_)                                                                       \
    .exchange = "", .routing_key = env->queue, .message_id = (id_), .body = (body_)
    bad_case cases[] = {
        {"body not JSON",
         {TASKS_TO("bad-not-json", "this is not JSON {"), .content_type = json},
         "not JSON"},
        {"truncated JSON",
         {TASKS_TO("bad-truncated", "{\"case\":\"truncated\",\"amount\":12"), .content_type = json},
         "truncated"},
        {"JSON array",
         {TASKS_TO("bad-array", "[\"case\",\"array\"]"), .content_type = json},
         "not an object"},
        {"no message_id",
         {TASKS_TO(NULL, "{\"case\":\"no-message-id\"}"), .content_type = json},
         "message_id"},
        {"empty message_id",
         {TASKS_TO("", "{\"case\":\"empty-message-id\"}"), .content_type = json},
         "message_id"},
        {"200-byte message_id",
         {TASKS_TO(long_id, "{\"case\":\"long-message-id\"}"), .content_type = json},
         "message_id"},
        {"no type",
         {QUEUE_TO("bad-no-type", "{\"case\":\"no-type\"}"), .content_type = json},
         "no type"},
        {"unknown type",
         {QUEUE_TO("bad-unknown-type", "{\"case\":\"unknown-type\"}"), .type = "it.unknown",
          .content_type = json},
         "no handler"},
        {"body over max_body_size",
         {TASKS_TO("bad-too-large", big), .content_type = json},
         "too large"},
        {"content_type text/plain",
         {TASKS_TO("bad-text-plain", "{\"case\":\"text-plain\"}"), .content_type = "text/plain"},
         "content_type"},
        {"cw-attempt -1",
         {TASKS_TO("bad-attempt-negative", "{\"case\":\"attempt-negative\"}"), .content_type = json,
          .headers = attempt_negative, .n_headers = 1},
         "cw-attempt"},
        {"cw-attempt a string",
         {TASKS_TO("bad-attempt-string", "{\"case\":\"attempt-string\"}"), .content_type = json,
          .headers = attempt_string, .n_headers = 1},
         "cw-attempt"},
    };
#undef TASKS_TO
#undef QUEUE_TO
    const size_t n_cases = sizeof cases / sizeof *cases;

    for (size_t i = 0; i < n_cases; i++)
        cwtest_publish(env, &cases[i].m);
    cwtest_queue_wait(env, env->dlq, (uint32_t)n_cases, WAIT_MS);

    size_t n = 0;
    cwtest_msg *dead = cwtest_drain(env, env->dlq, &n);
    assert_int_equal(n, n_cases);
    for (size_t i = 0; i < n_cases; i++) {
        const bad_case *bc = &cases[i];
        size_t len = strlen(bc->m.body);
        const cwtest_msg *d = find_by_body(dead, n, bc->m.body, len);
        if (!d)
            fail_msg("case '%s': no DLQ message with the body as sent", bc->name);
        const char *cls = cwtest_msg_str(d, "cw-error-class");
        const char *err = cwtest_msg_str(d, "cw-error");
        if (!cls || strcmp(cls, "invalid") != 0 || !err || !strstr(err, bc->want))
            fail_msg("case '%s': cw-error-class '%s', cw-error '%s'; want 'invalid' and an "
                     "error containing '%s'",
                     bc->name, cls ? cls : "(missing)", err ? err : "(missing)", bc->want);
        expect_header(d, "cw-queue", env->queue);
        expect_timestamp(d, "cw-failed-at");
        if (bc->m.message_id && bc->m.message_id[0])
            assert_string_equal(d->message_id ? d->message_id : "(missing)", bc->m.message_id);
    }
    cwtest_msgs_free(dead, n);

    /* The worker survived all of it and still applies a valid task. */
    assert_true(cwtest_worker_alive(env));
    cwtest_send_task(env, "valid-after-invalid", "saga-ok", "{\"ok\":true}");
    cwtest_confirm_all(env);
    cwtest_ledger_wait(env, 1, WAIT_MS);
    assert_true(cwtest_ledger_applied(env, "valid-after-invalid"));
    assert_true(cwtest_worker_alive(env));

    stop_worker(env);
    expect_ledger_exactly_once(env, 1);
    expect_queues(env, 0, 0);
    cwtest_stats st;
    cwtest_log_stats(env, &st);
    assert_int_equal(st.invalid, n_cases);
    assert_int_equal(st.dead_lettered, n_cases);
    assert_int_equal(st.applied, 1);
    cwtest_pass(env);
}

/* ---- 4. CW_FAIL and CW_RETRY --------------------------------------------- */

static void test_fail_and_retry(void **state)
{
    /* One attempt only: a retry is at once exhausted (test_retry.c covers
     * retries that are tried again). */
    cwtest_pool_opts opts = {.extra = "[retry]\nmax_attempts = 1\n"};
    cwtest_env *env = cwtest_begin(state, "fail", &opts);
    cwtest_worker_start(env);

    static const char fail_body[] = "{\"fail\":\"unknown payment p-42\",\"payment_id\":\"p-42\"}";
    static const char retry_body[] = "{\"retry\":\"gateway timeout\"}";
    cw_client *c = cwtest_client(env);
    cw_publish_opts o = CW_PUBLISH_OPTS_INIT;
    o.type = "it.apply";
    o.saga_id = "saga-7";
    o.message_id = "fail-p-42";
    o.body = fail_body;
    int rc = cw_client_publish(c, &o, NULL, 0);
    if (rc)
        fail_msg("cw_client_publish: %s: %s", cw_status_name(rc), cw_error_last());
    o.saga_id = "saga-8";
    o.message_id = "retry-gateway";
    o.body = retry_body;
    rc = cw_client_publish(c, &o, NULL, 0);
    if (rc)
        fail_msg("cw_client_publish: %s: %s", cw_status_name(rc), cw_error_last());

    cwtest_queue_wait(env, env->dlq, 2, WAIT_MS);
    size_t n = 0;
    cwtest_msg *dead = cwtest_drain(env, env->dlq, &n);
    assert_int_equal(n, 2);

    const cwtest_msg *f = find_by_id(dead, n, "fail-p-42");
    assert_non_null(f);
    expect_header(f, "cw-error-class", "permanent");
    expect_header(f, "cw-error", "unknown payment p-42");
    expect_timestamp(f, "cw-failed-at");
    expect_header_has(f, "cw-handler", "ledger");
    expect_header_has(f, "cw-worker", "");
    assert_true(strlen(cwtest_msg_str(f, "cw-worker")) > 0);
    expect_header(f, "cw-original-exchange", "cw.tasks");
    expect_header(f, "cw-original-routing-key", "it.apply");
    expect_header(f, "cw-queue", env->queue);
    expect_header_int(f, "cw-attempt", 1);
    assert_non_null(f->correlation_id);
    assert_string_equal(f->correlation_id, "saga-7");
    assert_non_null(f->type);
    assert_string_equal(f->type, "it.apply");
    assert_non_null(f->content_type);
    assert_string_equal(f->content_type, "application/json");
    assert_int_equal(f->body_len, sizeof fail_body - 1);
    assert_memory_equal(f->body, fail_body, sizeof fail_body - 1);

    const cwtest_msg *r = find_by_id(dead, n, "retry-gateway");
    assert_non_null(r);
    expect_header(r, "cw-error-class", "exhausted");
    expect_header(r, "cw-error", "gateway timeout");
    expect_header_has(r, "cw-handler", "ledger");
    expect_header(r, "cw-queue", env->queue);
    expect_header_int(r, "cw-attempt", 1);
    assert_non_null(r->correlation_id);
    assert_string_equal(r->correlation_id, "saga-8");
    assert_int_equal(r->body_len, sizeof retry_body - 1);
    assert_memory_equal(r->body, retry_body, sizeof retry_body - 1);
    cwtest_msgs_free(dead, n);

    stop_worker(env);
    assert_int_equal(cwtest_ledger_rows(env), 0);
    expect_queues(env, 0, 0);
    cwtest_stats st;
    cwtest_log_stats(env, &st);
    assert_int_equal(st.dead_lettered, 2);
    assert_int_equal(st.invalid, 0);
    assert_int_equal(st.applied, 0);
    cwtest_pass(env);
}

/* ---- 5. the broker restarts mid-run --------------------------------------- */

#define RESTART_N 3000
#define RESTART_AT 300

static void test_broker_restart(void **state)
{
    cwtest_env *env = cwtest_begin(state, "restart", NULL);
    cwtest_worker_start(env);

    char id[32];
    for (int i = 0; i < RESTART_N; i++) {
        snprintf(id, sizeof id, "restart-%04d", i);
        cwtest_send_task(env, id, "saga-restart", "{\"sleep_ms\":1}");
    }
    cwtest_confirm_all(env);

    /* The worker is held while the broker CLI starts, so that the outage
     * meets it mid-run however slow the machine is. */
    cwtest_ledger_wait(env, RESTART_AT, WAIT_MS);
    long at_restart = cwtest_broker_restart_app(env, true);
    if (at_restart >= RESTART_N)
        fail_msg("the worker had applied all %d tasks when the broker restarted: not mid-run",
                 RESTART_N);

    cwtest_ledger_wait(env, RESTART_N, WAIT_MS);
    /* It reconnected by itself. */
    unsigned sessions = cwtest_log_count(env, "consuming from");
    if (sessions < 2)
        fail_msg("the worker did not log a second 'consuming from' after the restart");
    /* Deliveries the restart left unacked come back ahead of anything
     * published now: once a last task is applied, they are all settled. */
    cwtest_send_task(env, "restart-last", "saga-restart", "{}");
    cwtest_confirm_all(env);
    cwtest_ledger_wait(env, RESTART_N + 1, WAIT_MS);
    stop_worker(env);
    expect_ledger_exactly_once(env, RESTART_N + 1);
    expect_queues(env, 0, 0);
    cwtest_stats st;
    cwtest_log_stats(env, &st);
    assert_int_equal(st.applied, RESTART_N + 1);
    print_message("restart: %ld of %d applied when the broker dropped the connections; "
                  "%u sessions, %llu redelivered duplicates skipped\n",
                  at_restart, RESTART_N, sessions, st.duplicates);
    cwtest_pass(env);
}

/* ---- 6. SIGTERM mid-run --------------------------------------------------- */

#define TERM_N 1000
#define TERM_AT 100

static void test_sigterm_mid_run(void **state)
{
    cwtest_env *env = cwtest_begin(state, "sigterm", NULL);
    cwtest_worker_start(env);

    char id[32];
    for (int i = 0; i < TERM_N; i++) {
        snprintf(id, sizeof id, "term-%04d", i);
        cwtest_send_task(env, id, "saga-term", "{\"sleep_ms\":2}");
    }
    cwtest_confirm_all(env);

    cwtest_ledger_wait(env, TERM_AT, WAIT_MS);
    int64_t t0 = cwtest_now_ms();
    stop_worker(env);
    int64_t took = cwtest_now_ms() - t0;
    if (took > STOP_MS)
        fail_msg("the worker took %lld ms to stop", (long long)took);

    long rows = cwtest_ledger_rows(env);
    if (rows >= TERM_N)
        fail_msg("all %d tasks were applied before SIGTERM took effect: not mid-run", TERM_N);
    expect_ledger_exactly_once(env, rows);
    /* What was applied was acked; everything else is back in the queue. */
    expect_queues(env, (uint32_t)(TERM_N - rows), 0);
    cwtest_stats st;
    cwtest_log_stats(env, &st);
    assert_int_equal(st.applied, rows);
    print_message("sigterm: stopped after %ld of %d applied, in %lld ms\n", rows, TERM_N,
                  (long long)took);

    cwtest_worker_start(env);
    cwtest_ledger_wait(env, TERM_N, WAIT_MS);
    stop_worker(env);
    expect_ledger_exactly_once(env, TERM_N);
    expect_queues(env, 0, 0);
    cwtest_log_stats(env, &st);
    assert_int_equal(st.applied, TERM_N - rows);
    cwtest_pass(env);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_teardown(test_happy_path, cwtest_teardown),
        cmocka_unit_test_teardown(test_duplicates, cwtest_teardown),
        cmocka_unit_test_teardown(test_invalid_messages, cwtest_teardown),
        cmocka_unit_test_teardown(test_fail_and_retry, cwtest_teardown),
        cmocka_unit_test_teardown(test_broker_restart, cwtest_teardown),
        cmocka_unit_test_teardown(test_sigterm_mid_run, cwtest_teardown),
    };
    /* CW_TEST_FILTER=test_happy* runs a subset. */
    const char *filter = getenv("CW_TEST_FILTER");
    if (filter && filter[0])
        cmocka_set_test_filter(filter);
    return cmocka_run_group_tests(tests, NULL, NULL);
}
