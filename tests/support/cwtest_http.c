/* A local HTTP server for the tests (libmicrohttpd): see cwtest.h. */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>

#include <arpa/inet.h>
#include <netinet/in.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>

#include <curl/curl.h>
#include <microhttpd.h>

#include "cwtest.h"

#define CWTEST_HTTP_BODY_MAX (1024 * 1024)

typedef struct http_req {
    char *buf;
    size_t len;
    bool post_to_path;
    bool too_big;
} http_req;

struct cwtest_http {
    struct MHD_Daemon *daemon;
    unsigned port;
    char path[256];
    pthread_mutex_t lock;
    char **bodies;
    int64_t *at;
    size_t n, cap;
    size_t others;
};

static enum MHD_Result respond(struct MHD_Connection *conn, unsigned code, const char *text)
{
    struct MHD_Response *r = MHD_create_response_from_buffer(strlen(text), (void *)text,
                                                             MHD_RESPMEM_PERSISTENT);
    if (!r)
        return MHD_NO;
    enum MHD_Result ret = MHD_queue_response(conn, code, r);
    MHD_destroy_response(r);
    return ret;
}

static void record(cwtest_http *h, http_req *q)
{
    char *body = malloc(q->len + 1);
    if (!body)
        return;
    if (q->len)
        memcpy(body, q->buf, q->len);
    body[q->len] = '\0';
    pthread_mutex_lock(&h->lock);
    if (h->n == h->cap) {
        size_t cap = h->cap ? h->cap * 2 : 16;
        char **b = realloc(h->bodies, cap * sizeof *b);
        if (b)
            h->bodies = b;
        int64_t *a = b ? realloc(h->at, cap * sizeof *a) : NULL;
        if (a)
            h->at = a;
        if (!b || !a) {
            pthread_mutex_unlock(&h->lock);
            free(body);
            return;
        }
        h->cap = cap;
    }
    h->bodies[h->n] = body;
    h->at[h->n] = cwtest_now_ms();
    h->n++;
    pthread_mutex_unlock(&h->lock);
}

static enum MHD_Result on_request(void *cls, struct MHD_Connection *conn, const char *url,
                                  const char *method, const char *version, const char *upload_data,
                                  size_t *upload_data_size, void **con_cls)
{
    (void)version;
    cwtest_http *h = cls;
    http_req *q = *con_cls;
    if (!q) {
        /* The first call: headers only. */
        q = calloc(1, sizeof *q);
        if (!q)
            return MHD_NO;
        q->post_to_path = strcmp(method, "POST") == 0 && strcmp(url, h->path) == 0;
        *con_cls = q;
        return MHD_YES;
    }
    if (*upload_data_size) {
        if (q->post_to_path && !q->too_big) {
            if (q->len + *upload_data_size > CWTEST_HTTP_BODY_MAX) {
                q->too_big = true;
            } else {
                char *grown = realloc(q->buf, q->len + *upload_data_size);
                if (!grown)
                    return MHD_NO;
                q->buf = grown;
                memcpy(q->buf + q->len, upload_data, *upload_data_size);
                q->len += *upload_data_size;
            }
        }
        *upload_data_size = 0;
        return MHD_YES;
    }
    /* The body is complete. */
    if (!q->post_to_path || q->too_big) {
        pthread_mutex_lock(&h->lock);
        h->others++;
        pthread_mutex_unlock(&h->lock);
        return respond(conn, q->too_big ? MHD_HTTP_CONTENT_TOO_LARGE : MHD_HTTP_NOT_FOUND, "no\n");
    }
    record(h, q);
    return respond(conn, MHD_HTTP_OK, "ok\n");
}

static void on_completed(void *cls, struct MHD_Connection *conn, void **con_cls,
                         enum MHD_RequestTerminationCode toe)
{
    (void)cls;
    (void)conn;
    (void)toe;
    http_req *q = *con_cls;
    if (q) {
        free(q->buf);
        free(q);
        *con_cls = NULL;
    }
}

cwtest_http *cwtest_http_start(cwtest_env *env, const char *path)
{
    if (env->http)
        fail_msg("the env already has an HTTP server");
    cwtest_http *h = calloc(1, sizeof *h);
    if (!h)
        fail_msg("out of memory");
    snprintf(h->path, sizeof h->path, "%s", path);
    pthread_mutex_init(&h->lock, NULL);
    struct sockaddr_in sa;
    memset(&sa, 0, sizeof sa);
    sa.sin_family = AF_INET;
    sa.sin_port = 0;
    sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    h->daemon = MHD_start_daemon(MHD_USE_INTERNAL_POLLING_THREAD | MHD_USE_ERROR_LOG, 0, NULL, NULL,
                                 on_request, h, MHD_OPTION_SOCK_ADDR, (struct sockaddr *)&sa,
                                 MHD_OPTION_NOTIFY_COMPLETED, on_completed, h,
                                 MHD_OPTION_CONNECTION_TIMEOUT, (unsigned)30, MHD_OPTION_END);
    if (!h->daemon) {
        pthread_mutex_destroy(&h->lock);
        free(h);
        fail_msg("cannot start the test HTTP server on 127.0.0.1");
        return NULL;
    }
    const union MHD_DaemonInfo *info = MHD_get_daemon_info(h->daemon, MHD_DAEMON_INFO_BIND_PORT);
    h->port = info ? info->port : 0;
    env->http = h;
    if (!h->port)
        fail_msg("the test HTTP server has no port");
    return h;
}

