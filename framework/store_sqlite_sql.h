/* Internal: the SQL of the SQLite store backend (framework/store_sqlite.c):
 * its schema and every statement it prepares at open, by index. */
#ifndef CW_FRAMEWORK_STORE_SQLITE_SQL_H
#define CW_FRAMEWORK_STORE_SQLITE_SQL_H

/* The statements, in the order of cw__sq_sql[]. */
enum {
    CW_SQ_BEGIN,
    CW_SQ_COMMIT,
    CW_SQ_ROLLBACK,
    CW_SQ_SYNC_FULL,
    CW_SQ_SYNC_NORMAL,
    CW_SQ_CLAIM_INSERT,
    CW_SQ_CLAIM_SELECT,
    CW_SQ_CLAIM_TAKE,
    CW_SQ_CLAIM_BUMP,
    CW_SQ_SETTLE_UPDATE,
    CW_SQ_SETTLE_HISTORY,
    CW_SQ_SETTLE_UPDATE_ID,
    CW_SQ_SETTLE_HISTORY_ID,
    CW_SQ_SETTLE_DONE_RANGE,
    CW_SQ_NOTE_UPDATE,
    CW_SQ_NOTE_HISTORY,
    CW_SQ_HISTORY_DONE,
    CW_SQ_GET,
    CW_SQ_HISTORY,
    CW_SQ_SWEEP_SCAN,
    CW_SQ_SWEEP_ATTEMPTS,
    CW_SQ_SWEEP_TASKS,
    CW_SQ_REOPEN_INSERT,
    CW_SQ_REOPEN_UPDATE,
    CW_SQ_REOPEN_HISTORY,
    CW_SQ_REOPEN_KEEP_DONE,
    CW_SQ_FOLLOWUP_INSERT,
    CW_SQ_FOLLOWUP_DUE,
    CW_SQ_FOLLOWUP_TAKE,
    CW_SQ_FOLLOWUP_DELETE,
    CW_SQ_RELEASE,
    CW_SQ_TX_TAKE,
    CW_SQ_COUNT
};

/* The schema of version CW_SQ_SCHEMA_VERSION (store_sqlite.c), for a new
 * database: tables `tasks` and `attempts`. */
extern const char cw__sq_schema[];
/* What a file of version 2 needs before the schema above (store_sqlite_open.c). */
extern const char cw__sq_migrate_v2[];

/* The text of each statement of the enum above. */
extern const char *const cw__sq_sql[CW_SQ_COUNT];

#endif
