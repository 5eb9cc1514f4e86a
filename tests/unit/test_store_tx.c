/* Tests of handler transactions (cw_store_tx: what cw_task_sqlite() and
 * cw_task_pg() hand out) and of follow-up messages in the store, on the
 * SQLite backend (a file) and on the PostgreSQL server that CW_TEST_PG_URL
 * names (skipped without it). The "handler" here is the test itself,
 * writing through the transaction's handle as a plugin would. */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>

#include <ftw.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <libpq-fe.h>
#include <sqlite3.h>

#include "compworker/status.h"
#include "framework/store.h"

#define LEASE_MS 30000
#define T0 1700000000000LL

static char tmp_root[] = "/tmp/cw-test-store-tx-XXXXXX";
static unsigned counter;

typedef struct fixture {
    const char *backend;
    char path[512];
    char schema[64];
    char table[128]; /* the "handler's" table, qualified as the backend needs */
} fixture;

static const char *pg_url(void)
{
    const char *u = getenv("CW_TEST_PG_URL");
    return u && *u ? u : NULL;
}

static void fixture_init(fixture *f, const char *backend)
{
    f->backend = backend;
    snprintf(f->path, sizeof f->path, "%s/t%u/store.db", tmp_root, ++counter);
    snprintf(f->schema, sizeof f->schema, "cwtxtest_%ld_%u", (long)getpid(), counter);
    if (strcmp(backend, "postgresql") == 0)
        snprintf(f->table, sizeof f->table, "%s.it_ledger", f->schema);
    else
        snprintf(f->table, sizeof f->table, "it_ledger");
}

static bool is_pg(const fixture *f)
{
    return strcmp(f->backend, "postgresql") == 0;
}

static cw_store_opts opts_of(const fixture *f, const char *owner)
{
    return (cw_store_opts){.backend = f->backend,
                           .path = f->path,
                           .url = pg_url(),
                           .schema = f->schema,
                           .owner = owner,
                           .lease_ms = LEASE_MS,
                           .sync_full = true};
}

static cw_store *open_as(const fixture *f, const char *owner)
{
    cw_store_opts o = opts_of(f, owner);
    cw_store *s = NULL;
    int rc = cw_store_open(&s, &o);
    if (rc)
        fail_msg("cw_store_open(%s): %s: %s", f->backend, cw_status_name(rc), cw_error_last());
    return s;
}

static cw_store_tx *tx_as(const fixture *f, const char *owner)
{
    cw_store_opts o = opts_of(f, owner);
    cw_store_tx *tx = NULL;
    int rc = cw_store_tx_new(&tx, &o);
    if (rc)
        fail_msg("cw_store_tx_new(%s): %s: %s", f->backend, cw_status_name(rc), cw_error_last());
    assert_non_null(tx->handle);
    return tx;
}

/* Runs SQL on the test's own connection to the store's database. */
static void admin_sql(const fixture *f, const char *sql)
{
    if (is_pg(f)) {
        PGconn *c = PQconnectdb(pg_url());
        PGresult *r = PQexec(c, sql);
        bool ok = PQresultStatus(r) == PGRES_COMMAND_OK || PQresultStatus(r) == PGRES_TUPLES_OK;
        char why[512];
        snprintf(why, sizeof why, "%s", PQresultErrorMessage(r));
        PQclear(r);
        PQfinish(c);
        if (!ok)
            fail_msg("%s: %s", sql, why);
        return;
    }
    sqlite3 *db;
    assert_int_equal(sqlite3_open(f->path, &db), SQLITE_OK);
    sqlite3_busy_timeout(db, 5000);
    char *err = NULL;
    if (sqlite3_exec(db, sql, NULL, NULL, &err) != SQLITE_OK)
        fail_msg("%s: %s", sql, err);
    sqlite3_close(db);
}

