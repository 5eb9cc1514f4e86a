/* Integration tests of the operator's DLQ tools (`compworker dlq ...` and
 * `compworker status`), driven as a subprocess of the real executable,
 * against a real RabbitMQ node and a worker running
 * tests/plugins/ledger_plugin.so, whose ledger counts how often each task
 * was handled ("calls") and applied ("applied").
 *
 * Tasks that must fail first and succeed once "the cause is fixed" carry
 * {"fail_unless_file": "<dir>/fixed"}: creating the file is the fix. */
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

#include <json.h>

#include "compworker/client.h"
#include "cwtest.h"
#include "dlq/dlq.h"
#include "framework/broker.h"

#define WAIT_MS CWTEST_TIMEOUT_MS
#define STOP_MS 15000
#define CLI_TIMEOUT_MS 60000

/* ---- running the CLI ------------------------------------------------------ */

typedef struct cli_result {
    int code;  /* exit code, or 128 + signal */
    char *out; /* all of stdout */
    char *err; /* all of stderr */
} cli_result;

static void cli_free(cli_result *r)
{
    free(r->out);
    free(r->err);
    memset(r, 0, sizeof *r);
}

static char *slurp(const char *path)
{
    FILE *f = fopen(path, "rb");
    if (!f)
        return strdup("");
    fseek(f, 0, SEEK_END);
    long n = ftell(f);
    fseek(f, 0, SEEK_SET);
    char *buf = malloc((size_t)n + 1);
    if (!buf)
        fail_msg("out of memory");
    size_t got = fread(buf, 1, (size_t)n, f);
    buf[got] = '\0';
    fclose(f);
    return buf;
}

/* Starts `compworker ARGS...` (NULL-terminated) with stdout and stderr in
 * <dir>/cli.out and <dir>/cli.err, stdin from `in` (NULL: /dev/null) and
 * the environment variables `setenv` ("NAME=value", NULL-terminated; may
 * be NULL). */
static pid_t cli_start(cwtest_env *env, const char *in, char *const *setenv_list, char *const *args)
{
    char out[400], err[400];
    snprintf(out, sizeof out, "%s/cli.out", env->dir);
    snprintf(err, sizeof err, "%s/cli.err", env->dir);
    fflush(NULL);
    pid_t pid = fork();
    if (pid < 0)
        fail_msg("fork: %s", strerror(errno));
    if (pid == 0) {
        prctl(PR_SET_PDEATHSIG, SIGKILL);
        int fo = open(out, O_WRONLY | O_CREAT | O_TRUNC, 0644);
        int fe = open(err, O_WRONLY | O_CREAT | O_TRUNC, 0644);
        int fi = open(in ? in : "/dev/null", O_RDONLY);
        if (fo < 0 || fe < 0 || fi < 0)
            _exit(126);
        dup2(fo, STDOUT_FILENO);
        dup2(fe, STDERR_FILENO);
        dup2(fi, STDIN_FILENO);
        for (int i = 3; i < 1024; i++)
            close(i);
        unsetenv("CW_AMQP_URL");
        for (char *const *e = setenv_list; e && *e; e++)
            putenv(*e);
        char *argv[64];
        int n = 0;
        argv[n++] = env->exe;
        for (char *const *a = args; *a && n < 63; a++)
            argv[n++] = *a;
        argv[n] = NULL;
        execv(env->exe, argv);
        _exit(127);
    }
    return pid;
}

static cli_result cli_wait(cwtest_env *env, pid_t pid)
{
    cli_result r = {0};
    int64_t deadline = cwtest_now_ms() + CLI_TIMEOUT_MS;
    int status;
    for (;;) {
        pid_t w = waitpid(pid, &status, WNOHANG);
        if (w == pid)
            break;
        if (cwtest_now_ms() > deadline) {
            kill(pid, SIGKILL);
            waitpid(pid, &status, 0);
            fail_msg("compworker did not finish within %d ms", CLI_TIMEOUT_MS);
        }
        cwtest_sleep_ms(10);
    }
    r.code = WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
    char path[400];
    snprintf(path, sizeof path, "%s/cli.out", env->dir);
    r.out = slurp(path);
    snprintf(path, sizeof path, "%s/cli.err", env->dir);
    r.err = slurp(path);
    return r;
}

/* Runs compworker with the arguments given (NULL-terminated). */
static cli_result cli_env(cwtest_env *env, const char *in, char *const *setenv_list, ...)
{
    char *args[64];
    int n = 0;
    va_list ap;
    va_start(ap, setenv_list);
    for (char *a; n < 63 && (a = va_arg(ap, char *));)
        args[n++] = a;
    va_end(ap);
    args[n] = NULL;
    return cli_wait(env, cli_start(env, in, setenv_list, args));
}

#define CLI(env, ...) cli_env((env), NULL, NULL, __VA_ARGS__, (char *)NULL)

/* Fails the test unless the command exited with `code`. */
static void expect_code(const cli_result *r, int code, const char *what)
{
    if (r->code != code)
        fail_msg("%s: exit code %d, want %d\n--- stdout ---\n%s--- stderr ---\n%s", what, r->code,
                 code, r->out, r->err);
}

/* The JSON lines of a command's stdout. */
static json_object **json_lines(const cli_result *r, size_t *n)
{
    *n = 0;
    size_t cap = 16;
    json_object **v = malloc(cap * sizeof *v);
    for (const char *p = r->out; *p;) {
        const char *nl = strchr(p, '\n');
        size_t len = nl ? (size_t)(nl - p) : strlen(p);
        if (len) {
            json_object *o = json_tokener_parse(p);
            if (!o)
                fail_msg("not a JSON line: %.*s", (int)len, p);
            if (*n == cap)
                v = realloc(v, (cap *= 2) * sizeof *v);
            v[(*n)++] = o;
        }
        p += len + (nl ? 1 : 0);
    }
    return v;
}

static void json_lines_free(json_object **v, size_t n)
{
    for (size_t i = 0; i < n; i++)
        json_object_put(v[i]);
    free(v);
}

static const char *jstr(json_object *o, const char *key)
{
    json_object *v;
    return json_object_object_get_ex(o, key, &v) && json_object_is_type(v, json_type_string)
               ? json_object_get_string(v)
               : NULL;
}

static int64_t jint(json_object *o, const char *key)
{
    json_object *v;
    if (!json_object_object_get_ex(o, key, &v) || !json_object_is_type(v, json_type_int))
        fail_msg("no integer member '%s' in %s", key, json_object_to_json_string(o));
    return json_object_get_int64(v);
}

/* ---- tasks ---------------------------------------------------------------- */

static void task_id(char *out, size_t cap, const char *prefix, int i)
{
    snprintf(out, cap, "%s-%04d", prefix, i);
}

/* Publishes `n` it.apply tasks prefix-0000.. with saga saga-<i % sagas>
 * and the body `fmt` (printf with the task's number), confirmed. */
