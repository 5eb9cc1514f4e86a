/* compworker run: the pool supervisor (see pool.h). */
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
    cw_config *cfg = NULL;
    int rc = cw_pool_cli_load(argc, argv, "run", run_usage, &po, &cfg);
    return rc >= 0 ? rc : cw_pool_run(cfg, &po);
}
