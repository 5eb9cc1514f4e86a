/* Unit tests of the alert hooks (dlq/alert.c) against real pieces: a
 * libmicrohttpd server on 127.0.0.1 for the webhook, shell scripts run as the
 * command, callbacks in this process, and the log read back from stderr. */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>

#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <ftw.h>
#include <netinet/in.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include <json-c/json.h>
#include <microhttpd.h>

#include "compworker/status.h"
#include "dlq/alert.h"

static char g_tmp[] = "/tmp/cw-test-alert-XXXXXX";

/* ---- time ---------------------------------------------------------------- */

static int64_t now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static int64_t now_us(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000000 + ts.tv_nsec / 1000;
}

static void sleep_ms(int64_t ms)
{
    struct timespec ts = {.tv_sec = (time_t)(ms / 1000), .tv_nsec = (long)(ms % 1000) * 1000000};
    while (nanosleep(&ts, &ts) < 0 && errno == EINTR)
        ;
}

/* ---- the log: stderr into a file while a test runs ------------------------- */

static struct {
    bool active;
    int saved;
    char path[600];
} g_cap;

static void capture_begin(void)
{
    snprintf(g_cap.path, sizeof g_cap.path, "%s/log-XXXXXX", g_tmp);
    int fd = mkstemp(g_cap.path);
    assert_true(fd >= 0);
    fflush(stderr);
    g_cap.saved = dup(STDERR_FILENO);
    assert_true(g_cap.saved >= 0);
    assert_true(dup2(fd, STDERR_FILENO) >= 0);
    close(fd);
    g_cap.active = true;
}

/* The log so far. Free with free(). */
static char *capture_text(void)
{
    FILE *f = fopen(g_cap.path, "r");
    assert_non_null(f);
    char *buf = NULL;
    size_t len = 0, cap = 0;
    char chunk[4096];
    size_t n;
    while ((n = fread(chunk, 1, sizeof chunk, f)) > 0) {
        if (len + n + 1 > cap) {
            cap = (len + n + 1) * 2;
            buf = realloc(buf, cap);
            assert_non_null(buf);
        }
        memcpy(buf + len, chunk, n);
        len += n;
    }
    fclose(f);
    if (!buf)
        buf = calloc(1, 1);
    else
        buf[len] = '\0';
    return buf;
}

/* Restores stderr and echoes the captured log there. */
static void capture_end(void)
{
    if (!g_cap.active)
        return;
    g_cap.active = false;
    fflush(stderr);
    dup2(g_cap.saved, STDERR_FILENO);
    close(g_cap.saved);
    char *text = capture_text();
    fputs(text, stderr);
    free(text);
    unlink(g_cap.path);
}

static int count_of(const char *text, const char *needle)
{
    int n = 0;
    for (const char *p = text; (p = strstr(p, needle)); p += strlen(needle))
        n++;
    return n;
}

/* Waits until the log holds a line with every one of `needles` (NULL-
 * terminated); returns that line (free with free()), NULL on timeout. */
static char *wait_log_line(int64_t timeout_ms, ...)
{
    const char *needles[8];
    size_t n = 0;
    va_list ap;
    va_start(ap, timeout_ms);
    for (const char *s; n < 8 && (s = va_arg(ap, const char *));)
        needles[n++] = s;
    va_end(ap);
    int64_t end = now_ms() + timeout_ms;
    for (;;) {
        char *text = capture_text();
        for (char *line = strtok(text, "\n"); line; line = strtok(NULL, "\n")) {
            size_t i = 0;
            while (i < n && strstr(line, needles[i]))
                i++;
            if (i == n) {
                char *copy = strdup(line);
                free(text);
                return copy;
            }
        }
        free(text);
        if (now_ms() >= end)
            return NULL;
        sleep_ms(10);
    }
}

/* ---- a C hook that keeps what it is given ----------------------------------- */

typedef struct collector {
    pthread_mutex_t mu;
    pthread_cond_t cv;
    char **docs;
    size_t n, cap;
    int64_t first_at; /* now_ms() of the first document */
    int delay_ms;     /* sleep in each call */
    /* A gate: while `hold`, the first call waits until it is opened. */
    bool hold, entered;
} collector;

static void collector_init(collector *c)
{
    memset(c, 0, sizeof *c);
    pthread_mutex_init(&c->mu, NULL);
    pthread_cond_init(&c->cv, NULL);
}

static void collector_fini(collector *c)
{
    for (size_t i = 0; i < c->n; i++)
        free(c->docs[i]);
    free(c->docs);
    pthread_cond_destroy(&c->cv);
    pthread_mutex_destroy(&c->mu);
}

static void collect(const char *json, void *ud)
{
    collector *c = ud;
    pthread_mutex_lock(&c->mu);
    c->entered = true;
    pthread_cond_broadcast(&c->cv);
    while (c->hold)
        pthread_cond_wait(&c->cv, &c->mu);
    if (c->n == c->cap) {
        c->cap = c->cap ? c->cap * 2 : 16;
        c->docs = realloc(c->docs, c->cap * sizeof *c->docs);
    }
    if (!c->n)
        c->first_at = now_ms();
    c->docs[c->n++] = strdup(json);
    pthread_cond_broadcast(&c->cv);
    int delay = c->delay_ms;
    pthread_mutex_unlock(&c->mu);
    if (delay)
        sleep_ms(delay);
}

/* Waits until `c` holds `n` documents; returns how many it holds. */
static size_t collector_wait(collector *c, size_t n, int64_t timeout_ms)
{
    int64_t end = now_ms() + timeout_ms;
    pthread_mutex_lock(&c->mu);
    while (c->n < n && now_ms() < end) {
        pthread_mutex_unlock(&c->mu);
        sleep_ms(5);
        pthread_mutex_lock(&c->mu);
    }
    size_t got = c->n;
    pthread_mutex_unlock(&c->mu);
    return got;
}

