/* Tests of what the PostgreSQL store does beyond the semantics every backend
 * shares (those are in test_store.c, run on each): liveness across hosts
 * (heartbeats, sessions), the schema and its migration under concurrent
 * starts, credentials kept out of messages, a server that goes away and
 * comes back, the sweep's single sweeper. They need the test server that
 * CW_TEST_PG_URL names and are skipped without it. */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>

#include <libpq-fe.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "compworker/status.h"
#include "framework/store.h"

#define LEASE_MS 30000
#define T0 1700000000000LL
#define PASSWORD "cw-test-secret"

static unsigned counter;

static const char *url(void)
{
    const char *u = getenv("CW_TEST_PG_URL");
    return u && *u ? u : NULL;
}

static void next_schema(char *out, size_t cap)
{
    snprintf(out, cap, "cwpg_%ld_%u", (long)getpid(), ++counter);
}

static cw_store *open_in(const char *schema, const char *owner, bool heartbeat)
{
    cw_store_opts o = {.backend = "postgresql",
                       .url = url(),
                       .schema = schema,
                       .owner = owner,
                       .lease_ms = LEASE_MS,
                       .heartbeat = heartbeat};
    cw_store *s = NULL;
    int rc = cw_store_open(&s, &o);
    if (rc)
        fail_msg("open %s as %s: %s: %s", schema, owner, cw_status_name(rc), cw_error_last());
    return s;
}

/* One SQL text on a connection of the test's own; the first value of the
 * first row, if any, into out. */
static void sql(const char *text, char *out, size_t cap)
{
    PGconn *c = PQconnectdb(url());
    if (PQstatus(c) != CONNECTION_OK)
        fail_msg("connect: %s", PQerrorMessage(c));
    PGresult *r = PQexec(c, text);
    if (PQresultStatus(r) != PGRES_COMMAND_OK && PQresultStatus(r) != PGRES_TUPLES_OK)
        fail_msg("%s: %s", text, PQresultErrorMessage(r));
    if (out) {
        out[0] = '\0';
        if (PQntuples(r) > 0 && !PQgetisnull(r, 0, 0))
            snprintf(out, cap, "%s", PQgetvalue(r, 0, 0));
    }
    PQclear(r);
    PQfinish(c);
}

static cw_claim_result claim(cw_store *s, const char *id, int64_t now, cw_claim *c)
{
    cw_claim_req req = {.message_id = id, .saga_id = "saga-1", .type = "t.x"};
    int rc = cw_store_claim_batch(s, &req, 1, now, c);
    if (rc)
        fail_msg("claim %s: %s: %s", id, cw_status_name(rc), cw_error_last());
    return c->result;
}

static int need_server(void **state)
{
    (void)state;
    if (!url())
        skip();
    return 0;
}

#define PG_TEST(f) cmocka_unit_test_setup(f, need_server)

/* ---- liveness -------------------------------------------------------------- */

static void stale_heartbeat_is_taken_over(void **state)
{
    (void)state;
    char schema[64], q[512];
    next_schema(schema, sizeof schema);
    cw_store *a = open_in(schema, "hostA:1:1", false);
    cw_store *b = open_in(schema, "hostB:2:2", false);
    cw_claim c;
    assert_int_equal(claim(a, "m1", T0, &c), CW_CLAIM_NEW);
    assert_int_equal(claim(b, "m1", T0 + 1, &c), CW_CLAIM_BUSY);
    assert_string_equal(c.owner, "hostA:1:1");
    /* Host A's last heartbeat is older than the staleness limit (its host
     * lost: the session would linger, but no beat comes). */
    snprintf(q, sizeof q,
             "UPDATE %s.cw_workers SET heartbeat_at = now() - interval '11 seconds'"
             " WHERE owner = 'hostA:1:1'",
             schema);
    sql(q, NULL, 0);
    assert_int_equal(claim(b, "m1", T0 + 2, &c), CW_CLAIM_NEW);
    assert_int_equal(c.deliveries, 2);
    cw_task_record r;
    assert_int_equal(cw_store_get(b, "m1", &r), 0);
    assert_string_equal(r.owner, "hostB:2:2");
    cw_store_free(b);
    cw_store_free(a);
}

