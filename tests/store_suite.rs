//! One behavioural suite for every store engine (`store_suite!`), run against the memory
//! store, a real `redis-server` and a real `memcached`, plus engine-specific checks (key
//! layout, TTLs, dbs, hashing, outages, CAS contention).

mod backing;

use std::{
    collections::BTreeMap,
    sync::Arc,
    time::{Duration, Instant},
};

use backing::{MemcachedServer, RedisServer};
use session_sidecar::{
    config::{
        ClusterOptions, MAX_KEY_PREFIX_LEN, MemcachedOptions, OnError, RedisOptions, RedisTopology,
        SentinelOptions, Storage, StoreConfig,
    },
    cookie::SessionId,
    metrics::Metrics,
    protocol::Op,
    store::{
        ApplyError, Lifetimes, LoadedSession, SessionStore, StoreError, Target, WriteOutcome,
        WritePlan, memcached::MemcachedStore, memory::MemoryStore, redis::RedisStore,
        timed::TimedStore,
    },
};

/// A store under test plus whatever must live as long as it (the Redis server).
pub struct Fixture<S> {
    pub store: Arc<S>,
    pub server: Option<RedisServer>,
    pub memcached: Vec<MemcachedServer>,
    /// How late past its idle lifetime an unused session may still load: memcached's
    /// clock ticks once a second, so its items expire up to a second after their TTL.
    pub expiry_slack: Duration,
}

type Make<S> = fn(Lifetimes) -> Fixture<S>;

fn lifetimes() -> Lifetimes {
    Lifetimes {
        ttl: Duration::from_secs(60),
        absolute_ttl: Duration::from_secs(3600),
        max_size: 8192,
        touch_after: Duration::ZERO,
    }
}

/// `store.timeout` of [`store_config`].
const TIMEOUT: Duration = Duration::from_millis(500);

/// An engine as production runs it: behind the wrapper that bounds every call by
/// `store.timeout` (and records the store metrics).
fn timed<S>(engine: S, timeout: Duration) -> TimedStore<S> {
    TimedStore::new(engine, timeout, Arc::new(Metrics::new()))
}

fn make_memory_store(l: Lifetimes) -> Fixture<TimedStore<MemoryStore>> {
    Fixture {
        store: Arc::new(timed(MemoryStore::new(100_000, l), TIMEOUT)),
        server: None,
        memcached: Vec::new(),
        expiry_slack: Duration::ZERO,
    }
}

fn store_config(port: u16, db_sessions: u32, db_notifications: u32) -> StoreConfig {
    StoreConfig {
        storage: Storage::Redis(RedisOptions {
            topology: RedisTopology::Server {
                host: "127.0.0.1".into(),
                port,
            },
            db_sessions,
            db_notifications,
            max_connections: 4,
            ..RedisOptions::default()
        }),
        key_prefix: "test:".into(),
        timeout: TIMEOUT,
        on_error: OnError::Reject,
        cache: Default::default(),
    }
}

/// The Redis engine built from `cfg` as `server::build_store` builds it.
fn redis_new(cfg: &StoreConfig, l: Lifetimes) -> Result<RedisStore, StoreError> {
    let Storage::Redis(options) = &cfg.storage else {
        panic!("not a redis config: {cfg:?}");
    };
    RedisStore::new(options, &cfg.key_prefix, cfg.timeout, l)
}

/// The memcached engine built from `cfg` as `server::build_store` builds it.
fn memcached_new(cfg: &StoreConfig, l: Lifetimes) -> MemcachedStore {
    let Storage::Memcached(options) = &cfg.storage else {
        panic!("not a memcached config: {cfg:?}");
    };
    MemcachedStore::new(options, &cfg.key_prefix, l)
}

/// The keys of a db without the write tokens (`…:w:…`, see `src/store/redis.rs`).
fn session_keys(c: &mut backing::RawClient) -> Vec<String> {
    c.keys("*")
        .into_iter()
        .filter(|k| !k.contains(":w:"))
        .collect()
}

fn redis_options(cfg: &mut StoreConfig) -> &mut RedisOptions {
    match &mut cfg.storage {
        Storage::Redis(options) => options,
        other => panic!("not a redis config: {other:?}"),
    }
}

fn memcached_options(cfg: &mut StoreConfig) -> &mut MemcachedOptions {
    match &mut cfg.storage {
        Storage::Memcached(options) => options,
        other => panic!("not a memcached config: {other:?}"),
    }
}

fn make_redis_store(l: Lifetimes) -> Fixture<TimedStore<RedisStore>> {
    let server = RedisServer::start();
    let store = redis_new(&store_config(server.port(), 0, 1), l).expect("redis store");
    Fixture {
        store: Arc::new(timed(store, TIMEOUT)),
        server: Some(server),
        memcached: Vec::new(),
        expiry_slack: Duration::ZERO,
    }
}

/// One Redis Cluster (3 masters with a replica each) and one Sentinel set for the
/// whole binary: starting them takes seconds, and every test uses fresh random ids.
fn shared_cluster() -> &'static backing::RedisCluster {
    static CLUSTER: std::sync::OnceLock<backing::RedisCluster> = std::sync::OnceLock::new();
    CLUSTER.get_or_init(backing::RedisCluster::start)
}

fn shared_sentinels() -> &'static backing::SentinelSet {
    static SET: std::sync::OnceLock<backing::SentinelSet> = std::sync::OnceLock::new();
    SET.get_or_init(backing::SentinelSet::start)
}

fn topology_config(topology: RedisTopology, db_notifications: u32) -> StoreConfig {
    StoreConfig {
        storage: Storage::Redis(RedisOptions {
            topology,
            db_sessions: 0,
            db_notifications,
            max_connections: 4,
            ..RedisOptions::default()
        }),
        ..store_config(0, 0, 0)
    }
}

fn make_cluster_store(l: Lifetimes) -> Fixture<TimedStore<RedisStore>> {
    let nodes = shared_cluster().nodes();
    let cfg = topology_config(RedisTopology::Cluster(ClusterOptions { nodes }), 0);
    Fixture {
        store: Arc::new(timed(redis_new(&cfg, l).expect("cluster store"), TIMEOUT)),
        server: None,
        memcached: Vec::new(),
        expiry_slack: Duration::ZERO,
    }
}

fn make_sentinel_store(l: Lifetimes) -> Fixture<TimedStore<RedisStore>> {
    let set = shared_sentinels();
    let cfg = topology_config(
        RedisTopology::Sentinel(SentinelOptions {
            master_name: set.master_name().to_owned(),
            nodes: set.sentinel_nodes(),
            username: None,
            password: None,
        }),
        1,
    );
    Fixture {
        store: Arc::new(timed(redis_new(&cfg, l).expect("sentinel store"), TIMEOUT)),
        server: None,
        memcached: Vec::new(),
        expiry_slack: Duration::ZERO,
    }
}

fn memcached_config(servers: &[&MemcachedServer]) -> StoreConfig {
    StoreConfig {
        storage: Storage::Memcached(MemcachedOptions {
            servers: servers.iter().map(|s| s.addr()).collect(),
            max_connections: 4,
        }),
        ..store_config(0, 0, 0)
    }
}

fn make_memcached_store(l: Lifetimes) -> Fixture<TimedStore<MemcachedStore>> {
    let server = MemcachedServer::start();
    let store = memcached_new(&memcached_config(&[&server]), l);
    Fixture {
        store: Arc::new(timed(store, TIMEOUT)),
        server: None,
        memcached: vec![server],
        expiry_slack: Duration::from_secs(1),
    }
}

fn new_id() -> SessionId {
    SessionId::generate().expect("random id")
}

/// A key in its stored field form: the JSON string literal.
fn f(key: &str) -> String {
    format!("\"{key}\"")
}

fn fields(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
    pairs.iter().map(|(k, v)| (f(k), v.to_string())).collect()
}

fn set(key: &str, value: &str) -> Op {
    Op::Set(f(key), value.into())
}

fn flash(key: &str, value: &str) -> Op {
    Op::FlashSet(f(key), value.into())
}

fn plan(target: Target, ops: Vec<Op>) -> WritePlan {
    WritePlan {
        target,
        ops,
        max_age: None,
        revision: None,
        owner: Default::default(),
        client: None,
    }
}

async fn apply<S: SessionStore>(store: &S, p: WritePlan) -> WriteOutcome {
    store.apply(&p).await.expect("apply")
}

async fn load<S: SessionStore>(store: &S, id: &SessionId) -> Option<LoadedSession> {
    store.load(id).await.expect("load")
}

async fn rejected<S: SessionStore>(store: &S, p: WritePlan) -> ApplyError {
    match store.apply(&p).await {
        Err(StoreError::Rejected(e)) => e,
        other => panic!("expected a rejection, got {other:?}"),
    }
}

/// Create a session with the given ops and return its id.
async fn create<S: SessionStore>(store: &S, ops: Vec<Op>) -> SessionId {
    let id = new_id();
    assert_eq!(
        apply(store, plan(Target::Create(id.clone()), ops)).await,
        WriteOutcome::Applied
    );
    id
}

#[path = "store_suite/owner_cases.rs"]
mod owner_cases;

/// The behavioural cases, generic over the engine.
mod cases {
    pub use super::owner_cases::*;
    use super::*;