static size_t collector_count(collector *c)
{
    pthread_mutex_lock(&c->mu);
    size_t n = c->n;
    pthread_mutex_unlock(&c->mu);
    return n;
}

/* ---- JSON --------------------------------------------------------------------- */

/* Parses strictly, UTF-8 validated; fails the test when it is not JSON. */
static json_object *parse_strict(const char *text)
{
    json_tokener *tok = json_tokener_new();
    assert_non_null(tok);
    json_tokener_set_flags(tok, JSON_TOKENER_STRICT | JSON_TOKENER_VALIDATE_UTF8);
    json_object *o = json_tokener_parse_ex(tok, text, (int)strlen(text));
    enum json_tokener_error e = json_tokener_get_error(tok);
    json_tokener_free(tok);
    if (!o || e != json_tokener_success)
        fail_msg("not valid JSON (%s): %s", json_tokener_error_desc(e), text);
    assert_true(json_object_is_type(o, json_type_object));
    return o;
}

static const char *get_str(json_object *o, const char *key)
{
    json_object *v;
    if (!json_object_object_get_ex(o, key, &v))
        fail_msg("no key %s", key);
    if (!v)
        return NULL;
    assert_true(json_object_is_type(v, json_type_string));
    return json_object_get_string(v);
}

static int64_t get_int(json_object *o, const char *key)
{
    json_object *v;
    if (!json_object_object_get_ex(o, key, &v) || !v)
        fail_msg("no key %s", key);
    assert_true(json_object_is_type(v, json_type_int));
    return json_object_get_int64(v);
}

static bool is_digest(json_object *o)
{
    json_object *v;
    return json_object_object_get_ex(o, "digest", &v) && json_object_get_boolean(v);
}

/* The keys of `o` in order, comma-separated. */
static void keys_of(json_object *o, char *out, size_t cap)
{
    out[0] = '\0';
    json_object_object_foreach(o, key, val)
    {
        (void)val;
        size_t len = strlen(out);
        snprintf(out + len, cap - len, "%s%s", len ? "," : "", key);
    }
}

#define ALERT_KEYS                                                                                 \
    "message_id,saga_id,type,error_class,reason,attempts,queue,failed_at,worker,handler"
#define DIGEST_KEYS "digest,type,error_class,held_back,window_ms,first_held_at,last_held_at"

static cw_alert_event sample_event(const char *message_id)
{
    return (cw_alert_event){
        .message_id = message_id,
        .saga_id = "saga-42",
        .type = "payment.refund",
        .error_class = "exhausted",
        .reason = "gateway timeout",
        .queue = "cw.payments",
        .worker = "host-a:1234",
        .handler = "refund 1.2.0 (payment.refund)",
        .attempts = 5,
        .failed_at_ms = 1700000000123LL, /* 2023-11-14T22:13:20.123Z */
    };
}

/* ---- a real HTTP server ------------------------------------------------------- */

#define MAX_REQUESTS 16

typedef struct http_server {
    struct MHD_Daemon *d;
    unsigned port;
    pthread_mutex_t mu;
    unsigned codes[4]; /* the answer to request i; the last one repeats */
    size_t n_codes;
    int hang_ms; /* hold every answer this long (or until released) */
    atomic_bool release;
    size_t requests;
    char *bodies[MAX_REQUESTS];
    char ctype[MAX_REQUESTS][64];
    char method[MAX_REQUESTS][16];
    int64_t at[MAX_REQUESTS]; /* now_ms() of each */
} http_server;

typedef struct http_request {
    char *buf;
    size_t len;
} http_request;

static enum MHD_Result on_request(void *cls, struct MHD_Connection *conn, const char *url,
                                  const char *method, const char *version, const char *upload_data,
                                  size_t *upload_data_size, void **con_cls)
{
    (void)url;
    (void)version;
    http_server *s = cls;
    http_request *r = *con_cls;
    if (!r) {
        *con_cls = r = calloc(1, sizeof *r);
        return r ? MHD_YES : MHD_NO;
    }
    if (*upload_data_size) {
        char *b = realloc(r->buf, r->len + *upload_data_size + 1);
        if (!b)
            return MHD_NO;
        memcpy(b + r->len, upload_data, *upload_data_size);
        r->buf = b;
        r->len += *upload_data_size;
        r->buf[r->len] = '\0';
        *upload_data_size = 0;
        return MHD_YES;
    }
    const char *ct = MHD_lookup_connection_value(conn, MHD_HEADER_KIND, "Content-Type");
    pthread_mutex_lock(&s->mu);
    size_t i = s->requests++;
    unsigned code = s->codes[i < s->n_codes ? i : s->n_codes - 1];
    int hang = s->hang_ms;
    if (i < MAX_REQUESTS) {
        s->bodies[i] = r->buf ? r->buf : strdup("");
        r->buf = NULL;
        snprintf(s->ctype[i], sizeof s->ctype[i], "%s", ct ? ct : "");
        snprintf(s->method[i], sizeof s->method[i], "%s", method);
        s->at[i] = now_ms();
    }
    pthread_mutex_unlock(&s->mu);
    for (int64_t end = now_ms() + hang; now_ms() < end && !atomic_load(&s->release);)
        sleep_ms(5);
    static char ok[] = "ok\n";
    struct MHD_Response *resp = MHD_create_response_from_buffer(sizeof ok - 1, ok,
                                                                MHD_RESPMEM_PERSISTENT);
    if (!resp)
        return MHD_NO;
    enum MHD_Result ret = MHD_queue_response(conn, code, resp);
    MHD_destroy_response(resp);
    return ret;
}

