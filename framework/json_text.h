/* Internal: the checks of a JSON text that json-c does not make.
 *
 * json-c (0.16) parses the structure, but even with JSON_TOKENER_STRICT and
 * JSON_TOKENER_VALIDATE_UTF8 it accepts what RFC 8259 does not: NaN and
 * Infinity, raw control characters in strings, overlong UTF-8, UTF-8-encoded
 * surrogates and code points past U+10FFFF; and it silently clamps an
 * integer past 64 bits to the nearest limit, so that the handler would see
 * another number than the one sent. This lexical pass refuses those before
 * json-c parses the text. */
#ifndef CW_FRAMEWORK_JSON_TEXT_H
#define CW_FRAMEWORK_JSON_TEXT_H

#include <stdbool.h>
#include <stddef.h>

#include "framework/limits.h" /* CW_JSON_MAX_DEPTH */

/* Checks the tokens of the JSON text `text` (`len` bytes, not
 * NUL-terminated): well-formed UTF-8 (RFC 3629) throughout; strings with
 * no raw control character and only JSON's escapes; outside strings only
 * blanks, punctuation, true, false, null and numbers of JSON's grammar
 * whose value fits (integers in [-2^63, 2^64 - 1], other numbers within a
 * double's range). The structure (nesting, commas, what follows what) is
 * json-c's to check. A text that ends early is not refused here: the
 * parser reports it as truncated.
 *
 * Returns true when the text passes; false with a reason (e.g. "invalid
 * UTF-8 at byte 12", "integer out of range at byte 9") written to `why`
 * (`cap` bytes). Allocates nothing; safe from any thread. */
bool cw__json_text_check(const void *text, size_t len, char *why, size_t cap);

/* Whether `text` (`len` bytes) is what the message contract calls a body: a
 * JSON object of at most CW_JSON_MAX_DEPTH levels that passes
 * cw__json_text_check(), with nothing but blanks after it. Returns 0, or -1
 * with the reason ("not JSON: invalid UTF-8 at byte 12", "JSON but not an
 * object") in `why`. For publishers, so that they refuse what a worker
 * would dead-letter; the worker's own validator (framework/envelope.c) says
 * the same things. Allocates a parser for the call; thread-safe. */
int cw__json_object_check(const void *text, size_t len, char *why, size_t cap);

#endif
