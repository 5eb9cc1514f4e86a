/* The keys of the fixed sections of the pool configuration: the checker of
 * each type of value, the setters of the keys whose checks are their own,
 * and the table, one row a key (config_keys.h says what a row holds). */
#include <ctype.h>
#include <errno.h>
#include <glob.h>
#include <limits.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/stat.h>
#include <unistd.h>

#include "compworker/status.h"
#include "framework/argv.h"
#include "framework/config_keys.h"
#include "framework/listen.h"
#include "framework/outbox.h"
#include "framework/parse.h"
#include "framework/registry.h"
#include "framework/url.h"

#define CW_AMQP_NAME_MAX 255 /* exchange and queue names are AMQP short strings */

/* Choices are stored as int: an enum of small values is one here. */
_Static_assert(sizeof(cw_jitter) == sizeof(int), "a choice is stored as an int");

/* ---- helpers ------------------------------------------------------------ */

/* Replaces *dst by a copy of `src`. */
static int cw_set_string(char **dst, const char *src)
{
    char *copy = strdup(src);

    if (copy == NULL)
        return CW_STATUS_NOMEM;
    free(*dst);
    *dst = copy;
    return 0;
}

/* "dir/rel" in a new string, without doubling a trailing slash of `dir`. */
char *cw__config_path_join(const char *dir, const char *rel)
{
    size_t len = strlen(dir);
    const char *sep = (len > 0 && dir[len - 1] == '/') ? "" : "/";
    char *out;

    if (asprintf(&out, "%s%s%s", dir, sep, rel) < 0)
        return NULL;
    return out;
}

/* `path` made absolute against `dir` when it is relative, in a new string. */
static char *cw_path_resolve(const char *dir, const char *path)
{
    return path[0] == '/' ? strdup(path) : cw__config_path_join(dir, path);
}

/* `s` with glob(3) metacharacters escaped, so a directory holding them is
 * taken literally when a pattern is appended to it. */
static char *cw_glob_escape(const char *s)
{
    char *out = malloc(2 * strlen(s) + 1);
    char *o = out;

    if (out == NULL)
        return NULL;
    for (; *s != '\0'; s++) {
        if (strchr("\\*?[", *s) != NULL)
            *o++ = '\\';
        *o++ = *s;
    }
    *o = '\0';
    return out;
}

/* [A-Za-z0-9_.-]{1,max} */
bool cw__config_is_name(const char *s, size_t len, size_t max)
{
    if (len == 0 || len > max)
        return false;
    for (size_t i = 0; i < len; i++) {
        unsigned char c = (unsigned char)s[i];
        if (!isalnum(c) && c != '_' && c != '.' && c != '-')
            return false;
    }
    return true;
}

/* ---- the checker of each type ------------------------------------------ */

/* An exchange or queue name: 1..255 bytes, no control characters, not in the
 * broker's reserved "amq." namespace. */
static int cw_check_amqp_name(const char *value, char *why, size_t why_len)
{
    size_t len = strlen(value);

    if (len == 0) {
        snprintf(why, why_len, "value is empty");
        return CW_STATUS_CONFIG;
    }
    if (len > CW_AMQP_NAME_MAX) {
        snprintf(why, why_len, "'%.40s...' is longer than %d bytes", value, CW_AMQP_NAME_MAX);
        return CW_STATUS_CONFIG;
    }
    for (size_t i = 0; i < len; i++) {
        if (iscntrl((unsigned char)value[i])) {
            snprintf(why, why_len, "'%s' contains a control character", value);
            return CW_STATUS_CONFIG;
        }
    }
    if (strncmp(value, "amq.", 4) == 0) {
        snprintf(why, why_len, "'%s' is in the broker's reserved 'amq.' namespace", value);
        return CW_STATUS_CONFIG;
    }
    return 0;
}

/* An integer in [min, max]. */
static int cw_check_int(const char *value, long long min, long long max, long long *out, char *why,
                        size_t why_len)
{
    if (!cw__parse_int(value, LLONG_MIN, LLONG_MAX, out)) {
        snprintf(why, why_len, "'%s' is not an integer", value);
        return CW_STATUS_CONFIG;
    }
    if (*out < min || *out > max) {
        snprintf(why, why_len, "'%s' is not between %lld and %lld", value, min, max);
        return CW_STATUS_CONFIG;
    }
    return 0;
}

/* A path, made absolute against the directory of the file; when `readable`,
 * of a file that must be readable now (TLS material). */
static int cw_check_path(cw_config_ctx *ctx, char **dst, const char *value, bool readable,
                         char *why, size_t why_len)
{
    char *path;

    if (*value == '\0') {
        snprintf(why, why_len, "value is empty");
        return CW_STATUS_CONFIG;
    }
    path = cw_path_resolve(ctx->dir, value);
    if (path == NULL)
        return CW_STATUS_NOMEM;
    if (readable && access(path, R_OK) != 0) {
        snprintf(why, why_len, "'%s' cannot be read: %s", path, strerror(errno));
        free(path);
        return CW_STATUS_CONFIG;
    }
    free(*dst);
    *dst = path;
    return 0;
}

