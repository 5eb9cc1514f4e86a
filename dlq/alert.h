/* Internal: alert hooks, run for every dead-lettered task off the consume path.
 *
 * One cw_alerter per worker process. The consume path calls
 * cw_alerter_post(), which copies the failure into a bounded queue and
 * returns at once; one background thread takes the failures in order,
 * applies the rate limit and runs every hook with a JSON document:
 *
 *   {"message_id":"m-1","saga_id":"s-1","type":"payment.refund",
 *    "error_class":"exhausted","reason":"gateway timeout","attempts":5,
 *    "queue":"cw.payments","failed_at":"2026-11-24T21:50:03.123Z",
 *    "worker":"host:1234","handler":"refund 1.2.0 (payment.refund)"}
 *
 * (one line, keys in this order; a missing string is JSON null; strings are
 * made valid UTF-8, an invalid byte becoming U+FFFD; failed_at is UTC with
 * milliseconds). With a rate limit, at most one document per (type, error
 * class) goes out per window (the window opens with the alert that is sent);
 * at the end of a window in which some were held back (checked at least once
 * a second), one digest goes out for them:
 *
 *   {"digest":true,"type":"payment.refund","error_class":"exhausted",
 *    "held_back":4,"window_ms":60000,"first_held_at":"2026-11-24T21:50:03.200Z",
 *    "last_held_at":"2026-11-24T21:50:41.007Z"}
 *
 * Failures held back because the queue was full are counted the same way;
 * without a rate limit their digest goes out CW_ALERT_OVERFLOW_WINDOW_MS
 * after the first of them (window_ms says which). At cw_alerter_free(),
 * pending digests go out at once.
 *
 * The hooks, in this order, each independent of the others' failures:
 *   - the C callbacks registered with cw_alerter_add_callback(), in order;
 *   - [alert] command: posix_spawn (never a shell) with the document on
 *     stdin, stdout to /dev/null, the first 200 bytes of stderr kept for the
 *     log line, the environment PATH=/usr/bin:/bin and CW_ALERT=1 only, no
 *     inherited descriptor past stderr, default signal dispositions, in a
 *     process group of its own that is SIGKILLed past the timeout (the
 *     daemon must not reap children it did not start with waitpid(-1));
 *   - [alert] webhook: an HTTP POST (libcurl, Content-Type
 *     application/json, redirects not followed), retried on connection
 *     errors, timeouts, 5xx and 429 with a backoff of 250 ms, 500 ms, 1 s...
 *     (at most 8 s), each try limited to the timeout; a 2xx is success;
 * A failing hook is logged at warn with the message ID and the hook (a
 * webhook by scheme, host and port only: its user information, path and
 * query may hold secrets). */
#ifndef CW_DLQ_ALERT_H
#define CW_DLQ_ALERT_H

#include <stdbool.h>
#include <stdint.h>

#include "framework/config.h"

/* The most failures waiting for the alerter thread; past it cw_alerter_post()
 * counts them as held back for the next digest. */
#define CW_ALERT_QUEUE_MAX 10000
/* The digest window of queue overflow when there is no rate limit. */
#define CW_ALERT_OVERFLOW_WINDOW_MS 1000

/* One failure. Every string may be NULL; all are borrowed for the duration
 * of cw_alerter_post() only. */
typedef struct cw_alert_event {
    const char *message_id;
    const char *saga_id;
    const char *type;
    const char *error_class; /* "invalid", "permanent", "exhausted", "poison" */
    const char *reason;
    const char *queue;
    const char *worker;
    const char *handler;
    unsigned attempts;
    int64_t failed_at_ms; /* ms since the epoch; 0 = the time of the post */
} cw_alert_event;

/* A C alert hook. `json` is the document (one line, NUL-terminated), borrowed
 * until the callback returns. It is called from the alerter thread, never
 * from the thread that runs handlers: a plugin's alert callback must be
 * thread-safe with respect to the plugin's own handlers (and take no lock a
 * handler may hold across a dead-letter). It should return promptly: while it
 * runs, the other hooks and later alerts wait (the consume path does not). */
typedef void (*cw__alert_cb)(const char *json, void *user_data);

typedef struct cw_alerter cw_alerter;

/* Creates an alerter for `cfg` (copied; NULL or nothing configured is
 * allowed: then only callbacks can make it do something). A timeout_ms of 0
 * or less means 10 s. Nothing runs until cw_alerter_start(). Free with
 * cw_alerter_free(). Returns 0, CW_STATUS_NOMEM, or CW_STATUS_INVALID_ARG
 * (a command whose argv[0] is not an absolute path). */
int cw_alerter_new(cw_alerter **out, const cw_alert_config *cfg);

/* Registers a C hook. `owner_name` (copied; NULL allowed) names it in log
 * lines, e.g. the plugin's name. Only before cw_alerter_start(): returns
 * CW_STATUS_INVALID_ARG after it, CW_STATUS_NOMEM, or 0. */
int cw_alerter_add_callback(cw_alerter *a, cw__alert_cb fn, void *user_data,
                            const char *owner_name);

/* Starts the one alerter thread (with every signal blocked in it) when there
 * is a hook; with none it does nothing and cw_alerter_post() is a no-op.
 * With a webhook it first calls curl_global_init() once per process: call
 * cw_alerter_start() from the main thread before other threads use libcurl
 * or OpenSSL (curl_global_cleanup() is never called). Returns 0,
 * CW_STATUS_INVALID_ARG (already started), CW_STATUS_NOMEM or CW_STATUS_IO. */
int cw_alerter_start(cw_alerter *a);

/* Queues one failure and returns without waiting for I/O or a hook: the event
 * is copied under a mutex. With CW_ALERT_QUEUE_MAX failures already waiting,
 * it is counted as held back for its (type, error class) and reported in a
 * digest instead (a warning is logged once per such episode). Thread-safe;
 * not to be called concurrently with or after cw_alerter_free(). A no-op
 * when `a` is NULL or has no hook or was not started. */
void cw_alerter_post(cw_alerter *a, const cw_alert_event *ev);

/* Whether any hook is configured or registered. NULL has none. */
bool cw_alerter_has_hooks(const cw_alerter *a);

/* Stops the thread after it has delivered what is queued (and the digests of
 * what was held back), waiting at most 2 * timeout_ms in all: past that the
 * rest is dropped and logged, a running command is killed, a request
 * abandoned. A C callback cannot be interrupted: if one still runs when the
 * time is up, the thread is left to finish and free the alerter on its own.
 * Accepts NULL. Not safe to call concurrently with cw_alerter_post(). */
void cw_alerter_free(cw_alerter *a);

#endif
