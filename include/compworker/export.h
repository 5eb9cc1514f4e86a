/* compworker — symbol export macro. */
#ifndef COMPWORKER_EXPORT_H
#define COMPWORKER_EXPORT_H

/** Marks a function or object as part of libcompworker's exported ABI.
 *  Everything else in the library is built with hidden visibility. */
#if defined(__GNUC__) || defined(__clang__)
#define CW_EXTERN __attribute__((visibility("default")))
#else
#define CW_EXTERN
#endif

#if defined(__GNUC__) || defined(__clang__)
#define CW_PRINTF(fmt_index, first_arg) __attribute__((format(printf, fmt_index, first_arg)))
#else
#define CW_PRINTF(fmt_index, first_arg)
#endif

#endif
