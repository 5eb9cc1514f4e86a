/* Internal: the clocks. Wall-clock time for what is stored or shown (a
 * task's first sight, a DLQ record's failed-at, a log line), the monotonic
 * clock for every interval, timeout and deadline. All of it is thread- and
 * fork-safe and async-signal-safe (clock_gettime is). */
#ifndef CW_FRAMEWORK_CLOCK_H
#define CW_FRAMEWORK_CLOCK_H

#include <stdint.h>
#include <time.h>

/* Milliseconds since the epoch (CLOCK_REALTIME). */
int64_t cw__now_ms(void);

/* Milliseconds of CLOCK_MONOTONIC: for intervals only. */
int64_t cw__mono_ms(void);

/* Nanoseconds of CLOCK_MONOTONIC: for short durations (a handler's run). */
int64_t cw__mono_ns(void);

/* A CLOCK_MONOTONIC `ms` as a struct timespec, for pthread_cond_timedwait
 * on a condition variable whose clock is CLOCK_MONOTONIC. */
struct timespec cw__mono_timespec(int64_t ms);

#endif
