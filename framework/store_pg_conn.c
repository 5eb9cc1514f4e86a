/* The PostgreSQL store's connection: connecting and reconnecting, the
 * schema and its migration, the heartbeat thread, and messages that never
 * carry the password. */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "framework/clock.h"
#include "framework/error.h"
#include "framework/log.h"
#include "framework/pg.h"
#include "framework/store_pg.h"

/* The oldest server the SQL needs (MATERIALIZED common table expressions). */
#define CW_PG_MIN_SERVER 120000

/* ---- messages without credentials ---------------------------------------- */

void cw__pg_scrub(const cw_pg_store *q, const char *msg, char *out, size_t cap)
{
    cw__pg_scrub_password(q->password, msg, out, cap);
}

static int parse_url(cw_pg_store *q)
{
    return cw__pg_url_parse(q->url, "[store] url", &q->label, &q->password);
}

/* ---- results and failures --------------------------------------------------- */

int cw__pg_fail(cw_pg_store *q, PGresult *res, const char *op)
{
    char why[1024];
    const char *msg = res ? PQresultErrorMessage(res) : NULL;
    if ((!msg || !*msg) && q->conn)
        msg = PQerrorMessage(q->conn);
    cw__pg_scrub_password(q->password, msg && *msg ? msg : "no answer from the server", why,
                          sizeof why);
    bool lost = cw__pg_lost(q->conn, res);
    PQclear(res);
    if (lost) {
        q->lost = true;
        q->in_batch = false;
        return cw__error(CW_STATUS_STORE_UNAVAILABLE, "store %s: %s: the server is unreachable: %s",
                         q->label, op, why);
    }
    return cw__error(CW_STATUS_STORE, "store %s: %s: %s", q->label, op, why);
}

bool cw__pg_retryable(const PGresult *res)
{
    const char *st = res ? PQresultErrorField(res, PG_DIAG_SQLSTATE) : NULL;
    return st && (strcmp(st, "40P01") == 0 || strcmp(st, "40001") == 0);
}

PGresult *cw__pg_exec(cw_pg_store *q, int stmt, int nparams, const char *const *values)
{
    char name[16];
    snprintf(name, sizeof name, "cw%d", stmt);
    return q->conn ? PQexecPrepared(q->conn, name, nparams, values, NULL, NULL, 0) : NULL;
}

int cw__pg_command(cw_pg_store *q, const char *sql, const char *op)
{
    PGresult *res = q->conn ? PQexec(q->conn, sql) : NULL;
    ExecStatusType st = res ? PQresultStatus(res) : PGRES_FATAL_ERROR;
    if (st == PGRES_COMMAND_OK || st == PGRES_TUPLES_OK) {
        PQclear(res);
        return 0;
    }
    return cw__pg_fail(q, res, op);
}

/* ---- connecting ------------------------------------------------------------- */

/* Opens a session to the server of `q` (the operations' or the heartbeat
 * thread's): *out is set either way (PQfinish it). */
static int open_session(cw_pg_store *q, const char *role, PGconn **out)
{
    char app[64];
    snprintf(app, sizeof app, "compworker %s %s", role, q->owner_pid);
    return cw__pg_session_open(q->url, q->label, q->password, app, "store", "[store] url", out);
}

/* SELECT returning one value, as text into out ("" for NULL). */
static int query_value(cw_pg_store *q, const char *sql, const char *param, char *out, size_t cap,
                       const char *op)
{
    const char *values[1] = {param};
    PGresult *res = PQexecParams(q->conn, sql, param ? 1 : 0, NULL, values, NULL, NULL, 0);
    if (!res || PQresultStatus(res) != PGRES_TUPLES_OK)
        return cw__pg_fail(q, res, op);
    out[0] = '\0';
    if (PQntuples(res) > 0 && !PQgetisnull(res, 0, 0))
        snprintf(out, cap, "%s", PQgetvalue(res, 0, 0));
    PQclear(res);
    return 0;
}

/* Replaces every "@S" of `sql` with the quoted schema. */
static char *with_schema(const char *sql, const char *quoted)
{
    size_t n = 0, ql = strlen(quoted);
    for (const char *p = sql; (p = strstr(p, "@S")); p += 2)
        n++;
    char *out = malloc(strlen(sql) + n * ql + 1);
    if (!out)
        return NULL;
    char *o = out;
    for (const char *p = sql;;) {
        const char *hit = strstr(p, "@S");
        size_t len = hit ? (size_t)(hit - p) : strlen(p);
        memcpy(o, p, len);
        o += len;
        if (!hit)
            break;
        memcpy(o, quoted, ql);
        o += ql;
        p = hit + 2;
    }
    *o = '\0';
    return out;
}

