/* The delay topology: delayed redelivery to one queue, with no broker plugin.
 *
 * A delay is a count of 100 ms units, written as 20 bits (up to 2^20 - 1
 * units, 29 h 7 m 37.5 s). Level L (0..19) holds a message 2^L units; a
 * message passes, from the top down, through the levels whose bit is set in
 * its delay, and skips the others. (This is the layout NServiceBus uses for
 * delayed delivery on RabbitMQ without the delayed-message plugin.)
 *
 * Objects (all durable; declared by cw__delay_declare()):
 *
 *   exchange cw.delay.LL        topic, LL = 00..19
 *   queue    cw.delay.LL        quorum; x-message-ttl = 100 ms * 2^LL
 *                               (cw.delay.00: 100 ms ... cw.delay.19: 14 h 33 m
 *                               48.8 s); x-dead-letter-exchange =
 *                               cw.delay.(LL-1), for LL = 00 cw.delay.deliver;
 *                               x-dead-letter-strategy = at-least-once,
 *                               x-overflow = reject-publish. Nobody consumes
 *                               these queues: messages only expire out of them.
 *   exchange cw.delay.deliver   topic, alternate-exchange = cw.delay.unroutable:
 *                               where delayed messages come out
 *   exchange cw.delay.unroutable  fanout
 *   queue    cw.delay.unroutable  quorum, bound to the exchange of that name:
 *                               delayed messages for a queue that is not bound
 *
 * The routing key of a delayed message is its 20 bits, most significant
 * first, one word each, then the destination queue's name:
 *
 *     b19.b18. ... .b1.b0.<queue>      e.g. 1.5 s = 15 units = 0b1111:
 *     0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.1.1.1.1.cw.orders
 *
 * Bindings, for each level L (bit L is word 19 - L of the key; "*" x n is
 * n words "*"):
 *
 *   queue cw.delay.L      <- exchange cw.delay.L    "*" x (19-L) . "1" . "#"
 *   exchange cw.delay.L-1 <- exchange cw.delay.L    "*" x (19-L) . "0" . "#"
 *                            (for L = 0: exchange cw.delay.deliver)
 *   queue Q               <- exchange cw.delay.deliver  "*" x 20 . Q
 *                            (one per destination queue, cw__delay_bind_queue())
 *
 * How a message moves: it is published (mandatory, persistent) to
 * cw.delay.19. Each exchange looks at its own bit: 1 puts the message in the
 * level's queue, where it waits that level's TTL and is dead-lettered, its
 * routing key unchanged, to the exchange one level down; 0 passes it at once
 * to the exchange one level down (an exchange-to-exchange binding). After
 * level 0 it reaches cw.delay.deliver, which routes it by the queue name at
 * the end of the key to that one queue: a retry returns to the queue it
 * failed in, not to every queue bound to its original routing key. The time
 * a message waits is the sum of the TTLs of the levels of its set bits, i.e.
 * exactly its delay (plus the broker's expiry and dead-lettering latency, a
 * few milliseconds per level). Every message in one level's queue has the
 * same TTL, so the head always expires first: a long delay never holds up a
 * short one. A delay of 0 goes straight through to the queue. Properties,
 * headers and body travel unchanged; the broker adds x-death headers.
 *
 * Dead-lettering out of the level queues is at-least-once (RabbitMQ 3.10's
 * quorum-queue dead-letter strategy): a level queue keeps a message until
 * the next level or the destination queue has confirmed it, so a broker
 * restart or a node failure does not lose a delayed message. RabbitMQ 3.10
 * observations this layout answers:
 *
 *  - at-least-once only takes effect with x-overflow = reject-publish; with
 *    the default drop-head the broker falls back to at-most-once and only
 *    logs a warning. Hence reject-publish (there is no length limit, so
 *    nothing is ever rejected).
 *  - A message the broker cannot route when it dead-letters it is not
 *    dropped but held by the level queue and retried every
 *    dead_letter_worker_publisher_confirm_timeout (180 s), and each held
 *    message takes one of the level's dead_letter_worker_consumer_prefetch
 *    (32) slots: 32 messages for a queue that is gone would stop that level
 *    for everyone. Hence the alternate exchange of cw.delay.deliver: a
 *    message whose queue is not bound is parked in cw.delay.unroutable
 *    (its routing key names the queue; shovel it back by hand) and the level
 *    moves on. A delay of 0 to such a queue is parked there too, not
 *    returned to the publisher.
 *  - Dead-letter cycle detection: a message whose x-death already names the
 *    level queue it is being dead-lettered into is taken for a loop and, with
 *    at-least-once, held by the level for ever (taking a slot, as above).
 *    A message republished through the topology (a further retry) must
 *    therefore not carry the x-death of its previous pass: drop the headers
 *    cw__delay_header_is_broker() names before republishing. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "compworker/status.h"
#include "framework/broker.h"
#include "framework/error.h"
#include "retry/delay.h"

/* The broker needed: quorum queues gained message TTL and at-least-once
 * dead-lettering in RabbitMQ 3.10. */
