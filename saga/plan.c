/* Saga compensation plans: reading and validating one (saga/plan.h). */
#include <json-c/json.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "compworker/client.h" /* CW_MESSAGE_ID_MAX */
#include "compworker/status.h"
#include "framework/parse.h"
#include "framework/registry.h"
#include "framework/task.h"
#include "saga/plan.h"

/* The plan's own keys. */
static bool known_key(const char *k)
{
    return strcmp(k, "steps") == 0 || strcmp(k, "deadline") == 0;
}

static const char *kind(json_object *o)
{
    return o ? json_type_to_name(json_object_get_type(o)) : "null";
}

static int refuse(char *why, size_t cap, const char *fmt, const char *a, const char *b)
{
    snprintf(why, cap, fmt, a ? a : "", b ? b : "");
    return CW_STATUS_INVALID_ARG;
}

/* One step object into *st; `where` names it ("step 2", "step 2.1"). */
static int read_step(json_object *o, const char *where, cw_plan_type_known known, void *ud,
                     cw_plan_step *st, char *why, size_t cap)
{
    if (!json_object_is_type(o, json_type_object))
        return refuse(why, cap, "%s: is a JSON %s, not a step object {\"type\":...,\"body\":{...}}",
                      where, kind(o));
    json_object *type = NULL, *body = NULL;
    json_object_object_foreach(o, key, val)
    {
        if (strcmp(key, "type") == 0)
            type = val;
        else if (strcmp(key, "body") == 0)
            body = val;
        else {
            char k[80];
            snprintf(k, sizeof k, "%.64s", key);
            return refuse(why, cap, "%s: unknown key '%s' (a step has \"type\" and \"body\")",
                          where, k);
        }
    }
    if (!type || !json_object_is_type(type, json_type_string))
        return refuse(why, cap, "%s: \"type\" is missing or not a string%s", where, NULL);
    const char *t = json_object_get_string(type);
    size_t tlen = (size_t)json_object_get_string_len(type);
    if (!cw__type_valid(t, tlen) || strlen(t) != tlen)
        return refuse(why, cap, "%s: \"type\" is not 1 to 255 of A-Z a-z 0-9 . _ : -%s", where,
                      NULL);
    if (strcmp(t, CW_PLAN_TYPE) == 0)
        return refuse(why, cap, "%s: a step cannot be a plan (%s)", where, CW_PLAN_TYPE);
    if (known && !known(t, ud))
        return refuse(why, cap, "%s: unknown type '%s' (no pool of this saga handles it)", where,
                      t);
    if (!body)
        return refuse(why, cap, "%s: \"body\" is missing%s", where, NULL);
    if (!json_object_is_type(body, json_type_object))
        return refuse(why, cap, "%s: \"body\" is a JSON %s, not an object", where, kind(body));
    size_t blen;
    const char *text = json_object_to_json_string_length(body, JSON_C_TO_STRING_PLAIN, &blen);
    if (!text)
        return CW_STATUS_NOMEM;
    if (blen > CW_PLAN_STEP_BODY_MAX) {
        char n[32];
        snprintf(n, sizeof n, "%zu", blen);
        return refuse(why, cap, "%s: \"body\" is %s bytes, more than 65536", where, n);
    }
    st->type = strdup(t);
    st->body = strndup(text, blen);
    st->body_len = blen;
    return st->type && st->body ? 0 : CW_STATUS_NOMEM;
}

