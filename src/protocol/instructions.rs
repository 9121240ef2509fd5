//! The upstream's write instructions: which response headers are instructions, their
//! order of effect, and their strict parsing into a [`ChangeSet`] of [`Op`]s (the JSON
//! values are read by [`super::json`]).

use http::{HeaderMap, HeaderName, HeaderValue};

use super::{
    json::{field_literal, parse_incr_object, parse_json_object, parse_key_array, parse_owner},
    names::ReservedPrefix,
};

/// One data or flash operation, in the wire form the stores keep (see [`crate::store`]):
/// a *field* is the JSON string literal of the key, quotes included, every non-ASCII or
/// control character escaped as `\uXXXX` (e.g. `"cl\u00e9"`); a *value* is compact JSON
/// text with the same escaping. Both are therefore valid header-value bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Op {
    /// Remove every data key (the first step of `X-Session-Replace`).
    ClearData,
    /// Remove one data key; a missing key is a no-op.
    Delete(String),
    /// Set one data key.
    Set(String, String),
    /// Add to an integer data key (missing counts as 0).
    Incr(String, i64),
    /// Store one notification for a later request.
    FlashSet(String, String),
}

/// Largest `X-Session-Max-Age`, in seconds (about 136 years). The store and cookie code
/// cap it by `absolute_ttl` anyway; the bound only keeps the arithmetic far from overflow.
pub const MAX_MAX_AGE: u64 = u32::MAX as u64;

/// The write instructions of docs/protocol.md §5.1, in their order of effect.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Kind {
    Destroy,
    Regenerate,
    RevokeOwner,
    RevokeOthers,
    Owner,
    Replace,
    Delete,
    Set,
    Incr,
    FlashSet,
    MaxAge,
}

impl Kind {
    /// Order of effect, independent of the order of the headers (docs/protocol.md §5.3).
    pub(super) const ALL: [Kind; 11] = [
        Kind::Destroy,
        Kind::Regenerate,
        Kind::RevokeOwner,
        Kind::RevokeOthers,
        Kind::Owner,
        Kind::Replace,
        Kind::Delete,
        Kind::Set,
        Kind::Incr,
        Kind::FlashSet,
        Kind::MaxAge,
    ];

    pub(super) fn suffix(self) -> &'static str {
        match self {
            Kind::Destroy => "-Destroy",
            Kind::Regenerate => "-Regenerate",
            Kind::RevokeOwner => "-Revoke-Owner",
            Kind::RevokeOthers => "-Revoke-Others",
            Kind::Owner => "-Owner",
            Kind::Replace => "-Replace",
            Kind::Delete => "-Delete",
            Kind::Set => "-Set",
            Kind::Incr => "-Incr",
            Kind::FlashSet => "-Flash-Set",
            Kind::MaxAge => "-Max-Age",
        }
    }
}

impl ReservedPrefix {
    fn kind_of(&self, name: &HeaderName) -> Option<Kind> {
        self.instructions
            .iter()
            .find(|(_, instruction)| instruction == name)
            .map(|&(kind, _)| kind)
    }

