//! `berth::http` in process, on smol, tokio and async-std: keep-alive, the drain (the next
//! request answered with `Connection: close`, quiet connections closed after the grace,
//! requests in flight completed, HTTP/2 GOAWAY), timeouts that know about requests (idle
//! between requests only, header timeout, request timeout), and `Conn::busy` for any
//! protocol.

use crate::common;

use std::convert::Infallible;
use std::sync::Arc;
use std::time::{Duration, Instant};

use berth::http::{ConnInfo, Http};
use berth::runtime::Runtime as _;
use berth::{Config, ServerHandle};
use common::{LIMIT, Rt, connect, ending, run, start, within};
use futures_lite::{AsyncReadExt, AsyncWriteExt};
use http_body_util::{BodyExt, Full};
use hyper::body::{Bytes, Incoming};
use hyper::{Request, Response, StatusCode};

/// Instantiates each generic test on smol, tokio and async-std.
macro_rules! on_every_runtime {
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
                #[test]
                fn async_std() {
                    super::$name::<super::common::AsyncStdRt>()
                }
            }
        )*
    };
}

type Reply = Response<Full<Bytes>>;

/// `GET /` → the client's address (from `ConnInfo`); `GET /slow?ms=N` → `slow` after N ms
/// on the connection's runtime.
async fn route(req: Request<Incoming>) -> Result<Reply, Infallible> {
    let info = req
        .extensions()
        .get::<Arc<ConnInfo>>()
        .expect("ConnInfo in every request")
        .clone();
    let body = match req.uri().path() {
        "/slow" => {
            let ms: u64 = req
                .uri()
                .query()
                .and_then(|q| q.strip_prefix("ms="))
                .and_then(|ms| ms.parse().ok())
                .unwrap_or(0);
            // Tell a test waiting on this server that the request is in the service.
            let entered = lock_entered().get(&info.local_addr().to_string()).cloned();
            if let Some(entered) = entered {
                let _ = entered.try_send(());
            }
            info.runtime().sleep(Duration::from_millis(ms)).await;
            "slow".to_string()
        }
        "/echo" => {
            let body = req.into_body().collect().await.expect("body").to_bytes();
            return Ok(Response::new(Full::new(body)));
        }
        _ => info.peer_addr().to_string(),
    };
    Ok(Response::new(Full::new(Bytes::from(body))))
}

/// Per server (its local address), a channel `/slow` signals on when a request enters it:
/// a drain started after that signal must let the request finish.
static SLOW_ENTERED: std::sync::LazyLock<
    std::sync::Mutex<std::collections::HashMap<String, async_channel::Sender<()>>>,
> = std::sync::LazyLock::new(Default::default);

fn lock_entered()
-> std::sync::MutexGuard<'static, std::collections::HashMap<String, async_channel::Sender<()>>> {
    SLOW_ENTERED.lock().unwrap_or_else(|e| e.into_inner())
}

/// A receiver of the signal `/slow` sends when a request to the server at `addr` enters it.
fn slow_entered(addr: std::net::SocketAddr) -> async_channel::Receiver<()> {
    let (tx, rx) = async_channel::unbounded();
    lock_entered().insert(berth::Addr::from(addr).to_string(), tx);
    rx
}

/// The routes above as a nameable service.
#[derive(Clone, Copy)]
struct Routes;

impl hyper::service::Service<Request<Incoming>> for Routes {
    type Response = Reply;
    type Error = Infallible;
    type Future =
        std::pin::Pin<Box<dyn std::future::Future<Output = Result<Reply, Infallible>> + Send>>;

    fn call(&self, req: Request<Incoming>) -> Self::Future {
        Box::pin(route(req))
    }
}

fn http() -> Http<Routes> {
    Http::new(Routes)
}

fn serve<R: Rt>(config: Config, http: Http<Routes>) -> (ServerHandle, std::net::SocketAddr) {
    let (handle, _rec) = start::<R>(config, http);
    let addr = handle.local_addr().as_socket_addr().expect("tcp");
    (handle, addr)
}

