//! Writers: the bench's own sqlx connection, the `sqlite3` CLI fed through a pipe (another
//! process), and Nchan's publisher endpoint. Each runs on its own thread with a current-thread
//! runtime so the load generator's tasks cannot delay its pacing.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::str::FromStr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use sqlx::sqlite::{SqliteConnectOptions, SqliteConnection, SqliteSynchronous};
use sqlx::{Connection, Executor};
use tokio::io::AsyncWriteExt;

use crate::loadgen::{payload, unix_micros, Publisher, Shared};

/// Where the writes go.
#[derive(Debug, Clone)]
pub enum Sink {
    /// The bench's own sqlx connection to the database file (not the server's process).
    Sqlx(PathBuf),
    /// The `sqlite3` command-line shell, one `INSERT` per line through its stdin.
    Sqlite3Cli(PathBuf),
    /// `POST /pub/<channel>` on Nchan.
    Nchan(SocketAddr, String),
}

/// What a writer did.
#[derive(Debug, Default)]
pub struct WriterReport {
    pub written: u64,
    pub elapsed: Duration,
    /// Per write: the time the statement (or POST) took to commit, in µs (not for the CLI).
    pub commit_micros: Vec<u32>,
}

const INSERT: &str =
    "INSERT INTO change_log (project_id, event_type, payload) VALUES ('bench', 'bench_tick', ?)";

pub async fn sqlx_connect(db: &Path) -> Result<SqliteConnection, String> {
    let options = SqliteConnectOptions::from_str(&format!("sqlite://{}", db.display()))
        .map_err(|e| e.to_string())?
        .busy_timeout(Duration::from_secs(10))
        .synchronous(SqliteSynchronous::Normal);
    SqliteConnection::connect_with(&options)
        .await
        .map_err(|e| format!("opening {}: {e}", db.display()))
}

/// Writes `count` events of `size` bytes at `rate` per second (each carrying its send time and
/// index), stopping early when `stop` is set. Runs on its own thread.
pub fn paced(
    sink: Sink,
    rate: u64,
    count: u64,
    size: usize,
    stop: Arc<AtomicBool>,
) -> std::thread::JoinHandle<Result<WriterReport, String>> {
    std::thread::spawn(move || {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| e.to_string())?;
        runtime.block_on(paced_inner(sink, rate, count, size, stop))
    })
}

async fn paced_inner(
    sink: Sink,
    rate: u64,
    count: u64,
    size: usize,
    stop: Arc<AtomicBool>,
) -> Result<WriterReport, String> {
    let period = Duration::from_secs_f64(1.0 / rate.max(1) as f64);
    let mut report = WriterReport::default();
    let start = tokio::time::Instant::now();
    // Bounded in time too: a sink slower than `rate` stops at twice the planned duration (+2 s).
    let deadline = start + period.mul_f64(count as f64 * 2.0) + Duration::from_secs(2);
    let stop = move || stop.load(Ordering::Relaxed) || tokio::time::Instant::now() > deadline;
    match sink {
        Sink::Sqlx(db) => {
            let mut conn = sqlx_connect(&db).await?;
            for i in 0..count {
                if stop() {
                    break;
                }
                tokio::time::sleep_until(start + period.mul_f64(i as f64)).await;
                let body = payload(unix_micros(), i, size);
                let before = Instant::now();
                sqlx::query(INSERT)
                    .bind(body)
                    .execute(&mut conn)
                    .await
                    .map_err(|e| format!("insert: {e}"))?;
                report
                    .commit_micros
                    .push(before.elapsed().as_micros() as u32);
                report.written += 1;
            }
            conn.close().await.ok();
        }
        Sink::Sqlite3Cli(db) => {
            let mut child = tokio::process::Command::new("sqlite3")
                .arg(&db)
                .stdin(Stdio::piped())
                .stdout(Stdio::null())
                .stderr(Stdio::piped())
                .kill_on_drop(true)
                .spawn()
                .map_err(|e| format!("starting sqlite3: {e}"))?;
            let mut stdin = child.stdin.take().ok_or("no stdin")?;
            stdin
                .write_all(b".timeout 10000\nPRAGMA synchronous=NORMAL;\n")
                .await
                .map_err(|e| e.to_string())?;
            for i in 0..count {
                if stop() {
                    break;
                }
                tokio::time::sleep_until(start + period.mul_f64(i as f64)).await;
                let line = format!(
                    "INSERT INTO change_log (project_id, event_type, payload) VALUES ('bench', 'bench_tick', '{}');\n",
                    payload(unix_micros(), i, size)
                );
                let write = async {
                    stdin.write_all(line.as_bytes()).await?;
                    stdin.flush().await
                };
                tokio::time::timeout(Duration::from_secs(10), write)
                    .await
                    .map_err(|_| "sqlite3 stopped reading its input for 10 s".to_string())?
                    .map_err(|e| format!("sqlite3 stdin: {e}"))?;
                report.written += 1;
            }
            drop(stdin);
            let out = tokio::time::timeout(Duration::from_secs(30), child.wait_with_output())
                .await
                .map_err(|_| "sqlite3 did not finish within 30 s".to_string())?
                .map_err(|e| e.to_string())?;
            if !out.status.success() || !out.stderr.is_empty() {
                return Err(format!(
                    "sqlite3 failed ({}): {}",
                    out.status,
                    String::from_utf8_lossy(&out.stderr).trim()
                ));
            }
        }
        Sink::Nchan(addr, channel) => {
            let mut publisher = Publisher::connect(addr, &format!("/pub/{channel}"))
                .await
                .map_err(|e| format!("nchan publisher: {e}"))?;
            for i in 0..count {
                if stop() {
                    break;
                }
                tokio::time::sleep_until(start + period.mul_f64(i as f64)).await;
                let body = payload(unix_micros(), i, size);
                let before = Instant::now();
                publisher
                    .publish(&body)
                    .await
                    .map_err(|e| format!("publish: {e}"))?;
                report
                    .commit_micros
                    .push(before.elapsed().as_micros() as u32);
                report.written += 1;
            }
        }
    }
    report.elapsed = start.elapsed();
    Ok(report)
}

