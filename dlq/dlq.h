/* Internal: the dead-letter queue tools behind `compworker dlq` and
 * `compworker status` -- browsing without consuming, selecting, grouping,
 * replaying, deleting, exporting and importing dead-lettered tasks.
 *
 * How a DLQ is read (browse.c): a connection of its own, a passive
 * queue.declare that freezes the count of messages (the snapshot), then
 * basic.consume with manual acks on a dedicated channel, reading exactly the
 * snapshot's count of deliveries. What an operation removes it acks; the
 * rest stays unacked until the browser is closed, when the broker puts it
 * all back in its place. A message dead-lettered while an operation runs
 * (perhaps by a replay of its own) lands behind the snapshot and is never
 * read: the set an operation works on is frozen when it starts.
 *
 * Killed at any point, an operation leaves every message in the DLQ (the
 * broker requeues whatever the dead connection held) or at its destination,
 * confirmed by the broker: never nowhere. A copy may be at both places after
 * a kill between a destination's confirm and the DLQ's ack; the idempotency
 * store makes that harmless (the replayed task is applied once, and the DLQ
 * copy of an applied task is refused by a later replay).
 *
 * Nothing here is thread-safe; every object belongs to one thread. */
#ifndef CW_DLQ_DLQ_H
#define CW_DLQ_DLQ_H

#include <amqp.h>
#include <signal.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "compworker/client.h"
#include "framework/config.h"
#include "framework/store.h"

/* ---- one dead-lettered message ------------------------------------------ */

#define CW_DLQ_ERROR_MAX 1024

/* A message read from a DLQ: the delivery and what its properties and
 * failure headers say, decoded for filters and display. Strings are
 * NUL-terminated copies ("" when absent), cut at an embedded NUL or at
 * their buffer's size. */
typedef struct cw_dlq_msg {
    amqp_envelope_t env; /* owned when has_env: cw_dlq_msg_clear() destroys it */
    bool has_env;
    uint64_t position; /* 1-based place in the snapshot */

    char message_id[CW_MESSAGE_ID_MAX + 1];
    char type[256];
    char saga_id[256];            /* correlation_id */
    char error_class[32];         /* cw-error-class; "broker" for a broker's dead-letter */
    char error[CW_DLQ_ERROR_MAX]; /* cw-error, or what x-death says */
    char handler[256];            /* cw-handler */
    char worker[128];             /* cw-worker */
    char queue[256];              /* cw-queue, or x-first-death-queue */
    char orig_exchange[256];      /* cw-original-exchange, or x-first-death-exchange */
    char orig_routing_key[256];
    bool has_orig;        /* orig_exchange / orig_routing_key are known */
    int64_t failed_at_ms; /* cw-failed-at, or x-death's time; 0 when unknown */
    int64_t timestamp_ms; /* the timestamp property; 0 when absent */
    unsigned attempts;    /* cw-attempt */
    unsigned replayed;    /* cw-replayed: replays so far */
} cw_dlq_msg;

/* Decodes m->env into the summary fields. Never fails: what cannot be read
 * stays empty. */
void cw_dlq_msg_decode(cw_dlq_msg *m);

/* Destroys the delivery (when owned) and zeroes the message. */
void cw_dlq_msg_clear(cw_dlq_msg *m);

/* The header `name` of a set of properties, or NULL. */
const amqp_field_value_t *cw_dlq_header(const amqp_basic_properties_t *p, const char *name);

/* Parses "2026-11-24T21:50:03.123Z" (what cw__iso8601() writes; offsets and
 * a missing fraction are accepted too) into ms since the epoch. */
bool cw_dlq_parse_iso8601(const char *s, int64_t *out_ms);

/* ---- selecting ---------------------------------------------------------- */

/* Which messages an operation works on. Every member set must match (AND);
 * an empty filter matches every message. Strings are borrowed. */
typedef struct cw_dlq_filter {
    char *const *ids; /* message IDs; a message matches one of them */
    size_t n_ids;
    const char *type;        /* a glob (fnmatch): "payment.*" */
    const char *saga_id;     /* exact */
    const char *error_class; /* exact */
    const char *grep;        /* a substring of the reason, case-insensitive */
    bool has_since, has_until;
    int64_t since_ms, until_ms; /* failed at since <= t < until (ms since the epoch) */
} cw_dlq_filter;

