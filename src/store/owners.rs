//! Owners (docs/protocol.md §11): the per-owner index every engine keeps, and the
//! orchestration of attach, revoke, limit and listing over it.
//!
//! The index is a set of session store keys per owner, each with a *bound*: a time
//! (engine clock, unix ms) that the session's own expiry never passes while it is in the
//! index. Every engine caps a session's idle refresh at its bound (`LoadedSession`'s
//! `index_due` asks for a longer one in advance), so an index entry always outlives its
//! session, and an index whose entries all passed their bound is gone: it expires with
//! its sessions, at most half an idle lifetime later. The orchestration writes the index
//! **before** the session it covers, so a session that carries an owner is always
//! reachable from that owner's index; a stale entry (its session gone) costs nothing but
//! a no-op delete on revoke. On a Redis Cluster the index lives in its own slot: each
//! primitive below is atomic on its own, and the order between them is what this module
//! guarantees (docs/decisions.md, "Owners").

use std::fmt;

use base64::{Engine, engine::general_purpose::URL_SAFE_NO_PAD};
use sha2::{Digest, Sha256};

/// The most every engine adds to an index entry's bound over the session's
/// ([`with_margin`]): covers the time between the index write and the session write, and
/// clock skew between the clocks involved (a cluster's nodes; memcached has no shared
/// clock, each sidecar uses its own).
pub const INDEX_MARGIN_MS: u64 = 60_000;

/// An index entry's bound (ms from now) for a session bound `bound_ms` from now: plus a
/// quarter of it, at most [`INDEX_MARGIN_MS`].
pub fn with_margin(bound_ms: u64) -> u64 {
    bound_ms.saturating_add((bound_ms / 4).min(INDEX_MARGIN_MS))
}

/// Largest number of entries one owner's index answers with: revocation and listing
/// read at most this many (docs/protocol.md §11).
pub const MAX_INDEX_ENTRIES: usize = 10_000;

/// An owner as stored: the JSON string literal of the app's owner id (quotes included,
/// escaped as a session field), 1–256 bytes before encoding.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct Owner(String);

impl Owner {
    /// From the literal the protocol parser produced (`field_literal`), trusted.
    pub fn from_literal(literal: String) -> Self {
        Owner(literal)
    }

    /// The JSON string literal, as `X-Session-Owner` carries it to the app.
    pub fn literal(&self) -> &str {
        &self.0
    }

    /// The name under which engines keep this owner's index: base64url(SHA-256) of the
    /// literal, so store dumps and key names never show an owner id.
    pub fn key(&self) -> OwnerKey {
        OwnerKey(URL_SAFE_NO_PAD.encode(Sha256::digest(self.0.as_bytes())))
    }
}

impl fmt::Debug for Owner {
    // An owner id is personal data: never in a debug dump or a log line.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Owner(..)")
    }
}

/// base64url(SHA-256(owner literal)): 43 characters of `[A-Za-z0-9_-]`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct OwnerKey(String);

impl OwnerKey {
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// A session handle (docs/protocol.md §11): base64url(SHA-256(session id)), which is
/// also the session's store key. Identifies a session without being a credential.
pub fn is_handle(text: &str) -> bool {
    text.len() == 43
        && text
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

/// How a write changes the session's owner (`X-Session-Owner`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum OwnerChange {
    /// Unchanged (Regenerate keeps the owner; Destroy drops it with the session).
    #[default]
    Keep,
    /// Attach to `owner`, with a bound `bound_ms` from now (engine clock): the session
    /// records `now + bound_ms` as its bound; its index entry was written before with
    /// the same `bound_ms` (plus [`INDEX_MARGIN_MS`]).
    Attach { owner: Owner, bound_ms: u64 },
    /// Detach from any owner.
    Detach,
}

/// What `session.record_client` keeps of a new session's client.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientInfo {
    /// The client's address as the sidecar saw it (after trusted proxies).
    pub ip: String,
    /// The first 256 bytes of `User-Agent`, as ASCII-safe text (others replaced by `?`).
    pub user_agent: String,
}

/// Largest recorded `User-Agent`, in bytes.
pub const MAX_USER_AGENT: usize = 256;

