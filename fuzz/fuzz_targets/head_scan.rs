//! The raw request-head scan (src/server/head_scan.rs, docs/protocol.md §10.4).
//!
//! Input: text (first byte < 0x80) is the raw bytes of a connection; other inputs build
//! heads from request lines, near-miss spellings of the two names and raw lines, and
//! how the reads split them, with `arbitrary`.
//!
//! Properties:
//! - the result does not depend on how the reads split the bytes;
//! - it equals a whole-buffer oracle: lines end at `\n`; the head is seen whole when its
//!   first line ends in ` HTTP/1.1` or ` HTTP/1.0` (before an optional `\r`) and a blank
//!   line follows; `Content-Length` and `Transfer-Encoding` are names at line starts,
//!   any case, before the blank line;
//! - against hyper's own parser (httparse, the configuration hyper's server uses): when
//!   httparse reads a complete request whose fields include both `Content-Length` and
//!   `Transfer-Encoding`, the scan never says `Clean`; when it reads one and the scan saw
//!   the head whole, the scan says `Ambiguous` exactly when both are there.
#![no_main]

use arbitrary::Arbitrary;
use libfuzzer_sys::fuzz_target;
use session_sidecar::fuzz_api::{HeadFraming, HeadScan};
use sidecar_fuzz::{Mode, mode};

#[derive(Arbitrary, Debug)]
struct Input {
    head: Head,
    /// Lengths of successive reads.
    splits: Vec<u8>,
}

#[derive(Arbitrary, Debug)]
enum Head {
    Raw(Vec<u8>),
    Lines {
        method: u8,
        version: u8,
        lines: Vec<Line>,
        crlf: bool,
        body: Vec<u8>,
    },
}

#[derive(Arbitrary, Debug)]
enum Line {
    ContentLength(u8, String),
    TransferEncoding(u8, String),
    Other(String, String),
    Raw(Vec<u8>),
}

/// Spellings of the two names, with near misses.
fn spell(base: &str, how: u8) -> String {
    match how % 8 {
        0 => base.to_owned(),
        1 => base.to_ascii_uppercase(),
        2 => base.to_ascii_lowercase(),
        3 => format!("{base} "),
        4 => format!(" {base}"),
        5 => format!("X-{base}"),
        6 => base.replace('-', "_"),
        _ => format!("{base}\t"),
    }
}

impl Head {
    fn bytes(&self) -> Vec<u8> {
        match self {
            Head::Raw(b) => b.clone(),
            Head::Lines {
                method,
                version,
                lines,
                crlf,
                body,
            } => {
                let eol = if *crlf { "\r\n" } else { "\n" };
                let method = ["GET", "POST", "PUT", ""][usize::from(method % 4)];
                let version =
                    ["HTTP/1.1", "HTTP/1.0", "HTTP/2.0", "HTTP/1.1 "][usize::from(version % 4)];
                let mut out = format!("{method} / {version}{eol}").into_bytes();
                for line in lines {
                    match line {
                        Line::ContentLength(how, v) => out.extend_from_slice(
                            format!("{}:{v}{eol}", spell("Content-Length", *how)).as_bytes(),
                        ),
                        Line::TransferEncoding(how, v) => out.extend_from_slice(
                            format!("{}:{v}{eol}", spell("Transfer-Encoding", *how)).as_bytes(),
                        ),
                        Line::Other(n, v) => {
                            out.extend_from_slice(format!("{n}: {v}{eol}").as_bytes())
                        }
                        Line::Raw(b) => out.extend_from_slice(b),
                    }
                }
                out.extend_from_slice(eol.as_bytes());
                out.extend_from_slice(body);
                out
            }
        }
    }
}

fn oracle(bytes: &[u8]) -> HeadFraming {
    let mut lines = bytes.split(|b| *b == b'\n');
    let mut complete_lines: Vec<&[u8]> = Vec::new();
    // Only lines that end with `\n` count: the last piece has none.
    let n = bytes.iter().filter(|b| **b == b'\n').count();
    for _ in 0..n {
        complete_lines.push(lines.next().unwrap());
    }
    let (mut cl, mut te, mut done) = (false, false, false);
    for line in &complete_lines {
        if line.is_empty() || *line == b"\r" {
            done = true;
            break;
        }
        let lower = line.to_ascii_lowercase();
        if lower.starts_with(b"content-length:") || lower.starts_with(b"content-length ") {
            cl = true;
        } else if lower.starts_with(b"transfer-encoding:") {
            te = true;
        }
    }
    let request_line = complete_lines.first().is_some_and(|l| {
        let l = l.strip_suffix(b"\r").unwrap_or(l);
        l.ends_with(b" HTTP/1.1") || l.ends_with(b" HTTP/1.0")
    });
    if cl && te {
        HeadFraming::Ambiguous
    } else if done && request_line {
        HeadFraming::Clean
    } else {
        HeadFraming::Unseen
    }
}

fn check(bytes: &[u8], splits: &[u8]) {
    let mut whole = HeadScan::new();
    whole.feed(bytes);
    let result = whole.result();

    let mut split = HeadScan::new();
    let mut rest = bytes;
    for &n in splits {
        let n = usize::from(n).min(rest.len());
        split.feed(&rest[..n]);
        rest = &rest[n..];
    }
    split.feed(rest);
    assert_eq!(split.result(), result, "depends on the reads");

    assert_eq!(result, oracle(bytes), "oracle");

    let mut fields = [httparse::EMPTY_HEADER; 64];
    let mut req = httparse::Request::new(&mut fields);
    if let Ok(httparse::Status::Complete(_)) = req.parse(bytes) {
        let has = |name: &str| {
            req.headers
                .iter()
                .any(|h| h.name.eq_ignore_ascii_case(name))
        };
        let both = has("content-length") && has("transfer-encoding");
        if both {
            assert_ne!(
                result,
                HeadFraming::Clean,
                "hyper sees both, the scan says clean"
            );
        }
        if result != HeadFraming::Unseen {
            assert_eq!(
                result == HeadFraming::Ambiguous,
                both,
                "scan and httparse disagree"
            );
        }
    }
}

fuzz_target!(|data: &[u8]| match mode(data) {
    // Text: the bytes a connection reads, fed whole and in reads of 1 to 7 bytes.
    Mode::Text(t) => {
        let splits: Vec<u8> = (0..t.len()).map(|i| (i % 7 + 1) as u8).collect();
        check(t, &splits);
    }
    Mode::Structured(u) => {
        if let Ok(input) = Input::arbitrary_take_rest(u) {
            check(&input.head.bytes(), &input.splits);
        }
    }
});
