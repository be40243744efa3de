//! The load generator: many SSE subscriptions multiplexed on a few tasks, a minimal HTTP/1.1
//! client (request, status line, chunked or identity body), frames counted with the core
//! [`Parser`], and paced writers (the bench's own sqlx connection, the `sqlite3` CLI, Nchan's
//! publisher endpoint).
//!
//! Cheap by construction: each group task owns hundreds or thousands of connections, waits on
//! their readiness through one `FuturesUnordered`, reads into one buffer per task, and takes the
//! clock once per read, not once per frame.

use std::io::{self, ErrorKind};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use changefeed_core::sse::{Item, Parser};
use futures_util::stream::{FuturesUnordered, StreamExt};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::{watch, Semaphore};

/// Microseconds since the Unix epoch (comparable across processes on one machine).
pub fn unix_micros() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_micros() as u64)
        .unwrap_or(0)
}

/// What the subscribers connect to.
#[derive(Debug, Clone)]
pub struct Target {
    pub addr: SocketAddr,
    /// Path and query, e.g. `/api/v1/events` or `/sub/bench`.
    pub path: String,
    /// Whether the stream announces itself with a `changefeed.ready` event (changefeed) or counts
    /// as ready once the response head arrived (Nchan).
    pub ready_event: bool,
}

/// Counters shared by every subscription of one run.
#[derive(Debug, Default)]
pub struct Shared {
    pub connected: AtomicUsize,
    pub ready: AtomicUsize,
    pub closed: AtomicUsize,
    pub failed: AtomicUsize,
    /// Change events received, over all subscriptions.
    pub events: AtomicU64,
    pub first_error: Mutex<Option<String>>,
    /// When latency is tracked: per event index `i`, the worst delivery latency (µs) and how
    /// many subscriptions received it.
    pub per_event_max: Vec<AtomicU64>,
    pub per_event_count: Vec<AtomicU32>,
}

impl Shared {
    pub fn new(track_events: usize) -> Shared {
        Shared {
            per_event_max: (0..track_events).map(|_| AtomicU64::new(0)).collect(),
            per_event_count: (0..track_events).map(|_| AtomicU32::new(0)).collect(),
            ..Shared::default()
        }
    }

    fn fail(&self, message: String) {
        self.failed.fetch_add(1, Ordering::Relaxed);
        let mut first = self.first_error.lock().unwrap();
        if first.is_none() {
            *first = Some(message);
        }
    }

    pub fn error(&self) -> Option<String> {
        self.first_error.lock().unwrap().clone()
    }
}

/// A running set of subscriptions.
pub struct Subscribers {
    pub shared: Arc<Shared>,
    stop: watch::Sender<bool>,
    groups: Vec<tokio::task::JoinHandle<Vec<u32>>>,
    pub count: usize,
}

impl Subscribers {
    /// Opens `count` subscriptions to `target`, spread over `groups` tasks; at most `parallel`
    /// connection attempts at once. With `latency`, each change event's payload must carry
    /// `"t":<unix µs>` and `"i":<index>`; per-delivery latencies are collected.
    pub fn start(
        target: &Target,
        count: usize,
        groups: usize,
        latency: bool,
        track_events: usize,
    ) -> Subscribers {
        let shared = Arc::new(Shared::new(if latency { track_events } else { 0 }));
        let (stop, stop_rx) = watch::channel(false);
        let permits = Arc::new(Semaphore::new(64));
        let groups = groups.clamp(1, count.max(1));
        let handles = (0..groups)
            .map(|g| {
                let n = count / groups + usize::from(g < count % groups);
                let target = target.clone();
                let shared = shared.clone();
                let stop_rx = stop_rx.clone();
                let permits = permits.clone();
                tokio::spawn(run_group(target, n, shared, stop_rx, permits, latency))
            })
            .collect();
        Subscribers {
            shared,
            stop,
            groups: handles,
            count,
        }
    }