bool cw_dlq_filter_match(const cw_dlq_filter *f, const cw_dlq_msg *m);

/* True when the filter selects on anything (IDs or any criterion). */
bool cw_dlq_filter_active(const cw_dlq_filter *f);

/* Parses a point in time for --since / --until: an age before `now_ms`
 * (one number and one unit: "90s", "30m", "2h", "7d", "2w") or ISO 8601
 * ("2026-11-24", "2026-11-24T21:50", "2026-11-24 21:50:03" in local time;
 * with "Z" or an offset such as "+01:00" in that zone). */
bool cw_dlq_parse_time(const char *s, int64_t now_ms, int64_t *out_ms);

/* ---- grouping ----------------------------------------------------------- */

/* The distinct reasons a group counts one by one; more are summed up. */
#define CW_DLQ_GROUP_REASONS 3

/* Messages counted by (type, error class), with their oldest and newest
 * failure and their reasons: the first CW_DLQ_GROUP_REASONS distinct ones
 * each with its count, the rest in `other_reasons`. */
typedef struct cw_dlq_group {
    char type[256];
    char error_class[32];
    uint64_t count;
    int64_t oldest_ms, newest_ms; /* 0 when no message of the group had a time */
    struct {
        char text[512];
        uint64_t count;
    } reasons[CW_DLQ_GROUP_REASONS];
    size_t n_reasons;
    uint64_t other_reasons; /* messages whose reason is none of those */
} cw_dlq_group;

typedef struct cw_dlq_groups {
    cw_dlq_group *g;
    size_t n, cap;
    size_t *slots; /* open-addressing index into g (SIZE_MAX: empty) */
    size_t n_slots;
} cw_dlq_groups;

/* Counts one message. CW_STATUS_NOMEM. */
int cw_dlq_groups_add(cw_dlq_groups *gs, const cw_dlq_msg *m);

/* Sorts the groups: most messages first, then by type and class. */
void cw_dlq_groups_sort(cw_dlq_groups *gs);

void cw_dlq_groups_free(cw_dlq_groups *gs);

/* ---- progress and interruption ------------------------------------------ */

/* What a long operation reports to whoever shows progress. */
typedef struct cw_dlq_progress {
    const char *what; /* "reading", "replaying", ... */
    uint64_t read;    /* messages of the snapshot read so far */
    uint64_t total;   /* the snapshot's count */
    uint64_t done;    /* messages moved (replayed, deleted, imported) */
} cw_dlq_progress;

typedef struct cw_dlq_ctl {
    /* Set (by a signal handler) to ask the operation to stop at the next
     * safe point: a batch in flight is finished first. May be NULL. */
    const volatile sig_atomic_t *stop;
    /* Called at most every few hundred ms; may be NULL. */
    void (*progress)(const cw_dlq_progress *p, void *ud);
    void *progress_data;
    /* Told what an operator should know that is not an error (another
     * consumer holds messages of the queue; the broker is slow to show the
     * requeued messages); may be NULL. */
    void (*notice)(const char *text, void *ud);
    void *notice_data;
} cw_dlq_ctl;

/* ---- browsing ----------------------------------------------------------- */

typedef struct cw_dlq_browser cw_dlq_browser;

/* Connects to the pool's broker, takes the snapshot of `queue` (the pool's
 * DLQ when NULL) and starts consuming it with manual acks. `name` shows in
 * the management UI ("compworker dlq list"). CW_STATUS_NOT_FOUND when the
 * queue does not exist (the message names it and the pool); connection
 * errors as cw__broker_connect(). Free with cw_dlq_browser_free(). */
int cw_dlq_browser_open(cw_dlq_browser **out, const cw_config *cfg, const char *queue,
                        const char *name, const cw_dlq_ctl *ctl);

/* The queue's name and the snapshot's count of messages. */
const char *cw_dlq_browser_queue(const cw_dlq_browser *b);
uint64_t cw_dlq_browser_total(const cw_dlq_browser *b);

/* Consumers the queue had besides this browser when it opened: messages
 * they hold unacked are not in the snapshot. */
uint32_t cw_dlq_browser_others(const cw_dlq_browser *b);

