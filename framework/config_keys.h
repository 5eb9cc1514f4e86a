/* Internal to the configuration (config.c reads, config_keys.c checks,
 * config_describe.c shows): the table of the keys of the fixed sections,
 * one row a key, and the state of one load. Everyone else includes
 * framework/config.h.
 *
 * A row says all there is to know of a key: its section and name, its type,
 * where its value lives in cw_config, its default, its bounds, its
 * environment variable. Reading the file, the environment and the flags,
 * the defaults, freeing and `config check` all go by the table, so that a
 * new key is one row (and its field in cw_config, and its documentation). */
#ifndef CW_FRAMEWORK_CONFIG_KEYS_H
#define CW_FRAMEWORK_CONFIG_KEYS_H

#include <stdbool.h>
#include <stddef.h>
#include <stdio.h>

#include "framework/config.h"

#define CW_NAME_MAX 100 /* pool and plugin names */

/* What a key holds: how a value is checked, stored, defaulted, shown and
 * freed. A row's own setter or formatter, when it has one, stands in for
 * the type's checker or formatter; storage, default and free stay the
 * type's. */
typedef enum cw_key_type {
    /* The types held as a char * (NULL unless a default is given) come first. */
    CW_T_STRING,      /* char *, checked by the row's own setter */
    CW_T_AMQP_NAME,   /* char *: an exchange or queue name: 1..255 bytes, no control
                       * character, not in the broker's reserved "amq." namespace */
    CW_T_PATH,        /* char *: a path, made absolute against the file's directory */
    CW_T_FILE,        /* char *: the same, of a file that must be readable now */
    CW_T_BROKER_URLS, /* char *: a list of amqp[s]:// URLs (url.h); shown masked */
    CW_T_HTTP_URL,    /* char *: an http[s]:// URL (url.h); shown redacted */
    CW_T_PG_URL,      /* char *: a libpq connection URI or key=value string (url.h);
                         shown masked */
    /* The others: */
    CW_T_UINT,     /* unsigned in [min, max] */
    CW_T_DURATION, /* int64_t milliseconds in [min, max]: "250ms", "5s", "2m", "1h", "7d" */
    CW_T_SIZE,     /* uint64_t bytes in [min, max]: "65536", "512KiB", "1MiB" */
    CW_T_DECIMAL,  /* double; checked by the row's own setter */
    CW_T_BOOL,     /* bool: true/false, yes/no, on/off, 1/0; or, when the row has
                       * choices, its two words for true and false */
    CW_T_CHOICE,   /* an enum (stored as int): the index of one of the row's choices */
    CW_T_WORDS     /* char **: NULL-terminated words; checked by the row's own setter */
} cw_key_type;

/* Whether values of type `t` are held as a char *. */
static inline bool cw__config_type_is_string(cw_key_type t)
{
    return t <= CW_T_PG_URL;
}

/* A key's default, by type: .i for numbers, booleans and choices, .d for
 * decimals, .s for strings (copied; NULL for none), .words for word lists
 * (copied; NULL for none). Zero for a key whose default config.c derives
 * once the file is read (the queue and store path from the pool name). */
typedef union cw_key_default {
    long long i;
    double d;
    const char *s;
    const char *const *words;
} cw_key_default;

/* Where a [handler TYPE] section and each of its keys were, 0 = not yet. */
typedef struct cw_handler_lines {
    unsigned section;
    unsigned key[CW_CONFIG_MAX_KEYS]; /* by row of cw__config_keys */
    unsigned own[2];                  /* by row of cw__config_handler_keys */
} cw_handler_lines;

/* State of one load of a file (or of the environment, or of one flag). */
typedef struct cw_config_ctx {
    cw_config *cfg;
    const char *file; /* the path as given, for messages */
    char *dir;        /* absolute directory of the file, symlinks resolved */
    FILE *fp;
    char *line; /* getline() buffer */
    size_t line_cap;
    unsigned lineno;                       /* line being parsed, from 1 */
    int status;                            /* first error, 0 while there is none */
    unsigned key_line[CW_CONFIG_MAX_KEYS]; /* where each key was set in the file, 0 = not yet */
    size_t plugins_cap;
    size_t settings_cap;
    unsigned *setting_lines; /* where each plugin setting was set */
    size_t handlers_cap;
    cw_handler_lines *handler_lines; /* parallel to cfg->handlers */
} cw_config_ctx;

typedef struct cw_key cw_key;

