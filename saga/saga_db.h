/* Saga tables in the store's own database, from either backend's handle:
 * the statements once, in a dialect both SQLite and PostgreSQL read
 * ($N parameters become ?N for SQLite, @S. the store's schema for
 * PostgreSQL), run on a task's store transaction or on a connection of
 * `compworker saga`. */
#ifndef CW_SAGA_SAGA_DB_H
#define CW_SAGA_SAGA_DB_H

#include <stdbool.h>
#include <stddef.h>

#include "compworker/compworker.h"

typedef enum cw_saga_stmt {
    CW_SD_SAGA_GET = 0, /* $1 saga: plan_id, state, stage, stages (locked on PostgreSQL) */
    CW_SD_SAGA_INSERT,  /* $1 saga $2 plan $3 stages $4 stage $5 steps $6 deadline_at $7 now
                           $8 plan text */
    CW_SD_STEP_INSERT,  /* $1 saga $2 stage $3 idx $4 message_id $5 type $6 state $7 sent_at */
    CW_SD_HISTORY,      /* $1 saga $2 at $3 event $4 detail */
    CW_SD_STEP_DONE,    /* $1 message_id $2 now */
    CW_SD_STAGE_LEFT,   /* $1 saga $2 stage: the stage's steps not done */
    CW_SD_SAGA_DONE,    /* $1 saga $2 now */
    CW_SD_SAGA_STAGE,   /* $1 saga $2 stage $3 now */
    CW_SD_STEPS_SENT,   /* $1 saga $2 stage $3 now */
    /* what compworker saga and the monitor read */
    CW_SD_SHOW,         /* $1 saga: plan_id, state, stage, stages, steps, deadline_at,
                           alerted_at, created_at, updated_at, done_at */
    CW_SD_SHOW_STEPS,   /* $1 saga: stage, idx, type, state, message_id, sent_at, done_at, and
                           its task's record: state, attempts, error_class, last_error,
                           settled_at (NULL before it is claimed) */
    CW_SD_SHOW_HISTORY, /* $1 saga: at, event, detail: the saga's own and its steps'
                           attempts (failures, dead-lettering, replays), in time order */
    CW_SD_LIST,         /* $1 created since, $2 limit: saga_id, state, stage, stages,
                           created_at, updated_at, deadline_at, done_at, dead steps */
    CW_SD_OVERDUE,      /* $1 now: takes the running sagas past their deadline not yet
                           alerted (saga_id, plan_id, stage, stages, deadline_at,
                           created_at), marking them alerted */
    CW_SD_STATS,        /* started, done, running, stuck, overdue ($1 now), count and sum
                           (ms) of the done ones' time to complete */
    /* retention: $1 done before (ms), $2 sagas at most: the steps, the history, then the
     * sagas themselves, of the sagas done before $1 */
    CW_SD_EXPIRE_STEPS,
    CW_SD_EXPIRE_HISTORY,
    CW_SD_EXPIRE_SAGAS,
    CW_SD_COUNT
} cw_saga_stmt;

/* A connection: exactly one of sq, pg. */
typedef struct cw_saga_db {
    struct sqlite3 *sq;
    struct pg_conn *pg;
    char schema[160]; /* PostgreSQL: the quoted schema and a dot */
} cw_saga_db;

/* Rows of text (NULL for SQL NULL). */
typedef struct cw_saga_rows {
    size_t n, cols;
    char **v;
} cw_saga_rows;

const char *cw_saga_rows_get(const cw_saga_rows *r, size_t row, size_t col);
void cw_saga_rows_free(cw_saga_rows *r);

/* A connection of its own to the store of `cfg` (compworker saga, the
 * monitor): SQLite's file (busy timeout 5 s) or the PostgreSQL server.
 * Non-zero with the reason in cw_error_last(). Close with
 * cw_saga_db_close(). */
struct cw_config;
int cw_saga_db_open(cw_saga_db *d, const struct cw_config *cfg, bool read_only);
void cw_saga_db_close(cw_saga_db *d);

/* The task's store transaction (begun if it is not yet). Non-zero, with
 * the reason in cw_error_last(), when the store has none (memory) or it
 * cannot begin. */
int cw_saga_db_of_task(cw_saga_db *d, cw_task *t);

/* Runs statement `s` with `n` text parameters (NULL: SQL NULL); its rows
 * into *out when out is not NULL. 0, or CW_STATUS_STORE with the database's
 * reason in cw_error_last(). */
int cw_saga_db_run(cw_saga_db *d, cw_saga_stmt s, int n, const char *const *params,
                   cw_saga_rows *out);

#endif
