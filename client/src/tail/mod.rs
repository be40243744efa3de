//! The library half of `changefeed tail`: print a changefeed stream, one line per event, follow
//! it or stop once caught up (`--once`), resumable through a cursor file. The command-line flags
//! live in the `changefeed` binary, which fills in [`TailOptions`].
//!
//! **Invariant** (no loss, no duplicate across restarts of `tail` itself): the cursor file only
//! ever holds a position whose events have all been written *and flushed* to the output. Each
//! event is printed and flushed first, then the file is replaced atomically (temporary file +
//! rename) by the client's cursor as of that event; Ctrl-C and SIGTERM are handled between
//! events, so a clean stop loses and repeats nothing. Only a hard kill landing between the flush
//! and the rename repeats that one event on the next start (never loses one).
//!
//! Output: events on stdout and nothing else there; on stderr, warnings (resets, reconnects,
//! malformed frames) always, and only on a terminal the notes (connected, resuming, live) and
//! the replay progress line.

mod cursor_file;
mod output;
mod progress;

use std::fmt;
use std::future::Future;
use std::io::{self, IsTerminal, Write};
use std::path::PathBuf;

use url::Url;

pub use output::TailFormat;

use crate::{
    ChangeEvent, Client, ClientConfig, ClientError, ClientItem, Connector, Disconnect,
    HttpsConnector, TrustRoots,
};
use cursor_file::CursorFile;
use progress::Progress;

/// The server `tail` reads when none is given.
pub const DEFAULT_SERVER: &str = "http://127.0.0.1:7467";

/// The event stream's path, appended to a server address given without a path.
pub const EVENTS_PATH: &str = "/api/v1/events";

/// The exit status of a `--once` run that caught up after a `changefeed.reset`: events may have
/// been skipped, so state built from earlier events must be refetched.
pub const EXIT_RESET: u8 = 3;

/// How many connection attempts in a row may fail before a `--once` run gives up (with the
/// client's backoff, 15 to 30 seconds): a script must stop, not wait forever for a server
/// that is down. Following (without `--once`) retries forever.
pub const ONCE_MAX_FAILED_ATTEMPTS: u32 = 5;

/// The exit status of a `--once` run stopped (Ctrl-C, SIGTERM) before it caught up.
pub const EXIT_INTERRUPTED: u8 = 130;

/// What `tail` reads and how it prints it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TailOptions {
    /// A server address (`http://host:port`, path empty or `/`, to which [`EVENTS_PATH`] is
    /// appended) or the full event stream URL (any other path, used as given); `http` or
    /// `https`.
    pub url: String,
    /// Only events of these projects (empty: all projects).
    pub projects: Vec<String>,
    /// Only events of these sessions (empty: any session or none).
    pub sessions: Vec<String>,
    /// Only these kinds: comma-separated, with `prefix*` patterns.
    pub types: Option<String>,
    /// Start after this cursor instead of at the head (the cursor file wins over it).
    pub after: Option<String>,
    /// Start so that the newest this many matching events are replayed, then follow (`last=`;
    /// the cursor file wins over it; excludes `after`).
    pub last: Option<u32>,
    /// Keep the position in this file: read at start, replaced after each printed event.
    pub cursor_file: Option<PathBuf>,
    /// How events are printed.
    pub format: TailFormat,
    /// Replay what exists (what the server had published when the stream opened), print it,
    /// and stop at `changefeed.ready`.
    pub once: bool,
    /// Trust only the CA certificates of this PEM file for `https` (else the platform's).
    pub cacert: Option<PathBuf>,
    /// Extra request headers, e.g. `("Authorization", "Bearer …")` for a server that checks
    /// tokens.
    pub headers: Vec<(String, String)>,
}

impl Default for TailOptions {
    fn default() -> TailOptions {
        TailOptions {
            url: DEFAULT_SERVER.to_owned(),
            projects: Vec::new(),
            sessions: Vec::new(),
            types: None,
            after: None,
            last: None,
            cursor_file: None,
            format: TailFormat::Json,
            once: false,
            cacert: None,
            headers: Vec::new(),
        }
    }
}

