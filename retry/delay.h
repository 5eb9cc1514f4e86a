/* Internal: the delay topology — delayed redelivery to one queue without a
 * broker plugin. How it works is described at the top of delay.c. */
#ifndef CW_RETRY_DELAY_H
#define CW_RETRY_DELAY_H

#include <amqp.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "framework/limits.h" /* CW_DELAY_LEVELS, CW_DELAY_UNIT_MS, CW_DELAY_MAX_MS */

/* Where a delayed message is published (mandatory, persistent), with the
 * routing key of cw__delay_routing_key(). */
#define CW_DELAY_ENTRY_EXCHANGE "cw.delay.19"
/* Where delayed messages come out; each destination queue is bound to it. */
#define CW_DELAY_DELIVER_EXCHANGE "cw.delay.deliver"
/* The alternate exchange of the delivery exchange (fanout) and the queue
 * bound to it (quorum): delayed messages whose queue is not bound (any
 * more) are parked there, their routing key naming the queue, instead of
 * being held by a level queue. Nobody consumes it; an operator may. */
#define CW_DELAY_UNROUTABLE "cw.delay.unroutable"
/* The exchange and queue of level L are CW_DELAY_NAME_PREFIX "%02d". */
#define CW_DELAY_NAME_PREFIX "cw.delay."

/* The longest routing key: CW_DELAY_LEVELS words "0."/"1." and the queue
 * name, within AMQP's 255-byte short string. */
#define CW_DELAY_KEY_MAX 255
#define CW_DELAY_QUEUE_MAX (CW_DELAY_KEY_MAX - 2 * CW_DELAY_LEVELS) /* 215 */

/* Declares the delivery exchange, its alternate exchange and queue
 * (CW_DELAY_UNROUTABLE) and the CW_DELAY_LEVELS exchanges, quorum queues
 * and bindings of the topology on channel `ch`. Idempotent: the same
 * declarations again change nothing. Returns 0; CW_STATUS_BROKER_REFUSED
 * when the broker is older than RabbitMQ 3.10 (no message TTL or
 * at-least-once dead-lettering on quorum queues) or refuses a declaration
 * (e.g. a queue of that name exists with other arguments; the channel is
 * then closed); CW_STATUS_CONNECTION when the connection fails. The message
 * in cw_error_last() names the exchange, queue or binding. Not thread-safe
 * on one connection (like everything in rabbitmq-c). */
int cw__delay_declare(amqp_connection_state_t conn, amqp_channel_t ch);

/* Binds `queue` to the delivery exchange, so that messages delayed for it
 * (and only those) arrive in it. Idempotent. The topology must be declared.
 * CW_STATUS_INVALID_ARG when `queue` is empty, longer than
 * CW_DELAY_QUEUE_MAX bytes or has a dot-separated word "*" or "#" (a
 * wildcard in a binding key); broker errors as for cw__delay_declare(). */
int cw__delay_bind_queue(amqp_connection_state_t conn, amqp_channel_t ch, const char *queue);

/* True for a header the broker adds that a message must not carry when it
 * is published through the topology again (a further retry of a delivered
 * message): x-death, x-first-death-*, x-last-death-* (its dead-letter
 * history; RabbitMQ's cycle detection would hold the message at a level it
 * passed before, for ever) and x-delivery-count (set by quorum queues).
 * `key` is `len` bytes, not NUL-terminated (an amqp_bytes_t). */
bool cw__delay_header_is_broker(const char *key, size_t len);

/* `delay_ms` in units of CW_DELAY_UNIT_MS, rounded up, clamped to
 * [0, CW_DELAY_MAX_UNITS] (a negative delay is 0). */
int64_t cw__delay_units(int64_t delay_ms);

/* Writes into out[cap] the routing key that delays a message by `delay_ms`
 * (rounded up to the unit, clamped to CW_DELAY_MAX_MS) on its way to
 * `queue`: the CW_DELAY_LEVELS bits of cw__delay_units(delay_ms), most
 * significant first, as words "0"/"1", then the queue name, e.g.
 * "0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.1.1.1.1.cw.orders" for 1.5 s. Returns 0,
 * or CW_STATUS_INVALID_ARG when `queue` is empty or the key does not fit in
 * `cap` or in CW_DELAY_KEY_MAX bytes (out is then ""). */
int cw__delay_routing_key(int64_t delay_ms, const char *queue, char *out, size_t cap);

#endif
