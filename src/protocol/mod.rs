//! The header protocol (docs/protocol.md §3–§5), pure: reserved-name matching, the encoding
//! of the injected `X-Session*` values, and the strict parsing of the upstream's write
//! instructions into a [`ChangeSet`]. No I/O here; each part is unit-tested beside its
//! code.
//!
//! | file | what |
//! |---|---|
//! | [`names`] | the reserved prefix ([`ReservedPrefix`]): matching every spelling, stripping, the injected names |
//! | [`instructions`] | the write instructions of a response → [`ChangeSet`] of [`Op`]s |
//! | [`json`] | the strict JSON reader of instruction values and the ASCII JSON writer of the wire form |
//! | [`status`] | the `X-Session-Status` token ([`SessionStatus`]) |

pub mod instructions;
pub mod json;
pub mod names;
pub mod status;

pub use instructions::{ChangeSet, MAX_MAX_AGE, Malformed, Op};
pub use json::{
    MAX_DEPTH, MAX_KEY_LEN, MAX_OWNER_LEN, encode_object, encoded_object_len, field_literal,
    json_ascii,
};
pub use names::{ProtocolError, ReservedPrefix};
pub use status::SessionStatus;

/// Helpers shared by the unit tests of the submodules.
#[cfg(test)]
mod test_util {
    use http::{HeaderMap, HeaderName, HeaderValue};

    use super::{ChangeSet, Malformed, ReservedPrefix};

    pub(super) fn prefix() -> ReservedPrefix {
        ReservedPrefix::new("X-Session").unwrap()
    }

    pub(super) fn f(k: &str) -> String {
        format!("\"{k}\"")
    }

    pub(super) fn map(pairs: &[(&str, &[u8])]) -> HeaderMap {
        let mut headers = HeaderMap::new();
        for (name, value) in pairs {
            headers.append(
                HeaderName::from_bytes(name.as_bytes()).unwrap(),
                HeaderValue::from_bytes(value).unwrap(),
            );
        }
        headers
    }

    pub(super) fn take(pairs: &[(&str, &[u8])]) -> Result<ChangeSet, Malformed> {
        prefix().take_instructions(&mut map(pairs))
    }

    pub(super) fn reason(pairs: &[(&str, &[u8])]) -> String {
        take(pairs).unwrap_err().reason
    }

    pub(super) fn no_reserved_left(p: &ReservedPrefix, headers: &HeaderMap) -> bool {
        headers.keys().all(|n| !p.is_reserved(n.as_str()))
    }
}