impl ClientInfo {
    /// Record `ip` and `user_agent`, cut to [`MAX_USER_AGENT`] bytes; bytes outside
    /// printable ASCII become `?` (they are never echoed raw).
    pub fn new(ip: String, user_agent: &[u8]) -> Self {
        let user_agent = user_agent
            .iter()
            .take(MAX_USER_AGENT)
            .map(|&b| {
                if (0x20..0x7f).contains(&b) {
                    b as char
                } else {
                    '?'
                }
            })
            .collect();
        ClientInfo { ip, user_agent }
    }
}

/// One session as the admin API lists it. Times are unix seconds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SessionInfo {
    /// The session's handle (= store key).
    pub handle: String,
    pub owner: Option<Owner>,
    pub created: u64,
    /// The last refresh of its idle lifetime (lags by at most `session.touch_after`).
    pub last_seen: u64,
    /// When it dies if left unused: last refresh + idle lifetime, capped by
    /// `absolute_ttl`.
    pub expires: u64,
    pub client: Option<ClientInfo>,
}

/// The bound (ms from now) for an owned session: its idle lifetime plus half of it, so
/// that a refresh of the index is needed at most every quarter idle lifetime, never past
/// the absolute deadline.
pub fn bound_for(idle_ms: u64, remaining_ms: u64) -> u64 {
    idle_ms.saturating_add(idle_ms / 2).min(remaining_ms).max(1)
}

/// When a load or write must refresh an owned session's bound: the idle refresh would
/// come within a quarter idle lifetime of it, and the absolute deadline is further.
/// Returns the new bound (ms from now) then. All arguments in engine-clock unix ms
/// except `idle_ms`.
pub fn index_due(now_ms: u64, idle_ms: u64, bound_at_ms: u64, deadline_ms: u64) -> Option<u64> {
    let wanted = now_ms.saturating_add(idle_ms).min(deadline_ms);
    let slack = idle_ms / 4;
    (bound_at_ms < deadline_ms && wanted.saturating_add(slack) > bound_at_ms)
        .then(|| bound_for(idle_ms, deadline_ms.saturating_sub(now_ms)))
}

/// The idle expiry of an owned session: never past its bound.
pub fn capped_expiry(wanted_ms: u64, bound_at_ms: Option<u64>) -> u64 {
    match bound_at_ms {
        Some(b) => wanted_ms.min(b),
        None => wanted_ms,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn owner_keys_hide_the_owner() {
        let o = Owner::from_literal("\"alice\"".into());
        let k = o.key();
        assert_eq!(k.as_str().len(), 43);
        assert!(!k.as_str().contains("alice"));
        assert_eq!(format!("{o:?}"), "Owner(..)");
        assert_ne!(k, Owner::from_literal("\"bob\"".into()).key());
    }

    #[test]
    fn handles_are_43_base64url_characters() {
        assert!(is_handle(&"A".repeat(43)));
        assert!(is_handle("abcdefghijklmnopqrstuvwxyz0123456789-_ABCDE"));
        assert!(!is_handle(&"A".repeat(42)));
        assert!(!is_handle(&format!("{}=", "A".repeat(42))));
        assert!(!is_handle(&format!("{}/", "A".repeat(42))));
    }

    #[test]
    fn user_agents_are_cut_and_made_safe() {
        let c = ClientInfo::new("1.2.3.4".into(), "Mozilla\r\n\u{e9}".as_bytes());
        assert_eq!(c.user_agent, "Mozilla????");
        let long = ClientInfo::new(String::new(), &[b'a'; 300]);
        assert_eq!(long.user_agent.len(), MAX_USER_AGENT);
    }

    #[test]
    fn bounds_and_refreshes() {
        // idle 1000 ms, far deadline: bound 1500 ms from now.
        assert_eq!(bound_for(1000, 1_000_000), 1500);
        assert_eq!(bound_for(1000, 700), 700);
        // Bound at 10_500 (set at 9_000): a load at 9_100 wants 10_100 + 250 slack < 10_500: not due.
        assert_eq!(index_due(9_100, 1000, 10_500, 1_000_000), None);
        // A load at 9_400 wants 10_400 + 250 > 10_500: due, new bound 1500 from now.
        assert_eq!(index_due(9_400, 1000, 10_500, 1_000_000), Some(1500));
        // The bound is already the absolute deadline: never due.
        assert_eq!(index_due(9_400, 1000, 10_000, 10_000), None);
        assert_eq!(with_margin(4000), 5000);
        assert_eq!(with_margin(10_000_000), 10_060_000);
        assert_eq!(capped_expiry(5, Some(3)), 3);
        assert_eq!(capped_expiry(5, None), 5);
    }
}
