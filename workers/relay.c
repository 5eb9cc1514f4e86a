/* compworker relay: the outbox relay loop (workers/relay.h). */
#include <errno.h>
#include <json-c/json.h>
#include <libpq-fe.h>
#include <poll.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "compworker/client.h"
#include "dlq/alert.h"
#include "framework/broker.h"
#include "framework/clock.h"
#include "framework/error.h"
#include "framework/json_text.h"
#include "framework/log.h"
#include "framework/outbox.h"
#include "framework/owner.h"
#include "framework/pg.h"
#include "workers/cli.h"
#include "workers/http.h"
#include "workers/notify.h"
#include "workers/relay.h"
#include "workers/relay_private.h"

static volatile sig_atomic_t relay_stop;

static void on_stop(int sig)
{
    (void)sig;
    relay_stop = 1;
}

/* ---- PostgreSQL -------------------------------------------------------------- */

/* One line of what the server said, without the password. */
static void pg_why(relay *r, const PGresult *res, char *out, size_t cap)
{
    const char *msg = res ? PQresultErrorMessage(res) : NULL;
    if ((!msg || !*msg) && r->pg)
        msg = PQerrorMessage(r->pg);
    cw__pg_scrub_password(r->pg_password, msg && *msg ? msg : "no answer from the server", out,
                          cap);
}

static void pg_close(relay *r)
{
    if (r->pg)
        PQfinish(r->pg);
    r->pg = NULL;
    r->pg_listening = false;
    atomic_store(&r->pg_up, 0);
}

/* After a failed statement: drops the session when it is gone (the next
 * round reconnects) and logs; returns CW_STATUS_STORE_UNAVAILABLE or
 * CW_STATUS_STORE. Clears `res`. */
static int pg_failed(relay *r, PGresult *res, const char *op)
{
    char why[1024];
    pg_why(r, res, why, sizeof why);
    bool lost = cw__pg_lost(r->pg, res);
    PQclear(res);
    if (lost) {
        cw_log_warn(NULL, "relay %s: %s: the server is unreachable: %s", r->pg_label, op, why);
        pg_close(r);
        return CW_STATUS_STORE_UNAVAILABLE;
    }
    cw_log_error(NULL, "relay %s: %s: %s", r->pg_label, op, why);
    return CW_STATUS_STORE;
}

static int pg_exec(relay *r, const char *sql, const char *op)
{
    PGresult *res = r->pg ? PQexec(r->pg, sql) : NULL;
    ExecStatusType st = res ? PQresultStatus(res) : PGRES_FATAL_ERROR;
    if (st == PGRES_COMMAND_OK || st == PGRES_TUPLES_OK) {
        PQclear(res);
        return 0;
    }
    return pg_failed(r, res, op);
}

/* Connects and LISTENs; checks the table is there. CW_STATUS_CONFIG when
 * it never will work (refused, no table), STORE_UNAVAILABLE to wait out. */
static int pg_connect(relay *r)
{
    PGconn *conn = NULL;
    int rc = cw__pg_session_open(r->cfg->relay_url, r->pg_label, r->pg_password, r->app, "relay",
                                 "[relay] url", &conn);
    if (rc) {
        PQfinish(conn);
        return rc == CW_STATUS_STORE ? CW_STATUS_CONFIG : rc;
    }
    r->pg = conn;
    PGresult *res = PQexec(conn, r->sql.sql[CW_OB_EXISTS]);
    if (!res || PQresultStatus(res) != PGRES_TUPLES_OK) {
        rc = pg_failed(r, res, "looking for the outbox table");
        pg_close(r);
        return rc == CW_STATUS_STORE ? CW_STATUS_STORE_UNAVAILABLE : rc;
    }
    bool exists = PQntuples(res) == 1 && strcmp(PQgetvalue(res, 0, 0), "t") == 0;
    PQclear(res);
    if (!exists) {
        pg_close(r);
        return cw__error(CW_STATUS_CONFIG,
                         "relay %s: no table %s: create it with 'compworker relay init -c %s'",
                         r->pg_label, r->cfg->relay_table, r->cfg->path);
    }
    if ((rc = pg_exec(r, r->sql.sql[CW_OB_LISTEN], "listening for new rows"))) {
        pg_close(r);
        return rc == CW_STATUS_STORE ? CW_STATUS_STORE_UNAVAILABLE : rc;
    }
    r->pg_listening = true;
    atomic_store(&r->pg_up, 1);
    return 0;
}

