/* The consume–dispatch–settle loop of one worker.
 *
 * Deliveries are handled in batches: whatever the broker has sent, up to
 * `batch`, is validated, claimed in the store in one transaction, run, its
 * replacements (DLQ copies) published and confirmed, its outcomes recorded in
 * a second transaction, and only then acknowledged, with a single multiple-ack
 * when it can be. A crash at any point leaves every task either unacked (the
 * broker redelivers it; the store makes the redelivery safe) or in its next
 * place. */
#include <errno.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "dlq/alert.h"
#include "dlq/deadletter.h"
#include "framework/broker.h"
#include "framework/clock.h"
#include "framework/crash.h"
#include "framework/error.h"
#include "framework/log.h"
#include "framework/metrics.h"
#include "framework/owner.h"
#include "framework/store.h"
#include "framework/task.h"
#include "retry/delay.h"
#include "retry/policy.h"
#include "workers/worker.h"
#include "workers/worker_private.h"

/* The shared-memory row of a task's type (only with metrics on). */
static cw_metrics_row *mrow(const cw_worker *w, const cw_task *t)
{
    return cw_metrics_row_of(w->metrics, w->reg, t->handler);
}

static void free_arrays(cw_worker *w)
{
    free(w->batch);
    free(w->policy);
    free(w->claim_reqs);
    free(w->claims);
    free(w->claim_of);
    free(w->settles);
    free(w->release);
}

int cw_worker_new(cw_worker **out, const cw_config *cfg, cw_registry *reg)
{
    int rc;
    cw_worker *w = calloc(1, sizeof *w);
    if (!w)
        return cw__error(CW_STATUS_NOMEM, "out of memory creating the worker");
    w->cfg = cfg;
    w->reg = reg;
    cw__owner_self(w->id, sizeof w->id);
    w->batch_max = cfg->batch ? cfg->batch : (cfg->prefetch + 1) / 2;
    if (w->batch_max > cfg->prefetch)
        w->batch_max = cfg->prefetch;
    w->batch = calloc(w->batch_max, sizeof *w->batch);
    w->policy = calloc(reg->n_handlers ? reg->n_handlers : 1, sizeof *w->policy);
    w->claim_reqs = calloc(w->batch_max, sizeof *w->claim_reqs);
    w->claims = calloc(w->batch_max, sizeof *w->claims);
    w->claim_of = calloc(w->batch_max, sizeof *w->claim_of);
    w->settles = calloc(w->batch_max, sizeof *w->settles);
    w->release = calloc(w->batch_max * 2, sizeof *w->release);
    if (!w->batch || !w->policy || !w->claim_reqs || !w->claims || !w->claim_of || !w->settles ||
        !w->release) {
        rc = cw__error(CW_STATUS_NOMEM, "out of memory creating the worker");
        goto out_free;
    }
    if ((rc = cw__validator_init(&w->val, reg, cfg->max_body_size)))
        goto out_free;
    /* Each handler's policy: the pool's [retry], then what its plugin set,
     * then the pool file's [handler TYPE]. */
    for (size_t i = 0; i < reg->n_handlers; i++) {
        const cw_handler_entry *h = &reg->handlers[i];
        w->policy[i] = cfg->retry;
        cw_retry_policy_merge(&w->policy[i], &h->retry, h->retry_set);
        for (size_t j = 0; j < cfg->n_handlers; j++) {
            if (strcmp(cfg->handlers[j].type, h->type) == 0)
                cw_retry_policy_merge(&w->policy[i], &cfg->handlers[j].retry, cfg->handlers[j].set);
        }
        if (w->policy[i].max_delay_ms > CW_DELAY_MAX_MS)
            w->policy[i].max_delay_ms = CW_DELAY_MAX_MS;
    }

    cw_store_opts_of(cfg, w->id, true, &w->store_opts);
    /* A store server that does not answer yet is waited for by
     * cw_worker_run(), which a stop can interrupt. */
    rc = cw_store_open(&w->store, &w->store_opts);
    if (rc == CW_STATUS_STORE_UNAVAILABLE)
        cw_log_warn(NULL, "%s; waiting for it", cw_error_last());
    else if (rc)
        goto out_validator;
    if (cfg->store_backend != CW_STORE_MEMORY)
        cw__crash_dir(cfg->store_path, w->crash_dir, sizeof w->crash_dir);

    /* Alert hooks: the pool's command and webhook, and the plugins'. */
    if ((rc = cw_alerter_new(&w->alerter, &cfg->alert)))
        goto out_store;
    for (size_t i = 0; i < reg->n_alert_hooks; i++) {
        const cw_alert_hook *h = &reg->alert_hooks[i];
        if ((rc = cw_alerter_add_callback(w->alerter, h->fn, h->user_data,
                                          h->plugin ? h->plugin->info->name : "program")))
            goto out_alerter;
    }
    if (!cw_alerter_has_hooks(w->alerter)) {
        cw_alerter_free(w->alerter);
        w->alerter = NULL;
    }
    w->next_sweep = cw__mono_ms() + CW_SWEEP_EVERY_MS;
    *out = w;
    return 0;

out_alerter:
    cw_alerter_free(w->alerter);
out_store:
    cw_store_free(w->store);
out_validator:
    cw__validator_free(&w->val);
out_free:
    free_arrays(w);
    free(w);
    return rc;
}

