/* Unit tests for framework/registry.c: registering and finding handlers,
 * type-name rules, teardown registration and plugin settings. */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>

#include <stdbool.h>
#include <stdio.h>
#include <string.h>

#include "compworker/compworker.h"
#include "framework/registry.h"

static int calls_a, calls_b;

static cw_outcome handler_a(cw_task *task, void *user_data)
{
    (void)task;
    (void)user_data;
    calls_a++;
    return CW_OK;
}

static cw_outcome handler_b(cw_task *task, void *user_data)
{
    (void)task;
    (void)user_data;
    calls_b++;
    return CW_RETRY;
}

static void teardown_fn(void *user_data)
{
    (void)user_data;
}

static int setup_reg(void **state)
{
    cw_registry *reg = NULL;
    if (cw_registry_new(&reg) != 0 || !reg)
        return -1;
    *state = reg;
    return 0;
}

static int teardown_reg(void **state)
{
    cw_registry_free(*state);
    return 0;
}

static const cw_handler_entry *find(const cw_registry *reg, const char *type)
{
    return cw_registry_find(reg, type, strlen(type));
}

static void assert_error_mentions(const char *needle)
{
    const char *msg = cw_error_last();
    if (!strstr(msg, needle))
        fail_msg("cw_error_last() '%s' does not mention '%s'", msg, needle);
}

static void test_new_is_empty(void **state)
{
    cw_registry *reg = *state;
    assert_int_equal(reg->n_handlers, 0);
    assert_null(reg->plugins);
    assert_null(find(reg, "payment.refund"));
}

static void test_register_and_find(void **state)
{
    cw_registry *reg = *state;
    int ud_a = 1, ud_b = 2;

    assert_int_equal(cw_register_handler(reg, "payment.refund", handler_a, &ud_a), 0);
    assert_int_equal(cw_register_handler(reg, "stock.restock", handler_b, &ud_b), 0);
    assert_int_equal(reg->n_handlers, 2);

    const cw_handler_entry *h = find(reg, "payment.refund");
    assert_non_null(h);
    assert_string_equal(h->type, "payment.refund");
    assert_ptr_equal(h->fn, handler_a);
    assert_ptr_equal(h->user_data, &ud_a);
    assert_null(h->plugin); /* registered by the program, not a plugin */

    h = find(reg, "stock.restock");
    assert_non_null(h);
    assert_ptr_equal(h->fn, handler_b);
    assert_ptr_equal(h->user_data, &ud_b);

    /* The handler is the one that runs. */
    calls_a = calls_b = 0;
    assert_int_equal(find(reg, "stock.restock")->fn(NULL, NULL), CW_RETRY);
    assert_int_equal(calls_a, 0);
    assert_int_equal(calls_b, 1);

    assert_null(find(reg, "payment.refunds"));
    assert_null(find(reg, "Payment.refund")); /* case matters */
}

static void test_find_uses_length(void **state)
{
    cw_registry *reg = *state;
    assert_int_equal(cw_register_handler(reg, "test.ok", handler_a, NULL), 0);

    /* The type comes from an AMQP property: not NUL-terminated. */
    const char buf[] = "test.okay";
    const cw_handler_entry *h = cw_registry_find(reg, buf, 7);
    assert_non_null(h);
    assert_string_equal(h->type, "test.ok");

    assert_null(cw_registry_find(reg, buf, 9)); /* "test.okay" */
    assert_null(cw_registry_find(reg, buf, 4)); /* "test", a prefix */
    assert_null(cw_registry_find(reg, buf, 0));
}

static void test_type_copied(void **state)
{
    cw_registry *reg = *state;
    char type[] = "order.cancel";
    assert_int_equal(cw_register_handler(reg, type, handler_a, NULL), 0);
    memcpy(type, "xxxxx", 5);
    assert_non_null(find(reg, "order.cancel"));
    assert_null(find(reg, type));
}

