//! Test support shared by every runtime's instantiation of the suite.
#![allow(dead_code)]

pub mod example;
pub mod pebble;
pub mod pki;

use std::future::Future;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use berth::runtime::Runtime;
use berth::{Builder, Config, ConnEvent, Handler, ServerEvent, ServerHandle};
use futures_lite::{AsyncRead, AsyncReadExt, AsyncWriteExt, FutureExt};

/// Instantiates each generic test `name::<R: Rt>()` on smol and on tokio, as the tests
/// `name::smol` and `name::tokio`.
#[macro_export]
macro_rules! on_smol_and_tokio {
    ($($name:ident),* $(,)?) => {
        $(
            mod $name {
                #[test]
                fn smol() {
                    super::$name::<super::common::SmolRt>()
                }
                #[test]
                fn tokio() {
                    super::$name::<super::common::TokioRt>()
                }
            }
        )*
    };
}

/// A runtime adapter under test, plus how the test thread blocks on a future.
pub trait Rt: 'static {
    const NAME: &'static str;
    type Runtime: Runtime + Clone;
    fn runtime() -> Self::Runtime;
    fn block_on<T>(f: impl Future<Output = T>) -> T;
}

#[cfg(feature = "smol")]
pub struct SmolRt;
#[cfg(feature = "smol")]
impl Rt for SmolRt {
    const NAME: &'static str = "smol";
    type Runtime = berth::runtime::Smol;
    fn runtime() -> Self::Runtime {
        berth::runtime::Smol::global()
    }
    fn block_on<T>(f: impl Future<Output = T>) -> T {
        async_io::block_on(f)
    }
}

#[cfg(feature = "async-std")]
pub struct AsyncStdRt;
#[cfg(feature = "async-std")]
impl Rt for AsyncStdRt {
    const NAME: &'static str = "async-std";
    type Runtime = berth::runtime::AsyncStd;
    fn runtime() -> Self::Runtime {
        berth::runtime::AsyncStd
    }
    fn block_on<T>(f: impl Future<Output = T>) -> T {
        async_std::task::block_on(f)
    }
}

#[cfg(feature = "tokio")]
pub struct TokioRt;
#[cfg(feature = "tokio")]
impl TokioRt {
    pub fn rt() -> &'static tokio::runtime::Runtime {
        static RT: std::sync::OnceLock<tokio::runtime::Runtime> = std::sync::OnceLock::new();
        RT.get_or_init(|| {
            tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()
                .expect("tokio runtime")
        })
    }
}
#[cfg(feature = "tokio")]
impl Rt for TokioRt {
    const NAME: &'static str = "tokio";
    type Runtime = berth::runtime::Tokio;
    fn runtime() -> Self::Runtime {
        berth::runtime::Tokio::from_handle(Self::rt().handle().clone())
    }
    fn block_on<T>(f: impl Future<Output = T>) -> T {
        Self::rt().block_on(f)
    }
}

/// Every test body runs under this bound, so a bug shows as a failure, not a hung CI.
pub const LIMIT: Duration = Duration::from_secs(30);

/// Runs `f` on the runtime's test thread, failing if it takes longer than `limit`.
pub fn run<R: Rt>(limit: Duration, f: impl Future<Output = ()>) {
    R::block_on(async {
        let timed_out = async {
            async_io::Timer::after(limit).await;
            panic!("[{}] test timed out after {limit:?}", R::NAME);
        };
        f.or(timed_out).await
    })
}

/// Awaits `f`, failing with `what` if it takes longer than `limit`.
pub async fn within<T>(limit: Duration, what: &str, f: impl Future<Output = T>) -> T {
    let timed_out = async {
        async_io::Timer::after(limit).await;
        panic!("timed out after {limit:?} waiting for {what}");
    };
    f.or(timed_out).await
}

/// Whether `f` completes within `window`. Used only to prove that something does *not*
/// happen (backpressure), never to wait for something that should.
pub async fn completes_within<T>(window: Duration, f: impl Future<Output = T>) -> Option<T> {
    async { Some(f.await) }
        .or(async {
            async_io::Timer::after(window).await;
            None
        })
        .await
}

