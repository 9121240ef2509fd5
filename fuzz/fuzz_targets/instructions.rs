//! Write instructions → change set (src/protocol/instructions.rs, src/protocol/json.rs,
//! docs/protocol.md §5).
//!
//! Input: text (first byte < 0x80) is a response header block, `Name: value` per line;
//! other inputs build instruction headers (raw bytes, JSON text with duplicates, deep
//! nesting, odd numbers and escapes, or its canonical `json_ascii` form) and other
//! headers with `arbitrary`.
//!
//! Properties:
//! - whatever the result, no reserved header is left in the response;
//! - on `Ok`, every op agrees with serde_json's reading of the header values, in the
//!   order of effect of §5.3: fields and values are printable ASCII, fields parse back to
//!   the key, values parse back to the member's value and re-encode
//!   ([`session_sidecar::protocol::json_ascii`]) to the same length (so no duplicate was
//!   kept at any depth), depth ≤ 32, keys of 1–256 bytes, integers for Incr;
//! - an instruction value that the oracle can judge alone (owners, max-age, key arrays,
//!   and objects in the canonical form `json_ascii` writes) is accepted exactly when the
//!   rules of §5.2 say so (with serde_json's private number key,
//!   `$serde_json::private::Number`, refused as a member name at any depth, as
//!   src/protocol/json.rs documents);
//! - a refusal names the instruction and gives a printable ASCII reason.
#![no_main]

use arbitrary::Arbitrary;
use http::{HeaderName, HeaderValue};
use libfuzzer_sys::fuzz_target;
use serde_json::Value;
use session_sidecar::protocol::{
    MAX_DEPTH, MAX_KEY_LEN, MAX_MAX_AGE, MAX_OWNER_LEN, Op, ReservedPrefix, json_ascii,
};
use std::collections::HashSet;

use sidecar_fuzz::{
    FuzzName, INSTRUCTIONS, Json, Mode, Style, depth, entries, has_key, header_block, mode,
    oracle_reserved, printable,
};

const PREFIX: &str = "X-Session";
const NUMBER_TOKEN: &str = "$serde_json::private::Number";

#[derive(Arbitrary, Debug)]
struct Input {
    instructions: Vec<Instruction>,
    others: Vec<(FuzzName, Vec<u8>)>,
}

#[derive(Arbitrary, Debug)]
struct Instruction {
    kind: u8,
    value: Text,
}

#[derive(Arbitrary, Debug)]
enum Text {
    Raw(Vec<u8>),
    Json(Json, Style),
    /// The text `json_ascii` writes for serde_json's reading of the value.
    Canonical(Json, Style),
}

impl Text {
    /// The header bytes, and whether they are in canonical form.
    fn bytes(&self) -> (Vec<u8>, bool) {
        match self {
            Text::Raw(b) => (b.clone(), false),
            Text::Json(j, style) => (j.text(*style).into_bytes(), false),
            Text::Canonical(j, style) => match serde_json::from_str::<Value>(&j.text(*style)) {
                Ok(v) => (json_ascii(&v).into_bytes(), true),
                Err(_) => (j.text(*style).into_bytes(), false),
            },
        }
    }
}

fn key_ok(k: &str) -> bool {
    !k.is_empty() && k.len() <= MAX_KEY_LEN
}

/// The number rule of docs/protocol.md §5.2: a number is kept as written, unless it is
/// beyond the range of an IEEE 754 double (I-JSON, RFC 7493 §2.2: `1e400`, a 310-digit
/// integer), which is malformed. Rounding and underflow to 0 are allowed.
fn number_ok(text: &str) -> bool {
    text.parse::<f64>().is_ok_and(f64::is_finite)
}

fn numbers_ok(v: &Value) -> bool {
    match v {
        Value::Number(n) => number_ok(&n.to_string()),
        Value::Array(items) => items.iter().all(numbers_ok),
        Value::Object(map) => map.values().all(numbers_ok),
        _ => true,
    }
}

fn incr_amount(v: &Value) -> Option<i64> {
    let Value::Number(n) = v else { return None };
    let text = n.to_string();
    if text.contains(['.', 'e', 'E']) {
        return None;
    }
    text.parse().ok()
}

fn trim_ows(b: &[u8]) -> &[u8] {
    let start = b.iter().take_while(|c| **c == b' ' || **c == b'\t').count();
    let end = b.len()
        - b[start..]
            .iter()
            .rev()
            .take_while(|c| **c == b' ' || **c == b'\t')
            .count();
    &b[start..end]
}

