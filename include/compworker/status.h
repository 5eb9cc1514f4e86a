/* compworker — status codes returned by library functions.
 *
 * Action functions return 0 (CW_STATUS_OK) or one of the negative codes
 * below. A handler's outcome (CW_OK, CW_RETRY, CW_FAIL in compworker.h) is a
 * different thing and never appears here. */
#ifndef COMPWORKER_STATUS_H
#define COMPWORKER_STATUS_H

#include "export.h"

#ifdef __cplusplus
extern "C" {
#endif

/* X(NAME, value, message) — the one list every status derives from. */
#define CW_STATUS_MAP(X)                                                                           \
    X(OK, 0, "success")                                                                            \
    X(NOMEM, -1, "out of memory")                                                                  \
    X(INVALID_ARG, -2, "invalid argument")                                                         \
    X(CONFIG, -3, "invalid configuration")                                                         \
    X(IO, -4, "input/output error")                                                                \
    X(EXISTS, -5, "already exists")                                                                \
    X(NOT_FOUND, -6, "not found")                                                                  \
    X(ABI_MISMATCH, -7, "plugin built for another ABI version")                                    \
    X(PLUGIN, -8, "plugin could not be loaded or initialised")                                     \
    X(CONNECTION, -9, "broker connection failed or was lost")                                      \
    X(BROKER_REFUSED, -10, "the broker refused the operation")                                     \
    X(NACKED, -11, "the broker did not confirm the publish (nack)")                                \
    X(UNROUTABLE, -12, "no queue is bound for the routing key")                                    \
    X(TIMEOUT, -13, "timed out")                                                                   \
    X(STORE, -14, "idempotency store error")                                                       \
    X(INVALID_MESSAGE, -15, "invalid message")                                                     \
    X(TOO_LARGE, -16, "size limit exceeded")                                                       \
    X(INTERRUPTED, -17, "interrupted by a signal")                                                 \
    X(STORE_UNAVAILABLE, -18, "the idempotency store cannot be reached")

/** Status codes. */
typedef enum cw_status {
#define CW__STATUS_ENUM(name, value, msg) CW_STATUS_##name = (value),
    CW_STATUS_MAP(CW__STATUS_ENUM)
#undef CW__STATUS_ENUM
} cw_status;

/** A static English message for a status code ("unknown status" for a value
 *  not in the list). Never NULL, never to be freed. Thread- and fork-safe. */
CW_EXTERN const char *cw_strerror(int status);

/** The symbolic name of a status code without its prefix, e.g. "NACKED"
 *  ("UNKNOWN" for a value not in the list). Static, never NULL. Thread-safe. */
CW_EXTERN const char *cw_status_name(int status);

/** A detailed message for the last error that a compworker function returned
 *  on this thread, e.g. "pool.ini:12: [broker] prefetch: '0' is not between 1
 *  and 65535". Borrowed: valid until the next compworker call on this thread.
 *  Returns "" when no error was recorded. Each thread has its own. */
CW_EXTERN const char *cw_error_last(void);

#ifdef __cplusplus
}
#endif
#endif
