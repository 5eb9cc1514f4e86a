/* The idempotency store's front: picks a backend at open, checks arguments,
 * and forwards every call to the backend's table of operations. */
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "framework/config.h"
#include "framework/error.h"
#include "framework/owner.h"
#include "framework/store.h"

/* The database behind the "memory" backend: SQLite's private in-memory
 * database. Each store object gets its own, shared with no other object or
 * process, and gone when the store is freed. Meant for tests. */
#define CW_STORE_MEMORY_PATH ":memory:"

const char *cw__state_name(cw_task_state s)
{
    switch (s) {
    case CW_STATE_NONE: return "none";
    case CW_STATE_IN_PROGRESS: return "in-progress";
    case CW_STATE_DONE: return "done";
    case CW_STATE_DEAD: return "dead";
    case CW_STATE_RETRYING: return "retrying";
    case CW_STATE_REPLAYED: return "replayed";
    }
    return "unknown";
}

int cw_store_open(cw_store **out, const cw_store_opts *opts)
{
    if (!out || !opts)
        return cw__error(CW_STATUS_INVALID_ARG, "store: open: NULL argument");
    *out = NULL;
    if (!opts->backend || !*opts->backend)
        return cw__error(CW_STATUS_CONFIG,
                         "store: no backend given (expected sqlite, postgresql or memory)");
    if (strcmp(opts->backend, "sqlite") == 0)
        return cw__store_sqlite_open(out, opts);
    if (strcmp(opts->backend, "postgresql") == 0)
        return cw__store_pg_open(out, opts);
    if (strcmp(opts->backend, "memory") == 0) {
        cw_store_opts mem = *opts;
        mem.path = CW_STORE_MEMORY_PATH;
        mem.sync_full = false;
        return cw__store_sqlite_open(out, &mem);
    }
    return cw__error(CW_STATUS_CONFIG,
                     "store: unknown backend '%s' (expected sqlite, postgresql or memory)",
                     opts->backend);
}

int cw_store_probe(const cw_store_opts *opts, char *out, size_t cap)
{
    if (!opts || !opts->backend || !out || cap == 0)
        return cw__error(CW_STATUS_INVALID_ARG, "store: probe: NULL argument");
    out[0] = '\0';
    if (strcmp(opts->backend, "sqlite") == 0)
        return cw__store_sqlite_probe(opts, out, cap);
    if (strcmp(opts->backend, "postgresql") == 0)
        return cw__store_pg_probe(opts, out, cap);
    if (strcmp(opts->backend, "memory") == 0) {
        snprintf(out, cap, "in memory, private to each worker (for tests)");
        return 0;
    }
    return cw__error(CW_STATUS_CONFIG, "store: unknown backend '%s'", opts->backend);
}

bool cw_store_reachable(cw_store *s)
{
    return s && (!s->ops->reachable || s->ops->reachable(s));
}

void cw__store_copy_text(char *dst, size_t size, const char *src, size_t n)
{
    if (!src)
        n = 0;
    else if (n == SIZE_MAX)
        n = strnlen(src, size);
    if (n >= size) {
        n = size - 1;
        while (n > 0 && ((unsigned char)src[n] & 0xC0) == 0x80)
            n--;
    }
    if (n)
        memcpy(dst, src, n);
    dst[n] = '\0';
}

void cw_store_opts_of(const cw_config *cfg, const char *owner, bool heartbeat, cw_store_opts *out)
{
    static const char *const names[] = {[CW_STORE_SQLITE] = "sqlite",
                                        [CW_STORE_MEMORY] = "memory",
                                        [CW_STORE_POSTGRESQL] = "postgresql"};
    *out = (cw_store_opts){
        .backend = names[cfg->store_backend],
        .path = cfg->store_path,
        .url = cfg->store_url,
        .schema = cfg->store_schema,
        .owner = owner,
        .lease_ms = cfg->lease_ms,
        .sync_full = cfg->store_sync_full,
        .heartbeat = heartbeat,
        .owner_alive = cw__owner_alive,
        .deferred = heartbeat, /* a worker's store */
    };
}

void cw_store_free(cw_store *s)
{
    if (s)
        s->ops->free(s);
}

/* A message ID must be non-empty and at most CW_MESSAGE_ID_MAX bytes, so
 * that it fits cw_task_record.message_id. */
static int check_id(const char *op, const char *message_id)
{
    if (!message_id || !*message_id)
        return cw__error(CW_STATUS_INVALID_ARG, "store: %s: empty message ID", op);
    if (strnlen(message_id, CW_MESSAGE_ID_MAX + 1) > CW_MESSAGE_ID_MAX)
        return cw__error(CW_STATUS_INVALID_ARG, "store: %s: message ID longer than %d bytes", op,
                         CW_MESSAGE_ID_MAX);
    return 0;
}

