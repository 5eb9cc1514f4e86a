/* The task handed to handlers, its accessors, and envelope validation. */
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <uuid/uuid.h>

#include "framework/broker.h"
#include "framework/clock.h"
#include "framework/error.h"
#include "framework/json_text.h"
#include "framework/task.h"

void cw__task_describe_handler(const cw_task *t, char *out, size_t cap)
{
    if (t->handler && t->handler->plugin)
        snprintf(out, cap, "%s %s", t->handler->plugin->info->name,
                 t->handler->plugin->info->version);
    else if (t->handler)
        snprintf(out, cap, "%s", t->handler->type);
    else if (cap)
        out[0] = '\0';
}

void cw__task_reset(cw_task *t)
{
    bool pooled = t->pooled;
    if (pooled)
        cw__envelope_recycle(&t->env);
    else if (t->has_env)
        amqp_destroy_envelope(&t->env);
    if (t->payload)
        json_object_put(t->payload);
    for (cw_strnode *n = t->strings; n;) {
        cw_strnode *next = n->next;
        free(n);
        n = next;
    }
    cw__task_drop_sends(t);
    free(t->sends);
    amqp_pool_t pool = t->env.message.pool;
    memset(t, 0, sizeof *t);
    if (pooled) {
        t->env.message.pool = pool;
        t->pooled = true;
    }
}

void cw__task_drop_sends(cw_task *t)
{
    for (size_t i = 0; i < t->n_sends; i++)
        cw_followup_clear(&t->sends[i]);
    t->n_sends = 0;
    t->send_bytes = 0;
}

void cw__task_set_failure(cw_task *t, cw_outcome o, const char *error_class, const char *fmt, ...)
{
    t->outcome = o;
    snprintf(t->error_class, sizeof t->error_class, "%s", error_class);
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(t->reason, sizeof t->reason, fmt, ap);
    va_end(ap);
}

const char *cw_task_message_id(const cw_task *task)
{
    return task->message_id;
}

const char *cw_task_type(const cw_task *task)
{
    return task->type;
}

const char *cw_task_saga_id(const cw_task *task)
{
    return task->saga_id;
}

json_object *cw_task_payload(const cw_task *task)
{
    return task->payload;
}

const void *cw_task_body(const cw_task *task, size_t *len)
{
    if (len)
        *len = task->env.message.body.len;
    return task->env.message.body.bytes;
}

unsigned cw_task_attempt(const cw_task *task)
{
    return task->attempt;
}

const amqp_field_value_t *cw__task_header_value(const amqp_basic_properties_t *p, const char *name)
{
    if (!(p->_flags & AMQP_BASIC_HEADERS_FLAG))
        return NULL;
    size_t len = strlen(name);
    for (int i = 0; i < p->headers.num_entries; i++) {
        const amqp_table_entry_t *e = &p->headers.entries[i];
        if (e->key.len == len && memcmp(e->key.bytes, name, len) == 0)
            return &e->value;
    }
    return NULL;
}

const char *cw_task_header(cw_task *task, const char *name)
{
    if (!task || !name)
        return NULL;
    const amqp_field_value_t *v = cw__task_header_value(&task->env.message.properties, name);
    if (!v || (v->kind != AMQP_FIELD_KIND_UTF8 && v->kind != AMQP_FIELD_KIND_BYTES))
        return NULL;
    const amqp_bytes_t b = v->value.bytes;
    if (b.len && memchr(b.bytes, '\0', b.len))
        return NULL;
    /* Each string handed out lives until the task is reset; headers are
     * asked for rarely, so one small allocation each is fine. */
    cw_strnode *n = malloc(sizeof *n + b.len + 1);
    if (!n)
        return NULL;
    if (b.len) /* an empty value may have bytes == NULL (amqp_empty_bytes) */
        memcpy(n->data, b.bytes, b.len);
    n->data[b.len] = '\0';
    n->next = task->strings;
    task->strings = n;
    return n->data;
}

static cw_outcome record(cw_task *task, cw_outcome o, const char *cls, const char *fmt, va_list ap)
{
    if (!task)
        return o;
    task->has_retry_after = false;
    task->outcome = o;
    snprintf(task->error_class, sizeof task->error_class, "%s", cls);
    if (fmt)
        vsnprintf(task->reason, sizeof task->reason, fmt, ap);
    else
        task->reason[0] = '\0';
    return o;
}

cw_outcome cw_task_fail(cw_task *task, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    cw_outcome o = record(task, CW_FAIL, "permanent", fmt, ap);
    va_end(ap);
    return o;
}

cw_outcome cw_task_retry(cw_task *task, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    cw_outcome o = record(task, CW_RETRY, "transient", fmt, ap);
    va_end(ap);
    return o;
}

cw_outcome cw_task_retry_after(cw_task *task, int64_t delay_ms, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    cw_outcome o = record(task, CW_RETRY, "transient", fmt, ap);
    va_end(ap);
    if (task && delay_ms >= 0) {
        task->has_retry_after = true;
        task->retry_after_ms = delay_ms;
    }
    return o;
}

/* ---- effects exactly once ------------------------------------------------------ */

/* The namespace of follow-up message IDs (UUIDv5, RFC 4122 section 4.3). */
static const uuid_t followup_ns = {0xc6, 0x54, 0x2d, 0x8d, 0xd0, 0xa4, 0x4b, 0xa7,
                                   0xac, 0x95, 0x6d, 0x18, 0x55, 0x62, 0x03, 0x36};

void cw__uuid5(const char *name, size_t len, char out[37])
{
    uuid_t u;
    uuid_generate_sha1(u, followup_ns, name, len);
    uuid_unparse_lower(u, out);
}

