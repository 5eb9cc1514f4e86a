/* The pool configuration: an INI file read with libinih, then the environment.
 *
 * libinih does not tell the handler which line it is on (Debian builds it
 * without INI_HANDLER_LINENO) and does not report sections that hold no key,
 * so the file is fed to ini_parse_stream() through our own line reader: it
 * counts lines, so every message can name one, and checks section headers as
 * they go by. Values are checked as they arrive, each by its row of the key
 * table (config_keys.c), which also gives the defaults and the environment
 * variables; what depends on several keys (defaults derived from the pool
 * name, batch against prefetch) is settled once the whole file has been
 * read. The first error stops the parse. */
#include <ctype.h>
#include <errno.h>
#include <ini.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <unistd.h>

#include "compworker/status.h"
#include "framework/config.h"
#include "framework/config_keys.h"
#include "framework/error.h"
#include "framework/registry.h"

#define CW_MAX_LINE 8192  /* longest line, with its newline and NUL, given to inih */
#define CW_MAX_SECTION 49 /* inih silently truncates longer section names */
#define CW_WHY_MAX 768    /* "what is wrong" part of a message */

static const char *const cw_sections[] = {"broker", "pool",  "store", "retry",
                                          "alert",  "relay", "log"};

/* ---- small helpers ----------------------------------------------------- */

static int cw_config_nomem(const char *file)
{
    return cw__error(CW_STATUS_NOMEM, "%s: out of memory", file ? file : "config");
}

/* ---- sections ---------------------------------------------------------- */

