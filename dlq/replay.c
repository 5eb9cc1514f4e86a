/* Replaying dead-lettered tasks: back to where they were first published,
 * attempts reset, without losing one and without applying one twice.
 *
 * The order of a batch is what makes it safe:
 *   1. reopen each task's record in the store (one durable commit), so that
 *      the worker that receives the replayed copy runs it instead of acking
 *      it as an already dead-lettered duplicate;
 *   2. publish the copies (mandatory, persistent) and wait for the broker's
 *      confirms, message by message;
 *   3. ack the DLQ copies of those confirmed, and only those.
 * Killed before 3, a task is in the DLQ (requeued by the broker) and maybe
 * at its destination too; a later replay of the leftover copy is refused
 * once the first one was applied (done in the store).
 *
 * The DLQ may hold two copies of one task: a worker killed after its DLQ
 * copy was confirmed and before the store recorded it runs the task again
 * on redelivery, and dead-letters it again. Once this replay has
 * republished one copy of a message ID, it removes the others it selects
 * without publishing them: the store would never run a second copy of that
 * ID (it would be acked as a duplicate, or, were the first copy being
 * handled or applied by then, refused and left behind), and with --force
 * would apply the task once more.
 *
 * Deleting is here too: it holds what it selects the same way, and acks it
 * once the operator confirmed. */
#include <errno.h>
#include <math.h>
#include <pwd.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "dlq/deadletter.h"
#include "dlq/dlq.h"
#include "framework/broker.h"
#include "framework/clock.h"
#include "framework/error.h"
#include "framework/owner.h"
#include "retry/delay.h"

#define PUB_CH 1
#define CTL_CH 2
#define BATCH_MAX 256
#define BATCH_BYTES (8u << 20)
#define CANARY_POLL_MS 200
#define PROGRESS_MS 250
#define KNOWN_MAX 64

typedef struct pending {
    cw_dlq_msg msg;
    char exchange[256];
    char routing_key[256];
    char *body; /* an edited body (malloc'd), or NULL for the message's own */
    size_t body_len;
    bool skip; /* refused by the store at reopen time, or a duplicate */
    bool dup;  /* a copy of a task this replay republished already */
} pending;

typedef struct canary {
    cw_dlq_msg msg; /* the summary only (no envelope) */
    bool settled;
} canary;

typedef struct replay {
    const cw_config *cfg;
    cw_store *store;
    const cw_dlq_replay_opts *o;
    cw_dlq_replay_result *res;
    cw_dlq_browser *br;
    amqp_connection_state_t pconn;
    cw_mover mv;
    bool mv_open, ctl_open;
    char known[KNOWN_MAX][256]; /* exchanges known to exist */
    size_t n_known;
    pending *batch;
    size_t n, bytes;
    char user[64];
    canary *canaries;
    size_t n_canaries;
    uint64_t accepted; /* selected messages taken into a batch (or counted, dry run) */
    bool releasing;    /* past the canary phase */
    int64_t t_release; /* when the release phase began (monotonic ms) */
    uint64_t released; /* messages taken in the release phase */
    int64_t last_progress;
} replay;

static bool stop_asked(const replay *r)
{
    const cw_dlq_ctl *c = r->o->ctl;
    return c && c->stop && *c->stop;
}

static void emit(replay *r, cw_dlq_event_kind kind, const cw_dlq_msg *m, const char *detail,
                 const char *exchange, const char *routing_key)
{
    if (!r->o->event)
        return;
    cw_dlq_event e = {.kind = kind,
                      .msg = m,
                      .detail = detail ? detail : "",
                      .exchange = exchange,
                      .routing_key = routing_key};
    r->o->event(&e, r->o->event_data);
}

static void progress(replay *r, bool force)
{
    const cw_dlq_ctl *c = r->o->ctl;
    if (!c || !c->progress)
        return;
    int64_t now = cw__mono_ms();
    if (!force && now - r->last_progress < PROGRESS_MS)
        return;
    r->last_progress = now;
    cw_dlq_progress p = {.what = r->o->dry_run ? "reading" : "replaying",
                         .read = r->res->read,
                         .total = r->res->total,
                         .done = r->res->replayed};
    c->progress(&p, c->progress_data);
}

