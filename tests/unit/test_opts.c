/* Unit tests for framework/opts.c and the public versioned option structs:
 * every version from 1 to the current one is accepted, fields an older
 * version lacks take their defaults, no byte past an older caller's struct
 * is read, and versions 0 and newer than the library are refused. */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>

#include <stdlib.h>
#include <string.h>

#include "compworker/client.h"
#include "compworker/compworker.h"
#include "framework/opts.h"
#include "framework/registry.h"

/* A struct family as a later release would have it: version 2 adds `b`. */
typedef struct demo_v1 {
    unsigned version;
    int a;
    const char *s;
} demo_v1;

typedef struct demo_opts {
    unsigned version;
    int a;
    const char *s;
    int b; /* new in version 2 */
} demo_opts;

#define DEMO_VERSION 2
#define DEMO_INIT                                                                                  \
    {                                                                                              \
        DEMO_VERSION, -1, NULL, 7                                                                  \
    }

static const size_t demo_sizes[DEMO_VERSION] = {offsetof(demo_opts, b), sizeof(demo_opts)};

static void test_older_version_accepted(void **state)
{
    (void)state;
    /* Exactly the bytes a caller built against version 1 has (ASan would
     * see a read past them). */
    demo_v1 *old = malloc(demo_sizes[0]);
    assert_non_null(old);
    assert_true(demo_sizes[0] <= sizeof *old);
    old->version = 1;
    old->a = 42;
    old->s = "kept";
    demo_opts cur = DEMO_INIT;
    assert_int_equal(cw__opts_read(&cur, old, demo_sizes, DEMO_VERSION, "demo_opts"), 0);
    assert_int_equal(cur.version, DEMO_VERSION);
    assert_int_equal(cur.a, 42);
    assert_string_equal(cur.s, "kept");
    assert_int_equal(cur.b, 7); /* the field version 1 lacks: its default */
    free(old);
}

static void test_current_version_read_whole(void **state)
{
    (void)state;
    demo_opts in = {DEMO_VERSION, 1, "x", 99};
    demo_opts cur = DEMO_INIT;
    assert_int_equal(cw__opts_read(&cur, &in, demo_sizes, DEMO_VERSION, "demo_opts"), 0);
    assert_int_equal(cur.a, 1);
    assert_int_equal(cur.b, 99);
}

static void test_bad_versions_refused(void **state)
{
    (void)state;
    demo_opts cur = DEMO_INIT;
    demo_opts in = {0, 1, NULL, 2};
    assert_int_equal(cw__opts_read(&cur, &in, demo_sizes, DEMO_VERSION, "demo_opts"),
                     CW_STATUS_INVALID_ARG);
    assert_non_null(strstr(cw_error_last(), "version 0"));
    in.version = DEMO_VERSION + 1;
    assert_int_equal(cw__opts_read(&cur, &in, demo_sizes, DEMO_VERSION, "demo_opts"),
                     CW_STATUS_INVALID_ARG);
    assert_non_null(strstr(cw_error_last(), "version 3 is newer"));
    assert_int_equal(cw__opts_read(&cur, NULL, demo_sizes, DEMO_VERSION, "demo_opts"),
                     CW_STATUS_INVALID_ARG);
    /* Nothing of a refused struct was taken. */
    assert_int_equal(cur.a, -1);
    assert_int_equal(cur.b, 7);
}

static void test_init_older_version(void **state)
{
    (void)state;
    static const demo_opts init = DEMO_INIT;
    demo_v1 *old = malloc(demo_sizes[0]);
    assert_non_null(old);
    assert_int_equal(cw__opts_init(old, 1, &init, demo_sizes, DEMO_VERSION, "demo_opts"), 0);
    assert_int_equal(old->version, 1);
    assert_int_equal(old->a, -1);
    assert_null(old->s);
    free(old);
    demo_opts cur;
    memset(&cur, 0xff, sizeof cur);
    assert_int_equal(cw__opts_init(&cur, DEMO_VERSION, &init, demo_sizes, DEMO_VERSION,
                                   "demo_opts"),
                     0);
    assert_int_equal(cur.version, DEMO_VERSION);
    assert_int_equal(cur.b, 7);
    assert_int_equal(cw__opts_init(&cur, 0, &init, demo_sizes, DEMO_VERSION, "demo_opts"),
                     CW_STATUS_INVALID_ARG);
    assert_int_equal(cw__opts_init(&cur, 3, &init, demo_sizes, DEMO_VERSION, "demo_opts"),
                     CW_STATUS_INVALID_ARG);
}

/* ---- the public structs -------------------------------------------------- */

static cw_outcome noop(cw_task *task, void *user_data)
{
    (void)task;
    (void)user_data;
    return CW_OK;
}

static void test_retry_opts_versions(void **state)
{
    (void)state;
    cw_registry *reg = NULL;
    assert_int_equal(cw_registry_new(&reg), 0);
    assert_int_equal(cw_register_handler(reg, "t.a", noop, NULL), 0);

    cw_retry_opts o;
    memset(&o, 0xab, sizeof o);
    assert_int_equal(cw_retry_opts_init(&o, CW_RETRY_OPTS_VERSION), 0);
    assert_int_equal(o.version, CW_RETRY_OPTS_VERSION);
    assert_int_equal(o.max_attempts, -1);
    assert_int_equal(o.interval_ms, -1);
    assert_true(o.backoff_rate == -1.0);
    assert_int_equal(o.max_delay_ms, -1);
    assert_int_equal(o.jitter, -1);
    o.max_attempts = 9;
    assert_int_equal(cw_register_retry_policy(reg, "t.a", &o), 0);
    const cw_handler_entry *h = cw_registry_find(reg, "t.a", 3);
    assert_non_null(h);
    assert_int_equal(h->retry.max_attempts, 9);

    o.version = CW_RETRY_OPTS_VERSION + 1;
    assert_int_equal(cw_register_retry_policy(reg, "t.a", &o), CW_STATUS_INVALID_ARG);
    assert_non_null(strstr(cw_error_last(), "cw_retry_opts"));
    o.version = 0;
    assert_int_equal(cw_register_retry_policy(reg, "t.a", &o), CW_STATUS_INVALID_ARG);
    assert_int_equal(cw_retry_opts_init(&o, 0), CW_STATUS_INVALID_ARG);
    assert_int_equal(cw_retry_opts_init(NULL, 1), CW_STATUS_INVALID_ARG);
    cw_registry_free(reg);
}

static void test_publish_opts_init(void **state)
{
    (void)state;
    cw_publish_opts o;
    memset(&o, 0xab, sizeof o);
    assert_int_equal(cw_publish_opts_init(&o, CW_PUBLISH_OPTS_VERSION), 0);
    assert_int_equal(o.version, CW_PUBLISH_OPTS_VERSION);
    assert_null(o.type);
    assert_null(o.saga_id);
    assert_null(o.message_id);
    assert_null(o.body);
    assert_int_equal(o.body_len, 0);
    assert_null(o.routing_key);
    assert_int_equal(o.confirm_timeout_ms, 0);
    assert_int_equal(cw_publish_opts_init(&o, CW_PUBLISH_OPTS_VERSION + 1), CW_STATUS_INVALID_ARG);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_older_version_accepted),
        cmocka_unit_test(test_current_version_read_whole),
        cmocka_unit_test(test_bad_versions_refused),
        cmocka_unit_test(test_init_older_version),
        cmocka_unit_test(test_retry_opts_versions),
        cmocka_unit_test(test_publish_opts_init),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
