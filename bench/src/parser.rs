//! SSE parser throughput: the core's `Parser` against `eventsource-stream` on one corpus.

use std::time::Instant;

use changefeed_core::sse::{Item, Parser};

use crate::report::{Better, Compare, Report};
use crate::Config;

fn corpus(mib: usize) -> (Vec<u8>, usize) {
    let mut corpus = Vec::with_capacity(mib << 20);
    let mut count = 0;
    let mut seq = 1u64;
    while corpus.len() < mib << 20 {
        let mut frame = format!(
            "id: 0123456789abcdef:{seq}\nevent: session_updated\ndata: {{\"seq\":{seq},\"projectId\":\"p1\",\"type\":\"session_updated\",\"payload\":{{\"id\":\"s1\",\"pad\":\""
        );
        let tail = "\"}}\n\n";
        let pad = 200usize.saturating_sub(frame.len() + tail.len());
        frame.push_str(&"x".repeat(pad));
        frame.push_str(tail);
        corpus.extend_from_slice(frame.as_bytes());
        count += 1;
        seq += 1;
    }
    (corpus, count)
}

pub fn run(config: &Config, report: &mut Report) {
    let mib = config.parser_mib();
    let (corpus, count) = corpus(mib);
    let chunk = 4096;
    let runs = if config.quick { 5 } else { 11 };
    let size = corpus.len() as f64 / (1 << 20) as f64;
    let median = |mut v: Vec<f64>| {
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    };

    let mut ours = Vec::new();
    let mut ours_ok = true;
    for _ in 0..runs {
        let t = Instant::now();
        let mut parser = Parser::new("");
        let mut events = 0usize;
        for piece in corpus.chunks(chunk) {
            if parser.feed(piece).is_err() {
                ours_ok = false;
            }
            while let Some(item) = parser.next_item() {
                if matches!(item, Item::Event(_)) {
                    events += 1;
                }
            }
        }
        ours_ok &= events == count;
        ours.push(size / t.elapsed().as_secs_f64());
    }

    let mut theirs = Vec::new();
    let mut theirs_ok = true;
    for _ in 0..runs {
        let chunks: Vec<bytes::Bytes> = corpus
            .chunks(chunk)
            .map(bytes::Bytes::copy_from_slice)
            .collect();
        let t = Instant::now();
        // The input stream is always ready, so polling with a no-op waker never sees Pending.
        let events = {
            use eventsource_stream::Eventsource;
            use futures_util::Stream;
            let mut stream = std::pin::pin!(futures_util::stream::iter(
                chunks.into_iter().map(Ok::<_, std::convert::Infallible>),
            )
            .eventsource());
            let mut cx = std::task::Context::from_waker(futures_util::task::noop_waker_ref());
            let mut events = 0usize;
            while let std::task::Poll::Ready(Some(event)) = stream.as_mut().poll_next(&mut cx) {
                if event.is_ok() {
                    events += 1;
                }
            }
            events
        };
        theirs_ok &= events == count;
        theirs.push(size / t.elapsed().as_secs_f64());
    }
    let setup = format!(
        "{size:.0} MiB corpus of {count} 200-byte events in {chunk}-byte chunks, median of {runs} runs"
    );
    let result = |ok: bool, runs: Vec<f64>| {
        if ok {
            Ok(median(runs))
        } else {
            Err("wrong event count".to_string())
        }
    };
    let (ours, theirs) = (result(ours_ok, ours), result(theirs_ok, theirs));
    let table = Compare {
        scenario: "5 parser",
        setup: &setup,
        peer: "eventsource-stream 0.2",
    };
    let metric = "SSE parse throughput (MiB/s)";
    table.row(
        report,
        metric,
        &ours,
        Some(&theirs),
        |mib_s| *mib_s,
        Better::Higher,
    );
}
