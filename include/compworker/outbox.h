/* compworker — the transactional outbox: publishing compensations only if
 * the publisher's own transaction commits.
 *
 *     PGconn *db = ...;                       // the service's database
 *     PQexec(db, "BEGIN");
 *     PQexec(db, "UPDATE orders SET state = 'failed' WHERE id = 42");
 *     cw_publish_opts o = CW_PUBLISH_OPTS_INIT;
 *     o.type = "payment.refund";
 *     o.saga_id = "order-42";
 *     o.body = "{\"payment_id\":\"p-1\",\"amount_cents\":1200}";
 *     char id[CW_MESSAGE_ID_MAX + 1];
 *     if (cw_outbox_enqueue(db, NULL, &o, id, sizeof id) < 0)
 *         rollback_and_report(cw_error_last());
 *     PQexec(db, "COMMIT");
 *
 * The row is a task of the message contract waiting in the outbox table
 * (made by `compworker relay init`). `compworker relay` publishes it to the
 * pool's exchange with publisher confirms once the transaction has
 * committed, and never if it rolled back; a saga's rows are published in
 * the order they were enqueued. A row may be published more than once
 * (a relay killed between the broker's confirm and its own commit), always
 * with the same message ID, which the worker pool applies once.
 */
#ifndef COMPWORKER_OUTBOX_H
#define COMPWORKER_OUTBOX_H

#include <stddef.h>

#include "client.h"
#include "export.h"
#include "status.h"

#ifdef __cplusplus
extern "C" {
#endif

struct pg_conn; /* libpq's PGconn: include <libpq-fe.h> to use it */

/** The outbox table `compworker relay init` creates by default. */
#define CW_OUTBOX_TABLE "cw_outbox"

/** Inserts one task into the outbox table on `conn`, in whatever
 *  transaction `conn` is in: call it between the caller's BEGIN and COMMIT,
 *  beside the business change it belongs to (outside a transaction the row
 *  commits at once, which defeats the outbox). Checks the task as
 *  cw_client_publish() does before writing anything.
 *
 *  @param conn           a libpq connection to the publisher's database
 *                        (borrowed; compworker neither begins, commits nor
 *                        closes anything on it)
 *  @param table          the outbox table, "name" or "schema.name" of
 *                        lower-case letters, digits and '_'; NULL for
 *                        CW_OUTBOX_TABLE
 *  @param opts           the task (borrowed): type, saga_id, message_id
 *                        (NULL: a new UUIDv7, as cw_client_publish()
 *                        makes), body, body_len, routing_key
 *                        (NULL: the type); confirm_timeout_ms is not used
 *  @param message_id_out receives the message ID (the given one or the
 *                        UUID), NUL-terminated; may be NULL
 *  @param out_len        size of `message_id_out`; at least
 *                        CW_MESSAGE_ID_MAX + 1 to hold any ID
 *  @return 0 once the row is written (it is sent only if the transaction
 *          commits); CW_STATUS_INVALID_ARG (a bad table name, type, body,
 *          message ID or saga ID, options of version 0 or newer than this
 *          library); CW_STATUS_STORE when the database refused the INSERT
 *          (no such table: run `compworker relay init`; the transaction is
 *          then aborted and must be rolled back). cw_error_last() says why.
 *  Thread-safety: as libpq's, one connection per thread at a time.
 *  Fork-safety: as libpq's, a connection is not used in both parent and
 *  child. */
CW_EXTERN int cw_outbox_enqueue(struct pg_conn *conn, const char *table,
                                const cw_publish_opts *opts, char *message_id_out, size_t out_len);

#ifdef __cplusplus
}
#endif
#endif
