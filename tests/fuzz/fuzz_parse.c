/* Fuzz target: the small parsers of values written by people
 * (framework/parse.c: durations, sizes, integers, booleans; HOST:PORT; log
 * levels; the DLQ's times, dlq/message.c and dlq/filter.c), and what is
 * computed from a parsed duration (the delay topology's routing key, the
 * retry backoff).
 *
 * Input: one string (cut at its first NUL, as a C string would be). Every
 * parser sees the same string.
 *
 * Asserts: what a parser accepts it gives back the same way when printed
 * canonically and parsed again; values stay in their documented ranges;
 * ISO 8601 times survive cw__iso8601() and back; a masked URL never shows
 * its password; a delay's routing key encodes its units. */
#include <inttypes.h>
#include <limits.h>
#include <string.h>
#include <strings.h>

#include "dlq/deadletter.h"
#include "dlq/dlq.h"
#include "framework/config.h"
#include "framework/log.h"
#include "framework/parse.h"
#include "fuzz.h"
#include "retry/delay.h"
#include "retry/policy.h"

/* 0001-01-01T00:00:00Z and 9999-12-31T23:59:59.999Z: what the ISO 8601
 * writer prints with a four-digit year. */
#define FZ_MS_MIN INT64_C(-62135596800000)
#define FZ_MS_MAX INT64_C(253402300799999)

static void check_duration(const char *s)
{
    int64_t ms, again;
    char buf[64];
    if (!cw__parse_duration_ms(s, &ms))
        return;
    FZ_CHECK(ms >= 0);
    snprintf(buf, sizeof buf, "%" PRId64 "ms", ms);
    FZ_CHECK(cw__parse_duration_ms(buf, &again) && again == ms);
    if (ms % 1000 == 0) {
        snprintf(buf, sizeof buf, "%" PRId64, ms / 1000);
        FZ_CHECK(cw__parse_duration_ms(buf, &again) && again == ms);
    }

    /* The delay topology: units rounded up and clamped, bits in the key. */
    int64_t units = cw__delay_units(ms);
    FZ_CHECK(units >= 0 && units <= CW_DELAY_MAX_UNITS);
    FZ_CHECK(units == CW_DELAY_MAX_UNITS || units * CW_DELAY_UNIT_MS >= ms);
    FZ_CHECK(units == 0 || (units - 1) * CW_DELAY_UNIT_MS < ms);
    char key[CW_DELAY_KEY_MAX + 1];
    FZ_CHECK(cw__delay_routing_key(ms, "q", key, sizeof key) == 0);
    int64_t decoded = 0;
    for (int i = 0; i < CW_DELAY_LEVELS; i++) {
        FZ_CHECK(key[2 * i] == '0' || key[2 * i] == '1');
        FZ_CHECK(key[2 * i + 1] == '.');
        decoded = decoded * 2 + (key[2 * i] - '0');
    }
    FZ_CHECK(decoded == units && strcmp(key + 2 * CW_DELAY_LEVELS, "q") == 0);

    /* Backoff from this interval: within [0, max_delay], never shrinking. */
    cw_retry_policy p;
    cw_retry_policy_default(&p);
    p.interval_ms = ms;
    p.backoff_rate = 1.0 + (double)(ms % 997) / 10.0;
    int64_t prev = 0;
    for (unsigned n = 1; n <= 70; n++) {
        int64_t d = cw_retry_base_delay_ms(&p, n);
        FZ_CHECK(d >= prev && d <= p.max_delay_ms);
        int64_t full = cw_retry_jitter_ms(CW_JITTER_FULL, d, (uint64_t)ms * n);
        int64_t equal = cw_retry_jitter_ms(CW_JITTER_EQUAL, d, (uint64_t)ms ^ n);
        FZ_CHECK(full >= 0 && full <= d);
        FZ_CHECK(equal >= d / 2 && equal <= d);
        FZ_CHECK(cw_retry_jitter_ms(CW_JITTER_NONE, d, (uint64_t)ms) == d);
        prev = d;
    }
}

static void check_size(const char *s)
{
    uint64_t bytes, again;
    char buf[64];
    if (!cw__parse_size(s, &bytes))
        return;
    snprintf(buf, sizeof buf, "%" PRIu64, bytes);
    FZ_CHECK(cw__parse_size(buf, &again) && again == bytes);
    snprintf(buf, sizeof buf, "%" PRIu64 "B", bytes);
    FZ_CHECK(cw__parse_size(buf, &again) && again == bytes);
}

