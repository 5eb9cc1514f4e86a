/* compworker config check: validates a pool file and prints every effective
 * value with where it came from. */
#include <errno.h>
#include <stdio.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include "framework/config.h"
#include "framework/error.h"
#include "framework/owner.h"
#include "framework/registry.h"
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
    bool any;          /* a section was printed */
    char section[300]; /* the one printed last (a copy: the describer reuses its buffer) */
} printer;

static void print_entry(const cw_config_entry *e, void *ud)
{
    printer *pr = ud;
    if (!pr->any || strcmp(pr->section, e->section) != 0) {
        printf("%s[%s]\n", pr->any ? "\n" : "", e->section);
        snprintf(pr->section, sizeof pr->section, "%s", e->section);
        pr->any = true;
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

/* The handlers the plugins register, and how the handler threads run each,
 * from a child process that loads them as a worker would (their code stays
 * out of this one). 0, or the exit code for a plugin that does not load. */
static int describe_handlers(const cw_config *cfg)
{
    fflush(stdout);
    pid_t pid = fork();
    if (pid < 0)
        return cw_cli_fail(CW_EXIT_FAILURE, "config check: fork: %s", strerror(errno));
    if (pid == 0) {
        cw_registry *reg = NULL;
        if (cw_registry_new(&reg))
            _exit(CW_EXIT_FAILURE);
        cw_registry_use_settings(reg, cfg->plugin_settings, cfg->n_plugin_settings);
        for (size_t i = 0; i < cfg->n_plugins; i++) {
            if (cw_plugin_load(reg, cfg->plugins[i])) {
                fprintf(stderr, "compworker: %s\n", cw_error_last());
                _exit(CW_EXIT_USAGE);
            }
        }
        printf("; handlers (the plugins loaded as a worker loads them):\n");
        for (size_t i = 0; i < reg->n_handlers; i++) {
            const cw_handler_entry *h = &reg->handlers[i];
            const cw_handler_config *hc = NULL;
            for (size_t j = 0; j < cfg->n_handlers; j++) {
                if (strcmp(cfg->handlers[j].type, h->type) == 0)
                    hc = &cfg->handlers[j];
            }
            char how[256];
            if (cfg->concurrency == 1)
                snprintf(how, sizeof how, "one at a time ([pool] concurrency = 1)");
            else if (!h->concurrent)
                snprintf(how, sizeof how,
                         "one at a time: not registered as concurrent (cw_register_handler_opts)");
            else if (hc && (hc->set & CW_HANDLER_SET_CONCURRENCY) &&
                     hc->concurrency < cfg->concurrency)
                snprintf(how, sizeof how, "concurrent, at most %u at once", hc->concurrency);
            else
                snprintf(how, sizeof how, "concurrent, up to %u at once", cfg->concurrency);
            char rate[64] = "";
            if (hc && (hc->set & CW_HANDLER_SET_RATE_LIMIT))
                snprintf(rate, sizeof rate, "; at most %g a second on this host", hc->rate_per_s);
            printf(";   %s (%s %s): %s%s\n", h->type, h->plugin ? h->plugin->info->name : "program",
                   h->plugin ? h->plugin->info->version : "", how, rate);
        }
        fflush(stdout);
        /* The plugins' teardowns run, as at a worker's exit. */
        cw_registry_free(reg);
        _exit(CW_EXIT_OK);
    }
    int st;
    while (waitpid(pid, &st, 0) < 0 && errno == EINTR)
        ;
    if (WIFEXITED(st))
        return WEXITSTATUS(st);
    return cw_cli_fail(CW_EXIT_FAILURE, "config check: loading the plugins ended with signal %d",
                       WTERMSIG(st));
}

void cw_cli_print_config(const cw_config *cfg)
{
    printer pr = {.file = cfg->path, .any = false};
    cw_config_describe(cfg, print_entry, &pr);
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
    cw_cli_print_config(cfg);
    rc = describe_handlers(cfg);
    cw_config_free(cfg);
    return rc;
}
