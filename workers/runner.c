/* The worker's handler threads (runner.h). One lock orders everything: the
 * queue of tasks to run (in submission order), the counts that limit what
 * may start, and the list of tasks that ran. A thread that finds nothing it
 * may start waits on the condition variable, for a bounded time when a rate
 * limit will admit something later. */
#include <errno.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <time.h>
#include <unistd.h>

#include "framework/clock.h"
#include "framework/error.h"
#include "workers/runner.h"

typedef struct runner_thread {
    cw_runner *r;
    pthread_t tid;
    bool started;
} runner_thread;

struct cw_runner {
    cw_runner_opts o;
    size_t n_handlers;
    unsigned *limit;   /* per handler index, resolved (never 0) */
    unsigned *running; /* per handler index */
    int *group;        /* per handler index: its serial group, -1 for a concurrent one */
    bool *group_busy;  /* per group */
    runner_thread *threads;
    cw_running *slots; /* one per thread */
    int efd;

    pthread_mutex_t mu;
    pthread_cond_t cv;        /* CLOCK_MONOTONIC: work queued, a slot freed, stop */
    pthread_cond_t done_cv;   /* a task ran (cw_runner_wait) */
    cw_task *q_head, *q_tail; /* to run */
    cw_task *d_head, *d_tail; /* ran, to take */
    size_t queued, in_run, done;
    unsigned idle; /* threads waiting */
    bool stop;
};

static size_t hidx(const cw_runner *r, const cw_task *t)
{
    return (size_t)(t->handler - r->o.reg->handlers);
}

/* The first queued task that may start now, unlinked from the queue and
 * counted as running; NULL with *wait_ns the time until a rate-limited one
 * may (0: nothing will until something changes). Under the lock. */
static cw_task *pick_locked(cw_runner *r, int64_t *wait_ns)
{
    *wait_ns = 0;
    cw_task *prev = NULL;
    int64_t now = 0;
    for (cw_task *t = r->q_head; t; prev = t, t = t->next) {
        size_t i = hidx(r, t);
        if (r->running[i] >= r->limit[i])
            continue;
        int g = r->group[i];
        if (g >= 0 && r->group_busy[g])
            continue;
        if (r->o.rate_limited && r->o.rate_limited[i]) {
            if (!now)
                now = cw__mono_ns();
            int64_t w = r->o.rate(i, now, r->o.ud);
            if (w > 0) {
                if (!*wait_ns || w < *wait_ns)
                    *wait_ns = w;
                continue;
            }
        }
        if (prev)
            prev->next = t->next;
        else
            r->q_head = t->next;
        if (r->q_tail == t)
            r->q_tail = prev;
        t->next = NULL;
        r->queued--;
        r->in_run++;
        r->running[i]++;
        if (g >= 0)
            r->group_busy[g] = true;
        return t;
    }
    return NULL;
}

static void fill_slot(cw_running *s, const cw_task *t, int64_t start_ns)
{
    memcpy(s->message_id, t->message_id, sizeof s->message_id);
    memcpy(s->type, t->type, sizeof s->type);
    if (s->handler_of != t->handler) {
        cw__task_describe_handler(t, s->handler, sizeof s->handler);
        s->handler_of = t->handler;
    }
    atomic_store(&s->started_ms, start_ns / 1000000);
}

