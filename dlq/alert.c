/* Alert hooks: a bounded queue filled by the consume path and one thread that
 * rate-limits, builds the JSON document and runs the callbacks, the command
 * and the webhook. See alert.h for the contract and the document. */
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <spawn.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <curl/curl.h>
#include <json-c/json.h>

#include "compworker/status.h"
#include "compworker/version.h"
#include "dlq/alert.h"
#include "dlq/deadletter.h"
#include "framework/clock.h"
#include "framework/error.h"
#include "framework/log.h"
#include "framework/url.h"

#define CW_ALERT_DEFAULT_TIMEOUT_MS 10000
#define CW_ALERT_MAX_TIMEOUT_MS (24 * 3600 * 1000LL)
#define CW_ALERT_CHECK_MS 1000        /* windows are checked at least this often */
#define CW_ALERT_BACKOFF_MS 250
#define CW_ALERT_BACKOFF_MAX_MS 8000
#define CW_ALERT_STDERR_KEEP 200
#define CW_ALERT_POLL_MS 10

/* One queued failure; its strings live in the same allocation. */
typedef struct alert_item {
    struct alert_item *next;
    cw_alert_event ev;
} alert_item;

/* A (type, error class) with an open rate-limit window (or held-back
 * overflow). Only open windows are kept. */
typedef struct alert_group {
    struct alert_group *next;
    char *type;        /* NULL allowed */
    char *error_class; /* NULL allowed */
    int64_t window_end; /* monotonic ms */
    int64_t window_ms;
    unsigned long held;
    int64_t first_held_at; /* ms since the epoch */
    int64_t last_held_at;
} alert_group;

typedef struct alert_callback {
    cw__alert_cb fn;
    void *user_data;
    char *owner;
} alert_callback;

struct cw_alerter {
    cw_alert_config cfg; /* deep copy */
    alert_callback *cbs;
    size_t n_cbs;

    /* Set before the thread starts, then read-only. */
    bool started;
    bool running; /* the thread exists */
    pthread_t thread;
    CURL *curl; /* the thread's */
    struct curl_slist *headers;
    char curl_err[CURL_ERROR_SIZE];
    char webhook_label[256]; /* scheme://host:port, nothing secret */

    /* Under `mu`. */
    pthread_mutex_t mu;
    pthread_cond_t cv; /* CLOCK_MONOTONIC: work queued, stop asked */
    alert_item *head, *tail;
    size_t queued;
    alert_group *groups;
    bool stop;
    bool finished;    /* the thread left its loop */
    bool abandoned;   /* cw_alerter_free() gave up: the thread frees */
    bool overflowing; /* in an overflow episode */
    unsigned long overflow_held; /* held back in this episode */
    unsigned long lost;          /* not even counted (out of memory) */

    /* Monotonic ms past which the thread stops working; INT64_MAX until
     * cw_alerter_free(). Read without the lock by the hooks. */
    _Atomic int64_t deadline;
};

/* ---- time ---------------------------------------------------------------- */

static int64_t min64(int64_t a, int64_t b)
{
    return a < b ? a : b;
}

static bool past_deadline(cw_alerter *a)
{
    return cw__mono_ms() >= atomic_load(&a->deadline);
}

/* Waits on the condition variable until `until_ms` (monotonic) or a signal. */
static void wait_locked(cw_alerter *a, int64_t until_ms)
{
    struct timespec ts = cw__mono_timespec(until_ms);
    pthread_cond_timedwait(&a->cv, &a->mu, &ts);
}

/* Sleeps `ms`, cut short by the shutdown deadline. */
static void sleep_ms(cw_alerter *a, int64_t ms)
{
    int64_t until = cw__mono_ms() + ms;
    pthread_mutex_lock(&a->mu);
    for (;;) {
        int64_t end = min64(until, atomic_load(&a->deadline));
        if (cw__mono_ms() >= end)
            break;
        wait_locked(a, end);
    }
    pthread_mutex_unlock(&a->mu);
}

/* ---- the configuration and the alerter ------------------------------------ */

static void free_argv(char **argv)
{
    if (!argv)
        return;
    for (char **p = argv; *p; p++)
        free(*p);
    free(argv);
}

static int copy_config(cw_alert_config *dst, const cw_alert_config *src)
{
    dst->timeout_ms = CW_ALERT_DEFAULT_TIMEOUT_MS;
    if (!src)
        return 0;
    if (src->timeout_ms > 0)
        dst->timeout_ms = min64(src->timeout_ms, CW_ALERT_MAX_TIMEOUT_MS);
    dst->webhook_retries = src->webhook_retries;
    dst->rate_limit_ms = src->rate_limit_ms > 0 ? src->rate_limit_ms : 0;
    if (src->command_argv && src->command_argv[0]) {
        if (src->command_argv[0][0] != '/')
            return cw__error(CW_STATUS_INVALID_ARG,
                             "[alert] command: '%s' is not an absolute path",
                             src->command_argv[0]);
        size_t n = 0;
        while (src->command_argv[n])
            n++;
        dst->command_argv = calloc(n + 1, sizeof *dst->command_argv);
        if (!dst->command_argv)
            return CW_STATUS_NOMEM;
        for (size_t i = 0; i < n; i++)
            if (!(dst->command_argv[i] = strdup(src->command_argv[i])))
                return CW_STATUS_NOMEM;
    }
    if (src->webhook_url && src->webhook_url[0] &&
        !(dst->webhook_url = strdup(src->webhook_url)))
        return CW_STATUS_NOMEM;
    return 0;
}