static void sleep_ms(int64_t ms)
{
    if (ms <= 0)
        return;
    struct timespec ts = {.tv_sec = (time_t)(ms / 1000), .tv_nsec = (long)(ms % 1000) * 1000000L};
    nanosleep(&ts, NULL); /* a signal cuts it short: the caller checks stop */
}

static void who_am_i(char *out, size_t cap)
{
    const char *u = getenv("USER");
    if (!u || !*u) {
        struct passwd *pw = getpwuid(geteuid());
        u = pw ? pw->pw_name : "?";
    }
    snprintf(out, cap, "%s", u);
}

/* ---- properties of a replayed copy ------------------------------------- */

int cw_dlq_replay_props(const amqp_basic_properties_t *in, unsigned replayed,
                        amqp_basic_properties_t *out, amqp_table_entry_t **entries)
{
    *out = *in;
    *entries = NULL;
    int n_old = (in->_flags & AMQP_BASIC_HEADERS_FLAG) ? in->headers.num_entries : 0;
    amqp_table_entry_t *e = malloc(sizeof *e * (size_t)(n_old + 1));
    if (!e)
        return cw__error(CW_STATUS_NOMEM, "out of memory building a replay");
    int n = 0;
    for (int i = 0; i < n_old; i++) {
        amqp_bytes_t k = in->headers.entries[i].key;
        if (cw__is_failure_header(k) || cw__delay_header_is_broker(k.bytes, k.len) ||
            (k.len == 11 && memcmp(k.bytes, "cw-replayed", 11) == 0))
            continue;
        e[n++] = in->headers.entries[i];
    }
    e[n].key = amqp_cstring_bytes("cw-replayed");
    e[n].value.kind = AMQP_FIELD_KIND_I32;
    e[n].value.value.i32 = replayed > INT32_MAX ? INT32_MAX : (int32_t)replayed;
    n++;
    out->_flags |= AMQP_BASIC_HEADERS_FLAG | AMQP_BASIC_DELIVERY_MODE_FLAG;
    out->delivery_mode = AMQP_DELIVERY_PERSISTENT;
    out->headers.num_entries = n;
    out->headers.entries = e;
    *entries = e;
    return 0;
}

/* ---- destinations -------------------------------------------------------- */

static int ctl_channel(replay *r)
{
    if (r->ctl_open)
        return 0;
    amqp_channel_open(r->pconn, CTL_CH);
    int rc = cw__broker_reply(amqp_get_rpc_reply(r->pconn), "opening a channel");
    if (rc == 0)
        r->ctl_open = true;
    return rc;
}

/* Whether `exchange` exists (a publish to a missing one would close the
 * publish channel). 0 yes, CW_STATUS_NOT_FOUND no, or a broker error. */
static int exchange_exists(replay *r, const char *exchange)
{
    if (!*exchange)
        return 0; /* the default exchange */
    for (size_t i = 0; i < r->n_known; i++) {
        if (strcmp(r->known[i], exchange) == 0)
            return 0;
    }
    int rc = ctl_channel(r);
    if (rc)
        return rc;
    amqp_exchange_declare(r->pconn, CTL_CH, amqp_cstring_bytes(exchange),
                          amqp_cstring_bytes("topic"), 1, 0, 0, 0, amqp_empty_table);
    amqp_rpc_reply_t rr = amqp_get_rpc_reply(r->pconn);
    if (rr.reply_type == AMQP_RESPONSE_SERVER_EXCEPTION &&
        rr.reply.id == AMQP_CHANNEL_CLOSE_METHOD) {
        const amqp_channel_close_t *m = rr.reply.decoded;
        amqp_channel_close_ok_t ok = {0};
        amqp_send_method(r->pconn, CTL_CH, AMQP_CHANNEL_CLOSE_OK_METHOD, &ok);
        r->ctl_open = false;
        if (m->reply_code == AMQP_NOT_FOUND)
            return cw__error(CW_STATUS_NOT_FOUND, "exchange '%s' does not exist", exchange);
    }
    if ((rc = cw__broker_reply(rr, "looking up an exchange")))
        return rc;
    if (r->n_known < KNOWN_MAX)
        snprintf(r->known[r->n_known++], sizeof r->known[0], "%s", exchange);
    return 0;
}

