//! memcached meta-protocol reply lines (`parse_header`, src/store/memcached/client.rs).
//!
//! Input: text (first byte < 0x80) is one reply line; other inputs build lines from a
//! model of the replies, or raw bytes, with `arbitrary`.
//!
//! Properties:
//! - no panic, whatever the line;
//! - a line written from a model (`VA <len> c<cas> t<ttl>` with other return flags
//!   around, `HD`/`EN`/`NS`/`EX`/`NF` with flags, `VERSION`, the error replies; with
//!   `\r\n`, `\n` or no ending) parses to that model, and a length above the 4 MiB
//!   bound or a TTL below -1 is refused;
//! - whatever parses has the shape of its code (`VA` lines give a bounded length and a
//!   TTL ≥ -1, errors keep at most 200 characters of the server's words), and writing
//!   the parsed header back as a canonical line parses to the same header.
#![no_main]

use arbitrary::Arbitrary;
use libfuzzer_sys::fuzz_target;
use session_sidecar::fuzz_api::{MemcachedHeader, memcached_parse_header};
use sidecar_fuzz::{Mode, mode};

const MAX_VALUE_LEN: usize = 4 * 1024 * 1024;

#[derive(Arbitrary, Debug)]
enum Input {
    Raw(Vec<u8>),
    Model(Model, u8),
}

#[derive(Arbitrary, Debug)]
enum Model {
    Value {
        len: u32,
        cas: Option<u64>,
        ttl: Option<i64>,
        /// Other return flags (`f<flags>`, `s<size>`, `k`, `O<opaque>`, `b`).
        others: Vec<(u8, u32)>,
        cas_first: bool,
    },
    Plain(u8, Vec<(u8, u32)>),
    Version(String),
    Error(u8, String),
}

fn other_flag(&(which, n): &(u8, u32)) -> String {
    match which % 5 {
        0 => format!("f{n}"),
        1 => format!("s{n}"),
        2 => "k".to_owned(),
        3 => format!("O{n}"),
        _ => "b".to_owned(),
    }
}

fn canonical(h: &MemcachedHeader) -> String {
    match h {
        MemcachedHeader::Value { len, cas, ttl } => {
            let mut s = format!("VA {len}");
            if let Some(c) = cas {
                s.push_str(&format!(" c{c}"));
            }
            if let Some(t) = ttl {
                s.push_str(&format!(" t{t}"));
            }
            s
        }
        MemcachedHeader::Done => "HD".into(),
        MemcachedHeader::Miss => "EN".into(),
        MemcachedHeader::NotStored => "NS".into(),
        MemcachedHeader::Exists => "EX".into(),
        MemcachedHeader::NotFound => "NF".into(),
        MemcachedHeader::Version(v) => format!("VERSION {v}"),
        MemcachedHeader::Error(m) => m.clone(),
    }
}

fn check_shape(line: &[u8], h: &MemcachedHeader) {
    let text = String::from_utf8_lossy(line);
    match h {
        MemcachedHeader::Value { len, ttl, .. } => {
            assert!(text.starts_with("VA "), "{text:?}");
            assert!(*len <= MAX_VALUE_LEN);
            assert!(ttl.is_none_or(|t| t >= -1));
        }
        MemcachedHeader::Error(m) => {
            assert!(m.chars().count() <= 200);
            assert!(
                m.starts_with("SERVER_ERROR") || m.starts_with("CLIENT_ERROR") || m == "ERROR",
                "{m:?}"
            );
        }
        MemcachedHeader::Version(_) => assert!(text.starts_with("VERSION "), "{text:?}"),
        _ => assert!(text.len() >= 2),
    }
}

fn check(input: &Input) {
    let (line, want) = match input {
        Input::Raw(b) => (b.clone(), None),
        Input::Model(m, ending) => {
            let ending = ["\r\n", "\n", ""][usize::from(ending % 3)];
            let (text, want) = match m {
                Model::Value {
                    len,
                    cas,
                    ttl,
                    others,
                    cas_first,
                } => {
                    let mut flags: Vec<String> = others.iter().map(other_flag).collect();
                    let c = cas.map(|c| format!("c{c}"));
                    let t = ttl.map(|t| format!("t{t}"));
                    let (a, b) = if *cas_first { (c, t) } else { (t, c) };
                    flags.extend(a);
                    flags.extend(b);
                    let text = format!("VA {len} {}", flags.join(" "));
                    let len = *len as usize;
                    let want = if len > MAX_VALUE_LEN || ttl.is_some_and(|t| t < -1) {
                        Err(())
                    } else {
                        Ok(MemcachedHeader::Value {
                            len,
                            cas: *cas,
                            ttl: *ttl,
                        })
                    };
                    (text, want)
                }
                Model::Plain(code, flags) => {
                    let (code, reply) = [
                        ("HD", MemcachedHeader::Done),
                        ("EN", MemcachedHeader::Miss),
                        ("NS", MemcachedHeader::NotStored),
                        ("EX", MemcachedHeader::Exists),
                        ("NF", MemcachedHeader::NotFound),
                    ][usize::from(code % 5)]
                    .clone();
                    let mut parts = vec![code.to_owned()];
                    parts.extend(flags.iter().map(other_flag));
                    (parts.join(" "), Ok(reply))
                }
                Model::Version(v) if !v.contains('\n') && !v.ends_with('\r') => (
                    format!("VERSION {v}"),
                    Ok(MemcachedHeader::Version(v.clone())),
                ),
                Model::Version(_) => return,
                Model::Error(code, words) if !words.contains('\n') && !words.ends_with('\r') => {
                    let text = match code % 3 {
                        0 => format!("SERVER_ERROR {words}"),
                        1 => format!("CLIENT_ERROR {words}"),
                        _ => "ERROR".to_owned(),
                    };
                    let kept = text.chars().take(200).collect();
                    (text, Ok(MemcachedHeader::Error(kept)))
                }
                Model::Error(..) => return,
            };
            (format!("{text}{ending}").into_bytes(), Some(want))
        }
    };
    let got = memcached_parse_header(&line);
    if let Some(want) = want {
        match (&got, &want) {
            (Ok(g), Ok(w)) => assert_eq!(g, w, "{:?}", String::from_utf8_lossy(&line)),
            (Err(_), Err(())) => {}
            _ => panic!(
                "{:?}: got {got:?}, want {want:?}",
                String::from_utf8_lossy(&line)
            ),
        }
    }
    if let Ok(h) = &got {
        check_shape(&line, h);
        let again = memcached_parse_header(format!("{}\r\n", canonical(h)).as_bytes());
        assert_eq!(again.as_ref(), Ok(h), "canonical form of {h:?}");
    }
}

fuzz_target!(|data: &[u8]| match mode(data) {
    // Text: one reply line, as read from the connection.
    Mode::Text(t) => check(&Input::Raw(t.to_vec())),
    Mode::Structured(u) => {
        if let Ok(input) = Input::arbitrary_take_rest(u) {
            check(&input);
        }
    }
});
