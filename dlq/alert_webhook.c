/* [alert] webhook: the JSON document POSTed with libcurl, tried again with
 * backoff on transient failures, within the timeout and the shutdown
 * deadline; log lines name the webhook by its origin only. */
#include <stdio.h>
#include <string.h>

#include <curl/curl.h>

#include "compworker/status.h"
#include "compworker/version.h"
#include "dlq/alert_private.h"
#include "framework/clock.h"
#include "framework/error.h"
#include "framework/log.h"
#include "framework/url.h"

/* ---- the webhook ------------------------------------------------------------ */

static pthread_once_t cw_curl_once = PTHREAD_ONCE_INIT;
static CURLcode cw_curl_init_rc;

static void curl_init_once(void)
{
    cw_curl_init_rc = curl_global_init(CURL_GLOBAL_DEFAULT);
}

static size_t discard_body(char *p, size_t size, size_t n, void *ud)
{
    (void)p;
    (void)ud;
    return size * n;
}

/* Aborts a request running past the shutdown deadline. */
static int abort_at_deadline(void *ud, curl_off_t dt, curl_off_t dn, curl_off_t ut, curl_off_t un)
{
    (void)dt;
    (void)dn;
    (void)ut;
    (void)un;
    return cw__alert_past_deadline(ud) ? 1 : 0;
}

int cw__alert_webhook_setup(cw_alerter *a)
{
    pthread_once(&cw_curl_once, curl_init_once);
    if (cw_curl_init_rc != CURLE_OK)
        return cw__error(CW_STATUS_IO, "alert webhook: curl_global_init: %s",
                         curl_easy_strerror(cw_curl_init_rc));
    cw__url_origin(a->cfg.webhook_url, a->webhook_label, sizeof a->webhook_label);
    CURL *c = a->curl = curl_easy_init();
    if (!c)
        return cw__error(CW_STATUS_NOMEM, "alert webhook: curl_easy_init failed");
    static const char *const headers[] = {
        "Content-Type: application/json", "Expect:", /* no 100-continue round trip */
    };
    for (size_t i = 0; i < sizeof headers / sizeof *headers; i++) {
        struct curl_slist *h = curl_slist_append(a->headers, headers[i]);
        if (!h)
            return CW_STATUS_NOMEM;
        a->headers = h;
    }
    CURLcode rc = CURLE_OK;
#define SET(opt, val)                                                                              \
    if (rc == CURLE_OK)                                                                            \
    rc = curl_easy_setopt(c, opt, val)
    SET(CURLOPT_URL, a->cfg.webhook_url);
    SET(CURLOPT_POST, 1L);
    SET(CURLOPT_HTTPHEADER, a->headers);
    SET(CURLOPT_USERAGENT, "compworker/" CW_VERSION_STRING);
    SET(CURLOPT_NOSIGNAL, 1L);
    SET(CURLOPT_FOLLOWLOCATION, 0L);
    SET(CURLOPT_PROTOCOLS_STR, "http,https");
    SET(CURLOPT_WRITEFUNCTION, discard_body);
    SET(CURLOPT_ERRORBUFFER, a->curl_err);
    SET(CURLOPT_XFERINFOFUNCTION, abort_at_deadline);
    SET(CURLOPT_XFERINFODATA, a);
    SET(CURLOPT_NOPROGRESS, 0L);
#undef SET
    if (rc != CURLE_OK)
        return cw__error(CW_STATUS_INVALID_ARG, "[alert] webhook %s: %s", a->webhook_label,
                         curl_easy_strerror(rc));
    return 0;
}

/* Transfer errors worth another try: the server may come back. */
static bool curl_retryable(CURLcode rc)
{
    switch (rc) {
    case CURLE_COULDNT_RESOLVE_PROXY:
    case CURLE_COULDNT_RESOLVE_HOST:
    case CURLE_COULDNT_CONNECT:
    case CURLE_OPERATION_TIMEDOUT:
    case CURLE_SEND_ERROR:
    case CURLE_RECV_ERROR:
    case CURLE_GOT_NOTHING:
    case CURLE_PARTIAL_FILE:
    case CURLE_SSL_CONNECT_ERROR:
    case CURLE_HTTP2:
    case CURLE_HTTP2_STREAM: return true;
    default: return false;
    }
}

void cw__alert_run_webhook(cw_alerter *a, const char *json, const cw_log_task *task)
{
    CURL *c = a->curl;
    unsigned tries = 0, max_tries = 1 + a->cfg.webhook_retries;
    CURLcode rc = CURLE_OK;
    long code = 0;
    int64_t start = cw__mono_ms();
    curl_easy_setopt(c, CURLOPT_POSTFIELDS, json);
    curl_easy_setopt(c, CURLOPT_POSTFIELDSIZE_LARGE, (curl_off_t)strlen(json));
    for (;;) {
        int64_t left = atomic_load(&a->deadline) - cw__mono_ms();
        if (left <= 0) {
            cw_log_warn(task,
                        "alert hook failed: hook=webhook %s: abandoned at shutdown after %u "
                        "tries",
                        a->webhook_label, tries);
            return;
        }
        long t = (long)cw__alert_min64(a->cfg.timeout_ms, left);
        curl_easy_setopt(c, CURLOPT_TIMEOUT_MS, t);
        curl_easy_setopt(c, CURLOPT_CONNECTTIMEOUT_MS, t);
        a->curl_err[0] = '\0';
        tries++;
        rc = curl_easy_perform(c);
        code = 0;
        if (rc == CURLE_OK)
            curl_easy_getinfo(c, CURLINFO_RESPONSE_CODE, &code);
        if (rc == CURLE_OK && code >= 200 && code < 300) {
            cw_log_debug(task, "alert webhook %s answered %ld after %u tries", a->webhook_label,
                         code, tries);
            return;
        }
        bool again = rc == CURLE_OK ? (code >= 500 || code == 429) : curl_retryable(rc);
        if (!again || tries >= max_tries)
            break;
        unsigned shift = tries - 1 < 6 ? tries - 1 : 6;
        cw__alert_sleep_ms(a, cw__alert_min64((int64_t)CW_ALERT_BACKOFF_MS << shift,
                                              CW_ALERT_BACKOFF_MAX_MS));
    }
    long long took = (long long)(cw__mono_ms() - start);
    if (rc == CURLE_ABORTED_BY_CALLBACK)
        cw_log_warn(task,
                    "alert hook failed: hook=webhook %s: abandoned at shutdown after %u tries",
                    a->webhook_label, tries);
    else if (rc != CURLE_OK)
        cw_log_warn(task, "alert hook failed: hook=webhook %s: %s (after %u tries in %lld ms)",
                    a->webhook_label, a->curl_err[0] ? a->curl_err : curl_easy_strerror(rc), tries,
                    took);
    else
        cw_log_warn(task,
                    "alert hook failed: hook=webhook %s: HTTP status %ld (after %u tries in "
                    "%lld ms)",
                    a->webhook_label, code, tries, took);
}
