/* Broker failover against a real three-node RabbitMQ cluster
 * (tests/harness/rabbitmq-cluster.sh, started by the CTest fixture
 * "cluster"): a pool whose [broker] url lists the three nodes consumes from
 * a quorum queue; the node its workers are connected to is stopped while
 * tasks flow; the workers reconnect to the next node and every task is
 * applied exactly once. The test publishes through the third node. */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>

#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/wait.h>
#include <unistd.h>

#include "cwtest.h"

#define WAIT_MS 90000
#define TASKS 400
#define CHUNK 20

/* Starts `harness <cmd> <dir> <arg>` in the background; its output goes to
 * `log`. */
static pid_t harness_start(const char *harness, const char *cmd, const char *dir, const char *arg,
                           const char *log)
{
    int fd = open(log, O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0644);
    if (fd < 0)
        fail_msg("cannot open %s: %s", log, strerror(errno));
    fflush(NULL);
    pid_t pid = fork();
    if (pid < 0)
        fail_msg("fork: %s", strerror(errno));
    if (pid == 0) {
        prctl(PR_SET_PDEATHSIG, SIGKILL);
        dup2(fd, STDOUT_FILENO);
        dup2(fd, STDERR_FILENO);
        char *argv[] = {(char *)harness, (char *)cmd, (char *)dir, (char *)arg, NULL};
        execv(harness, argv);
        _exit(127);
    }
    close(fd);
    return pid;
}

/* Waits for a harness started with harness_start(); fails on an error. */
static void harness_wait(pid_t pid, const char *what, const char *log)
{
    int st;
    if (waitpid(pid, &st, 0) != pid || !WIFEXITED(st) || WEXITSTATUS(st) != 0)
        fail_msg("%s failed; see %s", what, log);
}

static void test_failover_across_cluster(void **state)
{
    const char *cdir = getenv("CW_TEST_CLUSTER_DIR");
    const char *cport = getenv("CW_TEST_CLUSTER_PORT");
    const char *charness = getenv("CW_TEST_CLUSTER_HARNESS");
    if (!cdir || !cport || !charness)
        fail_msg("CW_TEST_CLUSTER_DIR, CW_TEST_CLUSTER_PORT and CW_TEST_CLUSTER_HARNESS must be "
                 "set (run with ctest: the 'cluster' fixture starts the cluster)");
    int base = atoi(cport);
    char url[3][128];
    for (int i = 0; i < 3; i++)
        snprintf(url[i], sizeof url[i], "amqp://guest:guest@127.0.0.1:%d/", base + i);
    /* The test's own connection (publishing, queue counts) goes to node 3. */
    setenv("CW_TEST_AMQP_URL", url[2], 1);
    cwtest_env *env = cwtest_begin(state, "failover", NULL);

    char ini[4096];
    snprintf(ini, sizeof ini,
             "[broker]\nurl = %s %s %s\nprefetch = 10\nheartbeat = 5s\n"
             "[pool]\nname = %s\nqueue_type = quorum\nworkers = 2\nplugins = %s/ledger_plugin.so\n"
             "[store]\npath = %s/store.db\n[plugin ledger]\npath = %s\n",
             url[0], url[1], url[2], env->name, CW_TEST_PLUGIN_DIR, env->dir, env->ledger);
    cwtest_write_file(env->ini, ini, 0644);
    cwtest_worker_start(env);
    cwtest_log_wait(env, "consuming from", 2, WAIT_MS);
    char at1[64], at2[64];
    snprintf(at1, sizeof at1, "@127.0.0.1:%d/", base);
    snprintf(at2, sizeof at2, "@127.0.0.1:%d/", base + 1);
    /* Both workers are on node 1, the first of the list. */
    assert_int_equal(cwtest_log_count(env, at1), 2);

    char log[400];
    snprintf(log, sizeof log, "%s/cluster.log", env->dir);
    /* Two thirds of the tasks first; then node 1 stops while the workers
     * have a backlog and the rest is published, a chunk at a time. */
    int64_t t0 = cwtest_now_ms();
    char id[64];
    int i = 0;
    for (; i < TASKS * 2 / 3; i++) {
        snprintf(id, sizeof id, "fo-%04d", i);
        cwtest_send_task(env, id, "saga-failover", "{\"sleep_ms\":40}");
    }
    cwtest_confirm_all(env);
    cwtest_ledger_wait(env, 20, WAIT_MS);
    long applied_at_stop = cwtest_ledger_rows(env);
    pid_t stopper = harness_start(charness, "stop-node", cdir, "1", log);
    for (; i < TASKS; i++) {
        snprintf(id, sizeof id, "fo-%04d", i);
        cwtest_send_task(env, id, "saga-failover", "{\"sleep_ms\":40}");
        if ((i + 1) % CHUNK == 0) {
            cwtest_confirm_all(env);
            cwtest_sleep_ms(200);
        }
    }
    cwtest_confirm_all(env);
    harness_wait(stopper, "stopping node 1", log);
    long applied_after_stop = cwtest_ledger_distinct(env);
    print_message("node 1 stopped: %ld of %d tasks applied when asked, %ld when it was down\n",
                  applied_at_stop, TASKS, applied_after_stop);
    /* It went down with work still to do. */
    assert_true(applied_after_stop < TASKS);

    /* Both workers move on to node 2, the next of the list. */
    cwtest_log_wait(env, at2, 2, WAIT_MS);
    int64_t deadline = cwtest_now_ms() + WAIT_MS;
    while (cwtest_ledger_distinct(env) < TASKS) {
        if (!cwtest_worker_alive(env))
            fail_msg("the pool exited (code %d); see %s", env->last_exit, env->log);
        if (cwtest_now_ms() >= deadline)
            fail_msg("%ld of %d tasks applied after failing over", cwtest_ledger_distinct(env),
                     TASKS);
        cwtest_sleep_ms(100);
    }
    cwtest_queue_wait(env, env->queue, 0, WAIT_MS);
    long rows = cwtest_ledger_rows(env), distinct = cwtest_ledger_distinct(env);
    print_message("failover: %d tasks, %ld applied, %ld distinct, %u reconnections logged, "
                  "%lld ms in all\n",
                  TASKS, rows, distinct, cwtest_log_count(env, "broker session lost"),
                  (long long)(cwtest_now_ms() - t0));
    /* Nothing lost, nothing doubled. */
    assert_int_equal(distinct, TASKS);
    assert_int_equal(rows, TASKS);
    assert_int_equal(cwtest_ledger_max_per_id(env), 1);
    assert_int_equal(cwtest_queue_count(env, env->dlq), 0);
    int code = cwtest_worker_stop(env, SIGTERM, 30000);
    assert_int_equal(code, 0);
    cwtest_pass(env);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_teardown(test_failover_across_cluster, cwtest_teardown),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
