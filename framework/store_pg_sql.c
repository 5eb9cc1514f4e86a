/* The SQL of the PostgreSQL store backend.
 *
 * Layout for speed and for retention without DELETE storms: a task row is
 * keyed by an arrival-ordered identity `id` (the claim's ticket) and found by
 * the unique index on message_id. Settling a task changes only columns no
 * index covers, so that the update is a HOT one (the table leaves room on
 * its pages for it: fillfactor 80) and costs no index write; the sweep walks
 * rows in `id` order instead of keeping an index of done records up on every
 * settle. Times are milliseconds since the epoch from the workers' clocks,
 * except the heartbeats, which use the database's own clock (now()) so that
 * a host's clock skew cannot make a live worker look dead.
 *
 * Batches travel as arrays (unnest), so that a batch's claims are one
 * statement and one round trip, and its outcomes another. */
#include "framework/store.h"
#include "framework/store_pg_sql.h"

/* The SQL below writes states as literals; keep them in step with the enum. */
_Static_assert(CW_STATE_IN_PROGRESS == 1 && CW_STATE_DONE == 2 && CW_STATE_DEAD == 3 &&
                   CW_STATE_RETRYING == 4 && CW_STATE_REPLAYED == 5,
               "SQL state literals");

static const char schema_v1[] =
    "CREATE TABLE @S.cw_tasks ("
    " id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,"
    " message_id text NOT NULL UNIQUE,"
    " state smallint NOT NULL,"
    " owner text,"
    " lease_until bigint,"
    " attempts integer NOT NULL DEFAULT 0,"
    " deliveries integer NOT NULL DEFAULT 0," /* total ever */
    " unsettled integer NOT NULL DEFAULT 0,"  /* deliveries since the last settle */
    " saga_id text,"
    " type text,"
    " first_seen bigint NOT NULL,"
    " last_seen bigint NOT NULL,"
    " error_class text,"
    " last_error text,"
    " settled_at bigint" /* with owner: who settled it last, and when */
    ") WITH (fillfactor = 80);"
    /* One row per settled attempt that did not apply the task, and per
     * attempt a worker died in; the applying one is the record itself. */
    "CREATE TABLE @S.cw_attempts ("
    " id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,"
    " task_id bigint NOT NULL,"
    " n integer NOT NULL,"
    " at bigint NOT NULL,"
    " worker text,"
    " outcome text,"
    " error_class text,"
    " reason text"
    ");"
    "CREATE INDEX cw_attempts_task ON @S.cw_attempts (task_id);"
    /* The workers of every host: a claim's owner is alive while its
     * heartbeat is fresh and the database session that beats still exists
     * (a killed process loses its session at once; a lost host, its
     * heartbeat). */
    "CREATE TABLE @S.cw_workers ("
    " owner text PRIMARY KEY,"
    " backend_pid integer NOT NULL,"
    " backend_start timestamptz,"
    " started_at timestamptz NOT NULL DEFAULT now(),"
    " heartbeat_at timestamptz NOT NULL"
    ");"
    "CREATE FUNCTION @S.cw_owner_alive(o text, stale_ms integer) RETURNS boolean"
    " LANGUAGE sql STABLE AS $$"
    " SELECT EXISTS (SELECT 1 FROM @S.cw_workers w"
    "  JOIN pg_catalog.pg_stat_activity a ON a.pid = w.backend_pid"
    "   AND (a.backend_start IS NULL OR w.backend_start IS NULL"
    "        OR a.backend_start = w.backend_start)"
    "  WHERE w.owner = o AND w.heartbeat_at > now() - stale_ms * interval '1 millisecond')"
    " $$;";

/* Version 2: follow-up messages (cw_task_send) and handler transactions
 * (cw_task_pg). */
