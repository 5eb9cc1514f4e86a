/* The compworker executable: subcommands and exit codes. */
#ifndef CW_WORKERS_CLI_H
#define CW_WORKERS_CLI_H

#include <stdbool.h>

#include "workers/opt.h"

/* Exit codes, one per cause. */
enum {
    CW_EXIT_OK = 0,
    CW_EXIT_FAILURE = 1,         /* the operation failed at run time (broker, store) */
    CW_EXIT_USAGE = 2,           /* bad flags, configuration or plugin */
    CW_EXIT_HANDLER_TIMEOUT = 3, /* a handler ran past [pool] handler_timeout */
};

int cw_cmd_run(int argc, char **argv);
int cw_cmd_publish(int argc, char **argv);
int cw_cmd_dlq(int argc, char **argv);
int cw_cmd_status(int argc, char **argv);
int cw_cmd_config(int argc, char **argv);
int cw_cmd_version(int argc, char **argv);
int cw_cmd_relay(int argc, char **argv);
int cw_cmd_saga(int argc, char **argv);

/* Prints "compworker: <msg>" on stderr and returns `code` (opt.c). */
int cw_cli_fail(int code, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

/* The flags `run` and `config check` share (-c, --workers, --log-level,
 * --help), and what they do with them (cmd_run.c): parses argv (argv[0] is
 * the subcommand) by cw_cli_pool_specs into `po`, loads the configuration
 * into *out and checks it has plugins. Returns CW_OPT_PARSED when *out is
 * loaded (free it with cw_config_free()); otherwise the exit code, after
 * the help for --help or one error line naming cmd->name. */
struct cw_pool_opts;
struct cw_config;
extern const cw_opt_spec cw_cli_pool_specs[];
int cw_cli_pool_load(const cw_opt_cmd *cmd, int argc, char **argv, struct cw_pool_opts *po,
                     struct cw_config **out);

/* Prints every effective value of `cfg` as INI, each with its source
 * (cmd_config.c): what `config check` and `relay check` show. */
void cw_cli_print_config(const struct cw_config *cfg);

/* 1 to 128 printable ASCII characters: what a message ID is. */
bool cw_cli_is_message_id(const char *s);

#endif
