/* compworker relay [init|failed|retry]: the outbox relay and its table. */
#include <libpq-fe.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "framework/config.h"
#include "framework/error.h"
#include "framework/log.h"
#include "framework/outbox.h"
#include "framework/pg.h"
#include "workers/cli.h"
#include "workers/opt.h"
#include "workers/relay.h"

typedef struct relay_args {
    const char *config, *log_level;
    bool all, json;
} relay_args;

static const cw_opt_spec relay_specs[] = {
    {CW_OPT_VALUE, "config", 'c', "RELAY.INI",
     "the relay's configuration file: [relay] (the outbox database and table), [broker], "
     "[alert], [log]",
     .offset = offsetof(relay_args, config), .flags = CW_OPT_REQUIRED},
    {CW_OPT_VALUE, "log-level", 'l', "LEVEL", "debug, info, warn or error (overrides [log] level)",
     .offset = offsetof(relay_args, log_level)},
    CW_OPT_HELP_SPEC,
    CW_OPT_END_SPEC,
};

static const cw_opt_cmd relay_cmd = {
    .name = "relay",
    .args = "[init | check | failed | retry (--all | ID...)]",
    .summary =
        "Publishes the rows a service commits to its outbox table as tasks, with publisher "
        "confirms, until SIGTERM. 'relay init' creates the table; 'relay check' validates the file and asks the database; 'relay failed' lists the rows "
        "that could not be published and why; 'relay retry' makes them pending again.",
    .specs = relay_specs,
};

static const cw_opt_spec failed_specs[] = {
    {CW_OPT_VALUE, "config", 'c', "RELAY.INI", "the relay's configuration file",
     .offset = offsetof(relay_args, config), .flags = CW_OPT_REQUIRED},
    {CW_OPT_BOOL, "json", 'j', NULL, "one JSON object a line instead of text",
     .offset = offsetof(relay_args, json)},
    CW_OPT_HELP_SPEC,
    CW_OPT_END_SPEC,
};

static const cw_opt_cmd failed_cmd = {
    .name = "relay failed",
    .summary = "Lists the outbox rows marked failed (id, message ID, type, saga, when, why), "
               "oldest first.",
    .specs = failed_specs,
};

static const cw_opt_spec retry_specs[] = {
    {CW_OPT_VALUE, "config", 'c', "RELAY.INI", "the relay's configuration file",
     .offset = offsetof(relay_args, config), .flags = CW_OPT_REQUIRED},
    {CW_OPT_BOOL, "all", 'a', NULL, "every failed row", .offset = offsetof(relay_args, all)},
    CW_OPT_HELP_SPEC,
    CW_OPT_END_SPEC,
};

static const cw_opt_cmd retry_cmd = {
    .name = "relay retry",
    .args = "(--all | ID...)",
    .summary = "Makes failed outbox rows pending again (after fixing what their reason says): "
               "the relay publishes them with their own message IDs.",
    .specs = retry_specs,
};

/* Loads the relay's file and opens a session to its database. */
static int open_db(const relay_args *a, const char *cmd, cw_config **cfg, PGconn **conn,
                   char **label, char **password)
{
    *cfg = NULL;
    *conn = NULL;
    *label = *password = NULL;
    if (!a->config)
        return cw_cli_fail(CW_EXIT_USAGE, "%s: -c RELAY.INI is required", cmd);
    if (cw_config_load_relay(cfg, a->config))
        return cw_cli_fail(CW_EXIT_USAGE, "%s", cw_error_last());
    if (cw__pg_url_parse((*cfg)->relay_url, "[relay] url", label, password))
        return cw_cli_fail(CW_EXIT_USAGE, "%s", cw_error_last());
    int rc = cw__pg_session_open((*cfg)->relay_url, *label, *password, "compworker relay cli",
                                 "relay", "[relay] url", conn);
    if (rc)
        return cw_cli_fail(rc == CW_STATUS_STORE_UNAVAILABLE ? CW_EXIT_FAILURE : CW_EXIT_USAGE,
                           "%s: %s", cmd, cw_error_last());
    return CW_EXIT_OK;
}

static void close_db(cw_config *cfg, PGconn *conn, char *label, char *password)
{
    if (conn)
        PQfinish(conn);
    free(label);
    free(password);
    cw_config_free(cfg);
}