static void on_completed(void *cls, struct MHD_Connection *conn, void **con_cls,
                         enum MHD_RequestTerminationCode toe)
{
    (void)cls;
    (void)conn;
    (void)toe;
    http_request *r = *con_cls;
    if (r) {
        free(r->buf);
        free(r);
        *con_cls = NULL;
    }
}

/* Starts a server on 127.0.0.1 and an ephemeral port answering `codes` in turn. */
static void server_start(http_server *s, const unsigned *codes, size_t n_codes, int hang_ms)
{
    memset(s, 0, sizeof *s);
    pthread_mutex_init(&s->mu, NULL);
    memcpy(s->codes, codes, n_codes * sizeof *codes);
    s->n_codes = n_codes;
    s->hang_ms = hang_ms;
    atomic_init(&s->release, false);
    struct sockaddr_in sa = {.sin_family = AF_INET, .sin_port = 0};
    sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    s->d = MHD_start_daemon(MHD_USE_INTERNAL_POLLING_THREAD | MHD_USE_THREAD_PER_CONNECTION, 0,
                            NULL, NULL, on_request, s, MHD_OPTION_SOCK_ADDR, &sa,
                            MHD_OPTION_NOTIFY_COMPLETED, on_completed, s, MHD_OPTION_END);
    assert_non_null(s->d);
    const union MHD_DaemonInfo *info = MHD_get_daemon_info(s->d, MHD_DAEMON_INFO_BIND_PORT);
    assert_non_null(info);
    s->port = info->port;
    assert_true(s->port > 0);
}

static void server_stop(http_server *s)
{
    atomic_store(&s->release, true);
    MHD_stop_daemon(s->d);
    for (size_t i = 0; i < s->requests && i < MAX_REQUESTS; i++)
        free(s->bodies[i]);
    pthread_mutex_destroy(&s->mu);
}

static size_t server_wait(http_server *s, size_t n, int64_t timeout_ms)
{
    int64_t end = now_ms() + timeout_ms;
    for (;;) {
        pthread_mutex_lock(&s->mu);
        size_t got = s->requests;
        pthread_mutex_unlock(&s->mu);
        if (got >= n || now_ms() >= end)
            return got;
        sleep_ms(5);
    }
}

/* A port on 127.0.0.1 where nothing listens (bound, then closed). */
static unsigned closed_port(void)
{
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    assert_true(fd >= 0);
    struct sockaddr_in sa = {.sin_family = AF_INET, .sin_port = 0};
    sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    assert_int_equal(bind(fd, (struct sockaddr *)&sa, sizeof sa), 0);
    socklen_t len = sizeof sa;
    assert_int_equal(getsockname(fd, (struct sockaddr *)&sa, &len), 0);
    close(fd);
    return ntohs(sa.sin_port);
}

/* ---- scripts -------------------------------------------------------------------- */

/* Writes an executable /bin/sh script `name` with `body`; its path in `out`. */
static void write_script(const char *name, const char *body, char *out, size_t cap)
{
    snprintf(out, cap, "%s/%s", g_tmp, name);
    FILE *f = fopen(out, "w");
    assert_non_null(f);
    fprintf(f, "#!/bin/sh\n%s", body);
    assert_int_equal(fclose(f), 0);
    assert_int_equal(chmod(out, 0755), 0);
}

/* The content of `path` once it exists (scripts write then rename), or NULL. */
static char *wait_file(const char *path, int64_t timeout_ms)
{
    int64_t end = now_ms() + timeout_ms;
    while (access(path, F_OK) != 0) {
        if (now_ms() >= end)
            return NULL;
        sleep_ms(10);
    }
    FILE *f = fopen(path, "r");
    assert_non_null(f);
    char *buf = calloc(1, 65536);
    assert_non_null(buf);
    size_t n = fread(buf, 1, 65535, f);
    buf[n] = '\0';
    fclose(f);
    return buf;
}

static cw_alerter *start_alerter(const cw_alert_config *cfg, collector *c)
{
    cw_alerter *a = NULL;
    assert_int_equal(cw_alerter_new(&a, cfg), 0);
    if (c)
        assert_int_equal(cw_alerter_add_callback(a, collect, c, "test-plugin"), 0);
    assert_int_equal(cw_alerter_start(a), 0);
    return a;
}

/* ---- tests ---------------------------------------------------------------------- */

/* A callback gets the document: every field, in order, NULL strings as null. */
static void callback_gets_document(void **state)
{
    (void)state;
    collector c;
    collector_init(&c);
    cw_alert_config cfg = {.timeout_ms = 2000};
    cw_alerter *a = start_alerter(&cfg, &c);
    assert_true(cw_alerter_has_hooks(a));

    cw_alert_event ev = sample_event("msg-1");
    cw_alerter_post(a, &ev);
    cw_alert_event sparse = {.message_id = "msg-2", .attempts = 1, .failed_at_ms = 1700000000000LL};
    cw_alerter_post(a, &sparse);
    assert_int_equal(collector_wait(&c, 2, 5000), 2);
    cw_alerter_free(a);

    json_object *o = parse_strict(c.docs[0]);
    char keys[512];
    keys_of(o, keys, sizeof keys);
    assert_string_equal(keys, ALERT_KEYS);
    assert_string_equal(get_str(o, "message_id"), "msg-1");
    assert_string_equal(get_str(o, "saga_id"), "saga-42");
    assert_string_equal(get_str(o, "type"), "payment.refund");
    assert_string_equal(get_str(o, "error_class"), "exhausted");
    assert_string_equal(get_str(o, "reason"), "gateway timeout");
    assert_int_equal(get_int(o, "attempts"), 5);
    assert_string_equal(get_str(o, "queue"), "cw.payments");
    assert_string_equal(get_str(o, "failed_at"), "2023-11-14T22:13:20.123Z");
    assert_string_equal(get_str(o, "worker"), "host-a:1234");
    assert_string_equal(get_str(o, "handler"), "refund 1.2.0 (payment.refund)");
    json_object_put(o);

    o = parse_strict(c.docs[1]);
    keys_of(o, keys, sizeof keys);
    assert_string_equal(keys, ALERT_KEYS);
    assert_string_equal(get_str(o, "message_id"), "msg-2");
    assert_null(get_str(o, "saga_id"));
    assert_null(get_str(o, "type"));
    assert_null(get_str(o, "reason"));
    assert_null(get_str(o, "handler"));
    assert_string_equal(get_str(o, "failed_at"), "2023-11-14T22:13:20.000Z");
    assert_non_null(strstr(c.docs[1], "\"saga_id\":null"));
    json_object_put(o);
    collector_fini(&c);
}

