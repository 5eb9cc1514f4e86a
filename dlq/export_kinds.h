/* Internal: the names of AMQP field types in the DLQ export format
 * ("i32", "table", ...), shared by the writer (dlq/export.c) and the
 * reader (dlq/import.c). */
#ifndef CW_DLQ_EXPORT_KINDS_H
#define CW_DLQ_EXPORT_KINDS_H

#include <stdbool.h>
#include <stdint.h>

/* The AMQP_FIELD_KIND_* of a type name; false for a name the format does
 * not have. */
bool cw__dlq_kind_of(const char *name, uint8_t *kind);

#endif