/// Writes as fast as the subscribers keep up: never more than `window` events ahead of the
/// average subscriber (`shared.events / subscribers`), until `duration` is over. sqlx writes go
/// in transactions of 100 rows; Nchan gets `BENCH_NCHAN_PUBLISHERS` (default 1, like the single SQLite writer;
/// more were slower on 2 cores) concurrent
/// keep-alive POSTers.
pub fn flow_controlled(
    sink: Sink,
    shared: Arc<Shared>,
    subscribers: u64,
    window: u64,
    duration: Duration,
    size: usize,
) -> std::thread::JoinHandle<Result<WriterReport, String>> {
    std::thread::spawn(move || {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| e.to_string())?;
        runtime.block_on(async move {
            let start = Instant::now();
            let written = std::cell::Cell::new(0u64);
            let behind = |written: u64| {
                written.saturating_sub(shared.events.load(Ordering::Relaxed) / subscribers.max(1))
                    >= window
            };
            match sink {
                Sink::Sqlx(db) => {
                    let batch = 100u64;
                    let mut conn = sqlx_connect(&db).await?;
                    while start.elapsed() < duration {
                        if behind(written.get() + batch) {
                            tokio::time::sleep(Duration::from_micros(200)).await;
                            continue;
                        }
                        let mut tx = conn.begin().await.map_err(|e| e.to_string())?;
                        for _ in 0..batch {
                            let body = payload(unix_micros(), written.get(), size);
                            tx.execute(sqlx::query(INSERT).bind(body))
                                .await
                                .map_err(|e| format!("insert: {e}"))?;
                            written.set(written.get() + 1);
                        }
                        tx.commit().await.map_err(|e| e.to_string())?;
                    }
                }
                Sink::Nchan(addr, channel) => {
                    let publishers: usize = std::env::var("BENCH_NCHAN_PUBLISHERS")
                        .ok()
                        .and_then(|v| v.parse().ok())
                        .unwrap_or(1)
                        .max(1);
                    let mut tasks = Vec::new();
                    for _ in 0..publishers {
                        let mut publisher = Publisher::connect(addr, &format!("/pub/{channel}"))
                            .await
                            .map_err(|e| format!("nchan publisher: {e}"))?;
                        let written = &written;
                        let behind = &behind;
                        tasks.push(async move {
                            while start.elapsed() < duration {
                                if behind(written.get() + 1) {
                                    tokio::time::sleep(Duration::from_micros(200)).await;
                                    continue;
                                }
                                let i = written.get();
                                written.set(i + 1);
                                publisher
                                    .publish(&payload(unix_micros(), i, size))
                                    .await
                                    .map_err(|e| format!("publish: {e}"))?;
                            }
                            Ok::<(), String>(())
                        });
                    }
                    for result in futures_util::future::join_all(tasks).await {
                        result?;
                    }
                }
                Sink::Sqlite3Cli(_) => return Err("not supported for fan-out".into()),
            }
            Ok(WriterReport {
                written: written.get(),
                elapsed: start.elapsed(),
                commit_micros: Vec::new(),
            })
        })
    })
}

/// Fills the change log with `rows` rows of ~`size`-byte payloads, in transactions of 100k rows
/// (one `INSERT ... SELECT` over a recursive CTE each).
pub async fn bulk_fill(db: &Path, rows: u64, size: usize) -> Result<(), String> {
    let mut conn = sqlx_connect(db).await?;
    let pad = size.saturating_sub(r#"{"t":0,"i":1000000,"pad":""}"#.len());
    let mut done = 0u64;
    while done < rows {
        let n = (rows - done).min(100_000);
        let sql = format!(
            "INSERT INTO change_log (project_id, event_type, payload) \
             WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c WHERE x < {n}) \
             SELECT 'bench', 'bench_tick', json_object('t', 0, 'i', {done} + x, 'pad', printf('%.*c', {pad}, 'x')) FROM c"
        );
        let mut tx = conn.begin().await.map_err(|e| e.to_string())?;
        tx.execute(sql.as_str())
            .await
            .map_err(|e| format!("bulk insert: {e}"))?;
        tx.commit().await.map_err(|e| e.to_string())?;
        done += n;
    }
    conn.close().await.ok();
    Ok(())
}
