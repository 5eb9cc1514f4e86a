/* Reading a dead-letter queue without consuming it.
 *
 * A passive queue.declare freezes the count of messages; basic.consume with
 * manual acks then delivers them in queue order and the browser reads that
 * many deliveries, no more: whatever arrives later (behind them) is never
 * read. Messages the caller does not remove stay unacked until the browser
 * closes and puts them back.
 *
 * Holding a whole DLQ unacked needs credit for it: a consumer's prefetch
 * is at most 65535 (basic.qos has 16 bits), and a quorum queue gives an
 * "unlimited" consumer only 2000. So the browser asks for exactly the
 * snapshot's count, in consumers of at most 65535 on its one channel,
 * adding the next consumer once the credit of those before is all held.
 * Exactly the snapshot's count: the broker cannot even send a message that
 * arrived later before one of the snapshot is removed.
 *
 * Putting back keeps the queue's order, which RabbitMQ does not do by
 * itself. A quorum queue (3.10) puts a requeued message at the back of the
 * queue, requeues what a closing channel holds in no particular order, and
 * sends a requeued message straight back to a consumer that still has
 * credit. So, before it closes, the browser reads the rest of the queue --
 * the snapshot's messages not read yet, then those that arrived since --
 * cancels its consumers, and requeues all it holds with basic.nack
 * (multiple), one nack per run of deliveries of one consumer, in the order
 * of the delivery tags: the queue ends up as it was, less what was removed.
 * Then it waits until the broker shows the messages ready again, so that an
 * operation started right after this one sees the whole queue. (Classic
 * queues put a requeued message back in its place anyway.) */
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "dlq/dlq.h"
#include "framework/broker.h"
#include "framework/clock.h"
#include "framework/error.h"

#define CTL_CH 1
#define CONSUME_CH 2
#define POLL_MS 200
/* No delivery for this long while the snapshot is not read through: check
 * whether the queue ran dry (another consumer holds the rest). */
#define IDLE_CHECK_MS 2000
/* ... and give up when it still has messages but none comes for this long. */
#define STALL_MS 60000
#define PROGRESS_MS 250
#define CONSUMER_CREDIT_MAX UINT16_MAX
#define CONSUMERS_MAX 32000
/* Putting back: how long to wait for a message still to come. */
#define HOLD_IDLE_MS 5000
/* How long closing waits for the broker to show the requeued messages. */
#define REQUEUE_WAIT_MS 60000

/* What the browser knows of a delivery tag. */
#define TAG_UNKNOWN 0      /* not received */
#define TAG_REMOVED 0xFFFF /* acked */
/* else: held, by consumer (value - 1) */

struct cw_dlq_browser {
    amqp_connection_state_t conn;
    char queue[256];
    uint64_t total, read, missing;
    uint32_t others;
    const cw_dlq_ctl *ctl;
    int64_t last_delivery;
    int64_t last_check; /* of the queue, while waiting */
    bool ended;
    bool consuming;   /* CONSUME_CH is open */
    uint64_t credit;  /* the prefetch of every consumer started, summed */
    uint64_t removed; /* messages read and removed (acked) */
    uint64_t max_tag; /* the highest delivery tag received */
    uint16_t *tags;   /* per delivery tag: TAG_* or consumer + 1 */
    size_t tags_cap;
    unsigned consumers;
    char (*ctags)[256]; /* the consumers' tags */
};

static void notice(const cw_dlq_browser *b, const char *fmt, ...) CW_PRINTF(2, 3);

static int declare_passive(cw_dlq_browser *b, amqp_queue_declare_ok_t *ok)
{
    amqp_queue_declare_ok_t *r = amqp_queue_declare(b->conn, CTL_CH, amqp_cstring_bytes(b->queue),
                                                    1, 0, 0, 0, amqp_empty_table);
    amqp_rpc_reply_t rr = amqp_get_rpc_reply(b->conn);
    if (rr.reply_type == AMQP_RESPONSE_SERVER_EXCEPTION &&
        rr.reply.id == AMQP_CHANNEL_CLOSE_METHOD) {
        const amqp_channel_close_t *m = rr.reply.decoded;
        if (m->reply_code == AMQP_NOT_FOUND)
            return cw__error(CW_STATUS_NOT_FOUND, "queue '%s' does not exist on the broker",
                             b->queue);
    }
    char what[320];
    snprintf(what, sizeof what, "looking up queue '%s'", b->queue);
    int rc = cw__broker_reply(rr, what);
    if (rc)
        return rc;
    *ok = *r;
    return 0;
}

