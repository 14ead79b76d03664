//! # berth-sim
//!
//! Run berth servers, unchanged, inside [turmoil]'s deterministic network simulator: hosts,
//! links with latency, partitions, held messages, crashes and restarts, and a simulated
//! clock, so idle timeouts of minutes take milliseconds and every run is reproducible from
//! its seed.
//!
//! berth's core spawns and tells time only through its `Runtime` trait and takes connections
//! from its `Listener` trait; this crate implements both on turmoil, and adds what a test
//! needs to find bugs rather than just run:
//! - [`Sim`]: spawns on the current host's runtime, sleeps and reads time on its simulated
//!   clock; [`Shuffle`]: the same, with the order of ready tasks shaken by a seed;
//! - [`SimListener`]: a turmoil TCP listener whose streams are futures-io (tokio-util compat);
//!   [`serve`] / [`serve_on`] and [`connect`] wrap the usual steps;
//! - [`SwarmFaults`]: berth's own fault points (accept errors, short reads and writes,
//!   spurious wake-ups, late tasks and idle sweeps, stalled handshakes, split PROXY headers)
//!   fired from a seed, a random subset per seed ([`Swarm`]);
//! - [`Recorder`]: berth's events with simulated timestamps, the invariants every server must
//!   show in them ([`Recorder::lives`]), and traces to compare two runs by.
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
//! ## Your own handler and protocol, under faults and a drain
//!
//! The point of this crate is to test *your* handler the way berth tests itself: run it on a
//! simulated host with the seed's faults, break the network around it, shut the server down
//! in the middle, and check what every client saw against what the server did. A complete,
//! commented example that runs in CI is `sim/tests/user_protocol.rs`: a `SET k v` / `GET k`
//! line protocol with a line length limit, over many seeds, with a partitioned client, a
//! crashed client and a shutdown at a random moment, asserting that no acknowledged write
//! is lost. Its shape:
//!
//! ```
//! use std::sync::{Arc, Mutex};
//! use std::time::Duration;
//! use futures_lite::{AsyncReadExt, AsyncWriteExt, FutureExt};
//!
//! let seed = 1;
//! let mut sim = turmoil::Builder::new()
//!     .rng_seed(seed)
//!     .simulation_duration(Duration::from_secs(60)) // every run is bounded
//!     .build();
//! let rec = berth_sim::Recorder::new();
//! let faults = berth_sim::SwarmFaults::new(seed); // this seed's fault points
//! let acked = Arc::new(Mutex::new(0usize)); // what the server acknowledged
//! let (r, f, a) = (rec.clone(), faults.clone(), acked.clone());
//! sim.client("server", async move {
//!     let mut config = berth::Config::default();
//!     config.idle_timeout = Some(Duration::from_secs(5));
//!     let builder = r.attach(berth::Builder::new(config)).faults(f);
//!     let handle = berth_sim::serve(7000, builder, move |mut conn: berth::Conn| {
//!         let acked = a.clone();
//!         async move {
//!             // Your protocol: here one byte in, one byte out, stopping between requests
//!             // when the server drains.
//!             let mut draining = conn.draining();
//!             let mut byte = [0u8; 1];
//!             loop {
//!                 let read = async { Some(conn.read(&mut byte).await) };
//!                 let drained = async { (&mut draining).await; None };
//!                 let Some(Ok(1)) = read.or(drained).await else { return };
//!                 if conn.write_all(&byte).await.is_err() { return }
//!                 *acked.lock().unwrap() += 1;
//!                 if conn.is_draining() { return }
//!             }
//!         }
//!     })
//!     .await?;
//!     tokio::time::sleep(Duration::from_millis(300)).await;
//!     handle.shutdown_within(Duration::from_secs(2)).await?; // a drain mid-session
//!     Ok(())
//! });
//! let received = Arc::new(Mutex::new(0usize));
//! let got = received.clone();
//! sim.client("client", async move {
//!     let mut conn = berth_sim::connect("server:7000").await?;
//!     for _ in 0..1000 {
//!         let mut back = [0u8; 1];
//!         if conn.write_all(b"x").await.is_err() { break }
//!         match conn.read(&mut back).await {
//!             Ok(1) => *got.lock().unwrap() += 1,
//!             _ => break, // the drain ended the session: end of file, never a reset
//!         }
//!     }
//!     Ok(())
//! });
//! sim.run().unwrap();
//! // No acknowledged request was lost, and berth's own invariants hold.
//! assert_eq!(*received.lock().unwrap(), *acked.lock().unwrap());
//! rec.lives(true).unwrap();
//! println!("faults fired: {:?}", faults.counts());
//! ```
//!
//! berth's own randomized campaign (`sim/tests/campaign.rs`) does the same at scale: per seed
//! a topology of clients (echo, pipelining, slow readers, idle clients, late starters,
//! stuck clients, crashing hosts), network faults, fault points and a shutdown at a random
//! moment, judged session by session.
//!
//! It also tests the limits: about two seeds in five draw, each on its own,
//! `max_connections`, `max_per_ip`, `rate_per_ip`, `max_handshakes` (TLS seeds) and eviction
//! of idle connections, and add crowd hosts that open several connections at once from one
//! address (or behind PROXY headers claiming one), mostly more than allowed, then come back
//! once theirs have closed; TLS seeds with `max_handshakes` end with a probe, a failed
//! handshake then fresh ones. The [`Recorder`]'s events judge them: never more open than
//! `max_connections`, nor from one address than `max_per_ip`, nor admitted faster than the
//! rate; each refusal one `Rejected`, counted once, and the open count back to 0; the
//! comeback admitted (the per-IP count came back); never more handshakes at once than allowed,
//! and the probe's fresh handshakes succeed (every place given back); every eviction of a
//! connection idle long enough, reported once.
//!
//! Facts about turmoil 0.7 worth knowing (measured): its TCP has no retransmission, so a
//! partition loses data silently and a repaired connection stays wedged (only an idle timeout
//! frees the server side); a crashed host's peers see end of file; new connects to a crashed
//! host hang rather than being refused; closing a socket with unread input resets the
//! connection (RST), as a real kernel does; more than `tcp_capacity` pending connects to a
//! listener that is not accepting panic the simulation.
//!
//! [turmoil]: https://docs.rs/turmoil