    /// Remove every reserved header from the upstream's response `headers` and parse the
    /// write instructions among them (docs/protocol.md §5.7).
    ///
    /// The headers are gone from the map whatever the outcome, so nothing reserved can
    /// reach the client even when the caller turns an error into a 502 carelessly.
    /// Only the exact `-` spellings are instructions; other reserved names (aliases with
    /// `_` or `.`, unknown suffixes, an echoed `X-Session`) are dropped unapplied and
    /// listed in [`ChangeSet::ignored`]: an alias is what a spoofing attempt looks like,
    /// and applying it would make the alias part of the protocol.
    ///
    /// # Errors
    /// The first malformed instruction, in order of effect; nothing is to be applied then
    /// (all or nothing).
    pub fn take_instructions(&self, headers: &mut HeaderMap) -> Result<ChangeSet, Malformed> {
        let mut by_kind: [Vec<HeaderValue>; Kind::ALL.len()] = Default::default();
        let mut ignored = Vec::new();
        let reserved: Vec<HeaderName> = headers
            .keys()
            .filter(|name| self.is_reserved(name.as_str()))
            .cloned()
            .collect();
        for name in reserved {
            // `get_all` keeps the order the values arrived in: repeats apply in order.
            let values = headers.get_all(&name).iter().cloned();
            match self.kind_of(&name) {
                Some(kind) => by_kind[kind as usize].extend(values),
                None => ignored.push(name.as_str().to_owned()),
            }
            headers.remove(&name);
        }

        let mut set = ChangeSet {
            ignored,
            ..ChangeSet::default()
        };
        for kind in Kind::ALL {
            for value in &by_kind[kind as usize] {
                self.apply(kind, value.as_bytes(), &mut set)
                    .map_err(|reason| Malformed {
                        header: format!("{}{}", self.display, kind.suffix()),
                        reason,
                    })?;
            }
        }
        Ok(set)
    }

    fn apply(&self, kind: Kind, value: &[u8], set: &mut ChangeSet) -> Result<(), String> {
        match kind {
            Kind::Destroy => set.destroy = true,
            Kind::Regenerate => set.regenerate = true,
            Kind::RevokeOwner => {
                if let Some(owner) = parse_owner(value, false)? {
                    set.revoke_owners.push(owner);
                }
            }
            Kind::RevokeOthers => set.revoke_others = true,
            // Repeats apply in order: the last one is the owner.
            Kind::Owner => set.owner = Some(parse_owner(value, true)?),
            Kind::Replace => {
                let entries = parse_json_object(value)?;
                set.ops.push(Op::ClearData);
                set.ops.extend(
                    entries
                        .into_iter()
                        .map(|(key, value)| Op::Set(field_literal(&key), value)),
                );
            }
            Kind::Delete => {
                let keys = parse_key_array(value)?;
                set.ops
                    .extend(keys.iter().map(|key| Op::Delete(field_literal(key))));
            }
            Kind::Set => {
                let entries = parse_json_object(value)?;
                set.ops.extend(
                    entries
                        .into_iter()
                        .map(|(key, value)| Op::Set(field_literal(&key), value)),
                );
            }
            Kind::Incr => {
                let entries = parse_incr_object(value)?;
                set.ops.extend(
                    entries
                        .into_iter()
                        .map(|(key, by)| Op::Incr(field_literal(&key), by)),
                );
            }
            Kind::FlashSet => {
                let entries = parse_json_object(value)?;
                set.ops.extend(
                    entries
                        .into_iter()
                        .map(|(key, value)| Op::FlashSet(field_literal(&key), value)),
                );
            }
            Kind::MaxAge => set.max_age = Some(parse_max_age(value)?),
        }
        Ok(())
    }
}

// ---------------------------------------------------------------------------------------
// Write instructions (docs/protocol.md §5)
// ---------------------------------------------------------------------------------------

/// The validated write instructions of one response.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ChangeSet {
    pub destroy: bool,
    pub regenerate: bool,
    /// `X-Session-Revoke-Owner`: owners (field literals) whose every session is to be
    /// destroyed, in order (docs/protocol.md §11).
    pub revoke_owners: Vec<String>,
    /// `X-Session-Revoke-Others`: destroy the current owner's other sessions.
    pub revoke_others: bool,
    /// `X-Session-Owner`: `Some(Some(owner))` attaches, `Some(None)` detaches.
    pub owner: Option<Option<String>>,
    /// Data and flash ops in application order: Replace (ClearData + Sets) → Delete →
    /// Set → Incr → Flash-Set.
    pub ops: Vec<Op>,
    /// X-Session-Max-Age in seconds (last one wins).
    pub max_age: Option<u64>,
    /// Reserved names that were removed but are not instructions (e.g. `x_session_set`,
    /// `x-session-foo`, an echoed `x-session`), lower-cased, for the caller to log.
    pub ignored: Vec<String>,
}

