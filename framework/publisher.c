/* Publishing with publisher confirms. */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <amqp.h>
#include <amqp_framing.h>
#include <json-c/json.h>

#include "compworker/client.h" /* CW_MESSAGE_ID_MAX */

#include "framework/broker.h"
#include "framework/clock.h"
#include "framework/error.h"
#include "framework/json_text.h"
#include "framework/message_id.h"
#include "framework/registry.h"

/* The most of cw-dropped-headers (names and sizes of the headers dropped). */
#define CW_DROPPED_MAX 1024

int cw__publisher_open(cw_publisher *p, amqp_connection_state_t conn, amqp_channel_t ch)
{
    memset(p, 0, sizeof *p);
    p->conn = conn;
    p->ch = ch;
    p->next_seq = 1;
    p->base = 1;
    amqp_channel_open(conn, ch);
    int rc = cw__broker_reply(amqp_get_rpc_reply(conn), "opening the publish channel");
    if (rc)
        return rc;
    amqp_confirm_select(conn, ch);
    return cw__broker_reply(amqp_get_rpc_reply(conn), "enabling publisher confirms");
}

void cw__publisher_free(cw_publisher *p)
{
    free(p->pending);
    p->pending = NULL;
    p->pending_cap = 0;
}

int cw__publisher_send(cw_publisher *p, const char *exchange, amqp_bytes_t routing_key,
                       bool mandatory, const amqp_basic_properties_t *props, amqp_bytes_t body)
{
    size_t slot = (size_t)(p->next_seq - p->base);
    if (slot >= p->pending_cap) {
        size_t cap = p->pending_cap ? p->pending_cap * 2 : 256;
        while (cap <= slot)
            cap *= 2;
        uint8_t *np = realloc(p->pending, cap);
        if (!np)
            return cw__error(CW_STATUS_NOMEM, "out of memory tracking publisher confirms");
        memset(np + p->pending_cap, 0, cap - p->pending_cap);
        p->pending = np;
        p->pending_cap = cap;
    }
    int st = amqp_basic_publish(p->conn, p->ch, amqp_cstring_bytes(exchange), routing_key,
                                mandatory, 0, props, body);
    if (st != AMQP_STATUS_OK)
        return cw__error(CW_STATUS_CONNECTION, "publishing to '%s': %s", exchange,
                         amqp_error_string2(st));
    p->pending[slot] = 1;
    p->next_seq++;
    return 0;
}

int cw__publish_task(cw_publisher *p, const char *exchange, const char *routing_key,
                     const char *message_id, const char *type, const char *saga_id,
                     const void *body, size_t len, const amqp_table_t *headers)
{
    amqp_basic_properties_t props;
    memset(&props, 0, sizeof props);
    props._flags = AMQP_BASIC_CONTENT_TYPE_FLAG | AMQP_BASIC_DELIVERY_MODE_FLAG |
                   AMQP_BASIC_MESSAGE_ID_FLAG | AMQP_BASIC_TYPE_FLAG | AMQP_BASIC_TIMESTAMP_FLAG |
                   AMQP_BASIC_APP_ID_FLAG;
    props.content_type = amqp_cstring_bytes("application/json");
    props.delivery_mode = AMQP_DELIVERY_PERSISTENT;
    props.message_id = amqp_cstring_bytes(message_id);
    props.type = amqp_cstring_bytes(type);
    props.timestamp = (uint64_t)(cw__now_ms() / 1000);
    props.app_id = amqp_cstring_bytes("compworker");
    if (saga_id && saga_id[0]) {
        props._flags |= AMQP_BASIC_CORRELATION_ID_FLAG;
        props.correlation_id = amqp_cstring_bytes(saga_id);
    }
    if (headers && headers->num_entries > 0) {
        props._flags |= AMQP_BASIC_HEADERS_FLAG;
        props.headers = *headers;
    }
    amqp_bytes_t b = {.len = len, .bytes = (void *)body};
    return cw__publisher_send(p, exchange, amqp_cstring_bytes(routing_key), true, &props, b);
}

