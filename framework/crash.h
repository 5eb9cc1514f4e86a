/* Internal: crash reports of workers that die in a handler.
 *
 * A worker that dies in a handler (a fatal signal, or the watchdog ending it
 * past [pool] handler_timeout) first writes a report — which message, which
 * plugin, which signal, a backtrace — to <store path>.crash/<worker>.crash,
 * with async-signal-safe calls only. The next worker that sees a redelivery
 * notes the reports of dead workers in the store's attempt history (where
 * `compworker status` and a poison dead-letter find them) and removes them. */
#ifndef CW_FRAMEWORK_CRASH_H
#define CW_FRAMEWORK_CRASH_H

#include <stdatomic.h>
#include <stddef.h>
#include <stdint.h>

#include "compworker/client.h" /* CW_MESSAGE_ID_MAX */
#include "framework/store.h"

/* What a handler runs now, for crash reports and the handler watchdog. The
 * strings are written before started_ms is set, so that a signal handler or
 * another thread may read them whenever started_ms is non-zero. */
typedef struct cw_running {
    char message_id[CW_MESSAGE_ID_MAX + 1];
    char type[256];
    char handler[300];          /* "plugin version" */
    const void *handler_of;     /* the registry entry `handler` describes */
    _Atomic int64_t started_ms; /* CLOCK_MONOTONIC ms when it started; 0 while none runs */
} cw_running;

/* The report directory of a store file: "<path>.crash". */
void cw__crash_dir(const char *store_path, char *out, size_t cap);

/* Prepares the report file of this process and installs handlers for
 * SIGSEGV, SIGBUS, SIGILL, SIGFPE, SIGABRT and SIGSYS on an alternate stack.
 * They write a report when a handler is running, then let the signal take
 * its default course (the process dies of it). `running` (the first of the
 * handler threads' slots, see cw__crash_thread_slot()) must stay valid until
 * cw__crash_reporter_forget(running). Not thread-safe; call once, before the
 * worker runs. */
int cw__crash_reporter_install(const char *dir, const char *owner, const cw_running *running);

/* Detaches the reporter from `running` (if it is the one installed), before
 * it is freed: a fatal signal later (a plugin's teardown, a leak check that
 * aborts) then writes no report instead of reading freed memory.
 * Async-signal-safe. */
void cw__crash_reporter_forget(const cw_running *running);

/* Writes a report for the handler running on this thread (a fatal signal
 * raised in it) with `what` as its cause. Async-signal-safe. Does nothing
 * on a thread that runs no handler now, or when no reporter is installed. */
void cw__crash_report(const char *what);

/* The same for the handler of `slot` (the watchdog: "timeout after 300 s"). */
void cw__crash_report_slot(const cw_running *slot, const char *what);

/* Names `slot` as the one of the calling handler thread (NULL: none), for
 * cw__crash_report(). Call on the thread before its first handler. */
void cw__crash_thread_slot(const cw_running *slot);

/* Notes in `store` every report in `dir` whose worker is no longer alive,
 * then deletes it. Returns the number noted, or <0 on a store error. */
int cw__crash_import(cw_store *store, const char *dir);

#endif
