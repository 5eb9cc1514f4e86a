/* Envelope validation: the message contract of DESIGN.md, checked before a
 * handler is chosen. Every failure is a readable reason, never a crash. */
#include <ctype.h>
#include <stdio.h>
#include <string.h>
#include <strings.h>

#include "framework/error.h"
#include "framework/json_text.h"
#include "framework/limits.h"
#include "framework/task.h"

/* The highest cw-attempt value accepted from a header. */
#define CW_ATTEMPT_MAX 1000000

/* json-c's parser with the contract's limits; NULL when out of memory. */
static json_tokener *new_tokener(void)
{
    /* json-c's depth counts one more than the levels of nesting it lets
     * through: the outermost object is level 1 of CW_JSON_MAX_DEPTH. */
    json_tokener *tok = json_tokener_new_ex(CW_JSON_MAX_DEPTH + 1);
    /* No JSON_TOKENER_VALIDATE_UTF8: cw__json_text_check(), which every body
     * passes first, checks UTF-8 more strictly than json-c does. */
    if (tok)
        json_tokener_set_flags(tok, JSON_TOKENER_STRICT);
    return tok;
}

/* json_tokener_reset() does not clear all that an unfinished parse leaves
 * (json-c 0.16 keeps the high surrogate of a body cut inside the escape
 * after "\ud83d", as in "\ud83d\u0"), and the next body parsed would read
 * differently ("\u0041" as U+FFFD "A"):
 * after a parse that failed, the validator takes a new tokener (and keeps
 * the old one only when no memory can be had). Found by fuzz_envelope. */
static void renew_tokener(cw_validator *v)
{
    json_tokener *fresh = new_tokener();
    if (!fresh)
        return;
    json_tokener_free(v->tok);
    v->tok = fresh;
}

int cw__validator_init(cw_validator *v, const cw_registry *reg, uint64_t max_body_size)
{
    v->tok = new_tokener();
    if (!v->tok)
        return cw__error(CW_STATUS_NOMEM, "out of memory creating the JSON parser");
    v->reg = reg;
    v->max_body_size = max_body_size;
    return 0;
}

void cw__validator_free(cw_validator *v)
{
    if (v->tok)
        json_tokener_free(v->tok);
    v->tok = NULL;
}

static bool invalid(cw_task *t, const char *fmt, const char *arg)
{
    cw__task_set_failure(t, CW_FAIL, "invalid", fmt, arg);
    return false;
}

/* Copies a short string property into `out` if it is printable ASCII and
 * fits; returns false otherwise. */
static bool copy_printable(char *out, size_t cap, amqp_bytes_t b)
{
    if (b.len >= cap)
        return false;
    const unsigned char *p = b.bytes;
    for (size_t i = 0; i < b.len; i++) {
        if (p[i] < 0x21 || p[i] > 0x7e)
            return false;
    }
    if (b.len) /* an empty one may have bytes == NULL (amqp_empty_bytes) */
        memcpy(out, b.bytes, b.len);
    out[b.len] = '\0';
    return true;
}

static bool attempt_from_header(cw_task *t, const amqp_field_value_t *v)
{
    int64_t n;
    switch (v->kind) {
    case AMQP_FIELD_KIND_I8: n = v->value.i8; break;
    case AMQP_FIELD_KIND_U8: n = v->value.u8; break;
    case AMQP_FIELD_KIND_I16: n = v->value.i16; break;
    case AMQP_FIELD_KIND_U16: n = v->value.u16; break;
    case AMQP_FIELD_KIND_I32: n = v->value.i32; break;
    case AMQP_FIELD_KIND_U32: n = v->value.u32; break;
    case AMQP_FIELD_KIND_I64: n = v->value.i64; break;
    case AMQP_FIELD_KIND_U64:
        n = v->value.u64 > (uint64_t)INT64_MAX ? INT64_MAX : (int64_t)v->value.u64;
        break;
    default: return invalid(t, "header cw-attempt is not an integer%s", "");
    }
    if (n < 0 || n > CW_ATTEMPT_MAX) {
        char num[32];
        snprintf(num, sizeof num, "%lld", (long long)n);
        return invalid(t, "header cw-attempt %s is out of range", num);
    }
    t->attempt = (unsigned)n;
    return true;
}

static bool content_type_ok(amqp_bytes_t ct)
{
    static const char want[] = "application/json";
    size_t n = sizeof want - 1;
    if (ct.len < n || strncasecmp(ct.bytes, want, n) != 0)
        return false;
    /* Parameters such as "; charset=utf-8" may follow. */
    const char *rest = (const char *)ct.bytes + n;
    size_t left = ct.len - n;
    while (left && (*rest == ' ' || *rest == '\t')) {
        rest++;
        left--;
    }
    return left == 0 || *rest == ';';
}

