/* Unit tests for the pool's configuration keys (framework/config.c):
 * [pool] workers, shutdown_timeout, metrics_listen; [broker] tls_*; [log]
 * format; the environment (CW_<SECTION>_<KEY>, CW_AMQP_URL), flags
 * (cw_config_override) and cw_config_describe() behind `compworker config
 * check`. */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>

#include <ftw.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "compworker/status.h"
#include "framework/config.h"

static char g_tmp[512];

static int remove_entry(const char *path, const struct stat *sb, int flag, struct FTW *ftw)
{
    (void)sb;
    (void)flag;
    (void)ftw;
    return remove(path);
}

static void clear_env(void)
{
    const char *vars[] = {"CW_AMQP_URL",     "CW_BROKER_URL",
                          "CW_POOL_WORKERS", "CW_POOL_SHUTDOWN_TIMEOUT",
                          "CW_LOG_FORMAT",   "CW_POOL_METRICS_LISTEN",
                          "CW_POOL_NAME",    "CW_POOL_PLUGINS"};
    for (size_t i = 0; i < sizeof vars / sizeof *vars; i++)
        unsetenv(vars[i]);
}

static int group_setup(void **state)
{
    (void)state;
    snprintf(g_tmp, sizeof g_tmp, "/tmp/cw-config-pool-XXXXXX");
    if (!mkdtemp(g_tmp))
        return -1;
    clear_env();
    return 0;
}

static int group_teardown(void **state)
{
    (void)state;
    clear_env();
    return nftw(g_tmp, remove_entry, 16, FTW_DEPTH | FTW_PHYS);
}

static const char *path_of(const char *rel)
{
    static char p[PATH_MAX];
    snprintf(p, sizeof p, "%s/%s", g_tmp, rel);
    return p;
}

static void write_file(const char *rel, const char *text)
{
    FILE *f = fopen(path_of(rel), "w");
    assert_non_null(f);
    fputs(text, f);
    assert_int_equal(fclose(f), 0);
}

/* Loads `text` as pool.ini; returns the status, *cfg on success. */
static int load_text(const char *text, cw_config **cfg)
{
    write_file("pool.ini", text);
    return cw_config_load(cfg, path_of("pool.ini"));
}

#define EXPECT_ERROR(text, msg)                                                                    \
    do {                                                                                           \
        cw_config *c_ = NULL;                                                                      \
        assert_int_equal(load_text((text), &c_), CW_STATUS_CONFIG);                                \
        assert_null(c_);                                                                           \
        if (!strstr(cw_error_last(), (msg)))                                                       \
            fail_msg("error '%s' does not contain '%s'", cw_error_last(), (msg));                  \
    } while (0)

static void test_defaults(void **state)
{
    (void)state;
    cw_config *cfg = NULL;
    assert_int_equal(load_text("[pool]\nname = p\n", &cfg), 0);
    assert_int_equal(cfg->workers, 1);
    assert_int_equal(cfg->shutdown_timeout_ms, 30000);
    assert_null(cfg->metrics_listen);
    assert_int_equal(cfg->log_format, CW_LOG_LOGFMT);
    assert_null(cfg->tls.ca_file);
    assert_null(cfg->tls.cert_file);
    assert_null(cfg->tls.key_file);
    assert_true(cfg->tls.verify_peer);
    assert_true(cfg->tls.verify_hostname);
    cw_config_free(cfg);
}

static void test_pool_keys(void **state)
{
    (void)state;
    cw_config *cfg = NULL;
    write_file("ca.pem", "x");
    write_file("client.pem", "x");
    write_file("client.key", "x");
    assert_int_equal(load_text("[pool]\nname = p\nworkers = 8\nshutdown_timeout = 90s\n"
                               "metrics_listen = 0.0.0.0:9464\n"
                               "[broker]\ntls_ca_file = ca.pem\ntls_cert_file = client.pem\n"
                               "tls_key_file = client.key\ntls_verify_peer = no\n"
                               "tls_verify_hostname = off\n[log]\nformat = JSON\n",
                               &cfg),
                     0);
    assert_int_equal(cfg->workers, 8);
    assert_int_equal(cfg->shutdown_timeout_ms, 90000);
    assert_string_equal(cfg->metrics_listen, "0.0.0.0:9464");
    assert_int_equal(cfg->log_format, CW_LOG_JSON);
    /* Relative paths are taken from the directory of the file. */
    assert_non_null(strstr(cfg->tls.ca_file, "/ca.pem"));
    assert_true(cfg->tls.ca_file[0] == '/');
    assert_non_null(strstr(cfg->tls.key_file, "/client.key"));
    assert_false(cfg->tls.verify_peer);
    assert_false(cfg->tls.verify_hostname);
    cw_config_free(cfg);

    /* metrics_listen off, and IPv6 literals. */
    assert_int_equal(load_text("[pool]\nname = p\nmetrics_listen = off\n", &cfg), 0);
    assert_null(cfg->metrics_listen);
    cw_config_free(cfg);
    assert_int_equal(load_text("[pool]\nname = p\nmetrics_listen = [::1]:9464\n", &cfg), 0);
    assert_string_equal(cfg->metrics_listen, "[::1]:9464");
    cw_config_free(cfg);
}

