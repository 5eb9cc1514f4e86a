/* The pool supervisor: keeps [pool] workers worker processes and a monitor
 * alive, restarts what dies (with backoff, and an alert when it keeps
 * dying), stops gracefully on SIGTERM/SIGINT and rolls the workers over to a
 * new configuration on SIGHUP. See pool.h.
 *
 * One thread, one loop: signals are blocked and taken with sigtimedwait(),
 * children are reaped by PID (never waitpid(-1): the alert command of a
 * worker or of the monitor is theirs to reap, not ours). */
#include <errno.h>
#if defined(__SANITIZE_ADDRESS__)
#include <sanitizer/lsan_interface.h>
#endif
#include <signal.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "framework/broker.h"
#include "framework/clock.h"
#include "framework/error.h"
#include "framework/log.h"
#include "framework/owner.h"
#include "workers/cli.h"
#include "workers/notify.h"
#include "workers/pool.h"

#define TICK_MS 200
#define RESTART_MIN_MS 250         /* the first restart of a worker waits up to this */
#define RESTART_MAX_MS 30000       /* the longest wait between restarts */
#define STABLE_MS 10000            /* a worker up this long had no trouble: backoff resets */
#define CRASH_LOOP_DEATHS 5        /* this many unrequested exits... */
#define CRASH_LOOP_WINDOW_MS 60000 /* ...within this window is a crash loop */
#define START_STAGGER_MS 10000     /* a worker loading its plugins holds back the next one */
#define ROLL_CONNECT_WAIT_MS                                                                       \
    30000 /* a new worker not connected by then is taken as up
                                    * (the broker may be down for every worker) */
#define MONITOR_STOP_MS 3000

typedef struct member {
    pid_t pid;      /* 0: entry unused */
    int slot;       /* metrics slot */
    unsigned index; /* worker number, 1..workers */
    unsigned gen;   /* configuration generation it runs */
    int64_t started_ms;
    int64_t kill_at; /* stopping: SIGKILL past this */
    bool stopping;   /* asked to stop: its exit is expected */
    bool ever_ready; /* its slot reached READY */
} member;

typedef struct restart_state {
    unsigned fails;     /* consecutive short-lived runs */
    int64_t restart_at; /* not before */
    bool pending;       /* the next start of this index is a restart */
} restart_state;

typedef struct pool {
    cw_config *cfg; /* committed configuration */
    const cw_pool_opts *opts;
    cw_metrics *m;
    pid_t self;
    char id[128];
    unsigned gen; /* generation of cfg */

    member w[CW_METRICS_SLOTS];
    restart_state rs[CW_POOL_MAX_WORKERS + 1];

    pid_t monitor;
    int64_t monitor_started_ms, monitor_restart_at, monitor_kill_at;
    unsigned monitor_fails;
    bool monitor_ready_once;

    int64_t deaths[CRASH_LOOP_DEATHS]; /* ring of unrequested exit times */
    unsigned n_deaths;
    int64_t last_crash_loop_ms;

    bool up_once;    /* every worker reached READY once */
    bool ready_sent; /* READY=1 sent for the current generation */
    bool stopping;
    int exit_code;
    int64_t stop_deadline;

    struct {
        bool active;
        cw_config *next; /* not yet committed: NULL once committed */
        unsigned gen;
        member *fresh; /* the new worker coming up */
        member *old;   /* the worker it replaces */
        int64_t fresh_since;
        bool waiting_old;
    } roll;
} pool;

/* ---- small things --------------------------------------------------------- */

/* "exited with code 3 (handler timeout)" / "killed by SIGSEGV" */
static void describe_status(int st, char *out, size_t cap)
{
    if (WIFEXITED(st)) {
        int code = WEXITSTATUS(st);
        const char *why = code == CW_EXIT_HANDLER_TIMEOUT ? " (a handler ran past handler_timeout)"
                          : code == CW_EXIT_USAGE         ? " (bad configuration or plugin)"
                          : code == CW_EXIT_FAILURE       ? " (broker refused or store failed)"
                                                          : "";
        snprintf(out, cap, "exited with code %d%s", code, why);
    } else if (WIFSIGNALED(st)) {
        const char *abbrev = sigabbrev_np(WTERMSIG(st));
        if (abbrev)
            snprintf(out, cap, "killed by SIG%s", abbrev);
        else
            snprintf(out, cap, "killed by signal %d", WTERMSIG(st));
    } else {
        snprintf(out, cap, "ended (status 0x%x)", (unsigned)st);
    }
}

