/* Readiness and status notifications to the service manager.
 *
 * Two implementations behind this one interface, chosen by the build:
 * notify/systemd.c (sd_notify(3), when libsystemd is found at build time;
 * the unit is Type=notify) and notify/none.c (does nothing; the unit is
 * Type=simple). Each call is one datagram to $NOTIFY_SOCKET, or nothing when
 * the process was not started by systemd. Safe in a single-threaded
 * supervisor; never called from a signal handler. */
#ifndef CW_WORKERS_NOTIFY_H
#define CW_WORKERS_NOTIFY_H

#include <stdbool.h>

/* True when this build notifies systemd (Type=notify works). */
bool cw_notify_available(void);

/* READY=1 with a STATUS= line. */
void cw_notify_ready(const char *status);

/* RELOADING=1 (a rolling restart after SIGHUP begins). */
void cw_notify_reloading(void);

/* STOPPING=1 (a graceful shutdown begins). */
void cw_notify_stopping(void);

/* STATUS= only. */
void cw_notify_status(const char *status);

#endif
