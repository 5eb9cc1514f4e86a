/* Tests of the idempotency store through the cw_store_* front: the SQLite
 * backend on a file and in memory, and the PostgreSQL backend on the server
 * that CW_TEST_PG_URL names (the test harness starts a throwaway one; without
 * it the PostgreSQL cases are skipped). Every case that is not about one
 * backend's own files runs on each. */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>

#include <ftw.h>
#include <poll.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <sys/stat.h>
#include <unistd.h>

#include <libpq-fe.h>
#include <sqlite3.h>

#include "compworker/status.h"
#include "framework/store.h"
#include "framework/store_sqlite.h" /* CW_SQ_CHECKPOINT_FRAMES */

#define LEASE_MS 30000
#define T0 1700000000000LL /* an arbitrary "now", in ms */

static char tmp_root[] = "/tmp/cw-test-store-XXXXXX";
static unsigned file_counter;

/* ---- helpers ----------------------------------------------------------- */

static int64_t mono_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

typedef struct fixture {
    const char *backend;
    char path[512];
    char schema[64]; /* postgresql: a schema of the test's own */
} fixture;

/* A fresh database path (sqlite) or schema (postgresql) for each test. */
static void next_path(fixture *f, const char *backend)
{
    f->backend = backend;
    snprintf(f->path, sizeof f->path, "%s/t%u/store.db", tmp_root, ++file_counter);
    snprintf(f->schema, sizeof f->schema, "cwtest_%ld_%u", (long)getpid(), file_counter);
}

static const char *pg_url(void)
{
    const char *u = getenv("CW_TEST_PG_URL");
    return u && *u ? u : NULL;
}

/* Runs one SQL text on the test server (a test's own connection). */
static void pg_sql(const char *sql)
{
    PGconn *c = PQconnectdb(pg_url());
    if (PQstatus(c) != CONNECTION_OK)
        fail_msg("connecting to %s: %s", pg_url(), PQerrorMessage(c));
    PGresult *r = PQexec(c, sql);
    if (PQresultStatus(r) != PGRES_COMMAND_OK && PQresultStatus(r) != PGRES_TUPLES_OK)
        fail_msg("%s: %s", sql, PQresultErrorMessage(r));
    PQclear(r);
    PQfinish(c);
}

/* The fixture's store for `owner`, as a worker opens it when `deferred`. */
static cw_store *open_store_as(const fixture *f, const char *owner, cw_owner_alive_fn alive,
                               void *ud, bool deferred)
{
    cw_store_opts o = {
        .backend = f->backend,
        .path = f->path,
        .url = pg_url(),
        .schema = f->schema,
        .owner = owner,
        .lease_ms = LEASE_MS,
        .sync_full = true,
        .owner_alive = alive,
        .owner_alive_data = ud,
        .deferred = deferred,
    };
    cw_store *s = NULL;
    int rc = cw_store_open(&s, &o);
    if (rc)
        fail_msg("cw_store_open(%s, %s): %s: %s", f->backend, f->path, cw_status_name(rc),
                 cw_error_last());
    assert_non_null(s);
    return s;
}

static cw_store *open_as(const fixture *f, const char *owner, cw_owner_alive_fn alive, void *ud)
{
    return open_store_as(f, owner, alive, ud, false);
}

static cw_claim_result claim(cw_store *s, const char *id, int64_t now, cw_claim *out)
{
    cw_claim_req req = {.message_id = id, .saga_id = "saga-1", .type = "order.created"};
    int rc = cw_store_claim(s, &req, now, out);
    if (rc)
        fail_msg("claim %s: %s: %s", id, cw_status_name(rc), cw_error_last());
    return out->result;
}

/* Claims one ID in a batch of its own. */
static cw_claim_result claim1(cw_store *s, const char *id, int64_t now, cw_claim *out)
{
    assert_int_equal(cw_store_begin(s, true), 0);
    cw_claim_result r = claim(s, id, now, out);
    assert_int_equal(cw_store_commit(s), 0);
    return r;
}

static void settle1(cw_store *s, const char *id, cw_task_state state, const char *outcome,
                    const char *error_class, const char *reason, int64_t now)
{
    cw_settle_req req = {.message_id = id,
                         .state = state,
                         .outcome = outcome,
                         .error_class = error_class,
                         .reason = reason};
    assert_int_equal(cw_store_begin(s, true), 0);
    int rc = cw_store_settle(s, &req, now);
    if (rc)
        fail_msg("settle %s: %s: %s", id, cw_status_name(rc), cw_error_last());
    assert_int_equal(cw_store_commit(s), 0);
}

static cw_task_record get(cw_store *s, const char *id)
{
    cw_task_record r;
    memset(&r, 0x5a, sizeof r);
    int rc = cw_store_get(s, id, &r);
    if (rc)
        fail_msg("get %s: %s: %s", id, cw_status_name(rc), cw_error_last());
    return r;
}

static int rm_entry(const char *path, const struct stat *sb, int flag, struct FTW *ftw)
{
    (void)sb;
    (void)flag;
    (void)ftw;
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
        /* Drop the schemas this run made. */
        char sql[512];
        snprintf(sql, sizeof sql,
                 "DO $$DECLARE n text; BEGIN FOR n IN SELECT nspname FROM pg_namespace"
                 " WHERE nspname LIKE 'cwtest\\_%ld\\_%%' LOOP"
                 " EXECUTE format('DROP SCHEMA %%I CASCADE', n); END LOOP; END$$",
                 (long)getpid());
        pg_sql(sql);
    }
    return nftw(tmp_root, rm_entry, 16, FTW_DEPTH | FTW_PHYS);
}

/* The PostgreSQL variant of a case: skipped without a test server. */
#define PG_CASE(name)                                                                              \
    static void name##_pg(void **state)                                                            \
    {                                                                                              \
        (void)state;                                                                               \
        if (!pg_url())                                                                             \
            skip();                                                                                \
        fixture f;                                                                                 \
        next_path(&f, "postgresql");                                                               \
        name(&f);                                                                                  \
    }

/* Every test that runs on both backends is a function of the fixture. */
#define BOTH(name)                                                                                 \
    static void name##_file(void **state)                                                          \
    {                                                                                              \
        (void)state;                                                                               \
        fixture f;                                                                                 \
        next_path(&f, "sqlite");                                                                   \
        name(&f);                                                                                  \
    }                                                                                              \
    static void name##_memory(void **state)                                                        \
    {                                                                                              \
        (void)state;                                                                               \
        fixture f;                                                                                 \
        next_path(&f, "memory");                                                                   \
        name(&f);                                                                                  \
    }                                                                                              \
    PG_CASE(name)

/* Cases of several owners sharing one store: a file, or a server. */
#define SHARED(name)                                                                               \
    static void name##_file(void **state)                                                          \
    {                                                                                              \
        (void)state;                                                                               \
        fixture f;                                                                                 \
        next_path(&f, "sqlite");                                                                   \
        name(&f);                                                                                  \
    }                                                                                              \
    PG_CASE(name)

#define FILE_ONLY(name)                                                                            \
    static void name##_file(void **state)                                                          \
    {                                                                                              \
        (void)state;                                                                               \
        fixture f;                                                                                 \
        next_path(&f, "sqlite");                                                                   \
        name(&f);                                                                                  \
    }

/* ---- claims ------------------------------------------------------------ */

static void first_claim_is_new(const fixture *f)
{
    cw_store *s = open_as(f, "w1", NULL, NULL);
    cw_claim c;
    assert_int_equal(claim1(s, "m1", T0, &c), CW_CLAIM_NEW);
    assert_int_equal(c.deliveries, 1);
    assert_int_equal(c.attempts, 0);
    assert_string_equal(c.owner, "");

    cw_task_record r = get(s, "m1");
    assert_string_equal(r.message_id, "m1");
    assert_int_equal(r.state, CW_STATE_IN_PROGRESS);
    assert_string_equal(r.owner, "w1");
    assert_int_equal(r.lease_until_ms, T0 + LEASE_MS);
    assert_int_equal(r.attempts, 0);
    assert_int_equal(r.deliveries, 1);
    assert_string_equal(r.saga_id, "saga-1");
    assert_string_equal(r.type, "order.created");
    assert_int_equal(r.first_seen_ms, T0);
    assert_int_equal(r.last_seen_ms, T0);
    assert_string_equal(r.error_class, "");
    assert_string_equal(r.last_error, "");
    cw_store_free(s);
}
BOTH(first_claim_is_new)

