//! Shared helpers of the end-to-end tests: a real server on an ephemeral port over a real SQLite
//! file in a temporary directory ([`TestServer`]), a small SSE client on hyper and the core's
//! parser ([`SseStream`]), plain HTTP requests, the `sqlite3` CLI as an outside writer, and a
//! direct read of the log for comparisons.
//!
//! Every wait is bounded by [`FAIL_AFTER`], which is a failure bound only: helpers return as
//! soon as what they wait for is observed, never after a fixed sleep.

pub mod pg;

use std::collections::{BTreeMap, BTreeSet};
use std::future::Future;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use bytes::Bytes;
use changefeed::http::tcp_listener;
use changefeed::shutdown::{self, ShutdownTrigger};
use changefeed::store::sqlite::SqliteStore;
use changefeed::store::Store;
use changefeed::{app, AppState, ServerConfig};
use changefeed_core::sse::{Item, Parser, SseEvent};
use changefeed_core::{Epoch, Seq};
use http_body_util::{BodyExt, Empty};
use hyper::body::Incoming;
use hyper::header::{HeaderMap, HeaderValue};
use hyper::{Request, StatusCode};
use hyper_util::rt::TokioIo;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use tokio::task::JoinHandle;

/// How long any single wait may take before the test fails.
pub const FAIL_AFTER: Duration = Duration::from_secs(30);

/// Awaits `future`, failing the test if it takes longer than [`FAIL_AFTER`].
pub async fn within<F: Future>(what: &str, future: F) -> F::Output {
    match tokio::time::timeout(FAIL_AFTER, future).await {
        Ok(output) => output,
        Err(_) => panic!("timed out after {FAIL_AFTER:?} waiting for {what}"),
    }
}

/// A running server (in the test's runtime) over a fresh SQLite file.
pub struct TestServer {
    /// Where it listens.
    pub addr: SocketAddr,
    /// Its store (the same single write connection the server uses).
    pub store: SqliteStore,
    /// Its state (metrics, feed, epoch).
    pub state: AppState<SqliteStore>,
    /// The database file.
    pub db_path: PathBuf,
    trigger: ShutdownTrigger,
    task: Option<JoinHandle<std::io::Result<()>>>,
    _dir: Option<tempfile::TempDir>,
}

impl TestServer {
    /// A server with the default configuration.
    pub async fn start() -> TestServer {
        TestServer::start_with(ServerConfig::default()).await
    }

    /// A server with `config` over a new database.
    pub async fn start_with(config: ServerConfig) -> TestServer {
        let dir = tempfile::tempdir().expect("temp dir");
        let db_path = dir.path().join("changefeed.db");
        TestServer::start_on(dir, db_path, config).await
    }

    /// A server with `config` over the database at `db_path` (created if missing) in `dir`,
    /// which the server keeps until it is dropped.
    pub async fn start_on(
        dir: tempfile::TempDir,
        db_path: PathBuf,
        config: ServerConfig,
    ) -> TestServer {
        let store = SqliteStore::open(&sqlite_url(&db_path))
            .await
            .expect("open the store");
        TestServer::start_with_store(store, config, db_path, Some(dir)).await
    }

    /// A server attached (`serve --attach`) to the existing database at `db_path`, with its
    /// bookkeeping in `meta_file` (database opened read-only) when given.
    pub async fn attach(db_path: &Path, meta_file: Option<&Path>) -> TestServer {
        let store = SqliteStore::attach(&sqlite_url(db_path), meta_file)
            .await
            .expect("attach the store");
        TestServer::start_with_store(store, ServerConfig::default(), db_path.to_path_buf(), None)
            .await
    }

    async fn start_with_store(
        store: SqliteStore,
        config: ServerConfig,
        db_path: PathBuf,
        dir: Option<tempfile::TempDir>,
    ) -> TestServer {
        let (trigger, signal) = shutdown::channel();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind an ephemeral port");
        let addr = listener.local_addr().expect("local addr");
        let server = app::start(store.clone(), config, signal)
            .await
            .expect("start the server");
        let state = server.state().clone();
        let task = tokio::spawn(changefeed::run(tcp_listener(listener), server));
        TestServer {
            addr,
            store,
            state,
            db_path,
            trigger,
            task: Some(task),
            _dir: dir,
        }
    }

