//! Proves stateless replicas over one Postgres with real `changefeed serve` processes: eight concurrent writers, three replicas each running a sequencer, a client that moves from a killed replica to another with its Last-Event-ID and misses nothing, every replica (one restarted) replaying the same log byte for byte; live clients ride out a Postgres restart with no gap; an unreachable Postgres at start is one line naming the URL without its password, and exit code 1.

#[path = "../../tests/src/pg.rs"]
#[allow(dead_code)]
mod pg;

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use changefeed_client::{Client, ClientConfig, ClientItem, TcpConnector};
use sqlx::{Connection, PgConnection};

use pg::TestDb;

/// A failure bound only: every wait returns as soon as its condition holds.
const BOUND: Duration = Duration::from_secs(60);

/// One `changefeed serve` process; killed (SIGKILL) when dropped.
struct Replica {
    child: Child,
    addr: SocketAddr,
}

impl Replica {
    /// Starts a replica of `database` on an ephemeral port and waits for it to serve.
    fn start(database: &str) -> Replica {
        let mut child = Command::new(env!("CARGO_BIN_EXE_changefeed"))
            .args(["serve", "--database", database, "--listen", "127.0.0.1:0"])
            .env("RUST_LOG", "info")
            .env_remove("DATABASE_URL")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start changefeed serve");
        let stderr = child.stderr.take().unwrap();
        let log = Arc::new(Mutex::new(String::new()));
        let (addr_tx, addr_rx) = std::sync::mpsc::channel();
        {
            let log = log.clone();
            std::thread::spawn(move || {
                for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                    if line.contains("changefeed serving") {
                        let addr = line
                            .split("listen=")
                            .nth(1)
                            .and_then(|rest| rest.split_whitespace().next())
                            .and_then(|addr| addr.parse::<SocketAddr>().ok());
                        let _ = addr_tx.send(addr);
                    }
                    let mut log = log.lock().unwrap();
                    log.push_str(&line);
                    log.push('\n');
                }
            });
        }
        let addr = addr_rx
            .recv_timeout(BOUND)
            .ok()
            .flatten()
            .unwrap_or_else(|| panic!("the replica did not start: {}", log.lock().unwrap()));
        Replica { child, addr }
    }

    fn events_url(&self, query: &str) -> String {
        format!("http://{}/api/v1/events{query}", self.addr)
    }

    fn kill(mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Replica {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A change as a client received it.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Received {
    id: String,
    kind: String,
    data: String,
    seq: u64,
}

fn client(url: String, last_event_id: Option<String>) -> Client<TcpConnector> {
    let mut config = ClientConfig::new(url).unwrap();
    config.last_event_id = last_event_id;
    config.read_timeout = Some(Duration::from_secs(30));
    Client::new(config, TcpConnector)
}

/// Reads `client` until `until` says stop (checked after every change), bounded by [`BOUND`].
async fn read_changes(
    client: &mut Client<TcpConnector>,
    into: &mut Vec<Received>,
    mut until: impl FnMut(&[Received]) -> bool,
) {
    let read = async {
        while !until(into) {
            match client.next().await {
                Some(Ok(ClientItem::Event(event))) => into.push(Received {
                    seq: event.seq.expect("a change has a seq"),
                    id: event.id,
                    kind: event.kind,
                    data: event.data,
                }),
                Some(Ok(ClientItem::Reset { reason, .. })) => panic!("unexpected reset: {reason}"),
                Some(Ok(_)) => {}
                Some(Err(error)) => panic!("the client gave up: {error}"),
                None => panic!("the client ended"),
            }
        }
    };
    tokio::time::timeout(BOUND, read)
        .await
        .unwrap_or_else(|_| panic!("stuck after {} changes", into.len()));
}

/// Eight writers with random delays inside their transactions (some rolled back) until `stop`.
fn start_writers(url: &str, stop: Arc<AtomicBool>, seed: u64) -> Vec<tokio::task::JoinHandle<()>> {
    (0..8u64)
        .map(|writer| {
            let url = url.to_owned();
            let stop = stop.clone();
            tokio::spawn(async move {
                let mut rng = fastrand::Rng::with_seed(seed ^ (writer << 32));
                let mut connection = connect_retrying(&url).await;
                let mut n = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    let result: Result<(), sqlx::Error> = async {
                        let mut tx = connection.begin().await?;
                        for _ in 0..1 + rng.usize(0..3) {
                            n += 1;
                            sqlx::query("INSERT INTO sessions (id, project_id) VALUES ($1, 'p')")
                                .bind(format!("w{writer}-{n}"))
                                .execute(&mut *tx)
                                .await?;
                            tokio::time::sleep(Duration::from_micros(rng.u64(0..2000))).await;
                        }
                        if rng.u8(0..10) == 0 {
                            tx.rollback().await
                        } else {
                            tx.commit().await
                        }
                    }
                    .await;
                    if result.is_err() {
                        // Postgres restarting: reconnect and go on.
                        connection = connect_retrying(&url).await;
                    }
                    tokio::time::sleep(Duration::from_micros(rng.u64(0..3000))).await;
                }
            })
        })
        .collect()
}

async fn connect_retrying(url: &str) -> PgConnection {
    let connect = async {
        loop {
            match PgConnection::connect(url).await {
                Ok(connection) => return connection,
                Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
            }
        }
    };
    tokio::time::timeout(BOUND, connect)
        .await
        .expect("Postgres reachable again")
}

/// Waits until every committed row has a seq; returns head.
async fn settled_head(url: &str) -> u64 {
    let mut connection = connect_retrying(url).await;
    let wait = async {
        loop {
            let (pending, head): (i64, i64) = sqlx::query_as(
                "SELECT (SELECT count(*) FROM change_log WHERE seq IS NULL), \
                        (SELECT head FROM changefeed_sequencer)",
            )
            .fetch_one(&mut connection)
            .await
            .unwrap();
            if pending == 0 {
                return head as u64;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    };
    tokio::time::timeout(BOUND, wait)
        .await
        .expect("every row assigned")
}

fn assert_dense(received: &[Received], head: u64) {
    let seqs: Vec<u64> = received.iter().map(|r| r.seq).collect();
    let expected: Vec<u64> = (1..=head).collect();
    if seqs != expected {
        let missing: Vec<u64> = expected
            .iter()
            .filter(|s| !seqs.contains(s))
            .copied()
            .collect();
        panic!(
            "expected seqs 1..={head} once each in order; got {} changes, missing {missing:?}",
            seqs.len()
        );
    }
}

fn seed() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|elapsed| elapsed.as_nanos() as u64)
        .unwrap_or(1)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_client_moves_from_a_killed_replica_and_every_replica_replays_the_same_log() {
    let Some(db) = TestDb::create().await else {
        return;
    };
    let a = Replica::start(&db.url);
    let b = Replica::start(&db.url);
    let c = Replica::start(&db.url);
    db.execute("INSERT INTO projects (id, name) VALUES ('p', 'P')")
        .await;
    let seed = seed();
    eprintln!("writer seed {seed}");
    let stop = Arc::new(AtomicBool::new(false));
    let writers = start_writers(&db.url, stop.clone(), seed);

    // A client on A from the start of the log; A dies under it.
    let mut received = Vec::new();
    let mut on_a = client(a.events_url("?after=0"), None);
    read_changes(&mut on_a, &mut received, |seen| seen.len() >= 150).await;
    let cursor = on_a.last_cursor().expect("a cursor").to_owned();
    a.kill();
    drop(on_a);

    // It moves to B with its Last-Event-ID, while the writers go on.
    let mut on_b = client(b.events_url(""), Some(cursor));
    read_changes(&mut on_b, &mut received, |seen| seen.len() >= 300).await;
    stop.store(true, Ordering::Relaxed);
    for writer in writers {
        writer.await.unwrap();
    }
    let head = settled_head(&db.url).await;
    read_changes(&mut on_b, &mut received, |seen| {
        seen.last().is_some_and(|last| last.seq >= head)
    })
    .await;
    assert_dense(&received, head);

    // Every replica, including A restarted, replays the same log, byte for byte.
    let a_again = Replica::start(&db.url);
    for replica in [&b, &c, &a_again] {
        let mut replay = Vec::new();
        let mut from_zero = client(replica.events_url("?after=0"), None);
        read_changes(&mut from_zero, &mut replay, |seen| {
            seen.last().is_some_and(|last| last.seq >= head)
        })
        .await;
        assert_eq!(replay.len(), received.len());
        for (replayed, live) in replay.iter().zip(&received) {
            assert_eq!(replayed, live, "replica {} differs", replica.addr);
        }
    }
}

/// A cluster of this test's own (it is restarted), from the project's script.
struct OwnCluster {
    dir: String,
    url: String,
}

impl OwnCluster {
    fn script() -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../scripts/postgres.sh")
    }

    fn start() -> OwnCluster {
        let output = Command::new(Self::script())
            .arg("start")
            .output()
            .expect("scripts/postgres.sh runs");
        assert!(
            output.status.success(),
            "scripts/postgres.sh start: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        let text = String::from_utf8_lossy(&output.stdout);
        let value = |key: &str| {
            text.lines()
                .find_map(|line| line.strip_prefix(&format!("export {key}=")))
                .unwrap_or_else(|| panic!("no {key} in {text}"))
                .to_owned()
        };
        OwnCluster {
            dir: value("PGTMP"),
            url: value("DATABASE_URL"),
        }
    }

    fn restart(&self) {
        let status = Command::new(Self::script())
            .args(["restart", &self.dir])
            .status()
            .expect("scripts/postgres.sh runs");
        assert!(status.success(), "scripts/postgres.sh restart");
    }
}

impl Drop for OwnCluster {
    fn drop(&mut self) {
        let _ = Command::new(Self::script())
            .args(["stop", &self.dir])
            .status();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn live_clients_ride_out_a_postgres_restart_with_no_gap() {
    // Runs where the other Postgres tests run (it starts a cluster of its own, to restart it).
    if pg::admin_url().is_none() {
        return;
    }
    let cluster = OwnCluster::start();
    let a = Replica::start(&cluster.url);
    let b = Replica::start(&cluster.url);
    let mut setup = connect_retrying(&cluster.url).await;
    sqlx::raw_sql("INSERT INTO projects (id, name) VALUES ('p', 'P')")
        .execute(&mut setup)
        .await
        .unwrap();
    let started = postmaster_start(&mut setup).await;
    drop(setup);
    let seed = seed();
    eprintln!("writer seed {seed}");
    let stop = Arc::new(AtomicBool::new(false));
    let writers = start_writers(&cluster.url, stop.clone(), seed);
    let mut received = Vec::new();
    let mut on_a = client(a.events_url("?after=0"), None);
    let mut on_b = client(b.events_url("?after=0"), None);
    let mut received_b = Vec::new();
    read_changes(&mut on_a, &mut received, |seen| seen.len() >= 100).await;

    cluster.restart();

    // Rows written after the restart reach both live clients.
    let mut after_restart = connect_retrying(&cluster.url).await;
    assert_ne!(
        postmaster_start(&mut after_restart).await,
        started,
        "Postgres restarted"
    );
    let head_at_restart: i64 = sqlx::query_scalar("SELECT head FROM changefeed_sequencer")
        .fetch_one(&mut after_restart)
        .await
        .unwrap();
    let target = head_at_restart as u64 + 100;
    read_changes(&mut on_a, &mut received, |seen| {
        seen.last().is_some_and(|last| last.seq >= target)
    })
    .await;
    stop.store(true, Ordering::Relaxed);
    for writer in writers {
        writer.await.unwrap();
    }
    let head = settled_head(&cluster.url).await;
    for (client, received) in [(&mut on_a, &mut received), (&mut on_b, &mut received_b)] {
        read_changes(client, received, |seen| {
            seen.last().is_some_and(|last| last.seq >= head)
        })
        .await;
        assert_dense(received, head);
    }
    assert_eq!(received, received_b);
}

async fn postmaster_start(connection: &mut PgConnection) -> String {
    sqlx::query_scalar("SELECT pg_postmaster_start_time()::text")
        .fetch_one(connection)
        .await
        .unwrap()
}

#[test]
fn an_unreachable_postgres_at_start_is_one_line_without_the_password_and_exit_code_1() {
    let output = Command::new(env!("CARGO_BIN_EXE_changefeed"))
        .args([
            "serve",
            "--database",
            "postgres://app:hunter2@127.0.0.1:9/feed",
            "--listen",
            "127.0.0.1:0",
        ])
        .env_remove("DATABASE_URL")
        .output()
        .expect("run changefeed");
    assert_eq!(output.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&output.stderr);
    let line = stderr
        .lines()
        .find(|line| line.starts_with("changefeed: "))
        .unwrap_or_else(|| panic!("no error line in {stderr}"));
    assert!(
        line.contains("postgres://app:***@127.0.0.1:9/feed"),
        "{line}"
    );
    assert!(!stderr.contains("hunter2"), "{stderr}");
}
