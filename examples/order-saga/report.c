/* order-saga example — the demo report.
 *
 *   order-saga-report [--url URL] [--ledger PATH] [--dlq NAME] [--queue NAME]
 *                     [--wait SECONDS]
 *   order-saga-report --purge [--url URL] [--dlq NAME] [--queue NAME]
 *
 * Reads what order-saga-publish said must happen (LEDGER.expected.json),
 * waits up to --wait seconds for the worker pool to get there (ledger effects
 * plus dead-lettered tasks reach the expected total, the work queue is empty
 * and nothing moved for a second), then shows what happened:
 *
 *   - the compensations applied, by kind, and whether any message ID was
 *     applied twice (the ledger does not prevent it: compworker must);
 *   - the duplicates compworker skipped;
 *   - every dead-lettered task with its type, saga ID and reason, read from
 *     the dead-letter queue without consuming it: the messages are fetched
 *     with basic.get and no ack, then the channel is closed, which makes the
 *     broker put them all back.
 *
 * With --purge it only empties the work queue and the dead-letter queue
 * (those that exist) and exits: how scripts/demo.sh makes sure the leftovers
 * of an interrupted run do not end up in a new one.
 *
 * Exit status: 0 when the ledger and the DLQ match the expectations exactly,
 * 1 when they differ (each difference is listed), 2 for a usage error, 3 when
 * the expectations, the ledger or the broker cannot be read.
 */
#define _POSIX_C_SOURCE 200809L

#include <errno.h>
#include <inttypes.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/time.h>
#include <time.h>

#include <amqp.h>
#include <amqp_tcp_socket.h>
#include <json-c/json.h>
#include <sqlite3.h>

#include "ledger.h"

#define DEFAULT_URL "amqp://guest:guest@127.0.0.1:5672/"
#define DEFAULT_DLQ "cw.dlq.orders"
#define POLL_MS 250
#define SETTLED_MS 1000
#define NO_CONSUMER_MS 5000
#define AMQP_TIMEOUT_S 10
#define MAX_BROWSE 100000
#define MAX_LISTED 10

enum {
    EXIT_MATCH = 0,
    EXIT_MISMATCH = 1,
    EXIT_USAGE = 2,
    EXIT_ERROR = 3,
    HELP_SHOWN = -1
};

enum {
    KIND_REFUND,
    KIND_RESTOCK,
    KIND_CANCEL,
    N_KINDS
};
static const char *const kind_names[N_KINDS] = {"refund", "restock", "cancel"};

typedef struct options {
    const char *url;
    const char *ledger;
    const char *dlq;
    const char *queue; /* the pool's work queue, NULL when unknown */
    unsigned wait_s;
    bool purge;
} options;

typedef struct expected_task {
    const char *message_id; /* borrowed from the JSON document */
    const char *type;
    const char *saga_id;
    const char *reason; /* why it must fail; NULL when it must apply */
    unsigned effects;   /* effects found in the ledger */
    bool in_dlq;
} expected_task;

typedef struct expectations {
    struct json_object *doc;
    int64_t published, unique, applied, dead;
    int64_t by_kind[N_KINDS];
    int64_t refunded_cents, cancelled;
    struct json_object *stock_after; /* {sku: on_hand} */
    expected_task *tasks;            /* sorted by message ID */
    size_t n_tasks;
} expectations;

typedef struct dead_message {
    char *message_id;
    char *type;
    char *saga_id;
    char *error;
    char *error_class;
} dead_message;

typedef struct broker {
    amqp_connection_state_t conn;
    bool channel_open; /* channel 1, for queue.declare and queue.purge */
} broker;

/* The differences found, one line each. */
typedef struct findings {
    FILE *out;
    char *text;
    size_t len;
    unsigned count;
} findings;

/* ---- output -------------------------------------------------------------- */

/* Writes text that came from a message or the ledger, with control bytes
 * escaped so that it cannot drive the terminal. */
static void put_safe(FILE *to, const char *s)
{
    for (const unsigned char *p = (const unsigned char *)(s != NULL ? s : "-"); *p; p++) {
        if (*p < 0x20 || *p == 0x7f)
            fprintf(to, "\\x%02x", *p);
        else
            fputc(*p, to);
    }
}

static void differ(findings *f, const char *fmt, ...) CW_PRINTF(2, 3);

/* Starts a finding: "  - " and the formatted text (no message content in
 * fmt: append it with put_safe()). End it with differ_end(). */
static void differ(findings *f, const char *fmt, ...)
{
    va_list ap;

    f->count++;
    fputs("  - ", f->out);
    va_start(ap, fmt);
    vfprintf(f->out, fmt, ap);
    va_end(ap);
}

static void differ_end(findings *f)
{
    fputc('\n', f->out);
}

/* ---- options ------------------------------------------------------------- */