/* ---- the broker --------------------------------------------------------------- */

static void broker_close(relay *r, bool graceful)
{
    if (r->pub_open)
        cw__publisher_free(&r->pub);
    r->pub_open = false;
    if (r->amqp)
        (graceful ? cw__broker_close : cw__broker_abort)(r->amqp);
    r->amqp = NULL;
    atomic_store(&r->broker_up, 0);
}

static void on_return(void *ctx, const amqp_basic_properties_t *props, const char *why)
{
    relay *r = ctx;
    /* The broker returns a message with its routing key in the reason:
     * the first row of this wave with that message ID and routing key that
     * has no reason yet is the one (returns come in publish order); failing
     * that, the first with that message ID. A return that matches no row
     * fails the wave: nothing of it may pass for delivered. */
    row *by_id = NULL;
    for (size_t i = 0; (props->_flags & AMQP_BASIC_MESSAGE_ID_FLAG) && i < r->n_rows; i++) {
        row *w = &r->rows[i];
        if (!w->published || w->wave != r->wave || w->reason[0] ||
            strlen(w->message_id) != props->message_id.len ||
            memcmp(w->message_id, props->message_id.bytes, props->message_id.len) != 0)
            continue;
        char key[300];
        snprintf(key, sizeof key, "(routing key '%s')", w->routing_key ? w->routing_key : w->type);
        if (strstr(why, key)) {
            by_id = w;
            break;
        }
        if (!by_id)
            by_id = w;
    }
    if (!by_id) {
        r->unmatched_returns++;
        return;
    }
    snprintf(by_id->reason, sizeof by_id->reason,
             "unroutable: the broker returned it from exchange '%s': %s (is a pool bound for it?)",
             r->cfg->exchange, why);
}

static int broker_connect(relay *r)
{
    char name[256];
    snprintf(name, sizeof name, "compworker relay %s %s", r->cfg->relay_table, r->self);
    int rc = cw__broker_connect_tls(&r->amqp, r->cfg->url, &r->cfg->tls, &r->broker_next,
                                    (int)(r->cfg->heartbeat_ms / 1000), name, r->broker,
                                    sizeof r->broker);
    if (rc)
        return rc;
    if ((rc = cw__publisher_open(&r->pub, r->amqp, RELAY_CH))) {
        broker_close(r, false);
        return rc;
    }
    r->pub_open = true;
    r->pub.on_return = on_return;
    r->pub.return_ctx = r;
    if ((rc = cw__exchange_declare(r->amqp, RELAY_CH, r->cfg->exchange))) {
        broker_close(r, false);
        return rc;
    }
    atomic_store(&r->broker_up, 1);
    return 0;
}

/* Reads what the broker sent while the relay waited (heartbeats; rabbitmq-c
 * sends ours when due while reading). False when the connection is gone. */
static bool broker_idle(relay *r)
{
    for (;;) {
        amqp_frame_t f;
        struct timeval zero = {0, 0};
        int st = amqp_simple_wait_frame_noblock(r->amqp, &f, &zero);
        if (st == AMQP_STATUS_TIMEOUT)
            return true;
        if (st != AMQP_STATUS_OK) {
            cw_log_warn(NULL, "relay: the broker connection to %s broke: %s", r->broker,
                        amqp_error_string2(st));
            return false;
        }
        if (f.frame_type == AMQP_FRAME_METHOD &&
            (f.payload.method.id == AMQP_CONNECTION_CLOSE_METHOD ||
             f.payload.method.id == AMQP_CHANNEL_CLOSE_METHOD)) {
            cw_log_warn(NULL, "relay: the broker %s closed the connection", r->broker);
            return false;
        }
        amqp_maybe_release_buffers(r->amqp);
    }
}