/* Quotes, newlines, control bytes and invalid UTF-8 still make valid JSON. */
static void json_escaping(void **state)
{
    (void)state;
    collector c;
    collector_init(&c);
    cw_alert_config cfg = {.timeout_ms = 2000};
    cw_alerter *a = start_alerter(&cfg, &c);

    cw_alert_event ev = sample_event("id\x01with\x1f"
                                     "controls");
    ev.reason = "say \"hi\"\nline2\tand \\ back \xff\xfe bad \xc3\x28 overlong \xc0\xaf "
                "surrogate \xed\xa0\x80 cut \xe2\x82 ok \xc3\xa9 \xf0\x9f\x92\xb8";
    ev.handler = "trailing \xe2";
    cw_alerter_post(a, &ev);
    assert_int_equal(collector_wait(&c, 1, 5000), 1);
    cw_alerter_free(a);

    assert_null(strchr(c.docs[0], '\n'));
    json_object *o = parse_strict(c.docs[0]);
    assert_string_equal(get_str(o, "message_id"), "id\x01with\x1f"
                                                  "controls");
    assert_string_equal(get_str(o, "reason"),
                        "say \"hi\"\nline2\tand \\ back \xef\xbf\xbd\xef\xbf\xbd bad "
                        "\xef\xbf\xbd( overlong \xef\xbf\xbd\xef\xbf\xbd surrogate "
                        "\xef\xbf\xbd\xef\xbf\xbd\xef\xbf\xbd cut \xef\xbf\xbd\xef\xbf\xbd ok "
                        "\xc3\xa9 \xf0\x9f\x92\xb8");
    assert_string_equal(get_str(o, "handler"), "trailing \xef\xbf\xbd");
    json_object_put(o);
    collector_fini(&c);
}

/* The webhook POSTs the same document as application/json. */
static void webhook_posts_json(void **state)
{
    (void)state;
    http_server s;
    static const unsigned ok[] = {200};
    server_start(&s, ok, 1, 0);
    capture_begin();
    char url[128];
    snprintf(url, sizeof url, "http://127.0.0.1:%u/hooks/alert", s.port);
    collector c;
    collector_init(&c);
    cw_alert_config cfg = {.webhook_url = url, .timeout_ms = 2000, .webhook_retries = 2};
    cw_alerter *a = start_alerter(&cfg, &c);

    cw_alert_event ev = sample_event("msg-web");
    cw_alerter_post(a, &ev);
    assert_int_equal(server_wait(&s, 1, 5000), 1);
    assert_int_equal(collector_wait(&c, 1, 5000), 1);
    cw_alerter_free(a);

    char *log = capture_text();
    assert_null(strstr(log, "alert hook failed"));
    free(log);
    capture_end();

    assert_string_equal(s.method[0], "POST");
    assert_string_equal(s.ctype[0], "application/json");
    assert_string_equal(s.bodies[0], c.docs[0]);
    json_object *o = parse_strict(s.bodies[0]);
    assert_string_equal(get_str(o, "message_id"), "msg-web");
    assert_string_equal(get_str(o, "saga_id"), "saga-42");
    assert_string_equal(get_str(o, "type"), "payment.refund");
    assert_string_equal(get_str(o, "error_class"), "exhausted");
    assert_int_equal(get_int(o, "attempts"), 5);
    assert_string_equal(get_str(o, "failed_at"), "2023-11-14T22:13:20.123Z");
    json_object_put(o);
    server_stop(&s);
    collector_fini(&c);
}

/* 503, 503, then 200: retried with backoff (250 + 500 ms) and delivered. */
static void webhook_retries_5xx(void **state)
{
    (void)state;
    http_server s;
    static const unsigned codes[] = {503, 503, 200};
    server_start(&s, codes, 3, 0);
    capture_begin();
    char url[128];
    snprintf(url, sizeof url, "http://127.0.0.1:%u/alert", s.port);
    cw_alert_config cfg = {.webhook_url = url, .timeout_ms = 2000, .webhook_retries = 3};
    cw_alerter *a = start_alerter(&cfg, NULL);

    cw_alert_event ev = sample_event("msg-503");
    cw_alerter_post(a, &ev);
    assert_int_equal(server_wait(&s, 3, 10000), 3);
    cw_alerter_free(a);
    assert_int_equal(server_wait(&s, 3, 0), 3);
    assert_true(s.at[1] - s.at[0] >= 240);
    assert_true(s.at[2] - s.at[1] >= 490);
    for (int i = 0; i < 3; i++)
        assert_string_equal(s.bodies[i], s.bodies[0]);

    char *log = capture_text();
    assert_null(strstr(log, "alert hook failed"));
    free(log);
    capture_end();
    server_stop(&s);
}

