/* The pool: a supervisor process, its worker processes, and a monitor
 * process serving metrics and health.
 *
 *   compworker run  (supervisor: forks, reaps, restarts; single-threaded)
 *     ├── worker 1   (loads the plugins, consumes; framework/worker.c)
 *     ├── worker N
 *     └── monitor    (/metrics and /healthz, queue depths, crash-loop alerts)
 *
 * The supervisor maps the shared metrics (framework/metrics.h) before it
 * forks anything, and never runs a thread, third-party code or network I/O
 * of its own: forking from a process with threads is how locks end up held
 * forever in a child. Everything that needs threads (libmicrohttpd, the
 * alerter, AMQP) runs in the monitor, a child like the workers.
 *
 * Plugins are loaded in each worker, after the fork: a plugin's init may
 * open files, sockets, database handles or start threads, none of which
 * survive a fork; a plugin that crashes (even in its init) takes down one
 * worker; and a rolling restart (SIGHUP) picks up new plugin builds. */
#ifndef CW_WORKERS_POOL_H
#define CW_WORKERS_POOL_H

#include <sys/types.h>

#include "framework/config.h"
#include "framework/metrics.h"

/* How `compworker run` was started, to read the configuration again on
 * SIGHUP with the same overrides. */
typedef struct cw_pool_opts {
    const char *config_path;
    const char *workers_flag;     /* --workers, or NULL */
    const char *concurrency_flag; /* --concurrency, or NULL */
    const char *level_flag;       /* --log-level, or NULL */
} cw_pool_opts;

/* Loads `opts->config_path` with the environment and the flags applied
 * (every error one line, in cw_error_last()). Free with cw_config_free(). */
int cw_pool_config_load(cw_config **out, const cw_pool_opts *opts);

/* Runs the pool until SIGTERM or SIGINT; takes `cfg` over. Returns the exit
 * code: 0 after a signal-driven stop; 1 or 2 when the first workers could
 * not start (their reason logged): the broker refused the topology or the
 * store failed (1), a plugin or the configuration is bad (2). */
int cw_pool_run(cw_config *cfg, const cw_pool_opts *opts);

/* In a forked worker process: loads the plugins, opens the store, counts
 * into slot `slot` of `m`, consumes until SIGTERM/SIGINT. Returns its exit
 * code (cli.h); a handler past handler_timeout ends it with 3. */
int cw_pool_worker_main(const cw_config *cfg, cw_metrics *m, int slot);

/* In the forked monitor process: serves [pool] metrics_listen, polls the
 * queue depths, posts crash-loop alerts, until SIGTERM or until
 * `supervisor` is gone. Returns 0, or 2 when it cannot listen. */
int cw_pool_monitor_main(const cw_config *cfg, cw_metrics *m, pid_t supervisor);

/* Whether the configuration needs a monitor process. */
int cw_pool_monitor_needed(const cw_config *cfg);

#endif
