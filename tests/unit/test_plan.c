/* Unit tests of saga compensation plans' validation (saga/plan.c): good
 * plans read whole (stages, parallel steps, deadline, bodies), and a
 * hostile corpus refused with a reason naming what is wrong: deep, huge,
 * cyclic-looking, wrong types, unknown step types, too many steps. */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "compworker/status.h"
#include "saga/plan.h"

static bool known(const char *type, void *ud)
{
    (void)ud;
    return strcmp(type, "shipment.cancel") == 0 || strcmp(type, "inventory.restock") == 0 ||
           strcmp(type, "payment.refund") == 0 || strcmp(type, "loyalty.revoke") == 0;
}

static int parse(const char *text, cw_plan *p, char *why, size_t cap)
{
    return cw_plan_parse(text, strlen(text), known, NULL, p, why, cap);
}

static void test_good_plan(void **state)
{
    (void)state;
    const char *text =
        "{\"steps\":[{\"type\":\"shipment.cancel\",\"body\":{\"shipment_id\":\"s-1\"}},"
        "[{\"type\":\"inventory.restock\",\"body\":{\"sku\":\"A\",\"qty\":2}},"
        "{\"type\":\"loyalty.revoke\",\"body\":{}}],"
        "{\"type\":\"payment.refund\",\"body\":{\"payment_id\":\"p-1\",\"amount_cents\":1200}}],"
        "\"deadline\":\"30m\"}";
    cw_plan p;
    char why[256];
    assert_int_equal(parse(text, &p, why, sizeof why), 0);
    assert_int_equal(p.n_stages, 3);
    assert_int_equal(p.n_steps, 4);
    assert_int_equal(p.deadline_ms, 30 * 60 * 1000);
    assert_int_equal(p.stages[0].n_steps, 1);
    assert_string_equal(p.stages[0].steps[0].type, "shipment.cancel");
    assert_string_equal(p.stages[0].steps[0].body, "{\"shipment_id\":\"s-1\"}");
    assert_int_equal(p.stages[1].n_steps, 2);
    assert_string_equal(p.stages[1].steps[1].type, "loyalty.revoke");
    assert_string_equal(p.stages[2].steps[0].body,
                        "{\"payment_id\":\"p-1\",\"amount_cents\":1200}");
    cw_plan_free(&p);

    /* No deadline; any known type when no checker is given. */
    text = "{\"steps\":[{\"type\":\"other.thing\",\"body\":{}}]}";
    assert_int_equal(cw_plan_parse(text, strlen(text), NULL, NULL, &p, why, sizeof why), 0);
    assert_int_equal(p.deadline_ms, 0);
    cw_plan_free(&p);
}

static void test_step_ids(void **state)
{
    (void)state;
    char a[37], b[37], c[37], d[37];
    cw_plan_step_id("plan-1", 0, 0, a);
    cw_plan_step_id("plan-1", 0, 0, b);
    cw_plan_step_id("plan-1", 0, 1, c);
    cw_plan_step_id("plan-2", 0, 0, d);
    assert_string_equal(a, b); /* derived: the same every time */
    assert_string_not_equal(a, c);
    assert_string_not_equal(a, d);
    assert_int_equal(strlen(a), 36);
    /* "1.11" and "11.1" are other positions, not one name. */
    cw_plan_step_id("p", 1, 11, a);
    cw_plan_step_id("p", 11, 1, b);
    assert_string_not_equal(a, b);
}

/* Every entry: a plan body and what its refusal must say. */
typedef struct bad {
    const char *text;
    const char *says;
} bad;

static char *repeat(const char *head, const char *unit, size_t n, const char *tail)
{
    size_t len = strlen(head) + strlen(unit) * n + strlen(tail) + 1;
    char *s = malloc(len), *o = s;
    o += sprintf(o, "%s", head);
    for (size_t i = 0; i < n; i++)
        o += sprintf(o, "%s", unit);
    sprintf(o, "%s", tail);
    return s;
}

static void expect_refused(const char *text, const char *says)
{
    cw_plan p;
    char why[512];
    int rc = parse(text, &p, why, sizeof why);
    if (rc != CW_STATUS_INVALID_ARG)
        fail_msg("accepted (rc %d): %.200s", rc, text);
    if (!strstr(why, says))
        fail_msg("the reason '%s' does not say '%s' for %.200s", why, says, text);
    assert_null(p.stages); /* nothing of it kept */
}

