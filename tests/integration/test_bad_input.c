/* Bad input: a corpus of hostile messages, sent with a real client
 * (rabbitmq-c) to a pool of the real compworker executable running
 * tests/plugins/ledger_plugin.so, against a real RabbitMQ node.
 *
 * Every message either breaks the message contract (README, "The message
 * contract") and must end in the pool's DLQ with cw-error-class=invalid, a
 * reason naming what is wrong, its body byte for byte and its properties and
 * headers as sent; or is in fact valid, however odd, and must be applied
 * exactly once. Throughout, the one worker process must keep serving (same
 * PID, never restarted, no crash in its log) and its memory must stay
 * bounded: a 64 MiB body costs one body's worth while it is held, and
 * sending the corpus again and again does not make the worker grow.
 *
 * Each message carries a header "bad-case" naming its case, so that its DLQ
 * copy is found even when its message_id is missing or mangled. */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>

#include <errno.h>
#include <math.h>
#include <signal.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/types.h>
#include <unistd.h>

#include <amqp.h>
#include <amqp_framing.h>
#include <amqp_tcp_socket.h>
#include <sqlite3.h>

#include "cwtest.h"

#define WAIT_MS CWTEST_TIMEOUT_MS
#define STOP_MS 15000
#define CH_PUB 1   /* the env's publishing channel, with confirms (cwtest.h) */
#define CH_QUERY 2 /* the env's query channel (cwtest.h) */

#if defined(__SANITIZE_ADDRESS__)
#define CW_ASAN 1
#elif defined(__has_feature)
#if __has_feature(address_sanitizer)
#define CW_ASAN 1
#endif
#endif

#define MIB (1024u * 1024u)
#define MAX_BODY MIB          /* the pool's max_body_size */
#define HUGE_BODY (64u * MIB) /* the 64 MiB body */
#define DEEP_LEVELS 100000    /* "deep nesting" */
#define REPEAT_ROUNDS 12      /* the corpus again, to see memory stay flat */
/* Above the steady state plus one 64 MiB body: the frames, buffers and
 * bookkeeping around it; under ASan also the shadow of each body's memory
 * (an eighth of it, kept after the body is freed) and its redzones. */
#ifdef CW_ASAN
#define HWM_SLACK_KIB (40 * 1024)
#else
#define HWM_SLACK_KIB (24 * 1024)
#endif
#define WARM_ROUNDS 3 /* rounds compared at each end of the repeats */
/* What the worker may still grow by between the first and the last rounds:
 * SQLite's page caches (the store's and the ledger plugin's, 2 MB each at
 * most) fill over the first rounds. The frames rabbitmq-c kept before
 * cw__broker_consume() made it grow by about 4 MiB a round. */
#define GROWTH_LIMIT_KIB (3 * 1024)

/* ---- the corpus ----------------------------------------------------------- */

typedef enum expect {
    TO_DLQ,
    TO_APPLY
} expect;

#define MAX_HEADERS 48
#define MAX_CASES 256

#define CW_TEST_PRINTF(f, a) __attribute__((format(printf, f, a)))

typedef struct hostile {
    char name[64];
    expect expect;
    const char *want;        /* TO_DLQ: in cw-error (case-insensitive) */
    const char *exchange;    /* "cw.tasks" or "" (straight to the pool queue) */
    const char *routing_key; /* NULL: the type for cw.tasks, the pool queue for "" */
    amqp_basic_properties_t props;
    amqp_table_entry_t headers[MAX_HEADERS];
    amqp_bytes_t body;
    char id[160];         /* TO_APPLY: the message_id the ledger shows */
    int attempt;          /* TO_APPLY: the attempt the handler sees */
    bool in_repeats;      /* sent again in every repeat round */
    const char *may_drop; /* TO_DLQ: a header the copy may leave out to fit one
                              * frame, saying so in cw-dropped-headers */
} hostile;

typedef struct corpus {
    hostile *cases;
    size_t n;
    amqp_pool_t pool; /* every string, table and body of the corpus */
} corpus;

static void *palloc(corpus *c, size_t n)
{
    void *p = amqp_pool_alloc(&c->pool, n ? n : 1);
    if (!p)
        fail_msg("out of memory building the corpus");
    return p;
}

static amqp_bytes_t pbytes(corpus *c, const void *data, size_t len)
{
    amqp_bytes_t b = {.len = len, .bytes = palloc(c, len)};
    memcpy(b.bytes, data, len);
    return b;
}

static amqp_bytes_t pstr(corpus *c, const char *s)
{
    return pbytes(c, s, strlen(s));
}

/* A body of `len` bytes from the pool (uninitialised). */
static amqp_bytes_t pbody(corpus *c, size_t len)
{
    return (amqp_bytes_t){.len = len, .bytes = palloc(c, len)};
}

static void set_header(hostile *h, amqp_table_entry_t e)
{
    amqp_table_t *t = &h->props.headers;
    if (t->num_entries >= MAX_HEADERS)
        fail_msg("case %s: too many headers", h->name);
    h->headers[t->num_entries++] = e;
    t->entries = h->headers;
}

static amqp_table_entry_t entry(const char *key, amqp_field_value_t v)
{
    return (amqp_table_entry_t){.key = amqp_cstring_bytes(key), .value = v};
}

static amqp_field_value_t utf8(amqp_bytes_t b)
{
    amqp_field_value_t v = {.kind = AMQP_FIELD_KIND_UTF8};
    v.value.bytes = b;
    return v;
}

/* A case with the defaults of a valid task: published to cw.tasks as type
 * it.apply, message_id "bad-<name>" (TO_DLQ) or "ok-<name>" (TO_APPLY),
 * content_type application/json, a correlation_id, persistent, the header
 * bad-case, and the body {"case":"<name>"}. Callers change what makes the
 * case. */
static hostile *add(corpus *c, const char *name, expect e, const char *want)
{
    /* Allocated once: each case's header table points into the case. */
    if (!c->cases && !(c->cases = calloc(MAX_CASES, sizeof *c->cases)))
        fail_msg("out of memory");
    if (c->n == MAX_CASES)
        fail_msg("more than %d cases: raise MAX_CASES", MAX_CASES);
    hostile *h = &c->cases[c->n++];
    memset(h, 0, sizeof *h);
    snprintf(h->name, sizeof h->name, "%s", name);
    h->expect = e;
    h->want = want;
    h->exchange = "cw.tasks";
    h->in_repeats = true;
    snprintf(h->id, sizeof h->id, "%s-%s", e == TO_APPLY ? "ok" : "bad", name);
    amqp_basic_properties_t *p = &h->props;
    p->_flags = AMQP_BASIC_MESSAGE_ID_FLAG | AMQP_BASIC_TYPE_FLAG | AMQP_BASIC_CONTENT_TYPE_FLAG |
                AMQP_BASIC_CORRELATION_ID_FLAG | AMQP_BASIC_DELIVERY_MODE_FLAG |
                AMQP_BASIC_HEADERS_FLAG;
    p->message_id = pstr(c, h->id);
    p->type = amqp_cstring_bytes("it.apply");
    p->content_type = amqp_cstring_bytes("application/json");
    p->correlation_id = amqp_cstring_bytes("saga-bad-input");
    p->delivery_mode = AMQP_DELIVERY_PERSISTENT;
    set_header(h, entry("bad-case", utf8(pstr(c, name))));
    char body[128];
    snprintf(body, sizeof body, "{\"case\":\"%s\"}", name);
    h->body = pstr(c, body);
    return h;
}

/* A case sent straight to the pool queue through the default exchange
 * (a type no binding routes). */
static void to_queue(hostile *h)
{
    h->exchange = "";
}

static void body_str(corpus *c, hostile *h, const char *s)
{
    h->body = pstr(c, s);
}

static void body_bytes(corpus *c, hostile *h, const void *p, size_t n)
{
    h->body = pbytes(c, p, n);
}

/* {"case":"<name>","s":"<middle>"} with `middle` raw bytes. */
static void body_with_string(corpus *c, hostile *h, const void *middle, size_t n)
{
    char head[128];
    int k = snprintf(head, sizeof head, "{\"case\":\"%s\",\"s\":\"", h->name);
    amqp_bytes_t b = pbody(c, (size_t)k + n + 2);
    memcpy(b.bytes, head, (size_t)k);
    memcpy((char *)b.bytes + k, middle, n);
    memcpy((char *)b.bytes + k + n, "\"}", 2);
    h->body = b;
}

/* {"case":"<name>","d":<levels-1 of open><1><close>} : `levels` levels of
 * nesting in all, the outer object included. `open` "[" or "{\"a\":". */
static void body_nested(corpus *c, hostile *h, size_t levels, const char *open, char close,
                        bool closed)
{
    char head[128];
    int k = snprintf(head, sizeof head, "{\"case\":\"%s\",\"d\":", h->name);
    size_t olen = strlen(open), inner = levels - 1;
    size_t len = (size_t)k + inner * olen + 1 + (closed ? inner + 1 : 0);
    amqp_bytes_t b = pbody(c, len);
    char *p = b.bytes;
    memcpy(p, head, (size_t)k);
    p += k;
    for (size_t i = 0; i < inner; i++, p += olen)
        memcpy(p, open, olen);
    *p++ = '1';
    if (closed) {
        memset(p, close, inner);
        p += inner;
        *p++ = '}';
    }
    h->body = b;
}