static void test_duplicate_type(void **state)
{
    cw_registry *reg = *state;
    assert_int_equal(cw_register_handler(reg, "payment.refund", handler_a, NULL), 0);
    assert_int_equal(cw_register_handler(reg, "payment.refund", handler_b, NULL), CW_STATUS_EXISTS);
    assert_error_mentions("'payment.refund'");
    assert_error_mentions("the program");

    /* The first registration wins and stays whole. */
    assert_int_equal(reg->n_handlers, 1);
    assert_ptr_equal(find(reg, "payment.refund")->fn, handler_a);
}

static void test_many_handlers(void **state)
{
    cw_registry *reg = *state;
    char type[32];
    /* Past the first growth of the array (8) a few times. */
    for (int i = 0; i < 50; i++) {
        snprintf(type, sizeof type, "type.%d", i);
        assert_int_equal(cw_register_handler(reg, type, handler_a, NULL), 0);
    }
    assert_int_equal(reg->n_handlers, 50);
    for (int i = 0; i < 50; i++) {
        snprintf(type, sizeof type, "type.%d", i);
        const cw_handler_entry *h = find(reg, type);
        assert_non_null(h);
        assert_string_equal(h->type, type);
    }
}

static void invalid_type(cw_registry *reg, const char *type, const char *label)
{
    size_t before = reg->n_handlers;
    int rc = cw_register_handler(reg, type, handler_a, NULL);
    if (rc != CW_STATUS_INVALID_ARG)
        fail_msg("type %s: got %d (%s), want INVALID_ARG", label, rc, cw_status_name(rc));
    assert_int_equal(reg->n_handlers, before);
    assert_error_mentions("[A-Za-z0-9._:-]");
}

static void test_invalid_types(void **state)
{
    cw_registry *reg = *state;
    char long_type[257];

    invalid_type(reg, "", "empty");
    memset(long_type, 'a', 256);
    long_type[256] = '\0';
    invalid_type(reg, long_type, "256 chars");
    invalid_type(reg, "payment refund", "with a space");
    invalid_type(reg, " payment.refund", "leading space");
    invalid_type(reg, "payment.refund\n", "trailing newline");
    invalid_type(reg, "payment.#", "with '#'");
    invalid_type(reg, "payment.*", "with '*'");
    invalid_type(reg, "payment/refund", "with '/'");
    invalid_type(reg, "paym\xc3\xa9nt", "non-ASCII");
    assert_int_equal(reg->n_handlers, 0);

    /* The boundaries that are allowed. */
    long_type[255] = '\0';
    assert_int_equal(cw_register_handler(reg, long_type, handler_a, NULL), 0);
    assert_int_equal(cw_register_handler(reg, "x", handler_a, NULL), 0);
    assert_int_equal(cw_register_handler(reg, "A-z_0.9:x", handler_a, NULL), 0);
    assert_non_null(find(reg, long_type));
    assert_non_null(find(reg, "A-z_0.9:x"));
}

static void test_type_valid(void **state)
{
    (void)state;
    assert_true(cw__type_valid("payment.refund", 14));
    assert_true(cw__type_valid("a", 1));
    assert_false(cw__type_valid("", 0));
    assert_false(cw__type_valid("a b", 3));
    assert_false(cw__type_valid("ab\0c", 4)); /* a NUL inside the length */
    assert_true(cw__type_valid("ab\0c", 2));
}

static void test_null_args(void **state)
{
    cw_registry *reg = *state;
    assert_int_equal(cw_register_handler(NULL, "a.b", handler_a, NULL), CW_STATUS_INVALID_ARG);
    assert_int_equal(cw_register_handler(reg, NULL, handler_a, NULL), CW_STATUS_INVALID_ARG);
    assert_int_equal(cw_register_handler(reg, "a.b", NULL, NULL), CW_STATUS_INVALID_ARG);
    assert_error_mentions("NULL");
    assert_int_equal(reg->n_handlers, 0);

    assert_int_equal(cw_register_teardown(NULL, teardown_fn, NULL), CW_STATUS_INVALID_ARG);
    assert_int_equal(cw_register_teardown(reg, NULL, NULL), CW_STATUS_INVALID_ARG);

    cw_registry_free(NULL); /* accepted */
}

