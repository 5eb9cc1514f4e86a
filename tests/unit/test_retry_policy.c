/* Unit tests for retry/policy.c: backoff arithmetic, jitter bounds and
 * spread, layering of policies, exhaustion, and the random source. */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>

#include <limits.h>
#include <pthread.h>
#include <stdbool.h>
#include <stdio.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include "retry/delay.h"
#include "retry/policy.h"

#define SAMPLES 10000

static cw_retry_policy policy(unsigned max_attempts, int64_t interval_ms, double rate,
                              int64_t max_delay_ms, cw_jitter jitter)
{
    cw_retry_policy p = {.max_attempts = max_attempts,
                         .interval_ms = interval_ms,
                         .backoff_rate = rate,
                         .max_delay_ms = max_delay_ms,
                         .jitter = jitter};
    return p;
}

static void test_defaults(void **state)
{
    cw_retry_policy p;

    (void)state;
    memset(&p, 0xa5, sizeof p);
    cw_retry_policy_default(&p);
    assert_int_equal(p.max_attempts, 5);
    assert_int_equal(p.interval_ms, 1000);
    assert_true(p.backoff_rate == 2.0);
    assert_int_equal(p.max_delay_ms, 3600 * 1000);
    assert_int_equal(p.jitter, CW_JITTER_FULL);
}

/* 1 s doubling: 1, 2, 4, 8 ... s, capped at max_delay. */
static void test_exact_delays(void **state)
{
    cw_retry_policy p = policy(10, 1000, 2.0, 60000, CW_JITTER_NONE);
    static const int64_t want[] = {1000, 2000, 4000, 8000, 16000, 32000, 60000, 60000, 60000};

    (void)state;
    for (unsigned n = 1; n <= sizeof want / sizeof *want; n++)
        assert_int_equal(cw_retry_base_delay_ms(&p, n), want[n - 1]);
    /* 0 failed attempts is taken as 1. */
    assert_int_equal(cw_retry_base_delay_ms(&p, 0), 1000);

    /* The defaults: 1 s, 2 s, ... 2048 s, then 1 h. */
    cw_retry_policy_default(&p);
    assert_int_equal(cw_retry_base_delay_ms(&p, 1), 1000);
    assert_int_equal(cw_retry_base_delay_ms(&p, 5), 16000);
    assert_int_equal(cw_retry_base_delay_ms(&p, 12), 2048000);
    assert_int_equal(cw_retry_base_delay_ms(&p, 13), 3600000);

    /* A fractional rate, rounded to the nearest millisecond. */
    p = policy(10, 1000, 1.5, 60000, CW_JITTER_NONE);
    assert_int_equal(cw_retry_base_delay_ms(&p, 1), 1000);
    assert_int_equal(cw_retry_base_delay_ms(&p, 2), 1500);
    assert_int_equal(cw_retry_base_delay_ms(&p, 3), 2250);
    assert_int_equal(cw_retry_base_delay_ms(&p, 4), 3375);
    assert_int_equal(cw_retry_base_delay_ms(&p, 5), 5063); /* 5062.5 */

    /* Sub-second intervals. */
    p = policy(10, 250, 3.0, 5000, CW_JITTER_NONE);
    assert_int_equal(cw_retry_base_delay_ms(&p, 1), 250);
    assert_int_equal(cw_retry_base_delay_ms(&p, 2), 750);
    assert_int_equal(cw_retry_base_delay_ms(&p, 3), 2250);
    assert_int_equal(cw_retry_base_delay_ms(&p, 4), 5000);
}

static void test_constant_rate(void **state)
{
    cw_retry_policy p = policy(10, 1500, 1.0, 60000, CW_JITTER_NONE);

    (void)state;
    for (unsigned n = 1; n < 100; n++)
        assert_int_equal(cw_retry_base_delay_ms(&p, n), 1500);
    assert_int_equal(cw_retry_base_delay_ms(&p, UINT_MAX), 1500);

    /* An interval of 0 stays 0 whatever the rate. */
    p = policy(10, 0, 100.0, 60000, CW_JITTER_NONE);
    assert_int_equal(cw_retry_base_delay_ms(&p, 1), 0);
    assert_int_equal(cw_retry_base_delay_ms(&p, UINT_MAX), 0);

    /* An interval above max_delay is cut to it from the start. */
    p = policy(10, 7200000, 1.0, 3600000, CW_JITTER_NONE);
    assert_int_equal(cw_retry_base_delay_ms(&p, 1), 3600000);
}

