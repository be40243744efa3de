//! How the client reaches a server: the [`Connector`] trait, plain TCP ([`TcpConnector`]) and
//! TCP with rustls for `https` URLs ([`HttpsConnector`]).

use std::fmt;
use std::future::Future;
use std::io;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use hyper_util::rt::TokioIo;
use rustls::pki_types::ServerName;
use rustls::RootCertStore;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::CertificateDer;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;

/// Opens the byte stream of one HTTP/1 connection to the authority of a URI.
///
/// The client calls it once per connection attempt (and once per redirect hop). Errors are
/// retried with backoff, except these kinds, which mean no retry can succeed and end the stream
/// with [`ClientError::Connector`](crate::ClientError::Connector):
///
/// - [`io::ErrorKind::Unsupported`] and [`io::ErrorKind::InvalidInput`]: the URL cannot work
///   with this connector (an `https` URL given to [`TcpConnector`], no host);
/// - [`io::ErrorKind::InvalidData`]: the peer cannot be trusted or understood (a TLS handshake
///   that failed on the certificate or the protocol, as [`HttpsConnector`] reports it).
pub trait Connector: Clone + Send + Sync + 'static {
    /// The connection's byte stream.
    type Io: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static;

    /// Connects to the host and port of `uri`.
    fn connect(&self, uri: &::http::Uri) -> impl Future<Output = io::Result<Self::Io>> + Send;
}

/// Plain TCP (`http` URLs only), through tokio.
#[derive(Debug, Clone, Copy, Default)]
pub struct TcpConnector;

impl Connector for TcpConnector {
    type Io = TokioIo<TcpStream>;

    fn connect(&self, uri: &::http::Uri) -> impl Future<Output = io::Result<Self::Io>> + Send {
        let target = target(uri, false);
        async move {
            let target = target?;
            Ok(TokioIo::new(dial(&target).await?))
        }
    }
}

/// What to dial for a URI.
struct Target {
    /// The host, IPv6 brackets removed.
    host: String,
    port: u16,
    tls: bool,
}

fn target(uri: &::http::Uri, tls_supported: bool) -> io::Result<Target> {
    let tls = match uri.scheme_str() {
        Some("http") => false,
        Some("https") if tls_supported => true,
        other => {
            let wanted = if tls_supported {
                "http or https"
            } else {
                "plain http only (use HttpsConnector for https)"
            };
            return Err(io::Error::new(
                io::ErrorKind::Unsupported,
                format!(
                    "the connector speaks {wanted}, not {:?}",
                    other.unwrap_or("")
                ),
            ));
        }
    };
    let host = uri
        .host()
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "the URL has no host"))?;
    let host = host
        .trim_start_matches('[')
        .trim_end_matches(']')
        .to_owned();
    let port = uri.port_u16().unwrap_or(if tls { 443 } else { 80 });
    Ok(Target { host, port, tls })
}

async fn dial(target: &Target) -> io::Result<TcpStream> {
    let stream = TcpStream::connect((target.host.as_str(), target.port)).await?;
    stream.set_nodelay(true)?;
    Ok(stream)
}

/// Where the CA certificates an [`HttpsConnector`] trusts come from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TrustRoots {
    /// The platform's store (on Linux the system bundle, `SSL_CERT_FILE`/`SSL_CERT_DIR` if
    /// set); Mozilla's list when the platform has none.
    Platform,
    /// Mozilla's list, compiled in (`webpki-roots`).
    Mozilla,
    /// Only the certificates of this PEM file: a private CA, like curl's `--cacert`.
    PemFile(PathBuf),
}

/// Why TLS could not be set up, or a handshake failed.
#[derive(Debug)]
pub struct TlsError {
    message: String,
    source: Option<Box<dyn std::error::Error + Send + Sync>>,
}

impl TlsError {
    fn new(message: impl Into<String>) -> TlsError {
        TlsError {
            message: message.into(),
            source: None,
        }
    }

