//! One call for a process's life: serve until SIGTERM or SIGINT, upgrade on SIGHUP, drain,
//! return the report.

use crate::error::{Error, ServeError};
use crate::events::ShutdownReport;
use crate::server::ServerHandle;
use crate::signal::{Signal, Signals};

impl ServerHandle {
    /// Serves until the process is told to stop, the way a service manager expects:
    /// - SIGTERM or SIGINT: a graceful shutdown ([`shutdown`](Self::shutdown)), whose
    ///   report this returns; with [`Config::lame_duck`](crate::Config::lame_duck) it
    ///   begins with the lame duck, which a second SIGTERM or SIGINT ends;
    /// - SIGHUP (when `signals` listens for it, [`Signals::with_hangup`]): a zero-downtime
    ///   [`upgrade`](Self::upgrade); once the new process serves, this one drains and
    ///   returns. A failed upgrade goes to the error hook (and `ServerEvent::UpgradeFailed`)
    ///   and this process serves on;
    /// - the server stopping by itself (a `close` elsewhere): returns its report.
    ///
    /// While it runs, it reads the signals itself, on the server's runtime's reactor: no
    /// thread of their own (see [`signal`](crate::signal)).
    ///
    /// ```no_run
    /// # fn main() -> Result<(), berth::Error> {
    /// let signals = berth::signal::Signals::with_hangup()?; // before binding
    /// let handle = berth::Server::bind(berth::Config::new("127.0.0.1:7000"))?
    ///     .serve(|conn: berth::Conn| async move { drop(conn) });
    /// handle.on_error(|e| eprintln!("{e}")); // e.g. "upgrade failed: ..."
    /// let report = futures_lite::future::block_on(handle.run(&signals))?;
    /// println!("shutdown complete: {report}");
    /// # Ok(()) }
    /// ```
    ///
    /// What a forced close means here: for a process that was asked to stop, connections
    /// still open at the end of `drain_timeout` (a client that never finishes) are part of
    /// an ordinary stop, not a failure of the program, so `run` returns `Ok` with them
    /// counted in [`ShutdownReport::forced`], and a `main` that uses `?` on it exits 0.
    /// ([`shutdown`](Self::shutdown) and [`shutdown_within`](Self::shutdown_within), which a
    /// caller uses to bound a drain, report the same case as
    /// [`Error::ShutdownTimeout`], golib's "timeout on stopping socket".)
    ///
    /// Errors: none yet; the `Result` leaves room for setup that can fail.
    pub async fn run(&self, signals: &Signals) -> Result<ShutdownReport, Error> {
        use futures_lite::FutureExt as _;
        // Reads the signals on the server's runtime while this runs: no thread for them.
        match crate::signal::read_on(self.server_runtime()) {
            Some(reading) => {
                let reading = async { match reading.await {} };
                self.serve_signals(signals).or(reading).await
            }
            None => self.serve_signals(signals).await,
        }
    }

    /// `run`'s loop.
    async fn serve_signals(&self, signals: &Signals) -> Result<ShutdownReport, Error> {
        use futures_lite::FutureExt as _;
        loop {
            let signal = async { Some(signals.recv().await) }
                .or(async {
                    self.stopped().await;
                    None
                })
                .await;
            if signal != Some(Signal::Hangup) {
                // A second SIGTERM or SIGINT ends a lame duck at once.
                let skip = async {
                    loop {
                        if signals.recv().await != Signal::Hangup {
                            self.end_lame_duck();
                        }
                    }
                };
                return self.stop().or(skip).await;
            }
            match self.upgrade_on_signal().await {
                Ok(_) => return self.stop().await,
                Err(e) => self.report_error(&ServeError::Upgrade(e)),
            }
        }
    }

    /// Upgrades when a shutdown was asked for by a SIGHUP (see
    /// [`shutdown_on`](Self::shutdown_on)); a failure goes to the error hook.
    pub(crate) async fn upgrade_on_hangup(&self, stopped_by: &dyn std::any::Any) {
        if stopped_by.downcast_ref() == Some(&Signal::Hangup) {
            if let Err(e) = self.upgrade_on_signal().await {
                self.report_error(&ServeError::Upgrade(e));
            }
        }
    }

    /// A graceful shutdown whose forced connections are in the report (see `run`).
    async fn stop(&self) -> Result<ShutdownReport, Error> {
        match self.shutdown().await {
            Err(Error::ShutdownTimeout { .. }) => Ok(self.stop_report()),
            other => other,
        }
    }
}
