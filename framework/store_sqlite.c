/* The SQLite backend of the idempotency store.
 *
 * One database with two tables: `tasks`, one row per message ID, and
 * `attempts`, the history of settled attempts. A file is shared by all the
 * workers of a host (WAL mode; BEGIN IMMEDIATE serializes writers, who wait
 * up to CW_SQ_BUSY_TIMEOUT_MS for each other); ":memory:" is a private
 * database of this store object.
 *
 * Every statement is prepared once at open and reset after each use, so a
 * claim or a settle parses nothing and allocates nothing. Strings are bound
 * with SQLITE_STATIC: they only need to live for the call.
 *
 * A store object is one connection: use it from one thread at a time, and
 * open it after fork(), never across one. */
#include <errno.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/types.h>
#include <time.h>

#include <sqlite3.h>

#include "framework/clock.h"
#include "framework/error.h"
#include "framework/log.h"
#include "framework/store.h"
#include "framework/store_sqlite.h"
#include "framework/store_sqlite_sql.h"

static cw_sq_store *sq_of(cw_store *s)
{
    return (cw_sq_store *)s;
}

int cw__sq_fail(const cw_sq_store *q, const char *op)
{
    return cw__error(CW_STATUS_STORE, "%s: %s: %s", q->path, op, sqlite3_errmsg(q->db));
}

static int sq_fail_reset(const cw_sq_store *q, sqlite3_stmt *st, const char *op)
{
    int rc = cw__sq_fail(q, op);
    sqlite3_reset(st);
    return rc;
}

/* Steps a statement that returns no rows, then resets it. */
static int sq_run(const cw_sq_store *q, sqlite3_stmt *st, const char *op)
{
    int rc = sqlite3_step(st) == SQLITE_DONE ? 0 : cw__sq_fail(q, op);
    sqlite3_reset(st);
    return rc;
}

static int sq_bind_text(sqlite3_stmt *st, int i, const char *s)
{
    /* A NULL pointer binds SQL NULL. */
    return sqlite3_bind_text(st, i, s, -1, SQLITE_STATIC);
}

static unsigned sq_uint(sqlite3_int64 v)
{
    return v < 0 ? 0 : v > UINT_MAX ? UINT_MAX : (unsigned)v;
}

static int64_t sq_add_sat(int64_t a, int64_t b)
{
    return (b > 0 && a > INT64_MAX - b) ? INT64_MAX : a + b;
}

/* Copies text column `col` into dst (NUL-terminated, "" for NULL), cut at a
 * UTF-8 character boundary when it does not fit. */
static void sq_copy_col(char *dst, size_t size, sqlite3_stmt *st, int col)
{
    const char *src = (const char *)sqlite3_column_text(st, col);
    cw__store_copy_text(dst, size, src, src ? (size_t)sqlite3_column_bytes(st, col) : 0);
}

/* ---- transactions ------------------------------------------------------ */

static void sq_rollback_quiet(cw_sq_store *q)
{
    /* SQLite rolls back by itself after some errors (disk full, I/O). */
    if (!sqlite3_get_autocommit(q->db)) {
        sqlite3_step(q->st[CW_SQ_ROLLBACK]);
        sqlite3_reset(q->st[CW_SQ_ROLLBACK]);
    }
}

static int sq_begin_as(cw_sq_store *q, bool durable);

/* Outside a batch, a claim or a settle runs in a transaction of its own. */
static int sq_enter(cw_sq_store *q, bool *own)
{
    *own = sqlite3_get_autocommit(q->db) != 0;
    return *own ? sq_begin_as(q, true) : 0;
}

static int sq_leave(cw_sq_store *q, bool own, int rc)
{
    if (!own)
        return rc;
    if (rc == 0) {
        rc = sq_run(q, q->st[CW_SQ_COMMIT], "commit");
        if (rc == 0)
            return 0;
    }
    sq_rollback_quiet(q);
    return rc;
}

/* A transaction that need not survive a power cut (claims: they only keep
 * other workers off a task, and a lost one costs a re-run of an unacked
 * task) skips the WAL fsync at commit; a durable one (outcomes, after which
 * deliveries are acked) does it, and with it makes the earlier light commits
 * durable too. In WAL mode `synchronous` may change between transactions. */
static int sq_begin_as(cw_sq_store *q, bool durable)
{
    bool full = durable && q->sync_full;
    if (full != q->synced_full) {
        int rc = sq_run(q, q->st[full ? CW_SQ_SYNC_FULL : CW_SQ_SYNC_NORMAL], "synchronous");
        if (rc)
            return rc;
        q->synced_full = full;
    }
    return sq_run(q, q->st[CW_SQ_BEGIN], "begin");
}

static int sq_begin(cw_store *s, bool durable)
{
    return sq_begin_as(sq_of(s), durable);
}

