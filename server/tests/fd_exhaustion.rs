//! Proves the real binary survives running out of file descriptors: under `ulimit -n 64`, a
//! flood of silent connections makes `accept` fail with EMFILE; the server logs it once per
//! episode, keeps serving an already-open stream (its heartbeats keep coming), closes the silent
//! connections at the head timeout, logs that accepting works again, and then serves new
//! clients.

mod support;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

const BIN: &str = env!("CARGO_BIN_EXE_changefeed");
/// A failure bound for waits, never a pause.
const FAIL_AFTER: Duration = Duration::from_secs(60);
/// More silent connections than the server has descriptors.
const SILENT: usize = 200;

struct Server {
    child: Child,
    stderr: mpsc::Receiver<String>,
    lines: Vec<String>,
}

impl Server {
    /// The next stderr line `pick` accepts (all lines are kept in `lines`).
    fn wait_line(&mut self, what: &str, mut pick: impl FnMut(&serde_json::Value) -> bool) {
        let deadline = Instant::now() + FAIL_AFTER;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let line = self
                .stderr
                .recv_timeout(left)
                .unwrap_or_else(|error| panic!("no log line {what} ({error}): {:#?}", self.lines));
            self.lines.push(line.clone());
            if let Ok(json) = serde_json::from_str::<serde_json::Value>(&line) {
                if pick(&json) {
                    return;
                }
            }
        }
    }

    fn count(&self, needle: &str) -> usize {
        self.lines
            .iter()
            .filter(|line| line.contains(needle))
            .count()
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn message(json: &serde_json::Value) -> &str {
    json["fields"]["message"].as_str().unwrap_or("")
}

/// `GET /healthz` on a new connection: the status line, or `None` if the server did not answer.
fn healthz(addr: SocketAddr) -> Option<String> {
    let mut stream = TcpStream::connect(addr).ok()?;
    stream
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    write!(
        stream,
        "GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    )
    .ok()?;
    let mut text = String::new();
    stream.read_to_string(&mut text).ok()?;
    text.lines().next().map(str::to_owned)
}

#[test]
fn accept_backs_off_on_emfile_logs_once_recovers_and_keeps_serving() {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}", dir.path().join("feed.db").display());
    // The descriptor limit is lowered in the child only (a shell's `ulimit`, then exec).
    let mut child = Command::new("sh")
        .arg("-c")
        .arg("ulimit -n 64 && exec \"$0\" \"$@\"")
        .arg(BIN)
        .args([
            "serve",
            "--database",
            &url,
            "--listen",
            "127.0.0.1:0",
            "--log-format",
            "json",
            "--head-timeout",
            "1",
            "--heartbeat",
            "0.5",
        ])
        .env("RUST_LOG", "info")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn changefeed under sh");
    let stderr = support::lines(child.stderr.take().unwrap());
    let mut server = Server {
        child,
        stderr,
        lines: Vec::new(),
    };
    let mut addr = None;
    server.wait_line("changefeed serving", |json| {
        if message(json) == "changefeed serving" {
            addr = json["fields"]["listen"]
                .as_str()
                .map(|a| a.parse().unwrap());
        }
        addr.is_some()
    });
    let addr: SocketAddr = addr.unwrap();

    // A healthy client with an open stream, before the flood.
    let mut stream = TcpStream::connect(addr).unwrap();
    stream.set_read_timeout(Some(FAIL_AFTER)).unwrap();
    write!(stream, "GET /api/v1/events HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
    let mut seen = Vec::new();
    let mut buf = [0u8; 4096];
    let mut read_until = |stream: &mut TcpStream, seen: &mut Vec<u8>, needle: &str, from: usize| {
        while !String::from_utf8_lossy(&seen[from..]).contains(needle) {
            let n = stream
                .read(&mut buf)
                .expect("the stream keeps being served");
            assert!(n > 0, "the stream ended");
            seen.extend_from_slice(&buf[..n]);
        }
    };
    read_until(&mut stream, &mut seen, "changefeed.ready", 0);

    // The flood: far more silent connections than the server has descriptors (the kernel
    // completes the handshakes into the listen backlog).
    let silent: Vec<TcpStream> = (0..SILENT)
        .map(|_| TcpStream::connect(addr).expect("connect (backlog)"))
        .collect();
    server.wait_line("about failing accepts", |json| {
        message(json).starts_with("cannot accept connections")
    });
    // Out of descriptors, the open stream is still served: a heartbeat arrives after the log.
    let mark = seen.len();
    read_until(&mut stream, &mut seen, ":", mark);

    server.wait_line("about accepting again", |json| {
        message(json).starts_with("accepting connections again")
    });
    // New clients are served again once the head timeout freed descriptors.
    let deadline = Instant::now() + FAIL_AFTER;
    loop {
        if healthz(addr).is_some_and(|status| status.contains(" 200 ")) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "no 200 from /healthz: {:#?}",
            server.lines
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let mark = seen.len();
    read_until(&mut stream, &mut seen, ":", mark);
    // Logged once per episode of failures, not once per failed accept.
    let failing = server.count("cannot accept connections");
    let recovered = server.count("accepting connections again");
    assert!(
        failing >= 1 && failing <= recovered + 1,
        "{failing} failure lines, {recovered} recoveries"
    );
    drop(silent);
}