/* {"case":"<name>","pad":"xxx..."} of exactly `len` bytes. */
static void body_padded(corpus *c, hostile *h, size_t len)
{
    char head[128];
    int k = snprintf(head, sizeof head, "{\"case\":\"%s\",\"pad\":\"", h->name);
    amqp_bytes_t b = pbody(c, len);
    memcpy(b.bytes, head, (size_t)k);
    memset((char *)b.bytes + k, 'x', len - (size_t)k - 2);
    memcpy((char *)b.bytes + len - 2, "\"}", 2);
    h->body = b;
}

/* A header of every AMQP 0-9-1 field type RabbitMQ carries, with nested
 * tables, arrays, arrays of tables and tables of arrays, empty ones, and
 * strings and byte arrays holding NUL bytes and invalid UTF-8. (IEEE NaN and
 * infinities are left out: RabbitMQ closes the publisher's connection on
 * them, so they never reach a worker.) */
static void every_field_type(corpus *c, hostile *h)
{
    static const unsigned char junk[] = {'a', 0, 0xff, 0xfe, 0xc0, 0xaf, '"', '\\', 'z'};
    amqp_field_value_t v;

#define SCALAR(key_, kind_, member_, value_)                                                       \
    do {                                                                                           \
        memset(&v, 0, sizeof v);                                                                   \
        v.kind = (kind_);                                                                          \
        v.value.member_ = (value_);                                                                \
        set_header(h, entry((key_), v));                                                           \
    } while (0)
    SCALAR("x-bool-true", AMQP_FIELD_KIND_BOOLEAN, boolean, 1);
    SCALAR("x-bool-false", AMQP_FIELD_KIND_BOOLEAN, boolean, 0);
    SCALAR("x-i8", AMQP_FIELD_KIND_I8, i8, INT8_MIN);
    SCALAR("x-u8", AMQP_FIELD_KIND_U8, u8, UINT8_MAX);
    SCALAR("x-i16", AMQP_FIELD_KIND_I16, i16, INT16_MIN);
    SCALAR("x-u16", AMQP_FIELD_KIND_U16, u16, UINT16_MAX);
    SCALAR("x-i32", AMQP_FIELD_KIND_I32, i32, INT32_MIN);
    SCALAR("x-u32", AMQP_FIELD_KIND_U32, u32, UINT32_MAX);
    SCALAR("x-i64", AMQP_FIELD_KIND_I64, i64, INT64_MIN);
    SCALAR("x-u64", AMQP_FIELD_KIND_U64, u64, UINT64_MAX);
    SCALAR("x-f32", AMQP_FIELD_KIND_F32, f32, -1.5e38f);
    SCALAR("x-f64", AMQP_FIELD_KIND_F64, f64, 1e300);
    SCALAR("x-f64-tiny", AMQP_FIELD_KIND_F64, f64, 4.9e-324);
    SCALAR("x-timestamp", AMQP_FIELD_KIND_TIMESTAMP, u64, UINT64_MAX);
    memset(&v, 0, sizeof v);
    v.kind = AMQP_FIELD_KIND_DECIMAL;
    v.value.decimal.decimals = 255;
    v.value.decimal.value = UINT32_MAX;
    set_header(h, entry("x-decimal", v));
    memset(&v, 0, sizeof v);
    v.kind = AMQP_FIELD_KIND_VOID;
    set_header(h, entry("x-void", v));
    set_header(h, entry("x-longstr", utf8(pbytes(c, junk, sizeof junk))));
    set_header(h, entry("x-empty-str", utf8(amqp_empty_bytes)));
    memset(&v, 0, sizeof v);
    v.kind = AMQP_FIELD_KIND_BYTES;
    v.value.bytes = pbytes(c, junk, sizeof junk);
    set_header(h, entry("x-bytes", v));
#undef SCALAR

    /* A table three levels deep, with an array of tables inside. */
    amqp_table_entry_t *inner = palloc(c, 3 * sizeof *inner);
    inner[0] = entry("leaf", utf8(pstr(c, "deep")));
    memset(&inner[1].value, 0, sizeof inner[1].value);
    inner[1].key = amqp_cstring_bytes("n");
    inner[1].value.kind = AMQP_FIELD_KIND_I64;
    inner[1].value.value.i64 = -7;
    inner[2].key = amqp_cstring_bytes("empty-table");
    inner[2].value.kind = AMQP_FIELD_KIND_TABLE;
    inner[2].value.value.table = amqp_empty_table;

    amqp_field_value_t *tables = palloc(c, 2 * sizeof *tables);
    for (int i = 0; i < 2; i++) {
        tables[i].kind = AMQP_FIELD_KIND_TABLE;
        tables[i].value.table.num_entries = 3;
        tables[i].value.table.entries = inner;
    }
    amqp_table_entry_t *mid = palloc(c, 2 * sizeof *mid);
    mid[0].key = amqp_cstring_bytes("inner");
    mid[0].value.kind = AMQP_FIELD_KIND_TABLE;
    mid[0].value.value.table = (amqp_table_t){.num_entries = 3, .entries = inner};
    mid[1].key = amqp_cstring_bytes("array-of-tables");
    mid[1].value.kind = AMQP_FIELD_KIND_ARRAY;
    mid[1].value.value.array = (amqp_array_t){.num_entries = 2, .entries = tables};
    memset(&v, 0, sizeof v);
    v.kind = AMQP_FIELD_KIND_TABLE;
    v.value.table = (amqp_table_t){.num_entries = 2, .entries = mid};
    set_header(h, entry("x-table", v));

    /* An array of mixed kinds, an array inside it, an empty one. */
    amqp_field_value_t *nested = palloc(c, 2 * sizeof *nested);
    memset(nested, 0, 2 * sizeof *nested);
    nested[0].kind = AMQP_FIELD_KIND_BOOLEAN;
    nested[0].value.boolean = 1;
    nested[1].kind = AMQP_FIELD_KIND_ARRAY;
    nested[1].value.array = (amqp_array_t){.num_entries = 0, .entries = NULL};
    amqp_field_value_t *mixed = palloc(c, 5 * sizeof *mixed);
    memset(mixed, 0, 5 * sizeof *mixed);
    mixed[0].kind = AMQP_FIELD_KIND_I32;
    mixed[0].value.i32 = 42;
    mixed[1] = utf8(pstr(c, "forty-two"));
    mixed[2].kind = AMQP_FIELD_KIND_VOID;
    mixed[3].kind = AMQP_FIELD_KIND_ARRAY;
    mixed[3].value.array = (amqp_array_t){.num_entries = 2, .entries = nested};
    mixed[4].kind = AMQP_FIELD_KIND_TABLE;
    mixed[4].value.table = (amqp_table_t){.num_entries = 2, .entries = mid};
    memset(&v, 0, sizeof v);
    v.kind = AMQP_FIELD_KIND_ARRAY;
    v.value.array = (amqp_array_t){.num_entries = 5, .entries = mixed};
    set_header(h, entry("x-array", v));
    memset(&v, 0, sizeof v);
    v.kind = AMQP_FIELD_KIND_ARRAY;
    set_header(h, entry("x-empty-array", v));
}

/* A table nested `levels` deep: {"n": {"n": ... {} ...}}. */
static void deep_header(corpus *c, hostile *h, size_t levels)
{
    amqp_table_t t = amqp_empty_table;
    for (size_t i = 0; i < levels; i++) {
        amqp_table_entry_t *e = palloc(c, sizeof *e);
        e->key = amqp_cstring_bytes("n");
        e->value.kind = AMQP_FIELD_KIND_TABLE;
        e->value.value.table = t;
        t = (amqp_table_t){.num_entries = 1, .entries = e};
    }
    amqp_field_value_t v = {.kind = AMQP_FIELD_KIND_TABLE};
    v.value.table = t;
    set_header(h, entry("x-deep", v));
}

static void attempt_header(hostile *h, amqp_field_value_t v)
{
    set_header(h, entry("cw-attempt", v));
}

static amqp_field_value_t int_value(char kind, int64_t n)
{
    amqp_field_value_t v;
    memset(&v, 0, sizeof v);
    v.kind = (uint8_t)kind;
    switch (kind) {
    case AMQP_FIELD_KIND_I8: v.value.i8 = (int8_t)n; break;
    case AMQP_FIELD_KIND_U8: v.value.u8 = (uint8_t)n; break;
    case AMQP_FIELD_KIND_I16: v.value.i16 = (int16_t)n; break;
    case AMQP_FIELD_KIND_U16: v.value.u16 = (uint16_t)n; break;
    case AMQP_FIELD_KIND_I32: v.value.i32 = (int32_t)n; break;
    case AMQP_FIELD_KIND_U32: v.value.u32 = (uint32_t)n; break;
    case AMQP_FIELD_KIND_I64: v.value.i64 = n; break;
    default: fail_msg("int_value: kind %c", kind);
    }
    return v;
}

