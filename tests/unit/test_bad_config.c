/* Bad configurations and bad command lines, given to the real compworker
 * executable: each must make it exit 2 (CW_EXIT_USAGE) with exactly one
 * line on stderr ("compworker: ...") that names what is wrong -- the file,
 * line and key, or the flag -- and nothing on stdout; and no password or
 * token it was given may appear.
 *
 * The configurations are the files of tests/bad-config/, described by
 * tests/bad-config/cases.txt; the command lines are the table below. Every
 * configuration names a broker that refuses connections (127.0.0.1:1), so
 * a command that reaches the network before finding what is wrong says
 * "cannot connect" instead, and fails the test. */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>

#include <errno.h>
#include <fcntl.h>
#include <ftw.h>
#include <signal.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#define CLI_TIMEOUT_MS 20000
#define CASES_DIR CW_TEST_SOURCE_DIR "/tests/bad-config"
#define GOOD_URL "amqp://guest:guest@127.0.0.1:1/"

/* ---- problems, reported together ----------------------------------------- */

static char problems[65536];
static size_t problems_len;
static unsigned problems_n;

static void problem(const char *fmt, ...) __attribute__((format(printf, 1, 2)));

static void problem(const char *fmt, ...)
{
    va_list ap;
    problems_n++;
    if (problems_len + 2 >= sizeof problems)
        return;
    va_start(ap, fmt);
    int k = vsnprintf(problems + problems_len, sizeof problems - problems_len - 1, fmt, ap);
    va_end(ap);
    if (k < 0)
        return;
    problems_len += (size_t)k;
    if (problems_len > sizeof problems - 2)
        problems_len = sizeof problems - 2;
    problems[problems_len++] = '\n';
    problems[problems_len] = '\0';
}

static void no_problems(unsigned checked)
{
    if (problems_n) {
        fprintf(stderr, "%u of %u checks failed:\n%s", problems_n, checked, problems);
        fail_msg("%u problem(s), listed above", problems_n);
    }
}

/* ---- a scratch directory ------------------------------------------------- */

static char dir[256];

static int remove_entry(const char *path, const struct stat *sb, int flag, struct FTW *ftw)
{
    (void)sb;
    (void)flag;
    (void)ftw;
    return remove(path);
}

static void write_file(const char *name, const void *data, size_t len)
{
    char path[512];
    snprintf(path, sizeof path, "%s/%s", dir, name);
    FILE *f = fopen(path, "wb");
    if (!f || fwrite(data, 1, len, f) != len || fclose(f) != 0)
        fail_msg("cannot write %s: %s", path, strerror(errno));
}

static char *read_all(const char *path, size_t *len)
{
    FILE *f = fopen(path, "rb");
    if (!f)
        fail_msg("cannot read %s: %s", path, strerror(errno));
    size_t cap = 4096, n = 0;
    char *buf = malloc(cap);
    for (size_t got; buf && (got = fread(buf + n, 1, cap - n - 1, f)) > 0;) {
        n += got;
        if (n + 1 == cap) {
            char *grown = realloc(buf, cap *= 2);
            if (!grown)
                free(buf);
            buf = grown;
        }
    }
    fclose(f);
    if (!buf)
        fail_msg("out of memory");
    buf[n] = '\0';
    if (len)
        *len = n;
    return buf;
}

/* A directory with the ledger plugin (for `plugins = ledger_plugin.so`), a
 * valid pool file good.ini, and the files of tests/bad-config. */
static int setup(void **state)
{
    (void)state;
    snprintf(dir, sizeof dir, "/tmp/cw-badcfg-XXXXXX");
    if (!mkdtemp(dir))
        fail_msg("mkdtemp: %s", strerror(errno));
    char link[512];
    snprintf(link, sizeof link, "%s/ledger_plugin.so", dir);
    if (symlink(CW_TEST_PLUGIN_DIR "/ledger_plugin.so", link) != 0)
        fail_msg("symlink %s: %s", link, strerror(errno));
    static const char good[] = "[broker]\nurl = " GOOD_URL "\n"
                               "[pool]\nname = good\nplugins = ledger_plugin.so\n"
                               "[store]\npath = store.db\n"
                               "[plugin ledger]\npath = ledger.db\n";
    write_file("good.ini", good, sizeof good - 1);
    write_file("body.json", "{\"ok\":true}", 11);
    char *big = malloc(2u << 20);
    if (!big)
        fail_msg("out of memory");
    memset(big, ' ', 2u << 20);
    big[0] = '{';
    big[(2u << 20) - 1] = '}';
    write_file("big.json", big, 2u << 20); /* over the default max_body_size */
    free(big);
    return 0;
}

