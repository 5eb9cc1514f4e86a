/* Internal: the pool's counters, in memory shared by the supervisor and its
 * worker processes, and their Prometheus text exposition.
 *
 * The supervisor maps one region (MAP_SHARED | MAP_ANONYMOUS) before it
 * forks anything; every process of the pool sees the same bytes. It holds:
 *   - a fixed table of task types, filled by the workers as they register
 *     their handlers (row 0 counts what has no row: invalid tasks, tasks of
 *     an unknown type, types past the table);
 *   - one slot per worker process (CW_METRICS_SLOTS), handed out by the
 *     supervisor at fork and given back when it reaps the worker: a worker
 *     writes only its own slot, with relaxed atomic adds (no lock, no
 *     syscall on the per-message path);
 *   - "retired" rows: the counts of workers that have exited, folded in by
 *     the supervisor under a sequence lock so that a reader never sees a
 *     count twice or not at all (pool counters only grow);
 *   - the supervisor's gauges and counters (workers, restarts, crash loops).
 * A reader (the monitor process serving /metrics) sums the retired rows and
 * every slot. */
#ifndef CW_FRAMEWORK_METRICS_H
#define CW_FRAMEWORK_METRICS_H

#include <stdatomic.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

#include "framework/config.h"
#include "framework/registry.h"

#define CW_METRICS_SLOTS 128 /* worker processes at once (a rolling restart adds one) */
#define CW_METRICS_TYPES 64  /* rows of the type table, row 0 included */
#define CW_METRICS_TYPE_MAX 256
#define CW_METRICS_BUCKETS 15 /* handler duration buckets, the last one +Inf */

/* Per-type counters. */
typedef enum cw_metrics_counter {
    CW_M_RECEIVED = 0, /* deliveries taken and settled (every outcome) */
    CW_M_SUCCEEDED,    /* handler said OK */
    CW_M_RETRIED,      /* a retry was scheduled (confirmed in the delay topology) */
    CW_M_DUPLICATES,   /* message ID already done or dead-lettered: skipped */
    CW_M_DEFERRED,     /* in progress in another worker: looked at again later */
    CW_M_COUNTERS
} cw_metrics_counter;

/* Error classes of dead-lettered tasks. */
typedef enum cw_metrics_class {
    CW_MC_INVALID = 0,
    CW_MC_PERMANENT,
    CW_MC_EXHAUSTED,
    CW_MC_POISON,
    CW_MC_CLASSES
} cw_metrics_class;

typedef struct cw_metrics_row {
    _Atomic uint64_t counter[CW_M_COUNTERS];
    _Atomic uint64_t dead[CW_MC_CLASSES];
    _Atomic uint64_t bucket[CW_METRICS_BUCKETS];      /* not cumulative */
    _Atomic uint64_t duration_ns;                     /* sum */
    _Atomic uint64_t wait_bucket[CW_METRICS_BUCKETS]; /* time waiting for a handler thread */
    _Atomic uint64_t wait_ns;
    _Atomic int64_t in_flight; /* handlers running now (a gauge: not folded) */
} cw_metrics_row;

typedef enum cw_slot_state {
    CW_SLOT_FREE = 0,
    CW_SLOT_STARTING, /* forked: loading plugins, opening the store */
    CW_SLOT_READY,    /* initialised: running its loop (connected or trying to) */
    CW_SLOT_STOPPING  /* asked to stop by the supervisor */
} cw_slot_state;

typedef struct cw_metrics_slot {
    _Atomic int state; /* cw_slot_state */
    _Atomic int pid;
    _Atomic int connected;      /* 1 while a broker session is open */
    _Atomic int store_down;     /* 1 while the worker's store does not answer */
    _Atomic uint64_t sessions;  /* broker sessions opened */
    _Atomic uint64_t followups; /* follow-up messages published and confirmed */
    cw_metrics_row rows[CW_METRICS_TYPES];
} cw_metrics_slot;

typedef struct cw_metrics_type {
    _Atomic int state; /* 0 free, 1 being written, 2 ready */
    char name[CW_METRICS_TYPE_MAX];
    /* [handler TYPE] rate_limit, shared by the pool's workers on this host:
     * the next CLOCK_MONOTONIC ns a start is allowed (GCRA's theoretical
     * arrival time). */
    _Atomic int64_t rate_next_ns;
} cw_metrics_type;

/* The shared region. */
typedef struct cw_metrics {
    uint64_t magic;
    _Atomic int64_t supervisor_beat_ms; /* CLOCK_MONOTONIC of the supervisor's last loop */
    _Atomic uint32_t workers_desired;
    _Atomic uint32_t workers_alive;
    _Atomic uint64_t restarts;    /* workers started again after an unrequested exit */
    _Atomic uint64_t crash_loops; /* crash loops detected */
    /* A crash loop to alert on: the supervisor writes the reason, then
     * increments the sequence; the monitor posts it. */
    _Atomic uint64_t alert_seq;
    char alert_reason[512];
    _Atomic uint64_t fold_seq; /* odd while a slot is being folded into `retired` */
    cw_metrics_type types[CW_METRICS_TYPES];
    cw_metrics_row retired[CW_METRICS_TYPES];
    _Atomic uint64_t retired_sessions;
    _Atomic uint64_t retired_followups;
    cw_metrics_slot slots[CW_METRICS_SLOTS];
} cw_metrics;