static void build_corpus(corpus *c, const char *queue)
{
    hostile *h;
    amqp_field_value_t v;
    (void)queue;

    /* ---- the body ---- */
    h = add(c, "not-json", TO_DLQ, "not JSON");
    body_str(c, h, "this is not JSON {");
    h = add(c, "truncated", TO_DLQ, "truncated");
    body_str(c, h, "{\"case\":\"truncated\",\"amount\":12");
    h = add(c, "truncated-in-string", TO_DLQ, "not JSON");
    body_str(c, h, "{\"case\":\"truncated-in-string\",\"note\":\"abc");
    h = add(c, "nested-100k-objects", TO_DLQ, "nesting too deep");
    body_nested(c, h, DEEP_LEVELS, "{\"a\":", '}', true);
    h = add(c, "nested-100k-arrays", TO_DLQ, "nesting too deep");
    body_nested(c, h, DEEP_LEVELS, "[", ']', true);
    h = add(c, "nested-100k-unclosed", TO_DLQ, "nesting too deep");
    body_nested(c, h, DEEP_LEVELS, "[", ']', false);
    h = add(c, "nested-64-levels", TO_APPLY, NULL); /* the contract's limit */
    body_nested(c, h, 64, "[", ']', true);
    h = add(c, "nested-65-levels", TO_DLQ, "nesting too deep");
    body_nested(c, h, 65, "[", ']', true);
    h = add(c, "body-64MiB", TO_DLQ, "too large");
    body_padded(c, h, HUGE_BODY);
    h->in_repeats = false; /* sent on its own, see test_hostile_messages */
    h = add(c, "body-max-size", TO_APPLY, NULL);
    body_padded(c, h, MAX_BODY);
    h = add(c, "body-max-size-plus-1", TO_DLQ, "too large");
    body_padded(c, h, MAX_BODY + 1);

    static const struct {
        const char *name;
        const char *bytes;
    } utf8_bad[] = {
        {"utf8-lone-continuation", "\x80"},
        {"utf8-ff", "\xff"},
        {"utf8-overlong-slash", "\xc0\xaf"},
        {"utf8-overlong-nul", "\xc0\x80"},
        {"utf8-overlong-3byte", "\xe0\x80\xaf"},
        {"utf8-surrogate", "\xed\xa0\x80"},
        {"utf8-above-10ffff", "\xf4\x90\x80\x80"},
        {"utf8-f5", "\xf5\x80\x80\x80"},
        {"utf8-truncated", "\xe2\x82"},
    };
    for (size_t i = 0; i < sizeof utf8_bad / sizeof *utf8_bad; i++) {
        h = add(c, utf8_bad[i].name, TO_DLQ, "UTF-8");
        body_with_string(c, h, utf8_bad[i].bytes, strlen(utf8_bad[i].bytes));
    }
    h = add(c, "utf8-invalid-key", TO_DLQ, "UTF-8");
    body_str(c, h, "{\"case\":\"utf8-invalid-key\",\"\xfe\":1}");
    h = add(c, "utf8-bom", TO_DLQ, "not JSON");
    body_str(c, h, "\xef\xbb\xbf{\"case\":\"utf8-bom\"}");
    h = add(c, "utf8-valid-4-byte", TO_APPLY, NULL); /* U+10FFFF and an emoji: fine */
    body_with_string(c, h, "\xf4\x8f\xbf\xbf \xf0\x9f\x92\xb8 \xc3\xa9", 12);

    h = add(c, "nul-in-string", TO_DLQ, "NUL");
    body_with_string(c, h, "a\0b", 3);
    h = add(c, "nul-after-object", TO_DLQ, "NUL");
    body_bytes(c, h, "{\"case\":\"nul-after-object\"}\0", 28);
    h = add(c, "nul-only", TO_DLQ, "NUL");
    body_bytes(c, h, "\0\0\0\0", 4);
    h = add(c, "nul-escaped", TO_APPLY, NULL); /* \u0000 is JSON */
    body_str(c, h, "{\"case\":\"nul-escaped\",\"s\":\"a\\u0000b\"}");

    h = add(c, "body-empty", TO_DLQ, "empty");
    h->body = amqp_empty_bytes;
    h = add(c, "body-blank", TO_DLQ, "not JSON");
    body_str(c, h, " \n\t ");
    h = add(c, "json-array", TO_DLQ, "not an object");
    body_str(c, h, "[\"json-array\"]");
    h = add(c, "json-null", TO_DLQ, "not an object");
    body_str(c, h, "null");
    h = add(c, "json-number", TO_DLQ, "not an object");
    body_str(c, h, "12");
    h = add(c, "json-string", TO_DLQ, "not an object");
    body_str(c, h, "\"json-string\"");
    h = add(c, "trailing-data", TO_DLQ, "not JSON");
    body_str(c, h, "{\"case\":\"trailing-data\"} trailing");
    h = add(c, "two-objects", TO_DLQ, "not JSON");
    body_str(c, h, "{\"case\":\"two-objects\"}{\"b\":2}");
    h = add(c, "nan-literal", TO_DLQ, "not JSON");
    body_str(c, h, "{\"case\":\"nan-literal\",\"n\":NaN}");
    h = add(c, "infinity-literal", TO_DLQ, "not JSON");
    body_str(c, h, "{\"case\":\"infinity-literal\",\"n\":-Infinity}");
    h = add(c, "single-quotes", TO_DLQ, "not JSON");
    body_str(c, h, "{'case':'single-quotes'}");
    h = add(c, "trailing-comma", TO_DLQ, "not JSON");
    body_str(c, h, "{\"case\":\"trailing-comma\",}");
    h = add(c, "comment", TO_DLQ, "not JSON");
    body_str(c, h, "{\"case\":\"comment\"/* hi */}");
    h = add(c, "raw-control-char", TO_DLQ, "not JSON");
    body_str(c, h, "{\"case\":\"raw-control-char\",\"s\":\"a\tb\"}");
    h = add(c, "bad-escape", TO_DLQ, "not JSON");
    body_str(c, h, "{\"case\":\"bad-escape\",\"s\":\"\\x41\"}");
    h = add(c, "integer-beyond-64-bits", TO_DLQ, "out of range");
    body_str(c, h, "{\"case\":\"integer-beyond-64-bits\",\"n\":123456789012345678901234567890}");
    h = add(c, "number-beyond-double", TO_DLQ, "out of range");
    body_str(c, h, "{\"case\":\"number-beyond-double\",\"n\":1e400}");
    h = add(c, "numbers-at-the-limits", TO_APPLY, NULL);
    body_str(c, h,
             "{\"case\":\"numbers-at-the-limits\",\"a\":-9223372036854775808,"
             "\"b\":18446744073709551615,\"c\":1.7976931348623157e308,\"d\":5e-324,"
             "\"e\":-0,\"f\":1E-400}");
    h = add(c, "duplicate-keys", TO_APPLY, NULL);
    body_str(c, h, "{\"case\":\"duplicate-keys\",\"a\":1,\"a\":2}");
    h = add(c, "lone-surrogate-escape", TO_APPLY, NULL); /* JSON's grammar allows it */
    body_str(c, h, "{\"case\":\"lone-surrogate-escape\",\"s\":\"\\ud800\"}");
    {
        /* 40,000 keys in one object, under max_body_size. */
        h = add(c, "many-keys", TO_APPLY, NULL);
        size_t cap = 40000 * 16 + 64, k = 0;
        amqp_bytes_t b = pbody(c, cap);
        char *p = b.bytes;
        k += (size_t)snprintf(p, cap, "{\"case\":\"many-keys\"");
        for (int i = 0; i < 40000; i++)
            k += (size_t)snprintf(p + k, cap - k, ",\"k%d\":%d", i, i);
        p[k++] = '}';
        b.len = k;
        h->body = b;
    }

    /* ---- the properties ---- */
    h = add(c, "no-message-id", TO_DLQ, "message_id");
    h->props._flags &= ~AMQP_BASIC_MESSAGE_ID_FLAG;
    h = add(c, "empty-message-id", TO_DLQ, "message_id");
    h->props.message_id = amqp_empty_bytes;
    {
        char id[256];
        memset(id, 'i', sizeof id);
        h = add(c, "message-id-129", TO_DLQ, "message_id");
        h->props.message_id = pbytes(c, id, 129);
        /* 255 bytes: the most a short string property holds (a client
         * cannot send more: see test_message_id_10k). */
        h = add(c, "message-id-255", TO_DLQ, "message_id");
        h->props.message_id = pbytes(c, id, 255);
        h = add(c, "message-id-128", TO_APPLY, NULL);
        memcpy(id, "ok-", 3);
        h->props.message_id = pbytes(c, id, 128);
        snprintf(h->id, sizeof h->id, "%.128s", id);
    }
    h = add(c, "message-id-space", TO_DLQ, "message_id");
    h->props.message_id = pstr(c, "bad id");
    h = add(c, "message-id-control", TO_DLQ, "message_id");
    h->props.message_id = pstr(c, "bad\x01id");
    h = add(c, "message-id-nul", TO_DLQ, "message_id");
    h->props.message_id = pbytes(c, "bad\0id", 6);
    h = add(c, "message-id-utf8", TO_DLQ, "message_id");
    h->props.message_id = pstr(c, "bad-\xc3\xa9");
    h = add(c, "message-id-invalid-utf8", TO_DLQ, "message_id");
    h->props.message_id = pstr(c, "bad-\xff");
    h = add(c, "message-id-in-a-header-only", TO_DLQ, "message_id");
    h->props._flags &= ~AMQP_BASIC_MESSAGE_ID_FLAG;
    {
        amqp_bytes_t b = pbody(c, 10240);
        memset(b.bytes, 'm', b.len);
        set_header(h, entry("message_id", utf8(b)));
    }

    h = add(c, "unknown-type", TO_DLQ, "no handler");
    to_queue(h);
    h->props.type = amqp_cstring_bytes("it.unknown");
    h = add(c, "no-type", TO_DLQ, "no type");
    to_queue(h);
    h->props._flags &= ~AMQP_BASIC_TYPE_FLAG;
    h = add(c, "empty-type", TO_DLQ, "no type");
    to_queue(h);
    h->props.type = amqp_empty_bytes;
    h = add(c, "type-bad-chars", TO_DLQ, "type is not");
    to_queue(h);
    h->props.type = pstr(c, "it.apply; rm -rf /");
    h = add(c, "type-255-unknown", TO_DLQ, "no handler");
    to_queue(h);
    {
        char t[255];
        memset(t, 't', sizeof t);
        h->props.type = pbytes(c, t, sizeof t);
    }
    h = add(c, "type-routed-elsewhere", TO_DLQ, "no handler");
    h->props.type = amqp_cstring_bytes("it.other"); /* routed as it.apply, typed other */

    h = add(c, "content-type-text", TO_DLQ, "content_type");
    h->props.content_type = amqp_cstring_bytes("text/plain");
    h = add(c, "content-type-jsonp", TO_DLQ, "content_type");
    h->props.content_type = amqp_cstring_bytes("application/jsonp");
    h = add(c, "content-type-empty", TO_DLQ, "content_type");
    h->props.content_type = amqp_empty_bytes;
    h = add(c, "content-type-xml", TO_DLQ, "content_type");
    h->props.content_type = amqp_cstring_bytes("application/xml; charset=utf-8");
    h = add(c, "content-type-charset", TO_APPLY, NULL);
    h->props.content_type = amqp_cstring_bytes("application/json; charset=utf-8");
    h = add(c, "content-type-upper", TO_APPLY, NULL);
    h->props.content_type = amqp_cstring_bytes("APPLICATION/JSON");
    h = add(c, "content-type-absent", TO_APPLY, NULL);
    h->props._flags &= ~AMQP_BASIC_CONTENT_TYPE_FLAG;

    h = add(c, "correlation-id-control", TO_DLQ, "correlation_id");
    h->props.correlation_id = pstr(c, "saga\x7f");
    h = add(c, "correlation-id-255", TO_APPLY, NULL);
    {
        char s[255];
        memset(s, 's', sizeof s);
        h->props.correlation_id = pbytes(c, s, sizeof s);
    }
    /* A producer's expiration keeps the task from waiting for ever in the
     * pool queue; its DLQ copy must not vanish from the DLQ with it. */
    h = add(c, "expiration-on-invalid", TO_DLQ, "no handler");
    to_queue(h);
    h->props.type = amqp_cstring_bytes("it.unknown");
    h->props._flags |= AMQP_BASIC_EXPIRATION_FLAG;
    h->props.expiration = amqp_cstring_bytes("30000");
    h = add(c, "every-property", TO_APPLY, NULL);
    {
        amqp_basic_properties_t *p = &h->props;
        p->_flags |= AMQP_BASIC_CONTENT_ENCODING_FLAG | AMQP_BASIC_PRIORITY_FLAG |
                     AMQP_BASIC_REPLY_TO_FLAG | AMQP_BASIC_TIMESTAMP_FLAG | AMQP_BASIC_APP_ID_FLAG |
                     AMQP_BASIC_CLUSTER_ID_FLAG;
        p->content_encoding = amqp_cstring_bytes("x-unheard-of");
        p->priority = 255;
        p->reply_to = pstr(c, "amq.rabbitmq.reply-to; \x01\xff");
        p->timestamp = UINT64_MAX;
        p->app_id = pstr(c, "\xff\xfe app");
        p->cluster_id = pstr(c, "cluster \x02");
        p->delivery_mode = 1; /* transient: the worker does not care */
    }

    /* ---- the headers ---- */
    h = add(c, "headers-every-type", TO_APPLY, NULL);
    every_field_type(c, h);
    h = add(c, "headers-every-type-invalid", TO_DLQ, "no handler");
    to_queue(h);
    h->props.type = amqp_cstring_bytes("it.unknown");
    every_field_type(c, h);
    h = add(c, "headers-nested-10k", TO_APPLY, NULL);
    deep_header(c, h, 10000);
    h = add(c, "headers-nested-10k-invalid", TO_DLQ, "not JSON");
    body_str(c, h, "{");
    deep_header(c, h, 10000);
    h = add(c, "headers-forged-failure", TO_APPLY, NULL);
    set_header(h, entry("cw-error-class", utf8(pstr(c, "invalid"))));
    set_header(h, entry("cw-error", utf8(pstr(c, "forged by the producer"))));
    h = add(c, "headers-forged-failure-invalid", TO_DLQ, "no handler");
    to_queue(h);
    h->props.type = amqp_cstring_bytes("it.unknown");
    set_header(h, entry("cw-error-class", utf8(pstr(c, "permanent"))));
    set_header(h, entry("cw-error", utf8(pstr(c, "forged by the producer"))));
    set_header(h, entry("cw-queue", utf8(pstr(c, "cw.forged"))));

    h = add(c, "attempt-minus-1", TO_DLQ, "cw-attempt");
    attempt_header(h, int_value(AMQP_FIELD_KIND_I32, -1));
    h = add(c, "attempt-i8-minus-1", TO_DLQ, "cw-attempt");
    attempt_header(h, int_value(AMQP_FIELD_KIND_I8, -1));
    h = add(c, "attempt-int64-max", TO_DLQ, "cw-attempt");
    attempt_header(h, int_value(AMQP_FIELD_KIND_I64, INT64_MAX));
    h = add(c, "attempt-int64-min", TO_DLQ, "cw-attempt");
    attempt_header(h, int_value(AMQP_FIELD_KIND_I64, INT64_MIN));
    h = add(c, "attempt-2-pow-63", TO_DLQ, "cw-attempt");
    memset(&v, 0, sizeof v);
    v.kind = AMQP_FIELD_KIND_U64;
    v.value.u64 = UINT64_C(1) << 63;
    attempt_header(h, v);
    h = add(c, "attempt-uint32-max", TO_DLQ, "cw-attempt");
    memset(&v, 0, sizeof v);
    v.kind = AMQP_FIELD_KIND_U32;
    v.value.u32 = UINT32_MAX;
    attempt_header(h, v);
    h = add(c, "attempt-1e300", TO_DLQ, "cw-attempt");
    memset(&v, 0, sizeof v);
    v.kind = AMQP_FIELD_KIND_F64;
    v.value.f64 = 1e300;
    attempt_header(h, v);
    h = add(c, "attempt-string", TO_DLQ, "cw-attempt");
    attempt_header(h, utf8(pstr(c, "2")));
    h = add(c, "attempt-void", TO_DLQ, "cw-attempt");
    memset(&v, 0, sizeof v);
    v.kind = AMQP_FIELD_KIND_VOID;
    attempt_header(h, v);
    h = add(c, "attempt-table", TO_DLQ, "cw-attempt");
    memset(&v, 0, sizeof v);
    v.kind = AMQP_FIELD_KIND_TABLE;
    attempt_header(h, v);
    h = add(c, "attempt-i8-3", TO_APPLY, NULL);
    attempt_header(h, int_value(AMQP_FIELD_KIND_I8, 3));
    h->attempt = 3;
    h = add(c, "attempt-other-case", TO_APPLY, NULL); /* header names are case-sensitive */
    set_header(h, entry("CW-Attempt", int_value(AMQP_FIELD_KIND_I32, -1)));
}