static void test_teardown_outside_plugin(void **state)
{
    cw_registry *reg = *state;
    /* Only a plugin, from cw_plugin_init(), has a teardown. */
    assert_int_equal(cw_register_teardown(reg, teardown_fn, NULL), CW_STATUS_INVALID_ARG);
    assert_error_mentions("cw_plugin_init");
}

static void test_setting_fallbacks(void **state)
{
    cw_registry *reg = *state;
    static const char fb[] = "fallback";

    /* NULL registry or key, or no plugin loading: the fallback. */
    assert_ptr_equal(cw_registry_setting(NULL, "k", fb), fb);
    assert_ptr_equal(cw_registry_setting(reg, NULL, fb), fb);
    assert_ptr_equal(cw_registry_setting(reg, "k", fb), fb);
    assert_null(cw_registry_setting(reg, "k", NULL));

    char good[] = "good", other[] = "other", k[] = "k", url[] = "url";
    char v1[] = "v-good", v2[] = "v-other", v3[] = "https://ledger";
    cw_plugin_setting s[] = {
        {other, k, v2},
        {good, k, v1},
        {good, url, v3},
    };
    cw_registry_use_settings(reg, s, 3);

    /* Not during a plugin's init: still the fallback, whatever is set. */
    assert_ptr_equal(cw_registry_setting(reg, "k", fb), fb);

    /* As if plugin "good" were in cw_plugin_init(). */
    static const cw_plugin_info info = {CW_ABI_VERSION, "good", "1.0"};
    cw_plugin p = {.path = good, .info = &info};
    reg->loading = &p;
    assert_string_equal(cw_registry_setting(reg, "k", fb), "v-good"); /* not "other"'s */
    assert_string_equal(cw_registry_setting(reg, "url", NULL), "https://ledger");
    assert_ptr_equal(cw_registry_setting(reg, "missing", fb), fb);
    assert_null(cw_registry_setting(reg, "missing", NULL));
    assert_ptr_equal(cw_registry_setting(reg, "K", fb), fb); /* keys are exact */

    /* A plugin with no settings at all. */
    static const cw_plugin_info info3 = {CW_ABI_VERSION, "third", "1.0"};
    p.info = &info3;
    assert_ptr_equal(cw_registry_setting(reg, "k", fb), fb);

    /* No settings handed over. */
    p.info = &info;
    cw_registry_use_settings(reg, NULL, 0);
    assert_ptr_equal(cw_registry_setting(reg, "k", fb), fb);
    reg->loading = NULL;
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_new_is_empty, setup_reg, teardown_reg),
        cmocka_unit_test_setup_teardown(test_register_and_find, setup_reg, teardown_reg),
        cmocka_unit_test_setup_teardown(test_find_uses_length, setup_reg, teardown_reg),
        cmocka_unit_test_setup_teardown(test_type_copied, setup_reg, teardown_reg),
        cmocka_unit_test_setup_teardown(test_duplicate_type, setup_reg, teardown_reg),
        cmocka_unit_test_setup_teardown(test_many_handlers, setup_reg, teardown_reg),
        cmocka_unit_test_setup_teardown(test_invalid_types, setup_reg, teardown_reg),
        cmocka_unit_test(test_type_valid),
        cmocka_unit_test_setup_teardown(test_null_args, setup_reg, teardown_reg),
        cmocka_unit_test_setup_teardown(test_teardown_outside_plugin, setup_reg, teardown_reg),
        cmocka_unit_test_setup_teardown(test_setting_fallbacks, setup_reg, teardown_reg),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
