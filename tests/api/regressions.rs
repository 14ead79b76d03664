//! Regression tests for bugs found in review, each failing before its fix:
//! - the drain counted connections the server had already closed (idle timeout, eviction, a
//!   handle) as forced, when their task had not ended by the deadline;
//! - the drain check of an ended connection read the flags of the next connection in its
//!   slot (and waited for that one's first-request grace);
//! - a watched certificate file that blocks on read (a slow or network file system, here a
//!   FIFO) stalled the runtime's thread, and every connection on it;
//! - after an eviction at the descriptor limit, the accept loop waited up to 1 s for a close
//!   without watching for the stop, delaying a shutdown by that much.
//!
//! (The per-IP/global rate ordering is tested where it lives, in `src/admission.rs`.)

use crate::common;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use berth::{Builder, Config, Conn};
use common::{LIMIT, Rt, connect, run, within};
use futures_lite::{AsyncReadExt, AsyncWriteExt};

fn a_connection_the_server_closed_is_not_counted_as_forced<R: Rt>() {
    run::<R>(LIMIT, async {
        let (tx, rx) = async_channel::bounded::<Conn>(1);
        let (handle, _rec) = common::start::<R>(common::config(), move |conn: Conn| {
            let tx = tx.clone();
            async move {
                // The connection lives on elsewhere (here: in the test), beyond its handler.
                let _ = tx.send(conn).await;
            }
        });
        let addr = handle.local_addr().as_socket_addr().unwrap();
        let _client = connect(addr).await;
        let conn = within(LIMIT, "the connection", rx.recv()).await.unwrap();
        assert!(conn.handle().close(), "closed by the server");
        // Its task cannot end before the deadline: the test holds its `Conn`.
        let report = handle
            .shutdown_within(Duration::from_millis(100))
            .await
            .expect("nothing was forced: the server had closed it already");
        assert_eq!(report.forced, 0, "{report:?}");
        drop(conn);
    });
}

fn a_drain_waiter_of_an_ended_connection_is_not_fooled_by_the_next<R: Rt>() {
    run::<R>(LIMIT, async {
        let mut config = common::config();
        // A connection that has sent nothing would wait this long for its drain.
        config.first_request_grace = Duration::from_secs(3600);
        let (tx, rx) = async_channel::bounded::<berth::Draining>(1);
        let (handle, _rec) = common::start::<R>(config, move |mut conn: Conn| {
            let tx = tx.clone();
            async move {
                let mut byte = [0u8; 1];
                if let Ok(1) = conn.read(&mut byte).await {
                    // The first connection: hand out its drain waiter, and end.
                    let _ = tx.send(conn.draining()).await;
                }
                // The second (silent) one stays until the drain is forced.
            }
        });
        let addr = handle.local_addr().as_socket_addr().unwrap();
        let mut first = connect(addr).await;
        first.write_all(b"x").await.unwrap();
        let waiter = within(LIMIT, "the drain waiter", rx.recv()).await.unwrap();
        assert_eq!(common::ending(&mut first).await, common::EOF);
        within(LIMIT, "the first to close", async {
            while handle.open_connections() > 0 {
                async_io::Timer::after(Duration::from_millis(1)).await;
            }
        })
        .await;
        // The next connection takes the freed slot; it has sent nothing.
        let _second = connect(addr).await;
        within(LIMIT, "the second to open", async {
            while handle.open_connections() == 0 {
                async_io::Timer::after(Duration::from_millis(1)).await;
            }
        })
        .await;
        let stopping = handle.clone();
        let drain = async move { stopping.shutdown_within(Duration::from_secs(3600)).await };
        let drain = common_spawn::<R, _>(drain);
        within(
            Duration::from_secs(10),
            "the ended connection's drain waiter (it must not wait for the next one's grace)",
            waiter,
        )
        .await;
        handle.close().await;
        let _ = within(LIMIT, "the shutdown", drain).await;
    });
}

fn a_watched_file_that_blocks_stalls_no_connection<R: Rt>() {
    let dir = common::TempDir::new("regressions", &format!("fifo-{}", R::NAME));
    let pki = common::pki::Pki::new("regressions CA");
    let leaf = pki.leaf(&["localhost"]);
    let (cert, key) = (dir.join("cert.pem"), dir.join("key.pem"));
    std::fs::write(&cert, &leaf.cert_pem).unwrap();
    std::fs::write(&key, &leaf.key_pem).unwrap();
    let mut tls = berth::tls::TlsConfig::from_pem_files(&cert, &key);
    tls.watch = Some(Duration::from_millis(10));
    // A TLS listener whose files are watched, and a plain one to be served meanwhile.
    let mut config = Config::new("127.0.0.1:0");
    config.tls = Some(tls);
    config.listeners = vec![berth::ListenerConfig::tcp("127.0.0.1:0")];
    // One executor thread: a blocked task would stall it whole.
    let handle = single_threaded::<R>(Builder::new(config))
        .bind()
        .unwrap()
        .serve(|mut conn: Conn| async move {
            let mut buf = [0u8; 64];
            while let Ok(n @ 1..) = conn.read(&mut buf).await {
                if conn.write_all(&buf[..n]).await.is_err() {
                    return;
                }
            }
        });
    let plain = handle.listeners()[1].1.as_socket_addr().unwrap();
    // The certificate becomes a FIFO: reading it blocks until someone writes.
    std::fs::remove_file(&cert).unwrap();
    let made = std::process::Command::new("mkfifo")
        .arg(&cert)
        .status()
        .unwrap();
    assert!(made.success());
    // Once the watcher has the FIFO open for reading, a writer can open it without
    // waiting; keeping the writer open (and silent) leaves the reader blocked in read().
    let writer = within_blocking(LIMIT, "the watcher to open the FIFO", || {
        use std::os::unix::fs::OpenOptionsExt;
        std::fs::OpenOptions::new()
            .write(true)
            .custom_flags(rustix::fs::OFlags::NONBLOCK.bits() as i32)
            .open(&cert)
            .ok()
    });
    // The watcher is blocked now. The plain listener still serves.
    async_io::block_on(async move {
        let mut c = connect(plain).await;
        within(
            Duration::from_secs(10),
            "an echo while the watcher blocks",
            async {
                c.write_all(b"ping").await.unwrap();
                let mut back = [0u8; 4];
                c.read_exact(&mut back).await.unwrap();
                assert_eq!(&back, b"ping");
            },
        )
        .await;
    });
    drop(writer); // the watcher reads an empty file now, and reports it broken
    async_io::block_on(within(LIMIT, "close", handle.close()));
}