static void free_item_list(alert_item *it)
{
    while (it) {
        alert_item *next = it->next;
        free(it);
        it = next;
    }
}

static void free_group(alert_group *g)
{
    free(g->type);
    free(g->error_class);
    free(g);
}

/* Frees everything; the thread has ended or is the caller. */
static void alerter_destroy(cw_alerter *a)
{
    if (a->lost)
        cw_log_warn(NULL, "%lu alerts were lost for want of memory", a->lost);
    free_item_list(a->head);
    while (a->groups) {
        alert_group *next = a->groups->next;
        free_group(a->groups);
        a->groups = next;
    }
    for (size_t i = 0; i < a->n_cbs; i++)
        free(a->cbs[i].owner);
    free(a->cbs);
    if (a->curl)
        curl_easy_cleanup(a->curl);
    curl_slist_free_all(a->headers);
    free_argv(a->cfg.command_argv);
    free(a->cfg.webhook_url);
    pthread_cond_destroy(&a->cv);
    pthread_mutex_destroy(&a->mu);
    free(a);
}

int cw_alerter_new(cw_alerter **out, const cw_alert_config *cfg)
{
    *out = NULL;
    cw_alerter *a = calloc(1, sizeof *a);
    if (!a)
        return CW_STATUS_NOMEM;
    atomic_init(&a->deadline, INT64_MAX);
    pthread_condattr_t ca;
    if (pthread_condattr_init(&ca)) {
        free(a);
        return CW_STATUS_NOMEM;
    }
    pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
    int rc = pthread_cond_init(&a->cv, &ca);
    pthread_condattr_destroy(&ca);
    if (rc) {
        free(a);
        return CW_STATUS_NOMEM;
    }
    if (pthread_mutex_init(&a->mu, NULL)) {
        pthread_cond_destroy(&a->cv);
        free(a);
        return CW_STATUS_NOMEM;
    }
    rc = copy_config(&a->cfg, cfg);
    if (rc) {
        alerter_destroy(a);
        return rc;
    }
    *out = a;
    return 0;
}

int cw_alerter_add_callback(cw_alerter *a, cw__alert_cb fn, void *user_data,
                            const char *owner_name)
{
    if (!a || !fn)
        return cw__error(CW_STATUS_INVALID_ARG, "alert callback: no alerter or no function");
    if (a->started)
        return cw__error(CW_STATUS_INVALID_ARG,
                         "alert callback of '%s' registered after the alerter started",
                         owner_name ? owner_name : "?");
    alert_callback *cbs = realloc(a->cbs, (a->n_cbs + 1) * sizeof *cbs);
    if (!cbs)
        return CW_STATUS_NOMEM;
    a->cbs = cbs;
    char *owner = strdup(owner_name ? owner_name : "?");
    if (!owner)
        return CW_STATUS_NOMEM;
    cbs[a->n_cbs++] = (alert_callback){.fn = fn, .user_data = user_data, .owner = owner};
    return 0;
}

bool cw_alerter_has_hooks(const cw_alerter *a)
{
    return a && (a->n_cbs > 0 || a->cfg.command_argv || a->cfg.webhook_url);
}

/* ---- the queue and the rate limit (under `mu`) ----------------------------- */

static size_t str_size(const char *s)
{
    return s ? strlen(s) + 1 : 0;
}

static const char *str_put(char **p, const char *s)
{
    if (!s)
        return NULL;
    size_t n = strlen(s) + 1;
    char *d = memcpy(*p, s, n);
    *p += n;
    return d;
}

/* One allocation holding the event and its strings. */
static alert_item *item_copy(const cw_alert_event *ev, int64_t failed_at_ms)
{
    size_t n = sizeof(alert_item) + str_size(ev->message_id) + str_size(ev->saga_id) +
               str_size(ev->type) + str_size(ev->error_class) + str_size(ev->reason) +
               str_size(ev->queue) + str_size(ev->worker) + str_size(ev->handler);
    alert_item *it = malloc(n);
    if (!it)
        return NULL;
    char *p = (char *)(it + 1);
    it->next = NULL;
    it->ev.message_id = str_put(&p, ev->message_id);
    it->ev.saga_id = str_put(&p, ev->saga_id);
    it->ev.type = str_put(&p, ev->type);
    it->ev.error_class = str_put(&p, ev->error_class);
    it->ev.reason = str_put(&p, ev->reason);
    it->ev.queue = str_put(&p, ev->queue);
    it->ev.worker = str_put(&p, ev->worker);
    it->ev.handler = str_put(&p, ev->handler);
    it->ev.attempts = ev->attempts;
    it->ev.failed_at_ms = failed_at_ms;
    return it;
}

