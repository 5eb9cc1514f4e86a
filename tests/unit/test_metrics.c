/* Unit tests for framework/metrics.c: the shared counters (slots, the type
 * table, folding a dead worker's counts) and the Prometheus text exposition,
 * checked line by line. No broker, no HTTP: the monitor's server is tested
 * in tests/integration/test_pool.c. */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include "framework/metrics.h"
#include "framework/registry.h"

static cw_outcome noop(cw_task *t, void *ud)
{
    (void)t;
    (void)ud;
    return CW_OK;
}

/* A registry with handlers for `types` (NULL-terminated). */
static cw_registry *registry_of(const char *const *types)
{
    cw_registry *reg = NULL;
    assert_int_equal(cw_registry_new(&reg), 0);
    for (; *types; types++)
        assert_int_equal(cw_register_handler(reg, *types, noop, NULL), 0);
    return reg;
}

static char *render(cw_metrics *m, int64_t depth)
{
    cw_metrics_snapshot *s = malloc(sizeof *s);
    assert_non_null(s);
    cw_metrics_snapshot_take(m, s);
    cw_metrics_info info = {.pool = "orders",
                            .queue = "cw.orders",
                            .dlq = "cw.dlq.orders",
                            .queue_ready = depth,
                            .queue_consumers = depth < 0 ? -1 : 2,
                            .dlq_ready = depth < 0 ? -1 : 3,
                            .queue_foreign_consumers = depth < 0 ? -1 : 1};
    char *out = NULL;
    size_t len = 0;
    assert_int_equal(cw_metrics_render(s, &info, &out, &len), 0);
    assert_int_equal(strlen(out), len);
    free(s);
    return out;
}

/* `line` is one whole line of `text`. */
static void expect_line(const char *text, const char *line)
{
    size_t n = strlen(line);
    for (const char *p = text; p; p = strchr(p, '\n'), p = p ? p + 1 : NULL) {
        if (strncmp(p, line, n) == 0 && (p[n] == '\n' || p[n] == '\0'))
            return;
    }
    fail_msg("no line '%s' in:\n%s", line, text);
}

static void expect_no(const char *text, const char *part)
{
    if (strstr(text, part))
        fail_msg("'%s' should not be in:\n%s", part, text);
}

