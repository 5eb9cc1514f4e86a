/* Internal: the pool configuration (INI file, environment, flags). */
#ifndef CW_FRAMEWORK_CONFIG_H
#define CW_FRAMEWORK_CONFIG_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "compworker/compworker.h" /* cw_jitter */
#include "log.h"

typedef enum cw_queue_type { CW_QUEUE_QUORUM = 0, CW_QUEUE_CLASSIC = 1 } cw_queue_type;
typedef enum cw_store_backend { CW_STORE_SQLITE = 0, CW_STORE_MEMORY = 1 } cw_store_backend;

/* A retry policy. The delay before attempt n+1 (after n failed attempts) is
 * min(max_delay, interval * backoff_rate^(n-1)), then jittered. */
typedef struct cw_retry_policy {
    unsigned max_attempts; /* attempts in all, the first included; 1 = never retry */
    int64_t interval_ms;   /* delay after the first failure */
    double backoff_rate;   /* >= 1.0 */
    int64_t max_delay_ms;
    cw_jitter jitter;
} cw_retry_policy;

/* Which fields of a cw_retry_policy a layer sets (the rest are inherited). */
enum {
    CW_RETRY_SET_MAX_ATTEMPTS = 1u << 0,
    CW_RETRY_SET_INTERVAL = 1u << 1,
    CW_RETRY_SET_BACKOFF_RATE = 1u << 2,
    CW_RETRY_SET_MAX_DELAY = 1u << 3,
    CW_RETRY_SET_JITTER = 1u << 4
};

/* A `[handler TYPE]` section: overrides of the pool's retry policy. */
typedef struct cw_handler_config {
    char *type;
    cw_retry_policy retry; /* only the fields in `set` are meaningful */
    unsigned set;          /* CW_RETRY_SET_* */
} cw_handler_config;

/* The `[alert]` section. */
typedef struct cw_alert_config {
    char **command_argv;      /* NULL, or a NULL-terminated argv; argv[0] an absolute path */
    char *webhook_url;        /* NULL, or an http(s) URL */
    int64_t timeout_ms;       /* each command run / HTTP request; default 10s */
    unsigned webhook_retries; /* further tries of a failed POST; default 3 */
    int64_t rate_limit_ms;    /* window per (type, error class); 0 = no limit; default 1m */
} cw_alert_config;

/* One `key = value` of a `[plugin NAME]` section. */
typedef struct cw_plugin_setting {
    char *plugin; /* NAME */
    char *key;
    char *value;
} cw_plugin_setting;

typedef struct cw_config {
    char *path; /* the file it was read from ("" when built from defaults) */

    /* [broker] */
    char *url;          /* default amqp://guest:guest@127.0.0.1:5672/ ; env CW_AMQP_URL */
    char *exchange;     /* default cw.tasks */
    unsigned prefetch;  /* default 256, 1..65535 */
    unsigned batch;     /* deliveries settled together; default 0 = prefetch / 2 (at least 1) */
    int64_t heartbeat_ms; /* default 60s; 0 disables */

    /* [pool] */
    char *name;         /* required: [A-Za-z0-9_.-]{1,100} */
    char *queue;        /* default "cw." + name */
    char *dlq;          /* default "cw.dlq." + name (not a key: derived) */
    cw_queue_type queue_type; /* default quorum */
    char **plugins;     /* expanded paths (globs resolved), NULL-terminated */
    size_t n_plugins;
    uint64_t max_body_size; /* default 1 MiB */
    int64_t handler_timeout_ms; /* default 5m; the worker is ended past it */

    /* [store] */
    cw_store_backend store_backend; /* default sqlite */
    char *store_path;   /* default ./var/<name>.db */
    int64_t lease_ms;   /* default 5m */
    int64_t retention_ms; /* default 7d: done records older than this are swept */
    bool store_sync_full; /* synchronous = full (default) | normal */

    /* [retry]: the pool's default policy (defaults: max_attempts 5,
     * interval 1s, backoff_rate 2.0, max_delay 1h, jitter full) and
     * max_deliveries (default 5): deliveries of one message ID without a
     * settled outcome (crashes, timeouts) before it is dead-lettered as poison */
    cw_retry_policy retry;
    unsigned max_deliveries;

    /* [handler TYPE] sections, in file order */
    cw_handler_config *handlers;
    size_t n_handlers;

    /* [alert] */
    cw_alert_config alert;

    /* [log] */
    cw_log_level log_level; /* default info */

    /* [plugin NAME] sections, in file order */
    cw_plugin_setting *plugin_settings;
    size_t n_plugin_settings;
} cw_config;

/* Reads `path` (INI). Relative paths inside it (plugins, store path) are taken
 * relative to the directory of `path`. Then applies the environment
 * (CW_AMQP_URL overrides [broker] url). Every error is one line naming the
 * file, the line, the key and what is wrong, e.g.
 *   "pool.ini:4: [broker] prefetch: '0' is not between 1 and 65535"
 * and is returned as CW_STATUS_CONFIG with that text in cw_error_last().
 * Unknown sections and keys are errors. A glob in `plugins` that matches no
 * file is an error. `path` NULL builds the defaults (name must then be set by
 * the caller). Free with cw_config_free(). */
int cw_config_load(cw_config **out, const char *path);

/* Accepts NULL. */
void cw_config_free(cw_config *cfg);

#endif