static bool str_eq(const char *x, const char *y)
{
    return x == y || (x && y && strcmp(x, y) == 0);
}

static alert_group *group_find(cw_alerter *a, const char *type, const char *error_class)
{
    for (alert_group *g = a->groups; g; g = g->next)
        if (str_eq(g->type, type) && str_eq(g->error_class, error_class))
            return g;
    return NULL;
}

/* Opens a window for (type, error class). NULL when out of memory. */
static alert_group *group_open(cw_alerter *a, const char *type, const char *error_class,
                               int64_t now, int64_t window_ms)
{
    alert_group *g = calloc(1, sizeof *g);
    if (!g)
        return NULL;
    if ((type && !(g->type = strdup(type))) ||
        (error_class && !(g->error_class = strdup(error_class)))) {
        free_group(g);
        return NULL;
    }
    g->window_ms = window_ms;
    g->window_end = now + window_ms;
    g->next = a->groups;
    a->groups = g;
    return g;
}

static void group_hold(alert_group *g, int64_t failed_at_ms)
{
    if (!g->held++)
        g->first_held_at = failed_at_ms;
    g->last_held_at = failed_at_ms;
}

/* Whether the event goes out now (true) or is held back for the digest. */
static bool admit_locked(cw_alerter *a, const cw_alert_event *ev, int64_t now)
{
    if (a->cfg.rate_limit_ms <= 0)
        return true;
    alert_group *g = group_find(a, ev->type, ev->error_class);
    if (g) { /* due windows were taken out just before: this one is open */
        group_hold(g, ev->failed_at_ms);
        return false;
    }
    group_open(a, ev->type, ev->error_class, now, a->cfg.rate_limit_ms);
    return true; /* also when out of memory: better one alert too many */
}

/* Unlinks the windows that ended by `now` (all of them when `all`); returns
 * those with something held back, frees the others. */
static alert_group *take_due_locked(cw_alerter *a, int64_t now, bool all)
{
    alert_group *due = NULL, **pp = &a->groups;
    while (*pp) {
        alert_group *g = *pp;
        if (!all && g->window_end > now) {
            pp = &g->next;
            continue;
        }
        *pp = g->next;
        if (g->held) {
            g->next = due;
            due = g;
        } else {
            free_group(g);
        }
    }
    return due;
}

static alert_item *pop_locked(cw_alerter *a)
{
    alert_item *it = a->head;
    if (it) {
        a->head = it->next;
        if (!a->head)
            a->tail = NULL;
        a->queued--;
        it->next = NULL;
    }
    return it;
}

/* When the thread must look at the windows again. */
static int64_t next_wake_locked(cw_alerter *a, int64_t now)
{
    int64_t t = now + CW_ALERT_CHECK_MS;
    for (alert_group *g = a->groups; g; g = g->next)
        t = min64(t, g->window_end);
    return t;
}

void cw_alerter_post(cw_alerter *a, const cw_alert_event *ev)
{
    if (!a || !ev || !a->running)
        return;
    int64_t failed_at = ev->failed_at_ms ? ev->failed_at_ms : cw__now_ms();
    alert_item *it = item_copy(ev, failed_at);
    bool began = false, ended = false;
    unsigned long held = 0;

    pthread_mutex_lock(&a->mu);
    if (it && a->queued < CW_ALERT_QUEUE_MAX) {
        if (a->tail)
            a->tail->next = it;
        else
            a->head = it;
        a->tail = it;
        a->queued++;
        it = NULL;
        if (a->overflowing) {
            a->overflowing = false;
            ended = true;
            held = a->overflow_held;
            a->overflow_held = 0;
        }
        pthread_cond_signal(&a->cv);
    } else {
        int64_t now = cw__mono_ms();
        alert_group *g = group_find(a, ev->type, ev->error_class);
        if (!g)
            g = group_open(a, ev->type, ev->error_class, now,
                           a->cfg.rate_limit_ms > 0 ? a->cfg.rate_limit_ms
                                                    : CW_ALERT_OVERFLOW_WINDOW_MS);
        if (g)
            group_hold(g, failed_at);
        else
            a->lost++;
        a->overflow_held++;
        if (!a->overflowing)
            began = a->overflowing = true;
        pthread_cond_signal(&a->cv);
    }
    pthread_mutex_unlock(&a->mu);
    free(it);

    if (began) {
        cw_log_task task = {ev->message_id, ev->saga_id, ev->type};
        cw_log_warn(&task,
                    "alert queue full (%d waiting): further alerts are held back and "
                    "counted in a digest",
                    CW_ALERT_QUEUE_MAX);
    }
    if (ended)
        cw_log_info(NULL, "alert queue has room again; %lu alerts were held back", held);
}

