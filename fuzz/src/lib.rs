//! Oracles and input builders shared by the fuzz targets (docs/fuzzing.md). Each oracle
//! is written from the rule in docs/protocol.md, not from the code under test.

use arbitrary::Arbitrary;
use http::{HeaderMap, HeaderName, HeaderValue};

/// docs/protocol.md §3.1: ASCII-lowercase, `_` and `.` become `-`.
pub fn normalize(name: &[u8]) -> Vec<u8> {
    name.iter()
        .map(|&b| match b.to_ascii_lowercase() {
            b'_' | b'.' => b'-',
            other => other,
        })
        .collect()
}

/// docs/protocol.md §3.1: reserved when the normalised name starts with the normalised
/// prefix.
pub fn oracle_reserved(prefix: &str, name: &[u8]) -> bool {
    normalize(name).starts_with(&normalize(prefix.as_bytes()))
}

/// RFC 9110 §5.6.2 `tchar`.
pub fn is_tchar(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

/// Visible ASCII and space: what the wire forms of fields and values are made of.
pub fn printable(s: &str) -> bool {
    s.bytes().all(|b| (0x20..0x7f).contains(&b))
}

/// The instruction suffixes of docs/protocol.md §5.1, lower-case, in order of effect.
pub const INSTRUCTIONS: [&str; 11] = [
    "-destroy",
    "-regenerate",
    "-revoke-owner",
    "-revoke-others",
    "-owner",
    "-replace",
    "-delete",
    "-set",
    "-incr",
    "-flash-set",
    "-max-age",
];

/// Names worth trying beside fuzz-made ones: the family, near misses, framing fields.
pub const NAMES: [&str; 24] = [
    "x-session",
    "x-session-flash",
    "x-session-status",
    "x-session-id",
    "x-session-owner",
    "x-session-set",
    "x-session-replace",
    "x-session-delete",
    "x-session-incr",
    "x-session-flash-set",
    "x-session-max-age",
    "x-session-destroy",
    "x-session-regenerate",
    "x-session-revoke-owner",
    "x-session-revoke-others",
    "x-sessions",
    "x-sessio",
    "x-ses-sion",
    "xx-session",
    "trailer",
    "connection",
    "cookie",
    "content-length",
    "transfer-encoding",
];

/// A header name: one of [`NAMES`] respelled (`-` as `_` or `.`, any case), or raw bytes.
#[derive(Arbitrary, Debug, Clone)]
pub enum FuzzName {
    Known { index: u8, spelling: u64 },
    Raw(Vec<u8>),
}

impl FuzzName {
    pub fn bytes(&self) -> Vec<u8> {
        match self {
            FuzzName::Known { index, spelling } => {
                respell(NAMES[usize::from(*index) % NAMES.len()], *spelling)
            }
            FuzzName::Raw(raw) => raw.clone(),
        }
    }
}

/// `base` with its `-` turned into `_` or `.` and its letters upper-cased as `bits` say.
pub fn respell(base: &str, bits: u64) -> Vec<u8> {
    base.bytes()
        .enumerate()
        .map(|(i, b)| {
            let two = (bits >> ((2 * i) % 64)) & 3;
            match b {
                b'-' if two == 1 => b'_',
                b'-' if two == 2 => b'.',
                b if two == 3 => b.to_ascii_uppercase(),
                b => b,
            }
        })
        .collect()
}

/// Build a header map from fuzz-made names and values, skipping what `http` refuses
/// (as hyper would never hand it over).
pub fn header_map(headers: &[(FuzzName, Vec<u8>)]) -> HeaderMap {
    let mut map = HeaderMap::new();
    for (name, value) in headers {
        let (Ok(name), Ok(value)) = (
            HeaderName::from_bytes(&name.bytes()),
            HeaderValue::from_bytes(value),
        ) else {
            continue;
        };
        map.append(name, value);
    }
    map
}

/// Every value of every name, in order, as bytes (for before/after comparisons).
pub fn entries(map: &HeaderMap) -> Vec<(String, Vec<Vec<u8>>)> {
    let mut out: Vec<(String, Vec<Vec<u8>>)> = map
        .keys()
        .map(|k| {
            (
                k.as_str().to_owned(),
                map.get_all(k)
                    .iter()
                    .map(|v| v.as_bytes().to_vec())
                    .collect(),
            )
        })
        .collect();
    out.sort();
    out
}

// ---------------------------------------------------------------------------------------
// JSON text builder for the instruction target
// ---------------------------------------------------------------------------------------

/// A JSON value to write out as text, duplicates and deep nesting allowed.
#[derive(Arbitrary, Debug, Clone)]
pub enum Json {
    Null,
    Bool(bool),
    Num(Num),
    Str(String),
    Arr(Vec<Json>),
    Obj(Vec<(String, Json)>),
    /// `inner` wrapped in `levels` arrays (`objects`: `{"a": ...}` objects instead).
    Deep {
        levels: u8,
        objects: bool,
        inner: Box<Json>,
    },
}

/// A JSON number, always valid JSON text.
#[derive(Arbitrary, Debug, Clone)]
pub enum Num {
    Int(i64),
    Big {
        negative: bool,
        digits: u128,
        more: u8,
    },
    Decimal {
        int: i32,
        frac: u32,
        exp: Option<(bool, u16)>,
    },
    Special(u8),
}

const SPECIAL_NUMBERS: [&str; 12] = [
    "-0",
    "0",
    "1e400",
    "-1e400",
    "9223372036854775807",
    "9223372036854775808",
    "-9223372036854775808",
    "-9223372036854775809",
    "18446744073709551616",
    "0.1e-7",
    "1E+2",
    "2.50",
];

impl Num {
    pub fn text(&self) -> String {
        match self {
            Num::Int(n) => n.to_string(),
            Num::Big {
                negative,
                digits,
                more,
            } => {
                let sign = if *negative { "-" } else { "" };
                let tail = "7".repeat(usize::from(*more % 40));
                if *digits == 0 {
                    format!("{sign}0")
                } else {
                    format!("{sign}{digits}{tail}")
                }
            }
            Num::Decimal { int, frac, exp } => {
                let mut t = format!("{int}.{frac}");
                if let Some((neg, e)) = exp {
                    t.push_str(if *neg { "e-" } else { "E+" });
                    t.push_str(&e.to_string());
                }
                t
            }
            Num::Special(i) => SPECIAL_NUMBERS[usize::from(*i) % SPECIAL_NUMBERS.len()].to_owned(),
        }
    }
}

/// How the text is laid out: spaces, `\u` escapes.
#[derive(Arbitrary, Debug, Clone, Copy)]
pub struct Style {
    pub spaces: bool,
    /// Escape every non-ASCII character as `\uXXXX` (else raw UTF-8).
    pub escape_non_ascii: bool,
    /// Write `/` as `\/` and letters of strings as `\u00XX` now and then.
    pub escape_more: bool,
}

impl Json {
    pub fn write(&self, style: Style, out: &mut String) {
        let sp = if style.spaces { " " } else { "" };
        match self {
            Json::Null => out.push_str("null"),
            Json::Bool(b) => out.push_str(if *b { "true" } else { "false" }),
            Json::Num(n) => out.push_str(&n.text()),
            Json::Str(s) => write_string(s, style, out),
            Json::Arr(items) => {
                out.push('[');
                for (i, item) in items.iter().enumerate() {
                    if i > 0 {
                        out.push(',');
                        out.push_str(sp);
                    }
                    item.write(style, out);
                }
                out.push(']');
            }
            Json::Obj(members) => {
                out.push('{');
                out.push_str(sp);
                for (i, (k, v)) in members.iter().enumerate() {
                    if i > 0 {
                        out.push(',');
                        out.push_str(sp);
                    }
                    write_string(k, style, out);
                    out.push_str(sp);
                    out.push(':');
                    out.push_str(sp);
                    v.write(style, out);
                }
                out.push_str(sp);
                out.push('}');
            }
            Json::Deep {
                levels,
                objects,
                inner,
            } => {
                let n = usize::from(*levels % 40);
                for _ in 0..n {
                    out.push_str(if *objects { "{\"a\":" } else { "[" });
                }
                inner.write(style, out);
                for _ in 0..n {
                    out.push(if *objects { '}' } else { ']' });
                }
            }
        }
    }

    pub fn text(&self, style: Style) -> String {
        let mut out = String::new();
        self.write(style, &mut out);
        out
    }
}

fn write_string(s: &str, style: Style, out: &mut String) {
    out.push('"');
    for (i, c) in s.chars().enumerate() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '/' if style.escape_more => out.push_str("\\/"),
            c if (c as u32) < 0x20 || (style.escape_non_ascii && !c.is_ascii()) => {
                let mut units = [0u16; 2];
                for unit in c.encode_utf16(&mut units) {
                    out.push_str(&format!("\\u{unit:04X}"));
                }
            }
            c if style.escape_more && c.is_ascii_alphabetic() && i % 3 == 0 => {
                out.push_str(&format!("\\u{:04x}", c as u32));
            }
            c => out.push(c),
        }
    }
    out.push('"');
}

