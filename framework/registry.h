/* Internal: the handler registry and the plugins that fill it. */
#ifndef CW_FRAMEWORK_REGISTRY_H
#define CW_FRAMEWORK_REGISTRY_H

#include <stddef.h>

#include "compworker/compworker.h"
#include "framework/config.h"

typedef struct cw_plugin {
    char *path;
    void *dl;
    const cw_plugin_info *info;
    cw_teardown_fn teardown;
    void *teardown_data;
    bool has_alert_hooks; /* its code may still run on the alert thread at exit */
    struct cw_plugin *next;
} cw_plugin;

typedef struct cw_handler_entry {
    char *type;
    cw_handler_fn fn;
    void *user_data;
    cw_plugin *plugin;     /* NULL for handlers registered by the embedding program */
    cw_retry_policy retry; /* the plugin's layer: fields flagged in retry_set */
    unsigned retry_set;    /* CW_RETRY_SET_* */
    bool concurrent;       /* cw_handler_opts.concurrent: may run on several threads */
} cw_handler_entry;

typedef struct cw_alert_hook {
    cw_alert_fn fn;
    void *user_data;
    cw_plugin *plugin;
} cw_alert_hook;

struct cw_registry {
    cw_handler_entry *handlers;
    size_t n_handlers, cap_handlers;
    cw_plugin *plugins; /* loaded, newest first */
    cw_plugin *loading; /* the plugin whose cw_plugin_init() runs now */
    const cw_plugin_setting *settings;
    size_t n_settings;
    cw_alert_hook *alert_hooks;
    size_t n_alert_hooks;
};

/* An empty registry; free with cw_registry_free(). */
int cw_registry_new(cw_registry **out);

/* Calls every plugin's teardown (newest first), unloads them, frees all.
 * Accepts NULL. */
void cw_registry_free(cw_registry *reg);

/* Lets cw_registry_setting() answer from the config's [plugin NAME]
 * sections; the array is borrowed and must outlive plugin loading. */
void cw_registry_use_settings(cw_registry *reg, const cw_plugin_setting *s, size_t n);

/* The handler for `type` (`len` bytes, not NUL-terminated), or NULL. */
const cw_handler_entry *cw_registry_find(const cw_registry *reg, const char *type, size_t len);

/* Loads one plugin: dlopen(RTLD_NOW|RTLD_LOCAL), checks cw_plugin_info_v1's
 * ABI version before anything else, finds cw_plugin_init and calls it. A
 * refused plugin is unloaded and whatever it registered is dropped.
 * CW_STATUS_PLUGIN / CW_STATUS_ABI_MISMATCH with a one-line reason naming
 * the file in cw_error_last(). */
int cw_plugin_load(cw_registry *reg, const char *path);

/* True when `type` is 1–255 bytes of [A-Za-z0-9._:-]. */
bool cw__type_valid(const char *type, size_t len);

#endif
