/* The checks of a JSON text that json-c does not make: see json_text.h. */
#include <ctype.h>
#include <json.h>
#include <limits.h>
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "framework/json_text.h"

/* The longest significand kept when a number near a double's limit is
 * handed to strtod(): far more digits than a double tells apart. */
#define CW_SIGNIFICAND_MAX 40

typedef struct lexer {
    const unsigned char *p;
    size_t len;
    size_t i;
    char *why;
    size_t cap;
} lexer;

static bool refuse(lexer *lx, size_t at, const char *what)
{
    snprintf(lx->why, lx->cap, "%s at byte %zu", what, at);
    return false;
}

static bool is_digit(unsigned char c)
{
    return c >= '0' && c <= '9';
}

static bool is_hex(unsigned char c)
{
    return is_digit(c) || (c >= 'a' && c <= 'f') || (c >= 'A' && c <= 'F');
}

/* The length of the well-formed UTF-8 sequence at p[0] (RFC 3629; the
 * Unicode Standard's table 3-7), or 0 when it is not one. `left` bytes are
 * readable; a sequence cut short by the end is not well-formed. */
static size_t utf8_len(const unsigned char *p, size_t left)
{
    unsigned char c = p[0];
    unsigned char lo = 0x80, hi = 0xbf;
    size_t n;

    if (c < 0x80)
        return 1;
    if (c >= 0xc2 && c <= 0xdf)
        n = 2;
    else if (c >= 0xe0 && c <= 0xef)
        n = 3;
    else if (c >= 0xf0 && c <= 0xf4)
        n = 4;
    else
        return 0; /* a continuation byte, an overlong lead (C0, C1) or past U+10FFFF (F5-FF) */
    if (c == 0xe0)
        lo = 0xa0; /* overlong */
    else if (c == 0xed)
        hi = 0x9f; /* UTF-16 surrogates */
    else if (c == 0xf0)
        lo = 0x90; /* overlong */
    else if (c == 0xf4)
        hi = 0x8f; /* past U+10FFFF */
    if (left < n || p[1] < lo || p[1] > hi)
        return 0;
    for (size_t k = 2; k < n; k++) {
        if (p[k] < 0x80 || p[k] > 0xbf)
            return 0;
    }
    return n;
}

/* The bytes a string holds as they are and that need no closer look:
 * printable ASCII but the quote and the backslash. Most of a body is these. */
static inline bool is_plain(unsigned char c)
{
    return c >= 0x20 && c < 0x7f && c != '"' && c != '\\';
}

/* A string, from its opening quote. */
static bool lex_string(lexer *lx)
{
    lx->i++;
    while (lx->i < lx->len) {
        while (lx->i < lx->len && is_plain(lx->p[lx->i]))
            lx->i++;
        if (lx->i >= lx->len)
            break;
        unsigned char c = lx->p[lx->i];
        if (c == '"') {
            lx->i++;
            return true;
        }
        if (c == '\\') {
            if (lx->i + 1 >= lx->len) {
                lx->i = lx->len; /* cut short */
                break;
            }
            unsigned char e = lx->p[lx->i + 1];
            if (e == 'u') {
                for (size_t k = 2; k < 6; k++) {
                    if (lx->i + k >= lx->len) {
                        lx->i = lx->len; /* cut short */
                        return true;
                    }
                    if (!is_hex(lx->p[lx->i + k]))
                        return refuse(lx, lx->i, "invalid \\u escape in a string");
                }
                lx->i += 6;
            } else if (e && strchr("\"\\/bfnrt", e)) {
                lx->i += 2;
            } else {
                return refuse(lx, lx->i, "invalid escape in a string");
            }
            continue;
        }
        if (c < 0x20) {
            char what[64];
            snprintf(what, sizeof what, "unescaped control character 0x%02X in a string", c);
            return refuse(lx, lx->i, what);
        }
        size_t n = utf8_len(lx->p + lx->i, lx->len - lx->i);
        if (n == 0)
            return refuse(lx, lx->i, "invalid UTF-8");
        lx->i += n;
    }
    return true; /* cut short: the parser says truncated */
}

