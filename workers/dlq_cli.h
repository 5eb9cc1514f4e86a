/* What `compworker dlq` and `compworker status` share: the pool's store
 * opened for an operator, interruption by a signal, progress on a
 * terminal, and human output (local times, ages, columns of a width); and
 * what the commands of `compworker dlq` (cmd_dlq_*.c) share. */
#ifndef CW_WORKERS_DLQ_CLI_H
#define CW_WORKERS_DLQ_CLI_H

#include <signal.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

#include "dlq/dlq.h"
#include "framework/config.h"
#include "framework/store.h"
#include "workers/opt.h"

/* Human output fits this many columns. */
#define CW_CLI_WIDTH 100

/* Columns of the tables of tasks: message ID, type, saga ID, error class. */
#define CW_CLI_W_ID 36
#define CW_CLI_W_TYPE 16
#define CW_CLI_W_SAGA 16
#define CW_CLI_W_CLASS 9

/* Set by SIGINT / SIGTERM once cw_cli_catch_signals() ran; a second one
 * kills the process (which is safe: see dlq/dlq.h). */
extern volatile sig_atomic_t cw_cli_stop;
void cw_cli_catch_signals(void);

/* Opens the pool's store as this operator's process. CW_STATUS_CONFIG (a
 * readable reason in cw_error_last()) for an in-memory store, which lives
 * in one worker and cannot be reached; with `must_exist`, CW_STATUS_NOT_FOUND
 * when the file does not exist yet (no worker of the pool ran on this host). */
int cw_cli_store_open(const cw_config *cfg, bool must_exist, cw_store **out);

/* A cw_dlq_ctl that watches cw_cli_stop and, when stderr is a terminal and
 * `quiet` is false, shows the progress of operations that last over a
 * second on one line of stderr. Call cw_cli_progress_done() before printing
 * anything else to stderr. */
cw_dlq_ctl cw_cli_ctl(bool quiet);
void cw_cli_progress_done(void);

/* "2026-11-24 22:51:30" in local time ("-" for 0). */
void cw_cli_local_time(int64_t ms, char *out, size_t cap);

/* "12s ago", "3m ago", "5h ago", "2d ago" ("-" for 0; "in 3s" ahead). */
void cw_cli_age(int64_t ms, int64_t now_ms, char *out, size_t cap);

/* "2026-11-24 22:51:30 (3m ago)". */
void cw_cli_when(int64_t ms, int64_t now_ms, char *out, size_t cap);

/* Copies text for a column of `width` characters (UTF-8 characters, not
 * bytes): control bytes escaped as \xNN, cut with "…" when longer, padded
 * with spaces when `pad`. */
void cw_cli_fit(const char *s, size_t width, bool pad, char *out, size_t cap);

/* Prints text that came from a message, control bytes escaped. */
void cw_cli_put_safe(FILE *f, const char *s);

/* The ISO 8601 UTC form of a time, or JSON null for 0, as a json-c object
 * (json_object_put() it). */
struct json_object *cw_cli_json_time(int64_t ms);

/* Prints a json-c object as one line on stdout and frees it. */
void cw_cli_json_line(struct json_object *o);

/* A JSON string of `s`, or NULL (JSON null) when it is NULL or empty. */
struct json_object *cw_cli_jstr(const char *s);

/* The store's record of a message as a JSON object (with its history). */
struct json_object *cw_cli_record_json(cw_store *store, const cw_task_record *rec);

/* Prints the store's attempt history of a message as aligned columns,
 * each line starting with `indent`; returns the rows printed. */
int cw_cli_print_history(cw_store *store, const char *message_id, const char *indent);

/* ---- compworker dlq ------------------------------------------------------ */

/* A `compworker dlq` command line, parsed: the target of the tables of
 * options of its commands. */
typedef struct cw_cli_dlq_cmd {
    const char *name;   /* the command: "list" */
    const char *config; /* -c */
    int64_t now_ms;     /* what --since 2h is before */
    const cw_config *cfg;
    bool json;
    bool all, dry_run, edit, force, yes;
    const char *to;
    uint64_t limit;
    unsigned canary;
    double rate;
    int64_t canary_timeout_ms; /* 0: not given */
    cw_dlq_filter filter;
    char **args; /* positional arguments after the command */
    int n_args;
    bool *seen; /* per message ID argument: found in the DLQ */
    cw_dlq_ctl ctl;
} cw_cli_dlq_cmd;

/* What a command takes after its options. */
typedef enum cw_cli_dlq_args {
    CW_CLI_DLQ_NO_ARGS, /* nothing */
    CW_CLI_DLQ_IDS,     /* message IDs, each checked; the filter selects them */
    CW_CLI_DLQ_FILE,    /* a file, which the command checks */
} cw_cli_dlq_args;

/* A command of `compworker dlq`, one file each (cmd_dlq_<name>.c), in the
 * table of cmd_dlq.c. */
typedef struct cw_cli_dlq_sub {
    const char *name; /* "list" */
    cw_opt_cmd cmd;   /* "dlq list": the table of its options, its help */
    cw_cli_dlq_args args;
    /* What its options and arguments must be together, once each is
     * checked: 0, or the exit code after the error line. May be NULL. */
    int (*check)(const cw_cli_dlq_cmd *c);
    /* Runs it, the configuration loaded: the exit code. */
    int (*run)(cw_cli_dlq_cmd *c);
} cw_cli_dlq_sub;

extern const cw_cli_dlq_sub cw_cli_dlq_list;
extern const cw_cli_dlq_sub cw_cli_dlq_show;
extern const cw_cli_dlq_sub cw_cli_dlq_stats;
extern const cw_cli_dlq_sub cw_cli_dlq_replay;
extern const cw_cli_dlq_sub cw_cli_dlq_delete;
extern const cw_cli_dlq_sub cw_cli_dlq_export;
extern const cw_cli_dlq_sub cw_cli_dlq_import;

/* The options several commands take, to include in their tables: -c and
 * --json (all of them), the filters (with their heading: last in a
 * table), --limit (list, replay), --all (replay, delete). */
extern const cw_opt_spec cw_cli_dlq_common_specs[];
extern const cw_opt_spec cw_cli_dlq_filter_specs[];
extern const cw_opt_spec cw_cli_dlq_limit_specs[];
extern const cw_opt_spec cw_cli_dlq_all_specs[];

/* replay and delete: message IDs, filters or --all, and --all alone.
 * Returns 0, or CW_EXIT_USAGE after the error line. */
int cw_cli_dlq_check_selection(const cw_cli_dlq_cmd *c);

/* The summary of a message as a JSON object. */
struct json_object *cw_cli_dlq_msg_json(const cw_dlq_msg *m);

/* Notes that a message ID argument was found in the DLQ. */
void cw_cli_dlq_mark_seen(cw_cli_dlq_cmd *c, const char *message_id);

/* Reports the message ID arguments that were not found; true if any. */
bool cw_cli_dlq_report_unseen(const cw_cli_dlq_cmd *c);

/* The error line of a failed operation (interrupted, or cw_error_last()),
 * and CW_EXIT_FAILURE. */
int cw_cli_dlq_fail(const cw_cli_dlq_cmd *c, int rc);

/* Prints groups of tasks as a table, each line starting with `indent`:
 * with `times` the oldest and newest of each (and the reasons on a line of
 * their own), else the reasons. */
void cw_cli_dlq_print_groups(const cw_dlq_groups *gs, const char *indent, bool times);

/* A group of tasks as a JSON object. */
struct json_object *cw_cli_dlq_group_json(const cw_dlq_group *g);

#endif