static void test_pool_key_errors(void **state)
{
    (void)state;
    EXPECT_ERROR("[pool]\nname = p\nworkers = 0\n",
                 "pool.ini:3: [pool] workers: '0' is not between 1 and 64");
    EXPECT_ERROR("[pool]\nname = p\nworkers = 65\n", "pool.ini:3: [pool] workers: '65'");
    EXPECT_ERROR("[pool]\nname = p\nshutdown_timeout = soon\n",
                 "pool.ini:3: [pool] shutdown_timeout: 'soon' is not a duration");
    EXPECT_ERROR("[pool]\nname = p\nmetrics_listen = 9464\n",
                 "pool.ini:3: [pool] metrics_listen: '9464' is not HOST:PORT");
    EXPECT_ERROR("[pool]\nname = p\nmetrics_listen = host:99999\n", "is not HOST:PORT");
    EXPECT_ERROR("[pool]\nname = p\nmetrics_listen = ::1:9464\n", "is not HOST:PORT");
    EXPECT_ERROR("[pool]\nname = p\n[broker]\ntls_ca_file = nowhere.pem\n",
                 "pool.ini:4: [broker] tls_ca_file: ");
    EXPECT_ERROR("[pool]\nname = p\n[broker]\ntls_ca_file = nowhere.pem\n",
                 "nowhere.pem' cannot be read: No such file or directory");
    EXPECT_ERROR("[pool]\nname = p\n[broker]\ntls_verify_peer = maybe\n",
                 "pool.ini:4: [broker] tls_verify_peer: 'maybe' is not true or false");
    write_file("client.pem", "x");
    EXPECT_ERROR("[pool]\nname = p\n[broker]\ntls_cert_file = client.pem\n",
                 "pool.ini:4: [broker] tls_cert_file and tls_key_file go together");
    EXPECT_ERROR("[pool]\nname = p\n[log]\nformat = xml\n",
                 "pool.ini:4: [log] format: 'xml' is not one of logfmt, json");
    EXPECT_ERROR("[pool]\nname = p\nworkers = 2\nworkers = 3\n",
                 "pool.ini:4: [pool] workers: set twice (first on line 3)");
}

static void test_listen_parse(void **state)
{
    (void)state;
    char host[64];
    unsigned port;
    assert_int_equal(cw__listen_parse("127.0.0.1:9464", host, sizeof host, &port), 0);
    assert_string_equal(host, "127.0.0.1");
    assert_int_equal(port, 9464);
    assert_int_equal(cw__listen_parse("[::]:0", host, sizeof host, &port), 0);
    assert_string_equal(host, "::");
    assert_int_equal(port, 0);
    assert_int_equal(cw__listen_parse("metrics.local:80", host, sizeof host, &port), 0);
    assert_string_equal(host, "metrics.local");
    assert_int_not_equal(cw__listen_parse(":9464", host, sizeof host, &port), 0);
    assert_int_not_equal(cw__listen_parse("a b:1", host, sizeof host, &port), 0);
    assert_int_not_equal(cw__listen_parse("[::1]9464", host, sizeof host, &port), 0);
    assert_int_not_equal(cw__listen_parse("h:-1", host, sizeof host, &port), 0);
}