static void publish_tasks(cwtest_env *env, const char *prefix, int n, int sagas, const char *fmt)
{
    for (int i = 0; i < n; i++) {
        char id[64], saga[32], body[512];
        task_id(id, sizeof id, prefix, i);
        snprintf(saga, sizeof saga, "saga-%d", i % sagas);
        snprintf(body, sizeof body, fmt, i);
        cwtest_send_task(env, id, saga, body);
    }
    cwtest_confirm_all(env);
}

/* A body that fails until <dir>/fixed exists. */
static void fixable_body(const cwtest_env *env, char *fmt, size_t cap)
{
    snprintf(fmt, cap, "{\"n\":%%d,\"fail_unless_file\":\"%s/fixed\"}", env->dir);
}

static void fix_the_cause(const cwtest_env *env)
{
    char path[400];
    snprintf(path, sizeof path, "%s/fixed", env->dir);
    cwtest_write_file(path, "fixed\n", 0644);
}

/* The message IDs `dlq list --json` shows, in order, as one string. */
static char *list_ids(cwtest_env *env, size_t *n)
{
    cli_result r = CLI(env, "dlq", "list", "-c", env->ini, "--json");
    expect_code(&r, 0, "dlq list --json");
    json_object **v = json_lines(&r, n);
    size_t cap = 1 + *n * (CW_MESSAGE_ID_MAX + 1);
    char *ids = calloc(1, cap);
    for (size_t i = 0; i < *n; i++) {
        strcat(ids, jstr(v[i], "message_id"));
        strcat(ids, "\n");
    }
    json_lines_free(v, *n);
    cli_free(&r);
    return ids;
}

static void stop_worker(cwtest_env *env)
{
    int code = cwtest_worker_stop(env, SIGTERM, STOP_MS);
    if (code != 0)
        fail_msg("the worker exited with code %d after SIGTERM; see %s", code, env->log);
}

/* Waits until the task's calls in the ledger reach `n`, then a little for
 * its outcome to be settled. */
static void wait_calls(cwtest_env *env, const char *id, long n)
{
    cwtest_calls_wait(env, id, n, WAIT_MS);
}

/* The store's state of a message, from `compworker status --json`. */
static char *status_state(cwtest_env *env, const char *id, bool *replayed_in_history)
{
    cli_result r = CLI(env, "status", "-c", env->ini, "--json", "--no-dlq", (char *)id);
    size_t n;
    json_object **v = json_lines(&r, &n);
    if (n != 1)
        fail_msg("status --json printed %zu lines", n);
    char *state = strdup(jstr(v[0], "state") ? jstr(v[0], "state") : "?");
    if (replayed_in_history) {
        *replayed_in_history = false;
        json_object *h;
        if (json_object_object_get_ex(v[0], "history", &h)) {
            for (size_t i = 0; i < json_object_array_length(h); i++) {
                const char *o = jstr(json_object_array_get_idx(h, i), "outcome");
                if (o && strcmp(o, "replayed") == 0)
                    *replayed_in_history = true;
            }
        }
    }
    json_lines_free(v, n);
    cli_free(&r);
    return state;
}

/* Waits until the store says `state` for the message. */
static void wait_state(cwtest_env *env, const char *id, const char *state)
{
    int64_t deadline = cwtest_now_ms() + WAIT_MS;
    for (;;) {
        char *s = status_state(env, id, NULL);
        bool ok = strcmp(s, state) == 0;
        if (!ok && cwtest_now_ms() > deadline)
            fail_msg("message %s is %s in the store, want %s", id, s, state);
        free(s);
        if (ok)
            return;
        cwtest_sleep_ms(100);
    }
}

/* ---- 1. list and show leave the DLQ as it was ----------------------------- */

/* Over 32: a quorum queue requeues more than 32 messages in no set order
 * unless the browser puts them back itself, in order. */
#define LIST_N 100

static void test_list_leaves_dlq_unchanged(void **state)
{
    cwtest_env *env = cwtest_begin(state, "dlqlist", NULL);
    cwtest_worker_start(env);
    publish_tasks(env, "lst", LIST_N, 3, "{\"n\":%d,\"fail\":\"gateway said no\"}");
    cwtest_queue_wait(env, env->dlq, LIST_N, WAIT_MS);

    size_t n1, n2;
    char *ids1 = list_ids(env, &n1);
    char *ids2 = list_ids(env, &n2);
    assert_int_equal(n1, LIST_N);
    assert_int_equal(n2, LIST_N);
    assert_string_equal(ids1, ids2); /* same tasks, same order */
    char *expect = calloc(1, LIST_N * 16);
    for (int i = 0; i < LIST_N; i++) {
        char id[32];
        task_id(id, sizeof id, "lst", i);
        strcat(expect, id);
        strcat(expect, "\n");
    }
    assert_string_equal(ids1, expect); /* oldest first */

    /* Human output: columns that fit 100 characters, local times, ages. */
    cli_result r = CLI(env, "dlq", "list", "-c", env->ini);
    expect_code(&r, 0, "dlq list");
    for (char *line = strtok(r.out, "\n"); line; line = strtok(NULL, "\n")) {
        if (strlen(line) > 100)
            fail_msg("a line of dlq list is longer than 100 characters: %s", line);
    }
    cli_free(&r);
    r = CLI(env, "dlq", "list", "-c", env->ini);
    assert_non_null(strstr(r.out, "lst-0007"));
    assert_non_null(strstr(r.out, "gateway said no"));
    assert_non_null(strstr(r.out, "s ago"));
    assert_non_null(strstr(r.out, "100 tasks in"));
    cli_free(&r);

    /* Filters and --limit. */
    r = CLI(env, "dlq", "list", "-c", env->ini, "--json", "--saga-id", "saga-1");
    size_t n;
    json_object **v = json_lines(&r, &n);
    assert_int_equal(n, 33); /* 1, 4, ... 97 */
    for (size_t i = 0; i < n; i++)
        assert_string_equal(jstr(v[i], "saga_id"), "saga-1");
    json_lines_free(v, n);
    cli_free(&r);
    r = CLI(env, "dlq", "list", "-c", env->ini, "--json", "--limit", "4", "--grep", "SAID NO",
            "--type", "it.*", "--error-class", "permanent", "--since", "1h");
    v = json_lines(&r, &n);
    assert_int_equal(n, 4);
    json_lines_free(v, n);
    cli_free(&r);
    r = CLI(env, "dlq", "list", "-c", env->ini, "--json", "--until", "1h");
    v = json_lines(&r, &n);
    assert_int_equal(n, 0);
    json_lines_free(v, n);
    cli_free(&r);
    /* A list stopped early (--limit) leaves the order as it was too. */
    char *ids3 = list_ids(env, &n);
    assert_string_equal(ids3, expect);
    free(ids3);

    /* show: every property and header, the body, the history. */
    r = CLI(env, "dlq", "show", "-c", env->ini, "lst-0005");
    expect_code(&r, 0, "dlq show");
    assert_non_null(strstr(r.out, "cw-error-class"));
    assert_non_null(strstr(r.out, "\"gateway said no\""));
    assert_non_null(strstr(r.out, "correlation_id"));
    assert_non_null(strstr(r.out, "\"n\": 5"));
    assert_non_null(strstr(r.out, "History (from the store)"));
    assert_non_null(strstr(r.out, "permanent"));
    cli_free(&r);
    r = CLI(env, "dlq", "show", "-c", env->ini, "no-such-task");
    expect_code(&r, 1, "dlq show of an unknown ID");
    cli_free(&r);

    /* After all that reading the DLQ holds what it held: same count, same
     * bodies. */
    stop_worker(env);
    assert_int_equal(cwtest_queue_count(env, env->dlq), LIST_N);
    size_t nm;
    cwtest_msg *m = cwtest_drain(env, env->dlq, &nm);
    assert_int_equal(nm, LIST_N);
    for (size_t i = 0; i < nm; i++) {
        char id[32], body[128];
        task_id(id, sizeof id, "lst", (int)i);
        snprintf(body, sizeof body, "{\"n\":%zu,\"fail\":\"gateway said no\"}", i);
        assert_string_equal(m[i].message_id, id);
        assert_string_equal((const char *)m[i].body, body);
    }
    cwtest_msgs_free(m, nm);
    free(expect);
    free(ids1);
    free(ids2);
    cwtest_pass(env);
}

