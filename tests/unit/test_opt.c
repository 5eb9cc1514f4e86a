/* Unit tests for workers/opt.c: options parsed and described from one
 * table. The executable's sources are not in the library the unit tests
 * link, so the file is compiled in here. */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>

#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "workers/opt.c"

typedef struct args {
    const char *config;
    const char *level;
    long count;
    int count_calls;
    bool json, jsonl, dry_run, yes;
} args;

static int parse_count(const char *cmd, const cw_opt_spec *spec, const char *value, void *target)
{
    args *a = target;
    char *end;
    a->count_calls++;
    a->count = strtol(value, &end, 10);
    if (!*value || *end)
        return cw_cli_fail(CW_EXIT_USAGE, "%s: --%s '%s' is not a number", cmd, spec->name, value);
    return 0;
}

static const cw_opt_spec shared_specs[] = {
    {CW_OPT_GROUP, .help = "shared:"},
    {CW_OPT_BOOL, "dry-run", 0, NULL, "change nothing", .offset = offsetof(args, dry_run)},
    CW_OPT_END_SPEC,
};

static const cw_opt_spec test_specs[] = {
    {CW_OPT_VALUE, "config", 'c', "FILE", "the file to read", .offset = offsetof(args, config),
     .flags = CW_OPT_REQUIRED},
    {CW_OPT_VALUE, "level", 'l', "LEVEL",
     "how much to say: debug, info, warn or error, in "
     "increasing order of importance, the default being info",
     .offset = offsetof(args, level)},
    {CW_OPT_VALUE, "count", 0, "N", "how many", .parse = parse_count},
    {CW_OPT_BOOL, "json", 'j', NULL, "JSON", .offset = offsetof(args, json)},
    {CW_OPT_BOOL, "jsonl", 0, NULL, "JSON lines", .offset = offsetof(args, jsonl)},
    CW_OPT_HELP_SPEC,
    {CW_OPT_INCLUDE, .include = shared_specs},
    CW_OPT_END_SPEC,
};

static const cw_opt_cmd cmd = {
    .name = "test",
    .args = "ARG...",
    .summary = "tests the parser",
    .about = "One paragraph.\n\nAnother one.",
    .specs = test_specs,
};

/* A sibling of `cmd`, as the commands of `compworker dlq` are. */
static const cw_opt_spec sibling_specs[] = {
    {CW_OPT_BOOL, "yes", 'y', NULL, "do not ask", .offset = offsetof(args, yes)},
    {CW_OPT_INCLUDE, .include = shared_specs},
    CW_OPT_END_SPEC,
};

static const cw_opt_spec *const family[] = {test_specs, sibling_specs, NULL};

/* ---- running the parser -------------------------------------------------- */

typedef struct result {
    int rc;
    int first;
    args a;
    char *argv[16];
    int argc;
    char *out; /* what it printed on stdout */
    char *err; /* ... and on stderr */
} result;

static char *read_back(FILE *f)
{
    long n = ftell(f);
    assert_true(n >= 0);
    char *s = malloc((size_t)n + 1);
    assert_non_null(s);
    rewind(f);
    assert_int_equal(fread(s, 1, (size_t)n, f), (size_t)n);
    s[n] = '\0';
    fclose(f);
    return s;
}

/* Parses the NULL-terminated arguments after "test" with cw_opt_parse(),
 * stdout and stderr caught. */
static result parse(const cw_opt_spec *const *known, ...)
{
    result r = {.argv = {"test"}, .argc = 1};
    va_list ap;
    va_start(ap, known);
    for (const char *s; (s = va_arg(ap, const char *));)
        r.argv[r.argc++] = (char *)s;
    va_end(ap);

    FILE *out = tmpfile(), *err = tmpfile();
    assert_non_null(out);
    assert_non_null(err);
    fflush(stdout);
    fflush(stderr);
    int saved_out = dup(STDOUT_FILENO), saved_err = dup(STDERR_FILENO);
    dup2(fileno(out), STDOUT_FILENO);
    dup2(fileno(err), STDERR_FILENO);
    r.rc = cw_opt_parse(&cmd, known, r.argc, r.argv, &r.a, &r.first);
    fflush(stdout);
    fflush(stderr);
    dup2(saved_out, STDOUT_FILENO);
    dup2(saved_err, STDERR_FILENO);
    close(saved_out);
    close(saved_err);
    fseek(out, 0, SEEK_END);
    fseek(err, 0, SEEK_END);
    r.out = read_back(out);
    r.err = read_back(err);
    return r;
}

