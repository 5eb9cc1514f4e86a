/* order-saga example — plugin "refund": compensates "take payment".
 *
 * Handles tasks of type payment.refund with the body
 *
 *     {"order_id": "ord-0001", "payment_id": "pay-0001", "amount_cents": 1200}
 *
 * and refunds `amount_cents` of the payment in the ledger. A body that is not
 * what the type promises, an unknown payment, a payment of another order or a
 * refund larger than what is left to refund can never succeed, so they fail
 * the task (it goes to the dead-letter queue for an operator). A ledger that
 * is busy or full is a transient condition: the task is retried later.
 *
 * Configuration ([plugin refund] in the pool file):
 *     ledger = /path/to/ledger.db    (else $ORDER_SAGA_LEDGER, else var/ledger.db)
 *     gateway_timeouts = pay-0003 pay-0007
 *         payments whose first refund attempt meets a payment gateway that
 *         times out (a transient failure: the task is retried with backoff
 *         and succeeds) — the demo's stand-in for a flaky downstream service
 */
#include <inttypes.h>
#include <stdbool.h>
#include <stdio.h>
#include <string.h>

#include <compworker/compworker.h>

#include "ledger.h"

CW_PLUGIN_DECLARE("refund", "1.0.0");

/* Largest refund accepted in one task: 1e12 cents. */
#define REFUND_MAX_CENTS INT64_C(1000000000000)

static const char select_payment_sql[] =
    "SELECT order_id, amount_cents, refunded_cents FROM payments WHERE payment_id = ?1";
static const char update_payment_sql[] =
    "UPDATE payments SET refunded_cents = refunded_cents + ?2 WHERE payment_id = ?1";

/* The [plugin refund] gateway_timeouts setting, copied at init. */
static char gateway_timeouts[1024];

/* Whether `payment_id` is a whole word of gateway_timeouts. */
static bool gateway_times_out(const char *payment_id)
{
    size_t n = strlen(payment_id);
    for (const char *p = strstr(gateway_timeouts, payment_id); p; p = strstr(p + 1, payment_id)) {
        bool starts = p == gateway_timeouts || p[-1] == ' ';
        bool ends = p[n] == '\0' || p[n] == ' ';
        if (starts && ends)
            return true;
    }
    return false;
}

static cw_outcome refund(cw_task *task, void *user_data)
{
    char err[512];
    ledger_tx tx;
    sqlite3 *db;
    struct json_object *body = cw_task_payload(task);
    const char *order_id = ledger_field_string(body, "order_id");
    const char *payment_id = ledger_field_string(body, "payment_id");
    sqlite3_stmt *st = NULL;
    int64_t amount, paid, refunded;
    char detail[256];
    cw_outcome outcome;
    int rc;

    if (order_id == NULL)
        return cw_task_fail(task, "payment.refund: \"order_id\" must be a non-empty string");
    if (payment_id == NULL)
        return cw_task_fail(task, "payment.refund: \"payment_id\" must be a non-empty string");
    if (!ledger_field_count(body, "amount_cents", REFUND_MAX_CENTS, &amount))
        return cw_task_fail(task,
                            "payment.refund: \"amount_cents\" must be an integer"
                            " between 1 and %" PRId64,
                            REFUND_MAX_CENTS);

    if (cw_task_attempt(task) == 0 && gateway_times_out(payment_id))
        return cw_task_retry(task, "payment gateway timed out refunding %s", payment_id);

    ledger_gateway_call(user_data);
    rc = ledger_start(user_data, task, &tx, err, sizeof err);
    if (rc != SQLITE_OK)
        return cw_task_retry(task, "ledger: %s", err);
    db = tx.db;

    rc = sqlite3_prepare_v2(db, select_payment_sql, -1, &st, NULL);
    if (rc != SQLITE_OK) {
        outcome = ledger_failure(task, db, rc, "read");
        goto out_rollback;
    }
    sqlite3_bind_text(st, 1, payment_id, -1, SQLITE_STATIC);
    rc = sqlite3_step(st);
    if (rc == SQLITE_DONE) {
        outcome = cw_task_fail(task, "unknown payment %s", payment_id);
        goto out_finalize;
    }
    if (rc != SQLITE_ROW) {
        outcome = ledger_failure(task, db, rc, "read");
        goto out_finalize;
    }
    paid = sqlite3_column_int64(st, 1);
    refunded = sqlite3_column_int64(st, 2);
    if (strcmp((const char *)sqlite3_column_text(st, 0), order_id) != 0) {
        outcome = cw_task_fail(task, "payment %s belongs to order %s, not %s", payment_id,
                               (const char *)sqlite3_column_text(st, 0), order_id);
        goto out_finalize;
    }
    sqlite3_finalize(st);
    st = NULL;
    if (amount > paid - refunded) {
        outcome = cw_task_fail(task,
                               "refund of %" PRId64 " cents exceeds the %" PRId64
                               " cents left to refund on payment %s",
                               amount, paid - refunded, payment_id);
        goto out_rollback;
    }

    rc = sqlite3_prepare_v2(db, update_payment_sql, -1, &st, NULL);
    if (rc != SQLITE_OK) {
        outcome = ledger_failure(task, db, rc, "update");
        goto out_rollback;
    }
    sqlite3_bind_text(st, 1, payment_id, -1, SQLITE_STATIC);
    sqlite3_bind_int64(st, 2, amount);
    rc = sqlite3_step(st);
    sqlite3_finalize(st);
    st = NULL;
    if (rc != SQLITE_DONE) {
        outcome = ledger_failure(task, db, rc, "update");
        goto out_rollback;
    }

    snprintf(detail, sizeof detail, "refunded %" PRId64 " of %" PRId64 " cents on payment %s",
             amount, paid, payment_id);
    rc = ledger_add_effect(db, cw_task_message_id(task), "refund", order_id, detail);
    if (rc != SQLITE_OK) {
        outcome = ledger_failure(task, db, rc, "insert");
        goto out_rollback;
    }
    rc = ledger_finish(&tx);
    if (rc != SQLITE_OK)
        return ledger_failure(task, db, rc, "commit");
    return CW_OK;

out_finalize:
    sqlite3_finalize(st);
out_rollback:
    ledger_abandon(&tx);
    return outcome;
}

int cw_plugin_init(cw_registry *reg)
{
    ledger_pool *db;
    cw_handler_opts opts = CW_HANDLER_OPTS_INIT;

    if (ledger_open_for_plugin(reg, "refund", &db) < 0)
        return -1;
    snprintf(gateway_timeouts, sizeof gateway_timeouts, "%s",
             cw_registry_setting(reg, "gateway_timeouts", ""));
    /* Each handler thread has a ledger connection of its own. */
    opts.concurrent = 1;
    if (cw_register_handler_opts(reg, "payment.refund", refund, db, &opts) < 0 ||
        cw_register_teardown(reg, ledger_teardown, db) < 0) {
        fprintf(stderr, "refund: %s\n", cw_error_last());
        ledger_teardown(db);
        return -1;
    }
    return 0;
}