    /// The log's epoch.
    pub fn epoch(&self) -> Epoch {
        self.state.epoch()
    }

    /// `<epoch>:<seq>` of this log.
    pub fn cursor(&self, seq: u64) -> String {
        format!("{}:{seq}", self.epoch())
    }

    /// The log's head, read from the store.
    pub async fn head(&self) -> Seq {
        self.store.bounds().await.expect("bounds").head
    }

    /// Waits until the tailer has published everything up to the store's current head (so a
    /// cursor-less connect starts exactly at head).
    pub async fn settle(&self) {
        let head = self.head().await.0;
        self.wait_metric("changefeed_published_seq", head as f64)
            .await;
    }

    /// Runs `sql` in one write transaction through the server's store; returns rows affected.
    pub async fn write(&self, sql: &str) -> u64 {
        self.store.execute_write(sql).await.expect("write")
    }

    /// Opens `GET path_and_query` as an event stream.
    pub async fn stream(&self, path_and_query: &str) -> SseStream {
        SseStream::connect(self.addr, path_and_query, None).await
    }

    /// Opens an event stream with a `Last-Event-ID` header.
    pub async fn resume(&self, path_and_query: &str, last_event_id: &str) -> SseStream {
        SseStream::connect(self.addr, path_and_query, Some(last_event_id.as_bytes())).await
    }

    /// A plain `GET`.
    pub async fn get(&self, path_and_query: &str) -> HttpResponse {
        request(self.addr, "GET", path_and_query).await
    }

    /// The `/metrics` values by series name (labels included in the name).
    pub async fn metrics(&self) -> BTreeMap<String, f64> {
        let response = self.get("/metrics").await;
        assert_eq!(response.status, StatusCode::OK);
        parse_metrics(&response.body)
    }

    /// One metric's value.
    pub async fn metric(&self, name: &str) -> f64 {
        *self
            .metrics()
            .await
            .get(name)
            .unwrap_or_else(|| panic!("metric {name} missing"))
    }

    /// Polls `/metrics` until `name` equals `value` (bounded by [`FAIL_AFTER`]).
    pub async fn wait_metric(&self, name: &str, value: f64) {
        within(&format!("metric {name} to reach {value}"), async {
            loop {
                if self.metric(name).await == value {
                    return;
                }
                tokio::task::yield_now().await;
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        })
        .await
    }

    /// Fires the shutdown signal and waits for the server to return.
    pub async fn shutdown(mut self) -> std::io::Result<()> {
        self.trigger.trigger();
        let task = self.task.take().expect("running");
        within("the server to shut down", task)
            .await
            .expect("server task")
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        self.trigger.trigger();
    }
}

/// `sqlite://` URL of a path.
pub fn sqlite_url(path: &Path) -> String {
    format!("sqlite://{}", path.display())
}

/// SQL creating a project (no log row).
pub fn project_sql(id: &str) -> String {
    format!("INSERT INTO projects (id, name) VALUES ('{id}', 'Project {id}');")
}

/// SQL creating a session: exactly one `session_created` row in `project`.
pub fn session_sql(project: &str, session: &str) -> String {
    format!("INSERT INTO sessions (id, project_id) VALUES ('{session}', '{project}');")
}

/// Runs `sql` with the `sqlite3` CLI: another process writing the same database file. It waits
/// up to 10 s for locks held by the server (`.timeout`), as any well-behaved writer does.
pub async fn sqlite3(db: &Path, sql: &str) -> String {
    let output = tokio::process::Command::new("sqlite3")
        .arg("-cmd")
        .arg(".timeout 10000")
        .arg(db)
        .arg(sql)
        .output()
        .await
        .unwrap_or_else(|error| {
            panic!("cannot run the sqlite3 CLI ({error}); scripts/install-deps.sh installs it")
        });
    assert!(
        output.status.success(),
        "sqlite3 failed on {sql:?}: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8(output.stdout).expect("utf-8")
}

/// One `change_log` row as the database holds it.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct LogRow {
    /// Its seq.
    pub seq: u64,
    /// Its project.
    pub project: String,
    /// Its kind.
    pub kind: String,
}

/// The whole `change_log`, read with the `sqlite3` CLI (independent of the server's code).
pub async fn log_rows(db: &Path) -> Vec<LogRow> {
    let text = sqlite3(
        db,
        "SELECT seq || '|' || project_id || '|' || event_type FROM change_log ORDER BY seq",
    )
    .await;
    text.lines()
        .map(|line| {
            let mut parts = line.splitn(3, '|');
            LogRow {
                seq: parts.next().unwrap().parse().unwrap(),
                project: parts.next().unwrap().to_owned(),
                kind: parts.next().unwrap().to_owned(),
            }
        })
        .collect()
}

/// A complete HTTP response.
#[derive(Debug)]
pub struct HttpResponse {
    /// Status.
    pub status: StatusCode,
    /// Headers.
    pub headers: HeaderMap,
    /// Body as text.
    pub body: String,
}

impl HttpResponse {
    /// The body as JSON.
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.body)
            .unwrap_or_else(|error| panic!("body is not JSON ({error}): {:?}", self.body))
    }

    /// `error.code` of a JSON error body.
    pub fn error_code(&self) -> String {
        self.json()["error"]["code"]
            .as_str()
            .unwrap_or_else(|| panic!("no error code in {:?}", self.body))
            .to_owned()
    }
}