static void done_then_duplicate(const fixture *f)
{
    cw_store *s = open_as(f, "w1", NULL, NULL);
    cw_claim c;
    assert_int_equal(claim1(s, "m1", T0, &c), CW_CLAIM_NEW);
    settle1(s, "m1", CW_STATE_DONE, "ok", NULL, NULL, T0 + 5);

    assert_int_equal(claim1(s, "m1", T0 + 10, &c), CW_CLAIM_DONE);
    assert_int_equal(c.attempts, 1);
    cw_task_record r = get(s, "m1");
    assert_int_equal(r.state, CW_STATE_DONE);
    assert_string_equal(r.owner, "w1"); /* who settled it; no lease */
    assert_int_equal(r.lease_until_ms, 0);
    assert_int_equal(r.attempts, 1);
    assert_int_equal(r.deliveries, 2);
    assert_int_equal(r.first_seen_ms, T0);
    assert_int_equal(r.last_seen_ms, T0 + 10);
    cw_store_free(s);
}
BOTH(done_then_duplicate)

static void same_owner_reclaims(const fixture *f)
{
    /* A worker that crashed mid-handler gets the message again. */
    cw_store *s = open_as(f, "w1", NULL, NULL);
    cw_claim c;
    assert_int_equal(claim1(s, "m1", T0, &c), CW_CLAIM_NEW);
    assert_false(c.mine); /* a new record */
    assert_int_equal(claim1(s, "m1", T0 + 1, &c), CW_CLAIM_NEW);
    assert_int_equal(c.deliveries, 2);
    assert_true(c.mine); /* it was in progress under this owner's lease */
    assert_int_equal(claim1(s, "m1", T0 + 2, &c), CW_CLAIM_NEW);
    assert_int_equal(c.deliveries, 3);
    assert_int_equal(c.attempts, 0);
    assert_int_equal(get(s, "m1").lease_until_ms, T0 + 2 + LEASE_MS);
    /* Past its lease it is no longer held: not "mine". */
    assert_int_equal(claim1(s, "m1", T0 + 3 + LEASE_MS, &c), CW_CLAIM_NEW);
    assert_false(c.mine);

    /* A settle resets the deliveries since the last settle, not the total. */
    settle1(s, "m1", CW_STATE_RETRYING, "retry", "timeout", "upstream slow", T0 + 4 + LEASE_MS);
    assert_int_equal(claim1(s, "m1", T0 + 5 + LEASE_MS, &c), CW_CLAIM_NEW);
    assert_false(c.mine);
    assert_int_equal(c.deliveries, 1);
    assert_int_equal(c.attempts, 1);
    assert_int_equal(get(s, "m1").deliveries, 5);
    cw_store_free(s);
}
BOTH(same_owner_reclaims)

static void dead_stays_dead(const fixture *f)
{
    cw_store *s = open_as(f, "w1", NULL, NULL);
    cw_claim c;
    assert_int_equal(claim1(s, "m1", T0, &c), CW_CLAIM_NEW);
    settle1(s, "m1", CW_STATE_DEAD, "fail", "validation", "amount is negative", T0 + 1);
    assert_int_equal(claim1(s, "m1", T0 + 2, &c), CW_CLAIM_DEAD);
    assert_int_equal(claim1(s, "m1", T0 + 3, &c), CW_CLAIM_DEAD);

    cw_task_record r = get(s, "m1");
    assert_int_equal(r.state, CW_STATE_DEAD);
    assert_int_equal(r.attempts, 1);
    assert_int_equal(r.deliveries, 3);
    assert_string_equal(r.error_class, "validation");
    assert_string_equal(r.last_error, "amount is negative");
    cw_store_free(s);
}
BOTH(dead_stays_dead)

static void retrying_is_claimable(const fixture *f)
{
    cw_store *s = open_as(f, "w1", NULL, NULL);
    cw_claim c;
    assert_int_equal(claim1(s, "m1", T0, &c), CW_CLAIM_NEW);
    settle1(s, "m1", CW_STATE_RETRYING, "retry", "http_503", "service unavailable", T0 + 1);
    cw_task_record r = get(s, "m1");
    assert_int_equal(r.state, CW_STATE_RETRYING);
    assert_string_equal(r.owner, "w1"); /* who settled it; no lease */

    assert_int_equal(claim1(s, "m1", T0 + 2, &c), CW_CLAIM_NEW);
    assert_int_equal(c.attempts, 1);
    assert_int_equal(c.deliveries, 1);
    r = get(s, "m1");
    assert_int_equal(r.state, CW_STATE_IN_PROGRESS);
    assert_string_equal(r.owner, "w1");
    assert_int_equal(r.deliveries, 2);
    cw_store_free(s);
}
BOTH(retrying_is_claimable)

static void saga_and_type_filled_later(const fixture *f)
{
    cw_store *s = open_as(f, "w1", NULL, NULL);
    cw_claim c;
    cw_claim_req bare = {.message_id = "m1"};
    assert_int_equal(cw_store_claim(s, &bare, T0, &c), 0);
    cw_task_record r = get(s, "m1");
    assert_string_equal(r.saga_id, "");
    assert_string_equal(r.type, "");
    assert_int_equal(claim1(s, "m1", T0 + 1, &c), CW_CLAIM_NEW);
    r = get(s, "m1");
    assert_string_equal(r.saga_id, "saga-1");
    assert_string_equal(r.type, "order.created");
    cw_store_free(s);
}
BOTH(saga_and_type_filled_later)

/* ---- two workers on one file ------------------------------------------- */

typedef struct alive_probe {
    bool answer;
    unsigned calls;
    char last[128];
} alive_probe;

static bool probe_alive(const char *owner, void *ud)
{
    alive_probe *p = ud;
    p->calls++;
    snprintf(p->last, sizeof p->last, "%s", owner);
    return p->answer;
}

static void busy_until_lease_expires(const fixture *f)
{
    alive_probe probe = {.answer = true};
    cw_store *a = open_as(f, "host:100", NULL, NULL);
    cw_store *b = open_as(f, "host:200", probe_alive, &probe);
    cw_claim c;
    assert_int_equal(claim1(a, "m1", T0, &c), CW_CLAIM_NEW);

    assert_int_equal(claim1(b, "m1", T0 + 1, &c), CW_CLAIM_BUSY);
    assert_string_equal(c.owner, "host:100");
    assert_int_equal(c.deliveries, 1);
    assert_int_equal(probe.calls, 1);
    assert_string_equal(probe.last, "host:100");
    /* BUSY writes nothing. */
    cw_task_record r = get(a, "m1");
    assert_int_equal(r.deliveries, 1);
    assert_string_equal(r.owner, "host:100");

    /* Just before and at the expiry. */
    assert_int_equal(claim1(b, "m1", T0 + LEASE_MS - 1, &c), CW_CLAIM_BUSY);
    assert_int_equal(claim1(b, "m1", T0 + LEASE_MS, &c), CW_CLAIM_NEW);
    assert_int_equal(c.deliveries, 2);
    r = get(a, "m1");
    assert_string_equal(r.owner, "host:200");
    assert_int_equal(r.lease_until_ms, T0 + 2 * LEASE_MS);

    /* Now a is the one kept out. */
    assert_int_equal(claim1(a, "m1", T0 + LEASE_MS + 1, &c), CW_CLAIM_BUSY);
    assert_string_equal(c.owner, "host:200");
    cw_store_free(b);
    cw_store_free(a);
}
SHARED(busy_until_lease_expires)

/* Two workers of a host share the file: while one holds the write lock, the
 * other's batch waits for it and then goes through. */
typedef struct lock_holder {
    cw_store *s;
    int hold_ms;
} lock_holder;

