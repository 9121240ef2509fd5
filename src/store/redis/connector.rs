//! Where the Redis engine sends its calls: one server, the master a set of sentinels
//! names (followed across failovers), or a cluster (docs/configuration.md#redis).
//!
//! Every call here may be sent twice: the engine's writes carry a write token that
//! makes a resent script a no-op (see the module docs of `super`), loads only refresh
//! a TTL and consume flash (at most once). So a call that failed on the connection is
//! retried once, after the topology was re-resolved where that applies.

use std::{
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering},
    },
    time::{Duration, Instant},
};

use redis::{
    Client, Cmd, RedisError, ScriptInvocation, Value,
    aio::{ConnectionLike, ConnectionManager, ConnectionManagerConfig},
    cluster::ClusterClient,
    cluster_async::ClusterConnection,
};
use tokio::sync::OnceCell;

use super::nodes::NodeTemplate;

/// One call: a script or a plain command.
#[derive(Clone, Copy)]
pub(super) enum Call<'a> {
    Script(&'a ScriptInvocation<'a>),
    Cmd(&'a Cmd),
}

impl Call<'_> {
    pub(super) async fn run<C: ConnectionLike + Send>(
        self,
        conn: &mut C,
    ) -> Result<Value, RedisError> {
        match self {
            Call::Script(inv) => inv.invoke_async::<Value>(conn).await,
            Call::Cmd(cmd) => cmd.query_async::<Value>(conn).await,
        }
    }
}

/// Did the call fail on the connection, or on a demoted master? Then the node may be
/// gone or no longer the master: re-resolve, and the call may be resent. A reply that
/// cannot be parsed counts: a connection closed in the middle of a reply is reported as
/// a parse error of the truncated reply, not as a dropped connection (the manager
/// reconnects on both), and the script may well have run.
pub(super) fn is_connection_trouble(e: &RedisError) -> bool {
    e.is_connection_refusal()
        || e.is_connection_dropped()
        || e.is_io_error()
        || e.kind() == redis::ErrorKind::Parse
        || is_readonly(e)
}

/// A cluster redirect, or a cluster not serving (`MOVED`, `ASK`, `TRYAGAIN`,
/// `CLUSTERDOWN`): a call sent to one node directly (the cache's tracking connections)
/// found the slot elsewhere or unserved, and did not run.
pub(super) fn is_redirect(e: &RedisError) -> bool {
    matches!(e.code(), Some("MOVED" | "ASK" | "TRYAGAIN" | "CLUSTERDOWN"))
}

/// `READONLY`: the node we write to was demoted to a replica (a failover happened).
pub(super) fn is_readonly(e: &RedisError) -> bool {
    matches!(
        e.kind(),
        redis::ErrorKind::Server(redis::ServerErrorKind::ReadOnly)
    ) || e.code() == Some("READONLY")
        || e.to_string().contains("READONLY")
}

/// `max_connections` lazily connected multiplexed connections to one node, used
/// round-robin. An empty cell means "connect on next use": a failed (or cancelled)
/// attempt leaves it empty, and a manager reconnects by itself after a restart.
///
/// A manager reconnects only when its connection fails or closes. One that stops
/// answering and stays open (a black hole: a NAT or firewall on the way forgot it, a
/// host gone without a reset) would time out every call on it forever, so a call that
/// goes unanswered for half of `store.timeout` or more (it timed out, or its caller gave
/// up at `store.timeout`) puts a fresh cell in its slot: the next call there connects
/// anew, and the old connection closes once its last call is gone.
pub(super) struct Pool {
    client: Client,
    config: ConnectionManagerConfig,
    slots: Box<[Slot]>,
    next: AtomicUsize,
    /// How long a call may go unanswered before its connection is left.
    unanswered: Duration,
    /// `host:port`, for `/readyz` and the logs (never credentials).
    pub(super) addr: String,
}

/// One connection slot: the cell its calls use now (replaced, never reset in place, so
/// a call knows whether the connection it used is still the slot's).
type Slot = Mutex<Arc<OnceCell<ConnectionManager>>>;

