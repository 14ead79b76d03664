//! Overload and certificate operations, in process: eviction of the connection idle the
//! longest at `max_connections`, backpressure when nothing may be evicted, the pressure
//! levels and the shrunk idle timeout, `max_handshakes`, `Builder::tls_select` and watched
//! certificate files. Each test runs on the smol and the tokio adapter.
//!
//! Waiting is on events (the recorder's log), bytes and ends of file. The only timers are
//! where idleness or an elapsed interval is itself the condition under test (a connection
//! must be idle to be evicted), or `completes_within`, to show that something does *not*
//! happen.
#![cfg(all(feature = "smol", feature = "tokio", feature = "tls"))]

use crate::common;

use std::collections::{BTreeMap, HashMap};
use std::io;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use async_executor::LocalExecutor;
use berth::tls::{ClientHelloInfo, TlsConfig, TlsFailure};
use berth::{
    Builder, CloseReason, Config, Conn, ConnEvent, OverloadAction, PressureLevel, ServerEvent,
    ServerHandle,
};
use common::pki::{Leaf, Pki, relink, replace, revision};
use common::{
    Ev, LIMIT, Recorder, Rt, SmolRt, TempDir, assert_closed_by_server, completes_within, connect,
    run, within,
};
use futures_lite::{AsyncReadExt, AsyncWriteExt};
use rustls::ClientConfig;
use rustls::pki_types::{CertificateDer, ServerName};

// --- waiting on the recorder ------------------------------------------------------------------

/// Waits until the recorder's log holds an event matching `pred`, whenever it was reported
/// (events from different tasks may be reported in either order).
async fn seen(rec: &Recorder, what: &str, pred: impl Fn(&Ev) -> bool) -> Ev {
    seen_n(rec, what, 1, &pred).await;
    rec.log().into_iter().find(|e| pred(e)).unwrap()
}

/// How long an awaited event may take: well inside [`LIMIT`], so a missing event fails
/// with its own name rather than the whole test's bound.
const EVENT_WAIT: Duration = Duration::from_secs(10);

/// Waits until the log holds at least `n` events matching `pred`.
async fn seen_n(rec: &Recorder, what: &str, n: usize, pred: impl Fn(&Ev) -> bool) {
    within(EVENT_WAIT, what, async {
        while count(rec, &pred) < n {
            // Any new event: look again.
            rec.next(what, |_| true).await;
        }
    })
    .await
}

fn count(rec: &Recorder, pred: impl Fn(&Ev) -> bool) -> usize {
    rec.log().iter().filter(|e| pred(e)).count()
}

/// The id berth gave the connection of `client`.
async fn id_of(rec: &Recorder, client: &async_net::TcpStream) -> u64 {
    let local = client.local_addr().unwrap();
    match seen(rec, "the client's Accepted event", |e| {
        matches!(e, Ev::Conn(ConnEvent::Accepted { peer_addr, .. })
            if peer_addr.as_socket_addr() == Some(local))
    })
    .await
    {
        Ev::Conn(ConnEvent::Accepted { id, .. }) => id,
        _ => unreachable!(),
    }
}

fn closed_as(id: u64, why: CloseReason) -> impl Fn(&Ev) -> bool {
    move |e| matches!(e, Ev::Conn(ConnEvent::Closed { id: i, reason, .. }) if *i == id && *reason == why)
}

fn overload(pred: impl Fn(&OverloadAction) -> bool) -> impl Fn(&Ev) -> bool {
    move |e| matches!(e, Ev::Server(ServerEvent::Overload { action }) if pred(action))
}

fn pressure(level: PressureLevel) -> impl Fn(&Ev) -> bool {
    move |e| matches!(e, Ev::Server(ServerEvent::Pressure { level: l, .. }) if *l == level)
}

fn is_evicted(e: &Ev) -> bool {
    matches!(
        e,
        Ev::Conn(ConnEvent::Closed {
            reason: CloseReason::Evicted,
            ..
        }) | Ev::Server(ServerEvent::Overload {
            action: OverloadAction::Evicted { .. }
        })
    )
}

/// After the server stopped: every `Accepted` has exactly one `Closed`, and nothing else
/// was closed.
fn every_accepted_was_closed_once(rec: &Recorder) {
    let mut accepted = Vec::new();
    let mut closed: BTreeMap<u64, usize> = BTreeMap::new();
    for e in rec.log() {
        match e {
            Ev::Conn(ConnEvent::Accepted { id, .. }) => accepted.push(id),
            Ev::Conn(ConnEvent::Closed { id, .. }) => *closed.entry(id).or_default() += 1,
            _ => {}
        }
    }
    accepted.sort_unstable();
    let once: Vec<u64> = closed
        .iter()
        .filter(|(_, n)| **n == 1)
        .map(|(id, _)| *id)
        .collect();
    assert_eq!(
        closed.len(),
        once.len(),
        "a connection closed twice: {closed:?}"
    );
    assert_eq!(accepted, once, "every Accepted has one Closed");
}

// --- an echo server that watches itself ---------------------------------------------------------

/// What the echo handler saw: the most connections open while one started, and how each
/// connection's I/O failed.
#[derive(Default)]
struct Probe {
    handle: OnceLock<ServerHandle>,
    max_open: AtomicUsize,
    failures: std::sync::Mutex<HashMap<u64, io::ErrorKind>>,
}

impl Probe {
    fn failure(&self, id: u64) -> Option<io::ErrorKind> {
        self.failures.lock().unwrap().get(&id).copied()
    }
}

