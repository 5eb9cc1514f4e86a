/* Internal to the outbox relay: its state, and what its files share
 * (relay.c the loop, relay_row.c a row made a task, relay_http.c its
 * /metrics and /healthz). */
#ifndef CW_WORKERS_RELAY_PRIVATE_H
#define CW_WORKERS_RELAY_PRIVATE_H

#include <amqp.h>
#include <json-c/json.h>
#include <libpq-fe.h>
#include <microhttpd.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "dlq/alert.h"
#include "framework/broker.h"
#include "framework/config.h"
#include "framework/outbox.h"
#include "framework/pg.h"
#include "workers/http.h"

#define RELAY_CH 1
#define STATS_EVERY_MS 2000
#define SWEEP_EVERY_MS 60000
#define SWEEP_CHUNK 1000
#define SWEEP_BUDGET_MS 2000
#define BACKOFF_MIN_MS 250
#define BACKOFF_MAX_MS 10000
#define WAIT_MAX_MS 5000 /* at least this often: broker heartbeats, the stop flag */
#define HEADERS_MAX 64   /* headers of one row */
#define HEADER_VALUE_MAX 65536
#define ROUTING_KEY_MAX 255
#define REASON_MAX 512

/* One claimed row; its strings point into the claim's result. */
typedef struct row {
    const char *id, *message_id, *type, *saga_id, *body, *body_kind, *routing_key, *headers,
        *headers_kind;
    size_t body_len;
    long long body_bytes, headers_bytes; /* as stored, when body/headers are NULL for size */
    amqp_table_t table;                  /* headers, built for the publish */
    json_object *headers_json;
    bool published;          /* sent and confirmed (or returned: then reason says so) */
    int wave;                /* its place among its saga's rows in the batch */
    char reason[REASON_MAX]; /* "" while it can be published */
} row;

typedef struct relay {
    const cw_config *cfg;
    cw_outbox_sql sql;
    char *pg_label, *pg_password;
    char app[96];
    PGconn *pg;
    bool pg_listening;
    amqp_connection_state_t amqp;
    unsigned broker_next;
    char broker[1024];
    cw_publisher pub;
    bool pub_open;
    cw_alerter *alerter;
    char self[128];

    row *rows;
    size_t n_rows, cap_rows;
    int wave;                   /* the wave being published */
    unsigned unmatched_returns; /* returns of this wave that matched no row */

    int64_t pg_retry_at, broker_retry_at, pg_backoff, broker_backoff;
    bool pg_down_logged, broker_down_logged;

    /* read by the HTTP thread */
    _Atomic int pg_up, broker_up, ready;
    _Atomic int64_t pending, oldest_ms, failed_rows, loop_ms;
    _Atomic uint64_t published, failures, publish_errors, removed, batches;
} relay;

/* The rows of the batch freed (their headers). */
void cw__relay_rows_release(relay *r);

/* Says in w->reason why the row cannot be published, or leaves it "" with
 * its headers built. */
void cw__relay_row_check(relay *r, row *w);

/* What the relay's /metrics, /healthz and / serve. */
void cw__relay_http_site(relay *r, cw_http_site *site);

#endif
