/* Unit tests for cw__broker_reply() (framework/broker.c): which of the
 * broker's closes is a refusal, not retried, and which a lost connection,
 * connected again -- a broker shutting down closes its connections with
 * CONNECTION_FORCED, and a worker declaring its topology then must
 * reconnect, not exit as if its configuration were refused. */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>

#include <string.h>

#include "compworker/status.h"
#include "framework/broker.h"

static amqp_rpc_reply_t connection_close(uint16_t code, const char *text)
{
    static amqp_connection_close_t m;
    m = (amqp_connection_close_t){.reply_code = code, .reply_text = amqp_cstring_bytes(text)};
    return (amqp_rpc_reply_t){.reply_type = AMQP_RESPONSE_SERVER_EXCEPTION,
                              .reply = {.id = AMQP_CONNECTION_CLOSE_METHOD, .decoded = &m}};
}

static amqp_rpc_reply_t channel_close(uint16_t code, const char *text)
{
    static amqp_channel_close_t m;
    m = (amqp_channel_close_t){.reply_code = code, .reply_text = amqp_cstring_bytes(text)};
    return (amqp_rpc_reply_t){.reply_type = AMQP_RESPONSE_SERVER_EXCEPTION,
                              .reply = {.id = AMQP_CHANNEL_CLOSE_METHOD, .decoded = &m}};
}

static void forced_close_is_a_lost_connection(void **state)
{
    (void)state;
    const char *why = "CONNECTION_FORCED - broker forced connection closure with reason 'shutdown'";
    assert_int_equal(cw__broker_reply(connection_close(AMQP_CONNECTION_FORCED, why), "binding"),
                     CW_STATUS_CONNECTION);
    assert_non_null(strstr(cw_error_last(), "binding: the broker closed the connection"));
    assert_non_null(strstr(cw_error_last(), "'shutdown'"));
}

static void other_closes_are_refusals(void **state)
{
    (void)state;
    assert_int_equal(cw__broker_reply(connection_close(AMQP_NOT_ALLOWED, "NOT_ALLOWED - vhost"),
                                      "login"),
                     CW_STATUS_BROKER_REFUSED);
    assert_int_equal(cw__broker_reply(connection_close(AMQP_ACCESS_REFUSED, "ACCESS_REFUSED"),
                                      "login"),
                     CW_STATUS_BROKER_REFUSED);
    assert_int_equal(cw__broker_reply(channel_close(AMQP_PRECONDITION_FAILED,
                                                    "PRECONDITION_FAILED - inequivalent arg"),
                                      "declaring queue"),
                     CW_STATUS_BROKER_REFUSED);
    assert_non_null(strstr(cw_error_last(), "the broker closed the channel: PRECONDITION_FAILED"));
}

static void library_errors_are_lost_connections(void **state)
{
    (void)state;
    amqp_rpc_reply_t r = {.reply_type = AMQP_RESPONSE_LIBRARY_EXCEPTION,
                          .library_error = AMQP_STATUS_CONNECTION_CLOSED};
    assert_int_equal(cw__broker_reply(r, "consuming"), CW_STATUS_CONNECTION);
    amqp_rpc_reply_t ok = {.reply_type = AMQP_RESPONSE_NORMAL};
    assert_int_equal(cw__broker_reply(ok, "consuming"), 0);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(forced_close_is_a_lost_connection),
        cmocka_unit_test(other_closes_are_refusals),
        cmocka_unit_test(library_errors_are_lost_connections),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
