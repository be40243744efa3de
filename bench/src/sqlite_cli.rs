//! The `sqlite3` command-line shell as a peer and as a writer in another process: its own scan
//! and print of the change log (the storage limit a replay is measured against), and paced
//! commits whose latency the bench times across the pipe.

use std::io::{BufRead, BufReader, Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::loadgen::{payload, unix_micros};
use crate::writers::WriterReport;

/// The columns a replay reads, in the store's order.
const COLUMNS: &str = "seq, project_id, session_id, event_type, payload, created_at";

/// What one scan did.
#[derive(Debug, Clone, Copy)]
pub struct Scan {
    pub rows: u64,
    pub elapsed: Duration,
}

/// `sqlite3 -readonly DB "SELECT <the replay's columns> FROM change_log ORDER BY seq"`, its
/// output (one line per row, `|`-separated, the shell's default) read to the end by the bench
/// and its lines counted: the time from starting the process to the end of its output.
pub fn scan(db: &Path) -> Result<Scan, String> {
    let start = Instant::now();
    let mut child = Command::new("sqlite3")
        .arg("-readonly")
        .arg(db)
        .arg(format!("SELECT {COLUMNS} FROM change_log ORDER BY seq"))
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("starting sqlite3: {e}"))?;
    let mut stdout = child.stdout.take().ok_or("no stdout")?;
    let mut buf = vec![0u8; 256 * 1024];
    let mut rows = 0u64;
    loop {
        let n = stdout
            .read(&mut buf)
            .map_err(|e| format!("sqlite3 stdout: {e}"))?;
        if n == 0 {
            break;
        }
        rows += buf[..n].iter().filter(|&&b| b == b'\n').count() as u64;
    }
    let out = child.wait_with_output().map_err(|e| e.to_string())?;
    let elapsed = start.elapsed();
    if !out.status.success() || !out.stderr.is_empty() {
        return Err(format!(
            "sqlite3 scan failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        ));
    }
    Ok(Scan { rows, elapsed })
}

/// Writes `count` rows at `rate` per second through one `sqlite3` process (until `stop`), each
/// `INSERT` followed by `SELECT 1;`: the shell answers `1` once the insert committed, so the
/// time from writing the line to reading the answer is the commit latency as another process
/// sees it (plus a pipe round trip, a few µs). The shell runs with `.timeout 10000` and
/// `synchronous=NORMAL`, like the bench's own sqlx writer.
pub fn paced(
    db: PathBuf,
    work: PathBuf,
    rate: u64,
    count: u64,
    size: usize,
    stop: Arc<AtomicBool>,
) -> std::thread::JoinHandle<Result<WriterReport, String>> {
    std::thread::spawn(move || {
        let mut child = Command::new("sqlite3")
            .arg(&db)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| format!("starting sqlite3: {e}"))?;
        crate::procs::record_pid(&work, child.id());
        let result = write_paced(&mut child, rate, count, size, &stop);
        let out = child.wait_with_output().map_err(|e| e.to_string())?;
        let report = result?;
        if !out.status.success() || !out.stderr.is_empty() {
            return Err(format!(
                "sqlite3 writer failed ({}): {}",
                out.status,
                String::from_utf8_lossy(&out.stderr).trim()
            ));
        }
        Ok(report)
    })
}

/// The pacing loop of [`paced`] on a started `sqlite3` process.
fn write_paced(
    child: &mut std::process::Child,
    rate: u64,
    count: u64,
    size: usize,
    stop: &AtomicBool,
) -> Result<WriterReport, String> {
    let mut stdin = child.stdin.take().ok_or("no stdin")?;
    let mut stdout = BufReader::new(child.stdout.take().ok_or("no stdout")?);
    let io = |e: std::io::Error| format!("sqlite3 pipe: {e}");
    stdin
        .write_all(b".timeout 10000\nPRAGMA synchronous=NORMAL;\n")
        .map_err(io)?;
    let period = Duration::from_secs_f64(1.0 / rate.max(1) as f64);
    let mut report = WriterReport::default();
    let start = Instant::now();
    let mut line = String::new();
    for i in 0..count {
        if stop.load(Ordering::Relaxed) {
            break;
        }
        let due = start + period.mul_f64(i as f64);
        if let Some(wait) = due.checked_duration_since(Instant::now()) {
            std::thread::sleep(wait);
        }
        let statement = format!(
                "INSERT INTO change_log (project_id, event_type, payload) VALUES ('bench', 'bench_tick', '{}'); SELECT 1;\n",
                payload(unix_micros(), i, size)
            );
        let before = Instant::now();
        stdin.write_all(statement.as_bytes()).map_err(io)?;
        stdin.flush().map_err(io)?;
        line.clear();
        if stdout.read_line(&mut line).map_err(io)? == 0 {
            return Err("sqlite3 ended its output early".to_string());
        }
        report
            .commit_micros
            .push(before.elapsed().as_micros().min(u32::MAX as u128) as u32);
        if line.trim() != "1" {
            return Err(format!("sqlite3 answered {:?}", line.trim()));
        }
        report.written += 1;
    }
    report.elapsed = start.elapsed();
    drop(stdin);
    Ok(report)
}