fn max_age(b: &[u8]) -> Option<u64> {
    let d = trim_ows(b);
    if d.is_empty() || !d.iter().all(u8::is_ascii_digit) {
        return None;
    }
    std::str::from_utf8(d)
        .ok()?
        .parse::<u64>()
        .ok()
        .filter(|s| (1..=MAX_MAX_AGE).contains(s))
}

fn owner(b: &[u8], nullable: bool) -> Option<Option<String>> {
    let o: Option<String> = serde_json::from_slice(b).ok()?;
    match o {
        None if nullable => Some(None),
        Some(s) if !s.is_empty() && s.len() <= MAX_OWNER_LEN => Some(Some(s)),
        _ => None,
    }
}

/// The members of an object instruction as serde_json reads it, if the rules hold as
/// far as serde_json can tell (it cannot see duplicates: it keeps the last).
fn object(b: &[u8], incr: bool) -> Option<serde_json::Map<String, Value>> {
    let v: Value = serde_json::from_slice(b).ok()?;
    if depth(&v) > MAX_DEPTH || !numbers_ok(&v) {
        return None;
    }
    // serde_json's private number key: refused as a key at any depth (docs/security.md
    // §4; src/protocol/json.rs `number_text`); serde_json leaves it in a map only when
    // its value is not a number's text.
    if has_key(&v, NUMBER_TOKEN) {
        return None;
    }
    let Value::Object(map) = v else { return None };
    if !map.keys().all(|k| key_ok(k)) {
        return None;
    }
    if incr && !map.values().all(|v| incr_amount(v).is_some()) {
        return None;
    }
    Some(map)
}

fn keys(b: &[u8]) -> Option<Vec<String>> {
    let v: Vec<String> = serde_json::from_slice(b).ok()?;
    v.iter().all(|k| key_ok(k)).then_some(v)
}

/// Whether the oracle alone can judge `bytes` for instruction `kind` (index into
/// [`INSTRUCTIONS`]), and its verdict.
fn verdict(kind: usize, bytes: &[u8], canonical: bool) -> Option<bool> {
    match INSTRUCTIONS[kind] {
        "-destroy" | "-regenerate" | "-revoke-others" => Some(true),
        "-owner" => Some(owner(bytes, true).is_some()),
        "-revoke-owner" => Some(owner(bytes, false).is_some()),
        "-max-age" => Some(max_age(bytes).is_some()),
        "-delete" => Some(keys(bytes).is_some()),
        "-incr" => canonical.then(|| object(bytes, true).is_some()),
        _ => canonical.then(|| object(bytes, false).is_some()),
    }
}

fn parse_field(field: &str) -> String {
    assert!(printable(field), "field {field:?}");
    serde_json::from_str::<String>(field).expect("a field is a JSON string literal")
}

fn check_value(wire: &str, want: &Value) {
    assert!(printable(wire), "value {wire:?}");
    let got: Value = serde_json::from_str(wire).expect("a value is JSON text");
    assert_eq!(&got, want, "{wire}");
    assert_eq!(json_ascii(&got).len(), wire.len(), "duplicate kept? {wire}");
    assert!(depth(&got) < MAX_DEPTH);
}

/// Check the next `map.len()` ops against the members of one object instruction.
fn members(ops: &mut std::slice::Iter<'_, Op>, map: serde_json::Map<String, Value>, kind: &str) {
    let mut seen = std::collections::HashSet::new();
    for _ in 0..map.len() {
        let op = ops.next().unwrap_or_else(|| panic!("{kind}: too few ops"));
        let (field, key) = match (kind, op) {
            ("-set" | "-replace", Op::Set(f, v)) | ("-flash-set", Op::FlashSet(f, v)) => {
                let key = parse_field(f);
                check_value(v, map.get(&key).expect("a member"));
                (f.clone(), key)
            }
            ("-incr", Op::Incr(f, by)) => {
                let key = parse_field(f);
                assert_eq!(Some(*by), incr_amount(map.get(&key).expect("a member")));
                (f.clone(), key)
            }
            _ => panic!("{kind}: unexpected {op:?}"),
        };
        assert!(key_ok(&key));
        assert!(seen.insert(field), "{kind}: key twice: {key:?}");
    }
}

