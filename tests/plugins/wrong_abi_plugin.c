/* Test plugin: declares an ABI version this compworker does not have. The
 * loader must refuse it before calling anything in it. */
#include <compworker/compworker.h>

CW_EXTERN const cw_plugin_info cw_plugin_info_v1 = {CW_ABI_VERSION + 1, "wrongabi", "0.1"};

static cw_outcome handle(cw_task *task, void *user_data)
{
    (void)task;
    (void)user_data;
    return CW_OK;
}

int cw_plugin_init(cw_registry *reg)
{
    /* Never reached: were it called, "test.wrongabi" would be registered. */
    return cw_register_handler(reg, "test.wrongabi", handle, NULL);
}
