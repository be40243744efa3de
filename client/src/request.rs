//! One connection attempt over hyper's HTTP/1 client connection: request building, redirects,
//! and a one-shot request helper for the contract service's callbacks.

use std::io;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::header::{self, HeaderName, HeaderValue};
use http::{Method, Request, Response, StatusCode, Uri};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use url::Url;

use crate::{error_chain, ClientConfig, ClientError, Connector};

/// The most bytes of an error response body kept for the error message.
const SNIPPET_LIMIT: usize = 4096;

/// How long reading an error response body for the message may take.
const SNIPPET_TIMEOUT: Duration = Duration::from_secs(2);

/// Headers the client owns; a custom header may not set them.
const RESERVED: [HeaderName; 5] = [
    header::HOST,
    header::CONTENT_LENGTH,
    header::TRANSFER_ENCODING,
    header::CONNECTION,
    HeaderName::from_static("last-event-id"),
];

/// A validated request description, shared by every connection attempt.
#[derive(Debug)]
pub(crate) struct Plan {
    pub(crate) url: Url,
    pub(crate) method: Method,
    pub(crate) headers: Vec<(HeaderName, HeaderValue)>,
    pub(crate) body: Bytes,
    pub(crate) max_redirects: usize,
}

impl Plan {
    pub(crate) fn from_config(config: &ClientConfig) -> Result<Plan, ClientError> {
        let url = parse_url(&config.url)?;
        let mut headers = Vec::with_capacity(config.headers.len());
        for (name, value) in &config.headers {
            let name = HeaderName::from_bytes(name.as_bytes()).map_err(|_| {
                ClientError::InvalidConfig(format!("{name:?} is not a valid header name"))
            })?;
            if RESERVED.contains(&name) {
                return Err(ClientError::InvalidConfig(format!(
                    "the client sets the {name} header itself; it cannot be a custom header"
                )));
            }
            let value = HeaderValue::from_str(value).map_err(|_| {
                ClientError::InvalidConfig(format!("{value:?} is not a valid value for {name}"))
            })?;
            headers.push((name, value));
        }
        Ok(Plan {
            url,
            method: config.method.clone(),
            headers,
            body: config.body.clone(),
            max_redirects: config.max_redirects,
        })
    }
}

fn parse_url(text: &str) -> Result<Url, ClientError> {
    let mut url = Url::parse(text)
        .map_err(|error| ClientError::InvalidConfig(format!("{text:?} is not a URL: {error}")))?;
    check_url(&url)
        .map_err(|problem| ClientError::InvalidConfig(format!("{text:?}: {problem}")))?;
    url.set_fragment(None);
    Ok(url)
}

fn check_url(url: &Url) -> Result<(), String> {
    if !matches!(url.scheme(), "http" | "https") {
        return Err(format!(
            "the scheme must be http or https, not {:?}",
            url.scheme()
        ));
    }
    if url.host_str().is_none_or(str::is_empty) {
        return Err("the URL has no host".into());
    }
    Ok(())
}

/// The URL as shown in items and errors: without user info (which may hold a password).
pub(crate) fn redacted(url: &Url) -> String {
    let mut url = url.clone();
    let _ = url.set_username("");
    let _ = url.set_password(None);
    url.into()
}

/// The URL as an `http::Uri` for the connector, without user info or fragment.
fn to_uri(url: &Url) -> Result<Uri, String> {
    let mut url = url.clone();
    // Only fails for URLs that cannot have credentials, which then have none.
    let _ = url.set_username("");
    let _ = url.set_password(None);
    url.set_fragment(None);
    url.as_str()
        .parse::<Uri>()
        .map_err(|error| format!("{url} cannot be requested: {error}"))
}

fn host_header(url: &Url) -> Result<HeaderValue, String> {
    let host = url.host_str().unwrap_or_default();
    let value = match url.port() {
        Some(port) => format!("{host}:{port}"),
        None => host.to_owned(),
    };
    HeaderValue::from_str(&value).map_err(|_| format!("{value:?} is not a valid Host header"))
}

/// A background task driving one hyper connection; aborted when dropped, which closes the
/// connection.
#[derive(Debug)]
pub(crate) struct ConnTask(tokio::task::JoinHandle<()>);