void cw_worker_free(cw_worker *w)
{
    if (!w)
        return;
    cw__crash_reporter_forget(&w->current);
    cw__worker_session_close(w, true);
    cw_alerter_free(w->alerter);
    cw_store_free(w->store);
    cw__validator_free(&w->val);
    free_arrays(w);
    free(w);
}

int cw_worker_enable_crash_reports(cw_worker *w)
{
    if (!w->crash_dir[0])
        return 0;
    return cw__crash_reporter_install(w->crash_dir, w->id, &w->current);
}

void cw_worker_on_handler_timeout(
    cw_worker *w, void (*fn)(const cw_worker_current *cur, int64_t ran_ms, void *ud), void *ud)
{
    w->on_timeout = fn;
    w->on_timeout_data = ud;
}

void cw_worker_use_metrics(cw_worker *w, cw_metrics_worker *mw)
{
    w->metrics = mw;
}

/* Notes the crash reports of dead workers in the store; at most once a
 * second unless `force`. */
static void import_crashes(cw_worker *w, bool force)
{
    int64_t now = cw__mono_ms();
    if (!w->crash_dir[0] || (!force && now < w->next_crash_import))
        return;
    w->next_crash_import = now + 1000;
    if (cw__crash_import(w->store, w->crash_dir) < 0)
        cw_log_warn(NULL, "noting crash reports failed: %s", cw_error_last());
}

/* Ends a handler that runs past [pool] handler_timeout: reports it, then
 * hands over to the program's action (compworker ends the process; the
 * broker redelivers the task, the store counts the delivery). */
static void *watchdog_main(void *arg)
{
    cw_worker *w = arg;
    while (!atomic_load(&w->watchdog_stop)) {
        struct timespec ts = {.tv_sec = 0, .tv_nsec = 200 * 1000000L};
        nanosleep(&ts, NULL);
        int64_t started = atomic_load(&w->current.started_ms);
        if (!started)
            continue;
        int64_t ran = cw__mono_ms() - started;
        if (ran <= w->cfg->handler_timeout_ms)
            continue;
        char what[64];
        snprintf(what, sizeof what, "timeout after %lld ms", (long long)ran);
        cw__crash_report(what);
        cw_log_task lt = {.message_id = w->current.message_id, .type = w->current.type};
        cw_log_error(&lt, "handler %s ran for %lld ms, past handler_timeout %lld ms",
                     w->current.handler, (long long)ran, (long long)w->cfg->handler_timeout_ms);
        if (w->on_timeout)
            w->on_timeout(&w->current, ran, w->on_timeout_data);
        return NULL;
    }
    return NULL;
}

const cw_worker_current *cw_worker_current_task(const cw_worker *w)
{
    return &w->current;
}

int64_t cw_worker_handler_started_ms(const cw_worker *w)
{
    return atomic_load(&w->current.started_ms);
}

const cw_worker_stats *cw_worker_stats_get(const cw_worker *w)
{
    return &w->stats;
}

const char *cw_worker_id(const cw_worker *w)
{
    return w->id;
}

static cw_log_task log_task(const cw_task *t)
{
    return (cw_log_task){.message_id = t->message_id[0] ? t->message_id : NULL,
                         .saga_id = t->saga_id[0] ? t->saga_id : NULL,
                         .type = t->type[0] ? t->type : NULL};
}