static void usage(FILE *to)
{
    fprintf(to,
            "usage: order-saga-report [--url URL] [--ledger PATH] [--dlq NAME]\n"
            "                         [--queue NAME] [--wait SECONDS]\n"
            "       order-saga-report --purge [--url URL] [--dlq NAME] [--queue NAME]\n"
            "\n"
            "Checks the order-saga ledger and dead-letter queue against what\n"
            "order-saga-publish expected (PATH.expected.json). With --purge, empties\n"
            "the work queue and the dead-letter queue instead.\n"
            "\n"
            "  --url URL       broker (default $CW_AMQP_URL, else %s)\n"
            "  --ledger PATH   ledger file (default $%s, else %s)\n"
            "  --dlq NAME      dead-letter queue (default %s)\n"
            "  --queue NAME    the pool's work queue (default: cw.NAME for cw.dlq.NAME)\n"
            "  --wait SECONDS  how long to wait for the pool to finish (default 0)\n"
            "  --purge         empty the work queue and the dead-letter queue, and exit\n",
            DEFAULT_URL, LEDGER_ENV, LEDGER_DEFAULT_PATH, DEFAULT_DLQ);
}

static int parse_options(int argc, char **argv, options *o, char *queue_buf, size_t queue_len)
{
    const char *env = getenv("CW_AMQP_URL");

    o->url = env != NULL && env[0] != '\0' ? env : DEFAULT_URL;
    o->ledger = ledger_path(NULL);
    o->dlq = DEFAULT_DLQ;
    o->queue = NULL;
    o->wait_s = 0;
    o->purge = false;

    for (int i = 1; i < argc;) {
        const char *arg = argv[i++];
        const char *val = i < argc ? argv[i] : NULL;

        if (strcmp(arg, "-h") == 0 || strcmp(arg, "--help") == 0) {
            usage(stdout);
            return HELP_SHOWN;
        }
        if (strcmp(arg, "--purge") == 0) {
            o->purge = true;
            continue;
        }
        if (val == NULL) {
            fprintf(stderr, "order-saga-report: unknown option or missing value: %s\n", arg);
            usage(stderr);
            return EXIT_USAGE;
        }
        i++;
        if (strcmp(arg, "--url") == 0) {
            o->url = val;
        } else if (strcmp(arg, "--ledger") == 0) {
            o->ledger = val;
        } else if (strcmp(arg, "--dlq") == 0) {
            o->dlq = val;
        } else if (strcmp(arg, "--queue") == 0) {
            o->queue = val;
        } else if (strcmp(arg, "--wait") == 0) {
            char *end;
            unsigned long w;

            errno = 0;
            w = strtoul(val, &end, 10);
            if (val[0] < '0' || val[0] > '9' || *end != '\0' || errno != 0 || w > 86400) {
                fprintf(stderr, "order-saga-report: --wait: '%s' is not between 0 and 86400\n",
                        val);
                return EXIT_USAGE;
            }
            o->wait_s = (unsigned)w;
        } else {
            fprintf(stderr, "order-saga-report: unknown option: %s\n", arg);
            usage(stderr);
            return EXIT_USAGE;
        }
    }
    if (o->queue == NULL && strncmp(o->dlq, "cw.dlq.", 7) == 0 &&
        (size_t)snprintf(queue_buf, queue_len, "cw.%s", o->dlq + 7) < queue_len)
        o->queue = queue_buf;
    return 0;
}

/* ---- expectations -------------------------------------------------------- */

static bool get_int(struct json_object *obj, const char *key, int64_t *out)
{
    struct json_object *v;

    if (!json_object_object_get_ex(obj, key, &v) || !json_object_is_type(v, json_type_int))
        return false;
    *out = json_object_get_int64(v);
    return true;
}

static const char *get_string(struct json_object *obj, const char *key)
{
    struct json_object *v;

    if (!json_object_object_get_ex(obj, key, &v) || !json_object_is_type(v, json_type_string))
        return NULL;
    return json_object_get_string(v);
}

static int compare_tasks(const void *a, const void *b)
{
    return strcmp(((const expected_task *)a)->message_id, ((const expected_task *)b)->message_id);
}

static expected_task *find_task(const expectations *e, const char *message_id)
{
    expected_task key = {.message_id = message_id};

    if (message_id == NULL)
        return NULL;
    return bsearch(&key, e->tasks, e->n_tasks, sizeof *e->tasks, compare_tasks);
}

static void expectations_free(expectations *e)
{
    free(e->tasks);
    json_object_put(e->doc);
}