int cw_store_claim_batch(cw_store *s, const cw_claim_req *reqs, size_t n, int64_t now_ms,
                         cw_claim *out)
{
    if (!s || (n && (!reqs || !out)))
        return cw__error(CW_STATUS_INVALID_ARG, "store: claim batch: NULL argument");
    for (size_t i = 0; i < n; i++) {
        int rc = check_id("claim", reqs[i].message_id);
        if (rc)
            return rc;
    }
    return n ? s->ops->claim_batch(s, reqs, n, now_ms, out) : 0;
}

static int check_settle(const cw_settle_req *req)
{
    int rc = check_id("settle", req->message_id);
    if (rc)
        return rc;
    if (req->state != CW_STATE_DONE && req->state != CW_STATE_DEAD &&
        req->state != CW_STATE_RETRYING)
        return cw__error(CW_STATUS_INVALID_ARG,
                         "store: settle %s: state %s is not done, dead or retrying",
                         req->message_id, cw__state_name(req->state));
    if (!req->outcome || !*req->outcome)
        return cw__error(CW_STATUS_INVALID_ARG, "store: settle %s: no outcome", req->message_id);
    return 0;
}

int cw_store_settle_batch(cw_store *s, const cw_settle_req *reqs, size_t n, int64_t now_ms)
{
    if (!s || (n && !reqs))
        return cw__error(CW_STATUS_INVALID_ARG, "store: settle batch: NULL argument");
    for (size_t i = 0; i < n; i++) {
        int rc = check_settle(&reqs[i]);
        if (rc)
            return rc;
    }
    return n ? s->ops->settle_batch(s, reqs, n, now_ms) : 0;
}

bool cw_store_can_defer(cw_store *s)
{
    return s && s->ops->settle_deferred && s->ops->durable_fd(s) >= 0;
}

int cw_store_settle_batch_deferred(cw_store *s, const cw_settle_req *reqs, size_t n, int64_t now_ms,
                                   uint64_t *mark)
{
    if (!s || !mark || (n && !reqs))
        return cw__error(CW_STATUS_INVALID_ARG, "store: deferred settle: NULL argument");
    if (!cw_store_can_defer(s))
        return cw__error(CW_STATUS_INVALID_ARG, "store: deferred settle: not offered here");
    for (size_t i = 0; i < n; i++) {
        int rc = check_settle(&reqs[i]);
        if (rc)
            return rc;
    }
    return s->ops->settle_deferred(s, reqs, n, now_ms, mark);
}

int cw_store_durable(cw_store *s, uint64_t *mark)
{
    if (!s || !mark)
        return cw__error(CW_STATUS_INVALID_ARG, "store: durable: NULL argument");
    if (!cw_store_can_defer(s))
        return cw__error(CW_STATUS_INVALID_ARG, "store: durable: no deferral here");
    return s->ops->durable(s, mark);
}

int cw_store_durable_fd(cw_store *s)
{
    return s && s->ops->durable_fd ? s->ops->durable_fd(s) : -1;
}

int cw_store_release(cw_store *s, const int64_t *tickets, size_t n)
{
    if (!s || (n && !tickets))
        return cw__error(CW_STATUS_INVALID_ARG, "store: release: NULL argument");
    return n ? s->ops->release(s, tickets, n) : 0;
}

/* ---- follow-ups and handler transactions ---------------------------------- */

int cw_store_followups_due(cw_store *s, int64_t older_than_ms, int64_t now_ms, int64_t lease_ms,
                           cw_followup *out, size_t cap, size_t *n)
{
    size_t ignored;
    if (!n)
        n = &ignored;
    *n = 0;
    if (!s || (cap && !out))
        return cw__error(CW_STATUS_INVALID_ARG, "store: follow-ups: NULL argument");
    /* The memory backend keeps no follow-ups: nothing is ever due. */
    return cap && s->ops->followups_due
               ? s->ops->followups_due(s, older_than_ms, now_ms, lease_ms, out, cap, n)
               : 0;
}

int cw_store_followups_done(cw_store *s, const char *const *message_ids, size_t n)
{
    if (!s || (n && !message_ids))
        return cw__error(CW_STATUS_INVALID_ARG, "store: follow-ups: NULL argument");
    return n && s->ops->followups_done ? s->ops->followups_done(s, message_ids, n) : 0;
}

void cw_followup_clear(cw_followup *f)
{
    if (!f)
        return;
    free(f->exchange);
    free(f->routing_key);
    free(f->type);
    free(f->saga_id);
    free(f->body);
    free(f->headers);
    memset(f, 0, sizeof *f);
}

