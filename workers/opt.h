/* The command lines of compworker: one table per command drives both the
 * parsing of its options and its --help, so that an option is described
 * once (after libgit2's src/cli/opt.h).
 *
 *     typedef struct status_args { const char *config; bool json; } status_args;
 *
 *     static const cw_opt_spec status_specs[] = {
 *         {CW_OPT_VALUE, "config", 'c', "POOL.INI", "the pool's configuration file",
 *          .offset = offsetof(status_args, config), .flags = CW_OPT_REQUIRED},
 *         {CW_OPT_BOOL, "json", 'j', NULL, "one JSON object instead of text",
 *          .offset = offsetof(status_args, json)},
 *         CW_OPT_HELP_SPEC,
 *         CW_OPT_END_SPEC,
 *     };
 *
 * (The fields after `help` are named, as above: a row may leave them out.)
 *
 * The parsing is getopt_long()'s, from a struct option array and an
 * optstring made from the table: options and arguments may mix, "--" ends
 * the options, a long option may be shortened to a unique prefix and take
 * its value as "--name VALUE" or "--name=VALUE", a short one as "-x VALUE"
 * or "-xVALUE", and short ones without a value combine ("-jh"). */
#ifndef CW_WORKERS_OPT_H
#define CW_WORKERS_OPT_H

#include <stddef.h>
#include <stdio.h>

/* What a row of a table is. */
typedef enum cw_opt_kind {
    CW_OPT_END = 0, /* ends a table */
    CW_OPT_BOOL,    /* an option without a value: sets the bool at `offset` */
    CW_OPT_VALUE,   /* an option with a value: `parse` takes it, or (NULL) the
                       const char * at `offset` points to it in argv */
    CW_OPT_HELP,    /* prints the command's help on stdout and ends the parse */
    CW_OPT_GROUP,   /* not an option: `help` heads the options after it in --help */
    CW_OPT_INCLUDE, /* not an option: the rows of the table `include`, as if here */
} cw_opt_kind;

/* Flags of a row. */
#define CW_OPT_REQUIRED                                                                            \
    1u /* the usage line shows it, not in "[options]"; the
                              command checks that it is given, in its own words */

typedef struct cw_opt_spec cw_opt_spec;

/* Checks the `value` of option `spec` and stores it into `target` (at
 * spec->offset, as the function knows it). Returns 0, or an exit code
 * after printing one error line that starts with `cmd` (cw_cli_fail()). */
typedef int (*cw_opt_parse_fn)(const char *cmd, const cw_opt_spec *spec, const char *value,
                               void *target);

/* A row of a command's table. The target is a struct of the command's; an
 * option is stored at an offset into it, so that tables are constant. */
struct cw_opt_spec {
    cw_opt_kind kind;
    const char *name;           /* the long name, without "--" */
    char alias;                 /* the short letter, or 0 */
    const char *value_name;     /* CW_OPT_VALUE: the value in --help ("N", "POOL.INI") */
    const char *help;           /* its line in --help (wrapped); a group's heading */
    size_t offset;              /* where the value goes: offsetof(target type, field) */
    cw_opt_parse_fn parse;      /* CW_OPT_VALUE: checks and stores the value; may be NULL */
    const cw_opt_spec *include; /* CW_OPT_INCLUDE: the table */
    unsigned flags;             /* CW_OPT_REQUIRED */
};

/* The row of -h, --help that every command has, and the end of a table. */
#define CW_OPT_HELP_SPEC                                                                           \
    {                                                                                              \
        CW_OPT_HELP, "help", 'h', NULL, "print this help", .offset = 0                             \
    }
#define CW_OPT_END_SPEC                                                                            \
    {                                                                                              \
        .kind = CW_OPT_END                                                                         \
    }

/* A command: what it is called and what its --help says around the
 * options. */
typedef struct cw_opt_cmd {
    const char *name;         /* "run", "dlq list": in the usage line and first in
                                 every error line */
    const char *args;         /* what follows the options in the usage line
                                 ("MESSAGE_ID..."), or NULL */
    const char *summary;      /* one line under the usage line, or NULL */
    const char *about;        /* paragraphs after the options ("\n" between), or NULL */
    const cw_opt_spec *specs; /* the table */
} cw_opt_cmd;

/* What cw_opt_parse() returns when the command goes on. */
#define CW_OPT_PARSED (-1)

/* Parses the options of `argv` (argv[0] is the command, as getopt_long()
 * expects; argv is permuted so that the arguments come last) by
 * cmd->specs into `target`, in their order on the command line: a value
 * that `parse` refuses stops the parse there.
 *
 * `known`, NULL or a NULL-terminated list of tables, are the tables of the
 * command's siblings (those of `compworker dlq`): their options are parsed
 * as options too, and refused with "<cmd>: --yes does not apply to this
 * command".
 *
 * `target` may be NULL when no row of the table stores anything.
 *
 * Returns CW_OPT_PARSED with *first_arg the index in argv of the first
 * argument; otherwise the exit code to return: CW_EXIT_OK once the help was
 * printed for --help, CW_EXIT_USAGE after one error line for an unknown
 * option, a missing or unwanted value, or a value `parse` refused. */
int cw_opt_parse(const cw_opt_cmd *cmd, const cw_opt_spec *const *known, int argc, char **argv,
                 void *target, int *first_arg);

/* Prints the help of `cmd`: the usage line, the summary, the options of its
 * table (with the headings of its groups), the about text. */
void cw_opt_print_help(FILE *f, const cw_opt_cmd *cmd);

/* Prints the options of the NULL-terminated list of tables, each once, in
 * their order, without the headings: what a family of commands takes. */
void cw_opt_print_options(FILE *f, const cw_opt_spec *const *tables);

/* Prints "  term" and `text` from column `col` on (on the next line when
 * the term reaches it), wrapped to the width of the help, the lines after
 * the first indented to `col`: an item of a list of commands. */
void cw_opt_print_item(FILE *f, size_t col, const char *term, const char *text);

#endif
