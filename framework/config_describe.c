/* What `compworker config check` prints: every effective value as the file
 * would write it, passwords and secrets masked (cw_config_describe()). */
#include <ctype.h>
#include <stdio.h>
#include <string.h>

#include "framework/config_keys.h"
#include "framework/url.h"

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
        cw_config_entry e = {.section = cw__config_keys[i].section, .key = cw__config_keys[i].name};
        cw_fmt_key(cfg, (cw_key_id)i, value, sizeof value, note, sizeof note);
        e.value = value;
        e.origin = (cw_config_origin)cfg->origin[i];
        e.line = cfg->line[i];
        if (e.origin == CW_ORIGIN_ENV && cfg->origin_label[i] == NULL) {
            cw__config_env_name((cw_key_id)i, env, sizeof env);
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
            if (!(hc->set & cw__config_retry_keys[k].flag))
                continue;
            cw_fmt_retry_key(&hc->retry, k, value, sizeof value);
            cw_config_entry e = {.section = section, .key = cw__config_retry_keys[k].name,
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
