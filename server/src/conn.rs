//! The connection layer: our own accept loop on hyper-util, serving the axum [`Router`] over
//! HTTP/1.1 and HTTP/2 on one port (h2c with prior knowledge; with a certificate, TLS with ALPN
//! `h2`, `http/1.1`), with the limits a public socket needs. Each limit is a field of
//! [`ConnectionConfig`] (a `serve` flag each; defaults in [`ConnectionConfig::default`]):
//!
//! - **Request head timeout** ([`ConnectionConfig::head_timeout`]): a new connection must deliver
//!   a complete request head within it (this covers the TLS handshake, the HTTP/2 preface and
//!   slowloris clients sending a byte at a time); on a kept-alive connection the clock starts at
//!   the first byte of the next request.
//! - **Idle timeout** ([`ConnectionConfig::idle_timeout`]): a connection with no request in
//!   flight is closed this long after its last response ended.
//! - **Connection limit** ([`ConnectionConfig::max_connections`]): connections beyond it are
//!   still accepted, but every request on them gets `503 overloaded` with `Retry-After` (and
//!   HTTP/1.1 `Connection: close`). The stream limit is checked where streams open
//!   ([`crate::http`]).
//! - **Head size** ([`ConnectionConfig::max_uri_bytes`], [`ConnectionConfig::max_header_bytes`]):
//!   larger requests get the JSON `414 uri_too_long` / `431 headers_too_large`. hyper's own read
//!   buffer is sized a little above their sum ([`ConnectionConfig::head_buffer_bytes`]); a head
//!   larger than that gets hyper's bodyless 431 and the connection is closed.
//! - **File-descriptor exhaustion** ([`TcpAcceptor`]): a failing `accept` (EMFILE, ENFILE, ...)
//!   is logged once, retried with a backoff of up to a quarter second, and logged again when it
//!   recovers; open connections are served meanwhile and timeouts free descriptors.
//! - **Disconnect detection** ([`ClientGone`]): while an event stream is open on an HTTP/1.1
//!   connection, the connection's read half is watched (up to the head buffer's size of
//!   pipelined bytes is read ahead and handed to hyper later), so a client that pipelined another
//!   request and went away is noticed at once rather than at the next failed heartbeat write.
//!   As hyper does by default, a read EOF counts as gone (no half-closed clients). HTTP/2 notices
//!   it itself (stream reset or connection EOF drops the body).

use std::convert::Infallible;
use std::fmt::Debug;
use std::future::{poll_fn, Future};
use std::io;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::pin::{pin, Pin};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll};
use std::time::Duration;

use axum::body::Body;
use axum::http::{header, HeaderValue, Request, Response, StatusCode, Version};
use axum::serve::Listener;
use axum::Router;
use bytes::Bytes;
use changefeed_core::{ApiError, ErrorCode};
use hyper::body::{Frame, Incoming, SizeHint};
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::sync::{mpsc, watch, Semaphore};
use tokio::time::Instant;
use tokio_rustls::TlsAcceptor;

use crate::shutdown::ShutdownSignal;

/// Connection limits and timeouts, and the TLS certificate (see the module docs).
#[derive(Debug, Clone, PartialEq)]
pub struct ConnectionConfig {
    /// A request head must be complete within this time of the connection opening (or of the
    /// first byte of a later request). Default 10 s.
    pub head_timeout: Duration,
    /// A connection with no request in flight is closed this long after its last response.
    /// Default 60 s.
    pub idle_timeout: Duration,
    /// Connections served normally; requests on any beyond get `503 overloaded`. Default 16384.
    pub max_connections: usize,
    /// Concurrent event streams (over all connections); a stream beyond gets `503 overloaded`.
    /// Default 16384.
    pub max_streams: usize,
    /// Longest request target (path and query) in bytes; longer gets `414`. Default 8 KiB.
    pub max_uri_bytes: usize,
    /// Largest sum of header names and values in bytes; larger gets `431`. Default 32 KiB.
    pub max_header_bytes: usize,
    /// `Retry-After` (seconds) sent with `503 overloaded`. Default 1.
    pub retry_after_secs: u64,
    /// Serve TLS (ALPN `h2`, `http/1.1`) with this certificate and key instead of plain text.
    pub tls: Option<TlsFiles>,
}

