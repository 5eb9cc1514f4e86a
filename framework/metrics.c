/* The pool's counters in shared memory, and their Prometheus exposition:
 * see metrics.h. */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <time.h>

#include "framework/error.h"
#include "framework/metrics.h"

#define CW_METRICS_MAGIC UINT64_C(0x63776d6574726963) /* "cwmetric" */

enum {
    TYPE_FREE = 0,
    TYPE_WRITING = 1,
    TYPE_READY = 2
};

const double cw_metrics_bucket_le[CW_METRICS_BUCKETS] = {0.001, 0.005, 0.01, 0.025, 0.05,
                                                         0.1,   0.25,  0.5,  1,     2.5,
                                                         5,     10,    30,   60,    0 /* +Inf */};

/* The same bounds in nanoseconds, for the per-message path. */
static const uint64_t bucket_ns[CW_METRICS_BUCKETS - 1] = {
    1000000ULL,    5000000ULL,     10000000ULL,    25000000ULL,   50000000ULL,
    100000000ULL,  250000000ULL,   500000000ULL,   1000000000ULL, 2500000000ULL,
    5000000000ULL, 10000000000ULL, 30000000000ULL, 60000000000ULL};

static const char *const class_names[CW_MC_CLASSES] = {[CW_MC_INVALID] = "invalid",
                                                       [CW_MC_PERMANENT] = "permanent",
                                                       [CW_MC_EXHAUSTED] = "exhausted",
                                                       [CW_MC_POISON] = "poison"};

#define relaxed memory_order_relaxed

int cw_metrics_new(cw_metrics **out)
{
    void *p = mmap(NULL, sizeof(cw_metrics), PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1,
                   0);
    if (p == MAP_FAILED)
        return cw__error(CW_STATUS_NOMEM, "cannot map %zu bytes of shared memory for metrics: %s",
                         sizeof(cw_metrics), strerror(errno));
    cw_metrics *m = p; /* zero-filled by the kernel */
    m->magic = CW_METRICS_MAGIC;
    *out = m;
    return 0;
}

void cw_metrics_free(cw_metrics *m)
{
    if (m)
        munmap(m, sizeof *m);
}

int cw_metrics_slot_take(cw_metrics *m)
{
    for (int i = 0; i < CW_METRICS_SLOTS; i++) {
        int want = CW_SLOT_FREE;
        if (atomic_compare_exchange_strong(&m->slots[i].state, &want, CW_SLOT_STARTING)) {
            atomic_store(&m->slots[i].connected, 0);
            atomic_store(&m->slots[i].store_down, 0);
            atomic_store(&m->slots[i].pid, 0);
            return i;
        }
    }
    return -1;
}

static void row_fold(cw_metrics_row *dst, cw_metrics_row *src)
{
    for (int c = 0; c < CW_M_COUNTERS; c++)
        atomic_fetch_add_explicit(&dst->counter[c], atomic_exchange(&src->counter[c], 0), relaxed);
    for (int c = 0; c < CW_MC_CLASSES; c++)
        atomic_fetch_add_explicit(&dst->dead[c], atomic_exchange(&src->dead[c], 0), relaxed);
    for (int b = 0; b < CW_METRICS_BUCKETS; b++)
        atomic_fetch_add_explicit(&dst->bucket[b], atomic_exchange(&src->bucket[b], 0), relaxed);
    atomic_fetch_add_explicit(&dst->duration_ns, atomic_exchange(&src->duration_ns, 0), relaxed);
    for (int b = 0; b < CW_METRICS_BUCKETS; b++)
        atomic_fetch_add_explicit(&dst->wait_bucket[b], atomic_exchange(&src->wait_bucket[b], 0),
                                  relaxed);
    atomic_fetch_add_explicit(&dst->wait_ns, atomic_exchange(&src->wait_ns, 0), relaxed);
    /* A gauge: a dead worker runs nothing. */
    atomic_store(&src->in_flight, 0);
}

void cw_metrics_slot_release(cw_metrics *m, int slot)
{
    if (slot < 0 || slot >= CW_METRICS_SLOTS)
        return;
    cw_metrics_slot *s = &m->slots[slot];
    /* Sequence lock: a reader that saw the fold begin or end in the middle
     * of its sums reads again. */
    atomic_fetch_add_explicit(&m->fold_seq, 1, memory_order_acq_rel);
    for (int t = 0; t < CW_METRICS_TYPES; t++)
        row_fold(&m->retired[t], &s->rows[t]);
    atomic_fetch_add_explicit(&m->retired_sessions, atomic_exchange(&s->sessions, 0), relaxed);
    atomic_fetch_add_explicit(&m->retired_followups, atomic_exchange(&s->followups, 0), relaxed);
    atomic_fetch_add_explicit(&m->fold_seq, 1, memory_order_acq_rel);
    atomic_store(&s->connected, 0);
    atomic_store(&s->store_down, 0);
    atomic_store(&s->pid, 0);
    atomic_store(&s->state, CW_SLOT_FREE);
}

