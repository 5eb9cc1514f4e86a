/* Chaos run (issue 6): at least 20,000 tasks through a pool of 2 workers
 * (`compworker run --workers 2`) running tests/plugins/ledger_plugin.so,
 * which records every application in its own SQLite ledger with the pid of
 * the worker that made it, while the test
 *
 *   - publishes the tasks at a steady pace, 5% more as duplicates (the same
 *     message ID again: right after the original, a little later, or much
 *     later), with a `timestamp` property;
 *   - makes 10% of them fail transiently (once or twice, `cw_task_retry`,
 *     through the delay topology) and 1% permanently (`cw_task_fail` while
 *     a file does not exist: the fault an operator removes later);
 *   - SIGKILLs a random worker process (never the supervisor, which starts
 *     it again) every 2.5 to 5 s, from a thread of its own, while it
 *     publishes and for 10 s after; and restarts the broker once, 40% into
 *     the run (stop_app/start_app: every connection drops, the workers
 *     reconnect).
 *
 * Once the pool queue, the store and the short delay levels are drained, it
 * asserts:
 *   - every task was applied or dead-lettered, not both:
 *     published = applied + dead-lettered (distinct message IDs), and the
 *     store says done or dead for each;
 *   - no task was applied twice except where a kill fell between the
 *     handler's effect and the store's record: every application but the
 *     last of a task was made by a worker the test killed, after that
 *     application and before the next one, and the store's record names the
 *     last application's worker as the one that settled it. These are the
 *     "windows"; they are counted and printed. (The same window after a
 *     DLQ publish leaves a second DLQ copy of a task: counted as well.)
 *   - the attempt that applied a transient task is the one its failures
 *     called for (the retries went through the delay topology);
 *   - every DLQ entry carries its metadata: cw-error-class, cw-error,
 *     cw-attempt, cw-failed-at, cw-handler, cw-worker, cw-queue,
 *     cw-original-exchange/-routing-key, and keeps the task's message ID,
 *     type, saga ID, content type, timestamp and body;
 * then removes the fault, replays the DLQ with the real `compworker dlq
 * replay --all`, and asserts that every task is now applied (the replayed
 * ones exactly once), the DLQ is empty, every worker that died was one the
 * test killed, the pool stops cleanly, and no sanitizer spoke.
 *
 * The ledger handler also writes each application as a row of table
 * it_effects in the store's own database, through cw_task_sqlite() or
 * cw_task_pg() (in the transaction of the task's done record), and sends one
 * follow-up per application with cw_task_send() to a queue the test reads.
 * Side by side with the file ledger's count of double applications, it
 * asserts: no task with two effect rows in the store, each done task with
 * one, each dead-lettered one with none; every done task's follow-up
 * received (the same message ID however often it was published: the
 * UUIDv5 of the task's), from its applying attempt, and none of a task that
 * did not end done.
 *
 * The file also holds regression tests for what the chaos run found (at
 * the end).
 *
 * Knobs (environment): CW_CHAOS_SEED (the task mix and the kill choices;
 * printed at the start), CW_CHAOS_TASKS (default 20000), CW_CHAOS_SECONDS
 * (how long publishing takes, default 25), CW_CHAOS_KILL_MS=MIN-MAX (the
 * time between two kills, default 2500-5000), CW_CHAOS_ONLY=NAME (run one
 * test of this file), CW_CHAOS_KEEP=1 (keep the run's directory: logs,
 * ledger, store). */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>

#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <curl/curl.h>
#include <libpq-fe.h>
#include <sqlite3.h>

#include "cwtest.h"
#include "framework/task.h"

#define DEFAULT_TASKS 20000
#define DEFAULT_PUBLISH_S 25
#define CHUNK 100         /* tasks published (and confirmed) at a time */
#define KILL_MIN_MS 2500  /* between two kills: uniform in [min, max] */
#define KILL_MAX_MS 5000  /* (CW_CHAOS_KILL_MS=MIN-MAX overrides them) */
#define WORKER_UP_MS 1500 /* a worker is killed only after this long up */
#define DRAIN_KILLS_MS                                                                             \
    10000               /* kills go on this long once all is published: the
                                 * supervisor's restart backoff doubles with each
                                 * quick death, and the drain must stay short */
#define RESTART_AT 0.4  /* the broker restarts when this share is published */
#define STALL_MS 90000  /* no task settled for this long: the pool is stuck */
#define DRAIN_MS 300000 /* the whole drain, at most */
#define DELAY_LEVELS 6  /* cw.delay.00..05 hold the chaos run's delays (< 6.4 s) */
#define MAX_WORKERS 256 /* worker processes the run may see */
#define MAX_KILLS 256
#define MAX_APPS 8  /* applications of one task the test keeps */
#define EXAMPLES 10 /* unexplained cases printed before failing */
#define CLI_TIMEOUT_MS 120000

/* ---- the run's state ------------------------------------------------------ */

typedef enum kind {
    K_PLAIN,
    K_TRANSIENT1,
    K_TRANSIENT2,
    K_PERMANENT
} kind;

typedef struct app {
    long pid;
    int64_t at; /* CLOCK_REALTIME ms */
    unsigned attempt;
} app;

typedef struct task {
    uint8_t kind;
    uint8_t state;       /* the store's, read at a check */
    uint16_t dups;       /* duplicate publishes */
    uint16_t n_apps;     /* ledger rows */
    uint16_t dlq_copies; /* DLQ entries (before the replay) */
    uint32_t timestamp;  /* the timestamp property published */
    uint16_t attempts;   /* settled attempts, the store's */
    long settled_by;     /* pid of the store record's owner */
    app apps[MAX_APPS];
    uint16_t n_effects;   /* rows in the store's it_effects */
    uint16_t n_followups; /* follow-up deliveries received */
    uint16_t followup_attempt;
} task;

typedef struct worker_seen {
    unsigned index;
    long pid;
    int64_t seen_ms; /* when the test read its start line (monotonic) */
} worker_seen;

typedef struct kill_rec {
    long pid;
    unsigned index;
    int64_t wall_ms;
} kill_rec;

/* The killer: a thread of its own, so that kills fall at moments that have
 * nothing to do with the publisher's rhythm. It reads the supervisor's
 * "worker N started (pid P)" lines, and every KILL_MIN_MS..KILL_MAX_MS
 * SIGKILLs one of the live workers, chosen at random. It calls nothing of
 * cmocka's or cwtest's: a problem is left in `error` for the test thread. */
typedef struct killer {
    pthread_t thread;
    bool running;
    atomic_bool stop;
    pthread_mutex_t lock; /* guards what follows while the thread runs */
    pid_t supervisor;
    int64_t min_ms, max_ms; /* between two kills */
    int64_t until_ms;       /* no kill from then on (monotonic; 0: none) */
    char log[320];
    long log_off;
    uint64_t rng;
    worker_seen workers[MAX_WORKERS];
    size_t n_workers;
    kill_rec kills[MAX_KILLS];
    size_t n_kills;
    char error[512];
} killer;

typedef struct chaos {
    cwtest_env *env;
    uint64_t seed, rng;
    unsigned n; /* distinct tasks */
    task *t;
    char faults_file[400]; /* exists: the permanent fault is removed */
    char store[400];
    char pg_schema[96]; /* CW_CHAOS_STORE=postgresql: the store's schema */
    char host[128];
    killer k;

    /* counts for the summary */
    unsigned published, dups_sent, transient1, transient2, permanent;
    unsigned restarts, reconnects;
    int64_t restart_ms;
    long applied_rows, applied_distinct, applied_before, windows, dlq_entries, dlq_distinct,
        dlq_windows;
    long replayed, calls, retried_calls, metric_ok;
    char followups[200]; /* the follow-ups' queue */
    long effect_rows, effects_twice, followups_received, followups_distinct;
    int64_t t_start, t_published, t_drained, t_replayed;
} chaos;

static uint64_t splitmix64(uint64_t *state)
{
    uint64_t z = (*state += 0x9E3779B97F4A7C15ULL);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ULL;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBULL;
    return z ^ (z >> 31);
}

static unsigned rng_below(chaos *c, unsigned n)
{
    return n ? (unsigned)(splitmix64(&c->rng) % n) : 0;
}

static int64_t wall_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static unsigned env_uint(const char *name, unsigned fallback)
{
    const char *v = getenv(name);
    if (!v || !*v)
        return fallback;
    char *end;
    unsigned long x = strtoul(v, &end, 0);
    if (*end || x == 0 || x > 10000000)
        fail_msg("%s='%s' is not a positive number", name, v);
    return (unsigned)x;
}

static void task_id(const chaos *c, unsigned i, char *out, size_t cap)
{
    snprintf(out, cap, "cx-%08x-%06u", (unsigned)(c->seed & 0xffffffffu), i);
}