impl Default for ConnectionConfig {
    fn default() -> Self {
        ConnectionConfig {
            head_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(60),
            max_connections: 16_384,
            max_streams: 16_384,
            max_uri_bytes: 8 * 1024,
            max_header_bytes: 32 * 1024,
            retry_after_secs: 1,
            tls: None,
        }
    }
}

impl ConnectionConfig {
    /// hyper's per-connection read buffer limit (and the read-ahead bound): the head limits plus
    /// room for the request line and framing, so every head within the limits is parsed and
    /// answered by us.
    pub fn head_buffer_bytes(&self) -> usize {
        (self.max_uri_bytes + self.max_header_bytes + 16 * 1024).max(8 * 1024)
    }
}

/// PEM files of a TLS certificate chain and its private key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsFiles {
    /// The certificate chain, leaf first.
    pub cert: PathBuf,
    /// The private key (PKCS#8, PKCS#1 or SEC1).
    pub key: PathBuf,
}

/// Loads a certificate and key into a TLS acceptor offering `h2` and `http/1.1` by ALPN; the
/// error names the file and the problem.
pub fn tls_acceptor(files: &TlsFiles) -> Result<TlsAcceptor, String> {
    use rustls_pki_types::pem::PemObject;
    use rustls_pki_types::{CertificateDer, PrivateKeyDer};
    let certs = CertificateDer::pem_file_iter(&files.cert)
        .and_then(|certs| certs.collect::<Result<Vec<_>, _>>())
        .map_err(|error| format!("cannot read certificate {}: {error}", files.cert.display()))?;
    if certs.is_empty() {
        return Err(format!(
            "no certificate in {} (expected PEM)",
            files.cert.display()
        ));
    }
    let key = PrivateKeyDer::from_pem_file(&files.key)
        .map_err(|error| format!("cannot read private key {}: {error}", files.key.display()))?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|error| format!("TLS: {error}"))?
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .map_err(|error| {
            format!(
                "certificate {} and key {} do not make a TLS identity: {error}",
                files.cert.display(),
                files.key.display()
            )
        })?;
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(TlsAcceptor::from(Arc::new(config)))
}

/// A TCP listener that sets `TCP_NODELAY` on every connection (small frames must not wait for
/// Nagle's algorithm) and survives `accept` failures such as file-descriptor exhaustion: it
/// logs the first failure of a run once, backs off (5 ms doubling to 250 ms; the pending
/// connections wait in the kernel's backlog) and logs when accepting works again.
#[derive(Debug)]
pub struct TcpAcceptor {
    listener: tokio::net::TcpListener,
    failures: u64,
}

impl TcpAcceptor {
    /// Wraps a bound listener.
    pub fn new(listener: tokio::net::TcpListener) -> TcpAcceptor {
        TcpAcceptor {
            listener,
            failures: 0,
        }
    }
}

/// Errors about one connection (it went away before we took it), not about the listener.
fn is_connection_error(error: &io::Error) -> bool {
    matches!(
        error.kind(),
        io::ErrorKind::ConnectionRefused
            | io::ErrorKind::ConnectionAborted
            | io::ErrorKind::ConnectionReset
    )
}

impl Listener for TcpAcceptor {
    type Io = tokio::net::TcpStream;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        let mut backoff = Duration::from_millis(5);
        loop {
            match self.listener.accept().await {
                Ok((stream, addr)) => {
                    if self.failures > 0 {
                        tracing::warn!(
                            failed = self.failures,
                            "accepting connections again after failed accepts"
                        );
                        self.failures = 0;
                    }
                    if let Err(error) = stream.set_nodelay(true) {
                        tracing::debug!(%error, "cannot set TCP_NODELAY");
                    }
                    return (stream, addr);
                }
                Err(error) if is_connection_error(&error) => {}
                Err(error) => {
                    if self.failures == 0 {
                        tracing::error!(
                            %error,
                            "cannot accept connections (out of file descriptors?); backing off \
                             until it works again, serving the open connections meanwhile"
                        );
                    }
                    self.failures += 1;
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(Duration::from_millis(250));
                }
            }
        }
    }

    fn local_addr(&self) -> io::Result<Self::Addr> {
        self.listener.local_addr()
    }
}

