/* Reading a line of the DLQ export format (dlq/export.c describes it) back
 * into the message it was written from: every property, every header with
 * its AMQP field type, the body. A line that is not one says where and why
 * ("properties.headers[2].value: ..."), never crashes on what it reads. */
#include <errno.h>
#include <float.h>
#include <inttypes.h>
#include <limits.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <json.h>

#include "dlq/dlq.h"
#include "dlq/export_kinds.h"
#include "framework/error.h"
#include "framework/json_text.h"

#define IMPORT_DEPTH CW_DLQ_MAX_DEPTH
#define PATH_MAX_LEN 256

/* ---- decoding ----------------------------------------------------------- */

typedef struct dec {
    amqp_pool_t *pool;
    char path[PATH_MAX_LEN];
} dec;

static int bad(const dec *d, const char *fmt, ...) CW_PRINTF(2, 3);
static int bad(const dec *d, const char *fmt, ...)
{
    char msg[512];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    if (!d->path[0])
        return cw__error(CW_STATUS_INVALID_MESSAGE, "%s", msg);
    return cw__error(CW_STATUS_INVALID_MESSAGE, "%s: %s", d->path, msg);
}

/* Appends ".key" or "[i]" to the path; returns the old length to restore. */
static size_t path_push(dec *d, const char *fmt, ...) CW_PRINTF(2, 3);
static size_t path_push(dec *d, const char *fmt, ...)
{
    size_t old = strlen(d->path);
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(d->path + old, sizeof d->path - old, fmt, ap);
    va_end(ap);
    return old;
}

static void path_pop(dec *d, size_t old)
{
    d->path[old] = '\0';
}

static int pool_copy(const dec *d, amqp_bytes_t *out, const void *data, size_t len)
{
    out->len = len;
    if (len == 0) {
        out->bytes = (void *)""; /* never written through */
        return 0;
    }
    out->bytes = amqp_pool_alloc(d->pool, len);
    if (!out->bytes)
        return cw__error(CW_STATUS_NOMEM, "out of memory importing a message");
    memcpy(out->bytes, data, len);
    return 0;
}

/* A string as written by bytes_json(). */
static int dec_bytes(dec *d, json_object *j, amqp_bytes_t *out)
{
    if (json_object_is_type(j, json_type_string))
        return pool_copy(d, out, json_object_get_string(j), (size_t)json_object_get_string_len(j));
    json_object *b;
    if (json_object_is_type(j, json_type_object) && json_object_object_length(j) == 1 &&
        json_object_object_get_ex(j, "base64", &b) && json_object_is_type(b, json_type_string)) {
        unsigned char *raw;
        size_t n;
        if (!cw_dlq_unbase64(json_object_get_string(b), (size_t)json_object_get_string_len(b), &raw,
                             &n))
            return bad(d, "not valid base64");
        int rc = pool_copy(d, out, raw, n);
        free(raw);
        return rc;
    }
    return bad(d, "expected a string or {\"base64\": \"...\"}");
}

/* An integer in [lo, hi], checked on its text so that nothing is clamped
 * (one past 64 bits, which json-c clamps, is refused before it parses, by
 * cw__json_text_check()). */
static int dec_int(dec *d, json_object *j, int64_t lo, int64_t hi, int64_t *out)
{
    if (!json_object_is_type(j, json_type_int))
        return bad(d, "expected an integer");
    const char *s = json_object_to_json_string(j);
    errno = 0;
    char *end;
    long long v = strtoll(s, &end, 10);
    if (errno || *end || v < lo || v > hi)
        return bad(d, "%s is out of range [%" PRId64 ", %" PRId64 "]", s, lo, hi);
    *out = v;
    return 0;
}

static int dec_uint(dec *d, json_object *j, uint64_t hi, uint64_t *out)
{
    if (!json_object_is_type(j, json_type_int))
        return bad(d, "expected an integer");
    const char *s = json_object_to_json_string(j);
    if (s[0] == '-')
        return bad(d, "%s is out of range [0, %" PRIu64 "]", s, hi);
    errno = 0;
    char *end;
    unsigned long long v = strtoull(s, &end, 10);
    if (errno || *end || v > hi)
        return bad(d, "%s is out of range [0, %" PRIu64 "]", s, hi);
    *out = v;
    return 0;
}