static void describe_handler(const cw_task *t, char *out, size_t cap)
{
    if (t->handler && t->handler->plugin)
        snprintf(out, cap, "%s %s", t->handler->plugin->info->name,
                 t->handler->plugin->info->version);
    else if (t->handler)
        snprintf(out, cap, "%s", t->handler->type);
    else
        out[0] = '\0';
}

static const cw_retry_policy *policy_of(const cw_worker *w, const cw_task *t)
{
    return &w->policy[t->handler - w->reg->handlers];
}

static void mark_current(cw_worker *w, const cw_task *t)
{
    cw_worker_current *c = &w->current;
    memcpy(c->message_id, t->message_id, sizeof c->message_id);
    memcpy(c->type, t->type, sizeof c->type);
    if (c->handler_of != t->handler) {
        describe_handler(t, c->handler, sizeof c->handler);
        c->handler_of = t->handler;
    }
    atomic_store(&w->current.started_ms, cw__mono_ms());
}

static void run_handler(cw_worker *w, cw_task *t)
{
    int64_t t0 = 0;
    mark_current(w, t);
    t->ran = true;
    if (w->metrics)
        t0 = cw__mono_ns();
    int out = (int)t->handler->fn(t, t->handler->user_data);
    atomic_store(&w->current.started_ms, 0);
    if (w->metrics) {
        cw_metrics_observe(mrow(w, t), (uint64_t)(cw__mono_ns() - t0));
    }
    unsigned made = t->attempt + 1; /* attempts made, this one included */
    switch (out) {
    case CW_OK:
        t->outcome = CW_OK;
        t->error_class[0] = '\0';
        t->action = ACT_ACK;
        return;
    case CW_FAIL:
        t->outcome = CW_FAIL;
        snprintf(t->error_class, sizeof t->error_class, "permanent");
        if (!t->reason[0])
            snprintf(t->reason, sizeof t->reason, "handler failed without a reason");
        t->action = ACT_DLQ;
        return;
    case CW_RETRY:
        t->outcome = CW_RETRY;
        if (!t->reason[0])
            snprintf(t->reason, sizeof t->reason, "handler asked for a retry without a reason");
        if (cw_retry_exhausted(policy_of(w, t), made)) {
            snprintf(t->error_class, sizeof t->error_class, "exhausted");
            t->action = ACT_DLQ;
        } else {
            snprintf(t->error_class, sizeof t->error_class, "transient");
            t->action = ACT_RETRY;
        }
        return;
    default:
        cw__task_set_failure(t, CW_FAIL, "permanent", "handler returned %d, not a cw_outcome", out);
        t->action = ACT_DLQ;
        return;
    }
}

/* The delay before the next attempt of a task that asked for a retry. */
static int64_t retry_delay(const cw_worker *w, const cw_task *t)
{
    const cw_retry_policy *p = policy_of(w, t);
    if (t->has_retry_after)
        return t->retry_after_ms < p->max_delay_ms ? t->retry_after_ms : p->max_delay_ms;
    int64_t base = cw_retry_base_delay_ms(p, t->attempt + 1);
    return cw_retry_jitter_ms(p->jitter, base, cw_random64());
}

static int64_t jitter(int64_t ms)
{
    return ms / 2 + (int64_t)((uint64_t)rand() % (uint64_t)(ms / 2 + 1));
}

/* The store did not answer (a PostgreSQL server restarting): the batch in
 * hand waits, unacked, while the broker session is kept alive (heartbeats
 * on both connections). 0 to try the store again; the status to give up
 * with (a stop was asked for, or the broker session was lost). */
static int store_wait(cw_worker *w)
{
    if (!w->store_down) {
        w->store_down = true;
        w->store_backoff_ms = CW_BACKOFF_MIN_MS;
        if (w->metrics)
            cw_metrics_store_reachable(w->metrics, false);
        cw_log_warn(NULL, "store unreachable, holding the batch unacked and trying again: %s",
                    cw_error_last());
    }
    int64_t until = cw__mono_ms() + jitter(w->store_backoff_ms);
    w->store_backoff_ms = w->store_backoff_ms * 2 > CW_STORE_BACKOFF_MAX_MS
                              ? CW_STORE_BACKOFF_MAX_MS
                              : w->store_backoff_ms * 2;
    while (cw__mono_ms() < until) {
        if (w->stop && *w->stop)
            return cw__error(CW_STATUS_STORE_UNAVAILABLE,
                             "stopping while the store is unreachable: the batch goes back to "
                             "the queue unacked");
        int rc = cw__worker_keep_alive(w);
        if (rc)
            return rc;
        struct timespec ts = {.tv_sec = 0, .tv_nsec = 100 * 1000000L};
        nanosleep(&ts, NULL);
    }
    return 0;
}

