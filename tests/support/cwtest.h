/* Helpers shared by the integration tests.
 *
 * One cwtest_env per test: a temporary directory, a pool configuration with a
 * pool name of its own, the compworker executable run as a child process, a
 * raw AMQP connection (rabbitmq-c) to the test broker, and the SQLite ledger
 * that tests/plugins/ledger_plugin.so writes.
 *
 *     static void test_x(void **state)
 *     {
 *         cwtest_env *env = cwtest_begin(state, "x", NULL);
 *         cwtest_worker_start(env);
 *         ...
 *         assert_int_equal(cwtest_worker_stop(env, SIGTERM, 15000), 0);
 *         cwtest_pass(env);
 *     }
 *     ... cmocka_unit_test_teardown(test_x, cwtest_teardown) ...
 *
 * Every helper fails the running cmocka test (fail_msg) on an error it cannot
 * recover from, so a test reads as a list of steps. cwtest_teardown() kills a
 * worker left running, closes everything the env holds, deletes the pool's
 * queues and removes the temporary directory, unless the test did not reach
 * cwtest_pass(): then the directory and the queues are kept (the pool queue
 * unbound from cw.tasks, so that it does not collect later tests' tasks), and
 * the directory's path and the tail of the worker log are printed.
 *
 * The environment gives the broker: CW_TEST_AMQP_URL (required),
 * CW_TEST_BROKER_DIR and CW_TEST_HARNESS (for cwtest_broker_restart_app()),
 * and for tests of the PostgreSQL store CW_TEST_PG_URL, CW_TEST_PG_DIR and
 * CW_TEST_PG_HARNESS (cwtest_pg_harness()).
 * None of this is thread-safe; each test runs in one thread. */
#ifndef CW_TESTS_SUPPORT_CWTEST_H
#define CW_TESTS_SUPPORT_CWTEST_H

#include <amqp.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

#include "compworker/client.h"

/* The default for every wait. */
#define CWTEST_TIMEOUT_MS 60000

/* ---- environment -------------------------------------------------------- */

typedef struct cwtest_pool_opts {
    const char *queue_type;  /* "quorum" (NULL) or "classic" */
    const char *pool_lines;  /* extra lines for [pool], e.g. "max_body_size = 1KiB\n" */
    const char *extra;       /* appended at the end of the file */
    const char *store_lines; /* the [store] section's lines instead of
                              * "path = <dir>/store.db\n" */
    const char *ledger;      /* the ledger's path instead of <dir>/ledger.db (a
                             * second "host" of a pool shares the first's) */
} cwtest_pool_opts;

typedef struct cwtest_env {
    char test[64];
    char dir[256];    /* the temporary directory */
    char name[128];   /* pool name: it-<test>-<pid> */
    char queue[160];  /* cw.<name> */
    char dlq[160];    /* cw.dlq.<name> */
    char ini[320];    /* <dir>/pool.ini */
    char ledger[320]; /* <dir>/ledger.db */
    char log[320];    /* <dir>/worker.log: stdout and stderr of every worker */
    char pids[320];   /* <dir>/pids: processes a test's scripts started write
                       * their PIDs here, one a line; teardown SIGKILLs them */
    char url[512];    /* CW_TEST_AMQP_URL */
    char exe[512];    /* CW_TEST_EXE */

    pid_t worker;            /* the running `compworker run` (the pool's supervisor), or 0 */
    const char *run_args[8]; /* more arguments after "run -c <ini>", NULL-terminated */
    int last_exit;           /* exit code (or 128 + signal) of the last worker reaped */
    long log_offset;         /* size of the log when the last worker started */
    bool passed;

    amqp_connection_state_t conn; /* channel 1 confirms publishes; 2 queries */
    bool query_open;
    uint64_t next_seq;         /* sequence number of the next publish on channel 1 */
    uint64_t acked;            /* every publish up to this one is confirmed */
    cw_client *client;         /* from cwtest_client() */
    char extra_queues[4][200]; /* declared by cwtest_queue_declare(), deleted at teardown */
    size_t n_extra_queues;
    struct cwtest_http *http; /* from cwtest_http_start(), stopped by teardown */
} cwtest_env;

/* Creates the env of a test into *state (so cwtest_teardown() finds it):
 * makes the temporary directory, writes the pool configuration and connects
 * to the broker. `test` names the pool ("it-<test>-<pid>"). */
#define cwtest_begin(state, test, opts)                                                            \
    cwtest__begin((state), (test), (opts), CW_TEST_EXE, CW_TEST_PLUGIN_DIR "/ledger_plugin.so")
