/* order-saga example — the demo publisher.
 *
 *   order-saga-publish [--url URL] [--exchange NAME] [--ledger PATH]
 *                      [--orders N] [--seed S] [--outbox PG_URL]
 *
 * Plays the saga orchestrator after a batch of orders failed half-way: every
 * order had its payment taken, its stock reserved and its shipment booked, so
 * each needs three compensations. It resets the ledger to that state, then
 * publishes for every order a payment.refund, an inventory.restock and a
 * shipment.cancel (saga ID "saga-<order>") with cw_client_publish(). To show
 * what compworker guarantees, about one message in ten is published a second
 * time with the same message ID (as a publisher retrying after a lost confirm
 * would), two refunds name a payment the ledger does not know and one
 * shipment is already delivered: those three must end in the dead-letter
 * queue. What must happen is written next to the ledger, in
 * LEDGER.expected.json, for order-saga-report.
 *
 * With --outbox, it plays the order service that owns the saga instead:
 * for each task, in one transaction of the service's PostgreSQL database,
 * it marks the order "compensating" (its business change, in table
 * order_saga_orders) and enqueues the task in the outbox table with
 * cw_outbox_enqueue(); `compworker relay` publishes what committed. A
 * crash between the two can then neither lose a compensation nor send one
 * for an order that was never marked.
 *
 * Everything is derived from --seed, so a run can be repeated exactly (the
 * message IDs are fresh UUIDs each time).
 */
#define _POSIX_C_SOURCE 200809L

#include <errno.h>
#include <inttypes.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <json-c/json.h>

#include <compworker/client.h>
#include <compworker/compworker.h>
#include <compworker/outbox.h>
#include <libpq-fe.h>

#include "ledger.h"

#define DEFAULT_URL "amqp://guest:guest@127.0.0.1:5672/"
#define DEFAULT_EXCHANGE "cw.tasks"
#define DEFAULT_ORDERS 50
#define MAX_ORDERS 100000
#define N_UNKNOWN_PAYMENTS 2

enum {
    EXIT_USAGE = 2,
    HELP_SHOWN = -1
};

typedef struct options {
    const char *url;
    const char *exchange;
    const char *ledger;
    unsigned orders;
    uint64_t seed;
    const char *outbox; /* the service's database (libpq URI), or NULL */
} options;

/* What the catalogue holds before the saga reserved anything. */
typedef struct sku_stock {
    const char *sku;
    int64_t on_hand;
    int64_t restocked; /* units the valid restocks put back */
} sku_stock;

typedef struct order {
    char order_id[32];
    char saga_id[48];
    char payment_id[32];
    char refund_payment_id[48]; /* what the refund names: payment_id, or an unknown one */
    char shipment_id[32];
    sku_stock *sku;
    int64_t amount_cents;
    int64_t qty;
    bool delivered; /* the shipment reached the customer before the saga failed */
} order;

typedef enum task_kind {
    KIND_REFUND = 0,
    KIND_RESTOCK = 1,
    KIND_CANCEL = 2
} task_kind;

static const char *const kind_names[] = {"refund", "restock", "cancel"};
static const char *const kind_types[] = {"payment.refund", "inventory.restock", "shipment.cancel"};

typedef struct task {
    task_kind kind;
    const order *order;
    char *body;                             /* JSON text, malloc'd */
    char message_id[CW_MESSAGE_ID_MAX + 1]; /* set by the first publish */
    char dead_reason[128];                  /* why it must fail; "" if it must apply */
} task;

/* One publish: of tasks[task], the first time or again (a duplicate). */
typedef struct slot {
    size_t task;
    uint64_t pos; /* publish order: after the original number pos - 1 */
    uint64_t tie; /* 0 for an original, random for a duplicate */
    bool duplicate;
} slot;

typedef struct saga_batch {
    order *orders;
    size_t n_orders;
    task *tasks;
    size_t n_tasks;
    slot *slots;
    size_t n_slots;
    size_t n_dead;
    size_t applied_by_kind[3];
    int64_t refunded_cents;
    size_t cancelled;
} saga_batch;

