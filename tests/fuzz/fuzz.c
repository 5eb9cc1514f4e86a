/* Shared by the fuzz targets: see fuzz.h. */
#include <string.h>

#include "fuzz.h"

void fz_fail(const char *file, int line, const char *what)
{
    fprintf(stderr, "fuzz check failed at %s:%d: %s\n", file, line, what);
    fflush(stderr);
    abort();
}

/* ---- reading ------------------------------------------------------------ */

uint8_t fz_u8(fz_in *in)
{
    if (in->n == 0)
        return 0;
    in->n--;
    return *in->p++;
}

static uint64_t fz_uint(fz_in *in, unsigned bytes)
{
    uint64_t v = 0;
    for (unsigned i = 0; i < bytes; i++)
        v |= (uint64_t)fz_u8(in) << (8 * i);
    return v;
}

uint16_t fz_u16(fz_in *in)
{
    return (uint16_t)fz_uint(in, 2);
}

uint32_t fz_u32(fz_in *in)
{
    return (uint32_t)fz_uint(in, 4);
}

uint64_t fz_u64(fz_in *in)
{
    return fz_uint(in, 8);
}

/* ---- memory ------------------------------------------------------------- */

void *fz_alloc(fz_arena *a, size_t n)
{
    if (a->n == a->cap) {
        size_t cap = a->cap ? 2 * a->cap : 64;
        void **grown = realloc(a->ptrs, cap * sizeof *grown);
        if (!grown)
            fz_fail(__FILE__, __LINE__, "out of memory");
        a->ptrs = grown;
        a->cap = cap;
    }
    /* malloc(0) is a block of its own under ASan: any read of it is caught. */
    void *p = malloc(n);
    if (!p && n)
        fz_fail(__FILE__, __LINE__, "out of memory");
    a->ptrs[a->n++] = p;
    return p;
}

void fz_arena_free(fz_arena *a)
{
    for (size_t i = 0; i < a->n; i++)
        free(a->ptrs[i]);
    free(a->ptrs);
    memset(a, 0, sizeof *a);
}

amqp_bytes_t fz_copy(fz_arena *a, const void *src, size_t len)
{
    amqp_bytes_t b = {.len = len, .bytes = NULL};
    if (len == 0 && a->null_empty)
        return b;
    b.bytes = fz_alloc(a, len);
    if (len)
        memcpy(b.bytes, src, len);
    return b;
}

amqp_bytes_t fz_bytes(fz_arena *a, fz_in *in, size_t max)
{
    size_t len = max < 256 ? fz_u8(in) : fz_u16(in);
    if (len > max)
        len = max;
    if (len > in->n)
        len = in->n;
    amqp_bytes_t b = fz_copy(a, in->p, len);
    in->p += len;
    in->n -= len;
    return b;
}

amqp_bytes_t fz_rest(fz_arena *a, fz_in *in)
{
    amqp_bytes_t b = fz_copy(a, in->p, in->n);
    in->p += in->n;
    in->n = 0;
    return b;
}

/* ---- building tables ---------------------------------------------------- */

static const uint8_t fz_kinds[] = {
    AMQP_FIELD_KIND_BOOLEAN, AMQP_FIELD_KIND_I8,    AMQP_FIELD_KIND_U8,
    AMQP_FIELD_KIND_I16,     AMQP_FIELD_KIND_U16,   AMQP_FIELD_KIND_I32,
    AMQP_FIELD_KIND_U32,     AMQP_FIELD_KIND_I64,   AMQP_FIELD_KIND_U64,
    AMQP_FIELD_KIND_F32,     AMQP_FIELD_KIND_F64,   AMQP_FIELD_KIND_DECIMAL,
    AMQP_FIELD_KIND_UTF8,    AMQP_FIELD_KIND_BYTES, AMQP_FIELD_KIND_TIMESTAMP,
    AMQP_FIELD_KIND_VOID,    AMQP_FIELD_KIND_ARRAY, AMQP_FIELD_KIND_TABLE,
};

#define FZ_MAX_ENTRIES 32

