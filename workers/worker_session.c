/* The worker's broker session: its two connections (one consumes and acks,
 * one publishes with confirms), reading deliveries into a batch, and the
 * frames that are not deliveries. */
#include <poll.h>
#include <stdio.h>
#include <string.h>

#include "framework/broker.h"
#include "framework/clock.h"
#include "framework/error.h"
#include "framework/log.h"
#include "retry/delay.h"
#include "workers/worker_private.h"

/* Ends the session: with the closing handshake when `graceful` (a stop:
 * the last acks must not be dropped), else without (an error ended it, and
 * rabbitmq-c may not be able to read on; see cw__broker_abort). */
void cw__worker_session_close(cw_worker *w, bool graceful)
{
    void (*end)(amqp_connection_state_t) = graceful ? cw__broker_close : cw__broker_abort;
    if (w->metrics && (w->cconn || w->pconn))
        cw_metrics_connected(w->metrics, false);
    if (w->cconn) {
        end(w->cconn);
        w->cconn = NULL;
    }
    if (w->pconn) {
        cw__publisher_free(&w->pub);
        end(w->pconn);
        w->pconn = NULL;
    }
}

int cw__worker_session_open(cw_worker *w)
{
    char name[256], where[1024];
    int rc;
    int hb = (int)(w->cfg->heartbeat_ms / 1000);

    snprintf(name, sizeof name, "compworker %s consumer %s", w->cfg->name, w->id);
    if ((rc = cw__broker_connect_tls(&w->cconn, w->cfg->url, &w->cfg->tls, &w->url_next, hb, name,
                                     where, sizeof where)))
        return rc;
    if ((rc = cw__broker_accept_large_frames(w->cconn)))
        goto out_close;
    amqp_channel_open(w->cconn, CW_CONSUME_CH);
    if ((rc = cw__broker_reply(amqp_get_rpc_reply(w->cconn), "opening the consume channel")))
        goto out_close;
    if ((rc = cw__topology_declare(w->cconn, CW_CONSUME_CH, w->cfg, w->reg)))
        goto out_close;
    if ((rc = cw__delay_declare(w->cconn, CW_CONSUME_CH)) ||
        (rc = cw__delay_bind_queue(w->cconn, CW_CONSUME_CH, w->cfg->queue)))
        goto out_close;

    /* The publishing connection goes to the same broker as the consumer. */
    unsigned same = w->url_next;
    snprintf(name, sizeof name, "compworker %s publisher %s", w->cfg->name, w->id);
    if ((rc = cw__broker_connect_tls(&w->pconn, w->cfg->url, &w->cfg->tls, &same, hb, name, NULL,
                                     0)))
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
    if (w->metrics)
        cw_metrics_connected(w->metrics, true);
    cw_log_info(NULL, "consuming from %s at %s (prefetch %u, batch %zu, %zu task types)",
                w->cfg->queue, where, w->cfg->prefetch, w->batch_max, w->reg->n_handlers);
    return 0;

out_close:
    cw__worker_session_close(w, false);
    return rc;
}

/* A frame that is not a delivery (after AMQP_STATUS_UNEXPECTED_STATE):
 * decides whether the session can go on. */
static int consume_other_frame(cw_worker *w, const amqp_frame_t *fp)
{
    const amqp_frame_t f = *fp;
    if (f.frame_type != AMQP_FRAME_METHOD)
        return 0;
    switch (f.payload.method.id) {
    case AMQP_BASIC_ACK_METHOD: return 0;
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
    default: return 0;
    }
}

/* Receives one delivery into `t` within `timeout_ms` (0: only what has
 * already arrived). 1 when one was read, 0 when none, <0 on a lost session. */
static int receive_one(cw_worker *w, cw_task *t, int timeout_ms)
{
    for (;;) {
        struct timeval tv = {.tv_sec = timeout_ms / 1000, .tv_usec = (timeout_ms % 1000) * 1000};
        amqp_frame_t other;
        amqp_rpc_reply_t r = cw__broker_consume_pooled(w->cconn, &t->env, &tv, &other);
        if (r.reply_type == AMQP_RESPONSE_NORMAL) {
            t->has_env = true;
            return 1;
        }
        if (r.reply_type == AMQP_RESPONSE_LIBRARY_EXCEPTION) {
            if (r.library_error == AMQP_STATUS_TIMEOUT)
                return 0;
            if (r.library_error == AMQP_STATUS_UNEXPECTED_STATE) {
                int rc = consume_other_frame(w, &other);
                if (rc)
                    return rc;
                continue;
            }
        }
        return cw__broker_reply(r, "receiving deliveries");
    }
}

long cw__worker_collect(cw_worker *w, int wait_ms)
{
    long got = 0;
    size_t held = 0;
    bool polled = false;
    /* Bodies held are bounded too, not only their count: a batch ends once
     * it holds CW_BATCH_BYTES or max_body_size, so that deliveries larger
     * than the contract allows (up to the broker's own limit, 128 MiB) are
     * taken one at a time. */
    size_t budget = w->cfg->max_body_size > CW_BATCH_BYTES ? (size_t)w->cfg->max_body_size
                                                           : CW_BATCH_BYTES;
    for (;;) {
        /* What has arrived, rabbitmq-c's and TLS's buffers included. */
        while (w->n_fresh < w->batch_max && held < budget && w->free_slots) {
            cw_task *t = w->free_slots;
            int r = receive_one(w, t, 0);
            if (r < 0)
                return r;
            if (r == 0)
                break;
            w->free_slots = t->next;
            t->next = NULL;
            t->stage = STAGE_FRESH;
            w->fresh[w->n_fresh++] = t;
            w->stats.received++;
            held += t->env.message.body.len;
            got++;
        }
        if (got || wait_ms <= 0 || polled)
            return got;
        /* Nothing yet: wait for the broker, or for a handler to finish. */
        /* ... or for the store to make a committed batch durable. */
        struct pollfd pfd[3] = {{.fd = amqp_get_sockfd(w->cconn), .events = POLLIN},
                                {.fd = cw_runner_fd(w->runner), .events = POLLIN},
                                {.fd = w->n_syncing ? cw_store_durable_fd(w->store) : -1,
                                 .events = POLLIN}};
        int pr = poll(pfd, 3, wait_ms);
        polled = true;
        if (pr <= 0 || !(pfd[0].revents & (POLLIN | POLLERR | POLLHUP)))
            return 0;
    }
}

/* Keeps the idle publishing connection's heartbeats flowing. */
int cw__worker_service_publisher(cw_worker *w)
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

int cw__worker_keep_alive(cw_worker *w)
{
    if (!w->cconn || !w->pconn)
        return cw__error(CW_STATUS_CONNECTION, "no broker session");
    int64_t now = cw__mono_ms();
    if (now - w->last_keepalive_ms >= CW_KEEPALIVE_MS) {
        w->last_keepalive_ms = now;
        amqp_frame_t hb;
        memset(&hb, 0, sizeof hb);
        hb.frame_type = AMQP_FRAME_HEARTBEAT;
        hb.channel = 0;
        int st = amqp_send_frame(w->cconn, &hb);
        if (st != AMQP_STATUS_OK)
            return cw__error(CW_STATUS_CONNECTION, "consuming connection: %s",
                             amqp_error_string2(st));
    }
    return cw__worker_service_publisher(w);
}
