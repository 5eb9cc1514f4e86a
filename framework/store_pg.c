/* The PostgreSQL backend of the idempotency store: one store shared by every
 * worker of every host of a pool.
 *
 * The tables and the statements are in store_pg_sql.c; the connection, the
 * schema and the heartbeats in store_pg_conn.c. A worker's batch costs one
 * round trip to claim (a light commit: synchronous_commit off for that
 * transaction; the next durable commit makes it durable too, as the WAL is
 * written in order) and one to record its outcomes (a durable commit),
 * whatever its size: the batch travels as arrays.
 *
 * A claim held by another owner under an unexpired lease is busy while that
 * owner is alive: its heartbeat row is fresh (CW_PG_STALE_MS, by the
 * database's clock) and the database session that beats for it still
 * exists -- a killed worker's session ends with it, a lost host's heartbeat
 * goes stale. The owner_alive callback (this host's process table) may
 * declare an owner dead sooner. */
#include <errno.h>
#include <inttypes.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "framework/error.h"
#include "framework/log.h"
#include "framework/store_pg.h"

/* How often a statement that lost a deadlock or serialization race is run
 * again before the failure is reported. */
#define CW_PG_RETRIES 5
/* Rows a sweep examines per record it may remove (see store_sqlite.c). */
#define CW_PG_SWEEP_EXAMINE 8
/* The longest single text parameter (a reason) kept. */
#define CW_PG_TEXT_MAX 4096

static cw_pg_store *pg_of(cw_store *s)
{
    return (cw_pg_store *)s;
}

/* ---- parameters ------------------------------------------------------------ */

void cw__pg_followup_arrays(cw_pg_buf b[CW_PG_FOLLOWUP_ARRAYS], const cw_followup *f, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        cw__pg_array_text(&b[0], f[i].message_id);
        cw__pg_array_text(&b[1], f[i].saga_id);
        cw__pg_array_text(&b[2], f[i].type);
        cw__pg_array_text(&b[3], f[i].exchange);
        cw__pg_array_text(&b[4], f[i].routing_key);
        cw__pg_array_textn(&b[5], f[i].body, f[i].len);
        cw__pg_array_text(&b[6], f[i].headers);
    }
}

static int64_t col_i64(const PGresult *res, int row, int col)
{
    return PQgetisnull(res, row, col) ? 0 : strtoll(PQgetvalue(res, row, col), NULL, 10);
}

static unsigned col_uint(const PGresult *res, int row, int col)
{
    int64_t v = col_i64(res, row, col);
    return v < 0 ? 0 : v > UINT_MAX ? UINT_MAX : (unsigned)v;
}

static void col_text(char *dst, size_t size, const PGresult *res, int row, int col)
{
    const char *v = PQgetisnull(res, row, col) ? NULL : PQgetvalue(res, row, col);
    cw__store_copy_text(dst, size, v, v ? (size_t)PQgetlength(res, row, col) : 0);
}

/* Runs a statement that returns rows (`want` = PGRES_TUPLES_OK) or not
 * (PGRES_COMMAND_OK), again after a lost deadlock or serialization race
 * when it runs alone (outside a batch: nothing before it to lose). *res
 * holds the result on success (PQclear it). */
static int run(cw_pg_store *q, int stmt, int nparams, const char *const *values,
               ExecStatusType want, const char *op, PGresult **res)
{
    int rc = cw__pg_ready(q);
    if (rc)
        return rc;
    for (int attempt = 0;; attempt++) {
        *res = cw__pg_exec(q, stmt, nparams, values);
        if (*res && PQresultStatus(*res) == want)
            return 0;
        if (!q->in_batch && attempt + 1 < CW_PG_RETRIES && cw__pg_retryable(*res)) {
            PQclear(*res);
            continue;
        }
        /* In a batch the transaction is now aborted: its commit fails. */
        rc = cw__pg_fail(q, *res, op);
        *res = NULL;
        return rc;
    }
}

/* ---- transactions ------------------------------------------------------------ */