impl ChangeSet {
    /// Nothing to do at all (ignored names do nothing).
    pub fn is_empty(&self) -> bool {
        !self.destroy
            && !self.regenerate
            && self.ops.is_empty()
            && self.max_age.is_none()
            && self.revoke_owners.is_empty()
            && !self.revoke_others
            && self.owner.is_none()
    }

    /// Something that creates a session when there is none (attaching an owner does,
    /// docs/protocol.md §11; detaching does not).
    pub fn writes(&self) -> bool {
        !self.ops.is_empty() || self.max_age.is_some() || matches!(self.owner, Some(Some(_)))
    }

    /// Revocations to run before the session write, in order.
    pub fn revokes(&self) -> bool {
        !self.revoke_owners.is_empty() || self.revoke_others
    }
}

/// A write instruction the sidecar refuses; the whole response's writes are dropped and
/// the client gets a 502 (docs/protocol.md §5.5). `reason` never quotes the value, which
/// can be session data: at most a key name, cut to 64 characters and escaped.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{header}: {reason}")]
pub struct Malformed {
    /// The instruction, spelled with the configured prefix (`X-Session-Incr`).
    pub header: String,
    pub reason: String,
}

/// `1..=MAX_MAX_AGE` decimal seconds; delta-seconds of RFC 9111 §1.2.2 (`1*DIGIT`) with
/// surrounding OWS, and nothing else: no sign, no fraction, no list.
fn parse_max_age(value: &[u8]) -> Result<u64, String> {
    let bad = || format!("expected whole seconds from 1 to {MAX_MAX_AGE}");
    let digits = trim_ows(value);
    if digits.is_empty() || !digits.iter().all(u8::is_ascii_digit) {
        return Err(bad());
    }
    let text = std::str::from_utf8(digits).map_err(|_| bad())?;
    match text.parse::<u64>() {
        Ok(secs @ 1..=MAX_MAX_AGE) => Ok(secs),
        _ => Err(bad()),
    }
}