static void ended_session_is_taken_over(void **state)
{
    (void)state;
    char schema[64], q[512], v[64];
    next_schema(schema, sizeof schema);
    cw_store *a = open_in(schema, "hostA:1:1", false);
    cw_store *b = open_in(schema, "hostB:2:2", false);
    cw_claim c;
    assert_int_equal(claim(a, "m1", T0, &c), CW_CLAIM_NEW);
    assert_int_equal(claim(b, "m1", T0 + 1, &c), CW_CLAIM_BUSY);
    /* A's process dies: its session ends at once, its heartbeat is fresh. */
    snprintf(
        q, sizeof q,
        "SELECT pg_terminate_backend(backend_pid) FROM %s.cw_workers WHERE owner = 'hostA:1:1'",
        schema);
    sql(q, v, sizeof v);
    assert_string_equal(v, "t");
    struct timespec ts = {0, 200000000L};
    nanosleep(&ts, NULL);
    assert_int_equal(claim(b, "m1", T0 + 2, &c), CW_CLAIM_NEW);

    /* A notices the loss at its next use, and comes back. */
    cw_claim_req req = {.message_id = "m2", .type = "t.x"};
    int rc = cw_store_claim_batch(a, &req, 1, T0 + 3, &c);
    if (rc) {
        assert_int_equal(rc, CW_STATUS_STORE_UNAVAILABLE);
        rc = cw_store_claim_batch(a, &req, 1, T0 + 3, &c);
    }
    assert_int_equal(rc, 0);
    assert_int_equal(c.result, CW_CLAIM_NEW);
    cw_store_free(b);
    cw_store_free(a);
}

static void heartbeat_thread_keeps_owner_alive(void **state)
{
    (void)state;
    char schema[64], q[512], v[64];
    next_schema(schema, sizeof schema);
    cw_store *a = open_in(schema, "hostA:1:1", true);
    cw_store *b = open_in(schema, "hostB:2:2", false);
    cw_claim c;
    assert_int_equal(claim(a, "m1", T0, &c), CW_CLAIM_NEW);
    snprintf(q, sizeof q,
             "UPDATE %s.cw_workers SET heartbeat_at = now() - interval '11 seconds'"
             " WHERE owner = 'hostA:1:1'",
             schema);
    sql(q, NULL, 0);
    /* The next beat (every 2 s) makes it fresh again. */
    snprintf(q, sizeof q,
             "SELECT heartbeat_at > now() - interval '5 seconds' FROM %s.cw_workers"
             " WHERE owner = 'hostA:1:1'",
             schema);
    bool fresh = false;
    for (int i = 0; i < 40 && !fresh; i++) {
        struct timespec ts = {0, 100000000L};
        nanosleep(&ts, NULL);
        sql(q, v, sizeof v);
        fresh = strcmp(v, "t") == 0;
    }
    assert_true(fresh);
    assert_int_equal(claim(b, "m1", T0 + 1, &c), CW_CLAIM_BUSY);

    /* A stops: it says so, and its claims are free at once. */
    cw_store_free(a);
    assert_int_equal(claim(b, "m1", T0 + 2, &c), CW_CLAIM_NEW);
    cw_store_free(b);
}

static void release_frees_claims(void **state)
{
    (void)state;
    char schema[64];
    next_schema(schema, sizeof schema);
    cw_store *a = open_in(schema, "hostA:1:1", false);
    cw_store *b = open_in(schema, "hostB:2:2", false);
    cw_claim c[2];
    cw_claim_req reqs[2] = {{.message_id = "m1", .type = "t.x"},
                            {.message_id = "m2", .type = "t.x"}};
    assert_int_equal(cw_store_claim_batch(a, reqs, 2, T0, c), 0);
    int64_t tickets[2] = {c[0].ticket, c[1].ticket};
    assert_int_equal(claim(b, "m1", T0 + 1, &c[0]), CW_CLAIM_BUSY);
    assert_int_equal(cw_store_release(a, tickets, 2), 0);
    assert_int_equal(claim(b, "m1", T0 + 2, &c[0]), CW_CLAIM_NEW);
    assert_int_equal(claim(b, "m2", T0 + 2, &c[0]), CW_CLAIM_NEW);
    cw_store_free(b);
    cw_store_free(a);
}

/* ---- the schema -------------------------------------------------------------- */

static void newer_schema_refused(void **state)
{
    (void)state;
    char schema[64], q[512];
    next_schema(schema, sizeof schema);
    cw_store_free(open_in(schema, "w1", false));
    snprintf(q, sizeof q, "UPDATE %s.cw_meta SET value = '7' WHERE key = 'schema_version'", schema);
    sql(q, NULL, 0);
    cw_store_opts o = {.backend = "postgresql",
                       .url = url(),
                       .schema = schema,
                       .owner = "w1",
                       .lease_ms = LEASE_MS};
    cw_store *s = NULL;
    assert_int_equal(cw_store_open(&s, &o), CW_STATUS_STORE);
    assert_null(s);
    assert_non_null(strstr(cw_error_last(), "version 7"));
    assert_non_null(strstr(cw_error_last(), "(3)"));
    char out[512];
    assert_int_equal(cw_store_probe(&o, out, sizeof out), 0);
    assert_non_null(strstr(out, "version 7, newer"));
}

