//! Proves the auth rules over real HTTP: tokens from a tokens file or JWTs (HS256, RS256,
//! ES256) in `Authorization: Bearer` or the `changefeed_token` cookie; 401 without a valid
//! token and 403 outside the grant, both the same whether or not the project exists; no
//! `project=` means exactly the granted projects; header tricks, `alg: none`, expired, wrong
//! key and other-audience JWTs refused; JWT expiry and tokens-file revocation (on change and
//! on SIGHUP) end streams with a final checkpoint from which the client resumes exactly, while
//! streams whose grant holds go on; per-token and global stream limits answer 429 with
//! `Retry-After`; `/metrics` and `/healthz` need a loopback peer or a `*` token.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine as _;
use changefeed::auth::{self, Auth, AuthSettings, JwtSettings};
use changefeed::shutdown::ShutdownSignal;
use changefeed::{app, ServerConfig};
use changefeed_core::IdKey;
use changefeed_tests::{
    data_json, log_rows, project_sql, request_with_headers, seq_of, session_sql, within,
    HttpResponse, SseStream, TestServer, TEST_ID_KEY,
};
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::json;

const SECRET: &[u8] = b"a shared secret of at least thirty-two bytes";

const TOKENS: &str = "\
# test grants
tok-p1 p1
tok-p1p2 p1,p2   # two projects
tok-all *
";

fn write_private(path: &Path, text: &str) {
    use std::os::unix::fs::PermissionsExt;
    let staging = path.with_extension("new");
    std::fs::write(&staging, text).unwrap();
    std::fs::set_permissions(&staging, std::fs::Permissions::from_mode(0o600)).unwrap();
    // Atomically, as an operator should replace it.
    std::fs::rename(&staging, path).unwrap();
}

struct Fixture {
    server: TestServer,
    auth: Auth,
    tokens: PathBuf,
    _dir: tempfile::TempDir,
}

impl Fixture {
    async fn start(settings: AuthSettings) -> Fixture {
        Fixture::start_with(settings, ServerConfig::default()).await
    }

    async fn start_with(mut settings: AuthSettings, mut config: ServerConfig) -> Fixture {
        let dir = tempfile::tempdir().unwrap();
        let tokens = dir.path().join("tokens");
        write_private(&tokens, TOKENS);
        if settings.jwt.is_none() || settings.tokens_file.is_some() {
            settings.tokens_file = Some(tokens.clone());
        }
        let auth = Auth::new(&settings).expect("auth settings");
        config.auth = auth.clone();
        config.id_key = Some(IdKey::from_bytes(TEST_ID_KEY));
        let server = TestServer::start_with(config).await;
        for project in ["p1", "p2", "p3"] {
            server.write(&project_sql(project)).await;
        }
        Fixture {
            server,
            auth,
            tokens,
            _dir: dir,
        }
    }

    async fn get(&self, path: &str, headers: &[(&str, &str)]) -> HttpResponse {
        request_with_headers(self.server.addr, "GET", path, headers).await
    }

    async fn stream(&self, path: &str, headers: &[(&str, &str)]) -> SseStream {
        SseStream::connect_with_headers(self.server.addr, path, None, headers).await
    }

    /// One `session_created` row in each project, in this order; returns the last seq.
    async fn sessions(&self, projects: &[&str]) -> u64 {
        for project in projects {
            let session = format!("{project}-{}", fastrand::u64(..));
            self.server.write(&session_sql(project, &session)).await;
        }
        self.server.head().await.0
    }
}

fn bearer(token: &str) -> String {
    format!("Bearer {token}")
}

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

fn hs256(claims: serde_json::Value) -> String {
    sign(Algorithm::HS256, &EncodingKey::from_secret(SECRET), claims)
}

fn sign(alg: Algorithm, key: &EncodingKey, claims: serde_json::Value) -> String {
    jsonwebtoken::encode(&Header::new(alg), &claims, key).unwrap()
}

fn jwt_settings() -> JwtSettings {
    JwtSettings {
        secret: Some(SECRET.to_vec()),
        leeway: Duration::ZERO,
        ..JwtSettings::default()
    }
}

fn jwt_only(jwt: JwtSettings) -> AuthSettings {
    AuthSettings {
        jwt: Some(jwt),
        ..AuthSettings::default()
    }
}

