/* Integration tests of the delay topology (retry/delay.c) against a real
 * RabbitMQ node: messages published through cw.delay.19 reach the queue
 * named in their routing key, and only that queue, after their delay, with
 * body, properties and headers as sent; a short delay is not held up behind
 * a long one.
 *
 * Talks to the broker with rabbitmq-c directly: one connection publishes
 * with confirms, another consumes and timestamps each arrival. */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>

#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "compworker/status.h"
#include "framework/broker.h"
#include "retry/delay.h"

#define PUB_CH 1
#define CONS_CH 1
/* Arrival tolerance: never early by more than the clock granularity, and
 * late by at most the broker's expiry and dead-lettering latency. */
#define EARLY_MS 50
#define LATE_MS 1500

typedef struct delay_env {
    amqp_connection_state_t pub;  /* confirm mode on PUB_CH */
    amqp_connection_state_t cons; /* consumes on CONS_CH */
    char queue_a[128], queue_b[128];
} delay_env;

/* What arrived. */
typedef struct arrival {
    char id[64];
    char queue[128];       /* the consumer's queue (by consumer tag) */
    char routing_key[256]; /* of the delivery */
    int64_t at_ms;         /* monotonic */
    char body[64];
    size_t body_len;
    char content_type[64];
    char type[64];
    bool has_test_header; /* x-test = "kept" */
    int64_t attempt;      /* cw-attempt, -1 when absent */
    uint8_t delivery_mode;
} arrival;

