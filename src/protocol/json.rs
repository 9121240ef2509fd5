//! The strict JSON reader for instruction values (duplicate keys and deep nesting
//! refused, numbers kept as written) and the ASCII-only JSON writer of the wire form
//! the stores keep and the sidecar injects.

use std::{
    collections::{BTreeMap, HashSet},
    fmt,
    marker::PhantomData,
};

use serde::de::{
    self, DeserializeSeed, Deserializer as _, IgnoredAny, MapAccess, SeqAccess, Visitor,
};

/// Length in bytes of `{f1:v1,f2:v2,...}` for a field map, without building it.
pub fn encoded_object_len(map: &BTreeMap<String, String>) -> usize {
    let pairs: usize = map.iter().map(|(f, v)| f.len() + 1 + v.len()).sum();
    2 + pairs + map.len().saturating_sub(1)
}

/// `{f1:v1,f2:v2,...}`: the `X-Session` / `X-Session-Flash` value, by concatenation of
/// the stored wire forms (no JSON parsing on the request path).
pub fn encode_object(map: &BTreeMap<String, String>) -> String {
    let mut out = String::with_capacity(encoded_object_len(map));
    out.push('{');
    for (i, (f, v)) in map.iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        out.push_str(f);
        out.push(':');
        out.push_str(v);
    }
    out.push('}');
    out
}

/// Longest session key, in UTF-8 bytes (docs/protocol.md §5.2).
pub const MAX_KEY_LEN: usize = 256;
/// Deepest nesting of containers in an instruction value; the outer object (or array)
/// is level 1. serde_json's own limit is 128 (docs/security.md §4).
pub const MAX_DEPTH: usize = 32;
/// Key names quoted in error messages are cut to this many characters: the reason is
/// logged and may end up in a 502 body, and a key is the only part of the value shown.
const KEY_DISPLAY_CHARS: usize = 64;
/// With `arbitrary_precision`, serde_json hands a number it cannot give as `u64`/`i64`
/// (floats, big integers, `-0`) to a visitor as a one-entry map under this private key,
/// with the number's exact text as a string value. Tests below pin the behaviour.
const NUMBER_TOKEN: &str = "$serde_json::private::Number";

// ---------------------------------------------------------------------------------------
// Strict JSON (docs/security.md §4)
// ---------------------------------------------------------------------------------------
//
// serde_json keeps the last of duplicate keys silently and the maintainers declined to
// change it (serde-rs/json #762), and allows 128 levels. An app that emits
// `{"role":"user","role":"admin"}` would get a different reading here than in its own
// JSON library (Bishop Fox, "JSON interoperability vulnerabilities"). So the values are
// walked with our own visitors over `serde_json::Deserializer`, which reject duplicates
// at every depth and deep nesting, and write the wire form (compact, ASCII-escaped,
// numbers as written, object members in the order written) in the same pass.

/// Where the visitors write, and why they gave up. Our reasons travel beside the serde
/// error rather than inside it: serde's own messages for a wrong type quote the value
/// (`invalid type: string "..."`), which may be session data.
#[derive(Default)]
struct Sink {
    out: String,
    reason: Option<String>,
}

impl Sink {
    fn reject<E: de::Error>(&mut self, reason: String) -> E {
        // The first reason is the real one; outer visitors only see it unwinding.
        self.reason.get_or_insert(reason);
        E::custom("rejected")
    }
}

type JsonDeserializer<'t> = serde_json::Deserializer<serde_json::de::StrRead<'t>>;

