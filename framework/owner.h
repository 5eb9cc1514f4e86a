/* Internal: who a worker is, and whether another worker still lives. */
#ifndef CW_FRAMEWORK_OWNER_H
#define CW_FRAMEWORK_OWNER_H

#include <stdbool.h>
#include <stddef.h>

/* This process's identity, "host:pid:start", where start is the process's
 * start time in clock ticks after boot (so a reused PID is told apart). */
void cw__owner_self(char *out, size_t cap);

/* A cw_owner_alive_fn: false only when `owner` names a process on this host
 * that no longer runs (or a different process under the same PID). Owners on
 * other hosts are presumed alive: their leases expire instead. */
bool cw__owner_alive(const char *owner, void *unused);

#endif