/// What the terminal `tail` writes to can show.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Console {
    /// Notes (connected, resuming, live) and the replay progress line on stderr.
    pub chatty_stderr: bool,
    /// Colour in the pretty format on stdout.
    pub color: bool,
    /// stdout is a terminal (perhaps the same as stderr's): the progress line is lifted off
    /// the screen while an event is printed, and put back after it.
    pub stdout_terminal: bool,
}

impl Console {
    /// From the process: stderr notes and progress when stderr is a terminal; colour when
    /// stdout is a terminal and `NO_COLOR` is unset or empty.
    pub fn detect() -> Console {
        let no_color = std::env::var_os("NO_COLOR").is_some_and(|value| !value.is_empty());
        let stdout_terminal = io::stdout().is_terminal();
        Console {
            chatty_stderr: io::stderr().is_terminal(),
            color: stdout_terminal && !no_color,
            stdout_terminal,
        }
    }
}

/// How a `tail` run ended without an error.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct TailSummary {
    /// Events printed.
    pub printed: u64,
    /// `changefeed.reset` frames seen.
    pub resets: u64,
    /// A `--once` run reached `changefeed.ready`.
    pub caught_up: bool,
    /// The output's reader went away (`tail | head`): a normal end.
    pub reader_gone: bool,
    /// The position at the end.
    pub cursor: Option<String>,
}

impl TailSummary {
    /// The exit status for `options`: `--once` gives [`EXIT_RESET`] after a reset and
    /// [`EXIT_INTERRUPTED`] when stopped before catching up; otherwise 0.
    pub fn exit_code(&self, options: &TailOptions) -> u8 {
        if !options.once || self.reader_gone {
            0
        } else if !self.caught_up {
            EXIT_INTERRUPTED
        } else if self.resets > 0 {
            EXIT_RESET
        } else {
            0
        }
    }
}

/// Why `tail` stopped with an error.
#[derive(Debug)]
#[non_exhaustive]
pub enum TailError {
    /// The URL, filters or CA file do not make a valid request.
    InvalidArgs(String),
    /// The stream ended for good (the server refused it, for instance).
    Client(ClientError),
    /// `--once` could not reach the server: this many attempts in a row failed (with backoff).
    Unreachable {
        /// The attempts made.
        attempts: u32,
        /// Why the last one failed.
        last: String,
    },
    /// The cursor file could not be read or written.
    CursorFile {
        /// The file.
        path: PathBuf,
        /// What failed.
        source: io::Error,
    },
    /// Writing the output failed.
    Output(io::Error),
}

impl fmt::Display for TailError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TailError::InvalidArgs(problem) => f.write_str(problem),
            TailError::Client(error) => write!(f, "{error}"),
            TailError::Unreachable { attempts, last } => {
                write!(
                    f,
                    "gave up after {attempts} failed connection attempts: {last}"
                )
            }
            TailError::CursorFile { path, source } => {
                write!(f, "cursor file {}: {source}", path.display())
            }
            TailError::Output(error) => write!(f, "writing the output failed: {error}"),
        }
    }
}

impl std::error::Error for TailError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            TailError::Client(error) => Some(error),
            TailError::CursorFile { source, .. } => Some(source),
            TailError::Output(error) => Some(error),
            TailError::InvalidArgs(_) | TailError::Unreachable { .. } => None,
        }
    }
}

/// Runs `tail` on stdout and stderr ([`Console::detect`]) until Ctrl-C or SIGTERM (which end it
/// with `Ok`), or with `--once` until caught up.
pub async fn run_tail(options: TailOptions) -> Result<TailSummary, TailError> {
    let roots = match &options.cacert {
        Some(path) => TrustRoots::PemFile(path.clone()),
        None => TrustRoots::Platform,
    };
    let connector =
        HttpsConnector::with_roots(roots).map_err(|e| TailError::InvalidArgs(e.to_string()))?;
    tail(
        options,
        connector,
        Console::detect(),
        io::stdout(),
        io::stderr(),
        shutdown_signal(),
    )
    .await
}

