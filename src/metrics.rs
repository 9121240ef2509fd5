//! Prometheus metrics (docs/decisions.md#observability, served on the admin listener's
//! `/metrics`).
//!
//! One explicit [`Registry`] per sidecar (no globals, so tests can run several sidecars
//! in one process). Every labelled series is created up front from a closed set of
//! label values and kept as a handle, so recording is an atomic add (histograms: a short
//! uncontended lock) with no lookup and no allocation on the request path, and label
//! cardinality is fixed: no path, id, peer or user data is ever a label.
//!
//! | metric | type | labels |
//! |---|---|---|
//! | `session_sidecar_requests_total` | counter | `class` = `1xx`…`5xx` |
//! | `session_sidecar_upstream_response_duration_seconds` | histogram | – |
//! | `session_sidecar_upstream_errors_total` | counter | `kind` = `timeout`, `unreachable` |
//! | `session_sidecar_store_duration_seconds` | histogram | `op` = `load`, `apply` |
//! | `session_sidecar_store_errors_total` | counter | `kind` = `unavailable`, `timeout`, `rejected`, `corrupt` |
//! | `session_sidecar_sessions_created_total` | counter | – |
//! | `session_sidecar_sessions_regenerated_total` | counter | – |
//! | `session_sidecar_sessions_destroyed_total` | counter | – |
//! | `session_sidecar_writes_rejected_total` | counter | `reason` = `malformed`, `store_rejected`, `server_error`, `store_unavailable` |
//! | `session_sidecar_active_connections` | gauge | – |
//! | `session_sidecar_connections_refused_total` | counter | `cap` = `max_connections`, `max_connections_per_ip` |
//! | `session_sidecar_open_tunnels` | gauge | – |
//! | `session_sidecar_runtime_alive_tasks` | gauge | – |
//!
//! The exposition is the Prometheus text format 0.0.4 ([`CONTENT_TYPE`]), which every
//! Prometheus-compatible scraper reads.

use http::StatusCode;
use prometheus_client::{
    encoding::{EncodeMetric, MetricEncoder, prometheus_text},
    metrics::{MetricType, TypedMetric, counter::Counter, gauge::Gauge, histogram::Histogram},
    registry::{Registry, Unit},
};

use crate::store::{StoreError, Target};

/// The `Content-Type` of [`Metrics::encode`]'s output.
pub const CONTENT_TYPE: &str = prometheus_text::CONTENT_TYPE;

/// Every metric name starts with this (plus `_`).
pub const PREFIX: &str = "session_sidecar";

/// Upstream time to response headers: 1 ms … 60 s (`timeouts.upstream_response`).
const UPSTREAM_BUCKETS: [f64; 15] = [
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
];

/// Store round trips: 100 µs … 2.5 s (`store.timeout` defaults to 500 ms).
const STORE_BUCKETS: [f64; 14] = [
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
];

/// One label, both parts static: the label sets are closed enums, never request data.
type Label = [(&'static str, &'static str); 1];

/// Which store call a latency sample belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StoreOp {
    Load = 0,
    Apply = 1,
}

impl StoreOp {
    const ALL: [StoreOp; 2] = [StoreOp::Load, StoreOp::Apply];

    fn label(self) -> &'static str {
        match self {
            StoreOp::Load => "load",
            StoreOp::Apply => "apply",
        }
    }
}

/// The kind of a store failure (one per [`StoreError`] variant).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StoreErrorKind {
    Unavailable = 0,
    Timeout = 1,
    Rejected = 2,
    Corrupt = 3,
}

impl StoreErrorKind {
    const ALL: [StoreErrorKind; 4] = [
        StoreErrorKind::Unavailable,
        StoreErrorKind::Timeout,
        StoreErrorKind::Rejected,
        StoreErrorKind::Corrupt,
    ];

    pub fn of(e: &StoreError) -> Self {
        match e {
            StoreError::Unavailable(_) => StoreErrorKind::Unavailable,
            StoreError::Timeout => StoreErrorKind::Timeout,
            StoreError::Rejected(_) => StoreErrorKind::Rejected,
            StoreError::Corrupt(_) => StoreErrorKind::Corrupt,
        }
    }

    fn label(self) -> &'static str {
        match self {
            StoreErrorKind::Unavailable => "unavailable",
            StoreErrorKind::Timeout => "timeout",
            StoreErrorKind::Rejected => "rejected",
            StoreErrorKind::Corrupt => "corrupt",
        }
    }
}