/* 404 is not retried; the log names the status but no secret of the URL. */
static void webhook_4xx_logged_without_secrets(void **state)
{
    (void)state;
    http_server s;
    static const unsigned codes[] = {404};
    server_start(&s, codes, 1, 0);
    capture_begin();
    char url[200];
    snprintf(url, sizeof url, "http://alice:s3cret@127.0.0.1:%u/T0KEN/x?key=k3y", s.port);
    cw_alert_config cfg = {.webhook_url = url, .timeout_ms = 2000, .webhook_retries = 3};
    cw_alerter *a = start_alerter(&cfg, NULL);

    cw_alert_event ev = sample_event("msg-404");
    cw_alerter_post(a, &ev);
    char *line = wait_log_line(5000, "alert hook failed", "HTTP status 404", "msg-404", "webhook",
                               (const char *)NULL);
    assert_non_null(line);
    free(line);
    cw_alerter_free(a);
    assert_int_equal(server_wait(&s, 1, 0), 1);

    char *log = capture_text();
    assert_null(strstr(log, "s3cret"));
    assert_null(strstr(log, "T0KEN"));
    assert_null(strstr(log, "k3y"));
    free(log);
    capture_end();
    server_stop(&s);
}

/* Nothing listening: each retry fails to connect, then one warning. */
static void webhook_connection_refused(void **state)
{
    (void)state;
    capture_begin();
    char url[128];
    snprintf(url, sizeof url, "http://127.0.0.1:%u/alert", closed_port());
    cw_alert_config cfg = {.webhook_url = url, .timeout_ms = 2000, .webhook_retries = 1};
    cw_alerter *a = start_alerter(&cfg, NULL);
    cw_alert_event ev = sample_event("msg-refused");
    cw_alerter_post(a, &ev);
    char *line = wait_log_line(5000, "alert hook failed", "after 2 tries", "msg-refused",
                               (const char *)NULL);
    assert_non_null(line);
    free(line);
    cw_alerter_free(a);
    capture_end();
}

/* A server that never answers in time: abandoned after timeout * (1 + retries)
 * (+ backoff) and logged; neither the callback nor post() waits for it. */
static void webhook_hang_does_not_block(void **state)
{
    (void)state;
    http_server s;
    static const unsigned ok[] = {200};
    server_start(&s, ok, 1, 20000);
    capture_begin();
    char url[128];
    snprintf(url, sizeof url, "http://127.0.0.1:%u/alert", s.port);
    collector c;
    collector_init(&c);
    const int64_t timeout = 300;
    cw_alert_config cfg = {.webhook_url = url, .timeout_ms = timeout, .webhook_retries = 1};
    cw_alerter *a = start_alerter(&cfg, &c);

    cw_alert_event ev = sample_event("msg-hang");
    int64_t t0 = now_ms(), u0 = now_us();
    cw_alerter_post(a, &ev);
    int64_t post_us = now_us() - u0;
    assert_int_equal(collector_wait(&c, 1, 2000), 1);
    assert_true(c.first_at - t0 < 200);
    assert_int_equal(server_wait(&s, 1, 2000), 1);

    /* More failures while the webhook hangs: post() stays quick. */
    cw_alert_event more = sample_event("msg-hang-2");
    for (int i = 0; i < 20; i++) {
        u0 = now_us();
        cw_alerter_post(a, &more);
        int64_t us = now_us() - u0;
        if (us > post_us)
            post_us = us;
    }
    /* Blocked behind the hanging webhook, a post would take its timeout
     * (300 ms) or more: a third of it is far from either (a thread sanitizer
     * and a busy machine make a quick post take a few ms). */
    assert_true(post_us < timeout * 1000 / 3);

    char *line = wait_log_line(5000, "alert hook failed", "hook=webhook", "msg-hang",
                               "after 2 tries", (const char *)NULL);
    int64_t took = now_ms() - t0;
    assert_non_null(line);
    free(line);
    assert_true(took >= timeout * 2);
    assert_true(took < timeout * 2 + 250 + 1500);
    assert_true(server_wait(&s, 2, 100) >= 2);

    /* free() within 2 * timeout even with 20 hanging alerts queued. */
    int64_t f0 = now_ms();
    cw_alerter_free(a);
    assert_true(now_ms() - f0 <= timeout * 2 + 100);
    capture_end();
    server_stop(&s);
    collector_fini(&c);
}

/* The command gets the document on stdin and a minimal environment. */
static void command_gets_stdin(void **state)
{
    (void)state;
    char script[600], out[600], env[600];
    write_script("alert-cat.sh",
                 "cat > \"$1.tmp\" && mv \"$1.tmp\" \"$1\"\n"
                 "env > \"$2.tmp\"; echo \"argv3=$3\" >> \"$2.tmp\"; mv \"$2.tmp\" \"$2\"\n",
                 script, sizeof script);
    snprintf(out, sizeof out, "%s/cat.json", g_tmp);
    snprintf(env, sizeof env, "%s/cat.env", g_tmp);
    setenv("CW_TEST_SECRET", "do-not-pass", 1);
    capture_begin();
    char *argv[] = {script, out, env, "a b;$(rm -rf /)", NULL};
    cw_alert_config cfg = {.command_argv = argv, .timeout_ms = 5000};
    cw_alerter *a = start_alerter(&cfg, NULL);
    assert_true(cw_alerter_has_hooks(a));

    cw_alert_event ev = sample_event("msg-cmd");
    ev.reason = "it said \"no\"\nand left";
    cw_alerter_post(a, &ev);
    char *json = wait_file(out, 5000);
    char *envtext = wait_file(env, 5000);
    cw_alerter_free(a);
    char *log = capture_text();
    assert_null(strstr(log, "alert hook failed"));
    free(log);
    capture_end();
    unsetenv("CW_TEST_SECRET");

    assert_non_null(json);
    json_object *o = parse_strict(json);
    assert_string_equal(get_str(o, "message_id"), "msg-cmd");
    assert_string_equal(get_str(o, "reason"), "it said \"no\"\nand left");
    assert_int_equal(get_int(o, "attempts"), 5);
    json_object_put(o);

    assert_non_null(envtext);
    assert_non_null(strstr(envtext, "PATH=/usr/bin:/bin\n"));
    assert_non_null(strstr(envtext, "CW_ALERT=1\n"));
    assert_null(strstr(envtext, "CW_TEST_SECRET"));
    assert_null(strstr(envtext, "HOME="));
    /* Arguments are passed as they are, never through a shell. */
    assert_non_null(strstr(envtext, "argv3=a b;$(rm -rf /)\n"));
    free(json);
    free(envtext);
}