/// Echoes; notes the open count when it starts and the error that ends it.
fn echo(probe: Arc<Probe>) -> impl Fn(Conn) -> futures_lite::future::Boxed<()> + Send + Sync {
    move |mut conn: Conn| {
        let probe = probe.clone();
        Box::pin(async move {
            if let Some(handle) = probe.handle.get() {
                probe
                    .max_open
                    .fetch_max(handle.open_connections(), Ordering::SeqCst);
            }
            let mut buf = [0u8; 1024];
            loop {
                match conn.read(&mut buf).await {
                    Ok(0) => return,
                    Ok(n) => {
                        if let Err(e) = conn.write_all(&buf[..n]).await {
                            probe.failures.lock().unwrap().insert(conn.id(), e.kind());
                            return;
                        }
                    }
                    Err(e) => {
                        probe.failures.lock().unwrap().insert(conn.id(), e.kind());
                        return;
                    }
                }
            }
        })
    }
}

fn serve<R: Rt>(config: Config) -> (ServerHandle, Recorder, Arc<Probe>, SocketAddr) {
    let rec = Recorder::new();
    let probe = Arc::new(Probe::default());
    let server = rec
        .attach(Builder::new(config).runtime(R::runtime()))
        .bind()
        .expect("bind");
    probe.handle.set(server.handle()).unwrap();
    let handle = server.serve(echo(probe.clone()));
    let addr = handle.local_addr().as_socket_addr().unwrap();
    (handle, rec, probe, addr)
}

async fn echo_once(c: &mut async_net::TcpStream, msg: &[u8]) {
    c.write_all(msg).await.unwrap();
    let mut back = vec![0u8; msg.len()];
    within(LIMIT, "the echo", c.read_exact(&mut back))
        .await
        .unwrap();
    assert_eq!(back, msg);
}

/// Lets connections become idle: idleness is the condition under test.
async fn idle_for(d: Duration) {
    async_io::Timer::after(d).await;
}

// --- 1. eviction at max_connections -------------------------------------------------------------

fn eviction_at_max_connections_closes_the_idlest<R: Rt>() {
    run::<R>(LIMIT, async {
        let mut config = common::config();
        config.max_connections = Some(3);
        config.overload.evict_idle_after = Some(Duration::from_millis(200));
        let (handle, rec, probe, addr) = serve::<R>(config);
        // Three connections active at clearly different times (further apart than the idle
        // scanner's 250 ms tick, which is the resolution of idleness), all idle long enough
        // when the fourth arrives.
        let mut a = connect(addr).await;
        echo_once(&mut a, b"a").await;
        idle_for(Duration::from_millis(500)).await;
        let mut b = connect(addr).await;
        echo_once(&mut b, b"b").await;
        idle_for(Duration::from_millis(500)).await;
        let mut c = connect(addr).await;
        echo_once(&mut c, b"c").await;
        idle_for(Duration::from_millis(500)).await;
        let a_id = id_of(&rec, &a).await;

        // The fourth is served...
        let mut d = connect(addr).await;
        echo_once(&mut d, b"d").await;
        // ...in place of the one idle the longest, which is reported...
        let action = seen(
            &rec,
            "Overload Evicted",
            overload(|act| matches!(act, OverloadAction::Evicted { .. })),
        )
        .await;
        let Ev::Server(ServerEvent::Overload {
            action: OverloadAction::Evicted { id, idle },
        }) = action
        else {
            unreachable!()
        };
        assert_eq!(id, a_id, "the connection idle the longest is evicted");
        assert!(idle >= Duration::from_millis(200), "{idle:?}");
        // ...and closed as evicted: its client sees the server close, its handler's pending
        // read failed with ConnectionAborted.
        seen(
            &rec,
            "Closed Evicted",
            closed_as(a_id, CloseReason::Evicted),
        )
        .await;
        assert_closed_by_server(&mut a, 0).await;
        assert_eq!(probe.failure(a_id), Some(io::ErrorKind::ConnectionAborted));
        // The others are untouched, and the limit held throughout.
        echo_once(&mut b, b"b2").await;
        echo_once(&mut c, b"c2").await;
        echo_once(&mut d, b"d2").await;
        assert_eq!(handle.open_connections(), 3);
        assert!(probe.max_open.load(Ordering::SeqCst) <= 3);
        assert_eq!(count(&rec, is_evicted), 2, "one eviction, one event each");
        assert_eq!(handle.stats().closed_by(CloseReason::Evicted), 1);
        drop((b, c, d));
        handle.close().await;
        every_accepted_was_closed_once(&rec);
    });
}

/// Without `evict_idle_after`, backpressure is unchanged: however idle the open connections,
/// the fourth waits until one closes.
fn without_eviction_a_newcomer_waits<R: Rt>() {
    run::<R>(LIMIT, async {
        let mut config = common::config();
        config.max_connections = Some(3);
        let (handle, rec, probe, addr) = serve::<R>(config);
        let mut held = Vec::new();
        for i in 0..3u8 {
            let mut c = connect(addr).await;
            echo_once(&mut c, &[i]).await;
            held.push(c);
        }
        idle_for(Duration::from_millis(500)).await;
        let mut d = connect(addr).await;
        d.write_all(b"d").await.unwrap();
        let mut back = [0u8; 1];
        assert!(
            completes_within(Duration::from_millis(800), d.read_exact(&mut back))
                .await
                .is_none(),
            "the fourth is not served while three are open"
        );
        // One leaves: the fourth is served.
        drop(held.remove(0));
        within(LIMIT, "the fourth's echo", d.read_exact(&mut back))
            .await
            .unwrap();
        assert_eq!(&back, b"d");
        assert_eq!(count(&rec, is_evicted), 0);
        assert!(probe.max_open.load(Ordering::SeqCst) <= 3);
        drop((held, d));
        handle.close().await;
        every_accepted_was_closed_once(&rec);
    });
}

