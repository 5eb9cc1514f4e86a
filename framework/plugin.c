/* The plugin loader: dlopen, ABI check, init, and unload. */
#include <dlfcn.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "framework/error.h"
#include "framework/log.h"
#include "framework/registry.h"

void cw__registry_drop_plugin(cw_registry *reg, const cw_plugin *p);

void cw__plugin_unload(cw_plugin *p)
{
    if (!p)
        return;
        /* Under the sanitizers a plugin stays mapped so that leak reports can
     * still name its functions; the process ends right after anyway. */
#if !defined(__SANITIZE_ADDRESS__)
    /* A plugin with alert hooks stays mapped: a hook that outlived the
     * alerter's shutdown bound may still be running its code. */
    if (p->dl && !p->has_alert_hooks)
        dlclose(p->dl);
#endif
    free(p->path);
    free(p);
}

int cw_plugin_load(cw_registry *reg, const char *path)
{
    int rc;
    cw_plugin *p = calloc(1, sizeof *p);
    if (!p || !(p->path = strdup(path))) {
        free(p);
        return cw__error(CW_STATUS_NOMEM, "%s: out of memory", path);
    }

    dlerror();
    p->dl = dlopen(path, RTLD_NOW | RTLD_LOCAL);
    if (!p->dl) {
        const char *why = dlerror();
        rc = cw__error(CW_STATUS_PLUGIN, "%s: cannot load plugin: %s", path,
                       why ? why : "unknown error");
        goto out_free;
    }
    p->info = dlsym(p->dl, "cw_plugin_info_v1");
    if (!p->info) {
        rc = cw__error(CW_STATUS_PLUGIN,
                       "%s: not a compworker plugin: no cw_plugin_info_v1 symbol "
                       "(declare it with CW_PLUGIN_DECLARE)",
                       path);
        goto out_close;
    }
    if (p->info->abi_version != CW_ABI_VERSION) {
        rc = cw__error(CW_STATUS_ABI_MISMATCH,
                       "%s: plugin built for ABI version %u, this compworker has ABI version %d; "
                       "rebuild the plugin against compworker %s",
                       path, p->info->abi_version, CW_ABI_VERSION, CW_VERSION_STRING);
        goto out_close;
    }
    if (!p->info->name || !p->info->name[0] || !p->info->version) {
        rc = cw__error(CW_STATUS_PLUGIN, "%s: CW_PLUGIN_DECLARE has an empty name or version",
                       path);
        goto out_close;
    }
    for (const cw_plugin *q = reg->plugins; q; q = q->next) {
        if (strcmp(q->info->name, p->info->name) == 0) {
            rc = cw__error(CW_STATUS_EXISTS, "%s: a plugin named '%s' is already loaded from %s",
                           path, p->info->name, q->path);
            goto out_close;
        }
    }
    int (*init)(cw_registry *) = NULL;
    *(void **)&init = dlsym(p->dl, "cw_plugin_init");
    if (!init) {
        rc = cw__error(CW_STATUS_PLUGIN, "%s: plugin has no cw_plugin_init entry point", path);
        goto out_close;
    }

    reg->loading = p;
    cw__error_clear();
    int ret = init(reg);
    reg->loading = NULL;
    if (ret != 0) {
        /* Keep the plugin's own reason (if it set one) after ours. */
        char why[512];
        snprintf(why, sizeof why, "%s", cw_error_last());
        rc = cw__error(CW_STATUS_PLUGIN, "%s: cw_plugin_init returned %d%s%s", path, ret,
                       why[0] ? ": " : "", why);
        cw__registry_drop_plugin(reg, p);
        if (p->teardown)
            p->teardown(p->teardown_data);
        goto out_close;
    }
    p->next = reg->plugins;
    reg->plugins = p;
    cw_log_info(NULL, "loaded plugin %s %s from %s", p->info->name, p->info->version, path);
    return 0;

out_close:
    dlclose(p->dl);
out_free:
    free(p->path);
    free(p);
    return rc;
}
