//! Proves the `changefeed` binary keeps its command-line promises end to end: `--help` names each
//! subcommand and where its flags are, `--listen` takes `localhost:PORT`, `:PORT` and
//! `[::1]:PORT`, `--log-format json` writes one JSON object per line, the demo's printed curl
//! line works as printed, and `--retain-rows N` keeps the table near N rows while another
//! process writes.

mod support;

use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use sqlx::sqlite::SqliteConnectOptions;
use sqlx::{ConnectOptions, Connection};

const BIN: &str = env!("CARGO_BIN_EXE_changefeed");
/// A failure bound for waits, never a pause.
const FAIL_AFTER: Duration = Duration::from_secs(30);

/// A running `changefeed` process; killed when dropped.
struct Running {
    child: Child,
    stdout: mpsc::Receiver<String>,
    stderr: mpsc::Receiver<String>,
}

impl Running {
    fn start(args: &[&str]) -> Running {
        let mut child = Command::new(BIN)
            .args(args)
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn changefeed");
        let stdout = support::lines(child.stdout.take().unwrap());
        let stderr = support::lines(child.stderr.take().unwrap());
        Running {
            child,
            stdout,
            stderr,
        }
    }

    /// The first line of `stream` that `pick` accepts, skipping the others.
    fn line<T>(
        stream: &mpsc::Receiver<String>,
        what: &str,
        mut pick: impl FnMut(&str) -> Option<T>,
    ) -> T {
        let deadline = Instant::now() + FAIL_AFTER;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match stream.recv_timeout(left) {
                Ok(line) => {
                    if let Some(value) = pick(&line) {
                        return value;
                    }
                }
                Err(error) => panic!("no line with {what} ({error})"),
            }
        }
    }

    /// The listening address, from the JSON log line `changefeed serving`.
    fn serving_addr(&self) -> SocketAddr {
        Running::line(&self.stderr, "the serving log line", |line| {
            let json: serde_json::Value = serde_json::from_str(line)
                .unwrap_or_else(|error| panic!("not a JSON log line ({error}): {line}"));
            assert!(
                json["timestamp"].is_string() && json["level"].is_string(),
                "{line}"
            );
            (json["fields"]["message"] == "changefeed serving")
                .then(|| json["fields"]["listen"].as_str().unwrap().parse().unwrap())
        })
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `GET path` over a plain TCP connection; the status line and body.
fn http_get(addr: SocketAddr, path: &str) -> (String, String) {
    use std::io::{Read, Write};
    let mut stream = std::net::TcpStream::connect(addr).expect("connect");
    stream.set_read_timeout(Some(FAIL_AFTER)).unwrap();
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut text = String::new();
    stream.read_to_string(&mut text).expect("response");
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    (
        head.lines().next().unwrap_or("").to_owned(),
        body.to_owned(),
    )
}

fn db_url(dir: &Path) -> String {
    format!("sqlite://{}", dir.join("feed.db").display())
}

#[test]
fn help_lists_each_subcommand_and_where_its_flags_are() {
    let output = Command::new(BIN).arg("--help").output().unwrap();
    assert!(output.status.success());
    let help = String::from_utf8(output.stdout).unwrap();
    for subcommand in ["serve", "demo", "tail", "contract-service"] {
        let line = help
            .lines()
            .find(|line| line.trim_start().starts_with(&format!("{subcommand} ")))
            .unwrap_or_else(|| panic!("{subcommand} missing from:\n{help}"));
        assert!(
            line.split_whitespace().count() > 1,
            "{subcommand} has no summary"
        );
    }
    assert!(help.contains("changefeed <COMMAND> --help"), "{help}");
    let serve = Command::new(BIN)
        .args(["serve", "--help"])
        .output()
        .unwrap();
    let serve = String::from_utf8(serve.stdout).unwrap();
    for flag in ["--listen", "--retain-rows", "--retain-days", "--log-format"] {
        assert!(
            serve.contains(flag),
            "{flag} missing from serve --help:\n{serve}"
        );
    }
    let bad = Command::new(BIN)
        .args(["serve", "--listen", "7467"])
        .output()
        .unwrap();
    assert_eq!(bad.status.code(), Some(2));
    let message = String::from_utf8(bad.stderr).unwrap();
    assert_eq!(message.lines().count(), 1, "{message}");
    assert!(message.contains("HOST:PORT"), "{message}");
}

#[test]
fn listen_takes_localhost_port_alone_and_ipv6_and_logs_json() {
    for (listen, expect_ip) in [
        ("localhost:0", "127.0.0.1"),
        (":0", "0.0.0.0"),
        ("[::1]:0", "::1"),
    ] {
        let dir = tempfile::tempdir().unwrap();
        let url = db_url(dir.path());
        let server = Running::start(&[
            "serve",
            "--database",
            &url,
            "--listen",
            listen,
            "--log-format",
            "json",
        ]);
        let addr = server.serving_addr();
        assert_eq!(addr.ip().to_string(), expect_ip, "{listen}");
        let target = if addr.ip().is_unspecified() {
            SocketAddr::from(([127, 0, 0, 1], addr.port()))
        } else {
            addr
        };
        let (status, body) = http_get(target, "/healthz");
        assert!(status.contains(" 200 "), "{listen}: {status}");
        assert!(body.contains("\"status\":\"ok\""), "{listen}: {body}");
    }
}

#[test]
fn the_demo_prints_the_viewer_url_and_a_curl_line_that_works_as_printed() {
    let curl = Command::new("curl").arg("--version").output();
    assert!(
        curl.is_ok_and(|o| o.status.success()),
        "this test runs the printed curl line: install curl (scripts/install-deps.sh does)"
    );
    let dir = tempfile::tempdir().unwrap();
    let url = db_url(dir.path());
    let demo = Running::start(&[
        "demo",
        "--database",
        &url,
        "--listen",
        "127.0.0.1:0",
        "--rate",
        "100",
    ]);
    let viewer = Running::line(&demo.stdout, "the viewer URL", |line| {
        line.strip_prefix("viewer: ")
            .map(|url| url.trim().to_owned())
    });
    let watch = Running::line(&demo.stdout, "the curl line", |line| {
        line.strip_prefix("watch:")
            .map(|rest| rest.trim().to_owned())
    });
    assert!(
        watch.starts_with("curl -N '") && watch.contains("project=demo-1"),
        "{watch}"
    );
    let addr: SocketAddr = viewer
        .strip_prefix("http://")
        .and_then(|rest| rest.strip_suffix('/'))
        .unwrap_or_else(|| panic!("viewer URL {viewer:?}"))
        .parse()
        .unwrap();
    let (status, page) = http_get(addr, "/");
    assert!(
        status.contains(" 200 ") && page.contains("<html"),
        "{status}"
    );
    // The printed line, run by a shell exactly as a user would paste it (bounded by curl's own
    // --max-time; its exit code then is 28, "operation timed out").
    let output = Command::new("sh")
        .arg("-c")
        .arg(format!("{watch} --max-time 3 --silent"))
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&output.stdout);
    assert!(text.contains("event: changefeed.ready"), "{watch}: {text}");
    assert!(
        text.lines().any(|line| line.starts_with("event: pr_")),
        "no pull-request event from the demo within 3 s: {text}"
    );
}