/// Serves `router` on every connection `listener` accepts until `shutdown` fires; then each
/// connection finishes its responses (open streams end with their final checkpoint) for at
/// most `grace`. Fails only when the TLS certificate cannot be loaded.
pub async fn serve<L>(
    mut listener: L,
    router: Router,
    config: &ConnectionConfig,
    mut shutdown: ShutdownSignal,
    grace: Duration,
) -> io::Result<()>
where
    L: Listener,
    L::Addr: Debug,
{
    let tls = match &config.tls {
        Some(files) => Some(tls_acceptor(files).map_err(io::Error::other)?),
        None => None,
    };
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .keep_alive(true)
        .max_buf_size(config.head_buffer_bytes());
    builder
        .http2()
        .max_header_list_size(u32::try_from(config.head_buffer_bytes()).unwrap_or(u32::MAX));
    let shared = Arc::new(Served {
        builder,
        router,
        tls,
        config: config.clone(),
        connections: Arc::new(Semaphore::new(config.max_connections)),
    });
    // Every connection task holds a sender; `recv` returns `None` once all are gone.
    let (open_tx, mut open_rx) = mpsc::channel::<()>(1);
    loop {
        let (io, addr) = tokio::select! {
            biased;
            _ = shutdown.wait() => break,
            accepted = listener.accept() => accepted,
        };
        tracing::trace!(?addr, "connection accepted");
        let peer = crate::http::PeerAddr::of(&addr);
        let shared = shared.clone();
        let shutdown = shutdown.clone();
        let open = open_tx.clone();
        tokio::spawn(async move {
            let permit = shared.connections.clone().try_acquire_owned().ok();
            if permit.is_none() {
                tracing::debug!(?addr, "over the connection limit; answering 503");
            }
            shared
                .connection(io, peer, permit.is_some(), shutdown)
                .await;
            drop((permit, open));
        });
    }
    drop(listener);
    drop(open_tx);
    tokio::select! {
        _ = open_rx.recv() => {}
        _ = tokio::time::sleep(grace) => {
            tracing::warn!(?grace, "connections still open after the shutdown grace period; leaving them");
        }
    }
    Ok(())
}

/// What every connection of one [`serve`] shares.
struct Served {
    builder: auto::Builder<TokioExecutor>,
    router: Router,
    tls: Option<TlsAcceptor>,
    config: ConnectionConfig,
    connections: Arc<Semaphore>,
}

impl Served {
    async fn connection<I>(
        &self,
        io: I,
        peer: crate::http::PeerAddr,
        admitted: bool,
        shutdown: ShutdownSignal,
    ) where
        I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let state = Arc::new(ConnState::new(Instant::now()));
        let io = WatchedIo::new(io, state.clone(), self.config.head_buffer_bytes());
        match &self.tls {
            None => self.drive(io, state, peer, admitted, shutdown).await,
            Some(acceptor) => {
                let deadline = state.opened + self.config.head_timeout;
                match tokio::time::timeout_at(deadline, acceptor.accept(io)).await {
                    Ok(Ok(tls)) => self.drive(tls, state, peer, admitted, shutdown).await,
                    Ok(Err(error)) => tracing::debug!(%error, "TLS handshake failed"),
                    Err(_) => tracing::debug!("TLS handshake timed out"),
                }
            }
        }
    }

    /// Runs hyper on one connection next to the read-half watch and the head/idle deadline.
    async fn drive<I>(
        &self,
        io: I,
        state: Arc<ConnState>,
        peer: crate::http::PeerAddr,
        admitted: bool,
        mut shutdown: ShutdownSignal,
    ) where
        I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let service = ConnService {
            router: self.router.clone(),
            state: state.clone(),
            peer,
            admitted,
            config: Arc::new(self.config.clone()),
        };
        let mut conn = pin!(self.builder.serve_connection(TokioIo::new(io), service));
        let mut shutdown_wait = pin!(shutdown.wait());
        let mut timer = pin!(tokio::time::sleep_until(
            state.opened + self.config.head_timeout
        ));
        let mut shutting_down = false;
        let (head_timeout, idle_timeout) = (self.config.head_timeout, self.config.idle_timeout);
        poll_fn(|cx| {
            if !shutting_down && shutdown_wait.as_mut().poll(cx).is_ready() {
                shutting_down = true;
                conn.as_mut().graceful_shutdown();
            }
            if let Poll::Ready(result) = conn.as_mut().poll(cx) {
                if let Err(error) = result {
                    tracing::debug!(%error, "connection ended with an error");
                }
                return Poll::Ready(());
            }
            state.poll_read_ahead(cx);
            if let Some(deadline) = state.deadline(head_timeout, idle_timeout) {
                if timer.deadline() != deadline {
                    timer.as_mut().reset(deadline);
                }
                if timer.as_mut().poll(cx).is_ready() {
                    tracing::debug!(
                        "closing a connection: no complete request head in time, or idle"
                    );
                    return Poll::Ready(());
                }
            }
            Poll::Pending
        })
        .await;
    }
}