int cw_store_tx_new(cw_store_tx **out, const cw_store_opts *opts)
{
    if (!out || !opts || !opts->backend)
        return cw__error(CW_STATUS_INVALID_ARG, "store: transaction: NULL argument");
    *out = NULL;
    if (strcmp(opts->backend, "sqlite") == 0)
        return cw__store_sqlite_tx_new(out, opts);
    if (strcmp(opts->backend, "postgresql") == 0)
        return cw__store_pg_tx_new(out, opts);
    return cw__error(CW_STATUS_INVALID_ARG,
                     "store: the %s backend has no database a handler can write to (sqlite or "
                     "postgresql have)",
                     opts->backend);
}

void cw_store_tx_free(cw_store_tx *tx)
{
    if (tx)
        tx->ops->free(tx);
}

int cw_store_tx_begin(cw_store_tx *tx, int64_t ticket, int64_t now_ms)
{
    if (!tx || ticket <= 0)
        return cw__error(CW_STATUS_INVALID_ARG, "store: transaction: no claim to take");
    tx->ticket = ticket;
    tx->now_ms = now_ms;
    return tx->ops->begin(tx, ticket, now_ms);
}

int cw_store_tx_commit(cw_store_tx *tx, const cw_followup *f, size_t n)
{
    return tx->ops->commit(tx, f, n);
}

void cw_store_tx_rollback(cw_store_tx *tx)
{
    if (tx)
        tx->ops->rollback(tx);
}

cw_tx_state cw_store_tx_state(cw_store_tx *tx)
{
    return tx ? tx->ops->state(tx) : CW_TX_NONE;
}

const char *cw_store_tx_error(cw_store_tx *tx)
{
    const char *e = tx && tx->ops->error ? tx->ops->error(tx) : NULL;
    return e ? e : "";
}

void cw_store_tx_guard(cw_store_tx *tx, bool on)
{
    if (tx && tx->ops->guard)
        tx->ops->guard(tx, on);
}

int cw_store_begin(cw_store *s, bool durable)
{
    if (!s)
        return cw__error(CW_STATUS_INVALID_ARG, "store: begin: NULL store");
    return s->ops->begin(s, durable);
}

int cw_store_commit(cw_store *s)
{
    if (!s)
        return cw__error(CW_STATUS_INVALID_ARG, "store: commit: NULL store");
    return s->ops->commit(s);
}

int cw_store_rollback(cw_store *s)
{
    if (!s)
        return cw__error(CW_STATUS_INVALID_ARG, "store: rollback: NULL store");
    return s->ops->rollback(s);
}

int cw_store_claim(cw_store *s, const cw_claim_req *req, int64_t now_ms, cw_claim *out)
{
    if (!s || !req || !out)
        return cw__error(CW_STATUS_INVALID_ARG, "store: claim: NULL argument");
    int rc = check_id("claim", req->message_id);
    if (rc)
        return rc;
    return s->ops->claim(s, req, now_ms, out);
}

int cw_store_settle(cw_store *s, const cw_settle_req *req, int64_t now_ms)
{
    if (!s || !req)
        return cw__error(CW_STATUS_INVALID_ARG, "store: settle: NULL argument");
    int rc = check_settle(req);
    if (rc)
        return rc;
    return s->ops->settle(s, req, now_ms);
}

int cw_store_note(cw_store *s, const char *message_id, const cw_attempt_record *a)
{
    if (!s || !message_id || !a)
        return cw__error(CW_STATUS_INVALID_ARG, "store: note: NULL argument");
    return s->ops->note(s, message_id, a);
}

int cw_store_get(cw_store *s, const char *message_id, cw_task_record *out)
{
    if (!s || !out)
        return cw__error(CW_STATUS_INVALID_ARG, "store: get: NULL argument");
    int rc = check_id("get", message_id);
    if (rc)
        return rc;
    return s->ops->get(s, message_id, out);
}

int cw_store_history(cw_store *s, const char *message_id,
                     int (*cb)(const cw_attempt_record *a, void *ud), void *ud)
{
    if (!s || !cb)
        return cw__error(CW_STATUS_INVALID_ARG, "store: history: NULL argument");
    int rc = check_id("history", message_id);
    if (rc)
        return rc;
    return s->ops->history(s, message_id, cb, ud);
}

int cw_store_reopen(cw_store *s, const cw_reopen_req *req, int64_t now_ms, cw_task_state *was)
{
    cw_task_state ignored;
    if (!s || !req)
        return cw__error(CW_STATUS_INVALID_ARG, "store: reopen: NULL argument");
    int rc = check_id("reopen", req->message_id);
    if (rc)
        return rc;
    return s->ops->reopen(s, req, now_ms, was ? was : &ignored);
}

int cw_store_sweep(cw_store *s, int64_t done_before_ms, unsigned limit, unsigned *removed)
{
    unsigned ignored;
    if (!s)
        return cw__error(CW_STATUS_INVALID_ARG, "store: sweep: NULL store");
    return s->ops->sweep(s, done_before_ms, limit, removed ? removed : &ignored);
}
