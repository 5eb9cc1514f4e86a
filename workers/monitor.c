/* The pool's monitor process: /metrics and /healthz (libmicrohttpd), the
 * depth of the pool queue and its DLQ (a passive declare every few seconds
 * on a connection of its own), and the alert of a crash loop the supervisor
 * detected. See pool.h for why this is a process of its own. */
#include <arpa/inet.h>
#include <errno.h>
#include <microhttpd.h>
#include <netdb.h>
#include <signal.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include "dlq/alert.h"
#include "framework/broker.h"
#include "framework/clock.h"
#include "framework/error.h"
#include "framework/log.h"
#include "framework/owner.h"
#include "saga/saga_db.h"
#include "workers/cli.h"
#include "workers/http.h"
#include "workers/pool.h"

#define DEPTH_EVERY_MS 5000
#define SAGA_EVERY_MS 1000       /* deadlines looked at, done sagas past the retention removed */
#define SAGA_STATS_EVERY_MS 5000 /* the sagas' counts read for /metrics */
/* Consumers of the pool queue that are not this pool's workers, for this
 * long, on a pool whose store is this host's own: a warning. */
#define FOREIGN_WARN_MS 30000
#define BEAT_STALE_MS 5000 /* a supervisor silent this long is not running */

static volatile sig_atomic_t cw_stop;

static void on_stop(int sig)
{
    (void)sig;
    cw_stop = 1;
}

typedef struct monitor {
    const cw_config *cfg;
    cw_metrics *m;
    pid_t supervisor;
    _Atomic int64_t queue_ready, queue_consumers, dlq_ready; /* -1: unknown */
    _Atomic int64_t foreign;  /* consumers of the queue not ours; -1: unknown */
    int64_t foreign_since_ms; /* when they appeared, 0 while there are none */
    bool foreign_warned;
    /* saga plans: the store's counts (sagas_started -1 until read) */
    _Atomic int64_t sagas_started, sagas_done, sagas_running, sagas_stuck, sagas_overdue,
        sagas_done_ms;
    cw_saga_db sagas;
    bool sagas_open, sagas_failing;
    int64_t sagas_stats_at; /* monotonic ms of the next count */
} monitor;

/* ---- HTTP ----------------------------------------------------------------- */

static enum MHD_Result serve_metrics(void *cls, struct MHD_Connection *c)
{
    monitor *mon = cls;
    cw_metrics_snapshot *s = malloc(sizeof *s);
    if (!s)
        return cw_http_respond_text(c, MHD_HTTP_INTERNAL_SERVER_ERROR, "out of memory\n");
    cw_metrics_snapshot_take(mon->m, s);
    cw_metrics_info info = {
        .pool = mon->cfg->name,
        .queue = mon->cfg->queue,
        .dlq = mon->cfg->dlq,
        .queue_ready = atomic_load(&mon->queue_ready),
        .queue_consumers = atomic_load(&mon->queue_consumers),
        .dlq_ready = atomic_load(&mon->dlq_ready),
        .queue_foreign_consumers = atomic_load(&mon->foreign),
        .sagas_started = atomic_load(&mon->sagas_started),
        .sagas_done = atomic_load(&mon->sagas_done),
        .sagas_running = atomic_load(&mon->sagas_running),
        .sagas_stuck = atomic_load(&mon->sagas_stuck),
        .sagas_overdue = atomic_load(&mon->sagas_overdue),
        .sagas_done_ms = atomic_load(&mon->sagas_done_ms),
    };
    char *body;
    size_t len;
    int rc = cw_metrics_render(s, &info, &body, &len);
    free(s);
    if (rc)
        return cw_http_respond_text(c, MHD_HTTP_INTERNAL_SERVER_ERROR, "%s\n", cw_error_last());
    return cw_http_respond(c, MHD_HTTP_OK, CW_HTTP_METRICS_TYPE, body, len, true);
}

/* 200 when the supervisor runs and at least one worker has a broker
 * session and reaches its store; 503 with the reason otherwise. */
