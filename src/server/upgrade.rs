//! What upgrades add to the front (Unix, with a runtime adapter): the handle's calls, whose
//! work is in [`upgrade`](crate::upgrade).

use super::ServerHandle;
use crate::error::Error;

impl ServerHandle {
    /// Zero-downtime upgrade: starts this program again (from the path it was started from,
    /// with the same arguments) and hands it every listening socket by name; see
    /// [`upgrade_with`](Self::upgrade_with).
    pub async fn upgrade(&self) -> Result<crate::upgrade::Upgraded, Error> {
        Ok(self.upgrade_on_signal().await?)
    }

    /// [`upgrade`](Self::upgrade) started by a signal: no caller waits for it, so its
    /// failure goes to the error hook, as the upgrade's own error.
    pub(crate) async fn upgrade_on_signal(
        &self,
    ) -> Result<crate::upgrade::Upgraded, crate::upgrade::UpgradeError> {
        let command = crate::upgrade::default_command()?;
        crate::upgrade::start(&self.core, command).await
    }

    /// Zero-downtime upgrade to the program `command` starts: hands it every listening
    /// socket by name, waits (at most `config.upgrade_timeout`) until it has adopted them,
    /// bound any new ones and serves, and only then stops accepting here, without closing
    /// the shared sockets (no connect is refused or reset meanwhile), and drains with
    /// `drain_timeout`. Under systemd (`NOTIFY_SOCKET`) it announces the new process
    /// (`MAINPID=`, `READY=1`). Returns once the new process is ready; [`stopped`](Self::stopped)
    /// or [`shutdown`](Self::shutdown) then wait for the drain and give its report.
    ///
    /// The new process must build its server with `Builder::bind` (which adopts the
    /// sockets) and serve it. On failure (it cannot start, exits, or is not ready in time:
    /// it is then killed) this server keeps serving, the error is returned and reported
    /// (`ServerEvent::UpgradeFailed`), and a later upgrade may be tried. One upgrade runs
    /// at a time.
    ///
    /// The new process is not waited for here: it is meant to outlive this one, and is then
    /// adopted by init or by a supervisor that must see its exit status. Should it exit first,
    /// it stays a zombie until this process exits.
    pub async fn upgrade_with(
        &self,
        command: std::process::Command,
    ) -> Result<crate::upgrade::Upgraded, Error> {
        Ok(crate::upgrade::start(&self.core, command).await?)
    }

    /// Hands `socket` (a duplicate of a listening socket of your own: a metrics or admin
    /// port) to the new process at an upgrade too, under `name`, where
    /// [`upgrade::take_socket`](crate::upgrade::take_socket) gives it back. The socket stays
    /// open while either process holds it, so that port never refuses a connect either.
    ///
    /// Errors: [`UpgradeError::BadName`](crate::upgrade::UpgradeError::BadName) for an empty
    /// or multi-line name, or one a listener of this server already has.
    pub fn hand_over_too(
        &self,
        name: impl Into<String>,
        socket: std::os::fd::OwnedFd,
    ) -> Result<(), Error> {
        crate::upgrade::hand_over_too(&self.core, name.into(), socket)
    }
}