/* Reads the next message of the snapshot into *m (owned by the caller:
 * cw_dlq_msg_clear() it; clearing does not ack it). Returns 1 with a
 * message; 0 when the whole snapshot has been read, when the queue ran dry
 * before (messages held by another consumer: see cw_dlq_browser_missing())
 * or when ctl->stop was set; or a negative status (the connection or
 * channel closed, the queue was deleted). */
int cw_dlq_browser_next(cw_dlq_browser *b, cw_dlq_msg *m);

/* Messages of the snapshot that could not be read (held by another
 * consumer), known once next() returned 0. */
uint64_t cw_dlq_browser_missing(const cw_dlq_browser *b);

/* Removes a message read by this browser from the queue (basic.ack). The
 * message itself may have been cleared; its delivery tag is what counts. */
int cw_dlq_browser_remove(cw_dlq_browser *b, uint64_t delivery_tag);

/* Closes the connection: the broker puts every message read and not
 * removed back in the queue, in its place. Accepts NULL. */
void cw_dlq_browser_free(cw_dlq_browser *b);

/* Reads `queue` (NULL: the pool's DLQ) like cw_dlq_browser_open() and
 * next() until the end, calling `fn` for each message (borrowed for the
 * call; a non-zero return stops and is returned), then closes, leaving the
 * queue as it was. *total gets the snapshot's count, *missing (may be
 * NULL) what could not be read. CW_STATUS_INTERRUPTED when ctl->stop. */
int cw_dlq_browse(const cw_config *cfg, const char *queue, const char *name, const cw_dlq_ctl *ctl,
                  int (*fn)(cw_dlq_msg *m, void *ud), void *ud, uint64_t *total, uint64_t *missing);

/* ---- confirmed publishing with an outcome per message ------------------- */

typedef enum cw_move_state {
    CW_MOVE_PENDING = 0,
    CW_MOVE_CONFIRMED = 1, /* the broker confirmed it: it is at its destination */
    CW_MOVE_RETURNED = 2,  /* no queue was bound for its routing key */
    CW_MOVE_NACKED = 3     /* the broker could not take it */
} cw_move_state;

typedef struct cw_move_slot {
    uint64_t seq;
    char key[CW_MESSAGE_ID_MAX + 1]; /* its message ID (the key of a return) */
    cw_move_state state;
} cw_move_slot;

/* A channel in confirm mode that tells, message by message, whether a batch
 * arrived. Within one batch (between two cw_mover_reset()) message IDs must
 * be distinct: a basic.return is matched to its message by the ID. */
typedef struct cw_mover {
    amqp_connection_state_t conn;
    amqp_channel_t ch;
    uint64_t next_seq;
    cw_move_slot *slots;
    size_t n, cap;
    char last_return[256];
} cw_mover;

/* Opens channel `ch` of `conn` in confirm mode. */
int cw_mover_open(cw_mover *m, amqp_connection_state_t conn, amqp_channel_t ch);
void cw_mover_free(cw_mover *m);

/* Whether the batch already holds a message with this ID. */
bool cw_mover_has(const cw_mover *m, const char *message_id);

/* Publishes (mandatory) one message of the batch: slot m->n - 1 after. */
int cw_mover_send(cw_mover *m, const char *exchange, const char *routing_key,
                  const amqp_basic_properties_t *props, amqp_bytes_t body);

/* Waits until every message of the batch has an outcome in its slot, or
 * `timeout_ms`: 0, CW_STATUS_TIMEOUT, or CW_STATUS_CONNECTION /
 * CW_STATUS_BROKER_REFUSED when the connection or channel closed (slots
 * without an outcome stay PENDING: treat them as not moved). */
int cw_mover_wait(cw_mover *m, int timeout_ms);

/* Starts a new batch. */
void cw_mover_reset(cw_mover *m);

/* ---- replaying ---------------------------------------------------------- */

typedef enum cw_dlq_event_kind {
    CW_DLQ_EV_REPLAYED,     /* republished, confirmed, removed from the DLQ */
    CW_DLQ_EV_REFUSED_DONE, /* applied already (done in the store): kept */
    CW_DLQ_EV_REFUSED_BUSY, /* a copy is being handled now: kept */
    CW_DLQ_EV_FAILED,       /* could not be republished (detail says why): kept */
    CW_DLQ_EV_CANARY_OK,    /* a canary was applied */
    CW_DLQ_EV_CANARY_FAILED /* a canary failed again (detail: its error) */
} cw_dlq_event_kind;

