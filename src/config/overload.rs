//! What a server does when it is pressed (`Config::overload`).

use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::error::ConfigError;

/// What a server does when it is pressed: by descriptors in use against `RLIMIT_NOFILE`,
/// open connections against `max_connections`, or event-loop lag (how late the idle
/// scanner's tick runs). The pressure is the highest of these ratios (1.0: at a limit); its
/// level changes are reported as [`ServerEvent::Pressure`](crate::ServerEvent::Pressure),
/// each action as [`ServerEvent::Overload`](crate::ServerEvent::Overload) (and as metrics).
///
/// Without any of it, at a limit berth stops accepting (new clients wait in the kernel's
/// backlog, or, out of descriptors, accepting backs off) until a connection closes: a flood
/// of idle connections can then lock new clients out. `evict_idle_after` makes room instead.
///
/// ```
/// let mut config = berth::Config::new("0.0.0.0:7000");
/// config.max_connections = Some(10_000);
/// // At the limit, close the connection idle the longest (if idle at least 1 s) for a newcomer.
/// config.overload.evict_idle_after = Some(std::time::Duration::from_secs(1));
/// // At 80 % of a limit, reap connections idle for 5 s.
/// config.overload.shrink_idle_timeout = Some(std::time::Duration::from_secs(5));
/// config.validate().unwrap();
/// ```
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
#[non_exhaustive]
pub struct Overload {
    /// The pressure from which it counts as high (default 0.8).
    pub high_pressure: f64,
    /// While the pressure is high, close connections idle longer than this (when shorter
    /// than `idle_timeout`, or when there is none). `None`: off.
    #[serde(with = "humantime_serde")]
    pub shrink_idle_timeout: Option<Duration>,
    /// At the descriptor limit or at `max_connections`, when a new client needs a place,
    /// close the connection idle the longest, if it has been idle at least this long
    /// (`CloseReason::Evicted`). `None`: never evict.
    #[serde(with = "humantime_serde")]
    pub evict_idle_after: Option<Duration>,
    /// The event-loop lag that counts as full pressure. `None`: lag is not a source.
    #[serde(with = "humantime_serde")]
    pub max_lag: Option<Duration>,
}

impl Default for Overload {
    fn default() -> Self {
        Overload {
            high_pressure: 0.8,
            shrink_idle_timeout: None,
            evict_idle_after: None,
            max_lag: None,
        }
    }
}

impl Overload {
    /// Whether any action or source is configured.
    pub fn is_active(&self) -> bool {
        self.shrink_idle_timeout.is_some()
            || self.evict_idle_after.is_some()
            || self.max_lag.is_some()
    }

    pub(super) fn validate(&self) -> Result<(), ConfigError> {
        if !(self.high_pressure > 0.0 && self.high_pressure <= 1.0) {
            return Err(ConfigError::InvalidLimit(format!(
                "overload.high_pressure must be in (0, 1], got {}",
                self.high_pressure
            )));
        }
        for (name, value) in [
            ("overload.shrink_idle_timeout", self.shrink_idle_timeout),
            ("overload.max_lag", self.max_lag),
        ] {
            if value == Some(Duration::ZERO) {
                return Err(ConfigError::InvalidDuration {
                    name,
                    reason: "zero: give a positive duration, or leave it unset".into(),
                });
            }
        }
        Ok(())
    }
}
