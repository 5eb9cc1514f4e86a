/* Saga compensation plans: the message a saga's orchestrator sends to have
 * its compensations run in order (work in progress, issue 15: the plan's
 * contract and its validation; running plans is not wired in yet).
 *
 * A plan is one message of type cw.saga.plan, correlation_id the saga ID,
 * message_id the plan's ID, whose body is
 *
 *   {"steps":[{"type":"shipment.cancel","body":{...}},
 *             [{"type":"inventory.restock","body":{...}},
 *              {"type":"loyalty.revoke","body":{...}}],
 *             {"type":"payment.refund","body":{...}}],
 *    "deadline":"30m"}
 *
 * Each element of "steps" is a stage: one step, or an array of steps that
 * run together. Stage k+1 starts once every step of stage k is done. A step
 * is an object with exactly "type" (a task type) and "body" (a JSON
 * object). "deadline" is optional: a duration as the configuration writes
 * them ("90s", "30m", "2h", "1d"), at most CW_PLAN_DEADLINE_MAX_MS. */
#ifndef CW_SAGA_PLAN_H
#define CW_SAGA_PLAN_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define CW_PLAN_TYPE "cw.saga.plan"
#define CW_PLAN_STAGES_MAX 64       /* stages of a plan */
#define CW_PLAN_STAGE_STEPS_MAX 16  /* steps of one stage */
#define CW_PLAN_STEPS_MAX 256       /* steps of a plan in all */
#define CW_PLAN_STEP_BODY_MAX 65536 /* bytes of one step's body */
#define CW_PLAN_DEADLINE_MAX_MS (INT64_C(30) * 24 * 3600 * 1000)

typedef struct cw_plan_step {
    char *type;
    char *body; /* the step's body as JSON text (json-c's form) */
    size_t body_len;
} cw_plan_step;

typedef struct cw_plan_stage {
    cw_plan_step *steps;
    size_t n_steps;
} cw_plan_stage;

typedef struct cw_plan {
    cw_plan_stage *stages;
    size_t n_stages, n_steps;
    int64_t deadline_ms; /* 0: none */
} cw_plan;

/* Whether a step type is one a pool handles: the plan's validation asks it
 * of every step (NULL: every well-formed type is). */
typedef bool (*cw_plan_type_known)(const char *type, void *ud);

/* Reads and validates a plan's body (`len` bytes, JSON text already checked
 * by the message contract) whole into *out. 0, or CW_STATUS_INVALID_ARG with
 * the reason in `why` ("step 2.1: unknown type 'payment.refnd'", "17 stages,
 * more than 64", "step 3: body is a JSON array, not an object"); nothing is
 * allocated then. CW_STATUS_NOMEM. Free with cw_plan_free(). */
int cw_plan_parse(const char *body, size_t len, cw_plan_type_known known, void *ud, cw_plan *out,
                  char *why, size_t why_len);

void cw_plan_free(cw_plan *p);

/* The message ID of step `step` (from 0) of stage `stage` (from 0) of plan
 * `plan_id`: the UUIDv5 of "plan_id:stage.step" in compworker's namespace,
 * so that a plan delivered twice, or a step run again, never makes a step
 * of another ID. out: 37 bytes. */
void cw_plan_step_id(const char *plan_id, size_t stage, size_t step, char out[37]);

#endif