bool cw__task_validate(cw_validator *v, cw_task *t)
{
    const amqp_basic_properties_t *p = &t->env.message.properties;
    const amqp_bytes_t body = t->env.message.body;
    char num[64];

    /* Identity first, so that even a refused task is logged by its ID. */
    if (!(p->_flags & AMQP_BASIC_MESSAGE_ID_FLAG) || p->message_id.len == 0)
        return invalid(t, "no message_id property (the idempotency key is required)%s", "");
    if (!copy_printable(t->message_id, sizeof t->message_id, p->message_id)) {
        snprintf(num, sizeof num, "%zu", p->message_id.len);
        return invalid(t, "message_id is not 1-128 printable ASCII characters (got %s bytes)", num);
    }
    if (p->_flags & AMQP_BASIC_CORRELATION_ID_FLAG &&
        !copy_printable(t->saga_id, sizeof t->saga_id, p->correlation_id) &&
        p->correlation_id.len != 0)
        return invalid(t, "correlation_id (saga ID) is not printable ASCII up to 255 bytes%s", "");
    if (!(p->_flags & AMQP_BASIC_TYPE_FLAG) || p->type.len == 0)
        return invalid(t, "no type property (the task type selects the handler)%s", "");
    if (!cw__type_valid(p->type.bytes, p->type.len))
        return invalid(t, "type is not 1-255 characters of [A-Za-z0-9._:-]%s", "");
    memcpy(t->type, p->type.bytes, p->type.len);
    t->type[p->type.len] = '\0';

    t->handler = cw_registry_find(v->reg, t->type, p->type.len);
    if (!t->handler)
        return invalid(t, "no handler is registered for type '%s'", t->type);

    if (body.len > v->max_body_size) {
        snprintf(num, sizeof num, "%zu bytes > max_body_size %llu", body.len,
                 (unsigned long long)v->max_body_size);
        return invalid(t, "body too large: %s", num);
    }
    if (p->_flags & AMQP_BASIC_CONTENT_TYPE_FLAG && !content_type_ok(p->content_type))
        return invalid(t, "content_type is not application/json%s", "");

    const amqp_field_value_t *att = cw__task_header_value(p, "cw-attempt");
    if (att && !attempt_from_header(t, att))
        return false;

    if (body.len == 0)
        return invalid(t, "body is empty (a JSON object is required)%s", "");
    if (memchr(body.bytes, '\0', body.len))
        return invalid(t, "body is not JSON: it contains a NUL byte%s", "");
    char why[160];
    if (!cw__json_text_check(body.bytes, body.len, why, sizeof why))
        return invalid(t, "body is not JSON: %s", why);
    json_tokener_reset(v->tok);
    json_object *obj = json_tokener_parse_ex(v->tok, body.bytes, (int)body.len);
    enum json_tokener_error jerr = json_tokener_get_error(v->tok);
    size_t end = json_tokener_get_parse_end(v->tok);
    if (!obj && jerr == json_tokener_continue) {
        /* json-c finishes a top-level scalar ("null", "12", "true") only on
         * a terminator: hand it the NUL the body does not have, so that such
         * a body is refused as "not an object", not as "truncated". */
        obj = json_tokener_parse_ex(v->tok, "", 1);
        jerr = json_tokener_get_error(v->tok);
        end = body.len;
        if (!obj && jerr != json_tokener_success) {
            renew_tokener(v);
            return invalid(t, "body is not JSON: %s", "truncated (unexpected end of input)");
        }
    }
    if (!obj && jerr != json_tokener_success) {
        renew_tokener(v);
        snprintf(why, sizeof why, "%s at byte %zu", json_tokener_error_desc(jerr), end);
        return invalid(t, "body is not JSON: %s", why);
    }
    for (const char *c = (const char *)body.bytes + end; end < body.len; c++, end++) {
        if (!isspace((unsigned char)*c)) {
            json_object_put(obj);
            snprintf(num, sizeof num, "%zu", end);
            return invalid(t, "body is not JSON: unexpected data after the value at byte %s", num);
        }
    }
    /* obj is NULL for a body of just "null". */
    if (!obj || !json_object_is_type(obj, json_type_object)) {
        json_object_put(obj);
        return invalid(t, "body is JSON but not an object%s", "");
    }
    t->payload = obj;
    return true;
}
