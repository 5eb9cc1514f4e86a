/* Internal: the message IDs compworker's publishers give a task that comes
 * without one (cw_client_publish, cw_outbox_enqueue, `compworker publish`).
 *
 * They are UUIDv7 (RFC 9562): 48 bits of milliseconds since the epoch, then
 * 12 bits of the millisecond's fraction (the RFC's method 3), then 62 random
 * bits from libuuid. In a process each ID is greater than the one before,
 * as text too (lowercase, fixed width), even within one clock tick or when
 * the clock steps back: so a store's message ID index takes new IDs at its
 * right edge, one leaf for many tasks, where random (version 4) IDs land on
 * a random leaf each — the largest per-task cost of a claim, and the one
 * that grows with the history (README, Performance). Uniqueness rests on the
 * random bits, as with version 4: 62 bits per 244 ns tick.
 *
 * Thread-safe and fork-safe: the last value is one atomic word, taken
 * without a lock (a child goes on from its parent's; libuuid's random bits
 * differ). */
#ifndef CW_FRAMEWORK_MESSAGE_ID_H
#define CW_FRAMEWORK_MESSAGE_ID_H

/* The text of a UUID: 36 characters and the NUL. */
#define CW_UUID_TEXT 37

/* Writes a new UUIDv7, lowercase, NUL-terminated, to `out`. */
void cw__message_id_new(char out[CW_UUID_TEXT]);

#endif
