/* compworker dlq show: every property and header of the tasks named, their
 * body and their history in the store. */
#include <inttypes.h>
#include <stdio.h>
#include <string.h>

#include <json.h>

#include "framework/clock.h"
#include "framework/error.h"
#include "workers/cli.h"
#include "workers/dlq_cli.h"

typedef struct show_state {
    cw_cli_dlq_cmd *c;
    cw_store *store;
    uint64_t shown;
    int64_t now;
} show_state;

static void print_field_value(const amqp_field_value_t *v);

static void print_bytes_quoted(amqp_bytes_t b)
{
    putchar('"');
    const unsigned char *p = b.bytes;
    for (size_t i = 0; i < b.len; i++) {
        if (p[i] < 0x20 || p[i] == 0x7f)
            printf("\\x%02x", p[i]);
        else if (p[i] == '"' || p[i] == '\\')
            printf("\\%c", p[i]);
        else
            putchar(p[i]);
    }
    putchar('"');
}

static void print_table_inline(const amqp_table_t *t)
{
    putchar('{');
    for (int i = 0; i < t->num_entries; i++) {
        printf("%s%.*s: ", i ? ", " : "", (int)t->entries[i].key.len,
               (const char *)t->entries[i].key.bytes);
        print_field_value(&t->entries[i].value);
    }
    putchar('}');
}

static void print_field_value(const amqp_field_value_t *v)
{
    int64_t n;
    switch (v->kind) {
    case AMQP_FIELD_KIND_BOOLEAN: fputs(v->value.boolean ? "true" : "false", stdout); break;
    case AMQP_FIELD_KIND_F32: printf("%.9g", (double)v->value.f32); break;
    case AMQP_FIELD_KIND_F64: printf("%.17g", v->value.f64); break;
    case AMQP_FIELD_KIND_DECIMAL:
        printf("%" PRIu32 "e-%u", v->value.decimal.value, v->value.decimal.decimals);
        break;
    case AMQP_FIELD_KIND_UTF8:
    case AMQP_FIELD_KIND_BYTES: print_bytes_quoted(v->value.bytes); break;
    case AMQP_FIELD_KIND_TIMESTAMP: {
        char t[40];
        cw_cli_local_time((int64_t)v->value.u64 * 1000, t, sizeof t);
        printf("%s", t);
        break;
    }
    case AMQP_FIELD_KIND_VOID: fputs("null", stdout); break;
    case AMQP_FIELD_KIND_ARRAY:
        putchar('[');
        for (int i = 0; i < v->value.array.num_entries; i++) {
            if (i)
                fputs(", ", stdout);
            print_field_value(&v->value.array.entries[i]);
        }
        putchar(']');
        break;
    case AMQP_FIELD_KIND_TABLE: print_table_inline(&v->value.table); break;
    case AMQP_FIELD_KIND_U64: printf("%" PRIu64, v->value.u64); break;
    default:
        if (cw__dlq_field_int(v, &n))
            printf("%" PRId64, n);
        else
            printf("(kind %c)", v->kind);
    }
}

static const char *kind_label(uint8_t k)
{
    switch (k) {
    case AMQP_FIELD_KIND_BOOLEAN: return "bool";
    case AMQP_FIELD_KIND_I8: return "i8";
    case AMQP_FIELD_KIND_U8: return "u8";
    case AMQP_FIELD_KIND_I16: return "i16";
    case AMQP_FIELD_KIND_U16: return "u16";
    case AMQP_FIELD_KIND_I32: return "i32";
    case AMQP_FIELD_KIND_U32: return "u32";
    case AMQP_FIELD_KIND_I64: return "i64";
    case AMQP_FIELD_KIND_U64: return "u64";
    case AMQP_FIELD_KIND_F32: return "f32";
    case AMQP_FIELD_KIND_F64: return "f64";
    case AMQP_FIELD_KIND_DECIMAL: return "decimal";
    case AMQP_FIELD_KIND_UTF8: return "string";
    case AMQP_FIELD_KIND_BYTES: return "bytes";
    case AMQP_FIELD_KIND_TIMESTAMP: return "timestamp";
    case AMQP_FIELD_KIND_VOID: return "void";
    case AMQP_FIELD_KIND_ARRAY: return "array";
    case AMQP_FIELD_KIND_TABLE: return "table";
    default: return "?";
    }
}

