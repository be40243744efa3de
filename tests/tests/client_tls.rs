//! Proves `https://` streams work through [`HttpsConnector`] against a local rustls server whose
//! certificate is signed by a CA generated in the test: events and resume over TLS with the CA
//! trusted from a PEM file (by IP and by name), plain `http` through the same connector, and a
//! clear terminal error (no retry) for a certificate signed by another CA, one the system does
//! not trust, one for another name, and unusable CA files.

mod client_support;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use changefeed_client::{
    Client, ClientConfig, ClientError, ClientItem, HttpsConnector, TrustRoots,
};
use client_support::{bounded, change_frame, cursor, drive, ScriptServer, REAL};
use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, KeyPair, KeyUsagePurpose};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};

/// A CA, and a server certificate it signed.
struct Pki {
    ca_pem: String,
    server_cert: CertificateDer<'static>,
    server_key: PrivateKeyDer<'static>,
}

fn pki(ca_name: &str, names: &[&str]) -> Pki {
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).expect("ca params");
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca_params
        .distinguished_name
        .push(DnType::CommonName, ca_name);
    ca_params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    let ca_key = KeyPair::generate().expect("ca key");
    let ca = ca_params.self_signed(&ca_key).expect("ca cert");

    let names: Vec<String> = names.iter().map(|n| (*n).to_owned()).collect();
    let mut server_params = CertificateParams::new(names).expect("server params");
    server_params
        .distinguished_name
        .push(DnType::CommonName, "changefeed test server");
    let server_key = KeyPair::generate().expect("server key");
    let server = server_params
        .signed_by(&server_key, &ca, &ca_key)
        .expect("server cert");
    Pki {
        ca_pem: ca.pem(),
        server_cert: server.der().clone(),
        server_key: PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(server_key.serialize_der())),
    }
}

fn acceptor(pki: &Pki) -> tokio_rustls::TlsAcceptor {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .expect("protocol versions")
        .with_no_client_auth()
        .with_single_cert(vec![pki.server_cert.clone()], pki.server_key.clone_key())
        .expect("server config");
    tokio_rustls::TlsAcceptor::from(Arc::new(config))
}

/// Writes `pem` into a file of `dir`.
fn ca_file(dir: &tempfile::TempDir, name: &str, pem: &str) -> PathBuf {
    let path = dir.path().join(name);
    std::fs::write(&path, pem).expect("write CA file");
    path
}

fn config(url: &str) -> ClientConfig {
    let mut config = ClientConfig::new(url).expect("valid url");
    config.reconnect.jitter_seed = 7;
    config.reconnect.initial_retry = Duration::from_millis(10);
    config
}

#[tokio::test]
async fn an_https_stream_with_a_private_ca_delivers_and_resumes() {
    let pki = pki("test CA", &["localhost", "127.0.0.1"]);
    let dir = tempfile::tempdir().expect("temp dir");
    let ca = ca_file(&dir, "ca.pem", &pki.ca_pem);
    let (mut server, port, mut failures) = ScriptServer::tls(acceptor(&pki)).await;
    let connector = HttpsConnector::with_roots(TrustRoots::PemFile(ca)).expect("connector");

    for host in ["127.0.0.1", "localhost"] {
        let url = format!("https://{host}:{port}/api/v1/events?project=p1");
        let mut client = drive(Client::new(config(&url), connector.clone()), REAL);
        let mut conn = server.accept().await;
        assert_eq!(conn.request.target, "/api/v1/events?project=p1");
        assert_eq!(
            conn.request.header("host"),
            Some(&*format!("{host}:{port}"))
        );
        conn.stream_head().await;
        assert_eq!(
            client.item().await.0,
            ClientItem::Connected { url: url.clone() }
        );
        conn.write(change_frame(1, "pr_created")).await;
        let (item, seen) = client.item().await;
        assert!(
            matches!(item, ClientItem::Event(ref e) if e.seq == Some(1)),
            "{item:?}"
        );
        assert_eq!(seen.cursor.as_deref(), Some(&*cursor(1)));

        // The server drops the connection: the client reconnects over TLS and resumes.
        drop(conn);
        assert!(matches!(
            client.item().await.0,
            ClientItem::Disconnected { .. }
        ));
        let mut conn = server.accept().await;
        assert_eq!(conn.request.header("last-event-id"), Some(&*cursor(1)));
        conn.stream_head().await;
        conn.write(change_frame(2, "pr_updated")).await;
        client.item().await;
        let (item, _) = client.item().await;
        assert!(
            matches!(item, ClientItem::Event(ref e) if e.seq == Some(2)),
            "{item:?}"
        );
    }
    assert!(failures.try_recv().is_err());
}

