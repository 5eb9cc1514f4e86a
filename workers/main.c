/* compworker: find the command in the table and hand over. */
#include <signal.h>
#include <stdio.h>
#include <string.h>

#include "compworker/client.h" /* CW_MESSAGE_ID_MAX */

#include "workers/cli.h"
#include "workers/opt.h"

typedef struct command {
    const char *name;
    int (*run)(int argc, char **argv); /* argv[0] is the command */
    const char *summary;               /* its line in the help; NULL: another name */
} command;

/* Where the summaries start in the help. */
#define SUMMARY_COL 12

static int cmd_help(int argc, char **argv);

static const command commands[] = {
    {"run", cw_cmd_run,
     "run the pool (a supervisor and N worker processes) until SIGTERM or "
     "SIGINT; SIGHUP rolls the workers"},
    {"config", cw_cmd_config,
     "config check: validate a configuration and print every effective "
     "value with its source"},
    {"publish", cw_cmd_publish, "publish one task, confirmed; prints its ID"},
    {"dlq", cw_cmd_dlq,
     "inspect and replay the dead-letter queue ('compworker dlq help' lists "
     "its commands)"},
    {"relay", cw_cmd_relay,
     "the outbox relay: publish the tasks services commit to their outbox table "
     "('relay init' creates it)"},
    {"saga", cw_cmd_saga, "where a saga's compensation plan is: saga show SAGA_ID, saga list"},
    {"status", cw_cmd_status, "what became of a task: state, attempts, history"},
    {"version", cw_cmd_version, "print the version"},
    {"help", cmd_help, "print this help"},
    {"--version", cw_cmd_version, NULL},
    {"--help", cmd_help, NULL},
    {"-h", cmd_help, NULL},
};

static int cmd_help(int argc, char **argv)
{
    (void)argc;
    (void)argv;
    printf("usage: compworker <command> [options]\n\ncommands:\n");
    for (size_t i = 0; i < sizeof commands / sizeof *commands; i++) {
        if (commands[i].summary)
            cw_opt_print_item(stdout, SUMMARY_COL, commands[i].name, commands[i].summary);
    }
    printf("\n'compworker <command> --help' describes a command and its options.\n"
           "CW_AMQP_URL overrides [broker] url, CW_<SECTION>_<KEY> any key (CW_POOL_WORKERS=4).\n"
           "See README.md for the configuration keys.\n");
    return CW_EXIT_OK;
}

bool cw_cli_is_message_id(const char *s)
{
    size_t n = strlen(s);
    if (n == 0 || n > CW_MESSAGE_ID_MAX)
        return false;
    for (size_t i = 0; i < n; i++) {
        if ((unsigned char)s[i] < 0x21 || (unsigned char)s[i] > 0x7e)
            return false;
    }
    return true;
}

int main(int argc, char **argv)
{
    signal(SIGPIPE, SIG_IGN);
    if (argc < 2)
        return cw_cli_fail(CW_EXIT_USAGE, "no command given (try 'compworker help')");
    for (size_t i = 0; i < sizeof commands / sizeof *commands; i++) {
        if (strcmp(commands[i].name, argv[1]) == 0)
            return commands[i].run(argc - 1, argv + 1);
    }
    return cw_cli_fail(CW_EXIT_USAGE, "unknown command '%s' (try 'compworker help')", argv[1]);
}