/* One number a query returns, on the test's own connection. */
static long long admin_count(const fixture *f, const char *sql)
{
    long long v = -1;
    if (is_pg(f)) {
        PGconn *c = PQconnectdb(pg_url());
        PGresult *r = PQexec(c, sql);
        if (PQresultStatus(r) != PGRES_TUPLES_OK)
            fail_msg("%s: %s", sql, PQresultErrorMessage(r));
        v = atoll(PQgetvalue(r, 0, 0));
        PQclear(r);
        PQfinish(c);
        return v;
    }
    sqlite3 *db;
    sqlite3_stmt *st;
    assert_int_equal(sqlite3_open(f->path, &db), SQLITE_OK);
    sqlite3_busy_timeout(db, 5000);
    if (sqlite3_prepare_v2(db, sql, -1, &st, NULL) != SQLITE_OK || sqlite3_step(st) != SQLITE_ROW)
        fail_msg("%s: %s", sql, sqlite3_errmsg(db));
    v = sqlite3_column_int64(st, 0);
    sqlite3_finalize(st);
    sqlite3_close(db);
    return v;
}

/* What a handler does: one statement on the transaction's handle. */
static bool handler_sql(const fixture *f, cw_store_tx *tx, const char *sql)
{
    if (is_pg(f)) {
        PGresult *r = PQexec(tx->handle, sql);
        bool ok = PQresultStatus(r) == PGRES_COMMAND_OK || PQresultStatus(r) == PGRES_TUPLES_OK;
        PQclear(r);
        return ok;
    }
    return sqlite3_exec(tx->handle, sql, NULL, NULL, NULL) == SQLITE_OK;
}

static void handler_write(const fixture *f, cw_store_tx *tx, const char *id)
{
    char sql[256];
    snprintf(sql, sizeof sql, "INSERT INTO %s (message_id) VALUES ('%s')", f->table, id);
    if (!handler_sql(f, tx, sql))
        fail_msg("the handler's write failed: %s", cw_store_tx_error(tx));
}

static long long effects(const fixture *f, const char *id)
{
    char sql[256];
    snprintf(sql, sizeof sql, "SELECT count(*) FROM %s WHERE message_id = '%s'", f->table, id);
    return admin_count(f, sql);
}

/* A store with the handler's table beside it, and one claim of `id`. */
static cw_store *setup(const fixture *f, const char *id, int64_t *ticket)
{
    cw_store *s = open_as(f, "w1");
    char sql[256];
    snprintf(sql, sizeof sql, "CREATE TABLE %s (message_id text NOT NULL)", f->table);
    admin_sql(f, sql);
    cw_claim_req req = {.message_id = id, .saga_id = "saga-1", .type = "payment.refund"};
    cw_claim c;
    assert_int_equal(cw_store_claim_batch(s, &req, 1, T0, &c), 0);
    assert_int_equal(c.result, CW_CLAIM_NEW);
    *ticket = c.ticket;
    return s;
}

static cw_task_state state_of(cw_store *s, const char *id)
{
    cw_task_record r;
    assert_int_equal(cw_store_get(s, id, &r), 0);
    return r.state;
}

static cw_followup followup(const char *id, const char *rk, const char *body)
{
    cw_followup f = {0};
    snprintf(f.message_id, sizeof f.message_id, "%s", id);
    f.exchange = "";
    f.routing_key = (char *)rk;
    f.type = "payment.refunded";
    f.saga_id = "saga-1";
    f.body = (void *)body;
    f.len = strlen(body);
    return f;
}

static int rm_entry(const char *path, const struct stat *sb, int flag, struct FTW *ftw)
{
    (void)sb, (void)flag, (void)ftw;
    return remove(path);
}

static int group_setup(void **state)
{
    (void)state;
    return mkdtemp(tmp_root) ? 0 : -1;
}

static int group_teardown(void **state)
{
    (void)state;
    if (pg_url()) {
        fixture f = {.backend = "postgresql"};
        char sql[512];
        snprintf(sql, sizeof sql,
                 "SET client_min_messages = warning;"
                 "DO $$DECLARE n text; BEGIN FOR n IN SELECT nspname FROM pg_namespace"
                 " WHERE nspname LIKE 'cwtxtest\\_%ld\\_%%' LOOP"
                 " EXECUTE format('DROP SCHEMA %%I CASCADE', n); END LOOP; END$$",
                 (long)getpid());
        admin_sql(&f, sql);
    }
    return nftw(tmp_root, rm_entry, 16, FTW_DEPTH | FTW_PHYS);
}

