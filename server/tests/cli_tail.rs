//! Proves `changefeed tail` end to end with the real binaries: against `changefeed serve` on a
//! SQLite file written by the `sqlite3` CLI, `tail http://ADDR --once --after 0` prints every event
//! of the log in order (also rows committed just before it connected) and exits 0 with nothing on
//! stderr off a terminal; `--cursor-file` makes the next `--once` run continue exactly after the
//! last printed event; a reset exits 3 with the reason on stderr; bad arguments exit 2 with one
//! line; and on a terminal (tmux) the progress line (during a replay held half-way by a scripted
//! server, and its final state) and the notes appear on stderr, and `--format pretty` is coloured
//! unless `NO_COLOR` is set.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

/// How long any single wait may take before the test fails.
const FAIL_AFTER: Duration = Duration::from_secs(30);

const BIN: &str = env!("CARGO_BIN_EXE_changefeed");

/// `changefeed serve` on a fresh SQLite file, on an ephemeral loopback port.
struct Served {
    child: Child,
    addr: String,
    db: PathBuf,
    dir: tempfile::TempDir,
}

impl Served {
    fn start() -> Served {
        let dir = tempfile::tempdir().expect("temp dir");
        let db = dir.path().join("feed.db");
        let mut child = Command::new(BIN)
            .args(["serve", "--listen", "127.0.0.1:0", "--database"])
            .arg(format!("sqlite://{}", db.display()))
            .env("RUST_LOG", "info")
            .env_remove("DATABASE_URL")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start changefeed serve");
        // The start-up log line names the address; keep draining stderr afterwards.
        let stderr = child.stderr.take().expect("stderr");
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if let Some(addr) = line
                    .split_whitespace()
                    .find_map(|word| word.strip_prefix("listen="))
                {
                    let _ = tx.send(addr.to_owned());
                }
            }
        });
        let addr = rx
            .recv_timeout(FAIL_AFTER)
            .expect("changefeed serve logs the address it listens on");
        Served {
            child,
            addr,
            db,
            dir,
        }
    }

    fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Runs `sql` with the `sqlite3` CLI: another process writing the served database.
    fn sqlite3(&self, sql: &str) -> String {
        let output = Command::new("sqlite3")
            .arg("-cmd")
            .arg(".timeout 10000")
            .arg(&self.db)
            .arg(sql)
            .output()
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

    /// `count` new sessions `<prefix>1..`, alternately in p1 and p2, then an update of every
    /// third: `session_created` and `session_updated` rows.
    fn write_sessions(&self, prefix: &str, count: u32) {
        self.sqlite3(&format!(
            "INSERT OR IGNORE INTO projects (id, name) VALUES ('p1', 'One'), ('p2', 'Two');
             WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < {count})
             INSERT INTO sessions (id, project_id)
               SELECT '{prefix}' || i, CASE i % 2 WHEN 0 THEN 'p2' ELSE 'p1' END FROM n;
             UPDATE sessions SET activity = 'busy'
               WHERE id LIKE '{prefix}%' AND CAST(substr(id, {}) AS INTEGER) % 3 = 0;",
            prefix.len() + 1
        ));
    }

    /// `(seq, project, kind)` of every log row, read by the `sqlite3` CLI (the oracle).
    fn log(&self, project: Option<&str>) -> Vec<(u64, String, String)> {
        let filter = project.map_or(String::new(), |p| format!("WHERE project_id = '{p}'"));
        self.sqlite3(&format!(
            "SELECT seq || '|' || project_id || '|' || event_type FROM change_log {filter} \
             ORDER BY seq"
        ))
        .lines()
        .map(|line| {
            let mut parts = line.splitn(3, '|');
            (
                parts.next().unwrap().parse().unwrap(),
                parts.next().unwrap().to_owned(),
                parts.next().unwrap().to_owned(),
            )
        })
        .collect()
    }

    /// Waits until the server has published every committed row (`/healthz`: `published` =
    /// `head`), so a stream opened now replays them all before `changefeed.ready`.
    fn settle(&self) {
        let deadline = Instant::now() + FAIL_AFTER;
        loop {
            let health = self.healthz();
            if health["published"] == health["head"] {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "the server never published its head: {health}"
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    fn healthz(&self) -> serde_json::Value {
        let mut conn = std::net::TcpStream::connect(&self.addr).expect("connect");
        conn.set_read_timeout(Some(FAIL_AFTER)).expect("timeout");
        conn.write_all(b"GET /healthz HTTP/1.0\r\n\r\n")
            .expect("request");
        let mut response = String::new();
        conn.read_to_string(&mut response).expect("response");
        let body = response.split("\r\n\r\n").nth(1).expect("a body");
        serde_json::from_str(body).expect("JSON")
    }

    fn epoch(&self) -> String {
        self.sqlite3("SELECT value FROM changefeed_meta WHERE key = 'epoch'")
            .trim()
            .to_owned()
    }
}

impl Drop for Served {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Runs `changefeed tail ARGS` off a terminal to completion (bounded).
fn tail(args: &[&str]) -> Output {
    let mut child = Command::new(BIN)
        .arg("tail")
        .args(args)
        .env_remove("NO_COLOR")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start changefeed tail");
    let deadline = Instant::now() + FAIL_AFTER;
    // Read both pipes on threads so a full pipe never blocks the child.
    let mut stdout = child.stdout.take().expect("stdout");
    let mut stderr = child.stderr.take().expect("stderr");
    let out = std::thread::spawn(move || {
        let mut text = Vec::new();
        std::io::Read::read_to_end(&mut stdout, &mut text).map(|_| text)
    });
    let err = std::thread::spawn(move || {
        let mut text = Vec::new();
        std::io::Read::read_to_end(&mut stderr, &mut text).map(|_| text)
    });
    let status = loop {
        if let Some(status) = child.try_wait().expect("wait") {
            break status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("changefeed tail {args:?} did not exit within {FAIL_AFTER:?}");
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    Output {
        status,
        stdout: out.join().expect("stdout thread").expect("stdout"),
        stderr: err.join().expect("stderr thread").expect("stderr"),
    }
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8(bytes.to_vec()).expect("utf-8")
}

/// `(seq, project, kind)` of each printed JSON line.
fn printed(output: &Output) -> Vec<(u64, String, String)> {
    text(&output.stdout)
        .lines()
        .map(|line| {
            let json: serde_json::Value = serde_json::from_str(line).expect("one JSON per line");
            (
                json["seq"].as_u64().expect("seq"),
                json["projectId"].as_str().expect("projectId").to_owned(),
                json["type"].as_str().expect("type").to_owned(),
            )
        })
        .collect()
}

#[test]
fn tail_once_after_zero_prints_every_event_and_exits_zero() {
    let served = Served::start();
    served.write_sessions("s", 1500);
    served.settle();
    let log = served.log(None);
    assert_eq!(log.len(), 2000);

    let output = tail(&[&served.url(), "--once", "--after", "0"]);
    assert!(output.status.success(), "{output:?}");
    assert_eq!(printed(&output), log);
    // Off a terminal: no notes, no progress line.
    assert_eq!(text(&output.stderr), "");

    // The full stream URL works as given, and the pretty format has no colour off a terminal.
    let output = tail(&[
        &format!("{}/api/v1/events", served.url()),
        "--once",
        "--after",
        "0",
        "--format",
        "pretty",
    ]);
    assert!(output.status.success(), "{output:?}");
    let lines = text(&output.stdout);
    assert_eq!(lines.lines().count(), log.len());
    assert!(!lines.contains('\x1b'));
    assert!(lines
        .lines()
        .all(|l| l.contains("  p1  ") || l.contains("  p2  ")));
}

#[test]
fn tail_once_right_after_another_process_commits_prints_those_rows_too() {
    // `ready` means caught up with the request: rows the `sqlite3` CLI committed before `tail`
    // connected are printed even when the server has not published them yet (no settle here).
    let served = Served::start();
    for round in 0..5 {
        served.write_sessions(&format!("r{round}x"), 30);
        let log = served.log(None);
        let output = tail(&[&served.url(), "--once", "--after", "0"]);
        assert!(output.status.success(), "round {round}: {output:?}");
        assert_eq!(
            printed(&output),
            log,
            "round {round}: every row committed before the run"
        );
    }
}

#[test]
fn a_cursor_file_makes_the_next_once_run_continue_exactly_and_a_reset_exits_3() {
    let served = Served::start();
    served.write_sessions("a", 300);
    served.settle();
    let cursor_file = served.dir.path().join("p1.cursor");
    let cursor_arg = cursor_file.to_str().expect("utf-8 path");
    let run = || {
        tail(&[
            &served.url(),
            "--once",
            "--after",
            "0",
            "--project",
            "p1",
            "--cursor-file",
            cursor_arg,
        ])
    };

    let first = run();
    assert!(first.status.success(), "{first:?}");
    let mut seen = printed(&first);
    assert_eq!(seen, served.log(Some("p1")));

    served.write_sessions("b", 200);
    served.settle();
    let second = run();
    assert!(second.status.success(), "{second:?}");
    let new = printed(&second);
    assert!(!new.is_empty());
    seen.extend(new);
    // Both runs together: exactly p1's log, each event once.
    assert_eq!(seen, served.log(Some("p1")));

    let third = run();
    assert!(third.status.success(), "{third:?}");
    assert!(printed(&third).is_empty());

    // Another database's cursor: reset to the head, reported, exit 3.
    let output = tail(&[&served.url(), "--once", "--after", "00000000000000ff:1"]);
    assert_eq!(output.status.code(), Some(3), "{output:?}");
    let stderr = text(&output.stderr);
    assert!(
        stderr.contains("reset (epoch_mismatch)")
            && stderr.contains("changefeed: tail: caught up after 1 reset(s)"),
        "{stderr}"
    );
    // The new cursor is this log's head; the run printed nothing after it.
    let after = stderr
        .split("continuing after ")
        .nth(1)
        .and_then(|rest| rest.split('.').next())
        .expect("the new cursor");
    let (epoch, seq) = after.split_once(':').expect("<epoch>:<seq>");
    assert_eq!(epoch, served.epoch());
    let head = served.log(None).last().expect("rows").0;
    assert_eq!(seq.parse::<u64>().expect("seq"), head);
    assert!(printed(&output).is_empty(), "{output:?}");
}

#[test]
fn bad_arguments_exit_2_with_one_line() {
    let served = Served::start();
    for (args, needle) in [
        (vec!["ftp://h/e".to_owned()], "http or https"),
        (vec!["--after".into(), "x".into()], "cursor"),
        (
            vec![
                "https://127.0.0.1:1".into(),
                "--cacert".into(),
                "/nonexistent/ca.pem".into(),
            ],
            "cannot read CA file /nonexistent/ca.pem",
        ),
    ] {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let output = tail(&args);
        assert_eq!(output.status.code(), Some(2), "{args:?}: {output:?}");
        let stderr = text(&output.stderr);
        assert_eq!(stderr.lines().count(), 1, "{stderr}");
        assert!(stderr.contains(needle), "{args:?}: {stderr}");
        assert!(output.stdout.is_empty());
    }
    // A project that does not exist: the server's JSON error, exit 1.
    let output = tail(&[&served.url(), "--once", "--project", "nope"]);
    assert_eq!(output.status.code(), Some(1), "{output:?}");
    assert!(
        text(&output.stderr).contains("unknown_project"),
        "{output:?}"
    );
}

/// A private tmux server (its own socket), killed when dropped.
struct Tmux {
    socket: String,
}

impl Tmux {
    fn new(name: &str) -> Tmux {
        Tmux {
            socket: format!("changefeed-test-{}-{name}", std::process::id()),
        }
    }

    fn command(&self) -> Command {
        let mut command = Command::new("tmux");
        command.arg("-L").arg(&self.socket);
        command
    }

    /// Runs `shell` in a new detached 200×50 window named `session`; the window stays after.
    fn run(&self, session: &str, shell: &str) {
        let status = self
            .command()
            .args(["new-session", "-d", "-x", "200", "-y", "50", "-s", session])
            .arg(format!("{shell}; sleep 600"))
            .status()
            .unwrap_or_else(|error| {
                panic!("cannot run tmux ({error}); scripts/install-deps.sh installs it")
            });
        assert!(status.success(), "tmux new-session failed");
    }

    /// The screen of `session` (with escape sequences when `escapes`).
    fn capture(&self, session: &str, escapes: bool) -> String {
        let mut command = self.command();
        command.args(["capture-pane", "-p", "-J", "-t", session]);
        if escapes {
            command.arg("-e");
        }
        let output = command.output().expect("tmux capture-pane");
        text(&output.stdout)
    }

    /// Waits until the screen of `session` shows `needle`; returns the screen.
    fn wait_for(&self, session: &str, needle: &str, escapes: bool) -> String {
        let deadline = Instant::now() + FAIL_AFTER;
        loop {
            let screen = self.capture(session, escapes);
            if screen.contains(needle) {
                return screen;
            }
            assert!(
                Instant::now() < deadline,
                "{needle:?} never appeared; the screen:\n{screen}"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Tmux {
    fn drop(&mut self) {
        let _ = self.command().arg("kill-server").status();
    }
}

fn quoted(path: &Path) -> String {
    format!("'{}'", path.display())
}

#[test]
fn on_a_terminal_tail_shows_the_progress_line_and_colours_pretty_output() {
    let served = Served::start();
    served.write_sessions("s", 3000);
    served.settle();
    let log = served.log(None);
    let total = log.len();
    let head = log.last().expect("rows").0;
    let tmux = Tmux::new("tail");
    let out = served.dir.path().join("out.jsonl");

    // Events to a file, stderr on the terminal: the notes and the progress line, whose final
    // state stays on the screen.
    tmux.run(
        "progress",
        &format!(
            "{} tail {} --once --after 0 > {}; echo \"exit=$?\"",
            quoted(Path::new(BIN)),
            served.url(),
            quoted(&out)
        ),
    );
    let screen = tmux.wait_for("progress", "exit=", false);
    assert!(screen.contains("exit=0"), "{screen}");
    assert!(
        screen.contains(&format!(
            "changefeed tail: connected to {}/api/v1/events?after=0",
            served.url()
        )),
        "{screen}"
    );
    let thousands = |n: usize| {
        let digits = n.to_string();
        let mut out = String::new();
        for (i, c) in digits.chars().enumerate() {
            if i > 0 && (digits.len() - i) % 3 == 0 {
                out.push(',');
            }
            out.push(c);
        }
        out
    };
    let progress = format!(
        "changefeed tail: caught up {} events · seq {} of {} (100%) · ",
        thousands(total),
        thousands(head as usize),
        thousands(head as usize)
    );
    assert!(screen.contains(&progress), "{progress:?} not in:\n{screen}");
    assert_eq!(
        std::fs::read_to_string(&out)
            .expect("output")
            .lines()
            .count(),
        total
    );

    // Pretty lines on the terminal are coloured; with NO_COLOR they are not.
    let last_five = (head - 5).to_string();
    for (session, env) in [("colour", "env -u NO_COLOR"), ("plain", "env NO_COLOR=1")] {
        tmux.run(
            session,
            &format!(
                "{env} {} tail {} --once --after {last_five} --format pretty; echo \"exit=$?\"",
                quoted(Path::new(BIN)),
                served.url(),
            ),
        );
        let screen = tmux.wait_for(session, "exit=", true);
        let event_lines: Vec<&str> = screen
            .lines()
            .filter(|line| line.contains("session_updated") || line.contains("session_created"))
            .collect();
        assert_eq!(event_lines.len(), 5, "{screen}");
        let coloured = event_lines.iter().all(|line| line.contains("\x1b["));
        let plain = event_lines.iter().all(|line| !line.contains("\x1b["));
        match session {
            "colour" => assert!(coloured, "{screen:?}"),
            _ => assert!(plain, "{screen:?}"),
        }
    }
}

/// A one-connection SSE server on loopback whose frames the test sends when it wants.
struct ScriptedStream {
    addr: String,
    frames: mpsc::Sender<String>,
}

impl ScriptedStream {
    /// Accepts one connection, reads its request head, answers `200 text/event-stream` with
    /// `headers`, then writes each frame it is given.
    fn start(headers: &'static str) -> ScriptedStream {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
        let addr = listener.local_addr().expect("addr").to_string();
        let (frames, to_send) = mpsc::channel::<String>();
        std::thread::spawn(move || {
            let Ok((mut conn, _)) = listener.accept() else {
                return;
            };
            let mut head = Vec::new();
            let mut byte = [0u8; 1];
            while !head.ends_with(b"\r\n\r\n") {
                match conn.read(&mut byte) {
                    Ok(1) => head.push(byte[0]),
                    _ => return,
                }
            }
            let response =
                format!("HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\n{headers}\r\n");
            if conn.write_all(response.as_bytes()).is_err() {
                return;
            }
            for frame in to_send {
                if conn.write_all(frame.as_bytes()).is_err() {
                    return;
                }
            }
        });
        ScriptedStream { addr, frames }
    }

    fn send(&self, frame: String) {
        self.frames.send(frame).expect("the scripted server runs");
    }
}

const EPOCH: &str = "00000000000000aa";

fn change_frame(seq: u64) -> String {
    format!(
        "id: {EPOCH}:{seq}\nevent: session_created\ndata: {{\"seq\":{seq},\"projectId\":\"p1\",\
         \"sessionId\":\"s{seq}\",\"type\":\"session_created\",\"payload\":{{}},\
         \"createdAt\":\"2026-11-26T21:13:07.123Z\"}}\n\n"
    )
}

#[test]
fn the_progress_line_follows_a_replay_held_half_way() {
    let stream = ScriptedStream::start(
        "changefeed-cursor: 00000000000000aa:0\r\nchangefeed-head: 00000000000000aa:1000\r\n",
    );
    let tmux = Tmux::new("held");
    tmux.run(
        "held",
        &format!(
            "{} tail http://{} --once --after 0 > /dev/null; echo \"exit=$?\"",
            quoted(Path::new(BIN)),
            stream.addr
        ),
    );
    // Half the replay, then the server holds: the line shows where it stands.
    stream.send((1..=500).map(change_frame).collect());
    let screen = tmux.wait_for(
        "held",
        "changefeed tail: replaying 500 events · seq 500 of 1,000 (50%) · ",
        false,
    );
    assert!(screen.contains("left"), "{screen}");
    assert!(!screen.contains("exit="), "{screen}");
    // The rest, then ready: the final state stays on the screen.
    stream.send((501..=1000).map(change_frame).collect());
    stream.send(format!(
        "id: {EPOCH}:1000\nevent: changefeed.ready\ndata: {{\"after\":\"{EPOCH}:1000\",\
         \"replayed\":1000,\"heartbeatMs\":15000}}\n\n"
    ));
    let screen = tmux.wait_for("held", "exit=", false);
    assert!(screen.contains("exit=0"), "{screen}");
    assert!(
        screen.contains("changefeed tail: caught up 1,000 events · seq 1,000 of 1,000 (100%) · "),
        "{screen}"
    );
    assert!(!screen.contains("replaying"), "{screen}");
}
