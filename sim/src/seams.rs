//! Planted bugs, each a narrow wrapper around one real part of the product at one of its seams,
//! never a copy of product code. `tests/mutants.rs` proves the simulation catches every one
//! within the CI seed budget.
//!
//! - The store ([`FaultyStore`] around the [`MemoryStore`]): a replay window that drops its
//!   first row (the classic `>=` for `>` off-by-one), or reports a head no later than the
//!   window's end (head read in an earlier snapshot than the rows).
//! - The live feed ([`LateFeed`] around the product's `Broadcaster`, through its `LiveFeed`
//!   seam): a subscription that only takes effect a moment after `subscribe` returned, so the
//!   events published in between reach the subscriber neither live nor by replay.
//! - The transport ([`duplicating`], a layer in front of the product's router, as a proxy
//!   would sit): every few change frames one is sent twice.
//! - Authentication ([`bypassing_grants`], a layer in front of the router): every request is
//!   authenticated as a token granting every project, whatever token the client presented —
//!   the grant check bypassed.

use std::time::Duration;

use axum::body::Body;
use axum::http::header;
use axum::response::Response;
use axum::Router;
use bytes::{Bytes, BytesMut};
use changefeed::broadcast::{Broadcaster, LiveEvent, LiveFeed, LiveReceiver};
use changefeed::store::{ChangeWatch, LogBounds, Retention, Rows, Store, StoreError};
use changefeed_core::{Event, FetchRequest, Filter, Seq};
use futures_util::StreamExt;
use tokio::sync::broadcast::error::{RecvError, TryRecvError};
use tokio::time::Instant;

use crate::memory::MemoryStore;
use crate::plan::ROOT_TOKEN;

/// What to plant.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Bug {
    /// Nothing: the product as it ships.
    None,
    /// The store's replay windows drop their first row.
    DropFirstRow,
    /// The store's replay windows report a head no later than their end: after a lag, the
    /// core then believes the gap is closed and goes live with a hole.
    StaleHead,
    /// Live subscriptions take effect [`LATE_BY`] after `subscribe` returned.
    SubscribeLate,
    /// A proxy in front of the server sends every [`DUPLICATE_EVERY`]th change frame twice.
    DuplicateFrame,
    /// A layer in front of the server presents [`ROOT_TOKEN`] for every request (a confused
    /// deputy): the client's own grant is never checked.
    GrantBypass,
}

/// How late a [`LateFeed`] subscription takes effect.
pub const LATE_BY: Duration = Duration::from_millis(50);

/// Every how many change frames [`duplicating`] repeats one.
pub const DUPLICATE_EVERY: u64 = 7;

/// The [`MemoryStore`] with a planted replay bug ([`Bug::DropFirstRow`] or
/// [`Bug::StaleHead`]); every other call passes through.
#[derive(Debug, Clone)]
pub struct FaultyStore {
    /// The shared log.
    pub inner: MemoryStore,
    /// Which bug ([`Bug::None`] passes everything through).
    pub bug: Bug,
}

impl Store for FaultyStore {
    async fn bounds(&self) -> Result<LogBounds, StoreError> {
        self.inner.bounds().await
    }

    async fn window(&self, filter: &Filter, range: FetchRequest) -> Result<Rows, StoreError> {
        let (mut rows, mut bounds) = self.inner.window(filter, range).await?.into_parts();
        match self.bug {
            Bug::DropFirstRow if !rows.is_empty() => {
                rows.remove(0);
            }
            Bug::StaleHead => bounds.head = bounds.head.min(range.upto),
            _ => {}
        }
        Ok(Rows::new(rows, bounds))
    }

    fn rows_after(
        &self,
        after: Seq,
        limit: usize,
    ) -> impl std::future::Future<Output = Result<Rows, StoreError>> + Send {
        self.inner.rows_after(after, limit)
    }

    fn missing_projects(
        &self,
        ids: &[String],
    ) -> impl std::future::Future<Output = Result<Vec<String>, StoreError>> + Send {
        self.inner.missing_projects(ids)
    }

    fn changes(&self) -> ChangeWatch {
        self.inner.changes()
    }

    fn mark_published(
        &self,
        seq: Seq,
    ) -> impl std::future::Future<Output = Result<(), StoreError>> + Send {
        self.inner.mark_published(seq)
    }

    fn prune(
        &self,
        retention: Retention,
        batch: usize,
    ) -> impl std::future::Future<Output = Result<u64, StoreError>> + Send {
        self.inner.prune(retention, batch)
    }
}

/// The product's feed, with subscriptions that take effect [`LATE_BY`] late.
#[derive(Debug)]
pub struct LateFeed {
    inner: Broadcaster,
}