/// Every property for one response head; `canonical` holds the values written by
/// `json_ascii` (no duplicate keys possible), which the oracle may judge alone.
fn check(mut headers: http::HeaderMap, canonical: &HashSet<Vec<u8>>) {
    let prefix = ReservedPrefix::new(PREFIX).unwrap();
    let lower = PREFIX.to_ascii_lowercase();
    // Instruction values by kind, in arrival order.
    let by_kind: Vec<Vec<(Vec<u8>, bool)>> = INSTRUCTIONS
        .iter()
        .map(|suffix| {
            headers
                .get_all(format!("{lower}{suffix}"))
                .iter()
                .map(|v| {
                    let b = v.as_bytes().to_vec();
                    let c = canonical.contains(&b);
                    (b, c)
                })
                .collect()
        })
        .collect();
    let expected_rest: Vec<_> = entries(&headers)
        .into_iter()
        .filter(|(n, _)| !oracle_reserved(PREFIX, n.as_bytes()))
        .collect();

    let result = prefix.take_instructions(&mut headers);
    assert_eq!(
        entries(&headers),
        expected_rest,
        "reserved headers left behind"
    );

    let verdicts: Vec<Option<bool>> = by_kind
        .iter()
        .enumerate()
        .flat_map(|(kind, values)| values.iter().map(move |(b, c)| verdict(kind, b, *c)))
        .collect();

    let set = match result {
        Err(m) => {
            assert!(
                verdicts.iter().any(|v| *v != Some(true)),
                "refused although every instruction is valid: {m}"
            );
            assert!(m.header.starts_with(PREFIX), "{}", m.header);
            assert!(
                printable(&m.reason) && !m.reason.is_empty(),
                "{:?}",
                m.reason
            );
            assert!(m.reason.len() <= 1024);
            return;
        }
        Ok(set) => set,
    };
    assert!(
        verdicts.iter().all(|v| *v != Some(false)),
        "accepted although the oracle refuses one: {set:?} {by_kind:?}"
    );

    let values = |suffix: &str| {
        let kind = INSTRUCTIONS.iter().position(|s| *s == suffix).unwrap();
        by_kind[kind]
            .iter()
            .map(|(b, _)| b.clone())
            .collect::<Vec<_>>()
    };
    assert_eq!(set.destroy, !values("-destroy").is_empty());
    assert_eq!(set.regenerate, !values("-regenerate").is_empty());
    assert_eq!(set.revoke_others, !values("-revoke-others").is_empty());
    let want_max_age = values("-max-age")
        .last()
        .map(|b| max_age(b).expect("valid max-age"));
    assert_eq!(set.max_age, want_max_age);
    let want_owner = values("-owner")
        .last()
        .map(|b| owner(b, true).expect("valid owner"));
    match (&set.owner, &want_owner) {
        (None, None) | (Some(None), Some(None)) => {}
        (Some(Some(lit)), Some(Some(s))) => assert_eq!(&parse_field(lit), s),
        other => panic!("owner {other:?}"),
    }
    let revoked: Vec<String> = set.revoke_owners.iter().map(|l| parse_field(l)).collect();
    let want_revoked: Vec<String> = values("-revoke-owner")
        .iter()
        .map(|b| owner(b, false).expect("valid owner").unwrap())
        .collect();
    assert_eq!(revoked, want_revoked);

    // Ops, in order of effect; members of one object in any order.
    let mut ops = set.ops.iter();
    for b in values("-replace") {
        assert_eq!(ops.next(), Some(&Op::ClearData));
        members(
            &mut ops,
            object(&b, false).expect("valid object"),
            "-replace",
        );
    }
    for b in values("-delete") {
        for key in keys(&b).expect("valid key array") {
            match ops.next() {
                Some(Op::Delete(f)) => assert_eq!(parse_field(f), key),
                other => panic!("delete: {other:?}"),
            }
        }
    }
    for kind in ["-set", "-incr", "-flash-set"] {
        for b in values(kind) {
            members(
                &mut ops,
                object(&b, kind == "-incr").expect("valid object"),
                kind,
            );
        }
    }
    assert_eq!(ops.next(), None, "more ops than members");
}

fn structured(input: Input) {
    let lower = PREFIX.to_ascii_lowercase();
    let mut headers = sidecar_fuzz::header_map(&input.others);
    let mut canonical = HashSet::new();
    for instruction in &input.instructions {
        let kind = usize::from(instruction.kind) % INSTRUCTIONS.len();
        let (bytes, is_canonical) = instruction.value.bytes();
        let Ok(value) = HeaderValue::from_bytes(&bytes) else {
            continue;
        };
        let name =
            HeaderName::from_bytes(format!("{lower}{}", INSTRUCTIONS[kind]).as_bytes()).unwrap();
        headers.append(name, value);
        if is_canonical {
            canonical.insert(bytes);
        }
    }
    check(headers, &canonical);
}

fuzz_target!(|data: &[u8]| match mode(data) {
    // Text: a response header block, `Name: value` per line.
    Mode::Text(t) => check(header_block(t), &HashSet::new()),
    Mode::Structured(u) => {
        if let Ok(input) = Input::arbitrary_take_rest(u) {
            structured(input);
        }
    }
});