static bool printable(const char *s, size_t max)
{
    size_t n = strlen(s);
    if (n == 0 || n > max)
        return false;
    for (size_t i = 0; i < n; i++) {
        if ((unsigned char)s[i] < 0x21 || (unsigned char)s[i] > 0x7e)
            return false;
    }
    return true;
}

int cw__task_fields_check(const char *type, const char *message_id, const char *saga_id,
                          const char *body, size_t len, char *id_out, char *why, size_t why_len)
{
    if (!type || !cw__type_valid(type, strlen(type))) {
        snprintf(why, why_len, "type must be 1-255 characters of [A-Za-z0-9._:-]");
        return CW_STATUS_INVALID_ARG;
    }
    if (!body) {
        snprintf(why, why_len, "body is required");
        return CW_STATUS_INVALID_ARG;
    }
    /* What a worker would dead-letter as invalid is refused here. */
    char reason[256];
    if (cw__json_object_check(body, len, reason, sizeof reason)) {
        snprintf(why, why_len, "body is not a JSON object: %s", reason);
        return CW_STATUS_INVALID_ARG;
    }
    if (message_id) {
        if (!printable(message_id, CW_MESSAGE_ID_MAX)) {
            snprintf(why, why_len, "message_id must be 1-%d printable ASCII characters",
                     CW_MESSAGE_ID_MAX);
            return CW_STATUS_INVALID_ARG;
        }
        snprintf(id_out, CW_MESSAGE_ID_MAX + 1, "%s", message_id);
    } else {
        cw__message_id_new(id_out);
    }
    if (saga_id && saga_id[0] && !printable(saga_id, 255)) {
        snprintf(why, why_len, "saga_id must be printable ASCII up to 255 bytes");
        return CW_STATUS_INVALID_ARG;
    }
    return 0;
}

int cw__headers_table(const char *json, amqp_table_t *out, json_object **hold)
{
    memset(out, 0, sizeof *out);
    *hold = NULL;
    if (!json)
        return 0;
    json_object *o = json_tokener_parse(json);
    if (!json_object_is_type(o, json_type_object)) {
        json_object_put(o);
        return cw__error(CW_STATUS_INVALID_ARG, "a follow-up's headers are not a JSON object");
    }
    int n = json_object_object_length(o);
    out->entries = calloc((size_t)(n ? n : 1), sizeof *out->entries);
    if (!out->entries) {
        json_object_put(o);
        return cw__error(CW_STATUS_NOMEM, "out of memory reading a follow-up's headers");
    }
    int i = 0;
    json_object_object_foreach(o, key, val)
    {
        if (!json_object_is_type(val, json_type_string))
            continue;
        out->entries[i].key = amqp_cstring_bytes(key);
        out->entries[i].value.kind = AMQP_FIELD_KIND_UTF8;
        out->entries[i].value.value.bytes.bytes = (void *)json_object_get_string(val);
        out->entries[i].value.value.bytes.len = (size_t)json_object_get_string_len(val);
        i++;
    }
    out->num_entries = i;
    *hold = o;
    return 0;
}

/* The room for a message's properties in one content header frame: the
 * frame less its own 8 bytes and the header's 12 (class, weight, body size),
 * as rabbitmq-c encodes it. */
static size_t props_room(const cw_publisher *p)
{
    int frame_max = amqp_get_frame_max(p->conn);
    return frame_max > 20 ? (size_t)frame_max - 20 : 0;
}

/* Whether `props` encode into `buf` (its len is the room). */
static bool props_fit(const amqp_basic_properties_t *props, amqp_bytes_t buf)
{
    amqp_basic_properties_t copy = *props;
    return amqp_encode_properties(AMQP_BASIC_CLASS, &copy, buf) >= 0;
}

/* The encoded size of one header, or SIZE_MAX when it does not fit `buf`. */
static size_t entry_size(const amqp_table_entry_t *e, amqp_bytes_t buf)
{
    amqp_table_t one = {.num_entries = 1, .entries = (amqp_table_entry_t *)e};
    size_t offset = 0;
    return amqp_encode_table(buf, &one, &offset) == AMQP_STATUS_OK ? offset : SIZE_MAX;
}