impl LateFeed {
    /// Wraps the feed the server was given.
    pub fn new(inner: Broadcaster) -> LateFeed {
        LateFeed { inner }
    }
}

/// A receiver that loses whatever arrives before its subscription took effect.
#[derive(Debug)]
pub struct LateReceiver {
    inner: tokio::sync::broadcast::Receiver<LiveEvent>,
    active_from: Instant,
}

impl LiveFeed for LateFeed {
    type Receiver = LateReceiver;

    fn subscribe(&self) -> (LateReceiver, Seq) {
        let (inner, published) = self.inner.subscribe();
        let receiver = LateReceiver {
            inner,
            active_from: Instant::now() + LATE_BY,
        };
        (receiver, published)
    }

    fn publish(&self, event: Event) {
        self.inner.publish(event);
    }

    fn published(&self) -> Seq {
        self.inner.published()
    }

    fn receiver_count(&self) -> usize {
        self.inner.receiver_count()
    }
}

impl LiveReceiver for LateReceiver {
    async fn recv(&mut self) -> Result<LiveEvent, RecvError> {
        loop {
            let event = self.inner.recv().await?;
            if Instant::now() >= self.active_from {
                return Ok(event);
            }
        }
    }

    fn try_recv(&mut self) -> Result<LiveEvent, TryRecvError> {
        loop {
            let event = self.inner.try_recv()?;
            if Instant::now() >= self.active_from {
                return Ok(event);
            }
        }
    }
}

/// The router behind a proxy that sends every [`DUPLICATE_EVERY`]th change frame of each
/// event stream twice.
pub fn duplicating(router: Router) -> Router {
    router.layer(axum::middleware::map_response(duplicate_frames))
}

async fn duplicate_frames(response: Response) -> Response {
    let is_stream = response
        .headers()
        .get(header::CONTENT_TYPE)
        .is_some_and(|value| value.as_bytes().starts_with(b"text/event-stream"));
    if !is_stream {
        return response;
    }
    let (parts, body) = response.into_parts();
    let mut changes = 0u64;
    // The stream driver sends whole frames in each chunk.
    let body = body.into_data_stream().map(move |chunk| {
        chunk.map(|chunk| {
            let mut out = BytesMut::with_capacity(chunk.len() * 2);
            for frame in frames(&chunk) {
                out.extend_from_slice(frame);
                if is_change(frame) {
                    changes += 1;
                    if changes % DUPLICATE_EVERY == 0 {
                        out.extend_from_slice(frame);
                    }
                }
            }
            Bytes::from(out)
        })
    });
    Response::from_parts(parts, Body::from_stream(body))
}

/// The router behind a layer that replaces every request's `Authorization` with
/// [`ROOT_TOKEN`]'s, so each client reads with a grant of every project.
pub fn bypassing_grants(router: Router) -> Router {
    router.layer(axum::middleware::map_request(present_root_token))
}

async fn present_root_token(mut request: axum::extract::Request) -> axum::extract::Request {
    if request.headers().contains_key(header::AUTHORIZATION) {
        let root = format!("Bearer {ROOT_TOKEN}");
        if let Ok(value) = header::HeaderValue::from_str(&root) {
            request.headers_mut().insert(header::AUTHORIZATION, value);
        }
    }
    request
}

/// The frames of a chunk, each with its blank line.
fn frames(chunk: &[u8]) -> impl Iterator<Item = &[u8]> {
    let mut rest = chunk;
    std::iter::from_fn(move || {
        if rest.is_empty() {
            return None;
        }
        let end = rest
            .windows(2)
            .position(|pair| pair == b"\n\n")
            .map_or(rest.len(), |at| at + 2);
        let (frame, tail) = rest.split_at(end);
        rest = tail;
        Some(frame)
    })
}

/// Whether a frame is a change event (an `event:` that is not `changefeed.*`).
fn is_change(frame: &[u8]) -> bool {
    frame.split(|byte| *byte == b'\n').any(|line| {
        line.strip_prefix(b"event: ")
            .is_some_and(|kind| !kind.starts_with(b"changefeed."))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_split_at_blank_lines_and_changes_are_recognised() {
        let chunk = b"id: e:1\nevent: pr_updated\ndata: {}\n\n: hb\n\nid: e:2\nevent: changefeed.ready\ndata: {}\n\n";
        let split: Vec<&[u8]> = frames(chunk).collect();
        assert_eq!(split.len(), 3);
        assert_eq!(split[1], b": hb\n\n");
        assert!(is_change(split[0]));
        assert!(!is_change(split[1]));
        assert!(!is_change(split[2]));
    }
}
