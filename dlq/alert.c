/* Alert hooks: a bounded queue filled by the consume path and one thread that
 * rate-limits, builds the JSON document and runs the callbacks, the command
 * and the webhook. See alert.h for the contract and the document. */
#include <errno.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include <curl/curl.h>
#include <json-c/json.h>

#include "compworker/status.h"
#include "compworker/version.h"
#include "dlq/alert.h"
#include "dlq/alert_private.h"
#include "dlq/deadletter.h"
#include "framework/clock.h"
#include "framework/error.h"
#include "framework/log.h"
#include "framework/url.h"

/* ---- time ---------------------------------------------------------------- */

int64_t cw__alert_min64(int64_t a, int64_t b)
{
    return a < b ? a : b;
}

bool cw__alert_past_deadline(cw_alerter *a)
{
    return cw__mono_ms() >= atomic_load(&a->deadline);
}

/* Waits on the condition variable until `until_ms` (monotonic) or a signal. */
void cw__alert_wait_locked(cw_alerter *a, int64_t until_ms)
{
    struct timespec ts = cw__mono_timespec(until_ms);
    pthread_cond_timedwait(&a->cv, &a->mu, &ts);
}

/* Sleeps `ms`, cut short by the shutdown deadline. */
void cw__alert_sleep_ms(cw_alerter *a, int64_t ms)
{
    int64_t until = cw__mono_ms() + ms;
    pthread_mutex_lock(&a->mu);
    for (;;) {
        int64_t end = cw__alert_min64(until, atomic_load(&a->deadline));
        if (cw__mono_ms() >= end)
            break;
        cw__alert_wait_locked(a, end);
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
        dst->timeout_ms = cw__alert_min64(src->timeout_ms, CW_ALERT_MAX_TIMEOUT_MS);
    dst->webhook_retries = src->webhook_retries;
    dst->rate_limit_ms = src->rate_limit_ms > 0 ? src->rate_limit_ms : 0;
    if (src->command_argv && src->command_argv[0]) {
        if (src->command_argv[0][0] != '/')
            return cw__error(CW_STATUS_INVALID_ARG, "[alert] command: '%s' is not an absolute path",
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
    if (src->webhook_url && src->webhook_url[0] && !(dst->webhook_url = strdup(src->webhook_url)))
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

int cw_alerter_add_callback(cw_alerter *a, cw__alert_cb fn, void *user_data, const char *owner_name)
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
        t = cw__alert_min64(t, g->window_end);
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
    const char *s = json_object_to_json_string_ext(o, JSON_C_TO_STRING_PLAIN |
                                                          JSON_C_TO_STRING_NOSLASHESCAPE);
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

/* ---- the thread -------------------------------------------------------------- */

/* Runs every hook with `json`; one failing never stops the others. */
static void run_hooks(cw_alerter *a, const char *json, const cw_log_task *task)
{
    for (size_t i = 0; i < a->n_cbs; i++) {
        if (cw__alert_past_deadline(a)) {
            cw_log_warn(task, "alert hook skipped at shutdown: hook=callback %s", a->cbs[i].owner);
            continue;
        }
        a->cbs[i].fn(json, a->cbs[i].user_data);
    }
    if (a->cfg.command_argv) {
        if (cw__alert_past_deadline(a))
            cw_log_warn(task, "alert hook skipped at shutdown: hook=command %s",
                        a->cfg.command_argv[0]);
        else
            cw__alert_run_command(a, json, task);
    }
    if (a->cfg.webhook_url)
        cw__alert_run_webhook(a, json, task);
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
        cw_log_warn(&task, "alert digest of %lu held-back alerts not sent: out of memory", g->held);
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
            cw__alert_wait_locked(a, next_wake_locked(a, now));
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
        int rc = cw__alert_webhook_setup(a);
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
        int64_t margin = cw__alert_min64(500,
                                         total / 10); /* to finish a hook cut at the deadline */
        pthread_mutex_lock(&a->mu);
        a->stop = true;
        atomic_store(&a->deadline, now + total - margin);
        pthread_cond_broadcast(&a->cv);
        /* Wait for the thread to say it is done (a timed join of our own:
         * portable, and visible to thread checkers), then join it. */
        while (!a->finished && cw__mono_ms() < now + total)
            cw__alert_wait_locked(a, now + total);
        if (!a->finished) {
            /* A callback is still running: the thread frees on its own. */
            pthread_t t = a->thread;
            a->abandoned = true;
            pthread_mutex_unlock(&a->mu);
            pthread_detach(t);
            cw_log_warn(NULL, "alert hooks still running after %lld ms at shutdown; left to finish",
                        (long long)total);
            return;
        }
        pthread_mutex_unlock(&a->mu);
        pthread_join(a->thread, NULL);
    }
    alerter_destroy(a);
}
