/* The export format of dead-lettered messages: one JSON object per line,
 * lossless, so that an import publishes the very same message again.
 *
 *   {"format":"compworker-dlq","version":1,
 *    "exchange":"cw.dlx","routing_key":"cw.dlq.orders",     (where it was read; informative)
 *    "properties":{"content_type":"application/json","headers":[...],"delivery_mode":2,
 *                  "message_id":"6053...","timestamp":1764020000,"type":"payment.refund",...},
 *    "body_base64":"eyJvcmRlcl9pZCI6..."}
 *
 * Only the properties the message has are written, in AMQP's order. A
 * string (a short string property, a long string header, a table key) is a
 * JSON string when it is valid UTF-8 without NUL, else {"base64":"..."}.
 * Headers keep their order and their AMQP field type:
 *
 *   "headers":[{"key":"cw-attempt","type":"i32","value":3},
 *              {"key":"x-death","type":"array","value":[{"type":"table","value":[...]}]}]
 *
 * types: bool, i8, u8, i16, u16, i32, u32, i64, u64, f32, f64 (a number, or
 * {"bits":"<hex>"} when not finite), decimal ({"decimals":2,"value":12345}),
 * string, bytes ({"base64":...}), timestamp (seconds), void (no value),
 * array (a list of {"type","value"}), table (a list of {"key","type","value"}).
 * The broker's x-delivery-count (how often this queue delivered the
 * message, browses included) is not part of the message and is left out. */
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
#include <openssl/evp.h>

#include "dlq/dlq.h"
#include "dlq/export_kinds.h"
#include "framework/error.h"
#include "framework/json_text.h"

/* ---- base64 ------------------------------------------------------------- */

char *cw_dlq_base64(const void *data, size_t len)
{
    if (len > (size_t)INT_MAX / 4 * 3 - 3)
        return NULL;
    size_t out_len = (len + 2) / 3 * 4;
    unsigned char *out = malloc(out_len + 1);
    if (!out)
        return NULL;
    int n = len ? EVP_EncodeBlock(out, data, (int)len) : 0;
    out[n < 0 ? 0 : n] = '\0';
    return (char *)out;
}