static int64_t jittered(int64_t d)
{
    /* Equal jitter: d/2 plus a random half, so restarts of several workers
     * spread out but never come sooner than half the backoff. */
    return d / 2 + (int64_t)((uint64_t)random() % (uint64_t)(d / 2 + 1));
}

static void block_signals(sigset_t *set)
{
    sigemptyset(set);
    sigaddset(set, SIGTERM);
    sigaddset(set, SIGINT);
    sigaddset(set, SIGHUP);
    sigaddset(set, SIGCHLD);
    sigprocmask(SIG_BLOCK, set, NULL);
}

/* In a new child: dies with the supervisor (SIGTERM, so a worker still
 * settles its batch), and runs with the signal mask it had before us. */
static void child_begin(pid_t parent)
{
    prctl(PR_SET_PDEATHSIG, SIGTERM);
    if (getppid() != parent) /* the supervisor died before prctl */
        _exit(CW_EXIT_OK);
    struct sigaction dfl;
    memset(&dfl, 0, sizeof dfl);
    dfl.sa_handler = SIG_DFL;
    sigaction(SIGCHLD, &dfl, NULL);
}

static unsigned live_count(const pool *p, unsigned index, bool include_stopping)
{
    unsigned n = 0;
    for (int i = 0; i < CW_METRICS_SLOTS; i++) {
        const member *mb = &p->w[i];
        if (mb->pid && (index == 0 || mb->index == index) && (include_stopping || !mb->stopping))
            n++;
    }
    return n;
}

static void update_gauges(pool *p)
{
    atomic_store(&p->m->workers_alive, live_count(p, 0, true));
    atomic_store(&p->m->workers_desired, p->stopping ? 0 : p->cfg->workers);
}

static void status_line(pool *p, char *out, size_t cap)
{
    unsigned connected = 0;
    for (int i = 0; i < CW_METRICS_SLOTS; i++) {
        if (p->w[i].pid && atomic_load(&p->m->slots[p->w[i].slot].connected))
            connected++;
    }
    snprintf(out, cap, "%u of %u workers running, %u connected", live_count(p, 0, false),
             p->cfg->workers, connected);
}

/* ---- starting and stopping ------------------------------------------------ */

static member *spawn(pool *p, unsigned index, const cw_config *cfg, unsigned gen)
{
    member *mb = NULL;
    for (int i = 0; i < CW_METRICS_SLOTS && !mb; i++) {
        if (!p->w[i].pid)
            mb = &p->w[i];
    }
    int slot = mb ? cw_metrics_slot_take(p->m) : -1;
    if (slot < 0) {
        cw_log_error(NULL, "no free process slot for worker %u (at most %d processes)", index,
                     CW_METRICS_SLOTS);
        return NULL;
    }
    fflush(NULL);
    pid_t pid = fork();
    if (pid < 0) {
        cw_log_error(NULL, "cannot fork worker %u: %s", index, strerror(errno));
        cw_metrics_slot_release(p->m, slot);
        return NULL;
    }
    if (pid == 0) {
        child_begin(p->self);
        int code = cw_pool_worker_main(cfg, p->m, slot);
#if defined(__SANITIZE_ADDRESS__)
        __lsan_do_leak_check();
#endif
        _exit(code);
    }
    atomic_store(&p->m->slots[slot].pid, pid);
    memset(mb, 0, sizeof *mb);
    mb->pid = pid;
    mb->slot = slot;
    mb->index = index;
    mb->gen = gen;
    mb->started_ms = cw__mono_ms();
    if (p->rs[index].pending) {
        atomic_fetch_add(&p->m->restarts, 1);
        p->rs[index].pending = false;
    }
    cw_log_info(NULL, "worker %u started (pid %ld)", index, (long)pid);
    update_gauges(p);
    return mb;
}