static bool is_cw_header(amqp_bytes_t key)
{
    return key.len >= 3 && memcmp(key.bytes, "cw-", 3) == 0;
}

int cw__publisher_send_copy(cw_publisher *p, const char *exchange, amqp_bytes_t routing_key,
                            const amqp_basic_properties_t *props, amqp_bytes_t body)
{
    size_t room = props_room(p);
    amqp_bytes_t buf = {.len = room, .bytes = malloc(room ? room : 1)};
    if (!buf.bytes)
        return cw__error(CW_STATUS_NOMEM, "out of memory encoding a copy's properties");
    if (props_fit(props, buf)) {
        free(buf.bytes);
        return cw__publisher_send(p, exchange, routing_key, true, props, body);
    }

    /* Too big: drop the largest headers that are not compworker's own until
     * it fits, and say which in cw-dropped-headers. */
    int n = (props->_flags & AMQP_BASIC_HEADERS_FLAG) ? props->headers.num_entries : 0;
    amqp_table_entry_t *e = malloc(sizeof *e * (size_t)(n + 1));
    size_t *size = malloc(sizeof *size * (size_t)(n ? n : 1));
    char *dropped = malloc(CW_DROPPED_MAX);
    int rc = 0;
    if (!e || !size || !dropped) {
        rc = cw__error(CW_STATUS_NOMEM, "out of memory fitting a copy's properties");
        goto out;
    }
    memcpy(e, props->headers.entries, sizeof *e * (size_t)n);
    for (int i = 0; i < n; i++)
        size[i] = is_cw_header(e[i].key) ? 0 : entry_size(&e[i], buf);
    dropped[0] = '\0';
    size_t used = 0;
    amqp_basic_properties_t fitted = *props;
    fitted._flags |= AMQP_BASIC_HEADERS_FLAG;
    fitted.headers.entries = e;
    for (;;) {
        int largest = -1;
        for (int i = 0; i < n; i++) {
            if (size[i] && (largest < 0 || size[i] > size[largest]))
                largest = i;
        }
        if (largest < 0) {
            rc = cw__error(CW_STATUS_INVALID_ARG,
                           "the properties of a copy to '%s' do not fit in one frame (%zu "
                           "bytes), even without the task's own headers",
                           exchange, room);
            goto out;
        }
        used += (size_t)snprintf(dropped + used, used < CW_DROPPED_MAX ? CW_DROPPED_MAX - used : 0,
                                 "%s%.*s (%zu bytes)", used ? ", " : "", (int)e[largest].key.len,
                                 (const char *)e[largest].key.bytes,
                                 size[largest] == SIZE_MAX ? room : size[largest]);
        if (used >= CW_DROPPED_MAX)
            used = CW_DROPPED_MAX - 1;
        e[largest] = e[--n];
        size[largest] = size[n];
        e[n].key = amqp_cstring_bytes("cw-dropped-headers");
        e[n].value.kind = AMQP_FIELD_KIND_UTF8;
        e[n].value.value.bytes = amqp_cstring_bytes(dropped);
        fitted.headers.num_entries = n + 1;
        if (props_fit(&fitted, buf))
            break;
    }
    rc = cw__publisher_send(p, exchange, routing_key, true, &fitted, body);
out:
    free(buf.bytes);
    free(e);
    free(size);
    free(dropped);
    return rc;
}

static void confirm(cw_publisher *p, uint64_t tag, bool multiple)
{
    if (tag < p->base)
        return;
    size_t slot = (size_t)(tag - p->base);
    if (slot >= p->pending_cap)
        return;
    if (multiple)
        memset(p->pending, 0, slot + 1);
    else
        p->pending[slot] = 0;
}

static bool all_confirmed(const cw_publisher *p)
{
    size_t n = (size_t)(p->next_seq - p->base);
    for (size_t i = 0; i < n; i++) {
        if (p->pending[i])
            return false;
    }
    return true;
}

