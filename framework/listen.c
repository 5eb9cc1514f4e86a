/* Listen addresses: "host:port" and "[v6]:port" (see listen.h). */
#include <ctype.h>
#include <string.h>

#include "compworker/status.h"
#include "framework/listen.h"
#include "framework/parse.h"

int cw__listen_parse(const char *value, char *host, size_t host_cap, unsigned *port)
{
    const char *colon;
    const char *h = value;
    size_t hlen;
    long long p;

    if (value[0] == '[') {
        const char *close = strchr(value, ']');
        if (close == NULL || close[1] != ':')
            return CW_STATUS_INVALID_ARG;
        h = value + 1;
        hlen = (size_t)(close - h);
        colon = close + 1;
    } else {
        colon = strrchr(value, ':');
        if (colon == NULL || memchr(value, ':', (size_t)(colon - value)) != NULL)
            return CW_STATUS_INVALID_ARG;
        hlen = (size_t)(colon - value);
    }
    if (hlen == 0 || hlen >= host_cap || !cw__parse_int(colon + 1, 0, 65535, &p))
        return CW_STATUS_INVALID_ARG;
    for (size_t i = 0; i < hlen; i++) {
        unsigned char c = (unsigned char)h[i];
        if (!isalnum(c) && c != '.' && c != '-' && c != ':' && c != '_')
            return CW_STATUS_INVALID_ARG;
    }
    memcpy(host, h, hlen);
    host[hlen] = '\0';
    *port = (unsigned)p;
    return 0;
}