/// Why a response's session writes were not applied.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RejectReason {
    /// A malformed write instruction (bad JSON, duplicate keys, …): 502.
    Malformed = 0,
    /// The store refused the change set (`Incr` on a non-integer, over `max_size`): 502.
    StoreRejected = 1,
    /// The upstream answered 5xx: its writes are dropped (a Destroy still applies).
    ServerError = 2,
    /// `store.on_error: anonymous` let the request through without a store, and the
    /// response asked for a write: 503.
    StoreUnavailable = 3,
}

impl RejectReason {
    const ALL: [RejectReason; 4] = [
        RejectReason::Malformed,
        RejectReason::StoreRejected,
        RejectReason::ServerError,
        RejectReason::StoreUnavailable,
    ];

    fn label(self) -> &'static str {
        match self {
            RejectReason::Malformed => "malformed",
            RejectReason::StoreRejected => "store_rejected",
            RejectReason::ServerError => "server_error",
            RejectReason::StoreUnavailable => "store_unavailable",
        }
    }
}

/// Why sessions were revoked (docs/protocol.md §11).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RevokeCause {
    /// `X-Session-Revoke-Owner`.
    Owner = 0,
    /// `X-Session-Revoke-Others`.
    Others = 1,
    /// `session.max_per_owner`: least recently used sessions over the limit.
    Limit = 2,
    /// The admin API (`DELETE /sessions...`).
    Admin = 3,
}

impl RevokeCause {
    const ALL: [RevokeCause; 4] = [
        RevokeCause::Owner,
        RevokeCause::Others,
        RevokeCause::Limit,
        RevokeCause::Admin,
    ];

    fn label(self) -> &'static str {
        match self {
            RevokeCause::Owner => "owner",
            RevokeCause::Others => "others",
            RevokeCause::Limit => "limit",
            RevokeCause::Admin => "admin",
        }
    }
}

/// How an admin API call ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AdminResult {
    Ok = 0,
    /// Missing or wrong bearer token (401).
    Unauthorized = 1,
    /// Malformed query or handle (400), unknown path or method (404/405).
    BadRequest = 2,
    /// No such session (404).
    NotFound = 3,
    /// The store failed (503).
    Unavailable = 4,
}

impl AdminResult {
    const ALL: [AdminResult; 5] = [
        AdminResult::Ok,
        AdminResult::Unauthorized,
        AdminResult::BadRequest,
        AdminResult::NotFound,
        AdminResult::Unavailable,
    ];

    fn label(self) -> &'static str {
        match self {
            AdminResult::Ok => "ok",
            AdminResult::Unauthorized => "unauthorized",
            AdminResult::BadRequest => "bad_request",
            AdminResult::NotFound => "not_found",
            AdminResult::Unavailable => "unavailable",
        }
    }
}

/// Why no upstream response headers arrived.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UpstreamErrorKind {
    Timeout = 0,
    Unreachable = 1,
}

impl UpstreamErrorKind {
    const ALL: [UpstreamErrorKind; 2] =
        [UpstreamErrorKind::Timeout, UpstreamErrorKind::Unreachable];

    fn label(self) -> &'static str {
        match self {
            UpstreamErrorKind::Timeout => "timeout",
            UpstreamErrorKind::Unreachable => "unreachable",
        }
    }
}

const CLASSES: [&str; 5] = ["1xx", "2xx", "3xx", "4xx", "5xx"];

/// Index into [`CLASSES`] (statuses are 100..=999 by construction; 6xx–9xx, which no
/// sane peer sends, count as 5xx rather than disappear).
fn class_index(status: StatusCode) -> usize {
    (usize::from(status.as_u16() / 100)).clamp(1, 5) - 1
}

/// Session lifecycle events of one applied write, derived from its target.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SessionEvents {
    pub created: bool,
    pub regenerated: bool,
    pub destroyed: bool,
}

impl SessionEvents {
    /// What applying a plan with this target did (only call it when the store answered
    /// `Applied`: a `Gone` write did nothing).
    pub fn of(target: &Target) -> Self {
        let none = SessionEvents::default();
        match target {
            Target::Existing(_) => none,
            Target::Create(_) => SessionEvents {
                created: true,
                ..none
            },
            Target::Move { .. } => SessionEvents {
                regenerated: true,
                ..none
            },
            Target::Destroy(_) => SessionEvents {
                destroyed: true,
                ..none
            },
            Target::DestroyThenCreate { .. } => SessionEvents {
                created: true,
                destroyed: true,
                ..none
            },
        }
    }
}