static void *hold_write_lock(void *arg)
{
    lock_holder *h = arg;
    cw_claim c;
    if (cw_store_begin(h->s, true) != 0)
        return (void *)1;
    claim(h->s, "held", T0, &c);
    struct timespec ts = {0, (long)h->hold_ms * 1000000L};
    nanosleep(&ts, NULL);
    return (void *)(intptr_t)(cw_store_commit(h->s) != 0);
}

static void waits_for_write_lock(const fixture *f)
{
    cw_store *a = open_as(f, "host:100", NULL, NULL);
    cw_store *b = open_as(f, "host:200", NULL, NULL);
    cw_claim c;
    claim1(a, "warm", T0, &c); /* the schema exists before the threads race */
    lock_holder h = {.s = a, .hold_ms = 300};
    pthread_t t;
    assert_int_equal(pthread_create(&t, NULL, hold_write_lock, &h), 0);
    struct timespec ts = {0, 50000000L}; /* a has the lock by now */
    nanosleep(&ts, NULL);
    int64_t t0 = mono_ms();
    assert_int_equal(claim1(b, "m1", T0, &c), CW_CLAIM_NEW);
    int64_t waited = mono_ms() - t0;
    void *res;
    assert_int_equal(pthread_join(t, &res), 0);
    assert_null(res);
    /* b waited for a's commit (about 250 ms), not failed, not skipped it. */
    assert_true(waited >= 150);
    assert_int_equal(get(b, "held").state, CW_STATE_IN_PROGRESS);
    cw_store_free(b);
    cw_store_free(a);
}
FILE_ONLY(waits_for_write_lock)

/* Deferred durability (a worker's SQLite store): outcomes committed at once
 * (another connection sees them), made durable by the store's thread (the
 * mark reached, the descriptor readable), checkpointed by its other thread
 * (the database file grows while the connection itself never checkpoints),
 * and everything durable after a free. Only a SQLite file offers it. */
static cw_store *open_deferred(const fixture *f, const char *owner, bool deferred)
{
    return open_store_as(f, owner, NULL, NULL, deferred);
}

static uint64_t wait_durable(cw_store *s, uint64_t want)
{
    uint64_t mark = 0;
    int64_t until = mono_ms() + 10000;
    for (;;) {
        assert_int_equal(cw_store_durable(s, &mark), 0);
        if (mark >= want || mono_ms() > until)
            return mark;
        struct pollfd pfd = {.fd = cw_store_durable_fd(s), .events = POLLIN};
        assert_true(poll(&pfd, 1, 1000) >= 0);
    }
}

static off_t file_size(const char *path)
{
    struct stat sb;
    return stat(path, &sb) == 0 ? sb.st_size : -1;
}

/* Creates the directory of the test's database, for a test that opens the
 * file itself before (or instead of) the store, which would create it. */
static void make_dir_of(const fixture *f)
{
    char dir[sizeof f->path];
    snprintf(dir, sizeof dir, "%s", f->path);
    *strrchr(dir, '/') = '\0';
    assert_int_equal(mkdir(dir, 0750), 0);
}

/* Claims `id` and settles it done (two commits, the second deferred);
 * returns the settle's durability mark. */
static uint64_t claim_and_settle(cw_store *s, const char *id)
{
    cw_claim_req r = {.message_id = id, .type = "t"};
    cw_claim c;
    assert_int_equal(cw_store_claim_batch(s, &r, 1, T0, &c), 0);
    cw_settle_req d = {.message_id = id,
                       .state = CW_STATE_DONE,
                       .outcome = "ok",
                       .ticket = c.ticket};
    uint64_t mark = 0;
    assert_int_equal(cw_store_settle_batch_deferred(s, &d, 1, T0, &mark), 0);
    return mark;
}

static void deferred_durability(const fixture *f)
{
    cw_store *s = open_deferred(f, "host:100", true);
    cw_store *other = open_deferred(f, "host:200", false);
    assert_true(cw_store_can_defer(s));
    assert_false(cw_store_can_defer(other));
    assert_int_equal(cw_store_durable_fd(other), -1);
    uint64_t mark = 99;
    assert_int_equal(cw_store_durable(other, &mark), CW_STATUS_INVALID_ARG);
    assert_true(cw_store_durable_fd(s) >= 0);

    cw_claim_req reqs[3] = {{.message_id = "d1", .type = "t"},
                            {.message_id = "d2", .type = "t"},
                            {.message_id = "d3", .type = "t"}};
    cw_claim claims[3];
    assert_int_equal(cw_store_claim_batch(s, reqs, 3, T0, claims), 0);
    cw_settle_req done[3];
    for (int i = 0; i < 3; i++)
        done[i] = (cw_settle_req){.message_id = reqs[i].message_id,
                                  .state = CW_STATE_DONE,
                                  .outcome = "ok",
                                  .ticket = claims[i].ticket};
    uint64_t m1 = 0, m2 = 0;
    assert_int_equal(cw_store_settle_batch_deferred(s, done, 2, T0 + 1, &m1), 0);
    assert_true(m1 > 0);
    /* Visible to every worker at once, durable or not yet. */
    assert_int_equal(get(other, "d1").state, CW_STATE_DONE);
    assert_int_equal(get(other, "d2").state, CW_STATE_DONE);
    assert_int_equal(get(other, "d3").state, CW_STATE_IN_PROGRESS);
    assert_true(wait_durable(s, m1) >= m1);
    assert_int_equal(cw_store_settle_batch_deferred(s, done + 2, 1, T0 + 2, &m2), 0);
    assert_true(m2 > m1);
    assert_true(wait_durable(s, m2) >= m2);
    /* The checks of cw_store_settle_batch() hold here too. */
    cw_settle_req bad = {.message_id = "d1", .state = CW_STATE_IN_PROGRESS, .outcome = "ok"};
    assert_int_equal(cw_store_settle_batch_deferred(s, &bad, 1, T0, &mark), CW_STATUS_INVALID_ARG);
    assert_int_equal(cw_store_settle_batch_deferred(other, done, 1, T0, &mark),
                     CW_STATUS_INVALID_ARG);
    /* Neither settle may run inside a caller's batch (its own transaction
     * would be nested in the caller's): both refuse, and the batch stays
     * open with its work, which its commit then makes visible. */
    cw_claim in_batch;
    assert_int_equal(cw_store_begin(s, true), 0);
    assert_int_equal(claim(s, "d4", T0 + 3, &in_batch), CW_CLAIM_NEW);
    assert_int_equal(cw_store_settle_batch_deferred(s, done, 1, T0, &mark), CW_STATUS_INVALID_ARG);
    assert_int_equal(cw_store_settle_batch(s, done, 1, T0), CW_STATUS_INVALID_ARG);
    assert_int_equal(cw_store_commit(s), 0);
    assert_int_equal(get(other, "d4").state, CW_STATE_IN_PROGRESS);
    assert_int_equal(get(other, "d3").state, CW_STATE_DONE);

    /* Past CW_SQ_CHECKPOINT_FRAMES frames of WAL (each claim and settle
     * writes two at least), the store's checkpoint thread copies them into
     * the database file. */
    off_t before = file_size(f->path);
    char id[32];
    for (int i = 0; i < CW_SQ_CHECKPOINT_FRAMES / 3; i++) {
        snprintf(id, sizeof id, "ck-%d", i);
        mark = claim_and_settle(s, id);
    }
    int64_t until = mono_ms() + 10000;
    while (file_size(f->path) <= before && mono_ms() < until) {
        struct timespec ts = {0, 20000000L};
        nanosleep(&ts, NULL);
    }
    assert_true(file_size(f->path) > before);
    cw_store_free(s); /* makes the last marks durable before it returns */
    cw_store_free(other);
    s = open_deferred(f, "host:100", true);
    snprintf(id, sizeof id, "ck-%d", CW_SQ_CHECKPOINT_FRAMES / 3 - 1);
    assert_int_equal(get(s, id).state, CW_STATE_DONE);
    assert_int_equal(get(s, "d3").state, CW_STATE_DONE);
    cw_store_free(s);
}
FILE_ONLY(deferred_durability)