static int pg_begin(cw_store *s, bool durable)
{
    cw_pg_store *q = pg_of(s);
    if (q->in_batch)
        return cw__error(CW_STATUS_STORE, "store %s: begin: a batch is already open", q->label);
    int rc = cw__pg_ready(q);
    if (rc)
        return rc;
    /* A light batch need not survive a power cut (see cw_store_begin). */
    rc = cw__pg_command(q, durable ? "BEGIN" : "BEGIN; SET LOCAL synchronous_commit = off",
                        "begin");
    if (rc == 0)
        q->in_batch = true;
    return rc;
}

static int pg_commit(cw_store *s)
{
    cw_pg_store *q = pg_of(s);
    if (!q->in_batch || !q->conn)
        return cw__error(CW_STATUS_STORE, "store %s: commit: no batch is open", q->label);
    PGresult *res = PQexec(q->conn, "COMMIT");
    q->in_batch = false;
    if (!res || PQresultStatus(res) != PGRES_COMMAND_OK)
        return cw__pg_fail(q, res, "commit");
    /* A transaction that failed half-way answers COMMIT with ROLLBACK. */
    bool committed = strcmp(PQcmdStatus(res), "COMMIT") == 0;
    PQclear(res);
    if (!committed)
        return cw__error(CW_STATUS_STORE,
                         "store %s: commit: the batch failed earlier and was rolled back",
                         q->label);
    return 0;
}

static int pg_rollback(cw_store *s)
{
    cw_pg_store *q = pg_of(s);
    if (!q->in_batch)
        return 0;
    q->in_batch = false;
    if (!q->conn || q->lost)
        return 0; /* the server dropped the transaction with the connection */
    return cw__pg_command(q, "ROLLBACK", "rollback");
}

/* ---- claim, settle, release ----------------------------------------------------- */

/* Takes over the BUSY claims among out[] whose owner this host knows to be
 * dead (owner_alive), if that owner still holds them. */
static int take_dead(cw_pg_store *q, const cw_claim_req *reqs, size_t n, int64_t now_ms, bool light,
                     cw_claim *out)
{
    cw_pg_buf ids = {0}, owners = {0};
    cw__pg_buf_reset(&ids);
    cw__pg_buf_reset(&owners);
    size_t dead = 0;
    for (size_t i = 0; i < n; i++) {
        if (out[i].result != CW_CLAIM_BUSY || !out[i].owner[0])
            continue;
        if (q->base.owner_alive(out[i].owner, q->base.owner_alive_data))
            continue;
        cw__pg_array_text(&ids, reqs[i].message_id);
        cw__pg_array_text(&owners, out[i].owner);
        dead++;
    }
    int rc = 0;
    const char *a = cw__pg_array_end(&ids), *b = cw__pg_array_end(&owners);
    if (dead == 0)
        goto out_free;
    if (!a || !b) {
        rc = cw__error(CW_STATUS_NOMEM, "store %s: claim: out of memory", q->label);
        goto out_free;
    }
    char lease[24], now[24];
    snprintf(lease, sizeof lease, "%" PRId64,
             now_ms > INT64_MAX - q->base.lease_ms ? INT64_MAX : now_ms + q->base.lease_ms);
    snprintf(now, sizeof now, "%" PRId64, now_ms);
    const char *values[6] = {a, b, q->base.owner, lease, now, light ? "t" : "f"};
    PGresult *res;
    if ((rc = run(q, CW_PG_TAKE, 6, values, PGRES_TUPLES_OK, "claim", &res)))
        goto out_free;
    for (int r = 0; r < PQntuples(res); r++) {
        const char *mid = PQgetvalue(res, r, 0);
        for (size_t i = 0; i < n; i++) {
            if (out[i].result == CW_CLAIM_BUSY && strcmp(reqs[i].message_id, mid) == 0) {
                out[i].result = CW_CLAIM_NEW;
                out[i].ticket = col_i64(res, r, 1);
                out[i].attempts = col_uint(res, r, 2);
                out[i].deliveries = col_uint(res, r, 3);
                out[i].owner[0] = '\0';
                break;
            }
        }
    }
    PQclear(res);
out_free:
    cw__pg_buf_free(&ids);
    cw__pg_buf_free(&owners);
    return rc;
}

