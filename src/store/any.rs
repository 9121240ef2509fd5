//! The configured engine behind one concrete type (enum dispatch: no boxing, no
//! `dyn` on the request path).

use super::{
    LoadedSession, SessionStore, StoreError, WriteOutcome, WritePlan, memcached::MemcachedStore,
    memory::MemoryStore, redis::RedisStore,
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

impl SessionStore for AnyStore {
    async fn load(&self, id: &SessionId) -> Result<Option<LoadedSession>, StoreError> {
        match self {
            AnyStore::Memory(s) => s.load(id).await,
            AnyStore::Redis(s) => s.load(id).await,
            AnyStore::Memcached(s) => s.load(id).await,
        }
    }

    async fn apply(&self, plan: &WritePlan) -> Result<WriteOutcome, StoreError> {
        match self {
            AnyStore::Memory(s) => s.apply(plan).await,
            AnyStore::Redis(s) => s.apply(plan).await,
            AnyStore::Memcached(s) => s.apply(plan).await,
        }
    }

    async fn ping(&self) -> Result<(), StoreError> {
        match self {
            AnyStore::Memory(s) => s.ping().await,
            AnyStore::Redis(s) => s.ping().await,
            AnyStore::Memcached(s) => s.ping().await,
        }
    }
}
