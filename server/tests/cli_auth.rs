//! Proves the `changefeed serve` auth flags' start-up promises with the real binary: a tokens
//! file group or others may access, a malformed one, or a short JWT secret refuse to start
//! with exit 2 and one line naming the problem (never a token); listening on a non-loopback
//! address without auth logs a warning, and with a tokens file it does not; a reload in the
//! running binary (SIGHUP) ends a revoked token's stream with a final checkpoint; and no token,
//! valid or not, in a header, a cookie or the query string, ever reaches the debug log.

mod support;

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

const BIN: &str = env!("CARGO_BIN_EXE_changefeed");
/// A failure bound for waits, never a pause.
const FAIL_AFTER: Duration = Duration::from_secs(30);

fn tokens_file(dir: &Path, text: &str, mode: u32) -> String {
    let path = dir.join("tokens");
    std::fs::write(&path, text).unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode)).unwrap();
    path.display().to_string()
}

/// Runs `serve` with `args` to completion; returns the exit code and stderr.
fn refused(dir: &Path, args: &[&str]) -> (Option<i32>, String) {
    let database = format!("sqlite://{}", dir.join("db").display());
    let output = Command::new(BIN)
        .args(["serve", "--database", &database, "--listen", "127.0.0.1:0"])
        .args(args)
        .stdin(Stdio::null())
        .output()
        .expect("run changefeed");
    (
        output.status.code(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

#[test]
fn a_tokens_file_others_may_access_refuses_to_start_with_exit_2() {
    let dir = tempfile::tempdir().unwrap();
    for mode in [0o644, 0o640, 0o604, 0o620] {
        let path = tokens_file(dir.path(), "s3cret-token p1\n", mode);
        let (code, stderr) = refused(dir.path(), &["--tokens", &path]);
        assert_eq!(code, Some(2), "mode {mode:o}: {stderr}");
        assert_eq!(
            stderr.trim_end(),
            format!(
                "changefeed: tokens file {path} is accessible to group or others (mode {mode:03o}); \
                 run chmod 600 on it"
            )
        );
        assert!(!dir.path().join("db").exists(), "nothing was opened");
    }
}

#[test]
fn a_malformed_tokens_file_or_a_short_secret_refuses_to_start_naming_the_problem() {
    let dir = tempfile::tempdir().unwrap();
    let path = tokens_file(dir.path(), "# ok\ns3cret-token p1, p2\n", 0o600);
    let (code, stderr) = refused(dir.path(), &["--tokens", &path]);
    assert_eq!(code, Some(2), "{stderr}");
    assert!(
        stderr.contains(&format!("tokens file {path}: line 2: more than two fields")),
        "{stderr}"
    );
    assert!(
        !stderr.contains("s3cret"),
        "a token is never printed: {stderr}"
    );
    assert_eq!(stderr.lines().count(), 1, "{stderr}");

    let (code, stderr) = refused(dir.path(), &["--jwt-secret", "short"]);
    assert_eq!(code, Some(2), "{stderr}");
    assert!(
        stderr.contains("--jwt-secret is 5 bytes; HS256 needs at least 32"),
        "{stderr}"
    );
    assert!(
        !stderr.contains("short\n") && !stderr.contains("\"short\""),
        "{stderr}"
    );

    let key = dir.path().join("key.pem");
    std::fs::write(&key, "not a key").unwrap();
    let (code, stderr) = refused(
        dir.path(),
        &["--jwt-public-key", &key.display().to_string()],
    );
    assert_eq!(code, Some(2), "{stderr}");
    assert!(
        stderr.contains("neither an RSA nor an EC P-256 public key"),
        "{stderr}"
    );
}

/// Starts `serve` with `args` and returns whether a start-up line mentioning "without auth"
/// came before the "changefeed serving" line.
fn warns_without_auth(dir: &Path, args: &[&str]) -> bool {
    let database = format!("sqlite://{}", dir.join("db").display());
    let mut child = Command::new(BIN)
        .args(["serve", "--database", &database])
        .args(args)
        .env("RUST_LOG", "info")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn changefeed");
    let lines = support::lines(child.stderr.take().unwrap());
    let mut warned = false;
    loop {
        let line = lines
            .recv_timeout(FAIL_AFTER)
            .expect("the server logs that it is serving");
        warned |= line.contains("without auth");
        if line.contains("changefeed serving") {
            break;
        }
    }
    let _ = child.kill();
    let _ = child.wait();
    warned
}

#[test]
fn a_non_loopback_listener_without_auth_warns_at_start_up() {
    let dir = tempfile::tempdir().unwrap();
    assert!(warns_without_auth(dir.path(), &["--listen", ":0"]));
    assert!(!warns_without_auth(
        dir.path(),
        &["--listen", "127.0.0.1:0"]
    ));
    let path = tokens_file(dir.path(), "tok p1\n", 0o600);
    assert!(!warns_without_auth(
        dir.path(),
        &["--listen", ":0", "--tokens", &path]
    ));
}

/// A raw HTTP/1.1 `GET` with `Connection: close`, read to the end: the status line and the
/// whole text.
fn raw_get(addr: std::net::SocketAddr, path: &str, headers: &[&str]) -> (String, String) {
    use std::io::{Read, Write};
    let mut stream = std::net::TcpStream::connect(addr).expect("connect");
    stream.set_read_timeout(Some(FAIL_AFTER)).unwrap();
    let extra: String = headers.iter().map(|h| format!("{h}\r\n")).collect();
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n{extra}\r\n"
    )
    .unwrap();
    let mut text = String::new();
    stream.read_to_string(&mut text).expect("the response ends");
    (text.lines().next().unwrap_or("").to_owned(), text)
}

/// One spawned binary with its stderr as lines.
struct Serving {
    child: std::process::Child,
    stderr: mpsc::Receiver<String>,
    log: Vec<String>,
}

impl Serving {
    fn start(args: &[&str]) -> (Serving, std::net::SocketAddr) {
        let mut child = Command::new(BIN)
            .args(args)
            .args(["--log-format", "json"])
            .env("RUST_LOG", "debug")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn changefeed");
        let stderr = support::lines(child.stderr.take().unwrap());
        let mut serving = Serving {
            child,
            stderr,
            log: Vec::new(),
        };
        let addr = serving.wait_for("changefeed serving", |json| {
            json["fields"]["listen"].as_str().unwrap().parse().unwrap()
        });
        (serving, addr)
    }

    /// Reads log lines until one whose message contains `message`.
    fn wait_for<T>(&mut self, message: &str, pick: impl Fn(&serde_json::Value) -> T) -> T {
        loop {
            let line = self
                .stderr
                .recv_timeout(FAIL_AFTER)
                .unwrap_or_else(|_| panic!("no log line saying {message:?}"));
            self.log.push(line.clone());
            let json: serde_json::Value = serde_json::from_str(&line).unwrap();
            if json["fields"]["message"]
                .as_str()
                .is_some_and(|m| m.contains(message))
            {
                return pick(&json);
            }
        }
    }

    fn stop(mut self) -> String {
        let _ = self.child.kill();
        let _ = self.child.wait();
        while let Ok(line) = self.stderr.recv_timeout(Duration::from_secs(5)) {
            self.log.push(line);
        }
        self.log.join("\n")
    }
}

#[test]
fn sighup_revokes_streams_in_the_real_binary_and_tokens_never_reach_the_log() {
    let dir = tempfile::tempdir().unwrap();
    let path = tokens_file(
        dir.path(),
        "Tok3n-alpha-sekrit p1\nTok3n-root-sekrit *\n",
        0o600,
    );
    let database = format!("sqlite://{}", dir.path().join("db").display());
    let (mut server, addr) = Serving::start(&[
        "serve",
        "--database",
        &database,
        "--listen",
        "127.0.0.1:0",
        "--tokens",
        &path,
    ]);
    // Every way a token can arrive, valid or not.
    let (status, _) = raw_get(addr, "/api/v1/events?token=Tok3n-query-sekrit", &[]);
    assert!(status.contains(" 400 "), "{status}");
    let (status, _) = raw_get(
        addr,
        "/api/v1/events",
        &["Authorization: Bearer Tok3n-wrong-sekrit"],
    );
    assert!(status.contains(" 401 "), "{status}");
    let (status, _) = raw_get(
        addr,
        "/api/v1/events?project=p9",
        &["Cookie: changefeed_token=Tok3n-alpha-sekrit"],
    );
    assert!(status.contains(" 403 "), "{status}");
    // A live stream of the token about to be revoked, read on another thread to its end.
    let stream = std::thread::spawn(move || {
        raw_get(
            addr,
            "/api/v1/events",
            &["Authorization: bearer Tok3n-alpha-sekrit"],
        )
    });
    server.wait_for("event stream opened", |_| ());
    // Revoke it: replace the file and send SIGHUP (the file watcher may reload first; either
    // reload revokes, and tests/tests/server_auth.rs proves SIGHUP alone with an unwatched file).
    let staging = dir.path().join("tokens.new");
    std::fs::write(&staging, "Tok3n-root-sekrit *\n").unwrap();
    std::fs::set_permissions(&staging, std::fs::Permissions::from_mode(0o600)).unwrap();
    std::fs::rename(&staging, &path).unwrap();
    let pid = server.child.id().to_string();
    assert!(Command::new("sh")
        .args(["-c", &format!("kill -HUP {pid}")])
        .status()
        .unwrap()
        .success());
    let (status, text) = stream.join().unwrap();
    assert!(status.contains(" 200 "), "{status}");
    // The body ends with the final checkpoint: an id-only frame, then the chunked end.
    let frames: Vec<&str> = text.split("\n\n").collect();
    let last_frame = frames[frames.len() - 2];
    let last_line = last_frame.lines().last().unwrap();
    assert!(last_line.starts_with("id: "), "{last_frame:?}");
    server.wait_for("token no longer holds", |_| ());
    let (status, _) = raw_get(
        addr,
        "/api/v1/events",
        &["Authorization: Bearer Tok3n-alpha-sekrit"],
    );
    assert!(status.contains(" 401 "), "{status}");
    let log = server.stop();
    assert!(log.contains("tokens file reloaded"), "{log}");
    assert!(!log.contains("sekrit"), "a token reached the log:\n{log}");
}

#[test]
fn tail_sends_the_token_from_the_flag_or_the_environment_and_sees_only_its_grant() {
    let dir = tempfile::tempdir().unwrap();
    let path = tokens_file(dir.path(), "Tok3n-demo1-sekrit demo-1\n", 0o600);
    let database = format!("sqlite://{}", dir.path().join("db").display());
    let (server, addr) = Serving::start(&[
        "demo",
        "--database",
        &database,
        "--listen",
        "127.0.0.1:0",
        "--tokens",
        &path,
        "--rate",
        "200",
        "--projects",
        "3",
    ]);
    // Until the demo has published 30 events (loopback reads /metrics without a token);
    // with 3 projects, demo-1 is among them but for a chance of (2/3)^30.
    let deadline = std::time::Instant::now() + FAIL_AFTER;
    loop {
        let (_, text) = raw_get(addr, "/metrics", &[]);
        let published = text
            .lines()
            .find_map(|line| line.strip_prefix("changefeed_published_seq "))
            .and_then(|value| value.trim().parse::<f64>().ok())
            .unwrap_or(0.0);
        if published >= 30.0 {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the demo published {published}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    let url = format!("http://{addr}");
    let tail = |args: &[&str], env: Option<&str>| {
        let mut command = Command::new(BIN);
        command
            .args(["tail", &url, "--once", "--after", "0"])
            .args(args)
            .env_remove("CHANGEFEED_TOKEN")
            .stdin(Stdio::null());
        if let Some(token) = env {
            command.env("CHANGEFEED_TOKEN", token);
        }
        command.output().expect("run tail")
    };
    for (args, env) in [
        (&["--token", "Tok3n-demo1-sekrit"][..], None),
        (&[][..], Some("Tok3n-demo1-sekrit")),
    ] {
        let output = tail(args, env);
        assert_eq!(
            output.status.code(),
            Some(0),
            "{}",
            String::from_utf8_lossy(&output.stderr)
        );
        let stdout = String::from_utf8(output.stdout).unwrap();
        let projects: std::collections::BTreeSet<String> = stdout
            .lines()
            .map(|line| {
                let event: serde_json::Value = serde_json::from_str(line).unwrap();
                event["projectId"].as_str().unwrap().to_owned()
            })
            .collect();
        assert_eq!(
            projects,
            ["demo-1".to_owned()].into(),
            "only the granted project, and some of it"
        );
    }
    let refused = tail(&[], None);
    assert_ne!(refused.status.code(), Some(0));
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(
        stderr.contains("401") || stderr.contains("unauthorized"),
        "{stderr}"
    );
    let log = server.stop();
    assert!(!log.contains("sekrit"), "a token reached the log:\n{log}");
}

#[test]
fn an_unusable_id_key_file_refuses_to_start_with_exit_2_naming_the_problem() {
    let dir = tempfile::tempdir().unwrap();
    let tokens = tokens_file(dir.path(), "tok p1\n", 0o600);
    let key_file = |name: &str, bytes: &[u8], mode: u32| {
        let path = dir.path().join(name);
        std::fs::write(&path, bytes).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode)).unwrap();
        path.display().to_string()
    };
    let good = key_file("good.key", &[7; 32], 0o600);
    let missing = dir.path().join("missing.key").display().to_string();
    let directory = dir.path().display().to_string();
    let short = key_file("short.key", &[7; 31], 0o600);
    let open = key_file("open.key", &[7; 32], 0o644);
    let cases: [(&[&str], String); 5] = [
        (
            &["--tokens", &tokens, "--id-key", &missing],
            format!("changefeed: id key file {missing}: No such file or directory"),
        ),
        (
            &["--tokens", &tokens, "--id-key", &directory],
            format!("changefeed: id key file {directory} is not a regular file"),
        ),
        (
            &["--tokens", &tokens, "--id-key", &short],
            format!(
                "changefeed: id key file {short}: must hold a 32-byte key, raw or as 64 hex \
                 digits, found 31 bytes that are neither (make one with: head -c 32 \
                 /dev/urandom > FILE; chmod 600 FILE)"
            ),
        ),
        (
            &["--tokens", &tokens, "--id-key", &open],
            format!(
                "changefeed: id key file {open} is accessible to group or others (mode 644); \
                 run chmod 600 on it"
            ),
        ),
        (
            &["--id-key", &good],
            "changefeed: --id-key seals ids for authenticated clients; it needs --tokens, \
             --jwt-secret or --jwt-public-key"
                .to_owned(),
        ),
    ];
    for (args, expected) in cases {
        let (code, stderr) = refused(dir.path(), args);
        assert_eq!(code, Some(2), "{args:?}: {stderr}");
        let lines: Vec<&str> = stderr.lines().collect();
        assert_eq!(lines.len(), 1, "{args:?}: one line: {stderr}");
        assert!(lines[0].starts_with(&expected), "{args:?}: {stderr}");
    }
}

#[test]
fn the_real_binary_seals_ids_with_the_key_file_and_hides_the_head() {
    let dir = tempfile::tempdir().unwrap();
    let tokens = tokens_file(dir.path(), "tok-all *\n", 0o600);
    let key: [u8; 32] = std::array::from_fn(|i| i as u8 * 7);
    let hex: String = key.iter().map(|b| format!("{b:02x}")).collect();
    let key_path = dir.path().join("id.key");
    std::fs::write(&key_path, format!("{hex}\n")).unwrap();
    std::fs::set_permissions(&key_path, std::fs::Permissions::from_mode(0o600)).unwrap();
    let database = format!("sqlite://{}", dir.path().join("db").display());
    let (server, addr) = Serving::start(&[
        "serve",
        "--database",
        &database,
        "--listen",
        "127.0.0.1:0",
        "--tokens",
        &tokens,
        "--id-key",
        &key_path.display().to_string(),
        "--max-stream-secs",
        "1",
    ]);
    let (status, text) = raw_get(
        addr,
        "/api/v1/events?after=0",
        &["Authorization: Bearer tok-all"],
    );
    assert!(status.contains(" 200 "), "{status}");
    let head = text.split("\r\n\r\n").next().unwrap().to_ascii_lowercase();
    assert!(!head.contains("changefeed-head:"), "{head}");
    let cursor = head
        .lines()
        .find_map(|line| line.strip_prefix("changefeed-cursor: "))
        .unwrap_or_else(|| panic!("no Changefeed-Cursor in {head}"));
    // The header was lower-cased above; find the id in the body as sent.
    let id = text
        .lines()
        .find_map(|line| line.strip_prefix("id: "))
        .expect("a first frame with an id");
    assert_eq!(id.to_ascii_lowercase(), cursor);
    let opened = changefeed_core::IdKey::from_bytes(key).open(id);
    assert!(
        matches!(opened, Some((_, changefeed_core::Seq(0), _))),
        "{id}: {opened:?}"
    );
    let log = server.stop();
    assert!(!log.contains("without --id-key"), "{log}");
}