static void corpus_free(corpus *c)
{
    free(c->cases);
    empty_amqp_pool(&c->pool);
    memset(c, 0, sizeof *c);
}

/* The corpus of the running test, freed by teardown() however it ends. */
static corpus the_corpus;

static int teardown(void **state)
{
    corpus_free(&the_corpus);
    return cwtest_teardown(state);
}

static size_t count_expect(const corpus *c, expect e, bool repeats_only)
{
    size_t n = 0;
    for (size_t i = 0; i < c->n; i++)
        n += c->cases[i].expect == e && (!repeats_only || c->cases[i].in_repeats);
    return n;
}

/* ---- problems --------------------------------------------------------------- */

/* What the checks of one pass found, reported together: a corpus test that
 * stops at its first difference hides the others. */
static char problems[32768];
static size_t problems_len;
static unsigned problems_n;

static void problem(const char *fmt, ...) CW_TEST_PRINTF(1, 2);

static void problem(const char *fmt, ...)
{
    va_list ap;
    problems_n++;
    if (problems_len + 2 >= sizeof problems)
        return;
    va_start(ap, fmt);
    int k = vsnprintf(problems + problems_len, sizeof problems - problems_len - 1, fmt, ap);
    va_end(ap);
    if (k < 0)
        return;
    problems_len += (size_t)k;
    if (problems_len > sizeof problems - 2)
        problems_len = sizeof problems - 2;
    problems[problems_len++] = '\n';
    problems[problems_len] = '\0';
}

/* Fails the test with every problem found so far. */
static void no_problems(const char *when)
{
    if (problems_n) {
        fprintf(stderr, "%s: %u problem(s):\n%s", when, problems_n, problems);
        fail_msg("%s: %u problem(s), listed above", when, problems_n);
    }
}

