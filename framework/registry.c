/* The handler registry: task type -> handler. */
#include <stdbool.h>
#include <stdlib.h>
#include <string.h>

#include "framework/error.h"
#include "framework/opts.h"
#include "framework/registry.h"

int cw_registry_new(cw_registry **out)
{
    cw_registry *reg = calloc(1, sizeof *reg);
    if (!reg)
        return cw__error(CW_STATUS_NOMEM, "out of memory allocating the registry");
    *out = reg;
    return 0;
}

bool cw__type_valid(const char *type, size_t len)
{
    if (len == 0 || len > 255)
        return false;
    for (size_t i = 0; i < len; i++) {
        unsigned char c = (unsigned char)type[i];
        bool ok = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
                  c == '.' || c == '_' || c == ':' || c == '-';
        if (!ok)
            return false;
    }
    return true;
}

const cw_handler_entry *cw_registry_find(const cw_registry *reg, const char *type, size_t len)
{
    /* A pool registers a handful of types: a linear scan beats hashing. */
    for (size_t i = 0; i < reg->n_handlers; i++) {
        const cw_handler_entry *h = &reg->handlers[i];
        if (strncmp(h->type, type, len) == 0 && h->type[len] == '\0')
            return h;
    }
    return NULL;
}

/* The size of each version of cw_handler_opts, oldest first (see
 * cw_publish_opts_sizes in client.c for how the table grows). */
static const size_t cw_handler_opts_sizes[CW_HANDLER_OPTS_VERSION] = {
    sizeof(cw_handler_opts), /* 1 */
};

int cw_handler_opts_init(cw_handler_opts *opts, unsigned version)
{
    static const cw_handler_opts init = CW_HANDLER_OPTS_INIT;
    return cw__opts_init(opts, version, &init, cw_handler_opts_sizes, CW_HANDLER_OPTS_VERSION,
                         "cw_handler_opts");
}

int cw_register_handler(cw_registry *reg, const char *type, cw_handler_fn fn, void *user_data)
{
    return cw_register_handler_opts(reg, type, fn, user_data, NULL);
}

int cw_register_handler_opts(cw_registry *reg, const char *type, cw_handler_fn fn, void *user_data,
                             const cw_handler_opts *opts)
{
    cw_handler_opts o = CW_HANDLER_OPTS_INIT;
    if (opts) {
        int rc = cw__opts_read(&o, opts, cw_handler_opts_sizes, CW_HANDLER_OPTS_VERSION,
                               "cw_handler_opts");
        if (rc)
            return rc;
    }
    if (!reg || !type || !fn)
        return cw__error(CW_STATUS_INVALID_ARG, "cw_register_handler: NULL argument");
    size_t len = strlen(type);
    if (!cw__type_valid(type, len))
        return cw__error(CW_STATUS_INVALID_ARG,
                         "cw_register_handler: task type '%.255s' is not 1-255 characters of "
                         "[A-Za-z0-9._:-]",
                         type);
    const cw_handler_entry *have = cw_registry_find(reg, type, len);
    if (have)
        return cw__error(CW_STATUS_EXISTS,
                         "cw_register_handler: a handler for '%s' is already registered by %s",
                         type, have->plugin ? have->plugin->path : "the program");
    if (reg->n_handlers == reg->cap_handlers) {
        size_t cap = reg->cap_handlers ? reg->cap_handlers * 2 : 8;
        cw_handler_entry *h = realloc(reg->handlers, cap * sizeof *h);
        if (!h)
            return cw__error(CW_STATUS_NOMEM, "out of memory registering '%s'", type);
        reg->handlers = h;
        reg->cap_handlers = cap;
    }
    char *copy = strdup(type);
    if (!copy)
        return cw__error(CW_STATUS_NOMEM, "out of memory registering '%s'", type);
    reg->handlers[reg->n_handlers++] = (cw_handler_entry){.type = copy,
                                                          .fn = fn,
                                                          .user_data = user_data,
                                                          .plugin = reg->loading,
                                                          .concurrent = o.concurrent != 0};
    return 0;
}

int cw_register_teardown(cw_registry *reg, cw_teardown_fn fn, void *user_data)
{
    if (!reg || !fn)
        return cw__error(CW_STATUS_INVALID_ARG, "cw_register_teardown: NULL argument");
    if (!reg->loading)
        return cw__error(CW_STATUS_INVALID_ARG,
                         "cw_register_teardown: only a plugin, from cw_plugin_init(), may "
                         "register a teardown");
    if (reg->loading->teardown)
        return cw__error(CW_STATUS_EXISTS, "cw_register_teardown: %s already registered one",
                         reg->loading->path);
    reg->loading->teardown = fn;
    reg->loading->teardown_data = user_data;
    return 0;
}

/* The size of each version of cw_retry_opts, oldest first (see
 * cw_publish_opts_sizes in client.c for how the table grows). */
static const size_t cw_retry_opts_sizes[CW_RETRY_OPTS_VERSION] = {
    sizeof(cw_retry_opts), /* 1 */
};

int cw_retry_opts_init(cw_retry_opts *opts, unsigned version)
{
    static const cw_retry_opts init = CW_RETRY_OPTS_INIT;
    return cw__opts_init(opts, version, &init, cw_retry_opts_sizes, CW_RETRY_OPTS_VERSION,
                         "cw_retry_opts");
}