static void print_prop(const char *name, bool has, amqp_bytes_t b)
{
    if (!has)
        return;
    printf("  %-18s  ", name);
    print_bytes_quoted(b);
    putchar('\n');
}

/* The body, pretty-printed when it is JSON, else escaped text. */
static void print_body(amqp_bytes_t body)
{
    json_tokener *tok = json_tokener_new();
    json_object *o = NULL;
    if (tok && body.len < (size_t)INT32_MAX && !memchr(body.bytes, '\0', body.len)) {
        json_tokener_set_flags(tok, JSON_TOKENER_STRICT);
        o = json_tokener_parse_ex(tok, body.bytes, (int)body.len);
        if (o && json_tokener_get_parse_end(tok) != body.len) {
            json_object_put(o);
            o = NULL;
        }
    }
    json_tokener_free(tok);
    if (o) {
        const char *s = json_object_to_json_string_ext(o, JSON_C_TO_STRING_PRETTY |
                                                              JSON_C_TO_STRING_SPACED |
                                                              JSON_C_TO_STRING_NOSLASHESCAPE);
        fputs("  ", stdout);
        for (const char *p = s; *p; p++) {
            putchar(*p);
            if (*p == '\n')
                fputs("  ", stdout);
        }
        putchar('\n');
        json_object_put(o);
        return;
    }
    fputs("  (not JSON) ", stdout);
    print_bytes_quoted(body);
    putchar('\n');
}

static int show_one(cw_dlq_msg *m, void *ud)
{
    show_state *ss = ud;
    cw_cli_dlq_cmd *c = ss->c;
    if (!cw_dlq_filter_match(&c->filter, m))
        return 0;
    cw_cli_dlq_mark_seen(c, m->message_id);
    ss->shown++;
    cw_cli_progress_done();
    const amqp_basic_properties_t *p = &m->env.message.properties;
    if (c->json) {
        json_object *o = cw_cli_dlq_msg_json(m);
        if (!o)
            return CW_STATUS_NOMEM;
        json_object_object_add(o, "message", cw_dlq_export_object(&m->env));
        cw_task_record rec;
        if (ss->store && cw_store_get(ss->store, m->message_id, &rec) == 0)
            json_object_object_add(o, "store", cw_cli_record_json(ss->store, &rec));
        cw_cli_json_line(o);
        return 0;
    }
    char when[64];
    if (ss->shown > 1)
        putchar('\n');
    printf("Message %s  (position %" PRIu64 " in %s)\n\n", m->message_id, m->position, c->cfg->dlq);
    printf("Failure\n");
    printf("  %-18s  %s\n", "error class", m->error_class[0] ? m->error_class : "-");
    printf("  %-18s  ", "error");
    cw_cli_put_safe(stdout, m->error[0] ? m->error : "-");
    cw_cli_when(m->failed_at_ms, ss->now, when, sizeof when);
    printf("\n  %-18s  %s\n", "failed at", when);
    printf("  %-18s  %u\n", "attempts", m->attempts);
    printf("  %-18s  %s\n", "handler", m->handler[0] ? m->handler : "-");
    printf("  %-18s  %s\n", "worker", m->worker[0] ? m->worker : "-");
    printf("  %-18s  %s\n", "queue", m->queue[0] ? m->queue : "-");
    if (m->has_orig)
        printf("  %-18s  exchange %s, routing key %s\n", "first published to",
               m->orig_exchange[0] ? m->orig_exchange : "(default)", m->orig_routing_key);
    else
        printf("  %-18s  unknown (replay it with --to ROUTING_KEY)\n", "first published to");
    printf("  %-18s  %u time%s\n", "replayed", m->replayed, m->replayed == 1 ? "" : "s");

    printf("\nProperties\n");
    print_prop("message_id", p->_flags & AMQP_BASIC_MESSAGE_ID_FLAG, p->message_id);
    print_prop("type", p->_flags & AMQP_BASIC_TYPE_FLAG, p->type);
    print_prop("correlation_id", p->_flags & AMQP_BASIC_CORRELATION_ID_FLAG, p->correlation_id);
    print_prop("content_type", p->_flags & AMQP_BASIC_CONTENT_TYPE_FLAG, p->content_type);
    print_prop("content_encoding", p->_flags & AMQP_BASIC_CONTENT_ENCODING_FLAG,
               p->content_encoding);
    if (p->_flags & AMQP_BASIC_DELIVERY_MODE_FLAG)
        printf("  %-18s  %u%s\n", "delivery_mode", p->delivery_mode,
               p->delivery_mode == AMQP_DELIVERY_PERSISTENT ? " (persistent)" : "");
    if (p->_flags & AMQP_BASIC_PRIORITY_FLAG)
        printf("  %-18s  %u\n", "priority", p->priority);
    if (p->_flags & AMQP_BASIC_TIMESTAMP_FLAG) {
        cw_cli_when((int64_t)p->timestamp * 1000, ss->now, when, sizeof when);
        printf("  %-18s  %s\n", "timestamp", when);
    }
    print_prop("reply_to", p->_flags & AMQP_BASIC_REPLY_TO_FLAG, p->reply_to);
    print_prop("expiration", p->_flags & AMQP_BASIC_EXPIRATION_FLAG, p->expiration);
    print_prop("user_id", p->_flags & AMQP_BASIC_USER_ID_FLAG, p->user_id);
    print_prop("app_id", p->_flags & AMQP_BASIC_APP_ID_FLAG, p->app_id);
    print_prop("cluster_id", p->_flags & AMQP_BASIC_CLUSTER_ID_FLAG, p->cluster_id);

    printf("\nHeaders\n");
    int nh = (p->_flags & AMQP_BASIC_HEADERS_FLAG) ? p->headers.num_entries : 0;
    if (nh == 0)
        printf("  (none)\n");
    for (int i = 0; i < nh; i++) {
        const amqp_table_entry_t *e = &p->headers.entries[i];
        printf("  %-24.*s  %-9s  ", (int)e->key.len, (const char *)e->key.bytes,
               kind_label(e->value.kind));
        print_field_value(&e->value);
        if (e->key.len == 16 && memcmp(e->key.bytes, "x-delivery-count", 16) == 0)
            fputs("  (the broker's count of deliveries from this queue, browses included)", stdout);
        putchar('\n');
    }

    printf("\nBody (%zu bytes)\n", m->env.message.body.len);
    print_body(m->env.message.body);

    printf("\nHistory (from the store)\n");
    if (!ss->store)
        printf("  (the store cannot be read: %s)\n", cw_error_last());
    else if (cw_cli_print_history(ss->store, m->message_id, "  ") == 0)
        printf("  (no record of this message ID)\n");
    return 0;
}