/* ---- the JSON document ---------------------------------------------------- */

/* The length of the valid UTF-8 sequence at `p`, 0 if it is not one. */
static size_t utf8_seq_len(const unsigned char *p)
{
    unsigned c = p[0];
    if (c < 0x80)
        return 1;
    if (c < 0xc2)
        return 0;
    if ((p[1] & 0xc0) != 0x80)
        return 0;
    if (c < 0xe0)
        return 2;
    if ((p[2] & 0xc0) != 0x80)
        return 0;
    if (c < 0xf0) {
        if ((c == 0xe0 && p[1] < 0xa0) || (c == 0xed && p[1] >= 0xa0))
            return 0; /* overlong; surrogate */
        return 3;
    }
    if ((p[3] & 0xc0) != 0x80 || c > 0xf4)
        return 0;
    if ((c == 0xf0 && p[1] < 0x90) || (c == 0xf4 && p[1] >= 0x90))
        return 0; /* overlong; past U+10FFFF */
    return 4;
}

/* A JSON string of `s` with each invalid UTF-8 byte replaced by U+FFFD. */
static json_object *json_str(const char *s)
{
    if (!s)
        return NULL;
    size_t bad = 0, n = 0;
    for (const unsigned char *p = (const unsigned char *)s; *p;) {
        size_t k = utf8_seq_len(p);
        bad += !k;
        p += k ? k : 1;
        n += k ? k : 1;
    }
    if (!bad)
        return json_object_new_string_len(s, (int)n);
    char *clean = malloc(n + bad * 2 + 1);
    if (!clean)
        return NULL;
    size_t len = 0;
    for (const unsigned char *p = (const unsigned char *)s; *p;) {
        size_t k = utf8_seq_len(p);
        if (k) {
            memcpy(clean + len, p, k);
            len += k;
            p += k;
        } else {
            memcpy(clean + len, "\xef\xbf\xbd", 3);
            len += 3;
            p++;
        }
    }
    json_object *o = json_object_new_string_len(clean, (int)len);
    free(clean);
    return o;
}

static json_object *json_time(int64_t ms)
{
    char iso[CW_ISO8601_LEN];
    cw__iso8601(ms, iso);
    return json_object_new_string(iso);
}

/* Renders and frees `o`; NULL when out of memory. Free with free(). */
static char *json_finish(json_object *o)
{
    const char *s = json_object_to_json_string_ext(
        o, JSON_C_TO_STRING_PLAIN | JSON_C_TO_STRING_NOSLASHESCAPE);
    char *copy = s ? strdup(s) : NULL;
    json_object_put(o);
    return copy;
}

static char *alert_json(const cw_alert_event *ev)
{
    json_object *o = json_object_new_object();
    if (!o)
        return NULL;
    json_object_object_add(o, "message_id", json_str(ev->message_id));
    json_object_object_add(o, "saga_id", json_str(ev->saga_id));
    json_object_object_add(o, "type", json_str(ev->type));
    json_object_object_add(o, "error_class", json_str(ev->error_class));
    json_object_object_add(o, "reason", json_str(ev->reason));
    json_object_object_add(o, "attempts", json_object_new_int64(ev->attempts));
    json_object_object_add(o, "queue", json_str(ev->queue));
    json_object_object_add(o, "failed_at", json_time(ev->failed_at_ms));
    json_object_object_add(o, "worker", json_str(ev->worker));
    json_object_object_add(o, "handler", json_str(ev->handler));
    return json_finish(o);
}

static char *digest_json(const alert_group *g)
{
    json_object *o = json_object_new_object();
    if (!o)
        return NULL;
    json_object_object_add(o, "digest", json_object_new_boolean(1));
    json_object_object_add(o, "type", json_str(g->type));
    json_object_object_add(o, "error_class", json_str(g->error_class));
    json_object_object_add(o, "held_back", json_object_new_int64((int64_t)g->held));
    json_object_object_add(o, "window_ms", json_object_new_int64(g->window_ms));
    json_object_object_add(o, "first_held_at", json_time(g->first_held_at));
    json_object_object_add(o, "last_held_at", json_time(g->last_held_at));
    return json_finish(o);
}

/* ---- the command ------------------------------------------------------------ */

static char cw_env_path[] = "PATH=/usr/bin:/bin";
static char cw_env_alert[] = "CW_ALERT=1";

/* Consumes the SIGPIPE a write to a closed pipe left pending on this thread
 * (every signal is blocked here, so it was never delivered). */
static void consume_sigpipe(void)
{
    sigset_t s;
    sigemptyset(&s);
    sigaddset(&s, SIGPIPE);
    struct timespec zero = {0, 0};
    while (sigtimedwait(&s, NULL, &zero) == SIGPIPE)
        ;
}

static void close_fd(int *fd)
{
    if (*fd >= 0)
        close(*fd);
    *fd = -1;
}