static int claim_rows(cw_pg_store *q, const cw_claim_req *reqs, size_t n, int64_t now_ms,
                      bool light, cw_claim *out)
{
    cw_pg_buf ids = {0}, sagas = {0}, types = {0};
    cw__pg_buf_reset(&ids);
    cw__pg_buf_reset(&sagas);
    cw__pg_buf_reset(&types);
    for (size_t i = 0; i < n; i++) {
        cw__pg_array_text(&ids, reqs[i].message_id);
        cw__pg_array_text(&sagas, reqs[i].saga_id && *reqs[i].saga_id ? reqs[i].saga_id : NULL);
        cw__pg_array_text(&types, reqs[i].type && *reqs[i].type ? reqs[i].type : NULL);
    }
    const char *a = cw__pg_array_end(&ids), *b = cw__pg_array_end(&sagas),
               *c = cw__pg_array_end(&types);
    int rc;
    if (!a || !b || !c) {
        rc = cw__error(CW_STATUS_NOMEM, "store %s: claim: out of memory", q->label);
        goto out_free;
    }
    char lease[24], now[24], stale[16];
    snprintf(lease, sizeof lease, "%" PRId64,
             now_ms > INT64_MAX - q->base.lease_ms ? INT64_MAX : now_ms + q->base.lease_ms);
    snprintf(now, sizeof now, "%" PRId64, now_ms);
    snprintf(stale, sizeof stale, "%d", CW_PG_STALE_MS);
    const char *values[8] = {a, b, c, q->base.owner, lease, now, stale, light ? "t" : "f"};
    PGresult *res;
    if ((rc = run(q, CW_PG_CLAIM, 8, values, PGRES_TUPLES_OK, "claim", &res)))
        goto out_free;
    if ((size_t)PQntuples(res) != n) {
        int got = PQntuples(res);
        PQclear(res);
        rc = cw__error(CW_STATUS_STORE, "store %s: claim: %d answers to %zu requests", q->label,
                       got, n);
        goto out_free;
    }
    bool busy = false;
    for (size_t i = 0; i < n; i++) {
        cw_claim *o = &out[i];
        memset(o, 0, sizeof *o);
        o->result = (cw_claim_result)col_i64(res, (int)i, 1);
        o->ticket = col_i64(res, (int)i, 2);
        o->fresh = PQgetvalue(res, (int)i, 3)[0] == 't';
        o->attempts = col_uint(res, (int)i, 4);
        o->deliveries = col_uint(res, (int)i, 5);
        o->mine = PQgetvalue(res, (int)i, 7)[0] == 't';
        if (o->result == CW_CLAIM_BUSY) {
            col_text(o->owner, sizeof o->owner, res, (int)i, 6);
            o->ticket = 0;
            busy = true;
        }
    }
    PQclear(res);
    if (busy && q->base.owner_alive)
        rc = take_dead(q, reqs, n, now_ms, light, out);
out_free:
    cw__pg_buf_free(&ids);
    cw__pg_buf_free(&sagas);
    cw__pg_buf_free(&types);
    return rc;
}

static int pg_claim_batch(cw_store *s, const cw_claim_req *reqs, size_t n, int64_t now_ms,
                          cw_claim *out)
{
    cw_pg_store *q = pg_of(s);
    if (q->in_batch)
        return cw__error(CW_STATUS_INVALID_ARG, "store %s: claim batch: called inside a batch",
                         q->label);
    return claim_rows(q, reqs, n, now_ms, true, out);
}

static int pg_claim(cw_store *s, const cw_claim_req *req, int64_t now_ms, cw_claim *out)
{
    /* In a batch, the batch chose its durability; alone, it is durable. */
    return claim_rows(pg_of(s), req, 1, now_ms, false, out);
}

