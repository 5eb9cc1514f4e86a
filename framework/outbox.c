/* The outbox table: its SQL, and cw_outbox_enqueue() (framework/outbox.h,
 * include/compworker/outbox.h). */
#include <libpq-fe.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "compworker/outbox.h"
#include "framework/broker.h"
#include "framework/error.h"
#include "framework/outbox.h"
#include "framework/pg.h"

#define CW_OUTBOX_NAME_MAX 48

static bool ident_char(char c, bool first)
{
    return (c >= 'a' && c <= 'z') || c == '_' || (!first && c >= '0' && c <= '9');
}

bool cw__outbox_table_valid(const char *table, char *why, size_t why_len)
{
    const char *dot = table ? strchr(table, '.') : NULL;
    const char *name = dot ? dot + 1 : table;
    size_t slen = dot ? (size_t)(dot - table) : 0, nlen = name ? strlen(name) : 0;
    bool ok = table && nlen >= 1 && nlen <= CW_OUTBOX_NAME_MAX &&
              (!dot || (slen >= 1 && slen <= 63));
    for (const char *p = table; ok && *p; p++) {
        if (p == dot)
            continue;
        ok = ident_char(*p, p == table || p == name);
    }
    if (!ok)
        snprintf(why, why_len,
                 "'%s' is not NAME or SCHEMA.NAME of lower-case letters, digits and '_' (not "
                 "starting with a digit; the name at most %d bytes)",
                 table ? table : "(null)", CW_OUTBOX_NAME_MAX);
    return ok;
}

/* A new UUIDv7 (framework/message_id.h) in SQL, for rows inserted without
 * a message ID: the milliseconds, then random hex of gen_random_uuid() (its
 * 17th digit is the RFC's variant). Time-ordered, so that the workers' stores
 * index these IDs at their right edge too. */
#define UUID_V7                                                                                    \
    "regexp_replace(lpad(to_hex(floor(extract(epoch FROM clock_timestamp()) * 1000)::bigint),"     \
    " 12, '0') || '7' || substr(replace(gen_random_uuid()::text, '-', ''), 1, 3) ||"               \
    " substr(replace(gen_random_uuid()::text, '-', ''), 17, 16),"                                  \
    " '^(.{8})(.{4})(.{4})(.{4})', '\\1-\\2-\\3-\\4-')"

/* The pending rows, as the partial indexes say it. */
#define PENDING "sent_at IS NULL AND failed_at IS NULL"

int cw__outbox_sql_build(cw_outbox_sql *q, const char *table)
{
    memset(q, 0, sizeof *q);
    const char *dot = strchr(table, '.');
    const char *name = dot ? dot + 1 : table;
    char schema[80] = "";
    if (dot)
        snprintf(schema, sizeof schema, "%.*s.", (int)(dot - table), table);
    snprintf(q->channel, sizeof q->channel, "%s", name);
    const char *t = table, *n = name, *s = schema;
    int bad = 0;
    bad |= asprintf(&q->sql[CW_OB_CREATE],
                    "CREATE TABLE IF NOT EXISTS %s ("
                    " id bigserial PRIMARY KEY,"
                    " message_id text DEFAULT " UUID_V7 ","
                    " type text NOT NULL,"
                    " saga_id text,"
                    " body jsonb NOT NULL,"
                    " routing_key text,"
                    " headers jsonb,"
                    " created_at timestamptz NOT NULL DEFAULT now(),"
                    " sent_at timestamptz,"
                    " failed_at timestamptz,"
                    " error text);"
                    /* A table made by an earlier release gets the same default. */
                    "ALTER TABLE %s ALTER COLUMN message_id SET DEFAULT " UUID_V7 ";"
                    "CREATE INDEX IF NOT EXISTS %s_pending ON %s (id) WHERE " PENDING ";"
                    "CREATE INDEX IF NOT EXISTS %s_saga ON %s (saga_id, id) WHERE " PENDING ";"
                    "CREATE INDEX IF NOT EXISTS %s_sent ON %s (sent_at) WHERE sent_at IS NOT NULL;"
                    "CREATE INDEX IF NOT EXISTS %s_failed ON %s (id) WHERE failed_at IS NOT NULL;"
                    "CREATE OR REPLACE FUNCTION %s%s_notify() RETURNS trigger LANGUAGE plpgsql AS"
                    " $cw$BEGIN PERFORM pg_notify('%s', ''); RETURN NULL; END$cw$;"
                    "CREATE OR REPLACE TRIGGER %s_notify AFTER INSERT ON %s"
                    " FOR EACH STATEMENT EXECUTE FUNCTION %s%s_notify();",
                    t, t, n, t, n, t, n, t, n, t, s, n, n, n, t, s, n) < 0;
    bad |= asprintf(&q->sql[CW_OB_LOCK],
                    "SELECT pg_advisory_xact_lock(hashtext('compworker outbox %s'))", t) < 0;
    bad |= asprintf(&q->sql[CW_OB_EXISTS], "SELECT to_regclass('%s') IS NOT NULL", t) < 0;
    bad |= asprintf(&q->sql[CW_OB_LISTEN], "LISTEN %s", n) < 0;
    /* A saga's row is taken only when every earlier pending row of its saga
     * is taken with it: the rows another relay holds (locked, so skipped
     * here) keep the ones after them waiting, and a saga is published in id
     * order whichever relays share the table. */
    bad |=
        asprintf(&q->sql[CW_OB_CLAIM],
                 "WITH c AS MATERIALIZED (SELECT id FROM %s WHERE " PENDING
                 " ORDER BY id LIMIT $1 FOR UPDATE SKIP LOCKED)"
                 /* Text past its limit is cut one byte past it (still too
                     * long, so still refused), a body or headers past theirs
                     * not sent at all: a row's size never reaches the relay. */
                 " SELECT o.id, left(o.message_id, 129), left(o.type, 256), left(o.saga_id, 256),"
                 " CASE WHEN octet_length(o.body::text) <= $2 THEN o.body::text END,"
                 " jsonb_typeof(o.body), left(o.routing_key, 256),"
                 " CASE WHEN octet_length(o.headers::text) <= " CW_OUTBOX_HEADERS_MAX_S
                 " THEN o.headers::text END, jsonb_typeof(o.headers),"
                 " octet_length(o.body::text), octet_length(o.headers::text)"
                 " FROM %s o JOIN c ON o.id = c.id"
                 " WHERE o.saga_id IS NULL OR NOT EXISTS (SELECT 1 FROM %s p"
                 " WHERE p.saga_id = o.saga_id AND p.id < o.id AND p." PENDING
                 " AND p.id NOT IN (SELECT id FROM c))"
                 " ORDER BY o.id",
                 t, t, t) < 0;
    bad |= asprintf(&q->sql[CW_OB_SENT],
                    "UPDATE %s SET sent_at = now() WHERE id = ANY($1::bigint[])", t) < 0;
    bad |= asprintf(&q->sql[CW_OB_FAILED],
                    "UPDATE %s o SET failed_at = now(), error = f.error"
                    " FROM unnest($1::bigint[], $2::text[]) AS f(id, error) WHERE o.id = f.id",
                    t) < 0;
    bad |= asprintf(&q->sql[CW_OB_SWEEP],
                    "DELETE FROM %s WHERE id IN (SELECT id FROM %s WHERE sent_at <"
                    " now() - make_interval(secs => $1::double precision / 1000)"
                    " ORDER BY sent_at LIMIT $2 FOR UPDATE SKIP LOCKED)",
                    t, t) < 0;
    bad |= asprintf(&q->sql[CW_OB_STATS],
                    "SELECT (SELECT count(*) FROM %s WHERE " PENDING "),"
                    " (SELECT COALESCE(extract(epoch FROM now() - created_at), 0) FROM %s"
                    " WHERE " PENDING " ORDER BY id LIMIT 1),"
                    " (SELECT count(*) FROM %s WHERE failed_at IS NOT NULL)",
                    t, t, t) < 0;
    if (bad) {
        cw__outbox_sql_free(q);
        return cw__error(CW_STATUS_NOMEM, "outbox: out of memory");
    }
    return 0;
}

