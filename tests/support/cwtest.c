/* Helpers shared by the integration tests: see cwtest.h. */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>

#include <errno.h>
#include <fcntl.h>
#include <ftw.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <amqp_tcp_socket.h>
#include <json.h>
#include <sqlite3.h>

#include "cwtest.h"

#define CH_PUB 1
#define CH_QUERY 2
#define START_TIMEOUT_MS 30000
#define HARNESS_TIMEOUT_MS 180000
#define LOG_TAIL_LINES 40

/* ---- small things ------------------------------------------------------- */

int64_t cwtest_now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

void cwtest_sleep_ms(int ms)
{
    struct timespec ts = {.tv_sec = ms / 1000, .tv_nsec = (long)(ms % 1000) * 1000000L};
    while (nanosleep(&ts, &ts) != 0 && errno == EINTR)
        ;
}

static char *xstrndup(const void *p, size_t n)
{
    char *s = malloc(n + 1);
    if (!s)
        fail_msg("out of memory");
    if (n)
        memcpy(s, p, n);
    s[n] = '\0';
    return s;
}

static char *bytes_dup(amqp_bytes_t b)
{
    return xstrndup(b.bytes, b.len);
}

static void write_file(const char *path, const char *text)
{
    FILE *f = fopen(path, "w");
    if (!f)
        fail_msg("cannot write %s: %s", path, strerror(errno));
    fputs(text, f);
    if (fclose(f) != 0)
        fail_msg("cannot write %s: %s", path, strerror(errno));
}

/* Converts a wait status into an exit code, or 128 + the signal. */
static int exit_code(int status)
{
    if (WIFEXITED(status))
        return WEXITSTATUS(status);
    if (WIFSIGNALED(status))
        return 128 + WTERMSIG(status);
    return -1;
}

/* Waits up to `timeout_ms` for `pid`; its exit code, or -1 when it is still
 * running then. */
static int wait_exit(pid_t pid, int timeout_ms)
{
    int64_t deadline = cwtest_now_ms() + timeout_ms;
    for (;;) {
        int status;
        pid_t r = waitpid(pid, &status, WNOHANG);
        if (r == pid)
            return exit_code(status);
        if (r < 0 && errno != EINTR)
            fail_msg("waitpid(%ld): %s", (long)pid, strerror(errno));
        if (cwtest_now_ms() >= deadline)
            return -1;
        cwtest_sleep_ms(10);
    }
}

/* ---- AMQP connection ---------------------------------------------------- */

static void amqp_check(amqp_rpc_reply_t r, const char *what)
{
    switch (r.reply_type) {
    case AMQP_RESPONSE_NORMAL: return;
    case AMQP_RESPONSE_LIBRARY_EXCEPTION:
        fail_msg("%s: %s", what, amqp_error_string2(r.library_error));
        break;
    case AMQP_RESPONSE_SERVER_EXCEPTION:
        if (r.reply.id == AMQP_CHANNEL_CLOSE_METHOD) {
            const amqp_channel_close_t *m = r.reply.decoded;
            fail_msg("%s: channel closed by the broker: %u %.*s", what, m->reply_code,
                     (int)m->reply_text.len, (const char *)m->reply_text.bytes);
        } else if (r.reply.id == AMQP_CONNECTION_CLOSE_METHOD) {
            const amqp_connection_close_t *m = r.reply.decoded;
            fail_msg("%s: connection closed by the broker: %u %.*s", what, m->reply_code,
                     (int)m->reply_text.len, (const char *)m->reply_text.bytes);
        } else {
            fail_msg("%s: unexpected method 0x%08x", what, r.reply.id);
        }
        break;
    default: fail_msg("%s: no reply", what);
    }
}

/* Connects to env->url; false (with `why`) when the broker cannot be reached. */
static bool amqp_connect(cwtest_env *env, char *why, size_t cap)
{
    char buf[sizeof env->url];
    struct amqp_connection_info ci;
    snprintf(buf, sizeof buf, "%s", env->url);
    if (amqp_parse_url(buf, &ci) != AMQP_STATUS_OK)
        fail_msg("CW_TEST_AMQP_URL '%s' is not an AMQP URL", env->url);
    if (!ci.vhost || !ci.vhost[0])
        ci.vhost = "/";

    amqp_connection_state_t conn = amqp_new_connection();
    amqp_socket_t *sock = conn ? amqp_tcp_socket_new(conn) : NULL;
    if (!sock)
        fail_msg("out of memory creating an AMQP connection");
    struct timeval tv = {.tv_sec = 5};
    int st = amqp_socket_open_noblock(sock, ci.host, ci.port, &tv);
    if (st != AMQP_STATUS_OK) {
        snprintf(why, cap, "cannot connect to %s:%d: %s", ci.host, ci.port, amqp_error_string2(st));
        amqp_destroy_connection(conn);
        return false;
    }
    amqp_set_rpc_timeout(conn, &(struct timeval){.tv_sec = 30});
    amqp_rpc_reply_t r = amqp_login(conn, ci.vhost, 0, 131072, 0, AMQP_SASL_METHOD_PLAIN, ci.user,
                                    ci.password);
    if (r.reply_type != AMQP_RESPONSE_NORMAL) {
        snprintf(why, cap, "login to %s:%d failed (reply type %d)", ci.host, ci.port,
                 (int)r.reply_type);
        amqp_destroy_connection(conn);
        return false;
    }
    env->conn = conn;
    amqp_channel_open(conn, CH_PUB);
    amqp_check(amqp_get_rpc_reply(conn), "opening the publish channel");
    amqp_confirm_select(conn, CH_PUB);
    amqp_check(amqp_get_rpc_reply(conn), "confirm.select");
    amqp_channel_open(conn, CH_QUERY);
    amqp_check(amqp_get_rpc_reply(conn), "opening the query channel");
    env->query_open = true;
    env->next_seq = 1;
    env->acked = 0;
    return true;
}

/* Drops the connection without the closing handshake (it may be dead). */
static void amqp_drop(cwtest_env *env)
{
    if (env->conn)
        amqp_destroy_connection(env->conn);
    env->conn = NULL;
    env->query_open = false;
}

static void amqp_close_nicely(cwtest_env *env)
{
    if (!env->conn)
        return;
    amqp_connection_close(env->conn, AMQP_REPLY_SUCCESS);
    amqp_drop(env);
}

/* After the broker closed the query channel (a failed passive declare):
 * answers close-ok so the channel number can be opened again. */
static void query_channel_reset(cwtest_env *env, amqp_rpc_reply_t r)
{
    if (r.reply_type == AMQP_RESPONSE_SERVER_EXCEPTION && r.reply.id == AMQP_CHANNEL_CLOSE_METHOD) {
        amqp_channel_close_ok_t ok = {0};
        amqp_send_method(env->conn, CH_QUERY, AMQP_CHANNEL_CLOSE_OK_METHOD, &ok);
        env->query_open = false;
    }
}

static void query_channel(cwtest_env *env)
{
    if (!env->conn)
        fail_msg("no AMQP connection");
    if (!env->query_open) {
        amqp_channel_open(env->conn, CH_QUERY);
        amqp_check(amqp_get_rpc_reply(env->conn), "reopening the query channel");
        env->query_open = true;
    }
}

/* ---- environment -------------------------------------------------------- */