/* The row of `name` in the type table, entering it when it is new; 0 when
 * the table is full. */
static uint8_t type_row(cw_metrics *m, const char *name)
{
    size_t len = strlen(name);
    if (len == 0 || len >= CW_METRICS_TYPE_MAX)
        return 0;
    for (int i = 1; i < CW_METRICS_TYPES; i++) {
        cw_metrics_type *t = &m->types[i];
        for (;;) {
            int st = atomic_load_explicit(&t->state, memory_order_acquire);
            if (st == TYPE_READY) {
                if (strcmp(t->name, name) == 0)
                    return (uint8_t)i;
                break;
            }
            if (st == TYPE_WRITING) { /* another worker enters a type: a moment */
                struct timespec ts = {0, 100000};
                nanosleep(&ts, NULL);
                continue;
            }
            int want = TYPE_FREE;
            if (atomic_compare_exchange_strong(&t->state, &want, TYPE_WRITING)) {
                memcpy(t->name, name, len + 1);
                atomic_store_explicit(&t->state, TYPE_READY, memory_order_release);
                return (uint8_t)i;
            }
        }
    }
    return 0;
}

int cw_metrics_worker_init(cw_metrics_worker *mw, cw_metrics *m, int slot, const cw_registry *reg)
{
    memset(mw, 0, sizeof *mw);
    if (slot < 0 || slot >= CW_METRICS_SLOTS)
        return cw__error(CW_STATUS_INVALID_ARG, "metrics slot %d out of range", slot);
    mw->row_of = calloc(reg->n_handlers ? reg->n_handlers : 1, 1);
    if (!mw->row_of)
        return cw__error(CW_STATUS_NOMEM, "out of memory for the metrics of the task types");
    mw->m = m;
    mw->slot = &m->slots[slot];
    mw->n = reg->n_handlers;
    for (size_t i = 0; i < reg->n_handlers; i++)
        mw->row_of[i] = type_row(m, reg->handlers[i].type);
    return 0;
}

void cw_metrics_worker_free(cw_metrics_worker *mw)
{
    if (!mw)
        return;
    free(mw->row_of);
    memset(mw, 0, sizeof *mw);
}

void cw_metrics_dead(cw_metrics_row *r, const char *error_class)
{
    int c = CW_MC_PERMANENT;
    for (int i = 0; error_class && i < CW_MC_CLASSES; i++) {
        if (strcmp(error_class, class_names[i]) == 0)
            c = i;
    }
    atomic_fetch_add_explicit(&r->dead[c], 1, relaxed);
}

static int bucket_of(uint64_t ns)
{
    int b = 0;
    while (b < CW_METRICS_BUCKETS - 1 && ns > bucket_ns[b])
        b++;
    return b;
}

void cw_metrics_observe(cw_metrics_row *r, uint64_t ns)
{
    atomic_fetch_add_explicit(&r->bucket[bucket_of(ns)], 1, relaxed);
    atomic_fetch_add_explicit(&r->duration_ns, ns, relaxed);
}

void cw_metrics_observe_wait(cw_metrics_row *r, uint64_t ns)
{
    atomic_fetch_add_explicit(&r->wait_bucket[bucket_of(ns)], 1, relaxed);
    atomic_fetch_add_explicit(&r->wait_ns, ns, relaxed);
}

_Atomic int64_t *cw_metrics_rate_state(const cw_metrics_worker *mw, const cw_registry *reg,
                                       const cw_handler_entry *h)
{
    size_t i = (size_t)(h - reg->handlers);
    if (!mw || i >= mw->n || mw->row_of[i] == 0)
        return NULL;
    return &mw->m->types[mw->row_of[i]].rate_next_ns;
}

void cw_metrics_connected(cw_metrics_worker *mw, bool up)
{
    if (up)
        atomic_fetch_add_explicit(&mw->slot->sessions, 1, relaxed);
    atomic_store(&mw->slot->connected, up ? 1 : 0);
}

void cw_metrics_followups(cw_metrics_worker *mw, size_t n)
{
    atomic_fetch_add_explicit(&mw->slot->followups, n, relaxed);
}