/* Checks `value` for key `k` and stores it in `dst` (the key's field, in
 * ctx->cfg or, for a retry key, in a [handler TYPE]'s policy). Returns 0,
 * CW_STATUS_NOMEM, or CW_STATUS_CONFIG with what is wrong in `why`. */
typedef int (*cw_key_setter)(const cw_key *k, cw_config_ctx *ctx, void *dst, const char *value,
                             char *why, size_t why_len);

/* Writes the value at `src` of key `k` as the file would write it, and in
 * `note` what a default amounts to ("" for nothing to say). */
typedef void (*cw_key_formatter)(const cw_key *k, const cw_config *cfg, const void *src, char *out,
                                 size_t cap, char *note, size_t note_cap);

struct cw_key {
    const char *section; /* "broker", "pool", "store", "retry", "alert" or "log" */
    const char *name;
    cw_key_type type;
    size_t offset;   /* of the value in cw_config */
    const char *env; /* the environment variable: CW_<SECTION>_<KEY> */
    cw_key_default def;
    long long min, max;         /* CW_T_UINT, CW_T_DURATION, CW_T_SIZE: what is accepted */
    const char *hint;           /* CW_T_DURATION: the examples of "is not a duration (e.g. ...)" */
    const char *range;          /* CW_T_DURATION, CW_T_SIZE: what is said of a value out of
                              * range, after it ("must be more than 0") */
    const char *const *choices; /* CW_T_CHOICE, CW_T_BOOL: the words, NULL-terminated */
    unsigned retry;             /* CW_RETRY_SET_* of a key of a retry policy, which is a key of
                              * [handler TYPE] too; 0 for the others */
    const char *env_alias;      /* a second variable, read after every key's own one so that it
                              * wins (CW_AMQP_URL); NULL */
    const char *unset;          /* shown for a NULL string (metrics_listen's "off"); NULL: "" */
    const char *unset_note;     /* said of a NULL value ("none"); NULL */
    cw_key_setter set;          /* NULL: the type's checker */
    cw_key_formatter fmt;       /* NULL: the type's formatter */
};

/* The keys of the fixed sections, in the order `config check` shows them;
 * a key's index is its slot in cfg->origin, cfg->line and the key_line
 * arrays. */
extern const cw_key cw__config_keys[];
extern const size_t cw__config_n_keys;

/* The keys only [handler TYPE] sections have (concurrency, rate_limit), in
 * the order `config check` shows them. */
extern const cw_key cw__config_handler_keys[];
extern const size_t cw__config_n_handler_keys;

/* The field of key `k` in `cfg`. */
static inline void *cw__config_field(const cw_key *k, const cw_config *cfg)
{
    return (char *)cfg + k->offset;
}

/* The field of retry key `k` (k->retry != 0) in policy `p`. */
static inline void *cw__config_retry_field(const cw_key *k, const cw_retry_policy *p)
{
    return (char *)p + (k->offset - offsetof(cw_config, retry));
}

/* Checks `value` and stores it at `dst`, by the row's setter or its type's. */
int cw__config_key_set(const cw_key *k, cw_config_ctx *ctx, void *dst, const char *value, char *why,
                       size_t why_len);

/* Stores the default of key `k` in `cfg`. 0 or CW_STATUS_NOMEM. */
int cw__config_key_default(const cw_key *k, cw_config *cfg);

/* Frees what the value of key `k` holds in `cfg` (strings, word lists). */
void cw__config_key_free(const cw_key *k, cw_config *cfg);

/* Formats the value at `src`, by the row's formatter or its type's
 * (config_describe.c). */
void cw__config_key_format(const cw_key *k, const cw_config *cfg, const void *src, char *out,
                           size_t cap, char *note, size_t note_cap);

/* [broker] batch: its value, and what 0 amounts to (half the prefetch). */
void cw__config_fmt_prefetch(const cw_key *k, const cw_config *cfg, const void *src, char *out,
                             size_t cap, char *note, size_t note_cap);
void cw__config_fmt_batch(const cw_key *k, const cw_config *cfg, const void *src, char *out,
                          size_t cap, char *note, size_t note_cap);

/* [A-Za-z0-9_.-]{1,max} */
bool cw__config_is_name(const char *s, size_t len, size_t max);

/* "dir/rel" in a new string, without doubling a trailing slash of `dir`. */
char *cw__config_path_join(const char *dir, const char *rel);

#endif