// --- 2. nothing idle long enough ----------------------------------------------------------------

fn nothing_idle_enough_pauses_accepting<R: Rt>() {
    run::<R>(LIMIT, async {
        let mut config = common::config();
        config.max_connections = Some(2);
        // Longer than the test: no connection is ever idle enough.
        config.overload.evict_idle_after = Some(Duration::from_secs(60));
        let (handle, rec, probe, addr) = serve::<R>(config);
        let mut a = connect(addr).await;
        echo_once(&mut a, b"a").await;
        let mut b = connect(addr).await;
        echo_once(&mut b, b"b").await;
        // Idle, but not for long enough.
        idle_for(Duration::from_millis(600)).await;

        let mut c = connect(addr).await;
        c.write_all(b"c").await.unwrap();
        seen(
            &rec,
            "AcceptingPaused",
            overload(|act| *act == OverloadAction::AcceptingPaused),
        )
        .await;
        let mut back = [0u8; 1];
        assert!(
            completes_within(Duration::from_millis(500), c.read_exact(&mut back))
                .await
                .is_none(),
            "the newcomer waits"
        );
        echo_once(&mut a, b"a2").await;
        echo_once(&mut b, b"b2").await;
        // One closes: the newcomer is served.
        let a_id = id_of(&rec, &a).await;
        drop(a);
        within(LIMIT, "the newcomer's echo", c.read_exact(&mut back))
            .await
            .unwrap();
        assert_eq!(&back, b"c");
        seen(&rec, "a's Closed", closed_as(a_id, CloseReason::PeerClosed)).await;
        assert_eq!(count(&rec, is_evicted), 0, "nothing was evicted");
        assert!(probe.max_open.load(Ordering::SeqCst) <= 2);
        drop((b, c));
        handle.close().await;
        every_accepted_was_closed_once(&rec);
    });
}

// --- 3. pressure and the shrunk idle timeout ----------------------------------------------------

fn high_pressure_shrinks_the_idle_timeout<R: Rt>() {
    const SHRUNK: Duration = Duration::from_millis(800);
    run::<R>(LIMIT, async {
        let mut config = common::config();
        config.max_connections = Some(10);
        config.overload.high_pressure = 0.5;
        config.overload.shrink_idle_timeout = Some(SHRUNK);
        // No idle_timeout: nothing is reaped while the pressure is normal.
        let (handle, rec, probe, addr) = serve::<R>(config);
        let mut idle = Vec::new();
        for i in 0..4u8 {
            let mut c = connect(addr).await;
            echo_once(&mut c, &[i]).await;
            idle.push(c);
        }
        // 4 of 10: normal. Idle for longer than the shrunk timeout, and not reaped.
        let mut buf = [0u8; 1];
        assert!(
            completes_within(SHRUNK + Duration::from_millis(400), idle[0].read(&mut buf))
                .await
                .is_none(),
            "not reaped while the pressure is normal"
        );
        assert_eq!(
            count(&rec, |e| matches!(
                e,
                Ev::Server(ServerEvent::Pressure { .. })
            )),
            0
        );

        // A fifth, busy one: 5 of 10 is high.
        let mut busy = connect(addr).await;
        echo_once(&mut busy, b"busy").await;
        let busy_id = id_of(&rec, &busy).await;
        let stop = AtomicBool::new(false);
        let pinging = async {
            let mut n = 0u32;
            while !stop.load(Ordering::SeqCst) {
                echo_once(&mut busy, &n.to_be_bytes()).await;
                n += 1;
                async_io::Timer::after(Duration::from_millis(50)).await;
            }
            (busy, n)
        };
        let checks = async {
            let high = seen(&rec, "Pressure High", pressure(PressureLevel::High)).await;
            let Ev::Server(ServerEvent::Pressure { pressure: p, .. }) = high else {
                unreachable!()
            };
            assert!((0.5..1.0).contains(&p), "{p}");
            seen(
                &rec,
                "IdleTimeoutShrunk",
                overload(|act| *act == OverloadAction::IdleTimeoutShrunk(SHRUNK)),
            )
            .await;
            // The idle ones are reaped, as by an idle timeout.
            for c in &mut idle {
                let id = id_of(&rec, c).await;
                seen(
                    &rec,
                    "Closed IdleTimeout",
                    closed_as(id, CloseReason::IdleTimeout),
                )
                .await;
                assert_closed_by_server(c, 0).await;
                assert_eq!(probe.failure(id), Some(io::ErrorKind::TimedOut));
            }
            // Back to normal: the idle timeout is restored.
            seen(&rec, "Pressure Normal", pressure(PressureLevel::Normal)).await;
            seen(
                &rec,
                "IdleTimeoutRestored",
                overload(|act| *act == OverloadAction::IdleTimeoutRestored),
            )
            .await;
            stop.store(true, Ordering::SeqCst);
        };
        let ((mut busy, pings), ()) = futures_lite::future::zip(pinging, checks).await;
        assert!(pings > 0);
        // The busy one was never reaped, and at normal pressure it may idle again.
        assert!(
            completes_within(SHRUNK + Duration::from_millis(400), busy.read(&mut buf))
                .await
                .is_none(),
            "not reaped once the pressure is normal again"
        );
        echo_once(&mut busy, b"still here").await;
        assert_eq!(handle.open_connections(), 1);
        assert_eq!(handle.stats().closed_by(CloseReason::IdleTimeout), 4);
        // Exactly one episode: High then Normal, one shrink, one restore.
        let levels: Vec<PressureLevel> = rec
            .log()
            .into_iter()
            .filter_map(|e| match e {
                Ev::Server(ServerEvent::Pressure { level, .. }) => Some(level),
                _ => None,
            })
            .collect();
        assert_eq!(levels, [PressureLevel::High, PressureLevel::Normal]);
        drop(busy);
        seen(
            &rec,
            "busy's Closed",
            closed_as(busy_id, CloseReason::PeerClosed),
        )
        .await;
        handle.close().await;
        every_accepted_was_closed_once(&rec);
    });
}

