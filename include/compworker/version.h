/* compworker — version numbers of the library and of the plugin ABI. */
#ifndef COMPWORKER_VERSION_H
#define COMPWORKER_VERSION_H

#include "export.h"

#define CW_VERSION_MAJOR 0
#define CW_VERSION_MINOR 1
#define CW_VERSION_PATCH 0
#define CW_VERSION_STRING "0.1.0"

/** The plugin ABI version. A plugin records the value it was compiled against
 *  (through CW_PLUGIN_DECLARE()) and the loader refuses any other value. It
 *  changes only when a change to compworker.h would break a built plugin; it is
 *  independent of the project version and of the library's SONAME. */
#define CW_ABI_VERSION 1

#ifdef __cplusplus
extern "C" {
#endif

/** The version of the libcompworker actually loaded, as "MAJOR.MINOR.PATCH".
 *  Returns a static string; never NULL. Thread- and fork-safe. */
CW_EXTERN const char *cw_version(void);

#ifdef __cplusplus
}
#endif
#endif
