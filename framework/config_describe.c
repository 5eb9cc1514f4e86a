/* What `compworker config check` prints: every effective value as the file
 * would write it, passwords and secrets masked (cw_config_describe()). Each
 * key is shown by its type's formatter (or its row's own), from the table
 * of config_keys.c. */
#include <ctype.h>
#include <stdio.h>
#include <string.h>

#include "framework/config_keys.h"
#include "framework/url.h"

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
    static const char *const words[] = {"password",   "passwd", "secret",  "token",
                                        "credential", "apikey", "api_key", "private"};

    for (size_t i = 0; i < sizeof words / sizeof *words; i++) {
        if (strcasestr(key, words[i]) != NULL)
            return true;
    }
    return false;
}

void cw__config_fmt_prefetch(const cw_key *k, const cw_config *cfg, const void *src, char *out,
                             size_t cap, char *note, size_t note_cap)
{
    size_t i = (size_t)(k - cw__config_keys);

    snprintf(out, cap, "%u", *(const unsigned *)src);
    if (cfg->origin[i] == CW_ORIGIN_DEFAULT && cfg->concurrency > 1)
        snprintf(note, note_cap, "2 x concurrency");
}

void cw__config_fmt_batch(const cw_key *k, const cw_config *cfg, const void *src, char *out,
                          size_t cap, char *note, size_t note_cap)
{
    unsigned batch = *(const unsigned *)src;

    (void)k;
    snprintf(out, cap, "%u", batch);
    if (batch == 0)
        snprintf(note, note_cap, "prefetch/2 = %u", (cfg->prefetch + 1) / 2);
}

void cw__config_key_format(const cw_key *k, const cw_config *cfg, const void *src, char *out,
                           size_t cap, char *note, size_t note_cap)
{
    const char *str = NULL;
    char *const *words;
    size_t len = 0;
    bool unset = false;

    out[0] = '\0';
    note[0] = '\0';
    if (k->fmt != NULL) {
        k->fmt(k, cfg, src, out, cap, note, note_cap);
        return;
    }
    if (cw__config_type_is_string(k->type)) {
        str = *(char *const *)src;
        unset = str == NULL;
        if (str == NULL)
            snprintf(out, cap, "%s", k->unset ? k->unset : "");
        else if (k->type == CW_T_BROKER_URLS) /* passwords masked */
            cw__url_list_mask(str, out, cap);
        else if (k->type == CW_T_HTTP_URL) /* tokens in the path or query hidden */
            cw__url_redact(str, out, cap);
        else if (k->type == CW_T_PG_URL) /* passwords masked */
            cw__url_pg_mask(str, out, cap);
        else
            snprintf(out, cap, "%s", str);
    }
    switch (k->type) {
    case CW_T_UINT: snprintf(out, cap, "%u", *(const unsigned *)src); break;
    case CW_T_DURATION: cw_fmt_duration(*(const int64_t *)src, out, cap); break;
    case CW_T_SIZE: cw_fmt_size(*(const uint64_t *)src, out, cap); break;
    case CW_T_DECIMAL: snprintf(out, cap, "%g", *(const double *)src); break;
    case CW_T_BOOL:
        if (k->choices != NULL)
            snprintf(out, cap, "%s", k->choices[*(const bool *)src ? 0 : 1]);
        else
            snprintf(out, cap, "%s", *(const bool *)src ? "true" : "false");
        break;
    case CW_T_CHOICE: snprintf(out, cap, "%s", k->choices[*(const int *)src]); break;
    case CW_T_WORDS:
        words = *(char *const *const *)src;
        unset = words == NULL;
        for (size_t j = 0; words != NULL && words[j] != NULL; j++)
            len = cw_fmt_word(out, len, cap, words[j], j == 0);
        break;
    default: /* the strings, above */ break;
    }
    if (unset && k->unset_note != NULL)
        snprintf(note, note_cap, "%s", k->unset_note);
}

void cw_config_describe(const cw_config *cfg, void (*fn)(const cw_config_entry *e, void *ud),
                        void *ud)
{
    char value[8192], note[256], section[300];

    for (size_t i = 0; i < cw__config_n_keys; i++) {
        const cw_key *k = &cw__config_keys[i];
        cw_config_entry e = {.section = k->section, .key = k->name};

        /* A pool's file shows what its pool uses; a relay's, what the relay
         * does (of the broker: not what only consumers use; of the pool:
         * the largest body it publishes). */
        bool relay_key = strcmp(k->section, "relay") == 0;
        bool shared = strcmp(k->section, "broker") == 0 || strcmp(k->section, "alert") == 0 ||
                      strcmp(k->section, "log") == 0;
        if (cfg->relay) {
            bool consumer = strcmp(k->section, "broker") == 0 &&
                            (strcmp(k->name, "prefetch") == 0 || strcmp(k->name, "batch") == 0);
            bool body = strcmp(k->section, "pool") == 0 && strcmp(k->name, "max_body_size") == 0;
            if (!((relay_key || shared) && !consumer) && !body)
                continue;
        } else if (relay_key) {
            continue;
        }

        cw__config_key_format(k, cfg, cw__config_field(k, cfg), value, sizeof value, note,
                              sizeof note);
        e.value = value;
        e.origin = (cw_config_origin)cfg->origin[i];
        e.line = cfg->line[i];
        e.source = cfg->origin_label[i];
        e.note = note[0] ? note : NULL;
        fn(&e, ud);
    }
    for (size_t h = 0; h < cfg->n_handlers; h++) {
        const cw_handler_config *hc = &cfg->handlers[h];
        snprintf(section, sizeof section, "handler %s", hc->type);
        for (size_t i = 0; i < cw__config_n_keys; i++) {
            const cw_key *k = &cw__config_keys[i];

            if (!(hc->set & k->retry))
                continue;
            cw__config_key_format(k, cfg, cw__config_retry_field(k, &hc->retry), value,
                                  sizeof value, note, sizeof note);
            cw_config_entry e = {.section = section,
                                 .key = k->name,
                                 .value = value,
                                 .origin = CW_ORIGIN_FILE};
            fn(&e, ud);
        }
        for (size_t i = 0; i < cw__config_n_handler_keys; i++) {
            const cw_key *k = &cw__config_handler_keys[i];

            if (!(hc->set & k->retry))
                continue;
            cw__config_key_format(k, cfg, (const char *)hc + k->offset, value, sizeof value, note,
                                  sizeof note);
            cw_config_entry e = {.section = section,
                                 .key = k->name,
                                 .value = value,
                                 .origin = CW_ORIGIN_FILE};
            fn(&e, ud);
        }
    }
    for (size_t j = 0; j < cfg->n_plugin_settings; j++) {
        const cw_plugin_setting *ps = &cfg->plugin_settings[j];
        snprintf(section, sizeof section, "plugin %s", ps->plugin);
        cw_config_entry e = {.section = section,
                             .key = ps->key,
                             .value = cw_is_secret_key(ps->key) ? "***" : ps->value,
                             .origin = CW_ORIGIN_FILE};
        fn(&e, ud);
    }
}