/* After a store call that answered. */
static void store_back(cw_worker *w)
{
    if (!w->store_down)
        return;
    w->store_down = false;
    if (w->metrics)
        cw_metrics_store_reachable(w->metrics, true);
    cw_log_info(NULL, "store reachable again: resuming");
}

/* Releases, best effort, the claims of deliveries handed back unsettled
 * (see cw_store_release): their next delivery is claimable at once instead
 * of waiting for the lease. Kept for later while the store does not answer. */
static void release_pending(cw_worker *w)
{
    if (!w->n_release)
        return;
    int rc = cw_store_release(w->store, w->release, w->n_release);
    if (rc == 0)
        w->n_release = 0;
    else if (rc != CW_STATUS_STORE_UNAVAILABLE)
        cw_log_warn(NULL, "releasing %zu claims failed: %s", w->n_release, cw_error_last());
}

/* Notes for release_pending() the claims of batch[from, to) that end
 * unsettled: all of them when their outcomes were not `recorded`, else those
 * held for redelivery (a republish not confirmed) or never run. */
static void note_unsettled(cw_worker *w, size_t from, size_t to, bool recorded)
{
    for (size_t i = from; i < to; i++) {
        const cw_task *t = &w->batch[i];
        bool open = !recorded || t->action == ACT_HOLD || t->action == ACT_RUN;
        if (t->ticket > 0 && open && w->n_release < w->batch_max * 2)
            w->release[w->n_release++] = t->ticket;
    }
}

typedef struct id_ref {
    const char *id;
    size_t i;
} id_ref;

static int by_id(const void *a, const void *b)
{
    const id_ref *x = a, *y = b;
    int c = strcmp(x->id, y->id);
    return c ? c : (x->i > y->i) - (x->i < y->i);
}

/* Validates every delivery of the batch and claims the valid ones in the
 * store (one round trip). A message ID that comes twice in one batch is
 * claimed once: its later copies are duplicates. */
static int claim_batch(cw_worker *w, size_t n, int64_t now)
{
    int rc;
    /* A redelivery may follow a worker's death: note its report first, so
     * that the history (and a poison verdict) says how it died. */
    for (size_t i = 0; i < n; i++) {
        if (w->batch[i].env.redelivered) {
            import_crashes(w, false);
            break;
        }
    }
    id_ref refs[w->batch_max];
    size_t m = 0;
    for (size_t i = 0; i < n; i++) {
        cw_task *t = &w->batch[i];
        if (!cw__task_validate(&w->val, t)) {
            w->stats.invalid++;
            t->action = ACT_DLQ;
            continue;
        }
        t->action = ACT_NONE;
        refs[m++] = (id_ref){.id = t->message_id, .i = i};
    }
    if (m > 1) {
        qsort(refs, m, sizeof *refs, by_id);
        for (size_t k = 1; k < m; k++) {
            if (strcmp(refs[k].id, refs[k - 1].id) == 0)
                w->batch[refs[k].i].action = ACT_DUP;
        }
    }
    size_t r = 0;
    for (size_t i = 0; i < n; i++) {
        cw_task *t = &w->batch[i];
        if (t->action != ACT_NONE)
            continue;
        w->claim_reqs[r] = (cw_claim_req){.message_id = t->message_id,
                                          .saga_id = t->saga_id,
                                          .type = t->type};
        w->claim_of[r++] = i;
    }
    release_pending(w);
    /* Claims need not be durable (see cw_store_begin): the outcomes' commit,
     * made before the acks, is. */
    while ((rc = cw_store_claim_batch(w->store, w->claim_reqs, r, now, w->claims)) ==
           CW_STATUS_STORE_UNAVAILABLE) {
        if ((rc = store_wait(w)))
            return rc;
    }
    if (rc)
        return rc;
    store_back(w);
    for (size_t k = 0; k < r; k++) {
        cw_task *t = &w->batch[w->claim_of[k]];
        const cw_claim *c = &w->claims[k];
        switch (c->result) {
        case CW_CLAIM_NEW:
            t->ticket = c->ticket;
            if (c->deliveries > w->cfg->max_deliveries) {
                /* Delivered again and again without an outcome: the worker
                 * running it died or timed out each time. Its crash reports
                 * say how. */
                cw_task_record rec;
                bool crashed = cw_store_get(w->store, t->message_id, &rec) == 0 &&
                               rec.last_error[0];
                if (crashed)
                    snprintf(t->crash_signal, sizeof t->crash_signal, "%s", rec.error_class);
                cw__task_set_failure(t, CW_FAIL, "poison",
                                     "delivered %u times without an outcome (max_deliveries "
                                     "%u): %s",
                                     c->deliveries - 1, w->cfg->max_deliveries,
                                     crashed ? rec.last_error
                                             : "the worker running it died each time");
                t->action = ACT_DLQ;
            } else {
                t->action = ACT_RUN;
            }
            break;
        case CW_CLAIM_DONE: t->action = ACT_DUP; break;
        case CW_CLAIM_DEAD: t->action = ACT_DEAD; break;
        case CW_CLAIM_BUSY: t->action = ACT_DEFER; break;
        }
    }
    return 0;
}

