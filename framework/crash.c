/* Crash reports: written in a dying worker, noted by the next one. */
#include <dirent.h>
#include <errno.h>
#include <execinfo.h>
#include <fcntl.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "framework/clock.h"
#include "framework/crash.h"
#include "framework/error.h"
#include "framework/log.h"
#include "framework/owner.h"

#define CW_CRASH_FRAMES 32

static struct {
    char path[4096];
    char owner[128];
    _Atomic(const cw_running *) running; /* the handler threads' slots */
    _Atomic int written;
} cw_reporter;

static char cw_altstack[64 * 1024];

void cw__crash_dir(const char *store_path, char *out, size_t cap)
{
    snprintf(out, cap, "%s.crash", store_path);
}

/* Async-signal-safe string building. */
static size_t put(char *buf, size_t len, size_t cap, const char *s)
{
    while (*s && len + 1 < cap)
        buf[len++] = *s++;
    return len;
}

static size_t put_u64(char *buf, size_t len, size_t cap, unsigned long long v)
{
    char digits[24];
    int n = 0;
    do {
        digits[n++] = (char)('0' + v % 10);
        v /= 10;
    } while (v);
    while (n && len + 1 < cap)
        buf[len++] = digits[--n];
    return len;
}

static const char *signal_name(int sig)
{
    switch (sig) {
    case SIGSEGV: return "SIGSEGV";
    case SIGBUS: return "SIGBUS";
    case SIGILL: return "SIGILL";
    case SIGFPE: return "SIGFPE";
    case SIGABRT: return "SIGABRT";
    case SIGSYS: return "SIGSYS";
    default: return "signal";
    }
}

/* The slot of the handler thread this code runs on (NULL elsewhere). Set
 * before the thread runs its first handler, so that a signal handler reads
 * it without allocating. */
static _Thread_local const cw_running *cw_thread_slot;

void cw__crash_thread_slot(const cw_running *slot)
{
    cw_thread_slot = slot;
}

void cw__crash_report(const char *what)
{
    cw__crash_report_slot(cw_thread_slot, what);
}

void cw__crash_report_slot(const cw_running *cur, const char *what)
{
    if (!cur || !atomic_load(&cw_reporter.running) || !cw_reporter.path[0] ||
        atomic_load(&cur->started_ms) == 0)
        return;
    if (atomic_exchange(&cw_reporter.written, 1))
        return; /* one report per process: the first cause wins */
    int64_t now_ms = cw__now_ms();

    char buf[2048];
    size_t len = 0, cap = sizeof buf;
    len = put(buf, len, cap, "message_id=");
    len = put(buf, len, cap, cur->message_id);
    len = put(buf, len, cap, "\ntype=");
    len = put(buf, len, cap, cur->type);
    len = put(buf, len, cap, "\nhandler=");
    len = put(buf, len, cap, cur->handler);
    len = put(buf, len, cap, "\ncause=");
    len = put(buf, len, cap, what);
    len = put(buf, len, cap, "\nworker=");
    len = put(buf, len, cap, cw_reporter.owner);
    len = put(buf, len, cap, "\nat_ms=");
    len = put_u64(buf, len, cap, (unsigned long long)now_ms);
    len = put(buf, len, cap, "\nbacktrace:\n");

    int fd = open(cw_reporter.path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0640);
    if (fd < 0)
        return;
    ssize_t wr = write(fd, buf, len);
    (void)wr;
    void *frames[CW_CRASH_FRAMES];
    int n = backtrace(frames, CW_CRASH_FRAMES);
    if (n > 0)
        backtrace_symbols_fd(frames, n, fd);
    close(fd);
}

void cw__crash_reporter_forget(const cw_running *running)
{
    const cw_running *expected = running;
    atomic_compare_exchange_strong(&cw_reporter.running, &expected, NULL);
}

static void on_fatal(int sig)
{
    cw__crash_report(signal_name(sig));
    /* SA_RESETHAND restored the default action: die of the same signal. */
    raise(sig);
}