void fz_value(fz_arena *a, fz_in *in, amqp_field_value_t *out, int depth)
{
    memset(out, 0, sizeof *out);
    out->kind = fz_kinds[fz_u8(in) % sizeof fz_kinds];
    switch (out->kind) {
    /* rabbitmq-c's decoder gives a boolean as 0 or 1. */
    case AMQP_FIELD_KIND_BOOLEAN: out->value.boolean = fz_u8(in) & 1; break;
    case AMQP_FIELD_KIND_I8: out->value.i8 = (int8_t)fz_u8(in); break;
    case AMQP_FIELD_KIND_U8: out->value.u8 = fz_u8(in); break;
    case AMQP_FIELD_KIND_I16: out->value.i16 = (int16_t)fz_u16(in); break;
    case AMQP_FIELD_KIND_U16: out->value.u16 = fz_u16(in); break;
    case AMQP_FIELD_KIND_I32: out->value.i32 = (int32_t)fz_u32(in); break;
    case AMQP_FIELD_KIND_U32: out->value.u32 = fz_u32(in); break;
    case AMQP_FIELD_KIND_I64: out->value.i64 = (int64_t)fz_u64(in); break;
    case AMQP_FIELD_KIND_U64:
    case AMQP_FIELD_KIND_TIMESTAMP: out->value.u64 = fz_u64(in); break;
    case AMQP_FIELD_KIND_F32: {
        uint32_t bits = fz_u32(in);
        memcpy(&out->value.f32, &bits, sizeof bits);
        break;
    }
    case AMQP_FIELD_KIND_F64: {
        uint64_t bits = fz_u64(in);
        memcpy(&out->value.f64, &bits, sizeof bits);
        break;
    }
    case AMQP_FIELD_KIND_DECIMAL:
        out->value.decimal.decimals = fz_u8(in);
        out->value.decimal.value = fz_u32(in);
        break;
    case AMQP_FIELD_KIND_UTF8:
    case AMQP_FIELD_KIND_BYTES: out->value.bytes = fz_bytes(a, in, 65535); break;
    case AMQP_FIELD_KIND_VOID: break;
    case AMQP_FIELD_KIND_ARRAY: {
        if (depth >= FZ_MAX_DEPTH) {
            out->kind = AMQP_FIELD_KIND_VOID;
            break;
        }
        int n = fz_u8(in) % FZ_MAX_ENTRIES;
        if ((size_t)n > in->n)
            n = (int)in->n; /* each value takes a byte at least */
        out->value.array.num_entries = n;
        out->value.array.entries = n ? fz_alloc(a, (size_t)n * sizeof(amqp_field_value_t)) : NULL;
        for (int i = 0; i < n; i++)
            fz_value(a, in, &out->value.array.entries[i], depth + 1);
        break;
    }
    case AMQP_FIELD_KIND_TABLE:
        if (depth >= FZ_MAX_DEPTH) {
            out->kind = AMQP_FIELD_KIND_VOID;
            break;
        }
        fz_table(a, in, &out->value.table, depth + 1);
        break;
    }
}

void fz_table(fz_arena *a, fz_in *in, amqp_table_t *out, int depth)
{
    int n = fz_u8(in) % FZ_MAX_ENTRIES;
    if ((size_t)n > in->n / 2)
        n = (int)(in->n / 2); /* a key length and a kind at least */
    out->num_entries = n;
    out->entries = n ? fz_alloc(a, (size_t)n * sizeof(amqp_table_entry_t)) : NULL;
    for (int i = 0; i < n; i++) {
        out->entries[i].key = fz_bytes(a, in, 255);
        fz_value(a, in, &out->entries[i].value, depth);
    }
}