static bool b64_char(unsigned char c)
{
    return (c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '+' ||
           c == '/';
}

bool cw_dlq_unbase64(const char *text, size_t text_len, unsigned char **out, size_t *len)
{
    *out = NULL;
    *len = 0;
    if (text_len % 4 != 0 || text_len > (size_t)INT_MAX)
        return false;
    size_t pad = 0;
    for (size_t i = 0; i < text_len; i++) {
        unsigned char c = (unsigned char)text[i];
        if (c == '=' && i + 2 >= text_len) {
            pad++;
            continue;
        }
        if (pad || !b64_char(c))
            return false;
    }
    unsigned char *buf = malloc(text_len / 4 * 3 + 1);
    if (!buf)
        return false;
    int n = text_len ? EVP_DecodeBlock(buf, (const unsigned char *)text, (int)text_len) : 0;
    if (n < 0 || (size_t)n < pad) {
        free(buf);
        return false;
    }
    *out = buf;
    *len = (size_t)n - pad; /* EVP_DecodeBlock counts the padding as bytes */
    return true;
}

/* ---- encoding ----------------------------------------------------------- */

/* Valid UTF-8 (no overlong forms, no surrogates, at most U+10FFFF), no NUL. */
static bool text_ok(const unsigned char *s, size_t n)
{
    static const uint32_t min[4] = {0, 0x80, 0x800, 0x10000};
    for (size_t i = 0; i < n;) {
        unsigned char c = s[i];
        if (c == 0)
            return false;
        if (c < 0x80) {
            i++;
            continue;
        }
        size_t k;
        uint32_t cp;
        if ((c & 0xE0) == 0xC0) {
            k = 1;
            cp = c & 0x1F;
        } else if ((c & 0xF0) == 0xE0) {
            k = 2;
            cp = c & 0x0F;
        } else if ((c & 0xF8) == 0xF0) {
            k = 3;
            cp = c & 0x07;
        } else {
            return false;
        }
        if (i + k >= n)
            return false; /* a truncated sequence */
        for (size_t j = 1; j <= k; j++) {
            if ((s[i + j] & 0xC0) != 0x80)
                return false;
            cp = (cp << 6) | (s[i + j] & 0x3F);
        }
        if (cp < min[k] || cp > 0x10FFFF || (cp >= 0xD800 && cp <= 0xDFFF))
            return false;
        i += k + 1;
    }
    return true;
}

/* A string as JSON: itself when it is text, else {"base64": ...}. */
static json_object *bytes_json(amqp_bytes_t b)
{
    if (b.len <= INT_MAX && text_ok(b.bytes, b.len))
        return json_object_new_string_len(b.len ? b.bytes : "", (int)b.len);
    char *enc = cw_dlq_base64(b.bytes, b.len);
    if (!enc)
        return NULL;
    json_object *o = json_object_new_object();
    if (o)
        json_object_object_add(o, "base64", json_object_new_string(enc));
    free(enc);
    return o;
}

static json_object *bits_json(uint64_t bits, int hex_digits)
{
    char hex[24];
    snprintf(hex, sizeof hex, "%0*" PRIx64, hex_digits, bits);
    json_object *o = json_object_new_object();
    if (o)
        json_object_object_add(o, "bits", json_object_new_string(hex));
    return o;
}

static const struct {
    const char *name;
    uint8_t kind;
} kinds[] = {
    {"bool", AMQP_FIELD_KIND_BOOLEAN},
    {"i8", AMQP_FIELD_KIND_I8},
    {"u8", AMQP_FIELD_KIND_U8},
    {"i16", AMQP_FIELD_KIND_I16},
    {"u16", AMQP_FIELD_KIND_U16},
    {"i32", AMQP_FIELD_KIND_I32},
    {"u32", AMQP_FIELD_KIND_U32},
    {"i64", AMQP_FIELD_KIND_I64},
    {"u64", AMQP_FIELD_KIND_U64},
    {"f32", AMQP_FIELD_KIND_F32},
    {"f64", AMQP_FIELD_KIND_F64},
    {"decimal", AMQP_FIELD_KIND_DECIMAL},
    {"string", AMQP_FIELD_KIND_UTF8},
    {"bytes", AMQP_FIELD_KIND_BYTES},
    {"timestamp", AMQP_FIELD_KIND_TIMESTAMP},
    {"void", AMQP_FIELD_KIND_VOID},
    {"array", AMQP_FIELD_KIND_ARRAY},
    {"table", AMQP_FIELD_KIND_TABLE},
};

static const char *kind_name(uint8_t kind)
{
    for (size_t i = 0; i < sizeof kinds / sizeof *kinds; i++) {
        if (kinds[i].kind == kind)
            return kinds[i].name;
    }
    return NULL;
}

bool cw__dlq_kind_of(const char *name, uint8_t *kind)
{
    for (size_t i = 0; i < sizeof kinds / sizeof *kinds; i++) {
        if (strcmp(kinds[i].name, name) == 0) {
            *kind = kinds[i].kind;
            return true;
        }
    }
    return false;
}

static json_object *entries_json(const amqp_table_t *t, bool top);

/* The JSON of a value of `kind` (not VOID); NULL when out of memory. */
static json_object *value_only_json(const amqp_field_value_t *v)
{
    switch (v->kind) {
    case AMQP_FIELD_KIND_BOOLEAN: return json_object_new_boolean(v->value.boolean != 0);
    case AMQP_FIELD_KIND_I8: return json_object_new_int64(v->value.i8);
    case AMQP_FIELD_KIND_U8: return json_object_new_int64(v->value.u8);
    case AMQP_FIELD_KIND_I16: return json_object_new_int64(v->value.i16);
    case AMQP_FIELD_KIND_U16: return json_object_new_int64(v->value.u16);
    case AMQP_FIELD_KIND_I32: return json_object_new_int64(v->value.i32);
    case AMQP_FIELD_KIND_U32: return json_object_new_int64(v->value.u32);
    case AMQP_FIELD_KIND_I64: return json_object_new_int64(v->value.i64);
    case AMQP_FIELD_KIND_U64:
    case AMQP_FIELD_KIND_TIMESTAMP: return json_object_new_uint64(v->value.u64);
    case AMQP_FIELD_KIND_F32: {
        float f = v->value.f32;
        if (isfinite(f))
            return json_object_new_double((double)f);
        uint32_t bits;
        memcpy(&bits, &f, sizeof bits);
        return bits_json(bits, 8);
    }
    case AMQP_FIELD_KIND_F64: {
        double d = v->value.f64;
        if (isfinite(d))
            return json_object_new_double(d);
        uint64_t bits;
        memcpy(&bits, &d, sizeof bits);
        return bits_json(bits, 16);
    }
    case AMQP_FIELD_KIND_DECIMAL: {
        json_object *o = json_object_new_object();
        if (o) {
            json_object_object_add(o, "decimals", json_object_new_int(v->value.decimal.decimals));
            json_object_object_add(o, "value", json_object_new_int64(v->value.decimal.value));
        }
        return o;
    }
    case AMQP_FIELD_KIND_UTF8: return bytes_json(v->value.bytes);
    case AMQP_FIELD_KIND_BYTES: {
        char *enc = cw_dlq_base64(v->value.bytes.bytes, v->value.bytes.len);
        json_object *o = enc ? json_object_new_object() : NULL;
        if (o)
            json_object_object_add(o, "base64", json_object_new_string(enc));
        free(enc);
        return o;
    }
    case AMQP_FIELD_KIND_ARRAY: {
        json_object *a = json_object_new_array();
        for (int i = 0; a && i < v->value.array.num_entries; i++) {
            const amqp_field_value_t *e = &v->value.array.entries[i];
            json_object *item = json_object_new_object();
            const char *name = kind_name(e->kind);
            json_object *val = name && e->kind != AMQP_FIELD_KIND_VOID ? value_only_json(e) : NULL;
            if (!item || !name || (e->kind != AMQP_FIELD_KIND_VOID && !val)) {
                json_object_put(item);
                json_object_put(val);
                json_object_put(a);
                return NULL;
            }
            json_object_object_add(item, "type", json_object_new_string(name));
            if (val)
                json_object_object_add(item, "value", val);
            json_object_array_add(a, item);
        }
        return a;
    }
    case AMQP_FIELD_KIND_TABLE: return entries_json(&v->value.table, false);
    default: return NULL;
    }
}

static bool is_delivery_count(amqp_bytes_t key)
{
    return key.len == 16 && memcmp(key.bytes, "x-delivery-count", 16) == 0;
}

/* [{"key","type","value"}...]; `top`: the message's headers, where
 * x-delivery-count is left out. */
static json_object *entries_json(const amqp_table_t *t, bool top)
{
    json_object *a = json_object_new_array();
    for (int i = 0; a && i < t->num_entries; i++) {
        const amqp_table_entry_t *e = &t->entries[i];
        if (top && is_delivery_count(e->key))
            continue;
        const char *name = kind_name(e->value.kind);
        json_object *o = json_object_new_object();
        json_object *k = bytes_json(e->key);
        json_object *val = name && e->value.kind != AMQP_FIELD_KIND_VOID
                               ? value_only_json(&e->value)
                               : NULL;
        if (!o || !k || !name || (e->value.kind != AMQP_FIELD_KIND_VOID && !val)) {
            json_object_put(o);
            json_object_put(k);
            json_object_put(val);
            json_object_put(a);
            return NULL;
        }
        json_object_object_add(o, "key", k);
        json_object_object_add(o, "type", json_object_new_string(name));
        if (val)
            json_object_object_add(o, "value", val);
        json_object_array_add(a, o);
    }
    return a;
}

static bool table_within(const amqp_table_t *t, int depth);

/* True when `v`, at `depth`, and what it holds nest at most
 * CW_DLQ_MAX_DEPTH deep: what an import accepts. Stops at the limit, so a
 * hostile message costs no deeper recursion than a valid one. */
static bool value_within(const amqp_field_value_t *v, int depth)
{
    if (depth > CW_DLQ_MAX_DEPTH)
        return false;
    if (v->kind == AMQP_FIELD_KIND_TABLE)
        return table_within(&v->value.table, depth + 1);
    if (v->kind == AMQP_FIELD_KIND_ARRAY) {
        for (int i = 0; i < v->value.array.num_entries; i++) {
            if (!value_within(&v->value.array.entries[i], depth + 1))
                return false;
        }
    }
    return true;
}

static bool table_within(const amqp_table_t *t, int depth)
{
    for (int i = 0; i < t->num_entries; i++) {
        if (!value_within(&t->entries[i].value, depth))
            return false;
    }
    return true;
}

static bool headers_exportable(const amqp_basic_properties_t *p)
{
    return !(p->_flags & AMQP_BASIC_HEADERS_FLAG) || table_within(&p->headers, 0);
}

json_object *cw_dlq_export_object(const amqp_envelope_t *env)
{
    const amqp_basic_properties_t *p = &env->message.properties;
    if (!headers_exportable(p))
        return NULL;
    json_object *root = json_object_new_object();
    json_object *props = json_object_new_object();
    if (!root || !props)
        goto out_nomem;
    json_object_object_add(root, "format", json_object_new_string(CW_DLQ_EXPORT_FORMAT));
    json_object_object_add(root, "version", json_object_new_int(CW_DLQ_EXPORT_VERSION));
    json_object_object_add(root, "exchange", bytes_json(env->exchange));
    json_object_object_add(root, "routing_key", bytes_json(env->routing_key));

#define STR_PROP(flag, field)                                                                      \
    if (p->_flags & (flag))                                                                        \
        json_object_object_add(props, #field, bytes_json(p->field));
#define INT_PROP(flag, field)                                                                      \
    if (p->_flags & (flag))                                                                        \
        json_object_object_add(props, #field, json_object_new_uint64(p->field));
    STR_PROP(AMQP_BASIC_CONTENT_TYPE_FLAG, content_type)
    STR_PROP(AMQP_BASIC_CONTENT_ENCODING_FLAG, content_encoding)
    if (p->_flags & AMQP_BASIC_HEADERS_FLAG) {
        json_object *h = entries_json(&p->headers, true);
        if (!h)
            goto out_nomem;
        json_object_object_add(props, "headers", h);
    }
    INT_PROP(AMQP_BASIC_DELIVERY_MODE_FLAG, delivery_mode)
    INT_PROP(AMQP_BASIC_PRIORITY_FLAG, priority)
    STR_PROP(AMQP_BASIC_CORRELATION_ID_FLAG, correlation_id)
    STR_PROP(AMQP_BASIC_REPLY_TO_FLAG, reply_to)
    STR_PROP(AMQP_BASIC_EXPIRATION_FLAG, expiration)
    STR_PROP(AMQP_BASIC_MESSAGE_ID_FLAG, message_id)
    INT_PROP(AMQP_BASIC_TIMESTAMP_FLAG, timestamp)
    STR_PROP(AMQP_BASIC_TYPE_FLAG, type)
    STR_PROP(AMQP_BASIC_USER_ID_FLAG, user_id)
    STR_PROP(AMQP_BASIC_APP_ID_FLAG, app_id)
    STR_PROP(AMQP_BASIC_CLUSTER_ID_FLAG, cluster_id)
#undef STR_PROP
#undef INT_PROP
    json_object_object_add(root, "properties", props);
    props = NULL;
    char *body = cw_dlq_base64(env->message.body.bytes, env->message.body.len);
    if (!body)
        goto out_nomem;
    json_object_object_add(root, "body_base64", json_object_new_string(body));
    free(body);
    return root;

out_nomem:
    json_object_put(props);
    json_object_put(root);
    return NULL;
}

int cw_dlq_export_line(const amqp_envelope_t *env, char **out, size_t *len)
{
    *out = NULL;
    *len = 0;
    if (env->message.body.len > (size_t)INT_MAX / 4 * 3 - 3)
        return cw__error(CW_STATUS_TOO_LARGE, "a message body of %zu bytes is too large to export",
                         env->message.body.len);
    if (!headers_exportable(&env->message.properties))
        return cw__error(CW_STATUS_TOO_LARGE,
                         "the message's headers nest more than %d tables or arrays deep: too "
                         "deep to export",
                         CW_DLQ_MAX_DEPTH);
    json_object *o = cw_dlq_export_object(env);
    if (!o)
        return cw__error(CW_STATUS_NOMEM, "out of memory exporting a message");
    size_t n;
    const char *s = json_object_to_json_string_length(
        o, JSON_C_TO_STRING_PLAIN | JSON_C_TO_STRING_NOSLASHESCAPE, &n);
    char *copy = s ? malloc(n + 1) : NULL;
    if (copy) {
        memcpy(copy, s, n + 1);
        *out = copy;
        *len = n;
    }
    json_object_put(o);
    return copy ? 0 : cw__error(CW_STATUS_NOMEM, "out of memory exporting a message");
}