/* Under a steady stream of commits the checkpoint thread still has the WAL
 * start over: the -wal file stays near CW_SQ_CHECKPOINT_FRAMES frames.
 * Passive checkpoints alone never copy the frames committed during their
 * fsyncs, and SQLite starts the WAL over only once every frame is copied:
 * there the file grew with every commit. (Small pages keep the frames, and
 * the test's writes, small.) */
static void wal_starts_over(const fixture *f)
{
    make_dir_of(f);
    sqlite3 *db = NULL;
    assert_int_equal(sqlite3_open(f->path, &db), SQLITE_OK);
    assert_int_equal(sqlite3_exec(db, "PRAGMA page_size = 512; PRAGMA journal_mode = WAL;", NULL,
                                  NULL, NULL),
                     SQLITE_OK);
    sqlite3_close(db);
    cw_store *s = open_deferred(f, "host:100", true);
    char wal[sizeof f->path + 8], id[32];
    snprintf(wal, sizeof wal, "%s-wal", f->path);
    const off_t frame = 512 + 24; /* a WAL frame: its header and the page */
    off_t most = 0;
    uint64_t mark = 0;
    /* Each claim commits two frames at least (the row, the index entry) and
     * each settle one: three times the threshold at least in all. Passive
     * checkpoints alone had the file at 38,000-58,000 frames by the end. */
    for (int i = 0; i < CW_SQ_CHECKPOINT_FRAMES; i++) {
        snprintf(id, sizeof id, "wal-%d", i);
        mark = claim_and_settle(s, id);
        off_t n = file_size(wal);
        if (n > most)
            most = n;
        struct timespec ts = {0, 20000L}; /* a worker's pace: commits with gaps */
        nanosleep(&ts, NULL);
    }
    assert_true(wait_durable(s, mark) >= mark);
    if (most >= 3 * CW_SQ_CHECKPOINT_FRAMES / 2 * frame)
        fail_msg("the WAL grew to %lld frames (the threshold is %d)", (long long)(most / frame),
                 CW_SQ_CHECKPOINT_FRAMES);
    cw_store_free(s);
    s = open_deferred(f, "host:100", true);
    snprintf(id, sizeof id, "wal-%d", CW_SQ_CHECKPOINT_FRAMES - 1);
    assert_int_equal(get(s, id).state, CW_STATE_DONE);
    cw_store_free(s);
}
FILE_ONLY(wal_starts_over)

/* The cw-wal VFS after a rollback: a transaction that spilled pages into
 * the WAL (a tiny cache) and was rolled back must leave nothing to be
 * written later over what the next writer committed at the same offsets;
 * both connections go on, and the database is whole with the next writer's
 * rows. (SQLite happens to read the file before this rollback ends, which
 * writes the buffer while the writer still holds the lock; the shim drops
 * whatever is left at the lock's release.) */
static sqlite3 *vfs_conn(const char *path)
{
    sqlite3 *db = NULL;
    assert_int_equal(sqlite3_open_v2(path, &db, SQLITE_OPEN_READWRITE | SQLITE_OPEN_CREATE,
                                     CW_SQ_VFS),
                     SQLITE_OK);
    assert_int_equal(sqlite3_exec(db,
                                  "PRAGMA journal_mode = WAL; PRAGMA synchronous = NORMAL;"
                                  "PRAGMA cache_size = 10; PRAGMA busy_timeout = 5000",
                                  NULL, NULL, NULL),
                     SQLITE_OK);
    return db;
}

static int64_t count_rows(sqlite3 *db, const char *sql)
{
    sqlite3_stmt *st;
    assert_int_equal(sqlite3_prepare_v2(db, sql, -1, &st, NULL), SQLITE_OK);
    assert_int_equal(sqlite3_step(st), SQLITE_ROW);
    int64_t n = sqlite3_column_int64(st, 0);
    sqlite3_finalize(st);
    return n;
}

static void wal_vfs_rollback(const fixture *f)
{
    assert_true(cw__sq_vfs_ready());
    make_dir_of(f);
    sqlite3 *x = vfs_conn(f->path), *y = vfs_conn(f->path);
    assert_int_equal(sqlite3_exec(x, "CREATE TABLE t (k INTEGER PRIMARY KEY, v BLOB)", NULL, NULL,
                                  NULL),
                     SQLITE_OK);
    /* x spills some hundred pages into the WAL, then rolls back. */
    assert_int_equal(sqlite3_exec(x,
                                  "BEGIN; WITH RECURSIVE c(i) AS (SELECT 1 UNION ALL SELECT i + 1 "
                                  "FROM c WHERE i < 400) INSERT INTO t SELECT i, randomblob(3000) "
                                  "FROM c; ROLLBACK",
                                  NULL, NULL, NULL),
                     SQLITE_OK);
    /* y commits at the same offsets; then x reads and writes again. */
    assert_int_equal(sqlite3_exec(y,
                                  "WITH RECURSIVE c(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM c "
                                  "WHERE i < 50) INSERT INTO t SELECT i, zeroblob(3000) FROM c",
                                  NULL, NULL, NULL),
                     SQLITE_OK);
    assert_int_equal(count_rows(x, "SELECT count(*) FROM t"), 50);
    assert_int_equal(sqlite3_exec(x, "INSERT INTO t VALUES (1000, zeroblob(10))", NULL, NULL, NULL),
                     SQLITE_OK);
    sqlite3_close(x);
    sqlite3_close(y);
    sqlite3 *z = NULL;
    assert_int_equal(sqlite3_open_v2(f->path, &z, SQLITE_OPEN_READWRITE, NULL), SQLITE_OK);
    assert_int_equal(count_rows(z, "SELECT count(*) FROM t"), 51);
    assert_int_equal(count_rows(z, "SELECT count(*) FROM t WHERE v = zeroblob(length(v))"), 51);
    sqlite3_stmt *st;
    assert_int_equal(sqlite3_prepare_v2(z, "PRAGMA integrity_check", -1, &st, NULL), SQLITE_OK);
    assert_int_equal(sqlite3_step(st), SQLITE_ROW);
    assert_string_equal((const char *)sqlite3_column_text(st, 0), "ok");
    sqlite3_finalize(st);
    sqlite3_close(z);
}
FILE_ONLY(wal_vfs_rollback)

static void no_deferral_elsewhere(const fixture *f)
{
    cw_store *s = open_deferred(f, "host:100", true);
    assert_false(cw_store_can_defer(s));
    assert_int_equal(cw_store_durable_fd(s), -1);
    cw_store_free(s);
}
static void no_deferral_memory(void **state)
{
    (void)state;
    fixture f;
    next_path(&f, "memory");
    no_deferral_elsewhere(&f);
}
PG_CASE(no_deferral_elsewhere)

static void dead_owner_taken_over(const fixture *f)
{
    alive_probe probe = {.answer = false};
    cw_store *a = open_as(f, "host:100", NULL, NULL);
    cw_store *b = open_as(f, "host:200", probe_alive, &probe);
    cw_claim c;
    assert_int_equal(claim1(a, "m1", T0, &c), CW_CLAIM_NEW);
    assert_int_equal(claim1(b, "m1", T0 + 1, &c), CW_CLAIM_NEW);
    assert_int_equal(c.deliveries, 2);
    assert_int_equal(probe.calls, 1);
    assert_string_equal(probe.last, "host:100");
    assert_string_equal(get(b, "m1").owner, "host:200");

    /* The prober is not asked about IDs that are not held by others. */
    assert_int_equal(claim1(b, "m1", T0 + 2, &c), CW_CLAIM_NEW);
    assert_int_equal(claim1(b, "m2", T0 + 2, &c), CW_CLAIM_NEW);
    assert_int_equal(probe.calls, 1);
    cw_store_free(b);
    cw_store_free(a);
}
SHARED(dead_owner_taken_over)

static void done_by_other_is_duplicate(const fixture *f)
{
    cw_store *a = open_as(f, "host:100", NULL, NULL);
    cw_store *b = open_as(f, "host:200", NULL, NULL);
    cw_claim c;
    assert_int_equal(claim1(a, "m1", T0, &c), CW_CLAIM_NEW);
    settle1(a, "m1", CW_STATE_DONE, "ok", NULL, NULL, T0 + 1);
    assert_int_equal(claim1(b, "m1", T0 + 2, &c), CW_CLAIM_DONE);
    cw_store_free(b);
    cw_store_free(a);
}
SHARED(done_by_other_is_duplicate)