/* The index of a message ID of this run, or -1. */
static long task_index(const chaos *c, const char *id)
{
    unsigned seed, i;
    char tail;
    if (!id || sscanf(id, "cx-%8x-%6u%c", &seed, &i, &tail) != 2 ||
        seed != (unsigned)(c->seed & 0xffffffffu) || i >= c->n)
        return -1;
    return (long)i;
}

static void task_saga(unsigned i, char *out, size_t cap)
{
    snprintf(out, cap, "saga-%05u", i / 3);
}

/* Every task takes two milliseconds to apply (a call to a payment gateway
 * would take longer), so that the workers are busy most of the run and
 * kills land in the middle of batches. */
static void task_body(const chaos *c, unsigned i, char *out, size_t cap)
{
    switch ((kind)c->t[i].kind) {
    case K_TRANSIENT1:
    case K_TRANSIENT2:
        snprintf(out, cap, "{\"n\":%u,\"sleep_ms\":2,\"fail_times\":%d}", i,
                 c->t[i].kind == K_TRANSIENT1 ? 1 : 2);
        break;
    case K_PERMANENT:
        snprintf(out, cap, "{\"n\":%u,\"sleep_ms\":2,\"fail_unless_file\":\"%s\"}", i,
                 c->faults_file);
        break;
    default: snprintf(out, cap, "{\"n\":%u,\"sleep_ms\":2}", i); break;
    }
}

/* Which attempt applies a task: the one after its transient failures. */
static unsigned applying_attempt(const task *t)
{
    return t->kind == K_TRANSIENT1 ? 1 : t->kind == K_TRANSIENT2 ? 2 : 0;
}

/* ---- worker processes ------------------------------------------------------ */

/* The pid's state letter and parent from /proc; false when it is gone. */
static bool proc_info(long pid, char *state, long *ppid)
{
    char path[64], buf[512];
    snprintf(path, sizeof path, "/proc/%ld/stat", pid);
    FILE *f = fopen(path, "r");
    if (!f)
        return false;
    size_t n = fread(buf, 1, sizeof buf - 1, f);
    fclose(f);
    buf[n] = '\0';
    const char *p = strrchr(buf, ')');
    return p && sscanf(p + 1, " %c %ld", state, ppid) == 2;
}

/* Reads the supervisor's new "worker N started (pid P)" lines. */
static void workers_refresh(killer *k)
{
    FILE *f = fopen(k->log, "r");
    if (!f)
        return;
    if (fseek(f, k->log_off, SEEK_SET) != 0) {
        fclose(f);
        return;
    }
    char line[4096];
    while (fgets(line, sizeof line, f)) {
        size_t len = strlen(line);
        if (len == 0 || line[len - 1] != '\n')
            break; /* a line being written: read it next time */
        k->log_off += (long)len;
        const char *p = strstr(line, "msg=\"worker ");
        unsigned index;
        long pid;
        if (!p || sscanf(p, "msg=\"worker %u started (pid %ld)", &index, &pid) != 2)
            continue;
        if (k->n_workers == MAX_WORKERS) {
            snprintf(k->error, sizeof k->error, "more than %d worker processes started",
                     MAX_WORKERS);
            break;
        }
        k->workers[k->n_workers++] = (worker_seen){index, pid, cwtest_now_ms()};
    }
    fclose(f);
}

static bool pid_is_worker(const chaos *c, long pid)
{
    for (size_t i = 0; i < c->k.n_workers; i++) {
        if (c->k.workers[i].pid == pid)
            return true;
    }
    return false;
}

static const kill_rec *kill_of(const chaos *c, long pid)
{
    for (size_t i = 0; i < c->k.n_kills; i++) {
        if (c->k.kills[i].pid == pid)
            return &c->k.kills[i];
    }
    return NULL;
}

/* SIGKILLs one of the live workers that have been up a while, chosen at
 * random; false when there is none to kill now. Called with the lock. */
static bool kill_one(killer *k)
{
    const worker_seen *cand[MAX_WORKERS];
    size_t n = 0;
    int64_t now = cwtest_now_ms();
    /* The last start line of each index is its current process. */
    for (size_t i = 0; i < k->n_workers; i++) {
        const worker_seen *w = &k->workers[i];
        bool latest = true, killed = false;
        for (size_t j = i + 1; j < k->n_workers; j++) {
            if (k->workers[j].index == w->index)
                latest = false;
        }
        for (size_t j = 0; j < k->n_kills; j++) {
            if (k->kills[j].pid == w->pid)
                killed = true;
        }
        char st;
        long ppid;
        if (!latest || killed || now - w->seen_ms < WORKER_UP_MS ||
            !proc_info(w->pid, &st, &ppid) || st == 'Z' || ppid != (long)k->supervisor)
            continue;
        cand[n++] = w;
    }
    if (n == 0)
        return false;
    if (k->n_kills == MAX_KILLS) {
        snprintf(k->error, sizeof k->error, "more than %d kills", MAX_KILLS);
        return false;
    }
    const worker_seen *v = cand[splitmix64(&k->rng) % n];
    kill_rec *r = &k->kills[k->n_kills];
    r->pid = v->pid;
    r->index = v->index;
    r->wall_ms = wall_ms();
    if (kill((pid_t)v->pid, SIGKILL) != 0) {
        snprintf(k->error, sizeof k->error, "kill(%ld, SIGKILL): %s", v->pid, strerror(errno));
        return false;
    }
    k->n_kills++;
    return true;
}

static int64_t kill_interval(killer *k)
{
    return k->min_ms + (int64_t)(splitmix64(&k->rng) % (uint64_t)(k->max_ms - k->min_ms + 1));
}

static void *killer_main(void *arg)
{
    killer *k = arg;
    pthread_mutex_lock(&k->lock);
    int64_t next = cwtest_now_ms() + kill_interval(k);
    pthread_mutex_unlock(&k->lock);
    while (!atomic_load(&k->stop)) {
        cwtest_sleep_ms(10);
        pthread_mutex_lock(&k->lock);
        workers_refresh(k);
        if (!k->error[0] && cwtest_now_ms() >= next &&
            (!k->until_ms || cwtest_now_ms() < k->until_ms))
            next = cwtest_now_ms() + (kill_one(k) ? kill_interval(k) : 100);
        pthread_mutex_unlock(&k->lock);
    }
    return NULL;
}

static void killer_start(chaos *c)
{
    killer *k = &c->k;
    pthread_mutex_init(&k->lock, NULL);
    k->supervisor = c->env->worker;
    k->min_ms = KILL_MIN_MS;
    k->max_ms = KILL_MAX_MS;
    const char *v = getenv("CW_CHAOS_KILL_MS");
    if (v && *v &&
        (sscanf(v, "%" SCNd64 "-%" SCNd64, &k->min_ms, &k->max_ms) != 2 || k->min_ms < 100 ||
         k->max_ms < k->min_ms))
        fail_msg("CW_CHAOS_KILL_MS='%s' is not MIN-MAX milliseconds (MIN >= 100)", v);
    snprintf(k->log, sizeof k->log, "%s", c->env->log);
    k->rng = c->seed ^ 0x6b696c6c6572ULL;
    atomic_store(&k->stop, false);
    if (pthread_create(&k->thread, NULL, killer_main, k) != 0)
        fail_msg("cannot start the killer thread");
    k->running = true;
}

static void killer_stop(chaos *c)
{
    killer *k = &c->k;
    if (!k->running)
        return;
    atomic_store(&k->stop, true);
    pthread_join(k->thread, NULL);
    k->running = false;
    workers_refresh(k);
    pthread_mutex_destroy(&k->lock);
}

static size_t kills_so_far(chaos *c)
{
    if (!c->k.running)
        return c->k.n_kills;
    pthread_mutex_lock(&c->k.lock);
    size_t n = c->k.n_kills;
    pthread_mutex_unlock(&c->k.lock);
    return n;
}

/* Checks the supervisor is still there and the killer has no complaint. */
static void chaos_tick(chaos *c)
{
    if (!cwtest_worker_alive(c->env))
        fail_msg("the pool's supervisor exited (code %d); see %s", c->env->last_exit, c->env->log);
    char err[sizeof c->k.error] = "";
    if (c->k.running) {
        pthread_mutex_lock(&c->k.lock);
        memcpy(err, c->k.error, sizeof err);
        pthread_mutex_unlock(&c->k.lock);
    }
    if (err[0])
        fail_msg("killer: %s", err);
}

/* Sleeps `ms`, checking on the pool meanwhile. */
static void chaos_sleep(chaos *c, int64_t ms)
{
    int64_t until = cwtest_now_ms() + ms;
    for (;;) {
        chaos_tick(c);
        int64_t left = until - cwtest_now_ms();
        if (left <= 0)
            return;
        cwtest_sleep_ms(left < 100 ? (int)left : 100);
    }
}

/* ---- publishing ------------------------------------------------------------ */

