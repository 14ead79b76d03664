//! The public stream types of berth's own listeners (`TcpStream`, `UnixStream`): each is
//! the boxed stream its runtime's [`Reactor`](super::Reactor) accepted, under a name of its
//! own, forwarding everything to it and handing the box over as it is
//! ([`ByteStream::boxed`](super::ByteStream::boxed): one allocation per connection).

/// Declares `$name` as a newtype over `Box<dyn ByteStream>` that forwards `ByteStream`,
/// `AsyncRead` and `AsyncWrite` to the box.
macro_rules! boxed_stream {
    ($(#[$doc:meta])* $name:ident) => {
        $(#[$doc])*
        pub struct $name(Box<dyn $crate::listener::ByteStream>);

        impl std::fmt::Debug for $name {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.debug_struct(stringify!($name)).finish_non_exhaustive()
            }
        }

        impl $crate::listener::ByteStream for $name {
            fn poll_readable(
                &mut self,
                cx: &mut std::task::Context<'_>,
            ) -> std::task::Poll<std::io::Result<()>> {
                self.0.poll_readable(cx)
            }

            fn socket(&self) -> Option<$crate::listener::Socket<'_>> {
                self.0.socket()
            }

            fn peer_cred(&self) -> Option<$crate::addr::PeerCred> {
                self.0.peer_cred()
            }

            fn boxed(self) -> Box<dyn $crate::listener::ByteStream> {
                self.0
            }
        }

        impl futures_io::AsyncRead for $name {
            fn poll_read(
                mut self: std::pin::Pin<&mut Self>,
                cx: &mut std::task::Context<'_>,
                buf: &mut [u8],
            ) -> std::task::Poll<std::io::Result<usize>> {
                std::pin::Pin::new(&mut self.0).poll_read(cx, buf)
            }

            fn poll_read_vectored(
                mut self: std::pin::Pin<&mut Self>,
                cx: &mut std::task::Context<'_>,
                bufs: &mut [std::io::IoSliceMut<'_>],
            ) -> std::task::Poll<std::io::Result<usize>> {
                std::pin::Pin::new(&mut self.0).poll_read_vectored(cx, bufs)
            }
        }

        impl futures_io::AsyncWrite for $name {
            fn poll_write(
                mut self: std::pin::Pin<&mut Self>,
                cx: &mut std::task::Context<'_>,
                buf: &[u8],
            ) -> std::task::Poll<std::io::Result<usize>> {
                std::pin::Pin::new(&mut self.0).poll_write(cx, buf)
            }

            fn poll_write_vectored(
                mut self: std::pin::Pin<&mut Self>,
                cx: &mut std::task::Context<'_>,
                bufs: &[std::io::IoSlice<'_>],
            ) -> std::task::Poll<std::io::Result<usize>> {
                std::pin::Pin::new(&mut self.0).poll_write_vectored(cx, bufs)
            }

            fn poll_flush(
                mut self: std::pin::Pin<&mut Self>,
                cx: &mut std::task::Context<'_>,
            ) -> std::task::Poll<std::io::Result<()>> {
                std::pin::Pin::new(&mut self.0).poll_flush(cx)
            }

            /// Shuts down the write side: the peer reads end of file.
            fn poll_close(
                mut self: std::pin::Pin<&mut Self>,
                cx: &mut std::task::Context<'_>,
            ) -> std::task::Poll<std::io::Result<()>> {
                std::pin::Pin::new(&mut self.0).poll_close(cx)
            }
        }
    };
}

pub(super) use boxed_stream;
