//! The server's side of systemd's protocol: `READY=1` once serving (at a first start; after
//! an upgrade the old process announces the new one), `WATCHDOG=1` at half of
//! `WATCHDOG_USEC` while the event loop keeps time, `STOPPING=1` when a lame duck or a drain
//! begins (not when an upgrade's drain does: the service goes on in the new process).

use std::sync::Arc;
use std::time::Duration;

use futures_lite::FutureExt as _;

use crate::core::Core;
use crate::error::ServeError;
use crate::systemd;

/// The server serves: tells systemd (at a first start) and starts the watchdog task.
pub(crate) fn serving(core: &Arc<Core>, first_start: bool) {
    if first_start {
        report(core, systemd::notify("READY=1\n"));
    }
    let Some(interval) = systemd::watchdog_interval() else {
        return;
    };
    let task = keep_alive(core.clone(), interval / 2);
    core.runtime().spawn(Box::pin(task));
}

/// `WATCHDOG=1` every `period` until the server stops. A tick that comes later than a
/// whole period says nothing: the event loop was stalled, and systemd is to notice.
async fn keep_alive(core: Arc<Core>, period: Duration) {
    let rt = core.runtime().clone();
    loop {
        let started = rt.now();
        let stopped = async {
            core.stop().stopped().await;
            true
        };
        let slept = async {
            rt.sleep(period).await;
            false
        };
        if stopped.or(slept).await {
            return;
        }
        let late = rt
            .now()
            .saturating_duration_since(started)
            .saturating_sub(period);
        if late < period {
            report(&core, systemd::notify("WATCHDOG=1\n"));
        }
    }
}

/// A lame duck or a drain begins, and not because of an upgrade.
pub(crate) fn stopping(core: &Core) {
    if !core.readiness().is_handed_over() {
        report(core, systemd::notify("STOPPING=1\n"));
    }
}

fn report(core: &Core, sent: std::io::Result<bool>) {
    if let Err(e) = sent {
        core.hooks().error(&ServeError::Notify(e));
    }
}