static void stop_member(pool *p, member *mb, const char *why)
{
    if (!mb->pid || mb->stopping)
        return;
    mb->stopping = true;
    mb->kill_at = cw__mono_ms() + p->cfg->shutdown_timeout_ms;
    atomic_store(&p->m->slots[mb->slot].state, CW_SLOT_STOPPING);
    cw_log_info(NULL, "stopping worker %u (pid %ld): %s", mb->index, (long)mb->pid, why);
    kill(mb->pid, SIGTERM);
}

static void spawn_monitor(pool *p)
{
    fflush(NULL);
    pid_t pid = fork();
    if (pid < 0) {
        cw_log_error(NULL, "cannot fork the monitor: %s", strerror(errno));
        p->monitor_restart_at = cw__mono_ms() + RESTART_MAX_MS;
        return;
    }
    if (pid == 0) {
        child_begin(p->self);
        _exit(cw_pool_monitor_main(p->cfg, p->m, p->self));
    }
    p->monitor = pid;
    p->monitor_started_ms = cw__mono_ms();
    p->monitor_kill_at = 0;
}

static void stop_monitor(pool *p)
{
    if (p->monitor && !p->monitor_kill_at) {
        kill(p->monitor, SIGTERM);
        p->monitor_kill_at = cw__mono_ms() + MONITOR_STOP_MS;
    }
}

static void begin_shutdown(pool *p, int code, const char *why)
{
    if (p->stopping)
        return;
    p->stopping = true;
    p->exit_code = code;
    p->stop_deadline = cw__mono_ms() + p->cfg->shutdown_timeout_ms;
    cw_notify_stopping();
    char d[32];
    snprintf(d, sizeof d, "%lld ms", (long long)p->cfg->shutdown_timeout_ms);
    cw_log_info(NULL, "%s: stopping %u worker(s); in-flight tasks settle within %s", why,
                live_count(p, 0, true), d);
    if (p->roll.active) {
        cw_config_free(p->roll.next);
        memset(&p->roll, 0, sizeof p->roll);
    }
    for (int i = 0; i < CW_METRICS_SLOTS; i++) {
        member *mb = &p->w[i];
        if (mb->pid) {
            if (!mb->stopping)
                stop_member(p, mb, why);
            mb->kill_at = p->stop_deadline;
        }
    }
    update_gauges(p);
}

/* ---- crash loops ---------------------------------------------------------- */

static void note_death(pool *p, const member *mb, const char *what, int64_t uptime)
{
    int64_t t = cw__mono_ms();
    p->deaths[p->n_deaths++ % CRASH_LOOP_DEATHS] = t;
    if (p->n_deaths < CRASH_LOOP_DEATHS)
        return;
    int64_t oldest = p->deaths[p->n_deaths % CRASH_LOOP_DEATHS];
    if (t - oldest > CRASH_LOOP_WINDOW_MS)
        return;
    if (p->last_crash_loop_ms && t - p->last_crash_loop_ms < CRASH_LOOP_WINDOW_MS)
        return; /* one report per window */
    p->last_crash_loop_ms = t;
    atomic_fetch_add(&p->m->crash_loops, 1);
    char reason[sizeof p->m->alert_reason];
    snprintf(reason, sizeof reason,
             "crash loop: %d worker exits within %lld s; the last: worker %u (pid %ld) %s "
             "after %lld ms; restarts back off up to %d s",
             CRASH_LOOP_DEATHS, (long long)((t - oldest + 999) / 1000), mb->index, (long)mb->pid,
             what, (long long)uptime, RESTART_MAX_MS / 1000);
    cw_log_error(NULL, "%s", reason);
    /* Handed to the monitor, which runs the alert hooks. */
    memcpy(p->m->alert_reason, reason, sizeof reason);
    atomic_fetch_add(&p->m->alert_seq, 1);
}

/* ---- reaping -------------------------------------------------------------- */

static void roll_abandon(pool *p, const char *why)
{
    cw_log_error(NULL, "rolling restart abandoned: %s; the workers keep the %s configuration", why,
                 p->roll.next ? "previous" : "new");
    cw_config_free(p->roll.next);
    memset(&p->roll, 0, sizeof p->roll);
    cw_notify_ready("rolling restart abandoned");
}