/// One connection's bookkeeping, shared by its IO, its service and its response bodies.
struct ConnState {
    opened: Instant,
    /// Requests whose response has not ended yet.
    in_flight: AtomicUsize,
    timing: Mutex<Timing>,
    /// `true` once the client is gone (read EOF or error seen by the read-ahead).
    gone: watch::Sender<bool>,
    /// The read half, when the watch may read ahead (set by [`WatchedIo::new`]).
    reader: Mutex<Option<Arc<dyn ReadAhead>>>,
}

struct Timing {
    /// When the connection last had no request in flight (its opening, at first).
    idle_since: Instant,
    /// The first byte read since then, if any (a request head is arriving).
    head_started: Option<Instant>,
    /// Whether any request was served yet (the first head is timed from the opening).
    served: bool,
}

impl ConnState {
    fn new(opened: Instant) -> ConnState {
        ConnState {
            opened,
            in_flight: AtomicUsize::new(0),
            timing: Mutex::new(Timing {
                idle_since: opened,
                head_started: None,
                served: false,
            }),
            gone: watch::Sender::new(false),
            reader: Mutex::new(None),
        }
    }

    fn timing(&self) -> MutexGuard<'_, Timing> {
        self.timing
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// When the connection is to be closed, if nothing happens first.
    fn deadline(&self, head_timeout: Duration, idle_timeout: Duration) -> Option<Instant> {
        if self.in_flight.load(Ordering::Acquire) > 0 {
            return None;
        }
        let timing = self.timing();
        Some(match (timing.served, timing.head_started) {
            (false, _) => self.opened + head_timeout,
            (true, Some(started)) => started + head_timeout,
            (true, None) => timing.idle_since + idle_timeout,
        })
    }

    fn bytes_read(&self) {
        if self.in_flight.load(Ordering::Acquire) == 0 {
            let mut timing = self.timing();
            if timing.head_started.is_none() {
                timing.head_started = Some(Instant::now());
            }
        }
    }

    fn request_started(&self) {
        self.in_flight.fetch_add(1, Ordering::AcqRel);
        let mut timing = self.timing();
        timing.served = true;
        timing.head_started = None;
    }

    fn request_ended(&self) {
        if self.in_flight.fetch_sub(1, Ordering::AcqRel) == 1 {
            let mut timing = self.timing();
            timing.idle_since = Instant::now();
            timing.head_started = None;
        }
    }

    fn poll_read_ahead(&self, cx: &mut Context<'_>) {
        // Only while a stream watches, and only until the client is known to be gone.
        if self.gone.receiver_count() == 0 || *self.gone.borrow() {
            return;
        }
        let reader = self
            .reader
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .clone();
        if let Some(reader) = reader {
            if reader.poll_read_ahead(cx) {
                self.gone.send_replace(true);
            }
        }
    }
}

/// A request's hold on its connection's in-flight count, released when its response ends.
struct InFlight(Arc<ConnState>);

impl InFlight {
    fn new(state: Arc<ConnState>) -> InFlight {
        state.request_started();
        InFlight(state)
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.request_ended();
    }
}