/* Hands a dead-lettered task to the alert hooks (never blocks). */
static void alert(cw_worker *w, const cw_task *t, int64_t now)
{
    if (!w->alerter)
        return;
    char handler[300];
    describe_handler(t, handler, sizeof handler);
    cw_alert_event ev = {
        .message_id = t->message_id[0] ? t->message_id : NULL,
        .saga_id = t->saga_id[0] ? t->saga_id : NULL,
        .type = t->type[0] ? t->type : NULL,
        .error_class = t->error_class,
        .reason = t->reason,
        .queue = w->cfg->queue,
        .worker = w->id,
        .handler = handler[0] ? handler : NULL,
        .attempts = t->ran ? t->attempt + 1 : t->attempt,
        .failed_at_ms = now,
    };
    cw_alerter_post(w->alerter, &ev);
}

/* Publishes what replaces each task that is not simply acked — its DLQ
 * copy, its next attempt, or its deferred twin — and waits for the
 * confirms. A task whose replacement is not confirmed is held (not acked). */
static int republish_range(cw_worker *w, size_t from, size_t to, int64_t now)
{
    size_t sent = 0;
    int rc = 0;
    char rk[512];
    for (size_t i = from; i < to && rc == 0; i++) {
        cw_task *t = &w->batch[i];
        char handler[300];
        describe_handler(t, handler, sizeof handler);
        cw_deadletter_info info = {
            .error_class = t->error_class,
            .reason = t->reason,
            .handler = handler,
            .worker = w->id,
            .queue = w->cfg->queue,
            .attempts = t->attempt,
            .crash_signal = t->crash_signal[0] ? t->crash_signal : NULL,
        };
        switch (t->action) {
        case ACT_DLQ:
            /* A task that ran counts this attempt; poison and invalid did not run. */
            info.attempts = t->ran ? t->attempt + 1 : t->attempt;
            rc = cw__dlq_publish(&w->pub, w->cfg->dlq, &t->env, &info, now);
            break;
        case ACT_RETRY: {
            int64_t delay = retry_delay(w, t);
            info.attempts = t->attempt + 1;
            if ((rc = cw__delay_routing_key(delay, w->cfg->queue, rk, sizeof rk)) == 0)
                rc = cw__publish_copy(&w->pub, CW_DELAY_ENTRY_EXCHANGE, rk, &t->env, &info, now);
            t->retry_after_ms = delay;
            break;
        }
        case ACT_DEFER:
            if ((rc = cw__delay_routing_key(CW_DEFER_MS, w->cfg->queue, rk, sizeof rk)) == 0)
                rc = cw__publish_copy(&w->pub, CW_DELAY_ENTRY_EXCHANGE, rk, &t->env, NULL, now);
            break;
        default: continue;
        }
        if (rc == 0)
            sent++;
    }
    if (sent && rc == 0)
        rc = cw__publisher_wait(&w->pub, CW_CONFIRM_TIMEOUT_MS);
    size_t held = 0;
    for (size_t i = from; i < to; i++) {
        cw_task *t = &w->batch[i];
        if (t->action != ACT_DLQ && t->action != ACT_RETRY && t->action != ACT_DEFER)
            continue;
        if (rc) {
            t->action = ACT_HOLD;
            held++;
            continue;
        }
        t->published = true;
        cw_log_task lt = log_task(t);
        if (w->metrics) {
            if (t->action == ACT_DLQ)
                cw_metrics_dead(mrow(w, t), t->error_class);
            else
                cw_metrics_add(mrow(w, t), t->action == ACT_RETRY ? CW_M_RETRIED : CW_M_DEFERRED);
        }
        if (t->action == ACT_DLQ) {
            w->stats.dead_lettered++;
            cw_log_warn(&lt, "dead-lettered to %s: %s: %s", w->cfg->dlq, t->error_class, t->reason);
            alert(w, t, now);
        } else if (t->action == ACT_RETRY) {
            w->stats.retried++;
            cw_log_info(&lt, "attempt %u failed, retrying in %lld ms: %s", t->attempt + 1,
                        (long long)t->retry_after_ms, t->reason);
        } else {
            w->stats.busy_deferred++;
            cw_log_info(&lt, "in progress in another worker: looked at again in %d ms",
                        CW_DEFER_MS);
        }
    }
    if (rc)
        cw_log_error(NULL, "republishing failed, %zu task(s) left for redelivery: %s", held,
                     cw_error_last());
    return rc;
}

