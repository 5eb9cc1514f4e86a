/* Internal: PostgreSQL connections that never show their password, for
 * the store (framework/store_pg_conn.c) and the outbox relay: reading a
 * connection string, opening a session, and messages with the password
 * scrubbed. */
#ifndef CW_FRAMEWORK_PG_H
#define CW_FRAMEWORK_PG_H

#include <libpq-fe.h>
#include <stdbool.h>
#include <stddef.h>

/* Copies `msg` into out as one line: each occurrence of `password` (NULL:
 * none) replaced with "****", each line break (with the blanks after it)
 * made one space, trailing blanks dropped (libpq ends its messages with
 * '\n' and indents its hints on lines of their own). */
void cw__pg_scrub_password(const char *password, const char *msg, char *out, size_t cap);

/* Reads a libpq connection URI or key=value string without connecting:
 * *label (new string) names the server without the password
 * ("postgresql://cw@db1:5432/orders"), *password (new string or NULL) is
 * what must never be shown. `key` ("[store] url") names the setting in
 * errors. CW_STATUS_CONFIG when libpq cannot read it or its port is not a
 * number; CW_STATUS_NOMEM. */
int cw__pg_url_parse(const char *url, const char *key, char **label, char **password);

/* Opens a session to `url` (connect timeout 5 s, TCP keepalives, the
 * application name `app`; what the URL says wins). *out is set either way
 * (PQfinish it). `what` ("store", "relay") and `key` name it in errors:
 * CW_STATUS_CONFIG when libpq will not try (a bad option), CW_STATUS_STORE
 * when the server answers but refuses (authentication, no such database),
 * CW_STATUS_STORE_UNAVAILABLE when it cannot be reached. */
int cw__pg_session_open(const char *url, const char *label, const char *password, const char *app,
                        const char *what, const char *key, PGconn **out);

/* Whether `res` (NULL: none came) says the session is gone: a connection
 * exception, the server shutting down, too many connections. */
bool cw__pg_lost(PGconn *conn, const PGresult *res);

/* A growable text buffer, for array parameters. */
typedef struct cw_pg_buf {
    char *p;
    size_t len, cap;
    bool failed; /* out of memory: the text is incomplete */
} cw_pg_buf;

/* Array parameters in PostgreSQL's text form: {"a","b",NULL} and {1,2}.
 * Strings are made valid UTF-8 (an invalid byte becomes '?'), so that a
 * reason cut from arbitrary text never makes the server refuse a batch. */
void cw__pg_buf_reset(cw_pg_buf *b);
void cw__pg_buf_free(cw_pg_buf *b);
void cw__pg_array_text(cw_pg_buf *b, const char *s); /* appends one element */
void cw__pg_array_textn(cw_pg_buf *b, const char *s, size_t len);
void cw__pg_array_int(cw_pg_buf *b, long long v);
const char *cw__pg_array_end(cw_pg_buf *b); /* closes it; NULL if out of memory */

/* A copy of `s` made valid UTF-8, in `out` (`cap` bytes, cut at a character
 * boundary): for single text parameters. Returns out. */
const char *cw__pg_text(char *out, size_t cap, const char *s);

#endif
