//! The configured engine behind one concrete type (enum dispatch: no boxing, no
//! `dyn` on the request path).

use super::{
    LoadedSession, OwnerKey, SessionInfo, SessionStore, StoreError, Touch, WriteOutcome, WritePlan,
    memcached::MemcachedStore, memory::MemoryStore, redis::RedisStore,
};
use crate::cookie::SessionId;

// Built once per process and shared behind an `Arc`: the size of the largest variant
// costs nothing on the request path.
#[allow(clippy::large_enum_variant)]
#[derive(Debug)]
pub enum AnyStore {
    Memory(MemoryStore),
    Redis(RedisStore),
    Memcached(MemcachedStore),
}

/// The same call on whichever engine this is.
macro_rules! dispatch {
    ($self:ident, $s:ident => $call:expr) => {
        match $self {
            AnyStore::Memory($s) => $call,
            AnyStore::Redis($s) => $call,
            AnyStore::Memcached($s) => $call,
        }
    };
}

impl SessionStore for AnyStore {
    async fn load_touch(
        &self,
        id: &SessionId,
        touch: Touch,
    ) -> Result<Option<LoadedSession>, StoreError> {
        dispatch!(self, s => s.load_touch(id, touch).await)
    }

    async fn apply(&self, plan: &WritePlan) -> Result<WriteOutcome, StoreError> {
        dispatch!(self, s => s.apply(plan).await)
    }

    async fn ping(&self) -> Result<(), StoreError> {
        dispatch!(self, s => s.ping().await)
    }

    async fn index_add(
        &self,
        owner: &OwnerKey,
        member: &str,
        bound_ms: u64,
    ) -> Result<(), StoreError> {
        dispatch!(self, s => s.index_add(owner, member, bound_ms).await)
    }

    async fn index_members(&self, owner: &OwnerKey) -> Result<Vec<String>, StoreError> {
        dispatch!(self, s => s.index_members(owner).await)
    }

    async fn index_remove(&self, owner: &OwnerKey, members: &[String]) -> Result<(), StoreError> {
        dispatch!(self, s => s.index_remove(owner, members).await)
    }

    async fn destroy_keys(&self, keys: &[String]) -> Result<u64, StoreError> {
        dispatch!(self, s => s.destroy_keys(keys).await)
    }

    async fn session_info(&self, keys: &[String]) -> Result<Vec<Option<SessionInfo>>, StoreError> {
        dispatch!(self, s => s.session_info(keys).await)
    }

    async fn extend_bound(&self, key: &str, bound_ms: u64) -> Result<bool, StoreError> {
        dispatch!(self, s => s.extend_bound(key, bound_ms).await)
    }
}
