/* compworker dlq replay: republishes tasks to where they were first sent,
 * attempts reset, and removes each from the DLQ once confirmed; --edit
 * changes a body on the way, --canary releases the rest only once the
 * first were applied. */
#include <errno.h>
#include <inttypes.h>
#include <math.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include <json.h>

#include "framework/error.h"
#include "framework/parse.h"
#include "workers/cli.h"
#include "workers/dlq_cli.h"

#define DEFAULT_CANARY_TIMEOUT_MS 120000

/* --edit: the body in $EDITOR, a JSON object back. */
typedef struct edit_state {
    const cw_config *cfg;
    bool edited;
} edit_state;

static int run_editor(const char *path)
{
    const char *ed = getenv("EDITOR");
    if (!ed || !*ed)
        ed = getenv("VISUAL");
    if (!ed || !*ed)
        ed = "vi";
    char *copy = strdup(ed);
    if (!copy)
        return cw__error(CW_STATUS_NOMEM, "out of memory");
    char *argv[34];
    int n = 0;
    for (char *save = NULL, *w = strtok_r(copy, " \t", &save); w && n < 32;
         w = strtok_r(NULL, " \t", &save))
        argv[n++] = w;
    argv[n++] = (char *)path;
    argv[n] = NULL;
    fflush(NULL);
    pid_t pid = fork();
    if (pid < 0) {
        free(copy);
        return cw__error(CW_STATUS_IO, "cannot start the editor: %s", strerror(errno));
    }
    if (pid == 0) {
        signal(SIGINT, SIG_DFL);
        signal(SIGTERM, SIG_DFL);
        execvp(argv[0], argv);
        fprintf(stderr, "compworker: cannot run the editor '%s': %s\n", argv[0], strerror(errno));
        _exit(127);
    }
    int status;
    while (waitpid(pid, &status, 0) < 0 && errno == EINTR)
        ;
    int rc = 0;
    if (!WIFEXITED(status) || WEXITSTATUS(status) != 0)
        rc = cw__error(CW_STATUS_IO, "the editor '%s' %s %d: the body was not changed", argv[0],
                       WIFEXITED(status) ? "exited with status" : "was killed by signal",
                       WIFEXITED(status) ? WEXITSTATUS(status) : WTERMSIG(status));
    free(copy);
    return rc;
}

static char *read_file(const char *path, size_t max, size_t *len)
{
    FILE *f = fopen(path, "rb");
    if (!f)
        return NULL;
    size_t cap = 4096, n = 0;
    char *buf = malloc(cap + 1);
    while (buf) {
        if (n == cap) {
            if (cap > max) {
                free(buf);
                buf = NULL;
                errno = EFBIG;
                break;
            }
            char *nb = realloc(buf, cap * 2 + 1);
            if (!nb) {
                free(buf);
                buf = NULL;
                break;
            }
            buf = nb;
            cap *= 2;
        }
        size_t got = fread(buf + n, 1, cap - n, f);
        n += got;
        if (got == 0)
            break;
    }
    fclose(f);
    if (buf) {
        buf[n] = '\0';
        *len = n;
    }
    return buf;
}

/* Line and column of byte offset `at` of text. */
static void line_col(const char *text, size_t at, unsigned *line, unsigned *col)
{
    *line = 1;
    *col = 1;
    for (size_t i = 0; i < at && text[i]; i++) {
        if (text[i] == '\n') {
            (*line)++;
            *col = 1;
        } else {
            (*col)++;
        }
    }
}

