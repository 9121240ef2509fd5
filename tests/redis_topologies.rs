//! Redis in production (docs/configuration.md#redis): TLS, failover under Sentinel and
//! on a Cluster under a steady trickle of requests, a live slot migration, and two
//! sidecar processes sharing one store. Real servers only, started here on loopback.
//!
//! The failover tests print the measured gap (`--nocapture`): how long after the
//! promotion the last 503 was answered.

mod backing;
mod harness;

use std::time::{Duration, Instant};

use harness::{Client, Sidecar, Upstream, binary::Binary};
use serde_json::{Value, json};

const INCR: (&str, &str) = ("x-session-incr", r#"{"n":1}"#);

/// One client of the trickle: its marker, and how many increments it attempted.
struct Tracked {
    who: usize,
    client: Client,
    attempts: u64,
    /// `n` as last seen by the app (what the store had before the write).
    seen: u64,
}

impl Tracked {
    async fn new(sc: &Sidecar, who: usize) -> Tracked {
        let mut client = sc.client();
        let r = client
            .write(&[("x-session-set", &json!({"who": who, "n": 0}).to_string())])
            .await;
        assert_eq!(r.status, 200, "{r:?}");
        Tracked {
            who,
            client,
            attempts: 0,
            seen: 0,
        }
    }

    /// One increment. Every answer is right or 503: the app sees this session (never
    /// another's) with `n` no larger than the increments attempted before (a write is
    /// never applied twice). Returns whether it was served.
    async fn step(&mut self) -> bool {
        let before = self.attempts;
        self.attempts += 1;
        let sid = self.client.sid();
        let r = self.client.write(&[INCR]).await;
        match r.status {
            200 => {
                let s = r.session();
                assert_eq!(s["who"], json!(self.who), "another session's data: {s}");
                let n = s["n"].as_u64().expect("n");
                assert!(
                    n <= before,
                    "n = {n} after {before} increments: applied twice"
                );
                self.seen = n;
                assert_eq!(self.client.sid(), sid, "the session id never changes here");
                true
            }
            503 => false,
            other => panic!("answer {other} during failover: {r:?}"),
        }
    }
}

/// What a trickle through a failover saw, in ms from the kill.
#[derive(Debug)]
struct Gap {
    promoted: i128,
    first_failure: Option<i128>,
    last_failure: Option<i128>,
    failures: usize,
    served: usize,
}

/// Requests every 50 ms from 4 sessions while `kill_and_wait` (run on a blocking
/// thread) kills the master and waits for the promotion; keeps going until 2 s of
/// answers after the promotion were all served, or fails at promotion + 10 s.
async fn trickle_through<F, K>(sc: &Sidecar, kill_and_wait: F) -> (Gap, K)
where
    F: FnOnce() -> (Instant, Instant, K) + Send + 'static,
    K: Send + 'static,
{
    let mut clients = Vec::new();
    for who in 0..4 {
        clients.push(Tracked::new(sc, who).await);
    }
    // A steady state first.
    for c in clients.iter_mut() {
        assert!(c.step().await, "served before the failover");
    }
    let failover = tokio::task::spawn_blocking(kill_and_wait);
    tokio::pin!(failover);
    let mut promoted: Option<Instant> = None;
    let mut killed: Option<Instant> = None;
    let mut servers: Option<K> = None;
    let mut first_failure: Option<Instant> = None;
    let mut last_failure: Option<Instant> = None;
    let (mut failures, mut served) = (0, 0);
    let bound = Instant::now() + Duration::from_secs(45);
    loop {
        if promoted.is_none()
            && let Ok(Ok((kill, at, alive))) =
                tokio::time::timeout(Duration::ZERO, &mut failover).await
        {
            killed = Some(kill);
            servers = Some(alive);
            promoted = Some(at);
        }
        for c in clients.iter_mut() {
            if c.step().await {
                served += 1;
            } else {
                failures += 1;
                first_failure.get_or_insert_with(Instant::now);
                last_failure = Some(Instant::now());
            }
        }
        if let Some(at) = promoted {
            let since = Instant::now().saturating_duration_since(at);
            let quiet = last_failure.is_none_or(|f| f < at || f.elapsed() > Duration::from_secs(2));
            if quiet && since > Duration::from_secs(2) {
                break;
            }
            assert!(
                since < Duration::from_secs(10)
                    || last_failure.is_none_or(|f| f < at + Duration::from_secs(10)),
                "still failing 10 s after the promotion ({failures} failures)"
            );
        }
        assert!(Instant::now() < bound, "no promotion observed in time");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let at = promoted.expect("promoted");
    // Back to steady state: each write now applies exactly once, in order.
    for c in clients.iter_mut() {
        let before = c.seen;
        assert!(c.step().await);
        assert!(c.step().await);
        assert_eq!(
            c.seen,
            before + 2,
            "who {}: exactly once after recovery",
            c.who
        );
    }
    let servers = servers.expect("the servers that survived");
    let kill = killed.expect("killed");
    let ms = |t: Instant| {
        if t >= kill {
            t.duration_since(kill).as_millis() as i128
        } else {
            -(kill.duration_since(t).as_millis() as i128)
        }
    };
    let gap = Gap {
        promoted: ms(at),
        first_failure: first_failure.map(ms),
        last_failure: last_failure.map(ms),
        failures,
        served,
    };
    (gap, servers)
}

/// `/readyz` and `/metrics` of an in-process sidecar started with an admin listener.
async fn admin(sc: &Sidecar, path: &str) -> (u16, String) {
    let addr = sc
        .running
        .as_ref()
        .and_then(|r| r.admin_addr)
        .expect("admin listener");
    let r = Client::new(addr).get(path).await;
    (r.status, String::from_utf8_lossy(&r.body).into_owned())
}

const WITH_ADMIN: &str = r#"{"admin": {"listen": "127.0.0.1:0"}}"#;

fn with_admin() -> Value {
    serde_json::from_str(WITH_ADMIN).expect("json")
}

/// After a failover: `/readyz` names the new master (Sentinel) or the cluster state,
/// and the failover was counted.
async fn failover_was_seen(sc: &Sidecar, topology: &str) {
    let (status, body) = admin(sc, "/readyz").await;
    assert_eq!(status, 200, "{body}");
    assert!(
        body.starts_with("ready\n") && body.contains(topology),
        "{body}"
    );
    assert!(body.contains("1 master change(s) seen"), "{body}");
    let (_, metrics) = admin(sc, "/metrics").await;
    assert!(
        metrics.contains("session_sidecar_store_master_changes_total 1\n"),
        "{metrics}"
    );
}

fn report(name: &str, gap: &Gap) {
    let show = |v: Option<i128>| v.map_or("none".to_owned(), |v| format!("{v} ms"));
    eprintln!(
        "FAILOVER {name} (ms after the kill or switch): promotion seen at {} ms; 503s from {} to {}; \
         serving resumed {} after the promotion; {} answers 503, {} served",
        gap.promoted,
        show(gap.first_failure),
        show(gap.last_failure),
        show(gap.last_failure.map(|l| l - gap.promoted)),
        gap.failures,
        gap.served
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sentinel_failover_under_a_trickle_of_requests() {
    let mut set = backing::SentinelSet::start();
    let section = json!({"engine": "redis", "storage": {"sentinel": {
        "master_name": set.master_name(), "nodes": set.sentinel_nodes()}}});
    let sc = Sidecar::start(section, with_admin()).await;
    let (gap, _servers) = trickle_through(&sc, move || {
        let kill = Instant::now();
        let old = set.kill_master();
        let (new, at) = set.wait_failover(old);
        assert_ne!(new, old);
        (kill, at, set)
    })
    .await;
    report("sentinel", &gap);
    failover_was_seen(&sc, "redis sentinel master").await;
}

/// A master demoted without dying (`SENTINEL FAILOVER`): its connections stay up and it
/// answers writes with `READONLY`, which must make the sidecar ask the sentinels again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sentinel_switch_to_a_live_replica_is_followed() {
    let set = backing::SentinelSet::start();
    let section = json!({"engine": "redis", "storage": {"sentinel": {
        "master_name": set.master_name(), "nodes": set.sentinel_nodes()}}});
    let sc = Sidecar::start(section, with_admin()).await;
    let (gap, _servers) = trickle_through(&sc, move || {
        let kill = Instant::now();
        let old = set.master_port();
        let sentinel = set.sentinel_nodes()[0].clone();
        let port = sentinel.rsplit(':').next().expect("port").to_owned();
        let out = std::process::Command::new("redis-cli")
            .args(["-p", &port, "SENTINEL", "FAILOVER", set.master_name()])
            .output()
            .expect("redis-cli");
        assert!(
            String::from_utf8_lossy(&out.stdout).contains("OK"),
            "{out:?}"
        );
        let (new, at) = set.wait_failover(old);
        assert_ne!(new, old);
        (kill, at, set)
    })
    .await;
    report("sentinel (switch, old master alive)", &gap);
    failover_was_seen(&sc, "redis sentinel master").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cluster_failover_under_a_trickle_of_requests() {
    let mut cluster = backing::RedisCluster::start();
    let section = json!({"engine": "redis", "storage": {"cluster": {"nodes": cluster.nodes()}}});
    let sc = Sidecar::start(section, with_admin()).await;
    // A first probe: the cluster counter compares the masters each probe sees.
    let (status, body) = admin(&sc, "/readyz").await;
    assert_eq!(status, 200, "{body}");
    let (gap, _servers) = trickle_through(&sc, move || {
        // The master holding the most sessions (the 4 are spread over the 3).
        let (victim, _) = cluster
            .count_keys_per_master()
            .into_iter()
            .max_by_key(|&(_, n)| n)
            .expect("masters");
        let kill = Instant::now();
        cluster.kill_master(victim);
        let (new, at) = cluster.wait_promoted(victim);
        assert_ne!(new, victim);
        (kill, at, cluster)
    })
    .await;
    report("cluster", &gap);
    failover_was_seen(&sc, "redis cluster ok, 3 master(s)").await;
}

/// The data key of the session a client holds, found on the cluster (its name hides
/// the id: `session:{<sha-256>}`), and the port of the master that has it.
fn find_session_key(cluster: &backing::RedisCluster, who: usize) -> (String, u16) {
    for port in cluster.masters() {
        let keys: Vec<String> = cluster.cmd_on(port, &["KEYS", "session:{*}"]);
        for key in keys {
            let who_field: Option<String> = cluster.cmd_on(port, &["HGET", &key, "\"who\""]);
            if who_field.as_deref() == Some(who.to_string().as_str()) {
                return (key, port);
            }
        }
    }
    panic!("session of {who} not found on any master");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_live_sessions_slot_migrates_under_requests() {
    let cluster = backing::RedisCluster::start();
    let section = json!({"engine": "redis", "storage": {"cluster": {"nodes": cluster.nodes()}}});
    let sc = Sidecar::start(section, json!({})).await;
    // Sessions spread over all masters, each in one slot.
    for who in 100..130 {
        Tracked::new(&sc, who).await;
    }
    let spread = cluster.count_keys_per_master();
    assert!(
        spread.iter().all(|&(_, n)| n > 0),
        "every master holds sessions: {spread:?}"
    );

    let mut c = Tracked::new(&sc, 7).await;
    let (key, from) = find_session_key(&cluster, 7);
    let slot = cluster.key_slot(&key);
    let to = cluster
        .masters()
        .into_iter()
        .find(|&p| p != from)
        .expect("another master");

    // Requests while the slot is half-moved get 503 (TRYAGAIN: the scripts touch keys
    // that are on neither side yet) or are served right; never a wrong answer.
    let mut served = 0;
    cluster.begin_migration(slot, from, to);
    for _ in 0..5 {
        served += u64::from(c.step().await);
    }
    cluster.move_keys(slot, from, to);
    for _ in 0..5 {
        served += u64::from(c.step().await);
    }
    cluster.finish_migration(slot, from, to);
    for _ in 0..5 {
        assert!(c.step().await, "served once the slot has moved");
        served += 1;
    }
    assert_eq!(cluster.master_for_slot(slot), to);
    let (_, now_on) = find_session_key(&cluster, 7);
    assert_eq!(now_on, to, "the session lives on the new master");
    let n = c.client.get("/").await.session()["n"].as_u64().expect("n");
    assert!(
        served <= n && n <= c.attempts,
        "every served increment counted once: n {n}, served {served}, attempts {}",
        c.attempts
    );

    // Data and flash of one session share a slot and move together.
    let mut q = Tracked::new(&sc, 8).await;
    let r = q
        .client
        .write(&[("x-session-flash-set", r#"{"note":"hi"}"#)])
        .await;
    assert_eq!(r.status, 200);
    let (key, from) = find_session_key(&cluster, 8);
    let slot = cluster.key_slot(&key);
    assert_eq!(
        slot,
        cluster.key_slot(&format!("{key}:flash")),
        "one slot per session"
    );
    let to = cluster
        .masters()
        .into_iter()
        .find(|&p| p != from)
        .expect("another master");
    cluster.migrate_slot(slot, from, to);
    let r = q.client.get("/").await;
    assert_eq!(r.status, 200);
    assert_eq!(r.session(), json!({"who": 8, "n": 0}));
    assert_eq!(
        r.flash(),
        json!({"note": "hi"}),
        "the flash moved with the session"
    );
}

/// Two sidecar processes with one store: what one does, the other sees on the next
/// request (create, change, regenerate, destroy).
async fn two_sidecars_see_one_truth(store_yaml: &str) {
    let upstream = Upstream::start().await;
    let yaml = harness::binary::config(&format!("upstream: {}\n{store_yaml}", upstream.url()));
    let one = Binary::spawn(&yaml).await;
    let two = Binary::spawn(&yaml).await;
    let mut a = Client::new(one.addr);
    let r = a.write(&[("x-session-set", r#"{"user":"ann"}"#)]).await;
    assert_eq!(r.status, 200, "{r:?}");
    let mut b = Client::new(two.addr);
    b.cookie = a.cookie.clone();
    assert_eq!(b.get("/").await.session(), json!({"user": "ann"}));
    b.write(&[("x-session-incr", r#"{"n":2}"#)]).await;
    assert_eq!(a.get("/").await.session(), json!({"user": "ann", "n": 2}));
    // Regenerate through two: the old id is dead through one.
    let old = b.cookie.clone();
    let r = b.write(&[("x-session-regenerate", "1")]).await;
    assert_eq!(r.status, 200);
    assert_ne!(b.cookie, old);
    let mut stale = Client::new(one.addr);
    stale.cookie = old;
    assert_eq!(stale.get("/").await.session(), json!({}));
    a.cookie = b.cookie.clone();
    assert_eq!(a.get("/").await.session(), json!({"user": "ann", "n": 2}));
    // Destroy through one: gone through two.
    a.write(&[("x-session-destroy", "1")]).await;
    assert_eq!(b.get("/").await.session(), json!({}));
    one.stop().await;
    two.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_sidecar_processes_share_a_cluster() {
    let cluster = backing::RedisCluster::start();
    let nodes: Vec<Value> = cluster.nodes().into_iter().map(Value::from).collect();
    two_sidecars_see_one_truth(&format!(
        "store: {{engine: redis, storage: {{cluster: {{nodes: {}}}}}}}\n",
        Value::from(nodes)
    ))
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_sidecar_processes_share_a_sentinel_master() {
    let set = backing::SentinelSet::start();
    let nodes: Vec<Value> = set.sentinel_nodes().into_iter().map(Value::from).collect();
    two_sidecars_see_one_truth(&format!(
        "store: {{engine: redis, storage: {{sentinel: {{master_name: {}, nodes: {}}}}}}}\n",
        set.master_name(),
        Value::from(nodes)
    ))
    .await;
}

fn tls_section(
    url: &str,
    ca: &std::path::Path,
    client: Option<(&std::path::Path, &std::path::Path)>,
) -> Value {
    let mut storage = json!({"url": url, "tls_ca": ca});
    if let Some((cert, key)) = client {
        storage["tls_cert"] = json!(cert);
        storage["tls_key"] = json!(key);
    }
    json!({"engine": "redis", "storage": storage})
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_redis_round_trip_and_wrong_ca_is_unavailable() {
    let server = backing::TlsRedis::start();
    let sc = Sidecar::start(
        tls_section(&server.url(), server.ca_path(), None),
        json!({}),
    )
    .await;
    let mut c = sc.client();
    let r = c.write(&[("x-session-set", r#"{"a":1}"#)]).await;
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(c.get("/").await.session(), json!({"a": 1}));

    // A CA that did not sign the server's certificate: never served, never plaintext.
    let wrong = Sidecar::start(
        tls_section(&server.url(), server.wrong_ca_path(), None),
        json!({}),
    )
    .await;
    let mut w = wrong.client();
    w.cookie = c.cookie.clone();
    assert_eq!(w.get("/").await.status, 503);
    let wrong = Sidecar::start(
        tls_section(&server.url(), server.wrong_ca_path(), None),
        with_admin(),
    )
    .await;
    let (status, body) = admin(&wrong, "/readyz").await;
    assert_eq!(status, 503, "{body}");
    assert!(
        body.to_lowercase().contains("certificate"),
        "a clear reason: {body}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_redis_with_a_client_certificate() {
    let server = backing::TlsRedis::start_requiring_client_cert();
    let with = Sidecar::start(
        tls_section(
            &server.url(),
            server.ca_path(),
            Some((server.client_cert_path(), server.client_key_path())),
        ),
        json!({}),
    )
    .await;
    let mut c = with.client();
    assert_eq!(
        c.write(&[("x-session-set", r#"{"a":1}"#)]).await.status,
        200
    );
    assert_eq!(c.get("/").await.session(), json!({"a": 1}));

    let without = Sidecar::start(
        tls_section(&server.url(), server.ca_path(), None),
        json!({}),
    )
    .await;
    let mut w = without.client();
    w.cookie = c.cookie.clone();
    assert_eq!(
        w.get("/").await.status,
        503,
        "no client certificate: refused"
    );
}