void cw_metrics_store_reachable(cw_metrics_worker *mw, bool up)
{
    atomic_store(&mw->slot->store_down, up ? 0 : 1);
}

static void row_add(cw_metrics_sum *dst, const cw_metrics_row *src)
{
    for (int c = 0; c < CW_M_COUNTERS; c++)
        dst->counter[c] += atomic_load_explicit(&src->counter[c], relaxed);
    for (int c = 0; c < CW_MC_CLASSES; c++)
        dst->dead[c] += atomic_load_explicit(&src->dead[c], relaxed);
    for (int b = 0; b < CW_METRICS_BUCKETS; b++)
        dst->bucket[b] += atomic_load_explicit(&src->bucket[b], relaxed);
    dst->duration_ns += atomic_load_explicit(&src->duration_ns, relaxed);
    for (int b = 0; b < CW_METRICS_BUCKETS; b++)
        dst->wait_bucket[b] += atomic_load_explicit(&src->wait_bucket[b], relaxed);
    dst->wait_ns += atomic_load_explicit(&src->wait_ns, relaxed);
    dst->in_flight += atomic_load_explicit(&src->in_flight, relaxed);
}

void cw_metrics_snapshot_take(const cw_metrics *m, cw_metrics_snapshot *out)
{
    cw_metrics *mm = (cw_metrics *)m; /* atomics are read, never written */
    for (;;) {
        uint64_t seq = atomic_load_explicit(&mm->fold_seq, memory_order_acquire);
        if (seq & 1) {
            struct timespec ts = {0, 50000};
            nanosleep(&ts, NULL);
            continue;
        }
        memset(out->rows, 0, sizeof out->rows);
        out->sessions = atomic_load_explicit(&mm->retired_sessions, relaxed);
        out->followups = atomic_load_explicit(&mm->retired_followups, relaxed);
        out->workers_connected = 0;
        for (int t = 0; t < CW_METRICS_TYPES; t++)
            row_add(&out->rows[t], &mm->retired[t]);
        for (int i = 0; i < CW_METRICS_SLOTS; i++) {
            cw_metrics_slot *s = &mm->slots[i];
            if (atomic_load(&s->state) == CW_SLOT_FREE)
                continue;
            for (int t = 0; t < CW_METRICS_TYPES; t++)
                row_add(&out->rows[t], &s->rows[t]);
            out->sessions += atomic_load_explicit(&s->sessions, relaxed);
            out->followups += atomic_load_explicit(&s->followups, relaxed);
            if (atomic_load(&s->connected))
                out->workers_connected++;
        }
        atomic_thread_fence(memory_order_acquire);
        if (atomic_load_explicit(&mm->fold_seq, memory_order_acquire) == seq)
            break;
    }
    for (int t = 0; t < CW_METRICS_TYPES; t++) {
        out->types[t][0] = '\0';
        if (t > 0 && atomic_load_explicit(&mm->types[t].state, memory_order_acquire) == TYPE_READY)
            snprintf(out->types[t], sizeof out->types[t], "%s", mm->types[t].name);
    }
    out->restarts = atomic_load(&mm->restarts);
    out->crash_loops = atomic_load(&mm->crash_loops);
    out->workers_alive = atomic_load(&mm->workers_alive);
    out->workers_desired = atomic_load(&mm->workers_desired);
    out->supervisor_beat_ms = atomic_load(&mm->supervisor_beat_ms);
}

/* ---- exposition ----------------------------------------------------------- */

/* A label value with \, " and newline escaped. */
static void put_label(FILE *f, const char *name, const char *value)
{
    fprintf(f, "%s=\"", name);
    for (const char *p = value; *p; p++) {
        if (*p == '\\' || *p == '"')
            fprintf(f, "\\%c", *p);
        else if (*p == '\n')
            fputs("\\n", f);
        else
            fputc(*p, f);
    }
    fputc('"', f);
}

static void header(FILE *f, const char *name, const char *type, const char *help)
{
    fprintf(f, "# HELP %s %s\n# TYPE %s %s\n", name, help, name, type);
}

/* A row is shown when its type is known, or (row 0) when it counted something. */
static bool row_shown(const cw_metrics_snapshot *s, int t)
{
    if (s->types[t][0])
        return true;
    if (t != 0)
        return false;
    const cw_metrics_sum *r = &s->rows[0];
    for (int c = 0; c < CW_M_COUNTERS; c++)
        if (r->counter[c])
            return true;
    for (int c = 0; c < CW_MC_CLASSES; c++)
        if (r->dead[c])
            return true;
    for (int b = 0; b < CW_METRICS_BUCKETS; b++)
        if (r->bucket[b])
            return true;
    return false;
}

