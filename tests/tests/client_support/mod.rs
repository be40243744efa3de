//! Shared helpers of the `client_*` tests: a scripted SSE server whose every byte the test
//! writes (over real TCP, or over in-memory pipes for tests on tokio's paused clock), a driver
//! that runs a [`Client`] in its own task and reports each item with its cursor and time, and
//! small HTTP helpers for the contract-service tests.
//!
//! Every wait is bounded (a failure bound only: helpers return as soon as what they wait for is
//! observed). On the paused clock the bound is virtual time, which tokio advances only when
//! every task is idle, so it never fires while work is pending.

#![allow(dead_code)]

use std::collections::VecDeque;
use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use changefeed_client::{Client, ClientError, ClientItem, Connector};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::header::HeaderMap;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, DuplexStream};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio::time::Instant;

/// The failure bound of waits on the real clock.
pub const REAL: Duration = Duration::from_secs(30);
/// The failure bound of waits on the paused clock (virtual time: costs nothing).
pub const VIRTUAL: Duration = Duration::from_secs(4 * 3600);

/// An epoch for cursors in scripts.
pub const EPOCH: &str = "00000000000000aa";

/// `<EPOCH>:<seq>`.
pub fn cursor(seq: u64) -> String {
    format!("{EPOCH}:{seq}")
}

/// A change frame as the server encodes it.
pub fn change_frame(seq: u64, kind: &str) -> String {
    format!(
        "id: {}\nevent: {kind}\ndata: {}\n\n",
        cursor(seq),
        change_json(seq, kind)
    )
}

/// A `changefeed.reset` frame continuing after `seq`, written by hand (not by the code under test).
pub fn reset_frame(requested: &str, seq: u64, reason: &str) -> String {
    let after = cursor(seq);
    format!(
        "id: {after}\nevent: changefeed.reset\ndata: {{\"requested\":\"{requested}\",\"after\":\"{after}\",\"reason\":\"{reason}\"}}\n\n"
    )
}

/// The event JSON of a change frame.
pub fn change_json(seq: u64, kind: &str) -> String {
    format!(
        r#"{{"seq":{seq},"projectId":"p1","sessionId":"s1","type":"{kind}","payload":{{"n":{seq}}},"createdAt":"2026-11-26T21:13:07.123Z"}}"#
    )
}

/// Awaits `future`, failing the test after `bound`.
pub async fn bounded<F: Future>(what: &str, bound: Duration, future: F) -> F::Output {
    match tokio::time::timeout(bound, future).await {
        Ok(output) => output,
        Err(_) => panic!("gave up after {bound:?} waiting for {what}"),
    }
}

/// A byte stream the scripted server can serve.
pub trait Io: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Io for T {}

/// A request as the scripted server received it.
#[derive(Debug, Clone)]
pub struct Recorded {
    pub method: String,
    pub target: String,
    /// Names lowercased, in arrival order.
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Recorded {
    /// The value of the only header `name` (case-insensitive); panics if repeated.
    pub fn header(&self, name: &str) -> Option<&str> {
        let values = self.headers_named(name);
        assert!(values.len() <= 1, "{name} sent {} times", values.len());
        values.first().copied()
    }

    /// Every value of header `name`.
    pub fn headers_named(&self, name: &str) -> Vec<&str> {
        let name = name.to_ascii_lowercase();
        self.headers
            .iter()
            .filter(|(n, _)| *n == name)
            .map(|(_, v)| v.as_str())
            .collect()
    }
}

/// One accepted connection, its request already read.
pub struct ScriptConn {
    pub request: Recorded,
    /// When the request was complete.
    pub at: Instant,
    io: Box<dyn Io>,
    bound: Duration,
}

impl ScriptConn {
    /// Writes `bytes` and flushes.
    pub async fn write(&mut self, bytes: impl AsRef<[u8]>) {
        self.io
            .write_all(bytes.as_ref())
            .await
            .expect("write to the client");
        self.io.flush().await.expect("flush to the client");
    }

