/* Unit tests of the DLQ tools' pieces that need no broker: the export line
 * format (lossless round trips, every field type, refusals with the field
 * named), base64, the filters and their times, the groups, and the
 * properties of a replayed copy. */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "compworker/status.h"
#include "dlq/dlq.h"

/* ---- a message with everything ------------------------------------------- */

static amqp_field_value_t arr_items[4];
static amqp_table_entry_t inner[3];
static amqp_field_value_t deaths[1];
static amqp_table_entry_t headers[32];
static int n_headers;
static const char bin[] = "\x00\x01\x02\xff";
static const char latin1[] = "caf\xe9";
static char body[300];

static amqp_table_entry_t entry(const char *key, amqp_field_value_t v)
{
    amqp_table_entry_t e = {.key = amqp_cstring_bytes(key), .value = v};
    return e;
}

static void build(amqp_envelope_t *env, bool all_props)
{
    memset(env, 0, sizeof *env);
    env->exchange = amqp_cstring_bytes("cw.dlx");
    env->routing_key = amqp_cstring_bytes("cw.dlq.orders");
    arr_items[0] = (amqp_field_value_t){.kind = AMQP_FIELD_KIND_UTF8,
                                        .value.bytes = amqp_cstring_bytes("cw.orders")};
    arr_items[1] = (amqp_field_value_t){.kind = AMQP_FIELD_KIND_I64, .value.i64 = 42};
    arr_items[2] = (amqp_field_value_t){.kind = AMQP_FIELD_KIND_VOID};
    arr_items[3] = (amqp_field_value_t){.kind = AMQP_FIELD_KIND_BYTES,
                                        .value.bytes = {.len = 4, .bytes = (void *)bin}};
    inner[0] = entry("count", (amqp_field_value_t){.kind = AMQP_FIELD_KIND_I64, .value.i64 = 2});
    inner[1] = entry("routing-keys",
                     (amqp_field_value_t){.kind = AMQP_FIELD_KIND_ARRAY,
                                          .value.array = {.num_entries = 4, .entries = arr_items}});
    inner[2] = entry("time", (amqp_field_value_t){.kind = AMQP_FIELD_KIND_TIMESTAMP,
                                                  .value.u64 = 1764020000});
    deaths[0] = (amqp_field_value_t){.kind = AMQP_FIELD_KIND_TABLE,
                                     .value.table = {.num_entries = 3, .entries = inner}};
    int n = 0;
    headers[n++] = entry("cw-error", (amqp_field_value_t){.kind = AMQP_FIELD_KIND_UTF8,
                                                          .value.bytes = amqp_cstring_bytes(
                                                              "unknown payment ✓")});
    headers[n++] = entry("latin1",
                         (amqp_field_value_t){.kind = AMQP_FIELD_KIND_UTF8,
                                              .value.bytes = {.len = 4, .bytes = (void *)latin1}});
    headers[n++] = entry("empty", (amqp_field_value_t){.kind = AMQP_FIELD_KIND_UTF8,
                                                       .value.bytes = {.len = 0, .bytes = NULL}});
    headers[n++] = entry("t",
                         (amqp_field_value_t){.kind = AMQP_FIELD_KIND_BOOLEAN, .value.boolean = 1});
    headers[n++] = entry("b", (amqp_field_value_t){.kind = AMQP_FIELD_KIND_I8, .value.i8 = -128});
    headers[n++] = entry("B", (amqp_field_value_t){.kind = AMQP_FIELD_KIND_U8, .value.u8 = 255});
    headers[n++] = entry("s",
                         (amqp_field_value_t){.kind = AMQP_FIELD_KIND_I16, .value.i16 = -32768});
    headers[n++] = entry("u",
                         (amqp_field_value_t){.kind = AMQP_FIELD_KIND_U16, .value.u16 = 65535});
    headers[n++] = entry("I",
                         (amqp_field_value_t){.kind = AMQP_FIELD_KIND_I32, .value.i32 = INT32_MIN});
    headers[n++] = entry("i", (amqp_field_value_t){.kind = AMQP_FIELD_KIND_U32,
                                                   .value.u32 = UINT32_MAX});
    headers[n++] = entry("l",
                         (amqp_field_value_t){.kind = AMQP_FIELD_KIND_I64, .value.i64 = INT64_MIN});
    headers[n++] = entry("L", (amqp_field_value_t){.kind = AMQP_FIELD_KIND_U64,
                                                   .value.u64 = UINT64_MAX});
    headers[n++] = entry("f", (amqp_field_value_t){.kind = AMQP_FIELD_KIND_F32, .value.f32 = 0.1f});
    headers[n++] = entry("d", (amqp_field_value_t){.kind = AMQP_FIELD_KIND_F64,
                                                   .value.f64 = -1.0 / 3.0});
    headers[n++] = entry("nan",
                         (amqp_field_value_t){.kind = AMQP_FIELD_KIND_F64, .value.f64 = NAN});
    headers[n++] = entry("inf",
                         (amqp_field_value_t){.kind = AMQP_FIELD_KIND_F32, .value.f32 = -INFINITY});
    headers[n++] = entry("negzero",
                         (amqp_field_value_t){.kind = AMQP_FIELD_KIND_F64, .value.f64 = -0.0});
    headers[n++] = entry("D",
                         (amqp_field_value_t){.kind = AMQP_FIELD_KIND_DECIMAL,
                                              .value.decimal = {.decimals = 2, .value = 129900}});
    headers[n++] = entry("T", (amqp_field_value_t){.kind = AMQP_FIELD_KIND_TIMESTAMP,
                                                   .value.u64 = 1764020001});
    headers[n++] = entry("V", (amqp_field_value_t){.kind = AMQP_FIELD_KIND_VOID});
    headers[n++] = entry("x",
                         (amqp_field_value_t){.kind = AMQP_FIELD_KIND_BYTES,
                                              .value.bytes = {.len = 4, .bytes = (void *)bin}});
    headers[n++] = entry("x-death", (amqp_field_value_t){.kind = AMQP_FIELD_KIND_ARRAY,
                                                         .value.array = {.num_entries = 1,
                                                                         .entries = deaths}});
    headers[n++] = entry("tbl",
                         (amqp_field_value_t){.kind = AMQP_FIELD_KIND_TABLE,
                                              .value.table = {.num_entries = 3, .entries = inner}});
    headers[n++] = entry("dup", (amqp_field_value_t){.kind = AMQP_FIELD_KIND_I32, .value.i32 = 1});
    headers[n++] = entry("dup", (amqp_field_value_t){.kind = AMQP_FIELD_KIND_I32, .value.i32 = 2});
    n_headers = n;

    amqp_basic_properties_t *p = &env->message.properties;
    p->_flags = AMQP_BASIC_MESSAGE_ID_FLAG | AMQP_BASIC_DELIVERY_MODE_FLAG;
    p->message_id = amqp_cstring_bytes("6053184c-1b4e-4f0e-9a1e-0d1b2c3d4e5f");
    p->delivery_mode = 2;
    if (all_props) {
        p->_flags |= AMQP_BASIC_CONTENT_TYPE_FLAG | AMQP_BASIC_CONTENT_ENCODING_FLAG |
                     AMQP_BASIC_HEADERS_FLAG | AMQP_BASIC_PRIORITY_FLAG |
                     AMQP_BASIC_CORRELATION_ID_FLAG | AMQP_BASIC_REPLY_TO_FLAG |
                     AMQP_BASIC_EXPIRATION_FLAG | AMQP_BASIC_TIMESTAMP_FLAG | AMQP_BASIC_TYPE_FLAG |
                     AMQP_BASIC_USER_ID_FLAG | AMQP_BASIC_APP_ID_FLAG | AMQP_BASIC_CLUSTER_ID_FLAG;
        p->content_type = amqp_cstring_bytes("application/json");
        p->content_encoding = amqp_cstring_bytes("gzip");
        p->headers.num_entries = n;
        p->headers.entries = headers;
        p->priority = 9;
        p->correlation_id = amqp_cstring_bytes("saga-ord-0043");
        p->reply_to = (amqp_bytes_t){.len = 4, .bytes = (void *)latin1};
        p->expiration = amqp_cstring_bytes("60000");
        p->timestamp = 1764020000;
        p->type = amqp_cstring_bytes("payment.refund");
        p->user_id = amqp_cstring_bytes("guest");
        p->app_id = amqp_cstring_bytes("");
        p->cluster_id = amqp_cstring_bytes("c1");
    }
    for (size_t i = 0; i < sizeof body; i++)
        body[i] = (char)(i * 7);
    env->message.body = (amqp_bytes_t){.len = sizeof body, .bytes = body};
}