static sku_stock catalogue[] = {
    {"SKU-TEAPOT", 40, 0},  {"SKU-KETTLE", 25, 0}, {"SKU-MUG", 300, 0},
    {"SKU-SAUCER", 180, 0}, {"SKU-TRAY", 60, 0},   {"SKU-INFUSER", 90, 0},
};
#define N_SKUS (sizeof catalogue / sizeof catalogue[0])

/* splitmix64: small, good enough, and the same on every platform. */
static uint64_t rng_next(uint64_t *state)
{
    uint64_t z = (*state += UINT64_C(0x9E3779B97F4A7C15));

    z = (z ^ (z >> 30)) * UINT64_C(0xBF58476D1CE4E5B9);
    z = (z ^ (z >> 27)) * UINT64_C(0x94D049BB133111EB);
    return z ^ (z >> 31);
}

static uint64_t rng_below(uint64_t *state, uint64_t n)
{
    return rng_next(state) % n;
}

static void usage(FILE *to)
{
    fprintf(to,
            "usage: order-saga-publish [--url URL] [--exchange NAME] [--ledger PATH]\n"
            "                          [--orders N] [--seed S] [--outbox PG_URL]\n"
            "\n"
            "Resets the order-saga ledger to N orders whose saga failed and publishes\n"
            "their compensations (refund, restock, cancel shipment), with duplicates\n"
            "and three tasks that must be dead-lettered. Writes PATH.expected.json.\n"
            "\n"
            "  --url URL        broker (default $CW_AMQP_URL, else %s)\n"
            "  --exchange NAME  tasks exchange (default %s)\n"
            "  --ledger PATH    ledger file (default $%s, else %s)\n"
            "  --orders N       failed orders, 3..%d (default %d)\n"
            "  --seed S         random seed (default 1)\n"
            "  --outbox PG_URL  enqueue each task in the outbox table cw_outbox of this\n"
            "                   database, in the transaction that marks its order (for\n"
            "                   compworker relay to publish), instead of publishing it\n",
            DEFAULT_URL, DEFAULT_EXCHANGE, LEDGER_ENV, LEDGER_DEFAULT_PATH, MAX_ORDERS,
            DEFAULT_ORDERS);
}

static bool parse_u64(const char *s, uint64_t max, uint64_t *out)
{
    char *end;
    unsigned long long v;

    if (s[0] < '0' || s[0] > '9')
        return false;
    errno = 0;
    v = strtoull(s, &end, 10);
    if (errno != 0 || *end != '\0' || v > max)
        return false;
    *out = v;
    return true;
}

/* Returns 0, HELP_SHOWN, or EXIT_USAGE. */
static int parse_options(int argc, char **argv, options *o)
{
    const char *env = getenv("CW_AMQP_URL");
    uint64_t n;

    o->url = env != NULL && env[0] != '\0' ? env : DEFAULT_URL;
    o->exchange = DEFAULT_EXCHANGE;
    o->ledger = ledger_path(NULL);
    o->orders = DEFAULT_ORDERS;
    o->seed = 1;
    o->outbox = NULL;

    for (int i = 1; i < argc;) {
        const char *arg = argv[i++];
        const char *val = i < argc ? argv[i] : NULL;

        if (strcmp(arg, "-h") == 0 || strcmp(arg, "--help") == 0) {
            usage(stdout);
            return HELP_SHOWN;
        }
        if (val == NULL) {
            fprintf(stderr, "order-saga-publish: unknown option or missing value: %s\n", arg);
            usage(stderr);
            return EXIT_USAGE;
        }
        i++;
        if (strcmp(arg, "--url") == 0) {
            o->url = val;
        } else if (strcmp(arg, "--exchange") == 0) {
            o->exchange = val;
        } else if (strcmp(arg, "--ledger") == 0) {
            o->ledger = val;
        } else if (strcmp(arg, "--outbox") == 0) {
            o->outbox = val;
        } else if (strcmp(arg, "--orders") == 0) {
            if (!parse_u64(val, MAX_ORDERS, &n) || n < 3) {
                fprintf(stderr, "order-saga-publish: --orders: '%s' is not between 3 and %d\n", val,
                        MAX_ORDERS);
                return EXIT_USAGE;
            }
            o->orders = (unsigned)n;
        } else if (strcmp(arg, "--seed") == 0) {
            if (!parse_u64(val, UINT64_MAX, &o->seed)) {
                fprintf(stderr, "order-saga-publish: --seed: '%s' is not a number\n", val);
                return EXIT_USAGE;
            }
        } else {
            fprintf(stderr, "order-saga-publish: unknown option: %s\n", arg);
            usage(stderr);
            return EXIT_USAGE;
        }
    }
    return 0;
}

