/* The command lines of compworker: options parsed and described from one
 * table per command (see opt.h), and the one error line of the executable. */
#include <getopt.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdio.h>
#include <string.h>

#include "workers/cli.h"
#include "workers/opt.h"

/* The help fits this many columns (ASCII), and the text of an option starts
 * at most at this one. */
#define HELP_WIDTH 80
#define MAX_TEXT_COL 30

/* Options of one command and of the siblings it knows of, at most. */
#define MAX_OPTS 64

/* Tables include tables this deep at most. */
#define MAX_DEPTH 8

/* getopt_long() returns an option without a letter as this plus its index. */
#define LONG_ONLY_VAL 256

int cw_cli_fail(int code, const char *fmt, ...)
{
    char msg[2048];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    fprintf(stderr, "compworker: %s\n", msg);
    return code;
}

/* ---- tables -------------------------------------------------------------- */

/* The options of tables, flattened, each once (by its long name). */
typedef struct opt_set {
    const cw_opt_spec *row[MAX_OPTS];
    size_t n;
    const char *bad; /* why the tables cannot be used, or NULL */
} opt_set;

static const cw_opt_spec *set_find(const opt_set *s, const char *name)
{
    for (size_t i = 0; i < s->n; i++) {
        if (strcmp(s->row[i]->name, name) == 0)
            return s->row[i];
    }
    return NULL;
}

static void set_push(opt_set *s, const cw_opt_spec *r)
{
    if (s->n == MAX_OPTS)
        s->bad = "more options than a table may have";
    else
        s->row[s->n++] = r;
}

/* Adds the options of `specs` that `s` does not hold yet. */
static void set_add(opt_set *s, const cw_opt_spec *specs, int depth)
{
    if (depth > MAX_DEPTH) {
        s->bad = "tables include each other in a loop";
        return;
    }
    for (const cw_opt_spec *r = specs; r->kind != CW_OPT_END && !s->bad; r++) {
        if (r->kind == CW_OPT_INCLUDE) {
            set_add(s, r->include, depth + 1);
            continue;
        }
        if (r->kind == CW_OPT_GROUP)
            continue;
        const cw_opt_spec *same = set_find(s, r->name);
        if (same) {
            if (same->kind != r->kind || same->alias != r->alias)
                s->bad = "an option is described twice, differently";
            continue;
        }
        for (size_t i = 0; r->alias && i < s->n; i++) {
            if (s->row[i]->alias == r->alias)
                s->bad = "two options have the same letter";
        }
        set_push(s, r);
    }
}

static int val_of(const opt_set *s, size_t i)
{
    return s->row[i]->alias ? (unsigned char)s->row[i]->alias : LONG_ONLY_VAL + (int)i;
}

static const cw_opt_spec *by_val(const opt_set *s, int val)
{
    for (size_t i = 0; i < s->n; i++) {
        if (val_of(s, i) == val)
            return s->row[i];
    }
    return NULL;
}

/* ---- parsing ------------------------------------------------------------- */

/* The one line for an option getopt_long() refused ('?' or ':'), naming the
 * option as it was written; optind and optopt tell which. */
static int bad_option(const char *cmd, int c, char **argv, const opt_set *known)
{
    const char *arg = optind > 0 ? argv[optind - 1] : "";
    if (c == ':')
        return cw_cli_fail(CW_EXIT_USAGE, "%s: option '%s' needs a value", cmd, arg);
    /* optopt is the letter of an unknown short option, or the val of a long
     * option given a value it does not take ("--json=1"): its letter (the
     * line names it so, as it always did), or LONG_ONLY_VAL + i. */
    const cw_opt_spec *r = optopt ? by_val(known, optopt) : NULL;
    if (r && !r->alias)
        return cw_cli_fail(CW_EXIT_USAGE,
                           "%s: option '--%s' takes no value (try 'compworker %s "
                           "--help')",
                           cmd, r->name, cmd);
    if (optopt) /* a short option, maybe one of several in one argument ("-zq") */
        return cw_cli_fail(CW_EXIT_USAGE, "%s: unknown option '-%c' (try 'compworker %s --help')",
                           cmd, optopt, cmd);
    return cw_cli_fail(CW_EXIT_USAGE, "%s: unknown option '%.*s' (try 'compworker %s --help')", cmd,
                       (int)strcspn(arg, "="), arg, cmd);
}