static void alert_failed(relay *r, const row *w)
{
    cw_log_error(NULL,
                 "relay: outbox row %s (message %s, type %s, saga %s) cannot be published: %s",
                 w->id, w->message_id ? w->message_id : "-", w->type, w->saga_id ? w->saga_id : "-",
                 w->reason);
    if (!r->alerter)
        return;
    cw_alert_event ev = {
        .message_id = w->message_id,
        .saga_id = w->saga_id,
        .type = w->type,
        .error_class = strncmp(w->reason, "unroutable", 10) == 0 ? "unroutable" : "invalid",
        .reason = w->reason,
        .queue = r->cfg->relay_table,
        .worker = r->self,
        .handler = "compworker relay",
    };
    cw_alerter_post(r->alerter, &ev);
}

/* Marks the rows sent (published, confirmed, not returned) or failed (with
 * their reasons, made valid UTF-8 by the array helpers), in the batch's
 * transaction. */
static int mark(relay *r, bool sent)
{
    cw_pg_buf ids = {0}, reasons = {0};
    cw__pg_buf_reset(&ids);
    cw__pg_buf_reset(&reasons);
    size_t n = 0;
    for (size_t i = 0; i < r->n_rows; i++) {
        const row *w = &r->rows[i];
        if (sent ? !(w->published && !w->reason[0]) : !w->reason[0])
            continue;
        cw__pg_array_int(&ids, atoll(w->id));
        cw__pg_array_text(&reasons, w->reason);
        n++;
    }
    const char *values[2] = {cw__pg_array_end(&ids), cw__pg_array_end(&reasons)};
    int rc = 0;
    if (!values[0] || !values[1]) {
        cw_log_error(NULL, "relay: out of memory marking rows");
        rc = CW_STATUS_NOMEM;
    } else if (n > 0) {
        PGresult *res = PQexecParams(r->pg, r->sql.sql[sent ? CW_OB_SENT : CW_OB_FAILED],
                                     sent ? 1 : 2, NULL, values, NULL, NULL, 0);
        if (res && PQresultStatus(res) == PGRES_COMMAND_OK)
            PQclear(res);
        else
            rc = pg_failed(r, res, sent ? "marking rows sent" : "marking rows failed");
    }
    cw__pg_buf_free(&ids);
    cw__pg_buf_free(&reasons);
    return rc;
}

/* ---- one round ---------------------------------------------------------------- */

static void rollback(relay *r)
{
    if (r->pg)
        pg_exec(r, "ROLLBACK", "rolling back");
}

/* The rows' indexes by saga, then id (rows without a saga first). */
static const row *sort_rows;
static int by_saga(const void *pa, const void *pb)
{
    const row *x = &sort_rows[*(const size_t *)pa], *y = &sort_rows[*(const size_t *)pb];
    int c = strcmp(x->saga_id ? x->saga_id : "", y->saga_id ? y->saga_id : "");
    if (c)
        return c;
    long long i = atoll(x->id), j = atoll(y->id);
    return (i > j) - (i < j);
}

/* Gives each row its wave: its place among the rows of its saga in this
 * batch (rows without a saga: 0). A saga's row of wave k+1 is published
 * only once its row of wave k is confirmed, so that a nack or an outage
 * never lets a saga's later task reach the queue before an earlier one.
 * Returns the last wave, or -1 when out of memory. */
static int assign_waves(relay *r)
{
    size_t n = r->n_rows;
    size_t *ix = malloc(n * sizeof *ix);
    if (!ix)
        return -1;
    for (size_t i = 0; i < n; i++)
        ix[i] = i;
    sort_rows = r->rows;
    qsort(ix, n, sizeof *ix, by_saga);
    int last = 0;
    for (size_t k = 0; k < n; k++) {
        row *w = &r->rows[ix[k]];
        const row *prev = k ? &r->rows[ix[k - 1]] : NULL;
        w->wave = w->saga_id && prev && prev->saga_id && strcmp(prev->saga_id, w->saga_id) == 0
                      ? prev->wave + 1
                      : 0;
        if (w->wave > last)
            last = w->wave;
    }
    free(ix);
    return last;
}

