/* Internal: the pool configuration (INI file, environment, flags). */
#ifndef CW_FRAMEWORK_CONFIG_H
#define CW_FRAMEWORK_CONFIG_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "log.h"

typedef enum cw_queue_type { CW_QUEUE_QUORUM = 0, CW_QUEUE_CLASSIC = 1 } cw_queue_type;
typedef enum cw_store_backend { CW_STORE_SQLITE = 0, CW_STORE_MEMORY = 1 } cw_store_backend;

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

    /* [store] */
    cw_store_backend store_backend; /* default sqlite */
    char *store_path;   /* default ./var/<name>.db */
    int64_t lease_ms;   /* default 5m */
    int64_t retention_ms; /* default 7d: done records older than this are swept */
    bool store_sync_full; /* synchronous = full (default) | normal */

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
