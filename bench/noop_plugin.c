/* The benchmark's handler: applies every task at once, successfully.
 *
 * Type "bench.noop". The body steers two measurements:
 *   {"sent_ns": T, ...}                T: CLOCK_REALTIME of the publish, in ns;
 *                                      the handler records publish-to-start
 *   {"sent_ns": T, "retry_ms": D, ...} the first attempt asks for a retry after
 *                                      D ms (cw_task_retry_after); the second
 *                                      records the delay it actually got: from
 *                                      the failure (header cw-failed-at) to its
 *                                      own start
 * Anything else is applied without a record.
 *
 *     [plugin bench-noop]
 *     sleep_ms = N    (optional) every call sleeps N ms first, as a handler
 *                     waiting on a payment gateway would; the handler is then
 *                     registered as concurrent (cw_register_handler_opts)
 *     stats = DIR     (optional) at teardown, each worker process writes
 *                     DIR/<pid>.txt:
 *                       calls FIRST_NS LAST_NS COUNT   first and last handler
 *                                                      start (CLOCK_REALTIME)
 *                       latency_us N                   one line per sample
 *                       retry ASKED_MS ACTUAL_MS       one line per sample
 *
 * Without `stats` the handler reads nothing but the clock, so the throughput
 * figures measure compworker, not the plugin. */
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include <json.h>

#include <compworker/compworker.h>

CW_PLUGIN_DECLARE("bench-noop", "1.0.0");

#define BENCH_MAX_SAMPLES 1000000

typedef struct bench_stats {
    char *dir;
    int64_t first_ns, last_ns;
    uint64_t count;
    int64_t *latency_us;
    size_t n_latency;
    int64_t (*retry)[2];
    size_t n_retry;
} bench_stats;

static bench_stats stats;
static pthread_mutex_t stats_lock = PTHREAD_MUTEX_INITIALIZER;
static long sleep_ms;

static int64_t realtime_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (int64_t)ts.tv_sec * 1000000000 + ts.tv_nsec;
}

/* "2026-11-25T00:31:04.904Z" (compworker's cw-failed-at) as ns since the epoch. */
static int64_t iso8601_ns(const char *s)
{
    struct tm tm;
    int ms = 0;
    memset(&tm, 0, sizeof tm);
    if (!s || sscanf(s, "%d-%d-%dT%d:%d:%d.%dZ", &tm.tm_year, &tm.tm_mon, &tm.tm_mday, &tm.tm_hour,
                     &tm.tm_min, &tm.tm_sec, &ms) != 7)
        return -1;
    tm.tm_year -= 1900;
    tm.tm_mon -= 1;
    return (int64_t)timegm(&tm) * 1000000000 + (int64_t)ms * 1000000;
}

static int64_t field_int(json_object *o, const char *key)
{
    json_object *v;
    return json_object_object_get_ex(o, key, &v) ? json_object_get_int64(v) : -1;
}

static cw_outcome noop(cw_task *task, void *user_data)
{
    (void)user_data;
    if (!stats.dir)
        return CW_OK;
    int64_t now = realtime_ns();
    pthread_mutex_lock(&stats_lock);
    if (!stats.count++)
        stats.first_ns = now;
    if (now > stats.last_ns)
        stats.last_ns = now;
    pthread_mutex_unlock(&stats_lock);
    if (sleep_ms > 0) {
        struct timespec ts = {sleep_ms / 1000, (sleep_ms % 1000) * 1000000L};
        while (nanosleep(&ts, &ts) != 0 && errno == EINTR)
            ;
        return CW_OK;
    }

    json_object *p = cw_task_payload(task);
    int64_t sent = field_int(p, "sent_ns"), retry_ms = field_int(p, "retry_ms");
    if (retry_ms >= 0) {
        if (cw_task_attempt(task) == 0)
            return cw_task_retry_after(task, retry_ms, "bench: retry after %lld ms",
                                       (long long)retry_ms);
        int64_t failed = iso8601_ns(cw_task_header(task, "cw-failed-at"));
        if (failed > 0 && stats.n_retry < BENCH_MAX_SAMPLES) {
            stats.retry[stats.n_retry][0] = retry_ms;
            stats.retry[stats.n_retry][1] = (now - failed) / 1000000;
            stats.n_retry++;
        }
    } else if (sent > 0 && stats.n_latency < BENCH_MAX_SAMPLES) {
        stats.latency_us[stats.n_latency++] = (now - sent) / 1000;
    }
    return CW_OK;
}

static void teardown(void *user_data)
{
    (void)user_data;
    char path[4096];
    snprintf(path, sizeof path, "%s/%ld.txt", stats.dir, (long)getpid());
    FILE *f = fopen(path, "w");
    if (f) {
        fprintf(f, "calls %lld %lld %llu\n", (long long)stats.first_ns, (long long)stats.last_ns,
                (unsigned long long)stats.count);
        for (size_t i = 0; i < stats.n_latency; i++)
            fprintf(f, "latency_us %lld\n", (long long)stats.latency_us[i]);
        for (size_t i = 0; i < stats.n_retry; i++)
            fprintf(f, "retry %lld %lld\n", (long long)stats.retry[i][0],
                    (long long)stats.retry[i][1]);
        if (fclose(f) != 0)
            fprintf(stderr, "bench-noop: writing %s: %s\n", path, strerror(errno));
    } else {
        fprintf(stderr, "bench-noop: %s: %s\n", path, strerror(errno));
    }
    free(stats.dir);
    free(stats.latency_us);
    free(stats.retry);
    memset(&stats, 0, sizeof stats);
}

int cw_plugin_init(cw_registry *reg)
{
    const char *dir = cw_registry_setting(reg, "stats", NULL);
    if (dir) {
        stats.dir = strdup(dir);
        stats.latency_us = malloc(BENCH_MAX_SAMPLES * sizeof *stats.latency_us);
        stats.retry = malloc(BENCH_MAX_SAMPLES * sizeof *stats.retry);
        if (!stats.dir || !stats.latency_us || !stats.retry)
            return CW_STATUS_NOMEM;
        int rc = cw_register_teardown(reg, teardown, NULL);
        if (rc)
            return rc;
    }
    sleep_ms = strtol(cw_registry_setting(reg, "sleep_ms", "0"), NULL, 10);
    cw_handler_opts opts = CW_HANDLER_OPTS_INIT;
    opts.concurrent = sleep_ms > 0;
    return cw_register_handler_opts(reg, "bench.noop", noop, NULL, &opts);
}
