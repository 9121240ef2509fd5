//! The embedded default store: in-process, bounded, TTL-evicting (docs/protocol.md §9.7).
//!
//! One mutex over a map and an expiry index. Every operation is a few map lookups with
//! no `.await` while the lock is held, so a plain `std::sync::Mutex` never blocks the
//! runtime for longer than a hash-map update. Lost on restart; one sidecar only.

use std::{
    collections::{BTreeSet, HashMap},
    sync::{Mutex, MutexGuard},
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use super::{
    ClientInfo, FieldMap, Lifetimes, LoadedSession, Owner, OwnerChange, OwnerKey, SessionInfo,
    SessionStore, StoreError, Target, Touch, WriteOutcome, WritePlan, apply_ops,
    owners::{MAX_INDEX_ENTRIES, index_due, with_margin},
};
use crate::cookie::SessionId;

/// The memory engine.
#[derive(Debug)]
pub struct MemoryStore {
    inner: Mutex<Inner>,
    lifetimes: Lifetimes,
    /// Upper bound on stored sessions: an anonymous flood of session-creating requests
    /// evicts the sessions closest to expiry instead of exhausting memory.
    max_entries: usize,
}

#[derive(Debug, Default)]
struct Inner {
    sessions: HashMap<String, Entry>,
    /// (expiry, store key), ordered by expiry: expired entries and eviction victims are
    /// found at the front without scanning the map.
    by_expiry: BTreeSet<(Instant, String)>,
    /// Owner indexes (docs/protocol.md §11).
    owners: HashMap<OwnerKey, OwnerIndex>,
    /// (latest bound, owner): an index whose latest bound passed is dropped whole.
    owners_by_expiry: BTreeSet<(Instant, OwnerKey)>,
}

#[derive(Debug, Default)]
struct OwnerIndex {
    /// Store key → bound.
    entries: HashMap<String, Instant>,
    /// The latest bound, as filed in `owners_by_expiry`.
    latest: Option<Instant>,
}

#[derive(Debug, Clone)]
struct Entry {
    data: FieldMap,
    flash: FieldMap,
    created: Instant,
    max_age: Option<u64>,
    expires_at: Instant,
    /// The last refresh of the idle lifetime (for `touch_after`).
    touched: Instant,
    /// Unix seconds, for the admin API.
    created_unix: u64,
    last_seen_unix: u64,
    owner: Option<Owner>,
    /// An owned session's bound: its expiry never passes it (see `store::owners`).
    bound: Option<Instant>,
    client: Option<ClientInfo>,
}

impl Entry {
    fn absolute_deadline(&self, lifetimes: &Lifetimes) -> Instant {
        self.created + lifetimes.absolute_ttl
    }

    fn idle(&self, lifetimes: &Lifetimes) -> Duration {
        self.max_age
            .map(Duration::from_secs)
            .unwrap_or(lifetimes.ttl)
    }

    /// Idle lifetime from now, never past the absolute deadline (docs/protocol.md §7.2)
    /// nor an owned session's bound.
    fn refreshed_expiry(&self, now: Instant, lifetimes: &Lifetimes) -> Instant {
        let wanted = (now + self.idle(lifetimes)).min(self.absolute_deadline(lifetimes));
        match self.bound {
            Some(bound) => wanted.min(bound),
            None => wanted,
        }
    }

    /// Refresh the idle lifetime and `last_seen`; for an owned session, whether its
    /// bound is due for an extension (ms from now).
    fn touch(&mut self, now: Instant, lifetimes: &Lifetimes) -> Option<u64> {
        self.expires_at = self.refreshed_expiry(now, lifetimes);
        self.touched = now;
        self.last_seen_unix = unix_now();
        let bound = self.bound.filter(|_| self.owner.is_some())?;
        index_due(
            0,
            millis(self.idle(lifetimes)),
            millis(bound.saturating_duration_since(now)),
            millis(
                self.absolute_deadline(lifetimes)
                    .saturating_duration_since(now),
            ),
        )
    }
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

impl Inner {
    /// Remove and return a live entry (expired ones are dropped and yield `None`).
    fn take_live(&mut self, key: &str, now: Instant) -> Option<Entry> {
        let entry = self.sessions.remove(key)?;
        self.by_expiry.remove(&(entry.expires_at, key.to_owned()));
        (entry.expires_at > now).then_some(entry)
    }

    fn put(&mut self, key: String, entry: Entry, max_entries: usize, now: Instant) {
        self.purge_expired(now);
        while self.sessions.len() >= max_entries.max(1) && !self.sessions.contains_key(&key) {
            let Some((_, victim)) = self.by_expiry.pop_first() else {
                break;
            };
            self.sessions.remove(&victim);
            tracing::debug!("memory store full: evicted the session closest to expiry");
        }
        self.by_expiry.insert((entry.expires_at, key.clone()));
        self.sessions.insert(key, entry);
    }

    fn purge_expired(&mut self, now: Instant) {
        while let Some((at, _)) = self.by_expiry.first() {
            if *at > now {
                break;
            }
            if let Some((_, key)) = self.by_expiry.pop_first() {
                self.sessions.remove(&key);
            }
        }
        while let Some((at, _)) = self.owners_by_expiry.first() {
            if *at > now {
                break;
            }
            if let Some((_, owner)) = self.owners_by_expiry.pop_first() {
                self.owners.remove(&owner);
            }
        }
    }

    /// Drop the owner's entries whose bound passed, and the index when none is left;
    /// keep `owners_by_expiry` at the latest bound.
    fn reindex_owner(&mut self, owner: &OwnerKey, now: Instant) {
        let Some(index) = self.owners.get_mut(owner) else {
            return;
        };
        index.entries.retain(|_, bound| *bound > now);
        let latest = index.entries.values().max().copied();
        if let Some(old) = std::mem::replace(&mut index.latest, latest) {
            self.owners_by_expiry.remove(&(old, owner.clone()));
        }
        match latest {
            Some(at) => {
                self.owners_by_expiry.insert((at, owner.clone()));
            }
            None => {
                self.owners.remove(owner);
            }
        }
    }
}

impl MemoryStore {
    pub fn new(max_entries: usize, lifetimes: Lifetimes) -> Self {
        MemoryStore {
            inner: Mutex::new(Inner::default()),
            lifetimes,
            max_entries,
        }
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        // A panic while holding the lock cannot leave the maps half-updated in a way
        // that matters more than losing the sidecar: keep serving.
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Number of live sessions (for tests and metrics).
    pub fn len(&self) -> usize {
        let mut inner = self.lock();
        inner.purge_expired(Instant::now());
        inner.sessions.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Entries in the owner's index (tests and `/metrics`-free inspection).
    pub fn owner_index_len(&self, owner: &OwnerKey) -> usize {
        let mut inner = self.lock();
        inner.purge_expired(Instant::now());
        inner.owners.get(owner).map_or(0, |i| i.entries.len())
    }

    /// Owner indexes held, expired ones purged first.
    pub fn owner_indexes(&self) -> usize {
        let mut inner = self.lock();
        inner.purge_expired(Instant::now());
        inner.owners.len()
    }

    fn new_entry(&self, now: Instant, client: Option<&ClientInfo>) -> Entry {
        let unix = unix_now();
        Entry {
            data: FieldMap::new(),
            flash: FieldMap::new(),
            created: now,
            max_age: None,
            expires_at: now,
            touched: now,
            created_unix: unix,
            last_seen_unix: unix,
            owner: None,
            bound: None,
            client: client.cloned(),
        }
    }

    fn apply_locked(&self, plan: &WritePlan, now: Instant) -> Result<WriteOutcome, StoreError> {
        let mut inner = self.lock();
        // Resolve the entry the ops apply to and the key it will live under, without
        // changing anything yet: a rejected change set must leave the store untouched.
        let (base, old_key, new_key) = match &plan.target {
            Target::Existing(id) => {
                let key = id.store_key();
                match inner.sessions.get(&key) {
                    Some(e) if e.expires_at > now => (e.clone(), None, key),
                    _ => return Ok(WriteOutcome::Gone),
                }
            }
            Target::Create(id) => (
                self.new_entry(now, plan.client.as_ref()),
                None,
                id.store_key(),
            ),
            Target::Move { from, to } => {
                let key = from.store_key();
                match inner.sessions.get(&key) {
                    Some(e) if e.expires_at > now => (e.clone(), Some(key), to.store_key()),
                    _ => return Ok(WriteOutcome::Gone),
                }
            }
            Target::Destroy(id) => {
                let key = id.store_key();
                inner.take_live(&key, now);
                return Ok(WriteOutcome::Applied);
            }
            Target::DestroyThenCreate { old, new } => (
                self.new_entry(now, plan.client.as_ref()),
                Some(old.store_key()),
                new.store_key(),
            ),
        };
        let (data, flash) = apply_ops(&base.data, &base.flash, &plan.ops, self.lifetimes.max_size)?;
        let mut entry = Entry {
            data,
            flash,
            max_age: plan.max_age.or(base.max_age),
            ..base
        };
        match &plan.owner {
            OwnerChange::Keep => {}
            OwnerChange::Attach { owner, bound_ms } => {
                entry.owner = Some(owner.clone());
                entry.bound = Some(now + Duration::from_millis(*bound_ms));
            }
            OwnerChange::Detach => {
                entry.owner = None;
                entry.bound = None;
            }
        }
        // A write refreshes like a load; a due bound is extended by the next load.
        entry.touch(now, &self.lifetimes);
        if let Some(old) = old_key {
            inner.take_live(&old, now);
        }
        if let Some(prev) = inner.sessions.remove(&new_key) {
            inner.by_expiry.remove(&(prev.expires_at, new_key.clone()));
        }
        if entry.expires_at > now {
            inner.put(new_key, entry, self.max_entries, now);
        }
        Ok(WriteOutcome::Applied)
    }
}

impl SessionStore for MemoryStore {
    async fn load_touch(
        &self,
        id: &SessionId,
        touch: Touch,
    ) -> Result<Option<LoadedSession>, StoreError> {
        let now = Instant::now();
        let key = id.store_key();
        let mut inner = self.lock();
        let Some(mut entry) = inner.take_live(&key, now) else {
            return Ok(None);
        };
        let due = touch == Touch::Refresh
            && now.saturating_duration_since(entry.touched) >= self.lifetimes.touch_after;
        let index_due = if due {
            entry.touch(now, &self.lifetimes)
        } else {
            None
        };
        let remaining = entry
            .absolute_deadline(&self.lifetimes)
            .saturating_duration_since(now)
            .as_secs();
        let loaded = LoadedSession {
            data: entry.data.clone(),
            // Delivered now, so gone from the store: exactly once, even when two
            // requests of one session load concurrently (they serialise on the lock).
            flash: std::mem::take(&mut entry.flash),
            max_age: entry.max_age,
            remaining,
            revision: None,
            owner: entry.owner.clone(),
            index_due,
        };
        if entry.expires_at > now {
            inner.by_expiry.insert((entry.expires_at, key.clone()));
            inner.sessions.insert(key, entry);
        }
        Ok(Some(loaded))
    }

    async fn apply(&self, plan: &WritePlan) -> Result<WriteOutcome, StoreError> {
        self.apply_locked(plan, Instant::now())
    }

    async fn ping(&self) -> Result<(), StoreError> {
        Ok(())
    }

    async fn index_add(
        &self,
        owner: &OwnerKey,
        member: &str,
        bound_ms: u64,
    ) -> Result<(), StoreError> {
        let now = Instant::now();
        let bound = now + Duration::from_millis(with_margin(bound_ms));
        let mut inner = self.lock();
        let index = inner.owners.entry(owner.clone()).or_default();
        let at = index.entries.entry(member.to_owned()).or_insert(bound);
        *at = (*at).max(bound);
        inner.reindex_owner(owner, now);
        Ok(())
    }

    async fn index_members(&self, owner: &OwnerKey) -> Result<Vec<String>, StoreError> {
        let now = Instant::now();
        let mut inner = self.lock();
        inner.reindex_owner(owner, now);
        Ok(inner.owners.get(owner).map_or_else(Vec::new, |index| {
            index
                .entries
                .keys()
                .take(MAX_INDEX_ENTRIES)
                .cloned()
                .collect()
        }))
    }

    async fn index_remove(&self, owner: &OwnerKey, members: &[String]) -> Result<(), StoreError> {
        let mut inner = self.lock();
        if let Some(index) = inner.owners.get_mut(owner) {
            for m in members {
                index.entries.remove(m);
            }
        }
        inner.reindex_owner(owner, Instant::now());
        Ok(())
    }

    async fn destroy_keys(&self, keys: &[String]) -> Result<u64, StoreError> {
        let now = Instant::now();
        let mut inner = self.lock();
        Ok(keys
            .iter()
            .filter(|key| inner.take_live(key, now).is_some())
            .count() as u64)
    }

    async fn session_info(&self, keys: &[String]) -> Result<Vec<Option<SessionInfo>>, StoreError> {
        let now = Instant::now();
        let unix = unix_now();
        let inner = self.lock();
        Ok(keys
            .iter()
            .map(|key| {
                let e = inner.sessions.get(key).filter(|e| e.expires_at > now)?;
                Some(SessionInfo {
                    handle: key.clone(),
                    owner: e.owner.clone(),
                    created: e.created_unix,
                    last_seen: e.last_seen_unix,
                    expires: unix + e.expires_at.saturating_duration_since(now).as_secs(),
                    client: e.client.clone(),
                })
            })
            .collect())
    }

    async fn extend_bound(&self, key: &str, bound_ms: u64) -> Result<bool, StoreError> {
        let now = Instant::now();
        let mut inner = self.lock();
        let Some(e) = inner
            .sessions
            .get_mut(key)
            .filter(|e| e.expires_at > now && e.owner.is_some())
        else {
            return Ok(false);
        };
        let wanted = now + Duration::from_millis(bound_ms);
        e.bound = Some(e.bound.map_or(wanted, |b| b.max(wanted)));
        Ok(true)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::Op;

    fn lifetimes() -> Lifetimes {
        Lifetimes {
            ttl: Duration::from_secs(60),
            absolute_ttl: Duration::from_secs(120),
            max_size: 8192,
            touch_after: Duration::ZERO,
        }
    }

    fn set(k: &str, v: &str) -> Op {
        Op::Set(format!("\"{k}\""), v.to_owned())
    }

    #[tokio::test]
    async fn bounded_by_max_entries() {
        let store = MemoryStore::new(3, lifetimes());
        for _ in 0..10 {
            let plan = WritePlan {
                target: Target::Create(SessionId::generate().unwrap()),
                ops: vec![set("a", "1")],
                max_age: None,
                revision: None,
                owner: Default::default(),
                client: None,
            };
            assert_eq!(store.apply(&plan).await.unwrap(), WriteOutcome::Applied);
        }
        assert_eq!(store.len(), 3);
    }

    #[tokio::test]
    async fn rejected_write_changes_nothing() {
        let store = MemoryStore::new(10, lifetimes());
        let id = SessionId::generate().unwrap();
        let create = WritePlan {
            target: Target::Create(id.clone()),
            ops: vec![set("a", "\"x\"")],
            max_age: None,
            revision: None,
            owner: Default::default(),
            client: None,
        };
        store.apply(&create).await.unwrap();
        let bad = WritePlan {
            target: Target::Existing(id.clone()),
            ops: vec![set("b", "1"), Op::Incr("\"a\"".into(), 1)],
            max_age: Some(99),
            revision: None,
            owner: Default::default(),
            client: None,
        };
        assert!(matches!(
            store.apply(&bad).await,
            Err(StoreError::Rejected(_))
        ));
        let got = store.load(&id).await.unwrap().unwrap();
        assert_eq!(got.data.len(), 1);
        assert_eq!(got.max_age, None);
    }
}
