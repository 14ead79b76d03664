//! The `Handler` trait: what berth runs for each connection.

use std::future::Future;

use crate::conn::Conn;

/// Serves one connection. Called once per accepted connection, on that connection's own
/// task; calls for different connections run concurrently.
///
/// Any `Fn(Conn) -> impl Future<Output = ()>` closure is a handler. Implement the trait
/// yourself for a struct that carries configuration or shared state:
///
/// ```
/// use berth::{Conn, Handler};
/// use futures_lite::AsyncWriteExt;
///
/// struct Greeter {
///     greeting: String,
/// }
///
/// impl Handler for Greeter {
///     async fn call(&self, mut conn: Conn) {
///         let _ = conn.write_all(self.greeting.as_bytes()).await;
///     }
/// }
/// ```
///
/// The connection closes when the returned future completes, panics, or is cancelled by the
/// server (idle timeout, forced shutdown); the handler never has to close it itself.
pub trait Handler: Send + Sync + 'static {
    /// Serves `conn` until the handler is done with it.
    fn call(&self, conn: Conn) -> impl Future<Output = ()> + Send;
}

impl<F, Fut> Handler for F
where
    F: Fn(Conn) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = ()> + Send,
{
    fn call(&self, conn: Conn) -> impl Future<Output = ()> + Send {
        self(conn)
    }
}