/// Run `parse` over `bytes` as one JSON text with nothing after it.
fn parse_json<T>(
    bytes: &[u8],
    parse: impl FnOnce(&mut JsonDeserializer<'_>, &mut Sink) -> Result<T, serde_json::Error>,
) -> Result<T, String> {
    let text = std::str::from_utf8(bytes).map_err(|_| "value is not valid UTF-8".to_owned())?;
    let mut de = serde_json::Deserializer::from_str(text);
    let mut sink = Sink::default();
    let parsed = parse(&mut de, &mut sink).and_then(|value| de.end().map(|()| value));
    parsed.map_err(|err| {
        sink.reason.take().unwrap_or_else(|| {
            if err.is_data() {
                // May quote the input; say nothing about it.
                "invalid JSON value".to_owned()
            } else {
                // Syntax / EOF messages are fixed text plus a position.
                format!("invalid JSON: {err}")
            }
        })
    })
}

/// Set / Replace / Flash-Set: a JSON object; key → wire value, in the order written.
pub(super) fn parse_json_object(bytes: &[u8]) -> Result<Vec<(String, String)>, String> {
    parse_json(bytes, |de, sink| {
        de.deserialize_any(ObjectVisitor::<JsonEntries> {
            sink,
            entries: PhantomData,
        })
    })
}

/// Incr: a JSON object of key → integer that fits an `i64`.
pub(super) fn parse_incr_object(bytes: &[u8]) -> Result<Vec<(String, i64)>, String> {
    parse_json(bytes, |de, sink| {
        de.deserialize_any(ObjectVisitor::<IntEntries> {
            sink,
            entries: PhantomData,
        })
    })
}

/// Delete: a JSON array of keys.
pub(super) fn parse_key_array(bytes: &[u8]) -> Result<Vec<String>, String> {
    parse_json(bytes, |de, sink| {
        de.deserialize_any(KeyArrayVisitor { sink })
    })
}

/// Longest owner id, in UTF-8 bytes (docs/protocol.md §11).
pub const MAX_OWNER_LEN: usize = 256;

/// `X-Session-Owner` (`nullable`: `null` detaches) and `X-Session-Revoke-Owner`: a JSON
/// string of 1 to [`MAX_OWNER_LEN`] bytes, returned as its field literal (the canonical
/// escaped form, so `"a"` and `"\u0061"` are one owner); `None` for `null`.
pub(super) fn parse_owner(bytes: &[u8], nullable: bool) -> Result<Option<String>, String> {
    let expected = || {
        if nullable {
            format!("expected a JSON string of 1 to {MAX_OWNER_LEN} bytes, or null")
        } else {
            format!("expected a JSON string of 1 to {MAX_OWNER_LEN} bytes")
        }
    };
    let text = std::str::from_utf8(bytes).map_err(|_| "value is not valid UTF-8".to_owned())?;
    // A string or null has no duplicate keys or depth to police; serde's own messages
    // are dropped because they may quote the value.
    let owner: Option<String> = serde_json::from_str(text).map_err(|_| expected())?;
    match owner {
        None if nullable => Ok(None),
        None => Err(expected()),
        Some(o) if o.is_empty() || o.len() > MAX_OWNER_LEN => Err(expected()),
        Some(o) => Ok(Some(field_literal(&o))),
    }
}

/// Session keys: non-empty, at most [`MAX_KEY_LEN`] bytes of UTF-8 (docs/protocol.md §5.2).
fn check_key(key: &str) -> Result<(), String> {
    if key.is_empty() {
        return Err("empty key".to_owned());
    }
    if key.len() > MAX_KEY_LEN {
        return Err(format!(
            "key {} is longer than {MAX_KEY_LEN} bytes",
            display_key(key)
        ));
    }
    Ok(())
}

/// A key as quoted in a reason: at most 64 characters, escaped so that control
/// characters cannot forge log lines.
fn display_key(key: &str) -> String {
    match key.char_indices().nth(KEY_DISPLAY_CHARS) {
        Some((cut, _)) => format!("{}...", field_literal(&key[..cut])),
        None => field_literal(key),
    }
}

/// Read the rest of serde_json's number map (see [`NUMBER_TOKEN`]) after its key, and
/// return the number's text. A real object whose first key happens to be the token is
/// indistinguishable when its one value is a string holding a valid JSON number (it then
/// reads as that number, as it does for `serde_json::Value`); any other object using the
/// token as a key is refused rather than misread.
fn number_text<'de, A: MapAccess<'de>>(map: &mut A, sink: &mut Sink) -> Result<String, A::Error> {
    let text = map.next_value_seed(NumberTextSeed { sink: &mut *sink })?;
    if text.parse::<serde_json::Number>().is_err() || map.next_key::<IgnoredAny>()?.is_some() {
        return Err(sink.reject(reserved_token_key()));
    }
    if !fits_double(&text) {
        return Err(sink.reject(beyond_double()));
    }
    Ok(text)
}

/// I-JSON (RFC 7493 §2.2): a number whose magnitude a binary64 double cannot hold
/// (`1e400`, `-1e400`, an integer of 310 digits) would be read as infinity, or refused,
/// by the apps on the other side, so it is malformed here (docs/protocol.md §5.2). Big
/// exact integers within the range stay allowed and keep every digit; so do numbers
/// that round (`0.1000000000000000055511151231257827`) or underflow to zero (`1e-400`).
fn fits_double(text: &str) -> bool {
    text.parse::<f64>().is_ok_and(f64::is_finite)
}

/// The reason names no digits: reasons never quote values (they reach the log).
fn beyond_double() -> String {
    "a number is beyond the range of a double (I-JSON, RFC 7493 section 2.2)".to_owned()
}

fn reserved_token_key() -> String {
    format!(
        "key {} is reserved by the JSON parser",
        field_literal(NUMBER_TOKEN)
    )
}

fn too_deep() -> String {
    format!("value nested deeper than {MAX_DEPTH} levels")
}

fn duplicate_key(key: &str) -> String {
    format!("duplicate key {}", display_key(key))
}

struct NumberTextSeed<'a> {
    sink: &'a mut Sink,
}

impl<'de> DeserializeSeed<'de> for NumberTextSeed<'_> {
    type Value = String;

    fn deserialize<D: de::Deserializer<'de>>(self, de: D) -> Result<String, D::Error> {
        de.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for NumberTextSeed<'_> {
    type Value = String;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("the text of a number")
    }

    fn visit_str<E: de::Error>(self, v: &str) -> Result<String, E> {
        Ok(v.to_owned())
    }

    fn visit_unit<E: de::Error>(self) -> Result<String, E> {
        Err(self.sink.reject(reserved_token_key()))
    }

    fn visit_bool<E: de::Error>(self, _: bool) -> Result<String, E> {
        Err(self.sink.reject(reserved_token_key()))
    }

    fn visit_i64<E: de::Error>(self, _: i64) -> Result<String, E> {
        Err(self.sink.reject(reserved_token_key()))
    }

    fn visit_u64<E: de::Error>(self, _: u64) -> Result<String, E> {
        Err(self.sink.reject(reserved_token_key()))
    }

    fn visit_f64<E: de::Error>(self, _: f64) -> Result<String, E> {
        Err(self.sink.reject(reserved_token_key()))
    }

    fn visit_seq<A: SeqAccess<'de>>(self, _: A) -> Result<String, A::Error> {
        Err(self.sink.reject(reserved_token_key()))
    }

    fn visit_map<A: MapAccess<'de>>(self, _: A) -> Result<String, A::Error> {
        Err(self.sink.reject(reserved_token_key()))
    }
}

/// What the top-level object of an instruction maps keys to.
trait Entries {
    type Out;
    const EXPECTED: &'static str;

