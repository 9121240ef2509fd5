//! The item format: how a session and its flash are encoded as memcached values (see
//! the parent module's "Value encoding").

use std::collections::BTreeMap;

use crate::store::{
    ClientInfo, FieldMap, Owner, StoreError,
    owners::{MAX_USER_AGENT, is_handle},
    pairs::{decode_pairs, encode_pairs},
};

/// A decoded session item.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Stored {
    pub(super) created_ms: u64,
    pub(super) max_age: Option<u64>,
    /// The last refresh of the idle lifetime written to the item (unix ms); `None` in
    /// items written before it was recorded (`S1`): a refresh is due.
    pub(super) refreshed_ms: Option<u64>,
    pub(super) owner: Option<Owner>,
    /// An owned session's bound (unix ms): its expiry never passes it.
    pub(super) bound_ms: Option<u64>,
    pub(super) client: Option<ClientInfo>,
    pub(super) data: FieldMap,
}

impl Stored {
    /// A new session's item (no data yet), created and refreshed at `now_ms`.
    pub(super) fn new(now_ms: u64, max_age: Option<u64>, client: Option<ClientInfo>) -> Self {
        Stored {
            created_ms: now_ms,
            max_age,
            refreshed_ms: Some(now_ms),
            owner: None,
            bound_ms: None,
            client,
            data: FieldMap::new(),
        }
    }
}

/// An owner index: store key → bound (unix ms).
pub(super) type Index = BTreeMap<String, u64>;

/// Longest encoded index entry: a 43-character store key, a space, a `u64` and `\n`.
pub(super) const MAX_INDEX_ENTRY_LEN: usize = 43 + 1 + 20 + 1;

fn corrupt(what: &str) -> StoreError {
    StoreError::Corrupt(format!("memcached item: {what}"))
}

fn optional(n: Option<u64>) -> String {
    n.map_or_else(|| "-".to_owned(), |n| n.to_string())
}

fn netstring(text: &str, out: &mut Vec<u8>) {
    out.extend_from_slice(text.len().to_string().as_bytes());
    out.push(b':');
    out.extend_from_slice(text.as_bytes());
    out.push(b',');
}

pub(super) fn encode_session(s: &Stored) -> Vec<u8> {
    let mut parts = String::new();
    if s.owner.is_some() {
        parts.push('o');
    }
    if s.client.is_some() {
        parts.push('c');
    }
    if parts.is_empty() {
        parts.push('-');
    }
    let mut out = format!(
        "S2 {} {} {} {} {parts}\n",
        s.created_ms,
        optional(s.max_age),
        optional(s.refreshed_ms),
        optional(s.bound_ms),
    )
    .into_bytes();
    if let Some(owner) = &s.owner {
        netstring(owner.literal(), &mut out);
    }
    if let Some(client) = &s.client {
        netstring(&client.ip, &mut out);
        netstring(&client.user_agent, &mut out);
    }
    encode_pairs(&s.data, &mut out);
    out
}

pub(super) fn encode_flash(flash: &FieldMap) -> Vec<u8> {
    let mut out = b"F1\n".to_vec();
    encode_pairs(flash, &mut out);
    out
}

fn number<T: std::str::FromStr>(token: Option<&str>, what: &str) -> Result<T, StoreError> {
    token
        .filter(|t| !t.is_empty() && t.bytes().all(|b| b.is_ascii_digit()))
        .and_then(|t| t.parse().ok())
        .ok_or_else(|| corrupt(what))
}

fn optional_number(token: Option<&str>, what: &str) -> Result<Option<u64>, StoreError> {
    match token {
        Some("-") => Ok(None),
        t => number(t, what).map(Some),
    }
}