/* Records what a delivery tag is now. */
static int tag_set(cw_dlq_browser *b, uint64_t tag, uint16_t v)
{
    if (tag >= b->tags_cap) {
        size_t cap = b->tags_cap ? b->tags_cap : 4096;
        while (cap <= tag)
            cap *= 2;
        uint16_t *nt = realloc(b->tags, cap * sizeof *nt);
        if (!nt)
            return cw__error(CW_STATUS_NOMEM, "out of memory reading '%s'", b->queue);
        memset(nt + b->tags_cap, 0, (cap - b->tags_cap) * sizeof *nt);
        b->tags = nt;
        b->tags_cap = cap;
    }
    b->tags[tag] = v;
    if (tag > b->max_tag)
        b->max_tag = tag;
    return 0;
}

/* The index of the consumer a delivery came to, + 1 (1 if unknown). */
static uint16_t consumer_of(const cw_dlq_browser *b, amqp_bytes_t ctag)
{
    for (unsigned i = 0; i < b->consumers; i++) {
        if (strlen(b->ctags[i]) == ctag.len && memcmp(b->ctags[i], ctag.bytes, ctag.len) == 0)
            return (uint16_t)(i + 1);
    }
    return 1;
}

/* Starts one more consumer with `want` more credit (at most
 * CONSUMER_CREDIT_MAX). */
static int add_consumer_for(cw_dlq_browser *b, uint64_t want)
{
    if (b->consumers == CONSUMERS_MAX)
        return cw__error(CW_STATUS_TOO_LARGE, "'%s' holds more messages than can be read at once",
                         b->queue);
    uint16_t prefetch = want > CONSUMER_CREDIT_MAX ? CONSUMER_CREDIT_MAX : (uint16_t)want;
    /* basic.qos applies to the consumers started after it on the channel. */
    amqp_basic_qos(b->conn, CONSUME_CH, 0, prefetch, 0);
    int rc = cw__broker_reply(amqp_get_rpc_reply(b->conn), "setting the prefetch");
    if (rc)
        return rc;
    char(*ctags)[256] = realloc(b->ctags, (b->consumers + 1) * sizeof *ctags);
    if (!ctags)
        return cw__error(CW_STATUS_NOMEM, "out of memory");
    b->ctags = ctags;
    amqp_basic_consume_ok_t *ok = amqp_basic_consume(b->conn, CONSUME_CH,
                                                     amqp_cstring_bytes(b->queue), amqp_empty_bytes,
                                                     0, 0, 0, amqp_empty_table);
    char what[320];
    snprintf(what, sizeof what, "reading queue '%s'", b->queue);
    if ((rc = cw__broker_reply(amqp_get_rpc_reply(b->conn), what)))
        return rc;
    snprintf(ctags[b->consumers], sizeof ctags[0], "%.*s", (int)ok->consumer_tag.len,
             (const char *)ok->consumer_tag.bytes);
    b->credit += prefetch;
    b->consumers++;
    return 0;
}

/* ... with the credit the snapshot still needs. */
static int add_consumer(cw_dlq_browser *b)
{
    return add_consumer_for(b, b->total - b->credit);
}

int cw_dlq_browser_open(cw_dlq_browser **out, const cw_config *cfg, const char *queue,
                        const char *name, const cw_dlq_ctl *ctl)
{
    *out = NULL;
    if (!queue)
        queue = cfg->dlq;
    cw_dlq_browser *b = calloc(1, sizeof *b);
    if (!b)
        return cw__error(CW_STATUS_NOMEM, "out of memory");
    snprintf(b->queue, sizeof b->queue, "%s", queue);
    b->ctl = ctl;
    int rc = cw__dlq_connect(&b->conn, cfg, name);
    if (rc)
        goto out_free;
    amqp_channel_open(b->conn, CTL_CH);
    if ((rc = cw__broker_reply(amqp_get_rpc_reply(b->conn), "opening a channel")))
        goto out_close;
    amqp_queue_declare_ok_t ok;
    if ((rc = declare_passive(b, &ok))) {
        if (rc == CW_STATUS_NOT_FOUND && strcmp(b->queue, cfg->dlq) == 0)
            cw__error(rc,
                      "the dead-letter queue '%s' does not exist on the broker (has a worker "
                      "of pool '%s' run there?)",
                      b->queue, cfg->name);
        goto out_close;
    }
    b->total = ok.message_count;
    b->others = ok.consumer_count;
    if (b->others)
        notice(b,
               "'%s' has %u other consumer%s: the messages %s holds unacknowledged are not "
               "seen",
               b->queue, b->others, b->others == 1 ? "" : "s", b->others == 1 ? "it" : "they");
    if (b->total == 0) {
        b->ended = true;
        *out = b;
        return 0;
    }
    amqp_channel_open(b->conn, CONSUME_CH);
    if ((rc = cw__broker_reply(amqp_get_rpc_reply(b->conn), "opening the browse channel")))
        goto out_close;
    b->consuming = true;
    if ((rc = add_consumer(b)))
        goto out_close;
    b->last_delivery = cw__mono_ms();
    *out = b;
    return 0;

out_close:
    cw__broker_close(b->conn);
out_free:
    free(b->ctags);
    free(b);
    return rc;
}