/* A duration in [k->min, k->max]. */
static int cw_check_duration(const cw_key *k, const char *value, int64_t *out, char *why,
                             size_t why_len)
{
    int64_t ms;

    if (!cw__parse_duration_ms(value, &ms)) {
        snprintf(why, why_len, "'%s' is not a duration (e.g. %s)", value, k->hint);
        return CW_STATUS_CONFIG;
    }
    if (ms < k->min || ms > k->max) {
        snprintf(why, why_len, "'%s' %s", value, k->range);
        return CW_STATUS_CONFIG;
    }
    *out = ms;
    return 0;
}

/* A size in [k->min, k->max]. */
static int cw_check_size(const cw_key *k, const char *value, uint64_t *out, char *why,
                         size_t why_len)
{
    uint64_t bytes;

    if (!cw__parse_size(value, &bytes)) {
        snprintf(why, why_len, "'%s' is not a size (e.g. 65536, 512KiB, 1MiB)", value);
        return CW_STATUS_CONFIG;
    }
    if (bytes < (uint64_t)k->min || bytes > (uint64_t)k->max) {
        snprintf(why, why_len, "'%s' %s", value, k->range);
        return CW_STATUS_CONFIG;
    }
    *out = bytes;
    return 0;
}

/* The number of words of a NULL-terminated list. */
static size_t cw_count(const char *const *words)
{
    size_t n = 0;

    while (words[n] != NULL)
        n++;
    return n;
}

/* One of `choices` (case-insensitive); *out is its index. */
static int cw_check_choice(const char *value, const char *const *choices, int *out, char *why,
                           size_t why_len)
{
    size_t n = cw_count(choices);
    size_t used;

    for (size_t i = 0; i < n; i++) {
        if (strcasecmp(value, choices[i]) == 0) {
            *out = (int)i;
            return 0;
        }
    }
    used = (size_t)snprintf(why, why_len, "'%s' is not one of", value);
    for (size_t i = 0; i < n && used < why_len; i++)
        used += (size_t)snprintf(why + used, why_len - used, "%s %s", i ? "," : "", choices[i]);
    return CW_STATUS_CONFIG;
}

/* true/false, yes/no, on/off, 1/0; or the row's words for true and false. */
static int cw_check_bool(const cw_key *k, const char *value, bool *out, char *why, size_t why_len)
{
    int i;
    int rc;

    if (k->choices != NULL) {
        rc = cw_check_choice(value, k->choices, &i, why, why_len);
        if (rc == 0)
            *out = (i == 0);
        return rc;
    }
    if (!cw__parse_bool(value, out)) {
        snprintf(why, why_len, "'%s' is not true or false", value);
        return CW_STATUS_CONFIG;
    }
    return 0;
}

int cw__config_key_set(const cw_key *k, cw_config_ctx *ctx, void *dst, const char *value, char *why,
                       size_t why_len)
{
    long long v;
    int i;
    int rc;

    if (k->set != NULL)
        return k->set(k, ctx, dst, value, why, why_len);
    switch (k->type) {
    case CW_T_AMQP_NAME:
        rc = cw_check_amqp_name(value, why, why_len);
        return rc ? rc : cw_set_string(dst, value);
    case CW_T_PATH: return cw_check_path(ctx, dst, value, false, why, why_len);
    case CW_T_FILE: return cw_check_path(ctx, dst, value, true, why, why_len);
    case CW_T_BROKER_URLS:
        /* Never echo the value: it may hold a password. */
        if (!cw__url_list_valid(value, why, why_len))
            return CW_STATUS_CONFIG;
        return cw_set_string(dst, value);
    case CW_T_HTTP_URL:
        /* Never echo the value: a webhook URL often carries a token. */
        if (!cw__url_webhook_valid(value, why, why_len))
            return CW_STATUS_CONFIG;
        return cw_set_string(dst, value);
    case CW_T_PG_URL:
        /* Never echo the value: it may hold a password. */
        if (!cw__url_pg_valid(value, why, why_len))
            return CW_STATUS_CONFIG;
        return cw_set_string(dst, value);
    case CW_T_UINT:
        rc = cw_check_int(value, k->min, k->max, &v, why, why_len);
        if (rc == 0)
            *(unsigned *)dst = (unsigned)v;
        return rc;
    case CW_T_DURATION: return cw_check_duration(k, value, dst, why, why_len);
    case CW_T_SIZE: return cw_check_size(k, value, dst, why, why_len);
    case CW_T_BOOL: return cw_check_bool(k, value, dst, why, why_len);
    case CW_T_CHOICE:
        rc = cw_check_choice(value, k->choices, &i, why, why_len);
        if (rc == 0)
            *(int *)dst = i;
        return rc;
    case CW_T_STRING:
    case CW_T_DECIMAL:
    case CW_T_WORDS: break; /* rows of these types bring their own setter */
    }
    snprintf(why, why_len, "the key has no checker");
    return CW_STATUS_CONFIG;
}