static void result_free(result *r)
{
    free(r->out);
    free(r->err);
}

/* The arguments parsed without a word on stdout or stderr. */
static void parsed(const result *r)
{
    if (r->rc != CW_OPT_PARSED)
        fail_msg("exit code %d: %s", r->rc, r->err);
    assert_string_equal(r->out, "");
    assert_string_equal(r->err, "");
}

/* Refused with exactly this line on stderr and exit code 2. */
static void refused(result *r, const char *line)
{
    assert_int_equal(r->rc, CW_EXIT_USAGE);
    assert_string_equal(r->err, line);
    assert_string_equal(r->out, "");
    result_free(r);
}

/* The help of `cmd`, as cw_opt_print_help() prints it. */
static char *help_text(void)
{
    char *text = NULL;
    size_t len = 0;
    FILE *f = open_memstream(&text, &len);
    assert_non_null(f);
    cw_opt_print_help(f, &cmd);
    fclose(f);
    return text;
}

/* ---- tests --------------------------------------------------------------- */

static void test_values_long_and_short(void **state)
{
    (void)state;
    static const char *const forms[][3] = {
        {"-c", "a.ini", NULL},          {"-ca.ini", NULL, NULL},   {"--config", "a.ini", NULL},
        {"--config=a.ini", NULL, NULL}, {"--conf", "a.ini", NULL}, /* a unique prefix */
    };
    for (size_t i = 0; i < sizeof forms / sizeof *forms; i++) {
        result r = parse(NULL, forms[i][0], forms[i][1], forms[i][2]);
        parsed(&r);
        assert_string_equal(r.a.config, "a.ini");
        assert_null(r.a.level);
        assert_int_equal(r.first, r.argc);
        result_free(&r);
    }
    /* An empty value is a value. */
    result r = parse(NULL, "--config=", "--level", "", NULL);
    parsed(&r);
    assert_string_equal(r.a.config, "");
    assert_string_equal(r.a.level, "");
    result_free(&r);
}

static void test_flags(void **state)
{
    (void)state;
    result r = parse(NULL, NULL);
    parsed(&r);
    assert_null(r.a.config); /* what is not given is left as it was */
    assert_false(r.a.json);
    assert_false(r.a.dry_run);
    result_free(&r);

    r = parse(NULL, "--json", "--jsonl", "--dry-run", NULL);
    parsed(&r);
    assert_true(r.a.json);
    assert_true(r.a.jsonl);
    assert_true(r.a.dry_run); /* from the included table */
    result_free(&r);

    /* Letters combine, the last one may take a value. */
    r = parse(NULL, "-jlinfo", NULL);
    parsed(&r);
    assert_true(r.a.json);
    assert_string_equal(r.a.level, "info");
    result_free(&r);
    r = parse(NULL, "-jl", "warn", NULL);
    parsed(&r);
    assert_true(r.a.json);
    assert_string_equal(r.a.level, "warn");
    result_free(&r);
}

static void test_arguments(void **state)
{
    (void)state;
    /* Options and arguments mix; "--" ends the options. */
    result r = parse(NULL, "one", "--json", "two", "-c", "x.ini", "--", "--level", NULL);
    parsed(&r);
    assert_true(r.a.json);
    assert_string_equal(r.a.config, "x.ini");
    assert_null(r.a.level);
    assert_int_equal(r.argc - r.first, 3);
    assert_string_equal(r.argv[r.first], "one");
    assert_string_equal(r.argv[r.first + 1], "two");
    assert_string_equal(r.argv[r.first + 2], "--level");
    result_free(&r);
}