    pub async fn create_load_round_trip<S: SessionStore>(make: Make<S>) {
        let fx = make(lifetimes());
        let s = &*fx.store;
        let id = create(
            s,
            vec![
                set("user", "\"ann\""),
                set("n", "1"),
                set("obj", r#"{"a":[1,2,null],"b":"cl\u00e9"}"#),
            ],
        )
        .await;
        let got = load(s, &id).await.expect("session exists");
        assert_eq!(
            got.data,
            fields(&[
                ("user", "\"ann\""),
                ("n", "1"),
                ("obj", r#"{"a":[1,2,null],"b":"cl\u00e9"}"#)
            ])
        );
        assert!(got.flash.is_empty());
        assert_eq!(got.max_age, None);
        assert!(
            (3590..=3600).contains(&got.remaining),
            "remaining {}",
            got.remaining
        );
        // Loading does not change the data.
        assert_eq!(load(s, &id).await.expect("still there").data, got.data);
    }

    pub async fn unknown_id_loads_none<S: SessionStore>(make: Make<S>) {
        let fx = make(lifetimes());
        assert_eq!(load(&*fx.store, &new_id()).await, None);
    }

    pub async fn empty_session_exists<S: SessionStore>(make: Make<S>) {
        let fx = make(lifetimes());
        let s = &*fx.store;
        // A session whose every key was deleted is still a session (not "gone").
        let id = create(s, vec![set("a", "1"), Op::Delete(f("a"))]).await;
        assert_eq!(load(s, &id).await.expect("exists").data, fields(&[]));
        assert_eq!(
            apply(s, plan(Target::Existing(id.clone()), vec![set("b", "2")])).await,
            WriteOutcome::Applied
        );
        assert_eq!(
            load(s, &id).await.expect("exists").data,
            fields(&[("b", "2")])
        );
    }

    pub async fn existing_merges<S: SessionStore>(make: Make<S>) {
        let fx = make(lifetimes());
        let s = &*fx.store;
        let id = create(s, vec![set("a", "1"), set("b", "2")]).await;
        let p = plan(
            Target::Existing(id.clone()),
            vec![set("b", "20"), set("c", "[3]"), Op::Delete(f("a"))],
        );
        assert_eq!(apply(s, p).await, WriteOutcome::Applied);
        assert_eq!(
            load(s, &id).await.expect("exists").data,
            fields(&[("b", "20"), ("c", "[3]")])
        );
    }

    pub async fn flash_delivered_once<S: SessionStore>(make: Make<S>) {
        let fx = make(lifetimes());
        let s = &*fx.store;
        let id = create(s, vec![set("a", "1"), flash("msg", "\"hello\"")]).await;
        let p = plan(Target::Existing(id.clone()), vec![flash("n", "2")]);
        assert_eq!(apply(s, p).await, WriteOutcome::Applied);
        let first = load(s, &id).await.expect("exists");
        assert_eq!(first.flash, fields(&[("msg", "\"hello\""), ("n", "2")]));
        assert_eq!(first.data, fields(&[("a", "1")]));
        let second = load(s, &id).await.expect("exists");
        assert!(second.flash.is_empty(), "flash delivered twice");
        assert_eq!(second.data, fields(&[("a", "1")]));
    }

    pub async fn existing_missing_is_gone<S: SessionStore>(make: Make<S>) {
        let fx = make(lifetimes());
        let s = &*fx.store;
        let id = new_id();
        let p = plan(
            Target::Existing(id.clone()),
            vec![set("a", "1"), flash("f", "1")],
        );
        assert_eq!(apply(s, p).await, WriteOutcome::Gone);
        assert_eq!(load(s, &id).await, None, "a write must not create");

        // Move from a missing session: Gone, and the new id is not created.
        let to = new_id();
        let p = plan(
            Target::Move {
                from: id.clone(),
                to: to.clone(),
            },
            vec![set("a", "1")],
        );
        assert_eq!(apply(s, p).await, WriteOutcome::Gone);
        assert_eq!(load(s, &to).await, None);
    }

    pub async fn move_carries_everything<S: SessionStore>(make: Make<S>) {
        let fx = make(Lifetimes {
            absolute_ttl: Duration::from_secs(5),
            ..lifetimes()
        });
        let s = &*fx.store;
        let from = new_id();
        let p = WritePlan {
            target: Target::Create(from.clone()),
            ops: vec![set("user", "\"ann\""), flash("msg", "\"hi\"")],
            max_age: Some(100),
            revision: None,
            owner: Default::default(),
            client: None,
        };
        assert_eq!(apply(s, p).await, WriteOutcome::Applied);
        tokio::time::sleep(Duration::from_millis(1100)).await;

        let to = new_id();
        let p = plan(
            Target::Move {
                from: from.clone(),
                to: to.clone(),
            },
            vec![set("role", "\"admin\"")],
        );
        assert_eq!(apply(s, p).await, WriteOutcome::Applied);
        assert_eq!(load(s, &from).await, None, "old id must be dead");
        let got = load(s, &to).await.expect("moved");
        assert_eq!(
            got.data,
            fields(&[("user", "\"ann\""), ("role", "\"admin\"")])
        );
        assert_eq!(got.flash, fields(&[("msg", "\"hi\"")]));
        assert_eq!(got.max_age, Some(100));
        // Creation time was kept: more than a second of the 5 s is used up.
        assert!(got.remaining <= 3, "remaining {}", got.remaining);
        // The old id cannot be written again.
        let p = plan(Target::Existing(from.clone()), vec![set("x", "1")]);
        assert_eq!(apply(s, p).await, WriteOutcome::Gone);
        assert_eq!(load(s, &from).await, None);
    }

    pub async fn destroy<S: SessionStore>(make: Make<S>) {
        let fx = make(lifetimes());
        let s = &*fx.store;
        let id = create(s, vec![set("a", "1"), flash("f", "1")]).await;
        assert_eq!(
            apply(s, plan(Target::Destroy(id.clone()), vec![])).await,
            WriteOutcome::Applied
        );
        assert_eq!(load(s, &id).await, None);
        let p = plan(Target::Existing(id.clone()), vec![set("a", "2")]);
        assert_eq!(apply(s, p).await, WriteOutcome::Gone);
        assert_eq!(load(s, &id).await, None);
        // Destroying what is not there is not an error (logout twice).
        assert_eq!(
            apply(s, plan(Target::Destroy(new_id()), vec![])).await,
            WriteOutcome::Applied
        );
    }

    pub async fn destroy_then_create<S: SessionStore>(make: Make<S>) {
        let fx = make(Lifetimes {
            absolute_ttl: Duration::from_secs(5),
            ..lifetimes()
        });
        let s = &*fx.store;
        let old = new_id();
        let p = WritePlan {
            target: Target::Create(old.clone()),
            ops: vec![set("user", "\"ann\""), flash("old", "1")],
            max_age: Some(100),
            revision: None,
            owner: Default::default(),
            client: None,
        };
        assert_eq!(apply(s, p).await, WriteOutcome::Applied);
        tokio::time::sleep(Duration::from_millis(1100)).await;
        let new = new_id();
        let p = plan(
            Target::DestroyThenCreate {
                old: old.clone(),
                new: new.clone(),
            },
            vec![flash("msg", "\"logged out\""), set("theme", "\"dark\"")],
        );
        assert_eq!(apply(s, p).await, WriteOutcome::Applied);
        assert_eq!(load(s, &old).await, None);
        let got = load(s, &new).await.expect("new session");
        assert_eq!(got.data, fields(&[("theme", "\"dark\"")]));
        assert_eq!(got.flash, fields(&[("msg", "\"logged out\"")]));
        assert_eq!(got.max_age, None, "a fresh session");
        assert!(got.remaining >= 4, "fresh creation time: {}", got.remaining);
    }

    pub async fn ops_apply_in_order<S: SessionStore>(make: Make<S>) {
        let fx = make(lifetimes());
        let s = &*fx.store;
        let id = create(s, vec![set("old", "1"), set("keep", "2")]).await;
        let ops = vec![
            Op::ClearData,
            set("x", "1"),
            set("y", "2"),
            Op::Delete(f("x")),
            set("n", "5"),
            set("s", "1"),
            Op::Incr(f("n"), 2),
            Op::Incr(f("n"), 3),
            Op::Incr(f("m"), -4),
            Op::Delete(f("missing")),
            set("y", "\"late\""),
        ];
        let p = plan(Target::Existing(id.clone()), ops);
        assert_eq!(apply(s, p).await, WriteOutcome::Applied);
        assert_eq!(
            load(s, &id).await.expect("exists").data,
            fields(&[("n", "10"), ("s", "1"), ("y", "\"late\""), ("m", "-4")])
        );
    }

    pub async fn incr_is_exact<S: SessionStore>(make: Make<S>) {
        let fx = make(lifetimes());
        let s = &*fx.store;
        // Beyond 2^53 a double would round: the sum must be exact i64 arithmetic.
        let id = create(
            s,
            vec![
                set("big", "9007199254740993"),
                set("max", "9223372036854775806"),
                set("min", "-9223372036854775807"),
                set("zero", "0"),
            ],
        )
        .await;
        let p = plan(
            Target::Existing(id.clone()),
            vec![
                Op::Incr(f("big"), 0),
                Op::Incr(f("max"), 1),
                Op::Incr(f("min"), -1),
                Op::Incr(f("zero"), -5),
                Op::Incr(f("new"), i64::MAX),
            ],
        );
        assert_eq!(apply(s, p).await, WriteOutcome::Applied);
        assert_eq!(
            load(s, &id).await.expect("exists").data,
            fields(&[
                ("big", "9007199254740993"),
                ("max", "9223372036854775807"),
                ("min", "-9223372036854775808"),
                ("zero", "-5"),
                ("new", "9223372036854775807"),
            ])
        );
    }

    pub async fn rejected_writes_change_nothing<S: SessionStore>(make: Make<S>) {
        let fx = make(Lifetimes {
            max_size: 128,
            ..lifetimes()
        });
        let s = &*fx.store;
        let id = new_id();
        let p = WritePlan {
            target: Target::Create(id.clone()),
            ops: vec![
                set("f", "1.5"),
                set("str", "\"3\""),
                set("max", "9223372036854775807"),
                set("min", "-9223372036854775808"),
                flash("m", "1"),
            ],
            max_age: Some(500),
            revision: None,
            owner: Default::default(),
            client: None,
        };
        assert_eq!(apply(s, p).await, WriteOutcome::Applied);
        let existing = |ops: Vec<Op>| WritePlan {
            target: Target::Existing(id.clone()),
            ops,
            max_age: Some(7),
            revision: None,
            owner: Default::default(),
            client: None,
        };

        let e = rejected(s, existing(vec![set("new", "1"), Op::Incr(f("f"), 1)])).await;
        assert_eq!(e, ApplyError::NotInteger { field: f("f") });
        let e = rejected(s, existing(vec![Op::Incr(f("str"), 1)])).await;
        assert_eq!(e, ApplyError::NotInteger { field: f("str") });
        let e = rejected(
            s,
            existing(vec![Op::Incr(f("n"), 1), Op::Incr(f("max"), 1)]),
        )
        .await;
        assert_eq!(e, ApplyError::Overflow { field: f("max") });
        let e = rejected(s, existing(vec![Op::Incr(f("min"), -1)])).await;
        assert_eq!(e, ApplyError::Overflow { field: f("min") });
        let e = rejected(
            s,
            existing(vec![set("big", &format!("\"{}\"", "x".repeat(64)))]),
        )
        .await;
        assert!(matches!(e, ApplyError::TooLarge { max: 128, .. }), "{e:?}");
        let e = rejected(s, existing(vec![flash("big", &"1".repeat(130))])).await;
        assert!(
            matches!(e, ApplyError::FlashTooLarge { max: 128, .. }),
            "{e:?}"
        );

        // A rejected regenerate or logout-and-recreate keeps the old session.
        let to = new_id();
        let p = plan(
            Target::Move {
                from: id.clone(),
                to: to.clone(),
            },
            vec![Op::Incr(f("f"), 1)],
        );
        assert!(matches!(
            rejected(s, p).await,
            ApplyError::NotInteger { .. }
        ));
        let p = plan(
            Target::DestroyThenCreate {
                old: id.clone(),
                new: to.clone(),
            },
            vec![set("x", &"1".repeat(200))],
        );
        assert!(matches!(rejected(s, p).await, ApplyError::TooLarge { .. }));
        assert_eq!(load(s, &to).await, None);

        let got = load(s, &id).await.expect("untouched");
        assert_eq!(
            got.data,
            fields(&[
                ("f", "1.5"),
                ("str", "\"3\""),
                ("max", "9223372036854775807"),
                ("min", "-9223372036854775808"),
            ])
        );
        assert_eq!(got.flash, fields(&[("m", "1")]));
        assert_eq!(got.max_age, Some(500));
    }

    pub async fn max_size_is_inclusive<S: SessionStore>(make: Make<S>) {
        // {"a":"xx"} is 10 bytes.
        let fx = make(Lifetimes {
            max_size: 10,
            ..lifetimes()
        });
        let s = &*fx.store;
        let id = create(s, vec![set("a", "\"xx\"")]).await;
        let e = rejected(
            s,
            plan(Target::Existing(id.clone()), vec![set("a", "\"xxx\"")]),
        )
        .await;
        assert_eq!(e, ApplyError::TooLarge { size: 11, max: 10 });
        let e = rejected(s, plan(Target::Create(new_id()), vec![set("a", "\"xxx\"")])).await;
        assert_eq!(e, ApplyError::TooLarge { size: 11, max: 10 });
        // Flash has the same bound, counted separately.
        let p = plan(Target::Existing(id.clone()), vec![flash("b", "\"yy\"")]);
        assert_eq!(apply(s, p).await, WriteOutcome::Applied);
        let p = plan(Target::Existing(id.clone()), vec![flash("c", "1")]);
        assert_eq!(
            rejected(s, p).await,
            ApplyError::FlashTooLarge { size: 16, max: 10 }
        );
        let got = load(s, &id).await.expect("exists");
        assert_eq!(got.data, fields(&[("a", "\"xx\"")]));
        assert_eq!(got.flash, fields(&[("b", "\"yy\"")]));
    }

    pub async fn max_age_stored_and_returned<S: SessionStore>(make: Make<S>) {
        let fx = make(lifetimes());
        let s = &*fx.store;
        let id = new_id();
        let p = WritePlan {
            target: Target::Create(id.clone()),
            ops: vec![set("a", "1")],
            max_age: Some(120),
            revision: None,
            owner: Default::default(),
            client: None,
        };
        assert_eq!(apply(s, p).await, WriteOutcome::Applied);
        assert_eq!(load(s, &id).await.expect("exists").max_age, Some(120));
        let p = WritePlan {
            target: Target::Existing(id.clone()),
            ops: vec![],
            max_age: Some(30),
            revision: None,
            owner: Default::default(),
            client: None,
        };
        assert_eq!(apply(s, p).await, WriteOutcome::Applied);
        assert_eq!(load(s, &id).await.expect("exists").max_age, Some(30));
        // A write without X-Session-Max-Age keeps it.
        let p = plan(Target::Existing(id.clone()), vec![set("b", "2")]);
        assert_eq!(apply(s, p).await, WriteOutcome::Applied);
        assert_eq!(load(s, &id).await.expect("exists").max_age, Some(30));
    }

    pub async fn absolute_lifetime_expires<S: SessionStore>(make: Make<S>) {
        let fx = make(Lifetimes {
            ttl: Duration::from_secs(2),
            absolute_ttl: Duration::from_secs(3),
            max_size: 8192,
            touch_after: Duration::ZERO,
        });
        let s = &*fx.store;
        let id = create(s, vec![set("a", "1")]).await;
        // Used constantly, so the 2 s idle lifetime never runs out...
        tokio::time::sleep(Duration::from_millis(1000)).await;
        assert!(load(s, &id).await.is_some());
        tokio::time::sleep(Duration::from_millis(1000)).await;
        let remaining = load(s, &id).await.expect("within 3 s").remaining;
        assert!(remaining <= 1, "remaining {remaining}");
        tokio::time::sleep(Duration::from_millis(1300)).await;
        // ...but the absolute one does.
        assert_eq!(load(s, &id).await, None);
        let p = plan(Target::Existing(id.clone()), vec![set("b", "1")]);
        assert_eq!(apply(s, p).await, WriteOutcome::Gone);
        assert_eq!(load(s, &id).await, None);
    }

    pub async fn idle_lifetime_expires<S: SessionStore>(make: Make<S>) {
        let fx = make(Lifetimes {
            ttl: Duration::from_secs(1),
            absolute_ttl: Duration::from_secs(60),
            max_size: 8192,
            touch_after: Duration::ZERO,
        });
        let s = &*fx.store;
        let idle = create(s, vec![set("a", "1")]).await;
        let used = create(s, vec![set("a", "1")]).await;
        let remember = new_id();
        let p = WritePlan {
            target: Target::Create(remember.clone()),
            ops: vec![set("a", "1")],
            max_age: Some(5),
            revision: None,
            owner: Default::default(),
            client: None,
        };
        assert_eq!(apply(s, p).await, WriteOutcome::Applied);
        // A load refreshes a remember-me session with its own lifetime, not session.ttl
        // (memcached: the TTL correction is sent without waiting for its reply).
        assert!(load(s, &remember).await.is_some());
        for _ in 0..3 {
            tokio::time::sleep(Duration::from_millis(600)).await;
            assert!(
                load(s, &used).await.is_some(),
                "a load refreshes the idle lifetime"
            );
        }
        tokio::time::sleep(fx.expiry_slack).await;
        assert_eq!(load(s, &idle).await, None);
        assert!(
            load(s, &remember).await.is_some(),
            "max_age replaces session.ttl"
        );
        let p = plan(Target::Existing(idle.clone()), vec![set("b", "1")]);
        assert_eq!(apply(s, p).await, WriteOutcome::Gone);
    }

    pub async fn concurrent_writers_all_persist<S: SessionStore>(make: Make<S>) {
        let fx = make(lifetimes());
        let id = create(&*fx.store, vec![]).await;
        let tasks: Vec<_> = (0..50)
            .map(|i| {
                let store = fx.store.clone();
                let id = id.clone();
                tokio::spawn(async move {
                    let p = plan(
                        Target::Existing(id),
                        vec![set(&format!("k{i}"), &i.to_string())],
                    );
                    store.apply(&p).await.expect("apply")
                })
            })
            .collect();
        for t in tasks {
            assert_eq!(t.await.expect("task"), WriteOutcome::Applied);
        }
        let data = load(&*fx.store, &id).await.expect("exists").data;
        let expected: BTreeMap<_, _> = (0..50)
            .map(|i| (f(&format!("k{i}")), i.to_string()))
            .collect();
        assert_eq!(data, expected);
    }

    pub async fn concurrent_incr_loses_nothing<S: SessionStore>(make: Make<S>) {
        let fx = make(lifetimes());
        let id = create(&*fx.store, vec![]).await;
        let tasks: Vec<_> = (0..200)
            .map(|_| {
                let store = fx.store.clone();
                let id = id.clone();
                tokio::spawn(async move {
                    let p = plan(Target::Existing(id), vec![Op::Incr(f("n"), 1)]);
                    store.apply(&p).await.expect("apply")
                })
            })
            .collect();
        for t in tasks {
            assert_eq!(t.await.expect("task"), WriteOutcome::Applied);
        }
        let data = load(&*fx.store, &id).await.expect("exists").data;
        assert_eq!(data, fields(&[("n", "200")]));
    }

    pub async fn concurrent_loads_deliver_flash_once<S: SessionStore>(make: Make<S>) {
        let fx = make(lifetimes());
        for round in 0..5 {
            let id = create(&*fx.store, vec![flash("msg", &round.to_string())]).await;
            let tasks: Vec<_> = (0..20)
                .map(|_| {
                    let store = fx.store.clone();
                    let id = id.clone();
                    tokio::spawn(async move { store.load(&id).await.expect("load") })
                })
                .collect();
            let mut delivered = 0;
            for t in tasks {
                let got = t.await.expect("task").expect("exists");
                if !got.flash.is_empty() {
                    assert_eq!(got.flash, fields(&[("msg", &round.to_string())]));
                    delivered += 1;
                }
            }
            assert_eq!(delivered, 1, "round {round}");
        }
    }
}

macro_rules! store_suite {
    ($engine:ident, $make:ident) => {
        store_suite!(@cases $engine, $make;
            create_load_round_trip,
            unknown_id_loads_none,
            empty_session_exists,
            existing_merges,
            flash_delivered_once,
            existing_missing_is_gone,
            move_carries_everything,
            destroy,
            destroy_then_create,
            ops_apply_in_order,
            incr_is_exact,
            rejected_writes_change_nothing,
            max_size_is_inclusive,
            max_age_stored_and_returned,
            absolute_lifetime_expires,
            idle_lifetime_expires,
            concurrent_writers_all_persist,
            concurrent_incr_loses_nothing,
            concurrent_loads_deliver_flash_once,
            owner_is_recorded_and_loaded,
            regenerate_keeps_owner_and_detach_drops_it,
            index_add_remove_and_members,
            index_entries_expire_with_their_bound,
            destroy_keys_is_destroy,
            owned_expiry_is_capped_by_its_bound,
            no_touch_loads_do_not_extend,
            touch_after_skips_early_refreshes,
        );
    };
    (@cases $engine:ident, $make:ident; $($case:ident),* $(,)?) => {
        mod $engine {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
                async fn $case() {
                    super::cases::$case(super::$make).await;
                }
            )*
        }
    };
}

store_suite!(memory, make_memory_store);
store_suite!(redis, make_redis_store);
store_suite!(memcached, make_memcached_store);
store_suite!(cluster, make_cluster_store);
store_suite!(sentinel, make_sentinel_store);

/// Redis-specific behaviour: layout, expiries, databases, outages.
mod redis_only {
    use super::*;

