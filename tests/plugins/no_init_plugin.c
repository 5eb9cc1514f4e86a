/* Test plugin: declares itself but has no cw_plugin_init entry point. */
#include <compworker/compworker.h>

CW_PLUGIN_DECLARE("noinit", "0.1");

/* Something exported, so the object is not empty. */
CW_EXTERN int cw_test_no_init_marker(void);
int cw_test_no_init_marker(void)
{
    return 42;
}
