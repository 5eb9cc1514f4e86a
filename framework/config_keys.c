/* The keys of the fixed sections of the pool configuration: a checker
 * (setter) per key, and the table config.c looks keys up in. */
#include <ctype.h>
#include <errno.h>
#include <glob.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/stat.h>
#include <unistd.h>

#include "compworker/status.h"
#include "framework/argv.h"
#include "framework/config_keys.h"
#include "framework/parse.h"
#include "framework/url.h"

#define CW_MAX_BODY_SIZE_LIMIT (UINT64_C(128) << 20)
#define CW_MAX_HEARTBEAT_MS (INT64_C(65535) * 1000) /* AMQP negotiates a short in seconds */
#define CW_MAX_WEBHOOK_RETRIES 10
#define CW_AMQP_NAME_MAX 255 /* exchange and queue names are AMQP short strings */

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
    if (!cw__url_list_valid(value, why, why_len))
        return CW_STATUS_CONFIG;
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
    if (!cw__config_is_name(value, strlen(value), CW_NAME_MAX)) {
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

/* true/false, yes/no, on/off, 1/0 */
static int cw_check_bool(const char *value, bool *out, char *why, size_t why_len)
{
    static const char *const yes[] = {"true", "yes", "on", "1"};
    static const char *const no[] = {"false", "no", "off", "0"};

    for (size_t i = 0; i < sizeof yes / sizeof *yes; i++) {
        if (strcasecmp(value, yes[i]) == 0) {
            *out = true;
            return 0;
        }
        if (strcasecmp(value, no[i]) == 0) {
            *out = false;
            return 0;
        }
    }
    snprintf(why, why_len, "'%s' is not true or false", value);
    return CW_STATUS_CONFIG;
}

/* A file that must be readable now (TLS material): stored as an absolute
 * path, relative ones taken from the directory of the config file. */
static int cw_set_readable_file(cw_config_ctx *ctx, char **dst, const char *value, char *why,
                                size_t why_len)
{
    char *path;

    if (*value == '\0') {
        snprintf(why, why_len, "value is empty");
        return CW_STATUS_CONFIG;
    }
    path = cw_path_resolve(ctx->dir, value);
    if (path == NULL)
        return CW_STATUS_NOMEM;
    if (access(path, R_OK) != 0) {
        snprintf(why, why_len, "'%s' cannot be read: %s", path, strerror(errno));
        free(path);
        return CW_STATUS_CONFIG;
    }
    free(*dst);
    *dst = path;
    return 0;
}

static int cw_set_tls_ca_file(cw_config_ctx *ctx, const char *value, char *why, size_t why_len)
{
    return cw_set_readable_file(ctx, &ctx->cfg->tls.ca_file, value, why, why_len);
}

static int cw_set_tls_cert_file(cw_config_ctx *ctx, const char *value, char *why, size_t why_len)
{
    return cw_set_readable_file(ctx, &ctx->cfg->tls.cert_file, value, why, why_len);
}

static int cw_set_tls_key_file(cw_config_ctx *ctx, const char *value, char *why, size_t why_len)
{
    return cw_set_readable_file(ctx, &ctx->cfg->tls.key_file, value, why, why_len);
}

static int cw_set_tls_verify_peer(cw_config_ctx *ctx, const char *value, char *why,
                                  size_t why_len)
{
    return cw_check_bool(value, &ctx->cfg->tls.verify_peer, why, why_len);
}

static int cw_set_tls_verify_hostname(cw_config_ctx *ctx, const char *value, char *why,
                                      size_t why_len)
{
    return cw_check_bool(value, &ctx->cfg->tls.verify_hostname, why, why_len);
}

static int cw_set_workers(cw_config_ctx *ctx, const char *value, char *why, size_t why_len)
{
    long long v;
    int rc = cw_check_int(value, 1, CW_POOL_MAX_WORKERS, &v, why, why_len);

    if (rc == 0)
        ctx->cfg->workers = (unsigned)v;
    return rc;
}

static int cw_set_shutdown_timeout(cw_config_ctx *ctx, const char *value, char *why,
                                   size_t why_len)
{
    return cw_check_positive_duration(value, &ctx->cfg->shutdown_timeout_ms, why, why_len);
}

static int cw_set_metrics_listen(cw_config_ctx *ctx, const char *value, char *why,
                                 size_t why_len)
{
    char host[256];
    unsigned port;

    if (*value == '\0' || strcasecmp(value, "off") == 0) {
        free(ctx->cfg->metrics_listen);
        ctx->cfg->metrics_listen = NULL;
        return 0;
    }
    if (cw__listen_parse(value, host, sizeof host, &port) != 0) {
        snprintf(why, why_len,
                 "'%s' is not HOST:PORT (e.g. 127.0.0.1:9464, [::1]:9464, 0.0.0.0:9464; off)",
                 value);
        return CW_STATUS_CONFIG;
    }
    return cw_set_string(&ctx->cfg->metrics_listen, value);
}

static int cw_set_log_format(cw_config_ctx *ctx, const char *value, char *why, size_t why_len)
{
    static const char *const formats[] = {[CW_LOG_LOGFMT] = "logfmt", [CW_LOG_JSON] = "json"};
    int i;
    int rc = cw_check_choice(value, formats, sizeof formats / sizeof *formats, &i, why, why_len);

    if (rc == 0)
        ctx->cfg->log_format = (cw_log_format)i;
    return rc;
}

/* ---- retry policies: [retry] and [handler TYPE] ------------------------ */

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

const cw_retry_key cw__config_retry_keys[CW_RETRY_KEY_COUNT] = {
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

static int cw_set_command(cw_config_ctx *ctx, const char *value, char *why, size_t why_len)
{
    char **argv = NULL;
    struct stat st;
    int rc = cw__argv_split(&argv, value, why, why_len);

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
    cw__argv_free(ctx->cfg->alert.command_argv);
    ctx->cfg->alert.command_argv = argv;
    return 0;
}

static int cw_set_webhook(cw_config_ctx *ctx, const char *value, char *why, size_t why_len)
{
    /* Never echo the value: a webhook URL often carries a token. */
    if (!cw__url_webhook_valid(value, why, why_len))
        return CW_STATUS_CONFIG;
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
const cw_key cw__config_keys[CW_KEY_COUNT] = {
    [CW_KEY_URL] = {"broker", "url", cw_set_url},
    [CW_KEY_EXCHANGE] = {"broker", "exchange", cw_set_exchange},
    [CW_KEY_PREFETCH] = {"broker", "prefetch", cw_set_prefetch},
    [CW_KEY_BATCH] = {"broker", "batch", cw_set_batch},
    [CW_KEY_HEARTBEAT] = {"broker", "heartbeat", cw_set_heartbeat},
    [CW_KEY_TLS_CA_FILE] = {"broker", "tls_ca_file", cw_set_tls_ca_file},
    [CW_KEY_TLS_CERT_FILE] = {"broker", "tls_cert_file", cw_set_tls_cert_file},
    [CW_KEY_TLS_KEY_FILE] = {"broker", "tls_key_file", cw_set_tls_key_file},
    [CW_KEY_TLS_VERIFY_PEER] = {"broker", "tls_verify_peer", cw_set_tls_verify_peer},
    [CW_KEY_TLS_VERIFY_HOSTNAME] = {"broker", "tls_verify_hostname", cw_set_tls_verify_hostname},
    [CW_KEY_NAME] = {"pool", "name", cw_set_name},
    [CW_KEY_QUEUE] = {"pool", "queue", cw_set_queue},
    [CW_KEY_QUEUE_TYPE] = {"pool", "queue_type", cw_set_queue_type},
    [CW_KEY_PLUGINS] = {"pool", "plugins", cw_set_plugins},
    [CW_KEY_MAX_BODY_SIZE] = {"pool", "max_body_size", cw_set_max_body_size},
    [CW_KEY_HANDLER_TIMEOUT] = {"pool", "handler_timeout", cw_set_handler_timeout},
    [CW_KEY_WORKERS] = {"pool", "workers", cw_set_workers},
    [CW_KEY_SHUTDOWN_TIMEOUT] = {"pool", "shutdown_timeout", cw_set_shutdown_timeout},
    [CW_KEY_METRICS_LISTEN] = {"pool", "metrics_listen", cw_set_metrics_listen},
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
    [CW_KEY_LOG_FORMAT] = {"log", "format", cw_set_log_format},
};

/* CW_<SECTION>_<KEY> of key `i`. */
void cw__config_env_name(cw_key_id i, char *out, size_t cap)
{
    size_t n = (size_t)snprintf(out, cap, "CW_%s_%s", cw__config_keys[i].section, cw__config_keys[i].name);
    for (size_t j = 0; j < n && j < cap; j++)
        out[j] = (char)toupper((unsigned char)out[j]);
}

