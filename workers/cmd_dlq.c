/* compworker dlq: look at, group, replay, delete, export and import the
 * tasks in a pool's dead-letter queue. The work is done in dlq/; this file
 * reads the flags and hands over to the command, one file each
 * (cmd_dlq_<command>.c). */
#include <errno.h>
#include <getopt.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "framework/clock.h"
#include "framework/config.h"
#include "framework/error.h"
#include "framework/parse.h"
#include "workers/cli.h"
#include "workers/dlq_cli.h"

#define DEFAULT_CANARY_TIMEOUT_MS 120000

static const char dlq_usage[] =
    "usage: compworker dlq <command> -c POOL.INI [options]\n"
    "\n"
    "commands (none of them consumes a message it does not act on):\n"
    "  list [filters] [--limit N]          the DLQ's tasks, oldest first\n"
    "  show MESSAGE_ID...                  every property and header, the body, the history\n"
    "  stats [filters]                     counts by type and error class, oldest and newest\n"
    "  replay (MESSAGE_ID... | --all | filters) [--dry-run] [--edit] [--to ROUTING_KEY]\n"
    "         [--force] [--limit N] [--canary N [--canary-timeout D]] [--rate R]\n"
    "                                      republish to where each task was first sent,\n"
    "                                      attempts reset; removed from the DLQ once confirmed\n"
    "  delete (MESSAGE_ID... | --all | filters) [--yes]\n"
    "                                      remove, after asking (a terminal) unless --yes\n"
    "  export [filters] > FILE.jsonl       one JSON object per task, lossless\n"
    "  import [FILE.jsonl]                 publish an export's tasks into the DLQ (stdin\n"
    "                                      without FILE); any bad line: nothing is imported\n"
    "\n"
    "filters (all must match):\n"
    "  --type GLOB          task type, e.g. payment.refund or 'payment.*'\n"
    "  --saga-id ID         saga (correlation) ID\n"
    "  --error-class C      invalid, permanent, exhausted, poison (broker: the broker's own)\n"
    "  --since T, --until T failed at or after / before T: 2h, 30m, 7d (ago), 2026-11-24,\n"
    "                       2026-11-24T21:50 (local) or 2026-11-24T21:50:00Z\n"
    "  --grep TEXT          the reason contains TEXT (case-insensitive)\n"
    "\n"
    "  --json               one JSON object per line instead of columns\n"
    "\n"
    "--edit opens the body of the one MESSAGE_ID given in $EDITOR and refuses what is not a\n"
    "JSON object. --canary N replays N tasks, waits for their outcome (--canary-timeout, 2m),\n"
    "and releases the rest only if they were applied, at --rate R per second if given.\n"
    "A task done in the store (already applied) is replayed only with --force.\n";

enum {
    OPT_JSON = 256,
    OPT_SINCE,
    OPT_UNTIL,
    OPT_ALL,
    OPT_DRY_RUN,
    OPT_EDIT,
    OPT_TO,
    OPT_FORCE,
    OPT_CANARY,
    OPT_RATE,
    OPT_CANARY_TIMEOUT,
};

/* Which command takes which option. */
enum {
    CMD_LIST = 1 << 0,
    CMD_SHOW = 1 << 1,
    CMD_STATS = 1 << 2,
    CMD_REPLAY = 1 << 3,
    CMD_DELETE = 1 << 4,
    CMD_EXPORT = 1 << 5,
    CMD_IMPORT = 1 << 6,
};
#define CMD_FILTERS (CMD_LIST | CMD_STATS | CMD_REPLAY | CMD_DELETE | CMD_EXPORT)

static const struct {
    int opt;
    const char *name;
    unsigned cmds;
} opt_cmds[] = {
    {'t', "--type", CMD_FILTERS},          {'s', "--saga-id", CMD_FILTERS},
    {'e', "--error-class", CMD_FILTERS},   {OPT_SINCE, "--since", CMD_FILTERS},
    {OPT_UNTIL, "--until", CMD_FILTERS},   {'g', "--grep", CMD_FILTERS},
    {'n', "--limit", CMD_LIST | CMD_REPLAY},
    {OPT_ALL, "--all", CMD_REPLAY | CMD_DELETE},
    {OPT_DRY_RUN, "--dry-run", CMD_REPLAY}, {OPT_EDIT, "--edit", CMD_REPLAY},
    {OPT_TO, "--to", CMD_REPLAY},          {OPT_FORCE, "--force", CMD_REPLAY},
    {OPT_CANARY, "--canary", CMD_REPLAY},  {OPT_RATE, "--rate", CMD_REPLAY},
    {OPT_CANARY_TIMEOUT, "--canary-timeout", CMD_REPLAY},
    {'y', "--yes", CMD_DELETE},
};

/* ---- flags --------------------------------------------------------------- */

