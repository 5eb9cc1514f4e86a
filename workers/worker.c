/* The consume–dispatch–settle loop of one worker.
 *
 * The main thread talks to the broker and the store; handlers run on the
 * handler threads ([pool] concurrency of them, workers/runner.c). Deliveries
 * are claimed in batches: whatever the broker has sent, up to `batch`, is
 * validated and claimed in the store in one round trip; those to run go to
 * the handler threads, the others (duplicates, invalid, busy) straight to
 * settling. What ran comes back with its outcome. Settling takes what is
 * ready: its replacements (DLQ copies, retries) are published and confirmed,
 * its outcomes recorded in one durable commit, and only then is it
 * acknowledged, with a single multiple-ack where it can be. Settling happens
 * once a batch is ready, when nothing else is in flight, or every
 * CW_SETTLE_EVERY_MS while handlers take time, so that a kill leaves the
 * effects of at most those milliseconds' handlers to be applied again.
 *
 * While handlers run, the main thread goes on: it reads deliveries, claims,
 * settles and keeps both broker connections' heartbeats flowing, however
 * long a handler takes. A crash at any point leaves every task either unacked
 * (the broker redelivers it; the store makes the redelivery safe) or in its
 * next place. */
#include <errno.h>
#include <poll.h>
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
#include "saga/saga.h"
#include "workers/worker.h"
#include "workers/worker_private.h"

/* The shared-memory row of a task's type (only with metrics on). */
static cw_metrics_row *mrow(const cw_worker *w, const cw_task *t)
{
    return cw_metrics_row_of(w->metrics, w->reg, t->handler);
}

static void run_task(cw_task *t, cw_running *slot, void *ud);
static int64_t rate_admit(size_t i, int64_t now_ns, void *ud);
static void task_waited(const cw_task *t, int64_t waited_ns, void *ud);
static void task_flight(size_t i, int delta, void *ud);

