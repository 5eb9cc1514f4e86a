/* AMQP connections and topology. */
#include <amqp_ssl_socket.h>
#include <amqp_tcp_socket.h>
#include <openssl/err.h>
#include <openssl/ssl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "framework/broker.h"
#include "framework/error.h"
#include "framework/limits.h"
#include "framework/log.h"
#include "framework/url.h"

#define CW_CONNECT_TIMEOUT_S 5
#define CW_FRAME_MAX 131072
/* How much larger than negotiated a frame a consuming connection reads
 * (see cw__broker_accept_large_frames). */
#define CW_INBOUND_FRAME_FACTOR 2

int cw__broker_reply(amqp_rpc_reply_t r, const char *what)
{
    switch (r.reply_type) {
    case AMQP_RESPONSE_NORMAL: return 0;
    case AMQP_RESPONSE_NONE:
        return cw__error(CW_STATUS_CONNECTION, "%s: no reply from the broker", what);
    case AMQP_RESPONSE_LIBRARY_EXCEPTION:
        return cw__error(CW_STATUS_CONNECTION, "%s: %s", what, amqp_error_string2(r.library_error));
    case AMQP_RESPONSE_SERVER_EXCEPTION:
        if (r.reply.id == AMQP_CONNECTION_CLOSE_METHOD) {
            const amqp_connection_close_t *m = r.reply.decoded;
            /* CONNECTION_FORCED: the broker shuts down, or an operator
             * closed the connection. Not a refusal of what was asked: the
             * connection is lost, and connecting again is what to do. */
            return cw__error(m->reply_code == AMQP_CONNECTION_FORCED ? CW_STATUS_CONNECTION
                                                                     : CW_STATUS_BROKER_REFUSED,
                             "%s: the broker closed the connection: %.*s", what,
                             (int)m->reply_text.len, (const char *)m->reply_text.bytes);
        }
        if (r.reply.id == AMQP_CHANNEL_CLOSE_METHOD) {
            const amqp_channel_close_t *m = r.reply.decoded;
            return cw__error(CW_STATUS_BROKER_REFUSED, "%s: the broker closed the channel: %.*s",
                             what, (int)m->reply_text.len, (const char *)m->reply_text.bytes);
        }
        return cw__error(CW_STATUS_BROKER_REFUSED, "%s: unexpected broker method 0x%08x", what,
                         r.reply.id);
    }
    return cw__error(CW_STATUS_CONNECTION, "%s: unknown reply", what);
}

/* A TLS socket for `conn` set up from `tls` (NULL: the system's CAs, both
 * verifications on). */
static int tls_socket(amqp_connection_state_t conn, const cw_tls_config *tls, const char *masked,
                      amqp_socket_t **out)
{
    static const cw_tls_config defaults = {.verify_peer = true, .verify_hostname = true};
    if (!tls)
        tls = &defaults;
    amqp_socket_t *sock = amqp_ssl_socket_new(conn);
    if (!sock)
        return cw__error(CW_STATUS_NOMEM, "cannot create a TLS socket for %s", masked);
    if (tls->ca_file) {
        if (amqp_ssl_socket_set_cacert(sock, tls->ca_file) != AMQP_STATUS_OK)
            return cw__error(CW_STATUS_INVALID_ARG,
                             "[broker] tls_ca_file '%s' holds no PEM certificate OpenSSL can use",
                             tls->ca_file);
    } else if (SSL_CTX_set_default_verify_paths(amqp_ssl_socket_get_context(sock)) != 1) {
        return cw__error(CW_STATUS_INVALID_ARG,
                         "cannot load the system's trusted CAs for %s: set [broker] tls_ca_file",
                         masked);
    }
    if (tls->cert_file && tls->key_file &&
        amqp_ssl_socket_set_key(sock, tls->cert_file, tls->key_file) != AMQP_STATUS_OK)
        return cw__error(CW_STATUS_INVALID_ARG,
                         "[broker] tls_cert_file '%s' and tls_key_file '%s' are not a PEM "
                         "certificate and its unencrypted private key",
                         tls->cert_file, tls->key_file);
    amqp_ssl_socket_set_verify_peer(sock, tls->verify_peer);
    amqp_ssl_socket_set_verify_hostname(sock, tls->verify_hostname);
    if (amqp_ssl_socket_set_ssl_versions(sock, AMQP_TLSv1_2, AMQP_TLSvLATEST) != AMQP_STATUS_OK)
        return cw__error(CW_STATUS_INVALID_ARG, "this OpenSSL cannot do TLS 1.2 (%s)", masked);
    *out = sock;
    return 0;
}

