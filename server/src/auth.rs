//! Who may read what, and how many streams at once: bearer tokens from a tokens file or signed
//! JWTs resolve to a [`Grant`] (the projects a token may read), and stream limits per token and
//! for the server (see `PROTOCOL.md`, "Authentication").
//!
//! - **Where the token is**: `Authorization: Bearer <token>` (scheme case-insensitive, one
//!   header only), else the cookie `changefeed_token` (for browsers' `EventSource`). Never the
//!   query string: `token=` is an unknown parameter like any other, so tokens do not reach
//!   access logs. Tokens are never logged or echoed in an error.
//! - **Tokens file** (`--tokens FILE`): one grant per line, `TOKEN PROJECT[,PROJECT...]` or
//!   `TOKEN *`; `#` starts a comment. The file must not be accessible to group or others.
//!   [`Auth::reload_tokens`] (on SIGHUP and when the file changes, see [`watch_tokens_file`])
//!   swaps the table atomically; a stream whose token lost (part of) its grant ends with a final
//!   checkpoint, every other stream goes on.
//! - **JWTs** (`--jwt-secret` HS256, `--jwt-public-key` RS256/ES256): `exp` required, `nbf` and
//!   `aud` checked with a leeway; the `projects` claim is an array of project ids or `"*"`.
//!   `alg: none` and every algorithm not configured are refused. A stream opened with a JWT
//!   ends with a final checkpoint when the token stops being accepted (`exp` + leeway).
//! - **Limits**: at most `max_streams_per_token` concurrent streams per token, and
//!   `max_streams` for the server; beyond, `429 too_many_streams` with `Retry-After`.
//!
//! The table is keyed by SHA-256 digests of the tokens, so a lookup's timing says nothing
//! about how much of a presented token matches a real one.

use std::collections::{BTreeSet, HashMap};
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

pub use changefeed_core::Grant;
use changefeed_core::IdKey;
use http::header::{AUTHORIZATION, COOKIE};
use http::HeaderMap;
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde::Deserialize;
use tokio::sync::watch;

use crate::metrics::Metrics;
use crate::shutdown::ShutdownSignal;

/// The cookie a browser sends the token in.
pub const TOKEN_COOKIE: &str = "changefeed_token";

/// The default `--jwt-leeway`: clock skew tolerated on `exp` and `nbf`.
pub const DEFAULT_JWT_LEEWAY: Duration = Duration::from_secs(30);

/// `Retry-After` of a `429 too_many_streams` (seconds): streams are long-lived, so a slot
/// frees up on the scale of seconds at best.
pub const LIMIT_RETRY_AFTER_SECS: u64 = 5;

/// Whether a stream scoped to `scope` (`None`: every project) is still within `grant`.
fn grant_covers(grant: &Grant, scope: Option<&BTreeSet<String>>) -> bool {
    match (grant, scope) {
        (Grant::All, _) => true,
        (Grant::Projects(_), None) => false,
        (Grant::Projects(granted), Some(scope)) => scope.is_subset(granted),
    }
}

/// Why a request is not authenticated (`401 unauthorized`). The message names the problem
/// with the credentials, never the token itself, and never anything about projects.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuthError {
    /// What is wrong, for the client.
    pub message: String,
    /// Whether a token was presented (it is then `invalid_token` in `WWW-Authenticate`).
    pub token_presented: bool,
}

impl AuthError {
    fn missing(message: impl Into<String>) -> AuthError {
        AuthError {
            message: message.into(),
            token_presented: false,
        }
    }

    fn invalid(message: impl Into<String>) -> AuthError {
        AuthError {
            message: message.into(),
            token_presented: true,
        }
    }

    /// The `WWW-Authenticate` value for this error (RFC 6750).
    pub fn challenge(&self) -> &'static str {
        if self.token_presented {
            "Bearer realm=\"changefeed\", error=\"invalid_token\""
        } else {
            "Bearer realm=\"changefeed\""
        }
    }
}

impl std::fmt::Display for AuthError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message)
    }
}

/// The token a request presents: `Ok(None)` when there is none, an error when the
/// credentials are malformed or ambiguous (two `Authorization` headers, two cookies, another
/// scheme, whitespace inside the token).
pub type Presented = Result<Option<String>, AuthError>;

