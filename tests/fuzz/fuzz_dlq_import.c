/* Fuzz target: one line of a DLQ export file read by `compworker dlq import`
 * (cw_dlq_import_line() in dlq/export.c).
 *
 * Input: the line, as it is (not NUL-terminated: the parser is given its
 * length).
 *
 * Asserts: a refused line has a reason; an accepted one holds no value
 * json-c clamped (an integer past 64 bits, 1e400); it decodes, exports to
 * one line without a newline that imports back to the same properties and
 * body, and that export is stable: exporting the re-imported record gives
 * the very same line. */
#include <math.h>
#include <string.h>

#include "compworker/compworker.h"
#include "dlq/dlq.h"
#include "framework/error.h"
#include "fuzz.h"

static bool written(const uint8_t *line, size_t len, const char *text)
{
    return memmem(line, len, text, strlen(text)) != NULL;
}

/* json-c turns a number past 64 bits into the largest one and 1e400 into
 * infinity; the importer must refuse those, not clamp them. So an extreme
 * value or a non-finite float in the record must be written in the line as
 * such (the extreme's digits, or {"bits": ...}). */
static void check_not_clamped(const uint8_t *line, size_t len, const amqp_field_value_t *v)
{
    switch (v->kind) {
    case AMQP_FIELD_KIND_I64:
        if (v->value.i64 == INT64_MIN)
            FZ_CHECK(written(line, len, "-9223372036854775808"));
        break;
    case AMQP_FIELD_KIND_U64:
    case AMQP_FIELD_KIND_TIMESTAMP:
        if (v->value.u64 == UINT64_MAX)
            FZ_CHECK(written(line, len, "18446744073709551615"));
        break;
    case AMQP_FIELD_KIND_F32:
        if (!isfinite(v->value.f32))
            FZ_CHECK(written(line, len, "bits"));
        break;
    case AMQP_FIELD_KIND_F64:
        if (!isfinite(v->value.f64))
            FZ_CHECK(written(line, len, "bits"));
        break;
    case AMQP_FIELD_KIND_ARRAY:
        for (int i = 0; i < v->value.array.num_entries; i++)
            check_not_clamped(line, len, &v->value.array.entries[i]);
        break;
    case AMQP_FIELD_KIND_TABLE:
        for (int i = 0; i < v->value.table.num_entries; i++)
            check_not_clamped(line, len, &v->value.table.entries[i].value);
        break;
    default: break;
    }
}

static void check_roundtrip(const cw_dlq_record *rec)
{
    amqp_envelope_t env;
    memset(&env, 0, sizeof env);
    env.exchange = amqp_cstring_bytes("cw.dlx");
    env.routing_key = amqp_cstring_bytes("cw.dlq.fuzz");
    env.message.properties = rec->props;
    env.message.body = rec->body;

    cw_dlq_msg m;
    memset(&m, 0, sizeof m);
    m.env = env; /* borrowed: has_env stays false */
    cw_dlq_msg_decode(&m);
    FZ_CHECK(memchr(m.error, '\0', sizeof m.error) && memchr(m.type, '\0', sizeof m.type));

    char *line;
    size_t len;
    FZ_CHECK(cw_dlq_export_line(&env, &line, &len) == 0);
    FZ_CHECK(strlen(line) == len && !memchr(line, '\n', len));
    cw_dlq_record again;
    int rc = cw_dlq_import_line(line, len, &again);
    if (rc != 0)
        fprintf(stderr, "import of an export failed: %s\n", cw_error_last());
    FZ_CHECK(rc == 0);
    FZ_CHECK(fz_props_equal(&rec->props, &again.props, true));
    FZ_CHECK(fz_bytes_equal(rec->body, again.body));
    FZ_CHECK(strcmp(rec->message_id, again.message_id) == 0);

    env.message.properties = again.props;
    env.message.body = again.body;
    char *line2;
    size_t len2;
    FZ_CHECK(cw_dlq_export_line(&env, &line2, &len2) == 0);
    FZ_CHECK(len2 == len && memcmp(line, line2, len) == 0);
    free(line2);
    cw_dlq_record_clear(&again);
    free(line);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    cw_dlq_record rec;
    int rc = cw_dlq_import_line((const char *)data, size, &rec);
    if (rc == 0) {
        FZ_CHECK(memchr(rec.message_id, '\0', sizeof rec.message_id) != NULL);
        if (rec.props._flags & AMQP_BASIC_TIMESTAMP_FLAG && rec.props.timestamp == UINT64_MAX)
            FZ_CHECK(written(data, size, "18446744073709551615"));
        if (rec.props._flags & AMQP_BASIC_HEADERS_FLAG) {
            amqp_field_value_t headers = {.kind = AMQP_FIELD_KIND_TABLE,
                                          .value.table = rec.props.headers};
            check_not_clamped(data, size, &headers);
        }
        check_roundtrip(&rec);
    } else {
        FZ_CHECK(rc == CW_STATUS_INVALID_MESSAGE || rc == CW_STATUS_NOMEM);
        FZ_CHECK(cw_error_last()[0] != '\0');
    }
    cw_dlq_record_clear(&rec);
    return 0;
}