static int sq_commit(cw_store *s)
{
    cw_sq_store *q = sq_of(s);
    return sq_run(q, q->st[CW_SQ_COMMIT], "commit");
}

static int sq_rollback(cw_store *s)
{
    cw_sq_store *q = sq_of(s);
    if (sqlite3_get_autocommit(q->db))
        return 0; /* nothing to undo, or SQLite already undid it */
    return sq_run(q, q->st[CW_SQ_ROLLBACK], "rollback");
}

/* ---- claim and settle -------------------------------------------------- */

/* Whether another live owner holds the row under an unexpired lease. Called
 * with the select's row current: the owner_alive callback must not call back
 * into this store's claim. */
static bool sq_busy(const cw_sq_store *q, sqlite3_stmt *st, int64_t now_ms)
{
    const char *owner = (const char *)sqlite3_column_text(st, 1);
    if (!owner || strcmp(owner, q->base.owner) == 0)
        return false;
    if (sqlite3_column_int64(st, 2) <= now_ms)
        return false;
    return !q->base.owner_alive || q->base.owner_alive(owner, q->base.owner_alive_data);
}

static int sq_claim_existing(cw_sq_store *q, const cw_claim_req *req, int64_t now_ms,
                             int64_t lease_until, cw_claim *out)
{
    sqlite3_stmt *st = q->st[CW_SQ_CLAIM_SELECT];
    if (sq_bind_text(st, 1, req->message_id) != SQLITE_OK)
        return sq_fail_reset(q, st, "claim");
    int step = sqlite3_step(st);
    if (step != SQLITE_ROW) {
        int rc = step == SQLITE_DONE
                     ? cw__error(CW_STATUS_STORE, "%s: claim: record of %s vanished", q->path,
                                 req->message_id)
                     : cw__sq_fail(q, "claim");
        sqlite3_reset(st);
        return rc;
    }
    int state = sqlite3_column_int(st, 0);
    unsigned unsettled = sq_uint(sqlite3_column_int64(st, 4));
    out->attempts = sq_uint(sqlite3_column_int64(st, 3));
    out->ticket = sqlite3_column_int64(st, 5);
    out->deliveries = unsettled < UINT_MAX ? unsettled + 1 : UINT_MAX;
    if (state == CW_STATE_DONE) {
        out->result = CW_CLAIM_DONE;
    } else if (state == CW_STATE_DEAD) {
        out->result = CW_CLAIM_DEAD;
    } else if (state == CW_STATE_IN_PROGRESS && sq_busy(q, st, now_ms)) {
        /* Not recorded: deliveries reports what the store holds. */
        out->result = CW_CLAIM_BUSY;
        out->deliveries = unsettled;
        sq_copy_col(out->owner, sizeof out->owner, st, 1);
    } else {
        out->result = CW_CLAIM_NEW; /* retrying, expired, abandoned, or ours */
        const char *owner = (const char *)sqlite3_column_text(st, 1);
        out->mine = state == CW_STATE_IN_PROGRESS && owner && strcmp(owner, q->base.owner) == 0 &&
                    sqlite3_column_int64(st, 2) > now_ms;
    }
    sqlite3_reset(st);

    if (out->result == CW_CLAIM_BUSY)
        return 0;
    if (out->result == CW_CLAIM_NEW) {
        st = q->st[CW_SQ_CLAIM_TAKE];
        if (sq_bind_text(st, 1, req->message_id) != SQLITE_OK ||
            sq_bind_text(st, 2, q->base.owner) != SQLITE_OK ||
            sqlite3_bind_int64(st, 3, lease_until) != SQLITE_OK ||
            sqlite3_bind_int64(st, 4, now_ms) != SQLITE_OK ||
            sq_bind_text(st, 5, req->saga_id) != SQLITE_OK ||
            sq_bind_text(st, 6, req->type) != SQLITE_OK)
            return sq_fail_reset(q, st, "claim");
    } else {
        st = q->st[CW_SQ_CLAIM_BUMP];
        if (sq_bind_text(st, 1, req->message_id) != SQLITE_OK ||
            sqlite3_bind_int64(st, 2, now_ms) != SQLITE_OK ||
            sq_bind_text(st, 3, req->saga_id) != SQLITE_OK ||
            sq_bind_text(st, 4, req->type) != SQLITE_OK)
            return sq_fail_reset(q, st, "claim");
    }
    return sq_run(q, st, "claim");
}

