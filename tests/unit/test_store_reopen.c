/* Unit tests of cw_store_reopen(): how a replay from the dead-letter queue
 * makes a task claimable again: the SQLite store on a file, then the
 * PostgreSQL store when CW_TEST_PG_URL names a test server. */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>

#include <ftw.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "compworker/status.h"
#include "framework/store.h"

#define LEASE_MS 30000
#define T0 1700000000000LL

static char dir[64];
static unsigned counter;
static const char *backend = "sqlite";
static char schema[64]; /* postgresql: one per test */

static bool alive_yes(const char *owner, void *ud)
{
    (void)owner;
    (void)ud;
    return true;
}

static cw_store *open_as(const char *path, const char *owner)
{
    cw_store_opts o = {.backend = backend,
                       .path = path,
                       .url = getenv("CW_TEST_PG_URL"),
                       .schema = schema,
                       .owner = owner,
                       .lease_ms = LEASE_MS,
                       .sync_full = false,
                       .owner_alive = alive_yes};
    cw_store *s = NULL;
    if (cw_store_open(&s, &o))
        fail_msg("open %s: %s", path, cw_error_last());
    return s;
}

static void fresh_path(char *path, size_t cap)
{
    snprintf(path, cap, "%s/s%u.db", dir, ++counter);
    snprintf(schema, sizeof schema, "cwreopen_%ld_%u", (long)getpid(), counter);
}

static cw_claim claim(cw_store *s, const char *id, int64_t now)
{
    cw_claim c;
    cw_claim_req req = {.message_id = id, .saga_id = "saga-1", .type = "payment.refund"};
    if (cw_store_claim(s, &req, now, &c))
        fail_msg("claim: %s", cw_error_last());
    return c;
}

static void settle(cw_store *s, const char *id, cw_task_state st, const char *outcome, int64_t now)
{
    cw_settle_req req = {.message_id = id,
                         .state = st,
                         .outcome = outcome,
                         .error_class = st == CW_STATE_DONE ? NULL : "permanent",
                         .reason = st == CW_STATE_DONE ? NULL : "unknown payment"};
    if (cw_store_settle(s, &req, now))
        fail_msg("settle: %s", cw_error_last());
}

static cw_task_record get(cw_store *s, const char *id)
{
    cw_task_record r;
    if (cw_store_get(s, id, &r))
        fail_msg("get %s: %s", id, cw_error_last());
    return r;
}

typedef struct hist {
    cw_attempt_record a[16];
    size_t n;
} hist;

static int collect(const cw_attempt_record *a, void *ud)
{
    hist *h = ud;
    if (h->n < 16)
        h->a[h->n++] = *a;
    return 0;
}

static hist history(cw_store *s, const char *id)
{
    hist h;
    memset(&h, 0, sizeof h);
    assert_int_equal(cw_store_history(s, id, collect, &h), 0);
    return h;
}

static int reopen(cw_store *s, const char *id, bool force, int64_t now, cw_task_state *was)
{
    cw_reopen_req req = {.message_id = id,
                         .saga_id = "saga-r",
                         .type = "payment.refund",
                         .reason = "replayed by test",
                         .force = force};
    return cw_store_reopen(s, &req, now, was);
}

static void test_reopen_dead(void **state)
{
    (void)state;
    char path[256];
    fresh_path(path, sizeof path);
    cw_store *w = open_as(path, "host:1:1");
    cw_store *op = open_as(path, "host:2:2");
    claim(w, "m1", T0);
    settle(w, "m1", CW_STATE_DEAD, "permanent", T0 + 1);
    /* A dead task's next delivery is acked without running... */
    assert_int_equal(claim(w, "m1", T0 + 2).result, CW_CLAIM_DEAD);

    cw_task_state was;
    assert_int_equal(reopen(op, "m1", false, T0 + 10, &was), 0);
    assert_int_equal(was, CW_STATE_DEAD);
    cw_task_record r = get(op, "m1");
    assert_int_equal(r.state, CW_STATE_REPLAYED);
    assert_int_equal(r.attempts, 1);
    assert_string_equal(r.saga_id, "saga-1"); /* kept */
    assert_string_equal(r.last_error, "unknown payment");
    assert_string_equal(cw__state_name(r.state), "replayed");

    /* ... a replayed one runs, as a first delivery. */
    cw_claim c = claim(w, "m1", T0 + 20);
    assert_int_equal(c.result, CW_CLAIM_NEW);
    assert_int_equal(c.deliveries, 1);
    settle(w, "m1", CW_STATE_DONE, "ok", T0 + 30);

    hist h = history(op, "m1");
    assert_int_equal(h.n, 3);
    assert_string_equal(h.a[0].outcome, "permanent");
    assert_string_equal(h.a[1].outcome, "replayed");
    assert_string_equal(h.a[1].reason, "replayed by test");
    assert_string_equal(h.a[1].worker, "host:2:2");
    assert_int_equal(h.a[1].at_ms, T0 + 10);
    assert_string_equal(h.a[2].outcome, "ok");
    assert_int_equal(h.a[2].n, 2);
    cw_store_free(w);
    cw_store_free(op);
}