#define CW_DELAY_MIN_MAJOR 3
#define CW_DELAY_MIN_MINOR 10

static void cw_delay_name(char *out, size_t cap, int level)
{
    snprintf(out, cap, CW_DELAY_NAME_PREFIX "%02d", level);
}

/* The binding key that matches `bit` ('0' or '1') at the word of `level`:
 * "*" words before it, then ".#". */
static void cw_delay_level_pattern(char *out, size_t cap, int level, char bit)
{
    size_t used = 0;

    for (int w = 0; w < CW_DELAY_LEVELS - 1 - level; w++)
        used += (size_t)snprintf(out + used, cap - used, "*.");
    snprintf(out + used, cap - used, "%c.#", bit);
}

static amqp_table_entry_t cw_str_entry(const char *key, const char *value)
{
    amqp_table_entry_t e;

    e.key = amqp_cstring_bytes(key);
    e.value.kind = AMQP_FIELD_KIND_UTF8;
    e.value.value.bytes = amqp_cstring_bytes(value);
    return e;
}

static amqp_table_entry_t cw_i64_entry(const char *key, int64_t value)
{
    amqp_table_entry_t e;

    e.key = amqp_cstring_bytes(key);
    e.value.kind = AMQP_FIELD_KIND_I64;
    e.value.value.i64 = value;
    return e;
}

/* Refuses a broker older than 3.10 by its announced version, with a message
 * that says why, before it would refuse (or worse, ignore) an argument. A
 * broker that announces no version is given the benefit of the doubt. */
static int cw_delay_check_version(amqp_connection_state_t conn)
{
    const amqp_table_t *props = amqp_get_server_properties(conn);
    int major, minor;
    char version[64];

    if (props == NULL)
        return 0;
    for (int i = 0; i < props->num_entries; i++) {
        const amqp_table_entry_t *e = &props->entries[i];
        if (e->key.len != 7 || memcmp(e->key.bytes, "version", 7) != 0 ||
            (e->value.kind != AMQP_FIELD_KIND_UTF8 && e->value.kind != AMQP_FIELD_KIND_BYTES))
            continue;
        snprintf(version, sizeof version, "%.*s", (int)e->value.value.bytes.len,
                 (const char *)e->value.value.bytes.bytes);
        if (sscanf(version, "%d.%d", &major, &minor) != 2)
            return 0;
        if (major > CW_DELAY_MIN_MAJOR ||
            (major == CW_DELAY_MIN_MAJOR && minor >= CW_DELAY_MIN_MINOR))
            return 0;
        return cw__error(CW_STATUS_BROKER_REFUSED,
                         "the delay topology needs RabbitMQ %d.%d or later (message TTL and "
                         "at-least-once dead-lettering on quorum queues); the broker is %s",
                         CW_DELAY_MIN_MAJOR, CW_DELAY_MIN_MINOR, version);
    }
    return 0;
}

static int cw_delay_exchange(amqp_connection_state_t conn, amqp_channel_t ch, const char *name,
                             const char *type, amqp_table_t args, const char *note)
{
    char what[512];

    amqp_exchange_declare(conn, ch, amqp_cstring_bytes(name), amqp_cstring_bytes(type), 0, 1, 0, 0,
                          args);
    snprintf(what, sizeof what, "declaring delay exchange '%s' (%s, durable%s)", name, type, note);
    return cw__broker_reply(amqp_get_rpc_reply(conn), what);
}