/// Held by a call while it waits for its reply; dropped still armed (the call timed out
/// or was given up) after [`Pool::unanswered`], it replaces the slot's cell.
struct Unanswered<'a> {
    slot: &'a Slot,
    cell: Option<Arc<OnceCell<ConnectionManager>>>,
    since: Instant,
    after: Duration,
    addr: &'a str,
}

impl Drop for Unanswered<'_> {
    fn drop(&mut self) {
        let Some(cell) = self.cell.take() else {
            return;
        };
        if self.since.elapsed() < self.after {
            return;
        }
        let mut current = self.slot.lock().unwrap_or_else(|e| e.into_inner());
        if Arc::ptr_eq(&current, &cell) {
            tracing::warn!(node = %self.addr, "redis connection not answering; connecting anew");
            *current = Arc::new(OnceCell::new());
        }
    }
}

impl Pool {
    pub(super) fn new(client: Client, template: &NodeTemplate, size: usize, addr: String) -> Self {
        Pool {
            client,
            config: template.manager_config(),
            slots: (0..size.max(1))
                .map(|_| Mutex::new(Arc::new(OnceCell::new())))
                .collect(),
            next: AtomicUsize::new(0),
            unanswered: template.timeout / 2,
            addr,
        }
    }

    /// The next slot, its current cell and its manager (connected on first use).
    async fn manager(
        &self,
    ) -> Result<(&Slot, Arc<OnceCell<ConnectionManager>>, ConnectionManager), RedisError> {
        let index = self.next.fetch_add(1, Ordering::Relaxed) % self.slots.len().max(1);
        let Some(slot) = self.slots.get(index) else {
            return Err(RedisError::from((
                redis::ErrorKind::Client,
                "no connection slot",
            )));
        };
        let cell = slot.lock().unwrap_or_else(|e| e.into_inner()).clone();
        let conn = cell
            .get_or_try_init(|| {
                ConnectionManager::new_with_config(self.client.clone(), self.config.clone())
            })
            .await
            .cloned()?;
        Ok((slot, cell, conn))
    }

    async fn call(&self, call: Call<'_>) -> Result<Value, RedisError> {
        let (slot, cell, mut conn) = self.manager().await?;
        let mut waiting = Unanswered {
            slot,
            cell: Some(cell),
            since: Instant::now(),
            after: self.unanswered,
            addr: &self.addr,
        };
        let result = call.run(&mut conn).await;
        if !result.as_ref().is_err_and(RedisError::is_timeout) {
            waiting.cell = None; // answered (an error is an answer too)
        }
        result
    }
}

/// The topology behind the engine.
pub(super) enum Connector {
    Direct(Pool),
    Sentinel(Sentinel),
    Cluster(Cluster),
}

impl Connector {
    /// Send `call`, once more when the first attempt failed on the connection (see the
    /// module docs). A cluster connection redirects and retries by itself.
    pub(super) async fn call(&self, call: Call<'_>) -> Result<Value, RedisError> {
        match self {
            Connector::Direct(pool) => match pool.call(call).await {
                Err(e) if is_connection_trouble(&e) => pool.call(call).await,
                other => other,
            },
            Connector::Sentinel(s) => match s.call(call).await {
                Err(e) if is_connection_trouble(&e) => s.call(call).await,
                other => other,
            },
            Connector::Cluster(c) => c.call(call).await,
        }
    }

    /// The Sentinel topology, when this is one.
    pub(super) fn sentinel(&self) -> Option<&Sentinel> {
        match self {
            Connector::Sentinel(s) => Some(s),
            _ => None,
        }
    }

    /// The cluster, when this is one.
    pub(super) fn cluster(&self) -> Option<&Cluster> {
        match self {
            Connector::Cluster(c) => Some(c),
            _ => None,
        }
    }

    /// Is this a cluster (scripts may touch one hash slot only)?
    pub(super) fn is_cluster(&self) -> bool {
        matches!(self, Connector::Cluster(_))
    }