/// `(project, seq)` of every change delivered until the stream reaches `through`.
async fn projects_through(stream: &mut SseStream, through: u64) -> Vec<(String, u64)> {
    let mut seen = Vec::new();
    loop {
        let event = stream.expect_event().await;
        if event.event_type.starts_with("changefeed.") {
            continue;
        }
        let data = data_json(&event);
        let seq = seq_of(&event);
        seen.push((data["projectId"].as_str().unwrap().to_owned(), seq));
        if seq >= through {
            return seen;
        }
    }
}

/// The log's rows of `projects`, as `(project, seq)` (read with the sqlite3 CLI).
async fn log_of(server: &TestServer, projects: &[&str]) -> Vec<(String, u64)> {
    log_rows(&server.db_path)
        .await
        .into_iter()
        .filter(|row| projects.contains(&row.project.as_str()))
        .map(|row| (row.project, row.seq))
        .collect()
}

#[tokio::test]
async fn without_a_valid_token_every_request_is_401_and_says_nothing_about_projects() {
    let fx = Fixture::start(AuthSettings::default()).await;
    let mut bodies = Vec::new();
    for path in [
        "/api/v1/events",
        "/api/v1/events?project=p1",
        "/api/v1/events?project=does-not-exist",
    ] {
        for headers in [&[][..], &[("authorization", "Bearer not-a-token")]] {
            let response = fx.get(path, headers).await;
            assert_eq!(
                response.status, 401,
                "{path} {headers:?}: {}",
                response.body
            );
            assert_eq!(response.error_code(), "unauthorized");
            let challenge = response.headers["www-authenticate"].to_str().unwrap();
            assert!(
                challenge.starts_with("Bearer realm=\"changefeed\""),
                "{challenge}"
            );
            bodies.push((headers.len(), response.body));
        }
    }
    // The same answer for an existing project, a missing one and none.
    for (with_token, body) in &bodies {
        let first = &bodies.iter().find(|(w, _)| w == with_token).unwrap().1;
        assert_eq!(body, first);
        assert!(
            !body.contains("p1") && !body.contains("does-not-exist"),
            "{body}"
        );
    }
    assert_eq!(fx.server.state.metrics().auth_rejections("unauthorized"), 6);
}

#[tokio::test]
async fn a_project_outside_the_grant_is_the_same_403_whether_or_not_it_exists() {
    let fx = Fixture::start(AuthSettings::default()).await;
    let auth = bearer("tok-p1");
    let existing = fx
        .get("/api/v1/events?project=p2", &[("authorization", &auth)])
        .await;
    let missing = fx
        .get("/api/v1/events?project=nope", &[("authorization", &auth)])
        .await;
    let mixed = fx
        .get(
            "/api/v1/events?project=p1&project=p2",
            &[("authorization", &auth)],
        )
        .await;
    for response in [&existing, &missing, &mixed] {
        assert_eq!(response.status, 403, "{}", response.body);
        assert_eq!(response.error_code(), "forbidden");
    }
    assert_eq!(
        existing.body.replace("p2", "X"),
        missing.body.replace("nope", "X")
    );
    // A granted project that does not exist is still a 404 (the token may read it).
    let all = fx
        .get(
            "/api/v1/events?project=nope",
            &[("authorization", &bearer("tok-all"))],
        )
        .await;
    assert_eq!(all.status, 404);
    assert_eq!(all.error_code(), "unknown_project");
}

#[tokio::test]
async fn without_project_a_token_gets_exactly_its_granted_projects_in_replay_and_live() {
    let fx = Fixture::start(AuthSettings::default()).await;
    fx.sessions(&["p1", "p2", "p3", "p3", "p1"]).await;
    let two = bearer("tok-p1p2");
    let all = bearer("tok-all");
    let mut granted = fx
        .stream("/api/v1/events?after=0", &[("authorization", &two)])
        .await;
    let mut everything = fx
        .stream("/api/v1/events?after=0", &[("authorization", &all)])
        .await;
    assert_eq!(granted.status, 200);
    assert_eq!(everything.status, 200);
    // Live ones after replay.
    let head = fx.sessions(&["p3", "p2", "p3", "p1"]).await;
    let last_granted = log_of(&fx.server, &["p1", "p2"]).await.last().unwrap().1;
    assert_eq!(
        projects_through(&mut granted, last_granted).await,
        log_of(&fx.server, &["p1", "p2"]).await
    );
    assert_eq!(
        projects_through(&mut everything, head).await,
        log_of(&fx.server, &["p1", "p2", "p3"]).await
    );
    // project= narrows within the grant.
    let mut one = fx
        .stream(
            "/api/v1/events?after=0&project=p2",
            &[("authorization", &two)],
        )
        .await;
    let last_p2 = log_of(&fx.server, &["p2"]).await.last().unwrap().1;
    assert_eq!(
        projects_through(&mut one, last_p2).await,
        log_of(&fx.server, &["p2"]).await
    );
}