static void test_hostile_plans(void **state)
{
    (void)state;
    static const bad corpus[] = {
        {"[]", "not an object"},
        {"\"steps\"", "not an object"},
        {"{}", "\"steps\" is missing"},
        {"{\"steps\":{}}", "not an array"},
        {"{\"steps\":[]}", "0 stages"},
        {"{\"steps\":[1]}", "step 1: is a JSON int"},
        {"{\"steps\":[null]}", "step 1: is a JSON null"},
        {"{\"steps\":[\"shipment.cancel\"]}", "step 1: is a JSON string"},
        {"{\"steps\":[{\"type\":\"shipment.cancel\"}]}", "\"body\" is missing"},
        {"{\"steps\":[{\"body\":{}}]}", "\"type\" is missing"},
        {"{\"steps\":[{\"type\":7,\"body\":{}}]}", "\"type\" is missing or not a string"},
        {"{\"steps\":[{\"type\":\"bad type\",\"body\":{}}]}", "not 1 to 255"},
        {"{\"steps\":[{\"type\":\"\",\"body\":{}}]}", "not 1 to 255"},
        {"{\"steps\":[{\"type\":\"payment.refnd\",\"body\":{}}]}", "unknown type 'payment.refnd'"},
        {"{\"steps\":[{\"type\":\"payment.refund\",\"body\":[1]}]}", "\"body\" is a JSON array"},
        {"{\"steps\":[{\"type\":\"payment.refund\",\"body\":\"{}\"}]}",
         "\"body\" is a JSON string"},
        {"{\"steps\":[{\"type\":\"payment.refund\",\"body\":{},\"retries\":3}]}",
         "unknown key 'retries'"},
        {"{\"steps\":[{\"type\":\"cw.saga.plan\",\"body\":{}}]}", "a step cannot be a plan"},
        {"{\"steps\":[[]]}", "stage 1: has 0 steps"},
        {"{\"steps\":[[[{\"type\":\"payment.refund\",\"body\":{}}]]]}", "step 1.1: is an array"},
        {"{\"steps\":[{\"type\":\"payment.refund\",\"body\":{}}],\"deadline\":30}",
         "\"deadline\" is not a duration"},
        {"{\"steps\":[{\"type\":\"payment.refund\",\"body\":{}}],\"deadline\":\"soon\"}",
         "\"deadline\" is not a duration"},
        {"{\"steps\":[{\"type\":\"payment.refund\",\"body\":{}}],\"deadline\":\"365d\"}",
         "\"deadline\" is not a duration"},
        {"{\"steps\":[{\"type\":\"payment.refund\",\"body\":{}}],\"deadline\":\"0s\"}",
         "\"deadline\" is not a duration"},
        {"{\"steps\":[{\"type\":\"payment.refund\",\"body\":{}}],\"then\":\"steps\"}",
         "unknown key 'then'"},
        /* cyclic-looking: a step whose body names the plan and itself */
        {"{\"steps\":[{\"type\":\"payment.refund\",\"body\":{}},{\"type\":\"cw.saga.plan\","
         "\"body\":{\"steps\":[{\"type\":\"payment.refund\",\"body\":{}}]}}]}",
         "step 2: a step cannot be a plan"},
        /* a bad step after good ones: nothing of the plan is kept */
        {"{\"steps\":[{\"type\":\"payment.refund\",\"body\":{}},[{\"type\":\"loyalty.revoke\","
         "\"body\":{}},{\"type\":\"nope\",\"body\":{}}]]}",
         "step 2.2: unknown type 'nope'"},
    };
    for (size_t i = 0; i < sizeof corpus / sizeof *corpus; i++)
        expect_refused(corpus[i].text, corpus[i].says);

    /* too many stages, steps in a stage, steps in all; a huge body */
    char *s = repeat("{\"steps\":[", "{\"type\":\"payment.refund\",\"body\":{}},", 64,
                     "{\"type\":\"payment.refund\",\"body\":{}}]}");
    expect_refused(s, "65 stages");
    free(s);
    s = repeat("{\"steps\":[[", "{\"type\":\"payment.refund\",\"body\":{}},", 16,
               "{\"type\":\"payment.refund\",\"body\":{}}]]}");
    expect_refused(s, "has 17 steps");
    free(s);
    char *stage = repeat("[", "{\"type\":\"payment.refund\",\"body\":{}},", 15,
                         "{\"type\":\"payment.refund\",\"body\":{}}],");
    s = repeat("{\"steps\":[", stage, 16, "{\"type\":\"payment.refund\",\"body\":{}}]}");
    expect_refused(s, "more than 256 steps");
    free(s);
    free(stage);
    char *big = repeat("{\"steps\":[{\"type\":\"payment.refund\",\"body\":{\"x\":\"", "abcdefgh",
                       9000, "\"}}]}");
    expect_refused(big, "more than 65536");
    free(big);
    /* deep: nesting inside a body is refused by the parser's depth limit */
    char *deep = repeat("{\"steps\":[{\"type\":\"payment.refund\",\"body\":", "{\"a\":", 200, "1");
    char *tail = repeat(deep, "}", 200, "}]}");
    expect_refused(tail, "nesting too deep");
    free(deep);
    free(tail);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_good_plan),
        cmocka_unit_test(test_step_ids),
        cmocka_unit_test(test_hostile_plans),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
