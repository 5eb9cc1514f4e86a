/* Test plugin: registers a handler, then refuses to start. The loader must
 * drop "test.partial" again and unload the plugin. */
#include <compworker/compworker.h>

CW_PLUGIN_DECLARE("failing", "0.1");

static cw_outcome handle(cw_task *task, void *user_data)
{
    (void)task;
    (void)user_data;
    return CW_OK;
}

int cw_plugin_init(cw_registry *reg)
{
    if (cw_register_handler(reg, "test.partial", handle, NULL) < 0)
        return -2;
    return -1;
}