/* Records the outcomes of batch[from, to) in the store (one durable
 * commit), waiting for a store that does not answer. The same `now` on a
 * try again makes it idempotent where a commit went through unanswered. */
static int record_range(cw_worker *w, size_t from, size_t to, int64_t now)
{
    size_t r = 0;
    for (size_t i = from; i < to; i++) {
        cw_task *t = &w->batch[i];
        cw_settle_req req = {.message_id = t->message_id,
                             .ticket = t->ticket,
                             .error_class = t->error_class,
                             .reason = t->reason};
        /* Only claimed tasks are recorded (invalid ones have no ticket). */
        if (!t->ticket)
            continue;
        if (t->action == ACT_ACK) {
            req.state = CW_STATE_DONE;
            req.outcome = "ok";
            req.error_class = NULL;
            req.reason = NULL;
        } else if (t->action == ACT_DLQ && t->published) {
            req.state = CW_STATE_DEAD;
            req.outcome = t->error_class;
        } else if (t->action == ACT_RETRY && t->published) {
            req.state = CW_STATE_RETRYING;
            req.outcome = "retry";
        } else {
            continue;
        }
        w->settles[r++] = req;
    }
    int rc;
    while ((rc = cw_store_settle_batch(w->store, w->settles, r, now)) ==
           CW_STATUS_STORE_UNAVAILABLE) {
        if ((rc = store_wait(w)))
            return rc;
    }
    if (rc == 0)
        store_back(w);
    return rc;
}

/* Acks what is settled in batch[from, to) and drops (unacked) what is held. */
static int ack_range(cw_worker *w, size_t from, size_t to)
{
    uint64_t max_tag = 0;
    bool all = true;
    for (size_t i = from; i < to; i++) {
        cw_task *t = &w->batch[i];
        if (t->action == ACT_HOLD)
            all = false;
        if (t->env.delivery_tag > max_tag)
            max_tag = t->env.delivery_tag;
    }
    int st = AMQP_STATUS_OK;
    if (all && to > from) {
        st = amqp_basic_ack(w->cconn, CW_CONSUME_CH, max_tag, 1);
    } else {
        for (size_t i = from; i < to && st == AMQP_STATUS_OK; i++) {
            if (w->batch[i].action != ACT_HOLD)
                st = amqp_basic_ack(w->cconn, CW_CONSUME_CH, w->batch[i].env.delivery_tag, 0);
        }
    }
    for (size_t i = from; i < to; i++)
        cw__task_reset(&w->batch[i]);
    if (st != AMQP_STATUS_OK)
        return cw__error(CW_STATUS_CONNECTION, "acknowledging deliveries: %s",
                         amqp_error_string2(st));
    return 0;
}

/* Settles batch[from, to): publishes and confirms what replaces the tasks
 * that are not simply acked, records every outcome (one durable commit),
 * acks. */