#[tokio::test]
async fn a_token_in_the_query_string_is_an_unknown_parameter_and_is_not_echoed() {
    let fx = Fixture::start(AuthSettings::default()).await;
    for path in [
        "/api/v1/events?token=tok-all",
        "/api/v1/events?access_token=tok-all",
    ] {
        let response = fx.get(path, &[]).await;
        assert_eq!(response.status, 400, "{}", response.body);
        assert_eq!(response.error_code(), "unknown_parameter");
        assert!(!response.body.contains("tok-all"), "{}", response.body);
    }
}

#[tokio::test]
async fn header_tricks_are_refused_clearly_and_spelling_variants_accepted() {
    let fx = Fixture::start(AuthSettings::default()).await;
    let ok = |response: &HttpResponse| response.status == 200;
    for accepted in [
        "bearer tok-all",
        "BEARER tok-all",
        "Bearer    tok-all",
        "Bearer \ttok-all  ",
    ] {
        let stream = fx
            .stream("/api/v1/events", &[("authorization", accepted)])
            .await;
        assert_eq!(stream.status, 200, "{accepted:?}");
    }
    for (headers, says) in [
        (
            &[
                ("authorization", "Bearer tok-all"),
                ("authorization", "Bearer tok-all"),
            ][..],
            "more than one Authorization header",
        ),
        (
            &[
                ("authorization", "Bearer tok-all"),
                ("authorization", "Bearer tok-p1"),
            ],
            "more than one",
        ),
        (&[("authorization", "Bearer tok all")], "whitespace"),
        (&[("authorization", "Bearer")], "bearer token is empty"),
        (&[("authorization", "Bearer ")], "bearer token is empty"),
        (&[("authorization", "Basic dG9rLWFsbDo=")], "Bearer scheme"),
        (&[("authorization", "Bearertok-all")], "Bearer scheme"),
        (
            &[("authorization", "Bearer tok-all,tok-p1")],
            "characters a token cannot have",
        ),
        (
            &[
                ("cookie", "changefeed_token=tok-all"),
                ("cookie", "changefeed_token=tok-p1"),
            ],
            "more than one changefeed_token cookie",
        ),
    ] {
        let response = fx.get("/api/v1/events", headers).await;
        assert!(!ok(&response), "{headers:?}");
        assert_eq!(response.status, 401, "{headers:?}: {}", response.body);
        assert_eq!(response.error_code(), "unauthorized");
        let message = response.json()["error"]["message"]
            .as_str()
            .unwrap()
            .to_owned();
        assert!(message.contains(says), "{headers:?}: {message}");
        assert!(
            !message.contains("tok-"),
            "a token is never echoed: {message}"
        );
    }
}

#[tokio::test]
async fn the_cookie_carries_the_token_for_browsers() {
    let fx = Fixture::start(AuthSettings::default()).await;
    fx.sessions(&["p1", "p2"]).await;
    let mut stream = fx
        .stream(
            "/api/v1/events?after=0",
            &[("cookie", "theme=dark; changefeed_token=tok-p1")],
        )
        .await;
    assert_eq!(stream.status, 200);
    let p1 = log_of(&fx.server, &["p1"]).await;
    assert_eq!(
        projects_through(&mut stream, p1.last().unwrap().1).await,
        p1
    );
    let forbidden = fx
        .get(
            "/api/v1/events?project=p2",
            &[("cookie", "changefeed_token=tok-p1")],
        )
        .await;
    assert_eq!(forbidden.status, 403);
    let bad = fx
        .get("/api/v1/events", &[("cookie", "changefeed_token=nope")])
        .await;
    assert_eq!(bad.status, 401);
    // The viewer page itself needs no token and offers the token field.
    let page = fx.get("/", &[]).await;
    assert_eq!(page.status, 200);
    assert!(
        page.body.contains("changefeed_token="),
        "the viewer sets the cookie"
    );
}