    fn store(server_port: u16, db_s: u32, db_n: u32, l: Lifetimes) -> TimedStore<RedisStore> {
        let engine = redis_new(&store_config(server_port, db_s, db_n), l).expect("redis store");
        timed(engine, TIMEOUT)
    }

    fn is_unavailable(e: &StoreError) -> bool {
        matches!(e, StoreError::Unavailable(_) | StoreError::Timeout)
    }

    /// A TCP relay to Redis that, once armed, forwards the next request but swallows
    /// Redis' reply and drops the connection: the write happened, the store never
    /// heard back. The fault of a connection lost mid-call.
    struct ReplyEater {
        port: u16,
        armed: Arc<std::sync::atomic::AtomicBool>,
        eaten: Arc<std::sync::atomic::AtomicUsize>,
    }

    impl ReplyEater {
        async fn start(redis_port: u16) -> Self {
            use std::sync::atomic::Ordering;
            use tokio::io::{AsyncReadExt, AsyncWriteExt};
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
            let port = listener.local_addr().unwrap().port();
            let armed = Arc::new(std::sync::atomic::AtomicBool::new(false));
            let eaten = Arc::new(std::sync::atomic::AtomicUsize::new(0));
            let (a, n) = (armed.clone(), eaten.clone());
            tokio::spawn(async move {
                while let Ok((client, _)) = listener.accept().await {
                    let server = tokio::net::TcpStream::connect(("127.0.0.1", redis_port))
                        .await
                        .unwrap();
                    let (mut cr, mut cw) = client.into_split();
                    let (mut sr, mut sw) = server.into_split();
                    tokio::spawn(async move {
                        let mut buf = vec![0u8; 64 * 1024];
                        while let Ok(k) = cr.read(&mut buf).await {
                            if k == 0 || sw.write_all(&buf[..k]).await.is_err() {
                                break;
                            }
                        }
                    });
                    let (a, n) = (a.clone(), n.clone());
                    tokio::spawn(async move {
                        let mut buf = vec![0u8; 64 * 1024];
                        while let Ok(k) = sr.read(&mut buf).await {
                            if k == 0 {
                                break;
                            }
                            if a.swap(false, Ordering::SeqCst) {
                                n.fetch_add(1, Ordering::SeqCst);
                                break; // drops both halves: the reply is lost
                            }
                            if cw.write_all(&buf[..k]).await.is_err() {
                                break;
                            }
                        }
                    });
                }
            });
            ReplyEater { port, armed, eaten }
        }

