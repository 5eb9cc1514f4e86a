/* compworker run: the pool supervisor (see pool.h). */
#include <getopt.h>
#include <stdio.h>
#include <string.h>

#include "framework/config.h"
#include "framework/error.h"
#include "framework/log.h"
#include "workers/cli.h"
#include "workers/pool.h"

static const char run_usage[] =
    "usage: compworker run -c POOL.INI [--workers N] [--log-level debug|info|warn|error]\n";

int cw_cmd_run(int argc, char **argv)
{
    cw_pool_opts po = {0};
    static const struct option opts[] = {{"config", required_argument, NULL, 'c'},
                                         {"log-level", required_argument, NULL, 'l'},
                                         {"workers", required_argument, NULL, 'w'},
                                         {"help", no_argument, NULL, 'h'},
                                         {NULL, 0, NULL, 0}};
    int c;
    optind = 1;
    opterr = 0;
    while ((c = getopt_long(argc, argv, "c:l:w:h", opts, NULL)) != -1) {
        switch (c) {
        case 'c': po.config_path = optarg; break;
        case 'l': po.level_flag = optarg; break;
        case 'w': po.workers_flag = optarg; break;
        case 'h':
            fputs(run_usage, stdout);
            return CW_EXIT_OK;
        default:
            return cw_cli_fail(CW_EXIT_USAGE, "run: unknown or incomplete option '%s'",
                               argv[optind - 1]);
        }
    }
    if (optind < argc)
        return cw_cli_fail(CW_EXIT_USAGE, "run: unexpected argument '%s'", argv[optind]);
    if (!po.config_path)
        return cw_cli_fail(CW_EXIT_USAGE, "run: -c POOL.INI is required");

    cw_config *cfg = NULL;
    if (cw_pool_config_load(&cfg, &po))
        return cw_cli_fail(CW_EXIT_USAGE, "%s", cw_error_last());
    if (cfg->n_plugins == 0) {
        int rc = cw_cli_fail(CW_EXIT_USAGE, "%s: [pool] plugins is empty: a worker needs handlers",
                             cfg->path);
        cw_config_free(cfg);
        return rc;
    }
    return cw_pool_run(cfg, &po);
}
