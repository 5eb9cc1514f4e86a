/* Dead-lettering: the DLQ copy keeps the task and gains why it failed. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "dlq/deadletter.h"
#include "framework/error.h"
#include "retry/delay.h"

void cw__iso8601(int64_t ms, char out[CW_ISO8601_LEN])
{
    /* Floored: a time before 1970 is a second earlier plus a positive
     * fraction (-1 ms is 23:59:59.999 of the day before). */
    int64_t milli = ms % 1000;
    time_t s = (time_t)(ms / 1000);
    if (milli < 0) {
        milli += 1000;
        s--;
    }
    struct tm tm;
    if (!gmtime_r(&s, &tm)) { /* a year past what an int holds */
        snprintf(out, CW_ISO8601_LEN, "?");
        return;
    }
    /* Four-digit years, as ISO 8601 wants (strftime's %Y writes "226"). */
    char buf[96];
    int n = snprintf(buf, sizeof buf, "%04lld-%02d-%02dT%02d:%02d:%02d.%03uZ",
                     (long long)tm.tm_year + 1900, tm.tm_mon + 1, tm.tm_mday, tm.tm_hour, tm.tm_min,
                     tm.tm_sec, (unsigned)milli);
    size_t len = n < 0 ? 0 : (size_t)n < CW_ISO8601_LEN ? (size_t)n : CW_ISO8601_LEN - 1;
    memcpy(out, buf, len);
    out[len] = '\0';
}

static const char *const cw_failure_headers[] = {
    "cw-error", "cw-error-class", "cw-failed-at",    "cw-handler", "cw-worker",
    "cw-queue", "cw-attempt",     "cw-crash-signal", "cw-plugin",
};

bool cw__is_failure_header(amqp_bytes_t key)
{
    for (size_t i = 0; i < sizeof cw_failure_headers / sizeof *cw_failure_headers; i++) {
        size_t n = strlen(cw_failure_headers[i]);
        if (key.len == n && memcmp(key.bytes, cw_failure_headers[i], n) == 0)
            return true;
    }
    return false;
}

static bool has_header(const amqp_table_t *t, const char *name)
{
    size_t n = strlen(name);
    for (int i = 0; i < t->num_entries; i++) {
        if (t->entries[i].key.len == n && memcmp(t->entries[i].key.bytes, name, n) == 0)
            return true;
    }
    return false;
}

static void put_str(amqp_table_entry_t *e, const char *key, amqp_bytes_t value)
{
    e->key = amqp_cstring_bytes(key);
    e->value.kind = AMQP_FIELD_KIND_UTF8;
    e->value.value.bytes = value;
}

int cw__dlq_publish(cw_publisher *p, const char *dlq, const amqp_envelope_t *env,
                    const cw_deadletter_info *info, int64_t now_ms)
{
    return cw__publish_copy(p, CW_DLX_NAME, dlq, env, info, now_ms);
}

int cw__publish_copy(cw_publisher *p, const char *exchange, const char *routing_key,
                     const amqp_envelope_t *env, const cw_deadletter_info *info, int64_t now_ms)
{
    amqp_basic_properties_t props = env->message.properties;
    props._flags |= AMQP_BASIC_DELIVERY_MODE_FLAG;
    props.delivery_mode = AMQP_DELIVERY_PERSISTENT;
    /* A producer's expiration bounded the wait in the pool queue (which
     * dead-letters what expires). Carried on, it would make the broker drop
     * a DLQ copy, which nothing dead-letters, and cut a delay short. */
    props._flags &= ~AMQP_BASIC_EXPIRATION_FLAG;
    const amqp_table_t *old = (props._flags & AMQP_BASIC_HEADERS_FLAG) ? &props.headers : NULL;
    int n_old = old ? old->num_entries : 0;

    amqp_table_entry_t *e = malloc(sizeof *e * (size_t)(n_old + 12));
    if (!e)
        return cw__error(CW_STATUS_NOMEM, "out of memory dead-lettering");
    int n = 0;
    /* The broker's own dead-letter headers (x-death...) never travel on:
     * a copy that carried them would look like a dead-letter cycle to the
     * broker's next dead-lettering and be held there. */
    for (int i = 0; i < n_old; i++) {
        amqp_bytes_t k = old->entries[i].key;
        if (cw__delay_header_is_broker(k.bytes, k.len))
            continue;
        if (!info || !cw__is_failure_header(k))
            e[n++] = old->entries[i];
    }
    if (!info) {
        /* A twin (a busy duplicate deferred through the delay topology)
         * comes back with the delay topology's exchange and routing key:
         * it takes its first place along, or its retry or dead-letter
         * copy would name the delay topology as where it came from. */
        if (!old || !has_header(old, "cw-original-exchange"))
            put_str(&e[n++], "cw-original-exchange", env->exchange);
        if (!old || !has_header(old, "cw-original-routing-key"))
            put_str(&e[n++], "cw-original-routing-key", env->routing_key);
        props.headers.num_entries = n;
        props._flags |= AMQP_BASIC_HEADERS_FLAG;
        props.headers.entries = e;
        int rc0 = cw__publisher_send_copy(p, exchange, amqp_cstring_bytes(routing_key), &props,
                                          env->message.body);
        free(e);
        return rc0;
    }
    char failed_at[CW_ISO8601_LEN];
    cw__iso8601(now_ms, failed_at);
    put_str(&e[n++], "cw-error", amqp_cstring_bytes(info->reason ? info->reason : ""));
    put_str(&e[n++], "cw-error-class", amqp_cstring_bytes(info->error_class));
    put_str(&e[n++], "cw-failed-at", amqp_cstring_bytes(failed_at));
    put_str(&e[n++], "cw-handler", amqp_cstring_bytes(info->handler ? info->handler : ""));
    put_str(&e[n++], "cw-worker", amqp_cstring_bytes(info->worker ? info->worker : ""));
    put_str(&e[n++], "cw-queue", amqp_cstring_bytes(info->queue ? info->queue : ""));
    if (!old || !has_header(old, "cw-original-exchange"))
        put_str(&e[n++], "cw-original-exchange", env->exchange);
    if (!old || !has_header(old, "cw-original-routing-key"))
        put_str(&e[n++], "cw-original-routing-key", env->routing_key);
    if (info->crash_signal) {
        put_str(&e[n++], "cw-crash-signal", amqp_cstring_bytes(info->crash_signal));
        put_str(&e[n++], "cw-plugin", amqp_cstring_bytes(info->handler ? info->handler : ""));
    }
    e[n].key = amqp_cstring_bytes("cw-attempt");
    e[n].value.kind = AMQP_FIELD_KIND_I32;
    e[n].value.value.i32 = (int32_t)info->attempts;
    n++;

    props.headers.num_entries = n;
    props.headers.entries = e;
    props._flags |= AMQP_BASIC_HEADERS_FLAG;
    int rc = cw__publisher_send_copy(p, exchange, amqp_cstring_bytes(routing_key), &props,
                                     env->message.body);
    free(e);
    return rc;
}