        fn arm(&self) {
            self.armed.store(true, std::sync::atomic::Ordering::SeqCst);
        }

        fn eaten(&self) -> usize {
            self.eaten.load(std::sync::atomic::Ordering::SeqCst)
        }
    }

    #[tokio::test]
    async fn a_write_whose_reply_was_lost_is_resent_and_applied_once() {
        let server = RedisServer::start();
        let relay = ReplyEater::start(server.port()).await;
        let mut cfg = store_config(relay.port, 0, 1);
        redis_options(&mut cfg).max_connections = 1;
        let s = timed(redis_new(&cfg, lifetimes()).expect("store"), TIMEOUT);
        let id = create(&s, vec![Op::Incr(f("n"), 1)]).await;
        for round in 1..=3 {
            relay.arm();
            let p = WritePlan {
                target: Target::Existing(id.clone()),
                ops: vec![Op::Incr(f("n"), 1)],
                max_age: None,
                revision: None,
                owner: Default::default(),
                client: None,
            };
            // The first send is applied and its reply eaten; the resend finds the
            // call's write token and answers without applying it again.
            assert_eq!(apply(&s, p).await, WriteOutcome::Applied, "round {round}");
            assert_eq!(relay.eaten(), round, "the fault was injected");
            let got = load(&s, &id).await.expect("exists");
            assert_eq!(
                got.data,
                fields(&[("n", &(round + 1).to_string())]),
                "round {round}"
            );
        }
    }

    #[tokio::test]
    async fn key_layout_and_ttls() {
        let server = RedisServer::start();
        let l = Lifetimes {
            ttl: Duration::from_secs(60),
            absolute_ttl: Duration::from_secs(5),
            max_size: 8192,
            touch_after: Duration::ZERO,
        };
        let s = store(server.port(), 2, 3, l);
        let id = new_id();
        let p = WritePlan {
            target: Target::Create(id.clone()),
            ops: vec![
                set("user", "\"ann\""),
                Op::Incr(f("n"), 2),
                flash("msg", "\"hi\""),
            ],
            max_age: Some(600),
            revision: None,
            owner: Default::default(),
            client: None,
        };
        assert_eq!(apply(&s, p).await, WriteOutcome::Applied);

        let sk = id.store_key();
        assert_ne!(sk, id.as_str());
        let data_key = format!("test:{{{sk}}}");
        let flash_key = format!("test:{{{sk}}}:flash");
        let mut db_s = server.client(2);
        let mut db_n = server.client(3);
        assert_eq!(session_keys(&mut db_s), vec![data_key.clone()]);
        // The create left its write token behind, in the session's hash slot, and it
        // dies no later than the session.
        let tokens = db_s.keys("*:w:*");
        assert_eq!(tokens.len(), 1, "{tokens:?}");
        assert!(tokens[0].starts_with(&format!("{data_key}:w:")));
        let token_ttl = db_s.pttl(&tokens[0]);
        assert!(
            token_ttl > 0 && token_ttl <= db_s.pttl(&data_key) + 5,
            "{token_ttl}"
        );
        assert_eq!(db_n.keys("*"), vec![flash_key.clone()]);
        for db in [0, 1] {
            assert!(server.client(db).keys("*").is_empty(), "db {db} untouched");
        }
        for key in db_s.keys("*").iter().chain(db_n.keys("*").iter()) {
            assert!(key.starts_with("test:"));
            assert!(!key.contains(id.as_str()), "raw id in a key");
        }

        let hash = db_s.hgetall(&data_key);
        assert_eq!(
            hash.keys().cloned().collect::<Vec<_>>(),
            vec!["\"n\"", "\"user\"", "created", "max_age", "seen"]
        );
        // A creation is its first refresh.
        assert_eq!(hash["seen"], hash["created"]);
        assert_eq!(hash["\"user\""], "\"ann\"");
        assert_eq!(hash["\"n\""], "2");
        assert_eq!(hash["max_age"], "600");
        let created: u64 = hash["created"].parse().expect("unix ms");
        let now_ms = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .expect("clock")
            .as_millis() as u64;
        assert!(created.abs_diff(now_ms) < 5_000);
        assert_eq!(db_n.hgetall(&flash_key), fields(&[("msg", "\"hi\"")]));

        // TTL = min(idle 600 s, absolute 5 s left).
        for (c, key) in [(&mut db_s, &data_key), (&mut db_n, &flash_key)] {
            let ttl = c.pttl(key);
            assert!(ttl > 0 && ttl <= 5_000, "{key}: {ttl}");
        }

        // Loading consumes the flash key and keeps the TTL within the absolute bound.
        let got = load(&s, &id).await.expect("exists");
        assert_eq!(got.flash, fields(&[("msg", "\"hi\"")]));
        assert!(db_n.keys("*").is_empty());
        let ttl = db_s.pttl(&data_key);
        assert!(ttl > 0 && ttl <= 5_000, "{ttl}");
    }

    #[tokio::test]
    async fn every_key_has_an_expiry() {
        let server = RedisServer::start();
        let l = Lifetimes {
            ttl: Duration::from_secs(30),
            absolute_ttl: Duration::from_secs(3600),
            max_size: 8192,
            touch_after: Duration::ZERO,
        };
        let s = store(server.port(), 0, 1, l);
        let a = create(&s, vec![set("n", "9223372036854775807"), flash("f", "1")]).await;
        let b = new_id();
        let p = plan(
            Target::Move {
                from: a.clone(),
                to: b.clone(),
            },
            vec![Op::Incr(f("m"), 5)],
        );
        assert_eq!(apply(&s, p).await, WriteOutcome::Applied);
        let p = plan(Target::Existing(b.clone()), vec![Op::Incr(f("n"), 1)]);
        assert!(matches!(rejected(&s, p).await, ApplyError::Overflow { .. }));
        let c = create(&s, vec![]).await;
        let p = plan(
            Target::DestroyThenCreate {
                old: c,
                new: new_id(),
            },
            vec![flash("x", "1"), Op::Incr(f("k"), 1)],
        );
        assert_eq!(apply(&s, p).await, WriteOutcome::Applied);

        let mut total = 0;
        for db in [0, 1] {
            let mut c = server.client(db);
            for key in c.keys("*") {
                assert!(!key.ends_with(":tmp"), "scratch key left behind");
                let ttl = c.pttl(&key);
                assert!(ttl > 0 && ttl <= 30_000, "{key}: {ttl}");
                if !key.contains(":w:") {
                    total += 1;
                }
            }
        }
        // b (data + flash) and the recreated session (data + flash).
        assert_eq!(total, 4);
    }

    #[tokio::test]
    async fn one_db_for_both() {
        let server = RedisServer::start();
        let s = store(server.port(), 0, 0, lifetimes());
        let id = create(&s, vec![set("a", "1"), flash("f", "1")]).await;
        assert_eq!(session_keys(&mut server.client(0)).len(), 2);
        let got = load(&s, &id).await.expect("exists");
        assert_eq!(got.flash, fields(&[("f", "1")]));
        assert_eq!(session_keys(&mut server.client(0)).len(), 1);
        s.bounded(s.engine().check_databases())
            .await
            .expect("db 0 always works");
        s.ping().await.expect("ping");
    }

    #[tokio::test]
    async fn missing_database_is_reported() {
        let server = RedisServer::start_with(&["--databases", "2"]);
        let ok = store(server.port(), 1, 0, lifetimes());
        ok.bounded(ok.engine().check_databases())
            .await
            .expect("dbs 0 and 1 exist");
        ok.ping().await.expect("ping");

        let bad = store(server.port(), 1, 5, lifetimes());
        let msg = match bad.bounded(bad.engine().check_databases()).await {
            Err(StoreError::Unavailable(msg)) => msg,
            other => panic!("expected Unavailable, got {other:?}"),
        };
        assert!(
            msg.starts_with("store.storage.db_notifications: 5 is not available on this Redis ("),
            "{msg}"
        );
        assert!(msg.contains("`databases`"), "{msg}");
        assert!(matches!(bad.ping().await, Err(StoreError::Unavailable(_))));
        // Calls fail clearly too, and never write anything half-way.
        let id = new_id();
        match bad
            .apply(&plan(Target::Create(id.clone()), vec![set("a", "1")]))
            .await
        {
            Err(StoreError::Unavailable(msg)) => {
                assert!(msg.contains("store.storage.db_notifications"), "{msg}")
            }
            other => panic!("expected Unavailable, got {other:?}"),
        }
        for db in [0, 1] {
            assert!(
                server.client(db).keys("*").is_empty(),
                "db {db}: half-written"
            );
        }
    }

    #[tokio::test]
    async fn url_settings_work() {
        let server = RedisServer::start();
        let mut cfg = store_config(1, 2, 3);
        redis_options(&mut cfg).topology =
            RedisTopology::Url(session_sidecar::config::Secret(server.url()));
        let s = redis_new(&cfg, lifetimes()).expect("store");
        let id = create(&s, vec![set("a", "1")]).await;
        assert!(load(&s, &id).await.is_some());
        assert_eq!(session_keys(&mut server.client(2)).len(), 1);
    }

    #[tokio::test]
    async fn unix_socket_url_works() {
        let dir = tempfile::tempdir().expect("temp dir");
        let sock = dir.path().join("redis.sock");
        let sock = sock.to_str().expect("utf-8 path");
        let server = RedisServer::start_with(&["--unixsocket", sock]);
        let mut cfg = store_config(1, 2, 3);
        redis_options(&mut cfg).topology = RedisTopology::Url(session_sidecar::config::Secret(
            format!("redis+unix://{sock}"),
        ));
        let s = redis_new(&cfg, lifetimes()).expect("store");
        let id = create(&s, vec![set("a", "1"), flash("f", "1")]).await;
        assert_eq!(
            load(&s, &id).await.expect("exists").flash,
            fields(&[("f", "1")])
        );
        assert_eq!(session_keys(&mut server.client(2)).len(), 1);
    }

