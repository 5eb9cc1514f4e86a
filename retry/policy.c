/* Retry policies: backoff arithmetic, jitter, and a cheap random source. */
#include <errno.h>
#include <math.h>
#include <pthread.h>
#include <sys/random.h>
#include <time.h>
#include <unistd.h>

#include "retry/policy.h"

void cw_retry_policy_default(cw_retry_policy *p)
{
    p->max_attempts = CW_RETRY_DEFAULT_MAX_ATTEMPTS;
    p->interval_ms = CW_RETRY_DEFAULT_INTERVAL_MS;
    p->backoff_rate = CW_RETRY_DEFAULT_BACKOFF_RATE;
    p->max_delay_ms = CW_RETRY_DEFAULT_MAX_DELAY_MS;
    p->jitter = CW_RETRY_DEFAULT_JITTER;
}

void cw_retry_policy_merge(cw_retry_policy *into, const cw_retry_policy *layer, unsigned set)
{
    if (set & CW_RETRY_SET_MAX_ATTEMPTS)
        into->max_attempts = layer->max_attempts;
    if (set & CW_RETRY_SET_INTERVAL)
        into->interval_ms = layer->interval_ms;
    if (set & CW_RETRY_SET_BACKOFF_RATE)
        into->backoff_rate = layer->backoff_rate;
    if (set & CW_RETRY_SET_MAX_DELAY)
        into->max_delay_ms = layer->max_delay_ms;
    if (set & CW_RETRY_SET_JITTER)
        into->jitter = layer->jitter;
}

int64_t cw_retry_base_delay_ms(const cw_retry_policy *p, unsigned failed_attempts)
{
    int64_t max_delay = p->max_delay_ms > 0 ? p->max_delay_ms : 0;
    int64_t interval = p->interval_ms > 0 ? p->interval_ms : 0;
    unsigned exponent = failed_attempts > 0 ? failed_attempts - 1 : 0;
    double delay;

    if (interval >= max_delay)
        return max_delay;
    if (interval == 0) /* not 0 * inf = NaN */
        return 0;
    /* Any rate below 1 (not accepted by the configuration) is taken as 1:
     * delays never shrink. pow() of a huge exponent is +inf, and NaN fails
     * the comparison too: both give max_delay. Below max_delay the value fits
     * an int64_t, so the conversion is defined. */
    delay = (double)interval * pow(p->backoff_rate >= 1.0 ? p->backoff_rate : 1.0, exponent);
    if (!(delay < (double)max_delay))
        return max_delay;
    return (int64_t)llround(delay);
}

int64_t cw_retry_jitter_ms(cw_jitter j, int64_t delay_ms, uint64_t random)
{
    uint64_t d = delay_ms > 0 ? (uint64_t)delay_ms : 0;

    switch (j) {
    case CW_JITTER_FULL:
        /* d + 1 cannot wrap: d <= INT64_MAX. */
        return (int64_t)(random % (d + 1));
    case CW_JITTER_EQUAL: return (int64_t)(d / 2 + random % (d - d / 2 + 1));
    case CW_JITTER_NONE: break;
    }
    return (int64_t)d;
}

bool cw_retry_exhausted(const cw_retry_policy *p, unsigned attempts_made)
{
    return attempts_made >= p->max_attempts;
}

/* ---- random numbers ------------------------------------------------------ */

/* splitmix64 (Steele, Lea, Flood 2014; the seeder of xoshiro): passes
 * BigCrush, one addition and a few multiplies per value. */
static uint64_t cw_splitmix64(uint64_t *state)
{
    uint64_t z = (*state += UINT64_C(0x9E3779B97F4A7C15));

    z = (z ^ (z >> 30)) * UINT64_C(0xBF58476D1CE4E5B9);
    z = (z ^ (z >> 27)) * UINT64_C(0x94D049BB133111EB);
    return z ^ (z >> 31);
}

static uint64_t cw_random_seed(void)
{
    uint64_t seed = 0;
    ssize_t n;

    do {
        n = getrandom(&seed, sizeof seed, GRND_NONBLOCK);
    } while (n < 0 && errno == EINTR);
    if (n != (ssize_t)sizeof seed) {
        /* No entropy yet (early boot) or no getrandom(): good enough for
         * spreading retries, which is all this is for. */
        struct timespec ts;
        uint64_t mix;

        clock_gettime(CLOCK_MONOTONIC, &ts);
        mix = (uint64_t)ts.tv_sec * UINT64_C(1000000000) + (uint64_t)ts.tv_nsec;
        mix ^= (uint64_t)getpid() << 32;
        mix ^= (uint64_t)(uintptr_t)&seed;
        mix ^= (uint64_t)pthread_self();
        seed ^= cw_splitmix64(&mix);
    }
    return seed;
}

uint64_t cw_random64(void)
{
    static _Thread_local uint64_t state;
    static _Thread_local pid_t owner; /* the process `state` was seeded in; 0 = never */
    pid_t pid = getpid();

    if (owner != pid) {
        state = cw_random_seed();
        owner = pid;
    }
    return cw_splitmix64(&state);
}