#[tokio::test]
async fn hs256_jwts_grant_their_projects_claim_and_bad_ones_are_401() {
    let fx = Fixture::start(jwt_only(jwt_settings())).await;
    fx.sessions(&["p1", "p2", "p3"]).await;
    let exp = now() + 3600;
    let good = hs256(json!({"exp": exp, "projects": ["p2", "p3"]}));
    let mut stream = fx
        .stream(
            "/api/v1/events?after=0",
            &[("authorization", &bearer(&good))],
        )
        .await;
    assert_eq!(stream.status, 200);
    let granted = log_of(&fx.server, &["p2", "p3"]).await;
    assert_eq!(
        projects_through(&mut stream, granted.last().unwrap().1).await,
        granted
    );
    let star = hs256(json!({"exp": exp, "projects": "*"}));
    let everything = fx
        .stream(
            "/api/v1/events?project=p1",
            &[("authorization", &bearer(&star))],
        )
        .await;
    assert_eq!(everything.status, 200);
    let forbidden = fx
        .get(
            "/api/v1/events?project=p1",
            &[("authorization", &bearer(&good))],
        )
        .await;
    assert_eq!(forbidden.status, 403);

    let b64 = |value: serde_json::Value| {
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(value.to_string())
    };
    let claims = json!({"exp": exp, "projects": "*"});
    let unsigned = |alg: &str| {
        format!(
            "{}.{}.",
            b64(json!({"alg": alg, "typ": "JWT"})),
            b64(claims.clone())
        )
    };
    let other_key = sign(
        Algorithm::HS256,
        &EncodingKey::from_secret(b"another secret of at least thirty-two bytes!"),
        claims.clone(),
    );
    // The payload swapped for one granting everything, the signature kept.
    let parts: Vec<&str> = good.split('.').collect();
    let tampered = format!("{}.{}.{}", parts[0], b64(claims.clone()), parts[2]);
    for (token, says) in [
        (unsigned("none"), "not a valid JWT"),
        (unsigned("None"), "not a valid JWT"),
        (unsigned("HS256"), "signature"),
        (other_key, "signature"),
        (tampered, "signature"),
        (
            hs256(json!({"exp": now() - 120, "projects": "*"})),
            "expired",
        ),
        (
            hs256(json!({"exp": exp, "nbf": now() + 600, "projects": "*"})),
            "not valid yet",
        ),
        (hs256(json!({"projects": "*"})), "required claim"),
        (hs256(json!({"exp": "soon", "projects": "*"})), "malformed"),
        (
            hs256(json!({"exp": exp, "aud": "someone-else", "projects": "*"})),
            "audience",
        ),
        (
            hs256(json!({"exp": exp, "projects": []})),
            "at least one project",
        ),
        (hs256(json!({"exp": exp, "projects": "p1"})), "array of ids"),
        (hs256(json!({"exp": exp})), "no projects claim"),
        (
            sign(
                Algorithm::HS384,
                &EncodingKey::from_secret(SECRET),
                claims.clone(),
            ),
            "HS384",
        ),
    ] {
        let response = fx
            .get("/api/v1/events", &[("authorization", &bearer(&token))])
            .await;
        assert_eq!(response.status, 401, "{says}: {}", response.body);
        assert_eq!(response.error_code(), "unauthorized");
        assert!(response.body.contains(says), "{says}: {}", response.body);
        assert!(response.headers["www-authenticate"]
            .to_str()
            .unwrap()
            .contains("invalid_token"));
    }
}

