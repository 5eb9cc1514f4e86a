/* Internal: the idempotency store — one interface, several backends.
 *
 * Per message ID the store keeps the task's state, who holds it and until
 * when, how often it was attempted and delivered, and an attempt history.
 * Writes are made inside a batch (cw_store_begin() .. cw_store_commit()) so a
 * worker settles a whole prefetch window with one durable commit. */
#ifndef CW_FRAMEWORK_STORE_H
#define CW_FRAMEWORK_STORE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "compworker/client.h"

typedef enum cw_task_state {
    CW_STATE_NONE = 0,        /* no record */
    CW_STATE_IN_PROGRESS = 1, /* claimed by `owner` until `lease_until_ms` */
    CW_STATE_DONE = 2,        /* applied: later deliveries are duplicates */
    CW_STATE_DEAD = 3,        /* dead-lettered */
    CW_STATE_RETRYING = 4,    /* a retry copy is scheduled; claimable */
    CW_STATE_REPLAYED = 5     /* republished from the DLQ by an operator
                                 (cw_store_reopen); claimable */
} cw_task_state;

const char *cw__state_name(cw_task_state s); /* "none", "in-progress", ... */

typedef enum cw_claim_result {
    CW_CLAIM_NEW = 0,  /* claimed for this worker: run the handler */
    CW_CLAIM_DONE = 1, /* already applied: ack without running (a duplicate) */
    CW_CLAIM_DEAD = 2, /* already dead-lettered: ack without running */
    CW_CLAIM_BUSY = 3  /* in progress under a live lease of another owner */
} cw_claim_result;

typedef struct cw_claim_req {
    const char *message_id;
    const char *saga_id; /* may be NULL */
    const char *type;
} cw_claim_req;

typedef struct cw_claim {
    cw_claim_result result;
    unsigned deliveries; /* deliveries since the last settle, this one included
                            (1 on a first delivery; more after crashes) */
    unsigned attempts;   /* settled attempts so far */
    char owner[128];     /* for BUSY: who holds it */
    int64_t ticket;      /* for NEW: pass to cw_settle_req.ticket (0 if none) */
    bool fresh;          /* this claim created the record: the message ID was
                            never seen before (so it cannot repeat one earlier
                            in the same batch) */
    bool mine;           /* for NEW: the record was in progress under this
                            owner's own unexpired lease (a copy this worker may
                            hold in flight, or one it lost with a session) */
} cw_claim;

/* A follow-up message of a task (cw_task_send): stored with the task's done
 * record, published after it, removed once confirmed. */
typedef struct cw_followup {
    char message_id[37]; /* UUIDv5 of the task's message ID and the index */
    char *exchange;      /* owned by whoever holds the followup */
    char *routing_key;
    char *type;
    char *saga_id; /* NULL for none */
    void *body;
    size_t len;
    char *headers; /* NULL, or the message's headers: a JSON object of string values */
} cw_followup;

typedef struct cw_settle_req {
    const char *message_id;
    cw_task_state state;          /* DONE, DEAD or RETRYING */
    const char *outcome;          /* "ok", "retry", "fail", "invalid", "poison", ... */
    const char *error_class;      /* NULL for ok */
    const char *reason;           /* NULL for ok */
    int64_t ticket;               /* cw_claim.ticket of this task's claim in this
                                worker, or 0 to find the record by message_id */
    const cw_followup *followups; /* DONE only: stored in the same commit; may be NULL */
    size_t n_followups;
} cw_settle_req;

typedef struct cw_task_record {
    char message_id[CW_MESSAGE_ID_MAX + 1];
    cw_task_state state;
    char owner[128];        /* in progress: the lease holder; settled: who settled it */
    int64_t lease_until_ms; /* 0 unless in progress */
    unsigned attempts;
    unsigned deliveries; /* total deliveries ever seen */
    char saga_id[256];
    char type[256];
    int64_t first_seen_ms;
    int64_t last_seen_ms;
    char error_class[32];
    char last_error[1024];
} cw_task_record;