/* The properties as bytes: flags, each property, the headers encoded as on
 * the wire. */
static size_t props_bytes(const amqp_basic_properties_t *p, char *out, size_t cap)
{
    size_t o = 0;
#define PUT(ptr, n)                                                                                \
    do {                                                                                           \
        size_t n_ = (n);                                                                           \
        assert_true(o + n_ + sizeof n_ <= cap);                                                    \
        memcpy(out + o, &n_, sizeof n_);                                                           \
        o += sizeof n_;                                                                            \
        if (n_)                                                                                    \
            memcpy(out + o, (ptr), n_);                                                            \
        o += n_;                                                                                   \
    } while (0)
    PUT(&p->_flags, sizeof p->_flags);
    const amqp_bytes_t *strs[] = {&p->content_type, &p->content_encoding, &p->correlation_id,
                                  &p->reply_to,     &p->expiration,       &p->message_id,
                                  &p->type,         &p->user_id,          &p->app_id,
                                  &p->cluster_id};
    for (size_t i = 0; i < sizeof strs / sizeof *strs; i++)
        PUT(strs[i]->bytes, strs[i]->len);
    PUT(&p->delivery_mode, 1);
    PUT(&p->priority, 1);
    PUT(&p->timestamp, sizeof p->timestamp);
    if (p->_flags & AMQP_BASIC_HEADERS_FLAG) {
        char enc[8192];
        size_t off = 0;
        amqp_table_t t = p->headers;
        assert_int_equal(amqp_encode_table((amqp_bytes_t){.len = sizeof enc, .bytes = enc}, &t,
                                           &off),
                         AMQP_STATUS_OK);
        PUT(enc, off);
    }
#undef PUT
    return o;
}