/* Maps a new zeroed region, shared with every process forked after it.
 * Free with cw_metrics_free() (in the process that made it, after its
 * children are gone). */
int cw_metrics_new(cw_metrics **out);
void cw_metrics_free(cw_metrics *m);

/* Supervisor: a free slot for a worker about to be forked (state STARTING),
 * or -1 when none is free. */
int cw_metrics_slot_take(cw_metrics *m);

/* Supervisor, after reaping the slot's worker: folds its counts into the
 * retired rows and frees the slot. */
void cw_metrics_slot_release(cw_metrics *m, int slot);

/* What a worker process uses to count: its slot and, per registry handler,
 * its row of the type table. */
typedef struct cw_metrics_worker {
    cw_metrics *m;
    cw_metrics_slot *slot;
    uint8_t *row_of; /* per handler index */
    size_t n;
} cw_metrics_worker;

/* Worker: enters the registry's types in the table. Free with
 * cw_metrics_worker_free(). */
int cw_metrics_worker_init(cw_metrics_worker *mw, cw_metrics *m, int slot, const cw_registry *reg);
void cw_metrics_worker_free(cw_metrics_worker *mw);

/* The row of a registry handler (NULL: row 0). */
static inline cw_metrics_row *cw_metrics_row_of(const cw_metrics_worker *mw, const cw_registry *reg,
                                                const cw_handler_entry *h)
{
    size_t i = h ? (size_t)(h - reg->handlers) : (size_t)-1;
    return &mw->slot->rows[i < mw->n ? mw->row_of[i] : 0];
}

static inline void cw_metrics_add(cw_metrics_row *r, cw_metrics_counter c)
{
    atomic_fetch_add_explicit(&r->counter[c], 1, memory_order_relaxed);
}

/* Counts a dead-letter by its error class ("invalid", "permanent",
 * "exhausted", "poison"; anything else counts as permanent). */
void cw_metrics_dead(cw_metrics_row *r, const char *error_class);

/* Records one handler run of `ns` nanoseconds. */
void cw_metrics_observe(cw_metrics_row *r, uint64_t ns);

/* Records how long a task waited for a handler thread. */
void cw_metrics_observe_wait(cw_metrics_row *r, uint64_t ns);

/* Counts a handler starting (+1) or returning (-1). */
static inline void cw_metrics_in_flight(cw_metrics_row *r, int delta)
{
    atomic_fetch_add_explicit(&r->in_flight, delta, memory_order_relaxed);
}

/* The shared rate-limit state of a registry handler's type (NULL: none). */
_Atomic int64_t *cw_metrics_rate_state(const cw_metrics_worker *mw, const cw_registry *reg,
                                       const cw_handler_entry *h);

/* Marks the worker's broker session open or closed. */
void cw_metrics_connected(cw_metrics_worker *mw, bool up);

/* Counts follow-up messages (cw_task_send) published and confirmed. */
void cw_metrics_followups(cw_metrics_worker *mw, size_t n);

/* Marks whether the worker's store answers. */
void cw_metrics_store_reachable(cw_metrics_worker *mw, bool up);

/* What the exposition says besides the shared counters. */
typedef struct cw_metrics_info {
    const char *pool;
    const char *queue;
    const char *dlq;
    int64_t queue_ready;             /* -1: unknown (not shown) */
    int64_t queue_consumers;         /* -1: unknown */
    int64_t dlq_ready;               /* -1: unknown */
    int64_t queue_foreign_consumers; /* consumers not the pool's workers; -1: unknown */
    /* saga plans ([pool] saga_plans), from the store; sagas_started -1: not shown */
    int64_t sagas_started, sagas_done, sagas_running, sagas_stuck, sagas_overdue;
    int64_t sagas_done_ms; /* the done ones' time to complete, in all */
} cw_metrics_info;

/* A row read out of shared memory. */
typedef struct cw_metrics_sum {
    uint64_t counter[CW_M_COUNTERS];
    uint64_t dead[CW_MC_CLASSES];
    uint64_t bucket[CW_METRICS_BUCKETS];
    uint64_t duration_ns;
    uint64_t wait_bucket[CW_METRICS_BUCKETS];
    uint64_t wait_ns;
    int64_t in_flight;
} cw_metrics_sum;

/* Sums and counts of the whole pool at one instant. */
typedef struct cw_metrics_snapshot {
    cw_metrics_sum rows[CW_METRICS_TYPES];
    char types[CW_METRICS_TYPES][CW_METRICS_TYPE_MAX]; /* "" for unused rows */
    uint64_t sessions, followups, restarts, crash_loops;
    unsigned workers_alive, workers_desired, workers_connected;
    int64_t supervisor_beat_ms;
} cw_metrics_snapshot;

void cw_metrics_snapshot_take(const cw_metrics *m, cw_metrics_snapshot *out);

/* The Prometheus text exposition (format 0.0.4) of a snapshot in a new
 * NUL-terminated buffer (free() it). CW_STATUS_NOMEM. */
int cw_metrics_render(const cw_metrics_snapshot *s, const cw_metrics_info *info, char **out,
                      size_t *len);

/* The upper bounds of the duration buckets, in seconds (the last is +Inf). */
extern const double cw_metrics_bucket_le[CW_METRICS_BUCKETS];

#endif