/* Where a message goes: --to on the pool's exchange, else its first place. */
static bool destination(const replay *r, const cw_dlq_msg *m, char *ex, char *rk, size_t cap)
{
    if (r->o->to) {
        snprintf(ex, cap, "%s", r->cfg->exchange);
        snprintf(rk, cap, "%s", r->o->to);
        return true;
    }
    if (!m->has_orig)
        return false;
    snprintf(ex, cap, "%s", m->orig_exchange);
    snprintf(rk, cap, "%s", m->orig_routing_key);
    return true;
}

/* ---- batches ------------------------------------------------------------- */

static void pending_clear(pending *p)
{
    cw_dlq_msg_clear(&p->msg);
    free(p->body);
    memset(p, 0, sizeof *p);
}

static int add_canary(replay *r, const cw_dlq_msg *m)
{
    canary *nc = realloc(r->canaries, (r->n_canaries + 1) * sizeof *nc);
    if (!nc)
        return cw__error(CW_STATUS_NOMEM, "out of memory");
    r->canaries = nc;
    canary *c = &r->canaries[r->n_canaries++];
    memset(c, 0, sizeof *c);
    c->msg = *m;
    memset(&c->msg.env, 0, sizeof c->msg.env);
    c->msg.has_env = false;
    return 0;
}

static int find_own_replay(const cw_attempt_record *a, void *ud)
{
    const replay *r = ud;
    return strcmp(a->outcome, "replayed") == 0 && strcmp(a->worker, r->store->owner) == 0;
}

/* Whether this replay reopened (and so published) a copy of the message
 * ID before: its history has a "replayed" row of this process. 1 yes, 0
 * no, or a status. */
static int replayed_here(replay *r, const char *message_id)
{
    int rc = cw_store_history(r->store, message_id, find_own_replay, r);
    return rc == CW_STATUS_NOT_FOUND ? 0 : rc;
}

/* Removes a copy of a task this replay republished already (see the top
 * of the file), counted as replayed to where the first copy went. */
static int drop_duplicate(replay *r, const cw_dlq_msg *m, const char *ex, const char *rk)
{
    int rc = cw_dlq_browser_remove(r->br, m->env.delivery_tag);
    if (rc)
        return rc;
    r->res->replayed++;
    r->res->duplicates++;
    if (cw_dlq_groups_add(&r->res->groups, m))
        return cw__error(CW_STATUS_NOMEM, "out of memory");
    emit(r, CW_DLQ_EV_REPLAYED, m,
         "another copy of this task, replayed already: removed from the DLQ without "
         "publishing it again",
         ex, rk);
    return 0;
}

/* Reopens, publishes and settles the batch. A failure that leaves the
 * connection unusable is returned; what was not confirmed stays in the DLQ. */
