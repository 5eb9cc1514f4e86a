/* compworker dlq delete: removes tasks from the DLQ, after asking. */
#include <inttypes.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

#include <json.h>

#include "workers/cli.h"
#include "workers/dlq_cli.h"

static bool confirm_delete(const cw_dlq_groups *gs, uint64_t n, void *ud)
{
    cw_cli_dlq_cmd *c = ud;
    cw_cli_progress_done();
    if (c->yes)
        return true;
    fprintf(stderr, "About to delete %" PRIu64 " task%s from %s:\n", n, n == 1 ? "" : "s",
            c->cfg->dlq);
    fflush(stderr);
    fflush(stdout);
    int saved = dup(STDOUT_FILENO);
    dup2(STDERR_FILENO, STDOUT_FILENO); /* the table goes where the question goes */
    cw_cli_dlq_print_groups(gs, "  ", false);
    fflush(stdout);
    if (saved >= 0) {
        dup2(saved, STDOUT_FILENO);
        close(saved);
    }
    fprintf(stderr, "Delete them for good? Type 'yes' to delete: ");
    fflush(stderr);
    char answer[32];
    if (!fgets(answer, sizeof answer, stdin))
        return false;
    answer[strcspn(answer, "\r\n")] = '\0';
    return strcmp(answer, "yes") == 0 || strcmp(answer, "y") == 0;
}

static int cmd_delete(cw_cli_dlq_cmd *c)
{
    if (!c->yes && !isatty(STDIN_FILENO))
        return cw_cli_fail(CW_EXIT_USAGE,
                           "dlq delete: no terminal to ask for confirmation: add --yes to "
                           "delete without asking");
    uint64_t deleted = 0, total = 0;
    int rc = cw_dlq_delete(c->cfg, &c->filter, &c->ctl, confirm_delete, c, &deleted, &total);
    cw_cli_progress_done();
    if (rc < 0) {
        if (deleted)
            fprintf(stderr, "compworker: dlq delete: %" PRIu64 " deleted before the error\n",
                    deleted);
        return cw_cli_dlq_fail(c, rc);
    }
    if (c->json) {
        json_object *s = json_object_new_object();
        json_object_object_add(s, "dlq", json_object_new_string(c->cfg->dlq));
        json_object_object_add(s, "total", json_object_new_int64((int64_t)total));
        json_object_object_add(s, "deleted", json_object_new_int64((int64_t)deleted));
        cw_cli_json_line(s);
    } else if (deleted) {
        printf("Deleted %" PRIu64 " task%s from %s (%" PRIu64 " left).\n", deleted,
               deleted == 1 ? "" : "s", c->cfg->dlq, total - deleted);
    } else {
        printf("Deleted nothing from %s.\n", c->cfg->dlq);
    }
    return CW_EXIT_OK;
}

static const cw_opt_spec delete_specs[] = {
    {CW_OPT_INCLUDE, .include = cw_cli_dlq_common_specs},
    {CW_OPT_INCLUDE, .include = cw_cli_dlq_all_specs},
    {CW_OPT_BOOL, "yes", 'y', NULL, "delete without asking",
     .offset = offsetof(cw_cli_dlq_cmd, yes)},
    CW_OPT_HELP_SPEC,
    {CW_OPT_INCLUDE, .include = cw_cli_dlq_filter_specs},
    CW_OPT_END_SPEC,
};

const cw_cli_dlq_sub cw_cli_dlq_delete = {
    .name = "delete",
    .cmd = {.name = "dlq delete",
            .args = "(MESSAGE_ID... | --all | FILTERS)",
            .summary = "remove, after asking (a terminal) unless --yes",
            .specs = delete_specs},
    .args = CW_CLI_DLQ_IDS,
    .check = cw_cli_dlq_check_selection,
    .run = cmd_delete,
};