/* ---- 2. stats groups -------------------------------------------------------- */

static void test_stats_groups(void **state)
{
    cwtest_pool_opts po = {.extra = "[retry]\nmax_attempts = 2\ninterval = 100ms\n"
                                    "jitter = none\n"};
    cwtest_env *env = cwtest_begin(state, "dlqstats", &po);
    cwtest_worker_start(env);
    publish_tasks(env, "perm", 5, 5, "{\"n\":%d,\"fail\":\"card declined\"}");
    publish_tasks(env, "exh", 2, 2, "{\"n\":%d,\"retry\":\"gateway timeout\"}");
    for (int i = 0; i < 3; i++) {
        char id[32];
        task_id(id, sizeof id, "inv", i);
        cwtest_out m = {.exchange = "cw.tasks",
                        .routing_key = "it.apply",
                        .message_id = id,
                        .type = "x.unknown",
                        .correlation_id = "saga-x",
                        .content_type = "application/json",
                        .body = "{}"};
        cwtest_send(env, &m);
    }
    cwtest_confirm_all(env);
    cwtest_queue_wait(env, env->dlq, 10, WAIT_MS);

    cli_result r = CLI(env, "dlq", "stats", "-c", env->ini, "--json");
    expect_code(&r, 0, "dlq stats --json");
    size_t n;
    json_object **v = json_lines(&r, &n);
    assert_int_equal(n, 3);
    /* Most first. */
    assert_string_equal(jstr(v[0], "type"), "it.apply");
    assert_string_equal(jstr(v[0], "error_class"), "permanent");
    assert_int_equal(jint(v[0], "count"), 5);
    assert_string_equal(jstr(v[1], "type"), "x.unknown");
    assert_string_equal(jstr(v[1], "error_class"), "invalid");
    assert_int_equal(jint(v[1], "count"), 3);
    assert_string_equal(jstr(v[2], "type"), "it.apply");
    assert_string_equal(jstr(v[2], "error_class"), "exhausted");
    assert_int_equal(jint(v[2], "count"), 2);
    assert_non_null(jstr(v[0], "oldest"));
    assert_non_null(jstr(v[0], "newest"));
    json_lines_free(v, n);
    cli_free(&r);

    r = CLI(env, "dlq", "stats", "-c", env->ini);
    expect_code(&r, 0, "dlq stats");
    assert_non_null(strstr(r.out, "card declined"));
    assert_non_null(strstr(r.out, "10 tasks in 3 groups"));
    cli_free(&r);
    r = CLI(env, "dlq", "stats", "-c", env->ini, "--json", "--error-class", "invalid");
    v = json_lines(&r, &n);
    assert_int_equal(n, 1);
    json_lines_free(v, n);
    cli_free(&r);
    stop_worker(env);
    assert_int_equal(cwtest_queue_count(env, env->dlq), 10);
    cwtest_pass(env);
}

/* ---- 3. replay one, a filter, all ------------------------------------------- */

#define REPLAY_N 6

static void test_replay_one_filter_all(void **state)
{
    cwtest_env *env = cwtest_begin(state, "dlqreplay", NULL);
    cwtest_worker_start(env);
    char fmt[512];
    fixable_body(env, fmt, sizeof fmt);
    publish_tasks(env, "rp", REPLAY_N, 3, fmt);
    cwtest_queue_wait(env, env->dlq, REPLAY_N, WAIT_MS);
    assert_int_equal(cwtest_ledger_rows(env), 0);

    /* Not fixed yet: a dry run says what would happen and changes nothing. */
    cli_result r = CLI(env, "dlq", "replay", "-c", env->ini, "--all", "--dry-run");
    expect_code(&r, 0, "dlq replay --dry-run");
    assert_non_null(strstr(r.out, "would replay 6"));
    cli_free(&r);
    assert_int_equal(cwtest_queue_count(env, env->dlq), REPLAY_N);
    /* Nothing to select is a usage error. */
    r = CLI(env, "dlq", "replay", "-c", env->ini);
    expect_code(&r, 2, "dlq replay without a selection");
    cli_free(&r);

    fix_the_cause(env);

    /* One. */
    r = CLI(env, "dlq", "replay", "-c", env->ini, "rp-0000");
    expect_code(&r, 0, "dlq replay rp-0000");
    assert_non_null(strstr(r.out, "Replayed 1 of the 1 selected"));
    cli_free(&r);
    cwtest_ledger_wait(env, 1, WAIT_MS);
    cwtest_queue_wait(env, env->dlq, REPLAY_N - 1, WAIT_MS);
    assert_int_equal(cwtest_ledger_count_id(env, "rp-0000"), 1);
    wait_state(env, "rp-0000", "done");
    bool replayed;
    free(status_state(env, "rp-0000", &replayed));
    assert_true(replayed); /* the history records the replay */

    /* A filter: saga-1 is rp-0001 and rp-0004. */
    r = CLI(env, "dlq", "replay", "-c", env->ini, "--saga-id", "saga-1", "--json");
    expect_code(&r, 0, "dlq replay --saga-id saga-1");
    size_t n;
    json_object **v = json_lines(&r, &n);
    assert_int_equal(n, 3); /* two events and the summary */
    assert_int_equal(jint(v[2], "replayed"), 2);
    json_lines_free(v, n);
    cli_free(&r);
    cwtest_ledger_wait(env, 3, WAIT_MS);
    cwtest_queue_wait(env, env->dlq, REPLAY_N - 3, WAIT_MS);
    assert_int_equal(cwtest_ledger_count_id(env, "rp-0001"), 1);
    assert_int_equal(cwtest_ledger_count_id(env, "rp-0004"), 1);

    /* All. */
    r = CLI(env, "dlq", "replay", "-c", env->ini, "--all");
    expect_code(&r, 0, "dlq replay --all");
    assert_non_null(strstr(r.out, "Replayed 3 of the 3 selected"));
    cli_free(&r);
    cwtest_ledger_wait(env, REPLAY_N, WAIT_MS);
    cwtest_queue_wait(env, env->dlq, 0, WAIT_MS);
    for (int i = 0; i < REPLAY_N; i++) {
        char id[32];
        task_id(id, sizeof id, "rp", i);
        wait_state(env, id, "done");
        /* Through its handler exactly once more: the failure, then the replay. */
        assert_int_equal(cwtest_calls_count(env, id), 2);
        assert_int_equal(cwtest_ledger_count_id(env, id), 1);
    }
    stop_worker(env);
    assert_int_equal(cwtest_ledger_rows(env), REPLAY_N);
    assert_int_equal(cwtest_ledger_max_per_id(env), 1);
    cwtest_pass(env);
}

