/* Integration tests of the outbox relay (compworker relay), with the
 * test's PostgreSQL server (CW_TEST_PG_URL; skipped without it) as the
 * publisher's database and the test broker:
 *
 *   - relay init creates the table (twice: the second changes nothing);
 *     rows committed with cw_outbox_enqueue() and with a plain INSERT are
 *     published as tasks of the message contract (message ID, type, saga
 *     ID, body, routing key, headers), rolled-back ones never; the rows are
 *     marked sent; /metrics and /healthz answer;
 *   - cw_outbox_enqueue() refuses what a worker would refuse, and a table
 *     that is not there;
 *   - rows that cannot be published (no message ID, a body that is not an
 *     object, a bad type, bad headers, an unroutable routing key, a body
 *     past max_body_size) are marked failed with the reason, alerted once
 *     each through the webhook, listed by relay failed, hold up no row
 *     behind them (their saga's included), and are published after relay
 *     retry;
 *   - two relays on one table share it and keep every saga in id order;
 *   - a queue that nacks what does not fit: nacked rows are published again
 *     after what was confirmed and before what follows, each once there;
 *   - faults: rows committed in small transactions (some rolled back)
 *     while the relay is SIGKILLed three times, the broker restarted and
 *     PostgreSQL restarted: every committed row published, no rolled-back
 *     one, duplicates only as the same message ID, every row marked sent;
 *   - sent rows are removed after the retention.
 * Each test has an outbox table and an exchange of its own. */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>

#include <fcntl.h>
#include <libpq-fe.h>
#include <signal.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "compworker/outbox.h"
#include "cwtest.h"

#define WAIT_MS CWTEST_TIMEOUT_MS
#define MAX_RELAYS 2

typedef struct relay_env {
    cwtest_env *env;
    char table[64];
    char exchange[128];
    char queue[200]; /* bound to the exchange with "it.#" */
    char ini[400];
    char log[400];
    char pg_url[512];
    PGconn *db;
    pid_t relay[MAX_RELAYS];
    cwtest_http *hook;
} relay_env;

static void quiet(void *arg, const char *message)
{
    (void)arg;
    (void)message;
}

static PGconn *db_connect(const char *url)
{
    PGconn *c = PQconnectdb(url);
    if (PQstatus(c) != CONNECTION_OK)
        fail_msg("connecting to the test database: %s", PQerrorMessage(c));
    PQsetNoticeProcessor(c, quiet, NULL);
    return c;
}

static void db_exec(PGconn *c, const char *sql)
{
    PGresult *r = PQexec(c, sql);
    if (PQresultStatus(r) != PGRES_COMMAND_OK && PQresultStatus(r) != PGRES_TUPLES_OK)
        fail_msg("%s: %s", sql, PQresultErrorMessage(r));
    PQclear(r);
}

