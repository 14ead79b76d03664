//! How [`Http`](super::Http) gets each connection's service: one shared by all, or one made
//! per connection.

use std::sync::Arc;

use hyper::Request;
use hyper::body::Incoming;
use hyper::service::Service;

use super::info::ConnInfo;

/// What [`Http`](super::Http) serves: a hyper service shared by every connection
/// ([`Http::new`](super::Http::new), any `Service<Request<Incoming>>` that is `Send + Sync`),
/// or a [`PerConnection`] maker ([`Http::per_connection`](super::Http::per_connection)).
/// Sealed: those two are all there is.
pub trait MakeService: sealed::Sealed + Send + Sync + 'static {
    /// One connection's service.
    type Service;
    /// Whether each request carries `Arc<ConnInfo>` in its extensions.
    #[doc(hidden)]
    const INFO_IN_REQUESTS: bool;
    /// The service of the connection `info` describes.
    #[doc(hidden)]
    fn make(this: &Arc<Self>, info: &Arc<ConnInfo>) -> Self::Service;
}

mod sealed {
    pub trait Sealed {}
}

impl<S> sealed::Sealed for S where S: Service<Request<Incoming>> {}

/// One service for all connections: each gets the `Arc`; requests carry the `ConnInfo`.
impl<S> MakeService for S
where
    S: Service<Request<Incoming>> + Send + Sync + 'static,
{
    type Service = Arc<S>;
    const INFO_IN_REQUESTS: bool = true;

    fn make(this: &Arc<Self>, _: &Arc<ConnInfo>) -> Arc<S> {
        this.clone()
    }
}

/// A function that makes each connection's service from its [`ConnInfo`]: see
/// [`Http::per_connection`](super::Http::per_connection).
pub struct PerConnection<F>(F);

impl<F> PerConnection<F> {
    pub(super) fn new(make: F) -> Self {
        PerConnection(make)
    }
}

impl<F> std::fmt::Debug for PerConnection<F> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("PerConnection")
    }
}

impl<F> sealed::Sealed for PerConnection<F> {}

impl<F, S> MakeService for PerConnection<F>
where
    F: Fn(&Arc<ConnInfo>) -> S + Send + Sync + 'static,
{
    type Service = S;
    const INFO_IN_REQUESTS: bool = false;

    fn make(this: &Arc<Self>, info: &Arc<ConnInfo>) -> S {
        (this.0)(info)
    }
}