    fn with_source(
        message: impl Into<String>,
        source: impl Into<Box<dyn std::error::Error + Send + Sync>>,
    ) -> TlsError {
        TlsError {
            message: message.into(),
            source: Some(source.into()),
        }
    }
}

impl fmt::Display for TlsError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for TlsError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        self.source.as_deref().map(|source| source as _)
    }
}

/// TCP for `http` URLs and TCP with TLS (rustls, HTTP/1.1 by ALPN) for `https` URLs.
///
/// A certificate that does not verify against the [`TrustRoots`] is a terminal error (no
/// retry can fix it), reported as [`io::ErrorKind::InvalidData`] with a message that says
/// why.
#[derive(Clone)]
pub struct HttpsConnector {
    tls: tokio_rustls::TlsConnector,
    roots: Arc<TrustRoots>,
}

impl fmt::Debug for HttpsConnector {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("HttpsConnector")
            .field("roots", &self.roots)
            .finish_non_exhaustive()
    }
}

impl HttpsConnector {
    /// Trusting the platform's roots ([`TrustRoots::Platform`]).
    pub fn new() -> Result<HttpsConnector, TlsError> {
        HttpsConnector::with_roots(TrustRoots::Platform)
    }

    /// Trusting `roots`. Fails when a PEM file cannot be read or holds no certificate.
    pub fn with_roots(roots: TrustRoots) -> Result<HttpsConnector, TlsError> {
        let store = root_store(&roots)?;
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut config = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|error| TlsError::with_source("cannot configure TLS", error))?
            .with_root_certificates(store)
            .with_no_client_auth();
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        Ok(HttpsConnector {
            tls: tokio_rustls::TlsConnector::from(Arc::new(config)),
            roots: Arc::new(roots),
        })
    }

    /// Where this connector's trusted roots come from.
    pub fn roots(&self) -> &TrustRoots {
        &self.roots
    }
}

fn root_store(roots: &TrustRoots) -> Result<RootCertStore, TlsError> {
    let mozilla = || RootCertStore {
        roots: webpki_roots::TLS_SERVER_ROOTS.to_vec(),
    };
    match roots {
        TrustRoots::Mozilla => Ok(mozilla()),
        TrustRoots::Platform => {
            let found = rustls_native_certs::load_native_certs();
            let mut store = RootCertStore::empty();
            let (added, _ignored) = store.add_parsable_certificates(found.certs);
            if added == 0 {
                tracing::debug!(errors = ?found.errors, "no platform CA certificates; using Mozilla's list");
                return Ok(mozilla());
            }
            Ok(store)
        }
        TrustRoots::PemFile(path) => {
            let certs = read_pem_certificates(path)?;
            let mut store = RootCertStore::empty();
            for cert in certs {
                store.add(cert).map_err(|error| {
                    TlsError::with_source(
                        format!("{}: a certificate cannot be used as a CA", path.display()),
                        error,
                    )
                })?;
            }
            Ok(store)
        }
    }
}

fn read_pem_certificates(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let shown = path.display();
    let certs = CertificateDer::pem_file_iter(path)
        .map_err(|error| TlsError::with_source(format!("cannot read CA file {shown}"), error))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|error| TlsError::with_source(format!("CA file {shown} is not PEM"), error))?;
    if certs.is_empty() {
        return Err(TlsError::new(format!(
            "CA file {shown} holds no PEM certificate (-----BEGIN CERTIFICATE-----)"
        )));
    }
    Ok(certs)
}

impl Connector for HttpsConnector {
    type Io = TokioIo<MaybeTlsStream>;

