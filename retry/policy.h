/* Internal: retry policies — backoff arithmetic, jitter and the random
 * numbers it draws.
 *
 * A policy (cw_retry_policy, in framework/config.h) comes in layers: the
 * built-in defaults, the pool's [retry] section, a [handler TYPE] section and
 * what a plugin registers; each layer sets some fields (CW_RETRY_SET_*) and
 * inherits the rest (cw_retry_policy_merge()).
 *
 * After n failed attempts the next one waits
 *     min(max_delay, interval * backoff_rate^(n-1))
 * milliseconds, then jittered (cw_retry_jitter_ms()). Every function here is
 * pure, thread-safe and fork-safe, except cw_random64() which keeps a
 * per-thread state (see there). */
#ifndef CW_RETRY_POLICY_H
#define CW_RETRY_POLICY_H

#include <stdbool.h>
#include <stdint.h>

#include "framework/config.h"
#include "framework/limits.h"

/* Fills `p` with the defaults of [retry] (CW_RETRY_DEFAULT_* in
 * framework/limits.h). */
void cw_retry_policy_default(cw_retry_policy *p);

/* Copies into `into` the fields of `layer` flagged in `set` (CW_RETRY_SET_*);
 * the others are left as they are. */
void cw_retry_policy_merge(cw_retry_policy *into, const cw_retry_policy *layer, unsigned set);

/* The delay in milliseconds before the next attempt after `failed_attempts`
 * failed ones (>= 1; 0 is taken as 1), before jitter:
 * min(max_delay, interval * backoff_rate^(failed_attempts-1)), rounded to the
 * nearest millisecond. Never overflows: any power too large for an int64_t is
 * max_delay. A negative interval or max_delay counts as 0. */
int64_t cw_retry_base_delay_ms(const cw_retry_policy *p, unsigned failed_attempts);

/* `delay_ms` (negative counts as 0) spread by strategy `j`, using `random`, a
 * uniformly distributed 64-bit value the caller draws (cw_random64()), so
 * tests can be deterministic:
 *   NONE:  delay
 *   FULL:  random % (delay + 1)                            in [0, delay]
 *   EQUAL: delay/2 + random % (delay - delay/2 + 1)        in [delay/2, delay]
 * (The modulo's bias is below 2^-36 for any delay the topology can serve.) */
int64_t cw_retry_jitter_ms(cw_jitter j, int64_t delay_ms, uint64_t random);

/* True when `attempts_made` attempts (the first included) leave no more to
 * try under `p`: attempts_made >= max_attempts. */
bool cw_retry_exhausted(const cw_retry_policy *p, unsigned attempts_made);

/* A uniformly distributed 64-bit value from a splitmix64 generator seeded
 * with getrandom() (the clock and the process and thread IDs when that
 * fails). The state is per thread and is seeded again in a child after
 * fork(), so threads and processes never share a sequence. Not for
 * cryptography. Thread-safe and fork-safe. */
uint64_t cw_random64(void);

#endif