#[tokio::test]
async fn the_audience_must_match_when_configured() {
    let fx = Fixture::start(jwt_only(JwtSettings {
        audience: Some("changefeed".into()),
        ..jwt_settings()
    }))
    .await;
    let exp = now() + 600;
    for (claims, status) in [
        (
            json!({"exp": exp, "aud": "changefeed", "projects": "*"}),
            200,
        ),
        (
            json!({"exp": exp, "aud": ["other", "changefeed"], "projects": "*"}),
            200,
        ),
        (json!({"exp": exp, "aud": "other", "projects": "*"}), 401),
        (json!({"exp": exp, "projects": "*"}), 401),
    ] {
        let token = hs256(claims.clone());
        let stream = fx
            .stream("/api/v1/events", &[("authorization", &bearer(&token))])
            .await;
        assert_eq!(stream.status, status, "{claims}");
    }
}

#[tokio::test]
async fn the_leeway_tolerates_clock_skew_on_exp_and_nbf() {
    let fx = Fixture::start(jwt_only(JwtSettings {
        leeway: Duration::from_secs(120),
        ..jwt_settings()
    }))
    .await;
    for (claims, status) in [
        (json!({"exp": now() - 60, "projects": "*"}), 200),
        (
            json!({"exp": now() + 600, "nbf": now() + 60, "projects": "*"}),
            200,
        ),
        (json!({"exp": now() - 600, "projects": "*"}), 401),
    ] {
        let token = hs256(claims.clone());
        let stream = fx
            .stream("/api/v1/events", &[("authorization", &bearer(&token))])
            .await;
        assert_eq!(stream.status, status, "{claims}");
    }
}

fn fixture(name: &str) -> Vec<u8> {
    std::fs::read(
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("fixtures")
            .join(name),
    )
    .unwrap()
}

#[tokio::test]
async fn rs256_and_es256_jwts_verify_against_their_public_keys_only() {
    let rsa_public = fixture("jwt-rs256-public.pem");
    let rsa_private = EncodingKey::from_rsa_pem(&fixture("jwt-rs256-private.pem")).unwrap();
    let ec = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
    let ec_private = EncodingKey::from_ec_pem(ec.serialize_pem().as_bytes()).unwrap();
    let other_ec = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
    let other_ec_private = EncodingKey::from_ec_pem(other_ec.serialize_pem().as_bytes()).unwrap();
    let claims = json!({"exp": now() + 600, "projects": ["p1"]});

    let rsa = Fixture::start(jwt_only(JwtSettings {
        secret: None,
        public_key_pem: Some(rsa_public.clone()),
        ..jwt_settings()
    }))
    .await;
    let ecdsa = Fixture::start(jwt_only(JwtSettings {
        secret: None,
        public_key_pem: Some(ec.public_key_pem().into_bytes()),
        ..jwt_settings()
    }))
    .await;
    let rs256 = sign(Algorithm::RS256, &rsa_private, claims.clone());
    let es256 = sign(Algorithm::ES256, &ec_private, claims.clone());
    // The classic confusion: HS256 "signed" with the RSA public key as the secret.
    let confused = sign(
        Algorithm::HS256,
        &EncodingKey::from_secret(&rsa_public),
        claims.clone(),
    );
    for (fx, token, status) in [
        (&rsa, &rs256, 200),
        (&rsa, &es256, 401),
        (&rsa, &confused, 401),
        (&ecdsa, &es256, 200),
        (&ecdsa, &rs256, 401),
        (
            &ecdsa,
            &sign(Algorithm::ES256, &other_ec_private, claims.clone()),
            401,
        ),
    ] {
        let stream = fx
            .stream(
                "/api/v1/events?project=p1",
                &[("authorization", &bearer(token))],
            )
            .await;
        assert_eq!(stream.status, status);
        let forbidden = fx
            .get(
                "/api/v1/events?project=p2",
                &[("authorization", &bearer(token))],
            )
            .await;
        assert_eq!(forbidden.status, if status == 200 { 403 } else { 401 });
    }
}

