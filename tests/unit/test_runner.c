/* Unit tests of workers/runner.c, the worker's handler threads: how many
 * handlers run at once (the threads, a type's own limit, handlers not
 * registered as concurrent), the rate limiter's say, taking back what ran in
 * order, cancelling what has not started, and stopping while handlers run. */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>

#include <poll.h>
#include <stdatomic.h>
#include <stdio.h>
#include <string.h>
#include <time.h>

#include "workers/runner.c"

/* What a test handler does: counts itself in, waits for the test to let it
 * go (or a time), counts itself out. */
typedef struct probe {
    _Atomic int now;  /* running now, of this group of handlers */
    _Atomic int most; /* the most seen at once */
    _Atomic int calls;
    _Atomic bool release; /* handlers return once this is set */
    int hold_ms;          /* ... or after this long (0: wait for release) */
} probe;

static void sleep_ms(int ms)
{
    struct timespec ts = {ms / 1000, (long)(ms % 1000) * 1000000L};
    nanosleep(&ts, NULL);
}

static cw_outcome held(cw_task *task, void *ud)
{
    (void)task;
    probe *p = ud;
    int n = atomic_fetch_add(&p->now, 1) + 1;
    int m = atomic_load(&p->most);
    while (n > m && !atomic_compare_exchange_weak(&p->most, &m, n))
        ;
    atomic_fetch_add(&p->calls, 1);
    for (int waited = 0; !atomic_load(&p->release); waited++) {
        if (p->hold_ms && waited >= p->hold_ms)
            break;
        sleep_ms(1);
    }
    atomic_fetch_sub(&p->now, 1);
    return CW_OK;
}

static void run_fn(cw_task *t, cw_running *slot, void *ud)
{
    (void)ud;
    assert_int_not_equal(atomic_load(&slot->started_ms), 0);
    assert_string_equal(slot->message_id, t->message_id);
    t->outcome = t->handler->fn(t, t->handler->user_data);
}

typedef struct fixture {
    cw_registry *reg;
    cw_task tasks[64];
    cw_task *ptr[64];
} fixture;

static void tasks_of(fixture *f, size_t n, size_t handler)
{
    for (size_t i = 0; i < n; i++) {
        cw_task *t = &f->tasks[i];
        memset(t, 0, sizeof *t);
        snprintf(t->message_id, sizeof t->message_id, "m-%zu", i);
        snprintf(t->type, sizeof t->type, "%s", f->reg->handlers[handler].type);
        t->handler = &f->reg->handlers[handler];
        f->ptr[i] = t;
    }
}

static size_t take_all(cw_runner *r, cw_task **out, size_t want)
{
    size_t got = 0;
    for (int i = 0; i < 5000 && got < want; i++) {
        struct pollfd p = {.fd = cw_runner_fd(r), .events = POLLIN};
        poll(&p, 1, 10);
        got += cw_runner_take(r, out + got, 64 - got);
    }
    return got;
}

static void release(probe *p)
{
    atomic_store(&p->release, true);
}

static void test_threads_run_at_once(void **state)
{
    (void)state;
    fixture f = {0};
    probe p = {0};
    cw_handler_opts ho = CW_HANDLER_OPTS_INIT;
    ho.concurrent = 1;
    assert_int_equal(cw_registry_new(&f.reg), 0);
    assert_int_equal(cw_register_handler_opts(f.reg, "t.conc", held, &p, &ho), 0);
    cw_runner_opts o = {.threads = 8, .reg = f.reg, .run = run_fn};
    cw_runner *r;
    assert_int_equal(cw_runner_new(&r, &o), 0);
    tasks_of(&f, 20, 0);
    cw_runner_submit(r, f.ptr, 20);
    for (int i = 0; i < 2000 && atomic_load(&p.now) < 8; i++)
        sleep_ms(1);
    sleep_ms(20);
    assert_int_equal(atomic_load(&p.now), 8); /* every thread, no more */
    assert_int_equal(cw_runner_running(r), 8);
    assert_int_equal(cw_runner_pending(r), 20);
    release(&p);
    cw_task *out[64];
    assert_int_equal(take_all(r, out, 20), 20);
    assert_int_equal(atomic_load(&p.most), 8);
    assert_int_equal(cw_runner_pending(r), 0);
    cw_runner_free(r);
    cw_registry_free(f.reg);
}

static void test_not_concurrent_one_at_a_time(void **state)
{
    (void)state;
    fixture f = {0};
    probe legacy = {.hold_ms = 5}, other = {0};
    cw_handler_opts ho = CW_HANDLER_OPTS_INIT;
    ho.concurrent = 1;
    assert_int_equal(cw_registry_new(&f.reg), 0);
    /* Two handlers registered the old way, of one "plugin" (the program):
     * they share one lane; a concurrent one runs beside them. */
    assert_int_equal(cw_register_handler(f.reg, "t.old1", held, &legacy), 0);
    assert_int_equal(cw_register_handler(f.reg, "t.old2", held, &legacy), 0);
    assert_int_equal(cw_register_handler_opts(f.reg, "t.new", held, &other, &ho), 0);
    cw_runner_opts o = {.threads = 8, .reg = f.reg, .run = run_fn};
    cw_runner *r;
    assert_int_equal(cw_runner_new(&r, &o), 0);
    for (size_t i = 0; i < 30; i++) {
        cw_task *t = &f.tasks[i];
        memset(t, 0, sizeof *t);
        snprintf(t->message_id, sizeof t->message_id, "m-%zu", i);
        t->handler = &f.reg->handlers[i % 3];
        f.ptr[i] = t;
    }
    cw_runner_submit(r, f.ptr, 30);
    for (int i = 0; i < 2000 && atomic_load(&other.now) < 7; i++)
        sleep_ms(1);
    /* The concurrent handler took the other threads while the old ones
     * went one by one. */
    assert_true(atomic_load(&other.now) >= 2);
    release(&other);
    cw_task *out[64];
    assert_int_equal(take_all(r, out, 30), 30);
    assert_int_equal(atomic_load(&legacy.most), 1);
    assert_int_equal(atomic_load(&legacy.calls), 20);
    cw_runner_free(r);
    cw_registry_free(f.reg);
}

