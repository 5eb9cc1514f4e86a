/* Unit tests for envelope validation (framework/envelope.c) and the task
 * accessors (framework/task.c), on envelopes built by hand. The envelope's
 * memory belongs to the test: has_env stays false so that cw__task_reset()
 * frees only what validation allocated. */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "compworker/compworker.h"
#include "framework/registry.h"
#include "framework/task.h"

#define MAX_BODY 1048576

typedef struct fixture {
    cw_registry *reg;
    cw_validator v;
    cw_task t;
    amqp_table_entry_t headers[4];
} fixture;

static cw_outcome handle(cw_task *task, void *user_data)
{
    (void)task;
    (void)user_data;
    return CW_OK;
}

static int setup(void **state)
{
    fixture *f = calloc(1, sizeof *f);
    if (!f || cw_registry_new(&f->reg) != 0)
        return -1;
    if (cw_register_handler(f->reg, "payment.refund", handle, NULL) != 0 ||
        cw_register_handler(f->reg, "stock.restock", handle, NULL) != 0)
        return -1;
    if (cw__validator_init(&f->v, f->reg, MAX_BODY) != 0)
        return -1;
    *state = f;
    return 0;
}

static int teardown(void **state)
{
    fixture *f = *state;
    cw__task_reset(&f->t);
    cw__validator_free(&f->v);
    cw_registry_free(f->reg);
    free(f);
    return 0;
}

static amqp_bytes_t bytes(const char *s)
{
    return (amqp_bytes_t){strlen(s), (void *)s};
}

/* A valid message: id, type, saga, content type and body. */
static cw_task *msg(fixture *f, const char *body)
{
    cw__task_reset(&f->t);
    cw_task *t = &f->t;
    t->has_env = false;
    amqp_basic_properties_t *p = &t->env.message.properties;
    p->_flags = AMQP_BASIC_MESSAGE_ID_FLAG | AMQP_BASIC_TYPE_FLAG | AMQP_BASIC_CORRELATION_ID_FLAG |
                AMQP_BASIC_CONTENT_TYPE_FLAG;
    p->message_id = bytes("7d3f1c2a-6b1e-4c1a-9f57-0a8e6f1b2c3d");
    p->type = bytes("payment.refund");
    p->correlation_id = bytes("saga-42");
    p->content_type = bytes("application/json");
    t->env.message.body = bytes(body);
    return t;
}

static amqp_table_entry_t *add_header(fixture *f, const char *key)
{
    amqp_basic_properties_t *p = &f->t.env.message.properties;
    if (!(p->_flags & AMQP_BASIC_HEADERS_FLAG)) {
        p->_flags |= AMQP_BASIC_HEADERS_FLAG;
        p->headers.entries = f->headers;
        p->headers.num_entries = 0;
    }
    assert_true(p->headers.num_entries < 4);
    amqp_table_entry_t *e = &f->headers[p->headers.num_entries++];
    memset(e, 0, sizeof *e);
    e->key = bytes(key);
    return e;
}

static void add_str_header(fixture *f, const char *key, amqp_bytes_t value)
{
    amqp_table_entry_t *e = add_header(f, key);
    e->value.kind = AMQP_FIELD_KIND_UTF8;
    e->value.value.bytes = value;
}

static void expect_valid(fixture *f)
{
    if (!cw__task_validate(&f->v, &f->t))
        fail_msg("refused: %s: %s", f->t.error_class, f->t.reason);
    assert_string_equal(f->t.error_class, "");
    assert_string_equal(f->t.reason, "");
    assert_non_null(f->t.payload);
    assert_true(json_object_is_type(f->t.payload, json_type_object));
}

static void expect_invalid(fixture *f, const char *reason_part)
{
    if (cw__task_validate(&f->v, &f->t))
        fail_msg("accepted, want refused with '%s'", reason_part);
    assert_string_equal(f->t.error_class, "invalid");
    assert_int_equal(f->t.outcome, CW_FAIL);
    if (!strstr(f->t.reason, reason_part))
        fail_msg("reason '%s' does not mention '%s'", f->t.reason, reason_part);
    assert_null(f->t.payload);
}

/* ---- a valid task ---- */

