/* order-saga example — plugin "cancel-shipment": compensates "book shipment".
 *
 * Handles tasks of type shipment.cancel with the body
 *
 *     {"order_id": "ord-0001", "shipment_id": "shp-0001"}
 *
 * A booked shipment becomes cancelled. Cancelling one that is already
 * cancelled succeeds without a new effect (the effect is idempotent by
 * nature). A delivered shipment cannot be cancelled any more: the task fails
 * and an operator decides (a return, a refund of shipping...).
 *
 * Configuration ([plugin cancel-shipment] in the pool file):
 *     ledger = /path/to/ledger.db    (else $ORDER_SAGA_LEDGER, else var/ledger.db)
 */
#include <stdio.h>
#include <string.h>

#include <compworker/compworker.h>

#include "ledger.h"

CW_PLUGIN_DECLARE("cancel-shipment", "1.0.0");

static const char select_shipment_sql[] =
    "SELECT order_id, status FROM shipments WHERE shipment_id = ?1";
static const char cancel_sql[] =
    "UPDATE shipments SET status = 'cancelled' WHERE shipment_id = ?1 AND status = 'booked'";

/* What the ledger says of a shipment. */
typedef enum shipment_state {
    SHIPMENT_BOOKED,
    SHIPMENT_CANCELLED,
    SHIPMENT_DELIVERED
} shipment_state;

/* Reads the shipment inside the open transaction. Returns CW_OK with *state
 * set, or the outcome of a failed task. */
static cw_outcome read_shipment(cw_task *task, sqlite3 *db, const char *shipment_id,
                                const char *order_id, shipment_state *state)
{
    sqlite3_stmt *st;
    const char *owner, *status;
    cw_outcome outcome = CW_OK;
    int rc = sqlite3_prepare_v2(db, select_shipment_sql, -1, &st, NULL);

    if (rc != SQLITE_OK)
        return ledger_failure(task, db, rc, "read");
    sqlite3_bind_text(st, 1, shipment_id, -1, SQLITE_STATIC);
    rc = sqlite3_step(st);
    if (rc == SQLITE_DONE) {
        outcome = cw_task_fail(task, "unknown shipment %s", shipment_id);
        goto out_finalize;
    }
    if (rc != SQLITE_ROW) {
        outcome = ledger_failure(task, db, rc, "read");
        goto out_finalize;
    }
    owner = (const char *)sqlite3_column_text(st, 0);
    status = (const char *)sqlite3_column_text(st, 1);
    if (strcmp(owner, order_id) != 0)
        outcome = cw_task_fail(task, "shipment %s belongs to order %s, not %s", shipment_id, owner,
                               order_id);
    else if (strcmp(status, "booked") == 0)
        *state = SHIPMENT_BOOKED;
    else if (strcmp(status, "cancelled") == 0)
        *state = SHIPMENT_CANCELLED;
    else if (strcmp(status, "delivered") == 0)
        *state = SHIPMENT_DELIVERED;
    else
        outcome = cw_task_fail(task, "shipment %s has an unknown status %s", shipment_id, status);

out_finalize:
    sqlite3_finalize(st);
    return outcome;
}

static cw_outcome cancel_shipment(cw_task *task, void *user_data)
{
    char err[512];
    ledger_tx tx;
    sqlite3 *db;
    struct json_object *body = cw_task_payload(task);
    const char *order_id = ledger_field_string(body, "order_id");
    const char *shipment_id = ledger_field_string(body, "shipment_id");
    shipment_state state = SHIPMENT_BOOKED;
    sqlite3_stmt *st;
    char detail[256];
    cw_outcome outcome;
    int rc;

    if (order_id == NULL)
        return cw_task_fail(task, "shipment.cancel: \"order_id\" must be a non-empty string");
    if (shipment_id == NULL)
        return cw_task_fail(task, "shipment.cancel: \"shipment_id\" must be a non-empty string");

    ledger_gateway_call(user_data);
    rc = ledger_start(user_data, task, &tx, err, sizeof err);
    if (rc != SQLITE_OK)
        return cw_task_retry(task, "ledger: %s", err);
    db = tx.db;

    outcome = read_shipment(task, db, shipment_id, order_id, &state);
    if (outcome != CW_OK)
        goto out_rollback;
    if (state == SHIPMENT_CANCELLED)
        goto out_rollback; /* already undone: nothing to apply, nothing to record */
    if (state == SHIPMENT_DELIVERED) {
        outcome = cw_task_fail(task, "shipment %s already delivered", shipment_id);
        goto out_rollback;
    }

    rc = sqlite3_prepare_v2(db, cancel_sql, -1, &st, NULL);
    if (rc != SQLITE_OK) {
        outcome = ledger_failure(task, db, rc, "update");
        goto out_rollback;
    }
    sqlite3_bind_text(st, 1, shipment_id, -1, SQLITE_STATIC);
    rc = sqlite3_step(st);
    sqlite3_finalize(st);
    if (rc != SQLITE_DONE) {
        outcome = ledger_failure(task, db, rc, "update");
        goto out_rollback;
    }

    snprintf(detail, sizeof detail, "cancelled shipment %s", shipment_id);
    rc = ledger_add_effect(db, cw_task_message_id(task), "cancel", order_id, detail);
    if (rc != SQLITE_OK) {
        outcome = ledger_failure(task, db, rc, "insert");
        goto out_rollback;
    }
    rc = ledger_finish(&tx);
    if (rc != SQLITE_OK)
        return ledger_failure(task, db, rc, "commit");
    return CW_OK;

out_rollback:
    ledger_abandon(&tx);
    return outcome;
}

int cw_plugin_init(cw_registry *reg)
{
    ledger_pool *db;
    cw_handler_opts opts = CW_HANDLER_OPTS_INIT;

    if (ledger_open_for_plugin(reg, "cancel-shipment", &db) < 0)
        return -1;
    /* Each handler thread has a ledger connection of its own. */
    opts.concurrent = 1;
    if (cw_register_handler_opts(reg, "shipment.cancel", cancel_shipment, db, &opts) < 0 ||
        cw_register_teardown(reg, ledger_teardown, db) < 0) {
        fprintf(stderr, "cancel-shipment: %s\n", cw_error_last());
        ledger_teardown(db);
        return -1;
    }
    return 0;
}