    /// Failovers seen: the master address changed (Sentinel), or a node became master
    /// of slots (Cluster, as seen by `/readyz` probes).
    pub(super) fn master_changes(&self) -> u64 {
        match self {
            Connector::Direct(_) => 0,
            Connector::Sentinel(s) => s.inner.master_changes.load(Ordering::Relaxed),
            Connector::Cluster(c) => c.master_changes.load(Ordering::Relaxed),
        }
    }

    /// The topology and its state, one line for `/readyz`.
    pub(super) async fn describe(&self) -> Result<String, RedisError> {
        match self {
            Connector::Direct(pool) => {
                self.call(Call::Cmd(&redis::cmd("PING"))).await?;
                Ok(format!("redis server {}", pool.addr))
            }
            Connector::Sentinel(s) => {
                let reply = self.call(Call::Cmd(&redis::cmd("ROLE"))).await?;
                let pool = s.pool().await?;
                let role = match reply {
                    Value::Array(items) => match items.first() {
                        Some(Value::BulkString(b)) => String::from_utf8_lossy(b).into_owned(),
                        _ => "unknown".to_owned(),
                    },
                    _ => "unknown".to_owned(),
                };
                if role != "master" {
                    // Demoted without an error yet: ask the sentinels again.
                    s.inner.invalidate(&pool);
                    return Err(RedisError::from((
                        redis::ErrorKind::Server(redis::ServerErrorKind::ReadOnly),
                        "the node the sentinels name is not a master",
                        role,
                    )));
                }
                Ok(format!(
                    "redis sentinel master {:?} at {}, {} master change(s) seen",
                    s.inner.master_name,
                    pool.addr,
                    s.inner.master_changes.load(Ordering::Relaxed)
                ))
            }
            Connector::Cluster(c) => c.describe().await,
        }
    }
}

/// How often a serving sidecar re-asks the sentinels who the master is (in the
/// background, without delaying a request), so that a master that hangs rather than
/// fails is left too.
const SENTINEL_RECHECK: Duration = Duration::from_secs(1);

/// The master of `master_name`, as the sentinels say, with a pool of connections to it.
/// On connection trouble or `READONLY` the pool is dropped, and the next call asks the
/// sentinels again.
#[derive(Clone)]
pub(super) struct Sentinel {
    inner: Arc<SentinelInner>,
}

/// Called when the master in use is replaced or left (`store.cache` then drops
/// everything: its tracking connection is on the old master).
pub(super) type OnChange = Arc<dyn Fn() + Send + Sync>;

struct SentinelInner {
    master_name: String,
    /// One lazily connected manager per sentinel (tried in turn).
    sentinels: Box<[(String, Client, OnceCell<ConnectionManager>)]>,
    sentinel_config: ConnectionManagerConfig,
    data: NodeTemplate,
    pool_size: usize,
    current: Mutex<Option<Arc<Pool>>>,
    /// One resolution at a time; callers waiting on it take its result.
    resolving: tokio::sync::Mutex<()>,
    last_master: Mutex<Option<String>>,
    master_changes: AtomicU64,
    born: Instant,
    /// Milliseconds since `born` of the last background check.
    last_check: AtomicU64,
    checking: AtomicBool,
    on_change: Mutex<Option<OnChange>>,
}

impl Sentinel {
    pub(super) fn new(
        master_name: String,
        sentinels: Vec<(String, Client)>,
        sentinel_template: &NodeTemplate,
        data: NodeTemplate,
        pool_size: usize,
    ) -> Self {
        Sentinel {
            inner: Arc::new(SentinelInner {
                master_name,
                sentinels: sentinels
                    .into_iter()
                    .map(|(addr, c)| (addr, c, OnceCell::new()))
                    .collect(),
                sentinel_config: sentinel_template.manager_config(),
                data,
                pool_size,
                current: Mutex::new(None),
                resolving: tokio::sync::Mutex::new(()),
                last_master: Mutex::new(None),
                master_changes: AtomicU64::new(0),
                born: Instant::now(),
                last_check: AtomicU64::new(0),
                checking: AtomicBool::new(false),
                on_change: Mutex::new(None),
            }),
        }
    }