static void test_exposition(void **state)
{
    (void)state;
    cw_metrics *m;
    assert_int_equal(cw_metrics_new(&m), 0);
    const char *types[] = {"payment.refund", "stock.restock", NULL};
    cw_registry *reg = registry_of(types);
    int slot = cw_metrics_slot_take(m);
    assert_true(slot >= 0);
    cw_metrics_worker mw;
    assert_int_equal(cw_metrics_worker_init(&mw, m, slot, reg), 0);

    cw_metrics_row *refund = cw_metrics_row_of(&mw, reg, &reg->handlers[0]);
    cw_metrics_row *other = cw_metrics_row_of(&mw, reg, NULL);
    for (int i = 0; i < 3; i++)
        cw_metrics_add(refund, CW_M_RECEIVED);
    cw_metrics_add(refund, CW_M_SUCCEEDED);
    cw_metrics_add(refund, CW_M_RETRIED);
    cw_metrics_add(refund, CW_M_DUPLICATES);
    cw_metrics_dead(refund, "exhausted");
    cw_metrics_observe(refund, 3000000);     /* 3 ms */
    cw_metrics_observe(refund, 2000000000);  /* 2 s */
    cw_metrics_observe(refund, 90000000000); /* 90 s: only +Inf */
    cw_metrics_add(other, CW_M_RECEIVED);
    cw_metrics_dead(other, "invalid");
    cw_metrics_connected(&mw, true);
    atomic_store(&m->workers_alive, 1);
    atomic_store(&m->workers_desired, 2);

    char *t = render(m, 5);
    expect_line(t,
                "# HELP compworker_tasks_received_total Deliveries taken from the pool queue and "
                "settled, by task type.");
    expect_line(t, "# TYPE compworker_tasks_received_total counter");
    expect_line(t, "compworker_tasks_received_total{pool=\"orders\",type=\"payment.refund\"} 3");
    expect_line(t, "compworker_tasks_received_total{pool=\"orders\",type=\"stock.restock\"} 0");
    expect_line(t, "compworker_tasks_received_total{pool=\"orders\",type=\"(other)\"} 1");
    expect_line(t, "compworker_tasks_succeeded_total{pool=\"orders\",type=\"payment.refund\"} 1");
    expect_line(t, "compworker_tasks_retried_total{pool=\"orders\",type=\"payment.refund\"} 1");
    expect_line(
        t, "compworker_tasks_duplicates_skipped_total{pool=\"orders\",type=\"payment.refund\"} 1");
    expect_line(t, "compworker_tasks_dead_lettered_total{pool=\"orders\",type=\"payment.refund\","
                   "error_class=\"exhausted\"} 1");
    expect_line(t, "compworker_tasks_dead_lettered_total{pool=\"orders\",type=\"payment.refund\","
                   "error_class=\"poison\"} 0");
    /* Row 0 shows only the classes it counted. */
    expect_line(t, "compworker_tasks_dead_lettered_total{pool=\"orders\",type=\"(other)\","
                   "error_class=\"invalid\"} 1");
    expect_no(t, "type=\"(other)\",error_class=\"poison\"");
    /* The histogram: cumulative buckets, +Inf last, sum in seconds, count. */
    expect_line(t, "# TYPE compworker_handler_duration_seconds histogram");
    expect_line(
        t,
        "compworker_handler_duration_seconds_bucket{pool=\"orders\",type=\"payment.refund\",le=\"0.001\"} 0");
    expect_line(
        t,
        "compworker_handler_duration_seconds_bucket{pool=\"orders\",type=\"payment.refund\",le=\"0.005\"} 1");
    expect_line(
        t,
        "compworker_handler_duration_seconds_bucket{pool=\"orders\",type=\"payment.refund\",le=\"1\"} 1");
    expect_line(
        t,
        "compworker_handler_duration_seconds_bucket{pool=\"orders\",type=\"payment.refund\",le=\"2.5\"} 2");
    expect_line(
        t,
        "compworker_handler_duration_seconds_bucket{pool=\"orders\",type=\"payment.refund\",le=\"60\"} 2");
    expect_line(
        t,
        "compworker_handler_duration_seconds_bucket{pool=\"orders\",type=\"payment.refund\",le=\"+Inf\"} 3");
    expect_line(
        t,
        "compworker_handler_duration_seconds_sum{pool=\"orders\",type=\"payment.refund\"} 92.003000");
    expect_line(
        t, "compworker_handler_duration_seconds_count{pool=\"orders\",type=\"payment.refund\"} 3");
    expect_line(t, "compworker_workers{pool=\"orders\"} 1");
    expect_line(t, "compworker_workers_desired{pool=\"orders\"} 2");
    expect_line(t, "compworker_workers_connected{pool=\"orders\"} 1");
    expect_line(t, "compworker_broker_sessions_total{pool=\"orders\"} 1");
    expect_line(t, "compworker_worker_restarts_total{pool=\"orders\"} 0");
    expect_line(t, "compworker_queue_messages{pool=\"orders\",queue=\"cw.orders\"} 5");
    expect_line(t, "compworker_queue_consumers{pool=\"orders\",queue=\"cw.orders\"} 2");
    expect_line(t, "compworker_queue_foreign_consumers{pool=\"orders\",queue=\"cw.orders\"} 1");
    expect_line(t, "compworker_dlq_messages{pool=\"orders\",queue=\"cw.dlq.orders\"} 3");
    /* Every sample line is NAME{LABELS} VALUE, every HELP has its TYPE. */
    unsigned helps = 0, types_n = 0;
    for (char *line = strtok(t, "\n"); line; line = strtok(NULL, "\n")) {
        if (strncmp(line, "# HELP ", 7) == 0) {
            helps++;
            continue;
        }
        if (strncmp(line, "# TYPE ", 7) == 0) {
            types_n++;
            continue;
        }
        assert_true(strncmp(line, "compworker_", 11) == 0);
        char *close = strstr(line, "} ");
        assert_non_null(close);
        assert_non_null(strchr(line, '{'));
        char *end;
        strtod(close + 2, &end);
        assert_true(*end == '\0');
    }
    assert_int_equal(helps, types_n);
    free(t);

    /* Unknown depths are not shown. */
    t = render(m, -1);
    expect_no(t, "compworker_queue_messages");
    expect_no(t, "compworker_dlq_messages");
    free(t);

    cw_metrics_worker_free(&mw);
    cw_registry_free(reg);
    cw_metrics_free(m);
}