/* ---- 4. an applied task is replayed only with --force ----------------------- */

/* Publishes a DLQ copy of an it.apply task straight into the pool's DLQ. */
static void inject_dead(cwtest_env *env, const char *id, const char *body)
{
    cwtest_header h[] = {
        {.key = "cw-error-class", .kind = CWTEST_STR, .str = "permanent"},
        {.key = "cw-error", .kind = CWTEST_STR, .str = "injected by the test"},
        {.key = "cw-failed-at", .kind = CWTEST_STR, .str = "2026-01-02T03:04:05.678Z"},
        {.key = "cw-original-exchange", .kind = CWTEST_STR, .str = "cw.tasks"},
        {.key = "cw-original-routing-key", .kind = CWTEST_STR, .str = "it.apply"},
        {.key = "cw-attempt", .kind = CWTEST_I32, .num = 1},
    };
    cwtest_out m = {.exchange = "cw.dlx",
                    .routing_key = env->dlq,
                    .message_id = id,
                    .type = "it.apply",
                    .correlation_id = "saga-inj",
                    .content_type = "application/json",
                    .body = body,
                    .headers = h,
                    .n_headers = sizeof h / sizeof *h};
    cwtest_publish(env, &m);
}

static void test_replay_applied_needs_force(void **state)
{
    cwtest_env *env = cwtest_begin(state, "dlqforce", NULL);
    cwtest_worker_start(env);
    publish_tasks(env, "ok", 1, 1, "{\"n\":%d}");
    cwtest_ledger_wait(env, 1, WAIT_MS);
    wait_state(env, "ok-0000", "done");
    /* A copy of the applied task in the DLQ (as a replay killed after its
     * confirm would leave one). */
    inject_dead(env, "ok-0000", "{\"n\":0}");
    cwtest_queue_wait(env, env->dlq, 1, WAIT_MS);

    cli_result r = CLI(env, "dlq", "replay", "-c", env->ini, "ok-0000");
    expect_code(&r, 1, "dlq replay of an applied task");
    assert_non_null(strstr(r.err, "already applied"));
    assert_non_null(strstr(r.out, "Kept in"));
    cli_free(&r);
    r = CLI(env, "dlq", "replay", "-c", env->ini, "--all", "--dry-run");
    expect_code(&r, 0, "dry run");
    assert_non_null(strstr(r.out, "1 already applied"));
    cli_free(&r);
    cwtest_sleep_ms(300);
    assert_int_equal(cwtest_queue_count(env, env->dlq), 1);
    assert_int_equal(cwtest_ledger_count_id(env, "ok-0000"), 1);

    r = CLI(env, "dlq", "replay", "-c", env->ini, "ok-0000", "--force");
    expect_code(&r, 0, "dlq replay --force");
    cli_free(&r);
    cwtest_ledger_wait(env, 2, WAIT_MS);
    cwtest_queue_wait(env, env->dlq, 0, WAIT_MS);
    assert_int_equal(cwtest_ledger_count_id(env, "ok-0000"), 2); /* what --force means */
    stop_worker(env);
    cwtest_pass(env);
}

/* ---- 5. a replay killed midway loses nothing ------------------------------- */

#define KILL_N 300

static void test_replay_sigkill(void **state)
{
    cwtest_env *env = cwtest_begin(state, "dlqkill", NULL);
    cwtest_worker_start(env);
    char fmt[512];
    fixable_body(env, fmt, sizeof fmt);
    publish_tasks(env, "kl", KILL_N, 10, fmt);
    cwtest_queue_wait(env, env->dlq, KILL_N, WAIT_MS);
    fix_the_cause(env);

    /* At 100 a second the replay takes 3 s: kill it after about one. */
    char *args[] = {"dlq", "replay", "-c", env->ini, "--all", "--rate", "100", NULL};
    pid_t pid = cli_start(env, NULL, NULL, args);
    cwtest_ledger_wait(env, 50, WAIT_MS);
    kill(pid, SIGKILL);
    cli_result r = cli_wait(env, pid);
    assert_int_equal(r.code, 128 + SIGKILL);
    cli_free(&r);
    long applied = cwtest_ledger_rows(env);
    assert_true(applied < KILL_N);

    /* Every task is in the DLQ or applied (or both): none is nowhere. */
    cwtest_queue_wait_idle(env, env->dlq, WAIT_MS);
    cwtest_sleep_ms(500); /* let in-flight replays settle */
    size_t n;
    char *ids = list_ids(env, &n);
    for (int i = 0; i < KILL_N; i++) {
        char id[32], line[40];
        task_id(id, sizeof id, "kl", i);
        snprintf(line, sizeof line, "%s\n", id);
        bool in_dlq = strstr(ids, line) != NULL;
        if (!in_dlq && !cwtest_ledger_applied(env, id)) {
            /* It may be on its way through the pool queue still. */
            cwtest_calls_wait(env, id, 2, WAIT_MS);
            if (!cwtest_ledger_applied(env, id))
                fail_msg("task %s is neither in the DLQ nor applied", id);
        }
    }
    free(ids);

    /* Replaying again finishes the job; copies of tasks applied meanwhile are
     * refused, never applied twice. */
    r = CLI(env, "dlq", "replay", "-c", env->ini, "--all");
    assert_true(r.code == 0 || r.code == 1);
    cli_free(&r);
    cwtest_ledger_wait(env, KILL_N, WAIT_MS);
    stop_worker(env);
    assert_int_equal(cwtest_ledger_rows(env), KILL_N);
    assert_int_equal(cwtest_ledger_distinct(env), KILL_N);
    assert_int_equal(cwtest_ledger_max_per_id(env), 1);
    cwtest_pass(env);
}

/* ---- 6. --edit ------------------------------------------------------------- */

