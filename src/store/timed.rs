//! The one wrapper every engine runs behind in production: each call is bounded by
//! `store.timeout`, and the store metrics are recorded here, once for all engines.
//!
//! The engines themselves add no timer of their own: a call that takes longer than
//! `store.timeout` is cancelled here and answers [`StoreError::Timeout`] (503). Engines
//! may still have transport-level timeouts that govern something else (the Redis
//! engine's connection manager uses `store.timeout` for its reconnect attempts).

use std::{
    sync::Arc,
    time::{Duration, Instant},
};

use super::{
    LoadedSession, OwnerKey, SessionInfo, SessionStore, StoreError, Touch, WriteOutcome, WritePlan,
};
use crate::{
    cookie::SessionId,
    metrics::{Metrics, RejectReason, StoreOp},
};

/// An engine with every call bounded by `store.timeout` and measured.
///
/// Loads and writes record their latency (by op) and failures (by kind); an applied
/// write counts its session events (created, regenerated, destroyed), and a change set
/// the store refused counts as a rejected write ([`RejectReason::StoreRejected`]).
/// Pings (`/readyz`) and [`TimedStore::bounded`] calls are bounded but not counted: the
/// metrics describe the request path.
#[derive(Debug)]
pub struct TimedStore<S> {
    engine: S,
    timeout: Duration,
    metrics: Arc<Metrics>,
}

impl<S> TimedStore<S> {
    pub fn new(engine: S, timeout: Duration, metrics: Arc<Metrics>) -> Self {
        TimedStore {
            engine,
            timeout,
            metrics,
        }
    }

    /// The wrapped engine, for its own (unbounded) operations: run them through
    /// [`TimedStore::bounded`].
    pub fn engine(&self) -> &S {
        &self.engine
    }

    /// Bound any store call by `store.timeout`; past it the call is dropped and the
    /// answer is [`StoreError::Timeout`]. Not counted in the metrics.
    pub async fn bounded<T>(
        &self,
        call: impl Future<Output = Result<T, StoreError>>,
    ) -> Result<T, StoreError> {
        tokio::time::timeout(self.timeout, call)
            .await
            .unwrap_or(Err(StoreError::Timeout))
    }
}

impl<S: SessionStore> SessionStore for TimedStore<S> {
    async fn load_touch(
        &self,
        id: &SessionId,
        touch: Touch,
    ) -> Result<Option<LoadedSession>, StoreError> {
        let started = Instant::now();
        let result = self.bounded(self.engine.load_touch(id, touch)).await;
        self.metrics
            .store_latency(StoreOp::Load, started.elapsed().as_secs_f64());
        if let Err(e) = &result {
            self.metrics.store_error(e);
        }
        result
    }

    async fn apply(&self, plan: &WritePlan) -> Result<WriteOutcome, StoreError> {
        let started = Instant::now();
        let result = self.bounded(self.engine.apply(plan)).await;
        self.metrics
            .store_latency(StoreOp::Apply, started.elapsed().as_secs_f64());
        match &result {
            Ok(WriteOutcome::Applied) => self.metrics.applied(&plan.target),
            Ok(WriteOutcome::Gone) => {}
            Err(e) => {
                self.metrics.store_error(e);
                if matches!(e, StoreError::Rejected(_)) {
                    self.metrics.write_rejected(RejectReason::StoreRejected);
                }
            }
        }
        result
    }

    async fn ping(&self) -> Result<(), StoreError> {
        self.bounded(self.engine.ping()).await
    }

    // The owner primitives are bounded like every call and their failures counted;
    // their latency is not (they are not the per-request path).

    async fn index_add(
        &self,
        owner: &OwnerKey,
        member: &str,
        bound_ms: u64,
    ) -> Result<(), StoreError> {
        self.counted(self.engine.index_add(owner, member, bound_ms))
            .await
    }

    async fn index_members(&self, owner: &OwnerKey) -> Result<Vec<String>, StoreError> {
        self.counted(self.engine.index_members(owner)).await
    }

    async fn index_remove(&self, owner: &OwnerKey, members: &[String]) -> Result<(), StoreError> {
        self.counted(self.engine.index_remove(owner, members)).await
    }

    async fn destroy_keys(&self, keys: &[String]) -> Result<u64, StoreError> {
        self.counted(self.engine.destroy_keys(keys)).await
    }

    async fn session_info(&self, keys: &[String]) -> Result<Vec<Option<SessionInfo>>, StoreError> {
        self.counted(self.engine.session_info(keys)).await
    }

    async fn extend_bound(&self, key: &str, bound_ms: u64) -> Result<bool, StoreError> {
        self.counted(self.engine.extend_bound(key, bound_ms)).await
    }
}

