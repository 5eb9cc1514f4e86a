/* What `compworker dlq` and `compworker status` share (see dlq_cli.h). */
#include <errno.h>
#include <inttypes.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include <json.h>

#include "dlq/deadletter.h"
#include "framework/broker.h"
#include "framework/clock.h"
#include "framework/error.h"
#include "framework/owner.h"
#include "framework/parse.h"
#include "workers/cli.h"
#include "workers/dlq_cli.h"

volatile sig_atomic_t cw_cli_stop;

static void on_signal(int sig)
{
    cw_cli_stop = 1;
    /* A second signal is not caught: it ends the process, which is safe. */
    signal(sig, SIG_DFL);
}

void cw_cli_catch_signals(void)
{
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = on_signal;
    sigemptyset(&sa.sa_mask);
    sa.sa_flags = 0; /* no SA_RESTART: a wait returns to look at the flag */
    sigaction(SIGINT, &sa, NULL);
    sigaction(SIGTERM, &sa, NULL);
}

int cw_cli_store_open(const cw_config *cfg, bool must_exist, cw_store **out)
{
    *out = NULL;
    if (cfg->store_backend == CW_STORE_MEMORY)
        return cw__error(CW_STATUS_CONFIG,
                         "%s: [store] backend = memory: each worker keeps its records to "
                         "itself, so they cannot be read or reopened from here (use sqlite)",
                         cfg->path && cfg->path[0] ? cfg->path : "the configuration");
    struct stat sb;
    if (must_exist && cfg->store_backend == CW_STORE_SQLITE && stat(cfg->store_path, &sb) != 0)
        return cw__error(CW_STATUS_NOT_FOUND,
                         "the store %s does not exist (no worker of pool '%s' ran on this host)",
                         cfg->store_path, cfg->name);
    char owner[128];
    cw__owner_self(owner, sizeof owner);
    cw_store_opts so;
    cw_store_opts_of(cfg, owner, false, &so);
    return cw_store_open(out, &so);
}

/* ---- progress ------------------------------------------------------------ */

static struct {
    bool on;         /* stderr is a terminal and output is not quiet */
    bool shown;      /* a progress line is on the screen */
    int64_t started; /* first report (monotonic ms) */
} progress_state;

static void group_digits(uint64_t n, char *out, size_t cap)
{
    char raw[32];
    snprintf(raw, sizeof raw, "%" PRIu64, n);
    size_t len = strlen(raw), o = 0;
    for (size_t i = 0; i < len && o + 2 < cap; i++) {
        if (i && (len - i) % 3 == 0)
            out[o++] = ',';
        out[o++] = raw[i];
    }
    out[o] = '\0';
}

static void show_progress(const cw_dlq_progress *p, void *ud)
{
    (void)ud;
    if (!progress_state.on)
        return;
    int64_t now = cw__mono_ms();
    if (!progress_state.started)
        progress_state.started = now;
    if (now - progress_state.started < 1000)
        return; /* short operations show no progress */
    char read[32], total[32], done[32];
    group_digits(p->read, read, sizeof read);
    group_digits(p->total, total, sizeof total);
    group_digits(p->done, done, sizeof done);
    unsigned pct = p->total ? (unsigned)(p->read * 100 / p->total) : 100;
    fprintf(stderr, "\r\033[K%s %s of %s (%u%%)", p->what, read, total, pct);
    if (p->done)
        fprintf(stderr, ", %s done", done);
    fflush(stderr);
    progress_state.shown = true;
}

static void show_notice(const char *text, void *ud)
{
    (void)ud;
    cw_cli_progress_done();
    fprintf(stderr, "compworker: note: %s\n", text);
}

cw_dlq_ctl cw_cli_ctl(bool quiet)
{
    progress_state.on = !quiet && isatty(STDERR_FILENO);
    progress_state.shown = false;
    progress_state.started = 0;
    cw_dlq_ctl c = {.stop = &cw_cli_stop, .progress = show_progress, .notice = show_notice};
    return c;
}

void cw_cli_progress_done(void)
{
    if (progress_state.shown) {
        fputs("\r\033[K", stderr);
        fflush(stderr);
        progress_state.shown = false;
    }
}

