/* URLs: masking, list splitting, checking and labels (see url.h). */
#include <stdio.h>
#include <string.h>

#include "framework/url.h"

void cw__url_mask(const char *url, char *out, unsigned long out_len)
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
