/* Unit tests for framework/config.c: INI files, defaults, globs, the
 * environment, and the one-line messages of every kind of error. */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>

#include <errno.h>
#include <ftw.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "compworker/status.h"
#include "framework/config.h"

/* The scratch directory of this run (as created) and its realpath(). */
static char g_tmp[512];
static char g_real[512];
/* The working directory to go back to after a test that changes it. */
static char g_cwd[PATH_MAX];

/* ---- helpers ----------------------------------------------------------- */

/* Writes `len` bytes of `text` to `rel` under the scratch directory. */
static void write_bytes(const char *rel, const char *text, size_t len)
{
    char path[PATH_MAX];
    FILE *f;

    snprintf(path, sizeof path, "%s/%s", g_tmp, rel);
    f = fopen(path, "w");
    if (f == NULL)
        fail_msg("cannot create %s: %s", path, strerror(errno));
    assert_int_equal(fwrite(text, 1, len, f), len);
    assert_int_equal(fclose(f), 0);
}

static void write_file(const char *rel, const char *text)
{
    write_bytes(rel, text, strlen(text));
}

static void make_dir(const char *rel)
{
    char path[PATH_MAX];

    snprintf(path, sizeof path, "%s/%s", g_tmp, rel);
    if (mkdir(path, 0700) != 0 && errno != EEXIST)
        fail_msg("cannot create %s: %s", path, strerror(errno));
}

/* The absolute path of `rel` under the scratch directory, symlinks resolved. */
static const char *real_path(const char *rel)
{
    static char path[PATH_MAX];

    snprintf(path, sizeof path, "%s/%s", g_real, rel);
    return path;
}

/* Writes `text` as pool.ini in the scratch directory and loads it. */
static int load_text(const char *text, cw_config **out)
{
    char path[PATH_MAX];

    write_file("pool.ini", text);
    snprintf(path, sizeof path, "%s/pool.ini", g_tmp);
    return cw_config_load(out, path);
}

/* Loads `text`, expects CW_STATUS_CONFIG with no config, and a one-line
 * message holding every string of the NULL-terminated `want`. */
static void expect_error_in(const char *text, const char *const *want)
{
    cw_config *cfg = (cw_config *)&cfg; /* any non-NULL value */
    const char *msg;

    assert_int_equal(load_text(text, &cfg), CW_STATUS_CONFIG);
    assert_null(cfg);
    msg = cw_error_last();
    assert_null(strchr(msg, '\n'));
    for (; *want != NULL; want++) {
        if (strstr(msg, *want) == NULL)
            fail_msg("error message \"%s\" lacks \"%s\"", msg, *want);
    }
}

#define EXPECT_ERROR(text, ...) expect_error_in((text), (const char *const[]){__VA_ARGS__, NULL})

static int remove_entry(const char *path, const struct stat *st, int flag, struct FTW *ftw)
{
    (void)st;
    (void)flag;
    (void)ftw;
    return remove(path);
}

static int group_setup(void **state)
{
    char real[PATH_MAX];

    (void)state;
    snprintf(g_tmp, sizeof g_tmp, "%s/cw-config-XXXXXX",
             getenv("TMPDIR") ? getenv("TMPDIR") : "/tmp");
    if (mkdtemp(g_tmp) == NULL || realpath(g_tmp, real) == NULL)
        return -1;
    if (strlen(real) >= sizeof g_real)
        return -1;
    memcpy(g_real, real, strlen(real) + 1);
    if (getcwd(g_cwd, sizeof g_cwd) == NULL)
        return -1;
    unsetenv("CW_AMQP_URL");
    return 0;
}

static int group_teardown(void **state)
{
    (void)state;
    return nftw(g_tmp, remove_entry, 16, FTW_DEPTH | FTW_PHYS);
}

/* Goes back to the original working directory after tests that chdir(). */
static int restore_cwd(void **state)
{
    (void)state;
    unsetenv("CW_AMQP_URL");
    return chdir(g_cwd);
}

/* ---- defaults ---------------------------------------------------------- */

/* The defaults of [pool] handler_timeout, [retry], [handler] and [alert]. */
static void expect_new_defaults(const cw_config *cfg)
{
    assert_int_equal(cfg->handler_timeout_ms, 5 * 60 * 1000);
    assert_int_equal(cfg->retry.max_attempts, 5);
    assert_int_equal(cfg->retry.interval_ms, 1000);
    assert_true(cfg->retry.backoff_rate == 2.0);
    assert_int_equal(cfg->retry.max_delay_ms, 3600 * 1000);
    assert_int_equal(cfg->retry.jitter, CW_JITTER_FULL);
    assert_int_equal(cfg->max_deliveries, 5);
    assert_null(cfg->handlers);
    assert_int_equal(cfg->n_handlers, 0);
    assert_null(cfg->alert.command_argv);
    assert_null(cfg->alert.webhook_url);
    assert_int_equal(cfg->alert.timeout_ms, 10 * 1000);
    assert_int_equal(cfg->alert.webhook_retries, 3);
    assert_int_equal(cfg->alert.rate_limit_ms, 60 * 1000);
}

static void test_defaults_without_file(void **state)
{
    cw_config *cfg = NULL;

    (void)state;
    assert_int_equal(cw_config_load(&cfg, NULL), 0);
    assert_non_null(cfg);
    assert_string_equal(cfg->path, "");
    assert_string_equal(cfg->url, "amqp://guest:guest@127.0.0.1:5672/");
    assert_string_equal(cfg->exchange, "cw.tasks");
    assert_int_equal(cfg->prefetch, 256);
    assert_int_equal(cfg->batch, 0);
    assert_int_equal(cfg->heartbeat_ms, 60000);
    assert_null(cfg->name);
    assert_null(cfg->queue);
    assert_null(cfg->dlq);
    assert_int_equal(cfg->queue_type, CW_QUEUE_QUORUM);
    assert_non_null(cfg->plugins);
    assert_null(cfg->plugins[0]);
    assert_int_equal(cfg->n_plugins, 0);
    assert_int_equal(cfg->max_body_size, 1024 * 1024);
    assert_int_equal(cfg->store_backend, CW_STORE_SQLITE);
    assert_null(cfg->store_path);
    assert_int_equal(cfg->lease_ms, 5 * 60 * 1000);
    assert_int_equal(cfg->retention_ms, INT64_C(7) * 24 * 3600 * 1000);
    assert_true(cfg->store_sync_full);
    assert_int_equal(cfg->log_level, CW_LOG_INFO);
    assert_int_equal(cfg->n_plugin_settings, 0);
    expect_new_defaults(cfg);
    cw_config_free(cfg);
}

