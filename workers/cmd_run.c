/* compworker run: the pool supervisor (see pool.h); and the flags it shares
 * with compworker config check. */
#include <stddef.h>
#include <stdio.h>

#include "framework/config.h"
#include "framework/error.h"
#include "workers/cli.h"
#include "workers/opt.h"
#include "workers/pool.h"

const cw_opt_spec cw_cli_pool_specs[] = {
    {CW_OPT_VALUE, "config", 'c', "POOL.INI", "the pool's configuration file",
     .offset = offsetof(cw_pool_opts, config_path), .flags = CW_OPT_REQUIRED},
    {CW_OPT_VALUE, "workers", 'w', "N", "worker processes, instead of [pool] workers",
     .offset = offsetof(cw_pool_opts, workers_flag)},
    {CW_OPT_VALUE, "concurrency", 'C', "N",
     "handler threads per worker, instead of [pool] concurrency",
     .offset = offsetof(cw_pool_opts, concurrency_flag)},
    {CW_OPT_VALUE, "log-level", 'l', "LEVEL", "debug, info, warn or error, instead of [log] level",
     .offset = offsetof(cw_pool_opts, level_flag)},
    CW_OPT_HELP_SPEC,
    CW_OPT_END_SPEC,
};

int cw_cli_pool_load(const cw_opt_cmd *cmd, int argc, char **argv, cw_pool_opts *po,
                     cw_config **out)
{
    int first;
    int rc = cw_opt_parse(cmd, NULL, argc, argv, po, &first);
    if (rc != CW_OPT_PARSED)
        return rc;
    if (first < argc)
        return cw_cli_fail(CW_EXIT_USAGE, "%s: unexpected argument '%s'", cmd->name, argv[first]);
    if (!po->config_path)
        return cw_cli_fail(CW_EXIT_USAGE, "%s: -c POOL.INI is required", cmd->name);
    if (cw_pool_config_load(out, po))
        return cw_cli_fail(CW_EXIT_USAGE, "%s", cw_error_last());
    if ((*out)->n_plugins == 0) {
        rc = cw_cli_fail(CW_EXIT_USAGE, "%s: [pool] plugins is empty: a worker needs handlers",
                         (*out)->path);
        cw_config_free(*out);
        *out = NULL;
        return rc;
    }
    return CW_OPT_PARSED;
}

static const cw_opt_cmd run_cmd = {
    .name = "run",
    .summary = "Runs the pool: a supervisor that keeps N worker processes alive until SIGTERM "
               "or SIGINT, then lets in-flight tasks settle and exits; SIGHUP rolls the workers "
               "onto the configuration read again.",
    .about = "The environment overrides the file (CW_AMQP_URL the broker's url, "
             "CW_<SECTION>_<KEY> any key: CW_POOL_WORKERS=4), and the flags override both.",
    .specs = cw_cli_pool_specs,
};

int cw_cmd_run(int argc, char **argv)
{
    cw_pool_opts po = {0};
    cw_config *cfg = NULL;
    int rc = cw_cli_pool_load(&run_cmd, argc, argv, &po, &cfg);
    return rc != CW_OPT_PARSED ? rc : cw_pool_run(cfg, &po);
}