cwtest_env *cwtest__begin(void **state, const char *test, const cwtest_pool_opts *opts,
                          const char *exe, const char *ledger_plugin);

/* Marks the test as passed (call last): teardown then removes its traces. */
void cwtest_pass(cwtest_env *env);

/* cmocka teardown for tests that called cwtest_begin(). */
int cwtest_teardown(void **state);

/* Milliseconds of CLOCK_MONOTONIC. */
int64_t cwtest_now_ms(void);

/* Sleeps `ms` milliseconds (for polling loops). */
void cwtest_sleep_ms(int ms);

/* ---- the worker process ------------------------------------------------- */

/* Starts `compworker run -c <ini>` (and env->run_args), its output
 * appended to env->log, and waits (30 s) until it logs "consuming from". */
void cwtest_worker_start(cwtest_env *env);

/* Starts it the same way without waiting for anything. */
void cwtest_worker_start_nowait(cwtest_env *env);

/* Sends `sig` and waits up to `timeout_ms` for the worker to exit. Returns its
 * exit code, or 128 + the signal that killed it. Fails the test (after a
 * SIGKILL) when it does not exit in time. */
int cwtest_worker_stop(cwtest_env *env, int sig, int timeout_ms);

/* True while the worker process has not exited. */
bool cwtest_worker_alive(cwtest_env *env);

/* Waits up to `timeout_ms` for the worker to exit by itself (it is sent
 * nothing). Returns its exit code (or 128 + the signal that killed it, also
 * kept in env->last_exit), or -1 when it is still running then. */
int cwtest_worker_wait_exit(cwtest_env *env, int timeout_ms);

/* The whole worker log, NUL-terminated; free() it. */
char *cwtest_log_read(const cwtest_env *env);

/* Occurrences of `needle` in the worker log. */
unsigned cwtest_log_count(const cwtest_env *env, const char *needle);

/* Waits until `needle` occurs at least `n` times in the worker log. */
void cwtest_log_wait(cwtest_env *env, const char *needle, unsigned n, int timeout_ms);

/* The worker's final "stopped: ..." statistics, from the last such line. */
typedef struct cwtest_stats {
    unsigned long long received, applied, duplicates, retried, dead_lettered, invalid;
} cwtest_stats;
void cwtest_log_stats(const cwtest_env *env, cwtest_stats *out);

/* Runs `$CW_TEST_HARNESS restart-app $CW_TEST_BROKER_DIR` (every connection
 * drops; durable queues and persistent messages survive), then reconnects
 * the env's own AMQP connection.
 *
 * With `hold_worker`, the worker is stopped (SIGSTOP) before the restart is
 * asked for and continued (SIGCONT) as soon as the broker has dropped the
 * connections, while it is still starting again: however slowly the
 * broker's CLI starts, the worker meets the outage with the work it held,
 * and reconnects by itself while the broker comes back.
 *
 * Returns the ledger's rows when the broker dropped the connections (with
 * `hold_worker`; otherwise when restart-app returned). */
long cwtest_broker_restart_app(cwtest_env *env, bool hold_worker);

/* Runs `$CW_TEST_HARNESS <cmd> $CW_TEST_BROKER_DIR` ("stop-app",
 * "start-app") and waits for it; after "start-app" the env's own AMQP
 * connection is made again. */
void cwtest_harness(cwtest_env *env, const char *cmd);

/* Runs tests/harness/postgres.sh CMD on the test's PostgreSQL server
 * ("restart", "stop-server", "start-server"); fails the test on an error. */
void cwtest_pg_harness(const char *cmd);

/* The [store] lines of a pool on the test's PostgreSQL server, in a schema
 * of the test's own (`schema`), into out. Skips the test (cmocka skip())
 * when CW_TEST_PG_URL is not set. */
void cwtest_pg_store_lines(char *out, size_t cap, const char *schema);

/* ---- raw AMQP ----------------------------------------------------------- */

/* A header to publish. */
typedef enum cwtest_kind {
    CWTEST_STR,
    CWTEST_I32,
    CWTEST_I64
} cwtest_kind;
typedef struct cwtest_header {
    const char *key;
    cwtest_kind kind;
    const char *str;
    int64_t num;
} cwtest_header;

/* A message to publish. NULL string properties are absent; "" is present and
 * empty. The message is persistent. */