static int dec_float(dec *d, json_object *j, bool f32, amqp_field_value_t *out)
{
    json_object *b;
    if (json_object_is_type(j, json_type_object)) {
        if (json_object_object_length(j) != 1 || !json_object_object_get_ex(j, "bits", &b) ||
            !json_object_is_type(b, json_type_string))
            return bad(d, "expected a number or {\"bits\": \"<hex>\"}");
        const char *s = json_object_get_string(b);
        size_t want = f32 ? 8 : 16;
        if (strlen(s) != want || strspn(s, "0123456789abcdefABCDEF") != want)
            return bad(d, "bits '%s' are not %zu hex digits", s, want);
        unsigned long long bits = strtoull(s, NULL, 16);
        if (f32) {
            uint32_t b32 = (uint32_t)bits;
            memcpy(&out->value.f32, &b32, sizeof b32);
        } else {
            uint64_t b64 = bits;
            memcpy(&out->value.f64, &b64, sizeof b64);
        }
        return 0;
    }
    if (!json_object_is_type(j, json_type_double) && !json_object_is_type(j, json_type_int))
        return bad(d, "expected a number");
    double v = json_object_get_double(j);
    /* Out of range, not clamped to infinity (or past f32's range). */
    if (!isfinite(v) || (f32 && fabs(v) > FLT_MAX))
        return bad(d, "%s is out of range for %s (write infinities and NaN as {\"bits\": ...})",
                   json_object_to_json_string(j), f32 ? "f32" : "f64");
    if (f32)
        out->value.f32 = (float)v;
    else
        out->value.f64 = v;
    return 0;
}

static int dec_entries(dec *d, json_object *j, amqp_table_t *out, int depth);

/* An object {"type", "value"} (and "key", which the caller reads, when
 * `keyed`) into *out. */