cwtest_env *cwtest__begin(void **state, const char *test, const cwtest_pool_opts *opts,
                          const char *exe, const char *ledger_plugin)
{
    static const cwtest_pool_opts none = {0};
    if (!opts)
        opts = &none;
    const char *url = getenv("CW_TEST_AMQP_URL");
    if (!url || !url[0])
        fail_msg("CW_TEST_AMQP_URL is not set: run the integration tests with ctest, or start "
                 "a broker with tests/harness/rabbitmq.sh start DIR PORT and set it");

    cwtest_env *env = calloc(1, sizeof *env);
    if (!env)
        fail_msg("out of memory");
    *state = env;
    snprintf(env->test, sizeof env->test, "%s", test);
    snprintf(env->url, sizeof env->url, "%s", url);
    snprintf(env->exe, sizeof env->exe, "%s", exe);
    snprintf(env->dir, sizeof env->dir, "/tmp/cw-it-%s-XXXXXX", test);
    if (!mkdtemp(env->dir))
        fail_msg("mkdtemp(%s): %s", env->dir, strerror(errno));
    snprintf(env->name, sizeof env->name, "it-%s-%ld", test, (long)getpid());
    snprintf(env->queue, sizeof env->queue, "cw.%s", env->name);
    snprintf(env->dlq, sizeof env->dlq, "cw.dlq.%s", env->name);
    snprintf(env->ini, sizeof env->ini, "%s/pool.ini", env->dir);
    if (opts->ledger)
        snprintf(env->ledger, sizeof env->ledger, "%s", opts->ledger);
    else
        snprintf(env->ledger, sizeof env->ledger, "%s/ledger.db", env->dir);
    char store[1024];
    if (opts->store_lines)
        snprintf(store, sizeof store, "%s", opts->store_lines);
    else
        snprintf(store, sizeof store, "path = %s/store.db\n", env->dir);
    snprintf(env->log, sizeof env->log, "%s/worker.log", env->dir);
    snprintf(env->pids, sizeof env->pids, "%s/pids", env->dir);

    char ini[8192];
    int n = snprintf(ini, sizeof ini,
                     "# written by tests/support/cwtest.c for test '%s'\n"
                     "[broker]\n"
                     "url = %s\n"
                     "\n"
                     "[pool]\n"
                     "name = %s\n"
                     "queue_type = %s\n"
                     "plugins = %s\n"
                     "%s"
                     "\n"
                     "[store]\n"
                     "%s"
                     "\n"
                     "[plugin ledger]\n"
                     "path = %s\n"
                     "%s",
                     test, env->url, env->name, opts->queue_type ? opts->queue_type : "quorum",
                     ledger_plugin, opts->pool_lines ? opts->pool_lines : "", store, env->ledger,
                     opts->extra ? opts->extra : "");
    if (n < 0 || (size_t)n >= sizeof ini)
        fail_msg("pool configuration too long");
    write_file(env->ini, ini);

    char why[512];
    if (!amqp_connect(env, why, sizeof why))
        fail_msg("%s (CW_TEST_AMQP_URL=%s)", why, env->url);
    return env;
}

void cwtest_pass(cwtest_env *env)
{
    env->passed = true;
}

static int remove_entry(const char *path, const struct stat *sb, int flag, struct FTW *ftw)
{
    (void)sb;
    (void)flag;
    (void)ftw;
    return remove(path);
}

/* SIGKILLs every process listed in env->pids (scripts the test started). */
static void kill_listed(const cwtest_env *env)
{
    FILE *f = fopen(env->pids, "r");
    if (!f)
        return;
    long pid;
    while (fscanf(f, "%ld", &pid) == 1) {
        if (pid > 1)
            kill((pid_t)pid, SIGKILL);
    }
    fclose(f);
}

static void print_log_tail(const cwtest_env *env)
{
    char *log = cwtest_log_read(env);
    size_t len = strlen(log);
    const char *p = log + len;
    unsigned lines = 0;
    while (p > log) {
        if (p[-1] == '\n' && p != log + len && ++lines > LOG_TAIL_LINES)
            break;
        p--;
    }
    fprintf(stderr, "---- last lines of %s ----\n%s---- end ----\n", env->log, p);
    free(log);
}

int cwtest_teardown(void **state)
{
    cwtest_env *env = *state;
    if (!env)
        return 0;
    if (env->worker > 0) {
        kill(env->worker, SIGKILL);
        waitpid(env->worker, NULL, 0);
        env->worker = 0;
    }
    cw_client_free(env->client);
    env->client = NULL;
    cwtest_http_stop(env->http);
    env->http = NULL;
    kill_listed(env);
    if (!env->passed) {
        fprintf(stderr, "test '%s' did not pass: kept %s and the queues of pool %s\n", env->test,
                env->dir, env->name);
        print_log_tail(env);
        /* Keep the queue for a look, but stop it collecting the tasks of
         * later tests (every pool binds it.apply). */
        if (env->conn && env->query_open) {
            amqp_queue_unbind(env->conn, CH_QUERY, amqp_cstring_bytes(env->queue),
                              amqp_cstring_bytes("cw.tasks"), amqp_cstring_bytes("it.apply"),
                              amqp_empty_table);
            amqp_rpc_reply_t r = amqp_get_rpc_reply(env->conn);
            if (r.reply_type != AMQP_RESPONSE_NORMAL)
                query_channel_reset(env, r);
        }
    } else if (env->conn) {
        /* Leave nothing behind on the broker. */
        const char *queues[2 + 4] = {env->queue, env->dlq};
        for (size_t i = 0; i < env->n_extra_queues; i++)
            queues[2 + i] = env->extra_queues[i];
        for (size_t i = 0; i < 2 + env->n_extra_queues; i++) {
            if (!env->query_open)
                break;
            amqp_queue_delete(env->conn, CH_QUERY, amqp_cstring_bytes(queues[i]), 0, 0);
            amqp_rpc_reply_t r = amqp_get_rpc_reply(env->conn);
            if (r.reply_type != AMQP_RESPONSE_NORMAL)
                query_channel_reset(env, r);
        }
    }
    amqp_close_nicely(env);
    if (env->passed && env->dir[0])
        nftw(env->dir, remove_entry, 16, FTW_DEPTH | FTW_PHYS);
    free(env);
    *state = NULL;
    return 0;
}

/* ---- the worker process ------------------------------------------------- */

static long file_size(const char *path)
{
    struct stat sb;
    return stat(path, &sb) == 0 ? (long)sb.st_size : 0;
}

static char *read_from(const char *path, long offset)
{
    FILE *f = fopen(path, "rb");
    if (!f)
        return xstrndup("", 0);
    if (fseek(f, 0, SEEK_END) != 0) {
        fclose(f);
        return xstrndup("", 0);
    }
    long size = ftell(f);
    if (offset > size)
        offset = size;
    fseek(f, offset, SEEK_SET);
    size_t want = (size_t)(size - offset);
    char *buf = malloc(want + 1);
    if (!buf)
        fail_msg("out of memory");
    size_t got = fread(buf, 1, want, f);
    buf[got] = '\0';
    fclose(f);
    return buf;
}

char *cwtest_log_read(const cwtest_env *env)
{
    return read_from(env->log, 0);
}

bool cwtest_worker_alive(cwtest_env *env)
{
    if (env->worker <= 0)
        return false;
    int status;
    pid_t r = waitpid(env->worker, &status, WNOHANG);
    if (r == 0)
        return true;
    if (r == env->worker)
        env->last_exit = exit_code(status);
    env->worker = 0;
    return false;
}