/// Ctrl-C, or SIGTERM on Unix. If no handler can be installed, never.
async fn shutdown_signal() {
    let ctrl_c = async {
        if tokio::signal::ctrl_c().await.is_err() {
            std::future::pending::<()>().await;
        }
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => {}
        () = term => {}
    }
}

/// `tail` with its edges injected: the connector, what the terminal can show, the outputs for
/// events (`out`) and status messages (`err`), and the signal that ends it cleanly
/// (`shutdown`).
pub async fn tail<C, O, E, S>(
    options: TailOptions,
    connector: C,
    console: Console,
    mut out: O,
    mut err: E,
    shutdown: S,
) -> Result<TailSummary, TailError>
where
    C: Connector,
    O: Write,
    E: Write,
    S: Future<Output = ()>,
{
    let url = stream_url(&options)?;
    let mut config = ClientConfig::new(url).map_err(|e| TailError::InvalidArgs(e.to_string()))?;
    config.headers.clone_from(&options.headers);
    config
        .validate()
        .map_err(|e| TailError::InvalidArgs(e.to_string()))?;
    let mut cursor_file = options
        .cursor_file
        .clone()
        .map(CursorFile::open)
        .transpose()?;
    let saved = cursor_file
        .as_ref()
        .and_then(|file| file.saved().map(str::to_owned));
    let note = |err: &mut E, text: std::fmt::Arguments<'_>| {
        if console.chatty_stderr {
            let _ = writeln!(err, "changefeed tail: {text}");
        }
    };
    if let Some(cursor) = &saved {
        note(&mut err, format_args!("resuming after {cursor}"));
    }
    config.last_event_id = saved;
    config.reconnect.jitter_seed = jitter_seed();
    let color = console.color && options.format == TailFormat::Pretty;
    let mut progress = Progress::new(console.chatty_stderr);
    let mut summary = TailSummary::default();
    // Connection attempts that failed in a row (no stream accepted in between).
    let mut failed_attempts = 0;
    let mut client = Client::new(config, connector);
    let mut shutdown = std::pin::pin!(shutdown);
    // The progress line also moves while nothing arrives (a slow server: the rate drops).
    let mut redraw_tick = tokio::time::interval(progress::REDRAW_EVERY);
    redraw_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    // Records the position after an item was fully handled (printed and flushed).
    let persist = |file: &mut Option<CursorFile>, cursor: Option<&str>| match file {
        Some(file) => file.persist(cursor),
        None => Ok(()),
    };
    loop {
        let item = tokio::select! {
            biased;
            () = &mut shutdown => break,
            item = client.next() => item,
            _ = redraw_tick.tick(), if progress.showing() => {
                progress.tick(&mut err);
                continue;
            }
        };
        let item = match item {
            None => break,
            Some(Err(error)) => {
                progress.clear(&mut err);
                persist(&mut cursor_file, client.last_cursor())?;
                return Err(TailError::Client(error));
            }
            Some(Ok(item)) => item,
        };
        match item {
            ClientItem::Event(event) => {
                let lifted = console.stdout_terminal && progress.clear(&mut err);
                if !print(&mut out, &event, options.format, color)? {
                    // The reader went away (`tail | head`): stop quietly; the event was not
                    // delivered, so the cursor stays before it.
                    summary.reader_gone = true;
                    break;
                }
                summary.printed += 1;
                persist(&mut cursor_file, client.last_cursor())?;
                progress.advanced(client.last_cursor(), true);
                if lifted {
                    progress.redraw(&mut err);
                } else {
                    progress.tick(&mut err);
                }
            }
            ClientItem::Reset {
                requested,
                after,
                reason,
            } => {
                progress.clear(&mut err);
                summary.resets += 1;
                let _ = writeln!(
                    err,
                    "changefeed tail: reset ({reason}): cursor {requested:?} cannot be resumed \
                     exactly; continuing after {after}. Events may have been skipped: refetch \
                     any state built from earlier events."
                );
                persist(&mut cursor_file, client.last_cursor())?;
                progress.advanced(client.last_cursor(), false);
            }
            ClientItem::Ready {
                after, replayed, ..
            } => {
                persist(&mut cursor_file, client.last_cursor())?;
                progress.advanced(client.last_cursor(), false);
                progress.stop_replaying();
                if options.once {
                    summary.caught_up = true;
                    progress.finish(&mut err);
                    break;
                }
                progress.clear(&mut err);
                note(
                    &mut err,
                    format_args!("live after {after} ({replayed} replayed)"),
                );
            }
            ClientItem::Connected { url } => {
                failed_attempts = 0;
                progress.clear(&mut err);
                note(&mut err, format_args!("connected to {url}"));
                let header = |name: &str| {
                    client
                        .response_head()
                        .and_then(|head| head.headers.get(name))
                        .and_then(|value| value.to_str().ok())
                        .map(str::to_owned)
                };
                progress.connected(
                    header("changefeed-cursor").as_deref(),
                    header("changefeed-head").as_deref(),
                );
            }
            ClientItem::Disconnected { reason, retry_in } => {
                progress.clear(&mut err);
                progress.stop_replaying();
                if matches!(reason, Disconnect::Connect(_) | Disconnect::Status { .. }) {
                    failed_attempts += 1;
                    if options.once && failed_attempts >= ONCE_MAX_FAILED_ATTEMPTS {
                        persist(&mut cursor_file, client.last_cursor())?;
                        return Err(TailError::Unreachable {
                            attempts: failed_attempts,
                            last: reason.to_string(),
                        });
                    }
                }
                let _ = writeln!(
                    err,
                    "changefeed tail: {reason}; reconnecting in {:.1}s",
                    retry_in.as_secs_f64()
                );
            }
            ClientItem::Malformed { event, error } => {
                progress.clear(&mut err);
                let _ = writeln!(
                    err,
                    "changefeed tail: ignoring a malformed {} frame: {error}",
                    event.event_type
                );
                persist(&mut cursor_file, client.last_cursor())?;
            }
            ClientItem::Comment(_) => {
                // Heartbeats and checkpoints move the position without printing anything.
                persist(&mut cursor_file, client.last_cursor())?;
                progress.advanced(client.last_cursor(), false);
                progress.tick(&mut err);
            }
        }
    }
    progress.clear(&mut err);
    if summary.reader_gone {
        // The last event was not delivered: the position stays before it.
        summary.cursor = cursor_file
            .as_ref()
            .and_then(|file| file.saved().map(str::to_owned));
        return Ok(summary);
    }
    persist(&mut cursor_file, client.last_cursor())?;
    summary.cursor = client.last_cursor().map(str::to_owned);
    Ok(summary)
}

