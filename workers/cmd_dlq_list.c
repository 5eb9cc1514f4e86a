/* compworker dlq list: the DLQ's tasks, oldest first, read without consuming. */
#include <inttypes.h>
#include <stdio.h>

#include "framework/clock.h"
#include "workers/cli.h"
#include "workers/dlq_cli.h"

typedef struct list_state {
    cw_cli_dlq_cmd *c;
    uint64_t matched;
    int64_t now;
} list_state;

static int list_one(cw_dlq_msg *m, void *ud)
{
    list_state *ls = ud;
    cw_cli_dlq_cmd *c = ls->c;
    if (!cw_dlq_filter_match(&c->filter, m))
        return 0;
    if (c->limit && ls->matched >= c->limit)
        return 1; /* stop reading: the rest stays as it is */
    ls->matched++;
    if (c->json) {
        cw_cli_json_line(cw_cli_dlq_msg_json(m));
        return 0;
    }
    cw_cli_progress_done();
    if (ls->matched == 1)
        printf("%-*s  %-*s  %-*s  %-*s  %3s  %s\n", CW_CLI_W_ID, "MESSAGE ID", CW_CLI_W_TYPE,
               "TYPE", CW_CLI_W_SAGA, "SAGA ID", CW_CLI_W_CLASS, "CLASS", "ATT", "FAILED");
    char id[200], type[64], saga[64], cls[32], age[24], reason[400];
    /* The ID is printed whole, however long: it is what `show` and `replay` take. */
    cw_cli_fit(m->message_id[0] ? m->message_id : "(no message ID)", CW_MESSAGE_ID_MAX, false, id,
               sizeof id);
    cw_cli_fit(m->type[0] ? m->type : "-", CW_CLI_W_TYPE, true, type, sizeof type);
    cw_cli_fit(m->saga_id[0] ? m->saga_id : "-", CW_CLI_W_SAGA, true, saga, sizeof saga);
    cw_cli_fit(m->error_class[0] ? m->error_class : "-", CW_CLI_W_CLASS, true, cls, sizeof cls);
    cw_cli_age(m->failed_at_ms, ls->now, age, sizeof age);
    cw_cli_fit(m->error[0] ? m->error : "(no reason given)", CW_CLI_WIDTH - 4, false, reason,
               sizeof reason);
    printf("%-*s  %s  %s  %s  %3u  %s\n    %s\n", CW_CLI_W_ID, id, type, saga, cls, m->attempts,
           age, reason);
    return 0;
}

static int cmd_list(cw_cli_dlq_cmd *c)
{
    list_state ls = {.c = c, .now = cw__now_ms()};
    uint64_t total = 0, missing = 0;
    int rc = cw_dlq_browse(c->cfg, NULL, "compworker dlq list", &c->ctl, list_one, &ls, &total,
                           &missing);
    cw_cli_progress_done();
    if (rc < 0)
        return cw_cli_dlq_fail(c, rc);
    if (c->json)
        return CW_EXIT_OK;
    bool filtered = cw_dlq_filter_active(&c->filter);
    if (total == 0)
        printf("%s is empty.\n", c->cfg->dlq);
    else if (ls.matched == 0)
        printf("None of the %" PRIu64 " tasks in %s matches.\n", total, c->cfg->dlq);
    else if (rc == 1)
        printf("\nFirst %" PRIu64 " %s of the %" PRIu64 " tasks in %s (--limit), oldest first.\n",
               ls.matched, filtered ? "matching" : "tasks", total, c->cfg->dlq);
    else if (filtered)
        printf("\n%" PRIu64 " of the %" PRIu64 " tasks in %s match, oldest first.\n", ls.matched,
               total, c->cfg->dlq);
    else
        printf("\n%" PRIu64 " task%s in %s, oldest first.\n", total, total == 1 ? "" : "s",
               c->cfg->dlq);
    if (missing)
        printf("%" PRIu64 " more are held by another consumer of the queue and were not seen.\n",
               missing);
    return CW_EXIT_OK;
}

static const cw_opt_spec list_specs[] = {
    {CW_OPT_INCLUDE, .include = cw_cli_dlq_common_specs},
    {CW_OPT_INCLUDE, .include = cw_cli_dlq_limit_specs},
    CW_OPT_HELP_SPEC,
    {CW_OPT_INCLUDE, .include = cw_cli_dlq_filter_specs},
    CW_OPT_END_SPEC,
};

const cw_cli_dlq_sub cw_cli_dlq_list = {
    .name = "list",
    .cmd = {.name = "dlq list",
            .args = "[FILTERS]",
            .summary = "the DLQ's tasks, oldest first",
            .specs = list_specs},
    .args = CW_CLI_DLQ_NO_ARGS,
    .run = cmd_list,
};
