//! Fault points inside berth, for simulation (feature `fault`; berth-sim turns it on).
//!
//! A simulation can break the network around a server; these points break berth's own
//! edges: accept errors, short reads and writes, spurious "not ready yet", a connection task
//! that starts late, a late idle-scanner tick, a stalled TLS handshake, a PROXY header that
//! arrives one byte at a time. Whether a point fires is asked of the [`Faults`] given to
//! [`Builder::faults`](crate::Builder::faults), so a simulation decides with its seeded
//! random numbers and a seed replays exactly (FoundationDB calls this BUGGIFY).
//!
//! Without the feature none of this exists: no code, no cost.

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use futures_io::{AsyncRead, AsyncWrite};

use crate::addr::PeerCred;
use crate::listener::{ByteStream, Socket};

/// A place where berth can be made to fail.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[non_exhaustive]
pub enum Point {
    /// `accept` fails with "too many open files" (EMFILE): berth backs off and recovers.
    AcceptEmfile,
    /// `accept` fails with "connection aborted" (ECONNABORTED): berth retries at once.
    AcceptAborted,
    /// A read returns one byte, though more is there.
    ShortRead,
    /// A write takes one byte of what it is given.
    ShortWrite,
    /// A read, write or readiness poll says "not yet" (and wakes itself at once).
    SpuriousPending,
    /// A connection's task starts [`Faults::delay`] late.
    DelayedSpawn,
    /// The idle scanner's tick runs [`Faults::delay`] late.
    LateIdleTick,
    /// The TLS handshake waits [`Faults::delay`] before it starts (within its timeout).
    StalledHandshake,
    /// A PROXY header is read one byte at a time.
    SplitProxyHeader,
}

impl Point {
    /// Every point.
    pub const ALL: [Point; 9] = [
        Point::AcceptEmfile,
        Point::AcceptAborted,
        Point::ShortRead,
        Point::ShortWrite,
        Point::SpuriousPending,
        Point::DelayedSpawn,
        Point::LateIdleTick,
        Point::StalledHandshake,
        Point::SplitProxyHeader,
    ];
}

/// Decides when fault points fire. A simulation implements it with its seeded random
/// numbers: typically a random subset of points enabled per seed (swarm testing), each
/// firing with some probability.
pub trait Faults: Send + Sync + std::fmt::Debug + 'static {
    /// Whether `point` fires now.
    fn fire(&self, point: Point) -> bool;
    /// How long a delaying point (`DelayedSpawn`, `LateIdleTick`, `StalledHandshake`)
    /// waits when it fires.
    fn delay(&self, point: Point) -> Duration;
}

/// The faults a server was given, shared by its parts.
pub(crate) type Injector = Arc<dyn Faults>;

/// A stream whose reads and writes may come up short or say "not yet".
pub(crate) struct Faulty {
    inner: Box<dyn ByteStream>,
    faults: Injector,
}

impl Faulty {
    pub(crate) fn new(inner: Box<dyn ByteStream>, faults: Injector) -> Self {
        Faulty { inner, faults }
    }

    /// `SpuriousPending`: "not yet", with an immediate wake-up so nothing hangs.
    fn spurious(&self, cx: &mut Context<'_>) -> bool {
        if self.faults.fire(Point::SpuriousPending) {
            cx.waker().wake_by_ref();
            return true;
        }
        false
    }
}

impl AsyncRead for Faulty {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut [u8],
    ) -> Poll<io::Result<usize>> {
        if self.spurious(cx) {
            return Poll::Pending;
        }
        let len = if buf.len() > 1 && self.faults.fire(Point::ShortRead) {
            1
        } else {
            buf.len()
        };
        Pin::new(&mut self.inner).poll_read(cx, &mut buf[..len])
    }
}

impl AsyncWrite for Faulty {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        if self.spurious(cx) {
            return Poll::Pending;
        }
        let len = if buf.len() > 1 && self.faults.fire(Point::ShortWrite) {
            1
        } else {
            buf.len()
        };
        Pin::new(&mut self.inner).poll_write(cx, &buf[..len])
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_close(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_close(cx)
    }
}

impl ByteStream for Faulty {
    fn poll_readable(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        if self.spurious(cx) {
            return Poll::Pending;
        }
        self.inner.poll_readable(cx)
    }

    fn peer_cred(&self) -> Option<PeerCred> {
        self.inner.peer_cred()
    }

    fn socket(&self) -> Option<Socket<'_>> {
        self.inner.socket()
    }
}

/// A reader that hands out one byte per read (`SplitProxyHeader`).
pub(crate) struct OneByte<'a, R>(pub(crate) &'a mut R);

impl<R: AsyncRead + Unpin> AsyncRead for OneByte<'_, R> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut [u8],
    ) -> Poll<io::Result<usize>> {
        let len = buf.len().min(1);
        Pin::new(&mut *self.0).poll_read(cx, &mut buf[..len])
    }
}