#[tokio::test]
async fn plain_http_goes_through_the_same_connector() {
    let (mut server, base) = ScriptServer::tcp().await;
    let connector = HttpsConnector::with_roots(TrustRoots::Mozilla).expect("connector");
    let mut client = drive(Client::new(config(&base), connector), REAL);
    let mut conn = server.accept().await;
    conn.stream_head().await;
    conn.write(change_frame(5, "pr_created")).await;
    assert!(matches!(
        client.item().await.0,
        ClientItem::Connected { .. }
    ));
    assert!(matches!(client.item().await.0, ClientItem::Event(ref e) if e.seq == Some(5)));
}

/// Connects once; the certificate is refused: a terminal error, and no second attempt.
async fn refused(connector: HttpsConnector, url: &str, server: &mut ScriptServer) -> String {
    let mut client = drive(Client::new(config(url), connector), REAL);
    let error = client.error().await;
    assert!(matches!(&error, ClientError::Connector(_)), "{error:?}");
    // No request got through, and (the client having ended) nothing retries.
    assert!(server.try_accept().is_none());
    error.to_string()
}

#[tokio::test]
async fn a_certificate_from_another_ca_is_a_clear_terminal_error() {
    let pki_used = pki("test CA", &["127.0.0.1"]);
    let other = pki("another CA", &["127.0.0.1"]);
    // A CA of the same name with another key: found by name, refused by signature.
    let impostor = pki("test CA", &["127.0.0.1"]);
    let dir = tempfile::tempdir().expect("temp dir");
    let wrong_ca = ca_file(&dir, "other-ca.pem", &other.ca_pem);
    let impostor_ca = ca_file(&dir, "impostor-ca.pem", &impostor.ca_pem);
    let (mut server, port, mut failures) = ScriptServer::tls(acceptor(&pki_used)).await;
    let url = format!("https://127.0.0.1:{port}/api/v1/events");

    let connector =
        HttpsConnector::with_roots(TrustRoots::PemFile(wrong_ca.clone())).expect("connector");
    let message = refused(connector, &url, &mut server).await;
    assert!(
        message.contains(&format!("TLS handshake with 127.0.0.1:{port} failed"))
            && message.contains("UnknownIssuer")
            && message.contains(&format!("not signed by the CA in {}", wrong_ca.display())),
        "{message}"
    );

    let connector =
        HttpsConnector::with_roots(TrustRoots::PemFile(impostor_ca.clone())).expect("connector");
    let message = refused(connector, &url, &mut server).await;
    assert!(
        message.contains("BadSignature")
            && message.contains(&format!(
                "not signed by the CA in {}",
                impostor_ca.display()
            )),
        "{message}"
    );

    // The system's roots do not know the test CA either; the message says what to do.
    let connector = HttpsConnector::new().expect("platform roots");
    let message = refused(connector, &url, &mut server).await;
    assert!(
        message.contains("not signed by a trusted CA") && message.contains("--cacert"),
        "{message}"
    );
    // The server saw the three refused handshakes, and no other connection.
    for _ in 0..3 {
        let reason = bounded("a failed handshake", REAL, failures.recv())
            .await
            .expect("the server runs");
        assert!(
            reason.contains("UnknownCA") || reason.contains("alert"),
            "{reason}"
        );
    }
    assert!(failures.try_recv().is_err());
}

#[tokio::test]
async fn a_certificate_for_another_name_is_a_clear_terminal_error() {
    let pki = pki("test CA", &["feed.example"]);
    let dir = tempfile::tempdir().expect("temp dir");
    let ca = ca_file(&dir, "ca.pem", &pki.ca_pem);
    let (mut server, port, _) = ScriptServer::tls(acceptor(&pki)).await;
    let connector = HttpsConnector::with_roots(TrustRoots::PemFile(ca)).expect("connector");
    let message = refused(
        connector,
        &format!("https://127.0.0.1:{port}/api/v1/events"),
        &mut server,
    )
    .await;
    assert!(message.contains("not valid for \"127.0.0.1\""), "{message}");
}

#[test]
fn unusable_ca_files_are_refused_up_front() {
    let dir = tempfile::tempdir().expect("temp dir");
    let missing = dir.path().join("missing.pem");
    let error =
        HttpsConnector::with_roots(TrustRoots::PemFile(missing.clone())).expect_err("missing file");
    assert!(
        error
            .to_string()
            .contains(&format!("cannot read CA file {}", missing.display())),
        "{error}"
    );
    let empty = ca_file(&dir, "empty.pem", "no certificates here\n");
    let error = HttpsConnector::with_roots(TrustRoots::PemFile(empty)).expect_err("no PEM");
    assert!(
        error.to_string().contains("holds no PEM certificate"),
        "{error}"
    );
}