/// berth's TCP listener whose accepts fail with EMFILE while `out` is set: a descriptor
/// limit the test turns on and off.
struct OutOfDescriptors {
    inner: berth::listener::TcpListener,
    out: Arc<AtomicBool>,
}

impl berth::listener::Listener for OutOfDescriptors {
    type Stream = berth::listener::TcpStream;
    async fn accept(&self) -> io::Result<berth::listener::Accepted<Self::Stream>> {
        if self.out.load(Ordering::SeqCst) {
            return Err(io::Error::from_raw_os_error(24)); // EMFILE
        }
        self.inner.accept().await
    }
    fn local_addr(&self) -> io::Result<berth::Addr> {
        self.inner.local_addr()
    }
}

/// Running out of descriptors is critical pressure and evicts the idlest connection; once
/// accepts succeed again, the pressure returns to normal (it once stayed critical for good
/// when an eviction, not a back-off, ended the episode).
fn pressure_returns_to_normal_after_descriptors_ran_out<R: Rt>() {
    use berth::runtime::Runtime as _;
    run::<R>(LIMIT, async {
        let mut config = common::config();
        config.overload.evict_idle_after = Some(Duration::from_millis(300));
        let rt = R::runtime();
        let out = Arc::new(AtomicBool::new(false));
        let listener = OutOfDescriptors {
            inner: berth::listener::TcpListener::bind(&config, rt.reactor()).unwrap(),
            out: out.clone(),
        };
        let rec = Recorder::new();
        let handle = rec
            .attach(Builder::new(config).runtime(rt))
            .listener(listener)
            .expect("listener")
            .serve(echo(Arc::new(Probe::default())));
        let addr = handle.local_addr().as_socket_addr().unwrap();

        let mut idle = connect(addr).await;
        echo_once(&mut idle, b"idle").await;
        let idle_id = id_of(&rec, &idle).await;
        idle_for(Duration::from_millis(400)).await;

        out.store(true, Ordering::SeqCst);
        // The accept already under way takes this client; the next one fails.
        let mut first = connect(addr).await;
        echo_once(&mut first, b"first").await;
        seen(&rec, "Pressure Critical", pressure(PressureLevel::Critical)).await;
        seen(
            &rec,
            "the eviction",
            closed_as(idle_id, CloseReason::Evicted),
        )
        .await;
        assert_closed_by_server(&mut idle, 0).await;

        // Descriptors again: the next accept succeeds, and the pressure is normal again.
        out.store(false, Ordering::SeqCst);
        let mut late = connect(addr).await;
        echo_once(&mut late, b"late").await;
        seen(&rec, "Pressure Normal", pressure(PressureLevel::Normal)).await;
        echo_once(&mut first, b"first again").await;
        assert_eq!(handle.open_connections(), 2);
        drop((first, late));
        handle.close().await;
        every_accepted_was_closed_once(&rec);
    });
}

// --- certificates and TLS clients ---------------------------------------------------------------

fn server_config(leaf: &Leaf) -> Arc<rustls::ServerConfig> {
    leaf.tls_config().load().unwrap().0
}

/// A client trusting `ca` that accepts a certificate valid for `name` whatever name it
/// connects to, offers `alpn`, and never resumes a session (every handshake is full, and
/// the certificate it reports is the one just presented).
fn client_as(ca: CertificateDer<'static>, name: &str, alpn: &[&str]) -> Arc<ClientConfig> {
    let mut config = common::pki::client_verifying_as(ca, name);
    config.alpn_protocols = alpn.iter().map(|p| p.as_bytes().to_vec()).collect();
    config.resumption = rustls::client::Resumption::disabled();
    Arc::new(config)
}

type ClientStream = futures_rustls::client::TlsStream<async_net::TcpStream>;

async fn tls_connect(
    addr: SocketAddr,
    sni: &str,
    config: Arc<ClientConfig>,
) -> io::Result<ClientStream> {
    let tcp = connect(addr).await;
    let name = ServerName::try_from(sni.to_owned()).unwrap();
    futures_rustls::TlsConnector::from(config)
        .connect(name, tcp)
        .await
}

/// One echo over an established session.
async fn tls_echo(s: &mut ClientStream, msg: &[u8]) -> io::Result<()> {
    s.write_all(msg).await?;
    s.flush().await?;
    let mut back = vec![0u8; msg.len()];
    s.read_exact(&mut back).await?;
    assert_eq!(back, msg);
    Ok(())
}

/// Handshake, one echo, clean close; the certificate the server presented.
async fn try_echo(
    addr: SocketAddr,
    sni: &str,
    config: Arc<ClientConfig>,
) -> io::Result<CertificateDer<'static>> {
    let mut s = tls_connect(addr, sni, config).await?;
    tls_echo(&mut s, b"ping").await?;
    let presented = s.get_ref().1.peer_certificates().unwrap()[0].clone();
    s.close().await?;
    Ok(presented)
}