static void expect_same_message(const amqp_envelope_t *a, const cw_dlq_record *r)
{
    static char x[16384], y[16384];
    amqp_basic_properties_t pa = a->message.properties;
    size_t nx = props_bytes(&pa, x, sizeof x);
    size_t ny = props_bytes(&r->props, y, sizeof y);
    assert_int_equal(nx, ny);
    assert_memory_equal(x, y, nx);
    assert_int_equal(r->body.len, a->message.body.len);
    if (r->body.len)
        assert_memory_equal(r->body.bytes, a->message.body.bytes, r->body.len);
}

/* ---- round trips ---------------------------------------------------------- */

static void test_roundtrip_everything(void **state)
{
    (void)state;
    amqp_envelope_t env;
    build(&env, true);
    char *line;
    size_t len;
    assert_int_equal(cw_dlq_export_line(&env, &line, &len), 0);
    assert_int_equal(strlen(line), len);
    assert_null(strchr(line, '\n'));

    cw_dlq_record r;
    int rc = cw_dlq_import_line(line, len, &r);
    if (rc)
        fail_msg("import: %s", cw_error_last());
    expect_same_message(&env, &r);
    assert_string_equal(r.message_id, "6053184c-1b4e-4f0e-9a1e-0d1b2c3d4e5f");

    /* Exporting the imported message gives the same line. */
    amqp_envelope_t again = env;
    again.message.properties = r.props;
    again.message.body = r.body;
    char *line2;
    size_t len2;
    assert_int_equal(cw_dlq_export_line(&again, &line2, &len2), 0);
    assert_string_equal(line2, line);

    /* NaN keeps its bits; -0.0 its sign. */
    for (int i = 0; i < r.props.headers.num_entries; i++) {
        const amqp_table_entry_t *e = &r.props.headers.entries[i];
        if (e->key.len == 3 && memcmp(e->key.bytes, "nan", 3) == 0)
            assert_true(isnan(e->value.value.f64));
        if (e->key.len == 7 && memcmp(e->key.bytes, "negzero", 7) == 0)
            assert_true(signbit(e->value.value.f64));
    }
    cw_dlq_record_clear(&r);

    /* A line of a file edited on Windows (CRLF) or with trailing blanks. */
    char *crlf = malloc(len + 4);
    memcpy(crlf, line, len);
    memcpy(crlf + len, " \t\r", 4);
    rc = cw_dlq_import_line(crlf, len + 3, &r);
    if (rc)
        fail_msg("import with trailing blanks: %s", cw_error_last());
    cw_dlq_record_clear(&r);
    free(crlf);
    free(line);
    free(line2);
}

static void test_roundtrip_minimal_and_empty_body(void **state)
{
    (void)state;
    amqp_envelope_t env;
    build(&env, false);
    env.message.body = (amqp_bytes_t){.len = 0, .bytes = NULL};
    char *line;
    size_t len;
    assert_int_equal(cw_dlq_export_line(&env, &line, &len), 0);
    assert_non_null(strstr(line, "\"body_base64\":\"\""));
    assert_null(strstr(line, "headers"));
    cw_dlq_record r;
    assert_int_equal(cw_dlq_import_line(line, len, &r), 0);
    expect_same_message(&env, &r);
    free(line);
    cw_dlq_record_clear(&r);
}

static void test_export_readable_forms(void **state)
{
    (void)state;
    amqp_envelope_t env;
    build(&env, true);
    char *line;
    size_t len;
    assert_int_equal(cw_dlq_export_line(&env, &line, &len), 0);
    /* Text stays text, with its type; other bytes become base64. */
    assert_non_null(strstr(line, "{\"key\":\"cw-error\",\"type\":\"string\","
                                 "\"value\":\"unknown payment ✓\"}"));
    assert_non_null(strstr(line, "{\"key\":\"latin1\",\"type\":\"string\","
                                 "\"value\":{\"base64\":\"Y2Fm6Q==\"}}"));
    assert_non_null(strstr(line, "\"reply_to\":{\"base64\":\"Y2Fm6Q==\"}"));
    assert_non_null(strstr(line, "{\"key\":\"B\",\"type\":\"u8\",\"value\":255}"));
    assert_non_null(
        strstr(line, "{\"key\":\"L\",\"type\":\"u64\",\"value\":18446744073709551615}"));
    assert_non_null(strstr(line, "{\"key\":\"V\",\"type\":\"void\"}"));
    assert_non_null(
        strstr(line, "\"type\":\"decimal\",\"value\":{\"decimals\":2,\"value\":129900}"));
    assert_non_null(strstr(line, "\"type\":\"f64\",\"value\":{\"bits\":\"7ff8"));
    assert_non_null(strstr(line, "\"format\":\"compworker-dlq\",\"version\":1"));
    assert_non_null(strstr(line, "\"timestamp\":1764020000"));
    free(line);
}

