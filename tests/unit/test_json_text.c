/* Unit tests of framework/json_text.c: the checks of a JSON text json-c
 * does not make, and the body check publishers use. */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>

#include <stdbool.h>
#include <stdio.h>
#include <string.h>

#include "framework/json_text.h"

typedef struct text_case {
    const char *text;
    size_t len;         /* 0: strlen(text) */
    const char *refuse; /* NULL: passes; else in the reason */
} text_case;

static void run_text_cases(const text_case *cases, size_t n)
{
    unsigned bad = 0;
    for (size_t i = 0; i < n; i++) {
        const text_case *c = &cases[i];
        size_t len = c->len ? c->len : strlen(c->text);
        char why[160] = "";
        bool ok = cw__json_text_check(c->text, len, why, sizeof why);
        if (ok != !c->refuse || (c->refuse && !strstr(why, c->refuse))) {
            fprintf(stderr, "case %zu '%.*s': %s ('%s'), want %s%s\n", i, (int)len, c->text,
                    ok ? "passes" : "refused", why, c->refuse ? "refused with " : "it passes",
                    c->refuse ? c->refuse : "");
            bad++;
        }
    }
    assert_int_equal(bad, 0);
}

static void test_utf8(void **state)
{
    (void)state;
    static const text_case cases[] = {
        {"{\"s\":\"caf\xc3\xa9 \xe2\x82\xac \xf0\x9f\x92\xb8 \xf4\x8f\xbf\xbf\"}", 0, NULL},
        {"{\"s\":\"\x7f\"}", 0, NULL},
        {"{\"s\":\"\x80\"}", 0, "invalid UTF-8 at byte 6"},
        {"{\"s\":\"\xc0\xaf\"}", 0, "invalid UTF-8"},         /* overlong '/' */
        {"{\"s\":\"\xc1\xbf\"}", 0, "invalid UTF-8"},         /* overlong */
        {"{\"s\":\"\xe0\x9f\xbf\"}", 0, "invalid UTF-8"},     /* overlong 3 bytes */
        {"{\"s\":\"\xe0\xa0\x80\"}", 0, NULL},                /* U+0800, the first 3-byte */
        {"{\"s\":\"\xed\x9f\xbf\"}", 0, NULL},                /* U+D7FF */
        {"{\"s\":\"\xed\xa0\x80\"}", 0, "invalid UTF-8"},     /* U+D800, a surrogate */
        {"{\"s\":\"\xed\xbf\xbf\"}", 0, "invalid UTF-8"},     /* U+DFFF */
        {"{\"s\":\"\xf0\x8f\xbf\xbf\"}", 0, "invalid UTF-8"}, /* overlong 4 bytes */
        {"{\"s\":\"\xf4\x90\x80\x80\"}", 0, "invalid UTF-8"}, /* U+110000 */
        {"{\"s\":\"\xf5\x80\x80\x80\"}", 0, "invalid UTF-8"},
        {"{\"s\":\"\xff\"}", 0, "invalid UTF-8"},
        {"{\"s\":\"\xe2\x82\"}", 0, "invalid UTF-8"},                    /* cut inside the string */
        {"{\"s\":\"\xe2\x82", 0, "invalid UTF-8"},                       /* cut at the very end */
        {"{\"\xfe\":1}", 0, "invalid UTF-8 at byte 2"},                  /* in a key */
        {"\xef\xbb\xbf{}", 0, "unexpected byte 0xEF at byte 0"},         /* a BOM */
        {"{\"s\":\"caf\xc3\xa9\"} \xc3\xa9", 0, "unexpected byte 0xC3"}, /* outside strings */
    };
    run_text_cases(cases, sizeof cases / sizeof *cases);
}

static void test_strings(void **state)
{
    (void)state;
    static const text_case cases[] = {
        {"{\"s\":\"a\\\"b\\\\c\\/d\\b\\f\\n\\r\\t\\u00e9\\uD83D\\uDCB8\"}", 0, NULL},
        {"{\"s\":\"a\tb\"}", 0, "unescaped control character 0x09"},
        {"{\"s\":\"a\nb\"}", 0, "unescaped control character 0x0A"},
        {"{\"s\":\"a\x1f\"}", 0, "unescaped control character 0x1F"},
        {"{\"s\":\"a\0b\"}", 10, "unescaped control character 0x00"},
        {"{\"s\":\"\\x41\"}", 0, "invalid escape"},
        {"{\"s\":\"\\'\"}", 0, "invalid escape"},
        {"{\"s\":\"\\u12G4\"}", 0, "invalid \\u escape"},
        {"{\"s\":\"\\u12", 0, NULL}, /* cut short: the parser says truncated */
        {"{\"s\":\"\\", 0, NULL},
        {"{\"s\":\"abc", 0, NULL},
        {"{'s':1}", 0, "unexpected character '''"},
    };
    run_text_cases(cases, sizeof cases / sizeof *cases);
}

static void test_words(void **state)
{
    (void)state;
    static const text_case cases[] = {
        {"{\"a\":true,\"b\":false,\"c\":null}", 0, NULL},
        {"{\"a\":NaN}", 0, "unexpected word 'NaN' at byte 5"},
        {"{\"a\":Infinity}", 0, "unexpected word 'Infinity'"},
        {"{\"a\":-Infinity}", 0, "malformed number"},
        {"{\"a\":True}", 0, "unexpected word 'True'"},
        {"{\"a\":nul}", 0, "unexpected word 'nul'"},
        {"{\"a\":tru", 0, NULL}, /* cut short */
        {"{\"a\":1}/* c */", 0, "unexpected character '/'"},
        {"{\"a\":+1}", 0, "unexpected character '+'"},
    };
    run_text_cases(cases, sizeof cases / sizeof *cases);
}

