//! Proves connection lifecycle hygiene: clients that connect and go away — while idle, or while
//! events flow — leave nothing behind: the `changefeed_subscribers` gauge returns to 0 and the
//! runtime's task count returns to where it was (the server runs in the test's runtime, so
//! every task it spawns is counted).

use std::time::Duration;

use changefeed_tests::{project_sql, session_sql, within, SseStream, TestServer};

const CLIENTS: usize = 25;

fn alive_tasks() -> usize {
    tokio::runtime::Handle::current()
        .metrics()
        .num_alive_tasks()
}

/// Polls until the task count is back at `baseline` (bounded by the failure timeout).
async fn wait_tasks(baseline: usize) {
    within(&format!("the task count to return to {baseline}"), async {
        while alive_tasks() > baseline {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clients_that_go_away_leave_nothing_behind() {
    let server = TestServer::start().await;
    server.write(&project_sql("p")).await;
    server.settle().await;
    // One request first, so whatever the server spawns once (the shutdown watcher of the
    // accept loop, the tailer, ...) is already there.
    server.wait_metric("changefeed_subscribers", 0.0).await;
    wait_tasks(alive_tasks()).await;
    let baseline = alive_tasks();

    for round in 0..3 {
        let mut clients: Vec<SseStream> = Vec::new();
        for i in 0..CLIENTS {
            let query = match i % 3 {
                0 => "/api/v1/events".to_owned(),
                1 => "/api/v1/events?project=p&types=session_*".to_owned(),
                _ => "/api/v1/events?after=0".to_owned(),
            };
            let mut client = server.stream(&query).await;
            assert_eq!(client.status, 200);
            let ready = client
                .events_until(|event| event.event_type == "changefeed.ready")
                .await;
            assert!(!ready.is_empty());
            clients.push(client);
        }
        server
            .wait_metric("changefeed_subscribers", CLIENTS as f64)
            .await;
        assert!(
            alive_tasks() > baseline,
            "each connection is served by a task"
        );

        if round == 1 {
            // Go away while events are flowing: some clients mid-read.
            for i in 0..20 {
                server
                    .write(&session_sql("p", &format!("r{round}-{i}")))
                    .await;
            }
            for client in clients.iter_mut().step_by(2) {
                client.expect_event().await;
            }
        }
        drop(clients);
        server.wait_metric("changefeed_subscribers", 0.0).await;
        wait_tasks(baseline).await;
        assert_eq!(server.state.feed().receiver_count(), 0, "no receiver left");
    }
}