/// The sidecar's metrics and their registry.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    requests: [Counter; 5],
    upstream_latency: Histogram,
    upstream_errors: [Counter; 2],
    store_latency: [Histogram; 2],
    store_errors: [Counter; 4],
    sessions_created: Counter,
    sessions_regenerated: Counter,
    sessions_destroyed: Counter,
    writes_rejected: [Counter; 4],
    connections: Gauge,
    connections_refused: [Counter; 2],
    tunnels: Gauge,
    runtime_tasks: Gauge,
    master_changes: Counter,
    /// `store.cache`: hits, misses, invalidations, whole drops; and its entries.
    cache_counters: [Counter; 4],
    cache_entries: Gauge,
    sessions_revoked: [Counter; 4],
    admin_calls: [Counter; 5],
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

/// A metric family with one label over a closed set of values, every series created up
/// front (so each shows, as 0, from the first scrape) and encoded in declaration order
/// (prometheus-client's `Family` is a hash map: its order changes from run to run).
#[derive(Debug)]
struct Labelled<M, const N: usize> {
    series: [(Label, M); N],
}

impl<M: EncodeMetric + TypedMetric, const N: usize> EncodeMetric for Labelled<M, N> {
    fn encode(&self, mut encoder: MetricEncoder) -> Result<(), std::fmt::Error> {
        for (labels, metric) in &self.series {
            metric.encode(encoder.encode_family(labels)?)?;
        }
        Ok(())
    }

    fn metric_type(&self) -> MetricType {
        M::TYPE
    }
}