static void test_defaults_from_name(void **state)
{
    cw_config *cfg = NULL;

    (void)state;
    assert_int_equal(load_text("[pool]\nname = orders\n", &cfg), 0);
    assert_string_equal(cfg->path, real_path("pool.ini"));
    assert_string_equal(cfg->name, "orders");
    assert_string_equal(cfg->queue, "cw.orders");
    assert_string_equal(cfg->dlq, "cw.dlq.orders");
    assert_string_equal(cfg->store_path, real_path("var/orders.db"));
    assert_string_equal(cfg->url, "amqp://guest:guest@127.0.0.1:5672/");
    assert_string_equal(cfg->exchange, "cw.tasks");
    assert_int_equal(cfg->prefetch, 256);
    assert_int_equal(cfg->heartbeat_ms, 60000);
    assert_int_equal(cfg->queue_type, CW_QUEUE_QUORUM);
    assert_int_equal(cfg->n_plugins, 0);
    assert_null(cfg->plugins[0]);
    assert_int_equal(cfg->store_backend, CW_STORE_SQLITE);
    assert_true(cfg->store_sync_full);
    assert_int_equal(cfg->log_level, CW_LOG_INFO);
    expect_new_defaults(cfg);
    cw_config_free(cfg);
}

static void test_free_null(void **state)
{
    (void)state;
    cw_config_free(NULL);
}

/* ---- every key --------------------------------------------------------- */

static void test_every_key(void **state)
{
    cw_config *cfg = NULL;

    (void)state;
    make_dir("every");
    write_file("every/h.so", "");
    assert_int_equal(load_text("; a comment\n"
                               "# another\n"
                               "[broker]\n"
                               "url = amqp://u:p@rabbit:5672/vh ; the broker\n"
                               "exchange = saga.tasks\n"
                               "  prefetch = 32\n"
                               "batch = 16\n"
                               "heartbeat = 2m\n"
                               "\n"
                               "[pool]\n"
                               "name = pay-ments_1.eu\n"
                               "queue = custom.q\n"
                               "queue_type = classic\n"
                               "plugins = every/h.so\n"
                               "max_body_size = 64 KiB\n"
                               "[store]\n"
                               "backend = memory\n"
                               "path = data/x.db\n"
                               "lease = 90s\n"
                               "retention = 36h\n"
                               "synchronous = normal\n"
                               "[log]\n"
                               "level = debug\n",
                               &cfg),
                     0);
    assert_string_equal(cfg->url, "amqp://u:p@rabbit:5672/vh");
    assert_string_equal(cfg->exchange, "saga.tasks");
    assert_int_equal(cfg->prefetch, 32);
    assert_int_equal(cfg->batch, 16);
    assert_int_equal(cfg->heartbeat_ms, 120000);
    assert_string_equal(cfg->name, "pay-ments_1.eu");
    assert_string_equal(cfg->queue, "custom.q");
    assert_string_equal(cfg->dlq, "cw.dlq.pay-ments_1.eu");
    assert_int_equal(cfg->queue_type, CW_QUEUE_CLASSIC);
    assert_int_equal(cfg->n_plugins, 1);
    assert_string_equal(cfg->plugins[0], real_path("every/h.so"));
    assert_null(cfg->plugins[1]);
    assert_int_equal(cfg->max_body_size, 64 * 1024);
    assert_int_equal(cfg->store_backend, CW_STORE_MEMORY);
    assert_string_equal(cfg->store_path, real_path("data/x.db"));
    assert_int_equal(cfg->lease_ms, 90000);
    assert_int_equal(cfg->retention_ms, INT64_C(36) * 3600 * 1000);
    assert_false(cfg->store_sync_full);
    assert_int_equal(cfg->log_level, CW_LOG_DEBUG);
    cw_config_free(cfg);
}

static void test_limits_accepted(void **state)
{
    cw_config *cfg = NULL;

    (void)state;
    assert_int_equal(load_text("[broker]\nprefetch = 65535\nbatch = 65535\nheartbeat = 0\n"
                               "[pool]\nname = p\nmax_body_size = 128MiB\n"
                               "[store]\npath = /abs/store.db\nsynchronous = FULL\n"
                               "[log]\nlevel = error\n",
                               &cfg),
                     0);
    assert_int_equal(cfg->prefetch, 65535);
    assert_int_equal(cfg->batch, 65535);
    assert_int_equal(cfg->heartbeat_ms, 0);
    assert_int_equal(cfg->max_body_size, UINT64_C(128) << 20);
    assert_string_equal(cfg->store_path, "/abs/store.db");
    assert_true(cfg->store_sync_full);
    assert_int_equal(cfg->log_level, CW_LOG_ERROR);
    cw_config_free(cfg);

    assert_int_equal(load_text("[broker]\nprefetch = 1\n[pool]\nname = p\nmax_body_size = 1\n",
                               &cfg),
                     0);
    assert_int_equal(cfg->prefetch, 1);
    assert_int_equal(cfg->max_body_size, 1);
    cw_config_free(cfg);
}