/* Reads what is there of the child's stderr, keeping the first bytes. */
static void read_stderr(int *fd, char *keep, size_t *kept)
{
    char buf[4096];
    for (;;) {
        ssize_t r = read(*fd, buf, sizeof buf);
        if (r > 0) {
            size_t n = (size_t)r;
            if (*kept < CW_ALERT_STDERR_KEEP) {
                size_t take = min64((int64_t)n, (int64_t)(CW_ALERT_STDERR_KEEP - *kept));
                memcpy(keep + *kept, buf, take);
                *kept += take;
                keep[*kept] = '\0';
            }
            continue;
        }
        if (r < 0 && errno == EINTR)
            continue;
        if (r == 0 || errno != EAGAIN)
            close_fd(fd);
        return;
    }
}

/* Writes what the pipe takes of json[*off..len); closes it when done or when
 * the command stopped reading. */
static void write_stdin(int *fd, const char *json, size_t len, size_t *off)
{
    while (*off < len) {
        ssize_t w = write(*fd, json + *off, len - *off);
        if (w > 0) {
            *off += (size_t)w;
            continue;
        }
        if (w < 0 && errno == EINTR)
            continue;
        if (w < 0 && errno == EAGAIN)
            return;
        if (w < 0 && errno == EPIPE)
            consume_sigpipe(); /* it need not read its input */
        break;
    }
    close_fd(fd);
}

static void run_command(cw_alerter *a, const char *json, const cw_log_task *task)
{
    char **argv = a->cfg.command_argv;
    const char *path = argv[0];
    int in[2] = {-1, -1}, err[2] = {-1, -1};
    /* posix_spawn reports a failed exec, but not where it must emulate the
     * shared-memory vfork (e.g. under valgrind): say it clearly up front. */
    if (access(path, X_OK) != 0) {
        cw_log_warn(task, "alert hook failed: hook=command %s: cannot run it: %s", path,
                    strerror(errno));
        return;
    }
    if (pipe2(in, O_CLOEXEC) || pipe2(err, O_CLOEXEC)) {
        cw_log_warn(task, "alert hook failed: hook=command %s: cannot create a pipe: %s", path,
                    strerror(errno));
        goto out_close;
    }

    posix_spawn_file_actions_t fa;
    posix_spawnattr_t attr;
    posix_spawn_file_actions_init(&fa);
    posix_spawn_file_actions_adddup2(&fa, in[0], STDIN_FILENO);
    posix_spawn_file_actions_addopen(&fa, STDOUT_FILENO, "/dev/null", O_WRONLY, 0);
    posix_spawn_file_actions_adddup2(&fa, err[1], STDERR_FILENO);
    posix_spawn_file_actions_addclosefrom_np(&fa, STDERR_FILENO + 1);
    posix_spawnattr_init(&attr);
    sigset_t all, none;
    sigfillset(&all);
    sigemptyset(&none);
    posix_spawnattr_setsigdefault(&attr, &all); /* SIGPIPE is ignored in the daemon */
    posix_spawnattr_setsigmask(&attr, &none);   /* and blocked in this thread */
    posix_spawnattr_setpgroup(&attr, 0);        /* killed as a group past the timeout */
    posix_spawnattr_setflags(&attr, POSIX_SPAWN_SETSIGDEF | POSIX_SPAWN_SETSIGMASK |
                                        POSIX_SPAWN_SETPGROUP);
    char *envp[] = {cw_env_path, cw_env_alert, NULL};
    pid_t pid;
    int rc = posix_spawn(&pid, path, &fa, &attr, argv, envp);
    posix_spawn_file_actions_destroy(&fa);
    posix_spawnattr_destroy(&attr);
    close_fd(&in[0]);
    close_fd(&err[1]);
    if (rc) {
        cw_log_warn(task, "alert hook failed: hook=command %s: cannot run it: %s", path,
                    strerror(rc));
        goto out_close;
    }
    fcntl(in[1], F_SETFL, O_NONBLOCK);
    fcntl(err[0], F_SETFL, O_NONBLOCK);

    size_t len = strlen(json), off = 0, kept = 0;
    char errtext[CW_ALERT_STDERR_KEEP + 1] = "";
    int64_t start = cw__mono_ms(), limit = start + a->cfg.timeout_ms;
    int status = 0;
    bool reaped = false, killed = false, at_shutdown = false;
    for (;;) {
        pid_t w = waitpid(pid, &status, WNOHANG);
        if (w == pid || (w < 0 && errno == ECHILD)) {
            reaped = w == pid; /* ECHILD: someone else reaped it */
            break;
        }
        int64_t now = cw__mono_ms(), shutdown = atomic_load(&a->deadline);
        if (now >= min64(limit, shutdown)) {
            at_shutdown = shutdown < limit;
            kill(-pid, SIGKILL);
            kill(pid, SIGKILL);
            while (waitpid(pid, &status, 0) < 0 && errno == EINTR)
                ;
            killed = true;
            break;
        }
        struct pollfd p[2];
        nfds_t n = 0;
        if (in[1] >= 0)
            p[n++] = (struct pollfd){.fd = in[1], .events = POLLOUT};
        if (err[0] >= 0)
            p[n++] = (struct pollfd){.fd = err[0], .events = POLLIN};
        int wait = (int)min64(CW_ALERT_POLL_MS, min64(limit, shutdown) - now);
        if (poll(p, n, wait) > 0) {
            for (nfds_t i = 0; i < n; i++) {
                if (!p[i].revents)
                    continue;
                if (p[i].fd == in[1])
                    write_stdin(&in[1], json, len, &off);
                else
                    read_stderr(&err[0], errtext, &kept);
            }
        }
    }
    if (err[0] >= 0)
        read_stderr(&err[0], errtext, &kept); /* what is left; never waits */
    int64_t took = cw__mono_ms() - start;
    while (kept && (errtext[kept - 1] == '\n' || errtext[kept - 1] == '\r' ||
                    errtext[kept - 1] == ' ' || errtext[kept - 1] == '\t'))
        errtext[--kept] = '\0';
    char note[CW_ALERT_STDERR_KEEP + 16] = "";
    if (kept)
        snprintf(note, sizeof note, " (stderr: %s)", errtext);

    if (killed && at_shutdown)
        cw_log_warn(task, "alert hook failed: hook=command %s: killed at shutdown after %lld ms",
                    path, (long long)took);
    else if (killed)
        cw_log_warn(task,
                    "alert hook failed: hook=command %s: timed out after %lld ms, killed%s",
                    path, (long long)took, note);
    else if (!reaped)
        cw_log_debug(task, "alert command %s ended (its status was collected elsewhere)", path);
    else if (WIFEXITED(status) && WEXITSTATUS(status) != 0)
        cw_log_warn(task,
                    "alert hook failed: hook=command %s: exited with status %d%s", path,
                    WEXITSTATUS(status), note);
    else if (WIFSIGNALED(status))
        cw_log_warn(task,
                    "alert hook failed: hook=command %s: killed by signal %d (SIG%s)%s", path,
                    WTERMSIG(status),
                    sigabbrev_np(WTERMSIG(status)) ? sigabbrev_np(WTERMSIG(status)) : "?",
                    note);
    else
        cw_log_debug(task, "alert command %s succeeded in %lld ms", path, (long long)took);

out_close:
    close_fd(&in[0]);
    close_fd(&in[1]);
    close_fd(&err[0]);
    close_fd(&err[1]);
}