/// `builder` on an executor of `R` with one thread.
fn single_threaded<R: Rt>(builder: Builder) -> Builder {
    if R::NAME == "tokio" {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let handle = rt.handle().clone();
        std::thread::spawn(move || rt.block_on(std::future::pending::<()>()));
        builder.runtime(berth::runtime::Tokio::from_handle(handle))
    } else {
        let executor = Arc::new(async_executor::Executor::new());
        let ex = executor.clone();
        std::thread::spawn(move || async_io::block_on(ex.run(std::future::pending::<()>())));
        builder.runtime(berth::runtime::Smol::with_executor(executor))
    }
}

/// Polls `f` (a non-blocking attempt) until it gives a value, failing after `limit`.
fn within_blocking<T>(limit: Duration, what: &str, mut f: impl FnMut() -> Option<T>) -> T {
    let start = Instant::now();
    loop {
        if let Some(value) = f() {
            return value;
        }
        assert!(start.elapsed() < limit, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(2));
    }
}

/// Spawns on the runtime under test and gives back the output.
fn common_spawn<R: Rt, T: Send + 'static>(
    future: impl std::future::Future<Output = T> + Send + 'static,
) -> impl std::future::Future<Output = T> {
    use berth::runtime::Runtime as _;
    let (tx, rx) = async_channel::bounded(1);
    R::runtime().spawn(Box::pin(async move {
        let _ = tx.send(future.await).await;
    }));
    async move { rx.recv().await.expect("the task ran") }
}

/// Faults that make every accept fail with EMFILE once armed.
#[derive(Debug, Default, Clone)]
struct OutOfDescriptors(Arc<AtomicBool>);

impl berth::fault::Faults for OutOfDescriptors {
    fn fire(&self, point: berth::fault::Point) -> bool {
        point == berth::fault::Point::AcceptEmfile && self.0.load(Ordering::SeqCst)
    }
    fn delay(&self, _: berth::fault::Point) -> Duration {
        Duration::ZERO
    }
}

fn a_stop_after_an_eviction_at_the_descriptor_limit_is_not_delayed<R: Rt>() {
    run::<R>(LIMIT, async {
        let mut config = common::config();
        config.overload.evict_idle_after = Some(Duration::from_millis(1));
        let faults = OutOfDescriptors::default();
        let (tx, rx) = async_channel::bounded::<Conn>(1);
        let server = Builder::new(config)
            .runtime(R::runtime())
            .faults(faults.clone())
            .bind()
            .unwrap();
        let handle = server.serve(move |conn: Conn| {
            let tx = tx.clone();
            async move {
                // Held by the test: its descriptor is not freed when it is evicted.
                let _ = tx.send(conn).await;
            }
        });
        let addr = handle.local_addr().as_socket_addr().unwrap();
        let _idle = connect(addr).await;
        let held = within(LIMIT, "the connection", rx.recv()).await.unwrap();
        // Out of descriptors (the loop's pending accept still takes one more client), and a
        // newcomer waits in the backlog: an idle connection is evicted, then the loop waits
        // for its descriptor, which the test keeps.
        faults.0.store(true, Ordering::SeqCst);
        let _taken = connect(addr).await;
        let taken = within(LIMIT, "the last accepted", rx.recv()).await.unwrap();
        let _newcomer = connect(addr).await;
        let handles = [held.handle(), taken.handle()];
        within(LIMIT, "the eviction", async {
            while handles.iter().all(|h| h.is_connected()) {
                async_io::Timer::after(Duration::from_millis(1)).await;
            }
        })
        .await;
        // Stopping now must not wait for that descriptor: the listener closes at once, so a
        // connect is refused well before the 1 s the loop would otherwise wait.
        let stopping = handle.clone();
        let stop = common_spawn::<R, _>(async move { stopping.close().await });
        let asked = Instant::now();
        within(LIMIT, "the listener to close", async {
            while async_net::TcpStream::connect(addr).await.is_ok() {
                async_io::Timer::after(Duration::from_millis(2)).await;
            }
        })
        .await;
        let took = asked.elapsed();
        assert!(
            took < Duration::from_millis(600),
            "the accept loop kept its listener {took:?} after the stop"
        );
        drop((held, taken));
        within(LIMIT, "close", stop).await;
    });
}

on_smol_and_tokio!(
    a_connection_the_server_closed_is_not_counted_as_forced,
    a_drain_waiter_of_an_ended_connection_is_not_fooled_by_the_next,
    a_watched_file_that_blocks_stalls_no_connection,
    a_stop_after_an_eviction_at_the_descriptor_limit_is_not_delayed,
);
