//! The `changefeed` command line: `serve`, `demo`, `tail` and `contract-service` (clap derive;
//! add a subcommand by adding a variant to [`Command`] and an arm to [`run`]).
//!
//! Every failure is one line on stderr and a non-zero exit: 2 for usage errors (bad flags, an
//! unsupported database URL), 1 for runtime failures (database cannot be opened, address in
//! use). Never a panic or a backtrace.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::process::ExitCode;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};

use crate::broadcast::DEFAULT_CAPACITY;
use crate::client::{run_tail, TailArgs, TailError};
use crate::demo::{self, DemoConfig, DemoTarget};
use crate::http::{AppState, ServerConfig};
use crate::shutdown;
use crate::store::postgres::{redact_url, PostgresStore, PostgresStoreOptions, SequencerConfig};
use crate::store::sqlite::SqliteStore;
use crate::store::{Retention, Store};

/// Streams a SQLite or Postgres change_log to HTTP clients as Server-Sent Events, with exact
/// resume.
#[derive(Debug, Parser)]
#[command(name = "changefeed", version, arg_required_else_help = true)]
pub struct Cli {
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// The subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Serve GET /api/v1/events (SSE), /healthz and /metrics from a database.
    Serve(ServeArgs),
    /// Serve, and write realistic demo activity into the same database.
    Demo(DemoArgs),
    /// Print a changefeed stream, one line per event, resumable through a cursor file.
    Tail(TailArgs),
    /// Run the client under the SSE contract-test harness's service protocol.
    ContractService(ContractServiceArgs),
}

/// Flags of `changefeed contract-service`.
#[derive(Debug, Clone, Args)]
pub struct ContractServiceArgs {
    /// The port to listen on (127.0.0.1).
    #[arg(long, value_name = "N")]
    pub port: u16,
}

/// Flags of `changefeed serve` (and `demo`).
#[derive(Debug, Clone, Args)]
pub struct ServeArgs {
    /// The database to serve: `sqlite://PATH` (created if missing) or
    /// `postgres://USER:PASSWORD@HOST:PORT/DB` (several replicas may serve one Postgres database).
    #[arg(
        long,
        env = "DATABASE_URL",
        default_value = "sqlite://changefeed.db",
        value_name = "URL"
    )]
    pub database: String,

    /// The address to listen on.
    #[arg(long, default_value = "127.0.0.1:7467", value_name = "ADDR")]
    pub listen: SocketAddr,

    /// Seconds of silence after which a stream gets a heartbeat (a comment, or an id-only
    /// checkpoint when it moved past events it was not shown).
    #[arg(long, default_value = "15", value_name = "SECS", value_parser = parse_seconds)]
    pub heartbeat: Duration,

    /// The reconnection delay told to clients (`retry:`), in milliseconds.
    #[arg(long, default_value_t = 1000, value_name = "N")]
    pub retry_ms: u64,

    /// End each stream after this many seconds (with a final checkpoint; clients reconnect
    /// and resume). Unlimited when absent.
    #[arg(long, value_name = "N", value_parser = parse_seconds)]
    pub max_stream_secs: Option<Duration>,

    /// Delete log rows older than this many days (in small batches). Keeps everything when
    /// absent.
    #[arg(long, value_name = "D", value_parser = clap::value_parser!(u64).range(1..))]
    pub retain_days: Option<u64>,

    /// Keep at most this many of the newest log rows (older ones are deleted in small
    /// batches). Keeps everything when absent.
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u64).range(1..))]
    pub retain_rows: Option<u64>,

    /// Live events buffered for all subscribers; a client further behind replays from the
    /// database instead.
    #[arg(long, default_value_t = DEFAULT_CAPACITY, value_name = "N", value_parser = parse_capacity)]
    pub broadcast_capacity: usize,

    /// Postgres: how often this replica's sequencer looks for committed rows to give seqs (the
    /// feed's latency floor; replicas take turns, so more replicas tick more often).
    #[arg(long, default_value_t = 5, value_name = "MS", value_parser = clap::value_parser!(u64).range(1..=10_000))]
    pub sequencer_tick_ms: u64,

    /// Postgres: run no sequencer in this replica (it only serves; another replica, or another
    /// process, must run one, or no new row ever reaches clients).
    #[arg(long)]
    pub no_sequencer: bool,
}