/* ---- the webhook ------------------------------------------------------------ */

static pthread_once_t cw_curl_once = PTHREAD_ONCE_INIT;
static CURLcode cw_curl_init_rc;

static void curl_init_once(void)
{
    cw_curl_init_rc = curl_global_init(CURL_GLOBAL_DEFAULT);
}

static size_t discard_body(char *p, size_t size, size_t n, void *ud)
{
    (void)p;
    (void)ud;
    return size * n;
}

/* Aborts a request running past the shutdown deadline. */
static int abort_at_deadline(void *ud, curl_off_t dt, curl_off_t dn, curl_off_t ut, curl_off_t un)
{
    (void)dt;
    (void)dn;
    (void)ut;
    (void)un;
    return past_deadline(ud) ? 1 : 0;
}

static int webhook_setup(cw_alerter *a)
{
    pthread_once(&cw_curl_once, curl_init_once);
    if (cw_curl_init_rc != CURLE_OK)
        return cw__error(CW_STATUS_IO, "alert webhook: curl_global_init: %s",
                         curl_easy_strerror(cw_curl_init_rc));
    cw__url_origin(a->cfg.webhook_url, a->webhook_label, sizeof a->webhook_label);
    CURL *c = a->curl = curl_easy_init();
    if (!c)
        return cw__error(CW_STATUS_NOMEM, "alert webhook: curl_easy_init failed");
    static const char *const headers[] = {
        "Content-Type: application/json",
        "Expect:", /* no 100-continue round trip */
    };
    for (size_t i = 0; i < sizeof headers / sizeof *headers; i++) {
        struct curl_slist *h = curl_slist_append(a->headers, headers[i]);
        if (!h)
            return CW_STATUS_NOMEM;
        a->headers = h;
    }
    CURLcode rc = CURLE_OK;
#define SET(opt, val) \
    if (rc == CURLE_OK) \
    rc = curl_easy_setopt(c, opt, val)
    SET(CURLOPT_URL, a->cfg.webhook_url);
    SET(CURLOPT_POST, 1L);
    SET(CURLOPT_HTTPHEADER, a->headers);
    SET(CURLOPT_USERAGENT, "compworker/" CW_VERSION_STRING);
    SET(CURLOPT_NOSIGNAL, 1L);
    SET(CURLOPT_FOLLOWLOCATION, 0L);
    SET(CURLOPT_PROTOCOLS_STR, "http,https");
    SET(CURLOPT_WRITEFUNCTION, discard_body);
    SET(CURLOPT_ERRORBUFFER, a->curl_err);
    SET(CURLOPT_XFERINFOFUNCTION, abort_at_deadline);
    SET(CURLOPT_XFERINFODATA, a);
    SET(CURLOPT_NOPROGRESS, 0L);
#undef SET
    if (rc != CURLE_OK)
        return cw__error(CW_STATUS_INVALID_ARG, "[alert] webhook %s: %s", a->webhook_label,
                         curl_easy_strerror(rc));
    return 0;
}