impl Drop for ConnTask {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// A response head the client must judge, after redirects.
#[derive(Debug)]
pub(crate) struct Opened {
    pub(crate) head: http::response::Parts,
    pub(crate) body: Incoming,
    /// The start of the body of an error status (>= 400), read for the error message; the body
    /// has then been consumed.
    pub(crate) snippet: Option<String>,
    pub(crate) conn: ConnTask,
    /// The URL that answered.
    pub(crate) url: Url,
}

/// Why a connection attempt produced no response to judge.
#[derive(Debug)]
pub(crate) enum OpenError {
    /// Connect, handshake or request failed: retry with backoff.
    Retry(String),
    /// Retrying cannot help.
    Fatal(ClientError),
}

/// Opens one connection attempt: connects, sends the request and follows redirects.
pub(crate) async fn open<C: Connector>(
    connector: C,
    plan: Arc<Plan>,
    last_event_id: Option<String>,
) -> Result<Opened, OpenError> {
    let mut url = plan.url.clone();
    let mut method = plan.method.clone();
    let mut body = plan.body.clone();
    let mut drop_body_headers = false;
    let mut cross_origin = false;
    let mut hops = 0;
    loop {
        let uri = to_uri(&url).map_err(|e| OpenError::Fatal(ClientError::InvalidConfig(e)))?;
        let request = build_request(
            &plan,
            &url,
            &uri,
            Shape {
                method: &method,
                body: &body,
                drop_body_headers,
                cross_origin,
            },
            last_event_id.as_deref(),
        )
        .map_err(|e| OpenError::Fatal(ClientError::InvalidConfig(e)))?;
        let (response, conn) = send(&connector, &uri, request).await?;
        let status = response.status();
        if !is_redirect(status) {
            let (head, mut body) = response.into_parts();
            let snippet = if status.as_u16() >= 400 {
                Some(read_snippet(&mut body).await)
            } else {
                None
            };
            return Ok(Opened {
                head,
                body,
                snippet,
                conn,
                url,
            });
        }
        drop(conn);
        let redirect_error = |problem: String| {
            OpenError::Fatal(ClientError::Redirect {
                status: status.as_u16(),
                url: redacted(&url),
                problem,
            })
        };
        let location = match response.headers().get(header::LOCATION) {
            None => return Err(redirect_error("the response has no Location header".into())),
            Some(value) => match value.to_str() {
                Ok(text) if !text.trim().is_empty() => text.trim().to_owned(),
                Ok(_) => return Err(redirect_error("the Location header is empty".into())),
                Err(_) => {
                    return Err(redirect_error(
                        "the Location header is not visible ASCII".into(),
                    ))
                }
            },
        };
        if hops >= plan.max_redirects {
            return Err(redirect_error(format!(
                "more than {} redirects (to {location})",
                plan.max_redirects
            )));
        }
        let mut next = url
            .join(&location)
            .map_err(|error| redirect_error(format!("Location {location:?}: {error}")))?;
        check_url(&next)
            .map_err(|problem| redirect_error(format!("Location {location:?}: {problem}")))?;
        next.set_fragment(None);
        let to_get = match status.as_u16() {
            301 | 302 => method == Method::POST,
            303 => method != Method::GET && method != Method::HEAD,
            _ => false,
        };
        if to_get {
            method = Method::GET;
            body = Bytes::new();
            drop_body_headers = true;
        }
        cross_origin |= next.origin() != url.origin();
        tracing::debug!(%status, from = %url, to = %next, "following redirect");
        url = next;
        hops += 1;
    }
}

fn is_redirect(status: StatusCode) -> bool {
    matches!(status.as_u16(), 301 | 302 | 303 | 307 | 308)
}

/// The method and body of one hop, and what a redirect removed.
struct Shape<'a> {
    method: &'a Method,
    body: &'a Bytes,
    /// A redirect turned the request into a `GET`: drop the body's headers.
    drop_body_headers: bool,
    /// A redirect crossed origins: drop credentials.
    cross_origin: bool,
}

fn build_request(
    plan: &Plan,
    url: &Url,
    uri: &Uri,
    shape: Shape<'_>,
    last_event_id: Option<&str>,
) -> Result<Request<Full<Bytes>>, String> {
    let target = uri.path_and_query().map_or("/", |p| p.as_str());
    let mut request = Request::new(Full::new(shape.body.clone()));
    *request.method_mut() = shape.method.clone();
    *request.uri_mut() = target
        .parse()
        .map_err(|error| format!("{target:?} is not a request target: {error}"))?;
    let headers = request.headers_mut();
    headers.insert(header::HOST, host_header(url)?);
    headers.insert(
        header::ACCEPT,
        HeaderValue::from_static("text/event-stream"),
    );
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    for (name, _) in &plan.headers {
        headers.remove(name);
    }
    for (name, value) in &plan.headers {
        let credential = matches!(
            name.as_str(),
            "authorization" | "cookie" | "proxy-authorization"
        );
        let body_header = matches!(
            name.as_str(),
            "content-type" | "content-encoding" | "content-language" | "content-location"
        );
        if (shape.cross_origin && credential) || (shape.drop_body_headers && body_header) {
            continue;
        }
        headers.append(name.clone(), value.clone());
    }
    if !shape.body.is_empty() && !headers.contains_key(header::CONTENT_TYPE) {
        headers.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("text/plain; charset=utf-8"),
        );
    }
    if let Some(id) = last_event_id.filter(|id| !id.is_empty()) {
        // Ids come from `id:` lines, so they hold no CR or LF; other control bytes cannot
        // travel in a header and the position is then not sent.
        match HeaderValue::from_bytes(id.as_bytes()) {
            Ok(value) => {
                headers.insert(HeaderName::from_static("last-event-id"), value);
            }
            Err(_) => tracing::warn!(?id, "the last event id cannot be sent as a header"),
        }
    }
    Ok(request)
}

