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
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "dlq/deadletter.h"
#include "framework/broker.h"
#include "framework/error.h"
#include "framework/log.h"
#include "framework/owner.h"
#include "framework/store.h"
#include "framework/task.h"
#include "framework/worker.h"

#define CW_CONSUME_CH 1
#define CW_PUBLISH_CH 1
#define CW_POLL_MS 250
#define CW_CONFIRM_TIMEOUT_MS 30000
#define CW_BUSY_RECHECK_MS 1000
#define CW_SWEEP_EVERY_MS 60000
#define CW_SWEEP_CHUNK 2000
#define CW_BACKOFF_MIN_MS 500
#define CW_BACKOFF_MAX_MS 30000

/* What settling does with a delivery. */
enum {
    ACT_NONE = 0,
    ACT_RUN,      /* claimed: run the handler */
    ACT_DUP,      /* already done, or a second copy in this batch: ack */
    ACT_DEAD,     /* already dead-lettered: ack */
    ACT_DLQ,      /* to be dead-lettered, then acked */
    ACT_PARK,     /* in progress elsewhere: hold and look again later */
    ACT_HOLD      /* could not be settled: leave unacked for redelivery */
};

typedef struct cw_parked {
    cw_task task;
    int64_t recheck_at;
} cw_parked;

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

    cw_task *batch;      /* batch_max slots */
    uint64_t *hash;      /* message_id hash per slot, for in-batch duplicates */
    size_t batch_max;
    cw_parked *parked;   /* at most prefetch */
    size_t n_parked, cap_parked;
    int64_t next_sweep;
};

static int session_open(cw_worker *w);
static void session_close(cw_worker *w);

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
    w->cap_parked = cfg->prefetch;
    w->batch = calloc(w->batch_max, sizeof *w->batch);
    w->hash = calloc(w->batch_max, sizeof *w->hash);
    w->parked = calloc(w->cap_parked, sizeof *w->parked);
    if (!w->batch || !w->hash || !w->parked) {
        rc = cw__error(CW_STATUS_NOMEM, "out of memory creating the worker");
        goto out_free;
    }
    if ((rc = cw__validator_init(&w->val, reg, cfg->max_body_size)))
        goto out_free;

    cw_store_opts so = {
        .backend = cfg->store_backend == CW_STORE_MEMORY ? "memory" : "sqlite",
        .path = cfg->store_path,
        .owner = w->id,
        .lease_ms = cfg->lease_ms,
        .sync_full = cfg->store_sync_full,
        .owner_alive = cw__owner_alive,
    };
    if ((rc = cw_store_open(&w->store, &so)))
        goto out_validator;
    w->next_sweep = cw__mono_ms() + CW_SWEEP_EVERY_MS;
    *out = w;
    return 0;

out_validator:
    cw__validator_free(&w->val);
out_free:
    free(w->batch);
    free(w->hash);
    free(w->parked);
    free(w);
    return rc;
}

