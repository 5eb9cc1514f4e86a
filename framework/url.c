/* URLs: masking, list splitting, checking and labels (see url.h). */
#include <amqp.h>
#include <ctype.h>
#include <curl/curl.h>
#include <libpq-fe.h>
#include <stdio.h>
#include <string.h>
#include <strings.h>

#include "framework/url.h"

void cw__url_mask(const char *url, char *out, size_t out_len)
{
    if (!out_len)
        return;
    if (!url)
        url = "";
    /* Find the password in `url` itself, not in a copy cut to `out_len`: a
     * cut copy can lose the '@' and keep the start of the password. The user
     * information ends at the last '@', so a password with an unencoded '/'
     * or '@' is still hidden whole; a stray '@' further on masks too much,
     * never too little. */
    /* Without a scheme ("user:secret@host", a URL mistyped), the user
     * information starts the string: hidden all the same. */
    const char *scheme = strstr(url, "://");
    const char *user = scheme ? scheme + 3 : url;
    const char *at = user ? strrchr(user, '@') : NULL;
    const char *colon = at ? memchr(user, ':', (size_t)(at - user)) : NULL;
    if (!colon) {
        snprintf(out, out_len, "%s", url);
        return;
    }
    snprintf(out, out_len, "%.*s:***%s", (int)(colon - url), url, at);
}

const char *cw__url_list_next(const char **p, size_t *len)
{
    const char *url = *p + strspn(*p, " \t,");

    *len = strcspn(url, " \t,");
    *p = url + *len;
    return *url != '\0' ? url : NULL;
}

bool cw__url_list_nth(const char *urls, unsigned n, char *buf, size_t cap)
{
    const char *p = urls;
    const char *url;
    size_t len;

    for (unsigned i = 0; (url = cw__url_list_next(&p, &len)) != NULL; i++) {
        if (i == n) {
            if (len >= cap)
                len = cap - 1;
            memcpy(buf, url, len);
            buf[len] = '\0';
            return true;
        }
    }
    return false;
}

unsigned cw__url_list_count(const char *urls)
{
    const char *p = urls;
    size_t len;
    unsigned n = 0;

    while (cw__url_list_next(&p, &len) != NULL)
        n++;
    return n;
}

bool cw__url_list_valid(const char *urls, char *why, size_t why_len)
{
    const char *p = urls;
    const char *url;
    size_t len;
    unsigned n = 0;

    /* Each URL is read now by the parser the connection uses, so that a
     * malformed one is a config error, not a failure at the first connect. */
    for (; (url = cw__url_list_next(&p, &len)) != NULL; n++) {
        char buf[CW_URL_MAX + 1];
        struct amqp_connection_info ci;

        if (len > CW_URL_MAX) {
            snprintf(why, why_len, "URL %u of the list is longer than %d bytes", n + 1, CW_URL_MAX);
            return false;
        }
        memcpy(buf, url, len);
        buf[len] = '\0';
        if (amqp_parse_url(buf, &ci) != AMQP_STATUS_OK) {
            snprintf(why, why_len,
                     "URL %u of the list is not amqp[s]://[user[:password]@]host[:port][/vhost]",
                     n + 1);
            return false;
        }
    }
    if (n == 0) {
        snprintf(why, why_len, "value is empty");
        return false;
    }
    return true;
}

void cw__url_list_mask(const char *urls, char *out, size_t cap)
{
    const char *p = urls;
    const char *url;
    size_t len = 0;
    size_t n;

    out[0] = '\0';
    while ((url = cw__url_list_next(&p, &n)) != NULL && len < cap) {
        char one[CW_URL_MAX + 1], masked[CW_URL_MAX + 1];

        snprintf(one, sizeof one, "%.*s", (int)n, url);
        cw__url_mask(one, masked, sizeof masked);
        len += (size_t)snprintf(out + len, cap - len, "%s%s", len ? " " : "", masked);
    }
}

