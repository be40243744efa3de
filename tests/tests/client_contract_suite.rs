//! Proves the contract-test service passes the stream-content cases of the public
//! `sse-contract-tests` suite (basic parsing, byte order mark, comments, line endings, the
//! 7 MB and 14 MB messages), ported case by case so CI checks them without the Go harness:
//! each case starts a client through the service, a scripted server sends the suite's chunks,
//! and the numbered callbacks must be exactly the suite's expected events and comments.

mod client_support;

use changefeed_client::contract::serve_contract_service;
use client_support::{http, Callbacks, ScriptServer};
use serde_json::{json, Value};

/// What the harness expects to be told, in order.
#[derive(Debug, Clone)]
enum Expect {
    /// `type`, `data`, `id` of an event.
    Event(&'static str, String, &'static str),
    Comment(&'static str),
}

fn message(data: &str) -> Expect {
    Expect::Event("message", data.to_owned(), "")
}

impl Expect {
    fn json(&self) -> Value {
        match self {
            Expect::Event(kind, data, id) => {
                json!({ "kind": "event", "event": { "type": kind, "data": data, "id": id } })
            }
            Expect::Comment(text) => json!({ "kind": "comment", "comment": text }),
        }
    }
}

struct Case {
    name: String,
    chunks: Vec<Vec<u8>>,
    expect: Vec<Expect>,
}

fn case(name: &str, chunks: &[&str], expect: Vec<Expect>) -> Case {
    Case {
        name: name.to_owned(),
        chunks: chunks.iter().map(|c| c.as_bytes().to_vec()).collect(),
        expect,
    }
}

const BOM: &str = "\u{feff}";

/// The suite's `basic parsing`, `BOM handling` and `comments` cases.
fn parsing_cases() -> Vec<Case> {
    let hundred: String = (0..100).map(|i| format!("data: message {i}\n\n")).collect();
    let mut cases = vec![
        case(
            "one-line message in one chunk",
            &["data: Hello\n\n"],
            vec![message("Hello")],
        ),
        case(
            "two messages spanning 3 chunks with shared chunk",
            &["data: test", "test\n\ndata:", "test\n\n"],
            vec![message("testtest"), message("test")],
        ),
        case(
            "one-line message in two chunks",
            &["data: Hel", "lo\n\n"],
            vec![message("Hello")],
        ),
        case(
            "two one-line messages in one chunk",
            &["data: Hello\n\ndata: World\n\n"],
            vec![message("Hello"), message("World")],
        ),
        case(
            "one two-line message in one chunk",
            &["data: Hello\ndata:World\n\n"],
            vec![message("Hello\nWorld")],
        ),
        case("empty data", &["data:\n\n"], vec![message("")]),
        case(
            "event with specific type",
            &["event: greeting\ndata: Hello\n\n"],
            vec![Expect::Event("greeting", "Hello".into(), "")],
        ),
        case(
            "default event type",
            &["data: Hello\n\n"],
            vec![message("Hello")],
        ),
        case(
            "event with ID",
            &["id: abc\ndata: Hello\n\n"],
            vec![Expect::Event("message", "Hello".into(), "abc")],
        ),
        case(
            "event with type and ID",
            &["event: greeting\nid: abc\ndata: Hello\n\n"],
            vec![Expect::Event("greeting", "Hello".into(), "abc")],
        ),
        case(
            "ID field is ignored if it contains a null",
            &["id: a\0bc\ndata: Hello\n\n"],
            vec![message("Hello")],
        ),
        case(
            "last ID persists if not overridden by later event",
            &["id: abc\ndata: first\n\n", "data: second\n\n"],
            vec![
                Expect::Event("message", "first".into(), "abc"),
                Expect::Event("message", "second".into(), "abc"),
            ],
        ),
        case(
            "last ID can be overridden by an empty value",
            &["id: abc\ndata: first\n\n", "id: \ndata: second\n\n"],
            vec![
                Expect::Event("message", "first".into(), "abc"),
                message("second"),
            ],
        ),
        case(
            "fields in reverse order",
            &["data: Hello\nid: abc\nevent: greeting\n\n"],
            vec![Expect::Event("greeting", "Hello".into(), "abc")],
        ),
        case(
            "unknown field is ignored",
            &["event: greeting\ncolor: blue\ndata: Hello\n\n"],
            vec![Expect::Event("greeting", "Hello".into(), "")],
        ),
        case(
            "fields without leading space",
            &["event:greeting\ndata:Hello\n\n"],
            vec![Expect::Event("greeting", "Hello".into(), "")],
        ),
        case(
            "fields with extra leading space",
            &["event:  greeting\ndata:  Hello\n\n"],
            vec![Expect::Event(" greeting", " Hello".into(), "")],
        ),
        case(
            "field with no colon",
            &["data\n\ndata\ndata\n\n"],
            vec![message(""), message("\n")],
        ),
        case(
            "multi-byte characters",
            &["data: €豆腐\n\n"],
            vec![message("€豆腐")],
        ),
        case(
            "many messages in rapid succession",
            &[&hundred],
            (0..100).map(|i| message(&format!("message {i}"))).collect(),
        ),
        // BOM handling.
        case(
            "BOM at start of stream is stripped",
            &[&format!("{BOM}data: Hello\n\n")],
            vec![message("Hello")],
        ),
        case(
            "BOM stripped before first event with type and ID",
            &[&format!("{BOM}event: greeting\nid: abc\ndata: Hello\n\n")],
            vec![Expect::Event("greeting", "Hello".into(), "abc")],
        ),
        case(
            "BOM stripped with multiple messages",
            &[&format!("{BOM}data: First\n\ndata: Second\n\n")],
            vec![message("First"), message("Second")],
        ),
        case(
            "BOM only stripped at stream start, not from later data",
            &["data: First\n\n", &format!("data: {BOM}Second\n\n")],
            vec![message("First"), message(&format!("{BOM}Second"))],
        ),
        case(
            "only first BOM at start is stripped",
            &[&format!("{BOM}data: {BOM}Hello\n\n")],
            vec![message(&format!("{BOM}Hello"))],
        ),
        case(
            "no BOM - baseline test",
            &["data: Hello\n\n"],
            vec![message("Hello")],
        ),
        case(
            "BOM with multi-line data",
            &[&format!("{BOM}data: Line1\ndata: Line2\n\n")],
            vec![message("Line1\nLine2")],
        ),
        case(
            "BOM with comment at start",
            &[&format!("{BOM}:comment\ndata: Hello\n\n")],
            vec![Expect::Comment("comment"), message("Hello")],
        ),
        case(
            "BOM does not affect empty data field",
            &[&format!("{BOM}data:\n\n")],
            vec![message("")],
        ),
        // Comments.
        case(
            "single comment",
            &[":Hello\n"],
            vec![Expect::Comment("Hello")],
        ),
        case(
            "two comments in a row",
            &[":Hello\n", ":World\n"],
            vec![Expect::Comment("Hello"), Expect::Comment("World")],
        ),
        case(
            "comment before event",
            &[":Hello\n", "data: Hello\n\n"],
            vec![Expect::Comment("Hello"), message("Hello")],
        ),
        case(
            "comment after event",
            &["data: Hello\n\n", ":Hello\n"],
            vec![message("Hello"), Expect::Comment("Hello")],
        ),
        case(
            "CRLF where CR is end of 1 chunk",
            &[
                "data: Hello\r",
                "\ndata: World\r",
                "\n\r\ndata: OK\r",
                "\n",
                "\r",
                "\n",
            ],
            vec![message("Hello\nWorld"), message("OK")],
        ),
    ];
    // Bytes that are not UTF-8 on their own: the BOM split across chunks, and multi-byte
    // characters one byte per chunk.
    cases.push(Case {
        name: "BOM split across first two chunks".into(),
        chunks: vec![b"\xEF\xBB".to_vec(), b"\xBFdata: Hello\n\n".to_vec()],
        expect: vec![message("Hello")],
    });
    cases.push(Case {
        name: "BOM split byte by byte across chunks".into(),
        chunks: vec![
            b"\xEF".to_vec(),
            b"\xBB".to_vec(),
            b"\xBF".to_vec(),
            b"data: Hello\n\n".to_vec(),
        ],
        expect: vec![message("Hello")],
    });
    cases.push(Case {
        name: "multi-byte characters sent in single-byte pieces".into(),
        chunks: "data: €豆腐\n\n".bytes().map(|b| vec![b]).collect(),
        expect: vec![message("€豆腐")],
    });
    cases
}

/// The suite's `linefeeds` cases: six inputs per line ending, each sent in one chunk, in
/// 1-byte chunks and in 2-byte chunks.
fn linefeed_cases() -> Vec<Case> {
    let mut cases = Vec::new();
    for (ending_name, t) in [("LF", "\n"), ("CRLF", "\r\n"), ("CR", "\r")] {
        let inputs: Vec<(&str, String, Vec<Expect>)> = vec![
            (
                "one-line event",
                format!("data: event 1{t}{t}"),
                vec![message("event 1")],
            ),
            (
                "one-line event + two-line event",
                format!("data: event 1{t}{t}data: event 2 line 1{t}data: event 2 line 2{t}{t}"),
                vec![
                    message("event 1"),
                    message("event 2 line 1\nevent 2 line 2"),
                ],
            ),
            (
                "3-line event with empty line at beginning",
                format!("data:{t}data: line2{t}data: line3{t}{t}"),
                vec![message("\nline2\nline3")],
            ),
            (
                "3-line event with empty line in middle",
                format!("data: line1{t}data:{t}data: line3{t}{t}"),
                vec![message("line1\n\nline3")],
            ),
            (
                "ignores 1 extra empty line",
                format!("data: event 1{t}{t}{t}data: event 2{t}{t}"),
                vec![message("event 1"), message("event 2")],
            ),
            (
                "ignores 2 extra empty lines",
                format!("data: event 1{t}{t}{t}{t}data: event 2{t}{t}"),
                vec![message("event 1"), message("event 2")],
            ),
        ];
        for (input_name, input, expect) in inputs {
            for (chunking, size) in [
                ("one chunk", input.len()),
                ("1-character chunks", 1),
                ("2-character chunks", 2),
            ] {
                cases.push(Case {
                    name: format!("{ending_name} separator/{input_name}/{chunking}"),
                    chunks: input.as_bytes().chunks(size).map(<[u8]>::to_vec).collect(),
                    expect: expect.clone(),
                });
            }
        }
    }
    cases
}

/// The suite's two large messages: the base64 text of 5 MiB of random bytes (6,990,508
/// characters; here random alphanumerics of that length) in one chunk, and two of them (about
/// 14 MB) in one line sent in two chunks.
fn large_cases() -> Vec<Case> {
    const LEN: usize = (5 * 1024 * 1024usize).div_ceil(3) * 4;
    let mut rng = fastrand::Rng::with_seed(0);
    let mut random_text = || -> String { (0..LEN).map(|_| rng.alphanumeric()).collect() };
    let a = random_text();
    let b = random_text();
    vec![
        Case {
            name: "large message in one chunk".into(),
            chunks: vec![format!("data: {a}\n\n").into_bytes()],
            expect: vec![message(&a)],
        },
        Case {
            name: "large message in two chunks".into(),
            chunks: vec![
                format!("data: {a}").into_bytes(),
                format!("{b}\n\n").into_bytes(),
            ],
            expect: vec![message(&format!("{a}{b}"))],
        },
    ]
}

/// Runs every case through one contract service; returns how many passed (a failure panics
/// with the case's name).
async fn run_cases(cases: Vec<Case>) -> usize {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let service = format!("http://{}", listener.local_addr().expect("addr"));
    let task = tokio::spawn(serve_contract_service(listener));
    let (mut streams, stream_base) = ScriptServer::tcp().await;
    let mut passed = 0;
    for case in cases {
        let mut callbacks = Callbacks::start().await;
        let params = json!({
            "streamUrl": format!("{stream_base}/stream"),
            "callbackUrl": callbacks.base,
            "tag": case.name,
            "initialDelayMs": 0,
        });
        let (status, headers, body) =
            http("POST", &format!("{service}/"), &params.to_string()).await;
        assert_eq!(status, 201, "{}: {body}", case.name);
        let entity = headers
            .get("location")
            .and_then(|v| v.to_str().ok())
            .expect("Location")
            .to_owned();
        let mut conn = streams.accept().await;
        conn.stream_head().await;
        for chunk in &case.chunks {
            conn.write(chunk).await;
        }
        for (i, expected) in case.expect.iter().enumerate() {
            let (path, got) = callbacks.next().await;
            assert_eq!(path, format!("/{}", i + 1), "{}", case.name);
            if got != expected.json() {
                let shown = |v: &Value| {
                    let text = v.to_string();
                    if text.len() > 300 {
                        format!("{}… ({} bytes)", &text[..300], text.len())
                    } else {
                        text
                    }
                };
                panic!(
                    "{}: callback {} was {}, expected {}",
                    case.name,
                    i + 1,
                    shown(&got),
                    shown(&expected.json())
                );
            }
        }
        let (status, _, _) = http("DELETE", &entity, "").await;
        assert_eq!(status, 204, "{}", case.name);
        conn.closed().await;
        passed += 1;
    }
    let (status, _, _) = http("DELETE", &format!("{service}/"), "").await;
    assert_eq!(status, 204);
    task.await.expect("service task").expect("service result");
    passed
}

#[tokio::test]
async fn basic_parsing_bom_and_comment_cases() {
    let cases = parsing_cases();
    let total = cases.len();
    assert_eq!(run_cases(cases).await, total);
    assert_eq!(total, 37);
}

#[tokio::test]
async fn line_ending_cases() {
    let cases = linefeed_cases();
    let total = cases.len();
    assert_eq!(run_cases(cases).await, total);
    assert_eq!(total, 54);
}

#[tokio::test]
async fn large_message_cases() {
    assert_eq!(run_cases(large_cases()).await, 2);
}