/// Flags of `changefeed demo`.
#[derive(Debug, Clone, Args)]
pub struct DemoArgs {
    /// Server flags.
    #[command(flatten)]
    pub serve: ServeArgs,

    /// Demo writes per second (each is one transaction producing one or a few events).
    #[arg(long, default_value_t = 5.0, value_name = "N", value_parser = parse_rate)]
    pub rate: f64,

    /// How many demo projects to write to (demo-1 … demo-N).
    #[arg(long, default_value_t = 3, value_name = "N", value_parser = clap::value_parser!(u32).range(1..=1000))]
    pub projects: u32,
}

fn parse_seconds(text: &str) -> Result<Duration, String> {
    let seconds: f64 = text
        .parse()
        .map_err(|_| format!("{text:?} is not a number of seconds"))?;
    if !(seconds.is_finite() && seconds > 0.0 && seconds <= 31_536_000.0) {
        return Err(format!("{text:?} must be above 0 and at most a year"));
    }
    Ok(Duration::from_secs_f64(seconds))
}

fn parse_rate(text: &str) -> Result<f64, String> {
    let rate: f64 = text
        .parse()
        .map_err(|_| format!("{text:?} is not a number"))?;
    if !(rate.is_finite() && rate > 0.0 && rate <= 100_000.0) {
        return Err(format!("{text:?} must be above 0 and at most 100000"));
    }
    Ok(rate)
}

fn parse_capacity(text: &str) -> Result<usize, String> {
    match text.parse::<usize>() {
        Ok(n) if (1..=1 << 20).contains(&n) => Ok(n),
        _ => Err(format!("{text:?} must be a whole number from 1 to 1048576")),
    }
}

impl ServeArgs {
    /// The server configuration these flags describe.
    pub fn server_config(&self) -> ServerConfig {
        let mut config = ServerConfig {
            broadcast_capacity: self.broadcast_capacity,
            retention: Retention {
                days: self.retain_days,
                rows: self.retain_rows,
            },
            ..ServerConfig::default()
        };
        config.subscription.heartbeat = self.heartbeat;
        config.subscription.retry = Duration::from_millis(self.retry_ms);
        config.subscription.max_lifetime = self.max_stream_secs;
        config
    }
}

/// A failure to report: one line, and the exit code.
#[derive(Debug)]
pub struct CliError {
    /// The line printed after `changefeed: `.
    pub message: String,
    /// The process exit code.
    pub code: u8,
}

impl CliError {
    fn usage(message: impl Into<String>) -> CliError {
        CliError {
            message: message.into(),
            code: 2,
        }
    }

    fn runtime(message: impl Into<String>) -> CliError {
        CliError {
            message: message.into(),
            code: 1,
        }
    }
}

/// Parses the process arguments, runs the command, and returns the exit code.
pub fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(error) => {
            use clap::error::ErrorKind;
            if matches!(
                error.kind(),
                ErrorKind::DisplayHelp
                    | ErrorKind::DisplayVersion
                    | ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand
            ) {
                let _ = error.print();
                return ExitCode::from(u8::try_from(error.exit_code()).unwrap_or(2));
            }
            eprintln!("changefeed: {} (see changefeed --help)", first_line(&error));
            return ExitCode::from(2);
        }
    };
    init_tracing();
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("changefeed: {}", error.message);
            ExitCode::from(error.code)
        }
    }
}

/// A clap error as one line: its message and tips, without the usage block or `error: `.
fn first_line(error: &clap::Error) -> String {
    let text = error.to_string();
    let parts: Vec<&str> = text
        .lines()
        .take_while(|line| !line.starts_with("Usage:") && !line.starts_with("For more"))
        .map(str::trim)
        .filter(|line| !line.is_empty())
        .collect();
    let line = parts.join(" ");
    line.strip_prefix("error: ").unwrap_or(&line).to_owned()
}