bool cw__url_webhook_valid(const char *url, char *why, size_t why_len)
{
    size_t scheme = strncasecmp(url, "http://", 7) == 0    ? 7
                    : strncasecmp(url, "https://", 8) == 0 ? 8
                                                           : 0;

    if (scheme == 0) {
        snprintf(why, why_len, "the URL does not start with http:// or https://");
        return false;
    }
    /* The host runs to the path, query or fragment, after any user
     * information: "https://?x", "https://#x" and "https://user@/x" have none. */
    const char *host = url + scheme, *end = host + strcspn(host, "/?#");
    for (const char *c = host; c < end; c++) {
        if (*c == '@')
            host = c + 1;
    }
    if (end == host) {
        snprintf(why, why_len, "the URL has no host");
        return false;
    }
    for (const char *c = url; *c != '\0'; c++) {
        if (isspace((unsigned char)*c) || iscntrl((unsigned char)*c)) {
            snprintf(why, why_len, "the URL contains a blank or a control character");
            return false;
        }
    }
    return true;
}

void cw__url_redact(const char *url, char *out, size_t cap)
{
    const char *sep = strstr(url, "://");
    const char *host = sep ? sep + 3 : url;
    const char *end = host + strcspn(host, "/?#");
    /* The user information ends at the last '@' of the authority: a
     * password may hold an '@' of its own. */
    const char *at = memrchr(host, '@', (size_t)(end - host));
    int scheme_len = (int)(host - url);

    if (at != NULL)
        host = at + 1;
    snprintf(out, cap, "%.*s%.*s%s", scheme_len, url, (int)(end - host), host,
             *end != '\0' ? "/***" : "");
}

bool cw__url_pg_valid(const char *conninfo, char *why, size_t why_len)
{
    if (!conninfo || !*conninfo) {
        snprintf(why, why_len, "empty: a PostgreSQL connection URI or key=value string");
        return false;
    }
    char *err = NULL;
    PQconninfoOption *o = PQconninfoParse(conninfo, &err);
    PQfreemem(err); /* it may quote the string */
    if (!o) {
        snprintf(why, why_len,
                 "libpq does not read it as a connection URI (postgresql://user@host:port/db) "
                 "or key=value string");
        return false;
    }
    PQconninfoFree(o);
    return true;
}

void cw__url_pg_mask(const char *conninfo, char *out, size_t cap)
{
    if (cap == 0)
        return;
    char first[CW_URL_MAX + 1];
    bool uri = strstr(conninfo ? conninfo : "", "://") != NULL;
    if (uri)
        cw__url_mask(conninfo, first, sizeof first);
    else
        snprintf(first, sizeof first, "%s", conninfo ? conninfo : "");
    /* password=VALUE: up to '&' or '#' in a URI; a quoted value, or up to a
     * blank, in key=value form. */
    size_t o = 0;
    for (const char *p = first; *p && o + 1 < cap;) {
        if (strncasecmp(p, "password", 8) == 0) {
            const char *q = p + 8;
            while (!uri && (*q == ' ' || *q == '\t'))
                q++;
            if (*q == '=') {
                q++;
                while (!uri && (*q == ' ' || *q == '\t'))
                    q++;
                size_t keep = (size_t)(q - p);
                for (size_t i = 0; i < keep && o + 1 < cap; i++)
                    out[o++] = p[i];
                for (const char *m = "***"; *m && o + 1 < cap; m++)
                    out[o++] = *m;
                if (uri) {
                    q += strcspn(q, "&#");
                } else if (*q == '\'') {
                    for (q++; *q && *q != '\''; q++)
                        if (*q == '\\' && q[1])
                            q++;
                    if (*q == '\'')
                        q++;
                } else {
                    q += strcspn(q, " \t");
                }
                p = q;
                continue;
            }
        }
        out[o++] = *p++;
    }
    out[o] = '\0';
}

void cw__url_origin(const char *url, char *out, size_t cap)
{
    CURLU *u = curl_url();
    char *scheme = NULL, *host = NULL, *port = NULL;
    if (u && curl_url_set(u, CURLUPART_URL, url, 0) == CURLUE_OK &&
        curl_url_get(u, CURLUPART_SCHEME, &scheme, 0) == CURLUE_OK &&
        curl_url_get(u, CURLUPART_HOST, &host, 0) == CURLUE_OK &&
        curl_url_get(u, CURLUPART_PORT, &port, CURLU_DEFAULT_PORT) == CURLUE_OK)
        snprintf(out, cap, "%s://%s:%s", scheme, host, port);
    else
        snprintf(out, cap, "(an unparsable URL)");
    curl_free(scheme);
    curl_free(host);
    curl_free(port);
    curl_url_cleanup(u);
}
