/* compworker config check: validates a pool file and prints every effective
 * value with where it came from. */
#include <getopt.h>
#include <stdio.h>
#include <string.h>

#include "framework/config.h"
#include "framework/error.h"
#include "workers/cli.h"
#include "workers/notify.h"
#include "workers/pool.h"

static const char config_usage[] =
    "usage: compworker config check -c POOL.INI [--workers N] [--log-level L]\n"
    "\n"
    "Reads the file as 'compworker run' would (the environment and the flags\n"
    "applied), and prints every effective value as INI, each with its source:\n"
    "the file and line, the environment variable, the flag, or the default.\n"
    "Passwords in URLs and secret-looking plugin settings are masked.\n"
    "Exit code 0 when the configuration is valid, 2 (with the reason) when not.\n";

typedef struct printer {
    const char *file;
    const char *section; /* the one printed last */
} printer;

static void print_entry(const cw_config_entry *e, void *ud)
{
    printer *pr = ud;
    if (!pr->section || strcmp(pr->section, e->section) != 0) {
        printf("%s[%s]\n", pr->section ? "\n" : "", e->section);
        pr->section = e->section;
    }
    char src[600];
    switch (e->origin) {
    case CW_ORIGIN_FILE:
        if (e->line)
            snprintf(src, sizeof src, "file %s:%u", pr->file, e->line);
        else
            snprintf(src, sizeof src, "file %s", pr->file);
        break;
    case CW_ORIGIN_ENV: snprintf(src, sizeof src, "env %s", e->source ? e->source : "?"); break;
    case CW_ORIGIN_FLAG: snprintf(src, sizeof src, "flag %s", e->source ? e->source : "?"); break;
    default: snprintf(src, sizeof src, "default"); break;
    }
    char line[9000];
    int n = snprintf(line, sizeof line, "%s = %s", e->key, e->value);
    if (n < 0)
        return;
    printf("%-44s ; %s%s%s%s\n", line, src, e->note ? " (" : "", e->note ? e->note : "",
           e->note ? ")" : "");
}

int cw_cmd_config(int argc, char **argv)
{
    if (argc < 2 || strcmp(argv[1], "check") != 0) {
        if (argc >= 2 && (strcmp(argv[1], "--help") == 0 || strcmp(argv[1], "-h") == 0)) {
            fputs(config_usage, stdout);
            return CW_EXIT_OK;
        }
        fputs(config_usage, stderr);
        return CW_EXIT_USAGE;
    }
    cw_pool_opts po = {0};
    static const struct option opts[] = {{"config", required_argument, NULL, 'c'},
                                         {"workers", required_argument, NULL, 'w'},
                                         {"log-level", required_argument, NULL, 'l'},
                                         {"help", no_argument, NULL, 'h'},
                                         {NULL, 0, NULL, 0}};
    int c;
    optind = 1;
    opterr = 0;
    argc--;
    argv++;
    while ((c = getopt_long(argc, argv, "c:w:l:h", opts, NULL)) != -1) {
        switch (c) {
        case 'c': po.config_path = optarg; break;
        case 'w': po.workers_flag = optarg; break;
        case 'l': po.level_flag = optarg; break;
        case 'h':
            fputs(config_usage, stdout);
            return CW_EXIT_OK;
        default:
            return cw_cli_fail(CW_EXIT_USAGE, "config check: unknown or incomplete option '%s'",
                               argv[optind - 1]);
        }
    }
    if (optind < argc)
        return cw_cli_fail(CW_EXIT_USAGE, "config check: unexpected argument '%s'", argv[optind]);
    if (!po.config_path)
        return cw_cli_fail(CW_EXIT_USAGE, "config check: -c POOL.INI is required");

    cw_config *cfg = NULL;
    if (cw_pool_config_load(&cfg, &po))
        return cw_cli_fail(CW_EXIT_USAGE, "%s", cw_error_last());
    if (cfg->n_plugins == 0) {
        int rc = cw_cli_fail(CW_EXIT_USAGE, "%s: [pool] plugins is empty: a worker needs handlers",
                             cfg->path);
        cw_config_free(cfg);
        return rc;
    }
    printf("; %s: valid (sd_notify: %s)\n", cfg->path, cw_notify_available() ? "yes" : "no");
    printer pr = {.file = cfg->path};
    cw_config_describe(cfg, print_entry, &pr);
    cw_config_free(cfg);
    return CW_EXIT_OK;
}
