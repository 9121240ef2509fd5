//! The owner logic of the pipeline and the admin API (docs/protocol.md §11), over the
//! store's owner-index primitives ([`crate::store::owners`] explains the index).
//!
//! What is ordered here, on every engine and topology:
//! - an index entry is written **before** the session write that attaches (or moves) a
//!   session to an owner, so a session carrying an owner is always in its index;
//! - a revoke reads the index, destroys each listed session (each destroy atomic on its
//!   own: a concurrent write then finds the session gone and never revives it), then
//!   removes those entries. A session attached before the revoke began is in the index
//!   it reads, so it cannot load again once the revoke's response is sent;
//! - the owner limit runs after the attaching write, so the last login's enforcement
//!   sees every session attached before it and leaves at most the limit alive.

use crate::{
    cookie::SessionId,
    store::{
        Owner, OwnerChange, SessionInfo, SessionStore, StoreError, Target, WritePlan,
        owners::MAX_INDEX_ENTRIES,
    },
};

/// Store keys per destroy or info call: bounds each call (and on a cluster the number of
/// concurrent per-session calls) whatever the size of an owner's index.
const BATCH: usize = 256;

/// The store key a plan's session lives under after the write, if it has one.
fn written_key(target: &Target) -> Option<String> {
    match target {
        Target::Existing(id) | Target::Create(id) => Some(id.store_key()),
        Target::Move { to, .. } => Some(to.store_key()),
        Target::DestroyThenCreate { new, .. } => Some(new.store_key()),
        Target::Destroy(_) => None,
    }
}

/// Destroy every session in `owner`'s index except `keep`; the number that were live.
pub async fn revoke_owner<S: SessionStore>(
    store: &S,
    owner: &Owner,
    keep: Option<&str>,
) -> Result<u64, StoreError> {
    let key = owner.key();
    let mut revoked = 0;
    loop {
        let members = store.index_members(&key).await?;
        let full = members.len() >= MAX_INDEX_ENTRIES;
        let victims: Vec<String> = members
            .into_iter()
            .filter(|m| Some(m.as_str()) != keep)
            .collect();
        if victims.is_empty() {
            return Ok(revoked);
        }
        for chunk in victims.chunks(BATCH) {
            revoked += store.destroy_keys(chunk).await?;
            store.index_remove(&key, chunk).await?;
        }
        // An index answers at most MAX_INDEX_ENTRIES at a time: read again until the
        // revocation has seen all of it.
        if !full {
            return Ok(revoked);
        }
    }
}

/// Before a plan is applied: the index entry its session needs.
pub async fn before_write<S: SessionStore>(store: &S, plan: &WritePlan) -> Result<(), StoreError> {
    if let (OwnerChange::Attach { owner, bound_ms }, Some(key)) =
        (&plan.owner, written_key(&plan.target))
    {
        store.index_add(&owner.key(), &key, *bound_ms).await?;
    }
    Ok(())
}

/// After a plan was applied: drop the index entries it made stale (the old id of a
/// move, a destroyed session, an owner left). Only tidiness: a stale entry costs a no-op
/// delete on revoke and expires with its bound, so a failure here is logged, not fatal.
pub async fn after_write<S: SessionStore>(
    store: &S,
    plan: &WritePlan,
    previous: Option<&Owner>,
    request_id: &str,
) {
    let Some(previous) = previous else {
        return;
    };
    let stale = match &plan.target {
        Target::Move { from, .. } => Some(from.store_key()),
        Target::Destroy(id) | Target::DestroyThenCreate { old: id, .. } => Some(id.store_key()),
        Target::Existing(id) => match &plan.owner {
            OwnerChange::Detach => Some(id.store_key()),
            OwnerChange::Attach { owner, .. } if owner != previous => Some(id.store_key()),
            _ => None,
        },
        Target::Create(_) => None,
    };
    if let Some(stale) = stale
        && let Err(e) = store.index_remove(&previous.key(), &[stale]).await
    {
        tracing::warn!(request_id, error = %e, "could not remove a stale owner index entry (it expires on its own)");
    }
}