    fn value<'de, A: MapAccess<'de>>(
        map: &mut A,
        sink: &mut Sink,
        key: &str,
    ) -> Result<Self::Out, A::Error>;
}

/// Any JSON value, as its wire form.
struct JsonEntries;

impl Entries for JsonEntries {
    type Out = String;
    const EXPECTED: &'static str = "expected a JSON object";

    fn value<'de, A: MapAccess<'de>>(
        map: &mut A,
        sink: &mut Sink,
        _key: &str,
    ) -> Result<String, A::Error> {
        map.next_value_seed(ValueSeed {
            sink: &mut *sink,
            depth: 2,
        })?;
        Ok(std::mem::take(&mut sink.out))
    }
}

/// An integer that fits an `i64`.
struct IntEntries;

impl Entries for IntEntries {
    type Out = i64;
    const EXPECTED: &'static str = "expected a JSON object of integers";

    fn value<'de, A: MapAccess<'de>>(
        map: &mut A,
        sink: &mut Sink,
        key: &str,
    ) -> Result<i64, A::Error> {
        map.next_value_seed(IntSeed { sink, key })
    }
}

/// The top-level object of Set / Replace / Flash-Set / Incr (level 1).
struct ObjectVisitor<'a, E> {
    sink: &'a mut Sink,
    entries: PhantomData<E>,
}

impl<E: Entries> ObjectVisitor<'_, E> {
    fn wrong_type<Err: de::Error>(self, found: &str) -> Err {
        self.sink.reject(format!("{}, found {found}", E::EXPECTED))
    }
}

impl<'de, E: Entries> Visitor<'de> for ObjectVisitor<'_, E> {
    type Value = Vec<(String, E::Out)>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(E::EXPECTED)
    }

    fn visit_unit<Err: de::Error>(self) -> Result<Self::Value, Err> {
        Err(self.wrong_type("null"))
    }

    fn visit_bool<Err: de::Error>(self, _: bool) -> Result<Self::Value, Err> {
        Err(self.wrong_type("a boolean"))
    }

    fn visit_i64<Err: de::Error>(self, _: i64) -> Result<Self::Value, Err> {
        Err(self.wrong_type("a number"))
    }

    fn visit_u64<Err: de::Error>(self, _: u64) -> Result<Self::Value, Err> {
        Err(self.wrong_type("a number"))
    }

    fn visit_f64<Err: de::Error>(self, _: f64) -> Result<Self::Value, Err> {
        Err(self.wrong_type("a number"))
    }

    fn visit_str<Err: de::Error>(self, _: &str) -> Result<Self::Value, Err> {
        Err(self.wrong_type("a string"))
    }

    fn visit_seq<A: SeqAccess<'de>>(self, _: A) -> Result<Self::Value, A::Error> {
        Err(self.wrong_type("an array"))
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        let mut entries = Vec::new();
        let mut seen = HashSet::new();
        while let Some(key) = map.next_key::<String>()? {
            if key == NUMBER_TOKEN {
                if entries.is_empty() {
                    // A bare float or big integer, or else a refused token key.
                    number_text(&mut map, self.sink)?;
                    return Err(self.wrong_type("a number"));
                }
                return Err(self.sink.reject(reserved_token_key()));
            }
            if let Err(reason) = check_key(&key) {
                return Err(self.sink.reject(reason));
            }
            if seen.contains(&key) {
                return Err(self.sink.reject(duplicate_key(&key)));
            }
            let value = E::value(&mut map, self.sink, &key)?;
            seen.insert(key.clone());
            entries.push((key, value));
        }
        Ok(entries)
    }
}

/// The array of keys of Delete (level 1).
struct KeyArrayVisitor<'a> {
    sink: &'a mut Sink,
}

impl KeyArrayVisitor<'_> {
    fn wrong_type<E: de::Error>(self, found: &str) -> E {
        self.sink
            .reject(format!("expected a JSON array of strings, found {found}"))
    }
}

impl<'de> Visitor<'de> for KeyArrayVisitor<'_> {
    type Value = Vec<String>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a JSON array of strings")
    }

    fn visit_unit<E: de::Error>(self) -> Result<Vec<String>, E> {
        Err(self.wrong_type("null"))
    }

    fn visit_bool<E: de::Error>(self, _: bool) -> Result<Vec<String>, E> {
        Err(self.wrong_type("a boolean"))
    }

    fn visit_i64<E: de::Error>(self, _: i64) -> Result<Vec<String>, E> {
        Err(self.wrong_type("a number"))
    }

    fn visit_u64<E: de::Error>(self, _: u64) -> Result<Vec<String>, E> {
        Err(self.wrong_type("a number"))
    }

    fn visit_f64<E: de::Error>(self, _: f64) -> Result<Vec<String>, E> {
        Err(self.wrong_type("a number"))
    }

    fn visit_str<E: de::Error>(self, _: &str) -> Result<Vec<String>, E> {
        Err(self.wrong_type("a string"))
    }

    fn visit_map<A: MapAccess<'de>>(self, _: A) -> Result<Vec<String>, A::Error> {
        Err(self.wrong_type("an object or number"))
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Vec<String>, A::Error> {
        let mut keys = Vec::new();
        while let Some(key) = seq.next_element_seed(KeySeed {
            sink: &mut *self.sink,
        })? {
            keys.push(key);
        }
        Ok(keys)
    }
}

/// One entry of Delete's array: a string that is a valid key.
struct KeySeed<'a> {
    sink: &'a mut Sink,
}

impl KeySeed<'_> {
    fn not_a_string<E: de::Error>(self) -> E {
        self.sink
            .reject("expected a JSON array of strings, found another element".to_owned())
    }
}