static int teardown(void **state)
{
    (void)state;
    if (dir[0] && problems_n == 0)
        nftw(dir, remove_entry, 16, FTW_DEPTH | FTW_PHYS);
    else if (dir[0])
        fprintf(stderr, "kept %s\n", dir);
    return 0;
}

/* ---- running compworker -------------------------------------------------- */

typedef struct result {
    int code; /* exit code, 128 + signal, or -1 when it hung */
    char *out;
    char *err;
} result;

static void result_free(result *r)
{
    free(r->out);
    free(r->err);
}

/* Runs compworker with `args` (NULL-terminated) in the scratch directory,
 * with no CW_* variable of this process's environment but those of `envs`
 * ("NAME=value", NULL-terminated, may be NULL). */
static result run_cli(const char *const *args, const char *const *envs)
{
    char out[512], err[512];
    snprintf(out, sizeof out, "%s/cli.out", dir);
    snprintf(err, sizeof err, "%s/cli.err", dir);
    fflush(NULL);
    pid_t pid = fork();
    if (pid < 0)
        fail_msg("fork: %s", strerror(errno));
    if (pid == 0) {
        int o = open(out, O_WRONLY | O_CREAT | O_TRUNC, 0644);
        int e = open(err, O_WRONLY | O_CREAT | O_TRUNC, 0644);
        int in = open("/dev/null", O_RDONLY);
        if (o < 0 || e < 0 || in < 0 || chdir(dir) != 0)
            _exit(126);
        dup2(in, STDIN_FILENO);
        dup2(o, STDOUT_FILENO);
        dup2(e, STDERR_FILENO);
        extern char **environ;
        for (char **v = environ; *v;) {
            if (strncmp(*v, "CW_", 3) == 0) {
                char name[256];
                snprintf(name, sizeof name, "%.*s", (int)strcspn(*v, "="), *v);
                unsetenv(name);
            } else {
                v++;
            }
        }
        for (size_t i = 0; envs && envs[i]; i++)
            putenv((char *)envs[i]);
        char *argv[32] = {CW_TEST_EXE};
        for (size_t i = 0; args[i] && i < 30; i++)
            argv[i + 1] = (char *)args[i];
        execv(CW_TEST_EXE, argv);
        _exit(127);
    }
    result r = {.code = -1};
    struct timespec tick = {.tv_sec = 0, .tv_nsec = 5 * 1000000L};
    for (int waited = 0; waited < CLI_TIMEOUT_MS; waited += 5) {
        int status;
        pid_t w = waitpid(pid, &status, WNOHANG);
        if (w == pid) {
            r.code = WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
            break;
        }
        nanosleep(&tick, NULL);
    }
    if (r.code == -1) {
        kill(pid, SIGKILL);
        waitpid(pid, NULL, 0);
    }
    r.out = read_all(out, NULL);
    r.err = read_all(err, NULL);
    return r;
}

/* "run -c x" for messages. */
static void describe(const char *const *args, const char *const *envs, char *buf, size_t cap)
{
    size_t used = 0;
    buf[0] = '\0';
    for (size_t i = 0; envs && envs[i] && used < cap; i++)
        used += (size_t)snprintf(buf + used, cap - used, "%s ", envs[i]);
    for (size_t i = 0; args[i] && used < cap; i++)
        used += (size_t)snprintf(buf + used, cap - used, "%s%.60s", i ? " " : "", args[i]);
}

/* The command exits 2 with one line on stderr holding every one of
 * `expects` (n of them) and, if not NULL, never `secret`; nothing on
 * stdout. */