void fz_props(fz_arena *a, fz_in *in, amqp_basic_properties_t *p)
{
    memset(p, 0, sizeof *p);
    p->_flags = fz_u16(in) & 0xfffc; /* bits 0 and 1 are not properties */
    if (p->_flags & AMQP_BASIC_CONTENT_TYPE_FLAG)
        p->content_type = fz_bytes(a, in, 255);
    if (p->_flags & AMQP_BASIC_CONTENT_ENCODING_FLAG)
        p->content_encoding = fz_bytes(a, in, 255);
    if (p->_flags & AMQP_BASIC_HEADERS_FLAG)
        fz_table(a, in, &p->headers, 1);
    if (p->_flags & AMQP_BASIC_DELIVERY_MODE_FLAG)
        p->delivery_mode = fz_u8(in);
    if (p->_flags & AMQP_BASIC_PRIORITY_FLAG)
        p->priority = fz_u8(in);
    if (p->_flags & AMQP_BASIC_CORRELATION_ID_FLAG)
        p->correlation_id = fz_bytes(a, in, 255);
    if (p->_flags & AMQP_BASIC_REPLY_TO_FLAG)
        p->reply_to = fz_bytes(a, in, 255);
    if (p->_flags & AMQP_BASIC_EXPIRATION_FLAG)
        p->expiration = fz_bytes(a, in, 255);
    if (p->_flags & AMQP_BASIC_MESSAGE_ID_FLAG)
        p->message_id = fz_bytes(a, in, 255);
    if (p->_flags & AMQP_BASIC_TIMESTAMP_FLAG)
        p->timestamp = fz_u64(in);
    if (p->_flags & AMQP_BASIC_TYPE_FLAG)
        p->type = fz_bytes(a, in, 255);
    if (p->_flags & AMQP_BASIC_USER_ID_FLAG)
        p->user_id = fz_bytes(a, in, 255);
    if (p->_flags & AMQP_BASIC_APP_ID_FLAG)
        p->app_id = fz_bytes(a, in, 255);
    if (p->_flags & AMQP_BASIC_CLUSTER_ID_FLAG)
        p->cluster_id = fz_bytes(a, in, 255);
}

/* ---- comparing ---------------------------------------------------------- */

bool fz_bytes_equal(amqp_bytes_t x, amqp_bytes_t y)
{
    return x.len == y.len && (x.len == 0 || memcmp(x.bytes, y.bytes, x.len) == 0);
}

static bool fz_array_equal(const amqp_array_t *x, const amqp_array_t *y)
{
    if (x->num_entries != y->num_entries)
        return false;
    for (int i = 0; i < x->num_entries; i++) {
        if (!fz_value_equal(&x->entries[i], &y->entries[i]))
            return false;
    }
    return true;
}

bool fz_value_equal(const amqp_field_value_t *x, const amqp_field_value_t *y)
{
    if (x->kind != y->kind)
        return false;
    switch (x->kind) {
    case AMQP_FIELD_KIND_BOOLEAN: return !x->value.boolean == !y->value.boolean;
    case AMQP_FIELD_KIND_I8: return x->value.i8 == y->value.i8;
    case AMQP_FIELD_KIND_U8: return x->value.u8 == y->value.u8;
    case AMQP_FIELD_KIND_I16: return x->value.i16 == y->value.i16;
    case AMQP_FIELD_KIND_U16: return x->value.u16 == y->value.u16;
    case AMQP_FIELD_KIND_I32: return x->value.i32 == y->value.i32;
    case AMQP_FIELD_KIND_U32: return x->value.u32 == y->value.u32;
    case AMQP_FIELD_KIND_I64: return x->value.i64 == y->value.i64;
    case AMQP_FIELD_KIND_U64:
    case AMQP_FIELD_KIND_TIMESTAMP: return x->value.u64 == y->value.u64;
    case AMQP_FIELD_KIND_F32: return memcmp(&x->value.f32, &y->value.f32, sizeof(float)) == 0;
    case AMQP_FIELD_KIND_F64: return memcmp(&x->value.f64, &y->value.f64, sizeof(double)) == 0;
    case AMQP_FIELD_KIND_DECIMAL:
        return x->value.decimal.decimals == y->value.decimal.decimals &&
               x->value.decimal.value == y->value.decimal.value;
    case AMQP_FIELD_KIND_UTF8:
    case AMQP_FIELD_KIND_BYTES: return fz_bytes_equal(x->value.bytes, y->value.bytes);
    case AMQP_FIELD_KIND_VOID: return true;
    case AMQP_FIELD_KIND_ARRAY: return fz_array_equal(&x->value.array, &y->value.array);
    case AMQP_FIELD_KIND_TABLE: return fz_table_equal(&x->value.table, &y->value.table);
    default: return false;
    }
}