const char *cw_dlq_browser_queue(const cw_dlq_browser *b)
{
    return b->queue;
}

uint64_t cw_dlq_browser_total(const cw_dlq_browser *b)
{
    return b->total;
}

uint32_t cw_dlq_browser_others(const cw_dlq_browser *b)
{
    return b->others;
}

uint64_t cw_dlq_browser_missing(const cw_dlq_browser *b)
{
    return b->missing;
}

/* A frame that is not a delivery arrived on the connection. */
static int other_frame(cw_dlq_browser *b)
{
    amqp_frame_t f;
    int st = amqp_simple_wait_frame(b->conn, &f);
    if (st != AMQP_STATUS_OK)
        return cw__error(CW_STATUS_CONNECTION, "reading '%s': %s", b->queue,
                         amqp_error_string2(st));
    if (f.frame_type != AMQP_FRAME_METHOD)
        return 0;
    switch (f.payload.method.id) {
    case AMQP_BASIC_CANCEL_METHOD:
        return cw__error(CW_STATUS_BROKER_REFUSED,
                         "the broker cancelled the reading of '%s' (was the queue deleted?)",
                         b->queue);
    case AMQP_CHANNEL_CLOSE_METHOD: {
        const amqp_channel_close_t *m = f.payload.method.decoded;
        int rc = cw__error(CW_STATUS_BROKER_REFUSED,
                           "the broker closed the channel reading '%s': %.*s", b->queue,
                           (int)m->reply_text.len, (const char *)m->reply_text.bytes);
        amqp_channel_close_ok_t ok = {0};
        amqp_send_method(b->conn, f.channel, AMQP_CHANNEL_CLOSE_OK_METHOD, &ok);
        if (f.channel == CONSUME_CH)
            b->consuming = false;
        return rc;
    }
    case AMQP_CONNECTION_CLOSE_METHOD: {
        const amqp_connection_close_t *m = f.payload.method.decoded;
        b->consuming = false;
        return cw__error(CW_STATUS_CONNECTION, "the broker closed the connection: %.*s",
                         (int)m->reply_text.len, (const char *)m->reply_text.bytes);
    }
    default: return 0;
    }
}

int cw_dlq_browser_next(cw_dlq_browser *b, cw_dlq_msg *m)
{
    memset(m, 0, sizeof *m);
    if (b->ended || b->read >= b->total) {
        b->ended = true;
        return 0;
    }
    amqp_maybe_release_buffers(b->conn);
    for (;;) {
        if (b->ctl && b->ctl->stop && *b->ctl->stop)
            return 0;
        /* All the credit asked for is held: ask for more. */
        if (b->credit < b->total && b->read - b->removed >= b->credit) {
            int rc = add_consumer(b);
            if (rc)
                return rc;
        }
        struct timeval tv = {.tv_sec = 0, .tv_usec = POLL_MS * 1000};
        amqp_rpc_reply_t r = amqp_consume_message(b->conn, &m->env, &tv, 0);
        if (r.reply_type == AMQP_RESPONSE_NORMAL) {
            m->has_env = true;
            int rc = tag_set(b, m->env.delivery_tag, consumer_of(b, m->env.consumer_tag));
            if (rc) {
                cw_dlq_msg_clear(m);
                return rc;
            }
            m->position = ++b->read;
            b->last_delivery = cw__mono_ms();
            cw_dlq_msg_decode(m);
            return 1;
        }
        if (r.reply_type == AMQP_RESPONSE_LIBRARY_EXCEPTION &&
            r.library_error == AMQP_STATUS_UNEXPECTED_STATE) {
            int rc = other_frame(b);
            if (rc)
                return rc;
            continue;
        }
        if (r.reply_type != AMQP_RESPONSE_LIBRARY_EXCEPTION ||
            r.library_error != AMQP_STATUS_TIMEOUT) {
            char what[320];
            snprintf(what, sizeof what, "reading '%s'", b->queue);
            return cw__broker_reply(r, what);
        }
        int64_t idle = cw__mono_ms() - b->last_delivery;
        if (idle < IDLE_CHECK_MS || cw__mono_ms() - b->last_check < IDLE_CHECK_MS)
            continue;
        amqp_queue_declare_ok_t ok;
        int rc = declare_passive(b, &ok);
        if (rc)
            return rc;
        if (ok.message_count == 0 && ok.consumer_count > b->consumers) {
            /* What is left of the snapshot is unacked in another consumer. */
            b->missing = b->total - b->read;
            b->ended = true;
            return 0;
        }
        /* Otherwise it is on its way: a busy broker may take a while. */
        if (idle >= STALL_MS)
            return cw__error(CW_STATUS_TIMEOUT,
                             "'%s' sent none of the %llu messages still expected for %d s "
                             "(%u ready, %u consumers)",
                             b->queue, (unsigned long long)(b->total - b->read), STALL_MS / 1000,
                             ok.message_count, ok.consumer_count);
        b->last_check = cw__mono_ms();
    }
}