/* ---- times --------------------------------------------------------------- */

void cw_cli_local_time(int64_t ms, char *out, size_t cap)
{
    if (!ms) {
        snprintf(out, cap, "-");
        return;
    }
    time_t t = (time_t)(ms / 1000);
    struct tm tm;
    localtime_r(&t, &tm);
    if (!strftime(out, cap, "%Y-%m-%d %H:%M:%S", &tm))
        snprintf(out, cap, "-");
}

void cw_cli_age(int64_t ms, int64_t now_ms, char *out, size_t cap)
{
    if (!ms) {
        snprintf(out, cap, "-");
        return;
    }
    int64_t d = now_ms - ms;
    bool ahead = d < 0;
    if (ahead)
        d = -d;
    d /= 1000;
    const char *unit = "s";
    if (d >= 2 * 86400) {
        d /= 86400;
        unit = "d";
    } else if (d >= 2 * 3600) {
        d /= 3600;
        unit = "h";
    } else if (d >= 120) {
        d /= 60;
        unit = "m";
    }
    if (ahead)
        snprintf(out, cap, "in %lld%s", (long long)d, unit);
    else
        snprintf(out, cap, "%lld%s ago", (long long)d, unit);
}

void cw_cli_when(int64_t ms, int64_t now_ms, char *out, size_t cap)
{
    if (!ms) {
        snprintf(out, cap, "-");
        return;
    }
    char t[40], a[24];
    cw_cli_local_time(ms, t, sizeof t);
    cw_cli_age(ms, now_ms, a, sizeof a);
    snprintf(out, cap, "%s (%s)", t, a);
}

/* ---- text ---------------------------------------------------------------- */

void cw_cli_fit(const char *s, size_t width, bool pad, char *out, size_t cap)
{
    size_t o = 0, cols = 0;
    if (!s)
        s = "";
    const unsigned char *p = (const unsigned char *)s;
    while (*p) {
        size_t len = 1, w = 1;
        char piece[8];
        if (*p < 0x20 || *p == 0x7f) {
            snprintf(piece, sizeof piece, "\\x%02x", *p);
            w = 4;
        } else {
            if (*p >= 0x80) {
                len = (*p & 0xE0) == 0xC0   ? 2
                      : (*p & 0xF0) == 0xE0 ? 3
                      : (*p & 0xF8) == 0xF0 ? 4
                                            : 1;
                for (size_t k = 1; k < len; k++) {
                    if ((p[k] & 0xC0) != 0x80) {
                        len = 1;
                        break;
                    }
                }
            }
            memcpy(piece, p, len);
            piece[len] = '\0';
        }
        size_t bytes = strlen(piece);
        /* It must fit the width, leaving a column for "…" unless it is the
         * last character, and the buffer, leaving room for "…" and the NUL. */
        bool last = p[len] == '\0';
        if (cols + w > width || (!last && cols + w == width) || o + bytes + 4 > cap) {
            if (cols < width && o + 4 <= cap) {
                memcpy(out + o, "\xe2\x80\xa6", 3);
                o += 3;
                cols++;
            }
            break;
        }
        memcpy(out + o, piece, bytes);
        o += bytes;
        cols += w;
        p += len;
    }
    while (pad && cols < width && o + 1 < cap) {
        out[o++] = ' ';
        cols++;
    }
    out[o] = '\0';
}

void cw_cli_put_safe(FILE *f, const char *s)
{
    for (const unsigned char *p = (const unsigned char *)(s ? s : ""); *p; p++) {
        if (*p < 0x20 || *p == 0x7f)
            fprintf(f, "\\x%02x", *p);
        else
            fputc(*p, f);
    }
}

/* ---- JSON ---------------------------------------------------------------- */

json_object *cw_cli_json_time(int64_t ms)
{
    if (!ms)
        return NULL;
    char iso[CW_ISO8601_LEN];
    cw__iso8601(ms, iso);
    return json_object_new_string(iso);
}

void cw_cli_json_line(json_object *o)
{
    if (!o)
        return;
    puts(
        json_object_to_json_string_ext(o, JSON_C_TO_STRING_PLAIN | JSON_C_TO_STRING_NOSLASHESCAPE));
    json_object_put(o);
}