static int settle_range(cw_worker *w, size_t from, size_t to)
{
    int64_t now = cw__now_ms();
    int pub_rc = republish_range(w, from, to, now);
    int rc = record_range(w, from, to, now);
    if (rc) {
        /* Without the record nothing may be acked: leave all for redelivery. */
        note_unsettled(w, from, to, false);
        for (size_t i = from; i < to; i++)
            cw__task_reset(&w->batch[i]);
        return rc;
    }
    note_unsettled(w, from, to, true);
    rc = ack_range(w, from, to);
    return rc ? rc : pub_rc;
}

static void reset_range(cw_worker *w, size_t from, size_t to)
{
    for (size_t i = from; i < to; i++)
        cw__task_reset(&w->batch[i]);
}

/* Claims the batch, runs its handlers in order and settles their outcomes.
 * Fast handlers settle as one batch (one claim commit, one durable commit,
 * one multiple-ack for hundreds of tasks). When handlers take time, what has
 * run is settled every CW_SETTLE_EVERY_MS before the rest runs: a worker
 * killed between a handler's effect and the store's record leaves that
 * effect to be applied again on redelivery, and this bounds how many such
 * effects one kill can leave to the tasks of those milliseconds. */
static int process_batch(cw_worker *w, size_t n)
{
    int rc = claim_batch(w, n, cw__now_ms());
    if (rc) {
        reset_range(w, 0, n);
        return rc;
    }

    size_t settled = 0;
    int64_t since = cw__mono_ms();
    for (size_t i = 0; i < n; i++) {
        cw_task *t = &w->batch[i];
        cw_log_task lt = log_task(t);
        if (w->metrics) {
            cw_metrics_add(mrow(w, t), CW_M_RECEIVED);
            if (t->action == ACT_DUP || t->action == ACT_DEAD)
                cw_metrics_add(mrow(w, t), CW_M_DUPLICATES);
        }
        switch (t->action) {
        case ACT_RUN:
            run_handler(w, t);
            if (t->action == ACT_ACK) {
                w->stats.succeeded++;
                if (w->metrics)
                    cw_metrics_add(mrow(w, t), CW_M_SUCCEEDED);
                cw_log_debug(&lt, "applied");
            }
            break;
        case ACT_DUP:
            w->stats.duplicates++;
            cw_log_info(&lt, "duplicate skipped: message ID already applied");
            break;
        case ACT_DEAD:
            w->stats.duplicates++;
            cw_log_info(&lt, "duplicate skipped: message ID already dead-lettered");
            break;
        default: break;
        }
        if (i + 1 < n && cw__mono_ms() - since >= CW_SETTLE_EVERY_MS) {
            if ((rc = settle_range(w, settled, i + 1))) {
                note_unsettled(w, i + 1, n, true);
                reset_range(w, i + 1, n); /* claimed, not run: redelivered */
                return rc;
            }
            settled = i + 1;
            since = cw__mono_ms();
        }
    }
    return settle_range(w, settled, n);
}

/* Removes DONE records past the retention period. It runs between batches
 * every CW_SWEEP_EVERY_MS, chunk after chunk while there is more to remove,
 * for at most CW_SWEEP_BUDGET_MS, so that it keeps up with a pool that
 * settles tens of thousands of tasks a second without stalling consumption. */
static void sweep(cw_worker *w)
{
    int64_t mono = cw__mono_ms();
    if (mono < w->next_sweep)
        return;
    w->next_sweep = mono + CW_SWEEP_EVERY_MS;
    int64_t cut = cw__now_ms() - w->cfg->retention_ms, until = mono + CW_SWEEP_BUDGET_MS;
    unsigned removed, total = 0;
    int rc;
    do {
        removed = 0;
        rc = cw_store_sweep(w->store, cut, CW_SWEEP_CHUNK, &removed);
        total += removed;
    } while (rc == 0 && removed == CW_SWEEP_CHUNK && cw__mono_ms() < until);
    if (rc)
        cw_log_warn(NULL, "store sweep failed: %s", cw_error_last());
    else if (total)
        cw_log_debug(NULL, "store sweep removed %u done records", total);
}

static void sleep_ms(int64_t ms, volatile sig_atomic_t *stop)
{
    while (ms > 0 && !*stop) {
        int64_t step = ms < 100 ? ms : 100;
        struct timespec ts = {.tv_sec = 0, .tv_nsec = step * 1000000};
        nanosleep(&ts, NULL);
        ms -= step;
    }
}