static int sq_claim_in(cw_sq_store *q, const cw_claim_req *req, int64_t now_ms, cw_claim *out)
{
    int64_t lease_until = sq_add_sat(now_ms, q->base.lease_ms);
    sqlite3_stmt *st = q->st[CW_SQ_CLAIM_INSERT];

    out->result = CW_CLAIM_NEW;
    out->deliveries = 1;
    out->attempts = 0;
    out->owner[0] = '\0';
    out->ticket = 0;
    out->fresh = false;
    out->mine = false;

    /* First sight, the common case, costs one statement. */
    if (sq_bind_text(st, 1, req->message_id) != SQLITE_OK ||
        sq_bind_text(st, 2, q->base.owner) != SQLITE_OK ||
        sqlite3_bind_int64(st, 3, lease_until) != SQLITE_OK ||
        sq_bind_text(st, 4, req->saga_id) != SQLITE_OK ||
        sq_bind_text(st, 5, req->type) != SQLITE_OK ||
        sqlite3_bind_int64(st, 6, now_ms) != SQLITE_OK)
        return sq_fail_reset(q, st, "claim");
    int rc = sq_run(q, st, "claim");
    if (rc)
        return rc;
    if (sqlite3_changes(q->db) > 0) {
        out->ticket = sqlite3_last_insert_rowid(q->db);
        out->fresh = true;
        return 0;
    }
    return sq_claim_existing(q, req, now_ms, lease_until, out);
}

static int sq_claim(cw_store *s, const cw_claim_req *req, int64_t now_ms, cw_claim *out)
{
    cw_sq_store *q = sq_of(s);
    bool own;
    int rc = sq_enter(q, &own);
    if (rc)
        return rc;
    return sq_leave(q, own, sq_claim_in(q, req, now_ms, out));
}

static int sq_settle_in(cw_sq_store *q, const cw_settle_req *req, int64_t now_ms)
{
    bool by_id = req->ticket > 0;
    sqlite3_stmt *st = q->st[by_id ? CW_SQ_SETTLE_UPDATE_ID : CW_SQ_SETTLE_UPDATE];
    if ((by_id ? sqlite3_bind_int64(st, 1, req->ticket) : sq_bind_text(st, 1, req->message_id)) !=
            SQLITE_OK ||
        sqlite3_bind_int(st, 2, (int)req->state) != SQLITE_OK ||
        sqlite3_bind_int64(st, 3, now_ms) != SQLITE_OK ||
        sq_bind_text(st, 4, req->error_class) != SQLITE_OK ||
        sq_bind_text(st, 5, req->reason) != SQLITE_OK ||
        sq_bind_text(st, 6, q->base.owner) != SQLITE_OK)
        return sq_fail_reset(q, st, "settle");
    int rc = sq_run(q, st, "settle");
    if (rc)
        return rc;
    if (sqlite3_changes(q->db) == 0)
        return cw__error(CW_STATUS_NOT_FOUND, "%s: settle: no record of message %s", q->path,
                         req->message_id);
    /* The attempt that applied a task is the record itself (state done,
     * settled_at, owner): history() shows it without a row of its own, which
     * keeps the per-message path to one statement. Its follow-ups are
     * stored in the same commit. */
    if (req->state == CW_STATE_DONE) {
        for (size_t i = 0; i < req->n_followups && rc == 0; i++)
            rc = cw__sq_followup_insert(q->db, q->st[CW_SQ_FOLLOWUP_INSERT], &req->followups[i],
                                        req->ticket, now_ms, q->path);
        return rc;
    }

    st = q->st[by_id ? CW_SQ_SETTLE_HISTORY_ID : CW_SQ_SETTLE_HISTORY];
    if ((by_id ? sqlite3_bind_int64(st, 1, req->ticket) : sq_bind_text(st, 1, req->message_id)) !=
            SQLITE_OK ||
        sqlite3_bind_int64(st, 2, now_ms) != SQLITE_OK ||
        sq_bind_text(st, 3, q->base.owner) != SQLITE_OK ||
        sq_bind_text(st, 4, req->outcome) != SQLITE_OK ||
        sq_bind_text(st, 5, req->error_class) != SQLITE_OK ||
        sq_bind_text(st, 6, req->reason) != SQLITE_OK)
        return sq_fail_reset(q, st, "settle");
    return sq_run(q, st, "settle");
}

static int sq_settle(cw_store *s, const cw_settle_req *req, int64_t now_ms)
{
    cw_sq_store *q = sq_of(s);
    bool own;
    int rc = sq_enter(q, &own);
    if (rc)
        return rc;
    return sq_leave(q, own, sq_settle_in(q, req, now_ms));
}

/* The worker's batches: the same statements as one claim or settle at a
 * time, in one transaction (light for claims, durable for outcomes). */
static int sq_claim_batch(cw_store *s, const cw_claim_req *reqs, size_t n, int64_t now_ms,
                          cw_claim *out)
{
    cw_sq_store *q = sq_of(s);
    if (!sqlite3_get_autocommit(q->db))
        return cw__error(CW_STATUS_INVALID_ARG, "%s: claim batch: called inside a batch", q->path);
    int rc = sq_begin_as(q, false);
    for (size_t i = 0; rc == 0 && i < n; i++)
        rc = sq_claim_in(q, &reqs[i], now_ms, &out[i]);
    return sq_leave(q, true, rc);
}