#![forbid(unsafe_code)]
#![deny(missing_docs)]

use std::io;
use std::net::SocketAddr;
use std::time::Instant;

use berth::listener::{Accepted, Listener};
use berth::runtime::{BoxFuture, BoxTimer, Runtime, Timer};
use berth::{Builder, Handler, ServerHandle};
use tokio_util::compat::{Compat, TokioAsyncReadCompatExt};

mod faults;
mod record;
mod rng;
mod shuffle;

pub use faults::{Fired, Swarm, SwarmFaults};
pub use record::{Event, Life, Record, Recorder, first_difference};
pub use shuffle::Shuffle;

/// berth's `Runtime` on turmoil: the current host's tokio runtime (its `LocalSet`) and
/// simulated clock.
///
/// Use it only from inside a simulated host (where berth servers run anyway).
#[derive(Debug, Clone, Copy, Default)]
pub struct Sim;

impl Runtime for Sim {
    fn spawn(&self, future: BoxFuture) {
        // A crashed host's runtime is gone: drop the future (berth's bookkeeping is in Drop).
        if tokio::runtime::Handle::try_current().is_err() {
            return;
        }
        // On the host's `LocalSet` (turmoil runs every host's software in one), not as a
        // runtime task: a crash drops local tasks in the order they were spawned, where
        // tokio's runtime drops its tasks in an order that depends on process-wide task
        // ids, which made the events of a crash differ from one run of a seed to the next.
        drop(tokio::task::spawn_local(future));
    }

    fn timer(&self, deadline: Instant) -> BoxTimer {
        Box::pin(SimTimer {
            sleep: tokio::time::sleep_until(deadline.into()),
        })
    }

    fn now(&self) -> Instant {
        tokio::time::Instant::now().into_std()
    }
}

pin_project_lite::pin_project! {
    /// A timer on the simulated clock (turmoil drives tokio's), reset in place.
    struct SimTimer {
        #[pin]
        sleep: tokio::time::Sleep,
    }
}

impl std::future::Future for SimTimer {
    type Output = ();

    fn poll(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<()> {
        self.project().sleep.poll(cx)
    }
}

impl Timer for SimTimer {
    fn reset(self: std::pin::Pin<&mut Self>, deadline: Instant) {
        self.project().sleep.reset(deadline.into());
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

/// Readable when turmoil has data, end of file or a reset for the stream (a one-byte peek,
/// which keeps what it sees for the next read), so `Conn::readable` waits as it does on a
/// real socket and wakes when the server drains.
impl berth::listener::ByteStream for SimStream {
    fn poll_readable(
        &mut self,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<io::Result<()>> {
        let mut byte = [0u8; 1];
        let mut buf = tokio::io::ReadBuf::new(&mut byte);
        self.0.get_mut().poll_peek(cx, &mut buf).map_ok(|_| ())
    }
}

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
    serve_on(Sim, port, builder, handler).await
}

/// [`serve`] on another runtime, e.g. a [`Shuffle`].
pub async fn serve_on<H: Handler>(
    runtime: impl Runtime,
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
    Ok(builder.runtime(runtime).listener(listener)?.serve(handler))
}

/// Connects to `addr` (e.g. `"server:7000"`) from the current host, as a futures-io stream.
pub async fn connect(
    addr: impl turmoil::ToSocketAddrs,
) -> io::Result<Compat<turmoil::net::TcpStream>> {
    Ok(turmoil::net::TcpStream::connect(addr).await?.compat())
}