typedef struct cw_attempt_record {
    unsigned n; /* 1-based */
    int64_t at_ms;
    char worker[128];
    char outcome[32];
    char error_class[32];
    char reason[1024];
} cw_attempt_record;

/* Answers whether the owner string of another worker names a live process.
 * Called for in-progress records under a live lease held by someone else;
 * returning false lets the claim take the record over at once. */
typedef bool (*cw_owner_alive_fn)(const char *owner, void *user_data);

typedef struct cw_store_opts {
    const char *backend;           /* "sqlite", "postgresql" or "memory" */
    const char *path;              /* sqlite file; ignored by the others */
    const char *url;               /* postgresql: a libpq connection URI or key=value
                             string (may hold a password: never logged) */
    const char *schema;            /* postgresql: the schema of the tables ("compworker") */
    const char *owner;             /* this worker's identity, stored with claims */
    int64_t lease_ms;              /* lease of a claim */
    bool sync_full;                /* sqlite: synchronous=FULL (else NORMAL) */
    bool heartbeat;                /* postgresql: keep this owner's heartbeat row fresh
                             from a thread of the store's own (a worker); without
                             it the row is written once at open (a CLI) */
    cw_owner_alive_fn owner_alive; /* may be NULL: leases then only expire */
    void *owner_alive_data;
    bool deferred; /* sqlite: offer cw_store_settle_batch_deferred() (a worker):
                      a thread of the store's own makes commits durable, and
                      another checkpoints the WAL, off the caller's thread */
} cw_store_opts;

typedef struct cw_store cw_store;

/* A replay from the dead-letter queue, for cw_store_reopen(). */
typedef struct cw_reopen_req {
    const char *message_id;
    const char *saga_id; /* for a record created by the reopen; may be NULL */
    const char *type;    /* likewise */
    const char *reason;  /* the history row's reason, e.g. "replayed by ... to ..." */
    bool force;          /* reopen a DONE record too */
} cw_reopen_req;

typedef struct cw_store_ops {
    int (*claim_batch)(cw_store *s, const cw_claim_req *reqs, size_t n, int64_t now_ms,
                       cw_claim *out);
    int (*settle_batch)(cw_store *s, const cw_settle_req *reqs, size_t n, int64_t now_ms);
    int (*release)(cw_store *s, const int64_t *tickets, size_t n);
    int (*begin)(cw_store *s, bool durable);
    int (*commit)(cw_store *s);
    int (*rollback)(cw_store *s);
    int (*claim)(cw_store *s, const cw_claim_req *req, int64_t now_ms, cw_claim *out);
    int (*settle)(cw_store *s, const cw_settle_req *req, int64_t now_ms);
    int (*note)(cw_store *s, const char *message_id, const cw_attempt_record *a);
    int (*get)(cw_store *s, const char *message_id, cw_task_record *out);
    int (*history)(cw_store *s, const char *message_id,
                   int (*cb)(const cw_attempt_record *a, void *ud), void *ud);
    int (*sweep)(cw_store *s, int64_t done_before_ms, unsigned limit, unsigned *removed);
    int (*reopen)(cw_store *s, const cw_reopen_req *req, int64_t now_ms, cw_task_state *was);
    int (*followups_due)(cw_store *s, int64_t older_than_ms, int64_t now_ms, int64_t lease_ms,
                         cw_followup *out, size_t cap, size_t *n);
    int (*followups_done)(cw_store *s, const char *const *message_ids, size_t n);
    /* NULL where the backend cannot defer durability (see below). */
    int (*settle_deferred)(cw_store *s, const cw_settle_req *reqs, size_t n, int64_t now_ms,
                           uint64_t *mark);
    int (*durable)(cw_store *s, uint64_t *mark);
    int (*durable_fd)(cw_store *s);
    bool (*reachable)(cw_store *s);
    void (*free)(cw_store *s);
} cw_store_ops;

struct cw_store {
    const cw_store_ops *ops;
    char *owner;
    int64_t lease_ms;
    cw_owner_alive_fn owner_alive;
    void *owner_alive_data;
};

struct cw_config;