/* How many requests from reqs[0] are done outcomes of claims with
 * consecutive tickets (1 when reqs[0] starts no such run). */
static size_t sq_done_run(const cw_settle_req *reqs, size_t n)
{
    if (reqs[0].state != CW_STATE_DONE || reqs[0].ticket <= 0)
        return 1;
    size_t k = 1;
    while (k < n && reqs[k].state == CW_STATE_DONE && reqs[k].ticket == reqs[k - 1].ticket + 1)
        k++;
    return k;
}

/* Records a run of done outcomes (sq_done_run) with one statement, and
 * their follow-ups: what sq_settle_in() does for each of them. Every row of
 * the range is one of the run's claims, so each must change. */
static int sq_settle_done_range(cw_sq_store *q, const cw_settle_req *reqs, size_t n, int64_t now_ms)
{
    sqlite3_stmt *st = q->st[CW_SQ_SETTLE_DONE_RANGE];
    if (sqlite3_bind_int64(st, 1, reqs[0].ticket) != SQLITE_OK ||
        sqlite3_bind_int64(st, 2, reqs[n - 1].ticket) != SQLITE_OK ||
        sqlite3_bind_int64(st, 3, now_ms) != SQLITE_OK ||
        sq_bind_text(st, 4, q->base.owner) != SQLITE_OK)
        return sq_fail_reset(q, st, "settle");
    int rc = sq_run(q, st, "settle");
    if (rc)
        return rc;
    if ((size_t)sqlite3_changes(q->db) != n)
        return cw__error(CW_STATUS_NOT_FOUND,
                         "%s: settle: no record of %zu of the %zu messages from %s to %s", q->path,
                         n - (size_t)sqlite3_changes(q->db), n, reqs[0].message_id,
                         reqs[n - 1].message_id);
    for (size_t i = 0; i < n && rc == 0; i++) {
        for (size_t f = 0; f < reqs[i].n_followups && rc == 0; f++)
            rc = cw__sq_followup_insert(q->db, q->st[CW_SQ_FOLLOWUP_INSERT], &reqs[i].followups[f],
                                        reqs[i].ticket, now_ms, q->path);
    }
    return rc;
}

/* The outcomes of a batch in one transaction: durable at commit, or light
 * (a worker's deferred durability). Done outcomes of claims made in a row
 * (the common case: a batch's new IDs) take one statement a run. */
static int sq_settle_all(cw_sq_store *q, const cw_settle_req *reqs, size_t n, int64_t now_ms,
                         bool durable)
{
    if (!sqlite3_get_autocommit(q->db))
        return cw__error(CW_STATUS_INVALID_ARG, "%s: settle batch: called inside a batch", q->path);
    int rc = sq_begin_as(q, durable);
    for (size_t i = 0; rc == 0 && i < n;) {
        size_t k = sq_done_run(&reqs[i], n - i);
        rc = k > 1 ? sq_settle_done_range(q, &reqs[i], k, now_ms)
                   : sq_settle_in(q, &reqs[i], now_ms);
        i += k;
    }
    return sq_leave(q, true, rc);
}

static int sq_settle_batch(cw_store *s, const cw_settle_req *reqs, size_t n, int64_t now_ms)
{
    return sq_settle_all(sq_of(s), reqs, n, now_ms, true);
}

/* As sq_settle_batch, committed lightly: the store's sync thread makes it
 * durable (store_sqlite_sync.c). */
static int sq_settle_deferred(cw_store *s, const cw_settle_req *reqs, size_t n, int64_t now_ms,
                              uint64_t *mark)
{
    cw_sq_store *q = sq_of(s);
    int rc = sq_settle_all(q, reqs, n, now_ms, false);
    if (rc == 0)
        *mark = cw__sq_sync_request(q);
    return rc;
}

static int sq_release(cw_store *s, const int64_t *tickets, size_t n)
{
    cw_sq_store *q = sq_of(s);
    bool own;
    int rc = sq_enter(q, &own);
    sqlite3_stmt *st = q->st[CW_SQ_RELEASE];
    for (size_t i = 0; rc == 0 && i < n; i++) {
        if (sqlite3_bind_int64(st, 1, tickets[i]) != SQLITE_OK ||
            sq_bind_text(st, 2, q->base.owner) != SQLITE_OK)
            rc = sq_fail_reset(q, st, "release");
        else
            rc = sq_run(q, st, "release");
    }
    return sq_leave(q, own, rc);
}

