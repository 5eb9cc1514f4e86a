/* compworker dlq import: publishes the tasks of an export into the DLQ, all
 * or nothing, each confirmed. */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <json.h>

#include "dlq/dlq.h"
#include "framework/broker.h"
#include "framework/clock.h"
#include "framework/error.h"
#include "framework/registry.h"
#include "workers/cli.h"
#include "workers/dlq_cli.h"

#define IMPORT_BATCH 256
#define MAX_BAD_LINES_SHOWN 20

typedef struct lines {
    char *text;
    size_t len;
    size_t *start;  /* offsets of the non-empty lines */
    size_t *length; /* their lengths: a NUL inside a line is the import's to refuse */
    size_t *number; /* their line numbers */
    size_t n;
} lines;

static int read_lines(FILE *f, lines *ls)
{
    memset(ls, 0, sizeof *ls);
    size_t cap = 1 << 16;
    ls->text = malloc(cap);
    if (!ls->text)
        return cw__error(CW_STATUS_NOMEM, "out of memory");
    for (;;) {
        if (ls->len + 1 >= cap) {
            char *nt = realloc(ls->text, cap * 2);
            if (!nt)
                return cw__error(CW_STATUS_NOMEM, "out of memory reading the import");
            ls->text = nt;
            cap *= 2;
        }
        size_t got = fread(ls->text + ls->len, 1, cap - ls->len - 1, f);
        ls->len += got;
        if (got == 0)
            break;
    }
    if (ferror(f))
        return cw__error(CW_STATUS_IO, "reading the import: %s", strerror(errno));
    ls->text[ls->len] = '\0';
    size_t n_cap = 0, lineno = 0;
    for (size_t at = 0; at < ls->len;) {
        char *nl = memchr(ls->text + at, '\n', ls->len - at);
        size_t end = nl ? (size_t)(nl - ls->text) : ls->len;
        lineno++;
        ls->text[end] = '\0';
        if (strspn(ls->text + at, " \t\r") != end - at) {
            if (ls->n == n_cap) {
                n_cap = n_cap ? n_cap * 2 : 1024;
                size_t *ns = realloc(ls->start, n_cap * sizeof *ns);
                if (ns)
                    ls->start = ns;
                size_t *nl2 = ns ? realloc(ls->length, n_cap * sizeof *nl2) : NULL;
                if (nl2)
                    ls->length = nl2;
                size_t *nn = nl2 ? realloc(ls->number, n_cap * sizeof *nn) : NULL;
                if (!nn)
                    return cw__error(CW_STATUS_NOMEM, "out of memory reading the import");
                ls->number = nn;
            }
            ls->start[ls->n] = at;
            ls->length[ls->n] = end - at;
            ls->number[ls->n] = lineno;
            ls->n++;
        }
        at = end + 1;
    }
    return 0;
}

static void lines_free(lines *ls)
{
    free(ls->text);
    free(ls->start);
    free(ls->length);
    free(ls->number);
}

/* Publishes the records from `from` on into the DLQ, at most IMPORT_BATCH
 * and each message ID once (returns are matched by ID), confirmed. *next
 * is where the next batch starts, *ok how many were confirmed from `from`
 * on; when one was not, its line is in *bad_line and a status returned. */
static int import_batch(cw_cli_dlq_cmd *c, cw_mover *mv, const lines *ls, size_t from, size_t *next,
                        size_t *ok, size_t *bad_line, char *why, size_t why_cap)
{
    size_t cap = ls->n - from < IMPORT_BATCH ? ls->n - from : IMPORT_BATCH;
    cw_dlq_record *recs = calloc(cap, sizeof *recs);
    if (!recs)
        return cw__error(CW_STATUS_NOMEM, "out of memory");
    int rc = 0;
    size_t n = 0;
    cw_mover_reset(mv);
    for (; n < cap && rc == 0; n++) {
        const char *line = ls->text + ls->start[from + n];
        if ((rc = cw_dlq_import_line(line, ls->length[from + n], &recs[n])))
            break;
        if (cw_mover_has(mv, recs[n].message_id))
            break; /* the next batch starts with it */
        rc = cw_mover_send(mv, CW_DLX_NAME, c->cfg->dlq, &recs[n].props, recs[n].body);
    }
    int wrc = mv->n ? cw_mover_wait(mv, CW_CONFIRM_TIMEOUT_MS) : 0;
    if (rc == 0)
        rc = wrc;
    size_t i = 0;
    while (i < mv->n && mv->slots[i].state == CW_MOVE_CONFIRMED)
        i++;
    *ok = i;
    *next = from + mv->n;
    if (rc || i < mv->n) {
        *bad_line = ls->number[from + i];
        if (i < mv->n && mv->slots[i].state == CW_MOVE_RETURNED)
            snprintf(why, why_cap, "unroutable: %s is not bound to %s by its name", c->cfg->dlq,
                     CW_DLX_NAME);
        else if (i < mv->n && mv->slots[i].state == CW_MOVE_NACKED)
            snprintf(why, why_cap, "the broker refused it (nack)");
        else
            snprintf(why, why_cap, "%s", rc ? cw_error_last() : "not confirmed");
        if (rc == 0)
            rc = CW_STATUS_NACKED;
    }
    for (size_t k = 0; k < cap; k++)
        cw_dlq_record_clear(&recs[k]);
    free(recs);
    return rc;
}

