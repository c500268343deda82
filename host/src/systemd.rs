//! Telling systemd how the service is doing (`Type=notify`, sd_notify(3)): `READY=1` once
//! every listener serves, `STATUS=` lines an operator sees in `systemctl status`, `STOPPING=1`
//! when a drain begins, and `WATCHDOG=1` pings while the async runtime is alive.
//!
//! Without `NOTIFY_SOCKET` (not started by systemd) every call does nothing. A notification
//! that cannot be sent is logged at debug level and otherwise ignored: the mail matters more.

use sd_notify::NotifyState;
use std::time::Duration;

fn notify(states: &[NotifyState]) {
    if let Err(e) = sd_notify::notify(states) {
        tracing::debug!(message = "Cannot notify systemd.", error = %e);
    }
}

/// Every listener serves: systemd may start what depends on mta.
pub fn ready(status: &str) {
    notify(&[NotifyState::Ready, NotifyState::Status(status)]);
}

/// A stop began: the listeners drain.
pub fn stopping(status: &str) {
    notify(&[NotifyState::Stopping, NotifyState::Status(status)]);
}

/// A line for `systemctl status`.
pub fn status(status: &str) {
    notify(&[NotifyState::Status(status)]);
}

/// Pings the watchdog at half of `WatchdogSec=` for as long as the runtime that polls this
/// future runs tasks: a wedged runtime stops pinging, and systemd restarts the service.
/// Returns at once when no watchdog is set.
pub async fn watchdog() {
    let Some(interval) = sd_notify::watchdog_enabled() else {
        return;
    };
    let period = (interval / 2).max(Duration::from_millis(10));
    tracing::debug!(
        message = "Pinging the systemd watchdog.",
        period_ms = period.as_millis() as u64
    );
    let mut ticks = tokio::time::interval(period);
    loop {
        ticks.tick().await;
        notify(&[NotifyState::Watchdog]);
    }
}