static int sq_note(cw_store *s, const char *message_id, const cw_attempt_record *a)
{
    cw_sq_store *q = sq_of(s);
    bool own;
    int rc = sq_enter(q, &own);
    if (rc)
        return rc;
    for (int i = CW_SQ_NOTE_UPDATE; i <= CW_SQ_NOTE_HISTORY && rc == 0; i++) {
        sqlite3_stmt *st = q->st[i];
        if (sq_bind_text(st, 1, message_id) != SQLITE_OK ||
            sqlite3_bind_int64(st, 2, a->at_ms) != SQLITE_OK ||
            sq_bind_text(st, 3, a->worker) != SQLITE_OK ||
            sq_bind_text(st, 4, a->outcome) != SQLITE_OK ||
            sq_bind_text(st, 5, a->error_class) != SQLITE_OK ||
            sq_bind_text(st, 6, a->reason) != SQLITE_OK) {
            rc = sq_fail_reset(q, st, "note");
            break;
        }
        rc = sq_run(q, st, "note");
        if (rc == 0 && i == CW_SQ_NOTE_UPDATE && sqlite3_changes(q->db) == 0)
            rc = cw__error(CW_STATUS_NOT_FOUND, "%s: note: no record of message %s", q->path,
                           message_id);
    }
    return sq_leave(q, own, rc);
}

/* ---- follow-up messages ---------------------------------------------------- */

int cw__sq_followup_insert(sqlite3 *db, sqlite3_stmt *st, const cw_followup *f, int64_t task_id,
                           int64_t now_ms, const char *where)
{
    int rc = 0;
    if (sqlite3_bind_text(st, 1, f->message_id, -1, SQLITE_STATIC) != SQLITE_OK ||
        sqlite3_bind_int64(st, 2, task_id) != SQLITE_OK ||
        sqlite3_bind_text(st, 3, f->saga_id, -1, SQLITE_STATIC) != SQLITE_OK ||
        sqlite3_bind_text(st, 4, f->type, -1, SQLITE_STATIC) != SQLITE_OK ||
        sqlite3_bind_text(st, 5, f->exchange, -1, SQLITE_STATIC) != SQLITE_OK ||
        sqlite3_bind_text(st, 6, f->routing_key, -1, SQLITE_STATIC) != SQLITE_OK ||
        sqlite3_bind_blob(st, 7, f->body, (int)f->len, SQLITE_STATIC) != SQLITE_OK ||
        sqlite3_bind_int64(st, 8, now_ms) != SQLITE_OK ||
        sqlite3_bind_text(st, 9, f->headers, -1, SQLITE_STATIC) != SQLITE_OK ||
        sqlite3_step(st) != SQLITE_DONE)
        rc = cw__error(CW_STATUS_STORE, "%s: storing a follow-up: %s", where, sqlite3_errmsg(db));
    sqlite3_reset(st);
    sqlite3_clear_bindings(st);
    return rc;
}

static char *sq_col_dup(sqlite3_stmt *st, int col)
{
    const char *v = (const char *)sqlite3_column_text(st, col);
    return v ? strdup(v) : NULL;
}

static int sq_followups_due(cw_store *s, int64_t older_than_ms, int64_t now_ms, int64_t lease_ms,
                            cw_followup *out, size_t cap, size_t *n)
{
    cw_sq_store *q = sq_of(s);
    *n = 0;
    if (!sqlite3_get_autocommit(q->db))
        return cw__error(CW_STATUS_INVALID_ARG, "%s: follow-ups: called inside a batch", q->path);
    int rc = sq_begin_as(q, false);
    if (rc)
        return rc;
    sqlite3_stmt *st = q->st[CW_SQ_FOLLOWUP_DUE];
    int64_t ids[64];
    if (cap > 64)
        cap = 64;
    if (sqlite3_bind_int64(st, 1, older_than_ms) != SQLITE_OK ||
        sqlite3_bind_int64(st, 2, now_ms) != SQLITE_OK ||
        sqlite3_bind_int64(st, 3, (sqlite3_int64)cap) != SQLITE_OK)
        rc = sq_fail_reset(q, st, "follow-ups");
    int step;
    while (rc == 0 && (step = sqlite3_step(st)) == SQLITE_ROW) {
        cw_followup *f = &out[*n];
        memset(f, 0, sizeof *f);
        ids[*n] = sqlite3_column_int64(st, 0);
        sq_copy_col(f->message_id, sizeof f->message_id, st, 1);
        f->saga_id = sq_col_dup(st, 2);
        f->type = sq_col_dup(st, 3);
        f->exchange = sq_col_dup(st, 4);
        f->routing_key = sq_col_dup(st, 5);
        f->len = (size_t)sqlite3_column_bytes(st, 6);
        f->body = malloc(f->len ? f->len : 1);
        if (!f->type || !f->exchange || !f->routing_key || !f->body) {
            cw_followup_clear(f);
            rc = cw__error(CW_STATUS_NOMEM, "%s: follow-ups: out of memory", q->path);
            break;
        }
        memcpy(f->body, sqlite3_column_blob(st, 6), f->len);
        f->headers = sq_col_dup(st, 7);
        (*n)++;
    }
    sqlite3_reset(st);
    st = q->st[CW_SQ_FOLLOWUP_TAKE];
    for (size_t i = 0; rc == 0 && i < *n; i++) {
        if (sqlite3_bind_int64(st, 1, ids[i]) != SQLITE_OK ||
            sq_bind_text(st, 2, q->base.owner) != SQLITE_OK ||
            sqlite3_bind_int64(st, 3, now_ms + lease_ms) != SQLITE_OK)
            rc = sq_fail_reset(q, st, "follow-ups");
        else
            rc = sq_run(q, st, "follow-ups");
    }
    rc = sq_leave(q, true, rc);
    if (rc) {
        for (size_t i = 0; i < *n; i++)
            cw_followup_clear(&out[i]);
        *n = 0;
    }
    return rc;
}