    /// Waits until every subscription is ready (or failed), at most `timeout`.
    pub async fn wait_ready(&self, timeout: Duration) -> Result<Duration, String> {
        let start = Instant::now();
        loop {
            let ready = self.shared.ready.load(Ordering::Relaxed);
            let failed = self.shared.failed.load(Ordering::Relaxed);
            if failed > 0 {
                return Err(format!(
                    "{failed} of {} subscriptions failed ({ready} ready): {}",
                    self.count,
                    self.shared.error().unwrap_or_default()
                ));
            }
            if ready >= self.count {
                return Ok(start.elapsed());
            }
            if start.elapsed() > timeout {
                return Err(format!(
                    "only {ready} of {} subscriptions ready after {timeout:?}",
                    self.count
                ));
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    /// Waits until `expected` events have been received in total, at most `timeout`.
    pub async fn wait_events(&self, expected: u64, timeout: Duration) -> bool {
        let start = Instant::now();
        while start.elapsed() < timeout {
            if self.shared.events.load(Ordering::Relaxed) >= expected {
                return true;
            }
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        false
    }

    /// Stops every subscription; returns the per-delivery latencies (µs) if tracked.
    pub async fn stop(self) -> Vec<u32> {
        let _ = self.stop.send(true);
        let mut all = Vec::new();
        for handle in self.groups {
            if let Ok(Ok(mut part)) = tokio::time::timeout(Duration::from_secs(10), handle).await {
                all.append(&mut part);
            }
        }
        all
    }
}

/// One subscription's connection and decoders.
struct Conn {
    stream: TcpStream,
    http: HttpBody,
    parser: Parser,
    ready: bool,
}

async fn connect(target: &Target) -> io::Result<TcpStream> {
    let mut last = None;
    for attempt in 0..5u64 {
        match tokio::time::timeout(Duration::from_secs(5), TcpStream::connect(target.addr)).await {
            Ok(Ok(mut stream)) => {
                stream.set_nodelay(true)?;
                let request = format!(
                    "GET {} HTTP/1.1\r\nHost: {}\r\nAccept: text/event-stream\r\n\r\n",
                    target.path, target.addr
                );
                stream.write_all(request.as_bytes()).await?;
                return Ok(stream);
            }
            Ok(Err(error)) => last = Some(error),
            Err(_) => last = Some(io::Error::new(ErrorKind::TimedOut, "connect timed out")),
        }
        tokio::time::sleep(Duration::from_millis(50 * (attempt + 1))).await;
    }
    Err(last.unwrap_or_else(|| io::Error::other("connect failed")))
}

async fn run_group(
    target: Target,
    count: usize,
    shared: Arc<Shared>,
    mut stop: watch::Receiver<bool>,
    permits: Arc<Semaphore>,
    latency: bool,
) -> Vec<u32> {
    let mut latencies = Vec::new();
    let mut pending = FuturesUnordered::new();
    let readable = |conn: Box<Conn>| async move {
        let result = conn.stream.readable().await;
        (conn, result)
    };
    for _ in 0..count {
        if *stop.borrow() {
            return latencies;
        }
        let permit = permits.acquire().await;
        let stream = connect(&target).await;
        drop(permit);
        match stream {
            Ok(stream) => pending.push(readable(Box::new(Conn {
                stream,
                http: HttpBody::default(),
                parser: Parser::new(""),
                ready: false,
            }))),
            Err(error) => shared.fail(format!("connect: {error}")),
        }
    }
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let (mut conn, result) = tokio::select! {
            biased;
            _ = stop.changed() => break,
            next = pending.next() => match next {
                Some(next) => next,
                None => break,
            },
        };
        if let Err(error) = result {
            shared.fail(format!("readable: {error}"));
            continue;
        }
        let mut keep = true;
        loop {
            match conn.stream.try_read(&mut buf) {
                Ok(0) => {
                    shared.closed.fetch_add(1, Ordering::Relaxed);
                    if !*stop.borrow() {
                        shared.fail("the server closed a stream".into());
                    }
                    keep = false;
                    break;
                }
                Ok(n) => {
                    let now = if latency { unix_micros() } else { 0 };
                    if let Err(error) = process(&mut conn, &buf[..n], &target, &shared, now, {
                        if latency {
                            Some(&mut latencies)
                        } else {
                            None
                        }
                    }) {
                        shared.fail(error);
                        keep = false;
                        break;
                    }
                }
                Err(error) if error.kind() == ErrorKind::WouldBlock => break,
                Err(error) => {
                    shared.fail(format!("read: {error}"));
                    keep = false;
                    break;
                }
            }
        }
        if keep {
            pending.push(readable(conn));
        }
    }
    latencies
}

fn process(
    conn: &mut Conn,
    bytes: &[u8],
    target: &Target,
    shared: &Shared,
    now: u64,
    latencies: Option<&mut Vec<u32>>,
) -> Result<(), String> {
    let was_head = conn.http.in_head();
    let parser = &mut conn.parser;
    let mut parse_error = None;
    conn.http.feed(bytes, |body| {
        if let Err(error) = parser.feed(body) {
            parse_error = Some(error.to_string());
        }
    })?;
    if let Some(error) = parse_error {
        return Err(error);
    }
    if was_head && !conn.http.in_head() {
        shared.connected.fetch_add(1, Ordering::Relaxed);
        if !target.ready_event && !conn.ready {
            conn.ready = true;
            shared.ready.fetch_add(1, Ordering::Relaxed);
        }
    }
    let mut events = 0u64;
    let mut latencies = latencies;
    while let Some(item) = conn.parser.next_item() {
        let Item::Event(event) = item else { continue };
        if event.event_type.starts_with("changefeed.") {
            if event.event_type == "changefeed.ready" && !conn.ready {
                conn.ready = true;
                shared.ready.fetch_add(1, Ordering::Relaxed);
            }
            continue;
        }
        events += 1;
        if let Some(latencies) = latencies.as_deref_mut() {
            if let (Some(t), Some(i)) = (
                json_u64(&event.data, "\"t\":"),
                json_u64(&event.data, "\"i\":"),
            ) {
                let micros = now.saturating_sub(t);
                latencies.push(micros.min(u32::MAX as u64) as u32);
                if let (Some(max), Some(count)) = (
                    shared.per_event_max.get(i as usize),
                    shared.per_event_count.get(i as usize),
                ) {
                    max.fetch_max(micros, Ordering::Relaxed);
                    count.fetch_add(1, Ordering::Relaxed);
                }
            }
        }
    }
    if events > 0 {
        shared.events.fetch_add(events, Ordering::Relaxed);
    }
    Ok(())
}

/// The unsigned integer after `key` in `text` (first occurrence).
pub fn json_u64(text: &str, key: &str) -> Option<u64> {
    let start = text.find(key)? + key.len();
    let digits = text[start..].bytes().take_while(u8::is_ascii_digit).count();
    text[start..start + digits].parse().ok()
}

/// A response reader: the head (status must be 200), then a chunked or close-delimited body.
#[derive(Debug, Default)]
struct HttpBody {
    state: BodyState,
    head: Vec<u8>,
}

#[derive(Debug, Default)]
enum BodyState {
    #[default]
    Head,
    Identity,
    ChunkSize {
        size: u64,
        extension: bool,
    },
    ChunkData(u64),
    ChunkEnd,
    Done,
}

impl HttpBody {
    fn in_head(&self) -> bool {
        matches!(self.state, BodyState::Head)
    }

    fn feed(&mut self, mut input: &[u8], mut body: impl FnMut(&[u8])) -> Result<(), String> {
        while !input.is_empty() {
            match &mut self.state {
                BodyState::Head => {
                    let old = self.head.len();
                    self.head.extend_from_slice(input);
                    let Some(end) = find(&self.head, b"\r\n\r\n") else {
                        if self.head.len() > 64 * 1024 {
                            return Err("response head too long".into());
                        }
                        return Ok(());
                    };
                    let head = String::from_utf8_lossy(&self.head[..end]).to_ascii_lowercase();
                    let status = head.split(' ').nth(1).unwrap_or("");
                    if status != "200" {
                        return Err(format!(
                            "HTTP status {status}: {}",
                            head.lines().next().unwrap_or("")
                        ));
                    }
                    self.state = if head.contains("transfer-encoding: chunked") {
                        BodyState::ChunkSize {
                            size: 0,
                            extension: false,
                        }
                    } else {
                        BodyState::Identity
                    };
                    input = &input[end + 4 - old..];
                    self.head = Vec::new();
                }
                BodyState::Identity => {
                    body(input);
                    return Ok(());
                }
                BodyState::ChunkSize { size, extension } => {
                    let byte = input[0];
                    input = &input[1..];
                    match byte {
                        b'\n' if *size == 0 => self.state = BodyState::Done,
                        b'\n' => self.state = BodyState::ChunkData(*size),
                        b'\r' => {}
                        b';' => *extension = true,
                        _ if *extension => {}
                        _ => {
                            let digit = (byte as char)
                                .to_digit(16)
                                .ok_or_else(|| format!("bad chunk size byte {byte:#x}"))?;
                            *size = size
                                .checked_mul(16)
                                .and_then(|s| s.checked_add(u64::from(digit)))
                                .ok_or("chunk size overflow")?;
                        }
                    }
                }
                BodyState::ChunkData(remaining) => {
                    let n = (*remaining).min(input.len() as u64) as usize;
                    body(&input[..n]);
                    input = &input[n..];
                    *remaining -= n as u64;
                    if *remaining == 0 {
                        self.state = BodyState::ChunkEnd;
                    }
                }
                BodyState::ChunkEnd => {
                    let byte = input[0];
                    input = &input[1..];
                    if byte == b'\n' {
                        self.state = BodyState::ChunkSize {
                            size: 0,
                            extension: false,
                        };
                    }
                }
                BodyState::Done => return Ok(()),
            }
        }
        Ok(())
    }
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack
        .windows(needle.len())
        .position(|window| window == needle)
}

/// A payload of exactly `size` bytes (when `size` is large enough): `{"t":..,"i":..,"pad":".."}`.
pub fn payload(t: u64, i: u64, size: usize) -> String {
    let base = format!("{{\"t\":{t},\"i\":{i},\"pad\":\"\"}}");
    let pad = size.saturating_sub(base.len());
    format!("{{\"t\":{t},\"i\":{i},\"pad\":\"{}\"}}", "x".repeat(pad))
}

/// Minimal HTTP/1.1 keep-alive POST client for Nchan's publisher endpoint.
pub struct Publisher {
    stream: TcpStream,
    addr: SocketAddr,
    path: String,
    buf: Vec<u8>,
}

impl Publisher {
    pub async fn connect(addr: SocketAddr, path: &str) -> io::Result<Publisher> {
        let stream = TcpStream::connect(addr).await?;
        stream.set_nodelay(true)?;
        Ok(Publisher {
            stream,
            addr,
            path: path.to_string(),
            buf: Vec::with_capacity(4096),
        })
    }

    /// Publishes one message and waits for the answer (2xx expected). Reconnects once if the
    /// server closed the keep-alive connection before answering.
    pub async fn publish(&mut self, body: &str) -> io::Result<()> {
        tokio::time::timeout(Duration::from_secs(10), self.publish_retry(body))
            .await
            .map_err(|_| io::Error::new(ErrorKind::TimedOut, "publish took over 10 s"))?
    }

    async fn publish_retry(&mut self, body: &str) -> io::Result<()> {
        match self.publish_once(body).await {
            Err(error) if error.kind() == ErrorKind::ConnectionAborted => {
                self.stream = TcpStream::connect(self.addr).await?;
                self.stream.set_nodelay(true)?;
                self.publish_once(body).await
            }
            result => result,
        }
    }

    async fn publish_once(&mut self, body: &str) -> io::Result<()> {
        let request = format!(
            "POST {} HTTP/1.1\r\nHost: {}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{}",
            self.path,
            self.addr,
            body.len(),
            body
        );
        self.stream.write_all(request.as_bytes()).await?;
        self.buf.clear();
        let mut chunk = [0u8; 4096];
        loop {
            if let Some(end) = find(&self.buf, b"\r\n\r\n") {
                let head = String::from_utf8_lossy(&self.buf[..end]).to_ascii_lowercase();
                let status = head.split(' ').nth(1).unwrap_or("").to_string();
                if !status.starts_with('2') {
                    return Err(io::Error::other(format!("publish: HTTP status {status}")));
                }
                let length: usize = head
                    .lines()
                    .find_map(|line| line.strip_prefix("content-length:"))
                    .and_then(|v| v.trim().parse().ok())
                    .unwrap_or(0);
                if self.buf.len() >= end + 4 + length {
                    return Ok(());
                }
            }
            let n = match self.stream.read(&mut chunk).await {
                Ok(n) => n,
                Err(error) if self.buf.is_empty() => {
                    return Err(io::Error::new(ErrorKind::ConnectionAborted, error))
                }
                Err(error) => return Err(error),
            };
            if n == 0 {
                return Err(io::Error::new(
                    if self.buf.is_empty() {
                        ErrorKind::ConnectionAborted
                    } else {
                        ErrorKind::UnexpectedEof
                    },
                    "publisher connection closed",
                ));
            }
            self.buf.extend_from_slice(&chunk[..n]);
        }
    }
}