/// Reads the token from `Authorization: Bearer …` or, without that header, from the
/// `changefeed_token` cookie.
pub fn presented_token(headers: &HeaderMap) -> Presented {
    let mut authorization = headers.get_all(AUTHORIZATION).iter();
    if let Some(value) = authorization.next() {
        if authorization.next().is_some() {
            return Err(AuthError::invalid(
                "the request has more than one Authorization header; send exactly one",
            ));
        }
        let value = value.to_str().map_err(|_| {
            AuthError::invalid("the Authorization header is not visible ASCII text")
        })?;
        let value = value.trim_matches(is_ows);
        let (scheme, token) = value.split_once(is_ows).unwrap_or((value, ""));
        if !scheme.eq_ignore_ascii_case("bearer") {
            return Err(AuthError::missing(
                "the Authorization header must use the Bearer scheme: Authorization: Bearer <token>",
            ));
        }
        return bearer_value(token.trim_matches(is_ows), "bearer token").map(Some);
    }
    let mut found: Option<&str> = None;
    for header in headers.get_all(COOKIE) {
        let Ok(header) = header.to_str() else {
            continue;
        };
        for pair in header.split(';') {
            let Some((name, value)) = pair.trim_matches(is_ows).split_once('=') else {
                continue;
            };
            if name.trim_matches(is_ows) != TOKEN_COOKIE {
                continue;
            }
            if found.is_some() {
                return Err(AuthError::invalid(format!(
                    "the request has more than one {TOKEN_COOKIE} cookie; send exactly one"
                )));
            }
            let value = value.trim_matches(is_ows);
            // RFC 6265 allows the value in double quotes.
            let value = value
                .strip_prefix('"')
                .and_then(|v| v.strip_suffix('"'))
                .unwrap_or(value);
            found = Some(value);
        }
    }
    match found {
        None => Ok(None),
        Some(value) => bearer_value(value, "changefeed_token cookie").map(Some),
    }
}

fn is_ows(c: char) -> bool {
    c == ' ' || c == '\t'
}

/// A token as RFC 6750's `b64token`: `[A-Za-z0-9-._~+/]+=*`.
fn is_token68(token: &str) -> bool {
    let body = token.trim_end_matches('=');
    !body.is_empty()
        && body.bytes().all(|b| {
            b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~' | b'+' | b'/')
        })
}

fn bearer_value(token: &str, what: &str) -> Result<String, AuthError> {
    if token.is_empty() {
        return Err(AuthError::invalid(format!("the {what} is empty")));
    }
    if token.contains(is_ows) {
        return Err(AuthError::invalid(format!(
            "the {what} contains whitespace"
        )));
    }
    if !is_token68(token) {
        return Err(AuthError::invalid(format!(
            "the {what} has characters a token cannot have (allowed: letters, digits, - . _ ~ + / and trailing =)"
        )));
    }
    Ok(token.to_owned())
}

/// A token's SHA-256 digest: the key of the token table and of the per-token stream count.
type TokenKey = [u8; 32];

fn token_key(token: &str) -> TokenKey {
    let digest = ring::digest::digest(&ring::digest::SHA256, token.as_bytes());
    let mut key = [0; 32];
    key.copy_from_slice(digest.as_ref());
    key
}

/// Parses a tokens file. Errors name the line, never its content (it holds tokens).
pub fn parse_tokens(text: &str) -> Result<HashMap<TokenKey, Grant>, String> {
    let mut table = HashMap::new();
    let mut lines_of: HashMap<TokenKey, usize> = HashMap::new();
    for (index, line) in text.lines().enumerate() {
        let number = index + 1;
        let fields: Vec<&str> = line
            .split_whitespace()
            .take_while(|field| !field.starts_with('#'))
            .collect();
        let (token, projects) = match fields.as_slice() {
            [] => continue,
            [token, projects] => (*token, *projects),
            [_] => {
                return Err(format!(
                    "line {number}: a token without projects (expected TOKEN PROJECT[,PROJECT...] or TOKEN *)"
                ))
            }
            _ => {
                return Err(format!(
                    "line {number}: more than two fields (expected TOKEN PROJECT[,PROJECT...] or TOKEN *; \
                     no spaces after the commas)"
                ))
            }
        };
        if !is_token68(token) {
            return Err(format!(
                "line {number}: the token has characters a bearer token cannot have \
                 (allowed: letters, digits, - . _ ~ + / and trailing =)"
            ));
        }
        let grant = if projects == "*" {
            Grant::All
        } else {
            let mut set = BTreeSet::new();
            for project in projects.split(',') {
                if project.is_empty() {
                    return Err(format!("line {number}: an empty project id in the list"));
                }
                if project == "*" {
                    return Err(format!(
                        "line {number}: * stands alone (it grants every project)"
                    ));
                }
                set.insert(project.to_owned());
            }
            Grant::Projects(set)
        };
        let key = token_key(token);
        if let Some(first) = lines_of.insert(key, number) {
            return Err(format!(
                "line {number}: the same token as on line {first} (one line per token)"
            ));
        }
        table.insert(key, grant);
    }
    Ok(table)
}

/// Reads and parses a tokens file, refusing one that group or others may access.
pub fn load_tokens_file(path: &Path) -> Result<HashMap<TokenKey, Grant>, String> {
    let shown = path.display();
    let metadata =
        std::fs::metadata(path).map_err(|error| format!("tokens file {shown}: {error}"))?;
    if !metadata.is_file() {
        return Err(format!("tokens file {shown} is not a regular file"));
    }
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = metadata.permissions().mode() & 0o777;
        if mode & 0o077 != 0 {
            return Err(format!(
                "tokens file {shown} is accessible to group or others (mode {mode:03o}); \
                 run chmod 600 on it"
            ));
        }
    }
    let text =
        std::fs::read_to_string(path).map_err(|error| format!("tokens file {shown}: {error}"))?;
    parse_tokens(&text).map_err(|error| format!("tokens file {shown}: {error}"))
}