static enum MHD_Result serve_health(void *cls, struct MHD_Connection *c)
{
    monitor *mon = cls;
    cw_metrics *m = mon->m;
    int64_t beat = atomic_load(&m->supervisor_beat_ms);
    unsigned desired = atomic_load(&m->workers_desired);
    unsigned alive = atomic_load(&m->workers_alive);
    unsigned connected = 0, working = 0;
    for (int i = 0; i < CW_METRICS_SLOTS; i++) {
        if (atomic_load(&m->slots[i].state) != CW_SLOT_FREE &&
            atomic_load(&m->slots[i].connected)) {
            connected++;
            if (!atomic_load(&m->slots[i].store_down))
                working++;
        }
    }
    if (getppid() != mon->supervisor)
        return cw_http_respond_text(c, MHD_HTTP_SERVICE_UNAVAILABLE,
                                    "unavailable: the supervisor is gone\n");
    if (cw__mono_ms() - beat > BEAT_STALE_MS)
        return cw_http_respond_text(
            c, MHD_HTTP_SERVICE_UNAVAILABLE,
            "unavailable: the supervisor has not run its loop for %lld ms\n",
            (long long)(cw__mono_ms() - beat));
    if (desired == 0)
        return cw_http_respond_text(c, MHD_HTTP_SERVICE_UNAVAILABLE,
                                    "unavailable: the pool is stopping\n");
    if (connected == 0)
        return cw_http_respond_text(
            c, MHD_HTTP_SERVICE_UNAVAILABLE,
            "unavailable: no worker is connected to a broker (%u of %u running)\n", alive, desired);
    if (working == 0)
        return cw_http_respond_text(
            c, MHD_HTTP_SERVICE_UNAVAILABLE,
            "unavailable: store unreachable (%u of %u connected workers cannot "
            "reach it)\n",
            connected, connected);
    return cw_http_respond_text(c, MHD_HTTP_OK, "ok: %u of %u workers connected\n", connected,
                                desired);
}

/* ---- queue depths --------------------------------------------------------- */

typedef struct depth_conn {
    amqp_connection_state_t conn;
    unsigned next;
    bool failing; /* the last poll failed (logged once per episode) */
} depth_conn;

static int passive_count(amqp_connection_state_t conn, const char *queue, int64_t *ready,
                         int64_t *consumers)
{
    amqp_queue_declare_ok_t *ok = amqp_queue_declare(conn, 1, amqp_cstring_bytes(queue), 1, 0, 0, 0,
                                                     amqp_empty_table);
    char what[400];
    snprintf(what, sizeof what, "passive declare of '%s'", queue);
    int rc = cw__broker_reply(amqp_get_rpc_reply(conn), what);
    if (rc)
        return rc;
    *ready = ok->message_count;
    if (consumers)
        *consumers = ok->consumer_count;
    return 0;
}

static void depth_poll(monitor *mon, depth_conn *dc)
{
    int rc = 0;
    if (!dc->conn) {
        rc = cw__broker_connect_tls(&dc->conn, mon->cfg->url, &mon->cfg->tls, &dc->next, 0,
                                    "compworker monitor", NULL, 0);
        if (rc == 0) {
            amqp_channel_open(dc->conn, 1);
            rc = cw__broker_reply(amqp_get_rpc_reply(dc->conn), "opening the monitor's channel");
        }
    }
    int64_t q = -1, qc = -1, d = -1;
    if (rc == 0)
        rc = passive_count(dc->conn, mon->cfg->queue, &q, &qc);
    if (rc == 0)
        rc = passive_count(dc->conn, mon->cfg->dlq, &d, NULL);
    if (rc) {
        if (!dc->failing)
            cw_log_warn(NULL, "queue depths unknown for now (asked every %d s): %s",
                        DEPTH_EVERY_MS / 1000, cw_error_last());
        dc->failing = true;
        if (dc->conn) {
            cw__broker_close(dc->conn);
            dc->conn = NULL;
        }
        dc->next++; /* try the next broker of the list */
        q = qc = d = -1;
    } else if (dc->failing) {
        dc->failing = false;
        cw_log_info(NULL, "queue depths known again");
    }
    atomic_store(&mon->queue_ready, q);
    atomic_store(&mon->queue_consumers, qc);
    atomic_store(&mon->dlq_ready, d);
}

