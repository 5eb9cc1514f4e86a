/* compworker status MESSAGE_ID: what the store knows of a task, and whether
 * it is in the pool's dead-letter queue now. */
#include <inttypes.h>
#include <stddef.h>
#include <stdio.h>
#include <string.h>

#include <json.h>

#include "dlq/dlq.h"
#include "framework/broker.h"
#include "framework/clock.h"
#include "framework/config.h"
#include "framework/error.h"
#include "workers/cli.h"
#include "workers/dlq_cli.h"
#include "workers/opt.h"

typedef struct status_args {
    const char *config;
    bool json, no_dlq;
} status_args;

static const cw_opt_spec status_specs[] = {
    {CW_OPT_VALUE, "config", 'c', "POOL.INI", "the pool's configuration file",
     .offset = offsetof(status_args, config), .flags = CW_OPT_REQUIRED},
    {CW_OPT_BOOL, "json", 'j', NULL, "one JSON object instead of text",
     .offset = offsetof(status_args, json)},
    {CW_OPT_BOOL, "no-dlq", 0, NULL, "do not look for it in the dead-letter queue",
     .offset = offsetof(status_args, no_dlq)},
    CW_OPT_HELP_SPEC,
    CW_OPT_END_SPEC,
};

static const cw_opt_cmd status_cmd = {
    .name = "status",
    .args = "MESSAGE_ID",
    .summary = "Shows what the pool's store knows of a task -- state, attempts, deliveries, saga, "
               "type, first and last seen, last error and every attempt with its time, worker, "
               "outcome and reason -- and whether it is in the dead-letter queue now (read "
               "without consuming).",
    .about = "Exit code 0 when the store has a record of it or it is in the DLQ, 1 when "
             "neither, 2 for bad flags or configuration.",
    .specs = status_specs,
};

typedef struct dlq_look {
    const char *id;
    uint64_t copies;
    uint64_t first_position;
    cw_dlq_msg first; /* summary of the first copy (no envelope) */
} dlq_look;

static int look(cw_dlq_msg *m, void *ud)
{
    dlq_look *l = ud;
    if (strcmp(m->message_id, l->id) != 0)
        return 0;
    if (l->copies++ == 0) {
        l->first = *m;
        memset(&l->first.env, 0, sizeof l->first.env);
        l->first.has_env = false;
        l->first_position = m->position;
    }
    return 0;
}

static const char *state_text(cw_task_state s)
{
    switch (s) {
    case CW_STATE_IN_PROGRESS: return "in progress (a worker holds it)";
    case CW_STATE_DONE: return "done (applied)";
    case CW_STATE_DEAD: return "dead (dead-lettered)";
    case CW_STATE_RETRYING: return "retrying (waiting in the delay topology)";
    case CW_STATE_REPLAYED: return "replayed (republished from the DLQ, waiting for a worker)";
    default: return cw__state_name(s);
    }
}

