//! The embedded default store: in-process, bounded, TTL-evicting (docs/protocol.md §9.7).
//!
//! One mutex over a map and an expiry index. Every operation is a few map lookups with
//! no `.await` while the lock is held, so a plain `std::sync::Mutex` never blocks the
//! runtime for longer than a hash-map update. Lost on restart; one sidecar only.

use std::{
    collections::{BTreeSet, HashMap},
    sync::{Mutex, MutexGuard},
    time::{Duration, Instant},
};

use super::{
    FieldMap, Lifetimes, LoadedSession, SessionStore, StoreError, Target, WriteOutcome, WritePlan,
    apply_ops,
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
}

#[derive(Debug, Clone)]
struct Entry {
    data: FieldMap,
    flash: FieldMap,
    created: Instant,
    max_age: Option<u64>,
    expires_at: Instant,
}

impl Entry {
    fn absolute_deadline(&self, lifetimes: &Lifetimes) -> Instant {
        self.created + lifetimes.absolute_ttl
    }

    /// Idle lifetime from now, never past the absolute deadline (docs/protocol.md §7.2).
    fn refreshed_expiry(&self, now: Instant, lifetimes: &Lifetimes) -> Instant {
        let idle = self
            .max_age
            .map(Duration::from_secs)
            .unwrap_or(lifetimes.ttl);
        (now + idle).min(self.absolute_deadline(lifetimes))
    }
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

    fn new_entry(&self, now: Instant) -> Entry {
        Entry {
            data: FieldMap::new(),
            flash: FieldMap::new(),
            created: now,
            max_age: None,
            expires_at: now,
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
            Target::Create(id) => (self.new_entry(now), None, id.store_key()),
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
            Target::DestroyThenCreate { old, new } => {
                (self.new_entry(now), Some(old.store_key()), new.store_key())
            }
        };
        let (data, flash) = apply_ops(&base.data, &base.flash, &plan.ops, self.lifetimes.max_size)?;
        let mut entry = Entry {
            data,
            flash,
            max_age: plan.max_age.or(base.max_age),
            ..base
        };
        entry.expires_at = entry.refreshed_expiry(now, &self.lifetimes);
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
    async fn load(&self, id: &SessionId) -> Result<Option<LoadedSession>, StoreError> {
        let now = Instant::now();
        let key = id.store_key();
        let mut inner = self.lock();
        let Some(mut entry) = inner.take_live(&key, now) else {
            return Ok(None);
        };
        entry.expires_at = entry.refreshed_expiry(now, &self.lifetimes);
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
        };
        store.apply(&create).await.unwrap();
        let bad = WritePlan {
            target: Target::Existing(id.clone()),
            ops: vec![set("b", "1"), Op::Incr("\"a\"".into(), 1)],
            max_age: Some(99),
            revision: None,
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