/// Reads an id key file (`--id-key`): exactly 32 bytes, either raw (`head -c 32 /dev/urandom`)
/// or as 64 hex digits with an optional trailing newline (`openssl rand -hex 32`). Like the
/// tokens file, it must not be accessible to group or others. Errors name the file and the
/// problem, never the content.
pub fn load_id_key(path: &Path) -> Result<IdKey, String> {
    let shown = path.display();
    let metadata =
        std::fs::metadata(path).map_err(|error| format!("id key file {shown}: {error}"))?;
    if !metadata.is_file() {
        return Err(format!("id key file {shown} is not a regular file"));
    }
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = metadata.permissions().mode() & 0o777;
        if mode & 0o077 != 0 {
            return Err(format!(
                "id key file {shown} is accessible to group or others (mode {mode:03o}); \
                 run chmod 600 on it"
            ));
        }
    }
    let bytes = std::fs::read(path).map_err(|error| format!("id key file {shown}: {error}"))?;
    parse_id_key(&bytes).map_err(|problem| format!("id key file {shown}: {problem}"))
}

/// The key in an id key file's bytes (see [`load_id_key`]).
pub fn parse_id_key(bytes: &[u8]) -> Result<IdKey, String> {
    if let Ok(raw) = <[u8; 32]>::try_from(bytes) {
        return Ok(IdKey::from_bytes(raw));
    }
    let text = bytes.strip_suffix(b"\n").unwrap_or(bytes);
    let text = text.strip_suffix(b"\r").unwrap_or(text);
    if text.len() == 64 && text.iter().all(u8::is_ascii_hexdigit) {
        let mut key = [0u8; 32];
        for (byte, pair) in key.iter_mut().zip(text.chunks(2)) {
            let digit = |c: u8| (c as char).to_digit(16).unwrap_or(0) as u8;
            *byte = (digit(pair[0]) << 4) | digit(pair[1]);
        }
        return Ok(IdKey::from_bytes(key));
    }
    Err(format!(
        "must hold a 32-byte key, raw or as 64 hex digits, found {} bytes that are neither \
         (make one with: head -c 32 /dev/urandom > FILE; chmod 600 FILE)",
        bytes.len()
    ))
}

/// How JWTs are verified.
#[derive(Clone, Default)]
pub struct JwtSettings {
    /// The HS256 shared secret.
    pub secret: Option<Vec<u8>>,
    /// A PEM public key: RSA (RS256) or EC P-256 (ES256).
    pub public_key_pem: Option<Vec<u8>>,
    /// The required `aud` (then every token must carry it); without it, a token carrying an
    /// `aud` is refused.
    pub audience: Option<String>,
    /// Clock skew tolerated on `exp` and `nbf`.
    pub leeway: Duration,
}

impl std::fmt::Debug for JwtSettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JwtSettings")
            .field("secret", &self.secret.as_ref().map(|_| "<redacted>"))
            .field("public_key_pem", &self.public_key_pem.is_some())
            .field("audience", &self.audience)
            .field("leeway", &self.leeway)
            .finish()
    }
}

struct JwtVerifier {
    keys: Vec<(Algorithm, DecodingKey)>,
    audience: Option<String>,
    leeway: Duration,
}

#[derive(Deserialize)]
struct Claims {
    /// Required (the validation says so when it is missing).
    exp: Option<u64>,
    projects: Option<ProjectsClaim>,
}

#[derive(Deserialize)]
#[serde(untagged)]
enum ProjectsClaim {
    List(Vec<String>),
    Star(String),
}

impl JwtVerifier {
    fn new(settings: &JwtSettings) -> Result<JwtVerifier, String> {
        let mut keys = Vec::new();
        if let Some(secret) = &settings.secret {
            if secret.len() < 32 {
                return Err(format!(
                    "--jwt-secret is {} bytes; HS256 needs at least 32",
                    secret.len()
                ));
            }
            keys.push((Algorithm::HS256, DecodingKey::from_secret(secret)));
        }
        if let Some(pem) = &settings.public_key_pem {
            if let Ok(key) = DecodingKey::from_rsa_pem(pem) {
                keys.push((Algorithm::RS256, key));
            } else if let Ok(key) = DecodingKey::from_ec_pem(pem) {
                keys.push((Algorithm::ES256, key));
            } else {
                return Err(
                    "--jwt-public-key is neither an RSA nor an EC P-256 public key in PEM".into(),
                );
            }
        }
        Ok(JwtVerifier {
            keys,
            audience: settings.audience.clone(),
            leeway: settings.leeway,
        })
    }

