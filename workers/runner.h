/* Internal: the worker's handler threads.
 *
 * The worker's main thread reads deliveries, claims them, hands the ones to
 * run to the runner (cw_runner_submit), takes back the ones that ran
 * (cw_runner_take) and settles them; it never waits for a handler. The
 * runner's threads take the queued tasks in order, each when it may run:
 *
 *   - at most `threads` at once ([pool] concurrency);
 *   - at most limit[i] of handler i at once ([handler TYPE] concurrency);
 *   - a handler not registered as concurrent never beside itself, nor beside
 *     another such handler of the same plugin (a plugin written for one
 *     thread stays correct);
 *   - a handler with a rate limit only when the limiter admits it.
 *
 * A task's fields are written by the main thread before it is submitted and
 * after it is taken back, and by one handler thread in between: the runner's
 * lock orders the two. */
#ifndef CW_WORKERS_RUNNER_H
#define CW_WORKERS_RUNNER_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "framework/crash.h"
#include "framework/registry.h"
#include "framework/task.h"

typedef struct cw_runner cw_runner;

/* Asks whether handler `i` may start now under its rate limit: 0 when it
 * may (a start is counted), else how many nanoseconds to wait before asking
 * again. Called on handler threads with the runner's lock held; must not
 * block. */
typedef int64_t (*cw_runner_rate_fn)(size_t i, int64_t now_ns, void *ud);

/* Runs the task's handler and records its outcome in the task (on a
 * handler thread). `slot` is the thread's crash-report slot, already filled
 * with the task; the function clears started_ms once the handler returned.
 * t->started_ns holds when the thread took the task (CLOCK_MONOTONIC ns). */
typedef void (*cw_runner_run_fn)(cw_task *t, cw_running *slot, void *ud);

/* Observes, per task, how long it waited for a thread (nanoseconds), on a
 * handler thread; and the number of handler i's tasks running (+1 / -1). */
typedef void (*cw_runner_wait_fn)(const cw_task *t, int64_t waited_ns, void *ud);
typedef void (*cw_runner_flight_fn)(size_t i, int delta, void *ud);

typedef struct cw_runner_opts {
    unsigned threads;         /* handler threads, >= 1 */
    const cw_registry *reg;   /* borrowed: must outlive the runner */
    const unsigned *limit;    /* per handler index: at most this many at once; 0 = threads */
    const bool *rate_limited; /* per handler index, or NULL: ask `rate` before a start */
    cw_runner_rate_fn rate;
    cw_runner_run_fn run;       /* required */
    cw_runner_wait_fn waited;   /* may be NULL */
    cw_runner_flight_fn flight; /* may be NULL */
    void *ud;                   /* passed to the callbacks */
} cw_runner_opts;

/* Starts the threads. Free with cw_runner_free(). CW_STATUS_NOMEM, or
 * CW_STATUS_INVALID_ARG when a thread cannot be started. */
int cw_runner_new(cw_runner **out, const cw_runner_opts *opts);

/* Queues tasks to run, in order (main thread). Each has its handler set. */
void cw_runner_submit(cw_runner *r, cw_task *const *tasks, size_t n);

/* Moves up to `cap` tasks that ran into out[], oldest first (main thread);
 * returns how many. */
size_t cw_runner_take(cw_runner *r, cw_task **out, size_t cap);

/* Takes back up to `cap` queued tasks that have not started (a stop, a lost
 * session), returns how many. */
size_t cw_runner_cancel(cw_runner *r, cw_task **out, size_t cap);

/* A file descriptor that polls readable while tasks that ran wait to be
 * taken; cw_runner_take() clears it. */
int cw_runner_fd(const cw_runner *r);

/* Tasks submitted and not yet taken back (queued, running or ran). */
size_t cw_runner_pending(cw_runner *r);

/* Tasks running now. */
size_t cw_runner_running(cw_runner *r);

/* Blocks until a task has run or `timeout_ms` passed (main thread, when
 * nothing else is to be done). */
void cw_runner_wait(cw_runner *r, int timeout_ms);

/* The threads' crash-report slots (n = threads), for the watchdog. */
cw_running *cw_runner_slots(cw_runner *r, size_t *n);

/* Stops the threads once the handlers running now return (queued tasks are
 * left: cancel them first) and frees the runner. Accepts NULL. */
void cw_runner_free(cw_runner *r);

#endif
