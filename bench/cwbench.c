/* cwbench: the broker-side tools of the benchmark.
 *
 *   cwbench fill URL QUEUE N [BODY_BYTES]   publish N persistent tasks (type bench.noop,
 *                                           unique message IDs) straight to QUEUE, confirmed
 *   cwbench drain URL QUEUE N PREFETCH      the baseline: the fastest honest rabbitmq-c
 *                                           consumer (manual acks, multiple-ack every
 *                                           PREFETCH/2, no work); prints messages/s
 *                                           and its CPU time per message (us)
 *   cwbench depth URL QUEUE                 prints the ready-message count
 *   cwbench latency URL QUEUE N PREFETCH    the latency's baseline: receives N tasks that
 *                                           `pace` publishes, one "latency_us" line each
 *                                           (receipt minus the body's "sent_ns")
 *   cwbench pace URL QUEUE RATE SECONDS [RETRY_MS]
 *                                           publish RATE tasks a second for SECONDS,
 *                                           each body carrying its publish time
 *                                           ("sent_ns", CLOCK_REALTIME) and, with
 *                                           RETRY_MS, "retry_ms" (see noop_plugin.c)
 *
 * Message IDs are what compworker's publishers make (time-ordered UUIDv7,
 * framework/message_id.c); with CWBENCH_IDS=random in the environment they
 * are random UUIDv4, as some other publishers make them.
 */
#include <amqp.h>
#include <amqp_tcp_socket.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <time.h>
#include <uuid/uuid.h>

#include "framework/message_id.h"

/* A task's message ID: see the top of this file. */
static void message_id(char id[CW_UUID_TEXT])
{
    static int random_ids = -1;
    if (random_ids < 0) {
        const char *v = getenv("CWBENCH_IDS");
        random_ids = v && strcmp(v, "random") == 0;
    }
    if (!random_ids) {
        cw__message_id_new(id);
        return;
    }
    uuid_t u;
    uuid_generate_random(u);
    uuid_unparse_lower(u, id);
}

static double now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static void die_reply(amqp_rpc_reply_t r, const char *what)
{
    if (r.reply_type == AMQP_RESPONSE_NORMAL)
        return;
    fprintf(stderr, "cwbench: %s failed (reply type %d, library error %s)\n", what, r.reply_type,
            amqp_error_string2(r.library_error));
    exit(1);
}

static amqp_connection_state_t open_conn(const char *url)
{
    char buf[1024];
    snprintf(buf, sizeof buf, "%s", url);
    struct amqp_connection_info ci;
    if (amqp_parse_url(buf, &ci) != AMQP_STATUS_OK) {
        fprintf(stderr, "cwbench: bad URL\n");
        exit(2);
    }
    if (!ci.vhost[0])
        ci.vhost = "/";
    amqp_connection_state_t c = amqp_new_connection();
    amqp_socket_t *s = amqp_tcp_socket_new(c);
    if (amqp_socket_open(s, ci.host, ci.port) != AMQP_STATUS_OK) {
        fprintf(stderr, "cwbench: cannot connect\n");
        exit(1);
    }
    die_reply(amqp_login(c, ci.vhost, 0, 131072, 0, AMQP_SASL_METHOD_PLAIN, ci.user, ci.password),
              "login");
    amqp_channel_open(c, 1);
    die_reply(amqp_get_rpc_reply(c), "channel.open");
    return c;
}

static uint32_t depth(amqp_connection_state_t c, const char *queue)
{
    amqp_queue_declare_ok_t *ok = amqp_queue_declare(c, 1, amqp_cstring_bytes(queue), 1, 0, 0, 0,
                                                     amqp_empty_table);
    die_reply(amqp_get_rpc_reply(c), "queue.declare passive");
    return ok->message_count;
}

static int64_t realtime_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (int64_t)ts.tv_sec * 1000000000 + ts.tv_nsec;
}

