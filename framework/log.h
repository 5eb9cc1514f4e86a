/* Internal: one line per event to stderr, logfmt or JSON lines. */
#ifndef CW_FRAMEWORK_LOG_H
#define CW_FRAMEWORK_LOG_H

#include "compworker/export.h"
/* Log lines never carry a credential: a URL goes through cw__url_mask(). */
#include "framework/url.h"

typedef enum cw_log_level {
    CW_LOG_DEBUG = 0,
    CW_LOG_INFO = 1,
    CW_LOG_WARN = 2,
    CW_LOG_ERROR = 3
} cw_log_level;

typedef enum cw_log_format {
    CW_LOG_LOGFMT = 0,
    CW_LOG_JSON = 1
} cw_log_format;

/* Parses "debug|info|warn|error". */
int cw__log_level_parse(const char *s, cw_log_level *out);
void cw__log_set_level(cw_log_level level);
void cw__log_set_worker(const char *worker_id);
void cw__log_set_format(cw_log_format format);

/* The process's part in a pool ("supervisor", "monitor"), written as
 * role=... on every line; NULL (the default, and a worker's) writes none. */
void cw__log_set_role(const char *role);

/* Task fields carried on a line; any may be NULL. */
typedef struct cw_log_task {
    const char *message_id;
    const char *saga_id;
    const char *type;
} cw_log_task;

/* Writes `ts=... level=... role=... worker=... msg="<formatted>"
 * message_id=... saga_id=... type=...` (absent fields left out). `fmt` must
 * be a literal: message content goes in arguments, never in `fmt`. Values are
 * quoted and escaped; control bytes are written as \xNN. In the JSON format
 * the same fields make one object per line, {"ts":...,"level":...,"msg":...},
 * every string valid UTF-8 (an invalid byte becomes U+FFFD). One write(2)
 * per line, so lines of the processes of a pool never interleave. */
void cw__log(cw_log_level level, const cw_log_task *task, const char *fmt, ...) CW_PRINTF(3, 4);

#define cw_log_debug(task, ...) cw__log(CW_LOG_DEBUG, task, __VA_ARGS__)
#define cw_log_info(task, ...) cw__log(CW_LOG_INFO, task, __VA_ARGS__)
#define cw_log_warn(task, ...) cw__log(CW_LOG_WARN, task, __VA_ARGS__)
#define cw_log_error(task, ...) cw__log(CW_LOG_ERROR, task, __VA_ARGS__)

#endif
