/* Unit tests for framework/status.c (status codes, the per-thread last
 * error) and cw__url_mask() (framework/log.c). */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>

#include <limits.h>
#include <pthread.h>
#include <string.h>

#include "compworker/status.h"
#include "compworker/version.h"
#include "framework/error.h"
#include "framework/log.h"

typedef struct status_row {
    int value;
    const char *name;
    const char *msg;
} status_row;

static const status_row rows[] = {
#define ROW(name, value, msg) {(value), #name, (msg)},
    CW_STATUS_MAP(ROW)
#undef ROW
};
#define N_ROWS (sizeof rows / sizeof *rows)

static void test_every_code_has_message(void **state)
{
    (void)state;
    assert_true(N_ROWS >= 18);
    for (size_t i = 0; i < N_ROWS; i++) {
        const char *msg = cw_strerror(rows[i].value);
        const char *name = cw_status_name(rows[i].value);
        assert_non_null(msg);
        assert_non_null(name);
        if (!msg[0] || strcmp(msg, "unknown status") == 0)
            fail_msg("status %d (%s) has no message", rows[i].value, rows[i].name);
        if (!name[0] || strcmp(name, "UNKNOWN") == 0)
            fail_msg("status %d has no name", rows[i].value);
        assert_string_equal(msg, rows[i].msg);
        assert_string_equal(name, rows[i].name);
    }
}

static void test_codes_distinct(void **state)
{
    (void)state;
    for (size_t i = 0; i < N_ROWS; i++) {
        /* OK is 0, every other code negative. */
        if (i == 0)
            assert_int_equal(rows[i].value, 0);
        else if (rows[i].value >= 0)
            fail_msg("status %s is %d, not negative", rows[i].name, rows[i].value);
        for (size_t j = i + 1; j < N_ROWS; j++) {
            if (rows[i].value == rows[j].value)
                fail_msg("%s and %s share the value %d", rows[i].name, rows[j].name,
                         rows[i].value);
            if (strcmp(cw_status_name(rows[i].value), cw_status_name(rows[j].value)) == 0)
                fail_msg("two codes are named %s", rows[i].name);
            if (strcmp(cw_strerror(rows[i].value), cw_strerror(rows[j].value)) == 0)
                fail_msg("%s and %s share a message", rows[i].name, rows[j].name);
        }
    }
    assert_int_equal(CW_STATUS_OK, 0);
    assert_string_equal(cw_status_name(CW_STATUS_NACKED), "NACKED");
    assert_string_equal(cw_strerror(CW_STATUS_NOMEM), "out of memory");
}

static void test_unknown_codes(void **state)
{
    (void)state;
    int lowest = 0;
    for (size_t i = 0; i < N_ROWS; i++)
        if (rows[i].value < lowest)
            lowest = rows[i].value;
    const int unknown[] = {1, 2, 100, lowest - 1, lowest - 100, INT_MIN, INT_MAX};
    for (size_t i = 0; i < sizeof unknown / sizeof *unknown; i++) {
        assert_string_equal(cw_strerror(unknown[i]), "unknown status");
        assert_string_equal(cw_status_name(unknown[i]), "UNKNOWN");
    }
}

static void test_error_last(void **state)
{
    (void)state;
    cw__error_clear();
    assert_string_equal(cw_error_last(), "");

    assert_int_equal(cw__error(CW_STATUS_CONFIG, "pool.ini:%d: [broker] prefetch: '%s'", 12, "0"),
                     CW_STATUS_CONFIG);
    assert_string_equal(cw_error_last(), "pool.ini:12: [broker] prefetch: '0'");

    /* The next error replaces it. */
    assert_int_equal(cw__error(CW_STATUS_IO, "%s", "disk full"), CW_STATUS_IO);
    assert_string_equal(cw_error_last(), "disk full");

    /* Cut, not overflowed. */
    char big[5000];
    memset(big, 'e', sizeof big - 1);
    big[sizeof big - 1] = '\0';
    assert_int_equal(cw__error(CW_STATUS_IO, "%s", big), CW_STATUS_IO);
    size_t len = strlen(cw_error_last());
    assert_true(len > 0);
    assert_true(len < sizeof big - 1);
    assert_memory_equal(cw_error_last(), big, len);

    cw__error_clear();
    assert_string_equal(cw_error_last(), "");
}