/* ---- history and reading ----------------------------------------------- */

typedef struct history_log {
    unsigned count;
    unsigned stop_after; /* 0: never */
    cw_attempt_record rows[8];
} history_log;

static int collect(const cw_attempt_record *a, void *ud)
{
    history_log *h = ud;
    if (h->count < 8)
        h->rows[h->count] = *a;
    h->count++;
    return h->stop_after && h->count == h->stop_after ? 42 : 0;
}

static void history_in_order(const fixture *f)
{
    cw_store *s = open_as(f, "w1", NULL, NULL);
    cw_claim c;
    claim1(s, "m1", T0, &c);
    settle1(s, "m1", CW_STATE_RETRYING, "retry", "http_503", "try later", T0 + 10);
    claim1(s, "m1", T0 + 20, &c);
    settle1(s, "m1", CW_STATE_RETRYING, "retry", "timeout", "no answer in 5 s", T0 + 30);
    claim1(s, "m1", T0 + 40, &c);
    assert_int_equal(c.attempts, 2);
    settle1(s, "m1", CW_STATE_DONE, "ok", NULL, NULL, T0 + 50);

    history_log h = {0};
    assert_int_equal(cw_store_history(s, "m1", collect, &h), 0);
    assert_int_equal(h.count, 3);
    assert_int_equal(h.rows[0].n, 1);
    assert_int_equal(h.rows[0].at_ms, T0 + 10);
    assert_string_equal(h.rows[0].worker, "w1");
    assert_string_equal(h.rows[0].outcome, "retry");
    assert_string_equal(h.rows[0].error_class, "http_503");
    assert_string_equal(h.rows[0].reason, "try later");
    assert_int_equal(h.rows[1].n, 2);
    assert_string_equal(h.rows[1].error_class, "timeout");
    assert_string_equal(h.rows[1].reason, "no answer in 5 s");
    assert_int_equal(h.rows[2].n, 3);
    assert_int_equal(h.rows[2].at_ms, T0 + 50);
    assert_string_equal(h.rows[2].outcome, "ok");
    assert_string_equal(h.rows[2].error_class, "");
    assert_string_equal(h.rows[2].reason, "");

    cw_task_record r = get(s, "m1");
    assert_int_equal(r.attempts, 3);
    assert_string_equal(r.error_class, "");
    assert_string_equal(r.last_error, "");

    /* A callback's non-zero return stops the walk and is passed up, and the
     * statement is reset: a second walk starts over. */
    history_log stop = {.stop_after = 2};
    assert_int_equal(cw_store_history(s, "m1", collect, &stop), 42);
    assert_int_equal(stop.count, 2);
    history_log again = {0};
    assert_int_equal(cw_store_history(s, "m1", collect, &again), 0);
    assert_int_equal(again.count, 3);

    history_log none = {0};
    assert_int_equal(cw_store_history(s, "unknown", collect, &none), 0);
    assert_int_equal(none.count, 0);
    cw_store_free(s);
}
BOTH(history_in_order)

static void unknown_ids(const fixture *f)
{
    cw_store *s = open_as(f, "w1", NULL, NULL);
    cw_task_record r;
    assert_int_equal(cw_store_get(s, "nope", &r), CW_STATUS_NOT_FOUND);
    assert_non_null(strstr(cw_error_last(), "nope"));

    cw_settle_req req = {.message_id = "nope", .state = CW_STATE_DONE, .outcome = "ok"};
    assert_int_equal(cw_store_begin(s, true), 0);
    assert_int_equal(cw_store_settle(s, &req, T0), CW_STATUS_NOT_FOUND);
    assert_int_equal(cw_store_commit(s), 0);
    /* Outside a batch as well. */
    assert_int_equal(cw_store_settle(s, &req, T0), CW_STATUS_NOT_FOUND);
    history_log h = {0};
    assert_int_equal(cw_store_history(s, "nope", collect, &h), 0);
    assert_int_equal(h.count, 0);
    cw_store_free(s);
}
BOTH(unknown_ids)

static void long_text_truncated(const fixture *f)
{
    cw_store *s = open_as(f, "w1", NULL, NULL);
    cw_claim c;
    claim1(s, "m1", T0, &c);
    /* 1022 ASCII bytes then "é" (2 bytes) would cut the character in half. */
    char reason[2048];
    memset(reason, 'x', sizeof reason);
    memcpy(reason + 1022, "\xc3\xa9", 2);
    reason[sizeof reason - 1] = '\0';
    char error_class[64];
    memset(error_class, 'e', sizeof error_class - 1);
    error_class[sizeof error_class - 1] = '\0';
    settle1(s, "m1", CW_STATE_DEAD, "fail", error_class, reason, T0 + 1);

    cw_task_record r = get(s, "m1");
    assert_int_equal(strlen(r.last_error), 1022);
    assert_int_equal(strlen(r.error_class), sizeof r.error_class - 1);
    history_log h = {0};
    assert_int_equal(cw_store_history(s, "m1", collect, &h), 0);
    assert_int_equal(h.count, 1);
    assert_int_equal(strlen(h.rows[0].reason), 1022);
    cw_store_free(s);
}
BOTH(long_text_truncated)

/* ---- batches ----------------------------------------------------------- */

static void rollback_undoes_batch(const fixture *f)
{
    cw_store *s = open_as(f, "w1", NULL, NULL);
    cw_claim c;
    claim1(s, "kept", T0, &c);

    assert_int_equal(cw_store_begin(s, true), 0);
    assert_int_equal(claim(s, "m1", T0 + 1, &c), CW_CLAIM_NEW);
    assert_int_equal(claim(s, "m2", T0 + 1, &c), CW_CLAIM_NEW);
    assert_int_equal(claim(s, "kept", T0 + 1, &c), CW_CLAIM_NEW);
    assert_int_equal(c.deliveries, 2);
    assert_int_equal(cw_store_rollback(s), 0);

    cw_task_record r;
    assert_int_equal(cw_store_get(s, "m1", &r), CW_STATUS_NOT_FOUND);
    assert_int_equal(cw_store_get(s, "m2", &r), CW_STATUS_NOT_FOUND);
    assert_int_equal(get(s, "kept").deliveries, 1);
    assert_int_equal(claim1(s, "m1", T0 + 2, &c), CW_CLAIM_NEW);
    assert_int_equal(c.deliveries, 1);

    /* A rollback with no batch open is harmless. */
    assert_int_equal(cw_store_rollback(s), 0);
    cw_store_free(s);
}
BOTH(rollback_undoes_batch)

static void batch_of_many(const fixture *f)
{
    cw_store *s = open_as(f, "w1", NULL, NULL);
    char id[32];
    cw_claim c;
    assert_int_equal(cw_store_begin(s, true), 0);
    for (int i = 0; i < 300; i++) {
        snprintf(id, sizeof id, "m%d", i);
        assert_int_equal(claim(s, id, T0, &c), CW_CLAIM_NEW);
        cw_settle_req req = {.message_id = id, .state = CW_STATE_DONE, .outcome = "ok"};
        assert_int_equal(cw_store_settle(s, &req, T0 + 1), 0);
    }
    assert_int_equal(cw_store_commit(s), 0);
    assert_int_equal(get(s, "m0").state, CW_STATE_DONE);
    assert_int_equal(get(s, "m299").state, CW_STATE_DONE);
    /* Claims outside a batch run in a transaction of their own. */
    assert_int_equal(claim(s, "m299", T0 + 2, &c), CW_CLAIM_DONE);
    assert_int_equal(claim(s, "m300", T0 + 2, &c), CW_CLAIM_NEW);
    cw_store_free(s);
}
BOTH(batch_of_many)

static void commit_without_begin_fails(const fixture *f)
{
    cw_store *s = open_as(f, "w1", NULL, NULL);
    assert_int_equal(cw_store_commit(s), CW_STATUS_STORE);
    assert_non_null(strstr(cw_error_last(), "commit"));
    assert_int_equal(cw_store_begin(s, true), 0);
    assert_int_equal(cw_store_begin(s, true), CW_STATUS_STORE); /* no nesting */
    assert_int_equal(cw_store_rollback(s), 0);
    cw_store_free(s);
}
BOTH(commit_without_begin_fails)