void cw__followup_id(const char *message_id, size_t index, char out[37])
{
    char name[CW_MESSAGE_ID_MAX + 32];
    int len = snprintf(name, sizeof name, "%s:%zu", message_id, index);
    cw__uuid5(name, (size_t)len, out);
}

/* The handle of the task's store transaction, begun now if it is not yet;
 * NULL (with the reason in cw_error_last()) when the store's backend is not
 * `backend` or the transaction cannot begin. */
static void *task_tx(cw_task *t, const char *backend)
{
    if (!t) {
        cw__error(CW_STATUS_INVALID_ARG, "cw_task_%s: NULL task", backend);
        return NULL;
    }
    if (!t->tx || !t->tx_opts || strcmp(t->tx_opts->backend, backend) != 0) {
        cw__error(CW_STATUS_INVALID_ARG, "cw_task_%s: the store's backend is %s, not %s",
                  strcmp(backend, "postgresql") == 0 ? "pg" : backend,
                  t->tx_opts ? t->tx_opts->backend : "memory", backend);
        return NULL;
    }
    if (t->tx_open)
        return (*t->tx)->handle;
    if (!*t->tx && cw_store_tx_new(t->tx, t->tx_opts) != 0)
        return NULL;
    if (cw_store_tx_begin(*t->tx, t->ticket, cw__now_ms()) != 0)
        return NULL;
    t->tx_open = true;
    cw_store_tx_guard(*t->tx, true);
    return (*t->tx)->handle;
}

struct pg_conn *cw_task_pg(cw_task *task)
{
    return task_tx(task, "postgresql");
}

struct sqlite3 *cw_task_sqlite(cw_task *task)
{
    return task_tx(task, "sqlite");
}

/* Refuses a send: the task fails with the reason, whatever its handler
 * returns, so that a follow-up is never lost without a word. */
static int refuse_send(cw_task *t, int status, const char *fmt, const char *arg)
{
    char why[200];
    snprintf(why, sizeof why, fmt, arg);
    if (!t->send_error[0])
        snprintf(t->send_error, sizeof t->send_error, "cw_task_send refused follow-up %zu: %s",
                 t->n_sends + 1, why);
    return cw__error(status, "cw_task_send: %s", why);
}

static bool short_string(const char *s, bool empty_ok)
{
    size_t n = strnlen(s, 256);
    return n <= 255 && (empty_ok || n > 0);
}

int cw_task_send(cw_task *task, const char *exchange, const char *routing_key, const char *type,
                 const void *body, size_t len)
{
    return cw__task_send_as(task, exchange, routing_key, type, body, len, NULL, NULL);
}

int cw__task_send_as(cw_task *task, const char *exchange, const char *routing_key, const char *type,
                     const void *body, size_t len, const char *message_id, const char *headers)
{
    if (!task)
        return cw__error(CW_STATUS_INVALID_ARG, "cw_task_send: NULL task");
    if (!exchange || !short_string(exchange, true))
        return refuse_send(task, CW_STATUS_INVALID_ARG, "%s",
                           "exchange must be given, at most 255 bytes (\"\" for the default one)");
    if (!routing_key || !short_string(routing_key, true))
        return refuse_send(task, CW_STATUS_INVALID_ARG, "%s",
                           "routing_key must be given, at most 255 bytes");
    if (!type || !cw__type_valid(type, strlen(type)))
        return refuse_send(task, CW_STATUS_INVALID_ARG, "%s",
                           "type must be 1-255 characters of [A-Za-z0-9._:-]");
    if (!body)
        return refuse_send(task, CW_STATUS_INVALID_ARG, "%s", "body is required");
    if (len == 0)
        len = strlen(body);
    if (task->n_sends >= CW_TASK_SEND_MAX)
        return refuse_send(task, CW_STATUS_TOO_LARGE, "%s",
                           "more than CW_TASK_SEND_MAX (16) follow-ups for one task");
    if (len > CW_TASK_SEND_BYTES_MAX - task->send_bytes)
        return refuse_send(task, CW_STATUS_TOO_LARGE, "%s",
                           "the task's follow-ups would pass CW_TASK_SEND_BYTES_MAX (1 MiB)");
    char why[160];
    if (cw__json_object_check(body, len, why, sizeof why))
        return refuse_send(task, CW_STATUS_INVALID_ARG, "body is not a JSON object: %s", why);
    if (!task->sends && !(task->sends = calloc(CW_TASK_SEND_MAX, sizeof *task->sends)))
        return refuse_send(task, CW_STATUS_NOMEM, "%s", "out of memory");
    cw_followup *f = &task->sends[task->n_sends];
    memset(f, 0, sizeof *f);
    f->exchange = strdup(exchange);
    f->routing_key = strdup(routing_key);
    f->type = strdup(type);
    f->saga_id = task->saga_id[0] ? strdup(task->saga_id) : NULL;
    f->body = malloc(len ? len : 1);
    f->headers = headers ? strdup(headers) : NULL;
    if (!f->exchange || !f->routing_key || !f->type || !f->body ||
        (task->saga_id[0] && !f->saga_id) || (headers && !f->headers)) {
        cw_followup_clear(f);
        return refuse_send(task, CW_STATUS_NOMEM, "%s", "out of memory");
    }
    memcpy(f->body, body, len);
    f->len = len;
    if (message_id)
        snprintf(f->message_id, sizeof f->message_id, "%s", message_id);
    else
        cw__followup_id(task->message_id, task->n_sends, f->message_id);
    task->n_sends++;
    task->send_bytes += len;
    return 0;
}
