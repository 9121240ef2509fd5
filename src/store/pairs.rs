//! The netstring pair encoding of a field map, shared by the engines that move a whole
//! session as one byte string: memcached items, and the Redis load script's reply (one
//! bulk string parses in a fraction of the time the client library takes for a nested
//! array: docs/performance.md#what-changed-each-measured-side-by-side-before-it-landed).
//!
//! ```text
//! pairs:     <field netstring><value netstring>...
//! netstring: "<len>:<bytes>,"
//! ```
//!
//! Fields are JSON string literals and values JSON text, both printable ASCII (see
//! [`super::FieldMap`]). Bytes from a store are untrusted input (docs/security.md §2):
//! lengths are bounded, every byte is checked, and anything else is an error naming what is
//! wrong, which each engine reports as corruption.

use super::FieldMap;

/// Append `map` as netstring pairs.
pub fn encode_pairs(map: &FieldMap, out: &mut Vec<u8>) {
    for (field, value) in map {
        for part in [field, value] {
            out.extend_from_slice(part.len().to_string().as_bytes());
            out.push(b':');
            out.extend_from_slice(part.as_bytes());
            out.push(b',');
        }
    }
}

/// Decode netstring pairs (all of `bytes`) into a field map.
pub fn decode_pairs(mut rest: &[u8]) -> Result<FieldMap, &'static str> {
    let mut map = FieldMap::new();
    while !rest.is_empty() {
        let field = netstring(&mut rest)?;
        let value = netstring(&mut rest)?;
        // Fields are JSON string literals, values non-empty JSON text; both ASCII.
        if field.len() < 2 || !field.starts_with('"') || !field.ends_with('"') {
            return Err("field name");
        }
        if value.is_empty() {
            return Err("empty value");
        }
        // Every writer encodes a map, so a field comes once; a second one is corruption,
        // not something to resolve by "last wins".
        if map.insert(field.to_owned(), value.to_owned()).is_some() {
            return Err("field twice");
        }
    }
    Ok(map)
}

/// One netstring off the front of `rest`: its text, printable ASCII (what the JSON writer
/// produces: every control character and DEL is escaped, docs/protocol.md §4.1).
fn netstring<'a>(rest: &mut &'a [u8]) -> Result<&'a str, &'static str> {
    let colon = rest
        .iter()
        .take(10)
        .position(|&b| b == b':')
        .ok_or("length")?;
    let len: usize = std::str::from_utf8(&rest[..colon])
        .ok()
        .filter(|t| !t.is_empty() && t.bytes().all(|b| b.is_ascii_digit()))
        .and_then(|t| t.parse().ok())
        .ok_or("length")?;
    let body = &rest[colon + 1..];
    if body.len() < len.saturating_add(1) || body[len] != b',' {
        return Err("truncated");
    }
    let text = std::str::from_utf8(&body[..len])
        .ok()
        .filter(|t| t.bytes().all(|b| (0x20..0x7f).contains(&b)))
        .ok_or("not printable ASCII")?;
    *rest = &body[len + 1..];
    Ok(text)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pairs_round_trip() {
        let mut map = FieldMap::new();
        map.insert("\"user\"".into(), "\"ann\"".into());
        map.insert("\"n\"".into(), "12".into());
        map.insert("\"x,y:z\"".into(), "{\"a\":[1,2]}".into());
        let mut out = Vec::new();
        encode_pairs(&map, &mut out);
        assert_eq!(
            &out[..],
            &b"3:\"n\",2:12,6:\"user\",5:\"ann\",7:\"x,y:z\",11:{\"a\":[1,2]},"[..]
        );
        assert_eq!(decode_pairs(&out), Ok(map));
        assert_eq!(decode_pairs(b""), Ok(FieldMap::new()));
    }

    #[test]
    fn malformed_pairs_are_refused() {
        for bad in [
            &b"3:\"a\""[..],
            b"3:\"a\",",
            b"3:\"a\",0:,",
            b"1:a,1:1,",
            b"3:\"a\",9:1,",
            b"3:\"a\",2:\xc3\xa9,",
            b"-3:\"a\",1:1,",
            b"99999999999999:\"a\",1:1,",
            b"3:\"a\",1:1",
            b":\"a\",1:1,",
            b"18446744073709551615:",
        ] {
            assert!(
                decode_pairs(bad).is_err(),
                "{:?}",
                String::from_utf8_lossy(bad)
            );
        }
    }

    /// Found by fuzzing (fuzz/fuzz_targets/redis_reply.rs, store_pairs.rs): control
    /// characters and DEL were accepted as long as they were ASCII, though the JSON
    /// writer escapes every one of them; stored bytes holding one are corruption.
    #[test]
    fn control_characters_are_refused() {
        for bad in [
            &b"3:\"\x0f\",1:1,"[..],
            b"3:\"a\",3:\"\t\",",
            b"3:\"a\",3:\"\r\",",
            b"3:\"a\",1:\x7f,",
            b"3:\"a\",1:\0,",
        ] {
            assert_eq!(
                decode_pairs(bad),
                Err("not printable ASCII"),
                "{:?}",
                String::from_utf8_lossy(bad)
            );
        }
        assert!(decode_pairs(b"3:\"a\",4:\" ~\",").is_ok());
    }

    /// Found by fuzzing (fuzz/fuzz_targets/store_pairs.rs; the input is kept as
    /// fuzz/corpus/store_pairs/crash-field-twice): a field given twice decoded as its
    /// last value.
    #[test]
    fn a_field_twice_is_refused() {
        assert_eq!(
            decode_pairs(b"3:\"a\",1:1,3:\"a\",1:2,"),
            Err("field twice")
        );
        assert_eq!(
            decode_pairs(b"3:\"n\",2:12,6:\"user\",6:\",2:12,6:\"user\",11:{\"a\":[1,2]},"),
            Err("field twice")
        );
    }
}
