/* Time-ordered message IDs (framework/message_id.h). */
#include "framework/message_id.h"

#include <stdatomic.h>
#include <stdint.h>
#include <time.h>
#include <uuid/uuid.h>

/* The last ID's 60 bits of time: milliseconds << 12 | the fraction. */
static _Atomic uint64_t last;

void cw__message_id_new(char out[CW_UUID_TEXT])
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    uint64_t ms = (uint64_t)ts.tv_sec * 1000 + (uint64_t)ts.tv_nsec / 1000000;
    uint64_t now = ms << 12 | (uint64_t)(ts.tv_nsec % 1000000) * 4096 / 1000000;
    uint64_t prev = atomic_load(&last), t;
    do {
        t = now > prev ? now : prev + 1; /* the same tick, or a clock stepped back */
    } while (!atomic_compare_exchange_weak(&last, &prev, t));
    uuid_t u;
    uuid_generate_random(u);
    ms = t >> 12;
    for (int i = 0; i < 6; i++)
        u[i] = (unsigned char)(ms >> (40 - 8 * i));
    u[6] = (unsigned char)(0x70 | ((t >> 8) & 0x0f)); /* version 7 */
    u[7] = (unsigned char)(t & 0xff);
    u[8] = (unsigned char)(0x80 | (u[8] & 0x3f)); /* the RFC's variant */
    uuid_unparse_lower(u, out);
}