    /// The grant and the moment (Unix seconds) the token stops being accepted.
    fn verify(&self, token: &str) -> Result<(Grant, u64), AuthError> {
        // `alg: none` fails here already: the crate knows no such algorithm.
        let header = jsonwebtoken::decode_header(token).map_err(|_| {
            AuthError::invalid("the token is not a valid JWT (or it names an unsupported alg)")
        })?;
        let Some((alg, key)) = self.keys.iter().find(|(alg, _)| *alg == header.alg) else {
            return Err(AuthError::invalid(format!(
                "the token is signed with {:?}, which this server does not accept",
                header.alg
            )));
        };
        let mut validation = Validation::new(*alg);
        validation.leeway = self.leeway.as_secs();
        validation.validate_nbf = true;
        match &self.audience {
            Some(audience) => {
                validation.set_audience(&[audience]);
                validation.set_required_spec_claims(&["exp", "aud"]);
            }
            None => validation.set_required_spec_claims(&["exp"]),
        }
        let data = jsonwebtoken::decode::<Claims>(token, key, &validation).map_err(|error| {
            use jsonwebtoken::errors::ErrorKind;
            AuthError::invalid(match error.kind() {
                ErrorKind::ExpiredSignature => "the token has expired",
                ErrorKind::ImmatureSignature => "the token is not valid yet (nbf)",
                ErrorKind::InvalidAudience => "the token is for another audience (aud)",
                ErrorKind::InvalidSignature => "the token's signature does not verify",
                ErrorKind::MissingRequiredClaim(_) => "the token lacks a required claim (exp, aud)",
                ErrorKind::Json(_) => {
                    "the token's claims are malformed (exp must be a number; projects an array of \
                     ids or \"*\")"
                }
                _ => "the token is not valid",
            })
        })?;
        let Some(exp) = data.claims.exp else {
            return Err(AuthError::invalid("the token lacks a required claim (exp)"));
        };
        // Expired from the second `exp + leeway` starts, exactly when its streams end (the
        // crate alone would still accept it during that second).
        let stops = exp.saturating_add(self.leeway.as_secs());
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default()
            .as_secs();
        if now >= stops {
            return Err(AuthError::invalid("the token has expired"));
        }
        let Some(projects) = data.claims.projects else {
            return Err(AuthError::invalid(
                "the token has no projects claim (an array of ids, or \"*\")",
            ));
        };
        let grant = match projects {
            ProjectsClaim::Star(star) if star == "*" => Grant::All,
            ProjectsClaim::Star(_) => {
                return Err(AuthError::invalid(
                    "the token's projects claim must be an array of ids or \"*\"",
                ))
            }
            ProjectsClaim::List(list) => {
                if list.is_empty() || list.iter().any(String::is_empty) {
                    return Err(AuthError::invalid(
                        "the token's projects claim must name at least one project, none empty",
                    ));
                }
                Grant::Projects(list.into_iter().collect())
            }
        };
        Ok((grant, stops))
    }
}

/// Everything about auth and limits a server is configured with.
#[derive(Debug, Clone, Default)]
pub struct AuthSettings {
    /// `--tokens FILE`.
    pub tokens_file: Option<PathBuf>,
    /// `--jwt-secret` / `--jwt-public-key` and their options.
    pub jwt: Option<JwtSettings>,
    /// `--max-streams-per-token`.
    pub max_streams_per_token: Option<usize>,
    /// `--max-streams`: for the whole server, with or without auth.
    pub max_streams: Option<usize>,
    /// `--public-metrics`: `/metrics` and `/healthz` without a token from anywhere.
    pub public_metrics: bool,
}

/// The running auth state: token table, JWT keys, open-stream counts. Cheap to clone; the
/// default is auth off and no limits.
#[derive(Clone, Default)]
pub struct Auth {
    inner: Option<Arc<Inner>>,
}

struct Inner {
    tokens: Option<TokensFile>,
    jwt: Option<JwtVerifier>,
    max_streams_per_token: Option<usize>,
    max_streams: Option<usize>,
    public_metrics: bool,
    open: Mutex<OpenStreams>,
}

struct TokensFile {
    path: PathBuf,
    table: RwLock<Arc<HashMap<TokenKey, Grant>>>,
    /// Bumped at every successful reload; streams re-check their grant then.
    generation: watch::Sender<u64>,
}

#[derive(Default)]
struct OpenStreams {
    total: usize,
    per_token: HashMap<TokenKey, usize>,
}

impl std::fmt::Debug for Auth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.inner {
            None => f.write_str("Auth(off)"),
            Some(inner) => f
                .debug_struct("Auth")
                .field("tokens_file", &inner.tokens.as_ref().map(|t| &t.path))
                .field("jwt", &inner.jwt.is_some())
                .field("max_streams_per_token", &inner.max_streams_per_token)
                .field("max_streams", &inner.max_streams)
                .field("public_metrics", &inner.public_metrics)
                .finish(),
        }
    }
}

impl PartialEq for Auth {
    fn eq(&self, other: &Auth) -> bool {
        match (&self.inner, &other.inner) {
            (None, None) => true,
            (Some(a), Some(b)) => Arc::ptr_eq(a, b),
            _ => false,
        }
    }
}

/// Who a request is: its grant, and for a JWT when it stops being accepted.
#[derive(Debug, Clone)]
pub struct Principal {
    key: TokenKey,
    /// The projects this token may read.
    pub grant: Grant,
    /// Unix seconds after which the token is no longer accepted (JWTs only).
    pub expires_at: Option<u64>,
}

/// Which limit refused a stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Limit {
    /// `--max-streams-per-token`.
    PerToken,
    /// `--max-streams`.
    Global,
}