/* ---- raw AMQP ------------------------------------------------------------- */

static void send_case(cwtest_env *env, const hostile *h)
{
    const char *rk = h->routing_key ? h->routing_key : h->exchange[0] ? "it.apply" : env->queue;
    int st = amqp_basic_publish(env->conn, CH_PUB, amqp_cstring_bytes(h->exchange),
                                amqp_cstring_bytes(rk), 1, 0, &h->props, h->body);
    if (st != AMQP_STATUS_OK)
        fail_msg("case %s: publishing: %s", h->name, amqp_error_string2(st));
    env->next_seq++; /* cwtest_confirm_all() waits for it */
}

/* Takes every message of `queue` (basic.get and ack) as rabbitmq-c read
 * them; free with msgs_free(). */
static amqp_message_t *drain(cwtest_env *env, const char *queue, size_t *n)
{
    size_t cap = 64;
    amqp_message_t *out = calloc(cap, sizeof *out);
    if (!out)
        fail_msg("out of memory");
    *n = 0;
    /* cwtest's query channel: make sure it is open (a passive declare does). */
    (void)cwtest_queue_count(env, queue);
    for (;;) {
        amqp_rpc_reply_t r = amqp_basic_get(env->conn, CH_QUERY, amqp_cstring_bytes(queue), 0);
        if (r.reply_type != AMQP_RESPONSE_NORMAL)
            fail_msg("basic.get from %s failed (reply type %d)", queue, (int)r.reply_type);
        if (r.reply.id == AMQP_BASIC_GET_EMPTY_METHOD)
            break;
        const amqp_basic_get_ok_t *ok = r.reply.decoded;
        uint64_t tag = ok->delivery_tag;
        if (*n == cap) {
            cap *= 2;
            amqp_message_t *grown = realloc(out, cap * sizeof *out);
            if (!grown)
                fail_msg("out of memory");
            out = grown;
        }
        amqp_rpc_reply_t mr = amqp_read_message(env->conn, CH_QUERY, &out[*n], 0);
        if (mr.reply_type != AMQP_RESPONSE_NORMAL)
            fail_msg("reading a message of %s failed (reply type %d)", queue, (int)mr.reply_type);
        (*n)++;
        if (amqp_basic_ack(env->conn, CH_QUERY, tag, 0) != AMQP_STATUS_OK)
            fail_msg("basic.ack on %s failed", queue);
        amqp_maybe_release_buffers(env->conn);
    }
    return out;
}

static void msgs_free(amqp_message_t *m, size_t n)
{
    for (size_t i = 0; i < n; i++)
        amqp_destroy_message(&m[i]);
    free(m);
}

static const amqp_field_value_t *header(const amqp_basic_properties_t *p, const char *key)
{
    if (!(p->_flags & AMQP_BASIC_HEADERS_FLAG))
        return NULL;
    size_t len = strlen(key);
    for (int i = 0; i < p->headers.num_entries; i++) {
        const amqp_table_entry_t *e = &p->headers.entries[i];
        if (e->key.len == len && memcmp(e->key.bytes, key, len) == 0)
            return &e->value;
    }
    return NULL;
}

static unsigned header_count(const amqp_basic_properties_t *p, const char *key)
{
    unsigned n = 0;
    size_t len = strlen(key);
    for (int i = 0; (p->_flags & AMQP_BASIC_HEADERS_FLAG) && i < p->headers.num_entries; i++) {
        const amqp_table_entry_t *e = &p->headers.entries[i];
        n += e->key.len == len && memcmp(e->key.bytes, key, len) == 0;
    }
    return n;
}

/* The string header `key` as a new NUL-terminated string, or NULL. */
static char *header_str(const amqp_basic_properties_t *p, const char *key)
{
    const amqp_field_value_t *v = header(p, key);
    if (!v || (v->kind != AMQP_FIELD_KIND_UTF8 && v->kind != AMQP_FIELD_KIND_BYTES))
        return NULL;
    char *s = malloc(v->value.bytes.len + 1);
    if (!s)
        fail_msg("out of memory");
    if (v->value.bytes.len)
        memcpy(s, v->value.bytes.bytes, v->value.bytes.len);
    s[v->value.bytes.len] = '\0';
    return s;
}

static bool bytes_eq(amqp_bytes_t a, amqp_bytes_t b)
{
    return a.len == b.len && (a.len == 0 || memcmp(a.bytes, b.bytes, a.len) == 0);
}

static bool table_eq(const amqp_table_t *a, const amqp_table_t *b);

/* Field values equal in kind and value, tables and arrays deeply. A
 * boolean is any non-zero byte on the wire: compared as true or false. */
static bool field_eq(const amqp_field_value_t *a, const amqp_field_value_t *b)
{
    /* RabbitMQ has no unsigned 64-bit type: it passes 'L' on as 'l', the
     * same 64 bits. */
    if (a->kind == AMQP_FIELD_KIND_U64 && b->kind == AMQP_FIELD_KIND_I64)
        return a->value.u64 == (uint64_t)b->value.i64;
    if (a->kind != b->kind)
        return false;
    switch (a->kind) {
    case AMQP_FIELD_KIND_BOOLEAN: return !a->value.boolean == !b->value.boolean;
    case AMQP_FIELD_KIND_I8: return a->value.i8 == b->value.i8;
    case AMQP_FIELD_KIND_U8: return a->value.u8 == b->value.u8;
    case AMQP_FIELD_KIND_I16: return a->value.i16 == b->value.i16;
    case AMQP_FIELD_KIND_U16: return a->value.u16 == b->value.u16;
    case AMQP_FIELD_KIND_I32: return a->value.i32 == b->value.i32;
    case AMQP_FIELD_KIND_U32: return a->value.u32 == b->value.u32;
    case AMQP_FIELD_KIND_I64: return a->value.i64 == b->value.i64;
    case AMQP_FIELD_KIND_U64:
    case AMQP_FIELD_KIND_TIMESTAMP: return a->value.u64 == b->value.u64;
    case AMQP_FIELD_KIND_F32: return memcmp(&a->value.f32, &b->value.f32, sizeof(float)) == 0;
    case AMQP_FIELD_KIND_F64: return memcmp(&a->value.f64, &b->value.f64, sizeof(double)) == 0;
    case AMQP_FIELD_KIND_DECIMAL:
        return a->value.decimal.decimals == b->value.decimal.decimals &&
               a->value.decimal.value == b->value.decimal.value;
    case AMQP_FIELD_KIND_UTF8:
    case AMQP_FIELD_KIND_BYTES: return bytes_eq(a->value.bytes, b->value.bytes);
    case AMQP_FIELD_KIND_VOID: return true;
    case AMQP_FIELD_KIND_TABLE: return table_eq(&a->value.table, &b->value.table);
    case AMQP_FIELD_KIND_ARRAY:
        if (a->value.array.num_entries != b->value.array.num_entries)
            return false;
        for (int i = 0; i < a->value.array.num_entries; i++) {
            if (!field_eq(&a->value.array.entries[i], &b->value.array.entries[i]))
                return false;
        }
        return true;
    default: return false;
    }
}

static bool table_eq(const amqp_table_t *a, const amqp_table_t *b)
{
    if (a->num_entries != b->num_entries)
        return false;
    for (int i = 0; i < a->num_entries; i++) {
        if (!bytes_eq(a->entries[i].key, b->entries[i].key) ||
            !field_eq(&a->entries[i].value, &b->entries[i].value))
            return false;
    }
    return true;
}

/* The failure metadata the worker writes (dlq/deadletter.c): a DLQ copy
 * replaces whatever the producer put under these names. */
static bool is_failure_header(amqp_bytes_t key)
{
    static const char *const names[] = {"cw-error",   "cw-error-class",  "cw-failed-at",
                                        "cw-handler", "cw-worker",       "cw-queue",
                                        "cw-attempt", "cw-crash-signal", "cw-plugin"};
    for (size_t i = 0; i < sizeof names / sizeof *names; i++) {
        if (key.len == strlen(names[i]) && memcmp(key.bytes, names[i], key.len) == 0)
            return true;
    }
    return false;
}

/* A short string property: present in both or in neither, and equal. */
static void expect_prop(const hostile *h, const amqp_basic_properties_t *got, amqp_flags_t flag,
                        amqp_bytes_t want, amqp_bytes_t have, const char *what)
{
    bool sent = h->props._flags & flag, kept = got->_flags & flag;
    if (sent != kept)
        problem("case %s: the DLQ copy %s the %s property", h->name, sent ? "lost" : "gained",
                what);
    if (sent && !bytes_eq(want, have))
        problem("case %s: the DLQ copy's %s is '%.*s', not '%.*s' as sent", h->name, what,
                (int)have.len, (const char *)have.bytes, (int)want.len, (const char *)want.bytes);
}

/* "2026-11-24T21:50:03.123Z" */
static bool is_iso8601(const char *s)
{
    return s && strlen(s) == 24 && s[4] == '-' && s[10] == 'T' && s[19] == '.' && s[23] == 'Z';
}

/* The DLQ copy `m` of case `h` says why, keeps the body byte for byte and
 * every property and header as sent. */