static int query_failed(PGconn *conn, const char *password, const char *cmd, PGresult *res,
                        const char *table)
{
    char why[1024];
    cw__pg_scrub_password(password, res ? PQresultErrorMessage(res) : PQerrorMessage(conn), why,
                          sizeof why);
    PQclear(res);
    return cw_cli_fail(CW_EXIT_FAILURE, "%s: %s: %s", cmd, table, why);
}

/* Prints `s` as a JSON string. */
static void json_str(const char *s)
{
    if (!s) {
        fputs("null", stdout);
        return;
    }
    putchar('"');
    for (const unsigned char *p = (const unsigned char *)s; *p; p++) {
        if (*p == '"' || *p == '\\')
            printf("\\%c", *p);
        else if (*p < 0x20)
            printf("\\u%04x", *p);
        else
            putchar(*p);
    }
    putchar('"');
}

static int cmd_failed(int argc, char **argv)
{
    relay_args a = {0};
    int first;
    int rc = cw_opt_parse(&failed_cmd, NULL, argc, argv, &a, &first);
    if (rc != CW_OPT_PARSED)
        return rc;
    if (first < argc)
        return cw_cli_fail(CW_EXIT_USAGE, "relay failed: unexpected argument '%s'", argv[first]);
    cw_config *cfg;
    PGconn *conn;
    char *label, *password;
    int code = open_db(&a, "relay failed", &cfg, &conn, &label, &password);
    if (code) {
        close_db(cfg, conn, label, password);
        return code;
    }
    char *sql = NULL;
    if (asprintf(&sql,
                 "SELECT id, message_id, type, saga_id, to_char(failed_at AT TIME ZONE 'UTC', "
                 "'YYYY-MM-DD\"T\"HH24:MI:SS.MS\"Z\"'), error FROM %s WHERE failed_at IS NOT NULL "
                 "ORDER BY id LIMIT 10000",
                 cfg->relay_table) < 0) {
        close_db(cfg, conn, label, password);
        return cw_cli_fail(CW_EXIT_FAILURE, "relay failed: out of memory");
    }
    PGresult *res = PQexec(conn, sql);
    free(sql);
    if (!res || PQresultStatus(res) != PGRES_TUPLES_OK) {
        code = query_failed(conn, password, "relay failed", res, cfg->relay_table);
        close_db(cfg, conn, label, password);
        return code;
    }
    int n = PQntuples(res);
    static const char *const keys[] = {"id", "message_id", "type", "saga_id", "failed_at", "error"};
    for (int i = 0; i < n; i++) {
        if (a.json) {
            for (int k = 0; k < 6; k++) {
                printf("%s\"%s\":", k ? "," : "{", keys[k]);
                if (k == 0)
                    fputs(PQgetvalue(res, i, 0), stdout);
                else
                    json_str(PQgetisnull(res, i, k) ? NULL : PQgetvalue(res, i, k));
            }
            puts("}");
        } else {
            printf("%s  %s  %s  saga %s  %s\n    %s\n", PQgetvalue(res, i, 0),
                   PQgetisnull(res, i, 1) ? "(no message ID)" : PQgetvalue(res, i, 1),
                   PQgetvalue(res, i, 2), PQgetisnull(res, i, 3) ? "-" : PQgetvalue(res, i, 3),
                   PQgetvalue(res, i, 4), PQgetvalue(res, i, 5));
        }
    }
    if (!a.json)
        printf("%d failed row%s in %s%s\n", n, n == 1 ? "" : "s", cfg->relay_table,
               n ? "; after fixing them: compworker relay retry -c FILE --all (or ID...)" : "");
    PQclear(res);
    close_db(cfg, conn, label, password);
    return CW_EXIT_OK;
}