static int settle_rows(cw_pg_store *q, const cw_settle_req *reqs, size_t n, int64_t now_ms)
{
    /* the outcomes' six arrays, then the follow-ups' eight */
    cw_pg_buf b[14] = {{0}};
    for (int k = 0; k < 14; k++)
        cw__pg_buf_reset(&b[k]);
    for (size_t i = 0; i < n; i++) {
        const cw_settle_req *r = &reqs[i];
        cw__pg_array_int(&b[0], r->ticket > 0 ? r->ticket : 0);
        cw__pg_array_text(&b[1], r->message_id);
        cw__pg_array_int(&b[2], (long long)r->state);
        cw__pg_array_text(&b[3], r->outcome);
        cw__pg_array_text(&b[4], r->error_class);
        cw__pg_array_text(&b[5], r->reason);
        if (r->state != CW_STATE_DONE || !r->n_followups)
            continue;
        for (size_t k = 0; k < r->n_followups; k++)
            cw__pg_array_int(&b[6], r->ticket > 0 ? r->ticket : 0);
        cw__pg_followup_arrays(&b[7], r->followups, r->n_followups);
    }
    const char *values[16];
    int rc = 0;
    for (int k = 0; k < 14; k++) {
        if (!(values[k < 6 ? k : k + 2] = cw__pg_array_end(&b[k])))
            rc = cw__error(CW_STATUS_NOMEM, "store %s: settle: out of memory", q->label);
    }
    char now[24];
    snprintf(now, sizeof now, "%" PRId64, now_ms);
    values[6] = q->base.owner;
    values[7] = now;
    PGresult *res = NULL;
    if (rc == 0 && (rc = run(q, CW_PG_SETTLE, 16, values, PGRES_TUPLES_OK, "settle", &res)) == 0) {
        int64_t done = col_i64(res, 0, 0);
        PQclear(res);
        if (done < (int64_t)n) {
            /* Name one that is missing, as the SQLite backend does. */
            const char *missing = n == 1 ? reqs[0].message_id : "of the batch";
            rc = cw__error(CW_STATUS_NOT_FOUND, "store %s: settle: no record of message %s",
                           q->label, missing);
        }
    }
    for (int k = 0; k < 14; k++)
        cw__pg_buf_free(&b[k]);
    return rc;
}

static int pg_settle_batch(cw_store *s, const cw_settle_req *reqs, size_t n, int64_t now_ms)
{
    cw_pg_store *q = pg_of(s);
    if (q->in_batch)
        return cw__error(CW_STATUS_INVALID_ARG, "store %s: settle batch: called inside a batch",
                         q->label);
    return settle_rows(q, reqs, n, now_ms);
}

static int pg_settle(cw_store *s, const cw_settle_req *req, int64_t now_ms)
{
    return settle_rows(pg_of(s), req, 1, now_ms);
}

static int pg_release(cw_store *s, const int64_t *tickets, size_t n)
{
    cw_pg_store *q = pg_of(s);
    cw_pg_buf b = {0};
    cw__pg_buf_reset(&b);
    for (size_t i = 0; i < n; i++)
        cw__pg_array_int(&b, tickets[i]);
    const char *values[2] = {cw__pg_array_end(&b), q->base.owner};
    int rc;
    PGresult *res = NULL;
    if (!values[0])
        rc = cw__error(CW_STATUS_NOMEM, "store %s: release: out of memory", q->label);
    else if ((rc = run(q, CW_PG_RELEASE, 2, values, PGRES_COMMAND_OK, "release", &res)) == 0)
        PQclear(res);
    cw__pg_buf_free(&b);
    return rc;
}

/* ---- follow-up messages ------------------------------------------------------------ */

static char *pg_col_dup(const PGresult *res, int row, int col)
{
    return PQgetisnull(res, row, col) ? NULL : strdup(PQgetvalue(res, row, col));
}