/* Opens the store that did not answer at cw_worker_new(), trying again
 * with backoff (each try logged with its reason) until it answers or a stop
 * is asked for (then 0 with no store). */
static int open_store(cw_worker *w, volatile sig_atomic_t *stop)
{
    int64_t backoff = CW_BACKOFF_MIN_MS;
    while (!w->store && !*stop) {
        int64_t d = jitter(backoff);
        if (w->metrics)
            cw_metrics_store_reachable(w->metrics, false);
        cw_log_warn(NULL, "store unreachable; trying again in %lld ms", (long long)d);
        sleep_ms(d, stop);
        if (*stop)
            break;
        backoff = backoff * 2 > CW_BACKOFF_MAX_MS ? CW_BACKOFF_MAX_MS : backoff * 2;
        int rc = cw_store_open(&w->store, &w->store_opts);
        if (rc == CW_STATUS_STORE_UNAVAILABLE) {
            cw_log_warn(NULL, "%s", cw_error_last());
            continue;
        }
        if (rc)
            return rc;
        if (w->metrics)
            cw_metrics_store_reachable(w->metrics, true);
        cw_log_info(NULL, "store reachable: starting");
    }
    return 0;
}

int cw_worker_run(cw_worker *w, volatile sig_atomic_t *stop)
{
    int64_t backoff = CW_BACKOFF_MIN_MS;
    w->stop = stop;
    srand((unsigned)(getpid() ^ cw__mono_ms()));
    int rc0 = open_store(w, stop);
    if (rc0 || !w->store)
        return rc0;
    import_crashes(w, true);
    if (w->alerter && cw_alerter_start(w->alerter)) {
        cw_log_warn(NULL, "alert hooks are off: %s", cw_error_last());
        cw_alerter_free(w->alerter);
        w->alerter = NULL;
    }
    if (w->cfg->handler_timeout_ms > 0 && !w->watchdog_running) {
        atomic_store(&w->watchdog_stop, false);
        if (pthread_create(&w->watchdog, NULL, watchdog_main, w) == 0)
            w->watchdog_running = true;
        else
            cw_log_warn(NULL, "cannot start the handler watchdog: handler_timeout is not enforced");
    }
    while (!*stop) {
        int rc = cw__worker_session_open(w);
        if (rc == CW_STATUS_BROKER_REFUSED || rc == CW_STATUS_INVALID_ARG)
            return rc;
        if (rc) {
            int64_t d = jitter(backoff);
            cw_log_warn(NULL, "no broker session (%s); retrying in %lld ms", cw_error_last(),
                        (long long)d);
            sleep_ms(d, stop);
            backoff = backoff * 2 > CW_BACKOFF_MAX_MS ? CW_BACKOFF_MAX_MS : backoff * 2;
            continue;
        }
        backoff = CW_BACKOFF_MIN_MS;

        while (!*stop) {
            long n = cw__worker_collect(w);
            if (n < 0) {
                rc = (int)n;
                break;
            }
            if (n > 0 && (rc = process_batch(w, (size_t)n)))
                break;
            if (n == 0 && (rc = cw__worker_service_publisher(w)))
                break;
            sweep(w);
        }
        cw__worker_drop_held(w, 0);
        cw__worker_session_close(w, rc == 0);
        if (*stop)
            break;
        if (rc == CW_STATUS_STORE)
            return rc;
        cw_log_warn(NULL, "broker session lost: %s; reconnecting", cw_error_last());
        w->url_next++; /* to the next broker of the list first (it wraps) */
        sleep_ms(jitter(CW_BACKOFF_MIN_MS), stop);
    }
    if (w->watchdog_running) {
        atomic_store(&w->watchdog_stop, true);
        pthread_join(w->watchdog, NULL);
        w->watchdog_running = false;
    }
    cw_log_info(NULL,
                "stopped: %llu received, %llu applied, %llu duplicates skipped, "
                "%llu retried, %llu dead-lettered (%llu invalid)",
                (unsigned long long)w->stats.received, (unsigned long long)w->stats.succeeded,
                (unsigned long long)w->stats.duplicates, (unsigned long long)w->stats.retried,
                (unsigned long long)w->stats.dead_lettered, (unsigned long long)w->stats.invalid);
    return 0;
}