static int dec_value(dec *d, json_object *j, bool keyed, amqp_field_value_t *out, int depth)
{
    if (depth > IMPORT_DEPTH)
        return bad(d, "nested too deep");
    if (!json_object_is_type(j, json_type_object))
        return bad(d, "expected an object with \"type\" and \"value\"");
    json_object *t = NULL, *v = NULL;
    json_object_object_foreach(j, k, val)
    {
        if (strcmp(k, "type") == 0)
            t = val;
        else if (strcmp(k, "value") == 0)
            v = val;
        else if (!(keyed && strcmp(k, "key") == 0))
            return bad(d, "unknown member \"%s\"", k);
    }
    if (!t || !json_object_is_type(t, json_type_string))
        return bad(d, "\"type\" is missing or not a string");
    const char *tn = json_object_get_string(t);
    uint8_t kind;
    if (!cw__dlq_kind_of(tn, &kind))
        return bad(d, "unknown type \"%s\"", tn);
    memset(out, 0, sizeof *out);
    out->kind = kind;
    if (out->kind == AMQP_FIELD_KIND_VOID)
        return v ? bad(d, "a void value has no \"value\"") : 0;
    if (!v)
        return bad(d, "\"value\" is missing");
    size_t old = path_push(d, ".value");
    int rc = 0;
    int64_t n;
    uint64_t u;
    switch (out->kind) {
    case AMQP_FIELD_KIND_BOOLEAN:
        if (!json_object_is_type(v, json_type_boolean))
            rc = bad(d, "expected true or false");
        else
            out->value.boolean = json_object_get_boolean(v) ? 1 : 0;
        break;
    case AMQP_FIELD_KIND_I8:
        if (!(rc = dec_int(d, v, INT8_MIN, INT8_MAX, &n)))
            out->value.i8 = (int8_t)n;
        break;
    case AMQP_FIELD_KIND_U8:
        if (!(rc = dec_uint(d, v, UINT8_MAX, &u)))
            out->value.u8 = (uint8_t)u;
        break;
    case AMQP_FIELD_KIND_I16:
        if (!(rc = dec_int(d, v, INT16_MIN, INT16_MAX, &n)))
            out->value.i16 = (int16_t)n;
        break;
    case AMQP_FIELD_KIND_U16:
        if (!(rc = dec_uint(d, v, UINT16_MAX, &u)))
            out->value.u16 = (uint16_t)u;
        break;
    case AMQP_FIELD_KIND_I32:
        if (!(rc = dec_int(d, v, INT32_MIN, INT32_MAX, &n)))
            out->value.i32 = (int32_t)n;
        break;
    case AMQP_FIELD_KIND_U32:
        if (!(rc = dec_uint(d, v, UINT32_MAX, &u)))
            out->value.u32 = (uint32_t)u;
        break;
    case AMQP_FIELD_KIND_I64:
        if (!(rc = dec_int(d, v, INT64_MIN, INT64_MAX, &n)))
            out->value.i64 = n;
        break;
    case AMQP_FIELD_KIND_U64:
    case AMQP_FIELD_KIND_TIMESTAMP: rc = dec_uint(d, v, UINT64_MAX, &out->value.u64); break;
    case AMQP_FIELD_KIND_F32:
    case AMQP_FIELD_KIND_F64: rc = dec_float(d, v, out->kind == AMQP_FIELD_KIND_F32, out); break;
    case AMQP_FIELD_KIND_DECIMAL: {
        json_object *dd, *dv;
        if (!json_object_is_type(v, json_type_object) || json_object_object_length(v) != 2 ||
            !json_object_object_get_ex(v, "decimals", &dd) ||
            !json_object_object_get_ex(v, "value", &dv)) {
            rc = bad(d, "expected {\"decimals\": N, \"value\": N}");
            break;
        }
        if (!(rc = dec_uint(d, dd, UINT8_MAX, &u)))
            out->value.decimal.decimals = (uint8_t)u;
        if (!rc && !(rc = dec_uint(d, dv, UINT32_MAX, &u)))
            out->value.decimal.value = (uint32_t)u;
        break;
    }
    case AMQP_FIELD_KIND_UTF8: rc = dec_bytes(d, v, &out->value.bytes); break;
    case AMQP_FIELD_KIND_BYTES: {
        json_object *b;
        if (!json_object_is_type(v, json_type_object) || json_object_object_length(v) != 1 ||
            !json_object_object_get_ex(v, "base64", &b))
            rc = bad(d, "expected {\"base64\": \"...\"}");
        else
            rc = dec_bytes(d, v, &out->value.bytes);
        break;
    }
    case AMQP_FIELD_KIND_ARRAY: {
        if (!json_object_is_type(v, json_type_array)) {
            rc = bad(d, "expected a list");
            break;
        }
        size_t len = json_object_array_length(v);
        if (len > INT_MAX) {
            rc = bad(d, "too many elements");
            break;
        }
        out->value.array.num_entries = (int)len;
        out->value.array.entries = len ? amqp_pool_alloc(d->pool,
                                                         len * sizeof *out->value.array.entries)
                                       : NULL;
        if (len && !out->value.array.entries) {
            rc = cw__error(CW_STATUS_NOMEM, "out of memory importing a message");
            break;
        }
        for (size_t x = 0; x < len && rc == 0; x++) {
            size_t o2 = path_push(d, "[%zu]", x);
            rc = dec_value(d, json_object_array_get_idx(v, x), false, &out->value.array.entries[x],
                           depth + 1);
            path_pop(d, o2);
        }
        break;
    }
    case AMQP_FIELD_KIND_TABLE: rc = dec_entries(d, v, &out->value.table, depth + 1); break;
    }
    path_pop(d, old);
    return rc;
}

static int dec_entries(dec *d, json_object *j, amqp_table_t *out, int depth)
{
    if (!json_object_is_type(j, json_type_array))
        return bad(d, "expected a list of {\"key\", \"type\", \"value\"}");
    size_t len = json_object_array_length(j);
    if (len > INT_MAX)
        return bad(d, "too many entries");
    out->num_entries = (int)len;
    out->entries = len ? amqp_pool_alloc(d->pool, len * sizeof *out->entries) : NULL;
    if (len && !out->entries)
        return cw__error(CW_STATUS_NOMEM, "out of memory importing a message");
    for (size_t i = 0; i < len; i++) {
        json_object *e = json_object_array_get_idx(j, i);
        size_t old = path_push(d, "[%zu]", i);
        json_object *k;
        int rc;
        if (!json_object_is_type(e, json_type_object) || !json_object_object_get_ex(e, "key", &k)) {
            rc = bad(d, "an entry needs a \"key\"");
        } else {
            size_t o2 = path_push(d, ".key");
            rc = dec_bytes(d, k, &out->entries[i].key);
            if (rc == 0 && out->entries[i].key.len > 255)
                rc = bad(d, "a key is at most 255 bytes");
            path_pop(d, o2);
            if (rc == 0)
                rc = dec_value(d, e, true, &out->entries[i].value, depth);
        }
        path_pop(d, old);
        if (rc)
            return rc;
    }
    return 0;
}