static void check_int(const char *s)
{
    static const long long ranges[][2] = {{LLONG_MIN, LLONG_MAX}, {0, 65535}, {1, 64}, {-5, 5}};
    long long wide;
    bool wide_ok = cw__parse_int(s, LLONG_MIN, LLONG_MAX, &wide);
    for (size_t i = 0; i < sizeof ranges / sizeof *ranges; i++) {
        long long v, again;
        char buf[32];
        bool ok = cw__parse_int(s, ranges[i][0], ranges[i][1], &v);
        /* Accepted in a range exactly when it is an integer inside it. */
        FZ_CHECK(ok == (wide_ok && wide >= ranges[i][0] && wide <= ranges[i][1]));
        if (!ok)
            continue;
        FZ_CHECK(v == wide);
        snprintf(buf, sizeof buf, "%lld", v);
        FZ_CHECK(cw__parse_int(buf, ranges[i][0], ranges[i][1], &again) && again == v);
    }
}

static void check_bool(const char *s)
{
    static const char *const words[] = {"true", "yes", "on", "1", "false", "no", "off", "0"};
    bool b;
    bool known = false;
    for (size_t i = 0; i < sizeof words / sizeof *words; i++)
        known = known || strcasecmp(s, words[i]) == 0;
    FZ_CHECK(cw__parse_bool(s, &b) == known);

    cw_log_level level;
    if (cw__log_level_parse(s, &level) == 0)
        FZ_CHECK(level >= CW_LOG_DEBUG && level <= CW_LOG_ERROR);
}

static void check_listen(const char *s)
{
    char host[256], host2[256], buf[300];
    unsigned port, port2;
    if (cw__listen_parse(s, host, sizeof host, &port) != 0)
        return;
    FZ_CHECK(port <= 65535 && host[0] != '\0' && strlen(host) < sizeof host);
    snprintf(buf, sizeof buf, strchr(host, ':') ? "[%s]:%u" : "%s:%u", host, port);
    FZ_CHECK(cw__listen_parse(buf, host2, sizeof host2, &port2) == 0);
    FZ_CHECK(strcmp(host, host2) == 0 && port == port2);
    /* A host that does not fit is refused, never cut. */
    char small[4];
    if (strlen(host) >= sizeof small)
        FZ_CHECK(cw__listen_parse(s, small, sizeof small, &port2) != 0);
}

static void check_time(const char *s)
{
    int64_t ms, again, any;
    char buf[CW_ISO8601_LEN];
    bool iso = cw_dlq_parse_iso8601(s, &ms);
    /* --since/--until: an age from a fixed now, ISO 8601, or local time. */
    bool t = cw_dlq_parse_time(s, INT64_C(1764020000000), &any);
    if (!iso)
        return;
    FZ_CHECK(t);
    if (ms < FZ_MS_MIN || ms > FZ_MS_MAX)
        return;
    cw__iso8601(ms, buf);
    FZ_CHECK(strlen(buf) == 24);
    FZ_CHECK(cw_dlq_parse_iso8601(buf, &again));
    if (again != ms)
        fprintf(stderr, "'%s' = %" PRId64 " ms, written '%s' = %" PRId64 " ms\n", s, ms, buf,
                again);
    FZ_CHECK(again == ms);
}

static void check_url_mask(const char *s)
{
    static const unsigned long caps[] = {1, 2, 9, 64, 1024};
    char out[1024];
    for (size_t i = 0; i < sizeof caps / sizeof *caps; i++) {
        memset(out, 'x', sizeof out);
        cw__url_mask(s, out, caps[i]);
        FZ_CHECK(strlen(out) < caps[i]);
    }
    /* The password runs from the first ':' of the user information (after
     * "://", or from the start without a scheme, up to the last '@') to that
     * '@': the masked URL is the URL with exactly that replaced by ":***". */
    const char *scheme = strstr(s, "://");
    const char *user = scheme ? scheme + 3 : s;
    const char *at = strrchr(user, '@');
    const char *colon = at ? memchr(user, ':', (size_t)(at - user)) : NULL;
    size_t len = strlen(s);
    if (!colon) {
        FZ_CHECK(len >= sizeof out || strcmp(out, s) == 0);
        return;
    }
    size_t head = (size_t)(colon - s), tail = strlen(at);
    if (head + 4 + tail >= sizeof out)
        return; /* cut: checked for length above */
    FZ_CHECK(strlen(out) == head + 4 + tail);
    FZ_CHECK(memcmp(out, s, head) == 0 && memcmp(out + head, ":***", 4) == 0 &&
             strcmp(out + head + 4, at) == 0);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    char *s = malloc(size + 1);
    if (!s)
        return 0;
    memcpy(s, data, size);
    s[size] = '\0';

    check_duration(s);
    check_size(s);
    check_int(s);
    check_bool(s);
    check_listen(s);
    check_time(s);
    check_url_mask(s);

    free(s);
    return 0;
}
