//! `changefeed tail`: print a changefeed stream, one line per event, resumable through a cursor
//! file.
//!
//! **Invariant** (no loss, no duplicate across restarts of `tail` itself): the cursor file only
//! ever holds a position whose events have all been written *and flushed* to the output. Each
//! event is printed and flushed first, then the file is replaced atomically (temporary file +
//! rename) by the client's cursor as of that event; Ctrl-C and SIGTERM are handled between
//! events, so a clean stop loses and repeats nothing. Only a hard kill landing between the flush
//! and the rename repeats that one event on the next start (never loses one).

use std::fmt;
use std::future::Future;
use std::io::{self, Write};
use std::path::{Path, PathBuf};

use changefeed_core::Cursor;
use url::Url;

use super::typed::{ChangeEvent, Client, ClientItem};
use super::{ClientConfig, ClientError, Connector, TcpConnector};

/// The URL `tail` reads when none is given.
pub const DEFAULT_URL: &str = "http://127.0.0.1:7467/api/v1/events";

/// How `tail` prints events.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum TailFormat {
    /// The event JSON as received, one line per event.
    #[default]
    Json,
    /// A readable line per event.
    Pretty,
}

/// Arguments of `changefeed tail`.
#[derive(Debug, Clone, PartialEq, Eq, clap::Args)]
pub struct TailArgs {
    /// The event stream URL.
    #[arg(default_value = DEFAULT_URL, value_parser = parse_url)]
    pub url: String,
    /// Only events of this project; repeat for several (default: all projects).
    #[arg(long = "project", value_name = "ID", value_parser = non_empty)]
    pub projects: Vec<String>,
    /// Only these kinds: comma-separated, with `prefix*` patterns (default: all kinds).
    #[arg(long, value_name = "LIST", value_parser = non_empty)]
    pub types: Option<String>,
    /// Start after this cursor (`<epoch>:<seq>` or `<seq>`) instead of at the head.
    #[arg(long, value_name = "CURSOR", value_parser = parse_cursor)]
    pub after: Option<String>,
    /// Keep the position in this file: read at start (it wins over --after) and replaced
    /// atomically after each printed event, so a restarted tail resumes with no loss and no
    /// duplicate.
    #[arg(long, value_name = "PATH")]
    pub cursor_file: Option<PathBuf>,
    /// Output format.
    #[arg(long, value_enum, default_value_t = TailFormat::Json)]
    pub format: TailFormat,
}

impl Default for TailArgs {
    fn default() -> TailArgs {
        TailArgs {
            url: DEFAULT_URL.to_owned(),
            projects: Vec::new(),
            types: None,
            after: None,
            cursor_file: None,
            format: TailFormat::Json,
        }
    }
}

fn parse_url(text: &str) -> Result<String, String> {
    let url = Url::parse(text).map_err(|error| format!("not a URL: {error}"))?;
    if url.scheme() != "http" {
        return Err(format!(
            "only http URLs are supported, not {:?}",
            url.scheme()
        ));
    }
    Ok(text.to_owned())
}

fn non_empty(text: &str) -> Result<String, String> {
    if text.is_empty() {
        Err("the value must not be empty".into())
    } else {
        Ok(text.to_owned())
    }
}

fn parse_cursor(text: &str) -> Result<String, String> {
    Cursor::parse(text)
        .map(|_| text.to_owned())
        .map_err(|error| format!("{error} (expected <epoch>:<seq> or <seq>)"))
}

/// Why `tail` stopped with an error.
#[derive(Debug)]
#[non_exhaustive]
pub enum TailError {
    /// The URL or filters do not make a valid request.
    InvalidArgs(String),
    /// The stream ended for good (the server refused it, for instance).
    Client(ClientError),
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
            TailError::InvalidArgs(_) => None,
        }
    }
}

