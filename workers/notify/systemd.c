/* Notifications to systemd with sd_notify(3): see notify.h. */
#include <stdio.h>
#include <systemd/sd-daemon.h>

#include "workers/notify.h"

bool cw_notify_available(void)
{
    return true;
}

void cw_notify_ready(const char *status)
{
    sd_notifyf(0, "READY=1\nSTATUS=%s", status);
}

void cw_notify_reloading(void)
{
    sd_notify(0, "RELOADING=1\nSTATUS=rolling restart");
}

void cw_notify_stopping(void)
{
    sd_notify(0, "STOPPING=1\nSTATUS=stopping: in-flight tasks settle");
}

void cw_notify_status(const char *status)
{
    sd_notifyf(0, "STATUS=%s", status);
}