/* ---- sweep ------------------------------------------------------------- */

static void sweep_removes_old_done(const fixture *f)
{
    cw_store *s = open_as(f, "w1", NULL, NULL);
    cw_claim c;
    const int64_t old = T0, recent = T0 + 1000000, cut = T0 + 500000;
    const char *old_done[] = {"old1", "old2", "old3"};
    for (int i = 0; i < 3; i++) {
        claim1(s, old_done[i], old + i, &c);
        settle1(s, old_done[i], CW_STATE_DONE, "ok", NULL, NULL, old + i);
    }
    claim1(s, "new-done", recent, &c);
    settle1(s, "new-done", CW_STATE_DONE, "ok", NULL, NULL, recent);
    claim1(s, "old-dead", old, &c);
    settle1(s, "old-dead", CW_STATE_DEAD, "fail", "x", "y", old);
    claim1(s, "old-retrying", old, &c);
    settle1(s, "old-retrying", CW_STATE_RETRYING, "retry", "x", "y", old);
    claim1(s, "old-running", old, &c);

    unsigned removed = 99;
    assert_int_equal(cw_store_sweep(s, cut, 2, &removed), 0);
    assert_int_equal(removed, 2);
    cw_task_record r;
    /* The oldest go first. */
    assert_int_equal(cw_store_get(s, "old1", &r), CW_STATUS_NOT_FOUND);
    assert_int_equal(cw_store_get(s, "old2", &r), CW_STATUS_NOT_FOUND);
    assert_int_equal(get(s, "old3").state, CW_STATE_DONE);

    assert_int_equal(cw_store_sweep(s, cut, 100, &removed), 0);
    assert_int_equal(removed, 1);
    assert_int_equal(cw_store_get(s, "old3", &r), CW_STATUS_NOT_FOUND);
    history_log h = {0};
    assert_int_equal(cw_store_history(s, "old3", collect, &h), 0);
    assert_int_equal(h.count, 0);

    assert_int_equal(get(s, "new-done").state, CW_STATE_DONE);
    assert_int_equal(get(s, "old-dead").state, CW_STATE_DEAD);
    assert_int_equal(get(s, "old-retrying").state, CW_STATE_RETRYING);
    assert_int_equal(get(s, "old-running").state, CW_STATE_IN_PROGRESS);
    h.count = 0;
    assert_int_equal(cw_store_history(s, "old-dead", collect, &h), 0);
    assert_int_equal(h.count, 1);

    assert_int_equal(cw_store_sweep(s, cut, 100, &removed), 0);
    assert_int_equal(removed, 0);
    assert_int_equal(cw_store_sweep(s, recent + 1, 0, &removed), 0);
    assert_int_equal(removed, 0);

    /* A swept ID is unknown again: a late redelivery runs anew. */
    assert_int_equal(claim1(s, "old1", recent, &c), CW_CLAIM_NEW);
    assert_int_equal(c.attempts, 0);

    /* Not inside a batch. */
    assert_int_equal(cw_store_begin(s, true), 0);
    assert_int_equal(cw_store_sweep(s, recent + 1, 100, &removed), CW_STATUS_INVALID_ARG);
    assert_int_equal(cw_store_rollback(s), 0);
    assert_int_equal(cw_store_sweep(s, recent + 1, 100, NULL), 0);
    assert_int_equal(cw_store_get(s, "new-done", &r), CW_STATUS_NOT_FOUND);
    cw_store_free(s);
}
BOTH(sweep_removes_old_done)

/* The sweep walks the table in arrival order a bounded number of rows at a
 * time: old records that stay (dead, retrying) are walked over, a pass ends at
 * the first young row, and a record that settles late is found by a later pass. */
static void sweep_walks_in_chunks(const fixture *f)
{
    cw_store *s = open_as(f, "w1", NULL, NULL);
    cw_claim c;
    const int64_t old = T0, cut = T0 + 500000, recent = T0 + 1000000;
    char id[32];
    unsigned done = 0;
    for (int i = 0; i < 60; i++) {
        snprintf(id, sizeof id, "old%d", i);
        claim1(s, id, old + i, &c);
        if (i % 3 == 1) {
            settle1(s, id, CW_STATE_DEAD, "fail", "x", "y", old + i);
        } else if (i % 3 == 2) {
            settle1(s, id, CW_STATE_RETRYING, "retry", "x", "y", old + i);
        } else {
            settle1(s, id, CW_STATE_DONE, "ok", NULL, NULL, old + i);
            done++;
        }
    }
    for (int i = 0; i < 5; i++) {
        snprintf(id, sizeof id, "young%d", i);
        claim1(s, id, recent + i, &c);
        settle1(s, id, CW_STATE_DONE, "ok", NULL, NULL, recent + i);
    }

    /* Two at a time, sixteen rows examined at most: many calls, each bounded. */
    unsigned total = 0, calls = 0, removed;
    while (total < done && calls < 100) {
        assert_int_equal(cw_store_sweep(s, cut, 2, &removed), 0);
        assert_true(removed <= 2);
        total += removed;
        calls++;
    }
    assert_int_equal(total, done);
    assert_true(calls >= done / 2);
    for (int i = 0; i < 5; i++) {
        snprintf(id, sizeof id, "young%d", i);
        assert_int_equal(get(s, id).state, CW_STATE_DONE);
    }
    assert_int_equal(get(s, "old1").state, CW_STATE_DEAD);

    /* A retrying record that succeeds (long ago, for the test) is removed by
     * the next pass, which starts again from the oldest row. */
    claim1(s, "old2", old + 100, &c);
    settle1(s, "old2", CW_STATE_DONE, "ok", NULL, NULL, old + 100);
    total = 0;
    for (int i = 0; i < 20; i++) {
        assert_int_equal(cw_store_sweep(s, cut, 2, &removed), 0);
        total += removed;
    }
    assert_int_equal(total, 1);
    cw_task_record r;
    assert_int_equal(cw_store_get(s, "old2", &r), CW_STATUS_NOT_FOUND);
    assert_int_equal(get(s, "old5").state, CW_STATE_RETRYING);
    cw_store_free(s);
}
BOTH(sweep_walks_in_chunks)

/* ---- files ------------------------------------------------------------- */

static void reopen_keeps_data(const fixture *f)
{
    cw_store *s = open_as(f, "w1", NULL, NULL);
    cw_claim c;
    claim1(s, "m1", T0, &c);
    settle1(s, "m1", CW_STATE_DONE, "ok", NULL, NULL, T0 + 1);
    claim1(s, "m2", T0, &c);
    cw_store_free(s);

    s = open_as(f, "w2", NULL, NULL);
    assert_int_equal(claim1(s, "m1", T0 + 2, &c), CW_CLAIM_DONE);
    cw_task_record r = get(s, "m2");
    assert_int_equal(r.state, CW_STATE_IN_PROGRESS);
    assert_string_equal(r.owner, "w1");
    cw_store_free(s);

    /* The file is in WAL mode, with the schema version set. */
    sqlite3 *db;
    assert_int_equal(sqlite3_open(f->path, &db), SQLITE_OK);
    sqlite3_stmt *st;
    assert_int_equal(sqlite3_prepare_v2(db, "PRAGMA journal_mode", -1, &st, NULL), SQLITE_OK);
    assert_int_equal(sqlite3_step(st), SQLITE_ROW);
    assert_string_equal((const char *)sqlite3_column_text(st, 0), "wal");
    sqlite3_finalize(st);
    assert_int_equal(sqlite3_prepare_v2(db, "PRAGMA user_version", -1, &st, NULL), SQLITE_OK);
    assert_int_equal(sqlite3_step(st), SQLITE_ROW);
    assert_int_equal(sqlite3_column_int(st, 0), 3);
    sqlite3_finalize(st);
    sqlite3_close(db);
}
FILE_ONLY(reopen_keeps_data)

