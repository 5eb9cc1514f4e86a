/* Splitting a command line into words without a shell (see argv.h). */
#include <ctype.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "compworker/status.h"
#include "framework/argv.h"

void cw__argv_free(char **argv)
{
    if (argv == NULL)
        return;
    for (char **a = argv; *a != NULL; a++)
        free(*a);
    free(argv);
}

int cw__argv_split(char ***out, const char *s, char *why, size_t why_len)
{
    size_t n = 0, cap = 4;
    char **argv = calloc(cap, sizeof *argv);
    char *word = malloc(strlen(s) + 1);
    const char *p = s;
    int rc = 0;

    if (argv == NULL || word == NULL) {
        rc = CW_STATUS_NOMEM;
        goto out_free;
    }
    for (;;) {
        size_t len = 0;

        while (isspace((unsigned char)*p))
            p++;
        if (*p == '\0')
            break;
        while (*p != '\0' && !isspace((unsigned char)*p)) {
            if (*p != '"') {
                word[len++] = *p++;
                continue;
            }
            const char *open = p++;
            while (*p != '"') {
                if (*p == '\\' && p[1] != '\0') {
                    p++; /* the next character, as it is */
                } else if (*p == '\0' || *p == '\\') {
                    snprintf(why, why_len, "the quote at column %zu is not closed",
                             (size_t)(open - s) + 1);
                    rc = CW_STATUS_INVALID_ARG;
                    goto out_free;
                }
                word[len++] = *p++;
            }
            p++;
        }
        word[len] = '\0';
        if (n + 2 > cap) {
            char **grown = realloc(argv, 2 * cap * sizeof *grown);
            if (grown == NULL) {
                rc = CW_STATUS_NOMEM;
                goto out_free;
            }
            argv = grown;
            cap *= 2;
        }
        argv[n] = strdup(word);
        if (argv[n] == NULL) {
            rc = CW_STATUS_NOMEM;
            goto out_free;
        }
        argv[++n] = NULL;
    }
    if (n == 0) {
        snprintf(why, why_len, "no program given");
        rc = CW_STATUS_INVALID_ARG;
        goto out_free;
    }
    *out = argv;
    argv = NULL;

out_free:
    cw__argv_free(argv);
    free(word);
    return rc;
}
