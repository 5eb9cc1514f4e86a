/* compworker relay: the transactional outbox relay (framework/outbox.h
 * says what the table holds).
 *
 * One process, one PostgreSQL session and one broker connection. It
 * LISTENs on the table's channel, which the table's trigger NOTIFYs when a
 * transaction that inserted rows commits, and polls every [relay]
 * poll_interval besides (a notification lost with a session, rows
 * inserted while the relay was away). Each round, in one transaction of
 * its own: takes up to [relay] batch pending rows with FOR UPDATE SKIP
 * LOCKED (several relays on one table share the rows; a saga's rows go in
 * id order, see CW_OB_CLAIM), publishes each as a task of the message
 * contract to [broker] exchange (mandatory, persistent), waits for the
 * publisher confirms, then marks the rows sent and commits. A kill, a
 * broker or database outage at any point leaves a row either unsent (it
 * is published again, with the same message ID) or sent after its confirm:
 * never marked sent before the broker has it.
 *
 * A row that cannot be published (no message ID, a body that is not a JSON
 * object, an unroutable routing key...) is marked failed with the reason
 * in the same commit and alerted through the [alert] channels; it is not
 * tried again until an operator clears its failed_at (README), and holds
 * up nothing behind it. Sent rows are removed after [relay] retention in
 * small chunks. */
#ifndef CW_WORKERS_RELAY_H
#define CW_WORKERS_RELAY_H

#include "framework/config.h"

/* Runs the relay until SIGTERM or SIGINT. Returns an exit code of cli.h:
 * CW_EXIT_OK after a signal, CW_EXIT_USAGE when the configuration cannot
 * work (the database refuses the session, no outbox table, the metrics
 * address cannot be listened on); outages are waited out. */
int cw_relay_main(const cw_config *cfg);

/* `compworker relay init`: creates the outbox table of `cfg` with its
 * indexes and trigger, if missing (under an advisory lock: several hosts
 * may run it at once). Prints what it did. An exit code of cli.h. */
int cw_relay_init(const cw_config *cfg);

/* `compworker relay check`: prints the effective configuration and
 * whether the database answers and has the table. An exit code of cli.h. */
int cw_relay_check(const cw_config *cfg);

#endif
