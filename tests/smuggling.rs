//! Request smuggling and slow clients over raw sockets (docs/security.md §12, §13).
//!
//! Every case is a raw exchange with the real sidecar (memory store) in front of a
//! counting upstream with its own strict HTTP/1.1 parser (`harness::raw`). Each case
//! asserts what the client got (statuses, and whether the connection was closed) and
//! what the upstream received, exactly: method, path and body bytes of every message,
//! and how it ended. A connection the sidecar keeps open must still be usable: a probe
//! request is sent on it and must reach the upstream as the next message, so a request
//! parsed from the wrong offset shows up either way.
//!
//! Expected outcomes follow RFC 9112 and docs/protocol.md §10.4: an ambiguous or
//! malformed message is answered 400 (501 for an unknown transfer coding, 408 for a
//! stalled body) and the connection closed; it never reaches the app whole. A request
//! whose body turns out malformed after its head was forwarded is abandoned: the app sees
//! at most an incomplete message (the upstream connection is cut), never a complete one.
//!
//! Run with `--nocapture` to print the table of cases and outcomes (docs/security.md
//! §12 has it).

mod harness;

use std::time::Duration;

use bytes::Bytes;
use harness::{
    Sidecar,
    raw::{End, Exchange, RawClient, RawUpstream},
};
use serde_json::{Value, json};

/// Timers of the fixtures: short enough to keep the binary fast, long enough that a
/// loaded machine does not trip them where a test does not mean to.
const HEADER_READ: &str = "1s";
const BODY_READ: &str = "1s";

struct Fixture {
    up: RawUpstream,
    sc: Sidecar,
}

async fn fixture(extra: Value) -> Fixture {
    let up = RawUpstream::start().await;
    let mut cfg = json!({
        "upstream": up.url(),
        "timeouts": {"header_read": HEADER_READ, "body_read": BODY_READ},
    });
    harness::merge(&mut cfg, extra);
    let sc = Sidecar::start(json!({"engine": "memory"}), cfg).await;
    Fixture { up, sc }
}

