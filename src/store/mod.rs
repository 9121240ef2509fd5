//! Session stores: one async interface, three engines.
//!
//! Every engine keeps a session as a map of *fields* to *values*, both already in their
//! wire form (see [`crate::protocol`]): a field is the JSON string literal of the key
//! (quotes included, non-ASCII escaped), a value is compact ASCII-only JSON text. The
//! request path therefore never parses JSON: `X-Session` is built by concatenation.
//!
//! A store only moves bytes and enforces atomicity; the decisions (which id to write,
//! what a write means) are made by the pipeline and expressed as a [`WritePlan`].

pub mod any;
pub mod memcached;
pub mod memory;
pub mod owners;
pub mod pairs;
pub mod redis;
pub mod timed;

use std::{collections::BTreeMap, fmt, future::Future, time::Duration};

use crate::{
    cookie::SessionId,
    protocol::{Op, encoded_object_len},
};

pub use self::owners::{ClientInfo, Owner, OwnerChange, OwnerKey, SessionInfo};

/// A session field map: JSON string literal of the key → compact JSON value text.
pub type FieldMap = BTreeMap<String, String>;

/// Lifetimes and bounds every engine enforces (docs/protocol.md §7).
#[derive(Debug, Clone)]
pub struct Lifetimes {
    /// Idle lifetime, refreshed on every load (`session.ttl`).
    pub ttl: Duration,
    /// Hard limit from creation (`session.absolute_ttl`).
    pub absolute_ttl: Duration,
    /// Largest encoded `X-Session` (and `X-Session-Flash`) value in bytes.
    pub max_size: usize,
    /// A load refreshes the idle lifetime only when the last refresh is at least this
    /// old (`session.touch_after`; zero: every load). docs/protocol.md §12.
    pub touch_after: Duration,
}

/// Whether a load may extend the session's idle lifetime (docs/protocol.md §12).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Touch {
    /// Refresh it, when the last refresh is older than `session.touch_after`.
    Refresh,
    /// Never (a `session.no_touch` route): the session is read and its flash consumed,
    /// nothing else changes, `last_seen` included.
    Keep,
}

/// What a load found.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LoadedSession {
    /// The session data.
    pub data: FieldMap,
    /// Notifications delivered by this load; they are gone from the store already.
    pub flash: FieldMap,
    /// The per-session idle lifetime set with `X-Session-Max-Age`, in seconds.
    pub max_age: Option<u64>,
    /// Seconds left until `absolute_ttl` (caps a cookie's `Max-Age`).
    pub remaining: u64,
    /// The engine's note of the stored version this load read, for engines whose writes
    /// can use it (memcached); `None` from the others. Handed back unchanged with the
    /// same request's write ([`WritePlan::revision`]).
    pub revision: Option<Revision>,
    /// The session's owner (docs/protocol.md §11).
    pub owner: Option<Owner>,
    /// Owned sessions only: this load's refresh came close to the session's index bound
    /// ([`owners::index_due`]); the new bound, in ms from now, that the pipeline is to
    /// write to the index and then to the session ([`SessionStore::extend_bound`]).
    pub index_due: Option<u64>,
}

/// An opaque token an engine returns with a load and gets back with the same request's
/// write: its private optimisation, never read or built outside [`crate::store`].
///
/// Memcached keeps the session item as it read it, with its CAS: the write then needs
/// no second read of the session (one round trip for a load and one for a write), unless
/// someone else wrote in between (then the CAS fails and the engine reads again, as
/// without it). See `docs/performance.md`.
#[derive(Clone, PartialEq, Eq)]
pub struct Revision {
    /// The engine's version of what it read (memcached: the item's CAS).
    version: u64,
    /// What it read, in the engine's own encoding.
    item: Vec<u8>,
}

impl Revision {
    pub(in crate::store) fn new(version: u64, item: Vec<u8>) -> Self {
        Revision { version, item }
    }

    pub(in crate::store) fn version(&self) -> u64 {
        self.version
    }

