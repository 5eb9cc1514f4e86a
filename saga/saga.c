/* Saga compensation plans at run time (saga/saga.h). */
#include <inttypes.h>
#include <json-c/json.h>
#include <libpq-fe.h>
#include <sqlite3.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "framework/clock.h"
#include "framework/error.h"
#include "framework/log.h"
#include "framework/task.h"
#include "saga/plan.h"
#include "saga/saga.h"
#include "saga/saga_db.h"

/* ---- the plan's steps as follow-ups --------------------------------------------- */

/* The headers of a step: a JSON object (new string, free() it). */
static char *step_headers(const char *plan_id, size_t stage, size_t step, const char *slip)
{
    json_object *o = json_object_new_object();
    char pos[48];
    snprintf(pos, sizeof pos, "%zu.%zu", stage, step);
    json_object_object_add(o, CW_SAGA_HEADER_PLAN, json_object_new_string(plan_id));
    json_object_object_add(o, CW_SAGA_HEADER_STEP, json_object_new_string(pos));
    json_object_object_add(o, CW_SAGA_HEADER_SLIP, json_object_new_string(slip));
    const char *text = json_object_to_json_string_ext(o, JSON_C_TO_STRING_PLAIN);
    char *out = text ? strdup(text) : NULL;
    json_object_put(o);
    return out;
}

/* Sends the steps of `stage` as the task's follow-ups. */
static int send_stage(cw_task *t, const char *exchange, const char *plan_id, const cw_plan *p,
                      size_t stage, const char *slip)
{
    const cw_plan_stage *st = &p->stages[stage];
    for (size_t j = 0; j < st->n_steps; j++) {
        char id[37];
        cw_plan_step_id(plan_id, stage, j, id);
        char *headers = step_headers(plan_id, stage, j, slip);
        if (!headers)
            return cw__error(CW_STATUS_NOMEM, "out of memory sending a plan's step");
        int rc = cw__task_send_as(t, exchange, st->steps[j].type, st->steps[j].type,
                                  st->steps[j].body, st->steps[j].body_len, id, headers);
        free(headers);
        if (rc)
            return rc;
    }
    return 0;
}

/* Lists a stage's types, "a, b", into out. */
static void stage_types(const cw_plan_stage *st, char *out, size_t cap)
{
    size_t o = 0;
    out[0] = '\0';
    for (size_t j = 0; j < st->n_steps && o < cap; j++)
        o += (size_t)snprintf(out + o, cap - o, "%s%s", j ? ", " : "", st->steps[j].type);
}

/* ---- recording ---------------------------------------------------------------- */

/* Inserts the saga (at stage `at`) and its steps: the stages before `at`
 * done, stage `at` sent, the rest waiting. */
static int record_saga(cw_saga_db *d, const char *saga, const char *plan_id, const cw_plan *p,
                       size_t at, const char *slip, int64_t now)
{
    char stages[24], stage[24], steps[24], created[24], deadline[24];
    snprintf(stages, sizeof stages, "%zu", p->n_stages);
    snprintf(stage, sizeof stage, "%zu", at);
    snprintf(steps, sizeof steps, "%zu", p->n_steps);
    snprintf(created, sizeof created, "%" PRId64, now);
    snprintf(deadline, sizeof deadline, "%" PRId64, now + p->deadline_ms);
    const char *v[8] = {saga,    plan_id, stages, stage, steps, p->deadline_ms ? deadline : NULL,
                        created, slip};
    int rc = cw_saga_db_run(d, CW_SD_SAGA_INSERT, 8, v, NULL);
    for (size_t k = 0; rc == 0 && k < p->n_stages; k++) {
        for (size_t j = 0; rc == 0 && j < p->stages[k].n_steps; j++) {
            char id[37], sk[24], sj[24];
            cw_plan_step_id(plan_id, k, j, id);
            snprintf(sk, sizeof sk, "%zu", k);
            snprintf(sj, sizeof sj, "%zu", j);
            const char *state = k < at ? "done" : k == at ? "sent" : "waiting";
            const char *sv[7] = {
                saga, sk, sj, id, p->stages[k].steps[j].type, state, k <= at ? created : NULL};
            rc = cw_saga_db_run(d, CW_SD_STEP_INSERT, 7, sv, NULL);
        }
    }
    return rc;
}

static int history(cw_saga_db *d, const char *saga, int64_t now, const char *event,
                   const char *detail)
{
    char at[24];
    snprintf(at, sizeof at, "%" PRId64, now);
    const char *v[4] = {saga, at, event, detail};
    return cw_saga_db_run(d, CW_SD_HISTORY, 4, v, NULL);
}

/* ---- the plan's handler ------------------------------------------------------- */