/* Huge attempt numbers, rates and limits never overflow. */
static void test_no_overflow(void **state)
{
    cw_retry_policy p = policy(1000, 1000, 100.0, CW_DELAY_MAX_MS, CW_JITTER_NONE);

    (void)state;
    assert_int_equal(cw_retry_base_delay_ms(&p, 3), 10000000);
    assert_int_equal(cw_retry_base_delay_ms(&p, 4), CW_DELAY_MAX_MS);
    assert_int_equal(cw_retry_base_delay_ms(&p, 1000), CW_DELAY_MAX_MS);
    assert_int_equal(cw_retry_base_delay_ms(&p, UINT_MAX), CW_DELAY_MAX_MS);

    /* Up against int64_t itself. */
    p = policy(1000, INT64_C(1) << 62, 2.0, INT64_MAX, CW_JITTER_NONE);
    assert_int_equal(cw_retry_base_delay_ms(&p, 1), INT64_C(1) << 62);
    assert_int_equal(cw_retry_base_delay_ms(&p, 2), INT64_MAX);
    assert_int_equal(cw_retry_base_delay_ms(&p, UINT_MAX), INT64_MAX);
    p = policy(1000, 1, 100.0, INT64_MAX, CW_JITTER_NONE);
    assert_int_equal(cw_retry_base_delay_ms(&p, 10), INT64_C(1000000000000000000));
    assert_int_equal(cw_retry_base_delay_ms(&p, 11), INT64_MAX);
    assert_int_equal(cw_retry_base_delay_ms(&p, UINT_MAX), INT64_MAX);

    /* Nonsense the configuration refuses still gives a sane answer. */
    p = policy(1000, -5, 2.0, 1000, CW_JITTER_NONE);
    assert_int_equal(cw_retry_base_delay_ms(&p, 3), 0);
    p = policy(1000, 100, 2.0, -1, CW_JITTER_NONE);
    assert_int_equal(cw_retry_base_delay_ms(&p, 3), 0);
    p = policy(1000, 100, 0.5, 10000, CW_JITTER_NONE);
    assert_int_equal(cw_retry_base_delay_ms(&p, 3), 100);
}

static void test_jitter_exact(void **state)
{
    (void)state;
    assert_int_equal(cw_retry_jitter_ms(CW_JITTER_NONE, 1000, 12345), 1000);
    assert_int_equal(cw_retry_jitter_ms(CW_JITTER_NONE, 0, 12345), 0);
    assert_int_equal(cw_retry_jitter_ms(CW_JITTER_NONE, -7, 12345), 0);

    /* full: random % (d + 1) */
    assert_int_equal(cw_retry_jitter_ms(CW_JITTER_FULL, 1000, 0), 0);
    assert_int_equal(cw_retry_jitter_ms(CW_JITTER_FULL, 1000, 1000), 1000);
    assert_int_equal(cw_retry_jitter_ms(CW_JITTER_FULL, 1000, 1001), 0);
    assert_int_equal(cw_retry_jitter_ms(CW_JITTER_FULL, 1000, 1500), 499);
    assert_int_equal(cw_retry_jitter_ms(CW_JITTER_FULL, 1000, UINT64_MAX),
                     (int64_t)(UINT64_MAX % 1001));
    assert_int_equal(cw_retry_jitter_ms(CW_JITTER_FULL, 0, UINT64_MAX), 0);
    assert_int_equal(cw_retry_jitter_ms(CW_JITTER_FULL, -1, 99), 0);
    assert_int_equal(cw_retry_jitter_ms(CW_JITTER_FULL, INT64_MAX, UINT64_MAX),
                     (int64_t)(UINT64_MAX % ((uint64_t)INT64_MAX + 1)));

    /* equal: d/2 + random % (d - d/2 + 1) */
    assert_int_equal(cw_retry_jitter_ms(CW_JITTER_EQUAL, 1000, 0), 500);
    assert_int_equal(cw_retry_jitter_ms(CW_JITTER_EQUAL, 1000, 500), 1000);
    assert_int_equal(cw_retry_jitter_ms(CW_JITTER_EQUAL, 1000, 501), 500);
    assert_int_equal(cw_retry_jitter_ms(CW_JITTER_EQUAL, 1001, 501), 1001); /* 500 + 501 */
    assert_int_equal(cw_retry_jitter_ms(CW_JITTER_EQUAL, 1, 0), 0);
    assert_int_equal(cw_retry_jitter_ms(CW_JITTER_EQUAL, 1, 1), 1);
    assert_int_equal(cw_retry_jitter_ms(CW_JITTER_EQUAL, 0, UINT64_MAX), 0);
    assert_int_equal(cw_retry_jitter_ms(CW_JITTER_EQUAL, INT64_MAX, UINT64_MAX),
                     INT64_MAX / 2 +
                         (int64_t)(UINT64_MAX % ((uint64_t)(INT64_MAX - INT64_MAX / 2) + 1)));
}

