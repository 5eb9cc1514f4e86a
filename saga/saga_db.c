/* Saga tables in the store's own database (saga/saga_db.h). */
#include <libpq-fe.h>
#include <sqlite3.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "framework/config.h"
#include "framework/error.h"
#include "framework/pg.h"
#include "framework/task.h"
#include "saga/saga_db.h"

static const char *const sql[CW_SD_COUNT] = {
    [CW_SD_SAGA_GET] = "SELECT plan_id, state, stage, stages FROM @S.cw_sagas WHERE saga_id = $1",
    [CW_SD_SAGA_INSERT] =
        "INSERT INTO @S.cw_sagas (saga_id, plan_id, state, stages, stage, steps, deadline_at,"
        " created_at, updated_at, plan) VALUES ($1, $2, 'running', $3, $4, $5, $6, $7, $7, $8)"
        " ON CONFLICT (saga_id) DO NOTHING",
    [CW_SD_STEP_INSERT] =
        "INSERT INTO @S.cw_saga_steps (saga_id, stage, idx, message_id, type, state, sent_at)"
        " VALUES ($1, $2, $3, $4, $5, $6, $7) ON CONFLICT (message_id) DO NOTHING",
    [CW_SD_HISTORY] =
        "INSERT INTO @S.cw_saga_history (saga_id, at, event, detail) VALUES ($1, $2, $3, $4)",
    [CW_SD_STEP_DONE] = "UPDATE @S.cw_saga_steps SET state = 'done', done_at = $2"
                        " WHERE message_id = $1 AND state <> 'done'",
    [CW_SD_STAGE_LEFT] = "SELECT count(*) FROM @S.cw_saga_steps"
                         " WHERE saga_id = $1 AND stage = $2 AND state <> 'done'",
    [CW_SD_SAGA_DONE] =
        "UPDATE @S.cw_sagas SET state = 'done', done_at = $2, updated_at = $2 WHERE saga_id = $1",
    [CW_SD_SAGA_STAGE] = "UPDATE @S.cw_sagas SET stage = $2, updated_at = $3 WHERE saga_id = $1",
    [CW_SD_STEPS_SENT] = "UPDATE @S.cw_saga_steps SET state = 'sent', sent_at = $3"
                         " WHERE saga_id = $1 AND stage = $2 AND state = 'waiting'",
    [CW_SD_SHOW] = "SELECT plan_id, state, stage, stages, steps, deadline_at, alerted_at,"
                   " created_at, updated_at, done_at FROM @S.cw_sagas WHERE saga_id = $1",
    [CW_SD_SHOW_STEPS] =
        "SELECT s.stage, s.idx, s.type, s.state, s.message_id, s.sent_at, s.done_at,"
        " t.state, t.attempts, t.error_class, t.last_error, t.settled_at"
        " FROM @S.cw_saga_steps s LEFT JOIN @TASKS t ON t.message_id = s.message_id"
        " WHERE s.saga_id = $1 ORDER BY s.stage, s.idx",
    [CW_SD_SHOW_HISTORY] =
        "SELECT at, event, detail FROM ("
        " SELECT h.at AS at, h.id AS k, h.event AS event, h.detail AS detail"
        "  FROM @S.cw_saga_history h WHERE h.saga_id = $1"
        " UNION ALL"
        " SELECT a.at, 0, 'step ' || coalesce(a.outcome, '?'),"
        "  CAST(s.stage + 1 AS text) || '.' || CAST(s.idx + 1 AS text) || ' ' || s.type"
        "  || ' (' || s.message_id || ')' || coalesce(': ' || a.error_class, '')"
        "  || coalesce(' ' || a.reason, '')"
        "  FROM @S.cw_saga_steps s JOIN @TASKS t ON t.message_id = s.message_id"
        "  JOIN @ATTEMPTS a ON a.task_id = t.id WHERE s.saga_id = $1) x ORDER BY at, k",
    [CW_SD_LIST] =
        "SELECT g.saga_id, g.state, g.stage, g.stages, g.created_at, g.updated_at, g.deadline_at,"
        " g.done_at, (SELECT count(*) FROM @S.cw_saga_steps s JOIN @TASKS t"
        "  ON t.message_id = s.message_id WHERE s.saga_id = g.saga_id AND s.state <> 'done'"
        "  AND t.state = 3)"
        " FROM @S.cw_sagas g WHERE g.created_at >= $1 ORDER BY g.created_at, g.saga_id LIMIT $2",
    [CW_SD_OVERDUE] = "UPDATE @S.cw_sagas SET alerted_at = $1 WHERE state = 'running'"
                      " AND deadline_at < $1 AND alerted_at IS NULL"
                      " RETURNING saga_id, plan_id, stage, stages, deadline_at, created_at",
    [CW_SD_STATS] = "SELECT count(*), sum(CASE WHEN state = 'done' THEN 1 ELSE 0 END),"
                    " sum(CASE WHEN state = 'running' THEN 1 ELSE 0 END),"
                    " (SELECT count(DISTINCT s.saga_id) FROM @S.cw_saga_steps s JOIN @TASKS t"
                    "  ON t.message_id = s.message_id JOIN @S.cw_sagas g2 ON g2.saga_id = s.saga_id"
                    "  WHERE g2.state = 'running' AND s.state <> 'done' AND t.state = 3),"
                    " sum(CASE WHEN state = 'running' AND deadline_at < $1 THEN 1 ELSE 0 END),"
                    " sum(CASE WHEN state = 'done' THEN done_at - created_at ELSE 0 END)"
                    " FROM @S.cw_sagas",
    [CW_SD_EXPIRE_STEPS] = "DELETE FROM @S.cw_saga_steps WHERE saga_id IN (SELECT saga_id FROM"
                           " @S.cw_sagas WHERE state = 'done' AND done_at < $1"
                           " ORDER BY done_at LIMIT $2)",
    [CW_SD_EXPIRE_HISTORY] = "DELETE FROM @S.cw_saga_history WHERE saga_id IN (SELECT saga_id"
                             " FROM @S.cw_sagas WHERE state = 'done' AND done_at < $1"
                             " ORDER BY done_at LIMIT $2)",
    [CW_SD_EXPIRE_SAGAS] = "DELETE FROM @S.cw_sagas WHERE saga_id IN (SELECT saga_id FROM"
                           " @S.cw_sagas WHERE state = 'done' AND done_at < $1"
                           " ORDER BY done_at LIMIT $2)",
};