static int expectations_load(expectations *e, const char *file)
{
    struct json_object *kinds, *tasks;

    memset(e, 0, sizeof *e);
    e->doc = json_object_from_file(file);
    if (e->doc == NULL) {
        const char *why = json_util_get_last_err();

        /* json-c's message names the file and ends with a newline */
        fprintf(stderr, "order-saga-report: %.*s (run order-saga-publish first)\n",
                why != NULL ? (int)strcspn(why, "\n") : 0, why != NULL ? why : "");
        return -1;
    }
    if (!get_int(e->doc, "published", &e->published) || !get_int(e->doc, "unique", &e->unique) ||
        !get_int(e->doc, "expected_applied", &e->applied) ||
        !get_int(e->doc, "expected_dead", &e->dead) ||
        !get_int(e->doc, "refunded_cents", &e->refunded_cents) ||
        !get_int(e->doc, "cancelled_shipments", &e->cancelled) ||
        !json_object_object_get_ex(e->doc, "applied_by_kind", &kinds) ||
        !json_object_object_get_ex(e->doc, "stock_after", &e->stock_after) ||
        !json_object_is_type(e->stock_after, json_type_object) ||
        !json_object_object_get_ex(e->doc, "tasks", &tasks) ||
        !json_object_is_type(tasks, json_type_array))
        goto out_malformed;
    for (int k = 0; k < N_KINDS; k++)
        if (!get_int(kinds, kind_names[k], &e->by_kind[k]))
            goto out_malformed;

    e->n_tasks = json_object_array_length(tasks);
    e->tasks = calloc(e->n_tasks + 1, sizeof *e->tasks);
    if (e->tasks == NULL) {
        fprintf(stderr, "order-saga-report: out of memory\n");
        goto out_free;
    }
    for (size_t i = 0; i < e->n_tasks; i++) {
        struct json_object *t = json_object_array_get_idx(tasks, i);
        expected_task *x = &e->tasks[i];
        const char *expect = get_string(t, "expect");

        x->message_id = get_string(t, "message_id");
        x->type = get_string(t, "type");
        x->saga_id = get_string(t, "saga_id");
        if (x->message_id == NULL || x->type == NULL || x->saga_id == NULL || expect == NULL)
            goto out_malformed;
        if (strcmp(expect, "dead") == 0) {
            x->reason = get_string(t, "reason");
            if (x->reason == NULL)
                goto out_malformed;
        }
    }
    qsort(e->tasks, e->n_tasks, sizeof *e->tasks, compare_tasks);
    return 0;

out_malformed:
    fprintf(stderr, "order-saga-report: %s is not an order-saga expectations file\n", file);
out_free:
    expectations_free(e);
    return -1;
}

/* ---- broker -------------------------------------------------------------- */

static const char *amqp_reply_text(amqp_rpc_reply_t r, char *buf, size_t len)
{
    switch (r.reply_type) {
    case AMQP_RESPONSE_NORMAL: return "ok";
    case AMQP_RESPONSE_NONE: return "missing reply";
    case AMQP_RESPONSE_LIBRARY_EXCEPTION: return amqp_error_string2(r.library_error);
    case AMQP_RESPONSE_SERVER_EXCEPTION:
        if (r.reply.id == AMQP_CONNECTION_CLOSE_METHOD) {
            const amqp_connection_close_t *c = r.reply.decoded;

            snprintf(buf, len, "connection closed by the broker: %u %.*s", c->reply_code,
                     (int)c->reply_text.len, (const char *)c->reply_text.bytes);
        } else if (r.reply.id == AMQP_CHANNEL_CLOSE_METHOD) {
            const amqp_channel_close_t *c = r.reply.decoded;

            snprintf(buf, len, "channel closed by the broker: %u %.*s", c->reply_code,
                     (int)c->reply_text.len, (const char *)c->reply_text.bytes);
        } else {
            snprintf(buf, len, "unexpected broker method 0x%08x", (unsigned)r.reply.id);
        }
        return buf;
    }
    return "unknown reply";
}

static void broker_close(broker *b)
{
    if (b->conn == NULL)
        return;
    amqp_connection_close(b->conn, AMQP_REPLY_SUCCESS);
    amqp_destroy_connection(b->conn);
    b->conn = NULL;
}

/* Connects to one URL. Returns 0, or -1 with `err` set. */
static int broker_connect_one(broker *b, const char *url, char *err, size_t err_len)
{
    struct amqp_connection_info info;
    struct timeval tv = {AMQP_TIMEOUT_S, 0};
    char *copy = strdup(url);
    char why[256];
    amqp_socket_t *sock;
    amqp_rpc_reply_t r;
    int rc = -1, st;

    if (copy == NULL) {
        snprintf(err, err_len, "out of memory");
        return -1;
    }
    amqp_default_connection_info(&info);
    if (amqp_parse_url(copy, &info) != AMQP_STATUS_OK) {
        snprintf(err, err_len, "malformed broker URL");
        goto out_free;
    }
    /* "amqp://host:5672/" names the empty vhost by the letter of the AMQP
     * URI spec, but everyone means the default one, as compworker does. */
    if (info.vhost == NULL || info.vhost[0] == '\0')
        info.vhost = "/";
    if (info.ssl) {
        snprintf(err, err_len, "%s:%d: amqps is not supported by this report", info.host,
                 info.port);
        goto out_free;
    }
    b->conn = amqp_new_connection();
    sock = b->conn != NULL ? amqp_tcp_socket_new(b->conn) : NULL;
    if (sock == NULL) {
        snprintf(err, err_len, "out of memory");
        goto out_destroy;
    }
    st = amqp_socket_open_noblock(sock, info.host, info.port, &tv);
    if (st != AMQP_STATUS_OK) {
        snprintf(err, err_len, "%s:%d: %s (is a broker listening there?)", info.host, info.port,
                 amqp_error_string2(st));
        goto out_destroy;
    }
    amqp_set_rpc_timeout(b->conn, &tv);
    r = amqp_login(b->conn, info.vhost, 0, AMQP_DEFAULT_FRAME_SIZE, 0, AMQP_SASL_METHOD_PLAIN,
                   info.user, info.password);
    if (r.reply_type != AMQP_RESPONSE_NORMAL) {
        snprintf(err, err_len, "%s:%d: login as %s: %s", info.host, info.port, info.user,
                 amqp_reply_text(r, why, sizeof why));
        goto out_destroy;
    }
    rc = 0;
    goto out_free;

out_destroy:
    if (b->conn != NULL)
        amqp_destroy_connection(b->conn);
    b->conn = NULL;
out_free:
    free(copy);
    return rc;
}

