/* PostgreSQL connections that never show their password (framework/pg.h). */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "framework/error.h"
#include "framework/pg.h"

#define CW_PG_CONNECT_TIMEOUT "5"

/* ---- array parameters ------------------------------------------------------ */

static bool buf_grow(cw_pg_buf *b, size_t more)
{
    if (b->failed)
        return false;
    if (b->len + more + 1 <= b->cap)
        return true;
    size_t cap = b->cap ? b->cap : 256;
    while (cap < b->len + more + 1)
        cap *= 2;
    char *p = realloc(b->p, cap);
    if (!p) {
        b->failed = true;
        return false;
    }
    b->p = p;
    b->cap = cap;
    return true;
}

static void buf_put(cw_pg_buf *b, char c)
{
    if (buf_grow(b, 1))
        b->p[b->len++] = c;
}

void cw__pg_buf_reset(cw_pg_buf *b)
{
    b->len = 0;
    b->failed = false;
    buf_put(b, '{');
}

void cw__pg_buf_free(cw_pg_buf *b)
{
    free(b->p);
    memset(b, 0, sizeof *b);
}

/* The length of the valid UTF-8 sequence at s (1-4), or 0 when s does not
 * start one (RFC 3629: no overlong forms, no surrogates, up to U+10FFFF). */
static size_t utf8_len(const unsigned char *s, size_t avail)
{
    unsigned char c = s[0];
    if (c < 0x80)
        return 1;
    size_t n = c >= 0xC2 && c <= 0xDF   ? 2
               : c >= 0xE0 && c <= 0xEF ? 3
               : c >= 0xF0 && c <= 0xF4 ? 4
                                        : 0;
    if (n > avail)
        return 0;
    for (size_t i = 1; i < n; i++) {
        if ((s[i] & 0xC0) != 0x80)
            return 0;
    }
    if ((c == 0xE0 && s[1] < 0xA0) || (c == 0xED && s[1] > 0x9F) || (c == 0xF0 && s[1] < 0x90) ||
        (c == 0xF4 && s[1] > 0x8F))
        return 0;
    return n;
}

void cw__pg_array_textn(cw_pg_buf *b, const char *s, size_t len)
{
    if (b->len > 1)
        buf_put(b, ',');
    if (!s) {
        for (const char *n = "NULL"; *n; n++)
            buf_put(b, *n);
        return;
    }
    buf_put(b, '"');
    const unsigned char *p = (const unsigned char *)s, *end = p + len;
    while (p < end) {
        size_t n = *p ? utf8_len(p, (size_t)(end - p)) : 0;
        if (n == 0) {
            buf_put(b, '?');
            p++;
            continue;
        }
        if (*p == '"' || *p == '\\')
            buf_put(b, '\\');
        for (size_t i = 0; i < n; i++)
            buf_put(b, (char)p[i]);
        p += n;
    }
    buf_put(b, '"');
}

void cw__pg_array_text(cw_pg_buf *b, const char *s)
{
    cw__pg_array_textn(b, s, s ? strlen(s) : 0);
}

void cw__pg_array_int(cw_pg_buf *b, long long v)
{
    char num[24];
    int n = snprintf(num, sizeof num, "%s%lld", b->len > 1 ? "," : "", v);
    for (int i = 0; i < n; i++)
        buf_put(b, num[i]);
}

const char *cw__pg_array_end(cw_pg_buf *b)
{
    buf_put(b, '}');
    buf_put(b, '\0');
    return b->failed ? NULL : b->p;
}

const char *cw__pg_text(char *out, size_t cap, const char *s)
{
    size_t o = 0;
    for (const unsigned char *p = (const unsigned char *)s; *p;) {
        size_t n = utf8_len(p, 4);
        if (o + (n ? n : 1) >= cap)
            break;
        if (n == 0) {
            out[o++] = '?';
            p++;
            continue;
        }
        memcpy(out + o, p, n);
        o += n;
        p += n;
    }
    out[o] = '\0';
    return out;
}

/* ---- sessions --------------------------------------------------------------- */

/* Copies `msg` into out as one line: each occurrence of the password
 * replaced with "****", each line break (with the blanks after it) made one
 * space, trailing blanks dropped (libpq ends its messages with '\n' and
 * indents its hints on lines of their own). */
void cw__pg_scrub_password(const char *password, const char *msg, char *out, size_t cap)
{
    size_t o = 0, plen = password ? strlen(password) : 0;
    for (const char *p = msg ? msg : ""; *p && o + 1 < cap;) {
        if (plen && strncmp(p, password, plen) == 0) {
            for (const char *m = "****"; *m && o + 1 < cap; m++)
                out[o++] = *m;
            p += plen;
            continue;
        }
        if (*p == '\n' || *p == '\r') {
            while (*p == '\n' || *p == '\r' || *p == '\t' || *p == ' ')
                p++;
            if (o > 0 && out[o - 1] != ' ')
                out[o++] = ' ';
            continue;
        }
        out[o++] = *p++;
    }
    while (o > 0 && (out[o - 1] == '\n' || out[o - 1] == ' ' || out[o - 1] == '\r'))
        o--;
    out[o] = '\0';
}

/* The password a connection string holds, found without libpq (for its
 * own parse errors, which may quote the string): the user information of a
 * URI after ':', or the value of password= in key=value form. */
