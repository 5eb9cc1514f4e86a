/* Confirmed publishing that tells, message by message, what arrived.
 *
 * A batch of messages is published on a channel in confirm mode, mandatory.
 * The broker answers each with basic.ack (it is in every queue it routes
 * to), basic.nack (it could not take it), and for a mandatory message no
 * queue is bound for, first a basic.return carrying the message and then
 * the basic.ack. A return is matched to its message by the message ID,
 * which is why a batch holds each ID once. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "dlq/dlq.h"
#include "framework/broker.h"
#include "framework/clock.h"
#include "framework/error.h"

int cw_mover_open(cw_mover *m, amqp_connection_state_t conn, amqp_channel_t ch)
{
    memset(m, 0, sizeof *m);
    m->conn = conn;
    m->ch = ch;
    m->next_seq = 1;
    amqp_channel_open(conn, ch);
    int rc = cw__broker_reply(amqp_get_rpc_reply(conn), "opening the publish channel");
    if (rc)
        return rc;
    amqp_confirm_select(conn, ch);
    return cw__broker_reply(amqp_get_rpc_reply(conn), "enabling publisher confirms");
}

void cw_mover_free(cw_mover *m)
{
    free(m->slots);
    m->slots = NULL;
    m->n = m->cap = 0;
}

void cw_mover_reset(cw_mover *m)
{
    m->n = 0;
}

bool cw_mover_has(const cw_mover *m, const char *message_id)
{
    for (size_t i = 0; i < m->n; i++) {
        if (strcmp(m->slots[i].key, message_id) == 0)
            return true;
    }
    return false;
}

static void copy_key(char *dst, size_t cap, const amqp_basic_properties_t *p)
{
    size_t n = 0;
    if (p->_flags & AMQP_BASIC_MESSAGE_ID_FLAG) {
        n = p->message_id.len < cap ? p->message_id.len : cap - 1;
        memcpy(dst, p->message_id.bytes, n);
    }
    dst[n] = '\0';
}

int cw_mover_send(cw_mover *m, const char *exchange, const char *routing_key,
                  const amqp_basic_properties_t *props, amqp_bytes_t body)
{
    if (m->n == m->cap) {
        size_t cap = m->cap ? m->cap * 2 : 64;
        cw_move_slot *ns = realloc(m->slots, cap * sizeof *ns);
        if (!ns)
            return cw__error(CW_STATUS_NOMEM, "out of memory publishing");
        m->slots = ns;
        m->cap = cap;
    }
    cw_move_slot *s = &m->slots[m->n];
    memset(s, 0, sizeof *s);
    copy_key(s->key, sizeof s->key, props);
    int st = amqp_basic_publish(m->conn, m->ch, amqp_cstring_bytes(exchange),
                                amqp_cstring_bytes(routing_key), 1, 0, props, body);
    if (st != AMQP_STATUS_OK)
        return cw__error(CW_STATUS_CONNECTION, "publishing to '%s': %s", exchange,
                         amqp_error_string2(st));
    s->seq = m->next_seq++;
    s->state = CW_MOVE_PENDING;
    m->n++;
    return 0;
}

static void settle(cw_mover *m, uint64_t tag, bool multiple, cw_move_state to)
{
    for (size_t i = 0; i < m->n; i++) {
        cw_move_slot *s = &m->slots[i];
        if (s->state == CW_MOVE_CONFIRMED || s->state == CW_MOVE_NACKED)
            continue;
        if (multiple ? s->seq > tag : s->seq != tag)
            continue;
        /* A returned message keeps RETURNED when its ack comes. */
        if (s->state == CW_MOVE_PENDING || to == CW_MOVE_NACKED)
            s->state = to;
    }
}

static bool all_settled(const cw_mover *m)
{
    for (size_t i = 0; i < m->n; i++) {
        if (m->slots[i].state == CW_MOVE_PENDING)
            return false;
    }
    return true;
}

