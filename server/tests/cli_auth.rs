//! Proves the `changefeed serve` auth flags' start-up promises with the real binary: a tokens
//! file group or others may access, a malformed one, or a short JWT secret refuse to start
//! with exit 2 and one line naming the problem (never a token); listening on a non-loopback
//! address without auth logs a warning, and with a tokens file it does not.

use std::io::{BufRead, BufReader};
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
    let (sender, lines) = mpsc::channel();
    let stderr = child.stderr.take().unwrap();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines() {
            let Ok(line) = line else { break };
            if sender.send(line).is_err() {
                break;
            }
        }
    });
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