static void test_replay_edit(void **state)
{
    cwtest_env *env = cwtest_begin(state, "dlqedit", NULL);
    cwtest_worker_start(env);
    publish_tasks(env, "ed", 1, 1, "{\"n\":%d,\"fail\":\"amount_cents is missing\"}");
    cwtest_queue_wait(env, env->dlq, 1, WAIT_MS);

    /* An editor that writes something that is not JSON: refused. */
    char bad[400], good[400], array[400], editor[500];
    snprintf(bad, sizeof bad, "%s/bad-editor.sh", env->dir);
    cwtest_write_file(bad, "#!/bin/sh\nprintf '{\"n\": 0, \"amount_cents\": ' > \"$1\"\n", 0755);
    snprintf(editor, sizeof editor, "EDITOR=%s", bad);
    char *envs[] = {editor, NULL};
    cli_result r = cli_env(env, NULL, envs, "dlq", "replay", "-c", env->ini, "--edit", "ed-0000",
                           (char *)NULL);
    expect_code(&r, 1, "dlq replay --edit with a bad edit");
    assert_non_null(strstr(r.err, "not valid JSON"));
    cli_free(&r);
    cwtest_sleep_ms(300);
    assert_int_equal(cwtest_queue_count(env, env->dlq), 1);
    assert_int_equal(cwtest_calls_count(env, "ed-0000"), 1);

    /* JSON, but not an object: refused too. */
    snprintf(array, sizeof array, "%s/array-editor.sh", env->dir);
    cwtest_write_file(array, "#!/bin/sh\necho '[1, 2]' > \"$1\"\n", 0755);
    snprintf(editor, sizeof editor, "EDITOR=%s", array);
    r = cli_env(env, NULL, envs, "dlq", "replay", "-c", env->ini, "--edit", "ed-0000",
                (char *)NULL);
    expect_code(&r, 1, "dlq replay --edit with an array");
    assert_non_null(strstr(r.err, "not an object"));
    cli_free(&r);
    assert_int_equal(cwtest_queue_count(env, env->dlq), 1);

    /* An editor (with an argument: $EDITOR is split on spaces) that fixes
     * the body: the task is applied. */
    snprintf(good, sizeof good, "%s/good-editor.sh", env->dir);
    cwtest_write_file(good,
                      "#!/bin/sh\n"
                      "[ \"$1\" = --fix ] || exit 3\n"
                      "grep -q '\"n\": 0' \"$2\" || exit 4\n"
                      "printf '{\"n\": 0, \"amount_cents\": 1299}\\n' > \"$2\"\n",
                      0755);
    snprintf(editor, sizeof editor, "EDITOR=%s --fix", good);
    r = cli_env(env, NULL, envs, "dlq", "replay", "-c", env->ini, "--edit", "ed-0000",
                (char *)NULL);
    expect_code(&r, 0, "dlq replay --edit");
    assert_non_null(strstr(r.out, "body edited"));
    cli_free(&r);
    cwtest_ledger_wait(env, 1, WAIT_MS);
    cwtest_queue_wait(env, env->dlq, 0, WAIT_MS);
    assert_int_equal(cwtest_ledger_count_id(env, "ed-0000"), 1);
    stop_worker(env);
    cwtest_pass(env);
}

/* ---- 7. export, import: byte for byte -------------------------------------- */

/* One message as comparable bytes: every property and the headers in AMQP's
 * wire encoding, then the body. */
typedef struct snap {
    char *bytes[64];
    size_t len[64];
    size_t n;
} snap;

static void put(char **buf, size_t *len, const void *p, size_t n)
{
    *buf = realloc(*buf, *len + n + 8);
    memcpy(*buf + *len, &n, sizeof n);
    if (n)
        memcpy(*buf + *len + sizeof n, p, n);
    *len += sizeof n + n;
}

static int snap_one(cw_dlq_msg *m, void *ud)
{
    snap *s = ud;
    amqp_basic_properties_t *p = &m->env.message.properties;
    char *b = NULL;
    size_t len = 0;
    put(&b, &len, &p->_flags, sizeof p->_flags);
    amqp_bytes_t strs[] = {p->content_type, p->content_encoding, p->correlation_id, p->reply_to,
                           p->expiration,   p->message_id,       p->type,           p->user_id,
                           p->app_id,       p->cluster_id};
    amqp_flags_t flags[] = {AMQP_BASIC_CONTENT_TYPE_FLAG,   AMQP_BASIC_CONTENT_ENCODING_FLAG,
                            AMQP_BASIC_CORRELATION_ID_FLAG, AMQP_BASIC_REPLY_TO_FLAG,
                            AMQP_BASIC_EXPIRATION_FLAG,     AMQP_BASIC_MESSAGE_ID_FLAG,
                            AMQP_BASIC_TYPE_FLAG,           AMQP_BASIC_USER_ID_FLAG,
                            AMQP_BASIC_APP_ID_FLAG,         AMQP_BASIC_CLUSTER_ID_FLAG};
    for (size_t i = 0; i < sizeof strs / sizeof *strs; i++) {
        if (p->_flags & flags[i])
            put(&b, &len, strs[i].bytes, strs[i].len);
    }
    put(&b, &len, &p->delivery_mode, 1);
    put(&b, &len, &p->priority, 1);
    put(&b, &len, &p->timestamp, sizeof p->timestamp);
    if (p->_flags & AMQP_BASIC_HEADERS_FLAG) {
        static char enc[1 << 16];
        size_t off = 0;
        amqp_bytes_t out = {.len = sizeof enc, .bytes = enc};
        if (amqp_encode_table(out, &p->headers, &off) != AMQP_STATUS_OK)
            fail_msg("cannot encode the headers");
        put(&b, &len, enc, off);
    }
    put(&b, &len, m->env.message.body.bytes, m->env.message.body.len);
    if (s->n == 64)
        fail_msg("too many messages");
    s->bytes[s->n] = b;
    s->len[s->n] = len;
    s->n++;
    return 0;
}

static void snap_take(cwtest_env *env, snap *s, const char *dlq_name)
{
    cw_config *cfg = NULL;
    if (cw_config_load(&cfg, env->ini))
        fail_msg("%s", cw_error_last());
    memset(s, 0, sizeof *s);
    uint64_t total;
    if (cw_dlq_browse(cfg, dlq_name, "test_dlq", NULL, snap_one, s, &total, NULL))
        fail_msg("browsing: %s", cw_error_last());
    cw_config_free(cfg);
}

static void snap_free(snap *s)
{
    for (size_t i = 0; i < s->n; i++)
        free(s->bytes[i]);
}

/* Publishes, straight into the DLQ, messages with every kind of property
 * and header. */