/* The delivery exchange, and where it puts what it cannot route. */
static int cw_delay_deliver(amqp_connection_state_t conn, amqp_channel_t ch)
{
    char what[512];
    int rc;

    rc = cw_delay_exchange(conn, ch, CW_DELAY_UNROUTABLE, "fanout", amqp_empty_table, "");
    if (rc)
        return rc;
    amqp_table_entry_t qargs[] = {cw_str_entry("x-queue-type", "quorum")};
    amqp_table_t qtable = {.num_entries = 1, .entries = qargs};
    amqp_queue_declare(conn, ch, amqp_cstring_bytes(CW_DELAY_UNROUTABLE), 0, 1, 0, 0, qtable);
    snprintf(what, sizeof what,
             "declaring queue '%s' (quorum) for delayed messages whose queue is not bound",
             CW_DELAY_UNROUTABLE);
    if ((rc = cw__broker_reply(amqp_get_rpc_reply(conn), what)))
        return rc;
    amqp_queue_bind(conn, ch, amqp_cstring_bytes(CW_DELAY_UNROUTABLE),
                    amqp_cstring_bytes(CW_DELAY_UNROUTABLE), amqp_empty_bytes, amqp_empty_table);
    snprintf(what, sizeof what, "binding queue '%s' to exchange '%s'", CW_DELAY_UNROUTABLE,
             CW_DELAY_UNROUTABLE);
    if ((rc = cw__broker_reply(amqp_get_rpc_reply(conn), what)))
        return rc;

    amqp_table_entry_t xargs[] = {cw_str_entry("alternate-exchange", CW_DELAY_UNROUTABLE)};
    amqp_table_t xtable = {.num_entries = 1, .entries = xargs};
    return cw_delay_exchange(conn, ch, CW_DELAY_DELIVER_EXCHANGE, "topic", xtable,
                             ", alternate-exchange '" CW_DELAY_UNROUTABLE
                             "'; if it exists with other arguments, delete it: it is recreated");
}

static int cw_delay_level(amqp_connection_state_t conn, amqp_channel_t ch, int level)
{
    char name[32], below[32], pattern[128], what[512];
    int64_t ttl_ms = (int64_t)CW_DELAY_UNIT_MS << level;
    int rc;

    cw_delay_name(name, sizeof name, level);
    if (level == 0)
        snprintf(below, sizeof below, "%s", CW_DELAY_DELIVER_EXCHANGE);
    else
        cw_delay_name(below, sizeof below, level - 1);

    if ((rc = cw_delay_exchange(conn, ch, name, "topic", amqp_empty_table, "")))
        return rc;

    amqp_table_entry_t args[] = {
        cw_str_entry("x-queue-type", "quorum"),
        cw_i64_entry("x-message-ttl", ttl_ms),
        cw_str_entry("x-dead-letter-exchange", below),
        cw_str_entry("x-dead-letter-strategy", "at-least-once"),
        cw_str_entry("x-overflow", "reject-publish"),
    };
    amqp_table_t table = {.num_entries = (int)(sizeof args / sizeof *args), .entries = args};
    amqp_queue_declare(conn, ch, amqp_cstring_bytes(name), 0, 1, 0, 0, table);
    snprintf(what, sizeof what,
             "declaring delay queue '%s' (quorum, x-message-ttl %lld ms, dead-lettering "
             "at-least-once to '%s'; needs RabbitMQ 3.10 or later; if it exists with other "
             "arguments, delete it (with the messages it holds) and it is recreated)",
             name, (long long)ttl_ms, below);
    if ((rc = cw__broker_reply(amqp_get_rpc_reply(conn), what)))
        return rc;

    cw_delay_level_pattern(pattern, sizeof pattern, level, '1');
    amqp_queue_bind(conn, ch, amqp_cstring_bytes(name), amqp_cstring_bytes(name),
                    amqp_cstring_bytes(pattern), amqp_empty_table);
    snprintf(what, sizeof what, "binding delay queue '%s' to exchange '%s' by '%s'", name, name,
             pattern);
    if ((rc = cw__broker_reply(amqp_get_rpc_reply(conn), what)))
        return rc;

    cw_delay_level_pattern(pattern, sizeof pattern, level, '0');
    amqp_exchange_bind(conn, ch, amqp_cstring_bytes(below), amqp_cstring_bytes(name),
                       amqp_cstring_bytes(pattern), amqp_empty_table);
    snprintf(what, sizeof what, "binding exchange '%s' to exchange '%s' by '%s'", below, name,
             pattern);
    return cw__broker_reply(amqp_get_rpc_reply(conn), what);
}

int cw__delay_declare(amqp_connection_state_t conn, amqp_channel_t ch)
{
    int rc;

    if ((rc = cw_delay_check_version(conn)))
        return rc;
    if ((rc = cw_delay_deliver(conn, ch)))
        return rc;
    /* Bottom up, so that each level's dead-letter exchange exists before the
     * queue that names it. */
    for (int level = 0; level < CW_DELAY_LEVELS; level++) {
        if ((rc = cw_delay_level(conn, ch, level)))
            return rc;
    }
    return 0;
}

