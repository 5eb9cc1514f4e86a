/* Internal: AMQP connections, topology and confirmed publishing. */
#ifndef CW_FRAMEWORK_BROKER_H
#define CW_FRAMEWORK_BROKER_H

#include <amqp.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "framework/config.h"
#include "framework/registry.h"

/* The dead-letter exchange every pool's DLQ is bound to (direct). */
#define CW_DLX_NAME "cw.dlx"

/* Connects to the first broker of `urls` (separated by spaces or commas) that
 * answers (amqps:// ones with the defaults of cw__broker_connect_tls()), starting at index *next and wrapping; on success *next is the
 * index of the broker connected to, so that the next call after a failure
 * moves on to the following one. `name` is shown in the management UI.
 * Errors name the broker with its password masked. */
int cw__broker_connect(amqp_connection_state_t *out, const char *urls, unsigned *next,
                       int heartbeat_s, const char *name, char *connected_to, size_t cap);

/* The same, with TLS for amqps:// URLs set up from `tls` (NULL: the
 * system's trusted CAs, peer and host name verified). A URL of the list may
 * be amqp:// or amqps://; TLS 1.2 at least. Errors say why the handshake
 * failed (OpenSSL's reason when it gives one). */
int cw__broker_connect_tls(amqp_connection_state_t *out, const char *urls, const cw_tls_config *tls,
                           unsigned *next, int heartbeat_s, const char *name, char *connected_to,
                           size_t cap);

/* cw_client_new() (include/compworker/client.h) with the TLS settings of a
 * pool file for amqps:// URLs (NULL: the defaults above). */
struct cw_client;
int cw__client_new_tls(struct cw_client **out, const char *url, const cw_tls_config *tls,
                       const char *exchange);

/* Reads the caller's cw_publish_opts of any version into *cur (fields its
 * version lacks take their defaults). CW_STATUS_INVALID_ARG for version 0
 * or a version newer than this library. */
struct cw_publish_opts;
int cw__publish_opts_read(struct cw_publish_opts *cur, const struct cw_publish_opts *opts);

/* Closes and destroys a connection (NULL-safe). */
void cw__broker_close(amqp_connection_state_t conn);

/* Destroys a connection without the closing handshake (NULL-safe): for a
 * connection a library error ended. rabbitmq-c leaves its reader in a state
 * it must not read on after some errors (a frame larger than frame_max
 * overflows a buffer on the next read), and a session that failed gains
 * nothing from a polite close: what it held unacked is redelivered. */
void cw__broker_abort(amqp_connection_state_t conn);

/* Lets a connection that only consumes (and acks) read frames up to twice
 * the negotiated frame_max, before its first channel is opened. The broker
 * sends a content header as one frame however large: a producer may fill
 * one to the limit, and a quorum queue adds x-delivery-count when it
 * redelivers it, so that the redelivery no longer fits and rabbitmq-c
 * would refuse it, again and again, at the head of the queue. Nothing may
 * be published on the connection afterwards (its body frames would be cut
 * to the larger size). */
int cw__broker_accept_large_frames(amqp_connection_state_t conn);

/* 0 for a normal RPC reply, else a status with a readable message naming
 * `what` (the broker's reply code and text, or the library's error):
 * CW_STATUS_CONNECTION for a lost connection, a connection the broker
 * closed with CONNECTION_FORCED (its shutdown, an operator's close) among
 * them; CW_STATUS_BROKER_REFUSED when the broker closed the channel or the
 * connection for any other reason (a refusal of what was asked). */
int cw__broker_reply(amqp_rpc_reply_t r, const char *what);

/* Declares the tasks exchange `exchange` (topic, durable), as a pool does. */
int cw__exchange_declare(amqp_connection_state_t conn, amqp_channel_t ch, const char *exchange);

/* Declares the tasks exchange, the pool queue bound by every registered type,
 * the dead-letter exchange and the pool's DLQ, on channel `ch`. Idempotent;
 * CW_STATUS_BROKER_REFUSED (with the broker's reason) when an existing
 * exchange or queue has other arguments. */
int cw__topology_declare(amqp_connection_state_t conn, amqp_channel_t ch, const cw_config *cfg,
                         const cw_registry *reg);

/* amqp_consume_message() with memory bounded by the delivery it reads:
 * what it keeps is copied out of rabbitmq-c's frame buffers, which are
 * recycled after every frame (framework/consume.c says why), and what
 * earlier deliveries left there is released first. Waits up to `timeout`
 * (NULL: for ever) for the next frame. Returns a normal reply with *env
 * filled (free it with amqp_destroy_envelope()), or a library exception:
 * AMQP_STATUS_TIMEOUT when nothing came; AMQP_STATUS_UNEXPECTED_STATE when
 * the next frame is not a delivery, that frame then in *other (its decoded
 * payload valid until the next call on `conn`); or what failed. A channel
 * or connection close in the middle of a delivery's content is a server
 * exception, as from amqp_read_message(). */
amqp_rpc_reply_t cw__broker_consume(amqp_connection_state_t conn, amqp_envelope_t *env,
                                    const struct timeval *timeout, amqp_frame_t *other);

