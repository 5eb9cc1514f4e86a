/* Fuzz target: the pool configuration file (cw_config_load(): libinih fed
 * through our line reader in framework/config.c, every section and the key
 * checkers of framework/config_keys.c, the plugin globs, the alert command
 * splitter of framework/argv.c) and what `compworker config check` prints of
 * it (cw_config_describe(), framework/config_describe.c).
 *
 * Input: the whole file. It is written to pool.ini in a directory of its
 * own made at start-up, beside a few files its keys may name (plugins/a.so,
 * plugins/b.so, ca.pem, cert.pem, key.pem). Nothing is loaded or connected
 * to: loading a config only reads files and expands globs. The CW_*
 * environment variables are cleared first, so only the file counts.
 *
 * Asserts: a loaded config is within its documented ranges; what `config
 * check` prints of it, written back as a file, loads again and prints the
 * same (so that the printout is a config one can use). */
#include <ftw.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "compworker/status.h"
#include "framework/config.h"
#include "framework/registry.h"
#include "fuzz.h"
#include "retry/delay.h"
#include "retry/policy.h"

extern char **environ;

static char dir[256];
static char ini_path[300];

static int remove_one(const char *path, const struct stat *st, int flag, struct FTW *ftw)
{
    (void)st;
    (void)flag;
    (void)ftw;
    return remove(path);
}

static void cleanup(void)
{
    if (dir[0])
        nftw(dir, remove_one, 8, FTW_DEPTH | FTW_PHYS);
}

static void touch(const char *rel, mode_t mode)
{
    char path[512];
    snprintf(path, sizeof path, "%s/%s", dir, rel);
    FILE *f = fopen(path, "w");
    FZ_CHECK(f != NULL);
    fclose(f);
    FZ_CHECK(chmod(path, mode) == 0);
}

static void init(void)
{
    /* Only the file counts: no CW_* variable may override it. */
    for (bool again = true; again;) {
        again = false;
        for (char **e = environ; *e; e++) {
            if (strncmp(*e, "CW_", 3) == 0) {
                char name[256];
                size_t n = strcspn(*e, "=");
                snprintf(name, sizeof name, "%.*s", (int)n, *e);
                unsetenv(name);
                again = true;
                break;
            }
        }
    }
    const char *tmp = getenv("TMPDIR");
    snprintf(dir, sizeof dir, "%s/cw-fuzz-config-XXXXXX", tmp && *tmp ? tmp : "/tmp");
    FZ_CHECK(mkdtemp(dir) != NULL);
    atexit(cleanup);
    char sub[300];
    snprintf(sub, sizeof sub, "%s/plugins", dir);
    FZ_CHECK(mkdir(sub, 0700) == 0);
    touch("plugins/a.so", 0600);
    touch("plugins/b.so", 0600);
    touch("ca.pem", 0600);
    touch("cert.pem", 0600);
    touch("key.pem", 0600);
    snprintf(ini_path, sizeof ini_path, "%s/pool.ini", dir);
}

static void write_file(const void *data, size_t size)
{
    FILE *f = fopen(ini_path, "w");
    FZ_CHECK(f != NULL);
    FZ_CHECK(fwrite(data, 1, size, f) == size);
    FZ_CHECK(fclose(f) == 0);
}

/* A growing text. */
typedef struct text {
    char *s;
    size_t len, cap;
} text;

static void put(text *t, const char *s, size_t n)
{
    if (t->len + n + 1 > t->cap) {
        size_t cap = t->cap ? t->cap : 4096;
        while (t->len + n + 1 > cap)
            cap *= 2;
        char *grown = realloc(t->s, cap);
        FZ_CHECK(grown != NULL);
        t->s = grown;
        t->cap = cap;
    }
    memcpy(t->s + t->len, s, n);
    t->len += n;
    t->s[t->len] = '\0';
}

static void puts_(text *t, const char *s)
{
    put(t, s, strlen(s));
}

/* What `config check` shows (less the line numbers) and the file that says
 * the same: every key that came from the file. */
typedef struct described {
    text shown;
    text file;
    char section[300];
} described;

static void on_entry(const cw_config_entry *e, void *ud)
{
    described *d = ud;
    char origin[8];
    FZ_CHECK(e->section && e->key && e->value);
    snprintf(origin, sizeof origin, "%d", (int)e->origin);
    puts_(&d->shown, e->section);
    puts_(&d->shown, "|");
    puts_(&d->shown, e->key);
    puts_(&d->shown, "|");
    puts_(&d->shown, e->value);
    puts_(&d->shown, "|");
    puts_(&d->shown, origin);
    puts_(&d->shown, "|");
    puts_(&d->shown, e->note ? e->note : "");
    puts_(&d->shown, "\n");
    if (e->origin != CW_ORIGIN_FILE)
        return;
    if (strcmp(d->section, e->section) != 0) {
        snprintf(d->section, sizeof d->section, "%s", e->section);
        puts_(&d->file, "[");
        puts_(&d->file, e->section);
        puts_(&d->file, "]\n");
    }
    puts_(&d->file, e->key);
    puts_(&d->file, "=");
    puts_(&d->file, e->value);
    puts_(&d->file, "\n");
}

