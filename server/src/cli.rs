//! The `changefeed` command line: `serve`, `demo`, `tail` and `contract-service` (clap derive;
//! add a subcommand by adding a variant to [`Command`] and an arm to [`run`]).
//!
//! Every failure is one line on stderr and a non-zero exit: 2 for usage errors (bad flags, an
//! unsupported database URL), 1 for runtime failures (database cannot be opened, address in
//! use); `tail --once` adds 3 (caught up after a reset) and 130 (interrupted before catching
//! up). Never a panic or a backtrace.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, SocketAddr, ToSocketAddrs};
use std::path::PathBuf;
use std::process::ExitCode;
use std::str::FromStr;
use std::time::Duration;

use changefeed_client::tail::{self, TailError, TailFormat, TailOptions};
use changefeed_core::{Cursor, IdKey};
use clap::builder::{PossibleValuesParser, TypedValueParser as _};
use clap::{Args, Parser, Subcommand, ValueEnum};

use crate::app::{self, ServerConfig};
use crate::auth::{self, Auth, AuthSettings, JwtSettings};
use crate::broadcast::DEFAULT_CAPACITY;
use crate::demo::{self, DemoConfig, DemoTarget};
use crate::shutdown;
use crate::store::postgres::{redact_url, PostgresStore, PostgresStoreOptions, SequencerConfig};
use crate::store::sqlite::{self, schema, SqliteStore};
use crate::store::{Retention, Store, StoreError};

/// Streams a SQLite or Postgres change_log to HTTP clients as Server-Sent Events, with exact
/// resume.
#[derive(Debug, Parser)]
#[command(
    name = "changefeed",
    version,
    arg_required_else_help = true,
    after_help = "Each command's flags: changefeed <COMMAND> --help (e.g. changefeed serve --help).\n\
                  Logs go to stderr; RUST_LOG sets the level (default info)."
)]
pub struct Cli {
    /// What to do.
    #[command(subcommand)]
    pub command: Command,

    /// Log line format on stderr: `text` for people, `json` (one object per line) for log
    /// collectors.
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Text, value_name = "FORMAT")]
    pub log_format: LogFormat,
}

/// How log lines are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line (tracing-subscriber's JSON formatter).
    Json,
}

/// Where to listen: `HOST:PORT`, `localhost:PORT`, `:PORT` (every IPv4 interface) or
/// `[IPV6]:PORT`. A host name is resolved when the server binds; `localhost` is 127.0.0.1.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ListenAddr {
    host: Option<String>,
    port: u16,
}

impl ListenAddr {
    /// The address to bind: the first one `host` resolves to.
    pub fn resolve(&self) -> Result<SocketAddr, String> {
        let host = match self.host.as_deref() {
            None => {
                return Ok(SocketAddr::new(
                    IpAddr::V4(Ipv4Addr::UNSPECIFIED),
                    self.port,
                ))
            }
            Some(host) if host.eq_ignore_ascii_case("localhost") => {
                return Ok(SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), self.port))
            }
            Some(host) => host,
        };
        if let Ok(ip) = host.parse::<IpAddr>() {
            return Ok(SocketAddr::new(ip, self.port));
        }
        (host, self.port)
            .to_socket_addrs()
            .map_err(|error| format!("cannot resolve {host:?}: {error}"))?
            .next()
            .ok_or_else(|| format!("{host:?} resolves to no address"))
    }
}

impl FromStr for ListenAddr {
    type Err = String;

    fn from_str(text: &str) -> Result<ListenAddr, String> {
        let expected = || format!("{text:?} is not HOST:PORT, :PORT or [IPV6]:PORT");
        let (host, port) = text.rsplit_once(':').ok_or_else(expected)?;
        let port: u16 = port.parse().map_err(|_| expected())?;
        let host = if host.is_empty() {
            None
        } else if let Some(inner) = host.strip_prefix('[').and_then(|h| h.strip_suffix(']')) {
            inner
                .parse::<std::net::Ipv6Addr>()
                .map_err(|_| format!("{inner:?} in {text:?} is not an IPv6 address"))?;
            Some(inner.to_owned())
        } else if host.contains(':') {
            // A bare IPv6 address is ambiguous with the port separator.
            return Err(format!(
                "{text:?}: write an IPv6 address in brackets, e.g. [::1]:7467"
            ));
        } else if host.split('.').all(|label| {
            !label.is_empty() && label.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
        }) {
            Some(host.to_owned())
        } else {
            return Err(expected());
        };
        Ok(ListenAddr { host, port })
    }
}

