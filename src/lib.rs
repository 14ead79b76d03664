//! # berth
//!
//! A TCP (and Unix-socket) server library that does everything around your connection
//! handler: binding and accepting (with back-off on EMFILE), one task per connection, idle
//! reaping, connection limits, graceful shutdown, lifecycle events and counters. TLS,
//! PROXY-protocol, tracing and metrics are optional features. It is runtime-agnostic: the
//! same server runs on smol (default), tokio, async-std, or a simulator, because all
//! spawning and all time go through the [`Runtime`](runtime::Runtime) seam and all
//! connections come from a [`Listener`](listener::Listener).
//!
//! ```no_run
//! use futures_lite::{AsyncReadExt, AsyncWriteExt};
//!
//! fn main() -> Result<(), berth::Error> {
//!     let signals = berth::signal::Signals::new()?; // SIGTERM and Ctrl-C drain, below
//!     let server = berth::Server::bind(berth::Config::new("127.0.0.1:7000"))?;
//!     println!("listening on {}", server.local_addr());
//!     let handle = server.serve(|mut conn: berth::Conn| async move {
//!         // Echo until the peer closes, an error, or the server starts draining:
//!         // readable() waits without reading and also returns when draining begins.
//!         while conn.readable().await.is_ok() && !conn.is_draining() {
//!             let mut buf = [0u8; 4096];
//!             match conn.read(&mut buf).await {
//!                 Ok(n @ 1..) if conn.write_all(&buf[..n]).await.is_ok() => {}
//!                 _ => break,
//!             }
//!         }
//!     });
//!     let report = futures_lite::future::block_on(handle.shutdown_on(signals.recv()))?;
//!     println!("shutdown complete: {report}");
//!     Ok(())
//! }
//! ```
//!
//! Inside a tokio runtime the same `Server::bind` serves on tokio (its sockets, tasks and
//! timers); see `runtime::Tokio` (feature `tokio`).
//!
//! Every type has one path: the crate root holds what every server uses; [`tls`],
//! [`limits`], [`listener`], [`runtime`] and `signal` hold the rest. See the README for the
//! defaults, the shutdown semantics and the list of events.
//!
//! A call that fails returns an [`Error`] (a [`ConfigError`] inside it for a bad setting);
//! what goes wrong while serving, with no caller to return it to (an accept back-off, a
//! panicking handler, a certificate reload that fails), reaches the error hook
//! ([`Builder::on_error`]) as a [`ServeError`].
//!
//! # How it is built
//!
//! The server never names an async runtime: it spawns, sets deadline timers (which reset
//! in place) and reads the clock through [`Runtime`](runtime::Runtime), one adapter per
//! runtime, and takes connections from a [`Listener`](listener::Listener) (berth's TCP and
//! Unix listeners hand their sockets to the runtime's [`Reactor`](listener::Reactor), which
//! each adapter implements for its own I/O driver; a simulator brings its own listener).
//! Inside, the modules form layers, each importing only from those below: the vocabulary (settings,
//! errors, events, the two seams), the parts of a server's shared state (each a type of its
//! own: the coarse clock, the capacity, the stop, the pressure, admission, the slot pool,
//! the listeners), the core that holds them, the mechanisms (idle scanner, drain, upgrade,
//! certificate reload, ACME), the connection (its owned lifecycle, [`Conn`], its task), the
//! accept loop, and the front ([`Builder`], [`Server`], [`ServerHandle`], binding, `http`).
//! The list is at the top of `src/lib.rs`, held to the code by a test; the README's
//! "Architecture and layout" describes each module.

#![forbid(unsafe_code)]
#![deny(missing_docs)]