typedef struct cwtest_out {
    const char *exchange;    /* NULL: "" (the default exchange) */
    const char *routing_key; /* required */
    const char *message_id;
    const char *type;
    const char *correlation_id;
    const char *content_type;
    const void *body;
    size_t body_len; /* 0: strlen(body) */
    const cwtest_header *headers;
    size_t n_headers;
    uint64_t timestamp; /* the timestamp property (seconds); 0: absent */
} cwtest_out;

/* Publishes (mandatory) without waiting for the confirm. */
void cwtest_send(cwtest_env *env, const cwtest_out *m);

/* Waits until every message sent is confirmed; fails the test on a nack, a
 * return (unroutable) or a timeout. */
void cwtest_confirm_all(cwtest_env *env);

/* cwtest_send() and cwtest_confirm_all(). */
void cwtest_publish(cwtest_env *env, const cwtest_out *m);

/* Sends a valid task of type it.apply to cw.tasks, unconfirmed. */
void cwtest_send_task(cwtest_env *env, const char *message_id, const char *saga_id,
                      const char *body);

/* A cw_client on the test broker and cw.tasks, owned by the env. */
cw_client *cwtest_client(cwtest_env *env);

/* Declares a durable classic queue `queue` (bound to nothing: the default
 * exchange routes to it by its name), deleted by cwtest_teardown() when the
 * test passed. At most 4 per test. */
void cwtest_queue_declare(cwtest_env *env, const char *queue);

/* cwtest_queue_declare() of a queue that holds at most `max_length`
 * messages and refuses more (x-overflow reject-publish: the publisher gets
 * a nack), to see what a publisher does with nacks. */
void cwtest_queue_declare_bounded(cwtest_env *env, const char *queue, int max_length);

/* Declares `exchange` (topic, durable, as a pool does) and binds `queue`
 * to it with `binding_key`. */
void cwtest_queue_bind(cwtest_env *env, const char *queue, const char *exchange,
                       const char *binding_key);

/* A queue's ready messages and consumers (passive queue.declare). */
uint32_t cwtest_queue_count(cwtest_env *env, const char *queue);
uint32_t cwtest_queue_consumers(cwtest_env *env, const char *queue);

/* Waits until the queue has exactly `n` ready messages. */
void cwtest_queue_wait(cwtest_env *env, const char *queue, uint32_t n, int timeout_ms);

/* Waits until the queue has no consumer (a stopped worker's unacked
 * messages are back in the queue by then). */
void cwtest_queue_wait_idle(cwtest_env *env, const char *queue, int timeout_ms);

/* A header as read: integers as `num`, strings (and byte arrays) as `str`. */
typedef struct cwtest_hdr {
    char *key;
    bool is_int;
    int64_t num;
    char *str; /* NULL for integers and kinds not handled */
} cwtest_hdr;

/* A message as read, every string NUL-terminated, NULL when absent. */
typedef struct cwtest_msg {
    char *exchange, *routing_key; /* of the delivery */
    char *message_id, *correlation_id, *type, *content_type;
    cwtest_hdr *headers;
    size_t n_headers;
    unsigned char *body; /* body_len bytes plus a NUL */
    size_t body_len;
    bool has_timestamp;
    uint64_t timestamp; /* the timestamp property, when has_timestamp */
} cwtest_msg;

/* Takes every message of `queue` (basic.get and ack) into a new array of
 * *n; free it with cwtest_msgs_free(). */
cwtest_msg *cwtest_drain(cwtest_env *env, const char *queue, size_t *n);
void cwtest_msgs_free(cwtest_msg *m, size_t n);

/* Reads every ready message of `queue` without removing any (basic.get
 * without acks, then the channel is closed so that the broker puts them
 * all back; a quorum queue may put them back in another order), into a new
 * array of *n; free it with cwtest_msgs_free(). Returns once the queue
 * shows at least *n ready messages again. Nothing may consume the queue
 * meanwhile. */
cwtest_msg *cwtest_peek(cwtest_env *env, const char *queue, size_t *n);

/* The string value of header `key`, or NULL. */
const char *cwtest_msg_str(const cwtest_msg *m, const char *key);

/* True and *out when header `key` is an integer. */
bool cwtest_msg_int(const cwtest_msg *m, const char *key, int64_t *out);

/* ---- the ledger --------------------------------------------------------- */

/* Rows, distinct message IDs, the most rows of one message ID. 0 while the
 * ledger does not exist yet. */
long cwtest_ledger_rows(const cwtest_env *env);
long cwtest_ledger_distinct(const cwtest_env *env);
long cwtest_ledger_max_per_id(const cwtest_env *env);

/* Rows of one message ID; whether it was applied at all. */
long cwtest_ledger_count_id(const cwtest_env *env, const char *message_id);
bool cwtest_ledger_applied(const cwtest_env *env, const char *message_id);