static bool type_known(const char *type, void *ud)
{
    const cw_saga_config *cfg = ud;
    if (cw_registry_find(cfg->reg, type, strlen(type)))
        return true;
    for (const char *const *t = cfg->step_types; t && *t; t++) {
        if (strcmp(*t, type) == 0)
            return true;
    }
    return false;
}

static cw_outcome invalid(cw_task *t, const char *why)
{
    cw__task_set_failure(t, CW_FAIL, "invalid", "saga plan: %s", why);
    return CW_FAIL;
}

static cw_outcome plan_handler(cw_task *t, void *ud)
{
    const cw_saga_config *cfg = ud;
    const char *saga = cw_task_saga_id(t);
    const char *plan_id = cw_task_message_id(t);
    if (!saga || !saga[0])
        return invalid(t, "a plan needs its saga's ID as its correlation_id");
    size_t len;
    const char *body = cw_task_body(t, &len);
    char why[512];
    if (len > CW_SAGA_SLIP_MAX) {
        snprintf(why, sizeof why,
                 "the plan is %zu bytes, more than %d (it travels with each of its steps)", len,
                 CW_SAGA_SLIP_MAX);
        return invalid(t, why);
    }
    cw_plan p;
    int rc = cw_plan_parse(body, len, type_known, (void *)cfg, &p, why, sizeof why);
    if (rc == CW_STATUS_INVALID_ARG)
        return invalid(t, why);
    if (rc)
        return cw_task_retry(t, "saga plan: %s", why);
    char *slip = strndup(body, len);
    cw_saga_db d;
    cw_outcome out = CW_OK;
    if (!slip) {
        cw_plan_free(&p);
        return cw_task_retry(t, "saga plan: out of memory");
    }
    if (cw_saga_db_of_task(&d, t)) {
        out = cw_task_fail(t, "saga plan: %s", cw_error_last());
        goto done;
    }
    int64_t now = cw__now_ms();
    cw_saga_rows r = {0};
    const char *key[1] = {saga};
    rc = cw_saga_db_run(&d, CW_SD_SAGA_GET, 1, key, &r);
    if (rc == 0 && r.n && strcmp(cw_saga_rows_get(&r, 0, 0), plan_id) != 0) {
        snprintf(why, sizeof why, "saga %s already runs plan %s", saga, cw_saga_rows_get(&r, 0, 0));
        cw_saga_rows_free(&r);
        out = invalid(t, why);
        goto done;
    }
    bool known = rc == 0 && r.n;
    cw_saga_rows_free(&r);
    if (rc == 0 && !known)
        rc = record_saga(&d, saga, plan_id, &p, 0, slip, now);
    if (rc == 0 && !known) {
        char detail[512], types[256];
        stage_types(&p.stages[0], types, sizeof types);
        int o = snprintf(detail, sizeof detail, "plan %s: %zu steps in %zu stages; stage 1: %s",
                         plan_id, p.n_steps, p.n_stages, types);
        if (p.deadline_ms && o > 0 && (size_t)o < sizeof detail)
            snprintf(detail + o, sizeof detail - (size_t)o, "; deadline in %" PRId64 " s",
                     p.deadline_ms / 1000);
        rc = history(&d, saga, now, "started", detail);
    }
    if (rc == 0)
        rc = send_stage(t, cfg->exchange, plan_id, &p, 0, slip);
    if (rc)
        out = cw_task_retry(t, "saga plan: %s", cw_error_last());
done:
    free(slip);
    cw_plan_free(&p);
    return out;
}

int cw_saga_register(cw_registry *reg, const cw_saga_config *cfg)
{
    cw_handler_opts o = CW_HANDLER_OPTS_INIT;
    o.concurrent = true;
    return cw_register_handler_opts(reg, CW_PLAN_TYPE, plan_handler, (void *)cfg, &o);
}

/* ---- a step done ---------------------------------------------------------------- */

bool cw_saga_is_step(cw_task *t)
{
    return cw_task_header(t, CW_SAGA_HEADER_PLAN) != NULL;
}

static cw_outcome step_failed(cw_task *t, const char *what)
{
    cw__task_set_failure(t, CW_RETRY, "transient", "saga bookkeeping: %s: %s", what,
                         cw_error_last());
    return CW_RETRY;
}