impl Limit {
    /// The metric label and the name in messages.
    pub fn as_str(self) -> &'static str {
        match self {
            Limit::PerToken => "per_token",
            Limit::Global => "global",
        }
    }
}

/// Why an authenticated stream ended early.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EndReason {
    /// The tokens file no longer grants the stream's projects to its token.
    Revoked,
    /// The JWT expired.
    Expired,
}

impl EndReason {
    /// The metric label.
    pub fn as_str(self) -> &'static str {
        match self {
            EndReason::Revoked => "revoked",
            EndReason::Expired => "expired",
        }
    }
}

impl Auth {
    /// Auth off, no limits (today's behaviour).
    pub fn off() -> Auth {
        Auth::default()
    }

    /// Loads the tokens file and keys; an error is one line naming the problem.
    pub fn new(settings: &AuthSettings) -> Result<Auth, String> {
        let tokens = match &settings.tokens_file {
            None => None,
            Some(path) => {
                let table = load_tokens_file(path)?;
                Some(TokensFile {
                    path: path.clone(),
                    table: RwLock::new(Arc::new(table)),
                    generation: watch::channel(0).0,
                })
            }
        };
        let jwt = settings.jwt.as_ref().map(JwtVerifier::new).transpose()?;
        if jwt.as_ref().is_some_and(|jwt| jwt.keys.is_empty()) {
            return Err("JWT options need --jwt-secret or --jwt-public-key".into());
        }
        let nothing = tokens.is_none()
            && jwt.is_none()
            && settings.max_streams.is_none()
            && settings.max_streams_per_token.is_none();
        if nothing {
            return Ok(Auth::off());
        }
        Ok(Auth {
            inner: Some(Arc::new(Inner {
                tokens,
                jwt,
                max_streams_per_token: settings.max_streams_per_token,
                max_streams: settings.max_streams,
                public_metrics: settings.public_metrics,
                open: Mutex::new(OpenStreams::default()),
            })),
        })
    }

    /// Whether requests need a token.
    pub fn enabled(&self) -> bool {
        self.inner
            .as_ref()
            .is_some_and(|inner| inner.tokens.is_some() || inner.jwt.is_some())
    }

    /// The tokens file, if one is configured.
    pub fn tokens_path(&self) -> Option<&Path> {
        self.inner
            .as_ref()
            .and_then(|inner| inner.tokens.as_ref())
            .map(|tokens| tokens.path.as_path())
    }

    /// Re-reads the tokens file and swaps the table in; streams whose token no longer
    /// grants their projects end. On an error the old table stays. Returns the token count.
    pub fn reload_tokens(&self) -> Result<usize, String> {
        let Some(tokens) = self.inner.as_ref().and_then(|inner| inner.tokens.as_ref()) else {
            return Ok(0);
        };
        let table = load_tokens_file(&tokens.path)?;
        let count = table.len();
        *tokens.table.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(table);
        tokens.generation.send_modify(|generation| *generation += 1);
        Ok(count)
    }

    /// Who presented `token`: a tokens-file entry, else a valid JWT.
    pub fn authenticate(&self, presented: Presented) -> Result<Principal, AuthError> {
        let token = presented?.ok_or_else(|| {
            AuthError::missing(
                "a token is required: send Authorization: Bearer <token> (or the changefeed_token cookie)",
            )
        })?;
        let Some(inner) = &self.inner else {
            return Err(AuthError::invalid("auth is off"));
        };
        let key = token_key(&token);
        if let Some(tokens) = &inner.tokens {
            let table = tokens
                .table
                .read()
                .unwrap_or_else(|e| e.into_inner())
                .clone();
            if let Some(grant) = table.get(&key) {
                return Ok(Principal {
                    key,
                    grant: grant.clone(),
                    expires_at: None,
                });
            }
        }
        match &inner.jwt {
            Some(jwt) => {
                let (grant, expires_at) = jwt.verify(&token)?;
                Ok(Principal {
                    key,
                    grant,
                    expires_at: Some(expires_at),
                })
            }
            None => Err(AuthError::invalid("the token is not valid")),
        }
    }

    /// Takes a stream slot for `principal` (none for an anonymous stream with auth off), or
    /// says which limit is reached.
    pub fn admit(
        &self,
        principal: Option<&Principal>,
        metrics: &Metrics,
    ) -> Result<Option<StreamPermit>, Limit> {
        let Some(inner) = &self.inner else {
            return Ok(None);
        };
        let mut open = inner.open.lock().unwrap_or_else(|e| e.into_inner());
        if inner.max_streams.is_some_and(|max| open.total >= max) {
            metrics.limit_rejected(Limit::Global.as_str());
            return Err(Limit::Global);
        }
        let key = principal.map(|principal| principal.key);
        if let (Some(key), Some(max)) = (key, inner.max_streams_per_token) {
            if open.per_token.get(&key).copied().unwrap_or(0) >= max {
                metrics.limit_rejected(Limit::PerToken.as_str());
                return Err(Limit::PerToken);
            }
        }
        open.total += 1;
        if let Some(key) = key {
            *open.per_token.entry(key).or_insert(0) += 1;
        }
        Ok(Some(StreamPermit {
            inner: inner.clone(),
            key,
        }))
    }

