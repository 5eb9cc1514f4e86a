/* Reading deliveries with memory bounded by one delivery (see broker.h).
 *
 * rabbitmq-c decodes every incoming frame into a per-channel pool of
 * frame_max-sized pages that only amqp_maybe_release_buffers() recycles,
 * and recycling keeps the pages: amqp_consume_message() reads a whole
 * message before it returns, so a 64 MiB body leaves 512 pages of 128 KiB
 * in the pool for the life of the connection, on top of the body itself.
 * This reader does what amqp_consume_message() and amqp_read_message() do,
 * but copies what it keeps out of the pool (the delivery's names into
 * malloc'd bytes, the properties into the message's own pool, each body
 * fragment into the body) and recycles the pool after every frame, so that
 * the pool never holds more than a frame or two. */
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include "framework/broker.h"

static amqp_rpc_reply_t library_error(int status)
{
    amqp_rpc_reply_t r;
    memset(&r, 0, sizeof r);
    r.reply_type = AMQP_RESPONSE_LIBRARY_EXCEPTION;
    r.library_error = status;
    return r;
}

/* A frame where content was expected: the broker closing the channel or
 * the connection says why; anything else breaks the protocol. */
static amqp_rpc_reply_t unexpected(const amqp_frame_t *f)
{
    amqp_rpc_reply_t r;
    memset(&r, 0, sizeof r);
    if (f->frame_type == AMQP_FRAME_METHOD &&
        (f->payload.method.id == AMQP_CHANNEL_CLOSE_METHOD ||
         f->payload.method.id == AMQP_CONNECTION_CLOSE_METHOD)) {
        r.reply_type = AMQP_RESPONSE_SERVER_EXCEPTION;
        r.reply = f->payload.method;
        return r;
    }
    return library_error(AMQP_STATUS_BAD_AMQP_DATA);
}

static int copy_bytes(amqp_pool_t *pool, amqp_bytes_t *dst, amqp_bytes_t src)
{
    if (src.len == 0) {
        *dst = amqp_empty_bytes;
        return AMQP_STATUS_OK;
    }
    amqp_pool_alloc_bytes(pool, src.len, dst);
    if (!dst->bytes)
        return AMQP_STATUS_NO_MEMORY;
    memcpy(dst->bytes, src.bytes, src.len);
    return AMQP_STATUS_OK;
}

/* Copies basic properties into `pool` (rabbitmq-c keeps its own
 * amqp_basic_properties_clone() private). */
static int copy_properties(amqp_pool_t *pool, amqp_basic_properties_t *dst,
                           const amqp_basic_properties_t *src)
{
    static const struct {
        amqp_flags_t flag;
        size_t offset;
    } strings[] = {
        {AMQP_BASIC_CONTENT_TYPE_FLAG, offsetof(amqp_basic_properties_t, content_type)},
        {AMQP_BASIC_CONTENT_ENCODING_FLAG, offsetof(amqp_basic_properties_t, content_encoding)},
        {AMQP_BASIC_CORRELATION_ID_FLAG, offsetof(amqp_basic_properties_t, correlation_id)},
        {AMQP_BASIC_REPLY_TO_FLAG, offsetof(amqp_basic_properties_t, reply_to)},
        {AMQP_BASIC_EXPIRATION_FLAG, offsetof(amqp_basic_properties_t, expiration)},
        {AMQP_BASIC_MESSAGE_ID_FLAG, offsetof(amqp_basic_properties_t, message_id)},
        {AMQP_BASIC_TYPE_FLAG, offsetof(amqp_basic_properties_t, type)},
        {AMQP_BASIC_USER_ID_FLAG, offsetof(amqp_basic_properties_t, user_id)},
        {AMQP_BASIC_APP_ID_FLAG, offsetof(amqp_basic_properties_t, app_id)},
        {AMQP_BASIC_CLUSTER_ID_FLAG, offsetof(amqp_basic_properties_t, cluster_id)},
    };
    *dst = *src; /* the flags and the scalars; what points into the frame is replaced */
    for (size_t i = 0; i < sizeof strings / sizeof *strings; i++) {
        amqp_bytes_t *d = (amqp_bytes_t *)((char *)dst + strings[i].offset);
        const amqp_bytes_t *s = (const amqp_bytes_t *)((const char *)src + strings[i].offset);
        if (!(src->_flags & strings[i].flag)) {
            *d = amqp_empty_bytes;
            continue;
        }
        int st = copy_bytes(pool, d, *s);
        if (st != AMQP_STATUS_OK)
            return st;
    }
    dst->headers = amqp_empty_table;
    if (src->_flags & AMQP_BASIC_HEADERS_FLAG)
        return amqp_table_clone(&src->headers, &dst->headers, pool);
    return AMQP_STATUS_OK;
}

/* Gives back what a failed read left in msg: its pool recycled when it is
 * the caller's (pooled), else emptied, and a malloc'd body freed. */
static void drop_message(amqp_message_t *msg, bool pooled)
{
    if (pooled) {
        recycle_amqp_pool(&msg->pool);
        return;
    }
    amqp_bytes_free(msg->body);
    empty_amqp_pool(&msg->pool);
}

