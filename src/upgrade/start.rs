//! The old process's side of an upgrade, start to end: claim the one upgrade that may run,
//! hand the sockets (and the ticket keys) over on a thread of its own, then stop accepting
//! and drain, or, on failure, serve on and say why.

use std::process::Command;
use std::sync::Arc;

use super::{UpgradeError, Upgraded};
use crate::core::Core;
use crate::error::{Error, ServeError};
use crate::events::ServerEvent;
use crate::stop::State;

/// Starts an upgrade to the program `command` starts and waits for its result (see
/// [`ServerHandle::upgrade_with`](crate::ServerHandle::upgrade_with)).
pub(crate) async fn start(core: &Arc<Core>, command: Command) -> Result<Upgraded, UpgradeError> {
    if core.state() != State::Running {
        return Err(UpgradeError::NotRunning);
    }
    if !core.handovers().start_upgrade() {
        return Err(UpgradeError::InProgress);
    }
    // The upgrade runs as a task of its own: a caller that stops waiting (a timeout, a
    // select) does not cut it half-way, and the next upgrade is possible once it ends.
    let done = crate::sync::Oneshot::new();
    let result = done.clone();
    core.runtime()
        .spawn(Box::pin(run(core.clone(), command, done)));
    result.recv().await
}

/// Adds `socket` to what an upgrade hands over, under `name` (see
/// [`ServerHandle::hand_over_too`](crate::ServerHandle::hand_over_too)).
pub(crate) fn hand_over_too(
    core: &Core,
    name: String,
    socket: std::os::fd::OwnedFd,
) -> Result<(), Error> {
    let taken = core.endpoints().iter().any(|e| **e.name() == *name);
    if taken || !super::valid_name(&name) {
        return Err(Error::Upgrade(UpgradeError::BadName(name)));
    }
    core.handovers()
        .add(name.into(), crate::listener::Handover::new(socket));
    Ok(())
}

/// An upgrade, start to end; its result goes to `done`.
async fn run(
    core: Arc<Core>,
    command: Command,
    done: crate::sync::Oneshot<Result<Upgraded, UpgradeError>>,
) {
    if let Err(e) = crate::systemd::reloading() {
        core.hooks().error(&ServeError::Notify(e));
    }
    let handed = async {
        #[cfg_attr(not(feature = "tls"), allow(unused_mut))]
        let mut sockets = core
            .handovers()
            .duplicates()
            .map_err(UpgradeError::Channel)?;
        let names: Vec<String> = sockets.iter().map(|(name, _)| name.clone()).collect();
        #[cfg(feature = "tls")]
        if let Some(keys) = super::tickets::export(&core) {
            sockets.push((super::TICKET_KEYS.to_owned(), keys));
        }
        let timeout = core.config().upgrade_timeout;
        let (pid, child) = crate::sync::on_thread("berth-upgrade", move || {
            super::hand_over(command, &sockets, timeout)
        })
        .await
        .map_err(UpgradeError::Channel)??;
        // The new process accepts on every socket: stop here, keeping Unix socket files;
        // unless a shutdown began meanwhile, which wins: the new process must not serve on.
        if !core
            .handovers()
            .handed_over_unless(|| core.stop().stop_accepting_requested())
        {
            super::stop_child(child);
            return Err(UpgradeError::ShuttingDown);
        }
        // Not reaped here: the new process outlives this one, and whoever adopts it (init or a
        // supervisor acting as subreaper) must see its exit status, so waiting on it from a
        // thread would steal that status when generations overlap.
        drop(child);
        Ok(Upgraded {
            pid,
            listeners: names,
        })
    };
    let result = handed.await;
    match &result {
        Ok(upgraded) => {
            core.readiness().set_handed_over();
            let announced = format!("MAINPID={}\nREADY=1\n", upgraded.pid);
            if let Err(e) = crate::systemd::notify(&announced) {
                core.hooks().error(&ServeError::Notify(e));
            }
            core.hooks()
                .server(ServerEvent::Upgraded { pid: upgraded.pid });
            let grace = core.config().drain_timeout;
            let draining = core.clone();
            core.runtime().spawn(Box::pin(async move {
                let _ = crate::shutdown::stop(&draining, grace, false).await;
            }));
        }
        Err(e) => {
            core.handovers().end_upgrade();
            // The reload is over: this process serves on.
            if let Err(e) = crate::systemd::notify("READY=1\n") {
                core.hooks().error(&ServeError::Notify(e));
            }
            core.hooks().server(ServerEvent::UpgradeFailed {
                reason: e.to_string(),
            });
        }
    }
    done.send(result);
}

/// The new process serves: tell the process it replaces (after an upgrade) or systemd (at a
/// first start), once every listener accepts (the loops are spawned; connects queue until
/// they run).
pub(crate) fn serving(core: &Arc<Core>, predecessor: Option<super::Inherited>) {
    crate::watchdog::serving(core, predecessor.is_none());
    if let Some(predecessor) = predecessor {
        if let Err(e) = predecessor.ready() {
            core.hooks()
                .error(&ServeError::Upgrade(UpgradeError::Channel(e)));
        }
        // The adopted Unix sockets' files are this server's from now on.
        core.handovers().own_socket_files();
    }
}