/* The first column of the first row of `fmt`, as a number. */
static long db_long(PGconn *c, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static long db_long(PGconn *c, const char *fmt, ...)
{
    char sql[2048];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(sql, sizeof sql, fmt, ap);
    va_end(ap);
    PGresult *r = PQexec(c, sql);
    if (PQresultStatus(r) != PGRES_TUPLES_OK || PQntuples(r) != 1)
        fail_msg("%s: %s", sql, PQresultErrorMessage(r));
    long v = atol(PQgetvalue(r, 0, 0));
    PQclear(r);
    return v;
}

/* A pool env (for the broker connection and the directory), an outbox
 * table, an exchange and a queue of the test's own, and the relay's file. */
static relay_env *begin(void **state, const char *test, const char *relay_lines, bool hook)
{
    const char *url = getenv("CW_TEST_PG_URL");
    if (!url || !*url)
        skip();
    relay_env *e = calloc(1, sizeof *e);
    e->env = cwtest_begin(state, test, NULL);
    snprintf(e->pg_url, sizeof e->pg_url, "%s", url);
    snprintf(e->table, sizeof e->table, "ob_%s_%ld", test, (long)getpid());
    snprintf(e->exchange, sizeof e->exchange, "it.relay.%s.%ld", test, (long)getpid());
    snprintf(e->queue, sizeof e->queue, "%s.out", e->env->queue);
    cwtest_queue_declare(e->env, e->queue);
    cwtest_queue_bind(e->env, e->queue, e->exchange, "it.#");
    e->db = db_connect(url);
    char sql[256];
    snprintf(sql, sizeof sql, "DROP TABLE IF EXISTS %s", e->table);
    db_exec(e->db, sql);

    char alert[256] = "";
    if (hook) {
        e->hook = cwtest_http_start(e->env, "/hook");
        snprintf(alert, sizeof alert,
                 "[alert]\nwebhook = http://127.0.0.1:%u/hook\nrate_limit = 0\n",
                 cwtest_http_port(e->hook));
    }
    snprintf(e->ini, sizeof e->ini, "%s/relay.ini", e->env->dir);
    snprintf(e->log, sizeof e->log, "%s/relay.log", e->env->dir);
    FILE *f = fopen(e->ini, "w");
    assert_non_null(f);
    fprintf(f,
            "[relay]\nurl = %s\ntable = %s\npoll_interval = 500ms\nmetrics_listen = "
            "127.0.0.1:0\n%s\n[broker]\nurl = %s\nexchange = %s\nheartbeat = 5s\n\n%s\n"
            "[log]\nlevel = info\n",
            url, e->table, relay_lines ? relay_lines : "", e->env->url, e->exchange, alert);
    fclose(f);
    return e;
}

static void relay_start(relay_env *e, int i)
{
    pid_t pid = fork();
    if (pid == 0) {
        int fd = open(e->log, O_WRONLY | O_CREAT | O_APPEND, 0644);
        dup2(fd, 1);
        dup2(fd, 2);
        if (i > 0) /* the first one serves /metrics */
            setenv("CW_RELAY_METRICS_LISTEN", "off", 1);
        execl(e->env->exe, e->env->exe, "relay", "-c", e->ini, (char *)NULL);
        _exit(127);
    }
    e->relay[i] = pid;
    FILE *p = fopen(e->env->pids, "a");
    if (p) {
        fprintf(p, "%ld\n", (long)pid);
        fclose(p);
    }
}

static int relay_stop(relay_env *e, int i, int sig)
{
    if (!e->relay[i])
        return -1;
    kill(e->relay[i], sig);
    int st = 0;
    waitpid(e->relay[i], &st, 0);
    e->relay[i] = 0;
    return WIFEXITED(st) ? WEXITSTATUS(st) : 128 + WTERMSIG(st);
}

static void finish(relay_env *e)
{
    for (int i = 0; i < MAX_RELAYS; i++) {
        if (e->relay[i])
            assert_int_equal(relay_stop(e, i, SIGTERM), 0);
    }
    char sql[256];
    snprintf(sql, sizeof sql, "DROP TABLE IF EXISTS %s", e->table);
    db_exec(e->db, sql);
    PQfinish(e->db);
    cwtest_pass(e->env);
    free(e);
}

/* The base URL of the first relay's /metrics: the port it picked (port 0),
 * from its log line "serving metrics at http://127.0.0.1:PORT/metrics". */
static void metrics_base(relay_env *e, char *out, size_t cap)
{
    int64_t deadline = cwtest_now_ms() + WAIT_MS;
    for (;;) {
        FILE *f = fopen(e->log, "r");
        char line[4096];
        unsigned port = 0;
        while (f && fgets(line, sizeof line, f)) {
            const char *at = strstr(line, "serving metrics at http://127.0.0.1:");
            if (at)
                port = (unsigned)atoi(at + strlen("serving metrics at http://127.0.0.1:"));
        }
        if (f)
            fclose(f);
        if (port) {
            snprintf(out, cap, "http://127.0.0.1:%u", port);
            return;
        }
        if (cwtest_now_ms() > deadline)
            fail_msg("the relay did not say where it serves /metrics; see %s", e->log);
        cwtest_sleep_ms(50);
    }
}

static void init_table(relay_env *e)
{
    char out[4096];
    int rc = cwtest_cli(e->env, out, sizeof out, true, "relay", "init", "-c", e->ini, NULL);
    if (rc != 0 || !strstr(out, "created"))
        fail_msg("relay init: %d: %s", rc, out);
    rc = cwtest_cli(e->env, out, sizeof out, true, "relay", "init", "-c", e->ini, NULL);
    if (rc != 0 || !strstr(out, "checked") || strstr(out, "NOTICE"))
        fail_msg("relay init again: %d: %s", rc, out);
}

/* Waits until the queue holds n messages, and takes them. */
static cwtest_msg *take(relay_env *e, size_t n, size_t *got)
{
    cwtest_queue_wait(e->env, e->queue, (uint32_t)n, WAIT_MS);
    return cwtest_drain(e->env, e->queue, got);
}

/* A UUID's text with version 7 and the RFC 9562 variant, its first 48
 * bits a millisecond time within a day of now. */
static bool is_uuid_v7(const char *id)
{
    if (strlen(id) != 36 || id[8] != '-' || id[13] != '-' || id[18] != '-' || id[23] != '-' ||
        id[14] != '7' || !strchr("89ab", id[19]))
        return false;
    for (int i = 0; i < 36; i++) {
        if (id[i] != '-' && !strchr("0123456789abcdef", id[i]))
            return false;
    }
    char hex[13];
    memcpy(hex, id, 8);
    memcpy(hex + 8, id + 9, 4);
    hex[12] = '\0';
    long long ms = strtoll(hex, NULL, 16), now = (long long)time(NULL) * 1000;
    return ms > now - 86400000 && ms < now + 86400000;
}

static const cwtest_msg *by_id(const cwtest_msg *m, size_t n, const char *id)
{
    for (size_t i = 0; i < n; i++) {
        if (m[i].message_id && strcmp(m[i].message_id, id) == 0)
            return &m[i];
    }
    return NULL;
}

/* ---- the contract ------------------------------------------------------------- */

static void test_publishes_committed_rows(void **state)
{
    relay_env *e = begin(state, "basic", NULL, false);
    init_table(e);

    /* Before the relay runs: one row through the C client in a transaction
     * that commits, one in a transaction that rolls back, one plain INSERT
     * with a routing key and headers. */
    cw_publish_opts o = CW_PUBLISH_OPTS_INIT;
    o.type = "it.refund";
    o.saga_id = "saga-basic";
    o.body = "{\"payment_id\":\"p-1\",\"amount_cents\":1200}";
    char id1[CW_MESSAGE_ID_MAX + 1], id2[CW_MESSAGE_ID_MAX + 1];
    db_exec(e->db, "BEGIN");
    assert_int_equal(cw_outbox_enqueue(e->db, e->table, &o, id1, sizeof id1), 0);
    db_exec(e->db, "COMMIT");
    db_exec(e->db, "BEGIN");
    o.message_id = "rolled-back-1";
    assert_int_equal(cw_outbox_enqueue(e->db, e->table, &o, id2, sizeof id2), 0);
    assert_string_equal(id2, "rolled-back-1");
    db_exec(e->db, "ROLLBACK");
    char sql[1024];
    snprintf(sql, sizeof sql,
             "INSERT INTO %s (message_id, type, saga_id, body, routing_key, headers) VALUES "
             "('plain-1', 'it.restock', NULL, '{\"sku\":\"A\",\"qty\":2}', 'it.custom.key', "
             "'{\"x-tenant\":\"acme\",\"x-n\":7,\"x-ok\":true}')",
             e->table);
    db_exec(e->db, sql);
    /* A plain INSERT without a message ID takes the table's default. */
    snprintf(sql, sizeof sql, "INSERT INTO %s (type, body) VALUES ('it.restock', '{}')", e->table);
    db_exec(e->db, sql);

    relay_start(e, 0);
    size_t n;
    cwtest_msg *m = take(e, 3, &n);
    assert_int_equal(n, 3);
    const cwtest_msg *a = by_id(m, n, id1), *b = by_id(m, n, "plain-1"), *d = NULL;
    assert_non_null(a);
    assert_non_null(b);
    for (size_t i = 0; i < n; i++) {
        if (&m[i] != a && &m[i] != b)
            d = &m[i];
    }
    /* Both generated IDs are UUIDv7 (time-ordered; README, Message IDs). */
    assert_true(is_uuid_v7(id1));
    assert_non_null(d->message_id);
    assert_true(is_uuid_v7(d->message_id));
    assert_string_equal(a->type, "it.refund");
    assert_string_equal(a->routing_key, "it.refund");
    assert_string_equal(a->correlation_id, "saga-basic");
    assert_string_equal(a->content_type, "application/json");
    assert_true(a->has_timestamp);
    /* jsonb keeps the content, not the layout: "amount_cents": 1200 */
    assert_non_null(strstr((const char *)a->body, "\"amount_cents\": 1200"));
    assert_non_null(strstr((const char *)a->body, "\"payment_id\": \"p-1\""));
    assert_string_equal(b->type, "it.restock");
    assert_string_equal(b->routing_key, "it.custom.key");
    assert_null(b->correlation_id);
    bool tenant = false, num = false;
    for (size_t i = 0; i < b->n_headers; i++) {
        if (strcmp(b->headers[i].key, "x-tenant") == 0)
            tenant = b->headers[i].str && strcmp(b->headers[i].str, "acme") == 0;
        if (strcmp(b->headers[i].key, "x-n") == 0)
            num = b->headers[i].is_int && b->headers[i].num == 7;
    }
    assert_true(tenant);
    assert_true(num);
    cwtest_msgs_free(m, n);

    /* Rows committed while it runs: woken by the notification. */
    o.message_id = NULL;
    o.saga_id = NULL;
    for (int i = 0; i < 5; i++) {
        db_exec(e->db, "BEGIN");
        assert_int_equal(cw_outbox_enqueue(e->db, e->table, &o, NULL, 0), 0);
        db_exec(e->db, "COMMIT");
    }
    m = take(e, 5, &n);
    assert_int_equal(n, 5);
    cwtest_msgs_free(m, n);
    cwtest_sleep_ms(1000);
    assert_int_equal(cwtest_queue_count(e->env, e->queue), 0); /* nothing rolled back came */
    assert_int_equal(db_long(e->db, "SELECT count(*) FROM %s WHERE sent_at IS NULL", e->table), 0);
    assert_int_equal(db_long(e->db, "SELECT count(*) FROM %s", e->table), 8);

    char base[64];
    metrics_base(e, base, sizeof base);
    long code;
    char *body = cwtest_http_get(base, "/metrics", &code);
    assert_int_equal(code, 200);
    char series[256];
    snprintf(series, sizeof series, "compworker_outbox_published_total{table=\"%s\"}", e->table);
    assert_true(cwtest_metric(body, series) == 8);
    free(body);
    body = cwtest_http_get(base, "/healthz", &code);
    assert_int_equal(code, 200);
    free(body);

    char out[8192];
    assert_int_equal(cwtest_cli(e->env, out, sizeof out, true, "relay", "check", "-c", e->ini,
                                NULL),
                     0);
    assert_non_null(strstr(out, "is there"));
    assert_null(strstr(out, "cw-test-secret")); /* the password is masked */
    finish(e);
}

/* `relay init` on a table an earlier release made (its message IDs
 * defaulting to a random UUIDv4) gives it the UUIDv7 default. */
static void test_init_sets_the_id_default(void **state)
{
    relay_env *e = begin(state, "iddefault", NULL, false);
    char sql[1024];
    snprintf(sql, sizeof sql,
             "CREATE TABLE %s (id bigserial PRIMARY KEY, message_id text DEFAULT"
             " gen_random_uuid()::text, type text NOT NULL, saga_id text, body jsonb NOT NULL,"
             " routing_key text, headers jsonb, created_at timestamptz NOT NULL DEFAULT now(),"
             " sent_at timestamptz, failed_at timestamptz, error text)",
             e->table);
    db_exec(e->db, sql);
    snprintf(sql, sizeof sql, "INSERT INTO %s (type, body) VALUES ('it.a', '{}')", e->table);
    db_exec(e->db, sql);
    char out[4096];
    int rc = cwtest_cli(e->env, out, sizeof out, true, "relay", "init", "-c", e->ini, NULL);
    if (rc != 0 || !strstr(out, "checked"))
        fail_msg("relay init: %d: %s", rc, out);
    db_exec(e->db, sql);
    assert_int_equal(db_long(e->db, "SELECT count(*) FROM %s WHERE substr(message_id, 15, 1) = '7'",
                             e->table),
                     1);
    assert_int_equal(db_long(e->db, "SELECT count(*) FROM %s WHERE substr(message_id, 15, 1) = '4'",
                             e->table),
                     1);
    finish(e);
}

static void test_enqueue_refuses(void **state)
{
    relay_env *e = begin(state, "enqueue", NULL, false);
    init_table(e);
    cw_publish_opts o = CW_PUBLISH_OPTS_INIT;
    o.type = "it.refund";
    o.body = "[1,2]";
    assert_int_equal(cw_outbox_enqueue(e->db, e->table, &o, NULL, 0), CW_STATUS_INVALID_ARG);
    assert_non_null(strstr(cw_error_last(), "not a JSON object"));
    o.body = "{}";
    o.type = "bad type";
    assert_int_equal(cw_outbox_enqueue(e->db, e->table, &o, NULL, 0), CW_STATUS_INVALID_ARG);
    o.type = "it.refund";
    assert_int_equal(cw_outbox_enqueue(e->db, "Bad-Table", &o, NULL, 0), CW_STATUS_INVALID_ARG);
    assert_non_null(strstr(cw_error_last(), "Bad-Table"));
    db_exec(e->db, "BEGIN");
    assert_int_equal(cw_outbox_enqueue(e->db, "no_such_outbox", &o, NULL, 0), CW_STATUS_STORE);
    assert_non_null(strstr(cw_error_last(), "no_such_outbox"));
    db_exec(e->db, "ROLLBACK");
    assert_int_equal(db_long(e->db, "SELECT count(*) FROM %s", e->table), 0);
    finish(e);
}

/* ---- rows that cannot be published -------------------------------------------- */

static void test_bad_rows(void **state)
{
    relay_env *e = begin(state, "bad", NULL, true);
    init_table(e);
    char sql[2048];
    /* In id order: each bad row is followed by a good one of the same saga. */
    snprintf(sql, sizeof sql,
             "INSERT INTO %s (message_id, type, saga_id, body, routing_key, headers) VALUES "
             "(NULL, 'it.a', 's1', '{}', NULL, NULL),"
             "('ok-1', 'it.a', 's1', '{}', NULL, NULL),"
             "('bad-body', 'it.a', 's2', '[1]', NULL, NULL),"
             "('ok-2', 'it.a', 's2', '{}', NULL, NULL),"
             "('bad-type', 'not a type', 's3', '{}', NULL, NULL),"
             "('ok-3', 'it.a', 's3', '{}', NULL, NULL),"
             "('bad-headers', 'it.a', 's4', '{}', NULL, '{\"x\":{\"nested\":1}}'),"
             "('ok-4', 'it.a', 's4', '{}', NULL, NULL),"
             "('unroutable', 'it.a', 's5', '{}', 'nowhere.key', NULL),"
             "('ok-5', 'it.a', 's5', '{}', NULL, NULL),"
             "('too-big', 'it.a', 's6', jsonb_build_object('x', repeat('x', 1100000)), NULL, NULL),"
             "('ok-6', 'it.a', 's6', '{}', NULL, NULL)",
             e->table);
    db_exec(e->db, sql);
    relay_start(e, 0);
    size_t n;
    cwtest_msg *m = take(e, 6, &n);
    assert_int_equal(n, 6);
    for (int i = 1; i <= 6; i++) {
        char id[16];
        snprintf(id, sizeof id, "ok-%d", i);
        assert_non_null(by_id(m, n, id));
    }
    cwtest_msgs_free(m, n);
    assert_int_equal(cwtest_http_wait(e->hook, 6, WAIT_MS), 6);
    cwtest_sleep_ms(2000); /* several polls: none is tried again */
    assert_int_equal(cwtest_http_count(e->hook), 6);
    bool unroutable = false, invalid = false;
    for (size_t i = 0; i < 6; i++) {
        char *doc = cwtest_http_body(e->hook, i);
        if (strstr(doc, "\"error_class\":\"unroutable\"") && strstr(doc, "nowhere.key"))
            unroutable = true;
        if (strstr(doc, "\"error_class\":\"invalid\"") && strstr(doc, "not an object"))
            invalid = true;
        free(doc);
    }
    assert_true(unroutable);
    assert_true(invalid);
    assert_int_equal(cwtest_queue_count(e->env, e->queue), 0);
    assert_int_equal(db_long(e->db,
                             "SELECT count(*) FROM %s WHERE failed_at IS NOT NULL AND error <> ''",
                             e->table),
                     6);
    assert_int_equal(db_long(e->db,
                             "SELECT count(*) FROM %s WHERE message_id = 'bad-body' AND error LIKE "
                             "'%%not an object%%'",
                             e->table),
                     1);
    assert_int_equal(db_long(e->db,
                             "SELECT count(*) FROM %s WHERE message_id IS NULL AND error LIKE "
                             "'no message ID%%'",
                             e->table),
                     1);
    assert_int_equal(cwtest_file_count(e->log, "cannot be published"), 6);
    assert_int_equal(db_long(e->db,
                             "SELECT count(*) FROM %s WHERE message_id = 'too-big' AND error LIKE "
                             "'%%more than max_body_size%%'",
                             e->table),
                     1);
    char out[16384];
    assert_int_equal(cwtest_cli(e->env, out, sizeof out, true, "relay", "failed", "-c", e->ini,
                                NULL),
                     0);
    assert_non_null(strstr(out, "6 failed rows"));
    assert_non_null(strstr(out, "bad-type"));

    /* The operator fixes one and retries it: published with its own ID. */
    snprintf(sql, sizeof sql,
             "UPDATE %s SET body = '{\"fixed\":true}' WHERE message_id = 'bad-body'", e->table);
    db_exec(e->db, sql);
    long id = db_long(e->db, "SELECT id FROM %s WHERE message_id = 'bad-body'", e->table);
    char ids[32];
    snprintf(ids, sizeof ids, "%ld", id);
    assert_int_equal(cwtest_cli(e->env, out, sizeof out, true, "relay", "retry", "-c", e->ini, ids,
                                NULL),
                     0);
    assert_non_null(strstr(out, "1 row of"));
    m = take(e, 1, &n);
    assert_int_equal(n, 1);
    assert_string_equal(m[0].message_id, "bad-body");
    cwtest_msgs_free(m, n);
    assert_int_equal(cwtest_cli(e->env, out, sizeof out, true, "relay", "retry", "-c", e->ini, "x1",
                                NULL),
                     2);
    assert_int_equal(cwtest_cli(e->env, out, sizeof out, true, "relay", "retry", "-c", e->ini,
                                NULL),
                     2);
    finish(e);
}

/* ---- order and sharing ---------------------------------------------------------- */

#define SAGAS 40
#define STEPS 6

static void test_two_relays_keep_saga_order(void **state)
{
    relay_env *e = begin(state, "order", "batch = 7\n", false);
    init_table(e);
    relay_start(e, 0);
    relay_start(e, 1);
    /* Step k of every saga, then step k+1: each saga's rows interleave with
     * the others', in transactions of a few rows, while both relays run. */
    char sql[512];
    cw_publish_opts o = CW_PUBLISH_OPTS_INIT;
    o.type = "it.step";
    for (int k = 0; k < STEPS; k++) {
        for (int s = 0; s < SAGAS; s++) {
            if (s % 4 == 0)
                db_exec(e->db, "BEGIN");
            char saga[32], id[64], body[64];
            snprintf(saga, sizeof saga, "saga-%d", s);
            snprintf(id, sizeof id, "saga-%d-step-%d", s, k);
            snprintf(body, sizeof body, "{\"step\":%d}", k);
            o.saga_id = saga;
            o.message_id = id;
            o.body = body;
            assert_int_equal(cw_outbox_enqueue(e->db, e->table, &o, NULL, 0), 0);
            if (s % 4 == 3)
                db_exec(e->db, "COMMIT");
        }
    }
    size_t n;
    cwtest_msg *m = take(e, SAGAS * STEPS, &n);
    assert_int_equal(n, SAGAS * STEPS);
    int next[SAGAS] = {0};
    for (size_t i = 0; i < n; i++) {
        int s, k;
        assert_int_equal(sscanf(m[i].message_id, "saga-%d-step-%d", &s, &k), 2);
        if (k != next[s])
            fail_msg("saga %d: step %d arrived when step %d was next", s, k, next[s]);
        next[s]++;
    }
    cwtest_msgs_free(m, n);
    snprintf(sql, sizeof sql, "SELECT count(*) FROM %s WHERE sent_at IS NULL", e->table);
    assert_int_equal(db_long(e->db, "%s", sql), 0);
    finish(e);
}

/* A saga's rows through a queue that nacks what does not fit: what was
 * nacked is published again, after what was confirmed and before what
 * follows, each row once in that queue. */
#define NACK_ROWS 12

static void test_nacks_keep_order(void **state)
{
    relay_env *e = begin(state, "nack", NULL, false);
    init_table(e);
    char small[256];
    snprintf(small, sizeof small, "%s.small", e->env->queue);
    cwtest_queue_declare_bounded(e->env, small, 4);
    cwtest_queue_bind(e->env, small, e->exchange, "it.#");
    cw_publish_opts o = CW_PUBLISH_OPTS_INIT;
    o.type = "it.step";
    o.saga_id = "saga-nack";
    db_exec(e->db, "BEGIN");
    for (int k = 0; k < NACK_ROWS; k++) {
        char id[32], body[32];
        snprintf(id, sizeof id, "nack-step-%02d", k);
        snprintf(body, sizeof body, "{\"step\":%d}", k);
        o.message_id = id;
        o.body = body;
        assert_int_equal(cw_outbox_enqueue(e->db, e->table, &o, NULL, 0), 0);
    }
    db_exec(e->db, "COMMIT");
    relay_start(e, 0);
    int next = 0;
    int64_t deadline = cwtest_now_ms() + WAIT_MS;
    while (next < NACK_ROWS && cwtest_now_ms() < deadline) {
        size_t n;
        cwtest_msg *m = cwtest_drain(e->env, small, &n);
        for (size_t i = 0; i < n; i++) {
            int k;
            assert_int_equal(sscanf(m[i].message_id, "nack-step-%d", &k), 1);
            if (k != next)
                fail_msg("step %d arrived when step %d was next", k, next);
            next++;
        }
        cwtest_msgs_free(m, n);
        cwtest_sleep_ms(100);
    }
    assert_int_equal(next, NACK_ROWS);
    cwtest_sleep_ms(1000);
    assert_int_equal(cwtest_queue_count(e->env, small), 0); /* none twice */
    assert_int_equal(db_long(e->db, "SELECT count(*) FROM %s WHERE sent_at IS NULL", e->table), 0);
    char base[64];
    metrics_base(e, base, sizeof base);
    long code;
    char *body = cwtest_http_get(base, "/metrics", &code);
    char series[256];
    snprintf(series, sizeof series, "compworker_outbox_publish_errors_total{table=\"%s\"}",
             e->table);
    assert_true(cwtest_metric(body, series) >= 1); /* it was nacked */
    free(body);
    finish(e);
}

/* ---- faults --------------------------------------------------------------------- */

#define TXS 300
#define PER_TX 10

typedef struct ledger {
    char (*ids)[48];
    bool *committed;
    size_t n;
} ledger;

/* Commits (or, every 7th, rolls back) one transaction of PER_TX rows,
 * reconnecting through a PostgreSQL restart; a transaction whose COMMIT's
 * fate is unknown is looked up. */
static void one_tx(relay_env *e, ledger *l, int t)
{
    bool rollback = t % 7 == 3;
    for (int attempt = 0; attempt < 100; attempt++) {
        if (PQstatus(e->db) != CONNECTION_OK) {
            PQfinish(e->db);
            e->db = PQconnectdb(e->pg_url);
            if (PQstatus(e->db) != CONNECTION_OK) {
                cwtest_sleep_ms(200);
                continue;
            }
        }
        PGresult *r = PQexec(e->db, "BEGIN");
        bool ok = PQresultStatus(r) == PGRES_COMMAND_OK;
        PQclear(r);
        cw_publish_opts o = CW_PUBLISH_OPTS_INIT;
        o.type = "it.fault";
        o.body = "{\"n\":1}";
        char saga[32];
        snprintf(saga, sizeof saga, "fault-%d", t % 13);
        o.saga_id = saga;
        for (int i = 0; ok && i < PER_TX; i++) {
            o.message_id = l->ids[t * PER_TX + i];
            ok = cw_outbox_enqueue(e->db, e->table, &o, NULL, 0) == 0;
        }
        if (ok) {
            r = PQexec(e->db, rollback ? "ROLLBACK" : "COMMIT");
            ok = PQresultStatus(r) == PGRES_COMMAND_OK;
            PQclear(r);
        }
        if (ok) {
            for (int i = 0; i < PER_TX; i++)
                l->committed[t * PER_TX + i] = !rollback;
            return;
        }
        /* Failed somewhere: committed or not, the table says. */
        PQfinish(e->db);
        e->db = PQconnectdb(e->pg_url);
        if (PQstatus(e->db) == CONNECTION_OK) {
            char sql[256];
            snprintf(sql, sizeof sql, "SELECT count(*) FROM %s WHERE message_id = '%s'", e->table,
                     l->ids[t * PER_TX]);
            PGresult *q = PQexec(e->db, sql);
            bool there = PQresultStatus(q) == PGRES_TUPLES_OK && atol(PQgetvalue(q, 0, 0)) > 0;
            bool answered = PQresultStatus(q) == PGRES_TUPLES_OK;
            PQclear(q);
            if (answered && there) {
                for (int i = 0; i < PER_TX; i++)
                    l->committed[t * PER_TX + i] = true;
                return;
            }
        }
        cwtest_sleep_ms(200);
    }
    fail_msg("transaction %d could not be written in 100 attempts", t);
}

static void test_faults(void **state)
{
    relay_env *e = begin(state, "faults", "batch = 50\n", false);
    init_table(e);
    ledger l = {.n = TXS * PER_TX};
    l.ids = calloc(l.n, sizeof *l.ids);
    l.committed = calloc(l.n, sizeof *l.committed);
    for (size_t i = 0; i < l.n; i++)
        snprintf(l.ids[i], sizeof l.ids[i], "fault-%ld-%zu", (long)getpid(), i);
    relay_start(e, 0);
    for (int t = 0; t < TXS; t++) {
        one_tx(e, &l, t);
        if (t == 40 || t == 120 || t == 200) {
            /* SIGKILL mid-batch: it holds rows unconfirmed or unmarked. */
            cwtest_sleep_ms(3);
            relay_stop(e, 0, SIGKILL);
            relay_start(e, 0);
        }
        if (t == 80) {
            cwtest_harness(e->env, "stop-app");
            for (int k = 0; k < 5; k++)
                one_tx(e, &l, ++t);
            cwtest_harness(e->env, "start-app");
            cwtest_queue_declare(e->env, e->queue);
            cwtest_queue_bind(e->env, e->queue, e->exchange, "it.#");
        }
        if (t == 160) {
            cwtest_pg_harness("restart");
            PQfinish(e->db);
            e->db = db_connect(e->pg_url);
        }
        if (t % 20 == 0)
            cwtest_sleep_ms(50);
    }
    size_t committed = 0;
    for (size_t i = 0; i < l.n; i++)
        committed += l.committed[i];
    /* Everything committed is marked sent in the end. */
    int64_t deadline = cwtest_now_ms() + WAIT_MS;
    long pending;
    while ((pending = db_long(e->db, "SELECT count(*) FROM %s WHERE sent_at IS NULL", e->table)) >
               0 &&
           cwtest_now_ms() < deadline)
        cwtest_sleep_ms(200);
    assert_int_equal(pending, 0);
    assert_int_equal(db_long(e->db, "SELECT count(*) FROM %s", e->table), (long)committed);
    cwtest_sleep_ms(500);
    size_t n;
    cwtest_msg *m = cwtest_drain(e->env, e->queue, &n);
    size_t *seen = calloc(l.n, sizeof *seen);
    size_t dups = 0;
    for (size_t i = 0; i < n; i++) {
        long pid;
        size_t k;
        if (sscanf(m[i].message_id, "fault-%ld-%zu", &pid, &k) != 2 || k >= l.n)
            fail_msg("a message not of this test: %s", m[i].message_id);
        if (!l.committed[k])
            fail_msg("row %s was rolled back, yet published", m[i].message_id);
        if (seen[k]++)
            dups++;
    }
    size_t missing = 0;
    for (size_t i = 0; i < l.n; i++)
        missing += l.committed[i] && !seen[i];
    print_message("faults: %zu committed rows, %zu published, %zu again (same message ID), %zu "
                  "missing\n",
                  committed, n, dups, missing);
    assert_int_equal(missing, 0);
    assert_true(n >= committed);
    cwtest_msgs_free(m, n);
    free(seen);
    free(l.ids);
    free(l.committed);
    finish(e);
}

/* ---- retention ------------------------------------------------------------------ */

static void test_retention(void **state)
{
    relay_env *e = begin(state, "retention", "retention = 1s\n", false);
    init_table(e);
    cw_publish_opts o = CW_PUBLISH_OPTS_INIT;
    o.type = "it.keep";
    o.body = "{}";
    for (int i = 0; i < 5; i++)
        assert_int_equal(cw_outbox_enqueue(e->db, e->table, &o, NULL, 0), 0);
    relay_start(e, 0);
    size_t n;
    cwtest_msg *m = take(e, 5, &n);
    cwtest_msgs_free(m, n);
    int64_t deadline = cwtest_now_ms() + 15000;
    long left;
    while ((left = db_long(e->db, "SELECT count(*) FROM %s", e->table)) > 0 &&
           cwtest_now_ms() < deadline)
        cwtest_sleep_ms(200);
    assert_int_equal(left, 0);
    finish(e);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_teardown(test_publishes_committed_rows, cwtest_teardown),
        cmocka_unit_test_teardown(test_init_sets_the_id_default, cwtest_teardown),
        cmocka_unit_test_teardown(test_enqueue_refuses, cwtest_teardown),
        cmocka_unit_test_teardown(test_bad_rows, cwtest_teardown),
        cmocka_unit_test_teardown(test_two_relays_keep_saga_order, cwtest_teardown),
        cmocka_unit_test_teardown(test_nacks_keep_order, cwtest_teardown),
        cmocka_unit_test_teardown(test_faults, cwtest_teardown),
        cmocka_unit_test_teardown(test_retention, cwtest_teardown),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