static int pg_followups_due(cw_store *s, int64_t older_than_ms, int64_t now_ms, int64_t lease_ms,
                            cw_followup *out, size_t cap, size_t *n)
{
    cw_pg_store *q = pg_of(s);
    char before[24], now[24], until[24], limit[24];
    snprintf(before, sizeof before, "%" PRId64, older_than_ms);
    snprintf(now, sizeof now, "%" PRId64, now_ms);
    snprintf(until, sizeof until, "%" PRId64, now_ms + lease_ms);
    snprintf(limit, sizeof limit, "%zu", cap);
    const char *values[5] = {before, now, q->base.owner, until, limit};
    PGresult *res;
    int rc = run(q, CW_PG_FOLLOWUP_DUE, 5, values, PGRES_TUPLES_OK, "follow-ups", &res);
    if (rc)
        return rc;
    int rows = PQntuples(res);
    for (int i = 0; i < rows && *n < cap; i++) {
        cw_followup *f = &out[*n];
        memset(f, 0, sizeof *f);
        col_text(f->message_id, sizeof f->message_id, res, i, 1);
        f->saga_id = pg_col_dup(res, i, 2);
        f->type = pg_col_dup(res, i, 3);
        f->exchange = pg_col_dup(res, i, 4);
        f->routing_key = pg_col_dup(res, i, 5);
        f->len = (size_t)PQgetlength(res, i, 6);
        f->body = malloc(f->len ? f->len : 1);
        if (!f->type || !f->exchange || !f->routing_key || !f->body) {
            cw_followup_clear(f);
            rc = cw__error(CW_STATUS_NOMEM, "store %s: follow-ups: out of memory", q->label);
            break;
        }
        memcpy(f->body, PQgetvalue(res, i, 6), f->len);
        f->headers = pg_col_dup(res, i, 7);
        (*n)++;
    }
    PQclear(res);
    return rc;
}

static int pg_followups_done(cw_store *s, const char *const *message_ids, size_t n)
{
    cw_pg_store *q = pg_of(s);
    cw_pg_buf b = {0};
    cw__pg_buf_reset(&b);
    for (size_t i = 0; i < n; i++)
        cw__pg_array_text(&b, message_ids[i]);
    const char *values[1] = {cw__pg_array_end(&b)};
    int rc;
    PGresult *res = NULL;
    if (!values[0])
        rc = cw__error(CW_STATUS_NOMEM, "store %s: follow-ups: out of memory", q->label);
    else if ((rc = run(q, CW_PG_FOLLOWUP_DONE, 1, values, PGRES_COMMAND_OK, "follow-ups", &res)) ==
             0)
        PQclear(res);
    cw__pg_buf_free(&b);
    return rc;
}

/* ---- crash reports ------------------------------------------------------------- */

static int pg_note(cw_store *s, const char *message_id, const cw_attempt_record *a)
{
    cw_pg_store *q = pg_of(s);
    char at[24], reason[CW_PG_TEXT_MAX];
    snprintf(at, sizeof at, "%" PRId64, a->at_ms);
    const char *values[6] = {message_id,     at,
                             a->worker,      a->outcome,
                             a->error_class, cw__pg_text(reason, sizeof reason, a->reason)};
    PGresult *res;
    int rc = run(q, CW_PG_NOTE, 6, values, PGRES_TUPLES_OK, "note", &res);
    if (rc)
        return rc;
    int rows = PQntuples(res);
    PQclear(res);
    return rows ? 0
                : cw__error(CW_STATUS_NOT_FOUND, "store %s: note: no record of message %s",
                            q->label, message_id);
}

/* ---- reading ------------------------------------------------------------------- */