int cw_dlq_browser_remove(cw_dlq_browser *b, uint64_t delivery_tag)
{
    int st = amqp_basic_ack(b->conn, CONSUME_CH, delivery_tag, 0);
    if (st != AMQP_STATUS_OK)
        return cw__error(CW_STATUS_CONNECTION, "removing a message from '%s': %s", b->queue,
                         amqp_error_string2(st));
    b->removed++;
    return tag_set(b, delivery_tag, TAG_REMOVED);
}

/* Reads and holds deliveries, without looking at them, until `n` more came
 * or none came for HOLD_IDLE_MS; credit is added while it is all held and
 * fewer than `credit_to` were granted. */
static void hold_more(cw_dlq_browser *b, uint64_t n, uint64_t credit_to)
{
    int64_t last = cw__mono_ms();
    for (uint64_t got = 0; got < n;) {
        if (b->credit < credit_to && b->read - b->removed >= b->credit &&
            add_consumer_for(b, credit_to - b->credit) != 0)
            return;
        amqp_envelope_t env;
        struct timeval tv = {.tv_sec = 0, .tv_usec = POLL_MS * 1000};
        amqp_maybe_release_buffers(b->conn);
        amqp_rpc_reply_t r = amqp_consume_message(b->conn, &env, &tv, 0);
        if (r.reply_type == AMQP_RESPONSE_NORMAL) {
            tag_set(b, env.delivery_tag, consumer_of(b, env.consumer_tag));
            b->read++;
            got++;
            last = cw__mono_ms();
            amqp_destroy_envelope(&env);
            continue;
        }
        if (r.reply_type == AMQP_RESPONSE_LIBRARY_EXCEPTION &&
            r.library_error == AMQP_STATUS_UNEXPECTED_STATE) {
            if (other_frame(b) != 0)
                return;
            continue;
        }
        if (r.reply_type != AMQP_RESPONSE_LIBRARY_EXCEPTION ||
            r.library_error != AMQP_STATUS_TIMEOUT || cw__mono_ms() - last >= HOLD_IDLE_MS)
            return;
    }
}

/* Holds the whole queue, cancels the consumers, and requeues everything
 * held, in order. Returns how many messages that is. */
static uint64_t put_back(cw_dlq_browser *b)
{
    /* The rest of the snapshot, then what arrived since (behind it). */
    if (b->read < b->total)
        hold_more(b, b->total - b->read, b->total);
    amqp_queue_declare_ok_t ok;
    if (b->consuming && declare_passive(b, &ok) == 0 && ok.message_count > 0) {
        uint64_t want = b->read - b->removed + ok.message_count;
        hold_more(b, ok.message_count, want > b->credit ? want : b->credit);
    }
    if (!b->consuming)
        return 0;
    for (unsigned i = 0; i < b->consumers; i++) {
        amqp_basic_cancel(b->conn, CONSUME_CH, amqp_cstring_bytes(b->ctags[i]));
        if (amqp_get_rpc_reply(b->conn).reply_type != AMQP_RESPONSE_NORMAL)
            return 0; /* the channel is gone: the broker requeues on its own */
    }
    for (;;) { /* a few may have been sent before the cancel-ok */
        amqp_envelope_t env;
        struct timeval tv = {.tv_sec = 0, .tv_usec = 20 * 1000};
        amqp_maybe_release_buffers(b->conn);
        amqp_rpc_reply_t r = amqp_consume_message(b->conn, &env, &tv, 0);
        if (r.reply_type != AMQP_RESPONSE_NORMAL)
            break;
        tag_set(b, env.delivery_tag, consumer_of(b, env.consumer_tag));
        amqp_destroy_envelope(&env);
    }
    /* One nack per run of one consumer's deliveries: the broker requeues
     * one nack's messages consumer by consumer, in no set order. */
    uint64_t held = 0;
    for (uint64_t tag = 1; tag <= b->max_tag && tag < b->tags_cap; tag++) {
        uint16_t v = b->tags[tag];
        if (v == TAG_UNKNOWN || v == TAG_REMOVED)
            continue;
        held++;
        uint64_t next = tag + 1;
        while (next <= b->max_tag && next < b->tags_cap &&
               (b->tags[next] == TAG_UNKNOWN || b->tags[next] == TAG_REMOVED))
            next++;
        bool run_ends = next > b->max_tag || next >= b->tags_cap || b->tags[next] != v;
        if (run_ends && amqp_basic_nack(b->conn, CONSUME_CH, tag, 1, 1) != AMQP_STATUS_OK)
            break;
    }
    return held;
}