static void sleep_until(double t)
{
    double d = t - now_s();
    if (d <= 0)
        return;
    struct timespec ts = {.tv_sec = (time_t)d, .tv_nsec = (long)((d - (double)(time_t)d) * 1e9)};
    nanosleep(&ts, NULL);
}

/* Reads the confirms that have arrived, without blocking; exits on a nack. */
static void read_confirms(amqp_connection_state_t c, uint64_t *confirmed, int block)
{
    for (;;) {
        amqp_frame_t f;
        struct timeval tv = {0, 0};
        int st = amqp_simple_wait_frame_noblock(c, &f, block ? NULL : &tv);
        if (st == AMQP_STATUS_TIMEOUT)
            return;
        if (st != AMQP_STATUS_OK) {
            fprintf(stderr, "cwbench: reading confirms: %s\n", amqp_error_string2(st));
            exit(1);
        }
        if (f.frame_type != AMQP_FRAME_METHOD)
            continue;
        if (f.payload.method.id == AMQP_BASIC_ACK_METHOD) {
            amqp_basic_ack_t *a = f.payload.method.decoded;
            if (a->delivery_tag > *confirmed)
                *confirmed = a->delivery_tag;
            if (block)
                return;
        } else {
            fprintf(stderr, "cwbench: unexpected method 0x%08x\n", f.payload.method.id);
            exit(1);
        }
    }
}

/* A steady load: RATE tasks a second, in ticks of 1 ms, confirmed. */
static int pace(const char *url, const char *queue, double rate, double seconds, long retry_ms)
{
    amqp_connection_state_t c = open_conn(url);
    amqp_confirm_select(c, 1);
    die_reply(amqp_get_rpc_reply(c), "confirm.select");
    amqp_basic_properties_t p;
    memset(&p, 0, sizeof p);
    p._flags = AMQP_BASIC_CONTENT_TYPE_FLAG | AMQP_BASIC_DELIVERY_MODE_FLAG |
               AMQP_BASIC_MESSAGE_ID_FLAG | AMQP_BASIC_TYPE_FLAG | AMQP_BASIC_CORRELATION_ID_FLAG;
    p.content_type = amqp_cstring_bytes("application/json");
    p.delivery_mode = 2;
    p.type = amqp_cstring_bytes("bench.noop");
    p.correlation_id = amqp_cstring_bytes("saga-bench");
    char id[CW_UUID_TEXT], body[256];
    p.message_id = amqp_cstring_bytes(id);
    long total = (long)(rate * seconds), sent = 0;
    uint64_t confirmed = 0;
    double t0 = now_s();
    while (sent < total) {
        /* Publish what is due by now: a steady rate, not bursts of a second. */
        long due = (long)((now_s() - t0) * rate) + 1;
        if (due > total)
            due = total;
        for (; sent < due; sent++) {
            message_id(id);
            p.message_id.len = strlen(id);
            int len =
                retry_ms >= 0
                    ? snprintf(body, sizeof body, "{\"sent_ns\":%lld,\"retry_ms\":%ld}",
                               (long long)realtime_ns(), retry_ms)
                    : snprintf(body, sizeof body, "{\"sent_ns\":%lld,\"pad\":\"%s\"}",
                               (long long)realtime_ns(),
                               "xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx"
                               "xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx"
                               "xxxxxxxxxxxxxxxxxxxxxxxxxxxxx");
            amqp_bytes_t b = {.len = (size_t)len, .bytes = body};
            if (amqp_basic_publish(c, 1, amqp_empty_bytes, amqp_cstring_bytes(queue), 0, 0, &p,
                                   b)) {
                fprintf(stderr, "cwbench: publish failed\n");
                return 1;
            }
        }
        read_confirms(c, &confirmed, 0);
        sleep_until(t0 + (double)(sent + 1) / rate);
    }
    while (confirmed < (uint64_t)total)
        read_confirms(c, &confirmed, 1);
    printf("%ld\n", total);
    amqp_connection_close(c, AMQP_REPLY_SUCCESS);
    amqp_destroy_connection(c);
    return 0;
}

