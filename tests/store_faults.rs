//! Store faults under load: a fault-injecting TCP proxy (`backing::faults`) between the
//! sidecar and a real `redis-server` or `memcached`, several concurrent clients, each
//! with its own session and its own marker, writing all the time.
//!
//! Every write `k` of a client sets its own key `w<k>` and increments `n` by one, so the
//! stored session says exactly which writes were applied (the `w` keys) and whether one
//! was applied twice (`n` larger than the number of `w` keys). Asserted in every
//! scenario, for both engines:
//!
//! - a 2xx answer carries the client's own session (its marker), never another's, and
//!   everything acknowledged before it; no write is ever applied twice;
//! - every write answered 2xx is stored; a write answered 503 is not, except where the
//!   fault can lose a reply after the store applied the write (the scenario says so):
//!   then it is applied once, never twice (docs/protocol.md §5.8);
//! - every answer comes within its bound (each store call is bounded by
//!   `store.timeout`): a correctness bound, not a performance claim;
//! - once the fault is cleared, service comes back without a restart;
//! - nothing leaks: the proxy's open connections return to the engine's pool size and
//!   the sidecar's `session_sidecar_runtime_alive_tasks` to near its baseline.
//!
//! The store is checked at the end through a second sidecar connected to the server
//! directly. Each scenario prints one line of counts (`--nocapture`); docs/decisions.md
//! ("Store faults") records what they showed.

mod backing;
mod harness;

use std::{
    collections::BTreeSet,
    net::SocketAddr,
    sync::OnceLock,
    time::{Duration, Instant},
};

use backing::{
    MemcachedServer, RedisServer,
    faults::{Dir, Fault, FaultProxy},
};
use harness::{Client, Sidecar};
use serde_json::{Value, json};

/// `store.timeout` of every sidecar here.
const TIMEOUT: Duration = Duration::from_millis(500);
/// Concurrent clients, each with its own session.
const CLIENTS: usize = 6;
/// Slack on the alive-task count after recovery: the upstream keep-alive pool and the
/// store connections may sit a little differently than at the baseline. A leak (a task
/// per failed call) is far larger.
const TASK_SLACK: i64 = 8;
/// An answer's bound when a request makes two store calls (load, then write), each
/// bounded by `store.timeout`, plus a generous margin for a slow shared machine.
const TWO_CALLS: Duration = Duration::from_millis(2 * 500 + 1000);
/// The bound when every request fails at its load (one call).
const ONE_CALL: Duration = Duration::from_millis(500 + 1000);

/// One server of each kind for the whole binary; every test has its own sessions.
fn redis() -> &'static RedisServer {
    static SERVER: OnceLock<RedisServer> = OnceLock::new();
    SERVER.get_or_init(RedisServer::start)
}

fn memcached() -> &'static MemcachedServer {
    static SERVER: OnceLock<MemcachedServer> = OnceLock::new();
    SERVER.get_or_init(MemcachedServer::start)
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Engine {
    Redis,
    Memcached,
}

impl Engine {
    fn server_port(self) -> u16 {
        match self {
            Engine::Redis => redis().port(),
            Engine::Memcached => memcached().port(),
        }
    }

    /// The `store:` section for a server (or the proxy) on `port`.
    fn section(self, port: u16) -> Value {
        let timeout = format!("{}ms", TIMEOUT.as_millis());
        match self {
            Engine::Redis => json!({"engine": "redis", "timeout": timeout,
                "storage": {"host": "127.0.0.1", "port": port}}),
            Engine::Memcached => json!({"engine": "memcached", "timeout": timeout,
                "storage": {"servers": [format!("127.0.0.1:{port}")]}}),
        }
    }

    /// Connections the engine keeps open at most (`store.storage.max_connections`
    /// defaults): what the proxy may still see open once the load stopped.
    fn pool(self) -> usize {
        match self {
            Engine::Redis => 2,
            Engine::Memcached => 16,
        }
    }
}