static void test_export_leaves_out_delivery_count(void **state)
{
    (void)state;
    amqp_table_entry_t h[2] = {
        entry("x-delivery-count",
              (amqp_field_value_t){.kind = AMQP_FIELD_KIND_I64, .value.i64 = 3}),
        entry("keep", (amqp_field_value_t){.kind = AMQP_FIELD_KIND_I32, .value.i32 = 1}),
    };
    amqp_envelope_t env;
    memset(&env, 0, sizeof env);
    env.message.properties._flags = AMQP_BASIC_HEADERS_FLAG;
    env.message.properties.headers = (amqp_table_t){.num_entries = 2, .entries = h};
    env.message.body = amqp_cstring_bytes("{}");
    char *line;
    size_t len;
    assert_int_equal(cw_dlq_export_line(&env, &line, &len), 0);
    assert_null(strstr(line, "x-delivery-count"));
    assert_non_null(strstr(line, "\"keep\""));
    free(line);
}

/* ---- refusals -------------------------------------------------------------- */

static void expect_refused(const char *line, const char *part)
{
    cw_dlq_record r;
    int rc = cw_dlq_import_line(line, strlen(line), &r);
    cw_dlq_record_clear(&r);
    if (rc != CW_STATUS_INVALID_MESSAGE)
        fail_msg("line accepted (%d), want refused: %s", rc, line);
    if (!strstr(cw_error_last(), part))
        fail_msg("refusal '%s' does not contain '%s'", cw_error_last(), part);
}

#define HEAD "{\"format\":\"compworker-dlq\",\"version\":1,"

static void test_import_refusals(void **state)
{
    (void)state;
    expect_refused("", "not JSON");
    expect_refused("{\"format\":", "not JSON");
    expect_refused("{\"a\":1} x", "at byte 9");
    expect_refused("[1]", "not a JSON object");
    expect_refused("{\"format\":\"other\",\"version\":1,\"properties\":{},\"body_base64\":\"\"}",
                   "not a compworker DLQ export");
    expect_refused("{\"format\":\"compworker-dlq\",\"version\":2,\"properties\":{},"
                   "\"body_base64\":\"\"}",
                   "\"version\" is not 1");
    expect_refused(HEAD "\"body_base64\":\"\"}", "\"properties\" is missing");
    expect_refused(HEAD "\"properties\":{}}", "\"body_base64\" is missing");
    expect_refused(HEAD "\"properties\":{},\"body_base64\":\"abc\"}", "body_base64: not valid");
    expect_refused(HEAD "\"properties\":{},\"body_base64\":\"\",\"extra\":1}",
                   "unknown member \"extra\"");
    expect_refused(HEAD "\"properties\":{\"colour\":\"red\"},\"body_base64\":\"\"}",
                   "properties.colour: unknown property");
    expect_refused(HEAD "\"properties\":{\"priority\":300},\"body_base64\":\"\"}",
                   "properties.priority: 300 is out of range [0, 255]");
    expect_refused(HEAD "\"properties\":{\"delivery_mode\":-1},\"body_base64\":\"\"}",
                   "properties.delivery_mode: -1 is out of range");
    expect_refused(HEAD "\"properties\":{\"message_id\":7},\"body_base64\":\"\"}",
                   "properties.message_id: expected a string");
    expect_refused(HEAD "\"properties\":{\"headers\":[{\"key\":\"a\",\"type\":\"i8\","
                        "\"value\":-129}]},\"body_base64\":\"\"}",
                   "properties.headers[0].value: -129 is out of range [-128, 127]");
    expect_refused(HEAD "\"properties\":{\"headers\":[{\"key\":\"a\",\"type\":\"u64\","
                        "\"value\":-1}]},\"body_base64\":\"\"}",
                   "properties.headers[0].value");
    expect_refused(HEAD "\"properties\":{\"headers\":[{\"key\":\"a\",\"type\":\"float\","
                        "\"value\":1}]},\"body_base64\":\"\"}",
                   "unknown type \"float\"");
    expect_refused(HEAD "\"properties\":{\"headers\":[{\"key\":\"a\",\"type\":\"void\","
                        "\"value\":1}]},\"body_base64\":\"\"}",
                   "a void value has no \"value\"");
    expect_refused(HEAD "\"properties\":{\"headers\":[{\"type\":\"i32\",\"value\":1}]},"
                        "\"body_base64\":\"\"}",
                   "properties.headers[0]: an entry needs a \"key\"");
    expect_refused(HEAD "\"properties\":{\"headers\":[{\"key\":\"a\",\"type\":\"table\","
                        "\"value\":[{\"key\":\"b\",\"type\":\"array\",\"value\":[{\"type\":"
                        "\"bool\",\"value\":3}]}]}]},\"body_base64\":\"\"}",
                   "properties.headers[0].value[0].value[0].value: expected true or false");
    expect_refused(HEAD "\"properties\":{\"headers\":[{\"key\":\"a\",\"type\":\"bytes\","
                        "\"value\":\"plain\"}]},\"body_base64\":\"\"}",
                   "expected {\"base64\"");
    expect_refused(HEAD "\"properties\":{\"headers\":[{\"key\":\"a\",\"type\":\"f64\","
                        "\"value\":{\"bits\":\"xyz\"}}]},\"body_base64\":\"\"}",
                   "are not 16 hex digits");
    char long_type[400];
    snprintf(long_type, sizeof long_type,
             HEAD "\"properties\":{\"type\":\"%0300d\"},"
                  "\"body_base64\":\"\"}",
             0);
    expect_refused(long_type, "at most 255 bytes");
}