    async fn call(&self, call: Call<'_>) -> Result<Value, RedisError> {
        let pool = self.pool().await?;
        let result = pool.call(call).await;
        if let Err(e) = &result
            && is_connection_trouble(e)
        {
            self.inner.invalidate(&pool);
        }
        self.inner.maybe_recheck();
        result
    }

    async fn pool(&self) -> Result<Arc<Pool>, RedisError> {
        self.inner.pool().await
    }

    /// `host:port` of the master in use (resolved first when there is none).
    pub(super) async fn master_addr(&self) -> Result<String, RedisError> {
        Ok(self.pool().await?.addr.clone())
    }

    /// Call `f` whenever the master in use is replaced or left.
    pub(super) fn on_change(&self, f: OnChange) {
        if let Ok(mut slot) = self.inner.on_change.lock() {
            *slot = Some(f);
        }
    }

    /// The data nodes' template (credentials, TLS, timeouts).
    pub(super) fn data_template(&self) -> &NodeTemplate {
        &self.inner.data
    }
}

impl SentinelInner {
    fn current(&self) -> Option<Arc<Pool>> {
        self.current.lock().ok().and_then(|c| c.clone())
    }

    fn invalidate(&self, pool: &Arc<Pool>) {
        let mut left = false;
        if let Ok(mut current) = self.current.lock()
            && current.as_ref().is_some_and(|c| Arc::ptr_eq(c, pool))
        {
            tracing::warn!(master = %pool.addr, "redis master unreachable or demoted; asking the sentinels again");
            *current = None;
            left = true;
        }
        if left {
            self.changed();
        }
    }

    fn changed(&self) {
        let f = self.on_change.lock().ok().and_then(|f| f.clone());
        if let Some(f) = f {
            f();
        }
    }

    async fn pool(&self) -> Result<Arc<Pool>, RedisError> {
        if let Some(pool) = self.current() {
            return Ok(pool);
        }
        let _one = self.resolving.lock().await;
        if let Some(pool) = self.current() {
            return Ok(pool);
        }
        let (host, port) = self.ask_sentinels().await?;
        let pool = Arc::new(self.pool_for(&host, port)?);
        self.install(pool.clone());
        Ok(pool)
    }

    fn pool_for(&self, host: &str, port: u16) -> Result<Pool, RedisError> {
        let client = self.data.client(self.data.info(host, port)?)?;
        Ok(Pool::new(
            client,
            &self.data,
            self.pool_size,
            format!("{host}:{port}"),
        ))
    }

    /// Make `pool` the current one; count a master change when the address differs
    /// from the last one resolved.
    fn install(&self, pool: Arc<Pool>) {
        if let Ok(mut last) = self.last_master.lock() {
            if let Some(previous) = last.as_ref()
                && *previous != pool.addr
            {
                self.master_changes.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(from = %previous, to = %pool.addr, "redis master changed (sentinel)");
            }
            *last = Some(pool.addr.clone());
        }
        self.changed();
        if let Ok(mut current) = self.current.lock() {
            *current = Some(pool);
        }
    }

    /// `SENTINEL GET-MASTER-ADDR-BY-NAME` of the first sentinel that answers.
    async fn ask_sentinels(&self) -> Result<(String, u16), RedisError> {
        let mut last_error = None;
        for (addr, client, cell) in self.sentinels.iter() {
            let conn = cell
                .get_or_try_init(|| {
                    ConnectionManager::new_with_config(client.clone(), self.sentinel_config.clone())
                })
                .await
                .cloned();
            let mut conn = match conn {
                Ok(conn) => conn,
                Err(e) => {
                    last_error = Some(e);
                    continue;
                }
            };
            let reply: Result<Option<(String, String)>, RedisError> = redis::cmd("SENTINEL")
                .arg("GET-MASTER-ADDR-BY-NAME")
                .arg(&self.master_name)
                .query_async(&mut conn)
                .await;
            match reply {
                Ok(Some((host, port))) => match port.parse() {
                    Ok(port) => return Ok((host, port)),
                    Err(_) => {
                        last_error = Some(RedisError::from((
                            redis::ErrorKind::Parse,
                            "sentinel answered a port that is not a number",
                        )))
                    }
                },
                Ok(None) => {
                    last_error = Some(RedisError::from((
                        redis::ErrorKind::MasterNameNotFoundBySentinel,
                        "sentinel does not know the master name",
                        format!("{:?} (asked {addr})", self.master_name),
                    )))
                }
                Err(e) => last_error = Some(e),
            }
        }
        Err(last_error.unwrap_or_else(|| {
            RedisError::from((
                redis::ErrorKind::EmptySentinelList,
                "no sentinel configured",
            ))
        }))
    }