/// `session.max_per_owner`: destroy the least recently used sessions of `owner` over
/// `limit`, never `current` (the session being attached). Returns how many.
pub async fn enforce_limit<S: SessionStore>(
    store: &S,
    owner: &Owner,
    limit: u32,
    current: &str,
) -> Result<u64, StoreError> {
    let key = owner.key();
    let members = store.index_members(&key).await?;
    if members.len() <= limit as usize {
        return Ok(0);
    }
    // Entries whose session is not written yet (an attach in flight) or already gone
    // read as None and are left alone: the attach in flight enforces after its write.
    let mut alive = live_infos(store, &members).await?;
    alive.retain(|i| i.owner.as_ref() == Some(owner));
    if alive.len() <= limit as usize {
        return Ok(0);
    }
    alive.sort_by(|a, b| {
        let current_first = (b.handle == current).cmp(&(a.handle == current));
        current_first
            .then(b.last_seen.cmp(&a.last_seen))
            .then(b.created.cmp(&a.created))
    });
    let victims: Vec<String> = alive
        .into_iter()
        .skip(limit as usize)
        .map(|i| i.handle)
        .collect();
    let mut destroyed = 0;
    for chunk in victims.chunks(BATCH) {
        destroyed += store.destroy_keys(chunk).await?;
        store.index_remove(&key, chunk).await?;
    }
    Ok(destroyed)
}

/// The live sessions among these store keys, in batches.
async fn live_infos<S: SessionStore>(
    store: &S,
    keys: &[String],
) -> Result<Vec<SessionInfo>, StoreError> {
    let mut out = Vec::new();
    for chunk in keys.chunks(BATCH) {
        out.extend(store.session_info(chunk).await?.into_iter().flatten());
    }
    Ok(out)
}

/// A listing for the admin API: the owner's live sessions, most recently used first,
/// at most `limit` of them, with the total count.
pub async fn list<S: SessionStore>(
    store: &S,
    owner: &Owner,
    limit: usize,
) -> Result<Listing, StoreError> {
    let members = store.index_members(&owner.key()).await?;
    let truncated_index = members.len() >= MAX_INDEX_ENTRIES;
    let mut alive = live_infos(store, &members).await?;
    alive.retain(|i| i.owner.as_ref() == Some(owner));
    alive.sort_by(|a, b| {
        b.last_seen
            .cmp(&a.last_seen)
            .then(b.created.cmp(&a.created))
            .then(a.handle.cmp(&b.handle))
    });
    let total = alive.len();
    alive.truncate(limit);
    Ok(Listing {
        sessions: alive,
        total,
        more_in_index: truncated_index,
    })
}

/// What [`list`] found.
#[derive(Debug)]
pub struct Listing {
    pub sessions: Vec<SessionInfo>,
    /// Live sessions found (before the cut to `limit`).
    pub total: usize,
    /// The index had more entries than one read returns ([`MAX_INDEX_ENTRIES`]).
    pub more_in_index: bool,
}

/// Revoke one session by handle (admin API); `false` when it is not live.
pub async fn revoke_handle<S: SessionStore>(store: &S, handle: &str) -> Result<bool, StoreError> {
    let keys = [handle.to_owned()];
    let owner = store
        .session_info(&keys)
        .await?
        .pop()
        .flatten()
        .and_then(|i| i.owner);
    let revoked = store.destroy_keys(&keys).await? > 0;
    if let Some(owner) = owner {
        // Tidiness only, as in `after_write`.
        let _ = store.index_remove(&owner.key(), &keys).await;
    }
    Ok(revoked)
}

/// A load asked for a longer index bound ([`crate::store::LoadedSession::index_due`]):
/// write the index first, then the session. A failure leaves the session capped at its
/// old bound (it may end early, never outlive its index) and is retried by the next load.
pub async fn refresh_bound<S: SessionStore>(
    store: &S,
    id: &SessionId,
    owner: &Owner,
    bound_ms: u64,
    request_id: &str,
) {
    let key = id.store_key();
    let result = async {
        store.index_add(&owner.key(), &key, bound_ms).await?;
        store.extend_bound(&key, bound_ms).await
    }
    .await;
    if let Err(e) = result {
        tracing::warn!(request_id, error = %e, "could not extend an owned session's index bound");
    }
}