/* A BOM, CRLF line ends, names in any case, a section given twice. */
static void test_lenient_syntax(void **state)
{
    cw_config *cfg = NULL;

    (void)state;
    assert_int_equal(load_text("\xEF\xBB\xBF[Pool]\r\n"
                               "Name = crlf\r\n"
                               "[broker]\r\n"
                               "prefetch = 7\r\n"
                               "[ pool ]\r\n"
                               "queue_type = Classic\r\n"
                               "[broker]\r\n"
                               "exchange = x;y\r\n",
                               &cfg),
                     0);
    assert_string_equal(cfg->name, "crlf");
    assert_int_equal(cfg->prefetch, 7);
    assert_int_equal(cfg->queue_type, CW_QUEUE_CLASSIC);
    /* ';' starts a comment only after a blank. */
    assert_string_equal(cfg->exchange, "x;y");
    cw_config_free(cfg);
}

/* ---- [plugin NAME] ----------------------------------------------------- */

static void test_plugin_settings(void **state)
{
    cw_config *cfg = NULL;
    const cw_plugin_setting *s;

    (void)state;
    assert_int_equal(load_text("[plugin refund]\n"
                               "gateway_url = https://pay.example/api?x=1\n"
                               "timeout = 5s\n"
                               "[pool]\n"
                               "name = p\n"
                               "[plugin  restock]\n"
                               "warehouse = main hall ; inline comment\n"
                               "empty =\n"
                               "[plugin refund]\n"
                               "Retries = 3\n",
                               &cfg),
                     0);
    assert_int_equal(cfg->n_plugin_settings, 5);
    s = cfg->plugin_settings;
    assert_string_equal(s[0].plugin, "refund");
    assert_string_equal(s[0].key, "gateway_url");
    assert_string_equal(s[0].value, "https://pay.example/api?x=1");
    assert_string_equal(s[1].plugin, "refund");
    assert_string_equal(s[1].key, "timeout");
    assert_string_equal(s[1].value, "5s");
    assert_string_equal(s[2].plugin, "restock");
    assert_string_equal(s[2].key, "warehouse");
    assert_string_equal(s[2].value, "main hall");
    assert_string_equal(s[3].plugin, "restock");
    assert_string_equal(s[3].key, "empty");
    assert_string_equal(s[3].value, "");
    assert_string_equal(s[4].plugin, "refund");
    assert_string_equal(s[4].key, "Retries");
    assert_string_equal(s[4].value, "3");
    cw_config_free(cfg);
}

/* ---- [retry], [handler TYPE], [alert] ---------------------------------- */

static void test_retry_keys(void **state)
{
    cw_config *cfg = NULL;

    (void)state;
    assert_int_equal(load_text("[pool]\nname = p\nhandler_timeout = 90s\n"
                               "[retry]\n"
                               "max_attempts = 8\n"
                               "interval = 250ms\n"
                               "backoff_rate = 1.5\n"
                               "max_delay = 10m\n"
                               "jitter = Equal\n"
                               "max_deliveries = 3\n",
                               &cfg),
                     0);
    assert_int_equal(cfg->handler_timeout_ms, 90000);
    assert_int_equal(cfg->retry.max_attempts, 8);
    assert_int_equal(cfg->retry.interval_ms, 250);
    assert_true(cfg->retry.backoff_rate == 1.5);
    assert_int_equal(cfg->retry.max_delay_ms, 600000);
    assert_int_equal(cfg->retry.jitter, CW_JITTER_EQUAL);
    assert_int_equal(cfg->max_deliveries, 3);
    assert_int_equal(cfg->n_handlers, 0);
    cw_config_free(cfg);

    /* The limits. */
    assert_int_equal(load_text("[pool]\nname = p\n"
                               "[retry]\n"
                               "max_attempts = 1\n"
                               "interval = 0\n"
                               "backoff_rate = 1\n"
                               "max_delay = 104857500ms\n"
                               "jitter = none\n"
                               "max_deliveries = 90\n",
                               &cfg),
                     0);
    assert_int_equal(cfg->retry.max_attempts, 1);
    assert_int_equal(cfg->retry.interval_ms, 0);
    assert_true(cfg->retry.backoff_rate == 1.0);
    assert_int_equal(cfg->retry.max_delay_ms, 104857500);
    assert_int_equal(cfg->retry.jitter, CW_JITTER_NONE);
    assert_int_equal(cfg->max_deliveries, 90);
    cw_config_free(cfg);

    assert_int_equal(load_text("[pool]\nname = p\n"
                               "[retry]\n"
                               "max_attempts = 1000\n"
                               "backoff_rate = 100.0\n"
                               "max_delay = 0\n"
                               "jitter = FULL\n"
                               "interval = 1d\n",
                               &cfg),
                     0);
    assert_int_equal(cfg->retry.max_attempts, 1000);
    assert_true(cfg->retry.backoff_rate == 100.0);
    assert_int_equal(cfg->retry.max_delay_ms, 0);
    assert_int_equal(cfg->retry.jitter, CW_JITTER_FULL);
    assert_int_equal(cfg->retry.interval_ms, 24 * 3600 * 1000);
    cw_config_free(cfg);
}

static void test_handler_sections(void **state)
{
    cw_config *cfg = NULL;
    const cw_handler_config *h;

    (void)state;
    assert_int_equal(load_text("[handler refund.issue]\n"
                               "max_attempts = 10\n"
                               "jitter = none\n"
                               "[retry]\n"
                               "max_attempts = 4\n"
                               "[Handler  stock:release-v2_x]\n"
                               "Interval = 5s\n"
                               "backoff_rate = 3\n"
                               "max_delay = 2m\n"
                               "[handler empty]\n"
                               "[pool]\n"
                               "name = p\n",
                               &cfg),
                     0);
    assert_int_equal(cfg->retry.max_attempts, 4);
    assert_int_equal(cfg->retry.interval_ms, 1000);
    assert_int_equal(cfg->n_handlers, 3);
    h = cfg->handlers;
    assert_string_equal(h[0].type, "refund.issue");
    assert_int_equal(h[0].set, CW_RETRY_SET_MAX_ATTEMPTS | CW_RETRY_SET_JITTER);
    assert_int_equal(h[0].retry.max_attempts, 10);
    assert_int_equal(h[0].retry.jitter, CW_JITTER_NONE);
    assert_string_equal(h[1].type, "stock:release-v2_x");
    assert_int_equal(h[1].set,
                     CW_RETRY_SET_INTERVAL | CW_RETRY_SET_BACKOFF_RATE | CW_RETRY_SET_MAX_DELAY);
    assert_int_equal(h[1].retry.interval_ms, 5000);
    assert_true(h[1].retry.backoff_rate == 3.0);
    assert_int_equal(h[1].retry.max_delay_ms, 120000);
    /* A section without keys overrides nothing. */
    assert_string_equal(h[2].type, "empty");
    assert_int_equal(h[2].set, 0);
    cw_config_free(cfg);
}