static int edit_body(const cw_dlq_msg *m, char **body, size_t *len, void *ud)
{
    edit_state *es = ud;
    *body = NULL;
    *len = 0;
    amqp_bytes_t b = m->env.message.body;
    const char *tmp = getenv("TMPDIR");
    char path[4096];
    snprintf(path, sizeof path, "%s/compworker-edit-XXXXXX.json", tmp && *tmp ? tmp : "/tmp");
    int fd = mkstemps(path, 5);
    if (fd < 0)
        return cw__error(CW_STATUS_IO, "cannot create a file to edit in: %s", strerror(errno));
    FILE *f = fdopen(fd, "w");
    if (!f) {
        close(fd);
        unlink(path);
        return cw__error(CW_STATUS_IO, "cannot write %s: %s", path, strerror(errno));
    }
    /* Pretty-printed when it is JSON, as it is otherwise. */
    json_object *o = NULL;
    json_tokener *tok = json_tokener_new();
    if (tok && b.len < (size_t)INT32_MAX) {
        json_tokener_set_flags(tok, JSON_TOKENER_STRICT);
        o = json_tokener_parse_ex(tok, b.bytes, (int)b.len);
    }
    json_tokener_free(tok);
    if (o)
        fprintf(f, "%s\n",
                json_object_to_json_string_ext(o, JSON_C_TO_STRING_PRETTY |
                                                      JSON_C_TO_STRING_SPACED |
                                                      JSON_C_TO_STRING_NOSLASHESCAPE));
    else if (b.len)
        fwrite(b.bytes, 1, b.len, f);
    json_object_put(o);
    if (fclose(f) != 0) {
        unlink(path);
        return cw__error(CW_STATUS_IO, "cannot write %s: %s", path, strerror(errno));
    }
    size_t before_len = 0;
    char *before = read_file(path, SIZE_MAX / 4, &before_len);
    cw_cli_progress_done();
    int rc = run_editor(path);
    size_t n = 0;
    char *text = rc ? NULL : read_file(path, es->cfg->max_body_size, &n);
    if (!rc && !text)
        rc = cw__error(CW_STATUS_IO, "cannot read back %s: %s", path,
                       errno == EFBIG ? "larger than [pool] max_body_size" : strerror(errno));
    unlink(path);
    if (rc) {
        free(before);
        return rc;
    }
    if (before && n == before_len && memcmp(text, before, n) == 0) {
        free(before);
        free(text);
        fprintf(stderr, "compworker: dlq replay: the body was not changed; replaying it as it "
                        "is\n");
        return 0;
    }
    free(before);
    tok = json_tokener_new();
    if (!tok) {
        free(text);
        return cw__error(CW_STATUS_NOMEM, "out of memory");
    }
    json_tokener_set_flags(tok, JSON_TOKENER_STRICT);
    o = json_tokener_parse_ex(tok, text, (int)n);
    enum json_tokener_error jerr = json_tokener_get_error(tok);
    size_t end = json_tokener_get_parse_end(tok);
    json_tokener_free(tok);
    unsigned line, col;
    if (!o) {
        line_col(text, end, &line, &col);
        rc = cw__error(CW_STATUS_INVALID_MESSAGE,
                       "the edited body is not valid JSON (%s at line %u, column %u): the task "
                       "stays in the DLQ",
                       jerr == json_tokener_continue ? "it ends too early"
                                                     : json_tokener_error_desc(jerr),
                       line, col);
    } else if (strspn(text + end, " \t\r\n") != n - end) {
        line_col(text, end, &line, &col);
        rc = cw__error(CW_STATUS_INVALID_MESSAGE,
                       "the edited body has text after the JSON value (line %u, column %u): "
                       "the task stays in the DLQ",
                       line, col);
    } else if (!json_object_is_type(o, json_type_object)) {
        rc = cw__error(CW_STATUS_INVALID_MESSAGE,
                       "the edited body is JSON but not an object: the task stays in the DLQ");
    }
    if (rc == 0) {
        size_t out_len;
        const char *s = json_object_to_json_string_length(
            o, JSON_C_TO_STRING_PLAIN | JSON_C_TO_STRING_NOSLASHESCAPE, &out_len);
        if (out_len > es->cfg->max_body_size)
            rc = cw__error(CW_STATUS_TOO_LARGE,
                           "the edited body (%zu bytes) is larger than [pool] max_body_size",
                           out_len);
        else if (!(*body = malloc(out_len + 1)))
            rc = cw__error(CW_STATUS_NOMEM, "out of memory");
        else {
            memcpy(*body, s, out_len + 1);
            *len = out_len;
            es->edited = true;
        }
    }
    json_object_put(o);
    free(text);
    return rc;
}

