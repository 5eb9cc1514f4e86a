/* The SQL of the SQLite store backend: the schema and the statements that
 * store_sqlite.c prepares once at open. */
#include "framework/store.h"
#include "framework/store_sqlite_sql.h"

/* The SQL below writes states as literals; keep them in step with the enum. */
_Static_assert(CW_STATE_IN_PROGRESS == 1 && CW_STATE_DONE == 2 && CW_STATE_REPLAYED == 5,
               "SQL state literals");

/* Layout for speed: a task row is keyed by an arrival-ordered integer, so the
 * rows a batch claims and then settles sit together on a few pages; only the
 * unique index on message_id takes one random page per new task. Attempts
 * are keyed by that integer too, so they cluster the same way. */
const char cw__sq_schema[] =
    "CREATE TABLE IF NOT EXISTS tasks ("
    " id INTEGER PRIMARY KEY,"
    " message_id TEXT NOT NULL UNIQUE,"
    " state INTEGER NOT NULL,"
    " owner TEXT,"
    " lease_until INTEGER," /* ms */
    " attempts INTEGER NOT NULL DEFAULT 0,"
    " deliveries INTEGER NOT NULL DEFAULT 0," /* total ever */
    " unsettled INTEGER NOT NULL DEFAULT 0,"  /* deliveries since the last settle */
    " saga_id TEXT,"
    " type TEXT,"
    " first_seen INTEGER NOT NULL,"
    " last_seen INTEGER NOT NULL,"
    " error_class TEXT,"
    " last_error TEXT,"
    " settled_at INTEGER" /* ms; with owner, who settled it last */
    ");"
    /* Development builds had an index for the sweep; it cost every settle an
     * index insert. The sweep walks the rows in arrival order instead. */
    "DROP INDEX IF EXISTS tasks_done_last_seen;"
    /* One row per settled attempt, and per attempt a worker died in (noted
     * from its crash report): attempt n may have several rows. */
    "CREATE TABLE IF NOT EXISTS attempts ("
    " id INTEGER PRIMARY KEY,"
    " task_id INTEGER NOT NULL,"
    " n INTEGER NOT NULL,"
    " at INTEGER NOT NULL,"
    " worker TEXT,"
    " outcome TEXT,"
    " error_class TEXT,"
    " reason TEXT"
    ");"
    "CREATE INDEX IF NOT EXISTS attempts_task ON attempts(task_id);"
    /* Version 2: the follow-up messages of done tasks (cw_task_send), from
     * the commit of their outcome until the broker confirmed them. */
    "CREATE TABLE IF NOT EXISTS followups ("
    " id INTEGER PRIMARY KEY,"
    " message_id TEXT NOT NULL UNIQUE,"
    " task_id INTEGER NOT NULL,"
    " saga_id TEXT,"
    " type TEXT NOT NULL,"
    " exchange TEXT NOT NULL,"
    " routing_key TEXT NOT NULL,"
    " body BLOB NOT NULL,"
    " created_at INTEGER NOT NULL," /* ms */
    " owner TEXT,"                  /* taken by a worker to publish it ... */
    " lease_until INTEGER,"         /* ... until then (ms) */
    " headers TEXT"                 /* version 3: a JSON object of string values */
    ");"
    /* Version 3: saga compensation plans (the same tables as PostgreSQL's,
     * store_pg_sql.c says what they hold). */
    "CREATE TABLE IF NOT EXISTS cw_sagas ("
    " saga_id TEXT PRIMARY KEY,"
    " plan_id TEXT NOT NULL,"
    " state TEXT NOT NULL,"
    " stages INTEGER NOT NULL,"
    " stage INTEGER NOT NULL,"
    " steps INTEGER NOT NULL,"
    " deadline_at INTEGER,"
    " alerted_at INTEGER,"
    " created_at INTEGER NOT NULL,"
    " updated_at INTEGER NOT NULL,"
    " done_at INTEGER,"
    " plan TEXT NOT NULL"
    ");"
    "CREATE INDEX IF NOT EXISTS cw_sagas_running ON cw_sagas (deadline_at) WHERE state = 'running';"
    "CREATE INDEX IF NOT EXISTS cw_sagas_done ON cw_sagas (done_at) WHERE state = 'done';"
    "CREATE TABLE IF NOT EXISTS cw_saga_steps ("
    " saga_id TEXT NOT NULL,"
    " stage INTEGER NOT NULL,"
    " idx INTEGER NOT NULL,"
    " message_id TEXT NOT NULL UNIQUE,"
    " type TEXT NOT NULL,"
    " state TEXT NOT NULL,"
    " sent_at INTEGER,"
    " done_at INTEGER,"
    " PRIMARY KEY (saga_id, stage, idx)"
    ");"
    "CREATE TABLE IF NOT EXISTS cw_saga_history ("
    " id INTEGER PRIMARY KEY,"
    " saga_id TEXT NOT NULL,"
    " at INTEGER NOT NULL,"
    " event TEXT NOT NULL,"
    " detail TEXT"
    ");"
    "CREATE INDEX IF NOT EXISTS cw_saga_history_saga ON cw_saga_history (saga_id, id);";