/* Fails the test when the worker that should be running has exited. */
static void check_worker(cwtest_env *env, const char *waiting_for)
{
    if (env->worker > 0 && !cwtest_worker_alive(env))
        fail_msg("the worker exited (code %d) while waiting for %s; see %s", env->last_exit,
                 waiting_for, env->log);
}

void cwtest_worker_start(cwtest_env *env)
{
    cwtest_worker_start_nowait(env);
    pid_t pid = env->worker;
    int64_t deadline = cwtest_now_ms() + START_TIMEOUT_MS;
    for (;;) {
        char *out = read_from(env->log, env->log_offset);
        bool up = strstr(out, "consuming from") != NULL;
        free(out);
        if (up)
            return;
        if (!cwtest_worker_alive(env))
            fail_msg("the worker exited (code %d) before consuming; see %s", env->last_exit,
                     env->log);
        if (cwtest_now_ms() >= deadline) {
            kill(pid, SIGKILL);
            waitpid(pid, NULL, 0);
            env->worker = 0;
            fail_msg("the worker did not log 'consuming from' within %d ms; see %s",
                     START_TIMEOUT_MS, env->log);
        }
        cwtest_sleep_ms(20);
    }
}

void cwtest_worker_start_nowait(cwtest_env *env)
{
    if (env->worker > 0)
        fail_msg("a worker is already running (pid %ld)", (long)env->worker);
    env->log_offset = file_size(env->log);
    int fd = open(env->log, O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0644);
    if (fd < 0)
        fail_msg("cannot open %s: %s", env->log, strerror(errno));
    fflush(NULL);
    pid_t pid = fork();
    if (pid < 0) {
        close(fd);
        fail_msg("fork: %s", strerror(errno));
    }
    if (pid == 0) {
        /* Die with the test, whatever kills it. */
        prctl(PR_SET_PDEATHSIG, SIGKILL);
        dup2(fd, STDOUT_FILENO);
        dup2(fd, STDERR_FILENO);
        int devnull = open("/dev/null", O_RDONLY);
        if (devnull >= 0)
            dup2(devnull, STDIN_FILENO);
        for (int i = 3; i < 1024; i++)
            close(i);
        /* The configuration names the broker, not the test's environment. */
        unsetenv("CW_AMQP_URL");
        char *argv[16] = {env->exe, "run", "-c", env->ini};
        for (size_t i = 0; i < 8 && env->run_args[i]; i++)
            argv[4 + i] = (char *)env->run_args[i];
        execv(env->exe, argv);
        dprintf(STDERR_FILENO, "cwtest: execv %s: %s\n", env->exe, strerror(errno));
        _exit(127);
    }
    close(fd);
    env->worker = pid;
}

int cwtest_worker_stop(cwtest_env *env, int sig, int timeout_ms)
{
    if (env->worker <= 0)
        fail_msg("no worker is running (the last one exited with code %d)", env->last_exit);
    pid_t pid = env->worker;
    if (kill(pid, sig) != 0)
        fail_msg("kill(%ld, %d): %s", (long)pid, sig, strerror(errno));
    int code = wait_exit(pid, timeout_ms);
    if (code < 0) {
        kill(pid, SIGKILL);
        waitpid(pid, NULL, 0);
        env->worker = 0;
        fail_msg("the worker did not exit within %d ms of signal %d; see %s", timeout_ms, sig,
                 env->log);
    }
    env->worker = 0;
    env->last_exit = code;
    return code;
}

int cwtest_worker_wait_exit(cwtest_env *env, int timeout_ms)
{
    if (env->worker <= 0)
        fail_msg("no worker is running (the last one exited with code %d)", env->last_exit);
    int code = wait_exit(env->worker, timeout_ms);
    if (code >= 0) {
        env->worker = 0;
        env->last_exit = code;
    }
    return code;
}

int cwtest_cli(cwtest_env *env, char *out, size_t cap, bool with_stderr, ...)
{
    const char *argv[32] = {env->exe};
    size_t n = 1;
    va_list ap;
    va_start(ap, with_stderr);
    const char *a;
    while ((a = va_arg(ap, const char *)) && n < 31)
        argv[n++] = a;
    va_end(ap);
    argv[n] = NULL;
    int fds[2];
    if (pipe(fds) != 0)
        fail_msg("pipe: %s", strerror(errno));
    pid_t pid = fork();
    if (pid == 0) {
        dup2(fds[1], 1);
        if (with_stderr)
            dup2(fds[1], 2);
        close(fds[0]);
        execv(argv[0], (char **)argv);
        _exit(127);
    }
    close(fds[1]);
    size_t used = 0;
    ssize_t got;
    char sink[4096];
    while ((got = read(fds[0], used + 1 < cap ? out + used : sink,
                       used + 1 < cap ? cap - 1 - used : sizeof sink)) > 0) {
        if (used + 1 < cap)
            used += (size_t)got;
    }
    out[used] = '\0';
    close(fds[0]);
    int st;
    waitpid(pid, &st, 0);
    return WIFEXITED(st) ? WEXITSTATUS(st) : 128 + WTERMSIG(st);
}

void cwtest_metrics_base(cwtest_env *env, char *out, size_t cap)
{
    cwtest_log_wait(env, "serving metrics at http://", 1, CWTEST_TIMEOUT_MS);
    char *log = cwtest_log_read(env);
    const char *needle = "serving metrics at ";
    const char *last = NULL;
    for (const char *p = log; (p = strstr(p, needle)); p++)
        last = p + strlen(needle);
    size_t n = strlen("http://") + strcspn(last + strlen("http://"), "/\"");
    snprintf(out, cap, "%.*s", (int)n, last);
    free(log);
}

unsigned cwtest_file_count(const char *path, const char *needle)
{
    FILE *f = fopen(path, "r");
    if (!f)
        return 0;
    char *text = NULL;
    size_t cap = 0, len = 0;
    char chunk[65536];
    size_t got;
    while ((got = fread(chunk, 1, sizeof chunk, f)) > 0) {
        char *grown = realloc(text, cap = len + got + 1);
        if (!grown)
            break;
        text = grown;
        memcpy(text + len, chunk, got);
        len += got;
        text[len] = '\0';
    }
    fclose(f);
    unsigned n = 0;
    size_t step = strlen(needle);
    for (const char *p = text; p && (p = strstr(p, needle)); p += step)
        n++;
    free(text);
    (void)cap;
    return n;
}

unsigned cwtest_log_count(const cwtest_env *env, const char *needle)
{
    char *log = cwtest_log_read(env);
    unsigned n = 0;
    size_t step = strlen(needle);
    for (const char *p = log; (p = strstr(p, needle)); p += step)
        n++;
    free(log);
    return n;
}

void cwtest_log_wait(cwtest_env *env, const char *needle, unsigned n, int timeout_ms)
{
    int64_t deadline = cwtest_now_ms() + timeout_ms;
    for (;;) {
        unsigned got = cwtest_log_count(env, needle);
        if (got >= n)
            return;
        check_worker(env, needle);
        if (cwtest_now_ms() >= deadline)
            fail_msg("the worker log has '%s' %u times, not %u, after %d ms; see %s", needle, got,
                     n, timeout_ms, env->log);
        cwtest_sleep_ms(25);
    }
}

