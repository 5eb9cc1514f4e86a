/* TLS to the broker: the test node listens for AMQP over TLS on
 * CW_TEST_TLS_PORT with certificates that tests/harness/rabbitmq.sh made
 * under $CW_TEST_BROKER_DIR/tls (a CA, a server certificate for localhost
 * and 127.0.0.1, a client certificate, and a CA that signed nothing here).
 *
 *   - a pool with an amqps:// URL, tls_ca_file and a client certificate
 *     consumes and applies a task; `compworker publish` goes over TLS too;
 *   - a broker certificate that does not chain to tls_ca_file is refused
 *     (the worker says why and keeps trying), unless tls_verify_peer = false;
 *   - the host name is checked against the certificate (which names
 *     localhost only: 127.0.0.1 does not match) unless
 *     tls_verify_hostname = false. */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>

#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>

#include "cwtest.h"

#define WAIT_MS CWTEST_TIMEOUT_MS

static char g_tls[512];
static int g_port;

static int group_setup(void **state)
{
    (void)state;
    const char *dir = getenv("CW_TEST_BROKER_DIR");
    const char *port = getenv("CW_TEST_TLS_PORT");
    if (!dir || !port) {
        fprintf(stderr, "CW_TEST_BROKER_DIR and CW_TEST_TLS_PORT must be set (run with ctest)\n");
        return -1;
    }
    snprintf(g_tls, sizeof g_tls, "%s/tls", dir);
    g_port = atoi(port);
    return 0;
}

/* Writes the pool file: `host` in the amqps:// URL, `ca` (a file under
 * the tls directory), and `more` lines for [broker]. */
static void write_tls_pool(cwtest_env *env, const char *host, const char *ca, const char *more)
{
    char ini[4096];
    snprintf(ini, sizeof ini,
             "[broker]\nurl = amqps://guest:guest@%s:%d/\ntls_ca_file = %s/%s\n"
             "tls_cert_file = %s/client.pem\ntls_key_file = %s/client.key\n%s"
             "[pool]\nname = %s\nplugins = %s/ledger_plugin.so\n[store]\npath = %s/store.db\n"
             "[plugin ledger]\npath = %s\n",
             host, g_port, g_tls, ca, g_tls, g_tls, more ? more : "", env->name, CW_TEST_PLUGIN_DIR,
             env->dir, env->ledger);
    cwtest_write_file(env->ini, ini, 0644);
}

static void test_tls_consume_and_publish(void **state)
{
    cwtest_env *env = cwtest_begin(state, "tls", NULL);
    write_tls_pool(env, "localhost", "ca.pem", NULL);
    cwtest_worker_start(env);
    char at[128];
    snprintf(at, sizeof at, "at amqps://guest:***@localhost:%d/", g_port);
    assert_int_equal(cwtest_log_count(env, at), 1);

    /* A task published over plain AMQP by the test... */
    cwtest_send_task(env, "tls-1", "saga-tls", "{}");
    cwtest_confirm_all(env);
    cwtest_ledger_wait(env, 1, WAIT_MS);
    /* ...and one with `compworker publish` over TLS, with the pool file's settings. */
    char cmd[2048];
    snprintf(cmd, sizeof cmd,
             "%s publish -c %s --type it.apply --saga-id saga-tls --message-id tls-2 --data '{}'",
             env->exe, env->ini);
    FILE *p = popen(cmd, "r");
    assert_non_null(p);
    char out[256] = "";
    if (!fgets(out, sizeof out, p))
        out[0] = '\0';
    assert_int_equal(pclose(p), 0);
    assert_non_null(strstr(out, "tls-2"));
    cwtest_ledger_wait(env, 2, WAIT_MS);
    assert_true(cwtest_ledger_applied(env, "tls-2"));
    assert_int_equal(cwtest_worker_stop(env, SIGTERM, 15000), 0);
    cwtest_pass(env);
}

static void test_tls_untrusted_refused(void **state)
{
    cwtest_env *env = cwtest_begin(state, "tlsbad", NULL);
    write_tls_pool(env, "localhost", "other-ca.pem", NULL);
    /* Not cwtest_worker_start(): the worker never gets to "consuming". */
    cwtest_worker_start_nowait(env);
    cwtest_log_wait(env, "no broker session", 1, WAIT_MS);
    char *log = cwtest_log_read(env);
    const char *line = strstr(log, "no broker session");
    char first[600];
    snprintf(first, sizeof first, "%.*s", (int)strcspn(line, "\n"), line);
    free(log);
    print_message("untrusted broker certificate: %s\n", first);
    assert_non_null(strstr(first, "amqps://guest:***@localhost"));
    assert_null(strstr(first, "guest:guest"));
    assert_non_null(strstr(first, "verification failed"));
    assert_int_equal(cwtest_log_count(env, "consuming from"), 0);
    assert_int_equal(cwtest_worker_stop(env, SIGTERM, 15000), 0);

    /* With tls_verify_peer = false the same CA file is not consulted. */
    write_tls_pool(env, "localhost", "other-ca.pem", "tls_verify_peer = false\n");
    cwtest_worker_start(env);
    assert_int_equal(cwtest_worker_stop(env, SIGTERM, 15000), 0);
    cwtest_pass(env);
}

static void test_tls_hostname(void **state)
{
    cwtest_env *env = cwtest_begin(state, "tlshost", NULL);
    /* The certificate names localhost, not 127.0.0.1. */
    write_tls_pool(env, "127.0.0.1", "ca.pem", NULL);
    cwtest_worker_start_nowait(env);
    cwtest_log_wait(env, "no broker session", 1, WAIT_MS);
    assert_true(cwtest_log_count(env, "hostname") + cwtest_log_count(env, "host name") >= 1);
    assert_int_equal(cwtest_log_count(env, "consuming from"), 0);
    assert_int_equal(cwtest_worker_stop(env, SIGTERM, 15000), 0);

    write_tls_pool(env, "127.0.0.1", "ca.pem", "tls_verify_hostname = false\n");
    cwtest_worker_start(env);
    assert_int_equal(cwtest_worker_stop(env, SIGTERM, 15000), 0);
    cwtest_pass(env);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_teardown(test_tls_consume_and_publish, cwtest_teardown),
        cmocka_unit_test_teardown(test_tls_untrusted_refused, cwtest_teardown),
        cmocka_unit_test_teardown(test_tls_hostname, cwtest_teardown),
    };
    return cmocka_run_group_tests(tests, group_setup, NULL);
}