static void test_valid(void **state)
{
    fixture *f = *state;
    cw_task *t = msg(f, "{\"payment_id\":\"p-1\",\"amount_cents\":1200}");
    expect_valid(f);

    assert_string_equal(cw_task_message_id(t), "7d3f1c2a-6b1e-4c1a-9f57-0a8e6f1b2c3d");
    assert_string_equal(cw_task_type(t), "payment.refund");
    assert_string_equal(cw_task_saga_id(t), "saga-42");
    assert_int_equal(cw_task_attempt(t), 0);
    assert_ptr_equal(t->handler, cw_registry_find(f->reg, "payment.refund", 14));

    json_object *pl = cw_task_payload(t), *v = NULL;
    assert_non_null(pl);
    assert_true(json_object_object_get_ex(pl, "payment_id", &v));
    assert_string_equal(json_object_get_string(v), "p-1");
    assert_true(json_object_object_get_ex(pl, "amount_cents", &v));
    assert_int_equal(json_object_get_int64(v), 1200);
}

static void test_valid_variants(void **state)
{
    fixture *f = *state;

    /* No correlation_id: the saga ID is "". */
    cw_task *t = msg(f, "{}");
    t->env.message.properties._flags &= ~AMQP_BASIC_CORRELATION_ID_FLAG;
    expect_valid(f);
    assert_string_equal(cw_task_saga_id(t), "");
    assert_int_equal(json_object_object_length(t->payload), 0);

    /* Whitespace around the object is fine. */
    msg(f, " \n\t{\"a\": [1, 2, {\"b\": null}]}\r\n ");
    expect_valid(f);

    /* The longest message ID, 128 bytes. */
    char id[129];
    memset(id, 'a', 128);
    id[128] = '\0';
    t = msg(f, "{}");
    t->env.message.properties.message_id = bytes(id);
    expect_valid(f);
    assert_string_equal(cw_task_message_id(t), id);

    /* Valid UTF-8 in strings, escapes included. */
    msg(f, "{\"name\":\"Bj\xc3\xb6rk \xe2\x82\xac \\u00e9\"}");
    expect_valid(f);

    /* A body of exactly max_body_size bytes. */
    cw__validator_free(&f->v);
    assert_int_equal(cw__validator_init(&f->v, f->reg, 10), 0);
    msg(f, "{\"a\":1234}");
    expect_valid(f);
}

/* ---- message_id ---- */

static void test_no_message_id(void **state)
{
    fixture *f = *state;
    cw_task *t = msg(f, "{}");
    t->env.message.properties._flags &= ~AMQP_BASIC_MESSAGE_ID_FLAG;
    expect_invalid(f, "no message_id");
}

static void test_empty_message_id(void **state)
{
    fixture *f = *state;
    cw_task *t = msg(f, "{}");
    t->env.message.properties.message_id = bytes("");
    expect_invalid(f, "message_id");
}

static void test_long_message_id(void **state)
{
    fixture *f = *state;
    char id[130];
    memset(id, 'a', 129);
    id[129] = '\0';
    cw_task *t = msg(f, "{}");
    t->env.message.properties.message_id = bytes(id);
    expect_invalid(f, "message_id");
    expect_invalid(f, "129");
}

static void test_unprintable_message_id(void **state)
{
    fixture *f = *state;
    cw_task *t = msg(f, "{}");
    t->env.message.properties.message_id = bytes("abc def");
    expect_invalid(f, "message_id");

    t = msg(f, "{}");
    t->env.message.properties.message_id = bytes("abc\x01");
    expect_invalid(f, "message_id");

    t = msg(f, "{}");
    t->env.message.properties.message_id = (amqp_bytes_t){4, "ab\0c"};
    expect_invalid(f, "message_id");

    t = msg(f, "{}");
    t->env.message.properties.message_id = bytes("caf\xc3\xa9");
    expect_invalid(f, "message_id");
}

static void test_bad_correlation_id(void **state)
{
    fixture *f = *state;
    cw_task *t = msg(f, "{}");
    t->env.message.properties.correlation_id = bytes("saga\n42");
    expect_invalid(f, "correlation_id");
}

/* ---- type ---- */

static void test_no_type(void **state)
{
    fixture *f = *state;
    cw_task *t = msg(f, "{}");
    t->env.message.properties._flags &= ~AMQP_BASIC_TYPE_FLAG;
    expect_invalid(f, "no type");

    t = msg(f, "{}");
    t->env.message.properties.type = bytes("");
    expect_invalid(f, "type");
}

static void test_malformed_type(void **state)
{
    fixture *f = *state;
    cw_task *t = msg(f, "{}");
    t->env.message.properties.type = bytes("payment refund");
    expect_invalid(f, "type");

    char type[257];
    memset(type, 'a', 256);
    type[256] = '\0';
    t = msg(f, "{}");
    t->env.message.properties.type = bytes(type);
    expect_invalid(f, "type");
}