const char *cw_saga_rows_get(const cw_saga_rows *r, size_t row, size_t col)
{
    return row < r->n && col < r->cols ? r->v[row * r->cols + col] : NULL;
}

void cw_saga_rows_free(cw_saga_rows *r)
{
    for (size_t i = 0; r->v && i < r->n * r->cols; i++)
        free(r->v[i]);
    free(r->v);
    memset(r, 0, sizeof *r);
}

/* "schema". with its quotes doubled, into d->schema. */
static void quote_schema(cw_saga_db *d, const char *s)
{
    size_t o = 0;
    d->schema[o++] = '"';
    for (; *s && o + 4 < sizeof d->schema; s++) {
        if (*s == '"')
            d->schema[o++] = '"';
        d->schema[o++] = *s;
    }
    d->schema[o++] = '"';
    d->schema[o++] = '.';
    d->schema[o] = '\0';
}

int cw_saga_db_open(cw_saga_db *d, const cw_config *cfg, bool read_only)
{
    memset(d, 0, sizeof *d);
    if (cfg->store_backend == CW_STORE_SQLITE) {
        int flags = read_only ? SQLITE_OPEN_READONLY : SQLITE_OPEN_READWRITE;
        if (sqlite3_open_v2(cfg->store_path, &d->sq, flags, NULL) != SQLITE_OK) {
            int rc = cw__error(CW_STATUS_STORE, "store %s: %s", cfg->store_path,
                               d->sq ? sqlite3_errmsg(d->sq) : "out of memory");
            cw_saga_db_close(d);
            return rc;
        }
        sqlite3_busy_timeout(d->sq, 5000);
        return 0;
    }
    if (cfg->store_backend == CW_STORE_POSTGRESQL) {
        char *label = NULL, *password = NULL;
        int rc = cw__pg_url_parse(cfg->store_url, "[store] url", &label, &password);
        if (rc == 0)
            rc = cw__pg_session_open(cfg->store_url, label, password, "compworker saga", "store",
                                     "[store] url", &d->pg);
        free(label);
        free(password);
        if (rc) {
            cw_saga_db_close(d);
            return rc;
        }
        quote_schema(d, cfg->store_schema && *cfg->store_schema ? cfg->store_schema : "compworker");
        return 0;
    }
    return cw__error(CW_STATUS_INVALID_ARG, "saga plans are kept by the sqlite and postgresql "
                                            "stores, not memory");
}

