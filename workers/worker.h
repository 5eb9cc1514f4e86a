/* Internal: one worker: consume, validate, claim, dispatch, settle. */
#ifndef CW_WORKERS_WORKER_H
#define CW_WORKERS_WORKER_H

#include <signal.h>
#include <stdint.h>

#include "framework/config.h"
#include "framework/crash.h"
#include "framework/registry.h"

typedef struct cw_worker cw_worker;

/* Counters of one worker since it started. */
typedef struct cw_worker_stats {
    uint64_t received, succeeded, duplicates, retried, dead_lettered, invalid, busy_deferred;
    uint64_t sessions; /* broker sessions opened (1 + reconnects) */
} cw_worker_stats;

/* Opens the store and prepares the pipeline. `cfg` and `reg` are borrowed
 * and must outlive the worker. Free with cw_worker_free(). */
int cw_worker_new(cw_worker **out, const cw_config *cfg, cw_registry *reg);

/* Runs until *stop becomes non-zero: connects (failing over between the
 * configured brokers and retrying with backoff while none answers), declares
 * the topology, consumes and settles deliveries in batches. On a lost
 * connection it reconnects and resumes; what was not acknowledged is
 * redelivered by the broker. When *stop is set it finishes the batch in hand,
 * acknowledges it and closes, leaving undelivered prefetched messages to be
 * requeued. Returns 0 after a stop; CW_STATUS_BROKER_REFUSED when the broker
 * refuses the topology (a configuration error, not retried); CW_STATUS_STORE
 * when the store fails. */
int cw_worker_run(cw_worker *w, volatile sig_atomic_t *stop);

const cw_worker_stats *cw_worker_stats_get(const cw_worker *w);

/* What one of the worker's handler threads runs now (framework/crash.h). */
typedef cw_running cw_worker_current;

const char *cw_worker_id(const cw_worker *w);

/* Installs the crash reporter (framework/crash.h) for this worker's store.
 * Call once, before cw_worker_run(), in the process that runs handlers. */
int cw_worker_enable_crash_reports(cw_worker *w);

/* What to do when a handler runs past [pool] handler_timeout, after its
 * report is written: called on the watchdog thread. The program decides
 * (compworker ends the process); without an action the handler goes on. */
void cw_worker_on_handler_timeout(
    cw_worker *w, void (*fn)(const cw_worker_current *cur, int64_t ran_ms, void *ud), void *ud);

/* Counts into the pool's shared metrics (framework/metrics.h): received,
 * succeeded, retried, dead-lettered by class, duplicates, deferred, handler
 * durations, and whether a broker session is open. `mw` is borrowed and
 * must outlive the worker; NULL (the default) counts nothing. Call before
 * cw_worker_run(). */
struct cw_metrics_worker;
void cw_worker_use_metrics(cw_worker *w, struct cw_metrics_worker *mw);

/* Accepts NULL. */
void cw_worker_free(cw_worker *w);

#endif
