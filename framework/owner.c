/* Worker identity and liveness of lease owners on this host. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "framework/owner.h"

/* Field 22 of /proc/PID/stat: start time in clock ticks since boot. */
static unsigned long long proc_start(long pid)
{
    char path[64], buf[1024];
    snprintf(path, sizeof path, "/proc/%ld/stat", pid);
    FILE *f = fopen(path, "r");
    if (!f)
        return 0;
    size_t n = fread(buf, 1, sizeof buf - 1, f);
    fclose(f);
    buf[n] = '\0';
    /* The command name (field 2) may hold spaces and parentheses: skip to
     * the last ')'. */
    char *p = strrchr(buf, ')');
    if (!p)
        return 0;
    p++;
    for (int field = 3; field < 22 && p; field++) {
        p = strchr(p + 1, ' ');
    }
    return p ? strtoull(p + 1, NULL, 10) : 0;
}

static void host_name(char *out, size_t cap)
{
    if (gethostname(out, cap) != 0)
        snprintf(out, cap, "localhost");
    out[cap - 1] = '\0';
}

void cw__owner_self(char *out, size_t cap)
{
    char host[64];
    host_name(host, sizeof host);
    long pid = (long)getpid();
    snprintf(out, cap, "%s:%ld:%llu", host, pid, proc_start(pid));
}

bool cw__owner_alive(const char *owner, void *unused)
{
    (void)unused;
    char host[64];
    host_name(host, sizeof host);
    size_t hl = strlen(host);
    if (strncmp(owner, host, hl) != 0 || owner[hl] != ':')
        return true;
    char *end;
    long pid = strtol(owner + hl + 1, &end, 10);
    if (*end != ':' || pid <= 0)
        return true;
    unsigned long long start = strtoull(end + 1, NULL, 10);
    unsigned long long now = proc_start(pid);
    return now != 0 && now == start;
}