/* A worker's counts survive its slot: folded into the pool's totals. */
static void test_fold_keeps_counts(void **state)
{
    (void)state;
    cw_metrics *m;
    assert_int_equal(cw_metrics_new(&m), 0);
    const char *types[] = {"a.b", NULL};
    cw_registry *reg = registry_of(types);

    for (int round = 0; round < 3; round++) {
        int slot = cw_metrics_slot_take(m);
        cw_metrics_worker mw;
        assert_int_equal(cw_metrics_worker_init(&mw, m, slot, reg), 0);
        cw_metrics_row *r = cw_metrics_row_of(&mw, reg, &reg->handlers[0]);
        for (int i = 0; i < 10; i++)
            cw_metrics_add(r, CW_M_SUCCEEDED);
        cw_metrics_connected(&mw, true);
        cw_metrics_worker_free(&mw);
        cw_metrics_slot_release(m, slot);
    }
    cw_metrics_snapshot *s = malloc(sizeof *s);
    cw_metrics_snapshot_take(m, s);
    assert_string_equal(s->types[1], "a.b");
    assert_int_equal(s->rows[1].counter[CW_M_SUCCEEDED], 30);
    assert_int_equal(s->sessions, 3);
    assert_int_equal(s->workers_connected, 0);
    free(s);
    cw_registry_free(reg);
    cw_metrics_free(m);
}

/* Forked processes count into one region; types entered by several
 * processes get one row each. */
static void test_shared_across_fork(void **state)
{
    (void)state;
    cw_metrics *m;
    assert_int_equal(cw_metrics_new(&m), 0);
    enum {
        CHILDREN = 4,
        EACH = 10000
    };
    for (int c = 0; c < CHILDREN; c++) {
        int slot = cw_metrics_slot_take(m);
        pid_t pid = fork();
        assert_true(pid >= 0);
        if (pid == 0) {
            const char *types[] = {c % 2 ? "x.one" : "x.two", "x.shared", NULL};
            cw_registry *reg = registry_of(types);
            cw_metrics_worker mw;
            if (cw_metrics_worker_init(&mw, m, slot, reg))
                _exit(1);
            cw_metrics_row *r = cw_metrics_row_of(&mw, reg, &reg->handlers[1]);
            for (int i = 0; i < EACH; i++)
                cw_metrics_add(r, CW_M_RECEIVED);
            cw_metrics_worker_free(&mw);
            cw_registry_free(reg);
            _exit(0);
        }
    }
    for (int c = 0; c < CHILDREN; c++) {
        int st;
        assert_true(wait(&st) > 0);
        assert_true(WIFEXITED(st) && WEXITSTATUS(st) == 0);
    }
    cw_metrics_snapshot *s = malloc(sizeof *s);
    cw_metrics_snapshot_take(m, s);
    int shared = -1, named = 0;
    for (int t = 1; t < CW_METRICS_TYPES; t++) {
        if (!s->types[t][0])
            continue;
        named++;
        if (strcmp(s->types[t], "x.shared") == 0)
            shared = t;
    }
    assert_int_equal(named, 3);
    assert_true(shared > 0);
    assert_int_equal(s->rows[shared].counter[CW_M_RECEIVED], CHILDREN * EACH);
    free(s);
    cw_metrics_free(m);
}

/* Past the type table, counts go to row 0. */
static void test_type_table_full(void **state)
{
    (void)state;
    cw_metrics *m;
    assert_int_equal(cw_metrics_new(&m), 0);
    cw_registry *reg = NULL;
    assert_int_equal(cw_registry_new(&reg), 0);
    char name[32];
    for (int i = 0; i < CW_METRICS_TYPES + 5; i++) {
        snprintf(name, sizeof name, "t.%03d", i);
        assert_int_equal(cw_register_handler(reg, name, noop, NULL), 0);
    }
    cw_metrics_worker mw;
    assert_int_equal(cw_metrics_worker_init(&mw, m, cw_metrics_slot_take(m), reg), 0);
    cw_metrics_row *last = cw_metrics_row_of(&mw, reg, &reg->handlers[CW_METRICS_TYPES + 4]);
    assert_ptr_equal(last, cw_metrics_row_of(&mw, reg, NULL));
    cw_metrics_worker_free(&mw);
    cw_registry_free(reg);
    cw_metrics_free(m);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_exposition),
        cmocka_unit_test(test_fold_keeps_counts),
        cmocka_unit_test(test_shared_across_fork),
        cmocka_unit_test(test_type_table_full),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