/// Runs `changefeed tail` on stdout and stderr until Ctrl-C (or SIGTERM), which ends it with
/// `Ok`.
pub async fn run_tail(args: TailArgs) -> Result<(), TailError> {
    tail(
        args,
        TcpConnector,
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

/// `tail` with its edges injected: the connector, the outputs for events (`out`) and status
/// messages (`err`), and the signal that ends it cleanly (`shutdown`).
pub async fn tail<C, O, E, S>(
    args: TailArgs,
    connector: C,
    mut out: O,
    mut err: E,
    shutdown: S,
) -> Result<(), TailError>
where
    C: Connector,
    O: Write,
    E: Write,
    S: Future<Output = ()>,
{
    let url = stream_url(&args)?;
    let mut config = ClientConfig::new(url).map_err(|e| TailError::InvalidArgs(e.to_string()))?;
    let saved = match &args.cursor_file {
        Some(path) => read_cursor(path)?,
        None => None,
    };
    if let Some(cursor) = &saved {
        let _ = writeln!(err, "changefeed tail: resuming after {cursor}");
    }
    config.last_event_id = saved.clone();
    config.reconnect.jitter_seed = jitter_seed();
    let mut cursor_file = args.cursor_file.map(|path| CursorFile {
        path,
        written: saved,
    });
    let mut client = Client::new(config, connector);
    let mut shutdown = std::pin::pin!(shutdown);
    loop {
        let item = tokio::select! {
            biased;
            () = &mut shutdown => break,
            item = client.next() => item,
        };
        let item = match item {
            None => break,
            Some(Err(error)) => {
                persist(&mut cursor_file, client.last_cursor())?;
                return Err(TailError::Client(error));
            }
            Some(Ok(item)) => item,
        };
        match item {
            ClientItem::Event(event) => {
                let line = match args.format {
                    TailFormat::Json => event.data.replace(['\r', '\n'], " "),
                    TailFormat::Pretty => pretty(&event),
                };
                match writeln!(out, "{line}").and_then(|()| out.flush()) {
                    Ok(()) => {}
                    // The reader went away (`tail | head`): stop quietly, the event was not
                    // delivered so the cursor stays before it.
                    Err(error) if error.kind() == io::ErrorKind::BrokenPipe => return Ok(()),
                    Err(error) => return Err(TailError::Output(error)),
                }
                persist(&mut cursor_file, client.last_cursor())?;
            }
            ClientItem::Reset {
                requested,
                after,
                reason,
            } => {
                let _ = writeln!(
                    err,
                    "changefeed tail: reset ({reason}): cursor {requested:?} cannot be resumed \
                     exactly; continuing after {after}. Events may have been skipped: refetch \
                     any state built from earlier events."
                );
                persist(&mut cursor_file, client.last_cursor())?;
            }
            ClientItem::Ready {
                after, replayed, ..
            } => {
                let _ = writeln!(
                    err,
                    "changefeed tail: live after {after} ({replayed} replayed)"
                );
                persist(&mut cursor_file, client.last_cursor())?;
            }
            ClientItem::Connected { url } => {
                let _ = writeln!(err, "changefeed tail: connected to {url}");
            }
            ClientItem::Disconnected { reason, retry_in } => {
                let _ = writeln!(
                    err,
                    "changefeed tail: {reason}; reconnecting in {:.1}s",
                    retry_in.as_secs_f64()
                );
            }
            ClientItem::Malformed { event, error } => {
                let _ = writeln!(
                    err,
                    "changefeed tail: ignoring a malformed {} frame: {error}",
                    event.event_type
                );
            }
            ClientItem::Comment(_) => {}
        }
    }
    persist(&mut cursor_file, client.last_cursor())
}

/// The stream URL with the filters as query parameters.
fn stream_url(args: &TailArgs) -> Result<String, TailError> {
    let mut url = Url::parse(&args.url)
        .map_err(|error| TailError::InvalidArgs(format!("{:?} is not a URL: {error}", args.url)))?;
    let pairs = args
        .projects
        .iter()
        .map(|project| ("project", project))
        .chain(args.types.iter().map(|types| ("types", types)))
        .chain(args.after.iter().map(|after| ("after", after)));
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

struct CursorFile {
    path: PathBuf,
    /// What the file holds (or held at start).
    written: Option<String>,
}

/// Records `cursor` in the cursor file, if there is one and the position moved.
fn persist(file: &mut Option<CursorFile>, cursor: Option<&str>) -> Result<(), TailError> {
    let (Some(file), Some(cursor)) = (file, cursor) else {
        return Ok(());
    };
    if file.written.as_deref() == Some(cursor) {
        return Ok(());
    }
    write_cursor(&file.path, cursor).map_err(|source| TailError::CursorFile {
        path: file.path.clone(),
        source,
    })?;
    file.written = Some(cursor.to_owned());
    Ok(())
}

/// The cursor saved in `path`; `None` if the file does not exist or is blank.
fn read_cursor(path: &Path) -> Result<Option<String>, TailError> {
    match std::fs::read_to_string(path) {
        Ok(text) => Ok(Some(text.trim().to_owned()).filter(|cursor| !cursor.is_empty())),
        Err(error) if error.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(source) => Err(TailError::CursorFile {
            path: path.to_owned(),
            source,
        }),
    }
}

/// Replaces `path` atomically: a temporary file beside it, then a rename over it.
fn write_cursor(path: &Path, cursor: &str) -> io::Result<()> {
    let mut name = path
        .file_name()
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "not a file path"))?
        .to_os_string();
    name.push(format!(".{}.tmp", std::process::id()));
    let temporary = path.with_file_name(name);
    std::fs::write(&temporary, format!("{cursor}\n"))?;
    std::fs::rename(&temporary, path).inspect_err(|_| {
        let _ = std::fs::remove_file(&temporary);
    })
}

/// `createdAt kind seq project session payload`, for people.
fn pretty(event: &ChangeEvent) -> String {
    let payload = event
        .json()
        .ok()
        .and_then(|json| json.get("payload").map(|payload| payload.to_string()))
        .unwrap_or_else(|| event.data.replace(['\r', '\n'], " "));
    let mut line = String::new();
    line.push_str(event.created_at.as_deref().unwrap_or("-"));
    line.push(' ');
    line.push_str(&event.kind);
    match event.seq {
        Some(seq) => line.push_str(&format!(" #{seq}")),
        None => line.push_str(&format!(" id={}", event.id)),
    }
    if let Some(project) = &event.project_id {
        line.push_str(&format!(" project={project}"));
    }
    if let Some(session) = &event.session_id {
        line.push_str(&format!(" session={session}"));
    }
    line.push(' ');
    line.push_str(&payload);
    line
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser as _;

    #[derive(clap::Parser, Debug)]
    struct Cli {
        #[command(flatten)]
        tail: TailArgs,
    }

    #[test]
    fn flags_parse_and_build_the_url() {
        let cli = Cli::try_parse_from([
            "tail",
            "--project",
            "p1",
            "--project",
            "p 2",
            "--types",
            "pr_*,session_created",
            "--after",
            "00000000000000ab:7",
            "--format",
            "pretty",
        ])
        .unwrap();
        assert_eq!(cli.tail.url, DEFAULT_URL);
        assert_eq!(cli.tail.format, TailFormat::Pretty);
        assert_eq!(
            stream_url(&cli.tail).unwrap(),
            "http://127.0.0.1:7467/api/v1/events?project=p1&project=p+2&types=pr_*%2Csession_created&after=00000000000000ab%3A7"
        );
        let bare = Cli::try_parse_from(["tail", "http://h:1/e"]).unwrap();
        assert_eq!(stream_url(&bare.tail).unwrap(), "http://h:1/e");
    }

    #[test]
    fn bad_flags_are_clap_errors() {
        for args in [
            &["tail", "--after", "x"][..],
            &["tail", "--after", "012"],
            &["tail", "--project", ""],
            &["tail", "--types", ""],
            &["tail", "--format", "xml"],
            &["tail", "ftp://h/e"],
            &["tail", "--bogus"],
        ] {
            assert!(Cli::try_parse_from(args).is_err(), "{args:?}");
        }
    }

    #[test]
    fn cursor_file_round_trip() {
        let dir = std::env::temp_dir().join(format!("changefeed-tail-unit-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("cursor");
        let _ = std::fs::remove_file(&path);
        assert_eq!(read_cursor(&path).unwrap(), None);
        write_cursor(&path, "00000000000000ab:7").unwrap();
        assert_eq!(
            read_cursor(&path).unwrap().as_deref(),
            Some("00000000000000ab:7")
        );
        std::fs::write(&path, "  \n").unwrap();
        assert_eq!(read_cursor(&path).unwrap(), None);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn pretty_line() {
        let event = ChangeEvent {
            id: "00000000000000ab:42".into(),
            kind: "pr_updated".into(),
            data: r#"{"seq":42,"projectId":"p1","sessionId":"s1","type":"pr_updated","payload":{"url":"u"},"createdAt":"2026-11-26T21:13:07.123Z"}"#.into(),
            seq: Some(42),
            project_id: Some("p1".into()),
            session_id: Some("s1".into()),
            created_at: Some("2026-11-26T21:13:07.123Z".into()),
        };
        assert_eq!(
            pretty(&event),
            r#"2026-11-26T21:13:07.123Z pr_updated #42 project=p1 session=s1 {"url":"u"}"#
        );
    }
}