static void check_dead_copy(cwtest_env *env, const hostile *h, const amqp_message_t *m)
{
    const amqp_basic_properties_t *p = &m->properties;
    if (!bytes_eq(m->body, h->body))
        problem("case %s: the DLQ copy's body (%zu bytes) differs from the body sent (%zu "
                "bytes)",
                h->name, m->body.len, h->body.len);
    char *cls = header_str(p, "cw-error-class"), *err = header_str(p, "cw-error");
    char *queue = header_str(p, "cw-queue"), *at = header_str(p, "cw-failed-at");
    if (!cls || strcmp(cls, "invalid") != 0)
        problem("case %s: cw-error-class is '%s', not 'invalid' (cw-error '%s')", h->name,
                cls ? cls : "(missing)", err ? err : "(missing)");
    if (!err || !err[0] || !strcasestr(err, h->want))
        problem("case %s: cw-error is '%s', which does not say '%s'", h->name,
                err ? err : "(missing)", h->want);
    if (!queue || strcmp(queue, env->queue) != 0)
        problem("case %s: cw-queue is '%s', not '%s'", h->name, queue ? queue : "(missing)",
                env->queue);
    if (!is_iso8601(at))
        problem("case %s: cw-failed-at is '%s', not an ISO 8601 time", h->name,
                at ? at : "(missing)");
    static const char *const once[] = {"cw-error", "cw-error-class", "cw-queue", "cw-attempt"};
    for (size_t i = 0; i < sizeof once / sizeof *once; i++) {
        if (header_count(p, once[i]) != 1)
            problem("case %s: the DLQ copy has %u headers %s, not one", h->name,
                    header_count(p, once[i]), once[i]);
    }
    free(cls);
    free(err);
    free(queue);
    free(at);

    if (p->_flags & AMQP_BASIC_EXPIRATION_FLAG)
        problem("case %s: the DLQ copy expires (expiration '%.*s'): the broker would drop it "
                "from the DLQ",
                h->name, (int)p->expiration.len, (const char *)p->expiration.bytes);
    expect_prop(h, p, AMQP_BASIC_MESSAGE_ID_FLAG, h->props.message_id, p->message_id, "message_id");
    expect_prop(h, p, AMQP_BASIC_TYPE_FLAG, h->props.type, p->type, "type");
    expect_prop(h, p, AMQP_BASIC_CORRELATION_ID_FLAG, h->props.correlation_id, p->correlation_id,
                "correlation_id");
    expect_prop(h, p, AMQP_BASIC_CONTENT_TYPE_FLAG, h->props.content_type, p->content_type,
                "content_type");
    for (int i = 0; i < h->props.headers.num_entries; i++) {
        const amqp_table_entry_t *e = &h->props.headers.entries[i];
        if (is_failure_header(e->key))
            continue;
        char key[128];
        snprintf(key, sizeof key, "%.*s", (int)e->key.len, (const char *)e->key.bytes);
        const amqp_field_value_t *got = header(p, key);
        if (!got && h->may_drop && strcmp(key, h->may_drop) == 0) {
            char *said = header_str(p, "cw-dropped-headers");
            if (!said || !strstr(said, key))
                problem("case %s: the DLQ copy left out header %s without saying so in "
                        "cw-dropped-headers ('%s')",
                        h->name, key, said ? said : "(missing)");
            free(said);
            continue;
        }
        if (!got) {
            problem("case %s: the DLQ copy lost header %s", h->name, key);
            continue;
        }
        if (!field_eq(&e->value, got))
            problem("case %s: header %s of the DLQ copy (kind '%c') is not the one sent "
                    "(kind '%c')",
                    h->name, key, got->kind, e->value.kind);
    }
}

/* Finds each TO_DLQ case of `c` (those of the repeats only when
 * `repeats_only`) exactly once among `dead` and checks its copy. */
static void check_dlq(cwtest_env *env, const corpus *c, bool repeats_only, amqp_message_t *dead,
                      size_t n)
{
    size_t want = count_expect(c, TO_DLQ, repeats_only);
    bool *used = calloc(n ? n : 1, sizeof *used);
    if (!used)
        fail_msg("out of memory");
    for (size_t i = 0; i < c->n; i++) {
        const hostile *h = &c->cases[i];
        if (h->expect != TO_DLQ || (repeats_only && !h->in_repeats))
            continue;
        size_t found = n;
        for (size_t j = 0; j < n; j++) {
            char *name = header_str(&dead[j].properties, "bad-case");
            bool match = name && strcmp(name, h->name) == 0;
            free(name);
            if (!match)
                continue;
            if (found != n)
                problem("case %s: two copies in the DLQ", h->name);
            found = j;
        }
        if (found == n) {
            long applied = cwtest_ledger_count_id(env, h->id);
            problem("case %s: not in the DLQ%s", h->name, applied ? " (it was applied)" : "");
            continue;
        }
        used[found] = true;
        check_dead_copy(env, h, &dead[found]);
    }
    for (size_t j = 0; j < n; j++) {
        if (!used[j]) {
            char *name = header_str(&dead[j].properties, "bad-case");
            char *err = header_str(&dead[j].properties, "cw-error");
            problem("the DLQ holds a message of no expected case: bad-case '%s', cw-error '%s'",
                    name ? name : "(none)", err ? err : "(none)");
            free(name);
            free(err);
        }
    }
    if (n != want)
        problem("the DLQ holds %zu messages, not %zu", n, want);
    free(used);
}

/* ---- the ledger's details ------------------------------------------------- */

/* One integer from the ledger: `sql` with `id` bound as ?1. */
static long long ledger_int(const cwtest_env *env, const char *sql, const char *id)
{
    sqlite3 *db = NULL;
    sqlite3_stmt *st = NULL;
    long long v = -1;
    if (sqlite3_open_v2(env->ledger, &db, SQLITE_OPEN_READONLY, NULL) != SQLITE_OK)
        fail_msg("cannot open the ledger %s", env->ledger);
    sqlite3_busy_timeout(db, 10000);
    if (sqlite3_prepare_v2(db, sql, -1, &st, NULL) != SQLITE_OK)
        fail_msg("ledger: %s: %s", sql, sqlite3_errmsg(db));
    if (id)
        sqlite3_bind_text(st, 1, id, -1, SQLITE_TRANSIENT);
    if (sqlite3_step(st) == SQLITE_ROW)
        v = sqlite3_column_int64(st, 0);
    sqlite3_finalize(st);
    sqlite3_close(db);
    return v;
}

/* Every TO_APPLY case applied exactly once, by the worker `pid`, at its
 * attempt. */
static void check_applied(const cwtest_env *env, const corpus *c, pid_t pid)
{
    for (size_t i = 0; i < c->n; i++) {
        const hostile *h = &c->cases[i];
        if (h->expect != TO_APPLY)
            continue;
        long n = cwtest_ledger_count_id(env, h->id);
        if (n != 1) {
            problem("case %s: applied %ld times, not once", h->name, n);
            continue;
        }
        long long by = ledger_int(env, "SELECT pid FROM applied WHERE message_id = ?1", h->id);
        if (by != (long long)pid)
            problem("case %s: applied by process %lld, not by the worker %ld", h->name, by,
                    (long)pid);
        long long att = ledger_int(env, "SELECT attempt FROM applied WHERE message_id = ?1", h->id);
        if (att != h->attempt)
            problem("case %s: the handler saw attempt %lld, not %d", h->name, att, h->attempt);
    }
}

/* `h` applied exactly once (by whichever worker). */
static void check_applied_by_any(const cwtest_env *env, const hostile *h)
{
    long n = cwtest_ledger_count_id(env, h->id);
    if (n != 1)
        fail_msg("case %s: applied %ld times, not once; see %s", h->name, n, env->log);
}

/* ---- the worker process --------------------------------------------------- */

/* The PID of the pool's one worker process: "worker 1 started (pid N)" in
 * the log, a child of the supervisor. */
static pid_t worker_pid(const cwtest_env *env)
{
    char *log = cwtest_log_read(env);
    const char *p = strstr(log, "worker 1 started (pid ");
    long pid = p ? strtol(p + strlen("worker 1 started (pid "), NULL, 10) : 0;
    free(log);
    if (pid <= 0)
        fail_msg("no 'worker 1 started (pid N)' in %s", env->log);
    char path[64], stat[512];
    snprintf(path, sizeof path, "/proc/%ld/stat", pid);
    FILE *f = fopen(path, "r");
    if (!f)
        fail_msg("worker %ld: %s: %s", pid, path, strerror(errno));
    size_t got = fread(stat, 1, sizeof stat - 1, f);
    fclose(f);
    stat[got] = '\0';
    /* pid (comm) state ppid ... ; comm may hold blanks: after the last ')'. */
    const char *close = strrchr(stat, ')');
    long ppid = 0;
    if (!close || sscanf(close + 1, " %*c %ld", &ppid) != 1 || ppid != (long)env->worker)
        fail_msg("process %ld is not a child of the supervisor %ld (ppid %ld)", pid,
                 (long)env->worker, ppid);
    return (pid_t)pid;
}