/// The family to register and the handles the request path records through (clones
/// share their value).
fn labelled<M: Clone, const N: usize>(
    key: &'static str,
    values: [&'static str; N],
    make: impl Fn() -> M,
) -> (Labelled<M, N>, [M; N]) {
    let series = values.map(|v| ([(key, v)], make()));
    let handles = series.clone().map(|(_, m)| m);
    (Labelled { series }, handles)
}

impl Metrics {
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix(PREFIX);

        let (family, requests) = labelled("class", CLASSES, Counter::default);
        registry.register(
            "requests",
            "Requests answered on the proxy listener, by status class",
            family,
        );

        let upstream_latency = Histogram::new(UPSTREAM_BUCKETS);
        registry.register_with_unit(
            "upstream_response_duration",
            "Time from sending a request upstream to its response headers",
            Unit::Seconds,
            upstream_latency.clone(),
        );

        let (family, upstream_errors) = labelled(
            "kind",
            UpstreamErrorKind::ALL.map(|k| k.label()),
            Counter::default,
        );
        registry.register(
            "upstream_errors",
            "Upstream exchanges without response headers (504 timeout, 502 unreachable)",
            family,
        );

        let (family, store_latency) = labelled("op", StoreOp::ALL.map(|o| o.label()), || {
            Histogram::new(STORE_BUCKETS)
        });
        registry.register_with_unit(
            "store_duration",
            "Session store calls on the request path (failed ones included), by operation",
            Unit::Seconds,
            family,
        );

        let (family, store_errors) = labelled(
            "kind",
            StoreErrorKind::ALL.map(|k| k.label()),
            Counter::default,
        );
        registry.register(
            "store_errors",
            "Failed session store calls on the request path, by kind",
            family,
        );

        let sessions_created = Counter::default();
        registry.register(
            "sessions_created",
            "Sessions created (first write, or a write after Destroy)",
            sessions_created.clone(),
        );
        let sessions_regenerated = Counter::default();
        registry.register(
            "sessions_regenerated",
            "Sessions moved to a new id (X-Session-Regenerate)",
            sessions_regenerated.clone(),
        );
        let sessions_destroyed = Counter::default();
        registry.register(
            "sessions_destroyed",
            "Sessions destroyed (X-Session-Destroy)",
            sessions_destroyed.clone(),
        );

        let (family, writes_rejected) = labelled(
            "reason",
            RejectReason::ALL.map(|r| r.label()),
            Counter::default,
        );
        registry.register(
            "writes_rejected",
            "Responses whose session writes were not applied, by reason",
            family,
        );

        let connections = Gauge::default();
        registry.register(
            "active_connections",
            "Open client connections on the proxy listener",
            connections.clone(),
        );
        let (family, connections_refused) = labelled(
            "cap",
            ["max_connections", "max_connections_per_ip"],
            Counter::default,
        );
        registry.register(
            "connections_refused",
            "Client connections closed at accept because a connection cap was reached",
            family,
        );
        let tunnels = Gauge::default();
        registry.register(
            "open_tunnels",
            "Open upgraded tunnels (WebSocket and other Upgrade protocols)",
            tunnels.clone(),
        );
        let runtime_tasks = Gauge::default();
        registry.register(
            "runtime_alive_tasks",
            "Tasks alive on the sidecar's async runtime, read at scrape time (a number that \
             keeps growing under steady traffic is a leak)",
            runtime_tasks.clone(),
        );

        let master_changes = Counter::default();
        registry.register(
            "store_master_changes",
            "Failovers of the Redis store this sidecar has followed: the Sentinel master \
             address changed, or a cluster node became master of slots (seen by /readyz)",
            master_changes.clone(),
        );

        let cache_counters: [Counter; 4] = Default::default();
        for (counter, (name, help)) in cache_counters.iter().zip([
            (
                "store_cache_hits",
                "Loads answered from the Redis client-side cache (store.cache), with no store \
                 round trip",
            ),
            (
                "store_cache_misses",
                "Loads the client-side cache could not answer (not cached, expired, a refresh \
                 due, or tracking not on) and sent to Redis",
            ),
            (
                "store_cache_invalidations",
                "Sessions dropped from the client-side cache because Redis reported a change \
                 of their data or flash key",
            ),
            (
                "store_cache_drops",
                "Times the whole client-side cache was dropped: the tracking connection was \
                 lost or replaced, or Redis was flushed",
            ),
        ]) {
            registry.register(name, help, counter.clone());
        }
        let cache_entries = Gauge::default();
        registry.register(
            "store_cache_entries",
            "Sessions in the client-side cache now (at most store.cache.max_entries)",
            cache_entries.clone(),
        );

        let (family, sessions_revoked) = labelled(
            "cause",
            RevokeCause::ALL.map(|c| c.label()),
            Counter::default,
        );
        registry.register(
            "sessions_revoked",
            "Sessions destroyed through their owner, by cause (docs/protocol.md §11)",
            family,
        );
        let (family, admin_calls) = labelled(
            "result",
            AdminResult::ALL.map(|r| r.label()),
            Counter::default,
        );
        registry.register(
            "admin_api_calls",
            "Session admin API calls on the admin listener, by result",
            family,
        );

        Metrics {
            registry,
            requests,
            upstream_latency,
            upstream_errors,
            store_latency,
            store_errors,
            sessions_created,
            sessions_regenerated,
            sessions_destroyed,
            writes_rejected,
            connections,
            connections_refused,
            tunnels,
            runtime_tasks,
            master_changes,
            cache_counters,
            cache_entries,
            sessions_revoked,
            admin_calls,
        }
    }

    /// `n` sessions revoked for `cause`.
    pub fn revoked(&self, cause: RevokeCause, n: u64) {
        self.sessions_revoked[cause as usize].inc_by(n);
    }

    /// One admin API call.
    pub fn admin_call(&self, result: AdminResult) {
        self.admin_calls[result as usize].inc();
    }

    /// One answered request.
    pub fn request(&self, status: StatusCode) {
        self.requests[class_index(status)].inc();
    }

    /// The upstream's response headers arrived after `seconds`.
    pub fn upstream_latency(&self, seconds: f64) {
        self.upstream_latency.observe(seconds);
    }

    pub fn upstream_error(&self, kind: UpstreamErrorKind) {
        self.upstream_errors[kind as usize].inc();
    }

    /// One store call took `seconds` (whatever its outcome).
    pub fn store_latency(&self, op: StoreOp, seconds: f64) {
        self.store_latency[op as usize].observe(seconds);
    }

    pub fn store_error(&self, e: &StoreError) {
        self.store_errors[StoreErrorKind::of(e) as usize].inc();
    }

    /// A write with this target was applied.
    pub fn applied(&self, target: &Target) {
        let events = SessionEvents::of(target);
        if events.created {
            self.sessions_created.inc();
        }
        if events.regenerated {
            self.sessions_regenerated.inc();
        }
        if events.destroyed {
            self.sessions_destroyed.inc();
        }
    }

    pub fn write_rejected(&self, reason: RejectReason) {
        self.writes_rejected[reason as usize].inc();
    }

    /// Count `io` as an open client connection until it is dropped.
    /// A client connection opened: counted in `active_connections` until the returned
    /// guard is dropped (the listener keeps it in the connection's IO, so an upgraded
    /// connection counts until its tunnel closes).
    pub fn connection_opened(&self) -> ConnectionGuard {
        self.connections.inc();
        ConnectionGuard(self.connections.clone())
    }

    /// A connection closed at accept: `per_ip` when the per-address cap refused it,
    /// else the total cap.
    pub fn connection_refused(&self, per_ip: bool) {
        self.connections_refused[usize::from(per_ip)].inc();
    }

    /// The current number of open tunnels (read at scrape time).
    pub fn set_open_tunnels(&self, n: usize) {
        self.tunnels.set(i64::try_from(n).unwrap_or(i64::MAX));
    }

    /// The number of tasks alive on the runtime (read at scrape time:
    /// `tokio::runtime::Handle::metrics().num_alive_tasks()`).
    pub fn set_runtime_alive_tasks(&self, n: usize) {
        self.runtime_tasks.set(i64::try_from(n).unwrap_or(i64::MAX));
    }

    /// The store's count of master changes (read at scrape time; it only grows).
    pub fn set_store_master_changes(&self, n: u64) {
        let seen = self.master_changes.get();
        if n > seen {
            self.master_changes.inc_by(n - seen);
        }
    }

    /// The client-side cache's counters (read at scrape time; the counters only grow).
    pub fn set_store_cache(&self, stats: &crate::store::redis::CacheStats) {
        let values = [stats.hits, stats.misses, stats.invalidations, stats.drops];
        for (counter, n) in self.cache_counters.iter().zip(values) {
            let seen = counter.get();
            if n > seen {
                counter.inc_by(n - seen);
            }
        }
        self.cache_entries
            .set(i64::try_from(stats.entries).unwrap_or(i64::MAX));
    }

    /// The whole registry in the Prometheus text format ([`CONTENT_TYPE`]).
    pub fn encode(&self) -> String {
        let mut out = String::with_capacity(8 * 1024);
        // Writing into a String cannot fail; an error would be a bug in the encoder.
        if let Err(e) = prometheus_text::encode(&mut out, &self.registry) {
            tracing::error!(error = %e, "cannot encode metrics");
        }
        out
    }
}