static void send_task(chaos *c, unsigned i)
{
    char id[64], saga[32], body[512];
    task_id(c, i, id, sizeof id);
    task_saga(i, saga, sizeof saga);
    task_body(c, i, body, sizeof body);
    cwtest_out m = {
        .exchange = "cw.tasks",
        .routing_key = "it.apply",
        .message_id = id,
        .type = "it.apply",
        .correlation_id = saga,
        .content_type = "application/json",
        .body = body,
        .timestamp = c->t[i].timestamp,
    };
    cwtest_send(c->env, &m);
}

/* Assigns exact shares of kinds (1% permanent, 5% + 5% failing once or
 * twice), shuffled, and marks where the duplicates go. */
static void plan(chaos *c, uint8_t *dup_after)
{
    unsigned perm = c->n / 100, t1 = c->n / 20, t2 = c->n / 10 - c->n / 20;
    for (unsigned i = 0; i < c->n; i++)
        c->t[i].kind = i < perm             ? K_PERMANENT
                       : i < perm + t1      ? K_TRANSIENT1
                       : i < perm + t1 + t2 ? K_TRANSIENT2
                                            : K_PLAIN;
    for (unsigned i = c->n - 1; i > 0; i--) {
        unsigned j = rng_below(c, i + 1);
        uint8_t k = c->t[i].kind;
        c->t[i].kind = c->t[j].kind;
        c->t[j].kind = k;
    }
    c->permanent = perm;
    c->transient1 = t1;
    c->transient2 = t2;
    for (unsigned d = 0; d < c->n / 20; d++) {
        unsigned at = rng_below(c, c->n);
        if (dup_after[at] < 255)
            dup_after[at]++;
        else
            d--;
    }
}

/* A duplicate of a task published at or before `i`: the same one (likely
 * in the same batch), a recent one (maybe in its retry delay), or any. */
static void send_dup(chaos *c, unsigned i)
{
    unsigned mode = rng_below(c, 10), target;
    if (mode < 4)
        target = i;
    else if (mode < 7)
        target = i - rng_below(c, i < 300 ? i + 1 : 301);
    else
        target = rng_below(c, i + 1);
    send_task(c, target);
    c->t[target].dups++;
    c->dups_sent++;
}

/* ---- the store and the ledger ---------------------------------------------- */

static sqlite3 *db_open(const char *path)
{
    sqlite3 *db = NULL;
    if (sqlite3_open_v2(path, &db, SQLITE_OPEN_READWRITE, NULL) != SQLITE_OK) {
        char err[300];
        snprintf(err, sizeof err, "%s", db ? sqlite3_errmsg(db) : "out of memory");
        sqlite3_close(db);
        fail_msg("cannot open %s: %s", path, err);
    }
    sqlite3_busy_timeout(db, 10000);
    return db;
}

static sqlite3_stmt *db_prepare(sqlite3 *db, const char *sql)
{
    sqlite3_stmt *st = NULL;
    if (sqlite3_prepare_v2(db, sql, -1, &st, NULL) != SQLITE_OK)
        fail_msg("%s: %s", sql, sqlite3_errmsg(db));
    return st;
}

/* A query on the PostgreSQL store of the run (CW_CHAOS_STORE=postgresql):
 * its result, PQclear() it. */
static PGresult *pg_query(const chaos *c, const char *fmt)
{
    char sql[512];
    snprintf(sql, sizeof sql, fmt, c->pg_schema);
    PGconn *conn = PQconnectdb(getenv("CW_TEST_PG_URL"));
    if (PQstatus(conn) != CONNECTION_OK)
        fail_msg("connecting to the store: %s", PQerrorMessage(conn));
    PGresult *r = PQexec(conn, sql);
    if (PQresultStatus(r) != PGRES_TUPLES_OK) {
        /* The first worker may not have made the schema yet. */
        bool missing = strstr(PQresultErrorMessage(r), "does not exist") != NULL;
        char err[512];
        snprintf(err, sizeof err, "%s", PQresultErrorMessage(r));
        PQclear(r);
        PQfinish(conn);
        if (missing)
            return NULL;
        fail_msg("%s: %s", sql, err);
    }
    PQfinish(conn);
    return r;
}

/* The store's records by state: [0] none ... [5] replayed, [6] others. */
static void store_states(const chaos *c, long counts[7])
{
    memset(counts, 0, 7 * sizeof *counts);
    if (c->pg_schema[0]) {
        PGresult *r = pg_query(c, "SELECT state, count(*) FROM \"%s\".cw_tasks GROUP BY state");
        for (int i = 0; r && i < PQntuples(r); i++) {
            int s = atoi(PQgetvalue(r, i, 0));
            counts[s >= 0 && s <= 5 ? s : 6] += atol(PQgetvalue(r, i, 1));
        }
        PQclear(r);
        return;
    }
    if (access(c->store, F_OK) != 0)
        return;
    sqlite3 *db = db_open(c->store);
    sqlite3_stmt *st = db_prepare(db, "SELECT state, COUNT(*) FROM tasks GROUP BY state");
    int rc;
    while ((rc = sqlite3_step(st)) == SQLITE_ROW) {
        int s = sqlite3_column_int(st, 0);
        counts[s >= 0 && s <= 5 ? s : 6] += sqlite3_column_int64(st, 1);
    }
    if (rc != SQLITE_DONE)
        fail_msg("%s: reading states: %s", c->store, sqlite3_errmsg(db));
    sqlite3_finalize(st);
    sqlite3_close(db);
}

/* The pid in an owner string "host:pid:start" of this host, or -1. */
static long owner_pid(const chaos *c, const char *owner)
{
    size_t hl = strlen(c->host);
    if (!owner || strncmp(owner, c->host, hl) != 0 || owner[hl] != ':')
        return -1;
    char *end;
    long pid = strtol(owner + hl + 1, &end, 10);
    return *end == ':' && pid > 0 ? pid : -1;
}

/* Reads every task's store state and settler. */
static void store_read(chaos *c)
{
    for (unsigned i = 0; i < c->n; i++) {
        c->t[i].state = 0;
        c->t[i].settled_by = -1;
    }
    if (c->pg_schema[0]) {
        PGresult *r = pg_query(c, "SELECT message_id, state, owner, attempts FROM \"%s\".cw_tasks");
        for (int k = 0; r && k < PQntuples(r); k++) {
            const char *id = PQgetvalue(r, k, 0);
            long i = task_index(c, id);
            if (i < 0)
                fail_msg("the store has a record of '%s', which the test never published", id);
            c->t[i].state = (uint8_t)atoi(PQgetvalue(r, k, 1));
            c->t[i].settled_by = owner_pid(c, PQgetisnull(r, k, 2) ? NULL : PQgetvalue(r, k, 2));
            long a = atol(PQgetvalue(r, k, 3));
            c->t[i].attempts = (uint16_t)(a < 0 ? 0 : a > UINT16_MAX ? UINT16_MAX : a);
        }
        PQclear(r);
        return;
    }
    sqlite3 *db = db_open(c->store);
    sqlite3_stmt *st = db_prepare(db, "SELECT message_id, state, owner, attempts FROM tasks");
    int rc;
    while ((rc = sqlite3_step(st)) == SQLITE_ROW) {
        const char *id = (const char *)sqlite3_column_text(st, 0);
        long i = task_index(c, id);
        if (i < 0)
            fail_msg("the store has a record of '%s', which the test never published", id);
        c->t[i].state = (uint8_t)sqlite3_column_int(st, 1);
        c->t[i].settled_by = owner_pid(c, (const char *)sqlite3_column_text(st, 2));
        int64_t a = sqlite3_column_int64(st, 3);
        c->t[i].attempts = (uint16_t)(a < 0 ? 0 : a > UINT16_MAX ? UINT16_MAX : a);
    }
    if (rc != SQLITE_DONE)
        fail_msg("%s: reading tasks: %s", c->store, sqlite3_errmsg(db));
    sqlite3_finalize(st);
    sqlite3_close(db);
}

/* Reads the ledger: every application, and the handler calls' counts. */
static void ledger_read(chaos *c)
{
    for (unsigned i = 0; i < c->n; i++)
        c->t[i].n_apps = 0;
    sqlite3 *db = db_open(c->env->ledger);
    sqlite3_stmt *st = db_prepare(db,
                                  "SELECT message_id, pid, at, attempt FROM applied ORDER BY row");
    int rc;
    c->applied_rows = 0;
    while ((rc = sqlite3_step(st)) == SQLITE_ROW) {
        const char *id = (const char *)sqlite3_column_text(st, 0);
        long i = task_index(c, id);
        if (i < 0)
            fail_msg("the ledger has an application of '%s', which the test never published", id);
        task *t = &c->t[i];
        if (t->n_apps < MAX_APPS)
            t->apps[t->n_apps] = (app){.pid = (long)sqlite3_column_int64(st, 1),
                                       .at = sqlite3_column_int64(st, 2),
                                       .attempt = (unsigned)sqlite3_column_int(st, 3)};
        if (t->n_apps < UINT16_MAX)
            t->n_apps++;
        c->applied_rows++;
    }
    if (rc != SQLITE_DONE)
        fail_msg("%s: reading applications: %s", c->env->ledger, sqlite3_errmsg(db));
    sqlite3_finalize(st);
    st = db_prepare(db, "SELECT COUNT(*), COALESCE(SUM(attempt > 0), 0) FROM calls");
    if (sqlite3_step(st) != SQLITE_ROW)
        fail_msg("%s: counting calls: %s", c->env->ledger, sqlite3_errmsg(db));
    c->calls = (long)sqlite3_column_int64(st, 0);
    c->retried_calls = (long)sqlite3_column_int64(st, 1);
    sqlite3_finalize(st);
    sqlite3_close(db);
}