    fn connect(&self, uri: &::http::Uri) -> impl Future<Output = io::Result<Self::Io>> + Send {
        let target = target(uri, true);
        let tls = self.tls.clone();
        let roots = Arc::clone(&self.roots);
        async move {
            let target = target?;
            let tcp = dial(&target).await?;
            if !target.tls {
                return Ok(TokioIo::new(MaybeTlsStream::Plain(tcp)));
            }
            let name = ServerName::try_from(target.host.clone()).map_err(|_| {
                io::Error::new(
                    io::ErrorKind::InvalidInput,
                    format!("{:?} is not a valid TLS server name", target.host),
                )
            })?;
            match tls.connect(name, tcp).await {
                Ok(stream) => Ok(TokioIo::new(MaybeTlsStream::Tls(Box::new(stream)))),
                Err(error) => Err(handshake_error(&target, &roots, error)),
            }
        }
    }
}

/// A handshake failure: terminal ([`io::ErrorKind::InvalidData`]) when TLS itself refused the
/// peer, with a message saying why; otherwise (the connection broke) as it was, to be retried.
fn handshake_error(target: &Target, roots: &TrustRoots, error: io::Error) -> io::Error {
    let Some(tls) = error
        .get_ref()
        .and_then(|inner| inner.downcast_ref::<rustls::Error>())
    else {
        return error;
    };
    let authority = format!("{}:{}", target.host, target.port);
    let hint = match tls {
        rustls::Error::InvalidCertificate(
            rustls::CertificateError::UnknownIssuer | rustls::CertificateError::BadSignature,
        ) => match roots {
            TrustRoots::PemFile(path) => format!(
                ": the server's certificate is not signed by the CA in {}",
                path.display()
            ),
            _ => ": the server's certificate is not signed by a trusted CA (for a private \
                       CA, trust its certificate file, e.g. `--cacert FILE`)"
                .to_owned(),
        },
        rustls::Error::InvalidCertificate(
            rustls::CertificateError::NotValidForName
            | rustls::CertificateError::NotValidForNameContext { .. },
        ) => format!(
            ": the server's certificate is not valid for {:?}",
            target.host
        ),
        rustls::Error::InvalidCertificate(
            rustls::CertificateError::Expired | rustls::CertificateError::ExpiredContext { .. },
        ) => ": the server's certificate has expired".to_owned(),
        _ => String::new(),
    };
    io::Error::new(
        io::ErrorKind::InvalidData,
        TlsError::with_source(
            format!("TLS handshake with {authority} failed: {tls}{hint}"),
            error,
        ),
    )
}

/// The byte stream of an [`HttpsConnector`] connection: plain TCP or TLS over TCP.
#[derive(Debug)]
pub enum MaybeTlsStream {
    /// An `http` connection.
    Plain(TcpStream),
    /// An `https` connection.
    Tls(Box<TlsStream<TcpStream>>),
}

impl AsyncRead for MaybeTlsStream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            MaybeTlsStream::Plain(stream) => Pin::new(stream).poll_read(cx, buf),
            MaybeTlsStream::Tls(stream) => Pin::new(stream.as_mut()).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for MaybeTlsStream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            MaybeTlsStream::Plain(stream) => Pin::new(stream).poll_write(cx, buf),
            MaybeTlsStream::Tls(stream) => Pin::new(stream.as_mut()).poll_write(cx, buf),
        }
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            MaybeTlsStream::Plain(stream) => Pin::new(stream).poll_write_vectored(cx, bufs),
            MaybeTlsStream::Tls(stream) => Pin::new(stream.as_mut()).poll_write_vectored(cx, bufs),
        }
    }

    fn is_write_vectored(&self) -> bool {
        match self {
            MaybeTlsStream::Plain(stream) => stream.is_write_vectored(),
            MaybeTlsStream::Tls(stream) => stream.is_write_vectored(),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            MaybeTlsStream::Plain(stream) => Pin::new(stream).poll_flush(cx),
            MaybeTlsStream::Tls(stream) => Pin::new(stream.as_mut()).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            MaybeTlsStream::Plain(stream) => Pin::new(stream).poll_shutdown(cx),
            MaybeTlsStream::Tls(stream) => Pin::new(stream.as_mut()).poll_shutdown(cx),
        }
    }
}