pub(super) fn decode_session(bytes: &[u8]) -> Result<Stored, StoreError> {
    let (header, mut rest) = split_header(bytes)?;
    let mut parts = header.split(' ');
    let version = parts.next();
    if version != Some("S1") && version != Some("S2") {
        return Err(corrupt("not a session"));
    }
    let created_ms = number(parts.next(), "creation time")?;
    let max_age = optional_number(parts.next(), "max_age")?;
    let mut stored = Stored {
        created_ms,
        max_age,
        refreshed_ms: None,
        owner: None,
        bound_ms: None,
        client: None,
        data: FieldMap::new(),
    };
    if version == Some("S2") {
        stored.refreshed_ms = optional_number(parts.next(), "refresh time")?;
        stored.bound_ms = optional_number(parts.next(), "bound")?;
        let (owned, client) = match parts.next() {
            Some("-") => (false, false),
            Some("o") => (true, false),
            Some("c") => (false, true),
            Some("oc") => (true, true),
            _ => return Err(corrupt("parts")),
        };
        if owned {
            let literal = take_netstring(&mut rest)?;
            if literal.len() < 2 || !literal.starts_with('"') || !literal.ends_with('"') {
                return Err(corrupt("owner"));
            }
            stored.owner = Some(Owner::from_literal(literal.to_owned()));
        }
        if client {
            let ip = take_netstring(&mut rest)?.to_owned();
            let user_agent = take_netstring(&mut rest)?;
            if user_agent.len() > MAX_USER_AGENT
                || !user_agent.bytes().all(|b| (0x20..0x7f).contains(&b))
            {
                return Err(corrupt("user agent"));
            }
            stored.client = Some(ClientInfo {
                ip,
                user_agent: user_agent.to_owned(),
            });
        }
    }
    if parts.next().is_some() {
        return Err(corrupt("header"));
    }
    stored.data = decode_pairs(rest).map_err(corrupt)?;
    Ok(stored)
}

/// One netstring off the front of `rest`: its printable ASCII text.
fn take_netstring<'a>(rest: &mut &'a [u8]) -> Result<&'a str, StoreError> {
    let colon = rest
        .iter()
        .take(10)
        .position(|&b| b == b':')
        .ok_or_else(|| corrupt("length"))?;
    let len: usize = number(std::str::from_utf8(&rest[..colon]).ok(), "length")?;
    let body = &rest[colon + 1..];
    if body.len() < len.saturating_add(1) || body[len] != b',' {
        return Err(corrupt("truncated"));
    }
    let text = std::str::from_utf8(&body[..len])
        .ok()
        .filter(|t| t.bytes().all(|b| (0x20..0x7f).contains(&b)))
        .ok_or_else(|| corrupt("non-ASCII text"))?;
    *rest = &body[len + 1..];
    Ok(text)
}

pub(super) fn decode_flash(bytes: &[u8]) -> Result<FieldMap, StoreError> {
    let (header, rest) = split_header(bytes)?;
    if header != "F1" {
        return Err(corrupt("not a flash item"));
    }
    decode_pairs(rest).map_err(corrupt)
}

/// An owner index item: `"I1\n"`, then one `<store key> <bound unix ms>\n` per entry.
/// Store keys are 43 base64url characters, so an entry is at most
/// [`MAX_INDEX_ENTRY_LEN`] bytes.
pub(super) fn encode_index(index: &Index) -> Vec<u8> {
    let mut out = Vec::with_capacity(3 + index.len() * 58);
    out.extend_from_slice(b"I1\n");
    for (member, bound) in index {
        out.extend_from_slice(member.as_bytes());
        out.push(b' ');
        out.extend_from_slice(bound.to_string().as_bytes());
        out.push(b'\n');
    }
    out
}

pub(super) fn decode_index(bytes: &[u8]) -> Result<Index, StoreError> {
    let (header, rest) = split_header(bytes)?;
    if header != "I1" {
        return Err(corrupt("not an owner index"));
    }
    let text = std::str::from_utf8(rest).map_err(|_| corrupt("owner index"))?;
    let mut index = Index::new();
    if text.is_empty() {
        return Ok(index);
    }
    let body = text
        .strip_suffix('\n')
        .ok_or_else(|| corrupt("owner index"))?;
    for line in body.split('\n') {
        let (member, bound) = line
            .split_once(' ')
            .ok_or_else(|| corrupt("owner index entry"))?;
        if !is_handle(member) {
            return Err(corrupt("owner index member"));
        }
        let bound: u64 = number(Some(bound), "owner index bound")?;
        let at = index.entry(member.to_owned()).or_insert(bound);
        *at = (*at).max(bound);
    }
    Ok(index)
}