/// Put in every request's extensions: lets a streaming response learn that its client went
/// away (see the module docs). Absent when a router is called other than through [`serve`].
#[derive(Clone)]
pub struct ClientGone(Arc<ConnState>);

impl ClientGone {
    /// A watch that resolves once the client is gone; keeping it alive turns the read-half
    /// watch on.
    pub fn watch(&self) -> ClientGoneWatch {
        ClientGoneWatch(self.0.gone.subscribe())
    }
}

/// See [`ClientGone::watch`].
pub struct ClientGoneWatch(watch::Receiver<bool>);

impl ClientGoneWatch {
    /// Resolves once the client is gone (or its connection ended). Cancel-safe.
    pub async fn gone(&mut self) {
        let _ = self.0.wait_for(|gone| *gone).await;
    }
}

/// The service hyper calls per request: admission and head-size checks, then the router.
#[derive(Clone)]
struct ConnService {
    router: Router,
    state: Arc<ConnState>,
    /// Handed to handlers as `ConnectInfo<PeerAddr>` (`/metrics` and `/healthz` trust loopback).
    peer: crate::http::PeerAddr,
    admitted: bool,
    config: Arc<ConnectionConfig>,
}

impl ConnService {
    fn refuse(&self, request: &Request<Incoming>) -> Option<Response<Body>> {
        if !self.admitted {
            let mut response = error_response(ApiError::new(
                ErrorCode::Overloaded,
                format!(
                    "the server is at its limit of {} connections; retry later",
                    self.config.max_connections
                ),
            ));
            let headers = response.headers_mut();
            headers.insert(
                header::RETRY_AFTER,
                HeaderValue::from(self.config.retry_after_secs),
            );
            if request.version() <= Version::HTTP_11 {
                headers.insert(header::CONNECTION, HeaderValue::from_static("close"));
            }
            return Some(response);
        }
        let uri = request.uri();
        let target = uri.path_and_query().map_or(0, |pq| pq.as_str().len())
            + uri
                .authority()
                .map_or(0, |authority| authority.as_str().len());
        if target > self.config.max_uri_bytes {
            return Some(error_response(ApiError::new(
                ErrorCode::UriTooLong,
                format!(
                    "the request target is {target} bytes; at most {} are accepted",
                    self.config.max_uri_bytes
                ),
            )));
        }
        let headers: usize = request
            .headers()
            .iter()
            .map(|(name, value)| name.as_str().len() + value.len() + 4)
            .sum();
        if headers > self.config.max_header_bytes {
            return Some(error_response(ApiError::new(
                ErrorCode::HeadersTooLarge,
                format!(
                    "the request's header fields are {headers} bytes; at most {} are accepted",
                    self.config.max_header_bytes
                ),
            )));
        }
        None
    }
}