static void expect_refusal(const char *const *args, const char *const *envs,
                           const char *const *expects, size_t n, const char *secret)
{
    char what[600];
    describe(args, envs, what, sizeof what);
    result r = run_cli(args, envs);
    size_t len = strlen(r.err);
    /* (Messages below quote the line without its newline.) */
    char *line = strndup(r.err, strcspn(r.err, "\n"));
    if (!line)
        fail_msg("out of memory");
    const char *nl = strchr(r.err, '\n');
    if (r.code != 2)
        problem("%s: exit code %d, not 2 (stderr: %.300s)", what, r.code, r.err);
    else if (len == 0 || !nl || nl != r.err + len - 1)
        problem("%s: stderr is not exactly one line: '%.400s'", what, r.err);
    else if (strncmp(r.err, "compworker: ", 12) != 0)
        problem("%s: the line does not start with 'compworker: ': %s", what, line);
    else if (r.out[0])
        problem("%s: stdout is not empty: '%.200s'", what, r.out);
    for (size_t i = 0; r.code == 2 && i < n; i++) {
        if (!strstr(r.err, expects[i]))
            problem("%s: the line does not say '%s': %.400s", what, expects[i], line);
    }
    if (secret && (strstr(r.err, secret) || strstr(r.out, secret)))
        problem("%s: the output shows the secret '%s': %.400s", what, secret, line);
    free(line);
    result_free(&r);
}

/* ---- 1. the bad configurations -------------------------------------------- */

typedef struct command {
    const char *name;
    const char *args[8]; /* "@" is the pool file */
} command;

static const command commands[] = {
    {"run", {"run", "-c", "@"}},
    {"config", {"config", "check", "-c", "@"}},
    {"publish", {"publish", "-c", "@", "--type", "it.apply", "--data", "{}"}},
    {"dlq", {"dlq", "list", "-c", "@"}},
    {"status", {"status", "-c", "@", "some-message-id"}},
    {"relay", {"relay", "check", "-c", "@"}}, /* only for the cases that name it */
};

#define MAX_EXPECTS 8

static unsigned check_config(const char *file, const char *const *expects, size_t n,
                             const char *secret, const char *only)
{
    unsigned checked = 0;
    for (size_t c = 0; c < sizeof commands / sizeof *commands; c++) {
        if (only ? !strstr(only, commands[c].name) : strcmp(commands[c].name, "relay") == 0)
            continue;
        const char *args[9] = {0};
        for (size_t i = 0; commands[c].args[i]; i++)
            args[i] = strcmp(commands[c].args[i], "@") == 0 ? file : commands[c].args[i];
        expect_refusal(args, NULL, expects, n, secret);
        checked++;
    }
    return checked;
}

static char *trim(char *s)
{
    while (*s == ' ')
        s++;
    size_t n = strlen(s);
    while (n && (s[n - 1] == ' ' || s[n - 1] == '\n'))
        s[--n] = '\0';
    return s;
}