static void test_type_limit(void **state)
{
    (void)state;
    fixture f = {0};
    probe p = {.hold_ms = 20};
    cw_handler_opts ho = CW_HANDLER_OPTS_INIT;
    ho.concurrent = 1;
    assert_int_equal(cw_registry_new(&f.reg), 0);
    assert_int_equal(cw_register_handler_opts(f.reg, "t.gateway", held, &p, &ho), 0);
    unsigned limit[1] = {3};
    cw_runner_opts o = {.threads = 16, .reg = f.reg, .limit = limit, .run = run_fn};
    cw_runner *r;
    assert_int_equal(cw_runner_new(&r, &o), 0);
    tasks_of(&f, 24, 0);
    cw_runner_submit(r, f.ptr, 24);
    cw_task *out[64];
    assert_int_equal(take_all(r, out, 24), 24);
    assert_int_equal(atomic_load(&p.most), 3);
    cw_runner_free(r);
    cw_registry_free(f.reg);
}

/* A limiter the test opens and closes: admits while `open`, else asks
 * the runner to come back in 1 ms. */
static _Atomic bool gate_open;
static _Atomic int gate_asked;

static int64_t gate(size_t i, int64_t now_ns, void *ud)
{
    (void)i;
    (void)now_ns;
    (void)ud;
    atomic_fetch_add(&gate_asked, 1);
    return atomic_load(&gate_open) ? 0 : 1000000;
}

static void test_rate_limit_has_its_say(void **state)
{
    (void)state;
    fixture f = {0};
    probe limited = {.hold_ms = 1}, free_one = {.hold_ms = 1};
    cw_handler_opts ho = CW_HANDLER_OPTS_INIT;
    ho.concurrent = 1;
    assert_int_equal(cw_registry_new(&f.reg), 0);
    assert_int_equal(cw_register_handler_opts(f.reg, "t.limited", held, &limited, &ho), 0);
    assert_int_equal(cw_register_handler_opts(f.reg, "t.free", held, &free_one, &ho), 0);
    bool rated[2] = {true, false};
    atomic_store(&gate_open, false);
    cw_runner_opts o = {
        .threads = 4, .reg = f.reg, .rate_limited = rated, .rate = gate, .run = run_fn};
    cw_runner *r;
    assert_int_equal(cw_runner_new(&r, &o), 0);
    for (size_t i = 0; i < 10; i++) {
        cw_task *t = &f.tasks[i];
        memset(t, 0, sizeof *t);
        snprintf(t->message_id, sizeof t->message_id, "m-%zu", i);
        t->handler = &f.reg->handlers[i < 5 ? 0 : 1];
        f.ptr[i] = t;
    }
    cw_runner_submit(r, f.ptr, 10);
    cw_task *out[64];
    /* The limited ones wait (asked again and again); the others go by them. */
    assert_int_equal(take_all(r, out, 5), 5);
    for (size_t i = 0; i < 5; i++)
        assert_ptr_equal(out[i]->handler, &f.reg->handlers[1]);
    sleep_ms(30);
    assert_int_equal(atomic_load(&limited.calls), 0);
    assert_true(atomic_load(&gate_asked) > 5);
    atomic_store(&gate_open, true);
    assert_int_equal(take_all(r, out, 5), 5);
    assert_int_equal(atomic_load(&limited.calls), 5);
    cw_runner_free(r);
    cw_registry_free(f.reg);
}

static void test_cancel_and_stop(void **state)
{
    (void)state;
    fixture f = {0};
    probe p = {0};
    cw_handler_opts ho = CW_HANDLER_OPTS_INIT;
    ho.concurrent = 1;
    assert_int_equal(cw_registry_new(&f.reg), 0);
    assert_int_equal(cw_register_handler_opts(f.reg, "t.slow", held, &p, &ho), 0);
    cw_runner_opts o = {.threads = 2, .reg = f.reg, .run = run_fn};
    cw_runner *r;
    assert_int_equal(cw_runner_new(&r, &o), 0);
    tasks_of(&f, 10, 0);
    cw_runner_submit(r, f.ptr, 10);
    for (int i = 0; i < 2000 && atomic_load(&p.now) < 2; i++)
        sleep_ms(1);
    /* Two run; the eight that have not started come back, in order. */
    cw_task *out[64];
    assert_int_equal(cw_runner_cancel(r, out, 64), 8);
    for (size_t i = 0; i < 8; i++)
        assert_ptr_equal(out[i], &f.tasks[i + 2]);
    assert_int_equal(cw_runner_pending(r), 2);
    size_t n;
    cw_running *slots = cw_runner_slots(r, &n);
    assert_int_equal(n, 2);
    assert_int_not_equal(atomic_load(&slots[0].started_ms), 0);
    release(&p);
    /* Stopping waits for the handlers that run. */
    cw_runner_free(r);
    assert_int_equal(atomic_load(&p.calls), 2);
    assert_int_equal(atomic_load(&p.now), 0);
    cw_registry_free(f.reg);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_threads_run_at_once),
        cmocka_unit_test(test_not_concurrent_one_at_a_time),
        cmocka_unit_test(test_type_limit),
        cmocka_unit_test(test_rate_limit_has_its_say),
        cmocka_unit_test(test_cancel_and_stop),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