impl<'de> DeserializeSeed<'de> for KeySeed<'_> {
    type Value = String;

    fn deserialize<D: de::Deserializer<'de>>(self, de: D) -> Result<String, D::Error> {
        de.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for KeySeed<'_> {
    type Value = String;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a key")
    }

    fn visit_str<E: de::Error>(self, v: &str) -> Result<String, E> {
        match check_key(v) {
            Ok(()) => Ok(v.to_owned()),
            Err(reason) => Err(self.sink.reject(reason)),
        }
    }

    fn visit_unit<E: de::Error>(self) -> Result<String, E> {
        Err(self.not_a_string())
    }

    fn visit_bool<E: de::Error>(self, _: bool) -> Result<String, E> {
        Err(self.not_a_string())
    }

    fn visit_i64<E: de::Error>(self, _: i64) -> Result<String, E> {
        Err(self.not_a_string())
    }

    fn visit_u64<E: de::Error>(self, _: u64) -> Result<String, E> {
        Err(self.not_a_string())
    }

    fn visit_f64<E: de::Error>(self, _: f64) -> Result<String, E> {
        Err(self.not_a_string())
    }

    fn visit_seq<A: SeqAccess<'de>>(self, _: A) -> Result<String, A::Error> {
        Err(self.not_a_string())
    }

    fn visit_map<A: MapAccess<'de>>(self, _: A) -> Result<String, A::Error> {
        Err(self.not_a_string())
    }
}

/// One Incr amount: an integer that fits an `i64`. `1.0`, `1e3` and `"1"` are refused
/// rather than converted: the stored result must be what `Incr` itself writes (an
/// integer, see [`crate::store::parse_integer`]), and a silent conversion would hide an
/// app bug.
struct IntSeed<'a> {
    sink: &'a mut Sink,
    key: &'a str,
}

impl IntSeed<'_> {
    fn not_integer<E: de::Error>(self) -> E {
        let reason = format!("value of {} is not an integer", display_key(self.key));
        self.sink.reject(reason)
    }

    fn out_of_range<E: de::Error>(self) -> E {
        let reason = format!(
            "value of {} does not fit a 64-bit signed integer",
            display_key(self.key)
        );
        self.sink.reject(reason)
    }
}

impl<'de> DeserializeSeed<'de> for IntSeed<'_> {
    type Value = i64;

    fn deserialize<D: de::Deserializer<'de>>(self, de: D) -> Result<i64, D::Error> {
        de.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for IntSeed<'_> {
    type Value = i64;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("an integer")
    }

    fn visit_i64<E: de::Error>(self, v: i64) -> Result<i64, E> {
        Ok(v)
    }

    fn visit_u64<E: de::Error>(self, v: u64) -> Result<i64, E> {
        i64::try_from(v).map_err(|_| self.out_of_range())
    }

    fn visit_f64<E: de::Error>(self, _: f64) -> Result<i64, E> {
        Err(self.not_integer())
    }

    fn visit_unit<E: de::Error>(self) -> Result<i64, E> {
        Err(self.not_integer())
    }

    fn visit_bool<E: de::Error>(self, _: bool) -> Result<i64, E> {
        Err(self.not_integer())
    }

    fn visit_str<E: de::Error>(self, _: &str) -> Result<i64, E> {
        Err(self.not_integer())
    }

    fn visit_seq<A: SeqAccess<'de>>(self, _: A) -> Result<i64, A::Error> {
        Err(self.not_integer())
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<i64, A::Error> {
        if map.next_key::<String>()?.as_deref() != Some(NUMBER_TOKEN) {
            return Err(self.not_integer());
        }
        let text = number_text(&mut map, self.sink)?;
        if text.contains(['.', 'e', 'E']) {
            return Err(self.not_integer());
        }
        // Integer syntax that serde_json did not give as i64/u64: `-0`, or too large.
        text.parse::<i64>().map_err(|_| self.out_of_range())
    }
}

/// Any JSON value below the top level, written to `sink.out` in wire form.
struct ValueSeed<'a> {
    sink: &'a mut Sink,
    /// The level this value has if it is a container.
    depth: usize,
}