/* A short string property (at most 255 bytes). */
static int dec_short(dec *d, json_object *j, amqp_bytes_t *out)
{
    int rc = dec_bytes(d, j, out);
    if (rc == 0 && out->len > 255)
        return bad(d, "at most 255 bytes (an AMQP short string)");
    return rc;
}

static const struct {
    const char *name;
    amqp_flags_t flag;
    size_t offset;
} short_props[] = {
#define SP(field, flag)                                                                            \
    {                                                                                              \
#field, flag, offsetof(amqp_basic_properties_t, field)                                     \
    }
    SP(content_type, AMQP_BASIC_CONTENT_TYPE_FLAG),
    SP(content_encoding, AMQP_BASIC_CONTENT_ENCODING_FLAG),
    SP(correlation_id, AMQP_BASIC_CORRELATION_ID_FLAG),
    SP(reply_to, AMQP_BASIC_REPLY_TO_FLAG),
    SP(expiration, AMQP_BASIC_EXPIRATION_FLAG),
    SP(message_id, AMQP_BASIC_MESSAGE_ID_FLAG),
    SP(type, AMQP_BASIC_TYPE_FLAG),
    SP(user_id, AMQP_BASIC_USER_ID_FLAG),
    SP(app_id, AMQP_BASIC_APP_ID_FLAG),
    SP(cluster_id, AMQP_BASIC_CLUSTER_ID_FLAG),
#undef SP
};

static int dec_prop(dec *d, const char *k, json_object *v, amqp_basic_properties_t *p)
{
    uint64_t u;
    int rc;
    if (strcmp(k, "headers") == 0) {
        p->_flags |= AMQP_BASIC_HEADERS_FLAG;
        return dec_entries(d, v, &p->headers, 0);
    }
    if (strcmp(k, "delivery_mode") == 0) {
        p->_flags |= AMQP_BASIC_DELIVERY_MODE_FLAG;
        if (!(rc = dec_uint(d, v, UINT8_MAX, &u)))
            p->delivery_mode = (uint8_t)u;
        return rc;
    }
    if (strcmp(k, "priority") == 0) {
        p->_flags |= AMQP_BASIC_PRIORITY_FLAG;
        if (!(rc = dec_uint(d, v, UINT8_MAX, &u)))
            p->priority = (uint8_t)u;
        return rc;
    }
    if (strcmp(k, "timestamp") == 0) {
        p->_flags |= AMQP_BASIC_TIMESTAMP_FLAG;
        return dec_uint(d, v, UINT64_MAX, &p->timestamp);
    }
    for (size_t i = 0; i < sizeof short_props / sizeof *short_props; i++) {
        if (strcmp(k, short_props[i].name) == 0) {
            p->_flags |= short_props[i].flag;
            return dec_short(d, v, (amqp_bytes_t *)((char *)p + short_props[i].offset));
        }
    }
    return bad(d, "unknown property");
}

static int dec_props(dec *d, json_object *j, amqp_basic_properties_t *p)
{
    if (!json_object_is_type(j, json_type_object))
        return bad(d, "expected an object");
    memset(p, 0, sizeof *p);
    json_object_object_foreach(j, k, v)
    {
        size_t old = path_push(d, ".%s", k);
        int rc = dec_prop(d, k, v, p);
        path_pop(d, old);
        if (rc)
            return rc;
    }
    return 0;
}