/* Reads the effect rows of the store's database (it_effects) per task. */
static void effects_read(chaos *c)
{
    for (unsigned i = 0; i < c->n; i++)
        c->t[i].n_effects = 0;
    c->effect_rows = 0;
    if (c->pg_schema[0]) {
        /* public.it_effects is shared by every test of the server: this
         * run's rows are those of its message IDs. */
        PGresult *r = pg_query(c, "SELECT message_id, count(*) FROM public.it_effects"
                                  " WHERE message_id LIKE 'cx-%%' GROUP BY message_id"
                                  " /* %s */");
        for (int k = 0; r && k < PQntuples(r); k++) {
            long i = task_index(c, PQgetvalue(r, k, 0));
            if (i < 0)
                continue;
            c->t[i].n_effects = (uint16_t)atoi(PQgetvalue(r, k, 1));
            c->effect_rows += c->t[i].n_effects;
        }
        PQclear(r);
        return;
    }
    sqlite3 *db = db_open(c->store);
    sqlite3_stmt *st = NULL;
    if (sqlite3_prepare_v2(db, "SELECT message_id, count(*) FROM it_effects GROUP BY message_id",
                           -1, &st, NULL) != SQLITE_OK) {
        sqlite3_close(db); /* no effect yet: no table yet */
        return;
    }
    int rc;
    while ((rc = sqlite3_step(st)) == SQLITE_ROW) {
        const char *id = (const char *)sqlite3_column_text(st, 0);
        long i = task_index(c, id);
        if (i < 0)
            fail_msg("the store's it_effects has a row of '%s', which the test never published",
                     id);
        c->t[i].n_effects = (uint16_t)sqlite3_column_int(st, 1);
        c->effect_rows += c->t[i].n_effects;
    }
    if (rc != SQLITE_DONE)
        fail_msg("%s: reading it_effects: %s", c->store, sqlite3_errmsg(db));
    sqlite3_finalize(st);
    sqlite3_close(db);
}

/* Follow-ups still in the store (committed, not yet confirmed). */
static long followups_pending(const chaos *c)
{
    if (c->pg_schema[0]) {
        PGresult *r = pg_query(c, "SELECT count(*) FROM \"%s\".cw_followups");
        long v = r ? atol(PQgetvalue(r, 0, 0)) : 0;
        PQclear(r);
        return v;
    }
    if (access(c->store, F_OK) != 0)
        return 0;
    sqlite3 *db = db_open(c->store);
    sqlite3_stmt *st = db_prepare(db, "SELECT count(*) FROM followups");
    long v = sqlite3_step(st) == SQLITE_ROW ? (long)sqlite3_column_int64(st, 0) : -1;
    sqlite3_finalize(st);
    sqlite3_close(db);
    return v;
}

/* Takes the follow-ups received so far off their queue and counts them per
 * task; each must carry the UUIDv5 of its task's message ID and its saga. */
static void followups_take(chaos *c)
{
    size_t n;
    cwtest_msg *m = cwtest_drain(c->env, c->followups, &n);
    long bad = 0;
    for (size_t k = 0; k < n; k++) {
        const char *at = m[k].body ? strstr((const char *)m[k].body, "\"task\":\"") : NULL;
        char id[64] = "", want[37], saga[32];
        if (at)
            snprintf(id, sizeof id, "%.*s", (int)strcspn(at + 8, "\""), at + 8);
        long i = task_index(c, id);
        if (i < 0) {
            if (bad++ < EXAMPLES)
                print_error("a follow-up names task '%s', which the test never published\n", id);
            continue;
        }
        cw__followup_id(id, 0, want);
        task_saga((unsigned)i, saga, sizeof saga);
        if (!m[k].message_id || strcmp(m[k].message_id, want) != 0 || !m[k].correlation_id ||
            strcmp(m[k].correlation_id, saga) != 0) {
            if (bad++ < EXAMPLES)
                print_error("follow-up of %s: message ID %s, saga %s; want %s and %s\n", id,
                            m[k].message_id ? m[k].message_id : "(none)",
                            m[k].correlation_id ? m[k].correlation_id : "(none)", want, saga);
            continue;
        }
        const char *a = strstr((const char *)m[k].body, "\"attempt\":");
        task *t = &c->t[i];
        if (t->n_followups == 0)
            c->followups_distinct++;
        t->n_followups++;
        t->followup_attempt = a ? (uint16_t)atoi(a + 10) : UINT16_MAX;
        c->followups_received++;
    }
    cwtest_msgs_free(m, n);
    if (bad)
        fail_msg("%ld follow-ups not as they should be (above)", bad);
}

/* ---- waiting for the pool to finish ------------------------------------------ */

static uint32_t delay_depth(chaos *c)
{
    uint32_t sum = 0;
    for (int l = 0; l < DELAY_LEVELS; l++) {
        char q[32];
        snprintf(q, sizeof q, "cw.delay.%02d", l);
        sum += cwtest_queue_count(c->env, q);
    }
    return sum;
}

/* Waits until every task is done (or, with `dead_ok`, dead) in the store,
 * the pool queue is empty and the short delay levels too, ticking the chaos
 * meanwhile; fails when nothing settles for STALL_MS. */
static void drain(chaos *c, bool dead_ok, const char *phase)
{
    int64_t start = cwtest_now_ms(), last_change = start;
    long last_settled = -1;
    unsigned quiet = 0;
    for (;;) {
        long s[7];
        store_states(c, s);
        long settled = s[2] + (dead_ok ? s[3] : 0);
        uint32_t ready = cwtest_queue_count(c->env, c->env->queue);
        bool done = settled == (long)c->n && ready == 0 && (dead_ok || s[3] == 0) &&
                    followups_pending(c) == 0;
        /* Settled, the queue empty, and the delay levels empty twice in a
         * row: no copy is still on its way back. */
        if (done && delay_depth(c) == 0) {
            if (++quiet >= 2)
                return;
        } else {
            quiet = 0;
        }
        int64_t now = cwtest_now_ms();
        if (settled != last_settled) {
            last_settled = settled;
            last_change = now;
        }
        if (now - last_change > STALL_MS || now - start > DRAIN_MS)
            fail_msg("%s: stuck: %ld of %u tasks settled (store: %ld in progress, %ld done, "
                     "%ld dead, %ld retrying, %ld replayed), %u ready in %s, %u in the short "
                     "delay levels, after %lld s; see %s",
                     phase, settled, c->n, s[1], s[2], s[3], s[4], s[5], ready, c->env->queue,
                     delay_depth(c), (long long)(now - start) / 1000, c->env->log);
        chaos_sleep(c, 250);
    }
}

/* ---- checks ---------------------------------------------------------------- */

static void expect_iso8601(const char *id, const char *got)
{
    if (!got || strlen(got) != 24 || got[4] != '-' || got[10] != 'T' || got[19] != '.' ||
        got[23] != 'Z')
        fail_msg("DLQ entry %s: cw-failed-at is '%s', not an ISO 8601 UTC time", id,
                 got ? got : "(missing)");
}

static const char *need_str(const cwtest_msg *m, const char *key)
{
    const char *v = cwtest_msg_str(m, key);
    if (!v || !*v)
        fail_msg("DLQ entry %s: header %s is missing or empty", m->message_id, key);
    return v;
}

static void expect_str(const cwtest_msg *m, const char *key, const char *want)
{
    const char *got = need_str(m, key);
    if (strcmp(got, want) != 0)
        fail_msg("DLQ entry %s: header %s is '%s', want '%s'", m->message_id, key, got, want);
}

/* Every DLQ entry: a permanent task of this run, with all its metadata and
 * the task as published; every permanent task has one. Read without
 * consuming: the replay finds them all. */
