//! `store.cache` (docs/configuration.md#storecache): the Redis engine's client-side
//! session cache, through the real proxy and a real `redis-server`. Two sidecars share
//! one Redis, each with its own cache; what one writes the other sees once Redis's
//! invalidation reached it, and every wait is a bounded poll.
//!
//! The functional tests share one server (fresh random sessions each). The tests that
//! kill connections, flush, or count commands have a server of their own.

mod backing;
mod harness;

use std::{
    sync::OnceLock,
    time::{Duration, Instant},
};

use backing::RedisServer;
use harness::{Client, Resp, Sidecar};
use serde_json::{Value, json};
use session_sidecar::store::{any::AnyStore, redis::CacheStats};

/// The longest a test waits for an invalidation or a reconnection to arrive.
const WAIT: Duration = Duration::from_secs(10);

fn shared() -> &'static RedisServer {
    static SERVER: OnceLock<RedisServer> = OnceLock::new();
    SERVER.get_or_init(RedisServer::start)
}

fn section(port: u16, max_entries: usize) -> Value {
    json!({
        "engine": "redis",
        "storage": {"host": "127.0.0.1", "port": port, "max_connections": 2},
        "cache": {"max_entries": max_entries},
    })
}

async fn sidecar_with(port: u16, max_entries: usize, extra: Value) -> Sidecar {
    let mut session = json!({"session": {"touch_after": "1m"}});
    harness::merge(&mut session, extra);
    Sidecar::start(section(port, max_entries), session).await
}

async fn sidecar(port: u16) -> Sidecar {
    sidecar_with(port, 1000, json!({})).await
}

fn stats(sc: &Sidecar) -> CacheStats {
    let running = sc.running.as_ref().expect("running");
    match running.proxy.store().engine() {
        AnyStore::Redis(r) => r.cache_stats().expect("cache on"),
        other => panic!("not redis: {other:?}"),
    }
}

/// The same session on another sidecar.
fn same_session(c: &Client, other: &Sidecar) -> Client {
    let mut o = other.client();
    o.cookie = c.cookie.clone();
    o
}

/// Poll `check` (one request per try) until it holds, for at most [`WAIT`].
async fn until<F, Fut>(what: &str, check: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    until_within(WAIT, what, check).await;
}