/* Writes an executable (mode 0755) or plain (0644) file under the scratch
 * directory. */
static void write_mode(const char *rel, mode_t mode)
{
    char path[PATH_MAX];

    write_file(rel, "#!/bin/sh\nexit 0\n");
    snprintf(path, sizeof path, "%s/%s", g_tmp, rel);
    assert_int_equal(chmod(path, mode), 0);
}

static void test_alert_keys(void **state)
{
    cw_config *cfg = NULL;
    char ini[2 * PATH_MAX];
    char **argv;

    (void)state;
    make_dir("alert dir");
    write_mode("alert dir/notify.sh", 0755);
    snprintf(ini, sizeof ini,
             "[pool]\nname = p\n"
             "[alert]\n"
             "command = \"%s/alert dir/notify.sh\"  --to  ops\t\"two words\" \"\" 'single' "
             "back\\slash \"esc\\\"aped\\\\\" a\"b c\"d\n"
             "webhook = https://hooks.example/T0/B1?token=abc&x=1\n"
             "timeout = 30s\n"
             "webhook_retries = 0\n"
             "rate_limit = 0\n",
             g_tmp);
    assert_int_equal(load_text(ini, &cfg), 0);
    argv = cfg->alert.command_argv;
    assert_non_null(argv);
    snprintf(ini, sizeof ini, "%s/alert dir/notify.sh", g_tmp);
    assert_string_equal(argv[0], ini);
    assert_string_equal(argv[1], "--to");
    assert_string_equal(argv[2], "ops");
    assert_string_equal(argv[3], "two words");
    assert_string_equal(argv[4], "");
    assert_string_equal(argv[5], "'single'");
    assert_string_equal(argv[6], "back\\slash");
    assert_string_equal(argv[7], "esc\"aped\\");
    assert_string_equal(argv[8], "ab cd");
    assert_null(argv[9]);
    assert_string_equal(cfg->alert.webhook_url, "https://hooks.example/T0/B1?token=abc&x=1");
    assert_int_equal(cfg->alert.timeout_ms, 30000);
    assert_int_equal(cfg->alert.webhook_retries, 0);
    assert_int_equal(cfg->alert.rate_limit_ms, 0);
    cw_config_free(cfg);

    snprintf(ini, sizeof ini,
             "[pool]\nname = p\n[alert]\ncommand = %s/alert\\ dir/notify.sh\n"
             "webhook = HTTP://127.0.0.1:8080/hook\nwebhook_retries = 10\nrate_limit = 5m\n",
             g_tmp);
    /* Outside quotes a backslash is itself: this names "<dir>/alert\". */
    EXPECT_ERROR(ini, "pool.ini:4: [alert] command: ", "alert\\': No such file or directory");

    snprintf(ini, sizeof ini,
             "[pool]\nname = p\n[alert]\ncommand = \"%s/alert dir/notify.sh\"\n"
             "webhook = HTTP://127.0.0.1:8080/hook\nwebhook_retries = 10\nrate_limit = 5m\n",
             g_tmp);
    assert_int_equal(load_text(ini, &cfg), 0);
    assert_null(cfg->alert.command_argv[1]);
    assert_string_equal(cfg->alert.webhook_url, "HTTP://127.0.0.1:8080/hook");
    assert_int_equal(cfg->alert.webhook_retries, 10);
    assert_int_equal(cfg->alert.rate_limit_ms, 300000);
    assert_int_equal(cfg->alert.timeout_ms, 10000);
    cw_config_free(cfg);
}