int cw__config_key_default(const cw_key *k, cw_config *cfg)
{
    void *dst = cw__config_field(k, cfg);
    size_t n;

    if (cw__config_type_is_string(k->type)) {
        if (k->def.s != NULL && (*(char **)dst = strdup(k->def.s)) == NULL)
            return CW_STATUS_NOMEM;
        return 0;
    }
    switch (k->type) {
    case CW_T_UINT: *(unsigned *)dst = (unsigned)k->def.i; return 0;
    case CW_T_DURATION: *(int64_t *)dst = k->def.i; return 0;
    case CW_T_SIZE: *(uint64_t *)dst = (uint64_t)k->def.i; return 0;
    case CW_T_DECIMAL: *(double *)dst = k->def.d; return 0;
    case CW_T_BOOL: *(bool *)dst = k->def.i != 0; return 0;
    case CW_T_CHOICE: *(int *)dst = (int)k->def.i; return 0;
    case CW_T_WORDS:
        if (k->def.words == NULL)
            return 0;
        n = cw_count(k->def.words);
        if ((*(char ***)dst = calloc(n + 1, sizeof(char *))) == NULL)
            return CW_STATUS_NOMEM;
        for (size_t i = 0; i < n; i++) {
            if (((*(char ***)dst)[i] = strdup(k->def.words[i])) == NULL)
                return CW_STATUS_NOMEM;
        }
        return 0;
    default: /* the strings, above */ return 0;
    }
}

void cw__config_key_free(const cw_key *k, cw_config *cfg)
{
    void *dst = cw__config_field(k, cfg);

    if (cw__config_type_is_string(k->type)) {
        free(*(char **)dst);
        *(char **)dst = NULL;
    } else if (k->type == CW_T_WORDS) {
        cw__argv_free(*(char ***)dst);
        *(char ***)dst = NULL;
    }
}

/* ---- keys with checks of their own -------------------------------------- */

/* [broker] heartbeat: 0 turns heartbeats off; anything else is a duration
 * in the row's range. */
static int cw_set_heartbeat(const cw_key *k, cw_config_ctx *ctx, void *dst, const char *value,
                            char *why, size_t why_len)
{
    int64_t ms;

    (void)ctx;
    if (cw__parse_duration_ms(value, &ms) && ms == 0) {
        *(int64_t *)dst = 0;
        return 0;
    }
    return cw_check_duration(k, value, dst, why, why_len);
}

/* [pool] name: it names the queues and the store, so only a plain name. */
static int cw_set_name(const cw_key *k, cw_config_ctx *ctx, void *dst, const char *value, char *why,
                       size_t why_len)
{
    (void)k;
    (void)ctx;
    if (!cw__config_is_name(value, strlen(value), CW_NAME_MAX)) {
        snprintf(why, why_len, "'%s' is not 1 to %d of A-Z a-z 0-9 _ . -", value, CW_NAME_MAX);
        return CW_STATUS_CONFIG;
    }
    return cw_set_string(dst, value);
}

/* Appends a copy of `path` to cfg->plugins unless it is there already (two
 * patterns may match the same file). */
static int cw_plugins_append(cw_config_ctx *ctx, const char *path)
{
    cw_config *cfg = ctx->cfg;

    for (size_t i = 0; i < cfg->n_plugins; i++) {
        if (strcmp(cfg->plugins[i], path) == 0)
            return 0;
    }
    if (cfg->n_plugins + 1 >= ctx->plugins_cap) {
        size_t cap = ctx->plugins_cap ? 2 * ctx->plugins_cap : 8;
        char **grown = realloc(cfg->plugins, cap * sizeof *grown);
        if (grown == NULL)
            return CW_STATUS_NOMEM;
        cfg->plugins = grown;
        ctx->plugins_cap = cap;
    }
    cfg->plugins[cfg->n_plugins] = strdup(path);
    if (cfg->plugins[cfg->n_plugins] == NULL)
        return CW_STATUS_NOMEM;
    cfg->plugins[++cfg->n_plugins] = NULL;
    return 0;
}

/* Expands one pattern of `plugins` and appends its matches, in glob order. */
static int cw_plugins_expand(cw_config_ctx *ctx, const char *pattern, char *why, size_t why_len)
{
    glob_t g;
    char *escaped_dir = NULL;
    char *full = NULL;
    int rc = 0;
    int grc;

    if (pattern[0] == '/') {
        full = strdup(pattern);
    } else {
        escaped_dir = cw_glob_escape(ctx->dir);
        full = escaped_dir ? cw__config_path_join(escaped_dir, pattern) : NULL;
    }
    if (full == NULL) {
        rc = CW_STATUS_NOMEM;
        goto out_free_pattern;
    }

    grc = glob(full, 0, NULL, &g);
    switch (grc) {
    case 0:
        for (size_t i = 0; i < g.gl_pathc && rc == 0; i++)
            rc = cw_plugins_append(ctx, g.gl_pathv[i]);
        break;
    case GLOB_NOMATCH:
        if (pattern[0] == '/')
            snprintf(why, why_len, "'%s' matches no file", pattern);
        else
            snprintf(why, why_len, "'%s' matches no file in %s", pattern, ctx->dir);
        rc = CW_STATUS_CONFIG;
        break;
    case GLOB_NOSPACE: rc = CW_STATUS_NOMEM; break;
    default:
        snprintf(why, why_len, "'%s' cannot be expanded (read error)", pattern);
        rc = CW_STATUS_CONFIG;
        break;
    }
    globfree(&g);

out_free_pattern:
    free(full);
    free(escaped_dir);
    return rc;
}