#define PG_CASE(name)                                                                              \
    static void name##_pg(void **state)                                                            \
    {                                                                                              \
        (void)state;                                                                               \
        if (!pg_url())                                                                             \
            skip();                                                                                \
        fixture f;                                                                                 \
        fixture_init(&f, "postgresql");                                                            \
        name(&f);                                                                                  \
    }
#define BOTH(name)                                                                                 \
    static void name##_file(void **state)                                                          \
    {                                                                                              \
        (void)state;                                                                               \
        fixture f;                                                                                 \
        fixture_init(&f, "sqlite");                                                                \
        name(&f);                                                                                  \
    }                                                                                              \
    PG_CASE(name)

/* ---- handler transactions -------------------------------------------------- */

/* The handler's write and the done record commit together, with the
 * follow-ups; a redelivery is then a duplicate. */
static void commit_applies_with_done(const fixture *f)
{
    int64_t ticket;
    cw_store *s = setup(f, "m1", &ticket);
    cw_store_tx *tx = tx_as(f, "w1");
    assert_int_equal(cw_store_tx_begin(tx, ticket, T0 + 1), 0);
    cw_store_tx_guard(tx, true);
    handler_write(f, tx, "m1");
    assert_int_equal(cw_store_tx_state(tx), CW_TX_OPEN);
    /* Not visible outside before the commit. */
    assert_int_equal(effects(f, "m1"), 0);
    cw_store_tx_guard(tx, false);
    cw_followup fu[2] = {followup("f-1", "events", "{\"refunded\":1}"),
                         followup("f-2", "events", "{\"refunded\":2}")};
    assert_int_equal(cw_store_tx_commit(tx, fu, 2), 0);
    assert_int_equal(effects(f, "m1"), 1);
    assert_int_equal(state_of(s, "m1"), CW_STATE_DONE);
    cw_task_record r;
    assert_int_equal(cw_store_get(s, "m1", &r), 0);
    assert_int_equal(r.attempts, 1);
    assert_string_equal(r.owner, "w1");
    assert_int_equal(r.lease_until_ms, 0);

    cw_claim_req req = {.message_id = "m1", .type = "payment.refund"};
    cw_claim c;
    assert_int_equal(cw_store_claim_batch(s, &req, 1, T0 + 2, &c), 0);
    assert_int_equal(c.result, CW_CLAIM_DONE);

    cw_followup out[4];
    size_t n = 0;
    assert_int_equal(cw_store_followups_due(s, T0 + 10, T0 + 10, 1000, out, 4, &n), 0);
    assert_int_equal(n, 2);
    assert_string_equal(out[0].message_id, "f-1");
    assert_string_equal(out[0].type, "payment.refunded");
    assert_string_equal(out[0].exchange, "");
    assert_string_equal(out[0].routing_key, "events");
    assert_string_equal(out[0].saga_id, "saga-1");
    assert_int_equal(out[0].len, strlen("{\"refunded\":1}"));
    assert_memory_equal(out[0].body, "{\"refunded\":1}", out[0].len);
    assert_string_equal(out[1].message_id, "f-2");
    const char *ids[2] = {out[0].message_id, out[1].message_id};
    assert_int_equal(cw_store_followups_done(s, ids, 2), 0);
    for (size_t i = 0; i < n; i++)
        cw_followup_clear(&out[i]);
    assert_int_equal(cw_store_followups_due(s, T0 + 10, T0 + 10, 1000, out, 4, &n), 0);
    assert_int_equal(n, 0);
    cw_store_tx_free(tx);
    cw_store_free(s);
}
BOTH(commit_applies_with_done)

/* A rollback (CW_RETRY, CW_FAIL) takes the write back; the claim is as it
 * was, and settles as any other. The same connection serves the next task. */