static void schema_of_users_choice(void **state)
{
    (void)state;
    char schema[64], q[512], v[64];
    snprintf(schema, sizeof schema, "Odd Schema-%ld", (long)getpid());
    cw_store_opts o = {.backend = "postgresql",
                       .url = url(),
                       .schema = schema,
                       .owner = "w1",
                       .lease_ms = LEASE_MS};
    char out[512];
    assert_int_equal(cw_store_probe(&o, out, sizeof out), 0);
    assert_non_null(strstr(out, "not created yet"));
    cw_store *s = open_in(schema, "w1", false);
    cw_claim c;
    assert_int_equal(claim(s, "m1", T0, &c), CW_CLAIM_NEW);
    cw_store_free(s);
    snprintf(q, sizeof q,
             "SELECT count(*) FROM information_schema.tables WHERE table_schema = '%s'"
             " AND table_name IN ('cw_tasks', 'cw_attempts', 'cw_workers', 'cw_meta',"
             " 'cw_followups')",
             schema);
    sql(q, v, sizeof v);
    assert_string_equal(v, "5");
    assert_int_equal(cw_store_probe(&o, out, sizeof out), 0);
    assert_non_null(strstr(out, "at version 3"));
    assert_non_null(strstr(out, "postgresql://cw@127.0.0.1"));
    assert_null(strstr(out, PASSWORD));
    snprintf(q, sizeof q, "DROP SCHEMA \"%s\" CASCADE", schema);
    sql(q, NULL, 0);
}

typedef struct opener {
    const char *schema;
    char owner[32];
    int rc;
} opener;

static void *open_thread(void *arg)
{
    opener *o = arg;
    cw_store_opts so = {.backend = "postgresql",
                        .url = url(),
                        .schema = o->schema,
                        .owner = o->owner,
                        .lease_ms = LEASE_MS};
    cw_store *s = NULL;
    o->rc = cw_store_open(&s, &so);
    cw_store_free(s);
    return NULL;
}

static void hosts_starting_at_once(void **state)
{
    (void)state;
    char schema[64], q[512], v[64];
    next_schema(schema, sizeof schema);
    enum {
        N = 6
    };
    opener o[N];
    pthread_t t[N];
    for (int i = 0; i < N; i++) {
        o[i].schema = schema;
        snprintf(o[i].owner, sizeof o[i].owner, "host%d:1:1", i);
        o[i].rc = -99;
        assert_int_equal(pthread_create(&t[i], NULL, open_thread, &o[i]), 0);
    }
    for (int i = 0; i < N; i++) {
        pthread_join(t[i], NULL);
        assert_int_equal(o[i].rc, 0);
    }
    snprintf(q, sizeof q, "SELECT value FROM %s.cw_meta WHERE key = 'schema_version'", schema);
    sql(q, v, sizeof v);
    assert_string_equal(v, "3");
}

/* ---- credentials and reachability ---------------------------------------------- */

/* The URL of the test server with another password, or another port. */
static void variant(char *out, size_t cap, const char *password, const char *port)
{
    const char *u = url();
    const char *at = strchr(u, '@');
    const char *colon = strrchr(u, ':');
    assert_non_null(at);
    if (password)
        snprintf(out, cap, "postgresql://cw:%s%s", password, at);
    else
        snprintf(out, cap, "%.*s:%s%s", (int)(colon - u), u, port, strchr(colon, '/'));
}