/* The schema's state: 0 absent, -1 present without cw_meta, else its version. */
static int schema_version(cw_pg_store *q, const char *quoted, int *version)
{
    char v[64], meta[512];
    int rc = query_value(q, "SELECT to_regnamespace($1) IS NOT NULL", quoted, v, sizeof v,
                         "reading the schema");
    if (rc)
        return rc;
    *version = 0;
    if (strcmp(v, "t") != 0)
        return 0;
    snprintf(meta, sizeof meta, "%s.cw_meta", quoted);
    if ((rc = query_value(q, "SELECT to_regclass($1) IS NOT NULL", meta, v, sizeof v,
                          "reading the schema")))
        return rc;
    *version = -1;
    if (strcmp(v, "t") != 0)
        return 0;
    char sql[600];
    snprintf(sql, sizeof sql, "SELECT value FROM %s WHERE key = 'schema_version'", meta);
    if ((rc = query_value(q, sql, NULL, v, sizeof v, "reading the schema version")))
        return rc;
    *version = v[0] ? atoi(v) : -1;
    return 0;
}

static char *quoted_schema(cw_pg_store *q)
{
    char *e = PQescapeIdentifier(q->conn, q->schema, strlen(q->schema));
    char *copy = e ? strdup(e) : NULL;
    PQfreemem(e);
    return copy;
}

/* Creates or migrates the schema, under a lock that serializes every host
 * starting at once; refuses a schema newer than this build. */
static int migrate(cw_pg_store *q, const char *quoted)
{
    int rc = cw__pg_command(q, "BEGIN", "migrating the schema");
    if (rc)
        return rc;
    char sql[1024], v[64];
    const char *lock = "SELECT pg_advisory_xact_lock(hashtext('compworker.schema.' || "
                       "current_database() || '.' || $1::text))";
    if ((rc = query_value(q, lock, q->schema, v, sizeof v, "locking the schema")))
        goto out_rollback;
    int version;
    if ((rc = schema_version(q, quoted, &version)))
        goto out_rollback;
    if (version > CW_PG_SCHEMA_VERSION) {
        rc = cw__error(CW_STATUS_STORE,
                       "store %s: schema %s is at version %d, newer than this compworker supports "
                       "(%d): upgrade compworker on this host",
                       q->label, q->schema, version, CW_PG_SCHEMA_VERSION);
        goto out_rollback;
    }
    if (version == CW_PG_SCHEMA_VERSION)
        return cw__pg_command(q, "COMMIT", "migrating the schema");
    /* CREATE SCHEMA needs the right to create schemas even with IF NOT
     * EXISTS: it runs only when the schema is not there (a DBA may have made
     * it and granted us its use). */
    if (version == 0) {
        snprintf(sql, sizeof sql, "CREATE SCHEMA %s", quoted);
        if ((rc = cw__pg_command(q, sql, "creating the schema")))
            goto out_rollback;
    }
    snprintf(sql, sizeof sql,
             "CREATE TABLE IF NOT EXISTS %s.cw_meta (key text PRIMARY KEY, value text NOT NULL)",
             quoted);
    if ((rc = cw__pg_command(q, sql, "creating the schema")))
        goto out_rollback;
    for (int step_v = version > 0 ? version : 0; step_v < CW_PG_SCHEMA_VERSION; step_v++) {
        char *step = with_schema(cw__pg_schema_steps[step_v], quoted);
        rc = step ? cw__pg_command(q, step, "creating the schema")
                  : cw__error(CW_STATUS_NOMEM, "store: out of memory");
        free(step);
        if (rc)
            goto out_rollback;
    }
    snprintf(sql, sizeof sql,
             "INSERT INTO %s.cw_meta (key, value) VALUES ('schema_version', '%d')"
             " ON CONFLICT (key) DO UPDATE SET value = excluded.value",
             quoted, CW_PG_SCHEMA_VERSION);
    if ((rc = cw__pg_command(q, sql, "creating the schema")))
        goto out_rollback;
    if ((rc = cw__pg_command(q, "COMMIT", "creating the schema")))
        return rc;
    if (version > 0)
        cw_log_info(NULL, "store %s: migrated schema %s from version %d to %d", q->label, q->schema,
                    version, CW_PG_SCHEMA_VERSION);
    else
        cw_log_info(NULL, "store %s: created schema %s at version %d", q->label, q->schema,
                    CW_PG_SCHEMA_VERSION);
    return 0;

out_rollback:
    if (q->conn && !q->lost)
        PQclear(PQexec(q->conn, "ROLLBACK"));
    return rc;
}

