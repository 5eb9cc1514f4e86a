/* The pool configuration: an INI file read with libinih, then the environment.
 *
 * libinih does not tell the handler which line it is on (Debian builds it
 * without INI_HANDLER_LINENO) and does not report sections that hold no key,
 * so the file is fed to ini_parse_stream() through our own line reader: it
 * counts lines, so every message can name one, and checks section headers as
 * they go by. Values are checked as they arrive; what depends on several keys
 * (defaults derived from the pool name, batch against prefetch) is settled
 * once the whole file has been read. The first error stops the parse. */
#include <ctype.h>
#include <errno.h>
#include <glob.h>
#include <ini.h>
#include <limits.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/stat.h>
#include <sys/types.h>
#include <unistd.h>

#include "compworker/status.h"
#include "framework/config.h"
#include "framework/error.h"
#include "framework/parse.h"
#include "framework/registry.h"
#include "retry/delay.h"
#include "retry/policy.h"

#define CW_DEFAULT_URL "amqp://guest:guest@127.0.0.1:5672/"
#define CW_DEFAULT_EXCHANGE "cw.tasks"
#define CW_DEFAULT_PREFETCH 256
#define CW_DEFAULT_HEARTBEAT_MS (60 * 1000)
#define CW_DEFAULT_MAX_BODY_SIZE (UINT64_C(1) << 20)
#define CW_MAX_BODY_SIZE_LIMIT (UINT64_C(128) << 20)
#define CW_DEFAULT_LEASE_MS (5 * 60 * 1000)
#define CW_DEFAULT_RETENTION_MS (INT64_C(7) * 24 * 3600 * 1000)
#define CW_MAX_HEARTBEAT_MS (INT64_C(65535) * 1000) /* AMQP negotiates a short in seconds */
#define CW_DEFAULT_HANDLER_TIMEOUT_MS (5 * 60 * 1000)
#define CW_DEFAULT_ALERT_TIMEOUT_MS (10 * 1000)
#define CW_DEFAULT_WEBHOOK_RETRIES 3
#define CW_MAX_WEBHOOK_RETRIES 10
#define CW_DEFAULT_RATE_LIMIT_MS (60 * 1000)

#define CW_NAME_MAX 100      /* pool and plugin names */
#define CW_AMQP_NAME_MAX 255 /* exchange and queue names are AMQP short strings */
#define CW_MAX_LINE 8192     /* longest line, with its newline and NUL, given to inih */
#define CW_MAX_SECTION 49    /* inih silently truncates longer section names */
#define CW_WHY_MAX 768       /* "what is wrong" part of a message */

/* The keys of the fixed sections; each has a slot in cw_config_ctx.key_line. */
typedef enum cw_key_id {
    CW_KEY_URL,
    CW_KEY_EXCHANGE,
    CW_KEY_PREFETCH,
    CW_KEY_BATCH,
    CW_KEY_HEARTBEAT,
    CW_KEY_NAME,
    CW_KEY_QUEUE,
    CW_KEY_QUEUE_TYPE,
    CW_KEY_PLUGINS,
    CW_KEY_MAX_BODY_SIZE,
    CW_KEY_HANDLER_TIMEOUT,
    CW_KEY_BACKEND,
    CW_KEY_STORE_PATH,
    CW_KEY_LEASE,
    CW_KEY_RETENTION,
    CW_KEY_SYNCHRONOUS,
    CW_KEY_MAX_ATTEMPTS,
    CW_KEY_INTERVAL,
    CW_KEY_BACKOFF_RATE,
    CW_KEY_MAX_DELAY,
    CW_KEY_JITTER,
    CW_KEY_MAX_DELIVERIES,
    CW_KEY_COMMAND,
    CW_KEY_WEBHOOK,
    CW_KEY_ALERT_TIMEOUT,
    CW_KEY_WEBHOOK_RETRIES,
    CW_KEY_RATE_LIMIT,
    CW_KEY_LEVEL,
    CW_KEY_COUNT
} cw_key_id;

/* The keys of a retry policy, in [retry] and in [handler TYPE]. */
#define CW_RETRY_KEY_COUNT 5

/* Where a [handler TYPE] section and each of its keys were, 0 = not yet. */
typedef struct cw_handler_lines {
    unsigned section;
    unsigned key[CW_RETRY_KEY_COUNT];
} cw_handler_lines;

/* State of one cw_config_load() of a file. */
typedef struct cw_config_ctx {
    cw_config *cfg;
    const char *file; /* the path as given, for messages */
    char *dir;        /* absolute directory of the file, symlinks resolved */
    FILE *fp;
    char *line; /* getline() buffer */
    size_t line_cap;
    unsigned lineno;                 /* line being parsed, from 1 */
    int status;                      /* first error, 0 while there is none */
    unsigned key_line[CW_KEY_COUNT]; /* where each key was set, 0 = not yet */
    size_t plugins_cap;
    size_t settings_cap;
    unsigned *setting_lines; /* where each plugin setting was set */
    size_t handlers_cap;
    cw_handler_lines *handler_lines; /* parallel to cfg->handlers */
} cw_config_ctx;

/* Checks `value` and stores it in ctx->cfg. Returns 0, CW_STATUS_NOMEM, or
 * CW_STATUS_CONFIG with what is wrong written to `why`. */
typedef int (*cw_key_setter)(cw_config_ctx *ctx, const char *value, char *why, size_t why_len);

typedef struct cw_key {
    const char *section;
    const char *name;
    cw_key_setter set;
} cw_key;

static const char *const cw_sections[] = {"broker", "pool", "store", "retry", "alert", "log"};

/* ---- small helpers ----------------------------------------------------- */

static int cw_config_nomem(const char *file)
{
    return cw__error(CW_STATUS_NOMEM, "%s: out of memory", file ? file : "config");
}

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
static char *cw_path_join(const char *dir, const char *rel)
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
    return path[0] == '/' ? strdup(path) : cw_path_join(dir, path);
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
static bool cw_is_name(const char *s, size_t len, size_t max)
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

/* ---- setters, one per key ---------------------------------------------- */

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