/// Connects, hands the connection to a background task, and sends `request`.
async fn send<C: Connector>(
    connector: &C,
    uri: &Uri,
    request: Request<Full<Bytes>>,
) -> Result<(Response<Incoming>, ConnTask), OpenError> {
    let authority = uri.authority().map_or("", |a| a.as_str()).to_owned();
    let io = connector
        .connect(uri)
        .await
        .map_err(|error| match error.kind() {
            io::ErrorKind::Unsupported
            | io::ErrorKind::InvalidInput
            | io::ErrorKind::InvalidData => OpenError::Fatal(ClientError::Connector(error)),
            _ => OpenError::Retry(format!("cannot connect to {authority}: {error}")),
        })?;
    let (mut sender, conn) = hyper::client::conn::http1::handshake::<_, Full<Bytes>>(io)
        .await
        .map_err(|error| {
            OpenError::Retry(format!(
                "HTTP handshake with {authority} failed: {}",
                error_chain(&error)
            ))
        })?;
    let conn = ConnTask(tokio::spawn(async move {
        if let Err(error) = conn.await {
            tracing::debug!(error = %error_chain(&error), "event stream connection ended");
        }
    }));
    sender
        .ready()
        .await
        .map_err(|error| OpenError::Retry(format!("{authority}: {}", error_chain(&error))))?;
    let response = sender.send_request(request).await.map_err(|error| {
        OpenError::Retry(format!(
            "request to {authority} failed: {}",
            error_chain(&error)
        ))
    })?;
    Ok((response, conn))
}

/// Up to [`SNIPPET_LIMIT`] bytes of an error body, read for at most [`SNIPPET_TIMEOUT`].
async fn read_snippet(body: &mut Incoming) -> String {
    let mut bytes = Vec::new();
    let read = async {
        while bytes.len() < SNIPPET_LIMIT {
            match body.frame().await {
                Some(Ok(frame)) => {
                    if let Ok(data) = frame.into_data() {
                        let room = SNIPPET_LIMIT - bytes.len();
                        bytes.extend_from_slice(&data[..data.len().min(room)]);
                    }
                }
                Some(Err(_)) | None => break,
            }
        }
    };
    // A slow or endless error body only shortens the message.
    let _ = tokio::time::timeout(SNIPPET_TIMEOUT, read).await;
    String::from_utf8_lossy(&bytes).into_owned()
}

/// One request, answered in full (the body bounded to 1 MiB), within `timeout`: the contract
/// service's callbacks.
#[cfg(feature = "contract-service")]
pub(crate) async fn request_once<C: Connector>(
    connector: &C,
    method: Method,
    url: &str,
    content_type: Option<&'static str>,
    body: Bytes,
    timeout: Duration,
) -> io::Result<(StatusCode, Bytes)> {
    let invalid = |problem: String| io::Error::new(io::ErrorKind::InvalidInput, problem);
    let url = Url::parse(url).map_err(|error| invalid(format!("{url:?}: {error}")))?;
    check_url(&url).map_err(invalid)?;
    let uri = to_uri(&url).map_err(invalid)?;
    let target = uri.path_and_query().map_or("/", |p| p.as_str());
    let mut request = Request::new(Full::new(body));
    *request.method_mut() = method;
    *request.uri_mut() = target
        .parse()
        .map_err(|error| invalid(format!("{error}")))?;
    request
        .headers_mut()
        .insert(header::HOST, host_header(&url).map_err(invalid)?);
    if let Some(content_type) = content_type {
        request
            .headers_mut()
            .insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    }
    let exchange = async {
        let (response, _conn) =
            send(connector, &uri, request)
                .await
                .map_err(|error| match error {
                    OpenError::Retry(message) => io::Error::other(message),
                    OpenError::Fatal(error) => io::Error::other(error.to_string()),
                })?;
        let status = response.status();
        let body = http_body_util::Limited::new(response.into_body(), 1 << 20)
            .collect()
            .await
            .map_err(|error| io::Error::other(error.to_string()))?
            .to_bytes();
        Ok((status, body))
    };
    tokio::time::timeout(timeout, exchange).await.map_err(|_| {
        io::Error::new(
            io::ErrorKind::TimedOut,
            format!("no answer from {url} within {timeout:?}"),
        )
    })?
}