impl<'de> DeserializeSeed<'de> for ValueSeed<'_> {
    type Value = ();

    fn deserialize<D: de::Deserializer<'de>>(self, de: D) -> Result<(), D::Error> {
        de.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for ValueSeed<'_> {
    type Value = ();

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a JSON value")
    }

    fn visit_unit<E: de::Error>(self) -> Result<(), E> {
        self.sink.out.push_str("null");
        Ok(())
    }

    fn visit_bool<E: de::Error>(self, v: bool) -> Result<(), E> {
        self.sink.out.push_str(if v { "true" } else { "false" });
        Ok(())
    }

    fn visit_i64<E: de::Error>(self, v: i64) -> Result<(), E> {
        self.sink.out.push_str(&v.to_string());
        Ok(())
    }

    fn visit_u64<E: de::Error>(self, v: u64) -> Result<(), E> {
        self.sink.out.push_str(&v.to_string());
        Ok(())
    }

    /// Only reached without `arbitrary_precision`; JSON text has no NaN or infinity.
    fn visit_f64<E: de::Error>(self, v: f64) -> Result<(), E> {
        match serde_json::Number::from_f64(v) {
            Some(n) => {
                self.sink.out.push_str(&n.to_string());
                Ok(())
            }
            None => Err(self.sink.reject("number is not finite".to_owned())),
        }
    }

    fn visit_str<E: de::Error>(self, v: &str) -> Result<(), E> {
        push_json_string(&mut self.sink.out, v);
        Ok(())
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
        if self.depth > MAX_DEPTH {
            return Err(self.sink.reject(too_deep()));
        }
        self.sink.out.push('[');
        let mut first = true;
        loop {
            // The separator goes in before we know whether an element follows.
            let mark = self.sink.out.len();
            if !first {
                self.sink.out.push(',');
            }
            let element = ValueSeed {
                sink: &mut *self.sink,
                depth: self.depth + 1,
            };
            if seq.next_element_seed(element)?.is_none() {
                self.sink.out.truncate(mark);
                break;
            }
            first = false;
        }
        self.sink.out.push(']');
        Ok(())
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
        let mut key = map.next_key::<String>()?;
        if key.as_deref() == Some(NUMBER_TOKEN) {
            let text = number_text(&mut map, self.sink)?;
            self.sink.out.push_str(&text);
            return Ok(());
        }
        if self.depth > MAX_DEPTH {
            return Err(self.sink.reject(too_deep()));
        }
        self.sink.out.push('{');
        let mut seen = HashSet::new();
        while let Some(k) = key {
            if k == NUMBER_TOKEN {
                return Err(self.sink.reject(reserved_token_key()));
            }
            if seen.contains(&k) {
                return Err(self.sink.reject(duplicate_key(&k)));
            }
            if !seen.is_empty() {
                self.sink.out.push(',');
            }
            push_json_string(&mut self.sink.out, &k);
            self.sink.out.push(':');
            map.next_value_seed(ValueSeed {
                sink: &mut *self.sink,
                depth: self.depth + 1,
            })?;
            seen.insert(k);
            key = map.next_key::<String>()?;
        }
        self.sink.out.push('}');
        Ok(())
    }
}

// ---------------------------------------------------------------------------------------
// Wire encoding (docs/protocol.md §4.1)
// ---------------------------------------------------------------------------------------

/// The JSON string literal of `key`, quotes included, ASCII only: the *field* form the
/// stores keep (see [`Op`](super::Op)).
pub fn field_literal(key: &str) -> String {
    let mut out = String::with_capacity(key.len() + 2);
    push_json_string(&mut out, key);
    out
}

/// Compact JSON text of `value`, ASCII only (see [`Op`](super::Op)). Object members come in the
/// order of the `serde_json::Map`.
pub fn json_ascii(value: &serde_json::Value) -> String {
    let mut out = String::new();
    write_value(&mut out, value);
    out
}

fn write_value(out: &mut String, value: &serde_json::Value) {
    use serde_json::Value;
    match value {
        Value::Null => out.push_str("null"),
        Value::Bool(b) => out.push_str(if *b { "true" } else { "false" }),
        // With `arbitrary_precision` this is the number's text as parsed.
        Value::Number(n) => out.push_str(&n.to_string()),
        Value::String(s) => push_json_string(out, s),
        Value::Array(items) => {
            out.push('[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                write_value(out, item);
            }
            out.push(']');
        }
        Value::Object(map) => {
            out.push('{');
            for (i, (key, item)) in map.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                push_json_string(out, key);
                out.push(':');
                write_value(out, item);
            }
            out.push('}');
        }
    }
}