    pub(in crate::store) fn item(&self) -> &[u8] {
        &self.item
    }
}

impl fmt::Debug for Revision {
    // The item holds session data: its size is enough in a debug dump.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Revision")
            .field("version", &self.version)
            .field("item_len", &self.item.len())
            .finish()
    }
}

/// Which session(s) a write touches. Chosen by the pipeline from the request's cookie
/// state and the response's instructions.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    /// Update a session that was loaded by this request. If it is gone by now (expired,
    /// destroyed concurrently) nothing is written and [`WriteOutcome::Gone`] is returned:
    /// a write never revives a dead id.
    Existing(SessionId),
    /// Create a brand-new session (fresh creation time) and apply the ops to it.
    Create(SessionId),
    /// Regenerate: move data, pending flash, creation time and max-age from `from` to the
    /// new id `to`, delete `from`, then apply the ops to `to`. `Gone` if `from` is gone.
    Move { from: SessionId, to: SessionId },
    /// Destroy `old` (data and flash) and write nothing else.
    Destroy(SessionId),
    /// Destroy `old`, then create `new` with a fresh creation time and apply the ops.
    DestroyThenCreate { old: SessionId, new: SessionId },
}

/// A validated change set, ready for one atomic store operation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WritePlan {
    pub target: Target,
    /// Data and flash operations in application order (see [`crate::protocol::Op`]).
    pub ops: Vec<Op>,
    /// New per-session idle lifetime (`X-Session-Max-Age`), in seconds.
    pub max_age: Option<u64>,
    /// With [`Target::Existing`]: the [`LoadedSession::revision`] this request's load
    /// returned, handed back unchanged. Only an optimisation: an engine checks it is
    /// still current before relying on it.
    pub revision: Option<Revision>,
    /// The owner change (`X-Session-Owner`); [`OwnerChange::Keep`] for most writes.
    pub owner: OwnerChange,
    /// With a target that creates a session (`Create`, `DestroyThenCreate`) and
    /// `session.record_client: true`: what to record of the client.
    pub client: Option<ClientInfo>,
}

/// The result of a write that reached the store.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WriteOutcome {
    Applied,
    /// The session to update (or move) no longer exists; nothing was written.
    Gone,
}

/// Why applying ops to a session was refused. Nothing is written in any of these cases;
/// the pipeline answers 502 (the upstream sent something it may not).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ApplyError {
    #[error("X-Session-Incr on key {field} whose value is not an integer")]
    NotInteger { field: String },
    #[error("X-Session-Incr on key {field} overflows a 64-bit integer")]
    Overflow { field: String },
    #[error("the encoded session would be {size} bytes, over session.max_size ({max})")]
    TooLarge { size: usize, max: usize },
    #[error("the encoded flash would be {size} bytes, over session.max_size ({max})")]
    FlashTooLarge { size: usize, max: usize },
}

/// Store failures, mapped to HTTP statuses in one place ([`crate::error`]).
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The store could not be reached or answered with an error (503).
    #[error("store unavailable: {0}")]
    Unavailable(String),
    /// The call took longer than `store.timeout` (503).
    #[error("store call timed out")]
    Timeout,
    /// The change set cannot be applied to the stored session (502).
    #[error(transparent)]
    Rejected(#[from] ApplyError),
    /// The store holds data this sidecar cannot read (503; logged).
    #[error("store returned malformed data: {0}")]
    Corrupt(String),
}