int cw__publisher_wait(cw_publisher *p, int timeout_ms)
{
    int64_t deadline = cw__mono_ms() + timeout_ms;
    while (!all_confirmed(p)) {
        int64_t left = deadline - cw__mono_ms();
        if (left <= 0)
            return cw__error(CW_STATUS_TIMEOUT, "no publisher confirm within %d ms", timeout_ms);
        struct timeval tv = {.tv_sec = left / 1000, .tv_usec = (left % 1000) * 1000};
        amqp_frame_t f;
        int st = amqp_simple_wait_frame_noblock(p->conn, &f, &tv);
        if (st == AMQP_STATUS_TIMEOUT)
            continue;
        if (st != AMQP_STATUS_OK)
            return cw__error(CW_STATUS_CONNECTION, "waiting for publisher confirms: %s",
                             amqp_error_string2(st));
        if (f.frame_type != AMQP_FRAME_METHOD || f.channel != p->ch)
            continue;
        switch (f.payload.method.id) {
        case AMQP_BASIC_ACK_METHOD: {
            const amqp_basic_ack_t *m = f.payload.method.decoded;
            confirm(p, m->delivery_tag, m->multiple);
            break;
        }
        case AMQP_BASIC_NACK_METHOD: {
            const amqp_basic_nack_t *m = f.payload.method.decoded;
            p->nacked++;
            confirm(p, m->delivery_tag, m->multiple);
            break;
        }
        case AMQP_BASIC_RETURN_METHOD: {
            const amqp_basic_return_t *m = f.payload.method.decoded;
            p->returned++;
            snprintf(p->last_return, sizeof p->last_return, "%d %.*s (routing key '%.*s')",
                     m->reply_code, (int)m->reply_text.len, (const char *)m->reply_text.bytes,
                     (int)m->routing_key.len, (const char *)m->routing_key.bytes);
            /* The returned message's content follows; read it away. */
            amqp_message_t msg;
            amqp_rpc_reply_t r = amqp_read_message(p->conn, p->ch, &msg, 0);
            if (r.reply_type != AMQP_RESPONSE_NORMAL)
                return cw__broker_reply(r, "reading a returned message");
            if (p->on_return)
                p->on_return(p->return_ctx, &msg.properties, p->last_return);
            amqp_destroy_message(&msg);
            break;
        }
        case AMQP_CHANNEL_CLOSE_METHOD: {
            const amqp_channel_close_t *m = f.payload.method.decoded;
            int rc = cw__error(CW_STATUS_BROKER_REFUSED,
                               "the broker closed the publish channel: %.*s",
                               (int)m->reply_text.len, (const char *)m->reply_text.bytes);
            amqp_channel_close_ok_t ok = {0};
            amqp_send_method(p->conn, p->ch, AMQP_CHANNEL_CLOSE_OK_METHOD, &ok);
            return rc;
        }
        case AMQP_CONNECTION_CLOSE_METHOD: {
            const amqp_connection_close_t *m = f.payload.method.decoded;
            return cw__error(CW_STATUS_CONNECTION, "the broker closed the connection: %.*s",
                             (int)m->reply_text.len, (const char *)m->reply_text.bytes);
        }
        default: break;
        }
    }
    /* Everything sent is settled: start a fresh window, and let rabbitmq-c
     * recycle the frames the confirms were decoded into (it keeps them
     * until asked). */
    amqp_maybe_release_buffers(p->conn);
    p->base = p->next_seq;
    if (p->pending_cap)
        memset(p->pending, 0, p->pending_cap);
    int rc = 0;
    /* A nack wins: a message the broker did not take must not pass for
     * one that was merely returned. */
    if (p->nacked)
        rc = cw__error(CW_STATUS_NACKED, "%u publish(es) nacked by the broker", p->nacked);
    else if (p->returned)
        rc = cw__error(CW_STATUS_UNROUTABLE, "%u publish(es) returned unroutable: %s", p->returned,
                       p->last_return);
    p->returned = 0;
    p->nacked = 0;
    return rc;
}
