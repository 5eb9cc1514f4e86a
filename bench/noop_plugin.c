/* The benchmark's handler: does nothing, successfully. */
#include <compworker/compworker.h>

CW_PLUGIN_DECLARE("bench-noop", "1.0.0");

static cw_outcome noop(cw_task *task, void *user_data)
{
    (void)task;
    (void)user_data;
    return CW_OK;
}

int cw_plugin_init(cw_registry *reg)
{
    return cw_register_handler(reg, "bench.noop", noop, NULL);
}