/* ---- base64 ---------------------------------------------------------------- */

static void test_base64(void **state)
{
    (void)state;
    static const struct {
        const char *raw;
        size_t len;
        const char *enc;
    } cases[] = {
        {"", 0, ""},
        {"f", 1, "Zg=="},
        {"fo", 2, "Zm8="},
        {"foo", 3, "Zm9v"},
        {"\x00\xff\x10", 3, "AP8Q"},
        {"foobar", 6, "Zm9vYmFy"},
    };
    for (size_t i = 0; i < sizeof cases / sizeof *cases; i++) {
        char *e = cw_dlq_base64(cases[i].raw, cases[i].len);
        assert_string_equal(e, cases[i].enc);
        free(e);
        unsigned char *d;
        size_t n;
        assert_true(cw_dlq_unbase64(cases[i].enc, strlen(cases[i].enc), &d, &n));
        assert_int_equal(n, cases[i].len);
        if (n)
            assert_memory_equal(d, cases[i].raw, n);
        free(d);
    }
    const char *bad[] = {"Zg", "Zg=", "Z===", "Zm9v!", "Zg==Zg==", "Zm 9v", "=Zm9"};
    for (size_t i = 0; i < sizeof bad / sizeof *bad; i++) {
        unsigned char *d;
        size_t n;
        if (cw_dlq_unbase64(bad[i], strlen(bad[i]), &d, &n))
            fail_msg("'%s' accepted as base64", bad[i]);
    }
}

/* ---- filters, times, groups ------------------------------------------------ */

static cw_dlq_msg msg(const char *id, const char *type, const char *saga, const char *cls,
                      const char *error, int64_t failed_at)
{
    cw_dlq_msg m;
    memset(&m, 0, sizeof m);
    snprintf(m.message_id, sizeof m.message_id, "%s", id);
    snprintf(m.type, sizeof m.type, "%s", type);
    snprintf(m.saga_id, sizeof m.saga_id, "%s", saga);
    snprintf(m.error_class, sizeof m.error_class, "%s", cls);
    snprintf(m.error, sizeof m.error, "%s", error);
    m.failed_at_ms = failed_at;
    return m;
}

static void test_filters(void **state)
{
    (void)state;
    cw_dlq_msg m = msg("m-1", "payment.refund", "saga-7", "permanent", "Unknown payment pay-0043-x",
                       1000000);
    cw_dlq_filter f;
    memset(&f, 0, sizeof f);
    assert_false(cw_dlq_filter_active(&f));
    assert_true(cw_dlq_filter_match(&f, &m));
    f.type = "payment.*";
    assert_true(cw_dlq_filter_active(&f));
    assert_true(cw_dlq_filter_match(&f, &m));
    f.type = "shipment.*";
    assert_false(cw_dlq_filter_match(&f, &m));
    f.type = NULL;
    f.grep = "UNKNOWN PAYMENT";
    assert_true(cw_dlq_filter_match(&f, &m));
    f.grep = "declined";
    assert_false(cw_dlq_filter_match(&f, &m));
    f.grep = NULL;
    f.saga_id = "saga-7";
    f.error_class = "permanent";
    assert_true(cw_dlq_filter_match(&f, &m));
    f.error_class = "poison";
    assert_false(cw_dlq_filter_match(&f, &m));
    f.error_class = NULL;
    f.has_since = true;
    f.since_ms = 1000000;
    f.has_until = true;
    f.until_ms = 1000001;
    assert_true(cw_dlq_filter_match(&f, &m));
    f.until_ms = 1000000; /* until is exclusive */
    assert_false(cw_dlq_filter_match(&f, &m));
    m.failed_at_ms = 0; /* no time: outside every range */
    f.until_ms = 2000000;
    assert_false(cw_dlq_filter_match(&f, &m));
    memset(&f, 0, sizeof f);
    char *ids[] = {"m-0", "m-1"};
    f.ids = ids;
    f.n_ids = 2;
    assert_true(cw_dlq_filter_match(&f, &m));
    f.n_ids = 1;
    assert_false(cw_dlq_filter_match(&f, &m));
}