static void test_env(void **state)
{
    (void)state;
    cw_config *cfg = NULL;
    const char *ini = "[broker]\nurl = amqp://file:5672/\n[pool]\nname = p\nworkers = 2\n";

    setenv("CW_POOL_WORKERS", "5", 1);
    setenv("CW_LOG_FORMAT", "json", 1);
    setenv("CW_BROKER_URL", "amqp://broker-env:5672/", 1);
    assert_int_equal(load_text(ini, &cfg), 0);
    assert_int_equal(cfg->workers, 5);
    assert_int_equal(cfg->log_format, CW_LOG_JSON);
    assert_string_equal(cfg->url, "amqp://broker-env:5672/");
    assert_int_equal(cfg->origin[0], CW_ORIGIN_ENV); /* url is the first key */
    cw_config_free(cfg);

    /* CW_AMQP_URL wins over CW_BROKER_URL. */
    setenv("CW_AMQP_URL", "amqp://amqp-env:5672/", 1);
    assert_int_equal(load_text(ini, &cfg), 0);
    assert_string_equal(cfg->url, "amqp://amqp-env:5672/");
    cw_config_free(cfg);

    /* The pool name from the environment names the queues. */
    setenv("CW_POOL_NAME", "envpool", 1);
    assert_int_equal(load_text(ini, &cfg), 0);
    assert_string_equal(cfg->queue, "cw.envpool");
    assert_string_equal(cfg->dlq, "cw.dlq.envpool");
    cw_config_free(cfg);

    /* A bad value names the variable. */
    setenv("CW_POOL_WORKERS", "many", 1);
    assert_int_equal(load_text(ini, &cfg), CW_STATUS_CONFIG);
    assert_string_equal(cw_error_last(),
                        "CW_POOL_WORKERS: [pool] workers: 'many' is not an integer");
    /* Empty is ignored. */
    setenv("CW_POOL_WORKERS", "", 1);
    assert_int_equal(load_text(ini, &cfg), 0);
    assert_int_equal(cfg->workers, 2);
    cw_config_free(cfg);
    clear_env();
}

static void test_override(void **state)
{
    (void)state;
    cw_config *cfg = NULL;
    assert_int_equal(load_text("[pool]\nname = p\nworkers = 2\n", &cfg), 0);
    assert_int_equal(cw_config_override(cfg, "pool", "workers", "7", CW_ORIGIN_FLAG, "--workers"),
                     0);
    assert_int_equal(cfg->workers, 7);
    assert_int_equal(cw_config_override(cfg, "pool", "workers", "0", CW_ORIGIN_FLAG, "--workers"),
                     CW_STATUS_CONFIG);
    assert_string_equal(cw_error_last(), "--workers: [pool] workers: '0' is not between 1 and 64");
    assert_int_equal(cfg->workers, 7);
    assert_int_equal(cw_config_override(cfg, "pool", "nope", "1", CW_ORIGIN_FLAG, "--nope"),
                     CW_STATUS_INVALID_ARG);
    cw_config_free(cfg);
}

typedef struct seen {
    char text[16384];
} seen;

static void collect(const cw_config_entry *e, void *ud)
{
    seen *s = ud;
    size_t len = strlen(s->text);
    static const char *const origins[] = {"default", "file", "env", "flag"};
    snprintf(s->text + len, sizeof s->text - len, "[%s] %s = %s | %s %u %s %s\n", e->section,
             e->key, e->value, origins[e->origin], e->line, e->source ? e->source : "-",
             e->note ? e->note : "-");
}

static void test_describe(void **state)
{
    (void)state;
    cw_config *cfg = NULL;
    setenv("CW_POOL_SHUTDOWN_TIMEOUT", "45s", 1);
    assert_int_equal(load_text("[broker]\nurl = amqp://u:secret@a:5672/, amqps://v:hush@b:5671/\n"
                               "prefetch = 100\n[pool]\nname = p\n"
                               "[alert]\nwebhook = https://hooks.example.com/T0K3N?x=1\n"
                               "[handler x.y]\nmax_attempts = 3\n"
                               "[plugin pay]\napi_token = abc\nregion = eu\n",
                               &cfg),
                     0);
    assert_int_equal(cw_config_override(cfg, "log", "level", "debug", CW_ORIGIN_FLAG,
                                        "--log-level"),
                     0);
    seen s = {""};
    cw_config_describe(cfg, collect, &s);
    const char *want[] = {
        "[broker] url = amqp://u:***@a:5672/ amqps://v:***@b:5671/ | file 2 - -\n",
        "[broker] prefetch = 100 | file 3 - -\n",
        "[broker] batch = 0 | default 0 - prefetch/2 = 50\n",
        "[broker] heartbeat = 1m | default 0 - -\n",
        "[pool] name = p | file 5 - -\n",
        "[pool] queue = cw.p | default 0 - -\n",
        "[pool] shutdown_timeout = 45s | env 0 CW_POOL_SHUTDOWN_TIMEOUT -\n",
        "[pool] metrics_listen = off | default 0 - -\n",
        "[store] retention = 7d | default 0 - -\n",
        "[retry] backoff_rate = 2 | default 0 - -\n",
        "[alert] webhook = https://hooks.example.com/*** | file 7 - -\n",
        "[log] level = debug | flag 0 --log-level -\n",
        "[handler x.y] max_attempts = 3 | file 0 - -\n",
        "[plugin pay] api_token = *** | file 0 - -\n",
        "[plugin pay] region = eu | file 0 - -\n",
    };
    for (size_t i = 0; i < sizeof want / sizeof *want; i++) {
        if (!strstr(s.text, want[i]))
            fail_msg("missing '%s' in:\n%s", want[i], s.text);
    }
    assert_null(strstr(s.text, "secret"));
    assert_null(strstr(s.text, "hush"));
    assert_null(strstr(s.text, "T0K3N"));
    assert_null(strstr(s.text, "abc"));
    cw_config_free(cfg);
    clear_env();
}