impl fmt::Display for ListenAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.host {
            None => write!(f, ":{}", self.port),
            Some(host) if host.contains(':') => write!(f, "[{host}]:{}", self.port),
            Some(host) => write!(f, "{host}:{}", self.port),
        }
    }
}

/// The subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Serve GET /api/v1/events (SSE), /healthz and /metrics from a database.
    Serve(ServeArgs),
    /// Serve, and write realistic demo activity into the same database.
    Demo(DemoArgs),
    /// Print a changefeed stream, one line per event: follow it, or catch up and stop
    /// (--once); resumable through a cursor file.
    Tail(TailArgs),
    /// Run the client under the SSE contract-test harness's service protocol.
    ContractService(ContractServiceArgs),
}

/// Flags of `changefeed tail`.
#[derive(Debug, Clone, PartialEq, Eq, Args)]
#[command(after_help = "\
Output: one line per event on stdout and nothing else; resets, reconnects and errors on \
stderr. On a terminal, stderr also shows notes and, during a replay, a progress line \
(events so far against the head, rate, time left).

Exit status: 0 done (with --once: caught up); 1 the stream failed (with --once, also 5 failed \
connection attempts in a row); 2 bad arguments; \
3 --once caught up after a changefeed.reset (events may have been skipped: refetch state \
built from earlier events); 130 --once interrupted before catching up.

Examples:
  changefeed tail http://127.0.0.1:7467 --once --after 0            # everything, then exit
  changefeed tail --project p1 --types 'pr_*' --format pretty      # follow, for people
  changefeed tail --once --cursor-file feed.cursor >> events.jsonl # cron: append what is new")]
pub struct TailArgs {
    /// The server (`http://host:port`, to which /api/v1/events is appended) or the full
    /// event stream URL; http or https.
    #[arg(default_value = tail::DEFAULT_SERVER, value_parser = parse_stream_url)]
    pub url: String,
    /// Only events of this project; repeat for several (default: all projects).
    #[arg(long = "project", value_name = "ID", value_parser = non_empty)]
    pub projects: Vec<String>,
    /// Only events of this session; repeat for several (default: any session or none).
    #[arg(long = "session", value_name = "ID", value_parser = non_empty)]
    pub sessions: Vec<String>,
    /// Only these kinds: comma-separated, with `prefix*` patterns (default: all kinds).
    #[arg(long, value_name = "LIST", value_parser = non_empty)]
    pub types: Option<String>,
    /// Start after this cursor (`<epoch>:<seq>`, or `<seq>`; `0` is the beginning; a sealed
    /// id from a server with auth on) instead of at the head.
    #[arg(long, value_name = "CURSOR", value_parser = parse_cursor, allow_hyphen_values = true)]
    pub after: Option<String>,
    /// Start with the newest N matching events (1 to 10000), then follow (or, with --once,
    /// exit). The cursor file wins over it; it excludes --after.
    #[arg(
        long,
        value_name = "N",
        conflicts_with = "after",
        value_parser = clap::value_parser!(u32).range(1..=i64::from(changefeed_core::MAX_LAST))
    )]
    pub last: Option<u32>,
    /// Keep the position in this file: read at start (it wins over --after) and replaced
    /// atomically after each printed event, so the next run continues exactly after the last
    /// printed event.
    #[arg(long, value_name = "PATH")]
    pub cursor_file: Option<PathBuf>,
    /// Output format: the event JSON as received, or a readable line (colour only on a
    /// terminal, never with NO_COLOR).
    #[arg(
        long,
        default_value = "json",
        value_parser = PossibleValuesParser::new(TailFormat::NAMES)
            .try_map(|name| name.parse::<TailFormat>())
    )]
    pub format: TailFormat,
    /// Replay what exists (after the cursor, with the filters), print it and exit at
    /// changefeed.ready instead of following.
    #[arg(long)]
    pub once: bool,
    /// For https: trust only the CA certificates in this PEM file (default: the system's).
    #[arg(long, value_name = "PEM")]
    pub cacert: Option<PathBuf>,
    /// A bearer token for a server that checks them (sent as `Authorization: Bearer`);
    /// prefer the environment variable, which `ps` does not show.
    #[arg(
        long,
        env = "CHANGEFEED_TOKEN",
        hide_env_values = true,
        value_name = "TOKEN"
    )]
    pub token: Option<String>,
}

