/* Internal to the worker: its state and what its files share. workers/worker.c
 * runs the pipeline of a batch (claim, dispatch, settle) and the loop;
 * workers/worker_session.c holds the broker session (connecting, consuming,
 * collecting a batch, keeping the publishing connection alive). */
#ifndef CW_WORKERS_WORKER_PRIVATE_H
#define CW_WORKERS_WORKER_PRIVATE_H

#include <amqp.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "dlq/alert.h"
#include "framework/broker.h"
#include "framework/config.h"
#include "framework/metrics.h"
#include "framework/registry.h"
#include "framework/store.h"
#include "framework/task.h"
#include "workers/runner.h"
#include "workers/worker.h"

#define CW_CONSUME_CH 1
#define CW_PUBLISH_CH 1
#define CW_POLL_MS 250
#define CW_SETTLE_EVERY_MS 50 /* see process_batch() */
#define CW_SWEEP_EVERY_MS 1000
#define CW_SWEEP_BUDGET_MS 100
#define CW_SWEEP_CHUNK 2000
#define CW_BACKOFF_MIN_MS 500
#define CW_BACKOFF_MAX_MS 30000
#define CW_STORE_BACKOFF_MAX_MS 5000 /* between tries of a store that does not answer */
#define CW_KEEPALIVE_MS 5000         /* heartbeat frames sent while the worker waits */
#define CW_SYNC_WAIT_MS 10000        /* for the last commit's durability at a stop */
#define CW_SLOT_POOL_PAGE 4096       /* a slot's pool page: a typical task's properties and body */
#define CW_BATCH_BYTES (16u << 20)   /* bodies one batch holds at least, see collect() */
/* Follow-ups (cw_task_send) whose worker died between their commit and their
 * confirm: looked for this often, once they are this old, each taken for
 * the lease while one worker publishes it. */
#define CW_FOLLOWUP_SCAN_MS 5000
#define CW_FOLLOWUP_ORPHAN_MS 10000
#define CW_FOLLOWUP_LEASE_MS 60000
#define CW_FOLLOWUP_SCAN_MAX 64

/* Where a delivery is in the worker (cw_task.stage). */
enum {
    STAGE_FREE = 0, /* the slot is free */
    STAGE_FRESH,    /* received, not yet claimed */
    STAGE_RUN,      /* with the handler threads (queued or running) */
    STAGE_READY,    /* its outcome known: to settle */
    STAGE_SYNCING,  /* its outcome committed, to be acked once that is durable */
    STAGE_SETTLING  /* being settled (acked) now */
};

/* What settling does with a delivery. */
enum {
    ACT_NONE = 0,
    ACT_RUN,   /* claimed: run the handler */
    ACT_ACK,   /* applied: record done, ack */
    ACT_DUP,   /* already done, or a second copy in this batch: ack */
    ACT_DEAD,  /* already dead-lettered: ack */
    ACT_DLQ,   /* dead-letter (invalid, permanent, exhausted, poison), then ack */
    ACT_RETRY, /* publish the next attempt into the delay topology, then ack */
    ACT_DEFER, /* in progress in another worker: delay an identical copy, then ack */
    ACT_HOLD   /* could not be settled: leave unacked for redelivery */
};

/* How long a busy duplicate waits before it is looked at again. */
#define CW_DEFER_MS 2000

struct cw_worker {
    const cw_config *cfg;
    cw_registry *reg;
    cw_store *store;
    cw_validator val;
    char id[128];
    cw_worker_stats stats;

    amqp_connection_state_t cconn; /* consumes and acks */
    amqp_connection_state_t pconn; /* publishes with confirms */
    cw_publisher pub;
    unsigned url_next;

    cw_task *slots; /* every delivery in hand: prefetch + 1 of them */
    size_t n_slots;
    cw_task *free_slots; /* through ->next */
    cw_task **fresh;     /* received, not yet claimed (batch_max) */
    size_t n_fresh;
    cw_task **ready; /* outcome known, to settle (n_slots) */
    size_t n_ready;
    int64_t ready_since; /* CLOCK_MONOTONIC ms the oldest of them became ready */
    cw_task **syncing;   /* outcome committed, awaiting its durability (n_slots) */
    size_t n_syncing;
    cw_task **acking;      /* n_slots: those of them durable now */
    cw_task **scratch;     /* n_slots, for handing tasks to and from the runner */
    size_t batch_max;      /* deliveries claimed together */
    cw_runner *runner;     /* the handler threads */
    cw_running *run_slots; /* the threads' crash-report slots: a thread's index */
    cw_store_tx **tx;      /* per handler thread: its store transaction (made at
                                    first use), or NULL for a store without one */
    size_t n_tx;
    const char **done_ids; /* n_slots * CW_TASK_SEND_MAX: confirmed follow-ups */
    int64_t next_followup_scan;
    unsigned *limit;             /* per handler index: [handler TYPE] concurrency, 0 = none */
    int64_t *rate_interval_ns;   /* per handler index: 1 s / rate_limit, 0 = none */
    bool *rate_on;               /* per handler index: rate_interval_ns > 0 */
    _Atomic int64_t **rate_next; /* per handler index: its GCRA state (shared or local) */
    _Atomic int64_t *rate_local; /* the state when there is no shared memory */
    bool rate_limited;           /* some handler has a rate limit */
    /* batch_max slots each, for one store round trip per batch: */
    cw_claim_req *claim_reqs;
    cw_claim *claims;
    size_t *claim_of; /* claim_reqs[k] is for batch[claim_of[k]] */
    cw_settle_req *settles;
    int64_t *release; /* tickets of claims handed back unsettled, to release */
    size_t n_release;
    cw_store_opts store_opts; /* how the store is opened (again) */
    bool store_down;          /* the store did not answer: the batch waits for it */
    int64_t store_backoff_ms;
    volatile sig_atomic_t *stop; /* cw_worker_run()'s */
    int64_t last_keepalive_ms;
    int64_t next_sweep;
    cw_retry_policy *policy; /* effective policy per registry handler index */

    cw_alerter *alerter;  /* NULL when no alert hook is configured */
    char crash_dir[4096]; /* "" for the memory store */
    int64_t next_crash_import;
    void (*on_timeout)(const cw_worker_current *cur, int64_t ran_ms, void *ud);
    void *on_timeout_data;
    pthread_t watchdog;
    bool watchdog_running;
    _Atomic bool watchdog_stop;
    cw_metrics_worker *metrics; /* the pool's shared counters, or NULL */
};

/* Opens the broker session: the consuming connection (topology declared,
 * prefetch set, consuming), then the publishing one on the same broker.
 * 0, or the status of what failed with the session closed. */
int cw__worker_session_open(cw_worker *w);

/* Ends the session: with the closing handshake when `graceful` (a stop:
 * the last acks must not be dropped), else without. */
void cw__worker_session_close(cw_worker *w, bool graceful);

/* Reads what the broker has sent into free slots (w->fresh, up to
 * batch_max), waiting up to `wait_ms` for the first delivery or for a
 * handler thread to finish a task, whichever comes first. Returns how many
 * deliveries it read, or <0 on a lost session. */
long cw__worker_collect(cw_worker *w, int wait_ms);

/* Keeps the idle publishing connection's heartbeats flowing; <0 when it is
 * lost. */
int cw__worker_service_publisher(cw_worker *w);

/* Keeps both broker connections alive while the worker waits (for its
 * store) without reading deliveries: a heartbeat frame on the consuming
 * connection, the publishing one serviced. <0 when the session is lost. */
int cw__worker_keep_alive(cw_worker *w);

#endif