/* The options of the store a pool's configuration names ([store]), for
 * `owner`; the strings are borrowed from cfg. `heartbeat` as a worker
 * wants it (see cw_store_opts). */
void cw_store_opts_of(const struct cw_config *cfg, const char *owner, bool heartbeat,
                      cw_store_opts *out);

/* Opens the backend named in opts, creating or migrating its schema.
 * CW_STATUS_CONFIG for an unknown backend or bad options; CW_STATUS_STORE
 * (with the path or the masked URL and the database's message) when it cannot
 * open or migrate, or meets a schema newer than this build;
 * CW_STATUS_STORE_UNAVAILABLE when a PostgreSQL server does not answer (worth
 * retrying). Free with cw_store_free(). */
int cw_store_open(cw_store **out, const cw_store_opts *opts);
void cw_store_free(cw_store *s);

/* Whether the store's database answered its last request (a PostgreSQL
 * server can go away and come back; a SQLite file is always there). */
bool cw_store_reachable(cw_store *s);

/* What `compworker config check` says of a store without changing it: for
 * PostgreSQL, connects and tells whether the schema is there and at which
 * version ("schema compworker at version 1"); for SQLite, whether the file
 * exists and its schema version. 0 with the sentence in `out`; the status
 * and cw_error_last() (libpq's reason) when it cannot connect or read. */
int cw_store_probe(const cw_store_opts *opts, char *out, size_t cap);

/* The worker's batch operations, each in a transaction of its own (never
 * inside a begin/commit bracket), in one round trip where the backend
 * allows. Their semantics are those of cw_store_claim() / cw_store_settle()
 * for each element.
 *
 * cw_store_claim_batch claims n distinct message IDs (the caller removes
 * repeats) in a light transaction: out[i] answers reqs[i].
 * cw_store_settle_batch records n outcomes in one durable commit.
 * cw_store_release ends the leases this owner holds on the claims of
 * `tickets` (cw_claim.ticket), so that the next delivery of those tasks is
 * claimable at once by any worker: for deliveries handed back to the broker
 * unsettled (a lost broker session). Records settled since are untouched. */
int cw_store_claim_batch(cw_store *s, const cw_claim_req *reqs, size_t n, int64_t now_ms,
                         cw_claim *out);
int cw_store_settle_batch(cw_store *s, const cw_settle_req *reqs, size_t n, int64_t now_ms);
int cw_store_release(cw_store *s, const int64_t *tickets, size_t n);

/* Deferred durability, the worker's pipeline: the outcomes' commit is made
 * first (visible to every worker, surviving this process's death) and made
 * durable (surviving a power cut) by a thread of the store's own, while the
 * worker goes on with its next batch; the deliveries are acked only once it
 * is durable. Offered by a SQLite store opened with `deferred` and
 * `sync_full` (its WAL is fdatasync()ed apart from the commit, so that the
 * write lock is not held across the fsync); false for the others, which
 * the worker settles with cw_store_settle_batch().
 *
 * cw_store_settle_batch_deferred records as cw_store_settle_batch() does and
 * puts in *mark the number that cw_store_durable() reaches once this commit
 * is durable (marks grow with each call). cw_store_durable() puts in *mark
 * the highest durable mark: 0, or CW_STATUS_STORE with the reason once the
 * fdatasync failed (nothing committed since may be taken as durable again).
 * cw_store_durable_fd() is a descriptor that polls readable when the durable
 * mark has grown (cw_store_durable() reads it empty); -1 without deferral.
 * All three belong to the thread that uses the store. */
bool cw_store_can_defer(cw_store *s);
int cw_store_settle_batch_deferred(cw_store *s, const cw_settle_req *reqs, size_t n, int64_t now_ms,
                                   uint64_t *mark);
int cw_store_durable(cw_store *s, uint64_t *mark);
int cw_store_durable_fd(cw_store *s);

/* ---- follow-up messages -------------------------------------------------- */

/* Up to `cap` follow-ups stored before `older_than_ms` and not taken by
 * another worker now (a worker died between its commit and its publish),
 * taken for `lease_ms` by this store's owner; into out[] (free each with
 * cw_followup_clear()). *n gets their count. */