/// What a scenario does and what it allows.
struct Scenario {
    name: &'static str,
    /// Set on the proxy before the load starts (no request is in flight then).
    fault: fn(&FaultProxy),
    /// How long the load runs under the fault.
    duration: Duration,
    /// The longest answer allowed under the fault.
    bound: Duration,
    /// Every request under the fault is answered 2xx.
    all_ok: bool,
    /// Every request under the fault is answered 503.
    all_unavailable: bool,
    /// The fault can lose a reply after the store applied the write: a write answered
    /// 503 may then have been applied (once).
    reply_may_be_lost: bool,
}

/// Counts of one phase.
#[derive(Debug, Default, Clone, Copy)]
struct Stats {
    ok: usize,
    unavailable: usize,
    max_latency: Duration,
}

impl Stats {
    fn add(&mut self, status: u16, took: Duration) {
        match status {
            200 => self.ok += 1,
            _ => self.unavailable += 1,
        }
        self.max_latency = self.max_latency.max(took);
    }

    fn merge(&mut self, other: Stats) {
        self.ok += other.ok;
        self.unavailable += other.unavailable;
        self.max_latency = self.max_latency.max(other.max_latency);
    }
}

/// One client: its session, its marker and the fate of each of its writes.
struct Writer {
    marker: String,
    client: Client,
    next: u64,
    acked: BTreeSet<u64>,
    failed: BTreeSet<u64>,
}

impl Writer {
    async fn create(sidecar: &Sidecar, marker: String) -> Writer {
        let mut client = sidecar.client();
        let r = client
            .write(&[("x-session-set", &json!({ "marker": marker }).to_string())])
            .await;
        assert_eq!(r.status, 200, "{r:?}");
        assert!(client.cookie.is_some(), "a session was created");
        Writer {
            marker,
            client,
            next: 1,
            acked: BTreeSet::new(),
            failed: BTreeSet::new(),
        }
    }

