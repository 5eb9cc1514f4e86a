/* compworker dlq stats: the DLQ's tasks counted by type and error class. */
#include <inttypes.h>
#include <stdio.h>

#include "workers/cli.h"
#include "workers/dlq_cli.h"

typedef struct stats_state {
    cw_cli_dlq_cmd *c;
    cw_dlq_groups gs;
    uint64_t matched;
} stats_state;

static int stats_one(cw_dlq_msg *m, void *ud)
{
    stats_state *st = ud;
    if (!cw_dlq_filter_match(&st->c->filter, m))
        return 0;
    st->matched++;
    return cw_dlq_groups_add(&st->gs, m);
}

static int cmd_stats(cw_cli_dlq_cmd *c)
{
    stats_state st = {.c = c};
    uint64_t total = 0, missing = 0;
    int rc = cw_dlq_browse(c->cfg, NULL, "compworker dlq stats", &c->ctl, stats_one, &st, &total,
                           &missing);
    cw_cli_progress_done();
    if (rc < 0) {
        cw_dlq_groups_free(&st.gs);
        return cw_cli_dlq_fail(c, rc);
    }
    cw_dlq_groups_sort(&st.gs);
    if (c->json) {
        for (size_t i = 0; i < st.gs.n; i++)
            cw_cli_json_line(cw_cli_dlq_group_json(&st.gs.g[i]));
    } else if (total == 0) {
        printf("%s is empty.\n", c->cfg->dlq);
    } else if (st.matched == 0) {
        printf("None of the %" PRIu64 " tasks in %s matches.\n", total, c->cfg->dlq);
    } else {
        cw_cli_dlq_print_groups(&st.gs, "", true);
        printf("\n%" PRIu64 " task%s in %zu group%s", st.matched, st.matched == 1 ? "" : "s",
               st.gs.n, st.gs.n == 1 ? "" : "s");
        if (st.matched != total)
            printf(" (of %" PRIu64 " in %s)", total, c->cfg->dlq);
        else
            printf(" in %s", c->cfg->dlq);
        printf(".\n");
        if (missing)
            printf("%" PRIu64 " more are held by another consumer of the queue and were not "
                   "seen.\n",
                   missing);
    }
    cw_dlq_groups_free(&st.gs);
    return CW_EXIT_OK;
}

static const cw_opt_spec stats_specs[] = {
    {CW_OPT_INCLUDE, .include = cw_cli_dlq_common_specs},
    CW_OPT_HELP_SPEC,
    {CW_OPT_INCLUDE, .include = cw_cli_dlq_filter_specs},
    CW_OPT_END_SPEC,
};

const cw_cli_dlq_sub cw_cli_dlq_stats = {
    .name = "stats",
    .cmd = {.name = "dlq stats",
            .args = "[FILTERS]",
            .summary = "counts by type and error class, oldest and newest",
            .specs = stats_specs},
    .args = CW_CLI_DLQ_NO_ARGS,
    .run = cmd_stats,
};
