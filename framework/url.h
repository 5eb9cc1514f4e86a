/* Internal: URLs and how they are shown without their secrets. */
#ifndef CW_FRAMEWORK_URL_H
#define CW_FRAMEWORK_URL_H

#include <stdbool.h>
#include <stddef.h>

/* Copies `url` into `out` with any password replaced by "***". */
void cw__url_mask(const char *url, char *out, unsigned long out_len);

/* ---- broker URL lists ---------------------------------------------------
 * [broker] url (and CW_AMQP_URL) may name several brokers to fail over
 * between, separated by blanks (spaces, tabs) or commas; separators may
 * repeat and may lead or trail. */

/* The next URL of the list at *p: skips the separators there and returns
 * where the URL starts, its length in *len, and moves *p past it. NULL
 * (with *p at the end) when no URL is left. Points into the list. */
const char *cw__url_list_next(const char **p, size_t *len);

/* Copies URL `n` (from 0) of `urls` into buf, cut to cap - 1 bytes if it is
 * longer (cap >= 1). False, with buf untouched, when there is no URL n. */
bool cw__url_list_nth(const char *urls, unsigned n, char *buf, size_t cap);

/* How many URLs `urls` holds. */
unsigned cw__url_list_count(const char *urls);

#endif
