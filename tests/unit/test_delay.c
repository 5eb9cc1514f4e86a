/* Unit tests for retry/delay.c without a broker: delays in units, the bits
 * of a routing key, and the headers a republished message drops. */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>

#include <stdbool.h>
#include <stdio.h>
#include <string.h>

#include "compworker/status.h"
#include "retry/delay.h"
#include "retry/policy.h"

#define Q "cw.orders"
#define ZEROS16 "0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0."

/* The routing key for `delay_ms` to queue Q. */
static const char *key_for(int64_t delay_ms)
{
    static char key[CW_DELAY_KEY_MAX + 1];

    assert_int_equal(cw__delay_routing_key(delay_ms, Q, key, sizeof key), 0);
    return key;
}

/* The sum of the TTLs of the levels a message with routing key `key` waits
 * in: level L is word 19 - L, and holds it CW_DELAY_UNIT_MS * 2^L when "1".
 * Checks the word layout on the way. */
static int64_t ttl_sum(const char *key, const char *queue)
{
    int64_t sum = 0;

    for (int word = 0; word < CW_DELAY_LEVELS; word++) {
        const char *w = key + 2 * word;
        int level = CW_DELAY_LEVELS - 1 - word;

        assert_true(w[0] == '0' || w[0] == '1');
        assert_int_equal(w[1], '.');
        if (w[0] == '1')
            sum += (int64_t)CW_DELAY_UNIT_MS << level;
    }
    assert_string_equal(key + 2 * CW_DELAY_LEVELS, queue);
    return sum;
}

static void test_constants(void **state)
{
    (void)state;
    assert_int_equal(CW_DELAY_LEVELS, 20);
    assert_int_equal(CW_DELAY_UNIT_MS, 100);
    assert_int_equal(CW_DELAY_MAX_UNITS, 1048575);
    assert_int_equal(CW_DELAY_MAX_MS, 104857500);
    assert_true(CW_DELAY_MAX_MS > INT64_C(24) * 3600 * 1000);
    assert_string_equal(CW_DELAY_ENTRY_EXCHANGE, "cw.delay.19");
    assert_int_equal(CW_DELAY_QUEUE_MAX, 215);
    /* The longest max_delay the configuration accepts fits. */
    assert_true(CW_RETRY_DEFAULT_MAX_DELAY_MS <= CW_DELAY_MAX_MS);
}

static void test_units(void **state)
{
    (void)state;
    assert_int_equal(cw__delay_units(0), 0);
    assert_int_equal(cw__delay_units(-1), 0);
    assert_int_equal(cw__delay_units(INT64_MIN), 0);
    assert_int_equal(cw__delay_units(1), 1);
    assert_int_equal(cw__delay_units(99), 1);
    assert_int_equal(cw__delay_units(100), 1);
    assert_int_equal(cw__delay_units(101), 2);
    assert_int_equal(cw__delay_units(150), 2);
    assert_int_equal(cw__delay_units(200), 2);
    assert_int_equal(cw__delay_units(1000), 10);
    assert_int_equal(cw__delay_units(CW_DELAY_MAX_MS - 100), CW_DELAY_MAX_UNITS - 1);
    assert_int_equal(cw__delay_units(CW_DELAY_MAX_MS - 99), CW_DELAY_MAX_UNITS);
    assert_int_equal(cw__delay_units(CW_DELAY_MAX_MS), CW_DELAY_MAX_UNITS);
    assert_int_equal(cw__delay_units(CW_DELAY_MAX_MS + 1), CW_DELAY_MAX_UNITS);
    assert_int_equal(cw__delay_units(INT64_MAX), CW_DELAY_MAX_UNITS);
}

static void test_routing_keys(void **state)
{
    (void)state;
    assert_string_equal(key_for(0), ZEROS16 "0.0.0.0." Q);
    assert_string_equal(key_for(-5000), ZEROS16 "0.0.0.0." Q);
    assert_string_equal(key_for(100), ZEROS16 "0.0.0.1." Q);
    assert_string_equal(key_for(1), ZEROS16 "0.0.0.1." Q);
    /* 150 ms rounds up to 2 units. */
    assert_string_equal(key_for(150), ZEROS16 "0.0.1.0." Q);
    assert_string_equal(key_for(300), ZEROS16 "0.0.1.1." Q);
    /* 1 s = 10 units = 0b1010. */
    assert_string_equal(key_for(1000), ZEROS16 "1.0.1.0." Q);
    assert_string_equal(key_for(1500), ZEROS16 "1.1.1.1." Q);
    /* 24 h = 864000 units = 0b11010010111100000000. */
    assert_string_equal(key_for(INT64_C(24) * 3600 * 1000),
                        "1.1.0.1.0.0.1.0.1.1.1.1.0.0.0.0.0.0.0.0." Q);
    /* The most, and beyond it: every bit set. */
    assert_string_equal(key_for(CW_DELAY_MAX_MS), "1.1.1.1.1.1.1.1.1.1.1.1.1.1.1.1.1.1.1.1." Q);
    assert_string_equal(key_for(CW_DELAY_MAX_MS + 1), "1.1.1.1.1.1.1.1.1.1.1.1.1.1.1.1.1.1.1.1." Q);
    assert_string_equal(key_for(INT64_MAX), "1.1.1.1.1.1.1.1.1.1.1.1.1.1.1.1.1.1.1.1." Q);
}