/* Tries each of the URLs (separated by spaces or commas) in turn. */
static int broker_connect(broker *b, const char *urls)
{
    char *list = strdup(urls), *save = NULL, *url;
    char err[512] = "no broker URL given";

    if (list == NULL) {
        fprintf(stderr, "order-saga-report: out of memory\n");
        return -1;
    }
    for (url = strtok_r(list, " ,", &save); url != NULL; url = strtok_r(NULL, " ,", &save))
        if (broker_connect_one(b, url, err, sizeof err) == 0)
            break;
    free(list);
    if (b->conn == NULL) {
        fprintf(stderr, "order-saga-report: cannot connect to the broker: %s\n", err);
        return -1;
    }
    return 0;
}

static int channel_open(broker *b, amqp_channel_t ch)
{
    char why[256];

    amqp_channel_open(b->conn, ch);
    amqp_rpc_reply_t r = amqp_get_rpc_reply(b->conn);
    if (r.reply_type != AMQP_RESPONSE_NORMAL) {
        fprintf(stderr, "order-saga-report: cannot open a channel: %s\n",
                amqp_reply_text(r, why, sizeof why));
        return -1;
    }
    return 0;
}

/* The number of ready messages in `queue` (passive queue.declare), and of
 * its consumers when `consumers` is not NULL; 0 for a queue that does not
 * exist yet. Uses channel 1, reopened after a 404. Returns 0 or -1. */
static int queue_depth(broker *b, const char *queue, uint32_t *out, uint32_t *consumers)
{
    amqp_queue_declare_ok_t *ok;
    amqp_rpc_reply_t r;
    char why[256];

    if (!b->channel_open) {
        if (channel_open(b, 1) < 0)
            return -1;
        b->channel_open = true;
    }
    ok = amqp_queue_declare(b->conn, 1, amqp_cstring_bytes(queue), 1, 0, 0, 0, amqp_empty_table);
    r = amqp_get_rpc_reply(b->conn);
    if (consumers != NULL)
        *consumers = 0;
    if (ok != NULL && r.reply_type == AMQP_RESPONSE_NORMAL) {
        *out = ok->message_count;
        if (consumers != NULL)
            *consumers = ok->consumer_count;
        amqp_maybe_release_buffers(b->conn);
        return 0;
    }
    if (r.reply_type == AMQP_RESPONSE_SERVER_EXCEPTION && r.reply.id == AMQP_CHANNEL_CLOSE_METHOD &&
        ((amqp_channel_close_t *)r.reply.decoded)->reply_code == AMQP_NOT_FOUND) {
        amqp_channel_close_ok_t close_ok = {0};

        b->channel_open = false;
        if (amqp_send_method(b->conn, 1, AMQP_CHANNEL_CLOSE_OK_METHOD, &close_ok) < 0) {
            fprintf(stderr, "order-saga-report: lost the broker connection\n");
            return -1;
        }
        *out = 0;
        amqp_maybe_release_buffers(b->conn);
        return 0;
    }
    fprintf(stderr, "order-saga-report: queue %s: %s\n", queue,
            amqp_reply_text(r, why, sizeof why));
    return -1;
}

static char *bytes_dup(amqp_bytes_t b)
{
    char *s = malloc(b.len + 1);

    if (s == NULL)
        return NULL;
    if (b.len > 0)
        memcpy(s, b.bytes, b.len);
    s[b.len] = '\0';
    return s;
}

static char *header_dup(const amqp_basic_properties_t *p, const char *name)
{
    if (!(p->_flags & AMQP_BASIC_HEADERS_FLAG))
        return NULL;
    for (int i = 0; i < p->headers.num_entries; i++) {
        const amqp_table_entry_t *e = &p->headers.entries[i];

        if (e->key.len == strlen(name) && memcmp(e->key.bytes, name, e->key.len) == 0 &&
            (e->value.kind == AMQP_FIELD_KIND_UTF8 || e->value.kind == AMQP_FIELD_KIND_BYTES))
            return bytes_dup(e->value.value.bytes);
    }
    return NULL;
}

static void dead_free(dead_message *d, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        free(d[i].message_id);
        free(d[i].type);
        free(d[i].saga_id);
        free(d[i].error);
        free(d[i].error_class);
    }
    free(d);
}

/* Reads every message of the DLQ without consuming any: basic.get without
 * ack on a channel of its own, then closing that channel, which makes the
 * broker requeue all of them. */