async fn send(
    addr: SocketAddr,
    request: Request<Empty<Bytes>>,
) -> (hyper::Response<Incoming>, JoinHandle<()>) {
    let tcp = within("connect", TcpStream::connect(addr))
        .await
        .expect("connect");
    tcp.set_nodelay(true).expect("nodelay");
    let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(tcp))
        .await
        .expect("handshake");
    let driver = tokio::spawn(async move {
        let _ = connection.await;
    });
    let response = within("response head", sender.send_request(request))
        .await
        .expect("send request");
    (response, driver)
}

/// A plain request with an empty body, read to the end.
pub async fn request(addr: SocketAddr, method: &str, path_and_query: &str) -> HttpResponse {
    request_with_headers(addr, method, path_and_query, &[]).await
}

/// [`request`] with extra headers, in order (a name given twice is sent twice).
pub async fn request_with_headers(
    addr: SocketAddr,
    method: &str,
    path_and_query: &str,
    headers: &[(&str, &str)],
) -> HttpResponse {
    let mut builder = Request::builder()
        .method(method)
        .uri(path_and_query)
        .header("host", addr.to_string());
    for (name, value) in headers {
        builder = builder.header(*name, *value);
    }
    let request = builder.body(Empty::<Bytes>::new()).expect("request");
    let (response, driver) = send(addr, request).await;
    let (parts, body) = response.into_parts();
    let body = within("response body", body.collect())
        .await
        .expect("body")
        .to_bytes();
    driver.abort();
    HttpResponse {
        status: parts.status,
        headers: parts.headers,
        body: String::from_utf8_lossy(&body).into_owned(),
    }
}

/// Parses Prometheus text into `series → value`.
pub fn parse_metrics(text: &str) -> BTreeMap<String, f64> {
    text.lines()
        .filter(|line| !line.starts_with('#') && !line.trim().is_empty())
        .filter_map(|line| {
            let (name, value) = line.rsplit_once(' ')?;
            Some((name.to_owned(), value.parse().ok()?))
        })
        .collect()
}

/// A client that sends `GET path_and_query` on a socket with a small receive buffer and then
/// never reads: the server can write only a little before the connection stalls.
pub async fn non_reading_client(addr: SocketAddr, path_and_query: &str) -> TcpStream {
    let socket = tokio::net::TcpSocket::new_v4().expect("socket");
    socket.set_recv_buffer_size(4096).expect("SO_RCVBUF");
    let mut stream = within("connect", socket.connect(addr))
        .await
        .expect("connect");
    let request = format!("GET {path_and_query} HTTP/1.1\r\nHost: {addr}\r\n\r\n");
    stream
        .write_all(request.as_bytes())
        .await
        .expect("send request");
    stream
}

/// An open `text/event-stream` response, parsed as it arrives.
pub struct SseStream {
    /// Response status.
    pub status: StatusCode,
    /// Response headers.
    pub headers: HeaderMap,
    body: Incoming,
    parser: Parser,
    raw: Option<Vec<u8>>,
    ended: bool,
    driver: JoinHandle<()>,
}

