/* compworker — the handler plugin API.
 *
 * A plugin is a shared object that compworker loads with dlopen(). It contains
 *
 *     CW_PLUGIN_DECLARE("refund", "1.2.0");
 *
 *     int cw_plugin_init(cw_registry *reg)
 *     {
 *         return cw_register_handler(reg, "payment.refund", refund, NULL);
 *     }
 *
 * and its handlers are called once per task, in the worker process, on one of
 * the worker's handler threads ([pool] concurrency of them, 1 by default). A
 * handler returns CW_OK when the compensation is applied, or records why it
 * is not with cw_task_retry() (a transient failure: the task is tried again
 * later) or cw_task_fail() (a permanent one: the task goes to the dead-letter
 * queue for an operator).
 *
 * compworker calls a handler at most once per message ID for a successful
 * outcome: a task whose ID is already done is acknowledged without calling it.
 * A handler must still be safe to run again if the worker is killed between
 * its effect and compworker's record of it (make the effect idempotent on
 * cw_task_message_id() where the downstream system allows).
 *
 * Threads. A handler registered with cw_register_handler() is never called
 * on two threads at once, nor while another such handler of the same plugin
 * runs: a plugin written for one thread stays correct whatever [pool]
 * concurrency says. A handler registered with cw_register_handler_opts() and
 * `concurrent` set may run on several handler threads at once (up to
 * [pool] concurrency, and [handler TYPE] concurrency for its type): it must
 * then be thread-safe with respect to itself and the plugin's other
 * handlers (its user_data is shared). A handler may run on a different thread
 * from one call to the next, and never on the thread that called
 * cw_plugin_init().
 *
 * What may be called from where:
 *   - cw_register_*() and cw_registry_setting(): only during cw_plugin_init();
 *   - cw_task_*(): from the handler the task was passed to, on its thread,
 *     until it returns (a task belongs to one call); thread-safe in that sense;
 *   - cw_error_last(): any thread (each has its own);
 *   - alert hooks run on the alert thread (see cw_alert_fn).
 * None of it is safe across fork().
 */
#ifndef COMPWORKER_COMPWORKER_H
#define COMPWORKER_COMPWORKER_H

#include <stddef.h>
#include <stdint.h>

#include "export.h"
#include "status.h"
#include "version.h"