static const char schema_v2[] =
    /* A done task's follow-ups, from the commit of its outcome until the
     * broker confirmed them; owner and lease_until while a worker publishes
     * them after the one that stored them died. */
    "CREATE TABLE @S.cw_followups ("
    " id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,"
    " message_id text NOT NULL UNIQUE,"
    " task_id bigint NOT NULL,"
    " saga_id text,"
    " type text NOT NULL,"
    " exchange text NOT NULL,"
    " routing_key text NOT NULL,"
    " body text NOT NULL,"
    " created_at bigint NOT NULL,"
    " owner text,"
    " lease_until bigint"
    ");"
    /* A handler transaction takes its claim as done with unsettled = -1,
     * and compworker's commit sets it back to 0 after saying so in the
     * transaction's settings: a COMMIT the handler sends itself finds the
     * mark without the setting and fails, so that nothing of it commits. */
    "CREATE FUNCTION @S.cw_tx_guard() RETURNS trigger LANGUAGE plpgsql AS $$"
    " BEGIN"
    "  IF current_setting('compworker.tx_commit', true) IS DISTINCT FROM 'on' THEN"
    "   RAISE EXCEPTION 'compworker: the store transaction of task % is committed by compworker"
    " when its handler returns, not by the handler', NEW.message_id"
    "    USING ERRCODE = '25000';"
    "  END IF;"
    "  RETURN NULL;"
    " END $$;"
    "CREATE CONSTRAINT TRIGGER cw_tx_guard AFTER UPDATE ON @S.cw_tasks"
    " DEFERRABLE INITIALLY DEFERRED FOR EACH ROW WHEN (NEW.unsettled = -1)"
    " EXECUTE FUNCTION @S.cw_tx_guard();";

/* Version 3: follow-ups carry headers (a saga plan's steps travel with
 * theirs), and saga compensation plans: a saga's state, its steps in order
 * and its history. Times in ms since the epoch. */
static const char schema_v3[] =
    "ALTER TABLE @S.cw_followups ADD COLUMN headers text;"
    "CREATE TABLE @S.cw_sagas ("
    " saga_id text PRIMARY KEY,"
    " plan_id text NOT NULL,"
    " state text NOT NULL," /* running, done */
    " stages integer NOT NULL,"
    " stage integer NOT NULL," /* the stage running, from 0 */
    " steps integer NOT NULL,"
    " deadline_at bigint,"
    " alerted_at bigint," /* the deadline's alert went out */
    " created_at bigint NOT NULL,"
    " updated_at bigint NOT NULL,"
    " done_at bigint,"
    " plan text NOT NULL" /* the routing slip: the plan's steps and deadline */
    ");"
    "CREATE INDEX cw_sagas_running ON @S.cw_sagas (deadline_at) WHERE state = 'running';"
    "CREATE INDEX cw_sagas_done ON @S.cw_sagas (done_at) WHERE state = 'done';"
    "CREATE TABLE @S.cw_saga_steps ("
    " saga_id text NOT NULL,"
    " stage integer NOT NULL,"
    " idx integer NOT NULL,"
    " message_id text NOT NULL UNIQUE,"
    " type text NOT NULL,"
    " state text NOT NULL," /* waiting, sent, done */
    " sent_at bigint,"
    " done_at bigint,"
    " PRIMARY KEY (saga_id, stage, idx)"
    ");"
    "CREATE TABLE @S.cw_saga_history ("
    " id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,"
    " saga_id text NOT NULL,"
    " at bigint NOT NULL,"
    " event text NOT NULL,"
    " detail text"
    ");"
    "CREATE INDEX cw_saga_history_saga ON @S.cw_saga_history (saga_id, id);";

const char *const cw__pg_schema_steps[CW_PG_SCHEMA_VERSION] = {schema_v1, schema_v2, schema_v3};

