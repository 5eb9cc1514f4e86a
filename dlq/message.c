/* A dead-lettered message: what its properties and failure headers say. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "dlq/dlq.h"
#include "framework/broker.h"
#include "framework/error.h"

const amqp_field_value_t *cw_dlq_header(const amqp_basic_properties_t *p, const char *name)
{
    if (!(p->_flags & AMQP_BASIC_HEADERS_FLAG))
        return NULL;
    size_t len = strlen(name);
    for (int i = 0; i < p->headers.num_entries; i++) {
        const amqp_table_entry_t *e = &p->headers.entries[i];
        if (e->key.len == len && memcmp(e->key.bytes, name, len) == 0)
            return &e->value;
    }
    return NULL;
}

static const amqp_field_value_t *table_get(const amqp_table_t *t, const char *name)
{
    size_t len = strlen(name);
    for (int i = 0; i < t->num_entries; i++) {
        if (t->entries[i].key.len == len && memcmp(t->entries[i].key.bytes, name, len) == 0)
            return &t->entries[i].value;
    }
    return NULL;
}

bool cw__dlq_field_int(const amqp_field_value_t *v, int64_t *out)
{
    if (!v)
        return false;
    switch (v->kind) {
    case AMQP_FIELD_KIND_I8: *out = v->value.i8; return true;
    case AMQP_FIELD_KIND_U8: *out = v->value.u8; return true;
    case AMQP_FIELD_KIND_I16: *out = v->value.i16; return true;
    case AMQP_FIELD_KIND_U16: *out = v->value.u16; return true;
    case AMQP_FIELD_KIND_I32: *out = v->value.i32; return true;
    case AMQP_FIELD_KIND_U32: *out = v->value.u32; return true;
    case AMQP_FIELD_KIND_I64: *out = v->value.i64; return true;
    case AMQP_FIELD_KIND_U64:
    case AMQP_FIELD_KIND_TIMESTAMP:
        *out = v->value.u64 > (uint64_t)INT64_MAX ? INT64_MAX : (int64_t)v->value.u64;
        return true;
    default: return false;
    }
}

static void copy_bytes(char *dst, size_t cap, amqp_bytes_t b)
{
    size_t n = b.len;
    const char *nul = n ? memchr(b.bytes, '\0', n) : NULL;
    if (nul)
        n = (size_t)(nul - (const char *)b.bytes);
    if (n >= cap) {
        n = cap - 1;
        /* Cut at a UTF-8 character boundary. */
        while (n > 0 && (((const unsigned char *)b.bytes)[n] & 0xC0) == 0x80)
            n--;
    }
    if (n)
        memcpy(dst, b.bytes, n);
    dst[n] = '\0';
}

bool cw__dlq_field_str(const amqp_field_value_t *v, char *dst, size_t cap)
{
    dst[0] = '\0';
    if (!v || (v->kind != AMQP_FIELD_KIND_UTF8 && v->kind != AMQP_FIELD_KIND_BYTES))
        return false;
    copy_bytes(dst, cap, v->value.bytes);
    return true;
}

static void prop(char *dst, size_t cap, const amqp_basic_properties_t *p, amqp_flags_t flag,
                 amqp_bytes_t b)
{
    if (p->_flags & flag)
        copy_bytes(dst, cap, b);
    else
        dst[0] = '\0';
}

bool cw_dlq_parse_iso8601(const char *s, int64_t *out_ms)
{
    int y, mo, d, h, mi, sec, n = 0;
    char sep;
    if (sscanf(s, "%4d-%2d-%2d%c%2d:%2d:%2d%n", &y, &mo, &d, &sep, &h, &mi, &sec, &n) != 7 || !n ||
        (sep != 'T' && sep != 't' && sep != ' '))
        return false;
    const char *p = s + n;
    int64_t ms = 0;
    if (*p == '.') {
        int digits = 0;
        for (p++; *p >= '0' && *p <= '9'; p++, digits++) {
            if (digits < 3)
                ms = ms * 10 + (*p - '0');
        }
        if (digits == 0)
            return false;
        for (; digits < 3; digits++)
            ms *= 10;
    }
    int64_t offset_s = 0;
    if (*p == 'Z' || *p == 'z') {
        p++;
    } else if (*p == '+' || *p == '-') {
        int oh, om = 0, k = 0;
        if (sscanf(p + 1, "%2d%n", &oh, &k) != 1 || k != 2)
            return false;
        const char *q = p + 3;
        if (*q == ':')
            q++;
        if (*q) {
            if (sscanf(q, "%2d%n", &om, &k) != 1 || k != 2)
                return false;
            q += 2;
        }
        offset_s = (int64_t)(oh * 3600 + om * 60) * (*p == '-' ? -1 : 1);
        p = q;
    } else {
        return false; /* no zone: the caller may read it as local time */
    }
    if (*p || mo < 1 || mo > 12 || d < 1 || d > 31 || h > 23 || mi > 59 || sec > 60)
        return false;
    struct tm tm = {.tm_year = y - 1900,
                    .tm_mon = mo - 1,
                    .tm_mday = d,
                    .tm_hour = h,
                    .tm_min = mi,
                    .tm_sec = sec};
    time_t t = timegm(&tm);
    *out_ms = ((int64_t)t - offset_s) * 1000 + ms;
    return true;
}

/* What the broker's own dead-lettering headers say (a message the broker
 * dead-lettered: rejected, expired, over the delivery limit). */
