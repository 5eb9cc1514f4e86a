/* Internal to the alerter: its state and what its files share. dlq/alert.c
 * holds the queue, the rate limit, the JSON documents and the thread;
 * dlq/alert_command.c runs [alert] command (posix_spawn, the document on its
 * stdin, never a shell); dlq/alert_webhook.c posts to [alert] webhook
 * (libcurl). Everything here runs on the alerter's thread unless it says
 * otherwise. */
#ifndef CW_DLQ_ALERT_PRIVATE_H
#define CW_DLQ_ALERT_PRIVATE_H

#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include <curl/curl.h>

#include "dlq/alert.h"
#include "framework/log.h"

#define CW_ALERT_DEFAULT_TIMEOUT_MS 10000
#define CW_ALERT_MAX_TIMEOUT_MS (24 * 3600 * 1000LL)
#define CW_ALERT_CHECK_MS 1000 /* windows are checked at least this often */
#define CW_ALERT_BACKOFF_MS 250
#define CW_ALERT_BACKOFF_MAX_MS 8000
#define CW_ALERT_STDERR_KEEP 200
#define CW_ALERT_POLL_MS 10

/* One queued failure; its strings live in the same allocation. */
typedef struct alert_item {
    struct alert_item *next;
    cw_alert_event ev;
} alert_item;

/* A (type, error class) with an open rate-limit window (or held-back
 * overflow). Only open windows are kept. */
typedef struct alert_group {
    struct alert_group *next;
    char *type;         /* NULL allowed */
    char *error_class;  /* NULL allowed */
    int64_t window_end; /* monotonic ms */
    int64_t window_ms;
    unsigned long held;
    int64_t first_held_at; /* ms since the epoch */
    int64_t last_held_at;
} alert_group;

typedef struct alert_callback {
    cw__alert_cb fn;
    void *user_data;
    char *owner;
} alert_callback;

struct cw_alerter {
    cw_alert_config cfg; /* deep copy */
    alert_callback *cbs;
    size_t n_cbs;

    /* Set before the thread starts, then read-only. */
    bool started;
    bool running; /* the thread exists */
    pthread_t thread;
    CURL *curl; /* the thread's */
    struct curl_slist *headers;
    char curl_err[CURL_ERROR_SIZE];
    char webhook_label[256]; /* scheme://host:port, nothing secret */

    /* Under `mu`. */
    pthread_mutex_t mu;
    pthread_cond_t cv; /* CLOCK_MONOTONIC: work queued, stop asked */
    alert_item *head, *tail;
    size_t queued;
    alert_group *groups;
    bool stop;
    bool finished;               /* the thread left its loop */
    bool abandoned;              /* cw_alerter_free() gave up: the thread frees */
    bool overflowing;            /* in an overflow episode */
    unsigned long overflow_held; /* held back in this episode */
    unsigned long lost;          /* not even counted (out of memory) */

    /* Monotonic ms past which the thread stops working; INT64_MAX until
     * cw_alerter_free(). Read without the lock by the hooks. */
    _Atomic int64_t deadline;
};

/* The smaller of two. */
int64_t cw__alert_min64(int64_t a, int64_t b);

/* Whether the shutdown deadline has passed (any thread). */
bool cw__alert_past_deadline(cw_alerter *a);

/* Waits on the condition variable until `until_ms` (monotonic) or a signal;
 * with `mu` held. */
void cw__alert_wait_locked(cw_alerter *a, int64_t until_ms);

/* Sleeps `ms`, cut short by the shutdown deadline. */
void cw__alert_sleep_ms(cw_alerter *a, int64_t ms);

/* Runs [alert] command with `json` on its stdin, within the timeout and
 * the shutdown deadline; logs what it did about `task`. */
void cw__alert_run_command(cw_alerter *a, const char *json, const cw_log_task *task);

/* Prepares the thread's libcurl handle for [alert] webhook (before the
 * thread starts). 0, or a status with the reason. */
int cw__alert_webhook_setup(cw_alerter *a);

/* POSTs `json` to [alert] webhook, trying again on transient failures;
 * logs what it did about `task`. */
void cw__alert_run_webhook(cw_alerter *a, const char *json, const cw_log_task *task);

#endif
