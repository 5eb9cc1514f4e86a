/* Internal to the configuration (config.c, config_keys.c,
 * config_describe.c): the keys of the fixed sections and the state of one
 * load. Others include framework/config.h. */
#ifndef CW_FRAMEWORK_CONFIG_KEYS_H
#define CW_FRAMEWORK_CONFIG_KEYS_H

#include <stdbool.h>
#include <stddef.h>
#include <stdio.h>

#include "framework/config.h"

#define CW_NAME_MAX 100      /* pool and plugin names */

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

/* Checks `value` and stores it in one field of `p`. */
typedef int (*cw_retry_setter)(cw_retry_policy *p, const char *value, char *why, size_t why_len);

typedef struct cw_retry_key {
    const char *name;
    unsigned flag; /* CW_RETRY_SET_* */
    cw_retry_setter set;
} cw_retry_key;

/* Indexed by cw_key_id. */
extern const cw_key cw__config_keys[CW_KEY_COUNT];

/* The keys of a retry policy, in [retry] and in [handler TYPE], in order. */
extern const cw_retry_key cw__config_retry_keys[CW_RETRY_KEY_COUNT];

/* [A-Za-z0-9_.-]{1,max} */
bool cw__config_is_name(const char *s, size_t len, size_t max);

/* "dir/rel" in a new string, without doubling a trailing slash of `dir`. */
char *cw__config_path_join(const char *dir, const char *rel);

/* CW_<SECTION>_<KEY> of key `i`. */
void cw__config_env_name(cw_key_id i, char *out, size_t cap);

#endif