static void test_bad_configs(void **state)
{
    (void)state;
    /* The good file is good: what the bad ones get is theirs. */
    const char *check_good[] = {"config", "check", "-c", "good.ini", NULL};
    result g = run_cli(check_good, NULL);
    if (g.code != 0)
        fail_msg("config check of good.ini exited %d: %s", g.code, g.err);
    result_free(&g);

    char *manifest = read_all(CASES_DIR "/cases.txt", NULL);
    unsigned files = 0, checked = 0;
    char *save = NULL;
    for (char *line = strtok_r(manifest, "\n", &save); line; line = strtok_r(NULL, "\n", &save)) {
        if (line[0] == '#' || !line[0])
            continue;
        char *fields[MAX_EXPECTS + 4];
        size_t nf = 0;
        for (char *f = line, *semi; f && nf < sizeof fields / sizeof *fields; f = semi) {
            semi = strstr(f, " ; ");
            if (semi) {
                *semi = '\0';
                semi += 3;
            }
            fields[nf++] = trim(f);
        }
        const char *file = fields[0], *secret = NULL, *only = NULL;
        const char *expects[MAX_EXPECTS];
        char at_line[300];
        size_t n = 0;
        for (size_t i = 1; i < nf; i++) {
            if (strncmp(fields[i], "secret=", 7) == 0) {
                secret = fields[i] + 7;
            } else if (strncmp(fields[i], "commands=", 9) == 0) {
                only = fields[i] + 9;
            } else if (fields[i][0] == '@') {
                snprintf(at_line, sizeof at_line, "%s:%s:", file, fields[i] + 1);
                expects[n++] = at_line;
            } else if (n < MAX_EXPECTS) {
                expects[n++] = fields[i];
            }
        }
        /* The file itself: its bytes as they are. */
        char src[512];
        snprintf(src, sizeof src, "%s/%s", CASES_DIR, file);
        size_t len;
        char *data = read_all(src, &len);
        write_file(file, data, len);
        free(data);
        if (secret) {
            /* The secret is in the file: the test would not show it missing. */
            data = read_all(src, NULL);
            if (!strstr(data, secret))
                problem("%s: does not hold its secret '%s'", file, secret);
            free(data);
        }
        checked += check_config(file, expects, n, secret, only);
        files++;
    }
    free(manifest);
    if (files < 60)
        problem("cases.txt names only %u files", files);

    /* What no file in the tree can be. */
    const char *missing[] = {"nope.ini: cannot open", "No such file"};
    checked += check_config("nope.ini", missing, 2, NULL, NULL);
    const char *is_dir[] = {"cannot read", "Is a directory"};
    char sub[512];
    snprintf(sub, sizeof sub, "%s/sub", dir);
    if (mkdir(sub, 0755) != 0)
        fail_msg("mkdir %s: %s", sub, strerror(errno));
    checked += check_config("sub", is_dir, 2, NULL, NULL);
    if (geteuid() != 0) {
        /* root reads every file: only others can see this one refused */
        const char *unreadable[] = {"unreadable.ini: cannot open", "Permission denied"};
        write_file("unreadable.ini", "[pool]\n", 7);
        char path[512];
        snprintf(path, sizeof path, "%s/unreadable.ini", dir);
        chmod(path, 0);
        checked += check_config("unreadable.ini", unreadable, 2, NULL, NULL);
    }

    /* The environment overrides the file, with the same checks. */
    static const struct {
        const char *env;
        const char *expect[3];
        const char *secret;
    } envs[] = {
        {"CW_POOL_WORKERS=abc",
         {"CW_POOL_WORKERS", "[pool] workers", "'abc' is not an integer"},
         NULL},
        {"CW_BROKER_PREFETCH=0", {"CW_BROKER_PREFETCH", "[broker] prefetch", "not between"}, NULL},
        {"CW_LOG_LEVEL=loud", {"CW_LOG_LEVEL", "[log] level", "'loud'"}, NULL},
        {"CW_STORE_LEASE=-1s", {"CW_STORE_LEASE", "[store] lease", "not a duration"}, NULL},
        {"CW_AMQP_URL=http://ops:s3cret-pw@rabbit/",
         {"CW_AMQP_URL", "[broker] url", "not amqp"},
         "s3cret-pw"},
        {"CW_BROKER_URL=ops:s3cret-pw@rabbit",
         {"CW_BROKER_URL", "[broker] url", "not amqp"},
         "s3cret-pw"},
    };
    for (size_t i = 0; i < sizeof envs / sizeof *envs; i++) {
        const char *env[] = {envs[i].env, NULL};
        for (size_t c = 0; c < sizeof commands / sizeof *commands; c++) {
            const char *args[9] = {0};
            for (size_t k = 0; commands[c].args[k]; k++)
                args[k] = strcmp(commands[c].args[k], "@") == 0 ? "good.ini" : commands[c].args[k];
            expect_refusal(args, env, envs[i].expect, 3, envs[i].secret);
            checked++;
        }
    }
    print_message("bad configurations: %u files and %u more, %u command runs\n", files,
                  (unsigned)(sizeof envs / sizeof *envs) + 2, checked);
    no_problems(checked);
}

/* ---- 2. bad command lines --------------------------------------------------- */

typedef struct bad_line {
    const char *args[12];
    const char *expect[3];
} bad_line;