/// One HTTP/1.1 response as read off the wire.
#[derive(Debug)]
struct Answer {
    status: u16,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

impl Answer {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }
}

async fn get(stream: &mut async_net::TcpStream, path: &str) -> Answer {
    let request = format!("GET {path} HTTP/1.1\r\nHost: berth\r\n\r\n");
    stream.write_all(request.as_bytes()).await.expect("send");
    read_answer(stream).await
}

/// Reads one response with a `content-length` body.
async fn read_answer(stream: &mut async_net::TcpStream) -> Answer {
    within(LIMIT, "a response", async {
        let mut head = Vec::new();
        let mut byte = [0u8; 1];
        while !head.ends_with(b"\r\n\r\n") {
            let n = stream.read(&mut byte).await.expect("read head");
            assert_eq!(n, 1, "connection ended inside a response head: {head:?}");
            head.push(byte[0]);
        }
        let head = String::from_utf8(head).expect("utf-8 head");
        let mut lines = head.split("\r\n");
        let status = lines.next().unwrap()[9..12].parse().unwrap();
        let headers: Vec<(String, String)> = lines
            .filter(|l| !l.is_empty())
            .map(|l| {
                let (n, v) = l.split_once(':').unwrap();
                (n.trim().to_ascii_lowercase(), v.trim().to_string())
            })
            .collect();
        let len: usize = headers
            .iter()
            .find(|(n, _)| n == "content-length")
            .map_or(0, |(_, v)| v.parse().unwrap());
        let mut body = vec![0; len];
        stream.read_exact(&mut body).await.expect("read body");
        Answer {
            status,
            headers,
            body,
        }
    })
    .await
}

/// Waits until the server is draining (a real state, not a sleep).
async fn until_draining(handle: &ServerHandle) {
    within(LIMIT, "the drain to begin", async {
        while !handle.is_draining() {
            futures_lite::future::yield_now().await;
            async_io::Timer::after(Duration::from_millis(1)).await;
        }
    })
    .await
}

fn keep_alive_requests_share_a_connection_and_see_conn_info<R: Rt>() {
    run::<R>(LIMIT, async {
        let (handle, addr) = serve::<R>(common::config(), http());
        let mut stream = connect(addr).await;
        let client = stream.local_addr().unwrap().to_string();
        for _ in 0..3 {
            let answer = get(&mut stream, "/").await;
            assert_eq!(answer.status, 200);
            assert_eq!(String::from_utf8_lossy(&answer.body), client);
            assert_eq!(answer.header("connection"), None, "keep-alive by default");
        }
        assert_eq!(
            handle.stats().accepted,
            1,
            "one connection for three requests"
        );
        let body = common::pattern(256 * 1024, 7);
        let request = format!(
            "POST /echo HTTP/1.1\r\nHost: berth\r\nContent-Length: {}\r\n\r\n",
            body.len()
        );
        stream.write_all(request.as_bytes()).await.unwrap();
        stream.write_all(&body).await.unwrap();
        let answer = read_answer(&mut stream).await;
        assert_eq!(answer.body, body, "POST /echo byte-exact");
        drop(stream);
        handle.shutdown().await.expect("clean drain");
    });
}