/* A destination queue name the topology can carry. */
static int cw_delay_check_queue(const char *queue)
{
    size_t len = queue ? strlen(queue) : 0;

    if (len == 0)
        return cw__error(CW_STATUS_INVALID_ARG, "delay: the destination queue name is empty");
    if (len > CW_DELAY_QUEUE_MAX)
        return cw__error(CW_STATUS_INVALID_ARG,
                         "delay: queue name '%.40s...' is longer than %d bytes (its routing key "
                         "would exceed %d)",
                         queue, CW_DELAY_QUEUE_MAX, CW_DELAY_KEY_MAX);
    return 0;
}

int cw__delay_bind_queue(amqp_connection_state_t conn, amqp_channel_t ch, const char *queue)
{
    char pattern[CW_DELAY_KEY_MAX + 1], what[512];
    size_t used = 0;
    int rc;

    if ((rc = cw_delay_check_queue(queue)))
        return rc;
    /* A word "*" or "#" of the name would be a wildcard in the binding key
     * and take other queues' messages. */
    for (const char *w = queue; w != NULL; w = strchr(w, '.') ? strchr(w, '.') + 1 : NULL) {
        size_t wlen = strcspn(w, ".");
        if (wlen == 1 && (*w == '*' || *w == '#'))
            return cw__error(CW_STATUS_INVALID_ARG,
                             "delay: queue name '%s' has a word '%c', a wildcard in a topic "
                             "binding; rename the queue",
                             queue, *w);
    }
    for (int w = 0; w < CW_DELAY_LEVELS; w++)
        used += (size_t)snprintf(pattern + used, sizeof pattern - used, "*.");
    snprintf(pattern + used, sizeof pattern - used, "%s", queue);

    amqp_queue_bind(conn, ch, amqp_cstring_bytes(queue),
                    amqp_cstring_bytes(CW_DELAY_DELIVER_EXCHANGE), amqp_cstring_bytes(pattern),
                    amqp_empty_table);
    snprintf(what, sizeof what, "binding queue '%s' to delay exchange '%s'", queue,
             CW_DELAY_DELIVER_EXCHANGE);
    return cw__broker_reply(amqp_get_rpc_reply(conn), what);
}

bool cw__delay_header_is_broker(const char *key, size_t len)
{
    static const char *const exact[] = {"x-death", "x-delivery-count"};
    static const char *const prefixes[] = {"x-first-death-", "x-last-death-"};

    for (size_t i = 0; i < sizeof exact / sizeof *exact; i++) {
        if (len == strlen(exact[i]) && memcmp(key, exact[i], len) == 0)
            return true;
    }
    for (size_t i = 0; i < sizeof prefixes / sizeof *prefixes; i++) {
        size_t plen = strlen(prefixes[i]);
        if (len > plen && memcmp(key, prefixes[i], plen) == 0)
            return true;
    }
    return false;
}

int64_t cw__delay_units(int64_t delay_ms)
{
    int64_t units;

    if (delay_ms <= 0)
        return 0;
    units = delay_ms / CW_DELAY_UNIT_MS + (delay_ms % CW_DELAY_UNIT_MS != 0);
    return units < CW_DELAY_MAX_UNITS ? units : CW_DELAY_MAX_UNITS;
}

int cw__delay_routing_key(int64_t delay_ms, const char *queue, char *out, size_t cap)
{
    int64_t units = cw__delay_units(delay_ms);
    size_t qlen;
    int rc;

    if (cap > 0)
        out[0] = '\0';
    if ((rc = cw_delay_check_queue(queue)))
        return rc;
    qlen = strlen(queue);
    if (2 * CW_DELAY_LEVELS + qlen + 1 > cap)
        return cw__error(CW_STATUS_INVALID_ARG,
                         "delay: the routing key for queue '%s' needs %zu bytes, %zu given", queue,
                         2 * (size_t)CW_DELAY_LEVELS + qlen + 1, cap);
    for (int level = CW_DELAY_LEVELS - 1, i = 0; level >= 0; level--, i += 2) {
        out[i] = (units >> level) & 1 ? '1' : '0';
        out[i + 1] = '.';
    }
    memcpy(out + 2 * CW_DELAY_LEVELS, queue, qlen + 1);
    return 0;
}