/* Stores an option of the command: 0, or the exit code. */
static int store(const cw_opt_cmd *cmd, const cw_opt_spec *r, char *value, void *target)
{
    switch (r->kind) {
    case CW_OPT_BOOL: *(bool *)((char *)target + r->offset) = true; return 0;
    case CW_OPT_VALUE:
        if (r->parse)
            return r->parse(cmd->name, r, value, target);
        *(const char **)((char *)target + r->offset) = value;
        return 0;
    case CW_OPT_HELP: cw_opt_print_help(stdout, cmd); return CW_EXIT_OK;
    default: return 0;
    }
}

int cw_opt_parse(const cw_opt_cmd *cmd, const cw_opt_spec *const *known, int argc, char **argv,
                 void *target, int *first_arg)
{
    opt_set own = {0}, all = {0};
    set_add(&own, cmd->specs, 0);
    for (size_t i = 0; known && known[i]; i++)
        set_add(&all, known[i], 0);
    set_add(&all, cmd->specs, 0);
    if (own.bad || all.bad)
        return cw_cli_fail(CW_EXIT_FAILURE, "%s: %s (a bug in its table of options)", cmd->name,
                           own.bad ? own.bad : all.bad);

    /* ':' first: a missing value is ':', not '?'. */
    struct option longopts[MAX_OPTS + 1];
    char shorts[1 + 2 * MAX_OPTS + 1] = ":";
    size_t ns = 1;
    for (size_t i = 0; i < all.n; i++) {
        const cw_opt_spec *r = all.row[i];
        int has_arg = r->kind == CW_OPT_VALUE ? required_argument : no_argument;
        longopts[i] = (struct option){r->name, has_arg, NULL, val_of(&all, i)};
        if (r->alias) {
            shorts[ns++] = r->alias;
            if (has_arg == required_argument)
                shorts[ns++] = ':';
        }
    }
    longopts[all.n] = (struct option){NULL, 0, NULL, 0};
    shorts[ns] = '\0';

    /* optind 0, not 1: glibc starts afresh, where a parse before may have
     * stopped inside "-zq". */
    int c;
    optind = 0;
    opterr = 0;
    while ((c = getopt_long(argc, argv, shorts, longopts, NULL)) != -1) {
        const cw_opt_spec *r = c == '?' || c == ':' ? NULL : by_val(&all, c);
        if (!r)
            return bad_option(cmd->name, c, argv, &all);
        const cw_opt_spec *mine = set_find(&own, r->name);
        if (!mine)
            return cw_cli_fail(CW_EXIT_USAGE, "%s: --%s does not apply to this command", cmd->name,
                               r->name);
        int rc = store(cmd, mine, optarg, target);
        if (rc || mine->kind == CW_OPT_HELP)
            return rc;
    }
    *first_arg = optind;
    return CW_OPT_PARSED;
}

/* ---- help ---------------------------------------------------------------- */

/* Prints the `len` bytes of `text` (one line, no "\n") with the cursor at
 * column `at`, wrapped at spaces to HELP_WIDTH, the lines after the first
 * from column `col`, and a newline. */
static void wrap(FILE *f, const char *text, size_t len, size_t at, size_t col)
{
    const char *p = text, *end = text + len;
    size_t x = at;
    bool line_empty = true;
    while (p < end) {
        while (p < end && *p == ' ')
            p++;
        const char *word = p;
        while (p < end && *p != ' ')
            p++;
        size_t n = (size_t)(p - word);
        if (n == 0)
            break;
        if (!line_empty && x + 1 + n > HELP_WIDTH) {
            fprintf(f, "\n%*s", (int)col, "");
            x = col;
            line_empty = true;
        }
        if (!line_empty) {
            fputc(' ', f);
            x++;
        }
        fwrite(word, 1, n, f);
        x += n;
        line_empty = false;
    }
    fputc('\n', f);
}

/* Prints text of lines ("\n" between), each wrapped. */
static void print_text(FILE *f, const char *text)
{
    for (const char *p = text; *p;) {
        size_t n = strcspn(p, "\n");
        wrap(f, p, n, 0, 0);
        p += n;
        if (*p == '\n')
            p++;
    }
}

