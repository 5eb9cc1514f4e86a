/* Unit tests for framework/url.c: masking a URL's password, splitting and
 * checking broker URL lists, checking webhook URLs and what is shown of
 * them (config check's redaction, the log lines' origin). */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>

#include <curl/curl.h>
#include <string.h>

#include "framework/url.h"

static int group_setup(void **state)
{
    (void)state;
    return curl_global_init(CURL_GLOBAL_DEFAULT) == CURLE_OK ? 0 : -1;
}

static int group_teardown(void **state)
{
    (void)state;
    curl_global_cleanup();
    return 0;
}

/* `show` writes `want` of `url` (its name is in the message when not). */
static void shown_eq(void (*show)(const char *, char *, size_t), const char *name, const char *url,
                     const char *want)
{
    char out[256];

    memset(out, 'x', sizeof out);
    show(url, out, sizeof out);
    if (strcmp(out, want) != 0)
        fail_msg("%s('%s') = '%s', want '%s'", name, url ? url : "(null)", out, want);
}

static void mask_eq(const char *url, const char *want)
{
    shown_eq(cw__url_mask, "cw__url_mask", url, want);
}

/* ---- cw__url_mask() ------------------------------------------------------ */

static void test_mask_user_password(void **state)
{
    (void)state;
    mask_eq("amqp://user:secret@h:5672/v", "amqp://user:***@h:5672/v");
    mask_eq("amqp://guest:guest@127.0.0.1:5672/", "amqp://guest:***@127.0.0.1:5672/");
    mask_eq("amqps://u:p%40ss@h/vh", "amqps://u:***@h/vh");
    mask_eq("amqp://user:@h/", "amqp://user:***@h/");
    mask_eq("amqp://:secret@h/", "amqp://:***@h/");
    /* Everything from the first ':' of the user information is password. */
    mask_eq("amqp://user:se:cret@h/", "amqp://user:***@h/");
    mask_eq("https://u:T0K3N@hooks.example.com/x", "https://u:***@hooks.example.com/x");
}

static void test_mask_without_scheme(void **state)
{
    (void)state;
    mask_eq("user:secret@host:5672/v", "user:***@host:5672/v");
    mask_eq("guest:guest@127.0.0.1", "guest:***@127.0.0.1");
    mask_eq("host:5672", "host:5672");
}

static void test_mask_user_only(void **state)
{
    (void)state;
    mask_eq("amqp://user@h:5672/v", "amqp://user@h:5672/v");
    mask_eq("amqp://@h/", "amqp://@h/");
    mask_eq("user@host", "user@host");
}

static void test_mask_at_in_password(void **state)
{
    (void)state;
    /* The user information ends at the last '@': an unencoded '@' or '/'
     * in the password is hidden whole. */
    mask_eq("amqp://user:p@ss@h/", "amqp://user:***@h/");
    mask_eq("amqp://user:p@s@s@h:5672/v", "amqp://user:***@h:5672/v");
    mask_eq("amqp://user:pa/ss@h/", "amqp://user:***@h/");
}

static void test_mask_ipv6(void **state)
{
    (void)state;
    mask_eq("amqp://u:pw@[::1]:5672/v", "amqp://u:***@[::1]:5672/v");
    mask_eq("amqps://u:pw@[2001:db8::2]/", "amqps://u:***@[2001:db8::2]/");
    /* The colons of an address are no password. */
    mask_eq("amqp://[::1]:5672/", "amqp://[::1]:5672/");
    mask_eq("amqp://u@[fe80::1]:5672/", "amqp://u@[fe80::1]:5672/");
}

static void test_mask_query_fragment(void **state)
{
    (void)state;
    mask_eq("amqp://u:pw@h/v?heartbeat=10#frag", "amqp://u:***@h/v?heartbeat=10#frag");
    mask_eq("amqp://h/v?heartbeat=10", "amqp://h/v?heartbeat=10");
    /* An '@' further on hides too much, never too little. */
    mask_eq("amqp://u:pw@h/v?to=a@b", "amqp://u:***@b");
    mask_eq("amqp://h/v?x=a:b@c", "amqp://h/v?x=a:***@c");
}

static void test_mask_several_urls(void **state)
{
    (void)state;
    char out[256];

    /* A whole list is one user information to the mask (its first ':' to
     * its last '@'): no password of any URL shows. cw__url_list_mask()
     * masks each URL on its own. */
    cw__url_mask("amqp://a:pw1@h1/ amqp://b:pw2@h2/", out, sizeof out);
    assert_string_equal(out, "amqp://a:***@h2/");
}

static void test_mask_nothing_to_hide(void **state)
{
    (void)state;
    mask_eq("amqp://h/", "amqp://h/");
    mask_eq("amqp://", "amqp://");
    mask_eq("not a url", "not a url");
    mask_eq("", "");
    mask_eq(NULL, "");
}

