//! Reserved header names: the family every spelling of the prefix belongs to, how a
//! name is normalised to match it, stripping it from a header map, and the names the
//! sidecar injects.

use http::{HeaderMap, HeaderName};

use super::instructions::Kind;

/// The `headers.prefix` setting was unusable.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProtocolError {
    #[error("headers.prefix must not be empty")]
    EmptyPrefix,
    #[error("headers.prefix {0:?} is not a valid header name (RFC 9110 token characters only)")]
    InvalidPrefix(String),
}

/// The reserved header family, from `headers.prefix` (docs/protocol.md §3.1).
///
/// A name is reserved when, ASCII-lowercased with `_` and `.` mapped to `-`, it starts
/// with the prefix normalised the same way. CGI, WSGI, PHP, ASGI and some proxies fold
/// `_` (and `.`) onto `-`, so an alias that survived stripping would reach the app as the
/// real name (oauth2-proxy CVE-2025-64484, Traefik CVE-2026-54763 / CVE-2026-88011,
/// Django CVE-2015-0219): the family is matched by normalised *prefix*, never by a list.
#[derive(Debug, Clone)]
pub struct ReservedPrefix {
    /// As configured, for error messages (`X-Session-Incr: ...`).
    pub(super) display: String,
    /// Lower-case, `_`/`.` mapped to `-`; ASCII only (checked in `new`).
    normalized: String,
    session: HeaderName,
    flash: HeaderName,
    status: HeaderName,
    id: HeaderName,
    owner: HeaderName,
    /// `<lower-case prefix><suffix>` for each instruction, in [`Kind::ALL`] order.
    pub(super) instructions: Vec<(Kind, HeaderName)>,
}

