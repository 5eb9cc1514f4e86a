/* No service manager notifications (built without libsystemd): see
 * notify.h. The unit file is then Type=simple. */
#include "workers/notify.h"

bool cw_notify_available(void)
{
    return false;
}

void cw_notify_ready(const char *status)
{
    (void)status;
}

void cw_notify_reloading(void)
{
}

void cw_notify_stopping(void)
{
}

void cw_notify_status(const char *status)
{
    (void)status;
}
