/* Fuzz target: envelope validation (framework/envelope.c), the check every
 * delivery passes before a handler is chosen.
 *
 * Input: one byte of flags (bit 0 message_id, 1 type, 2 correlation_id,
 * 3 content_type, 4 headers present; bit 5 empty strings are NULL; bits 6-7
 * pick max_body_size: 1 MiB, 64, 4096 or 0 bytes), then each present
 * property as a short string and the headers as a table (see fuzz.h), then
 * the body: the rest of the input.
 *
 * Asserts: every input is accepted or refused with error class "invalid"
 * and a readable reason (printable ASCII, no message bytes beyond what was
 * validated); an accepted task has a JSON object payload, the message ID and
 * type of its properties, a registered handler and its cw-attempt header's
 * value; the long-lived validator (whose JSON parser every delivery reuses),
 * having just read the first half of the body, answers exactly as a fresh
 * one does. */
#include <json.h>
#include <string.h>

#include "compworker/compworker.h"
#include "framework/registry.h"
#include "framework/task.h"
#include "fuzz.h"

static const uint64_t max_bodies[4] = {1u << 20, 64, 4096, 0};

static cw_outcome handle(cw_task *task, void *user_data)
{
    (void)task;
    (void)user_data;
    return CW_OK;
}

static cw_registry *reg;
static cw_validator reused[4];

static void init(void)
{
    static const char *const types[] = {"payment.refund", "stock.restock", "a", "x:y-z_1"};
    FZ_CHECK(cw_registry_new(&reg) == 0);
    for (size_t i = 0; i < sizeof types / sizeof *types; i++)
        FZ_CHECK(cw_register_handler(reg, types[i], handle, NULL) == 0);
    for (int i = 0; i < 4; i++)
        FZ_CHECK(cw__validator_init(&reused[i], reg, max_bodies[i]) == 0);
}

static bool printable(const char *s)
{
    for (; *s; s++) {
        if ((unsigned char)*s < 0x20 || (unsigned char)*s > 0x7e)
            return false;
    }
    return true;
}

/* The value an integer header holds, when it is one. */
static bool int_value(const amqp_field_value_t *v, int64_t *out)
{
    switch (v->kind) {
    case AMQP_FIELD_KIND_I8: *out = v->value.i8; return true;
    case AMQP_FIELD_KIND_U8: *out = v->value.u8; return true;
    case AMQP_FIELD_KIND_I16: *out = v->value.i16; return true;
    case AMQP_FIELD_KIND_U16: *out = v->value.u16; return true;
    case AMQP_FIELD_KIND_I32: *out = v->value.i32; return true;
    case AMQP_FIELD_KIND_U32: *out = v->value.u32; return true;
    case AMQP_FIELD_KIND_I64: *out = v->value.i64; return true;
    case AMQP_FIELD_KIND_U64:
        *out = v->value.u64 > INT64_MAX ? INT64_MAX : (int64_t)v->value.u64;
        return true;
    default: return false;
    }
}

static void check_accepted(const cw_task *t, uint64_t max_body)
{
    const amqp_basic_properties_t *p = &t->env.message.properties;
    FZ_CHECK(t->payload && json_object_is_type(t->payload, json_type_object));
    FZ_CHECK(p->message_id.len >= 1 && p->message_id.len <= CW_MESSAGE_ID_MAX);
    FZ_CHECK(strlen(t->message_id) == p->message_id.len &&
             memcmp(t->message_id, p->message_id.bytes, p->message_id.len) == 0);
    FZ_CHECK(printable(t->message_id) && !strchr(t->message_id, ' '));
    FZ_CHECK(strlen(t->type) == p->type.len && memcmp(t->type, p->type.bytes, p->type.len) == 0);
    FZ_CHECK(t->handler && strcmp(t->handler->type, t->type) == 0);
    FZ_CHECK(t->env.message.body.len <= max_body && t->env.message.body.len > 0);
    if (p->_flags & AMQP_BASIC_CORRELATION_ID_FLAG && p->correlation_id.len)
        FZ_CHECK(strlen(t->saga_id) == p->correlation_id.len);
    const amqp_field_value_t *att = cw__task_header_value(p, "cw-attempt");
    int64_t n = 0;
    if (att)
        FZ_CHECK(int_value(att, &n) && n >= 0 && n <= 1000000);
    FZ_CHECK(t->attempt == (unsigned)n);
    FZ_CHECK(t->error_class[0] == '\0' && t->reason[0] == '\0');
}