/* Publishes the rows of wave `wave` and waits for their confirms. 0, or
 * the error after which this wave's rows are left unconfirmed (not
 * published as far as the batch goes). */
static int publish_wave(relay *r, int wave)
{
    r->wave = wave;
    r->unmatched_returns = 0;
    size_t publishes = 0;
    int rc = 0;
    for (size_t i = 0; i < r->n_rows && rc == 0; i++) {
        row *w = &r->rows[i];
        if (w->wave != wave || w->reason[0])
            continue;
        rc = cw__publish_task(&r->pub, r->cfg->exchange, w->routing_key ? w->routing_key : w->type,
                              w->message_id, w->type, w->saga_id, w->body, w->body_len,
                              w->table.num_entries ? &w->table : NULL);
        if (rc == 0) {
            w->published = true;
            publishes++;
        }
    }
    if (rc == 0 && publishes > 0)
        rc = cw__publisher_wait(&r->pub, CW_CONFIRM_TIMEOUT_MS);
    if (rc == CW_STATUS_UNROUTABLE)
        rc = r->unmatched_returns
                 ? cw__error(CW_STATUS_UNROUTABLE, "the broker returned a message of no row")
                 : 0; /* the returned rows have their reason (on_return) */
    if (rc) {
        for (size_t i = 0; i < r->n_rows; i++) {
            if (r->rows[i].wave == wave && !r->rows[i].reason[0])
                r->rows[i].published = false;
        }
    }
    return rc;
}

/* Claims, publishes and marks one batch. Returns the rows claimed (0: none
 * pending that this relay may take), or -1 after an error (what was
 * confirmed before it is marked; the rest stays pending). */
static long round_once(relay *r)
{
    if (pg_exec(r, "BEGIN", "beginning a batch"))
        return -1;
    char limit[16], body_max[32];
    snprintf(limit, sizeof limit, "%u", r->cfg->relay_batch);
    snprintf(body_max, sizeof body_max, "%llu", (unsigned long long)r->cfg->max_body_size);
    const char *values[2] = {limit, body_max};
    PGresult *res = PQexecParams(r->pg, r->sql.sql[CW_OB_CLAIM], 2, NULL, values, NULL, NULL, 0);
    if (!res || PQresultStatus(res) != PGRES_TUPLES_OK) {
        pg_failed(r, res, "claiming rows");
        rollback(r);
        return -1;
    }
    size_t n = (size_t)PQntuples(res);
    if (n == 0) {
        PQclear(res);
        pg_exec(r, "COMMIT", "ending an empty claim");
        return 0;
    }
    if (n > r->cap_rows) {
        row *nr = realloc(r->rows, n * sizeof *nr);
        if (!nr) {
            PQclear(res);
            rollback(r);
            cw_log_error(NULL, "relay: out of memory holding a batch of %zu rows", n);
            return -1;
        }
        r->rows = nr;
        r->cap_rows = n;
    }
    r->n_rows = n;
    memset(r->rows, 0, n * sizeof *r->rows);
    for (size_t i = 0; i < n; i++) {
        row *w = &r->rows[i];
        int ri = (int)i;
#define COL(k) (PQgetisnull(res, ri, k) ? NULL : PQgetvalue(res, ri, k))
        w->id = COL(0);
        w->message_id = COL(1);
        w->type = COL(2);
        w->saga_id = COL(3);
        w->body = COL(4);
        w->body_len = (size_t)PQgetlength(res, ri, 4);
        w->body_kind = COL(5);
        w->routing_key = COL(6);
        w->headers = COL(7);
        w->headers_kind = COL(8);
        w->body_bytes = atoll(PQgetvalue(res, ri, 9));
        w->headers_bytes = PQgetisnull(res, ri, 10) ? 0 : atoll(PQgetvalue(res, ri, 10));
#undef COL
        cw__relay_row_check(r, w);
    }
    int last = assign_waves(r);
    int rc = last < 0 ? CW_STATUS_NOMEM : 0;
    for (int wave = 0; rc == 0 && wave <= last; wave++)
        rc = publish_wave(r, wave);
    if (rc) {
        cw_log_warn(NULL,
                    "relay: publishing a batch of %zu rows to %s failed; what was not confirmed "
                    "is published again (same message IDs): %s",
                    n, r->broker, rc == CW_STATUS_NOMEM ? "out of memory" : cw_error_last());
        atomic_fetch_add(&r->publish_errors, 1);
        if (rc != CW_STATUS_NACKED && rc != CW_STATUS_NOMEM)
            broker_close(r, false);
    }
    size_t failed = 0, sent = 0;
    for (size_t i = 0; i < n; i++) {
        if (r->rows[i].reason[0])
            failed++;
        else if (r->rows[i].published)
            sent++;
    }
    int mrc = 0;
    if (sent)
        mrc = mark(r, true);
    if (mrc == 0 && failed)
        mrc = mark(r, false);
    if (mrc == 0)
        mrc = pg_exec(r, "COMMIT", "committing a batch");
    if (mrc) {
        /* Published and confirmed, not marked: published again later, with
         * the same message IDs, which the pool skips. */
        cw_log_warn(NULL,
                    "relay: %zu rows were published but could not be marked sent; they will be "
                    "published again (same message IDs)",
                    sent);
        atomic_fetch_add(&r->publish_errors, 1);
        rollback(r);
        cw__relay_rows_release(r);
        PQclear(res);
        return -1;
    }
    atomic_fetch_add(&r->published, sent);
    if (sent)
        atomic_fetch_add(&r->batches, 1);
    if (failed) {
        atomic_fetch_add(&r->failures, failed);
        for (size_t i = 0; i < n; i++) {
            if (r->rows[i].reason[0])
                alert_failed(r, &r->rows[i]);
        }
    }
    cw_log_debug(NULL, "relay: published %zu rows, %zu failed", sent, failed);
    cw__relay_rows_release(r);
    PQclear(res);
    return rc ? -1 : (long)n;
}

