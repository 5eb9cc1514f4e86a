/* order-saga example — plugin "restock": compensates "reserve stock".
 *
 * Handles tasks of type inventory.restock with the body
 *
 *     {"order_id": "ord-0001", "sku": "SKU-TEAPOT", "qty": 2}
 *
 * and puts `qty` units of `sku` back on hand in the ledger. A malformed body
 * or an unknown SKU fails the task; a busy or full ledger retries it.
 *
 * Configuration ([plugin restock] in the pool file):
 *     ledger = /path/to/ledger.db    (else $ORDER_SAGA_LEDGER, else var/ledger.db)
 */
#include <inttypes.h>
#include <stdio.h>

#include <compworker/compworker.h>

#include "ledger.h"

CW_PLUGIN_DECLARE("restock", "1.0.0");

/* Most units one task may put back. */
#define RESTOCK_MAX_QTY INT64_C(1000000)

static const char restock_sql[] = "UPDATE stock SET on_hand = on_hand + ?2 WHERE sku = ?1";

static cw_outcome restock(cw_task *task, void *user_data)
{
    char err[512];
    ledger_tx tx;
    sqlite3 *db;
    struct json_object *body = cw_task_payload(task);
    const char *order_id = ledger_field_string(body, "order_id");
    const char *sku = ledger_field_string(body, "sku");
    sqlite3_stmt *st;
    int64_t qty;
    char detail[256];
    cw_outcome outcome;
    int rc;

    if (order_id == NULL)
        return cw_task_fail(task, "inventory.restock: \"order_id\" must be a non-empty string");
    if (sku == NULL)
        return cw_task_fail(task, "inventory.restock: \"sku\" must be a non-empty string");
    if (!ledger_field_count(body, "qty", RESTOCK_MAX_QTY, &qty))
        return cw_task_fail(task,
                            "inventory.restock: \"qty\" must be an integer between 1 and %" PRId64,
                            RESTOCK_MAX_QTY);

    ledger_gateway_call(user_data);
    rc = ledger_start(user_data, task, &tx, err, sizeof err);
    if (rc != SQLITE_OK)
        return cw_task_retry(task, "ledger: %s", err);
    db = tx.db;

    rc = sqlite3_prepare_v2(db, restock_sql, -1, &st, NULL);
    if (rc != SQLITE_OK) {
        outcome = ledger_failure(task, db, rc, "update");
        goto out_rollback;
    }
    sqlite3_bind_text(st, 1, sku, -1, SQLITE_STATIC);
    sqlite3_bind_int64(st, 2, qty);
    rc = sqlite3_step(st);
    sqlite3_finalize(st);
    if (rc != SQLITE_DONE) {
        outcome = ledger_failure(task, db, rc, "update");
        goto out_rollback;
    }
    if (sqlite3_changes(db) == 0) {
        outcome = cw_task_fail(task, "unknown sku %s", sku);
        goto out_rollback;
    }

    snprintf(detail, sizeof detail, "restocked %" PRId64 " x %s", qty, sku);
    rc = ledger_add_effect(db, cw_task_message_id(task), "restock", order_id, detail);
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

    if (ledger_open_for_plugin(reg, "restock", &db) < 0)
        return -1;
    /* Each handler thread has a ledger connection of its own. */
    opts.concurrent = 1;
    if (cw_register_handler_opts(reg, "inventory.restock", restock, db, &opts) < 0 ||
        cw_register_teardown(reg, ledger_teardown, db) < 0) {
        fprintf(stderr, "restock: %s\n", cw_error_last());
        ledger_teardown(db);
        return -1;
    }
    return 0;
}