static void publish_odd_messages(cwtest_env *env)
{
    cw_config *cfg = NULL;
    if (cw_config_load(&cfg, env->ini))
        fail_msg("%s", cw_error_last());
    amqp_connection_state_t conn;
    unsigned next = 0;
    if (cw__broker_connect(&conn, env->url, &next, 0, "test_dlq odd", NULL, 0))
        fail_msg("%s", cw_error_last());
    cw_mover mv;
    if (cw_mover_open(&mv, conn, 1))
        fail_msg("%s", cw_error_last());

    amqp_field_value_t inner_arr[] = {
        {.kind = AMQP_FIELD_KIND_UTF8, .value.bytes = amqp_cstring_bytes("rejected")},
        {.kind = AMQP_FIELD_KIND_I64, .value.i64 = -7},
        {.kind = AMQP_FIELD_KIND_BOOLEAN, .value.boolean = 1},
    };
    amqp_table_entry_t nested[] = {
        {.key = amqp_cstring_bytes("count"),
         .value = {.kind = AMQP_FIELD_KIND_I64, .value.i64 = 3}},
        {.key = amqp_cstring_bytes("list"),
         .value = {.kind = AMQP_FIELD_KIND_ARRAY,
                   .value.array = {.num_entries = 3, .entries = inner_arr}}},
        {.key = amqp_cstring_bytes("time"),
         .value = {.kind = AMQP_FIELD_KIND_TIMESTAMP, .value.u64 = 1764000000}},
    };
    amqp_field_value_t deaths[] = {
        {.kind = AMQP_FIELD_KIND_TABLE, .value.table = {.num_entries = 3, .entries = nested}},
    };
    static const char raw_bytes[] = "\x00\x01\xff\xfe binary";
    amqp_table_entry_t h[] = {
        {.key = amqp_cstring_bytes("s"),
         .value = {.kind = AMQP_FIELD_KIND_UTF8, .value.bytes = amqp_cstring_bytes("héllo ✓")}},
        {.key = amqp_cstring_bytes("latin1"),
         .value = {.kind = AMQP_FIELD_KIND_UTF8, .value.bytes = {.len = 4, .bytes = "caf\xe9"}}},
        {.key = amqp_cstring_bytes("x"),
         .value = {.kind = AMQP_FIELD_KIND_BYTES,
                   .value.bytes = {.len = sizeof raw_bytes - 1, .bytes = (void *)raw_bytes}}},
        {.key = amqp_cstring_bytes("t"),
         .value = {.kind = AMQP_FIELD_KIND_BOOLEAN, .value.boolean = 0}},
        {.key = amqp_cstring_bytes("b"), .value = {.kind = AMQP_FIELD_KIND_I8, .value.i8 = -128}},
        {.key = amqp_cstring_bytes("B"), .value = {.kind = AMQP_FIELD_KIND_U8, .value.u8 = 255}},
        {.key = amqp_cstring_bytes("s16"),
         .value = {.kind = AMQP_FIELD_KIND_I16, .value.i16 = -32768}},
        {.key = amqp_cstring_bytes("u16"),
         .value = {.kind = AMQP_FIELD_KIND_U16, .value.u16 = 65535}},
        {.key = amqp_cstring_bytes("I"),
         .value = {.kind = AMQP_FIELD_KIND_I32, .value.i32 = INT32_MIN}},
        {.key = amqp_cstring_bytes("i"),
         .value = {.kind = AMQP_FIELD_KIND_U32, .value.u32 = UINT32_MAX}},
        {.key = amqp_cstring_bytes("l"),
         .value = {.kind = AMQP_FIELD_KIND_I64, .value.i64 = INT64_MIN}},
        {.key = amqp_cstring_bytes("f"), .value = {.kind = AMQP_FIELD_KIND_F32, .value.f32 = 0.1f}},
        {.key = amqp_cstring_bytes("d"),
         .value = {.kind = AMQP_FIELD_KIND_F64, .value.f64 = -1.0 / 3.0}},
        {.key = amqp_cstring_bytes("D"),
         .value = {.kind = AMQP_FIELD_KIND_DECIMAL,
                   .value.decimal = {.decimals = 2, .value = 129900}}},
        {.key = amqp_cstring_bytes("T"),
         .value = {.kind = AMQP_FIELD_KIND_TIMESTAMP, .value.u64 = 1764020000}},
        {.key = amqp_cstring_bytes("V"), .value = {.kind = AMQP_FIELD_KIND_VOID}},
        {.key = amqp_cstring_bytes("x-death"),
         .value = {.kind = AMQP_FIELD_KIND_ARRAY,
                   .value.array = {.num_entries = 1, .entries = deaths}}},
        {.key = amqp_cstring_bytes("tbl"),
         .value = {.kind = AMQP_FIELD_KIND_TABLE,
                   .value.table = {.num_entries = 3, .entries = nested}}},
        {.key = amqp_cstring_bytes("cw-original-exchange"),
         .value = {.kind = AMQP_FIELD_KIND_UTF8, .value.bytes = amqp_cstring_bytes("cw.tasks")}},
    };
    for (int i = 0; i < 4; i++) {
        amqp_basic_properties_t p;
        memset(&p, 0, sizeof p);
        char id[32];
        snprintf(id, sizeof id, "odd-%d", i);
        p._flags = AMQP_BASIC_MESSAGE_ID_FLAG | AMQP_BASIC_DELIVERY_MODE_FLAG;
        p.message_id = amqp_cstring_bytes(id);
        p.delivery_mode = 2;
        if (i >= 1) {
            p._flags |= AMQP_BASIC_HEADERS_FLAG | AMQP_BASIC_CONTENT_TYPE_FLAG |
                        AMQP_BASIC_CONTENT_ENCODING_FLAG | AMQP_BASIC_CORRELATION_ID_FLAG |
                        AMQP_BASIC_REPLY_TO_FLAG | AMQP_BASIC_EXPIRATION_FLAG |
                        AMQP_BASIC_TIMESTAMP_FLAG | AMQP_BASIC_TYPE_FLAG | AMQP_BASIC_APP_ID_FLAG |
                        AMQP_BASIC_PRIORITY_FLAG;
            p.headers.num_entries = sizeof h / sizeof *h;
            p.headers.entries = h;
            p.content_type = amqp_cstring_bytes("application/octet-stream");
            p.content_encoding = amqp_cstring_bytes("identity");
            p.correlation_id = amqp_cstring_bytes("saga-ödd");
            p.reply_to = amqp_cstring_bytes("replies.odd");
            p.expiration = amqp_cstring_bytes("86400000");
            p.timestamp = 1764020000 + (uint64_t)i;
            p.type = amqp_cstring_bytes("odd.type");
            p.app_id = amqp_cstring_bytes("test_dlq");
            p.priority = (uint8_t)i;
        }
        if (i == 3) { /* user_id must match the connection's user */
            p._flags |= AMQP_BASIC_USER_ID_FLAG;
            p.user_id = amqp_cstring_bytes("guest");
        }
        char body[64];
        amqp_bytes_t bb;
        if (i == 2) { /* binary, with NULs */
            for (int k = 0; k < 64; k++)
                body[k] = (char)(k * 37);
            bb = (amqp_bytes_t){.len = sizeof body, .bytes = body};
        } else if (i == 3) { /* empty */
            bb = (amqp_bytes_t){.len = 0, .bytes = NULL};
        } else {
            snprintf(body, sizeof body, "{\"odd\":%d}", i);
            bb = amqp_cstring_bytes(body);
        }
        if (cw_mover_send(&mv, CW_DLX_NAME, env->dlq, &p, bb))
            fail_msg("%s", cw_error_last());
    }
    if (cw_mover_wait(&mv, 10000))
        fail_msg("%s", cw_error_last());
    for (size_t i = 0; i < mv.n; i++)
        assert_int_equal(mv.slots[i].state, CW_MOVE_CONFIRMED);
    cw_mover_free(&mv);
    cw__broker_close(conn);
    cw_config_free(cfg);
}