/* A command past the timeout is killed, its children with it. */
static void command_timeout_killed(void **state)
{
    (void)state;
    char script[600], pidfile[600];
    write_script("alert-sleep.sh",
                 "sleep 30 &\necho $! > \"$1.tmp\"; mv \"$1.tmp\" \"$1\"\n"
                 "echo 'still sleeping' >&2\nwait\n",
                 script, sizeof script);
    snprintf(pidfile, sizeof pidfile, "%s/sleep.pid", g_tmp);
    capture_begin();
    char *argv[] = {script, pidfile, NULL};
    cw_alert_config cfg = {.command_argv = argv, .timeout_ms = 400};
    cw_alerter *a = start_alerter(&cfg, NULL);

    int64_t t0 = now_ms();
    cw_alert_event ev = sample_event("msg-slow");
    cw_alerter_post(a, &ev);
    char *line = wait_log_line(5000, "alert hook failed", "msg-slow", "timed out", "killed",
                               (const char *)NULL);
    int64_t took = now_ms() - t0;
    assert_non_null(line);
    assert_non_null(strstr(line, "still sleeping"));
    free(line);
    assert_true(took >= 400);
    assert_true(took < 2500);
    cw_alerter_free(a);
    capture_end();

    /* The grandchild (sleep) went with the process group. */
    char *pid = wait_file(pidfile, 100);
    assert_non_null(pid);
    char stat_path[64], st[256] = "";
    snprintf(stat_path, sizeof stat_path, "/proc/%d/stat", atoi(pid));
    free(pid);
    for (int i = 0; i < 100; i++) {
        FILE *f = fopen(stat_path, "r");
        if (!f)
            return; /* gone */
        size_t n = fread(st, 1, sizeof st - 1, f);
        st[n] = '\0';
        fclose(f);
        const char *paren = strrchr(st, ')');
        if (paren && paren[1] == ' ' && paren[2] == 'Z')
            return; /* dead, waiting for its new parent */
        sleep_ms(10);
    }
    fail_msg("the command's child is still alive: %s", st);
}

/* A non-zero exit is logged with its status and stderr. */
static void command_exit_status_logged(void **state)
{
    (void)state;
    char script[600];
    write_script("alert-fail.sh", "cat > /dev/null\necho 'boom on stderr' >&2\nexit 3\n", script,
                 sizeof script);
    capture_begin();
    char *argv[] = {script, NULL};
    cw_alert_config cfg = {.command_argv = argv, .timeout_ms = 5000};
    cw_alerter *a = start_alerter(&cfg, NULL);
    cw_alert_event ev = sample_event("msg-exit3");
    cw_alerter_post(a, &ev);
    char *line = wait_log_line(5000, "alert hook failed", "msg-exit3", "hook=command",
                               "exited with status 3", "boom on stderr", (const char *)NULL);
    assert_non_null(line);
    free(line);
    cw_alerter_free(a);
    capture_end();
}

/* A command that neither reads stdin nor lives long (EPIPE), a command killed
 * by a signal, and one that cannot be run: each is logged, and the other
 * hooks still run. */
static void failing_hooks_are_independent(void **state)
{
    (void)state;
    http_server s;
    static const unsigned ok[] = {200};
    server_start(&s, ok, 1, 0);
    char url[128];
    snprintf(url, sizeof url, "http://127.0.0.1:%u/alert", s.port);
    char script[600];
    write_script("alert-segv.sh", "kill -SEGV $$\n", script, sizeof script);
    capture_begin();
    collector c;
    collector_init(&c);

    char *missing[] = {"/nonexistent/cw-alert-hook", NULL};
    cw_alert_config cfg = {.command_argv = missing, .webhook_url = url, .timeout_ms = 2000};
    cw_alerter *a = start_alerter(&cfg, &c);
    cw_alert_event ev = sample_event("msg-missing");
    char *big = malloc(70000); /* larger than a pipe's buffer */
    assert_non_null(big);
    memset(big, 'x', 69999);
    big[69999] = '\0';
    ev.reason = big;
    cw_alerter_post(a, &ev);
    char *line = wait_log_line(5000, "alert hook failed", "msg-missing", "cannot run it",
                               "/nonexistent/cw-alert-hook", (const char *)NULL);
    assert_non_null(line);
    free(line);
    assert_int_equal(collector_wait(&c, 1, 5000), 1);
    assert_int_equal(server_wait(&s, 1, 5000), 1);
    cw_alerter_free(a);

    char *argv[] = {script, NULL};
    cfg.command_argv = argv;
    a = start_alerter(&cfg, &c);
    ev.message_id = "msg-segv";
    cw_alerter_post(a, &ev);
    line = wait_log_line(5000, "alert hook failed", "msg-segv", "killed by signal", "SIGSEGV",
                         (const char *)NULL);
    assert_non_null(line);
    free(line);
    assert_int_equal(collector_wait(&c, 2, 5000), 2);
    assert_int_equal(server_wait(&s, 2, 5000), 2);
    cw_alerter_free(a);
    capture_end();
    assert_int_equal(strlen(s.bodies[1]), strlen(c.docs[1]));
    free(big);
    server_stop(&s);
    collector_fini(&c);
}

/* 5 of one (type, class) in a window: 1 alert, then 1 digest of 4; another
 * class is not limited. */