/// Serves TLS echo with `config` (its `tls` set) and, if given, a `tls_select` hook.
fn serve_tls<R: Rt, F, Fut>(
    config: Config,
    select: Option<F>,
) -> (ServerHandle, Recorder, SocketAddr)
where
    F: Fn(ClientHelloInfo) -> Fut + Send + Sync + 'static,
    Fut: std::future::Future<Output = Option<Arc<rustls::ServerConfig>>> + Send + 'static,
{
    let rec = Recorder::new();
    let mut builder = rec.attach(Builder::new(config).runtime(R::runtime()));
    if let Some(select) = select {
        builder = builder.tls_select(select);
    }
    let handle = builder
        .bind()
        .expect("bind")
        .serve(echo(Arc::new(Probe::default())));
    let addr = handle.local_addr().as_socket_addr().unwrap();
    (handle, rec, addr)
}

type NoSelect = fn(ClientHelloInfo) -> std::future::Ready<Option<Arc<rustls::ServerConfig>>>;

async fn next_hello(hellos: &async_channel::Receiver<ClientHelloInfo>) -> ClientHelloInfo {
    within(LIMIT, "the tls_select hook", hellos.recv())
        .await
        .unwrap()
}

fn tls_failures(rec: &Recorder) -> Vec<(u64, TlsFailure)> {
    rec.log()
        .into_iter()
        .filter_map(|e| match e {
            Ev::Conn(ConnEvent::TlsFailed { id, reason, .. }) => Some((id, reason)),
            _ => None,
        })
        .collect()
}

// --- 4. max_handshakes ---------------------------------------------------------------------------

/// A stalled handshake holds the only place: the next waits, and completes once it is done.
fn max_handshakes_makes_the_others_wait<R: Rt>() {
    run::<R>(LIMIT, async {
        let pki = Pki::new("overload test CA");
        let own = pki.leaf(&["localhost"]);
        let mut config = common::config();
        config.tls = Some(own.tls_config());
        config.max_handshakes = Some(1);
        // The handshake of "hold.test" stalls (its hook waits) until the test releases it;
        // the hook runs inside the handshake, so while it waits it holds the place.
        let (entered_tx, entered) = async_channel::unbounded::<String>();
        let (release_tx, release) = async_channel::unbounded::<()>();
        let select = move |hello: ClientHelloInfo| {
            let (entered_tx, release) = (entered_tx.clone(), release.clone());
            async move {
                let name = hello.server_name.unwrap_or_default();
                let _ = entered_tx.send(name.clone()).await;
                if name == "hold.test" {
                    let _ = release.recv().await;
                }
                None
            }
        };
        let (handle, rec, addr) = serve_tls::<R, _, _>(config, Some(select));
        let c = || client_as(pki.ca_der(), "localhost", &[]);
        let ex = LocalExecutor::new();
        ex.run(async {
            let hold = ex.spawn(tls_connect(addr, "hold.test", c()));
            assert_eq!(
                within(LIMIT, "hold's hook", entered.recv()).await.unwrap(),
                "hold.test"
            );
            let mut next = ex.spawn(try_echo(addr, "next.test", c()));
            seen_n(&rec, "next's Accepted", 2, |e| {
                matches!(e, Ev::Conn(ConnEvent::Accepted { .. }))
            })
            .await;
            assert!(
                completes_within(Duration::from_millis(400), &mut next)
                    .await
                    .is_none(),
                "the second handshake waits for the place"
            );
            assert!(entered.is_empty(), "its ClientHello was not even read");
            // The first completes; then the second gets the place and completes.
            release_tx.send(()).await.unwrap();
            let mut hold = within(LIMIT, "hold's handshake", hold).await.unwrap();
            tls_echo(&mut hold, b"held").await.unwrap();
            assert_eq!(
                own.der,
                within(LIMIT, "next's handshake", next).await.unwrap()
            );
            assert_eq!(entered.recv().await.unwrap(), "next.test");
            // A burst through the single place: every one completes.
            let burst: Vec<_> = (0..12)
                .map(|_| ex.spawn(try_echo(addr, "burst.test", c())))
                .collect();
            for task in burst {
                within(LIMIT, "a burst handshake", task).await.unwrap();
            }
            hold.close().await.unwrap();
        })
        .await;
        assert_eq!(handle.stats().tls_handshakes, 14);
        assert!(tls_failures(&rec).is_empty(), "{:?}", tls_failures(&rec));
        seen_n(&rec, "every Closed", 14, |e| {
            matches!(e, Ev::Conn(ConnEvent::Closed { .. }))
        })
        .await;
        handle.close().await;
        every_accepted_was_closed_once(&rec);
    });
}

