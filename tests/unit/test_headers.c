/* The public headers together in one translation unit, in the order an
 * embedding program would include them, each one twice (include guards).
 * That each header also compiles alone, with -pedantic -Werror, is checked by
 * tests/harness/header_check.sh. */
#include <compworker/compworker.h>
#include <compworker/client.h>
#include <compworker/status.h>
#include <compworker/version.h>
#include <compworker/export.h>
#include <compworker/compworker.h>
#include <compworker/client.h>

#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>

#include <stdio.h>
#include <string.h>

/* What a plugin author writes compiles as documented. */
static cw_outcome handler(cw_task *task, void *user_data)
{
    (void)user_data;
    return cw_task_fail(task, "unknown payment %s", "p-1");
}

static void test_public_api_visible(void **state)
{
    (void)state;
    cw_handler_fn fn = handler;
    cw_teardown_fn td = NULL;
    cw_publish_opts o = CW_PUBLISH_OPTS_INIT;
    assert_non_null(fn);
    assert_null(td);
    assert_int_equal(o.version, CW_PUBLISH_OPTS_VERSION);
    assert_null(o.type);
    assert_int_equal(o.confirm_timeout_ms, 0);
    assert_int_equal(CW_OK, 0);
    assert_int_not_equal(CW_RETRY, CW_FAIL);
    assert_int_equal(CW_MESSAGE_ID_MAX, 128);
    assert_string_equal(cw_version(), CW_VERSION_STRING);
    assert_true(CW_ABI_VERSION >= 1);
    assert_string_equal(cw_status_name(CW_STATUS_ABI_MISMATCH), "ABI_MISMATCH");
    char v[32];
    snprintf(v, sizeof v, "%d.%d.%d", CW_VERSION_MAJOR, CW_VERSION_MINOR, CW_VERSION_PATCH);
    assert_string_equal(v, CW_VERSION_STRING);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_public_api_visible),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