static void *other_thread(void *arg)
{
    char *seen = arg;
    /* A new thread starts with no error, whatever the main thread has. */
    strcpy(seen, cw_error_last());
    cw__error(CW_STATUS_TIMEOUT, "thread error");
    strcpy(seen + 64, cw_error_last());
    return NULL;
}

static void test_error_per_thread(void **state)
{
    (void)state;
    char seen[128];
    memset(seen, 'x', sizeof seen);
    cw__error(CW_STATUS_STORE, "main thread error");

    pthread_t th;
    assert_int_equal(pthread_create(&th, NULL, other_thread, seen), 0);
    assert_int_equal(pthread_join(th, NULL), 0);

    assert_string_equal(seen, "");
    assert_string_equal(seen + 64, "thread error");
    assert_string_equal(cw_error_last(), "main thread error"); /* untouched */
    cw__error_clear();
}

static void test_version(void **state)
{
    (void)state;
    assert_string_equal(cw_version(), CW_VERSION_STRING);
}

static void mask_eq(const char *url, const char *want)
{
    char out[256];
    memset(out, 'x', sizeof out);
    cw__url_mask(url, out, sizeof out);
    if (strcmp(out, want) != 0)
        fail_msg("cw__url_mask('%s') = '%s', want '%s'", url, out, want);
}

static void test_url_mask(void **state)
{
    (void)state;
    char out[256];
    cw__url_mask("amqp://user:secret@h:5672/v", out, sizeof out);
    assert_null(strstr(out, "secret"));
    assert_string_equal(out, "amqp://user:***@h:5672/v");

    mask_eq("amqp://guest:guest@127.0.0.1:5672/", "amqp://guest:***@127.0.0.1:5672/");
    mask_eq("amqp://user:p%40ss@host/vh", "amqp://user:***@host/vh");
    mask_eq("amqp://user:@host/", "amqp://user:***@host/");

    /* Unencoded '/' or '@' in the password (rabbitmq-c refuses such a URL,
     * and the refusal is logged): still hidden whole. */
    mask_eq("amqp://user:pa/ss@h/", "amqp://user:***@h/");
    mask_eq("amqp://user:p@ss@h/", "amqp://user:***@h/");
    /* Several URLs in one string: no password of any of them shows. */
    cw__url_mask("amqp://a:pw1@h1/ amqp://b:pw2@h2/", out, sizeof out);
    assert_null(strstr(out, "pw1"));
    assert_null(strstr(out, "pw2"));

    /* No scheme: a mistyped URL's password is hidden too. */
    mask_eq("user:secret@host:5672/v", "user:***@host:5672/v");
    mask_eq("guest:guest@127.0.0.1", "guest:***@127.0.0.1");

    /* Nothing to hide: unchanged. */
    mask_eq("amqp://user@h:5672/v", "amqp://user@h:5672/v");
    mask_eq("amqp://h:5672/v", "amqp://h:5672/v");
    mask_eq("amqp://h/", "amqp://h/");
    mask_eq("amqp://", "amqp://");
    mask_eq("not a url", "not a url");
    mask_eq("", "");
    mask_eq(NULL, "");
}

static void test_url_mask_small_buffer(void **state)
{
    (void)state;
    const char *url = "amqp://user:secret@h:5672/v";
    char out[64];
    /* Every cut of the output: NUL-terminated, in bounds, no part of the
     * password. */
    for (unsigned long cap = 1; cap <= strlen(url) + 2; cap++) {
        memset(out, 'Z', sizeof out);
        cw__url_mask(url, out, cap);
        size_t len = strnlen(out, sizeof out);
        if (len >= cap)
            fail_msg("cap %lu: not terminated within the buffer", cap);
        if (out[cap] != 'Z' && cap < sizeof out)
            fail_msg("cap %lu: wrote past the buffer", cap);
        if (strstr(out, "sec") || strstr(out, ":s"))
            fail_msg("cap %lu: '%s' shows part of the password", cap, out);
    }
    memset(out, 'Z', sizeof out);
    cw__url_mask(url, out, 0); /* writes nothing */
    assert_int_equal(out[0], 'Z');
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_every_code_has_message),
        cmocka_unit_test(test_codes_distinct),
        cmocka_unit_test(test_unknown_codes),
        cmocka_unit_test(test_error_last),
        cmocka_unit_test(test_error_per_thread),
        cmocka_unit_test(test_version),
        cmocka_unit_test(test_url_mask),
        cmocka_unit_test(test_url_mask_small_buffer),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