static char *task_body(const task *t)
{
    const order *o = t->order;
    struct json_object *b = json_object_new_object();
    char *text = NULL;

    if (b == NULL)
        return NULL;
    json_object_object_add(b, "order_id", json_object_new_string(o->order_id));
    switch (t->kind) {
    case KIND_REFUND:
        json_object_object_add(b, "payment_id", json_object_new_string(o->refund_payment_id));
        json_object_object_add(b, "amount_cents", json_object_new_int64(o->amount_cents));
        break;
    case KIND_RESTOCK:
        json_object_object_add(b, "sku", json_object_new_string(o->sku->sku));
        json_object_object_add(b, "qty", json_object_new_int64(o->qty));
        break;
    case KIND_CANCEL:
        json_object_object_add(b, "shipment_id", json_object_new_string(o->shipment_id));
        break;
    }
    text = strdup(json_object_to_json_string_ext(b, JSON_C_TO_STRING_PLAIN));
    json_object_put(b);
    return text;
}

static int compare_slots(const void *pa, const void *pb)
{
    const slot *a = pa, *b = pb;

    if (a->pos != b->pos)
        return a->pos < b->pos ? -1 : 1;
    if (a->tie != b->tie)
        return a->tie < b->tie ? -1 : 1;
    return a->task < b->task ? -1 : a->task > b->task;
}

static void batch_free(saga_batch *b)
{
    for (size_t i = 0; i < b->n_tasks; i++)
        free(b->tasks[i].body);
    free(b->tasks);
    free(b->orders);
    free(b->slots);
}

/* Builds the orders, their tasks and the publish order. Returns 0 or -1 (out
 * of memory). */
