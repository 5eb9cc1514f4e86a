/* Unit tests for framework/status.c (status codes, the per-thread last
 * error). cw__url_mask() is tested with the rest of framework/url.c, in
 * test_url.c. */
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
                fail_msg("%s and %s share the value %d", rows[i].name, rows[j].name, rows[i].value);
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

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_every_code_has_message), cmocka_unit_test(test_codes_distinct),
        cmocka_unit_test(test_unknown_codes),          cmocka_unit_test(test_error_last),
        cmocka_unit_test(test_error_per_thread),       cmocka_unit_test(test_version),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