/* ---- housekeeping ------------------------------------------------------------- */

static void stats(relay *r)
{
    PGresult *res = PQexec(r->pg, r->sql.sql[CW_OB_STATS]);
    if (!res || PQresultStatus(res) != PGRES_TUPLES_OK || PQntuples(res) != 1) {
        pg_failed(r, res, "counting pending rows");
        return;
    }
    atomic_store(&r->pending, atoll(PQgetvalue(res, 0, 0)));
    atomic_store(&r->oldest_ms,
                 PQgetisnull(res, 0, 1) ? 0 : (int64_t)(atof(PQgetvalue(res, 0, 1)) * 1000));
    atomic_store(&r->failed_rows, atoll(PQgetvalue(res, 0, 2)));
    PQclear(res);
}

/* Removes sent rows older than the retention, SWEEP_CHUNK at a time (each
 * DELETE its own short transaction, rows another session holds skipped),
 * for at most SWEEP_BUDGET_MS. */
static void sweep(relay *r)
{
    char ms[32], chunk[16];
    snprintf(ms, sizeof ms, "%lld", (long long)r->cfg->relay_retention_ms);
    snprintf(chunk, sizeof chunk, "%d", SWEEP_CHUNK);
    const char *values[2] = {ms, chunk};
    int64_t until = cw__mono_ms() + SWEEP_BUDGET_MS;
    while (r->pg && !relay_stop && cw__mono_ms() < until) {
        PGresult *res = PQexecParams(r->pg, r->sql.sql[CW_OB_SWEEP], 2, NULL, values, NULL, NULL,
                                     0);
        if (!res || PQresultStatus(res) != PGRES_COMMAND_OK) {
            pg_failed(r, res, "removing sent rows past the retention");
            return;
        }
        long gone = atol(PQcmdTuples(res));
        PQclear(res);
        atomic_fetch_add(&r->removed, (uint64_t)gone);
        if (gone < SWEEP_CHUNK)
            return;
    }
}

/* Waits up to `ms` for a notification on the table's channel (or anything
 * from the broker). True when rows may be waiting. */