void cwtest_log_stats(const cwtest_env *env, cwtest_stats *out)
{
    char *log = cwtest_log_read(env);
    const char *last = NULL;
    for (const char *p = log; (p = strstr(p, "stopped: ")); p++)
        last = p;
    memset(out, 0, sizeof *out);
    /* With retries counted, or (older workers) without. */
    int n = last ? sscanf(last,
                          "stopped: %llu received, %llu applied, %llu duplicates skipped, "
                          "%llu retried, %llu dead-lettered (%llu invalid)",
                          &out->received, &out->applied, &out->duplicates, &out->retried,
                          &out->dead_lettered, &out->invalid)
                 : 0;
    if (last && n != 6) {
        memset(out, 0, sizeof *out);
        n = sscanf(last,
                   "stopped: %llu received, %llu applied, %llu duplicates skipped, "
                   "%llu dead-lettered (%llu invalid)",
                   &out->received, &out->applied, &out->duplicates, &out->dead_lettered,
                   &out->invalid);
        n = n == 5 ? 6 : n;
    }
    free(log);
    if (n != 6)
        fail_msg("no complete 'stopped: ...' statistics line in %s", env->log);
}

/* Waits until the broker drops the env's connection (stop_app closes every
 * client connection); false when `harness` exits or the time is up first. */
static bool wait_connection_drop(cwtest_env *env, pid_t harness, int timeout_ms)
{
    int64_t deadline = cwtest_now_ms() + timeout_ms;
    while (cwtest_now_ms() < deadline) {
        struct timeval tv = {.tv_sec = 0, .tv_usec = 50000};
        amqp_frame_t f;
        int st = amqp_simple_wait_frame_noblock(env->conn, &f, &tv);
        if (st == AMQP_STATUS_OK && f.frame_type == AMQP_FRAME_METHOD &&
            f.payload.method.id == AMQP_CONNECTION_CLOSE_METHOD)
            return true;
        if (st != AMQP_STATUS_OK && st != AMQP_STATUS_TIMEOUT)
            return true; /* closed or reset */
        if (waitpid(harness, NULL, WNOHANG) == harness)
            return false;
    }
    return false;
}

long cwtest_broker_restart_app(cwtest_env *env, bool hold_worker)
{
    long rows = -1;
    const char *harness = getenv("CW_TEST_HARNESS");
    const char *dir = getenv("CW_TEST_BROKER_DIR");
    if (!harness || !dir)
        fail_msg("CW_TEST_HARNESS and CW_TEST_BROKER_DIR must be set to restart the broker");
    if (!env->conn)
        fail_msg("no AMQP connection");
    pid_t held = hold_worker ? env->worker : 0;
    if (hold_worker && held <= 0)
        fail_msg("no worker is running to hold during the restart");
    char out[400];
    snprintf(out, sizeof out, "%s/harness.log", env->dir);
    int fd = open(out, O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0644);
    if (fd < 0)
        fail_msg("cannot open %s: %s", out, strerror(errno));
    if (held && kill(held, SIGSTOP) != 0)
        fail_msg("kill(%ld, SIGSTOP): %s", (long)held, strerror(errno));
    fflush(NULL);
    pid_t pid = fork();
    if (pid < 0)
        fail_msg("fork: %s", strerror(errno));
    if (pid == 0) {
        prctl(PR_SET_PDEATHSIG, SIGKILL);
        dup2(fd, STDOUT_FILENO);
        dup2(fd, STDERR_FILENO);
        for (int i = 3; i < 1024; i++)
            close(i);
        char *argv[] = {(char *)harness, "restart-app", (char *)dir, NULL};
        execv(harness, argv);
        dprintf(STDERR_FILENO, "cwtest: execv %s: %s\n", harness, strerror(errno));
        _exit(127);
    }
    close(fd);

    if (held) {
        bool dropped = wait_connection_drop(env, pid, HARNESS_TIMEOUT_MS);
        rows = cwtest_ledger_rows(env);
        kill(held, SIGCONT);
        if (!dropped) {
            kill(pid, SIGKILL);
            waitpid(pid, NULL, 0);
            fail_msg("the broker did not drop the connections during restart-app; see %s", out);
        }
    }
    int code = wait_exit(pid, HARNESS_TIMEOUT_MS);
    if (code < 0) {
        kill(pid, SIGKILL);
        waitpid(pid, NULL, 0);
        fail_msg("%s restart-app did not finish within %d ms", harness, HARNESS_TIMEOUT_MS);
    }
    if (code != 0)
        fail_msg("%s restart-app %s exited with %d; see %s", harness, dir, code, out);

    /* Every connection dropped: make new ones. */
    cw_client_free(env->client);
    env->client = NULL;
    amqp_drop(env);
    char why[512] = "";
    int64_t deadline = cwtest_now_ms() + 30000;
    while (!amqp_connect(env, why, sizeof why)) {
        if (cwtest_now_ms() >= deadline)
            fail_msg("reconnecting after restart-app: %s", why);
        cwtest_sleep_ms(200);
    }
    return rows >= 0 ? rows : cwtest_ledger_rows(env);
}

void cwtest_pg_harness(const char *cmd)
{
    const char *harness = getenv("CW_TEST_PG_HARNESS");
    const char *dir = getenv("CW_TEST_PG_DIR");
    if (!harness || !dir)
        fail_msg("CW_TEST_PG_HARNESS and CW_TEST_PG_DIR must be set to run %s", cmd);
    fflush(NULL);
    pid_t pid = fork();
    if (pid < 0)
        fail_msg("fork: %s", strerror(errno));
    if (pid == 0) {
        prctl(PR_SET_PDEATHSIG, SIGKILL);
        for (int i = 3; i < 1024; i++)
            close(i);
        char *argv[] = {(char *)harness, (char *)cmd, (char *)dir, NULL};
        execv(harness, argv);
        dprintf(STDERR_FILENO, "cwtest: execv %s: %s\n", harness, strerror(errno));
        _exit(127);
    }
    int code = wait_exit(pid, HARNESS_TIMEOUT_MS);
    if (code < 0) {
        kill(pid, SIGKILL);
        waitpid(pid, NULL, 0);
        fail_msg("%s %s did not finish within %d ms", harness, cmd, HARNESS_TIMEOUT_MS);
    }
    if (code != 0)
        fail_msg("%s %s %s exited with %d", harness, cmd, dir, code);
}

void cwtest_pg_store_lines(char *out, size_t cap, const char *schema)
{
    const char *url = getenv("CW_TEST_PG_URL");
    if (!url || !*url)
        skip();
    snprintf(out, cap, "backend = postgresql\nurl = %s\nschema = %s\n", url, schema);
}

void cwtest_harness(cwtest_env *env, const char *cmd)
{
    const char *harness = getenv("CW_TEST_HARNESS");
    const char *dir = getenv("CW_TEST_BROKER_DIR");
    if (!harness || !dir)
        fail_msg("CW_TEST_HARNESS and CW_TEST_BROKER_DIR must be set to run %s", cmd);
    char out[400];
    snprintf(out, sizeof out, "%s/harness.log", env->dir);
    int fd = open(out, O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0644);
    if (fd < 0)
        fail_msg("cannot open %s: %s", out, strerror(errno));
    fflush(NULL);
    pid_t pid = fork();
    if (pid < 0)
        fail_msg("fork: %s", strerror(errno));
    if (pid == 0) {
        prctl(PR_SET_PDEATHSIG, SIGKILL);
        dup2(fd, STDOUT_FILENO);
        dup2(fd, STDERR_FILENO);
        for (int i = 3; i < 1024; i++)
            close(i);
        char *argv[] = {(char *)harness, (char *)cmd, (char *)dir, NULL};
        execv(harness, argv);
        dprintf(STDERR_FILENO, "cwtest: execv %s: %s\n", harness, strerror(errno));
        _exit(127);
    }
    close(fd);
    int code = wait_exit(pid, HARNESS_TIMEOUT_MS);
    if (code < 0) {
        kill(pid, SIGKILL);
        waitpid(pid, NULL, 0);
        fail_msg("%s %s did not finish within %d ms", harness, cmd, HARNESS_TIMEOUT_MS);
    }
    if (code != 0)
        fail_msg("%s %s %s exited with %d; see %s", harness, cmd, dir, code, out);
    if (strcmp(cmd, "start-app") == 0) {
        cw_client_free(env->client);
        env->client = NULL;
        amqp_drop(env);
        char why[512] = "";
        int64_t deadline = cwtest_now_ms() + 30000;
        while (!amqp_connect(env, why, sizeof why)) {
            if (cwtest_now_ms() >= deadline)
                fail_msg("reconnecting after %s: %s", cmd, why);
            cwtest_sleep_ms(200);
        }
    }
}

