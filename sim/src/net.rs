//! turmoil's simulated sockets plugged into the real server and client: an
//! [`axum::serve::Listener`] over turmoil's `TcpListener`, and a client
//! [`Connector`](changefeed_client::Connector) that dials turmoil's `TcpStream`.

use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use std::future::Future;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use tokio::time::Sleep;

use hyper_util::rt::TokioIo;
use turmoil::net::{TcpListener, TcpStream};

/// How long a write may stay blocked before the connection fails: the simulated kernel's TCP
/// retransmission timeout (see [`UserTimeout`]).
pub const TCP_USER_TIMEOUT: Duration = Duration::from_secs(10);

/// turmoil's listener as an axum listener, so `axum::serve` (and the server's `serve`) run on
/// the simulated network unchanged.
pub struct SimListener(pub TcpListener);

impl SimListener {
    /// Binds `0.0.0.0:port` on the current simulated host.
    pub async fn bind(port: u16) -> io::Result<SimListener> {
        Ok(SimListener(TcpListener::bind(("0.0.0.0", port)).await?))
    }
}

impl axum::serve::Listener for SimListener {
    type Io = UserTimeout<TcpStream>;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        loop {
            match self.0.accept().await {
                Ok((stream, addr)) => {
                    if std::env::var_os("SIM_NETLOG").is_some() {
                        eprintln!(
                            "{:>7} server accepts {addr}",
                            turmoil::elapsed().as_millis()
                        );
                    }
                    let mut io = UserTimeout::new(stream);
                    io.peer = Some(addr);
                    return (io, addr);
                }
                // As axum does for real sockets: an accept error is transient; back off briefly.
                Err(_) => tokio::time::sleep(Duration::from_millis(10)).await,
            }
        }
    }

    fn local_addr(&self) -> io::Result<Self::Addr> {
        self.0.local_addr()
    }
}

/// Dials the URI's host (a turmoil host name) and port over the simulated network.
#[derive(Debug, Clone, Copy, Default)]
pub struct SimConnector;

impl changefeed_client::Connector for SimConnector {
    type Io = TokioIo<TcpStream>;

    fn connect(
        &self,
        uri: &http::Uri,
    ) -> impl std::future::Future<Output = io::Result<Self::Io>> + Send {
        let host = uri.host().map(str::to_owned);
        let port = uri.port_u16().unwrap_or(80);
        async move {
            let host = host.ok_or_else(|| {
                io::Error::new(io::ErrorKind::InvalidInput, "the URL has no host")
            })?;
            let stream = TcpStream::connect((host.as_str(), port)).await?;
            Ok(TokioIo::new(stream))
        }
    }
}

/// A socket whose writes fail after staying blocked for [`TCP_USER_TIMEOUT`].
///
/// turmoil's TCP has no retransmission: a segment lost to a partition never comes back, and a
/// peer that vanished behind a partition never answers with a reset, so a writer waiting for
/// flow-control credit would wait forever. A real kernel gives up on unacknowledged data after
/// its retransmission timeout (`tcp_retries2`, or `TCP_USER_TIMEOUT`) and fails the socket; this
/// adapter models exactly that, on the network side of the server (not in product code).
pub struct UserTimeout<T> {
    inner: T,
    blocked: Option<Pin<Box<Sleep>>>,
    peer: Option<SocketAddr>,
}

impl<T> Drop for UserTimeout<T> {
    fn drop(&mut self) {
        if let (Some(peer), true) = (self.peer, std::env::var_os("SIM_NETLOG").is_some()) {
            eprintln!("{:>7} server closes {peer}", turmoil::elapsed().as_millis());
        }
    }
}

impl<T> UserTimeout<T> {
    /// Wraps `inner`.
    pub fn new(inner: T) -> UserTimeout<T> {
        UserTimeout {
            inner,
            blocked: None,
            peer: None,
        }
    }

    fn pending<R>(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<R>> {
        let timer = self
            .blocked
            .get_or_insert_with(|| Box::pin(tokio::time::sleep(TCP_USER_TIMEOUT)));
        match timer.as_mut().poll(cx) {
            Poll::Ready(()) => Poll::Ready(Err(io::Error::new(
                io::ErrorKind::TimedOut,
                "unacknowledged data: retransmission timeout",
            ))),
            Poll::Pending => Poll::Pending,
        }
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for UserTimeout<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for UserTimeout<T> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match Pin::new(&mut self.inner).poll_write(cx, buf) {
            Poll::Pending => self.pending(cx),
            ready => {
                self.blocked = None;
                ready
            }
        }
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match Pin::new(&mut self.inner).poll_flush(cx) {
            Poll::Pending => self.pending(cx),
            ready => {
                self.blocked = None;
                ready
            }
        }
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}
