/* One line per event on stderr, in logfmt or JSON lines. */
#include <json.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>
#include <strings.h>
#include <time.h>
#include <unistd.h>

#include "compworker/status.h"
#include "framework/clock.h"
#include "framework/error.h"
#include "framework/log.h"

static cw_log_level cw_level = CW_LOG_INFO;
static cw_log_format cw_format = CW_LOG_LOGFMT;
static char cw_worker[128];
static char cw_role[32];

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

void cw__log_set_format(cw_log_format format)
{
    cw_format = format;
}

void cw__log_set_role(const char *role)
{
    snprintf(cw_role, sizeof cw_role, "%s", role ? role : "");
}

/* Copies `in` into `out` with every byte that does not start or continue a
 * valid UTF-8 sequence (overlong forms, surrogates and values past U+10FFFF
 * included) replaced by U+FFFD. */
static void utf8_clean(const char *in, char *out, size_t cap)
{
    const unsigned char *p = (const unsigned char *)in;
    size_t o = 0;
    while (*p && o + 4 < cap) {
        unsigned char c = *p;
        size_t n = c < 0x80             ? 1
                   : (c & 0xe0) == 0xc0 ? 2
                   : (c & 0xf0) == 0xe0 ? 3
                   : (c & 0xf8) == 0xf0 ? 4
                                        : 0;
        bool ok = n > 0;
        uint32_t cp = n == 1 ? c : n == 2 ? (c & 0x1fu) : n == 3 ? (c & 0x0fu) : (c & 0x07u);
        for (size_t i = 1; ok && i < n; i++) {
            if ((p[i] & 0xc0) != 0x80)
                ok = false;
            else
                cp = (cp << 6) | (p[i] & 0x3fu);
        }
        if (ok && ((n == 2 && cp < 0x80) || (n == 3 && cp < 0x800) || (n == 4 && cp < 0x10000) ||
                   cp > 0x10ffff || (cp >= 0xd800 && cp <= 0xdfff)))
            ok = false;
        if (!ok) {
            memcpy(out + o, "\xef\xbf\xbd", 3);
            o += 3;
            p++;
            continue;
        }
        memcpy(out + o, p, n);
        o += n;
        p += n;
    }
    out[o] = '\0';
}

static void json_put(json_object *obj, const char *key, const char *val)
{
    char clean[2048 * 3];
    if (!val)
        return;
    utf8_clean(val, clean, sizeof clean);
    json_object_object_add(obj, key, json_object_new_string(clean));
}

/* The JSON line of one event into `line`; its length. */
static size_t format_json(char *line, size_t cap, const char *ts, cw_log_level level,
                          const cw_log_task *task, const char *msg)
{
    json_object *o = json_object_new_object();
    if (!o)
        return (size_t)snprintf(line, cap,
                                "{\"ts\":\"%s\",\"level\":\"error\","
                                "\"msg\":\"out of memory formatting a log line\"}",
                                ts);
    json_put(o, "ts", ts);
    json_put(o, "level", cw_level_names[level]);
    if (cw_role[0])
        json_put(o, "role", cw_role);
    if (cw_worker[0])
        json_put(o, "worker", cw_worker);
    json_put(o, "msg", msg);
    if (task) {
        json_put(o, "message_id", task->message_id);
        json_put(o, "saga_id", task->saga_id);
        json_put(o, "type", task->type);
    }
    const char *s = json_object_to_json_string_ext(o, JSON_C_TO_STRING_PLAIN |
                                                          JSON_C_TO_STRING_NOSLASHESCAPE);
    size_t len = s ? strlen(s) : 0;
    if (len >= cap) /* cut: keep it one valid object, without the message */
        len = (size_t)snprintf(line, cap,
                               "{\"ts\":\"%s\",\"level\":\"%s\","
                               "\"msg\":\"(log line too long)\"}",
                               ts, cw_level_names[level]);
    else
        memcpy(line, s, len);
    json_object_put(o);
    return len;
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

    int64_t now = cw__now_ms();
    time_t sec = (time_t)(now / 1000);
    struct tm tm;
    gmtime_r(&sec, &tm);
    char line[8192];
    char when[80];
    snprintf(when, sizeof when, "%04d-%02d-%02dT%02d:%02d:%02d.%03ldZ", tm.tm_year + 1900,
             tm.tm_mon + 1, tm.tm_mday, tm.tm_hour, tm.tm_min, tm.tm_sec, (long)(now % 1000));
    size_t len;
    if (cw_format == CW_LOG_JSON) {
        len = format_json(line, sizeof line - 1, when, level, task, msg);
        line[len++] = '\n';
        ssize_t w = write(STDERR_FILENO, line, len);
        (void)w;
        return;
    }
    len = (size_t)snprintf(line, sizeof line, "ts=%s level=%s", when, cw_level_names[level]);
    if (cw_role[0])
        len = put_field(line, len, sizeof line - 2, "role", cw_role);
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
