/* compworker — publishing compensation tasks from a service.
 *
 *     cw_client *c;
 *     if (cw_client_new(&c, "amqp://guest:guest@127.0.0.1:5672/", "cw.tasks") < 0)
 *         die(cw_error_last());
 *     cw_publish_opts o = CW_PUBLISH_OPTS_INIT;
 *     o.type = "payment.refund";
 *     o.saga_id = saga;
 *     o.body = "{\"payment_id\":\"p-1\",\"amount_cents\":1200}";
 *     char id[CW_MESSAGE_ID_MAX + 1];
 *     int rc = cw_client_publish(c, &o, id, sizeof id);
 *     cw_client_free(c);
 *
 * A publish returns only when the broker has confirmed it (publisher
 * confirms): the task is then on disk in every queue it was routed to. A task
 * that no queue is bound for is refused (CW_STATUS_UNROUTABLE) rather than
 * silently dropped.
 *
 * A cw_client is one AMQP connection. It is not thread-safe: use one per
 * thread. It must not be used in both a parent and a child after fork().
 */
#ifndef COMPWORKER_CLIENT_H
#define COMPWORKER_CLIENT_H

#include <stddef.h>
#include <stdint.h>

#include "export.h"
#include "status.h"

#ifdef __cplusplus
extern "C" {
#endif

/** The longest message ID compworker accepts, in bytes. */
#define CW_MESSAGE_ID_MAX 128

/** A publishing connection. Opaque; free with cw_client_free(). */
typedef struct cw_client cw_client;

/** What to publish. Start from CW_PUBLISH_OPTS_INIT and set fields by name;
 *  fields may be added at the end in later versions. Strings are borrowed for
 *  the duration of the call. */
typedef struct cw_publish_opts {
    unsigned version;            /**< CW_PUBLISH_OPTS_VERSION */
    const char *type;            /**< task type and routing key; required */
    const char *saga_id;         /**< AMQP correlation_id; NULL for none */
    const char *message_id;      /**< idempotency key; NULL for a fresh UUIDv7 */
    const char *body;            /**< JSON object text; required */
    size_t body_len;             /**< bytes of `body`; 0 means strlen(body) */
    const char *routing_key;     /**< NULL to route by `type` */
    uint32_t confirm_timeout_ms; /**< 0 for the default, 30000 ms */
} cw_publish_opts;

#define CW_PUBLISH_OPTS_VERSION 1
#define CW_PUBLISH_OPTS_INIT                                                                       \
    {                                                                                              \
        CW_PUBLISH_OPTS_VERSION, NULL, NULL, NULL, NULL, 0, NULL, 0                                \
    }

/** Fills `opts` with the defaults of CW_PUBLISH_OPTS_INIT as of `version`
 *  (pass CW_PUBLISH_OPTS_VERSION), for callers that cannot use the macro
 *  (bindings from other languages). Only the fields `version` has are
 *  written, so a caller built against an older header may pass its own.
 *  @return 0; CW_STATUS_INVALID_ARG for a NULL `opts`, version 0, or a
 *          version newer than this library. Thread- and fork-safe. */
CW_EXTERN int cw_publish_opts_init(cw_publish_opts *opts, unsigned version);

/** Connects to a broker and declares nothing.
 *
 *  @param out       receives the client; free it with cw_client_free()
 *  @param url       amqp://user:pass@host:port/vhost (copied); several URLs
 *                   separated by spaces or commas are tried in order
 *  @param exchange  the tasks exchange to publish to, e.g. "cw.tasks" (copied)
 *  @return 0; CW_STATUS_INVALID_ARG for a malformed URL; CW_STATUS_CONNECTION
 *          when no broker could be reached or login failed; CW_STATUS_NOMEM.
 *          cw_error_last() says which broker and why (never the password). */
CW_EXTERN int cw_client_new(cw_client **out, const char *url, const char *exchange);

/** Publishes one task (persistent, content_type application/json, mandatory)
 *  and waits for the broker's confirm. Options of every version from 1 to
 *  CW_PUBLISH_OPTS_VERSION are accepted: fields a version lacks take their
 *  defaults.
 *
 *  @param c              the client
 *  @param opts           what to publish (borrowed)
 *  @param message_id_out receives the message ID used (the given one or the
 *                        generated one: a UUIDv7, RFC 9562, time-ordered
 *                        and in a process each greater than the last, so
 *                        that stores index new IDs at one edge),
 *                        NUL-terminated; may be NULL
 *  @param out_len        size of `message_id_out` in bytes; at least
 *                        CW_MESSAGE_ID_MAX + 1 to hold any ID
 *  @return 0 once confirmed; CW_STATUS_INVALID_ARG (no type, a body that is
 *          not a JSON object, a bad message ID, options of version 0 or of
 *          a version newer than this library); CW_STATUS_UNROUTABLE (no queue
 *          is bound for the type); CW_STATUS_NACKED; CW_STATUS_TIMEOUT (no
 *          confirm in time: the task may or may not be queued; publishing it
 *          again with the same message ID is safe); CW_STATUS_CONNECTION (the
 *          client is then unusable: free it and make a new one). */
CW_EXTERN int cw_client_publish(cw_client *c, const cw_publish_opts *opts, char *message_id_out,
                                size_t out_len);

/** Closes the connection and frees the client. Accepts NULL. */
CW_EXTERN void cw_client_free(cw_client *c);

#ifdef __cplusplus
}
#endif
#endif