/* What a section header names. */
typedef struct cw_section {
    const char *fixed; /* one of cw_sections, or NULL */
    const char *name;  /* NAME of "plugin NAME" / TYPE of "handler TYPE", or NULL */
    size_t name_len;
    bool handler; /* "handler TYPE" (else "plugin NAME") */
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
        cw__config_is_name(rest, rest_len, CW_NAME_MAX)) {
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

    for (size_t i = 0; i < cw__config_n_keys && used < sizeof known; i++) {
        if (strcmp(cw__config_keys[i].section, section) == 0) {
            used += (size_t)snprintf(known + used, sizeof known - used, "%s%s", n++ ? ", " : "",
                                     cw__config_keys[i].name);
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
    /* The retry keys, then the section's own: a line slot each, after the
     * fixed sections' keys. */
    for (size_t n = 0; n < cw__config_n_keys + cw__config_n_handler_keys; n++) {
        bool own = n >= cw__config_n_keys;
        const cw_key *rk = own ? &cw__config_handler_keys[n - cw__config_n_keys]
                               : &cw__config_keys[n];
        unsigned *line = own ? &ctx->handler_lines[i].own[n - cw__config_n_keys]
                             : &ctx->handler_lines[i].key[n];

        if (rk->retry == 0 || strcasecmp(rk->name, key) != 0)
            continue;
        if (*line != 0)
            return cw_config_fail(ctx, CW_STATUS_CONFIG,
                                  "%s:%u: [handler %s] %s: set twice (first on line %u)", ctx->file,
                                  ctx->lineno, h->type, rk->name, *line);
        *line = ctx->lineno;
        why[0] = '\0';
        void *dst = own ? (char *)h + rk->offset : cw__config_retry_field(rk, &h->retry);
        rc = cw__config_key_set(rk, ctx, dst, value, why, sizeof why);
        if (rc != 0)
            return cw_config_fail(ctx, rc, "%s:%u: [handler %s] %s: %s", ctx->file, ctx->lineno,
                                  h->type, rk->name, why);
        h->set |= rk->retry;
        return 0;
    }
    for (size_t k = 0; k < cw__config_n_keys + cw__config_n_handler_keys; k++) {
        const cw_key *rk = k < cw__config_n_keys ? &cw__config_keys[k]
                                                 : &cw__config_handler_keys[k - cw__config_n_keys];
        if (rk->retry != 0)
            used += (size_t)snprintf(known + used, sizeof known - used, "%s%s", used ? ", " : "",
                                     rk->name);
    }
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
                              "retry, alert, relay, log, handler TYPE or plugin NAME)",
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

    for (size_t i = 0; i < cw__config_n_keys; i++) {
        const cw_key *k = &cw__config_keys[i];
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
        rc = cw__config_key_set(k, ctx, cw__config_field(k, ctx->cfg), value, why, sizeof why);
        if (rc != 0)
            cw_config_fail(ctx, rc, "%s:%u: [%s] %s: %s", ctx->file, ctx->lineno, fixed, k->name,
                           why);
        return rc == 0;
    }
    cw_config_unknown_key(ctx, fixed, key);
    return 0;
}

/* ---- loading ----------------------------------------------------------- */

/* The defaults of every key (the table's), and an empty path. */
static int cw_config_defaults(cw_config *cfg)
{
    cfg->path = strdup("");
    if (cfg->path == NULL)
        return CW_STATUS_NOMEM;
    for (size_t i = 0; i < cw__config_n_keys; i++) {
        if (cw__config_key_default(&cw__config_keys[i], cfg) != 0)
            return CW_STATUS_NOMEM;
    }
    return 0;
}

/* The index of key [section] name (exactly so written), or cw__config_n_keys. */
static size_t cw_config_key_index(const char *section, const char *name)
{
    size_t i = 0;

    while (i < cw__config_n_keys && (strcmp(cw__config_keys[i].section, section) != 0 ||
                                     strcmp(cw__config_keys[i].name, name) != 0))
        i++;
    return i;
}

/* Defaults that follow another key: a prefetch not set follows
 * concurrency (two deliveries per handler thread: one running, one waiting;
 * a worker holding more would keep from other workers what it cannot run
 * yet), or is the row's default with one thread. */
static void cw_config_derive(cw_config *cfg)
{
    size_t p = cw_config_key_index("broker", "prefetch");
    if (cfg->origin[p] != CW_ORIGIN_DEFAULT)
        return;
    unsigned follow = cfg->concurrency > 32767 ? 65535 : 2 * cfg->concurrency;
    cfg->prefetch = cfg->concurrency > 1 ? follow : (unsigned)cw__config_keys[p].def.i;
}

/* What depends on several keys, once the whole file is read. */
static int cw_config_finish(cw_config_ctx *ctx)
{
    cw_config *cfg = ctx->cfg;
    char *rel;

    if (cfg->relay) {
        if (cfg->relay_url == NULL)
            return cw_config_fail(ctx, CW_STATUS_CONFIG,
                                  "%s: [relay] url is required (the publisher's database, a libpq "
                                  "URI such as postgresql://orders@db1:5432/orders, or "
                                  "CW_RELAY_URL)",
                                  ctx->file);
        if (cfg->name == NULL)
            return 0;
    }
    if (cfg->name == NULL)
        return cw_config_fail(ctx, CW_STATUS_CONFIG, "%s: [pool] name is required%s", ctx->file,
                              cfg->relay_url ? " (a relay's file is for 'compworker relay')" : "");
    cw_config_derive(cfg);
    if (cfg->batch > cfg->prefetch)
        return cw_config_fail(ctx, CW_STATUS_CONFIG,
                              "%s:%u: [broker] batch: %u is more than prefetch (%u)", ctx->file,
                              ctx->key_line[cw_config_key_index("broker", "batch")], cfg->batch,
                              cfg->prefetch);
    if ((cfg->tls.cert_file == NULL) != (cfg->tls.key_file == NULL)) {
        size_t set = cw_config_key_index("broker",
                                         cfg->tls.cert_file ? "tls_cert_file" : "tls_key_file");
        char where[64] = "";
        if (cfg->origin[set] == CW_ORIGIN_FILE)
            snprintf(where, sizeof where, ":%u", cfg->line[set]);
        return cw_config_fail(ctx, CW_STATUS_CONFIG,
                              "%s%s: [broker] tls_cert_file and tls_key_file go together: "
                              "set both for a client certificate, or neither",
                              ctx->file, where);
    }
    if (cfg->saga_plans && cfg->store_backend == CW_STORE_MEMORY) {
        size_t set = cw_config_key_index("pool", "saga_plans");
        char where[64] = "";
        if (cfg->origin[set] == CW_ORIGIN_FILE)
            snprintf(where, sizeof where, ":%u", cfg->line[set]);
        return cw_config_fail(ctx, CW_STATUS_CONFIG,
                              "%s%s: [pool] saga_plans: needs a store with transactions ([store] "
                              "backend sqlite or postgresql, not memory)",
                              ctx->file, where);
    }
    if (cfg->store_backend == CW_STORE_POSTGRESQL && cfg->store_url == NULL) {
        size_t set = cw_config_key_index("store", "backend");
        char where[64] = "";
        if (cfg->origin[set] == CW_ORIGIN_FILE)
            snprintf(where, sizeof where, ":%u", cfg->line[set]);
        return cw_config_fail(ctx, CW_STATUS_CONFIG,
                              "%s%s: [store] url: required with backend = postgresql (a libpq "
                              "URI such as postgresql://cw@db1:5432/orders, or CW_STORE_URL)",
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
        cfg->store_path = cw__config_path_join(ctx->dir, rel);
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
 * source in the message of an invalid value, and (static) in cfg->origin_label. */
static int cw_config_apply_one(cw_config_ctx *ctx, size_t i, const char *value,
                               cw_config_origin origin, const char *label)
{
    const cw_key *k = &cw__config_keys[i];
    cw_config *cfg = ctx->cfg;
    char why[CW_WHY_MAX] = "";
    int rc;

    rc = cw__config_key_set(k, ctx, cw__config_field(k, cfg), value, why, sizeof why);
    if (rc == CW_STATUS_NOMEM)
        return cw_config_nomem(label);
    if (rc != 0)
        return cw__error(rc, "%s: [%s] %s: %s", label, k->section, k->name, why);
    cfg->origin[i] = (unsigned char)origin;
    cfg->line[i] = 0;
    cfg->origin_label[i] = label;
    return 0;
}

/* The environment overrides the file: every key's variable (CW_<SECTION>_<KEY>),
 * then the aliases, so that they win (CW_AMQP_URL over CW_BROKER_URL). Empty
 * variables are ignored. */
static int cw_config_apply_env(cw_config_ctx *ctx)
{
    const char *v;
    int rc;

    for (int alias = 0; alias < 2; alias++) {
        for (size_t i = 0; i < cw__config_n_keys; i++) {
            const char *name = alias ? cw__config_keys[i].env_alias : cw__config_keys[i].env;

            if (name == NULL || (v = getenv(name)) == NULL || *v == '\0')
                continue;
            if ((rc = cw_config_apply_one(ctx, i, v, CW_ORIGIN_ENV, name)) != 0)
                return ctx->status = rc;
        }
    }
    return 0;
}

/* Defaults and the environment, without a file. */
static int cw_config_env_only(cw_config *cfg)
{
    cw_config_ctx ctx = {.cfg = cfg, .file = "environment"};
    int rc;

    ctx.dir = getcwd(NULL, 0);
    if (ctx.dir == NULL)
        return cw__error(CW_STATUS_CONFIG, "cannot get the working directory: %s", strerror(errno));
    rc = cw_config_apply_env(&ctx);
    free(ctx.dir);
    return rc;
}

int cw_config_override(cw_config *cfg, const char *section, const char *key, const char *value,
                       cw_config_origin origin, const char *label)
{
    cw_config_ctx ctx = {.cfg = cfg, .file = label};
    const char *slash = cfg->path ? strrchr(cfg->path, '/') : NULL;
    size_t i = cw_config_key_index(section, key);
    int rc;

    if (i == cw__config_n_keys)
        return cw__error(CW_STATUS_INVALID_ARG, "%s: no key [%s] %s", label, section, key);
    ctx.dir = slash ? strndup(cfg->path, (size_t)(slash - cfg->path) + 1) : getcwd(NULL, 0);
    if (ctx.dir == NULL)
        return cw_config_nomem(label);
    rc = cw_config_apply_one(&ctx, i, value, origin, label);
    free(ctx.dir);
    if (rc == 0) {
        cw_config_derive(cfg);
        if (cfg->batch > cfg->prefetch)
            rc = cw__error(CW_STATUS_CONFIG, "%s: [broker] batch %u is more than prefetch (%u)",
                           label, cfg->batch, cfg->prefetch);
    }
    return rc;
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
    cfg->path = cw__config_path_join(ctx.dir, slash ? slash + 1 : path);
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

static int cw_config_load_kind(cw_config **out, const char *path, bool relay);

int cw_config_load(cw_config **out, const char *path)
{
    return cw_config_load_kind(out, path, false);
}

int cw_config_load_relay(cw_config **out, const char *path)
{
    return cw_config_load_kind(out, path, true);
}

static int cw_config_load_kind(cw_config **out, const char *path, bool relay)
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
    cfg->relay = relay;
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
    for (size_t i = 0; i < cw__config_n_keys; i++)
        cw__config_key_free(&cw__config_keys[i], cfg);
    for (size_t i = 0; i < cfg->n_plugin_settings; i++) {
        free(cfg->plugin_settings[i].plugin);
        free(cfg->plugin_settings[i].key);
        free(cfg->plugin_settings[i].value);
    }
    free(cfg->plugin_settings);
    for (size_t i = 0; i < cfg->n_handlers; i++)
        free(cfg->handlers[i].type);
    free(cfg->handlers);
    free(cfg->path);
    free(cfg->dlq);
    free(cfg);
}