static void rollback_undoes_write(const fixture *f)
{
    int64_t ticket;
    cw_store *s = setup(f, "m1", &ticket);
    cw_store_tx *tx = tx_as(f, "w1");
    assert_int_equal(cw_store_tx_begin(tx, ticket, T0 + 1), 0);
    handler_write(f, tx, "m1");
    cw_store_tx_rollback(tx);
    assert_int_equal(effects(f, "m1"), 0);
    assert_int_equal(state_of(s, "m1"), CW_STATE_IN_PROGRESS);
    cw_settle_req req = {.message_id = "m1",
                         .ticket = ticket,
                         .state = CW_STATE_RETRYING,
                         .outcome = "retry",
                         .error_class = "transient",
                         .reason = "gateway timeout"};
    assert_int_equal(cw_store_settle_batch(s, &req, 1, T0 + 2), 0);
    assert_int_equal(state_of(s, "m1"), CW_STATE_RETRYING);

    /* Its next attempt applies it. */
    cw_claim_req creq = {.message_id = "m1", .type = "payment.refund"};
    cw_claim c;
    assert_int_equal(cw_store_claim_batch(s, &creq, 1, T0 + 3, &c), 0);
    assert_int_equal(c.result, CW_CLAIM_NEW);
    assert_int_equal(cw_store_tx_begin(tx, c.ticket, T0 + 4), 0);
    handler_write(f, tx, "m1");
    assert_int_equal(cw_store_tx_commit(tx, NULL, 0), 0);
    assert_int_equal(effects(f, "m1"), 1);
    cw_task_record r;
    assert_int_equal(cw_store_get(s, "m1", &r), 0);
    assert_int_equal(r.state, CW_STATE_DONE);
    assert_int_equal(r.attempts, 2);
    cw_store_tx_free(tx);
    cw_store_free(s);
}
BOTH(rollback_undoes_write)

/* A claim another worker took over (its lease ran out) cannot be begun. */
static void lost_claim_refused(const fixture *f)
{
    int64_t ticket;
    cw_store *s = setup(f, "m1", &ticket);
    cw_store *s2 = open_as(f, "w2");
    cw_claim_req req = {.message_id = "m1", .type = "payment.refund"};
    cw_claim c;
    assert_int_equal(cw_store_claim_batch(s2, &req, 1, T0 + LEASE_MS + 1, &c), 0);
    assert_int_equal(c.result, CW_CLAIM_NEW);
    cw_store_tx *tx = tx_as(f, "w1");
    assert_int_equal(cw_store_tx_begin(tx, ticket, T0 + LEASE_MS + 2), CW_STATUS_EXISTS);
    assert_non_null(strstr(cw_error_last(), "no longer this worker's"));
    assert_int_equal(cw_store_tx_state(tx), CW_TX_NONE);
    cw_store_tx_free(tx);
    cw_store_free(s2);
    cw_store_free(s);
}
BOTH(lost_claim_refused)

/* A handler that sends COMMIT, ROLLBACK or BEGIN itself: nothing of the
 * transaction commits, and the state says it was misused. */
static void misuse(const fixture *f, const char *stmt)
{
    int64_t ticket;
    cw_store *s = setup(f, "m1", &ticket);
    cw_store_tx *tx = tx_as(f, "w1");
    assert_int_equal(cw_store_tx_begin(tx, ticket, T0 + 1), 0);
    cw_store_tx_guard(tx, true);
    handler_write(f, tx, "m1");
    handler_sql(f, tx, stmt); /* refused (SQLite) or undone (PostgreSQL) */
    char sql[256];
    snprintf(sql, sizeof sql, "INSERT INTO %s (message_id) VALUES ('m1-after')", f->table);
    handler_sql(f, tx, sql); /* in the transaction, or refused: never committed on its own */
    assert_int_equal(cw_store_tx_state(tx), CW_TX_MISUSED);
    cw_store_tx_guard(tx, false);
    assert_int_equal(cw_store_tx_commit(tx, NULL, 0), CW_STATUS_STORE);
    assert_int_equal(effects(f, "m1"), 0);
    assert_int_equal(effects(f, "m1-after"), 0);
    assert_int_equal(state_of(s, "m1"), CW_STATE_IN_PROGRESS);
    /* The connection serves the next task. */
    assert_int_equal(cw_store_tx_begin(tx, ticket, T0 + 2), 0);
    assert_int_equal(cw_store_tx_state(tx), CW_TX_OPEN);
    assert_int_equal(cw_store_tx_commit(tx, NULL, 0), 0);
    assert_int_equal(state_of(s, "m1"), CW_STATE_DONE);
    cw_store_tx_free(tx);
    cw_store_free(s);
}

