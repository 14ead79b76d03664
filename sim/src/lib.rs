//! # berth-sim
//!
//! Run berth servers, unchanged, inside [turmoil]'s deterministic network simulator: hosts,
//! links with latency, partitions, held messages, crashes and restarts, and a simulated
//! clock, so idle timeouts of minutes take milliseconds and every run is reproducible from
//! its seed.
//!
//! berth's core spawns and tells time only through its `Runtime` trait and takes connections
//! from its `Listener` trait; this crate implements both on turmoil:
//! - [`Sim`]: spawns on the current host's runtime, sleeps and reads time on its simulated
//!   clock;
//! - [`SimListener`]: a turmoil TCP listener whose streams are futures-io (tokio-util compat).
//!
//! ```
//! use std::time::Duration;
//! use futures_lite::{AsyncReadExt, AsyncWriteExt};
//!
//! let mut sim = turmoil::Builder::new()
//!     .rng_seed(7)
//!     .simulation_duration(Duration::from_secs(600))
//!     .tick_duration(Duration::from_millis(10)) // long timeouts: coarser steps, faster runs
//!     .build();
//! sim.host("server", || async {
//!     let mut config = berth::Config::default();
//!     config.idle_timeout = Some(Duration::from_secs(300));
//!     let handle = berth_sim::serve(7000, berth::Builder::new(config), |mut conn: berth::Conn| async move {
//!         let mut buf = [0u8; 64];
//!         while let Ok(n @ 1..) = conn.read(&mut buf).await {
//!             let _ = conn.write_all(&buf[..n]).await;
//!         }
//!     })
//!     .await?;
//!     handle.stopped().await;
//!     Ok(())
//! });
//! sim.client("client", async {
//!     let mut conn = berth_sim::connect("server:7000").await?;
//!     conn.write_all(b"hello").await?;
//!     let mut back = [0u8; 5];
//!     conn.read_exact(&mut back).await?;
//!     assert_eq!(&back, b"hello");
//!     // Five simulated minutes of silence: the server's idle timeout closes us.
//!     let started = turmoil::elapsed();
//!     assert_eq!(conn.read(&mut back).await?, 0);
//!     assert!(turmoil::elapsed() - started >= Duration::from_secs(300));
//!     Ok(())
//! });
//! sim.run().unwrap();
//! ```
//!
//! Facts about turmoil 0.7 worth knowing (measured): its TCP has no retransmission, so a
//! partition loses data silently and a repaired connection stays wedged (only an idle timeout
//! frees the server side); a crashed host's peers see end of file; new connects to a crashed
//! host hang rather than being refused; more than `tcp_capacity` pending connects to a
//! listener that is not accepting panic the simulation.
//!
//! [turmoil]: https://docs.rs/turmoil

#![forbid(unsafe_code)]
#![deny(missing_docs)]

use std::io;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use berth::listener::{Accepted, Listener};
use berth::runtime::{BoxFuture, Runtime};
use berth::{Builder, ConnEvent, Handler, ServerEvent, ServerHandle};
use tokio_util::compat::{Compat, TokioAsyncReadCompatExt};

/// berth's `Runtime` on turmoil: the current host's tokio runtime and simulated clock.
///
/// Use it only from inside a simulated host (where berth servers run anyway).
#[derive(Debug, Clone, Copy, Default)]
pub struct Sim;

impl Runtime for Sim {
    fn spawn(&self, future: BoxFuture) {
        // A crashed host's runtime is gone: drop the future (berth's bookkeeping is in Drop).
        if let Ok(handle) = tokio::runtime::Handle::try_current() {
            drop(handle.spawn(future));
        }
    }

    fn sleep(&self, duration: Duration) -> BoxFuture {
        Box::pin(tokio::time::sleep(duration))
    }

    fn now(&self) -> Instant {
        tokio::time::Instant::now().into_std()
    }
}

/// A turmoil TCP listener as a berth [`Listener`].
pub struct SimListener {
    inner: turmoil::net::TcpListener,
}

impl std::fmt::Debug for SimListener {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SimListener")
            .field("local_addr", &self.inner.local_addr().ok())
            .finish()
    }
}

impl SimListener {
    /// Binds on the current host, e.g. `("0.0.0.0", 7000)`.
    pub async fn bind(addr: impl turmoil::ToSocketAddrs) -> io::Result<Self> {
        Ok(SimListener {
            inner: turmoil::net::TcpListener::bind(addr).await?,
        })
    }
}

/// An accepted simulated stream (futures-io over turmoil's tokio-io stream).
#[derive(Debug)]
pub struct SimStream(Compat<turmoil::net::TcpStream>);