/// The one interface every engine implements (docs/protocol.md §9). Implementations never
/// block a runtime thread. Engines add no call timer of their own: in production every
/// engine runs behind [`timed::TimedStore`], which bounds each call by `store.timeout`
/// (answering [`StoreError::Timeout`]) and records the store metrics.
pub trait SessionStore: Send + Sync + 'static {
    /// Load data and pending flash in one round trip, consume that flash (exactly once,
    /// even under concurrency) and refresh the idle lifetime. `None` when the session
    /// does not exist or is past its absolute lifetime.
    fn load(
        &self,
        id: &SessionId,
    ) -> impl Future<Output = Result<Option<LoadedSession>, StoreError>> + Send {
        self.load_touch(id, Touch::Refresh)
    }

    /// [`SessionStore::load`], refreshing the idle lifetime (and `last_seen`) only with
    /// [`Touch::Refresh`] and only when the last refresh is at least
    /// [`Lifetimes::touch_after`] old. A refresh sets the expiry to now + idle lifetime,
    /// capped by the absolute lifetime and, for an owned session, by its index bound
    /// ([`owners::capped_expiry`]); it reports [`LoadedSession::index_due`].
    fn load_touch(
        &self,
        id: &SessionId,
        touch: Touch,
    ) -> impl Future<Output = Result<Option<LoadedSession>, StoreError>> + Send;

    /// Apply a validated plan as one atomic operation (all or nothing), its owner change
    /// and client record included. A created session records `created` = `last_seen` =
    /// now; a write refreshes the expiry and `last_seen` like a load; Move carries the
    /// owner, bound, creation time and client record to the new id.
    fn apply(
        &self,
        plan: &WritePlan,
    ) -> impl Future<Output = Result<WriteOutcome, StoreError>> + Send;

    /// Is the store reachable and usable (for `/readyz`)?
    fn ping(&self) -> impl Future<Output = Result<(), StoreError>> + Send;

    /// Owner index, atomically: drop the entries whose bound has passed, then set
    /// `member`'s bound to the later of its current one and now +
    /// [`owners::with_margin`]`(bound_ms)`. The index itself expires with its latest bound.
    fn index_add(
        &self,
        owner: &OwnerKey,
        member: &str,
        bound_ms: u64,
    ) -> impl Future<Output = Result<(), StoreError>> + Send;

    /// The owner's index entries whose bound has not passed (store keys), at most
    /// [`owners::MAX_INDEX_ENTRIES`], in no particular order.
    fn index_members(
        &self,
        owner: &OwnerKey,
    ) -> impl Future<Output = Result<Vec<String>, StoreError>> + Send;

    /// Remove these entries from the owner's index (absent ones are no-ops); an empty
    /// index is deleted.
    fn index_remove(
        &self,
        owner: &OwnerKey,
        members: &[String],
    ) -> impl Future<Output = Result<(), StoreError>> + Send;

    /// Destroy the sessions with these store keys (data and flash), each as
    /// [`Target::Destroy`] does: a later write to one of them is [`WriteOutcome::Gone`].
    /// Returns how many were live.
    fn destroy_keys(&self, keys: &[String])
    -> impl Future<Output = Result<u64, StoreError>> + Send;

    /// What the admin API shows of each session (by store key); `None` for one that is
    /// not live.
    fn session_info(
        &self,
        keys: &[String],
    ) -> impl Future<Output = Result<Vec<Option<SessionInfo>>, StoreError>> + Send;

    /// An owned live session's bound becomes the later of its current one and now +
    /// `bound_ms` (after [`SessionStore::index_add`] wrote the index). `false` when the
    /// session is gone or has no owner.
    fn extend_bound(
        &self,
        key: &str,
        bound_ms: u64,
    ) -> impl Future<Output = Result<bool, StoreError>> + Send;
}