static void wrong_password_never_shown(void **state)
{
    (void)state;
    char u[512], schema[64];
    next_schema(schema, sizeof schema);
    variant(u, sizeof u, "Wr0ng-Pa55word", NULL);
    cw_store_opts o = {
        .backend = "postgresql", .url = u, .schema = schema, .owner = "w1", .lease_ms = LEASE_MS};
    cw_store *s = NULL;
    assert_int_equal(cw_store_open(&s, &o), CW_STATUS_STORE);
    assert_null(strstr(cw_error_last(), "Wr0ng-Pa55word"));
    assert_non_null(strstr(cw_error_last(), "password authentication failed"));
    assert_non_null(strstr(cw_error_last(), "postgresql://cw@127.0.0.1"));
    char out[256];
    assert_int_equal(cw_store_probe(&o, out, sizeof out), CW_STATUS_STORE);
    assert_null(strstr(cw_error_last(), "Wr0ng-Pa55word"));

    /* A URL libpq cannot read, with a password in it. */
    o.url = "postgresql://cw:Wr0ng-Pa55word@127.0.0.1:notaport/db";
    assert_int_equal(cw_store_open(&s, &o), CW_STATUS_CONFIG);
    assert_null(strstr(cw_error_last(), "Wr0ng-Pa55word"));
    o.url = "host=127.0.0.1 password='Wr0ng-Pa55word' port=";
    assert_int_not_equal(cw_store_open(&s, &o), 0);
    assert_null(strstr(cw_error_last(), "Wr0ng-Pa55word"));
}

static void unreachable_server(void **state)
{
    (void)state;
    char u[512], schema[64];
    next_schema(schema, sizeof schema);
    variant(u, sizeof u, NULL, "1");
    cw_store_opts o = {
        .backend = "postgresql", .url = u, .schema = schema, .owner = "w1", .lease_ms = LEASE_MS};
    cw_store *s = NULL;
    assert_int_equal(cw_store_open(&s, &o), CW_STATUS_STORE_UNAVAILABLE);
    assert_non_null(strstr(cw_error_last(), "cannot connect"));
    assert_null(strstr(cw_error_last(), PASSWORD));
    char out[256];
    assert_int_equal(cw_store_probe(&o, out, sizeof out), CW_STATUS_STORE_UNAVAILABLE);
}

static void passfile_and_key_value_form(void **state)
{
    (void)state;
    char schema[64], pass[128], kv[512];
    next_schema(schema, sizeof schema);
    /* The test server's port, from its URL. */
    const char *port = strrchr(url(), ':') + 1;
    int port_n = atoi(port);
    snprintf(pass, sizeof pass, "/tmp/cw-test-pgpass-%ld", (long)getpid());
    FILE *f = fopen(pass, "w");
    assert_non_null(f);
    fprintf(f, "127.0.0.1:%d:cw_test:cw:%s\n", port_n, PASSWORD);
    fclose(f);
    chmod(pass, 0600);
    setenv("PGPASSFILE", pass, 1);
    snprintf(kv, sizeof kv, "host=127.0.0.1 port=%d dbname=cw_test user=cw", port_n);
    cw_store_opts o = {
        .backend = "postgresql", .url = kv, .schema = schema, .owner = "w1", .lease_ms = LEASE_MS};
    cw_store *s = NULL;
    int rc = cw_store_open(&s, &o);
    if (rc)
        fail_msg("%s", cw_error_last());
    cw_claim c;
    assert_int_equal(claim(s, "m1", T0, &c), CW_CLAIM_NEW);
    cw_store_free(s);
    unsetenv("PGPASSFILE");
    unlink(pass);
}

static int harness(const char *cmd)
{
    const char *h = getenv("CW_TEST_PG_HARNESS"), *dir = getenv("CW_TEST_PG_DIR");
    if (!h || !dir)
        return -1;
    pid_t pid = fork();
    if (pid == 0) {
        execl(h, h, cmd, dir, (char *)NULL);
        _exit(127);
    }
    int st;
    waitpid(pid, &st, 0);
    return WIFEXITED(st) ? WEXITSTATUS(st) : -1;
}

static void server_restart_survived(void **state)
{
    (void)state;
    if (!getenv("CW_TEST_PG_HARNESS"))
        skip();
    char schema[64];
    next_schema(schema, sizeof schema);
    cw_store *s = open_in(schema, "w1", true);
    cw_claim c;
    assert_int_equal(claim(s, "m1", T0, &c), CW_CLAIM_NEW);
    assert_int_equal(harness("restart"), 0);
    /* The first use finds the connection gone and says so; a later one
     * reconnects. Nothing is lost: the claim is there. */
    cw_claim_req req = {.message_id = "m1", .type = "t.x"};
    int rc = cw_store_claim_batch(s, &req, 1, T0 + 1, &c);
    if (rc) {
        assert_int_equal(rc, CW_STATUS_STORE_UNAVAILABLE);
        assert_false(cw_store_reachable(s));
        assert_null(strstr(cw_error_last(), PASSWORD));
        rc = cw_store_claim_batch(s, &req, 1, T0 + 1, &c);
    }
    assert_int_equal(rc, 0);
    assert_true(cw_store_reachable(s));
    assert_int_equal(c.result, CW_CLAIM_NEW); /* ours: reclaimed */
    assert_int_equal(c.deliveries, 2);
    cw_store_free(s);
}