/* Whether the digits `a` (na of them, no leading zero) exceed the digits
 * `limit` as numbers. */
static bool digits_exceed(const unsigned char *a, size_t na, const char *limit)
{
    size_t nl = strlen(limit);
    if (na != nl)
        return na > nl;
    return memcmp(a, limit, nl) > 0;
}

/* Whether a number with integer digits int_d[0..ni), fraction digits
 * frac_d[0..nf) and exponent `exp` (clamped far past any double) overflows a
 * double. */
static bool beyond_double(bool neg, const unsigned char *int_d, size_t ni,
                          const unsigned char *frac_d, size_t nf, int64_t exp)
{
#define DIGIT(j) ((j) < ni ? int_d[(j)] : frac_d[(j)-ni])
    size_t total = ni + nf, first = 0;
    while (first < total && DIGIT(first) == '0')
        first++;
    if (first == total)
        return false; /* zero */
    /* The decimal exponent of the first significant digit. */
    int64_t e10 = (int64_t)ni - 1 - (int64_t)first + exp;
    if (e10 < 308)
        return false;
    if (e10 > 308)
        return true;
    /* Near DBL_MAX: let strtod() round d.ddd...e308. */
    char buf[CW_SIGNIFICAND_MAX + 16];
    size_t k = 0;
    if (neg)
        buf[k++] = '-';
    for (size_t j = first; j < total && j - first < CW_SIGNIFICAND_MAX; j++) {
        buf[k++] = (char)DIGIT(j);
        if (j == first)
            buf[k++] = '.';
    }
#undef DIGIT
    snprintf(buf + k, sizeof buf - k, "e308");
    return isinf(strtod(buf, NULL));
}

/* A number, from its first character ('-' or a digit). */
static bool lex_number(lexer *lx)
{
    size_t start = lx->i;
    const unsigned char *p = lx->p;
    size_t len = lx->len, i = lx->i;
    bool neg = false;

    if (p[i] == '-') {
        neg = true;
        i++;
    }
    if (i >= len) {
        lx->i = len; /* cut short */
        return true;
    }
    if (!is_digit(p[i]))
        return refuse(lx, start, "malformed number");
    size_t int_at = i;
    if (p[i] == '0')
        i++;
    else
        while (i < len && is_digit(p[i]))
            i++;
    size_t ni = i - int_at, frac_at = i, nf = 0;
    bool integer = true;
    if (i < len && p[i] == '.') {
        integer = false;
        frac_at = ++i;
        while (i < len && is_digit(p[i]))
            i++;
        nf = i - frac_at;
        if (nf == 0 && i < len)
            return refuse(lx, start, "malformed number");
    }
    int64_t exp = 0;
    if (i < len && (p[i] == 'e' || p[i] == 'E')) {
        integer = false;
        i++;
        bool eneg = false;
        if (i < len && (p[i] == '+' || p[i] == '-'))
            eneg = p[i++] == '-';
        size_t exp_at = i;
        while (i < len && is_digit(p[i])) {
            if (exp < INT64_C(1000000000))
                exp = exp * 10 + (p[i] - '0');
            i++;
        }
        if (i == exp_at && i < len)
            return refuse(lx, start, "malformed number");
        if (eneg)
            exp = -exp;
    }
    lx->i = i;
    if (integer) {
        /* json-c holds integers in int64_t, or uint64_t when positive. */
        if (neg ? digits_exceed(p + int_at, ni, "9223372036854775808")
                : digits_exceed(p + int_at, ni, "18446744073709551615"))
            return refuse(lx, start, "integer out of range (not within 64 bits)");
        return true;
    }
    if (beyond_double(neg, p + int_at, ni, p + frac_at, nf, exp))
        return refuse(lx, start, "number out of range (beyond a double)");
    return true;
}