    /// What a stream opened by `principal` with the effective `scope` watches to end early.
    pub fn watch_stream(
        &self,
        principal: &Principal,
        scope: Option<BTreeSet<String>>,
    ) -> StreamAuth {
        let generation = self
            .inner
            .as_ref()
            .and_then(|inner| inner.tokens.as_ref())
            .filter(|_| principal.expires_at.is_none())
            .map(|tokens| tokens.generation.subscribe());
        let deadline = principal.expires_at.map(|at| {
            let now = SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .unwrap_or_default();
            let left = Duration::from_secs(at).saturating_sub(now);
            tokio::time::Instant::now() + left
        });
        // A reload between authentication and now is not seen as a change by the fresh
        // receiver: check the grant once more against the table as it is now.
        let revoked_at_open =
            generation.is_some() && !self.still_grants(&principal.key, scope.as_ref());
        StreamAuth {
            auth: self.clone(),
            key: principal.key,
            scope,
            generation,
            deadline,
            revoked_at_open,
        }
    }

    /// Whether `/metrics` and `/healthz` may be read: always with auth off or
    /// `--public-metrics`; from a loopback peer; otherwise with a token granting every project.
    pub fn may_read_operations(
        &self,
        peer: Option<IpAddr>,
        presented: Presented,
    ) -> Result<(), OperationsRefusal> {
        if !self.enabled()
            || self
                .inner
                .as_ref()
                .is_some_and(|inner| inner.public_metrics)
        {
            return Ok(());
        }
        if peer.is_some_and(|ip| ip.is_loopback() || ip.to_canonical().is_loopback()) {
            return Ok(());
        }
        let principal = self
            .authenticate(presented)
            .map_err(OperationsRefusal::Unauthorized)?;
        match principal.grant {
            Grant::All => Ok(()),
            Grant::Projects(_) => Err(OperationsRefusal::Forbidden),
        }
    }

    fn still_grants(&self, key: &TokenKey, scope: Option<&BTreeSet<String>>) -> bool {
        let Some(tokens) = self.inner.as_ref().and_then(|inner| inner.tokens.as_ref()) else {
            return true;
        };
        let table = tokens
            .table
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        table
            .get(key)
            .is_some_and(|grant| grant_covers(grant, scope))
    }
}

/// Why `/metrics` or `/healthz` is refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OperationsRefusal {
    /// No valid token (401).
    Unauthorized(AuthError),
    /// A token that does not grant every project (403).
    Forbidden,
}

/// A stream slot; released when dropped.
pub struct StreamPermit {
    inner: Arc<Inner>,
    key: Option<TokenKey>,
}

impl Drop for StreamPermit {
    fn drop(&mut self) {
        let mut open = self.inner.open.lock().unwrap_or_else(|e| e.into_inner());
        open.total = open.total.saturating_sub(1);
        if let Some(key) = &self.key {
            if let Some(count) = open.per_token.get_mut(key) {
                *count -= 1;
                if *count == 0 {
                    open.per_token.remove(key);
                }
            }
        }
    }
}

/// What an authenticated stream watches: its token's expiry, and reloads of the tokens file
/// that may revoke it.
pub struct StreamAuth {
    auth: Auth,
    key: TokenKey,
    scope: Option<BTreeSet<String>>,
    generation: Option<watch::Receiver<u64>>,
    deadline: Option<tokio::time::Instant>,
    /// The grant was already gone when the stream was set up.
    revoked_at_open: bool,
}

impl StreamAuth {
    /// Resolves when the stream must end. Cancel-safe (a reload seen and found harmless is
    /// marked seen).
    pub async fn ended(&mut self) -> EndReason {
        if self.revoked_at_open {
            return EndReason::Revoked;
        }
        loop {
            tokio::select! {
                _ = sleep_until_opt(self.deadline) => return EndReason::Expired,
                changed = changed_opt(&mut self.generation) => {
                    if changed.is_err() {
                        // The table is gone with the server: nothing more to watch.
                        self.generation = None;
                    } else if !self.auth.still_grants(&self.key, self.scope.as_ref()) {
                        return EndReason::Revoked;
                    }
                }
            }
        }
    }

    /// [`StreamAuth::ended`] without waiting: whether the stream must end now.
    pub fn check_now(&mut self) -> Option<EndReason> {
        if self.revoked_at_open {
            return Some(EndReason::Revoked);
        }
        if self
            .deadline
            .is_some_and(|deadline| deadline <= tokio::time::Instant::now())
        {
            return Some(EndReason::Expired);
        }
        let generation = self.generation.as_mut()?;
        if generation.has_changed().unwrap_or(false) {
            generation.mark_unchanged();
            if !self.auth.still_grants(&self.key, self.scope.as_ref()) {
                return Some(EndReason::Revoked);
            }
        }
        None
    }
}

async fn sleep_until_opt(deadline: Option<tokio::time::Instant>) {
    match deadline {
        Some(deadline) => tokio::time::sleep_until(deadline).await,
        None => std::future::pending().await,
    }
}