/* Over many random values, the jittered delay stays in its range and
 * spreads over it. */
static void check_spread(cw_jitter j, int64_t d, int64_t lo, int64_t hi)
{
    int64_t min = INT64_MAX, max = INT64_MIN;
    double sum = 0;

    for (int i = 0; i < SAMPLES; i++) {
        int64_t v = cw_retry_jitter_ms(j, d, cw_random64());
        if (v < lo || v > hi)
            fail_msg("jitter %d of %lld gave %lld, outside [%lld, %lld]", (int)j, (long long)d,
                     (long long)v, (long long)lo, (long long)hi);
        min = v < min ? v : min;
        max = v > max ? v : max;
        sum += (double)v;
    }
    /* A quarter of the range at each end is hit with certainty for all
     * practical purposes ((3/4)^10000); the mean is within 3 % of the middle. */
    if (min > lo + (hi - lo) / 4 || max < hi - (hi - lo) / 4)
        fail_msg("jitter %d of %lld spread only over [%lld, %lld]", (int)j, (long long)d,
                 (long long)min, (long long)max);
    double mid = (double)(lo + hi) / 2, mean = sum / SAMPLES;
    if (mean < mid - 0.03 * (double)(hi - lo) || mean > mid + 0.03 * (double)(hi - lo))
        fail_msg("jitter %d of %lld: mean %.1f, want about %.1f", (int)j, (long long)d, mean, mid);
}

static void test_jitter_spread(void **state)
{
    (void)state;
    check_spread(CW_JITTER_FULL, 1000, 0, 1000);
    check_spread(CW_JITTER_FULL, 3600000, 0, 3600000);
    check_spread(CW_JITTER_FULL, CW_DELAY_MAX_MS, 0, CW_DELAY_MAX_MS);
    check_spread(CW_JITTER_EQUAL, 1000, 500, 1000);
    check_spread(CW_JITTER_EQUAL, 3600001, 1800000, 3600001);
    check_spread(CW_JITTER_NONE, 1000, 1000, 1000);
}

static void expect_policy(const cw_retry_policy *got, const cw_retry_policy *want)
{
    assert_int_equal(got->max_attempts, want->max_attempts);
    assert_int_equal(got->interval_ms, want->interval_ms);
    assert_true(got->backoff_rate == want->backoff_rate);
    assert_int_equal(got->max_delay_ms, want->max_delay_ms);
    assert_int_equal(got->jitter, want->jitter);
}

static void test_merge(void **state)
{
    cw_retry_policy base, layer = policy(9, 250, 3.0, 60000, CW_JITTER_EQUAL), want;

    (void)state;
    cw_retry_policy_default(&base);
    want = base;
    cw_retry_policy_merge(&base, &layer, 0);
    expect_policy(&base, &want);

    cw_retry_policy_merge(&base, &layer, CW_RETRY_SET_INTERVAL | CW_RETRY_SET_JITTER);
    assert_int_equal(base.max_attempts, 5);
    assert_int_equal(base.interval_ms, 250);
    assert_true(base.backoff_rate == 2.0);
    assert_int_equal(base.max_delay_ms, 3600000);
    assert_int_equal(base.jitter, CW_JITTER_EQUAL);

    cw_retry_policy_merge(&base, &layer, CW_RETRY_SET_MAX_ATTEMPTS);
    assert_int_equal(base.max_attempts, 9);
    assert_true(base.backoff_rate == 2.0);
    cw_retry_policy_merge(&base, &layer, CW_RETRY_SET_BACKOFF_RATE);
    assert_true(base.backoff_rate == 3.0);
    assert_int_equal(base.max_delay_ms, 3600000);
    cw_retry_policy_merge(&base, &layer, CW_RETRY_SET_MAX_DELAY);
    assert_int_equal(base.max_delay_ms, 60000);

    /* Everything, over the defaults; then layers apply in order. */
    cw_retry_policy_default(&base);
    cw_retry_policy_merge(&base, &layer,
                          CW_RETRY_SET_MAX_ATTEMPTS | CW_RETRY_SET_INTERVAL |
                              CW_RETRY_SET_BACKOFF_RATE | CW_RETRY_SET_MAX_DELAY |
                              CW_RETRY_SET_JITTER);
    expect_policy(&base, &layer);
    cw_retry_policy top = policy(2, 0, 1.0, 0, CW_JITTER_NONE);
    cw_retry_policy_merge(&base, &top, CW_RETRY_SET_JITTER | CW_RETRY_SET_INTERVAL);
    assert_int_equal(base.interval_ms, 0);
    assert_int_equal(base.jitter, CW_JITTER_NONE);
    assert_int_equal(base.max_attempts, 9);
}