static size_t longest_line(const char *s)
{
    size_t longest = 0;
    while (s && *s) {
        size_t n = strcspn(s, "\n");
        longest = n > longest ? n : longest;
        s += n + (s[n] == '\n');
    }
    return longest;
}

/* True when a list of words may not fit in the 8 KiB `config check`
 * writes a value into (each word escaped, quoted, after a blank), so that
 * it ends in " ..." instead. */
static bool may_be_cut(char *const *words)
{
    size_t n = 0;
    for (; words && *words; words++)
        n += 2 * strlen(*words) + 3;
    return n + sizeof " ..." > 8192;
}

static bool is_name(const char *s)
{
    size_t n = strlen(s);
    return n >= 1 && n <= 100 &&
           strspn(s, "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"
                     "0123456789_.-") == n;
}

static void check_policy(const cw_retry_policy *p)
{
    FZ_CHECK(p->max_attempts >= 1 && p->max_attempts <= CW_RETRY_MAX_ATTEMPTS_LIMIT);
    FZ_CHECK(p->interval_ms >= 0);
    FZ_CHECK(p->backoff_rate >= 1.0 && p->backoff_rate <= CW_RETRY_BACKOFF_RATE_MAX);
    FZ_CHECK(p->max_delay_ms >= 0 && p->max_delay_ms <= CW_DELAY_MAX_MS);
    int64_t prev = 0;
    for (unsigned n = 1; n < p->max_attempts && n <= 100; n++) {
        int64_t d = cw_retry_base_delay_ms(p, n);
        FZ_CHECK(d >= prev && d <= p->max_delay_ms);
        prev = d;
    }
}

static void check_config(const cw_config *cfg)
{
    FZ_CHECK(cfg->name && is_name(cfg->name));
    FZ_CHECK(cfg->url && cfg->url[0] && cfg->exchange && cfg->queue && cfg->dlq);
    FZ_CHECK(cfg->prefetch >= 1 && cfg->prefetch <= 65535 && cfg->batch <= cfg->prefetch);
    FZ_CHECK(cfg->workers >= 1 && cfg->workers <= CW_POOL_MAX_WORKERS);
    FZ_CHECK(cfg->store_path && cfg->store_path[0] == '/');
    FZ_CHECK(cfg->plugins && cfg->plugins[cfg->n_plugins] == NULL);
    for (size_t i = 0; i < cfg->n_plugins; i++)
        FZ_CHECK(cfg->plugins[i][0] == '/' && access(cfg->plugins[i], F_OK) == 0);
    FZ_CHECK((cfg->tls.cert_file == NULL) == (cfg->tls.key_file == NULL));
    if (cfg->alert.command_argv)
        FZ_CHECK(cfg->alert.command_argv[0] && cfg->alert.command_argv[0][0] == '/');
    FZ_CHECK(cfg->max_deliveries >= 1);
    check_policy(&cfg->retry);
    for (size_t i = 0; i < cfg->n_handlers; i++) {
        const cw_handler_config *h = &cfg->handlers[i];
        FZ_CHECK(cw__type_valid(h->type, strlen(h->type)));
        cw_retry_policy p = cfg->retry;
        cw_retry_policy_merge(&p, &h->retry, h->set);
        check_policy(&p);
    }
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (!dir[0])
        init();
    write_file(data, size);
    cw_config *cfg;
    int rc = cw_config_load(&cfg, ini_path);
    if (rc != 0) {
        FZ_CHECK(cfg == NULL);
        FZ_CHECK(rc == CW_STATUS_CONFIG);
        /* One line naming what is wrong. */
        const char *why = cw_error_last();
        FZ_CHECK(why[0] != '\0');
        return 0;
    }
    check_config(cfg);

    described d1 = {0}, d2 = {0};
    cw_config_describe(cfg, on_entry, &d1);
    if (longest_line(d1.file.s) > 8190 || may_be_cut(cfg->alert.command_argv) ||
        may_be_cut(cfg->plugins)) {
        /* Longer than a line of the file may be (escaping can lengthen a
         * value that fitted), or words `config check` may have cut: nothing
         * to read back. */
        free(d1.shown.s);
        free(d1.file.s);
        cw_config_free(cfg);
        return 0;
    }
    write_file(d1.file.s ? d1.file.s : "", d1.file.len);
    cw_config *again;
    rc = cw_config_load(&again, ini_path);
    if (rc != 0)
        fprintf(stderr, "the described config does not load: %s\n--- file:\n%s---\n",
                cw_error_last(), d1.file.s ? d1.file.s : "");
    FZ_CHECK(rc == 0);
    cw_config_describe(again, on_entry, &d2);
    if (strcmp(d1.shown.s, d2.shown.s) != 0) {
        fprintf(stderr, "described differently once reloaded:\n%s---\n%s--- from:\n%s---\n",
                d1.shown.s, d2.shown.s, d1.file.s ? d1.file.s : "");
    }
    FZ_CHECK(strcmp(d1.shown.s, d2.shown.s) == 0);

    cw_config_free(again);
    free(d1.shown.s);
    free(d1.file.s);
    free(d2.shown.s);
    free(d2.file.s);
    cw_config_free(cfg);
    return 0;
}
