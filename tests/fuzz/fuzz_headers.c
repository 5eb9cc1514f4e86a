/* Fuzz target: everything that reads a message's headers (an amqp_table_t
 * of any AMQP field kinds, nested tables and arrays included): the task's
 * header lookups (framework/task.c), the DLQ's decoding of the failure
 * headers and the broker's x-death (dlq/message.c), grouping and filtering
 * by them (dlq/filter.c), the headers of a replayed copy (dlq/replay.c), and
 * the export of a dead-lettered message (dlq/export.c), which must import
 * back to the very same properties.
 *
 * Input: one byte of flags (bit 0: empty strings are NULL), the exchange and
 * routing key (short strings), the basic properties (fz_props() in fuzz.h),
 * then the body: the rest of the input. */
#include <fnmatch.h>
#include <string.h>

#include "compworker/compworker.h"
#include "compworker/status.h"
#include "dlq/deadletter.h"
#include "dlq/dlq.h"
#include "framework/task.h"
#include "fuzz.h"
#include "retry/delay.h"

#define FZ_TERMINATED(arr) FZ_CHECK(memchr((arr), '\0', sizeof(arr)) != NULL)

/* The first entry named `name` (the lookups' documented answer), or NULL. */
static const amqp_field_value_t *first_entry(const amqp_basic_properties_t *p, amqp_bytes_t name)
{
    if (!(p->_flags & AMQP_BASIC_HEADERS_FLAG))
        return NULL;
    for (int i = 0; i < p->headers.num_entries; i++) {
        if (fz_bytes_equal(p->headers.entries[i].key, name))
            return &p->headers.entries[i].value;
    }
    return NULL;
}

static void check_lookups(amqp_envelope_t *env)
{
    const amqp_basic_properties_t *p = &env->message.properties;
    static const char *const names[] = {"cw-attempt",
                                        "cw-error",
                                        "cw-error-class",
                                        "cw-failed-at",
                                        "cw-handler",
                                        "cw-worker",
                                        "cw-original-exchange",
                                        "cw-original-routing-key",
                                        "cw-queue",
                                        "cw-replayed",
                                        "x-death",
                                        "x-first-death-queue"};
    cw_task t;
    memset(&t, 0, sizeof t);
    t.env = *env; /* borrowed: has_env stays false */
    size_t n_names = sizeof names / sizeof *names;
    int n_keys = (p->_flags & AMQP_BASIC_HEADERS_FLAG) ? p->headers.num_entries : 0;
    for (size_t i = 0; i < n_names + (size_t)n_keys; i++) {
        char key[256];
        amqp_bytes_t name;
        if (i < n_names) {
            name = amqp_cstring_bytes(names[i]);
            snprintf(key, sizeof key, "%s", names[i]);
        } else {
            name = p->headers.entries[i - n_names].key;
            /* Only what can be asked for: a C string, never "" (whose
             * lookup would compare 0 bytes of a key that may be NULL). */
            if (name.len == 0 || name.len >= sizeof key || memchr(name.bytes, '\0', name.len))
                continue;
            memcpy(key, name.bytes, name.len);
            key[name.len] = '\0';
        }
        const amqp_field_value_t *want = first_entry(p, name);
        FZ_CHECK(cw__task_header_value(p, key) == want);
        FZ_CHECK(cw_dlq_header(p, key) == want);
        const char *s = cw_task_header(&t, key);
        bool text = want &&
                    (want->kind == AMQP_FIELD_KIND_UTF8 || want->kind == AMQP_FIELD_KIND_BYTES) &&
                    !(want->value.bytes.len &&
                      memchr(want->value.bytes.bytes, '\0', want->value.bytes.len));
        FZ_CHECK((s != NULL) == text);
        if (s) {
            FZ_CHECK(strlen(s) == want->value.bytes.len);
            FZ_CHECK(!s[0] || memcmp(s, want->value.bytes.bytes, strlen(s)) == 0);
        }
    }
    t.env = (amqp_envelope_t){0};
    cw__task_reset(&t);
}

static bool has_glob(const char *s)
{
    return strpbrk(s, "*?[\\") != NULL;
}