static int cmd_import(cw_cli_dlq_cmd *c)
{
    if (c->n_args > 1)
        return cw_cli_fail(CW_EXIT_USAGE, "dlq import: one file at most (or stdin)");
    const char *file = c->n_args ? c->args[0] : NULL;
    FILE *f = file && strcmp(file, "-") != 0 ? fopen(file, "rb") : stdin;
    if (!f)
        return cw_cli_fail(CW_EXIT_USAGE, "dlq import: %s: %s", file, strerror(errno));
    const char *name = file ? file : "stdin";
    lines ls;
    int rc = read_lines(f, &ls);
    if (f != stdin)
        fclose(f);
    if (rc) {
        lines_free(&ls);
        return cw_cli_fail(CW_EXIT_FAILURE, "dlq import: %s: %s", name, cw_error_last());
    }

    /* Every line is checked before anything is published: an import is all
     * or nothing, so that it can simply be run again once the file is fixed. */
    size_t bad = 0;
    for (size_t i = 0; i < ls.n; i++) {
        cw_dlq_record r;
        const char *line = ls.text + ls.start[i];
        if (cw_dlq_import_line(line, ls.length[i], &r)) {
            if (bad < MAX_BAD_LINES_SHOWN)
                fprintf(stderr, "compworker: dlq import: %s:%zu: %s\n", name, ls.number[i],
                        cw_error_last());
            bad++;
        }
        cw_dlq_record_clear(&r);
    }
    if (bad) {
        if (bad > MAX_BAD_LINES_SHOWN)
            fprintf(stderr, "compworker: dlq import: ... and %zu more bad lines\n",
                    bad - MAX_BAD_LINES_SHOWN);
        lines_free(&ls);
        return cw_cli_fail(CW_EXIT_USAGE, "dlq import: %zu bad line%s in %s: nothing was imported",
                           bad, bad == 1 ? "" : "s", name);
    }

    if (ls.n == 0) {
        lines_free(&ls);
        printf("Nothing to import: %s holds no task.\n", name);
        return CW_EXIT_OK;
    }
    amqp_connection_state_t conn = NULL;
    cw_registry *reg = NULL;
    cw_mover mv;
    bool mv_open = false;
    size_t imported = 0;
    int code = CW_EXIT_FAILURE;
    if ((rc = cw__dlq_connect(&conn, c->cfg, "compworker dlq import")))
        goto out;
    /* The DLQ and its binding exist once the pool's topology is declared
     * (without task bindings: no plugin is loaded here). */
    if ((rc = cw_registry_new(&reg)))
        goto out;
    amqp_channel_open(conn, 2);
    if ((rc = cw__broker_reply(amqp_get_rpc_reply(conn), "opening a channel")) ||
        (rc = cw__topology_declare(conn, 2, c->cfg, reg)))
        goto out;
    if ((rc = cw_mover_open(&mv, conn, 1)))
        goto out;
    mv_open = true;
    int64_t last = cw__mono_ms();
    for (size_t from = 0; from < ls.n && !cw_cli_stop;) {
        size_t next = from, ok = 0, bad_line = 0;
        char why[512] = "";
        rc = import_batch(c, &mv, &ls, from, &next, &ok, &bad_line, why, sizeof why);
        imported += ok;
        if (rc) {
            cw_cli_progress_done();
            fprintf(stderr, "compworker: dlq import: %s:%zu was not imported: %s\n", name, bad_line,
                    why);
            fprintf(stderr,
                    "compworker: dlq import: %zu imported (the lines before); import "
                    "the rest with: tail -n +%zu %s\n",
                    imported, bad_line, name);
            rc = 0;
            goto out;
        }
        from = next;
        if (c->ctl.progress && cw__mono_ms() - last >= 250) {
            last = cw__mono_ms();
            cw_dlq_progress p = {.what = "importing", .read = from, .total = ls.n, .done = from};
            c->ctl.progress(&p, c->ctl.progress_data);
        }
    }
    cw_cli_progress_done();
    if (cw_cli_stop) {
        fprintf(stderr,
                "compworker: dlq import: interrupted after %zu of %zu tasks; import the "
                "rest with: tail -n +%zu %s\n",
                imported, ls.n, imported < ls.n ? ls.number[imported] : ls.n + 1, name);
        goto out;
    }
    if (c->json) {
        json_object *s = json_object_new_object();
        json_object_object_add(s, "dlq", json_object_new_string(c->cfg->dlq));
        json_object_object_add(s, "imported", json_object_new_int64((int64_t)imported));
        cw_cli_json_line(s);
    } else {
        printf("Imported %zu task%s into %s.\n", imported, imported == 1 ? "" : "s", c->cfg->dlq);
    }
    code = CW_EXIT_OK;
out:
    if (rc)
        code = cw_cli_fail(CW_EXIT_FAILURE, "dlq import: %s (%zu imported)", cw_error_last(),
                           imported);
    if (mv_open)
        cw_mover_free(&mv);
    cw__broker_close(conn);
    cw_registry_free(reg);
    lines_free(&ls);
    return code;
}

static const cw_opt_spec import_specs[] = {
    {CW_OPT_INCLUDE, .include = cw_cli_dlq_common_specs},
    CW_OPT_HELP_SPEC,
    CW_OPT_END_SPEC,
};

const cw_cli_dlq_sub cw_cli_dlq_import = {
    .name = "import",
    .cmd = {.name = "dlq import",
            .args = "[FILE.jsonl]",
            .summary = "publish an export's tasks into the DLQ (stdin without FILE); any bad "
                       "line: nothing is imported",
            .specs = import_specs},
    .args = CW_CLI_DLQ_FILE,
    .run = cmd_import,
};