static int prepare_all(cw_pg_store *q)
{
    for (int i = 0; i < CW_PG_COUNT; i++) {
        char name[16];
        snprintf(name, sizeof name, "cw%d", i);
        PGresult *res = PQprepare(q->conn, name, q->sql[i], 0, NULL);
        if (!res || PQresultStatus(res) != PGRES_COMMAND_OK)
            return cw__pg_fail(q, res, "preparing statements");
        PQclear(res);
    }
    return 0;
}

int cw__pg_connect(cw_pg_store *q, bool migrate_schema)
{
    if (q->conn) {
        PQfinish(q->conn);
        q->conn = NULL;
    }
    q->lost = false;
    q->in_batch = false;
    int rc = open_session(q, q->tx_only ? "handler" : "store", &q->conn);
    if (rc)
        goto out_close;
    if (PQserverVersion(q->conn) < CW_PG_MIN_SERVER) {
        rc = cw__error(CW_STATUS_STORE,
                       "store %s: PostgreSQL %d.%d is too old (12 or later needed)", q->label,
                       PQserverVersion(q->conn) / 10000, PQserverVersion(q->conn) % 10000);
        goto out_close;
    }
    /* Outcomes are acked once committed: the commit must be on disk, whatever
     * the server's default. Claims ask for less, per transaction. */
    if ((rc = cw__pg_command(q, "SET synchronous_commit = on", "configuring the session")))
        goto out_close;
    char *quoted = quoted_schema(q);
    if (!quoted) {
        rc = cw__error(CW_STATUS_NOMEM, "store: out of memory");
        goto out_close;
    }
    if (!q->sql[0]) {
        for (int i = 0; i < CW_PG_COUNT; i++) {
            if (!(q->sql[i] = with_schema(cw__pg_sql[i], quoted))) {
                free(quoted);
                rc = cw__error(CW_STATUS_NOMEM, "store: out of memory");
                goto out_close;
            }
        }
    }
    rc = migrate_schema && !q->tx_only ? migrate(q, quoted) : 0;
    free(quoted);
    if (rc == 0)
        rc = prepare_all(q);
    if (rc)
        goto out_close;
    if (q->tx_only)
        return 0;
    const char *reg[1] = {q->base.owner};
    PGresult *res = cw__pg_exec(q, CW_PG_REGISTER, 1, reg);
    if (!res || PQresultStatus(res) != PGRES_COMMAND_OK) {
        rc = cw__pg_fail(q, res, "registering the worker");
        goto out_close;
    }
    PQclear(res);
    return 0;

out_close:
    if (q->conn) {
        PQfinish(q->conn);
        q->conn = NULL;
    }
    q->lost = true;
    return rc;
}

int cw__pg_ready(cw_pg_store *q)
{
    if (q->conn && !q->lost)
        return 0;
    int rc = cw__pg_connect(q, true);
    if (rc == 0)
        cw_log_info(NULL, "store %s: connected again", q->label);
    return rc;
}

void cw__pg_close(cw_pg_store *q)
{
    if (q->conn)
        PQfinish(q->conn);
    q->conn = NULL;
    for (int i = 0; i < CW_PG_COUNT; i++)
        free(q->sql[i]);
    if (q->password)
        memset(q->password, 0, strlen(q->password));
    free(q->password);
    free(q->label);
    free(q->url);
    free(q->schema);
    free(q->base.owner);
}

/* ---- the heartbeat thread ----------------------------------------------------- */

static void *beat_main(void *arg)
{
    cw_pg_store *q = arg;
    PGconn *conn = NULL;
    bool was_ok = true;
    pthread_mutex_lock(&q->beat_mu);
    while (!q->beat_stop) {
        pthread_mutex_unlock(&q->beat_mu);
        bool ok = false;
        char why[512] = "";
        if (!conn || PQstatus(conn) != CONNECTION_OK) {
            PQfinish(conn);
            conn = NULL;
            if (open_session(q, "heartbeat", &conn) != 0)
                snprintf(why, sizeof why, "%s", cw_error_last());
        }
        if (conn && PQstatus(conn) == CONNECTION_OK) {
            const char *values[1] = {q->base.owner};
            PGresult *res = PQexecParams(conn, q->sql[CW_PG_REGISTER], 1, NULL, values, NULL, NULL,
                                         0);
            ok = res && PQresultStatus(res) == PGRES_COMMAND_OK;
            if (!ok)
                cw__pg_scrub_password(q->password,
                                      res ? PQresultErrorMessage(res) : PQerrorMessage(conn), why,
                                      sizeof why);
            PQclear(res);
        }
        atomic_store(&q->beat_ok, ok);
        if (ok != was_ok) {
            if (ok)
                cw_log_info(NULL, "store %s: heartbeats flow again", q->label);
            else
                cw_log_warn(NULL, "store %s: heartbeat failed: %s", q->label, why);
            was_ok = ok;
        }
        pthread_mutex_lock(&q->beat_mu);
        if (q->beat_stop)
            break;
        struct timespec ts = cw__mono_timespec(cw__mono_ms() + CW_PG_HEARTBEAT_MS);
        pthread_cond_timedwait(&q->beat_cv, &q->beat_mu, &ts);
    }
    pthread_mutex_unlock(&q->beat_mu);
    PQfinish(conn);
    return NULL;
}