static void member_exited(pool *p, member *mb, int st)
{
    char what[128];
    describe_status(st, what, sizeof what);
    int64_t uptime = cw__mono_ms() - mb->started_ms;
    if (atomic_load(&p->m->slots[mb->slot].state) >= CW_SLOT_READY)
        mb->ever_ready = true;
    cw_metrics_slot_release(p->m, mb->slot);
    member gone = *mb;
    memset(mb, 0, sizeof *mb);
    update_gauges(p);

    if (p->roll.active && p->roll.old == mb) {
        p->roll.old = NULL;
        p->roll.waiting_old = false;
    }
    if (gone.stopping) {
        cw_log_info(NULL, "worker %u (pid %ld) has stopped (%s)", gone.index, (long)gone.pid, what);
        return;
    }
    if (p->roll.active && p->roll.fresh == mb) {
        p->roll.fresh = NULL;
        char why[300];
        snprintf(why, sizeof why, "the new worker %u (pid %ld) %s before it was up", gone.index,
                 (long)gone.pid, what);
        roll_abandon(p, why);
        return;
    }
    int code = WIFEXITED(st) ? WEXITSTATUS(st) : -1;
    if (!p->up_once && !gone.ever_ready && (code == CW_EXIT_USAGE || code == CW_EXIT_FAILURE)) {
        cw_log_error(NULL, "worker %u (pid %ld) could not start: %s; stopping the pool", gone.index,
                     (long)gone.pid, what);
        begin_shutdown(p, code, "a worker could not start");
        return;
    }
    if (p->stopping)
        return;
    restart_state *rs = &p->rs[gone.index];
    if (uptime >= STABLE_MS)
        rs->fails = 0;
    int64_t d = RESTART_MIN_MS;
    for (unsigned i = 0; i < rs->fails && d < RESTART_MAX_MS; i++)
        d *= 2;
    if (d > RESTART_MAX_MS)
        d = RESTART_MAX_MS;
    d = jittered(d);
    rs->fails++;
    rs->restart_at = cw__mono_ms() + d;
    rs->pending = gone.index <= p->cfg->workers;
    if (rs->pending)
        cw_log_warn(NULL, "worker %u (pid %ld) %s after %lld ms; restarting in %lld ms", gone.index,
                    (long)gone.pid, what, (long long)uptime, (long long)d);
    else
        cw_log_warn(NULL, "worker %u (pid %ld) %s after %lld ms", gone.index, (long)gone.pid, what,
                    (long long)uptime);
    note_death(p, &gone, what, uptime);
}

static void monitor_exited(pool *p, int st)
{
    char what[128];
    describe_status(st, what, sizeof what);
    bool asked = p->monitor_kill_at != 0;
    int64_t uptime = cw__mono_ms() - p->monitor_started_ms;
    p->monitor = 0;
    p->monitor_kill_at = 0;
    if (asked || p->stopping)
        return;
    int code = WIFEXITED(st) ? WEXITSTATUS(st) : -1;
    if (!p->monitor_ready_once && code == CW_EXIT_USAGE && !p->up_once) {
        cw_log_error(NULL, "the monitor could not start: %s; stopping the pool", what);
        begin_shutdown(p, CW_EXIT_USAGE, "the monitor could not start");
        return;
    }
    if (uptime >= STABLE_MS)
        p->monitor_fails = 0;
    int64_t d = RESTART_MIN_MS << (p->monitor_fails < 7 ? p->monitor_fails : 7);
    if (d > RESTART_MAX_MS)
        d = RESTART_MAX_MS;
    p->monitor_fails++;
    p->monitor_restart_at = cw__mono_ms() + jittered(d);
    cw_log_warn(NULL, "the monitor (metrics, health, alerts) %s; restarting it", what);
}

static void reap(pool *p)
{
    int st;
    for (int i = 0; i < CW_METRICS_SLOTS; i++) {
        member *mb = &p->w[i];
        if (!mb->pid)
            continue;
        pid_t r = waitpid(mb->pid, &st, WNOHANG);
        if (r == mb->pid)
            member_exited(p, mb, st);
    }
    if (p->monitor && waitpid(p->monitor, &st, WNOHANG) == p->monitor)
        monitor_exited(p, st);
}

