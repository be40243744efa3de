//! Proves the library half of `changefeed tail` against the real server: with `--cursor-file`,
//! runs stopped part-way and restarted print exactly the filtered log, each event once, in
//! order, and the file wins over `--after`; `--once` prints what the server has published and
//! stops at `changefeed.ready`, and the next `--once` run continues exactly after it; a reset is reported
//! on stderr (with the reason and the new cursor) and counted for the exit code; off a terminal
//! stderr carries no notes or progress line; `--once` gives up on a server it cannot reach
//! (following retries forever); the server announces the head for the progress line
//! (`Changefeed-Head`); `--last N` prints exactly the newest N matching events and
//! `--session` only that session's.

use std::io::{self, Write};
use std::path::Path;
use std::sync::{Arc, Mutex};

use changefeed_client::tail::{
    tail, Console, TailError, TailFormat, TailOptions, TailSummary, ONCE_MAX_FAILED_ATTEMPTS,
};
use changefeed_client::TcpConnector;
use changefeed_tests::{project_sql, session_sql, within, TestServer};

mod client_support;
use tokio::sync::{mpsc, oneshot};

/// An output that hands each complete line to the test.
struct Lines {
    tx: mpsc::UnboundedSender<String>,
    partial: Vec<u8>,
}

impl Write for Lines {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.partial.extend_from_slice(buf);
        while let Some(end) = self.partial.iter().position(|&b| b == b'\n') {
            let line: Vec<u8> = self.partial.drain(..=end).collect();
            let line = String::from_utf8_lossy(&line[..end]).into_owned();
            let _ = self.tx.send(line);
        }
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// A shared buffer for the status messages.
#[derive(Clone, Default)]
struct Text(Arc<Mutex<Vec<u8>>>);

impl Write for Text {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl Text {
    fn text(&self) -> String {
        String::from_utf8_lossy(&self.0.lock().unwrap()).into_owned()
    }
}

/// The session id of a printed event line (`payload.id` of a `session_created` event).
fn session_of(line: &str) -> String {
    let json: serde_json::Value = serde_json::from_str(line).expect("one JSON event per line");
    assert_eq!(json["projectId"], "a", "{line}");
    json["payload"]["id"]
        .as_str()
        .expect("session id")
        .to_owned()
}

async fn add_sessions(server: &TestServer, from: usize, to: usize) -> Vec<String> {
    let mut project_a = Vec::new();
    for i in from..to {
        let project = if i % 3 == 0 { "b" } else { "a" };
        server.write(&session_sql(project, &format!("s{i}"))).await;
        if project == "a" {
            project_a.push(format!("s{i}"));
        }
    }
    project_a
}

/// Runs `tail` until it has printed `stop_after` lines (then signals it to stop), while
/// `during` runs; returns every line it printed and its status messages.
async fn run_tail(
    args: TailOptions,
    stop_after: usize,
    during: impl std::future::Future<Output = ()>,
) -> (Vec<String>, String) {
    let (tx, mut lines) = mpsc::unbounded_channel();
    let (stop, stopped) = oneshot::channel::<()>();
    let status = Text::default();
    let out = Lines {
        tx,
        partial: Vec::new(),
    };
    let shutdown = async {
        let _ = stopped.await;
    };
    let console = Console {
        chatty_stderr: true,
        ..Console::default()
    };
    let run = tail(args, TcpConnector, console, out, status.clone(), shutdown);
    let watch = async {
        let mut seen = Vec::new();
        let mut stop = Some(stop);
        let mut during = std::pin::pin!(during);
        let mut during_done = false;
        while seen.len() < stop_after {
            tokio::select! {
                () = &mut during, if !during_done => during_done = true,
                line = lines.recv() => seen.push(line.expect("tail ended early")),
            }
        }
        if !during_done {
            during.await;
        }
        if let Some(stop) = stop.take() {
            let _ = stop.send(());
        }
        seen
    };
    let (result, mut seen) =
        within("tail to run and stop", async { tokio::join!(run, watch) }).await;
    result.expect("tail ends cleanly on the stop signal");
    // Lines printed between the last one counted and the stop.
    while let Ok(line) = lines.try_recv() {
        seen.push(line);
    }
    (seen, status.text())
}

fn read_file(path: &Path) -> String {
    std::fs::read_to_string(path).expect("cursor file")
}

#[tokio::test]
async fn tail_with_a_cursor_file_resumes_without_loss_or_duplicate() {
    let server = TestServer::start().await;
    server
        .write(&format!("{}{}", project_sql("a"), project_sql("b")))
        .await;
    let dir = tempfile::tempdir().expect("temp dir");
    let cursor_file = dir.path().join("tail.cursor");
    let args = TailOptions {
        url: format!("http://{}/api/v1/events", server.addr),
        projects: vec!["a".into()],
        types: Some("session_*".into()),
        after: Some("0".into()),
        cursor_file: Some(cursor_file.clone()),
        format: TailFormat::Json,
        ..TailOptions::default()
    };

    // Run 1: replays what exists, then live events written while it runs; stops part-way.
    let mut expected = add_sessions(&server, 0, 30).await;
    let (first, status) = run_tail(args.clone(), 25, async {
        expected.extend(add_sessions(&server, 30, 45).await);
    })
    .await;
    assert!(status.contains("connected to"), "{status}");
    assert!(!status.contains("resuming"), "{status}");
    let saved = read_file(&cursor_file);
    assert!(
        saved.starts_with(&format!("{}:", server.epoch())),
        "{saved:?}"
    );

    // Written while tail is down.
    expected.extend(add_sessions(&server, 45, 60).await);

    // Run 2 resumes from the file (which wins over --after 0) and catches up.
    let already = first.len();
    let total = expected.len();
    let (second, status) = run_tail(args, total - already, async {}).await;
    assert!(
        status.contains(&format!("resuming after {}", saved.trim())),
        "{status}"
    );

    let printed: Vec<String> = first.iter().chain(&second).map(|l| session_of(l)).collect();
    assert_eq!(printed, expected);

    // The file holds the position of the last event printed (or a later checkpoint).
    let last_seq: u64 = serde_json::from_str::<serde_json::Value>(second.last().unwrap()).unwrap()
        ["seq"]
        .as_u64()
        .unwrap();
    let saved = read_file(&cursor_file);
    let saved_seq: u64 = saved.trim().rsplit(':').next().unwrap().parse().unwrap();
    assert!(saved_seq >= last_seq, "{saved} vs {last_seq}");
}

/// Runs `tail --once` to completion; returns the summary, the printed lines and stderr.
async fn run_once(options: TailOptions, console: Console) -> (TailSummary, Vec<String>, String) {
    let (tx, mut lines) = mpsc::unbounded_channel();
    let status = Text::default();
    let out = Lines {
        tx,
        partial: Vec::new(),
    };
    let summary = within(
        "tail --once to catch up",
        tail(
            options,
            TcpConnector,
            console,
            out,
            status.clone(),
            std::future::pending(),
        ),
    )
    .await
    .expect("tail --once succeeds");
    let mut printed = Vec::new();
    while let Ok(line) = lines.try_recv() {
        printed.push(line);
    }
    (summary, printed, status.text())
}

fn once_options(server: &TestServer, cursor_file: &Path) -> TailOptions {
    TailOptions {
        // A server address: the events path is appended.
        url: format!("http://{}", server.addr),
        projects: vec!["a".into()],
        types: Some("session_*".into()),
        after: Some("0".into()),
        cursor_file: Some(cursor_file.to_owned()),
        once: true,
        ..TailOptions::default()
    }
}

#[tokio::test]
async fn tail_once_prints_what_exists_then_the_next_run_continues_after_it() {
    let server = TestServer::start().await;
    server
        .write(&format!("{}{}", project_sql("a"), project_sql("b")))
        .await;
    let dir = tempfile::tempdir().expect("temp dir");
    let cursor_file = dir.path().join("once.cursor");
    let quiet = Console::default();

    let first_batch = add_sessions(&server, 0, 40).await;
    // `--once` prints what the server has published when it connects.
    server.settle().await;
    let (summary, printed, stderr) = run_once(once_options(&server, &cursor_file), quiet).await;
    let sessions: Vec<String> = printed.iter().map(|l| session_of(l)).collect();
    assert_eq!(sessions, first_batch);
    assert!(summary.caught_up);
    assert_eq!(summary.resets, 0);
    assert_eq!(summary.printed, first_batch.len() as u64);
    assert_eq!(summary.exit_code(&once_options(&server, &cursor_file)), 0);
    // Not a terminal: nothing on stderr at all.
    assert_eq!(stderr, "");
    let saved = read_file(&cursor_file);
    assert_eq!(Some(saved.trim()), summary.cursor.as_deref());

    // Nothing new: the next run prints nothing and still catches up.
    let (summary, printed, _) = run_once(once_options(&server, &cursor_file), quiet).await;
    assert!(printed.is_empty(), "{printed:?}");
    assert!(summary.caught_up);

    // New writes (and writes the filter excludes): exactly the new matching events.
    let second_batch = add_sessions(&server, 40, 70).await;
    server.settle().await;
    let chatty = Console {
        chatty_stderr: true,
        ..Console::default()
    };
    let (summary, printed, stderr) = run_once(once_options(&server, &cursor_file), chatty).await;
    let sessions: Vec<String> = printed.iter().map(|l| session_of(l)).collect();
    assert_eq!(sessions, second_batch);
    assert!(summary.caught_up);
    assert!(
        stderr.contains(&format!("resuming after {}", saved.trim())),
        "{stderr}"
    );
    // The final progress line of a --once run on a terminal.
    assert!(
        stderr.contains(&format!("caught up {} events", second_batch.len())),
        "{stderr}"
    );
}

#[tokio::test]
async fn tail_once_reports_a_reset_and_counts_it_in_the_exit_code() {
    let server = TestServer::start().await;
    server
        .write(&format!("{}{}", project_sql("a"), project_sql("b")))
        .await;
    add_sessions(&server, 1, 10).await;
    server.settle().await;
    let head = server.head().await.0;
    let dir = tempfile::tempdir().expect("temp dir");
    let cursor_file = dir.path().join("reset.cursor");
    let mut options = once_options(&server, &cursor_file);
    // A cursor of another database: the server cannot honour it and resets to its head.
    options.after = Some("00000000000000ff:3".into());
    let (summary, printed, stderr) = run_once(options.clone(), Console::default()).await;
    assert_eq!(summary.resets, 1);
    assert!(summary.caught_up);
    assert_eq!(
        summary.exit_code(&options),
        changefeed_client::tail::EXIT_RESET
    );
    assert!(printed.is_empty(), "{printed:?}");
    // Reported even off a terminal, with the reason and the new cursor.
    assert!(
        stderr.contains("reset (epoch_mismatch)")
            && stderr.contains(&format!("continuing after {}", server.cursor(head))),
        "{stderr}"
    );
    // The new cursor is kept: the next run resumes from it with no reset.
    assert_eq!(read_file(&cursor_file).trim(), server.cursor(head));
    let expected = add_sessions(&server, 10, 14).await;
    server.settle().await;
    let (summary, printed, _) = run_once(options.clone(), Console::default()).await;
    assert_eq!(summary.resets, 0);
    assert_eq!(summary.exit_code(&options), 0);
    let sessions: Vec<String> = printed.iter().map(|l| session_of(l)).collect();
    assert_eq!(sessions, expected);
}

#[tokio::test]
async fn the_stream_announces_where_it_starts_and_the_head() {
    let server = TestServer::start().await;
    server
        .write(&format!("{}{}", project_sql("a"), project_sql("b")))
        .await;
    add_sessions(&server, 1, 6).await;
    server.settle().await;
    let head = server.head().await.0;
    let stream = server.stream("/api/v1/events?after=2").await;
    assert_eq!(stream.header("changefeed-cursor"), Some(&*server.cursor(2)));
    assert_eq!(
        stream.header("changefeed-head"),
        Some(&*server.cursor(head))
    );
}

#[tokio::test(start_paused = true)]
async fn tail_once_gives_up_on_an_unreachable_server_and_following_does_not() {
    let (mut server, connector) = client_support::ScriptServer::memory();
    for _ in 0..2 * ONCE_MAX_FAILED_ATTEMPTS {
        connector.fail_next(io::ErrorKind::ConnectionRefused);
    }
    let options = TailOptions {
        url: "http://changefeed.test".into(),
        once: true,
        ..TailOptions::default()
    };
    let status = Text::default();
    let result = tail(
        options,
        connector.clone(),
        Console::default(),
        io::sink(),
        status.clone(),
        std::future::pending(),
    )
    .await;
    match result {
        Err(error @ TailError::Unreachable { attempts, .. }) => {
            assert_eq!(attempts, ONCE_MAX_FAILED_ATTEMPTS);
            assert!(error.to_string().contains("ConnectionRefused"), "{error}");
        }
        other => panic!("expected Unreachable, got {other:?}"),
    }
    // Each failure but the last was reported with its backoff.
    let reported = status.text().matches("reconnecting in").count() as u32;
    assert_eq!(reported, ONCE_MAX_FAILED_ATTEMPTS - 1, "{}", status.text());

    // Following retries through the remaining failures and connects.
    let (stop, stopped) = oneshot::channel::<()>();
    let follow = tokio::spawn(tail(
        TailOptions {
            url: "http://changefeed.test".into(),
            ..TailOptions::default()
        },
        connector,
        Console::default(),
        io::sink(),
        io::sink(),
        async {
            let _ = stopped.await;
        },
    ));
    let conn = server.accept().await;
    assert_eq!(conn.request.target, "/api/v1/events");
    let _ = stop.send(());
    follow
        .await
        .expect("tail task")
        .expect("follow mode ends cleanly");
}

#[tokio::test]
async fn tail_last_prints_the_newest_matching_events_and_session_narrows_to_one_session() {
    let server = TestServer::start().await;
    server
        .write(&format!("{}{}", project_sql("a"), project_sql("b")))
        .await;
    let sessions = add_sessions(&server, 0, 12).await;
    // One more event of s1 (a session_updated), written last.
    server
        .write("UPDATE sessions SET display_name = 'renamed' WHERE id = 's1';")
        .await;
    let base = TailOptions {
        url: format!("http://{}", server.addr),
        projects: vec!["a".into()],
        once: true,
        ..TailOptions::default()
    };
    let (summary, printed, _) = run_once(
        TailOptions {
            last: Some(3),
            ..base.clone()
        },
        Console::default(),
    )
    .await;
    assert!(summary.caught_up);
    // The newest three events of project a: two session_created, then s1's update.
    let kinds: Vec<(String, String)> = printed
        .iter()
        .map(|line| {
            let json: serde_json::Value = serde_json::from_str(line).unwrap();
            (
                json["type"].as_str().unwrap().to_owned(),
                json["payload"]["id"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    let created = |id: &str| ("session_created".to_owned(), id.to_owned());
    let newest = &sessions[sessions.len() - 2..];
    assert_eq!(
        kinds,
        [
            created(&newest[0]),
            created(&newest[1]),
            ("session_updated".to_owned(), "s1".to_owned())
        ]
    );
    let (_, printed, _) = run_once(
        TailOptions {
            sessions: vec!["s1".into()],
            last: Some(100),
            ..base
        },
        Console::default(),
    )
    .await;
    let of_s1: Vec<String> = printed
        .iter()
        .map(|line| {
            let json: serde_json::Value = serde_json::from_str(line).unwrap();
            assert_eq!(json["sessionId"], "s1", "{line}");
            json["type"].as_str().unwrap().to_owned()
        })
        .collect();
    assert_eq!(of_s1, ["session_created", "session_updated"]);
}