/// How a client saw its stream end.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum End {
    /// A clean end of file (the server's FIN; over TLS, close_notify or FIN) after `data`
    /// bytes.
    Eof { data: usize },
    /// A read failed (a reset is `ConnectionReset`) after `data` bytes.
    Error {
        kind: std::io::ErrorKind,
        data: usize,
    },
    /// Neither end of file nor an error within the window, after `data` bytes.
    StillOpen { data: usize },
}

/// A clean end of file with nothing before it.
pub const EOF: End = End::Eof { data: 0 };

/// How long [`ending`] waits before reporting [`End::StillOpen`]: well inside [`LIMIT`], so
/// a connection that stays open fails the assertion, not the whole test's bound.
pub const END_WINDOW: Duration = Duration::from_secs(10);

/// Reads (and discards) until the stream ends, and says how: clean end of file, an error
/// (reset), or still open after [`END_WINDOW`].
pub async fn ending<S: AsyncRead + Unpin>(stream: &mut S) -> End {
    ending_within(END_WINDOW, stream).await
}

/// [`ending`] with a window of one's own.
pub async fn ending_within<S: AsyncRead + Unpin>(window: Duration, stream: &mut S) -> End {
    let mut data = 0;
    let mut buf = vec![0u8; 64 * 1024];
    let deadline = std::time::Instant::now() + window;
    loop {
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        match completes_within(left, stream.read(&mut buf)).await {
            None => return End::StillOpen { data },
            Some(Ok(0)) => return End::Eof { data },
            Some(Ok(n)) => data += n,
            Some(Err(e)) => {
                return End::Error {
                    kind: e.kind(),
                    data,
                };
            }
        }
    }
}

/// After the server's end of file: whether the server closed its socket entirely rather
/// than only its write side (a lingering close). Data sent to a closed socket is answered
/// with a reset, so a write soon fails; a half-closed socket takes the data and discards
/// it. The kernel gives no readiness event for a reset after end of file, so this probes:
/// a one-byte write every millisecond until one fails, for at most `window`.
pub async fn writes_refused_within(window: Duration, stream: &mut async_net::TcpStream) -> bool {
    let deadline = std::time::Instant::now() + window;
    while std::time::Instant::now() < deadline {
        if stream.write_all(b"?").await.is_err() {
            return true;
        }
        async_io::Timer::after(Duration::from_millis(1)).await;
    }
    false
}

/// Asserts that the server closed `stream` entirely, with a clean end of file after
/// `data` bytes: the shape of every server-side close (idle timeout, forced shutdown, a
/// `ConnHandle`, a failed tune hook, a panicking handler) of a connection with nothing
/// unread. The probe's window (1 s) stays below the default `linger_timeout` (2 s), so a
/// lingering half-close, which ends in a full close at the linger timeout, fails it.
pub async fn assert_closed_by_server(stream: &mut async_net::TcpStream, data: usize) {
    assert_eq!(ending(stream).await, End::Eof { data });
    assert!(
        writes_refused_within(Duration::from_secs(1), stream).await,
        "the server's socket is closed, not only half-closed"
    );
}

/// Everything a server reported, in order, and a channel to wait on it.
#[derive(Debug, Clone, PartialEq)]
pub enum Ev {
    Conn(ConnEvent),
    Server(ServerEvent),
    Error(String),
}

#[derive(Clone)]
pub struct Recorder {
    log: Arc<Mutex<Vec<Ev>>>,
    tx: async_channel::Sender<Ev>,
    rx: async_channel::Receiver<Ev>,
}

impl Recorder {
    pub fn new() -> Self {
        let (tx, rx) = async_channel::unbounded();
        Recorder {
            log: Default::default(),
            tx,
            rx,
        }
    }

    fn push(&self, ev: Ev) {
        self.log.lock().unwrap().push(ev.clone());
        let _ = self.tx.try_send(ev);
    }

    /// Wires every hook of `builder` to this recorder.
    pub fn attach(&self, builder: Builder) -> Builder {
        let (a, b, c) = (self.clone(), self.clone(), self.clone());
        builder
            .on_conn_event(move |e| a.push(Ev::Conn(e.clone())))
            .on_server_event(move |e| b.push(Ev::Server(e.clone())))
            .on_error(move |e| c.push(Ev::Error(e.to_string())))
    }

    /// Waits for the next event matching `pred` (consuming the ones before it).
    pub async fn next(&self, what: &str, pred: impl Fn(&Ev) -> bool) -> Ev {
        within(LIMIT, what, async {
            loop {
                let ev = self.rx.recv().await.expect("recorder channel closed");
                if pred(&ev) {
                    return ev;
                }
            }
        })
        .await
    }