typedef struct cw_dlq_event {
    cw_dlq_event_kind kind;
    const cw_dlq_msg *msg; /* the message (its envelope may be gone) */
    const char *detail;    /* "" or why */
    const char *exchange;  /* where to (REPLAYED, FAILED); may be NULL */
    const char *routing_key;
} cw_dlq_event;

/* Edits the body of a selected message before it is replayed (--edit).
 * Return 0 with *body / *len set to a new malloc'd body (the replay frees
 * it) or left NULL to keep the body; a negative status (with
 * cw_error_last() saying why) refuses: the message stays in the DLQ and the
 * replay stops. */
typedef int (*cw_dlq_edit_fn)(const cw_dlq_msg *m, char **body, size_t *len, void *ud);

#define CW_DLQ_REPLAY_OPTS_VERSION 1

typedef struct cw_dlq_replay_opts {
    unsigned version;
    const cw_dlq_filter *filter; /* the selection (an inactive one selects all) */
    bool dry_run;                /* only count what would be replayed, by group */
    bool force;                  /* replay tasks done in the store too */
    const char *to;              /* routing key on the pool's exchange instead of
                                 the original destination; NULL for the original */
    uint64_t limit;              /* replay at most this many (0: no limit) */
    unsigned canary;             /* replay this many first and wait for their outcome */
    int64_t canary_timeout_ms;
    double rate;         /* messages per second after the canaries (0: no limit) */
    cw_dlq_edit_fn edit; /* may be NULL */
    void *edit_data;
    void (*event)(const cw_dlq_event *e, void *ud); /* may be NULL */
    void *event_data;
    const cw_dlq_ctl *ctl; /* may be NULL */
} cw_dlq_replay_opts;

#define CW_DLQ_REPLAY_OPTS_INIT                                                                    \
    {                                                                                              \
        .version = CW_DLQ_REPLAY_OPTS_VERSION                                                      \
    }

typedef struct cw_dlq_replay_result {
    uint64_t total;        /* the snapshot's count */
    uint64_t read;         /* messages of the snapshot read */
    uint64_t selected;     /* read and selected */
    uint64_t replayed;     /* moved: confirmed at the destination, removed from the DLQ */
    uint64_t refused_done; /* kept: applied already (without force) */
    uint64_t refused_busy; /* kept: a copy is being handled */
    uint64_t failed;       /* kept: no destination, unroutable, nacked, edit refused */
    uint64_t left;         /* selected but not replayed: the canary stopped the replay,
                              the limit was reached, or it was interrupted */
    uint64_t missing;      /* of the snapshot, held by another consumer: not read */
    cw_dlq_groups groups;  /* what was (or, dry run, would be) replayed, by group */
    bool canary_failed;
    bool interrupted;
    char stopped[CW_DLQ_ERROR_MAX]; /* why the replay stopped early; "" if it did not */
    uint64_t duplicates;            /* of `replayed`: further copies of a task this replay
                              republished, removed without publishing them again */
} cw_dlq_replay_result;

/* Replays the selected messages of the pool's DLQ to their original
 * exchange and routing key (or o->to on the pool's exchange). For each, in
 * batches: the store's record is reopened (cw_store_reopen(); a done one is
 * refused unless force), the copy is published with its properties and
 * body, cw-attempt and the failure headers and the broker's x-death headers
 * removed, cw-replayed incremented; once the broker confirmed it, the DLQ
 * copy is acked. Messages not selected, refused or not confirmed stay in
 * the DLQ, in their place. A further copy of a message ID this replay has
 * republished already is removed without being published (counted in
 * replayed and in duplicates, reported as REPLAYED with a detail): the
 * store would not run it again anyway.
 *
 * Returns 0 when the replay ran to its end (res says what moved, which may
 * be less than was selected), or a status for a failure that stopped it
 * (res still counts what moved before). Free res->groups with
 * cw_dlq_groups_free(). */
int cw_dlq_replay(const cw_config *cfg, cw_store *store, const cw_dlq_replay_opts *o,
                  cw_dlq_replay_result *res);

