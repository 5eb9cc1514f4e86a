/* The outbox relay: a claimed row made a task of the message contract, or
 * the reason it cannot be one (workers/relay_private.h). */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "compworker/client.h"
#include "workers/relay_private.h"

/* ---- rows --------------------------------------------------------------------- */

void cw__relay_rows_release(relay *r)
{
    for (size_t i = 0; i < r->n_rows; i++) {
        free(r->rows[i].table.entries);
        json_object_put(r->rows[i].headers_json);
    }
    r->n_rows = 0;
}

/* headers: a JSON object of string, number, boolean or null values, none
 * named cw-* (compworker's own), into an AMQP table borrowing from the
 * parsed JSON. */
static void row_headers(row *w)
{
    if (!w->headers)
        return;
    if (strcmp(w->headers_kind, "object") != 0) {
        snprintf(w->reason, sizeof w->reason, "headers is a JSON %s, not an object",
                 w->headers_kind);
        return;
    }
    json_tokener *tok = json_tokener_new();
    w->headers_json = tok ? json_tokener_parse_ex(tok, w->headers, (int)strlen(w->headers)) : NULL;
    if (tok)
        json_tokener_free(tok);
    int n = w->headers_json ? json_object_object_length(w->headers_json) : -1;
    if (n < 0) {
        snprintf(w->reason, sizeof w->reason, "headers could not be read");
        return;
    }
    if (n > HEADERS_MAX) {
        snprintf(w->reason, sizeof w->reason, "headers has %d keys, more than %d", n, HEADERS_MAX);
        return;
    }
    w->table.entries = calloc((size_t)(n ? n : 1), sizeof *w->table.entries);
    if (!w->table.entries) {
        snprintf(w->reason, sizeof w->reason, "out of memory reading headers");
        return;
    }
    int i = 0;
    json_object_object_foreach(w->headers_json, key, val)
    {
        size_t klen = strlen(key);
        if (klen == 0 || klen > 128 || strncmp(key, "cw-", 3) == 0) {
            snprintf(w->reason, sizeof w->reason,
                     "headers: '%.64s' is not a header name a task may carry (1 to 128 bytes, not "
                     "cw-*, which is compworker's)",
                     key);
            return;
        }
        amqp_table_entry_t *e = &w->table.entries[i++];
        e->key = amqp_cstring_bytes(key);
        switch (json_object_get_type(val)) {
        case json_type_string:
            if (json_object_get_string_len(val) > HEADER_VALUE_MAX) {
                snprintf(w->reason, sizeof w->reason, "headers: '%.64s' is longer than %d bytes",
                         key, HEADER_VALUE_MAX);
                return;
            }
            e->value.kind = AMQP_FIELD_KIND_UTF8;
            e->value.value.bytes.bytes = (void *)json_object_get_string(val);
            e->value.value.bytes.len = (size_t)json_object_get_string_len(val);
            break;
        case json_type_int:
            e->value.kind = AMQP_FIELD_KIND_I64;
            e->value.value.i64 = json_object_get_int64(val);
            break;
        case json_type_double:
            e->value.kind = AMQP_FIELD_KIND_F64;
            e->value.value.f64 = json_object_get_double(val);
            break;
        case json_type_boolean:
            e->value.kind = AMQP_FIELD_KIND_BOOLEAN;
            e->value.value.boolean = json_object_get_boolean(val);
            break;
        case json_type_null: e->value.kind = AMQP_FIELD_KIND_VOID; break;
        default:
            snprintf(w->reason, sizeof w->reason,
                     "headers: '%.64s' is an object or array (values are strings, numbers, "
                     "booleans or null)",
                     key);
            return;
        }
    }
    w->table.num_entries = i;
}

void cw__relay_row_check(relay *r, row *w)
{
    char why[320], id[CW_MESSAGE_ID_MAX + 1];
    if (!w->message_id || !w->message_id[0]) {
        snprintf(w->reason, sizeof w->reason, "no message ID (message_id is NULL or empty)");
        return;
    }
    if (strcmp(w->body_kind, "object") != 0) {
        snprintf(w->reason, sizeof w->reason, "body is a JSON %s, not an object", w->body_kind);
        return;
    }
    if (!w->body) {
        snprintf(w->reason, sizeof w->reason, "body is %lld bytes, more than max_body_size (%llu)",
                 w->body_bytes, (unsigned long long)r->cfg->max_body_size);
        return;
    }
    if (w->headers_kind && !w->headers) {
        snprintf(w->reason, sizeof w->reason, "headers are %lld bytes, more than %d",
                 w->headers_bytes, CW_OUTBOX_HEADERS_MAX);
        return;
    }
    if (cw__task_fields_check(w->type, w->message_id, w->saga_id, w->body, w->body_len, id, why,
                              sizeof why)) {
        snprintf(w->reason, sizeof w->reason, "%s", why);
        return;
    }
    if (w->routing_key && (!w->routing_key[0] || strlen(w->routing_key) > ROUTING_KEY_MAX)) {
        snprintf(w->reason, sizeof w->reason, "routing_key must be 1 to %d bytes (NULL: the type)",
                 ROUTING_KEY_MAX);
        return;
    }
    row_headers(w);
}