static void test_export_import_roundtrip(void **state)
{
    /* A classic DLQ: it adds no x-delivery-count to what is browsed, so the
     * messages can be compared whole. */
    cwtest_pool_opts po = {.queue_type = "classic"};
    cwtest_env *env = cwtest_begin(state, "dlqexport", &po);
    cwtest_worker_start(env);
    stop_worker(env); /* the topology is declared */
    publish_odd_messages(env);
    publish_tasks(env, "ex", 3, 3, "{\"n\":%d,\"fail\":\"nope\"}");
    cwtest_worker_start(env);
    cwtest_queue_wait(env, env->dlq, 7, WAIT_MS);
    stop_worker(env);

    snap before;
    snap_take(env, &before, env->dlq);
    assert_int_equal(before.n, 7);

    char exported[400], again[400], bad[400];
    snprintf(exported, sizeof exported, "%s/export.jsonl", env->dir);
    cli_result r = CLI(env, "dlq", "export", "-c", env->ini);
    expect_code(&r, 0, "dlq export");
    cwtest_write_file(exported, r.out, 0644);
    assert_non_null(strstr(r.err, "exported 7"));
    cli_free(&r);

    /* Empty the DLQ, then import. */
    r = CLI(env, "dlq", "delete", "-c", env->ini, "--all");
    expect_code(&r, 2, "dlq delete without a terminal or --yes");
    cli_free(&r);
    assert_int_equal(cwtest_queue_count(env, env->dlq), 7);
    r = CLI(env, "dlq", "delete", "-c", env->ini, "--all", "--yes");
    expect_code(&r, 0, "dlq delete --all --yes");
    assert_non_null(strstr(r.out, "Deleted 7"));
    cli_free(&r);
    assert_int_equal(cwtest_queue_count(env, env->dlq), 0);

    /* A bad line: nothing is imported, the line is named. */
    char *text = slurp(exported);
    snprintf(bad, sizeof bad, "%s/bad.jsonl", env->dir);
    FILE *f = fopen(bad, "w");
    char *second = strchr(text, '\n') + 1;
    fwrite(text, 1, (size_t)(second - text), f);
    fputs("{\"format\":\"compworker-dlq\",\"version\":1,\"properties\":{\"priority\":300},"
          "\"body_base64\":\"\"}\n",
          f);
    fputs(second, f);
    fclose(f);
    r = cli_env(env, bad, NULL, "dlq", "import", "-c", env->ini, (char *)NULL);
    expect_code(&r, 2, "dlq import of a file with a bad line");
    assert_non_null(strstr(r.err, ":2: properties.priority"));
    assert_non_null(strstr(r.err, "nothing was imported"));
    cli_free(&r);
    assert_int_equal(cwtest_queue_count(env, env->dlq), 0);

    /* A NUL inside a line is part of the line, not its end: what follows it
     * is not dropped unread. */
    f = fopen(bad, "w");
    fwrite(text, 1, (size_t)(second - text), f);
    fwrite(text, 1, (size_t)(second - text) - 1, f);
    fputc('\0', f);
    fputs("{\"more\":1}\n", f);
    fclose(f);
    r = cli_env(env, bad, NULL, "dlq", "import", "-c", env->ini, (char *)NULL);
    expect_code(&r, 2, "dlq import of a line holding a NUL byte");
    assert_non_null(strstr(r.err, ":2:"));
    assert_non_null(strstr(r.err, "nothing was imported"));
    cli_free(&r);
    assert_int_equal(cwtest_queue_count(env, env->dlq), 0);

    r = cli_env(env, exported, NULL, "dlq", "import", "-c", env->ini, (char *)NULL);
    expect_code(&r, 0, "dlq import");
    assert_non_null(strstr(r.out, "Imported 7"));
    cli_free(&r);
    assert_int_equal(cwtest_queue_count(env, env->dlq), 7);

    snap after;
    snap_take(env, &after, env->dlq);
    assert_int_equal(after.n, before.n);
    for (size_t i = 0; i < before.n; i++) {
        if (before.len[i] != after.len[i] ||
            memcmp(before.bytes[i], after.bytes[i], before.len[i]) != 0)
            fail_msg("message %zu differs after export and import", i);
    }
    /* And the export of the import is the export. */
    r = CLI(env, "dlq", "export", "-c", env->ini);
    expect_code(&r, 0, "dlq export again");
    snprintf(again, sizeof again, "%s/again.jsonl", env->dir);
    assert_string_equal(r.out, text);
    cli_free(&r);
    free(text);
    snap_free(&before);
    snap_free(&after);
    cwtest_pass(env);
}

/* ---- 8. canaries ----------------------------------------------------------- */

#define CANARY_N 5

static void test_canary_fails_stops(void **state)
{
    cwtest_env *env = cwtest_begin(state, "dlqcanfail", NULL);
    cwtest_worker_start(env);
    publish_tasks(env, "cf", CANARY_N, 5, "{\"n\":%d,\"fail\":\"still broken\"}");
    cwtest_queue_wait(env, env->dlq, CANARY_N, WAIT_MS);

    cli_result r = CLI(env, "dlq", "replay", "-c", env->ini, "--all", "--canary", "1", "--rate",
                       "100");
    expect_code(&r, 1, "dlq replay --canary whose canary fails");
    assert_non_null(strstr(r.err, "still broken"));
    assert_non_null(strstr(r.err, "4 selected tasks left untouched"));
    cli_free(&r);
    /* The canary went back to the DLQ; the rest never left it. */
    cwtest_queue_wait(env, env->dlq, CANARY_N, WAIT_MS);
    assert_int_equal(cwtest_calls_count(env, "cf-0000"), 2);
    for (int i = 1; i < CANARY_N; i++) {
        char id[32];
        task_id(id, sizeof id, "cf", i);
        assert_int_equal(cwtest_calls_count(env, id), 1);
    }
    stop_worker(env);
    assert_int_equal(cwtest_ledger_rows(env), 0);
    cwtest_pass(env);
}

#define RATE_REST 6
#define RATE_PER_S 4.0

static void test_canary_succeeds_then_rate(void **state)
{
    cwtest_env *env = cwtest_begin(state, "dlqcanok", NULL);
    cwtest_worker_start(env);
    char fmt[512];
    fixable_body(env, fmt, sizeof fmt);
    publish_tasks(env, "co", 1 + RATE_REST, 7, fmt);
    cwtest_queue_wait(env, env->dlq, 1 + RATE_REST, WAIT_MS);
    fix_the_cause(env);

    cli_result r = CLI(env, "dlq", "replay", "-c", env->ini, "--all", "--canary", "1", "--rate",
                       "4");
    expect_code(&r, 0, "dlq replay --canary --rate");
    assert_non_null(strstr(r.out, "co-0000"));
    assert_non_null(strstr(r.out, "Replayed 7 of the 7 selected"));
    cli_free(&r);
    cwtest_ledger_wait(env, 1 + RATE_REST, WAIT_MS);
    cwtest_queue_wait(env, env->dlq, 0, WAIT_MS);

    /* The canary was applied before any of the rest was handled again, and
     * the rest came at about 4 a second. */
    int64_t canary_at = 0, first = INT64_MAX, last = 0;
    for (int i = 0; i <= RATE_REST; i++) {
        char id[32];
        task_id(id, sizeof id, "co", i);
        size_t n;
        cwtest_call *calls = cwtest_calls_read(env, id, &n);
        assert_int_equal(n, 2);
        int64_t at = calls[1].mono_ms;
        free(calls);
        if (i == 0) {
            canary_at = at;
            continue;
        }
        if (at < first)
            first = at;
        if (at > last)
            last = at;
    }
    assert_true(first > canary_at);
    int64_t span = last - first;
    int64_t want = (int64_t)((RATE_REST - 1) * 1000 / RATE_PER_S); /* 1250 ms */
    if (span < want - 250 || span > want + 2000)
        fail_msg("the rest took %lld ms to arrive; at %.0f a second it takes about %lld ms",
                 (long long)span, RATE_PER_S, (long long)want);
    stop_worker(env);
    assert_int_equal(cwtest_ledger_max_per_id(env), 1);
    cwtest_pass(env);
}