/// `Http::per_connection`: the maker runs once per connection, with that connection's
/// `ConnInfo`; its service answers every request of the connection, and requests carry no
/// `ConnInfo` extension (the service has it).
fn a_service_made_per_connection_sees_its_connection<R: Rt>() {
    run::<R>(LIMIT, async {
        let made = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let counter = made.clone();
        let http = Http::per_connection(move |info: &Arc<ConnInfo>| {
            counter.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            let peer = info.peer_addr().to_string();
            hyper::service::service_fn(move |req: Request<Incoming>| {
                let extension = req.extensions().get::<Arc<ConnInfo>>().is_some();
                let body = format!("{peer} {extension}");
                async move { Ok::<_, Infallible>(Response::new(Full::new(Bytes::from(body)))) }
            })
        });
        let (handle, _rec) = start::<R>(common::config(), http);
        let addr = handle.local_addr().as_socket_addr().expect("tcp");
        let mut clients = Vec::new();
        for _ in 0..2 {
            let mut stream = connect(addr).await;
            let client = stream.local_addr().unwrap().to_string();
            for _ in 0..2 {
                let answer = get(&mut stream, "/").await;
                assert_eq!(answer.status, 200);
                assert_eq!(
                    String::from_utf8_lossy(&answer.body),
                    format!("{client} false")
                );
            }
            clients.push(stream);
        }
        assert_eq!(
            made.load(std::sync::atomic::Ordering::SeqCst),
            2,
            "one per connection"
        );
        drop(clients);
        handle.shutdown().await.expect("clean drain");
    });
}

fn idle_timeout_counts_only_between_requests<R: Rt>() {
    run::<R>(LIMIT, async {
        let mut config = common::config();
        let idle = Duration::from_millis(300);
        config.idle_timeout = Some(idle);
        let (handle, addr) = serve::<R>(config, http());
        let mut stream = connect(addr).await;
        // A request three idle timeouts long is not cut: the connection is busy.
        let slow = Duration::from_millis(900);
        let sent = Instant::now();
        let answer = get(&mut stream, "/slow?ms=900").await;
        assert_eq!(answer.status, 200);
        assert_eq!(answer.body, b"slow");
        // Idle from the response on: closed by the idle timeout, no earlier. The server
        // answered no sooner than `slow` after the request was sent (the moment the client
        // reads the answer can be later still on a busy machine, so it is no lower bound).
        assert_eq!(ending(&mut stream).await, common::EOF);
        assert!(
            sent.elapsed() >= slow + idle,
            "closed {:?} after the request, its answer took {slow:?}",
            sent.elapsed()
        );
        handle.shutdown().await.expect("clean drain");
    });
}

fn a_drain_answers_the_next_request_with_connection_close<R: Rt>() {
    run::<R>(LIMIT, async {
        let http = http().drain_grace(Duration::from_secs(20));
        let (handle, addr) = serve::<R>(common::config(), http);
        let mut stream = connect(addr).await;
        assert_eq!(get(&mut stream, "/").await.status, 200);
        let stopping = handle.clone();
        let shutdown = async_task_spawn::<R, _>(async move { stopping.shutdown().await });
        until_draining(&handle).await;
        // Within the grace, the next request is answered, and told to close.
        let answer = get(&mut stream, "/").await;
        assert_eq!(answer.status, 200);
        assert_eq!(answer.header("connection"), Some("close"));
        assert_eq!(ending(&mut stream).await, common::EOF);
        let report = within(LIMIT, "the shutdown", shutdown)
            .await
            .expect("clean drain");
        assert_eq!((report.drained, report.forced), (1, 0), "{report:?}");
    });
}

fn a_drain_closes_a_quiet_keep_alive_connection_after_the_grace<R: Rt>() {
    run::<R>(LIMIT, async {
        let grace = Duration::from_millis(300);
        let (handle, addr) = serve::<R>(common::config(), http().drain_grace(grace));
        let mut stream = connect(addr).await;
        assert_eq!(get(&mut stream, "/").await.status, 200);
        let began = Instant::now();
        let stopping = handle.clone();
        let shutdown = async_task_spawn::<R, _>(async move { stopping.shutdown().await });
        assert_eq!(ending(&mut stream).await, common::EOF);
        assert!(
            began.elapsed() >= grace,
            "closed before the grace: {:?}",
            began.elapsed()
        );
        let report = within(LIMIT, "the shutdown", shutdown)
            .await
            .expect("clean drain");
        assert_eq!((report.drained, report.forced), (1, 0), "{report:?}");
    });
}

