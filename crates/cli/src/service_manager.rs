//! What a running proxy tells systemd (the `sd_notify` protocol), for a
//! unit with `Type=notify` such as `packaging/systemd/intransit.service`:
//! `READY=1` once every listener is bound, `RELOADING=1` (with
//! `MONOTONIC_USEC=`) and then `READY=1` around each reload round,
//! `STOPPING=1` when the drain starts, and `WATCHDOG=1` at half the
//! interval in `WATCHDOG_USEC`.
//!
//! Without `NOTIFY_SOCKET` in the environment every call here does
//! nothing, so the same binary runs unchanged outside systemd. A message
//! that cannot be sent is logged and never stops the proxy: the service
//! manager's timeouts are the judge of a proxy it has not heard from.

use std::time::Duration;

use sd_notify::NotifyState;
use tracing::{debug, warn};

/// Every listener (and the admin server, when configured) is bound.
pub fn ready(listeners: usize) {
    let status = format!("serving {listeners} listener(s)");
    send(&[NotifyState::Ready, NotifyState::Status(&status)]);
}

/// A reload round is starting. systemd requires the time the reload
/// started, on its own monotonic clock, with `RELOADING=1`.
pub fn reloading() {
    match NotifyState::monotonic_usec_now() {
        Ok(now) => send(&[NotifyState::Reloading, now]),
        Err(e) => warn!(error = %e, "cannot read the monotonic clock for RELOADING=1"),
    }
}

/// The reload round has finished, whatever its outcome: a failed reload
/// keeps the previous material in service, so the proxy is ready again.
pub fn reloaded() {
    send(&[NotifyState::Ready]);
}

/// The drain has started: no new connections are accepted.
pub fn stopping() {
    send(&[NotifyState::Stopping]);
}

/// Pings systemd's watchdog from the runtime, when the unit asks for it
/// (`WatchdogSec=`, seen as `WATCHDOG_USEC` and, if set, a `WATCHDOG_PID`
/// equal to this process's id). The ping comes from a task on the main
/// runtime, which runs the accept loops and reloads, so a main runtime
/// that stops running tasks stops the pings too. Connections on worker
/// threads (`worker_threads`) are not covered by it.
pub fn spawn_watchdog() {
    let Some(interval) = sd_notify::watchdog_enabled() else {
        return;
    };
    let Some(period) = ping_period(interval) else {
        warn!(
            watchdog_usec = interval.as_micros(),
            "WATCHDOG_USEC is too small to ping in time; not pinging"
        );
        return;
    };
    debug!(
        period_ms = period.as_millis(),
        "pinging the systemd watchdog"
    );
    tokio::spawn(async move {
        let mut ticks = tokio::time::interval(period);
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            ticks.tick().await;
            send(&[NotifyState::Watchdog]);
        }
    });
}

/// Half the watchdog interval, as sd_watchdog_enabled(3) recommends, or
/// `None` when that is zero.
fn ping_period(interval: Duration) -> Option<Duration> {
    Some(interval / 2).filter(|p| !p.is_zero())
}

fn send(states: &[NotifyState<'_>]) {
    if let Err(e) = sd_notify::notify(states) {
        let message: Vec<String> = states.iter().map(ToString::to_string).collect();
        warn!(
            error = %e,
            message = message.join(" "),
            "cannot notify the service manager (NOTIFY_SOCKET)"
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_watchdog_is_pinged_at_half_its_interval() {
        assert_eq!(
            ping_period(Duration::from_micros(400_000)),
            Some(Duration::from_millis(200))
        );
        assert_eq!(
            ping_period(Duration::from_secs(30)),
            Some(Duration::from_secs(15))
        );
        assert_eq!(ping_period(Duration::ZERO), None);
    }
}