static void test_times(void **state)
{
    (void)state;
    const int64_t now = 1764020000000LL;
    int64_t t;
    assert_true(cw_dlq_parse_time("2h", now, &t));
    assert_int_equal(t, now - 2 * 3600 * 1000);
    assert_true(cw_dlq_parse_time("90s", now, &t));
    assert_int_equal(t, now - 90000);
    assert_true(cw_dlq_parse_time("30m", now, &t));
    assert_int_equal(t, now - 1800000);
    assert_true(cw_dlq_parse_time("7d", now, &t));
    assert_int_equal(t, now - 7LL * 86400000);
    assert_true(cw_dlq_parse_time("2026-11-24T21:50:03.123Z", now, &t));
    assert_int_equal(t, 1795557003123LL);
    assert_true(cw_dlq_parse_time("2026-11-24T22:50:03+01:00", now, &t));
    assert_int_equal(t, 1795557003000LL);
    assert_true(cw_dlq_parse_time("2026-11-24 21:50:03Z", now, &t));
    assert_int_equal(t, 1795557003000LL);
    /* Local time: whatever the zone, a day and its noon are 12 h apart. */
    int64_t day, noon;
    assert_true(cw_dlq_parse_time("2026-06-01", now, &day));
    assert_true(cw_dlq_parse_time("2026-06-01T12:00", now, &noon));
    assert_int_equal(noon - day, 12 * 3600 * 1000);
    const char *bad[] = {"",
                         "2",
                         "2x",
                         "h",
                         "-2h",
                         "2026-13-01",
                         "2026-11-24T25:00",
                         "yesterday",
                         "2026-11-24T21:50:03.Z",
                         "2026-11-24T21:50:03+1"};
    for (size_t i = 0; i < sizeof bad / sizeof *bad; i++) {
        if (cw_dlq_parse_time(bad[i], now, &t))
            fail_msg("'%s' accepted as a time", bad[i]);
    }
    assert_true(cw_dlq_parse_iso8601("2026-11-24T21:50:03.123Z", &t));
    assert_false(cw_dlq_parse_iso8601("2026-11-24T21:50:03", &t)); /* no zone */
}

static void test_groups(void **state)
{
    (void)state;
    cw_dlq_groups gs;
    memset(&gs, 0, sizeof gs);
    /* Many groups (past the index's first size), then counts. */
    for (int i = 0; i < 100; i++) {
        char type[32];
        snprintf(type, sizeof type, "t.%d", i);
        cw_dlq_msg m = msg("x", type, "", "permanent", "why", 100 + i);
        assert_int_equal(cw_dlq_groups_add(&gs, &m), 0);
    }
    for (int i = 0; i < 40; i++) {
        char why[64];
        snprintf(why, sizeof why, "unknown payment pay-%04d", i % 5);
        cw_dlq_msg m = msg("x", "payment.refund", "", "permanent", why, 5000 - i);
        assert_int_equal(cw_dlq_groups_add(&gs, &m), 0);
    }
    cw_dlq_msg e = msg("x", "payment.refund", "", "exhausted", "timeout", 0);
    assert_int_equal(cw_dlq_groups_add(&gs, &e), 0);
    assert_int_equal(gs.n, 102);
    cw_dlq_groups_sort(&gs);
    const cw_dlq_group *g = &gs.g[0];
    assert_string_equal(g->type, "payment.refund");
    assert_string_equal(g->error_class, "permanent");
    assert_int_equal(g->count, 40);
    assert_int_equal(g->oldest_ms, 4961);
    assert_int_equal(g->newest_ms, 5000);
    assert_int_equal(g->n_reasons, CW_DLQ_GROUP_REASONS);
    assert_int_equal(g->reasons[0].count, 8);
    assert_string_equal(g->reasons[0].text, "unknown payment pay-0000");
    assert_int_equal(g->other_reasons, 16);
    /* Adding after a sort still finds the groups. */
    assert_int_equal(cw_dlq_groups_add(&gs, &e), 0);
    assert_int_equal(gs.n, 102);
    for (size_t i = 0; i < gs.n; i++) {
        if (strcmp(gs.g[i].error_class, "exhausted") == 0) {
            assert_int_equal(gs.g[i].count, 2);
            assert_int_equal(gs.g[i].oldest_ms, 0);
        }
    }
    cw_dlq_groups_free(&gs);
}

/* ---- the replayed copy's properties ----------------------------------------- */