/* Waits until the ledger has at least `n` rows; returns the count seen. */
long cwtest_ledger_wait(cwtest_env *env, long n, int timeout_ms);

/* One handler call, from the ledger's table `calls` (recorded before the
 * handler decides anything). mono_ms is CLOCK_MONOTONIC, comparable with
 * cwtest_now_ms(). */
typedef struct cwtest_call {
    unsigned attempt;
    int64_t mono_ms;
    int64_t wall_ms;
} cwtest_call;

/* Calls of one message ID (NULL: of all); 0 while the ledger does not exist. */
long cwtest_calls_count(const cwtest_env *env, const char *message_id);

/* The calls of one message ID in the order they were made, as a new array
 * of *n (NULL when none); free() it. */
cwtest_call *cwtest_calls_read(const cwtest_env *env, const char *message_id, size_t *n);

/* Waits until one message ID (NULL: all) has at least `n` calls, failing the
 * test if the worker exits first; returns the count seen. */
long cwtest_calls_wait(cwtest_env *env, const char *message_id, long n, int timeout_ms);

/* ---- files -------------------------------------------------------------- */

/* Writes `text` to `path` with permissions `mode` (e.g. 0755 for a script). */
void cwtest_write_file(const char *path, const char *text, unsigned mode);

/* The JSON documents in `path`, one after the other (e.g. JSON lines), as a
 * new array of *n (NULL and 0 when the file does not exist); fails the test
 * on anything that is not JSON. Free with cwtest_json_free(). */
struct json_object;
struct json_object **cwtest_json_read(const char *path, size_t *n);
void cwtest_json_free(struct json_object **docs, size_t n);

/* Complete JSON documents in `path` so far (a document being written is not
 * counted). */
size_t cwtest_json_count(const char *path);

/* Waits until `path` holds at least `n` complete JSON documents; returns the
 * count seen. */
size_t cwtest_json_wait(const char *path, size_t n, int timeout_ms);

/* The string member `key` of a JSON object, or NULL. */
const char *cwtest_json_str(struct json_object *obj, const char *key);

/* True and *out when member `key` of a JSON object is an integer. */
bool cwtest_json_int(struct json_object *obj, const char *key, int64_t *out);

/* ---- a local HTTP server (libmicrohttpd) ---------------------------------- */

/* A server on 127.0.0.1 (a port of its own choosing) that answers 200 to a
 * POST to `path` and records its body and when it arrived, and 404 to
 * anything else (counted). It runs on its own thread; the functions below
 * may be called while it serves. The env owns it: teardown stops it. */
typedef struct cwtest_http cwtest_http;
cwtest_http *cwtest_http_start(cwtest_env *env, const char *path);
unsigned cwtest_http_port(const cwtest_http *h);

/* POST bodies recorded so far; requests answered 404. */
size_t cwtest_http_count(cwtest_http *h);
size_t cwtest_http_others(cwtest_http *h);

/* A copy of the i-th body (free() it) and when it arrived (cwtest_now_ms()). */
char *cwtest_http_body(cwtest_http *h, size_t i);
int64_t cwtest_http_at(cwtest_http *h, size_t i);

/* Waits until at least `n` bodies are recorded; returns the count seen. */
size_t cwtest_http_wait(cwtest_http *h, size_t n, int timeout_ms);

/* Stops the server and frees it (teardown does this for the env's). */
void cwtest_http_stop(cwtest_http *h);

/* GETs base + path ("http://127.0.0.1:9464", "/metrics") with libcurl:
 * the body (free() it) and *code; fails the test when nothing answers. */
char *cwtest_http_get(const char *base, const char *path, long *code);

/* The value of the Prometheus sample whose name and labels are exactly
 * `series` in a /metrics body; -1 when there is none. */
double cwtest_metric(const char *body, const char *series);

/* Runs `compworker ARGS...` (the env's executable; the arguments end with
 * NULL) to its end: its exit code (128 + signal), its stdout (and stderr
 * too with `with_stderr`) in out, cut to `cap`. */
int cwtest_cli(cwtest_env *env, char *out, size_t cap, bool with_stderr, ...);

/* The base URL of the pool's /metrics ("http://127.0.0.1:PORT"), from the
 * monitor's last "serving metrics at" line (waited for). */
void cwtest_metrics_base(cwtest_env *env, char *out, size_t cap);

/* How many times the file at `path` holds `needle` (0 when there is no
 * file). */
unsigned cwtest_file_count(const char *path, const char *needle);

#endif