static void misuse_commit(const fixture *f)
{
    misuse(f, "COMMIT");
}
BOTH(misuse_commit)

static void misuse_rollback(const fixture *f)
{
    misuse(f, "ROLLBACK");
}
BOTH(misuse_rollback)

static void misuse_begin(const fixture *f)
{
    misuse(f, "BEGIN");
}
BOTH(misuse_begin)

/* Savepoints nest inside the transaction: a handler may use them. */
static void savepoints_allowed(const fixture *f)
{
    int64_t ticket;
    cw_store *s = setup(f, "m1", &ticket);
    cw_store_tx *tx = tx_as(f, "w1");
    assert_int_equal(cw_store_tx_begin(tx, ticket, T0 + 1), 0);
    cw_store_tx_guard(tx, true);
    assert_true(handler_sql(f, tx, "SAVEPOINT a"));
    handler_write(f, tx, "m1-undone");
    assert_true(handler_sql(f, tx, "ROLLBACK TO SAVEPOINT a"));
    assert_true(handler_sql(f, tx, "RELEASE SAVEPOINT a"));
    handler_write(f, tx, "m1");
    assert_int_equal(cw_store_tx_state(tx), CW_TX_OPEN);
    cw_store_tx_guard(tx, false);
    assert_int_equal(cw_store_tx_commit(tx, NULL, 0), 0);
    assert_int_equal(effects(f, "m1"), 1);
    assert_int_equal(effects(f, "m1-undone"), 0);
    cw_store_tx_free(tx);
    cw_store_free(s);
}
BOTH(savepoints_allowed)

/* PostgreSQL: a failed statement aborts the transaction: only a rollback. */
static void failed_statement(const fixture *f)
{
    int64_t ticket;
    cw_store *s = setup(f, "m1", &ticket);
    cw_store_tx *tx = tx_as(f, "w1");
    assert_int_equal(cw_store_tx_begin(tx, ticket, T0 + 1), 0);
    handler_write(f, tx, "m1");
    assert_false(handler_sql(f, tx, "INSERT INTO no_such_table VALUES (1)"));
    assert_int_equal(cw_store_tx_state(tx), CW_TX_FAILED);
    assert_non_null(strstr(cw_store_tx_error(tx), "no_such_table"));
    assert_int_equal(cw_store_tx_commit(tx, NULL, 0), CW_STATUS_STORE);
    assert_int_equal(effects(f, "m1"), 0);
    assert_int_equal(state_of(s, "m1"), CW_STATE_IN_PROGRESS);
    cw_store_tx_free(tx);
    cw_store_free(s);
}
PG_CASE(failed_statement)

/* A process killed with its transaction open leaves nothing of it. */
static void kill_rolls_back(const fixture *f)
{
    int64_t ticket;
    cw_store *s = setup(f, "m1", &ticket);
    int pipefd[2];
    assert_int_equal(pipe(pipefd), 0);
    pid_t pid = fork();
    assert_true(pid >= 0);
    if (pid == 0) {
        cw_store_opts o = opts_of(f, "w1");
        cw_store_tx *tx = NULL;
        if (cw_store_tx_new(&tx, &o) || cw_store_tx_begin(tx, ticket, T0 + 1))
            _exit(3);
        char sql[256];
        snprintf(sql, sizeof sql, "INSERT INTO %s (message_id) VALUES ('m1')", f->table);
        if (!handler_sql(f, tx, sql))
            _exit(4);
        if (write(pipefd[1], "x", 1) != 1)
            _exit(5);
        pause();
        _exit(0);
    }
    close(pipefd[1]);
    char x;
    assert_int_equal(read(pipefd[0], &x, 1), 1);
    close(pipefd[0]);
    kill(pid, SIGKILL);
    int status;
    assert_int_equal(waitpid(pid, &status, 0), pid);
    assert_true(WIFSIGNALED(status));
    /* The server notices the lost session at once; give it a moment. */
    for (int i = 0; i < 50 && state_of(s, "m1") != CW_STATE_IN_PROGRESS; i++)
        usleep(20000);
    assert_int_equal(effects(f, "m1"), 0);
    assert_int_equal(state_of(s, "m1"), CW_STATE_IN_PROGRESS);
    /* Its redelivery claims it again and applies it. */
    cw_claim_req req = {.message_id = "m1", .type = "payment.refund"};
    cw_claim c;
    assert_int_equal(cw_store_claim_batch(s, &req, 1, T0 + 5, &c), 0);
    assert_int_equal(c.result, CW_CLAIM_NEW);
    cw_store_tx *tx = tx_as(f, "w1");
    assert_int_equal(cw_store_tx_begin(tx, c.ticket, T0 + 6), 0);
    handler_write(f, tx, "m1");
    assert_int_equal(cw_store_tx_commit(tx, NULL, 0), 0);
    assert_int_equal(effects(f, "m1"), 1);
    cw_store_tx_free(tx);
    cw_store_free(s);
}
BOTH(kill_rolls_back)