static void test_mask_cut(void **state)
{
    (void)state;
    const char *url = "amqp://user:secret@h:5672/v";
    char out[64];

    /* Cut anywhere: terminated in the buffer, no byte past it, and never a
     * piece of the password (it is found in the URL, not in a cut copy). */
    for (unsigned long cap = 1; cap < sizeof out; cap++) {
        memset(out, 'Z', sizeof out);
        cw__url_mask(url, out, cap);
        if (strnlen(out, sizeof out) >= cap)
            fail_msg("cap %lu: not terminated within the buffer", cap);
        if (cap + 1 < sizeof out && out[cap] != 'Z')
            fail_msg("cap %lu: wrote past the buffer", cap);
        if (strstr(out, "sec") != NULL || strstr(out, ":s") != NULL)
            fail_msg("cap %lu: '%s' shows part of the password", cap, out);
    }
    memset(out, 'Z', sizeof out);
    cw__url_mask(url, out, 0);
    assert_int_equal(out[0], 'Z');
}

/* ---- broker URL lists --------------------------------------------------- */

static void test_list_next(void **state)
{
    (void)state;
    const char *list = " ,amqp://a/,, amqp://u:p@b:5672/v\tamqps://c/ ,\t";
    const char *want[] = {"amqp://a/", "amqp://u:p@b:5672/v", "amqps://c/"};
    const char *p = list;
    const char *url;
    size_t len, n = 0;

    while ((url = cw__url_list_next(&p, &len)) != NULL) {
        assert_true(n < sizeof want / sizeof *want);
        assert_int_equal(len, strlen(want[n]));
        assert_memory_equal(url, want[n], len);
        assert_ptr_equal(p, url + len);
        n++;
    }
    assert_int_equal(n, 3);
    assert_int_equal(*p, '\0');
    /* At the end it stays at the end. */
    assert_null(cw__url_list_next(&p, &len));
    assert_int_equal(len, 0);

    p = "";
    assert_null(cw__url_list_next(&p, &len));
    p = " ,\t,";
    assert_null(cw__url_list_next(&p, &len));
}

static void test_list_nth_count(void **state)
{
    (void)state;
    const char *list = "amqp://a/, amqp://bb/ amqp://ccc/";
    char buf[32];

    assert_int_equal(cw__url_list_count(list), 3);
    assert_int_equal(cw__url_list_count("amqp://one/"), 1);
    assert_int_equal(cw__url_list_count(""), 0);
    assert_int_equal(cw__url_list_count(", \t"), 0);

    assert_true(cw__url_list_nth(list, 0, buf, sizeof buf));
    assert_string_equal(buf, "amqp://a/");
    assert_true(cw__url_list_nth(list, 2, buf, sizeof buf));
    assert_string_equal(buf, "amqp://ccc/");
    /* No URL 3: buf is left as it was. */
    assert_false(cw__url_list_nth(list, 3, buf, sizeof buf));
    assert_string_equal(buf, "amqp://ccc/");
    /* A URL longer than the buffer is cut to it. */
    assert_true(cw__url_list_nth(list, 1, buf, 8));
    assert_string_equal(buf, "amqp://");
    assert_true(cw__url_list_nth(list, 1, buf, 1));
    assert_string_equal(buf, "");
}

/* `check` accepts `s` (want_why NULL) or refuses it saying exactly want_why. */
static void check_eq(bool (*check)(const char *, char *, size_t), const char *s,
                     const char *want_why)
{
    char why[256] = "";
    bool ok = check(s, why, sizeof why);

    if (want_why == NULL && !ok)
        fail_msg("'%s' was refused: %s", s, why);
    if (want_why != NULL && ok)
        fail_msg("'%s' was accepted", s);
    if (want_why != NULL && strcmp(why, want_why) != 0)
        fail_msg("'%s': '%s', want '%s'", s, why, want_why);
}

static void valid_eq(const char *urls, const char *want_why)
{
    check_eq(cw__url_list_valid, urls, want_why);
}

static void test_list_valid(void **state)
{
    (void)state;
    char longest[CW_URL_MAX + 2];

    valid_eq("amqp://h", NULL);
    valid_eq("amqp://u:p@h:5672/v, amqps://u:p@[::1]:5671/ amqp://h2", NULL);
    valid_eq("", "value is empty");
    valid_eq(" , ", "value is empty");
    valid_eq("http://h/",
             "URL 1 of the list is not amqp[s]://[user[:password]@]host[:port][/vhost]");
    valid_eq("amqp://h, amqp://h:99999/",
             "URL 2 of the list is not amqp[s]://[user[:password]@]host[:port][/vhost]");

    /* CW_URL_MAX bytes is the most. */
    memset(longest, 'h', sizeof longest);
    memcpy(longest, "amqp://", 7);
    longest[CW_URL_MAX] = '\0';
    valid_eq(longest, NULL);
    longest[CW_URL_MAX] = 'h';
    longest[CW_URL_MAX + 1] = '\0';
    valid_eq(longest, "URL 1 of the list is longer than 1023 bytes");
}

