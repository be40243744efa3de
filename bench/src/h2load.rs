//! HTTP/2 subscribers: many SSE streams multiplexed over a few h2c connections (prior
//! knowledge) by hyper's own HTTP/2 client, each stream's DATA frames counted by the same
//! [`Decoder`] as the HTTP/1.1 subscribers' in [`crate::loadgen`].
//!
//! One task per connection reads all of that connection's streams through one
//! `FuturesUnordered`; hyper drives the connection itself (framing, flow control) in a task of
//! its own.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures_util::stream::{FuturesUnordered, StreamExt};
use http_body_util::{BodyExt, Empty};
use hyper::body::Incoming;
use hyper::{header, Request, StatusCode};
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::TcpStream;
use tokio::sync::watch;

use crate::loadgen::{unix_micros, Decoder, Shared, Subscribers, Target};

/// Opens `count` subscriptions to `target` as HTTP/2 streams, `per_connection` on each h2c
/// connection (the last one takes the remainder).
pub fn start(
    target: &Target,
    count: usize,
    per_connection: usize,
    latency: bool,
    track_events: usize,
) -> Subscribers {
    let shared = Arc::new(Shared::new(if latency { track_events } else { 0 }));
    let (stop, stop_rx) = watch::channel(false);
    let per_connection = per_connection.max(1);
    let connections = count.div_ceil(per_connection).max(1);
    let tasks = (0..connections)
        .map(|c| {
            let n = per_connection.min(count - c * per_connection);
            tokio::spawn(run_connection(
                target.clone(),
                n,
                shared.clone(),
                stop_rx.clone(),
                latency,
            ))
        })
        .collect();
    Subscribers::from_tasks(shared, stop, tasks, count)
}

/// One HTTP/2 stream's body and decoder.
struct H2Stream {
    body: Incoming,
    decoder: Decoder,
    ready: bool,
}

async fn run_connection(
    target: Target,
    streams: usize,
    shared: Arc<Shared>,
    mut stop: watch::Receiver<bool>,
    latency: bool,
) -> Vec<u32> {
    let mut latencies = Vec::new();
    let tcp =
        match tokio::time::timeout(Duration::from_secs(5), TcpStream::connect(target.addr)).await {
            Ok(Ok(tcp)) => tcp,
            Ok(Err(error)) => {
                shared.fail(format!("h2 connect: {error}"));
                return latencies;
            }
            Err(_) => {
                shared.fail("h2 connect timed out".into());
                return latencies;
            }
        };
    let _ = tcp.set_nodelay(true);
    let handshake = hyper::client::conn::http2::Builder::new(TokioExecutor::new())
        .handshake::<_, Empty<Bytes>>(TokioIo::new(tcp))
        .await;
    let (sender, connection) = match handshake {
        Ok(parts) => parts,
        Err(error) => {
            shared.fail(format!("h2 handshake: {error}"));
            return latencies;
        }
    };
    let driver = tokio::spawn(connection);
    let uri = format!("http://{}{}", target.addr, target.path);
    let next_frame = |mut stream: Box<H2Stream>| async move {
        let frame = stream.body.frame().await;
        (stream, frame)
    };
    let mut pending = FuturesUnordered::new();
    for _ in 0..streams {
        if *stop.borrow() {
            break;
        }
        let request = Request::get(&uri)
            .header(header::ACCEPT, "text/event-stream")
            .body(Empty::<Bytes>::new())
            .expect("a valid request");
        let response = match sender.clone().send_request(request).await {
            Ok(response) => response,
            Err(error) => {
                shared.fail(format!("h2 request: {error}"));
                continue;
            }
        };
        if response.status() != StatusCode::OK {
            shared.fail(format!("h2: HTTP status {}", response.status()));
            continue;
        }
        shared.connected.fetch_add(1, Ordering::Relaxed);
        let mut ready = false;
        if !target.ready_event {
            ready = true;
            shared.ready.fetch_add(1, Ordering::Relaxed);
        }
        pending.push(next_frame(Box::new(H2Stream {
            body: response.into_body(),
            decoder: Decoder::new(latency),
            ready,
        })));
    }
    loop {
        let (mut stream, frame) = tokio::select! {
            biased;
            _ = stop.changed() => break,
            next = pending.next() => match next {
                Some(next) => next,
                None => break,
            },
        };
        match frame {
            None => {
                shared.closed.fetch_add(1, Ordering::Relaxed);
                if !*stop.borrow() {
                    shared.fail("the server ended an HTTP/2 stream".into());
                }
                continue;
            }
            Some(Err(error)) => {
                if !*stop.borrow() {
                    shared.fail(format!("h2 body: {error}"));
                }
                continue;
            }
            Some(Ok(frame)) => {
                if let Some(data) = frame.data_ref() {
                    let now = if latency { unix_micros() } else { 0 };
                    let stream = &mut *stream;
                    if let Err(error) = stream.decoder.feed(
                        data,
                        &mut stream.ready,
                        &shared,
                        now,
                        latency.then_some(&mut latencies),
                    ) {
                        shared.fail(error);
                        continue;
                    }
                }
            }
        }
        pending.push(next_frame(stream));
    }
    drop(pending);
    driver.abort();
    latencies
}