#[tokio::test]
async fn a_jwt_stream_ends_at_exp_with_a_checkpoint_and_a_fresh_token_resumes_exactly() {
    let fx = Fixture::start(jwt_only(jwt_settings())).await;
    let first_seq = fx.sessions(&["p1"]).await;
    let short = hs256(json!({"exp": now() + 2, "projects": ["p1"]}));
    let mut stream = fx
        .stream(
            "/api/v1/events?after=0",
            &[("authorization", &bearer(&short))],
        )
        .await;
    assert_eq!(stream.status, 200);
    stream.capture_raw();
    assert_eq!(
        projects_through(&mut stream, first_seq).await,
        [("p1".into(), first_seq)]
    );
    // Other projects move the log on (the client is not shown them).
    fx.sessions(&["p2", "p3"]).await;
    // The stream ends by itself at exp, with a final checkpoint.
    assert_eq!(until_end(&mut stream).await, Vec::<u64>::new());
    assert_final_checkpoint(&stream);
    assert_eq!(fx.server.state.metrics().auth_stream_ends("expired"), 1);
    let checkpoint = stream.last_event_id().to_owned();
    // Written while the client had no stream.
    let missed = fx.sessions(&["p1", "p2", "p1"]).await;
    let expired = fx
        .get("/api/v1/events", &[("authorization", &bearer(&short))])
        .await;
    assert_eq!(expired.status, 401);
    let fresh = hs256(json!({"exp": now() + 600, "projects": ["p1"]}));
    let mut resumed = SseStream::connect_with_headers(
        fx.server.addr,
        "/api/v1/events",
        Some(checkpoint.as_bytes()),
        &[("authorization", &bearer(&fresh))],
    )
    .await;
    assert_eq!(resumed.status, 200);
    let expected: Vec<(String, u64)> = log_of(&fx.server, &["p1"])
        .await
        .into_iter()
        .filter(|(_, seq)| *seq > first_seq)
        .collect();
    assert_eq!(expected.len(), 2);
    assert!(expected.last().unwrap().1 <= missed);
    assert_eq!(
        projects_through(&mut resumed, expected.last().unwrap().1).await,
        expected
    );
}

/// The last frame received (see [`SseStream::capture_raw`]) is an id-only checkpoint.
fn assert_final_checkpoint(stream: &SseStream) {
    assert!(stream.ended());
    let raw = stream.raw_text();
    let last = raw
        .strip_suffix("\n\n")
        .and_then(|body| body.rsplit("\n\n").next())
        .unwrap_or_else(|| panic!("no whole frame in {raw:?}"));
    assert!(
        last.starts_with("id: ") && !last.contains('\n'),
        "the last frame is an id-only checkpoint: {last:?}"
    );
}

/// Reads until the stream ends; returns the change seqs delivered on the way.
async fn until_end(stream: &mut SseStream) -> Vec<u64> {
    let mut seqs = Vec::new();
    while let Some(event) = stream.next_event().await {
        if !event.event_type.starts_with("changefeed.") {
            seqs.push(seq_of(&event));
        }
    }
    seqs
}

#[tokio::test]
async fn a_changed_tokens_file_revokes_only_the_streams_it_no_longer_grants() {
    let fx = Fixture::start(AuthSettings::default()).await;
    tokio::spawn(auth::watch_tokens_file(
        fx.auth.clone(),
        ShutdownSignal::never(),
    ));
    let mut revoked = fx
        .stream("/api/v1/events", &[("authorization", &bearer("tok-p1"))])
        .await;
    let mut narrowed = fx
        .stream("/api/v1/events", &[("authorization", &bearer("tok-p1p2"))])
        .await;
    let mut kept = fx
        .stream(
            "/api/v1/events?project=p1",
            &[("authorization", &bearer("tok-p1p2"))],
        )
        .await;
    let mut untouched = fx
        .stream("/api/v1/events", &[("authorization", &bearer("tok-all"))])
        .await;
    for stream in [&mut revoked, &mut narrowed, &mut kept, &mut untouched] {
        assert_eq!(stream.status, 200);
        stream.capture_raw();
    }
    let before = fx.sessions(&["p1"]).await;
    for stream in [&mut revoked, &mut narrowed, &mut kept, &mut untouched] {
        assert_eq!(
            projects_through(stream, before).await,
            [("p1".into(), before)]
        );
    }
    // tok-p1 goes; tok-p1p2 keeps p1 only: its all-granted stream ends, its p1 stream holds.
    write_private(&fx.tokens, "tok-p1p2 p1,p3\ntok-all *\n");
    for stream in [&mut revoked, &mut narrowed] {
        assert_eq!(until_end(stream).await, Vec::<u64>::new());
        assert_final_checkpoint(stream);
    }
    assert_eq!(fx.server.state.metrics().auth_stream_ends("revoked"), 2);
    let after = fx.sessions(&["p1"]).await;
    assert_eq!(
        projects_through(&mut kept, after).await,
        [("p1".into(), after)]
    );
    assert_eq!(
        projects_through(&mut untouched, after).await,
        [("p1".into(), after)]
    );
    let gone = fx
        .get("/api/v1/events", &[("authorization", &bearer("tok-p1"))])
        .await;
    assert_eq!(gone.status, 401);
    let new_grant = fx
        .stream(
            "/api/v1/events?project=p3",
            &[("authorization", &bearer("tok-p1p2"))],
        )
        .await;
    assert_eq!(new_grant.status, 200);

    // A broken file keeps the grants in force.
    write_private(&fx.tokens, "tok-p1p2\n");
    assert_eq!(fx.auth.reload_tokens().unwrap_err(), format!(
        "tokens file {}: line 1: a token without projects (expected TOKEN PROJECT[,PROJECT...] or TOKEN *)",
        fx.tokens.display()
    ));
    let still = fx
        .stream("/api/v1/events", &[("authorization", &bearer("tok-p1p2"))])
        .await;
    assert_eq!(still.status, 200);
    let marker = fx.sessions(&["p1"]).await;
    assert_eq!(
        projects_through(&mut kept, marker).await,
        [("p1".into(), marker)],
        "the stream goes on"
    );
}

