/* Saga compensation plans at run time (work in progress, issue 15).
 *
 * A pool with [pool] saga_plans = true handles the plan messages
 * (saga/plan.h says what one holds) with a built-in handler: it checks the
 * plan whole, records the saga and its steps in the store's database and
 * sends the steps of the first stage, all in the transaction that records
 * the plan done (the steps are follow-ups: published only once that
 * commits). Each step is an ordinary task of its type, with a message ID
 * derived from the plan's and its place, and headers cw-saga-plan (the
 * plan ID), cw-saga-step ("STAGE.STEP", from 0) and cw-saga-slip (the plan
 * itself: a pool whose store has not seen the saga can carry it on).
 *
 * When a step's handler returns CW_OK, cw_saga_step_done() marks the step
 * done in the same transaction as its done record and, when it was the
 * last of its stage, sends the next stage's steps (or marks the saga
 * done) there too, under the saga row's lock: a stage's steps that end at
 * once on several workers start the next stage once. */
#ifndef CW_SAGA_SAGA_H
#define CW_SAGA_SAGA_H

#include <stdbool.h>

#include "compworker/compworker.h"
#include "framework/registry.h"

#define CW_SAGA_HEADER_PLAN "cw-saga-plan"
#define CW_SAGA_HEADER_STEP "cw-saga-step"
#define CW_SAGA_HEADER_SLIP "cw-saga-slip"
#define CW_SAGA_SLIP_MAX 65536 /* bytes of a plan: it travels in a header of each step */

typedef struct cw_saga_config {
    const cw_registry *reg;        /* the pool's handlers: the step types it knows */
    const char *const *step_types; /* NULL-terminated types other pools handle; may be NULL */
    const char *exchange;          /* where the steps are published */
} cw_saga_config;

/* Registers the handler of cw.saga.plan on `reg` (concurrent). `cfg` is
 * borrowed for the registry's life. */
int cw_saga_register(cw_registry *reg, const cw_saga_config *cfg);

/* Whether the task is a step of a plan (it has the cw-saga-plan header). */
bool cw_saga_is_step(cw_task *t);

/* After a step's handler returned CW_OK: its part of the saga, in its
 * store transaction (begun here when the handler did not). CW_OK, or
 * CW_RETRY with the task's reason set (nothing of it committed). */
cw_outcome cw_saga_step_done(cw_task *t, const char *exchange);

#endif
