/* Internal: publishing a failed task to its pool's dead-letter queue. */
#ifndef CW_DLQ_DEADLETTER_H
#define CW_DLQ_DEADLETTER_H

#include <amqp.h>
#include <stdbool.h>
#include <stdint.h>

#include "framework/broker.h"

typedef struct cw_deadletter_info {
    const char *error_class; /* "invalid", "permanent", "exhausted", "poison";
                                "transient" on a retry copy */
    const char *reason;
    const char *handler; /* "refund 1.0.0 (payment.refund)" or NULL */
    const char *worker;
    const char *queue;        /* the pool queue the task failed in */
    unsigned attempts;        /* attempts made, this one included */
    const char *crash_signal; /* poison: "SIGSEGV", "timeout"...; or NULL */
} cw_deadletter_info;

/* Publishes a copy of `env` (body and properties kept, persistent, without
 * the producer's expiration, mandatory) to `exchange` with `routing_key`. With `info`, the copy gains
 * the failure headers cw-error, cw-error-class, cw-failed-at, cw-handler,
 * cw-worker, cw-queue and cw-attempt (= info->attempts), and
 * cw-original-exchange / cw-original-routing-key unless already set (the
 * task's first place is kept). Without it, the copy is the original's twin
 * (its failure headers kept), with cw-original-exchange /
 * cw-original-routing-key added the same way: a twin deferred through the
 * delay topology comes back with the topology's exchange and routing key,
 * and a later retry or dead-letter must still name the task's first place.
 * The broker's x-death headers are never copied. The caller waits for the
 * confirm with cw__publisher_wait(). */
int cw__publish_copy(cw_publisher *p, const char *exchange, const char *routing_key,
                     const amqp_envelope_t *env, const cw_deadletter_info *info, int64_t now_ms);

/* cw__publish_copy() to the dead-letter exchange, routed to `dlq`. */
int cw__dlq_publish(cw_publisher *p, const char *dlq, const amqp_envelope_t *env,
                    const cw_deadletter_info *info, int64_t now_ms);

/* True for a header a failure adds and a new attempt must not carry:
 * cw-error, cw-error-class, cw-failed-at, cw-handler, cw-worker, cw-queue,
 * cw-attempt, cw-crash-signal, cw-plugin. (cw-original-exchange and
 * cw-original-routing-key are kept: they name the task's first place.) */
bool cw__is_failure_header(amqp_bytes_t key);

#define CW_ISO8601_LEN 32

/* Formats ms since the epoch as "2026-11-24T21:50:03.123Z" (UTC). */
void cw__iso8601(int64_t ms, char out[CW_ISO8601_LEN]);

#endif