static void check_dlq(chaos *c)
{
    size_t n = 0;
    cwtest_msg *m = cwtest_peek(c->env, c->env->dlq, &n);
    workers_refresh(&c->k);
    for (unsigned i = 0; i < c->n; i++)
        c->t[i].dlq_copies = 0;
    long extra_unexplained = 0;
    char first_bad[256] = "";
    /* Copies of one task: all but one were published by a worker killed
     * before it recorded the outcome. */
    long *first_pid = calloc(c->n, sizeof *first_pid);
    if (!first_pid)
        fail_msg("out of memory");
    for (size_t k = 0; k < n; k++) {
        const cwtest_msg *e = &m[k];
        long i = task_index(c, e->message_id);
        if (i < 0) {
            const char *cls = cwtest_msg_str(e, "cw-error-class");
            const char *why = cwtest_msg_str(e, "cw-error");
            fail_msg("the DLQ holds '%s', not a task of this run (class %s: %s)",
                     e->message_id ? e->message_id : "(no message ID)", cls ? cls : "?",
                     why ? why : "?");
        }
        task *t = &c->t[i];
        if (t->kind != K_PERMANENT)
            fail_msg("DLQ entry %s is not a permanently failing task (kind %d): %s: %s",
                     e->message_id, t->kind, cwtest_msg_str(e, "cw-error-class"),
                     cwtest_msg_str(e, "cw-error"));
        /* The task as published. */
        char saga[32], body[512], want[512];
        task_saga((unsigned)i, saga, sizeof saga);
        task_body(c, (unsigned)i, body, sizeof body);
        if (!e->type || strcmp(e->type, "it.apply") != 0)
            fail_msg("DLQ entry %s: type '%s'", e->message_id, e->type ? e->type : "(none)");
        if (!e->correlation_id || strcmp(e->correlation_id, saga) != 0)
            fail_msg("DLQ entry %s: saga ID '%s', want '%s'", e->message_id,
                     e->correlation_id ? e->correlation_id : "(none)", saga);
        if (!e->content_type || strcmp(e->content_type, "application/json") != 0)
            fail_msg("DLQ entry %s: content type '%s'", e->message_id,
                     e->content_type ? e->content_type : "(none)");
        if (!e->has_timestamp || e->timestamp != t->timestamp)
            fail_msg("DLQ entry %s: timestamp %s%llu, want %u", e->message_id,
                     e->has_timestamp ? "" : "(absent) ", (unsigned long long)e->timestamp,
                     t->timestamp);
        if (e->body_len != strlen(body) || memcmp(e->body, body, e->body_len) != 0)
            fail_msg("DLQ entry %s: body '%s', want '%s'", e->message_id, e->body, body);
        /* What compworker added (dlq/deadletter.c). */
        expect_str(e, "cw-error-class", "permanent");
        snprintf(want, sizeof want, "missing %s", c->faults_file);
        expect_str(e, "cw-error", want);
        int64_t attempt;
        if (!cwtest_msg_int(e, "cw-attempt", &attempt) || attempt != 1)
            fail_msg("DLQ entry %s: cw-attempt is missing or not 1", e->message_id);
        expect_iso8601(e->message_id, cwtest_msg_str(e, "cw-failed-at"));
        expect_str(e, "cw-handler", "ledger 1.0.0");
        expect_str(e, "cw-queue", c->env->queue);
        expect_str(e, "cw-original-exchange", "cw.tasks");
        expect_str(e, "cw-original-routing-key", "it.apply");
        long pid = owner_pid(c, need_str(e, "cw-worker"));
        if (pid < 0 || !pid_is_worker(c, pid))
            fail_msg("DLQ entry %s: cw-worker '%s' is not a worker of the pool", e->message_id,
                     cwtest_msg_str(e, "cw-worker"));
        if (t->dlq_copies++ == 0) {
            first_pid[i] = pid;
        } else {
            /* An earlier copy's worker must have died before the record. */
            c->dlq_windows++;
            if (!kill_of(c, first_pid[i])) {
                if (!extra_unexplained++)
                    snprintf(first_bad, sizeof first_bad, "%s (copies by pids %ld and %ld)",
                             e->message_id, first_pid[i], pid);
            }
            first_pid[i] = pid;
        }
    }
    free(first_pid);
    c->dlq_entries = (long)n;
    cwtest_msgs_free(m, n);
    c->dlq_distinct = 0;
    for (unsigned i = 0; i < c->n; i++) {
        if (c->t[i].kind == K_PERMANENT && c->t[i].dlq_copies == 0) {
            char id[64];
            task_id(c, i, id, sizeof id);
            fail_msg("permanently failing task %s is not in the DLQ", id);
        }
        c->dlq_distinct += c->t[i].dlq_copies > 0;
    }
    if (extra_unexplained)
        fail_msg("%ld DLQ entries are second copies of a task no kill explains, e.g. %s",
                 extra_unexplained, first_bad);
}

/* Every task applied (or, with `dead_ok`, dead-lettered: permanent ones),
 * each double application explained by a kill in the window; counts them. */
static void check_applied(chaos *c, bool dead_ok, const char *phase)
{
    workers_refresh(&c->k); /* workers started since the killer stopped */
    store_read(c);
    ledger_read(c);
    effects_read(c);
    followups_take(c);
    long unexplained = 0, bad = 0, windows = 0, distinct = 0;
    c->effects_twice = 0;
    for (unsigned i = 0; i < c->n; i++) {
        /* The effect through the store's transaction: once, with the done
         * record, whatever the kills; its follow-up with it, never without. */
        task *t = &c->t[i];
        char id[64];
        task_id(c, i, id, sizeof id);
        bool done = t->state == 2;
        c->effects_twice += t->n_effects > 1;
        if (t->n_effects != (done ? 1 : 0) && bad++ < EXAMPLES)
            print_error("%s: %s (store state %u): %u effect rows in the store, want %d\n", phase,
                        id, t->state, t->n_effects, done ? 1 : 0);
        if (done && t->n_followups == 0 && bad++ < EXAMPLES)
            print_error("%s: %s is done, but its follow-up never came\n", phase, id);
        if (!done && t->n_followups && bad++ < EXAMPLES)
            print_error("%s: %s is not done (state %u), yet %u follow-ups of it came\n", phase, id,
                        t->state, t->n_followups);
        if (done && t->n_followups && t->followup_attempt != applying_attempt(t) &&
            bad++ < EXAMPLES)
            print_error("%s: %s: its follow-up comes from attempt %u, want %u\n", phase, id,
                        t->followup_attempt, applying_attempt(t));
    }
    for (unsigned i = 0; i < c->n; i++) {
        task *t = &c->t[i];
        char id[64];
        task_id(c, i, id, sizeof id);
        distinct += t->n_apps > 0;
        if (t->kind == K_PERMANENT && dead_ok) {
            if (t->n_apps || t->state != 3) {
                if (bad++ < EXAMPLES)
                    print_error("%s: permanently failing %s: %u applications, store state %u "
                                "(want 0 and dead)\n",
                                phase, id, t->n_apps, t->state);
            }
            continue;
        }
        if (t->n_apps == 0 || t->state != 2) {
            if (bad++ < EXAMPLES)
                print_error("%s: %s (kind %d): %u applications, store state %u (want >= 1 "
                            "and done)\n",
                            phase, id, t->kind, t->n_apps, t->state);
            continue;
        }
        if (t->n_apps > MAX_APPS) {
            if (bad++ < EXAMPLES)
                print_error("%s: %s applied %u times\n", phase, id, t->n_apps);
            continue;
        }
        const app *last = &t->apps[t->n_apps - 1];
        unsigned want_attempt = applying_attempt(t);
        for (unsigned k = 0; k < t->n_apps; k++) {
            if (t->apps[k].attempt != want_attempt && bad++ < EXAMPLES)
                print_error("%s: %s (kind %d) applied at attempt %u, want %u\n", phase, id, t->kind,
                            t->apps[k].attempt, want_attempt);
            if (!pid_is_worker(c, t->apps[k].pid) && bad++ < EXAMPLES)
                print_error("%s: %s applied by pid %ld, not a worker of the pool\n", phase, id,
                            t->apps[k].pid);
        }
        /* A task that never fails is settled once, however often it ran: a
         * second settle of an applied task would mean its record did not
         * stop the second run. (One that fails may have fewer settles than
         * failures: a retry copy the broker took just as the connection
         * dropped goes on, unrecorded, while the original is redelivered.) */
        if (t->kind == K_PLAIN ? t->attempts != 1 : t->attempts < 1) {
            if (bad++ < EXAMPLES)
                print_error("%s: %s (kind %d): the store counts %u settled attempts, want %s\n",
                            phase, id, t->kind, t->attempts,
                            t->kind == K_PLAIN ? "1" : "at least 1");
        }
        /* The store's record was settled by the worker of the last
         * application: no earlier one recorded it. */
        if (t->settled_by != last->pid) {
            if (unexplained++ < EXAMPLES)
                print_error("%s: %s: the store's record was settled by pid %ld, its last "
                            "application was made by pid %ld\n",
                            phase, id, t->settled_by, last->pid);
        }
        for (unsigned k = 0; k + 1 < t->n_apps; k++) {
            const app *a = &t->apps[k], *next = &t->apps[k + 1];
            const kill_rec *kr = kill_of(c, a->pid);
            windows++;
            if (!kr || kr->wall_ms < a->at || next->at < kr->wall_ms) {
                if (unexplained++ < EXAMPLES) {
                    if (kr)
                        print_error("%s: %s applied by pid %ld at %lld and again by pid %ld at "
                                    "%lld; pid %ld was killed at %lld, outside that window\n",
                                    phase, id, a->pid, (long long)a->at, next->pid,
                                    (long long)next->at, a->pid, (long long)kr->wall_ms);
                    else
                        print_error("%s: %s applied by pid %ld at %lld and again by pid %ld at "
                                    "%lld; pid %ld was never killed\n",
                                    phase, id, a->pid, (long long)a->at, next->pid,
                                    (long long)next->at, a->pid);
                }
            }
        }
    }
    c->windows = windows;
    c->applied_distinct = distinct;
    if (bad)
        fail_msg("%s: %ld tasks not as they should be (above)", phase, bad);
    if (unexplained)
        fail_msg("%s: %ld double applications not explained by a kill between the effect and "
                 "the store's record (above)",
                 phase, unexplained);
}

