/* compworker run: one worker of a pool. */
#include <getopt.h>
#include <signal.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

#include "framework/config.h"
#include "framework/log.h"
#include "framework/registry.h"
#include "framework/worker.h"
#include "workers/cli.h"

static volatile sig_atomic_t cw_stop;

static void on_signal(int sig)
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

int cw_cmd_run(int argc, char **argv)
{
    const char *config = NULL, *level = NULL;
    static const struct option opts[] = {{"config", required_argument, NULL, 'c'},
                                         {"log-level", required_argument, NULL, 'l'},
                                         {"help", no_argument, NULL, 'h'},
                                         {NULL, 0, NULL, 0}};
    int c;
    optind = 1;
    opterr = 0;
    while ((c = getopt_long(argc, argv, "c:l:h", opts, NULL)) != -1) {
        switch (c) {
        case 'c': config = optarg; break;
        case 'l': level = optarg; break;
        case 'h':
            puts("usage: compworker run -c POOL.INI [--log-level debug|info|warn|error]");
            return CW_EXIT_OK;
        default:
            return cw_cli_fail(CW_EXIT_USAGE, "run: unknown or incomplete option '%s'",
                               argv[optind - 1]);
        }
    }
    if (optind < argc)
        return cw_cli_fail(CW_EXIT_USAGE, "run: unexpected argument '%s'", argv[optind]);
    if (!config)
        return cw_cli_fail(CW_EXIT_USAGE, "run: -c POOL.INI is required");

    cw_config *cfg = NULL;
    cw_registry *reg = NULL;
    cw_worker *w = NULL;
    int code = CW_EXIT_USAGE;
    if (cw_config_load(&cfg, config))
        return cw_cli_fail(CW_EXIT_USAGE, "%s", cw_error_last());
    cw_log_level lv = cfg->log_level;
    if (level && cw__log_level_parse(level, &lv)) {
        cw_cli_fail(CW_EXIT_USAGE, "run: --log-level '%s' is not debug, info, warn or error",
                    level);
        goto out;
    }
    cw__log_set_level(lv);
    if (cfg->n_plugins == 0) {
        cw_cli_fail(CW_EXIT_USAGE, "%s: [pool] plugins is empty: a worker needs handlers",
                    cfg->path);
        goto out;
    }
    if (cw_registry_new(&reg))
        goto out_err;
    cw_registry_use_settings(reg, cfg->plugin_settings, cfg->n_plugin_settings);
    for (size_t i = 0; i < cfg->n_plugins; i++) {
        if (cw_plugin_load(reg, cfg->plugins[i]))
            goto out_err;
    }
    if (cw_worker_new(&w, cfg, reg)) {
        code = CW_EXIT_FAILURE;
        goto out_err;
    }
    cw__log_set_worker(cw_worker_id(w));
    if (cw_worker_enable_crash_reports(w))
        cw_log_warn(NULL, "crash reports are off: %s", cw_error_last());
    cw_worker_on_handler_timeout(w, on_handler_timeout, NULL);

    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = on_signal;
    sigemptyset(&sa.sa_mask);
    sigaction(SIGTERM, &sa, NULL);
    sigaction(SIGINT, &sa, NULL);

    if (cw_worker_run(w, &cw_stop)) {
        code = CW_EXIT_FAILURE;
        goto out_err;
    }
    code = CW_EXIT_OK;
    goto out;

out_err:
    cw_cli_fail(code, "%s", cw_error_last());
out:
    cw_worker_free(w);
    cw_registry_free(reg);
    cw_config_free(cfg);
    return code;
}
