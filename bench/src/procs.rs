//! Processes the bench starts or measures: the changefeed server, Nchan's nginx workers, and
//! `/proc` readings (CPU ticks, resident memory).

use std::fs;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

/// Clock ticks per second of `/proc/<pid>/stat`'s utime and stime.
pub fn clock_ticks() -> f64 {
    static TICKS: OnceLock<f64> = OnceLock::new();
    *TICKS.get_or_init(|| {
        Command::new("getconf")
            .arg("CLK_TCK")
            .output()
            .ok()
            .and_then(|out| String::from_utf8(out.stdout).ok())
            .and_then(|s| s.trim().parse().ok())
            .unwrap_or(100.0)
    })
}

/// utime + stime of a process (all its threads), in ticks; `None` if it is gone.
pub fn cpu_ticks(pid: &str) -> Option<u64> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name may hold spaces and parentheses; the fields follow the last ')'.
    let rest = &stat[stat.rfind(')')? + 2..];
    let fields: Vec<&str> = rest.split(' ').collect();
    // Fields 14 and 15 of the whole line are the 12th and 13th after the name.
    Some(fields.get(11)?.parse::<u64>().ok()? + fields.get(12)?.parse::<u64>().ok()?)
}

/// Sum of [`cpu_ticks`] over `pids`.
pub fn cpu_ticks_sum(pids: &[u32]) -> u64 {
    pids.iter()
        .filter_map(|pid| cpu_ticks(&pid.to_string()))
        .sum()
}

/// Resident memory of a process in KiB (`VmRSS`).
pub fn rss_kib(pid: u32) -> Option<u64> {
    let status = fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|line| line.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
}

/// The machine's (busy, total) CPU ticks over all cores, from `/proc/stat`.
pub fn machine_ticks() -> (u64, u64) {
    let stat = fs::read_to_string("/proc/stat").unwrap_or_default();
    let Some(line) = stat.lines().next() else {
        return (0, 0);
    };
    let fields: Vec<u64> = line
        .split_whitespace()
        .skip(1)
        .filter_map(|f| f.parse().ok())
        .collect();
    let total: u64 = fields.iter().take(8).sum();
    // idle + iowait
    let idle = fields.get(3).copied().unwrap_or(0) + fields.get(4).copied().unwrap_or(0);
    (total - idle, total)
}

/// Busy share of all cores between two [`machine_ticks`] readings, in percent.
pub fn machine_busy(before: (u64, u64), after: (u64, u64)) -> f64 {
    let busy = after.0.saturating_sub(before.0) as f64;
    let total = after.1.saturating_sub(before.1) as f64;
    if total == 0.0 {
        f64::NAN
    } else {
        busy / total * 100.0
    }
}

/// CPU use between two readings, in percent of one core.
pub fn cpu_percent(ticks: u64, elapsed: Duration) -> f64 {
    ticks as f64 / clock_ticks() / elapsed.as_secs_f64().max(1e-9) * 100.0
}

/// The processes whose parent is `parent`.
pub fn children(parent: u32) -> Vec<u32> {
    let mut found = Vec::new();
    let Ok(entries) = fs::read_dir("/proc") else {
        return found;
    };
    for entry in entries.flatten() {
        let name = entry.file_name();
        let Some(pid) = name.to_str().and_then(|s| s.parse::<u32>().ok()) else {
            continue;
        };
        let Ok(stat) = fs::read_to_string(entry.path().join("stat")) else {
            continue;
        };
        let Some(close) = stat.rfind(')') else {
            continue;
        };
        let ppid = stat[close + 2..]
            .split(' ')
            .nth(1)
            .and_then(|s| s.parse::<u32>().ok());
        if ppid == Some(parent) {
            found.push(pid);
        }
    }
    found
}

/// A free loopback port (bound and released; good enough for a bench run).
pub fn free_port() -> std::io::Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

/// One blocking HTTP GET; returns the status code.
pub fn http_status(addr: SocketAddr, path: &str) -> Option<u16> {
    let mut stream = TcpStream::connect_timeout(&addr, Duration::from_millis(500)).ok()?;
    stream.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )
    .ok()?;
    let mut head = [0u8; 64];
    let n = stream.read(&mut head).ok()?;
    let text = String::from_utf8_lossy(&head[..n]);
    text.split(' ').nth(1)?.parse().ok()
}