static int pg_get(cw_store *s, const char *message_id, cw_task_record *out)
{
    cw_pg_store *q = pg_of(s);
    const char *values[1] = {message_id};
    PGresult *res;
    int rc = run(q, CW_PG_GET, 1, values, PGRES_TUPLES_OK, "get", &res);
    if (rc)
        return rc;
    if (PQntuples(res) == 0) {
        PQclear(res);
        return cw__error(CW_STATUS_NOT_FOUND, "store %s: no record of message %s", q->label,
                         message_id);
    }
    cw__store_copy_text(out->message_id, sizeof out->message_id, message_id, SIZE_MAX);
    out->state = (cw_task_state)col_i64(res, 0, 0);
    col_text(out->owner, sizeof out->owner, res, 0, 1);
    out->lease_until_ms = col_i64(res, 0, 2);
    out->attempts = col_uint(res, 0, 3);
    out->deliveries = col_uint(res, 0, 4);
    col_text(out->saga_id, sizeof out->saga_id, res, 0, 5);
    col_text(out->type, sizeof out->type, res, 0, 6);
    out->first_seen_ms = col_i64(res, 0, 7);
    out->last_seen_ms = col_i64(res, 0, 8);
    col_text(out->error_class, sizeof out->error_class, res, 0, 9);
    col_text(out->last_error, sizeof out->last_error, res, 0, 10);
    PQclear(res);
    return 0;
}

static int pg_history(cw_store *s, const char *message_id,
                      int (*cb)(const cw_attempt_record *a, void *ud), void *ud)
{
    cw_pg_store *q = pg_of(s);
    const char *values[1] = {message_id};
    PGresult *res;
    int rc = run(q, CW_PG_HISTORY, 1, values, PGRES_TUPLES_OK, "history", &res);
    if (rc)
        return rc;
    /* The rows are read before the first callback: a callback may use the
     * store (the result is ours alone). */
    cw_attempt_record a;
    for (int r = 0; rc == 0 && r < PQntuples(res); r++) {
        memset(&a, 0, sizeof a);
        a.n = col_uint(res, r, 0);
        a.at_ms = col_i64(res, r, 1);
        col_text(a.worker, sizeof a.worker, res, r, 2);
        col_text(a.outcome, sizeof a.outcome, res, r, 3);
        col_text(a.error_class, sizeof a.error_class, res, r, 4);
        col_text(a.reason, sizeof a.reason, res, r, 5);
        rc = cb(&a, ud);
    }
    PQclear(res);
    if (rc)
        return rc;
    /* The applying attempt of a done task is the record itself. */
    if ((rc = run(q, CW_PG_HISTORY_DONE, 1, values, PGRES_TUPLES_OK, "history", &res)))
        return rc;
    if (PQntuples(res) > 0) {
        memset(&a, 0, sizeof a);
        a.n = col_uint(res, 0, 0);
        a.at_ms = col_i64(res, 0, 1);
        col_text(a.worker, sizeof a.worker, res, 0, 2);
        snprintf(a.outcome, sizeof a.outcome, "ok");
        rc = cb(&a, ud);
    }
    PQclear(res);
    return rc;
}

/* ---- replay --------------------------------------------------------------------- */