static bool wait_for_rows(relay *r, int64_t ms)
{
    struct pollfd fds[2];
    int n = 0;
    int pg_fd = r->pg ? PQsocket(r->pg) : -1;
    if (pg_fd >= 0)
        fds[n++] = (struct pollfd){.fd = pg_fd, .events = POLLIN};
    int amqp_fd = r->amqp ? amqp_get_sockfd(r->amqp) : -1;
    if (amqp_fd >= 0)
        fds[n++] = (struct pollfd){.fd = amqp_fd, .events = POLLIN};
    /* Notifications libpq read during the last statements are waiting in
     * its queue, not on the socket. */
    bool queued = false;
    PGnotify *early;
    while (r->pg && (early = PQnotifies(r->pg))) {
        queued = true;
        PQfreemem(early);
    }
    if (queued)
        return true;
    ms = ms < 0 ? 0 : ms > WAIT_MAX_MS ? WAIT_MAX_MS : ms;
    int got = n ? poll(fds, (nfds_t)n, (int)ms) : 0;
    if (!n) {
        struct timespec ts = {ms / 1000, (ms % 1000) * 1000000L};
        nanosleep(&ts, NULL);
    }
    bool woke = false;
    if (got > 0 && pg_fd >= 0 && (fds[0].revents & (POLLIN | POLLERR | POLLHUP))) {
        if (!PQconsumeInput(r->pg)) {
            char why[512];
            pg_why(r, NULL, why, sizeof why);
            cw_log_warn(NULL, "relay %s: the session broke: %s", r->pg_label, why);
            pg_close(r);
            return true;
        }
        PGnotify *nt;
        while ((nt = PQnotifies(r->pg))) {
            woke = true;
            PQfreemem(nt);
        }
    }
    if (r->amqp && !broker_idle(r))
        broker_close(r, false);
    return woke;
}

static int64_t backoff_next(int64_t *b)
{
    *b = *b ? (*b * 2 > BACKOFF_MAX_MS ? BACKOFF_MAX_MS : *b * 2) : BACKOFF_MIN_MS;
    return *b;
}

/* Keeps both sides connected; false when one is not (yet). A setting that
 * can never work is returned in *fatal. */
static bool ensure_connected(relay *r, int *fatal, bool *fresh)
{
    int64_t now = cw__mono_ms();
    if (!r->pg && now >= r->pg_retry_at) {
        int rc = pg_connect(r);
        if (rc == CW_STATUS_CONFIG) {
            *fatal = rc;
            return false;
        }
        if (rc) {
            if (!r->pg_down_logged)
                cw_log_warn(NULL, "relay: %s; trying again", cw_error_last());
            r->pg_down_logged = true;
            r->pg_retry_at = now + backoff_next(&r->pg_backoff);
        } else {
            cw_log_info(NULL, "relay: listening on %s at %s", r->cfg->relay_table, r->pg_label);
            *fresh = true; /* what was committed meanwhile notified nobody */
            r->pg_down_logged = false;
            r->pg_backoff = 0;
        }
    }
    if (!r->amqp && now >= r->broker_retry_at) {
        int rc = broker_connect(r);
        if (rc) {
            if (!r->broker_down_logged)
                cw_log_warn(NULL, "relay: %s; trying again", cw_error_last());
            r->broker_down_logged = true;
            r->broker_retry_at = now + backoff_next(&r->broker_backoff);
        } else {
            cw_log_info(NULL, "relay: publishing to exchange '%s' on %s", r->cfg->exchange,
                        r->broker);
            r->broker_down_logged = false;
            r->broker_backoff = 0;
        }
    }
    return r->pg && r->amqp;
}

static void relay_free(relay *r)
{
    cw__relay_rows_release(r);
    free(r->rows);
    broker_close(r, true);
    pg_close(r);
    cw_alerter_free(r->alerter);
    cw__outbox_sql_free(&r->sql);
    free(r->pg_label);
    free(r->pg_password);
}

static int relay_setup(relay *r, const cw_config *cfg)
{
    memset(r, 0, sizeof *r);
    r->cfg = cfg;
    cw__owner_self(r->self, sizeof r->self);
    snprintf(r->app, sizeof r->app, "compworker relay %ld", (long)getpid());
    int rc = cw__outbox_sql_build(&r->sql, cfg->relay_table);
    if (rc == 0)
        rc = cw__pg_url_parse(cfg->relay_url, "[relay] url", &r->pg_label, &r->pg_password);
    return rc;
}

