/* Test plugin: a valid plugin with three handlers and a teardown.
 *
 * The teardown writes a marker file whose path is the plugin setting
 * "marker" ([plugin good] marker = PATH), so that a test can see that it ran. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <compworker/compworker.h>

CW_PLUGIN_DECLARE("good", "1.2.3");

static cw_outcome handle_ok(cw_task *task, void *user_data)
{
    (void)task;
    (void)user_data;
    return CW_OK;
}

static cw_outcome handle_fail(cw_task *task, void *user_data)
{
    (void)user_data;
    return cw_task_fail(task, "no such payment %s", "p-9");
}

static cw_outcome handle_retry(cw_task *task, void *user_data)
{
    (void)user_data;
    return cw_task_retry(task, "ledger unavailable (attempt %u)", 1u);
}

/* The marker path is borrowed only during cw_plugin_init(): keep a copy. */
static void teardown(void *user_data)
{
    char *marker = user_data;
    if (marker) {
        FILE *f = fopen(marker, "w");
        if (f) {
            fputs("good teardown\n", f);
            fclose(f);
        }
    }
    free(marker);
}

int cw_plugin_init(cw_registry *reg)
{
    int rc;
    if ((rc = cw_register_handler(reg, "test.ok", handle_ok, NULL)) < 0 ||
        (rc = cw_register_handler(reg, "test.fail", handle_fail, NULL)) < 0 ||
        (rc = cw_register_handler(reg, "test.retry", handle_retry, NULL)) < 0)
        return rc;

    const char *marker = cw_registry_setting(reg, "marker", NULL);
    char *copy = NULL;
    if (marker && !(copy = strdup(marker)))
        return -1;
    if ((rc = cw_register_teardown(reg, teardown, copy)) < 0) {
        free(copy);
        return rc;
    }
    return 0;
}