/* Lines about single tasks a human replay prints at most; --json has all. */
#define MAX_EVENT_LINES 20

typedef struct replay_print {
    cw_cli_dlq_cmd *c;
    bool print_replayed;
    unsigned printed;    /* lines about refused or failed tasks */
    uint64_t suppressed; /* ... and those not printed */
} replay_print;

static const char *event_name(cw_dlq_event_kind k)
{
    switch (k) {
    case CW_DLQ_EV_REPLAYED: return "replayed";
    case CW_DLQ_EV_REFUSED_DONE: return "refused";
    case CW_DLQ_EV_REFUSED_BUSY: return "busy";
    case CW_DLQ_EV_FAILED: return "failed";
    case CW_DLQ_EV_CANARY_OK: return "canary-ok";
    case CW_DLQ_EV_CANARY_FAILED: return "canary-failed";
    }
    return "?";
}

static void on_event(const cw_dlq_event *e, void *ud)
{
    replay_print *rp = ud;
    cw_cli_dlq_cmd *c = rp->c;
    const cw_dlq_msg *m = e->msg;
    cw_cli_dlq_mark_seen(c, m->message_id);
    if (c->json) {
        json_object *o = json_object_new_object();
        if (!o)
            return;
        json_object_object_add(o, "event", json_object_new_string(event_name(e->kind)));
        json_object_object_add(o, "message_id", cw_cli_jstr(m->message_id));
        json_object_object_add(o, "type", cw_cli_jstr(m->type));
        json_object_object_add(o, "saga_id", cw_cli_jstr(m->saga_id));
        if (e->exchange)
            json_object_object_add(o, "exchange", json_object_new_string(e->exchange));
        if (e->routing_key)
            json_object_object_add(o, "routing_key", json_object_new_string(e->routing_key));
        json_object_object_add(o, "detail", cw_cli_jstr(e->detail));
        cw_cli_json_line(o);
        return;
    }
    if (e->kind == CW_DLQ_EV_REPLAYED && !rp->print_replayed && !e->detail[0])
        return;
    if (e->kind != CW_DLQ_EV_REPLAYED && e->kind != CW_DLQ_EV_CANARY_OK &&
        e->kind != CW_DLQ_EV_CANARY_FAILED && rp->printed++ >= MAX_EVENT_LINES) {
        rp->suppressed++;
        return;
    }
    cw_cli_progress_done();
    char id[200], type[64], saga[64];
    cw_cli_fit(m->message_id[0] ? m->message_id : "(no ID)", CW_MESSAGE_ID_MAX, false, id,
               sizeof id);
    cw_cli_fit(m->type[0] ? m->type : "-", CW_CLI_W_TYPE, false, type, sizeof type);
    cw_cli_fit(m->saga_id[0] ? m->saga_id : "-", CW_CLI_W_SAGA, false, saga, sizeof saga);
    FILE *out = e->kind == CW_DLQ_EV_REPLAYED || e->kind == CW_DLQ_EV_CANARY_OK ? stdout : stderr;
    fprintf(out, "%-13s %s  %s  %s: ", event_name(e->kind), id, type, saga);
    if (e->kind == CW_DLQ_EV_REPLAYED) {
        fprintf(out, "to %s / %s", e->exchange && e->exchange[0] ? e->exchange : "(default)",
                e->routing_key ? e->routing_key : "");
        if (e->detail[0])
            fprintf(out, " (%s)", e->detail);
    } else if (e->kind == CW_DLQ_EV_CANARY_OK) {
        fputs("applied", out);
    } else {
        cw_cli_put_safe(out, e->detail);
    }
    fputc('\n', out);
    fflush(out);
}

