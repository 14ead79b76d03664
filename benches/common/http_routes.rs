//! The HTTP example's routes, for the bare hyper peers (`hyper_peer`, `hyper_smol_peer`):
//! `GET /` → `hello`, `GET /slow?ms=N` → `slow` after N ms on the peer's own timer,
//! `POST /echo` → the body, anything else → 404.

use std::convert::Infallible;
use std::future::Future;
use std::time::Duration;

use http_body_util::{BodyExt, Full};
use hyper::body::{Bytes, Incoming};
use hyper::{Method, Request, Response, StatusCode};

pub type Reply = Response<Full<Bytes>>;

/// Answers `req`; `/slow` waits with `sleep`.
pub async fn route<F: Future<Output = ()>>(
    req: Request<Incoming>,
    sleep: impl FnOnce(Duration) -> F,
) -> Result<Reply, Infallible> {
    let reply = match (req.method(), req.uri().path()) {
        (&Method::GET, "/") => text(StatusCode::OK, "hello\n"),
        (&Method::GET, "/slow") => {
            let ms = req
                .uri()
                .query()
                .and_then(|q| q.split('&').find_map(|kv| kv.strip_prefix("ms=")))
                .and_then(|ms| ms.parse::<u64>().ok());
            match ms {
                Some(ms) => {
                    sleep(Duration::from_millis(ms)).await;
                    text(StatusCode::OK, "slow\n")
                }
                None => text(StatusCode::BAD_REQUEST, "usage: /slow?ms=N\n"),
            }
        }
        (&Method::POST, "/echo") => match req.into_body().collect().await {
            Ok(body) => Response::new(Full::new(body.to_bytes())),
            Err(_) => text(StatusCode::BAD_REQUEST, "cannot read the body\n"),
        },
        _ => text(StatusCode::NOT_FOUND, "not found\n"),
    };
    Ok(reply)
}

fn text(status: StatusCode, body: &'static str) -> Reply {
    let mut reply = Response::new(Full::new(Bytes::from_static(body.as_bytes())));
    *reply.status_mut() = status;
    reply
}