/// Waiting for a place counts against the handshake timeout: a handshake that waits times
/// out at its own deadline rather than hanging (or waiting a timeout and then another).
fn a_waiting_handshake_times_out<R: Rt>() {
    const TIMEOUT: Duration = Duration::from_millis(1200);
    run::<R>(LIMIT, async {
        let pki = Pki::new("overload test CA");
        let own = pki.leaf(&["localhost"]);
        let mut config = common::config();
        config.tls = Some(own.tls_config());
        config.max_handshakes = Some(1);
        config.handshake_timeout = TIMEOUT;
        // Every handshake stalls for good once it has the place.
        let (entered_tx, entered) = async_channel::unbounded::<()>();
        let select = move |_: ClientHelloInfo| {
            let entered_tx = entered_tx.clone();
            async move {
                let _ = entered_tx.send(()).await;
                std::future::pending::<Option<Arc<rustls::ServerConfig>>>().await
            }
        };
        let (handle, rec, addr) = serve_tls::<R, _, _>(config, Some(select));
        let c = || client_as(pki.ca_der(), "localhost", &[]);
        let ex = LocalExecutor::new();
        ex.run(async {
            let first = ex.spawn(tls_connect(addr, "stall.test", c()));
            within(LIMIT, "the first hook", entered.recv())
                .await
                .unwrap();
            // The first holds the place; the second waits for it.
            let started = Instant::now();
            let second = ex.spawn(async move {
                let result = tls_connect(addr, "stall.test", c()).await;
                (result.map(drop), started.elapsed())
            });
            let (second, waited) = within(LIMIT, "the second's end", second).await;
            assert!(second.is_err(), "the second handshake failed");
            assert!(within(LIMIT, "the first's end", first).await.is_err());
            // It ended at its own deadline: not before, and long before the first's
            // deadline plus a whole timeout of its own.
            assert!(waited >= TIMEOUT - Duration::from_millis(20), "{waited:?}");
            assert!(
                waited < TIMEOUT * 2 - Duration::from_millis(300),
                "{waited:?}"
            );
        })
        .await;
        seen_n(&rec, "both TlsFailed", 2, |e| {
            matches!(e, Ev::Conn(ConnEvent::TlsFailed { .. }))
        })
        .await;
        let failures = tls_failures(&rec);
        assert_eq!(
            failures.iter().map(|(_, r)| r.clone()).collect::<Vec<_>>(),
            [TlsFailure::Timeout, TlsFailure::Timeout]
        );
        seen_n(&rec, "both Closed", 2, |e| {
            matches!(
                e,
                Ev::Conn(ConnEvent::Closed {
                    reason: CloseReason::TlsFailed,
                    ..
                })
            )
        })
        .await;
        assert_eq!(handle.open_connections(), 0);
        handle.close().await;
        every_accepted_was_closed_once(&rec);
    });
}

/// Places freed together all reach waiters: with `max_handshakes = 2`, two handshakes that
/// end in the same turn of the executor free two places, and both waiting handshakes must
/// get one. (Each freed place must wake a waiter of its own: a wake-up that only makes sure
/// "at least one" waiter is notified is lost when the first is not yet running.)
///
/// The server runs on a one-thread executor, so the two ends run back to back.
#[test]
fn places_freed_together_all_reach_waiters() {
    let executor = Arc::new(async_executor::Executor::new());
    let (stop_tx, stop_rx) = async_channel::bounded::<()>(1);
    let thread = {
        let executor = executor.clone();
        std::thread::spawn(move || async_io::block_on(executor.run(stop_rx.recv())))
    };
    run::<SmolRt>(LIMIT, async {
        let pki = Pki::new("overload test CA");
        let own = pki.leaf(&["localhost"]);
        let mut config = common::config();
        config.tls = Some(own.tls_config());
        config.max_handshakes = Some(2);
        // "hold.test" stalls until `hold` closes, "wait.test" until `wait` closes (the end).
        let (entered_tx, entered) = async_channel::unbounded::<String>();
        let (hold_tx, hold) = async_channel::unbounded::<()>();
        let (wait_tx, wait) = async_channel::unbounded::<()>();
        let select = move |hello: ClientHelloInfo| {
            let (entered_tx, hold, wait) = (entered_tx.clone(), hold.clone(), wait.clone());
            async move {
                let name = hello.server_name.unwrap_or_default();
                let _ = entered_tx.send(name.clone()).await;
                let gate = if name == "hold.test" { hold } else { wait };
                let _ = gate.recv().await;
                None
            }
        };
        let rec = Recorder::new();
        let handle = rec
            .attach(
                Builder::new(config)
                    .runtime(berth::runtime::Smol::with_executor(executor.clone()))
                    .tls_select(select),
            )
            .bind()
            .unwrap()
            .serve(echo(Arc::new(Probe::default())));
        let addr = handle.local_addr().as_socket_addr().unwrap();
        let c = || client_as(pki.ca_der(), "localhost", &[]);
        let ex = LocalExecutor::new();
        ex.run(async {
            // Two handshakes hold both places...
            let holders: Vec<_> = (0..2)
                .map(|_| ex.spawn(tls_connect(addr, "hold.test", c())))
                .collect();
            for _ in 0..2 {
                let name = within(EVENT_WAIT, "a holder's hook", entered.recv()).await;
                assert_eq!(name.unwrap(), "hold.test");
            }
            // ...two more wait for a place...
            let waiters: Vec<_> = (0..2)
                .map(|_| ex.spawn(tls_connect(addr, "wait.test", c())))
                .collect();
            seen_n(&rec, "the waiters' Accepted", 4, |e| {
                matches!(e, Ev::Conn(ConnEvent::Accepted { .. }))
            })
            .await;
            assert!(
                completes_within(Duration::from_millis(300), entered.recv())
                    .await
                    .is_none(),
                "no place is free yet"
            );
            // ...the holders' clients leave, then both holders end at once: their
            // handshakes fail as soon as they go on (their peers are gone).
            drop(holders);
            drop(hold_tx);
            seen_n(&rec, "the holders' TlsFailed", 2, |e| {
                matches!(e, Ev::Conn(ConnEvent::TlsFailed { .. }))
            })
            .await;
            // Both waiters get a place: both reach the hook.
            for n in 1..=2 {
                let name = within(
                    Duration::from_secs(3),
                    &format!("waiter {n} to get a freed place (a lost wake-up?)"),
                    entered.recv(),
                )
                .await;
                assert_eq!(name.unwrap(), "wait.test");
            }
            drop(wait_tx);
            for waiter in waiters {
                let mut s = within(LIMIT, "a waiter's handshake", waiter).await.unwrap();
                tls_echo(&mut s, b"waited").await.unwrap();
            }
        })
        .await;
        handle.close().await;
        every_accepted_was_closed_once(&rec);
    });
    let _ = stop_tx.try_send(());
    let _stopped = thread.join().unwrap();
}