fn init_tracing() {
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .try_init();
}

/// Runs a parsed command line to completion.
pub fn run(cli: Cli) -> Result<(), CliError> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(|error| CliError::runtime(format!("cannot start the async runtime: {error}")))?;
    runtime.block_on(async move {
        match cli.command {
            Command::Serve(args) => serve(args, None).await,
            Command::Demo(args) => {
                let demo = DemoConfig {
                    rate: args.rate,
                    projects: args.projects,
                    seed: demo::clock_seed(),
                };
                serve(args.serve, Some(demo)).await
            }
            Command::Tail(args) => run_tail(args).await.map_err(|error| match error {
                TailError::InvalidArgs(_) => CliError::usage(error.to_string()),
                other => CliError::runtime(other.to_string()),
            }),
            Command::ContractService(args) => {
                let addr = SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), args.port);
                crate::contract::run_contract_service(addr)
                    .await
                    .map_err(|error| {
                        CliError::runtime(format!("contract service on {addr}: {error}"))
                    })
            }
        }
    })
}

/// The kinds of database `--database` can name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DatabaseKind {
    /// `sqlite://PATH` or `sqlite:PATH`.
    Sqlite,
    /// `postgres://...` or `postgresql://...`.
    Postgres,
}

/// Checks that `url` names a database this build can serve.
pub fn check_database_url(url: &str) -> Result<DatabaseKind, CliError> {
    let scheme = url.split_once(':').map(|(scheme, _)| scheme).unwrap_or("");
    match scheme.to_ascii_lowercase().as_str() {
        "sqlite" => Ok(DatabaseKind::Sqlite),
        "postgres" | "postgresql" => Ok(DatabaseKind::Postgres),
        _ => Err(CliError::usage(format!(
            "unsupported database URL {} (expected sqlite://PATH or postgres://USER@HOST/DB)",
            redact_url(url)
        ))),
    }
}

async fn serve(args: ServeArgs, demo: Option<DemoConfig>) -> Result<(), CliError> {
    match check_database_url(&args.database)? {
        DatabaseKind::Sqlite => {
            let store = SqliteStore::open(&args.database).await.map_err(|error| {
                CliError::runtime(format!("cannot open database {}: {error}", args.database))
            })?;
            let result = serve_store(store.clone(), &args, args.database.clone(), demo).await;
            store.close().await;
            result
        }
        DatabaseKind::Postgres => {
            // The store's errors name the URL, without its password.
            let options = PostgresStoreOptions {
                sequencer: (!args.no_sequencer).then(|| SequencerConfig {
                    tick: Duration::from_millis(args.sequencer_tick_ms),
                    ..SequencerConfig::default()
                }),
                ..PostgresStoreOptions::default()
            };
            let store = PostgresStore::open_with(&args.database, options)
                .await
                .map_err(|error| CliError::runtime(format!("cannot open database: {error}")))?;
            let shown = store.url().to_owned();
            let result = serve_store(store.clone(), &args, shown, demo).await;
            store.close().await;
            result
        }
    }
}