static int sq_followups_done(cw_store *s, const char *const *message_ids, size_t n)
{
    cw_sq_store *q = sq_of(s);
    bool own;
    int rc = sq_enter(q, &own);
    sqlite3_stmt *st = q->st[CW_SQ_FOLLOWUP_DELETE];
    for (size_t i = 0; rc == 0 && i < n; i++) {
        if (sq_bind_text(st, 1, message_ids[i]) != SQLITE_OK)
            rc = sq_fail_reset(q, st, "follow-ups");
        else
            rc = sq_run(q, st, "follow-ups");
    }
    return sq_leave(q, own, rc);
}

/* ---- replay ------------------------------------------------------------ */

static int sq_reopen_in(cw_sq_store *q, const cw_reopen_req *req, int64_t now_ms,
                        cw_task_state *was)
{
    sqlite3_stmt *st = q->st[CW_SQ_CLAIM_SELECT];
    *was = CW_STATE_NONE;
    if (sq_bind_text(st, 1, req->message_id) != SQLITE_OK)
        return sq_fail_reset(q, st, "reopen");
    int step = sqlite3_step(st);
    if (step != SQLITE_ROW && step != SQLITE_DONE)
        return sq_fail_reset(q, st, "reopen");
    int64_t row = 0;
    if (step == SQLITE_ROW) {
        *was = (cw_task_state)sqlite3_column_int(st, 0);
        row = sqlite3_column_int64(st, 5);
        bool busy = *was == CW_STATE_IN_PROGRESS && sq_busy(q, st, now_ms);
        char owner[128];
        sq_copy_col(owner, sizeof owner, st, 1);
        sqlite3_reset(st);
        if (*was == CW_STATE_DONE && !req->force)
            return cw__error(CW_STATUS_EXISTS,
                             "message %s was already applied (done in the store): replaying it "
                             "would apply it twice",
                             req->message_id);
        if (busy)
            return cw__error(CW_STATUS_EXISTS, "message %s is being handled by %s right now",
                             req->message_id, owner);
        if (*was == CW_STATE_DONE) {
            st = q->st[CW_SQ_REOPEN_KEEP_DONE];
            if (sqlite3_bind_int64(st, 1, row) != SQLITE_OK)
                return sq_fail_reset(q, st, "reopen");
            int rc = sq_run(q, st, "reopen");
            if (rc)
                return rc;
        }
        st = q->st[CW_SQ_REOPEN_UPDATE];
        if (sqlite3_bind_int64(st, 1, row) != SQLITE_OK ||
            sqlite3_bind_int64(st, 2, now_ms) != SQLITE_OK ||
            sq_bind_text(st, 3, req->saga_id) != SQLITE_OK ||
            sq_bind_text(st, 4, req->type) != SQLITE_OK)
            return sq_fail_reset(q, st, "reopen");
    } else {
        sqlite3_reset(st);
        st = q->st[CW_SQ_REOPEN_INSERT];
        if (sq_bind_text(st, 1, req->message_id) != SQLITE_OK ||
            sq_bind_text(st, 2, req->saga_id) != SQLITE_OK ||
            sq_bind_text(st, 3, req->type) != SQLITE_OK ||
            sqlite3_bind_int64(st, 4, now_ms) != SQLITE_OK)
            return sq_fail_reset(q, st, "reopen");
    }
    int rc = sq_run(q, st, "reopen");
    if (rc)
        return rc;
    if (row == 0)
        row = sqlite3_last_insert_rowid(q->db);

    st = q->st[CW_SQ_REOPEN_HISTORY];
    if (sqlite3_bind_int64(st, 1, row) != SQLITE_OK ||
        sqlite3_bind_int64(st, 2, now_ms) != SQLITE_OK ||
        sq_bind_text(st, 3, q->base.owner) != SQLITE_OK ||
        sq_bind_text(st, 4, req->reason) != SQLITE_OK)
        return sq_fail_reset(q, st, "reopen");
    return sq_run(q, st, "reopen");
}