static int flush(replay *r)
{
    if (r->n == 0)
        return 0;
    int rc = 0;
    int64_t now = cw__now_ms();
    char reason[1200];
    size_t *slot_of = NULL;

    /* 1. reopen every record, one durable commit */
    if ((rc = cw_store_begin(r->store, true)))
        goto out_clear;
    for (size_t i = 0; i < r->n; i++) {
        pending *p = &r->batch[i];
        /* A copy in an earlier batch of this replay was republished. */
        int dup = replayed_here(r, p->msg.message_id);
        if (dup < 0) {
            rc = dup;
            cw_store_rollback(r->store);
            goto out_clear;
        }
        if (dup) {
            p->skip = p->dup = true;
            continue;
        }
        snprintf(reason, sizeof reason, "replayed by %s from %s to %s / %s%s%s", r->user,
                 r->cfg->dlq, p->exchange[0] ? p->exchange : "(default exchange)", p->routing_key,
                 p->body ? " with an edited body" : "", r->o->force ? " (--force)" : "");
        cw_reopen_req req = {.message_id = p->msg.message_id,
                             .saga_id = p->msg.saga_id[0] ? p->msg.saga_id : NULL,
                             .type = p->msg.type[0] ? p->msg.type : NULL,
                             .reason = reason,
                             .force = r->o->force};
        cw_task_state was;
        int st = cw_store_reopen(r->store, &req, now, &was);
        if (st == CW_STATUS_EXISTS) {
            /* Became done or busy since it was looked at. */
            p->skip = true;
            if (was == CW_STATE_DONE) {
                r->res->refused_done++;
                emit(r, CW_DLQ_EV_REFUSED_DONE, &p->msg, cw_error_last(), NULL, NULL);
            } else {
                r->res->refused_busy++;
                emit(r, CW_DLQ_EV_REFUSED_BUSY, &p->msg, cw_error_last(), NULL, NULL);
            }
            continue;
        }
        if (st) {
            rc = st;
            cw_store_rollback(r->store);
            goto out_clear;
        }
    }
    if ((rc = cw_store_commit(r->store)))
        goto out_clear;

    /* 2. publish and wait for the confirms */
    cw_mover_reset(&r->mv);
    slot_of = malloc(r->n * sizeof *slot_of);
    if (!slot_of) {
        rc = cw__error(CW_STATUS_NOMEM, "out of memory");
        goto out_clear;
    }
    for (size_t i = 0; i < r->n; i++)
        slot_of[i] = SIZE_MAX;
    for (size_t i = 0; i < r->n && rc == 0; i++) {
        pending *p = &r->batch[i];
        if (p->skip)
            continue;
        amqp_basic_properties_t props;
        amqp_table_entry_t *entries;
        if ((rc = cw_dlq_replay_props(&p->msg.env.message.properties, p->msg.replayed + 1, &props,
                                      &entries)))
            break;
        amqp_bytes_t body = p->msg.env.message.body;
        if (p->body) {
            body.bytes = p->body;
            body.len = p->body_len;
        }
        rc = cw_mover_send(&r->mv, p->exchange, p->routing_key, &props, body);
        free(entries);
        if (rc == 0)
            slot_of[i] = r->mv.n - 1;
    }
    int wrc = r->mv.n ? cw_mover_wait(&r->mv, CW_CONFIRM_TIMEOUT_MS) : 0;
    if (rc == 0)
        rc = wrc;

    /* 3. remove from the DLQ what is confirmed at its destination, and the
     * duplicates */
    for (size_t i = 0; i < r->n; i++) {
        pending *p = &r->batch[i];
        if (p->dup) {
            int drc = drop_duplicate(r, &p->msg, p->exchange, p->routing_key);
            if (drc && rc == 0)
                rc = drc;
            continue;
        }
        if (p->skip)
            continue;
        cw_move_state st = slot_of[i] == SIZE_MAX ? CW_MOVE_PENDING : r->mv.slots[slot_of[i]].state;
        char detail[1024];
        switch (st) {
        case CW_MOVE_CONFIRMED: {
            int arc = cw_dlq_browser_remove(r->br, p->msg.env.delivery_tag);
            r->res->replayed++;
            cw_dlq_groups_add(&r->res->groups, &p->msg);
            emit(r, CW_DLQ_EV_REPLAYED, &p->msg, arc ? cw_error_last() : "", p->exchange,
                 p->routing_key);
            if (!r->releasing && r->o->canary && add_canary(r, &p->msg) && rc == 0)
                rc = CW_STATUS_NOMEM;
            if (arc && rc == 0) {
                rc = arc;
                snprintf(r->res->stopped, sizeof r->res->stopped,
                         "the broker connection was lost after a replay was confirmed: its "
                         "copy may still be in the DLQ too (a later replay refuses it once "
                         "the task is done): %.600s",
                         cw_error_last());
            }
            break;
        }
        case CW_MOVE_RETURNED:
            r->res->failed++;
            snprintf(detail, sizeof detail,
                     "unroutable: no queue is bound to routing key '%s' "
                     "on exchange '%s'",
                     p->routing_key, p->exchange);
            emit(r, CW_DLQ_EV_FAILED, &p->msg, detail, p->exchange, p->routing_key);
            break;
        case CW_MOVE_NACKED:
            r->res->failed++;
            emit(r, CW_DLQ_EV_FAILED, &p->msg, "the broker refused the publish (nack)", p->exchange,
                 p->routing_key);
            break;
        case CW_MOVE_PENDING:
            r->res->failed++;
            emit(r, CW_DLQ_EV_FAILED, &p->msg, "not confirmed by the broker", p->exchange,
                 p->routing_key);
            break;
        }
    }

out_clear:
    free(slot_of);
    for (size_t i = 0; i < r->n; i++)
        pending_clear(&r->batch[i]);
    r->n = 0;
    r->bytes = 0;
    progress(r, false);
    return rc;
}