    /// One write; returns its status and how long the answer took.
    async fn step(&mut self, bound: Duration) -> (u16, Duration) {
        let k = self.next;
        self.next += 1;
        let cookie = self.client.cookie.clone();
        let set = format!(r#"{{"w{k}":{k}}}"#);
        let started = Instant::now();
        let r = self
            .client
            .write(&[("x-session-set", &set), ("x-session-incr", r#"{"n":1}"#)])
            .await;
        let took = started.elapsed();
        assert!(
            took <= bound,
            "{}: write {k} answered {} after {took:?}, over its bound {bound:?}",
            self.marker,
            r.status
        );
        match r.status {
            200 => {
                assert_eq!(
                    self.client.cookie, cookie,
                    "{}: the session was replaced",
                    self.marker
                );
                assert_eq!(r.sstatus(), "active", "{}", self.marker);
                // What the app saw is the session before this write.
                self.check(&r.session(), "seen by the app");
                self.acked.insert(k);
            }
            503 => {
                assert!(
                    String::from_utf8_lossy(&r.body).contains("request id"),
                    "the sidecar's own 503: {r:?}"
                );
                self.failed.insert(k);
            }
            other => panic!("{}: write {k} answered {other}: {r:?}", self.marker),
        }
        (r.status, took)
    }

    /// `session` is this client's, holds every write acknowledged so far, and no write
    /// in it was applied twice. Returns the writes it holds.
    fn check(&self, session: &Value, when: &str) -> BTreeSet<u64> {
        assert_eq!(
            session["marker"],
            json!(self.marker),
            "another session's data ({when}): {session}"
        );
        let obj = session.as_object().expect("a session is an object");
        let applied: BTreeSet<u64> = obj
            .iter()
            .filter_map(|(key, value)| {
                let k: u64 = key.strip_prefix('w')?.parse().ok()?;
                assert_eq!(value, &json!(k), "{}: w{k} holds {value}", self.marker);
                Some(k)
            })
            .collect();
        let n = session["n"].as_u64().unwrap_or(0);
        assert_eq!(
            n as usize,
            applied.len(),
            "{}: n = {n} for {} applied writes: a write was applied twice ({when})",
            self.marker,
            applied.len()
        );
        assert!(
            self.acked.is_subset(&applied),
            "{}: acknowledged writes missing ({when}): {:?}",
            self.marker,
            self.acked.difference(&applied).collect::<Vec<_>>()
        );
        assert!(
            applied.iter().all(|k| *k < self.next),
            "{}: a write that was never sent",
            self.marker
        );
        applied
    }
}

/// Run every writer concurrently, each until `done(its stats)` or `deadline`; returns
/// the writers and their stats.
async fn load(
    writers: Vec<Writer>,
    bound: Duration,
    deadline: Instant,
    done: fn(&Stats, usize) -> bool,
) -> (Vec<Writer>, Vec<Stats>) {
    let tasks: Vec<_> = writers
        .into_iter()
        .map(|mut w| {
            tokio::spawn(async move {
                let mut stats = Stats::default();
                let mut streak = 0;
                while Instant::now() < deadline && !done(&stats, streak) {
                    let (status, took) = w.step(bound).await;
                    stats.add(status, took);
                    streak = if status == 200 { streak + 1 } else { 0 };
                    // A short pause keeps sessions small (one key per write).
                    tokio::time::sleep(Duration::from_millis(15)).await;
                }
                (w, stats, streak)
            })
        })
        .collect();
    let mut writers = Vec::new();
    let mut stats = Vec::new();
    for t in tasks {
        let (w, s, _) = t.await.expect("a writer panicked");
        writers.push(w);
        stats.push(s);
    }
    (writers, stats)
}

/// `session_sidecar_runtime_alive_tasks` from the admin listener.
async fn alive_tasks(admin: SocketAddr) -> i64 {
    let r = Client::new(admin).get("/metrics").await;
    assert_eq!(r.status, 200);
    let text = String::from_utf8_lossy(&r.body);
    text.lines()
        .find_map(|l| l.strip_prefix("session_sidecar_runtime_alive_tasks "))
        .and_then(|v| v.trim().parse::<f64>().ok())
        .map(|v| v as i64)
        .unwrap_or_else(|| panic!("no runtime_alive_tasks gauge in\n{text}"))
}

async fn run(engine: Engine, sc: Scenario) {
    let label = format!("{engine:?} {}", sc.name);
    let proxy = FaultProxy::start(engine.server_port());
    let sidecar = Sidecar::start(
        engine.section(proxy.port()),
        json!({"admin": {"listen": "127.0.0.1:0"}}),
    )
    .await;
    let admin = sidecar.admin_addr();

    // Sessions, then a few concurrent writes with no fault: every pool is warm.
    let unique = format!(
        "{:x}",
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos()
    );
    let mut writers = Vec::new();
    for who in 0..CLIENTS {
        let marker = format!("{label}/{who}/{unique}/{}", proxy.port());
        writers.push(Writer::create(&sidecar, marker).await);
    }
    let far = Instant::now() + Duration::from_secs(30);
    let (writers, warm) = load(writers, TWO_CALLS, far, |s, _| s.ok + s.unavailable >= 3).await;
    for s in &warm {
        assert_eq!(s.unavailable, 0, "{label}: a 503 before any fault");
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    let baseline_tasks = alive_tasks(admin).await;
    let baseline_open = proxy.open();

    // The fault, under load.
    (sc.fault)(&proxy);
    let until = Instant::now() + sc.duration;
    let (writers, during) = load(writers, sc.bound, until, |_, _| false).await;
    let mut fault = Stats::default();
    for s in during {
        fault.merge(s);
    }
    if sc.all_ok {
        assert_eq!(fault.unavailable, 0, "{label}: {fault:?}");
    }
    if sc.all_unavailable {
        assert_eq!(fault.ok, 0, "{label}: {fault:?}");
    }

    // Cleared: every client gets three 2xx in a row, without restarting anything.
    proxy.clear();
    let cleared = Instant::now();
    let recovery_deadline = cleared + Duration::from_secs(20);
    let (writers, after) = load(writers, TWO_CALLS, recovery_deadline, |_, streak| {
        streak >= 3
    })
    .await;
    let recovered_in = cleared.elapsed();
    let mut recovery = Stats::default();
    for s in after {
        recovery.merge(s);
    }
    assert!(
        Instant::now() < recovery_deadline,
        "{label}: no recovery within 20 s of clearing the fault: {recovery:?}, proxy {} open",
        proxy.open()
    );

    // Nothing leaks: connections back to the pool's size, tasks to near the baseline.
    let leak_deadline = Instant::now() + Duration::from_secs(10);
    let (open, tasks) = loop {
        let open = proxy.open();
        let tasks = alive_tasks(admin).await;
        if open <= engine.pool() && tasks <= baseline_tasks + TASK_SLACK {
            break (open, tasks);
        }
        assert!(
            Instant::now() < leak_deadline,
            "{label}: leak: {open} store connections open (pool {}), {tasks} tasks alive \
             (baseline {baseline_tasks})",
            engine.pool()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };

    // The store itself, through a sidecar with no proxy in the way.
    let mut direct = Sidecar::start(engine.section(engine.server_port()), json!({})).await;
    let mut applied_on_503 = 0;
    let mut acked = 0;
    for w in &writers {
        let mut c = direct.client();
        c.cookie = w.client.cookie.clone();
        let r = c.get("/").await;
        assert_eq!(r.status, 200, "{r:?}");
        assert_eq!(r.sstatus(), "active", "{}", w.marker);
        let stored = w.check(&r.session(), "in the store afterwards");
        applied_on_503 += stored.intersection(&w.failed).count();
        acked += w.acked.len();
        assert_eq!(
            stored.len(),
            w.acked.len() + stored.intersection(&w.failed).count(),
            "{}: every write is acknowledged or answered 503",
            w.marker
        );
    }
    direct.stop().await;
    if !sc.reply_may_be_lost {
        assert_eq!(
            applied_on_503, 0,
            "{label}: writes answered 503 were applied"
        );
    }

    eprintln!(
        "[{label}] fault: {} x 2xx, {} x 503, max {:.3} s | recovery ({:.1} s): {} x 2xx, \
         {} x 503, max {:.3} s | writes: {acked} acknowledged and stored, {applied_on_503} \
         answered 503 but applied (once) | store connections: {open} open (before {baseline_open}), \
         {} accepted, {} cut, {} swallowed | tasks: {tasks} (baseline {baseline_tasks})",
        fault.ok,
        fault.unavailable,
        fault.max_latency.as_secs_f64(),
        recovered_in.as_secs_f64(),
        recovery.ok,
        recovery.unavailable,
        recovery.max_latency.as_secs_f64(),
        proxy.total(),
        proxy.cuts(),
        proxy.swallowed(),
    );
}

/// Both directions 40 ms slower, far below `store.timeout`: nothing fails.
async fn latency_below_timeout(engine: Engine) {
    run(
        engine,
        Scenario {
            name: "latency below timeout",
            fault: |p| p.set_both(Fault::Delay(Duration::from_millis(40))),
            duration: Duration::from_secs(2),
            bound: TWO_CALLS,
            all_ok: true,
            all_unavailable: false,
            reply_may_be_lost: false,
        },
    )
    .await;
}

/// Both directions a second slower (twice `store.timeout`): every load times out, so
/// every request is a 503 within `store.timeout` + margin, and no write is sent.
async fn latency_above_timeout(engine: Engine) {
    run(
        engine,
        Scenario {
            name: "latency above timeout",
            fault: |p| p.set_both(Fault::Delay(2 * TIMEOUT)),
            duration: Duration::from_secs(2),
            bound: ONE_CALL,
            all_ok: false,
            all_unavailable: true,
            reply_may_be_lost: false,
        },
    )
    .await;
}

/// Every store connection is closed (FIN) after 1500 reply bytes, mid-reply.
async fn dropped_mid_reply(engine: Engine) {
    run(
        engine,
        Scenario {
            name: "dropped mid-reply",
            fault: |p| p.set(Dir::ToClient, Fault::DropAfter(1500)),
            duration: Duration::from_secs(2),
            bound: TWO_CALLS,
            all_ok: false,
            all_unavailable: false,
            reply_may_be_lost: true,
        },
    )
    .await;
}

/// Every store connection is reset (RST) after 1500 reply bytes, mid-reply.
async fn reset_mid_reply(engine: Engine) {
    run(
        engine,
        Scenario {
            name: "reset mid-reply",
            fault: |p| p.set(Dir::ToClient, Fault::ResetAfter(1500)),
            duration: Duration::from_secs(2),
            bound: TWO_CALLS,
            all_ok: false,
            all_unavailable: false,
            reply_may_be_lost: true,
        },
    )
    .await;
}

/// The store vanishes into a black hole: open connections lose every byte and never
/// recover, new ones are accepted and never answered. Every load times out, no write
/// is sent; after the fault the sidecar must leave the dead connections.
async fn black_hole(engine: Engine) {
    run(
        engine,
        Scenario {
            name: "black hole",
            fault: |p| p.set_both(Fault::BlackHole),
            duration: Duration::from_secs(2),
            bound: ONE_CALL,
            all_ok: false,
            all_unavailable: true,
            reply_may_be_lost: false,
        },
    )
    .await;
}

/// Up one second, black hole the next, for four seconds, under load: writes in flight
/// when a black phase starts lose their replies.
async fn flapping(engine: Engine) {
    run(
        engine,
        Scenario {
            name: "flapping every second",
            fault: |p| p.set_both(Fault::Flap(Duration::from_secs(1))),
            duration: Duration::from_secs(4),
            bound: TWO_CALLS,
            all_ok: false,
            all_unavailable: false,
            reply_may_be_lost: true,
        },
    )
    .await;
}

/// The store goes away: open connections reset, new ones refused.
async fn refused(engine: Engine) {
    run(
        engine,
        Scenario {
            name: "connections refused",
            fault: |p| {
                p.refuse(true);
                p.cut_all(true);
                // Every connection gone before the load starts (none can come back).
                let deadline = Instant::now() + Duration::from_secs(5);
                while p.open() > 0 {
                    assert!(Instant::now() < deadline, "connections still open");
                    std::thread::sleep(Duration::from_millis(1));
                }
            },
            duration: Duration::from_secs(2),
            bound: ONE_CALL,
            all_ok: false,
            all_unavailable: true,
            reply_may_be_lost: false,
        },
    )
    .await;
}

macro_rules! scenarios {
    ($engine:ident, $variant:ident: $($scenario:ident),* $(,)?) => {
        mod $engine {
            $(
                #[tokio::test]
                async fn $scenario() {
                    super::$scenario(super::Engine::$variant).await;
                }
            )*
        }
    };
}

scenarios!(redis_standalone, Redis: latency_below_timeout, latency_above_timeout,
    dropped_mid_reply, reset_mid_reply, black_hole, flapping, refused);
scenarios!(memcached_engine, Memcached: latency_below_timeout, latency_above_timeout,
    dropped_mid_reply, reset_mid_reply, black_hole, flapping, refused);

/// One reply cut in the middle, deterministically, at the engine level (the sidecar's
/// store behind `store.timeout`, as in production; one connection).
mod cut_reply {
    use std::{sync::Arc, time::Duration};

    use super::{Dir, Fault, FaultProxy, TIMEOUT, memcached, redis};
    use session_sidecar::{
        config::{MemcachedOptions, RedisOptions, RedisTopology},
        cookie::SessionId,
        metrics::Metrics,
        protocol::Op,
        store::{
            Lifetimes, SessionStore, StoreError, Target, WriteOutcome, WritePlan,
            memcached::MemcachedStore, redis::RedisStore, timed::TimedStore,
        },
    };

    fn lifetimes() -> Lifetimes {
        Lifetimes {
            ttl: Duration::from_secs(60),
            absolute_ttl: Duration::from_secs(3600),
            max_size: 8192,
            touch_after: Duration::ZERO,
        }
    }

    fn plan(target: Target, revision: Option<session_sidecar::store::Revision>) -> WritePlan {
        WritePlan {
            target,
            ops: vec![Op::Incr("\"n\"".into(), 1)],
            max_age: None,
            revision,
            owner: Default::default(),
            client: None,
        }
    }

    async fn n<S: SessionStore>(store: &S, id: &SessionId) -> String {
        let loaded = store.load(id).await.expect("load").expect("the session");
        loaded.data.get("\"n\"").cloned().expect("n")
    }

    /// Redis: the connection closes after the first byte of a write's reply. The
    /// truncated reply is a parse error to the driver; the engine resends the call on a
    /// fresh connection, and its write token makes the resend a no-op: applied once,
    /// answered as applied. (Before the fix a parse error was not resent: the request
    /// got a 503 although the write had been applied.)
    #[tokio::test]
    async fn redis_a_reply_cut_mid_way_is_resent_and_applied_once() {
        let proxy = FaultProxy::start(redis().port());
        let options = RedisOptions {
            topology: RedisTopology::Server {
                host: "127.0.0.1".into(),
                port: proxy.port(),
            },
            max_connections: 1,
            ..RedisOptions::default()
        };
        let engine = RedisStore::new(&options, "faults:", TIMEOUT, lifetimes()).expect("store");
        let store = TimedStore::new(engine, TIMEOUT, Arc::new(Metrics::new()));
        let id = SessionId::generate().expect("id");
        let created = store.apply(&plan(Target::Create(id.clone()), None)).await;
        assert_eq!(created.expect("create"), WriteOutcome::Applied);
        // Every cut point inside the reply (`*1\r\n$2\r\nOK\r\n`, 12 bytes): at a token boundary the
        // driver sees the connection close, inside a token a parse error.
        for (round, cut) in (1..=11).enumerate() {
            let round = round + 1;
            proxy.set(Dir::ToClient, Fault::DropOnceAfter(cut));
            let write = store.apply(&plan(Target::Existing(id.clone()), None)).await;
            assert_eq!(proxy.cuts(), round, "the reply was cut after {cut} bytes");
            assert_eq!(
                write.unwrap_or_else(|e| panic!("cut after {cut} bytes: {e}")),
                WriteOutcome::Applied,
                "cut after {cut} bytes"
            );
            assert_eq!(
                n(&store, &id).await,
                (round + 1).to_string(),
                "applied once"
            );
        }
    }

    /// memcached: the same cut. Its writes carry no token, so the engine does not
    /// resend them: the call fails (the request gets a 503) and the write stands,
    /// applied once (docs/protocol.md §5.8).
    #[tokio::test]
    async fn memcached_a_write_whose_reply_is_cut_fails_and_stands_once() {
        let proxy = FaultProxy::start(memcached().port());
        let options = MemcachedOptions {
            servers: vec![format!("127.0.0.1:{}", proxy.port())],
            max_connections: 1,
        };
        let engine = MemcachedStore::new(&options, "faults:", lifetimes());
        let store = TimedStore::new(engine, TIMEOUT, Arc::new(Metrics::new()));
        let id = SessionId::generate().expect("id");
        let created = store.apply(&plan(Target::Create(id.clone()), None)).await;
        assert_eq!(created.expect("create"), WriteOutcome::Applied);
        for round in 1..=3 {
            // With the item the load read, the write is one `ms … C<cas>`: the cut is in
            // its reply.
            let loaded = store.load(&id).await.expect("load").expect("the session");
            proxy.set(Dir::ToClient, Fault::DropOnceAfter(1));
            let write = store
                .apply(&plan(Target::Existing(id.clone()), loaded.revision))
                .await;
            assert_eq!(proxy.cuts(), round, "the reply was cut");
            assert!(
                matches!(write, Err(StoreError::Unavailable(_))),
                "round {round}: {write:?}"
            );
            assert_eq!(
                n(&store, &id).await,
                (round + 1).to_string(),
                "applied once"
            );
        }
    }
}