/* The time spent in the levels of a key is the delay rounded up to the unit,
 * for every kind of delay. */
static void test_ttl_sum_is_delay(void **state)
{
    static const int64_t delays[] = {0,
                                     1,
                                     99,
                                     100,
                                     101,
                                     150,
                                     250,
                                     1000,
                                     1500,
                                     3200,
                                     65535,
                                     86400000,
                                     INT64_C(104857400),
                                     CW_DELAY_MAX_MS};
    uint64_t x = 12345;

    (void)state;
    for (size_t i = 0; i < sizeof delays / sizeof *delays; i++) {
        int64_t want = cw__delay_units(delays[i]) * CW_DELAY_UNIT_MS;
        assert_int_equal(ttl_sum(key_for(delays[i]), Q), want);
        assert_true(want >= delays[i] && want < delays[i] + CW_DELAY_UNIT_MS);
    }
    for (int i = 0; i < 10000; i++) {
        int64_t d;
        x = x * UINT64_C(6364136223846793005) + 1442695040888963407u;
        d = (int64_t)((x >> 11) % (uint64_t)(CW_DELAY_MAX_MS + 1));
        assert_int_equal(ttl_sum(key_for(d), Q), cw__delay_units(d) * CW_DELAY_UNIT_MS);
    }
    /* Beyond the most: clamped. */
    assert_int_equal(ttl_sum(key_for(CW_DELAY_MAX_MS * 2), Q), CW_DELAY_MAX_MS);
}

static void test_routing_key_limits(void **state)
{
    char queue[CW_DELAY_QUEUE_MAX + 2];
    char key[CW_DELAY_KEY_MAX + 2];

    (void)state;
    /* Exactly enough room: 40 bytes of bits, the name, the NUL. */
    assert_int_equal(cw__delay_routing_key(100, "q", key, 2 * CW_DELAY_LEVELS + 2), 0);
    assert_string_equal(key, ZEROS16 "0.0.0.1.q");
    assert_int_equal(cw__delay_routing_key(100, "q", key, 2 * CW_DELAY_LEVELS + 1),
                     CW_STATUS_INVALID_ARG);
    assert_string_equal(key, "");
    assert_non_null(strstr(cw_error_last(), "needs 42 bytes, 41 given"));
    assert_int_equal(cw__delay_routing_key(100, "q", key, 0), CW_STATUS_INVALID_ARG);

    assert_int_equal(cw__delay_routing_key(100, "", key, sizeof key), CW_STATUS_INVALID_ARG);
    assert_non_null(strstr(cw_error_last(), "empty"));
    assert_int_equal(cw__delay_routing_key(100, NULL, key, sizeof key), CW_STATUS_INVALID_ARG);

    /* The longest name that keeps the key within 255 bytes, and one more. */
    memset(queue, 'q', CW_DELAY_QUEUE_MAX);
    queue[CW_DELAY_QUEUE_MAX] = '\0';
    assert_int_equal(cw__delay_routing_key(100, queue, key, sizeof key), 0);
    assert_int_equal(strlen(key), CW_DELAY_KEY_MAX);
    queue[CW_DELAY_QUEUE_MAX] = 'q';
    queue[CW_DELAY_QUEUE_MAX + 1] = '\0';
    assert_int_equal(cw__delay_routing_key(100, queue, key, sizeof key), CW_STATUS_INVALID_ARG);
    assert_non_null(strstr(cw_error_last(), "longer than 215 bytes"));
}

static bool is_broker(const char *key)
{
    return cw__delay_header_is_broker(key, strlen(key));
}

static void test_broker_headers(void **state)
{
    (void)state;
    assert_true(is_broker("x-death"));
    assert_true(is_broker("x-first-death-queue"));
    assert_true(is_broker("x-first-death-reason"));
    assert_true(is_broker("x-first-death-exchange"));
    assert_true(is_broker("x-last-death-queue"));
    assert_true(is_broker("x-delivery-count"));
    assert_false(is_broker("x-deaths"));
    assert_false(is_broker("x-deat"));
    assert_false(is_broker("x-first-death-"));
    assert_false(is_broker("X-Death"));
    assert_false(is_broker("cw-attempt"));
    assert_false(is_broker("x-test"));
    assert_false(is_broker(""));
    /* `len` bytes count, not the NUL. */
    assert_true(cw__delay_header_is_broker("x-deathXYZ", 7));
    assert_false(cw__delay_header_is_broker("x-death", 6));
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_constants),          cmocka_unit_test(test_units),
        cmocka_unit_test(test_routing_keys),       cmocka_unit_test(test_ttl_sum_is_delay),
        cmocka_unit_test(test_routing_key_limits), cmocka_unit_test(test_broker_headers),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
