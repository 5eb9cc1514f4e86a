/* Tests of what a handler calls for its effects: cw_task_send() (follow-up
 * messages: their derived message IDs, their bounds, a refusal failing the
 * task) and cw_task_sqlite() / cw_task_pg() where the store has no
 * transaction to give. */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>

#include <stdlib.h>
#include <string.h>

#include "compworker/compworker.h"
#include "framework/task.h"

static cw_task *new_task(const char *message_id, const char *saga_id)
{
    cw_task *t = calloc(1, sizeof *t);
    assert_non_null(t);
    strcpy(t->message_id, message_id);
    strcpy(t->saga_id, saga_id);
    return t;
}

static void free_task(cw_task *t)
{
    cw__task_reset(t);
    free(t);
}

/* UUIDv5 in compworker's namespace, as Python's uuid.uuid5() computes it:
 * any language can derive a follow-up's ID from its task's. */
static void followup_ids_are_uuid5(void **state)
{
    (void)state;
    char id[37];
    cw__followup_id("m-1", 0, id);
    assert_string_equal(id, "787f6fee-c991-5426-9879-de4ad4d0682a");
    cw__followup_id("m-1", 1, id);
    assert_string_equal(id, "661af362-2d0a-5470-8097-3819d2e56111");
}

static void send_queues_a_followup(void **state)
{
    (void)state;
    cw_task *t = new_task("m-1", "saga-7");
    assert_int_equal(cw_task_send(t, "events", "payment.refunded", "payment.refunded",
                                  "{\"order_id\":\"o-1\"}", 0),
                     0);
    assert_int_equal(cw_task_send(t, "", "orchestrator", "saga.step_done", "{}", 2), 0);
    assert_int_equal(t->n_sends, 2);
    assert_string_equal(t->sends[0].message_id, "787f6fee-c991-5426-9879-de4ad4d0682a");
    assert_string_equal(t->sends[1].message_id, "661af362-2d0a-5470-8097-3819d2e56111");
    assert_string_equal(t->sends[0].exchange, "events");
    assert_string_equal(t->sends[0].routing_key, "payment.refunded");
    assert_string_equal(t->sends[0].type, "payment.refunded");
    assert_string_equal(t->sends[0].saga_id, "saga-7");
    assert_int_equal(t->sends[0].len, strlen("{\"order_id\":\"o-1\"}"));
    assert_memory_equal(t->sends[0].body, "{\"order_id\":\"o-1\"}", t->sends[0].len);
    assert_string_equal(t->sends[1].exchange, "");
    assert_string_equal(t->send_error, "");
    /* An outcome other than done drops them. */
    cw__task_drop_sends(t);
    assert_int_equal(t->n_sends, 0);
    assert_int_equal(t->send_bytes, 0);
    free_task(t);
}

static void no_saga_no_correlation(void **state)
{
    (void)state;
    cw_task *t = new_task("m-1", "");
    assert_int_equal(cw_task_send(t, "", "q", "x.y", "{}", 0), 0);
    assert_null(t->sends[0].saga_id);
    free_task(t);
}

static void bad_arguments_refused(void **state)
{
    (void)state;
    char long_key[300];
    memset(long_key, 'k', sizeof long_key - 1);
    long_key[sizeof long_key - 1] = '\0';
    struct {
        const char *exchange, *rk, *type, *body, *why;
    } bad[] = {
        {NULL, "q", "t", "{}", "exchange"},
        {"", NULL, "t", "{}", "routing_key"},
        {"", long_key, "t", "{}", "routing_key"},
        {long_key, "q", "t", "{}", "exchange"},
        {"", "q", NULL, "{}", "type"},
        {"", "q", "bad type", "{}", "type"},
        {"", "q", "t", NULL, "body"},
        {"", "q", "t", "[1,2]", "JSON object"},
        {"", "q", "t", "{\"a\":NaN}", "JSON object"},
        {"", "q", "t", "{\"a\":1", "JSON object"},
    };
    for (size_t i = 0; i < sizeof bad / sizeof *bad; i++) {
        cw_task *t = new_task("m-1", "s");
        int rc = cw_task_send(t, bad[i].exchange, bad[i].rk, bad[i].type, bad[i].body, 0);
        assert_int_equal(rc, CW_STATUS_INVALID_ARG);
        if (!strstr(cw_error_last(), bad[i].why))
            fail_msg("case %zu: '%s' does not name %s", i, cw_error_last(), bad[i].why);
        /* The task fails with the reason, whatever its handler returns. */
        assert_non_null(strstr(t->send_error, bad[i].why));
        assert_int_equal(t->n_sends, 0);
        free_task(t);
    }
    assert_int_equal(cw_task_send(NULL, "", "q", "t", "{}", 0), CW_STATUS_INVALID_ARG);
}

static void bounded_in_count(void **state)
{
    (void)state;
    cw_task *t = new_task("m-1", "s");
    for (int i = 0; i < CW_TASK_SEND_MAX; i++)
        assert_int_equal(cw_task_send(t, "", "q", "t", "{}", 0), 0);
    assert_int_equal(cw_task_send(t, "", "q", "t", "{}", 0), CW_STATUS_TOO_LARGE);
    assert_non_null(strstr(cw_error_last(), "CW_TASK_SEND_MAX"));
    assert_non_null(strstr(t->send_error, "follow-up 17"));
    assert_int_equal(t->n_sends, CW_TASK_SEND_MAX);
    free_task(t);
}

static void bounded_in_bytes(void **state)
{
    (void)state;
    cw_task *t = new_task("m-1", "s");
    size_t half = CW_TASK_SEND_BYTES_MAX / 2;
    char *body = malloc(half + 1);
    assert_non_null(body);
    memset(body, ' ', half);
    body[0] = '{';
    body[half - 1] = '}';
    body[half] = '\0';
    assert_int_equal(cw_task_send(t, "", "q", "t", body, half), 0);
    assert_int_equal(cw_task_send(t, "", "q", "t", body, half), 0);
    assert_int_equal(cw_task_send(t, "", "q", "t", "{}", 0), CW_STATUS_TOO_LARGE);
    assert_non_null(strstr(cw_error_last(), "CW_TASK_SEND_BYTES_MAX"));
    assert_int_equal(t->n_sends, 2);
    assert_int_equal(t->send_bytes, 2 * half);
    free(body);
    free_task(t);
}

/* Without a store transaction (the memory backend, or outside a worker). */
static void no_transaction_without_a_database(void **state)
{
    (void)state;
    cw_task *t = new_task("m-1", "s");
    assert_null(cw_task_sqlite(t));
    assert_non_null(strstr(cw_error_last(), "not sqlite"));
    assert_null(cw_task_pg(t));
    assert_non_null(strstr(cw_error_last(), "not postgresql"));
    assert_null(cw_task_pg(NULL));
    free_task(t);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(followup_ids_are_uuid5),
        cmocka_unit_test(send_queues_a_followup),
        cmocka_unit_test(no_saga_no_correlation),
        cmocka_unit_test(bad_arguments_refused),
        cmocka_unit_test(bounded_in_count),
        cmocka_unit_test(bounded_in_bytes),
        cmocka_unit_test(no_transaction_without_a_database),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