// --- 5. tls_select ----------------------------------------------------------------------------------

fn tls_select_chooses_per_server_name<R: Rt>() {
    run::<R>(LIMIT, async {
        let pki = Pki::new("overload test CA");
        let own = pki.leaf(&["default.test"]);
        let a = pki.leaf(&["a.test"]);
        let b = pki.leaf(&["b.test"]);
        let mut a_config = (*server_config(&a)).clone();
        a_config.alpn_protocols = vec![b"x-a".to_vec()];
        let tenants: Arc<HashMap<String, Arc<rustls::ServerConfig>>> = Arc::new(HashMap::from([
            ("a.test".to_owned(), Arc::new(a_config)),
            ("b.test".to_owned(), server_config(&b)),
        ]));
        let (hellos_tx, hellos) = async_channel::unbounded::<ClientHelloInfo>();
        // The hook looks the tenant up asynchronously: a store that answers later.
        let select = move |hello: ClientHelloInfo| {
            let (tenants, hellos_tx) = (tenants.clone(), hellos_tx.clone());
            async move {
                async_io::Timer::after(Duration::from_millis(20)).await;
                let _ = hellos_tx.send(hello.clone()).await;
                tenants.get(hello.server_name.as_deref()?).cloned()
            }
        };
        let mut config = common::config();
        config.tls = Some(own.tls_config());
        let (handle, rec, addr) = serve_tls::<R, _, _>(config, Some(select));

        // a.test, offering two protocols: its certificate, and its configuration's ALPN.
        let mut s = tls_connect(
            addr,
            "a.test",
            client_as(pki.ca_der(), "a.test", &["h2", "x-a"]),
        )
        .await
        .unwrap();
        assert_eq!(s.get_ref().1.peer_certificates().unwrap()[0], a.der);
        assert_eq!(s.get_ref().1.alpn_protocol(), Some(&b"x-a"[..]));
        tls_echo(&mut s, b"to a").await.unwrap();
        let seen_a = next_hello(&hellos).await;
        assert_eq!(seen_a.server_name.as_deref(), Some("a.test"));
        assert_eq!(seen_a.alpn, [b"h2".to_vec(), b"x-a".to_vec()]);
        s.close().await.unwrap();

        // b.test, no ALPN.
        let client_b = client_as(pki.ca_der(), "b.test", &[]);
        assert_eq!(try_echo(addr, "b.test", client_b).await.unwrap(), b.der);
        let seen_b = next_hello(&hellos).await;
        assert_eq!(seen_b.server_name.as_deref(), Some("b.test"));
        assert!(seen_b.alpn.is_empty());

        // An unknown name, and no name at all: the listener's own certificate.
        let fallback = client_as(pki.ca_der(), "default.test", &["h2"]);
        assert_eq!(
            try_echo(addr, "c.test", fallback.clone()).await.unwrap(),
            own.der
        );
        let seen_c = next_hello(&hellos).await;
        assert_eq!(seen_c.server_name.as_deref(), Some("c.test"));
        assert_eq!(seen_c.alpn, [b"h2".to_vec()]);
        let tcp = connect(addr).await;
        let ip = ServerName::IpAddress(std::net::Ipv4Addr::LOCALHOST.into());
        let mut s = futures_rustls::TlsConnector::from(fallback)
            .connect(ip, tcp)
            .await
            .unwrap();
        assert_eq!(s.get_ref().1.peer_certificates().unwrap()[0], own.der);
        tls_echo(&mut s, b"no name").await.unwrap();
        assert_eq!(next_hello(&hellos).await.server_name, None);
        s.close().await.unwrap();

        // The server saw the names the clients asked for.
        seen_n(&rec, "four TlsEstablished", 4, |e| {
            matches!(e, Ev::Conn(ConnEvent::TlsEstablished { .. }))
        })
        .await;
        let names: Vec<Option<String>> = rec
            .log()
            .into_iter()
            .filter_map(|e| match e {
                Ev::Conn(ConnEvent::TlsEstablished { info, .. }) => Some(info.server_name),
                _ => None,
            })
            .collect();
        assert_eq!(
            names,
            [
                Some("a.test".to_owned()),
                Some("b.test".to_owned()),
                Some("c.test".to_owned()),
                None
            ]
        );
        assert!(tls_failures(&rec).is_empty());
        handle.close().await;
        every_accepted_was_closed_once(&rec);
    });
}

// --- 6. watched certificate files ------------------------------------------------------------------