static int cmd_show(cw_cli_dlq_cmd *c)
{
    show_state ss = {.c = c, .now = cw__now_ms()};
    char store_err[1024] = "";
    if (cw_cli_store_open(c->cfg, true, &ss.store))
        snprintf(store_err, sizeof store_err, "%s", cw_error_last());
    uint64_t total = 0;
    int rc = cw_dlq_browse(c->cfg, NULL, "compworker dlq show", &c->ctl, show_one, &ss, &total,
                           NULL);
    cw_cli_progress_done();
    cw_store_free(ss.store);
    if (rc < 0)
        return cw_cli_dlq_fail(c, rc);
    if (cw_cli_dlq_report_unseen(c)) {
        fprintf(stderr, "compworker: 'compworker status MESSAGE_ID' tells what became of a task\n");
        return CW_EXIT_FAILURE;
    }
    return CW_EXIT_OK;
}

static int check_show(const cw_cli_dlq_cmd *c)
{
    if (c->n_args == 0)
        return cw_cli_fail(CW_EXIT_USAGE, "dlq show: give one or more message IDs");
    return 0;
}

static const cw_opt_spec show_specs[] = {
    {CW_OPT_INCLUDE, .include = cw_cli_dlq_common_specs},
    CW_OPT_HELP_SPEC,
    CW_OPT_END_SPEC,
};

const cw_cli_dlq_sub cw_cli_dlq_show = {
    .name = "show",
    .cmd = {.name = "dlq show",
            .args = "MESSAGE_ID...",
            .summary = "every property and header, the body, the history",
            .specs = show_specs},
    .args = CW_CLI_DLQ_IDS,
    .check = check_show,
    .run = cmd_show,
};
