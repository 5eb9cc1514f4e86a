/* Internal: one delivery as the pipeline sees it. */
#ifndef CW_FRAMEWORK_TASK_H
#define CW_FRAMEWORK_TASK_H

#include <amqp.h>
#include <json.h>
#include <stdbool.h>
#include <stdint.h>

#include "compworker/client.h"
#include "compworker/compworker.h"
#include "framework/limits.h"
#include "framework/registry.h"
#include "framework/store.h"

typedef struct cw_strnode {
    struct cw_strnode *next;
    char data[];
} cw_strnode;

struct cw_task {
    amqp_envelope_t env; /* owned when has_env; destroyed by cw__task_reset() */
    bool has_env;
    bool pooled; /* env's memory is its message pool, kept across resets
                    (a worker's slot: cw__broker_consume_pooled) */
    char message_id[CW_MESSAGE_ID_MAX + 1];
    char type[256];
    char saga_id[256];
    json_object *payload; /* owned (json_object_put) */
    unsigned attempt;
    const cw_handler_entry *handler;

    cw_outcome outcome;
    char error_class[32]; /* "" when OK */
    char reason[CW_REASON_MAX];
    bool has_retry_after; /* the handler asked for its own delay */
    int64_t retry_after_ms;

    cw_strnode *strings; /* strings handed out by cw_task_header() */

    /* pipeline bookkeeping */
    struct cw_task *next;  /* the list it is on (free slots, the handler threads' queues) */
    int64_t queued_ns;     /* CLOCK_MONOTONIC ns when handed to the handler threads */
    int64_t started_ns;    /* CLOCK_MONOTONIC ns when a handler thread took it */
    int stage;             /* where it is in the worker (worker.c) */
    int action;            /* what settling does with it (worker.c) */
    int64_t ticket;        /* the store's handle of its claim */
    uint64_t durable_mark; /* its outcome's commit, for cw_store_durable() */
    bool published;        /* its replacement (DLQ copy, retry) was confirmed */
    bool ran;              /* its handler was called */
    char crash_signal[32]; /* for a poison task: how its workers died */

    /* effects exactly once (cw_task_pg, cw_task_sqlite, cw_task_send) */
    cw_store_tx **tx;             /* the handler thread's transaction, made at its
                                     first use; NULL: the store has none */
    const cw_store_opts *tx_opts; /* how to open it */
    bool tx_open;                 /* begun for this task */
    bool recorded;                /* its done record committed with its transaction */
    cw_followup *sends;           /* cw_task_send()'s (CW_TASK_SEND_MAX), owned */
    size_t n_sends, send_bytes;
    char send_error[256]; /* a refused send ("" for none): the task fails with it */
};

/* Frees what the task owns and makes it empty for reuse. */
void cw__task_reset(cw_task *t);

/* cw_task_send() with the follow-up's message ID given (a UUID, 36
 * characters; NULL: derived as cw_task_send() does) and its headers (NULL,
 * or a JSON object of string values, copied): a saga plan's steps. */
int cw__task_send_as(cw_task *task, const char *exchange, const char *routing_key, const char *type,
                     const void *body, size_t len, const char *message_id, const char *headers);

/* Drops the follow-ups the task queued (an outcome other than done). */
void cw__task_drop_sends(cw_task *t);

/* The message ID of follow-up `index` of the task with `message_id`: the
 * UUIDv5 of "message_id:index" in compworker's namespace, into out (37
 * bytes). */
void cw__followup_id(const char *message_id, size_t index, char out[37]);

/* The UUIDv5 of `name` (`len` bytes) in compworker's namespace, into out
 * (37 bytes): the derived message IDs (follow-ups, plan steps). */
void cw__uuid5(const char *name, size_t len, char out[37]);

/* "plugin version" of the task's handler ("type" for one the program
 * registered, "" without a handler), into out. */
void cw__task_describe_handler(const cw_task *t, char *out, size_t cap);

/* Sets outcome, error class and reason (printf-style). */
void cw__task_set_failure(cw_task *t, cw_outcome o, const char *error_class, const char *fmt, ...)
    CW_PRINTF(4, 5);

/* Reusable validation state: a JSON tokener and the limits. */
typedef struct cw_validator {
    json_tokener *tok;
    uint64_t max_body_size;
    const cw_registry *reg;
} cw_validator;

int cw__validator_init(cw_validator *v, const cw_registry *reg, uint64_t max_body_size);
void cw__validator_free(cw_validator *v);

/* Checks the envelope in t->env against the message contract and fills the
 * task's fields. Returns true for a dispatchable task; false with
 * error_class "invalid" and a readable reason otherwise. Never fails on
 * content: every byte sequence is either accepted or given a reason. */
bool cw__task_validate(cw_validator *v, cw_task *t);

/* Looks up a header of any kind; NULL when absent. */
const amqp_field_value_t *cw__task_header_value(const amqp_basic_properties_t *p, const char *name);

#endif