static int cmd_retry(int argc, char **argv)
{
    relay_args a = {0};
    int first;
    int rc = cw_opt_parse(&retry_cmd, NULL, argc, argv, &a, &first);
    if (rc != CW_OPT_PARSED)
        return rc;
    if (a.all == (first < argc))
        return cw_cli_fail(CW_EXIT_USAGE, "relay retry: give --all or the IDs of rows, not both");
    /* The ids, as a bigint[] literal: digits only, so nothing of argv
     * reaches the SQL text. */
    size_t cap = 3;
    for (int i = first; i < argc; i++) {
        size_t len = strlen(argv[i]);
        if (len == 0 || len > 18 || strspn(argv[i], "0123456789") != len)
            return cw_cli_fail(CW_EXIT_USAGE, "relay retry: '%s' is not the id of a row", argv[i]);
        cap += len + 1;
    }
    char *ids = malloc(cap);
    if (!ids)
        return cw_cli_fail(CW_EXIT_FAILURE, "relay retry: out of memory");
    size_t used = 0;
    ids[used++] = '{';
    for (int i = first; i < argc; i++)
        used += (size_t)sprintf(ids + used, "%s%s", i > first ? "," : "", argv[i]);
    ids[used++] = '}';
    ids[used] = '\0';

    cw_config *cfg;
    PGconn *conn;
    char *label, *password;
    int code = open_db(&a, "relay retry", &cfg, &conn, &label, &password);
    char *sql = NULL;
    if (code == 0 && asprintf(&sql,
                              "UPDATE %s SET failed_at = NULL, error = NULL WHERE failed_at IS "
                              "NOT NULL AND ($1::bigint[] IS NULL OR id = ANY($1::bigint[]))",
                              cfg->relay_table) < 0) {
        sql = NULL;
        code = cw_cli_fail(CW_EXIT_FAILURE, "relay retry: out of memory");
    }
    if (code == 0) {
        const char *values[1] = {a.all ? NULL : ids};
        PGresult *res = PQexecParams(conn, sql, 1, NULL, values, NULL, NULL, 0);
        if (!res || PQresultStatus(res) != PGRES_COMMAND_OK) {
            code = query_failed(conn, password, "relay retry", res, cfg->relay_table);
        } else {
            long n = atol(PQcmdTuples(res));
            printf("%ld row%s of %s pending again\n", n, n == 1 ? "" : "s", cfg->relay_table);
            if (!a.all && n < argc - first)
                fprintf(stderr,
                        "compworker: relay retry: %ld of the %d ids given are not failed "
                        "rows\n",
                        (long)(argc - first) - n, argc - first);
            PQclear(res);
        }
    }
    free(sql);
    free(ids);
    close_db(cfg, conn, label, password);
    return code;
}

int cw_cmd_relay(int argc, char **argv)
{
    bool init = argc > 1 && strcmp(argv[1], "init") == 0;
    bool check = argc > 1 && strcmp(argv[1], "check") == 0;
    if (argc > 1 && strcmp(argv[1], "failed") == 0)
        return cmd_failed(argc - 1, argv + 1);
    if (argc > 1 && strcmp(argv[1], "retry") == 0)
        return cmd_retry(argc - 1, argv + 1);
    if (init || check) {
        argc--;
        argv++;
    }
    relay_args a = {0};
    int first;
    int rc = cw_opt_parse(&relay_cmd, NULL, argc, argv, &a, &first);
    if (rc != CW_OPT_PARSED)
        return rc;
    if (first < argc)
        return cw_cli_fail(CW_EXIT_USAGE,
                           "relay: unexpected argument '%s' (commands: init, check, failed, retry)",
                           argv[first]);
    if (!a.config)
        return cw_cli_fail(CW_EXIT_USAGE, "relay: -c RELAY.INI is required");
    cw_log_level level;
    if (a.log_level && cw__log_level_parse(a.log_level, &level) != 0)
        return cw_cli_fail(CW_EXIT_USAGE,
                           "relay: --log-level: '%s' is not one of debug, info, warn, error",
                           a.log_level);
    cw_config *cfg = NULL;
    if (cw_config_load_relay(&cfg, a.config))
        return cw_cli_fail(CW_EXIT_USAGE, "%s", cw_error_last());
    if (a.log_level &&
        cw_config_override(cfg, "log", "level", a.log_level, CW_ORIGIN_FLAG, "--log-level")) {
        cw_config_free(cfg);
        return cw_cli_fail(CW_EXIT_USAGE, "relay: %s", cw_error_last());
    }
    int code = init ? cw_relay_init(cfg) : check ? cw_relay_check(cfg) : cw_relay_main(cfg);
    cw_config_free(cfg);
    return code;
}
