/* Shared by the fuzz targets: reading structure out of the fuzzer's bytes,
 * building AMQP properties and header tables from them, comparing two
 * tables, and checking what a target asserts.
 *
 * Every target is one file that defines LLVMFuzzerTestOneInput(). Built with
 * clang and -DCW_FUZZ=ON it links libFuzzer; in every other build it links
 * replay.c, which runs it over the seed corpus and the regression inputs as a
 * unit test.
 *
 * Strings and arrays a target builds are each malloc'd to their exact size
 * (not carved from one pool), so that AddressSanitizer sees a read one byte
 * past any of them, the way it would on a real message. */
#ifndef CW_TESTS_FUZZ_FUZZ_H
#define CW_TESTS_FUZZ_FUZZ_H

#include <amqp.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>

/* The entry point every target defines (libFuzzer's signature). */
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

/* A failed check is a crash: libFuzzer keeps the input, the replay driver
 * names it. The condition's text goes in an argument, never in the format. */
#define FZ_CHECK(cond)                                                                             \
    do {                                                                                           \
        if (!(cond))                                                                               \
            fz_fail(__FILE__, __LINE__, #cond);                                                    \
    } while (0)

_Noreturn void fz_fail(const char *file, int line, const char *what);

/* The fuzzer's bytes, read from the front. Past the end every read gives
 * zeros and empty strings, so that any input decodes to something. */
typedef struct fz_in {
    const uint8_t *p;
    size_t n;
} fz_in;

uint8_t fz_u8(fz_in *in);
uint16_t fz_u16(fz_in *in);
uint32_t fz_u32(fz_in *in);
uint64_t fz_u64(fz_in *in);

/* The allocations of one input, freed together by fz_arena_free(). */
typedef struct fz_arena {
    void **ptrs;
    size_t n, cap;
    bool null_empty; /* an empty string is {0, NULL} (amqp_empty_bytes), else a 0-byte block */
} fz_arena;

void *fz_alloc(fz_arena *a, size_t n);
void fz_arena_free(fz_arena *a);

/* A copy of `len` bytes of `src` in its own block of exactly that size. */
amqp_bytes_t fz_copy(fz_arena *a, const void *src, size_t len);

/* A string of at most `max` bytes: a length (one byte when max < 256, else
 * two), then that many bytes (fewer when the input ends). */
amqp_bytes_t fz_bytes(fz_arena *a, fz_in *in, size_t max);

/* The rest of the input. */
amqp_bytes_t fz_rest(fz_arena *a, fz_in *in);

/* The deepest a built table nests (tables and arrays). The importer refuses
 * more than 256 levels; building deeper lets a target see both sides of it. */
#define FZ_MAX_DEPTH 300

/* A header table: a count (one byte, up to 31 entries), then for each entry
 * a key (a short string) and a value: a kind byte picking one of the 18 AMQP
 * field kinds, then the value's bytes (nested tables and arrays recurse). */
void fz_table(fz_arena *a, fz_in *in, amqp_table_t *out, int depth);
void fz_value(fz_arena *a, fz_in *in, amqp_field_value_t *out, int depth);

/* Basic properties: two bytes of flags (AMQP's own bits), then each present
 * property in AMQP order (short strings as fz_bytes(255), headers as
 * fz_table()). */
void fz_props(fz_arena *a, fz_in *in, amqp_basic_properties_t *out);

/* Deep equality, floats compared by their bits, booleans by truth. */
bool fz_value_equal(const amqp_field_value_t *x, const amqp_field_value_t *y);
bool fz_table_equal(const amqp_table_t *x, const amqp_table_t *y);

/* Equality of two sets of properties; `skip_delivery_count` leaves out a
 * top-level x-delivery-count header of `x` (the DLQ export drops it). */
bool fz_props_equal(const amqp_basic_properties_t *x, const amqp_basic_properties_t *y,
                    bool skip_delivery_count);

bool fz_bytes_equal(amqp_bytes_t x, amqp_bytes_t y);

/* The deepest level a value of `t` sits at: 0 for its own values, 1 for
 * those of a table or array among them, and so on; -1 when `t` is empty. */
int fz_table_depth(const amqp_table_t *t);

#endif