static int64_t mono_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

/* PostgreSQL: a claim of a record that a handler transaction holds does
 * not wait for it: it is busy, which it is; after the commit, a duplicate. */
static void claim_skips_locked(const fixture *f)
{
    int64_t ticket;
    cw_store *s = setup(f, "m1", &ticket);
    cw_store *s2 = open_as(f, "w2");
    cw_store_tx *tx = tx_as(f, "w1");
    assert_int_equal(cw_store_tx_begin(tx, ticket, T0 + 1), 0);
    handler_write(f, tx, "m1");
    cw_claim_req req[2] = {{.message_id = "m1", .type = "payment.refund"},
                           {.message_id = "m2", .type = "payment.refund"}};
    cw_claim c[2];
    int64_t t0 = mono_ms();
    assert_int_equal(cw_store_claim_batch(s2, req, 2, T0 + 2, c), 0);
    assert_true(mono_ms() - t0 < 5000);
    assert_int_equal(c[0].result, CW_CLAIM_BUSY);
    assert_int_equal(c[1].result, CW_CLAIM_NEW);
    /* The owner's own claim of a copy is busy too (never run beside itself). */
    assert_int_equal(cw_store_claim_batch(s, req, 1, T0 + 3, c), 0);
    assert_int_equal(c[0].result, CW_CLAIM_BUSY);
    assert_int_equal(cw_store_tx_commit(tx, NULL, 0), 0);
    assert_int_equal(cw_store_claim_batch(s2, req, 1, T0 + 4, c), 0);
    assert_int_equal(c[0].result, CW_CLAIM_DONE);
    cw_store_tx_free(tx);
    cw_store_free(s2);
    cw_store_free(s);
}
PG_CASE(claim_skips_locked)

/* ---- follow-ups of the worker's own settle --------------------------------- */

static void settle_stores_followups(const fixture *f)
{
    int64_t ticket;
    cw_store *s = setup(f, "m1", &ticket);
    cw_followup fu[1] = {followup("f-1", "events", "{\"a\":\"\\\"quoted\\\" \\\\ \\u00e9\"}")};
    cw_settle_req req = {.message_id = "m1",
                         .ticket = ticket,
                         .state = CW_STATE_DONE,
                         .outcome = "ok",
                         .followups = fu,
                         .n_followups = 1};
    assert_int_equal(cw_store_settle_batch(s, &req, 1, T0 + 1), 0);
    /* A second settle of the same outcome (a commit that went through
     * unanswered, tried again) stores nothing twice. */
    assert_int_equal(cw_store_settle_batch(s, &req, 1, T0 + 1), 0);
    cw_followup out[4];
    size_t n = 0;
    /* Younger than the cut: not due. */
    assert_int_equal(cw_store_followups_due(s, T0 + 1, T0 + 5, 1000, out, 4, &n), 0);
    assert_int_equal(n, 0);
    assert_int_equal(cw_store_followups_due(s, T0 + 2, T0 + 5, 1000, out, 4, &n), 0);
    assert_int_equal(n, 1);
    assert_int_equal(out[0].len, fu[0].len);
    assert_memory_equal(out[0].body, fu[0].body, fu[0].len);
    cw_followup_clear(&out[0]);

    /* Taken for the lease: another worker does not see it meanwhile... */
    cw_store *s2 = open_as(f, "w2");
    assert_int_equal(cw_store_followups_due(s2, T0 + 2, T0 + 500, 1000, out, 4, &n), 0);
    assert_int_equal(n, 0);
    /* ...and takes it once the lease ran out. */
    assert_int_equal(cw_store_followups_due(s2, T0 + 2, T0 + 1006, 1000, out, 4, &n), 0);
    assert_int_equal(n, 1);
    const char *id = out[0].message_id;
    assert_int_equal(cw_store_followups_done(s2, &id, 1), 0);
    cw_followup_clear(&out[0]);
    assert_int_equal(cw_store_followups_due(s, T0 + 2, T0 + 5000, 1000, out, 4, &n), 0);
    assert_int_equal(n, 0);
    cw_store_free(s2);
    cw_store_free(s);
}
BOTH(settle_stores_followups)