static int reopen_in(cw_pg_store *q, const cw_reopen_req *req, int64_t now_ms, cw_task_state *was)
{
    char now[24], stale[16], row[24];
    snprintf(now, sizeof now, "%" PRId64, now_ms);
    snprintf(stale, sizeof stale, "%d", CW_PG_STALE_MS);
    const char *sel[3] = {req->message_id, now, stale};
    PGresult *res;
    int rc = run(q, CW_PG_REOPEN_SELECT, 3, sel, PGRES_TUPLES_OK, "reopen", &res);
    if (rc)
        return rc;
    *was = CW_STATE_NONE;
    const char *saga = req->saga_id && *req->saga_id ? req->saga_id : NULL;
    const char *type = req->type && *req->type ? req->type : NULL;
    if (PQntuples(res) > 0) {
        snprintf(row, sizeof row, "%s", PQgetvalue(res, 0, 0));
        *was = (cw_task_state)col_i64(res, 0, 1);
        char owner[128];
        col_text(owner, sizeof owner, res, 0, 2);
        bool busy = PQgetvalue(res, 0, 4)[0] == 't' &&
                    (!q->base.owner_alive || q->base.owner_alive(owner, q->base.owner_alive_data));
        PQclear(res);
        if (*was == CW_STATE_DONE && !req->force)
            return cw__error(CW_STATUS_EXISTS,
                             "message %s was already applied (done in the store): replaying it "
                             "would apply it twice",
                             req->message_id);
        if (busy)
            return cw__error(CW_STATUS_EXISTS, "message %s is being handled by %s right now",
                             req->message_id, owner);
        const char *keep[1] = {row};
        if (*was == CW_STATE_DONE) {
            if ((rc = run(q, CW_PG_REOPEN_KEEP_DONE, 1, keep, PGRES_COMMAND_OK, "reopen", &res)))
                return rc;
            PQclear(res);
        }
        const char *upd[4] = {row, now, saga, type};
        if ((rc = run(q, CW_PG_REOPEN_UPDATE, 4, upd, PGRES_COMMAND_OK, "reopen", &res)))
            return rc;
        PQclear(res);
    } else {
        PQclear(res);
        const char *ins[4] = {req->message_id, saga, type, now};
        if ((rc = run(q, CW_PG_REOPEN_INSERT, 4, ins, PGRES_TUPLES_OK, "reopen", &res)))
            return rc;
        snprintf(row, sizeof row, "%s", PQgetvalue(res, 0, 0));
        PQclear(res);
    }
    char reason[CW_PG_TEXT_MAX];
    const char *hist[4] = {row, now, q->base.owner,
                           req->reason ? cw__pg_text(reason, sizeof reason, req->reason) : NULL};
    if ((rc = run(q, CW_PG_REOPEN_HISTORY, 4, hist, PGRES_COMMAND_OK, "reopen", &res)))
        return rc;
    PQclear(res);
    return 0;
}

static int pg_reopen(cw_store *s, const cw_reopen_req *req, int64_t now_ms, cw_task_state *was)
{
    cw_pg_store *q = pg_of(s);
    if (q->in_batch)
        return reopen_in(q, req, now_ms, was);
    int rc = pg_begin(s, true);
    if (rc)
        return rc;
    rc = reopen_in(q, req, now_ms, was);
    if (rc) {
        pg_rollback(s);
        return rc;
    }
    return pg_commit(s);
}

/* ---- expiry --------------------------------------------------------------------- */

/* One sweeper at a time across the pool (an advisory lock the others skip),
 * deleting at most `limit` records per call in a short transaction: no long
 * locks, no DELETE storm of every worker at once. */
static int pg_sweep(cw_store *s, int64_t done_before_ms, unsigned limit, unsigned *removed)
{
    cw_pg_store *q = pg_of(s);
    *removed = 0;
    if (q->in_batch)
        return cw__error(CW_STATUS_INVALID_ARG, "store %s: sweep: called inside a batch", q->label);
    if (limit == 0)
        return 0;
    int rc = pg_begin(s, true);
    if (rc)
        return rc;
    const char *lock[1] = {q->schema};
    PGresult *res;
    if ((rc = run(q, CW_PG_SWEEP_LOCK, 1, lock, PGRES_TUPLES_OK, "sweep", &res)))
        goto out_rollback;
    bool got = PQgetvalue(res, 0, 0)[0] == 't';
    int64_t after = col_i64(res, 0, 1);
    PQclear(res);
    if (!got)
        goto out_rollback; /* another worker sweeps now */

    char a[24], examine[24], cut[24], lim[24];
    snprintf(a, sizeof a, "%" PRId64, after);
    snprintf(examine, sizeof examine, "%llu", (unsigned long long)limit * CW_PG_SWEEP_EXAMINE);
    snprintf(cut, sizeof cut, "%" PRId64, done_before_ms);
    snprintf(lim, sizeof lim, "%u", limit);
    const char *scan[4] = {a, examine, cut, lim};
    if ((rc = run(q, CW_PG_SWEEP_SCAN, 4, scan, PGRES_TUPLES_OK, "sweep", &res)))
        goto out_rollback;
    bool young = !PQgetisnull(res, 0, 0);
    int64_t last = col_i64(res, 0, 1), examined = col_i64(res, 0, 2);
    char *victims = strdup(PQgetvalue(res, 0, 3));
    PQclear(res);
    if (!victims) {
        rc = cw__error(CW_STATUS_NOMEM, "store %s: sweep: out of memory", q->label);
        goto out_rollback;
    }
    /* The cursor: after the last victim when the chunk is full; back to the
     * start when the pass met the young rows or the table's end. */
    unsigned n = 0;
    int64_t last_victim = 0;
    for (char *p = victims + 1; *p && *p != '}';) {
        last_victim = strtoll(p, &p, 10);
        n++;
        if (*p == ',')
            p++;
    }
    int64_t cursor = n == limit                                                 ? last_victim
                     : young || examined < (int64_t)limit * CW_PG_SWEEP_EXAMINE ? 0
                                                                                : last;
    char cur[24];
    snprintf(cur, sizeof cur, "%" PRId64, cursor);
    const char *del[2] = {victims, cur};
    rc = run(q, CW_PG_SWEEP_DELETE, 2, del, PGRES_TUPLES_OK, "sweep", &res);
    free(victims);
    if (rc)
        goto out_rollback;
    int64_t gone = col_i64(res, 0, 0);
    PQclear(res);
    if ((rc = pg_commit(s)))
        return rc;
    *removed = (unsigned)gone;
    return 0;

out_rollback:
    pg_rollback(s);
    return rc;
}

