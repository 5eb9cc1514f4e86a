/* One worker process of the pool, after the supervisor forked it: see
 * pool.h. */
#include <malloc.h>
#include <signal.h>
#include <stdatomic.h>
#include <string.h>
#include <unistd.h>

#include "framework/error.h"
#include "framework/log.h"
#include "framework/owner.h"
#include "framework/registry.h"
#include "workers/cli.h"
#include "saga/saga.h"
#include "workers/pool.h"
#include "workers/worker.h"

static volatile sig_atomic_t cw_stop;

/* Allocations from this size up are mapped on their own and unmapped when
 * freed (see cw_pool_worker_main). */
#define CW_WORKER_MMAP_THRESHOLD (256 * 1024)

static void on_stop(int sig)
{
    (void)sig;
    cw_stop = 1;
}

/* A handler past [pool] handler_timeout: its report is written; end this
 * worker so the broker redelivers the task (and the store counts it). */
static void on_handler_timeout(const cw_worker_current *cur, int64_t ran_ms, void *ud)
{
    (void)cur;
    (void)ran_ms;
    (void)ud;
    _exit(CW_EXIT_HANDLER_TIMEOUT);
}

int cw_pool_worker_main(const cw_config *cfg, cw_metrics *m, int slot)
{
    /* SIGTERM/SIGINT ask the loop to drain; SIGHUP is the supervisor's
     * business (a terminal hangup reaches the whole process group). */
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

    /* A delivery's body is one allocation of its whole size (up to the
     * broker's limit, 128 MiB by default). glibc raises its mmap threshold
     * each time it frees such a block, and from then on serves large
     * bodies from the heap, which fragments and grows round after round of
     * big deliveries. A fixed threshold gives every large body back to the
     * system when it is freed, so that the worker's memory stays where its
     * steady state puts it. */
    mallopt(M_MMAP_THRESHOLD, CW_WORKER_MMAP_THRESHOLD);

    char id[128];
    cw__owner_self(id, sizeof id); /* what cw_worker_id() will say */
    cw__log_set_role(NULL);
    cw__log_set_worker(id);

    cw_registry *reg = NULL;
    cw_worker *w = NULL;
    cw_metrics_worker mw;
    bool mw_init = false;
    int code = CW_EXIT_USAGE;

    if (cw_registry_new(&reg))
        goto out_err;
    cw_registry_use_settings(reg, cfg->plugin_settings, cfg->n_plugin_settings);
    for (size_t i = 0; i < cfg->n_plugins; i++) {
        if (cw_plugin_load(reg, cfg->plugins[i]))
            goto out_err;
    }
    /* Plans: after the plugins, whose types a plan's steps are checked
     * against. */
    static cw_saga_config saga;
    if (cfg->saga_plans) {
        saga = (cw_saga_config){.reg = reg,
                                .step_types = (const char *const *)cfg->saga_step_types,
                                .exchange = cfg->exchange};
        if (cw_saga_register(reg, &saga))
            goto out_err;
    }
    code = CW_EXIT_FAILURE;
    if (cw_worker_new(&w, cfg, reg))
        goto out_err;
    cw__log_set_worker(cw_worker_id(w));
    if (cw_metrics_worker_init(&mw, m, slot, reg))
        goto out_err;
    mw_init = true;
    cw_worker_use_metrics(w, &mw);
    if (cw_worker_enable_crash_reports(w))
        cw_log_warn(NULL, "crash reports are off: %s", cw_error_last());
    cw_worker_on_handler_timeout(w, on_handler_timeout, NULL);

    /* Initialised: the supervisor may start the next worker. A stop asked
     * for meanwhile is kept as it is. */
    int starting = CW_SLOT_STARTING;
    atomic_compare_exchange_strong(&m->slots[slot].state, &starting, CW_SLOT_READY);

    if (cw_worker_run(w, &cw_stop))
        goto out_err;
    code = CW_EXIT_OK;
    goto out;

out_err:
    cw_log_error(NULL, "%s", cw_error_last());
out:
    cw_worker_free(w);
    if (mw_init)
        cw_metrics_worker_free(&mw);
    cw_registry_free(reg);
    return code;
}