fn a_request_in_flight_completes_through_a_drain<R: Rt>() {
    run::<R>(LIMIT, async {
        let (handle, addr) = serve::<R>(common::config(), http());
        let entered = slow_entered(addr);
        let mut stream = connect(addr).await;
        stream
            .write_all(b"GET /slow?ms=500 HTTP/1.1\r\nHost: berth\r\n\r\n")
            .await
            .unwrap();
        // Drain once the request is in the service. (Earlier, the connection could still
        // wait in the listen backlog, which a shutdown closes: the client is reset, as on
        // any server that stops accepting.)
        within(LIMIT, "the request enters the service", entered.recv())
            .await
            .expect("the request enters the service");
        let stopping = handle.clone();
        let shutdown = async_task_spawn::<R, _>(async move { stopping.shutdown().await });
        let answer = read_answer(&mut stream).await;
        assert_eq!((answer.status, answer.body.as_slice()), (200, &b"slow"[..]));
        assert_eq!(answer.header("connection"), Some("close"));
        assert_eq!(ending(&mut stream).await, common::EOF);
        let report = within(LIMIT, "the shutdown", shutdown)
            .await
            .expect("clean drain");
        assert_eq!(report.forced, 0, "{report:?}");
    });
}

fn the_header_timeout_closes_a_slow_head_while_others_are_served<R: Rt>() {
    run::<R>(LIMIT, async {
        let timeout = Duration::from_millis(300);
        let (handle, addr) = serve::<R>(common::config(), http().header_timeout(Some(timeout)));
        let began = Instant::now();
        let mut slow = connect(addr).await;
        slow.write_all(b"GET / HTTP/1.1\r\nHo").await.unwrap();
        // Another client is served meanwhile.
        let mut good = connect(addr).await;
        assert_eq!(get(&mut good, "/").await.status, 200);
        assert!(
            matches!(
                ending(&mut slow).await,
                common::End::Eof { .. } | common::End::Error { .. }
            ),
            "the slow head is cut"
        );
        assert!(began.elapsed() >= timeout, "{:?}", began.elapsed());
        // The good connection, idle between requests, is not subject to it.
        assert_eq!(get(&mut good, "/").await.status, 200);
        drop(good);
        handle.close().await;
    });
}

/// One timer per connection serves every head: after many requests (its first deadline
/// long past), a slow head is still given the whole timeout, counted from its own start.
fn the_header_timeout_counts_from_each_head_on_a_long_connection<R: Rt>() {
    run::<R>(LIMIT, async {
        let timeout = Duration::from_millis(300);
        let (handle, addr) = serve::<R>(common::config(), http().header_timeout(Some(timeout)));
        let mut stream = connect(addr).await;
        // About 2.5 timeouts of requests (each takes 50 ms in the server) on one connection.
        let first = Instant::now();
        while first.elapsed() < timeout * 5 / 2 {
            assert_eq!(get(&mut stream, "/slow?ms=50").await.status, 200);
        }
        let began = Instant::now();
        stream.write_all(b"GET / HTTP/1.1\r\nHo").await.unwrap();
        assert!(
            matches!(
                ending(&mut stream).await,
                common::End::Eof { .. } | common::End::Error { .. }
            ),
            "the slow head is cut"
        );
        assert!(
            began.elapsed() >= timeout,
            "cut {:?} after its head began, before the timeout",
            began.elapsed()
        );
        handle.close().await;
    });
}

fn the_request_timeout_answers_503<R: Rt>() {
    run::<R>(LIMIT, async {
        let http = http().request_timeout(Some(Duration::from_millis(200)));
        let (handle, addr) = serve::<R>(common::config(), http);
        let mut stream = connect(addr).await;
        let answer = get(&mut stream, "/slow?ms=5000").await;
        assert_eq!(answer.status, 503);
        assert_eq!(answer.header("connection"), Some("close"));
        let mut fast = connect(addr).await;
        assert_eq!(get(&mut fast, "/slow?ms=1").await.status, 200);
        drop(fast);
        handle.close().await;
    });
}

