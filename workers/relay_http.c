/* The outbox relay's /metrics and /healthz (workers/relay_private.h). */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "framework/clock.h"
#include "framework/limits.h"
#include "workers/http.h"
#include "workers/relay_private.h"

/* ---- HTTP: /metrics, /healthz --------------------------------------------------- */

static enum MHD_Result serve_metrics(void *cls, struct MHD_Connection *c)
{
    relay *r = cls;
    char *body = NULL;
    int n = asprintf(
        &body,
        "# HELP compworker_outbox_pending_rows Rows of the outbox table not yet published.\n"
        "# TYPE compworker_outbox_pending_rows gauge\n"
        "compworker_outbox_pending_rows{table=\"%s\"} %lld\n"
        "# HELP compworker_outbox_oldest_pending_seconds Age of the oldest pending row.\n"
        "# TYPE compworker_outbox_oldest_pending_seconds gauge\n"
        "compworker_outbox_oldest_pending_seconds{table=\"%s\"} %.3f\n"
        "# HELP compworker_outbox_failed_rows Rows marked failed, waiting for an operator.\n"
        "# TYPE compworker_outbox_failed_rows gauge\n"
        "compworker_outbox_failed_rows{table=\"%s\"} %lld\n"
        "# HELP compworker_outbox_published_total Rows published, confirmed and marked sent.\n"
        "# TYPE compworker_outbox_published_total counter\n"
        "compworker_outbox_published_total{table=\"%s\"} %llu\n"
        "# HELP compworker_outbox_failures_total Rows marked failed (not publishable).\n"
        "# TYPE compworker_outbox_failures_total counter\n"
        "compworker_outbox_failures_total{table=\"%s\"} %llu\n"
        "# HELP compworker_outbox_publish_errors_total Batches rolled back to be published "
        "again (broker or database errors).\n"
        "# TYPE compworker_outbox_publish_errors_total counter\n"
        "compworker_outbox_publish_errors_total{table=\"%s\"} %llu\n"
        "# HELP compworker_outbox_removed_total Sent rows removed after the retention.\n"
        "# TYPE compworker_outbox_removed_total counter\n"
        "compworker_outbox_removed_total{table=\"%s\"} %llu\n"
        "# HELP compworker_outbox_batches_total Claims that published at least one row.\n"
        "# TYPE compworker_outbox_batches_total counter\n"
        "compworker_outbox_batches_total{table=\"%s\"} %llu\n"
        "# HELP compworker_relay_up Whether the relay is connected (1) to each side.\n"
        "# TYPE compworker_relay_up gauge\n"
        "compworker_relay_up{side=\"postgresql\"} %d\n"
        "compworker_relay_up{side=\"broker\"} %d\n",
        r->cfg->relay_table, (long long)atomic_load(&r->pending), r->cfg->relay_table,
        (double)atomic_load(&r->oldest_ms) / 1000.0, r->cfg->relay_table,
        (long long)atomic_load(&r->failed_rows), r->cfg->relay_table,
        (unsigned long long)atomic_load(&r->published), r->cfg->relay_table,
        (unsigned long long)atomic_load(&r->failures), r->cfg->relay_table,
        (unsigned long long)atomic_load(&r->publish_errors), r->cfg->relay_table,
        (unsigned long long)atomic_load(&r->removed), r->cfg->relay_table,
        (unsigned long long)atomic_load(&r->batches), atomic_load(&r->pg_up),
        atomic_load(&r->broker_up));
    if (n < 0)
        return cw_http_respond_text(c, MHD_HTTP_INTERNAL_SERVER_ERROR, "out of memory\n");
    return cw_http_respond(c, MHD_HTTP_OK, CW_HTTP_METRICS_TYPE, body, (size_t)n, true);
}

static enum MHD_Result serve_health(void *cls, struct MHD_Connection *c)
{
    relay *r = cls;
    int64_t idle = cw__mono_ms() - atomic_load(&r->loop_ms);
    if (!atomic_load(&r->pg_up))
        return cw_http_respond_text(c, MHD_HTTP_SERVICE_UNAVAILABLE,
                                    "unavailable: the outbox database does not answer\n");
    if (!atomic_load(&r->broker_up))
        return cw_http_respond_text(c, MHD_HTTP_SERVICE_UNAVAILABLE,
                                    "unavailable: no broker connection\n");
    if (idle > 2 * WAIT_MAX_MS + CW_CONFIRM_TIMEOUT_MS)
        return cw_http_respond_text(c, MHD_HTTP_SERVICE_UNAVAILABLE,
                                    "unavailable: the relay has not run its loop for %lld ms\n",
                                    (long long)idle);
    return cw_http_respond_text(c, MHD_HTTP_OK, "ok: relaying %s (%lld pending)\n",
                                r->cfg->relay_table, (long long)atomic_load(&r->pending));
}

void cw__relay_http_site(relay *r, cw_http_site *site)
{
    site->metrics = serve_metrics;
    site->health = serve_health;
    site->cls = r;
    snprintf(site->index, sizeof site->index,
             "compworker relay of %s: /metrics (Prometheus), /healthz", r->cfg->relay_table);
}