/* Builds the properties a replay publishes for a dead-lettered message:
 * `in`'s, with its headers filtered (failure headers, x-death & co., and
 * cw-replayed dropped), cw-replayed = `replayed`, persistent. The headers
 * array is malloc'd into *entries (free() it after the publish). */
int cw_dlq_replay_props(const amqp_basic_properties_t *in, unsigned replayed,
                        amqp_basic_properties_t *out, amqp_table_entry_t **entries);

/* ---- deleting ----------------------------------------------------------- */

/* Reads the snapshot of the pool's DLQ, holds the messages the filter
 * selects, calls `confirm` with their count and groups (it returns true to
 * go on), then removes them. *deleted counts what was removed. Without a
 * confirmation nothing is removed (and 0 is returned). */
int cw_dlq_delete(const cw_config *cfg, const cw_dlq_filter *f, const cw_dlq_ctl *ctl,
                  bool (*confirm)(const cw_dlq_groups *gs, uint64_t n, void *ud), void *ud,
                  uint64_t *deleted, uint64_t *total);

/* ---- export and import (one JSON object per line) ----------------------- */

/* The export format's name and version, written into every line. */
#define CW_DLQ_EXPORT_FORMAT "compworker-dlq"
#define CW_DLQ_EXPORT_VERSION 1

/* The deepest headers an export holds: tables and arrays nested inside a
 * header value, CW_DLQ_MAX_DEPTH levels below it at most. */
#define CW_DLQ_MAX_DEPTH 256

/* Encodes a message as one line of JSON (no newline), lossless: the body
 * as base64, every property present, every header with its AMQP field type
 * (nested tables and arrays included) so that cw_dlq_import_line() builds
 * the same properties again. The broker's per-delivery x-delivery-count
 * header is left out. *out is malloc'd; free() it. CW_STATUS_NOMEM,
 * CW_STATUS_TOO_LARGE (a body over 1.5 GiB, or headers nested deeper than
 * CW_DLQ_MAX_DEPTH, which an import would refuse). */
int cw_dlq_export_line(const amqp_envelope_t *env, char **out, size_t *len);

/* Encodes a message as a json-c object (what cw_dlq_export_line() prints);
 * json_object_put() it. NULL when out of memory or when the headers nest
 * deeper than CW_DLQ_MAX_DEPTH. */
struct json_object *cw_dlq_export_object(const amqp_envelope_t *env);

/* A message decoded from an export line: properties and body, allocated in
 * its own pool. */
typedef struct cw_dlq_record {
    amqp_pool_t pool;
    amqp_basic_properties_t props;
    amqp_bytes_t body;
    char message_id[CW_MESSAGE_ID_MAX + 1]; /* for messages ("" when none) */
} cw_dlq_record;

/* Decodes one line. CW_STATUS_INVALID_MESSAGE with cw_error_last() naming
 * the field and what is wrong with it ("properties.headers[2].value: 300 is
 * out of range [0, 255]"). Clear *out with cw_dlq_record_clear() (also
 * after a failure). */
int cw_dlq_import_line(const char *line, size_t len, cw_dlq_record *out);
void cw_dlq_record_clear(cw_dlq_record *r);

/* Base64 (RFC 4648, with padding) of len bytes; malloc'd, NUL-terminated;
 * NULL when out of memory or too large. */
char *cw_dlq_base64(const void *data, size_t len);

/* Decodes base64 into a malloc'd buffer; false for text that is not
 * base64 (or out of memory: *out NULL then too). */
bool cw_dlq_unbase64(const char *text, size_t text_len, unsigned char **out, size_t *len);

/* ---- small shared helpers ----------------------------------------------- */

/* Connects to the pool's broker for a CLI operation (no heartbeat: an
 * operator's prompt may take long). `name` shows in the management UI. */
int cw__dlq_connect(amqp_connection_state_t *out, const cw_config *cfg, const char *name);

/* Whether a field value is an integer kind; its value into *out. */
bool cw__dlq_field_int(const amqp_field_value_t *v, int64_t *out);

/* Copies a string or byte-array field into dst (cut at a NUL or the size);
 * false (dst "") for other kinds. */
bool cw__dlq_field_str(const amqp_field_value_t *v, char *dst, size_t cap);

#endif