int cw__crash_reporter_install(const char *dir, const char *owner, const cw_running *running)
{
    if (mkdir(dir, 0750) != 0 && errno != EEXIST)
        return cw__error(CW_STATUS_IO, "cannot create the crash report directory %s: %s", dir,
                         strerror(errno));
    snprintf(cw_reporter.path, sizeof cw_reporter.path, "%s/%s.crash", dir, owner);
    snprintf(cw_reporter.owner, sizeof cw_reporter.owner, "%s", owner);
    atomic_store(&cw_reporter.running, running);
    atomic_store(&cw_reporter.written, 0);

    /* backtrace() loads libgcc on first use: do it now, not in a signal. */
    void *warm[2];
    backtrace(warm, 2);

    stack_t ss = {.ss_sp = cw_altstack, .ss_size = sizeof cw_altstack, .ss_flags = 0};
    sigaltstack(&ss, NULL);
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = on_fatal;
    sa.sa_flags = SA_ONSTACK | SA_RESETHAND | SA_NODEFER;
    sigemptyset(&sa.sa_mask);
    const int sigs[] = {SIGSEGV, SIGBUS, SIGILL, SIGFPE, SIGABRT, SIGSYS};
    for (size_t i = 0; i < sizeof sigs / sizeof *sigs; i++)
        sigaction(sigs[i], &sa, NULL);
    return 0;
}

/* Reads one report into `a` and the message ID; false if malformed. */
static bool parse_report(const char *path, char *message_id, size_t id_cap, cw_attempt_record *a)
{
    FILE *f = fopen(path, "r");
    if (!f)
        return false;
    char line[1024], type[256] = "", handler[300] = "", cause[128] = "", frames[600] = "";
    bool in_bt = false;
    int n_frames = 0, n_kept = 0;
    memset(a, 0, sizeof *a);
    message_id[0] = '\0';
    while (fgets(line, sizeof line, f)) {
        line[strcspn(line, "\n")] = '\0';
        if (in_bt) {
            /* Frames 0-1 are the reporter itself, then come the C library's
             * signal frames: keep the first few after those. */
            if (n_frames++ >= 2 && !strstr(line, "libc.so") && n_kept < 4) {
                n_kept++;
                size_t l = strlen(frames);
                if (l)
                    l = put(frames, l, sizeof frames, " < ");
                l = put(frames, l, sizeof frames, line);
                frames[l] = '\0';
            }
            continue;
        }
        char *eq = strchr(line, '=');
        if (strcmp(line, "backtrace:") == 0) {
            in_bt = true;
        } else if (eq) {
            *eq = '\0';
            const char *v = eq + 1;
            if (strcmp(line, "message_id") == 0)
                snprintf(message_id, id_cap, "%s", v);
            else if (strcmp(line, "type") == 0)
                snprintf(type, sizeof type, "%s", v);
            else if (strcmp(line, "handler") == 0)
                snprintf(handler, sizeof handler, "%s", v);
            else if (strcmp(line, "cause") == 0)
                snprintf(cause, sizeof cause, "%s", v);
            else if (strcmp(line, "worker") == 0)
                snprintf(a->worker, sizeof a->worker, "%s", v);
            else if (strcmp(line, "at_ms") == 0)
                a->at_ms = strtoll(v, NULL, 10);
        }
    }
    fclose(f);
    if (!message_id[0] || !cause[0])
        return false;
    snprintf(a->outcome, sizeof a->outcome, "crash");
    snprintf(a->error_class, sizeof a->error_class, "%.31s",
             strncmp(cause, "SIG", 3) == 0 ? cause : "timeout");
    snprintf(a->reason, sizeof a->reason, "%.100s in %.200s (%.100s)%s%.500s", cause,
             handler[0] ? handler : "an unknown handler", type, frames[0] ? "; backtrace: " : "",
             frames);
    return true;
}

int cw__crash_import(cw_store *store, const char *dir)
{
    DIR *d = opendir(dir);
    if (!d)
        return 0;
    int noted = 0;
    struct dirent *e;
    while ((e = readdir(d))) {
        size_t len = strlen(e->d_name);
        if (len <= 6 || strcmp(e->d_name + len - 6, ".crash") != 0)
            continue;
        char owner[256];
        snprintf(owner, sizeof owner, "%.*s", (int)(len - 6), e->d_name);
        if (cw__owner_alive(owner, NULL))
            continue; /* still running: it reports its own death, if any */
        char path[4096], id[CW_MESSAGE_ID_MAX + 1];
        snprintf(path, sizeof path, "%s/%s", dir, e->d_name);
        cw_attempt_record a;
        if (parse_report(path, id, sizeof id, &a)) {
            int rc = cw_store_note(store, id, &a);
            if (rc == CW_STATUS_STORE) {
                closedir(d);
                return rc;
            }
            cw_log_task lt = {.message_id = id};
            cw_log_warn(&lt, "a worker died running this task: %s", a.reason);
            noted++;
        }
        unlink(path);
    }
    closedir(d);
    return noted;
}
