/* compworker version: the version of the executable and of its plugin ABI. */
#include <stdio.h>

#include "compworker/version.h"
#include "workers/cli.h"
#include "workers/opt.h"

static const cw_opt_spec version_specs[] = {
    CW_OPT_HELP_SPEC,
    CW_OPT_END_SPEC,
};

static const cw_opt_cmd version_cmd = {
    .name = "version",
    .summary = "Prints the version of compworker and the version of the plugin ABI it loads.",
    .specs = version_specs,
};

int cw_cmd_version(int argc, char **argv)
{
    int first;
    int rc = cw_opt_parse(&version_cmd, NULL, argc, argv, NULL, &first);
    if (rc != CW_OPT_PARSED)
        return rc;
    if (first < argc)
        return cw_cli_fail(CW_EXIT_USAGE, "version: unexpected argument '%s'", argv[first]);
    printf("compworker %s (plugin ABI %d)\n", cw_version(), CW_ABI_VERSION);
    return CW_EXIT_OK;
}