/// Serves `store` (and runs the demo writer into it) until a shutdown signal.
async fn serve_store<S>(
    store: S,
    args: &ServeArgs,
    shown_url: String,
    demo: Option<DemoConfig>,
) -> Result<(), CliError>
where
    S: Store + Into<DemoTarget>,
{
    let listener = tokio::net::TcpListener::bind(args.listen)
        .await
        .map_err(|error| CliError::runtime(format!("cannot listen on {}: {error}", args.listen)))?;
    let local = listener
        .local_addr()
        .map_err(|error| CliError::runtime(format!("cannot listen on {}: {error}", args.listen)))?;
    let (trigger, signal) = shutdown::channel();
    let state = AppState::new(store.clone(), args.server_config(), signal.clone())
        .await
        .map_err(|error| CliError::runtime(format!("cannot read database {shown_url}: {error}")))?;
    tracing::info!(
        listen = %local,
        database = %shown_url,
        epoch = %state.epoch(),
        head = state.feed().published().0,
        "changefeed serving"
    );
    let demo_task = demo.map(|config| {
        let shown = if local.ip().is_unspecified() {
            SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), local.port())
        } else {
            local
        };
        println!(
            "demo: writing {} changes/s to {} project(s)",
            config.rate, config.projects
        );
        println!("watch: curl -N http://{shown}/api/v1/events");
        println!("       curl -N 'http://{shown}/api/v1/events?project=demo-1&types=pr_*&after=0'");
        tokio::spawn(demo::run(store.clone(), config, signal.clone()))
    });
    let signals = tokio::spawn(async move {
        shutdown::os_signal().await;
        trigger.trigger();
    });
    let result = crate::run(crate::http::tcp_listener(listener), state).await;
    signals.abort();
    if let Some(task) = demo_task {
        match task.await {
            Ok(Ok(_)) => {}
            Ok(Err(error)) => tracing::error!(%error, "demo writer failed"),
            Err(error) => tracing::error!(%error, "demo writer task failed"),
        }
    }
    result.map_err(|error| CliError::runtime(format!("server failed: {error}")))
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn the_command_line_is_well_formed() {
        Cli::command().debug_assert();
    }

    #[test]
    fn flags_map_to_the_server_config() {
        let cli = Cli::try_parse_from([
            "changefeed",
            "demo",
            "--database",
            "sqlite://x.db",
            "--heartbeat",
            "0.5",
            "--retry-ms",
            "250",
            "--max-stream-secs",
            "60",
            "--retain-rows",
            "10",
            "--rate",
            "20",
        ])
        .unwrap();
        let Command::Demo(args) = cli.command else {
            panic!("demo expected");
        };
        let config = args.serve.server_config();
        assert_eq!(config.subscription.heartbeat, Duration::from_millis(500));
        assert_eq!(config.subscription.retry, Duration::from_millis(250));
        assert_eq!(
            config.subscription.max_lifetime,
            Some(Duration::from_secs(60))
        );
        assert_eq!(config.retention.rows, Some(10));
        assert_eq!(args.rate, 20.0);
        assert_eq!(args.projects, 3);
    }

    #[test]
    fn bad_values_and_urls_are_rejected() {
        for bad in [
            &["changefeed", "serve", "--heartbeat", "0"][..],
            &["changefeed", "serve", "--listen", "nowhere"],
            &["changefeed", "serve", "--retain-days", "0"],
            &["changefeed", "demo", "--rate", "-1"],
            &["changefeed", "serve", "--bogus"],
        ] {
            assert!(Cli::try_parse_from(bad).is_err(), "{bad:?}");
        }
        assert_eq!(
            check_database_url("postgres://h/db").unwrap(),
            DatabaseKind::Postgres
        );
        assert_eq!(
            check_database_url("postgresql://u:p@h/db").unwrap(),
            DatabaseKind::Postgres
        );
        let mysql = check_database_url("mysql://u:secret@h/db").unwrap_err();
        assert_eq!(mysql.code, 2);
        assert!(!mysql.message.contains("secret"), "{}", mysql.message);
        assert_eq!(
            check_database_url("sqlite://changefeed.db").unwrap(),
            DatabaseKind::Sqlite
        );
        assert!(check_database_url("sqlite:changefeed.db").is_ok());
    }

    #[test]
    fn client_subcommands_parse() {
        let cli = Cli::try_parse_from(["changefeed", "tail", "--project", "a", "--types", "pr_*"])
            .unwrap();
        let Command::Tail(args) = cli.command else {
            panic!("tail expected");
        };
        assert_eq!(args.projects, ["a"]);
        let cli =
            Cli::try_parse_from(["changefeed", "contract-service", "--port", "8111"]).unwrap();
        assert!(matches!(
            cli.command,
            Command::ContractService(ContractServiceArgs { port: 8111 })
        ));
        assert!(Cli::try_parse_from(["changefeed", "contract-service"]).is_err());
    }
}
