/* Versioned option structs (framework/opts.h). */
#include <string.h>

#include "framework/error.h"
#include "framework/opts.h"

/* The version a struct says it is: its first member. */
static unsigned version_of(const void *opts)
{
    unsigned v;
    memcpy(&v, opts, sizeof v);
    return v;
}

static int check_version(unsigned version, unsigned n_versions, const char *what)
{
    if (version == 0)
        return cw__error(CW_STATUS_INVALID_ARG,
                         "%s: version 0: start from its _INIT macro or %s_init()", what, what);
    if (version > n_versions)
        return cw__error(CW_STATUS_INVALID_ARG,
                         "%s: version %u is newer than this library knows (%u): the caller was "
                         "built against a newer compworker",
                         what, version, n_versions);
    return 0;
}

int cw__opts_read(void *dst, const void *src, const size_t *sizes, unsigned n_versions,
                  const char *what)
{
    if (!src)
        return cw__error(CW_STATUS_INVALID_ARG, "%s: NULL options", what);
    unsigned version = version_of(src);
    int rc = check_version(version, n_versions, what);
    if (rc)
        return rc;
    /* The version field itself stays the current one. */
    size_t from = sizeof(unsigned);
    memcpy((char *)dst + from, (const char *)src + from, sizes[version - 1] - from);
    return 0;
}

int cw__opts_init(void *opts, unsigned version, const void *init, const size_t *sizes,
                  unsigned n_versions, const char *what)
{
    if (!opts)
        return cw__error(CW_STATUS_INVALID_ARG, "%s_init: NULL options", what);
    int rc = check_version(version, n_versions, what);
    if (rc)
        return rc;
    memcpy(opts, init, sizes[version - 1]);
    memcpy(opts, &version, sizeof version);
    return 0;
}