static void *thread_main(void *arg)
{
    runner_thread *th = arg;
    cw_runner *r = th->r;
    cw_running *slot = &r->slots[th - r->threads];
    cw__crash_thread_slot(slot);
    pthread_mutex_lock(&r->mu);
    for (;;) {
        int64_t wait_ns = 0;
        cw_task *t = r->stop ? NULL : pick_locked(r, &wait_ns);
        if (!t) {
            if (r->stop)
                break;
            r->idle++;
            if (wait_ns > 0) {
                struct timespec ts = cw__mono_timespec(cw__mono_ms() + wait_ns / 1000000 + 1);
                pthread_cond_timedwait(&r->cv, &r->mu, &ts);
            } else {
                pthread_cond_wait(&r->cv, &r->mu);
            }
            r->idle--;
            continue;
        }
        pthread_mutex_unlock(&r->mu);

        /* One clock read serves the wait's metric, the crash report's
         * start and the handler's duration (t->started_ns). */
        int64_t start = cw__mono_ns();
        t->started_ns = start;
        if (r->o.waited)
            r->o.waited(t, start - t->queued_ns, r->o.ud);
        size_t i = hidx(r, t);
        if (r->o.flight)
            r->o.flight(i, 1, r->o.ud);
        fill_slot(slot, t, start);
        r->o.run(t, slot, r->o.ud);
        atomic_store(&slot->started_ms, 0);
        if (r->o.flight)
            r->o.flight(i, -1, r->o.ud);

        pthread_mutex_lock(&r->mu);
        r->in_run--;
        r->running[i]--;
        if (r->group[i] >= 0)
            r->group_busy[r->group[i]] = false;
        bool was_empty = r->d_head == NULL;
        if (r->d_tail)
            r->d_tail->next = t;
        else
            r->d_head = t;
        r->d_tail = t;
        r->done++;
        if (was_empty) {
            uint64_t one = 1;
            ssize_t w = write(r->efd, &one, sizeof one);
            (void)w;
        }
        pthread_cond_signal(&r->done_cv);
        /* What this task held may let a queued one start. */
        if (r->queued && r->idle)
            pthread_cond_signal(&r->cv);
    }
    pthread_mutex_unlock(&r->mu);
    cw__crash_thread_slot(NULL);
    return NULL;
}

void cw_runner_submit(cw_runner *r, cw_task *const *tasks, size_t n)
{
    if (!n)
        return;
    int64_t now = cw__mono_ns();
    pthread_mutex_lock(&r->mu);
    for (size_t k = 0; k < n; k++) {
        cw_task *t = tasks[k];
        t->next = NULL;
        t->queued_ns = now;
        if (r->q_tail)
            r->q_tail->next = t;
        else
            r->q_head = t;
        r->q_tail = t;
    }
    r->queued += n;
    unsigned wake = r->idle < n ? r->idle : (unsigned)n;
    for (unsigned k = 0; k < wake; k++)
        pthread_cond_signal(&r->cv);
    pthread_mutex_unlock(&r->mu);
}

size_t cw_runner_take(cw_runner *r, cw_task **out, size_t cap)
{
    uint64_t v;
    ssize_t rd = read(r->efd, &v, sizeof v); /* clears it; EAGAIN when it was not set */
    (void)rd;
    size_t n = 0;
    pthread_mutex_lock(&r->mu);
    while (r->d_head && n < cap) {
        cw_task *t = r->d_head;
        r->d_head = t->next;
        t->next = NULL;
        out[n++] = t;
    }
    if (!r->d_head)
        r->d_tail = NULL;
    r->done -= n;
    if (r->d_head) {
        /* More than `cap` ran: the descriptor stays readable. */
        uint64_t one = 1;
        ssize_t w = write(r->efd, &one, sizeof one);
        (void)w;
    }
    pthread_mutex_unlock(&r->mu);
    return n;
}

size_t cw_runner_cancel(cw_runner *r, cw_task **out, size_t cap)
{
    size_t n = 0;
    pthread_mutex_lock(&r->mu);
    while (r->q_head && n < cap) {
        cw_task *t = r->q_head;
        r->q_head = t->next;
        t->next = NULL;
        out[n++] = t;
    }
    if (!r->q_head)
        r->q_tail = NULL;
    r->queued -= n;
    pthread_mutex_unlock(&r->mu);
    return n;
}

int cw_runner_fd(const cw_runner *r)
{
    return r->efd;
}

size_t cw_runner_pending(cw_runner *r)
{
    pthread_mutex_lock(&r->mu);
    size_t n = r->queued + r->in_run + r->done;
    pthread_mutex_unlock(&r->mu);
    return n;
}

size_t cw_runner_running(cw_runner *r)
{
    pthread_mutex_lock(&r->mu);
    size_t n = r->in_run;
    pthread_mutex_unlock(&r->mu);
    return n;
}

void cw_runner_wait(cw_runner *r, int timeout_ms)
{
    pthread_mutex_lock(&r->mu);
    if (!r->d_head && (r->queued || r->in_run)) {
        struct timespec ts = cw__mono_timespec(cw__mono_ms() + timeout_ms);
        pthread_cond_timedwait(&r->done_cv, &r->mu, &ts);
    }
    pthread_mutex_unlock(&r->mu);
}

