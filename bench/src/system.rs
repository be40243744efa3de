//! The systems under test (a fresh changefeed server per measurement, or the Nchan peer) and
//! small measuring helpers shared by the scenarios.

/// A fresh database (schema and triggers created by the server's own store code).
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use crate::loadgen::Target;
use crate::procs::{self, Server};
use crate::writers::{self, Sink};
use crate::Config;

pub async fn fresh_db(config: &Config, name: &str) -> Result<PathBuf, String> {
    let db = config.work.join(format!("{name}.db"));
    for suffix in ["", "-wal", "-shm"] {
        let _ = std::fs::remove_file(format!("{}{suffix}", db.display()));
    }
    let store = changefeed::store::sqlite::SqliteStore::open(&format!("sqlite://{}", db.display()))
        .await
        .map_err(|e| format!("creating {}: {e}", db.display()))?;
    drop(store);
    Ok(db)
}

/// The system under test for one measurement: a fresh changefeed server, or Nchan.
pub enum System {
    Changefeed {
        server: Server,
        db: PathBuf,
    },
    Nchan {
        addr: SocketAddr,
        master: u32,
        channel: String,
    },
}

impl System {
    pub async fn changefeed(config: &Config, name: &str) -> Result<System, String> {
        let db = fresh_db(config, name).await?;
        let (bin, work, n) = (
            config.server_bin.clone(),
            config.work.clone(),
            name.to_string(),
        );
        let db2 = db.clone();
        let server = tokio::task::spawn_blocking(move || Server::start(&bin, &db2, &work, &n))
            .await
            .map_err(|e| e.to_string())??;
        Ok(System::Changefeed { server, db })
    }

    pub fn nchan(config: &Config, channel: &str) -> Result<System, String> {
        let (addr, pid_file) = config.nchan.as_ref().ok_or("Nchan not available")?;
        let master = std::fs::read_to_string(pid_file)
            .map_err(|e| format!("{}: {e}", pid_file.display()))?
            .trim()
            .parse()
            .map_err(|e| format!("nginx pid: {e}"))?;
        // Fresh workers for every measurement (as changefeed gets a fresh process): a reload
        // (SIGHUP) starts new workers; the old ones exit once their connections are gone.
        // Otherwise memory freed by an earlier run is reused and hides per-stream growth.
        let old = procs::children(master);
        let status = std::process::Command::new("kill")
            .args(["-HUP", &master.to_string()])
            .status()
            .map_err(|e| format!("kill -HUP nginx: {e}"))?;
        if !status.success() {
            return Err(format!("kill -HUP {master} failed: {status}"));
        }
        let start = Instant::now();
        loop {
            let now = procs::children(master);
            if !now.is_empty() && now.iter().all(|pid| !old.contains(pid)) {
                break;
            }
            if start.elapsed() > Duration::from_secs(10) {
                return Err("nginx workers did not restart within 10 s".into());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        std::thread::sleep(Duration::from_millis(200));
        Ok(System::Nchan {
            addr: *addr,
            master,
            channel: channel.to_string(),
        })
    }

    pub fn target(&self, path: Option<&str>) -> Target {
        match self {
            System::Changefeed { server, .. } => Target {
                addr: server.addr,
                path: path.unwrap_or("/api/v1/events").to_string(),
                ready_event: true,
            },
            System::Nchan { addr, channel, .. } => Target {
                addr: *addr,
                path: format!("/sub/{channel}"),
                ready_event: false,
            },
        }
    }

    pub fn pids(&self) -> Vec<u32> {
        match self {
            System::Changefeed { server, .. } => vec![server.pid()],
            System::Nchan { master, .. } => {
                let mut pids = vec![*master];
                pids.extend(procs::children(*master));
                pids
            }
        }
    }

    /// Counters from changefeed's `/metrics` (none for Nchan).
    pub fn counters(&self) -> Counters {
        let System::Changefeed { server, .. } = self else {
            return Counters::default();
        };
        let text = procs::http_get(server.addr, "/metrics").unwrap_or_default();
        Counters {
            lag_fallbacks: procs::metric(&text, "changefeed_lag_fallbacks_total").unwrap_or(0.0),
            replayed_rows: procs::metric(&text, "changefeed_replayed_rows_total").unwrap_or(0.0),
        }
    }

    pub fn rss_kib(&self) -> u64 {
        self.pids().into_iter().filter_map(procs::rss_kib).sum()
    }

    pub fn cpu_ticks(&self) -> u64 {
        procs::cpu_ticks_sum(&self.pids())
    }

    pub fn paced_sink(&self, cli: bool) -> Sink {
        match self {
            System::Changefeed { db, .. } if cli => Sink::Sqlite3Cli(db.clone()),
            System::Changefeed { db, .. } => Sink::Sqlx(db.clone()),
            System::Nchan { addr, channel, .. } => Sink::Nchan(*addr, channel.clone()),
        }
    }
}

/// Server counters that explain a result (a lagging subscriber falls back to the database).
#[derive(Debug, Default, Clone, Copy)]
pub struct Counters {
    pub lag_fallbacks: f64,
    pub replayed_rows: f64,
}

/// CPU of this process (the load generator and writers).
pub struct SelfCpu(u64, Instant);

impl SelfCpu {
    pub fn start() -> SelfCpu {
        SelfCpu(procs::cpu_ticks("self").unwrap_or(0), Instant::now())
    }
    pub fn percent(&self) -> f64 {
        let ticks = procs::cpu_ticks("self").unwrap_or(0).saturating_sub(self.0);
        procs::cpu_percent(ticks, self.1.elapsed())
    }
}

pub fn percentile(sorted: &[u32], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1] as f64
}

pub fn join_writer(
    handle: std::thread::JoinHandle<Result<writers::WriterReport, String>>,
) -> Result<writers::WriterReport, String> {
    handle
        .join()
        .map_err(|_| "writer thread panicked".to_string())?
}

pub fn which(program: &str) -> Option<PathBuf> {
    std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|dir| dir.join(program))
            .find(|path| Path::new(path).is_file())
    })
}
