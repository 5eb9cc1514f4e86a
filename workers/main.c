/* compworker: parse the subcommand and hand over. */
#include <signal.h>
#include <stdio.h>
#include <string.h>

#include "compworker/client.h" /* CW_MESSAGE_ID_MAX */

#include "workers/cli.h"

static const char usage[] =
    "usage: compworker <command> [options]\n"
    "\n"
    "commands:\n"
    "  run -c POOL.INI [--workers N] [--log-level L]\n"
    "                                       run the pool (a supervisor and N worker processes)\n"
    "                                       until SIGTERM/SIGINT; SIGHUP rolls the workers\n"
    "  config check -c POOL.INI             validate a configuration and print every\n"
    "                                       effective value with its source\n"
    "  publish -c POOL.INI --type T [--saga-id S] [--message-id ID]\n"
    "          (--data JSON | --data-file F) publish one task, confirmed; prints its ID\n"
    "  dlq <list|show|stats|replay|delete|export|import> -c POOL.INI ...\n"
    "                                       inspect and replay the dead-letter queue\n"
    "                                       ('compworker dlq help' for more)\n"
    "  status -c POOL.INI MESSAGE_ID        what became of a task: state, attempts, history\n"
    "  version                              print the version\n"
    "  help                                 print this help\n"
    "\n"
    "CW_AMQP_URL overrides [broker] url, CW_<SECTION>_<KEY> any key (CW_POOL_WORKERS=4).\n"
    "See README.md for the configuration keys.\n";

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
    const char *cmd = argv[1];
    if (strcmp(cmd, "run") == 0)
        return cw_cmd_run(argc - 1, argv + 1);
    if (strcmp(cmd, "publish") == 0)
        return cw_cmd_publish(argc - 1, argv + 1);
    if (strcmp(cmd, "config") == 0)
        return cw_cmd_config(argc - 1, argv + 1);
    if (strcmp(cmd, "dlq") == 0)
        return cw_cmd_dlq(argc - 1, argv + 1);
    if (strcmp(cmd, "status") == 0)
        return cw_cmd_status(argc - 1, argv + 1);
    if (strcmp(cmd, "version") == 0 || strcmp(cmd, "--version") == 0)
        return cw_cmd_version(argc - 1, argv + 1);
    if (strcmp(cmd, "help") == 0 || strcmp(cmd, "--help") == 0 || strcmp(cmd, "-h") == 0) {
        fputs(usage, stdout);
        return CW_EXIT_OK;
    }
    return cw_cli_fail(CW_EXIT_USAGE, "unknown command '%s' (try 'compworker help')", cmd);
}
