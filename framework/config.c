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
#include "framework/argv.h"
#include "framework/config.h"
#include "framework/error.h"
#include "framework/parse.h"
#include "framework/registry.h"
#include "framework/url.h"

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
#define CW_DEFAULT_WORKERS 1
#define CW_DEFAULT_SHUTDOWN_TIMEOUT_MS (30 * 1000)

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
    CW_KEY_TLS_CA_FILE,
    CW_KEY_TLS_CERT_FILE,
    CW_KEY_TLS_KEY_FILE,
    CW_KEY_TLS_VERIFY_PEER,
    CW_KEY_TLS_VERIFY_HOSTNAME,
    CW_KEY_NAME,
    CW_KEY_QUEUE,
    CW_KEY_QUEUE_TYPE,
    CW_KEY_PLUGINS,
    CW_KEY_MAX_BODY_SIZE,
    CW_KEY_HANDLER_TIMEOUT,
    CW_KEY_WORKERS,
    CW_KEY_SHUTDOWN_TIMEOUT,
    CW_KEY_METRICS_LISTEN,
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
    CW_KEY_LOG_FORMAT,
    CW_KEY_COUNT
} cw_key_id;

_Static_assert(CW_KEY_COUNT <= CW_CONFIG_MAX_KEYS, "raise CW_CONFIG_MAX_KEYS");

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
    unsigned key_line[CW_KEY_COUNT]; /* where each key was set in the file, 0 = not yet */
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
static const cw_key cw_keys[CW_KEY_COUNT] = {
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
        ctx->cfg->origin[i] = CW_ORIGIN_FILE;
        ctx->cfg->line[i] = ctx->lineno;
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
    cfg->retry = (cw_retry_policy){.max_attempts = CW_RETRY_DEFAULT_MAX_ATTEMPTS,
                                   .interval_ms = CW_RETRY_DEFAULT_INTERVAL_MS,
                                   .backoff_rate = CW_RETRY_DEFAULT_BACKOFF_RATE,
                                   .max_delay_ms = CW_RETRY_DEFAULT_MAX_DELAY_MS,
                                   .jitter = CW_RETRY_DEFAULT_JITTER};
    cfg->max_deliveries = CW_RETRY_DEFAULT_MAX_DELIVERIES;
    cfg->alert.timeout_ms = CW_DEFAULT_ALERT_TIMEOUT_MS;
    cfg->alert.webhook_retries = CW_DEFAULT_WEBHOOK_RETRIES;
    cfg->alert.rate_limit_ms = CW_DEFAULT_RATE_LIMIT_MS;
    cfg->tls.verify_peer = true;
    cfg->tls.verify_hostname = true;
    cfg->workers = CW_DEFAULT_WORKERS;
    cfg->shutdown_timeout_ms = CW_DEFAULT_SHUTDOWN_TIMEOUT_MS;
    cfg->log_format = CW_LOG_LOGFMT;
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
    if ((cfg->tls.cert_file == NULL) != (cfg->tls.key_file == NULL)) {
        cw_key_id set = cfg->tls.cert_file ? CW_KEY_TLS_CERT_FILE : CW_KEY_TLS_KEY_FILE;
        char where[64] = "";
        if (cfg->origin[set] == CW_ORIGIN_FILE)
            snprintf(where, sizeof where, ":%u", cfg->line[set]);
        return cw_config_fail(ctx, CW_STATUS_CONFIG,
                              "%s%s: [broker] tls_cert_file and tls_key_file go together: "
                              "set both for a client certificate, or neither",
                              ctx->file, where);
    }
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

/* Sets key `i` from outside the file (environment, flag); `label` names the
 * source in the message of an invalid value. */
static int cw_config_apply_one(cw_config_ctx *ctx, cw_key_id i, const char *value,
                               cw_config_origin origin, const char *label,
                               const char *static_label)
{
    const cw_key *k = &cw_keys[i];
    cw_config *cfg = ctx->cfg;
    char why[CW_WHY_MAX] = "";
    int rc;

    if (i == CW_KEY_PLUGINS) { /* the file's list is replaced, not extended */
        for (size_t j = 0; j < cfg->n_plugins; j++)
            free(cfg->plugins[j]);
        cfg->n_plugins = 0;
        cfg->plugins[0] = NULL;
    }
    rc = k->set(ctx, value, why, sizeof why);
    if (rc == CW_STATUS_NOMEM)
        return cw_config_nomem(label);
    if (rc != 0)
        return cw__error(rc, "%s: [%s] %s: %s", label, k->section, k->name, why);
    cfg->origin[i] = (unsigned char)origin;
    cfg->line[i] = 0;
    cfg->origin_label[i] = static_label;
    return 0;
}

/* CW_<SECTION>_<KEY> of key `i`. */
static void cw_config_env_name(cw_key_id i, char *out, size_t cap)
{
    size_t n = (size_t)snprintf(out, cap, "CW_%s_%s", cw_keys[i].section, cw_keys[i].name);
    for (size_t j = 0; j < n && j < cap; j++)
        out[j] = (char)toupper((unsigned char)out[j]);
}

/* The environment overrides the file: CW_<SECTION>_<KEY> for every key of
 * the fixed sections, then CW_AMQP_URL. Empty variables are ignored. */
static int cw_config_apply_env(cw_config_ctx *ctx)
{
    char name[96];
    const char *v;
    int rc;

    for (int i = 0; i < CW_KEY_COUNT; i++) {
        cw_config_env_name((cw_key_id)i, name, sizeof name);
        v = getenv(name);
        if (v == NULL || *v == '\0')
            continue;
        if ((rc = cw_config_apply_one(ctx, (cw_key_id)i, v, CW_ORIGIN_ENV, name, NULL)) != 0)
            return ctx->status = rc;
    }
    v = getenv("CW_AMQP_URL");
    if (v != NULL && *v != '\0' &&
        (rc = cw_config_apply_one(ctx, CW_KEY_URL, v, CW_ORIGIN_ENV, "CW_AMQP_URL",
                                  "CW_AMQP_URL")) != 0)
        return ctx->status = rc;
    return 0;
}

/* Defaults and the environment, without a file. */
static int cw_config_env_only(cw_config *cfg)
{
    cw_config_ctx ctx = {.cfg = cfg, .file = "environment"};
    int rc;

    ctx.dir = getcwd(NULL, 0);
    if (ctx.dir == NULL)
        return cw__error(CW_STATUS_CONFIG, "cannot get the working directory: %s",
                         strerror(errno));
    rc = cw_config_apply_env(&ctx);
    free(ctx.dir);
    return rc;
}

int cw_config_override(cw_config *cfg, const char *section, const char *key, const char *value,
                       cw_config_origin origin, const char *label)
{
    cw_config_ctx ctx = {.cfg = cfg, .file = label};
    const char *slash = cfg->path ? strrchr(cfg->path, '/') : NULL;
    int rc;

    for (int i = 0; i < CW_KEY_COUNT; i++) {
        if (strcmp(cw_keys[i].section, section) != 0 || strcmp(cw_keys[i].name, key) != 0)
            continue;
        ctx.dir = slash ? strndup(cfg->path, (size_t)(slash - cfg->path) + 1) : getcwd(NULL, 0);
        if (ctx.dir == NULL)
            return cw_config_nomem(label);
        rc = cw_config_apply_one(&ctx, (cw_key_id)i, value, origin, label, label);
        free(ctx.dir);
        return rc;
    }
    return cw__error(CW_STATUS_INVALID_ARG, "%s: no key [%s] %s", label, section, key);
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
    else if ((rc = cw_config_apply_env(&ctx)) == 0)
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
    rc = path != NULL ? cw_config_read_file(cfg, path) : cw_config_env_only(cfg);
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
    cw__argv_free(cfg->alert.command_argv);
    free(cfg->alert.webhook_url);
    free(cfg->tls.ca_file);
    free(cfg->tls.cert_file);
    free(cfg->tls.key_file);
    free(cfg->metrics_listen);
    free(cfg->path);
    free(cfg->url);
    free(cfg->exchange);
    free(cfg->name);
    free(cfg->queue);
    free(cfg->dlq);
    free(cfg->store_path);
    free(cfg);
}

/* ---- describing the effective values ------------------------------------ */

/* A duration as the file would write it: the largest unit that is exact. */
static void cw_fmt_duration(int64_t ms, char *out, size_t cap)
{
    static const struct {
        int64_t ms;
        const char *unit;
    } units[] = {{86400000, "d"}, {3600000, "h"}, {60000, "m"}, {1000, "s"}};

    if (ms == 0) {
        snprintf(out, cap, "0");
        return;
    }
    for (size_t i = 0; i < sizeof units / sizeof *units; i++) {
        if (ms % units[i].ms == 0) {
            snprintf(out, cap, "%lld%s", (long long)(ms / units[i].ms), units[i].unit);
            return;
        }
    }
    snprintf(out, cap, "%lldms", (long long)ms);
}

static void cw_fmt_size(uint64_t bytes, char *out, size_t cap)
{
    if (bytes >= (1u << 20) && bytes % (1u << 20) == 0)
        snprintf(out, cap, "%lluMiB", (unsigned long long)(bytes >> 20));
    else if (bytes >= 1024 && bytes % 1024 == 0)
        snprintf(out, cap, "%lluKiB", (unsigned long long)(bytes >> 10));
    else
        snprintf(out, cap, "%llu", (unsigned long long)bytes);
}

/* Appends `s` to out (len used of cap) so that the file reads it back as
 * the same word: quoted when it is empty, holds a quote or anything
 * cw__argv_split() splits at (isspace(): \r, \v and \f too), or starts
 * with ';' (after a blank, libinih takes ';' for a comment). Inside quotes
 * '"', '\\' and ';' are escaped with a backslash, the last for the same
 * reason. A word is written whole or not at all: when it does not fit, " ..."
 * ends the value and cap is returned, so that no later word is added. */
static size_t cw_fmt_word(char *out, size_t len, size_t cap, const char *s, bool first)
{
    static const char more[] = " ...";
    bool quote = *s == '\0' || *s == ';';
    size_t need;

    if (len >= cap)
        return len;
    for (const char *c = s; *c != '\0' && !quote; c++)
        quote = isspace((unsigned char)*c) || *c == '"';
    need = (first ? 0 : 1) + (quote ? 2 : 0);
    for (const char *c = s; *c != '\0'; c++)
        need += quote && (*c == '"' || *c == '\\' || *c == ';') ? 2 : 1;
    /* Room for the word and, after it, for " ..." if a later one is cut. */
    if (len + need + sizeof more > cap) {
        if (len + sizeof more <= cap)
            memcpy(out + len, more, sizeof more);
        return cap;
    }
    if (!first)
        out[len++] = ' ';
    if (quote)
        out[len++] = '"';
    for (; *s != '\0'; s++) {
        if (quote && (*s == '"' || *s == '\\' || *s == ';'))
            out[len++] = '\\';
        out[len++] = *s;
    }
    if (quote)
        out[len++] = '"';
    out[len] = '\0';
    return len;
}

/* A plugin setting whose name says it is a secret. */
static bool cw_is_secret_key(const char *key)
{
    static const char *const words[] = {"password", "passwd", "secret", "token",
                                        "credential", "apikey", "api_key", "private"};

    for (size_t i = 0; i < sizeof words / sizeof *words; i++) {
        if (strcasestr(key, words[i]) != NULL)
            return true;
    }
    return false;
}

static const char *cw_jitter_name(cw_jitter j)
{
    return j == CW_JITTER_NONE ? "none" : j == CW_JITTER_EQUAL ? "equal" : "full";
}

/* The value of key `i` as the file would write it, and a note on what a
 * default amounts to. */
static void cw_fmt_key(const cw_config *cfg, cw_key_id i, char *out, size_t cap, char *note,
                       size_t note_cap)
{
    const cw_retry_policy *r = &cfg->retry;
    size_t len = 0;

    out[0] = '\0';
    note[0] = '\0';
    switch (i) {
    case CW_KEY_URL: cw__url_list_mask(cfg->url, out, cap); break;
    case CW_KEY_EXCHANGE: snprintf(out, cap, "%s", cfg->exchange); break;
    case CW_KEY_PREFETCH: snprintf(out, cap, "%u", cfg->prefetch); break;
    case CW_KEY_BATCH:
        snprintf(out, cap, "%u", cfg->batch);
        if (cfg->batch == 0)
            snprintf(note, note_cap, "prefetch/2 = %u", (cfg->prefetch + 1) / 2);
        break;
    case CW_KEY_HEARTBEAT: cw_fmt_duration(cfg->heartbeat_ms, out, cap); break;
    case CW_KEY_TLS_CA_FILE:
        snprintf(out, cap, "%s", cfg->tls.ca_file ? cfg->tls.ca_file : "");
        if (!cfg->tls.ca_file)
            snprintf(note, note_cap, "the system's trusted CAs");
        break;
    case CW_KEY_TLS_CERT_FILE:
        snprintf(out, cap, "%s", cfg->tls.cert_file ? cfg->tls.cert_file : "");
        if (!cfg->tls.cert_file)
            snprintf(note, note_cap, "no client certificate");
        break;
    case CW_KEY_TLS_KEY_FILE:
        snprintf(out, cap, "%s", cfg->tls.key_file ? cfg->tls.key_file : "");
        break;
    case CW_KEY_TLS_VERIFY_PEER:
        snprintf(out, cap, "%s", cfg->tls.verify_peer ? "true" : "false");
        break;
    case CW_KEY_TLS_VERIFY_HOSTNAME:
        snprintf(out, cap, "%s", cfg->tls.verify_hostname ? "true" : "false");
        break;
    case CW_KEY_NAME: snprintf(out, cap, "%s", cfg->name ? cfg->name : ""); break;
    case CW_KEY_QUEUE: snprintf(out, cap, "%s", cfg->queue ? cfg->queue : ""); break;
    case CW_KEY_QUEUE_TYPE:
        snprintf(out, cap, "%s", cfg->queue_type == CW_QUEUE_QUORUM ? "quorum" : "classic");
        break;
    case CW_KEY_PLUGINS:
        for (size_t j = 0; j < cfg->n_plugins; j++)
            len = cw_fmt_word(out, len, cap, cfg->plugins[j], j == 0);
        break;
    case CW_KEY_MAX_BODY_SIZE: cw_fmt_size(cfg->max_body_size, out, cap); break;
    case CW_KEY_HANDLER_TIMEOUT: cw_fmt_duration(cfg->handler_timeout_ms, out, cap); break;
    case CW_KEY_WORKERS: snprintf(out, cap, "%u", cfg->workers); break;
    case CW_KEY_SHUTDOWN_TIMEOUT: cw_fmt_duration(cfg->shutdown_timeout_ms, out, cap); break;
    case CW_KEY_METRICS_LISTEN:
        snprintf(out, cap, "%s", cfg->metrics_listen ? cfg->metrics_listen : "off");
        break;
    case CW_KEY_BACKEND:
        snprintf(out, cap, "%s", cfg->store_backend == CW_STORE_MEMORY ? "memory" : "sqlite");
        break;
    case CW_KEY_STORE_PATH: snprintf(out, cap, "%s", cfg->store_path ? cfg->store_path : ""); break;
    case CW_KEY_LEASE: cw_fmt_duration(cfg->lease_ms, out, cap); break;
    case CW_KEY_RETENTION: cw_fmt_duration(cfg->retention_ms, out, cap); break;
    case CW_KEY_SYNCHRONOUS: snprintf(out, cap, "%s", cfg->store_sync_full ? "full" : "normal"); break;
    case CW_KEY_MAX_ATTEMPTS: snprintf(out, cap, "%u", r->max_attempts); break;
    case CW_KEY_INTERVAL: cw_fmt_duration(r->interval_ms, out, cap); break;
    case CW_KEY_BACKOFF_RATE: snprintf(out, cap, "%g", r->backoff_rate); break;
    case CW_KEY_MAX_DELAY: cw_fmt_duration(r->max_delay_ms, out, cap); break;
    case CW_KEY_JITTER: snprintf(out, cap, "%s", cw_jitter_name(r->jitter)); break;
    case CW_KEY_MAX_DELIVERIES: snprintf(out, cap, "%u", cfg->max_deliveries); break;
    case CW_KEY_COMMAND:
        for (size_t j = 0; cfg->alert.command_argv && cfg->alert.command_argv[j]; j++)
            len = cw_fmt_word(out, len, cap, cfg->alert.command_argv[j], j == 0);
        if (!cfg->alert.command_argv)
            snprintf(note, note_cap, "none");
        break;
    case CW_KEY_WEBHOOK:
        if (cfg->alert.webhook_url)
            cw__url_redact(cfg->alert.webhook_url, out, cap);
        else
            snprintf(note, note_cap, "none");
        break;
    case CW_KEY_ALERT_TIMEOUT: cw_fmt_duration(cfg->alert.timeout_ms, out, cap); break;
    case CW_KEY_WEBHOOK_RETRIES: snprintf(out, cap, "%u", cfg->alert.webhook_retries); break;
    case CW_KEY_RATE_LIMIT: cw_fmt_duration(cfg->alert.rate_limit_ms, out, cap); break;
    case CW_KEY_LEVEL: {
        static const char *const levels[] = {"debug", "info", "warn", "error"};
        snprintf(out, cap, "%s", levels[cfg->log_level]);
        break;
    }
    case CW_KEY_LOG_FORMAT:
        snprintf(out, cap, "%s", cfg->log_format == CW_LOG_JSON ? "json" : "logfmt");
        break;
    case CW_KEY_COUNT: break;
    }
}

/* The value of one retry key of a [handler TYPE] section. */
static void cw_fmt_retry_key(const cw_retry_policy *p, size_t k, char *out, size_t cap)
{
    switch (k) {
    case 0: snprintf(out, cap, "%u", p->max_attempts); break;
    case 1: cw_fmt_duration(p->interval_ms, out, cap); break;
    case 2: snprintf(out, cap, "%g", p->backoff_rate); break;
    case 3: cw_fmt_duration(p->max_delay_ms, out, cap); break;
    default: snprintf(out, cap, "%s", cw_jitter_name(p->jitter)); break;
    }
}

void cw_config_describe(const cw_config *cfg, void (*fn)(const cw_config_entry *e, void *ud),
                        void *ud)
{
    char value[8192], note[256], env[96], section[300];

    for (int i = 0; i < CW_KEY_COUNT; i++) {
        cw_config_entry e = {.section = cw_keys[i].section, .key = cw_keys[i].name};
        cw_fmt_key(cfg, (cw_key_id)i, value, sizeof value, note, sizeof note);
        e.value = value;
        e.origin = (cw_config_origin)cfg->origin[i];
        e.line = cfg->line[i];
        if (e.origin == CW_ORIGIN_ENV && cfg->origin_label[i] == NULL) {
            cw_config_env_name((cw_key_id)i, env, sizeof env);
            e.source = env;
        } else {
            e.source = cfg->origin_label[i];
        }
        e.note = note[0] ? note : NULL;
        fn(&e, ud);
    }
    for (size_t h = 0; h < cfg->n_handlers; h++) {
        const cw_handler_config *hc = &cfg->handlers[h];
        snprintf(section, sizeof section, "handler %s", hc->type);
        for (size_t k = 0; k < CW_RETRY_KEY_COUNT; k++) {
            if (!(hc->set & cw_retry_keys[k].flag))
                continue;
            cw_fmt_retry_key(&hc->retry, k, value, sizeof value);
            cw_config_entry e = {.section = section, .key = cw_retry_keys[k].name,
                                 .value = value, .origin = CW_ORIGIN_FILE};
            fn(&e, ud);
        }
    }
    for (size_t j = 0; j < cfg->n_plugin_settings; j++) {
        const cw_plugin_setting *ps = &cfg->plugin_settings[j];
        snprintf(section, sizeof section, "plugin %s", ps->plugin);
        cw_config_entry e = {.section = section, .key = ps->key,
                             .value = cw_is_secret_key(ps->key) ? "***" : ps->value,
                             .origin = CW_ORIGIN_FILE};
        fn(&e, ud);
    }
}