static void test_type_without_handler(void **state)
{
    fixture *f = *state;
    cw_task *t = msg(f, "{}");
    t->env.message.properties.type = bytes("payment.unknown");
    expect_invalid(f, "payment.unknown");
    expect_invalid(f, "no handler");
    assert_null(t->handler);

    /* A prefix of a registered type is not that type. */
    t = msg(f, "{}");
    t->env.message.properties.type = bytes("payment");
    expect_invalid(f, "no handler");
}

/* ---- body ---- */

static void test_body_too_large(void **state)
{
    fixture *f = *state;
    cw__validator_free(&f->v);
    assert_int_equal(cw__validator_init(&f->v, f->reg, 10), 0);
    msg(f, "{\"a\":12345}"); /* 11 bytes */
    expect_invalid(f, "too large");
    expect_invalid(f, "11 bytes");
}

static void test_not_json(void **state)
{
    fixture *f = *state;
    msg(f, "hello");
    expect_invalid(f, "not JSON");
    msg(f, "{\"a\": 1,}");
    expect_invalid(f, "not JSON");
    msg(f, "{\"a\": 01}");
    expect_invalid(f, "not JSON");
    msg(f, "nul");
    expect_invalid(f, "not JSON");
    msg(f, "   ");
    expect_invalid(f, "not JSON");
    /* Not checked: json-c 0.16 takes {'a': 1} even with JSON_TOKENER_STRICT. */
}

static void test_truncated_json(void **state)
{
    fixture *f = *state;
    msg(f, "{\"payment_id\":\"p-1\",\"amount");
    expect_invalid(f, "not JSON");
    msg(f, "{\"a\":1");
    expect_invalid(f, "truncated");
}

static void test_not_an_object(void **state)
{
    fixture *f = *state;
    msg(f, "[1,2,3]");
    expect_invalid(f, "not an object");
    msg(f, "\"a string\"");
    expect_invalid(f, "not an object");
    /* Top-level scalars: json-c needs a terminator to finish them; they
     * are complete JSON, refused as such, not as "truncated". */
    msg(f, "null");
    expect_invalid(f, "not an object");
    msg(f, "123");
    expect_invalid(f, "not an object");
    msg(f, "true");
    expect_invalid(f, "not an object");
    msg(f, " 12 x");
    expect_invalid(f, "not JSON");
}

static void test_trailing_garbage(void **state)
{
    fixture *f = *state;
    msg(f, "{\"a\":1} x");
    expect_invalid(f, "not JSON");
    msg(f, "{\"a\":1}{\"b\":2}");
    expect_invalid(f, "not JSON");
}

static void test_nul_in_body(void **state)
{
    fixture *f = *state;
    static const char body[] = "{\"a\":\"x\0y\"}";
    cw_task *t = msg(f, "{}");
    t->env.message.body = (amqp_bytes_t){sizeof body - 1, (void *)body};
    expect_invalid(f, "NUL");
}

static void test_invalid_utf8(void **state)
{
    fixture *f = *state;
    msg(f, "{\"a\":\"\xff\xfe\"}");
    expect_invalid(f, "not JSON");
    msg(f, "{\"a\":\"\xc3\"}"); /* a lead byte without its continuation */
    expect_invalid(f, "not JSON");
}

static void test_deep_nesting(void **state)
{
    fixture *f = *state;
    size_t n = 100000;
    char *body = malloc(n);
    assert_non_null(body);
    memset(body, '[', n);
    cw_task *t = msg(f, "{}");
    t->env.message.body = (amqp_bytes_t){n, body};
    expect_invalid(f, "not JSON");

    /* The same depth of objects. */
    for (size_t i = 0; i + 5 <= n; i += 5)
        memcpy(body + i, "{\"a\":", 5);
    t = msg(f, "{}");
    t->env.message.body = (amqp_bytes_t){n, body};
    expect_invalid(f, "not JSON");
    free(body);
}

static void test_empty_body(void **state)
{
    fixture *f = *state;
    msg(f, "");
    expect_invalid(f, "empty");
}

/* ---- content type ---- */