/* [pool] plugins: patterns separated by blanks, each expanded against the
 * directory of the file; the list is the files they match, each once. A
 * value from the environment or a flag replaces the file's list. */
static int cw_set_plugins(const cw_key *k, cw_config_ctx *ctx, void *dst, const char *value,
                          char *why, size_t why_len)
{
    char **plugins = *(char ***)dst;
    char *copy = strdup(value);
    char *save = NULL;
    size_t n_patterns = 0;
    int rc = 0;

    (void)k;
    if (copy == NULL)
        return CW_STATUS_NOMEM;
    for (size_t j = 0; j < ctx->cfg->n_plugins; j++)
        free(plugins[j]);
    ctx->cfg->n_plugins = 0;
    plugins[0] = NULL;
    for (char *p = strtok_r(copy, " \t", &save); p != NULL && rc == 0;
         p = strtok_r(NULL, " \t", &save)) {
        n_patterns++;
        rc = cw_plugins_expand(ctx, p, why, why_len);
    }
    if (rc == 0 && n_patterns == 0) {
        snprintf(why, why_len, "no path given");
        rc = CW_STATUS_CONFIG;
    }
    free(copy);
    return rc;
}

/* [pool] metrics_listen: HOST:PORT, or off (or empty). */
static int cw_set_metrics_listen(const cw_key *k, cw_config_ctx *ctx, void *dst, const char *value,
                                 char *why, size_t why_len)
{
    char host[256];
    unsigned port;

    (void)k;
    (void)ctx;
    if (*value == '\0' || strcasecmp(value, "off") == 0) {
        free(*(char **)dst);
        *(char **)dst = NULL;
        return 0;
    }
    if (cw__listen_parse(value, host, sizeof host, &port) != 0) {
        snprintf(why, why_len,
                 "'%s' is not HOST:PORT (e.g. 127.0.0.1:9464, [::1]:9464, 0.0.0.0:9464; off)",
                 value);
        return CW_STATUS_CONFIG;
    }
    return cw_set_string(dst, value);
}

/* [store] schema: a PostgreSQL identifier, quoted when used, so any
 * printable text of 1 to 63 bytes (NAMEDATALEN - 1). */
static int cw_set_pg_schema(const cw_key *k, cw_config_ctx *ctx, void *dst, const char *value,
                            char *why, size_t why_len)
{
    (void)k;
    (void)ctx;
    size_t n = strlen(value);
    if (n == 0 || n > 63) {
        snprintf(why, why_len, "a schema name is 1 to 63 bytes, not %zu", n);
        return CW_STATUS_CONFIG;
    }
    for (size_t i = 0; i < n; i++) {
        if ((unsigned char)value[i] < 0x20 || value[i] == 0x7f) {
            snprintf(why, why_len, "a schema name holds no control character");
            return CW_STATUS_CONFIG;
        }
    }
    return cw_set_string(dst, value);
}

/* [relay] table: framework/outbox.h says what a table name may be. */
static int cw_set_outbox_table(const cw_key *k, cw_config_ctx *ctx, void *dst, const char *value,
                               char *why, size_t why_len)
{
    (void)k;
    (void)ctx;
    if (!cw__outbox_table_valid(value, why, why_len))
        return CW_STATUS_CONFIG;
    return cw_set_string(dst, value);
}

/* [retry] backoff_rate: a decimal number written by a person, digits with
 * at most one '.', so that strtod() never sees a sign, an exponent, hex,
 * "inf" or "nan". */
static int cw_set_backoff_rate(const cw_key *k, cw_config_ctx *ctx, void *dst, const char *value,
                               char *why, size_t why_len)
{
    size_t digits = strspn(value, "0123456789");
    const char *rest = value + digits;
    char *end;
    double v;

    (void)k;
    (void)ctx;
    if (*rest == '.') {
        size_t frac = strspn(rest + 1, "0123456789");
        digits += frac;
        rest += 1 + frac;
    }
    if (digits == 0 || *rest != '\0') {
        snprintf(why, why_len, "'%s' is not a decimal number (e.g. 2, 1.5)", value);
        return CW_STATUS_CONFIG;
    }
    /* Out of range (ERANGE) gives inf or a tiny value: refused below. */
    v = strtod(value, &end);
    if (*end != '\0' || !(v >= 1.0 && v <= CW_RETRY_BACKOFF_RATE_MAX)) {
        snprintf(why, why_len, "'%s' is not between 1.0 and %.0f", value,
                 CW_RETRY_BACKOFF_RATE_MAX);
        return CW_STATUS_CONFIG;
    }
    *(double *)dst = v;
    return 0;
}