impl TailArgs {
    /// The client library's options for these flags.
    pub fn options(&self) -> TailOptions {
        TailOptions {
            url: self.url.clone(),
            projects: self.projects.clone(),
            sessions: self.sessions.clone(),
            types: self.types.clone(),
            after: self.after.clone(),
            last: self.last,
            cursor_file: self.cursor_file.clone(),
            format: self.format,
            once: self.once,
            cacert: self.cacert.clone(),
            headers: self
                .token
                .iter()
                .map(|token| ("Authorization".to_owned(), format!("Bearer {token}")))
                .collect(),
        }
    }
}

fn parse_stream_url(text: &str) -> Result<String, String> {
    let options = TailOptions {
        url: text.to_owned(),
        ..TailOptions::default()
    };
    tail::stream_url(&options)
        .map(|_| text.to_owned())
        .map_err(|error| error.to_string())
}

fn non_empty(text: &str) -> Result<String, String> {
    if text.is_empty() {
        Err("the value must not be empty".into())
    } else {
        Ok(text.to_owned())
    }
}

fn parse_cursor(text: &str) -> Result<String, String> {
    // A sealed id (auth on) is opaque here; the server checks it.
    if changefeed_core::ids::is_wire_id(text) {
        return Ok(text.to_owned());
    }
    Cursor::parse(text)
        .map(|_| text.to_owned())
        .map_err(|error| format!("{error} (expected <epoch>:<seq>, <seq> or a sealed id)"))
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

    /// The address to listen on: HOST:PORT, localhost:PORT, :PORT (every IPv4 interface) or
    /// [IPV6]:PORT.
    #[arg(long, default_value = "127.0.0.1:7467", value_name = "ADDR")]
    pub listen: ListenAddr,

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

    /// Delete log rows older than this many days. Checked whenever the log changes (at most
    /// once a second) and every 30 s otherwise, deleting in batches of 500; rows not yet sent
    /// to live clients are never deleted. Keeps everything when absent.
    #[arg(long, value_name = "D", value_parser = clap::value_parser!(u64).range(1..))]
    pub retain_days: Option<u64>,

    /// Keep the newest N log rows. Older rows are deleted about a second after they are
    /// published to live clients (pruning runs whenever the log changes, at most once a second,
    /// in batches of 500), so the table holds N rows plus at most the last couple of seconds of
    /// writes. Keeps everything when absent.
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

    // Connections (see `conn`): timeouts, limits, TLS.
    /// Seconds a connection has to deliver a complete request head (from opening, or from the
    /// first byte of a later request; covers the TLS handshake); slower clients are dropped.
    #[arg(long, default_value = "10", value_name = "SECS", value_parser = parse_seconds)]
    pub head_timeout: Duration,

    /// Seconds a connection with no request in flight stays open after its last response.
    #[arg(long, default_value = "60", value_name = "SECS", value_parser = parse_seconds)]
    pub idle_timeout: Duration,

    /// Connections served at once; requests on further ones get 503 `overloaded` with
    /// `Retry-After`.
    #[arg(long, default_value_t = 16_384, value_name = "N", value_parser = parse_limit)]
    pub max_connections: usize,

    /// Event streams open at once (over all connections); further ones get 503 `overloaded`
    /// with `Retry-After`.
    #[arg(long, default_value_t = 16_384, value_name = "N", value_parser = parse_limit)]
    pub max_streams: usize,

    /// Longest request target (path and query) in bytes; longer gets 414 `uri_too_long`.
    #[arg(long, default_value_t = 8 * 1024, value_name = "BYTES", value_parser = parse_limit)]
    pub max_uri_bytes: usize,

    /// Largest sum of request header names and values in bytes; larger gets 431
    /// `headers_too_large`.
    #[arg(long, default_value_t = 32 * 1024, value_name = "BYTES", value_parser = parse_limit)]
    pub max_header_bytes: usize,

    /// Serve HTTPS (HTTP/2 and HTTP/1.1 by ALPN) with this PEM certificate chain (needs
    /// --tls-key). Without it, plain HTTP/1.1 and HTTP/2 with prior knowledge (h2c).
    #[arg(long, value_name = "PATH", requires = "tls_key")]
    pub tls_cert: Option<std::path::PathBuf>,

    /// The PEM private key of --tls-cert.
    #[arg(long, value_name = "PATH", requires = "tls_cert")]
    pub tls_key: Option<std::path::PathBuf>,

    // Attach mode: serving a database another program owns.
    /// Serve the change_log of an existing database another program owns, as it is: no
    /// migrations, no triggers, no journal-mode change; changefeed's bookkeeping (epoch,
    /// published mark) goes in one table of its own, changefeed_meta. Deletes nothing unless
    /// --retain-days or --retain-rows is given. Without --attach, a database changefeed did not
    /// create is refused (exit 2) and left unchanged.
    #[arg(long)]
    pub attach: bool,

    /// With --attach: open the database read-only (mode=ro) and keep changefeed's bookkeeping
    /// in this file instead (created if missing, replaced atomically), so the database is never
    /// written. The retention flags are refused with it.
    #[arg(long, value_name = "PATH", requires = "attach")]
    pub meta_file: Option<PathBuf>,

    /// Auth and limits.
    #[command(flatten)]
    pub auth: AuthArgs,
}

