/* compworker saga show|list: where a saga's compensation plan is. */
#include <json-c/json.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "dlq/deadletter.h" /* cw__iso8601 */
#include "dlq/dlq.h"        /* cw_dlq_parse_time */
#include "framework/clock.h"
#include "framework/config.h"
#include "framework/error.h"
#include "saga/saga_db.h"
#include "workers/cli.h"
#include "workers/opt.h"

#define LIST_MAX 10000

typedef struct saga_args {
    const char *config, *since;
    bool json, stuck, overdue;
} saga_args;

static const cw_opt_spec show_specs[] = {
    {CW_OPT_VALUE, "config", 'c', "POOL.INI", "the configuration file of a pool that runs plans",
     .offset = offsetof(saga_args, config), .flags = CW_OPT_REQUIRED},
    {CW_OPT_BOOL, "json", 'j', NULL, "one JSON object instead of text",
     .offset = offsetof(saga_args, json)},
    CW_OPT_HELP_SPEC,
    CW_OPT_END_SPEC,
};

static const cw_opt_cmd show_cmd = {
    .name = "saga show",
    .args = "SAGA_ID",
    .summary = "Shows a saga's compensation plan: its state (running, done, stuck, overdue), its "
               "steps in order with their state, attempts, times and last error, and its "
               "history (each stage, each step's failures and replays, who replayed what).",
    .about = "Exit code 0 when the store knows the saga, 1 when it does not.",
    .specs = show_specs,
};

static const cw_opt_spec list_specs[] = {
    {CW_OPT_VALUE, "config", 'c', "POOL.INI", "the configuration file of a pool that runs plans",
     .offset = offsetof(saga_args, config), .flags = CW_OPT_REQUIRED},
    {CW_OPT_BOOL, "stuck", 0, NULL, "only sagas halted by a dead-lettered step",
     .offset = offsetof(saga_args, stuck)},
    {CW_OPT_BOOL, "overdue", 0, NULL, "only sagas past their deadline and not done",
     .offset = offsetof(saga_args, overdue)},
    {CW_OPT_VALUE, "since", 0, "T", "only sagas started since T (2h, 7d, 2026-11-24T21:50)",
     .offset = offsetof(saga_args, since)},
    {CW_OPT_BOOL, "json", 'j', NULL, "one JSON object a line instead of a table",
     .offset = offsetof(saga_args, json)},
    CW_OPT_HELP_SPEC,
    CW_OPT_END_SPEC,
};

static const cw_opt_cmd list_cmd = {
    .name = "saga list",
    .summary = "Lists the sagas whose plans the store keeps, oldest first, with their state and "
               "the stage they are on.",
    .specs = list_specs,
};

static int64_t num(const char *s)
{
    return s ? strtoll(s, NULL, 10) : 0;
}

static void when(const char *ms, char out[CW_ISO8601_LEN])
{
    if (ms)
        cw__iso8601(num(ms), out);
    else
        snprintf(out, CW_ISO8601_LEN, "-");
}

/* The state a saga is in: done, stuck (a step dead-lettered), overdue,
 * running. */
static const char *saga_state(const char *state, long dead, const char *deadline, int64_t now)
{
    if (state && strcmp(state, "done") == 0)
        return "done";
    if (dead > 0)
        return "stuck";
    if (deadline && num(deadline) < now)
        return "overdue";
    return "running";
}

static const char *step_state(const cw_saga_rows *st, size_t i)
{
    const char *plan_state = cw_saga_rows_get(st, i, 3);
    const char *task_state = cw_saga_rows_get(st, i, 7);
    if (plan_state && strcmp(plan_state, "done") == 0)
        return "done";
    if (plan_state && strcmp(plan_state, "waiting") == 0)
        return "waiting";
    switch (task_state ? atoi(task_state) : 0) {
    case 1: return "running";
    case 2: return "done";
    case 3: return "dead";
    case 4: return "retrying";
    case 5: return "replayed";
    default: return "sent";
    }
}

static int open_store(const saga_args *a, const char *cmd, cw_config **cfg, cw_saga_db *d)
{
    *cfg = NULL;
    if (!a->config)
        return cw_cli_fail(CW_EXIT_USAGE, "%s: -c POOL.INI is required", cmd);
    if (cw_config_load(cfg, a->config))
        return cw_cli_fail(CW_EXIT_USAGE, "%s", cw_error_last());
    int rc = cw_saga_db_open(d, *cfg, true);
    if (rc)
        return cw_cli_fail(rc == CW_STATUS_INVALID_ARG || rc == CW_STATUS_CONFIG ? CW_EXIT_USAGE
                                                                                 : CW_EXIT_FAILURE,
                           "%s: %s", cmd, cw_error_last());
    return CW_EXIT_OK;
}