static char *guess_password(const char *url)
{
    const char *p = strstr(url, "://");
    if (p) {
        p += 3;
        const char *end = p + strcspn(p, "/?#");
        const char *at = NULL;
        for (const char *c = p; c < end; c++)
            if (*c == '@')
                at = c;
        const char *colon = at ? memchr(p, ':', (size_t)(at - p)) : NULL;
        return colon && at > colon + 1 ? strndup(colon + 1, (size_t)(at - colon - 1)) : NULL;
    }
    p = strstr(url, "password");
    if (!p)
        return NULL;
    p += strlen("password");
    p += strspn(p, " \t");
    if (*p != '=')
        return NULL;
    p++;
    p += strspn(p, " \t");
    if (*p == '\'') {
        p++;
        return strndup(p, strcspn(p, "'"));
    }
    size_t n = strcspn(p, " \t");
    return n ? strndup(p, n) : NULL;
}

int cw__pg_url_parse(const char *url, const char *key, char **label_out, char **password_out)
{
    char *err = NULL;
    PQconninfoOption *opts = PQconninfoParse(url, &err);
    if (!opts) {
        char *pw = guess_password(url);
        char why[512];
        cw__pg_scrub_password(pw, err ? err : "out of memory", why, sizeof why);
        free(pw);
        PQfreemem(err);
        return cw__error(CW_STATUS_CONFIG, "%s: not a libpq connection URI or key=value string: %s",
                         key, why);
    }
    const char *user = NULL, *host = NULL, *port = NULL, *db = NULL, *pw = NULL;
    for (PQconninfoOption *o = opts; o->keyword; o++) {
        if (!o->val || !*o->val)
            continue;
        if (strcmp(o->keyword, "user") == 0)
            user = o->val;
        else if (strcmp(o->keyword, "host") == 0 || (!host && strcmp(o->keyword, "hostaddr") == 0))
            host = o->val;
        else if (strcmp(o->keyword, "port") == 0)
            port = o->val;
        else if (strcmp(o->keyword, "dbname") == 0)
            db = o->val;
        else if (strcmp(o->keyword, "password") == 0)
            pw = o->val;
    }
    /* libpq checks a port only when it connects, and would then say it
     * cannot connect: a port that is no number is a configuration error. */
    if (port && (strspn(port, "0123456789,") != strlen(port) || !strpbrk(port, "0123456789"))) {
        char why[256];
        cw__pg_scrub_password(pw, port, why, sizeof why);
        PQconninfoFree(opts);
        return cw__error(CW_STATUS_CONFIG, "%s: port '%s' is not a number", key, why);
    }
    char label[512];
    snprintf(label, sizeof label, "postgresql://%s%s%s%s%s/%s", user ? user : "", user ? "@" : "",
             host ? host : "", port ? ":" : "", port ? port : "", db ? db : "");
    *label_out = strdup(label);
    *password_out = pw ? strdup(pw) : NULL;
    PQconninfoFree(opts);
    if (!*label_out || (pw && !*password_out))
        return cw__error(CW_STATUS_NOMEM, "%s: out of memory", key);
    return 0;
}

int cw__pg_session_open(const char *url, const char *label, const char *password, const char *app,
                        const char *what, const char *key, PGconn **out)
{
    /* Ours first: what the URL says wins (expand_dbname). Keepalives find a
     * server that vanished without closing the connection. */
    const char *const keys[] = {"connect_timeout",
                                "application_name",
                                "keepalives_idle",
                                "keepalives_interval",
                                "keepalives_count",
                                "dbname",
                                NULL};
    const char *const vals[] = {CW_PG_CONNECT_TIMEOUT, app, "10", "5", "3", url, NULL};
    *out = PQconnectdbParams(keys, vals, 1);
    if (!*out)
        return cw__error(CW_STATUS_NOMEM, "%s %s: out of memory connecting", what, label);
    if (PQstatus(*out) == CONNECTION_OK)
        return 0;
    char why[1024];
    cw__pg_scrub_password(password, PQerrorMessage(*out), why, sizeof why);
    /* A server that answers but refuses us (authentication, no such
     * database) will refuse again: that is a configuration error, not an
     * outage to wait out. */
    PGPing ping = PQpingParams(keys, vals, 1);
    if (ping == PQPING_OK)
        return cw__error(CW_STATUS_STORE, "%s %s: the server refused the connection: %s", what,
                         label, why);
    if (ping == PQPING_NO_ATTEMPT)
        return cw__error(CW_STATUS_CONFIG, "%s: %s", key, why);
    return cw__error(CW_STATUS_STORE_UNAVAILABLE, "%s %s: cannot connect: %s", what, label, why);
}

bool cw__pg_lost(PGconn *conn, const PGresult *res)
{
    if (!conn || PQstatus(conn) == CONNECTION_BAD || !res)
        return true;
    const char *st = PQresultErrorField(res, PG_DIAG_SQLSTATE);
    if (!st)
        return false;
    /* connection exceptions; the server shutting down or crashing; too many
     * connections; the database not accepting connections yet */
    return strncmp(st, "08", 2) == 0 || strcmp(st, "57P01") == 0 || strcmp(st, "57P02") == 0 ||
           strcmp(st, "57P03") == 0 || strcmp(st, "53300") == 0;
}
