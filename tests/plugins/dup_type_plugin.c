/* Test plugin: registers "test.ok", which good_plugin already handles. */
#include <compworker/compworker.h>

CW_PLUGIN_DECLARE("dup", "1.0");

static cw_outcome handle(cw_task *task, void *user_data)
{
    (void)user_data;
    return cw_task_fail(task, "dup_plugin's handler must never be chosen");
}

int cw_plugin_init(cw_registry *reg)
{
    return cw_register_handler(reg, "test.ok", handle, NULL);
}