json_object *cw_cli_jstr(const char *s)
{
    return s && *s ? json_object_new_string(s) : NULL;
}

static int history_json(const cw_attempt_record *a, void *ud)
{
    json_object *arr = ud, *o = json_object_new_object();
    if (!o)
        return CW_STATUS_NOMEM;
    json_object_object_add(o, "n", json_object_new_int64(a->n));
    json_object_object_add(o, "at", cw_cli_json_time(a->at_ms));
    json_object_object_add(o, "worker", cw_cli_jstr(a->worker));
    json_object_object_add(o, "outcome", cw_cli_jstr(a->outcome));
    json_object_object_add(o, "error_class", cw_cli_jstr(a->error_class));
    json_object_object_add(o, "reason", cw_cli_jstr(a->reason));
    json_object_array_add(arr, o);
    return 0;
}

json_object *cw_cli_record_json(cw_store *store, const cw_task_record *rec)
{
    json_object *o = json_object_new_object();
    if (!o)
        return NULL;
    json_object_object_add(o, "state", json_object_new_string(cw__state_name(rec->state)));
    json_object_object_add(o, "attempts", json_object_new_int64(rec->attempts));
    json_object_object_add(o, "deliveries", json_object_new_int64(rec->deliveries));
    json_object_object_add(o, "saga_id", cw_cli_jstr(rec->saga_id));
    json_object_object_add(o, "type", cw_cli_jstr(rec->type));
    json_object_object_add(o, "first_seen", cw_cli_json_time(rec->first_seen_ms));
    json_object_object_add(o, "last_seen", cw_cli_json_time(rec->last_seen_ms));
    json_object_object_add(o, "owner", cw_cli_jstr(rec->owner));
    if (rec->state == CW_STATE_IN_PROGRESS)
        json_object_object_add(o, "lease_until", cw_cli_json_time(rec->lease_until_ms));
    json_object_object_add(o, "error_class", cw_cli_jstr(rec->error_class));
    json_object_object_add(o, "last_error", cw_cli_jstr(rec->last_error));
    json_object *h = json_object_new_array();
    if (h)
        cw_store_history(store, rec->message_id, history_json, h);
    json_object_object_add(o, "history", h);
    return o;
}

typedef struct hist_print {
    const char *indent;
    int64_t now;
    int rows;
} hist_print;

/* Prints `text` from column `col` to CW_CLI_WIDTH, wrapped at spaces, the
 * lines after the first indented to `col`. */
static void print_wrapped(const char *text, size_t col)
{
    size_t width = col + 20 < CW_CLI_WIDTH ? CW_CLI_WIDTH - col : 20;
    const char *p = text;
    bool first = true;
    while (*p) {
        size_t n = strlen(p), cut = n;
        if (n > width) {
            cut = width;
            while (cut > 0 && p[cut] != ' ')
                cut--;
            if (cut == 0)
                cut = width;
            while (cut > 0 && ((unsigned char)p[cut] & 0xC0) == 0x80)
                cut--; /* not inside a character */
        }
        if (!first)
            printf("%*s", (int)col, "");
        fwrite(p, 1, cut, stdout);
        putchar('\n');
        first = false;
        p += cut;
        while (*p == ' ')
            p++;
    }
    if (first)
        putchar('\n');
}

