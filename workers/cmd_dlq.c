/* compworker dlq: look at, group, replay, delete, export and import the
 * tasks in a pool's dead-letter queue. The work is done in dlq/; each
 * command reads its flags and prints in a file of its own
 * (cmd_dlq_<command>.c); this one finds the command in the table and
 * parses its command line. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "framework/clock.h"
#include "framework/config.h"
#include "framework/error.h"
#include "workers/cli.h"
#include "workers/dlq_cli.h"

/* Where the summaries of the commands start in the help. */
#define SUMMARY_COL 28

/* The commands, in the order the help lists them. */
static const cw_cli_dlq_sub *const commands[] = {
    &cw_cli_dlq_list,   &cw_cli_dlq_show,   &cw_cli_dlq_stats,  &cw_cli_dlq_replay,
    &cw_cli_dlq_delete, &cw_cli_dlq_export, &cw_cli_dlq_import,
};
#define N_COMMANDS (sizeof commands / sizeof *commands)

/* The tables of every command: each knows the options of the others. */
static void command_tables(const cw_opt_spec *out[N_COMMANDS + 1])
{
    for (size_t i = 0; i < N_COMMANDS; i++)
        out[i] = commands[i]->cmd.specs;
    out[N_COMMANDS] = NULL;
}

/* "list, show, ... or import" */
static void command_names(char *out, size_t cap)
{
    size_t o = 0;
    out[0] = '\0';
    for (size_t i = 0; i < N_COMMANDS && o < cap; i++) {
        const char *sep = i == 0 ? "" : i + 1 < N_COMMANDS ? ", " : " or ";
        o += (size_t)snprintf(out + o, cap - o, "%s%s", sep, commands[i]->name);
    }
}

static void print_usage(void)
{
    printf("usage: compworker dlq <command> -c POOL.INI [options]\n\n"
           "commands (none of them consumes a message it does not act on):\n");
    for (size_t i = 0; i < N_COMMANDS; i++) {
        const cw_cli_dlq_sub *s = commands[i];
        char term[128];
        snprintf(term, sizeof term, "%s%s%s", s->name, s->cmd.args ? " " : "",
                 s->cmd.args ? s->cmd.args : "");
        cw_opt_print_item(stdout, SUMMARY_COL, term, s->cmd.summary);
    }
    printf("\noptions ('compworker dlq <command> --help' lists those of one command):\n");
    const cw_opt_spec *tables[N_COMMANDS + 1];
    command_tables(tables);
    cw_opt_print_options(stdout, tables);
}

/* The positional arguments: message IDs, a file, or none. */
static int check_args(const cw_cli_dlq_sub *sub, cw_cli_dlq_cmd *c)
{
    if (sub->args == CW_CLI_DLQ_FILE)
        return 0;
    if (c->n_args && sub->args == CW_CLI_DLQ_NO_ARGS)
        return cw_cli_fail(CW_EXIT_USAGE, "dlq %s: unexpected argument '%s'", c->name, c->args[0]);
    for (int i = 0; i < c->n_args; i++) {
        if (!cw_cli_is_message_id(c->args[i]))
            return cw_cli_fail(CW_EXIT_USAGE,
                               "dlq %s: argument %d is not a message ID (1 to %d printable "
                               "ASCII characters)",
                               c->name, i + 1, CW_MESSAGE_ID_MAX);
    }
    c->filter.ids = c->args;
    c->filter.n_ids = (size_t)c->n_args;
    return 0;
}

int cw_cmd_dlq(int argc, char **argv)
{
    if (argc < 2) {
        char names[128];
        command_names(names, sizeof names);
        return cw_cli_fail(CW_EXIT_USAGE, "dlq: no command given: %s (try 'compworker dlq help')",
                           names);
    }
    if (strcmp(argv[1], "--help") == 0 || strcmp(argv[1], "-h") == 0 ||
        strcmp(argv[1], "help") == 0) {
        print_usage();
        return CW_EXIT_OK;
    }
    const cw_cli_dlq_sub *sub = NULL;
    for (size_t i = 0; i < N_COMMANDS && !sub; i++) {
        if (strcmp(commands[i]->name, argv[1]) == 0)
            sub = commands[i];
    }
    if (!sub)
        return cw_cli_fail(CW_EXIT_USAGE, "dlq: unknown command '%s' (try 'compworker dlq help')",
                           argv[1]);

    /* getopt_long on argv + 1: the command name is argv[0] there. */
    cw_cli_dlq_cmd c = {.name = sub->name, .now_ms = cw__now_ms()};
    const cw_opt_spec *tables[N_COMMANDS + 1];
    command_tables(tables);
    int first;
    int rc = cw_opt_parse(&sub->cmd, tables, argc - 1, argv + 1, &c, &first);
    if (rc != CW_OPT_PARSED)
        return rc;
    c.args = argv + 1 + first;
    c.n_args = argc - 1 - first;
    if (!c.config)
        return cw_cli_fail(CW_EXIT_USAGE, "dlq %s: -c POOL.INI is required", c.name);
    if ((rc = check_args(sub, &c)) || (sub->check && (rc = sub->check(&c))))
        return rc;
    if (c.filter.has_since && c.filter.has_until && c.filter.since_ms >= c.filter.until_ms)
        return cw_cli_fail(CW_EXIT_USAGE, "dlq %s: --since is not before --until", c.name);

    cw_config *cfg = NULL;
    if (cw_config_load(&cfg, c.config))
        return cw_cli_fail(CW_EXIT_USAGE, "%s", cw_error_last());
    c.cfg = cfg;
    if (sub->args == CW_CLI_DLQ_IDS && c.n_args) {
        c.seen = calloc((size_t)c.n_args, sizeof *c.seen);
        if (!c.seen) {
            cw_config_free(cfg);
            return cw_cli_fail(CW_EXIT_FAILURE, "out of memory");
        }
    }
    cw_cli_catch_signals();
    c.ctl = cw_cli_ctl(c.json);
    int code = sub->run(&c);
    free(c.seen);
    cw_config_free(cfg);
    return code;
}
