//! How a `Conn` ends: at once, or after a lingering close when the handler returned while
//! its peer may still be sending; a TLS session's close_notify on the way.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use futures_io::AsyncWrite;

use super::{Conn, Open};
use crate::pool::{LINGERING, PANICKED, SAW_EOF, SAW_ERROR, Slot, SlotState};

impl Drop for Conn {
    fn drop(&mut self) {
        // A handler future that panics drops its locals while unwinding, before the
        // supervisor sees the panic: that is a panic close too.
        if std::thread::panicking() {
            self.slot.mark(PANICKED);
        }
        let Some(open) = self.open.take() else {
            return;
        };
        // The handler returned on its own while the peer may still be sending: linger.
        // Everything else (peer closed, error, panic, closed by the server) closes now.
        let linger = self.core.config().linger_timeout;
        if !linger.is_zero()
            && self.slot.flags() & (SAW_EOF | SAW_ERROR | PANICKED) == 0
            && self.slot.state(self.generation) == SlotState::Open
            && !self.core.stop().is_forced()
        {
            self.slot.mark(LINGERING);
            let closed = ClosedByServer {
                slot: self.slot.clone(),
                generation: self.generation,
            };
            self.core
                .runtime()
                .spawn(Box::pin(open.linger(linger, closed)));
        }
    }
}

impl Open {
    /// Lingering close. Closing a TCP socket that still has unread incoming data makes the
    /// kernel send a reset and discard what it has not sent yet: the peer could lose
    /// responses the handler wrote just before returning. So: half-close (our FIN goes after
    /// all our data), then discard what the peer still sends until it closes, the linger
    /// timeout passes, or the server closes it (shutdown forces, the idle timeout, a
    /// handle). Dropping `self` then ends the connection.
    async fn linger(mut self, timeout: Duration, by_server: ClosedByServer) {
        use futures_lite::{AsyncReadExt as _, AsyncWriteExt as _, FutureExt as _};
        let core = self.life.core().clone();
        let io = &mut self.io;
        let closed = &mut self.closed;
        let discard = async {
            if io.close().await.is_ok() {
                *closed = true;
                let mut sink = [0u8; 512];
                while let Ok(1..) = io.read(&mut sink).await {}
            }
        };
        discard
            .or(core.runtime().sleep(timeout))
            .or(core.stop().forced())
            .or(by_server)
            .await;
    }
}

/// Completes when the server closes a connection whose handler is done (its slot's task
/// waker is free then).
struct ClosedByServer {
    slot: Arc<Slot>,
    generation: u64,
}

impl Future for ClosedByServer {
    type Output = ();

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        let closed = || self.slot.state(self.generation).close_reason().is_some();
        if closed() {
            return Poll::Ready(());
        }
        self.slot.task_waker.register(cx.waker());
        if closed() {
            return Poll::Ready(());
        }
        Poll::Pending
    }
}

impl Drop for Open {
    fn drop(&mut self) {
        // A TLS session ends with close_notify, also when the server cut it (idle timeout,
        // forced shutdown, a handle): one poll, never a wait, so a peer that does not read
        // cannot hold the close; it goes out when the socket has room, as it usually does.
        if self.tls && !self.closed {
            let mut cx = Context::from_waker(std::task::Waker::noop());
            let _ = Pin::new(&mut self.io).poll_close(&mut cx);
        }
        // Then the fields drop in order: the socket closes, then the lifecycle finishes.
    }
}
