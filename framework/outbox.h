/* Internal: the outbox table of the publisher's database — its SQL, for
 * cw_outbox_enqueue() (include/compworker/outbox.h), `compworker relay
 * init` and the relay (workers/relay.c).
 *
 * The table (default cw_outbox):
 *   id bigserial, message_id text (default a new UUID), type text,
 *   saga_id text NULL, body jsonb, routing_key text NULL (= type),
 *   headers jsonb NULL (an object of string, number, boolean values),
 *   created_at timestamptz; the relay's own: sent_at, failed_at, error.
 * A row is pending while sent_at and failed_at are NULL. A statement-level
 * trigger NOTIFYs the channel named after the table on every INSERT, which
 * PostgreSQL delivers when the transaction commits. */
#ifndef CW_FRAMEWORK_OUTBOX_H
#define CW_FRAMEWORK_OUTBOX_H

#include <stdbool.h>
#include <stddef.h>

/* The most bytes of a row's headers (as JSON text): with at most 64 of
 * them, their AMQP encoding fits one frame with the other properties. */
#define CW_OUTBOX_HEADERS_MAX 65536
#define CW_OUTBOX_HEADERS_MAX_S "65536"

/* Whether `table` is "name" or "schema.name" of [a-z_][a-z0-9_]*, the name
 * at most 48 bytes (the names made from it stay within PostgreSQL's 63);
 * why says what is wrong otherwise. */
bool cw__outbox_table_valid(const char *table, char *why, size_t why_len);

/* The statements for one table. */
typedef enum cw_outbox_stmt {
    CW_OB_CREATE = 0, /* the table, its indexes and trigger (several statements; run in a
                         transaction after CW_OB_LOCK) */
    CW_OB_LOCK,       /* the advisory lock that serialises CW_OB_CREATE across hosts */
    CW_OB_EXISTS,     /* one row, one column: whether the table exists ('t'/'f') */
    CW_OB_LISTEN,     /* LISTEN on the table's channel */
    CW_OB_CLAIM,      /* $1 batch, $2 the largest body (bytes): the pending rows this relay
                         may publish now, locked, in id order: id, message_id, type,
                         saga_id, body (NULL past $2), jsonb_typeof(body), routing_key,
                         headers (NULL past CW_OUTBOX_HEADERS_MAX), jsonb_typeof(headers),
                         the body's and the headers' bytes */
    CW_OB_SENT,       /* $1 ids (bigint[]) */
    CW_OB_FAILED,     /* $1 ids (bigint[]), $2 reasons (text[]) */
    CW_OB_SWEEP,      /* $1 retention (ms), $2 rows: removes up to $2 rows sent before */
    CW_OB_STATS,      /* pending rows, age of the oldest (s), failed rows */
    CW_OB_COUNT
} cw_outbox_stmt;

typedef struct cw_outbox_sql {
    char *sql[CW_OB_COUNT];
    char channel[64]; /* the NOTIFY channel: the table's name without its schema */
} cw_outbox_sql;

/* Builds the statements of `table` (valid: cw__outbox_table_valid()).
 * CW_STATUS_NOMEM. Free with cw__outbox_sql_free(). */
int cw__outbox_sql_build(cw_outbox_sql *q, const char *table);
void cw__outbox_sql_free(cw_outbox_sql *q);

#endif
