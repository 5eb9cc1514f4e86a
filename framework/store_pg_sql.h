/* Internal: the SQL of the PostgreSQL store backend (framework/store_pg.c).
 *
 * Every text names the tables through "@S", which the backend replaces with
 * the configured schema, quoted (PQescapeIdentifier), when it opens. */
#ifndef CW_FRAMEWORK_STORE_PG_SQL_H
#define CW_FRAMEWORK_STORE_PG_SQL_H

/* The schema's version: cw_meta's schema_version. A database at a higher
 * one is refused; a lower one is migrated at open. */
#define CW_PG_SCHEMA_VERSION 3

/* Prepared statements, by index into cw__pg_sql[]. */
enum {
    CW_PG_CLAIM,
    CW_PG_TAKE,
    CW_PG_SETTLE,
    CW_PG_RELEASE,
    CW_PG_NOTE,
    CW_PG_GET,
    CW_PG_HISTORY,
    CW_PG_HISTORY_DONE,
    CW_PG_REOPEN_SELECT,
    CW_PG_REOPEN_KEEP_DONE,
    CW_PG_REOPEN_UPDATE,
    CW_PG_REOPEN_INSERT,
    CW_PG_REOPEN_HISTORY,
    CW_PG_SWEEP_LOCK,
    CW_PG_SWEEP_SCAN,
    CW_PG_SWEEP_DELETE,
    CW_PG_REGISTER,
    CW_PG_UNREGISTER,
    CW_PG_FOLLOWUP_DUE,
    CW_PG_FOLLOWUP_DONE,
    CW_PG_TX_TAKE,
    CW_PG_TX_COMMIT,
    CW_PG_COUNT
};

/* Statement texts ("@S" for the schema). */
extern const char *const cw__pg_sql[CW_PG_COUNT];

/* What each schema version adds to the one before: cw__pg_schema_steps[v]
 * takes a schema at version v to v + 1 (index 0: a new database). Run under
 * the migration lock once the schema and "@S".cw_meta exist. */
extern const char *const cw__pg_schema_steps[CW_PG_SCHEMA_VERSION];

#endif