/// `tchar` of RFC 9110 §5.6.2: what a header field name is made of.
fn is_tchar(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

fn normalize_byte(b: u8) -> u8 {
    match b {
        b'_' | b'.' => b'-',
        _ => b.to_ascii_lowercase(),
    }
}

impl ReservedPrefix {
    /// # Errors
    /// When `prefix` is empty or not a header-name token.
    pub fn new(prefix: &str) -> Result<Self, ProtocolError> {
        if prefix.is_empty() {
            return Err(ProtocolError::EmptyPrefix);
        }
        let invalid = || ProtocolError::InvalidPrefix(prefix.to_owned());
        if !prefix.bytes().all(is_tchar) {
            return Err(invalid());
        }
        let lower = prefix.to_ascii_lowercase();
        let name = |suffix: &str| {
            HeaderName::from_bytes(format!("{lower}{}", suffix.to_ascii_lowercase()).as_bytes())
                .map_err(|_| invalid())
        };
        let instructions = Kind::ALL
            .iter()
            .map(|&kind| Ok((kind, name(kind.suffix())?)))
            .collect::<Result<Vec<_>, ProtocolError>>()?;
        Ok(ReservedPrefix {
            display: prefix.to_owned(),
            normalized: prefix
                .bytes()
                .map(|b| char::from(normalize_byte(b)))
                .collect(),
            session: name("")?,
            flash: name("-flash")?,
            status: name("-status")?,
            id: name("-id")?,
            owner: name("-owner")?,
            instructions,
        })
    }

    /// Is `name` in the reserved family, in any spelling? Runs on every header of every
    /// request and response, so it compares byte by byte without allocating.
    pub fn is_reserved(&self, name: &str) -> bool {
        let prefix = self.normalized.as_bytes();
        name.len() >= prefix.len()
            && name
                .bytes()
                .zip(prefix)
                .all(|(b, &p)| normalize_byte(b) == p)
    }

    /// Remove every reserved header, all of its values, in one pass over the names
    /// (docs/security.md §3). For client request headers and for request and response
    /// trailers, where reserved names are never honoured (Traefik CVE-2026-88004 smuggled
    /// them in trailers).
    pub fn strip(&self, headers: &mut HeaderMap) {
        let doomed: Vec<HeaderName> = headers
            .keys()
            .filter(|name| self.is_reserved(name.as_str()))
            .cloned()
            .collect();
        for name in doomed {
            // `remove` drops every value of the name, not only the first.
            headers.remove(&name);
        }
    }

    /// `x-session`: the injected session data.
    pub fn session(&self) -> &HeaderName {
        &self.session
    }

    /// `x-session-flash`: the injected notifications.
    pub fn flash(&self) -> &HeaderName {
        &self.flash
    }

    /// `x-session-status`: the injected [`SessionStatus`](super::SessionStatus) token.
    pub fn status(&self) -> &HeaderName {
        &self.status
    }

    /// `x-session-id`: the injected id, with `headers.expose_id`.
    pub fn id(&self) -> &HeaderName {
        &self.id
    }

    /// `x-session-owner`: the loaded session's owner (docs/protocol.md §11).
    pub fn owner(&self) -> &HeaderName {
        &self.owner
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::test_util::*;

    #[test]
    fn reserved_in_every_spelling() {
        let p = prefix();
        for name in [
            "x-session",
            "X-Session",
            "X_Session",
            "x.session-flash",
            "X-SESSION-SET",
            "x_session_set",
            "X.Session.Id",
            "x-session-",
            "x-sessionfoo",
            "x_SESSION.status",
        ] {
            assert!(p.is_reserved(name), "{name}");
        }
        for name in [
            "x-sessio",
            "",
            "session",
            "x-ses-sion",
            "xx-session",
            "x session",
        ] {
            assert!(!p.is_reserved(name), "{name}");
        }
    }

    #[test]
    fn prefix_is_normalised_too() {
        let p = ReservedPrefix::new("My_App.Sess").unwrap();
        assert!(p.is_reserved("my-app-sess-set"));
        assert!(p.is_reserved("MY.APP_SESS"));
        assert!(!p.is_reserved("x-session"));
        assert_eq!(p.session().as_str(), "my_app.sess");
        assert_eq!(p.flash().as_str(), "my_app.sess-flash");
    }

    #[test]
    fn prefix_must_be_a_non_empty_token() {
        assert_eq!(
            ReservedPrefix::new("").unwrap_err(),
            ProtocolError::EmptyPrefix
        );
        for bad in [
            "X Session",
            "X-Session:",
            "Sessión",
            "X\nSession",
            "\"x\"",
            "a/b",
        ] {
            assert!(
                matches!(
                    ReservedPrefix::new(bad),
                    Err(ProtocolError::InvalidPrefix(_))
                ),
                "{bad:?}"
            );
        }
        assert!(ReservedPrefix::new("X-App_1.v2").is_ok());
    }

    #[test]
    fn injected_names_are_lower_case_and_reserved() {
        let p = prefix();
        assert_eq!(p.session().as_str(), "x-session");
        assert_eq!(p.flash().as_str(), "x-session-flash");
        assert_eq!(p.status().as_str(), "x-session-status");
        assert_eq!(p.id().as_str(), "x-session-id");
        for name in [p.session(), p.flash(), p.status(), p.id()] {
            assert!(p.is_reserved(name.as_str()));
        }
    }

    #[test]
    fn strip_removes_every_spelling_and_every_duplicate() {
        let p = prefix();
        let mut headers = map(&[
            ("x-session", b"{}"),
            ("x-session", b"{\"admin\":true}"),
            ("X_Session", b"{}"),
            ("x.session-flash", b"{}"),
            ("X-SESSION-SET", b"{\"a\":1}"),
            ("x-sessionfoo", b"1"),
            ("x-session-status", b""),
            ("x-sessio", b"kept"),
            ("cookie", b"a=b"),
            ("accept", b"a"),
            ("accept", b"b"),
        ]);
        p.strip(&mut headers);
        assert!(no_reserved_left(&p, &headers));
        assert_eq!(headers.len(), 4);
        assert_eq!(headers["x-sessio"], "kept");
        assert_eq!(headers.get_all("accept").iter().count(), 2);
    }

    #[test]
    fn strip_without_reserved_headers_changes_nothing() {
        let p = prefix();
        let mut headers = map(&[("host", b"a"), ("x-other", b"b")]);
        let before = headers.clone();
        p.strip(&mut headers);
        assert_eq!(headers, before);
    }
}