static void test_replay_props(void **state)
{
    (void)state;
    amqp_table_entry_t h[] = {
        entry("cw-error", (amqp_field_value_t){.kind = AMQP_FIELD_KIND_UTF8,
                                               .value.bytes = amqp_cstring_bytes("no")}),
        entry("cw-error-class", (amqp_field_value_t){.kind = AMQP_FIELD_KIND_UTF8,
                                                     .value.bytes = amqp_cstring_bytes("x")}),
        entry("cw-attempt", (amqp_field_value_t){.kind = AMQP_FIELD_KIND_I32, .value.i32 = 5}),
        entry("cw-failed-at", (amqp_field_value_t){.kind = AMQP_FIELD_KIND_UTF8,
                                                   .value.bytes = amqp_cstring_bytes("t")}),
        entry("cw-handler", (amqp_field_value_t){.kind = AMQP_FIELD_KIND_UTF8,
                                                 .value.bytes = amqp_cstring_bytes("h")}),
        entry("cw-worker", (amqp_field_value_t){.kind = AMQP_FIELD_KIND_UTF8,
                                                .value.bytes = amqp_cstring_bytes("w")}),
        entry("cw-queue", (amqp_field_value_t){.kind = AMQP_FIELD_KIND_UTF8,
                                               .value.bytes = amqp_cstring_bytes("q")}),
        entry("cw-crash-signal", (amqp_field_value_t){.kind = AMQP_FIELD_KIND_UTF8,
                                                      .value.bytes = amqp_cstring_bytes("s")}),
        entry("cw-plugin", (amqp_field_value_t){.kind = AMQP_FIELD_KIND_UTF8,
                                                .value.bytes = amqp_cstring_bytes("p")}),
        entry("cw-replayed", (amqp_field_value_t){.kind = AMQP_FIELD_KIND_I64, .value.i64 = 1}),
        entry("x-death", (amqp_field_value_t){.kind = AMQP_FIELD_KIND_VOID}),
        entry("x-first-death-queue", (amqp_field_value_t){.kind = AMQP_FIELD_KIND_VOID}),
        entry("x-delivery-count",
              (amqp_field_value_t){.kind = AMQP_FIELD_KIND_I64, .value.i64 = 4}),
        entry("cw-original-exchange",
              (amqp_field_value_t){.kind = AMQP_FIELD_KIND_UTF8,
                                   .value.bytes = amqp_cstring_bytes("cw.tasks")}),
        entry("cw-original-routing-key",
              (amqp_field_value_t){.kind = AMQP_FIELD_KIND_UTF8,
                                   .value.bytes = amqp_cstring_bytes("payment.refund")}),
        entry("tenant", (amqp_field_value_t){.kind = AMQP_FIELD_KIND_UTF8,
                                             .value.bytes = amqp_cstring_bytes("acme")}),
    };
    amqp_basic_properties_t in;
    memset(&in, 0, sizeof in);
    in._flags = AMQP_BASIC_HEADERS_FLAG | AMQP_BASIC_MESSAGE_ID_FLAG;
    in.message_id = amqp_cstring_bytes("m-1");
    in.headers = (amqp_table_t){.num_entries = sizeof h / sizeof *h, .entries = h};
    amqp_basic_properties_t out;
    amqp_table_entry_t *e;
    assert_int_equal(cw_dlq_replay_props(&in, 2, &out, &e), 0);
    assert_int_equal(out.headers.num_entries, 4);
    const char *want[] = {"cw-original-exchange", "cw-original-routing-key", "tenant",
                          "cw-replayed"};
    for (int i = 0; i < 4; i++) {
        amqp_bytes_t k = out.headers.entries[i].key;
        assert_int_equal(k.len, strlen(want[i]));
        assert_memory_equal(k.bytes, want[i], k.len);
    }
    assert_int_equal(out.headers.entries[3].value.kind, AMQP_FIELD_KIND_I32);
    assert_int_equal(out.headers.entries[3].value.value.i32, 2);
    assert_true(out._flags & AMQP_BASIC_DELIVERY_MODE_FLAG);
    assert_int_equal(out.delivery_mode, 2);
    assert_true(out._flags & AMQP_BASIC_MESSAGE_ID_FLAG);
    free(e);

    /* A message without headers gets just cw-replayed. */
    in._flags = AMQP_BASIC_MESSAGE_ID_FLAG;
    assert_int_equal(cw_dlq_replay_props(&in, 1, &out, &e), 0);
    assert_int_equal(out.headers.num_entries, 1);
    free(e);
}