    /// At most once per [`SENTINEL_RECHECK`], ask the sentinels again in the
    /// background and switch when they name another master.
    fn maybe_recheck(self: &Arc<Self>) {
        let now = self.born.elapsed().as_millis() as u64;
        let last = self.last_check.load(Ordering::Relaxed);
        if now.saturating_sub(last) < SENTINEL_RECHECK.as_millis() as u64
            || self.checking.swap(true, Ordering::AcqRel)
        {
            return;
        }
        self.last_check.store(now, Ordering::Relaxed);
        let inner = self.clone();
        tokio::spawn(async move {
            let check = async {
                let (host, port) = inner.ask_sentinels().await?;
                let addr = format!("{host}:{port}");
                if inner.current().is_some_and(|p| p.addr != addr) {
                    let pool = Arc::new(inner.pool_for(&host, port)?);
                    inner.install(pool);
                }
                Ok::<(), RedisError>(())
            };
            // Bounded: a hung sentinel must not keep the flag set.
            let _ = tokio::time::timeout(inner.data.timeout * 2, check).await;
            inner.checking.store(false, Ordering::Release);
        });
    }
}

/// A Redis Cluster: the driver's cluster connection follows `MOVED`/`ASK` and slot-map
/// changes; connected on first use (the sidecar starts while the cluster is down).
pub(super) struct Cluster {
    client: ClusterClient,
    conn: OnceCell<ClusterConnection>,
    /// The masters seen by the last `/readyz` probe (to count changes).
    masters: Mutex<Vec<String>>,
    master_changes: AtomicU64,
}

impl Cluster {
    /// The driver's client (the cache's tracking task opens its own connection).
    pub(super) fn client(&self) -> ClusterClient {
        self.client.clone()
    }

    pub(super) fn new(client: ClusterClient) -> Self {
        Cluster {
            client,
            conn: OnceCell::new(),
            masters: Mutex::new(Vec::new()),
            master_changes: AtomicU64::new(0),
        }
    }

    async fn connection(&self) -> Result<ClusterConnection, RedisError> {
        self.conn
            .get_or_try_init(|| self.client.get_async_connection())
            .await
            .cloned()
    }

    async fn call(&self, call: Call<'_>) -> Result<Value, RedisError> {
        let mut conn = self.connection().await?;
        call.run(&mut conn).await
    }

    /// `CLUSTER NODES` of one node: the masters serving slots, and the cluster state.
    async fn describe(&self) -> Result<String, RedisError> {
        let mut conn = self.connection().await?;
        let info: String = redis::cmd("CLUSTER")
            .arg("INFO")
            .query_async(&mut conn)
            .await?;
        let state = info
            .lines()
            .find_map(|l| l.strip_prefix("cluster_state:"))
            .unwrap_or("unknown")
            .trim()
            .to_owned();
        let nodes: String = redis::cmd("CLUSTER")
            .arg("NODES")
            .query_async(&mut conn)
            .await?;
        let masters = serving_masters(&nodes);
        if let Ok(mut seen) = self.masters.lock() {
            if !seen.is_empty() {
                let new = masters.iter().filter(|m| !seen.contains(m)).count();
                if new > 0 {
                    self.master_changes.fetch_add(new as u64, Ordering::Relaxed);
                }
            }
            seen.clone_from(&masters);
        }
        if state != "ok" {
            return Err(RedisError::from((
                redis::ErrorKind::Server(redis::ServerErrorKind::ClusterDown),
                "cluster state is not ok",
                state,
            )));
        }
        Ok(format!(
            "redis cluster ok, {} master(s) serving slots, {} master change(s) seen",
            masters.len(),
            self.master_changes.load(Ordering::Relaxed)
        ))
    }
}

