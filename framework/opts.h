/* Internal: reading the versioned option structs of the public API.
 *
 * A struct a caller fills (cw_publish_opts, cw_retry_opts, ...) starts with
 * `unsigned version`, and fields are only ever added at its end. A caller
 * built against an older header passes a shorter struct with an older
 * version; the library must accept every version from 1 to the current one
 * (STYLE.md). cw__opts_read() copies what the caller's version has over the
 * current version's defaults, so the rest of the library reads one layout. */
#ifndef CW_FRAMEWORK_OPTS_H
#define CW_FRAMEWORK_OPTS_H

#include <stddef.h>

/* Copies the caller's options `src` into `dst`, which holds the current
 * version's defaults (its _INIT) and is `sizes[n_versions - 1]` bytes:
 * `sizes[v - 1]` is the size of version v, so only the fields that version
 * has are taken from `src`; `dst->version` becomes the current one.
 * `what` names the struct in the error ("cw_publish_opts").
 * Returns 0, or CW_STATUS_INVALID_ARG (with cw_error_last() naming the
 * version) for a NULL `src`, version 0 or a version newer than the current
 * one (a caller built against a newer header). Thread-safe. */
int cw__opts_read(void *dst, const void *src, const size_t *sizes, unsigned n_versions,
                  const char *what);

/* What the public *_opts_init(opts, version) functions share: fills
 * `opts` with `init` (the current version's defaults, `sizes[n_versions -
 * 1]` bytes), keeping to the `sizes[version - 1]` bytes a caller of
 * `version` has. CW_STATUS_INVALID_ARG for NULL or an unknown version. */
int cw__opts_init(void *opts, unsigned version, const void *init, const size_t *sizes,
                  unsigned n_versions, const char *what);

#endif