static void free_arrays(cw_worker *w)
{
    for (size_t i = 0; w->slots && i < w->n_slots; i++) {
        cw__task_reset(&w->slots[i]);
        empty_amqp_pool(&w->slots[i].env.message.pool);
    }
    free(w->slots);
    free(w->fresh);
    free(w->ready);
    free(w->scratch);
    free(w->syncing);
    free(w->acking);
    free(w->limit);
    free(w->rate_interval_ns);
    free(w->rate_next);
    free(w->rate_local);
    free(w->rate_on);
    free(w->policy);
    free(w->claim_reqs);
    free(w->claims);
    free(w->claim_of);
    free(w->settles);
    free(w->release);
    free(w->done_ids);
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
    /* A slot for every delivery the broker may hand over, and one more, so
     * that frames can always be read (heartbeats, a cancel) even with every
     * delivery in hand. */
    w->n_slots = cfg->prefetch + 1;
    size_t nh = reg->n_handlers ? reg->n_handlers : 1;
    w->slots = calloc(w->n_slots, sizeof *w->slots);
    w->fresh = calloc(w->batch_max, sizeof *w->fresh);
    w->ready = calloc(w->n_slots, sizeof *w->ready);
    w->scratch = calloc(w->n_slots, sizeof *w->scratch);
    w->syncing = calloc(w->n_slots, sizeof *w->syncing);
    w->acking = calloc(w->n_slots, sizeof *w->acking);
    w->limit = calloc(nh, sizeof *w->limit);
    w->rate_interval_ns = calloc(nh, sizeof *w->rate_interval_ns);
    w->rate_next = calloc(nh, sizeof *w->rate_next);
    w->rate_local = calloc(nh, sizeof *w->rate_local);
    w->rate_on = calloc(nh, sizeof *w->rate_on);
    w->policy = calloc(nh, sizeof *w->policy);
    w->claim_reqs = calloc(w->batch_max, sizeof *w->claim_reqs);
    w->claims = calloc(w->batch_max, sizeof *w->claims);
    w->claim_of = calloc(w->batch_max, sizeof *w->claim_of);
    w->settles = calloc(w->n_slots, sizeof *w->settles);
    w->release = calloc(w->n_slots, sizeof *w->release);
    w->done_ids = calloc(w->n_slots * CW_TASK_SEND_MAX, sizeof *w->done_ids);
    if (!w->done_ids || !w->slots || !w->fresh || !w->ready || !w->scratch || !w->syncing ||
        !w->acking || !w->limit || !w->rate_interval_ns || !w->rate_next || !w->rate_local ||
        !w->rate_on || !w->policy || !w->claim_reqs || !w->claims || !w->claim_of || !w->settles ||
        !w->release) {
        rc = cw__error(CW_STATUS_NOMEM, "out of memory creating the worker");
        goto out_free;
    }
    if ((rc = cw__validator_init(&w->val, reg, cfg->max_body_size)))
        goto out_free;
    for (size_t i = 0; i < w->n_slots; i++) {
        /* Each slot reads its deliveries into a pool of its own, kept from
         * one delivery to the next (cw__broker_consume_pooled). */
        init_amqp_pool(&w->slots[i].env.message.pool, CW_SLOT_POOL_PAGE);
        w->slots[i].pooled = true;
        w->slots[i].next = w->free_slots;
        w->free_slots = &w->slots[i];
    }
    /* Each handler's policy: the pool's [retry], then what its plugin set,
     * then the pool file's [handler TYPE]; and the type's own limits. */
    for (size_t i = 0; i < reg->n_handlers; i++) {
        const cw_handler_entry *h = &reg->handlers[i];
        w->policy[i] = cfg->retry;
        cw_retry_policy_merge(&w->policy[i], &h->retry, h->retry_set);
        for (size_t j = 0; j < cfg->n_handlers; j++) {
            const cw_handler_config *hc = &cfg->handlers[j];
            if (strcmp(hc->type, h->type) != 0)
                continue;
            cw_retry_policy_merge(&w->policy[i], &hc->retry, hc->set);
            if (hc->set & CW_HANDLER_SET_CONCURRENCY)
                w->limit[i] = hc->concurrency;
            if (hc->set & CW_HANDLER_SET_RATE_LIMIT)
                w->rate_interval_ns[i] = (int64_t)(1e9 / hc->rate_per_s);
        }
        if (w->policy[i].max_delay_ms > CW_DELAY_MAX_MS)
            w->policy[i].max_delay_ms = CW_DELAY_MAX_MS;
        w->rate_limited = w->rate_limited || w->rate_interval_ns[i] > 0;
        w->rate_next[i] = &w->rate_local[i];
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
    cw_runner_opts ro = {
        .threads = cfg->concurrency ? cfg->concurrency : 1,
        .reg = reg,
        .limit = w->limit,
        .rate_limited = w->rate_limited ? w->rate_on : NULL,
        .rate = rate_admit,
        .run = run_task,
        .waited = task_waited,
        .flight = task_flight,
        .ud = w,
    };
    for (size_t i = 0; i < reg->n_handlers; i++)
        w->rate_on[i] = w->rate_interval_ns[i] > 0;
    if ((rc = cw_runner_new(&w->runner, &ro)))
        goto out_alerter;
    size_t n_threads;
    w->run_slots = cw_runner_slots(w->runner, &n_threads);
    /* Handler transactions (cw_task_pg, cw_task_sqlite): a store of a
     * database that handler threads can share. */
    if (cfg->store_backend == CW_STORE_POSTGRESQL ||
        (cfg->store_backend == CW_STORE_SQLITE && strcmp(cfg->store_path, ":memory:") != 0)) {
        w->n_tx = n_threads;
        if (!(w->tx = calloc(n_threads, sizeof *w->tx))) {
            rc = cw__error(CW_STATUS_NOMEM, "out of memory creating the worker");
            goto out_runner;
        }
    }
    w->next_sweep = cw__mono_ms() + CW_SWEEP_EVERY_MS;
    w->next_followup_scan = cw__mono_ms() + CW_FOLLOWUP_SCAN_MS;
    *out = w;
    return 0;

out_runner:
    cw_runner_free(w->runner);
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
    size_t n;
    if (w->runner)
        cw__crash_reporter_forget(cw_runner_slots(w->runner, &n));
    cw_runner_free(w->runner);
    for (size_t i = 0; i < w->n_tx; i++)
        cw_store_tx_free(w->tx[i]);
    free(w->tx);
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
    size_t n;
    return cw__crash_reporter_install(w->crash_dir, w->id, cw_runner_slots(w->runner, &n));
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
    /* Rate limits are shared by the pool's workers on the host. */
    for (size_t i = 0; i < w->reg->n_handlers; i++) {
        _Atomic int64_t *shared = cw_metrics_rate_state(mw, w->reg, &w->reg->handlers[i]);
        w->rate_next[i] = shared ? shared : &w->rate_local[i];
    }
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
    size_t n;
    cw_running *slots = cw_runner_slots(w->runner, &n);
    while (!atomic_load(&w->watchdog_stop)) {
        struct timespec ts = {.tv_sec = 0, .tv_nsec = 200 * 1000000L};
        nanosleep(&ts, NULL);
        for (size_t k = 0; k < n; k++) {
            cw_running *cur = &slots[k];
            int64_t started = atomic_load(&cur->started_ms);
            if (!started)
                continue;
            int64_t ran = cw__mono_ms() - started;
            if (ran <= w->cfg->handler_timeout_ms)
                continue;
            char what[64];
            snprintf(what, sizeof what, "timeout after %lld ms", (long long)ran);
            cw__crash_report_slot(cur, what);
            cw_log_task lt = {.message_id = cur->message_id, .type = cur->type};
            cw_log_error(&lt, "handler %s ran for %lld ms, past handler_timeout %lld ms",
                         cur->handler, (long long)ran, (long long)w->cfg->handler_timeout_ms);
            if (w->on_timeout)
                w->on_timeout(cur, ran, w->on_timeout_data);
            return NULL;
        }
    }
    return NULL;
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

static const cw_retry_policy *policy_of(const cw_worker *w, const cw_task *t)
{
    return &w->policy[t->handler - w->reg->handlers];
}

/* What run_task() makes of a handler that returned done when its outcome
 * cannot be known now: the commit of its transaction went unanswered. */
#define CW_OUTCOME_UNKNOWN (-1000)

/* Ends the task's effects once its handler returned `out`: the follow-ups it
 * sent go with a done outcome only, and its store transaction, if it began
 * one, commits with them (the task is then recorded) or rolls back. A
 * refused send or a misused transaction fails the task; a transaction that
 * a statement or an error ended makes it a retry. Returns the outcome as it
 * now stands (CW_OUTCOME_UNKNOWN: leave the task unsettled). */
static int finish_effects(cw_task *t, int out)
{
    cw_store_tx *tx = t->tx_open ? *t->tx : NULL;
    t->tx_open = false;
    cw_tx_state st = tx ? cw_store_tx_state(tx) : CW_TX_NONE;
    cw_store_tx_guard(tx, false);
    const char *api = tx && strcmp(tx->backend, "sqlite") == 0 ? "cw_task_sqlite" : "cw_task_pg";
    if (t->send_error[0] || st == CW_TX_MISUSED || (tx && out != CW_OK) || st == CW_TX_FAILED ||
        st == CW_TX_ENDED) {
        char why[CW_REASON_MAX];
        snprintf(why, sizeof why, "%s",
                 st == CW_TX_FAILED || st == CW_TX_ENDED ? cw_store_tx_error(tx) : "");
        cw_store_tx_rollback(tx);
        cw__task_drop_sends(t);
        if (t->send_error[0]) {
            cw__task_set_failure(t, CW_FAIL, "permanent", "%s", t->send_error);
            return CW_FAIL;
        }
        if (st == CW_TX_MISUSED) {
            cw__task_set_failure(t, CW_FAIL, "permanent",
                                 "the handler began, committed or rolled back the transaction "
                                 "of %s() itself: compworker ends it when the handler returns. "
                                 "Nothing of it was committed",
                                 api);
            return CW_FAIL;
        }
        if (out != CW_OK)
            return out;
        cw__task_set_failure(t, CW_RETRY, "transient",
                             "%s in the store transaction, so nothing of it was committed: %s",
                             st == CW_TX_FAILED ? "a statement failed" : "an error rolled it back",
                             why[0] ? why : "no message from the database");
        return CW_RETRY;
    }
    if (out != CW_OK) {
        cw__task_drop_sends(t);
        return out;
    }
    if (!tx)
        return CW_OK; /* its follow-ups are stored with its done record */
    int rc = cw_store_tx_commit(tx, t->sends, t->n_sends);
    if (rc == 0) {
        t->recorded = true;
        return CW_OK;
    }
    cw__task_set_failure(t, CW_RETRY, "transient", "%s", cw_error_last());
    cw__task_drop_sends(t);
    return rc == CW_STATUS_STORE_UNAVAILABLE ? CW_OUTCOME_UNKNOWN : CW_RETRY;
}

/* Runs one task's handler, on a handler thread (the runner's callback), and
 * turns what it returned into what settling does. Touches the task, the
 * read-only policies, the thread's own store transaction and the shared
 * counters only. */
static void run_task(cw_task *t, cw_running *slot, void *ud)
{
    cw_worker *w = ud;
    if (w->tx) {
        t->tx = &w->tx[slot - w->run_slots];
        t->tx_opts = &w->store_opts;
    }
    t->ran = true;
    int out = (int)t->handler->fn(t, t->handler->user_data);
    atomic_store(&slot->started_ms, 0);
    /* A step of a saga's plan: its part of the saga rides on its outcome's
     * commit (the next stage's steps among its follow-ups). */
    if (out == CW_OK && cw_saga_is_step(t))
        out = (int)cw_saga_step_done(t, w->cfg->exchange);
    out = finish_effects(t, out);
    if (w->metrics)
        cw_metrics_observe(mrow(w, t), (uint64_t)(cw__mono_ns() - t->started_ns));
    unsigned made = t->attempt + 1; /* attempts made, this one included */
    switch (out) {
    case CW_OK:
        t->outcome = CW_OK;
        t->error_class[0] = '\0';
        t->action = ACT_ACK;
        /* Counted here, next to the effect, so that a kill leaves at most
         * the handler running then uncounted. */
        if (w->metrics)
            cw_metrics_add(mrow(w, t), CW_M_SUCCEEDED);
        return;
    case CW_OUTCOME_UNKNOWN: {
        cw_log_task lt = log_task(t);
        cw_log_warn(&lt,
                    "the outcome of the handler's transaction is not known (%s): the task "
                    "is left for redelivery, which finds out",
                    t->reason);
        t->action = ACT_HOLD;
        return;
    }
    case CW_FAIL:
        t->outcome = CW_FAIL;
        /* "invalid": a built-in handler's verdict on the message (a saga
         * plan that does not hold); any other failure is permanent. */
        if (strcmp(t->error_class, "invalid") != 0)
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

/* The rate limit of handler i (the runner's callback): GCRA without a
 * burst, its state shared by the pool's workers on the host (the monotonic
 * clock is the host's). 0 to start now, or how long to wait. */
static int64_t rate_admit(size_t i, int64_t now_ns, void *ud)
{
    cw_worker *w = ud;
    _Atomic int64_t *next = w->rate_next[i];
    int64_t at = atomic_load(next);
    for (;;) {
        if (at > now_ns)
            return at - now_ns;
        if (atomic_compare_exchange_weak(next, &at, now_ns + w->rate_interval_ns[i]))
            return 0;
    }
}

static void task_waited(const cw_task *t, int64_t waited_ns, void *ud)
{
    cw_worker *w = ud;
    if (w->metrics)
        cw_metrics_observe_wait(mrow(w, t), waited_ns > 0 ? (uint64_t)waited_ns : 0);
}

static void task_flight(size_t i, int delta, void *ud)
{
    cw_worker *w = ud;
    if (w->metrics)
        cw_metrics_in_flight(cw_metrics_row_of(w->metrics, w->reg, &w->reg->handlers[i]), delta);
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

/* Notes for release_pending() the claim of a task that ends unsettled:
 * handed back to the broker unacked, its outcome not recorded (a lost
 * session, a republish not confirmed, a failed record, a stop before it ran). */
static void note_unsettled(cw_worker *w, const cw_task *t)
{
    if (t->ticket > 0 && w->n_release < w->n_slots)
        w->release[w->n_release++] = t->ticket;
}
/* Whether another delivery of t's message ID is in flight in this worker
 * (with the handler threads, or ready to settle). Only asked of a claim the
 * store says was this worker's already: a scan of the slots. */
static bool in_flight(const cw_worker *w, const cw_task *t)
{
    for (size_t i = 0; i < w->n_slots; i++) {
        const cw_task *o = &w->slots[i];
        if (o != t &&
            (o->stage == STAGE_RUN || o->stage == STAGE_READY || o->stage == STAGE_SYNCING) &&
            strcmp(o->message_id, t->message_id) == 0)
            return true;
    }
    return false;
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
static int claim_fresh(cw_worker *w, size_t n, int64_t now)
{
    int rc;
    /* A redelivery may follow a worker's death: note its report first, so
     * that the history (and a poison verdict) says how it died. */
    for (size_t i = 0; i < n; i++) {
        if (w->fresh[i]->env.redelivered) {
            import_crashes(w, false);
            break;
        }
    }
    id_ref refs[w->batch_max];
    size_t m = 0;
    for (size_t i = 0; i < n; i++) {
        cw_task *t = w->fresh[i];
        if (!cw__task_validate(&w->val, t)) {
            w->stats.invalid++;
            t->action = ACT_DLQ;
            continue;
        }
        t->action = ACT_NONE;
        refs[m++] = (id_ref){.id = t->message_id, .i = i};
    }
    /* Time-ordered IDs (UUIDv7) from one publisher mostly arrive in order: a
     * batch whose IDs strictly increase has no copies, and needs no sort. */
    size_t k_in_order = 1;
    while (k_in_order < m && strcmp(refs[k_in_order - 1].id, refs[k_in_order].id) < 0)
        k_in_order++;
    if (k_in_order < m) {
        qsort(refs, m, sizeof *refs, by_id);
        for (size_t k = 1; k < m; k++) {
            if (strcmp(refs[k].id, refs[k - 1].id) == 0)
                w->fresh[refs[k].i]->action = ACT_DUP;
        }
    }
    size_t r = 0;
    for (size_t i = 0; i < n; i++) {
        cw_task *t = w->fresh[i];
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
        cw_task *t = w->fresh[w->claim_of[k]];
        const cw_claim *c = &w->claims[k];
        switch (c->result) {
        case CW_CLAIM_NEW:
            if (c->mine && in_flight(w, t)) {
                /* A copy of a task this worker runs now (a duplicate that
                 * came in a later batch): looked at again once that one
                 * has settled, as a busy duplicate of another worker is. */
                t->action = ACT_DEFER;
                break;
            }
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
    cw__task_describe_handler(t, handler, sizeof handler);
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

/* Whether the settle publishes a replacement for t: its DLQ copy, its next
 * attempt, or its deferred twin. */
static bool republishes(const cw_task *t)
{
    return t->action == ACT_DLQ || t->action == ACT_RETRY || t->action == ACT_DEFER;
}

/* Publishes what replaces each task that is not simply acked — its DLQ
 * copy, its next attempt, or its deferred twin — and waits for the
 * confirms. A task whose replacement is not confirmed is held (not acked). */
static int republish_set(cw_worker *w, cw_task **set, size_t n, int64_t now)
{
    size_t sent = 0;
    int rc = 0;
    char rk[512];
    for (size_t i = 0; i < n && rc == 0; i++) {
        cw_task *t = set[i];
        if (!republishes(t))
            continue; /* acked, or held: nothing to republish */
        char handler[300];
        cw__task_describe_handler(t, handler, sizeof handler);
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
    for (size_t i = 0; i < n; i++) {
        cw_task *t = set[i];
        if (!republishes(t))
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

/* Records the outcomes of the set in the store (one durable commit),
 * waiting for a store that does not answer. The same `now` on a try again
 * makes it idempotent where a commit went through unanswered. */
/* Records the outcomes of the set in one commit: durable when it returns,
 * or, with `mark`, committed and made durable by the store's own thread
 * (cw_store_durable() reaches *mark then; 0 when nothing was recorded). */
static int record_set(cw_worker *w, cw_task **set, size_t n, int64_t now, uint64_t *mark)
{
    size_t r = 0;
    for (size_t i = 0; i < n; i++) {
        cw_task *t = set[i];
        cw_settle_req req = {.message_id = t->message_id,
                             .ticket = t->ticket,
                             .error_class = t->error_class,
                             .reason = t->reason};
        /* Only claimed tasks are recorded (invalid ones have no ticket);
         * one whose handler transaction committed is recorded already. */
        if (!t->ticket || t->recorded)
            continue;
        if (t->action == ACT_ACK) {
            req.state = CW_STATE_DONE;
            req.outcome = "ok";
            req.error_class = NULL;
            req.reason = NULL;
            req.followups = t->sends;
            req.n_followups = t->n_sends;
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
    if (mark) {
        *mark = 0;
        return r ? cw_store_settle_batch_deferred(w->store, w->settles, r, now, mark) : 0;
    }
    while ((rc = cw_store_settle_batch(w->store, w->settles, r, now)) ==
           CW_STATUS_STORE_UNAVAILABLE) {
        if ((rc = store_wait(w)))
            return rc;
    }
    if (rc == 0)
        store_back(w);
    return rc;
}

/* Gives a slot back for the next delivery. */
static void slot_free(cw_worker *w, cw_task *t)
{
    cw__task_reset(t);
    t->next = w->free_slots;
    w->free_slots = t;
}

/* Acks what is settled in the set and frees its slots; what is held
 * (its replacement not confirmed) is dropped unacked. One multiple-ack
 * covers every settled delivery below the lowest one still in hand
 * elsewhere (claimed, running, held); the others are acked one by one. */
static int ack_set(cw_worker *w, cw_task **set, size_t n)
{
    uint64_t floor = UINT64_MAX; /* the lowest delivery tag not acked here */
    for (size_t i = 0; i < w->n_slots; i++) {
        const cw_task *t = &w->slots[i];
        if (t->stage != STAGE_FREE && t->stage != STAGE_SETTLING && t->env.delivery_tag < floor)
            floor = t->env.delivery_tag;
    }
    uint64_t multi = 0;
    for (size_t i = 0; i < n; i++) {
        if (set[i]->action == ACT_HOLD && set[i]->env.delivery_tag < floor)
            floor = set[i]->env.delivery_tag;
    }
    for (size_t i = 0; i < n; i++) {
        uint64_t tag = set[i]->env.delivery_tag;
        if (set[i]->action != ACT_HOLD && tag < floor && tag > multi)
            multi = tag;
    }
    int st = AMQP_STATUS_OK;
    if (multi)
        st = amqp_basic_ack(w->cconn, CW_CONSUME_CH, multi, 1);
    for (size_t i = 0; i < n && st == AMQP_STATUS_OK; i++) {
        const cw_task *t = set[i];
        if (t->action != ACT_HOLD && t->env.delivery_tag > multi)
            st = amqp_basic_ack(w->cconn, CW_CONSUME_CH, t->env.delivery_tag, 0);
    }
    if (st != AMQP_STATUS_OK)
        return cw__error(CW_STATUS_CONNECTION, "acknowledging deliveries: %s",
                         amqp_error_string2(st));
    return 0;
}

/* Removes confirmed follow-ups from the store (a light commit: one not
 * removed is only published again, under its message ID). */
static void followups_done(cw_worker *w, const char **ids, size_t n)
{
    int rc = cw_store_followups_done(w->store, ids, n);
    if (rc)
        cw_log_warn(NULL,
                    "removing %zu published follow-ups from the store failed (they will "
                    "be published again, under the same message IDs): %s",
                    n, cw_error_last());
}

/* Publishes the follow-ups of the set's done tasks, now recorded with their
 * outcomes, waits for the confirms and removes them from the store. Those
 * not confirmed stay stored, for followups_scan(). 0, or the status of a
 * lost session. */
/* Publishes one follow-up with its headers (unconfirmed). */
static int publish_followup(cw_worker *w, const cw_followup *f)
{
    amqp_table_t headers;
    json_object *hold;
    int rc = cw__headers_table(f->headers, &headers, &hold);
    if (rc == 0)
        rc = cw__publish_task(&w->pub, f->exchange, f->routing_key, f->message_id, f->type,
                              f->saga_id, f->body, f->len, &headers);
    free(headers.entries);
    json_object_put(hold);
    return rc;
}

static int publish_followups(cw_worker *w, cw_task **set, size_t n)
{
    size_t sent = 0;
    int rc = 0;
    for (size_t i = 0; i < n && rc == 0; i++) {
        const cw_task *t = set[i];
        if (t->action != ACT_ACK)
            continue;
        for (size_t k = 0; k < t->n_sends && rc == 0; k++) {
            const cw_followup *f = &t->sends[k];
            rc = publish_followup(w, f);
            if (rc == 0)
                w->done_ids[sent++] = f->message_id;
        }
    }
    if (!sent && rc == 0)
        return 0;
    if (rc == 0)
        rc = cw__publisher_wait(&w->pub, CW_CONFIRM_TIMEOUT_MS);
    if (rc == 0) {
        if (w->metrics)
            cw_metrics_followups(w->metrics, sent);
        followups_done(w, w->done_ids, sent);
        return 0;
    }
    cw_log_warn(NULL,
                "publishing %zu follow-up message(s) failed: %s; they stay in the store and "
                "are published again later",
                sent, cw_error_last());
    return rc == CW_STATUS_NACKED || rc == CW_STATUS_UNROUTABLE ? 0 : rc;
}

/* Publishes follow-ups stored long ago and not yet removed: their worker
 * died, or lost its session, between the commit and the confirm. One at a
 * time, so that one that cannot be routed does not hold back the others. */
static int followups_scan(cw_worker *w)
{
    int64_t mono = cw__mono_ms();
    if (mono < w->next_followup_scan)
        return 0;
    w->next_followup_scan = mono + CW_FOLLOWUP_SCAN_MS;
    cw_followup f[CW_FOLLOWUP_SCAN_MAX];
    size_t n = 0;
    int64_t now = cw__now_ms();
    int rc = cw_store_followups_due(w->store, now - CW_FOLLOWUP_ORPHAN_MS, now,
                                    CW_FOLLOWUP_LEASE_MS, f, CW_FOLLOWUP_SCAN_MAX, &n);
    if (rc) {
        cw_log_warn(NULL, "looking for follow-ups left unpublished failed: %s", cw_error_last());
        return 0;
    }
    size_t published = 0;
    for (size_t i = 0; i < n && rc == 0; i++) {
        rc = publish_followup(w, &f[i]);
        if (rc == 0)
            rc = cw__publisher_wait(&w->pub, CW_CONFIRM_TIMEOUT_MS);
        if (rc == 0) {
            const char *id = f[i].message_id;
            followups_done(w, &id, 1);
            published++;
        } else if (rc == CW_STATUS_NACKED || rc == CW_STATUS_UNROUTABLE) {
            cw_log_warn(NULL,
                        "follow-up %s (type %s) to exchange '%s', routing key '%s' was not "
                        "published: %s; it stays in the store and is tried again in %d s",
                        f[i].message_id, f[i].type, f[i].exchange, f[i].routing_key,
                        cw_error_last(), CW_FOLLOWUP_LEASE_MS / 1000);
            rc = 0;
        }
    }
    if (published) {
        cw_log_info(NULL, "published %zu follow-up message(s) left unpublished by a worker",
                    published);
        if (w->metrics)
            cw_metrics_followups(w->metrics, published);
    }
    for (size_t i = 0; i < n; i++)
        cw_followup_clear(&f[i]);
    return rc;
}

/* Settles what is ready: publishes and confirms what replaces the tasks that
 * are not simply acked, records every outcome (one durable commit), acks. */
static int settle_ready(cw_worker *w)
{
    size_t n = w->n_ready;
    cw_task **set = w->ready;
    w->n_ready = 0;
    w->ready_since = 0;
    if (!n)
        return 0;
    for (size_t i = 0; i < n; i++)
        set[i]->stage = STAGE_SETTLING;
    int64_t now = cw__now_ms();
    int pub_rc = republish_set(w, set, n, now);
    bool deferred = cw_store_can_defer(w->store);
    uint64_t mark = 0;
    int rc = record_set(w, set, n, now, deferred ? &mark : NULL);
    if (rc) {
        /* Without the record nothing may be acked: leave all for redelivery. */
        for (size_t i = 0; i < n; i++) {
            note_unsettled(w, set[i]);
            slot_free(w, set[i]);
        }
        return rc;
    }
    for (size_t i = 0; i < n; i++) {
        if (set[i]->action == ACT_HOLD)
            note_unsettled(w, set[i]);
    }
    if (deferred) {
        /* Acked by finish_synced() once the commit is durable; meanwhile
         * the next batch is received, claimed and run. */
        for (size_t i = 0; i < n; i++) {
            set[i]->stage = STAGE_SYNCING;
            set[i]->durable_mark = mark;
            w->syncing[w->n_syncing++] = set[i];
        }
        return pub_rc;
    }
    rc = ack_set(w, set, n);
    if (rc == 0)
        rc = publish_followups(w, set, n);
    for (size_t i = 0; i < n; i++)
        slot_free(w, set[i]);
    return rc ? rc : pub_rc;
}

/* Acks what settle_ready() committed and the store has made durable since,
 * publishes its follow-ups and frees its slots. With `wait_ms`, waits that
 * long for the durability of all of it. 0, or the status of a lost session
 * or of a store that could not make the commit durable (then nothing of it
 * is acked: the broker redelivers it, and the store, which recorded it, has
 * the copies skipped as duplicates). */
static int finish_synced(cw_worker *w, int wait_ms)
{
    if (!w->n_syncing)
        return 0;
    uint64_t durable = 0, want = 0;
    int rc = cw_store_durable(w->store, &durable);
    for (size_t i = 0; wait_ms > 0 && i < w->n_syncing; i++) {
        if (w->syncing[i]->durable_mark > want)
            want = w->syncing[i]->durable_mark;
    }
    int64_t until = cw__mono_ms() + wait_ms;
    while (rc == 0 && want > durable && cw__mono_ms() < until) {
        struct pollfd pfd = {.fd = cw_store_durable_fd(w->store), .events = POLLIN};
        poll(&pfd, 1, 100);
        rc = cw_store_durable(w->store, &durable);
    }
    if (rc) {
        for (size_t i = 0; i < w->n_syncing; i++)
            slot_free(w, w->syncing[i]);
        w->n_syncing = 0;
        return rc;
    }
    size_t n = 0, keep = 0;
    for (size_t i = 0; i < w->n_syncing; i++) {
        cw_task *t = w->syncing[i];
        if (t->durable_mark <= durable) {
            t->stage = STAGE_SETTLING;
            w->acking[n++] = t;
        } else {
            w->syncing[keep++] = t;
        }
    }
    w->n_syncing = keep;
    if (!n)
        return 0;
    rc = ack_set(w, w->acking, n);
    if (rc == 0)
        rc = publish_followups(w, w->acking, n);
    for (size_t i = 0; i < n; i++)
        slot_free(w, w->acking[i]);
    return rc;
}

/* Moves a task whose outcome is known to the ready set. */
static void make_ready(cw_worker *w, cw_task *t)
{
    t->stage = STAGE_READY;
    if (!w->n_ready)
        w->ready_since = cw__mono_ms();
    w->ready[w->n_ready++] = t;
}

/* Takes back what the handler threads ran, into the ready set. */
static void take_done(cw_worker *w)
{
    size_t n = cw_runner_take(w->runner, w->scratch, w->n_slots);
    for (size_t i = 0; i < n; i++) {
        cw_task *t = w->scratch[i];
        if (t->action == ACT_ACK) {
            w->stats.succeeded++;
            cw_log_task lt = log_task(t);
            cw_log_debug(&lt, "applied");
        }
        make_ready(w, t);
    }
}

/* Claims what was received (one store round trip) and hands what is to run
 * to the handler threads; the rest is ready to settle. */
static int dispatch_fresh(cw_worker *w)
{
    size_t n = w->n_fresh;
    int rc = claim_fresh(w, n, cw__now_ms());
    w->n_fresh = 0;
    if (rc) {
        for (size_t i = 0; i < n; i++)
            slot_free(w, w->fresh[i]); /* unacked: redelivered */
        return rc;
    }
    size_t run = 0;
    for (size_t i = 0; i < n; i++) {
        cw_task *t = w->fresh[i];
        cw_log_task lt = log_task(t);
        if (w->metrics) {
            cw_metrics_add(mrow(w, t), CW_M_RECEIVED);
            if (t->action == ACT_DUP || t->action == ACT_DEAD)
                cw_metrics_add(mrow(w, t), CW_M_DUPLICATES);
        }
        switch (t->action) {
        case ACT_RUN:
            t->stage = STAGE_RUN;
            w->scratch[run++] = t;
            continue;
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
        make_ready(w, t);
    }
    cw_runner_submit(w->runner, w->scratch, run);
    return 0;
}

/* Whether the ready set is to be settled now: a batch's worth, nothing
 * else in flight to wait for, or the oldest ready for CW_SETTLE_EVERY_MS
 * (the bound of what a kill leaves to be applied again). */
static bool settle_due(cw_worker *w)
{
    return w->n_ready &&
           (w->n_ready >= w->batch_max || cw_runner_pending(w->runner) == 0 ||
            cw__mono_ms() - w->ready_since >= CW_SETTLE_EVERY_MS || (w->stop && *w->stop));
}

/* How long the loop may wait for the broker or a handler now (ms). */
static int wait_budget(cw_worker *w)
{
    if (w->n_fresh)
        return 0;
    if (w->n_ready) {
        if (settle_due(w))
            return 0;
        int64_t left = w->ready_since + CW_SETTLE_EVERY_MS - cw__mono_ms();
        return left < 1 ? 1 : (int)left;
    }
    return CW_POLL_MS;
}

/* Lets the handler threads finish what they run now, then settles what is
 * ready (when the session allows it, `graceful`) and hands back the rest:
 * what had not started is released and dropped unacked (the broker
 * redelivers it); so is what could not be settled. */
static void drain(cw_worker *w, bool graceful)
{
    size_t n = cw_runner_cancel(w->runner, w->scratch, w->n_slots);
    for (size_t i = 0; i < n; i++) {
        note_unsettled(w, w->scratch[i]);
        slot_free(w, w->scratch[i]);
    }
    for (size_t i = 0; i < w->n_fresh; i++)
        slot_free(w, w->fresh[i]);
    w->n_fresh = 0;
    while (cw_runner_pending(w->runner) > 0) {
        cw_runner_wait(w->runner, 100);
        take_done(w);
        if (graceful && cw__worker_keep_alive(w))
            graceful = false;
    }
    take_done(w);
    if (w->n_ready) {
        /* A lost session cannot republish or ack, but what ran is recorded:
         * a redelivered copy of an applied task is then a duplicate. */
        int rc = settle_ready(w);
        if (rc && graceful)
            cw_log_warn(NULL, "settling the last deliveries failed: %s", cw_error_last());
    }
    if (w->n_syncing) {
        /* Recorded already: acked once durable if the session allows, else
         * redelivered and skipped as duplicates. */
        int rc = graceful ? finish_synced(w, CW_SYNC_WAIT_MS) : 0;
        if (rc)
            cw_log_warn(NULL, "acking the last deliveries failed: %s", cw_error_last());
        for (size_t i = 0; i < w->n_syncing; i++)
            slot_free(w, w->syncing[i]);
        w->n_syncing = 0;
    }
    release_pending(w);
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

/* Says once how the handler threads run the types: which may run beside
 * themselves, which one at a time (registered the old way), and their limits. */
static void log_threads(const cw_worker *w)
{
    unsigned threads = w->cfg->concurrency ? w->cfg->concurrency : 1;
    char line[2048];
    size_t used = 0;
    for (size_t i = 0; i < w->reg->n_handlers && used < sizeof line; i++) {
        const cw_handler_entry *h = &w->reg->handlers[i];
        used += (size_t)snprintf(line + used, sizeof line - used, "%s%s: %s", i ? "; " : "",
                                 h->type,
                                 threads == 1    ? "one at a time"
                                 : h->concurrent ? "concurrent"
                                                 : "one at a time (not registered as concurrent)");
        if (used < sizeof line && w->limit[i] && threads > 1)
            used += (size_t)snprintf(line + used, sizeof line - used, ", at most %u at once",
                                     w->limit[i]);
        if (used < sizeof line && w->rate_interval_ns[i])
            used += (size_t)snprintf(line + used, sizeof line - used, ", at most %.6g a second",
                                     1e9 / (double)w->rate_interval_ns[i]);
    }
    cw_log_info(NULL, "%u handler thread%s: %s", threads, threads == 1 ? "" : "s", line);
}

/* One turn of the loop: takes back what ran, reads what the broker sent
 * (waiting for it, or for a handler, no longer than what is in hand
 * allows), claims and dispatches it, settles what is due, and does the idle
 * work. 0, or the status that ends the session. */
static int step(cw_worker *w)
{
    int rc;
    if ((rc = finish_synced(w, 0)))
        return rc;
    take_done(w);
    long got = cw__worker_collect(w, wait_budget(w));
    if (got < 0)
        return (int)got;
    if (w->n_fresh && (rc = dispatch_fresh(w)))
        return rc;
    take_done(w);
    if (settle_due(w) && (rc = settle_ready(w)))
        return rc;
    if (got == 0) {
        if ((rc = cw__worker_service_publisher(w)))
            return rc;
        if (!w->n_ready)
            sweep(w);
    }
    return followups_scan(w);
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
    log_threads(w);
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

        while (!*stop && (rc = step(w)) == 0)
            ;
        drain(w, rc == 0);
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