static void test_list_valid_never_quotes(void **state)
{
    (void)state;
    char why[256];

    assert_false(cw__url_list_valid("amqp://h, amqp://u:secret@h:bad/", why, sizeof why));
    assert_null(strstr(why, "secret"));
}

static void test_list_mask(void **state)
{
    (void)state;
    char out[256];

    cw__url_list_mask("amqp://u:secret@a:5672/, amqps://v:hush@b:5671/", out, sizeof out);
    assert_string_equal(out, "amqp://u:***@a:5672/ amqps://v:***@b:5671/");
    /* Separators become one space; each URL is masked on its own. */
    cw__url_list_mask(" ,amqp://a:p1@h1/,,\tamqp://h2/ , amqp://c:p3@h3/ ", out, sizeof out);
    assert_string_equal(out, "amqp://a:***@h1/ amqp://h2/ amqp://c:***@h3/");
    cw__url_list_mask("", out, sizeof out);
    assert_string_equal(out, "");
    /* Cut: terminated, no password. */
    cw__url_list_mask("amqp://u:secret@a/ amqp://v:hush@b/", out, 24);
    assert_string_equal(out, "amqp://u:***@a/ amqp://");
    assert_null(strstr(out, "hush"));
}

/* ---- webhook URLs ------------------------------------------------------- */

static void webhook_eq(const char *url, const char *want_why)
{
    check_eq(cw__url_webhook_valid, url, want_why);
}

static void test_webhook_valid(void **state)
{
    (void)state;
    webhook_eq("https://hooks.example.com/T0K3N?x=1", NULL);
    webhook_eq("HTTP://h", NULL);
    webhook_eq("http://u:p@h:8080", NULL);
    webhook_eq("https://[::1]:8443/x", NULL);
    webhook_eq("ftp://h/", "the URL does not start with http:// or https://");
    webhook_eq("hooks.example.com/x", "the URL does not start with http:// or https://");
    webhook_eq("https://", "the URL has no host");
    webhook_eq("https://?x", "the URL has no host");
    webhook_eq("https://#x", "the URL has no host");
    webhook_eq("https://user@/x", "the URL has no host");
    webhook_eq("https://h/a b", "the URL contains a blank or a control character");
    webhook_eq("https://h/a\x7f", "the URL contains a blank or a control character");
}

static void redact_eq(const char *url, const char *want)
{
    shown_eq(cw__url_redact, "cw__url_redact", url, want);
}

static void test_redact(void **state)
{
    (void)state;
    char out[12];

    redact_eq("https://hooks.example.com/T0K3N?x=1", "https://hooks.example.com/***");
    redact_eq("http://u:p@h:8080", "http://h:8080");
    redact_eq("https://h", "https://h");
    redact_eq("https://h?token=1", "https://h/***");
    redact_eq("https://h#token", "https://h/***");
    redact_eq("https://[::1]:8443/x", "https://[::1]:8443/***");
    /* A password holding '@': the user information ends at the last '@'
     * of the authority, as the webhook check reads it. */
    redact_eq("https://user:p@ss@hooks/x", "https://hooks/***");
    cw__url_redact("https://hooks.example.com/T0K3N", out, sizeof out);
    assert_string_equal(out, "https://hoo");
}

static void origin_eq(const char *url, const char *want)
{
    shown_eq(cw__url_origin, "cw__url_origin", url, want);
}

static void test_origin(void **state)
{
    (void)state;
    char out[16];

    origin_eq("https://u:T0K3N@hooks.example.com/x?token=1#f", "https://hooks.example.com:443");
    origin_eq("http://h:8080/x", "http://h:8080");
    origin_eq("http://h", "http://h:80");
    origin_eq("https://[::1]/x", "https://[::1]:443");
    origin_eq("not a url", "(an unparsable URL)");
    cw__url_origin("https://hooks.example.com/", out, sizeof out);
    assert_string_equal(out, "https://hooks.e");
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_mask_user_password),
        cmocka_unit_test(test_mask_without_scheme),
        cmocka_unit_test(test_mask_user_only),
        cmocka_unit_test(test_mask_at_in_password),
        cmocka_unit_test(test_mask_ipv6),
        cmocka_unit_test(test_mask_query_fragment),
        cmocka_unit_test(test_mask_several_urls),
        cmocka_unit_test(test_mask_nothing_to_hide),
        cmocka_unit_test(test_mask_cut),
        cmocka_unit_test(test_list_next),
        cmocka_unit_test(test_list_nth_count),
        cmocka_unit_test(test_list_valid),
        cmocka_unit_test(test_list_valid_never_quotes),
        cmocka_unit_test(test_list_mask),
        cmocka_unit_test(test_webhook_valid),
        cmocka_unit_test(test_redact),
        cmocka_unit_test(test_origin),
    };
    return cmocka_run_group_tests(tests, group_setup, group_teardown);
}
