/* Internal: the pool configuration (INI file, environment, flags). */
#ifndef CW_FRAMEWORK_CONFIG_H
#define CW_FRAMEWORK_CONFIG_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "compworker/compworker.h" /* cw_jitter */
#include "framework/limits.h"
#include "framework/listen.h" /* metrics_listen is what cw__listen_parse() reads */
#include "framework/log.h"

typedef enum cw_queue_type {
    CW_QUEUE_QUORUM = 0,
    CW_QUEUE_CLASSIC = 1
} cw_queue_type;
typedef enum cw_store_backend {
    CW_STORE_SQLITE = 0,
    CW_STORE_MEMORY = 1,
    CW_STORE_POSTGRESQL = 2
} cw_store_backend;

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

/* Which of a [handler TYPE] section's own keys are set (beside CW_RETRY_SET_*). */
enum {
    CW_HANDLER_SET_CONCURRENCY = 1u << 8,
    CW_HANDLER_SET_RATE_LIMIT = 1u << 9
};

/* A `[handler TYPE]` section: overrides of the pool's retry policy, and the
 * type's own limits. */
typedef struct cw_handler_config {
    char *type;
    cw_retry_policy retry; /* only the fields in `set` are meaningful */
    unsigned set;          /* CW_RETRY_SET_*, CW_HANDLER_SET_* */
    unsigned concurrency;  /* at most this many of the type at once per worker; 0 = no limit */
    double rate_per_s;     /* at most this many starts a second in the pool's workers on a
                              host; 0 = no limit */
} cw_handler_config;

/* The `[alert]` section. */
typedef struct cw_alert_config {
    char **command_argv;      /* NULL, or a NULL-terminated argv; argv[0] an absolute path */
    char *webhook_url;        /* NULL, or an http(s) URL */
    int64_t timeout_ms;       /* each command run / HTTP request; default 10s */
    unsigned webhook_retries; /* further tries of a failed POST; default 3 */
    int64_t rate_limit_ms;    /* window per (type, error class); 0 = no limit; default 1m */
} cw_alert_config;

/* TLS to the broker, for amqps:// URLs ([broker] tls_*). */
typedef struct cw_tls_config {
    char *ca_file;        /* NULL: the system's trusted CAs */
    char *cert_file;      /* client certificate (PEM), NULL for none; set with key_file */
    char *key_file;       /* its private key (PEM, not encrypted) */
    bool verify_peer;     /* default true: the broker's certificate must chain to a trusted CA */
    bool verify_hostname; /* default true: and name the host of the URL */
} cw_tls_config;

/* Where the effective value of a key came from. */
typedef enum cw_config_origin {
    CW_ORIGIN_DEFAULT = 0,
    CW_ORIGIN_FILE,
    CW_ORIGIN_ENV,
    CW_ORIGIN_FLAG
} cw_config_origin;

/* Room for the keys of the fixed sections (config_keys.c checks it is enough). */
#define CW_CONFIG_MAX_KEYS 64

/* One `key = value` of a `[plugin NAME]` section. */
typedef struct cw_plugin_setting {
    char *plugin; /* NAME */
    char *key;
    char *value;
} cw_plugin_setting;