static void test_callback(void **state)
{
    (void)state;
    result r = parse(NULL, "--count", "12", NULL);
    parsed(&r);
    assert_int_equal(r.a.count, 12);
    assert_int_equal(r.a.count_calls, 1);
    result_free(&r);

    /* A refused value stops the parse where it is. */
    r = parse(NULL, "--count", "x", "--bogus", NULL);
    assert_int_equal(r.a.count_calls, 1);
    refused(&r, "compworker: test: --count 'x' is not a number\n");
    r = parse(NULL, "--bogus", "--count", "x", NULL);
    assert_int_equal(r.a.count_calls, 0);
    refused(&r, "compworker: test: unknown option '--bogus' (try 'compworker test --help')\n");
}

static void test_unknown_option(void **state)
{
    (void)state;
    static const struct {
        const char *arg;
        const char *line;
    } cases[] = {
        {"--bogus", "compworker: test: unknown option '--bogus' (try 'compworker test --help')\n"},
        {"--bogus=1",
         "compworker: test: unknown option '--bogus' (try 'compworker test --help')\n"},
        {"-z", "compworker: test: unknown option '-z' (try 'compworker test --help')\n"},
        {"-jz", "compworker: test: unknown option '-z' (try 'compworker test --help')\n"},
        /* a prefix of two options */
        {"--jso", "compworker: test: unknown option '--jso' (try 'compworker test --help')\n"},
        /* a long option given a value it does not take */
        {"--jsonl=1", "compworker: test: option '--jsonl' takes no value (try 'compworker test "
                      "--help')\n"},
        /* ... named by its letter when it has one, as compworker always did */
        {"--json=1", "compworker: test: unknown option '-j' (try 'compworker test --help')\n"},
    };
    for (size_t i = 0; i < sizeof cases / sizeof *cases; i++) {
        result r = parse(NULL, "--json", cases[i].arg, NULL);
        refused(&r, cases[i].line);
    }

    /* A parse that stopped inside an argument leaves nothing to the next. */
    result r = parse(NULL, "-zl", NULL);
    refused(&r, "compworker: test: unknown option '-z' (try 'compworker test --help')\n");
    r = parse(NULL, "-c", "a.ini", NULL);
    parsed(&r);
    assert_string_equal(r.a.config, "a.ini");
    assert_null(r.a.level);
    result_free(&r);
}

static void test_missing_value(void **state)
{
    (void)state;
    result r = parse(NULL, "--config", NULL);
    refused(&r, "compworker: test: option '--config' needs a value\n");
    r = parse(NULL, "--json", "-c", NULL);
    refused(&r, "compworker: test: option '-c' needs a value\n");
    r = parse(NULL, "--lev", NULL);
    refused(&r, "compworker: test: option '--lev' needs a value\n");
    r = parse(NULL, "--count", NULL);
    assert_int_equal(r.a.count_calls, 0);
    refused(&r, "compworker: test: option '--count' needs a value\n");
}

static void test_siblings(void **state)
{
    (void)state;
    result r = parse(family, "--dry-run", "--json", NULL);
    parsed(&r);
    assert_true(r.a.dry_run);
    result_free(&r);
    static const char *const theirs[] = {"--yes", "-y", "--ye", "-jy"};
    for (size_t i = 0; i < sizeof theirs / sizeof *theirs; i++) {
        r = parse(family, theirs[i], NULL);
        assert_false(r.a.yes);
        refused(&r, "compworker: test: --yes does not apply to this command\n");
    }
    /* Without the family, it is unknown. */
    r = parse(NULL, "--yes", NULL);
    refused(&r, "compworker: test: unknown option '--yes' (try 'compworker test --help')\n");
}

static void test_help_option(void **state)
{
    (void)state;
    char *help = help_text();
    static const char *const asks[][2] = {
        {"--help", NULL}, {"-h", NULL}, {"--he", NULL}, {"--help", "--bogus"}, {"-jh", NULL},
    };
    for (size_t i = 0; i < sizeof asks / sizeof *asks; i++) {
        result r = parse(family, asks[i][0], asks[i][1], NULL);
        assert_int_equal(r.rc, CW_EXIT_OK);
        assert_string_equal(r.out, help);
        assert_string_equal(r.err, "");
        result_free(&r);
    }
    /* What comes before --help is parsed first. */
    result r = parse(family, "--bogus", "--help", NULL);
    refused(&r, "compworker: test: unknown option '--bogus' (try 'compworker test --help')\n");
    free(help);
}

