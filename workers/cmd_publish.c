/* compworker publish: one task, confirmed. */
#include <errno.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "compworker/client.h"
#include "framework/broker.h"
#include "framework/config.h"
#include "framework/json_text.h"
#include "framework/registry.h"
#include "workers/cli.h"
#include "workers/opt.h"

/* The longest saga ID (a correlation_id property: an AMQP short string). */
#define CW_SAGA_ID_MAX 255

/* 1 to `max` printable ASCII characters. */
static bool printable(const char *s, size_t max)
{
    size_t n = strlen(s);
    if (n == 0 || n > max)
        return false;
    for (size_t i = 0; i < n; i++) {
        if ((unsigned char)s[i] < 0x21 || (unsigned char)s[i] > 0x7e)
            return false;
    }
    return true;
}

/* Reads a whole file of at most `max` bytes. */
static char *slurp(const char *path, size_t max, size_t *len)
{
    FILE *f = strcmp(path, "-") == 0 ? stdin : fopen(path, "rb");
    if (!f)
        return NULL;
    size_t cap = 4096, n = 0;
    char *buf = malloc(cap);
    while (buf) {
        if (n == cap) {
            if (cap >= max) {
                free(buf);
                buf = NULL;
                errno = EFBIG;
                break;
            }
            char *nb = realloc(buf, cap * 2);
            if (!nb) {
                free(buf);
                buf = NULL;
                break;
            }
            buf = nb;
            cap *= 2;
        }
        size_t got = fread(buf + n, 1, cap - n, f);
        n += got;
        if (got == 0)
            break;
    }
    if (f != stdin)
        fclose(f);
    if (buf)
        *len = n;
    return buf;
}

typedef struct publish_args {
    const char *config, *type, *saga, *id, *data, *file;
} publish_args;

static const cw_opt_spec publish_specs[] = {
    {CW_OPT_VALUE, "config", 'c', "POOL.INI",
     "the pool's configuration file: its broker and exchange",
     .offset = offsetof(publish_args, config)},
    {CW_OPT_VALUE, "type", 't', "TYPE", "the task type, e.g. payment.refund",
     .offset = offsetof(publish_args, type), .flags = CW_OPT_REQUIRED},
    {CW_OPT_VALUE, "saga-id", 's', "ID", "the saga (correlation) ID",
     .offset = offsetof(publish_args, saga)},
    {CW_OPT_VALUE, "message-id", 'm', "ID", "the message ID (by default a new UUIDv7)",
     .offset = offsetof(publish_args, id)},
    {CW_OPT_VALUE, "data", 'd', "JSON", "the body, a JSON object",
     .offset = offsetof(publish_args, data)},
    {CW_OPT_VALUE, "data-file", 'f', "FILE", "the body from a file ('-': stdin)",
     .offset = offsetof(publish_args, file)},
    CW_OPT_HELP_SPEC,
    CW_OPT_END_SPEC,
};

static const cw_opt_cmd publish_cmd = {
    .name = "publish",
    .args = "(--data JSON | --data-file FILE)",
    .summary = "Publishes one task to the pool's exchange and prints its message ID once the "
               "broker confirmed it.",
    .specs = publish_specs,
};

int cw_cmd_publish(int argc, char **argv)
{
    publish_args a = {0};
    int first;
    int rc = cw_opt_parse(&publish_cmd, NULL, argc, argv, &a, &first);
    if (rc != CW_OPT_PARSED)
        return rc;
    if (first < argc)
        return cw_cli_fail(CW_EXIT_USAGE, "publish: unexpected argument '%s'", argv[first]);
    if (!a.type)
        return cw_cli_fail(CW_EXIT_USAGE, "publish: --type is required");
    /* Everything the client would refuse is refused before connecting, by
     * the flag that is wrong. */
    if (!cw__type_valid(a.type, strlen(a.type)))
        return cw_cli_fail(CW_EXIT_USAGE,
                           "publish: --type is not 1 to 255 characters of A-Z a-z 0-9 . _ : -");
    if (a.id && !cw_cli_is_message_id(a.id))
        return cw_cli_fail(CW_EXIT_USAGE,
                           "publish: --message-id is not 1 to %d printable ASCII characters",
                           CW_MESSAGE_ID_MAX);
    if (a.saga && !printable(a.saga, CW_SAGA_ID_MAX))
        return cw_cli_fail(CW_EXIT_USAGE,
                           "publish: --saga-id is not 1 to %d printable ASCII characters",
                           CW_SAGA_ID_MAX);
    if (!a.data == !a.file)
        return cw_cli_fail(CW_EXIT_USAGE, "publish: give exactly one of --data and --data-file");

    cw_config *cfg = NULL;
    if (cw_config_load(&cfg, a.config))
        return cw_cli_fail(CW_EXIT_USAGE, "%s", cw_error_last());

    int code = CW_EXIT_FAILURE;
    char *body = NULL;
    size_t len = 0;
    cw_client *cl = NULL;
    if (a.file) {
        body = slurp(a.file, cfg->max_body_size, &len);
        if (!body) {
            code = cw_cli_fail(CW_EXIT_USAGE, "publish: --data-file %s: %s", a.file,
                               errno == EFBIG ? "larger than [pool] max_body_size"
                                              : strerror(errno));
            goto out;
        }
        a.data = body;
    } else {
        len = strlen(a.data);
    }
    if (len == 0) {
        code = cw_cli_fail(CW_EXIT_USAGE, "publish: the body is empty (a JSON object is needed)");
        goto out;
    }
    char why[256];
    if (cw__json_object_check(a.data, len, why, sizeof why)) {
        code = cw_cli_fail(CW_EXIT_USAGE, "publish: %s%s: %s", a.file ? "--data-file " : "--data",
                           a.file ? a.file : "", why);
        goto out;
    }
    if (cw__client_new_tls(&cl, cfg->url, &cfg->tls, cfg->exchange)) {
        code = cw_cli_fail(CW_EXIT_FAILURE, "%s", cw_error_last());
        goto out;
    }
    cw_publish_opts o = CW_PUBLISH_OPTS_INIT;
    o.type = a.type;
    o.saga_id = a.saga;
    o.message_id = a.id;
    o.body = a.data;
    o.body_len = len;
    char out_id[CW_MESSAGE_ID_MAX + 1];
    rc = cw_client_publish(cl, &o, out_id, sizeof out_id);
    if (rc) {
        code = cw_cli_fail(rc == CW_STATUS_INVALID_ARG ? CW_EXIT_USAGE : CW_EXIT_FAILURE, "%s",
                           cw_error_last());
        goto out;
    }
    printf("%s\n", out_id);
    code = CW_EXIT_OK;
out:
    cw_client_free(cl);
    free(body);
    cw_config_free(cfg);
    return code;
}