int cw_store_followups_due(cw_store *s, int64_t older_than_ms, int64_t now_ms, int64_t lease_ms,
                           cw_followup *out, size_t cap, size_t *n);

/* Removes follow-ups once the broker confirmed them, by message ID. */
int cw_store_followups_done(cw_store *s, const char *const *message_ids, size_t n);

/* Frees what a follow-up owns. Accepts NULL and empty ones. */
void cw_followup_clear(cw_followup *f);

/* ---- handler transactions (cw_task_pg, cw_task_sqlite) -----------------------
 *
 * One per handler thread: a connection of its own to the store's database,
 * in which a task's transaction begins by taking its claim as done (so that
 * whatever the handler's writes commit with, the done record commits with
 * them), holds the handler's writes, and ends when the handler returns:
 * committed with the task's follow-ups when the outcome is done, rolled back
 * otherwise. A kill rolls it back with the connection. */
typedef struct cw_store_tx cw_store_tx;

typedef enum cw_tx_state {
    CW_TX_NONE = 0, /* no transaction */
    CW_TX_OPEN,     /* begun, the handler holds it */
    CW_TX_FAILED,   /* a statement of the handler's failed: only a rollback is left
                       (PostgreSQL) */
    CW_TX_ENDED,    /* rolled back by an error: nothing of it commits */
    CW_TX_MISUSED   /* the handler tried to begin, commit or end it itself:
                       refused or undone, nothing of it commits */
} cw_tx_state;

typedef struct cw_store_tx_ops {
    int (*begin)(cw_store_tx *tx, int64_t ticket, int64_t now_ms);
    int (*commit)(cw_store_tx *tx, const cw_followup *f, size_t n);
    void (*rollback)(cw_store_tx *tx);
    cw_tx_state (*state)(cw_store_tx *tx);
    void (*guard)(cw_store_tx *tx, bool on);
    const char *(*error)(cw_store_tx *tx);
    void (*free)(cw_store_tx *tx);
} cw_store_tx_ops;

struct cw_store_tx {
    const cw_store_tx_ops *ops;
    const char *backend; /* "sqlite" or "postgresql" */
    void *handle;        /* sqlite3 * or PGconn *: what the handler gets */
    char *owner;
    int64_t ticket, now_ms; /* of the open transaction */
};

/* A handler thread's connection to the store of `opts` (its owner, path or
 * URL). CW_STATUS_INVALID_ARG for the memory backend (it has no database a
 * handler could share), else as cw_store_open(). Free with cw_store_tx_free(). */
int cw_store_tx_new(cw_store_tx **out, const cw_store_opts *opts);
void cw_store_tx_free(cw_store_tx *tx);

/* Begins a task's transaction: takes its claim `ticket` as done at now_ms.
 * CW_STATUS_EXISTS when the claim is no longer this owner's (taken over
 * after its lease), the backend's status otherwise. */
int cw_store_tx_begin(cw_store_tx *tx, int64_t ticket, int64_t now_ms);

/* Stores the follow-ups and commits durably: 0. CW_STATUS_STORE (with the
 * reason) when nothing of it was committed (it failed, was ended, or the
 * claim's done record was no longer there): it is rolled back.
 * CW_STATUS_STORE_UNAVAILABLE when the commit's outcome is not known (the
 * connection broke during COMMIT): then the task must be left unsettled, for
 * its redelivery to find out. */
int cw_store_tx_commit(cw_store_tx *tx, const cw_followup *f, size_t n);
void cw_store_tx_rollback(cw_store_tx *tx);

/* Where the transaction stands (after the handler ran). */
cw_tx_state cw_store_tx_state(cw_store_tx *tx);

/* The database's last error message on the handle (for a reason), or "". */
const char *cw_store_tx_error(cw_store_tx *tx);

/* While `on`, statements that end or open a transaction are refused on the
 * handle where the backend can refuse them (SQLite's authorizer). */
void cw_store_tx_guard(cw_store_tx *tx, bool on);