static int dlq_browse(broker *b, const char *dlq, dead_message **out, size_t *n_out)
{
    const amqp_channel_t ch = 2;
    dead_message *list = NULL;
    size_t n = 0, cap = 0;
    uint32_t depth;
    char why[256];
    int rc = -1;

    *out = NULL;
    *n_out = 0;
    if (queue_depth(b, dlq, &depth, NULL) < 0)
        return -1;
    if (!b->channel_open)
        return 0; /* no DLQ yet: nothing was dead-lettered */
    if (channel_open(b, ch) < 0)
        return -1;
    while (n < MAX_BROWSE) {
        amqp_rpc_reply_t r = amqp_basic_get(b->conn, ch, amqp_cstring_bytes(dlq), 0);
        amqp_message_t msg;
        dead_message *d;

        if (r.reply_type != AMQP_RESPONSE_NORMAL) {
            fprintf(stderr, "order-saga-report: reading %s: %s\n", dlq,
                    amqp_reply_text(r, why, sizeof why));
            goto out_fail;
        }
        if (r.reply.id == AMQP_BASIC_GET_EMPTY_METHOD)
            break;
        r = amqp_read_message(b->conn, ch, &msg, 0);
        if (r.reply_type != AMQP_RESPONSE_NORMAL) {
            fprintf(stderr, "order-saga-report: reading %s: %s\n", dlq,
                    amqp_reply_text(r, why, sizeof why));
            goto out_fail;
        }
        if (n == cap) {
            size_t ncap = cap ? 2 * cap : 16;
            dead_message *grown = realloc(list, ncap * sizeof *list);

            if (grown == NULL) {
                amqp_destroy_message(&msg);
                fprintf(stderr, "order-saga-report: out of memory\n");
                goto out_fail;
            }
            list = grown;
            cap = ncap;
        }
        d = &list[n++];
        memset(d, 0, sizeof *d);
        if (msg.properties._flags & AMQP_BASIC_MESSAGE_ID_FLAG)
            d->message_id = bytes_dup(msg.properties.message_id);
        if (msg.properties._flags & AMQP_BASIC_TYPE_FLAG)
            d->type = bytes_dup(msg.properties.type);
        if (msg.properties._flags & AMQP_BASIC_CORRELATION_ID_FLAG)
            d->saga_id = bytes_dup(msg.properties.correlation_id);
        d->error = header_dup(&msg.properties, "cw-error");
        d->error_class = header_dup(&msg.properties, "cw-error-class");
        amqp_destroy_message(&msg);
        amqp_maybe_release_buffers(b->conn);
    }
    rc = 0;

out_fail:
    /* Closing the channel requeues every message fetched on it. */
    amqp_channel_close(b->conn, ch, AMQP_REPLY_SUCCESS);
    if (rc < 0) {
        dead_free(list, n);
        return -1;
    }
    *out = list;
    *n_out = n;
    return 0;
}

/* ---- ledger -------------------------------------------------------------- */

static int ledger_open_existing(sqlite3 **out, const char *path)
{
    int rc = sqlite3_open_v2(path, out, SQLITE_OPEN_READWRITE, NULL);

    if (rc != SQLITE_OK) {
        fprintf(stderr, "order-saga-report: cannot open ledger %s: %s\n", path,
                *out != NULL ? sqlite3_errmsg(*out) : sqlite3_errstr(rc));
        sqlite3_close(*out);
        *out = NULL;
        return -1;
    }
    sqlite3_busy_timeout(*out, LEDGER_BUSY_TIMEOUT_MS);
    return 0;
}

/* A single integer from `sql`. Returns 0 or -1 (error printed). */
static int query_int(sqlite3 *db, const char *sql, int64_t *out)
{
    sqlite3_stmt *st;
    int rc = sqlite3_prepare_v2(db, sql, -1, &st, NULL);

    *out = 0;
    if (rc == SQLITE_OK) {
        rc = sqlite3_step(st);
        if (rc == SQLITE_ROW) {
            *out = sqlite3_column_int64(st, 0);
            rc = SQLITE_OK;
        }
    }
    sqlite3_finalize(st);
    if (rc != SQLITE_OK) {
        fprintf(stderr, "order-saga-report: ledger: %s\n", sqlite3_errmsg(db));
        return -1;
    }
    return 0;
}

/* Counts each message ID's effects into the expectations; effects of IDs the
 * publisher never sent are findings. Fills by_kind, and *twice with the
 * number of message IDs that have more than one effect. */