/* Every worker that died was killed by the test: the supervisor's log has
 * one "killed by SIGKILL" line per kill, of a pid the test killed, and no
 * other exit of a worker (a crash, an exit code, a stop that needed a
 * SIGKILL) or of the monitor. */
static void check_exits(chaos *c)
{
    FILE *f = fopen(c->env->log, "r");
    if (!f)
        fail_msg("cannot read %s", c->env->log);
    char line[4096];
    size_t killed = 0;
    while (fgets(line, sizeof line, f)) {
        if (!strstr(line, "role=\"supervisor\""))
            continue;
        const char *p = strstr(line, "msg=\"worker ");
        unsigned index;
        long pid;
        int off = 0;
        if (p && sscanf(p, "msg=\"worker %u (pid %ld) %n", &index, &pid, &off) == 2 && off > 0) {
            const char *what = p + off;
            if (strncmp(what, "has stopped (exited with code 0)", 32) == 0)
                continue; /* the SIGTERM at the end */
            if (strncmp(what, "killed by SIGKILL after", 23) == 0 && kill_of(c, pid)) {
                killed++;
                continue;
            }
            fclose(f);
            fail_msg("a worker the test did not kill died: %s", line);
        }
        if (strstr(line, "msg=\"the monitor ")) {
            fclose(f);
            fail_msg("the monitor died: %s", line);
        }
    }
    fclose(f);
    if (killed != c->k.n_kills)
        fail_msg("the test killed %zu workers; the supervisor saw %zu of them die", c->k.n_kills,
                 killed);
}

/* No sanitizer report in a file. */
static void expect_no_sanitizer(const char *path)
{
    FILE *f = fopen(path, "r");
    if (!f)
        return;
    char line[4096];
    while (fgets(line, sizeof line, f)) {
        if (strstr(line, "AddressSanitizer") || strstr(line, "LeakSanitizer") ||
            strstr(line, "runtime error:") || strstr(line, "UndefinedBehaviorSanitizer")) {
            fclose(f);
            fail_msg("a sanitizer reported in %s: %s", path, line);
        }
    }
    fclose(f);
}

/* ---- the CLI ----------------------------------------------------------------- */

/* Runs `compworker ARGS` (NULL-terminated), its output in <dir>/NAME.out
 * and .err; returns the exit code. */