static void test_error_retry_values(void **state)
{
    (void)state;
    EXPECT_ERROR("[pool]\nname = p\nhandler_timeout = 0\n",
                 "pool.ini:3: [pool] handler_timeout: '0' must be more than 0");
    EXPECT_ERROR("[pool]\nname = p\nhandler_timeout = soon\n",
                 "pool.ini:3: [pool] handler_timeout: 'soon' is not a duration");
    EXPECT_ERROR("[retry]\nmax_attempts = 0\n",
                 "pool.ini:2: [retry] max_attempts: '0' is not between 1 and 1000");
    EXPECT_ERROR("[retry]\nmax_attempts = 1001\n",
                 "pool.ini:2: [retry] max_attempts: '1001' is not between 1 and 1000");
    EXPECT_ERROR("[retry]\nmax_attempts = five\n",
                 "pool.ini:2: [retry] max_attempts: 'five' is not an integer");
    EXPECT_ERROR("[retry]\ninterval = -1s\n",
                 "pool.ini:2: [retry] interval: '-1s' is not a duration");
    EXPECT_ERROR("[retry]\ninterval = 1.5s\n",
                 "pool.ini:2: [retry] interval: '1.5s' is not a duration");
    EXPECT_ERROR("[retry]\nbackoff_rate = 0.5\n",
                 "pool.ini:2: [retry] backoff_rate: '0.5' is not between 1.0 and 100");
    EXPECT_ERROR("[retry]\nbackoff_rate = 100.01\n",
                 "pool.ini:2: [retry] backoff_rate: '100.01' is not between 1.0 and 100");
    EXPECT_ERROR(
        "[retry]\nbackoff_rate = 0.0000000000000000000000000000000000000000000000000000000000"
        "0000000000000000000000000000000000000000000000000000000000000000000000000000000"
        "00000000000000000000000000000000000000000000000000000000000000000000000000000000"
        "00000000000000000000000000000000000000000000000000000000000000000000000000000000"
        "000000000000001\n",
        "pool.ini:2: [retry] backoff_rate: ", "is not between 1.0 and 100");
    static const char *const junk[] = {"2x",  "1e1",  "nan", "inf", "-2",  "+2",
                                       "0x2", "2..0", ".",   "",    "1,5", "2 .5"};
    for (size_t i = 0; i < sizeof junk / sizeof *junk; i++) {
        char ini[128], want[128];
        snprintf(ini, sizeof ini, "[retry]\nbackoff_rate = %s\n", junk[i]);
        snprintf(want, sizeof want,
                 "pool.ini:2: [retry] backoff_rate: '%s' is not a decimal number", junk[i]);
        EXPECT_ERROR(ini, want);
    }
    EXPECT_ERROR("[retry]\nmax_delay = 2d\n", "pool.ini:2: [retry] max_delay: '2d' is more than",
                 "104857500ms");
    EXPECT_ERROR("[retry]\nmax_delay = 104857501ms\n",
                 "pool.ini:2: [retry] max_delay: '104857501ms' is more than");
    EXPECT_ERROR("[retry]\nmax_delay = 1 week\n",
                 "pool.ini:2: [retry] max_delay: '1 week' is not a duration");
    EXPECT_ERROR("[retry]\njitter = random\n",
                 "pool.ini:2: [retry] jitter: 'random' is not one of none, full, equal");
    EXPECT_ERROR("[retry]\nmax_deliveries = 0\n",
                 "pool.ini:2: [retry] max_deliveries: '0' is not between 1 and 90");
    EXPECT_ERROR("[retry]\n\nmax_deliveries = 91\n",
                 "pool.ini:3: [retry] max_deliveries: '91' is not between 1 and 90");
    EXPECT_ERROR("[retry]\nmax_retries = 3\n", "pool.ini:2: unknown key 'max_retries' in [retry]",
                 "(expected max_attempts, interval, backoff_rate, max_delay, jitter, "
                 "max_deliveries)");
    EXPECT_ERROR("[retry]\ninterval = 1s\n[pool]\nname = p\n[retry]\ninterval = 2s\n",
                 "pool.ini:6: [retry] interval: set twice (first on line 2)");
}

static void test_error_handler_sections(void **state)
{
    (void)state;
    EXPECT_ERROR("[pool]\nname = p\n[handler refund]\nmax_attempts = 0\n",
                 "pool.ini:4: [handler refund] max_attempts: '0' is not between 1 and 1000");
    EXPECT_ERROR("[handler refund]\ninterval = x\n",
                 "pool.ini:2: [handler refund] interval: 'x' is not a duration");
    EXPECT_ERROR("[handler refund]\nbackoff_rate = 1e3\n",
                 "pool.ini:2: [handler refund] backoff_rate: '1e3' is not a decimal number");
    EXPECT_ERROR("[handler refund]\nmax_delay = 30h\n",
                 "pool.ini:2: [handler refund] max_delay: '30h' is more than");
    EXPECT_ERROR("[handler refund]\njitter = some\n",
                 "pool.ini:2: [handler refund] jitter: 'some' is not one of none, full, equal");
    EXPECT_ERROR(
        "[handler refund]\nmax_deliveries = 3\n",
        "pool.ini:2: unknown key 'max_deliveries' in [handler refund] (expected "
        "max_attempts, interval, backoff_rate, max_delay, jitter, concurrency, rate_limit)");
    EXPECT_ERROR("[handler refund]\njitter = full\nJitter = none\n",
                 "pool.ini:3: [handler refund] jitter: set twice (first on line 2)");
    /* Two sections of one type: an error, even when the second is empty. */
    EXPECT_ERROR("[handler refund]\njitter = full\n[pool]\nname = p\n[handler refund]\n",
                 "pool.ini:5: [handler refund] appears twice (first on line 1)");
    EXPECT_ERROR("[handler a]\n[handler  a ]\n", "pool.ini:2: [handler a] appears twice");
    /* Types are case-sensitive: these are two. */
    cw_config *cfg = NULL;
    assert_int_equal(load_text("[pool]\nname = p\n[handler a]\n[handler A]\n", &cfg), 0);
    assert_int_equal(cfg->n_handlers, 2);
    cw_config_free(cfg);

    EXPECT_ERROR("[pool]\nname = p\n[handler a/b]\n",
                 "pool.ini:3: section [handler a/b]: the task type is not 1 to 255 of");
    EXPECT_ERROR("[pool]\nname = p\n[handler a b]\n",
                 "pool.ini:3: section [handler a b]: the task type is not");
    EXPECT_ERROR("[pool]\nname = p\n[handler]\n", "pool.ini:3: unknown section [handler]",
                 "handler TYPE");
    EXPECT_ERROR("[pool]\nname = p\n[handlerx y]\n", "pool.ini:3: unknown section [handlerx y]");
    /* inih's limit on section names bounds the types a section can name. */
    EXPECT_ERROR("[pool]\nname = p\n[handler aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa]\n",
                 "pool.ini:3: section name", "is longer than 49 characters");
}

