/* The smallest useful compworker plugin: handles "greeting.undo".
 *
 *   cc -shared -fPIC -o hello.so hello.c $(pkg-config --cflags --libs compworker)
 *
 * and list hello.so in [pool] plugins. Its one setting, [plugin hello] out,
 * names a file that each applied task appends a line to. */
#include <compworker/compworker.h>
#include <json.h>
#include <stdio.h>
#include <string.h>

CW_PLUGIN_DECLARE("hello", "1.0.0");

static char out_path[4096] = "hello.out";

static cw_outcome undo_greeting(cw_task *task, void *user_data)
{
    (void)user_data;
    json_object *name;
    if (!json_object_object_get_ex(cw_task_payload(task), "name", &name) ||
        !json_object_is_type(name, json_type_string))
        return cw_task_fail(task, "payload has no string \"name\"");

    FILE *f = fopen(out_path, "a");
    if (!f)
        return cw_task_retry(task, "cannot open %s", out_path); /* transient */
    fprintf(f, "%s %s %s\n", cw_task_message_id(task), cw_task_saga_id(task),
            json_object_get_string(name));
    fclose(f);
    return CW_OK;
}

int cw_plugin_init(cw_registry *reg)
{
    /* Settings are borrowed until init returns: copy what you keep. */
    const char *out = cw_registry_setting(reg, "out", NULL);
    if (out)
        snprintf(out_path, sizeof out_path, "%s", out);
    return cw_register_handler(reg, "greeting.undo", undo_greeting, NULL);
}
