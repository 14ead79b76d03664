//! What a request's handler may want of its connection: [`ConnInfo`].

use std::sync::Arc;

use crate::addr::Addr;
use crate::conn::{Conn, ConnHandle};
use crate::runtime::Runtime;
use crate::tls::TlsInfo;

/// What a request's handler may want of its connection: given to the service maker of
/// [`Http::per_connection`](super::Http::per_connection) once per connection, and with
/// [`Http::new`](super::Http::new) in every request's extensions
/// (`req.extensions().get::<Arc<ConnInfo>>()`).
///
/// ```no_run
/// use std::sync::Arc;
/// # fn f(req: hyper::Request<hyper::body::Incoming>) {
/// if let Some(info) = req.extensions().get::<Arc<berth::http::ConnInfo>>() {
///     println!("{} asks for {}", info.peer_addr(), req.uri());
/// }
/// # }
/// ```
#[derive(Debug)]
pub struct ConnInfo {
    peer_addr: Addr,
    local_addr: Addr,
    listener: Arc<str>,
    tls: Option<TlsInfo>,
    rt: Arc<dyn Runtime>,
    handle: ConnHandle,
}

impl ConnInfo {
    pub(super) fn new(conn: &Conn) -> Self {
        ConnInfo {
            peer_addr: conn.peer_addr().clone(),
            local_addr: conn.local_addr().clone(),
            listener: conn.listener().into(),
            tls: conn.tls().cloned(),
            rt: conn.runtime().clone(),
            handle: conn.handle(),
        }
    }

    /// The client's address (behind a trusted PROXY-protocol proxy, the original client's).
    pub fn peer_addr(&self) -> &Addr {
        &self.peer_addr
    }

    /// The server-side address.
    pub fn local_addr(&self) -> &Addr {
        &self.local_addr
    }

    /// The name of the listener that accepted the connection.
    pub fn listener(&self) -> &str {
        &self.listener
    }

    /// What TLS negotiated, on a TLS connection.
    pub fn tls(&self) -> Option<&TlsInfo> {
        self.tls.as_ref()
    }

    /// The runtime the connection runs on: sleep or spawn through it (see
    /// [`HyperRuntime`](super::HyperRuntime)) and the service runs on every runtime.
    pub fn runtime(&self) -> &Arc<dyn Runtime> {
        &self.rt
    }

    /// The connection: observe it, close it, or mark it busy beyond a response.
    pub fn handle(&self) -> &ConnHandle {
        &self.handle
    }
}