int cw_dlq_import_line(const char *line, size_t len, cw_dlq_record *out)
{
    memset(out, 0, sizeof *out);
    init_amqp_pool(&out->pool, 4096);
    dec d = {.pool = &out->pool};
    if (len > (size_t)INT_MAX)
        return bad(&d, "longer than 2 GiB");
    json_tokener *tok = json_tokener_new_ex(IMPORT_DEPTH * 3 + 8);
    if (!tok)
        return cw__error(CW_STATUS_NOMEM, "out of memory importing a message");
    json_tokener_set_flags(tok, JSON_TOKENER_STRICT);
    json_object *root = json_tokener_parse_ex(tok, line, (int)len);
    enum json_tokener_error jerr = json_tokener_get_error(tok);
    size_t end = json_tokener_get_parse_end(tok);
    int rc = 0;
    if (!root && jerr == json_tokener_continue) {
        rc = bad(&d, "not JSON: it ends before the object does");
        goto out_tok;
    }
    if (!root) {
        rc = bad(&d, "not JSON: %s at byte %zu", json_tokener_error_desc(jerr), end + 1);
        goto out_tok;
    }
    for (size_t i = end; i < len; i++) {
        if (line[i] != ' ' && line[i] != '\t' && line[i] != '\r') {
            rc = bad(&d, "text after the JSON object at byte %zu", i + 1);
            goto out_put;
        }
    }
    /* What json-c lets through but changes: an integer past 64 bits (it
     * clamps it), 1e400 (infinity), invalid UTF-8. */
    char why[160];
    if (!cw__json_text_check(line, end, why, sizeof why)) {
        rc = bad(&d, "not JSON: %s", why);
        goto out_put;
    }
    if (!json_object_is_type(root, json_type_object)) {
        rc = bad(&d, "not a JSON object");
        goto out_put;
    }
    json_object *fmt = NULL, *ver = NULL, *props = NULL, *body = NULL;
    json_object_object_foreach(root, k, v)
    {
        if (strcmp(k, "format") == 0) {
            fmt = v;
        } else if (strcmp(k, "version") == 0) {
            ver = v;
        } else if (strcmp(k, "properties") == 0) {
            props = v;
        } else if (strcmp(k, "body_base64") == 0) {
            body = v;
        } else if (strcmp(k, "exchange") != 0 && strcmp(k, "routing_key") != 0) {
            rc = bad(&d, "unknown member \"%s\"", k);
            goto out_put;
        }
    }
    if (!fmt || !json_object_is_type(fmt, json_type_string) ||
        strcmp(json_object_get_string(fmt), CW_DLQ_EXPORT_FORMAT) != 0) {
        rc = bad(&d, "\"format\" is not \"%s\": not a compworker DLQ export", CW_DLQ_EXPORT_FORMAT);
        goto out_put;
    }
    if (!ver || !json_object_is_type(ver, json_type_int) ||
        json_object_get_int64(ver) != CW_DLQ_EXPORT_VERSION) {
        rc = bad(&d, "\"version\" is not %d (exported by another compworker version?)",
                 CW_DLQ_EXPORT_VERSION);
        goto out_put;
    }
    if (!props) {
        rc = bad(&d, "\"properties\" is missing");
        goto out_put;
    }
    if (!body || !json_object_is_type(body, json_type_string)) {
        rc = bad(&d, "\"body_base64\" is missing or not a string");
        goto out_put;
    }
    snprintf(d.path, sizeof d.path, "properties");
    if ((rc = dec_props(&d, props, &out->props)))
        goto out_put;
    snprintf(d.path, sizeof d.path, "body_base64");
    unsigned char *raw;
    size_t n;
    if (!cw_dlq_unbase64(json_object_get_string(body), (size_t)json_object_get_string_len(body),
                         &raw, &n)) {
        rc = bad(&d, "not valid base64");
        goto out_put;
    }
    rc = pool_copy(&d, &out->body, raw, n);
    free(raw);
    if (rc)
        goto out_put;
    if (out->props._flags & AMQP_BASIC_MESSAGE_ID_FLAG) {
        size_t m = out->props.message_id.len < sizeof out->message_id ? out->props.message_id.len
                                                                      : sizeof out->message_id - 1;
        if (m)
            memcpy(out->message_id, out->props.message_id.bytes, m);
        out->message_id[m] = '\0';
    }

out_put:
    json_object_put(root);
out_tok:
    json_tokener_free(tok);
    return rc;
}

void cw_dlq_record_clear(cw_dlq_record *r)
{
    empty_amqp_pool(&r->pool);
    memset(r, 0, sizeof *r);
}