/* VmRSS or VmHWM of `pid`, in KiB. */
static long proc_kib(pid_t pid, const char *field)
{
    char path[64], line[256];
    snprintf(path, sizeof path, "/proc/%ld/status", (long)pid);
    FILE *f = fopen(path, "r");
    if (!f)
        fail_msg("the worker %ld is gone: %s: %s", (long)pid, path, strerror(errno));
    long kib = -1;
    size_t flen = strlen(field);
    while (fgets(line, sizeof line, f)) {
        if (strncmp(line, field, flen) == 0 && line[flen] == ':') {
            kib = strtol(line + flen + 1, NULL, 10);
            break;
        }
    }
    fclose(f);
    if (kib < 0)
        fail_msg("no %s in %s", field, path);
    return kib;
}

/* The worker is still the same process, serving. */
static void expect_alive(cwtest_env *env, pid_t pid, const char *when)
{
    if (!cwtest_worker_alive(env))
        fail_msg("%s: the pool's supervisor exited (code %d); see %s", when, env->last_exit,
                 env->log);
    if (kill(pid, 0) != 0)
        fail_msg("%s: the worker %ld is gone; see %s", when, (long)pid, env->log);
    if (cwtest_log_count(env, "started (pid ") != 1)
        fail_msg("%s: a worker was started again; see %s", when, env->log);
}

/* Nothing in the log says a process crashed, exited other than with 0, or
 * a sanitizer complained; lines holding `allowed` (if not NULL) excepted. */
static void expect_clean_log(const cwtest_env *env, const char *allowed)
{
    static const char *const bad[] = {"AddressSanitizer", "runtime error", "LeakSanitizer",
                                      "killed by",        "SIGSEGV",       "SIGABRT",
                                      "exited with code", "level=error"};
    char *log = cwtest_log_read(env);
    char line[320] = "";
    const char *what = NULL;
    for (size_t i = 0; i < sizeof bad / sizeof *bad && !what; i++) {
        for (const char *at = log; (at = strstr(at, bad[i])); at++) {
            if (strncmp(at, "exited with code 0)", 19) == 0)
                continue; /* a worker that stopped as asked */
            const char *start = at;
            while (start > log && start[-1] != '\n')
                start--;
            size_t len = strcspn(start, "\n");
            if (allowed && memmem(start, len, allowed, strlen(allowed)))
                continue;
            snprintf(line, sizeof line, "%.*s", (int)strcspn(start, "\n"), start);
            what = bad[i];
            break;
        }
    }
    free(log);
    if (what)
        fail_msg("the worker log says '%s': %s", what, line);
}

/* Stops the pool with SIGTERM: it exits 0, and the log, the workers' last
 * words included (under ASan, their leak check), shows nothing wrong
 * (`allowed`: as for expect_clean_log()). */
static void stop_pool(cwtest_env *env, const char *allowed)
{
    int code = cwtest_worker_stop(env, SIGTERM, STOP_MS);
    if (code != 0)
        fail_msg("the pool exited with code %d after SIGTERM, not 0; see %s", code, env->log);
    expect_clean_log(env, allowed);
}

/* Waits until the DLQ and the ledger together hold `total` messages and
 * rows (the checks that follow tell which went where), or the time is up. */
static void wait_settled(cwtest_env *env, pid_t pid, long total)
{
    int64_t deadline = cwtest_now_ms() + WAIT_MS;
    while (cwtest_queue_count(env, env->dlq) + cwtest_ledger_rows(env) < total &&
           cwtest_now_ms() < deadline) {
        expect_alive(env, pid, "waiting for the corpus to settle");
        cwtest_sleep_ms(100);
    }
}

/* A valid task, sent last: the worker still applies it. */
static void expect_serving(cwtest_env *env, const char *id, long rows_before)
{
    cwtest_send_task(env, id, "saga-after", "{\"after\":true}");
    cwtest_confirm_all(env);
    cwtest_ledger_wait(env, rows_before + 1, WAIT_MS);
    if (cwtest_ledger_count_id(env, id) != 1)
        fail_msg("the task %s sent after the corpus was not applied once", id);
}

/* ---- 1. the corpus --------------------------------------------------------- */

static void test_hostile_messages(void **state)
{
    char lines[128];
    snprintf(lines, sizeof lines, "max_body_size = %uKiB\n", MAX_BODY / 1024);
    cwtest_pool_opts po = {.pool_lines = lines};
    cwtest_env *env = cwtest_begin(state, "badin", &po);
#ifdef CW_ASAN
    /* ASan holds freed memory in quarantine (256 MiB by default): keep it
     * small, so that what the worker frees shows in its RSS as it would. */
    char asan[512];
    const char *old = getenv("ASAN_OPTIONS");
    snprintf(asan, sizeof asan, "%s%squarantine_size_mb=4", old ? old : "", old ? ":" : "");
    setenv("ASAN_OPTIONS", asan, 1);
#endif
    cwtest_worker_start(env);
    pid_t pid = worker_pid(env);

    /* A first task: the worker's steady state before anything hostile. */
    cwtest_send_task(env, "warm-up", "saga-warm", "{\"warm\":true}");
    cwtest_confirm_all(env);
    cwtest_ledger_wait(env, 1, WAIT_MS);
    long rss0 = proc_kib(pid, "VmRSS");

    corpus *cp = &the_corpus;
    init_amqp_pool(&cp->pool, 64 * 1024);
    build_corpus(cp, env->queue);
    const corpus *c = cp;
    size_t n_dead = count_expect(c, TO_DLQ, false), n_ok = count_expect(c, TO_APPLY, false);

    int64_t t0 = cwtest_now_ms();
    for (size_t i = 0; i < c->n; i++)
        send_case(env, &c->cases[i]);
    cwtest_confirm_all(env);
    wait_settled(env, pid, (long)(1 + n_dead + n_ok));
    int64_t t_corpus = cwtest_now_ms() - t0;
    expect_alive(env, pid, "after the corpus");
    long hwm = proc_kib(pid, "VmHWM");

    size_t n = 0;
    amqp_message_t *dead = drain(env, env->dlq, &n);
    check_dlq(env, c, false, dead, n);
    msgs_free(dead, n);
    check_applied(env, c, pid);
    if (cwtest_ledger_rows(env) != 1 + (long)n_ok)
        problem("the ledger has %ld rows, not %zu", cwtest_ledger_rows(env), 1 + n_ok);
    no_problems("the corpus");

    /* One 64 MiB body costs about one body while it is held. */
    long hwm_bound = rss0 + (long)(HUGE_BODY / 1024) + HWM_SLACK_KIB;
    if (hwm > hwm_bound)
        fail_msg("the worker's memory peaked at %ld KiB after the corpus: more than %ld KiB "
                 "(%ld KiB before, one 64 MiB body and %d KiB)",
                 hwm, hwm_bound, rss0, HWM_SLACK_KIB);

    /* Two 64 MiB bodies queued together, the worker held while they arrive:
     * one batch does not take both into memory. */
    const hostile *huge = NULL;
    for (size_t i = 0; i < c->n; i++) {
        if (!c->cases[i].in_repeats)
            huge = &c->cases[i];
    }
    if (kill(pid, SIGSTOP) != 0)
        fail_msg("SIGSTOP %ld: %s", (long)pid, strerror(errno));
    send_case(env, huge);
    send_case(env, huge);
    cwtest_confirm_all(env);
    cwtest_sleep_ms(500); /* the broker pushes what the prefetch allows */
    kill(pid, SIGCONT);
    cwtest_queue_wait(env, env->dlq, 2, WAIT_MS);
    expect_alive(env, pid, "after two 64 MiB bodies at once");
    long hwm2 = proc_kib(pid, "VmHWM");
    if (hwm2 > hwm_bound)
        fail_msg("with two 64 MiB bodies queued, the worker's memory peaked at %ld KiB: more "
                 "than %ld KiB (one body at a time)",
                 hwm2, hwm_bound);
    dead = drain(env, env->dlq, &n);
    assert_int_equal(n, 2);
    for (size_t i = 0; i < n; i++)
        check_dead_copy(env, huge, &dead[i]);
    msgs_free(dead, n);
    no_problems("two 64 MiB bodies");

    /* The corpus again and again: the worker does not grow. */
    long rss1 = 0, rss2 = 0;
    int64_t t1 = cwtest_now_ms();
    size_t round_dead = count_expect(c, TO_DLQ, true);
    for (int round = 0; round < REPEAT_ROUNDS; round++) {
        for (size_t i = 0; i < c->n; i++) {
            if (c->cases[i].in_repeats)
                send_case(env, &c->cases[i]);
        }
        cwtest_confirm_all(env);
        /* Valid cases come back as duplicates now: applied once, ever. */
        long rows = cwtest_ledger_rows(env);
        wait_settled(env, pid, rows + (long)round_dead);
        cwtest_queue_wait(env, env->queue, 0, WAIT_MS);
        dead = drain(env, env->dlq, &n);
        check_dlq(env, c, true, dead, n);
        msgs_free(dead, n);
        no_problems("a repeat of the corpus");
        /* The most of a few rounds at each end: what an allocator holds
         * back swings from round to round (ASan's quarantine by megabytes). */
        long rss = proc_kib(pid, "VmRSS");
        if (round < WARM_ROUNDS && rss > rss1)
            rss1 = rss;
        if (round >= REPEAT_ROUNDS - WARM_ROUNDS && rss > rss2)
            rss2 = rss;
    }
    int64_t t_repeats = cwtest_now_ms() - t1;
    expect_alive(env, pid, "after the repeats");
    if (rss2 - rss1 > GROWTH_LIMIT_KIB)
        fail_msg("the worker grew from %ld KiB (the most in rounds 1-%d of the corpus) to %ld "
                 "KiB (the most in rounds %d-%d; limit %d KiB more)",
                 rss1, WARM_ROUNDS, rss2, REPEAT_ROUNDS - WARM_ROUNDS + 1, REPEAT_ROUNDS,
                 GROWTH_LIMIT_KIB);
    check_applied(env, c, pid);
    no_problems("after the repeats");

    long rows = cwtest_ledger_rows(env);
    expect_serving(env, "after-the-corpus", rows);
    expect_alive(env, pid, "at the end");
    expect_clean_log(env, NULL);

    stop_pool(env, NULL);
    cwtest_stats st;
    cwtest_log_stats(env, &st);
    unsigned long long invalid = n_dead + 2 + (unsigned long long)round_dead * REPEAT_ROUNDS;
    if (st.invalid != invalid || st.dead_lettered != invalid)
        fail_msg("the worker counted %llu invalid and %llu dead-lettered tasks, not %llu",
                 st.invalid, st.dead_lettered, invalid);
    print_message("bad input: %zu cases (%zu dead-lettered, %zu applied) in %lld ms; %d more "
                  "rounds in %lld ms; worker RSS %ld KiB before, peak %ld KiB (64 MiB body), "
                  "at most %ld KiB in rounds 1-%d, at most %ld KiB in the last %d\n",
                  c->n, n_dead, n_ok, (long long)t_corpus, REPEAT_ROUNDS, (long long)t_repeats,
                  rss0, hwm2 > hwm ? hwm2 : hwm, rss1, WARM_ROUNDS, rss2, WARM_ROUNDS);
    cwtest_pass(env);
}