/// A JSON string literal with only visible ASCII in it. The result goes into a request
/// header: a raw CR/LF/NUL there is request splitting (Envoy CVE-2023-27493), and
/// non-ASCII bytes are obs-text that `HeaderValue::to_str` and many servers refuse.
/// U+2028/U+2029 are escaped too, being non-ASCII, which also keeps the text safe to
/// embed in JavaScript.
fn push_json_string(out: &mut String, s: &str) {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            '\u{8}' => out.push_str("\\b"),
            '\u{c}' => out.push_str("\\f"),
            ' '..='~' => out.push(c),
            // Other controls, DEL and everything non-ASCII (as UTF-16 units, so above
            // the BMP as a surrogate pair).
            _ => {
                let mut units = [0u16; 2];
                for &unit in c.encode_utf16(&mut units).iter() {
                    out.push_str("\\u");
                    for shift in [12, 8, 4, 0] {
                        out.push(char::from(HEX[usize::from((unit >> shift) & 0xf)]));
                    }
                }
            }
        }
    }
    out.push('"');
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use http::HeaderValue;

    use super::*;
    use crate::protocol::Op;
    use crate::protocol::test_util::*;

    #[test]
    fn invalid_json_is_malformed() {
        for value in [
            &b""[..],
            b"{",
            b"{'a':1}",
            b"{a:1}",
            br#"{"a":1,}"#,
            br#"{"a":NaN}"#,
            br#"{"a":01}"#,
            br#"{"a":"\ud800"}"#,
            b"{\"a\":\"x\ty\"}",
        ] {
            let r = reason(&[("x-session-set", value)]);
            assert!(r.starts_with("invalid JSON"), "{value:?}: {r}");
        }
    }

    #[test]
    fn trailing_garbage_is_malformed() {
        for value in [
            &br#"{"a":1} x"#[..],
            br#"{"a":1}{"b":2}"#,
            br#"{"a":1}, {"b":2}"#,
            br#"["a"] ["b"]"#,
        ] {
            let header = if value.starts_with(b"[") {
                "x-session-delete"
            } else {
                "x-session-set"
            };
            let r = reason(&[(header, value)]);
            assert!(r.contains("trailing characters"), "{value:?}: {r}");
        }
        // Surrounding whitespace is not garbage.
        assert!(take(&[("x-session-set", b" {\"a\":1} \t")]).is_ok());
    }

    #[test]
    fn wrong_json_type_is_malformed() {
        for (header, value, want) in [
            (
                "x-session-set",
                &b"[1]"[..],
                "expected a JSON object, found an array",
            ),
            (
                "x-session-set",
                b"\"x\"",
                "expected a JSON object, found a string",
            ),
            (
                "x-session-set",
                b"null",
                "expected a JSON object, found null",
            ),
            (
                "x-session-set",
                b"1",
                "expected a JSON object, found a number",
            ),
            (
                "x-session-set",
                b"1.5",
                "expected a JSON object, found a number",
            ),
            (
                "x-session-set",
                b"true",
                "expected a JSON object, found a boolean",
            ),
            (
                "x-session-replace",
                b"[]",
                "expected a JSON object, found an array",
            ),
            (
                "x-session-flash-set",
                b"\"hi\"",
                "expected a JSON object, found a string",
            ),
            (
                "x-session-incr",
                b"[]",
                "expected a JSON object of integers, found an array",
            ),
            (
                "x-session-delete",
                br#"{"a":1}"#,
                "expected a JSON array of strings, found an object or number",
            ),
            (
                "x-session-delete",
                b"\"a\"",
                "expected a JSON array of strings, found a string",
            ),
            (
                "x-session-delete",
                b"[1]",
                "expected a JSON array of strings, found another element",
            ),
            (
                "x-session-delete",
                br#"["a",["b"]]"#,
                "expected a JSON array of strings, found another element",
            ),
            (
                "x-session-delete",
                b"[null]",
                "expected a JSON array of strings, found another element",
            ),
        ] {
            assert_eq!(reason(&[(header, value)]), want, "{header}: {value:?}");
        }
    }

    #[test]
    fn empty_keys_are_malformed() {
        for (header, value) in [
            ("x-session-set", &br#"{"":1}"#[..]),
            ("x-session-replace", br#"{"a":1,"":1}"#),
            ("x-session-incr", br#"{"":1}"#),
            ("x-session-flash-set", br#"{"":1}"#),
            ("x-session-delete", br#"["a",""]"#),
        ] {
            assert_eq!(reason(&[(header, value)]), "empty key", "{header}");
        }
        // Nested keys are data, not session keys: empty is fine there.
        assert!(take(&[("x-session-set", br#"{"a":{"":1}}"#)]).is_ok());
    }

    #[test]
    fn keys_are_at_most_256_bytes() {
        let ok = "k".repeat(256);
        let long = "k".repeat(257);
        let set = take(&[("x-session-set", format!(r#"{{"{ok}":1}}"#).as_bytes())]).unwrap();
        assert_eq!(set.ops, vec![Op::Set(f(&ok), "1".into())]);
        // Bytes, not characters: 128 × "é" is 256 bytes, 129 is 258.
        let ok2 = "é".repeat(128);
        assert!(take(&[("x-session-delete", format!(r#"["{ok2}"]"#).as_bytes())]).is_ok());
        for header in [
            "x-session-set",
            "x-session-replace",
            "x-session-incr",
            "x-session-flash-set",
        ] {
            let r = reason(&[(header, format!(r#"{{"{long}":1}}"#).as_bytes())]);
            assert!(r.ends_with("is longer than 256 bytes"), "{header}: {r}");
        }
        let r = reason(&[(
            "x-session-delete",
            format!(r#"["{}"]"#, "é".repeat(129)).as_bytes(),
        )]);
        assert!(r.ends_with("is longer than 256 bytes"), "{r}");
    }

    #[test]
    fn duplicate_keys_are_malformed_at_any_depth() {
        for (header, value) in [
            ("x-session-set", &br#"{"a":1,"a":2}"#[..]),
            ("x-session-set", br#"{"a":1,"\u0061":2}"#),
            ("x-session-replace", br#"{"role":"user","role":"admin"}"#),
            ("x-session-flash-set", br#"{"m":1,"m":1}"#),
            ("x-session-incr", br#"{"n":1,"n":1}"#),
            ("x-session-set", br#"{"a":{"b":1,"b":2}}"#),
            ("x-session-set", br#"{"a":[{"x":1},{"y":{"z":1,"z":1}}]}"#),
        ] {
            let r = reason(&[(header, value)]);
            assert!(r.starts_with("duplicate key "), "{value:?}: {r}");
        }
        assert_eq!(
            reason(&[("x-session-set", br#"{"a":{"b":1,"b":2}}"#)]),
            r#"duplicate key "b""#
        );
        // The same key in sibling objects is not a duplicate.
        assert!(take(&[("x-session-set", br#"{"a":{"x":1},"b":{"x":1}}"#)]).is_ok());
    }

    /// `{"a":` + `depth - 1` nested containers, alternating arrays and objects.
    fn nested(depth: usize) -> String {
        let mut open = String::new();
        let mut close = String::new();
        for i in 1..depth {
            if i % 2 == 0 {
                open.push_str(r#"{"k":"#);
                close.insert(0, '}');
            } else {
                open.push('[');
                close.insert(0, ']');
            }
        }
        format!(r#"{{"a":{open}1{close}}}"#)
    }

    #[test]
    fn nesting_is_limited_to_32_levels() {
        let set = take(&[("x-session-set", nested(32).as_bytes())]).unwrap();
        assert_eq!(set.ops.len(), 1);
        assert_eq!(
            reason(&[("x-session-set", nested(33).as_bytes())]),
            "value nested deeper than 32 levels"
        );
        // Empty containers count as levels too.
        let deep_empty = format!(r#"{{"a":{}{}}}"#, "[".repeat(32), "]".repeat(32));
        assert!(take(&[("x-session-set", deep_empty.as_bytes())]).is_err());
        let ok_empty = format!(r#"{{"a":{}{}}}"#, "[".repeat(31), "]".repeat(31));
        assert!(take(&[("x-session-set", ok_empty.as_bytes())]).is_ok());
        // Far past serde_json's own limit of 128, still a clean error.
        let r = reason(&[("x-session-set", nested(1000).as_bytes())]);
        assert!(r.contains("deeper") || r.contains("recursion"), "{r}");
    }

    #[test]
    fn incr_amounts_must_be_integers() {
        for value in [
            "1.0",
            "1e3",
            "1E3",
            "\"1\"",
            "1.5",
            "null",
            "true",
            "[1]",
            "{}",
            "{\"x\":1}",
            "-0.0",
        ] {
            let body = format!(r#"{{"n":{value}}}"#);
            assert_eq!(
                reason(&[("X-Session-Incr", body.as_bytes())]),
                r#"value of "n" is not an integer"#,
                "{value}"
            );
        }
    }

    #[test]
    fn incr_amounts_must_fit_i64() {
        for value in [
            "9223372036854775808",
            "-9223372036854775809",
            "18446744073709551616",
            "123456789012345678901234567890",
        ] {
            let body = format!(r#"{{"n":{value}}}"#);
            assert_eq!(
                reason(&[("X-Session-Incr", body.as_bytes())]),
                r#"value of "n" does not fit a 64-bit signed integer"#,
                "{value}"
            );
        }
    }

    #[test]
    fn non_utf8_values_are_malformed() {
        for header in [
            "x-session-set",
            "x-session-delete",
            "x-session-incr",
            "x-session-replace",
            "x-session-flash-set",
        ] {
            let err = take(&[(header, b"{\"a\":\"\xff\xfe\"}")]).unwrap_err();
            assert_eq!(err.reason, "value is not valid UTF-8", "{header}");
        }
    }

    #[test]
    fn malformed_reasons_never_quote_values() {
        let secret = "s3cr3t-t0ken";
        for (header, value) in [
            ("x-session-set", format!(r#"{{"a":"{secret}""#)),
            ("x-session-set", format!(r#"["{secret}"]"#)),
            ("x-session-set", format!(r#""{secret}""#)),
            ("x-session-set", format!(r#"{{"a":"{secret}"}} "{secret}""#)),
            ("x-session-incr", format!(r#"{{"n":"{secret}"}}"#)),
            ("x-session-delete", format!(r#"{{"{secret}":1}}"#)),
            ("x-session-max-age", secret.to_owned()),
        ] {
            let err = take(&[(header, value.as_bytes())]).unwrap_err();
            assert!(!err.to_string().contains(secret), "{err}");
        }
    }

    #[test]
    fn key_names_in_reasons_are_truncated_and_escaped() {
        let long = format!("{}\n", "k".repeat(300));
        let body = format!(r#"{{"{}":1}}"#, long.replace('\n', "\\n"));
        let r = reason(&[("x-session-set", body.as_bytes())]);
        assert_eq!(
            r,
            format!(r#"key "{}"... is longer than 256 bytes"#, "k".repeat(64))
        );
        let r = reason(&[("x-session-incr", br#"{"a\nb":1.5}"#)]);
        assert_eq!(r, r#"value of "a\nb" is not an integer"#);
    }

    #[test]
    fn serde_json_number_token_key_is_not_smuggled() {
        let token = NUMBER_TOKEN;
        for body in [
            format!(r#"{{"a":{{"{token}":"x"}}}}"#),
            format!(r#"{{"a":{{"{token}":1}}}}"#),
            format!(r#"{{"a":{{"{token}":"1","b":2}}}}"#),
            format!(r#"{{"a":{{"b":2,"{token}":"1"}}}}"#),
            format!(r#"{{"a":1,"{token}":"1"}}"#),
        ] {
            let r = reason(&[("x-session-set", body.as_bytes())]);
            assert!(r.contains("is reserved by the JSON parser"), "{body}: {r}");
        }
    }

    #[test]
    fn numbers_round_trip_unchanged() {
        // (as written, as stored): serde_json's `arbitrary_precision` keeps every digit
        // and only spells the exponent marker one way (`e`, explicit sign).
        for (number, stored) in [
            ("0", "0"),
            ("-0", "-0"),
            ("1.5", "1.5"),
            ("2.50", "2.50"),
            ("1e3", "1e+3"),
            ("1E3", "1e+3"),
            ("-1.25e-7", "-1.25e-7"),
            ("9007199254740991", "9007199254740991"),
            ("9223372036854775808", "9223372036854775808"),
            ("18446744073709551615", "18446744073709551615"),
            ("18446744073709551616", "18446744073709551616"),
            ("-9223372036854775809", "-9223372036854775809"),
            (
                "123456789012345678901234567890.123456789",
                "123456789012345678901234567890.123456789",
            ),
            (
                "0.1000000000000000055511151231257827",
                "0.1000000000000000055511151231257827",
            ),
            ("1e-400", "1e-400"),
            ("1.7976931348623157e308", "1.7976931348623157e+308"),
        ] {
            let body = format!(r#"{{"n":{number},"a":[{number}],"o":{{"x":{number}}}}}"#);
            let set = take(&[("x-session-set", body.as_bytes())]).unwrap();
            assert_eq!(
                set.ops,
                vec![
                    Op::Set(f("n"), stored.to_owned()),
                    Op::Set(f("a"), format!("[{stored}]")),
                    Op::Set(f("o"), format!(r#"{{"x":{stored}}}"#)),
                ],
                "{number}"
            );
            let value: serde_json::Value = serde_json::from_str(number).unwrap();
            assert_eq!(json_ascii(&value), stored);
        }
    }

    #[test]
    fn numbers_beyond_a_double_are_malformed() {
        let huge_integer = format!("1{}", "0".repeat(309)); // 1e309
        for number in [
            "1e400",
            "-1e400",
            "1E+309",
            "-2.5e308",
            huge_integer.as_str(),
        ] {
            for (header, body) in [
                ("x-session-set", format!(r#"{{"n":{number}}}"#)),
                (
                    "x-session-set",
                    format!(r#"{{"a":[1,{{"x":[{number}]}}]}}"#),
                ),
                ("x-session-replace", format!(r#"{{"n":{number}}}"#)),
                ("x-session-flash-set", format!(r#"{{"n":{number}}}"#)),
                ("x-session-incr", format!(r#"{{"n":{number}}}"#)),
            ] {
                let r = reason(&[(header, body.as_bytes())]);
                assert!(
                    r.contains("is beyond the range of a double"),
                    "{header} {body:.80}: {r}"
                );
                // Reasons are printable ASCII, as every reason (the fuzz target
                // `instructions` checks it; a `§` here failed it).
                assert!(r.bytes().all(|b| (0x20..0x7f).contains(&b)), "{r}");
            }
        }
        // The reason quotes no digits (reasons never quote values).
        let r = reason(&[("x-session-set", br#"{"n":-7.25e400}"#)]);
        assert!(!r.contains("7.25") && !r.contains("400"), "{r}");
        // Within range: the largest double and an exact integer of 308 digits.
        let big = format!("1{}", "0".repeat(307));
        let set = take(&[("x-session-set", format!(r#"{{"n":{big}}}"#).as_bytes())]).unwrap();
        assert_eq!(set.ops, vec![Op::Set(f("n"), big)]);
    }

    #[test]
    fn strings_are_escaped_to_ascii_and_round_trip() {
        let tricky =
            "clé ☃ 😀 \u{2028}\u{2029} \u{7f} \u{0}\u{1f} \n\r\t\u{8}\u{c} \"quote\" \\ / <script>";
        let literal = field_literal(tricky);
        assert!(
            literal.bytes().all(|b| (0x20..0x7f).contains(&b)),
            "{literal}"
        );
        assert!(HeaderValue::from_str(&literal).is_ok());
        assert!(literal.contains(r"\u00e9"));
        assert!(literal.contains(r"\ud83d\ude00"));
        assert!(literal.contains(r"\u2028\u2029"));
        assert!(literal.contains(r"\u007f"));
        assert!(literal.contains(r"\u0000\u001f"));
        assert!(literal.contains(r#"\n\r\t\b\f"#));
        assert_eq!(serde_json::from_str::<String>(&literal).unwrap(), tricky);

        // Through the instruction parser: key and value.
        // serde_json escapes the controls but leaves DEL raw, and a raw DEL is not a legal
        // header byte (nor is it in the app's power to send one); raw UTF-8 is.
        let body =
            serde_json::to_string(&serde_json::json!({ tricky: { tricky: [tricky] } })).unwrap();
        let body = body.replace('\u{7f}', "\\u007f");
        let set = take(&[("x-session-set", body.as_bytes())]).unwrap();
        let [Op::Set(field, value)] = set.ops.as_slice() else {
            panic!("{:?}", set.ops)
        };
        assert_eq!(field, &literal);
        assert!(value.is_ascii() && HeaderValue::from_str(value).is_ok());
        assert_eq!(serde_json::from_str::<String>(field).unwrap(), tricky);
        let back: serde_json::Value = serde_json::from_str(value).unwrap();
        assert_eq!(back, serde_json::json!({ tricky: [tricky] }));
    }

    #[test]
    fn raw_non_ascii_in_the_header_is_escaped_on_the_wire() {
        let set = take(&[("x-session-set", "{\"clé\":\"café\"}".as_bytes())]).unwrap();
        assert_eq!(
            set.ops,
            vec![Op::Set(r#""cl\u00e9""#.into(), r#""caf\u00e9""#.into())]
        );
    }

    #[test]
    fn json_ascii_is_compact_and_escaped() {
        let value = serde_json::json!({"b": [1, 2.5, null, false], "a": {"é": "\u{7f}"}});
        assert_eq!(
            json_ascii(&value),
            r#"{"a":{"\u00e9":"\u007f"},"b":[1,2.5,null,false]}"#
        );
        assert_eq!(json_ascii(&serde_json::json!("")), r#""""#);
        assert_eq!(json_ascii(&serde_json::json!([])), "[]");
        assert_eq!(json_ascii(&serde_json::json!({})), "{}");
    }

    #[test]
    fn nested_objects_keep_their_member_order() {
        let set = take(&[("x-session-set", br#"{"o":{"z":1,"a":2,"m":{}}}"#)]).unwrap();
        assert_eq!(
            set.ops,
            vec![Op::Set(f("o"), r#"{"z":1,"a":2,"m":{}}"#.into())]
        );
    }

    #[test]
    fn encode_object_of_a_small_map() {
        let mut fields = BTreeMap::new();
        assert_eq!(encode_object(&fields), "{}");
        assert_eq!(encoded_object_len(&fields), 2);
        fields.insert(
            field_literal("user"),
            json_ascii(&serde_json::json!({"id": 7})),
        );
        fields.insert(field_literal("clé"), "\"v\"".to_owned());
        let encoded = encode_object(&fields);
        assert_eq!(encoded, r#"{"cl\u00e9":"v","user":{"id":7}}"#);
        assert_eq!(encoded.len(), encoded_object_len(&fields));
        let back: serde_json::Value = serde_json::from_str(&encoded).unwrap();
        assert_eq!(back, serde_json::json!({"clé": "v", "user": {"id": 7}}));
    }
}