static void test_exhausted(void **state)
{
    cw_retry_policy p = policy(3, 1000, 2.0, 60000, CW_JITTER_FULL);

    (void)state;
    assert_false(cw_retry_exhausted(&p, 0));
    assert_false(cw_retry_exhausted(&p, 1));
    assert_false(cw_retry_exhausted(&p, 2));
    assert_true(cw_retry_exhausted(&p, 3));
    assert_true(cw_retry_exhausted(&p, 4));
    assert_true(cw_retry_exhausted(&p, UINT_MAX));
    p.max_attempts = 1; /* never retry */
    assert_false(cw_retry_exhausted(&p, 0));
    assert_true(cw_retry_exhausted(&p, 1));
}

/* ---- the random source ---------------------------------------------------- */

static void test_random_varies(void **state)
{
    uint64_t seen[64];
    unsigned bits_set = 0;

    (void)state;
    for (int i = 0; i < 64; i++) {
        seen[i] = cw_random64();
        for (int j = 0; j < i; j++)
            assert_true(seen[i] != seen[j]);
        bits_set += (unsigned)__builtin_popcountll(seen[i]);
    }
    /* About half the bits: 2048 of 4096, give or take a lot. */
    assert_in_range(bits_set, 1800, 2300);
}

/* After fork(), parent and child do not continue the same sequence. */
static void test_random_fork(void **state)
{
    int fds[2];
    pid_t pid;
    uint64_t child[4], parent[4];
    int status;

    (void)state;
    (void)cw_random64(); /* seeded in the parent */
    assert_int_equal(pipe(fds), 0);
    pid = fork();
    assert_true(pid >= 0);
    if (pid == 0) {
        for (int i = 0; i < 4; i++)
            child[i] = cw_random64();
        _exit(write(fds[1], child, sizeof child) == (ssize_t)sizeof child ? 0 : 1);
    }
    close(fds[1]);
    for (int i = 0; i < 4; i++)
        parent[i] = cw_random64();
    assert_int_equal(read(fds[0], child, sizeof child), (ssize_t)sizeof child);
    close(fds[0]);
    assert_int_equal(waitpid(pid, &status, 0), pid);
    assert_true(WIFEXITED(status) && WEXITSTATUS(status) == 0);
    for (int i = 0; i < 4; i++) {
        for (int j = 0; j < 4; j++)
            assert_true(child[i] != parent[j]);
    }
}

static void *draw(void *arg)
{
    uint64_t *out = arg;

    for (int i = 0; i < 4; i++)
        out[i] = cw_random64();
    return NULL;
}

/* Threads have sequences of their own. */
static void test_random_threads(void **state)
{
    uint64_t a[4], b[4];
    pthread_t ta, tb;

    (void)state;
    assert_int_equal(pthread_create(&ta, NULL, draw, a), 0);
    assert_int_equal(pthread_create(&tb, NULL, draw, b), 0);
    assert_int_equal(pthread_join(ta, NULL), 0);
    assert_int_equal(pthread_join(tb, NULL), 0);
    for (int i = 0; i < 4; i++) {
        for (int j = 0; j < 4; j++)
            assert_true(a[i] != b[j]);
    }
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_defaults),       cmocka_unit_test(test_exact_delays),
        cmocka_unit_test(test_constant_rate),  cmocka_unit_test(test_no_overflow),
        cmocka_unit_test(test_jitter_exact),   cmocka_unit_test(test_jitter_spread),
        cmocka_unit_test(test_merge),          cmocka_unit_test(test_exhausted),
        cmocka_unit_test(test_random_varies),  cmocka_unit_test(test_random_fork),
        cmocka_unit_test(test_random_threads),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