/// Prints one event and flushes; `Ok(false)` when the reader is gone.
fn print(
    out: &mut impl Write,
    event: &ChangeEvent,
    format: TailFormat,
    color: bool,
) -> Result<bool, TailError> {
    let line = output::line(event, format, color);
    match writeln!(out, "{line}").and_then(|()| out.flush()) {
        Ok(()) => Ok(true),
        Err(error) if error.kind() == io::ErrorKind::BrokenPipe => Ok(false),
        Err(error) => Err(TailError::Output(error)),
    }
}

/// The stream URL: the server address with [`EVENTS_PATH`] when it has no path, and the filters
/// as query parameters.
pub fn stream_url(options: &TailOptions) -> Result<String, TailError> {
    let mut url = Url::parse(&options.url).map_err(|error| {
        TailError::InvalidArgs(format!("{:?} is not a URL: {error}", options.url))
    })?;
    if !matches!(url.scheme(), "http" | "https") {
        return Err(TailError::InvalidArgs(format!(
            "{:?}: the scheme must be http or https, not {:?}",
            options.url,
            url.scheme()
        )));
    }
    if matches!(url.path(), "" | "/") {
        url.set_path(EVENTS_PATH);
    }
    let pairs = options
        .projects
        .iter()
        .map(|project| ("project", project.clone()))
        .chain(
            options
                .sessions
                .iter()
                .map(|session| ("session", session.clone())),
        )
        .chain(options.types.iter().map(|types| ("types", types.clone())))
        .chain(options.after.iter().map(|after| ("after", after.clone())))
        .chain(options.last.iter().map(|last| ("last", last.to_string())));
    let mut pairs = pairs.peekable();
    if pairs.peek().is_some() {
        url.query_pairs_mut().extend_pairs(pairs);
    }
    Ok(url.into())
}

