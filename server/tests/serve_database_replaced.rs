//! Proves that `changefeed serve` stops serving a database deleted under it and exits (code 1)
//! with one line saying so, so a supervisor can start it again on the new file.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::Duration;

#[test]
fn serve_exits_with_the_reason_when_its_database_is_deleted() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("served.db");
    let mut child = Command::new(env!("CARGO_BIN_EXE_changefeed"))
        .args(["serve", "--listen", "127.0.0.1:0", "--database"])
        .arg(format!("sqlite://{}", path.display()))
        .env_remove("DATABASE_URL")
        .env("RUST_LOG", "info")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run changefeed");
    let mut stderr = BufReader::new(child.stderr.take().unwrap());
    let mut seen = String::new();
    // Serving once the start-up line is logged.
    loop {
        let mut line = String::new();
        assert!(
            stderr.read_line(&mut line).unwrap() > 0,
            "exited before serving: {seen}"
        );
        seen.push_str(&line);
        if line.contains("changefeed serving") {
            break;
        }
    }
    for suffix in ["", "-wal", "-shm"] {
        let _ = std::fs::remove_file(format!("{}{suffix}", path.display()));
    }
    // The watch polls every second; the bound only fails a hung server.
    let (done_tx, done_rx) = std::sync::mpsc::channel();
    let reader = std::thread::spawn(move || {
        let mut rest = String::new();
        let _ = std::io::Read::read_to_string(&mut stderr, &mut rest);
        let _ = done_tx.send(());
        rest
    });
    if done_rx.recv_timeout(Duration::from_secs(20)).is_err() {
        let _ = child.kill();
        panic!("the server kept running on a deleted database");
    }
    let status = child.wait().unwrap();
    let rest = reader.join().unwrap();
    assert_eq!(status.code(), Some(1), "{seen}{rest}");
    let last = rest.lines().rfind(|line| line.starts_with("changefeed: "));
    let last = last.unwrap_or_else(|| panic!("no final line in {rest}"));
    assert!(
        last.contains("was deleted or moved") && last.contains("start the server again"),
        "{last}"
    );
}