const char *const cw__pg_sql[CW_PG_COUNT] = {
    /* $1 message IDs, $2 saga IDs, $3 types (text[], distinct IDs), $4 owner,
     * $5 lease_until, $6 now, $7 heartbeat staleness (ms), $8 light commit.
     * One row per request, in request order: ord, result (0 new, 1 done,
     * 2 dead, 3 busy), ticket, fresh, attempts, deliveries, owner (busy),
     * mine (new: it was in progress under this owner already).
     * All sub-statements see one snapshot: a row another worker inserts
     * meanwhile is waited for by the insert and seen by neither update, so it
     * comes out busy -- in progress elsewhere, which it is. */
    [CW_PG_CLAIM] =
        "WITH cfg AS MATERIALIZED ("
        "  SELECT CASE WHEN $8 THEN set_config('synchronous_commit', 'off', true) END AS x),"
        " req AS MATERIALIZED ("
        "  SELECT u.mid, u.saga, u.typ, u.ord"
        "  FROM unnest($1::text[], $2::text[], $3::text[]) WITH ORDINALITY AS u(mid, saga, typ, ord),"
        "   cfg),"
        /* The existing records, locked, as they are now; one locked by
         * another transaction (a handler's, cw_task_pg) is skipped rather
         * than waited for: it comes out busy, which it is. */
        " cand AS MATERIALIZED ("
        "  SELECT t.id, t.message_id, t.state, t.owner, t.lease_until"
        "  FROM @S.cw_tasks t JOIN req r ON t.message_id = r.mid"
        "  ORDER BY t.id FOR NO KEY UPDATE OF t SKIP LOCKED),"
        " ins AS ("
        "  INSERT INTO @S.cw_tasks (message_id, state, owner, lease_until, attempts, deliveries,"
        "   unsettled, saga_id, type, first_seen, last_seen)"
        "  SELECT mid, 1, $4, $5, 0, 1, 1, saga, typ, $6, $6 FROM req r"
        "  WHERE NOT EXISTS (SELECT 1 FROM @S.cw_tasks x WHERE x.message_id = r.mid) ORDER BY mid"
        "  ON CONFLICT (message_id) DO NOTHING RETURNING id, message_id),"
        " took AS ("
        "  UPDATE @S.cw_tasks t SET state = 1, owner = $4, lease_until = $5,"
        "   deliveries = t.deliveries + 1, unsettled = t.unsettled + 1, last_seen = $6,"
        "   saga_id = coalesce(t.saga_id, r.saga), type = coalesce(t.type, r.typ)"
        "  FROM req r, cand c"
        "  WHERE c.message_id = r.mid AND t.id = c.id AND c.state IN (1, 4, 5)"
        "   AND NOT (c.state = 1 AND c.owner IS DISTINCT FROM $4 AND c.lease_until > $6"
        "            AND @S.cw_owner_alive(c.owner, $7))"
        /* c is the record before this claim: whether it was ours already */
        "  RETURNING t.id, t.message_id, t.attempts, t.unsettled,"
        "   (c.state = 1 AND c.owner = $4 AND c.lease_until > $6) AS mine),"
        " bumped AS ("
        "  UPDATE @S.cw_tasks t SET deliveries = t.deliveries + 1, unsettled = t.unsettled + 1,"
        "   last_seen = $6, saga_id = coalesce(t.saga_id, r.saga), type = coalesce(t.type, r.typ)"
        "  FROM req r, cand c WHERE c.message_id = r.mid AND t.id = c.id AND c.state IN (2, 3)"
        "  RETURNING t.id, t.message_id, t.state, t.attempts, t.unsettled)"
        " SELECT r.ord,"
        "  CASE WHEN i.id IS NOT NULL OR k.id IS NOT NULL THEN 0"
        "       WHEN b.state = 2 THEN 1 WHEN b.state = 3 THEN 2 ELSE 3 END,"
        "  coalesce(i.id, k.id, b.id, s.id, 0),"
        "  i.id IS NOT NULL,"
        "  coalesce(k.attempts, b.attempts, s.attempts, 0),"
        "  CASE WHEN i.id IS NOT NULL THEN 1 ELSE coalesce(k.unsettled, b.unsettled, s.unsettled, 0) END,"
        "  s.owner, coalesce(k.mine, false)"
        " FROM req r"
        "  LEFT JOIN ins i ON i.message_id = r.mid"
        "  LEFT JOIN took k ON k.message_id = r.mid"
        "  LEFT JOIN bumped b ON b.message_id = r.mid"
        "  LEFT JOIN @S.cw_tasks s ON s.message_id = r.mid"
        "   AND i.id IS NULL AND k.id IS NULL AND b.id IS NULL"
        " ORDER BY r.ord",
    /* $1 message IDs, $2 their owners as seen (text[]), $3 owner, $4
     * lease_until, $5 now, $6 light: takes over claims whose owner this host
     * knows to be dead (cw_owner_alive_fn), if still held by that owner and
     * not locked by a transaction that still runs. */
    [CW_PG_TAKE] =
        "WITH cfg AS MATERIALIZED ("
        "  SELECT CASE WHEN $6 THEN set_config('synchronous_commit', 'off', true) END AS x),"
        " lk AS MATERIALIZED ("
        "  SELECT t.id FROM @S.cw_tasks t"
        "   JOIN unnest($1::text[], $2::text[]) AS u(mid, was) ON t.message_id = u.mid"
        "  WHERE t.state = 1 AND t.owner = u.was FOR NO KEY UPDATE OF t SKIP LOCKED)"
        " UPDATE @S.cw_tasks t SET state = 1, owner = $3, lease_until = $4,"
        "  deliveries = t.deliveries + 1, unsettled = t.unsettled + 1, last_seen = $5"
        " FROM lk, cfg WHERE t.id = lk.id"
        " RETURNING t.message_id, t.id, t.attempts, t.unsettled",
    /* $1 tickets (bigint[], 0 = find by message ID), $2 message IDs, $3
     * states (int[]), $4 outcomes, $5 error classes, $6 reasons, $7 owner,
     * $8 now; the follow-ups of done ones: $9 their tasks' tickets, $10
     * message IDs, $11 saga IDs, $12 types, $13 exchanges, $14 routing keys,
     * $15 bodies, $16 headers. The attempt that applies a task is the record itself
     * (state done, settled_at, owner); the others get a history row. */
    [CW_PG_SETTLE] =
        "WITH req AS MATERIALIZED ("
        "  SELECT coalesce(nullif(u.id, 0),"
        "                  (SELECT t.id FROM @S.cw_tasks t WHERE t.message_id = u.mid)) AS id,"
        "   u.state, u.outcome, u.eclass, u.reason"
        "  FROM unnest($1::bigint[], $2::text[], $3::integer[], $4::text[], $5::text[],"
        "              $6::text[]) AS u(id, mid, state, outcome, eclass, reason)),"
        " upd AS ("
        "  UPDATE @S.cw_tasks t SET state = r.state, attempts = t.attempts + 1, owner = $7,"
        "   settled_at = $8, lease_until = NULL, unsettled = 0, last_seen = $8,"
        "   error_class = r.eclass, last_error = r.reason"
        "  FROM req r WHERE t.id = r.id"
        "  RETURNING t.id, t.attempts, r.state, r.outcome, r.eclass, r.reason),"
        " hist AS ("
        "  INSERT INTO @S.cw_attempts (task_id, n, at, worker, outcome, error_class, reason)"
        "  SELECT id, attempts, $8, $7, outcome, eclass, reason FROM upd WHERE state <> 2),"
        /* the follow-ups of the done ones */
        " fu AS ("
        "  INSERT INTO @S.cw_followups (message_id, task_id, saga_id, type, exchange,"
        "   routing_key, body, headers, created_at)"
        "  SELECT u.mid, u.tid, u.saga, u.typ, u.ex, u.rk, u.body, u.hdr, $8"
        "  FROM unnest($9::bigint[], $10::text[], $11::text[], $12::text[], $13::text[],"
        "              $14::text[], $15::text[], $16::text[])"
        "   AS u(tid, mid, saga, typ, ex, rk, body, hdr)"
        "  ON CONFLICT (message_id) DO NOTHING)"
        " SELECT count(*) FROM upd",
    /* $1 tickets (bigint[]), $2 owner */
    [CW_PG_RELEASE] = "UPDATE @S.cw_tasks t SET lease_until = 0 FROM unnest($1::bigint[]) AS u(id)"
                      " WHERE t.id = u.id AND t.state = 1 AND t.owner = $2",
    /* $1 message ID, $2 at, $3 worker, $4 outcome, $5 error class, $6 reason:
     * an attempt that did not settle (its worker died), the state kept */
    [CW_PG_NOTE] =
        "WITH upd AS ("
        "  UPDATE @S.cw_tasks SET error_class = $5, last_error = $6 WHERE message_id = $1"
        "  RETURNING id, attempts)"
        " INSERT INTO @S.cw_attempts (task_id, n, at, worker, outcome, error_class, reason)"
        " SELECT id, attempts + 1, $2, $3, $4, $5, $6 FROM upd RETURNING task_id",
    [CW_PG_GET] =
        "SELECT state, owner, lease_until, attempts, deliveries, saga_id, type, first_seen,"
        " last_seen, error_class, last_error FROM @S.cw_tasks WHERE message_id = $1",
    [CW_PG_HISTORY] = "SELECT a.n, a.at, a.worker, a.outcome, a.error_class, a.reason"
                      " FROM @S.cw_attempts a JOIN @S.cw_tasks t ON t.id = a.task_id"
                      " WHERE t.message_id = $1 ORDER BY a.id",
    [CW_PG_HISTORY_DONE] =
        "SELECT attempts, settled_at, owner FROM @S.cw_tasks WHERE message_id = $1 AND state = 2",
    /* $1 message ID, $2 now, $3 staleness: the record, locked, and whether
     * another owner holds it under a live lease */
    [CW_PG_REOPEN_SELECT] = "SELECT id, state, owner, lease_until,"
                            " (state = 1 AND owner IS NOT NULL AND lease_until > $2"
                            "  AND @S.cw_owner_alive(owner, $3))"
                            " FROM @S.cw_tasks WHERE message_id = $1 FOR UPDATE",
    /* $1 row id: the attempt that applied a done task becomes a history row
     * of its own before the task is reopened (--force) */
    [CW_PG_REOPEN_KEEP_DONE] =
        "INSERT INTO @S.cw_attempts (task_id, n, at, worker, outcome, error_class, reason)"
        " SELECT id, attempts, coalesce(settled_at, last_seen), owner, 'ok', NULL, NULL"
        " FROM @S.cw_tasks WHERE id = $1 AND state = 2",
    /* $1 row id, $2 now, $3 saga ID, $4 type */
    [CW_PG_REOPEN_UPDATE] =
        "UPDATE @S.cw_tasks SET state = 5, owner = NULL, lease_until = NULL, unsettled = 0,"
        " last_seen = $2, saga_id = coalesce(saga_id, $3), type = coalesce(type, $4)"
        " WHERE id = $1",
    /* $1 message ID, $2 saga ID, $3 type, $4 now: a replay of an ID never seen */
    [CW_PG_REOPEN_INSERT] =
        "INSERT INTO @S.cw_tasks (message_id, state, attempts, deliveries, unsettled, saga_id,"
        " type, first_seen, last_seen) VALUES ($1, 5, 0, 0, 0, $2, $3, $4, $4) RETURNING id",
    /* $1 row id, $2 now, $3 worker, $4 reason */
    [CW_PG_REOPEN_HISTORY] =
        "INSERT INTO @S.cw_attempts (task_id, n, at, worker, outcome, error_class, reason)"
        " SELECT id, attempts, $2, $3, 'replayed', NULL, $4 FROM @S.cw_tasks WHERE id = $1",
    /* One sweeper at a time across every host: the others skip their turn. */
    [CW_PG_SWEEP_LOCK] =
        "SELECT pg_try_advisory_xact_lock(hashtext('compworker.sweep.' || current_database()"
        " || '.' || $1::text)),"
        " coalesce((SELECT value::bigint FROM @S.cw_meta WHERE key = 'sweep_after'), 0)",
    /* $1 after row id, $2 rows to examine, $3 done before, $4 limit: the next
     * rows in arrival order; the first one first seen at or after the cut
     * ends the old part of the table (see the SQLite backend's sweep). */
    [CW_PG_SWEEP_SCAN] =
        "WITH scan AS MATERIALIZED ("
        "  SELECT id, state, first_seen, last_seen FROM @S.cw_tasks WHERE id > $1"
        "  ORDER BY id LIMIT $2),"
        " young AS (SELECT min(id) AS id FROM scan WHERE first_seen >= $3)"
        " SELECT (SELECT id FROM young), (SELECT max(id) FROM scan), (SELECT count(*) FROM scan),"
        "  ARRAY(SELECT id FROM scan WHERE state = 2 AND last_seen < $3"
        "        AND id < coalesce((SELECT id FROM young), 9223372036854775807)"
        "        ORDER BY id LIMIT $4)",
    /* $1 victims (bigint[]), $2 the cursor to keep */
    [CW_PG_SWEEP_DELETE] =
        "WITH da AS (DELETE FROM @S.cw_attempts WHERE task_id = ANY($1::bigint[])),"
        " dt AS (DELETE FROM @S.cw_tasks WHERE id = ANY($1::bigint[]) RETURNING 1),"
        " dw AS (DELETE FROM @S.cw_workers WHERE heartbeat_at < now() - interval '1 day'),"
        " cur AS (INSERT INTO @S.cw_meta (key, value) VALUES ('sweep_after', $2::text)"
        "  ON CONFLICT (key) DO UPDATE SET value = excluded.value)"
        " SELECT count(*) FROM dt",
    /* $1 owner: this session beats for it */
    [CW_PG_REGISTER] =
        "INSERT INTO @S.cw_workers (owner, backend_pid, backend_start, heartbeat_at)"
        " SELECT $1, pg_backend_pid(),"
        "  (SELECT backend_start FROM pg_catalog.pg_stat_activity WHERE pid = pg_backend_pid()),"
        "  now()"
        " ON CONFLICT (owner) DO UPDATE SET backend_pid = excluded.backend_pid,"
        "  backend_start = excluded.backend_start, heartbeat_at = excluded.heartbeat_at",
    [CW_PG_UNREGISTER] = "DELETE FROM @S.cw_workers WHERE owner = $1",
    /* $1 stored before, $2 now, $3 owner, $4 lease_until, $5 limit: takes
     * follow-ups that nobody publishes now (their worker died after the
     * commit), oldest first, for this owner until lease_until */
    [CW_PG_FOLLOWUP_DUE] =
        "UPDATE @S.cw_followups f SET owner = $3, lease_until = $4"
        " FROM (SELECT id FROM @S.cw_followups WHERE created_at < $1"
        "       AND (lease_until IS NULL OR lease_until < $2)"
        "       ORDER BY id LIMIT $5 FOR UPDATE SKIP LOCKED) d"
        " WHERE f.id = d.id"
        " RETURNING f.id, f.message_id, f.saga_id, f.type, f.exchange, f.routing_key, f.body,"
        " f.headers",
    /* $1 message IDs (text[]): confirmed by the broker */
    [CW_PG_FOLLOWUP_DONE] =
        "WITH cfg AS MATERIALIZED (SELECT set_config('synchronous_commit', 'off', true) AS x)"
        " DELETE FROM @S.cw_followups f USING cfg WHERE f.message_id = ANY($1::text[])",
    /* $1 ticket, $2 owner, $3 now: a handler transaction takes its claim as
     * done (marked unsettled = -1 until compworker commits it: see
     * cw_tx_guard) */
    [CW_PG_TX_TAKE] = "UPDATE @S.cw_tasks SET state = 2, attempts = attempts + 1, settled_at = $3,"
                      " lease_until = NULL, unsettled = -1, last_seen = $3, error_class = NULL,"
                      " last_error = NULL WHERE id = $1 AND state = 1 AND owner = $2",
    /* $1 ticket, $2 owner, $3 now, $4 message IDs, $5 saga IDs, $6 types, $7
     * exchanges, $8 routing keys, $9 bodies, $10 headers: the end of a handler
     * transaction whose outcome is done, before its COMMIT: the mark taken
     * off, the commit allowed, the follow-ups stored. 1 when the claim's
     * done record was still there (the handler did not end the transaction
     * and begin another). */
    [CW_PG_TX_COMMIT] =
        "WITH fin AS ("
        "  UPDATE @S.cw_tasks SET unsettled = 0"
        "  WHERE id = $1 AND state = 2 AND unsettled = -1 AND owner = $2 RETURNING id),"
        " ok AS (SELECT set_config('compworker.tx_commit', 'on', true) AS v FROM fin),"
        " fu AS ("
        "  INSERT INTO @S.cw_followups (message_id, task_id, saga_id, type, exchange,"
        "   routing_key, body, headers, created_at)"
        "  SELECT u.mid, f.id, u.saga, u.typ, u.ex, u.rk, u.body, u.hdr, $3"
        "  FROM fin f, unnest($4::text[], $5::text[], $6::text[], $7::text[], $8::text[],"
        "                     $9::text[], $10::text[]) AS u(mid, saga, typ, ex, rk, body, hdr)"
        "  ON CONFLICT (message_id) DO NOTHING)"
        " SELECT (SELECT count(*) FROM fin), (SELECT count(*) FROM ok)",
};
