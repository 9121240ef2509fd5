//! The netstring pair encoding of stored sessions (src/store/pairs.rs) and the memcached
//! item formats built on it (src/store/memcached/item.rs).
//!
//! Input: text (first byte < 0x80) is a stored value, tried as pairs and as each item
//! kind; other inputs build field maps (keys and JSON values through the sidecar's own
//! writers), raw pairs or items with `arbitrary`.
//!
//! Properties:
//! - `decode_pairs(encode_pairs(m)) == m` for every field map of the wire forms (fields
//!   are JSON string literals, values non-empty JSON text, both printable ASCII);
//! - on arbitrary bytes, no panic; what decodes agrees with an independent netstring
//!   reader (`<len>:<bytes>,` repeated, all of the input), has no field twice, and holds
//!   only what the writers can produce: quoted fields, non-empty values, printable ASCII;
//!   it re-encodes and decodes to the same map;
//! - a memcached session, flash or owner-index item that decodes re-encodes to bytes that
//!   decode and re-encode to themselves (one spelling after one round).
#![no_main]

use std::collections::BTreeMap;

use arbitrary::Arbitrary;
use libfuzzer_sys::fuzz_target;
use session_sidecar::{
    fuzz_api::{memcached_reencode_flash, memcached_reencode_index, memcached_reencode_session},
    protocol::{field_literal, json_ascii},
    store::{
        FieldMap,
        pairs::{decode_pairs, encode_pairs},
    },
};
use sidecar_fuzz::{Json, Mode, Style, mode, printable};

#[derive(Arbitrary, Debug)]
enum Input {
    Raw(Vec<u8>),
    Map(Vec<(String, Json, Style)>),
    Item(u8, Vec<u8>),
}

/// `<len>:<bytes>,` pairs over all of `bytes`, as DJB's netstrings (lengths in decimal).
fn oracle_pairs(mut bytes: &[u8]) -> Option<Vec<(Vec<u8>, Vec<u8>)>> {
    let mut parts = Vec::new();
    while !bytes.is_empty() {
        let colon = bytes.iter().position(|&b| b == b':')?;
        let digits = &bytes[..colon];
        if digits.is_empty() || digits.len() > 9 || !digits.iter().all(u8::is_ascii_digit) {
            return None;
        }
        let len: usize = std::str::from_utf8(digits).ok()?.parse().ok()?;
        let body = &bytes[colon + 1..];
        if body.len() < len + 1 || body[len] != b',' {
            return None;
        }
        parts.push(body[..len].to_vec());
        bytes = &body[len + 1..];
    }
    if parts.len() % 2 != 0 {
        return None;
    }
    Some(
        parts
            .chunks(2)
            .map(|c| (c[0].clone(), c[1].clone()))
            .collect(),
    )
}

fn check_map(map: &FieldMap) {
    for (f, v) in map {
        assert!(
            f.len() >= 2 && f.starts_with('"') && f.ends_with('"'),
            "field {f:?}"
        );
        assert!(!v.is_empty());
        assert!(printable(f) && printable(v), "not printable: {f:?}: {v:?}");
    }
}

fn round_trip(map: &FieldMap) {
    let mut out = Vec::new();
    encode_pairs(map, &mut out);
    assert_eq!(decode_pairs(&out).as_ref(), Ok(map));
}

fn check(input: Input) {
    match input {
        Input::Map(entries) => {
            let map: FieldMap = entries
                .into_iter()
                .filter_map(|(k, j, style)| {
                    let v: serde_json::Value = serde_json::from_str(&j.text(style)).ok()?;
                    Some((field_literal(&k), json_ascii(&v)))
                })
                .collect();
            check_map(&map);
            round_trip(&map);
        }
        Input::Raw(bytes) => {
            if let Ok(map) = decode_pairs(&bytes) {
                check_decoded(&bytes, &map);
            }
        }
        Input::Item(kind, bytes) => {
            let reencode = match kind % 3 {
                0 => memcached_reencode_session,
                1 => memcached_reencode_flash,
                _ => memcached_reencode_index,
            };
            if let Ok(once) = reencode(&bytes) {
                let twice = reencode(&once).expect("a re-encoded item decodes");
                assert_eq!(twice, once, "re-encoding is not stable");
            }
        }
    }
}

/// What `decode_pairs` made of `bytes`, against the oracle.
fn check_decoded(bytes: &[u8], map: &FieldMap) {
    // Lengths of more than 9 digits are refused by both; any other parse the oracle
    // does not share is a finding.
    let pairs = oracle_pairs(bytes).expect("decoded what is not netstring pairs");
    let mut seen = BTreeMap::new();
    for (f, v) in &pairs {
        let f = String::from_utf8(f.clone()).expect("ASCII field");
        let v = String::from_utf8(v.clone()).expect("ASCII value");
        assert!(seen.insert(f, v).is_none(), "a field twice was accepted");
    }
    assert_eq!(&seen, map);
    check_map(map);
    round_trip(map);
}

fuzz_target!(|data: &[u8]| match mode(data) {
    // Text: the bytes of a stored value, tried as netstring pairs and as each memcached
    // item kind.
    Mode::Text(t) => {
        check(Input::Raw(t.to_vec()));
        for kind in 0..3 {
            check(Input::Item(kind, t.to_vec()));
        }
    }
    Mode::Structured(u) => {
        if let Ok(input) = Input::arbitrary_take_rest(u) {
            check(input);
        }
    }
});