/* [handler TYPE] rate_limit: R/s, R/m or R/h, R a decimal number above 0
 * (at most 1,000,000 a second); stored per second. */
static int cw_set_rate(const cw_key *k, cw_config_ctx *ctx, void *dst, const char *value, char *why,
                       size_t why_len)
{
    (void)k;
    (void)ctx;
    const char *slash = strchr(value, '/');
    size_t digits = slash ? strspn(value, "0123456789") : 0;
    const char *rest = value + digits;
    if (slash && *rest == '.') {
        size_t frac = strspn(rest + 1, "0123456789");
        digits += frac;
        rest += 1 + frac;
    }
    static const struct {
        const char *unit;
        double per_s;
    } units[] = {{"s", 1.0}, {"m", 1.0 / 60}, {"h", 1.0 / 3600}};
    double scale = 0;
    for (size_t i = 0; slash && rest == slash && i < sizeof units / sizeof *units; i++) {
        if (strcmp(slash + 1, units[i].unit) == 0)
            scale = units[i].per_s;
    }
    double v = digits && scale ? strtod(value, NULL) * scale : 0;
    if (!digits || !scale) {
        snprintf(why, why_len, "'%s' is not a rate (e.g. 10/s, 600/m, 0.5/s)", value);
        return CW_STATUS_CONFIG;
    }
    if (!(v > 0 && v <= 1e6)) {
        snprintf(why, why_len, "'%s' is not above 0 and at most 1000000/s", value);
        return CW_STATUS_CONFIG;
    }
    *(double *)dst = v;
    return 0;
}

static void cw_fmt_rate(const cw_key *k, const cw_config *cfg, const void *src, char *out,
                        size_t cap, char *note, size_t note_cap)
{
    (void)k;
    (void)cfg;
    (void)note;
    (void)note_cap;
    snprintf(out, cap, "%g/s", *(const double *)src);
}

/* [retry] max_delay: a duration the delay topology can serve. */
static int cw_set_max_delay(const cw_key *k, cw_config_ctx *ctx, void *dst, const char *value,
                            char *why, size_t why_len)
{
    int64_t ms;

    (void)ctx;
    if (cw__parse_duration_ms(value, &ms) && ms > k->max) {
        snprintf(why, why_len,
                 "'%s' is more than the longest delay the broker topology serves "
                 "(%lldms, about 29h)",
                 value, k->max);
        return CW_STATUS_CONFIG;
    }
    return cw_check_duration(k, value, dst, why, why_len);
}

/* [pool] saga_step_types: task types, separated by blanks. */
static int cw_set_types(const cw_key *k, cw_config_ctx *ctx, void *dst, const char *value,
                        char *why, size_t why_len)
{
    (void)k;
    (void)ctx;
    char **words = NULL;
    int rc = cw__argv_split(&words, value, why, why_len);
    if (rc != 0)
        return CW_STATUS_CONFIG;
    for (char **w = words; *w; w++) {
        if (!cw__type_valid(*w, strlen(*w))) {
            snprintf(why, why_len, "'%.64s' is not a task type (1 to 255 of A-Z a-z 0-9 . _ : -)",
                     *w);
            cw__argv_free(words);
            return CW_STATUS_CONFIG;
        }
    }
    cw__argv_free(*(char ***)dst);
    *(char ***)dst = words;
    return 0;
}

/* [alert] command: a program given by its absolute path (it is run with
 * execve(), without a shell or a PATH search), and its arguments. */
static int cw_set_command(const cw_key *k, cw_config_ctx *ctx, void *dst, const char *value,
                          char *why, size_t why_len)
{
    char **argv = NULL;
    struct stat st;
    int rc = cw__argv_split(&argv, value, why, why_len);

    (void)k;
    (void)ctx;
    if (rc != 0)
        return rc == CW_STATUS_INVALID_ARG ? CW_STATUS_CONFIG : rc;
    if (argv[0][0] != '/') {
        snprintf(why, why_len,
                 "'%s' is not an absolute path (the command is run without a shell or a "
                 "PATH search)",
                 argv[0]);
        rc = CW_STATUS_CONFIG;
    } else if (stat(argv[0], &st) != 0) {
        snprintf(why, why_len, "'%s': %s", argv[0], strerror(errno));
        rc = CW_STATUS_CONFIG;
    } else if (!S_ISREG(st.st_mode)) {
        snprintf(why, why_len, "'%s' is not a regular file", argv[0]);
        rc = CW_STATUS_CONFIG;
    } else if (access(argv[0], X_OK) != 0) {
        snprintf(why, why_len, "'%s' is not executable: %s", argv[0], strerror(errno));
        rc = CW_STATUS_CONFIG;
    }
    if (rc != 0) {
        cw__argv_free(argv);
        return rc;
    }
    cw__argv_free(*(char ***)dst);
    *(char ***)dst = argv;
    return 0;
}