fn split_header(bytes: &[u8]) -> Result<(&str, &[u8]), StoreError> {
    let end = bytes
        .iter()
        .position(|&b| b == b'\n')
        .ok_or_else(|| corrupt("no header"))?;
    let header = std::str::from_utf8(&bytes[..end]).map_err(|_| corrupt("header"))?;
    Ok((header, &bytes[end + 1..]))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn plain(created_ms: u64, max_age: Option<u64>, data: FieldMap) -> Stored {
        Stored {
            created_ms,
            max_age,
            refreshed_ms: Some(created_ms),
            owner: None,
            bound_ms: None,
            client: None,
            data,
        }
    }

    #[test]
    fn session_encoding_round_trips() {
        let mut data = FieldMap::new();
        data.insert("\"user\"".into(), "\"ann\"".into());
        data.insert("\"a,b:c\"".into(), r#"{"x":[1,"2:3,"]}"#.into());
        data.insert("\"\\u00e9\"".into(), "9223372036854775807".into());
        let owners = [
            None,
            Some(Owner::from_literal("\"alice\"".into())),
            Some(Owner::from_literal("\"a b,3:x\\\"\"".into())),
        ];
        let clients = [
            None,
            Some(ClientInfo::new(
                "2001:db8::1".into(),
                b"Mozilla/5.0 (X11; 1:2,)",
            )),
            Some(ClientInfo::new(String::new(), b"")),
        ];
        for max_age in [None, Some(0), Some(3600)] {
            for owner in &owners {
                for client in &clients {
                    for refreshed_ms in [None, Some(1_700_000_000_999)] {
                        let s = Stored {
                            created_ms: 1_700_000_000_123,
                            max_age,
                            refreshed_ms,
                            owner: owner.clone(),
                            bound_ms: owner.as_ref().map(|_| 1_700_000_090_123),
                            client: client.clone(),
                            data: data.clone(),
                        };
                        let bytes = encode_session(&s);
                        assert_eq!(decode_session(&bytes).unwrap(), s);
                    }
                }
            }
        }
        assert_eq!(
            encode_session(&plain(5, None, FieldMap::new())),
            b"S2 5 - 5 - -\n"
        );
        let one = plain(
            5,
            Some(7),
            [("\"user\"".to_owned(), "\"ann\"".to_owned())].into(),
        );
        assert_eq!(
            String::from_utf8(encode_session(&one)).unwrap(),
            "S2 5 7 5 - -\n6:\"user\",5:\"ann\","
        );
        let owned = Stored {
            owner: Some(Owner::from_literal("\"bob\"".into())),
            bound_ms: Some(90),
            client: Some(ClientInfo::new("192.0.2.7".into(), b"curl/8.0")),
            ..plain(5, None, [("\"n\"".to_owned(), "1".to_owned())].into())
        };
        assert_eq!(
            String::from_utf8(encode_session(&owned)).unwrap(),
            "S2 5 - 5 90 oc\n5:\"bob\",9:192.0.2.7,8:curl/8.0,3:\"n\",1:1,"
        );
    }

    /// Items written before owners, touch_after and the client record (`S1`) still
    /// decode: no owner, no client, refresh time unknown.
    #[test]
    fn old_items_decode() {
        let got = decode_session(b"S1 1700000000000 600\n6:\"user\",5:\"ann\",").unwrap();
        assert_eq!(
            got,
            Stored {
                created_ms: 1_700_000_000_000,
                max_age: Some(600),
                refreshed_ms: None,
                owner: None,
                bound_ms: None,
                client: None,
                data: [("\"user\"".to_owned(), "\"ann\"".to_owned())].into(),
            }
        );
        let empty = decode_session(b"S1 5 -\n").unwrap();
        assert_eq!((empty.refreshed_ms, empty.max_age), (None, None));
        assert!(empty.data.is_empty());
        // S1 never had the new header fields.
        assert!(decode_session(b"S1 5 - 5 - -\n").is_err());
    }

    #[test]
    fn flash_encoding_is_never_empty() {
        assert_eq!(encode_flash(&FieldMap::new()), b"F1\n");
        let mut f = FieldMap::new();
        f.insert("\"msg\"".into(), "\"hi\"".into());
        assert_eq!(decode_flash(&encode_flash(&f)).unwrap(), f);
    }

    #[test]
    fn malformed_items_are_corrupt() {
        for bad in [
            &b""[..],
            b"S1",
            b"S1 x -\n",
            b"S1 1\n",
            b"S1 1 - extra\n",
            b"S1 +1 -\n",
            b"F1\n",
            b"S1 1 -\n3:\"a\"",
            b"S1 1 -\n3:\"a\",",
            b"S1 1 -\n3:\"a\",0:,",
            b"S1 1 -\n1:a,1:1,",
            b"S1 1 -\n3:\"a\",9:1,",
            b"S1 1 -\n3:\"a\",2:\xc3\xa9,",
            b"S1 1 -\n-3:\"a\",1:1,",
            b"S1 1 -\n99999999999999:\"a\",1:1,",
            b"S2 1 -\n",
            b"S2 1 - 1\n",
            b"S2 1 - 1 -\n",
            b"S2 1 - x - -\n",
            b"S2 1 - 1 - x\n",
            b"S2 1 - 1 - co\n",
            b"S2 1 - 1 - - extra\n",
            b"S2 1 - 1 2 o\n",
            b"S2 1 - 1 2 o\n3:bob,",
            b"S2 1 - 1 2 o\n5:\"bob\"",
            b"S2 1 - 1 2 o\n9:\"bob\",",
            b"S2 1 - 1 - c\n1:x,",
            b"S2 1 - 1 - c\n1:x,1:\x01,",
            b"S2 1 - 1 - c\n1:x,2:\xc3\xa9,",
        ] {
            assert!(
                matches!(decode_session(bad), Err(StoreError::Corrupt(_))),
                "{:?}",
                String::from_utf8_lossy(bad)
            );
        }
        let long_ua = format!("S2 1 - 1 - c\n1:x,257:{},", "a".repeat(257));
        assert!(decode_session(long_ua.as_bytes()).is_err());
        assert!(decode_flash(b"S1 1 -\n").is_err());
    }

    #[test]
    fn index_encoding_round_trips_and_is_checked() {
        let (a, b) = ("A".repeat(43), "b-_".repeat(14) + "z");
        let index: Index = [(a.clone(), 1_700_000_000_000), (b.clone(), 5)].into();
        let bytes = encode_index(&index);
        assert_eq!(
            String::from_utf8(bytes.clone()).unwrap(),
            format!("I1\n{a} 1700000000000\n{b} 5\n")
        );
        assert_eq!(decode_index(&bytes).unwrap(), index);
        assert_eq!(decode_index(b"I1\n").unwrap(), Index::new());
        // A repeated entry keeps its later bound.
        let twice = format!("I1\n{a} 9\n{a} 7\n");
        assert_eq!(decode_index(twice.as_bytes()).unwrap()[&a], 9);
        let max = Index::from([("x".repeat(43), u64::MAX)]);
        assert_eq!(encode_index(&max).len(), 3 + MAX_INDEX_ENTRY_LEN);
        for bad in [
            "".to_owned(),
            "I2\n".to_owned(),
            format!("I1\n{a} 1"),
            format!("I1\n{a}\n"),
            format!("I1\n{a} x\n"),
            format!("I1\n{a} -1\n"),
            format!("I1\n{a}= 1\n"),
            "I1\nshort 1\n".to_owned(),
            format!("I1\n{a} 1\n\n"),
            "S1 1 -\n".to_owned(),
        ] {
            assert!(
                matches!(decode_index(bad.as_bytes()), Err(StoreError::Corrupt(_))),
                "{bad:?}"
            );
        }
    }
}
