/* The HTTP endpoints of the pool's monitor and of the outbox relay
 * (/metrics, /healthz): libmicrohttpd, one thread of its own. */
#ifndef CW_WORKERS_HTTP_H
#define CW_WORKERS_HTTP_H

#include <microhttpd.h>
#include <stdbool.h>
#include <stddef.h>

#define CW_HTTP_METRICS_TYPE "text/plain; version=0.0.4; charset=utf-8"

/* Queues a response of `len` bytes of `body` (owned: freed by the
 * response, even on failure), Cache-Control no-store. */
enum MHD_Result cw_http_respond(struct MHD_Connection *c, unsigned code, const char *type,
                                char *body, size_t len, bool owned);

/* A text/plain response made with printf's `fmt` (a constant format). */
enum MHD_Result cw_http_respond_text(struct MHD_Connection *c, unsigned code, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

/* What a server serves: GET /metrics, GET /healthz (each answered by its
 * function, called on the server's thread with `cls`), GET / (the text
 * `index`, a line); any other method 405, any other path 404. */
typedef struct cw_http_site {
    enum MHD_Result (*metrics)(void *cls, struct MHD_Connection *c);
    enum MHD_Result (*health)(void *cls, struct MHD_Connection *c);
    char index[320];
    void *cls;
} cw_http_site;

/* Serves `site` (borrowed while the server runs) on `listen` ("host:port",
 * "[v6]:port"; port 0 picks one, and the log says which); `key` ("[pool]
 * metrics_listen") names the setting in errors. NULL, after an error line
 * in the log, when it cannot listen. Stop it with MHD_stop_daemon(). */
struct MHD_Daemon *cw_http_start(const char *listen, const char *key, const cw_http_site *site);

#endif