/* A run of letters outside strings: true, false or null. */
static bool lex_word(lexer *lx)
{
    static const char *const words[] = {"true", "false", "null"};
    size_t start = lx->i;
    while (lx->i < lx->len && ((lx->p[lx->i] >= 'a' && lx->p[lx->i] <= 'z') ||
                               (lx->p[lx->i] >= 'A' && lx->p[lx->i] <= 'Z')))
        lx->i++;
    size_t n = lx->i - start;
    for (size_t k = 0; k < sizeof words / sizeof *words; k++) {
        size_t wn = strlen(words[k]);
        /* A prefix at the very end is a text cut short. */
        if ((n == wn || (lx->i == lx->len && n < wn)) && memcmp(lx->p + start, words[k], n) == 0)
            return true;
    }
    char what[64];
    snprintf(what, sizeof what, "unexpected word '%.*s'", n > 16 ? 16 : (int)n,
             (const char *)lx->p + start);
    return refuse(lx, start, what);
}

bool cw__json_text_check(const void *text, size_t len, char *why, size_t cap)
{
    lexer lx = {.p = text, .len = len, .why = why, .cap = cap};
    while (lx.i < lx.len) {
        unsigned char c = lx.p[lx.i];
        switch (c) {
        case ' ':
        case '\t':
        case '\n':
        case '\r':
        case '{':
        case '}':
        case '[':
        case ']':
        case ':':
        case ',': lx.i++; continue;
        case '"':
            if (!lex_string(&lx))
                return false;
            continue;
        default: break;
        }
        if (c == '-' || is_digit(c)) {
            if (!lex_number(&lx))
                return false;
        } else if ((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z')) {
            if (!lex_word(&lx))
                return false;
        } else {
            char what[64];
            if (c >= 0x21 && c <= 0x7e)
                snprintf(what, sizeof what, "unexpected character '%c'", c);
            else
                snprintf(what, sizeof what, "unexpected byte 0x%02X", c);
            return refuse(&lx, lx.i, what);
        }
    }
    return true;
}

static int not_a_body(char *why, size_t cap, const char *what, const char *detail)
{
    snprintf(why, cap, "%s%s", what, detail ? detail : "");
    return -1;
}

int cw__json_object_check(const void *text, size_t len, char *why, size_t cap)
{
    char lex[160];
    if (len == 0)
        return not_a_body(why, cap, "empty (a JSON object is needed)", NULL);
    if (len > INT_MAX)
        return not_a_body(why, cap, "too large for the JSON parser", NULL);
    if (memchr(text, '\0', len))
        return not_a_body(why, cap, "not JSON: it contains a NUL byte", NULL);
    if (!cw__json_text_check(text, len, lex, sizeof lex))
        return not_a_body(why, cap, "not JSON: ", lex);
    json_tokener *tok = json_tokener_new_ex(CW_JSON_MAX_DEPTH + 1);
    if (!tok)
        return not_a_body(why, cap, "out of memory", NULL);
    json_tokener_set_flags(tok, JSON_TOKENER_STRICT | JSON_TOKENER_VALIDATE_UTF8);
    json_object *obj = json_tokener_parse_ex(tok, text, (int)len);
    enum json_tokener_error err = json_tokener_get_error(tok);
    size_t end = json_tokener_get_parse_end(tok);
    bool cut = false;
    if (!obj && err == json_tokener_continue) {
        /* A top-level scalar ends only on a terminator: give it one. What
         * still fails then was cut short. */
        obj = json_tokener_parse_ex(tok, "", 1);
        err = json_tokener_get_error(tok);
        end = len;
        cut = !obj && err != json_tokener_success;
    }
    int rc = -1;
    if (cut)
        snprintf(why, cap, "not JSON: truncated (unexpected end of input)");
    else if (err != json_tokener_success)
        snprintf(why, cap, "not JSON: %s at byte %zu", json_tokener_error_desc(err), end);
    else if (!obj || !json_object_is_type(obj, json_type_object))
        snprintf(why, cap, "JSON but not an object");
    else
        rc = 0;
    for (const unsigned char *c = (const unsigned char *)text + end; rc == 0 && end < len;
         c++, end++) {
        if (!isspace(*c)) {
            snprintf(why, cap, "not JSON: unexpected data after the object at byte %zu", end);
            rc = -1;
        }
    }
    json_object_put(obj);
    json_tokener_free(tok);
    return rc;
}
