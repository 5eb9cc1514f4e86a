/* compworker dlq: look at, group, replay, delete, export and import the
 * tasks in a pool's dead-letter queue. The work is done in dlq/; this file
 * reads the flags and prints. */
#include <errno.h>
#include <getopt.h>
#include <inttypes.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <json.h>

#include "dlq/dlq.h"
#include "framework/broker.h"
#include "framework/clock.h"
#include "framework/config.h"
#include "framework/error.h"
#include "framework/parse.h"
#include "framework/registry.h"
#include "workers/cli.h"
#include "workers/dlq_cli.h"

#define IMPORT_BATCH 256
#define DEFAULT_CANARY_TIMEOUT_MS 120000
#define MAX_BAD_LINES_SHOWN 20

static const char dlq_usage[] =
    "usage: compworker dlq <command> -c POOL.INI [options]\n"
    "\n"
    "commands (none of them consumes a message it does not act on):\n"
    "  list [filters] [--limit N]          the DLQ's tasks, oldest first\n"
    "  show MESSAGE_ID...                  every property and header, the body, the history\n"
    "  stats [filters]                     counts by type and error class, oldest and newest\n"
    "  replay (MESSAGE_ID... | --all | filters) [--dry-run] [--edit] [--to ROUTING_KEY]\n"
    "         [--force] [--limit N] [--canary N [--canary-timeout D]] [--rate R]\n"
    "                                      republish to where each task was first sent,\n"
    "                                      attempts reset; removed from the DLQ once confirmed\n"
    "  delete (MESSAGE_ID... | --all | filters) [--yes]\n"
    "                                      remove, after asking (a terminal) unless --yes\n"
    "  export [filters] > FILE.jsonl       one JSON object per task, lossless\n"
    "  import [FILE.jsonl]                 publish an export's tasks into the DLQ (stdin\n"
    "                                      without FILE); any bad line: nothing is imported\n"
    "\n"
    "filters (all must match):\n"
    "  --type GLOB          task type, e.g. payment.refund or 'payment.*'\n"
    "  --saga-id ID         saga (correlation) ID\n"
    "  --error-class C      invalid, permanent, exhausted, poison (broker: the broker's own)\n"
    "  --since T, --until T failed at or after / before T: 2h, 30m, 7d (ago), 2026-11-24,\n"
    "                       2026-11-24T21:50 (local) or 2026-11-24T21:50:00Z\n"
    "  --grep TEXT          the reason contains TEXT (case-insensitive)\n"
    "\n"
    "  --json               one JSON object per line instead of columns\n"
    "\n"
    "--edit opens the body of the one MESSAGE_ID given in $EDITOR and refuses what is not a\n"
    "JSON object. --canary N replays N tasks, waits for their outcome (--canary-timeout, 2m),\n"
    "and releases the rest only if they were applied, at --rate R per second if given.\n"
    "A task done in the store (already applied) is replayed only with --force.\n";

enum {
    OPT_JSON = 256,
    OPT_SINCE,
    OPT_UNTIL,
    OPT_ALL,
    OPT_DRY_RUN,
    OPT_EDIT,
    OPT_TO,
    OPT_FORCE,
    OPT_CANARY,
    OPT_RATE,
    OPT_CANARY_TIMEOUT,
};

/* Which command takes which option. */
enum {
    CMD_LIST = 1 << 0,
    CMD_SHOW = 1 << 1,
    CMD_STATS = 1 << 2,
    CMD_REPLAY = 1 << 3,
    CMD_DELETE = 1 << 4,
    CMD_EXPORT = 1 << 5,
    CMD_IMPORT = 1 << 6,
};
#define CMD_FILTERS (CMD_LIST | CMD_STATS | CMD_REPLAY | CMD_DELETE | CMD_EXPORT)

static const struct {
    int opt;
    const char *name;
    unsigned cmds;
} opt_cmds[] = {
    {'t', "--type", CMD_FILTERS},          {'s', "--saga-id", CMD_FILTERS},
    {'e', "--error-class", CMD_FILTERS},   {OPT_SINCE, "--since", CMD_FILTERS},
    {OPT_UNTIL, "--until", CMD_FILTERS},   {'g', "--grep", CMD_FILTERS},
    {'n', "--limit", CMD_LIST | CMD_REPLAY},
    {OPT_ALL, "--all", CMD_REPLAY | CMD_DELETE},
    {OPT_DRY_RUN, "--dry-run", CMD_REPLAY}, {OPT_EDIT, "--edit", CMD_REPLAY},
    {OPT_TO, "--to", CMD_REPLAY},          {OPT_FORCE, "--force", CMD_REPLAY},
    {OPT_CANARY, "--canary", CMD_REPLAY},  {OPT_RATE, "--rate", CMD_REPLAY},
    {OPT_CANARY_TIMEOUT, "--canary-timeout", CMD_REPLAY},
    {'y', "--yes", CMD_DELETE},
};

typedef struct dlq_cmd {
    const char *name;
    unsigned bit;
    const cw_config *cfg;
    bool json;
    bool all, dry_run, edit, force, yes;
    const char *to;
    uint64_t limit;
    unsigned canary;
    double rate;
    int64_t canary_timeout_ms;
    cw_dlq_filter filter;
    char **args; /* positional arguments after the command */
    int n_args;
    bool *seen;  /* per message ID argument: found in the DLQ */
    cw_dlq_ctl ctl;
} dlq_cmd;

/* ---- shared output ------------------------------------------------------- */

static json_object *jstr(const char *s)
{
    return s && *s ? json_object_new_string(s) : NULL;
}

/* The summary of a message as a JSON object. */
static json_object *msg_json(const cw_dlq_msg *m)
{
    json_object *o = json_object_new_object();
    if (!o)
        return NULL;
    json_object_object_add(o, "message_id", jstr(m->message_id));
    json_object_object_add(o, "type", jstr(m->type));
    json_object_object_add(o, "saga_id", jstr(m->saga_id));
    json_object_object_add(o, "error_class", jstr(m->error_class));
    json_object_object_add(o, "error", jstr(m->error));
    json_object_object_add(o, "attempts", json_object_new_int64(m->attempts));
    json_object_object_add(o, "replayed", json_object_new_int64(m->replayed));
    json_object_object_add(o, "failed_at", cw_cli_json_time(m->failed_at_ms));
    json_object_object_add(o, "queue", jstr(m->queue));
    json_object_object_add(o, "handler", jstr(m->handler));
    json_object_object_add(o, "worker", jstr(m->worker));
    json_object_object_add(o, "original_exchange",
                           m->has_orig ? json_object_new_string(m->orig_exchange) : NULL);
    json_object_object_add(o, "original_routing_key", jstr(m->has_orig ? m->orig_routing_key : ""));
    json_object_object_add(o, "position", json_object_new_int64((int64_t)m->position));
    return o;
}

static void mark_seen(dlq_cmd *c, const char *message_id)
{
    for (int i = 0; i < c->n_args; i++) {
        if (strcmp(c->args[i], message_id) == 0)
            c->seen[i] = true;
    }
}

/* Reports the message ID arguments that were not found; true if any. */
static bool report_unseen(const dlq_cmd *c)
{
    bool any = false;
    for (int i = 0; i < c->n_args; i++) {
        if (!c->seen[i]) {
            fprintf(stderr, "compworker: dlq %s: %s is not in %s\n", c->name, c->args[i],
                    c->cfg->dlq);
            any = true;
        }
    }
    return any;
}