static int cmd_replay(cw_cli_dlq_cmd *c)
{
    cw_store *store = NULL;
    if (cw_cli_store_open(c->cfg, false, &store))
        return cw_cli_fail(cw_error_last()[0] && c->cfg->store_backend == CW_STORE_MEMORY
                               ? CW_EXIT_USAGE
                               : CW_EXIT_FAILURE,
                           "dlq replay: %s", cw_error_last());
    edit_state es = {.cfg = c->cfg};
    replay_print rp = {.c = c, .print_replayed = c->n_args > 0};
    cw_dlq_replay_opts o = CW_DLQ_REPLAY_OPTS_INIT;
    o.filter = &c->filter;
    o.dry_run = c->dry_run;
    o.force = c->force;
    o.to = c->to;
    o.limit = c->limit;
    o.canary = c->canary;
    o.canary_timeout_ms = c->canary_timeout_ms ? c->canary_timeout_ms : DEFAULT_CANARY_TIMEOUT_MS;
    o.rate = c->rate;
    o.edit = c->edit ? edit_body : NULL;
    o.edit_data = &es;
    o.event = on_event;
    o.event_data = &rp;
    o.ctl = &c->ctl;
    cw_dlq_replay_result res;
    int rc = cw_dlq_replay(c->cfg, store, &o, &res);
    cw_cli_progress_done();
    cw_store_free(store);
    if (rc < 0 && res.total == 0 && res.read == 0 && !res.stopped[0]) {
        cw_dlq_groups_free(&res.groups);
        return cw_cli_dlq_fail(c, rc);
    }

    if (rp.suppressed)
        fprintf(stderr, "... and %" PRIu64 " more (--json lists each one)\n", rp.suppressed);
    uint64_t kept_refused = res.refused_done + res.refused_busy;
    if (c->json) {
        json_object *s = json_object_new_object();
        json_object_object_add(s, "summary", json_object_new_boolean(1));
        json_object_object_add(s, "dry_run", json_object_new_boolean(c->dry_run));
        json_object_object_add(s, "dlq", json_object_new_string(c->cfg->dlq));
        json_object_object_add(s, "total", json_object_new_int64((int64_t)res.total));
        json_object_object_add(s, "read", json_object_new_int64((int64_t)res.read));
        json_object_object_add(s, "selected", json_object_new_int64((int64_t)res.selected));
        uint64_t would = 0;
        for (size_t i = 0; i < res.groups.n; i++)
            would += res.groups.g[i].count;
        json_object_object_add(s, c->dry_run ? "would_replay" : "replayed",
                               json_object_new_int64((int64_t)(c->dry_run ? would : res.replayed)));
        json_object_object_add(s, "duplicates", json_object_new_int64((int64_t)res.duplicates));
        json_object_object_add(s, "refused_done", json_object_new_int64((int64_t)res.refused_done));
        json_object_object_add(s, "refused_busy", json_object_new_int64((int64_t)res.refused_busy));
        json_object_object_add(s, "failed", json_object_new_int64((int64_t)res.failed));
        json_object_object_add(s, "left", json_object_new_int64((int64_t)res.left));
        json_object_object_add(s, "missing", json_object_new_int64((int64_t)res.missing));
        json_object_object_add(s, "canary_failed", json_object_new_boolean(res.canary_failed));
        json_object_object_add(s, "interrupted", json_object_new_boolean(res.interrupted));
        json_object_object_add(s, "stopped", cw_cli_jstr(res.stopped));
        json_object *g = json_object_new_array();
        for (size_t i = 0; i < res.groups.n; i++)
            json_object_array_add(g, cw_cli_dlq_group_json(&res.groups.g[i]));
        json_object_object_add(s, "groups", g);
        cw_cli_json_line(s);
    } else if (c->dry_run) {
        uint64_t would = 0;
        for (size_t i = 0; i < res.groups.n; i++)
            would += res.groups.g[i].count;
        printf("Dry run: would replay %" PRIu64 " of the %" PRIu64 " selected tasks (%" PRIu64
               " in %s)%s\n",
               would, res.selected, res.total, c->cfg->dlq, would ? ":" : ".");
        if (would)
            cw_cli_dlq_print_groups(&res.groups, "  ", false);
        if (res.refused_done)
            printf("%" PRIu64 " already applied (done in the store) would be refused; --force "
                   "replays them.\n",
                   res.refused_done);
        if (res.refused_busy)
            printf("%" PRIu64 " being handled right now would be skipped.\n", res.refused_busy);
        if (res.failed)
            printf("%" PRIu64 " could not be replayed (see above).\n", res.failed);
        if (res.left)
            printf("%" PRIu64 " over --limit would stay in the DLQ.\n", res.left);
        printf("Nothing was changed.\n");
    } else {
        printf("Replayed %" PRIu64 " of the %" PRIu64 " selected task%s (%" PRIu64 " in %s)%s",
               res.replayed, res.selected, res.selected == 1 ? "" : "s", res.total, c->cfg->dlq,
               es.edited ? ", its body edited" : "");
        printf("%s\n", res.replayed ? ":" : ".");
        if (res.replayed)
            cw_cli_dlq_print_groups(&res.groups, "  ", false);
        if (res.duplicates)
            printf("Of these, %" PRIu64 " %s a further copy of a task already republished by "
                   "this replay: removed, not published again.\n",
                   res.duplicates, res.duplicates == 1 ? "was" : "were");
        if (res.selected > res.replayed) {
            printf("Kept in %s:", c->cfg->dlq);
            const char *sep = " ";
            if (res.refused_done) {
                printf("%s%" PRIu64 " already applied (--force replays them, 'dlq delete' "
                       "removes them)",
                       sep, res.refused_done);
                sep = ", ";
            }
            if (res.refused_busy) {
                printf("%s%" PRIu64 " being handled right now", sep, res.refused_busy);
                sep = ", ";
            }
            if (res.failed) {
                printf("%s%" PRIu64 " that could not be replayed (see above)", sep, res.failed);
                sep = ", ";
            }
            if (res.left)
                printf("%s%" PRIu64 " not replayed (%s)", sep, res.left,
                       res.canary_failed                         ? "the canary failed"
                       : res.interrupted                         ? "interrupted"
                       : c->limit && res.left && !res.stopped[0] ? "over --limit"
                                                                 : "stopped");
            printf(".\n");
        }
    }
    if (res.missing)
        fprintf(stderr,
                "compworker: dlq replay: %" PRIu64 " tasks of the DLQ were held by another "
                "consumer and not seen\n",
                res.missing);
    bool unseen = cw_cli_dlq_report_unseen(c);
    int code = CW_EXIT_OK;
    if (res.stopped[0]) {
        fprintf(stderr, "compworker: dlq replay: stopped: ");
        cw_cli_put_safe(stderr, res.stopped);
        fputc('\n', stderr);
        if (res.left)
            fprintf(stderr,
                    "compworker: dlq replay: %" PRIu64 " selected task%s left untouched "
                    "in %s\n",
                    res.left, res.left == 1 ? "" : "s", c->cfg->dlq);
        code = CW_EXIT_FAILURE;
    }
    if (rc < 0 || unseen || (!c->dry_run && (kept_refused || res.failed)))
        code = CW_EXIT_FAILURE;
    cw_dlq_groups_free(&res.groups);
    return code;
}