    /// Starts a `200 text/event-stream` response whose body ends when the connection closes.
    pub async fn stream_head(&mut self) {
        self.write(
            "HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ncache-control: no-cache\r\n\
             connection: close\r\n\r\n",
        )
        .await;
    }

    /// A complete response, then the connection closes.
    pub async fn respond(mut self, status: &str, headers: &[(&str, &str)], body: &str) {
        let mut head = format!("HTTP/1.1 {status}\r\ncontent-length: {}\r\n", body.len());
        for (name, value) in headers {
            head.push_str(&format!("{name}: {value}\r\n"));
        }
        head.push_str("connection: close\r\n\r\n");
        head.push_str(body);
        self.write(head).await;
        let _ = self.io.shutdown().await;
    }

    /// Waits until the client closes the connection (EOF or reset).
    pub async fn closed(&mut self) {
        let bound = self.bound;
        bounded("the client to close the connection", bound, async {
            let mut buf = [0u8; 256];
            loop {
                match self.io.read(&mut buf).await {
                    Ok(0) | Err(_) => return,
                    Ok(_) => {}
                }
            }
        })
        .await
    }
}

/// Reads one request head (and a `content-length` body). `None` if the peer closed first.
async fn read_request(io: &mut Box<dyn Io>) -> Option<Recorded> {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    let head_end = loop {
        if let Some(at) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break at;
        }
        let n = io.read(&mut chunk).await.ok()?;
        if n == 0 {
            return None;
        }
        buf.extend_from_slice(&chunk[..n]);
    };
    let head = String::from_utf8_lossy(&buf[..head_end]).into_owned();
    let mut lines = head.split("\r\n");
    let mut start = lines.next()?.split(' ');
    let method = start.next()?.to_owned();
    let target = start.next()?.to_owned();
    let headers: Vec<(String, String)> = lines
        .filter_map(|line| line.split_once(':'))
        .map(|(n, v)| (n.trim().to_ascii_lowercase(), v.trim().to_owned()))
        .collect();
    let length = headers
        .iter()
        .find(|(n, _)| n == "content-length")
        .and_then(|(_, v)| v.parse::<usize>().ok())
        .unwrap_or(0);
    let mut body = buf[head_end + 4..].to_vec();
    while body.len() < length {
        let n = io.read(&mut chunk).await.ok()?;
        if n == 0 {
            return None;
        }
        body.extend_from_slice(&chunk[..n]);
    }
    Some(Recorded {
        method,
        target,
        headers,
        body,
    })
}

/// A scripted SSE server: the test accepts each connection and writes the response itself.
pub struct ScriptServer {
    conns: mpsc::UnboundedReceiver<ScriptConn>,
    bound: Duration,
}