/* A pool whose store is this host's own (SQLite) makes a task's message ID
 * unique on this host only: a consumer of its queue that is not one of its
 * workers (the same pool started on another host) can apply a task this
 * pool applies too. Warned about once it lasts FOREIGN_WARN_MS. */
static void check_foreign(monitor *mon)
{
    int64_t consumers = atomic_load(&mon->queue_consumers);
    if (consumers < 0) {
        atomic_store(&mon->foreign, -1);
        return;
    }
    int64_t ours = 0;
    for (int i = 0; i < CW_METRICS_SLOTS; i++) {
        if (atomic_load(&mon->m->slots[i].state) != CW_SLOT_FREE &&
            atomic_load(&mon->m->slots[i].connected))
            ours++;
    }
    int64_t foreign = consumers > ours ? consumers - ours : 0;
    atomic_store(&mon->foreign, foreign);
    if (foreign == 0 || mon->cfg->store_backend != CW_STORE_SQLITE) {
        if (mon->foreign_warned && foreign == 0)
            cw_log_info(NULL, "queue %s: no consumers other than this pool's workers any more",
                        mon->cfg->queue);
        mon->foreign_since_ms = 0;
        mon->foreign_warned = false;
        return;
    }
    int64_t now = cw__mono_ms();
    if (!mon->foreign_since_ms)
        mon->foreign_since_ms = now;
    if (!mon->foreign_warned && now - mon->foreign_since_ms >= FOREIGN_WARN_MS) {
        mon->foreign_warned = true;
        cw_log_warn(NULL,
                    "queue %s has %lld consumer(s) that are not this pool's workers (for %lld s): "
                    "if they are workers of pool %s on other hosts, each host's SQLite store "
                    "knows only the tasks it ran, and a task delivered twice can be applied "
                    "twice; a pool on several hosts needs [store] backend = postgresql (README, "
                    "Deployment)",
                    mon->cfg->queue, (long long)foreign,
                    (long long)((now - mon->foreign_since_ms) / 1000), mon->cfg->name);
    }
}

/* ---- crash-loop alerts ---------------------------------------------------- */

static void post_crash_loop(monitor *mon, cw_alerter *alerter)
{
    char reason[sizeof mon->m->alert_reason];
    memcpy(reason, mon->m->alert_reason, sizeof reason);
    reason[sizeof reason - 1] = '\0';
    char who[300], host[256] = "";
    gethostname(host, sizeof host - 1);
    snprintf(who, sizeof who, "%s:%ld (supervisor)", host, (long)mon->supervisor);
    cw_alert_event ev = {
        .error_class = "crash-loop",
        .reason = reason,
        .queue = mon->cfg->queue,
        .worker = who,
    };
    cw_alerter_post(alerter, &ev);
}

/* ---- saga deadlines ------------------------------------------------------- */

/* Alerts once for each saga past its deadline (the store marks it alerted
 * in the same statement, so that the monitors of several hosts on one
 * PostgreSQL store alert once in all), and reads the sagas' counts for
 * /metrics. */
