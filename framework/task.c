/* The task handed to handlers, its accessors, and envelope validation. */
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "framework/error.h"
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
    if (t->has_env)
        amqp_destroy_envelope(&t->env);
    if (t->payload)
        json_object_put(t->payload);
    for (cw_strnode *n = t->strings; n;) {
        cw_strnode *next = n->next;
        free(n);
        n = next;
    }
    memset(t, 0, sizeof *t);
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
