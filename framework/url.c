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
