/* Unit tests for framework/plugin.c: loading real test plugins (built from
 * tests/plugins/) and every way the loader must refuse one. */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "compworker/compworker.h"
#include "framework/registry.h"
#include "framework/task.h"

#define PLUGIN(name) CW_TEST_PLUGIN_DIR "/" name ".so"

static int setup_reg(void **state)
{
    cw_registry *reg = NULL;
    if (cw_registry_new(&reg) != 0)
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

static size_t count_plugins(const cw_registry *reg)
{
    size_t n = 0;
    for (const cw_plugin *p = reg->plugins; p; p = p->next)
        n++;
    return n;
}

static void expect_load(cw_registry *reg, const char *path, int want)
{
    int rc = cw_plugin_load(reg, path);
    if (rc != want)
        fail_msg("loading %s: got %d (%s), want %s; cw_error_last: %s", path, rc,
                 cw_status_name(rc), cw_status_name(want), cw_error_last());
}

static void test_load_good(void **state)
{
    cw_registry *reg = *state;
    expect_load(reg, PLUGIN("good_plugin"), 0);

    assert_int_equal(count_plugins(reg), 1);
    const cw_plugin *p = reg->plugins;
    assert_string_equal(p->path, PLUGIN("good_plugin"));
    assert_non_null(p->info);
    assert_int_equal(p->info->abi_version, CW_ABI_VERSION);
    assert_string_equal(p->info->name, "good");
    assert_string_equal(p->info->version, "1.2.3");
    assert_non_null(p->teardown);

    assert_int_equal(reg->n_handlers, 3);
    const char *types[] = {"test.ok", "test.fail", "test.retry"};
    for (size_t i = 0; i < 3; i++) {
        const cw_handler_entry *h = find(reg, types[i]);
        if (!h)
            fail_msg("handler for %s not registered", types[i]);
        assert_ptr_equal(h->plugin, p);
    }
    assert_null(reg->loading);
}

static void test_good_handlers_run(void **state)
{
    cw_registry *reg = *state;
    expect_load(reg, PLUGIN("good_plugin"), 0);
    cw_task t;
    memset(&t, 0, sizeof t);

    const cw_handler_entry *h = find(reg, "test.ok");
    assert_non_null(h);
    assert_int_equal(h->fn(&t, h->user_data), CW_OK);
    assert_string_equal(t.reason, "");

    h = find(reg, "test.fail");
    assert_non_null(h);
    assert_int_equal(h->fn(&t, h->user_data), CW_FAIL);
    assert_int_equal(t.outcome, CW_FAIL);
    assert_string_equal(t.error_class, "permanent");
    assert_string_equal(t.reason, "no such payment p-9");
    cw__task_reset(&t);

    h = find(reg, "test.retry");
    assert_non_null(h);
    assert_int_equal(h->fn(&t, h->user_data), CW_RETRY);
    assert_int_equal(t.outcome, CW_RETRY);
    assert_string_equal(t.error_class, "transient");
    assert_string_equal(t.reason, "ledger unavailable (attempt 1)");
    cw__task_reset(&t);
}

static void test_wrong_abi(void **state)
{
    cw_registry *reg = *state;
    char want[64];
    expect_load(reg, PLUGIN("wrong_abi_plugin"), CW_STATUS_ABI_MISMATCH);
    assert_error_mentions(PLUGIN("wrong_abi_plugin"));
    snprintf(want, sizeof want, "ABI version %d", CW_ABI_VERSION + 1);
    assert_error_mentions(want);
    snprintf(want, sizeof want, "ABI version %d", CW_ABI_VERSION);
    assert_error_mentions(want);
    /* Refused before its init could run. */
    assert_null(find(reg, "test.wrongabi"));
    assert_int_equal(reg->n_handlers, 0);
    assert_int_equal(count_plugins(reg), 0);
}

static void test_no_init(void **state)
{
    cw_registry *reg = *state;
    expect_load(reg, PLUGIN("no_init_plugin"), CW_STATUS_PLUGIN);
    assert_error_mentions(PLUGIN("no_init_plugin"));
    assert_error_mentions("cw_plugin_init");
    assert_int_equal(count_plugins(reg), 0);
}

static void test_no_info(void **state)
{
    cw_registry *reg = *state;
    expect_load(reg, PLUGIN("no_info_plugin"), CW_STATUS_PLUGIN);
    assert_error_mentions(PLUGIN("no_info_plugin"));
    assert_error_mentions("cw_plugin_info_v1");
    assert_null(find(reg, "test.noinfo"));
    assert_int_equal(count_plugins(reg), 0);
}

static void test_nonexistent(void **state)
{
    cw_registry *reg = *state;
    expect_load(reg, PLUGIN("does_not_exist"), CW_STATUS_PLUGIN);
    assert_error_mentions(PLUGIN("does_not_exist"));
    assert_int_equal(count_plugins(reg), 0);
}

static void test_not_a_shared_object(void **state)
{
    cw_registry *reg = *state;
    char path[] = "/tmp/cw_test_notso_XXXXXX";
    int fd = mkstemp(path);
    assert_true(fd >= 0);
    assert_int_equal(write(fd, "not an ELF file\n", 16), 16);
    close(fd);
    expect_load(reg, path, CW_STATUS_PLUGIN);
    assert_error_mentions(path);
    unlink(path);
    assert_int_equal(count_plugins(reg), 0);
}

static void test_failing_init(void **state)
{
    cw_registry *reg = *state;
    expect_load(reg, PLUGIN("failing_init_plugin"), CW_STATUS_PLUGIN);
    assert_error_mentions(PLUGIN("failing_init_plugin"));
    assert_error_mentions("returned -1");
    assert_null(find(reg, "test.partial"));
    assert_int_equal(reg->n_handlers, 0);
    assert_int_equal(count_plugins(reg), 0);
    assert_null(reg->loading);

    /* The registry is still usable. */
    expect_load(reg, PLUGIN("good_plugin"), 0);
    assert_non_null(find(reg, "test.ok"));
    assert_null(find(reg, "test.partial"));
}

static void test_failing_init_keeps_others(void **state)
{
    cw_registry *reg = *state;
    expect_load(reg, PLUGIN("good_plugin"), 0);
    expect_load(reg, PLUGIN("failing_init_plugin"), CW_STATUS_PLUGIN);
    /* Dropping the refused plugin's handlers leaves the others whole. */
    assert_int_equal(reg->n_handlers, 3);
    assert_non_null(find(reg, "test.ok"));
    assert_non_null(find(reg, "test.fail"));
    assert_non_null(find(reg, "test.retry"));
    assert_null(find(reg, "test.partial"));
    assert_int_equal(count_plugins(reg), 1);
}

static void test_dup_type(void **state)
{
    cw_registry *reg = *state;
    expect_load(reg, PLUGIN("good_plugin"), 0);
    const cw_handler_entry *before = find(reg, "test.ok");
    assert_non_null(before);
    cw_handler_fn good_fn = before->fn;

    int rc = cw_plugin_load(reg, PLUGIN("dup_type_plugin"));
    if (rc != CW_STATUS_EXISTS && rc != CW_STATUS_PLUGIN)
        fail_msg("dup plugin: got %d (%s), want EXISTS or PLUGIN", rc, cw_status_name(rc));
    assert_error_mentions(PLUGIN("dup_type_plugin"));
    assert_error_mentions("test.ok");

    const cw_handler_entry *h = find(reg, "test.ok");
    assert_non_null(h);
    assert_ptr_equal(h->fn, good_fn);
    assert_string_equal(h->plugin->info->name, "good");
    assert_int_equal(reg->n_handlers, 3);
    assert_int_equal(count_plugins(reg), 1);

    /* And it is still good's handler that runs. */
    cw_task t;
    memset(&t, 0, sizeof t);
    assert_int_equal(h->fn(&t, h->user_data), CW_OK);
    assert_string_equal(t.reason, "");
}

static void test_loaded_twice(void **state)
{
    cw_registry *reg = *state;
    expect_load(reg, PLUGIN("good_plugin"), 0);
    int rc = cw_plugin_load(reg, PLUGIN("good_plugin"));
    assert_true(rc < 0);
    if (rc != CW_STATUS_EXISTS)
        fail_msg("second load: got %d (%s), want EXISTS", rc, cw_status_name(rc));
    assert_error_mentions("'good'");
    assert_int_equal(count_plugins(reg), 1);
    assert_int_equal(reg->n_handlers, 3);
    assert_non_null(find(reg, "test.ok"));
}

static void test_teardown_at_free(void **state)
{
    (void)state;
    char dir[] = "/tmp/cw_test_plugin_XXXXXX";
    assert_non_null(mkdtemp(dir));
    char marker[sizeof dir + 16];
    snprintf(marker, sizeof marker, "%s/marker", dir);

    char plugin[] = "good", key[] = "marker";
    cw_plugin_setting s[] = {{plugin, key, marker}};

    cw_registry *reg = NULL;
    assert_int_equal(cw_registry_new(&reg), 0);
    cw_registry_use_settings(reg, s, 1);
    expect_load(reg, PLUGIN("good_plugin"), 0);

    struct stat st;
    assert_int_equal(stat(marker, &st), -1); /* not before the registry goes */
    cw_registry_free(reg);
    if (stat(marker, &st) != 0)
        fail_msg("teardown did not write %s", marker);

    FILE *f = fopen(marker, "r");
    assert_non_null(f);
    char line[64] = "";
    assert_non_null(fgets(line, sizeof line, f));
    fclose(f);
    assert_string_equal(line, "good teardown\n");

    unlink(marker);
    rmdir(dir);
}

static void test_teardown_without_setting(void **state)
{
    /* No [plugin good] marker: the teardown runs and writes nothing. */
    cw_registry *reg = *state;
    expect_load(reg, PLUGIN("good_plugin"), 0);
    assert_non_null(reg->plugins->teardown);
    assert_null(reg->plugins->teardown_data);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_load_good, setup_reg, teardown_reg),
        cmocka_unit_test_setup_teardown(test_good_handlers_run, setup_reg, teardown_reg),
        cmocka_unit_test_setup_teardown(test_wrong_abi, setup_reg, teardown_reg),
        cmocka_unit_test_setup_teardown(test_no_init, setup_reg, teardown_reg),
        cmocka_unit_test_setup_teardown(test_no_info, setup_reg, teardown_reg),
        cmocka_unit_test_setup_teardown(test_nonexistent, setup_reg, teardown_reg),
        cmocka_unit_test_setup_teardown(test_not_a_shared_object, setup_reg, teardown_reg),
        cmocka_unit_test_setup_teardown(test_failing_init, setup_reg, teardown_reg),
        cmocka_unit_test_setup_teardown(test_failing_init_keeps_others, setup_reg, teardown_reg),
        cmocka_unit_test_setup_teardown(test_dup_type, setup_reg, teardown_reg),
        cmocka_unit_test_setup_teardown(test_loaded_twice, setup_reg, teardown_reg),
        cmocka_unit_test(test_teardown_at_free),
        cmocka_unit_test_setup_teardown(test_teardown_without_setting, setup_reg, teardown_reg),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