/* Transfer errors worth another try: the server may come back. */
static bool curl_retryable(CURLcode rc)
{
    switch (rc) {
    case CURLE_COULDNT_RESOLVE_PROXY:
    case CURLE_COULDNT_RESOLVE_HOST:
    case CURLE_COULDNT_CONNECT:
    case CURLE_OPERATION_TIMEDOUT:
    case CURLE_SEND_ERROR:
    case CURLE_RECV_ERROR:
    case CURLE_GOT_NOTHING:
    case CURLE_PARTIAL_FILE:
    case CURLE_SSL_CONNECT_ERROR:
    case CURLE_HTTP2:
    case CURLE_HTTP2_STREAM:
        return true;
    default:
        return false;
    }
}

static void run_webhook(cw_alerter *a, const char *json, const cw_log_task *task)
{
    CURL *c = a->curl;
    unsigned tries = 0, max_tries = 1 + a->cfg.webhook_retries;
    CURLcode rc = CURLE_OK;
    long code = 0;
    int64_t start = cw__mono_ms();
    curl_easy_setopt(c, CURLOPT_POSTFIELDS, json);
    curl_easy_setopt(c, CURLOPT_POSTFIELDSIZE_LARGE, (curl_off_t)strlen(json));
    for (;;) {
        int64_t left = atomic_load(&a->deadline) - cw__mono_ms();
        if (left <= 0) {
            cw_log_warn(task,
                        "alert hook failed: hook=webhook %s: abandoned at shutdown after %u "
                        "tries",
                        a->webhook_label, tries);
            return;
        }
        long t = (long)min64(a->cfg.timeout_ms, left);
        curl_easy_setopt(c, CURLOPT_TIMEOUT_MS, t);
        curl_easy_setopt(c, CURLOPT_CONNECTTIMEOUT_MS, t);
        a->curl_err[0] = '\0';
        tries++;
        rc = curl_easy_perform(c);
        code = 0;
        if (rc == CURLE_OK)
            curl_easy_getinfo(c, CURLINFO_RESPONSE_CODE, &code);
        if (rc == CURLE_OK && code >= 200 && code < 300) {
            cw_log_debug(task, "alert webhook %s answered %ld after %u tries", a->webhook_label,
                         code, tries);
            return;
        }
        bool again = rc == CURLE_OK ? (code >= 500 || code == 429) : curl_retryable(rc);
        if (!again || tries >= max_tries)
            break;
        unsigned shift = tries - 1 < 6 ? tries - 1 : 6;
        sleep_ms(a, min64((int64_t)CW_ALERT_BACKOFF_MS << shift, CW_ALERT_BACKOFF_MAX_MS));
    }
    long long took = (long long)(cw__mono_ms() - start);
    if (rc == CURLE_ABORTED_BY_CALLBACK)
        cw_log_warn(task,
                    "alert hook failed: hook=webhook %s: abandoned at shutdown after %u tries",
                    a->webhook_label, tries);
    else if (rc != CURLE_OK)
        cw_log_warn(task, "alert hook failed: hook=webhook %s: %s (after %u tries in %lld ms)",
                    a->webhook_label, a->curl_err[0] ? a->curl_err : curl_easy_strerror(rc),
                    tries, took);
    else
        cw_log_warn(task,
                    "alert hook failed: hook=webhook %s: HTTP status %ld (after %u tries in "
                    "%lld ms)",
                    a->webhook_label, code, tries, took);
}

/* ---- the thread -------------------------------------------------------------- */

/* Runs every hook with `json`; one failing never stops the others. */
static void run_hooks(cw_alerter *a, const char *json, const cw_log_task *task)
{
    for (size_t i = 0; i < a->n_cbs; i++) {
        if (past_deadline(a)) {
            cw_log_warn(task, "alert hook skipped at shutdown: hook=callback %s",
                        a->cbs[i].owner);
            continue;
        }
        a->cbs[i].fn(json, a->cbs[i].user_data);
    }
    if (a->cfg.command_argv) {
        if (past_deadline(a))
            cw_log_warn(task, "alert hook skipped at shutdown: hook=command %s",
                        a->cfg.command_argv[0]);
        else
            run_command(a, json, task);
    }
    if (a->cfg.webhook_url)
        run_webhook(a, json, task);
}