/// Apply `ops` to copies of `data`/`flash` and return the new maps, or why not.
/// The reference semantics every engine implements (the Redis engine mirrors it in Lua).
pub fn apply_ops(
    data: &FieldMap,
    flash: &FieldMap,
    ops: &[Op],
    max_size: usize,
) -> Result<(FieldMap, FieldMap), ApplyError> {
    let mut data = data.clone();
    let mut flash = flash.clone();
    for op in ops {
        match op {
            Op::ClearData => data.clear(),
            Op::Delete(field) => {
                data.remove(field);
            }
            Op::Set(field, value) => {
                data.insert(field.clone(), value.clone());
            }
            Op::Incr(field, by) => {
                let current = match data.get(field) {
                    None => 0,
                    Some(text) => parse_integer(text).ok_or_else(|| ApplyError::NotInteger {
                        field: field.clone(),
                    })?,
                };
                let sum = current
                    .checked_add(*by)
                    .ok_or_else(|| ApplyError::Overflow {
                        field: field.clone(),
                    })?;
                data.insert(field.clone(), sum.to_string());
            }
            Op::FlashSet(field, value) => {
                flash.insert(field.clone(), value.clone());
            }
        }
    }
    let size = encoded_object_len(&data);
    if size > max_size {
        return Err(ApplyError::TooLarge {
            size,
            max: max_size,
        });
    }
    let size = encoded_object_len(&flash);
    if size > max_size {
        return Err(ApplyError::FlashTooLarge {
            size,
            max: max_size,
        });
    }
    Ok((data, flash))
}

/// A stored value counts as an integer for `Incr` when it is a JSON integer that fits an
/// `i64`. `-0` counts (as `0`, a valid JSON integer); `1.0`, `1e3` and leading zeros do
/// not. The Redis apply script follows the same rule.
pub fn parse_integer(text: &str) -> Option<i64> {
    let digits = text.strip_prefix('-').unwrap_or(text);
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    if digits.len() > 1 && digits.starts_with('0') {
        return None;
    }
    text.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn f(k: &str) -> String {
        format!("\"{k}\"")
    }

    #[test]
    fn order_replace_delete_set_incr() {
        let mut data = FieldMap::new();
        data.insert(f("old"), "1".into());
        let ops = vec![
            Op::ClearData,
            Op::Set(f("x"), "1".into()),
            Op::Set(f("y"), "2".into()),
            Op::Delete(f("x")),
            Op::Set(f("n"), "5".into()),
            Op::Set(f("s"), "1".into()),
            Op::Incr(f("n"), 2),
        ];
        let (d, _) = apply_ops(&data, &FieldMap::new(), &ops, 8192).unwrap();
        assert_eq!(
            d.into_iter().collect::<Vec<_>>(),
            vec![
                (f("n"), "7".to_string()),
                (f("s"), "1".to_string()),
                (f("y"), "2".to_string())
            ]
        );
    }

    #[test]
    fn incr_rejects_non_integers_and_overflow() {
        let mut data = FieldMap::new();
        data.insert(f("a"), "1.5".into());
        data.insert(f("b"), i64::MAX.to_string());
        let empty = FieldMap::new();
        assert!(matches!(
            apply_ops(&data, &empty, &[Op::Incr(f("a"), 1)], 8192),
            Err(ApplyError::NotInteger { .. })
        ));
        assert!(matches!(
            apply_ops(&data, &empty, &[Op::Incr(f("b"), 1)], 8192),
            Err(ApplyError::Overflow { .. })
        ));
        let (d, _) = apply_ops(&data, &empty, &[Op::Incr(f("c"), -3)], 8192).unwrap();
        assert_eq!(d[&f("c")], "-3");
    }

    #[test]
    fn size_limit_is_inclusive() {
        // {"a":"xx"} is 10 bytes
        let ops = [Op::Set(f("a"), "\"xx\"".into())];
        let empty = FieldMap::new();
        assert!(apply_ops(&empty, &empty, &ops, 10).is_ok());
        assert!(matches!(
            apply_ops(&empty, &empty, &ops, 9),
            Err(ApplyError::TooLarge { size: 10, max: 9 })
        ));
    }

    #[test]
    fn integers_are_strict() {
        assert_eq!(parse_integer("0"), Some(0));
        assert_eq!(parse_integer("-12"), Some(-12));
        for bad in [
            "",
            "-",
            "01",
            "-0x1",
            "1.0",
            "1e3",
            "\"1\"",
            "99999999999999999999",
        ] {
            assert_eq!(parse_integer(bad), None, "{bad}");
        }
    }
}