cw_running *cw_runner_slots(cw_runner *r, size_t *n)
{
    *n = r->o.threads;
    return r->slots;
}

static void free_arrays(cw_runner *r)
{
    free(r->limit);
    free(r->running);
    free(r->group);
    free(r->group_busy);
    free(r->threads);
    free(r->slots);
}

void cw_runner_free(cw_runner *r)
{
    if (!r)
        return;
    pthread_mutex_lock(&r->mu);
    r->stop = true;
    pthread_cond_broadcast(&r->cv);
    pthread_mutex_unlock(&r->mu);
    for (unsigned k = 0; k < r->o.threads; k++) {
        if (r->threads[k].started)
            pthread_join(r->threads[k].tid, NULL);
    }
    pthread_cond_destroy(&r->cv);
    pthread_cond_destroy(&r->done_cv);
    pthread_mutex_destroy(&r->mu);
    close(r->efd);
    free_arrays(r);
    free(r);
}

/* The serial groups: a handler that is not concurrent shares one with the
 * other such handlers of its plugin (those of the embedding program share
 * one too). */
static void make_groups(cw_runner *r)
{
    size_t n_groups = 0;
    for (size_t i = 0; i < r->n_handlers; i++) {
        const cw_handler_entry *h = &r->o.reg->handlers[i];
        r->group[i] = -1;
        if (h->concurrent)
            continue;
        for (size_t j = 0; j < i; j++) {
            const cw_handler_entry *o = &r->o.reg->handlers[j];
            if (!o->concurrent && o->plugin == h->plugin) {
                r->group[i] = r->group[j];
                break;
            }
        }
        if (r->group[i] < 0)
            r->group[i] = (int)n_groups++;
    }
}

int cw_runner_new(cw_runner **out, const cw_runner_opts *o)
{
    *out = NULL;
    if (!o || !o->reg || !o->run || o->threads == 0)
        return cw__error(CW_STATUS_INVALID_ARG, "runner: bad options");
    cw_runner *r = calloc(1, sizeof *r);
    if (!r)
        return cw__error(CW_STATUS_NOMEM, "out of memory starting the handler threads");
    r->o = *o;
    r->n_handlers = o->reg->n_handlers;
    size_t nh = r->n_handlers ? r->n_handlers : 1;
    r->limit = calloc(nh, sizeof *r->limit);
    r->running = calloc(nh, sizeof *r->running);
    r->group = calloc(nh, sizeof *r->group);
    r->group_busy = calloc(nh, sizeof *r->group_busy);
    r->threads = calloc(o->threads, sizeof *r->threads);
    r->slots = calloc(o->threads, sizeof *r->slots);
    r->efd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
    int rc = 0;
    if (!r->limit || !r->running || !r->group || !r->group_busy || !r->threads || !r->slots) {
        rc = cw__error(CW_STATUS_NOMEM, "out of memory starting the handler threads");
        goto out_free;
    }
    if (r->efd < 0) {
        rc = cw__error(CW_STATUS_INVALID_ARG, "handler threads: eventfd: %s", strerror(errno));
        goto out_free;
    }
    for (size_t i = 0; i < r->n_handlers; i++) {
        unsigned l = o->limit && o->limit[i] ? o->limit[i] : o->threads;
        r->limit[i] = l < o->threads ? l : o->threads;
    }
    make_groups(r);
    pthread_condattr_t ca;
    pthread_condattr_init(&ca);
    pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
    pthread_cond_init(&r->cv, &ca);
    pthread_cond_init(&r->done_cv, &ca);
    pthread_condattr_destroy(&ca);
    pthread_mutex_init(&r->mu, NULL);
    for (unsigned k = 0; k < o->threads; k++) {
        r->threads[k].r = r;
        int err = pthread_create(&r->threads[k].tid, NULL, thread_main, &r->threads[k]);
        if (err) {
            rc = cw__error(CW_STATUS_INVALID_ARG, "cannot start handler thread %u of %u: %s", k + 1,
                           o->threads, strerror(err));
            cw_runner_free(r);
            return rc;
        }
        r->threads[k].started = true;
    }
    *out = r;
    return 0;

out_free:
    if (r->efd >= 0)
        close(r->efd);
    free_arrays(r);
    free(r);
    return rc;
}