static void send_alert(cw_alerter *a, const cw_alert_event *ev)
{
    cw_log_task task = {ev->message_id, ev->saga_id, ev->type};
    char *json = alert_json(ev);
    if (!json) {
        cw_log_warn(&task, "alert not sent: out of memory building its document");
        return;
    }
    run_hooks(a, json, &task);
    free(json);
}

static void send_digest(cw_alerter *a, const alert_group *g)
{
    cw_log_task task = {NULL, NULL, g->type};
    char *json = digest_json(g);
    if (!json) {
        cw_log_warn(&task, "alert digest of %lu held-back alerts not sent: out of memory",
                    g->held);
        return;
    }
    cw_log_info(&task, "alert digest: %lu alerts of error class %s held back", g->held,
                g->error_class ? g->error_class : "(none)");
    run_hooks(a, json, &task);
    free(json);
}

/* Past the shutdown deadline: drops the rest, says how much. */
static void drop_rest_locked(cw_alerter *a)
{
    unsigned long n = (unsigned long)a->queued;
    free_item_list(a->head);
    a->head = a->tail = NULL;
    a->queued = 0;
    alert_group *g = take_due_locked(a, INT64_MAX, true);
    while (g) {
        alert_group *next = g->next;
        n += g->held;
        free_group(g);
        g = next;
    }
    if (n)
        cw_log_warn(NULL, "alerter stopped at its time limit: %lu alerts not delivered", n);
}

static void *alerter_main(void *arg)
{
    cw_alerter *a = arg;
    pthread_mutex_lock(&a->mu);
    for (;;) {
        int64_t now = cw__mono_ms();
        bool stopping = a->stop;
        if (stopping && now >= atomic_load(&a->deadline)) {
            drop_rest_locked(a);
            break;
        }
        /* At shutdown, once the queue is empty, digests go out at once. */
        alert_group *due = take_due_locked(a, now, stopping && !a->head);
        alert_item *it = pop_locked(a);
        if (!due && !it) {
            if (stopping)
                break;
            wait_locked(a, next_wake_locked(a, now));
            continue;
        }
        bool send = it && admit_locked(a, &it->ev, now);
        pthread_mutex_unlock(&a->mu);

        /* Digests first: an event may have just opened the next window. */
        while (due) {
            alert_group *next = due->next;
            send_digest(a, due);
            free_group(due);
            due = next;
        }
        if (send)
            send_alert(a, &it->ev);
        free(it);
        pthread_mutex_lock(&a->mu);
    }
    a->finished = true;
    pthread_cond_broadcast(&a->cv);
    bool abandoned = a->abandoned;
    pthread_mutex_unlock(&a->mu);
    if (abandoned)
        alerter_destroy(a);
    return NULL;
}

int cw_alerter_start(cw_alerter *a)
{
    if (!a)
        return cw__error(CW_STATUS_INVALID_ARG, "alerter: NULL");
    if (a->started)
        return cw__error(CW_STATUS_INVALID_ARG, "alerter already started");
    a->started = true;
    if (!cw_alerter_has_hooks(a))
        return 0;
    if (a->cfg.webhook_url) {
        int rc = webhook_setup(a);
        if (rc)
            return rc;
    }
    /* The thread takes no signal: the daemon's handlers run elsewhere, and a
     * SIGPIPE of a closed command stays pending here to be consumed. */
    sigset_t all, old;
    sigfillset(&all);
    pthread_sigmask(SIG_SETMASK, &all, &old);
    int rc = pthread_create(&a->thread, NULL, alerter_main, a);
    pthread_sigmask(SIG_SETMASK, &old, NULL);
    if (rc)
        return cw__error(rc == EAGAIN ? CW_STATUS_NOMEM : CW_STATUS_IO,
                         "alerter: cannot start its thread: %s", strerror(rc));
    a->running = true;
    return 0;
}

void cw_alerter_free(cw_alerter *a)
{
    if (!a)
        return;
    if (a->running) {
        int64_t now = cw__mono_ms(), total = 2 * a->cfg.timeout_ms;
        int64_t margin = min64(500, total / 10); /* to finish a hook cut at the deadline */
        pthread_mutex_lock(&a->mu);
        a->stop = true;
        atomic_store(&a->deadline, now + total - margin);
        pthread_cond_broadcast(&a->cv);
        /* Wait for the thread to say it is done (a timed join of our own:
         * portable, and visible to thread checkers), then join it. */
        while (!a->finished && cw__mono_ms() < now + total)
            wait_locked(a, now + total);
        if (!a->finished) {
            /* A callback is still running: the thread frees on its own. */
            pthread_t t = a->thread;
            a->abandoned = true;
            pthread_mutex_unlock(&a->mu);
            pthread_detach(t);
            cw_log_warn(NULL,
                        "alert hooks still running after %lld ms at shutdown; left to finish",
                        (long long)total);
            return;
        }
        pthread_mutex_unlock(&a->mu);
        pthread_join(a->thread, NULL);
    }
    alerter_destroy(a);
}
