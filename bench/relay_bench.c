/* The outbox relay's latency, for bench/run.sh: from the COMMIT of a
 * publisher's transaction that enqueued one task (cw_outbox_enqueue()) to
 * the task's delivery from a queue bound to the relay's exchange, one task
 * at a time, paced; and, as the same run's baseline, a task published
 * straight to the broker with cw_client_publish() to its delivery.
 *
 *   relay_bench PG_URL TABLE AMQP_URL EXCHANGE QUEUE N PAUSE_MS
 *
 * Prints "relay_p50_ms relay_p99_ms direct_p50_ms direct_p99_ms". The
 * relay (compworker relay on TABLE and EXCHANGE) is the caller's. */
#include <amqp.h>
#include <amqp_tcp_socket.h>
#include <libpq-fe.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "compworker/client.h"
#include "compworker/outbox.h"

static double now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec * 1e3 + (double)ts.tv_nsec / 1e6;
}

static void die(const char *what, const char *why)
{
    fprintf(stderr, "relay_bench: %s: %s\n", what, why);
    exit(1);
}

static void check(amqp_rpc_reply_t r, const char *what)
{
    if (r.reply_type != AMQP_RESPONSE_NORMAL)
        die(what, "the broker refused");
}

static amqp_connection_state_t consumer(const char *url, const char *exchange, const char *queue)
{
    struct amqp_connection_info ci;
    char *copy = strdup(url);
    if (amqp_parse_url(copy, &ci) != AMQP_STATUS_OK)
        die(url, "not an AMQP URL");
    if (!ci.vhost[0])
        ci.vhost = "/";
    amqp_connection_state_t c = amqp_new_connection();
    amqp_socket_t *s = amqp_tcp_socket_new(c);
    if (amqp_socket_open(s, ci.host, ci.port))
        die(url, "cannot connect");
    check(amqp_login(c, ci.vhost, 0, 131072, 0, AMQP_SASL_METHOD_PLAIN, ci.user, ci.password),
          "login");
    free(copy);
    amqp_channel_open(c, 1);
    check(amqp_get_rpc_reply(c), "channel.open");
    amqp_exchange_declare(c, 1, amqp_cstring_bytes(exchange), amqp_cstring_bytes("topic"), 0, 1, 0,
                          0, amqp_empty_table);
    check(amqp_get_rpc_reply(c), "exchange.declare");
    amqp_queue_declare(c, 1, amqp_cstring_bytes(queue), 0, 0, 0, 1, amqp_empty_table);
    check(amqp_get_rpc_reply(c), "queue.declare");
    amqp_queue_bind(c, 1, amqp_cstring_bytes(queue), amqp_cstring_bytes(exchange),
                    amqp_cstring_bytes("bench.#"), amqp_empty_table);
    check(amqp_get_rpc_reply(c), "queue.bind");
    amqp_basic_consume(c, 1, amqp_cstring_bytes(queue), amqp_empty_bytes, 0, 1, 0,
                       amqp_empty_table);
    check(amqp_get_rpc_reply(c), "basic.consume");
    return c;
}

/* Waits for the delivery of message `id`; its arrival time. */
static double wait_for(amqp_connection_state_t c, const char *id)
{
    for (;;) {
        amqp_envelope_t env;
        struct timeval tv = {30, 0};
        amqp_maybe_release_buffers(c);
        amqp_rpc_reply_t r = amqp_consume_message(c, &env, &tv, 0);
        if (r.reply_type != AMQP_RESPONSE_NORMAL)
            die(id, "no delivery within 30 s (is the relay running?)");
        double t = now_ms();
        bool match = env.message.properties.message_id.len == strlen(id) &&
                     memcmp(env.message.properties.message_id.bytes, id, strlen(id)) == 0;
        amqp_destroy_envelope(&env);
        if (match)
            return t;
    }
}

static int cmp(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return x < y ? -1 : x > y;
}

static double pct(double *v, int n, double p)
{
    int i = (int)(p * (n - 1) + 0.5);
    return v[i];
}

int main(int argc, char **argv)
{
    if (argc != 8) {
        fprintf(stderr, "usage: relay_bench PG_URL TABLE AMQP_URL EXCHANGE QUEUE N PAUSE_MS\n");
        return 2;
    }
    const char *table = argv[2], *amqp_url = argv[3], *exchange = argv[4], *queue = argv[5];
    int n = atoi(argv[6]), pause_ms = atoi(argv[7]);
    if (n < 2)
        die("N", "at least 2");
    PGconn *db = PQconnectdb(argv[1]);
    if (PQstatus(db) != CONNECTION_OK)
        die("PostgreSQL", PQerrorMessage(db));
    amqp_connection_state_t c = consumer(amqp_url, exchange, queue);
    cw_client *cl;
    if (cw_client_new(&cl, amqp_url, exchange))
        die("cw_client_new", cw_error_last());
    double *relay = calloc((size_t)n, sizeof *relay), *direct = calloc((size_t)n, sizeof *direct);
    struct timespec pause = {pause_ms / 1000, (pause_ms % 1000) * 1000000L};
    for (int i = 0; i < n; i++) {
        char id[64];
        cw_publish_opts o = CW_PUBLISH_OPTS_INIT;
        o.type = "bench.relay";
        o.saga_id = "bench";
        o.body = "{\"amount_cents\":1200}";

        snprintf(id, sizeof id, "relay-%ld-%d", (long)getpid(), i);
        o.message_id = id;
        PQclear(PQexec(db, "BEGIN"));
        if (cw_outbox_enqueue(db, table, &o, NULL, 0))
            die("cw_outbox_enqueue", cw_error_last());
        PGresult *r = PQexec(db, "COMMIT");
        double t0 = now_ms();
        if (PQresultStatus(r) != PGRES_COMMAND_OK)
            die("COMMIT", PQresultErrorMessage(r));
        PQclear(r);
        relay[i] = wait_for(c, id) - t0;

        snprintf(id, sizeof id, "direct-%ld-%d", (long)getpid(), i);
        o.message_id = id;
        t0 = now_ms();
        if (cw_client_publish(cl, &o, NULL, 0))
            die("cw_client_publish", cw_error_last());
        direct[i] = wait_for(c, id) - t0;
        nanosleep(&pause, NULL);
    }
    qsort(relay, (size_t)n, sizeof *relay, cmp);
    qsort(direct, (size_t)n, sizeof *direct, cmp);
    printf("%.2f %.2f %.2f %.2f\n", pct(relay, n, 0.5), pct(relay, n, 0.99), pct(direct, n, 0.5),
           pct(direct, n, 0.99));
    free(relay);
    free(direct);
    cw_client_free(cl);
    amqp_connection_close(c, AMQP_REPLY_SUCCESS);
    amqp_destroy_connection(c);
    PQfinish(db);
    return 0;
}
