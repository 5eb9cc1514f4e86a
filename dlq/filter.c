/* Selecting dead-lettered messages, and counting them by group. */
#include <ctype.h>
#include <fnmatch.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "dlq/dlq.h"
#include "framework/error.h"

/* ---- filters ------------------------------------------------------------ */

bool cw_dlq_filter_active(const cw_dlq_filter *f)
{
    return f && (f->n_ids || f->type || f->saga_id || f->error_class || f->grep || f->has_since ||
                 f->has_until);
}

bool cw_dlq_filter_match(const cw_dlq_filter *f, const cw_dlq_msg *m)
{
    if (!f)
        return true;
    if (f->n_ids) {
        bool any = false;
        for (size_t i = 0; i < f->n_ids && !any; i++)
            any = strcmp(f->ids[i], m->message_id) == 0;
        if (!any)
            return false;
    }
    if (f->type && fnmatch(f->type, m->type, 0) != 0)
        return false;
    if (f->saga_id && strcmp(f->saga_id, m->saga_id) != 0)
        return false;
    if (f->error_class && strcmp(f->error_class, m->error_class) != 0)
        return false;
    if (f->grep && !strcasestr(m->error, f->grep))
        return false;
    if ((f->has_since || f->has_until) && !m->failed_at_ms)
        return false; /* no time: outside every range */
    if (f->has_since && m->failed_at_ms < f->since_ms)
        return false;
    if (f->has_until && m->failed_at_ms >= f->until_ms)
        return false;
    return true;
}

/* "90s", "30m", "2h", "7d", "2w" before now. */
static bool parse_age(const char *s, int64_t now_ms, int64_t *out_ms)
{
    char *end;
    if (!isdigit((unsigned char)s[0]))
        return false;
    unsigned long long n = strtoull(s, &end, 10);
    int64_t unit;
    if (strcmp(end, "s") == 0)
        unit = 1000;
    else if (strcmp(end, "m") == 0 || strcmp(end, "min") == 0)
        unit = 60 * 1000;
    else if (strcmp(end, "h") == 0)
        unit = 3600 * 1000;
    else if (strcmp(end, "d") == 0)
        unit = 86400 * 1000;
    else if (strcmp(end, "w") == 0)
        unit = 7 * 86400 * 1000;
    else
        return false;
    if (n > (unsigned long long)(INT64_MAX / unit))
        return false;
    *out_ms = now_ms - (int64_t)n * unit;
    return true;
}

/* "2026-11-24", "2026-11-24T21:50", "2026-11-24 21:50:03" in local time. */
static bool parse_local(const char *s, int64_t *out_ms)
{
    int y, mo, d, h = 0, mi = 0, sec = 0, n = 0;
    if (sscanf(s, "%4d-%2d-%2d%n", &y, &mo, &d, &n) != 3)
        return false;
    const char *p = s + n;
    if (*p == 'T' || *p == ' ') {
        int k = 0;
        if (sscanf(p + 1, "%2d:%2d%n", &h, &mi, &k) != 2)
            return false;
        p += 1 + k;
        if (*p == ':') {
            if (sscanf(p + 1, "%2d%n", &sec, &k) != 1)
                return false;
            p += 1 + k;
        }
    }
    if (*p || mo < 1 || mo > 12 || d < 1 || d > 31 || h > 23 || mi > 59 || sec > 60)
        return false;
    struct tm tm = {.tm_year = y - 1900,
                    .tm_mon = mo - 1,
                    .tm_mday = d,
                    .tm_hour = h,
                    .tm_min = mi,
                    .tm_sec = sec,
                    .tm_isdst = -1};
    time_t t = mktime(&tm);
    if (t == (time_t)-1)
        return false;
    *out_ms = (int64_t)t * 1000;
    return true;
}

bool cw_dlq_parse_time(const char *s, int64_t now_ms, int64_t *out_ms)
{
    if (!s || !*s)
        return false;
    return parse_age(s, now_ms, out_ms) || cw_dlq_parse_iso8601(s, out_ms) ||
           parse_local(s, out_ms);
}

/* ---- groups ------------------------------------------------------------- */

static uint64_t group_hash(const char *type, const char *cls)
{
    uint64_t h = 1469598103934665603ULL; /* FNV-1a */
    for (const unsigned char *p = (const unsigned char *)type; *p; p++)
        h = (h ^ *p) * 1099511628211ULL;
    h = (h ^ 0xff) * 1099511628211ULL;
    for (const unsigned char *p = (const unsigned char *)cls; *p; p++)
        h = (h ^ *p) * 1099511628211ULL;
    return h;
}