/* ---- batches, text, the sweep ---------------------------------------------------- */

static void big_batch_one_statement(void **state)
{
    (void)state;
    char schema[64], id[32];
    next_schema(schema, sizeof schema);
    cw_store *s = open_in(schema, "w1", false);
    enum {
        N = 500
    };
    static cw_claim_req reqs[N];
    static cw_claim out[N];
    static cw_settle_req settle[N];
    static char ids[N][32];
    for (int i = 0; i < N; i++) {
        snprintf(ids[i], sizeof ids[i], "b-%04d", i);
        reqs[i] = (cw_claim_req){.message_id = ids[i],
                                 .saga_id = i % 2 ? NULL : "s\"q\\",
                                 .type = "t.x"};
    }
    assert_int_equal(cw_store_claim_batch(s, reqs, N, T0, out), 0);
    for (int i = 0; i < N; i++) {
        assert_int_equal(out[i].result, CW_CLAIM_NEW);
        assert_true(out[i].fresh);
        settle[i] = (cw_settle_req){.message_id = ids[i],
                                    .ticket = out[i].ticket,
                                    .state = i % 3 ? CW_STATE_DONE : CW_STATE_DEAD,
                                    .outcome = i % 3 ? "ok" : "permanent",
                                    .error_class = i % 3 ? NULL : "permanent",
                                    /* not UTF-8: kept as '?' rather than refused */
                                    .reason = i % 3 ? NULL : "bad \xff byte"};
    }
    assert_int_equal(cw_store_settle_batch(s, settle, N, T0 + 1), 0);
    assert_int_equal(cw_store_claim_batch(s, reqs, N, T0 + 2, out), 0);
    for (int i = 0; i < N; i++)
        assert_int_equal(out[i].result, i % 3 ? CW_CLAIM_DONE : CW_CLAIM_DEAD);
    cw_task_record r;
    snprintf(id, sizeof id, "b-%04d", 0);
    assert_int_equal(cw_store_get(s, id, &r), 0);
    assert_string_equal(r.last_error, "bad ? byte");
    assert_string_equal(r.saga_id, "s\"q\\");
    cw_store_free(s);
}

static void one_sweeper_at_a_time(void **state)
{
    (void)state;
    char schema[64], q[512];
    next_schema(schema, sizeof schema);
    cw_store *s = open_in(schema, "w1", false);
    cw_claim c;
    for (int i = 0; i < 10; i++) {
        char id[16];
        snprintf(id, sizeof id, "old-%d", i);
        cw_claim_req req = {.message_id = id, .type = "t.x"};
        assert_int_equal(cw_store_claim_batch(s, &req, 1, T0, &c), 0);
        cw_settle_req st = {.message_id = id,
                            .ticket = c.ticket,
                            .state = CW_STATE_DONE,
                            .outcome = "ok"};
        assert_int_equal(cw_store_settle_batch(s, &st, 1, T0), 0);
    }
    /* Another host's sweeper holds the lock: this one skips its turn. */
    PGconn *other = PQconnectdb(url());
    assert_int_equal(PQstatus(other), CONNECTION_OK);
    snprintf(
        q, sizeof q,
        "SELECT pg_advisory_lock(hashtext('compworker.sweep.' || current_database() || '.%s'))",
        schema);
    PQclear(PQexec(other, q));
    unsigned removed = 99;
    assert_int_equal(cw_store_sweep(s, T0 + 1000, 100, &removed), 0);
    assert_int_equal(removed, 0);
    PQclear(PQexec(other, "SELECT pg_advisory_unlock_all()")); /* its sweep is over */
    PQfinish(other);
    assert_int_equal(cw_store_sweep(s, T0 + 1000, 100, &removed), 0);
    assert_int_equal(removed, 10);
    cw_store_free(s);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        PG_TEST(stale_heartbeat_is_taken_over),
        PG_TEST(ended_session_is_taken_over),
        PG_TEST(heartbeat_thread_keeps_owner_alive),
        PG_TEST(release_frees_claims),
        PG_TEST(newer_schema_refused),
        PG_TEST(schema_of_users_choice),
        PG_TEST(hosts_starting_at_once),
        PG_TEST(wrong_password_never_shown),
        PG_TEST(unreachable_server),
        PG_TEST(passfile_and_key_value_form),
        PG_TEST(big_batch_one_statement),
        PG_TEST(one_sweeper_at_a_time),
        PG_TEST(server_restart_survived),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