int cw_relay_main(const cw_config *cfg)
{
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = on_stop;
    sigemptyset(&sa.sa_mask);
    sigaction(SIGTERM, &sa, NULL);
    sigaction(SIGINT, &sa, NULL);
    cw__log_set_level(cfg->log_level);
    cw__log_set_format(cfg->log_format);

    relay r;
    int code = CW_EXIT_OK;
    struct MHD_Daemon *http = NULL;
    cw_http_site site;
    if (relay_setup(&r, cfg)) {
        cw_cli_fail(CW_EXIT_USAGE, "%s", cw_error_last());
        relay_free(&r);
        return CW_EXIT_USAGE;
    }
    cw__log_set_worker(r.self);
    cw__log_set_role("relay");
    atomic_store(&r.loop_ms, cw__mono_ms());
    /* The alerter first: it initialises libcurl before any other thread. */
    if (cfg->alert.command_argv || cfg->alert.webhook_url) {
        if (cw_alerter_new(&r.alerter, &cfg->alert) || cw_alerter_start(r.alerter)) {
            cw_log_warn(NULL, "relay: alerts are off: %s", cw_error_last());
            cw_alerter_free(r.alerter);
            r.alerter = NULL;
        }
    }
    cw__relay_http_site(&r, &site);
    if (cfg->relay_metrics_listen &&
        !(http = cw_http_start(cfg->relay_metrics_listen, "[relay] metrics_listen", &site))) {
        relay_free(&r);
        return CW_EXIT_USAGE;
    }

    int64_t next_stats = 0, next_sweep = 0, next_poll = 0, round_backoff = 0;
    bool more = true; /* rows may be waiting: claim before waiting */
    while (!relay_stop) {
        atomic_store(&r.loop_ms, cw__mono_ms());
        int fatal = 0;
        bool fresh = false;
        if (!ensure_connected(&r, &fatal, &fresh)) {
            if (fatal) {
                cw_log_error(NULL, "relay: %s", cw_error_last());
                code = CW_EXIT_USAGE;
                break;
            }
            int64_t at = r.pg ? r.broker_retry_at : r.pg_retry_at;
            if (r.pg && r.amqp == NULL && r.broker_retry_at < at)
                at = r.broker_retry_at;
            int64_t left = at - cw__mono_ms();
            wait_for_rows(&r, left < 10 ? 10 : left);
            more = true; /* notifications may have been missed */
            continue;
        }
        if (fresh)
            more = true;
        if (!atomic_load(&r.ready)) {
            atomic_store(&r.ready, 1);
            cw_notify_ready("relaying");
        }
        int64_t now = cw__mono_ms();
        /* Housekeeping on its own clock, however busy the table is. */
        if (r.pg && now >= next_stats) {
            stats(&r);
            next_stats = cw__mono_ms() + STATS_EVERY_MS;
        }
        if (r.pg && now >= next_sweep) {
            sweep(&r);
            /* Every minute, or sooner for a short retention. */
            int64_t every = cfg->relay_retention_ms / 2;
            every = every < 1000 ? 1000 : every > SWEEP_EVERY_MS ? SWEEP_EVERY_MS : every;
            next_sweep = cw__mono_ms() + every;
        }
        if (!r.pg || !r.amqp)
            continue;
        if (more || cw__mono_ms() >= next_poll) {
            long n = round_once(&r);
            next_poll = cw__mono_ms() + cfg->relay_poll_ms;
            if (n < 0) {
                /* Not in a tight loop: wait a while before the same rows
                 * again, longer while it keeps failing; the broker's
                 * heartbeats are read meanwhile. */
                int64_t until = cw__mono_ms() + backoff_next(&round_backoff);
                while (!relay_stop && r.pg && cw__mono_ms() < until)
                    wait_for_rows(&r, until - cw__mono_ms());
                more = true;
                continue;
            }
            round_backoff = 0;
            more = n >= (long)cfg->relay_batch;
            if (more)
                continue;
        }
        more = wait_for_rows(&r, next_poll - cw__mono_ms());
    }
    cw_notify_stopping();
    if (http)
        MHD_stop_daemon(http);
    relay_free(&r);
    return code;
}

