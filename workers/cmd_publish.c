/* compworker publish: one task, confirmed. */
#include <errno.h>
#include <getopt.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "compworker/client.h"
#include "framework/broker.h"
#include "framework/config.h"
#include "framework/json_text.h"
#include "framework/registry.h"
#include "workers/cli.h"

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

int cw_cmd_publish(int argc, char **argv)
{
    const char *config = NULL, *type = NULL, *saga = NULL, *id = NULL, *data = NULL,
               *file = NULL;
    static const struct option opts[] = {{"config", required_argument, NULL, 'c'},
                                         {"type", required_argument, NULL, 't'},
                                         {"saga-id", required_argument, NULL, 's'},
                                         {"message-id", required_argument, NULL, 'm'},
                                         {"data", required_argument, NULL, 'd'},
                                         {"data-file", required_argument, NULL, 'f'},
                                         {"help", no_argument, NULL, 'h'},
                                         {NULL, 0, NULL, 0}};
    int c;
    optind = 1;
    opterr = 0;
    while ((c = getopt_long(argc, argv, ":c:t:s:m:d:f:h", opts, NULL)) != -1) {
        switch (c) {
        case 'c': config = optarg; break;
        case 't': type = optarg; break;
        case 's': saga = optarg; break;
        case 'm': id = optarg; break;
        case 'd': data = optarg; break;
        case 'f': file = optarg; break;
        case 'h':
            puts("usage: compworker publish -c POOL.INI --type T [--saga-id S] "
                 "[--message-id ID] (--data JSON | --data-file F|-)");
            return CW_EXIT_OK;
        default:
            return cw_cli_bad_option("publish", c, argv);
        }
    }
    if (optind < argc)
        return cw_cli_fail(CW_EXIT_USAGE, "publish: unexpected argument '%s'", argv[optind]);
    if (!type)
        return cw_cli_fail(CW_EXIT_USAGE, "publish: --type is required");
    /* Everything the client would refuse is refused before connecting, by
     * the flag that is wrong. */
    if (!cw__type_valid(type, strlen(type)))
        return cw_cli_fail(CW_EXIT_USAGE,
                           "publish: --type is not 1 to 255 characters of A-Z a-z 0-9 . _ : -");
    if (id && !cw_cli_is_message_id(id))
        return cw_cli_fail(CW_EXIT_USAGE,
                           "publish: --message-id is not 1 to %d printable ASCII characters",
                           CW_MESSAGE_ID_MAX);
    if (saga && !printable(saga, CW_SAGA_ID_MAX))
        return cw_cli_fail(CW_EXIT_USAGE,
                           "publish: --saga-id is not 1 to %d printable ASCII characters",
                           CW_SAGA_ID_MAX);
    if (!data == !file)
        return cw_cli_fail(CW_EXIT_USAGE, "publish: give exactly one of --data and --data-file");

    cw_config *cfg = NULL;
    if (cw_config_load(&cfg, config))
        return cw_cli_fail(CW_EXIT_USAGE, "%s", cw_error_last());

    int code = CW_EXIT_FAILURE;
    char *body = NULL;
    size_t len = 0;
    cw_client *cl = NULL;
    if (file) {
        body = slurp(file, cfg->max_body_size, &len);
        if (!body) {
            code = cw_cli_fail(CW_EXIT_USAGE, "publish: --data-file %s: %s", file,
                               errno == EFBIG ? "larger than [pool] max_body_size"
                                              : strerror(errno));
            goto out;
        }
        data = body;
    } else {
        len = strlen(data);
    }
    if (len == 0) {
        code = cw_cli_fail(CW_EXIT_USAGE, "publish: the body is empty (a JSON object is needed)");
        goto out;
    }
    char why[256];
    if (cw__json_object_check(data, len, why, sizeof why)) {
        code = cw_cli_fail(CW_EXIT_USAGE, "publish: %s%s: %s", file ? "--data-file " : "--data",
                           file ? file : "", why);
        goto out;
    }
    if (cw__client_new_tls(&cl, cfg->url, &cfg->tls, cfg->exchange)) {
        code = cw_cli_fail(CW_EXIT_FAILURE, "%s", cw_error_last());
        goto out;
    }
    cw_publish_opts o = CW_PUBLISH_OPTS_INIT;
    o.type = type;
    o.saga_id = saga;
    o.message_id = id;
    o.body = data;
    o.body_len = len;
    char out_id[CW_MESSAGE_ID_MAX + 1];
    int rc = cw_client_publish(cl, &o, out_id, sizeof out_id);
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