/* ---- canaries ------------------------------------------------------------ */

/* Waits for the canaries' outcomes in the store. 0 when every one was
 * applied; 1 when one failed again or none came in time (res->stopped says
 * how); a status. */
static int await_canaries(replay *r)
{
    if (r->n_canaries == 0) {
        snprintf(r->res->stopped, sizeof r->res->stopped,
                 "no canary could be replayed: the rest was left in the DLQ");
        r->res->canary_failed = true;
        return 1;
    }
    int64_t deadline = cw__mono_ms() + r->o->canary_timeout_ms;
    for (;;) {
        size_t open = 0;
        for (size_t i = 0; i < r->n_canaries; i++) {
            canary *c = &r->canaries[i];
            if (c->settled)
                continue;
            cw_task_record rec;
            int rc = cw_store_get(r->store, c->msg.message_id, &rec);
            if (rc && rc != CW_STATUS_NOT_FOUND)
                return rc;
            if (rc == 0 && rec.state == CW_STATE_DONE) {
                c->settled = true;
                emit(r, CW_DLQ_EV_CANARY_OK, &c->msg, "", NULL, NULL);
                continue;
            }
            if (rc == 0 && (rec.state == CW_STATE_DEAD || rec.state == CW_STATE_RETRYING)) {
                char detail[CW_DLQ_ERROR_MAX + 64];
                snprintf(detail, sizeof detail, "%s: %s%s%s",
                         rec.state == CW_STATE_DEAD ? "dead-lettered again" : "failed again",
                         rec.error_class, rec.error_class[0] ? ": " : "", rec.last_error);
                c->settled = true;
                emit(r, CW_DLQ_EV_CANARY_FAILED, &c->msg, detail, NULL, NULL);
                snprintf(r->res->stopped, sizeof r->res->stopped,
                         "canary %.128s (%.100s, saga %.100s) %.600s", c->msg.message_id,
                         c->msg.type, c->msg.saga_id[0] ? c->msg.saga_id : "-", detail);
                r->res->canary_failed = true;
                return 1;
            }
            open++;
        }
        if (open == 0)
            return 0;
        if (stop_asked(r)) {
            r->res->interrupted = true;
            snprintf(r->res->stopped, sizeof r->res->stopped,
                     "interrupted while waiting for the canaries");
            return 1;
        }
        if (cw__mono_ms() >= deadline) {
            snprintf(r->res->stopped, sizeof r->res->stopped,
                     "%zu canary task(s) had no outcome within %lld s (is a worker of pool '%s' "
                     "running?)",
                     open, (long long)(r->o->canary_timeout_ms / 1000), r->cfg->name);
            r->res->canary_failed = true;
            return 1;
        }
        progress(r, false);
        sleep_ms(CANARY_POLL_MS);
    }
}