/* ---- open and free -------------------------------------------------------------- */

static bool pg_reachable(cw_store *s)
{
    cw_pg_store *q = pg_of(s);
    return q->conn && !q->lost;
}

static void pg_free(cw_store *s)
{
    cw_pg_store *q = pg_of(s);
    cw__pg_beat_stop(q);
    /* A worker that stops says so: its claims are free at once. */
    if (q->conn && !q->lost) {
        if (q->in_batch)
            PQclear(PQexec(q->conn, "ROLLBACK"));
        const char *values[1] = {q->base.owner};
        PQclear(cw__pg_exec(q, CW_PG_UNREGISTER, 1, values));
    }
    cw__pg_close(q);
    free(q);
}

static const cw_store_ops cw_pg_ops = {
    .claim_batch = pg_claim_batch,
    .settle_batch = pg_settle_batch,
    .release = pg_release,
    .begin = pg_begin,
    .commit = pg_commit,
    .rollback = pg_rollback,
    .claim = pg_claim,
    .settle = pg_settle,
    .note = pg_note,
    .get = pg_get,
    .history = pg_history,
    .sweep = pg_sweep,
    .reopen = pg_reopen,
    .followups_due = pg_followups_due,
    .followups_done = pg_followups_done,
    .reachable = pg_reachable,
    .free = pg_free,
};

int cw__store_pg_open(cw_store **out, const cw_store_opts *opts)
{
    *out = NULL;
    if (!opts->url || !*opts->url)
        return cw__error(CW_STATUS_CONFIG, "[store] url: required with backend = postgresql");
    const size_t owner_max = sizeof((cw_claim *)NULL)->owner - 1;
    if (!opts->owner || !*opts->owner || strlen(opts->owner) > owner_max)
        return cw__error(CW_STATUS_CONFIG, "store: owner must be 1 to %zu bytes", owner_max);
    if (opts->lease_ms <= 0)
        return cw__error(CW_STATUS_CONFIG, "store: lease must be positive, not %lld ms",
                         (long long)opts->lease_ms);
    cw_pg_store *q = calloc(1, sizeof *q);
    if (!q)
        return cw__error(CW_STATUS_NOMEM, "store: out of memory");
    q->base.ops = &cw_pg_ops;
    q->base.lease_ms = opts->lease_ms;
    q->base.owner_alive = opts->owner_alive;
    q->base.owner_alive_data = opts->owner_alive_data;
    q->base.owner = strdup(opts->owner);
    int rc = q->base.owner ? cw__pg_open_conn(q, opts)
                           : cw__error(CW_STATUS_NOMEM, "store: out of memory");
    if (rc) {
        cw__pg_beat_stop(q);
        cw__pg_close(q);
        free(q);
        return rc;
    }
    *out = &q->base;
    return 0;
}
