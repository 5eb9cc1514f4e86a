/* The HTTP endpoints (workers/http.h). */
#include <arpa/inet.h>
#include <errno.h>
#include <netdb.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>

#include "framework/listen.h"
#include "framework/log.h"
#include "workers/http.h"

enum MHD_Result cw_http_respond(struct MHD_Connection *c, unsigned code, const char *type,
                                char *body, size_t len, bool owned)
{
    struct MHD_Response *r = MHD_create_response_from_buffer(len, body,
                                                             owned ? MHD_RESPMEM_MUST_FREE
                                                                   : MHD_RESPMEM_PERSISTENT);
    if (!r) {
        if (owned)
            free(body);
        return MHD_NO;
    }
    MHD_add_response_header(r, MHD_HTTP_HEADER_CONTENT_TYPE, type);
    MHD_add_response_header(r, MHD_HTTP_HEADER_CACHE_CONTROL, "no-store");
    enum MHD_Result ret = MHD_queue_response(c, code, r);
    MHD_destroy_response(r);
    return ret;
}

enum MHD_Result cw_http_respond_text(struct MHD_Connection *c, unsigned code, const char *fmt, ...)
{
    char *body = NULL;
    va_list ap;
    va_start(ap, fmt);
    int n = vasprintf(&body, fmt, ap);
    va_end(ap);
    if (n < 0)
        return MHD_NO;
    return cw_http_respond(c, code, "text/plain; charset=utf-8", body, (size_t)n, true);
}

static enum MHD_Result on_request(void *cls, struct MHD_Connection *c, const char *url,
                                  const char *method, const char *version, const char *upload_data,
                                  size_t *upload_data_size, void **con_cls)
{
    (void)version;
    (void)upload_data;
    (void)upload_data_size;
    (void)con_cls;
    const cw_http_site *site = cls;
    if (strcmp(method, "GET") != 0 && strcmp(method, "HEAD") != 0)
        return cw_http_respond_text(c, MHD_HTTP_METHOD_NOT_ALLOWED, "GET only\n");
    if (strcmp(url, "/metrics") == 0)
        return site->metrics(site->cls, c);
    if (strcmp(url, "/healthz") == 0)
        return site->health(site->cls, c);
    if (strcmp(url, "/") == 0)
        return cw_http_respond_text(c, MHD_HTTP_OK, "%s\n", site->index);
    return cw_http_respond_text(c, MHD_HTTP_NOT_FOUND, "not found: /metrics, /healthz\n");
}

struct MHD_Daemon *cw_http_start(const char *listen, const char *key, const cw_http_site *site)
{
    char host[256];
    unsigned port;
    if (cw__listen_parse(listen, host, sizeof host, &port)) {
        cw_log_error(NULL, "%s '%s' is not HOST:PORT", key, listen);
        return NULL;
    }
    struct addrinfo hints, *ai = NULL;
    memset(&hints, 0, sizeof hints);
    hints.ai_family = AF_UNSPEC;
    hints.ai_socktype = SOCK_STREAM;
    hints.ai_flags = AI_PASSIVE;
    int gai = getaddrinfo(host, NULL, &hints, &ai);
    if (gai != 0 || !ai) {
        cw_log_error(NULL, "%s '%s': cannot resolve '%s': %s", key, listen, host,
                     gai_strerror(gai));
        return NULL;
    }
    struct sockaddr_storage sa;
    memset(&sa, 0, sizeof sa);
    memcpy(&sa, ai->ai_addr, ai->ai_addrlen);
    bool v6 = ai->ai_family == AF_INET6;
    freeaddrinfo(ai);
    if (v6)
        ((struct sockaddr_in6 *)&sa)->sin6_port = htons((uint16_t)port);
    else
        ((struct sockaddr_in *)&sa)->sin_port = htons((uint16_t)port);

    unsigned flags = MHD_USE_INTERNAL_POLLING_THREAD | MHD_USE_AUTO | (v6 ? MHD_USE_IPv6 : 0);
    struct MHD_Daemon *d = MHD_start_daemon(flags, (uint16_t)port, NULL, NULL, on_request,
                                            (void *)site, MHD_OPTION_SOCK_ADDR,
                                            (struct sockaddr *)&sa, MHD_OPTION_CONNECTION_TIMEOUT,
                                            (unsigned)10, MHD_OPTION_CONNECTION_LIMIT, (unsigned)64,
                                            MHD_OPTION_END);
    if (!d) {
        cw_log_error(NULL, "%s %s: cannot listen (%s)", key, listen,
                     errno ? strerror(errno) : "address in use or not available");
        return NULL;
    }
    /* The port actually bound (metrics_listen may say port 0). */
    const union MHD_DaemonInfo *li = MHD_get_daemon_info(d, MHD_DAEMON_INFO_LISTEN_FD);
    struct sockaddr_storage bound;
    socklen_t blen = sizeof bound;
    unsigned actual = port;
    if (li && getsockname(li->listen_fd, (struct sockaddr *)&bound, &blen) == 0)
        actual = ntohs(bound.ss_family == AF_INET6 ? ((struct sockaddr_in6 *)&bound)->sin6_port
                                                   : ((struct sockaddr_in *)&bound)->sin_port);
    cw_log_info(NULL, "serving metrics at http://%s%s%s:%u/metrics and health at /healthz",
                v6 ? "[" : "", host, v6 ? "]" : "", actual);
    return d;
}