static int fill(const char *url, const char *queue, long n, long body_bytes)
{
    amqp_connection_state_t c = open_conn(url);
    amqp_confirm_select(c, 1);
    die_reply(amqp_get_rpc_reply(c), "confirm.select");
    char *body = malloc((size_t)body_bytes + 64);
    int len = snprintf(body, 64, "{\"order_id\":\"o-1\",\"pad\":\"");
    while (len < body_bytes - 2)
        body[len++] = 'x';
    body[len++] = '"';
    body[len++] = '}';
    amqp_basic_properties_t p;
    memset(&p, 0, sizeof p);
    p._flags = AMQP_BASIC_CONTENT_TYPE_FLAG | AMQP_BASIC_DELIVERY_MODE_FLAG |
               AMQP_BASIC_MESSAGE_ID_FLAG | AMQP_BASIC_TYPE_FLAG | AMQP_BASIC_CORRELATION_ID_FLAG;
    p.content_type = amqp_cstring_bytes("application/json");
    p.delivery_mode = 2;
    p.type = amqp_cstring_bytes("bench.noop");
    p.correlation_id = amqp_cstring_bytes("saga-bench");
    char id[CW_UUID_TEXT];
    p.message_id = amqp_cstring_bytes(id);
    amqp_bytes_t b = {.len = (size_t)len, .bytes = body};
    long unconfirmed = 0;
    uint64_t seq = 0;
    for (long i = 0; i < n; i++) {
        message_id(id);
        p.message_id.len = strlen(id);
        if (amqp_basic_publish(c, 1, amqp_empty_bytes, amqp_cstring_bytes(queue), 0, 0, &p, b)) {
            fprintf(stderr, "cwbench: publish failed\n");
            return 1;
        }
        seq++;
        unconfirmed++;
        if (unconfirmed >= 2000 || i == n - 1) {
            /* Wait for the confirm of the last one (multiple acks cover the rest). */
            for (;;) {
                amqp_frame_t f;
                if (amqp_simple_wait_frame(c, &f) != AMQP_STATUS_OK)
                    return 1;
                if (f.frame_type == AMQP_FRAME_METHOD &&
                    f.payload.method.id == AMQP_BASIC_ACK_METHOD) {
                    amqp_basic_ack_t *a = f.payload.method.decoded;
                    if (a->delivery_tag >= seq)
                        break;
                } else if (f.frame_type == AMQP_FRAME_METHOD) {
                    fprintf(stderr, "cwbench: unexpected method 0x%08x\n", f.payload.method.id);
                    return 1;
                }
            }
            unconfirmed = 0;
        }
    }
    free(body);
    amqp_connection_close(c, AMQP_REPLY_SUCCESS);
    amqp_destroy_connection(c);
    return 0;
}

/* A connection consuming QUEUE with manual acks and PREFETCH. */
static amqp_connection_state_t open_consumer(const char *url, const char *queue, int prefetch)
{
    amqp_connection_state_t c = open_conn(url);
    amqp_basic_qos(c, 1, 0, (uint16_t)prefetch, 0);
    die_reply(amqp_get_rpc_reply(c), "basic.qos");
    amqp_basic_consume(c, 1, amqp_cstring_bytes(queue), amqp_empty_bytes, 0, 0, 0,
                       amqp_empty_table);
    die_reply(amqp_get_rpc_reply(c), "basic.consume");
    return c;
}