/* [log] level: the log module's parser, which takes "warning" too. */
static int cw_set_log_level(const cw_key *k, cw_config_ctx *ctx, void *dst, const char *value,
                            char *why, size_t why_len)
{
    (void)k;
    (void)ctx;
    if (cw__log_level_parse(value, dst) != 0) {
        snprintf(why, why_len, "'%s' is not one of debug, info, warn, error", value);
        return CW_STATUS_CONFIG;
    }
    return 0;
}

/* ---- the table ---------------------------------------------------------- */

#define CW_AT(field) offsetof(cw_config, field)

static const char *const cw_no_words[] = {NULL};

const cw_key cw__config_keys[] = {
    /* [broker] */
    {"broker", "url", CW_T_BROKER_URLS, CW_AT(url), "CW_BROKER_URL",
     .def.s = "amqp://guest:guest@127.0.0.1:5672/", .env_alias = "CW_AMQP_URL"},
    {"broker", "exchange", CW_T_AMQP_NAME, CW_AT(exchange), "CW_BROKER_EXCHANGE",
     .def.s = "cw.tasks"},
    {"broker", "prefetch", CW_T_UINT, CW_AT(prefetch), "CW_BROKER_PREFETCH", .def.i = 256, .min = 1,
     .max = 65535, .fmt = cw__config_fmt_prefetch},
    {"broker", "batch", CW_T_UINT, CW_AT(batch), "CW_BROKER_BATCH", .def.i = 0, .min = 0,
     .max = 65535, .fmt = cw__config_fmt_batch},
    {"broker", "heartbeat", CW_T_DURATION, CW_AT(heartbeat_ms), "CW_BROKER_HEARTBEAT",
     .def.i = 60 * 1000, .min = 1000, .max = INT64_C(65535) * 1000, /* AMQP: a short, in s */
     .hint = "30s, 2m; 0 disables", .range = "is not 0 or between 1s and 65535s",
     .set = cw_set_heartbeat},
    {"broker", "tls_ca_file", CW_T_FILE, CW_AT(tls.ca_file), "CW_BROKER_TLS_CA_FILE",
     .unset_note = "the system's trusted CAs"},
    {"broker", "tls_cert_file", CW_T_FILE, CW_AT(tls.cert_file), "CW_BROKER_TLS_CERT_FILE",
     .unset_note = "no client certificate"},
    {"broker", "tls_key_file", CW_T_FILE, CW_AT(tls.key_file), "CW_BROKER_TLS_KEY_FILE",
     .def.s = NULL},
    {"broker", "tls_verify_peer", CW_T_BOOL, CW_AT(tls.verify_peer), "CW_BROKER_TLS_VERIFY_PEER",
     .def.i = true},
    {"broker", "tls_verify_hostname", CW_T_BOOL, CW_AT(tls.verify_hostname),
     "CW_BROKER_TLS_VERIFY_HOSTNAME", .def.i = true},

    /* [pool] */
    {"pool", "name", CW_T_STRING, CW_AT(name), "CW_POOL_NAME", .set = cw_set_name},
    {"pool", "queue", CW_T_AMQP_NAME, CW_AT(queue), "CW_POOL_QUEUE",
     .def.s = NULL /* "cw." + name */},
    {"pool", "queue_type", CW_T_CHOICE, CW_AT(queue_type), "CW_POOL_QUEUE_TYPE",
     .def.i = CW_QUEUE_QUORUM,
     .choices =
         (const char *const[]){[CW_QUEUE_QUORUM] = "quorum", [CW_QUEUE_CLASSIC] = "classic", NULL}},
    {"pool", "plugins", CW_T_WORDS, CW_AT(plugins), "CW_POOL_PLUGINS", .def.words = cw_no_words,
     .set = cw_set_plugins},
    {"pool", "max_body_size", CW_T_SIZE, CW_AT(max_body_size), "CW_POOL_MAX_BODY_SIZE",
     .def.i = 1 << 20, .min = 1, .max = 128 << 20, .range = "is not between 1 byte and 128MiB"},
    {"pool", "handler_timeout", CW_T_DURATION, CW_AT(handler_timeout_ms), "CW_POOL_HANDLER_TIMEOUT",
     .def.i = 5 * 60 * 1000, .min = 1, .max = INT64_MAX, .hint = "250ms, 5s, 2m, 1h, 7d",
     .range = "must be more than 0"},
    {"pool", "workers", CW_T_UINT, CW_AT(workers), "CW_POOL_WORKERS", .def.i = 1, .min = 1,
     .max = CW_POOL_MAX_WORKERS},
    {"pool", "concurrency", CW_T_UINT, CW_AT(concurrency), "CW_POOL_CONCURRENCY", .def.i = 1,
     .min = 1, .max = CW_POOL_MAX_CONCURRENCY},
    {"pool", "shutdown_timeout", CW_T_DURATION, CW_AT(shutdown_timeout_ms),
     "CW_POOL_SHUTDOWN_TIMEOUT", .def.i = 30 * 1000, .min = 1, .max = INT64_MAX,
     .hint = "250ms, 5s, 2m, 1h, 7d", .range = "must be more than 0"},
    {"pool", "metrics_listen", CW_T_STRING, CW_AT(metrics_listen), "CW_POOL_METRICS_LISTEN",
     .unset = "off", .set = cw_set_metrics_listen},
    {"pool", "saga_plans", CW_T_BOOL, CW_AT(saga_plans), "CW_POOL_SAGA_PLANS", .def.i = false},
    {"pool", "saga_step_types", CW_T_WORDS, CW_AT(saga_step_types), "CW_POOL_SAGA_STEP_TYPES",
     .def.words = cw_no_words, .set = cw_set_types},

    /* [store] */
    {"store", "backend", CW_T_CHOICE, CW_AT(store_backend), "CW_STORE_BACKEND",
     .def.i = CW_STORE_SQLITE,
     .choices = (const char *const[]){[CW_STORE_SQLITE] = "sqlite",
                                      [CW_STORE_MEMORY] = "memory",
                                      [CW_STORE_POSTGRESQL] = "postgresql",
                                      NULL}},
    {"store", "path", CW_T_PATH, CW_AT(store_path), "CW_STORE_PATH",
     .def.s = NULL /* var/<name>.db beside the file */},
    {"store", "url", CW_T_PG_URL, CW_AT(store_url), "CW_STORE_URL", .unset = ""},
    {"store", "schema", CW_T_STRING, CW_AT(store_schema), "CW_STORE_SCHEMA", .def.s = "compworker",
     .set = cw_set_pg_schema},
    {"store", "lease", CW_T_DURATION, CW_AT(lease_ms), "CW_STORE_LEASE", .def.i = 5 * 60 * 1000,
     .min = 1, .max = INT64_MAX, .hint = "250ms, 5s, 2m, 1h, 7d", .range = "must be more than 0"},
    {"store", "retention", CW_T_DURATION, CW_AT(retention_ms), "CW_STORE_RETENTION",
     .def.i = INT64_C(7) * 24 * 3600 * 1000, .min = 1, .max = INT64_MAX,
     .hint = "250ms, 5s, 2m, 1h, 7d", .range = "must be more than 0"},
    {"store", "synchronous", CW_T_BOOL, CW_AT(store_sync_full), "CW_STORE_SYNCHRONOUS",
     .def.i = true, .choices = (const char *const[]){"full", "normal", NULL}},

    /* [retry]: the pool's policy; all but max_deliveries are [handler TYPE] keys too */
    {"retry", "max_attempts", CW_T_UINT, CW_AT(retry.max_attempts), "CW_RETRY_MAX_ATTEMPTS",
     .def.i = CW_RETRY_DEFAULT_MAX_ATTEMPTS, .min = 1, .max = CW_RETRY_MAX_ATTEMPTS_LIMIT,
     .retry = CW_RETRY_SET_MAX_ATTEMPTS},
    {"retry", "interval", CW_T_DURATION, CW_AT(retry.interval_ms), "CW_RETRY_INTERVAL",
     .def.i = CW_RETRY_DEFAULT_INTERVAL_MS, .min = 0, .max = INT64_MAX,
     .hint = "250ms, 5s, 2m, 1h; 0 allowed", .retry = CW_RETRY_SET_INTERVAL},
    {"retry", "backoff_rate", CW_T_DECIMAL, CW_AT(retry.backoff_rate), "CW_RETRY_BACKOFF_RATE",
     .def.d = CW_RETRY_DEFAULT_BACKOFF_RATE, .retry = CW_RETRY_SET_BACKOFF_RATE,
     .set = cw_set_backoff_rate},
    {"retry", "max_delay", CW_T_DURATION, CW_AT(retry.max_delay_ms), "CW_RETRY_MAX_DELAY",
     .def.i = CW_RETRY_DEFAULT_MAX_DELAY_MS, .min = 0, .max = CW_DELAY_MAX_MS,
     .hint = "30s, 10m, 1h", .retry = CW_RETRY_SET_MAX_DELAY, .set = cw_set_max_delay},
    {"retry", "jitter", CW_T_CHOICE, CW_AT(retry.jitter), "CW_RETRY_JITTER",
     .def.i = CW_RETRY_DEFAULT_JITTER, .retry = CW_RETRY_SET_JITTER,
     .choices = (const char *const[]){[CW_JITTER_NONE] = "none",
                                      [CW_JITTER_FULL] = "full",
                                      [CW_JITTER_EQUAL] = "equal",
                                      NULL}},
    {"retry", "max_deliveries", CW_T_UINT, CW_AT(max_deliveries), "CW_RETRY_MAX_DELIVERIES",
     .def.i = CW_RETRY_DEFAULT_MAX_DELIVERIES, .min = 1, .max = CW_RETRY_MAX_DELIVERIES_LIMIT},

    /* [alert] */
    {"alert", "command", CW_T_WORDS, CW_AT(alert.command_argv), "CW_ALERT_COMMAND",
     .unset_note = "none", .set = cw_set_command},
    {"alert", "webhook", CW_T_HTTP_URL, CW_AT(alert.webhook_url), "CW_ALERT_WEBHOOK",
     .unset_note = "none"},
    {"alert", "timeout", CW_T_DURATION, CW_AT(alert.timeout_ms), "CW_ALERT_TIMEOUT",
     .def.i = 10 * 1000, .min = 1, .max = INT64_MAX, .hint = "250ms, 5s, 2m, 1h, 7d",
     .range = "must be more than 0"},
    {"alert", "webhook_retries", CW_T_UINT, CW_AT(alert.webhook_retries),
     "CW_ALERT_WEBHOOK_RETRIES", .def.i = 3, .min = 0, .max = 10},
    {"alert", "rate_limit", CW_T_DURATION, CW_AT(alert.rate_limit_ms), "CW_ALERT_RATE_LIMIT",
     .def.i = 60 * 1000, .min = 0, .max = INT64_MAX, .hint = "30s, 1m, 1h; 0 = no limit"},

    /* [relay]: compworker relay */
    {"relay", "url", CW_T_PG_URL, CW_AT(relay_url), "CW_RELAY_URL", .unset = ""},
    {"relay", "table", CW_T_STRING, CW_AT(relay_table), "CW_RELAY_TABLE", .def.s = "cw_outbox",
     .set = cw_set_outbox_table},
    {"relay", "batch", CW_T_UINT, CW_AT(relay_batch), "CW_RELAY_BATCH", .def.i = 100, .min = 1,
     .max = 10000},
    {"relay", "poll_interval", CW_T_DURATION, CW_AT(relay_poll_ms), "CW_RELAY_POLL_INTERVAL",
     .def.i = 1000, .min = 10, .max = INT64_C(3600) * 1000, .hint = "250ms, 1s, 10s",
     .range = "is not between 10ms and 1h"},
    {"relay", "retention", CW_T_DURATION, CW_AT(relay_retention_ms), "CW_RELAY_RETENTION",
     .def.i = INT64_C(7) * 24 * 3600 * 1000, .min = 1, .max = INT64_MAX,
     .hint = "250ms, 5s, 2m, 1h, 7d", .range = "must be more than 0"},
    {"relay", "metrics_listen", CW_T_STRING, CW_AT(relay_metrics_listen), "CW_RELAY_METRICS_LISTEN",
     .unset = "off", .set = cw_set_metrics_listen},

    /* [log] */
    {"log", "level", CW_T_CHOICE, CW_AT(log_level), "CW_LOG_LEVEL", .def.i = CW_LOG_INFO,
     .set = cw_set_log_level,
     .choices =
         (const char *const[]){[CW_LOG_DEBUG] = "debug",
                               [CW_LOG_INFO] = "info",
                               [CW_LOG_WARN] = "warn",
                               [CW_LOG_ERROR] = "error",
                               NULL}},
    {"log", "format", CW_T_CHOICE, CW_AT(log_format), "CW_LOG_FORMAT", .def.i = CW_LOG_LOGFMT,
     .choices = (const char *const[]){[CW_LOG_LOGFMT] = "logfmt", [CW_LOG_JSON] = "json", NULL}},
};

