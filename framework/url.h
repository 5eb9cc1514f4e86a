/* Internal: URLs, in one place: broker URL lists (split, checked, masked)
 * and webhook URLs (checked, shown without their secrets).
 *
 * Whatever a log line, an error or `compworker config check` says of a URL
 * goes through a function here first, so that no password or token shows.
 * Every function is safe from any thread; all but cw__url_origin() (which
 * asks libcurl) are plain string work that allocates nothing. */
#ifndef CW_FRAMEWORK_URL_H
#define CW_FRAMEWORK_URL_H

#include <stdbool.h>
#include <stddef.h>

/* The longest URL of a broker list, without its NUL: the connection copies
 * each into a buffer of CW_URL_MAX + 1 bytes. */
#define CW_URL_MAX 1023

/* Copies `url` into `out` (cut to out_len - 1 bytes; nothing written when
 * out_len is 0) with any password replaced by "***": from the first ':' of
 * the user information, which starts after "://" (or at the start of a URL
 * without a scheme) and ends at the last '@', to that '@'. So a password
 * holding an unencoded '/' or '@' is hidden whole, and a stray '@' further
 * on hides too much, never too little. A URL without a password is copied
 * as it is; NULL is taken as "". */
void cw__url_mask(const char *url, char *out, size_t out_len);

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

/* Whether `urls` is a list of at least one broker URL, each at most
 * CW_URL_MAX bytes that rabbitmq-c's parser (the one the connection uses)
 * reads as amqp[s]://[user[:password]@]host[:port][/vhost]. When not, `why`
 * says which URL of the list is wrong, never quoting it (it may hold a
 * password). */
bool cw__url_list_valid(const char *urls, char *why, size_t why_len);

/* Every URL of the list with its password masked (cw__url_mask()),
 * separated by single spaces, into `out`, cut to cap - 1 bytes. */
void cw__url_list_mask(const char *urls, char *out, size_t cap);

/* ---- PostgreSQL connection strings ------------------------------------------
 * [store] url: a postgresql:// (or postgres://) URI, or libpq's key=value
 * form ("host=db1 dbname=orders user=cw"), as libpq documents them. */

/* Whether libpq reads `conninfo` as a connection string. When not, `why`
 * says so without quoting it (it may hold a password). */
bool cw__url_pg_valid(const char *conninfo, char *why, size_t why_len);

/* `conninfo` with every password masked as "***": a URI's user information
 * (cw__url_mask()) and its password= query parameter, or the value of a
 * key=value string's password (quoted or not). */
void cw__url_pg_mask(const char *conninfo, char *out, size_t cap);

/* ---- webhook URLs -------------------------------------------------------- */

/* Whether `url` is an http:// or https:// URL (scheme case-insensitive) with
 * a host, holding no blank or control character. When not, `why` says
 * what is wrong, never quoting the URL (it often carries a token). */
bool cw__url_webhook_valid(const char *url, char *why, size_t why_len);

/* scheme://host[:port] of `url`, into `out`: what comes before the last '@'
 * of the authority (the user information, whose password may hold an '@')
 * is left out, and "/" and "***"
 * stand for anything that follows it (a path, query or fragment: they often
 * hold a token). What `config check` shows of [alert] webhook. */
void cw__url_redact(const char *url, char *out, size_t cap);

/* scheme://host:port of `url` as libcurl reads it (the port its default
 * when the URL names none), into `out`: what a log line may say of a
 * webhook. No user information, path or query; "(an unparsable URL)" when
 * libcurl does not read it. */
void cw__url_origin(const char *url, char *out, size_t cap);

#endif