static int batch_build(saga_batch *b, unsigned n_orders, uint64_t seed)
{
    uint64_t rng = seed;
    size_t n_dup, *pick;
    size_t picked[N_UNKNOWN_PAYMENTS + 1];

    memset(b, 0, sizeof *b);
    for (size_t s = 0; s < N_SKUS; s++)
        catalogue[s].restocked = 0;
    b->n_orders = n_orders;
    b->n_tasks = 3 * (size_t)n_orders;
    n_dup = (b->n_tasks + 5) / 10;
    b->orders = calloc(b->n_orders, sizeof *b->orders);
    b->tasks = calloc(b->n_tasks, sizeof *b->tasks);
    b->slots = calloc(b->n_tasks + n_dup, sizeof *b->slots);
    pick = calloc(b->n_tasks, sizeof *pick);
    if (b->orders == NULL || b->tasks == NULL || b->slots == NULL || pick == NULL)
        goto out_nomem;

    for (size_t i = 0; i < b->n_orders; i++) {
        order *o = &b->orders[i];

        snprintf(o->order_id, sizeof o->order_id, "ord-%04zu", i + 1);
        snprintf(o->saga_id, sizeof o->saga_id, "saga-%s", o->order_id);
        snprintf(o->payment_id, sizeof o->payment_id, "pay-%04zu", i + 1);
        snprintf(o->refund_payment_id, sizeof o->refund_payment_id, "%s", o->payment_id);
        snprintf(o->shipment_id, sizeof o->shipment_id, "shp-%04zu", i + 1);
        o->sku = &catalogue[rng_below(&rng, N_SKUS)];
        o->amount_cents = 500 + (int64_t)rng_below(&rng, 49500);
        o->qty = 1 + (int64_t)rng_below(&rng, 4);
    }

    /* Three different orders go wrong: two refunds name a payment the ledger
     * never recorded, and one shipment was delivered before the saga failed. */
    for (size_t i = 0; i < b->n_orders; i++)
        pick[i] = i;
    for (size_t i = 0; i < N_UNKNOWN_PAYMENTS + 1; i++) {
        size_t j = i + (size_t)rng_below(&rng, b->n_orders - i), t = pick[i];

        pick[i] = pick[j];
        pick[j] = t;
        picked[i] = pick[i];
    }
    for (size_t i = 0; i < N_UNKNOWN_PAYMENTS; i++) {
        order *o = &b->orders[picked[i]];

        snprintf(o->refund_payment_id, sizeof o->refund_payment_id, "%s-x", o->payment_id);
    }
    b->orders[picked[N_UNKNOWN_PAYMENTS]].delivered = true;

    for (size_t i = 0; i < b->n_tasks; i++) {
        task *t = &b->tasks[i];
        const order *o = &b->orders[i / 3];

        t->kind = (task_kind)(i % 3);
        t->order = o;
        t->body = task_body(t);
        if (t->body == NULL)
            goto out_nomem;
        if (t->kind == KIND_REFUND && strcmp(o->refund_payment_id, o->payment_id) != 0)
            snprintf(t->dead_reason, sizeof t->dead_reason, "unknown payment %s",
                     o->refund_payment_id);
        else if (t->kind == KIND_CANCEL && o->delivered)
            snprintf(t->dead_reason, sizeof t->dead_reason, "shipment %s already delivered",
                     o->shipment_id);
        if (t->dead_reason[0] != '\0') {
            b->n_dead++;
            continue;
        }
        b->applied_by_kind[t->kind]++;
        if (t->kind == KIND_REFUND)
            b->refunded_cents += o->amount_cents;
        else if (t->kind == KIND_RESTOCK)
            o->sku->restocked += o->qty;
        else
            b->cancelled++;
    }

    /* Originals in order; each duplicate somewhere after its original. */
    for (size_t i = 0; i < b->n_tasks; i++) {
        b->slots[i].task = i;
        b->slots[i].pos = i;
        pick[i] = i;
    }
    for (size_t d = 0; d < n_dup; d++) {
        size_t j = d + (size_t)rng_below(&rng, b->n_tasks - d), t = pick[d];
        slot *s = &b->slots[b->n_tasks + d];

        pick[d] = pick[j];
        pick[j] = t;
        s->task = pick[d];
        s->pos = pick[d] + 1 + rng_below(&rng, b->n_tasks - pick[d]);
        s->tie = 1 + rng_below(&rng, UINT64_MAX - 1);
        s->duplicate = true;
    }
    b->n_slots = b->n_tasks + n_dup;
    qsort(b->slots, b->n_slots, sizeof *b->slots, compare_slots);
    free(pick);
    return 0;

out_nomem:
    free(pick);
    batch_free(b);
    return -1;
}

static int bind_exec(sqlite3_stmt *st)
{
    int rc = sqlite3_step(st);

    sqlite3_reset(st);
    sqlite3_clear_bindings(st);
    return rc == SQLITE_DONE ? SQLITE_OK : rc;
}

/* Resets the ledger to the state the failed sagas left, in one transaction. */
static int ledger_seed(sqlite3 *db, const saga_batch *b)
{
    sqlite3_stmt *pay = NULL, *stock = NULL, *ship = NULL;
    int rc = ledger_begin(db);

    if (rc != SQLITE_OK)
        return rc;
    rc = ledger_exec(db, "DELETE FROM effects;"
                         "DELETE FROM payments;"
                         "DELETE FROM stock;"
                         "DELETE FROM shipments;"
                         "DELETE FROM sqlite_sequence WHERE name = 'effects';");
    if (rc == SQLITE_OK)
        rc = sqlite3_prepare_v2(db,
                                "INSERT INTO payments (payment_id, order_id, amount_cents,"
                                " refunded_cents) VALUES (?1, ?2, ?3, 0)",
                                -1, &pay, NULL);
    if (rc == SQLITE_OK)
        rc = sqlite3_prepare_v2(db, "INSERT INTO stock (sku, on_hand) VALUES (?1, ?2)", -1, &stock,
                                NULL);
    if (rc == SQLITE_OK)
        rc = sqlite3_prepare_v2(db,
                                "INSERT INTO shipments (shipment_id, order_id, status)"
                                " VALUES (?1, ?2, ?3)",
                                -1, &ship, NULL);
    for (size_t s = 0; rc == SQLITE_OK && s < N_SKUS; s++) {
        sqlite3_bind_text(stock, 1, catalogue[s].sku, -1, SQLITE_STATIC);
        sqlite3_bind_int64(stock, 2, catalogue[s].on_hand);
        rc = bind_exec(stock);
    }
    for (size_t i = 0; rc == SQLITE_OK && i < b->n_orders; i++) {
        const order *o = &b->orders[i];

        sqlite3_bind_text(pay, 1, o->payment_id, -1, SQLITE_STATIC);
        sqlite3_bind_text(pay, 2, o->order_id, -1, SQLITE_STATIC);
        sqlite3_bind_int64(pay, 3, o->amount_cents);
        rc = bind_exec(pay);
        if (rc != SQLITE_OK)
            break;
        sqlite3_bind_text(ship, 1, o->shipment_id, -1, SQLITE_STATIC);
        sqlite3_bind_text(ship, 2, o->order_id, -1, SQLITE_STATIC);
        sqlite3_bind_text(ship, 3, o->delivered ? "delivered" : "booked", -1, SQLITE_STATIC);
        rc = bind_exec(ship);
    }
    sqlite3_finalize(pay);
    sqlite3_finalize(stock);
    sqlite3_finalize(ship);
    if (rc != SQLITE_OK) {
        ledger_rollback(db);
        return rc;
    }
    return ledger_commit(db);
}