static const char *type_label(const cw_metrics_snapshot *s, int t)
{
    return t == 0 ? "(other)" : s->types[t];
}

static void per_type(FILE *f, const cw_metrics_snapshot *s, const cw_metrics_info *info,
                     const char *name, const char *help, cw_metrics_counter c)
{
    header(f, name, "counter", help);
    for (int t = 0; t < CW_METRICS_TYPES; t++) {
        if (!row_shown(s, t))
            continue;
        fprintf(f, "%s{", name);
        put_label(f, "pool", info->pool);
        fputc(',', f);
        put_label(f, "type", type_label(s, t));
        fprintf(f, "} %llu\n", (unsigned long long)s->rows[t].counter[c]);
    }
}

static void gauge(FILE *f, const char *name, const char *type, const char *help,
                  const cw_metrics_info *info, const char *queue, long long value)
{
    header(f, name, type, help);
    fprintf(f, "%s{", name);
    put_label(f, "pool", info->pool);
    if (queue) {
        fputc(',', f);
        put_label(f, "queue", queue);
    }
    fprintf(f, "} %lld\n", value);
}

/* A histogram by type: handler durations, or (`wait`) waits for a thread. */
static void histogram(FILE *f, const cw_metrics_snapshot *s, const cw_metrics_info *info,
                      const char *name, const char *help, bool wait)
{
    header(f, name, "histogram", help);
    for (int t = 0; t < CW_METRICS_TYPES; t++) {
        if (!row_shown(s, t))
            continue;
        const cw_metrics_sum *r = &s->rows[t];
        const uint64_t *bucket = wait ? r->wait_bucket : r->bucket;
        uint64_t cum = 0;
        for (int b = 0; b < CW_METRICS_BUCKETS; b++) {
            cum += bucket[b];
            fprintf(f, "%s_bucket{", name);
            put_label(f, "pool", info->pool);
            fputc(',', f);
            put_label(f, "type", type_label(s, t));
            if (b == CW_METRICS_BUCKETS - 1)
                fprintf(f, ",le=\"+Inf\"} %llu\n", (unsigned long long)cum);
            else
                fprintf(f, ",le=\"%g\"} %llu\n", cw_metrics_bucket_le[b], (unsigned long long)cum);
        }
        fprintf(f, "%s_sum{", name);
        put_label(f, "pool", info->pool);
        fputc(',', f);
        put_label(f, "type", type_label(s, t));
        fprintf(f, "} %.6f\n", (double)(wait ? r->wait_ns : r->duration_ns) / 1e9);
        fprintf(f, "%s_count{", name);
        put_label(f, "pool", info->pool);
        fputc(',', f);
        put_label(f, "type", type_label(s, t));
        fprintf(f, "} %llu\n", (unsigned long long)cum);
    }
}