/* ---- the replay ---------------------------------------------------------- */

/* Whether the record says the task must not be replayed now. */
static bool refused(replay *r, const cw_dlq_msg *m)
{
    cw_task_record rec;
    if (cw_store_get(r->store, m->message_id, &rec) != 0)
        return false;
    if (rec.state == CW_STATE_DONE && !r->o->force) {
        r->res->refused_done++;
        emit(r, CW_DLQ_EV_REFUSED_DONE, m,
             "already applied (done in the store): --force replays it anyway", NULL, NULL);
        return true;
    }
    if (rec.state == CW_STATE_IN_PROGRESS && rec.lease_until_ms > cw__now_ms() &&
        cw__owner_alive(rec.owner, NULL)) {
        char detail[256];
        snprintf(detail, sizeof detail, "being handled by %s right now", rec.owner);
        r->res->refused_busy++;
        emit(r, CW_DLQ_EV_REFUSED_BUSY, m, detail, NULL, NULL);
        return true;
    }
    return false;
}

static bool batch_has(const replay *r, const char *message_id)
{
    for (size_t i = 0; i < r->n; i++) {
        if (strcmp(r->batch[i].msg.message_id, message_id) == 0)
            return true;
    }
    return false;
}

/* Takes one selected message. 1: taken (moved into the batch, or counted in
 * a dry run); 0: kept in the DLQ; <0: a status that stops the replay. */
static int take(replay *r, cw_dlq_msg *m)
{
    char ex[256], rk[256];
    if (!m->message_id[0]) {
        r->res->failed++;
        emit(r, CW_DLQ_EV_FAILED, m,
             "it has no message ID (an invalid task): fix it and "
             "publish it anew instead",
             NULL, NULL);
        return 0;
    }
    if (!r->o->dry_run) {
        int dup = replayed_here(r, m->message_id);
        if (dup < 0)
            return dup;
        if (dup) {
            if (!destination(r, m, ex, rk, sizeof ex))
                ex[0] = rk[0] = '\0';
            int rc = drop_duplicate(r, m, ex[0] ? ex : NULL, rk[0] ? rk : NULL);
            return rc ? rc : 0;
        }
    }
    if (refused(r, m))
        return 0;
    if (!destination(r, m, ex, rk, sizeof ex)) {
        r->res->failed++;
        emit(r, CW_DLQ_EV_FAILED, m,
             "no original exchange and routing key in its headers: "
             "give --to ROUTING_KEY",
             NULL, NULL);
        return 0;
    }
    int rc = exchange_exists(r, ex);
    if (rc == CW_STATUS_NOT_FOUND) {
        r->res->failed++;
        emit(r, CW_DLQ_EV_FAILED, m, cw_error_last(), ex, rk);
        return 0;
    }
    if (rc)
        return rc;
    if (r->o->dry_run)
        return cw_dlq_groups_add(&r->res->groups, m) ? CW_STATUS_NOMEM : 1;
    char *body = NULL;
    size_t body_len = 0;
    if (r->o->edit && r->o->edit(m, &body, &body_len, r->o->edit_data)) {
        r->res->failed++;
        emit(r, CW_DLQ_EV_FAILED, m, cw_error_last(), ex, rk);
        snprintf(r->res->stopped, sizeof r->res->stopped, "the edit was refused: %.900s",
                 cw_error_last());
        return 0;
    }
    size_t size = body ? body_len : m->env.message.body.len;
    if (r->n == BATCH_MAX || (r->n && r->bytes + size > BATCH_BYTES) ||
        batch_has(r, m->message_id)) {
        if ((rc = flush(r))) {
            free(body);
            return rc;
        }
    }
    pending *p = &r->batch[r->n++];
    p->msg = *m;
    memset(m, 0, sizeof *m); /* the envelope now belongs to the batch */
    snprintf(p->exchange, sizeof p->exchange, "%s", ex);
    snprintf(p->routing_key, sizeof p->routing_key, "%s", rk);
    p->body = body;
    p->body_len = body_len;
    r->bytes += size;
    return 1;
}