void cw_saga_db_close(cw_saga_db *d)
{
    if (d->sq)
        sqlite3_close(d->sq);
    if (d->pg)
        PQfinish(d->pg);
    memset(d, 0, sizeof *d);
}

int cw_saga_db_of_task(cw_saga_db *d, cw_task *t)
{
    memset(d, 0, sizeof *d);
    const char *backend = t->tx_opts ? t->tx_opts->backend : "memory";
    if (strcmp(backend, "sqlite") == 0) {
        d->sq = cw_task_sqlite(t);
        return d->sq ? 0 : CW_STATUS_STORE;
    }
    if (strcmp(backend, "postgresql") == 0) {
        d->pg = cw_task_pg(t);
        if (!d->pg)
            return CW_STATUS_STORE;
        quote_schema(d,
                     t->tx_opts->schema && *t->tx_opts->schema ? t->tx_opts->schema : "compworker");
        return 0;
    }
    return cw__error(CW_STATUS_INVALID_ARG,
                     "saga plans need a store with transactions ([store] backend sqlite or "
                     "postgresql), not %s",
                     backend);
}

/* The statement in the connection's dialect (new string). */
static char *dialect(const cw_saga_db *d, const char *text)
{
    size_t cap = strlen(text) + 16 * (strlen(d->schema) + 16) + 1;
    char *out = malloc(cap), *o = out;
    if (!out)
        return NULL;
    for (const char *p = text; *p;) {
        if (strncmp(p, "@S.", 3) == 0) {
            o += sprintf(o, "%s", d->pg ? d->schema : "");
            p += 3;
        } else if (strncmp(p, "@TASKS", 6) == 0) {
            o += sprintf(o, "%s%s", d->pg ? d->schema : "", d->pg ? "cw_tasks" : "tasks");
            p += 6;
        } else if (strncmp(p, "@ATTEMPTS", 9) == 0) {
            o += sprintf(o, "%s%s", d->pg ? d->schema : "", d->pg ? "cw_attempts" : "attempts");
            p += 9;
        } else if (*p == '$' && !d->pg) {
            *o++ = '?';
            p++;
        } else {
            *o++ = *p++;
        }
    }
    *o = '\0';
    return out;
}