/// A jitter seed that differs between processes, so many tails restarted together spread out.
fn jitter_seed() -> u64 {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64);
    nanos ^ (u64::from(std::process::id()) << 32)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn url_of(url: &str, edit: impl FnOnce(&mut TailOptions)) -> Result<String, TailError> {
        let mut options = TailOptions {
            url: url.to_owned(),
            ..TailOptions::default()
        };
        edit(&mut options);
        stream_url(&options)
    }

    #[test]
    fn a_server_address_gets_the_events_path_and_other_paths_are_kept() {
        for (given, expected) in [
            (
                "http://127.0.0.1:7467",
                "http://127.0.0.1:7467/api/v1/events",
            ),
            (
                "http://127.0.0.1:7467/",
                "http://127.0.0.1:7467/api/v1/events",
            ),
            ("https://feed.example", "https://feed.example/api/v1/events"),
            ("http://h:1/e", "http://h:1/e"),
            ("http://h:1/api/v1/events", "http://h:1/api/v1/events"),
            ("http://h:1/proxy/", "http://h:1/proxy/"),
            ("http://h:1/?x=1", "http://h:1/api/v1/events?x=1"),
        ] {
            assert_eq!(url_of(given, |_| {}).unwrap(), expected, "{given}");
        }
    }

    #[test]
    fn filters_become_query_parameters() {
        let url = url_of(DEFAULT_SERVER, |options| {
            options.projects = vec!["p1".into(), "p 2".into()];
            options.sessions = vec!["s&1".into(), "s2".into()];
            options.types = Some("pr_*,session_created".into());
            options.after = Some("00000000000000ab:7".into());
        })
        .unwrap();
        assert_eq!(
            url,
            "http://127.0.0.1:7467/api/v1/events?project=p1&project=p+2&session=s%261&session=s2&types=pr_*%2Csession_created&after=00000000000000ab%3A7"
        );
        let url = url_of(DEFAULT_SERVER, |options| options.last = Some(25)).unwrap();
        assert_eq!(url, "http://127.0.0.1:7467/api/v1/events?last=25");
    }

    #[test]
    fn bad_urls_are_argument_errors() {
        for bad in ["ftp://h/e", "not a url", "127.0.0.1:7467"] {
            assert!(
                matches!(url_of(bad, |_| {}), Err(TailError::InvalidArgs(_))),
                "{bad}"
            );
        }
    }

    #[test]
    fn exit_codes() {
        let once = TailOptions {
            once: true,
            ..TailOptions::default()
        };
        let follow = TailOptions::default();
        let mut summary = TailSummary {
            caught_up: true,
            ..TailSummary::default()
        };
        assert_eq!(summary.exit_code(&once), 0);
        summary.resets = 1;
        assert_eq!(summary.exit_code(&once), EXIT_RESET);
        assert_eq!(summary.exit_code(&follow), 0);
        summary.caught_up = false;
        assert_eq!(summary.exit_code(&once), EXIT_INTERRUPTED);
        summary.reader_gone = true;
        assert_eq!(summary.exit_code(&once), 0);
    }
}