/* The PostgreSQL store's keys: backend, url (masked however it is written),
 * schema, the environment; a missing url. */
static void test_store_postgresql(void **state)
{
    (void)state;
    cw_config *cfg = NULL;
    assert_int_equal(load_text("[pool]\nname = p\n[store]\nbackend = postgresql\n"
                               "url = postgresql://cw:s3cr3t@db1:5432/orders?sslmode=verify-full\n"
                               "schema = Pool One\n",
                               &cfg),
                     0);
    assert_int_equal(cfg->store_backend, CW_STORE_POSTGRESQL);
    assert_string_equal(cfg->store_url,
                        "postgresql://cw:s3cr3t@db1:5432/orders?sslmode=verify-full");
    assert_string_equal(cfg->store_schema, "Pool One");
    seen s = {""};
    cw_config_describe(cfg, collect, &s);
    if (!strstr(s.text, "[store] url = postgresql://cw:***@db1:5432/orders?sslmode=verify-full"))
        fail_msg("%s", s.text);
    assert_non_null(strstr(s.text, "[store] backend = postgresql | file 4"));
    assert_non_null(strstr(s.text, "[store] schema = Pool One | file 6"));
    assert_null(strstr(s.text, "s3cr3t"));
    cw_config_free(cfg);

    /* key=value form and a password in the URI's query: masked too. */
    setenv("CW_STORE_URL", "host=db2 dbname=orders password = 'it\\'s secret' user=cw", 1);
    assert_int_equal(load_text("[pool]\nname = p\n[store]\nbackend = postgresql\n", &cfg), 0);
    assert_string_equal(cfg->store_schema, "compworker");
    memset(&s, 0, sizeof s);
    cw_config_describe(cfg, collect, &s);
    if (!strstr(s.text, "[store] url = host=db2 dbname=orders password = *** user=cw | env 0 "
                        "CW_STORE_URL"))
        fail_msg("%s", s.text);
    assert_null(strstr(s.text, "secret"));
    cw_config_free(cfg);
    setenv("CW_STORE_URL", "postgres://db3/orders?user=cw&password=hush&sslmode=require", 1);
    assert_int_equal(load_text("[pool]\nname = p\n[store]\nbackend = postgresql\n", &cfg), 0);
    memset(&s, 0, sizeof s);
    cw_config_describe(cfg, collect, &s);
    assert_non_null(strstr(s.text, "password=***&sslmode=require"));
    assert_null(strstr(s.text, "hush"));
    cw_config_free(cfg);
    unsetenv("CW_STORE_URL");

    /* A url is required; a url libpq cannot read is refused unquoted. */
    assert_int_equal(load_text("[pool]\nname = p\n[store]\nbackend = postgresql\n", &cfg),
                     CW_STATUS_CONFIG);
    assert_non_null(strstr(cw_error_last(), "[store] url: required with backend = postgresql"));
    assert_int_equal(load_text("[pool]\nname = p\n[store]\nurl = postgresql://cw:s3cr3t@[::1/x\n",
                               &cfg),
                     CW_STATUS_CONFIG);
    assert_non_null(strstr(cw_error_last(), "[store] url"));
    assert_null(strstr(cw_error_last(), "s3cr3t"));
    clear_env();
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_defaults),
        cmocka_unit_test(test_pool_keys),
        cmocka_unit_test(test_pool_key_errors),
        cmocka_unit_test(test_listen_parse),
        cmocka_unit_test(test_env),
        cmocka_unit_test(test_override),
        cmocka_unit_test(test_describe),
        cmocka_unit_test(test_store_postgresql),
    };
    return cmocka_run_group_tests(tests, group_setup, group_teardown);
}