impl ScriptServer {
    /// On a real TCP port; returns the server and its base URL (`http://127.0.0.1:port`).
    pub async fn tcp() -> (ScriptServer, String) {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let (tx, conns) = mpsc::unbounded_channel();
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                spawn_reader(Box::new(stream), tx.clone(), REAL);
            }
        });
        let server = ScriptServer { conns, bound: REAL };
        (server, format!("http://{addr}"))
    }

    /// On a real TCP port behind TLS (`acceptor` holds the certificate); returns the server, its
    /// port, and the server's reason for each failed handshake (such a connection never
    /// reaches [`accept`](Self::accept)).
    pub async fn tls(
        acceptor: tokio_rustls::TlsAcceptor,
    ) -> (ScriptServer, u16, mpsc::UnboundedReceiver<String>) {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let port = listener.local_addr().expect("addr").port();
        let (tx, conns) = mpsc::unbounded_channel();
        let (failed, failures) = mpsc::unbounded_channel();
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let acceptor = acceptor.clone();
                let tx = tx.clone();
                let failed = failed.clone();
                tokio::spawn(async move {
                    match acceptor.accept(stream).await {
                        Ok(tls) => spawn_reader(Box::new(tls), tx, REAL),
                        Err(error) => {
                            let _ = failed.send(error.to_string());
                        }
                    }
                });
            }
        });
        (ScriptServer { conns, bound: REAL }, port, failures)
    }

    /// Over in-memory pipes, for the paused clock; returns the server and the connector that
    /// reaches it (whatever the URL's host).
    pub fn memory() -> (ScriptServer, MemConnector) {
        let (pipes, mut incoming) = mpsc::unbounded_channel::<DuplexStream>();
        let (tx, conns) = mpsc::unbounded_channel();
        tokio::spawn(async move {
            while let Some(pipe) = incoming.recv().await {
                spawn_reader(Box::new(pipe), tx.clone(), VIRTUAL);
            }
        });
        let connector = MemConnector {
            pipes,
            failures: Arc::new(Mutex::new(VecDeque::new())),
        };
        (
            ScriptServer {
                conns,
                bound: VIRTUAL,
            },
            connector,
        )
    }

    /// The next connection, its request read.
    pub async fn accept(&mut self) -> ScriptConn {
        bounded("a connection", self.bound, self.conns.recv())
            .await
            .expect("the server stopped")
    }

    /// A connection that already arrived, if any.
    pub fn try_accept(&mut self) -> Option<ScriptConn> {
        self.conns.try_recv().ok()
    }
}

fn spawn_reader(mut io: Box<dyn Io>, tx: mpsc::UnboundedSender<ScriptConn>, bound: Duration) {
    tokio::spawn(async move {
        if let Some(request) = read_request(&mut io).await {
            let _ = tx.send(ScriptConn {
                request,
                at: Instant::now(),
                io,
                bound,
            });
        }
    });
}

/// A [`Connector`] over in-memory pipes to a [`ScriptServer::memory`], which can fail scripted
/// connection attempts first.
#[derive(Clone)]
pub struct MemConnector {
    pipes: mpsc::UnboundedSender<DuplexStream>,
    failures: Arc<Mutex<VecDeque<io::ErrorKind>>>,
}

impl MemConnector {
    /// The next attempt fails with `kind` (queued after earlier scripted failures).
    pub fn fail_next(&self, kind: io::ErrorKind) {
        self.failures.lock().unwrap().push_back(kind);
    }
}

impl Connector for MemConnector {
    type Io = TokioIo<DuplexStream>;

    fn connect(&self, _uri: &hyper::Uri) -> impl Future<Output = io::Result<Self::Io>> + Send {
        let failure = self.failures.lock().unwrap().pop_front();
        let pipes = self.pipes.clone();
        async move {
            if let Some(kind) = failure {
                return Err(io::Error::new(kind, format!("scripted {kind:?}")));
            }
            let (client, server) = tokio::io::duplex(64 * 1024);
            pipes
                .send(server)
                .map_err(|_| io::Error::new(io::ErrorKind::ConnectionRefused, "server gone"))?;
            Ok(TokioIo::new(client))
        }
    }
}

/// One item a driven client produced, with its cursor and the time right after.
#[derive(Debug)]
pub struct Seen {
    pub item: Option<Result<ClientItem, ClientError>>,
    pub cursor: Option<String>,
    pub retry_delay: Duration,
    pub at: Instant,
}

/// A [`Client`] running in its own task.
pub struct Driven {
    items: mpsc::UnboundedReceiver<Seen>,
    bound: Duration,
}

/// Runs `client` in a task that reports every item.
pub fn drive<C: Connector>(mut client: Client<C>, bound: Duration) -> Driven {
    let (tx, items) = mpsc::unbounded_channel();
    tokio::spawn(async move {
        loop {
            let item = client.next().await;
            let done = item.is_none();
            let seen = Seen {
                item,
                cursor: client.last_cursor().map(str::to_owned),
                retry_delay: client.retry_delay(),
                at: Instant::now(),
            };
            if tx.send(seen).is_err() || done {
                return;
            }
        }
    });
    Driven { items, bound }
}