static void saga_poll(monitor *mon, cw_alerter *alerter)
{
    if (!mon->sagas_open) {
        if (cw_saga_db_open(&mon->sagas, mon->cfg, false)) {
            if (!mon->sagas_failing)
                cw_log_warn(NULL, "saga deadlines are not watched: %s", cw_error_last());
            mon->sagas_failing = true;
            return;
        }
        mon->sagas_open = true;
    }
    int64_t now = cw__now_ms();
    char at[24];
    snprintf(at, sizeof at, "%lld", (long long)now);
    const char *v[1] = {at};
    cw_saga_rows r = {0};
    if (cw_saga_db_run(&mon->sagas, CW_SD_OVERDUE, 1, v, &r) == 0) {
        for (size_t i = 0; i < r.n; i++) {
            const char *saga = cw_saga_rows_get(&r, i, 0);
            long long stage = atoll(cw_saga_rows_get(&r, i, 2)) + 1;
            long long stages = atoll(cw_saga_rows_get(&r, i, 3));
            long long took = (now - atoll(cw_saga_rows_get(&r, i, 5))) / 1000;
            /* The steps it is on, and why they are not done. */
            char on[512] = "", type[256] = "cw.saga.plan";
            const char *key[1] = {saga};
            cw_saga_rows st = {0};
            if (cw_saga_db_run(&mon->sagas, CW_SD_SHOW_STEPS, 1, key, &st) == 0) {
                size_t o = 0;
                for (size_t j = 0; j < st.n && o < sizeof on; j++) {
                    if (atoll(cw_saga_rows_get(&st, j, 0)) + 1 != stage ||
                        strcmp(cw_saga_rows_get(&st, j, 3), "done") == 0)
                        continue;
                    const char *task = cw_saga_rows_get(&st, j, 7);
                    const char *err = cw_saga_rows_get(&st, j, 10);
                    bool dead = task && atoi(task) == 3;
                    if (!o)
                        snprintf(type, sizeof type, "%s", cw_saga_rows_get(&st, j, 2));
                    o += (size_t)snprintf(on + o, sizeof on - o, "%s%s %s%s%s", o ? "; " : "",
                                          cw_saga_rows_get(&st, j, 2),
                                          dead   ? "dead-lettered"
                                          : task ? "not done"
                                                 : "waiting",
                                          err ? ": " : "", err ? err : "");
                }
            }
            cw_saga_rows_free(&st);
            char reason[1024], host[256] = "", who[300];
            snprintf(reason, sizeof reason,
                     "saga %s is not done by its deadline (%lld s after its plan came): on stage "
                     "%lld of %lld (%s) of plan %s; see compworker saga show %s",
                     saga, took, stage, stages, on[0] ? on : "its steps not sent",
                     cw_saga_rows_get(&r, i, 1), saga);
            gethostname(host, sizeof host - 1);
            snprintf(who, sizeof who, "%s:%ld (monitor)", host, (long)getpid());
            cw_log_warn(NULL, "%s", reason);
            cw_alert_event ev = {.saga_id = saga,
                                 .message_id = cw_saga_rows_get(&r, i, 1),
                                 .type = type,
                                 .error_class = "saga-deadline",
                                 .reason = reason,
                                 .queue = mon->cfg->queue,
                                 .worker = who};
            if (alerter)
                cw_alerter_post(alerter, &ev);
        }
        cw_saga_rows_free(&r);
    } else {
        cw_log_warn(NULL, "looking for overdue sagas failed: %s", cw_error_last());
        cw_saga_db_close(&mon->sagas);
        mon->sagas_open = false;
        return;
    }
    /* Done sagas are kept as long as done tasks ([store] retention), then
     * removed a chunk a second (a short statement each: the workers' step
     * commits never wait long on it). */
    char before[24], chunk[16] = "200";
    snprintf(before, sizeof before, "%lld", (long long)(now - mon->cfg->retention_ms));
    const char *ev[2] = {before, chunk};
    for (int s = CW_SD_EXPIRE_STEPS; s <= CW_SD_EXPIRE_SAGAS; s++) {
        if (cw_saga_db_run(&mon->sagas, (cw_saga_stmt)s, 2, ev, NULL)) {
            cw_log_warn(NULL, "removing sagas past the retention failed: %s", cw_error_last());
            break;
        }
    }
    /* The counts (a pass over the sagas) less often than the deadlines. */
    if (cw__mono_ms() < mon->sagas_stats_at) {
        mon->sagas_failing = false;
        return;
    }
    mon->sagas_stats_at = cw__mono_ms() + SAGA_STATS_EVERY_MS;
    if (cw_saga_db_run(&mon->sagas, CW_SD_STATS, 1, v, &r) == 0 && r.n == 1) {
        const char *c;
        atomic_store(&mon->sagas_done, (c = cw_saga_rows_get(&r, 0, 1)) ? atoll(c) : 0);
        atomic_store(&mon->sagas_running, (c = cw_saga_rows_get(&r, 0, 2)) ? atoll(c) : 0);
        atomic_store(&mon->sagas_stuck, (c = cw_saga_rows_get(&r, 0, 3)) ? atoll(c) : 0);
        atomic_store(&mon->sagas_overdue, (c = cw_saga_rows_get(&r, 0, 4)) ? atoll(c) : 0);
        atomic_store(&mon->sagas_done_ms, (c = cw_saga_rows_get(&r, 0, 5)) ? atoll(c) : 0);
        atomic_store(&mon->sagas_started, (c = cw_saga_rows_get(&r, 0, 0)) ? atoll(c) : 0);
    }
    cw_saga_rows_free(&r);
    mon->sagas_failing = false;
}