static void check_refused(const cw_task *t)
{
    FZ_CHECK(strcmp(t->error_class, "invalid") == 0);
    FZ_CHECK(t->outcome == CW_FAIL);
    FZ_CHECK(t->reason[0] != '\0' && printable(t->reason));
    FZ_CHECK(t->payload == NULL);
}

/* The task accessors a handler calls. */
static void use_task(cw_task *t)
{
    /* Names compworker and plugins ask for; never "" (a lookup of "" would
     * compare 0 bytes of a key that may be NULL). */
    static const char *const names[] = {"cw-attempt", "cw-error", "cw-replayed", "x-death"};
    for (size_t i = 0; i < sizeof names / sizeof *names; i++) {
        const char *s = cw_task_header(t, names[i]);
        const amqp_field_value_t *v = cw__task_header_value(&t->env.message.properties, names[i]);
        if (s) {
            FZ_CHECK(v && (v->kind == AMQP_FIELD_KIND_UTF8 || v->kind == AMQP_FIELD_KIND_BYTES));
            FZ_CHECK(strlen(s) == v->value.bytes.len);
            FZ_CHECK(v->value.bytes.len == 0 || memcmp(s, v->value.bytes.bytes, strlen(s)) == 0);
        }
    }
    size_t len;
    const void *body = cw_task_body(t, &len);
    FZ_CHECK(len == t->env.message.body.len && body == t->env.message.body.bytes);
    (void)cw_task_attempt(t);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (!reg)
        init();
    fz_in in = {data, size};
    uint8_t flags = fz_u8(&in);
    fz_arena arena = {.null_empty = flags & 0x20};
    int size_sel = flags >> 6;

    cw_task t1, t2;
    memset(&t1, 0, sizeof t1);
    amqp_basic_properties_t *p = &t1.env.message.properties;
    if (flags & 0x01) {
        p->_flags |= AMQP_BASIC_MESSAGE_ID_FLAG;
        p->message_id = fz_bytes(&arena, &in, 255);
    }
    if (flags & 0x02) {
        p->_flags |= AMQP_BASIC_TYPE_FLAG;
        p->type = fz_bytes(&arena, &in, 255);
    }
    if (flags & 0x04) {
        p->_flags |= AMQP_BASIC_CORRELATION_ID_FLAG;
        p->correlation_id = fz_bytes(&arena, &in, 255);
    }
    if (flags & 0x08) {
        p->_flags |= AMQP_BASIC_CONTENT_TYPE_FLAG;
        p->content_type = fz_bytes(&arena, &in, 255);
    }
    if (flags & 0x10) {
        p->_flags |= AMQP_BASIC_HEADERS_FLAG;
        fz_table(&arena, &in, &p->headers, 1);
    }
    t1.env.message.body = fz_rest(&arena, &in);
    /* The envelope's memory is the arena's: has_env stays false so that
     * cw__task_reset() frees only what validation made. */
    t2 = t1;

    /* First the body's first half, as a truncated delivery would come:
     * whatever that leaves in the reused validator must not change how the
     * whole body reads next. */
    if (t1.env.message.body.len >= 2) {
        cw_task cut = t1;
        cut.env.message.body.len /= 2;
        cw__task_validate(&reused[size_sel], &cut);
        cw__task_reset(&cut);
    }
    bool ok1 = cw__task_validate(&reused[size_sel], &t1);
    cw_validator fresh;
    FZ_CHECK(cw__validator_init(&fresh, reg, max_bodies[size_sel]) == 0);
    bool ok2 = cw__task_validate(&fresh, &t2);
    cw__validator_free(&fresh);

    FZ_CHECK(ok1 == ok2);
    FZ_CHECK(strcmp(t1.reason, t2.reason) == 0);
    FZ_CHECK(strcmp(t1.error_class, t2.error_class) == 0);
    if (ok1) {
        check_accepted(&t1, max_bodies[size_sel]);
        FZ_CHECK(json_object_equal(t1.payload, t2.payload));
        use_task(&t1);
    } else {
        check_refused(&t1);
        check_refused(&t2);
    }
    cw__task_reset(&t1);
    cw__task_reset(&t2);
    fz_arena_free(&arena);
    return 0;
}