static int drain(const char *url, const char *queue, long n, int prefetch)
{
    amqp_connection_state_t c = open_consumer(url, queue, prefetch);
    double t0 = 0;
    long got = 0, since_ack = 0;
    int ack_every = prefetch / 2 > 0 ? prefetch / 2 : 1;
    while (got < n) {
        amqp_envelope_t env;
        amqp_maybe_release_buffers(c);
        amqp_rpc_reply_t r = amqp_consume_message(c, &env, NULL, 0);
        die_reply(r, "consume");
        if (got == 0)
            t0 = now_s();
        got++;
        since_ack++;
        if (since_ack >= ack_every || got == n) {
            amqp_basic_ack(c, 1, env.delivery_tag, 1);
            since_ack = 0;
        }
        amqp_destroy_envelope(&env);
    }
    double dt = now_s() - t0;
    struct rusage ru;
    getrusage(RUSAGE_SELF, &ru);
    double cpu = (double)(ru.ru_utime.tv_sec + ru.ru_stime.tv_sec) +
                 (double)(ru.ru_utime.tv_usec + ru.ru_stime.tv_usec) / 1e6;
    /* messages/s, then the consumer's CPU time per message in us */
    printf("%.0f %.2f\n", (double)(got - 1) / dt, cpu * 1e6 / (double)got);
    amqp_connection_close(c, AMQP_REPLY_SUCCESS);
    amqp_destroy_connection(c);
    return 0;
}

/* The baseline of the latency: the bare consumer's time from publish (the
 * body's "sent_ns", as `pace` writes it) to receipt, for N messages; prints
 * one "latency_us N" line per message. */
static int latency(const char *url, const char *queue, long n, int prefetch)
{
    amqp_connection_state_t c = open_consumer(url, queue, prefetch);
    long got = 0, since_ack = 0;
    /* Small multiple-acks: a slow pace must not wait for a window's worth. */
    int ack_every = prefetch / 20 > 0 ? prefetch / 20 : 1;
    while (got < n) {
        amqp_envelope_t env;
        amqp_maybe_release_buffers(c);
        die_reply(amqp_consume_message(c, &env, NULL, 0), "consume");
        int64_t now = realtime_ns();
        char body[256];
        size_t len = env.message.body.len < sizeof body - 1 ? env.message.body.len
                                                            : sizeof body - 1;
        memcpy(body, env.message.body.bytes, len);
        body[len] = '\0';
        long long sent = 0;
        const char *p = strstr(body, "\"sent_ns\":");
        if (p && sscanf(p + 10, "%lld", &sent) == 1)
            printf("latency_us %lld\n", (long long)((now - sent) / 1000));
        got++;
        since_ack++;
        if (since_ack >= ack_every || got == n) {
            amqp_basic_ack(c, 1, env.delivery_tag, 1);
            since_ack = 0;
        }
        amqp_destroy_envelope(&env);
    }
    amqp_connection_close(c, AMQP_REPLY_SUCCESS);
    amqp_destroy_connection(c);
    return 0;
}

int main(int argc, char **argv)
{
    if (argc >= 5 && strcmp(argv[1], "fill") == 0)
        return fill(argv[2], argv[3], atol(argv[4]), argc > 5 ? atol(argv[5]) : 200);
    if (argc == 6 && strcmp(argv[1], "drain") == 0)
        return drain(argv[2], argv[3], atol(argv[4]), atoi(argv[5]));
    if (argc == 6 && strcmp(argv[1], "latency") == 0)
        return latency(argv[2], argv[3], atol(argv[4]), atoi(argv[5]));
    if ((argc == 6 || argc == 7) && strcmp(argv[1], "pace") == 0)
        return pace(argv[2], argv[3], atof(argv[4]), atof(argv[5]), argc == 7 ? atol(argv[6]) : -1);
    if (argc == 4 && strcmp(argv[1], "depth") == 0) {
        amqp_connection_state_t c = open_conn(argv[2]);
        printf("%" PRIu32 "\n", depth(c, argv[3]));
        return 0;
    }
    fprintf(
        stderr,
        "usage: cwbench fill URL QUEUE N [BODY_BYTES] | drain URL QUEUE N PREFETCH | "
        "depth URL QUEUE | pace URL QUEUE RATE SECONDS [RETRY_MS] | latency URL QUEUE N PREFETCH\n");
    return 2;
}