async fn changed_opt(
    receiver: &mut Option<watch::Receiver<u64>>,
) -> Result<(), watch::error::RecvError> {
    match receiver {
        Some(receiver) => receiver.changed().await,
        None => std::future::pending().await,
    }
}

/// How long the file must be quiet after a change before it is read (an editor's write may
/// come in several pieces; replacing the file by a rename is atomic and best).
const SETTLE: Duration = Duration::from_millis(100);

/// Reloads the tokens file on SIGHUP and whenever it changes (its directory is watched, so
/// replacing the file by a rename counts), until `shutdown`. A failed reload keeps the old
/// table and logs why. Returns at once when no tokens file is configured.
///
/// The watcher and the SIGHUP handler are in place when this function returns (the future
/// only serves them), so a change made after the call is never missed. Call it inside a tokio
/// runtime.
pub fn watch_tokens_file(
    auth: Auth,
    mut shutdown: ShutdownSignal,
) -> impl std::future::Future<Output = ()> + Send + 'static {
    let path = auth.tokens_path().map(Path::to_path_buf);
    let setup = path.map(|path| {
        let (watcher, changes) = file_watcher(&path);
        (path, watcher, changes, hangup_signal())
    });
    async move {
        let Some((path, _watcher, mut changes, mut hangup)) = setup else {
            return;
        };
        loop {
            tokio::select! {
                _ = shutdown.wait() => return,
                _ = recv_hangup(&mut hangup) => {}
                Some(()) = changes.recv() => {
                    // Let a multi-part write finish.
                    loop {
                        tokio::select! {
                            more = changes.recv() => if more.is_none() { break },
                            _ = tokio::time::sleep(SETTLE) => break,
                        }
                    }
                }
            }
            match auth.reload_tokens() {
                Ok(count) => {
                    tracing::info!(tokens = count, file = %path.display(), "tokens file reloaded")
                }
                Err(error) => tracing::error!(
                    %error,
                    "tokens file not reloaded; the previous grants stay in force"
                ),
            }
        }
    }
}

/// A watcher of `path`'s directory sending `()` for every change to `path`.
fn file_watcher(
    path: &Path,
) -> (
    Option<notify::RecommendedWatcher>,
    tokio::sync::mpsc::UnboundedReceiver<()>,
) {
    use notify::Watcher as _;
    let path = path.to_path_buf();
    let (changes_tx, changes) = tokio::sync::mpsc::unbounded_channel::<()>();
    let file_name = path.file_name().map(|name| name.to_owned());
    let watched = path.clone();
    let watcher = notify::recommended_watcher(move |event: notify::Result<notify::Event>| {
        let Ok(event) = event else { return };
        let ours = event.paths.iter().any(|changed| {
            changed == &watched || changed.file_name().map(|n| n.to_owned()) == file_name
        });
        if ours && !matches!(event.kind, notify::EventKind::Access(_)) {
            let _ = changes_tx.send(());
        }
    });
    let directory = path
        .parent()
        .filter(|parent| !parent.as_os_str().is_empty())
        .unwrap_or(Path::new("."))
        .to_path_buf();
    let watcher = match watcher {
        Ok(mut watcher) => match watcher.watch(&directory, notify::RecursiveMode::NonRecursive) {
            Ok(()) => Some(watcher),
            Err(error) => {
                tracing::warn!(%error, directory = %directory.display(), "cannot watch the tokens file's directory; reload with SIGHUP");
                None
            }
        },
        Err(error) => {
            tracing::warn!(%error, "cannot watch the tokens file; reload with SIGHUP");
            None
        }
    };
    (watcher, changes)
}

#[cfg(unix)]
type Hangup = Option<tokio::signal::unix::Signal>;
#[cfg(not(unix))]
type Hangup = Option<()>;

fn hangup_signal() -> Hangup {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        match signal(SignalKind::hangup()) {
            Ok(signal) => Some(signal),
            Err(error) => {
                tracing::warn!(%error, "cannot listen for SIGHUP; the tokens file reloads only on change");
                None
            }
        }
    }
    #[cfg(not(unix))]
    None
}