/* The tables of schema version 3 (saga plans), dropped to make an older
 * store of a new one. */
#define V3_TABLES "cw_sagas, %1$s.cw_saga_steps, %1$s.cw_saga_history"

/* A store of the schema before follow-ups is migrated at open. */
static void migrates_from_v1(const fixture *f)
{
    cw_store_free(open_as(f, "w1"));
    char sql[768];
    if (is_pg(f)) {
        snprintf(sql, sizeof sql,
                 "DROP TABLE %1$s.cw_followups; DROP TRIGGER cw_tx_guard ON %1$s.cw_tasks;"
                 " DROP FUNCTION %1$s.cw_tx_guard(); DROP TABLE %1$s." V3_TABLES ";"
                 " UPDATE %1$s.cw_meta SET value = '1' WHERE key = 'schema_version'",
                 f->schema);
    } else {
        snprintf(sql, sizeof sql,
                 "DROP TABLE followups; DROP TABLE cw_sagas; DROP TABLE cw_saga_steps;"
                 " DROP TABLE cw_saga_history; PRAGMA user_version = 1");
    }
    admin_sql(f, sql);
    int64_t ticket;
    cw_store *s = setup(f, "m1", &ticket);
    if (is_pg(f)) {
        snprintf(sql, sizeof sql, "SELECT value::int FROM %s.cw_meta WHERE key = 'schema_version'",
                 f->schema);
        assert_int_equal(admin_count(f, sql), 3);
    } else {
        assert_int_equal(admin_count(f, "PRAGMA user_version"), 3);
    }
    cw_store_tx *tx = tx_as(f, "w1");
    assert_int_equal(cw_store_tx_begin(tx, ticket, T0 + 1), 0);
    cw_followup fu = followup("f-1", "events", "{}");
    assert_int_equal(cw_store_tx_commit(tx, &fu, 1), 0);
    cw_followup out;
    size_t n;
    assert_int_equal(cw_store_followups_due(s, T0 + 10, T0 + 10, 1000, &out, 1, &n), 0);
    assert_int_equal(n, 1);
    cw_followup_clear(&out);
    cw_store_tx_free(tx);
    cw_store_free(s);
}
BOTH(migrates_from_v1)

/* A store of version 2 gains the follow-ups' headers and the saga tables,
 * its follow-ups kept; a follow-up's headers come back as stored. */