/* ---- reloading ------------------------------------------------------------ */

static void apply_logging(const cw_config *cfg)
{
    cw__log_set_level(cfg->log_level);
    cw__log_set_format(cfg->log_format);
}

static void reload(pool *p)
{
    cw_config *next = NULL;
    if (p->stopping)
        return;
    if (cw_pool_config_load(&next, p->opts)) {
        cw_log_error(NULL, "SIGHUP: the configuration is not valid, keeping the running one: %s",
                     cw_error_last());
        return;
    }
    if (next->n_plugins == 0) {
        cw_log_error(NULL, "SIGHUP: %s: [pool] plugins is empty, keeping the running configuration",
                     next->path);
        cw_config_free(next);
        return;
    }
    if (p->roll.active) {
        /* A newer file replaces the one being rolled in: start over with it. */
        if (p->roll.fresh)
            stop_member(p, p->roll.fresh, "superseded by a newer SIGHUP");
        cw_config_free(p->roll.next);
        memset(&p->roll, 0, sizeof p->roll);
    }
    apply_logging(next);
    cw_notify_reloading();
    p->roll.active = true;
    p->roll.next = next;
    p->roll.gen = p->gen + 1;
    cw_log_info(NULL, "SIGHUP: configuration read again; replacing %u worker(s) one by one",
                live_count(p, 0, false));
}

static bool str_same(const char *a, const char *b)
{
    return (!a && !b) || (a && b && strcmp(a, b) == 0);
}

/* Whether the monitor of `a` would do what the monitor of `b` does. */
static bool monitor_same(const cw_config *a, const cw_config *b)
{
    bool same = str_same(a->metrics_listen, b->metrics_listen) && str_same(a->name, b->name) &&
                str_same(a->queue, b->queue) && str_same(a->dlq, b->dlq) &&
                str_same(a->url, b->url) && str_same(a->tls.ca_file, b->tls.ca_file) &&
                str_same(a->tls.cert_file, b->tls.cert_file) &&
                str_same(a->tls.key_file, b->tls.key_file) &&
                a->tls.verify_peer == b->tls.verify_peer &&
                a->tls.verify_hostname == b->tls.verify_hostname &&
                str_same(a->alert.webhook_url, b->alert.webhook_url) &&
                a->alert.timeout_ms == b->alert.timeout_ms &&
                a->alert.webhook_retries == b->alert.webhook_retries &&
                a->alert.rate_limit_ms == b->alert.rate_limit_ms && a->log_level == b->log_level &&
                a->log_format == b->log_format && a->saga_plans == b->saga_plans;
    char **x = a->alert.command_argv, **y = b->alert.command_argv;
    for (; same && x && y && *x && *y; x++, y++)
        same = strcmp(*x, *y) == 0;
    return same && (x == NULL) == (y == NULL) && (!x || (!*x && !*y));
}

/* Makes the rolled-in configuration the running one. */
static void roll_commit(pool *p)
{
    if (!p->roll.next)
        return;
    bool restart_monitor = !monitor_same(p->cfg, p->roll.next);
    cw_config_free(p->cfg);
    p->cfg = p->roll.next;
    p->roll.next = NULL;
    p->gen = p->roll.gen;
    update_gauges(p);
    /* The monitor serves what its configuration says: when that changed,
     * start it again (the loop does, without delay). */
    if (restart_monitor) {
        p->monitor_restart_at = 0;
        p->monitor_fails = 0;
        if (p->monitor)
            stop_monitor(p);
    }
}

