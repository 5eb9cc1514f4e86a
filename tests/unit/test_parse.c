/* Unit tests for framework/parse.c: durations, sizes, integers, booleans. */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>

#include <limits.h>

#include "framework/parse.h"

static void duration_ok(const char *s, int64_t want)
{
    int64_t ms = -1;

    if (!cw__parse_duration_ms(s, &ms))
        fail_msg("duration '%s' was rejected", s);
    if (ms != want)
        fail_msg("duration '%s' gave %lld ms, want %lld", s, (long long)ms, (long long)want);
}

static void duration_bad(const char *s)
{
    int64_t ms = 12345;

    if (cw__parse_duration_ms(s, &ms))
        fail_msg("duration '%s' was accepted as %lld ms", s, (long long)ms);
    assert_int_equal(ms, 12345); /* untouched on failure */
}

static void size_ok(const char *s, uint64_t want)
{
    uint64_t bytes = 0;

    if (!cw__parse_size(s, &bytes))
        fail_msg("size '%s' was rejected", s);
    if (bytes != want)
        fail_msg("size '%s' gave %llu, want %llu", s, (unsigned long long)bytes,
                 (unsigned long long)want);
}

static void size_bad(const char *s)
{
    uint64_t bytes = 777;

    if (cw__parse_size(s, &bytes))
        fail_msg("size '%s' was accepted as %llu", s, (unsigned long long)bytes);
    assert_int_equal(bytes, 777);
}

static void test_duration_units(void **state)
{
    (void)state;
    duration_ok("250ms", 250);
    duration_ok("0ms", 0);
    duration_ok("5s", 5000);
    duration_ok("2m", 120000);
    duration_ok("1h", 3600000);
    duration_ok("7d", INT64_C(7) * 24 * 3600 * 1000);
    duration_ok("30 s", 30000);
    duration_ok("10\tm", 600000);
}

static void test_duration_bare_is_seconds(void **state)
{
    (void)state;
    duration_ok("0", 0);
    duration_ok("60", 60000);
    duration_ok("007", 7000);
}

static void test_duration_rejects(void **state)
{
    (void)state;
    duration_bad("");
    duration_bad("-5s");
    duration_bad("+5s");
    duration_bad(" 5s");
    duration_bad("5s ");
    duration_bad("5 ");
    duration_bad("s");
    duration_bad("5x");
    duration_bad("5sec");
    duration_bad("5S");
    duration_bad("1.5h");
    duration_bad("1h30m");
    duration_bad("5s junk");
    assert_false(cw__parse_duration_ms(NULL, &(int64_t){0}));
}

static void test_duration_overflow(void **state)
{
    (void)state;
    /* INT64_MAX ms is 9223372036854775807; one more overflows. */
    duration_ok("9223372036854775807ms", INT64_MAX);
    duration_bad("9223372036854775808ms");
    duration_bad("9223372036854775807s");
    duration_bad("106751991168d"); /* just above INT64_MAX ms */
    duration_ok("106751991167d", INT64_C(106751991167) * 86400000);
    duration_bad("99999999999999999999999999");
}

static void test_size_units(void **state)
{
    (void)state;
    size_ok("0", 0);
    size_ok("512", 512);
    size_ok("512B", 512);
    size_ok("64KiB", 64 * 1024);
    size_ok("1MiB", 1024 * 1024);
    size_ok("2GiB", UINT64_C(2) * 1024 * 1024 * 1024);
    size_ok("1TiB", UINT64_C(1) << 40);
    size_ok("10kB", 10000);
    size_ok("10KB", 10000);
    size_ok("10MB", 10000000);
    size_ok("3GB", UINT64_C(3000000000));
    size_ok("1k", 1024);
    size_ok("1K", 1024);
    size_ok("1M", 1048576);
    size_ok("1G", 1073741824);
    size_ok("1 MiB", 1048576);
    size_ok("128 MiB", UINT64_C(128) << 20);
}

static void test_size_rejects(void **state)
{
    (void)state;
    size_bad("");
    size_bad("-1");
    size_bad("1.5MiB");
    size_bad("1 ");
    size_bad(" 1");
    size_bad("1MiBs");
    size_bad("1mib");
    size_bad("1 X");
    size_bad("MiB");
    size_bad("18446744073709551616"); /* UINT64_MAX + 1 */
    size_bad("17179869184GiB");       /* 2^34 GiB = 2^64 */
    size_ok("18446744073709551615", UINT64_MAX);
    assert_false(cw__parse_size(NULL, &(uint64_t){0}));
}

static void test_int(void **state)
{
    long long v = 0;

    (void)state;
    assert_true(cw__parse_int("42", 0, 100, &v));
    assert_int_equal(v, 42);
    assert_true(cw__parse_int("-7", -10, 10, &v));
    assert_int_equal(v, -7);
    assert_true(cw__parse_int("+7", -10, 10, &v));
    assert_int_equal(v, 7);
    assert_true(cw__parse_int("1", 1, 1, &v));
    assert_int_equal(v, 1);
    assert_true(cw__parse_int("9223372036854775807", 0, LLONG_MAX, &v));
    assert_true(v == LLONG_MAX);
    assert_true(cw__parse_int("-9223372036854775808", LLONG_MIN, 0, &v));
    assert_true(v == LLONG_MIN);

    v = 99;
    assert_false(cw__parse_int("0", 1, 65535, &v));
    assert_false(cw__parse_int("65536", 1, 65535, &v));
    assert_false(cw__parse_int("-1", 0, 10, &v));
    assert_false(cw__parse_int("", 0, 10, &v));
    assert_false(cw__parse_int(" 5", 0, 10, &v));
    assert_false(cw__parse_int("5 ", 0, 10, &v));
    assert_false(cw__parse_int("5x", 0, 10, &v));
    assert_false(cw__parse_int("0x10", 0, 100, &v));
    assert_false(cw__parse_int("-", -10, 10, &v));
    assert_false(cw__parse_int("9223372036854775808", 0, LLONG_MAX, &v));
    assert_false(cw__parse_int(NULL, 0, 10, &v));
    assert_int_equal(v, 99); /* untouched on failure */
}

static void test_bool(void **state)
{
    static const char *const yes[] = {"true", "TRUE", "yes", "Yes", "on", "ON", "1"};
    static const char *const no[] = {"false", "False", "no", "NO", "off", "Off", "0"};
    static const char *const bad[] = {"", "2", "y", "n", "tru", "truee", " true", "enabled"};
    bool b;

    (void)state;
    for (size_t i = 0; i < sizeof yes / sizeof *yes; i++) {
        b = false;
        assert_true(cw__parse_bool(yes[i], &b));
        assert_true(b);
    }
    for (size_t i = 0; i < sizeof no / sizeof *no; i++) {
        b = true;
        assert_true(cw__parse_bool(no[i], &b));
        assert_false(b);
    }
    for (size_t i = 0; i < sizeof bad / sizeof *bad; i++) {
        b = true;
        if (cw__parse_bool(bad[i], &b))
            fail_msg("bool '%s' was accepted", bad[i]);
        assert_true(b);
    }
    assert_false(cw__parse_bool(NULL, &b));
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_duration_units),
        cmocka_unit_test(test_duration_bare_is_seconds),
        cmocka_unit_test(test_duration_rejects),
        cmocka_unit_test(test_duration_overflow),
        cmocka_unit_test(test_size_units),
        cmocka_unit_test(test_size_rejects),
        cmocka_unit_test(test_int),
        cmocka_unit_test(test_bool),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