/// Decrements the active-connections gauge when dropped.
#[derive(Debug)]
pub struct ConnectionGuard(Gauge);

impl Drop for ConnectionGuard {
    fn drop(&mut self) {
        self.0.dec();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{cookie::SessionId, store::ApplyError};

    fn id() -> SessionId {
        SessionId::generate().unwrap()
    }

    /// `name{labels} value` → (name, labels, value) for every sample line.
    fn samples(text: &str) -> Vec<(String, String, f64)> {
        text.lines()
            .filter(|l| !l.starts_with('#') && !l.is_empty())
            .map(|l| {
                let (series, value) = l.rsplit_once(' ').unwrap();
                let (name, labels) = match series.split_once('{') {
                    Some((n, rest)) => (n, rest.trim_end_matches('}')),
                    None => (series, ""),
                };
                (name.to_owned(), labels.to_owned(), value.parse().unwrap())
            })
            .collect()
    }

    fn value(text: &str, name: &str, labels: &str) -> f64 {
        samples(text)
            .into_iter()
            .find(|(n, l, _)| n == name && l == labels)
            .map(|(_, _, v)| v)
            .unwrap_or_else(|| panic!("no {name}{{{labels}}} in\n{text}"))
    }

    #[test]
    fn status_classes() {
        assert_eq!(class_index(StatusCode::SWITCHING_PROTOCOLS), 0);
        assert_eq!(class_index(StatusCode::OK), 1);
        assert_eq!(class_index(StatusCode::FOUND), 2);
        assert_eq!(class_index(StatusCode::NOT_FOUND), 3);
        assert_eq!(class_index(StatusCode::GATEWAY_TIMEOUT), 4);
        assert_eq!(class_index(StatusCode::from_u16(999).unwrap()), 4);
    }

    #[test]
    fn session_events_follow_the_applied_target() {
        assert_eq!(
            SessionEvents::of(&Target::Existing(id())),
            SessionEvents::default()
        );
        assert!(SessionEvents::of(&Target::Create(id())).created);
        let moved = SessionEvents::of(&Target::Move {
            from: id(),
            to: id(),
        });
        assert!(moved.regenerated && !moved.created && !moved.destroyed);
        let destroyed = SessionEvents::of(&Target::Destroy(id()));
        assert!(destroyed.destroyed && !destroyed.created);
        let both = SessionEvents::of(&Target::DestroyThenCreate {
            old: id(),
            new: id(),
        });
        assert!(both.destroyed && both.created && !both.regenerated);
    }

    #[test]
    fn every_series_exists_from_the_start_and_records() {
        let m = Metrics::new();
        let before = m.encode();
        for class in CLASSES {
            assert_eq!(
                value(
                    &before,
                    "session_sidecar_requests_total",
                    &format!("class=\"{class}\"")
                ),
                0.0
            );
        }
        assert_eq!(
            value(
                &before,
                "session_sidecar_writes_rejected_total",
                "reason=\"store_unavailable\""
            ),
            0.0
        );

        m.request(StatusCode::OK);
        m.request(StatusCode::BAD_GATEWAY);
        m.request(StatusCode::BAD_GATEWAY);
        m.store_error(&StoreError::Rejected(ApplyError::TooLarge {
            size: 2,
            max: 1,
        }));
        m.store_latency(StoreOp::Apply, 0.002);
        m.applied(&Target::DestroyThenCreate {
            old: id(),
            new: id(),
        });
        m.write_rejected(RejectReason::Malformed);
        m.upstream_error(UpstreamErrorKind::Timeout);
        m.upstream_latency(0.02);
        m.set_open_tunnels(3);
        m.set_runtime_alive_tasks(17);
        let conn = m.connection_opened();
        let after = m.encode();
        drop(conn);

        assert_eq!(
            value(&after, "session_sidecar_requests_total", "class=\"2xx\""),
            1.0
        );
        assert_eq!(
            value(&after, "session_sidecar_requests_total", "class=\"5xx\""),
            2.0
        );
        assert_eq!(
            value(
                &after,
                "session_sidecar_store_errors_total",
                "kind=\"rejected\""
            ),
            1.0
        );
        assert_eq!(
            value(
                &after,
                "session_sidecar_store_duration_seconds_count",
                "op=\"apply\""
            ),
            1.0
        );
        assert_eq!(
            value(
                &after,
                "session_sidecar_store_duration_seconds_count",
                "op=\"load\""
            ),
            0.0
        );
        assert_eq!(
            value(&after, "session_sidecar_sessions_created_total", ""),
            1.0
        );
        assert_eq!(
            value(&after, "session_sidecar_sessions_destroyed_total", ""),
            1.0
        );
        assert_eq!(
            value(&after, "session_sidecar_sessions_regenerated_total", ""),
            0.0
        );
        assert_eq!(
            value(
                &after,
                "session_sidecar_writes_rejected_total",
                "reason=\"malformed\""
            ),
            1.0
        );
        assert_eq!(
            value(
                &after,
                "session_sidecar_upstream_errors_total",
                "kind=\"timeout\""
            ),
            1.0
        );
        assert_eq!(
            value(
                &after,
                "session_sidecar_upstream_response_duration_seconds_count",
                ""
            ),
            1.0
        );
        assert_eq!(value(&after, "session_sidecar_open_tunnels", ""), 3.0);
        assert_eq!(
            value(&after, "session_sidecar_runtime_alive_tasks", ""),
            17.0
        );
        assert_eq!(value(&after, "session_sidecar_active_connections", ""), 1.0);
        assert_eq!(
            value(&m.encode(), "session_sidecar_active_connections", ""),
            0.0
        );
    }

    #[test]
    fn master_changes_follow_the_store_and_only_grow() {
        let m = Metrics::new();
        let name = "session_sidecar_store_master_changes_total";
        assert_eq!(value(&m.encode(), name, ""), 0.0);
        m.set_store_master_changes(2);
        assert_eq!(value(&m.encode(), name, ""), 2.0);
        m.set_store_master_changes(1); // never goes back
        assert_eq!(value(&m.encode(), name, ""), 2.0);
        m.set_store_master_changes(3);
        assert_eq!(value(&m.encode(), name, ""), 3.0);
    }

    #[test]
    fn every_family_has_help_and_type() {
        let text = Metrics::new().encode();
        let helps = text.lines().filter(|l| l.starts_with("# HELP ")).count();
        let types = text.lines().filter(|l| l.starts_with("# TYPE ")).count();
        assert_eq!(helps, 21, "{text}");
        assert_eq!(types, 21, "{text}");
        for (name, _, _) in samples(&text) {
            assert!(name.starts_with("session_sidecar_"), "{name}");
        }
    }
}
