/* The compworker executable: subcommands and exit codes. */
#ifndef CW_WORKERS_CLI_H
#define CW_WORKERS_CLI_H

#include <stdbool.h>

/* Exit codes, one per cause. */
enum {
    CW_EXIT_OK = 0,
    CW_EXIT_FAILURE = 1, /* the operation failed at run time (broker, store) */
    CW_EXIT_USAGE = 2,   /* bad flags, configuration or plugin */
    CW_EXIT_HANDLER_TIMEOUT = 3, /* a handler ran past [pool] handler_timeout */
};

int cw_cmd_run(int argc, char **argv);
int cw_cmd_publish(int argc, char **argv);
int cw_cmd_dlq(int argc, char **argv);
int cw_cmd_status(int argc, char **argv);
int cw_cmd_config(int argc, char **argv);

/* Prints "compworker: <msg>" on stderr and returns `code` (opt.c). */
int cw_cli_fail(int code, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

/* The one line for an option getopt_long() refused, and CW_EXIT_USAGE:
 * "<cmd>: option '--workers' needs a value" when it returned ':' (the
 * optstring must start with ':'), "<cmd>: unknown option '--bogus' (try
 * 'compworker <cmd> --help')" when it returned '?'. `argv` is the vector
 * getopt_long() was given; optind and optopt are read. */
int cw_cli_bad_option(const char *cmd, int c, char **argv);

/* 1 to 128 printable ASCII characters: what a message ID is. */
bool cw_cli_is_message_id(const char *s);

#endif