static void test_content_type(void **state)
{
    fixture *f = *state;
    cw_task *t = msg(f, "{}");
    t->env.message.properties.content_type = bytes("text/plain");
    expect_invalid(f, "content_type");

    t = msg(f, "{}");
    t->env.message.properties.content_type = bytes("application/jsonx");
    expect_invalid(f, "content_type");

    t = msg(f, "{}");
    t->env.message.properties.content_type = bytes("application/json; charset=utf-8");
    expect_valid(f);

    t = msg(f, "{}");
    t->env.message.properties.content_type = bytes("Application/JSON");
    expect_valid(f);
}

/* ---- cw-attempt ---- */

static void test_attempt_header(void **state)
{
    fixture *f = *state;
    cw_task *t = msg(f, "{}");
    amqp_table_entry_t *e = add_header(f, "cw-attempt");
    e->value.kind = AMQP_FIELD_KIND_I32;
    e->value.value.i32 = 3;
    expect_valid(f);
    assert_int_equal(cw_task_attempt(t), 3);

    t = msg(f, "{}");
    add_str_header(f, "x-other", bytes("x"));
    e = add_header(f, "cw-attempt");
    e->value.kind = AMQP_FIELD_KIND_U8;
    e->value.value.u8 = 7;
    expect_valid(f);
    assert_int_equal(cw_task_attempt(t), 7);
}

static void test_attempt_negative(void **state)
{
    fixture *f = *state;
    msg(f, "{}");
    amqp_table_entry_t *e = add_header(f, "cw-attempt");
    e->value.kind = AMQP_FIELD_KIND_I32;
    e->value.value.i32 = -1;
    expect_invalid(f, "cw-attempt");
    expect_invalid(f, "-1");
}

static void test_attempt_huge(void **state)
{
    fixture *f = *state;
    msg(f, "{}");
    amqp_table_entry_t *e = add_header(f, "cw-attempt");
    e->value.kind = AMQP_FIELD_KIND_I64;
    e->value.value.i64 = INT64_MAX;
    expect_invalid(f, "cw-attempt");
    expect_invalid(f, "out of range");

    msg(f, "{}");
    e = add_header(f, "cw-attempt");
    e->value.kind = AMQP_FIELD_KIND_U64;
    e->value.value.u64 = UINT64_MAX;
    expect_invalid(f, "out of range");

    /* Just over what fits an unsigned on the way in. */
    msg(f, "{}");
    e = add_header(f, "cw-attempt");
    e->value.kind = AMQP_FIELD_KIND_I64;
    e->value.value.i64 = (int64_t)UINT32_MAX + 1;
    expect_invalid(f, "out of range");
}

static void test_attempt_string(void **state)
{
    fixture *f = *state;
    msg(f, "{}");
    add_str_header(f, "cw-attempt", bytes("3"));
    expect_invalid(f, "cw-attempt");
    expect_invalid(f, "not an integer");
}

/* ---- accessors ---- */

static void test_header(void **state)
{
    fixture *f = *state;
    cw_task *t = msg(f, "{}");
    add_str_header(f, "cw-error", bytes("ledger down"));
    add_str_header(f, "cw-queue", bytes("cw.payment"));
    add_str_header(f, "x-nul", (amqp_bytes_t){5, "ab\0cd"});
    amqp_table_entry_t *e = add_header(f, "x-int");
    e->value.kind = AMQP_FIELD_KIND_I32;
    e->value.value.i32 = 5;
    expect_valid(f);

    const char *a = cw_task_header(t, "cw-error");
    assert_non_null(a);
    assert_string_equal(a, "ledger down"); /* NUL-terminated copy */
    assert_ptr_not_equal(a, f->headers[0].value.value.bytes.bytes);

    const char *b = cw_task_header(t, "cw-queue");
    assert_non_null(b);
    assert_string_equal(b, "cw.payment");
    assert_string_equal(a, "ledger down"); /* the first one is still valid */
    const char *a2 = cw_task_header(t, "cw-error");
    assert_string_equal(a2, "ledger down");
    assert_string_equal(b, "cw.payment");

    assert_null(cw_task_header(t, "cw-missing"));
    assert_null(cw_task_header(t, "cw-erro")); /* a prefix */
    assert_null(cw_task_header(t, "x-nul"));
    assert_null(cw_task_header(t, "x-int"));
    assert_null(cw_task_header(t, NULL));
    assert_null(cw_task_header(NULL, "cw-error"));

    /* Byte arrays count as strings, and an empty value is "". */
    f->headers[3].value.kind = AMQP_FIELD_KIND_BYTES;
    f->headers[3].value.value.bytes = bytes("raw");
    assert_string_equal(cw_task_header(t, "x-int"), "raw");
    f->headers[3].value.value.bytes = (amqp_bytes_t){0, NULL};
    assert_string_equal(cw_task_header(t, "x-int"), "");
}