/* ---- publishing --------------------------------------------------------- */

void cwtest_send(cwtest_env *env, const cwtest_out *m)
{
    if (!env->conn)
        fail_msg("no AMQP connection");
    amqp_basic_properties_t p;
    memset(&p, 0, sizeof p);
    p._flags = AMQP_BASIC_DELIVERY_MODE_FLAG;
    p.delivery_mode = AMQP_DELIVERY_PERSISTENT;
    if (m->message_id) {
        p._flags |= AMQP_BASIC_MESSAGE_ID_FLAG;
        p.message_id = amqp_cstring_bytes(m->message_id);
    }
    if (m->type) {
        p._flags |= AMQP_BASIC_TYPE_FLAG;
        p.type = amqp_cstring_bytes(m->type);
    }
    if (m->correlation_id) {
        p._flags |= AMQP_BASIC_CORRELATION_ID_FLAG;
        p.correlation_id = amqp_cstring_bytes(m->correlation_id);
    }
    if (m->content_type) {
        p._flags |= AMQP_BASIC_CONTENT_TYPE_FLAG;
        p.content_type = amqp_cstring_bytes(m->content_type);
    }
    if (m->timestamp) {
        p._flags |= AMQP_BASIC_TIMESTAMP_FLAG;
        p.timestamp = m->timestamp;
    }
    amqp_table_entry_t entries[16];
    if (m->n_headers > sizeof entries / sizeof *entries)
        fail_msg("too many headers");
    if (m->n_headers) {
        for (size_t i = 0; i < m->n_headers; i++) {
            const cwtest_header *h = &m->headers[i];
            entries[i].key = amqp_cstring_bytes(h->key);
            switch (h->kind) {
            case CWTEST_STR:
                entries[i].value.kind = AMQP_FIELD_KIND_UTF8;
                entries[i].value.value.bytes = amqp_cstring_bytes(h->str);
                break;
            case CWTEST_I32:
                entries[i].value.kind = AMQP_FIELD_KIND_I32;
                entries[i].value.value.i32 = (int32_t)h->num;
                break;
            case CWTEST_I64:
                entries[i].value.kind = AMQP_FIELD_KIND_I64;
                entries[i].value.value.i64 = h->num;
                break;
            }
        }
        p._flags |= AMQP_BASIC_HEADERS_FLAG;
        p.headers.num_entries = (int)m->n_headers;
        p.headers.entries = entries;
    }
    amqp_bytes_t body = {.len = m->body_len ? m->body_len : (m->body ? strlen(m->body) : 0),
                         .bytes = (void *)m->body};
    if (!m->routing_key)
        fail_msg("cwtest_send: routing_key is required");
    int st = amqp_basic_publish(env->conn, CH_PUB,
                                amqp_cstring_bytes(m->exchange ? m->exchange : ""),
                                amqp_cstring_bytes(m->routing_key), 1, 0, &p, body);
    if (st != AMQP_STATUS_OK)
        fail_msg("publishing to '%s' '%s': %s", m->exchange ? m->exchange : "", m->routing_key,
                 amqp_error_string2(st));
    env->next_seq++;
}

void cwtest_confirm_all(cwtest_env *env)
{
    uint64_t last = env->next_seq - 1;
    uint64_t base = env->acked + 1;
    size_t n = (size_t)(last + 1 - base);
    if (n == 0)
        return;
    /* Confirms may come in any order: track each outstanding one. */
    uint8_t *done = calloc(n, 1);
    if (!done)
        fail_msg("out of memory");
    size_t left = n;
    unsigned nacked = 0, returned = 0;
    char why[300] = "";
    int64_t deadline = cwtest_now_ms() + CWTEST_TIMEOUT_MS;
    while (left) {
        int64_t rest = deadline - cwtest_now_ms();
        if (rest <= 0) {
            free(done);
            fail_msg("%zu of %zu publishes not confirmed within %d ms", left, n, CWTEST_TIMEOUT_MS);
        }
        struct timeval tv = {.tv_sec = rest / 1000, .tv_usec = (rest % 1000) * 1000};
        amqp_frame_t f;
        int st = amqp_simple_wait_frame_noblock(env->conn, &f, &tv);
        if (st == AMQP_STATUS_TIMEOUT)
            continue;
        if (st != AMQP_STATUS_OK) {
            free(done);
            fail_msg("waiting for publisher confirms: %s", amqp_error_string2(st));
        }
        if (f.frame_type != AMQP_FRAME_METHOD || f.channel != CH_PUB)
            continue;
        uint64_t tag = 0;
        bool multiple = false;
        switch (f.payload.method.id) {
        case AMQP_BASIC_ACK_METHOD: {
            const amqp_basic_ack_t *a = f.payload.method.decoded;
            tag = a->delivery_tag;
            multiple = a->multiple;
            break;
        }
        case AMQP_BASIC_NACK_METHOD: {
            const amqp_basic_nack_t *a = f.payload.method.decoded;
            tag = a->delivery_tag;
            multiple = a->multiple;
            nacked++;
            break;
        }
        case AMQP_BASIC_RETURN_METHOD: {
            const amqp_basic_return_t *r = f.payload.method.decoded;
            returned++;
            snprintf(why, sizeof why, "%u %.*s (routing key '%.*s')", r->reply_code,
                     (int)r->reply_text.len, (const char *)r->reply_text.bytes,
                     (int)r->routing_key.len, (const char *)r->routing_key.bytes);
            amqp_message_t msg;
            amqp_rpc_reply_t rr = amqp_read_message(env->conn, CH_PUB, &msg, 0);
            if (rr.reply_type != AMQP_RESPONSE_NORMAL) {
                free(done);
                amqp_check(rr, "reading a returned message");
            }
            amqp_destroy_message(&msg);
            continue;
        }
        case AMQP_CHANNEL_CLOSE_METHOD:
        case AMQP_CONNECTION_CLOSE_METHOD:
            free(done);
            fail_msg("the broker closed the publishing channel or connection");
            break;
        default: continue;
        }
        for (uint64_t t = multiple ? base : tag; t <= tag; t++) {
            if (t >= base && t <= last && !done[t - base]) {
                done[t - base] = 1;
                left--;
            }
        }
    }
    free(done);
    env->acked = last;
    amqp_maybe_release_buffers(env->conn);
    if (returned)
        fail_msg("%u publish(es) returned as unroutable: %s", returned, why);
    if (nacked)
        fail_msg("%u publish(es) nacked by the broker", nacked);
}