#[tokio::test]
async fn sighup_reloads_the_tokens_file() {
    // The tokens file is a link into a directory nobody watches: only SIGHUP can reload it.
    let elsewhere = tempfile::tempdir().unwrap();
    let target = elsewhere.path().join("real-tokens");
    write_private(&target, TOKENS);
    let dir = tempfile::tempdir().unwrap();
    let link = dir.path().join("tokens");
    std::os::unix::fs::symlink(&target, &link).unwrap();
    let auth = Auth::new(&AuthSettings {
        tokens_file: Some(link),
        ..AuthSettings::default()
    })
    .unwrap();
    let server = TestServer::start_with(ServerConfig {
        auth: auth.clone(),
        ..ServerConfig::default()
    })
    .await;
    tokio::spawn(auth::watch_tokens_file(
        auth.clone(),
        ShutdownSignal::never(),
    ));
    let mut stream = SseStream::connect_with_headers(
        server.addr,
        "/api/v1/events",
        None,
        &[("authorization", "Bearer tok-p1")],
    )
    .await;
    assert_eq!(stream.status, 200);
    stream.capture_raw();
    write_private(&target, "tok-all *\n");
    let pid = std::process::id().to_string();
    let status = std::process::Command::new("sh")
        .args(["-c", &format!("kill -HUP {pid}")])
        .status()
        .unwrap();
    assert!(status.success());
    assert_eq!(until_end(&mut stream).await, Vec::<u64>::new());
    assert_final_checkpoint(&stream);
    let refused = request_with_headers(
        server.addr,
        "GET",
        "/api/v1/events",
        &[("authorization", "Bearer tok-p1")],
    )
    .await;
    assert_eq!(refused.status, 401);
}

#[tokio::test]
async fn stream_limits_answer_429_with_retry_after_per_token_and_globally() {
    let fx = Fixture::start(AuthSettings {
        max_streams_per_token: Some(2),
        max_streams: Some(3),
        ..AuthSettings::default()
    })
    .await;
    let p1 = bearer("tok-p1");
    let first = fx.stream("/api/v1/events", &[("authorization", &p1)]).await;
    let second = fx.stream("/api/v1/events", &[("authorization", &p1)]).await;
    assert_eq!(first.status, 200);
    assert_eq!(second.status, 200);
    let third = fx.get("/api/v1/events", &[("authorization", &p1)]).await;
    assert_eq!(third.status, 429, "{}", third.body);
    assert_eq!(third.error_code(), "too_many_streams");
    assert_eq!(third.headers["retry-after"], "5");
    assert!(third.body.contains("per-token"), "{}", third.body);
    // Another token still has room, up to the server's limit.
    let other = fx
        .stream("/api/v1/events", &[("authorization", &bearer("tok-all"))])
        .await;
    assert_eq!(other.status, 200);
    let over = fx
        .get("/api/v1/events", &[("authorization", &bearer("tok-p1p2"))])
        .await;
    assert_eq!(over.status, 429);
    assert!(over.body.contains("server"), "{}", over.body);
    let metrics = fx.server.state.metrics();
    assert_eq!(metrics.limit_rejections("per_token"), 1);
    assert_eq!(metrics.limit_rejections("global"), 1);
    let text = fx.get("/metrics", &[]).await.body;
    assert!(
        text.contains("changefeed_limit_rejections_total{limit=\"per_token\"} 1"),
        "{text}"
    );
    // A closed stream frees its slot.
    drop(first);
    fx.server.wait_metric("changefeed_subscribers", 2.0).await;
    let again = fx.stream("/api/v1/events", &[("authorization", &p1)]).await;
    assert_eq!(again.status, 200);
    drop((second, other, again));
}

