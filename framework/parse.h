/* Internal: parsing of durations, sizes and integers written by people. */
#ifndef CW_FRAMEWORK_PARSE_H
#define CW_FRAMEWORK_PARSE_H

#include <stdbool.h>
#include <stdint.h>

/* "250ms", "5s", "2m", "1h", "7d" (a bare number is seconds) into
 * milliseconds. Rejects negatives, empty strings, unknown units, trailing
 * text and overflow. */
bool cw__parse_duration_ms(const char *s, int64_t *out_ms);

/* "512", "64KiB", "1MiB", "2GiB", "10kB"/"10MB" (powers of 1000), "1k"/"1M"
 * (powers of 1024) into bytes. Same rejections as above. */
bool cw__parse_size(const char *s, uint64_t *out_bytes);

/* A decimal integer in [min, max], no trailing text. */
bool cw__parse_int(const char *s, long long min, long long max, long long *out);

/* "true/false/yes/no/on/off/1/0" (case-insensitive). */
bool cw__parse_bool(const char *s, bool *out);

#endif