static void decode_x_death(cw_dlq_msg *m, const amqp_basic_properties_t *p)
{
    const amqp_field_value_t *xd = cw_dlq_header(p, "x-death");
    char reason[64] = "", queue[256] = "", ex[256] = "", rk[256] = "";
    cw__dlq_field_str(cw_dlq_header(p, "x-first-death-reason"), reason, sizeof reason);
    cw__dlq_field_str(cw_dlq_header(p, "x-first-death-queue"), queue, sizeof queue);
    bool got_ex = cw__dlq_field_str(cw_dlq_header(p, "x-first-death-exchange"), ex, sizeof ex);
    bool got_rk = false;
    if (xd && xd->kind == AMQP_FIELD_KIND_ARRAY && xd->value.array.num_entries > 0) {
        /* Newest first: the last entry is the first death. */
        const amqp_array_t *a = &xd->value.array;
        const amqp_field_value_t *first = &a->entries[a->num_entries - 1];
        const amqp_field_value_t *last = &a->entries[0];
        if (first->kind == AMQP_FIELD_KIND_TABLE) {
            const amqp_table_t *t = &first->value.table;
            const amqp_field_value_t *rks = table_get(t, "routing-keys");
            if (rks && rks->kind == AMQP_FIELD_KIND_ARRAY && rks->value.array.num_entries > 0)
                got_rk = cw__dlq_field_str(&rks->value.array.entries[0], rk, sizeof rk);
            if (!got_ex)
                got_ex = cw__dlq_field_str(table_get(t, "exchange"), ex, sizeof ex);
            if (!reason[0])
                cw__dlq_field_str(table_get(t, "reason"), reason, sizeof reason);
            if (!queue[0])
                cw__dlq_field_str(table_get(t, "queue"), queue, sizeof queue);
        }
        int64_t at;
        /* Seconds; a time too far out to be one in ms is no time. */
        if (!m->failed_at_ms && last->kind == AMQP_FIELD_KIND_TABLE &&
            cw__dlq_field_int(table_get(&last->value.table, "time"), &at) && at > 0 &&
            at <= INT64_MAX / 1000)
            m->failed_at_ms = at * 1000;
    }
    if (!m->has_orig && got_ex && got_rk) {
        memcpy(m->orig_exchange, ex, sizeof ex);
        memcpy(m->orig_routing_key, rk, sizeof rk);
        m->has_orig = true;
    }
    if (!reason[0])
        return;
    if (!m->queue[0])
        snprintf(m->queue, sizeof m->queue, "%s", queue);
    if (!m->error_class[0])
        snprintf(m->error_class, sizeof m->error_class, "broker");
    if (!m->error[0])
        snprintf(m->error, sizeof m->error, "dead-lettered by the broker (%s) from queue %s",
                 reason, queue[0] ? queue : "?");
}

void cw_dlq_msg_decode(cw_dlq_msg *m)
{
    const amqp_basic_properties_t *p = &m->env.message.properties;
    prop(m->message_id, sizeof m->message_id, p, AMQP_BASIC_MESSAGE_ID_FLAG, p->message_id);
    prop(m->type, sizeof m->type, p, AMQP_BASIC_TYPE_FLAG, p->type);
    prop(m->saga_id, sizeof m->saga_id, p, AMQP_BASIC_CORRELATION_ID_FLAG, p->correlation_id);
    m->timestamp_ms = (p->_flags & AMQP_BASIC_TIMESTAMP_FLAG) && p->timestamp < INT64_MAX / 1000
                          ? (int64_t)p->timestamp * 1000
                          : 0;
    cw__dlq_field_str(cw_dlq_header(p, "cw-error-class"), m->error_class, sizeof m->error_class);
    cw__dlq_field_str(cw_dlq_header(p, "cw-error"), m->error, sizeof m->error);
    cw__dlq_field_str(cw_dlq_header(p, "cw-handler"), m->handler, sizeof m->handler);
    cw__dlq_field_str(cw_dlq_header(p, "cw-worker"), m->worker, sizeof m->worker);
    cw__dlq_field_str(cw_dlq_header(p, "cw-queue"), m->queue, sizeof m->queue);
    const amqp_field_value_t *ox = cw_dlq_header(p, "cw-original-exchange");
    const amqp_field_value_t *ork = cw_dlq_header(p, "cw-original-routing-key");
    m->has_orig = false;
    if (ox && ork) {
        m->has_orig = cw__dlq_field_str(ox, m->orig_exchange, sizeof m->orig_exchange) &&
                      cw__dlq_field_str(ork, m->orig_routing_key, sizeof m->orig_routing_key);
    }
    char at[64];
    m->failed_at_ms = 0;
    if (cw__dlq_field_str(cw_dlq_header(p, "cw-failed-at"), at, sizeof at) &&
        !cw_dlq_parse_iso8601(at, &m->failed_at_ms))
        m->failed_at_ms = 0;
    int64_t n;
    m->attempts = cw__dlq_field_int(cw_dlq_header(p, "cw-attempt"), &n) && n > 0
                      ? (n > 1000000 ? 1000000u : (unsigned)n)
                      : 0;
    m->replayed = cw__dlq_field_int(cw_dlq_header(p, "cw-replayed"), &n) && n > 0
                      ? (n > 1000000 ? 1000000u : (unsigned)n)
                      : 0;
    if (!m->has_orig || !m->error_class[0] || !m->failed_at_ms)
        decode_x_death(m, p);
}

void cw_dlq_msg_clear(cw_dlq_msg *m)
{
    if (m->has_env)
        amqp_destroy_envelope(&m->env);
    memset(m, 0, sizeof *m);
}

int cw__dlq_connect(amqp_connection_state_t *out, const cw_config *cfg, const char *name)
{
    unsigned next = 0;
    return cw__broker_connect_tls(out, cfg->url, &cfg->tls, &next, 0, name, NULL, 0);
}