/* What a DLQ copy's headers say, for display and filters. */
static void test_decode(void **state)
{
    (void)state;
    amqp_table_entry_t h[] = {
        entry("cw-error", (amqp_field_value_t){.kind = AMQP_FIELD_KIND_UTF8,
                                               .value.bytes = amqp_cstring_bytes("card declined")}),
        entry("cw-error-class",
              (amqp_field_value_t){.kind = AMQP_FIELD_KIND_UTF8,
                                   .value.bytes = amqp_cstring_bytes("permanent")}),
        entry("cw-failed-at",
              (amqp_field_value_t){.kind = AMQP_FIELD_KIND_UTF8,
                                   .value.bytes = amqp_cstring_bytes("2026-11-24T21:50:03.123Z")}),
        entry("cw-attempt", (amqp_field_value_t){.kind = AMQP_FIELD_KIND_I32, .value.i32 = 3}),
        entry("cw-replayed", (amqp_field_value_t){.kind = AMQP_FIELD_KIND_I32, .value.i32 = 2}),
        entry("cw-original-exchange",
              (amqp_field_value_t){.kind = AMQP_FIELD_KIND_UTF8,
                                   .value.bytes = amqp_cstring_bytes("cw.tasks")}),
        entry("cw-original-routing-key",
              (amqp_field_value_t){.kind = AMQP_FIELD_KIND_UTF8,
                                   .value.bytes = amqp_cstring_bytes("payment.refund")}),
    };
    cw_dlq_msg m;
    memset(&m, 0, sizeof m);
    amqp_basic_properties_t *p = &m.env.message.properties;
    p->_flags = AMQP_BASIC_HEADERS_FLAG | AMQP_BASIC_TYPE_FLAG | AMQP_BASIC_CORRELATION_ID_FLAG;
    p->type = amqp_cstring_bytes("payment.refund");
    p->correlation_id = amqp_cstring_bytes("saga-1");
    p->headers = (amqp_table_t){.num_entries = sizeof h / sizeof *h, .entries = h};
    cw_dlq_msg_decode(&m);
    assert_string_equal(m.type, "payment.refund");
    assert_string_equal(m.saga_id, "saga-1");
    assert_string_equal(m.error_class, "permanent");
    assert_string_equal(m.error, "card declined");
    assert_int_equal(m.failed_at_ms, 1795557003123LL);
    assert_int_equal(m.attempts, 3);
    assert_int_equal(m.replayed, 2);
    assert_true(m.has_orig);
    assert_string_equal(m.orig_routing_key, "payment.refund");

    /* A message the broker dead-lettered: what x-death says. */
    amqp_field_value_t rks[] = {
        {.kind = AMQP_FIELD_KIND_UTF8, .value.bytes = amqp_cstring_bytes("payment.refund")}};
    amqp_table_entry_t d[] = {
        entry("reason", (amqp_field_value_t){.kind = AMQP_FIELD_KIND_UTF8,
                                             .value.bytes = amqp_cstring_bytes("delivery_limit")}),
        entry("queue", (amqp_field_value_t){.kind = AMQP_FIELD_KIND_UTF8,
                                            .value.bytes = amqp_cstring_bytes("cw.orders")}),
        entry("exchange", (amqp_field_value_t){.kind = AMQP_FIELD_KIND_UTF8,
                                               .value.bytes = amqp_cstring_bytes("cw.tasks")}),
        entry("routing-keys",
              (amqp_field_value_t){.kind = AMQP_FIELD_KIND_ARRAY,
                                   .value.array = {.num_entries = 1, .entries = rks}}),
        entry("time",
              (amqp_field_value_t){.kind = AMQP_FIELD_KIND_TIMESTAMP, .value.u64 = 1795557003}),
    };
    amqp_field_value_t xd[] = {
        {.kind = AMQP_FIELD_KIND_TABLE, .value.table = {.num_entries = 5, .entries = d}}};
    amqp_table_entry_t h2[] = {
        entry("x-death", (amqp_field_value_t){.kind = AMQP_FIELD_KIND_ARRAY,
                                              .value.array = {.num_entries = 1, .entries = xd}})};
    cw_dlq_msg b;
    memset(&b, 0, sizeof b);
    b.env.message.properties._flags = AMQP_BASIC_HEADERS_FLAG;
    b.env.message.properties.headers = (amqp_table_t){.num_entries = 1, .entries = h2};
    cw_dlq_msg_decode(&b);
    assert_string_equal(b.error_class, "broker");
    assert_non_null(strstr(b.error, "delivery_limit"));
    assert_string_equal(b.queue, "cw.orders");
    assert_true(b.has_orig);
    assert_string_equal(b.orig_exchange, "cw.tasks");
    assert_string_equal(b.orig_routing_key, "payment.refund");
    assert_int_equal(b.failed_at_ms, 1795557003000LL);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_roundtrip_everything),
        cmocka_unit_test(test_roundtrip_minimal_and_empty_body),
        cmocka_unit_test(test_export_readable_forms),
        cmocka_unit_test(test_export_leaves_out_delivery_count),
        cmocka_unit_test(test_import_refusals),
        cmocka_unit_test(test_base64),
        cmocka_unit_test(test_filters),
        cmocka_unit_test(test_times),
        cmocka_unit_test(test_groups),
        cmocka_unit_test(test_replay_props),
        cmocka_unit_test(test_decode),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