static const struct {
    const char *name;
    unsigned bit;
    int (*run)(cw_cli_dlq_cmd *c);
} commands[] = {
    {"list", CMD_LIST, cw_cli_dlq_list},       {"show", CMD_SHOW, cw_cli_dlq_show},
    {"stats", CMD_STATS, cw_cli_dlq_stats},    {"replay", CMD_REPLAY, cw_cli_dlq_replay},
    {"delete", CMD_DELETE, cw_cli_dlq_delete}, {"export", CMD_EXPORT, cw_cli_dlq_export},
    {"import", CMD_IMPORT, cw_cli_dlq_import},
};

static const char *opt_name(int opt)
{
    for (size_t i = 0; i < sizeof opt_cmds / sizeof *opt_cmds; i++) {
        if (opt_cmds[i].opt == opt)
            return opt_cmds[i].name;
    }
    return NULL;
}

static bool opt_allowed(int opt, unsigned bit)
{
    for (size_t i = 0; i < sizeof opt_cmds / sizeof *opt_cmds; i++) {
        if (opt_cmds[i].opt == opt)
            return (opt_cmds[i].cmds & bit) != 0;
    }
    return true; /* -c, --json, --help */
}

int cw_cmd_dlq(int argc, char **argv)
{
    if (argc < 2)
        return cw_cli_fail(CW_EXIT_USAGE, "dlq: no command given: list, show, stats, replay, "
                                          "delete, export or import (try 'compworker dlq help')");
    if (strcmp(argv[1], "--help") == 0 || strcmp(argv[1], "-h") == 0 ||
        strcmp(argv[1], "help") == 0) {
        fputs(dlq_usage, stdout);
        return CW_EXIT_OK;
    }
    cw_cli_dlq_cmd c = {.name = argv[1], .canary_timeout_ms = DEFAULT_CANARY_TIMEOUT_MS};
    int (*run)(cw_cli_dlq_cmd *) = NULL;
    for (size_t i = 0; i < sizeof commands / sizeof *commands; i++) {
        if (strcmp(commands[i].name, argv[1]) == 0) {
            run = commands[i].run;
            c.bit = commands[i].bit;
        }
    }
    if (!run)
        return cw_cli_fail(CW_EXIT_USAGE, "dlq: unknown command '%s' (try 'compworker dlq help')",
                           argv[1]);
    static const struct option opts[] = {
        {"config", required_argument, NULL, 'c'},
        {"json", no_argument, NULL, OPT_JSON},
        {"type", required_argument, NULL, 't'},
        {"saga-id", required_argument, NULL, 's'},
        {"error-class", required_argument, NULL, 'e'},
        {"since", required_argument, NULL, OPT_SINCE},
        {"until", required_argument, NULL, OPT_UNTIL},
        {"grep", required_argument, NULL, 'g'},
        {"limit", required_argument, NULL, 'n'},
        {"all", no_argument, NULL, OPT_ALL},
        {"dry-run", no_argument, NULL, OPT_DRY_RUN},
        {"edit", no_argument, NULL, OPT_EDIT},
        {"to", required_argument, NULL, OPT_TO},
        {"force", no_argument, NULL, OPT_FORCE},
        {"canary", required_argument, NULL, OPT_CANARY},
        {"rate", required_argument, NULL, OPT_RATE},
        {"canary-timeout", required_argument, NULL, OPT_CANARY_TIMEOUT},
        {"yes", no_argument, NULL, 'y'},
        {"help", no_argument, NULL, 'h'},
        {NULL, 0, NULL, 0}};
    const char *config = NULL;
    int64_t now = cw__now_ms();
    long long num;
    int o;
    optind = 1;
    opterr = 0;
    /* getopt_long on argv + 1: the command name is argv[0] there. */
    char what[32];
    snprintf(what, sizeof what, "dlq %s", c.name);
    while ((o = getopt_long(argc - 1, argv + 1, ":c:t:s:e:g:n:yh", opts, NULL)) != -1) {
        if (o != '?' && o != ':' && !opt_allowed(o, c.bit))
            return cw_cli_fail(CW_EXIT_USAGE, "dlq %s: %s does not apply to this command",
                               c.name, opt_name(o));
        switch (o) {
        case 'c': config = optarg; break;
        case OPT_JSON: c.json = true; break;
        case 't': c.filter.type = optarg; break;
        case 's': c.filter.saga_id = optarg; break;
        case 'e': c.filter.error_class = optarg; break;
        case 'g': c.filter.grep = optarg; break;
        case OPT_SINCE:
        case OPT_UNTIL: {
            int64_t t;
            if (!cw_dlq_parse_time(optarg, now, &t))
                return cw_cli_fail(CW_EXIT_USAGE,
                                   "dlq %s: %s '%s' is not a time (2h, 30m, 7d, 2026-11-24, "
                                   "2026-11-24T21:50, 2026-11-24T21:50:00Z)",
                                   c.name, o == OPT_SINCE ? "--since" : "--until", optarg);
            if (o == OPT_SINCE) {
                c.filter.has_since = true;
                c.filter.since_ms = t;
            } else {
                c.filter.has_until = true;
                c.filter.until_ms = t;
            }
            break;
        }
        case 'n':
            if (!cw__parse_int(optarg, 1, INT64_MAX, &num))
                return cw_cli_fail(CW_EXIT_USAGE, "dlq %s: --limit '%s' is not a positive number",
                                   c.name, optarg);
            c.limit = (uint64_t)num;
            break;
        case OPT_ALL: c.all = true; break;
        case OPT_DRY_RUN: c.dry_run = true; break;
        case OPT_EDIT: c.edit = true; break;
        case OPT_TO:
            if (!*optarg || strlen(optarg) > 255)
                return cw_cli_fail(CW_EXIT_USAGE, "dlq replay: --to needs a routing key of 1 to "
                                                  "255 bytes");
            c.to = optarg;
            break;
        case OPT_FORCE: c.force = true; break;
        case OPT_CANARY:
            if (!cw__parse_int(optarg, 1, 100000, &num))
                return cw_cli_fail(CW_EXIT_USAGE, "dlq replay: --canary '%s' is not a number of "
                                                  "tasks (1-100000)", optarg);
            c.canary = (unsigned)num;
            break;
        case OPT_RATE: {
            char *end;
            errno = 0;
            c.rate = strtod(optarg, &end);
            if (errno || *end || !(c.rate > 0) || !isfinite(c.rate))
                return cw_cli_fail(CW_EXIT_USAGE, "dlq replay: --rate '%s' is not a positive "
                                                  "number of tasks per second", optarg);
            break;
        }
        case OPT_CANARY_TIMEOUT:
            if (!cw__parse_duration_ms(optarg, &c.canary_timeout_ms) || c.canary_timeout_ms <= 0)
                return cw_cli_fail(CW_EXIT_USAGE, "dlq replay: --canary-timeout '%s' is not a "
                                                  "duration (30s, 5m)", optarg);
            break;
        case 'y': c.yes = true; break;
        case 'h': fputs(dlq_usage, stdout); return CW_EXIT_OK;
        default:
            return cw_cli_bad_option(what, o, argv + 1);
        }
    }
    c.args = argv + 1 + optind;
    c.n_args = argc - 1 - optind;
    if (!config)
        return cw_cli_fail(CW_EXIT_USAGE, "dlq %s: -c POOL.INI is required", c.name);

    /* Positional arguments are message IDs (a file for import). */
    if (c.bit != CMD_IMPORT) {
        if (c.n_args && !(c.bit & (CMD_SHOW | CMD_REPLAY | CMD_DELETE)))
            return cw_cli_fail(CW_EXIT_USAGE, "dlq %s: unexpected argument '%s'", c.name,
                               c.args[0]);
        for (int i = 0; i < c.n_args; i++) {
            if (!cw_cli_is_message_id(c.args[i]))
                return cw_cli_fail(CW_EXIT_USAGE,
                                   "dlq %s: argument %d is not a message ID (1 to %d printable "
                                   "ASCII characters)",
                                   c.name, i + 1, CW_MESSAGE_ID_MAX);
        }
        c.filter.ids = c.args;
        c.filter.n_ids = (size_t)c.n_args;
    }
    if (c.bit == CMD_SHOW && c.n_args == 0)
        return cw_cli_fail(CW_EXIT_USAGE, "dlq show: give one or more message IDs");
    if (c.bit & (CMD_REPLAY | CMD_DELETE)) {
        bool selects = cw_dlq_filter_active(&c.filter);
        if (!selects && !c.all)
            return cw_cli_fail(CW_EXIT_USAGE, "dlq %s: give message IDs, filters or --all",
                               c.name);
        if (selects && c.all)
            return cw_cli_fail(CW_EXIT_USAGE, "dlq %s: --all selects every task: give it alone, "
                                              "without message IDs or filters", c.name);
    }
    if (c.edit && (c.n_args != 1 || c.canary || c.dry_run))
        return cw_cli_fail(CW_EXIT_USAGE, "dlq replay: --edit takes exactly one MESSAGE_ID "
                                          "(and no --canary or --dry-run)");
    if (c.filter.has_since && c.filter.has_until && c.filter.since_ms >= c.filter.until_ms)
        return cw_cli_fail(CW_EXIT_USAGE, "dlq %s: --since is not before --until", c.name);

    cw_config *cfg = NULL;
    if (cw_config_load(&cfg, config))
        return cw_cli_fail(CW_EXIT_USAGE, "%s", cw_error_last());
    c.cfg = cfg;
    c.seen = c.n_args ? calloc((size_t)c.n_args, sizeof *c.seen) : NULL;
    if (c.n_args && !c.seen) {
        cw_config_free(cfg);
        return cw_cli_fail(CW_EXIT_FAILURE, "out of memory");
    }
    if (c.bit == CMD_IMPORT)
        for (int i = 0; i < c.n_args; i++)
            c.seen[i] = true;
    cw_cli_catch_signals();
    c.ctl = cw_cli_ctl(c.json);
    int code = run(&c);
    free(c.seen);
    cw_config_free(cfg);
    return code;
}