static void test_numbers(void **state)
{
    (void)state;
    static const text_case cases[] = {
        {"[0,-0,1,-1,0.5,-0.5e-3,1E+2,12e0]", 0, NULL},
        {"[9223372036854775807,-9223372036854775808,18446744073709551615]", 0, NULL},
        {"[18446744073709551616]", 0, "integer out of range (not within 64 bits) at byte 1"},
        {"[-9223372036854775809]", 0, "integer out of range"},
        {"[123456789012345678901234567890]", 0, "integer out of range"},
        {"[1.7976931348623157e308,-1.7976931348623157e308]", 0, NULL}, /* DBL_MAX */
        {"[1.8e308]", 0, "number out of range (beyond a double)"},
        {"[-1.8e308]", 0, "number out of range"},
        {"[1e309]", 0, "number out of range"},
        {"[0.00001e313]", 0, NULL},                 /* 1e308 */
        {"[0.0001e313]", 0, "number out of range"}, /* 1e309 */
        {"[1e400]", 0, "number out of range"},
        {"[1e99999999999999999999]", 0, "number out of range"},
        {"[1e-400,0e999999,0.0e400]", 0, NULL}, /* tiny or zero */
        {"[01]", 0, NULL},                      /* "0" then "1": the parser refuses the structure */
        {"[1.]", 0, "malformed number"},
        {"[1.e5]", 0, "malformed number"},
        {"[1e]", 0, "malformed number"},
        {"[-]", 0, "malformed number"},
        {"[-a]", 0, "malformed number"},
        {"[1e", 0, NULL}, /* cut short */
        {"[-", 0, NULL},
    };
    run_text_cases(cases, sizeof cases / sizeof *cases);

    /* DBL_MAX written out (309 digits) passes; ten times it does not. */
    for (int zeros = 292; zeros <= 293; zeros++) {
        char num[400], why[160] = "";
        int k = snprintf(num, sizeof num, "[17976931348623157");
        memset(num + k, '0', (size_t)zeros);
        snprintf(num + k + zeros, sizeof num - (size_t)(k + zeros), ".0]");
        bool ok = cw__json_text_check(num, strlen(num), why, sizeof why);
        if (ok != (zeros == 292))
            fail_msg("%d digits before the point: %s (%s)", 17 + zeros, ok ? "passes" : "refused",
                     why);
    }
}

static void test_object_check(void **state)
{
    (void)state;
    static const text_case cases[] = {
        {"{}", 0, NULL},
        {" {\"a\":[1,{\"b\":null}]} \n", 0, NULL},
        {"", 0, "empty"},
        {"{\"a\":1}\0", 8, "NUL byte"},
        {"[1]", 0, "JSON but not an object"},
        {"12", 0, "JSON but not an object"},
        {"null", 0, "JSON but not an object"},
        {"{\"a\":1", 0, "truncated"},
        {"{\"a\":1} x", 0, "not JSON"},
        {"{\"a\":1}{}", 0, "not JSON"},
        {"{\"a\":1,}", 0, "not JSON"},
        {"{\"a\":NaN}", 0, "not JSON: unexpected word 'NaN'"},
        {"{\"s\":\"\xc0\xaf\"}", 0, "not JSON: invalid UTF-8"},
    };
    unsigned bad = 0;
    for (size_t i = 0; i < sizeof cases / sizeof *cases; i++) {
        const text_case *c = &cases[i];
        size_t len = c->len ? c->len : strlen(c->text);
        char why[256] = "";
        int rc = cw__json_object_check(c->text, len, why, sizeof why);
        if ((rc == 0) != !c->refuse || (c->refuse && !strstr(why, c->refuse))) {
            fprintf(stderr, "case %zu: rc %d ('%s'), want %s\n", i, rc, why,
                    c->refuse ? c->refuse : "0");
            bad++;
        }
    }
    /* The contract's depth: 64 levels pass, 65 do not. */
    char deep[256];
    for (int levels = 64; levels <= 65; levels++) {
        size_t k = 0;
        deep[k++] = '{';
        deep[k++] = '"';
        deep[k++] = 'a';
        deep[k++] = '"';
        deep[k++] = ':';
        for (int i = 1; i < levels; i++)
            deep[k++] = '[';
        deep[k++] = '1';
        for (int i = 1; i < levels; i++)
            deep[k++] = ']';
        deep[k++] = '}';
        char why[256] = "";
        int rc = cw__json_object_check(deep, k, why, sizeof why);
        if (levels == 64 && rc != 0) {
            fprintf(stderr, "64 levels refused: %s\n", why);
            bad++;
        }
        if (levels == 65 && (rc == 0 || !strstr(why, "nesting too deep"))) {
            fprintf(stderr, "65 levels: rc %d ('%s')\n", rc, why);
            bad++;
        }
    }
    assert_int_equal(bad, 0);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_utf8),         cmocka_unit_test(test_strings),
        cmocka_unit_test(test_words),        cmocka_unit_test(test_numbers),
        cmocka_unit_test(test_object_check),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