// The layers, bottom up. A module imports only from layers below its own, or from its own
// layer, except in a layer marked "alone", whose modules do not import one another. The
// test in `layers.rs` holds the code to this list and every module to a place in it.
// 1. vocabulary: addr, error, config, limits, events, metrics, extensions, unwind, sync,
//    stream (the byte stream, the OS socket view, the `Reactor` seam; public in `listener`),
//    runtime (the seam and one adapter per runtime, each registering its own sockets),
//    listener, signal, systemd, fault, proxy (the settings and the header reader), tls (the
//    settings, the handshake, ticket keys, the ACME settings, cache and challenge answers);
// 2. parts, alone: clock, capacity, pressure, handovers, admission, pool, readiness,
//    hooks, endpoint (one listener's name, address and current TLS configuration);
// 3. parts of parts, alone: stop (with the readiness), listeners (the endpoints, the
//    hand-overs, the TLS choice);
// 4. core: core (the `Core` that holds the parts);
// 5. mechanisms: idle, shutdown, upgrade, reload, acme (the ordering task and one order's
//    protocol steps), watchdog;
// 6. connection: lifecycle, conn (the handler's view), handler, task (the connection's task);
// 7. loop: accept;
// 8. front: server, bind (the listeners a config describes: bound, adopted or inherited),
//    http (hyper on top of a handler), run (the process's lifecycle), and the re-exports
//    below;
// 9. tests only: micro, layers.

/// The loom models of the lock-free parts, run by the workspace's `loom` crate
/// (`RUSTFLAGS="--cfg berth_loom" cargo test --release -p berth-loom`, see `.ci/run`). Not
/// part of the API: present only under that cfg.
#[cfg(berth_loom)]
#[doc(hidden)]
pub mod loom_models {
    pub use crate::capacity::loom_models as capacity;
    pub use crate::pool::loom_models as pool;
    pub use crate::sync::loom_models as sync;
}

mod accept;
#[cfg(feature = "acme")]
mod acme;
mod addr;
mod admission;
mod bind;
mod capacity;
mod clock;
mod config;
mod conn;
mod core;
mod endpoint;
mod error;
mod events;
mod extensions;
#[cfg(feature = "fault")]
pub mod fault;
mod handler;
#[cfg(unix)]
mod handovers;
mod hooks;
#[cfg(feature = "http")]
pub mod http;
mod idle;
#[cfg(test)]
mod layers;
mod lifecycle;
pub mod limits;
pub mod listener;
mod listeners;
#[cfg(feature = "metrics")]
mod metrics;
#[cfg(test)]
mod micro;
mod pool;
mod pressure;
mod proxy;
mod readiness;
#[cfg(feature = "tls")]
mod reload;
#[cfg(all(unix, feature = "signal", any(feature = "async-io", feature = "tokio")))]
mod run;
pub mod runtime;
mod server;
mod shutdown;
#[cfg(all(unix, feature = "signal"))]
pub mod signal;
mod stop;
mod stream;
mod sync;
#[cfg(all(unix, any(feature = "async-io", feature = "tokio")))]
mod systemd;
mod task;
pub mod tls;
mod unwind;
#[cfg(all(unix, any(feature = "async-io", feature = "tokio")))]
pub mod upgrade;
#[cfg(all(unix, any(feature = "async-io", feature = "tokio")))]
mod watchdog;

pub use addr::{Addr, PeerCred};
pub use config::{Config, ListenerConfig, Overload, UnixConfig};
pub use conn::{Busy, Conn, ConnHandle, Draining, Readable};
pub use error::{ConfigError, Error, ServeError};
pub use events::{
    CloseReason, ConnEvent, OverloadAction, PressureLevel, ServerEvent, ShutdownReport, Stats,
};
pub use extensions::Extensions;
pub use handler::Handler;
pub use proxy::ProxyProtocol;
pub use server::{Builder, Server, ServerHandle};
pub use stop::State;

// The README's examples compile as doctests.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
struct ReadmeDoctests;

/// The stream halves returned by [`Conn::split`].
pub use futures_lite::io::{ReadHalf, WriteHalf};