impl SseStream {
    /// Sends `GET path_and_query` (with `Last-Event-ID` when given, raw bytes allowed) and waits
    /// for the response head. The parser is seeded with that id, as a reconnecting browser's.
    pub async fn connect(
        addr: SocketAddr,
        path_and_query: &str,
        last_event_id: Option<&[u8]>,
    ) -> SseStream {
        SseStream::connect_with_headers(addr, path_and_query, last_event_id, &[]).await
    }

    /// [`SseStream::connect`] with extra headers, in order (`Authorization`, `Cookie`).
    pub async fn connect_with_headers(
        addr: SocketAddr,
        path_and_query: &str,
        last_event_id: Option<&[u8]>,
        headers: &[(&str, &str)],
    ) -> SseStream {
        let mut builder = Request::builder()
            .uri(path_and_query)
            .header("host", addr.to_string())
            .header("accept", "text/event-stream");
        for (name, value) in headers {
            builder = builder.header(*name, *value);
        }
        if let Some(id) = last_event_id {
            builder = builder.header(
                "last-event-id",
                HeaderValue::from_bytes(id).expect("header value"),
            );
        }
        let request = builder.body(Empty::<Bytes>::new()).expect("request");
        let (response, driver) = send(addr, request).await;
        let (parts, body) = response.into_parts();
        let seed = last_event_id
            .map(|id| String::from_utf8_lossy(id).into_owned())
            .unwrap_or_default();
        SseStream {
            status: parts.status,
            headers: parts.headers,
            body,
            parser: Parser::new(seed),
            raw: None,
            ended: false,
            driver,
        }
    }

    /// Keeps every byte received from now on (see [`SseStream::raw_text`]).
    pub fn capture_raw(&mut self) {
        self.raw.get_or_insert_with(Vec::new);
    }

    /// The bytes received since [`SseStream::capture_raw`], as text.
    pub fn raw_text(&self) -> String {
        String::from_utf8_lossy(self.raw.as_deref().unwrap_or_default()).into_owned()
    }

    /// A response header as text.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|value| value.to_str().ok())
    }

    /// Whether the body has ended.
    pub fn ended(&self) -> bool {
        self.ended
    }

    /// The parser's last event id (moved by every frame with an `id:`, data or not).
    pub fn last_event_id(&self) -> &str {
        self.parser.last_event_id()
    }

    /// Reads one more chunk into the parser; false at the end of the body.
    async fn read_chunk(&mut self) -> bool {
        if self.ended {
            return false;
        }
        loop {
            match within("the next chunk of the event stream", self.body.frame()).await {
                Some(Ok(frame)) => {
                    if let Ok(data) = frame.into_data() {
                        if let Some(raw) = &mut self.raw {
                            raw.extend_from_slice(&data);
                        }
                        self.parser.feed(&data).expect("well-formed SSE");
                        return true;
                    }
                }
                Some(Err(_)) | None => {
                    self.ended = true;
                    self.parser.finish();
                    return false;
                }
            }
        }
    }

    /// The next item (event, comment, retry), or `None` at the end of the body.
    pub async fn next_item(&mut self) -> Option<Item> {
        loop {
            if let Some(item) = self.parser.next_item() {
                return Some(item);
            }
            if !self.read_chunk().await {
                return self.parser.next_item();
            }
        }
    }

    /// The next dispatched event, or `None` at the end of the body.
    pub async fn next_event(&mut self) -> Option<SseEvent> {
        loop {
            match self.next_item().await? {
                Item::Event(event) => return Some(event),
                Item::Comment(_) | Item::Retry(_) => {}
            }
        }
    }

    /// The next event, which must exist.
    pub async fn expect_event(&mut self) -> SseEvent {
        self.next_event()
            .await
            .expect("an event before the end of the stream")
    }

    /// Events up to and including the first one `stop` accepts.
    pub async fn events_until(&mut self, mut stop: impl FnMut(&SseEvent) -> bool) -> Vec<SseEvent> {
        let mut events = Vec::new();
        loop {
            let event = self.expect_event().await;
            let done = stop(&event);
            events.push(event);
            if done {
                return events;
            }
        }
    }

    /// Change events (not `changefeed.*`) until one with seq `>= seq` arrives; the
    /// `changefeed.*` events met on the way are dropped.
    pub async fn changes_through(&mut self, seq: u64) -> Vec<SseEvent> {
        let mut changes = Vec::new();
        loop {
            let event = self.expect_event().await;
            if event.event_type.starts_with("changefeed.") {
                continue;
            }
            let reached = seq_of(&event) >= seq;
            changes.push(event);
            if reached {
                return changes;
            }
        }
    }

    /// Reads until the last event id equals `id` (a change, a checkpoint or a control frame).
    /// Returns the events dispatched on the way.
    pub async fn read_until_id(&mut self, id: &str) -> Vec<SseEvent> {
        let mut events = Vec::new();
        loop {
            while let Some(item) = self.parser.next_item() {
                if let Item::Event(event) = item {
                    events.push(event);
                }
            }
            if self.parser.last_event_id() == id {
                return events;
            }
            assert!(
                self.read_chunk().await,
                "stream ended at id {:?} before id {id:?}",
                self.parser.last_event_id()
            );
        }
    }

    /// Reads to the end of the body; returns the events dispatched on the way.
    pub async fn read_to_end(&mut self) -> Vec<SseEvent> {
        let mut events = Vec::new();
        while let Some(event) = self.next_event().await {
            events.push(event);
        }
        events
    }
}

