//! A [`Conn`] as hyper's I/O: reads without zero-filling hyper's buffer, and the
//! connection's request bookkeeping (where a request head starts).

use std::cell::RefCell;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};

use futures_io::{AsyncRead, AsyncWrite};

use super::state::Shared;
use crate::conn::Conn;

/// Bytes read per call at most; also the size of each thread's scratch buffer.
const SCRATCH: usize = 16 * 1024;

thread_local! {
    /// Where reads land before hyper's buffer: hyper hands over uninitialised memory, which
    /// safe code could only use after zero-filling it whole on every read. One buffer per
    /// thread (a poll never awaits while holding it) copies just the bytes read.
    static SCRATCH_BUF: RefCell<Box<[u8]>> = RefCell::new(vec![0; SCRATCH].into_boxed_slice());
}

/// The connection as hyper reads and writes it.
pub(super) struct HyperIo {
    conn: Conn,
    shared: Arc<Shared>,
    /// Nothing read yet: the first bytes tell HTTP/2 (its preface) from HTTP/1.
    first: bool,
}

/// How an HTTP/2 connection begins (RFC 9113, 3.4); no HTTP/1 request starts with `PRI`.
const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

impl HyperIo {
    pub(super) fn new(conn: Conn, shared: Arc<Shared>) -> Self {
        HyperIo {
            conn,
            shared,
            first: true,
        }
    }
}

impl hyper::rt::Read for HyperIo {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        mut buf: hyper::rt::ReadBufCursor<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let want = buf.remaining().min(SCRATCH);
        if want == 0 {
            return Poll::Ready(Ok(()));
        }
        let n = SCRATCH_BUF.with_borrow_mut(|scratch| {
            let scratch = &mut scratch[..want];
            let n = ready!(Pin::new(&mut this.conn).poll_read(cx, scratch))?;
            if this.first && n > 0 {
                this.first = false;
                let seen = &scratch[..n.min(H2_PREFACE.len())];
                if seen.len() >= 3 && H2_PREFACE.starts_with(seen) {
                    this.shared.set_h2();
                }
            }
            buf.put_slice(&scratch[..n]);
            Poll::Ready(Ok::<_, io::Error>(n))
        });
        let n = ready!(n)?;
        if n > 0 {
            this.shared.bytes_read();
        }
        Poll::Ready(Ok(()))
    }
}

impl hyper::rt::Write for HyperIo {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().conn).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().conn).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        true
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().conn).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().conn).poll_close(cx)
    }
}