static void quiet(void *arg, const char *message)
{
    (void)arg;
    (void)message;
}

/* For `relay check` and `relay init`: the relay's state and a session to
 * its database, or an exit code after one error line naming `cmd`. */
static int open_for(relay *r, const cw_config *cfg, const char *cmd)
{
    if (relay_setup(r, cfg)) {
        relay_free(r);
        return cw_cli_fail(CW_EXIT_USAGE, "%s", cw_error_last());
    }
    int rc = cw__pg_session_open(cfg->relay_url, r->pg_label, r->pg_password, r->app, "relay",
                                 "[relay] url", &r->pg);
    if (rc) {
        relay_free(r);
        return cw_cli_fail(rc == CW_STATUS_STORE_UNAVAILABLE ? CW_EXIT_FAILURE : CW_EXIT_USAGE,
                           "%s: %s", cmd, cw_error_last());
    }
    return CW_EXIT_OK;
}

int cw_relay_check(const cw_config *cfg)
{
    relay r;
    int rc = open_for(&r, cfg, "relay check");
    if (rc)
        return rc;
    PGresult *res = PQexec(r.pg, r.sql.sql[CW_OB_EXISTS]);
    bool ok = res && PQresultStatus(res) == PGRES_TUPLES_OK && PQntuples(res) == 1;
    bool exists = ok && strcmp(PQgetvalue(res, 0, 0), "t") == 0;
    char why[1024] = "";
    if (!ok)
        pg_why(&r, res, why, sizeof why);
    PQclear(res);
    int server = PQserverVersion(r.pg);
    int code = CW_EXIT_OK;
    if (!ok) {
        code = cw_cli_fail(CW_EXIT_FAILURE, "relay check: %s: %s", r.pg_label, why);
    } else {
        printf("; %s: valid\n", cfg->path);
        printf("; outbox: %s (PostgreSQL %d.%d): table %s %s\n", r.pg_label, server / 10000,
               server % 10000, cfg->relay_table,
               exists ? "is there" : "not created yet (compworker relay init -c FILE)");
        cw_cli_print_config(cfg);
        if (!exists)
            code = CW_EXIT_FAILURE;
    }
    relay_free(&r);
    return code;
}

int cw_relay_init(const cw_config *cfg)
{
    relay r;
    int rc = open_for(&r, cfg, "relay init");
    if (rc)
        return rc;
    PQsetNoticeProcessor(r.pg, quiet, NULL); /* "already exists, skipping" */
    PGresult *res = PQexec(r.pg, r.sql.sql[CW_OB_EXISTS]);
    bool existed = res && PQresultStatus(res) == PGRES_TUPLES_OK && PQntuples(res) == 1 &&
                   strcmp(PQgetvalue(res, 0, 0), "t") == 0;
    PQclear(res);
    char why[1024] = "";
    const char *steps[] = {"BEGIN", r.sql.sql[CW_OB_LOCK], r.sql.sql[CW_OB_CREATE], "COMMIT"};
    for (size_t i = 0; i < sizeof steps / sizeof *steps; i++) {
        res = PQexec(r.pg, steps[i]);
        ExecStatusType st = res ? PQresultStatus(res) : PGRES_FATAL_ERROR;
        if (st != PGRES_COMMAND_OK && st != PGRES_TUPLES_OK) {
            pg_why(&r, res, why, sizeof why);
            PQclear(res);
            break;
        }
        PQclear(res);
    }
    int code = CW_EXIT_OK;
    if (why[0])
        code = cw_cli_fail(CW_EXIT_FAILURE, "relay init: creating %s at %s: %s", cfg->relay_table,
                           r.pg_label, why);
    else
        printf("%s %s at %s (trigger %s_notify, channel %s)\n", existed ? "checked" : "created",
               cfg->relay_table, r.pg_label, r.sql.channel, r.sql.channel);
    relay_free(&r);
    return code;
}