/* The content (header and body frames) of the delivery just read. */
static amqp_rpc_reply_t read_content(amqp_connection_state_t conn, amqp_channel_t ch,
                                     amqp_message_t *msg, bool pooled)
{
    amqp_frame_t f;
    int st;

    do {
        if ((st = amqp_simple_wait_frame(conn, &f)) != AMQP_STATUS_OK)
            return library_error(st);
    } while (f.frame_type == AMQP_FRAME_HEARTBEAT);
    if (f.frame_type != AMQP_FRAME_HEADER || f.channel != ch)
        return unexpected(&f);
    if (f.payload.properties.class_id != AMQP_BASIC_CLASS)
        return library_error(AMQP_STATUS_BAD_AMQP_DATA);
    uint64_t size = f.payload.properties.body_size;
    if (size > SIZE_MAX)
        return library_error(AMQP_STATUS_NO_MEMORY);

    if (!pooled)
        init_amqp_pool(&msg->pool, 4096);
    msg->body = amqp_empty_bytes;
    st = copy_properties(&msg->pool, &msg->properties, f.payload.properties.decoded);
    if (st != AMQP_STATUS_OK)
        goto out;
    amqp_maybe_release_buffers(conn);

    if (size) {
        if (pooled)
            amqp_pool_alloc_bytes(&msg->pool, (size_t)size, &msg->body);
        else
            msg->body = amqp_bytes_malloc((size_t)size);
        if (!msg->body.bytes) {
            st = AMQP_STATUS_NO_MEMORY;
            goto out;
        }
    }
    size_t got = 0;
    while (got < msg->body.len) {
        if ((st = amqp_simple_wait_frame(conn, &f)) != AMQP_STATUS_OK)
            goto out;
        if (f.frame_type == AMQP_FRAME_HEARTBEAT)
            continue;
        if (f.frame_type != AMQP_FRAME_BODY || f.channel != ch) {
            amqp_rpc_reply_t r = unexpected(&f);
            drop_message(msg, pooled);
            return r;
        }
        amqp_bytes_t frag = f.payload.body_fragment;
        if (frag.len > msg->body.len - got) {
            st = AMQP_STATUS_BAD_AMQP_DATA;
            goto out;
        }
        memcpy((char *)msg->body.bytes + got, frag.bytes, frag.len);
        got += frag.len;
        /* The fragment is copied: its page can take the next frame. */
        amqp_maybe_release_buffers(conn);
    }
    amqp_rpc_reply_t ok;
    memset(&ok, 0, sizeof ok);
    ok.reply_type = AMQP_RESPONSE_NORMAL;
    return ok;

out:
    drop_message(msg, pooled);
    return library_error(st);
}

/* A copy of `src` in the pool, or malloc'd. */
static amqp_bytes_t dup_bytes(amqp_pool_t *pool, amqp_bytes_t src)
{
    amqp_bytes_t b = amqp_empty_bytes;
    if (!pool)
        return amqp_bytes_malloc_dup(src);
    if (src.len && copy_bytes(pool, &b, src) != AMQP_STATUS_OK)
        b.bytes = NULL;
    return b;
}

static amqp_rpc_reply_t consume(amqp_connection_state_t conn, amqp_envelope_t *env,
                                const struct timeval *timeout, amqp_frame_t *other, bool pooled)
{
    amqp_frame_t f;
    amqp_pool_t pool = env->message.pool;

    memset(env, 0, sizeof *env);
    if (pooled)
        env->message.pool = pool;
    /* Nothing decoded earlier is referenced any more: every envelope owns
     * copies of what it holds. */
    amqp_maybe_release_buffers(conn);
    int st = amqp_simple_wait_frame_noblock(conn, &f, timeout);
    if (st != AMQP_STATUS_OK)
        return library_error(st);
    if (f.frame_type != AMQP_FRAME_METHOD || f.payload.method.id != AMQP_BASIC_DELIVER_METHOD) {
        *other = f;
        return library_error(AMQP_STATUS_UNEXPECTED_STATE);
    }
    const amqp_basic_deliver_t *d = f.payload.method.decoded;
    env->channel = f.channel;
    env->delivery_tag = d->delivery_tag;
    env->redelivered = d->redelivered;
    amqp_pool_t *into = pooled ? &env->message.pool : NULL;
    env->consumer_tag = dup_bytes(into, d->consumer_tag);
    env->exchange = dup_bytes(into, d->exchange);
    env->routing_key = dup_bytes(into, d->routing_key);
    amqp_rpc_reply_t r;
    if ((d->consumer_tag.len && !env->consumer_tag.bytes) ||
        (d->exchange.len && !env->exchange.bytes) ||
        (d->routing_key.len && !env->routing_key.bytes))
        r = library_error(AMQP_STATUS_NO_MEMORY);
    else
        r = read_content(conn, env->channel, &env->message, pooled);
    if (r.reply_type != AMQP_RESPONSE_NORMAL) {
        if (pooled) {
            recycle_amqp_pool(&env->message.pool);
            pool = env->message.pool;
        } else {
            amqp_bytes_free(env->consumer_tag);
            amqp_bytes_free(env->exchange);
            amqp_bytes_free(env->routing_key);
        }
        memset(env, 0, sizeof *env);
        if (pooled)
            env->message.pool = pool;
    }
    return r;
}

amqp_rpc_reply_t cw__broker_consume(amqp_connection_state_t conn, amqp_envelope_t *env,
                                    const struct timeval *timeout, amqp_frame_t *other)
{
    return consume(conn, env, timeout, other, false);
}

amqp_rpc_reply_t cw__broker_consume_pooled(amqp_connection_state_t conn, amqp_envelope_t *env,
                                           const struct timeval *timeout, amqp_frame_t *other)
{
    return consume(conn, env, timeout, other, true);
}

void cw__envelope_recycle(amqp_envelope_t *env)
{
    amqp_pool_t pool = env->message.pool;
    /* A pool that grew past a few pages (a delivery with many headers) is
     * emptied: what slots keep between deliveries stays small. */
    if (pool.pages.num_blocks > CW_ENVELOPE_POOL_PAGES)
        empty_amqp_pool(&pool);
    else
        recycle_amqp_pool(&pool);
    memset(env, 0, sizeof *env);
    env->message.pool = pool;
}