static int scan_effects(sqlite3 *db, expectations *e, int64_t by_kind[N_KINDS], findings *f,
                        int64_t *twice)
{
    static const char sql[] = "SELECT message_id, kind, COUNT(*) FROM effects"
                              " GROUP BY message_id, kind ORDER BY MIN(id)";
    sqlite3_stmt *st;
    unsigned strangers = 0;
    int rc;

    memset(by_kind, 0, N_KINDS * sizeof *by_kind);
    if (query_int(db,
                  "SELECT COUNT(*) FROM (SELECT message_id FROM effects"
                  " GROUP BY message_id HAVING COUNT(*) > 1)",
                  twice) < 0)
        return -1;
    if (sqlite3_prepare_v2(db, sql, -1, &st, NULL) != SQLITE_OK) {
        fprintf(stderr, "order-saga-report: ledger: %s\n", sqlite3_errmsg(db));
        return -1;
    }
    while ((rc = sqlite3_step(st)) == SQLITE_ROW) {
        const char *id = (const char *)sqlite3_column_text(st, 0);
        const char *kind = (const char *)sqlite3_column_text(st, 1);
        int64_t n = sqlite3_column_int64(st, 2);
        expected_task *t = find_task(e, id);

        for (int k = 0; k < N_KINDS; k++)
            if (kind != NULL && strcmp(kind, kind_names[k]) == 0)
                by_kind[k] += n;
        if (t != NULL) {
            t->effects += (unsigned)n;
        } else if (strangers++ < MAX_LISTED) {
            differ(f, "%" PRId64 " effect(s) of kind ", n);
            put_safe(f->out, kind);
            fputs(" in the ledger for message ", f->out);
            put_safe(f->out, id);
            fputs(", which the publisher never sent", f->out);
            differ_end(f);
        }
    }
    sqlite3_finalize(st);
    if (rc != SQLITE_DONE) {
        fprintf(stderr, "order-saga-report: ledger: %s\n", sqlite3_errmsg(db));
        return -1;
    }
    if (strangers > MAX_LISTED) {
        differ(f, "... and %u more unexpected message IDs in the ledger", strangers - MAX_LISTED);
        differ_end(f);
    }
    return 0;
}

/* Compares the ledger's balances with what the applied tasks must leave. */
static int check_totals(sqlite3 *db, const expectations *e, findings *f)
{
    struct json_object_iterator it = json_object_iter_begin(e->stock_after);
    struct json_object_iterator end = json_object_iter_end(e->stock_after);
    sqlite3_stmt *st;
    int64_t refunded, cancelled;

    if (query_int(db, "SELECT COALESCE(SUM(refunded_cents), 0) FROM payments", &refunded) < 0 ||
        query_int(db, "SELECT COUNT(*) FROM shipments WHERE status = 'cancelled'", &cancelled) < 0)
        return -1;
    if (refunded != e->refunded_cents) {
        differ(f, "payments show %" PRId64 " cents refunded, expected %" PRId64, refunded,
               e->refunded_cents);
        differ_end(f);
    }
    if (cancelled != e->cancelled) {
        differ(f, "%" PRId64 " shipments are cancelled, expected %" PRId64, cancelled,
               e->cancelled);
        differ_end(f);
    }
    if (sqlite3_prepare_v2(db, "SELECT on_hand FROM stock WHERE sku = ?1", -1, &st, NULL) !=
        SQLITE_OK) {
        fprintf(stderr, "order-saga-report: ledger: %s\n", sqlite3_errmsg(db));
        return -1;
    }
    for (; !json_object_iter_equal(&it, &end); json_object_iter_next(&it)) {
        const char *sku = json_object_iter_peek_name(&it);
        int64_t want = json_object_get_int64(json_object_iter_peek_value(&it));

        sqlite3_bind_text(st, 1, sku, -1, SQLITE_STATIC);
        if (sqlite3_step(st) != SQLITE_ROW) {
            differ(f, "stock of ");
            put_safe(f->out, sku);
            fputs(" is missing from the ledger", f->out);
            differ_end(f);
        } else if (sqlite3_column_int64(st, 0) != want) {
            differ(f, "stock of ");
            put_safe(f->out, sku);
            fprintf(f->out, " is %" PRId64 ", expected %" PRId64,
                    (int64_t)sqlite3_column_int64(st, 0), want);
            differ_end(f);
        }
        sqlite3_reset(st);
    }
    sqlite3_finalize(st);
    return 0;
}

/* ---- waiting ------------------------------------------------------------- */