/// Auth and stream-limit flags of `changefeed serve` (see README, "Authentication").
#[derive(Clone, Default, Args)]
pub struct AuthArgs {
    /// Require a token: one grant per line, `TOKEN PROJECT[,PROJECT...]` or `TOKEN *`, `#`
    /// comments. The file must be private (chmod 600); it is reloaded on SIGHUP and when it
    /// changes (a revoked token's streams end with a final checkpoint).
    #[arg(long = "tokens", value_name = "FILE", help_heading = "Auth")]
    pub tokens_file: Option<PathBuf>,

    /// Accept bearer JWTs signed with HS256 and this shared secret (32 bytes or more; prefer
    /// the environment variable, which `ps` does not show).
    #[arg(
        long,
        env = "CHANGEFEED_JWT_SECRET",
        hide_env_values = true,
        value_name = "SECRET",
        help_heading = "Auth"
    )]
    pub jwt_secret: Option<String>,

    /// Accept bearer JWTs signed with the private half of this PEM public key: RSA (RS256)
    /// or EC P-256 (ES256).
    #[arg(long, value_name = "PEM", help_heading = "Auth")]
    pub jwt_public_key: Option<PathBuf>,

    /// Require this `aud` in every JWT (without it, a JWT carrying `aud` is refused).
    #[arg(long, value_name = "AUD", help_heading = "Auth")]
    pub jwt_audience: Option<String>,

    /// Clock skew tolerated on a JWT's `exp` and `nbf`, in seconds; a stream opened with a
    /// JWT ends at `exp` plus this.
    #[arg(long, default_value_t = auth::DEFAULT_JWT_LEEWAY.as_secs(), value_name = "SECS", help_heading = "Auth")]
    pub jwt_leeway: u64,

    /// At most N concurrent event streams per token; more get 429 with Retry-After.
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u64).range(1..), help_heading = "Auth")]
    pub max_streams_per_token: Option<u64>,

    /// With auth on, serve /metrics and /healthz without a token to any client (by default
    /// only loopback clients, or a token granting every project, may read them).
    #[arg(long, help_heading = "Auth")]
    pub public_metrics: bool,

    /// With auth on, seal ids with the 32-byte key in this file (raw, or 64 hex digits; make
    /// one with `head -c 32 /dev/urandom > FILE; chmod 600 FILE`). Every replica of one log
    /// needs the same file; without it ids are sealed with a key of this process only, so
    /// clients resuming after a restart get an invalid_cursor reset.
    #[arg(long, value_name = "FILE", help_heading = "Auth")]
    pub id_key: Option<PathBuf>,
}

impl fmt::Debug for AuthArgs {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AuthArgs")
            .field("tokens_file", &self.tokens_file)
            .field(
                "jwt_secret",
                &self.jwt_secret.as_ref().map(|_| "<redacted>"),
            )
            .field("jwt_public_key", &self.jwt_public_key)
            .field("jwt_audience", &self.jwt_audience)
            .field("jwt_leeway", &self.jwt_leeway)
            .field("max_streams_per_token", &self.max_streams_per_token)
            .field("public_metrics", &self.public_metrics)
            .field("id_key", &self.id_key)
            .finish()
    }
}

impl AuthArgs {
    /// The `--id-key` (a usage error, exit 2, when the file cannot be used or auth is off).
    pub fn id_key(&self) -> Result<Option<IdKey>, CliError> {
        let Some(path) = &self.id_key else {
            return Ok(None);
        };
        if self.tokens_file.is_none() && self.jwt_secret.is_none() && self.jwt_public_key.is_none()
        {
            return Err(CliError::usage(
                "--id-key seals ids for authenticated clients; it needs --tokens, --jwt-secret or \
                 --jwt-public-key",
            ));
        }
        auth::load_id_key(path).map(Some).map_err(CliError::usage)
    }