static int sq_reopen(cw_store *s, const cw_reopen_req *req, int64_t now_ms, cw_task_state *was)
{
    cw_sq_store *q = sq_of(s);
    bool own;
    int rc = sq_enter(q, &own);
    if (rc)
        return rc;
    return sq_leave(q, own, sq_reopen_in(q, req, now_ms, was));
}

/* ---- reading ----------------------------------------------------------- */

static int sq_get(cw_store *s, const char *message_id, cw_task_record *out)
{
    cw_sq_store *q = sq_of(s);
    sqlite3_stmt *st = q->st[CW_SQ_GET];
    if (sq_bind_text(st, 1, message_id) != SQLITE_OK)
        return sq_fail_reset(q, st, "get");
    int step = sqlite3_step(st);
    if (step != SQLITE_ROW) {
        int rc = step == SQLITE_DONE ? cw__error(CW_STATUS_NOT_FOUND, "%s: no record of message %s",
                                                 q->path, message_id)
                                     : cw__sq_fail(q, "get");
        sqlite3_reset(st);
        return rc;
    }
    size_t id_len = strnlen(message_id, sizeof out->message_id - 1);
    memcpy(out->message_id, message_id, id_len);
    out->message_id[id_len] = '\0';
    out->state = (cw_task_state)sqlite3_column_int(st, 0);
    sq_copy_col(out->owner, sizeof out->owner, st, 1);
    out->lease_until_ms = sqlite3_column_int64(st, 2); /* 0 for NULL */
    out->attempts = sq_uint(sqlite3_column_int64(st, 3));
    out->deliveries = sq_uint(sqlite3_column_int64(st, 4));
    sq_copy_col(out->saga_id, sizeof out->saga_id, st, 5);
    sq_copy_col(out->type, sizeof out->type, st, 6);
    out->first_seen_ms = sqlite3_column_int64(st, 7);
    out->last_seen_ms = sqlite3_column_int64(st, 8);
    sq_copy_col(out->error_class, sizeof out->error_class, st, 9);
    sq_copy_col(out->last_error, sizeof out->last_error, st, 10);
    sqlite3_reset(st);
    return 0;
}

static int sq_history(cw_store *s, const char *message_id,
                      int (*cb)(const cw_attempt_record *a, void *ud), void *ud)
{
    cw_sq_store *q = sq_of(s);
    sqlite3_stmt *st = q->st[CW_SQ_HISTORY];
    /* A callback that lists history again would reset the walk under us. */
    if (sqlite3_stmt_busy(st))
        return cw__error(CW_STATUS_INVALID_ARG, "%s: history: called from a history callback",
                         q->path);
    if (sq_bind_text(st, 1, message_id) != SQLITE_OK)
        return sq_fail_reset(q, st, "history");
    cw_attempt_record a;
    int step = SQLITE_DONE, rc = 0;
    while (rc == 0 && (step = sqlite3_step(st)) == SQLITE_ROW) {
        a.n = sq_uint(sqlite3_column_int64(st, 0));
        a.at_ms = sqlite3_column_int64(st, 1);
        sq_copy_col(a.worker, sizeof a.worker, st, 2);
        sq_copy_col(a.outcome, sizeof a.outcome, st, 3);
        sq_copy_col(a.error_class, sizeof a.error_class, st, 4);
        sq_copy_col(a.reason, sizeof a.reason, st, 5);
        rc = cb(&a, ud);
    }
    if (rc == 0 && step != SQLITE_DONE)
        rc = cw__sq_fail(q, "history");
    sqlite3_reset(st);
    if (rc)
        return rc;

    /* The applying attempt of a done task (see sq_settle_in). */
    st = q->st[CW_SQ_HISTORY_DONE];
    if (sq_bind_text(st, 1, message_id) != SQLITE_OK)
        return sq_fail_reset(q, st, "history");
    step = sqlite3_step(st);
    if (step == SQLITE_ROW) {
        memset(&a, 0, sizeof a);
        a.n = sq_uint(sqlite3_column_int64(st, 0));
        a.at_ms = sqlite3_column_int64(st, 1);
        sq_copy_col(a.worker, sizeof a.worker, st, 2);
        snprintf(a.outcome, sizeof a.outcome, "ok");
        sqlite3_reset(st);
        return cb(&a, ud);
    }
    rc = step == SQLITE_DONE ? 0 : cw__sq_fail(q, "history");
    sqlite3_reset(st);
    return rc;
}

/* ---- expiry ------------------------------------------------------------ */

/* Rows a sweep examines per record it may remove: the old records that stay
 * (dead-lettered, retrying, abandoned) are walked over, a bounded number. */
#define CW_SQ_SWEEP_EXAMINE 8