impl SimStream {
    /// The turmoil stream.
    pub fn get_ref(&self) -> &turmoil::net::TcpStream {
        self.0.get_ref()
    }
}

impl futures_io::AsyncRead for SimStream {
    fn poll_read(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut [u8],
    ) -> std::task::Poll<io::Result<usize>> {
        std::pin::Pin::new(&mut self.0).poll_read(cx, buf)
    }
}

impl futures_io::AsyncWrite for SimStream {
    fn poll_write(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<io::Result<usize>> {
        std::pin::Pin::new(&mut self.0).poll_write(cx, buf)
    }
    fn poll_flush(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<io::Result<()>> {
        std::pin::Pin::new(&mut self.0).poll_flush(cx)
    }
    fn poll_close(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<io::Result<()>> {
        std::pin::Pin::new(&mut self.0).poll_close(cx)
    }
}

/// turmoil streams cannot report readiness without reading: the default (always ready).
impl berth::listener::ByteStream for SimStream {}

impl Listener for SimListener {
    type Stream = SimStream;

    async fn accept(&self) -> io::Result<Accepted<Self::Stream>> {
        let (stream, peer_addr) = self.inner.accept().await?;
        let local_addr = stream.local_addr()?;
        Ok(Accepted {
            stream: SimStream(stream.compat()),
            peer_addr: peer_addr.into(),
            local_addr: local_addr.into(),
        })
    }

    fn local_addr(&self) -> io::Result<berth::Addr> {
        self.inner.local_addr().map(berth::Addr::from)
    }
}

/// Binds `port` on all of the current host's addresses and serves `handler` with the
/// builder's config and hooks, on the [`Sim`] runtime. Call it inside a turmoil host.
pub async fn serve<H: Handler>(
    port: u16,
    builder: Builder,
    handler: H,
) -> Result<ServerHandle, berth::Error> {
    let listener = SimListener::bind(("0.0.0.0", port))
        .await
        .map_err(|source| berth::Error::Bind {
            addr: SocketAddr::from(([0, 0, 0, 0], port)).into(),
            source,
        })?;
    Ok(builder.runtime(Sim).listener(listener)?.serve(handler))
}

/// Connects to `addr` (e.g. `"server:7000"`) from the current host, as a futures-io stream.
pub async fn connect(
    addr: impl turmoil::ToSocketAddrs,
) -> io::Result<Compat<turmoil::net::TcpStream>> {
    Ok(turmoil::net::TcpStream::connect(addr).await?.compat())
}

/// One thing a server reported, with the simulated time it happened at.
#[derive(Debug, Clone, PartialEq)]
pub struct Record {
    /// Simulated time since the simulation started.
    pub at: Duration,
    /// What happened.
    pub event: Event,
}

/// A server's report.
#[derive(Debug, Clone, PartialEq)]
pub enum Event {
    /// A connection event.
    Conn(ConnEvent),
    /// A server event.
    Server(ServerEvent),
    /// An error, as its message.
    Error(String),
}

/// Captures berth's connection events, server events and errors with simulated timestamps.
/// Clone it into hosts; every clone shares one log.
#[derive(Debug, Clone, Default)]
pub struct Recorder {
    log: Arc<Mutex<Vec<Record>>>,
}

impl Recorder {
    /// A new, empty recorder.
    pub fn new() -> Self {
        Self::default()
    }

    fn push(&self, event: Event) {
        let at = turmoil::sim_elapsed().unwrap_or_default();
        self.log
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(Record { at, event });
    }

    /// Wires every hook of `builder` to this recorder.
    pub fn attach(&self, builder: Builder) -> Builder {
        let (a, b, c) = (self.clone(), self.clone(), self.clone());
        builder
            .on_conn_event(move |e| a.push(Event::Conn(e.clone())))
            .on_server_event(move |e| b.push(Event::Server(e.clone())))
            .on_error(move |e| c.push(Event::Error(e.to_string())))
    }

    /// Everything recorded so far, in order.
    pub fn records(&self) -> Vec<Record> {
        self.log.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// The recorded connection events.
    pub fn conn_events(&self) -> Vec<(Duration, ConnEvent)> {
        self.records()
            .into_iter()
            .filter_map(|r| match r.event {
                Event::Conn(e) => Some((r.at, e)),
                _ => None,
            })
            .collect()
    }

    /// The log as text, one record per line: compare two runs to check determinism.
    pub fn trace(&self) -> String {
        self.records()
            .iter()
            .map(|r| format!("{:?} {:?}\n", r.at, r.event))
            .collect()
    }
}