/// One blocking HTTP GET, read to the end (`Connection: close`); returns the whole response.
pub fn http_get(addr: SocketAddr, path: &str) -> Option<String> {
    let mut stream = TcpStream::connect_timeout(&addr, Duration::from_millis(500)).ok()?;
    stream.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )
    .ok()?;
    let mut text = String::new();
    stream.read_to_string(&mut text).ok()?;
    Some(text)
}

/// The value of an unlabelled Prometheus sample `name` in a `/metrics` answer.
pub fn metric(text: &str, name: &str) -> Option<f64> {
    text.lines().find_map(|line| {
        let rest = line.strip_prefix(name)?.strip_prefix(' ')?;
        rest.trim().parse().ok()
    })
}

/// Appends a child pid to the work directory's `pids` file, which `scripts/bench.sh` kills on
/// exit in case the bench itself dies without cleaning up.
pub fn record_pid(work: &Path, pid: u32) {
    if let Ok(mut file) = fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(work.join("pids"))
    {
        let _ = writeln!(file, "{pid}");
    }
}

/// A `changefeed serve` process on a loopback port; killed on drop.
pub struct Server {
    child: Child,
    /// `perf record` attached to the server when `BENCH_PERF=1`.
    perf: Option<Child>,
    pub addr: SocketAddr,
    pub log: PathBuf,
}

impl Server {
    /// Starts `bin serve --database sqlite://DB --listen 127.0.0.1:PORT` and waits (at most
    /// 30 s) for `GET /healthz` to answer 200.
    pub fn start(bin: &Path, db: &Path, work: &Path, name: &str) -> Result<Server, String> {
        let port = free_port().map_err(|e| format!("no free port: {e}"))?;
        let addr: SocketAddr = ([127, 0, 0, 1], port).into();
        let log = work.join(format!("server-{name}.log"));
        let out = fs::File::create(&log).map_err(|e| format!("{}: {e}", log.display()))?;
        let err = out.try_clone().map_err(|e| e.to_string())?;
        let mut command = Command::new(bin);
        command
            .arg("serve")
            .arg("--database")
            .arg(format!("sqlite://{}", db.display()))
            .arg("--listen")
            .arg(addr.to_string());
        if let Ok(extra) = std::env::var("BENCH_SERVER_ARGS") {
            command.args(extra.split_whitespace());
        }
        let child = command
            .env(
                "RUST_LOG",
                std::env::var("BENCH_SERVER_LOG").unwrap_or("warn".into()),
            )
            .stdin(Stdio::null())
            .stdout(Stdio::from(out))
            .stderr(Stdio::from(err))
            .spawn()
            .map_err(|e| format!("starting {}: {e}", bin.display()))?;
        record_pid(work, child.id());
        let mut server = Server {
            child,
            perf: None,
            addr,
            log,
        };
        let start = Instant::now();
        loop {
            if let Ok(Some(status)) = server.child.try_wait() {
                return Err(format!(
                    "`changefeed serve` exited with {status}: {}",
                    tail(&server.log)
                ));
            }
            if http_status(addr, "/healthz") == Some(200) {
                if std::env::var("BENCH_PERF").is_ok_and(|v| v == "1") {
                    server.perf = start_perf(server.child.id(), work, name);
                }
                return Ok(server);
            }
            if start.elapsed() > Duration::from_secs(30) {
                return Err(format!(
                    "`changefeed serve` did not answer /healthz within 30 s: {}",
                    tail(&server.log)
                ));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }
}

/// `perf record -g` on `pid` (software clock, so it works without hardware counters), writing
/// `WORK/perf-NAME.data`.
fn start_perf(pid: u32, work: &Path, name: &str) -> Option<Child> {
    let data = work.join(format!("perf-{name}.data"));
    let child = Command::new("perf")
        .args(["record", "-e", "cpu-clock", "-F", "999", "-g", "-p"])
        .arg(pid.to_string())
        .arg("-o")
        .arg(&data)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .ok()?;
    record_pid(work, child.id());
    eprintln!("   profiling the server: perf report -i {}", data.display());
    Some(child)
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Some(mut perf) = self.perf.take() {
            // SIGINT lets perf write its data file.
            let _ = Command::new("kill")
                .args(["-INT", &perf.id().to_string()])
                .status();
            let _ = perf.wait();
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The last lines of a log file, on one line.
pub fn tail(path: &Path) -> String {
    let text = fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    let from = lines.len().saturating_sub(5);
    let joined = lines[from..].join(" | ");
    if joined.is_empty() {
        "(no output)".into()
    } else {
        joined
    }
}