int cw_register_retry_policy(cw_registry *reg, const char *type, const cw_retry_opts *opts)
{
    cw_retry_opts cur = CW_RETRY_OPTS_INIT;
    const cw_retry_opts *o = &cur;
    if (!reg || !type || !opts)
        return cw__error(CW_STATUS_INVALID_ARG, "cw_register_retry_policy: NULL argument");
    int rc = cw__opts_read(&cur, opts, cw_retry_opts_sizes, CW_RETRY_OPTS_VERSION, "cw_retry_opts");
    if (rc)
        return rc;
    cw_handler_entry *h = (cw_handler_entry *)cw_registry_find(reg, type, strlen(type));
    if (!h)
        return cw__error(CW_STATUS_NOT_FOUND,
                         "cw_register_retry_policy: no handler is registered for '%s'", type);
    cw_retry_policy p = h->retry;
    unsigned set = 0;
    if (o->max_attempts != -1) {
        if (o->max_attempts < 1 || o->max_attempts > 1000)
            return cw__error(CW_STATUS_INVALID_ARG,
                             "cw_register_retry_policy(%s): max_attempts %d is not 1-1000", type,
                             o->max_attempts);
        p.max_attempts = (unsigned)o->max_attempts;
        set |= CW_RETRY_SET_MAX_ATTEMPTS;
    }
    if (o->interval_ms != -1) {
        if (o->interval_ms < 0)
            return cw__error(CW_STATUS_INVALID_ARG,
                             "cw_register_retry_policy(%s): interval_ms is negative", type);
        p.interval_ms = o->interval_ms;
        set |= CW_RETRY_SET_INTERVAL;
    }
    if (o->backoff_rate >= 0) {
        if (!(o->backoff_rate >= 1.0 && o->backoff_rate <= 100.0))
            return cw__error(CW_STATUS_INVALID_ARG,
                             "cw_register_retry_policy(%s): backoff_rate is not 1.0-100", type);
        p.backoff_rate = o->backoff_rate;
        set |= CW_RETRY_SET_BACKOFF_RATE;
    }
    if (o->max_delay_ms != -1) {
        if (o->max_delay_ms < 0)
            return cw__error(CW_STATUS_INVALID_ARG,
                             "cw_register_retry_policy(%s): max_delay_ms is negative", type);
        p.max_delay_ms = o->max_delay_ms;
        set |= CW_RETRY_SET_MAX_DELAY;
    }
    if (o->jitter != -1) {
        if (o->jitter != CW_JITTER_NONE && o->jitter != CW_JITTER_FULL &&
            o->jitter != CW_JITTER_EQUAL)
            return cw__error(CW_STATUS_INVALID_ARG,
                             "cw_register_retry_policy(%s): jitter %d is not a cw_jitter", type,
                             o->jitter);
        p.jitter = (cw_jitter)o->jitter;
        set |= CW_RETRY_SET_JITTER;
    }
    h->retry = p;
    h->retry_set |= set;
    return 0;
}

int cw_register_alert_hook(cw_registry *reg, cw_alert_fn fn, void *user_data)
{
    if (!reg || !fn)
        return cw__error(CW_STATUS_INVALID_ARG, "cw_register_alert_hook: NULL argument");
    cw_alert_hook *h = realloc(reg->alert_hooks, (reg->n_alert_hooks + 1) * sizeof *h);
    if (!h)
        return cw__error(CW_STATUS_NOMEM, "out of memory registering an alert hook");
    reg->alert_hooks = h;
    if (reg->loading)
        reg->loading->has_alert_hooks = true;
    h[reg->n_alert_hooks++] = (cw_alert_hook){.fn = fn,
                                              .user_data = user_data,
                                              .plugin = reg->loading};
    return 0;
}

void cw_registry_use_settings(cw_registry *reg, const cw_plugin_setting *s, size_t n)
{
    reg->settings = s;
    reg->n_settings = n;
}

const char *cw_registry_setting(cw_registry *reg, const char *key, const char *fallback)
{
    if (!reg || !key || !reg->loading || !reg->loading->info)
        return fallback;
    const char *name = reg->loading->info->name;
    for (size_t i = 0; i < reg->n_settings; i++) {
        if (strcmp(reg->settings[i].plugin, name) == 0 && strcmp(reg->settings[i].key, key) == 0)
            return reg->settings[i].value;
    }
    return fallback;
}

/* Drops the handlers `p` registered (after a refused init). */
void cw__registry_drop_plugin(cw_registry *reg, const cw_plugin *p)
{
    size_t k = 0;
    for (size_t i = 0; i < reg->n_alert_hooks; i++) {
        if (reg->alert_hooks[i].plugin != p)
            reg->alert_hooks[k++] = reg->alert_hooks[i];
    }
    reg->n_alert_hooks = k;
    size_t j = 0;
    for (size_t i = 0; i < reg->n_handlers; i++) {
        if (reg->handlers[i].plugin == p)
            free(reg->handlers[i].type);
        else
            reg->handlers[j++] = reg->handlers[i];
    }
    reg->n_handlers = j;
}

void cw__plugin_unload(cw_plugin *p);

void cw_registry_free(cw_registry *reg)
{
    if (!reg)
        return;
    for (cw_plugin *p = reg->plugins; p;) {
        cw_plugin *next = p->next;
        if (p->teardown)
            p->teardown(p->teardown_data);
        p = next;
    }
    for (size_t i = 0; i < reg->n_handlers; i++)
        free(reg->handlers[i].type);
    free(reg->handlers);
    free(reg->alert_hooks);
    for (cw_plugin *p = reg->plugins; p;) {
        cw_plugin *next = p->next;
        cw__plugin_unload(p);
        p = next;
    }
    free(reg);
}