static int history_row(const cw_attempt_record *a, void *ud)
{
    hist_print *hp = ud;
    char n[16], when[40], worker[64], outcome[40];
    if (strcmp(a->outcome, "replayed") == 0)
        snprintf(n, sizeof n, "-");
    else
        snprintf(n, sizeof n, "%u", a->n);
    time_t t = (time_t)(a->at_ms / 1000);
    struct tm tm;
    localtime_r(&t, &tm);
    if (!strftime(when, sizeof when, "%m-%d %H:%M:%S", &tm))
        snprintf(when, sizeof when, "-");
    cw_cli_fit(a->worker[0] ? a->worker : "-", 18, true, worker, sizeof worker);
    cw_cli_fit(a->outcome, 10, true, outcome, sizeof outcome);
    char text[1200];
    bool cls = a->error_class[0] && strcmp(a->error_class, a->outcome) != 0;
    snprintf(text, sizeof text, "%s%s%s", cls ? a->error_class : "",
             cls && a->reason[0] ? ": " : "", a->reason);
    /* No control bytes on the terminal. */
    for (char *c = text; *c; c++) {
        if ((unsigned char)*c < 0x20 || *c == 0x7f)
            *c = '?';
    }
    if (hp->rows == 0)
        printf("%s%3s  %-14s  %-18s  %-10s  %s\n", hp->indent, "#", "TIME", "WORKER", "OUTCOME",
               "REASON");
    printf("%s%3s  %-14s  %s  %s  ", hp->indent, n, when, worker, outcome);
    print_wrapped(text[0] ? text : "-", strlen(hp->indent) + 3 + 2 + 14 + 2 + 18 + 2 + 10 + 2);
    hp->rows++;
    return 0;
}

int cw_cli_print_history(cw_store *store, const char *message_id, const char *indent)
{
    hist_print hp = {.indent = indent, .now = cw__now_ms()};
    cw_store_history(store, message_id, history_row, &hp);
    return hp.rows;
}

/* ---- compworker dlq ------------------------------------------------------ */

json_object *cw_cli_dlq_msg_json(const cw_dlq_msg *m)
{
    json_object *o = json_object_new_object();
    if (!o)
        return NULL;
    json_object_object_add(o, "message_id", cw_cli_jstr(m->message_id));
    json_object_object_add(o, "type", cw_cli_jstr(m->type));
    json_object_object_add(o, "saga_id", cw_cli_jstr(m->saga_id));
    json_object_object_add(o, "error_class", cw_cli_jstr(m->error_class));
    json_object_object_add(o, "error", cw_cli_jstr(m->error));
    json_object_object_add(o, "attempts", json_object_new_int64(m->attempts));
    json_object_object_add(o, "replayed", json_object_new_int64(m->replayed));
    json_object_object_add(o, "failed_at", cw_cli_json_time(m->failed_at_ms));
    json_object_object_add(o, "queue", cw_cli_jstr(m->queue));
    json_object_object_add(o, "handler", cw_cli_jstr(m->handler));
    json_object_object_add(o, "worker", cw_cli_jstr(m->worker));
    json_object_object_add(o, "original_exchange",
                           m->has_orig ? json_object_new_string(m->orig_exchange) : NULL);
    json_object_object_add(o, "original_routing_key",
                           cw_cli_jstr(m->has_orig ? m->orig_routing_key : ""));
    json_object_object_add(o, "position", json_object_new_int64((int64_t)m->position));
    return o;
}

void cw_cli_dlq_mark_seen(cw_cli_dlq_cmd *c, const char *message_id)
{
    for (int i = 0; i < c->n_args; i++) {
        if (strcmp(c->args[i], message_id) == 0)
            c->seen[i] = true;
    }
}

bool cw_cli_dlq_report_unseen(const cw_cli_dlq_cmd *c)
{
    bool any = false;
    for (int i = 0; i < c->n_args; i++) {
        if (!c->seen[i]) {
            fprintf(stderr, "compworker: dlq %s: %s is not in %s\n", c->name, c->args[i],
                    c->cfg->dlq);
            any = true;
        }
    }
    return any;
}

int cw_cli_dlq_fail(const cw_cli_dlq_cmd *c, int rc)
{
    cw_cli_progress_done();
    if (rc == CW_STATUS_INTERRUPTED)
        return cw_cli_fail(CW_EXIT_FAILURE, "dlq %s: interrupted; nothing changed", c->name);
    return cw_cli_fail(CW_EXIT_FAILURE, "dlq %s: %s", c->name, cw_error_last());
}