/* OpenSSL's reason for the last failure on this thread, or "". */
static const char *tls_reason(char *buf, size_t cap)
{
    unsigned long e = ERR_peek_last_error();
    buf[0] = '\0';
    if (e) {
        snprintf(buf, cap, " (");
        ERR_error_string_n(e, buf + 2, cap - 3);
        size_t n = strlen(buf);
        if (n + 1 < cap) {
            buf[n] = ')';
            buf[n + 1] = '\0';
        }
    }
    ERR_clear_error();
    return buf;
}

static int connect_one(amqp_connection_state_t *out, const char *url, const cw_tls_config *tls,
                       int heartbeat_s, const char *name)
{
    char masked[1024], buf[1024];
    cw__url_mask(url, masked, sizeof masked);
    snprintf(buf, sizeof buf, "%s", url);
    struct amqp_connection_info ci;
    if (amqp_parse_url(buf, &ci) != AMQP_STATUS_OK)
        return cw__error(CW_STATUS_INVALID_ARG,
                         "broker URL '%s' is malformed (amqp://user:pass@host:port/vhost)", masked);
    /* "amqp://host:5672/" names the empty vhost by the letter of the AMQP URI
     * spec; everyone who writes it means the default one. */
    if (!ci.vhost || !ci.vhost[0])
        ci.vhost = "/";

    int rc;
    amqp_connection_state_t conn = amqp_new_connection();
    if (!conn)
        return cw__error(CW_STATUS_NOMEM, "out of memory connecting to %s", masked);
    amqp_socket_t *sock = NULL;
    if (ci.ssl) {
        if ((rc = tls_socket(conn, tls, masked, &sock)))
            goto out_destroy;
    } else if (!(sock = amqp_tcp_socket_new(conn))) {
        rc = cw__error(CW_STATUS_NOMEM, "out of memory connecting to %s", masked);
        goto out_destroy;
    }
    struct timeval tv = {.tv_sec = CW_CONNECT_TIMEOUT_S};
    int st = amqp_socket_open_noblock(sock, ci.host, ci.port, &tv);
    if (st != AMQP_STATUS_OK) {
        char why[256];
        rc = cw__error(CW_STATUS_CONNECTION, "cannot connect to %s: %s%s", masked,
                       amqp_error_string2(st), ci.ssl ? tls_reason(why, sizeof why) : "");
        goto out_destroy;
    }
    amqp_set_handshake_timeout(conn, &tv);
    amqp_set_rpc_timeout(conn, &(struct timeval){.tv_sec = 30});

    amqp_table_entry_t props[2];
    props[0].key = amqp_cstring_bytes("connection_name");
    props[0].value.kind = AMQP_FIELD_KIND_UTF8;
    props[0].value.value.bytes = amqp_cstring_bytes(name);
    props[1].key = amqp_cstring_bytes("product");
    props[1].value.kind = AMQP_FIELD_KIND_UTF8;
    props[1].value.value.bytes = amqp_cstring_bytes("compworker");
    amqp_table_t client_props = {.num_entries = 2, .entries = props};
    amqp_rpc_reply_t r = amqp_login_with_properties(conn, ci.vhost, 0, CW_FRAME_MAX, heartbeat_s,
                                                    &client_props, AMQP_SASL_METHOD_PLAIN, ci.user,
                                                    ci.password);
    if (r.reply_type != AMQP_RESPONSE_NORMAL) {
        char what[1100];
        snprintf(what, sizeof what, "login to %s", masked);
        rc = cw__broker_reply(r, what);
        if (rc == CW_STATUS_BROKER_REFUSED)
            rc = CW_STATUS_CONNECTION;
        goto out_destroy;
    }
    *out = conn;
    return 0;

out_destroy:
    amqp_destroy_connection(conn);
    return rc;
}