/// The JSON error body with its code's status.
pub fn error_response(error: ApiError) -> Response<Body> {
    let status = StatusCode::from_u16(error.status()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    let mut response = Response::new(Body::from(error.to_json()));
    *response.status_mut() = status;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    response
}

type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send>>;

impl hyper::service::Service<Request<Incoming>> for ConnService {
    type Response = Response<Guarded>;
    type Error = Infallible;
    type Future = BoxFuture<Result<Self::Response, Infallible>>;

    fn call(&self, mut request: Request<Incoming>) -> Self::Future {
        let in_flight = InFlight::new(self.state.clone());
        if let Some(response) = self.refuse(&request) {
            return Box::pin(std::future::ready(Ok(guarded(response, in_flight))));
        }
        request
            .extensions_mut()
            .insert(ClientGone(self.state.clone()));
        request
            .extensions_mut()
            .insert(axum::extract::ConnectInfo(self.peer));
        let mut router = self.router.clone();
        Box::pin(async move {
            let response = match tower_service::Service::call(&mut router, request).await {
                Ok(response) => response,
                Err(never) => match never {},
            };
            Ok(guarded(response, in_flight))
        })
    }
}

fn guarded(response: Response<Body>, in_flight: InFlight) -> Response<Guarded> {
    response.map(|body| Guarded {
        body,
        _in_flight: in_flight,
    })
}

/// A response body that holds its request's [`InFlight`] until it ends or is dropped.
pub struct Guarded {
    body: Body,
    _in_flight: InFlight,
}

impl http_body::Body for Guarded {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, axum::Error>>> {
        Pin::new(&mut self.body).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}

/// The read-ahead half of a [`WatchedIo`], type-erased for [`ConnState`].
trait ReadAhead: Send + Sync {
    /// Reads what is available into the read-ahead buffer; `true` once the client is gone.
    fn poll_read_ahead(&self, cx: &mut Context<'_>) -> bool;
}

struct IoInner<I> {
    io: I,
    /// Bytes read ahead, not yet handed to hyper (from `start`).
    ahead: Vec<u8>,
    start: usize,
    eof: bool,
    error: Option<io::Error>,
}

/// The connection's socket, shared between hyper and the read-half watch (both run in the
/// connection's task, so the lock is never contended).
struct WatchedIo<I> {
    inner: Arc<Mutex<IoInner<I>>>,
    state: Arc<ConnState>,
}

struct Reader<I> {
    inner: Arc<Mutex<IoInner<I>>>,
    limit: usize,
}

impl<I> WatchedIo<I>
where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    fn new(io: I, state: Arc<ConnState>, limit: usize) -> WatchedIo<I> {
        let inner = Arc::new(Mutex::new(IoInner {
            io,
            ahead: Vec::new(),
            start: 0,
            eof: false,
            error: None,
        }));
        *state
            .reader
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner()) = Some(Arc::new(Reader {
            inner: inner.clone(),
            limit,
        }));
        WatchedIo { inner, state }
    }

    fn lock(&self) -> MutexGuard<'_, IoInner<I>> {
        self.inner
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

impl<I> Drop for WatchedIo<I> {
    fn drop(&mut self) {
        // Break the cycle state → reader → inner.
        self.state
            .reader
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .take();
    }
}

impl<I: AsyncRead + Unpin + Send + 'static> ReadAhead for Reader<I> {
    fn poll_read_ahead(&self, cx: &mut Context<'_>) -> bool {
        let mut guard = self
            .inner
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        let inner = &mut *guard;
        let mut read_any = false;
        while !inner.eof && inner.error.is_none() && inner.ahead.len() - inner.start < self.limit {
            let mut chunk = [0u8; 4096];
            let mut buf = ReadBuf::new(&mut chunk);
            match Pin::new(&mut inner.io).poll_read(cx, &mut buf) {
                Poll::Ready(Ok(())) if buf.filled().is_empty() => inner.eof = true,
                Poll::Ready(Ok(())) => {
                    inner.ahead.extend_from_slice(buf.filled());
                    read_any = true;
                }
                Poll::Ready(Err(error)) => inner.error = Some(error),
                Poll::Pending => break,
            }
        }
        let gone = inner.eof || inner.error.is_some();
        if read_any || gone {
            // hyper may be waiting for these bytes (or the EOF) on the same task.
            cx.waker().wake_by_ref();
        }
        gone
    }
}

impl<I: AsyncRead + AsyncWrite + Unpin + Send + 'static> AsyncRead for WatchedIo<I> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let mut guard = self.lock();
        let inner = &mut *guard;
        if inner.start < inner.ahead.len() {
            let n = buf.remaining().min(inner.ahead.len() - inner.start);
            buf.put_slice(&inner.ahead[inner.start..inner.start + n]);
            inner.start += n;
            if inner.start == inner.ahead.len() {
                inner.ahead = Vec::new();
                inner.start = 0;
            }
            return Poll::Ready(Ok(()));
        }
        if let Some(error) = inner.error.take() {
            inner.eof = true;
            return Poll::Ready(Err(error));
        }
        if inner.eof {
            return Poll::Ready(Ok(()));
        }
        let before = buf.filled().len();
        let result = Pin::new(&mut inner.io).poll_read(cx, buf);
        if buf.filled().len() > before {
            drop(guard);
            self.state.bytes_read();
        }
        result
    }
}

impl<I: AsyncRead + AsyncWrite + Unpin + Send + 'static> AsyncWrite for WatchedIo<I> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.lock().io).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.lock().io).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.lock().io.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.lock().io).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.lock().io).poll_shutdown(cx)
    }
}