static void notice(const cw_dlq_browser *b, const char *fmt, ...) CW_PRINTF(2, 3);
static void notice(const cw_dlq_browser *b, const char *fmt, ...)
{
    if (!b->ctl || !b->ctl->notice)
        return;
    char text[512];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(text, sizeof text, fmt, ap);
    va_end(ap);
    b->ctl->notice(text, b->ctl->notice_data);
}

/* Waits until the queue shows at least `n` ready messages again: the
 * broker requeues asynchronously, a quorum queue in seconds for a hundred
 * thousand -- and a busy quorum queue answers a queue.declare with 0. */
static void await_requeue(cw_dlq_browser *b, uint64_t n)
{
    int64_t deadline = cw__mono_ms() + REQUEUE_WAIT_MS;
    for (;;) {
        amqp_queue_declare_ok_t ok;
        if (declare_passive(b, &ok) != 0 || ok.message_count >= n)
            return;
        if (cw__mono_ms() >= deadline) {
            notice(b,
                   "the broker still shows only %u of the %llu messages put back in '%s' as "
                   "ready after %d s: they are safe in the queue, but an operation started "
                   "before it catches up sees fewer",
                   ok.message_count, (unsigned long long)n, b->queue, REQUEUE_WAIT_MS / 1000);
            return;
        }
        struct timespec ts = {.tv_sec = 0, .tv_nsec = 50 * 1000000L};
        nanosleep(&ts, NULL);
    }
}

void cw_dlq_browser_free(cw_dlq_browser *b)
{
    if (!b)
        return;
    /* The channel is closed first, and its close-ok awaited: the broker
     * handles a channel's frames in order, so every ack and nack sent is
     * settled by then. A connection.close alone is not enough: RabbitMQ
     * then ends the channel ahead of the frames still in its mailbox, and
     * acks are lost (the messages come back). */
    if (b->consuming) {
        uint64_t held = put_back(b);
        amqp_rpc_reply_t r = amqp_channel_close(b->conn, CONSUME_CH, AMQP_REPLY_SUCCESS);
        if (r.reply_type == AMQP_RESPONSE_NORMAL && held) {
            if (b->ctl && b->ctl->progress) {
                cw_dlq_progress p = {.what = "putting back", .read = held, .total = held};
                b->ctl->progress(&p, b->ctl->progress_data);
            }
            await_requeue(b, held);
        }
    }
    cw__broker_close(b->conn);
    free(b->tags);
    free(b->ctags);
    free(b);
}

int cw_dlq_browse(const cw_config *cfg, const char *queue, const char *name, const cw_dlq_ctl *ctl,
                  int (*fn)(cw_dlq_msg *m, void *ud), void *ud, uint64_t *total, uint64_t *missing)
{
    cw_dlq_browser *b;
    int rc = cw_dlq_browser_open(&b, cfg, queue, name, ctl);
    if (rc)
        return rc;
    if (total)
        *total = b->total;
    int64_t last_progress = cw__mono_ms();
    cw_dlq_msg m;
    while ((rc = cw_dlq_browser_next(b, &m)) == 1) {
        rc = fn(&m, ud);
        cw_dlq_msg_clear(&m);
        if (rc)
            break;
        if (ctl && ctl->progress && cw__mono_ms() - last_progress >= PROGRESS_MS) {
            last_progress = cw__mono_ms();
            cw_dlq_progress p = {.what = "reading", .read = b->read, .total = b->total};
            ctl->progress(&p, ctl->progress_data);
        }
    }
    if (rc == 0 && ctl && ctl->stop && *ctl->stop)
        rc = cw__error(CW_STATUS_INTERRUPTED, "interrupted");
    if (missing)
        *missing = b->missing;
    cw_dlq_browser_free(b);
    return rc;
}
