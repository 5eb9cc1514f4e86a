/* The publishing client of include/compworker/client.h. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <uuid/uuid.h>

#include "compworker/client.h"
#include "framework/broker.h"
#include "framework/clock.h"
#include "framework/error.h"
#include "framework/json_text.h"
#include "framework/opts.h"
#include "framework/registry.h"

#define CW_CLIENT_CH 1

struct cw_client {
    amqp_connection_state_t conn;
    cw_publisher pub;
    char *exchange;
    char broker[1024]; /* masked URL, for messages */
};

int cw_client_new(cw_client **out, const char *url, const char *exchange)
{
    return cw__client_new_tls(out, url, NULL, exchange);
}

int cw__client_new_tls(cw_client **out, const char *url, const cw_tls_config *tls,
                       const char *exchange)
{
    int rc;
    if (!out || !url || !exchange || !exchange[0])
        return cw__error(CW_STATUS_INVALID_ARG, "cw_client_new: NULL or empty argument");
    cw_client *c = calloc(1, sizeof *c);
    if (!c || !(c->exchange = strdup(exchange))) {
        rc = cw__error(CW_STATUS_NOMEM, "out of memory creating a client");
        goto out_free;
    }
    unsigned next = 0;
    if ((rc = cw__broker_connect_tls(&c->conn, url, tls, &next, 0, "compworker publisher",
                                     c->broker, sizeof c->broker)))
        goto out_free;
    if ((rc = cw__publisher_open(&c->pub, c->conn, CW_CLIENT_CH)))
        goto out_close;
    *out = c;
    return 0;

out_close:
    cw__broker_close(c->conn);
out_free:
    if (c) {
        free(c->exchange);
        free(c);
    }
    return rc;
}

void cw_client_free(cw_client *c)
{
    if (!c)
        return;
    cw__publisher_free(&c->pub);
    cw__broker_close(c->conn);
    free(c->exchange);
    free(c);
}

/* The size of each version of cw_publish_opts, oldest first. When a version
 * adds fields, the entry of the one before becomes offsetof() its first new
 * field (what a caller of that version has), and the new version's entry is
 * sizeof(cw_publish_opts). */
static const size_t cw_publish_opts_sizes[CW_PUBLISH_OPTS_VERSION] = {
    sizeof(cw_publish_opts), /* 1 */
};

int cw_publish_opts_init(cw_publish_opts *opts, unsigned version)
{
    static const cw_publish_opts init = CW_PUBLISH_OPTS_INIT;
    return cw__opts_init(opts, version, &init, cw_publish_opts_sizes, CW_PUBLISH_OPTS_VERSION,
                         "cw_publish_opts");
}

int cw__publish_opts_read(cw_publish_opts *cur, const cw_publish_opts *opts)
{
    static const cw_publish_opts init = CW_PUBLISH_OPTS_INIT;
    *cur = init;
    return cw__opts_read(cur, opts, cw_publish_opts_sizes, CW_PUBLISH_OPTS_VERSION,
                         "cw_publish_opts");
}

int cw_client_publish(cw_client *c, const cw_publish_opts *opts, char *id_out, size_t out_len)
{
    cw_publish_opts cur = CW_PUBLISH_OPTS_INIT;
    const cw_publish_opts *o = &cur;
    if (!c || !opts)
        return cw__error(CW_STATUS_INVALID_ARG, "cw_client_publish: NULL client or options");
    int rc = cw__publish_opts_read(&cur, opts);
    if (rc)
        return rc;
    if (!o->body)
        return cw__error(CW_STATUS_INVALID_ARG, "cw_client_publish: body is required");
    size_t blen = o->body_len ? o->body_len : strlen(o->body);
    char id[CW_MESSAGE_ID_MAX + 1], why[320];
    if (cw__task_fields_check(o->type, o->message_id, o->saga_id, o->body, blen, id, why,
                              sizeof why))
        return cw__error(CW_STATUS_INVALID_ARG, "cw_client_publish: %s", why);

    const char *rk = o->routing_key ? o->routing_key : o->type;
    rc = cw__publish_task(&c->pub, c->exchange, rk, id, o->type, o->saga_id, o->body, blen, NULL);
    if (rc)
        return rc;
    rc = cw__publisher_wait(&c->pub, o->confirm_timeout_ms ? (int)o->confirm_timeout_ms
                                                           : CW_CONFIRM_TIMEOUT_MS);
    if (rc == CW_STATUS_UNROUTABLE)
        return cw__error(rc,
                         "no queue is bound to exchange '%s' for routing key '%s': is a worker "
                         "pool handling type '%s' set up on %s?",
                         c->exchange, rk, o->type, c->broker);
    if (rc == CW_STATUS_BROKER_REFUSED)
        rc = CW_STATUS_CONNECTION;
    if (rc)
        return rc;
    if (id_out && out_len)
        snprintf(id_out, out_len, "%s", id);
    return 0;
}