int cw__pg_beat_start(cw_pg_store *q)
{
    pthread_condattr_t ca;
    pthread_condattr_init(&ca);
    pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
    int err = pthread_cond_init(&q->beat_cv, &ca);
    pthread_condattr_destroy(&ca);
    if (err == 0 && (err = pthread_mutex_init(&q->beat_mu, NULL)) != 0)
        pthread_cond_destroy(&q->beat_cv);
    if (err)
        return cw__error(CW_STATUS_STORE, "store %s: cannot start heartbeats: %s", q->label,
                         strerror(err));
    q->beat_stop = false;
    atomic_store(&q->beat_ok, true);
    if ((err = pthread_create(&q->beat, NULL, beat_main, q)) != 0) {
        pthread_mutex_destroy(&q->beat_mu);
        pthread_cond_destroy(&q->beat_cv);
        return cw__error(CW_STATUS_STORE, "store %s: cannot start heartbeats: %s", q->label,
                         strerror(err));
    }
    q->beat_running = true;
    return 0;
}

void cw__pg_beat_stop(cw_pg_store *q)
{
    if (!q->beat_running)
        return;
    pthread_mutex_lock(&q->beat_mu);
    q->beat_stop = true;
    pthread_cond_signal(&q->beat_cv);
    pthread_mutex_unlock(&q->beat_mu);
    pthread_join(q->beat, NULL);
    pthread_mutex_destroy(&q->beat_mu);
    pthread_cond_destroy(&q->beat_cv);
    q->beat_running = false;
}

/* ---- probing, for config check ------------------------------------------------- */

int cw__store_pg_probe(const cw_store_opts *opts, char *out, size_t cap)
{
    cw_pg_store q = {0};
    q.base.owner = NULL;
    q.url = opts->url ? strdup(opts->url) : NULL;
    q.schema = strdup(opts->schema && *opts->schema ? opts->schema : "compworker");
    if (!opts->url || !*opts->url) {
        cw__pg_close(&q);
        return cw__error(CW_STATUS_CONFIG, "[store] url: required with backend = postgresql");
    }
    int rc = !q.url || !q.schema ? cw__error(CW_STATUS_NOMEM, "store: out of memory")
                                 : parse_url(&q);
    if (rc == 0)
        rc = open_session(&q, "check", &q.conn);
    char *quoted = rc == 0 ? quoted_schema(&q) : NULL;
    if (rc == 0 && !quoted)
        rc = cw__error(CW_STATUS_NOMEM, "store: out of memory");
    int version = 0;
    if (rc == 0)
        rc = schema_version(&q, quoted, &version);
    if (rc == 0) {
        int server = PQserverVersion(q.conn);
        char where[600];
        snprintf(where, sizeof where, "%s (PostgreSQL %d.%d)", q.label, server / 10000,
                 server % 10000);
        if (version == 0 || version == -1)
            snprintf(out, cap, "%s: schema %s not created yet (the first worker creates it)", where,
                     q.schema);
        else if (version > CW_PG_SCHEMA_VERSION)
            snprintf(out, cap,
                     "%s: schema %s at version %d, newer than this compworker supports (%d): "
                     "workers will refuse it",
                     where, q.schema, version, CW_PG_SCHEMA_VERSION);
        else if (version < CW_PG_SCHEMA_VERSION)
            snprintf(out, cap, "%s: schema %s at version %d (workers migrate it to %d)", where,
                     q.schema, version, CW_PG_SCHEMA_VERSION);
        else
            snprintf(out, cap, "%s: schema %s at version %d", where, q.schema, version);
    }
    free(quoted);
    cw__pg_close(&q);
    return rc;
}

/* ---- opening --------------------------------------------------------------------- */

int cw__pg_open_conn(cw_pg_store *q, const cw_store_opts *opts)
{
    q->url = strdup(opts->url);
    q->schema = strdup(opts->schema && *opts->schema ? opts->schema : "compworker");
    if (!q->url || !q->schema)
        return cw__error(CW_STATUS_NOMEM, "store: out of memory");
    snprintf(q->owner_pid, sizeof q->owner_pid, "%ld", (long)getpid());
    int rc = parse_url(q);
    if (rc)
        return rc;
    if ((rc = cw__pg_connect(q, true)))
        return rc;
    if (opts->heartbeat && (rc = cw__pg_beat_start(q)))
        return rc;
    return 0;
}