static const bad_line bad_lines[] = {
    /* compworker itself */
    {{NULL}, {"no command given"}},
    {{"frob"}, {"unknown command 'frob'"}},
    {{"version", "--bogus"}, {"version", "'--bogus'"}},
    /* run */
    {{"run"}, {"run", "-c POOL.INI is required"}},
    {{"run", "-c"}, {"run", "'-c' needs a value"}},
    {{"run", "-c", "good.ini", "--workers"}, {"'--workers' needs a value"}},
    {{"run", "-c", "good.ini", "--workers", "abc"}, {"--workers", "'abc' is not an integer"}},
    {{"run", "-c", "good.ini", "--workers", "0"}, {"--workers", "not between 1 and 64"}},
    {{"run", "-c", "good.ini", "--workers", "-3"}, {"--workers", "not between 1 and 64"}},
    {{"run", "-c", "good.ini", "--workers", "99999999999999999999"},
     {"--workers", "is not an integer"}},
    {{"run", "-c", "good.ini", "--workers=1.5"}, {"--workers", "'1.5' is not an integer"}},
    {{"run", "-c", "good.ini", "--log-level", "loud"}, {"--log-level", "'loud'"}},
    {{"run", "-c", "good.ini", "--log-level"}, {"'--log-level' needs a value"}},
    {{"run", "-c", "good.ini", "--bogus"}, {"run", "unknown option '--bogus'"}},
    {{"run", "-c", "good.ini", "--bogus=1"}, {"run", "unknown option '--bogus'"}},
    {{"run", "-zq", "-c", "good.ini"}, {"run", "unknown option '-z'"}},
    {{"run", "-c", "good.ini", "extra"}, {"run", "unexpected argument 'extra'"}},
    /* config */
    {{"config"}, {"config", "no command given"}},
    {{"config", "frob"}, {"config", "unknown command 'frob'"}},
    {{"config", "check"}, {"config check", "-c POOL.INI is required"}},
    {{"config", "check", "-c"}, {"config check", "'-c' needs a value"}},
    {{"config", "check", "-c", "good.ini", "--workers", "x"}, {"--workers", "'x'"}},
    {{"config", "check", "-c", "good.ini", "--frob"}, {"config check", "unknown option '--frob'"}},
    /* publish */
    {{"publish", "-c", "good.ini"}, {"publish", "--type is required"}},
    {{"publish", "-c", "good.ini", "--type"}, {"publish", "'--type' needs a value"}},
    {{"publish", "-c", "good.ini", "--type", "bad type!", "--data", "{}"}, {"publish", "--type"}},
    {{"publish", "-c", "good.ini", "--type", "it.apply"}, {"publish", "--data"}},
    {{"publish", "-c", "good.ini", "--type", "it.apply", "--data", "{}", "--data-file",
      "body.json"},
     {"publish", "exactly one of --data and --data-file"}},
    {{"publish", "-c", "good.ini", "--type", "it.apply", "--data", ""}, {"publish", "empty"}},
    {{"publish", "-c", "good.ini", "--type", "it.apply", "--data", "not json"},
     {"publish", "--data", "not JSON"}},
    {{"publish", "-c", "good.ini", "--type", "it.apply", "--data", "[1,2]"},
     {"publish", "--data", "not an object"}},
    {{"publish", "-c", "good.ini", "--type", "it.apply", "--data", "{\"n\":NaN}"},
     {"publish", "--data", "not JSON"}},
    {{"publish", "-c", "good.ini", "--type", "it.apply", "--data", "{\"s\":\"\xc0\xaf\"}"},
     {"publish", "--data", "UTF-8"}},
    {{"publish", "-c", "good.ini", "--type", "it.apply", "--data-file", "nope.json"},
     {"publish", "--data-file nope.json"}},
    {{"publish", "-c", "good.ini", "--type", "it.apply", "--data-file", "big.json"},
     {"publish", "--data-file big.json", "max_body_size"}},
    {{"publish", "-c", "good.ini", "--type", "it.apply", "--data", "{}", "--message-id", ""},
     {"publish", "--message-id"}},
    {{"publish", "-c", "good.ini", "--type", "it.apply", "--data", "{}", "--message-id",
      "has space"},
     {"publish", "--message-id"}},
    {{"publish", "-c", "good.ini", "--type", "it.apply", "--data", "{}", "--saga-id", "saga\x01"},
     {"publish", "--saga-id"}},
    {{"publish", "-c", "good.ini", "--type", "it.apply", "--data", "{}", "--bogus"},
     {"publish", "unknown option '--bogus'"}},
    {{"publish", "-c", "good.ini", "--type", "it.apply", "--data", "{}", "extra"},
     {"publish", "unexpected argument 'extra'"}},
    /* dlq */
    {{"dlq"}, {"dlq", "no command given"}},
    {{"dlq", "frob", "-c", "good.ini"}, {"dlq", "unknown command 'frob'"}},
    {{"dlq", "list"}, {"dlq list", "-c POOL.INI is required"}},
    {{"dlq", "list", "-c"}, {"dlq list", "'-c' needs a value"}},
    {{"dlq", "list", "-c", "good.ini", "--limit"}, {"dlq list", "'--limit' needs a value"}},
    {{"dlq", "list", "-c", "good.ini", "--limit", "abc"}, {"dlq list", "--limit 'abc'"}},
    {{"dlq", "list", "-c", "good.ini", "--limit", "0"}, {"dlq list", "--limit '0'"}},
    {{"dlq", "list", "-c", "good.ini", "--limit", "-5"}, {"dlq list", "--limit '-5'"}},
    {{"dlq", "list", "-c", "good.ini", "--since", "yesterday"}, {"dlq list", "--since"}},
    {{"dlq", "list", "-c", "good.ini", "--until", "2026-13-45"}, {"dlq list", "--until"}},
    {{"dlq", "list", "-c", "good.ini", "--since", "1h", "--until", "2h"},
     {"dlq list", "--since is not before --until"}},
    {{"dlq", "list", "-c", "good.ini", "--bogus"}, {"dlq list", "unknown option '--bogus'"}},
    {{"dlq", "list", "-c", "good.ini", "--yes"}, {"dlq list", "--yes"}},
    {{"dlq", "list", "-c", "good.ini", "some-id"}, {"dlq list", "unexpected argument"}},
    {{"dlq", "show", "-c", "good.ini"}, {"dlq show", "message IDs"}},
    {{"dlq", "show", "-c", "good.ini", "bad id"}, {"dlq show", "not a message ID"}},
    {{"dlq", "replay", "-c", "good.ini"}, {"dlq replay", "--all"}},
    {{"dlq", "replay", "-c", "good.ini", "--all", "--rate", "-1"}, {"dlq replay", "--rate"}},
    {{"dlq", "replay", "-c", "good.ini", "--all", "--rate", "nan"}, {"dlq replay", "--rate"}},
    {{"dlq", "replay", "-c", "good.ini", "--all", "--canary", "x"}, {"dlq replay", "--canary"}},
    {{"dlq", "replay", "-c", "good.ini", "--all", "--canary-timeout", "soon"},
     {"dlq replay", "--canary-timeout"}},
    {{"dlq", "replay", "-c", "good.ini", "--all", "--to", ""}, {"dlq replay", "--to"}},
    {{"dlq", "delete", "-c", "good.ini", "--all", "--type", "x", "--yes"}, {"dlq delete", "--all"}},
    {{"dlq", "import", "-c", "good.ini", "nope.jsonl"}, {"dlq import", "nope.jsonl"}},
    {{"dlq", "import", "-c", "good.ini", "a.jsonl", "b.jsonl"}, {"dlq import", "one file"}},
    /* relay */
    {{"relay"}, {"relay", "-c RELAY.INI is required"}},
    {{"relay", "init"}, {"relay", "-c RELAY.INI is required"}},
    {{"relay", "-c", "good.ini", "extra"}, {"relay", "unexpected argument 'extra'"}},
    {{"relay", "-c", "good.ini", "--bogus"}, {"relay", "unknown option '--bogus'"}},
    {{"relay", "failed"}, {"relay failed", "-c RELAY.INI is required"}},
    {{"relay", "retry", "-c", "good.ini"}, {"relay retry", "--all or the IDs"}},
    {{"relay", "retry", "-c", "good.ini", "--all", "12"}, {"relay retry", "--all or the IDs"}},
    {{"relay", "retry", "-c", "good.ini", "12x"}, {"relay retry", "'12x' is not the id of a row"}},
    {{"relay", "-c", "good.ini", "--log-level", "loud"}, {"relay", "'loud'"}},
    /* status */
    {{"status"}, {"status", "MESSAGE_ID"}},
    {{"status", "-c", "good.ini"}, {"status", "MESSAGE_ID"}},
    {{"status", "-c"}, {"status", "'-c' needs a value"}},
    {{"status", "-c", "good.ini", "--bogus", "x"}, {"status", "unknown option '--bogus'"}},
    {{"status", "-c", "good.ini", "a", "b"}, {"status", "MESSAGE_ID"}},
    {{"status", "-c", "good.ini", "bad id"}, {"status", "MESSAGE_ID"}},
    {{"status", "some-id"}, {"status", "-c POOL.INI is required"}},
};

static void test_bad_command_lines(void **state)
{
    (void)state;
    unsigned checked = 0;
    for (size_t i = 0; i < sizeof bad_lines / sizeof *bad_lines; i++) {
        size_t n = 0;
        while (n < 3 && bad_lines[i].expect[n])
            n++;
        expect_refusal(bad_lines[i].args, NULL, bad_lines[i].expect, n, NULL);
        checked++;
    }
    print_message("bad command lines: %u\n", checked);
    no_problems(checked);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_bad_configs),
        cmocka_unit_test(test_bad_command_lines),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}