/* ---- flags --------------------------------------------------------------- */

static int parse_to(const char *cmd, const cw_opt_spec *spec, const char *value, void *target)
{
    cw_cli_dlq_cmd *c = target;
    if (!*value || strlen(value) > 255)
        return cw_cli_fail(CW_EXIT_USAGE, "%s: --%s needs a routing key of 1 to 255 bytes", cmd,
                           spec->name);
    c->to = value;
    return 0;
}

static int parse_canary(const char *cmd, const cw_opt_spec *spec, const char *value, void *target)
{
    cw_cli_dlq_cmd *c = target;
    long long n;
    if (!cw__parse_int(value, 1, 100000, &n))
        return cw_cli_fail(CW_EXIT_USAGE, "%s: --%s '%s' is not a number of tasks (1-100000)", cmd,
                           spec->name, value);
    c->canary = (unsigned)n;
    return 0;
}

static int parse_rate(const char *cmd, const cw_opt_spec *spec, const char *value, void *target)
{
    cw_cli_dlq_cmd *c = target;
    char *end;
    errno = 0;
    c->rate = strtod(value, &end);
    if (errno || *end || !(c->rate > 0) || !isfinite(c->rate))
        return cw_cli_fail(CW_EXIT_USAGE,
                           "%s: --%s '%s' is not a positive number of tasks per "
                           "second",
                           cmd, spec->name, value);
    return 0;
}