static void test_error_alert_values(void **state)
{
    char ini[PATH_MAX + 200];

    (void)state;
    make_dir("alert-errors");
    write_mode("alert-errors/plain.sh", 0644);
    write_mode("alert-errors/ok.sh", 0755);

    EXPECT_ERROR("[alert]\ncommand = notify.sh --x\n",
                 "pool.ini:2: [alert] command: 'notify.sh' is not an absolute path");
    EXPECT_ERROR(
        "[alert]\ncommand = /nonexistent/cw/notify arg\n",
        "pool.ini:2: [alert] command: '/nonexistent/cw/notify': No such file or directory");
    snprintf(ini, sizeof ini, "[alert]\ncommand = %s/alert-errors\n", g_tmp);
    EXPECT_ERROR(ini, "pool.ini:2: [alert] command: '", "alert-errors' is not a regular file");
    snprintf(ini, sizeof ini, "[alert]\ncommand = %s/alert-errors/plain.sh\n", g_tmp);
    /* Even for root: access(X_OK) wants an execute bit. */
    EXPECT_ERROR(ini, "pool.ini:2: [alert] command: '", "plain.sh' is not executable");
    snprintf(ini, sizeof ini, "[alert]\ncommand = %s/alert-errors/ok.sh \"unclosed arg\n", g_tmp);
    EXPECT_ERROR(ini, "pool.ini:2: [alert] command: the quote at column", "is not closed");
    snprintf(ini, sizeof ini, "[alert]\ncommand = %s/alert-errors/ok.sh \"ends in \\\n", g_tmp);
    EXPECT_ERROR(ini, "pool.ini:2: [alert] command: the quote at column", "is not closed");
    EXPECT_ERROR("[alert]\ncommand =\n", "pool.ini:2: [alert] command: no program given");
    EXPECT_ERROR("[alert]\ncommand = \"\"\n",
                 "pool.ini:2: [alert] command: '' is not an absolute path");

    EXPECT_ERROR("[alert]\nwebhook = ftp://host/x?token=SECRET\n",
                 "pool.ini:2: [alert] webhook: the URL does not start with http:// or https://");
    assert_null(strstr(cw_error_last(), "SECRET"));
    EXPECT_ERROR("[alert]\nwebhook = host/hook\n", "pool.ini:2: [alert] webhook: the URL does not");
    EXPECT_ERROR("[alert]\nwebhook = https://\n",
                 "pool.ini:2: [alert] webhook: the URL has no host");
    EXPECT_ERROR("[alert]\nwebhook = http:///path\n",
                 "pool.ini:2: [alert] webhook: the URL has no host");
    EXPECT_ERROR("[alert]\nwebhook = http://a b/SECRET\n",
                 "pool.ini:2: [alert] webhook: the URL contains a blank");
    assert_null(strstr(cw_error_last(), "SECRET"));
    EXPECT_ERROR("[alert]\ntimeout = 0\n", "pool.ini:2: [alert] timeout: '0' must be more than 0");
    EXPECT_ERROR("[alert]\ntimeout = 1x\n", "pool.ini:2: [alert] timeout: '1x' is not a duration");
    EXPECT_ERROR("[alert]\nwebhook_retries = 11\n",
                 "pool.ini:2: [alert] webhook_retries: '11' is not between 0 and 10");
    EXPECT_ERROR("[alert]\nwebhook_retries = -1\n",
                 "pool.ini:2: [alert] webhook_retries: '-1' is not between 0 and 10");
    EXPECT_ERROR("[alert]\nrate_limit = often\n",
                 "pool.ini:2: [alert] rate_limit: 'often' is not a duration");
    EXPECT_ERROR("[alert]\nemail = ops@example.com\n", "pool.ini:2: unknown key 'email' in [alert]",
                 "(expected command, webhook, timeout, webhook_retries, rate_limit)");
    snprintf(ini, sizeof ini,
             "[alert]\ncommand = %s/alert-errors/ok.sh\ncommand = %s/alert-errors/ok.sh\n", g_tmp,
             g_tmp);
    EXPECT_ERROR(ini, "pool.ini:3: [alert] command: set twice (first on line 2)");
}

/* ---- environment ------------------------------------------------------- */

static void test_env_overrides_url(void **state)
{
    cw_config *cfg = NULL;
    const char *ini = "[broker]\nurl = amqp://file:5672/\n[pool]\nname = p\n";

    (void)state;
    setenv("CW_AMQP_URL", "amqp://env:5672/", 1);
    assert_int_equal(load_text(ini, &cfg), 0);
    assert_string_equal(cfg->url, "amqp://env:5672/");
    cw_config_free(cfg);

    assert_int_equal(cw_config_load(&cfg, NULL), 0);
    assert_string_equal(cfg->url, "amqp://env:5672/");
    cw_config_free(cfg);

    /* Set but empty: ignored. */
    setenv("CW_AMQP_URL", "", 1);
    assert_int_equal(load_text(ini, &cfg), 0);
    assert_string_equal(cfg->url, "amqp://file:5672/");
    cw_config_free(cfg);

    unsetenv("CW_AMQP_URL");
    assert_int_equal(load_text(ini, &cfg), 0);
    assert_string_equal(cfg->url, "amqp://file:5672/");
    cw_config_free(cfg);
}

/* ---- plugins and globs ------------------------------------------------- */

static void test_plugins_glob(void **state)
{
    cw_config *cfg = NULL;
    char ini[PATH_MAX + 200];

    (void)state;
    make_dir("plugins");
    make_dir("extra");
    write_file("plugins/b.so", "");
    write_file("plugins/a.so", "");
    write_file("plugins/c.txt", "");
    write_file("extra/z.so", "");
    write_file("extra/y.so", "");

    /* Sorted within a pattern, patterns in the order given. */
    snprintf(ini, sizeof ini,
             "[pool]\nname = p\nplugins = extra/z.so  plugins/*.so\t%s/extra/y.so\n", g_tmp);
    assert_int_equal(load_text(ini, &cfg), 0);
    assert_int_equal(cfg->n_plugins, 4);
    assert_string_equal(cfg->plugins[0], real_path("extra/z.so"));
    assert_string_equal(cfg->plugins[1], real_path("plugins/a.so"));
    assert_string_equal(cfg->plugins[2], real_path("plugins/b.so"));
    /* An absolute path is kept as written. */
    snprintf(ini, sizeof ini, "%s/extra/y.so", g_tmp);
    assert_string_equal(cfg->plugins[3], ini);
    assert_null(cfg->plugins[4]);
    cw_config_free(cfg);

    /* A file matched by two patterns is listed once, where first matched. */
    assert_int_equal(load_text("[pool]\nname = p\nplugins = plugins/b.so plugins/*.so\n", &cfg), 0);
    assert_int_equal(cfg->n_plugins, 2);
    assert_string_equal(cfg->plugins[0], real_path("plugins/b.so"));
    assert_string_equal(cfg->plugins[1], real_path("plugins/a.so"));
    assert_null(cfg->plugins[2]);
    cw_config_free(cfg);
}