/// Every master that serves at least one slot, from `CLUSTER NODES` text: its
/// `ip:port` and a line of it with its slots (sorted by address; what `store.cache`
/// compares to notice a topology change).
pub(super) fn masters_with_slots(nodes: &str) -> Vec<(String, String)> {
    let mut out: Vec<(String, String)> = nodes
        .lines()
        .filter_map(|line| {
            let fields: Vec<&str> = line.split_whitespace().collect();
            let flags = fields.get(2)?;
            let slots = fields.get(8..)?;
            if flags.split(',').any(|f| f == "master")
                && !flags.contains("fail")
                && !slots.is_empty()
            {
                let addr = fields.get(1)?.split('@').next()?.to_owned();
                let line = format!("{addr} {}", slots.join(" "));
                Some((addr, line))
            } else {
                None
            }
        })
        .collect();
    out.sort();
    out
}

/// The `ip:port` of every master that serves at least one slot, from `CLUSTER NODES`
/// text (`<id> <ip:port@cport> <flags> <master> <ping> <pong> <epoch> <state> <slots>...`).
fn serving_masters(nodes: &str) -> Vec<String> {
    let mut out: Vec<String> = nodes
        .lines()
        .filter_map(|line| {
            let fields: Vec<&str> = line.split_whitespace().collect();
            let flags = fields.get(2)?;
            let serving = fields.len() > 8;
            if flags.split(',').any(|f| f == "master") && !flags.contains("fail") && serving {
                let addr = fields.get(1)?.split('@').next()?;
                Some(addr.to_owned())
            } else {
                None
            }
        })
        .collect();
    out.sort();
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cluster_nodes_masters() {
        let text = "\
a 127.0.0.1:7000@17000 myself,master - 0 0 1 connected 0-5460
b 127.0.0.1:7001@17001 master - 0 0 2 connected 5461-10922
c 127.0.0.1:7002@17002 master,fail - 0 0 3 disconnected 10923-16383
d 127.0.0.1:7003@17003 slave a 0 0 1 connected
e 127.0.0.1:7004@17004 master - 0 0 5 connected
";
        assert_eq!(
            serving_masters(text),
            vec!["127.0.0.1:7000".to_owned(), "127.0.0.1:7001".to_owned()]
        );
        assert_eq!(
            masters_with_slots(text),
            vec![
                (
                    "127.0.0.1:7000".to_owned(),
                    "127.0.0.1:7000 0-5460".to_owned()
                ),
                (
                    "127.0.0.1:7001".to_owned(),
                    "127.0.0.1:7001 5461-10922".to_owned()
                ),
            ]
        );
    }

    #[test]
    fn readonly_is_recognised() {
        let e = RedisError::from((
            redis::ErrorKind::Server(redis::ServerErrorKind::ReadOnly),
            "You can't write against a read only replica.",
        ));
        assert!(is_readonly(&e) && is_connection_trouble(&e));
        let other = RedisError::from((redis::ErrorKind::Client, "nope"));
        assert!(!is_connection_trouble(&other));
    }

    /// A connection closed in the middle of a reply reaches the caller as a parse error
    /// of the truncated reply: the call may have run, so it is resent like a dropped
    /// connection (tests/store_faults.rs, `a_reply_cut_mid_way_is_resent_and_applied_once`).
    #[test]
    fn a_truncated_reply_is_connection_trouble() {
        let cut = RedisError::from((redis::ErrorKind::Parse, "Parse error at 0"));
        assert!(is_connection_trouble(&cut));
    }
}