/* cw__broker_consume() into memory that the envelope keeps between
 * deliveries: env->message.pool (initialised once with init_amqp_pool())
 * holds the delivery's names, properties and body, so that a worker's slot
 * reads delivery after delivery without a malloc() once its pool has its
 * page. Release the delivery with cw__envelope_recycle() (never with
 * amqp_destroy_envelope()); free the pool with empty_amqp_pool() when the
 * slot goes. Pools that grew past CW_ENVELOPE_POOL_PAGES pages are emptied
 * at the recycle. */
#define CW_ENVELOPE_POOL_PAGES 4
amqp_rpc_reply_t cw__broker_consume_pooled(amqp_connection_state_t conn, amqp_envelope_t *env,
                                           const struct timeval *timeout, amqp_frame_t *other);
void cw__envelope_recycle(amqp_envelope_t *env);

/* A channel in confirm mode. */
typedef struct cw_publisher {
    amqp_connection_state_t conn;
    amqp_channel_t ch;
    uint64_t next_seq; /* the sequence number of the next publish */
    uint64_t base;     /* first sequence number not yet known confirmed */
    uint8_t *pending;  /* pending[seq - base]: 1 while unconfirmed */
    size_t pending_cap;
    unsigned nacked, returned;
    char last_return[512]; /* the reply and the routing key (up to 255 bytes) */
    /* Called by cw__publisher_wait() for each message the broker returned
     * (mandatory, unroutable) with its properties and the reason ("312
     * NO_ROUTE (routing key 'x')"), both borrowed for the call; NULL: none. */
    void (*on_return)(void *ctx, const amqp_basic_properties_t *props, const char *why);
    void *return_ctx;
} cw_publisher;

/* Puts channel `ch` of `conn` in confirm mode. */
int cw__publisher_open(cw_publisher *p, amqp_connection_state_t conn, amqp_channel_t ch);
void cw__publisher_free(cw_publisher *p);

/* Publishes (persistent is the caller's choice in props). */
int cw__publisher_send(cw_publisher *p, const char *exchange, amqp_bytes_t routing_key,
                       bool mandatory, const amqp_basic_properties_t *props, amqp_bytes_t body);

/* Publishes (mandatory, persistent) a message of the message contract: its
 * message ID, type, saga ID as correlation_id (NULL or "": none), content
 * type application/json, timestamp and app_id "compworker", and `headers`
 * (NULL or empty: none; borrowed). The caller has checked the fields
 * (cw__task_fields_check()). */
int cw__publish_task(cw_publisher *p, const char *exchange, const char *routing_key,
                     const char *message_id, const char *type, const char *saga_id,
                     const void *body, size_t len, const amqp_table_t *headers);

/* The headers of a follow-up (cw_followup.headers: a JSON object of
 * string values) as an AMQP table whose strings point into *hold (free it
 * with json_object_put() after publishing). NULL json: an empty table.
 * CW_STATUS_INVALID_ARG when it is not such an object. */
struct json_object;
int cw__headers_table(const char *json, amqp_table_t *out, struct json_object **hold);

/* Checks the fields of a task as a worker would take them, before it is
 * published: `type` [A-Za-z0-9._:-]{1,255}; `message_id` NULL (then a new
 * UUIDv7, framework/message_id.h, is written to id_out) or 1 to
 * CW_MESSAGE_ID_MAX printable ASCII characters (copied to id_out, of
 * CW_MESSAGE_ID_MAX + 1 bytes); `saga_id` NULL, "" or printable ASCII up to
 * 255 bytes; `body` a JSON object text of `len` bytes. CW_STATUS_INVALID_ARG
 * with "what: reason" in why. */
int cw__task_fields_check(const char *type, const char *message_id, const char *saga_id,
                          const char *body, size_t len, char *id_out, char *why, size_t why_len);

/* cw__publisher_send() (mandatory) of a copy of a delivered message (a
 * dead-letter, a retry): the properties of a message travel in one frame,
 * and the failure headers a copy gains may no longer fit with what its
 * producer put there. Then the largest headers not named cw-* are left out
 * of the copy, largest first, until it fits, and a string header
 * cw-dropped-headers says which ("x-fill (130007 bytes)"): the task and its
 * failure reach their next place instead of failing there for ever. */
int cw__publisher_send_copy(cw_publisher *p, const char *exchange, amqp_bytes_t routing_key,
                            const amqp_basic_properties_t *props, amqp_bytes_t body);

/* Waits until every publish sent so far is confirmed or `timeout_ms` has
 * passed. 0 when all were acked and none was returned; CW_STATUS_NACKED when
 * at least one was nacked, else CW_STATUS_UNROUTABLE when one was returned (the counts
 * are in p->nacked / p->returned, reset by the next wait); CW_STATUS_TIMEOUT;
 * CW_STATUS_CONNECTION / CW_STATUS_BROKER_REFUSED when the connection or
 * channel closed. */
int cw__publisher_wait(cw_publisher *p, int timeout_ms);

#endif