static void roll_step(pool *p)
{
    if (!p->roll.active || p->stopping)
        return;
    int64_t t = cw__mono_ms();
    if (p->roll.waiting_old)
        return; /* member_exited clears it */
    if (p->roll.fresh) {
        member *f = p->roll.fresh;
        cw_metrics_slot *s = &p->m->slots[f->slot];
        bool ready = atomic_load(&s->state) >= CW_SLOT_READY;
        bool connected = atomic_load(&s->connected) != 0;
        if (!ready || (!connected && t - p->roll.fresh_since < ROLL_CONNECT_WAIT_MS))
            return;
        f->ever_ready = true;
        roll_commit(p);
        p->roll.fresh = NULL;
        if (p->roll.old && p->roll.old->pid) {
            stop_member(p, p->roll.old, "replaced by a worker with the new configuration");
            p->roll.waiting_old = true;
        }
        return;
    }
    /* The next worker still on an older configuration. */
    const cw_config *cfg = p->roll.next ? p->roll.next : p->cfg;
    for (int i = 0; i < CW_METRICS_SLOTS; i++) {
        member *mb = &p->w[i];
        if (!mb->pid || mb->stopping || mb->gen >= p->roll.gen)
            continue;
        if (mb->index > cfg->workers)
            continue; /* stopped by scale_to() */
        p->roll.old = mb;
        p->roll.fresh = spawn(p, mb->index, cfg, p->roll.gen);
        p->roll.fresh_since = t;
        if (!p->roll.fresh)
            roll_abandon(p, "cannot start a new worker");
        return;
    }
    roll_commit(p);
    p->roll.active = false;
    char st[160];
    status_line(p, st, sizeof st);
    cw_log_info(NULL, "rolling restart done: %s", st);
    cw_notify_ready(st);
}

/* ---- the loop ------------------------------------------------------------- */

/* Starts what is missing, stops what is past the desired count. */
static void scale_to(pool *p)
{
    int64_t t = cw__mono_ms();
    unsigned want = p->cfg->workers;
    for (int i = 0; i < CW_METRICS_SLOTS; i++) {
        member *mb = &p->w[i];
        if (mb->pid && !mb->stopping && mb->index > want)
            stop_member(p, mb, "[pool] workers is lower now");
    }
    /* Workers start one after the other: one still loading its plugins and
     * opening the store holds back the next (for a while). */
    for (int i = 0; i < CW_METRICS_SLOTS; i++) {
        const member *mb = &p->w[i];
        if (mb->pid && atomic_load(&p->m->slots[mb->slot].state) == CW_SLOT_STARTING &&
            t - mb->started_ms < START_STAGGER_MS)
            return;
    }
    for (unsigned idx = 1; idx <= want; idx++) {
        if (live_count(p, idx, false) > 0 || t < p->rs[idx].restart_at)
            continue;
        spawn(p, idx, p->cfg, p->gen);
        return;
    }
}

static void check_ready(pool *p)
{
    unsigned ready = 0;
    for (int i = 0; i < CW_METRICS_SLOTS; i++) {
        member *mb = &p->w[i];
        if (mb->pid && !mb->stopping &&
            atomic_load(&p->m->slots[mb->slot].state) >= CW_SLOT_READY) {
            mb->ever_ready = true;
            ready++;
        }
    }
    if (!p->up_once && ready >= p->cfg->workers) {
        p->up_once = true;
        char st[160];
        status_line(p, st, sizeof st);
        cw_log_info(NULL, "pool %s up: %u worker(s) running", p->cfg->name, ready);
        cw_notify_ready(st);
        p->ready_sent = true;
    }
}

static void kill_overdue(pool *p)
{
    int64_t t = cw__mono_ms();
    for (int i = 0; i < CW_METRICS_SLOTS; i++) {
        member *mb = &p->w[i];
        if (mb->pid && mb->stopping && mb->kill_at && t >= mb->kill_at) {
            cw_log_warn(NULL,
                        "worker %u (pid %ld) did not stop within shutdown_timeout (%lld ms): "
                        "killed; the broker redelivers what it had not acknowledged",
                        mb->index, (long)mb->pid, (long long)p->cfg->shutdown_timeout_ms);
            kill(mb->pid, SIGKILL);
            mb->kill_at = 0;
        }
    }
    if (p->monitor && p->monitor_kill_at && t >= p->monitor_kill_at) {
        kill(p->monitor, SIGKILL);
        p->monitor_kill_at = t + 60000; /* reaped soon; never killed twice in a row */
    }
}

static void on_signal(pool *p, int sig)
{
    switch (sig) {
    case SIGTERM:
    case SIGINT: begin_shutdown(p, CW_EXIT_OK, sig == SIGTERM ? "SIGTERM" : "SIGINT"); break;
    case SIGHUP: reload(p); break;
    default: /* SIGCHLD: reaped below */ break;
    }
}