static int fail_op(const dlq_cmd *c, int rc)
{
    cw_cli_progress_done();
    if (rc == CW_STATUS_INTERRUPTED)
        return cw_cli_fail(CW_EXIT_FAILURE, "dlq %s: interrupted; nothing changed", c->name);
    return cw_cli_fail(CW_EXIT_FAILURE, "dlq %s: %s", c->name, cw_error_last());
}

#define W_ID 36
#define W_TYPE 16
#define W_SAGA 16
#define W_CLASS 9

/* "unknown payment pay-0043-x (1); unknown payment pay-0048-x (1)" */
static void group_reasons(const cw_dlq_group *g, char *out, size_t cap)
{
    size_t o = 0;
    out[0] = '\0';
    for (size_t i = 0; i < g->n_reasons && o < cap; i++) {
        const char *t = g->reasons[i].text[0] ? g->reasons[i].text : "(no reason)";
        if (g->n_reasons == 1 && !g->other_reasons)
            o += (size_t)snprintf(out + o, cap - o, "%s", t);
        else
            o += (size_t)snprintf(out + o, cap - o, "%s%s (%" PRIu64 ")", i ? "; " : "", t,
                                  g->reasons[i].count);
    }
    if (g->other_reasons && o < cap)
        snprintf(out + o, cap - o, "; %" PRIu64 " with other reasons", g->other_reasons);
}

static void print_groups(const cw_dlq_groups *gs, const char *indent, bool times)
{
    int64_t now = cw__now_ms();
    if (times)
        printf("%s%-*s  %-*s  %7s  %-28s  %s\n", indent, W_TYPE, "TYPE", W_CLASS, "CLASS",
               "COUNT", "OLDEST", "NEWEST");
    else
        printf("%s%-*s  %-*s  %7s  %s\n", indent, W_TYPE, "TYPE", W_CLASS, "CLASS", "COUNT",
               "REASON");
    for (size_t i = 0; i < gs->n; i++) {
        const cw_dlq_group *g = &gs->g[i];
        char type[64], cls[32], oldest[48], newest[48], reason[200];
        cw_cli_fit(g->type[0] ? g->type : "-", W_TYPE, true, type, sizeof type);
        cw_cli_fit(g->error_class[0] ? g->error_class : "-", W_CLASS, true, cls, sizeof cls);
        char why[CW_DLQ_GROUP_REASONS * 600 + 64];
        group_reasons(g, why, sizeof why);
        if (times) {
            cw_cli_when(g->oldest_ms, now, oldest, sizeof oldest);
            cw_cli_when(g->newest_ms, now, newest, sizeof newest);
            printf("%s%s  %s  %7" PRIu64 "  %-28s  %s\n", indent, type, cls, g->count, oldest,
                   newest);
            cw_cli_fit(why, CW_CLI_WIDTH - 4 - strlen(indent), false, reason, sizeof reason);
            printf("%s    %s\n", indent, reason);
        } else {
            size_t used = strlen(indent) + W_TYPE + 2 + W_CLASS + 2 + 7 + 2;
            cw_cli_fit(why, CW_CLI_WIDTH - used, false, reason, sizeof reason);
            printf("%s%s  %s  %7" PRIu64 "  %s\n", indent, type, cls, g->count, reason);
        }
    }
}

static json_object *group_json(const cw_dlq_group *g)
{
    json_object *o = json_object_new_object();
    if (!o)
        return NULL;
    json_object_object_add(o, "type", jstr(g->type));
    json_object_object_add(o, "error_class", jstr(g->error_class));
    json_object_object_add(o, "count", json_object_new_int64((int64_t)g->count));
    json_object_object_add(o, "oldest", cw_cli_json_time(g->oldest_ms));
    json_object_object_add(o, "newest", cw_cli_json_time(g->newest_ms));
    json_object *r = json_object_new_array();
    for (size_t i = 0; r && i < g->n_reasons; i++) {
        json_object *e = json_object_new_object();
        json_object_object_add(e, "reason", json_object_new_string(g->reasons[i].text));
        json_object_object_add(e, "count", json_object_new_int64((int64_t)g->reasons[i].count));
        json_object_array_add(r, e);
    }
    json_object_object_add(o, "reasons", r);
    json_object_object_add(o, "other_reasons", json_object_new_int64((int64_t)g->other_reasons));
    return o;
}

/* ---- list ---------------------------------------------------------------- */

typedef struct list_state {
    dlq_cmd *c;
    uint64_t matched;
    int64_t now;
} list_state;

static int list_one(cw_dlq_msg *m, void *ud)
{
    list_state *ls = ud;
    dlq_cmd *c = ls->c;
    if (!cw_dlq_filter_match(&c->filter, m))
        return 0;
    if (c->limit && ls->matched >= c->limit)
        return 1; /* stop reading: the rest stays as it is */
    ls->matched++;
    if (c->json) {
        cw_cli_json_line(msg_json(m));
        return 0;
    }
    cw_cli_progress_done();
    if (ls->matched == 1)
        printf("%-*s  %-*s  %-*s  %-*s  %3s  %s\n", W_ID, "MESSAGE ID", W_TYPE, "TYPE", W_SAGA,
               "SAGA ID", W_CLASS, "CLASS", "ATT", "FAILED");
    char id[200], type[64], saga[64], cls[32], age[24], reason[400];
    /* The ID is printed whole, however long: it is what `show` and `replay` take. */
    cw_cli_fit(m->message_id[0] ? m->message_id : "(no message ID)", CW_MESSAGE_ID_MAX, false, id,
               sizeof id);
    cw_cli_fit(m->type[0] ? m->type : "-", W_TYPE, true, type, sizeof type);
    cw_cli_fit(m->saga_id[0] ? m->saga_id : "-", W_SAGA, true, saga, sizeof saga);
    cw_cli_fit(m->error_class[0] ? m->error_class : "-", W_CLASS, true, cls, sizeof cls);
    cw_cli_age(m->failed_at_ms, ls->now, age, sizeof age);
    cw_cli_fit(m->error[0] ? m->error : "(no reason given)", CW_CLI_WIDTH - 4, false, reason,
               sizeof reason);
    printf("%-*s  %s  %s  %s  %3u  %s\n    %s\n", W_ID, id, type, saga, cls, m->attempts, age,
           reason);
    return 0;
}

static int cmd_list(dlq_cmd *c)
{
    list_state ls = {.c = c, .now = cw__now_ms()};
    uint64_t total = 0, missing = 0;
    int rc = cw_dlq_browse(c->cfg, NULL, "compworker dlq list", &c->ctl, list_one, &ls, &total,
                           &missing);
    cw_cli_progress_done();
    if (rc < 0)
        return fail_op(c, rc);
    if (c->json)
        return CW_EXIT_OK;
    bool filtered = cw_dlq_filter_active(&c->filter);
    if (total == 0)
        printf("%s is empty.\n", c->cfg->dlq);
    else if (ls.matched == 0)
        printf("None of the %" PRIu64 " tasks in %s matches.\n", total, c->cfg->dlq);
    else if (rc == 1)
        printf("\nFirst %" PRIu64 " %s of the %" PRIu64 " tasks in %s (--limit), oldest first.\n",
               ls.matched, filtered ? "matching" : "tasks", total, c->cfg->dlq);
    else if (filtered)
        printf("\n%" PRIu64 " of the %" PRIu64 " tasks in %s match, oldest first.\n", ls.matched,
               total, c->cfg->dlq);
    else
        printf("\n%" PRIu64 " task%s in %s, oldest first.\n", total, total == 1 ? "" : "s",
               c->cfg->dlq);
    if (missing)
        printf("%" PRIu64 " more are held by another consumer of the queue and were not seen.\n",
               missing);
    return CW_EXIT_OK;
}