static void memory_is_private(void **state)
{
    (void)state;
    fixture f;
    next_path(&f, "memory");
    cw_store *a = open_as(&f, "w1", NULL, NULL);
    cw_store *b = open_as(&f, "w2", NULL, NULL);
    cw_claim c;
    claim1(a, "m1", T0, &c);
    assert_int_equal(claim1(b, "m1", T0, &c), CW_CLAIM_NEW);
    cw_store_free(b);
    cw_store_free(a);
    /* Nothing was written at the (ignored) path. */
    assert_int_equal(access(f.path, F_OK), -1);
}

static void newer_schema_refused(void **state)
{
    (void)state;
    fixture f;
    next_path(&f, "sqlite");
    cw_store_free(open_as(&f, "w1", NULL, NULL));
    sqlite3 *db;
    assert_int_equal(sqlite3_open(f.path, &db), SQLITE_OK);
    assert_int_equal(sqlite3_exec(db, "PRAGMA user_version = 99", NULL, NULL, NULL), SQLITE_OK);
    sqlite3_close(db);

    cw_store_opts o = {.backend = "sqlite", .path = f.path, .owner = "w1", .lease_ms = LEASE_MS};
    cw_store *s = (cw_store *)&o; /* must be reset to NULL */
    assert_int_equal(cw_store_open(&s, &o), CW_STATUS_STORE);
    assert_null(s);
    assert_non_null(strstr(cw_error_last(), f.path));
    assert_non_null(strstr(cw_error_last(), "newer"));
}

static void unknown_backend(void **state)
{
    (void)state;
    cw_store_opts o = {.backend = "redis-ish",
                       .path = "/tmp/x",
                       .owner = "w1",
                       .lease_ms = LEASE_MS};
    cw_store *s = (cw_store *)&o;
    assert_int_equal(cw_store_open(&s, &o), CW_STATUS_CONFIG);
    assert_null(s);
    assert_non_null(strstr(cw_error_last(), "redis-ish"));
    o.backend = NULL;
    assert_int_equal(cw_store_open(&s, &o), CW_STATUS_CONFIG);
}

static void bad_options(void **state)
{
    (void)state;
    char path[512];
    snprintf(path, sizeof path, "%s/opts.db", tmp_root);
    cw_store_opts o = {.backend = "sqlite", .path = path, .owner = "w1", .lease_ms = 0};
    cw_store *s = NULL;
    assert_int_equal(cw_store_open(&s, &o), CW_STATUS_CONFIG);
    o.lease_ms = LEASE_MS;
    o.owner = "";
    assert_int_equal(cw_store_open(&s, &o), CW_STATUS_CONFIG);
    char long_owner[200];
    memset(long_owner, 'o', sizeof long_owner - 1);
    long_owner[sizeof long_owner - 1] = '\0';
    o.owner = long_owner;
    assert_int_equal(cw_store_open(&s, &o), CW_STATUS_CONFIG);
    o.owner = "w1";
    o.path = NULL;
    assert_int_equal(cw_store_open(&s, &o), CW_STATUS_CONFIG);
    assert_null(s);
}

static void unwritable_path(void **state)
{
    (void)state;
    /* A regular file where a directory should be: fails even for root. */
    char blocker[512], path[600];
    snprintf(blocker, sizeof blocker, "%s/not-a-dir", tmp_root);
    FILE *fp = fopen(blocker, "w");
    assert_non_null(fp);
    fclose(fp);
    snprintf(path, sizeof path, "%s/sub/store.db", blocker);

    cw_store_opts o = {.backend = "sqlite", .path = path, .owner = "w1", .lease_ms = LEASE_MS};
    cw_store *s = NULL;
    assert_int_equal(cw_store_open(&s, &o), CW_STATUS_STORE);
    assert_null(s);
    assert_non_null(strstr(cw_error_last(), path));

    /* A directory where the file should be: SQLite itself refuses. */
    o.path = tmp_root;
    assert_int_equal(cw_store_open(&s, &o), CW_STATUS_STORE);
    assert_null(s);
    assert_non_null(strstr(cw_error_last(), tmp_root));
}

static void creates_parent_dirs(void **state)
{
    (void)state;
    fixture f = {.backend = "sqlite"};
    snprintf(f.path, sizeof f.path, "%s/deep/er/than/that/store.db", tmp_root);
    cw_store *s = open_as(&f, "w1", NULL, NULL);
    cw_claim c;
    assert_int_equal(claim1(s, "m1", T0, &c), CW_CLAIM_NEW);
    cw_store_free(s);
    assert_int_equal(access(f.path, R_OK | W_OK), 0);
}

static void invalid_arguments(void **state)
{
    (void)state;
    fixture f;
    next_path(&f, "memory");
    cw_store *s = open_as(&f, "w1", NULL, NULL);
    cw_claim c;
    cw_claim_req empty = {.message_id = ""};
    assert_int_equal(cw_store_claim(s, &empty, T0, &c), CW_STATUS_INVALID_ARG);
    char long_id[CW_MESSAGE_ID_MAX + 2];
    memset(long_id, 'i', sizeof long_id - 1);
    long_id[sizeof long_id - 1] = '\0';
    cw_claim_req too_long = {.message_id = long_id};
    assert_int_equal(cw_store_claim(s, &too_long, T0, &c), CW_STATUS_INVALID_ARG);
    long_id[CW_MESSAGE_ID_MAX] = '\0'; /* exactly the maximum is fine */
    assert_int_equal(cw_store_claim(s, &too_long, T0, &c), 0);
    assert_string_equal(get(s, long_id).message_id, long_id);

    claim1(s, "m1", T0, &c);
    cw_settle_req req = {.message_id = "m1", .state = CW_STATE_IN_PROGRESS, .outcome = "ok"};
    assert_int_equal(cw_store_settle(s, &req, T0), CW_STATUS_INVALID_ARG);
    req.state = CW_STATE_DONE;
    req.outcome = NULL;
    assert_int_equal(cw_store_settle(s, &req, T0), CW_STATUS_INVALID_ARG);
    assert_int_equal(get(s, "m1").state, CW_STATE_IN_PROGRESS);
    assert_int_equal(cw_store_history(s, "m1", NULL, NULL), CW_STATUS_INVALID_ARG);
    cw_store_free(s);
    cw_store_free(NULL);
}

static void state_names(void **state)
{
    (void)state;
    assert_string_equal(cw__state_name(CW_STATE_NONE), "none");
    assert_string_equal(cw__state_name(CW_STATE_IN_PROGRESS), "in-progress");
    assert_string_equal(cw__state_name(CW_STATE_DONE), "done");
    assert_string_equal(cw__state_name(CW_STATE_DEAD), "dead");
    assert_string_equal(cw__state_name(CW_STATE_RETRYING), "retrying");
    assert_string_equal(cw__state_name((cw_task_state)99), "unknown");
}

/* A worker's settle batch: done outcomes of claims with consecutive tickets
 * (a batch's new IDs), broken by other outcomes, other orders and other
 * claims. Each record ends as its own settle would leave it, and no other. */