static int cmd_show(int argc, char **argv)
{
    saga_args a = {0};
    int first;
    int rc = cw_opt_parse(&show_cmd, NULL, argc, argv, &a, &first);
    if (rc != CW_OPT_PARSED)
        return rc;
    if (first != argc - 1)
        return cw_cli_fail(CW_EXIT_USAGE, "saga show: give one SAGA_ID");
    const char *saga = argv[first];
    cw_config *cfg;
    cw_saga_db d;
    int code = open_store(&a, "saga show", &cfg, &d);
    if (code) {
        cw_config_free(cfg);
        return code;
    }
    cw_saga_rows g = {0}, st = {0}, h = {0};
    const char *key[1] = {saga};
    if (cw_saga_db_run(&d, CW_SD_SHOW, 1, key, &g) ||
        cw_saga_db_run(&d, CW_SD_SHOW_STEPS, 1, key, &st) ||
        cw_saga_db_run(&d, CW_SD_SHOW_HISTORY, 1, key, &h)) {
        code = cw_cli_fail(CW_EXIT_FAILURE, "saga show: %s", cw_error_last());
        goto out;
    }
    if (g.n == 0) {
        code = cw_cli_fail(CW_EXIT_FAILURE, "saga show: the store knows no saga '%s'", saga);
        goto out;
    }
    int64_t now = cw__now_ms();
    long dead = 0;
    size_t first_dead = 0;
    for (size_t i = 0; i < st.n; i++) {
        if (strcmp(step_state(&st, i), "dead") == 0 && !dead++)
            first_dead = i;
    }
    const char *state = saga_state(cw_saga_rows_get(&g, 0, 1), dead, cw_saga_rows_get(&g, 0, 5),
                                   now);
    size_t stage = (size_t)num(cw_saga_rows_get(&g, 0, 2)) + 1;
    size_t stages = (size_t)num(cw_saga_rows_get(&g, 0, 3));
    char why[1024] = "";
    if (dead)
        snprintf(why, sizeof why, "stuck at step %lld.%lld of %zu stages: %s — %s",
                 (long long)num(cw_saga_rows_get(&st, first_dead, 0)) + 1,
                 (long long)num(cw_saga_rows_get(&st, first_dead, 1)) + 1, stages,
                 cw_saga_rows_get(&st, first_dead, 2),
                 cw_saga_rows_get(&st, first_dead, 10) ? cw_saga_rows_get(&st, first_dead, 10)
                                                       : "dead-lettered");
    char created[CW_ISO8601_LEN], updated[CW_ISO8601_LEN], deadline[CW_ISO8601_LEN],
        done_at[CW_ISO8601_LEN];
    when(cw_saga_rows_get(&g, 0, 7), created);
    when(cw_saga_rows_get(&g, 0, 8), updated);
    when(cw_saga_rows_get(&g, 0, 5), deadline);
    when(cw_saga_rows_get(&g, 0, 9), done_at);
    if (a.json) {
        json_object *o = json_object_new_object();
        json_object_object_add(o, "saga_id", json_object_new_string(saga));
        json_object_object_add(o, "plan_id", json_object_new_string(cw_saga_rows_get(&g, 0, 0)));
        json_object_object_add(o, "state", json_object_new_string(state));
        json_object_object_add(o, "stage", json_object_new_int64((int64_t)stage));
        json_object_object_add(o, "stages", json_object_new_int64((int64_t)stages));
        json_object_object_add(o, "created_at", json_object_new_string(created));
        json_object_object_add(o, "updated_at", json_object_new_string(updated));
        json_object_object_add(o, "deadline_at",
                               cw_saga_rows_get(&g, 0, 5) ? json_object_new_string(deadline)
                                                          : NULL);
        json_object_object_add(o, "done_at",
                               cw_saga_rows_get(&g, 0, 9) ? json_object_new_string(done_at) : NULL);
        if (why[0])
            json_object_object_add(o, "reason", json_object_new_string(why));
        json_object *steps = json_object_new_array();
        for (size_t i = 0; i < st.n; i++) {
            json_object *s = json_object_new_object();
            char pos[48];
            snprintf(pos, sizeof pos, "%lld.%lld", (long long)num(cw_saga_rows_get(&st, i, 0)) + 1,
                     (long long)num(cw_saga_rows_get(&st, i, 1)) + 1);
            json_object_object_add(s, "step", json_object_new_string(pos));
            json_object_object_add(s, "type", json_object_new_string(cw_saga_rows_get(&st, i, 2)));
            json_object_object_add(s, "message_id",
                                   json_object_new_string(cw_saga_rows_get(&st, i, 4)));
            json_object_object_add(s, "state", json_object_new_string(step_state(&st, i)));
            json_object_object_add(s, "attempts",
                                   json_object_new_int64(num(cw_saga_rows_get(&st, i, 8))));
            const char *err = cw_saga_rows_get(&st, i, 10);
            json_object_object_add(s, "last_error", err ? json_object_new_string(err) : NULL);
            char t1[CW_ISO8601_LEN], t2[CW_ISO8601_LEN];
            when(cw_saga_rows_get(&st, i, 5), t1);
            when(cw_saga_rows_get(&st, i, 6), t2);
            json_object_object_add(s, "sent_at",
                                   cw_saga_rows_get(&st, i, 5) ? json_object_new_string(t1) : NULL);
            json_object_object_add(s, "done_at",
                                   cw_saga_rows_get(&st, i, 6) ? json_object_new_string(t2) : NULL);
            json_object_array_add(steps, s);
        }
        json_object_object_add(o, "steps", steps);
        json_object *hist = json_object_new_array();
        for (size_t i = 0; i < h.n; i++) {
            json_object *e = json_object_new_object();
            char t[CW_ISO8601_LEN];
            when(cw_saga_rows_get(&h, i, 0), t);
            json_object_object_add(e, "at", json_object_new_string(t));
            json_object_object_add(e, "event", json_object_new_string(cw_saga_rows_get(&h, i, 1)));
            const char *det = cw_saga_rows_get(&h, i, 2);
            json_object_object_add(e, "detail", det ? json_object_new_string(det) : NULL);
            json_object_array_add(hist, e);
        }
        json_object_object_add(o, "history", hist);
        puts(json_object_to_json_string_ext(o, JSON_C_TO_STRING_PLAIN));
        json_object_put(o);
        goto out;
    }
    printf("saga %s: %s", saga, state);
    if (strcmp(state, "done") == 0)
        printf(" (%s)\n", done_at);
    else if (why[0])
        printf(": %s\n", why);
    else
        printf(" (stage %zu of %zu)\n", stage, stages);
    printf("  plan %s, started %s", cw_saga_rows_get(&g, 0, 0), created);
    if (cw_saga_rows_get(&g, 0, 5))
        printf(", deadline %s%s", deadline, cw_saga_rows_get(&g, 0, 6) ? " (alerted)" : "");
    printf("\n\n  %-6s %-24s %-9s %8s  %-24s %-24s %s\n", "STEP", "TYPE", "STATE", "ATTEMPTS",
           "SENT", "DONE", "LAST ERROR");
    for (size_t i = 0; i < st.n; i++) {
        char pos[48], t1[CW_ISO8601_LEN], t2[CW_ISO8601_LEN];
        snprintf(pos, sizeof pos, "%lld.%lld", (long long)num(cw_saga_rows_get(&st, i, 0)) + 1,
                 (long long)num(cw_saga_rows_get(&st, i, 1)) + 1);
        when(cw_saga_rows_get(&st, i, 5), t1);
        when(cw_saga_rows_get(&st, i, 6), t2);
        const char *err = cw_saga_rows_get(&st, i, 10);
        printf("  %-6s %-24s %-9s %8lld  %-24s %-24s %s\n", pos, cw_saga_rows_get(&st, i, 2),
               step_state(&st, i), (long long)num(cw_saga_rows_get(&st, i, 8)), t1, t2,
               err ? err : "");
    }
    printf("\n  history:\n");
    for (size_t i = 0; i < h.n; i++) {
        char t[CW_ISO8601_LEN];
        when(cw_saga_rows_get(&h, i, 0), t);
        const char *det = cw_saga_rows_get(&h, i, 2);
        printf("  %s  %-14s %s\n", t, cw_saga_rows_get(&h, i, 1), det ? det : "");
    }
out:
    cw_saga_rows_free(&g);
    cw_saga_rows_free(&st);
    cw_saga_rows_free(&h);
    cw_saga_db_close(&d);
    cw_config_free(cfg);
    return code;
}