/* Sleeps until `due` (monotonic ms), waking for a stop. */
static void wait_until(const replay *r, int64_t due)
{
    for (int64_t now = cw__mono_ms(); now < due && !stop_asked(r); now = cw__mono_ms())
        sleep_ms(due - now < 100 ? due - now : 100);
}

int cw_dlq_replay(const cw_config *cfg, cw_store *store, const cw_dlq_replay_opts *o,
                  cw_dlq_replay_result *res)
{
    memset(res, 0, sizeof *res);
    if (!o || o->version != CW_DLQ_REPLAY_OPTS_VERSION)
        return cw__error(CW_STATUS_INVALID_ARG, "dlq replay: options of an unknown version");
    if (o->rate < 0 || !isfinite(o->rate))
        return cw__error(CW_STATUS_INVALID_ARG, "dlq replay: the rate must be positive");
    replay r = {.cfg = cfg, .store = store, .o = o, .res = res};
    who_am_i(r.user, sizeof r.user);
    r.batch = calloc(BATCH_MAX, sizeof *r.batch);
    if (!r.batch)
        return cw__error(CW_STATUS_NOMEM, "out of memory");
    int rc = cw_dlq_browser_open(&r.br, cfg, NULL,
                                 o->dry_run ? "compworker dlq replay --dry-run"
                                            : "compworker dlq replay",
                                 o->ctl);
    if (rc)
        goto out_free;
    res->total = cw_dlq_browser_total(r.br);
    if ((rc = cw__dlq_connect(&r.pconn, cfg, "compworker dlq replay (publisher)")))
        goto out_browser;
    if (!o->dry_run) {
        if ((rc = cw_mover_open(&r.mv, r.pconn, PUB_CH)))
            goto out_conn;
        r.mv_open = true;
    }
    r.releasing = o->canary == 0 || o->dry_run;
    r.t_release = cw__mono_ms();
    progress(&r, true);

    bool selecting = true;
    cw_dlq_msg m;
    for (;;) {
        if (stop_asked(&r)) {
            res->interrupted = true;
            break;
        }
        int got = cw_dlq_browser_next(r.br, &m);
        if (got <= 0) {
            if (got < 0)
                rc = got;
            else if (stop_asked(&r))
                res->interrupted = true;
            break;
        }
        res->read++;
        if (!cw_dlq_filter_match(o->filter, &m)) {
            cw_dlq_msg_clear(&m);
            progress(&r, false);
            continue;
        }
        res->selected++;
        if (!selecting || (o->limit && r.accepted >= o->limit)) {
            res->left++;
            cw_dlq_msg_clear(&m);
            continue;
        }
        if (r.releasing && o->rate > 0 && !o->dry_run) {
            int64_t due = r.t_release + (int64_t)((double)r.released * 1000.0 / o->rate);
            if (due > cw__mono_ms()) {
                if ((rc = flush(&r))) {
                    cw_dlq_msg_clear(&m);
                    break;
                }
                wait_until(&r, due);
                if (stop_asked(&r)) {
                    res->interrupted = true;
                    res->left++;
                    cw_dlq_msg_clear(&m);
                    break;
                }
            }
        }
        int t = take(&r, &m);
        cw_dlq_msg_clear(&m);
        if (t < 0) {
            rc = t;
            break;
        }
        if (t == 0) {
            if (res->stopped[0])
                selecting = false; /* the edit was refused */
            continue;
        }
        r.accepted++;
        if (r.releasing) {
            r.released++;
        } else if (r.accepted == o->canary) {
            if ((rc = flush(&r)))
                break;
            int c = await_canaries(&r);
            if (c < 0) {
                rc = c;
                break;
            }
            if (c > 0) {
                selecting = false;
                if (res->interrupted)
                    break;
            } else {
                r.releasing = true;
                r.t_release = cw__mono_ms();
                r.released = 0;
            }
        }
        progress(&r, false);
    }
    if (rc == 0 && !o->dry_run) {
        /* The last batch; interrupted or not, it is finished. */
        rc = flush(&r);
        if (rc == 0 && !r.releasing && selecting && !res->interrupted && r.accepted > 0) {
            /* Fewer tasks than --canary: they are all canaries. */
            int c = await_canaries(&r);
            if (c < 0)
                rc = c;
        }
    }
    if (rc && !res->stopped[0])
        snprintf(res->stopped, sizeof res->stopped, "%s", cw_error_last());
    if (res->interrupted && !res->stopped[0])
        snprintf(res->stopped, sizeof res->stopped,
                 "interrupted after reading %llu of %llu messages", (unsigned long long)res->read,
                 (unsigned long long)res->total);
    res->missing = cw_dlq_browser_missing(r.br);
    progress(&r, true);

    for (size_t i = 0; i < r.n; i++)
        pending_clear(&r.batch[i]); /* not published: they stay in the DLQ */
    if (r.mv_open)
        cw_mover_free(&r.mv);
out_conn:
    cw__broker_close(r.pconn);
out_browser:
    /* Everything read and not removed goes back into the DLQ, in its place. */
    cw_dlq_browser_free(r.br);
out_free:
    free(r.batch);
    free(r.canaries);
    cw_dlq_groups_sort(&res->groups);
    return rc;
}

