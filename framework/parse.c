/* Parsing of durations, sizes, integers and booleans written by people. */
#include <ctype.h>
#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "framework/parse.h"

/* A unit suffix and what one of it is worth. */
typedef struct cw_unit {
    const char *name;
    uint64_t factor;
} cw_unit;

static const cw_unit cw_duration_units[] = {
    {"", 1000},       {"ms", 1},          {"s", 1000},
    {"m", 60 * 1000}, {"h", 3600 * 1000}, {"d", 24 * 3600 * 1000},
};

#define CW_KI UINT64_C(1024)
#define CW_KD UINT64_C(1000)

static const cw_unit cw_size_units[] = {
    {"", 1},
    {"B", 1},
    {"k", CW_KI},
    {"K", CW_KI},
    {"M", CW_KI *CW_KI},
    {"G", CW_KI *CW_KI *CW_KI},
    {"T", CW_KI *CW_KI *CW_KI *CW_KI},
    {"KiB", CW_KI},
    {"MiB", CW_KI *CW_KI},
    {"GiB", CW_KI *CW_KI *CW_KI},
    {"TiB", CW_KI *CW_KI *CW_KI *CW_KI},
    {"kB", CW_KD},
    {"KB", CW_KD},
    {"MB", CW_KD *CW_KD},
    {"GB", CW_KD *CW_KD *CW_KD},
    {"TB", CW_KD *CW_KD *CW_KD *CW_KD},
};

/* Parses "<digits>[ ]<unit>" where the unit is one of `units` (exact match),
 * and the product fits in `max`. No sign, no leading space, no fraction. */
static bool cw_parse_scaled(const char *s, const cw_unit *units, size_t n_units, uint64_t max,
                            uint64_t *out)
{
    uint64_t n = 0;
    const char *p = s;

    if (s == NULL || !isdigit((unsigned char)*p))
        return false;
    for (; isdigit((unsigned char)*p); p++) {
        unsigned digit = (unsigned)(*p - '0');
        if (n > (UINT64_MAX - digit) / 10)
            return false;
        n = n * 10 + digit;
    }
    while (*p == ' ' || *p == '\t')
        p++;
    for (size_t i = 0; i < n_units; i++) {
        if (strcmp(p, units[i].name) != 0)
            continue;
        /* "5 " (space, then no unit) is trailing junk, not a bare number. */
        if (*p == '\0' && isspace((unsigned char)p[-1]))
            return false;
        if (n > max / units[i].factor)
            return false;
        *out = n * units[i].factor;
        return true;
    }
    return false;
}

bool cw__parse_duration_ms(const char *s, int64_t *out_ms)
{
    uint64_t ms;

    if (!cw_parse_scaled(s, cw_duration_units, sizeof cw_duration_units / sizeof *cw_duration_units,
                         INT64_MAX, &ms))
        return false;
    *out_ms = (int64_t)ms;
    return true;
}

bool cw__parse_size(const char *s, uint64_t *out_bytes)
{
    return cw_parse_scaled(s, cw_size_units, sizeof cw_size_units / sizeof *cw_size_units,
                           UINT64_MAX, out_bytes);
}

bool cw__parse_int(const char *s, long long min, long long max, long long *out)
{
    char *end;
    long long v;
    const char *digits = s;

    if (s == NULL)
        return false;
    /* strtoll() would skip leading space and accept an empty number. */
    if (*digits == '-' || *digits == '+')
        digits++;
    if (!isdigit((unsigned char)*digits))
        return false;
    errno = 0;
    v = strtoll(s, &end, 10);
    if (errno != 0 || *end != '\0' || v < min || v > max)
        return false;
    *out = v;
    return true;
}

bool cw__parse_bool(const char *s, bool *out)
{
    static const char *const yes[] = {"true", "yes", "on", "1"};
    static const char *const no[] = {"false", "no", "off", "0"};

    if (s == NULL)
        return false;
    for (size_t i = 0; i < sizeof yes / sizeof *yes; i++) {
        if (strcasecmp(s, yes[i]) == 0) {
            *out = true;
            return true;
        }
        if (strcasecmp(s, no[i]) == 0) {
            *out = false;
            return true;
        }
    }
    return false;
}