/* A basic.return: marks the pending message with that ID returned. Its
 * basic.ack follows; until then all_settled() does not count on it, which
 * does not matter: a returned message is never acked away from the DLQ. */
static int on_return(cw_mover *m, const amqp_basic_return_t *r)
{
    snprintf(m->last_return, sizeof m->last_return, "%d %.*s (exchange '%.*s', routing key '%.*s')",
             r->reply_code, (int)r->reply_text.len, (const char *)r->reply_text.bytes,
             (int)r->exchange.len, (const char *)r->exchange.bytes, (int)r->routing_key.len,
             (const char *)r->routing_key.bytes);
    amqp_message_t msg;
    amqp_rpc_reply_t rr = amqp_read_message(m->conn, m->ch, &msg, 0);
    if (rr.reply_type != AMQP_RESPONSE_NORMAL)
        return cw__broker_reply(rr, "reading a returned message");
    char key[CW_MESSAGE_ID_MAX + 1];
    copy_key(key, sizeof key, &msg.properties);
    amqp_destroy_message(&msg);
    for (size_t i = 0; i < m->n; i++) {
        if (m->slots[i].state == CW_MOVE_PENDING && strcmp(m->slots[i].key, key) == 0) {
            m->slots[i].state = CW_MOVE_RETURNED;
            break;
        }
    }
    return 0;
}

int cw_mover_wait(cw_mover *m, int timeout_ms)
{
    int64_t deadline = cw__mono_ms() + timeout_ms;
    while (!all_settled(m)) {
        int64_t left = deadline - cw__mono_ms();
        if (left <= 0)
            return cw__error(CW_STATUS_TIMEOUT, "no publisher confirm within %d ms", timeout_ms);
        struct timeval tv = {.tv_sec = left / 1000, .tv_usec = (left % 1000) * 1000};
        amqp_frame_t f;
        int st = amqp_simple_wait_frame_noblock(m->conn, &f, &tv);
        if (st == AMQP_STATUS_TIMEOUT)
            continue;
        if (st != AMQP_STATUS_OK)
            return cw__error(CW_STATUS_CONNECTION, "waiting for publisher confirms: %s",
                             amqp_error_string2(st));
        if (f.frame_type != AMQP_FRAME_METHOD)
            continue;
        switch (f.payload.method.id) {
        case AMQP_BASIC_ACK_METHOD: {
            const amqp_basic_ack_t *a = f.payload.method.decoded;
            settle(m, a->delivery_tag, a->multiple, CW_MOVE_CONFIRMED);
            break;
        }
        case AMQP_BASIC_NACK_METHOD: {
            const amqp_basic_nack_t *a = f.payload.method.decoded;
            settle(m, a->delivery_tag, a->multiple, CW_MOVE_NACKED);
            break;
        }
        case AMQP_BASIC_RETURN_METHOD: {
            int rc = on_return(m, f.payload.method.decoded);
            if (rc)
                return rc;
            break;
        }
        case AMQP_CHANNEL_CLOSE_METHOD: {
            const amqp_channel_close_t *c = f.payload.method.decoded;
            int rc = cw__error(CW_STATUS_BROKER_REFUSED,
                               "the broker closed the publish channel: %.*s",
                               (int)c->reply_text.len, (const char *)c->reply_text.bytes);
            amqp_channel_close_ok_t ok = {0};
            amqp_send_method(m->conn, f.channel, AMQP_CHANNEL_CLOSE_OK_METHOD, &ok);
            return rc;
        }
        case AMQP_CONNECTION_CLOSE_METHOD: {
            const amqp_connection_close_t *c = f.payload.method.decoded;
            return cw__error(CW_STATUS_CONNECTION, "the broker closed the connection: %.*s",
                             (int)c->reply_text.len, (const char *)c->reply_text.bytes);
        }
        default: break;
        }
    }
    amqp_maybe_release_buffers(m->conn);
    return 0;
}