/* "unknown payment pay-0043-x (1); unknown payment pay-0048-x (1)" */
static void group_reasons(const cw_dlq_group *g, char *out, size_t cap)
{
    size_t o = 0;
    out[0] = '\0';
    for (size_t i = 0; i < g->n_reasons && o < cap; i++) {
        const char *t = g->reasons[i].text[0] ? g->reasons[i].text : "(no reason)";
        if (g->n_reasons == 1 && !g->other_reasons)
            o += (size_t)snprintf(out + o, cap - o, "%s", t);
        else
            o += (size_t)snprintf(out + o, cap - o, "%s%s (%" PRIu64 ")", i ? "; " : "", t,
                                  g->reasons[i].count);
    }
    if (g->other_reasons && o < cap)
        snprintf(out + o, cap - o, "; %" PRIu64 " with other reasons", g->other_reasons);
}

void cw_cli_dlq_print_groups(const cw_dlq_groups *gs, const char *indent, bool times)
{
    int64_t now = cw__now_ms();
    if (times)
        printf("%s%-*s  %-*s  %7s  %-28s  %s\n", indent, CW_CLI_W_TYPE, "TYPE", CW_CLI_W_CLASS,
               "CLASS", "COUNT", "OLDEST", "NEWEST");
    else
        printf("%s%-*s  %-*s  %7s  %s\n", indent, CW_CLI_W_TYPE, "TYPE", CW_CLI_W_CLASS, "CLASS",
               "COUNT", "REASON");
    for (size_t i = 0; i < gs->n; i++) {
        const cw_dlq_group *g = &gs->g[i];
        char type[64], cls[32], oldest[48], newest[48], reason[200];
        cw_cli_fit(g->type[0] ? g->type : "-", CW_CLI_W_TYPE, true, type, sizeof type);
        cw_cli_fit(g->error_class[0] ? g->error_class : "-", CW_CLI_W_CLASS, true, cls, sizeof cls);
        char why[CW_DLQ_GROUP_REASONS * 600 + 64];
        group_reasons(g, why, sizeof why);
        if (times) {
            cw_cli_when(g->oldest_ms, now, oldest, sizeof oldest);
            cw_cli_when(g->newest_ms, now, newest, sizeof newest);
            printf("%s%s  %s  %7" PRIu64 "  %-28s  %s\n", indent, type, cls, g->count, oldest,
                   newest);
            cw_cli_fit(why, CW_CLI_WIDTH - 4 - strlen(indent), false, reason, sizeof reason);
            printf("%s    %s\n", indent, reason);
        } else {
            size_t used = strlen(indent) + CW_CLI_W_TYPE + 2 + CW_CLI_W_CLASS + 2 + 7 + 2;
            cw_cli_fit(why, CW_CLI_WIDTH - used, false, reason, sizeof reason);
            printf("%s%s  %s  %7" PRIu64 "  %s\n", indent, type, cls, g->count, reason);
        }
    }
}

json_object *cw_cli_dlq_group_json(const cw_dlq_group *g)
{
    json_object *o = json_object_new_object();
    if (!o)
        return NULL;
    json_object_object_add(o, "type", cw_cli_jstr(g->type));
    json_object_object_add(o, "error_class", cw_cli_jstr(g->error_class));
    json_object_object_add(o, "count", json_object_new_int64((int64_t)g->count));
    json_object_object_add(o, "oldest", cw_cli_json_time(g->oldest_ms));
    json_object_object_add(o, "newest", cw_cli_json_time(g->newest_ms));
    json_object *r = json_object_new_array();
    for (size_t i = 0; r && i < g->n_reasons; i++) {
        json_object *e = json_object_new_object();
        json_object_object_add(e, "reason", json_object_new_string(g->reasons[i].text));
        json_object_object_add(e, "count", json_object_new_int64((int64_t)g->reasons[i].count));
        json_object_array_add(r, e);
    }
    json_object_object_add(o, "reasons", r);
    json_object_object_add(o, "other_reasons", json_object_new_int64((int64_t)g->other_reasons));
    return o;
}

/* ---- compworker dlq: the options its commands share ---------------------- */

static int parse_time(const char *cmd, const cw_opt_spec *spec, const char *value,
                      const cw_cli_dlq_cmd *c, int64_t *out)
{
    if (cw_dlq_parse_time(value, c->now_ms, out))
        return 0;
    return cw_cli_fail(CW_EXIT_USAGE,
                       "%s: --%s '%s' is not a time (2h, 30m, 7d, 2026-11-24, 2026-11-24T21:50, "
                       "2026-11-24T21:50:00Z)",
                       cmd, spec->name, value);
}