/// What the upstream must receive, in order.
#[derive(Debug, Clone)]
enum Up {
    /// This message, complete: method, path, body.
    Got(&'static str, &'static str, &'static str),
    /// A request the sidecar started to forward and then abandoned (its body turned out
    /// malformed or stalled): the upstream saw nothing of it, or an incomplete message —
    /// never a complete one.
    Aborted(&'static str, &'static str),
}

/// Whether `seen` is exactly `expected`: the complete messages in order, each
/// incomplete one accounted for by an `Aborted`, nothing malformed or pending.
fn upstream_matches(expected: &[Up], seen: &[Exchange]) -> bool {
    let complete: Vec<(String, String, String)> = seen
        .iter()
        .filter(|e| e.end == End::Complete)
        .map(|e| {
            let (m, p, b, _) = e.summary();
            (m, p, b)
        })
        .collect();
    let wanted: Vec<(String, String, String)> = expected
        .iter()
        .filter_map(|u| match u {
            Up::Got(m, p, b) => Some(((*m).into(), (*p).into(), (*b).into())),
            Up::Aborted(..) => None,
        })
        .collect();
    if complete != wanted {
        return false;
    }
    let mut aborted: Vec<(&str, &str)> = expected
        .iter()
        .filter_map(|u| match u {
            Up::Aborted(m, p) => Some((*m, *p)),
            Up::Got(..) => None,
        })
        .collect();
    for e in seen.iter().filter(|e| e.end != End::Complete) {
        if e.end != End::Incomplete {
            return false;
        }
        match aborted
            .iter()
            .position(|(m, p)| *m == e.method && *p == e.path)
        {
            Some(i) => {
                aborted.remove(i);
            }
            None => return false,
        }
    }
    true
}

/// One raw exchange and what it must lead to.
struct Case {
    name: &'static str,
    send: Vec<u8>,
    /// The responses the client gets, in order.
    statuses: &'static [u16],
    /// Closed after them; otherwise the connection must serve a probe request.
    closed: bool,
    up: Vec<Up>,
}

fn case(
    name: &'static str,
    send: &[u8],
    statuses: &'static [u16],
    closed: bool,
    up: Vec<Up>,
) -> Case {
    Case {
        name,
        send: send.to_vec(),
        statuses,
        closed,
        up,
    }
}

/// A request the sidecar refuses before forwarding anything: one status, closed,
/// nothing upstream.
fn refused(name: &'static str, send: &[u8], status: &'static [u16]) -> Case {
    case(name, send, status, true, vec![])
}

const PROBE: &[u8] = b"GET /probe HTTP/1.1\r\nHost: x\r\n\r\n";

/// What one case showed.
#[derive(Debug)]
struct Observed {
    statuses: Vec<u16>,
    closed: bool,
    up: Vec<Exchange>,
}

async fn observe(f: &Fixture, c: &Case) -> Observed {
    let mut client = RawClient::connect(f.sc.addr).await;
    client.send(&c.send).await;
    let mut statuses = Vec::new();
    for _ in 0..c.statuses.len() {
        match client.response().await {
            Some(r) => statuses.push(r.status),
            None => break,
        }
    }
    let closed = if c.closed {
        client.closed_within(Duration::from_secs(5)).await
    } else {
        // Still open: the next bytes must be read as the next request.
        let probed = client.send(PROBE).await && client.response().await.is_some();
        !probed
    };
    drop(client);
    Observed {
        statuses,
        closed,
        up: f.up.take().await,
    }
}

fn describe(up: &[Exchange]) -> String {
    if up.is_empty() {
        return "nothing".into();
    }
    up.iter()
        .map(|e| {
            let (m, p, b, end) = e.summary();
            let end = match end {
                End::Complete => String::new(),
                other => format!(" ({other:?})"),
            };
            format!("{m} {p} {:?}{end}", b.chars().take(40).collect::<String>())
        })
        .collect::<Vec<_>>()
        .join("; ")
}

/// Run every case; print one table line each; fail with every mismatch at once.
async fn run(f: &Fixture, cases: Vec<Case>) {
    let mut failures = Vec::new();
    for mut c in cases {
        if !c.closed {
            c.up.push(Up::Got("GET", "/probe", ""));
        }
        let o = observe(f, &c).await;
        let close = if o.closed { "closed" } else { "open" };
        println!(
            "| {} | {:?} {close} | {} |",
            c.name,
            o.statuses,
            describe(&o.up)
        );
        if o.statuses != c.statuses || o.closed != c.closed || !upstream_matches(&c.up, &o.up) {
            failures.push(format!(
                "{}: expected {:?} closed={} upstream {:?}\n   got {:?} closed={} upstream {}",
                c.name,
                c.statuses,
                c.closed,
                c.up,
                o.statuses,
                o.closed,
                describe(&o.up)
            ));
        }
    }
    assert!(failures.is_empty(), "\n{}", failures.join("\n"));
}

// ---------------------------------------------------------------------------------------
// Content-Length
// ---------------------------------------------------------------------------------------

/// RFC 9112 §6.3: an invalid `Content-Length` is an unrecoverable framing error (400,
/// close). Two equal fields may be processed as one (RFC 9110 §8.6): the app then sees
/// one `Content-Length`.
#[tokio::test]
async fn duplicate_and_malformed_content_length() {
    let f = fixture(json!({})).await;
    use Up::Got;
    run(
        &f,
        vec![
            case(
                "two equal `Content-Length: 5` fields",
                b"POST /a HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nContent-Length: 5\r\n\r\nhello",
                &[200],
                false,
                vec![Got("POST", "/a", "hello")],
            ),
            refused(
                "`Content-Length: 5` and `Content-Length: 6`",
                b"POST /a HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\nhello!",
                &[400],
            ),
            refused(
                "`Content-Length: 5, 5`",
                b"POST /a HTTP/1.1\r\nHost: x\r\nContent-Length: 5, 5\r\n\r\nhello",
                &[400],
            ),
            refused(
                "`Content-Length: 5, 6`",
                b"POST /a HTTP/1.1\r\nHost: x\r\nContent-Length: 5, 6\r\n\r\nhello!",
                &[400],
            ),
            refused(
                "`Content-Length: +5`",
                b"POST /a HTTP/1.1\r\nHost: x\r\nContent-Length: +5\r\n\r\nhello",
                &[400],
            ),
            refused(
                "`Content-Length: -1`",
                b"POST /a HTTP/1.1\r\nHost: x\r\nContent-Length: -1\r\n\r\nhello",
                &[400],
            ),
            refused(
                "`Content-Length: 0x5`",
                b"POST /a HTTP/1.1\r\nHost: x\r\nContent-Length: 0x5\r\n\r\nhello",
                &[400],
            ),
            refused(
                "empty `Content-Length`",
                b"POST /a HTTP/1.1\r\nHost: x\r\nContent-Length:\r\n\r\nhello",
                &[400],
            ),
            refused(
                "`Content-Length` past u64",
                b"POST /a HTTP/1.1\r\nHost: x\r\nContent-Length: 99999999999999999999999\r\n\r\nhello",
                &[400],
            ),
            case(
                "`Content-Length: 05` (leading zero is valid)",
                b"POST /a HTTP/1.1\r\nHost: x\r\nContent-Length: 05\r\n\r\nhello",
                &[200],
                false,
                vec![Got("POST", "/a", "hello")],
            ),
        ],
    )
    .await;
    // The two equal fields reach the app as one.
    let mut c = RawClient::connect(f.sc.addr).await;
    c.send(b"POST /one HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nContent-Length: 5\r\n\r\nhello")
        .await;
    assert_eq!(c.response().await.map(|r| r.status), Some(200));
    let seen = f.up.take().await;
    assert_eq!(seen.len(), 1, "{seen:?}");
    let lengths: Vec<&String> = seen[0]
        .headers
        .iter()
        .filter(|(k, _)| k == "content-length")
        .map(|(_, v)| v)
        .collect();
    assert_eq!(lengths, ["5"]);
}

// ---------------------------------------------------------------------------------------
// Content-Length with Transfer-Encoding
// ---------------------------------------------------------------------------------------

/// The variants `tests/proxy_http.rs` does not cover: other order and case, obs-fold,
/// HTTP/1.0, a pipelined second request (also behind a body), bare LF line ends.
#[tokio::test]
async fn content_length_with_transfer_encoding_variants() {
    let f = fixture(json!({})).await;
    use Up::Got;
    run(
        &f,
        vec![
            refused(
                "lower-case `transfer-encoding` before `content-length`",
                b"POST /a HTTP/1.1\r\nHost: x\r\ntransfer-encoding: chunked\r\ncontent-length: 5\r\n\r\n0\r\n\r\n",
                &[400],
            ),
            refused(
                "mixed-case names `TrAnSfEr-EnCoDiNg`, `CONTENT-LENGTH`",
                b"POST /a HTTP/1.1\r\nHost: x\r\nCONTENT-LENGTH: 5\r\nTrAnSfEr-EnCoDiNg: chunked\r\n\r\n0\r\n\r\n",
                &[400],
            ),
            refused(
                "`Transfer-Encoding: identity` with `Content-Length`",
                b"POST /a HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nTransfer-Encoding: identity\r\n\r\nhello",
                &[400],
            ),
            refused(
                "`Transfer-Encoding:` obs-folded onto `chunked`, with `Content-Length`",
                b"POST /a HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nTransfer-Encoding:\r\n chunked\r\n\r\n0\r\n\r\n",
                &[400],
            ),
            refused(
                "`Content-Length` obs-folded into another field, with `Transfer-Encoding`",
                b"POST /a HTTP/1.1\r\nHost: x\r\nX-A: 1\r\n Content-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
                &[400],
            ),
            refused(
                "CL + TE in HTTP/1.0",
                b"POST /a HTTP/1.0\r\nHost: x\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
                &[400],
            ),
            refused(
                "CL + TE with bare LF line ends",
                b"POST /a HTTP/1.1\nHost: x\nContent-Length: 5\nTransfer-Encoding: chunked\n\n0\n\n",
                &[400],
            ),
            case(
                "pipelined: CL + TE behind a request with a body",
                b"POST /1 HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\nhelloPOST /2 HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\nGET /smuggled HTTP/1.1\r\nHost: x\r\n\r\n",
                &[200, 400],
                true,
                vec![Got("POST", "/1", "hello")],
            ),
            case(
                "pipelined: TE only, head not scanned whole (refused: CL cannot be ruled out)",
                b"GET /1 HTTP/1.1\r\nHost: x\r\n\r\nPOST /2 HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
                &[200, 400],
                true,
                vec![Got("GET", "/1", "")],
            ),
        ],
    )
    .await;
}

// ---------------------------------------------------------------------------------------
// Transfer-Encoding
// ---------------------------------------------------------------------------------------

/// RFC 9112 §6.1, §6.3: `chunked` must be the final coding (else 400); a coding the
/// sidecar does not implement is 501; TE in HTTP/1.0 is faulty framing (400, close).
/// Trailing whitespace is OWS, not part of the value.
#[tokio::test]
async fn transfer_codings() {
    let f = fixture(json!({})).await;
    use Up::Got;
    run(
        &f,
        vec![
            refused(
                "`Transfer-Encoding: gzip, chunked`",
                b"POST /a HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: gzip, chunked\r\n\r\n0\r\n\r\n",
                &[501],
            ),
            refused(
                "`Transfer-Encoding: chunked, gzip`",
                b"POST /a HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked, gzip\r\n\r\n0\r\n\r\n",
                &[400],
            ),
            refused(
                "`Transfer-Encoding: chunked` twice",
                b"POST /a HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
                &[400],
            ),
            refused(
                "`Transfer-Encoding: chunked, chunked`",
                b"POST /a HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked, chunked\r\n\r\n0\r\n\r\n",
                &[501],
            ),
            refused(
                "`Transfer-Encoding: xchunked`",
                b"POST /a HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: xchunked\r\n\r\n0\r\n\r\n",
                &[400],
            ),
            refused(
                "`Transfer-Encoding: identity`",
                b"POST /a HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: identity\r\n\r\n0\r\n\r\n",
                &[400],
            ),
            refused(
                "empty `Transfer-Encoding`",
                b"POST /a HTTP/1.1\r\nHost: x\r\nTransfer-Encoding:\r\n\r\n0\r\n\r\n",
                &[400],
            ),
            refused(
                "`Transfer-Encoding: chunked` + VT (0x0b)",
                b"POST /a HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\x0b\r\n\r\n0\r\n\r\n",
                &[400],
            ),
            refused(
                "`Transfer-Encoding: chunked` in HTTP/1.0",
                b"POST /a HTTP/1.0\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
                &[400],
            ),
            case(
                "`Transfer-Encoding: chunked ` (trailing SP is OWS)",
                b"POST /a HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked \r\n\r\n5\r\nhello\r\n0\r\n\r\n",
                &[200],
                false,
                vec![Got("POST", "/a", "hello")],
            ),
            case(
                "`Transfer-Encoding: CHUNKED`",
                b"POST /a HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: CHUNKED\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
                &[200],
                false,
                vec![Got("POST", "/a", "hello")],
            ),
        ],
    )
    .await;
}

// ---------------------------------------------------------------------------------------
// the request head
// ---------------------------------------------------------------------------------------

/// RFC 9112 §2.2, §5: bare CR, obs-fold, whitespace before the colon, CTLs and non-token
/// name characters are refused (400); a bare LF line end and leading empty lines are
/// accepted (both allowed) and the message is re-framed with CRLF for the app; obs-text
/// in a value is opaque and passed on.
#[tokio::test]
async fn malformed_request_heads() {
    let f = fixture(json!({})).await;
    use Up::Got;
    run(
        &f,
        vec![
            case(
                "bare LF line ends",
                b"GET /lf HTTP/1.1\nHost: x\n\n",
                &[200],
                false,
                vec![Got("GET", "/lf", "")],
            ),
            case(
                "empty line before the request line",
                b"\r\nGET /lead HTTP/1.1\r\nHost: x\r\n\r\n",
                &[200],
                false,
                vec![Got("GET", "/lead", "")],
            ),
            refused(
                "bare CR inside a value, hiding `Transfer-Encoding`",
                b"GET /cr HTTP/1.1\r\nHost: x\r\nX-A: a\rTransfer-Encoding: chunked\r\n\r\n",
                &[400],
            ),
            refused(
                "bare CR in the request line",
                b"GET /cr\r HTTP/1.1\r\nHost: x\r\n\r\n",
                &[400],
            ),
            refused(
                "bare CR line ends",
                b"GET /cr HTTP/1.1\rHost: x\r\r",
                &[400],
            ),
            refused(
                "obs-fold (SP) in a value",
                b"GET /fold HTTP/1.1\r\nHost: x\r\nX-A: a\r\n b\r\n\r\n",
                &[400],
            ),
            refused(
                "obs-fold (HTAB) in a value",
                b"GET /fold HTTP/1.1\r\nHost: x\r\nX-A: a\r\n\tb\r\n\r\n",
                &[400],
            ),
            refused(
                "whitespace before the first field line",
                b"GET /ws HTTP/1.1\r\n Host: x\r\n\r\n",
                &[400],
            ),
            refused(
                "NUL in a value",
                b"GET /ctl HTTP/1.1\r\nHost: x\r\nX-A: a\x00b\r\n\r\n",
                &[400],
            ),
            refused(
                "NUL in a name",
                b"GET /ctl HTTP/1.1\r\nHost: x\r\nX-\x00A: b\r\n\r\n",
                &[400],
            ),
            refused(
                "0x01 in a value",
                b"GET /ctl HTTP/1.1\r\nHost: x\r\nX-A: a\x01b\r\n\r\n",
                &[400],
            ),
            refused(
                "0x01 in a name",
                b"GET /ctl HTTP/1.1\r\nHost: x\r\nX-\x01A: b\r\n\r\n",
                &[400],
            ),
            refused(
                "0x7f in a value",
                b"GET /ctl HTTP/1.1\r\nHost: x\r\nX-A: a\x7fb\r\n\r\n",
                &[400],
            ),
            refused(
                "0x7f in a name",
                b"GET /ctl HTTP/1.1\r\nHost: x\r\nX-\x7fA: b\r\n\r\n",
                &[400],
            ),
            case(
                "obs-text (0x80) in a value",
                b"GET /obs HTTP/1.1\r\nHost: x\r\nX-A: a\x80b\r\n\r\n",
                &[200],
                false,
                vec![Got("GET", "/obs", "")],
            ),
            refused(
                "space before the colon",
                b"GET /sp HTTP/1.1\r\nHost: x\r\nX-A : b\r\n\r\n",
                &[400],
            ),
            refused(
                "`Content-Length : 5` (space before the colon)",
                b"POST /sp HTTP/1.1\r\nHost: x\r\nContent-Length : 5\r\n\r\nhello",
                &[400],
            ),
            refused(
                "`Transfer-Encoding : chunked` with `Content-Length`",
                b"POST /sp HTTP/1.1\r\nHost: x\r\nTransfer-Encoding : chunked\r\nContent-Length: 5\r\n\r\n0\r\n\r\n",
                &[400],
            ),
            refused(
                "HTAB before the colon",
                b"GET /tab HTTP/1.1\r\nHost: x\r\nX-A\t: b\r\n\r\n",
                &[400],
            ),
            refused(
                "`(` in a name",
                b"GET /tok HTTP/1.1\r\nHost: x\r\nX(A): b\r\n\r\n",
                &[400],
            ),
            refused(
                "`\"` in a name",
                b"GET /tok HTTP/1.1\r\nHost: x\r\nX\"A: b\r\n\r\n",
                &[400],
            ),
            refused(
                "`/` in a name",
                b"GET /tok HTTP/1.1\r\nHost: x\r\nX/A: b\r\n\r\n",
                &[400],
            ),
            refused(
                "`@` in a name",
                b"GET /tok HTTP/1.1\r\nHost: x\r\nX@A: b\r\n\r\n",
                &[400],
            ),
            refused(
                "UTF-8 in a name",
                b"GET /tok HTTP/1.1\r\nHost: x\r\nX\xc3\xa9: b\r\n\r\n",
                &[400],
            ),
            refused(
                "empty name",
                b"GET /tok HTTP/1.1\r\nHost: x\r\n: b\r\n\r\n",
                &[400],
            ),
            refused(
                "field line without a colon",
                b"GET /tok HTTP/1.1\r\nHost: x\r\nXA b\r\n\r\n",
                &[400],
            ),
            // RFC 9112 §3.2: one valid Host, or 400. The head was read whole, so the
            // connection goes on.
            case(
                "two `Host` fields",
                b"GET /host HTTP/1.1\r\nHost: a.test\r\nHost: b.test\r\n\r\n",
                &[400],
                false,
                vec![],
            ),
            case(
                "`Host: a.test, b.test`",
                b"GET /host HTTP/1.1\r\nHost: a.test, b.test\r\n\r\n",
                &[400],
                false,
                vec![],
            ),
            case(
                "`Host: user@a.test`",
                b"GET /host HTTP/1.1\r\nHost: user@a.test\r\n\r\n",
                &[400],
                false,
                vec![],
            ),
            case(
                "`Host: [::1]:8080`",
                b"GET /host HTTP/1.1\r\nHost: [::1]:8080\r\n\r\n",
                &[200],
                false,
                vec![Got("GET", "/host", "")],
            ),
            refused(
                "two spaces in the request line",
                b"GET  /dsp  HTTP/1.1\r\nHost: x\r\n\r\n",
                &[400],
            ),
            refused(
                "`HTTP/1.2`",
                b"GET /v HTTP/1.2\r\nHost: x\r\n\r\n",
                &[400],
            ),
            refused(
                "lower-case `http/1.1`",
                b"GET /v http/1.1\r\nHost: x\r\n\r\n",
                &[400],
            ),
        ],
    )
    .await;
}

// ---------------------------------------------------------------------------------------
// chunked bodies
// ---------------------------------------------------------------------------------------

/// A chunked body is decoded by hyper while it streams to the app, so its head (and
/// possibly a prefix of its data) may already be upstream when the framing breaks:
/// the sidecar then cuts the upstream connection (the app sees an incomplete message,
/// never a complete one), answers 400 and closes.
#[tokio::test]
async fn malformed_chunked_bodies() {
    let f = fixture(json!({})).await;
    use Up::{Aborted, Got};
    let post = |body: &str| {
        format!("POST /a HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n{body}")
            .into_bytes()
    };
    let mut ext = String::from("5");
    while ext.len() < 64 * 1024 {
        ext.push_str(";ext=aaaaaaaaaaaaaaaa");
    }
    ext.push_str("\r\nhello\r\n0\r\n\r\n");
    let bad = |name, body: &str| case(name, &post(body), &[400], true, vec![Aborted("POST", "/a")]);
    run(
        &f,
        vec![
            case(
                "chunk extension `5;name=val`",
                &post("5;name=val\r\nhello\r\n0\r\n\r\n"),
                &[200],
                false,
                vec![Got("POST", "/a", "hello")],
            ),
            case(
                "chunk size `0005`",
                &post("0005\r\nhello\r\n0\r\n\r\n"),
                &[200],
                false,
                vec![Got("POST", "/a", "hello")],
            ),
            bad("64 KiB of chunk extensions", &ext),
            bad(
                "chunk size overflow `ffffffffffffffffff`",
                "ffffffffffffffffff\r\nhello\r\n0\r\n\r\n",
            ),
            bad("chunk size `-5`", "-5\r\nhello\r\n0\r\n\r\n"),
            bad("chunk size `0x5`", "0x5\r\nhello\r\n0\r\n\r\n"),
            bad("chunk size `zz`", "zz\r\nhello\r\n0\r\n\r\n"),
            bad("empty chunk size", "\r\nhello\r\n0\r\n\r\n"),
            bad("chunk size `5 5`", "5 5\r\nhello\r\n0\r\n\r\n"),
            bad("chunk data longer than its size", "3\r\nhello\r\n0\r\n\r\n"),
            bad("bare LF in chunk framing", "5\nhello\n0\n\n"),
            bad(
                "no final CRLF, a request where the trailers go",
                "5\r\nhello\r\n0\r\nGET /smuggled HTTP/1.1\r\nHost: x\r\n\r\n",
            ),
        ],
    )
    .await;
    // The client's broken body is not counted against the upstream.
    let metrics =
        f.sc.running
            .as_ref()
            .expect("running")
            .proxy
            .metrics()
            .encode();
    let upstream_errors: Vec<&str> = metrics
        .lines()
        .filter(|l| l.starts_with("session_sidecar_upstream_errors_total{"))
        .collect();
    assert!(!upstream_errors.is_empty(), "{metrics}");
    assert!(
        upstream_errors.iter().all(|l| l.ends_with(" 0")),
        "{upstream_errors:?}"
    );
}

/// Trailers cannot carry reserved names or framing fields to the app: reserved names
/// are stripped, framing fields are dropped (RFC 9110 §6.5.1), and no trailer ever
/// becomes a header.
#[tokio::test]
async fn trailers_with_reserved_and_framing_names_never_become_headers() {
    let f = fixture(json!({})).await;
    let mut c = RawClient::connect(f.sc.addr).await;
    c.send(
        b"POST /t HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\
Trailer: X-Session, X_Session_Status, Content-Length, Transfer-Encoding, Host, X-Ok\r\n\r\n\
5\r\nhello\r\n0\r\nX-Session: {\"user\":\"admin\"}\r\nx_session_status: active\r\n\
Content-Length: 99\r\nTransfer-Encoding: chunked\r\nHost: evil\r\nX-Ok: 1\r\n\r\n",
    )
    .await;
    assert_eq!(c.response().await.map(|r| r.status), Some(200));
    let seen = f.up.take().await;
    assert_eq!(seen.len(), 1, "{}", describe(&seen));
    let e = &seen[0];
    assert_eq!(e.summary(), harness::raw::complete("POST", "/t", "hello"));
    assert_eq!(e.trailers, [("x-ok".to_owned(), "1".to_owned())]);
    let one = |name: &str| -> Vec<&str> {
        e.headers
            .iter()
            .filter(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
            .collect()
    };
    assert_eq!(one("host"), ["x"]);
    assert_eq!(one("x-session"), ["{}"], "the injected value only");
    assert_eq!(one("x-session-status"), ["none"]);
    assert!(one("content-length").is_empty(), "{:?}", e.headers);
    assert_eq!(
        one("transfer-encoding"),
        ["chunked"],
        "the sidecar's own framing"
    );
    assert!(one("x-ok").is_empty(), "a trailer is not a header");
}

// ---------------------------------------------------------------------------------------
// HTTP/1.0, pipelining behind unread bodies
// ---------------------------------------------------------------------------------------

/// HTTP/1.0 with a body: exactly one request upstream with the exact body; with
/// `Connection: keep-alive` the next request on the connection is served, without it
/// the connection closes (and bytes after the body are never a request).
#[tokio::test]
async fn http10_with_a_body() {
    let f = fixture(json!({})).await;
    use Up::Got;
    run(
        &f,
        vec![
            case(
                "HTTP/1.0 + body + `Connection: keep-alive`, then another request",
                b"POST /h10 HTTP/1.0\r\nContent-Length: 5\r\nConnection: keep-alive\r\n\r\nhelloGET /h10b HTTP/1.0\r\nConnection: keep-alive\r\n\r\n",
                &[200, 200],
                false,
                vec![Got("POST", "/h10", "hello"), Got("GET", "/h10b", "")],
            ),
            case(
                "HTTP/1.0 + body, no keep-alive, bytes after the body",
                b"POST /h10 HTTP/1.0\r\nContent-Length: 5\r\n\r\nhelloGET /smuggled HTTP/1.0\r\n\r\n",
                &[200],
                true,
                vec![Got("POST", "/h10", "hello")],
            ),
        ],
    )
    .await;
}

/// The app answers before reading the body (`/early…`), or answers and closes
/// (`/early-close…`). The body — which looks like a request — must be read as the body,
/// and the next request parsed from the right offset, or the connection closed.
#[tokio::test]
async fn pipelined_requests_after_a_body_the_app_did_not_read() {
    let f = fixture(json!({})).await;
    use Up::{Aborted, Got};
    const SMUGGLED: &str = "GET /smuggled HTTP/1.1\r\nHost: x\r\n\r\n";
    run(
        &f,
        vec![
            case(
                "app answers before reading a CL body that looks like a request",
                b"POST /early HTTP/1.1\r\nHost: x\r\nContent-Length: 35\r\n\r\nGET /smuggled HTTP/1.1\r\nHost: x\r\n\r\nGET /next HTTP/1.1\r\nHost: x\r\n\r\n",
                &[200, 200],
                false,
                vec![Got("POST", "/early", SMUGGLED), Got("GET", "/next", "")],
            ),
            case(
                "app answers and closes without reading a CL body",
                b"POST /early-close HTTP/1.1\r\nHost: x\r\nContent-Length: 35\r\n\r\nGET /smuggled HTTP/1.1\r\nHost: x\r\n\r\nGET /next HTTP/1.1\r\nHost: x\r\n\r\n",
                &[200, 200],
                false,
                vec![Aborted("POST", "/early-close"), Got("GET", "/next", "")],
            ),
            case(
                "app answers before reading a chunked body that looks like a request",
                b"POST /early HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n23\r\nGET /smuggled HTTP/1.1\r\nHost: x\r\n\r\n\r\n0\r\n\r\nGET /next HTTP/1.1\r\nHost: x\r\n\r\n",
                &[200, 200],
                false,
                vec![Got("POST", "/early", SMUGGLED), Got("GET", "/next", "")],
            ),
            case(
                "app answers and closes without reading a chunked body",
                b"POST /early-close HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n23\r\nGET /smuggled HTTP/1.1\r\nHost: x\r\n\r\n\r\n0\r\n\r\nGET /next HTTP/1.1\r\nHost: x\r\n\r\n",
                &[200, 200],
                false,
                vec![Aborted("POST", "/early-close"), Got("GET", "/next", "")],
            ),
        ],
    )
    .await;
}

/// As above, but the rest of the body (and the next request) is sent only after the
/// client has the early response: the sidecar cannot drain what has not arrived.
#[tokio::test]
async fn a_body_sent_after_the_early_response_is_still_the_body() {
    let f = fixture(json!({})).await;
    for (path, keeps) in [("/early", true), ("/early-close", false)] {
        let mut c = RawClient::connect(f.sc.addr).await;
        let head =
            format!("POST {path} HTTP/1.1\r\nHost: x\r\nContent-Length: 35\r\n\r\nGET /smug");
        c.send(head.as_bytes()).await;
        let first = c.response().await.map(|r| r.status);
        assert_eq!(first, Some(200), "{path}");
        let sent = c
            .send(b"gled HTTP/1.1\r\nHost: x\r\n\r\nGET /next HTTP/1.1\r\nHost: x\r\n\r\n")
            .await;
        let seen = if keeps {
            assert!(sent, "{path}");
            assert_eq!(c.response().await.map(|r| r.status), Some(200), "{path}");
            let seen = f.up.take().await;
            let want = vec![
                harness::raw::complete(
                    "POST",
                    "/early",
                    "GET /smuggled HTTP/1.1\r\nHost: x\r\n\r\n",
                ),
                harness::raw::complete("GET", "/next", ""),
            ];
            let got: Vec<_> = seen.iter().map(Exchange::summary).collect();
            assert_eq!(got, want, "{path}");
            seen
        } else {
            // The app stopped reading, so the sidecar stops reading the body too: the
            // connection closes after the response, and nothing after it is parsed.
            assert!(c.closed_within(Duration::from_secs(5)).await, "{path}");
            let seen = f.up.take().await;
            assert!(
                upstream_matches(&[Up::Aborted("POST", "/early-close")], &seen),
                "{path}: {}",
                describe(&seen)
            );
            seen
        };
        println!(
            "| body after the early response, {path} | [200{}] {} | {} |",
            if keeps { ", 200" } else { "" },
            if keeps { "open" } else { "closed" },
            describe(&seen)
        );
    }
}

// ---------------------------------------------------------------------------------------
// HTTP/2 (prior knowledge on the plain listener)
// ---------------------------------------------------------------------------------------

/// How an h2 stream ended for the client.
#[derive(Debug, PartialEq, Eq)]
enum H2End {
    Status(u16),
    Reset(h2::Reason),
    Other(String),
}

async fn h2_connect(addr: std::net::SocketAddr) -> h2::client::SendRequest<Bytes> {
    let tcp = tokio::net::TcpStream::connect(addr).await.expect("connect");
    let (client, conn) = tokio::time::timeout(Duration::from_secs(5), h2::client::handshake(tcp))
        .await
        .expect("h2 handshake within 5 s")
        .expect("h2 handshake");
    tokio::spawn(async move {
        let _ = conn.await;
    });
    client
}

/// Send one request with `fields`, then `data` (with END_STREAM on the last frame when
/// `end`, or on the HEADERS when `data` is empty), each frame `pause` after the one
/// before; wait at most 5 s for how it ends.
async fn h2_request(
    client: &mut h2::client::SendRequest<Bytes>,
    path: &str,
    fields: &[(&str, &str)],
    data: &[&'static [u8]],
    end: bool,
    pause: Duration,
) -> (H2End, Option<h2::SendStream<Bytes>>) {
    let mut req = http::Request::builder()
        .method("POST")
        .uri(format!("http://localhost{path}"));
    for (k, v) in fields {
        req = req.header(*k, *v);
    }
    let req = req.body(()).expect("request");
    let ready = tokio::time::timeout(Duration::from_secs(5), client.clone().ready())
        .await
        .expect("h2 ready within 5 s");
    let mut ready = match ready {
        Ok(r) => r,
        Err(e) => return (H2End::Other(e.to_string()), None),
    };
    let (resp, mut stream) = match ready.send_request(req, data.is_empty() && end) {
        Ok(pair) => pair,
        Err(e) => return (H2End::Other(e.to_string()), None),
    };
    for (i, d) in data.iter().enumerate() {
        tokio::time::sleep(pause).await;
        let last = end && i + 1 == data.len();
        if stream.send_data(Bytes::from_static(d), last).is_err() {
            break;
        }
    }
    let outcome = match tokio::time::timeout(Duration::from_secs(5), resp).await {
        Err(_) => H2End::Other("no answer within 5 s".into()),
        Ok(Ok(r)) => H2End::Status(r.status().as_u16()),
        Ok(Err(e)) => match e.reason() {
            Some(reason) => H2End::Reset(reason),
            None => H2End::Other(e.to_string()),
        },
    };
    (outcome, Some(stream))
}

/// RFC 9113 §8.1.1: a `content-length` that disagrees with the DATA frames makes the
/// stream malformed. The stream is reset (or answered 400); the app never sees a
/// complete request with a body other than the one announced. The connection serves
/// the next stream.
#[tokio::test]
async fn h2_content_length_disagreeing_with_data() {
    let f = fixture(json!({})).await;
    let mut client = h2_connect(f.sc.addr).await;
    let refused = |e: &H2End| {
        matches!(
            e,
            H2End::Reset(h2::Reason::PROTOCOL_ERROR) | H2End::Status(400)
        )
    };
    struct H2Case {
        name: &'static str,
        path: &'static str,
        fields: Vec<(&'static str, &'static str)>,
        data: Vec<&'static [u8]>,
        /// Before each DATA frame: long enough for the head to be forwarded first.
        pause: Duration,
        up: Vec<Up>,
    }
    let late = Duration::from_millis(200);
    let now = Duration::ZERO;
    let h2case = |name, path, cl: &'static str, data: Vec<&'static [u8]>, pause, up| H2Case {
        name,
        path,
        fields: vec![("content-length", cl)],
        data,
        pause,
        up,
    };
    let cases = vec![
        h2case(
            "h2: `content-length: 10`, 5 bytes of DATA",
            "/h2fewer",
            "10",
            vec![b"hello"],
            now,
            vec![Up::Aborted("POST", "/h2fewer")],
        ),
        h2case(
            "h2: `content-length: 10`, 5 bytes of DATA after the head was forwarded",
            "/h2fewer-late",
            "10",
            vec![b"hello"],
            late,
            vec![Up::Aborted("POST", "/h2fewer-late")],
        ),
        h2case(
            "h2: `content-length: 3`, 5 bytes of DATA",
            "/h2more",
            "3",
            vec![b"hello"],
            now,
            vec![Up::Aborted("POST", "/h2more")],
        ),
        h2case(
            "h2: `content-length: 3`, 2 + 2 bytes of DATA, 200 ms apart",
            "/h2more-late",
            "3",
            vec![b"he", b"ll"],
            late,
            vec![Up::Aborted("POST", "/h2more-late")],
        ),
        h2case(
            "h2: `content-length: 5`, END_STREAM on HEADERS",
            "/h2none",
            "5",
            vec![],
            now,
            vec![],
        ),
        h2case(
            "h2: `content-length: 5, 5`",
            "/h2list",
            "5, 5",
            vec![b"hello"],
            now,
            vec![],
        ),
        H2Case {
            name: "h2: `content-length: 5` and `content-length: 6`",
            path: "/h2dup",
            fields: vec![("content-length", "5"), ("content-length", "6")],
            data: vec![b"hello"],
            pause: now,
            up: vec![],
        },
    ];
    let mut failures = Vec::new();
    // The control first: a matching length goes through.
    let (end, _) = h2_request(
        &mut client,
        "/h2ok",
        &[("content-length", "5")],
        &[b"hello"],
        true,
        now,
    )
    .await;
    let seen = f.up.take().await;
    println!(
        "| h2: `content-length: 5`, 5 bytes of DATA (control) | {end:?} | {} |",
        describe(&seen)
    );
    assert_eq!(end, H2End::Status(200));
    assert!(
        upstream_matches(&[Up::Got("POST", "/h2ok", "hello")], &seen),
        "{}",
        describe(&seen)
    );
    for c in cases {
        let (end, _stream) =
            h2_request(&mut client, c.path, &c.fields, &c.data, true, c.pause).await;
        let seen = f.up.take().await;
        println!("| {} | {end:?} | {} |", c.name, describe(&seen));
        if !refused(&end) || !upstream_matches(&c.up, &seen) {
            failures.push(format!("{}: {end:?}, upstream {}", c.name, describe(&seen)));
        }
    }
    // The connection is still usable.
    let (end, _) = h2_request(
        &mut client,
        "/h2after",
        &[("content-length", "2")],
        &[b"ok"],
        true,
        Duration::ZERO,
    )
    .await;
    assert_eq!(end, H2End::Status(200));
    assert!(
        upstream_matches(&[Up::Got("POST", "/h2after", "ok")], &f.up.take().await),
        "the connection serves the next stream"
    );
    assert!(failures.is_empty(), "\n{}", failures.join("\n"));
}

// ---------------------------------------------------------------------------------------
// slow clients
// ---------------------------------------------------------------------------------------

/// Slowloris: a head trickled one byte per 100 ms never completes within
/// `timeouts.header_read`: the connection is closed and nothing reaches the app.
#[tokio::test]
async fn slowloris_head_is_closed_and_never_forwarded() {
    let f = fixture(json!({})).await;
    let mut c = RawClient::connect(f.sc.addr).await;
    let head = b"GET /slow HTTP/1.1\r\nHost: x\r\nX-Padding: aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa\r\n\r\n";
    let mut closed = false;
    let mut sent = 0;
    for b in head.chunks(1) {
        if !c.send(b).await || c.closed_within(Duration::from_millis(100)).await {
            closed = true;
            break;
        }
        sent += 1;
    }
    assert!(
        closed,
        "the whole head trickled in ({sent} bytes) without a close"
    );
    assert!(sent < head.len());
    let seen = f.up.take().await;
    assert!(seen.is_empty(), "{}", describe(&seen));
    println!(
        "| slowloris: head at 1 byte / 100 ms, header_read {HEADER_READ} | closed after {sent} bytes, no response | nothing |"
    );
}

/// A body that stops arriving: `timeouts.body_read` bounds the wait for each next piece
/// of a request body. The request is answered 408 and the connection closed; the app's
/// connection is cut, so it sees an incomplete message, never a complete one.
#[tokio::test]
async fn a_stalled_body_is_answered_408_and_closed() {
    let f = fixture(json!({})).await;
    use Up::Aborted;
    run(
        &f,
        vec![
            case(
                "CL body stalls after 3 of 10 bytes",
                b"POST /a HTTP/1.1\r\nHost: x\r\nContent-Length: 10\r\n\r\nabc",
                &[408],
                true,
                vec![Aborted("POST", "/a")],
            ),
            case(
                "`Expect: 100-continue`, the body never follows the 100",
                b"POST /a HTTP/1.1\r\nHost: x\r\nExpect: 100-continue\r\nContent-Length: 10\r\n\r\n",
                &[100, 408],
                true,
                vec![Aborted("POST", "/a")],
            ),
            case(
                "CL body never starts",
                b"POST /a HTTP/1.1\r\nHost: x\r\nContent-Length: 10\r\n\r\n",
                &[408],
                true,
                vec![Aborted("POST", "/a")],
            ),
            case(
                "chunked body stalls mid-chunk",
                b"POST /a HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhel",
                &[408],
                true,
                vec![Aborted("POST", "/a")],
            ),
            case(
                "chunked body: no final CRLF, then silence",
                b"POST /a HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n",
                &[408],
                true,
                vec![Aborted("POST", "/a")],
            ),
            case(
                "chunk size 2^64-1 (`ffffffffffffffff`), then silence",
                b"POST /a HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\nffffffffffffffff\r\nhello\r\n0\r\n\r\n",
                &[408],
                true,
                vec![Aborted("POST", "/a")],
            ),
        ],
    )
    .await;
}

/// A body trickled slower than `timeouts.body_read` after the app already answered:
/// the client has its response, then the connection is closed; the app's connection is
/// cut mid-body.
#[tokio::test]
async fn a_body_trickled_after_an_early_response_is_cut() {
    let f = fixture(json!({})).await;
    let mut c = RawClient::connect(f.sc.addr).await;
    c.send(b"POST /early HTTP/1.1\r\nHost: x\r\nContent-Length: 10\r\n\r\na")
        .await;
    assert_eq!(c.response().await.map(|r| r.status), Some(200));
    // One more byte, each slower than body_read, until the sidecar gives up.
    let mut closed = false;
    for _ in 0..5 {
        if c.closed_within(Duration::from_millis(2500)).await || !c.send(b"b").await {
            closed = true;
            break;
        }
    }
    assert!(closed, "the trickled body was never cut");
    let seen = f.up.take().await;
    assert!(
        upstream_matches(&[Up::Aborted("POST", "/early")], &seen),
        "{}",
        describe(&seen)
    );
    println!(
        "| body trickled slower than body_read {BODY_READ} after an early response | [200] closed | {} |",
        describe(&seen)
    );
}

/// `timeouts.body_read` bounds each wait, not the whole body: a slow but steady upload
/// that takes longer than it in total goes through.
#[tokio::test]
async fn a_slow_but_steady_body_is_not_cut() {
    let f = fixture(json!({"timeouts": {"body_read": "3s"}})).await;
    let mut c = RawClient::connect(f.sc.addr).await;
    c.send(b"POST /steady HTTP/1.1\r\nHost: x\r\nContent-Length: 12\r\n\r\n")
        .await;
    for piece in [b"ab", b"cd", b"ef", b"gh", b"ij", b"kl"] {
        tokio::time::sleep(Duration::from_millis(700)).await;
        assert!(c.send(piece).await);
    }
    assert_eq!(c.response().await.map(|r| r.status), Some(200));
    let got: Vec<_> = f.up.take().await.iter().map(Exchange::summary).collect();
    assert_eq!(
        got,
        [harness::raw::complete("POST", "/steady", "abcdefghijkl")]
    );
}

/// HTTP/2: a stream whose body stalls is answered 408 (or reset) after
/// `timeouts.body_read`; the connection and its other streams carry on.
#[tokio::test]
async fn h2_a_stalled_body_ends_its_stream_only() {
    let f = fixture(json!({})).await;
    let mut client = h2_connect(f.sc.addr).await;
    let (end, stream) = h2_request(
        &mut client,
        "/h2slow",
        &[("content-length", "10")],
        &[b"abc"],
        false,
        Duration::ZERO,
    )
    .await;
    assert!(
        matches!(end, H2End::Status(408) | H2End::Reset(_)),
        "{end:?}"
    );
    drop(stream);
    let seen = f.up.take().await;
    assert!(
        upstream_matches(&[Up::Aborted("POST", "/h2slow")], &seen),
        "{}",
        describe(&seen)
    );
    println!(
        "| h2: body stalls after 3 of 10 bytes | {end:?} | {} |",
        describe(&seen)
    );
    let (end, _) = h2_request(
        &mut client,
        "/h2after",
        &[("content-length", "2")],
        &[b"ok"],
        true,
        Duration::ZERO,
    )
    .await;
    assert_eq!(end, H2End::Status(200));
    assert!(upstream_matches(
        &[Up::Got("POST", "/h2after", "ok")],
        &f.up.take().await
    ));
}