int cw_metrics_render(const cw_metrics_snapshot *s, const cw_metrics_info *info, char **out,
                      size_t *len)
{
    char *buf = NULL;
    size_t size = 0;
    FILE *f = open_memstream(&buf, &size);
    if (!f)
        return cw__error(CW_STATUS_NOMEM, "out of memory rendering metrics");

    per_type(f, s, info, "compworker_tasks_received_total",
             "Deliveries taken from the pool queue and settled, by task type.", CW_M_RECEIVED);
    per_type(f, s, info, "compworker_tasks_succeeded_total",
             "Tasks whose handler succeeded, by task type.", CW_M_SUCCEEDED);
    per_type(f, s, info, "compworker_tasks_retried_total",
             "Transient failures scheduled for another attempt, by task type.", CW_M_RETRIED);
    per_type(f, s, info, "compworker_tasks_duplicates_skipped_total",
             "Deliveries of a message ID already applied or dead-lettered, acked without "
             "running, by task type.",
             CW_M_DUPLICATES);
    per_type(f, s, info, "compworker_tasks_deferred_total",
             "Deliveries of a message ID in progress in another worker, looked at again later, "
             "by task type.",
             CW_M_DEFERRED);

    header(f, "compworker_tasks_dead_lettered_total", "counter",
           "Tasks moved to the dead-letter queue, by task type and error class.");
    for (int t = 0; t < CW_METRICS_TYPES; t++) {
        if (!row_shown(s, t))
            continue;
        for (int c = 0; c < CW_MC_CLASSES; c++) {
            if (t == 0 && s->rows[t].dead[c] == 0)
                continue;
            fputs("compworker_tasks_dead_lettered_total{", f);
            put_label(f, "pool", info->pool);
            fputc(',', f);
            put_label(f, "type", type_label(s, t));
            fputc(',', f);
            put_label(f, "error_class", class_names[c]);
            fprintf(f, "} %llu\n", (unsigned long long)s->rows[t].dead[c]);
        }
    }

    histogram(f, s, info, "compworker_handler_duration_seconds",
              "Time handlers took to run, by task type.", false);
    histogram(f, s, info, "compworker_handler_wait_seconds",
              "Time tasks waited for a free handler thread (concurrency, the type's own "
              "concurrency, a rate limit), by task type.",
              true);
    header(f, "compworker_handlers_in_flight", "gauge", "Handlers running now, by task type.");
    for (int t = 0; t < CW_METRICS_TYPES; t++) {
        if (!row_shown(s, t))
            continue;
        fputs("compworker_handlers_in_flight{", f);
        put_label(f, "pool", info->pool);
        fputc(',', f);
        put_label(f, "type", type_label(s, t));
        fprintf(f, "} %lld\n", (long long)s->rows[t].in_flight);
    }

    gauge(f, "compworker_workers", "gauge", "Worker processes alive.", info, NULL,
          s->workers_alive);
    gauge(f, "compworker_workers_desired", "gauge", "Worker processes the supervisor keeps.", info,
          NULL, s->workers_desired);
    gauge(f, "compworker_workers_connected", "gauge",
          "Worker processes with an open broker session.", info, NULL, s->workers_connected);
    gauge(f, "compworker_worker_restarts_total", "counter",
          "Workers started again after they exited without being asked to.", info, NULL,
          (long long)s->restarts);
    gauge(f, "compworker_crash_loops_total", "counter",
          "Crash loops detected (workers dying again and again).", info, NULL,
          (long long)s->crash_loops);
    gauge(f, "compworker_broker_sessions_total", "counter",
          "Broker sessions opened by the workers (the first ones and every reconnection).", info,
          NULL, (long long)s->sessions);
    gauge(f, "compworker_followups_published_total", "counter",
          "Follow-up messages of done tasks (cw_task_send) published and confirmed.", info, NULL,
          (long long)s->followups);
    if (info->queue_ready >= 0)
        gauge(f, "compworker_queue_messages", "gauge",
              "Messages ready in the pool queue (not yet delivered).", info, info->queue,
              info->queue_ready);
    if (info->queue_consumers >= 0)
        gauge(f, "compworker_queue_consumers", "gauge", "Consumers of the pool queue.", info,
              info->queue, info->queue_consumers);
    if (info->queue_foreign_consumers >= 0)
        gauge(f, "compworker_queue_foreign_consumers", "gauge",
              "Consumers of the pool queue that are not this pool's workers (on a pool with a "
              "SQLite store, another host's may apply a task twice).",
              info, info->queue, info->queue_foreign_consumers);
    if (info->dlq_ready >= 0)
        gauge(f, "compworker_dlq_messages", "gauge", "Messages in the pool's dead-letter queue.",
              info, info->dlq, info->dlq_ready);
    if (info->sagas_started >= 0) {
        gauge(f, "compworker_sagas_started_total", "counter",
              "Saga compensation plans accepted (the store's sagas).", info, NULL,
              info->sagas_started);
        gauge(f, "compworker_sagas_done_total", "counter", "Sagas whose every step is done.", info,
              NULL, info->sagas_done);
        gauge(f, "compworker_sagas_running", "gauge", "Sagas not done yet.", info, NULL,
              info->sagas_running);
        gauge(f, "compworker_sagas_stuck", "gauge",
              "Sagas halted by a dead-lettered step (replay it to resume).", info, NULL,
              info->sagas_stuck);
        gauge(f, "compworker_sagas_overdue", "gauge", "Sagas past their deadline, not done.", info,
              NULL, info->sagas_overdue);
        header(f, "compworker_saga_duration_seconds", "summary",
               "Time from a plan's arrival to its last step done, of the done sagas.");
        fprintf(f, "compworker_saga_duration_seconds_sum{");
        put_label(f, "pool", info->pool);
        fprintf(f, "} %.3f\ncompworker_saga_duration_seconds_count{", info->sagas_done_ms / 1000.0);
        put_label(f, "pool", info->pool);
        fprintf(f, "} %lld\n", (long long)info->sagas_done);
    }

    if (fclose(f) != 0 || !buf) {
        free(buf);
        return cw__error(CW_STATUS_NOMEM, "out of memory rendering metrics");
    }
    *out = buf;
    *len = size;
    return 0;
}