/* From version 2: the follow-ups' headers (the rest is the schema's own
 * CREATE ... IF NOT EXISTS). */
const char cw__sq_migrate_v2[] = "ALTER TABLE followups ADD COLUMN headers TEXT;";

const char *const cw__sq_sql[CW_SQ_COUNT] = {
    [CW_SQ_BEGIN] = "BEGIN IMMEDIATE",
    [CW_SQ_COMMIT] = "COMMIT",
    [CW_SQ_ROLLBACK] = "ROLLBACK",
    [CW_SQ_SYNC_FULL] = "PRAGMA synchronous = FULL",
    [CW_SQ_SYNC_NORMAL] = "PRAGMA synchronous = NORMAL",
    /* ?1 id, ?2 owner, ?3 lease_until, ?4 saga_id, ?5 type, ?6 now */
    [CW_SQ_CLAIM_INSERT] =
        /* OR IGNORE (not an upsert, not ABORT): a statement that cannot
         * abort half-way needs no statement journal, which is most of the
         * cost of a one-row write inside a batch. */
    "INSERT OR IGNORE INTO tasks (message_id, state, owner, lease_until, attempts,"
    " deliveries, unsettled, saga_id, type, first_seen, last_seen)"
    " VALUES (?1, 1, ?2, ?3, 0, 1, 1, ?4, ?5, ?6, ?6)",
    [CW_SQ_CLAIM_SELECT] =
        "SELECT state, owner, lease_until, attempts, unsettled, id FROM tasks WHERE message_id = ?1",
    /* ?1 id, ?2 owner, ?3 lease_until, ?4 now, ?5 saga_id, ?6 type */
    [CW_SQ_CLAIM_TAKE] = "UPDATE tasks SET state = 1, owner = ?2, lease_until = ?3,"
                         " deliveries = deliveries + 1, unsettled = unsettled + 1, last_seen = ?4,"
                         " saga_id = coalesce(saga_id, ?5), type = coalesce(type, ?6)"
                         " WHERE message_id = ?1",
    /* ?1 id, ?2 now, ?3 saga_id, ?4 type */
    [CW_SQ_CLAIM_BUMP] =
        "UPDATE tasks SET deliveries = deliveries + 1, unsettled = unsettled + 1,"
        " last_seen = ?2, saga_id = coalesce(saga_id, ?3), type = coalesce(type, ?4)"
        " WHERE message_id = ?1",
    /* ?1 id, ?2 state, ?3 now, ?4 error_class, ?5 reason */
    [CW_SQ_SETTLE_UPDATE] =
        "UPDATE OR IGNORE tasks SET state = ?2, attempts = attempts + 1, owner = ?6,"
        " settled_at = ?3,"
        " lease_until = NULL, unsettled = 0, last_seen = ?3, error_class = ?4,"
        " last_error = ?5 WHERE message_id = ?1",
    /* ?1 id, ?2 now, ?3 worker, ?4 outcome, ?5 error_class, ?6 reason */
    [CW_SQ_SETTLE_HISTORY] =
        "INSERT INTO attempts (task_id, n, at, worker, outcome, error_class, reason)"
        " SELECT id, attempts, ?2, ?3, ?4, ?5, ?6 FROM tasks WHERE message_id = ?1",
    /* The same two by the ticket a claim handed out (the row id): no index
     * lookup on the per-message path. */
    [CW_SQ_SETTLE_UPDATE_ID] =
        "UPDATE OR IGNORE tasks SET state = ?2, attempts = attempts + 1, owner = ?6,"
        " settled_at = ?3,"
        " lease_until = NULL, unsettled = 0, last_seen = ?3, error_class = ?4,"
        " last_error = ?5 WHERE id = ?1",
    [CW_SQ_SETTLE_HISTORY_ID] =
        "INSERT INTO attempts (task_id, n, at, worker, outcome, error_class, reason)"
        " SELECT id, attempts, ?2, ?3, ?4, ?5, ?6 FROM tasks WHERE id = ?1",
    /* ?1 first row id, ?2 last, ?3 now, ?4 owner: the done outcomes of a run
     * of claims with consecutive tickets (a batch claims new IDs in a row),
     * as CW_SQ_SETTLE_UPDATE_ID would record each of them, in one statement. */
    [CW_SQ_SETTLE_DONE_RANGE] =
        "UPDATE OR IGNORE tasks SET state = 2, attempts = attempts + 1, owner = ?4,"
        " settled_at = ?3, lease_until = NULL, unsettled = 0, last_seen = ?3, error_class = NULL,"
        " last_error = NULL WHERE id BETWEEN ?1 AND ?2",
    /* ?1 id, ?2 at, ?3 worker, ?4 outcome, ?5 error_class, ?6 reason: an
     * attempt that did not settle (its worker died), the record's state kept */
    [CW_SQ_NOTE_UPDATE] =
        "UPDATE tasks SET error_class = ?5, last_error = ?6 WHERE message_id = ?1",
    [CW_SQ_NOTE_HISTORY] =
        "INSERT INTO attempts (task_id, n, at, worker, outcome, error_class, reason)"
        " SELECT id, attempts + 1, ?2, ?3, ?4, ?5, ?6 FROM tasks WHERE message_id = ?1",
    [CW_SQ_HISTORY_DONE] =
        "SELECT attempts, settled_at, owner FROM tasks WHERE message_id = ?1 AND state = 2",
    [CW_SQ_GET] =
        "SELECT state, owner, lease_until, attempts, deliveries, saga_id, type, first_seen,"
        " last_seen, error_class, last_error FROM tasks WHERE message_id = ?1",
    [CW_SQ_HISTORY] = "SELECT n, at, worker, outcome, error_class, reason FROM attempts"
                      " WHERE task_id = (SELECT id FROM tasks WHERE message_id = ?1) ORDER BY id",
    /* ?1 done_before, ?2 limit; history first, while the victims still exist */
    /* ?1 after row id, ?2 limit: the next rows in arrival order */
    [CW_SQ_SWEEP_SCAN] =
        "SELECT id, state, first_seen, last_seen FROM tasks WHERE id > ?1 ORDER BY id LIMIT ?2",
    /* ?1 row id; history first, while the task still exists */
    [CW_SQ_SWEEP_ATTEMPTS] = "DELETE FROM attempts WHERE task_id = ?1",
    [CW_SQ_SWEEP_TASKS] = "DELETE FROM tasks WHERE id = ?1",
    /* ?1 id, ?2 saga_id, ?3 type, ?4 now: a replay of an ID never seen */
    [CW_SQ_REOPEN_INSERT] =
        "INSERT INTO tasks (message_id, state, attempts, deliveries, unsettled, saga_id, type,"
        " first_seen, last_seen) VALUES (?1, 5, 0, 0, 0, ?2, ?3, ?4, ?4)",
    /* ?1 row id, ?2 now, ?3 saga_id, ?4 type */
    [CW_SQ_REOPEN_UPDATE] =
        "UPDATE tasks SET state = 5, owner = NULL, lease_until = NULL, unsettled = 0,"
        " last_seen = ?2, saga_id = coalesce(saga_id, ?3), type = coalesce(type, ?4)"
        " WHERE id = ?1",
    /* ?1 row id, ?2 now, ?3 worker, ?4 reason */
    [CW_SQ_REOPEN_HISTORY] =
        "INSERT INTO attempts (task_id, n, at, worker, outcome, error_class, reason)"
        " SELECT id, attempts, ?2, ?3, 'replayed', NULL, ?4 FROM tasks WHERE id = ?1",
    /* ?1 row id: before a done task is reopened (--force), the attempt that
     * applied it -- kept in the record itself (see sq_settle_in) -- becomes a
     * history row of its own, or reopening would drop it from the history. */
    [CW_SQ_REOPEN_KEEP_DONE] =
        "INSERT INTO attempts (task_id, n, at, worker, outcome, error_class, reason)"
        " SELECT id, attempts, coalesce(settled_at, last_seen), owner, 'ok', NULL, NULL"
        " FROM tasks WHERE id = ?1 AND state = 2",
    /* ?1 message ID, ?2 task row, ?3 saga, ?4 type, ?5 exchange, ?6 routing
     * key, ?7 body, ?8 now, ?9 headers: a follow-up stored with its task's outcome (a
     * second settle of the same outcome stores nothing twice) */
    [CW_SQ_FOLLOWUP_INSERT] =
        "INSERT OR IGNORE INTO followups (message_id, task_id, saga_id, type, exchange, routing_key,"
        " body, created_at, headers) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)",
    /* ?1 stored before, ?2 now, ?3 limit: follow-ups nobody publishes now */
    [CW_SQ_FOLLOWUP_DUE] =
        "SELECT id, message_id, saga_id, type, exchange, routing_key, body, headers FROM followups"
        " WHERE created_at < ?1 AND (lease_until IS NULL OR lease_until < ?2) ORDER BY id LIMIT ?3",
    /* ?1 row, ?2 owner, ?3 lease_until */
    [CW_SQ_FOLLOWUP_TAKE] = "UPDATE followups SET owner = ?2, lease_until = ?3 WHERE id = ?1",
    [CW_SQ_FOLLOWUP_DELETE] = "DELETE FROM followups WHERE message_id = ?1",
    /* ?1 row id, ?2 owner: the lease of a claim handed back unsettled ends
     * now; the owner stays, for the history. */
    [CW_SQ_RELEASE] = "UPDATE tasks SET lease_until = 0 WHERE id = ?1 AND state = 1 AND owner = ?2",
    /* ?1 row id, ?2 owner, ?3 now: a handler transaction (store_sqlite_tx.c)
     * takes its claim as done first, as settling a done task would; the
     * write commits or rolls back with the handler's. */
    [CW_SQ_TX_TAKE] =
        "UPDATE tasks SET state = 2, attempts = attempts + 1, settled_at = ?3, lease_until = NULL,"
        " unsettled = 0, last_seen = ?3, error_class = NULL, last_error = NULL"
        " WHERE id = ?1 AND state = 1 AND owner = ?2",
};