    /// The auth state these flags describe: reads the tokens file and the key. A file others
    /// may read, a malformed file or key is a usage error (exit 2).
    pub fn auth(&self) -> Result<Auth, CliError> {
        let jwt_options = self.jwt_audience.is_some();
        let public_key_pem = match &self.jwt_public_key {
            None => None,
            Some(path) => Some(std::fs::read(path).map_err(|error| {
                CliError::usage(format!("--jwt-public-key {}: {error}", path.display()))
            })?),
        };
        let jwt =
            (self.jwt_secret.is_some() || public_key_pem.is_some() || jwt_options).then(|| {
                JwtSettings {
                    secret: self
                        .jwt_secret
                        .as_ref()
                        .map(|secret| secret.as_bytes().to_vec()),
                    public_key_pem,
                    audience: self.jwt_audience.clone(),
                    leeway: Duration::from_secs(self.jwt_leeway),
                }
            });
        let to_usize = |n: Option<u64>| n.map(|n| usize::try_from(n).unwrap_or(usize::MAX));
        Auth::new(&AuthSettings {
            tokens_file: self.tokens_file.clone(),
            jwt,
            max_streams_per_token: to_usize(self.max_streams_per_token),
            // The server-wide stream limit is the connection layer's --max-streams (503
            // overloaded: the server is full, not the client over its quota).
            max_streams: None,
            public_metrics: self.public_metrics,
        })
        .map_err(CliError::usage)
    }
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

fn parse_limit(text: &str) -> Result<usize, String> {
    match text.parse::<usize>() {
        Ok(n) if (1..=1 << 24).contains(&n) => Ok(n),
        _ => Err(format!(
            "{text:?} must be a whole number from 1 to 16777216"
        )),
    }
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
        config.connection = crate::conn::ConnectionConfig {
            head_timeout: self.head_timeout,
            idle_timeout: self.idle_timeout,
            max_connections: self.max_connections,
            max_streams: self.max_streams,
            max_uri_bytes: self.max_uri_bytes,
            max_header_bytes: self.max_header_bytes,
            tls: match (&self.tls_cert, &self.tls_key) {
                (Some(cert), Some(key)) => Some(crate::conn::TlsFiles {
                    cert: cert.clone(),
                    key: key.clone(),
                }),
                _ => None,
            },
            ..config.connection
        };
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
    init_tracing(cli.log_format);
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

fn init_tracing(format: LogFormat) {
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    let _ = match format {
        LogFormat::Text => builder
            .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
            .try_init(),
        LogFormat::Json => builder.json().with_ansi(false).try_init(),
    };
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
            Command::Tail(args) => run_tail(args).await,
            Command::ContractService(args) => {
                let addr = SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), args.port);
                changefeed_client::contract::run_contract_service(addr)
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

async fn run_tail(args: TailArgs) -> Result<(), CliError> {
    let options = args.options();
    let summary = tail::run_tail(options.clone())
        .await
        .map_err(|error| match error {
            TailError::InvalidArgs(_) => CliError::usage(error.to_string()),
            other => CliError::runtime(other.to_string()),
        })?;
    match summary.exit_code(&options) {
        0 => Ok(()),
        tail::EXIT_RESET => Err(CliError {
            message: format!(
                "tail: caught up after {} reset(s): events may have been skipped; refetch \
                 state built from earlier events",
                summary.resets
            ),
            code: tail::EXIT_RESET,
        }),
        code => Err(CliError {
            message: "tail: interrupted before catching up".into(),
            code,
        }),
    }
}

/// Opens the database as the flags say: changefeed's own (refusing, exit 2, one that is not),
/// or attached (`--attach`, `--meta-file`).
async fn open_store(args: &ServeArgs, demo: bool) -> Result<SqliteStore, CliError> {
    let url = &args.database;
    let cannot_open =
        |error: StoreError| CliError::runtime(format!("cannot open database {url}: {error}"));
    if !args.attach {
        check_change_log_schema(url).await?;
        return match sqlite::check_owned(url).await {
            Ok(Ok(())) => SqliteStore::open(url).await.map_err(cannot_open),
            Ok(Err(foreign)) => Err(CliError::usage(foreign.to_string())),
            Err(error) => Err(cannot_open(error)),
        };
    }
    if demo {
        return Err(CliError::usage(
            "demo writes changefeed's own schema; --attach is for serve",
        ));
    }
    let retention = args.retain_days.is_some() || args.retain_rows.is_some();
    if args.meta_file.is_some() && retention {
        return Err(CliError::usage(
            "--meta-file opens the database read-only: --retain-days/--retain-rows cannot \
             delete from it (retention is its owner's)",
        ));
    }
    let exists = sqlx::sqlite::SqliteConnectOptions::from_str(url)
        .map(|options| options.get_filename().is_file())
        .unwrap_or(true);
    if !exists {
        return Err(CliError::usage(format!(
            "--attach serves an existing database, and there is none at {url}"
        )));
    }
    check_change_log_schema(url).await?;
    SqliteStore::attach(url, args.meta_file.as_deref())
        .await
        .map_err(cannot_open)
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

/// Refuses (exit code 2, one line naming every problem) a database whose `change_log` cannot be
/// served, before anything is opened for writing.
async fn check_change_log_schema(url: &str) -> Result<(), CliError> {
    let Ok(options) = sqlx::sqlite::SqliteConnectOptions::from_str(url) else {
        // SqliteStore::open reports the bad URL.
        return Ok(());
    };
    match schema::check_file(options.get_filename()).await {
        Ok(Ok(())) => Ok(()),
        Ok(Err(problems)) => Err(CliError::usage(format!("database {url}: {problems}"))),
        Err(error) => Err(CliError::runtime(format!(
            "cannot read database {url}: {error}"
        ))),
    }
}

async fn serve(args: ServeArgs, demo: Option<DemoConfig>) -> Result<(), CliError> {
    let kind = check_database_url(&args.database)?;
    let auth = args.auth.auth()?;
    let mut config = args.server_config();
    config.id_key = args.auth.id_key()?;
    if let Some(files) = &config.connection.tls {
        crate::conn::tls_acceptor(files).map_err(CliError::usage)?;
    }
    match kind {
        DatabaseKind::Sqlite => {
            let store = open_store(&args, demo.is_some()).await?;
            let shown = args.database.clone();
            serve_store(store, &args, shown, auth, config, demo).await
        }
        DatabaseKind::Postgres => {
            if args.attach || args.meta_file.is_some() {
                return Err(CliError::usage(
                    "--attach and --meta-file are for SQLite databases; on Postgres changefeed \
                     keeps its own schema (migrations/postgres)",
                ));
            }
            let options = PostgresStoreOptions {
                sequencer: (!args.no_sequencer).then(|| SequencerConfig {
                    tick: Duration::from_millis(args.sequencer_tick_ms),
                    ..SequencerConfig::default()
                }),
                ..PostgresStoreOptions::default()
            };
            // The store's errors name the URL, without its password.
            let store = PostgresStore::open_with(&args.database, options)
                .await
                .map_err(|error| CliError::runtime(format!("cannot open database: {error}")))?;
            let shown = store.url().to_owned();
            serve_store(store, &args, shown, auth, config, demo).await
        }
    }
}

/// What `serve` needs of a store beyond [`Store`]: the demo writes into it, and a SQLite file
/// can be replaced under the server (a Postgres database cannot: its defaults say so).
trait ServedStore: Store + Into<DemoTarget> {
    /// Resolves when the database was replaced under the server; never by default.
    fn wait_replaced(&self) -> impl std::future::Future<Output = ()> + Send {
        std::future::pending()
    }

    /// Why the database stopped being served, if it was replaced.
    fn replaced(&self) -> Option<String> {
        None
    }

    /// Closes the store's connections.
    fn close(&self) -> impl std::future::Future<Output = ()> + Send;
}

impl ServedStore for SqliteStore {
    fn wait_replaced(&self) -> impl std::future::Future<Output = ()> + Send {
        SqliteStore::wait_replaced(self)
    }

    fn replaced(&self) -> Option<String> {
        SqliteStore::replaced(self)
    }

    fn close(&self) -> impl std::future::Future<Output = ()> + Send {
        SqliteStore::close(self)
    }
}

impl ServedStore for PostgresStore {
    fn close(&self) -> impl std::future::Future<Output = ()> + Send {
        PostgresStore::close(self)
    }
}

/// Serves `store` (and runs the demo writer into it) until a shutdown signal.
async fn serve_store<S: ServedStore>(
    store: S,
    args: &ServeArgs,
    shown_url: String,
    auth: Auth,
    config: ServerConfig,
    demo: Option<DemoConfig>,
) -> Result<(), CliError> {
    let addr = args
        .listen
        .resolve()
        .map_err(|error| CliError::runtime(format!("cannot listen on {}: {error}", args.listen)))?;
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|error| CliError::runtime(format!("cannot listen on {}: {error}", args.listen)))?;
    let local = listener
        .local_addr()
        .map_err(|error| CliError::runtime(format!("cannot listen on {}: {error}", args.listen)))?;
    if !auth.enabled() && !local.ip().is_loopback() {
        tracing::warn!(
            listen = %local,
            "listening on a non-loopback address without auth: anyone who can reach it reads \
             every project (use --tokens or --jwt-*, or listen on 127.0.0.1)"
        );
    }
    let (trigger, signal) = shutdown::channel();
    let mut config = config;
    config.auth = auth.clone();
    let tokens_watch = tokio::spawn(auth::watch_tokens_file(auth, signal.clone()));
    let server = app::start(store.clone(), config, signal.clone())
        .await
        .map_err(|error| CliError::runtime(format!("cannot read database {shown_url}: {error}")))?;
    tracing::info!(
        listen = %local,
        tls = args.tls_cert.is_some(),
        database = %shown_url,
        attach = args.attach,
        epoch = %server.state().epoch(),
        head = server.state().feed().published().0,
        "changefeed serving"
    );
    let scheme = if args.tls_cert.is_some() {
        "https"
    } else {
        "http"
    };
    let demo_task = demo.map(|config| {
        let shown = if local.ip().is_unspecified() {
            SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), local.port())
        } else {
            local
        };
        println!(
            "demo: writing {} changes/s to projects demo-1 … demo-{}",
            config.rate, config.projects
        );
        println!("viewer: {scheme}://{shown}/");
        println!(
            "watch:  curl -N '{scheme}://{shown}/api/v1/events?project=demo-1&types=pr_*&after=0'"
        );
        tokio::spawn(demo::run(store.clone(), config, signal.clone()))
    });
    let replaced_store = store.clone();
    let signals = tokio::spawn(async move {
        // A database replaced under the server: stop serving the old one and exit with the
        // reason, so a supervisor restarts it on the new file.
        let replaced = tokio::select! {
            () = shutdown::os_signal() => false,
            () = replaced_store.wait_replaced() => true,
        };
        trigger.trigger();
        replaced
    });
    let result = crate::run(crate::http::tcp_listener(listener), server).await;
    signals.abort();
    tokens_watch.abort();
    if let Some(task) = demo_task {
        match task.await {
            Ok(Ok(_)) => {}
            Ok(Err(error)) => tracing::error!(%error, "demo writer failed"),
            Err(error) => tracing::error!(%error, "demo writer task failed"),
        }
    }
    store.close().await;
    result.map_err(|error| CliError::runtime(format!("server failed: {error}")))?;
    match store.replaced() {
        Some(why) => Err(CliError::runtime(format!(
            "stopped serving {shown_url}: {why}; start the server again to serve the new database"
        ))),
        None => Ok(()),
    }
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
    fn listen_takes_host_port_localhost_port_and_port_alone() {
        let resolved = |text: &str| text.parse::<ListenAddr>().unwrap().resolve().unwrap();
        assert_eq!(
            resolved("127.0.0.1:7467"),
            "127.0.0.1:7467".parse().unwrap()
        );
        assert_eq!(
            resolved("localhost:7467"),
            "127.0.0.1:7467".parse().unwrap()
        );
        assert_eq!(resolved("LOCALHOST:1"), "127.0.0.1:1".parse().unwrap());
        assert_eq!(resolved(":7467"), "0.0.0.0:7467".parse().unwrap());
        assert_eq!(resolved("[::1]:7467"), "[::1]:7467".parse().unwrap());
        assert_eq!(resolved("0.0.0.0:0"), "0.0.0.0:0".parse().unwrap());
        for text in [
            "localhost:7467",
            ":7467",
            "[::1]:7467",
            "10.1.2.3:80",
            "db-1.example:5",
        ] {
            assert_eq!(text.parse::<ListenAddr>().unwrap().to_string(), text);
        }
        for bad in [
            "7467",
            "localhost",
            "localhost:",
            "localhost:http",
            ":70000",
            "::1:7467",
            "[localhost]:7467",
            "a b:1",
            "host..x:1",
        ] {
            let error = bad.parse::<ListenAddr>().unwrap_err();
            assert!(error.contains(bad), "{bad:?}: {error}");
        }
        let cli = Cli::try_parse_from(["changefeed", "serve", "--listen", ":8080"]).unwrap();
        let Command::Serve(args) = cli.command else {
            panic!("serve expected");
        };
        assert_eq!(args.listen.resolve().unwrap().port(), 8080);
    }