static void check_decode(amqp_envelope_t *env)
{
    cw_dlq_msg m;
    memset(&m, 0, sizeof m);
    m.env = *env; /* borrowed: has_env stays false */
    cw_dlq_msg_decode(&m);
    FZ_TERMINATED(m.message_id);
    FZ_TERMINATED(m.type);
    FZ_TERMINATED(m.saga_id);
    FZ_TERMINATED(m.error_class);
    FZ_TERMINATED(m.error);
    FZ_TERMINATED(m.handler);
    FZ_TERMINATED(m.worker);
    FZ_TERMINATED(m.queue);
    FZ_TERMINATED(m.orig_exchange);
    FZ_TERMINATED(m.orig_routing_key);
    FZ_CHECK(m.attempts <= 1000000 && m.replayed <= 1000000);

    /* Grouping: three copies make one group of three. */
    cw_dlq_groups gs = {0};
    for (int i = 0; i < 3; i++)
        FZ_CHECK(cw_dlq_groups_add(&gs, &m) == 0);
    cw_dlq_groups_sort(&gs);
    FZ_CHECK(gs.n == 1 && gs.g[0].count == 3);
    FZ_CHECK(strcmp(gs.g[0].type, m.type) == 0);
    FZ_CHECK(gs.g[0].n_reasons == 1 && gs.g[0].reasons[0].count == 3);
    if (m.failed_at_ms > 0) /* 0 is "no time"; a time before 1970 is not ordered */
        FZ_CHECK(gs.g[0].oldest_ms == m.failed_at_ms && gs.g[0].newest_ms == m.failed_at_ms);
    cw_dlq_groups_free(&gs);

    /* A filter made of the message's own fields selects it. */
    cw_dlq_filter f = {.saga_id = m.saga_id, .error_class = m.error_class, .grep = m.error};
    char *id = m.message_id;
    f.ids = &id;
    f.n_ids = 1;
    if (!has_glob(m.type))
        f.type = m.type;
    if (m.failed_at_ms && m.failed_at_ms < INT64_MAX) {
        f.has_since = f.has_until = true;
        f.since_ms = m.failed_at_ms;
        f.until_ms = m.failed_at_ms + 1;
    }
    FZ_CHECK(cw_dlq_filter_active(&f));
    FZ_CHECK(cw_dlq_filter_match(&f, &m));
    if (f.has_since) {
        f.since_ms = m.failed_at_ms + 1;
        f.until_ms = INT64_MAX;
        FZ_CHECK(!cw_dlq_filter_match(&f, &m));
    }
}

static bool is_key(amqp_bytes_t k, const char *name)
{
    return k.len == strlen(name) && memcmp(k.bytes, name, k.len) == 0;
}

static void check_replay_props(const amqp_basic_properties_t *p, unsigned replayed)
{
    amqp_basic_properties_t out;
    amqp_table_entry_t *entries;
    FZ_CHECK(cw_dlq_replay_props(p, replayed, &out, &entries) == 0);
    FZ_CHECK(out._flags & AMQP_BASIC_HEADERS_FLAG);
    FZ_CHECK(out.delivery_mode == AMQP_DELIVERY_PERSISTENT);
    int n = out.headers.num_entries;
    FZ_CHECK(n >= 1 && out.headers.entries == entries);
    const amqp_table_entry_t *last = &entries[n - 1];
    FZ_CHECK(is_key(last->key, "cw-replayed") && last->value.kind == AMQP_FIELD_KIND_I32 &&
             last->value.value.i32 == (int32_t)replayed);
    /* The others: the originals in order, less the failure and broker
     * headers and any earlier cw-replayed. */
    int j = 0;
    int n_in = (p->_flags & AMQP_BASIC_HEADERS_FLAG) ? p->headers.num_entries : 0;
    for (int i = 0; i < n_in; i++) {
        amqp_bytes_t k = p->headers.entries[i].key;
        if (cw__is_failure_header(k) || cw__delay_header_is_broker(k.bytes, k.len) ||
            is_key(k, "cw-replayed"))
            continue;
        FZ_CHECK(j < n - 1 && fz_bytes_equal(entries[j].key, k) &&
                 fz_value_equal(&entries[j].value, &p->headers.entries[i].value));
        j++;
    }
    FZ_CHECK(j == n - 1);
    free(entries);
}

static void check_export(const amqp_envelope_t *env)
{
    char *line;
    size_t len;
    const amqp_basic_properties_t *p = &env->message.properties;
    /* Deeper headers than an import takes are refused by the export too. */
    if ((p->_flags & AMQP_BASIC_HEADERS_FLAG) && fz_table_depth(&p->headers) > CW_DLQ_MAX_DEPTH) {
        FZ_CHECK(cw_dlq_export_line(env, &line, &len) == CW_STATUS_TOO_LARGE);
        FZ_CHECK(cw_dlq_export_object(env) == NULL);
        return;
    }
    FZ_CHECK(cw_dlq_export_line(env, &line, &len) == 0);
    FZ_CHECK(strlen(line) == len && !memchr(line, '\n', len));
    cw_dlq_record rec;
    int rc = cw_dlq_import_line(line, len, &rec);
    if (rc != 0)
        fprintf(stderr, "import of an export failed: %s\n", cw_error_last());
    FZ_CHECK(rc == 0);
    FZ_CHECK(fz_props_equal(&env->message.properties, &rec.props, true));
    FZ_CHECK(fz_bytes_equal(env->message.body, rec.body));

    /* Exported again, the record gives the same line. */
    amqp_envelope_t again = *env;
    again.message.properties = rec.props;
    again.message.body = rec.body;
    char *line2;
    size_t len2;
    FZ_CHECK(cw_dlq_export_line(&again, &line2, &len2) == 0);
    FZ_CHECK(len2 == len && memcmp(line, line2, len) == 0);
    free(line2);
    cw_dlq_record_clear(&rec);
    free(line);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    fz_in in = {data, size};
    uint8_t flags = fz_u8(&in);
    fz_arena arena = {.null_empty = flags & 1};
    amqp_envelope_t env;
    memset(&env, 0, sizeof env);
    env.exchange = fz_bytes(&arena, &in, 255);
    env.routing_key = fz_bytes(&arena, &in, 255);
    fz_props(&arena, &in, &env.message.properties);
    env.message.body = fz_rest(&arena, &in);

    check_lookups(&env);
    check_decode(&env);
    check_replay_props(&env.message.properties, 1u + (flags >> 1));
    check_export(&env);

    fz_arena_free(&arena);
    return 0;
}
