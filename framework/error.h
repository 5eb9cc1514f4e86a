/* Internal: recording the last error of this thread. */
#ifndef CW_FRAMEWORK_ERROR_H
#define CW_FRAMEWORK_ERROR_H

#include "compworker/status.h"

/* Records a detailed message for cw_error_last() and returns `status`, so
 * that a failure reads `return cw__error(CW_STATUS_CONFIG, "...", ...);`. */
int cw__error(int status, const char *fmt, ...) CW_PRINTF(2, 3);

/* Clears the message. */
void cw__error_clear(void);

#endif