#[test]
fn retain_rows_keeps_the_table_near_its_limit_while_another_process_writes() {
    let dir = tempfile::tempdir().unwrap();
    let url = db_url(dir.path());
    let server = Running::start(&[
        "serve",
        "--database",
        &url,
        "--listen",
        "127.0.0.1:0",
        "--log-format",
        "json",
        "--retain-rows",
        "20",
    ]);
    let addr = server.serving_addr();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let options: SqliteConnectOptions = url.parse().unwrap();
        let mut db = options
            .busy_timeout(Duration::from_secs(10))
            .connect()
            .await
            .expect("open the server's database from this process");
        // 10 transactions of 50 rows, one every 100 ms.
        for batch in 0..10 {
            let mut tx = db.begin().await.unwrap();
            for i in 0..50 {
                sqlx::query(
                    "INSERT INTO change_log (project_id, event_type, payload) VALUES ('p', 'tick', ?)",
                )
                .bind(format!("{{\"n\":{}}}", batch * 50 + i))
                .execute(&mut *tx)
                .await
                .unwrap();
            }
            tx.commit().await.unwrap();
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        // The janitor runs on log changes (the default idle timer is 30 s): the table is back
        // to the newest 20 rows within a few seconds of the last write.
        let deadline = Instant::now() + Duration::from_secs(10);
        let (rows, min, max) = loop {
            let (rows, min, max): (i64, i64, i64) = sqlx::query_as(
                "SELECT COUNT(*), COALESCE(MIN(seq), 0), COALESCE(MAX(seq), 0) FROM change_log",
            )
            .fetch_one(&mut db)
            .await
            .unwrap();
            if rows <= 20 || Instant::now() > deadline {
                break (rows, min, max);
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        };
        assert_eq!(rows, 20, "{rows} rows left 10 s after the last write");
        assert_eq!((min, max), (481, 500), "the newest 20 rows are kept");
    });
    let (_, health) = http_get(addr, "/healthz");
    assert!(health.contains("\"floor\":480"), "{health}");
}
