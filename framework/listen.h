/* Internal: listen addresses ("host:port"), as [pool] metrics_listen gives
 * one. */
#ifndef CW_FRAMEWORK_LISTEN_H
#define CW_FRAMEWORK_LISTEN_H

#include <stddef.h>

/* Splits "host:port" ("[v6]:port" for IPv6 literals) into host (up to
 * host_cap - 1 bytes) and port (0..65535). CW_STATUS_INVALID_ARG when it
 * is not one (a host that does not fit is refused, never cut). */
int cw__listen_parse(const char *value, char *host, size_t host_cap, unsigned *port);

#endif