void cw_opt_print_item(FILE *f, size_t col, const char *term, const char *text)
{
    size_t x = 2 + strlen(term);
    fprintf(f, "  %s", term);
    if (x + 2 > col) { /* no room for the text beside the term */
        fputc('\n', f);
        x = 0;
    }
    fprintf(f, "%*s", (int)(col - x), "");
    wrap(f, text ? text : "", text ? strlen(text) : 0, col, col);
}

/* "-c, --config POOL.INI", "    --json". */
static void term_of(const cw_opt_spec *r, char *out, size_t cap)
{
    bool value = r->kind == CW_OPT_VALUE && r->value_name;
    if (r->alias)
        snprintf(out, cap, "-%c, --%s%s%s", r->alias, r->name, value ? " " : "",
                 value ? r->value_name : "");
    else
        snprintf(out, cap, "    --%s%s%s", r->name, value ? " " : "", value ? r->value_name : "");
}

/* The column of the text of options: beside the longest term that fits. */
static size_t text_col(const opt_set *s)
{
    size_t col = 0;
    for (size_t i = 0; i < s->n; i++) {
        char term[128];
        term_of(s->row[i], term, sizeof term);
        size_t need = 2 + strlen(term) + 2;
        if (need > col && need <= MAX_TEXT_COL)
            col = need;
    }
    return col ? col : MAX_TEXT_COL;
}

typedef struct printer {
    FILE *f;
    size_t col;
    bool headings;
    opt_set done; /* the options printed */
} printer;

static void print_rows(printer *pr, const cw_opt_spec *specs, int depth)
{
    for (const cw_opt_spec *r = specs; depth <= MAX_DEPTH && r->kind != CW_OPT_END; r++) {
        if (r->kind == CW_OPT_INCLUDE) {
            print_rows(pr, r->include, depth + 1);
        } else if (r->kind == CW_OPT_GROUP) {
            if (pr->headings)
                fprintf(pr->f, "\n%s\n", r->help);
        } else if (!set_find(&pr->done, r->name)) {
            char term[128];
            term_of(r, term, sizeof term);
            cw_opt_print_item(pr->f, pr->col, term, r->help);
            set_push(&pr->done, r);
        }
    }
}

void cw_opt_print_help(FILE *f, const cw_opt_cmd *cmd)
{
    opt_set own = {0};
    set_add(&own, cmd->specs, 0);
    /* The usage line; the arguments on a line of their own when they do
     * not fit, under the options. */
    int x = fprintf(f, "usage: compworker %s", cmd->name);
    int indent = x + 1;
    bool optional = false;
    for (size_t i = 0; i < own.n; i++) {
        const cw_opt_spec *r = own.row[i];
        const char *value = r->kind == CW_OPT_VALUE && r->value_name ? r->value_name : NULL;
        if (!(r->flags & CW_OPT_REQUIRED))
            optional = optional || r->kind != CW_OPT_HELP;
        else if (r->alias)
            x += fprintf(f, " -%c%s%s", r->alias, value ? " " : "", value ? value : "");
        else
            x += fprintf(f, " --%s%s%s", r->name, value ? " " : "", value ? value : "");
    }
    if (optional)
        x += fprintf(f, " [options]");
    if (cmd->args && x + 1 + (int)strlen(cmd->args) > HELP_WIDTH)
        fprintf(f, "\n%*s%s", indent, "", cmd->args);
    else if (cmd->args)
        fprintf(f, " %s", cmd->args);
    fputc('\n', f);
    if (cmd->summary) {
        fputc('\n', f);
        print_text(f, cmd->summary);
    }
    fputs("\noptions:\n", f);
    printer pr = {.f = f, .col = text_col(&own), .headings = true};
    print_rows(&pr, cmd->specs, 0);
    if (cmd->about) {
        fputc('\n', f);
        print_text(f, cmd->about);
    }
}

void cw_opt_print_options(FILE *f, const cw_opt_spec *const *tables)
{
    opt_set all = {0};
    for (size_t i = 0; tables[i]; i++)
        set_add(&all, tables[i], 0);
    printer pr = {.f = f, .col = text_col(&all)};
    for (size_t i = 0; tables[i]; i++)
        print_rows(&pr, tables[i], 0);
}