#ifdef __cplusplus
extern "C" {
#endif

struct json_object;
struct pg_conn; /* libpq's PGconn: include <libpq-fe.h> to use it */
struct sqlite3; /* SQLite's connection: include <sqlite3.h> to use it */

/** The set of handlers a worker dispatches to. Owned by compworker; a plugin
 *  only borrows it during cw_plugin_init(). */
typedef struct cw_registry cw_registry;

/** One delivery of a compensation task. Owned by compworker; borrowed by the
 *  handler and valid until the handler returns. */
typedef struct cw_task cw_task;

/** What a handler did with a task. Not a status code. */
typedef enum cw_outcome {
    CW_OK = 0,    /**< applied: the task is marked done and acknowledged */
    CW_RETRY = 1, /**< transient failure: try again later (or dead-letter as
                       "exhausted" when no attempts remain) */
    CW_FAIL = 2   /**< permanent failure: dead-letter with class "permanent" */
} cw_outcome;

/** A task handler. `task` is borrowed until return; `user_data` is what was
 *  given to cw_register_handler(). Must return one of cw_outcome's values; any
 *  other value is treated as CW_FAIL with the reason "handler returned N". */
typedef cw_outcome (*cw_handler_fn)(cw_task *task, void *user_data);

/** How retry delays are spread (AWS Step Functions' `JitterStrategy`). */
typedef enum cw_jitter {
    CW_JITTER_NONE = 0, /**< exactly the computed delay */
    CW_JITTER_FULL = 1, /**< uniform in [0, delay] */
    CW_JITTER_EQUAL = 2 /**< delay/2 + uniform in [0, delay/2] */
} cw_jitter;

/** A handler's retry policy, as a plugin may set it. A field left at -1 is
 *  inherited from the pool's `[retry]` section; a `[handler TYPE]` section of
 *  the pool file overrides both. The delay before attempt n+1 is
 *  min(max_delay_ms, interval_ms * backoff_rate^(n-1)), then jittered.
 *  Start from CW_RETRY_OPTS_INIT: fields may be added at the end. */
typedef struct cw_retry_opts {
    unsigned version;     /**< CW_RETRY_OPTS_VERSION */
    int max_attempts;     /**< attempts in all, the first included (1 = never retry) */
    int64_t interval_ms;  /**< delay after the first failure, in milliseconds */
    double backoff_rate;  /**< factor per further failure, >= 1.0 */
    int64_t max_delay_ms; /**< cap of a delay, in milliseconds (at most ~29 h) */
    int jitter;           /**< a cw_jitter value */
} cw_retry_opts;

#define CW_RETRY_OPTS_VERSION 1
#define CW_RETRY_OPTS_INIT                                                                         \
    {                                                                                              \
        CW_RETRY_OPTS_VERSION, -1, -1, -1.0, -1, -1                                                \
    }

/** Fills `opts` with the defaults of CW_RETRY_OPTS_INIT as of `version`
 *  (pass CW_RETRY_OPTS_VERSION), for callers that cannot use the macro.
 *  Only the fields `version` has are written.
 *  @return 0; CW_STATUS_INVALID_ARG for a NULL `opts`, version 0, or a
 *          version newer than this library. Thread- and fork-safe. */
CW_EXTERN int cw_retry_opts_init(cw_retry_opts *opts, unsigned version);

/** An alert hook: receives the JSON document of every dead-lettered task
 *  (see README, "Alerts"). Called on the worker's alert thread, never on the
 *  thread that runs handlers, so it must be thread-safe with respect to the
 *  plugin's handlers. `json` is borrowed for the call. */
typedef void (*cw_alert_fn)(const char *json, void *user_data);

/** A plugin's teardown, called once when the worker unloads its plugins
 *  (normal exit), after the last handler call. */
typedef void (*cw_teardown_fn)(void *user_data);

/** What CW_PLUGIN_DECLARE() exports; read by the loader before anything else. */
typedef struct cw_plugin_info {
    unsigned abi_version; /**< CW_ABI_VERSION at the plugin's build */
    const char *name;     /**< short name, e.g. "refund" */
    const char *version;  /**< the plugin's own version, e.g. "1.2.0" */
} cw_plugin_info;

/** Declares the plugin's name and version and the ABI it was built for.
 *  Use exactly once per plugin, at file scope. Both arguments are string
 *  literals. */
#define CW_PLUGIN_DECLARE(name_, version_)                                                         \
    CW_EXTERN const cw_plugin_info cw_plugin_info_v1 = {CW_ABI_VERSION, (name_), (version_)}

/** The entry point every plugin exports. Register handlers (and optionally a
 *  teardown) on `reg`, which is borrowed for the duration of the call. Return
 *  0 on success; any other value refuses the plugin: the loader logs it, drops
 *  what the plugin registered, and unloads it. */
CW_EXTERN int cw_plugin_init(cw_registry *reg);

/** Registers `fn` as the handler of tasks whose `type` is `type`.
 *
 *  @param reg        the registry passed to cw_plugin_init() (borrowed)
 *  @param type       task type, 1–255 bytes of [A-Za-z0-9._:-]; copied
 *  @param fn         the handler; must stay valid while the plugin is loaded
 *  @param user_data  passed to every call of `fn`; owned by the plugin
 *  @return 0; CW_STATUS_EXISTS if a handler for `type` is already registered
 *          (by this or another plugin); CW_STATUS_INVALID_ARG for a NULL
 *          argument or a malformed type; CW_STATUS_NOMEM. cw_error_last()
 *          names the type and, for EXISTS, the plugin that has it. */
CW_EXTERN int cw_register_handler(cw_registry *reg, const char *type, cw_handler_fn fn,
                                  void *user_data);

/** How a handler is registered, for cw_register_handler_opts(). Start from
 *  CW_HANDLER_OPTS_INIT (or cw_handler_opts_init()): fields may be added at
 *  the end in later versions, and every version from 1 is accepted. */
typedef struct cw_handler_opts {
    unsigned version; /**< CW_HANDLER_OPTS_VERSION */
    int concurrent;   /**< non-zero: the handler is thread-safe and may run on
                           several handler threads at once (see the top of this
                           header); 0 (the default): one call at a time, as
                           with cw_register_handler() */
} cw_handler_opts;

#define CW_HANDLER_OPTS_VERSION 1
#define CW_HANDLER_OPTS_INIT                                                                       \
    {                                                                                              \
        CW_HANDLER_OPTS_VERSION, 0                                                                 \
    }

/** Fills `opts` with the defaults of CW_HANDLER_OPTS_INIT as of `version`
 *  (pass CW_HANDLER_OPTS_VERSION), for callers that cannot use the macro.
 *  @return 0; CW_STATUS_INVALID_ARG for a NULL `opts`, version 0, or a
 *          version newer than this library. Thread- and fork-safe. */
CW_EXTERN int cw_handler_opts_init(cw_handler_opts *opts, unsigned version);

/** As cw_register_handler(), with options: `opts` (borrowed for the call;
 *  NULL means CW_HANDLER_OPTS_INIT) says whether the handler may run on
 *  several threads at once. Call from cw_plugin_init().
 *  @return as cw_register_handler(); CW_STATUS_INVALID_ARG also for options
 *          of version 0 or newer than this library. */
CW_EXTERN int cw_register_handler_opts(cw_registry *reg, const char *type, cw_handler_fn fn,
                                       void *user_data, const cw_handler_opts *opts);

/** Sets the retry policy of the handler of `type`, which must be registered
 *  already (by any plugin). Call from cw_plugin_init(). `opts` is borrowed
 *  for the call; every version from 1 to CW_RETRY_OPTS_VERSION is accepted
 *  (fields a version lacks are inherited).
 *  @return 0; CW_STATUS_NOT_FOUND if no handler has `type`;
 *          CW_STATUS_INVALID_ARG for NULL arguments, options of version 0 or
 *          newer than this library, or an out-of-range value (named in
 *          cw_error_last()). */
CW_EXTERN int cw_register_retry_policy(cw_registry *reg, const char *type,
                                       const cw_retry_opts *opts);

/** Registers an alert hook for the calling plugin (any number per plugin).
 *  @return 0; CW_STATUS_INVALID_ARG if `fn` is NULL; CW_STATUS_NOMEM. */
CW_EXTERN int cw_register_alert_hook(cw_registry *reg, cw_alert_fn fn, void *user_data);

/** Registers a teardown for the calling plugin (at most one per plugin).
 *  @return 0; CW_STATUS_EXISTS if one is already registered;
 *          CW_STATUS_INVALID_ARG if `fn` is NULL. */
CW_EXTERN int cw_register_teardown(cw_registry *reg, cw_teardown_fn fn, void *user_data);

/** A setting from the pool configuration's `[plugin NAME]` section, where NAME
 *  is the name the plugin declared. Call only from cw_plugin_init().
 *  @return the value, borrowed until cw_plugin_init() returns (copy it to keep
 *          it), or `fallback` when the key is not set. */
CW_EXTERN const char *cw_registry_setting(cw_registry *reg, const char *key, const char *fallback);

/** The task's message ID (AMQP `message_id`), its idempotency key. Never NULL;
 *  borrowed until the handler returns. */
CW_EXTERN const char *cw_task_message_id(const cw_task *task);

/** The task type (AMQP `type`), e.g. "payment.refund". Never NULL; borrowed. */
CW_EXTERN const char *cw_task_type(const cw_task *task);

/** The saga ID (AMQP `correlation_id`), or "" when the publisher set none.
 *  Never NULL; borrowed until the handler returns. */
CW_EXTERN const char *cw_task_saga_id(const cw_task *task);

/** The parsed JSON body, always a JSON object. Borrowed: do not
 *  json_object_put() it (json_object_get() it to keep it past the handler). */
CW_EXTERN struct json_object *cw_task_payload(const cw_task *task);

/** The raw body bytes. `*len` (if `len` is not NULL) receives their number.
 *  Borrowed until the handler returns; not NUL-terminated. */
CW_EXTERN const void *cw_task_body(const cw_task *task, size_t *len);

/** Attempts already made before this one: 0 on the first try. */
CW_EXTERN unsigned cw_task_attempt(const cw_task *task);

/** The value of a string (or byte-array) header, NUL-terminated, or NULL when
 *  the header is absent, not a string, or contains a NUL byte. Borrowed until
 *  the handler returns. */
CW_EXTERN const char *cw_task_header(cw_task *task, const char *name);

/** Records a permanent failure and returns CW_FAIL, for `return
 *  cw_task_fail(task, "unknown payment %s", id);`. The reason is formatted
 *  with printf rules, cut at 1023 bytes, and travels into the DLQ record
 *  (`cw-error`), the store and the logs. Never pass message content as `fmt`. */
CW_EXTERN cw_outcome cw_task_fail(cw_task *task, const char *fmt, ...) CW_PRINTF(2, 3);

/** Records a transient failure and returns CW_RETRY; as cw_task_fail(). The
 *  task is tried again after its policy's delay, or dead-lettered with class
 *  "exhausted" when its attempts are used up. */
CW_EXTERN cw_outcome cw_task_retry(cw_task *task, const char *fmt, ...) CW_PRINTF(2, 3);

/** As cw_task_retry(), asking for a delay of `delay_ms` milliseconds before
 *  the next attempt instead of the policy's (e.g. from a `Retry-After`
 *  answer). The delay is capped at the policy's max_delay and rounded up to
 *  100 ms; a negative one means the policy's. It still counts an attempt. */
CW_EXTERN cw_outcome cw_task_retry_after(cw_task *task, int64_t delay_ms, const char *fmt, ...)
    CW_PRINTF(3, 4);

/* ---- effects exactly once ---------------------------------------------------
 *
 * A handler whose effect is a write to a database can make it part of the
 * transaction that records the task's outcome in the idempotency store: then
 * the write commits exactly when the task's `done` record does, and a kill,
 * a crash, a timeout or any outcome but CW_OK rolls it back. Its tables live
 * in the store's database (the SQLite file, or the PostgreSQL database of
 * [store] url). A redelivered task whose write committed is a duplicate; one
 * whose write was rolled back runs again: the write happens once.
 *
 * The transaction begins at the handler's first call of cw_task_pg() or
 * cw_task_sqlite() and ends when the handler returns; each handler thread
 * has its own connection and transaction, so this works at any [pool]
 * concurrency. Do slow work (a call to a gateway) before it: with SQLite the
 * transaction holds the store file's write lock until the handler returns.
 * The handler must not BEGIN, COMMIT, ROLLBACK or RELEASE on the connection:
 * the task is then failed with a reason that says so (SQLite refuses the
 * statement; with PostgreSQL what the handler committed stays committed,
 * with the task's done record, so it is not applied again).
 */

/** The PostgreSQL connection of this task's store transaction (the store's
 *  backend is postgresql), or NULL: another backend, or the store cannot
 *  begin it now (the claim was lost, the server is away: cw_error_last()
 *  says which; return cw_task_retry()). Borrowed: valid until the handler
 *  returns, on the handler's thread only. */
CW_EXTERN struct pg_conn *cw_task_pg(cw_task *task);

/** As cw_task_pg(), for a store whose backend is sqlite: a connection to the
 *  store's file inside this task's transaction, or NULL. */
CW_EXTERN struct sqlite3 *cw_task_sqlite(cw_task *task);

/** The most follow-up messages one task may send, and their bytes in all. */
#define CW_TASK_SEND_MAX 16
#define CW_TASK_SEND_BYTES_MAX (1024 * 1024)

/** Queues a follow-up message (an event such as PaymentRefunded for the
 *  saga's orchestrator) that is published only if this task's outcome is
 *  done: it is stored in the same commit as the outcome, published with
 *  publisher confirms after it, and removed once confirmed; should the worker
 *  die in between, a worker of the pool publishes it later. Its message ID is
 *  derived from the task's and the send's index (UUIDv5), so a task run
 *  again never sends a second distinct message; it carries the task's saga
 *  ID (correlation_id), `type`, content type application/json, and is
 *  persistent and mandatory.
 *
 *  @param exchange     the exchange to publish to ("" for the default one); copied
 *  @param routing_key  its routing key (1-255 bytes); copied
 *  @param type         the message's type property (a task type's characters); copied
 *  @param body         a JSON object, `len` bytes (0: strlen); copied
 *  @return 0; CW_STATUS_INVALID_ARG for a bad argument (named in
 *          cw_error_last()); CW_STATUS_TOO_LARGE past CW_TASK_SEND_MAX
 *          messages or CW_TASK_SEND_BYTES_MAX bytes for the task. A task with
 *          a refused send is failed, whatever the handler returns, so that
 *          no follow-up is lost silently. Call only from the handler. */
CW_EXTERN int cw_task_send(cw_task *task, const char *exchange, const char *routing_key,
                           const char *type, const void *body, size_t len);

#ifdef __cplusplus
}
#endif
#endif