typedef struct cw_config {
    char *path; /* the file it was read from ("" when built from defaults) */
    bool relay; /* loaded by cw_config_load_relay() */

    /* [broker] */
    char *url;            /* default amqp://guest:guest@127.0.0.1:5672/ ; env CW_AMQP_URL */
    char *exchange;       /* default cw.tasks */
    unsigned prefetch;    /* default 256, 1..65535 */
    unsigned batch;       /* deliveries settled together; default 0 = prefetch / 2 (at least 1) */
    int64_t heartbeat_ms; /* default 60s; 0 disables */
    cw_tls_config tls;    /* for amqps:// URLs */

    /* [pool] */
    char *name;               /* required: [A-Za-z0-9_.-]{1,100} */
    char *queue;              /* default "cw." + name */
    char *dlq;                /* default "cw.dlq." + name (not a key: derived) */
    cw_queue_type queue_type; /* default quorum */
    char **plugins;           /* expanded paths (globs resolved), NULL-terminated */
    size_t n_plugins;
    uint64_t max_body_size;     /* default 1 MiB */
    int64_t handler_timeout_ms; /* default 5m; the worker is ended past it */
    unsigned workers; /* worker processes the supervisor keeps; default 1, 1..CW_POOL_MAX_WORKERS */
    unsigned concurrency; /* handler threads per worker; default 1, 1..CW_POOL_MAX_CONCURRENCY */
    int64_t shutdown_timeout_ms; /* default 30s: in-flight tasks settle within it */
    char *metrics_listen;        /* "host:port" of /metrics and /healthz, NULL = off */
    bool saga_plans;             /* this pool runs saga compensation plans (cw.saga.plan) */
    char **saga_step_types;      /* NULL-terminated: step types other pools handle */

    /* [store] */
    cw_store_backend store_backend; /* default sqlite */
    char *store_path;               /* default ./var/<name>.db; with postgresql, where this host
                           keeps its crash reports (<path>.crash) */
    char *store_url;                /* postgresql: a libpq URI or key=value string (may hold a
                           password); env CW_STORE_URL */
    char *store_schema;             /* postgresql: the schema of the tables; default compworker */
    int64_t lease_ms;               /* default 5m */
    int64_t retention_ms;           /* default 7d: done records older than this are swept */
    bool store_sync_full;           /* synchronous = full (default) | normal */

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

    /* [relay]: compworker relay, the outbox relay (cw_config_load_relay()) */
    char *relay_url;            /* the publisher's PostgreSQL database: a libpq URI or key=value
                                   string (may hold a password); env CW_RELAY_URL */
    char *relay_table;          /* the outbox table, [schema.]name; default cw_outbox */
    unsigned relay_batch;       /* rows claimed and published together; default 100 */
    int64_t relay_poll_ms;      /* poll this often when no notification comes; default 1s */
    int64_t relay_retention_ms; /* sent rows kept this long; default 7d */
    char *relay_metrics_listen; /* "host:port" of the relay's /metrics and /healthz, NULL = off */

    /* [log] */
    cw_log_level log_level;   /* default info */
    cw_log_format log_format; /* default logfmt */

    /* [plugin NAME] sections, in file order */
    cw_plugin_setting *plugin_settings;
    size_t n_plugin_settings;

    /* Where each key of the fixed sections got its value (see
     * cw_config_describe()): origin, file line, environment variable or
     * flag. Indexed by the keys' order, which is the order of describe. */
    unsigned char origin[CW_CONFIG_MAX_KEYS]; /* cw_config_origin */
    unsigned line[CW_CONFIG_MAX_KEYS];
    const char *origin_label[CW_CONFIG_MAX_KEYS]; /* static: "CW_POOL_WORKERS", "CW_AMQP_URL",
                                                   * "--workers"; NULL for default, file */
} cw_config;

/* Reads `path` (INI). Relative paths inside it (plugins, store path) are taken
 * relative to the directory of `path`. Then applies the environment: every
 * key of the fixed sections can be set with CW_<SECTION>_<KEY> (upper case,
 * e.g. CW_POOL_WORKERS=4, CW_LOG_FORMAT=json), and CW_AMQP_URL sets
 * [broker] url (and wins over CW_BROKER_URL); an empty variable is ignored.
 * An invalid value in the environment is an error naming the variable. Every error is one line naming the
 * file, the line, the key and what is wrong, e.g.
 *   "pool.ini:4: [broker] prefetch: '0' is not between 1 and 65535"
 * and is returned as CW_STATUS_CONFIG with that text in cw_error_last().
 * Unknown sections and keys are errors. A glob in `plugins` that matches no
 * file is an error. `path` NULL builds the defaults (name must then be set by
 * the caller). Free with cw_config_free(). */
int cw_config_load(cw_config **out, const char *path);

/* cw_config_load() for `compworker relay`: the file of an outbox relay,
 * with [relay], [broker], [alert] and [log] sections. [pool] name is not
 * required (without it the pool's derived names stay NULL); [relay] url is
 * (or CW_RELAY_URL). */
int cw_config_load_relay(cw_config **out, const char *path);

/* Sets one key of a fixed section from a command-line flag (or any
 * `origin`), with the checks of the file; `label` (e.g. "--workers") names it
 * in errors and in cw_config_describe(). Only for keys no default derives
 * from (not name, prefetch, store path); a prefetch left to its default
 * follows a [pool] concurrency set here. CW_STATUS_CONFIG with the reason,
 * CW_STATUS_INVALID_ARG for an unknown key. */
int cw_config_override(cw_config *cfg, const char *section, const char *key, const char *value,
                       cw_config_origin origin, const char *label);

/* One effective value, for `compworker config check`. */
typedef struct cw_config_entry {
    const char *section; /* "broker", ... or "handler TYPE" / "plugin NAME" */
    const char *key;
    const char *value; /* as it would be written in the file; passwords masked */
    cw_config_origin origin;
    unsigned line;      /* CW_ORIGIN_FILE: the line */
    const char *source; /* CW_ORIGIN_ENV / FLAG: the variable or flag */
    const char *note;   /* NULL, or what a default amounts to ("= prefetch/2 = 128") */
} cw_config_entry;

/* Calls `fn` for every key of the fixed sections in file order, then for
 * every [handler TYPE] and [plugin NAME] key (origin file). Values are
 * borrowed for the call only. */
void cw_config_describe(const cw_config *cfg, void (*fn)(const cw_config_entry *e, void *ud),
                        void *ud);

/* Accepts NULL. */
void cw_config_free(cw_config *cfg);

#endif