static int reset_ledger(const char *path, const saga_batch *b)
{
    sqlite3 *db;
    char err[512];
    int rc = ledger_open(&db, path, err, sizeof err);

    if (rc != SQLITE_OK) {
        fprintf(stderr, "order-saga-publish: ledger: %s\n", err);
        return -1;
    }
    rc = ledger_seed(db, b);
    if (rc != SQLITE_OK)
        fprintf(stderr, "order-saga-publish: ledger %s: cannot reset: %s\n", path,
                sqlite3_errstr(rc));
    sqlite3_close(db);
    return rc == SQLITE_OK ? 0 : -1;
}

/* One statement on the service's database; false (reported) on an error. */
static bool service_exec(PGconn *db, const char *sql, int n, const char *const *values)
{
    PGresult *r = PQexecParams(db, sql, n, NULL, values, NULL, NULL, 0);
    bool ok = PQresultStatus(r) == PGRES_COMMAND_OK;
    if (!ok)
        fprintf(stderr, "order-saga-publish: the service's database: %s", PQresultErrorMessage(r));
    PQclear(r);
    return ok;
}

/* --outbox: each task in the transaction of its order's business change. */
static int enqueue_all(const options *opt, saga_batch *b)
{
    PGconn *db = PQconnectdb(opt->outbox);
    if (PQstatus(db) != CONNECTION_OK) {
        fprintf(stderr, "order-saga-publish: --outbox: %s", PQerrorMessage(db));
        PQfinish(db);
        return -1;
    }
    int rc = service_exec(db,
                          "CREATE TABLE IF NOT EXISTS order_saga_orders (saga_id text PRIMARY KEY,"
                          " state text NOT NULL, tasks int NOT NULL DEFAULT 0)",
                          0, NULL)
                 ? 0
                 : -1;
    for (size_t i = 0; rc == 0 && i < b->n_slots; i++) {
        const slot *s = &b->slots[i];
        task *t = &b->tasks[s->task];
        cw_publish_opts po = CW_PUBLISH_OPTS_INIT;
        char id[CW_MESSAGE_ID_MAX + 1];
        const char *saga[1] = {t->order->saga_id};

        po.type = kind_types[t->kind];
        po.saga_id = t->order->saga_id;
        po.message_id = s->duplicate ? t->message_id : NULL;
        po.body = t->body;
        rc = -1;
        if (!service_exec(db, "BEGIN", 0, NULL))
            break;
        bool ok = service_exec(db,
                               "INSERT INTO order_saga_orders (saga_id, state, tasks) VALUES ($1, "
                               "'compensating', 1) ON CONFLICT (saga_id) DO UPDATE SET state = "
                               "'compensating', tasks = order_saga_orders.tasks + 1",
                               1, saga);
        if (ok && cw_outbox_enqueue(db, NULL, &po, id, sizeof id) != 0) {
            fprintf(stderr, "order-saga-publish: %s\n", cw_error_last());
            ok = false;
        }
        if (ok && service_exec(db, "COMMIT", 0, NULL))
            rc = 0;
        if (rc)
            PQclear(PQexec(db, "ROLLBACK"));
        else if (!s->duplicate)
            memcpy(t->message_id, id, sizeof id);
    }
    PQfinish(db);
    return rc;
}