void cwtest_publish(cwtest_env *env, const cwtest_out *m)
{
    cwtest_send(env, m);
    cwtest_confirm_all(env);
}

void cwtest_send_task(cwtest_env *env, const char *message_id, const char *saga_id,
                      const char *body)
{
    cwtest_out m = {
        .exchange = "cw.tasks",
        .routing_key = "it.apply",
        .message_id = message_id,
        .type = "it.apply",
        .correlation_id = saga_id,
        .content_type = "application/json",
        .body = body,
    };
    cwtest_send(env, &m);
}

cw_client *cwtest_client(cwtest_env *env)
{
    if (!env->client) {
        int rc = cw_client_new(&env->client, env->url, "cw.tasks");
        if (rc)
            fail_msg("cw_client_new: %s: %s", cw_status_name(rc), cw_error_last());
    }
    return env->client;
}

/* ---- queues ------------------------------------------------------------- */

static amqp_queue_declare_ok_t queue_peek(cwtest_env *env, const char *queue)
{
    query_channel(env);
    amqp_queue_declare_ok_t *ok = amqp_queue_declare(env->conn, CH_QUERY, amqp_cstring_bytes(queue),
                                                     1, 0, 0, 0, amqp_empty_table);
    amqp_rpc_reply_t r = amqp_get_rpc_reply(env->conn);
    if (!ok || r.reply_type != AMQP_RESPONSE_NORMAL) {
        query_channel_reset(env, r);
        char what[300];
        snprintf(what, sizeof what, "passive queue.declare of '%s'", queue);
        amqp_check(r, what);
        fail_msg("%s: no reply", what);
    }
    amqp_queue_declare_ok_t copy = *ok;
    copy.queue = amqp_empty_bytes;
    amqp_maybe_release_buffers(env->conn);
    return copy;
}

static void queue_declare_with(cwtest_env *env, const char *queue, amqp_table_t args)
{
    if (env->n_extra_queues >= 4)
        fail_msg("cwtest_queue_declare: at most 4 queues per test");
    query_channel(env);
    amqp_queue_declare(env->conn, CH_QUERY, amqp_cstring_bytes(queue), 0, 1, 0, 0, args);
    amqp_rpc_reply_t r = amqp_get_rpc_reply(env->conn);
    if (r.reply_type != AMQP_RESPONSE_NORMAL) {
        query_channel_reset(env, r);
        amqp_check(r, "queue.declare");
    }
    amqp_maybe_release_buffers(env->conn);
    snprintf(env->extra_queues[env->n_extra_queues++], sizeof env->extra_queues[0], "%s", queue);
}

void cwtest_queue_declare(cwtest_env *env, const char *queue)
{
    queue_declare_with(env, queue, amqp_empty_table);
}

void cwtest_queue_declare_bounded(cwtest_env *env, const char *queue, int max_length)
{
    amqp_table_entry_t e[2];
    e[0].key = amqp_cstring_bytes("x-max-length");
    e[0].value.kind = AMQP_FIELD_KIND_I32;
    e[0].value.value.i32 = max_length;
    e[1].key = amqp_cstring_bytes("x-overflow");
    e[1].value.kind = AMQP_FIELD_KIND_UTF8;
    e[1].value.value.bytes = amqp_cstring_bytes("reject-publish");
    amqp_table_t args = {.num_entries = 2, .entries = e};
    queue_declare_with(env, queue, args);
}

void cwtest_queue_bind(cwtest_env *env, const char *queue, const char *exchange,
                       const char *binding_key)
{
    query_channel(env);
    amqp_exchange_declare(env->conn, CH_QUERY, amqp_cstring_bytes(exchange),
                          amqp_cstring_bytes("topic"), 0, 1, 0, 0, amqp_empty_table);
    amqp_rpc_reply_t r = amqp_get_rpc_reply(env->conn);
    if (r.reply_type != AMQP_RESPONSE_NORMAL) {
        query_channel_reset(env, r);
        amqp_check(r, "exchange.declare");
    }
    amqp_queue_bind(env->conn, CH_QUERY, amqp_cstring_bytes(queue), amqp_cstring_bytes(exchange),
                    amqp_cstring_bytes(binding_key), amqp_empty_table);
    r = amqp_get_rpc_reply(env->conn);
    if (r.reply_type != AMQP_RESPONSE_NORMAL) {
        query_channel_reset(env, r);
        amqp_check(r, "queue.bind");
    }
    amqp_maybe_release_buffers(env->conn);
}

uint32_t cwtest_queue_count(cwtest_env *env, const char *queue)
{
    return queue_peek(env, queue).message_count;
}

uint32_t cwtest_queue_consumers(cwtest_env *env, const char *queue)
{
    return queue_peek(env, queue).consumer_count;
}

void cwtest_queue_wait(cwtest_env *env, const char *queue, uint32_t n, int timeout_ms)
{
    int64_t deadline = cwtest_now_ms() + timeout_ms;
    for (;;) {
        uint32_t got = cwtest_queue_count(env, queue);
        if (got == n)
            return;
        if (cwtest_now_ms() >= deadline)
            fail_msg("queue '%s' has %u ready messages, not %u, after %d ms", queue, got, n,
                     timeout_ms);
        cwtest_sleep_ms(50);
    }
}

void cwtest_queue_wait_idle(cwtest_env *env, const char *queue, int timeout_ms)
{
    int64_t deadline = cwtest_now_ms() + timeout_ms;
    for (;;) {
        uint32_t got = cwtest_queue_consumers(env, queue);
        if (got == 0)
            return;
        if (cwtest_now_ms() >= deadline)
            fail_msg("queue '%s' still has %u consumer(s) after %d ms", queue, got, timeout_ms);
        cwtest_sleep_ms(50);
    }
}

static void copy_headers(cwtest_msg *m, const amqp_basic_properties_t *p)
{
    if (!(p->_flags & AMQP_BASIC_HEADERS_FLAG) || p->headers.num_entries <= 0)
        return;
    m->headers = calloc((size_t)p->headers.num_entries, sizeof *m->headers);
    if (!m->headers)
        fail_msg("out of memory");
    for (int i = 0; i < p->headers.num_entries; i++) {
        const amqp_table_entry_t *e = &p->headers.entries[i];
        cwtest_hdr *h = &m->headers[m->n_headers++];
        h->key = bytes_dup(e->key);
        const amqp_field_value_t *v = &e->value;
        h->is_int = true;
        switch (v->kind) {
        case AMQP_FIELD_KIND_BOOLEAN: h->num = v->value.boolean; break;
        case AMQP_FIELD_KIND_I8: h->num = v->value.i8; break;
        case AMQP_FIELD_KIND_U8: h->num = v->value.u8; break;
        case AMQP_FIELD_KIND_I16: h->num = v->value.i16; break;
        case AMQP_FIELD_KIND_U16: h->num = v->value.u16; break;
        case AMQP_FIELD_KIND_I32: h->num = v->value.i32; break;
        case AMQP_FIELD_KIND_U32: h->num = v->value.u32; break;
        case AMQP_FIELD_KIND_I64: h->num = v->value.i64; break;
        case AMQP_FIELD_KIND_U64: h->num = (int64_t)v->value.u64; break;
        case AMQP_FIELD_KIND_UTF8:
        case AMQP_FIELD_KIND_BYTES:
            h->is_int = false;
            h->str = bytes_dup(v->value.bytes);
            break;
        default: h->is_int = false; break;
        }
    }
}

