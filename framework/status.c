/* Status codes, their messages, the per-thread last error, the version. */
#include <stdarg.h>
#include <stdio.h>

#include "compworker/status.h"
#include "compworker/version.h"
#include "framework/error.h"

static _Thread_local char cw_last_error[1024];

const char *cw_strerror(int status)
{
    switch (status) {
#define CW__STATUS_MSG(name, value, msg)                                                           \
    case (value): return (msg);
        CW_STATUS_MAP(CW__STATUS_MSG)
#undef CW__STATUS_MSG
    }
    return "unknown status";
}

const char *cw_status_name(int status)
{
    switch (status) {
#define CW__STATUS_NAME(name, value, msg)                                                          \
    case (value): return #name;
        CW_STATUS_MAP(CW__STATUS_NAME)
#undef CW__STATUS_NAME
    }
    return "UNKNOWN";
}

const char *cw_error_last(void)
{
    return cw_last_error;
}

int cw__error(int status, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(cw_last_error, sizeof cw_last_error, fmt, ap);
    va_end(ap);
    return status;
}

void cw__error_clear(void)
{
    cw_last_error[0] = '\0';
}

const char *cw_version(void)
{
    return CW_VERSION_STRING;
}