    /// Retry `f` until it succeeds or `within` passes.
    async fn eventually<T, Fut: Future<Output = Result<T, StoreError>>>(
        within: Duration,
        mut f: impl FnMut() -> Fut,
    ) -> T {
        let deadline = Instant::now() + within;
        loop {
            match f().await {
                Ok(v) => return v,
                Err(e) if Instant::now() < deadline => {
                    assert!(is_unavailable(&e), "{e:?}");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
                Err(e) => panic!("store did not recover: {e}"),
            }
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn starts_while_redis_is_down() {
        let port = backing::free_port();
        let mut cfg = store_config(port, 0, 1);
        cfg.timeout = Duration::from_millis(300);
        let s = redis_new(&cfg, lifetimes()).expect("no I/O at construction");
        let s = timed(s, cfg.timeout);
        for _ in 0..3 {
            let started = Instant::now();
            let e = s.load(&new_id()).await.expect_err("nothing listens");
            assert!(is_unavailable(&e), "{e:?}");
            assert!(
                started.elapsed() < Duration::from_millis(600),
                "{:?}",
                started.elapsed()
            );
            let e = s.ping().await.expect_err("nothing listens");
            assert!(is_unavailable(&e), "{e:?}");
        }
        let _server = RedisServer::start_on(port, &[]);
        let id = eventually(Duration::from_secs(5), || async {
            let id = new_id();
            s.apply(&plan(Target::Create(id.clone()), vec![set("a", "1")]))
                .await
                .map(|_| id)
        })
        .await;
        assert!(load(&s, &id).await.is_some());
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn survives_a_redis_outage() {
        let mut server = RedisServer::start();
        let mut cfg = store_config(server.port(), 0, 1);
        cfg.timeout = Duration::from_millis(300);
        let s = timed(redis_new(&cfg, lifetimes()).expect("store"), cfg.timeout);
        // Connect every slot before the outage.
        for _ in 0..8 {
            let id = create(&s, vec![set("a", "1")]).await;
            assert!(load(&s, &id).await.is_some());
        }

        server.kill();
        for _ in 0..6 {
            let started = Instant::now();
            let e = s.load(&new_id()).await.expect_err("redis is down");
            assert!(is_unavailable(&e), "{e:?}");
            let e = s
                .apply(&plan(Target::Create(new_id()), vec![set("a", "1")]))
                .await
                .expect_err("redis is down");
            assert!(is_unavailable(&e), "{e:?}");
            assert!(
                started.elapsed() < Duration::from_millis(1000),
                "{:?}",
                started.elapsed()
            );
        }

        server.restart();
        // The same store object recovers by itself.
        eventually(Duration::from_secs(5), || s.ping()).await;
        for _ in 0..8 {
            let id = eventually(Duration::from_secs(5), || async {
                let id = new_id();
                s.apply(&plan(Target::Create(id.clone()), vec![set("a", "1")]))
                    .await
                    .map(|_| id)
            })
            .await;
            assert!(
                eventually(Duration::from_secs(5), || s.load(&id))
                    .await
                    .is_some()
            );
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_frozen_redis_costs_at_most_the_timeout() {
        let server = RedisServer::start();
        let mut cfg = store_config(server.port(), 0, 1);
        cfg.timeout = Duration::from_millis(300);
        let s = timed(redis_new(&cfg, lifetimes()).expect("store"), cfg.timeout);
        let id = create(&s, vec![set("a", "1")]).await;

        server.pause();
        for _ in 0..3 {
            let started = Instant::now();
            let e = s.load(&id).await.expect_err("redis is frozen");
            assert!(matches!(e, StoreError::Timeout), "{e:?}");
            let e = s
                .apply(&plan(
                    Target::Existing(id.clone()),
                    vec![Op::Incr(f("n"), 1)],
                ))
                .await
                .expect_err("redis is frozen");
            assert!(is_unavailable(&e), "{e:?}");
            assert!(
                started.elapsed() < Duration::from_millis(900),
                "{:?}",
                started.elapsed()
            );
        }
        server.resume();
        eventually(Duration::from_secs(5), || s.ping()).await;
        // The Incrs sent while frozen may or may not have run (their outcome was unknown
        // to the caller), but each ran at most once: never retried blindly.
        let got = eventually(Duration::from_secs(5), || s.load(&id))
            .await
            .expect("exists");
        let n: i64 = got
            .data
            .get(&f("n"))
            .map_or(0, |v| v.parse().expect("integer"));
        assert!((0..=3).contains(&n), "n = {n}");
    }

    fn owner(name: &str) -> session_sidecar::store::Owner {
        session_sidecar::store::Owner::from_literal(format!("\"{name}\""))
    }

    /// Create a session attached to `o` as the pipeline does: index first, then the
    /// session, with the same bound.
    async fn create_owned<S: SessionStore>(
        s: &S,
        o: &session_sidecar::store::Owner,
        bound_ms: u64,
    ) -> SessionId {
        let id = new_id();
        s.index_add(&o.key(), &id.store_key(), bound_ms)
            .await
            .expect("index_add");
        let p = WritePlan {
            owner: session_sidecar::store::OwnerChange::Attach {
                owner: o.clone(),
                bound_ms,
            },
            client: Some(session_sidecar::store::ClientInfo::new(
                "192.0.2.1".into(),
                b"test-agent",
            )),
            ..plan(
                Target::Create(id.clone()),
                vec![set("a", "1"), flash("f", "1")],
            )
        };
        assert_eq!(apply(s, p).await, WriteOutcome::Applied);
        id
    }

    #[tokio::test]
    async fn an_owner_index_is_gone_once_its_bound_passed_and_its_session_expired() {
        let server = RedisServer::start();
        let l = Lifetimes {
            ttl: Duration::from_secs(1),
            ..lifetimes()
        };
        let s = store(server.port(), 2, 3, l);
        let o = owner("ivy");
        let bound = session_sidecar::store::owners::bound_for(1000, 3_600_000);
        let id = create_owned(&s, &o, bound).await;
        let index_key = format!("test:{{o.{}}}", o.key().as_str());
        let mut db_s = server.client(2);
        // The index is a sorted set in db_sessions, expiring with its latest bound:
        // the session's bound plus the margin.
        assert_eq!(db_s.cmd::<String>(&["TYPE", &index_key]), "zset");
        let members: Vec<String> = db_s.cmd(&["ZRANGE", &index_key, "0", "-1"]);
        assert_eq!(members, vec![id.store_key()]);
        let ttl = db_s.pttl(&index_key);
        let margin = session_sidecar::store::owners::with_margin(bound) as i64;
        assert!(ttl > 0 && ttl <= margin, "{ttl}");
        // The session expires with its idle lifetime, before its bound.
        let session_ttl = db_s.pttl(&format!("test:{{{}}}", id.store_key()));
        assert!(session_ttl > 0 && session_ttl <= 1000, "{session_ttl}");
        tokio::time::sleep(Duration::from_millis(margin as u64 + 300)).await;
        assert_eq!(load(&s, &id).await, None);
        assert!(!db_s.exists(&index_key), "the index outlived its bound");
        for db in [0, 1, 2, 3] {
            assert!(
                server.client(db).keys("*").is_empty(),
                "db {db}: {:?}",
                server.client(db).keys("*")
            );
        }
        assert!(s.index_members(&o.key()).await.expect("members").is_empty());
    }

    #[tokio::test]
    async fn no_key_names_an_owner_or_a_session_id() {
        let server = RedisServer::start();
        let s = store(server.port(), 0, 1, lifetimes());
        let name = "alice.secret@example.com";
        let o = owner(name);
        let first = create_owned(&s, &o, 90_000).await;
        // Regenerate, load, extend the bound: every key the engine writes.
        let to = new_id();
        let p = plan(
            Target::Move {
                from: first.clone(),
                to: to.clone(),
            },
            vec![Op::Incr(f("n"), 1)],
        );
        assert_eq!(apply(&s, p).await, WriteOutcome::Applied);
        s.index_add(&o.key(), &to.store_key(), 90_000)
            .await
            .expect("index_add");
        assert!(load(&s, &to).await.is_some());
        assert!(
            s.extend_bound(&to.store_key(), 90_000)
                .await
                .expect("extend")
        );
        let mut keys = Vec::new();
        for db in [0, 1] {
            keys.extend(server.client(db).keys("*"));
        }
        assert!(keys.len() >= 2, "{keys:?}");
        let index_key = format!("test:{{o.{}}}", o.key().as_str());
        assert!(keys.contains(&index_key), "{keys:?}");
        for key in &keys {
            assert!(key.starts_with("test:{"), "{key}");
            for clear in [name, "alice", first.as_str(), to.as_str()] {
                assert!(!key.contains(clear), "{key} shows {clear}");
            }
        }
        // The index holds store keys, never ids.
        let members: Vec<String> = server.client(0).cmd(&["ZRANGE", &index_key, "0", "-1"]);
        assert_eq!(
            sorted(members),
            sorted(vec![first.store_key(), to.store_key()])
        );
    }

    fn sorted(mut v: Vec<String>) -> Vec<String> {
        v.sort();
        v
    }

    #[tokio::test]
    async fn a_session_written_before_owners_still_loads() {
        let server = RedisServer::start();
        let s = store(server.port(), 0, 1, lifetimes());
        let mut db_s = server.client(0);
        let time: Vec<String> = db_s.cmd(&["TIME"]);
        let now_ms: u64 = time[0].parse::<u64>().expect("seconds") * 1000
            + time[1].parse::<u64>().expect("µs") / 1000;
        let created = (now_ms - 5_000).to_string();
        // The layout before owners and touch: `created` (and `max_age`), no `seen`,
        // `owner`, `bound`, `ip` or `ua`.
        let (old, kept) = (new_id(), new_id());
        for id in [&old, &kept] {
            let key = format!("test:{{{}}}", id.store_key());
            db_s.cmd::<i64>(&["HSET", &key, "created", &created, "\"a\"", "1"]);
            db_s.cmd::<i64>(&["PEXPIRE", &key, "5000"]);
        }
        // A no-touch load reads it and writes nothing.
        let got = s
            .load_touch(&kept, session_sidecar::store::Touch::Keep)
            .await
            .expect("load")
            .expect("live");
        assert_eq!(got.data, fields(&[("a", "1")]));
        let kept_key = format!("test:{{{}}}", kept.store_key());
        assert!(!db_s.hgetall(&kept_key).contains_key("seen"));
        assert!(db_s.pttl(&kept_key) <= 5000);
        // A refreshing load is due (no `seen`): it refreshes and records the refresh.
        let got = load(&s, &old).await.expect("live");
        assert_eq!(got.data, fields(&[("a", "1")]));
        assert_eq!((got.owner, got.index_due, got.max_age), (None, None, None));
        let key = format!("test:{{{}}}", old.store_key());
        let hash = db_s.hgetall(&key);
        let seen: u64 = hash["seen"].parse().expect("unix ms");
        assert!(seen >= now_ms, "{seen} < {now_ms}");
        let ttl = db_s.pttl(&key);
        assert!(ttl > 55_000 && ttl <= 60_000, "{ttl}");
        // The admin view and writes work on it too.
        let info = s
            .session_info(&[old.store_key(), kept.store_key()])
            .await
            .expect("session_info");
        let (a, b) = (
            info[0].as_ref().expect("live"),
            info[1].as_ref().expect("live"),
        );
        assert_eq!(a.created, (now_ms - 5_000) / 1000);
        assert_eq!(a.last_seen, seen / 1000);
        // Never refreshed since the upgrade: last seen at its creation.
        assert_eq!(b.last_seen, b.created);
        assert_eq!((a.owner.clone(), a.client.clone()), (None, None));
        let p = plan(Target::Existing(old.clone()), vec![Op::Incr(f("a"), 1)]);
        assert_eq!(apply(&s, p).await, WriteOutcome::Applied);
        assert_eq!(
            load(&s, &old).await.expect("live").data,
            fields(&[("a", "2")])
        );
    }
}

/// Memcached-specific behaviour: layout, long TTLs, hashing over servers, outages, CAS.
mod memcached_only {
    use super::*;

    fn store(servers: &[&MemcachedServer], l: Lifetimes) -> TimedStore<MemcachedStore> {
        timed(memcached_new(&memcached_config(servers), l), TIMEOUT)
    }

    fn is_unavailable(e: &StoreError) -> bool {
        matches!(e, StoreError::Unavailable(_) | StoreError::Timeout)
    }

    /// Loads of a remember-me session send their TTL correction without waiting; the
    /// replies owed are read before the next exchange on that connection, so replies
    /// never shift onto the wrong request (one connection makes every load share it).
    #[tokio::test]
    async fn unanswered_ttl_corrections_never_desync_the_connection() {
        let server = MemcachedServer::start();
        let mut cfg = memcached_config(&[&server]);
        memcached_options(&mut cfg).max_connections = 1;
        let s = memcached_new(&cfg, lifetimes());
        let remember = new_id();
        let p = WritePlan {
            target: Target::Create(remember.clone()),
            ops: vec![set("who", "\"remember\"")],
            max_age: Some(600),
            revision: None,
            owner: Default::default(),
            client: None,
        };
        assert_eq!(apply(&s, p).await, WriteOutcome::Applied);
        let plain = create(&s, vec![set("who", "\"plain\"")]).await;
        for i in 0..50 {
            let r = load(&s, &remember).await.expect("remember-me session");
            assert_eq!(
                r.data.get(&f("who")).map(String::as_str),
                Some("\"remember\"")
            );
            let p = load(&s, &plain).await.expect("plain session");
            assert_eq!(p.data.get(&f("who")).map(String::as_str), Some("\"plain\""));
            if i % 10 == 0 {
                let w = plan(Target::Existing(plain.clone()), vec![Op::Incr(f("n"), 1)]);
                assert_eq!(apply(&s, w).await, WriteOutcome::Applied);
            }
        }
        let p = load(&s, &plain).await.expect("plain session");
        assert_eq!(p.data.get(&f("n")).map(String::as_str), Some("5"));
    }

    /// `cmd_get`, `cmd_touch` and `cmd_set` of the server since it started.
    fn command_counts(server: &MemcachedServer) -> [u64; 3] {
        server.counters(["cmd_get", "cmd_touch", "cmd_set"])
    }

    fn deltas(before: [u64; 3], after: [u64; 3]) -> [u64; 3] {
        [0, 1, 2].map(|i| after[i] - before[i])
    }

    fn based_on(loaded: LoadedSession, target: Target, ops: Vec<Op>) -> WritePlan {
        WritePlan {
            target,
            ops,
            max_age: None,
            revision: Some(
                loaded
                    .revision
                    .expect("memcached loads report the version they read"),
            ),
            owner: Default::default(),
            client: None,
        }
    }

    /// A write handed the version its request loaded does not read the session again:
    /// a read + write request costs two round trips, not three
    /// (docs/performance.md#what-changed-each-measured-side-by-side-before-it-landed).
    #[tokio::test]
    async fn a_write_based_on_the_current_load_does_not_read_again() {
        let server = MemcachedServer::start();
        let s = store(&[&server], lifetimes());
        let id = create(&s, vec![set("n", "1")]).await;
        let loaded = load(&s, &id).await.expect("session");

        let before = command_counts(&server);
        let w = based_on(
            loaded,
            Target::Existing(id.clone()),
            vec![Op::Incr(f("n"), 1)],
        );
        assert_eq!(apply(&s, w).await, WriteOutcome::Applied);
        assert_eq!(
            deltas(before, command_counts(&server)),
            [0, 0, 1],
            "one ms, no read"
        );
        assert_eq!(
            load(&s, &id).await.expect("session").data,
            fields(&[("n", "2")])
        );

        // Without the base the same write reads first.
        let before = command_counts(&server);
        let w = plan(Target::Existing(id.clone()), vec![Op::Incr(f("n"), 1)]);
        assert_eq!(apply(&s, w).await, WriteOutcome::Applied);
        assert_eq!(deltas(before, command_counts(&server)), [1, 0, 1]);
        assert_eq!(
            load(&s, &id).await.expect("session").data,
            fields(&[("n", "3")])
        );
    }

    /// A base that is no longer current (another request wrote, or destroyed the session,
    /// after this one loaded) is never trusted: the CAS fails and the write starts over
    /// from a fresh read, so no update is lost and no session is revived.
    #[tokio::test]
    async fn a_stale_base_loses_no_update_and_revives_nothing() {
        let server = MemcachedServer::start();
        let s = store(&[&server], lifetimes());
        let id = create(&s, vec![set("n", "1"), set("keep", "true")]).await;
        let stale = load(&s, &id).await.expect("session");
        let w = plan(
            Target::Existing(id.clone()),
            vec![set("n", "5"), set("other", "1")],
        );
        assert_eq!(apply(&s, w).await, WriteOutcome::Applied);

        let w = based_on(
            stale,
            Target::Existing(id.clone()),
            vec![Op::Incr(f("n"), 1)],
        );
        assert_eq!(apply(&s, w).await, WriteOutcome::Applied);
        assert_eq!(
            load(&s, &id).await.expect("session").data,
            fields(&[("keep", "true"), ("n", "6"), ("other", "1")])
        );

        let stale = load(&s, &id).await.expect("session");
        assert_eq!(
            apply(&s, plan(Target::Destroy(id.clone()), vec![])).await,
            WriteOutcome::Applied
        );
        let w = based_on(stale, Target::Existing(id.clone()), vec![set("n", "7")]);
        assert_eq!(apply(&s, w).await, WriteOutcome::Gone);
        assert_eq!(load(&s, &id).await, None);
        assert_eq!(server.items(), 0);
    }

    #[tokio::test]
    async fn key_layout_and_ttls() {
        let server = MemcachedServer::start();
        let l = Lifetimes {
            ttl: Duration::from_secs(60),
            absolute_ttl: Duration::from_secs(5),
            max_size: 8192,
            touch_after: Duration::ZERO,
        };
        let s = store(&[&server], l);
        let id = new_id();
        let p = WritePlan {
            target: Target::Create(id.clone()),
            ops: vec![set("user", "\"ann\""), flash("msg", "\"hi\"")],
            max_age: Some(600),
            revision: None,
            owner: Default::default(),
            client: None,
        };
        assert_eq!(apply(&s, p).await, WriteOutcome::Applied);

        let sk = id.store_key();
        let data_key = format!("test:{sk}");
        let flash_key = format!("test:{sk}:flash");
        assert_eq!(server.items(), 2);
        let value = String::from_utf8(server.get(&data_key).expect("session item")).unwrap();
        let (header, pairs) = value.split_once('\n').expect("header line");
        let mut parts = header.split(' ');
        assert_eq!(parts.next(), Some("S2"));
        let created: u64 = parts.next().unwrap().parse().expect("unix ms");
        let now_ms = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_millis() as u64;
        assert!(created.abs_diff(now_ms) < 5_000);
        assert_eq!(parts.next(), Some("600"));
        // Refreshed at creation; no bound, no owner, no client record.
        assert_eq!(parts.next(), Some(created.to_string().as_str()));
        assert_eq!(parts.collect::<Vec<_>>(), ["-", "-"]);
        assert_eq!(pairs, "6:\"user\",5:\"ann\",");
        assert!(!value.contains(id.as_str()), "raw id stored");
        assert_eq!(
            server.get(&flash_key).expect("flash item"),
            b"F1\n5:\"msg\",4:\"hi\","
        );
        // TTL = min(600 s idle, 5 s absolute) + one tick of slack.
        for key in [&data_key, &flash_key] {
            let ttl = server.ttl(key).expect("exists");
            assert!((4..=6).contains(&ttl), "{ttl}");
        }

        let got = load(&s, &id).await.expect("exists");
        assert_eq!(got.flash, fields(&[("msg", "\"hi\"")]));
        assert_eq!(server.get(&flash_key), None, "flash consumed");
        let ttl = server.ttl(&data_key).expect("exists");
        assert!(
            (1..=6).contains(&ttl),
            "load keeps the absolute bound: {ttl}"
        );
        s.ping().await.expect("ping");
    }

    #[tokio::test]
    async fn forty_five_day_ttl_is_sent_as_a_unix_time() {
        let server = MemcachedServer::start();
        let day = 86_400;
        let l = Lifetimes {
            ttl: Duration::from_secs(45 * day),
            absolute_ttl: Duration::from_secs(90 * day),
            max_size: 8192,
            touch_after: Duration::ZERO,
        };
        let s = store(&[&server], l);
        let id = create(&s, vec![set("remember", "true"), flash("f", "1")]).await;
        let key = format!("test:{}", id.store_key());
        // Sent as a relative 3 888 001 s, memcached would read a date in 1970 and drop
        // the item at once.
        for k in [key.clone(), format!("{key}:flash")] {
            let ttl = server.ttl(&k).expect("stored");
            assert!(
                (45 * day as i64 - 5..=45 * day as i64 + 2).contains(&ttl),
                "{ttl}"
            );
        }
        tokio::time::sleep(Duration::from_millis(2_100)).await;
        let got = load(&s, &id).await.expect("still there after seconds");
        assert_eq!(got.data, fields(&[("remember", "true")]));
        assert!(got.remaining > 89 * day, "{}", got.remaining);
        let ttl = server.ttl(&key).expect("touched, still there");
        assert!(ttl > 45 * day as i64 - 5, "{ttl}");
        // A max_age above 30 days takes the same path.
        let p = WritePlan {
            target: Target::Existing(id.clone()),
            ops: vec![],
            max_age: Some(40 * day),
            revision: None,
            owner: Default::default(),
            client: None,
        };
        assert_eq!(apply(&s, p).await, WriteOutcome::Applied);
        assert!(load(&s, &id).await.is_some());
        let ttl = server.ttl(&key).expect("still there");
        assert!(
            (40 * day as i64 - 5..=40 * day as i64 + 2).contains(&ttl),
            "{ttl}"
        );
    }

    #[tokio::test]
    async fn sessions_spread_over_three_servers_with_their_flash() {
        let servers = [
            MemcachedServer::start(),
            MemcachedServer::start(),
            MemcachedServer::start(),
        ];
        let refs: Vec<&MemcachedServer> = servers.iter().collect();
        let s = store(&refs, lifetimes());
        let mut per_server = [0u64; 3];
        for _ in 0..90 {
            let id = create(&s, vec![set("a", "1"), flash("f", "1")]).await;
            let i = s.engine().server_for(&id);
            per_server[i] += 1;
            let key = format!("test:{}", id.store_key());
            assert!(servers[i].get(&key).is_some(), "session on its server");
            assert!(
                servers[i].get(&format!("{key}:flash")).is_some(),
                "flash beside it"
            );
        }
        for (i, server) in servers.iter().enumerate() {
            assert!(per_server[i] >= 15, "unbalanced: {per_server:?}");
            assert_eq!(server.items(), 2 * per_server[i]);
        }
        s.ping().await.expect("every server answers");
    }

    /// Create sessions until each server holds at least `n`; returned by server.
    async fn sessions_on_each(
        s: &TimedStore<MemcachedStore>,
        servers: usize,
        n: usize,
    ) -> Vec<Vec<SessionId>> {
        let mut by_server = vec![Vec::new(); servers];
        while by_server.iter().any(|v| v.len() < n) {
            let id = create(s, vec![set("a", "1")]).await;
            by_server[s.engine().server_for(&id)].push(id);
        }
        by_server
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_dead_server_fails_only_its_sessions_and_is_used_again_when_back() {
        let mut servers = [
            MemcachedServer::start(),
            MemcachedServer::start(),
            MemcachedServer::start(),
        ];
        let refs: Vec<&MemcachedServer> = servers.iter().collect();
        let mut cfg = memcached_config(&refs);
        cfg.timeout = Duration::from_millis(300);
        let s = timed(memcached_new(&cfg, lifetimes()), cfg.timeout);
        let by_server = sessions_on_each(&s, 3, 3).await;

        servers[1].kill();
        for id in &by_server[1] {
            let started = Instant::now();
            let e = s.load(id).await.expect_err("its server is down");
            assert!(is_unavailable(&e), "{e:?}");
            let e = s
                .apply(&plan(Target::Existing(id.clone()), vec![set("b", "2")]))
                .await
                .expect_err("its server is down");
            assert!(is_unavailable(&e), "{e:?}");
            assert!(
                started.elapsed() < Duration::from_millis(700),
                "{:?}",
                started.elapsed()
            );
        }
        assert!(s.ping().await.is_err(), "readiness reports the dead server");
        for i in [0, 2] {
            for id in &by_server[i] {
                assert!(load(&s, id).await.is_some(), "server {i} unaffected");
                let p = plan(Target::Existing(id.clone()), vec![Op::Incr(f("n"), 1)]);
                assert_eq!(apply(&s, p).await, WriteOutcome::Applied);
            }
        }
        // New sessions routed to the live servers are created; those routed to the dead
        // one fail (no silent re-routing: another sidecar would not find them).
        let mut created = 0;
        let mut refused = 0;
        for _ in 0..30 {
            match s
                .apply(&plan(Target::Create(new_id()), vec![set("a", "1")]))
                .await
            {
                Ok(WriteOutcome::Applied) => created += 1,
                Err(e) if is_unavailable(&e) => refused += 1,
                other => panic!("{other:?}"),
            }
        }
        assert!(
            created > 0 && refused > 0,
            "{created} created, {refused} refused"
        );

        servers[1].restart();
        // Used again at once: its old sessions are gone (memory only), new ones work.
        for id in &by_server[1] {
            assert_eq!(load(&s, id).await, None);
        }
        let again = sessions_on_each(&s, 3, 2).await;
        for id in &again[1] {
            assert!(load(&s, id).await.is_some());
        }
        s.ping().await.expect("all three answer again");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn starts_while_memcached_is_down() {
        let port = backing::free_port();
        let mut cfg = memcached_config(&[]);
        memcached_options(&mut cfg).servers = vec![format!("127.0.0.1:{port}")];
        cfg.timeout = Duration::from_millis(300);
        let s = timed(memcached_new(&cfg, lifetimes()), cfg.timeout);
        let e = s.load(&new_id()).await.expect_err("nothing listens");
        assert!(is_unavailable(&e), "{e:?}");
        assert!(s.ping().await.is_err());
        let _server = MemcachedServer::start_on(port);
        let id = create(&s, vec![set("a", "1")]).await;
        assert!(load(&s, &id).await.is_some());
    }

    /// The configuration refuses every prefix that would make invalid memcached keys
    /// (the constructor asserts it in debug builds); the longest accepted one builds.
    #[test]
    fn the_longest_accepted_key_prefix_makes_valid_memcached_keys() {
        let mut cfg = memcached_config(&[]);
        memcached_options(&mut cfg).servers = vec!["127.0.0.1:11211".into()];
        cfg.key_prefix = "p".repeat(MAX_KEY_PREFIX_LEN);
        memcached_new(&cfg, lifetimes());
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn cas_contention_200_increments() {
        let server = MemcachedServer::start();
        // 4 connections as the other tests, then 16: the default `max_connections`.
        for max_connections in [4, 16] {
            let mut cfg = memcached_config(&[&server]);
            memcached_options(&mut cfg).max_connections = max_connections;
            // 200 writers queue for at most 16 connections: on a starved CI machine the
            // last ones can wait longer than the 500 ms default, which would be a 503
            // for latency, not the lost update this test is about.
            cfg.timeout = Duration::from_secs(10);
            let s = Arc::new(timed(memcached_new(&cfg, lifetimes()), cfg.timeout));
            let id = create(&*s, vec![]).await;
            s.engine().reset_cas_retries();
            let tasks: Vec<_> = (0..200)
                .map(|_| {
                    let s = s.clone();
                    let id = id.clone();
                    tokio::spawn(async move {
                        let p = plan(Target::Existing(id), vec![Op::Incr(f("n"), 1)]);
                        s.apply(&p).await.unwrap_or_else(|e| panic!("apply: {e}"))
                    })
                })
                .collect();
            for t in tasks {
                assert_eq!(t.await.expect("task"), WriteOutcome::Applied);
            }
            let stats = s.engine().cas_retries();
            println!(
                "memcached 200-way Incr (max_connections {max_connections}): {} writes, {} CAS \
                 retries, max {} per write, mean {:.2}",
                stats.writes,
                stats.retries,
                stats.max_retries,
                stats.mean()
            );
            assert_eq!(stats.writes, 200);
            assert_eq!(
                load(&*s, &id).await.expect("exists").data,
                fields(&[("n", "200")])
            );
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn destroy_is_never_undone_by_concurrent_writers() {
        let server = MemcachedServer::start();
        let s = Arc::new(store(&[&server], lifetimes()));
        for _ in 0..5 {
            let id = create(&*s, vec![set("a", "1")]).await;
            let writers: Vec<_> = (0..20)
                .map(|i| {
                    let s = s.clone();
                    let id = id.clone();
                    tokio::spawn(async move {
                        let p = plan(Target::Existing(id), vec![Op::Incr(f(&format!("k{i}")), 1)]);
                        s.apply(&p).await.unwrap_or_else(|e| panic!("apply: {e}"))
                    })
                })
                .collect();
            tokio::task::yield_now().await;
            assert_eq!(
                apply(&*s, plan(Target::Destroy(id.clone()), vec![])).await,
                WriteOutcome::Applied
            );
            for w in writers {
                w.await.expect("task");
            }
            assert_eq!(load(&*s, &id).await, None, "revived");
        }
        assert_eq!(server.items(), 0);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn move_under_concurrent_writes_loses_nothing() {
        let servers = [MemcachedServer::start(), MemcachedServer::start()];
        let refs: Vec<&MemcachedServer> = servers.iter().collect();
        let s = Arc::new(store(&refs, lifetimes()));
        let from = create(&*s, vec![set("a", "1"), flash("old", "1")]).await;
        let writers: Vec<_> = (0..20)
            .map(|i| {
                let s = s.clone();
                let id = from.clone();
                tokio::spawn(async move {
                    let p = plan(Target::Existing(id), vec![set(&format!("k{i}"), "1")]);
                    s.apply(&p).await.expect("apply")
                })
            })
            .collect();
        let to = new_id();
        let p = plan(
            Target::Move {
                from: from.clone(),
                to: to.clone(),
            },
            vec![flash("new", "2")],
        );
        assert_eq!(apply(&*s, p).await, WriteOutcome::Applied);
        let mut applied = Vec::new();
        for (i, w) in writers.into_iter().enumerate() {
            if w.await.expect("task") == WriteOutcome::Applied {
                applied.push(f(&format!("k{i}")));
            }
        }
        let got = load(&*s, &to).await.expect("moved");
        // Every write that reported success is in the new session; none after the move.
        for k in &applied {
            assert!(got.data.contains_key(k), "{k} lost");
        }
        assert_eq!(got.data.len(), applied.len() + 1);
        assert_eq!(got.flash, fields(&[("old", "1"), ("new", "2")]));
        assert_eq!(load(&*s, &from).await, None);
        let items: u64 = servers.iter().map(|m| m.items()).sum();
        assert_eq!(items, 1, "only the new session's data item is left");
    }

    fn owner(name: &str) -> session_sidecar::store::Owner {
        session_sidecar::store::Owner::from_literal(format!("\"{name}\""))
    }

    fn unix_ms() -> u64 {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .expect("clock after 1970")
            .as_millis() as u64
    }

    /// `ms` of a raw value with a TTL, as another (e.g. older) sidecar would write it.
    fn raw_set(server: &MemcachedServer, key: &str, value: &[u8], ttl: u64) {
        use std::io::{Read, Write};
        let mut s = std::net::TcpStream::connect(("127.0.0.1", server.port())).expect("connect");
        s.set_read_timeout(Some(Duration::from_secs(3)))
            .expect("read timeout");
        let mut request = format!("ms {key} {} T{ttl}\r\n", value.len()).into_bytes();
        request.extend_from_slice(value);
        request.extend_from_slice(b"\r\n");
        s.write_all(&request).expect("write to memcached");
        let mut reply = Vec::new();
        let mut buf = [0u8; 64];
        while !reply.ends_with(b"\r\n") {
            match s.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => reply.extend_from_slice(&buf[..n]),
            }
        }
        assert_eq!(String::from_utf8_lossy(&reply), "HD\r\n", "raw ms");
    }

    /// A session attached to `o` as the pipeline does it: index first, then the session.
    async fn create_owned(
        s: &TimedStore<MemcachedStore>,
        o: &session_sidecar::store::Owner,
        bound_ms: u64,
    ) -> SessionId {
        let id = new_id();
        s.index_add(&o.key(), &id.store_key(), bound_ms)
            .await
            .expect("index_add");
        let p = WritePlan {
            owner: session_sidecar::store::OwnerChange::Attach {
                owner: o.clone(),
                bound_ms,
            },
            ..plan(Target::Create(id.clone()), vec![set("a", "1")])
        };
        assert_eq!(apply(s, p).await, WriteOutcome::Applied);
        id
    }

    /// The index item `<prefix>o.<owner key>` holds store keys and bounds (never the
    /// owner id), carries its latest bound as TTL, and is gone from memcached once that
    /// passed, like the session it covered.
    #[tokio::test]
    async fn an_owner_index_item_expires_after_its_bound_with_its_session() {
        use session_sidecar::store::owners::{bound_for, with_margin};
        let server = MemcachedServer::start();
        let l = Lifetimes {
            ttl: Duration::from_secs(1),
            ..lifetimes()
        };
        let s = store(&[&server], l);
        let o = owner("ivy@example.com");
        let bound = bound_for(1000, 3_600_000);
        let id = create_owned(&s, &o, bound).await;
        let index_key = format!("test:o.{}", o.key().as_str());
        let session_key = format!("test:{}", id.store_key());
        let value = String::from_utf8(server.get(&index_key).expect("index item")).unwrap();
        let (header, entries) = value.split_once('\n').expect("header");
        assert_eq!(header, "I1");
        let (member, at) = entries
            .strip_suffix('\n')
            .and_then(|e| e.split_once(' '))
            .expect("one entry");
        assert_eq!(member, id.store_key());
        let at: u64 = at.parse().expect("bound in unix ms");
        assert!(at.abs_diff(unix_ms() + with_margin(bound)) < 2_000, "{at}");
        assert!(!value.contains("ivy"), "owner id in the index");
        // Index: 1.875 s (rounded up, + 1 tick); session: its 1 s idle lifetime + 1 tick.
        let ttl = server.ttl(&index_key).expect("index TTL");
        assert!((1..=3).contains(&ttl), "{ttl}");
        let ttl = server.ttl(&session_key).expect("session TTL");
        assert!((1..=2).contains(&ttl), "{ttl}");
        let stored = String::from_utf8(server.get(&session_key).expect("session")).unwrap();
        assert!(stored.starts_with("S2 "), "{stored}");
        assert!(stored.contains("17:\"ivy@example.com\","), "owner literal");

        tokio::time::sleep(Duration::from_millis(with_margin(bound) + 2_300)).await;
        assert_eq!(server.get(&session_key), None, "session expired");
        assert_eq!(server.get(&index_key), None, "index item expired");
        assert_eq!(server.items(), 0);
        assert!(s.index_members(&o.key()).await.expect("members").is_empty());
    }

    /// Concurrent adds to one owner's index each land: the CAS loop re-reads and merges
    /// instead of overwriting (no lost member), on a fresh index (add race) and on an
    /// existing one (CAS race).
    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn concurrent_index_adds_all_land() {
        let server = MemcachedServer::start();
        let mut cfg = memcached_config(&[&server]);
        memcached_options(&mut cfg).max_connections = 16;
        // Latency on a loaded machine is not what this test is about.
        cfg.timeout = Duration::from_secs(10);
        let s = Arc::new(timed(memcached_new(&cfg, lifetimes()), cfg.timeout));
        let o = owner("jay");
        let mut all = Vec::new();
        for _round in 0..3 {
            let start = Arc::new(tokio::sync::Barrier::new(10));
            let members: Vec<String> = (0..10).map(|_| new_id().store_key()).collect();
            let tasks: Vec<_> = members
                .iter()
                .map(|m| {
                    let (s, o, m, start) = (s.clone(), o.clone(), m.clone(), start.clone());
                    tokio::spawn(async move {
                        start.wait().await;
                        s.index_add(&o.key(), &m, 60_000).await
                    })
                })
                .collect();
            for t in tasks {
                t.await.expect("task").expect("index_add");
            }
            all.extend(members);
            all.sort();
            let mut got = s.index_members(&o.key()).await.expect("members");
            got.sort();
            assert_eq!(got, all);
        }
        // Concurrent removals of different members: all gone, the index with them.
        let tasks: Vec<_> = all
            .iter()
            .map(|m| {
                let (s, o, m) = (s.clone(), o.clone(), m.clone());
                tokio::spawn(async move { s.index_remove(&o.key(), &[m]).await })
            })
            .collect();
        for t in tasks {
            t.await.expect("task").expect("index_remove");
        }
        assert!(s.index_members(&o.key()).await.expect("members").is_empty());
        assert_eq!(server.get(&format!("test:o.{}", o.key().as_str())), None);
    }

    /// A session item written before owners (`S1`: no refresh time, owner or client)
    /// still loads and delivers its flash, with and without `touch_after`; a refresh with
    /// `touch_after` (due: the refresh time is unknown) or a write stores it as `S2`.
    #[tokio::test]
    async fn a_session_written_in_the_old_format_still_loads() {
        let server = MemcachedServer::start();
        for touch_after in [Duration::ZERO, Duration::from_secs(10)] {
            let s = store(
                &[&server],
                Lifetimes {
                    touch_after,
                    ..lifetimes()
                },
            );
            let id = new_id();
            let key = format!("test:{}", id.store_key());
            let created = unix_ms() - 5_000;
            let old = format!("S1 {created} 600\n6:\"user\",5:\"ann\",");
            raw_set(&server, &key, old.as_bytes(), 60);
            raw_set(
                &server,
                &format!("{key}:flash"),
                b"F1\n5:\"msg\",4:\"hi\",",
                60,
            );

            let got = load(&s, &id).await.expect("the old item loads");
            assert_eq!(got.data, fields(&[("user", "\"ann\"")]));
            assert_eq!(got.flash, fields(&[("msg", "\"hi\"")]));
            assert_eq!(
                (got.max_age, got.owner, got.index_due),
                (Some(600), None, None)
            );
            assert!((3590..=3595).contains(&got.remaining), "{}", got.remaining);
            let info = s
                .session_info(&[id.store_key()])
                .await
                .expect("session_info")
                .pop()
                .flatten()
                .expect("live");
            assert_eq!(info.created, created / 1000);
            assert_eq!((&info.owner, &info.client), (&None, &None));
            assert!(info.last_seen >= info.created, "{info:?}");

            // Again, then a ping: both on the one pooled connection, which reads the replies
            // owed by refreshes sent without waiting first, so they are in.
            assert!(load(&s, &id).await.is_some());
            s.ping().await.expect("ping");
            let ttl = server.ttl(&key).expect("refreshed");
            assert!((590..=601).contains(&ttl), "max_age applies: {ttl}");
            let stored = String::from_utf8(server.get(&key).expect("item")).unwrap();
            if touch_after.is_zero() {
                assert_eq!(stored, old, "a touch writes nothing");
            } else {
                assert!(
                    stored.starts_with(&format!("S2 {created} 600 ")),
                    "{stored}"
                );
            }
            let p = plan(Target::Existing(id.clone()), vec![set("n", "1")]);
            assert_eq!(apply(&s, p).await, WriteOutcome::Applied);
            let stored = String::from_utf8(server.get(&key).expect("item")).unwrap();
            assert!(
                stored.starts_with(&format!("S2 {created} 600 ")),
                "{stored}"
            );
            assert_eq!(
                load(&s, &id).await.expect("live").data,
                fields(&[("n", "1"), ("user", "\"ann\"")])
            );
        }
    }

    /// `MAX_INDEX_ENTRIES` live entries fit one item (memcached's default 1 MiB limit);
    /// one more member is refused, existing members still extend, a removal makes room.
    #[tokio::test]
    async fn a_full_owner_index_refuses_new_members() {
        use session_sidecar::store::owners::MAX_INDEX_ENTRIES;
        let server = MemcachedServer::start();
        let mut cfg = memcached_config(&[&server]);
        cfg.timeout = Duration::from_secs(10);
        let s = timed(memcached_new(&cfg, lifetimes()), cfg.timeout);
        let o = owner("kim");
        let key = format!("test:o.{}", o.key().as_str());
        let far = unix_ms() + 3_600_000;
        let members: Vec<String> = (0..MAX_INDEX_ENTRIES)
            .map(|_| new_id().store_key())
            .collect();
        let mut value = b"I1\n".to_vec();
        for m in &members {
            value.extend_from_slice(format!("{m} {far}\n").as_bytes());
        }
        raw_set(&server, &key, &value, 3600);
        let got = s.index_members(&o.key()).await.expect("members");
        assert_eq!(got.len(), MAX_INDEX_ENTRIES);

        let e = s
            .index_add(&o.key(), &new_id().store_key(), 60_000)
            .await
            .expect_err("full");
        assert!(
            matches!(&e, StoreError::Unavailable(m) if m.contains("owner index full")),
            "{e:?}"
        );
        // The engine writes a full index itself (an existing member's bound grows).
        s.index_add(&o.key(), &members[0], 2 * 3_600_000)
            .await
            .expect("an existing member extends");
        let ttl = server.ttl(&key).expect("index");
        assert!(ttl > 2 * 3600, "{ttl}");
        s.index_remove(&o.key(), &members[1..2])
            .await
            .expect("remove");
        let newcomer = new_id().store_key();
        s.index_add(&o.key(), &newcomer, 60_000)
            .await
            .expect("room again");
        let got = s.index_members(&o.key()).await.expect("members");
        assert_eq!(got.len(), MAX_INDEX_ENTRIES);
        assert!(got.contains(&newcomer) && !got.contains(&members[1]));
    }

    /// What a load costs on the server (`cmd_get`, `cmd_touch`, `cmd_set`): with
    /// touch_after 0 an owned session's load is the same pipelined pair as a plain one
    /// (the read touches); `Touch::Keep` touches nothing; with touch_after a load that is
    /// not due writes nothing and touches nothing, a due one writes the item once.
    #[tokio::test]
    async fn what_a_load_costs_with_owners_and_touch_after() {
        use session_sidecar::store::{Touch, owners::bound_for};
        let server = MemcachedServer::start();
        let s = store(&[&server], lifetimes());
        let plain = create(&s, vec![set("a", "1")]).await;
        let owned = create_owned(&s, &owner("lee"), bound_for(60_000, 3_600_000)).await;
        for id in [&plain, &owned] {
            let before = command_counts(&server);
            let got = load(&s, id).await.expect("live");
            assert_eq!(got.index_due, None);
            assert!(got.revision.is_some());
            // The touching read counts as a touch, the flash read as a get.
            assert_eq!(deltas(before, command_counts(&server)), [1, 1, 0]);
        }
        let before = command_counts(&server);
        assert!(
            s.load_touch(&owned, Touch::Keep)
                .await
                .expect("load")
                .is_some()
        );
        assert_eq!(deltas(before, command_counts(&server)), [2, 0, 0]);

        let lazy = store(
            &[&server],
            Lifetimes {
                touch_after: Duration::from_secs(1),
                ..lifetimes()
            },
        );
        let id = create(&lazy, vec![set("a", "1")]).await;
        let before = command_counts(&server);
        let got = load(&lazy, &id).await.expect("live");
        assert!(
            got.revision.is_some(),
            "nothing written: the write may use it"
        );
        assert_eq!(
            deltas(before, command_counts(&server)),
            [2, 0, 0],
            "not due"
        );
        tokio::time::sleep(Duration::from_millis(1_100)).await;
        let before = command_counts(&server);
        let got = load(&lazy, &id).await.expect("live");
        assert!(got.revision.is_none(), "the refresh changed the CAS");
        // Sent without waiting: let the server take them in.
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert_eq!(deltas(before, command_counts(&server)), [2, 1, 1], "due");
        let before = command_counts(&server);
        assert!(load(&lazy, &id).await.is_some());
        assert_eq!(
            deltas(before, command_counts(&server)),
            [2, 0, 0],
            "refreshed"
        );
    }
}
