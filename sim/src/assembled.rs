//! A second event-stream server, assembled in the simulation from the product's public pieces
//! (the core's [`Subscription`], the [`Broadcaster`], the
//! [`Tailer`](changefeed::tailer::Tailer) and any [`Store`]), with a plain axum handler. Its
//! [`Variant::Correct`] is a control (it must pass every seed, as the real server must); the
//! other variants are planted bugs the simulation must catch:
//!
//! - [`Variant::SubscribeLate`]: "forgets to subscribe before replay" — reads the log's bounds,
//!   yields, and only then subscribes to the live feed, using the stale head as `P`. Events
//!   published during the yield are neither replayed nor delivered live: loss.
//! - [`Variant::BypassDedup`]: once the subscription is live, the shell writes live frames from
//!   the broadcast receiver itself (filter-checked, not seq-checked) instead of passing them
//!   through the core, so after a lag fallback the events that replay already covered are sent
//!   a second time: duplicates.

use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::extract::{RawQuery, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use bytes::Bytes;
use changefeed::broadcast::{Broadcaster, LiveEvent};
use changefeed::store::Store;
use changefeed_core::{
    EventsQuery, Filter, LogPosition, Output, Phase, ReplayPage, Subscription, SubscriptionConfig,
};
use tokio::sync::broadcast::error::RecvError;
use tokio::sync::broadcast::Receiver;
use tokio::time::Instant;

/// Which shell to assemble.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Variant {
    /// Subscribe first (P read atomically with the subscription), everything through the core.
    Correct,
    /// Read bounds, yield, then subscribe — with the stale head as `P`.
    SubscribeLate,
    /// Write live frames straight from the receiver once live, bypassing the core's dedup.
    BypassDedup,
}

/// What one handler needs.
pub struct Assembled<S> {
    /// The log.
    pub store: S,
    /// The live feed the tailer publishes to.
    pub feed: Arc<Broadcaster>,
    /// Per-subscription tunables.
    pub config: SubscriptionConfig,
    /// Which shell.
    pub variant: Variant,
    /// The origin of the core's `now`.
    pub origin: Instant,
}

/// The router: `GET /api/v1/events` only.
pub fn router<S: Store>(state: Arc<Assembled<S>>) -> Router {
    Router::new()
        .route("/api/v1/events", get(events::<S>))
        .with_state(state)
}

fn error(status: StatusCode, body: String) -> Response {
    (status, [("content-type", "application/json")], body).into_response()
}

async fn events<S: Store>(
    State(state): State<Arc<Assembled<S>>>,
    RawQuery(query): RawQuery,
    headers: HeaderMap,
) -> Response {
    let query = match EventsQuery::parse(query.as_deref()) {
        Ok(query) => query,
        Err(e) => return error(StatusCode::BAD_REQUEST, e.to_json()),
    };
    if let Some(projects) = &query.filter.projects {
        let ids: Vec<String> = projects.iter().cloned().collect();
        match state.store.missing_projects(&ids).await {
            Ok(missing) if missing.is_empty() => {}
            Ok(_) => return error(StatusCode::NOT_FOUND, "{}".into()),
            Err(_) => return error(StatusCode::SERVICE_UNAVAILABLE, "{}".into()),
        }
    }
    let start = query.start_from_header(headers.get("last-event-id").map(|v| v.as_bytes()));
    let (receiver, published, bounds) = match state.variant {
        Variant::SubscribeLate => {
            let Ok(bounds) = state.store.bounds().await else {
                return error(StatusCode::SERVICE_UNAVAILABLE, "{}".into());
            };
            // A store read or scheduling delay between the two steps.
            tokio::time::sleep(Duration::from_millis(20)).await;
            let (receiver, _fresh) = state.feed.subscribe();
            (receiver, bounds.head, bounds)
        }
        Variant::Correct | Variant::BypassDedup => {
            let (receiver, published) = state.feed.subscribe();
            let Ok(bounds) = state.store.bounds().await else {
                return error(StatusCode::SERVICE_UNAVAILABLE, "{}".into());
            };
            (receiver, published, bounds)
        }
    };
    let log = LogPosition {
        epoch: bounds.epoch,
        head: bounds.head,
        floor: bounds.floor,
        published,
    };
    let now = state.origin.elapsed();
    let subscription =
        Subscription::new(start, query.filter.clone(), log, state.config.clone(), now);
    let stream = Stream {
        state: state.clone(),
        filter: query.filter,
        subscription,
        receiver,
        raw: None,
    };
    let body = futures_util::stream::unfold(stream, |mut stream| async move {
        let frame = stream.next_frame().await?;
        Some((Ok::<Bytes, std::io::Error>(frame), stream))
    });
    Response::builder()
        .status(StatusCode::OK)
        .header("content-type", "text/event-stream")
        .header("cache-control", "no-cache")
        .body(Body::from_stream(body))
        .unwrap_or_else(|_| StatusCode::INTERNAL_SERVER_ERROR.into_response())
}

struct Stream<S> {
    state: Arc<Assembled<S>>,
    filter: Filter,
    subscription: Subscription,
    receiver: Receiver<LiveEvent>,
    /// A frame the bypassing variant writes itself.
    raw: Option<Bytes>,
}

impl<S: Store> Stream<S> {
    /// The next frame to write, or `None` at the end of the stream. Store errors end it.
    async fn next_frame(&mut self) -> Option<Bytes> {
        loop {
            if let Some(frame) = self.raw.take() {
                return Some(frame);
            }
            match self.subscription.poll_output() {
                Some(Output::Frame(frame)) => return Some(frame),
                Some(Output::Close) => return None,
                Some(Output::Fetch(fetch)) => {
                    let window = self
                        .state
                        .store
                        .window(&self.filter, fetch.after, fetch.upto)
                        .await
                        .ok()?;
                    let page = ReplayPage {
                        rows: window.rows,
                        head: window.bounds.head,
                        floor: window.bounds.floor,
                    };
                    let now = self.state.origin.elapsed();
                    self.subscription.handle_page(page, now);
                }
                None => {
                    let deadline = self
                        .subscription
                        .poll_timeout()
                        .map(|(at, _)| self.state.origin + at);
                    tokio::select! {
                        biased;
                        live = self.receiver.recv() => {
                            let now = self.state.origin.elapsed();
                            match live {
                                Ok(event) => {
                                    let bypass = self.state.variant == Variant::BypassDedup
                                        && self.subscription.phase() == Phase::Live;
                                    if bypass {
                                        if self.filter.matches(&event.project_id, &event.kind) {
                                            self.raw = Some(event.frame.clone());
                                        }
                                    } else {
                                        self.subscription.handle_live(&event, now);
                                    }
                                }
                                Err(RecvError::Lagged(_)) => self.subscription.handle_lagged(now),
                                Err(RecvError::Closed) => return None,
                            }
                        }
                        () = sleep_until_opt(deadline) => {
                            let now = self.state.origin.elapsed();
                            self.subscription.handle_timeout(now);
                        }
                    }
                }
            }
        }
    }
}

async fn sleep_until_opt(deadline: Option<Instant>) {
    match deadline {
        Some(deadline) => tokio::time::sleep_until(deadline).await,
        None => std::future::pending().await,
    }
}
