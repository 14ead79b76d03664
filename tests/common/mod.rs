//! Test support shared by every runtime's instantiation of the suite.
#![allow(dead_code)]

pub mod example;

use std::future::Future;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use berth::runtime::Runtime;
use berth::{Builder, Config, ConnEvent, Handler, ServerEvent, ServerHandle};
use futures_lite::FutureExt;

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