/* Copies the text `src` (`n` bytes, or up to its NUL when n is SIZE_MAX;
 * NULL is "") into dst (NUL-terminated), cut at a UTF-8 character boundary
 * when it does not fit `size`. For the backends' record readers. */
void cw__store_copy_text(char *dst, size_t size, const char *src, size_t n);

/* Batch bracket: every claim and settle happens between begin and commit.
 * The commit of a `durable` batch survives a power cut once it returns (and
 * makes every earlier commit durable with it); that of a light one is
 * visible to other workers and survives a crash of this process, but not
 * necessarily of the machine. The worker claims in light batches and records
 * outcomes in durable ones, before any ack. */
int cw_store_begin(cw_store *s, bool durable);
int cw_store_commit(cw_store *s);
int cw_store_rollback(cw_store *s);

/* Claims a message ID for this worker (inside a batch). Creates the record on
 * first sight; counts a delivery; DONE/DEAD for settled IDs; BUSY for an ID
 * another live owner holds under an unexpired lease; otherwise takes it over. */
int cw_store_claim(cw_store *s, const cw_claim_req *req, int64_t now_ms, cw_claim *out);

/* Records the outcome of an attempt (inside a batch): sets the state, counts
 * the attempt, appends it to the history, releases the lease and resets the
 * unsettled-delivery count. CW_STATUS_NOT_FOUND if the ID has no record. */
int cw_store_settle(cw_store *s, const cw_settle_req *req, int64_t now_ms);

/* Notes an attempt that did not settle — the worker running it died (a
 * crash report) — in the history (n = attempts + 1, with a->at_ms, worker,
 * outcome, error_class and reason) and as the record's last error, keeping
 * its state. CW_STATUS_NOT_FOUND if the ID has no record. */
int cw_store_note(cw_store *s, const char *message_id, const cw_attempt_record *a);

/* What the store knows of one ID; CW_STATUS_NOT_FOUND if nothing. */
int cw_store_get(cw_store *s, const char *message_id, cw_task_record *out);

/* Calls cb for each attempt, oldest first; a non-zero return from cb stops
 * and is returned. */
int cw_store_history(cw_store *s, const char *message_id,
                     int (*cb)(const cw_attempt_record *a, void *ud), void *ud);

/* Deletes at most `limit` DONE records last seen before `done_before_ms`
 * (with their history), in its own transaction; *removed gets the count. */
int cw_store_sweep(cw_store *s, int64_t done_before_ms, unsigned limit, unsigned *removed);

/* Makes a message ID claimable again before its dead-lettered copy is
 * republished (a replay): a dead, retrying or already replayed record, or
 * one in progress whose lease expired or whose owner died, becomes REPLAYED
 * -- claimable by the next worker that receives it, lease released, its
 * count of deliveries without an outcome reset to 0 -- and the replay is
 * appended to its history (n = the attempts so far, outcome "replayed",
 * worker = this store's owner, req->reason). Attempts, deliveries, first
 * seen and the last error are kept. An ID without a record gets one, in
 * state REPLAYED. *was (may be NULL) receives the state before the call
 * (CW_STATE_NONE for no record).
 *
 * Refused, changing nothing, with CW_STATUS_EXISTS: a DONE record (the task
 * was applied: replaying it would apply it twice) unless req->force, and a
 * record in progress under another live owner's unexpired lease (a copy of
 * the task is running now); *was tells which. Inside a batch, or in a
 * durable transaction of its own. */
int cw_store_reopen(cw_store *s, const cw_reopen_req *req, int64_t now_ms, cw_task_state *was);

/* Backend constructors and probes (used by cw_store_open / cw_store_probe). */
int cw__store_sqlite_open(cw_store **out, const cw_store_opts *opts);
int cw__store_sqlite_probe(const cw_store_opts *opts, char *out, size_t cap);
int cw__store_pg_open(cw_store **out, const cw_store_opts *opts);
int cw__store_pg_probe(const cw_store_opts *opts, char *out, size_t cap);
int cw__store_sqlite_tx_new(cw_store_tx **out, const cw_store_opts *opts);
int cw__store_pg_tx_new(cw_store_tx **out, const cw_store_opts *opts);

#endif
