/* Internal: one worker: consume, validate, claim, dispatch, settle. */
#ifndef CW_FRAMEWORK_WORKER_H
#define CW_FRAMEWORK_WORKER_H

#include <signal.h>
#include <stdint.h>

#include "framework/config.h"
#include "framework/registry.h"

typedef struct cw_worker cw_worker;

/* Counters of one worker since it started. */
typedef struct cw_worker_stats {
    uint64_t received, succeeded, duplicates, dead_lettered, invalid, busy_deferred;
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
const char *cw_worker_id(const cw_worker *w);

/* Accepts NULL. */
void cw_worker_free(cw_worker *w);

#endif