/// Read until a read is answered from `sc`'s cache (tracking must be on, and a load
/// inserted with no invalidation racing it); returns the cached read.
async fn warm(c: &mut Client, sc: &Sidecar) -> Resp {
    let deadline = Instant::now() + WAIT;
    loop {
        let before = stats(sc).hits;
        let r = c.get("/").await;
        if stats(sc).hits > before {
            return r;
        }
        assert!(Instant::now() < deadline, "no cache hit within {WAIT:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Total calls of the sidecar's scripts since the last `CONFIG RESETSTAT` (each one
/// round trip; see tests/store_round_trips.rs).
fn script_calls(redis: &RedisServer) -> u64 {
    let info: String = redis.client(0).cmd(&["INFO", "commandstats"]);
    info.lines()
        .filter_map(|l| {
            let (name, rest) = l.strip_prefix("cmdstat_")?.split_once(':')?;
            if name != "evalsha" && name != "eval" {
                return None;
            }
            rest.split(',')
                .find_map(|kv| kv.strip_prefix("calls="))?
                .parse::<u64>()
                .ok()
        })
        .sum()
}

/// The data key of the session in `c`'s jar (default prefix).
fn data_key(c: &Client) -> String {
    use base64::{Engine, engine::general_purpose::URL_SAFE_NO_PAD};
    use sha2::{Digest, Sha256};
    let sid = c.sid().expect("a session");
    format!(
        "session:{{{}}}",
        URL_SAFE_NO_PAD.encode(Sha256::digest(sid.as_bytes()))
    )
}

#[tokio::test]
async fn a_write_on_one_sidecar_is_seen_by_the_other_after_the_invalidation() {
    let port = shared().port();
    let (a, b) = (sidecar(port).await, sidecar(port).await);
    let mut ca = a.client();
    ca.write(&[("x-session-set", r#"{"n":1}"#)]).await;
    let mut cb = same_session(&ca, &b);
    assert_eq!(warm(&mut cb, &b).await.session()["n"], 1);
    assert_eq!(
        ca.write(&[("x-session-set", r#"{"n":2}"#)]).await.status,
        200
    );
    until("b sees n = 2", || {
        let mut cb = cb.clone();
        async move { cb.get("/").await.session()["n"] == 2 }
    })
    .await;
    assert!(stats(&b).invalidations >= 1, "{:?}", stats(&b));
    // And b caches the new state again.
    assert_eq!(warm(&mut cb, &b).await.session()["n"], 2);
}

#[tokio::test]
async fn a_sidecar_reads_its_own_writes_at_once() {
    let a = sidecar(shared().port()).await;
    let mut c = a.client();
    c.write(&[("x-session-set", r#"{"n":0}"#)]).await;
    for i in 1..=10 {
        warm(&mut c, &a).await;
        let r = c.write(&[("x-session-incr", r#"{"n":1}"#)]).await;
        assert_eq!(r.status, 200);
        // No wait: the write itself dropped the entry.
        assert_eq!(c.get("/").await.session()["n"], i);
    }
    // Destroy and regenerate are read at once too.
    warm(&mut c, &a).await;
    let old = c.clone();
    c.write(&[("x-session-regenerate", "1")]).await;
    assert_ne!(old.sid(), c.sid());
    let mut old = old;
    assert_eq!(old.get("/").await.sstatus(), "expired");
    assert_eq!(c.get("/").await.session()["n"], 10);
    warm(&mut c, &a).await;
    c.write(&[("x-session-destroy", "1")]).await;
    assert_eq!(c.cookie, None, "the destroy cleared the cookie");
    assert_eq!(c.get("/").await.sstatus(), "none");
}

#[tokio::test]
async fn destroy_and_owner_revocation_on_one_sidecar_end_the_session_on_the_other() {
    let port = shared().port();
    let (a, b) = (sidecar(port).await, sidecar(port).await);
    // Destroy.
    let mut ca = a.client();
    ca.write(&[("x-session-set", r#"{"u":"x"}"#)]).await;
    let mut cb = same_session(&ca, &b);
    warm(&mut cb, &b).await;
    ca.write(&[("x-session-destroy", "1")]).await;
    until("b sees the destroy", || {
        let mut cb = cb.clone();
        async move { cb.get("/").await.sstatus() != "active" }
    })
    .await;

    // "Log out everywhere": the owner's sessions are destroyed by store key.
    let mut raw = [0u8; 6];
    getrandom::fill(&mut raw).expect("random");
    let owner = serde_json::to_string(&format!("ann-{raw:?}")).expect("literal");
    let mut ann = a.client();
    let r = ann
        .write(&[
            ("x-session-regenerate", "1"),
            ("x-session-owner", &owner),
            ("x-session-set", r#"{"user":"ann"}"#),
        ])
        .await;
    assert_eq!(r.status, 200, "{r:?}");
    let mut ann_b = same_session(&ann, &b);
    warm(&mut ann_b, &b).await;
    let mut console = a.client();
    let r = console.write(&[("x-session-revoke-owner", &owner)]).await;
    assert_eq!(r.status, 200, "{r:?}");
    until("b sees the revocation", || {
        let mut c = ann_b.clone();
        async move { c.get("/").await.sstatus() != "active" }
    })
    .await;
}

#[tokio::test]
async fn flash_set_on_one_sidecar_is_delivered_once_by_the_other() {
    let port = shared().port();
    let (a, b) = (sidecar(port).await, sidecar(port).await);
    let mut ca = a.client();
    ca.write(&[("x-session-set", r#"{"n":1}"#)]).await;
    let mut cb = same_session(&ca, &b);
    warm(&mut cb, &b).await;
    warm(&mut ca, &a).await;
    ca.write(&[("x-session-flash-set", r#"{"notice":"hi"}"#)])
        .await;
    let deadline = Instant::now() + WAIT;
    let mut delivered = 0;
    while delivered == 0 {
        if cb.get("/").await.flash()["notice"] == "hi" {
            delivered += 1;
        }
        assert!(
            Instant::now() < deadline,
            "b delivers the flash within {WAIT:?}"
        );
    }
    assert_eq!(delivered, 1);
    // Never again, on either sidecar, cached or not.
    for _ in 0..5 {
        assert_eq!(cb.get("/").await.flash(), json!({}));
        assert_eq!(ca.get("/").await.flash(), json!({}));
    }
    assert_eq!(cb.get("/").await.session()["n"], 1);

    // A flash written by anyone else changes the flash key only (db 1): that alone
    // invalidates the entry, and the flash is delivered once.
    warm(&mut cb, &b).await;
    let flash_key = format!("{}:flash", data_key(&cb));
    let _: i64 = shared()
        .client(1)
        .cmd(&["HSET", &flash_key, "\"notice\"", "\"raw\""]);
    let _: i64 = shared().client(1).cmd(&["PEXPIRE", &flash_key, "60000"]);
    let deadline = Instant::now() + WAIT;
    while cb.get("/").await.flash()["notice"] != "raw" {
        assert!(
            Instant::now() < deadline,
            "b delivers the raw flash within {WAIT:?}"
        );
    }
    assert_eq!(cb.get("/").await.flash(), json!({}));
    assert_eq!(ca.get("/").await.flash(), json!({}));
}

#[tokio::test]
async fn the_entry_bound_holds() {
    let a = sidecar_with(shared().port(), 3, json!({})).await;
    let mut clients = Vec::new();
    for i in 0..8 {
        let mut c = a.client();
        c.write(&[("x-session-set", &format!(r#"{{"i":{i}}}"#))])
            .await;
        warm(&mut c, &a).await;
        assert!(stats(&a).entries <= 3, "{:?}", stats(&a));
        clients.push(c);
    }
    assert_eq!(stats(&a).entries, 3);
    // Evicted sessions are loaded again, correctly.
    for (i, c) in clients.iter_mut().enumerate() {
        assert_eq!(c.get("/").await.session()["i"], i);
    }
    assert!(stats(&a).entries <= 3);
}

#[tokio::test]
async fn a_hit_costs_no_round_trip_and_a_read_with_a_write_one() {
    let redis = RedisServer::start();
    let a = sidecar(redis.port()).await;
    let mut c = a.client();
    c.write(&[("x-session-set", r#"{"n":0}"#)]).await;
    warm(&mut c, &a).await;
    let _: String = redis.client(0).cmd(&["CONFIG", "RESETSTAT"]);
    let hits = stats(&a).hits;
    for _ in 0..10 {
        assert_eq!(c.get("/").await.session()["n"], 0);
    }
    assert_eq!(stats(&a).hits, hits + 10);
    assert_eq!(script_calls(&redis), 0);
    // A request that reads from the cache and writes: the write only.
    let r = c.write(&[("x-session-incr", r#"{"n":1}"#)]).await;
    assert_eq!(r.status, 200);
    assert_eq!(script_calls(&redis), 1);
    // Metrics.
    let running = a.running.as_ref().expect("running");
    assert!(running.admin_addr.is_none());
}

/// A write's reply carries the new state and is cached: a read + write costs one round
/// trip, the read of every next request is a hit. And a sidecar whose last call on a
/// session was its own write still hears of another sidecar's write (the write read its
/// keys again, so Redis goes on tracking them for its connection; its own writes are not
/// reported to it).
#[tokio::test]
async fn a_write_is_cached_and_its_writer_still_hears_of_other_writes() {
    let redis = RedisServer::start();
    let (a, b) = (sidecar(redis.port()).await, sidecar(redis.port()).await);
    let mut ca = a.client();
    ca.write(&[("x-session-set", r#"{"n":0}"#)]).await;
    warm(&mut ca, &a).await;
    let _: String = redis.client(0).cmd(&["CONFIG", "RESETSTAT"]);
    let hits = stats(&a).hits;
    for i in 1..=10 {
        let r = ca.write(&[("x-session-incr", r#"{"n":1}"#)]).await;
        assert_eq!(r.status, 200);
        assert_eq!(r.session()["n"], i - 1);
        assert_eq!(ca.get("/").await.session()["n"], i);
    }
    assert_eq!(stats(&a).hits, hits + 20, "{:?}", stats(&a));
    assert_eq!(script_calls(&redis), 10, "one round trip per read + write");

    let cb = same_session(&ca, &b);
    for v in 100..105 {
        let m = format!(r#"{{"m":{v}}}"#);
        assert_eq!(ca.write(&[("x-session-set", &m)]).await.status, 200);
        let hits = stats(&a).hits;
        assert_eq!(ca.get("/").await.session()["m"], v);
        assert_eq!(stats(&a).hits, hits + 1, "a's own write was cached");
        let n = format!(r#"{{"n":{v}}}"#);
        assert_eq!(cb.clone().write(&[("x-session-set", &n)]).await.status, 200);
        until("a sees b's write", || {
            let mut ca = ca.clone();
            async move { ca.get("/").await.session()["n"] == v }
        })
        .await;
    }
    assert!(stats(&a).invalidations >= 5, "{:?}", stats(&a));
}

#[tokio::test]
async fn the_metrics_show_the_cache() {
    let a = sidecar_with(
        shared().port(),
        1000,
        json!({"admin": {"listen": "127.0.0.1:0"}}),
    )
    .await;
    let mut c = a.client();
    c.write(&[("x-session-set", r#"{"n":0}"#)]).await;
    warm(&mut c, &a).await;
    let admin = a
        .running
        .as_ref()
        .and_then(|r| r.admin_addr)
        .expect("admin");
    let text = Client::new(admin).get("/metrics").await.body;
    let text = String::from_utf8_lossy(&text).into_owned();
    for name in [
        "session_sidecar_store_cache_hits_total",
        "session_sidecar_store_cache_misses_total",
        "session_sidecar_store_cache_invalidations_total",
        "session_sidecar_store_cache_drops_total",
        "session_sidecar_store_cache_entries",
    ] {
        assert!(text.contains(name), "{name} not in:\n{text}");
    }
    let hits: u64 = text
        .lines()
        .find_map(|l| l.strip_prefix("session_sidecar_store_cache_hits_total "))
        .and_then(|v| v.trim().parse().ok())
        .expect("hits");
    assert!(hits >= 1);
}

#[tokio::test]
async fn losing_the_tracking_connection_drops_the_cache_and_reads_stay_correct() {
    let redis = RedisServer::start();
    let a = sidecar(redis.port()).await;
    let mut c = a.client();
    c.write(&[("x-session-set", r#"{"n":1}"#)]).await;
    warm(&mut c, &a).await;
    let key = data_key(&c);
    let drops = stats(&a).drops;

    // Kill the tracking connection (the client with tracking on: flag `t`).
    let list: String = redis.client(0).cmd(&["CLIENT", "LIST"]);
    let ids: Vec<String> = list
        .lines()
        .filter(|l| {
            l.split(' ')
                .any(|kv| kv.strip_prefix("flags=").is_some_and(|f| f.contains('t')))
        })
        .filter_map(|l| l.split(' ').find_map(|kv| kv.strip_prefix("id=")))
        .map(str::to_owned)
        .collect();
    assert_eq!(ids.len(), 1, "{list}");
    let _: i64 = redis.client(0).cmd(&["CLIENT", "KILL", "ID", &ids[0]]);
    until("the cache is dropped", || {
        let a = &a;
        async move { stats(a).drops > drops }
    })
    .await;
    assert_eq!(stats(&a).entries, 0);
    // A change no invalidation will report (made before tracking is back on, or
    // reported on the new connection): the next read sees it.
    let _: i64 = redis.client(0).cmd(&["HSET", &key, "\"n\"", "2"]);
    assert_eq!(c.get("/").await.session()["n"], 2);
    // Tracking comes back: hits again, and invalidations work on the new connection.
    assert_eq!(warm(&mut c, &a).await.session()["n"], 2);
    let _: i64 = redis.client(0).cmd(&["HSET", &key, "\"n\"", "3"]);
    until("the change is seen", || {
        let mut c = c.clone();
        async move { c.get("/").await.session()["n"] == 3 }
    })
    .await;

    // A flush drops everything (the null invalidation).
    warm(&mut c, &a).await;
    let drops = stats(&a).drops;
    let _: String = redis.client(0).cmd(&["FLUSHDB"]);
    until("the flush drops the cache", || {
        let a = &a;
        async move { stats(a).drops > drops }
    })
    .await;
    assert_eq!(c.get("/").await.sstatus(), "expired");

    // A restart of Redis: the same.
    let mut redis = redis;
    let mut c = a.client();
    c.write(&[("x-session-set", r#"{"n":1}"#)]).await;
    warm(&mut c, &a).await;
    let drops = stats(&a).drops;
    redis.restart();
    until("the restart drops the cache", || {
        let a = &a;
        async move { stats(a).drops > drops }
    })
    .await;
    // The restarted server is empty (no persistence): the session is gone, which a
    // stale cache would hide. The first calls may meet the reconnection (503).
    until("the session is gone", || {
        let mut c = c.clone();
        async move {
            let r = c.get("/").await;
            r.status == 200 && r.sstatus() == "expired"
        }
    })
    .await;
}

#[tokio::test]
async fn a_due_refresh_goes_to_the_store_and_no_touch_routes_keep_hitting() {
    let a = sidecar_with(
        shared().port(),
        1000,
        json!({"session": {"touch_after": "1s", "no_touch": ["/poll"]}}),
    )
    .await;
    let mut c = a.client();
    c.write(&[("x-session-set", r#"{"n":1}"#)]).await;
    warm(&mut c, &a).await;
    let key = data_key(&c);
    let seen = |k: &str| -> u64 {
        let fields = shared().client(0).hgetall(k);
        fields
            .get("seen")
            .and_then(|s| s.parse().ok())
            .expect("seen")
    };
    let before = seen(&key);
    // Past touch_after (the one fixed wait here: what is measured is a time limit).
    tokio::time::sleep(Duration::from_millis(1100)).await;
    // A no-touch route may still be answered from the cache.
    let hits = stats(&a).hits;
    assert_eq!(c.get("/poll").await.session()["n"], 1);
    assert_eq!(stats(&a).hits, hits + 1);
    assert_eq!(seen(&key), before);
    // A touching route goes to the store, which refreshes.
    let misses = stats(&a).misses;
    assert_eq!(c.get("/").await.session()["n"], 1);
    assert_eq!(stats(&a).misses, misses + 1);
    assert!(seen(&key) > before);
}

/// After a failover: A writes n = 3 to the session (503s while it follows the failover,
/// the session kept), B sees it, B caches it again (tracking is on again, on the new
/// master), and B sees A's next write.
async fn after_the_failover(ca: &Client, cb: &mut Client, b: &Sidecar) {
    let sid = ca.sid();
    until_within(
        Duration::from_secs(30),
        "a writes n = 3 to the session",
        || {
            let mut ca = ca.clone();
            let sid = sid.clone();
            async move {
                let r = ca.write(&[("x-session-set", r#"{"n":3}"#)]).await;
                r.status == 200 && ca.sid() == sid
            }
        },
    )
    .await;
    until_within(Duration::from_secs(30), "b sees n = 3", || {
        let cb = cb.clone();
        async move { n_of(&cb).await == Some(json!(3)) }
    })
    .await;
    assert_eq!(warm(cb, b).await.session()["n"], 3);
    ca.clone().write(&[("x-session-set", r#"{"n":4}"#)]).await;
    until("b sees n = 4", || {
        let cb = cb.clone();
        async move { n_of(&cb).await == Some(json!(4)) }
    })
    .await;
}

/// Poll like [`until`], for at most `limit` (failovers take seconds).
async fn until_within<F, Fut>(limit: Duration, what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let deadline = Instant::now() + limit;
    while !check().await {
        assert!(Instant::now() < deadline, "not within {limit:?}: {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The n the app sees on `c`'s next request, when the request is served.
async fn n_of(c: &Client) -> Option<Value> {
    let mut c = c.clone();
    let r = c.get("/").await;
    (r.status == 200 && r.sstatus() == "active").then(|| r.session()["n"].clone())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sentinel_failover_drops_the_cache_and_the_new_master_is_tracked() {
    let set = backing::SentinelSet::start();
    let section = json!({
        "engine": "redis",
        "storage": {"sentinel": {"master_name": set.master_name(), "nodes": set.sentinel_nodes()}},
        "cache": {"max_entries": 1000},
    });
    let session = json!({"session": {"touch_after": "1m"}});
    let a = Sidecar::start(section.clone(), session.clone()).await;
    let b = Sidecar::start(section, session).await;
    let mut ca = a.client();
    ca.write(&[("x-session-set", r#"{"n":1}"#)]).await;
    let mut cb = same_session(&ca, &b);
    assert_eq!(warm(&mut cb, &b).await.session()["n"], 1);
    ca.write(&[("x-session-set", r#"{"n":2}"#)]).await;
    until("b sees n = 2", || {
        let cb = cb.clone();
        async move { n_of(&cb).await == Some(json!(2)) }
    })
    .await;
    assert_eq!(warm(&mut cb, &b).await.session()["n"], 2);
    // The session is on the replica before the master dies.
    let old = set.master_port();
    backing::wait_replicated(old, set.replica_port());
    let drops = stats(&b).drops;

    let set = tokio::task::spawn_blocking(move || {
        let mut set = set;
        let old = set.kill_master();
        let (new, _) = set.wait_failover(old);
        assert_ne!(new, old);
        set
    })
    .await
    .expect("failover");

    after_the_failover(&ca, &mut cb, &b).await;
    assert!(stats(&b).drops > drops, "{:?}", stats(&b));
    drop(set);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_a_cluster_every_master_is_tracked_and_a_failover_drops_the_cache() {
    let cluster = backing::RedisCluster::start();
    let section = json!({
        "engine": "redis",
        "storage": {"cluster": {"nodes": cluster.nodes()}},
        "cache": {"max_entries": 1000},
    });
    let session = json!({"session": {"touch_after": "1m"}});
    let a = Sidecar::start(section.clone(), session.clone()).await;
    let b = Sidecar::start(section, session).await;
    // Sessions until every master holds one; each change on A is seen by B.
    let mut on_master: std::collections::BTreeMap<u16, (Client, Client)> = Default::default();
    for _ in 0..60 {
        let mut ca = a.client();
        ca.write(&[("x-session-set", r#"{"n":1}"#)]).await;
        let master = cluster.master_for_slot(cluster.key_slot(&data_key(&ca)));
        if on_master.contains_key(&master) {
            continue;
        }
        let mut cb = same_session(&ca, &b);
        assert_eq!(warm(&mut cb, &b).await.session()["n"], 1);
        ca.write(&[("x-session-set", r#"{"n":2}"#)]).await;
        until("b sees n = 2", || {
            let cb = cb.clone();
            async move { n_of(&cb).await == Some(json!(2)) }
        })
        .await;
        // B's own write goes over the tracking connection of that master, is cached,
        // and B still hears of A's next one.
        cb.write(&[("x-session-set", r#"{"m":1}"#)]).await;
        let hits = stats(&b).hits;
        assert_eq!(cb.get("/").await.session()["m"], 1);
        assert_eq!(stats(&b).hits, hits + 1, "b's own write was cached");
        ca.write(&[("x-session-set", r#"{"n":2,"m":2}"#)]).await;
        until("b sees m = 2", || {
            let mut cb = cb.clone();
            async move { cb.get("/").await.session()["m"] == 2 }
        })
        .await;
        on_master.insert(master, (ca, cb));
        if on_master.len() == 3 {
            break;
        }
    }
    assert_eq!(on_master.len(), 3, "a session on every master");

    // Kill the master of one session (after its replica has it).
    let (&victim, (ca, cb)) = on_master.iter_mut().next().expect("a master");
    let mut cb = cb.clone();
    let ca = ca.clone();
    assert_eq!(warm(&mut cb, &b).await.session()["n"], 2);
    cluster.wait_replicated(victim);
    let drops = stats(&b).drops;
    let cluster = tokio::task::spawn_blocking(move || {
        let mut cluster = cluster;
        cluster.kill_master(victim);
        let (new, _) = cluster.wait_promoted(victim);
        assert_ne!(new, victim);
        cluster
    })
    .await
    .expect("failover");
    until_within(Duration::from_secs(30), "b drops its cache", || {
        let b = &b;
        async move { stats(b).drops > drops }
    })
    .await;
    after_the_failover(&ca, &mut cb, &b).await;
    drop(cluster);
}

/// A Redis that stops answering without closing its connections (SIGSTOP): the
/// tracking connection's `PING` goes unanswered, and the cache is dropped.
#[tokio::test]
async fn a_silent_redis_is_noticed_by_the_ping_and_the_cache_dropped() {
    let redis = RedisServer::start();
    let a = sidecar(redis.port()).await;
    let mut c = a.client();
    c.write(&[("x-session-set", r#"{"n":1}"#)]).await;
    warm(&mut c, &a).await;
    let drops = stats(&a).drops;
    redis.pause();
    // Within one ping period plus store.timeout (1 s + 500 ms), with margin.
    let paused = Instant::now();
    until("the silent connection is left", || {
        let a = &a;
        async move { stats(a).drops > drops }
    })
    .await;
    assert!(
        paused.elapsed() < Duration::from_secs(5),
        "{:?}",
        paused.elapsed()
    );
    assert_eq!(stats(&a).entries, 0);
    redis.resume();
    let key = data_key(&c);
    let _: i64 = redis.client(0).cmd(&["HSET", &key, "\"n\"", "2"]);
    until("served again, with the change", || {
        let c = c.clone();
        async move { n_of(&c).await == Some(json!(2)) }
    })
    .await;
    assert_eq!(warm(&mut c, &a).await.session()["n"], 2);
}

/// The binary with several proxy workers (`workers`, docs/performance.md#a-runtime-per-core)
/// is one sidecar: one cache for all its workers, so a write on one connection is read
/// at once on the next, whichever worker accepts it. Every request here is a new
/// connection, spread over the workers' sockets by the kernel.
#[tokio::test]
async fn the_workers_of_one_sidecar_share_one_cache_and_read_their_own_writes() {
    use harness::{SECRET_A, Upstream, binary::Binary};
    // A server of its own: its tracking connections are this sidecar's.
    let redis = RedisServer::start();
    let upstream = Upstream::start().await;
    let proc = Binary::spawn(&format!(
        "listen: 127.0.0.1:0\nworkers: 4\nupstream: {}\nsecrets: [\"{SECRET_A}\"]\n\
         store: {{engine: redis, storage: {{host: 127.0.0.1, port: {}}}, cache: {{max_entries: 100}}}}\n\
         session: {{touch_after: 1m}}\nadmin: {{listen: null}}\n",
        upstream.url(),
        redis.port()
    ))
    .await;
    let mut c = Client::new(proc.addr);
    c.write(&[("x-session-set", r#"{"n":0}"#)]).await;
    for i in 1..=20 {
        // Reads that the workers' shared cache answers after the first miss.
        for _ in 0..4 {
            assert_eq!(c.get("/").await.session()["n"], i - 1);
        }
        assert_eq!(
            c.write(&[("x-session-incr", r#"{"n":1}"#)]).await.status,
            200
        );
        // No wait: the next connection, on any worker, reads the write.
        assert_eq!(c.get("/").await.session()["n"], i, "after write {i}");
    }
    // One cache, so one tracking connection (`CLIENT LIST` flag `t`), not one per
    // worker: a cache per worker would let a write on one worker leave another
    // worker's entry stale until Redis's invalidation reached it.
    let clients: String = redis.client(0).cmd(&["CLIENT", "LIST"]);
    let tracking = clients
        .lines()
        .filter(|l| {
            l.split(' ')
                .find_map(|kv| kv.strip_prefix("flags="))
                .is_some_and(|f| f.contains('t'))
        })
        .count();
    assert_eq!(tracking, 1, "{clients}");
    c.write(&[("x-session-destroy", "1")]).await;
    assert_eq!(c.cookie, None);
}