/* ---- 2. headers that fill a frame ------------------------------------------ */

#define FRAME_MAX 131072 /* what rabbitmq-c and RabbitMQ negotiate by default */

/* The encoded size of a case's properties. */
static size_t props_size(const hostile *h)
{
    static unsigned char buf[2 * FRAME_MAX];
    amqp_basic_properties_t p = h->props;
    int n = amqp_encode_properties(AMQP_BASIC_CLASS, &p, (amqp_bytes_t){sizeof buf, buf});
    if (n < 0)
        fail_msg("case %s: its properties cannot be encoded: %s", h->name, amqp_error_string2(n));
    return (size_t)n;
}

/* Adds a header x-fill that makes the properties of `h` as large as one
 * frame holds: frame_max less the frame's 8 bytes and the content header's
 * own 12. */
static void fill_frame(corpus *c, hostile *h)
{
    const size_t room = FRAME_MAX - 8 - 12, trial = 1000;
    amqp_bytes_t b = pbody(c, 2 * FRAME_MAX);
    memset(b.bytes, 'h', b.len);
    b.len = trial;
    set_header(h, entry("x-fill", utf8(b)));
    size_t used = props_size(h);
    h->headers[h->props.headers.num_entries - 1].value.value.bytes.len = trial + room - used;
    if (props_size(h) != room)
        fail_msg("case %s: the properties take %zu bytes, not %zu", h->name, props_size(h), room);
}

/* The properties of a message travel in one frame (frame_max, 128 KiB): a
 * producer may fill it with headers. Such a task is served like any other,
 * and when it is invalid its DLQ copy, which needs room for the failure
 * metadata too, must still reach the DLQ, not stall the queue. */
static void test_headers_filling_a_frame(void **state)
{
    cwtest_env *env = cwtest_begin(state, "badhdr", NULL);
    cwtest_worker_start(env);
    pid_t pid = worker_pid(env);

    corpus *c = &the_corpus;
    init_amqp_pool(&c->pool, 64 * 1024);
    hostile *ok = add(c, "frame-full-valid", TO_APPLY, NULL);
    hostile *bad = add(c, "frame-full-invalid", TO_DLQ, "no handler");
    to_queue(bad);
    bad->props.type = amqp_cstring_bytes("it.unknown");
    bad->may_drop = "x-fill"; /* the failure headers need its room */
    hostile *both[] = {ok, bad};
    for (size_t i = 0; i < 2; i++)
        fill_frame(c, both[i]);
    send_case(env, ok);
    send_case(env, bad);
    cwtest_confirm_all(env);
    wait_settled(env, pid, 2);

    size_t n = 0;
    amqp_message_t *dead = drain(env, env->dlq, &n);
    check_dlq(env, c, false, dead, n);
    msgs_free(dead, n);
    check_applied(env, c, pid);
    no_problems("headers filling a frame");
    expect_serving(env, "after-full-frames", cwtest_ledger_rows(env));
    expect_alive(env, pid, "after headers filling a frame");
    expect_clean_log(env, NULL);
    stop_pool(env, NULL);
    cwtest_pass(env);
}

/* A task whose properties fill a frame, redelivered by its quorum queue:
 * the broker adds x-delivery-count, and the redelivery no longer fits the
 * frame_max the worker negotiated. The worker that took it first is killed
 * (that is how the redelivery is made); the one started after it must read
 * and apply it, not fail on it at the head of the queue for ever. */
static void test_full_frame_redelivered(void **state)
{
    cwtest_env *env = cwtest_begin(state, "badredel", NULL);
    cwtest_worker_start(env);
    pid_t first = worker_pid(env);

    corpus *c = &the_corpus;
    init_amqp_pool(&c->pool, 64 * 1024);
    hostile *h = add(c, "frame-full-redelivered", TO_APPLY, NULL);
    fill_frame(c, h);

    /* Held, the worker is delivered the task but cannot take it. */
    if (kill(first, SIGSTOP) != 0)
        fail_msg("SIGSTOP %ld: %s", (long)first, strerror(errno));
    send_case(env, h);
    cwtest_confirm_all(env);
    cwtest_queue_wait(env, env->queue, 0, WAIT_MS);
    kill(first, SIGKILL);
    cwtest_log_wait(env, "started (pid ", 2, WAIT_MS);

    cwtest_ledger_wait(env, 1, WAIT_MS);
    check_applied_by_any(env, h);
    expect_serving(env, "after-the-redelivery", 1);
    unsigned starts = cwtest_log_count(env, "started (pid ");
    if (starts != 2)
        fail_msg("%u workers were started, not 2: the redelivery killed one; see %s", starts,
                 env->log);
    char killed[64];
    snprintf(killed, sizeof killed, "(pid %ld) killed by SIGKILL", (long)first);
    stop_pool(env, killed);
    cwtest_pass(env);
}

/* ---- 3. a 10 KB message_id ------------------------------------------------ */

/* message_id is an AMQP short string: at most 255 bytes on the wire, so no
 * client can send a 10 KB one (the corpus sends 255). rabbitmq-c refuses
 * to encode it; the broker and the worker never see it. */
static void test_message_id_10k(void **state)
{
    cwtest_env *env = cwtest_begin(state, "badid", NULL);
    char url[sizeof env->url];
    snprintf(url, sizeof url, "%s", env->url);
    struct amqp_connection_info ci;
    if (amqp_parse_url(url, &ci) != AMQP_STATUS_OK)
        fail_msg("CW_TEST_AMQP_URL is not an AMQP URL");
    amqp_connection_state_t conn = amqp_new_connection();
    amqp_socket_t *sock = amqp_tcp_socket_new(conn);
    if (!sock || amqp_socket_open(sock, ci.host, ci.port) != AMQP_STATUS_OK)
        fail_msg("cannot connect to the test broker");
    amqp_rpc_reply_t r = amqp_login(conn, ci.vhost && ci.vhost[0] ? ci.vhost : "/", 0, 131072, 0,
                                    AMQP_SASL_METHOD_PLAIN, ci.user, ci.password);
    assert_int_equal(r.reply_type, AMQP_RESPONSE_NORMAL);
    amqp_channel_open(conn, 1);
    assert_int_equal(amqp_get_rpc_reply(conn).reply_type, AMQP_RESPONSE_NORMAL);

    static char id[10240 + 1];
    memset(id, 'i', sizeof id - 1);
    amqp_basic_properties_t p = {._flags = AMQP_BASIC_MESSAGE_ID_FLAG | AMQP_BASIC_TYPE_FLAG,
                                 .message_id = amqp_cstring_bytes(id),
                                 .type = amqp_cstring_bytes("it.apply")};
    int st = amqp_basic_publish(conn, 1, amqp_cstring_bytes("cw.tasks"),
                                amqp_cstring_bytes("it.apply"), 0, 0, &p,
                                amqp_cstring_bytes("{\"case\":\"message-id-10k\"}"));
    if (st != AMQP_STATUS_BAD_AMQP_DATA)
        fail_msg("publishing a 10 KB message_id: %s, not refused as bad AMQP data",
                 amqp_error_string2(st));
    amqp_destroy_connection(conn);
    cwtest_pass(env);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_teardown(test_hostile_messages, teardown),
        cmocka_unit_test_teardown(test_headers_filling_a_frame, teardown),
        cmocka_unit_test_teardown(test_full_frame_redelivered, teardown),
        cmocka_unit_test_teardown(test_message_id_10k, cwtest_teardown),
    };
    const char *filter = getenv("CW_TEST_FILTER");
    if (filter && filter[0])
        cmocka_set_test_filter(filter);
    return cmocka_run_group_tests(tests, NULL, NULL);
}