impl<S: SessionStore> TimedStore<S> {
    async fn counted<T>(
        &self,
        call: impl Future<Output = Result<T, StoreError>>,
    ) -> Result<T, StoreError> {
        let result = self.bounded(call).await;
        if let Err(e) = &result {
            self.metrics.store_error(e);
        }
        result
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::{Lifetimes, Target, memory::MemoryStore};

    /// An engine that never answers.
    struct Stuck;

    impl SessionStore for Stuck {
        async fn load_touch(
            &self,
            _: &SessionId,
            _: Touch,
        ) -> Result<Option<LoadedSession>, StoreError> {
            std::future::pending().await
        }

        async fn apply(&self, _: &WritePlan) -> Result<WriteOutcome, StoreError> {
            std::future::pending().await
        }

        async fn ping(&self) -> Result<(), StoreError> {
            std::future::pending().await
        }

        async fn index_add(&self, _: &OwnerKey, _: &str, _: u64) -> Result<(), StoreError> {
            std::future::pending().await
        }

        async fn index_members(&self, _: &OwnerKey) -> Result<Vec<String>, StoreError> {
            std::future::pending().await
        }

        async fn index_remove(&self, _: &OwnerKey, _: &[String]) -> Result<(), StoreError> {
            std::future::pending().await
        }

        async fn destroy_keys(&self, _: &[String]) -> Result<u64, StoreError> {
            std::future::pending().await
        }

        async fn session_info(&self, _: &[String]) -> Result<Vec<Option<SessionInfo>>, StoreError> {
            std::future::pending().await
        }

        async fn extend_bound(&self, _: &str, _: u64) -> Result<bool, StoreError> {
            std::future::pending().await
        }
    }

    fn id() -> SessionId {
        SessionId::generate().expect("random id")
    }

    fn count(metrics: &Metrics, needle: &str) -> f64 {
        metrics
            .encode()
            .lines()
            .find(|l| l.starts_with(needle))
            .and_then(|l| l.rsplit(' ').next())
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("no {needle} in the metrics"))
    }

    #[tokio::test(start_paused = true)]
    async fn every_call_is_bounded_by_the_timeout() {
        let metrics = Arc::new(Metrics::new());
        let store = TimedStore::new(Stuck, Duration::from_millis(300), metrics.clone());
        let started = tokio::time::Instant::now();
        assert!(matches!(store.load(&id()).await, Err(StoreError::Timeout)));
        let plan = WritePlan {
            target: Target::Destroy(id()),
            ops: vec![],
            max_age: None,
            revision: None,
            owner: Default::default(),
            client: None,
        };
        assert!(matches!(store.apply(&plan).await, Err(StoreError::Timeout)));
        assert!(matches!(store.ping().await, Err(StoreError::Timeout)));
        let bounded = store.bounded(std::future::pending::<Result<(), _>>());
        assert!(matches!(bounded.await, Err(StoreError::Timeout)));
        assert_eq!(started.elapsed(), Duration::from_millis(1200));
        // Load and apply are counted; ping and `bounded` are not.
        assert_eq!(
            count(
                &metrics,
                "session_sidecar_store_errors_total{kind=\"timeout\"}"
            ),
            2.0
        );
    }

    #[tokio::test]
    async fn applied_and_rejected_writes_are_counted() {
        let metrics = Arc::new(Metrics::new());
        let lifetimes = Lifetimes {
            ttl: Duration::from_secs(60),
            absolute_ttl: Duration::from_secs(120),
            max_size: 4,
            touch_after: Duration::ZERO,
        };
        let store = TimedStore::new(
            MemoryStore::new(10, lifetimes),
            Duration::from_secs(1),
            metrics.clone(),
        );
        let plan = |ops| WritePlan {
            target: Target::Create(id()),
            ops,
            max_age: None,
            revision: None,
            owner: Default::default(),
            client: None,
        };
        assert_eq!(
            store.apply(&plan(vec![])).await.unwrap(),
            WriteOutcome::Applied
        );
        let big = crate::protocol::Op::Set("\"a\"".into(), "1".into());
        assert!(matches!(
            store.apply(&plan(vec![big])).await,
            Err(StoreError::Rejected(_))
        ));
        assert_eq!(
            count(&metrics, "session_sidecar_sessions_created_total"),
            1.0
        );
        assert_eq!(
            count(
                &metrics,
                "session_sidecar_writes_rejected_total{reason=\"store_rejected\"}"
            ),
            1.0
        );
        assert_eq!(
            count(
                &metrics,
                "session_sidecar_store_errors_total{kind=\"rejected\"}"
            ),
            1.0
        );
        assert_eq!(
            count(
                &metrics,
                "session_sidecar_store_duration_seconds_count{op=\"apply\"}"
            ),
            2.0
        );
    }
}