void cw__outbox_sql_free(cw_outbox_sql *q)
{
    for (int i = 0; i < CW_OB_COUNT; i++) {
        free(q->sql[i]);
        q->sql[i] = NULL;
    }
}

int cw_outbox_enqueue(struct pg_conn *conn, const char *table, const cw_publish_opts *opts,
                      char *id_out, size_t out_len)
{
    cw_publish_opts cur;
    const cw_publish_opts *o = &cur;
    char why[320];
    if (!conn || !opts)
        return cw__error(CW_STATUS_INVALID_ARG, "cw_outbox_enqueue: NULL connection or options");
    if (!table)
        table = CW_OUTBOX_TABLE;
    if (!cw__outbox_table_valid(table, why, sizeof why))
        return cw__error(CW_STATUS_INVALID_ARG, "cw_outbox_enqueue: table %s", why);
    int rc = cw__publish_opts_read(&cur, opts);
    if (rc)
        return rc;
    if (!o->body)
        return cw__error(CW_STATUS_INVALID_ARG, "cw_outbox_enqueue: body is required");
    size_t blen = o->body_len ? o->body_len : strlen(o->body);
    char id[CW_MESSAGE_ID_MAX + 1];
    if (cw__task_fields_check(o->type, o->message_id, o->saga_id, o->body, blen, id, why,
                              sizeof why))
        return cw__error(CW_STATUS_INVALID_ARG, "cw_outbox_enqueue: %s", why);
    if (o->routing_key && (!o->routing_key[0] || strlen(o->routing_key) > 255))
        return cw__error(CW_STATUS_INVALID_ARG,
                         "cw_outbox_enqueue: routing_key must be 1 to 255 bytes (NULL: the type)");

    char *body = strndup(o->body, blen); /* a text parameter ends at its NUL */
    char *sql = NULL;
    if (!body || asprintf(&sql,
                          "INSERT INTO %s (message_id, type, saga_id, body, routing_key)"
                          " VALUES ($1, $2, $3, $4::jsonb, $5)",
                          table) < 0) {
        free(body);
        return cw__error(CW_STATUS_NOMEM, "cw_outbox_enqueue: out of memory");
    }
    const char *values[5] = {id, o->type, o->saga_id && o->saga_id[0] ? o->saga_id : NULL, body,
                             o->routing_key};
    PGresult *res = PQexecParams(conn, sql, 5, NULL, values, NULL, NULL, 0);
    free(sql);
    free(body);
    if (!res || PQresultStatus(res) != PGRES_COMMAND_OK) {
        char msg[1024];
        /* The connection's own password is not known here; libpq's messages
         * on a query do not quote the connection string. */
        cw__pg_scrub_password(NULL, res ? PQresultErrorMessage(res) : PQerrorMessage(conn), msg,
                              sizeof msg);
        PQclear(res);
        return cw__error(CW_STATUS_STORE, "cw_outbox_enqueue: inserting into %s: %s", table, msg);
    }
    PQclear(res);
    if (id_out && out_len)
        snprintf(id_out, out_len, "%s", id);
    return 0;
}