unsigned cwtest_http_port(const cwtest_http *h)
{
    return h->port;
}

size_t cwtest_http_count(cwtest_http *h)
{
    pthread_mutex_lock(&h->lock);
    size_t n = h->n;
    pthread_mutex_unlock(&h->lock);
    return n;
}

size_t cwtest_http_others(cwtest_http *h)
{
    pthread_mutex_lock(&h->lock);
    size_t n = h->others;
    pthread_mutex_unlock(&h->lock);
    return n;
}

char *cwtest_http_body(cwtest_http *h, size_t i)
{
    pthread_mutex_lock(&h->lock);
    char *copy = i < h->n ? strdup(h->bodies[i]) : NULL;
    size_t n = h->n;
    pthread_mutex_unlock(&h->lock);
    if (!copy)
        fail_msg("the test HTTP server has %zu bodies, not %zu (or out of memory)", n, i + 1);
    return copy;
}

int64_t cwtest_http_at(cwtest_http *h, size_t i)
{
    pthread_mutex_lock(&h->lock);
    int64_t at = i < h->n ? h->at[i] : -1;
    size_t n = h->n;
    pthread_mutex_unlock(&h->lock);
    if (at < 0)
        fail_msg("the test HTTP server has %zu bodies, not %zu", n, i + 1);
    return at;
}

size_t cwtest_http_wait(cwtest_http *h, size_t n, int timeout_ms)
{
    int64_t deadline = cwtest_now_ms() + timeout_ms;
    for (;;) {
        size_t got = cwtest_http_count(h);
        if (got >= n)
            return got;
        if (cwtest_now_ms() >= deadline)
            fail_msg("the test HTTP server received %zu POSTs to %s, not %zu, after %d ms "
                     "(%zu other requests)",
                     got, h->path, n, timeout_ms, cwtest_http_others(h));
        cwtest_sleep_ms(10);
    }
}

void cwtest_http_stop(cwtest_http *h)
{
    if (!h)
        return;
    MHD_stop_daemon(h->daemon);
    for (size_t i = 0; i < h->n; i++)
        free(h->bodies[i]);
    free(h->bodies);
    free(h->at);
    pthread_mutex_destroy(&h->lock);
    free(h);
}

typedef struct get_buf {
    char *data;
    size_t len;
} get_buf;

static size_t on_get_body(char *p, size_t size, size_t n, void *ud)
{
    get_buf *b = ud;
    char *grown = realloc(b->data, b->len + size * n + 1);
    if (!grown)
        return 0;
    memcpy(grown + b->len, p, size * n);
    b->len += size * n;
    grown[b->len] = '\0';
    b->data = grown;
    return size * n;
}

char *cwtest_http_get(const char *base, const char *path, long *code)
{
    char url[512];
    snprintf(url, sizeof url, "%s%s", base, path);
    CURL *c = curl_easy_init();
    if (!c)
        fail_msg("curl_easy_init failed");
    get_buf b = {calloc(1, 1), 0};
    curl_easy_setopt(c, CURLOPT_URL, url);
    curl_easy_setopt(c, CURLOPT_WRITEFUNCTION, on_get_body);
    curl_easy_setopt(c, CURLOPT_WRITEDATA, &b);
    curl_easy_setopt(c, CURLOPT_TIMEOUT_MS, 5000L);
    curl_easy_setopt(c, CURLOPT_NOSIGNAL, 1L);
    CURLcode rc = curl_easy_perform(c);
    *code = 0;
    if (rc == CURLE_OK)
        curl_easy_getinfo(c, CURLINFO_RESPONSE_CODE, code);
    curl_easy_cleanup(c);
    if (rc != CURLE_OK) {
        free(b.data);
        fail_msg("GET %s: %s", url, curl_easy_strerror(rc));
    }
    return b.data;
}

double cwtest_metric(const char *body, const char *series)
{
    size_t n = strlen(series);
    for (const char *p = body; p && *p; p = strchr(p, '\n'), p = p ? p + 1 : NULL) {
        if (strncmp(p, series, n) == 0 && p[n] == ' ')
            return strtod(p + n + 1, NULL);
    }
    return -1;
}