/* Rebuilds the index with `n_slots` slots (a power of two, over 2n). */
static int groups_rehash(cw_dlq_groups *gs, size_t n_slots)
{
    size_t *slots = malloc(n_slots * sizeof *slots);
    if (!slots)
        return cw__error(CW_STATUS_NOMEM, "out of memory grouping messages");
    for (size_t i = 0; i < n_slots; i++)
        slots[i] = SIZE_MAX;
    for (size_t i = 0; i < gs->n; i++) {
        size_t k = (size_t)(group_hash(gs->g[i].type, gs->g[i].error_class) & (n_slots - 1));
        while (slots[k] != SIZE_MAX)
            k = (k + 1) & (n_slots - 1);
        slots[k] = i;
    }
    free(gs->slots);
    gs->slots = slots;
    gs->n_slots = n_slots;
    return 0;
}

static void count_reason(cw_dlq_group *g, const char *reason)
{
    /* A long reason is kept cut at a character boundary, and compared as
     * cut: the same reason is one reason however often it comes. */
    size_t n = strlen(reason), cap = sizeof g->reasons[0].text;
    if (n >= cap) {
        n = cap - 1;
        while (n > 0 && ((unsigned char)reason[n] & 0xC0) == 0x80)
            n--;
    }
    for (size_t i = 0; i < g->n_reasons; i++) {
        if (strlen(g->reasons[i].text) == n && memcmp(g->reasons[i].text, reason, n) == 0) {
            g->reasons[i].count++;
            return;
        }
    }
    if (g->n_reasons == CW_DLQ_GROUP_REASONS) {
        g->other_reasons++;
        return;
    }
    char *dst = g->reasons[g->n_reasons].text;
    memcpy(dst, reason, n);
    dst[n] = '\0';
    g->reasons[g->n_reasons++].count = 1;
}

int cw_dlq_groups_add(cw_dlq_groups *gs, const cw_dlq_msg *m)
{
    int rc;
    if (gs->n_slots == 0) {
        size_t n_slots = 64;
        while (n_slots < gs->n * 4)
            n_slots *= 2;
        if ((rc = groups_rehash(gs, n_slots)))
            return rc;
    }
    size_t mask = gs->n_slots - 1;
    size_t k = (size_t)(group_hash(m->type, m->error_class) & mask);
    cw_dlq_group *g = NULL;
    for (; gs->slots[k] != SIZE_MAX; k = (k + 1) & mask) {
        cw_dlq_group *c = &gs->g[gs->slots[k]];
        if (strcmp(c->type, m->type) == 0 && strcmp(c->error_class, m->error_class) == 0) {
            g = c;
            break;
        }
    }
    if (!g) {
        if (gs->n == gs->cap) {
            size_t cap = gs->cap ? gs->cap * 2 : 16;
            cw_dlq_group *ng = realloc(gs->g, cap * sizeof *ng);
            if (!ng)
                return cw__error(CW_STATUS_NOMEM, "out of memory grouping messages");
            gs->g = ng;
            gs->cap = cap;
        }
        g = &gs->g[gs->n];
        memset(g, 0, sizeof *g);
        snprintf(g->type, sizeof g->type, "%s", m->type);
        snprintf(g->error_class, sizeof g->error_class, "%s", m->error_class);
        gs->slots[k] = gs->n++;
        if (gs->n * 2 > gs->n_slots) {
            size_t idx = gs->n - 1;
            if ((rc = groups_rehash(gs, gs->n_slots * 2)))
                return rc;
            g = &gs->g[idx];
        }
    }
    count_reason(g, m->error);
    g->count++;
    if (m->failed_at_ms) {
        if (!g->oldest_ms || m->failed_at_ms < g->oldest_ms)
            g->oldest_ms = m->failed_at_ms;
        if (m->failed_at_ms > g->newest_ms)
            g->newest_ms = m->failed_at_ms;
    }
    return 0;
}

static int group_cmp(const void *a, const void *b)
{
    const cw_dlq_group *x = a, *y = b;
    if (x->count != y->count)
        return x->count > y->count ? -1 : 1;
    int c = strcmp(x->type, y->type);
    return c ? c : strcmp(x->error_class, y->error_class);
}

void cw_dlq_groups_sort(cw_dlq_groups *gs)
{
    if (gs->n > 1)
        qsort(gs->g, gs->n, sizeof *gs->g, group_cmp);
    /* The index no longer matches the order: the next add rebuilds it. */
    free(gs->slots);
    gs->slots = NULL;
    gs->n_slots = 0;
}

void cw_dlq_groups_free(cw_dlq_groups *gs)
{
    free(gs->g);
    free(gs->slots);
    memset(gs, 0, sizeof *gs);
}