/* Collects into ids[] the DONE records older than done_before_ms among the
 * next rows in arrival order (at most `limit` of them, at most
 * limit * CW_SQ_SWEEP_EXAMINE rows examined), and moves the cursor.
 *
 * Rows arrive in the order of their first_seen (a claim stamps it when it
 * creates the row), so the first row first seen at or after the cut ends the
 * old part of the table: the pass ends there and the next one starts again
 * from the oldest row, where old records that settled since (a retry that
 * succeeded, a replay) are found. A pass costs the rows that stay, never the
 * whole table, and no index has to be kept up on the per-message path. */
static int sq_sweep_scan(cw_sq_store *q, int64_t done_before_ms, unsigned limit, int64_t *ids,
                         unsigned *nids)
{
    sqlite3_stmt *st = q->st[CW_SQ_SWEEP_SCAN];
    *nids = 0;
    if (sqlite3_bind_int64(st, 1, q->sweep_after) != SQLITE_OK ||
        sqlite3_bind_int64(st, 2, (sqlite3_int64)limit * CW_SQ_SWEEP_EXAMINE) != SQLITE_OK)
        return sq_fail_reset(q, st, "sweep");
    int step;
    bool young = false;
    unsigned examined = 0;
    while ((step = sqlite3_step(st)) == SQLITE_ROW) {
        examined++;
        int64_t id = sqlite3_column_int64(st, 0);
        if (sqlite3_column_int64(st, 2) >= done_before_ms) {
            young = true;
            break;
        }
        q->sweep_after = id;
        if (sqlite3_column_int(st, 1) == CW_STATE_DONE &&
            sqlite3_column_int64(st, 3) < done_before_ms) {
            ids[(*nids)++] = id;
            if (*nids == limit)
                break;
        }
    }
    if (step != SQLITE_ROW && step != SQLITE_DONE)
        return sq_fail_reset(q, st, "sweep");
    sqlite3_reset(st);
    /* The pass ended at the young rows or at the table's end. */
    if (young || (step == SQLITE_DONE && examined < limit * CW_SQ_SWEEP_EXAMINE))
        q->sweep_after = 0;
    return 0;
}

/* Runs in a transaction of its own, so never inside a batch: it would commit
 * the batch's claims half-way. The worker calls it between batches. */
static int sq_sweep(cw_store *s, int64_t done_before_ms, unsigned limit, unsigned *removed)
{
    cw_sq_store *q = sq_of(s);
    *removed = 0;
    if (!sqlite3_get_autocommit(q->db))
        return cw__error(CW_STATUS_INVALID_ARG, "%s: sweep: called inside a batch", q->path);
    if (limit == 0)
        return 0;
    int64_t *ids = malloc((size_t)limit * sizeof *ids);
    if (!ids)
        return cw__error(CW_STATUS_NOMEM, "%s: sweep: out of memory", q->path);

    int64_t cursor = q->sweep_after;
    unsigned n = 0;
    int rc = sq_begin_as(q, true);
    if (rc)
        goto out;
    if ((rc = sq_sweep_scan(q, done_before_ms, limit, ids, &n)))
        goto out_rollback;
    for (unsigned i = 0; i < n; i++) {
        for (int k = CW_SQ_SWEEP_ATTEMPTS; k <= CW_SQ_SWEEP_TASKS; k++) {
            sqlite3_stmt *st = q->st[k];
            if (sqlite3_bind_int64(st, 1, ids[i]) != SQLITE_OK) {
                rc = sq_fail_reset(q, st, "sweep");
                goto out_rollback;
            }
            if ((rc = sq_run(q, st, "sweep")))
                goto out_rollback;
        }
    }
    if ((rc = sq_run(q, q->st[CW_SQ_COMMIT], "sweep")))
        goto out_rollback;
    *removed = n;
    goto out;

out_rollback:
    sq_rollback_quiet(q);
    q->sweep_after = cursor; /* nothing was removed: walk those rows again */
out:
    free(ids);
    return rc;
}

/* ---- open and free ----------------------------------------------------- */

void cw__sq_free(cw_store *s)
{
    cw_sq_store *q = sq_of(s);
    cw__sq_sync_stop(q);
    for (int i = 0; i < CW_SQ_COUNT; i++)
        sqlite3_finalize(q->st[i]);
    sqlite3_close(q->db); /* rolls back an open batch */
    free(q->path);
    free(q->base.owner);
    free(q);
}

const cw_store_ops cw__sq_ops = {
    .claim_batch = sq_claim_batch,
    .settle_batch = sq_settle_batch,
    .release = sq_release,
    .begin = sq_begin,
    .commit = sq_commit,
    .rollback = sq_rollback,
    .claim = sq_claim,
    .settle = sq_settle,
    .note = sq_note,
    .get = sq_get,
    .history = sq_history,
    .sweep = sq_sweep,
    .reopen = sq_reopen,
    .followups_due = sq_followups_due,
    .followups_done = sq_followups_done,
    .settle_deferred = sq_settle_deferred,
    .durable = cw__sq_durable,
    .durable_fd = cw__sq_durable_fd,
    .free = cw__sq_free,
};