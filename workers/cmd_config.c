/* compworker config check: validates a pool file and prints every effective
 * value with where it came from. */
#include <stdio.h>
#include <string.h>

#include "framework/config.h"
#include "framework/error.h"
#include "framework/owner.h"
#include "framework/store.h"
#include "workers/cli.h"
#include "workers/notify.h"
#include "workers/opt.h"
#include "workers/pool.h"

static const cw_opt_cmd check_cmd = {
    .name = "config check",
    .summary = "Reads the file as 'compworker run' would (the environment and the flags "
               "applied), and prints every effective value as INI, each with its source: the "
               "file and line, the environment variable, the flag, or the default. Passwords in "
               "URLs and secret-looking plugin settings are masked. It also asks the store, "
               "changing nothing: whether its schema is there and at which version (for "
               "PostgreSQL, connecting to the server).",
    .about = "Exit code 0 when the configuration is valid, 2 (with the reason) when not, 1 when "
             "the store cannot be reached or read (with libpq's or SQLite's reason).",
    .specs = cw_cli_pool_specs,
};

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
    if (argc < 2)
        return cw_cli_fail(CW_EXIT_USAGE, "config: no command given: check (try 'compworker "
                                          "config --help')");
    if (strcmp(argv[1], "--help") == 0 || strcmp(argv[1], "-h") == 0) {
        cw_opt_print_help(stdout, &check_cmd);
        return CW_EXIT_OK;
    }
    if (strcmp(argv[1], "check") != 0)
        return cw_cli_fail(CW_EXIT_USAGE, "config: unknown command '%s' (expected check)", argv[1]);
    cw_pool_opts po = {0};
    cw_config *cfg = NULL;
    int rc = cw_cli_pool_load(&check_cmd, argc - 1, argv + 1, &po, &cfg);
    if (rc != CW_OPT_PARSED)
        return rc;
    /* The store is asked too (without changing it): a PostgreSQL server that
     * refuses or does not answer is reported at once. */
    char owner[128], store[1024];
    cw__owner_self(owner, sizeof owner);
    cw_store_opts so;
    cw_store_opts_of(cfg, owner, false, &so);
    if ((rc = cw_store_probe(&so, store, sizeof store))) {
        char why[2048];
        snprintf(why, sizeof why, "%s", cw_error_last());
        cw_config_free(cfg);
        return cw_cli_fail(rc == CW_STATUS_CONFIG ? CW_EXIT_USAGE : CW_EXIT_FAILURE, "%s", why);
    }
    printf("; %s: valid (sd_notify: %s)\n", cfg->path, cw_notify_available() ? "yes" : "no");
    printf("; store: %s\n", store);
    printer pr = {.file = cfg->path};
    cw_config_describe(cfg, print_entry, &pr);
    cw_config_free(cfg);
    return CW_EXIT_OK;
}