static void settle_batch_by_runs(const fixture *f)
{
    cw_store *s = open_as(f, "host:100", NULL, NULL);
    cw_store *other = open_as(f, "host:200", NULL, NULL);
    cw_claim_req reqs[10];
    cw_claim claims[10];
    char ids[10][8];
    for (int i = 0; i < 10; i++) {
        snprintf(ids[i], sizeof ids[i], "r%d", i);
        reqs[i] = (cw_claim_req){.message_id = ids[i], .type = "t"};
    }
    assert_int_equal(cw_store_claim_batch(s, reqs, 8, T0, claims), 0);
    /* r8 is another owner's claim, r9 one of this owner's by itself. */
    assert_int_equal(cw_store_claim_batch(other, &reqs[8], 1, T0, &claims[8]), 0);
    assert_int_equal(cw_store_claim_batch(s, &reqs[9], 1, T0, &claims[9]), 0);
    for (int i = 0; i < 10; i++)
        assert_int_equal(claims[i].result, CW_CLAIM_NEW);

    /* Runs r0-r2 and r4-r5; r3 dead between them; r7 before r6 (found by
     * its message ID); r9 past the other owner's r8. */
    const int order[] = {0, 1, 2, 3, 4, 5, 7, 6, 9};
    enum {
        N = sizeof order / sizeof order[0]
    };
    cw_settle_req done[N];
    for (int k = 0; k < N; k++) {
        int i = order[k];
        done[k] = (cw_settle_req){.message_id = ids[i],
                                  .state = CW_STATE_DONE,
                                  .outcome = "ok",
                                  .ticket = i == 6 ? 0 : claims[i].ticket};
    }
    done[3] = (cw_settle_req){.message_id = ids[3],
                              .state = CW_STATE_DEAD,
                              .outcome = "permanent",
                              .error_class = "permanent",
                              .reason = "card closed",
                              .ticket = claims[3].ticket};
    assert_int_equal(cw_store_settle_batch(s, done, N, T0 + 5), 0);

    for (int i = 0; i < 10; i++) {
        cw_task_record r = get(s, ids[i]);
        if (i == 8) {
            assert_int_equal(r.state, CW_STATE_IN_PROGRESS);
            assert_string_equal(r.owner, "host:200");
            assert_int_equal(r.attempts, 0);
            continue;
        }
        assert_int_equal(r.state, i == 3 ? CW_STATE_DEAD : CW_STATE_DONE);
        assert_int_equal(r.attempts, 1);
        assert_int_equal(r.lease_until_ms, 0);
        assert_int_equal(r.last_seen_ms, T0 + 5);
        assert_string_equal(r.last_error, i == 3 ? "card closed" : "");
        history_log h = {0};
        assert_int_equal(cw_store_history(s, ids[i], collect, &h), 0);
        assert_int_equal(h.count, 1);
        assert_int_equal(h.rows[0].n, 1);
        assert_int_equal(h.rows[0].at_ms, T0 + 5);
        assert_string_equal(h.rows[0].worker, "host:100");
        assert_string_equal(h.rows[0].outcome, i == 3 ? "permanent" : "ok");
    }
    /* Settled again (a redelivery's copy, say), a run's records count the
     * attempt again, as settles of them one by one would. */
    assert_int_equal(cw_store_settle_batch(s, done, 2, T0 + 6), 0);
    assert_int_equal(get(s, ids[0]).attempts, 2);
    assert_int_equal(get(s, ids[1]).attempts, 2);
    assert_int_equal(get(s, ids[2]).attempts, 1);
    cw_store_free(other);
    cw_store_free(s);
}
SHARED(settle_batch_by_runs)

/* A run of done outcomes whose range lacks a record fails as one missing
 * record does: NOT_FOUND, and nothing of the batch is committed. */
static void settle_batch_missing_record(const fixture *f)
{
    cw_store *s = open_as(f, "host:100", NULL, NULL);
    cw_claim_req reqs[3] = {{.message_id = "m0", .type = "t"},
                            {.message_id = "m1", .type = "t"},
                            {.message_id = "m2", .type = "t"}};
    cw_claim claims[3];
    assert_int_equal(cw_store_claim_batch(s, reqs, 3, T0, claims), 0);
    sqlite3 *db = NULL;
    assert_int_equal(sqlite3_open(f->path, &db), SQLITE_OK);
    assert_int_equal(sqlite3_exec(db, "DELETE FROM tasks WHERE message_id = 'm1'", NULL, NULL,
                                  NULL),
                     SQLITE_OK);
    sqlite3_close(db);
    cw_settle_req done[3];
    for (int i = 0; i < 3; i++)
        done[i] = (cw_settle_req){.message_id = reqs[i].message_id,
                                  .state = CW_STATE_DONE,
                                  .outcome = "ok",
                                  .ticket = claims[i].ticket};
    assert_int_equal(cw_store_settle_batch(s, done, 3, T0 + 5), CW_STATUS_NOT_FOUND);
    assert_non_null(strstr(cw_error_last(), "no record"));
    assert_int_equal(get(s, "m0").state, CW_STATE_IN_PROGRESS);
    assert_int_equal(get(s, "m2").state, CW_STATE_IN_PROGRESS);
    assert_int_equal(get(s, "m2").attempts, 0);
    cw_store_free(s);
}
FILE_ONLY(settle_batch_missing_record)

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(first_claim_is_new_file),
        cmocka_unit_test(first_claim_is_new_memory),
        cmocka_unit_test(first_claim_is_new_pg),
        cmocka_unit_test(done_then_duplicate_file),
        cmocka_unit_test(done_then_duplicate_memory),
        cmocka_unit_test(done_then_duplicate_pg),
        cmocka_unit_test(same_owner_reclaims_file),
        cmocka_unit_test(same_owner_reclaims_memory),
        cmocka_unit_test(same_owner_reclaims_pg),
        cmocka_unit_test(dead_stays_dead_file),
        cmocka_unit_test(dead_stays_dead_memory),
        cmocka_unit_test(dead_stays_dead_pg),
        cmocka_unit_test(retrying_is_claimable_file),
        cmocka_unit_test(retrying_is_claimable_memory),
        cmocka_unit_test(retrying_is_claimable_pg),
        cmocka_unit_test(saga_and_type_filled_later_file),
        cmocka_unit_test(saga_and_type_filled_later_memory),
        cmocka_unit_test(saga_and_type_filled_later_pg),
        cmocka_unit_test(busy_until_lease_expires_file),
        cmocka_unit_test(busy_until_lease_expires_pg),
        cmocka_unit_test(waits_for_write_lock_file),
        cmocka_unit_test(deferred_durability_file),
        cmocka_unit_test(wal_starts_over_file),
        cmocka_unit_test(no_deferral_memory),
        cmocka_unit_test(wal_vfs_rollback_file),
        cmocka_unit_test(no_deferral_elsewhere_pg),
        cmocka_unit_test(dead_owner_taken_over_file),
        cmocka_unit_test(dead_owner_taken_over_pg),
        cmocka_unit_test(done_by_other_is_duplicate_file),
        cmocka_unit_test(done_by_other_is_duplicate_pg),
        cmocka_unit_test(history_in_order_file),
        cmocka_unit_test(history_in_order_memory),
        cmocka_unit_test(history_in_order_pg),
        cmocka_unit_test(unknown_ids_file),
        cmocka_unit_test(unknown_ids_memory),
        cmocka_unit_test(unknown_ids_pg),
        cmocka_unit_test(long_text_truncated_file),
        cmocka_unit_test(long_text_truncated_memory),
        cmocka_unit_test(long_text_truncated_pg),
        cmocka_unit_test(rollback_undoes_batch_file),
        cmocka_unit_test(rollback_undoes_batch_memory),
        cmocka_unit_test(rollback_undoes_batch_pg),
        cmocka_unit_test(batch_of_many_file),
        cmocka_unit_test(batch_of_many_memory),
        cmocka_unit_test(batch_of_many_pg),
        cmocka_unit_test(commit_without_begin_fails_file),
        cmocka_unit_test(commit_without_begin_fails_memory),
        cmocka_unit_test(commit_without_begin_fails_pg),
        cmocka_unit_test(settle_batch_by_runs_file),
        cmocka_unit_test(settle_batch_by_runs_pg),
        cmocka_unit_test(settle_batch_missing_record_file),
        cmocka_unit_test(sweep_removes_old_done_file),
        cmocka_unit_test(sweep_removes_old_done_memory),
        cmocka_unit_test(sweep_removes_old_done_pg),
        cmocka_unit_test(sweep_walks_in_chunks_file),
        cmocka_unit_test(sweep_walks_in_chunks_memory),
        cmocka_unit_test(sweep_walks_in_chunks_pg),
        cmocka_unit_test(reopen_keeps_data_file),
        cmocka_unit_test(memory_is_private),
        cmocka_unit_test(newer_schema_refused),
        cmocka_unit_test(unknown_backend),
        cmocka_unit_test(bad_options),
        cmocka_unit_test(unwritable_path),
        cmocka_unit_test(creates_parent_dirs),
        cmocka_unit_test(invalid_arguments),
        cmocka_unit_test(state_names),
    };
    return cmocka_run_group_tests(tests, group_setup, group_teardown);
}