static void migrates_from_v2(const fixture *f)
{
    cw_store_free(open_as(f, "w1"));
    char sql[768];
    if (is_pg(f)) {
        snprintf(sql, sizeof sql,
                 "ALTER TABLE %1$s.cw_followups DROP COLUMN headers; DROP TABLE %1$s." V3_TABLES
                 "; UPDATE %1$s.cw_meta SET value = '2' WHERE key = 'schema_version'",
                 f->schema);
    } else {
        snprintf(sql, sizeof sql,
                 "ALTER TABLE followups DROP COLUMN headers; DROP TABLE cw_sagas;"
                 " DROP TABLE cw_saga_steps; DROP TABLE cw_saga_history; PRAGMA user_version = 2");
    }
    admin_sql(f, sql);
    int64_t ticket;
    cw_store *s = setup(f, "m2", &ticket);
    if (is_pg(f)) {
        snprintf(sql, sizeof sql, "SELECT count(*) FROM %s.cw_sagas", f->schema);
        assert_int_equal(admin_count(f, sql), 0);
    } else {
        assert_int_equal(admin_count(f, "PRAGMA user_version"), 3);
        assert_int_equal(admin_count(f, "SELECT count(*) FROM cw_sagas"), 0);
    }
    cw_store_tx *tx = tx_as(f, "w1");
    assert_int_equal(cw_store_tx_begin(tx, ticket, T0 + 1), 0);
    cw_followup fu[2] = {followup("f-h", "events", "{}"), followup("f-n", "events", "{}")};
    fu[0].headers = "{\"cw-saga-plan\":\"plan-1\",\"cw-saga-step\":\"2.1\"}";
    assert_int_equal(cw_store_tx_commit(tx, fu, 2), 0);
    cw_followup out[2];
    size_t n;
    assert_int_equal(cw_store_followups_due(s, T0 + 10, T0 + 10, 1000, out, 2, &n), 0);
    assert_int_equal(n, 2);
    for (size_t i = 0; i < n; i++) {
        if (strcmp(out[i].message_id, "f-h") == 0)
            assert_string_equal(out[i].headers, fu[0].headers);
        else
            assert_null(out[i].headers);
        cw_followup_clear(&out[i]);
    }
    cw_store_tx_free(tx);
    cw_store_free(s);
}
BOTH(migrates_from_v2)

static void memory_has_none(void **state)
{
    (void)state;
    cw_store_opts o = {.backend = "memory", .owner = "w1", .lease_ms = LEASE_MS};
    cw_store_tx *tx = (cw_store_tx *)&o;
    assert_int_equal(cw_store_tx_new(&tx, &o), CW_STATUS_INVALID_ARG);
    assert_null(tx);
    assert_non_null(strstr(cw_error_last(), "memory"));
    o.backend = "sqlite";
    o.path = ":memory:";
    assert_int_equal(cw_store_tx_new(&tx, &o), CW_STATUS_INVALID_ARG);
    /* A memory store keeps no follow-ups: none is ever due. */
    cw_store *s = NULL;
    o.backend = "memory";
    assert_int_equal(cw_store_open(&s, &o), 0);
    cw_followup out;
    size_t n = 7;
    assert_int_equal(cw_store_followups_due(s, T0, T0, 1000, &out, 1, &n), 0);
    assert_int_equal(n, 0);
    cw_store_free(s);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(commit_applies_with_done_file),
        cmocka_unit_test(commit_applies_with_done_pg),
        cmocka_unit_test(rollback_undoes_write_file),
        cmocka_unit_test(rollback_undoes_write_pg),
        cmocka_unit_test(lost_claim_refused_file),
        cmocka_unit_test(lost_claim_refused_pg),
        cmocka_unit_test(misuse_commit_file),
        cmocka_unit_test(misuse_commit_pg),
        cmocka_unit_test(misuse_rollback_file),
        cmocka_unit_test(misuse_rollback_pg),
        cmocka_unit_test(misuse_begin_file),
        cmocka_unit_test(misuse_begin_pg),
        cmocka_unit_test(savepoints_allowed_file),
        cmocka_unit_test(savepoints_allowed_pg),
        cmocka_unit_test(failed_statement_pg),
        cmocka_unit_test(kill_rolls_back_file),
        cmocka_unit_test(kill_rolls_back_pg),
        cmocka_unit_test(claim_skips_locked_pg),
        cmocka_unit_test(settle_stores_followups_file),
        cmocka_unit_test(settle_stores_followups_pg),
        cmocka_unit_test(migrates_from_v1_file),
        cmocka_unit_test(migrates_from_v1_pg),
        cmocka_unit_test(migrates_from_v2_file),
        cmocka_unit_test(migrates_from_v2_pg),
        cmocka_unit_test(memory_has_none),
    };
    return cmocka_run_group_tests(tests, group_setup, group_teardown);
}