    #[test]
    fn help_lists_every_subcommand_and_where_its_flags_are() {
        let help = Cli::command().render_help().to_string();
        for line in [
            "serve ",
            "demo ",
            "tail ",
            "contract-service ",
            "changefeed <COMMAND> --help",
            "--log-format",
        ] {
            assert!(help.contains(line), "{line:?} missing from:\n{help}");
        }
        let mut command = Cli::command();
        let serve = command.find_subcommand_mut("serve").unwrap();
        let serve_help = serve.render_long_help().to_string();
        for flag in [
            "--database",
            "--listen",
            "--retain-rows",
            "--retain-days",
            "--heartbeat",
        ] {
            assert!(
                serve_help.contains(flag),
                "{flag} missing from:\n{serve_help}"
            );
        }
    }

    #[test]
    fn log_format_is_text_or_json_anywhere_on_the_line() {
        let cli = Cli::try_parse_from(["changefeed", "serve", "--log-format", "json"]).unwrap();
        assert_eq!(cli.log_format, LogFormat::Json);
        let cli = Cli::try_parse_from(["changefeed", "--log-format", "json", "serve"]).unwrap();
        assert_eq!(cli.log_format, LogFormat::Json);
        assert_eq!(
            Cli::try_parse_from(["changefeed", "serve"])
                .unwrap()
                .log_format,
            LogFormat::Text
        );
        assert!(Cli::try_parse_from(["changefeed", "serve", "--log-format", "xml"]).is_err());
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

    #[test]
    fn tail_flags_fill_the_client_options() {
        let cli = Cli::try_parse_from([
            "changefeed",
            "tail",
            "https://feed.example:8443",
            "--project",
            "p1",
            "--project",
            "p 2",
            "--types",
            "pr_*,session_created",
            "--after",
            "00000000000000ab:7",
            "--cursor-file",
            "feed.cursor",
            "--format",
            "pretty",
            "--once",
            "--cacert",
            "ca.pem",
            "--token",
            "t0k.en",
            "--session",
            "s1",
            "--session",
            "s 2",
        ])
        .unwrap();
        let Command::Tail(args) = cli.command else {
            panic!("tail expected");
        };
        let options = args.options();
        assert_eq!(
            options,
            TailOptions {
                url: "https://feed.example:8443".into(),
                projects: vec!["p1".into(), "p 2".into()],
                sessions: vec!["s1".into(), "s 2".into()],
                types: Some("pr_*,session_created".into()),
                after: Some("00000000000000ab:7".into()),
                last: None,
                cursor_file: Some("feed.cursor".into()),
                format: TailFormat::Pretty,
                once: true,
                cacert: Some("ca.pem".into()),
                headers: vec![("Authorization".into(), "Bearer t0k.en".into())],
            }
        );
        let bare = Cli::try_parse_from(["changefeed", "tail"]).unwrap();
        let Command::Tail(bare) = bare.command else {
            panic!("tail expected");
        };
        assert_eq!(bare.options(), TailOptions::default());
        let sealed =
            IdKey::from_bytes([1; 32]).seal(changefeed_core::Epoch(1), changefeed_core::Seq(2), 3);
        for (flags, last, after) in [
            (vec!["--last", "10000"], Some(10_000), None),
            (vec!["--last", "1", "--session", "s1"], Some(1), None),
            (vec!["--after", sealed.as_str()], None, Some(sealed.clone())),
        ] {
            let cli = Cli::try_parse_from(["changefeed", "tail"].into_iter().chain(flags.clone()))
                .unwrap_or_else(|error| panic!("{flags:?}: {error}"));
            let Command::Tail(args) = cli.command else {
                panic!("tail expected");
            };
            assert_eq!(args.options().last, last, "{flags:?}");
            assert_eq!(args.options().after, after, "{flags:?}");
        }
    }

    #[test]
    fn bad_tail_flags_are_usage_errors() {
        for args in [
            &["changefeed", "tail", "--after", "x"][..],
            &["changefeed", "tail", "--last", "0"],
            &["changefeed", "tail", "--last", "10001"],
            &["changefeed", "tail", "--last", "-1"],
            &["changefeed", "tail", "--last", "x"],
            &["changefeed", "tail", "--last", "5", "--after", "0"],
            &["changefeed", "tail", "--session", ""],
            &["changefeed", "tail", "--after", "012"],
            &["changefeed", "tail", "--project", ""],
            &["changefeed", "tail", "--types", ""],
            &["changefeed", "tail", "--format", "xml"],
            &["changefeed", "tail", "ftp://h/e"],
            &["changefeed", "tail", "127.0.0.1:7467"],
            &["changefeed", "tail", "--once=maybe"],
            &["changefeed", "tail", "--bogus"],
        ] {
            assert!(Cli::try_parse_from(args).is_err(), "{args:?}");
        }
    }
}