impl Drop for SseStream {
    fn drop(&mut self) {
        self.driver.abort();
    }
}

/// The seq of an event's id (`<epoch>:<seq>` or `<seq>`).
pub fn seq_of(event: &SseEvent) -> u64 {
    id_seq(&event.last_event_id)
}

/// The id key the tests seal with (`ServerConfig::id_key`), for [`id_seq`].
pub const TEST_ID_KEY: [u8; 32] = [0x1d; 32];

/// The tests' own reading of a sealed id (`PROTOCOL.md`, "Sealed ids": AES-SIV of `epoch ‖ seq ‖
/// tweak`, big-endian, associated data `changefeed sealed id v1`, unpadded base64url), written
/// from the protocol text rather than with the server's code: `(epoch, seq, tweak)`, or `None`
/// when `key` did not seal it.
pub fn unseal(key: &[u8; 32], id: &str) -> Option<(u64, u64, u64)> {
    use aes_siv::siv::Aes128Siv;
    use aes_siv::KeyInit;
    use base64ct::Encoding;
    let bytes = base64ct::Base64UrlUnpadded::decode_vec(id).ok()?;
    let plain = Aes128Siv::new(key.into())
        .decrypt([b"changefeed sealed id v1"], &bytes)
        .ok()?;
    let word = |i: usize| u64::from_be_bytes(plain[i..i + 8].try_into().unwrap());
    (plain.len() == 24).then(|| (word(0), word(8), word(16)))
}

/// The seq of a cursor string, or of an id sealed with [`TEST_ID_KEY`].
pub fn id_seq(id: &str) -> u64 {
    if id.len() == 54 {
        if let Some((_, seq, _)) = unseal(&TEST_ID_KEY, id) {
            return seq;
        }
    }
    let seq = id.rsplit_once(':').map_or(id, |(_, seq)| seq);
    seq.parse()
        .unwrap_or_else(|_| panic!("id {id:?} has no seq"))
}

/// An event's data as JSON.
pub fn data_json(event: &SseEvent) -> serde_json::Value {
    serde_json::from_str(&event.data)
        .unwrap_or_else(|error| panic!("data is not JSON ({error}): {:?}", event.data))
}

/// Asserts that `seqs` is strictly increasing (no duplicate, no reordering).
pub fn assert_strictly_increasing(seqs: &[u64]) {
    for pair in seqs.windows(2) {
        assert!(pair[0] < pair[1], "out of order or duplicate: {pair:?}");
    }
}

/// The change events among `events` (dropping `changefeed.*`), as seqs.
pub fn change_seqs(events: &[SseEvent]) -> Vec<u64> {
    events
        .iter()
        .filter(|event| !event.event_type.starts_with("changefeed."))
        .map(seq_of)
        .collect()
}

/// The distinct values of `items`, sorted.
pub fn sorted_set<T: Ord + Clone>(items: &[T]) -> BTreeSet<T> {
    items.iter().cloned().collect()
}