int cw_cmd_status(int argc, char **argv)
{
    status_args a = {0};
    int first;
    int rc = cw_opt_parse(&status_cmd, NULL, argc, argv, &a, &first);
    if (rc != CW_OPT_PARSED)
        return rc;
    if (first != argc - 1)
        return cw_cli_fail(CW_EXIT_USAGE, "status: give one MESSAGE_ID (try 'compworker status "
                                          "--help')");
    const char *id = argv[first];
    if (!cw_cli_is_message_id(id))
        return cw_cli_fail(CW_EXIT_USAGE,
                           "status: MESSAGE_ID is not 1 to %d printable ASCII characters",
                           CW_MESSAGE_ID_MAX);
    if (!a.config)
        return cw_cli_fail(CW_EXIT_USAGE, "status: -c POOL.INI is required");
    cw_config *cfg = NULL;
    if (cw_config_load(&cfg, a.config))
        return cw_cli_fail(CW_EXIT_USAGE, "%s", cw_error_last());
    cw_cli_catch_signals();

    int code = CW_EXIT_FAILURE;
    cw_store *store = NULL;
    cw_task_record rec;
    bool have_rec = false;
    char store_err[1024] = "";
    rc = cw_cli_store_open(cfg, true, &store);
    if (rc == CW_STATUS_CONFIG) {
        code = cw_cli_fail(CW_EXIT_USAGE, "status: %s", cw_error_last());
        goto out;
    }
    if (rc == 0) {
        rc = cw_store_get(store, id, &rec);
        if (rc == 0)
            have_rec = true;
        else if (rc != CW_STATUS_NOT_FOUND)
            snprintf(store_err, sizeof store_err, "%s", cw_error_last());
    } else {
        snprintf(store_err, sizeof store_err, "%s", cw_error_last());
    }

    dlq_look l = {.id = id};
    char dlq_err[1024] = "";
    bool dlq_checked = false;
    if (!a.no_dlq) {
        cw_dlq_ctl ctl = cw_cli_ctl(a.json);
        uint64_t total;
        rc = cw_dlq_browse(cfg, NULL, "compworker status", &ctl, look, &l, &total, NULL);
        cw_cli_progress_done();
        if (rc == 0)
            dlq_checked = true;
        else
            snprintf(dlq_err, sizeof dlq_err, "%s", cw_error_last());
    }

    if (a.json) {
        json_object *j = have_rec ? cw_cli_record_json(store, &rec) : json_object_new_object();
        json_object_object_add(j, "message_id", json_object_new_string(id));
        if (!have_rec)
            json_object_object_add(j, "state", json_object_new_string("unknown"));
        if (store_err[0])
            json_object_object_add(j, "store_error", json_object_new_string(store_err));
        json_object_object_add(j, "dlq", json_object_new_string(cfg->dlq));
        json_object_object_add(j, "in_dlq",
                               dlq_checked ? json_object_new_boolean(l.copies > 0) : NULL);
        json_object_object_add(j, "dlq_copies", json_object_new_int64((int64_t)l.copies));
        if (dlq_err[0])
            json_object_object_add(j, "dlq_error", json_object_new_string(dlq_err));
        cw_cli_json_line(j);
    } else {
        int64_t now = cw__now_ms();
        char when[64];
        printf("Message %s (pool %s)\n\n", id, cfg->name);
        if (have_rec) {
            printf("  %-12s %s\n", "state", state_text(rec.state));
            if (rec.state == CW_STATE_IN_PROGRESS) {
                cw_cli_when(rec.lease_until_ms, now, when, sizeof when);
                printf("  %-12s %s, lease until %s\n", "held by", rec.owner, when);
            }
            printf("  %-12s %s\n", "type", rec.type[0] ? rec.type : "-");
            printf("  %-12s %s\n", "saga", rec.saga_id[0] ? rec.saga_id : "-");
            printf("  %-12s %u\n", "attempts", rec.attempts);
            printf("  %-12s %u\n", "deliveries", rec.deliveries);
            cw_cli_when(rec.first_seen_ms, now, when, sizeof when);
            printf("  %-12s %s\n", "first seen", when);
            cw_cli_when(rec.last_seen_ms, now, when, sizeof when);
            printf("  %-12s %s\n", "last seen", when);
            printf("  %-12s ", "last error");
            if (rec.last_error[0]) {
                printf("%s%s", rec.error_class, rec.error_class[0] ? ": " : "");
                cw_cli_put_safe(stdout, rec.last_error);
            } else {
                printf("-");
            }
            putchar('\n');
        } else if (store_err[0]) {
            printf("  %-12s unknown: %s\n", "state", store_err);
        } else {
            printf("  %-12s unknown: the store of pool %s (%s) has no record of it\n", "state",
                   cfg->name, cfg->store_path);
        }
        printf("  %-12s ", "in the DLQ");
        if (a.no_dlq)
            printf("not looked at (--no-dlq)\n");
        else if (!dlq_checked)
            printf("unknown: %s\n", dlq_err);
        else if (l.copies == 0)
            printf("no (%s)\n", cfg->dlq);
        else {
            cw_cli_when(l.first.failed_at_ms, now, when, sizeof when);
            printf("yes: %s, position %" PRIu64 "%s, dead-lettered %s as %s\n", cfg->dlq,
                   l.first_position, l.copies > 1 ? " (and more copies)" : "", when,
                   l.first.error_class[0] ? l.first.error_class : "?");
        }
        if (have_rec) {
            printf("\nAttempts\n");
            if (cw_cli_print_history(store, id, "  ") == 0)
                printf("  (none settled yet)\n");
        }
    }
    code = have_rec || l.copies ? CW_EXIT_OK : CW_EXIT_FAILURE;
out:
    cw_store_free(store);
    cw_config_free(cfg);
    return code;
}