/* Calls `fn` for every option row of `specs`, the included ones too. */
static void each_row(const cw_opt_spec *specs, void (*fn)(const cw_opt_spec *r, const char *help),
                     const char *help)
{
    for (const cw_opt_spec *r = specs; r->kind != CW_OPT_END; r++) {
        if (r->kind == CW_OPT_INCLUDE)
            each_row(r->include, fn, help);
        else
            fn(r, help);
    }
}

static void listed(const cw_opt_spec *r, const char *help)
{
    char want[200];
    if (r->kind == CW_OPT_GROUP) {
        snprintf(want, sizeof want, "\n%s\n", r->help);
    } else if (r->alias) {
        snprintf(want, sizeof want, "  -%c, --%s%s%s ", r->alias, r->name, r->value_name ? " " : "",
                 r->value_name ? r->value_name : "");
    } else {
        snprintf(want, sizeof want, "      --%s%s%s ", r->name, r->value_name ? " " : "",
                 r->value_name ? r->value_name : "");
    }
    if (!strstr(help, want))
        fail_msg("the help does not list '%s':\n%s", want, help);
    /* The first words of its line of help, at least. */
    char words[16];
    snprintf(words, sizeof words, "%s", r->help);
    if (!strstr(help, words))
        fail_msg("the help does not say '%s':\n%s", words, help);
}

/* The same for a list of options without the headings. */
static void listed_option(const cw_opt_spec *r, const char *help)
{
    if (r->kind != CW_OPT_GROUP)
        listed(r, help);
}

static void test_help_lists_every_option(void **state)
{
    (void)state;
    char *help = help_text();
    each_row(test_specs, listed, help);
    assert_string_equal(
        help, "usage: compworker test -c FILE [options] ARG...\n"
              "\n"
              "tests the parser\n"
              "\n"
              "options:\n"
              "  -c, --config FILE  the file to read\n"
              "  -l, --level LEVEL  how much to say: debug, info, warn or error, in increasing\n"
              "                     order of importance, the default being info\n"
              "      --count N      how many\n"
              "  -j, --json         JSON\n"
              "      --jsonl        JSON lines\n"
              "  -h, --help         print this help\n"
              "\n"
              "shared:\n"
              "      --dry-run      change nothing\n"
              "\n"
              "One paragraph.\n"
              "\n"
              "Another one.\n");
    free(help);

    /* A family's options, each once. */
    char *text = NULL;
    size_t len = 0;
    FILE *f = open_memstream(&text, &len);
    assert_non_null(f);
    cw_opt_print_options(f, family);
    fclose(f);
    each_row(test_specs, listed_option, text);
    each_row(sibling_specs, listed_option, text);
    const char *dry = strstr(text, "--dry-run");
    assert_non_null(dry);
    assert_null(strstr(dry + 1, "--dry-run"));
    assert_null(strstr(text, "shared:")); /* no headings */
    free(text);
}

static void test_bad_table(void **state)
{
    (void)state;
    static const cw_opt_spec clash[] = {
        {CW_OPT_BOOL, "yes", 'j', NULL, "the letter of --json", .offset = offsetof(args, yes)},
        CW_OPT_END_SPEC,
    };
    static const cw_opt_spec *const known[] = {test_specs, clash, NULL};
    result r = parse(known, "--json", NULL);
    assert_int_equal(r.rc, CW_EXIT_FAILURE);
    assert_non_null(strstr(r.err, "a bug in its table of options"));
    result_free(&r);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_values_long_and_short),
        cmocka_unit_test(test_flags),
        cmocka_unit_test(test_arguments),
        cmocka_unit_test(test_callback),
        cmocka_unit_test(test_unknown_option),
        cmocka_unit_test(test_missing_value),
        cmocka_unit_test(test_siblings),
        cmocka_unit_test(test_help_option),
        cmocka_unit_test(test_help_lists_every_option),
        cmocka_unit_test(test_bad_table),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
