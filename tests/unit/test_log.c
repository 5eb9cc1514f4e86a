/* Unit tests for framework/log.c's two formats: logfmt and JSON lines
 * ([log] format), with the role of a pool process and the task's IDs. Each
 * test captures stderr in a file and reads its lines back. */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>

#include <fcntl.h>
#include <json.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "framework/log.h"

static char g_path[64];
static int g_saved = -1;

static void capture_begin(void)
{
    snprintf(g_path, sizeof g_path, "/tmp/cw-log-XXXXXX");
    int fd = mkstemp(g_path);
    assert_true(fd >= 0);
    g_saved = dup(STDERR_FILENO);
    dup2(fd, STDERR_FILENO);
    close(fd);
}

/* Restores stderr; the captured text (free() it). */
static char *capture_end(void)
{
    dup2(g_saved, STDERR_FILENO);
    close(g_saved);
    FILE *f = fopen(g_path, "r");
    assert_non_null(f);
    char *text = calloc(1, 65536);
    size_t n = fread(text, 1, 65535, f);
    text[n] = '\0';
    fclose(f);
    unlink(g_path);
    return text;
}

static void reset(void)
{
    cw__log_set_format(CW_LOG_LOGFMT);
    cw__log_set_role(NULL);
    cw__log_set_worker(NULL);
    cw__log_set_level(CW_LOG_INFO);
}

static void test_logfmt_role_and_task(void **state)
{
    (void)state;
    reset();
    cw__log_set_role("supervisor");
    cw__log_set_worker("vm:1:2");
    capture_begin();
    cw_log_task t = {.message_id = "m-1", .saga_id = "s \"1\"", .type = "a.b"};
    cw_log_warn(&t, "worker %d %s", 2, "killed by SIGSEGV");
    cw_log_debug(NULL, "not shown at info");
    char *out = capture_end();
    assert_non_null(strstr(out, " level=warn role=\"supervisor\" worker=\"vm:1:2\" "
                                "msg=\"worker 2 killed by SIGSEGV\" message_id=\"m-1\" "
                                "saga_id=\"s \\\"1\\\"\" type=\"a.b\"\n"));
    assert_null(strstr(out, "not shown"));
    assert_int_equal(strncmp(out, "ts=", 3), 0);
    free(out);
    reset();
}

static void test_json_lines(void **state)
{
    (void)state;
    reset();
    cw__log_set_format(CW_LOG_JSON);
    cw__log_set_worker("vm:1:2");
    capture_begin();
    cw_log_task t = {.message_id = "m-\"2\"", .saga_id = "saga-9", .type = "payment.refund"};
    cw_log_info(&t, "applied in %d ms", 12);
    /* Control bytes and invalid UTF-8 in a reason still make valid JSON. */
    cw_log_error(NULL, "reason: %s", "bad \x01 byte \xff\xfe and \xc3\xa9t\xc3\xa9");
    char *out = capture_end();

    char *second = strchr(out, '\n');
    assert_non_null(second);
    *second++ = '\0';
    json_object *a = json_tokener_parse(out);
    assert_non_null(a);
    json_object *v;
    assert_true(json_object_object_get_ex(a, "level", &v));
    assert_string_equal(json_object_get_string(v), "info");
    assert_true(json_object_object_get_ex(a, "msg", &v));
    assert_string_equal(json_object_get_string(v), "applied in 12 ms");
    assert_true(json_object_object_get_ex(a, "message_id", &v));
    assert_string_equal(json_object_get_string(v), "m-\"2\"");
    assert_true(json_object_object_get_ex(a, "saga_id", &v));
    assert_string_equal(json_object_get_string(v), "saga-9");
    assert_true(json_object_object_get_ex(a, "type", &v));
    assert_string_equal(json_object_get_string(v), "payment.refund");
    assert_true(json_object_object_get_ex(a, "worker", &v));
    assert_false(json_object_object_get_ex(a, "role", &v));
    assert_true(json_object_object_get_ex(a, "ts", &v));
    assert_int_equal(strlen(json_object_get_string(v)), 24);
    json_object_put(a);

    char *end = strchr(second, '\n');
    assert_non_null(end);
    *end = '\0';
    json_object *b = json_tokener_parse(second);
    assert_non_null(b);
    assert_true(json_object_object_get_ex(b, "msg", &v));
    assert_string_equal(json_object_get_string(v),
                        "reason: bad \x01 byte \xef\xbf\xbd\xef\xbf\xbd and \xc3\xa9t\xc3\xa9");
    assert_false(json_object_object_get_ex(b, "message_id", &v));
    json_object_put(b);
    free(out);
    reset();
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_logfmt_role_and_task),
        cmocka_unit_test(test_json_lines),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
