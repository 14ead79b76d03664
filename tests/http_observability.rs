//! `berth::http`'s per-request metrics and tracing: counts by status class, the in-flight
//! gauge back at 0, durations recorded, one debug event per request (target `berth::http`).
//! Global recorder and subscriber: one test in this binary.
#![cfg(all(
    feature = "http",
    feature = "metrics",
    feature = "tracing",
    feature = "smol"
))]

mod common;

use std::convert::Infallible;
use std::io::Write;
use std::sync::{Arc, Mutex};

use common::{LIMIT, SmolRt, connect, run, start, within};
use futures_lite::{AsyncReadExt, AsyncWriteExt};
use http_body_util::Full;
use hyper::body::{Bytes, Incoming};
use hyper::{Request, Response, StatusCode};

#[derive(Clone, Default)]
struct Captured(Arc<Mutex<Vec<u8>>>);

impl Write for Captured {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

async fn route(req: Request<Incoming>) -> Result<Response<Full<Bytes>>, Infallible> {
    let mut response = Response::new(Full::new(Bytes::from_static(b"x")));
    if req.uri().path() != "/" {
        *response.status_mut() = StatusCode::NOT_FOUND;
    }
    Ok(response)
}

/// One request on a fresh connection; its status code.
async fn request(addr: std::net::SocketAddr, path: &str) -> u16 {
    let mut c = connect(addr).await;
    let req = format!("GET {path} HTTP/1.1\r\nHost: b\r\nConnection: close\r\n\r\n");
    c.write_all(req.as_bytes()).await.unwrap();
    let mut answer = String::new();
    within(LIMIT, "the response", c.read_to_string(&mut answer))
        .await
        .unwrap();
    answer[9..12].parse().unwrap()
}

#[test]
fn requests_are_counted_by_class_timed_and_traced() {
    let recorder = metrics_exporter_prometheus::PrometheusBuilder::new().build_recorder();
    let metrics = recorder.handle();
    metrics::set_global_recorder(recorder).unwrap();
    let log = Captured::default();
    let writer = log.clone();
    tracing_subscriber::fmt()
        .with_env_filter("berth::http=debug")
        .with_ansi(false)
        .with_writer(move || writer.clone())
        .init();

    run::<SmolRt>(LIMIT, async {
        let http = berth::http::Http::new(hyper::service::service_fn(route));
        let (handle, _rec) = start::<SmolRt>(common::config(), http);
        let addr = handle.local_addr().as_socket_addr().unwrap();
        for path in ["/", "/", "/nope"] {
            request(addr, path).await;
        }
        handle.shutdown().await.unwrap();
    });

    let text = metrics.render();
    let value = |line_start: &str| -> f64 {
        text.lines()
            .find(|l| l.starts_with(line_start))
            .unwrap_or_else(|| panic!("no {line_start} in:\n{text}"))
            .rsplit(' ')
            .next()
            .unwrap()
            .parse()
            .unwrap()
    };
    assert_eq!(
        value("berth_http_requests_total{class=\"2xx\"}"),
        2.0,
        "{text}"
    );
    assert_eq!(
        value("berth_http_requests_total{class=\"4xx\"}"),
        1.0,
        "{text}"
    );
    assert_eq!(value("berth_http_requests_in_flight"), 0.0, "{text}");
    assert_eq!(
        value("berth_http_request_duration_seconds_count{class=\"2xx\"}"),
        2.0,
        "{text}"
    );
    let log = String::from_utf8(log.0.lock().unwrap().clone()).unwrap();
    let requests: Vec<&str> = log.lines().filter(|l| l.contains("request")).collect();
    assert_eq!(requests.len(), 3, "{log}");
    assert!(requests.iter().any(|l| l.contains("status=404")), "{log}");
    assert!(requests.iter().all(|l| l.contains("method=GET")), "{log}");
}
