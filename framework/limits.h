/* Internal: the limits and fixed intervals shared across modules, each
 * defined once. A limit that one file alone uses stays in that file. */
#ifndef CW_FRAMEWORK_LIMITS_H
#define CW_FRAMEWORK_LIMITS_H

#include <stdint.h>

/* The most levels of nesting a task body may have (the outermost object is
 * level 1): deeper bodies are refused before they can exhaust the stack. */
#define CW_JSON_MAX_DEPTH 64

/* How long a publisher waits for the broker's confirms of what it sent,
 * in milliseconds (a worker's republish, a replay, the client's publish). */
#define CW_CONFIRM_TIMEOUT_MS 30000

/* The longest reason a task failure carries (cw-error, the store, logs),
 * with its NUL. */
#define CW_REASON_MAX 1024

/* The most worker processes of one pool, and handler threads of a worker. */
#define CW_POOL_MAX_WORKERS 64
#define CW_POOL_MAX_CONCURRENCY 1024

/* Quorum pool queues carry x-delivery-limit = CW_DELIVERY_LIMIT_BACKSTOP, a
 * broker-side backstop for deliveries compworker never got to count (a
 * worker dying before its claim); max_deliveries must stay below it so that
 * compworker's poison verdict, with its metadata, always comes first. */
#define CW_DELIVERY_LIMIT_BACKSTOP 100

/* The defaults of [retry] (AWS Step Functions' retrier defaults are
 * 3 attempts, 1 s, 2.0; we allow more attempts for compensations). */
#define CW_RETRY_DEFAULT_MAX_ATTEMPTS 5u
#define CW_RETRY_DEFAULT_INTERVAL_MS INT64_C(1000)
#define CW_RETRY_DEFAULT_BACKOFF_RATE 2.0
#define CW_RETRY_DEFAULT_MAX_DELAY_MS (INT64_C(3600) * 1000)
#define CW_RETRY_DEFAULT_JITTER CW_JITTER_FULL
#define CW_RETRY_DEFAULT_MAX_DELIVERIES 5u

/* What the configuration accepts for a retry policy. */
#define CW_RETRY_MAX_ATTEMPTS_LIMIT 1000u
#define CW_RETRY_MAX_DELIVERIES_LIMIT 90u
#define CW_RETRY_BACKOFF_RATE_MAX 100.0

/* The delay topology's reach: 20 levels of power-of-two TTLs of 100 ms
 * units (retry/delay.h), so the longest delay is (2^20 - 1) x 100 ms,
 * about 29 h. */
#define CW_DELAY_LEVELS 20
#define CW_DELAY_UNIT_MS 100
#define CW_DELAY_MAX_UNITS ((INT64_C(1) << CW_DELAY_LEVELS) - 1)
#define CW_DELAY_MAX_MS (CW_DELAY_MAX_UNITS * CW_DELAY_UNIT_MS) /* 104857500 */

#endif