/// Strip optional whitespace (SP / HTAB, RFC 9110 §5.6.3) at both ends.
fn trim_ows(mut bytes: &[u8]) -> &[u8] {
    while let [b' ' | b'\t', rest @ ..] = bytes {
        bytes = rest;
    }
    while let [rest @ .., b' ' | b'\t'] = bytes {
        bytes = rest;
    }
    bytes
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::test_util::*;

    #[test]
    fn set_parses_keys_and_compact_values_in_order() {
        let set = take(&[(
            "X-Session-Set",
            br#"{ "b" : { "y" : [1, 2.50, null, true], "x" : "s" }, "a" : -3 }"#,
        )])
        .unwrap();
        assert_eq!(
            set.ops,
            vec![
                Op::Set(f("b"), r#"{"y":[1,2.50,null,true],"x":"s"}"#.into()),
                Op::Set(f("a"), "-3".into()),
            ]
        );
        assert!(set.writes());
        assert!(!set.is_empty());
    }

    #[test]
    fn delete_parses_an_array_of_keys() {
        let set = take(&[("x-session-delete", br#"["a", "b", "a"]"#)]).unwrap();
        assert_eq!(
            set.ops,
            vec![Op::Delete(f("a")), Op::Delete(f("b")), Op::Delete(f("a"))]
        );
        let set = take(&[("x-session-delete", b"[]")]).unwrap();
        assert!(set.ops.is_empty());
        assert!(set.is_empty());
    }

    #[test]
    fn incr_parses_i64_amounts() {
        let set = take(&[(
            "X-Session-Incr",
            br#"{"n":1,"m":-2,"max":9223372036854775807,"min":-9223372036854775808,"z":-0}"#,
        )])
        .unwrap();
        assert_eq!(
            set.ops,
            vec![
                Op::Incr(f("n"), 1),
                Op::Incr(f("m"), -2),
                Op::Incr(f("max"), i64::MAX),
                Op::Incr(f("min"), i64::MIN),
                Op::Incr(f("z"), 0),
            ]
        );
    }

    #[test]
    fn replace_clears_then_sets() {
        let set = take(&[("X-Session-Replace", br#"{"a":1}"#)]).unwrap();
        assert_eq!(set.ops, vec![Op::ClearData, Op::Set(f("a"), "1".into())]);
        let set = take(&[("X-Session-Replace", b"{}")]).unwrap();
        assert_eq!(set.ops, vec![Op::ClearData]);
        assert!(set.writes());
    }

    #[test]
    fn flash_set_makes_flash_ops() {
        let set = take(&[("X-Session-Flash-Set", br#"{"msg":"Saved"}"#)]).unwrap();
        assert_eq!(set.ops, vec![Op::FlashSet(f("msg"), "\"Saved\"".into())]);
    }

    #[test]
    fn owner_instructions() {
        let set = take(&[("X-Session-Owner", br#""alice""#)]).unwrap();
        assert_eq!(set.owner, Some(Some(f("alice"))));
        assert!(set.writes() && !set.is_empty());
        // One owner whatever the escaping; the last repeat wins.
        let set = take(&[
            ("X-Session-Owner", br#""bob""#),
            ("x-session-owner", br#" "\u0061lice" "#),
        ])
        .unwrap();
        assert_eq!(set.owner, Some(Some(f("alice"))));
        let set = take(&[("X-Session-Owner", b"null")]).unwrap();
        assert_eq!(set.owner, Some(None));
        assert!(!set.writes() && !set.is_empty());
        let set = take(&[
            ("X-Session-Revoke-Owner", br#""a""#),
            ("X-Session-Revoke-Owner", br#""b""#),
            ("X-Session-Revoke-Others", b"1"),
        ])
        .unwrap();
        assert_eq!(set.revoke_owners, vec![f("a"), f("b")]);
        assert!(set.revoke_others && set.revokes() && !set.writes());
        let set = take(&[("X-Session-Revoke-Others", b"")]).unwrap();
        assert!(set.revoke_others && !set.is_empty());
        // 256 bytes of UTF-8 is the limit (é is 2 bytes).
        let ok = format!("\"{}\"", r"\u00e9".repeat(128));
        assert!(take(&[("X-Session-Owner", ok.as_bytes())]).is_ok());
        for bad in [
            &b"alice"[..],
            b"\"\"",
            b"5",
            b"[\"a\"]",
            b"{\"a\":1}",
            b"\"a\" \"b\"",
            b"\"\\ud800\"",
        ] {
            let why = reason(&[("X-Session-Owner", bad)]);
            assert!(why.starts_with("expected a JSON string"), "{why}");
        }
        let long = format!("\"{}\"", "a".repeat(257));
        assert!(reason(&[("X-Session-Owner", long.as_bytes())]).contains("1 to 256 bytes"));
        // Revoke-Owner takes no null; the reason never quotes the value.
        let why = reason(&[("X-Session-Revoke-Owner", b"null")]);
        assert_eq!(why, "expected a JSON string of 1 to 256 bytes");
        let why = reason(&[("X-Session-Revoke-Owner", b"secret-value")]);
        assert!(!why.contains("secret"), "{why}");
    }

    #[test]
    fn owner_instructions_apply_after_regenerate_and_before_replace() {
        let order: Vec<_> = Kind::ALL.iter().map(|k| k.suffix()).collect();
        assert_eq!(
            order,
            [
                "-Destroy",
                "-Regenerate",
                "-Revoke-Owner",
                "-Revoke-Others",
                "-Owner",
                "-Replace",
                "-Delete",
                "-Set",
                "-Incr",
                "-Flash-Set",
                "-Max-Age"
            ]
        );
        // A malformed owner is reported before a malformed Set (order of effect).
        let e = take(&[("X-Session-Set", b"nope"), ("X-Session-Owner", b"nope")]).unwrap_err();
        assert_eq!(e.header, "X-Session-Owner");
    }

    #[test]
    fn regenerate_and_destroy_take_any_value() {
        for value in [&b"1"[..], b"", b"yes please", b"{not json"] {
            let set = take(&[("X-Session-Regenerate", value)]).unwrap();
            assert!(set.regenerate && !set.destroy && !set.writes() && !set.is_empty());
            let set = take(&[("x-session-destroy", value)]).unwrap();
            assert!(set.destroy && !set.regenerate && !set.writes() && !set.is_empty());
        }
    }

    #[test]
    fn max_age_is_whole_seconds() {
        for (value, secs) in [
            (&b"60"[..], 60),
            (b" 3600\t", 3600),
            (b"1", 1),
            (b"007", 7),
            (b"4294967295", 4_294_967_295),
        ] {
            let set = take(&[("X-Session-Max-Age", value)]).unwrap();
            assert_eq!(set.max_age, Some(secs));
            assert!(set.writes() && set.ops.is_empty());
        }
    }

    #[test]
    fn no_instructions_is_empty() {
        let mut headers = map(&[("content-type", b"text/html")]);
        let set = prefix().take_instructions(&mut headers).unwrap();
        assert_eq!(set, ChangeSet::default());
        assert!(set.is_empty() && !set.writes());
        assert_eq!(headers.len(), 1);
    }

    #[test]
    fn effects_are_ordered_regardless_of_header_order() {
        let set = take(&[
            ("x-session-max-age", b"60"),
            ("x-session-flash-set", br#"{"f":1}"#),
            ("x-session-incr", br#"{"n":1}"#),
            ("x-session-set", br#"{"s":1}"#),
            ("x-session-delete", br#"["d"]"#),
            ("x-session-replace", br#"{"r":1}"#),
            ("x-session-regenerate", b"1"),
            ("x-session-destroy", b"1"),
        ])
        .unwrap();
        assert!(set.destroy && set.regenerate);
        assert_eq!(set.max_age, Some(60));
        assert_eq!(
            set.ops,
            vec![
                Op::ClearData,
                Op::Set(f("r"), "1".into()),
                Op::Delete(f("d")),
                Op::Set(f("s"), "1".into()),
                Op::Incr(f("n"), 1),
                Op::FlashSet(f("f"), "1".into()),
            ]
        );
    }

    #[test]
    fn repeats_apply_in_header_order() {
        let set = take(&[
            ("x-session-set", br#"{"a":1,"b":1}"#),
            ("X-Session-Replace", br#"{"r":1}"#),
            ("x-session-incr", br#"{"n":2}"#),
            ("X-SESSION-SET", br#"{"a":2}"#),
            ("x-session-replace", br#"{"q":2}"#),
            ("x-session-incr", br#"{"n":-1}"#),
            ("x-session-max-age", b"10"),
            ("x-session-max-age", b"20"),
        ])
        .unwrap();
        assert_eq!(
            set.ops,
            vec![
                Op::ClearData,
                Op::Set(f("r"), "1".into()),
                Op::ClearData,
                Op::Set(f("q"), "2".into()),
                Op::Set(f("a"), "1".into()),
                Op::Set(f("b"), "1".into()),
                Op::Set(f("a"), "2".into()),
                Op::Incr(f("n"), 2),
                Op::Incr(f("n"), -1),
            ]
        );
        assert_eq!(set.max_age, Some(20));
    }

    #[test]
    fn aliases_unknown_names_and_echoes_are_stripped_not_applied() {
        let p = prefix();
        let mut headers = map(&[
            ("X_Session_Set", br#"{"admin":true}"#),
            ("x.session.destroy", b"1"),
            ("x-session_max-age", b"60"),
            ("X-Session-Foo", b"1"),
            ("X-Session", br#"{"a":1}"#),
            ("x-session-flash", b"{}"),
            ("x-sessionset", br#"{"a":1}"#),
            ("content-type", b"text/plain"),
        ]);
        let set = p.take_instructions(&mut headers).unwrap();
        assert!(set.is_empty(), "{set:?}");
        let mut ignored = set.ignored.clone();
        ignored.sort();
        assert_eq!(
            ignored,
            vec![
                "x-session",
                "x-session-flash",
                "x-session-foo",
                "x-session_max-age",
                "x-sessionset",
                "x.session.destroy",
                "x_session_set",
            ]
        );
        assert!(no_reserved_left(&p, &headers));
        assert_eq!(headers.len(), 1);
    }

    #[test]
    fn instructions_follow_a_custom_prefix() {
        let p = ReservedPrefix::new("X-App-Sess").unwrap();
        let mut headers = map(&[
            ("x-app-sess-set", br#"{"a":1}"#),
            ("x-session-set", br#"{"b":1}"#),
        ]);
        let set = p.take_instructions(&mut headers).unwrap();
        assert_eq!(set.ops, vec![Op::Set(f("a"), "1".into())]);
        assert!(set.ignored.is_empty());
        assert!(headers.contains_key("x-session-set"));
        let err = p
            .take_instructions(&mut map(&[("x-app-sess-incr", br#"{"n":"1"}"#)]))
            .unwrap_err();
        assert_eq!(err.header, "X-App-Sess-Incr");
    }

    #[test]
    fn malformed_leaves_no_reserved_header_behind() {
        let p = prefix();
        let mut headers = map(&[
            ("x-session-set", br#"{"a":1}"#),
            ("x-session-incr", br#"{"n":1.5}"#),
            ("x-session-incr", br#"{"n":1}"#),
            ("X_Session_Destroy", b"1"),
            ("x-session", b"{}"),
            ("content-length", b"3"),
        ]);
        let err = p.take_instructions(&mut headers).unwrap_err();
        assert_eq!(err.header, "X-Session-Incr");
        assert!(no_reserved_left(&p, &headers));
        assert_eq!(headers.len(), 1);
        assert_eq!(headers["content-length"], "3");
    }

    #[test]
    fn bad_max_age_is_malformed() {
        for value in [
            &b""[..],
            b" ",
            b"0",
            b"00",
            b"-1",
            b"+1",
            b"1.5",
            b"1e3",
            b"abc",
            b"1 2",
            b"60, 120",
            b"0x10",
            b"4294967296",
            b"99999999999999999999999",
            b"\xd9\xa1", // ARABIC-INDIC DIGIT ONE
        ] {
            let err = take(&[("x-session-max-age", value)]).unwrap_err();
            assert_eq!(err.header, "X-Session-Max-Age", "{value:?}");
            assert_eq!(err.reason, "expected whole seconds from 1 to 4294967295");
        }
        // One bad repeat spoils the set, even if a later one is fine.
        assert!(take(&[("x-session-max-age", b"0"), ("x-session-max-age", b"5")]).is_err());
    }

    #[test]
    fn first_malformed_instruction_wins_and_nothing_applies() {
        let err = take(&[
            ("x-session-set", br#"{"a":1,"a":2}"#),
            ("x-session-delete", b"[1]"),
        ])
        .unwrap_err();
        // Delete applies before Set, so it is checked first.
        assert_eq!(err.header, "X-Session-Delete");
    }

    #[test]
    fn malformed_display_names_header_and_reason() {
        let err = take(&[("x-session-incr", br#"{"n":"1"}"#)]).unwrap_err();
        assert_eq!(
            err.to_string(),
            r#"X-Session-Incr: value of "n" is not an integer"#
        );
    }
}