/* ---- show ---------------------------------------------------------------- */

typedef struct show_state {
    dlq_cmd *c;
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
        const char *s = json_object_to_json_string_ext(
            o, JSON_C_TO_STRING_PRETTY | JSON_C_TO_STRING_SPACED | JSON_C_TO_STRING_NOSLASHESCAPE);
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
    dlq_cmd *c = ss->c;
    if (!cw_dlq_filter_match(&c->filter, m))
        return 0;
    mark_seen(c, m->message_id);
    ss->shown++;
    cw_cli_progress_done();
    const amqp_basic_properties_t *p = &m->env.message.properties;
    if (c->json) {
        json_object *o = msg_json(m);
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
    printf("Message %s  (position %" PRIu64 " in %s)\n\n", m->message_id, m->position,
           c->cfg->dlq);
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
            fputs("  (the broker's count of deliveries from this queue, browses included)",
                  stdout);
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

static int cmd_show(dlq_cmd *c)
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
        return fail_op(c, rc);
    if (report_unseen(c)) {
        fprintf(stderr, "compworker: 'compworker status MESSAGE_ID' tells what became of a task\n");
        return CW_EXIT_FAILURE;
    }
    return CW_EXIT_OK;
}

/* ---- stats --------------------------------------------------------------- */

typedef struct stats_state {
    dlq_cmd *c;
    cw_dlq_groups gs;
    uint64_t matched;
} stats_state;

static int stats_one(cw_dlq_msg *m, void *ud)
{
    stats_state *st = ud;
    if (!cw_dlq_filter_match(&st->c->filter, m))
        return 0;
    st->matched++;
    return cw_dlq_groups_add(&st->gs, m);
}

static int cmd_stats(dlq_cmd *c)
{
    stats_state st = {.c = c};
    uint64_t total = 0, missing = 0;
    int rc = cw_dlq_browse(c->cfg, NULL, "compworker dlq stats", &c->ctl, stats_one, &st, &total,
                           &missing);
    cw_cli_progress_done();
    if (rc < 0) {
        cw_dlq_groups_free(&st.gs);
        return fail_op(c, rc);
    }
    cw_dlq_groups_sort(&st.gs);
    if (c->json) {
        for (size_t i = 0; i < st.gs.n; i++)
            cw_cli_json_line(group_json(&st.gs.g[i]));
    } else if (total == 0) {
        printf("%s is empty.\n", c->cfg->dlq);
    } else if (st.matched == 0) {
        printf("None of the %" PRIu64 " tasks in %s matches.\n", total, c->cfg->dlq);
    } else {
        print_groups(&st.gs, "", true);
        printf("\n%" PRIu64 " task%s in %zu group%s", st.matched, st.matched == 1 ? "" : "s",
               st.gs.n, st.gs.n == 1 ? "" : "s");
        if (st.matched != total)
            printf(" (of %" PRIu64 " in %s)", total, c->cfg->dlq);
        else
            printf(" in %s", c->cfg->dlq);
        printf(".\n");
        if (missing)
            printf("%" PRIu64 " more are held by another consumer of the queue and were not "
                   "seen.\n", missing);
    }
    cw_dlq_groups_free(&st.gs);
    return CW_EXIT_OK;
}

/* ---- replay -------------------------------------------------------------- */

/* --edit: the body in $EDITOR, a JSON object back. */
typedef struct edit_state {
    const cw_config *cfg;
    bool edited;
} edit_state;

static int run_editor(const char *path)
{
    const char *ed = getenv("EDITOR");
    if (!ed || !*ed)
        ed = getenv("VISUAL");
    if (!ed || !*ed)
        ed = "vi";
    char *copy = strdup(ed);
    if (!copy)
        return cw__error(CW_STATUS_NOMEM, "out of memory");
    char *argv[34];
    int n = 0;
    for (char *save = NULL, *w = strtok_r(copy, " \t", &save); w && n < 32;
         w = strtok_r(NULL, " \t", &save))
        argv[n++] = w;
    argv[n++] = (char *)path;
    argv[n] = NULL;
    fflush(NULL);
    pid_t pid = fork();
    if (pid < 0) {
        free(copy);
        return cw__error(CW_STATUS_IO, "cannot start the editor: %s", strerror(errno));
    }
    if (pid == 0) {
        signal(SIGINT, SIG_DFL);
        signal(SIGTERM, SIG_DFL);
        execvp(argv[0], argv);
        fprintf(stderr, "compworker: cannot run the editor '%s': %s\n", argv[0], strerror(errno));
        _exit(127);
    }
    int status;
    while (waitpid(pid, &status, 0) < 0 && errno == EINTR)
        ;
    int rc = 0;
    if (!WIFEXITED(status) || WEXITSTATUS(status) != 0)
        rc = cw__error(CW_STATUS_IO, "the editor '%s' %s %d: the body was not changed", argv[0],
                       WIFEXITED(status) ? "exited with status" : "was killed by signal",
                       WIFEXITED(status) ? WEXITSTATUS(status) : WTERMSIG(status));
    free(copy);
    return rc;
}

static char *read_file(const char *path, size_t max, size_t *len)
{
    FILE *f = fopen(path, "rb");
    if (!f)
        return NULL;
    size_t cap = 4096, n = 0;
    char *buf = malloc(cap + 1);
    while (buf) {
        if (n == cap) {
            if (cap > max) {
                free(buf);
                buf = NULL;
                errno = EFBIG;
                break;
            }
            char *nb = realloc(buf, cap * 2 + 1);
            if (!nb) {
                free(buf);
                buf = NULL;
                break;
            }
            buf = nb;
            cap *= 2;
        }
        size_t got = fread(buf + n, 1, cap - n, f);
        n += got;
        if (got == 0)
            break;
    }
    fclose(f);
    if (buf) {
        buf[n] = '\0';
        *len = n;
    }
    return buf;
}

/* Line and column of byte offset `at` of text. */
static void line_col(const char *text, size_t at, unsigned *line, unsigned *col)
{
    *line = 1;
    *col = 1;
    for (size_t i = 0; i < at && text[i]; i++) {
        if (text[i] == '\n') {
            (*line)++;
            *col = 1;
        } else {
            (*col)++;
        }
    }
}

static int edit_body(const cw_dlq_msg *m, char **body, size_t *len, void *ud)
{
    edit_state *es = ud;
    *body = NULL;
    *len = 0;
    amqp_bytes_t b = m->env.message.body;
    const char *tmp = getenv("TMPDIR");
    char path[4096];
    snprintf(path, sizeof path, "%s/compworker-edit-XXXXXX.json", tmp && *tmp ? tmp : "/tmp");
    int fd = mkstemps(path, 5);
    if (fd < 0)
        return cw__error(CW_STATUS_IO, "cannot create a file to edit in: %s", strerror(errno));
    FILE *f = fdopen(fd, "w");
    if (!f) {
        close(fd);
        unlink(path);
        return cw__error(CW_STATUS_IO, "cannot write %s: %s", path, strerror(errno));
    }
    /* Pretty-printed when it is JSON, as it is otherwise. */
    json_object *o = NULL;
    json_tokener *tok = json_tokener_new();
    if (tok && b.len < (size_t)INT32_MAX) {
        json_tokener_set_flags(tok, JSON_TOKENER_STRICT);
        o = json_tokener_parse_ex(tok, b.bytes, (int)b.len);
    }
    json_tokener_free(tok);
    if (o)
        fprintf(f, "%s\n", json_object_to_json_string_ext(o, JSON_C_TO_STRING_PRETTY |
                                                                 JSON_C_TO_STRING_SPACED |
                                                                 JSON_C_TO_STRING_NOSLASHESCAPE));
    else if (b.len)
        fwrite(b.bytes, 1, b.len, f);
    json_object_put(o);
    if (fclose(f) != 0) {
        unlink(path);
        return cw__error(CW_STATUS_IO, "cannot write %s: %s", path, strerror(errno));
    }
    size_t before_len = 0;
    char *before = read_file(path, SIZE_MAX / 4, &before_len);
    cw_cli_progress_done();
    int rc = run_editor(path);
    size_t n = 0;
    char *text = rc ? NULL : read_file(path, es->cfg->max_body_size, &n);
    if (!rc && !text)
        rc = cw__error(CW_STATUS_IO, "cannot read back %s: %s", path,
                       errno == EFBIG ? "larger than [pool] max_body_size" : strerror(errno));
    unlink(path);
    if (rc) {
        free(before);
        return rc;
    }
    if (before && n == before_len && memcmp(text, before, n) == 0) {
        free(before);
        free(text);
        fprintf(stderr, "compworker: dlq replay: the body was not changed; replaying it as it "
                        "is\n");
        return 0;
    }
    free(before);
    tok = json_tokener_new();
    if (!tok) {
        free(text);
        return cw__error(CW_STATUS_NOMEM, "out of memory");
    }
    json_tokener_set_flags(tok, JSON_TOKENER_STRICT);
    o = json_tokener_parse_ex(tok, text, (int)n);
    enum json_tokener_error jerr = json_tokener_get_error(tok);
    size_t end = json_tokener_get_parse_end(tok);
    json_tokener_free(tok);
    unsigned line, col;
    if (!o) {
        line_col(text, end, &line, &col);
        rc = cw__error(CW_STATUS_INVALID_MESSAGE,
                       "the edited body is not valid JSON (%s at line %u, column %u): the task "
                       "stays in the DLQ",
                       jerr == json_tokener_continue ? "it ends too early"
                                                     : json_tokener_error_desc(jerr),
                       line, col);
    } else if (strspn(text + end, " \t\r\n") != n - end) {
        line_col(text, end, &line, &col);
        rc = cw__error(CW_STATUS_INVALID_MESSAGE,
                       "the edited body has text after the JSON value (line %u, column %u): "
                       "the task stays in the DLQ", line, col);
    } else if (!json_object_is_type(o, json_type_object)) {
        rc = cw__error(CW_STATUS_INVALID_MESSAGE,
                       "the edited body is JSON but not an object: the task stays in the DLQ");
    }
    if (rc == 0) {
        size_t out_len;
        const char *s = json_object_to_json_string_length(
            o, JSON_C_TO_STRING_PLAIN | JSON_C_TO_STRING_NOSLASHESCAPE, &out_len);
        if (out_len > es->cfg->max_body_size)
            rc = cw__error(CW_STATUS_TOO_LARGE,
                           "the edited body (%zu bytes) is larger than [pool] max_body_size",
                           out_len);
        else if (!(*body = malloc(out_len + 1)))
            rc = cw__error(CW_STATUS_NOMEM, "out of memory");
        else {
            memcpy(*body, s, out_len + 1);
            *len = out_len;
            es->edited = true;
        }
    }
    json_object_put(o);
    free(text);
    return rc;
}

/* Lines about single tasks a human replay prints at most; --json has all. */
#define MAX_EVENT_LINES 20

typedef struct replay_print {
    dlq_cmd *c;
    bool print_replayed;
    unsigned printed;    /* lines about refused or failed tasks */
    uint64_t suppressed; /* ... and those not printed */
} replay_print;

static const char *event_name(cw_dlq_event_kind k)
{
    switch (k) {
    case CW_DLQ_EV_REPLAYED: return "replayed";
    case CW_DLQ_EV_REFUSED_DONE: return "refused";
    case CW_DLQ_EV_REFUSED_BUSY: return "busy";
    case CW_DLQ_EV_FAILED: return "failed";
    case CW_DLQ_EV_CANARY_OK: return "canary-ok";
    case CW_DLQ_EV_CANARY_FAILED: return "canary-failed";
    }
    return "?";
}

static void on_event(const cw_dlq_event *e, void *ud)
{
    replay_print *rp = ud;
    dlq_cmd *c = rp->c;
    const cw_dlq_msg *m = e->msg;
    mark_seen(c, m->message_id);
    if (c->json) {
        json_object *o = json_object_new_object();
        if (!o)
            return;
        json_object_object_add(o, "event", json_object_new_string(event_name(e->kind)));
        json_object_object_add(o, "message_id", jstr(m->message_id));
        json_object_object_add(o, "type", jstr(m->type));
        json_object_object_add(o, "saga_id", jstr(m->saga_id));
        if (e->exchange)
            json_object_object_add(o, "exchange", json_object_new_string(e->exchange));
        if (e->routing_key)
            json_object_object_add(o, "routing_key", json_object_new_string(e->routing_key));
        json_object_object_add(o, "detail", jstr(e->detail));
        cw_cli_json_line(o);
        return;
    }
    if (e->kind == CW_DLQ_EV_REPLAYED && !rp->print_replayed && !e->detail[0])
        return;
    if (e->kind != CW_DLQ_EV_REPLAYED && e->kind != CW_DLQ_EV_CANARY_OK &&
        e->kind != CW_DLQ_EV_CANARY_FAILED && rp->printed++ >= MAX_EVENT_LINES) {
        rp->suppressed++;
        return;
    }
    cw_cli_progress_done();
    char id[200], type[64], saga[64];
    cw_cli_fit(m->message_id[0] ? m->message_id : "(no ID)", CW_MESSAGE_ID_MAX, false, id,
               sizeof id);
    cw_cli_fit(m->type[0] ? m->type : "-", W_TYPE, false, type, sizeof type);
    cw_cli_fit(m->saga_id[0] ? m->saga_id : "-", W_SAGA, false, saga, sizeof saga);
    FILE *out = e->kind == CW_DLQ_EV_REPLAYED || e->kind == CW_DLQ_EV_CANARY_OK ? stdout : stderr;
    fprintf(out, "%-13s %s  %s  %s: ", event_name(e->kind), id, type, saga);
    if (e->kind == CW_DLQ_EV_REPLAYED) {
        fprintf(out, "to %s / %s", e->exchange && e->exchange[0] ? e->exchange : "(default)",
                e->routing_key ? e->routing_key : "");
        if (e->detail[0])
            fprintf(out, " (%s)", e->detail);
    } else if (e->kind == CW_DLQ_EV_CANARY_OK) {
        fputs("applied", out);
    } else {
        cw_cli_put_safe(out, e->detail);
    }
    fputc('\n', out);
    fflush(out);
}

static int cmd_replay(dlq_cmd *c)
{
    cw_store *store = NULL;
    if (cw_cli_store_open(c->cfg, false, &store))
        return cw_cli_fail(cw_error_last()[0] && c->cfg->store_backend == CW_STORE_MEMORY
                               ? CW_EXIT_USAGE
                               : CW_EXIT_FAILURE,
                           "dlq replay: %s", cw_error_last());
    edit_state es = {.cfg = c->cfg};
    replay_print rp = {.c = c, .print_replayed = c->n_args > 0};
    cw_dlq_replay_opts o = CW_DLQ_REPLAY_OPTS_INIT;
    o.filter = &c->filter;
    o.dry_run = c->dry_run;
    o.force = c->force;
    o.to = c->to;
    o.limit = c->limit;
    o.canary = c->canary;
    o.canary_timeout_ms = c->canary_timeout_ms;
    o.rate = c->rate;
    o.edit = c->edit ? edit_body : NULL;
    o.edit_data = &es;
    o.event = on_event;
    o.event_data = &rp;
    o.ctl = &c->ctl;
    cw_dlq_replay_result res;
    int rc = cw_dlq_replay(c->cfg, store, &o, &res);
    cw_cli_progress_done();
    cw_store_free(store);
    if (rc < 0 && res.total == 0 && res.read == 0 && !res.stopped[0]) {
        cw_dlq_groups_free(&res.groups);
        return fail_op(c, rc);
    }

    if (rp.suppressed)
        fprintf(stderr, "... and %" PRIu64 " more (--json lists each one)\n", rp.suppressed);
    uint64_t kept_refused = res.refused_done + res.refused_busy;
    if (c->json) {
        json_object *s = json_object_new_object();
        json_object_object_add(s, "summary", json_object_new_boolean(1));
        json_object_object_add(s, "dry_run", json_object_new_boolean(c->dry_run));
        json_object_object_add(s, "dlq", json_object_new_string(c->cfg->dlq));
        json_object_object_add(s, "total", json_object_new_int64((int64_t)res.total));
        json_object_object_add(s, "read", json_object_new_int64((int64_t)res.read));
        json_object_object_add(s, "selected", json_object_new_int64((int64_t)res.selected));
        uint64_t would = 0;
        for (size_t i = 0; i < res.groups.n; i++)
            would += res.groups.g[i].count;
        json_object_object_add(s, c->dry_run ? "would_replay" : "replayed",
                               json_object_new_int64((int64_t)(c->dry_run ? would
                                                                          : res.replayed)));
        json_object_object_add(s, "duplicates", json_object_new_int64((int64_t)res.duplicates));
        json_object_object_add(s, "refused_done", json_object_new_int64((int64_t)res.refused_done));
        json_object_object_add(s, "refused_busy", json_object_new_int64((int64_t)res.refused_busy));
        json_object_object_add(s, "failed", json_object_new_int64((int64_t)res.failed));
        json_object_object_add(s, "left", json_object_new_int64((int64_t)res.left));
        json_object_object_add(s, "missing", json_object_new_int64((int64_t)res.missing));
        json_object_object_add(s, "canary_failed", json_object_new_boolean(res.canary_failed));
        json_object_object_add(s, "interrupted", json_object_new_boolean(res.interrupted));
        json_object_object_add(s, "stopped", jstr(res.stopped));
        json_object *g = json_object_new_array();
        for (size_t i = 0; i < res.groups.n; i++)
            json_object_array_add(g, group_json(&res.groups.g[i]));
        json_object_object_add(s, "groups", g);
        cw_cli_json_line(s);
    } else if (c->dry_run) {
        uint64_t would = 0;
        for (size_t i = 0; i < res.groups.n; i++)
            would += res.groups.g[i].count;
        printf("Dry run: would replay %" PRIu64 " of the %" PRIu64 " selected tasks (%" PRIu64
               " in %s)%s\n",
               would, res.selected, res.total, c->cfg->dlq, would ? ":" : ".");
        if (would)
            print_groups(&res.groups, "  ", false);
        if (res.refused_done)
            printf("%" PRIu64 " already applied (done in the store) would be refused; --force "
                   "replays them.\n", res.refused_done);
        if (res.refused_busy)
            printf("%" PRIu64 " being handled right now would be skipped.\n", res.refused_busy);
        if (res.failed)
            printf("%" PRIu64 " could not be replayed (see above).\n", res.failed);
        if (res.left)
            printf("%" PRIu64 " over --limit would stay in the DLQ.\n", res.left);
        printf("Nothing was changed.\n");
    } else {
        printf("Replayed %" PRIu64 " of the %" PRIu64 " selected task%s (%" PRIu64 " in %s)%s",
               res.replayed, res.selected, res.selected == 1 ? "" : "s", res.total, c->cfg->dlq,
               es.edited ? ", its body edited" : "");
        printf("%s\n", res.replayed ? ":" : ".");
        if (res.replayed)
            print_groups(&res.groups, "  ", false);
        if (res.duplicates)
            printf("Of these, %" PRIu64 " %s a further copy of a task already republished by "
                   "this replay: removed, not published again.\n",
                   res.duplicates, res.duplicates == 1 ? "was" : "were");
        if (res.selected > res.replayed) {
            printf("Kept in %s:", c->cfg->dlq);
            const char *sep = " ";
            if (res.refused_done) {
                printf("%s%" PRIu64 " already applied (--force replays them, 'dlq delete' "
                       "removes them)", sep, res.refused_done);
                sep = ", ";
            }
            if (res.refused_busy) {
                printf("%s%" PRIu64 " being handled right now", sep, res.refused_busy);
                sep = ", ";
            }
            if (res.failed) {
                printf("%s%" PRIu64 " that could not be replayed (see above)", sep, res.failed);
                sep = ", ";
            }
            if (res.left)
                printf("%s%" PRIu64 " not replayed (%s)", sep, res.left,
                       res.canary_failed ? "the canary failed"
                       : res.interrupted ? "interrupted"
                       : c->limit && res.left && !res.stopped[0] ? "over --limit"
                                                                   : "stopped");
            printf(".\n");
        }
    }
    if (res.missing)
        fprintf(stderr, "compworker: dlq replay: %" PRIu64 " tasks of the DLQ were held by another "
                        "consumer and not seen\n", res.missing);
    bool unseen = report_unseen(c);
    int code = CW_EXIT_OK;
    if (res.stopped[0]) {
        fprintf(stderr, "compworker: dlq replay: stopped: ");
        cw_cli_put_safe(stderr, res.stopped);
        fputc('\n', stderr);
        if (res.left)
            fprintf(stderr, "compworker: dlq replay: %" PRIu64 " selected task%s left untouched "
                            "in %s\n", res.left, res.left == 1 ? "" : "s", c->cfg->dlq);
        code = CW_EXIT_FAILURE;
    }
    if (rc < 0 || unseen || (!c->dry_run && (kept_refused || res.failed)))
        code = CW_EXIT_FAILURE;
    cw_dlq_groups_free(&res.groups);
    return code;
}

/* ---- delete -------------------------------------------------------------- */

static bool confirm_delete(const cw_dlq_groups *gs, uint64_t n, void *ud)
{
    dlq_cmd *c = ud;
    cw_cli_progress_done();
    if (c->yes)
        return true;
    fprintf(stderr, "About to delete %" PRIu64 " task%s from %s:\n", n, n == 1 ? "" : "s",
            c->cfg->dlq);
    fflush(stderr);
    fflush(stdout);
    int saved = dup(STDOUT_FILENO);
    dup2(STDERR_FILENO, STDOUT_FILENO); /* the table goes where the question goes */
    print_groups(gs, "  ", false);
    fflush(stdout);
    if (saved >= 0) {
        dup2(saved, STDOUT_FILENO);
        close(saved);
    }
    fprintf(stderr, "Delete them for good? Type 'yes' to delete: ");
    fflush(stderr);
    char answer[32];
    if (!fgets(answer, sizeof answer, stdin))
        return false;
    answer[strcspn(answer, "\r\n")] = '\0';
    return strcmp(answer, "yes") == 0 || strcmp(answer, "y") == 0;
}

typedef struct delete_seen {
    dlq_cmd *c;
} delete_seen;

static int cmd_delete(dlq_cmd *c)
{
    if (!c->yes && !isatty(STDIN_FILENO))
        return cw_cli_fail(CW_EXIT_USAGE,
                           "dlq delete: no terminal to ask for confirmation: add --yes to "
                           "delete without asking");
    uint64_t deleted = 0, total = 0;
    int rc = cw_dlq_delete(c->cfg, &c->filter, &c->ctl, confirm_delete, c, &deleted, &total);
    cw_cli_progress_done();
    if (rc < 0) {
        if (deleted)
            fprintf(stderr, "compworker: dlq delete: %" PRIu64 " deleted before the error\n",
                    deleted);
        return fail_op(c, rc);
    }
    if (c->json) {
        json_object *s = json_object_new_object();
        json_object_object_add(s, "dlq", json_object_new_string(c->cfg->dlq));
        json_object_object_add(s, "total", json_object_new_int64((int64_t)total));
        json_object_object_add(s, "deleted", json_object_new_int64((int64_t)deleted));
        cw_cli_json_line(s);
    } else if (deleted) {
        printf("Deleted %" PRIu64 " task%s from %s (%" PRIu64 " left).\n", deleted,
               deleted == 1 ? "" : "s", c->cfg->dlq, total - deleted);
    } else {
        printf("Deleted nothing from %s.\n", c->cfg->dlq);
    }
    return CW_EXIT_OK;
}

/* ---- export -------------------------------------------------------------- */

typedef struct export_state {
    dlq_cmd *c;
    uint64_t n;
} export_state;

static int export_one(cw_dlq_msg *m, void *ud)
{
    export_state *es = ud;
    if (!cw_dlq_filter_match(&es->c->filter, m))
        return 0;
    char *line;
    size_t len;
    int rc = cw_dlq_export_line(&m->env, &line, &len);
    if (rc)
        return rc;
    bool ok = fwrite(line, 1, len, stdout) == len && putchar('\n') != EOF;
    free(line);
    if (!ok)
        return cw__error(CW_STATUS_IO, "writing the export: %s", strerror(errno));
    es->n++;
    return 0;
}

static int cmd_export(dlq_cmd *c)
{
    export_state es = {.c = c};
    uint64_t total = 0, missing = 0;
    int rc = cw_dlq_browse(c->cfg, NULL, "compworker dlq export", &c->ctl, export_one, &es,
                           &total, &missing);
    cw_cli_progress_done();
    if (rc == 0 && (fflush(stdout) != 0 || ferror(stdout)))
        rc = cw__error(CW_STATUS_IO, "writing the export: %s", strerror(errno));
    if (rc < 0)
        return fail_op(c, rc);
    fprintf(stderr, "compworker: exported %" PRIu64 " of the %" PRIu64 " tasks in %s\n", es.n,
            total, c->cfg->dlq);
    if (missing)
        fprintf(stderr, "compworker: %" PRIu64 " more were held by another consumer and not "
                        "exported\n", missing);
    return CW_EXIT_OK;
}

/* ---- import -------------------------------------------------------------- */

typedef struct lines {
    char *text;
    size_t len;
    size_t *start; /* offsets of the non-empty lines */
    size_t *length; /* their lengths: a NUL inside a line is the import's to refuse */
    size_t *number; /* their line numbers */
    size_t n;
} lines;

static int read_lines(FILE *f, lines *ls)
{
    memset(ls, 0, sizeof *ls);
    size_t cap = 1 << 16;
    ls->text = malloc(cap);
    if (!ls->text)
        return cw__error(CW_STATUS_NOMEM, "out of memory");
    for (;;) {
        if (ls->len + 1 >= cap) {
            char *nt = realloc(ls->text, cap * 2);
            if (!nt)
                return cw__error(CW_STATUS_NOMEM, "out of memory reading the import");
            ls->text = nt;
            cap *= 2;
        }
        size_t got = fread(ls->text + ls->len, 1, cap - ls->len - 1, f);
        ls->len += got;
        if (got == 0)
            break;
    }
    if (ferror(f))
        return cw__error(CW_STATUS_IO, "reading the import: %s", strerror(errno));
    ls->text[ls->len] = '\0';
    size_t n_cap = 0, lineno = 0;
    for (size_t at = 0; at < ls->len;) {
        char *nl = memchr(ls->text + at, '\n', ls->len - at);
        size_t end = nl ? (size_t)(nl - ls->text) : ls->len;
        lineno++;
        ls->text[end] = '\0';
        if (strspn(ls->text + at, " \t\r") != end - at) {
            if (ls->n == n_cap) {
                n_cap = n_cap ? n_cap * 2 : 1024;
                size_t *ns = realloc(ls->start, n_cap * sizeof *ns);
                if (ns)
                    ls->start = ns;
                size_t *nl2 = ns ? realloc(ls->length, n_cap * sizeof *nl2) : NULL;
                if (nl2)
                    ls->length = nl2;
                size_t *nn = nl2 ? realloc(ls->number, n_cap * sizeof *nn) : NULL;
                if (!nn)
                    return cw__error(CW_STATUS_NOMEM, "out of memory reading the import");
                ls->number = nn;
            }
            ls->start[ls->n] = at;
            ls->length[ls->n] = end - at;
            ls->number[ls->n] = lineno;
            ls->n++;
        }
        at = end + 1;
    }
    return 0;
}

static void lines_free(lines *ls)
{
    free(ls->text);
    free(ls->start);
    free(ls->length);
    free(ls->number);
}

/* Publishes the records from `from` on into the DLQ, at most IMPORT_BATCH
 * and each message ID once (returns are matched by ID), confirmed. *next
 * is where the next batch starts, *ok how many were confirmed from `from`
 * on; when one was not, its line is in *bad_line and a status returned. */
static int import_batch(dlq_cmd *c, cw_mover *mv, const lines *ls, size_t from, size_t *next,
                        size_t *ok, size_t *bad_line, char *why, size_t why_cap)
{
    size_t cap = ls->n - from < IMPORT_BATCH ? ls->n - from : IMPORT_BATCH;
    cw_dlq_record *recs = calloc(cap, sizeof *recs);
    if (!recs)
        return cw__error(CW_STATUS_NOMEM, "out of memory");
    int rc = 0;
    size_t n = 0;
    cw_mover_reset(mv);
    for (; n < cap && rc == 0; n++) {
        const char *line = ls->text + ls->start[from + n];
        if ((rc = cw_dlq_import_line(line, ls->length[from + n], &recs[n])))
            break;
        if (cw_mover_has(mv, recs[n].message_id))
            break; /* the next batch starts with it */
        rc = cw_mover_send(mv, CW_DLX_NAME, c->cfg->dlq, &recs[n].props, recs[n].body);
    }
    int wrc = mv->n ? cw_mover_wait(mv, CW_CONFIRM_TIMEOUT_MS) : 0;
    if (rc == 0)
        rc = wrc;
    size_t i = 0;
    while (i < mv->n && mv->slots[i].state == CW_MOVE_CONFIRMED)
        i++;
    *ok = i;
    *next = from + mv->n;
    if (rc || i < mv->n) {
        *bad_line = ls->number[from + i];
        if (i < mv->n && mv->slots[i].state == CW_MOVE_RETURNED)
            snprintf(why, why_cap, "unroutable: %s is not bound to %s by its name", c->cfg->dlq,
                     CW_DLX_NAME);
        else if (i < mv->n && mv->slots[i].state == CW_MOVE_NACKED)
            snprintf(why, why_cap, "the broker refused it (nack)");
        else
            snprintf(why, why_cap, "%s", rc ? cw_error_last() : "not confirmed");
        if (rc == 0)
            rc = CW_STATUS_NACKED;
    }
    for (size_t k = 0; k < cap; k++)
        cw_dlq_record_clear(&recs[k]);
    free(recs);
    return rc;
}

static int cmd_import(dlq_cmd *c)
{
    if (c->n_args > 1)
        return cw_cli_fail(CW_EXIT_USAGE, "dlq import: one file at most (or stdin)");
    const char *file = c->n_args ? c->args[0] : NULL;
    FILE *f = file && strcmp(file, "-") != 0 ? fopen(file, "rb") : stdin;
    if (!f)
        return cw_cli_fail(CW_EXIT_USAGE, "dlq import: %s: %s", file, strerror(errno));
    const char *name = file ? file : "stdin";
    lines ls;
    int rc = read_lines(f, &ls);
    if (f != stdin)
        fclose(f);
    if (rc) {
        lines_free(&ls);
        return cw_cli_fail(CW_EXIT_FAILURE, "dlq import: %s: %s", name, cw_error_last());
    }

    /* Every line is checked before anything is published: an import is all
     * or nothing, so that it can simply be run again once the file is fixed. */
    size_t bad = 0;
    for (size_t i = 0; i < ls.n; i++) {
        cw_dlq_record r;
        const char *line = ls.text + ls.start[i];
        if (cw_dlq_import_line(line, ls.length[i], &r)) {
            if (bad < MAX_BAD_LINES_SHOWN)
                fprintf(stderr, "compworker: dlq import: %s:%zu: %s\n", name, ls.number[i],
                        cw_error_last());
            bad++;
        }
        cw_dlq_record_clear(&r);
    }
    if (bad) {
        if (bad > MAX_BAD_LINES_SHOWN)
            fprintf(stderr, "compworker: dlq import: ... and %zu more bad lines\n",
                    bad - MAX_BAD_LINES_SHOWN);
        lines_free(&ls);
        return cw_cli_fail(CW_EXIT_USAGE, "dlq import: %zu bad line%s in %s: nothing was imported",
                           bad, bad == 1 ? "" : "s", name);
    }

    if (ls.n == 0) {
        lines_free(&ls);
        printf("Nothing to import: %s holds no task.\n", name);
        return CW_EXIT_OK;
    }
    amqp_connection_state_t conn = NULL;
    cw_registry *reg = NULL;
    cw_mover mv;
    bool mv_open = false;
    size_t imported = 0;
    int code = CW_EXIT_FAILURE;
    if ((rc = cw__dlq_connect(&conn, c->cfg, "compworker dlq import")))
        goto out;
    /* The DLQ and its binding exist once the pool's topology is declared
     * (without task bindings: no plugin is loaded here). */
    if ((rc = cw_registry_new(&reg)))
        goto out;
    amqp_channel_open(conn, 2);
    if ((rc = cw__broker_reply(amqp_get_rpc_reply(conn), "opening a channel")) ||
        (rc = cw__topology_declare(conn, 2, c->cfg, reg)))
        goto out;
    if ((rc = cw_mover_open(&mv, conn, 1)))
        goto out;
    mv_open = true;
    int64_t last = cw__mono_ms();
    for (size_t from = 0; from < ls.n && !cw_cli_stop;) {
        size_t next = from, ok = 0, bad_line = 0;
        char why[512] = "";
        rc = import_batch(c, &mv, &ls, from, &next, &ok, &bad_line, why, sizeof why);
        imported += ok;
        if (rc) {
            cw_cli_progress_done();
            fprintf(stderr, "compworker: dlq import: %s:%zu was not imported: %s\n", name,
                    bad_line, why);
            fprintf(stderr, "compworker: dlq import: %zu imported (the lines before); import "
                            "the rest with: tail -n +%zu %s\n",
                    imported, bad_line, name);
            rc = 0;
            goto out;
        }
        from = next;
        if (c->ctl.progress && cw__mono_ms() - last >= 250) {
            last = cw__mono_ms();
            cw_dlq_progress p = {.what = "importing", .read = from, .total = ls.n, .done = from};
            c->ctl.progress(&p, c->ctl.progress_data);
        }
    }
    cw_cli_progress_done();
    if (cw_cli_stop) {
        fprintf(stderr, "compworker: dlq import: interrupted after %zu of %zu tasks; import the "
                        "rest with: tail -n +%zu %s\n",
                imported, ls.n, imported < ls.n ? ls.number[imported] : ls.n + 1, name);
        goto out;
    }
    if (c->json) {
        json_object *s = json_object_new_object();
        json_object_object_add(s, "dlq", json_object_new_string(c->cfg->dlq));
        json_object_object_add(s, "imported", json_object_new_int64((int64_t)imported));
        cw_cli_json_line(s);
    } else {
        printf("Imported %zu task%s into %s.\n", imported, imported == 1 ? "" : "s", c->cfg->dlq);
    }
    code = CW_EXIT_OK;
out:
    if (rc)
        code = cw_cli_fail(CW_EXIT_FAILURE, "dlq import: %s (%zu imported)", cw_error_last(),
                           imported);
    if (mv_open)
        cw_mover_free(&mv);
    cw__broker_close(conn);
    cw_registry_free(reg);
    lines_free(&ls);
    return code;
}

/* ---- flags --------------------------------------------------------------- */

static const struct {
    const char *name;
    unsigned bit;
    int (*run)(dlq_cmd *c);
} commands[] = {
    {"list", CMD_LIST, cmd_list},       {"show", CMD_SHOW, cmd_show},
    {"stats", CMD_STATS, cmd_stats},    {"replay", CMD_REPLAY, cmd_replay},
    {"delete", CMD_DELETE, cmd_delete}, {"export", CMD_EXPORT, cmd_export},
    {"import", CMD_IMPORT, cmd_import},
};

static const char *opt_name(int opt)
{
    for (size_t i = 0; i < sizeof opt_cmds / sizeof *opt_cmds; i++) {
        if (opt_cmds[i].opt == opt)
            return opt_cmds[i].name;
    }
    return NULL;
}

static bool opt_allowed(int opt, unsigned bit)
{
    for (size_t i = 0; i < sizeof opt_cmds / sizeof *opt_cmds; i++) {
        if (opt_cmds[i].opt == opt)
            return (opt_cmds[i].cmds & bit) != 0;
    }
    return true; /* -c, --json, --help */
}

int cw_cmd_dlq(int argc, char **argv)
{
    if (argc < 2)
        return cw_cli_fail(CW_EXIT_USAGE, "dlq: no command given: list, show, stats, replay, "
                                          "delete, export or import (try 'compworker dlq help')");
    if (strcmp(argv[1], "--help") == 0 || strcmp(argv[1], "-h") == 0 ||
        strcmp(argv[1], "help") == 0) {
        fputs(dlq_usage, stdout);
        return CW_EXIT_OK;
    }
    dlq_cmd c = {.name = argv[1], .canary_timeout_ms = DEFAULT_CANARY_TIMEOUT_MS};
    int (*run)(dlq_cmd *) = NULL;
    for (size_t i = 0; i < sizeof commands / sizeof *commands; i++) {
        if (strcmp(commands[i].name, argv[1]) == 0) {
            run = commands[i].run;
            c.bit = commands[i].bit;
        }
    }
    if (!run)
        return cw_cli_fail(CW_EXIT_USAGE, "dlq: unknown command '%s' (try 'compworker dlq help')",
                           argv[1]);
    static const struct option opts[] = {
        {"config", required_argument, NULL, 'c'},
        {"json", no_argument, NULL, OPT_JSON},
        {"type", required_argument, NULL, 't'},
        {"saga-id", required_argument, NULL, 's'},
        {"error-class", required_argument, NULL, 'e'},
        {"since", required_argument, NULL, OPT_SINCE},
        {"until", required_argument, NULL, OPT_UNTIL},
        {"grep", required_argument, NULL, 'g'},
        {"limit", required_argument, NULL, 'n'},
        {"all", no_argument, NULL, OPT_ALL},
        {"dry-run", no_argument, NULL, OPT_DRY_RUN},
        {"edit", no_argument, NULL, OPT_EDIT},
        {"to", required_argument, NULL, OPT_TO},
        {"force", no_argument, NULL, OPT_FORCE},
        {"canary", required_argument, NULL, OPT_CANARY},
        {"rate", required_argument, NULL, OPT_RATE},
        {"canary-timeout", required_argument, NULL, OPT_CANARY_TIMEOUT},
        {"yes", no_argument, NULL, 'y'},
        {"help", no_argument, NULL, 'h'},
        {NULL, 0, NULL, 0}};
    const char *config = NULL;
    int64_t now = cw__now_ms();
    long long num;
    int o;
    optind = 1;
    opterr = 0;
    /* getopt_long on argv + 1: the command name is argv[0] there. */
    char what[32];
    snprintf(what, sizeof what, "dlq %s", c.name);
    while ((o = getopt_long(argc - 1, argv + 1, ":c:t:s:e:g:n:yh", opts, NULL)) != -1) {
        if (o != '?' && o != ':' && !opt_allowed(o, c.bit))
            return cw_cli_fail(CW_EXIT_USAGE, "dlq %s: %s does not apply to this command",
                               c.name, opt_name(o));
        switch (o) {
        case 'c': config = optarg; break;
        case OPT_JSON: c.json = true; break;
        case 't': c.filter.type = optarg; break;
        case 's': c.filter.saga_id = optarg; break;
        case 'e': c.filter.error_class = optarg; break;
        case 'g': c.filter.grep = optarg; break;
        case OPT_SINCE:
        case OPT_UNTIL: {
            int64_t t;
            if (!cw_dlq_parse_time(optarg, now, &t))
                return cw_cli_fail(CW_EXIT_USAGE,
                                   "dlq %s: %s '%s' is not a time (2h, 30m, 7d, 2026-11-24, "
                                   "2026-11-24T21:50, 2026-11-24T21:50:00Z)",
                                   c.name, o == OPT_SINCE ? "--since" : "--until", optarg);
            if (o == OPT_SINCE) {
                c.filter.has_since = true;
                c.filter.since_ms = t;
            } else {
                c.filter.has_until = true;
                c.filter.until_ms = t;
            }
            break;
        }
        case 'n':
            if (!cw__parse_int(optarg, 1, INT64_MAX, &num))
                return cw_cli_fail(CW_EXIT_USAGE, "dlq %s: --limit '%s' is not a positive number",
                                   c.name, optarg);
            c.limit = (uint64_t)num;
            break;
        case OPT_ALL: c.all = true; break;
        case OPT_DRY_RUN: c.dry_run = true; break;
        case OPT_EDIT: c.edit = true; break;
        case OPT_TO:
            if (!*optarg || strlen(optarg) > 255)
                return cw_cli_fail(CW_EXIT_USAGE, "dlq replay: --to needs a routing key of 1 to "
                                                  "255 bytes");
            c.to = optarg;
            break;
        case OPT_FORCE: c.force = true; break;
        case OPT_CANARY:
            if (!cw__parse_int(optarg, 1, 100000, &num))
                return cw_cli_fail(CW_EXIT_USAGE, "dlq replay: --canary '%s' is not a number of "
                                                  "tasks (1-100000)", optarg);
            c.canary = (unsigned)num;
            break;
        case OPT_RATE: {
            char *end;
            errno = 0;
            c.rate = strtod(optarg, &end);
            if (errno || *end || !(c.rate > 0) || !isfinite(c.rate))
                return cw_cli_fail(CW_EXIT_USAGE, "dlq replay: --rate '%s' is not a positive "
                                                  "number of tasks per second", optarg);
            break;
        }
        case OPT_CANARY_TIMEOUT:
            if (!cw__parse_duration_ms(optarg, &c.canary_timeout_ms) || c.canary_timeout_ms <= 0)
                return cw_cli_fail(CW_EXIT_USAGE, "dlq replay: --canary-timeout '%s' is not a "
                                                  "duration (30s, 5m)", optarg);
            break;
        case 'y': c.yes = true; break;
        case 'h': fputs(dlq_usage, stdout); return CW_EXIT_OK;
        default:
            return cw_cli_bad_option(what, o, argv + 1);
        }
    }
    c.args = argv + 1 + optind;
    c.n_args = argc - 1 - optind;
    if (!config)
        return cw_cli_fail(CW_EXIT_USAGE, "dlq %s: -c POOL.INI is required", c.name);

    /* Positional arguments are message IDs (a file for import). */
    if (c.bit != CMD_IMPORT) {
        if (c.n_args && !(c.bit & (CMD_SHOW | CMD_REPLAY | CMD_DELETE)))
            return cw_cli_fail(CW_EXIT_USAGE, "dlq %s: unexpected argument '%s'", c.name,
                               c.args[0]);
        for (int i = 0; i < c.n_args; i++) {
            if (!cw_cli_is_message_id(c.args[i]))
                return cw_cli_fail(CW_EXIT_USAGE,
                                   "dlq %s: argument %d is not a message ID (1 to %d printable "
                                   "ASCII characters)",
                                   c.name, i + 1, CW_MESSAGE_ID_MAX);
        }
        c.filter.ids = c.args;
        c.filter.n_ids = (size_t)c.n_args;
    }
    if (c.bit == CMD_SHOW && c.n_args == 0)
        return cw_cli_fail(CW_EXIT_USAGE, "dlq show: give one or more message IDs");
    if (c.bit & (CMD_REPLAY | CMD_DELETE)) {
        bool selects = cw_dlq_filter_active(&c.filter);
        if (!selects && !c.all)
            return cw_cli_fail(CW_EXIT_USAGE, "dlq %s: give message IDs, filters or --all",
                               c.name);
        if (selects && c.all)
            return cw_cli_fail(CW_EXIT_USAGE, "dlq %s: --all selects every task: give it alone, "
                                              "without message IDs or filters", c.name);
    }
    if (c.edit && (c.n_args != 1 || c.canary || c.dry_run))
        return cw_cli_fail(CW_EXIT_USAGE, "dlq replay: --edit takes exactly one MESSAGE_ID "
                                          "(and no --canary or --dry-run)");
    if (c.filter.has_since && c.filter.has_until && c.filter.since_ms >= c.filter.until_ms)
        return cw_cli_fail(CW_EXIT_USAGE, "dlq %s: --since is not before --until", c.name);

    cw_config *cfg = NULL;
    if (cw_config_load(&cfg, config))
        return cw_cli_fail(CW_EXIT_USAGE, "%s", cw_error_last());
    c.cfg = cfg;
    c.seen = c.n_args ? calloc((size_t)c.n_args, sizeof *c.seen) : NULL;
    if (c.n_args && !c.seen) {
        cw_config_free(cfg);
        return cw_cli_fail(CW_EXIT_FAILURE, "out of memory");
    }
    if (c.bit == CMD_IMPORT)
        for (int i = 0; i < c.n_args; i++)
            c.seen[i] = true;
    cw_cli_catch_signals();
    c.ctl = cw_cli_ctl(c.json);
    int code = run(&c);
    free(c.seen);
    cw_config_free(cfg);
    return code;
}