impl Driven {
    /// The next report.
    pub async fn seen(&mut self) -> Seen {
        bounded("a client item", self.bound, self.items.recv())
            .await
            .expect("the client task ended")
    }

    /// The next item, which must not be an error or the end.
    pub async fn item(&mut self) -> (ClientItem, Seen) {
        let mut seen = self.seen().await;
        match seen.item.take() {
            Some(Ok(item)) => (item, seen),
            other => panic!("expected an item, got {other:?}"),
        }
    }

    /// The next item, skipping comments.
    pub async fn non_comment(&mut self) -> (ClientItem, Seen) {
        loop {
            let (item, seen) = self.item().await;
            if !matches!(item, ClientItem::Comment(_)) {
                return (item, seen);
            }
        }
    }

    /// The terminal error, then the end.
    pub async fn error(&mut self) -> ClientError {
        let error = match self.seen().await.item {
            Some(Err(error)) => error,
            other => panic!("expected a terminal error, got {other:?}"),
        };
        let end = self.seen().await;
        assert!(end.item.is_none(), "expected the end, got {:?}", end.item);
        error
    }
}

/// An HTTP/1 request over a fresh TCP connection: status, headers and body text.
pub async fn http(method: &str, url: &str, body: &str) -> (u16, HeaderMap, String) {
    let uri: hyper::Uri = url.parse().expect("url");
    let authority = uri.authority().expect("authority").to_string();
    bounded(&format!("{method} {url}"), REAL, async {
        let stream = TcpStream::connect(&authority).await.expect("connect");
        let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .expect("handshake");
        tokio::spawn(conn);
        let request = Request::builder()
            .method(method)
            .uri(uri.path_and_query().map_or("/", |p| p.as_str()))
            .header("host", &authority)
            .header("content-type", "application/json")
            .body(Full::new(Bytes::from(body.to_owned())))
            .expect("request");
        let response: Response<Incoming> = sender.send_request(request).await.expect("response");
        let status = response.status().as_u16();
        let headers = response.headers().clone();
        let body = response
            .into_body()
            .collect()
            .await
            .expect("body")
            .to_bytes();
        (status, headers, String::from_utf8_lossy(&body).into_owned())
    })
    .await
}

/// A callback endpoint: records `(path, JSON body)` of each POST, answers `202`.
pub struct Callbacks {
    pub base: String,
    received: mpsc::UnboundedReceiver<(String, serde_json::Value)>,
}

impl Callbacks {
    pub async fn start() -> Callbacks {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr: SocketAddr = listener.local_addr().expect("addr");
        let (tx, received) = mpsc::unbounded_channel();
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let tx = tx.clone();
                let service = hyper::service::service_fn(move |request: Request<Incoming>| {
                    let tx = tx.clone();
                    async move {
                        let path = request.uri().path().to_owned();
                        let body = request.into_body().collect().await?.to_bytes();
                        let json = serde_json::from_slice(&body).unwrap_or_else(|error| {
                            serde_json::Value::String(format!("not JSON ({error}): {body:?}"))
                        });
                        let _ = tx.send((path, json));
                        Ok::<_, hyper::Error>(
                            Response::builder()
                                .status(202)
                                .body(Full::new(Bytes::new()))
                                .expect("response"),
                        )
                    }
                });
                tokio::spawn(
                    hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service),
                );
            }
        });
        Callbacks {
            base: format!("http://{addr}"),
            received,
        }
    }

    /// The next callback: its path and JSON body.
    pub async fn next(&mut self) -> (String, serde_json::Value) {
        bounded("a callback", REAL, self.received.recv())
            .await
            .expect("callback server gone")
    }
}
