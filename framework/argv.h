/* Internal: a command line split into an argv without a shell, as
 * [alert] command is run (execve(), no shell, no PATH search). */
#ifndef CW_FRAMEWORK_ARGV_H
#define CW_FRAMEWORK_ARGV_H

#include <stddef.h>

/* Splits `s` into words at blanks, without a shell: "..." groups words (and
 * may make an empty one), and inside quotes a backslash takes the next
 * character as it is. Outside quotes every character but a blank or a quote
 * is itself, a backslash included. *out is a NULL-terminated argv of at
 * least one word; free it with cw__argv_free(). Returns 0, CW_STATUS_NOMEM,
 * or CW_STATUS_INVALID_ARG (*out untouched) with what is wrong in `why`:
 * "the quote at column N is not closed", "no program given". */
int cw__argv_split(char ***out, const char *s, char *why, size_t why_len);

/* Frees a NULL-terminated argv and its words. Accepts NULL. */
void cw__argv_free(char **argv);

#endif