static int cmd_list(int argc, char **argv)
{
    saga_args a = {0};
    int first;
    int rc = cw_opt_parse(&list_cmd, NULL, argc, argv, &a, &first);
    if (rc != CW_OPT_PARSED)
        return rc;
    if (first < argc)
        return cw_cli_fail(CW_EXIT_USAGE, "saga list: unexpected argument '%s'", argv[first]);
    int64_t now = cw__now_ms(), since = 0;
    if (a.since && !cw_dlq_parse_time(a.since, now, &since))
        return cw_cli_fail(CW_EXIT_USAGE,
                           "saga list: --since '%s' is not a time (2h, 30m, 7d, 2026-11-24, "
                           "2026-11-24T21:50, 2026-11-24T21:50:00Z)",
                           a.since);
    cw_config *cfg;
    cw_saga_db d;
    int code = open_store(&a, "saga list", &cfg, &d);
    if (code) {
        cw_config_free(cfg);
        return code;
    }
    char s[24], lim[24];
    snprintf(s, sizeof s, "%lld", (long long)since);
    snprintf(lim, sizeof lim, "%d", LIST_MAX);
    const char *v[2] = {s, lim};
    cw_saga_rows r = {0};
    if (cw_saga_db_run(&d, CW_SD_LIST, 2, v, &r)) {
        code = cw_cli_fail(CW_EXIT_FAILURE, "saga list: %s", cw_error_last());
        goto out;
    }
    if (!a.json)
        printf("%-36s %-8s %-9s %-24s %s\n", "SAGA", "STATE", "STAGE", "STARTED", "UPDATED");
    size_t shown = 0;
    for (size_t i = 0; i < r.n; i++) {
        const char *state = saga_state(cw_saga_rows_get(&r, i, 1),
                                       (long)num(cw_saga_rows_get(&r, i, 8)),
                                       cw_saga_rows_get(&r, i, 6), now);
        bool overdue = cw_saga_rows_get(&r, i, 6) && strcmp(state, "done") != 0 &&
                       num(cw_saga_rows_get(&r, i, 6)) < now;
        if ((a.stuck && strcmp(state, "stuck") != 0) || (a.overdue && !overdue))
            continue;
        char started[CW_ISO8601_LEN], updated[CW_ISO8601_LEN], stage[48];
        when(cw_saga_rows_get(&r, i, 4), started);
        when(cw_saga_rows_get(&r, i, 5), updated);
        snprintf(stage, sizeof stage, "%lld of %lld",
                 (long long)num(cw_saga_rows_get(&r, i, 2)) + 1,
                 (long long)num(cw_saga_rows_get(&r, i, 3)));
        if (a.json) {
            json_object *o = json_object_new_object();
            json_object_object_add(o, "saga_id",
                                   json_object_new_string(cw_saga_rows_get(&r, i, 0)));
            json_object_object_add(o, "state", json_object_new_string(state));
            json_object_object_add(o, "overdue", json_object_new_boolean(overdue));
            json_object_object_add(o, "stage", json_object_new_string(stage));
            json_object_object_add(o, "started_at", json_object_new_string(started));
            json_object_object_add(o, "updated_at", json_object_new_string(updated));
            puts(json_object_to_json_string_ext(o, JSON_C_TO_STRING_PLAIN));
            json_object_put(o);
        } else {
            printf("%-36s %-8s %-9s %-24s %s\n", cw_saga_rows_get(&r, i, 0), state, stage, started,
                   updated);
        }
        shown++;
    }
    if (!a.json)
        printf("%zu saga%s\n", shown, shown == 1 ? "" : "s");
out:
    cw_saga_rows_free(&r);
    cw_saga_db_close(&d);
    cw_config_free(cfg);
    return code;
}

int cw_cmd_saga(int argc, char **argv)
{
    if (argc > 1 && strcmp(argv[1], "show") == 0)
        return cmd_show(argc - 1, argv + 1);
    if (argc > 1 && strcmp(argv[1], "list") == 0)
        return cmd_list(argc - 1, argv + 1);
    if (argc > 1 && (strcmp(argv[1], "--help") == 0 || strcmp(argv[1], "-h") == 0)) {
        cw_opt_print_help(stdout, &show_cmd);
        putchar('\n');
        cw_opt_print_help(stdout, &list_cmd);
        return CW_EXIT_OK;
    }
    return cw_cli_fail(CW_EXIT_USAGE, "saga: give a command: show SAGA_ID, list (try 'compworker "
                                      "saga --help')");
}
