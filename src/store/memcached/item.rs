//! The item format: how a session and its flash are encoded as memcached values (see
//! the parent module's "Value encoding").

use crate::store::{
    FieldMap, StoreError,
    pairs::{decode_pairs, encode_pairs},
};

/// A decoded session item.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Stored {
    pub(super) created_ms: u64,
    pub(super) max_age: Option<u64>,
    pub(super) data: FieldMap,
}

fn corrupt(what: &str) -> StoreError {
    StoreError::Corrupt(format!("memcached item: {what}"))
}

pub(super) fn encode_session(s: &Stored) -> Vec<u8> {
    let max_age = s.max_age.map_or_else(|| "-".to_owned(), |m| m.to_string());
    let mut out = format!("S1 {} {max_age}\n", s.created_ms).into_bytes();
    encode_pairs(&s.data, &mut out);
    out
}

pub(super) fn encode_flash(flash: &FieldMap) -> Vec<u8> {
    let mut out = b"F1\n".to_vec();
    encode_pairs(flash, &mut out);
    out
}

pub(super) fn decode_session(bytes: &[u8]) -> Result<Stored, StoreError> {
    let (header, rest) = split_header(bytes)?;
    let mut parts = header.split(' ');
    if parts.next() != Some("S1") {
        return Err(corrupt("not a session"));
    }
    let created_ms = parts
        .next()
        .and_then(|t| t.parse().ok())
        .ok_or_else(|| corrupt("creation time"))?;
    let max_age = match parts.next() {
        Some("-") => None,
        Some(t) => Some(t.parse().map_err(|_| corrupt("max_age"))?),
        None => return Err(corrupt("max_age")),
    };
    if parts.next().is_some() {
        return Err(corrupt("header"));
    }
    Ok(Stored {
        created_ms,
        max_age,
        data: decode_pairs(rest).map_err(corrupt)?,
    })
}

pub(super) fn decode_flash(bytes: &[u8]) -> Result<FieldMap, StoreError> {
    let (header, rest) = split_header(bytes)?;
    if header != "F1" {
        return Err(corrupt("not a flash item"));
    }
    decode_pairs(rest).map_err(corrupt)
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

    #[test]
    fn session_encoding_round_trips() {
        let mut data = FieldMap::new();
        data.insert("\"user\"".into(), "\"ann\"".into());
        data.insert("\"a,b:c\"".into(), r#"{"x":[1,"2:3,"]}"#.into());
        data.insert("\"\\u00e9\"".into(), "9223372036854775807".into());
        for max_age in [None, Some(0), Some(3600)] {
            let s = Stored {
                created_ms: 1_700_000_000_123,
                max_age,
                data: data.clone(),
            };
            let bytes = encode_session(&s);
            assert_eq!(decode_session(&bytes).unwrap(), s);
        }
        let empty = Stored {
            created_ms: 5,
            max_age: None,
            data: FieldMap::new(),
        };
        assert_eq!(encode_session(&empty), b"S1 5 -\n");
        let one = Stored {
            created_ms: 5,
            max_age: Some(7),
            data: [("\"user\"".to_owned(), "\"ann\"".to_owned())].into(),
        };
        assert_eq!(
            String::from_utf8(encode_session(&one)).unwrap(),
            "S1 5 7\n6:\"user\",5:\"ann\","
        );
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
            b"F1\n",
            b"S1 1 -\n3:\"a\"",
            b"S1 1 -\n3:\"a\",",
            b"S1 1 -\n3:\"a\",0:,",
            b"S1 1 -\n1:a,1:1,",
            b"S1 1 -\n3:\"a\",9:1,",
            b"S1 1 -\n3:\"a\",2:\xc3\xa9,",
            b"S1 1 -\n-3:\"a\",1:1,",
            b"S1 1 -\n99999999999999:\"a\",1:1,",
        ] {
            assert!(
                matches!(decode_session(bad), Err(StoreError::Corrupt(_))),
                "{:?}",
                String::from_utf8_lossy(bad)
            );
        }
        assert!(decode_flash(b"S1 1 -\n").is_err());
    }
}