/* ---- 9. a replay never picks up its own fresh dead-letters ------------------ */

#define SELF_N 20

static void test_replay_frozen_set(void **state)
{
    cwtest_env *env = cwtest_begin(state, "dlqfrozen", NULL);
    cwtest_worker_start(env);
    publish_tasks(env, "fz", SELF_N, 4, "{\"n\":%d,\"fail\":\"fails every time\"}");
    cwtest_queue_wait(env, env->dlq, SELF_N, WAIT_MS);

    /* At 10 a second the replay lasts 2 s: the first replays are
     * dead-lettered again (behind the snapshot) while it runs. */
    cli_result r = CLI(env, "dlq", "replay", "-c", env->ini, "--all", "--rate", "10", "--json");
    expect_code(&r, 0, "dlq replay --all of tasks that fail again");
    size_t n;
    json_object **v = json_lines(&r, &n);
    assert_int_equal(n, SELF_N + 1);
    assert_int_equal(jint(v[n - 1], "total"), SELF_N);
    assert_int_equal(jint(v[n - 1], "replayed"), SELF_N);
    json_lines_free(v, n);
    cli_free(&r);
    cwtest_queue_wait(env, env->dlq, SELF_N, WAIT_MS);
    for (int i = 0; i < SELF_N; i++) {
        char id[32];
        task_id(id, sizeof id, "fz", i);
        wait_calls(env, id, 2);
    }
    cwtest_sleep_ms(500);
    for (int i = 0; i < SELF_N; i++) {
        char id[32];
        task_id(id, sizeof id, "fz", i);
        assert_int_equal(cwtest_calls_count(env, id), 2); /* once, and once replayed: no loop */
    }
    stop_worker(env);
    cwtest_pass(env);
}

/* ---- 10. a DLQ of some thousands, and status ------------------------------- */

#define BIG_N 3000

static void test_big_dlq(void **state)
{
    cwtest_env *env = cwtest_begin(state, "dlqbig", NULL);
    cwtest_worker_start(env);
    stop_worker(env);
    for (int i = 0; i < BIG_N; i++) {
        char id[32], body[32];
        task_id(id, sizeof id, "big", i);
        snprintf(body, sizeof body, "{\"n\":%d}", i);
        cwtest_header h[] = {
            {.key = "cw-error-class", .kind = CWTEST_STR, .str = i % 2 ? "permanent" : "exhausted"},
            {.key = "cw-error", .kind = CWTEST_STR, .str = "upstream was down"},
            {.key = "cw-failed-at", .kind = CWTEST_STR, .str = "2026-01-02T03:04:05.678Z"},
            {.key = "cw-original-exchange", .kind = CWTEST_STR, .str = "cw.tasks"},
            {.key = "cw-original-routing-key", .kind = CWTEST_STR, .str = "it.apply"},
            {.key = "cw-attempt", .kind = CWTEST_I32, .num = 5},
        };
        cwtest_out m = {.exchange = "cw.dlx",
                        .routing_key = env->dlq,
                        .message_id = id,
                        .type = "it.apply",
                        .correlation_id = "saga-big",
                        .content_type = "application/json",
                        .body = body,
                        .headers = h,
                        .n_headers = sizeof h / sizeof *h};
        cwtest_send(env, &m);
        if (i % 500 == 499)
            cwtest_confirm_all(env);
    }
    cwtest_confirm_all(env);
    assert_int_equal(cwtest_queue_count(env, env->dlq), BIG_N);

    cli_result r = CLI(env, "dlq", "stats", "-c", env->ini, "--json");
    expect_code(&r, 0, "dlq stats");
    size_t n;
    json_object **v = json_lines(&r, &n);
    assert_int_equal(n, 2);
    assert_int_equal(jint(v[0], "count") + jint(v[1], "count"), BIG_N);
    json_lines_free(v, n);
    cli_free(&r);

    r = CLI(env, "status", "-c", env->ini, "big-2999");
    expect_code(&r, 0, "status of a task only in the DLQ");
    assert_non_null(strstr(r.out, "position 3000"));
    cli_free(&r);

    cwtest_worker_start(env);
    r = CLI(env, "dlq", "replay", "-c", env->ini, "--all", "--json");
    expect_code(&r, 0, "dlq replay --all of the big DLQ");
    v = json_lines(&r, &n);
    assert_int_equal(jint(v[n - 1], "replayed"), BIG_N);
    json_lines_free(v, n);
    cli_free(&r);
    cwtest_ledger_wait(env, BIG_N, WAIT_MS);
    cwtest_queue_wait(env, env->dlq, 0, WAIT_MS);
    stop_worker(env);
    assert_int_equal(cwtest_ledger_rows(env), BIG_N);
    assert_int_equal(cwtest_ledger_max_per_id(env), 1);

    r = CLI(env, "status", "-c", env->ini, "big-0042");
    expect_code(&r, 0, "status");
    assert_non_null(strstr(r.out, "done (applied)"));
    assert_non_null(strstr(r.out, "replayed by"));
    assert_non_null(strstr(r.out, "in the DLQ   no"));
    cli_free(&r);
    r = CLI(env, "status", "-c", env->ini, "never-seen");
    expect_code(&r, 1, "status of an unknown task");
    cli_free(&r);
    cwtest_pass(env);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_teardown(test_list_leaves_dlq_unchanged, cwtest_teardown),
        cmocka_unit_test_teardown(test_stats_groups, cwtest_teardown),
        cmocka_unit_test_teardown(test_replay_one_filter_all, cwtest_teardown),
        cmocka_unit_test_teardown(test_replay_applied_needs_force, cwtest_teardown),
        cmocka_unit_test_teardown(test_replay_sigkill, cwtest_teardown),
        cmocka_unit_test_teardown(test_replay_edit, cwtest_teardown),
        cmocka_unit_test_teardown(test_export_import_roundtrip, cwtest_teardown),
        cmocka_unit_test_teardown(test_canary_fails_stops, cwtest_teardown),
        cmocka_unit_test_teardown(test_canary_succeeds_then_rate, cwtest_teardown),
        cmocka_unit_test_teardown(test_replay_frozen_set, cwtest_teardown),
        cmocka_unit_test_teardown(test_big_dlq, cwtest_teardown),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