static char *prop(const amqp_basic_properties_t *p, amqp_flags_t flag, amqp_bytes_t b)
{
    return (p->_flags & flag) ? bytes_dup(b) : NULL;
}

/* Takes every ready message of `queue` with basic.get; acks each when
 * `ack`, else leaves them unacked on the query channel. */
static cwtest_msg *get_all(cwtest_env *env, const char *queue, bool ack, size_t *n)
{
    size_t cap = 16, count = 0;
    cwtest_msg *out = calloc(cap, sizeof *out);
    if (!out)
        fail_msg("out of memory");
    query_channel(env);
    for (;;) {
        amqp_rpc_reply_t r = amqp_basic_get(env->conn, CH_QUERY, amqp_cstring_bytes(queue), 0);
        if (r.reply_type != AMQP_RESPONSE_NORMAL) {
            query_channel_reset(env, r);
            amqp_check(r, "basic.get");
        }
        if (r.reply.id == AMQP_BASIC_GET_EMPTY_METHOD)
            break;
        if (r.reply.id != AMQP_BASIC_GET_OK_METHOD)
            fail_msg("basic.get of '%s': unexpected reply 0x%08x", queue, r.reply.id);
        const amqp_basic_get_ok_t *ok = r.reply.decoded;
        if (count == cap) {
            cap *= 2;
            cwtest_msg *grown = realloc(out, cap * sizeof *out);
            if (!grown)
                fail_msg("out of memory");
            out = grown;
            memset(out + count, 0, (cap - count) * sizeof *out);
        }
        cwtest_msg *m = &out[count++];
        uint64_t tag = ok->delivery_tag;
        m->exchange = bytes_dup(ok->exchange);
        m->routing_key = bytes_dup(ok->routing_key);

        amqp_message_t msg;
        amqp_rpc_reply_t mr = amqp_read_message(env->conn, CH_QUERY, &msg, 0);
        amqp_check(mr, "reading a message from basic.get");
        const amqp_basic_properties_t *p = &msg.properties;
        m->message_id = prop(p, AMQP_BASIC_MESSAGE_ID_FLAG, p->message_id);
        m->correlation_id = prop(p, AMQP_BASIC_CORRELATION_ID_FLAG, p->correlation_id);
        m->type = prop(p, AMQP_BASIC_TYPE_FLAG, p->type);
        m->content_type = prop(p, AMQP_BASIC_CONTENT_TYPE_FLAG, p->content_type);
        m->has_timestamp = (p->_flags & AMQP_BASIC_TIMESTAMP_FLAG) != 0;
        m->timestamp = m->has_timestamp ? p->timestamp : 0;
        copy_headers(m, p);
        m->body_len = msg.body.len;
        m->body = (unsigned char *)xstrndup(msg.body.bytes, msg.body.len);
        amqp_destroy_message(&msg);

        if (ack) {
            int st = amqp_basic_ack(env->conn, CH_QUERY, tag, 0);
            if (st != AMQP_STATUS_OK)
                fail_msg("basic.ack: %s", amqp_error_string2(st));
        }
        amqp_maybe_release_buffers(env->conn);
    }
    amqp_maybe_release_buffers(env->conn);
    *n = count;
    return out;
}

cwtest_msg *cwtest_drain(cwtest_env *env, const char *queue, size_t *n)
{
    return get_all(env, queue, true, n);
}

cwtest_msg *cwtest_peek(cwtest_env *env, const char *queue, size_t *n)
{
    cwtest_msg *out = get_all(env, queue, false, n);
    /* Closing the channel hands back what it holds. */
    amqp_rpc_reply_t r = amqp_channel_close(env->conn, CH_QUERY, AMQP_REPLY_SUCCESS);
    env->query_open = false;
    amqp_check(r, "closing the query channel to put messages back");
    int64_t deadline = cwtest_now_ms() + CWTEST_TIMEOUT_MS;
    for (;;) {
        uint32_t got = cwtest_queue_count(env, queue);
        if (got >= *n)
            return out;
        if (cwtest_now_ms() >= deadline)
            fail_msg("queue '%s' shows %u ready messages, not the %zu put back, after %d ms", queue,
                     got, *n, CWTEST_TIMEOUT_MS);
        cwtest_sleep_ms(50);
    }
}

void cwtest_msgs_free(cwtest_msg *m, size_t n)
{
    if (!m)
        return;
    for (size_t i = 0; i < n; i++) {
        free(m[i].exchange);
        free(m[i].routing_key);
        free(m[i].message_id);
        free(m[i].correlation_id);
        free(m[i].type);
        free(m[i].content_type);
        for (size_t j = 0; j < m[i].n_headers; j++) {
            free(m[i].headers[j].key);
            free(m[i].headers[j].str);
        }
        free(m[i].headers);
        free(m[i].body);
    }
    free(m);
}

static const cwtest_hdr *find_hdr(const cwtest_msg *m, const char *key)
{
    for (size_t i = 0; i < m->n_headers; i++) {
        if (strcmp(m->headers[i].key, key) == 0)
            return &m->headers[i];
    }
    return NULL;
}

const char *cwtest_msg_str(const cwtest_msg *m, const char *key)
{
    const cwtest_hdr *h = find_hdr(m, key);
    return h && !h->is_int ? h->str : NULL;
}

bool cwtest_msg_int(const cwtest_msg *m, const char *key, int64_t *out)
{
    const cwtest_hdr *h = find_hdr(m, key);
    if (!h || !h->is_int)
        return false;
    *out = h->num;
    return true;
}

/* ---- the ledger --------------------------------------------------------- */

/* One integer from `sql` with an optional text parameter; 0 when the ledger
 * does not exist yet. */
static long ledger_query(const cwtest_env *env, const char *sql, const char *param)
{
    if (access(env->ledger, F_OK) != 0)
        return 0;
    sqlite3 *db = NULL;
    sqlite3_stmt *st = NULL;
    long v = -1;
    if (sqlite3_open_v2(env->ledger, &db, SQLITE_OPEN_READWRITE, NULL) != SQLITE_OK)
        goto out;
    sqlite3_busy_timeout(db, 10000);
    if (sqlite3_prepare_v2(db, sql, -1, &st, NULL) != SQLITE_OK)
        goto out;
    if (param)
        sqlite3_bind_text(st, 1, param, -1, SQLITE_STATIC);
    if (sqlite3_step(st) == SQLITE_ROW)
        v = (long)sqlite3_column_int64(st, 0);
out:
    if (v < 0) {
        char err[300];
        snprintf(err, sizeof err, "%s", db ? sqlite3_errmsg(db) : "out of memory");
        sqlite3_finalize(st);
        sqlite3_close(db);
        fail_msg("ledger %s: %s: %s", env->ledger, sql, err);
    }
    sqlite3_finalize(st);
    sqlite3_close(db);
    return v;
}

long cwtest_ledger_rows(const cwtest_env *env)
{
    return ledger_query(env, "SELECT COUNT(*) FROM applied", NULL);
}

long cwtest_ledger_distinct(const cwtest_env *env)
{
    return ledger_query(env, "SELECT COUNT(DISTINCT message_id) FROM applied", NULL);
}

long cwtest_ledger_max_per_id(const cwtest_env *env)
{
    return ledger_query(env,
                        "SELECT COALESCE(MAX(n), 0) FROM "
                        "(SELECT COUNT(*) AS n FROM applied GROUP BY message_id)",
                        NULL);
}