/* The globs of `plugins = *.so` are taken relative to the file's directory,
 * whatever the working directory, even when that directory's own name holds
 * glob characters. */
static void test_plugins_relative_to_file(void **state)
{
    cw_config *cfg = NULL;
    char path[PATH_MAX];

    (void)state;
    make_dir("we[ir]d*");
    write_file("we[ir]d*/a.so", "");
    write_file("we[ir]d*/b.so", "");
    write_file("we[ir]d*/pool.ini", "[pool]\nname = w\nplugins = *.so\n");
    assert_int_equal(chdir("/"), 0);
    snprintf(path, sizeof path, "%s/we[ir]d*/pool.ini", g_tmp);
    assert_int_equal(cw_config_load(&cfg, path), 0);
    assert_int_equal(cfg->n_plugins, 2);
    assert_string_equal(cfg->plugins[0], real_path("we[ir]d*/a.so"));
    assert_string_equal(cfg->plugins[1], real_path("we[ir]d*/b.so"));
    assert_string_equal(cfg->store_path, real_path("we[ir]d*/var/w.db"));
    cw_config_free(cfg);

    /* A relative config path, read from its parent directory. */
    assert_int_equal(chdir(g_tmp), 0);
    assert_int_equal(cw_config_load(&cfg, "we[ir]d*/pool.ini"), 0);
    assert_string_equal(cfg->path, real_path("we[ir]d*/pool.ini"));
    assert_string_equal(cfg->plugins[0], real_path("we[ir]d*/a.so"));
    assert_string_equal(cfg->store_path, real_path("we[ir]d*/var/w.db"));
    cw_config_free(cfg);
}

static void test_plugins_no_match(void **state)
{
    (void)state;
    make_dir("empty");
    EXPECT_ERROR("[pool]\nname = p\nplugins = empty/*.so\n",
                 "pool.ini:3: [pool] plugins: ", "'empty/*.so' matches no file");
    EXPECT_ERROR("[pool]\nname = p\n\nplugins = /nonexistent/cw/x.so\n",
                 "pool.ini:4: [pool] plugins: '/nonexistent/cw/x.so' matches no file");
    EXPECT_ERROR("[pool]\nname = p\nplugins = ; nothing\n",
                 "pool.ini:3: [pool] plugins: no path given");
}

/* ---- errors ------------------------------------------------------------ */

/* The exact messages of the contract, with a relative path. */
static void test_error_messages_exact(void **state)
{
    cw_config *cfg = NULL;

    (void)state;
    assert_int_equal(chdir(g_tmp), 0);
    write_file("pool.ini", "[pool]\nname = p\n[broker]\nprefetch = 0\n");
    assert_int_equal(cw_config_load(&cfg, "pool.ini"), CW_STATUS_CONFIG);
    assert_null(cfg);
    assert_string_equal(cw_error_last(),
                        "pool.ini:4: [broker] prefetch: '0' is not between 1 and 65535");

    write_file("pool.ini", "[broker]\nurl = amqp://x/\n");
    assert_int_equal(cw_config_load(&cfg, "pool.ini"), CW_STATUS_CONFIG);
    assert_string_equal(cw_error_last(), "pool.ini: [pool] name is required");

    assert_int_equal(cw_config_load(&cfg, "missing.ini"), CW_STATUS_CONFIG);
    assert_null(cfg);
    assert_string_equal(cw_error_last(), "missing.ini: cannot open: No such file or directory");
}

static void test_error_unknown_names(void **state)
{
    (void)state;
    EXPECT_ERROR("[pool]\nname = p\n[broker]\nurl = amqp://x/\n\n\nprefech = 5\n",
                 "pool.ini:7: unknown key 'prefech' in [broker]", "prefetch");
    /* An unknown section is an error even with no key in it. */
    EXPECT_ERROR("[pool]\nname = p\n\n\n\n\n\n\n[brokr]\n", "pool.ini:9: unknown section [brokr]");
    EXPECT_ERROR("[pool]\nname = p\n[plugin]\nx = 1\n", "pool.ini:3: unknown section [plugin]");
    EXPECT_ERROR("[pool]\nname = p\n[plugin a/b]\n", "pool.ini:3: unknown section [plugin a/b]");
    EXPECT_ERROR(
        "[pool]\nname = p\n[plugin aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa]\n",
        "pool.ini:3: section name", "is longer than 49 characters");
    EXPECT_ERROR("name = p\n[pool]\n", "pool.ini:1: key 'name' is outside any section");
    EXPECT_ERROR("[store]\nbackend = memory\nsize = 5\n",
                 "pool.ini:3: unknown key 'size' in [store]");
}

static void test_error_duplicates(void **state)
{
    (void)state;
    EXPECT_ERROR("[pool]\nname = a\n[broker]\nprefetch = 5\n[pool]\nname = b\n",
                 "pool.ini:6: [pool] name: set twice (first on line 2)");
    EXPECT_ERROR("[pool]\nname = a\n[plugin r]\nk = 1\nj = 2\nk = 3\n",
                 "pool.ini:6: [plugin r] k: set twice (first on line 4)");
}

static void test_error_syntax(void **state)
{
    (void)state;
    EXPECT_ERROR("[pool]\nname = p\nthis line has no equals sign\n", "pool.ini:3: syntax error");
    EXPECT_ERROR("[pool\nname = p\n", "pool.ini:1: syntax error");
}

