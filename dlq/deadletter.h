/* Internal: publishing a failed task to its pool's dead-letter queue. */
#ifndef CW_DLQ_DEADLETTER_H
#define CW_DLQ_DEADLETTER_H

#include <amqp.h>
#include <stdint.h>

#include "framework/broker.h"

typedef struct cw_deadletter_info {
    const char *error_class; /* "invalid", "permanent", "exhausted", "poison" */
    const char *reason;
    const char *handler;     /* "refund 1.0.0 (payment.refund)" or NULL */
    const char *worker;
    const char *queue;       /* the pool queue the task failed in */
    unsigned attempts;       /* attempts made, this one included */
} cw_deadletter_info;

/* Publishes a copy of `env` (body and properties kept, persistent) to the
 * dead-letter exchange with routing key `dlq`, adding the failure headers
 * cw-error, cw-error-class, cw-failed-at, cw-handler, cw-worker,
 * cw-original-exchange, cw-original-routing-key, cw-queue and cw-attempt.
 * An existing cw-original-* header is kept (the task's first place). The
 * caller waits for the confirm with cw__publisher_wait(). */
int cw__dlq_publish(cw_publisher *p, const char *dlq, const amqp_envelope_t *env,
                    const cw_deadletter_info *info, int64_t now_ms);

#define CW_ISO8601_LEN 32

/* Formats ms since the epoch as "2026-11-24T21:50:03.123Z" (UTC). */
void cw__iso8601(int64_t ms, char out[CW_ISO8601_LEN]);

#endif