static void rate_limit_and_digest(void **state)
{
    (void)state;
    collector c;
    collector_init(&c);
    const int64_t window = 500;
    cw_alert_config cfg = {.timeout_ms = 2000, .rate_limit_ms = window};
    cw_alerter *a = start_alerter(&cfg, &c);

    int64_t t0 = now_ms();
    cw_alert_event ev = sample_event("msg-rl");
    for (int i = 0; i < 5; i++) {
        ev.failed_at_ms = 1700000000000LL + i * 10;
        cw_alerter_post(a, &ev);
    }
    cw_alert_event other = sample_event("msg-other");
    other.error_class = "poison";
    cw_alerter_post(a, &other);

    assert_int_equal(collector_wait(&c, 2, 2000), 2);
    assert_true(now_ms() - t0 < window);
    assert_int_equal(collector_wait(&c, 3, 3000), 3);
    int64_t digest_at = now_ms() - t0;
    sleep_ms(window + 200);
    cw_alerter_free(a);
    assert_int_equal(c.n, 3);
    assert_true(digest_at >= window - 20);
    assert_true(digest_at < window + 1100);

    json_object *o = parse_strict(c.docs[0]);
    assert_string_equal(get_str(o, "error_class"), "exhausted");
    assert_string_equal(get_str(o, "failed_at"), "2023-11-14T22:13:20.000Z");
    json_object_put(o);
    o = parse_strict(c.docs[1]);
    assert_string_equal(get_str(o, "error_class"), "poison");
    json_object_put(o);

    o = parse_strict(c.docs[2]);
    char keys[512];
    keys_of(o, keys, sizeof keys);
    assert_string_equal(keys, DIGEST_KEYS);
    assert_true(is_digest(o));
    assert_string_equal(get_str(o, "type"), "payment.refund");
    assert_string_equal(get_str(o, "error_class"), "exhausted");
    assert_int_equal(get_int(o, "held_back"), 4);
    assert_int_equal(get_int(o, "window_ms"), window);
    assert_string_equal(get_str(o, "first_held_at"), "2023-11-14T22:13:20.010Z");
    assert_string_equal(get_str(o, "last_held_at"), "2023-11-14T22:13:20.040Z");
    json_object_put(o);
    collector_fini(&c);
}

/* A new window after the digest: the next failure alerts again. */
static void rate_limit_window_reopens(void **state)
{
    (void)state;
    collector c;
    collector_init(&c);
    cw_alert_config cfg = {.timeout_ms = 2000, .rate_limit_ms = 200};
    cw_alerter *a = start_alerter(&cfg, &c);
    cw_alert_event ev = sample_event("msg-w1");
    cw_alerter_post(a, &ev);
    assert_int_equal(collector_wait(&c, 1, 2000), 1);
    sleep_ms(400); /* the window ended with nothing held: no digest */
    assert_int_equal(collector_count(&c), 1);
    ev.message_id = "msg-w2";
    cw_alerter_post(a, &ev);
    assert_int_equal(collector_wait(&c, 2, 2000), 2);
    cw_alerter_free(a);
    assert_int_equal(c.n, 2);
    assert_non_null(strstr(c.docs[1], "msg-w2"));
    collector_fini(&c);
}

/* A full queue: the rest is counted, warned about once, and sent as a digest. */
static void queue_overflow_digest(void **state)
{
    (void)state;
    collector c;
    collector_init(&c);
    capture_begin();
    cw_alert_config cfg = {.timeout_ms = 5000};
    cw_alerter *a = start_alerter(&cfg, &c);

    c.hold = true;
    cw_alert_event ev = sample_event("msg-flood");
    cw_alerter_post(a, &ev);
    pthread_mutex_lock(&c.mu);
    while (!c.entered)
        pthread_cond_wait(&c.cv, &c.mu);
    pthread_mutex_unlock(&c.mu);
    /* The thread is inside the callback: the queue is empty. */
    const int extra = 7;
    for (int i = 0; i < CW_ALERT_QUEUE_MAX + extra; i++)
        cw_alerter_post(a, &ev);
    pthread_mutex_lock(&c.mu);
    c.hold = false;
    pthread_cond_broadcast(&c.cv);
    pthread_mutex_unlock(&c.mu);

    size_t want = 1 + CW_ALERT_QUEUE_MAX + 1;
    assert_int_equal(collector_wait(&c, want, 20000), want);
    cw_alerter_free(a);
    assert_int_equal(c.n, want);
    /* The digest goes out when the overflow window ends: after the queued
     * alerts, or among them on a slow machine. */
    size_t digests = 0;
    for (size_t i = 0; i < c.n; i++) {
        if (!strstr(c.docs[i], "\"digest\""))
            continue;
        json_object *o = parse_strict(c.docs[i]);
        assert_true(is_digest(o));
        assert_int_equal(get_int(o, "held_back"), extra);
        assert_string_equal(get_str(o, "error_class"), "exhausted");
        json_object_put(o);
        digests++;
    }
    assert_int_equal(digests, 1);

    char *log = capture_text();
    assert_int_equal(count_of(log, "alert queue full"), 1);
    free(log);
    capture_end();
    collector_fini(&c);
}