static bool fz_table_equal_skip(const amqp_table_t *x, const amqp_table_t *y, bool skip_dc)
{
    static const char dc[] = "x-delivery-count";
    int j = 0;
    for (int i = 0; i < x->num_entries; i++) {
        const amqp_table_entry_t *e = &x->entries[i];
        if (skip_dc && e->key.len == sizeof dc - 1 && memcmp(e->key.bytes, dc, sizeof dc - 1) == 0)
            continue;
        if (j >= y->num_entries || !fz_bytes_equal(e->key, y->entries[j].key) ||
            !fz_value_equal(&e->value, &y->entries[j].value))
            return false;
        j++;
    }
    return j == y->num_entries;
}

bool fz_table_equal(const amqp_table_t *x, const amqp_table_t *y)
{
    return fz_table_equal_skip(x, y, false);
}

bool fz_props_equal(const amqp_basic_properties_t *x, const amqp_basic_properties_t *y,
                    bool skip_delivery_count)
{
    amqp_flags_t f = x->_flags;
    if (f != y->_flags)
        return false;
#define FZ_SAME_BYTES(flag, field)                                                                 \
    if ((f & (flag)) && !fz_bytes_equal(x->field, y->field))                                       \
        return false;
    FZ_SAME_BYTES(AMQP_BASIC_CONTENT_TYPE_FLAG, content_type)
    FZ_SAME_BYTES(AMQP_BASIC_CONTENT_ENCODING_FLAG, content_encoding)
    FZ_SAME_BYTES(AMQP_BASIC_CORRELATION_ID_FLAG, correlation_id)
    FZ_SAME_BYTES(AMQP_BASIC_REPLY_TO_FLAG, reply_to)
    FZ_SAME_BYTES(AMQP_BASIC_EXPIRATION_FLAG, expiration)
    FZ_SAME_BYTES(AMQP_BASIC_MESSAGE_ID_FLAG, message_id)
    FZ_SAME_BYTES(AMQP_BASIC_TYPE_FLAG, type)
    FZ_SAME_BYTES(AMQP_BASIC_USER_ID_FLAG, user_id)
    FZ_SAME_BYTES(AMQP_BASIC_APP_ID_FLAG, app_id)
    FZ_SAME_BYTES(AMQP_BASIC_CLUSTER_ID_FLAG, cluster_id)
#undef FZ_SAME_BYTES
    if ((f & AMQP_BASIC_DELIVERY_MODE_FLAG) && x->delivery_mode != y->delivery_mode)
        return false;
    if ((f & AMQP_BASIC_PRIORITY_FLAG) && x->priority != y->priority)
        return false;
    if ((f & AMQP_BASIC_TIMESTAMP_FLAG) && x->timestamp != y->timestamp)
        return false;
    if ((f & AMQP_BASIC_HEADERS_FLAG) &&
        !fz_table_equal_skip(&x->headers, &y->headers, skip_delivery_count))
        return false;
    return true;
}

/* The deepest level of a value in `v` (itself at `level`). */
static int fz_value_level(const amqp_field_value_t *v, int level)
{
    int deepest = level;
    if (v->kind == AMQP_FIELD_KIND_TABLE) {
        for (int i = 0; i < v->value.table.num_entries; i++) {
            int l = fz_value_level(&v->value.table.entries[i].value, level + 1);
            deepest = l > deepest ? l : deepest;
        }
    } else if (v->kind == AMQP_FIELD_KIND_ARRAY) {
        for (int i = 0; i < v->value.array.num_entries; i++) {
            int l = fz_value_level(&v->value.array.entries[i], level + 1);
            deepest = l > deepest ? l : deepest;
        }
    }
    return deepest;
}

int fz_table_depth(const amqp_table_t *t)
{
    int deepest = -1;
    for (int i = 0; i < t->num_entries; i++) {
        int l = fz_value_level(&t->entries[i].value, 0);
        deepest = l > deepest ? l : deepest;
    }
    return deepest;
}