/// `Conn::busy` for any protocol: a handler that computes (no I/O) for longer than the
/// idle timeout keeps its connection.
fn a_busy_connection_is_not_idle<R: Rt>() {
    run::<R>(LIMIT, async {
        let mut config = common::config();
        let idle = Duration::from_millis(200);
        config.idle_timeout = Some(idle);
        let handler = move |mut conn: berth::Conn| async move {
            let mut byte = [0u8; 1];
            if conn.read(&mut byte).await.is_err() {
                return;
            }
            {
                let _busy = conn.busy();
                conn.runtime().sleep(idle * 4).await;
            }
            let _ = conn.write_all(b"done").await;
            // Idle again: the timeout applies.
            let _ = conn.read(&mut byte).await;
        };
        let (handle, rec) = start::<R>(config, handler);
        let addr = handle.local_addr().as_socket_addr().unwrap();
        let mut stream = connect(addr).await;
        stream.write_all(b"x").await.unwrap();
        let mut reply = [0u8; 4];
        within(LIMIT, "the reply", stream.read_exact(&mut reply))
            .await
            .expect("not reaped while busy");
        assert_eq!(&reply, b"done");
        let (_, reason) = rec.closed().await;
        assert_eq!(reason, berth::CloseReason::IdleTimeout);
        handle.close().await;
    });
}

/// Spawns on the runtime under test and gives back the output.
fn async_task_spawn<R: Rt, T: Send + 'static>(
    future: impl std::future::Future<Output = T> + Send + 'static,
) -> impl std::future::Future<Output = T> {
    let (tx, rx) = async_channel::bounded(1);
    R::runtime().spawn(Box::pin(async move {
        let _ = tx.send(future.await).await;
    }));
    async move { rx.recv().await.expect("the task ran") }
}

on_every_runtime!(
    keep_alive_requests_share_a_connection_and_see_conn_info,
    a_service_made_per_connection_sees_its_connection,
    idle_timeout_counts_only_between_requests,
    a_drain_answers_the_next_request_with_connection_close,
    a_drain_closes_a_quiet_keep_alive_connection_after_the_grace,
    a_request_in_flight_completes_through_a_drain,
    the_header_timeout_closes_a_slow_head_while_others_are_served,
    the_header_timeout_counts_from_each_head_on_a_long_connection,
    the_request_timeout_answers_503,
    a_busy_connection_is_not_idle,
);

/// HTTP/2 by prior knowledge: streams in flight finish through a drain, and the client is
/// sent GOAWAY (its connection ends cleanly).
fn h2_streams_in_flight_finish_and_the_connection_gets_goaway<R: Rt>() {
    let (handle, addr) = {
        let rt = common::TokioRt::rt();
        let _guard = rt.enter();
        R::block_on(async { serve::<R>(common::config(), http()) })
    };
    let client = common::TokioRt::rt();
    client.block_on(async {
        tokio::time::timeout(LIMIT, async {
            let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
            let (mut sender, connection) = hyper::client::conn::http2::handshake(
                hyper_util::rt::TokioExecutor::new(),
                hyper_util::rt::TokioIo::new(tcp),
            )
            .await
            .expect("h2 handshake");
            let connection = tokio::spawn(connection);
            let entered = slow_entered(addr);
            // A second HTTP/2 connection that never sends a request: known as HTTP/2 by its
            // preface, it gets GOAWAY at the drain too (no wait for a request that will not
            // come, no force at the deadline).
            let idle_tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
            let (_idle_sender, idle_connection) =
                hyper::client::conn::http2::handshake::<_, _, http_body_util::Empty<Bytes>>(
                    hyper_util::rt::TokioExecutor::new(),
                    hyper_util::rt::TokioIo::new(idle_tcp),
                )
                .await
                .expect("h2 handshake");
            let idle_connection = tokio::spawn(idle_connection);
            let first = sender
                .send_request(
                    Request::get("http://berth/")
                        .body(http_body_util::Empty::<Bytes>::new())
                        .unwrap(),
                )
                .await
                .expect("h2 request");
            assert_eq!(first.status(), StatusCode::OK);
            assert_eq!(first.version(), hyper::Version::HTTP_2);
            let slow = sender.send_request(
                Request::get("http://berth/slow?ms=500")
                    .body(http_body_util::Empty::<Bytes>::new())
                    .unwrap(),
            );
            let slow = tokio::spawn(slow);
            // Drain once the slow stream is in the service: a stream the server has not
            // seen yet when GOAWAY leaves is refused (the race no server can close).
            entered
                .recv()
                .await
                .expect("the slow stream enters the service");
            let stopping = handle.clone();
            let shutdown = tokio::spawn(async move { stopping.shutdown().await });
            let slow = slow.await.unwrap().expect("the stream in flight finishes");
            assert_eq!(slow.status(), StatusCode::OK);
            let body = slow.into_body().collect().await.unwrap().to_bytes();
            assert_eq!(&body[..], b"slow");
            connection
                .await
                .unwrap()
                .expect("GOAWAY ends the connection cleanly");
            idle_connection
                .await
                .unwrap()
                .expect("GOAWAY ends the idle connection cleanly");
            let report = shutdown.await.unwrap().expect("clean drain");
            assert_eq!((report.drained, report.forced), (2, 0), "{report:?}");
        })
        .await
        .expect("test timed out");
    });
}