static int publish_all(const options *opt, saga_batch *b)
{
    if (opt->outbox)
        return enqueue_all(opt, b);
    cw_client *client;
    int rc = cw_client_new(&client, opt->url, opt->exchange);

    if (rc < 0) {
        fprintf(stderr, "order-saga-publish: %s: %s\n", cw_strerror(rc), cw_error_last());
        return -1;
    }
    for (size_t i = 0; i < b->n_slots; i++) {
        const slot *s = &b->slots[i];
        task *t = &b->tasks[s->task];
        cw_publish_opts po = CW_PUBLISH_OPTS_INIT;
        char id[CW_MESSAGE_ID_MAX + 1];

        po.type = kind_types[t->kind];
        po.saga_id = t->order->saga_id;
        po.message_id = s->duplicate ? t->message_id : NULL;
        po.body = t->body;
        rc = cw_client_publish(client, &po, id, sizeof id);
        if (rc < 0) {
            fprintf(stderr, "order-saga-publish: publishing %s for %s: %s: %s\n", po.type,
                    po.saga_id, cw_strerror(rc), cw_error_last());
            if (rc == CW_STATUS_UNROUTABLE)
                fprintf(stderr,
                        "order-saga-publish: no queue is bound for %s on %s;"
                        " start a worker first (it declares the queues)\n",
                        po.type, opt->exchange);
            break;
        }
        if (!s->duplicate)
            memcpy(t->message_id, id, sizeof id);
    }
    cw_client_free(client);
    return rc < 0 ? -1 : 0;
}

static struct json_object *expectations(const options *opt, const saga_batch *b)
{
    struct json_object *e = json_object_new_object();
    struct json_object *kinds = json_object_new_object();
    struct json_object *stock = json_object_new_object();
    struct json_object *tasks = json_object_new_array();
    size_t applied = b->n_tasks - b->n_dead;

    json_object_object_add(e, "ledger", json_object_new_string(opt->ledger));
    json_object_object_add(e, "exchange", json_object_new_string(opt->exchange));
    json_object_object_add(e, "orders", json_object_new_int64((int64_t)b->n_orders));
    json_object_object_add(e, "seed", json_object_new_uint64(opt->seed));
    json_object_object_add(e, "published", json_object_new_int64((int64_t)b->n_slots));
    json_object_object_add(e, "unique", json_object_new_int64((int64_t)b->n_tasks));
    json_object_object_add(e, "duplicates",
                           json_object_new_int64((int64_t)(b->n_slots - b->n_tasks)));
    json_object_object_add(e, "expected_applied", json_object_new_int64((int64_t)applied));
    json_object_object_add(e, "expected_dead", json_object_new_int64((int64_t)b->n_dead));
    for (int k = 0; k < 3; k++)
        json_object_object_add(kinds, kind_names[k],
                               json_object_new_int64((int64_t)b->applied_by_kind[k]));
    json_object_object_add(e, "applied_by_kind", kinds);
    json_object_object_add(e, "refunded_cents", json_object_new_int64(b->refunded_cents));
    json_object_object_add(e, "cancelled_shipments", json_object_new_int64((int64_t)b->cancelled));
    for (size_t s = 0; s < N_SKUS; s++)
        json_object_object_add(stock, catalogue[s].sku,
                               json_object_new_int64(catalogue[s].on_hand +
                                                     catalogue[s].restocked));
    json_object_object_add(e, "stock_after", stock);
    for (size_t i = 0; i < b->n_tasks; i++) {
        const task *t = &b->tasks[i];
        struct json_object *o = json_object_new_object();

        json_object_object_add(o, "message_id", json_object_new_string(t->message_id));
        json_object_object_add(o, "type", json_object_new_string(kind_types[t->kind]));
        json_object_object_add(o, "saga_id", json_object_new_string(t->order->saga_id));
        json_object_object_add(o, "expect",
                               json_object_new_string(t->dead_reason[0] ? "dead" : "applied"));
        if (t->dead_reason[0] != '\0')
            json_object_object_add(o, "reason", json_object_new_string(t->dead_reason));
        json_object_array_add(tasks, o);
    }
    json_object_object_add(e, "tasks", tasks);
    return e;
}

