//! turmoil's simulated sockets plugged into the real server and client: an
//! [`axum::serve::Listener`] over turmoil's `TcpListener`, and a client
//! [`Connector`](changefeed::client::Connector) that dials turmoil's `TcpStream`.

use std::io;
use std::net::SocketAddr;
use std::time::Duration;

use hyper_util::rt::TokioIo;
use turmoil::net::{TcpListener, TcpStream};

/// turmoil's listener as an axum listener, so `axum::serve` (and the server's `serve`) run on
/// the simulated network unchanged.
pub struct SimListener(pub TcpListener);

impl SimListener {
    /// Binds `0.0.0.0:port` on the current simulated host.
    pub async fn bind(port: u16) -> io::Result<SimListener> {
        Ok(SimListener(
            TcpListener::bind(("0.0.0.0", port)).await?,
        ))
    }
}

impl axum::serve::Listener for SimListener {
    type Io = TcpStream;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        loop {
            match self.0.accept().await {
                Ok(accepted) => return accepted,
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

impl changefeed::client::Connector for SimConnector {
    type Io = TokioIo<TcpStream>;

    fn connect(
        &self,
        uri: &http::Uri,
    ) -> impl std::future::Future<Output = io::Result<Self::Io>> + Send {
        let host = uri.host().map(str::to_owned);
        let port = uri.port_u16().unwrap_or(80);
        async move {
            let host = host
                .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "the URL has no host"))?;
            let stream = TcpStream::connect((host.as_str(), port)).await?;
            Ok(TokioIo::new(stream))
        }
    }
}