static int cli(chaos *c, const char *name, char *const *args)
{
    cwtest_env *env = c->env;
    char out[400], err[400];
    snprintf(out, sizeof out, "%s/%s.out", env->dir, name);
    snprintf(err, sizeof err, "%s/%s.err", env->dir, name);
    fflush(NULL);
    pid_t pid = fork();
    if (pid < 0)
        fail_msg("fork: %s", strerror(errno));
    if (pid == 0) {
        prctl(PR_SET_PDEATHSIG, SIGKILL);
        int fo = open(out, O_WRONLY | O_CREAT | O_TRUNC, 0644);
        int fe = open(err, O_WRONLY | O_CREAT | O_TRUNC, 0644);
        int fi = open("/dev/null", O_RDONLY);
        if (fo < 0 || fe < 0 || fi < 0)
            _exit(126);
        dup2(fo, STDOUT_FILENO);
        dup2(fe, STDERR_FILENO);
        dup2(fi, STDIN_FILENO);
        for (int i = 3; i < 1024; i++)
            close(i);
        unsetenv("CW_AMQP_URL");
        char *argv[32];
        int n = 0;
        argv[n++] = env->exe;
        for (char *const *a = args; *a && n < 31; a++)
            argv[n++] = *a;
        argv[n] = NULL;
        execv(env->exe, argv);
        _exit(127);
    }
    int64_t deadline = cwtest_now_ms() + CLI_TIMEOUT_MS;
    int status;
    for (;;) {
        pid_t w = waitpid(pid, &status, WNOHANG);
        if (w == pid)
            break;
        if (cwtest_now_ms() > deadline) {
            kill(pid, SIGKILL);
            waitpid(pid, &status, 0);
            fail_msg("compworker %s did not finish within %d ms", name, CLI_TIMEOUT_MS);
        }
        cwtest_sleep_ms(20);
    }
    expect_no_sanitizer(err);
    return WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
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

/* ---- the pool's metrics ------------------------------------------------------- */

/* The pool's /metrics (the address from the monitor's log); free() it. */
static char *metrics_get(chaos *c)
{
    char base[256];
    cwtest_metrics_base(c->env, base, sizeof base);
    long code;
    char *body = cwtest_http_get(base, "/metrics", &code);
    if (code != 200)
        fail_msg("GET %s/metrics: HTTP %ld", base, code);
    return body;
}

/* The sum of the samples of metric `name` whose labels contain `has`. */
static double metric_sum(const char *body, const char *name, const char *has)
{
    double sum = 0;
    size_t n = strlen(name);
    for (const char *p = body; p && *p; p = strchr(p, '\n'), p = p ? p + 1 : NULL) {
        if (strncmp(p, name, n) != 0 || p[n] != '{')
            continue;
        const char *close = strstr(p, "} ");
        const char *end = strchr(p, '\n');
        if (!close || (end && close > end))
            continue;
        char labels[512];
        snprintf(labels, sizeof labels, "%.*s", (int)(close - p), p);
        if (!has || strstr(labels, has))
            sum += strtod(close + 2, NULL);
    }
    return sum;
}

/* The pool's counters (shared memory, a killed worker's folded into the
 * pool's) agree with what the ledger and the DLQ saw: a counter is bumped
 * after what it counts, so a kill may leave one thing uncounted, never one
 * counted twice. */
static void check_metrics(chaos *c)
{
    char pool[200];
    snprintf(pool, sizeof pool, "pool=\"%s\"", c->env->name);
    double kills = (double)c->k.n_kills, restarts;
    char *body;
    /* A restart is counted when it happens: the last one may still be in
     * its backoff (30 s at most). */
    int64_t deadline = cwtest_now_ms() + 45000;
    for (;;) {
        body = metrics_get(c);
        restarts = metric_sum(body, "compworker_worker_restarts_total", pool);
        if (restarts >= kills || cwtest_now_ms() >= deadline)
            break;
        free(body);
        chaos_sleep(c, 250);
    }
    double ok = metric_sum(body, "compworker_tasks_succeeded_total", pool);
    double dead = metric_sum(body, "compworker_tasks_dead_lettered_total",
                             "error_class=\"permanent\"");
    free(body);
    if (restarts != kills)
        fail_msg("metrics: %g worker restarts, but the test killed %zu workers", restarts,
                 c->k.n_kills);
    if (ok > (double)c->applied_rows || ok < (double)c->applied_rows - kills)
        fail_msg("metrics: %g tasks succeeded, the ledger has %ld applications (%zu kills)", ok,
                 c->applied_rows, c->k.n_kills);
    if (dead > (double)c->dlq_entries || dead < (double)c->dlq_entries - kills)
        fail_msg("metrics: %g tasks dead-lettered as permanent, the DLQ held %ld (%zu kills)", dead,
                 c->dlq_entries, c->k.n_kills);
    c->metric_ok = (long)ok;
}

/* ---- the run ----------------------------------------------------------------- */

static void print_summary(const chaos *c)
{
    long s[7];
    store_states(c, s);
    printf("\n"
           "chaos run, seed %llu (CW_CHAOS_SEED=%llu reproduces the task mix and kill choices)\n"
           "  published          %6u distinct tasks (+%u duplicate message IDs sent)\n"
           "  transient          %6u fail once, %u fail twice (handler calls retried: %ld)\n"
           "  permanent          %6u fail until the fault is removed\n"
           "  workers killed     %6zu (SIGKILL; %zu worker processes started in all)\n"
           "  broker restarts    %6u (restart-app took %lld ms; %u worker sessions lost)\n"
           "  applied            %6ld distinct before the replay, %ld after (%ld ledger rows)\n"
           "  dead-lettered      %6ld distinct (%ld DLQ entries)\n"
           "  replayed           %6ld from the DLQ, all applied after the fault was removed\n"
           "  windows            %6ld double applications, each a kill between the handler's\n"
           "                            effect and the store's record (+%ld second DLQ copies)\n"
           "  store effects      %6ld rows in it_effects (cw_task_%s), %ld tasks with two\n"
           "  follow-ups         %6ld tasks' follow-ups received, %ld deliveries (the rest\n"
           "                            repeats of the same message ID)\n"
           "  handler calls      %6ld (/metrics: %ld succeeded)\n"
           "  store              %6ld done, %ld dead, %ld other\n"
           "  time               publish %.1f s, drain %.1f s, replay %.1f s, total %.1f s\n\n",
           (unsigned long long)c->seed, (unsigned long long)c->seed, c->n, c->dups_sent,
           c->transient1, c->transient2, c->retried_calls, c->permanent, c->k.n_kills,
           c->k.n_workers, c->restarts, (long long)c->restart_ms, c->reconnects, c->applied_before,
           c->applied_distinct, c->applied_rows, c->dlq_distinct, c->dlq_entries, c->replayed,
           c->windows, c->dlq_windows, c->effect_rows, c->pg_schema[0] ? "pg" : "sqlite",
           c->effects_twice, c->followups_distinct, c->followups_received, c->calls, c->metric_ok,
           s[2], s[3], s[1] + s[4] + s[5] + s[6], (c->t_published - c->t_start) / 1000.0,
           (c->t_drained - c->t_published) / 1000.0, (c->t_replayed - c->t_drained) / 1000.0,
           (c->t_replayed - c->t_start) / 1000.0);
    fflush(stdout);
}

static void test_chaos(void **state)
{
    chaos *c = calloc(1, sizeof *c);
    if (!c)
        fail_msg("out of memory");
    c->n = env_uint("CW_CHAOS_TASKS", DEFAULT_TASKS);
    if (c->n < 1000)
        fail_msg("CW_CHAOS_TASKS must be at least 1000");
    unsigned publish_s = env_uint("CW_CHAOS_SECONDS", DEFAULT_PUBLISH_S);
    const char *seed = getenv("CW_CHAOS_SEED");
    c->seed = seed && *seed ? strtoull(seed, NULL, 0)
                            : ((uint64_t)wall_ms() ^ ((uint64_t)getpid() << 32));
    c->rng = c->seed;
    printf("chaos: seed %llu, %u tasks published over %u s\n", (unsigned long long)c->seed, c->n,
           publish_s);
    fflush(stdout);
    /* As framework/owner.c names this host in owner strings (64 bytes). */
    if (gethostname(c->host, 64) != 0)
        snprintf(c->host, sizeof c->host, "localhost");
    c->host[63] = '\0';

    /* A steady pool: batches of 32 (prefetch 64), retries after 100 ms to
     * 1.6 s, up to 4 attempts, so a task failing twice never runs out.
     * max_deliveries is raised from 5: a task held in the batches of five
     * killed workers in a row would otherwise be called poison, which is
     * right but not what this run looks for. */
    char extra[1024];
    cwtest_pool_opts po = {
        .pool_lines = "shutdown_timeout = 20s\nmetrics_listen = 127.0.0.1:0\n",
        .extra = extra,
    };
    snprintf(c->followups, sizeof c->followups, "cw.it-chaos-%ld.followups", (long)getpid());
    snprintf(extra, sizeof extra,
             "synchronous = normal\nstore_effects = true\nfollowup = %s\n"
             "\n[broker]\nprefetch = 64\n"
             "\n[retry]\nmax_attempts = 4\ninterval = 100ms\nbackoff_rate = 2.0\n"
             "max_delay = 1600ms\njitter = full\nmax_deliveries = 10\n",
             c->followups);
    /* CW_CHAOS_STORE=postgresql: the same run on the fleet store, in a
     * schema of its own on the test's PostgreSQL server. */
    const char *store_kind = getenv("CW_CHAOS_STORE");
    char store_lines[1024];
    if (store_kind && strcmp(store_kind, "postgresql") == 0) {
        snprintf(c->pg_schema, sizeof c->pg_schema, "chaos_%ld", (long)getpid());
        cwtest_pg_store_lines(store_lines, sizeof store_lines, c->pg_schema);
        po.store_lines = store_lines;
    } else if (store_kind && *store_kind && strcmp(store_kind, "sqlite") != 0) {
        fail_msg("CW_CHAOS_STORE must be sqlite or postgresql, not '%s'", store_kind);
    }
    printf("chaos: store %s\n", c->pg_schema[0] ? "postgresql" : "sqlite");
    cwtest_env *env = cwtest_begin(state, "chaos", &po);
    c->env = env;
    cwtest_queue_declare(env, c->followups);
    snprintf(c->faults_file, sizeof c->faults_file, "%s/faults-removed", env->dir);
    snprintf(c->store, sizeof c->store, "%s/store.db", env->dir);
    c->t = calloc(c->n, sizeof *c->t);
    uint8_t *dup_after = calloc(c->n, 1);
    if (!c->t || !dup_after)
        fail_msg("out of memory");
    plan(c, dup_after);

    env->run_args[0] = "--workers";
    env->run_args[1] = "2";
    cwtest_worker_start(env);
    cwtest_log_wait(env, "consuming from", 2, CWTEST_TIMEOUT_MS);

    /* ---- chaos: publish at a steady pace while killing and restarting ---- */
    c->t_start = cwtest_now_ms();
    killer_start(c);
    int64_t publish_ms = (int64_t)publish_s * 1000;
    int64_t paused_ms = 0; /* the broker restart does not count against the pace */
    for (unsigned i = 0; i < c->n;) {
        unsigned end = i + CHUNK < c->n ? i + CHUNK : c->n;
        uint32_t now_s = (uint32_t)(wall_ms() / 1000);
        for (; i < end; i++) {
            c->t[i].timestamp = now_s;
            send_task(c, i);
            c->published++;
            for (unsigned d = 0; d < dup_after[i]; d++)
                send_dup(c, i);
        }
        cwtest_confirm_all(env);
        if (!c->restarts && i >= (unsigned)(c->n * RESTART_AT)) {
            int64_t t0 = cwtest_now_ms();
            printf("chaos: restarting the broker after %u tasks, %zu kills\n", i, kills_so_far(c));
            fflush(stdout);
            cwtest_broker_restart_app(env, false);
            c->restart_ms = cwtest_now_ms() - t0;
            paused_ms += c->restart_ms;
            c->restarts++;
        }
        int64_t due = c->t_start + paused_ms + publish_ms * i / c->n;
        chaos_sleep(c, due - cwtest_now_ms());
    }
    c->t_published = cwtest_now_ms();
    printf("chaos: %u tasks and %u duplicates published in %.1f s, %zu kills so far\n", c->n,
           c->dups_sent, (c->t_published - c->t_start) / 1000.0, kills_so_far(c));
    fflush(stdout);

    /* Keep killing a little longer, then until every task is settled. */
    pthread_mutex_lock(&c->k.lock);
    c->k.until_ms = cwtest_now_ms() + DRAIN_KILLS_MS;
    pthread_mutex_unlock(&c->k.lock);
    drain(c, true, "after the chaos");
    killer_stop(c);
    c->t_drained = cwtest_now_ms();
    if (c->k.n_kills < 3)
        fail_msg("only %zu workers were killed during the run: the chaos was too short",
                 c->k.n_kills);
    /* The workers met the restart (the tasks published after it were
     * applied, so they reconnected). */
    c->reconnects = cwtest_log_count(env, "broker session lost");
    if (c->reconnects + cwtest_log_count(env, "no broker session") == 0)
        fail_msg("no worker noticed the broker restart; see %s", env->log);

    check_applied(c, true, "after the chaos");
    check_dlq(c);
    if (c->applied_distinct + c->dlq_distinct != (long)c->n)
        fail_msg("published %u distinct tasks, but %ld applied + %ld dead-lettered", c->n,
                 c->applied_distinct, c->dlq_distinct);
    long windows_before = c->windows;
    c->applied_before = c->applied_distinct;
    printf("chaos: drained after %.1f s: %ld applied, %ld dead-lettered, %ld windows\n",
           (c->t_drained - c->t_published) / 1000.0, c->applied_distinct, c->dlq_distinct,
           c->windows);
    fflush(stdout);

    /* ---- the fault removed: replay the DLQ with the real CLI ---- */
    cwtest_write_file(c->faults_file, "fixed\n", 0644);
    char *args[] = {"dlq", "replay", "-c", env->ini, "--all", "--json", NULL};
    int code = cli(c, "replay", args);
    char path[400];
    snprintf(path, sizeof path, "%s/replay.out", env->dir);
    /* One JSON object per task replayed, then the summary. */
    size_t n_docs = 0;
    struct json_object **docs = cwtest_json_read(path, &n_docs);
    int64_t replayed = -1;
    if (n_docs == 0 || !cwtest_json_int(docs[n_docs - 1], "replayed", &replayed))
        replayed = -1;
    cwtest_json_free(docs, n_docs);
    c->replayed = (long)replayed;
    char *out = slurp(path);
    if (code != 0 || c->replayed != c->dlq_entries) {
        snprintf(path, sizeof path, "%s/replay.err", env->dir);
        char *err = slurp(path);
        fail_msg("dlq replay --all: exit code %d, %ld replayed of %ld DLQ entries\n"
                 "--- stdout (last 2000 bytes) ---\n%s\n--- stderr ---\n%s",
                 code, c->replayed, c->dlq_entries,
                 strlen(out) > 2000 ? out + strlen(out) - 2000 : out, err);
    }
    free(out);
    drain(c, false, "after the replay");
    c->t_replayed = cwtest_now_ms();
    cwtest_queue_wait(env, env->dlq, 0, CWTEST_TIMEOUT_MS);
    check_applied(c, false, "after the replay");
    if (c->windows != windows_before)
        fail_msg("after the replay: %ld double applications, %ld before it (no kill since)",
                 c->windows, windows_before);
    for (unsigned i = 0; i < c->n; i++) {
        if (c->t[i].kind == K_PERMANENT && c->t[i].n_apps != 1) {
            char id[64];
            task_id(c, i, id, sizeof id);
            fail_msg("replayed task %s applied %u times, want once", id, c->t[i].n_apps);
        }
    }
    if (c->applied_distinct != (long)c->n)
        fail_msg("after the replay %ld of %u tasks are applied", c->applied_distinct, c->n);

    check_metrics(c);
    int stop = cwtest_worker_stop(env, SIGTERM, 30000);
    if (stop != 0)
        fail_msg("the pool exited with code %d after SIGTERM, not 0; see %s", stop, env->log);
    expect_no_sanitizer(env->log);
    check_exits(c);
    print_summary(c);
    free(dup_after);
    free(c->t);
    free(c);
    if (getenv("CW_CHAOS_KEEP") && *getenv("CW_CHAOS_KEEP"))
        printf("chaos: CW_CHAOS_KEEP is set: keeping %s\n", env->dir); /* teardown keeps it */
    else
        cwtest_pass(env);
}

/* ---- what the chaos run found ------------------------------------------------ */

/* A busy duplicate is deferred through the delay topology as a twin of the
 * delivery. The twin came back with the delay topology's exchange and
 * routing key (cw.delay.NN, "0.0...cw.<queue>") and no cw-original-*
 * headers, so when it then failed, its DLQ copy named the delay topology as
 * where the task was first published, and a replay sent it there. */
static void test_deferred_twin_keeps_origin(void **state)
{
    cwtest_pool_opts po = {.pool_lines = "workers = 2\n", .extra = "\n[broker]\nprefetch = 1\n"};
    cwtest_env *env = cwtest_begin(state, "twin", &po);
    cwtest_worker_start(env);
    cwtest_log_wait(env, "consuming from", 2, CWTEST_TIMEOUT_MS);

    /* Copy 1 is in progress in one worker for 1.5 s, then fails
     * transiently: its retry comes back in 8 s. */
    cwtest_send_task(env, "twin-1", "saga-twin",
                     "{\"pause_ms\":1500,\"fail_times\":9,\"retry_after_ms\":8000}");
    cwtest_confirm_all(env);
    cwtest_calls_wait(env, "twin-1", 1, CWTEST_TIMEOUT_MS);
    /* Copy 2, the same message ID, reaches the other worker meanwhile: in
     * progress elsewhere, so it is deferred (2 s). When it comes back the
     * task is retrying, so the twin runs, and fails permanently. */
    cwtest_send_task(env, "twin-1", "saga-twin", "{\"fail\":\"declined\"}");
    cwtest_confirm_all(env);
    cwtest_log_wait(env, "in progress in another worker", 1, CWTEST_TIMEOUT_MS);
    cwtest_queue_wait(env, env->dlq, 1, CWTEST_TIMEOUT_MS);

    size_t n = 0;
    cwtest_msg *m = cwtest_drain(env, env->dlq, &n);
    assert_int_equal(n, 1);
    expect_str(&m[0], "cw-error-class", "permanent");
    expect_str(&m[0], "cw-error", "declined");
    expect_str(&m[0], "cw-original-exchange", "cw.tasks");
    expect_str(&m[0], "cw-original-routing-key", "it.apply");
    cwtest_msgs_free(m, n);
    /* Copy 1's retry comes back to a dead-lettered task: a duplicate. */
    cwtest_log_wait(env, "duplicate skipped: message ID already dead-lettered", 1,
                    CWTEST_TIMEOUT_MS);
    assert_int_equal(cwtest_ledger_rows(env), 0);
    assert_int_equal(cwtest_worker_stop(env, SIGTERM, 30000), 0);
    expect_no_sanitizer(env->log);
    cwtest_pass(env);
}

/* The DLQ may hold two copies of one task (a kill between a worker's DLQ
 * copy and its record: the chaos run counts them). `dlq replay --all`
 * republished the first copy, and then refused the second as "being handled
 * right now" (or, a moment later, as already applied): it stayed in the
 * DLQ and the replay exited 1. It is now removed as a copy of a task the
 * replay republished already. */
static void test_replay_duplicate_copies(void **state)
{
    cwtest_pool_opts po = {.extra = "\n[broker]\nprefetch = 1\n"};
    cwtest_env *env = cwtest_begin(state, "dlqdup", &po);
    chaos c = {.env = env};
    cwtest_worker_start(env);

    cwtest_header h[] = {
        {.key = "cw-error-class", .kind = CWTEST_STR, .str = "permanent"},
        {.key = "cw-error", .kind = CWTEST_STR, .str = "missing /tmp/fixed-since"},
        {.key = "cw-failed-at", .kind = CWTEST_STR, .str = "2026-11-24T21:50:03.123Z"},
        {.key = "cw-original-exchange", .kind = CWTEST_STR, .str = "cw.tasks"},
        {.key = "cw-original-routing-key", .kind = CWTEST_STR, .str = "it.apply"},
        {.key = "cw-attempt", .kind = CWTEST_I32, .num = 1},
    };
    cwtest_out m = {.exchange = "cw.dlx",
                    .routing_key = env->dlq,
                    .message_id = "dup-1",
                    .type = "it.apply",
                    .correlation_id = "saga-dup",
                    .content_type = "application/json",
                    .body = "{\"pause_ms\":1000}",
                    .headers = h,
                    .n_headers = sizeof h / sizeof *h};
    cwtest_send(env, &m);
    cwtest_send(env, &m);
    cwtest_confirm_all(env);
    cwtest_queue_wait(env, env->dlq, 2, CWTEST_TIMEOUT_MS);

    /* --rate 5: the second copy is looked at 200 ms after the first was
     * republished, while the worker is running it. */
    char *args[] = {"dlq", "replay", "-c", env->ini, "--all", "--rate", "5", "--json", NULL};
    int code = cli(&c, "replay", args);
    char path[400];
    snprintf(path, sizeof path, "%s/replay.out", env->dir);
    char *out = slurp(path);
    if (code != 0 || !strstr(out, "replayed already"))
        fail_msg("dlq replay --all of two copies: exit code %d\n%s", code, out);
    free(out);
    size_t n = 0;
    struct json_object **docs = cwtest_json_read(path, &n);
    int64_t replayed = -1, duplicates = -1;
    assert_true(n == 3 && cwtest_json_int(docs[2], "replayed", &replayed));
    assert_int_equal(replayed, 2);
    /* The summary says which of them was a further copy, removed unpublished. */
    assert_true(cwtest_json_int(docs[2], "duplicates", &duplicates));
    assert_int_equal(duplicates, 1);
    cwtest_json_free(docs, n);

    cwtest_queue_wait(env, env->dlq, 0, CWTEST_TIMEOUT_MS);
    cwtest_ledger_wait(env, 1, CWTEST_TIMEOUT_MS);
    cwtest_queue_wait(env, env->queue, 0, CWTEST_TIMEOUT_MS);
    cwtest_sleep_ms(500);
    assert_int_equal(cwtest_ledger_count_id(env, "dup-1"), 1);
    assert_int_equal(cwtest_worker_stop(env, SIGTERM, 30000), 0);
    expect_no_sanitizer(env->log);
    cwtest_pass(env);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_teardown(test_deferred_twin_keeps_origin, cwtest_teardown),
        cmocka_unit_test_teardown(test_replay_duplicate_copies, cwtest_teardown),
        cmocka_unit_test_teardown(test_chaos, cwtest_teardown),
    };
    const char *only = getenv("CW_CHAOS_ONLY"); /* e.g. test_chaos */
    if (only && *only)
        cmocka_set_test_filter(only);
    curl_global_init(CURL_GLOBAL_DEFAULT);
    int rc = cmocka_run_group_tests(tests, NULL, NULL);
    curl_global_cleanup();
    return rc;
}
