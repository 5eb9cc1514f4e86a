/* Test plugin: has cw_plugin_init but no CW_PLUGIN_DECLARE. */
#include <compworker/compworker.h>

static cw_outcome handle(cw_task *task, void *user_data)
{
    (void)task;
    (void)user_data;
    return CW_OK;
}

int cw_plugin_init(cw_registry *reg)
{
    /* Never reached: the loader refuses a plugin without cw_plugin_info_v1. */
    return cw_register_handler(reg, "test.noinfo", handle, NULL);
}