    pub async fn accepted(&self) -> u64 {
        match self
            .next("an Accepted event", |e| {
                matches!(e, Ev::Conn(ConnEvent::Accepted { .. }))
            })
            .await
        {
            Ev::Conn(ConnEvent::Accepted { id, .. }) => id,
            _ => unreachable!(),
        }
    }

    pub async fn closed(&self) -> (u64, berth::CloseReason) {
        match self
            .next("a Closed event", |e| {
                matches!(e, Ev::Conn(ConnEvent::Closed { .. }))
            })
            .await
        {
            Ev::Conn(ConnEvent::Closed { id, reason, .. }) => (id, reason),
            _ => unreachable!(),
        }
    }

    pub async fn error(&self) -> String {
        match self.next("an error", |e| matches!(e, Ev::Error(_))).await {
            Ev::Error(s) => s,
            _ => unreachable!(),
        }
    }

    pub fn log(&self) -> Vec<Ev> {
        self.log.lock().unwrap().clone()
    }
}

/// A config on a free loopback port.
pub fn config() -> Config {
    Config::new("127.0.0.1:0")
}

/// Binds `config` on runtime `R`, wires a recorder, and serves `handler`.
pub fn start<R: Rt>(config: Config, handler: impl Handler) -> (ServerHandle, Recorder) {
    let rec = Recorder::new();
    let server = rec
        .attach(Builder::new(config).runtime(R::runtime()))
        .bind()
        .expect("bind");
    (server.serve(handler), rec)
}

pub async fn connect(addr: SocketAddr) -> async_net::TcpStream {
    within(LIMIT, "connect", async_net::TcpStream::connect(addr))
        .await
        .expect("connect")
}

/// Deterministic pseudo-random bytes.
pub fn pattern(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

/// A fresh directory under the system's temporary directory, removed when dropped (also
/// when the test fails).
pub struct TempDir(std::path::PathBuf);

impl TempDir {
    /// `berth-{suite}-{pid}-{name}`, emptied if it exists.
    pub fn new(suite: &str, name: &str) -> TempDir {
        let dir = std::env::temp_dir().join(format!("berth-{suite}-{}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        TempDir(dir)
    }
}

impl std::ops::Deref for TempDir {
    type Target = std::path::Path;
    fn deref(&self) -> &std::path::Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// `N` distinct loopback ports free now, for a process that a test starts with a fixed port
/// (every one is held until all are chosen).
///
/// They are taken below the kernel's ephemeral range, not from the OS's own pick: a port the
/// OS picks is from that range, so between the moment it is released here and the bind
/// that follows, any test's outgoing connection may be given it as its local port (a
/// `cannot serve metrics on 127.0.0.1:34379: Address already in use` seen once). Each
/// process starts at a different place, so tests in parallel seldom probe the same ports.
pub fn free_ports<const N: usize>() -> [u16; N] {
    use std::sync::atomic::{AtomicU32, Ordering};
    static NEXT: AtomicU32 = AtomicU32::new(0);
    const LOW: u32 = 10_000;
    // The ephemeral range's first port (32768 by default on Linux).
    let ephemeral = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|range| range.split_whitespace().next()?.parse::<u32>().ok())
        .unwrap_or(32_768);
    let span = ephemeral.saturating_sub(LOW);
    let mut held: Vec<std::net::TcpListener> = Vec::with_capacity(N);
    if span < 1_000 {
        // Too small a range below it: the OS's pick, as before.
        held.extend((0..N).map(|_| std::net::TcpListener::bind("127.0.0.1:0").unwrap()));
    } else {
        let start = std::process::id().wrapping_mul(7_919) % span;
        let first = NEXT.fetch_add(N as u32 * 3, Ordering::Relaxed);
        let mut tried = 0;
        while held.len() < N {
            assert!(tried < span, "no {N} free ports below {ephemeral}");
            let port = (LOW + (start + first + tried) % span) as u16;
            tried += 1;
            if let Ok(listener) = std::net::TcpListener::bind(("127.0.0.1", port)) {
                held.push(listener);
            }
        }
    }
    std::array::from_fn(|i| held[i].local_addr().unwrap().port())
}