int cw_pool_monitor_needed(const cw_config *cfg)
{
    /* A pool with a SQLite store watches its queue for consumers of other
     * hosts (see the monitor); one that runs saga plans, their deadlines. */
    return cfg->metrics_listen || cfg->alert.command_argv || cfg->alert.webhook_url ||
           cfg->store_backend == CW_STORE_SQLITE || cfg->saga_plans;
}

int cw_pool_run(cw_config *cfg, const cw_pool_opts *opts)
{
    pool *p = calloc(1, sizeof *p);
    if (!p) {
        cw_config_free(cfg);
        return cw_cli_fail(CW_EXIT_FAILURE, "out of memory starting the pool");
    }
    p->cfg = cfg;
    p->opts = opts;
    p->self = getpid();
    srandom((unsigned)(p->self ^ cw__mono_ms()));
    cw__owner_self(p->id, sizeof p->id);
    cw__log_set_worker(p->id);
    cw__log_set_role("supervisor");
    apply_logging(cfg);

    if (cw_metrics_new(&p->m)) {
        int rc = cw_cli_fail(CW_EXIT_FAILURE, "%s", cw_error_last());
        cw_config_free(cfg);
        free(p);
        return rc;
    }
    sigset_t set;
    block_signals(&set);
    update_gauges(p);
    atomic_store(&p->m->supervisor_beat_ms, cw__mono_ms());
    cw_log_info(NULL, "supervisor of pool %s: %u worker(s), queue %s%s%s", cfg->name, cfg->workers,
                cfg->queue, cfg->metrics_listen ? ", metrics at " : "",
                cfg->metrics_listen ? cfg->metrics_listen : "");

    for (;;) {
        siginfo_t si;
        struct timespec tick = {.tv_sec = 0, .tv_nsec = TICK_MS * 1000000L};
        int sig = sigtimedwait(&set, &si, &tick);
        if (sig > 0)
            on_signal(p, sig);
        /* Take every signal already pending before going on. */
        struct timespec zero = {0, 0};
        while ((sig = sigtimedwait(&set, &si, &zero)) > 0)
            on_signal(p, sig);

        reap(p);
        atomic_store(&p->m->supervisor_beat_ms, cw__mono_ms());
        kill_overdue(p);
        if (p->stopping) {
            if (live_count(p, 0, true) == 0) {
                if (!p->monitor)
                    break;
                stop_monitor(p);
            }
            continue;
        }
        check_ready(p);
        roll_step(p);
        if (!p->stopping)
            scale_to(p);
        if (!p->monitor && cw_pool_monitor_needed(p->cfg) &&
            cw__mono_ms() >= p->monitor_restart_at && !p->stopping)
            spawn_monitor(p);
        if (p->monitor && !p->monitor_ready_once && cw__mono_ms() - p->monitor_started_ms > 2000)
            p->monitor_ready_once = true;
    }
    int code = p->exit_code;
    cw_log_info(NULL, "pool %s stopped (exit code %d)", p->cfg->name, code);
    cw_metrics_free(p->m);
    cw_config_free(p->cfg);
    cw_config_free(p->roll.next);
    free(p);
    return code;
}

int cw_pool_config_load(cw_config **out, const cw_pool_opts *opts)
{
    cw_config *cfg = NULL;
    int rc = cw_config_load(&cfg, opts->config_path);
    if (rc)
        return rc;
    if (opts->workers_flag && (rc = cw_config_override(cfg, "pool", "workers", opts->workers_flag,
                                                       CW_ORIGIN_FLAG, "--workers")))
        goto out_free;
    if (opts->concurrency_flag &&
        (rc = cw_config_override(cfg, "pool", "concurrency", opts->concurrency_flag, CW_ORIGIN_FLAG,
                                 "--concurrency")))
        goto out_free;
    if (opts->level_flag && (rc = cw_config_override(cfg, "log", "level", opts->level_flag,
                                                     CW_ORIGIN_FLAG, "--log-level")))
        goto out_free;
    *out = cfg;
    return 0;

out_free:
    cw_config_free(cfg);
    return rc;
}