static void test_error_bad_values(void **state)
{
    (void)state;
    EXPECT_ERROR("[broker]\nurl =\n", "pool.ini:2: [broker] url: value is empty");
    EXPECT_ERROR("[broker]\nexchange = amq.direct\n", "pool.ini:2: [broker] exchange: 'amq.direct'",
                 "reserved");
    EXPECT_ERROR("[broker]\nexchange =\n", "pool.ini:2: [broker] exchange: value is empty");
    EXPECT_ERROR("[broker]\nprefetch = lots\n",
                 "pool.ini:2: [broker] prefetch: 'lots' is not an integer");
    EXPECT_ERROR("[broker]\nprefetch = 65536\n",
                 "pool.ini:2: [broker] prefetch: '65536' is not between 1 and 65535");
    EXPECT_ERROR("[broker]\nbatch = -1\n",
                 "pool.ini:2: [broker] batch: '-1' is not between 0 and 65535");
    EXPECT_ERROR("[broker]\nheartbeat = 500ms\n", "pool.ini:2: [broker] heartbeat: '500ms'",
                 "between 1s and 65535s");
    EXPECT_ERROR("[broker]\nheartbeat = 1w\n",
                 "pool.ini:2: [broker] heartbeat: '1w' is not a duration");
    EXPECT_ERROR("[pool]\nname = has/slash\n",
                 "pool.ini:2: [pool] name: 'has/slash' is not 1 to 100");
    EXPECT_ERROR("[pool]\nname =\n", "pool.ini:2: [pool] name: '' is not 1 to 100");
    EXPECT_ERROR("[pool]\nname = "
                 "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa"
                 "aaaaaaaaaaaaaaaa"
                 "aaaa\n",
                 "pool.ini:2: [pool] name: ", "is not 1 to 100");
    EXPECT_ERROR("[pool]\nname = p\nqueue = amq.gen-1\n", "pool.ini:3: [pool] queue: 'amq.gen-1'");
    EXPECT_ERROR("[pool]\nname = p\nqueue_type = stream\n",
                 "pool.ini:3: [pool] queue_type: 'stream' is not one of quorum, classic");
    EXPECT_ERROR("[pool]\nname = p\nmax_body_size = 0\n",
                 "pool.ini:3: [pool] max_body_size: '0' is not between 1 byte and 128MiB");
    EXPECT_ERROR("[pool]\nname = p\nmax_body_size = 129MiB\n",
                 "pool.ini:3: [pool] max_body_size: '129MiB' is not between");
    EXPECT_ERROR("[pool]\nname = p\nmax_body_size = 1 X\n",
                 "pool.ini:3: [pool] max_body_size: '1 X' is not a size");
    EXPECT_ERROR("[store]\nbackend = redis\n",
                 "pool.ini:2: [store] backend: 'redis' is not one of sqlite, memory");
    EXPECT_ERROR("[store]\npath =\n", "pool.ini:2: [store] path: value is empty");
    EXPECT_ERROR("[store]\nlease = 0\n", "pool.ini:2: [store] lease: '0' must be more than 0");
    EXPECT_ERROR("[store]\nretention = -1d\n",
                 "pool.ini:2: [store] retention: '-1d' is not a duration");
    EXPECT_ERROR("[store]\nsynchronous = off\n",
                 "pool.ini:2: [store] synchronous: 'off' is not one of full, normal");
    EXPECT_ERROR("[log]\nlevel = verbose\n", "pool.ini:2: [log] level: 'verbose' is not one of");
}

/* Checks that need the whole file: batch against prefetch. */
static void test_error_batch_over_prefetch(void **state)
{
    (void)state;
    EXPECT_ERROR("[broker]\nprefetch = 10\nbatch = 20\n[pool]\nname = p\n",
                 "pool.ini:3: [broker] batch: 20 is more than prefetch (10)");
}

static void test_error_unreadable(void **state)
{
    cw_config *cfg = NULL;
    char big[9000];
    static const char nul[] = "[pool]\nname = p\0q\n";

    (void)state;
    /* A directory opens but cannot be read. */
    assert_int_equal(cw_config_load(&cfg, g_tmp), CW_STATUS_CONFIG);
    assert_null(cfg);
    assert_non_null(strstr(cw_error_last(), "cannot read: Is a directory"));

    memset(big, 'x', sizeof big);
    memcpy(big, "[pool]\nname = p\nqueue = ", 24);
    big[sizeof big - 2] = '\n';
    big[sizeof big - 1] = '\0';
    EXPECT_ERROR(big, "pool.ini:3: line is longer than 8190 bytes");

    write_bytes("nul.ini", nul, sizeof nul - 1);
    assert_int_equal(cw_config_load(&cfg, real_path("nul.ini")), CW_STATUS_CONFIG);
    assert_null(cfg);
    assert_non_null(strstr(cw_error_last(), "nul.ini:2: line contains a NUL byte"));
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_defaults_without_file),
        cmocka_unit_test(test_defaults_from_name),
        cmocka_unit_test(test_free_null),
        cmocka_unit_test(test_every_key),
        cmocka_unit_test(test_limits_accepted),
        cmocka_unit_test(test_lenient_syntax),
        cmocka_unit_test(test_plugin_settings),
        cmocka_unit_test(test_retry_keys),
        cmocka_unit_test(test_handler_sections),
        cmocka_unit_test(test_alert_keys),
        cmocka_unit_test(test_error_retry_values),
        cmocka_unit_test(test_error_handler_sections),
        cmocka_unit_test(test_error_alert_values),
        cmocka_unit_test_teardown(test_env_overrides_url, restore_cwd),
        cmocka_unit_test(test_plugins_glob),
        cmocka_unit_test_teardown(test_plugins_relative_to_file, restore_cwd),
        cmocka_unit_test(test_plugins_no_match),
        cmocka_unit_test_teardown(test_error_messages_exact, restore_cwd),
        cmocka_unit_test(test_error_unknown_names),
        cmocka_unit_test(test_error_duplicates),
        cmocka_unit_test(test_error_syntax),
        cmocka_unit_test(test_error_bad_values),
        cmocka_unit_test(test_error_batch_over_prefetch),
        cmocka_unit_test(test_error_unreadable),
    };
    return cmocka_run_group_tests(tests, group_setup, group_teardown);
}