static int parse_canary_timeout(const char *cmd, const cw_opt_spec *spec, const char *value,
                                void *target)
{
    cw_cli_dlq_cmd *c = target;
    if (!cw__parse_duration_ms(value, &c->canary_timeout_ms) || c->canary_timeout_ms <= 0)
        return cw_cli_fail(CW_EXIT_USAGE, "%s: --%s '%s' is not a duration (30s, 5m)", cmd,
                           spec->name, value);
    return 0;
}

static int check_replay(const cw_cli_dlq_cmd *c)
{
    int rc = cw_cli_dlq_check_selection(c);
    if (rc)
        return rc;
    if (c->edit && (c->n_args != 1 || c->canary || c->dry_run))
        return cw_cli_fail(CW_EXIT_USAGE, "dlq replay: --edit takes exactly one MESSAGE_ID "
                                          "(and no --canary or --dry-run)");
    return 0;
}

static const cw_opt_spec replay_specs[] = {
    {CW_OPT_INCLUDE, .include = cw_cli_dlq_common_specs},
    {CW_OPT_INCLUDE, .include = cw_cli_dlq_all_specs},
    {CW_OPT_BOOL, "dry-run", 0, NULL, "count what would be replayed, by group; change nothing",
     .offset = offsetof(cw_cli_dlq_cmd, dry_run)},
    {CW_OPT_BOOL, "edit", 0, NULL,
     "open the body of the one MESSAGE_ID given in $EDITOR first; what is not a JSON object "
     "is refused",
     .offset = offsetof(cw_cli_dlq_cmd, edit)},
    {CW_OPT_VALUE, "to", 0, "ROUTING_KEY",
     "publish with this routing key on the pool's exchange instead of where each task was "
     "first sent",
     .parse = parse_to},
    {CW_OPT_BOOL, "force", 0, NULL, "replay tasks done in the store (already applied) too",
     .offset = offsetof(cw_cli_dlq_cmd, force)},
    {CW_OPT_INCLUDE, .include = cw_cli_dlq_limit_specs},
    {CW_OPT_VALUE, "canary", 0, "N",
     "replay N tasks first, wait for their outcome, and release the rest only if they were "
     "applied",
     .parse = parse_canary},
    {CW_OPT_VALUE, "canary-timeout", 0, "D", "how long to wait for the canary (default 2m)",
     .parse = parse_canary_timeout},
    {CW_OPT_VALUE, "rate", 0, "R", "at most R tasks per second (after the canary)",
     .parse = parse_rate},
    CW_OPT_HELP_SPEC,
    {CW_OPT_INCLUDE, .include = cw_cli_dlq_filter_specs},
    CW_OPT_END_SPEC,
};

const cw_cli_dlq_sub cw_cli_dlq_replay = {
    .name = "replay",
    .cmd = {.name = "dlq replay",
            .args = "(MESSAGE_ID... | --all | FILTERS)",
            .summary = "republish to where each task was first sent, attempts reset; removed from "
                       "the DLQ once confirmed",
            .about = "Each task goes back to the exchange and routing key it was first "
                     "published to (or --to), its attempts reset and cw-replayed counted; it "
                     "leaves the DLQ only once the broker confirmed the copy.",
            .specs = replay_specs},
    .args = CW_CLI_DLQ_IDS,
    .check = check_replay,
    .run = cmd_replay,
};
