/* Unit tests of framework/message_id.c: the UUIDv7 message IDs that
 * compworker's publishers give a task that comes without one. */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>

#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "framework/clock.h"
#include "framework/message_id.h"

/* The 48-bit millisecond timestamp at the start of a UUIDv7's text. */
static uint64_t id_ms(const char *id)
{
    char hex[13];
    memcpy(hex, id, 8);
    memcpy(hex + 8, id + 9, 4);
    hex[12] = '\0';
    return strtoull(hex, NULL, 16);
}

/* Version 7 and the RFC 9562 variant, lowercase, in the 8-4-4-4-12 form. */
static void test_format(void **state)
{
    (void)state;
    int64_t before = cw__now_ms();
    char id[CW_UUID_TEXT];
    cw__message_id_new(id);
    int64_t after = cw__now_ms();
    assert_int_equal(strlen(id), 36);
    for (int i = 0; i < 36; i++) {
        if (i == 8 || i == 13 || i == 18 || i == 23)
            assert_int_equal(id[i], '-');
        else
            assert_non_null(strchr("0123456789abcdef", id[i]));
    }
    assert_int_equal(id[14], '7');
    assert_non_null(strchr("89ab", id[19]));
    assert_true(id_ms(id) >= (uint64_t)before);
    assert_true(id_ms(id) <= (uint64_t)after + 1);
}

/* Each ID's text is greater than the one before, also many within one
 * clock tick, and the random part is not a counter. */
static void test_ordered(void **state)
{
    (void)state;
    enum {
        N = 200000
    };
    char prev[CW_UUID_TEXT], id[CW_UUID_TEXT];
    cw__message_id_new(prev);
    int64_t start = cw__now_ms();
    unsigned same_tail = 0;
    for (int i = 0; i < N; i++) {
        cw__message_id_new(id);
        if (strcmp(id, prev) <= 0)
            fail_msg("%s after %s", id, prev);
        if (strcmp(id + 19, prev + 19) == 0)
            same_tail++;
        memcpy(prev, id, sizeof id);
    }
    assert_int_equal(same_tail, 0);
    /* At most the IDs' own count of 244 ns ticks ahead of the clock. */
    assert_true(id_ms(id) <= (uint64_t)cw__now_ms() + 1 + N / 4096);
    assert_true(id_ms(id) >= (uint64_t)start);
}

enum {
    THREADS = 4,
    PER_THREAD = 20000
};

static void *make_ids(void *arg)
{
    char(*ids)[CW_UUID_TEXT] = arg;
    for (int i = 0; i < PER_THREAD; i++)
        cw__message_id_new(ids[i]);
    return NULL;
}

static int by_text(const void *a, const void *b)
{
    return strcmp(a, b);
}

/* Threads that make IDs at once each see them increase, and no two IDs
 * share their time bits (so none is equal). */
static void test_threads(void **state)
{
    (void)state;
    char(*ids)[CW_UUID_TEXT] = calloc(THREADS * PER_THREAD, CW_UUID_TEXT);
    assert_non_null(ids);
    pthread_t th[THREADS];
    for (int t = 0; t < THREADS; t++)
        assert_int_equal(pthread_create(&th[t], NULL, make_ids, ids + t * PER_THREAD), 0);
    for (int t = 0; t < THREADS; t++)
        pthread_join(th[t], NULL);
    for (int t = 0; t < THREADS; t++) {
        for (int i = 1; i < PER_THREAD; i++)
            assert_true(strcmp(ids[t * PER_THREAD + i], ids[t * PER_THREAD + i - 1]) > 0);
    }
    qsort(ids, THREADS * PER_THREAD, CW_UUID_TEXT, by_text);
    for (int i = 1; i < THREADS * PER_THREAD; i++) {
        /* The first 18 characters are the 60 time bits and the version. */
        if (strncmp(ids[i], ids[i - 1], 18) == 0)
            fail_msg("%s and %s share their time bits", ids[i - 1], ids[i]);
    }
    free(ids);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_format),
        cmocka_unit_test(test_ordered),
        cmocka_unit_test(test_threads),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