cw_outcome cw_saga_step_done(cw_task *t, const char *exchange)
{
    const char *plan_id = cw_task_header(t, CW_SAGA_HEADER_PLAN);
    const char *pos = cw_task_header(t, CW_SAGA_HEADER_STEP);
    const char *slip = cw_task_header(t, CW_SAGA_HEADER_SLIP);
    const char *saga = cw_task_saga_id(t);
    size_t k, j;
    char extra;
    if (!plan_id || !pos || !slip || !saga || !saga[0] ||
        sscanf(pos, "%zu.%zu%c", &k, &j, &extra) != 2) {
        cw_log_warn(NULL,
                    "task %s has a cw-saga-plan header but not the rest of a plan's step "
                    "(cw-saga-step, cw-saga-slip, its saga ID): done as a task of its own",
                    cw_task_message_id(t));
        return CW_OK;
    }
    cw_plan p;
    char why[512];
    if (cw_plan_parse(slip, strlen(slip), NULL, NULL, &p, why, sizeof why) || k >= p.n_stages ||
        j >= p.stages[k].n_steps) {
        if (!p.stages)
            cw_log_warn(NULL, "task %s: its plan (cw-saga-slip) cannot be read: %s",
                        cw_task_message_id(t), why);
        cw_plan_free(&p);
        return CW_OK;
    }
    cw_saga_db d;
    cw_outcome out = CW_OK;
    int64_t now = cw__now_ms();
    char sk[24], detail[512], types[256];
    snprintf(sk, sizeof sk, "%zu", k);
    if (cw_saga_db_of_task(&d, t)) {
        out = step_failed(t, "no store transaction");
        goto done;
    }
    cw_saga_rows r = {0};
    const char *key[1] = {saga};
    if (cw_saga_db_run(&d, CW_SD_SAGA_GET, 1, key, &r)) {
        out = step_failed(t, "reading the saga");
        goto done;
    }
    if (!r.n) {
        /* A store that has not seen the plan: the saga from this step on. */
        cw_saga_rows_free(&r);
        snprintf(detail, sizeof detail, "plan %s, first seen here at step %zu.%zu", plan_id, k + 1,
                 j + 1);
        if (record_saga(&d, saga, plan_id, &p, k, slip, now) ||
            history(&d, saga, now, "joined", detail) ||
            cw_saga_db_run(&d, CW_SD_SAGA_GET, 1, key, &r)) {
            cw_saga_rows_free(&r);
            out = step_failed(t, "recording the saga");
            goto done;
        }
    }
    bool ours = r.n && strcmp(cw_saga_rows_get(&r, 0, 0), plan_id) == 0;
    bool running = r.n && strcmp(cw_saga_rows_get(&r, 0, 1), "running") == 0;
    size_t at = r.n ? (size_t)strtoull(cw_saga_rows_get(&r, 0, 2), NULL, 10) : 0;
    cw_saga_rows_free(&r);
    if (!ours) {
        cw_log_warn(NULL, "step %s of plan %s: saga %s runs another plan; the step is done alone",
                    cw_task_message_id(t), plan_id, saga);
        goto done;
    }
    char when[24];
    snprintf(when, sizeof when, "%" PRId64, now);
    const char *sv[2] = {cw_task_message_id(t), when};
    snprintf(detail, sizeof detail, "step %zu.%zu %s (%s)", k + 1, j + 1, p.stages[k].steps[j].type,
             cw_task_message_id(t));
    if (cw_saga_db_run(&d, CW_SD_STEP_DONE, 2, sv, NULL) ||
        history(&d, saga, now, "step done", detail)) {
        out = step_failed(t, "marking the step done");
        goto done;
    }
    const char *lv[2] = {saga, sk};
    if (cw_saga_db_run(&d, CW_SD_STAGE_LEFT, 2, lv, &r)) {
        out = step_failed(t, "counting the stage's steps");
        goto done;
    }
    long left = r.n ? atol(cw_saga_rows_get(&r, 0, 0)) : 1;
    cw_saga_rows_free(&r);
    if (left > 0 || !running || at != k)
        goto done;
    if (k + 1 == p.n_stages) {
        const char *dv[2] = {saga, when};
        snprintf(detail, sizeof detail, "all %zu steps done", p.n_steps);
        if (cw_saga_db_run(&d, CW_SD_SAGA_DONE, 2, dv, NULL) ||
            history(&d, saga, now, "done", detail))
            out = step_failed(t, "marking the saga done");
        goto done;
    }
    char next[24];
    snprintf(next, sizeof next, "%zu", k + 1);
    const char *nv[3] = {saga, next, when};
    stage_types(&p.stages[k + 1], types, sizeof types);
    snprintf(detail, sizeof detail, "stage %zu of %zu: %s", k + 2, p.n_stages, types);
    if (cw_saga_db_run(&d, CW_SD_SAGA_STAGE, 3, nv, NULL) ||
        cw_saga_db_run(&d, CW_SD_STEPS_SENT, 3, nv, NULL) ||
        history(&d, saga, now, "stage started", detail) ||
        send_stage(t, exchange, plan_id, &p, k + 1, slip))
        out = step_failed(t, "starting the next stage");
done:
    cw_plan_free(&p);
    return out;
}