static int parse_since(const char *cmd, const cw_opt_spec *spec, const char *value, void *target)
{
    cw_cli_dlq_cmd *c = target;
    int rc = parse_time(cmd, spec, value, c, &c->filter.since_ms);
    c->filter.has_since = rc == 0;
    return rc;
}

static int parse_until(const char *cmd, const cw_opt_spec *spec, const char *value, void *target)
{
    cw_cli_dlq_cmd *c = target;
    int rc = parse_time(cmd, spec, value, c, &c->filter.until_ms);
    c->filter.has_until = rc == 0;
    return rc;
}

static int parse_limit(const char *cmd, const cw_opt_spec *spec, const char *value, void *target)
{
    cw_cli_dlq_cmd *c = target;
    long long n;
    if (!cw__parse_int(value, 1, INT64_MAX, &n))
        return cw_cli_fail(CW_EXIT_USAGE, "%s: --%s '%s' is not a positive number", cmd, spec->name,
                           value);
    c->limit = (uint64_t)n;
    return 0;
}

const cw_opt_spec cw_cli_dlq_common_specs[] = {
    {CW_OPT_VALUE, "config", 'c', "POOL.INI", "the pool's configuration file",
     .offset = offsetof(cw_cli_dlq_cmd, config), .flags = CW_OPT_REQUIRED},
    {CW_OPT_BOOL, "json", 0, NULL, "one JSON object per line instead of columns",
     .offset = offsetof(cw_cli_dlq_cmd, json)},
    CW_OPT_END_SPEC,
};

const cw_opt_spec cw_cli_dlq_filter_specs[] = {
    {CW_OPT_GROUP, .help = "filters (all must match):"},
    {CW_OPT_VALUE, "type", 't', "GLOB", "task type, e.g. payment.refund or 'payment.*'",
     .offset = offsetof(cw_cli_dlq_cmd, filter.type)},
    {CW_OPT_VALUE, "saga-id", 's', "ID", "saga (correlation) ID",
     .offset = offsetof(cw_cli_dlq_cmd, filter.saga_id)},
    {CW_OPT_VALUE, "error-class", 'e', "C",
     "invalid, permanent, exhausted, poison (broker: the broker's own)",
     .offset = offsetof(cw_cli_dlq_cmd, filter.error_class)},
    {CW_OPT_VALUE, "since", 0, "T",
     "failed at or after T: 2h, 30m, 7d (ago), 2026-11-24, 2026-11-24T21:50 (local) or "
     "2026-11-24T21:50:00Z",
     .parse = parse_since},
    {CW_OPT_VALUE, "until", 0, "T", "failed before T (as for --since)", .parse = parse_until},
    {CW_OPT_VALUE, "grep", 'g', "TEXT", "the reason contains TEXT (case-insensitive)",
     .offset = offsetof(cw_cli_dlq_cmd, filter.grep)},
    CW_OPT_END_SPEC,
};

const cw_opt_spec cw_cli_dlq_limit_specs[] = {
    {CW_OPT_VALUE, "limit", 'n', "N", "at most N tasks, the oldest first", .parse = parse_limit},
    CW_OPT_END_SPEC,
};

const cw_opt_spec cw_cli_dlq_all_specs[] = {
    {CW_OPT_BOOL, "all", 0, NULL, "every task (alone: without message IDs or filters)",
     .offset = offsetof(cw_cli_dlq_cmd, all)},
    CW_OPT_END_SPEC,
};

int cw_cli_dlq_check_selection(const cw_cli_dlq_cmd *c)
{
    bool selects = cw_dlq_filter_active(&c->filter);
    if (!selects && !c->all)
        return cw_cli_fail(CW_EXIT_USAGE, "dlq %s: give message IDs, filters or --all", c->name);
    if (selects && c->all)
        return cw_cli_fail(CW_EXIT_USAGE,
                           "dlq %s: --all selects every task: give it alone, "
                           "without message IDs or filters",
                           c->name);
    return 0;
}