int cw_plan_parse(const char *body, size_t len, cw_plan_type_known known, void *ud, cw_plan *out,
                  char *why, size_t cap)
{
    memset(out, 0, sizeof *out);
    why[0] = '\0';
    json_tokener *tok = json_tokener_new_ex(JSON_TOKENER_DEFAULT_DEPTH);
    if (!tok)
        return CW_STATUS_NOMEM;
    json_object *root = json_tokener_parse_ex(tok, body, (int)len);
    enum json_tokener_error jerr = json_tokener_get_error(tok);
    json_tokener_free(tok);
    int rc = 0;
    json_object *steps = NULL, *deadline = NULL;
    if (!root && jerr != json_tokener_success) {
        rc = refuse(why, cap, "the plan cannot be read: %s (at most %s levels of nesting)",
                    json_tokener_error_desc(jerr), "32");
        goto out;
    }
    if (!json_object_is_type(root, json_type_object)) {
        rc = refuse(why, cap, "the plan is a JSON %s, not an object {\"steps\":[...]}%s",
                    kind(root), NULL);
        goto out;
    }
    json_object_object_foreach(root, key, val)
    {
        if (!known_key(key)) {
            char k[80];
            snprintf(k, sizeof k, "%.64s", key);
            rc = refuse(why, cap, "unknown key '%s' (a plan has \"steps\" and \"deadline\")%s", k,
                        NULL);
            goto out;
        }
        if (strcmp(key, "steps") == 0)
            steps = val;
        else
            deadline = val;
    }
    if (!json_object_is_type(steps, json_type_array)) {
        rc = refuse(why, cap, "\"steps\" is %s, not an array of steps%s",
                    steps ? "not an array" : "missing", NULL);
        goto out;
    }
    size_t n = json_object_array_length(steps);
    if (n == 0 || n > CW_PLAN_STAGES_MAX) {
        char c[32];
        snprintf(c, sizeof c, "%zu", n);
        rc = refuse(why, cap, "\"steps\" has %s stages (1 to 64)%s", c, NULL);
        goto out;
    }
    if (deadline) {
        int64_t ms = 0;
        if (!json_object_is_type(deadline, json_type_string) ||
            !cw__parse_duration_ms(json_object_get_string(deadline), &ms) || ms <= 0 ||
            ms > CW_PLAN_DEADLINE_MAX_MS) {
            rc = refuse(why, cap,
                        "\"deadline\" is not a duration from 1ms to 30d (\"90s\", \"30m\", "
                        "\"2h\")%s%s",
                        NULL, NULL);
            goto out;
        }
        out->deadline_ms = ms;
    }
    out->stages = calloc(n, sizeof *out->stages);
    if (!out->stages) {
        rc = CW_STATUS_NOMEM;
        goto out;
    }
    out->n_stages = n;
    for (size_t k = 0; k < n && rc == 0; k++) {
        json_object *stage = json_object_array_get_idx(steps, k);
        bool group = json_object_is_type(stage, json_type_array);
        size_t m = group ? json_object_array_length(stage) : 1;
        char where[48];
        snprintf(where, sizeof where, "stage %zu", k + 1);
        if (m == 0 || m > CW_PLAN_STAGE_STEPS_MAX) {
            char c[32];
            snprintf(c, sizeof c, "%zu", m);
            rc = refuse(why, cap, "%s: has %s steps (1 to 16)", where, c);
            break;
        }
        if (out->n_steps + m > CW_PLAN_STEPS_MAX) {
            rc = refuse(why, cap, "more than 256 steps in all%s%s", NULL, NULL);
            break;
        }
        cw_plan_stage *st = &out->stages[k];
        st->steps = calloc(m, sizeof *st->steps);
        if (!st->steps) {
            rc = CW_STATUS_NOMEM;
            break;
        }
        st->n_steps = m;
        out->n_steps += m;
        for (size_t j = 0; j < m && rc == 0; j++) {
            json_object *o = group ? json_object_array_get_idx(stage, j) : stage;
            if (group)
                snprintf(where, sizeof where, "step %zu.%zu", k + 1, j + 1);
            else
                snprintf(where, sizeof where, "step %zu", k + 1);
            if (group && json_object_is_type(o, json_type_array))
                rc = refuse(why, cap, "%s: is an array: a stage's steps are objects, not stages",
                            where, NULL);
            else
                rc = read_step(o, where, known, ud, &st->steps[j], why, cap);
        }
    }
out:
    json_object_put(root);
    if (rc) {
        cw_plan_free(out);
        if (rc == CW_STATUS_NOMEM && !why[0])
            snprintf(why, cap, "out of memory reading the plan");
    }
    return rc;
}

void cw_plan_free(cw_plan *p)
{
    for (size_t k = 0; p->stages && k < p->n_stages; k++) {
        for (size_t j = 0; j < p->stages[k].n_steps; j++) {
            free(p->stages[k].steps[j].type);
            free(p->stages[k].steps[j].body);
        }
        free(p->stages[k].steps);
    }
    free(p->stages);
    memset(p, 0, sizeof *p);
}

void cw_plan_step_id(const char *plan_id, size_t stage, size_t step, char out[37])
{
    char name[CW_MESSAGE_ID_MAX + 64];
    int len = snprintf(name, sizeof name, "%s:step:%zu.%zu", plan_id, stage, step);
    cw__uuid5(name, (size_t)len, out);
}