/// A TCP listener that reports every peer as `203.0.113.7` (a documentation address), so
/// requests arrive from "outside" over real HTTP.
struct RemotePeers(tokio::net::TcpListener);

impl axum::serve::Listener for RemotePeers {
    type Io = tokio::net::TcpStream;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        loop {
            if let Ok((io, _)) = self.0.accept().await {
                return (io, "203.0.113.7:40000".parse().unwrap());
            }
        }
    }

    fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.0.local_addr()
    }
}

async fn remote_server(public_metrics: bool) -> (SocketAddr, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let tokens = dir.path().join("tokens");
    write_private(&tokens, TOKENS);
    let store = changefeed::store::sqlite::SqliteStore::open(&changefeed_tests::sqlite_url(
        &dir.path().join("db"),
    ))
    .await
    .unwrap();
    let config = ServerConfig {
        auth: Auth::new(&AuthSettings {
            tokens_file: Some(tokens),
            public_metrics,
            ..AuthSettings::default()
        })
        .unwrap(),
        ..ServerConfig::default()
    };
    let server = app::start(store, config, ShutdownSignal::never())
        .await
        .unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(changefeed::run(RemotePeers(listener), server));
    (addr, dir)
}

#[tokio::test]
async fn metrics_and_healthz_need_loopback_or_a_star_token_unless_public() {
    let local = Fixture::start(AuthSettings::default()).await;
    for path in ["/metrics", "/healthz"] {
        assert_eq!(local.get(path, &[]).await.status, 200, "loopback {path}");
    }
    let (remote, _dir) = remote_server(false).await;
    for path in ["/metrics", "/healthz"] {
        let get = |headers: &'static [(&'static str, &'static str)]| {
            request_with_headers(remote, "GET", path, headers)
        };
        let anonymous = get(&[]).await;
        assert_eq!(anonymous.status, 401, "{path}: {}", anonymous.body);
        assert_eq!(anonymous.error_code(), "unauthorized");
        let narrow = get(&[("authorization", "Bearer tok-p1")]).await;
        assert_eq!(narrow.status, 403, "{path}");
        assert_eq!(narrow.error_code(), "forbidden");
        assert_eq!(
            get(&[("authorization", "Bearer tok-all")]).await.status,
            200,
            "{path}"
        );
        // The event stream's rules are the same from anywhere.
        let events = request_with_headers(remote, "GET", "/api/v1/events", &[]).await;
        assert_eq!(events.status, 401);
    }
    let (public, _public_dir) = remote_server(true).await;
    for path in ["/metrics", "/healthz"] {
        assert_eq!(
            request_with_headers(public, "GET", path, &[]).await.status,
            200,
            "{path}"
        );
    }
    assert_eq!(
        request_with_headers(public, "GET", "/api/v1/events", &[])
            .await
            .status,
        401
    );
}

#[tokio::test]
async fn with_auth_off_tokens_are_ignored_and_everything_is_as_before() {
    let server = TestServer::start().await;
    server.write(&project_sql("p1")).await;
    let response = within(
        "a stream",
        SseStream::connect_with_headers(
            server.addr,
            "/api/v1/events?project=p1",
            None,
            &[("authorization", "Bearer whatever")],
        ),
    )
    .await;
    assert_eq!(response.status, 200);
    assert_eq!(
        request_with_headers(server.addr, "GET", "/metrics", &[])
            .await
            .status,
        200
    );
}