static int run_sqlite(cw_saga_db *d, const char *text, int n, const char *const *params,
                      cw_saga_rows *out)
{
    sqlite3_stmt *st = NULL;
    if (sqlite3_prepare_v2(d->sq, text, -1, &st, NULL) != SQLITE_OK)
        return cw__error(CW_STATUS_STORE, "saga: %s", sqlite3_errmsg(d->sq));
    for (int i = 0; i < n; i++) {
        int rc = params[i] ? sqlite3_bind_text(st, i + 1, params[i], -1, SQLITE_STATIC)
                           : sqlite3_bind_null(st, i + 1);
        if (rc != SQLITE_OK) {
            sqlite3_finalize(st);
            return cw__error(CW_STATUS_STORE, "saga: %s", sqlite3_errmsg(d->sq));
        }
    }
    int cols = sqlite3_column_count(st), step;
    size_t cap = 0;
    int rc = 0;
    while ((step = sqlite3_step(st)) == SQLITE_ROW) {
        if (!out)
            continue;
        if (out->n == cap) {
            cap = cap ? cap * 2 : 8;
            char **nv = realloc(out->v, cap * (size_t)cols * sizeof *nv);
            if (!nv) {
                rc = cw__error(CW_STATUS_NOMEM, "saga: out of memory");
                break;
            }
            out->v = nv;
        }
        out->cols = (size_t)cols;
        for (int c = 0; c < cols; c++) {
            const char *v = (const char *)sqlite3_column_text(st, c);
            out->v[out->n * (size_t)cols + (size_t)c] = v ? strdup(v) : NULL;
        }
        out->n++;
    }
    if (rc == 0 && step != SQLITE_DONE)
        rc = cw__error(CW_STATUS_STORE, "saga: %s", sqlite3_errmsg(d->sq));
    sqlite3_finalize(st);
    return rc;
}

static int run_pg(cw_saga_db *d, const char *text, int n, const char *const *params,
                  cw_saga_rows *out)
{
    PGresult *res = PQexecParams(d->pg, text, n, NULL, params, NULL, NULL, 0);
    ExecStatusType st = res ? PQresultStatus(res) : PGRES_FATAL_ERROR;
    if (st != PGRES_COMMAND_OK && st != PGRES_TUPLES_OK) {
        char why[1024];
        cw__pg_scrub_password(NULL, res ? PQresultErrorMessage(res) : PQerrorMessage(d->pg), why,
                              sizeof why);
        PQclear(res);
        return cw__error(CW_STATUS_STORE, "saga: %s", why);
    }
    if (out && st == PGRES_TUPLES_OK) {
        size_t rows = (size_t)PQntuples(res), cols = (size_t)PQnfields(res);
        size_t cells = rows * cols;
        out->v = calloc(cells ? cells : 1, sizeof *out->v);
        if (!out->v) {
            PQclear(res);
            return cw__error(CW_STATUS_NOMEM, "saga: out of memory");
        }
        out->n = rows;
        out->cols = cols;
        for (size_t i = 0; i < rows; i++) {
            for (size_t c = 0; c < cols; c++) {
                if (!PQgetisnull(res, (int)i, (int)c))
                    out->v[i * cols + c] = strdup(PQgetvalue(res, (int)i, (int)c));
            }
        }
    }
    PQclear(res);
    return 0;
}

int cw_saga_db_run(cw_saga_db *d, cw_saga_stmt s, int n, const char *const *params,
                   cw_saga_rows *out)
{
    if (out)
        memset(out, 0, sizeof *out);
    char *text = dialect(d, sql[s]);
    if (!text)
        return cw__error(CW_STATUS_NOMEM, "saga: out of memory");
    if (d->pg && s == CW_SD_SAGA_GET) {
        /* the saga's row locked: one stage's steps that end at once on
         * several workers start the next stage once (SQLite's writer lock
         * does this for its handler transactions) */
        char *locked = malloc(strlen(text) + sizeof " FOR UPDATE");
        if (locked)
            sprintf(locked, "%s FOR UPDATE", text);
        free(text);
        if (!(text = locked))
            return cw__error(CW_STATUS_NOMEM, "saga: out of memory");
    }
    int rc = d->pg ? run_pg(d, text, n, params, out) : run_sqlite(d, text, n, params, out);
    free(text);
    if (rc && out)
        cw_saga_rows_free(out);
    return rc;
}