/* ---- main ----------------------------------------------------------------- */

int cw_pool_monitor_main(const cw_config *cfg, cw_metrics *m, pid_t supervisor)
{
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = on_stop;
    sigemptyset(&sa.sa_mask);
    sigaction(SIGTERM, &sa, NULL);
    sigaction(SIGINT, &sa, NULL);
    sa.sa_handler = SIG_IGN;
    sigaction(SIGHUP, &sa, NULL);
    sigset_t none;
    sigemptyset(&none);
    sigprocmask(SIG_SETMASK, &none, NULL);

    char id[128];
    cw__owner_self(id, sizeof id);
    cw__log_set_worker(id);
    cw__log_set_role("monitor");

    monitor mon = {.cfg = cfg, .m = m, .supervisor = supervisor};
    cw_http_site site = {.metrics = serve_metrics, .health = serve_health, .cls = &mon};
    snprintf(site.index, sizeof site.index, "compworker pool %s: /metrics (Prometheus), /healthz",
             cfg->name);
    atomic_store(&mon.queue_ready, -1);
    atomic_store(&mon.queue_consumers, -1);
    atomic_store(&mon.dlq_ready, -1);
    atomic_store(&mon.foreign, -1);
    atomic_store(&mon.sagas_started, -1);

    int code = CW_EXIT_OK;
    cw_alerter *alerter = NULL;
    struct MHD_Daemon *http = NULL;
    depth_conn dc = {0};

    /* The alerter first: it initialises libcurl before any other thread. */
    if (cfg->alert.command_argv || cfg->alert.webhook_url) {
        if (cw_alerter_new(&alerter, &cfg->alert) || cw_alerter_start(alerter)) {
            cw_log_warn(NULL, "crash-loop alerts are off: %s", cw_error_last());
            cw_alerter_free(alerter);
            alerter = NULL;
        }
    }
    if (cfg->metrics_listen &&
        !(http = cw_http_start(cfg->metrics_listen, "[pool] metrics_listen", &site))) {
        code = CW_EXIT_USAGE;
        goto out;
    }
    uint64_t alert_seen = atomic_load(&m->alert_seq);
    /* The first poll waits for the workers to declare the queues. */
    int64_t next_depth = cw__mono_ms() + 2000;
    int64_t next_saga = cw__mono_ms() + 2000;
    while (!cw_stop && getppid() == supervisor) {
        int64_t t = cw__mono_ms();
        uint64_t seq = atomic_load(&m->alert_seq);
        if (seq != alert_seen) {
            alert_seen = seq;
            if (alerter)
                post_crash_loop(&mon, alerter);
        }
        if (cfg->saga_plans && t >= next_saga) {
            saga_poll(&mon, alerter);
            next_saga = cw__mono_ms() + SAGA_EVERY_MS;
        }
        if ((http || cfg->store_backend == CW_STORE_SQLITE) && t >= next_depth) {
            depth_poll(&mon, &dc);
            check_foreign(&mon);
            next_depth = cw__mono_ms() + DEPTH_EVERY_MS;
        }
        struct timespec ts = {0, 200 * 1000000L};
        nanosleep(&ts, NULL);
    }

out:
    if (http)
        MHD_stop_daemon(http);
    if (mon.sagas_open)
        cw_saga_db_close(&mon.sagas);
    if (dc.conn)
        cw__broker_close(dc.conn);
    cw_alerter_free(alerter);
    return code;
}