void cw_worker_free(cw_worker *w)
{
    if (!w)
        return;
    session_close(w);
    cw_store_free(w->store);
    cw__validator_free(&w->val);
    free(w->batch);
    free(w->hash);
    free(w->parked);
    free(w);
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

/* Drops everything held without acking: the broker requeues it when the
 * channel closes. */
static void drop_held(cw_worker *w, size_t n)
{
    for (size_t i = 0; i < n; i++)
        cw__task_reset(&w->batch[i]);
    for (size_t i = 0; i < w->n_parked; i++)
        cw__task_reset(&w->parked[i].task);
    w->n_parked = 0;
}

static void session_close(cw_worker *w)
{
    if (w->cconn) {
        cw__broker_close(w->cconn);
        w->cconn = NULL;
    }
    if (w->pconn) {
        cw__publisher_free(&w->pub);
        cw__broker_close(w->pconn);
        w->pconn = NULL;
    }
}

static int session_open(cw_worker *w)
{
    char name[256], where[1024];
    int rc;
    int hb = (int)(w->cfg->heartbeat_ms / 1000);

    snprintf(name, sizeof name, "compworker %s consumer %s", w->cfg->name, w->id);
    if ((rc = cw__broker_connect(&w->cconn, w->cfg->url, &w->url_next, hb, name, where,
                                 sizeof where)))
        return rc;
    amqp_channel_open(w->cconn, CW_CONSUME_CH);
    if ((rc = cw__broker_reply(amqp_get_rpc_reply(w->cconn), "opening the consume channel")))
        goto out_close;
    if ((rc = cw__topology_declare(w->cconn, CW_CONSUME_CH, w->cfg, w->reg)))
        goto out_close;

    /* The publishing connection goes to the same broker as the consumer. */
    unsigned same = w->url_next;
    snprintf(name, sizeof name, "compworker %s publisher %s", w->cfg->name, w->id);
    if ((rc = cw__broker_connect(&w->pconn, w->cfg->url, &same, hb, name, NULL, 0)))
        goto out_close;
    if ((rc = cw__publisher_open(&w->pub, w->pconn, CW_PUBLISH_CH)))
        goto out_close;

    amqp_basic_qos(w->cconn, CW_CONSUME_CH, 0, (uint16_t)w->cfg->prefetch, 0);
    if ((rc = cw__broker_reply(amqp_get_rpc_reply(w->cconn), "setting the prefetch (basic.qos)")))
        goto out_close;
    amqp_basic_consume(w->cconn, CW_CONSUME_CH, amqp_cstring_bytes(w->cfg->queue), amqp_empty_bytes,
                       0, 0, 0, amqp_empty_table);
    char what[512];
    snprintf(what, sizeof what, "consuming from '%s'", w->cfg->queue);
    if ((rc = cw__broker_reply(amqp_get_rpc_reply(w->cconn), what)))
        goto out_close;
    w->stats.sessions++;
    cw_log_info(NULL, "consuming from %s at %s (prefetch %u, batch %zu, %zu task types)",
                w->cfg->queue, where, w->cfg->prefetch, w->batch_max, w->reg->n_handlers);
    return 0;

out_close:
    session_close(w);
    return rc;
}

/* Reads a frame that is not a delivery (after AMQP_STATUS_UNEXPECTED_STATE)
 * and decides whether the session can go on. */
static int consume_other_frame(cw_worker *w)
{
    amqp_frame_t f;
    int st = amqp_simple_wait_frame(w->cconn, &f);
    if (st != AMQP_STATUS_OK)
        return cw__error(CW_STATUS_CONNECTION, "reading from the broker: %s",
                         amqp_error_string2(st));
    if (f.frame_type != AMQP_FRAME_METHOD)
        return 0;
    switch (f.payload.method.id) {
    case AMQP_BASIC_ACK_METHOD:
        return 0;
    case AMQP_BASIC_CANCEL_METHOD:
        return cw__error(CW_STATUS_CONNECTION,
                         "the broker cancelled the consumer (queue '%s' deleted?)", w->cfg->queue);
    case AMQP_CHANNEL_CLOSE_METHOD: {
        const amqp_channel_close_t *m = f.payload.method.decoded;
        return cw__error(CW_STATUS_CONNECTION, "the broker closed the consume channel: %.*s",
                         (int)m->reply_text.len, (const char *)m->reply_text.bytes);
    }
    case AMQP_CONNECTION_CLOSE_METHOD: {
        const amqp_connection_close_t *m = f.payload.method.decoded;
        return cw__error(CW_STATUS_CONNECTION, "the broker closed the connection: %.*s",
                         (int)m->reply_text.len, (const char *)m->reply_text.bytes);
    }
    default:
        return 0;
    }
}

/* Receives one delivery into `t` within `timeout_ms` (0: only what has
 * already arrived). 1 when one was read, 0 when none, <0 on a lost session. */
static int receive_one(cw_worker *w, cw_task *t, int timeout_ms)
{
    for (;;) {
        struct timeval tv = {.tv_sec = timeout_ms / 1000, .tv_usec = (timeout_ms % 1000) * 1000};
        amqp_rpc_reply_t r = amqp_consume_message(w->cconn, &t->env, &tv, 0);
        if (r.reply_type == AMQP_RESPONSE_NORMAL) {
            t->has_env = true;
            return 1;
        }
        if (r.reply_type == AMQP_RESPONSE_LIBRARY_EXCEPTION) {
            if (r.library_error == AMQP_STATUS_TIMEOUT)
                return 0;
            if (r.library_error == AMQP_STATUS_UNEXPECTED_STATE) {
                int rc = consume_other_frame(w);
                if (rc)
                    return rc;
                continue;
            }
        }
        return cw__broker_reply(r, "receiving deliveries");
    }
}

static uint64_t hash_id(const char *s)
{
    uint64_t h = 1469598103934665603ULL; /* FNV-1a */
    for (; *s; s++) {
        h ^= (unsigned char)*s;
        h *= 1099511628211ULL;
    }
    return h;
}

/* Fills the batch: parked deliveries that are due, then what the broker has
 * sent, waiting up to CW_POLL_MS for the first. Returns the count, or <0. */
static long collect(cw_worker *w, int64_t now)
{
    size_t n = 0;
    size_t keep = 0;
    int64_t next_due = INT64_MAX;
    for (size_t i = 0; i < w->n_parked; i++) {
        if (w->parked[i].recheck_at <= now && n < w->batch_max) {
            w->batch[n++] = w->parked[i].task;
        } else {
            if (w->parked[i].recheck_at < next_due)
                next_due = w->parked[i].recheck_at;
            w->parked[keep++] = w->parked[i];
        }
    }
    w->n_parked = keep;

    int wait = n ? 0 : CW_POLL_MS;
    if (next_due != INT64_MAX && next_due - now < wait)
        wait = next_due - now > 0 ? (int)(next_due - now) : 0;
    while (n < w->batch_max) {
        int got = receive_one(w, &w->batch[n], wait);
        if (got < 0) {
            drop_held(w, n);
            return got;
        }
        if (got == 0)
            break;
        w->stats.received++;
        n++;
        wait = 0;
    }
    return (long)n;
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

static void run_handler(cw_worker *w, cw_task *t)
{
    (void)w;
    int out = (int)t->handler->fn(t, t->handler->user_data);
    switch (out) {
    case CW_OK:
        t->outcome = CW_OK;
        t->error_class[0] = '\0';
        break;
    case CW_FAIL:
        t->outcome = CW_FAIL;
        snprintf(t->error_class, sizeof t->error_class, "permanent");
        if (!t->reason[0])
            snprintf(t->reason, sizeof t->reason, "handler failed without a reason");
        break;
    case CW_RETRY:
        /* Retries need the delay topology; until a pool has one, a task
         * that asks for a retry has no attempts left. */
        t->outcome = CW_RETRY;
        snprintf(t->error_class, sizeof t->error_class, "exhausted");
        if (!t->reason[0])
            snprintf(t->reason, sizeof t->reason, "handler asked for a retry without a reason");
        break;
    default:
        cw__task_set_failure(t, CW_FAIL, "permanent", "handler returned %d, not a cw_outcome",
                             out);
        break;
    }
    t->action = t->outcome == CW_OK ? ACT_NONE : ACT_DLQ;
}

/* Validates and claims every delivery of the batch (one transaction). */
static int claim_batch(cw_worker *w, size_t n, int64_t now)
{
    int rc;
    bool open = false;
    for (size_t i = 0; i < n; i++) {
        cw_task *t = &w->batch[i];
        if (!cw__task_validate(&w->val, t)) {
            w->stats.invalid++;
            t->action = ACT_DLQ;
            continue;
        }
        w->hash[i] = hash_id(t->message_id);
        t->action = ACT_NONE;
        for (size_t j = 0; j < i; j++) {
            if (w->hash[j] == w->hash[i] && w->batch[j].action != ACT_DLQ &&
                w->batch[j].payload && strcmp(w->batch[j].message_id, t->message_id) == 0) {
                t->action = ACT_DUP;
                break;
            }
        }
        if (t->action == ACT_DUP)
            continue;
        if (!open) {
            /* Claims need not be durable (see cw_store_begin): the outcomes' batch,
             * committed before the acks, is. */
            if ((rc = cw_store_begin(w->store, false)))
                return rc;
            open = true;
        }
        cw_claim c;
        cw_claim_req req = {.message_id = t->message_id, .saga_id = t->saga_id, .type = t->type};
        if ((rc = cw_store_claim(w->store, &req, now, &c))) {
            cw_store_rollback(w->store);
            return rc;
        }
        switch (c.result) {
        case CW_CLAIM_NEW:
            t->action = ACT_RUN;
            t->ticket = c.ticket;
            break;
        case CW_CLAIM_DONE:
            t->action = ACT_DUP;
            break;
        case CW_CLAIM_DEAD:
            t->action = ACT_DEAD;
            break;
        case CW_CLAIM_BUSY:
            t->action = ACT_PARK;
            break;
        }
    }
    return open ? cw_store_commit(w->store) : 0;
}

/* Publishes the DLQ copies of the batch and waits for their confirms. On
 * success every ACT_DLQ task is marked published. */
static int dead_letter_batch(cw_worker *w, size_t n, int64_t now)
{
    size_t sent = 0;
    int rc = 0;
    for (size_t i = 0; i < n; i++) {
        cw_task *t = &w->batch[i];
        if (t->action != ACT_DLQ)
            continue;
        char handler[300];
        describe_handler(t, handler, sizeof handler);
        cw_deadletter_info info = {
            .error_class = t->error_class,
            .reason = t->reason,
            .handler = handler,
            .worker = w->id,
            .queue = w->cfg->queue,
            .attempts = t->handler && t->payload ? t->attempt + 1 : t->attempt,
        };
        if ((rc = cw__dlq_publish(&w->pub, w->cfg->dlq, &t->env, &info, now)))
            break;
        sent++;
    }
    if (sent && rc == 0)
        rc = cw__publisher_wait(&w->pub, CW_CONFIRM_TIMEOUT_MS);
    for (size_t i = 0; i < n; i++) {
        cw_task *t = &w->batch[i];
        if (t->action != ACT_DLQ)
            continue;
        if (rc) {
            t->action = ACT_HOLD;
            continue;
        }
        t->published = true;
        w->stats.dead_lettered++;
        cw_log_task lt = log_task(t);
        cw_log_warn(&lt, "dead-lettered to %s: %s: %s", w->cfg->dlq, t->error_class, t->reason);
    }
    if (rc)
        cw_log_error(NULL, "dead-lettering failed, %zu task(s) left for redelivery: %s", sent,
                     cw_error_last());
    return rc;
}

/* Records outcomes in the store (one transaction). */
static int record_batch(cw_worker *w, size_t n, int64_t now)
{
    int rc;
    bool open = false;
    for (size_t i = 0; i < n; i++) {
        cw_task *t = &w->batch[i];
        cw_settle_req req = {.message_id = t->message_id, .ticket = t->ticket};
        if (t->outcome == CW_OK && t->action == ACT_NONE && t->payload && t->handler) {
            req.state = CW_STATE_DONE;
            req.outcome = "ok";
        } else if (t->action == ACT_DLQ && t->published && t->payload) {
            req.state = CW_STATE_DEAD;
            req.outcome = t->outcome == CW_RETRY ? "retry" : "fail";
            req.error_class = t->error_class;
            req.reason = t->reason;
        } else {
            continue;
        }
        /* Only tasks that ran were claimed (invalid ones have no payload). */
        if (!open) {
            if ((rc = cw_store_begin(w->store, true)))
                return rc;
            open = true;
        }
        if ((rc = cw_store_settle(w->store, &req, now))) {
            cw_store_rollback(w->store);
            return rc;
        }
    }
    return open ? cw_store_commit(w->store) : 0;
}

/* Acks what is settled; parks the busy; drops (unacked) the held. */
static int ack_batch(cw_worker *w, size_t n, int64_t now)
{
    uint64_t max_tag = 0;
    bool all = w->n_parked == 0;
    for (size_t i = 0; i < n; i++) {
        cw_task *t = &w->batch[i];
        if (t->action == ACT_PARK || t->action == ACT_HOLD)
            all = false;
        if (t->env.delivery_tag > max_tag)
            max_tag = t->env.delivery_tag;
    }
    int st = AMQP_STATUS_OK;
    if (all && n) {
        st = amqp_basic_ack(w->cconn, CW_CONSUME_CH, max_tag, 1);
    } else {
        for (size_t i = 0; i < n && st == AMQP_STATUS_OK; i++) {
            int a = w->batch[i].action;
            if (a != ACT_PARK && a != ACT_HOLD)
                st = amqp_basic_ack(w->cconn, CW_CONSUME_CH, w->batch[i].env.delivery_tag, 0);
        }
    }
    for (size_t i = 0; i < n; i++) {
        cw_task *t = &w->batch[i];
        if (t->action == ACT_PARK && st == AMQP_STATUS_OK && w->n_parked < w->cap_parked) {
            w->parked[w->n_parked].task = *t;
            w->parked[w->n_parked].recheck_at = now + CW_BUSY_RECHECK_MS;
            w->n_parked++;
            memset(t, 0, sizeof *t);
        } else {
            cw__task_reset(t);
        }
    }
    if (st != AMQP_STATUS_OK)
        return cw__error(CW_STATUS_CONNECTION, "acknowledging deliveries: %s",
                         amqp_error_string2(st));
    return 0;
}

static int process_batch(cw_worker *w, size_t n)
{
    int64_t now = cw__now_ms();
    int rc = claim_batch(w, n, now);
    if (rc) {
        for (size_t i = 0; i < n; i++)
            cw__task_reset(&w->batch[i]);
        return rc;
    }

    for (size_t i = 0; i < n; i++) {
        cw_task *t = &w->batch[i];
        cw_log_task lt = log_task(t);
        switch (t->action) {
        case ACT_RUN:
            run_handler(w, t);
            if (t->outcome == CW_OK) {
                w->stats.succeeded++;
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
        case ACT_PARK:
            w->stats.busy_deferred++;
            cw_log_info(&lt, "in progress in another worker: deferred");
            break;
        default:
            break;
        }
    }

    now = cw__now_ms();
    int dlq_rc = dead_letter_batch(w, n, now);
    if ((rc = record_batch(w, n, now))) {
        /* Without the record nothing may be acked: leave all for redelivery. */
        for (size_t i = 0; i < n; i++)
            cw__task_reset(&w->batch[i]);
        return rc;
    }
    rc = ack_batch(w, n, now);
    return rc ? rc : dlq_rc;
}

static void sweep(cw_worker *w)
{
    int64_t mono = cw__mono_ms();
    if (mono < w->next_sweep)
        return;
    w->next_sweep = mono + CW_SWEEP_EVERY_MS;
    unsigned removed = 0;
    int rc = cw_store_sweep(w->store, cw__now_ms() - w->cfg->retention_ms, CW_SWEEP_CHUNK,
                            &removed);
    if (rc)
        cw_log_warn(NULL, "store sweep failed: %s", cw_error_last());
    else if (removed)
        cw_log_debug(NULL, "store sweep removed %u done records", removed);
}

/* Keeps the idle publishing connection's heartbeats flowing. */
static int service_publisher(cw_worker *w)
{
    amqp_frame_t f;
    struct timeval zero = {0, 0};
    for (;;) {
        int st = amqp_simple_wait_frame_noblock(w->pconn, &f, &zero);
        if (st == AMQP_STATUS_TIMEOUT)
            return 0;
        if (st != AMQP_STATUS_OK)
            return cw__error(CW_STATUS_CONNECTION, "publishing connection: %s",
                             amqp_error_string2(st));
        if (f.frame_type == AMQP_FRAME_METHOD &&
            (f.payload.method.id == AMQP_CONNECTION_CLOSE_METHOD ||
             f.payload.method.id == AMQP_CHANNEL_CLOSE_METHOD))
            return cw__error(CW_STATUS_CONNECTION, "the broker closed the publishing connection");
    }
}

static int64_t jitter(int64_t ms)
{
    return ms / 2 + (int64_t)((uint64_t)rand() % (uint64_t)(ms / 2 + 1));
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

int cw_worker_run(cw_worker *w, volatile sig_atomic_t *stop)
{
    int64_t backoff = CW_BACKOFF_MIN_MS;
    srand((unsigned)(getpid() ^ cw__mono_ms()));
    while (!*stop) {
        int rc = session_open(w);
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
            long n = collect(w, cw__now_ms());
            if (n < 0) {
                rc = (int)n;
                break;
            }
            if (n > 0 && (rc = process_batch(w, (size_t)n)))
                break;
            if (n == 0 && (rc = service_publisher(w)))
                break;
            sweep(w);
        }
        drop_held(w, 0);
        session_close(w);
        if (*stop)
            break;
        if (rc == CW_STATUS_STORE)
            return rc;
        cw_log_warn(NULL, "broker session lost: %s; reconnecting", cw_error_last());
        sleep_ms(jitter(CW_BACKOFF_MIN_MS), stop);
    }
    cw_log_info(NULL,
                "stopped: %llu received, %llu applied, %llu duplicates skipped, "
                "%llu dead-lettered (%llu invalid)",
                (unsigned long long)w->stats.received, (unsigned long long)w->stats.succeeded,
                (unsigned long long)w->stats.duplicates,
                (unsigned long long)w->stats.dead_lettered, (unsigned long long)w->stats.invalid);
    return 0;
}