long cwtest_ledger_count_id(const cwtest_env *env, const char *message_id)
{
    return ledger_query(env, "SELECT COUNT(*) FROM applied WHERE message_id = ?1", message_id);
}

bool cwtest_ledger_applied(const cwtest_env *env, const char *message_id)
{
    return cwtest_ledger_count_id(env, message_id) > 0;
}

long cwtest_ledger_wait(cwtest_env *env, long n, int timeout_ms)
{
    int64_t deadline = cwtest_now_ms() + timeout_ms;
    for (;;) {
        long got = cwtest_ledger_rows(env);
        if (got >= n)
            return got;
        check_worker(env, "ledger rows");
        if (cwtest_now_ms() >= deadline)
            fail_msg("the ledger has %ld rows, not %ld, after %d ms; see %s", got, n, timeout_ms,
                     env->log);
        cwtest_sleep_ms(20);
    }
}

/* ---- calls -------------------------------------------------------------- */

long cwtest_calls_count(const cwtest_env *env, const char *message_id)
{
    return message_id
               ? ledger_query(env, "SELECT COUNT(*) FROM calls WHERE message_id = ?1", message_id)
               : ledger_query(env, "SELECT COUNT(*) FROM calls", NULL);
}

cwtest_call *cwtest_calls_read(const cwtest_env *env, const char *message_id, size_t *n)
{
    *n = 0;
    if (access(env->ledger, F_OK) != 0)
        return NULL;
    sqlite3 *db = NULL;
    sqlite3_stmt *st = NULL;
    cwtest_call *out = NULL;
    size_t cap = 0;
    if (sqlite3_open_v2(env->ledger, &db, SQLITE_OPEN_READWRITE, NULL) != SQLITE_OK)
        goto fail;
    sqlite3_busy_timeout(db, 10000);
    if (sqlite3_prepare_v2(db,
                           message_id ? "SELECT attempt, mono_ms, wall_ms FROM calls "
                                        "WHERE message_id = ?1 ORDER BY row"
                                      : "SELECT attempt, mono_ms, wall_ms FROM calls ORDER BY row",
                           -1, &st, NULL) != SQLITE_OK)
        goto fail;
    if (message_id)
        sqlite3_bind_text(st, 1, message_id, -1, SQLITE_STATIC);
    int rc;
    while ((rc = sqlite3_step(st)) == SQLITE_ROW) {
        if (*n == cap) {
            cap = cap ? cap * 2 : 8;
            cwtest_call *grown = realloc(out, cap * sizeof *out);
            if (!grown)
                goto fail;
            out = grown;
        }
        out[*n].attempt = (unsigned)sqlite3_column_int64(st, 0);
        out[*n].mono_ms = sqlite3_column_int64(st, 1);
        out[*n].wall_ms = sqlite3_column_int64(st, 2);
        (*n)++;
    }
    if (rc != SQLITE_DONE)
        goto fail;
    sqlite3_finalize(st);
    sqlite3_close(db);
    return out;
fail : {
    char err[300];
    snprintf(err, sizeof err, "%s", db ? sqlite3_errmsg(db) : "out of memory");
    sqlite3_finalize(st);
    sqlite3_close(db);
    free(out);
    *n = 0;
    fail_msg("ledger %s: reading calls: %s", env->ledger, err);
    return NULL;
}
}

long cwtest_calls_wait(cwtest_env *env, const char *message_id, long n, int timeout_ms)
{
    int64_t deadline = cwtest_now_ms() + timeout_ms;
    for (;;) {
        long got = cwtest_calls_count(env, message_id);
        if (got >= n)
            return got;
        check_worker(env, "handler calls");
        if (cwtest_now_ms() >= deadline)
            fail_msg("the ledger has %ld calls of %s, not %ld, after %d ms; see %s", got,
                     message_id ? message_id : "any task", n, timeout_ms, env->log);
        cwtest_sleep_ms(10);
    }
}

/* ---- files -------------------------------------------------------------- */

void cwtest_write_file(const char *path, const char *text, unsigned mode)
{
    write_file(path, text);
    if (chmod(path, (mode_t)mode) != 0)
        fail_msg("chmod %s: %s", path, strerror(errno));
}

/* Parses the documents of `text`; with `strict`, anything left over fails
 * the test, otherwise an incomplete last document is not counted. */
static size_t json_parse_all(const char *path, const char *text, bool strict, json_object ***docs)
{
    size_t n = 0, cap = 0, len = strlen(text), off = 0;
    json_tokener *tok = json_tokener_new();
    if (!tok)
        fail_msg("out of memory");
    for (;;) {
        while (off < len &&
               (text[off] == '\n' || text[off] == ' ' || text[off] == '\r' || text[off] == '\t'))
            off++;
        if (off >= len)
            break;
        json_tokener_reset(tok);
        json_object *o = json_tokener_parse_ex(tok, text + off, (int)(len - off));
        enum json_tokener_error e = json_tokener_get_error(tok);
        if (!o) {
            if (!strict && e == json_tokener_continue)
                break;
            json_tokener_free(tok);
            if (docs) {
                cwtest_json_free(*docs, n);
                *docs = NULL;
            }
            fail_msg("%s: not JSON at byte %zu: %s", path, off, json_tokener_error_desc(e));
        }
        off += json_tokener_get_parse_end(tok);
        if (docs) {
            if (n == cap) {
                cap = cap ? cap * 2 : 8;
                json_object **grown = realloc(*docs, cap * sizeof *grown);
                if (!grown)
                    fail_msg("out of memory");
                *docs = grown;
            }
            (*docs)[n] = o;
        } else {
            json_object_put(o);
        }
        n++;
    }
    json_tokener_free(tok);
    return n;
}

json_object **cwtest_json_read(const char *path, size_t *n)
{
    *n = 0;
    if (access(path, F_OK) != 0)
        return NULL;
    char *text = read_from(path, 0);
    json_object **docs = NULL;
    /* (On failure the text leaks: the test is failing anyway.) */
    *n = json_parse_all(path, text, true, &docs);
    free(text);
    return docs;
}

void cwtest_json_free(json_object **docs, size_t n)
{
    if (!docs)
        return;
    for (size_t i = 0; i < n; i++)
        json_object_put(docs[i]);
    free(docs);
}

size_t cwtest_json_count(const char *path)
{
    if (access(path, F_OK) != 0)
        return 0;
    char *text = read_from(path, 0);
    size_t n = json_parse_all(path, text, false, NULL);
    free(text);
    return n;
}

size_t cwtest_json_wait(const char *path, size_t n, int timeout_ms)
{
    int64_t deadline = cwtest_now_ms() + timeout_ms;
    for (;;) {
        size_t got = cwtest_json_count(path);
        if (got >= n)
            return got;
        if (cwtest_now_ms() >= deadline)
            fail_msg("%s holds %zu JSON documents, not %zu, after %d ms", path, got, n, timeout_ms);
        cwtest_sleep_ms(20);
    }
}

const char *cwtest_json_str(json_object *obj, const char *key)
{
    json_object *v;
    if (!obj || !json_object_object_get_ex(obj, key, &v) ||
        !json_object_is_type(v, json_type_string))
        return NULL;
    return json_object_get_string(v);
}

bool cwtest_json_int(json_object *obj, const char *key, int64_t *out)
{
    json_object *v;
    if (!obj || !json_object_object_get_ex(obj, key, &v) || !json_object_is_type(v, json_type_int))
        return false;
    *out = json_object_get_int64(v);
    return true;
}