static int64_t now_ms(void)
{
    struct timespec ts;

    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static void sleep_ms(long ms)
{
    struct timespec ts = {ms / 1000, (ms % 1000) * 1000000L};

    while (nanosleep(&ts, &ts) < 0 && errno == EINTR)
        ;
}

typedef enum wait_result {
    WAIT_ERROR = -1,
    WAIT_SETTLED,
    WAIT_TIMED_OUT,
    WAIT_NO_CONSUMER /* nobody consumes the work queue: waiting is pointless */
} wait_result;

/* Waits until effects + DLQ depth reach the expected total, the work queue
 * is empty and nothing moved for SETTLED_MS, or until the deadline, or until
 * the work queue has had no consumer for NO_CONSUMER_MS. */
static wait_result wait_settled(sqlite3 *db, broker *b, const options *o, const expectations *e)
{
    const int64_t start = now_ms(), deadline = start + (int64_t)o->wait_s * 1000;
    int64_t last_change = start, last_consumer = start;
    int64_t prev_effects = -1, effects;
    uint32_t prev_dead = 0, dead, ready = 0, consumers = 1;

    for (;;) {
        if (query_int(db, "SELECT COUNT(*) FROM effects", &effects) < 0 ||
            queue_depth(b, o->dlq, &dead, NULL) < 0 ||
            (o->queue != NULL && queue_depth(b, o->queue, &ready, &consumers) < 0))
            return WAIT_ERROR;
        if (effects != prev_effects || dead != prev_dead)
            last_change = now_ms();
        if (consumers > 0)
            last_consumer = now_ms();
        prev_effects = effects;
        prev_dead = dead;
        if (effects + (int64_t)dead >= e->applied + e->dead && ready == 0 &&
            (o->wait_s == 0 || now_ms() - last_change >= SETTLED_MS))
            return WAIT_SETTLED;
        if (now_ms() >= deadline)
            return WAIT_TIMED_OUT;
        if (now_ms() - last_consumer >= NO_CONSUMER_MS)
            return WAIT_NO_CONSUMER;
        sleep_ms(POLL_MS);
    }
}

/* Empties `queue` if it exists. Returns 0 or -1. */
static int purge_queue(broker *b, const char *queue)
{
    amqp_queue_purge_ok_t *ok;
    amqp_rpc_reply_t r;
    uint32_t depth;
    char why[256];

    if (queue_depth(b, queue, &depth, NULL) < 0)
        return -1;
    if (!b->channel_open) {
        printf("%s does not exist: nothing to purge\n", queue);
        return 0;
    }
    ok = amqp_queue_purge(b->conn, 1, amqp_cstring_bytes(queue));
    r = amqp_get_rpc_reply(b->conn);
    if (ok == NULL || r.reply_type != AMQP_RESPONSE_NORMAL) {
        fprintf(stderr, "order-saga-report: purging %s: %s\n", queue,
                amqp_reply_text(r, why, sizeof why));
        return -1;
    }
    printf("purged %u message(s) from %s\n", ok->message_count, queue);
    return 0;
}

static int run_purge(const options *o, broker *b)
{
    if ((o->queue != NULL && purge_queue(b, o->queue) < 0) || purge_queue(b, o->dlq) < 0)
        return EXIT_ERROR;
    return EXIT_SUCCESS;
}

/* ---- the report ---------------------------------------------------------- */

/* Writes `s` (escaped) left-aligned in a column of `width` characters. */
static void put_column(const char *s, size_t width)
{
    put_safe(stdout, s);
    for (size_t n = strlen(s); n < width; n++)
        putchar(' ');
}

static void print_dead(const dead_message *d)
{
    fputs("  ", stdout);
    put_column(d->type != NULL ? d->type : "(no type)", 18);
    put_column(d->saga_id != NULL ? d->saga_id : "(no saga)", 16);
    fputs("  ", stdout);
    put_column(d->error_class != NULL ? d->error_class : "(no class)", 11);
    put_safe(stdout, d->error != NULL ? d->error : "(no reason)");
    fputc('\n', stdout);
}

/* Matches the DLQ's messages with the expected failures. */
static void check_dlq(expectations *e, const dead_message *dead, size_t n_dead, findings *f)
{
    unsigned strangers = 0;

    for (size_t i = 0; i < n_dead; i++) {
        const dead_message *d = &dead[i];
        expected_task *t = find_task(e, d->message_id);

        if (t != NULL && t->reason != NULL && !t->in_dlq) {
            t->in_dlq = true;
            if (d->error_class == NULL || strcmp(d->error_class, "permanent") != 0) {
                differ(f, "dead-lettered %s of %s has error class ", t->type, t->saga_id);
                put_safe(f->out, d->error_class);
                fputs(", expected permanent", f->out);
                differ_end(f);
            }
            if (d->error == NULL || strstr(d->error, t->reason) == NULL) {
                differ(f, "dead-lettered %s of %s gives the reason \"", t->type, t->saga_id);
                put_safe(f->out, d->error);
                fprintf(f->out, "\", expected \"%s\"", t->reason);
                differ_end(f);
            }
            continue;
        }
        if (strangers++ >= MAX_LISTED)
            continue;
        differ(f, "the dead-letter queue holds ");
        if (t != NULL && t->in_dlq)
            fputs("a second copy of ", f->out);
        else if (t != NULL)
            fputs("a task that should have been applied: ", f->out);
        else
            fputs("a message the publisher never sent: ", f->out);
        put_safe(f->out, d->type);
        fputs(" ", f->out);
        put_safe(f->out, d->saga_id);
        fputs(" ", f->out);
        put_safe(f->out, d->message_id);
        differ_end(f);
    }
    if (strangers > MAX_LISTED) {
        differ(f, "... and %u more unexpected messages in the dead-letter queue",
               strangers - MAX_LISTED);
        differ_end(f);
    }
}

/* Lists the expected tasks that did not end where they should. */
static void check_tasks(const expectations *e, findings *f)
{
    unsigned missing = 0;

    for (size_t i = 0; i < e->n_tasks; i++) {
        const expected_task *t = &e->tasks[i];
        const char *what = NULL;

        if (t->reason == NULL && t->effects == 0)
            what = "was never applied";
        else if (t->effects > 1)
            what = "was applied more than once";
        else if (t->reason != NULL && t->effects > 0)
            what = "was applied although it must fail";
        else if (t->reason != NULL && !t->in_dlq)
            what = "is not in the dead-letter queue";
        if (what == NULL || missing++ >= MAX_LISTED)
            continue;
        differ(f, "%s of %s (message %s) %s", t->type, t->saga_id, t->message_id, what);
        differ_end(f);
    }
    if (missing > MAX_LISTED) {
        differ(f, "... and %u more tasks not where they should be", missing - MAX_LISTED);
        differ_end(f);
    }
}

static int run_report(const options *o, expectations *e, sqlite3 *db, broker *b)
{
    findings f = {0};
    dead_message *dead = NULL;
    size_t n_dead = 0;
    int64_t by_kind[N_KINDS], applied = 0, twice = 0;
    wait_result settled;
    int rc = EXIT_ERROR;

    f.out = open_memstream(&f.text, &f.len);
    if (f.out == NULL) {
        fprintf(stderr, "order-saga-report: out of memory\n");
        return EXIT_ERROR;
    }
    settled = wait_settled(db, b, o, e);
    if (settled == WAIT_ERROR || scan_effects(db, e, by_kind, &f, &twice) < 0 ||
        dlq_browse(b, o->dlq, &dead, &n_dead) < 0)
        goto out_free;
    check_dlq(e, dead, n_dead, &f);
    check_tasks(e, &f);
    if (check_totals(db, e, &f) < 0)
        goto out_free;
    for (int k = 0; k < N_KINDS; k++)
        applied += by_kind[k];

    if (settled == WAIT_TIMED_OUT) {
        differ(&f, "the pool had not finished after %u s (--wait)", o->wait_s);
        differ_end(&f);
    } else if (settled == WAIT_NO_CONSUMER) {
        differ(&f,
               "the pool had not finished, and no worker has consumed %s for %d s"
               " (see the worker's log)",
               o->queue, NO_CONSUMER_MS / 1000);
        differ_end(&f);
    }
    if (applied != e->applied) {
        differ(&f, "%" PRId64 " compensations applied, expected %" PRId64, applied, e->applied);
        differ_end(&f);
    }
    if (twice > 0) {
        differ(&f, "%" PRId64 " message ID(s) applied more than once", twice);
        differ_end(&f);
    }
    if ((int64_t)n_dead != e->dead) {
        differ(&f, "%zu tasks in the dead-letter queue, expected %" PRId64, n_dead, e->dead);
        differ_end(&f);
    }
    fflush(f.out);

    printf("Order-saga report for ledger %s and dead-letter queue %s\n\n", o->ledger, o->dlq);
    printf("Applied compensations: %" PRId64 " (expected %" PRId64 ")\n", applied, e->applied);
    for (int k = 0; k < N_KINDS; k++)
        printf("  %-8s %6" PRId64 "  (expected %" PRId64 ")\n", kind_names[k], by_kind[k],
               e->by_kind[k]);
    printf("%" PRId64 " applied twice: %s\n", twice,
           twice == 0 ? "no message ID has more than one effect in the ledger"
                      : "some message IDs have several effects in the ledger");
    printf("Duplicates skipped: %" PRId64 " (%" PRId64 " published, %" PRId64 " unique)\n",
           e->published - e->unique, e->published, e->unique);
    printf("Dead-lettered: %zu (expected %" PRId64 ")\n", n_dead, e->dead);
    for (size_t i = 0; i < n_dead; i++)
        print_dead(&dead[i]);
    putchar('\n');

    if (f.count == 0) {
        printf("OK: every unique valid task was applied exactly once, none twice, the"
               " dead-letter queue holds the %" PRId64 " expected failures, and the ledger's"
               " payments, stock and shipments balance.\n",
               e->dead);
        rc = EXIT_MATCH;
    } else {
        printf("MISMATCH: %u difference(s) from what order-saga-publish expected:\n%s", f.count,
               f.text);
        rc = EXIT_MISMATCH;
    }

out_free:
    fclose(f.out);
    free(f.text);
    dead_free(dead, n_dead);
    return rc;
}

int main(int argc, char **argv)
{
    options opt;
    expectations e;
    broker b = {0};
    sqlite3 *db;
    char queue_buf[256];
    char *expected_file;
    size_t len;
    int rc = parse_options(argc, argv, &opt, queue_buf, sizeof queue_buf);

    if (rc != 0)
        return rc == HELP_SHOWN ? EXIT_SUCCESS : rc;
    if (opt.purge) {
        if (broker_connect(&b, opt.url) < 0)
            return EXIT_ERROR;
        rc = run_purge(&opt, &b);
        broker_close(&b);
        return rc;
    }
    len = strlen(opt.ledger) + sizeof ".expected.json";
    expected_file = malloc(len);
    if (expected_file == NULL) {
        fprintf(stderr, "order-saga-report: out of memory\n");
        return EXIT_ERROR;
    }
    snprintf(expected_file, len, "%s.expected.json", opt.ledger);
    rc = EXIT_ERROR;
    if (expectations_load(&e, expected_file) < 0)
        goto out_free_file;
    if (ledger_open_existing(&db, opt.ledger) < 0)
        goto out_free_expectations;
    if (broker_connect(&b, opt.url) < 0)
        goto out_close_ledger;

    rc = run_report(&opt, &e, db, &b);

    broker_close(&b);
out_close_ledger:
    sqlite3_close(db);
out_free_expectations:
    expectations_free(&e);
out_free_file:
    free(expected_file);
    return rc;
}