/* free() delivers what is queued, within 2 * timeout. */
static void free_delivers_queued(void **state)
{
    (void)state;
    collector c;
    collector_init(&c);
    c.delay_ms = 20;
    cw_alert_config cfg = {.timeout_ms = 1000, .rate_limit_ms = 60000};
    cw_alerter *a = start_alerter(&cfg, &c);
    cw_alert_event ev = sample_event("msg-q");
    for (int i = 0; i < 20; i++) {
        ev.error_class = i % 2 ? "odd" : "even";
        cw_alerter_post(a, &ev);
    }
    int64_t t0 = now_ms();
    cw_alerter_free(a);
    int64_t took = now_ms() - t0;
    assert_true(took <= 2000 + 50);
    /* 2 alerts (one per class) and, at shutdown, 2 digests of 9 each. */
    assert_int_equal(c.n, 4);
    int digests = 0;
    for (size_t i = 0; i < c.n; i++) {
        json_object *o = parse_strict(c.docs[i]);
        if (is_digest(o)) {
            digests++;
            assert_int_equal(get_int(o, "held_back"), 9);
        }
        json_object_put(o);
    }
    assert_int_equal(digests, 2);
    collector_fini(&c);

    /* Without a rate limit: every one of them. */
    collector_init(&c);
    c.delay_ms = 20;
    cfg.rate_limit_ms = 0;
    a = start_alerter(&cfg, &c);
    for (int i = 0; i < 20; i++)
        cw_alerter_post(a, &ev);
    t0 = now_ms();
    cw_alerter_free(a);
    assert_true(now_ms() - t0 <= 2000 + 50);
    assert_int_equal(c.n, 20);
    collector_fini(&c);
}

/* free() gives up at 2 * timeout and says how much was not delivered. */
static collector g_slow; /* outlives an alerter left to finish on its own */

static void free_is_bounded(void **state)
{
    (void)state;
    collector_init(&g_slow);
    g_slow.delay_ms = 40;
    capture_begin();
    const int64_t timeout = 250;
    cw_alert_config cfg = {.timeout_ms = timeout};
    cw_alerter *a = start_alerter(&cfg, &g_slow);
    cw_alert_event ev = sample_event("msg-slowcb");
    for (int i = 0; i < 50; i++)
        cw_alerter_post(a, &ev);
    int64_t t0 = now_ms();
    cw_alerter_free(a);
    int64_t took = now_ms() - t0;
    assert_true(took <= timeout * 2 + 50);
    size_t got = collector_count(&g_slow);
    assert_true(got > 0 && got < 50);
    char *line = wait_log_line(1000, "alerts not delivered", (const char *)NULL);
    assert_non_null(line);
    free(line);
    sleep_ms(200);
    capture_end();
    collector_fini(&g_slow);
}

/* Nothing configured: no hooks, no thread, post() does nothing. */
static void no_hooks(void **state)
{
    (void)state;
    cw_alerter *a = NULL;
    assert_int_equal(cw_alerter_new(&a, NULL), 0);
    assert_false(cw_alerter_has_hooks(a));
    assert_int_equal(cw_alerter_start(a), 0);
    cw_alert_event ev = sample_event("msg-none");
    cw_alerter_post(a, &ev);
    cw_alerter_free(a);
    cw_alerter_free(NULL);
    assert_false(cw_alerter_has_hooks(NULL));

    cw_alert_config cfg = {0};
    assert_int_equal(cw_alerter_new(&a, &cfg), 0);
    assert_false(cw_alerter_has_hooks(a));
    cw_alerter_free(a); /* never started */

    /* A callback after start is refused; a relative command is refused. */
    collector c;
    collector_init(&c);
    assert_int_equal(cw_alerter_new(&a, &cfg), 0);
    assert_int_equal(cw_alerter_add_callback(a, collect, &c, "p"), 0);
    assert_true(cw_alerter_has_hooks(a));
    assert_int_equal(cw_alerter_start(a), 0);
    assert_int_equal(cw_alerter_add_callback(a, collect, &c, "late"), CW_STATUS_INVALID_ARG);
    assert_int_equal(cw_alerter_start(a), CW_STATUS_INVALID_ARG);
    cw_alerter_free(a);
    collector_fini(&c);
    char *rel[] = {"notify.sh", NULL};
    cfg.command_argv = rel;
    assert_int_equal(cw_alerter_new(&a, &cfg), CW_STATUS_INVALID_ARG);
    assert_null(a);
}

/* ---- main ------------------------------------------------------------------------ */

static int remove_entry(const char *path, const struct stat *sb, int flag, struct FTW *ftw)
{
    (void)sb;
    (void)flag;
    (void)ftw;
    return remove(path);
}

static int group_setup(void **state)
{
    (void)state;
    return mkdtemp(g_tmp) ? 0 : -1;
}

static int group_teardown(void **state)
{
    (void)state;
    return nftw(g_tmp, remove_entry, 16, FTW_DEPTH | FTW_PHYS);
}

/* A failed assertion leaves stderr redirected: restore it. */
static int test_teardown(void **state)
{
    (void)state;
    capture_end();
    return 0;
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_teardown(callback_gets_document, test_teardown),
        cmocka_unit_test_teardown(json_escaping, test_teardown),
        cmocka_unit_test_teardown(webhook_posts_json, test_teardown),
        cmocka_unit_test_teardown(webhook_retries_5xx, test_teardown),
        cmocka_unit_test_teardown(webhook_4xx_logged_without_secrets, test_teardown),
        cmocka_unit_test_teardown(webhook_connection_refused, test_teardown),
        cmocka_unit_test_teardown(webhook_hang_does_not_block, test_teardown),
        cmocka_unit_test_teardown(command_gets_stdin, test_teardown),
        cmocka_unit_test_teardown(command_timeout_killed, test_teardown),
        cmocka_unit_test_teardown(command_exit_status_logged, test_teardown),
        cmocka_unit_test_teardown(failing_hooks_are_independent, test_teardown),
        cmocka_unit_test_teardown(rate_limit_and_digest, test_teardown),
        cmocka_unit_test_teardown(rate_limit_window_reopens, test_teardown),
        cmocka_unit_test_teardown(queue_overflow_digest, test_teardown),
        cmocka_unit_test_teardown(free_delivers_queued, test_teardown),
        cmocka_unit_test_teardown(free_is_bounded, test_teardown),
        cmocka_unit_test_teardown(no_hooks, test_teardown),
    };
    return cmocka_run_group_tests(tests, group_setup, group_teardown);
}
