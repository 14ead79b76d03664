//! The stream types of berth's own listeners: one type per socket family, whichever reactor
//! the socket is registered with. A `match` per call is all the reactor choice costs.

/// `match` over a stream's reactor, binding the stream to `$s` in `$body` (expanded where
/// `Inner` is the local stream enum).
macro_rules! each {
    ($value:expr, $s:ident => $body:expr) => {
        match $value {
            #[cfg(feature = "async-io")]
            Inner::AsyncIo($s) => $body,
            #[cfg(feature = "tokio")]
            Inner::Tokio($s) => $body,
        }
    };
}

/// Defines `Backend`, a listening socket of one family on async-io's or tokio's reactor,
/// whose descriptor an upgrade hands over.
macro_rules! listener_backend {
    ($async_io:ty, $tokio:ty) => {
        #[derive(Debug)]
        enum Backend {
            #[cfg(feature = "async-io")]
            AsyncIo(async_io::Async<$async_io>),
            #[cfg(feature = "tokio")]
            Tokio($tokio),
        }

        /// The listening socket, whichever reactor it is registered with.
        #[cfg(unix)]
        impl std::os::fd::AsFd for Backend {
            fn as_fd(&self) -> std::os::fd::BorrowedFd<'_> {
                match self {
                    #[cfg(feature = "async-io")]
                    Backend::AsyncIo(listener) => listener.get_ref().as_fd(),
                    #[cfg(feature = "tokio")]
                    Backend::Tokio(listener) => listener.as_fd(),
                }
            }
        }

        impl Backend {
            /// Makes a listening socket non-blocking and registers it with `reactor`.
            fn register(
                listener: $async_io,
                reactor: &crate::runtime::Reactor,
            ) -> std::io::Result<Self> {
                listener.set_nonblocking(true)?;
                match reactor {
                    #[cfg(feature = "async-io")]
                    crate::runtime::Reactor::AsyncIo => {
                        Ok(Backend::AsyncIo(async_io::Async::new(listener)?))
                    }
                    #[cfg(feature = "tokio")]
                    crate::runtime::Reactor::Tokio(handle) => {
                        Ok(Backend::Tokio(super::tokio::register(handle, || {
                            <$tokio>::from_std(listener)
                        })?))
                    }
                    // Callers check the reactor first (`socket::check_reactor`).
                    crate::runtime::Reactor::None => Err(std::io::Error::new(
                        std::io::ErrorKind::Unsupported,
                        crate::error::ConfigError::NoReactor.to_string(),
                    )),
                }
            }

            /// A descriptor of the listening socket of its own, to hand over.
            #[cfg(unix)]
            fn dup(&self) -> Option<std::os::fd::OwnedFd> {
                use std::os::fd::AsFd;
                self.as_fd().try_clone_to_owned().ok()
            }

            /// Whether a connection waits to be accepted.
            #[cfg(unix)]
            fn has_pending(&self) -> bool {
                use std::os::fd::AsFd;
                super::socket::has_pending(self.as_fd())
            }
        }
    };
}

/// Defines `$name`, an accepted socket of one family on async-io's or tokio's reactor, with
/// futures-io, readiness, and a borrowed view of the OS socket.
macro_rules! socket_stream {
    ($(#[$doc:meta])* $name:ident, $async_io:ty, $tokio:ty) => {
        $(#[$doc])*
        #[derive(Debug)]
        pub struct $name(pub(super) Inner);

        #[derive(Debug)]
        pub(super) enum Inner {
            #[cfg(feature = "async-io")]
            AsyncIo(super::async_io::AsyncIoStream<$async_io>),
            #[cfg(feature = "tokio")]
            Tokio(super::tokio::TokioStream<$tokio>),
        }

        impl $name {
            fn poll_readable_inner(
                &mut self,
                cx: &mut std::task::Context<'_>,
            ) -> std::task::Poll<std::io::Result<()>> {
                super::stream::each!(&mut self.0, s => s.poll_readable(cx))
            }

            fn socket_inner(&self) -> Option<super::Socket<'_>> {
                #[cfg(any(unix, windows))]
                return Some(super::stream::each!(&self.0, s => super::Socket::new(s.get_ref())));
                #[cfg(not(any(unix, windows)))]
                None
            }
        }

        impl futures_io::AsyncRead for $name {
            fn poll_read(
                mut self: std::pin::Pin<&mut Self>,
                cx: &mut std::task::Context<'_>,
                buf: &mut [u8],
            ) -> std::task::Poll<std::io::Result<usize>> {
                super::stream::each!(&mut self.0, s => std::pin::Pin::new(s).poll_read(cx, buf))
            }

            fn poll_read_vectored(
                mut self: std::pin::Pin<&mut Self>,
                cx: &mut std::task::Context<'_>,
                bufs: &mut [std::io::IoSliceMut<'_>],
            ) -> std::task::Poll<std::io::Result<usize>> {
                super::stream::each!(&mut self.0, s => std::pin::Pin::new(s).poll_read_vectored(cx, bufs))
            }
        }

        impl futures_io::AsyncWrite for $name {
            fn poll_write(
                mut self: std::pin::Pin<&mut Self>,
                cx: &mut std::task::Context<'_>,
                buf: &[u8],
            ) -> std::task::Poll<std::io::Result<usize>> {
                super::stream::each!(&mut self.0, s => std::pin::Pin::new(s).poll_write(cx, buf))
            }

            fn poll_write_vectored(
                mut self: std::pin::Pin<&mut Self>,
                cx: &mut std::task::Context<'_>,
                bufs: &[std::io::IoSlice<'_>],
            ) -> std::task::Poll<std::io::Result<usize>> {
                super::stream::each!(&mut self.0, s => std::pin::Pin::new(s).poll_write_vectored(cx, bufs))
            }

            fn poll_flush(
                mut self: std::pin::Pin<&mut Self>,
                cx: &mut std::task::Context<'_>,
            ) -> std::task::Poll<std::io::Result<()>> {
                super::stream::each!(&mut self.0, s => std::pin::Pin::new(s).poll_flush(cx))
            }

            /// Shuts down the write side: the peer reads end of file.
            fn poll_close(
                mut self: std::pin::Pin<&mut Self>,
                cx: &mut std::task::Context<'_>,
            ) -> std::task::Poll<std::io::Result<()>> {
                super::stream::each!(&mut self.0, s => std::pin::Pin::new(s).poll_close(cx))
            }
        }
    };
}

pub(super) use {each, listener_backend, socket_stream};
