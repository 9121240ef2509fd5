//! Reserved-name matching and stripping (src/protocol/names.rs, src/proxy/headers.rs,
//! docs/protocol.md §3), for header maps and `Trailer` declarations.
//!
//! Input: text (first byte < 0x80) is a header block, `Name: value` per line, checked
//! with the prefix `X-Session`; other inputs build a prefix, names, header maps and
//! `Trailer` values with `arbitrary`.
//!
//! Properties, against the oracle of docs/protocol.md §3.1 (ASCII-lowercase, `_` and
//! `.` as `-`, prefix match):
//! - `ReservedPrefix::new` accepts exactly the non-empty token prefixes;
//! - `is_reserved` equals the oracle for any string;
//! - after `strip`, and after `take_instructions` whatever its result, no reserved name
//!   is left and every other header keeps all its values, in order;
//! - after `filter_trailer_declaration`, the declaration lists no reserved name, keeps
//!   every other listed name in order, and no other header changes.
#![no_main]

use arbitrary::Arbitrary;
use http::{HeaderMap, HeaderValue, header};
use libfuzzer_sys::fuzz_target;
use session_sidecar::{protocol::ReservedPrefix, proxy::headers::filter_trailer_declaration};
use sidecar_fuzz::{
    FuzzName, Mode, entries, header_block, header_map, is_tchar, mode, oracle_reserved, respell,
};

#[derive(Arbitrary, Debug)]
struct Input {
    prefix: Prefix,
    names: Vec<String>,
    headers: Vec<(FuzzName, Vec<u8>)>,
    trailers: Vec<Vec<Token>>,
}

#[derive(Arbitrary, Debug)]
enum Prefix {
    Default,
    Respelled(u64),
    Other(String),
}

#[derive(Arbitrary, Debug)]
enum Token {
    Name(FuzzName),
    Pad(u8),
    Raw(Vec<u8>),
}

fn trim(s: &[u8]) -> Vec<u8> {
    let s = &s[s.iter().take_while(|b| **b == b' ' || **b == b'\t').count()..];
    let end = s.len()
        - s.iter()
            .rev()
            .take_while(|b| **b == b' ' || **b == b'\t')
            .count();
    s[..end].to_vec()
}

/// Every property, for one prefix and one header map (whose `Trailer` fields, if any,
/// are the declaration).
fn check(prefix_text: &str, names: &[String], headers: &HeaderMap) {
    let prefix = match ReservedPrefix::new(prefix_text) {
        Ok(p) => {
            assert!(!prefix_text.is_empty() && prefix_text.bytes().all(is_tchar));
            p
        }
        Err(_) => {
            assert!(prefix_text.is_empty() || !prefix_text.bytes().all(is_tchar));
            return;
        }
    };
    let reserved = |name: &[u8]| oracle_reserved(prefix_text, name);

    for name in names {
        assert_eq!(
            prefix.is_reserved(name),
            reserved(name.as_bytes()),
            "{name:?}"
        );
    }
    for name in headers.keys() {
        assert_eq!(
            prefix.is_reserved(name.as_str()),
            reserved(name.as_str().as_bytes())
        );
    }
    let expected: Vec<_> = entries(headers)
        .into_iter()
        .filter(|(name, _)| !reserved(name.as_bytes()))
        .collect();

    let mut stripped = headers.clone();
    prefix.strip(&mut stripped);
    assert_eq!(entries(&stripped), expected, "strip");

    let mut taken = headers.clone();
    let result = prefix.take_instructions(&mut taken);
    assert_eq!(entries(&taken), expected, "take_instructions ({result:?})");
    if let Ok(set) = result {
        // Every removed reserved name is either an instruction or listed as ignored.
        let lower = prefix_text.to_ascii_lowercase();
        for name in headers.keys().filter(|n| reserved(n.as_str().as_bytes())) {
            let is_instruction = sidecar_fuzz::INSTRUCTIONS
                .iter()
                .any(|s| name.as_str() == format!("{lower}{s}"));
            assert_eq!(
                set.ignored.iter().any(|i| i == name.as_str()),
                !is_instruction,
                "{name}"
            );
        }
    }

    // The `Trailer` declaration, on the stripped map. The oracle: the names of the
    // readable values (visible ASCII, SP, HTAB), split on `,`, OWS trimmed.
    let mut with_trailer = stripped;
    let declared: Vec<Vec<u8>> = with_trailer
        .get_all(header::TRAILER)
        .iter()
        .map(|v| v.as_bytes().to_vec())
        .collect();
    let others: Vec<_> = entries(&with_trailer)
        .into_iter()
        .filter(|(n, _)| n != "trailer")
        .collect();
    let kept: Vec<Vec<u8>> = declared
        .iter()
        .filter(|v| v.iter().all(|&b| b == b'\t' || (0x20..0x7f).contains(&b)))
        .flat_map(|v| v.split(|b| *b == b',').map(trim).collect::<Vec<_>>())
        .filter(|n| !n.is_empty() && !reserved(n))
        .collect();
    filter_trailer_declaration(&mut with_trailer, &prefix);
    let after: Vec<&HeaderValue> = with_trailer.get_all(header::TRAILER).iter().collect();
    assert!(after.len() <= 1);
    let listed: Vec<Vec<u8>> = after
        .first()
        .map(|v| v.as_bytes().split(|b| *b == b',').map(trim).collect())
        .unwrap_or_default();
    assert_eq!(listed, kept, "trailer declaration");
    for name in &listed {
        assert!(!reserved(name));
    }
    let others_after: Vec<_> = entries(&with_trailer)
        .into_iter()
        .filter(|(n, _)| n != "trailer")
        .collect();
    assert_eq!(others_after, others);
}

fn structured(input: Input) {
    let prefix_text = match &input.prefix {
        Prefix::Default => "X-Session".to_owned(),
        Prefix::Respelled(bits) => String::from_utf8(respell("X-Session", *bits)).unwrap(),
        Prefix::Other(s) => s.clone(),
    };
    let mut headers = header_map(&input.headers);
    for tokens in &input.trailers {
        let mut value = Vec::new();
        for t in tokens {
            match t {
                Token::Name(n) => value.extend_from_slice(&n.bytes()),
                Token::Pad(p) => value.extend_from_slice(
                    [&b","[..], b", ", b" ,", b"\t,\t", b" "][usize::from(*p % 5)],
                ),
                Token::Raw(r) => value.extend_from_slice(r),
            }
        }
        if let Ok(v) = HeaderValue::from_bytes(&value) {
            headers.append(header::TRAILER, v);
        }
    }
    check(&prefix_text, &input.names, &headers);
}

fuzz_target!(|data: &[u8]| match mode(data) {
    // Text: a header block (`Name: value` lines), prefix `X-Session`; each line's name is
    // also matched as a string.
    Mode::Text(t) => {
        let names: Vec<String> = t
            .split(|b| *b == b'\n')
            .filter_map(|l| l.split(|b| *b == b':').next())
            .map(|n| String::from_utf8_lossy(n).into_owned())
            .collect();
        check("X-Session", &names, &header_block(t));
    }
    Mode::Structured(u) => {
        if let Ok(input) = Input::arbitrary_take_rest(u) {
            structured(input);
        }
    }
});