static void test_header_none(void **state)
{
    fixture *f = *state;
    cw_task *t = msg(f, "{}");
    expect_valid(f);
    assert_null(cw_task_header(t, "cw-error"));
}

static void test_body(void **state)
{
    fixture *f = *state;
    const char *text = "{\"payment_id\":\"p-1\"}";
    cw_task *t = msg(f, text);
    expect_valid(f);
    size_t len = 0;
    const void *b = cw_task_body(t, &len);
    assert_int_equal(len, strlen(text));
    assert_memory_equal(b, text, len);
    assert_ptr_equal(cw_task_body(t, NULL), b);
}

static void test_fail_and_retry(void **state)
{
    fixture *f = *state;
    cw_task *t = msg(f, "{}");
    expect_valid(f);

    assert_int_equal(cw_task_fail(t, "no such payment %s (%d)", "p-9", 404), CW_FAIL);
    assert_int_equal(t->outcome, CW_FAIL);
    assert_string_equal(t->error_class, "permanent");
    assert_string_equal(t->reason, "no such payment p-9 (404)");

    assert_int_equal(cw_task_retry(t, "ledger %s", "unavailable"), CW_RETRY);
    assert_int_equal(t->outcome, CW_RETRY);
    assert_string_equal(t->error_class, "transient");
    assert_string_equal(t->reason, "ledger unavailable");
}

static void test_long_reason_cut(void **state)
{
    fixture *f = *state;
    cw_task *t = msg(f, "{}");
    expect_valid(f);

    /* Fields after `reason` must survive a reason that does not fit. */
    t->action = 0x5a5a;
    t->published = true;
    cw_strnode *strings = t->strings;

    char big[3000];
    memset(big, 'r', sizeof big - 1);
    big[sizeof big - 1] = '\0';
    assert_int_equal(cw_task_fail(t, "%s", big), CW_FAIL);
    assert_int_equal(strlen(t->reason), CW_REASON_MAX - 1);
    assert_int_equal(strlen(t->reason), 1023);
    assert_memory_equal(t->reason, big, 1023);
    assert_int_equal(t->action, 0x5a5a);
    assert_true(t->published);
    assert_ptr_equal(t->strings, strings);

    assert_int_equal(cw_task_retry(t, "x%sy", big), CW_RETRY);
    assert_int_equal(strlen(t->reason), 1023);
    assert_int_equal(t->reason[0], 'x');
    assert_int_equal(t->reason[1022], 'r');
    assert_int_equal(t->action, 0x5a5a);
}

static void test_reset_reuses(void **state)
{
    fixture *f = *state;
    cw_task *t = msg(f, "{\"a\":1}");
    add_str_header(f, "cw-error", bytes("x"));
    expect_valid(f);
    assert_non_null(cw_task_header(t, "cw-error"));
    cw__task_reset(t);
    assert_null(t->payload);
    assert_null(t->strings);
    assert_string_equal(t->message_id, "");
    assert_int_equal(t->attempt, 0);

    /* One validator, many tasks: the tokener is reset between them. */
    msg(f, "{\"a\":");
    expect_invalid(f, "truncated");
    msg(f, "{\"b\":2}");
    expect_valid(f);
}

#define T(fn) cmocka_unit_test_setup_teardown(fn, setup, teardown)

int main(void)
{
    const struct CMUnitTest tests[] = {
        T(test_valid),
        T(test_valid_variants),
        T(test_no_message_id),
        T(test_empty_message_id),
        T(test_long_message_id),
        T(test_unprintable_message_id),
        T(test_bad_correlation_id),
        T(test_no_type),
        T(test_malformed_type),
        T(test_type_without_handler),
        T(test_body_too_large),
        T(test_not_json),
        T(test_truncated_json),
        T(test_not_an_object),
        T(test_trailing_garbage),
        T(test_nul_in_body),
        T(test_invalid_utf8),
        T(test_deep_nesting),
        T(test_empty_body),
        T(test_content_type),
        T(test_attempt_header),
        T(test_attempt_negative),
        T(test_attempt_huge),
        T(test_attempt_string),
        T(test_header),
        T(test_header_none),
        T(test_body),
        T(test_fail_and_retry),
        T(test_long_reason_cut),
        T(test_reset_reuses),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