on_smol_and_tokio!(h2_streams_in_flight_finish_and_the_connection_gets_goaway);

/// HTTP/2's concurrent streams keep their connection busy while any is in flight: a short
/// stream ending beside a long one does not end the busy mark (the idle timeout, a third
/// of the long one, would cut it), and once the last one ends the connection idles out.
fn h2_a_connection_is_busy_while_any_stream_is_in_flight<R: Rt>() {
    let idle = Duration::from_millis(300);
    let (handle, addr) = {
        let rt = common::TokioRt::rt();
        let _guard = rt.enter();
        let mut config = common::config();
        config.idle_timeout = Some(idle);
        R::block_on(async { serve::<R>(config, http()) })
    };
    let client = common::TokioRt::rt();
    client.block_on(async {
        tokio::time::timeout(LIMIT, async {
            let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
            let (sender, connection) = hyper::client::conn::http2::handshake(
                hyper_util::rt::TokioExecutor::new(),
                hyper_util::rt::TokioIo::new(tcp),
            )
            .await
            .expect("h2 handshake");
            let connection = tokio::spawn(connection);
            let get = |path: &'static str| {
                let mut sender = sender.clone();
                tokio::spawn(async move {
                    let request = Request::get(format!("http://berth{path}"))
                        .body(http_body_util::Empty::<Bytes>::new())
                        .unwrap();
                    let response = sender.send_request(request).await?;
                    let status = response.status();
                    let body = response.into_body().collect().await?.to_bytes();
                    Ok::<_, hyper::Error>((status, body))
                })
            };
            let started = Instant::now();
            let long = get("/slow?ms=900");
            let short = get("/slow?ms=100");
            let (status, body) = short.await.unwrap().expect("the short stream");
            assert_eq!((status, &body[..]), (StatusCode::OK, &b"slow"[..]));
            let (status, body) = long
                .await
                .unwrap()
                .expect("the long stream outlives three idle timeouts");
            assert_eq!((status, &body[..]), (StatusCode::OK, &b"slow"[..]));
            assert!(started.elapsed() >= Duration::from_millis(900));
            // Idle now: the idle timeout ends the connection.
            let _ = connection.await.unwrap();
            let idle_for = started.elapsed() - Duration::from_millis(900);
            assert!(idle_for >= idle, "closed after {idle_for:?} of quiet");
            let report = handle.shutdown().await.expect("clean drain");
            assert_eq!(report.forced, 0, "{report:?}");
        })
        .await
        .expect("test timed out");
    });
}

on_smol_and_tokio!(h2_a_connection_is_busy_while_any_stream_is_in_flight);
