/* One line per event on stderr, in logfmt. */
#include <stdarg.h>
#include <stdio.h>
#include <string.h>
#include <strings.h>
#include <time.h>
#include <unistd.h>

#include "compworker/status.h"
#include "framework/error.h"
#include "framework/log.h"

static cw_log_level cw_level = CW_LOG_INFO;
static char cw_worker[128];

static const char *const cw_level_names[] = {"debug", "info", "warn", "error"};

int cw__log_level_parse(const char *s, cw_log_level *out)
{
    for (unsigned i = 0; i < sizeof cw_level_names / sizeof *cw_level_names; i++) {
        if (strcasecmp(s, cw_level_names[i]) == 0) {
            *out = (cw_log_level)i;
            return 0;
        }
    }
    if (strcasecmp(s, "warning") == 0) {
        *out = CW_LOG_WARN;
        return 0;
    }
    return CW_STATUS_INVALID_ARG;
}

void cw__log_set_level(cw_log_level level)
{
    cw_level = level;
}

void cw__log_set_worker(const char *worker_id)
{
    snprintf(cw_worker, sizeof cw_worker, "%s", worker_id ? worker_id : "");
}

/* Appends ` key="value"` with quotes, backslashes and control bytes escaped. */
static size_t put_field(char *buf, size_t len, size_t cap, const char *key, const char *val)
{
    static const char hex[] = "0123456789abcdef";
    if (!val || len >= cap)
        return len;
    int n = snprintf(buf + len, cap - len, " %s=\"", key);
    if (n < 0 || (size_t)n >= cap - len)
        return cap;
    len += (size_t)n;
    for (const unsigned char *p = (const unsigned char *)val; *p && len + 5 < cap; p++) {
        if (*p == '"' || *p == '\\') {
            buf[len++] = '\\';
            buf[len++] = (char)*p;
        } else if (*p < 0x20 || *p == 0x7f) {
            buf[len++] = '\\';
            buf[len++] = 'x';
            buf[len++] = hex[*p >> 4];
            buf[len++] = hex[*p & 15];
        } else {
            buf[len++] = (char)*p;
        }
    }
    if (len + 1 < cap)
        buf[len++] = '"';
    return len;
}

void cw__log(cw_log_level level, const cw_log_task *task, const char *fmt, ...)
{
    if (level < cw_level)
        return;
    char msg[2048];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);

    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    struct tm tm;
    gmtime_r(&ts.tv_sec, &tm);
    char line[4096];
    size_t len = (size_t)snprintf(line, sizeof line,
                                  "ts=%04d-%02d-%02dT%02d:%02d:%02d.%03ldZ level=%s",
                                  tm.tm_year + 1900, tm.tm_mon + 1, tm.tm_mday, tm.tm_hour,
                                  tm.tm_min, tm.tm_sec, ts.tv_nsec / 1000000,
                                  cw_level_names[level]);
    if (cw_worker[0])
        len = put_field(line, len, sizeof line - 2, "worker", cw_worker);
    len = put_field(line, len, sizeof line - 2, "msg", msg);
    if (task) {
        len = put_field(line, len, sizeof line - 2, "message_id", task->message_id);
        len = put_field(line, len, sizeof line - 2, "saga_id", task->saga_id);
        len = put_field(line, len, sizeof line - 2, "type", task->type);
    }
    if (len > sizeof line - 2)
        len = sizeof line - 2;
    line[len++] = '\n';
    /* One write per line so lines of several processes never interleave. */
    ssize_t w = write(STDERR_FILENO, line, len);
    (void)w;
}

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
    const char *scheme = strstr(url, "://");
    const char *user = scheme ? scheme + 3 : NULL;
    const char *at = user ? strrchr(user, '@') : NULL;
    const char *colon = at ? memchr(user, ':', (size_t)(at - user)) : NULL;
    if (!colon) {
        snprintf(out, out_len, "%s", url);
        return;
    }
    snprintf(out, out_len, "%.*s:***%s", (int)(colon - url), url, at);
}