/* Writes the expectations beside the ledger, atomically (temp file + rename). */
static int write_expectations(const char *file, struct json_object *e)
{
    size_t len = strlen(file) + sizeof ".tmp";
    char *tmp = malloc(len);
    int rc = -1;

    if (tmp == NULL) {
        fprintf(stderr, "order-saga-publish: out of memory\n");
        return -1;
    }
    snprintf(tmp, len, "%s.tmp", file);
    if (json_object_to_file_ext(tmp, e, JSON_C_TO_STRING_PRETTY | JSON_C_TO_STRING_SPACED) < 0)
        fprintf(stderr, "order-saga-publish: cannot write %s: %s\n", tmp, json_util_get_last_err());
    else if (rename(tmp, file) < 0)
        fprintf(stderr, "order-saga-publish: cannot rename %s to %s: %s\n", tmp, file,
                strerror(errno));
    else
        rc = 0;
    if (rc < 0)
        remove(tmp);
    free(tmp);
    return rc;
}

static void print_summary(const options *opt, const saga_batch *b, const char *expected_file)
{
    const order *bad[N_UNKNOWN_PAYMENTS + 1] = {NULL};
    size_t n_bad = 0;
    const order *delivered = NULL;

    for (size_t i = 0; i < b->n_orders; i++) {
        if (b->orders[i].delivered)
            delivered = &b->orders[i];
        else if (strcmp(b->orders[i].refund_payment_id, b->orders[i].payment_id) != 0 &&
                 n_bad < N_UNKNOWN_PAYMENTS)
            bad[n_bad++] = &b->orders[i];
    }
    printf("Published %zu compensation tasks to exchange %s for %zu orders whose saga failed"
           " (seed %" PRIu64 "): %zu unique tasks (a refund, a restock and a shipment cancel per"
           " order) and %zu sent a second time with the same message ID, as a publisher"
           " retrying after a lost confirm would. %zu cannot succeed and must end in the"
           " dead-letter queue: the refunds of %s and %s name payments the ledger never"
           " recorded, and shipment %s of %s was already delivered. Expected: %zu"
           " compensations applied exactly once to %s, %zu dead-lettered, %zu duplicates"
           " skipped (details in %s).\n",
           b->n_slots, opt->exchange, b->n_orders, opt->seed, b->n_tasks, b->n_slots - b->n_tasks,
           b->n_dead, bad[0] ? bad[0]->order_id : "?", bad[1] ? bad[1]->order_id : "?",
           delivered ? delivered->shipment_id : "?", delivered ? delivered->order_id : "?",
           b->n_tasks - b->n_dead, opt->ledger, b->n_dead, b->n_slots - b->n_tasks, expected_file);
}

int main(int argc, char **argv)
{
    options opt;
    saga_batch batch;
    struct json_object *e;
    char *expected_file;
    size_t len;
    int rc = parse_options(argc, argv, &opt);

    if (rc != 0)
        return rc == HELP_SHOWN ? EXIT_SUCCESS : rc;
    len = strlen(opt.ledger) + sizeof ".expected.json";
    expected_file = malloc(len);
    if (expected_file == NULL || batch_build(&batch, opt.orders, opt.seed) < 0) {
        fprintf(stderr, "order-saga-publish: out of memory\n");
        free(expected_file);
        return EXIT_FAILURE;
    }
    snprintf(expected_file, len, "%s.expected.json", opt.ledger);
    rc = EXIT_FAILURE;

    /* Stale expectations must not describe the new ledger. */
    if (remove(expected_file) < 0 && errno != ENOENT) {
        fprintf(stderr, "order-saga-publish: cannot remove %s: %s\n", expected_file,
                strerror(errno));
        goto out_free;
    }
    if (reset_ledger(opt.ledger, &batch) < 0 || publish_all(&opt, &batch) < 0)
        goto out_free;
    e = expectations(&opt, &batch);
    if (write_expectations(expected_file, e) == 0) {
        print_summary(&opt, &batch, expected_file);
        rc = EXIT_SUCCESS;
    }
    json_object_put(e);

out_free:
    batch_free(&batch);
    free(expected_file);
    return rc;
}