int cw__broker_connect(amqp_connection_state_t *out, const char *urls, unsigned *next,
                       int heartbeat_s, const char *name, char *connected_to, size_t cap)
{
    return cw__broker_connect_tls(out, urls, NULL, next, heartbeat_s, name, connected_to, cap);
}

int cw__broker_connect_tls(amqp_connection_state_t *out, const char *urls, const cw_tls_config *tls,
                           unsigned *next, int heartbeat_s, const char *name, char *connected_to,
                           size_t cap)
{
    unsigned n = cw__url_list_count(urls);
    if (n == 0)
        return cw__error(CW_STATUS_INVALID_ARG, "no broker URL is configured");
    int rc = CW_STATUS_CONNECTION;
    char errors[1024] = "";
    for (unsigned i = 0; i < n; i++) {
        unsigned idx = (*next + i) % n;
        char url[1024];
        cw__url_list_nth(urls, idx, url, sizeof url);
        rc = connect_one(out, url, tls, heartbeat_s, name);
        if (rc == 0) {
            *next = idx;
            if (connected_to)
                cw__url_mask(url, connected_to, cap);
            return 0;
        }
        if (rc == CW_STATUS_INVALID_ARG || rc == CW_STATUS_NOMEM)
            return rc;
        size_t len = strlen(errors);
        snprintf(errors + len, sizeof errors - len, "%s%s", len ? "; " : "", cw_error_last());
    }
    return cw__error(rc, "%s", errors);
}

void cw__broker_abort(amqp_connection_state_t conn)
{
    if (conn)
        amqp_destroy_connection(conn);
}

int cw__broker_accept_large_frames(amqp_connection_state_t conn)
{
    int frame_max = amqp_get_frame_max(conn);
    int st = amqp_tune_connection(conn, amqp_get_channel_max(conn),
                                  frame_max * CW_INBOUND_FRAME_FACTOR, amqp_get_heartbeat(conn));
    if (st != AMQP_STATUS_OK)
        return cw__error(CW_STATUS_NOMEM, "accepting frames of %d bytes: %s",
                         frame_max * CW_INBOUND_FRAME_FACTOR, amqp_error_string2(st));
    return 0;
}

void cw__broker_close(amqp_connection_state_t conn)
{
    if (!conn)
        return;
    /* Close the channel first and wait for close-ok: the broker may drop
     * acks sent just before a connection.close. (A dead connection makes
     * this return at once.) */
    amqp_channel_close(conn, 1, AMQP_REPLY_SUCCESS);
    amqp_connection_close(conn, AMQP_REPLY_SUCCESS);
    amqp_destroy_connection(conn);
}

static amqp_table_entry_t str_entry(const char *key, const char *value)
{
    amqp_table_entry_t e;
    e.key = amqp_cstring_bytes(key);
    e.value.kind = AMQP_FIELD_KIND_UTF8;
    e.value.value.bytes = amqp_cstring_bytes(value);
    return e;
}

int cw__exchange_declare(amqp_connection_state_t conn, amqp_channel_t ch, const char *exchange)
{
    char what[512];
    amqp_exchange_declare(conn, ch, amqp_cstring_bytes(exchange), amqp_cstring_bytes("topic"), 0, 1,
                          0, 0, amqp_empty_table);
    snprintf(what, sizeof what, "declaring exchange '%s' (topic, durable)", exchange);
    return cw__broker_reply(amqp_get_rpc_reply(conn), what);
}