const size_t cw__config_n_keys = sizeof cw__config_keys / sizeof *cw__config_keys;

#define CW_HAT(field) offsetof(cw_handler_config, field)

/* The keys of [handler TYPE] sections beside the retry keys above; their
 * offset is in cw_handler_config and `retry` is their CW_HANDLER_SET_* flag. */
const cw_key cw__config_handler_keys[] = {
    {"handler", "concurrency", CW_T_UINT, CW_HAT(concurrency), NULL, .min = 1,
     .max = CW_POOL_MAX_CONCURRENCY, .retry = CW_HANDLER_SET_CONCURRENCY},
    {"handler", "rate_limit", CW_T_DECIMAL, CW_HAT(rate_per_s), NULL, .set = cw_set_rate,
     .fmt = cw_fmt_rate, .retry = CW_HANDLER_SET_RATE_LIMIT},
};

const size_t cw__config_n_handler_keys = sizeof cw__config_handler_keys /
                                         sizeof *cw__config_handler_keys;

_Static_assert(sizeof cw__config_handler_keys / sizeof *cw__config_handler_keys ==
                   sizeof((cw_handler_lines *)0)->own / sizeof(unsigned),
               "one line slot per [handler TYPE] key");

_Static_assert(sizeof cw__config_keys / sizeof *cw__config_keys <= CW_CONFIG_MAX_KEYS,
               "raise CW_CONFIG_MAX_KEYS");