static void test_reopen_done_needs_force(void **state)
{
    (void)state;
    char path[256];
    fresh_path(path, sizeof path);
    cw_store *w = open_as(path, "host:1:1");
    claim(w, "m1", T0);
    settle(w, "m1", CW_STATE_DONE, "ok", T0 + 1);
    cw_task_state was = CW_STATE_NONE;
    assert_int_equal(reopen(w, "m1", false, T0 + 2, &was), CW_STATUS_EXISTS);
    assert_int_equal(was, CW_STATE_DONE);
    assert_non_null(strstr(cw_error_last(), "already applied"));
    assert_int_equal(get(w, "m1").state, CW_STATE_DONE);
    assert_int_equal(history(w, "m1").n, 1);

    assert_int_equal(reopen(w, "m1", true, T0 + 3, &was), 0);
    assert_int_equal(get(w, "m1").state, CW_STATE_REPLAYED);
    /* The attempt that applied it stays in the history. */
    hist h = history(w, "m1");
    assert_int_equal(h.n, 2);
    assert_string_equal(h.a[0].outcome, "ok");
    assert_int_equal(h.a[0].n, 1);
    assert_string_equal(h.a[1].outcome, "replayed");
    cw_store_free(w);
}

static void test_reopen_busy_and_retrying(void **state)
{
    (void)state;
    char path[256];
    fresh_path(path, sizeof path);
    cw_store *w = open_as(path, "host:1:1");
    cw_store *op = open_as(path, "host:2:2");
    /* In progress elsewhere, lease live, owner alive: refused. */
    claim(w, "m1", T0);
    cw_task_state was;
    assert_int_equal(reopen(op, "m1", true, T0 + 5, &was), CW_STATUS_EXISTS);
    assert_int_equal(was, CW_STATE_IN_PROGRESS);
    /* Its lease expired: reopened, and the deliveries without an outcome
     * (two crashes, say) no longer count toward poison. */
    claim(w, "m1", T0 + LEASE_MS + 1);
    claim(w, "m1", T0 + 2 * LEASE_MS + 2);
    assert_int_equal(reopen(op, "m1", false, T0 + 3 * LEASE_MS + 3, &was), 0);
    assert_int_equal(was, CW_STATE_IN_PROGRESS);
    cw_claim c = claim(w, "m1", T0 + 3 * LEASE_MS + 4);
    assert_int_equal(c.result, CW_CLAIM_NEW);
    assert_int_equal(c.deliveries, 1);
    assert_int_equal(get(w, "m1").deliveries, 4);

    claim(w, "m2", T0);
    settle(w, "m2", CW_STATE_RETRYING, "retry", T0 + 1);
    assert_int_equal(reopen(op, "m2", false, T0 + 2, &was), 0);
    assert_int_equal(was, CW_STATE_RETRYING);
    assert_int_equal(get(w, "m2").state, CW_STATE_REPLAYED);
    cw_store_free(w);
    cw_store_free(op);
}

static void test_reopen_unknown_and_batch(void **state)
{
    (void)state;
    char path[256];
    fresh_path(path, sizeof path);
    cw_store *s = open_as(path, "host:2:2");
    cw_task_state was = CW_STATE_DONE;
    /* Imported from another broker: no record here. One is made. */
    assert_int_equal(reopen(s, "new-1", false, T0, &was), 0);
    assert_int_equal(was, CW_STATE_NONE);
    cw_task_record r = get(s, "new-1");
    assert_int_equal(r.state, CW_STATE_REPLAYED);
    assert_string_equal(r.saga_id, "saga-r");
    assert_string_equal(r.type, "payment.refund");
    assert_int_equal(r.attempts, 0);
    assert_int_equal(history(s, "new-1").n, 1);
    assert_int_equal(claim(s, "new-1", T0 + 1).result, CW_CLAIM_NEW);

    /* Inside a batch, and undone by its rollback. */
    assert_int_equal(cw_store_begin(s, true), 0);
    assert_int_equal(reopen(s, "new-2", false, T0, NULL), 0);
    assert_int_equal(cw_store_rollback(s), 0);
    assert_int_equal(cw_store_get(s, "new-2", &r), CW_STATUS_NOT_FOUND);

    cw_reopen_req bad = {.message_id = ""};
    assert_int_equal(cw_store_reopen(s, &bad, T0, NULL), CW_STATUS_INVALID_ARG);
    assert_int_equal(cw_store_reopen(s, NULL, T0, NULL), CW_STATUS_INVALID_ARG);
    cw_store_free(s);
}

static int rm(const char *p, const struct stat *sb, int flag, struct FTW *f)
{
    (void)sb;
    (void)flag;
    (void)f;
    return remove(p);
}

static int setup(void **state)
{
    (void)state;
    snprintf(dir, sizeof dir, "/tmp/cw-test-reopen-XXXXXX");
    return mkdtemp(dir) ? 0 : -1;
}

static int teardown(void **state)
{
    (void)state;
    return nftw(dir, rm, 8, FTW_DEPTH | FTW_PHYS);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_reopen_dead),
        cmocka_unit_test(test_reopen_done_needs_force),
        cmocka_unit_test(test_reopen_busy_and_retrying),
        cmocka_unit_test(test_reopen_unknown_and_batch),
    };
    int failed = cmocka_run_group_tests_name("sqlite", tests, setup, teardown);
    const char *url = getenv("CW_TEST_PG_URL");
    if (url && *url) {
        backend = "postgresql";
        failed += cmocka_run_group_tests_name("postgresql", tests, setup, teardown);
    }
    return failed;
}