/* ---- deleting ------------------------------------------------------------ */

int cw_dlq_delete(const cw_config *cfg, const cw_dlq_filter *f, const cw_dlq_ctl *ctl,
                  bool (*confirm)(const cw_dlq_groups *gs, uint64_t n, void *ud), void *ud,
                  uint64_t *deleted, uint64_t *total)
{
    *deleted = 0;
    *total = 0;
    cw_dlq_browser *br;
    int rc = cw_dlq_browser_open(&br, cfg, NULL, "compworker dlq delete", ctl);
    if (rc)
        return rc;
    *total = cw_dlq_browser_total(br);
    cw_dlq_groups gs = {0};
    uint64_t *tags = NULL;
    size_t n = 0, cap = 0;
    int64_t last = cw__mono_ms();
    uint64_t read = 0;
    cw_dlq_msg m;
    int got;
    while ((got = cw_dlq_browser_next(br, &m)) == 1) {
        read++;
        if (cw_dlq_filter_match(f, &m)) {
            if (n == cap) {
                size_t nc = cap ? cap * 2 : 256;
                uint64_t *nt = realloc(tags, nc * sizeof *nt);
                if (!nt) {
                    cw_dlq_msg_clear(&m);
                    rc = cw__error(CW_STATUS_NOMEM, "out of memory");
                    goto out;
                }
                tags = nt;
                cap = nc;
            }
            tags[n++] = m.env.delivery_tag;
            if ((rc = cw_dlq_groups_add(&gs, &m))) {
                cw_dlq_msg_clear(&m);
                goto out;
            }
        }
        cw_dlq_msg_clear(&m);
        if (ctl && ctl->progress && cw__mono_ms() - last >= PROGRESS_MS) {
            last = cw__mono_ms();
            cw_dlq_progress p = {.what = "reading", .read = read, .total = *total};
            ctl->progress(&p, ctl->progress_data);
        }
    }
    if (got < 0) {
        rc = got;
        goto out;
    }
    if (ctl && ctl->stop && *ctl->stop) {
        rc = cw__error(CW_STATUS_INTERRUPTED, "interrupted: nothing was deleted");
        goto out;
    }
    cw_dlq_groups_sort(&gs);
    if (n == 0 || !confirm(&gs, n, ud))
        goto out;
    for (size_t i = 0; i < n; i++) {
        if ((rc = cw_dlq_browser_remove(br, tags[i])))
            goto out;
        (*deleted)++;
    }
out:
    free(tags);
    cw_dlq_groups_free(&gs);
    /* The close makes the broker handle the acks before it requeues the rest. */
    cw_dlq_browser_free(br);
    return rc;
}
