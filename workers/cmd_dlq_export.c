/* compworker dlq export: the DLQ's tasks as JSON lines on stdout, lossless. */
#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "framework/error.h"
#include "workers/cli.h"
#include "workers/dlq_cli.h"

typedef struct export_state {
    cw_cli_dlq_cmd *c;
    uint64_t n;
} export_state;

static int export_one(cw_dlq_msg *m, void *ud)
{
    export_state *es = ud;
    if (!cw_dlq_filter_match(&es->c->filter, m))
        return 0;
    char *line;
    size_t len;
    int rc = cw_dlq_export_line(&m->env, &line, &len);
    if (rc)
        return rc;
    bool ok = fwrite(line, 1, len, stdout) == len && putchar('\n') != EOF;
    free(line);
    if (!ok)
        return cw__error(CW_STATUS_IO, "writing the export: %s", strerror(errno));
    es->n++;
    return 0;
}

static int cmd_export(cw_cli_dlq_cmd *c)
{
    export_state es = {.c = c};
    uint64_t total = 0, missing = 0;
    int rc = cw_dlq_browse(c->cfg, NULL, "compworker dlq export", &c->ctl, export_one, &es, &total,
                           &missing);
    cw_cli_progress_done();
    if (rc == 0 && (fflush(stdout) != 0 || ferror(stdout)))
        rc = cw__error(CW_STATUS_IO, "writing the export: %s", strerror(errno));
    if (rc < 0)
        return cw_cli_dlq_fail(c, rc);
    fprintf(stderr, "compworker: exported %" PRIu64 " of the %" PRIu64 " tasks in %s\n", es.n,
            total, c->cfg->dlq);
    if (missing)
        fprintf(stderr,
                "compworker: %" PRIu64 " more were held by another consumer and not "
                "exported\n",
                missing);
    return CW_EXIT_OK;
}

static const cw_opt_spec export_specs[] = {
    {CW_OPT_INCLUDE, .include = cw_cli_dlq_common_specs},
    CW_OPT_HELP_SPEC,
    {CW_OPT_INCLUDE, .include = cw_cli_dlq_filter_specs},
    CW_OPT_END_SPEC,
};

const cw_cli_dlq_sub cw_cli_dlq_export = {
    .name = "export",
    .cmd = {.name = "dlq export",
            .args = "[FILTERS] > FILE.jsonl",
            .summary = "one JSON object per task, lossless",
            .specs = export_specs},
    .args = CW_CLI_DLQ_NO_ARGS,
    .run = cmd_export,
};