/// Nesting depth of a value, counting containers only (a scalar is 0, `[]` is 1).
pub fn depth(v: &serde_json::Value) -> usize {
    match v {
        serde_json::Value::Array(items) => 1 + items.iter().map(depth).max().unwrap_or(0),
        serde_json::Value::Object(map) => 1 + map.values().map(depth).max().unwrap_or(0),
        _ => 0,
    }
}

/// Whether any object at any depth has `key` as a member name.
pub fn has_key(v: &serde_json::Value, key: &str) -> bool {
    match v {
        serde_json::Value::Array(items) => items.iter().any(|i| has_key(i, key)),
        serde_json::Value::Object(map) => {
            map.contains_key(key) || map.values().any(|i| has_key(i, key))
        }
        _ => false,
    }
}

// ---------------------------------------------------------------------------------------
// Input modes
// ---------------------------------------------------------------------------------------

/// How a target reads its input: a first byte below 0x80 means the whole input is text
/// in the target's own readable form (what the seed files in `fuzz/corpus/` are); any
/// other first byte means the rest drives an `arbitrary`-built structured input.
pub enum Mode<'a> {
    Text(&'a [u8]),
    Structured(arbitrary::Unstructured<'a>),
}

pub fn mode(data: &[u8]) -> Mode<'_> {
    match data.split_first() {
        Some((&first, rest)) if first >= 0x80 => {
            Mode::Structured(arbitrary::Unstructured::new(rest))
        }
        _ => Mode::Text(data),
    }
}

/// `Name: value` lines (`\n` or `\r\n`), as a header map; lines without a colon, and
/// names or values `http` refuses, are skipped.
pub fn header_block(text: &[u8]) -> HeaderMap {
    let mut map = HeaderMap::new();
    for line in text.split(|b| *b == b'\n') {
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        let Some(colon) = line.iter().position(|b| *b == b':') else {
            continue;
        };
        let value = &line[colon + 1..];
        let value = &value[value
            .iter()
            .take_while(|b| **b == b' ' || **b == b'\t')
            .count()..];
        if let (Ok(n), Ok(v)) = (
            HeaderName::from_bytes(&line[..colon]),
            HeaderValue::from_bytes(value),
        ) {
            map.append(n, v);
        }
    }
    map
}