/* One of `choices` (case-insensitive); *out is its index. */
static int cw_check_choice(const char *value, const char *const *choices, size_t n, int *out,
                           char *why, size_t why_len)
{
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

/* A duration of more than zero. */
static int cw_check_positive_duration(const char *value, int64_t *out, char *why, size_t why_len)
{
    if (!cw__parse_duration_ms(value, out)) {
        snprintf(why, why_len, "'%s' is not a duration (e.g. 250ms, 5s, 2m, 1h, 7d)", value);
        return CW_STATUS_CONFIG;
    }
    if (*out <= 0) {
        snprintf(why, why_len, "'%s' must be more than 0", value);
        return CW_STATUS_CONFIG;
    }
    return 0;
}

static int cw_set_url(cw_config_ctx *ctx, const char *value, char *why, size_t why_len)
{
    /* Never echo the value: it may hold a password. */
    if (*value == '\0') {
        snprintf(why, why_len, "value is empty");
        return CW_STATUS_CONFIG;
    }
    return cw_set_string(&ctx->cfg->url, value);
}

static int cw_set_exchange(cw_config_ctx *ctx, const char *value, char *why, size_t why_len)
{
    int rc = cw_check_amqp_name(value, why, why_len);

    return rc ? rc : cw_set_string(&ctx->cfg->exchange, value);
}

static int cw_set_prefetch(cw_config_ctx *ctx, const char *value, char *why, size_t why_len)
{
    long long v;
    int rc = cw_check_int(value, 1, 65535, &v, why, why_len);

    if (rc == 0)
        ctx->cfg->prefetch = (unsigned)v;
    return rc;
}

static int cw_set_batch(cw_config_ctx *ctx, const char *value, char *why, size_t why_len)
{
    long long v;
    int rc = cw_check_int(value, 0, 65535, &v, why, why_len);

    if (rc == 0)
        ctx->cfg->batch = (unsigned)v;
    return rc;
}

static int cw_set_heartbeat(cw_config_ctx *ctx, const char *value, char *why, size_t why_len)
{
    int64_t ms;

    if (!cw__parse_duration_ms(value, &ms)) {
        snprintf(why, why_len, "'%s' is not a duration (e.g. 30s, 2m; 0 disables)", value);
        return CW_STATUS_CONFIG;
    }
    if (ms != 0 && (ms < 1000 || ms > CW_MAX_HEARTBEAT_MS)) {
        snprintf(why, why_len, "'%s' is not 0 or between 1s and 65535s", value);
        return CW_STATUS_CONFIG;
    }
    ctx->cfg->heartbeat_ms = ms;
    return 0;
}

static int cw_set_name(cw_config_ctx *ctx, const char *value, char *why, size_t why_len)
{
    if (!cw_is_name(value, strlen(value), CW_NAME_MAX)) {
        snprintf(why, why_len, "'%s' is not 1 to %d of A-Z a-z 0-9 _ . -", value, CW_NAME_MAX);
        return CW_STATUS_CONFIG;
    }
    return cw_set_string(&ctx->cfg->name, value);
}

static int cw_set_queue(cw_config_ctx *ctx, const char *value, char *why, size_t why_len)
{
    int rc = cw_check_amqp_name(value, why, why_len);

    return rc ? rc : cw_set_string(&ctx->cfg->queue, value);
}

static int cw_set_queue_type(cw_config_ctx *ctx, const char *value, char *why, size_t why_len)
{
    static const char *const types[] = {
        [CW_QUEUE_QUORUM] = "quorum", [CW_QUEUE_CLASSIC] = "classic"};
    int i;
    int rc = cw_check_choice(value, types, sizeof types / sizeof *types, &i, why, why_len);

    if (rc == 0)
        ctx->cfg->queue_type = (cw_queue_type)i;
    return rc;
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
        full = escaped_dir ? cw_path_join(escaped_dir, pattern) : NULL;
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
    case GLOB_NOSPACE:
        rc = CW_STATUS_NOMEM;
        break;
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

static int cw_set_plugins(cw_config_ctx *ctx, const char *value, char *why, size_t why_len)
{
    char *copy = strdup(value);
    char *save = NULL;
    size_t n_patterns = 0;
    int rc = 0;

    if (copy == NULL)
        return CW_STATUS_NOMEM;
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

static int cw_set_max_body_size(cw_config_ctx *ctx, const char *value, char *why, size_t why_len)
{
    uint64_t bytes;

    if (!cw__parse_size(value, &bytes)) {
        snprintf(why, why_len, "'%s' is not a size (e.g. 65536, 512KiB, 1MiB)", value);
        return CW_STATUS_CONFIG;
    }
    if (bytes < 1 || bytes > CW_MAX_BODY_SIZE_LIMIT) {
        snprintf(why, why_len, "'%s' is not between 1 byte and 128MiB", value);
        return CW_STATUS_CONFIG;
    }
    ctx->cfg->max_body_size = bytes;
    return 0;
}

static int cw_set_backend(cw_config_ctx *ctx, const char *value, char *why, size_t why_len)
{
    static const char *const backends[] = {
        [CW_STORE_SQLITE] = "sqlite", [CW_STORE_MEMORY] = "memory"};
    int i;
    int rc = cw_check_choice(value, backends, sizeof backends / sizeof *backends, &i, why, why_len);

    if (rc == 0)
        ctx->cfg->store_backend = (cw_store_backend)i;
    return rc;
}

static int cw_set_store_path(cw_config_ctx *ctx, const char *value, char *why, size_t why_len)
{
    char *path;

    if (*value == '\0') {
        snprintf(why, why_len, "value is empty");
        return CW_STATUS_CONFIG;
    }
    path = cw_path_resolve(ctx->dir, value);
    if (path == NULL)
        return CW_STATUS_NOMEM;
    free(ctx->cfg->store_path);
    ctx->cfg->store_path = path;
    return 0;
}

static int cw_set_lease(cw_config_ctx *ctx, const char *value, char *why, size_t why_len)
{
    return cw_check_positive_duration(value, &ctx->cfg->lease_ms, why, why_len);
}

static int cw_set_retention(cw_config_ctx *ctx, const char *value, char *why, size_t why_len)
{
    return cw_check_positive_duration(value, &ctx->cfg->retention_ms, why, why_len);
}

static int cw_set_synchronous(cw_config_ctx *ctx, const char *value, char *why, size_t why_len)
{
    static const char *const modes[] = {"full", "normal"};
    int i;
    int rc = cw_check_choice(value, modes, sizeof modes / sizeof *modes, &i, why, why_len);

    if (rc == 0)
        ctx->cfg->store_sync_full = (i == 0);
    return rc;
}

static int cw_set_log_level(cw_config_ctx *ctx, const char *value, char *why, size_t why_len)
{
    if (cw__log_level_parse(value, &ctx->cfg->log_level) != 0) {
        snprintf(why, why_len, "'%s' is not one of debug, info, warn, error", value);
        return CW_STATUS_CONFIG;
    }
    return 0;
}

static int cw_set_handler_timeout(cw_config_ctx *ctx, const char *value, char *why,
                                  size_t why_len)
{
    return cw_check_positive_duration(value, &ctx->cfg->handler_timeout_ms, why, why_len);
}

/* ---- retry policies: [retry] and [handler TYPE] ------------------------ */

/* Checks `value` and stores it in one field of `p`. */
typedef int (*cw_retry_setter)(cw_retry_policy *p, const char *value, char *why, size_t why_len);

static int cw_retry_set_max_attempts(cw_retry_policy *p, const char *value, char *why,
                                     size_t why_len)
{
    long long v;
    int rc = cw_check_int(value, 1, CW_RETRY_MAX_ATTEMPTS_LIMIT, &v, why, why_len);

    if (rc == 0)
        p->max_attempts = (unsigned)v;
    return rc;
}

static int cw_retry_set_interval(cw_retry_policy *p, const char *value, char *why, size_t why_len)
{
    if (!cw__parse_duration_ms(value, &p->interval_ms)) {
        snprintf(why, why_len, "'%s' is not a duration (e.g. 250ms, 5s, 2m, 1h; 0 allowed)",
                 value);
        return CW_STATUS_CONFIG;
    }
    return 0;
}

/* A decimal number written by a person: digits with at most one '.', so
 * that strtod() never sees a sign, an exponent, hex, "inf" or "nan". */
static int cw_retry_set_backoff_rate(cw_retry_policy *p, const char *value, char *why,
                                     size_t why_len)
{
    size_t digits = strspn(value, "0123456789");
    const char *rest = value + digits;
    char *end;
    double v;

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
    p->backoff_rate = v;
    return 0;
}

static int cw_retry_set_max_delay(cw_retry_policy *p, const char *value, char *why,
                                  size_t why_len)
{
    int64_t ms;

    if (!cw__parse_duration_ms(value, &ms)) {
        snprintf(why, why_len, "'%s' is not a duration (e.g. 30s, 10m, 1h)", value);
        return CW_STATUS_CONFIG;
    }
    if (ms > CW_DELAY_MAX_MS) {
        snprintf(why, why_len,
                 "'%s' is more than the longest delay the broker topology serves "
                 "(%lldms, about 29h)",
                 value, (long long)CW_DELAY_MAX_MS);
        return CW_STATUS_CONFIG;
    }
    p->max_delay_ms = ms;
    return 0;
}

static int cw_retry_set_jitter(cw_retry_policy *p, const char *value, char *why, size_t why_len)
{
    static const char *const kinds[] = {
        [CW_JITTER_NONE] = "none", [CW_JITTER_FULL] = "full", [CW_JITTER_EQUAL] = "equal"};
    int i;
    int rc = cw_check_choice(value, kinds, sizeof kinds / sizeof *kinds, &i, why, why_len);

    if (rc == 0)
        p->jitter = (cw_jitter)i;
    return rc;
}

typedef struct cw_retry_key {
    const char *name;
    unsigned flag; /* CW_RETRY_SET_* */
    cw_retry_setter set;
} cw_retry_key;

static const cw_retry_key cw_retry_keys[CW_RETRY_KEY_COUNT] = {
    {"max_attempts", CW_RETRY_SET_MAX_ATTEMPTS, cw_retry_set_max_attempts},
    {"interval", CW_RETRY_SET_INTERVAL, cw_retry_set_interval},
    {"backoff_rate", CW_RETRY_SET_BACKOFF_RATE, cw_retry_set_backoff_rate},
    {"max_delay", CW_RETRY_SET_MAX_DELAY, cw_retry_set_max_delay},
    {"jitter", CW_RETRY_SET_JITTER, cw_retry_set_jitter},
};

static int cw_set_max_attempts(cw_config_ctx *ctx, const char *value, char *why, size_t why_len)
{
    return cw_retry_set_max_attempts(&ctx->cfg->retry, value, why, why_len);
}

static int cw_set_interval(cw_config_ctx *ctx, const char *value, char *why, size_t why_len)
{
    return cw_retry_set_interval(&ctx->cfg->retry, value, why, why_len);
}

static int cw_set_backoff_rate(cw_config_ctx *ctx, const char *value, char *why, size_t why_len)
{
    return cw_retry_set_backoff_rate(&ctx->cfg->retry, value, why, why_len);
}

static int cw_set_max_delay(cw_config_ctx *ctx, const char *value, char *why, size_t why_len)
{
    return cw_retry_set_max_delay(&ctx->cfg->retry, value, why, why_len);
}

static int cw_set_jitter(cw_config_ctx *ctx, const char *value, char *why, size_t why_len)
{
    return cw_retry_set_jitter(&ctx->cfg->retry, value, why, why_len);
}

static int cw_set_max_deliveries(cw_config_ctx *ctx, const char *value, char *why,
                                 size_t why_len)
{
    long long v;
    int rc = cw_check_int(value, 1, CW_RETRY_MAX_DELIVERIES_LIMIT, &v, why, why_len);

    if (rc == 0)
        ctx->cfg->max_deliveries = (unsigned)v;
    return rc;
}

/* ---- [alert] ----------------------------------------------------------- */

static void cw_argv_free(char **argv)
{
    if (argv == NULL)
        return;
    for (char **a = argv; *a != NULL; a++)
        free(*a);
    free(argv);
}

/* Splits `s` into words at blanks, without a shell: "..." groups words (and
 * may make an empty one), and inside quotes a backslash takes the next
 * character as it is. Outside quotes every character but a blank or a quote
 * is itself, a backslash included. *out is a NULL-terminated argv. */
static int cw_split_command(const char *s, char ***out, char *why, size_t why_len)
{
    size_t n = 0, cap = 4;
    char **argv = calloc(cap, sizeof *argv);
    char *word = malloc(strlen(s) + 1);
    const char *p = s;
    int rc = 0;

    if (argv == NULL || word == NULL) {
        rc = CW_STATUS_NOMEM;
        goto out_free;
    }
    for (;;) {
        size_t len = 0;

        while (isspace((unsigned char)*p))
            p++;
        if (*p == '\0')
            break;
        while (*p != '\0' && !isspace((unsigned char)*p)) {
            if (*p != '"') {
                word[len++] = *p++;
                continue;
            }
            const char *open = p++;
            while (*p != '"') {
                if (*p == '\\' && p[1] != '\0') {
                    p++; /* the next character, as it is */
                } else if (*p == '\0' || *p == '\\') {
                    snprintf(why, why_len, "the quote at column %zu is not closed",
                             (size_t)(open - s) + 1);
                    rc = CW_STATUS_CONFIG;
                    goto out_free;
                }
                word[len++] = *p++;
            }
            p++;
        }
        word[len] = '\0';
        if (n + 2 > cap) {
            char **grown = realloc(argv, 2 * cap * sizeof *grown);
            if (grown == NULL) {
                rc = CW_STATUS_NOMEM;
                goto out_free;
            }
            argv = grown;
            cap *= 2;
        }
        argv[n] = strdup(word);
        if (argv[n] == NULL) {
            rc = CW_STATUS_NOMEM;
            goto out_free;
        }
        argv[++n] = NULL;
    }
    if (n == 0) {
        snprintf(why, why_len, "no program given");
        rc = CW_STATUS_CONFIG;
        goto out_free;
    }
    *out = argv;
    argv = NULL;

out_free:
    cw_argv_free(argv);
    free(word);
    return rc;
}

static int cw_set_command(cw_config_ctx *ctx, const char *value, char *why, size_t why_len)
{
    char **argv = NULL;
    struct stat st;
    int rc = cw_split_command(value, &argv, why, why_len);

    if (rc != 0)
        return rc;
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
        cw_argv_free(argv);
        return rc;
    }
    cw_argv_free(ctx->cfg->alert.command_argv);
    ctx->cfg->alert.command_argv = argv;
    return 0;
}

static int cw_set_webhook(cw_config_ctx *ctx, const char *value, char *why, size_t why_len)
{
    /* Never echo the value: a webhook URL often carries a token. */
    size_t scheme = strncasecmp(value, "http://", 7) == 0    ? 7
                    : strncasecmp(value, "https://", 8) == 0 ? 8
                                                             : 0;

    if (scheme == 0) {
        snprintf(why, why_len, "the URL does not start with http:// or https://");
        return CW_STATUS_CONFIG;
    }
    if (value[scheme] == '\0' || value[scheme] == '/') {
        snprintf(why, why_len, "the URL has no host");
        return CW_STATUS_CONFIG;
    }
    for (const char *c = value; *c != '\0'; c++) {
        if (isspace((unsigned char)*c) || iscntrl((unsigned char)*c)) {
            snprintf(why, why_len, "the URL contains a blank or a control character");
            return CW_STATUS_CONFIG;
        }
    }
    return cw_set_string(&ctx->cfg->alert.webhook_url, value);
}

static int cw_set_alert_timeout(cw_config_ctx *ctx, const char *value, char *why, size_t why_len)
{
    return cw_check_positive_duration(value, &ctx->cfg->alert.timeout_ms, why, why_len);
}

static int cw_set_webhook_retries(cw_config_ctx *ctx, const char *value, char *why,
                                  size_t why_len)
{
    long long v;
    int rc = cw_check_int(value, 0, CW_MAX_WEBHOOK_RETRIES, &v, why, why_len);

    if (rc == 0)
        ctx->cfg->alert.webhook_retries = (unsigned)v;
    return rc;
}

static int cw_set_rate_limit(cw_config_ctx *ctx, const char *value, char *why, size_t why_len)
{
    if (!cw__parse_duration_ms(value, &ctx->cfg->alert.rate_limit_ms)) {
        snprintf(why, why_len, "'%s' is not a duration (e.g. 30s, 1m, 1h; 0 = no limit)", value);
        return CW_STATUS_CONFIG;
    }
    return 0;
}

/* Indexed by cw_key_id. */
static const cw_key cw_keys[CW_KEY_COUNT] = {
    [CW_KEY_URL] = {"broker", "url", cw_set_url},
    [CW_KEY_EXCHANGE] = {"broker", "exchange", cw_set_exchange},
    [CW_KEY_PREFETCH] = {"broker", "prefetch", cw_set_prefetch},
    [CW_KEY_BATCH] = {"broker", "batch", cw_set_batch},
    [CW_KEY_HEARTBEAT] = {"broker", "heartbeat", cw_set_heartbeat},
    [CW_KEY_NAME] = {"pool", "name", cw_set_name},
    [CW_KEY_QUEUE] = {"pool", "queue", cw_set_queue},
    [CW_KEY_QUEUE_TYPE] = {"pool", "queue_type", cw_set_queue_type},
    [CW_KEY_PLUGINS] = {"pool", "plugins", cw_set_plugins},
    [CW_KEY_MAX_BODY_SIZE] = {"pool", "max_body_size", cw_set_max_body_size},
    [CW_KEY_HANDLER_TIMEOUT] = {"pool", "handler_timeout", cw_set_handler_timeout},
    [CW_KEY_BACKEND] = {"store", "backend", cw_set_backend},
    [CW_KEY_STORE_PATH] = {"store", "path", cw_set_store_path},
    [CW_KEY_LEASE] = {"store", "lease", cw_set_lease},
    [CW_KEY_RETENTION] = {"store", "retention", cw_set_retention},
    [CW_KEY_SYNCHRONOUS] = {"store", "synchronous", cw_set_synchronous},
    [CW_KEY_MAX_ATTEMPTS] = {"retry", "max_attempts", cw_set_max_attempts},
    [CW_KEY_INTERVAL] = {"retry", "interval", cw_set_interval},
    [CW_KEY_BACKOFF_RATE] = {"retry", "backoff_rate", cw_set_backoff_rate},
    [CW_KEY_MAX_DELAY] = {"retry", "max_delay", cw_set_max_delay},
    [CW_KEY_JITTER] = {"retry", "jitter", cw_set_jitter},
    [CW_KEY_MAX_DELIVERIES] = {"retry", "max_deliveries", cw_set_max_deliveries},
    [CW_KEY_COMMAND] = {"alert", "command", cw_set_command},
    [CW_KEY_WEBHOOK] = {"alert", "webhook", cw_set_webhook},
    [CW_KEY_ALERT_TIMEOUT] = {"alert", "timeout", cw_set_alert_timeout},
    [CW_KEY_WEBHOOK_RETRIES] = {"alert", "webhook_retries", cw_set_webhook_retries},
    [CW_KEY_RATE_LIMIT] = {"alert", "rate_limit", cw_set_rate_limit},
    [CW_KEY_LEVEL] = {"log", "level", cw_set_log_level},
};

/* ---- sections ---------------------------------------------------------- */

/* What a section header names. */
typedef struct cw_section {
    const char *fixed;   /* one of cw_sections, or NULL */
    const char *name;    /* NAME of "plugin NAME" / TYPE of "handler TYPE", or NULL */
    size_t name_len;
    bool handler;        /* "handler TYPE" (else "plugin NAME") */
} cw_section;

/* If `s` (len bytes) is "<keyword> <blanks> REST", the rest. */
static const char *cw_section_word(const char *s, size_t len, const char *keyword, size_t *rest_len)
{
    size_t klen = strlen(keyword), skip = klen;

    if (len <= klen || strncasecmp(s, keyword, klen) != 0 || !isspace((unsigned char)s[klen]))
        return NULL;
    while (skip < len && isspace((unsigned char)s[skip]))
        skip++;
    *rest_len = len - skip;
    return s + skip;
}

/* Parses a section header once surrounding blanks are dropped: one of
 * cw_sections, "plugin NAME" or "handler TYPE" (TYPE a valid task type).
 * False for anything else; *bad_type is then set when it is "handler X" with
 * X not a task type. */
static bool cw_section_parse(const char *s, size_t len, cw_section *out, bool *bad_type)
{
    const char *rest;
    size_t rest_len;

    memset(out, 0, sizeof *out);
    *bad_type = false;
    while (len > 0 && isspace((unsigned char)*s)) {
        s++;
        len--;
    }
    while (len > 0 && isspace((unsigned char)s[len - 1]))
        len--;

    for (size_t i = 0; i < sizeof cw_sections / sizeof *cw_sections; i++) {
        if (strlen(cw_sections[i]) == len && strncasecmp(s, cw_sections[i], len) == 0) {
            out->fixed = cw_sections[i];
            return true;
        }
    }
    if ((rest = cw_section_word(s, len, "plugin", &rest_len)) != NULL &&
        cw_is_name(rest, rest_len, CW_NAME_MAX)) {
        out->name = rest;
        out->name_len = rest_len;
        return true;
    }
    if ((rest = cw_section_word(s, len, "handler", &rest_len)) != NULL) {
        if (!cw__type_valid(rest, rest_len)) {
            *bad_type = true;
            return false;
        }
        out->name = rest;
        out->name_len = rest_len;
        out->handler = true;
        return true;
    }
    return false;
}

/* ---- errors ------------------------------------------------------------ */

/* Records the first error of the parse and returns its status. */
static int cw_config_fail(cw_config_ctx *ctx, int status, const char *fmt, ...) CW_PRINTF(3, 4);

static int cw_config_fail(cw_config_ctx *ctx, int status, const char *fmt, ...)
{
    char msg[1024];
    va_list ap;

    if (ctx->status != 0)
        return ctx->status;
    if (status == CW_STATUS_NOMEM)
        return ctx->status = cw_config_nomem(ctx->file);
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    return ctx->status = cw__error(status, "%s", msg);
}

static int cw_config_fail_nomem(cw_config_ctx *ctx)
{
    return cw_config_fail(ctx, CW_STATUS_NOMEM, "%s", "out of memory");
}

/* "unknown key 'k' in [s] (expected a, b or c)" */
static int cw_config_unknown_key(cw_config_ctx *ctx, const char *section, const char *key)
{
    char known[256] = "";
    size_t used = 0;
    size_t n = 0;

    for (size_t i = 0; i < CW_KEY_COUNT && used < sizeof known; i++) {
        if (strcmp(cw_keys[i].section, section) == 0) {
            used += (size_t)snprintf(known + used, sizeof known - used, "%s%s", n++ ? ", " : "",
                                     cw_keys[i].name);
        }
    }
    return cw_config_fail(ctx, CW_STATUS_CONFIG, "%s:%u: unknown key '%s' in [%s] (expected %s)",
                          ctx->file, ctx->lineno, key, section, known);
}

/* ---- [handler TYPE] ---------------------------------------------------- */

/* The index of the handler section of `type`, or -1. */
static long cw_config_handler_find(const cw_config *cfg, const char *type, size_t len)
{
    for (size_t i = 0; i < cfg->n_handlers; i++) {
        if (strlen(cfg->handlers[i].type) == len && memcmp(cfg->handlers[i].type, type, len) == 0)
            return (long)i;
    }
    return -1;
}

/* A [handler TYPE] header: a new entry in cfg->handlers, or an error when
 * the type has a section already. */
static int cw_config_handler_open(cw_config_ctx *ctx, const char *type, size_t len)
{
    cw_config *cfg = ctx->cfg;
    long first = cw_config_handler_find(cfg, type, len);
    cw_handler_config *h;

    if (first >= 0)
        return cw_config_fail(ctx, CW_STATUS_CONFIG,
                              "%s:%u: [handler %.*s] appears twice (first on line %u)", ctx->file,
                              ctx->lineno, (int)len, type, ctx->handler_lines[first].section);
    if (cfg->n_handlers == ctx->handlers_cap) {
        size_t cap = ctx->handlers_cap ? 2 * ctx->handlers_cap : 4;
        cw_handler_config *grown = realloc(cfg->handlers, cap * sizeof *grown);
        cw_handler_lines *lines;
        if (grown == NULL)
            return cw_config_fail_nomem(ctx);
        cfg->handlers = grown;
        lines = realloc(ctx->handler_lines, cap * sizeof *lines);
        if (lines == NULL)
            return cw_config_fail_nomem(ctx);
        ctx->handler_lines = lines;
        ctx->handlers_cap = cap;
    }
    h = &cfg->handlers[cfg->n_handlers];
    memset(h, 0, sizeof *h);
    memset(&ctx->handler_lines[cfg->n_handlers], 0, sizeof *ctx->handler_lines);
    ctx->handler_lines[cfg->n_handlers].section = ctx->lineno;
    h->type = strndup(type, len);
    if (h->type == NULL)
        return cw_config_fail_nomem(ctx);
    cfg->n_handlers++;
    return 0;
}

/* One `key = value` of a [handler TYPE] section. */
static int cw_config_handler_value(cw_config_ctx *ctx, const char *type, size_t len,
                                   const char *key, const char *value)
{
    long i = cw_config_handler_find(ctx->cfg, type, len);
    cw_handler_config *h;
    char known[128] = "";
    char why[CW_WHY_MAX];
    size_t used = 0;
    int rc;

    if (i < 0) /* the reader registers every header first; kept in case inih changes */
        return cw_config_fail(ctx, CW_STATUS_CONFIG, "%s:%u: [handler %.*s] was not seen",
                              ctx->file, ctx->lineno, (int)len, type);
    h = &ctx->cfg->handlers[i];
    for (size_t k = 0; k < CW_RETRY_KEY_COUNT; k++) {
        const cw_retry_key *rk = &cw_retry_keys[k];
        unsigned *line = &ctx->handler_lines[i].key[k];

        if (strcasecmp(rk->name, key) != 0)
            continue;
        if (*line != 0)
            return cw_config_fail(ctx, CW_STATUS_CONFIG,
                                  "%s:%u: [handler %s] %s: set twice (first on line %u)",
                                  ctx->file, ctx->lineno, h->type, rk->name, *line);
        *line = ctx->lineno;
        why[0] = '\0';
        rc = rk->set(&h->retry, value, why, sizeof why);
        if (rc != 0)
            return cw_config_fail(ctx, rc, "%s:%u: [handler %s] %s: %s", ctx->file, ctx->lineno,
                                  h->type, rk->name, why);
        h->set |= rk->flag;
        return 0;
    }
    for (size_t k = 0; k < CW_RETRY_KEY_COUNT; k++)
        used += (size_t)snprintf(known + used, sizeof known - used, "%s%s", k ? ", " : "",
                                 cw_retry_keys[k].name);
    return cw_config_fail(ctx, CW_STATUS_CONFIG,
                          "%s:%u: unknown key '%s' in [handler %s] (expected %s)", ctx->file,
                          ctx->lineno, key, h->type, known);
}

/* ---- libinih callbacks ------------------------------------------------- */

/* Checks a "[...]" line as the reader hands it over, so that unknown and
 * empty sections are reported too. A header without "]" is left for inih to
 * report as a syntax error. */
static int cw_config_check_section(cw_config_ctx *ctx)
{
    const char *p = ctx->line;
    const char *end;
    cw_section sec;
    bool bad_type;
    size_t len;

    if (ctx->lineno == 1 && strncmp(p, "\xEF\xBB\xBF", 3) == 0)
        p += 3;
    while (isspace((unsigned char)*p))
        p++;
    if (*p != '[' || (end = strchr(p + 1, ']')) == NULL)
        return 0;
    len = (size_t)(end - (p + 1));
    if (len > CW_MAX_SECTION)
        return cw_config_fail(ctx, CW_STATUS_CONFIG,
                              "%s:%u: section name [%.*s] is longer than %d characters", ctx->file,
                              ctx->lineno, (int)len, p + 1, CW_MAX_SECTION);
    if (!cw_section_parse(p + 1, len, &sec, &bad_type)) {
        if (bad_type)
            return cw_config_fail(ctx, CW_STATUS_CONFIG,
                                  "%s:%u: section [%.*s]: the task type is not 1 to 255 of "
                                  "A-Z a-z 0-9 . _ : -",
                                  ctx->file, ctx->lineno, (int)len, p + 1);
        return cw_config_fail(ctx, CW_STATUS_CONFIG,
                              "%s:%u: unknown section [%.*s] (expected broker, pool, store, "
                              "retry, alert, log, handler TYPE or plugin NAME)",
                              ctx->file, ctx->lineno, (int)len, p + 1);
    }
    if (sec.handler)
        return cw_config_handler_open(ctx, sec.name, sec.name_len);
    return 0;
}

/* fgets()-like reader for ini_parse_stream(): one whole line per call, so
 * that ctx->lineno is the line inih is parsing. Returns NULL at the end of
 * the file or on the first error (recorded in ctx). */
static char *cw_config_read_line(char *str, int num, void *stream)
{
    cw_config_ctx *ctx = stream;
    ssize_t n;

    if (ctx->status != 0)
        return NULL;
    errno = 0;
    n = getline(&ctx->line, &ctx->line_cap, ctx->fp);
    if (n < 0) {
        if (ferror(ctx->fp))
            cw_config_fail(ctx, CW_STATUS_CONFIG, "%s: cannot read: %s", ctx->file,
                           strerror(errno));
        else if (errno == ENOMEM)
            cw_config_fail_nomem(ctx);
        return NULL;
    }
    ctx->lineno++;
    if (n >= num) {
        cw_config_fail(ctx, CW_STATUS_CONFIG, "%s:%u: line is longer than %d bytes", ctx->file,
                       ctx->lineno, num - 2);
        return NULL;
    }
    if (strlen(ctx->line) != (size_t)n) {
        cw_config_fail(ctx, CW_STATUS_CONFIG, "%s:%u: line contains a NUL byte", ctx->file,
                       ctx->lineno);
        return NULL;
    }
    if (cw_config_check_section(ctx) != 0)
        return NULL;
    memcpy(str, ctx->line, (size_t)n + 1);
    return str;
}

/* Records one `key = value` of a [plugin NAME] section. */
static int cw_config_plugin_setting(cw_config_ctx *ctx, const char *plugin, size_t plugin_len,
                                    const char *key, const char *value)
{
    cw_config *cfg = ctx->cfg;
    cw_plugin_setting *s;

    for (size_t i = 0; i < cfg->n_plugin_settings; i++) {
        s = &cfg->plugin_settings[i];
        if (strlen(s->plugin) == plugin_len && strncmp(s->plugin, plugin, plugin_len) == 0 &&
            strcmp(s->key, key) == 0)
            return cw_config_fail(ctx, CW_STATUS_CONFIG,
                                  "%s:%u: [plugin %s] %s: set twice (first on line %u)", ctx->file,
                                  ctx->lineno, s->plugin, key, ctx->setting_lines[i]);
    }
    if (cfg->n_plugin_settings == ctx->settings_cap) {
        size_t cap = ctx->settings_cap ? 2 * ctx->settings_cap : 8;
        cw_plugin_setting *grown = realloc(cfg->plugin_settings, cap * sizeof *grown);
        unsigned *lines;
        if (grown == NULL)
            return cw_config_fail_nomem(ctx);
        cfg->plugin_settings = grown;
        lines = realloc(ctx->setting_lines, cap * sizeof *lines);
        if (lines == NULL)
            return cw_config_fail_nomem(ctx);
        ctx->setting_lines = lines;
        ctx->settings_cap = cap;
    }
    s = &cfg->plugin_settings[cfg->n_plugin_settings];
    s->plugin = strndup(plugin, plugin_len);
    s->key = strdup(key);
    s->value = strdup(value);
    ctx->setting_lines[cfg->n_plugin_settings] = ctx->lineno;
    /* Counted before the check so that cw_config_free() releases a partial one. */
    cfg->n_plugin_settings++;
    if (s->plugin == NULL || s->key == NULL || s->value == NULL)
        return cw_config_fail_nomem(ctx);
    return 0;
}

/* ini_handler: one `key = value`. Returns nonzero to go on. */
static int cw_config_on_value(void *user, const char *section, const char *key, const char *value)
{
    cw_config_ctx *ctx = user;
    cw_section sec;
    bool bad_type;
    const char *fixed;
    char why[CW_WHY_MAX];
    int rc;

    if (ctx->status != 0)
        return 0;
    if (key == NULL) /* a section start, when inih is built to report them */
        return 1;
    if (*section == '\0') {
        cw_config_fail(ctx, CW_STATUS_CONFIG, "%s:%u: key '%s' is outside any section", ctx->file,
                       ctx->lineno, key);
        return 0;
    }
    if (!cw_section_parse(section, strlen(section), &sec, &bad_type)) {
        /* The reader rejects these first; kept in case inih changes. */
        cw_config_fail(ctx, CW_STATUS_CONFIG, "%s:%u: unknown section [%s]", ctx->file, ctx->lineno,
                       section);
        return 0;
    }
    if (sec.handler)
        return cw_config_handler_value(ctx, sec.name, sec.name_len, key, value) == 0;
    if (sec.name != NULL)
        return cw_config_plugin_setting(ctx, sec.name, sec.name_len, key, value) == 0;
    fixed = sec.fixed;

    for (size_t i = 0; i < CW_KEY_COUNT; i++) {
        const cw_key *k = &cw_keys[i];
        if (strcmp(k->section, fixed) != 0 || strcasecmp(k->name, key) != 0)
            continue;
        if (ctx->key_line[i] != 0) {
            cw_config_fail(ctx, CW_STATUS_CONFIG, "%s:%u: [%s] %s: set twice (first on line %u)",
                           ctx->file, ctx->lineno, fixed, k->name, ctx->key_line[i]);
            return 0;
        }
        ctx->key_line[i] = ctx->lineno;
        why[0] = '\0';
        rc = k->set(ctx, value, why, sizeof why);
        if (rc != 0)
            cw_config_fail(ctx, rc, "%s:%u: [%s] %s: %s", ctx->file, ctx->lineno, fixed, k->name,
                           why);
        return rc == 0;
    }
    cw_config_unknown_key(ctx, fixed, key);
    return 0;
}

/* ---- loading ----------------------------------------------------------- */

static int cw_config_defaults(cw_config *cfg)
{
    cfg->path = strdup("");
    cfg->url = strdup(CW_DEFAULT_URL);
    cfg->exchange = strdup(CW_DEFAULT_EXCHANGE);
    cfg->plugins = calloc(1, sizeof *cfg->plugins);
    if (cfg->path == NULL || cfg->url == NULL || cfg->exchange == NULL || cfg->plugins == NULL)
        return CW_STATUS_NOMEM;
    cfg->prefetch = CW_DEFAULT_PREFETCH;
    cfg->batch = 0;
    cfg->heartbeat_ms = CW_DEFAULT_HEARTBEAT_MS;
    cfg->queue_type = CW_QUEUE_QUORUM;
    cfg->max_body_size = CW_DEFAULT_MAX_BODY_SIZE;
    cfg->store_backend = CW_STORE_SQLITE;
    cfg->lease_ms = CW_DEFAULT_LEASE_MS;
    cfg->retention_ms = CW_DEFAULT_RETENTION_MS;
    cfg->store_sync_full = true;
    cfg->log_level = CW_LOG_INFO;
    cfg->handler_timeout_ms = CW_DEFAULT_HANDLER_TIMEOUT_MS;
    cw_retry_policy_default(&cfg->retry);
    cfg->max_deliveries = CW_RETRY_DEFAULT_MAX_DELIVERIES;
    cfg->alert.timeout_ms = CW_DEFAULT_ALERT_TIMEOUT_MS;
    cfg->alert.webhook_retries = CW_DEFAULT_WEBHOOK_RETRIES;
    cfg->alert.rate_limit_ms = CW_DEFAULT_RATE_LIMIT_MS;
    return 0;
}

/* What depends on several keys, once the whole file is read. */
static int cw_config_finish(cw_config_ctx *ctx)
{
    cw_config *cfg = ctx->cfg;
    char *rel;

    if (cfg->name == NULL)
        return cw_config_fail(ctx, CW_STATUS_CONFIG, "%s: [pool] name is required", ctx->file);
    if (cfg->batch > cfg->prefetch)
        return cw_config_fail(ctx, CW_STATUS_CONFIG,
                              "%s:%u: [broker] batch: %u is more than prefetch (%u)", ctx->file,
                              ctx->key_line[CW_KEY_BATCH], cfg->batch, cfg->prefetch);
    if (cfg->queue == NULL && asprintf(&cfg->queue, "cw.%s", cfg->name) < 0) {
        cfg->queue = NULL;
        return cw_config_fail_nomem(ctx);
    }
    if (asprintf(&cfg->dlq, "cw.dlq.%s", cfg->name) < 0) {
        cfg->dlq = NULL;
        return cw_config_fail_nomem(ctx);
    }
    if (cfg->store_path == NULL) {
        if (asprintf(&rel, "var/%s.db", cfg->name) < 0)
            return cw_config_fail_nomem(ctx);
        cfg->store_path = cw_path_join(ctx->dir, rel);
        free(rel);
        if (cfg->store_path == NULL)
            return cw_config_fail_nomem(ctx);
    }
    return 0;
}

/* Makes libinih parse the way this file expects. Its options are process-wide
 * globals in Debian's build, so they are set before every parse. */
static void cw_config_set_inih_options(void)
{
    ini_allow_multiline = false;      /* an indented line is a key, not a continuation */
    ini_allow_inline_comments = true; /* "key = value ; comment" */
    ini_allow_no_value = false;
    ini_allow_bom = true;
    ini_stop_on_first_error = true;
    ini_use_stack = true;
    ini_max_line = CW_MAX_LINE;
}

/* Reads the file at `path` into `cfg`. */
static int cw_config_read_file(cw_config *cfg, const char *path)
{
    cw_config_ctx ctx = {.cfg = cfg, .file = path};
    const char *slash = strrchr(path, '/');
    char *dir;
    int rc;

    ctx.fp = fopen(path, "re");
    if (ctx.fp == NULL)
        return cw__error(CW_STATUS_CONFIG, "%s: cannot open: %s", path, strerror(errno));

    /* The directory relative paths are taken against, made absolute. */
    if (slash == NULL)
        dir = strdup(".");
    else if (slash == path)
        dir = strdup("/");
    else
        dir = strndup(path, (size_t)(slash - path));
    if (dir == NULL) {
        rc = cw_config_nomem(path);
        goto out_close;
    }
    ctx.dir = realpath(dir, NULL);
    if (ctx.dir == NULL) {
        rc = cw__error(CW_STATUS_CONFIG, "%s: cannot resolve directory %s: %s", path, dir,
                       strerror(errno));
        goto out_free_dir;
    }
    free(cfg->path);
    cfg->path = cw_path_join(ctx.dir, slash ? slash + 1 : path);
    if (cfg->path == NULL) {
        rc = cw_config_nomem(path);
        goto out_free_dir;
    }

    cw_config_set_inih_options();
    rc = ini_parse_stream(cw_config_read_line, &ctx, cw_config_on_value, &ctx);
    if (ctx.status != 0)
        rc = ctx.status;
    else if (rc > 0)
        rc = cw__error(CW_STATUS_CONFIG,
                       "%s:%d: syntax error: expected [section], key = value or a comment", path,
                       rc);
    else if (rc < 0)
        rc = cw_config_nomem(path);
    else
        rc = cw_config_finish(&ctx);

out_free_dir:
    free(ctx.setting_lines);
    free(ctx.handler_lines);
    free(ctx.line);
    free(ctx.dir);
    free(dir);
out_close:
    fclose(ctx.fp);
    return rc;
}

/* The environment overrides the file. */
static int cw_config_apply_env(cw_config *cfg)
{
    const char *url = getenv("CW_AMQP_URL");

    if (url != NULL && *url != '\0' && cw_set_string(&cfg->url, url) != 0)
        return cw_config_nomem("CW_AMQP_URL");
    return 0;
}

int cw_config_load(cw_config **out, const char *path)
{
    cw_config *cfg;
    int rc;

    *out = NULL;
    cfg = calloc(1, sizeof *cfg);
    if (cfg == NULL)
        return cw_config_nomem(path);
    rc = cw_config_defaults(cfg);
    if (rc != 0) {
        rc = cw_config_nomem(path);
        goto out_free_cfg;
    }
    if (path != NULL) {
        rc = cw_config_read_file(cfg, path);
        if (rc != 0)
            goto out_free_cfg;
    }
    rc = cw_config_apply_env(cfg);
    if (rc != 0)
        goto out_free_cfg;
    *out = cfg;
    return 0;

out_free_cfg:
    cw_config_free(cfg);
    return rc;
}

void cw_config_free(cw_config *cfg)
{
    if (cfg == NULL)
        return;
    for (size_t i = 0; i < cfg->n_plugins; i++)
        free(cfg->plugins[i]);
    free(cfg->plugins);
    for (size_t i = 0; i < cfg->n_plugin_settings; i++) {
        free(cfg->plugin_settings[i].plugin);
        free(cfg->plugin_settings[i].key);
        free(cfg->plugin_settings[i].value);
    }
    free(cfg->plugin_settings);
    for (size_t i = 0; i < cfg->n_handlers; i++)
        free(cfg->handlers[i].type);
    free(cfg->handlers);
    cw_argv_free(cfg->alert.command_argv);
    free(cfg->alert.webhook_url);
    free(cfg->path);
    free(cfg->url);
    free(cfg->exchange);
    free(cfg->name);
    free(cfg->queue);
    free(cfg->dlq);
    free(cfg->store_path);
    free(cfg);
}