fn watched_certificates_reload<R: Rt>() {
    const WATCH: Duration = Duration::from_millis(100);
    let dir = TempDir::new("overload", &format!("watch-{}", R::NAME));
    run::<R>(LIMIT, async {
        let pki = Pki::new("overload test CA");
        let leaves: Vec<Leaf> = (0..5).map(|_| pki.leaf(&["localhost"])).collect();
        let (cert, key) = (dir.join("cert.pem"), dir.join("key.pem"));
        std::fs::write(&cert, &leaves[0].cert_pem).unwrap();
        std::fs::write(&key, &leaves[0].key_pem).unwrap();
        let mut tls = TlsConfig::from_pem_files(&cert, &key);
        tls.watch = Some(WATCH);
        let mut config = common::config();
        config.tls = Some(tls);
        let (handle, rec, addr) = serve_tls::<R, NoSelect, _>(config, None);
        let c = client_as(pki.ca_der(), "localhost", &[]);
        let reloaded = |e: &Ev| matches!(e, Ev::Server(ServerEvent::TlsReloaded { .. }));
        let failed = |e: &Ev| matches!(e, Ev::Server(ServerEvent::TlsReloadFailed { .. }));
        let generation = |der: &CertificateDer<'static>| {
            leaves
                .iter()
                .position(|l| l.der == *der)
                .unwrap_or_else(|| panic!("a certificate the test never served"))
        };

        // A stream of handshakes from start to end: none may fail.
        let stop = AtomicBool::new(false);
        let stream = async {
            let mut presented = Vec::new();
            while !stop.load(Ordering::SeqCst) {
                let der = try_echo(addr, "localhost", c.clone())
                    .await
                    .unwrap_or_else(|e| panic!("handshake {} failed: {e}", presented.len() + 1));
                presented.push(generation(&der));
                // Let the steps run on a single-threaded block_on.
                futures_lite::future::yield_now().await;
            }
            presented
        };
        let steps = async {
            assert_eq!(
                generation(&try_echo(addr, "localhost", c.clone()).await.unwrap()),
                0
            );

            // Atomic renames over both files (two renames: the watcher may see the new
            // certificate with the old key for one interval, which fails and is retried).
            let before = count(&rec, reloaded);
            replace(&cert, &leaves[1].cert_pem);
            replace(&key, &leaves[1].key_pem);
            seen_n(&rec, "TlsReloaded after the renames", before + 1, reloaded).await;
            assert_eq!(
                generation(&try_echo(addr, "localhost", c.clone()).await.unwrap()),
                1
            );

            // A key that does not match: reported once, the last good pair stays.
            let (failures, errors) = (
                count(&rec, failed),
                count(&rec, |e| matches!(e, Ev::Error(_))),
            );
            replace(&key, &leaves[2].key_pem);
            seen_n(&rec, "TlsReloadFailed", failures + 1, failed).await;
            seen_n(&rec, "the error hook", errors + 1, |e| {
                matches!(e, Ev::Error(_))
            })
            .await;
            let error = rec
                .log()
                .into_iter()
                .filter_map(|e| match e {
                    Ev::Error(s) => Some(s),
                    _ => None,
                })
                .last()
                .unwrap();
            assert!(error.contains("does not match"), "{error}");
            assert!(error.contains("key.pem"), "{error}");
            let Ev::Server(ServerEvent::TlsReloadFailed { reason, .. }) =
                rec.log().into_iter().rfind(|e| failed(e)).unwrap()
            else {
                unreachable!()
            };
            assert!(reason.contains("does not match"), "{reason}");
            for _ in 0..3 {
                assert_eq!(
                    generation(&try_echo(addr, "localhost", c.clone()).await.unwrap()),
                    1
                );
            }
            // Unchanged broken files are not reported again.
            assert!(
                completes_within(WATCH * 4, seen_n(&rec, "", failures + 2, failed))
                    .await
                    .is_none(),
                "the same broken files are reported once"
            );

            // Kubernetes style: cert.pem and key.pem become links into `..data`, itself a
            // link to a revision directory...
            let before = count(&rec, reloaded);
            revision(&dir, "..rev1", &leaves[3]);
            relink(&dir.join("..data"), "..rev1");
            relink(&cert, "..data/cert.pem");
            relink(&key, "..data/key.pem");
            seen_n(&rec, "TlsReloaded after linking", before + 1, reloaded).await;
            assert_eq!(
                generation(&try_echo(addr, "localhost", c.clone()).await.unwrap()),
                3
            );
            // ...and a new revision is published by swapping `..data` alone: both files
            // change at once.
            let before = count(&rec, reloaded);
            revision(&dir, "..rev2", &leaves[4]);
            relink(&dir.join("..data"), "..rev2");
            seen_n(&rec, "TlsReloaded after the swap", before + 1, reloaded).await;
            assert_eq!(
                generation(&try_echo(addr, "localhost", c.clone()).await.unwrap()),
                4
            );
            stop.store(true, Ordering::SeqCst);
        };
        let (presented, ()) = futures_lite::future::zip(stream, steps).await;
        // The stream saw the certificates in order, never going back.
        assert!(presented.len() >= 5, "{presented:?}");
        assert!(presented.windows(2).all(|w| w[0] <= w[1]), "{presented:?}");
        assert!(!presented.contains(&2), "{presented:?}");
        assert!(tls_failures(&rec).is_empty(), "{:?}", tls_failures(&rec));
        handle.close().await;
        every_accepted_was_closed_once(&rec);
    });
}

on_smol_and_tokio!(
    eviction_at_max_connections_closes_the_idlest,
    without_eviction_a_newcomer_waits,
    nothing_idle_enough_pauses_accepting,
    high_pressure_shrinks_the_idle_timeout,
    pressure_returns_to_normal_after_descriptors_ran_out,
    max_handshakes_makes_the_others_wait,
    a_waiting_handshake_times_out,
    tls_select_chooses_per_server_name,
    watched_certificates_reload,
);