async fn recv_hangup(hangup: &mut Hangup) {
    #[cfg(unix)]
    if let Some(signal) = hangup {
        if signal.recv().await.is_some() {
            return;
        }
    }
    let _ = hangup;
    std::future::pending::<()>().await
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    #[test]
    fn id_key_files_hold_32_bytes_raw_or_in_hex() {
        let raw: Vec<u8> = (0u8..32).collect();
        let expected = IdKey::from_bytes(raw.clone().try_into().unwrap());
        assert_eq!(parse_id_key(&raw), Ok(expected.clone()));
        let hex: String = raw.iter().map(|b| format!("{b:02x}")).collect();
        for text in [
            hex.clone(),
            format!("{hex}\n"),
            format!("{hex}\r\n"),
            hex.to_uppercase(),
        ] {
            assert_eq!(
                parse_id_key(text.as_bytes()),
                Ok(expected.clone()),
                "{text:?}"
            );
        }
        for bad in [
            &raw[..31],
            &[0u8; 33][..],
            b"",
            &hex.as_bytes()[..63],
            format!("{}g", &hex[..63]).as_bytes(),
            format!("{hex}\n\n").as_bytes(),
        ] {
            let error = parse_id_key(bad).unwrap_err();
            assert!(error.contains("32-byte key"), "{error}");
            assert!(
                error.contains(&format!("found {} bytes", bad.len())),
                "{error}"
            );
        }
    }

    fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (name, value) in pairs {
            map.append(
                http::HeaderName::from_bytes(name.as_bytes()).unwrap(),
                HeaderValue::from_str(value).unwrap(),
            );
        }
        map
    }

    #[test]
    fn the_token_comes_from_one_bearer_header_or_one_cookie() {
        let token = |pairs: &[(&str, &str)]| presented_token(&headers(pairs));
        assert_eq!(token(&[]), Ok(None));
        assert_eq!(
            token(&[("authorization", "Bearer abc")]),
            Ok(Some("abc".into()))
        );
        assert_eq!(
            token(&[("authorization", "bearer abc")]),
            Ok(Some("abc".into()))
        );
        assert_eq!(
            token(&[("authorization", "BEARER \t abc= ")]),
            Ok(Some("abc=".into()))
        );
        assert!(
            token(&[("authorization", "Bearer a"), ("authorization", "Bearer a")])
                .unwrap_err()
                .message
                .contains("more than one Authorization")
        );
        assert!(token(&[("authorization", "Bearer a b")])
            .unwrap_err()
            .message
            .contains("whitespace"));
        assert!(token(&[("authorization", "Bearer")])
            .unwrap_err()
            .message
            .contains("empty"));
        assert!(token(&[("authorization", "Basic YTpi")])
            .unwrap_err()
            .message
            .contains("Bearer scheme"));
        assert!(token(&[("authorization", "Bearerabc")]).is_err());
        assert_eq!(
            token(&[("cookie", "a=1; changefeed_token=xyz; b=2")]),
            Ok(Some("xyz".into()))
        );
        assert_eq!(
            token(&[("cookie", "changefeed_token=\"xyz\"")]),
            Ok(Some("xyz".into()))
        );
        assert!(token(&[
            ("cookie", "changefeed_token=a"),
            ("cookie", "changefeed_token=b")
        ])
        .is_err());
        assert_eq!(
            token(&[
                ("authorization", "Bearer h"),
                ("cookie", "changefeed_token=c")
            ]),
            Ok(Some("h".into())),
            "the header wins over the cookie"
        );
    }

    #[test]
    fn tokens_files_parse_with_comments_and_name_lines_without_tokens() {
        let table = parse_tokens("# team tokens\n\nalpha p1,p2  # the app\nroot *\n").unwrap();
        assert_eq!(table.len(), 2);
        assert_eq!(
            table[&token_key("alpha")],
            Grant::Projects(["p1".to_string(), "p2".to_string()].into())
        );
        assert_eq!(table[&token_key("root")], Grant::All);
        for (text, expected) in [
            ("secret1\n", "line 1: a token without projects"),
            ("ok p\nsecret2 p1, p2\n", "line 2: more than two fields"),
            ("secret3 p1,,p2\n", "line 1: an empty project id"),
            ("secret4 p1,*\n", "line 1: * stands alone"),
            (
                "secret5 p\nsecret5 q\n",
                "line 2: the same token as on line 1",
            ),
            ("sec\"ret6 p\n", "line 1: the token has characters"),
        ] {
            let error = parse_tokens(text).unwrap_err();
            assert!(error.starts_with(expected), "{text:?}: {error}");
            assert!(
                !error.contains("secret"),
                "errors never echo a token: {error}"
            );
        }
    }

    #[tokio::test]
    async fn a_stream_set_up_after_its_token_was_revoked_ends_at_once() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("tokens");
        let write = |text: &str| {
            use std::os::unix::fs::PermissionsExt;
            std::fs::write(&path, text).unwrap();
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
        };
        write("tok p1\n");
        let auth = Auth::new(&AuthSettings {
            tokens_file: Some(path.clone()),
            ..AuthSettings::default()
        })
        .unwrap();
        let principal = auth.authenticate(Ok(Some("tok".into()))).expect("granted");
        let scope = Some(["p1".to_string()].into());
        let mut holding = auth.watch_stream(&principal, scope.clone());
        assert_eq!(holding.check_now(), None);
        // Revoked after authentication, before the stream watched.
        write("other p1\n");
        auth.reload_tokens().unwrap();
        let mut late = auth.watch_stream(&principal, scope);
        assert_eq!(late.check_now(), Some(EndReason::Revoked));
        assert_eq!(late.ended().await, EndReason::Revoked);
        assert_eq!(holding.ended().await, EndReason::Revoked);
    }

    #[test]
    fn a_grant_covers_a_scope_within_it() {
        let grant = Grant::Projects(["a".to_string(), "b".to_string()].into());
        assert!(grant_covers(&grant, Some(&["a".to_string()].into())));
        assert!(!grant_covers(
            &grant,
            Some(&["a".to_string(), "c".to_string()].into())
        ));
        assert!(!grant_covers(&grant, None));
        assert!(grant_covers(&Grant::All, None));
    }
}