int cw__topology_declare(amqp_connection_state_t conn, amqp_channel_t ch, const cw_config *cfg,
                         const cw_registry *reg)
{
    char what[512];
    int rc;

    if ((rc = cw__exchange_declare(conn, ch, cfg->exchange)))
        return rc;

    amqp_exchange_declare(conn, ch, amqp_cstring_bytes(CW_DLX_NAME), amqp_cstring_bytes("direct"),
                          0, 1, 0, 0, amqp_empty_table);
    snprintf(what, sizeof what, "declaring dead-letter exchange '%s' (direct, durable)",
             CW_DLX_NAME);
    if ((rc = cw__broker_reply(amqp_get_rpc_reply(conn), what)))
        return rc;

    const char *qtype = cfg->queue_type == CW_QUEUE_QUORUM ? "quorum" : "classic";
    amqp_table_entry_t dlq_args[] = {str_entry("x-queue-type", qtype)};
    amqp_table_t dlq_table = {.num_entries = 1, .entries = dlq_args};
    amqp_queue_declare(conn, ch, amqp_cstring_bytes(cfg->dlq), 0, 1, 0, 0, dlq_table);
    snprintf(what, sizeof what, "declaring dead-letter queue '%s' (%s)", cfg->dlq, qtype);
    if ((rc = cw__broker_reply(amqp_get_rpc_reply(conn), what)))
        return rc;
    amqp_queue_bind(conn, ch, amqp_cstring_bytes(cfg->dlq), amqp_cstring_bytes(CW_DLX_NAME),
                    amqp_cstring_bytes(cfg->dlq), amqp_empty_table);
    snprintf(what, sizeof what, "binding '%s' to '%s'", cfg->dlq, CW_DLX_NAME);
    if ((rc = cw__broker_reply(amqp_get_rpc_reply(conn), what)))
        return rc;

    /* What the broker itself dead-letters (a reject, a delivery limit) lands
     * in the same DLQ as what compworker dead-letters. */
    amqp_table_entry_t q_args[] = {str_entry("x-queue-type", qtype),
                                   str_entry("x-dead-letter-exchange", CW_DLX_NAME),
                                   str_entry("x-dead-letter-routing-key", cfg->dlq),
                                   {.key = amqp_cstring_bytes("x-delivery-limit"),
                                    .value = {.kind = AMQP_FIELD_KIND_I32,
                                              .value = {.i32 = CW_DELIVERY_LIMIT_BACKSTOP}}}};
    /* Quorum queues also get a broker-side backstop on redeliveries (see
     * CW_DELIVERY_LIMIT_BACKSTOP); classic queues have none. */
    amqp_table_t q_table = {.num_entries = cfg->queue_type == CW_QUEUE_QUORUM ? 4 : 3,
                            .entries = q_args};
    amqp_queue_declare(conn, ch, amqp_cstring_bytes(cfg->queue), 0, 1, 0, 0, q_table);
    snprintf(what, sizeof what,
             "declaring queue '%s' (%s, dead-lettering to '%s'); if it exists with other "
             "arguments, delete it or set [pool] queue to another name",
             cfg->queue, qtype, cfg->dlq);
    if ((rc = cw__broker_reply(amqp_get_rpc_reply(conn), what)))
        return rc;

    for (size_t i = 0; i < reg->n_handlers; i++) {
        const char *type = reg->handlers[i].type;
        amqp_queue_bind(conn, ch, amqp_cstring_bytes(cfg->queue), amqp_cstring_bytes(cfg->exchange),
                        amqp_cstring_bytes(type), amqp_empty_table);
        snprintf(what, sizeof what, "binding '%s' to '%s' by '%s'", cfg->queue, cfg->exchange,
                 type);
        if ((rc = cw__broker_reply(amqp_get_rpc_reply(conn), what)))
            return rc;
    }
    return 0;
}