static int64_t mono_ms(void)
{
    struct timespec ts;

    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static amqp_connection_state_t connect_or_fail(const char *name)
{
    const char *url = getenv("CW_TEST_AMQP_URL");
    amqp_connection_state_t conn = NULL;
    unsigned next = 0;

    if (url == NULL || *url == '\0')
        fail_msg("CW_TEST_AMQP_URL is not set (run through ctest, or start "
                 "tests/harness/rabbitmq.sh and export it)");
    if (cw__broker_connect(&conn, url, &next, 0, name, NULL, 0) != 0)
        fail_msg("cannot connect: %s", cw_error_last());
    amqp_channel_open(conn, 1);
    if (cw__broker_reply(amqp_get_rpc_reply(conn), "opening channel 1") != 0)
        fail_msg("%s", cw_error_last());
    return conn;
}

static void check_reply(amqp_connection_state_t conn, const char *what)
{
    if (cw__broker_reply(amqp_get_rpc_reply(conn), what) != 0)
        fail_msg("%s", cw_error_last());
}

static void declare_queue(amqp_connection_state_t conn, const char *queue)
{
    amqp_table_entry_t arg = {.key = amqp_cstring_bytes("x-queue-type"),
                              .value = {.kind = AMQP_FIELD_KIND_UTF8,
                                        .value.bytes = amqp_cstring_bytes("quorum")}};
    amqp_table_t args = {.num_entries = 1, .entries = &arg};

    amqp_queue_declare(conn, CONS_CH, amqp_cstring_bytes(queue), 0, 1, 0, 0, args);
    check_reply(conn, queue);
}

static int setup(void **state)
{
    delay_env *env = calloc(1, sizeof *env);

    if (env == NULL)
        return -1;
    *state = env;
    env->pub = connect_or_fail("test_delay_topology publisher");
    env->cons = connect_or_fail("test_delay_topology consumer");
    amqp_confirm_select(env->pub, PUB_CH);
    check_reply(env->pub, "confirm.select");

    /* Twice: declaring is idempotent. */
    for (int i = 0; i < 2; i++) {
        if (cw__delay_declare(env->cons, CONS_CH) != 0)
            fail_msg("cw__delay_declare: %s", cw_error_last());
    }
    snprintf(env->queue_a, sizeof env->queue_a, "cw.test.delay.%ld.a", (long)getpid());
    snprintf(env->queue_b, sizeof env->queue_b, "cw.test.delay.%ld.b", (long)getpid());
    declare_queue(env->cons, env->queue_a);
    declare_queue(env->cons, env->queue_b);
    for (int i = 0; i < 2; i++) {
        assert_int_equal(cw__delay_bind_queue(env->cons, CONS_CH, env->queue_a), 0);
        assert_int_equal(cw__delay_bind_queue(env->cons, CONS_CH, env->queue_b), 0);
    }
    return 0;
}

static int teardown(void **state)
{
    delay_env *env = *state;

    if (env == NULL)
        return 0;
    if (env->cons) {
        /* The channel may have been closed by a failed step: a fresh one. */
        amqp_channel_open(env->cons, 2);
        amqp_queue_delete(env->cons, 2, amqp_cstring_bytes(env->queue_a), 0, 0);
        amqp_queue_delete(env->cons, 2, amqp_cstring_bytes(env->queue_b), 0, 0);
        cw__broker_close(env->cons);
    }
    cw__broker_close(env->pub);
    free(env);
    return 0;
}

/* The headers every test message carries. */
static amqp_table_entry_t g_headers[] = {
    {.key = {6, "x-test"}, .value = {.kind = AMQP_FIELD_KIND_UTF8, .value.bytes = {4, "kept"}}},
    {.key = {10, "cw-attempt"}, .value = {.kind = AMQP_FIELD_KIND_I32, .value.i32 = 2}},
};

/* Publishes `id` through the topology to `queue` with `delay_ms` and
 * `headers` (NULL: g_headers), waits for the confirm, and returns whether the
 * broker returned it (unroutable). */
static bool publish_with(delay_env *env, const char *queue, int64_t delay_ms, const char *id,
                         const amqp_table_t *headers)
{
    char key[CW_DELAY_KEY_MAX + 1];
    char body[64];
    amqp_basic_properties_t props = {
        ._flags = AMQP_BASIC_CONTENT_TYPE_FLAG | AMQP_BASIC_DELIVERY_MODE_FLAG |
                  AMQP_BASIC_MESSAGE_ID_FLAG | AMQP_BASIC_TYPE_FLAG | AMQP_BASIC_HEADERS_FLAG,
        .content_type = amqp_cstring_bytes("application/json"),
        .delivery_mode = AMQP_DELIVERY_PERSISTENT,
        .message_id = amqp_cstring_bytes(id),
        .type = amqp_cstring_bytes("it.delay"),
        .headers = headers ? *headers : (amqp_table_t){.num_entries = 2, .entries = g_headers},
    };
    bool returned = false;
    int n;

    assert_int_equal(cw__delay_routing_key(delay_ms, queue, key, sizeof key), 0);
    /* A NUL inside: the body travels as bytes. */
    n = snprintf(body, sizeof body, "{\"id\":\"%s\"}", id);
    body[n] = '\0';
    amqp_bytes_t b = {.len = (size_t)n + 1, .bytes = body};
    if (amqp_basic_publish(env->pub, PUB_CH, amqp_cstring_bytes(CW_DELAY_ENTRY_EXCHANGE),
                           amqp_cstring_bytes(key), 1, 0, &props, b) != AMQP_STATUS_OK)
        fail_msg("publish of %s failed", id);

    for (;;) {
        amqp_frame_t f;
        struct timeval tv = {.tv_sec = 10};
        int st = amqp_simple_wait_frame_noblock(env->pub, &f, &tv);

        if (st != AMQP_STATUS_OK)
            fail_msg("waiting for the confirm of %s: %s", id, amqp_error_string2(st));
        if (f.frame_type != AMQP_FRAME_METHOD)
            continue;
        if (f.payload.method.id == AMQP_BASIC_ACK_METHOD)
            break;
        if (f.payload.method.id == AMQP_BASIC_NACK_METHOD)
            fail_msg("%s was nacked", id);
        if (f.payload.method.id == AMQP_BASIC_RETURN_METHOD) {
            amqp_message_t m;
            returned = true;
            if (amqp_read_message(env->pub, f.channel, &m, 0).reply_type == AMQP_RESPONSE_NORMAL)
                amqp_destroy_message(&m);
            continue;
        }
        if (f.payload.method.id == AMQP_CHANNEL_CLOSE_METHOD ||
            f.payload.method.id == AMQP_CONNECTION_CLOSE_METHOD)
            fail_msg("the broker closed the publisher while %s was in flight", id);
    }
    amqp_maybe_release_buffers(env->pub);
    return returned;
}

static bool publish(delay_env *env, const char *queue, int64_t delay_ms, const char *id)
{
    return publish_with(env, queue, delay_ms, id, NULL);
}

static void consume(delay_env *env, const char *queue)
{
    amqp_basic_consume(env->cons, CONS_CH, amqp_cstring_bytes(queue), amqp_cstring_bytes(queue), 0,
                       0, 0, amqp_empty_table);
    check_reply(env->cons, queue);
}

static void copy_bytes(char *out, size_t cap, amqp_bytes_t b)
{
    size_t n = b.len < cap - 1 ? b.len : cap - 1;

    memcpy(out, b.bytes, n);
    out[n] = '\0';
}

/* Collects arrivals until `n` have come or `deadline_ms` (monotonic) has
 * passed; returns how many came. */
static size_t collect(delay_env *env, arrival *out, size_t n, int64_t deadline_ms)
{
    size_t got = 0;

    while (got < n) {
        int64_t left = deadline_ms - mono_ms();
        struct timeval tv;
        amqp_envelope_t e;
        amqp_rpc_reply_t r;

        if (left <= 0)
            break;
        tv.tv_sec = left / 1000;
        tv.tv_usec = (left % 1000) * 1000;
        amqp_maybe_release_buffers(env->cons);
        r = amqp_consume_message(env->cons, &e, &tv, 0);
        if (r.reply_type == AMQP_RESPONSE_LIBRARY_EXCEPTION &&
            r.library_error == AMQP_STATUS_TIMEOUT)
            break;
        if (r.reply_type != AMQP_RESPONSE_NORMAL)
            fail_msg("consuming: %s", cw__broker_reply(r, "consume") ? cw_error_last() : "?");

        arrival *a = &out[got++];
        const amqp_basic_properties_t *p = &e.message.properties;
        memset(a, 0, sizeof *a);
        a->at_ms = mono_ms();
        a->attempt = -1;
        copy_bytes(a->queue, sizeof a->queue, e.consumer_tag);
        copy_bytes(a->routing_key, sizeof a->routing_key, e.routing_key);
        if (p->_flags & AMQP_BASIC_MESSAGE_ID_FLAG)
            copy_bytes(a->id, sizeof a->id, p->message_id);
        if (p->_flags & AMQP_BASIC_CONTENT_TYPE_FLAG)
            copy_bytes(a->content_type, sizeof a->content_type, p->content_type);
        if (p->_flags & AMQP_BASIC_TYPE_FLAG)
            copy_bytes(a->type, sizeof a->type, p->type);
        if (p->_flags & AMQP_BASIC_DELIVERY_MODE_FLAG)
            a->delivery_mode = p->delivery_mode;
        a->body_len = e.message.body.len < sizeof a->body ? e.message.body.len : sizeof a->body;
        memcpy(a->body, e.message.body.bytes, a->body_len);
        if (p->_flags & AMQP_BASIC_HEADERS_FLAG) {
            for (int i = 0; i < p->headers.num_entries; i++) {
                const amqp_table_entry_t *h = &p->headers.entries[i];
                if (h->key.len == 6 && memcmp(h->key.bytes, "x-test", 6) == 0 &&
                    h->value.kind == AMQP_FIELD_KIND_UTF8 && h->value.value.bytes.len == 4 &&
                    memcmp(h->value.value.bytes.bytes, "kept", 4) == 0)
                    a->has_test_header = true;
                if (h->key.len == 10 && memcmp(h->key.bytes, "cw-attempt", 10) == 0 &&
                    h->value.kind == AMQP_FIELD_KIND_I32)
                    a->attempt = h->value.value.i32;
            }
        }
        amqp_basic_ack(env->cons, e.channel, e.delivery_tag, 0);
        amqp_destroy_envelope(&e);
    }
    return got;
}

static const arrival *find(const arrival *a, size_t n, const char *id)
{
    for (size_t i = 0; i < n; i++) {
        if (strcmp(a[i].id, id) == 0)
            return &a[i];
    }
    return NULL;
}

/* `a` came to `queue` intact, between delay - EARLY_MS and delay + LATE_MS
 * after `sent_ms`. */
static void expect_arrival(const arrival *a, const char *queue, int64_t sent_ms, int64_t delay_ms)
{
    char body[64];
    char key[CW_DELAY_KEY_MAX + 1];
    int64_t took = a->at_ms - sent_ms;
    int n = snprintf(body, sizeof body, "{\"id\":\"%s\"}", a->id);

    print_message("%s: delay %lld ms, arrived after %lld ms\n", a->id, (long long)delay_ms,
                  (long long)took);
    assert_string_equal(a->queue, queue);
    if (took < delay_ms - EARLY_MS || took > delay_ms + LATE_MS)
        fail_msg("%s (delay %lld ms) arrived after %lld ms", a->id, (long long)delay_ms,
                 (long long)took);
    assert_int_equal(a->body_len, (size_t)n + 1);
    assert_memory_equal(a->body, body, (size_t)n + 1);
    assert_string_equal(a->content_type, "application/json");
    assert_string_equal(a->type, "it.delay");
    assert_int_equal(a->delivery_mode, AMQP_DELIVERY_PERSISTENT);
    assert_true(a->has_test_header);
    assert_int_equal(a->attempt, 2);
    /* The routing key travels unchanged. */
    assert_int_equal(cw__delay_routing_key(delay_ms, queue, key, sizeof key), 0);
    assert_string_equal(a->routing_key, key);
}

/* Delays of 0, 300 ms, 1.5 s and 3.2 s to queue A and one of 0 to queue B:
 * each arrives on time, intact, in its own queue only. */
static void test_delays_arrive_on_time(void **state)
{
    delay_env *env = *state;
    static const int64_t delays[] = {0, 300, 1500, 3200};
    const char *ids[] = {"a-0", "a-300", "a-1500", "a-3200"};
    int64_t sent[4], sent_b;
    arrival got[8];
    size_t n;

    consume(env, env->queue_a);
    consume(env, env->queue_b);
    for (size_t i = 0; i < 4; i++) {
        sent[i] = mono_ms();
        assert_false(publish(env, env->queue_a, delays[i], ids[i]));
    }
    sent_b = mono_ms();
    assert_false(publish(env, env->queue_b, 0, "b-0"));

    n = collect(env, got, 5, mono_ms() + 3200 + LATE_MS + 2000);
    /* Anything more (a copy in the wrong queue) would show within a second. */
    n += collect(env, got + n, sizeof got / sizeof *got - n, mono_ms() + 1000);
    if (n != 5) {
        for (size_t i = 0; i < n; i++)
            print_error("arrived: %s in %s\n", got[i].id, got[i].queue);
        fail_msg("%zu messages arrived, want 5", n);
    }
    for (size_t i = 0; i < 4; i++) {
        const arrival *a = find(got, n, ids[i]);
        if (a == NULL)
            fail_msg("%s never arrived", ids[i]);
        expect_arrival(a, env->queue_a, sent[i], delays[i]);
    }
    const arrival *b = find(got, n, "b-0");
    assert_non_null(b);
    expect_arrival(b, env->queue_b, sent_b, 0);
}

/* A long delay published just before a short one does not hold it up. */
static void test_short_not_blocked_by_long(void **state)
{
    delay_env *env = *state;
    int64_t sent_long, sent_short;
    arrival got[2];

    consume(env, env->queue_a);
    sent_long = mono_ms();
    assert_false(publish(env, env->queue_a, 3000, "long"));
    sent_short = mono_ms();
    assert_false(publish(env, env->queue_a, 200, "short"));

    assert_int_equal(collect(env, got, 2, mono_ms() + 3000 + LATE_MS + 2000), 2);
    assert_string_equal(got[0].id, "short");
    assert_string_equal(got[1].id, "long");
    expect_arrival(&got[0], env->queue_a, sent_short, 200);
    expect_arrival(&got[1], env->queue_a, sent_long, 3000);
}

/* Takes from cw.delay.unroutable the messages whose routing key ends in
 * ".<queue>" (others are put back), for up to `timeout_ms` until `want` have
 * been found; returns how many were. */
static size_t take_parked(delay_env *env, const char *queue, size_t want, int timeout_ms)
{
    int64_t deadline = mono_ms() + timeout_ms;
    size_t qlen = strlen(queue), found = 0;

    amqp_channel_open(env->cons, 3);
    check_reply(env->cons, "opening channel 3");
    while (found < want && mono_ms() < deadline) {
        for (;;) {
            amqp_rpc_reply_t r = amqp_basic_get(env->cons, 3,
                                                amqp_cstring_bytes(CW_DELAY_UNROUTABLE), 0);
            amqp_message_t m;

            check_reply(env->cons, "basic.get from " CW_DELAY_UNROUTABLE);
            if (r.reply.id != AMQP_BASIC_GET_OK_METHOD)
                break;
            const amqp_basic_get_ok_t *ok = r.reply.decoded;
            uint64_t tag = ok->delivery_tag;
            bool mine = ok->routing_key.len > qlen + 1 &&
                        memcmp((const char *)ok->routing_key.bytes + ok->routing_key.len - qlen,
                               queue, qlen) == 0 &&
                        ((const char *)ok->routing_key.bytes)[ok->routing_key.len - qlen - 1] ==
                            '.';
            if (amqp_read_message(env->cons, 3, &m, 0).reply_type != AMQP_RESPONSE_NORMAL)
                fail_msg("reading a message of " CW_DELAY_UNROUTABLE);
            amqp_destroy_message(&m);
            if (mine) {
                amqp_basic_ack(env->cons, 3, tag, 0);
                found++;
            }
            /* Others stay unacked on this channel until it closes, so one
             * pass sees each message once; closing puts them back. */
        }
        if (found < want)
            usleep(100 * 1000);
        /* Put back what is not ours before the next pass. */
        amqp_channel_close(env->cons, 3, AMQP_REPLY_SUCCESS);
        amqp_channel_open(env->cons, 3);
        check_reply(env->cons, "reopening channel 3");
    }
    amqp_channel_close(env->cons, 3, AMQP_REPLY_SUCCESS);
    return found;
}

/* Messages for a queue that is not bound are parked in cw.delay.unroutable,
 * whatever their delay, and more of them than the broker's dead-letter
 * prefetch (32) do not hold up the others at their level. */
static void test_unbound_queue_parked(void **state)
{
    delay_env *env = *state;
    char unbound[160], id[32];
    int64_t sent;
    arrival got[1];

    snprintf(unbound, sizeof unbound, "cw.test.delay.%ld.unbound", (long)getpid());
    assert_false(publish(env, unbound, 0, "lost-0"));
    for (int i = 0; i < 40; i++) {
        snprintf(id, sizeof id, "lost-%d", i + 1);
        assert_false(publish(env, unbound, 100, id));
    }
    /* Bound ones come through on time behind them. */
    consume(env, env->queue_a);
    usleep(300 * 1000);
    sent = mono_ms();
    assert_false(publish(env, env->queue_a, 100, "behind"));
    assert_int_equal(collect(env, got, 1, mono_ms() + 100 + LATE_MS + 2000), 1);
    expect_arrival(&got[0], env->queue_a, sent, 100);

    assert_int_equal(take_parked(env, unbound, 41, 10000), 41);
}

/* A delivered message published through the topology again, without the
 * headers the broker added on its first pass, passes the same levels again
 * and arrives (with them, the broker's dead-letter cycle detection would
 * hold it at cw.delay.01 for ever). */
static void test_second_pass(void **state)
{
    delay_env *env = *state;
    amqp_table_entry_t kept[16];
    amqp_table_t headers = {.num_entries = 0, .entries = kept};
    amqp_message_t m;
    bool had_x_death = false;
    int64_t deadline = mono_ms() + 300 + LATE_MS + 2000, sent;
    arrival got[1];

    assert_false(publish(env, env->queue_a, 300, "again"));
    for (;;) {
        amqp_rpc_reply_t r = amqp_basic_get(env->cons, CONS_CH, amqp_cstring_bytes(env->queue_a),
                                            1);
        check_reply(env->cons, "basic.get");
        if (r.reply.id == AMQP_BASIC_GET_OK_METHOD)
            break;
        if (mono_ms() > deadline)
            fail_msg("the first pass never arrived");
        usleep(20 * 1000);
    }
    if (amqp_read_message(env->cons, CONS_CH, &m, 0).reply_type != AMQP_RESPONSE_NORMAL)
        fail_msg("reading the first pass");
    assert_true(m.properties._flags & AMQP_BASIC_HEADERS_FLAG);
    for (int i = 0; i < m.properties.headers.num_entries; i++) {
        const amqp_table_entry_t *h = &m.properties.headers.entries[i];
        if (cw__delay_header_is_broker(h->key.bytes, h->key.len)) {
            had_x_death |= h->key.len == 7 && memcmp(h->key.bytes, "x-death", 7) == 0;
            continue;
        }
        assert_true(headers.num_entries < 16);
        kept[headers.num_entries++] = *h;
    }
    assert_true(had_x_death);
    assert_int_equal(headers.num_entries, 2);

    consume(env, env->queue_a);
    sent = mono_ms();
    assert_false(publish_with(env, env->queue_a, 300, "again", &headers));
    amqp_destroy_message(&m);
    assert_int_equal(collect(env, got, 1, mono_ms() + 300 + LATE_MS + 2000), 1);
    expect_arrival(&got[0], env->queue_a, sent, 300);
}

/* A queue name with a wildcard word cannot be bound: it would catch other
 * queues' messages. */
static void test_bind_rejects_wildcards(void **state)
{
    delay_env *env = *state;

    assert_int_equal(cw__delay_bind_queue(env->cons, CONS_CH, "a.*.b"), CW_STATUS_INVALID_ARG);
    assert_non_null(strstr(cw_error_last(), "'a.*.b'"));
    assert_int_equal(cw__delay_bind_queue(env->cons, CONS_CH, "#"), CW_STATUS_INVALID_ARG);
    assert_int_equal(cw__delay_bind_queue(env->cons, CONS_CH, ""), CW_STATUS_INVALID_ARG);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_delays_arrive_on_time, setup, teardown),
        cmocka_unit_test_setup_teardown(test_short_not_blocked_by_long, setup, teardown),
        cmocka_unit_test_setup_teardown(test_unbound_queue_parked, setup, teardown),
        cmocka_unit_test_setup_teardown(test_second_pass, setup, teardown),
        cmocka_unit_test_setup_teardown(test_bind_rejects_wildcards, setup, teardown),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
