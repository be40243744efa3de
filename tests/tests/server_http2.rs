//! Proves the event stream is served over HTTP/2 like over HTTP/1.1: ten streams multiplexed on
//! one h2c (prior knowledge) connection all get `ready` and every live event, with the same
//! frames; over TLS, ALPN picks `h2` (and still `http/1.1` for clients that only offer it); and
//! closing the HTTP/2 connection releases every one of its subscriptions.

use std::sync::Arc;

use bytes::Bytes;
use changefeed::conn::{ConnectionConfig, TlsFiles};
use changefeed::ServerConfig;
use changefeed_core::sse::{Item, Parser, SseEvent};
use changefeed_tests::{project_sql, within, TestServer};
use http_body_util::{BodyExt, Empty};
use hyper::body::Incoming;
use hyper::Request;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;

const STREAMS: usize = 10;

/// One SSE response body, parsed.
struct H2Stream {
    body: Incoming,
    parser: Parser,
}

impl H2Stream {
    async fn next_event(&mut self) -> SseEvent {
        loop {
            while let Some(item) = self.parser.next_item() {
                if let Item::Event(event) = item {
                    return event;
                }
            }
            let frame = within("an HTTP/2 data frame", self.body.frame())
                .await
                .expect("the stream ended")
                .expect("a frame");
            if let Ok(data) = frame.into_data() {
                self.parser.feed(&data).expect("valid SSE");
            }
        }
    }
}

/// Opens `STREAMS` event streams on one HTTP/2 connection over `io`.
async fn open_streams<I>(io: I, authority: &str) -> (Vec<H2Stream>, tokio::task::JoinHandle<()>)
where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let (sender, connection) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(io))
            .await
            .expect("HTTP/2 handshake");
    let driver = tokio::spawn(async move {
        let _ = connection.await;
    });
    let mut streams = Vec::new();
    for _ in 0..STREAMS {
        let request = Request::builder()
            .uri(format!("http://{authority}/api/v1/events?project=p"))
            .header("accept", "text/event-stream")
            .body(Empty::<Bytes>::new())
            .unwrap();
        let response = within("an HTTP/2 response", sender.clone().send_request(request))
            .await
            .expect("response");
        assert_eq!(response.status(), 200);
        assert_eq!(response.version(), hyper::Version::HTTP_2);
        assert_eq!(response.headers()["content-type"], "text/event-stream");
        streams.push(H2Stream {
            body: response.into_body(),
            parser: Parser::new(String::new()),
        });
    }
    (streams, driver)
}

async fn all_live(server: &TestServer, streams: &mut [H2Stream], session: &str) {
    for stream in streams.iter_mut() {
        assert_eq!(stream.next_event().await.event_type, "changefeed.ready");
    }
    server
        .write(&format!(
            "INSERT INTO sessions (id, project_id) VALUES ('{session}', 'p');"
        ))
        .await;
    let mut ids = Vec::new();
    for stream in streams.iter_mut() {
        let event = stream.next_event().await;
        assert_eq!(event.event_type, "session_created");
        ids.push(event.last_event_id);
    }
    ids.dedup();
    assert_eq!(ids.len(), 1, "every stream got the same frame");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_streams_on_one_h2c_connection_are_all_live_and_released_on_close() {
    let server = TestServer::start().await;
    server.write(&project_sql("p")).await;
    server.settle().await;
    let tcp = TcpStream::connect(server.addr).await.unwrap();
    let (mut streams, driver) = open_streams(tcp, &server.addr.to_string()).await;
    all_live(&server, &mut streams, "s1").await;
    server
        .wait_metric("changefeed_subscribers", STREAMS as f64)
        .await;
    // Closing the connection ends every stream on it.
    driver.abort();
    drop(streams);
    server.wait_metric("changefeed_subscribers", 0.0).await;
}

fn certificate(dir: &std::path::Path) -> (TlsFiles, rustls::pki_types::CertificateDer<'static>) {
    let key = rcgen::KeyPair::generate().unwrap();
    let params = rcgen::CertificateParams::new(vec!["localhost".to_owned()]).unwrap();
    let cert = params.self_signed(&key).unwrap();
    let files = TlsFiles {
        cert: dir.join("cert.pem"),
        key: dir.join("key.pem"),
    };
    std::fs::write(&files.cert, cert.pem()).unwrap();
    std::fs::write(&files.key, key.serialize_pem()).unwrap();
    (files, cert.der().clone())
}

async fn tls_connect(
    server: &TestServer,
    root: &rustls::pki_types::CertificateDer<'static>,
    alpn: &[&[u8]],
) -> tokio_rustls::client::TlsStream<TcpStream> {
    let mut roots = rustls::RootCertStore::empty();
    roots.add(root.clone()).unwrap();
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = alpn.iter().map(|protocol| protocol.to_vec()).collect();
    let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
    let tcp = TcpStream::connect(server.addr).await.unwrap();
    let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
    within("the TLS handshake", connector.connect(name, tcp))
        .await
        .expect("TLS handshake")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn over_tls_alpn_negotiates_h2_and_still_http1_for_clients_that_only_offer_it() {
    let dir = tempfile::tempdir().unwrap();
    let (files, root) = certificate(dir.path());
    let server = TestServer::start_with(ServerConfig {
        connection: ConnectionConfig {
            tls: Some(files),
            ..ConnectionConfig::default()
        },
        ..ServerConfig::default()
    })
    .await;
    // (No `settle`: `/metrics` is HTTPS here, and a project row is not a log row.)
    server.write(&project_sql("p")).await;

    let tls = tls_connect(&server, &root, &[b"h2", b"http/1.1"]).await;
    assert_eq!(tls.get_ref().1.alpn_protocol(), Some(&b"h2"[..]));
    let (mut streams, driver) = open_streams(tls, "localhost").await;
    all_live(&server, &mut streams, "s1").await;
    driver.abort();
    drop(streams);
    // `/metrics` is HTTPS here: read the same gauge in-process.
    within("the subscriptions to be released", async {
        while server.state.metrics().snapshot().subscribers != 0 {
            tokio::time::sleep(std::time::Duration::from_millis(5)).await;
        }
    })
    .await;

    let tls = tls_connect(&server, &root, &[b"http/1.1"]).await;
    assert_eq!(tls.get_ref().1.alpn_protocol(), Some(&b"http/1.1"[..]));
    let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(tls))
        .await
        .unwrap();
    let driver = tokio::spawn(async move {
        let _ = connection.await;
    });
    let request = Request::builder()
        .uri("/healthz")
        .header("host", "localhost")
        .body(Empty::<Bytes>::new())
        .unwrap();
    let response = within("a response over TLS", sender.send_request(request))
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(response.version(), hyper::Version::HTTP_11);
    driver.abort();
}
