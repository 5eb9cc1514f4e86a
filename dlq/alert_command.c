/* [alert] command: run with posix_spawn (argv from the pool file, never a
 * shell), the JSON document on its stdin, its stderr kept for the log, ended
 * past the timeout or the shutdown deadline. */
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <spawn.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "dlq/alert_private.h"
#include "framework/clock.h"
#include "framework/log.h"

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
                size_t take = cw__alert_min64((int64_t)n, (int64_t)(CW_ALERT_STDERR_KEEP - *kept));
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

void cw__alert_run_command(cw_alerter *a, const char *json, const cw_log_task *task)
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
        if (now >= cw__alert_min64(limit, shutdown)) {
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
        int wait = (int)cw__alert_min64(CW_ALERT_POLL_MS, cw__alert_min64(limit, shutdown) - now);
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
        cw_log_warn(task, "alert hook failed: hook=command %s: timed out after %lld ms, killed%s",
                    path, (long long)took, note);
    else if (!reaped)
        cw_log_debug(task, "alert command %s ended (its status was collected elsewhere)", path);
    else if (WIFEXITED(status) && WEXITSTATUS(status) != 0)
        cw_log_warn(task, "alert hook failed: hook=command %s: exited with status %d%s", path,
                    WEXITSTATUS(status), note);
    else if (WIFSIGNALED(status))
        cw_log_warn(task, "alert hook failed: hook=command %s: killed by signal %d (SIG%s)%s", path,
                    WTERMSIG(status),
                    sigabbrev_np(WTERMSIG(status)) ? sigabbrev_np(WTERMSIG(status)) : "?", note);
    else
        cw_log_debug(task, "alert command %s succeeded in %lld ms", path, (long long)took);

out_close:
    close_fd(&in[0]);
    close_fd(&in[1]);
    close_fd(&err[0]);
    close_fd(&err[1]);
}
