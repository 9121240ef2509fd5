//! The Redis engine (docs/protocol.md §9.7).
//!
//! # Key layout
//!
//! For a session id `id`, let `sk = id.store_key()` (base64url of SHA-256 of the id: a
//! store dump reveals nothing a client could present) and `p = store.key_prefix`.
//!
//! | key | db | type | content |
//! |---|---|---|---|
//! | `<p>{<sk>}`, e.g. `session:{Zm9v…}` | `db_sessions` | hash | the session data and its meta fields |
//! | `<p>{<sk>}:flash` | `db_notifications` | hash | pending flash (notifications) |
//! | `<p>{<sk>}:tmp` | `db_sessions` | string | scratch for exact `Incr`; exists only while a script runs |
//! | `<p>{<sk>}:w:<token>` | `db_sessions` | string or hash | write token: this write was applied (see below) |
//! | `<p>{o.<ok>}` | `db_sessions` | sorted set | an owner's index (see below) |
//!
//! The literal braces around the store key are a Redis Cluster hash tag: every key of one
//! session hashes to the same slot, so one script may touch them all.
//!
//! # Owner indexes
//!
//! For an owner (docs/protocol.md §11) let `ok = owner.key()` (base64url of SHA-256 of
//! its literal: no key names an owner). Its index `<p>{o.<ok>}` is a sorted set: member
//! = a session's store key `sk`, score = the entry's bound (unix ms, the Redis clock).
//! `{o.<ok>}` is its own hash tag (`.` is not in base64url, so it never equals a
//! session's): on a cluster the index lives in its own slot, and every index script
//! (`redis/index.lua`) touches only the index key. Adding an entry drops those whose
//! bound passed, keeps the later of two bounds (`ZADD GT`, Redis 6.2 or newer) and sets
//! the key to expire at its latest score (`PEXPIREAT`); removing the last member deletes
//! it. Calls on sessions by store key (destroy, show, extend the bound:
//! `redis/sessions.lua`) name one session per call on a cluster, many elsewhere. The
//! order between the index and the session writes is [`super::owners`]'.
//!
//! # Write tokens: a resent write is applied once
//!
//! A call whose reply was lost (the connection dropped after Redis ran the script) is
//! resent: by the engine once (`redis/connector.rs`), and by the cluster driver on reconnection. A resent
//! `Incr` must not count twice. Every write call therefore carries a token unique to
//! the call (a random per-process prefix and a counter); the script that writes leaves
//! the token key behind, and the same call resent finds it and answers as the first
//! time without writing. A token lives `max(10 s, 4 × store.timeout)` (a resend arrives
//! within `store.timeout` of the first send: the call is abandoned after it), and never
//! longer than its session.
//!
//! # Topologies
//!
//! One server, the master a set of sentinels names, or a cluster (`redis/connector.rs`). On a
//! cluster one script touches one hash slot, and the two ids of a regenerate hash to
//! different slots: a move is two atomic scripts there, take (read and delete the old
//! session) then create the new one from it with the plan's ops; if the ops are refused
//! the taken session is put back, so a refused write changes nothing. A store failure
//! between the two steps loses the session (the answer is 503 and the old id is
//! already dead): the same outcome as a failure of the store itself.
//!
//! Hash fields of the data and flash hashes are in the wire form of [`crate::store`]:
//! a user key is stored as its JSON string literal *with the quotes* (field `"user"`,
//! value `"ann"` as JSON text), so `X-Session` is built by concatenation. The data hash
//! also holds meta fields, which never start with `"`:
//! - `created`: creation time in unix milliseconds, by the Redis server's clock
//!   (`TIME`): many sidecars share one store, so the store's clock is the one clock;
//! - `max_age`: the per-session idle lifetime in seconds (`X-Session-Max-Age`); absent
//!   by default, and then `session.ttl` applies;
//! - `seen`: the last refresh of the idle lifetime in unix ms (Redis clock), for
//!   `session.touch_after` and the admin API's `last_seen`; a session written before it
//!   existed has none, and its next load refreshes;
//! - `owner`: the owner's JSON string literal, and `bound`: the owned session's bound in
//!   unix ms (Redis clock), which its TTL never passes (see [`super::owners`]); both
//!   absent on an unowned session;
//! - `ip`, `ua`: the client record (`session.record_client`), written at creation only.
//!
//! Every key always carries a TTL = min(idle lifetime, time left to `absolute_ttl` since
//! `created`, time left to `bound`); nothing is ever left without an expiry. A session always has `created`,
//! so its data hash exists for as long as the session does, even with no user keys.
//!
//! # Round trips
//!
//! A load is one Lua script (`redis/load.lua`): read the data, check the absolute
//! lifetime, refresh the TTL and `seen` (unless the route does not touch, or the last
//! refresh is more recent than `session.touch_after`), and read-and-delete the flash
//! atomically (delivered exactly once). A write is one Lua script (`redis/apply.lua`) that computes and validates the
//! new state first and writes only when it is valid, because Redis does not roll back a
//! script that fails halfway. Scripts are sent with EVALSHA ([`redis::Script`] falls back
//! to loading the script on `NOSCRIPT`).
//!
//! # Client-side cache (`store.cache`)
//!
//! Off by default. One extra connection per data node: the server, the master in use
//! with Sentinel (a new master or none drops the whole cache, through the connector's
//! `on_change` hook), every master serving slots on a cluster (the masters and their
//! slots are compared every second: any change drops the whole cache). Each (`HELLO 3`,
//! `CLIENT TRACKING ON NOLOOP`) carries, while tracking is on, the loads and writes of
//! the sessions it serves, and receives Redis's invalidations of the keys it read that
//! other clients change; an invalidation of a session's data key `<p>{<sk>}` or flash
//! key `<p>{<sk>}:flash` drops that session's entry, a flush drops all, other keys
//! (write tokens, scratch, owner indexes) are ignored: every change of a session's state
//! (apply, destroy by store key, extend the bound, a refreshing load, a consumed flash)
//! writes one of those two keys. A load sent for the cache asks the script for a
//! freshness token (refreshed or not, time since `seen`, `PTTL`, time to the absolute
//! limit), a write for the state it wrote (`apply.lua`, ARGV[15]); the entry's expiry
//! and last refresh are set from them on the local clock, counted from when the call was
//! sent. A hit is allowed on a no-touch route, or on a refreshing one while the last
//! refresh is younger than `session.touch_after`; a load that delivered flash or a write
//! that left flash pending is never cached. A reply is inserted only if no invalidation
//! of its key, other own call or loss of tracking happened since it was sent (pending
//! generation and epoch); losing the tracking connection drops everything until tracking
//! is confirmed on again. Details and the rules: `redis/cache.rs`.
//!
//! # Databases
//!
//! Connections stay on db 0; the scripts `SELECT` the db they need. Redis restores the
//! calling connection's db when a script ends (verified on Redis 7.0.15, also when the
//! script fails), so the multiplexed connections are never moved. A db equal to the one
//! the script is on is not selected, so with both dbs at 0 no `SELECT` is ever sent (a
//! managed Redis or a cluster that forbids it works).
//!
//! # Connections
//!
//! `max_connections` multiplexed connections per server (a cluster: the driver's one
//! per node), created lazily on first use: the sidecar starts while Redis is down, a
//! failed connection attempt is retried by the next call, a connection reconnects by
//! itself after Redis restarts, and one that stops answering (a call on it goes
//! unanswered for half of `store.timeout`) is replaced by a fresh one
//! (`redis/connector.rs`). Every call is bounded by `store.timeout` by the
//! wrapper the engine runs behind ([`super::timed::TimedStore`]), not here.

use futures_util::future::join_all;
use std::{
    fmt,
    num::NonZeroUsize,
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use redis::{
    Client, ConnectionInfo, IntoConnectionInfo, ProtocolVersion, RedisError, Script,
    ScriptInvocation, Value, cluster::ClusterClient,
};

use super::{
    ApplyError, ClientInfo, Lifetimes, LoadedSession, Owner, OwnerChange, OwnerKey, SessionInfo,
    SessionStore, StoreError, Target, Touch, WriteOutcome, WritePlan,
    owners::{MAX_INDEX_ENTRIES, index_due, is_handle, with_margin},
    pairs::decode_pairs,
};
use crate::{
    config::{RedisOptions, RedisTopology},
    cookie::SessionId,
    protocol::Op,
};

mod cache;
mod connector;
mod nodes;

pub use cache::CacheStats;
use cache::{Cache, Entry, Forgetting, Freshness, Node, Nodes, Resolve, Ticket};

use connector::{Call, Connector, Pool, Sentinel};
use nodes::{NodeTemplate, finish, host_port};

const LOAD_LUA: &str = concat!(
    include_str!("redis/common.lua"),
    include_str!("redis/load.lua")
);
const APPLY_LUA: &str = concat!(
    include_str!("redis/common.lua"),
    include_str!("redis/apply.lua")
);
const INDEX_LUA: &str = concat!(
    include_str!("redis/common.lua"),
    include_str!("redis/index.lua")
);
const SESSIONS_LUA: &str = concat!(
    include_str!("redis/common.lua"),
    include_str!("redis/sessions.lua")
);
const CHECK_DBS_LUA: &str = include_str!("redis/check_dbs.lua");

/// Sessions per call of `redis/sessions.lua` off a cluster (a cluster: one), and calls
/// in flight at once: a long list is a few short scripts, never one that blocks Redis.
const SESSIONS_PER_CALL: usize = 256;
const CALLS_IN_FLIGHT: usize = 32;

/// The shortest life of a write token (see the module docs): a resent call arrives
/// within `store.timeout` of the first (the call is abandoned after it), so a token
/// lives for the longer of this and four timeouts.
const MIN_TOKEN_TTL: Duration = Duration::from_secs(10);

/// The Redis engine.
pub struct RedisStore {
    connector: Connector,
    key_prefix: String,
    db_sessions: i64,
    db_notifications: i64,
    lifetimes: Lifetimes,
    load_script: Script,
    apply_script: Script,
    index_script: Script,
    sessions_script: Script,
    check_script: Script,
    /// Write tokens: a random per-process prefix and a counter (unique across
    /// sidecars sharing the store with overwhelming probability).
    token_prefix: u64,
    token_counter: AtomicU64,
    token_ttl: Duration,
    /// `store.cache` ([`cache`]): off (`None`) by default.
    cache: Option<Arc<Cache>>,
    /// Where the cache's tracking connections go: one server, the master the sentinels
    /// name, or every master of a cluster.
    tracking: Option<Resolve>,
    timeout: Duration,
}

impl fmt::Debug for RedisStore {
    // Hand-written: the clients' connection info holds the password.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedisStore")
            .field("key_prefix", &self.key_prefix)
            .field("db_sessions", &self.db_sessions)
            .field("db_notifications", &self.db_notifications)
            .field("cluster", &self.connector.is_cluster())
            .finish_non_exhaustive()
    }
}

/// The keys of one session (see the module docs).
struct SessionKeys {
    data: String,
    flash: String,
    scratch: String,
    /// Prefix of this session's write-token keys (`<data>:w:`).
    token: String,
}

/// Apply-script modes (ARGV[1] of `apply.lua`).
mod mode {
    pub const EXISTING: &str = "E";
    pub const CREATE: &str = "C";
    pub const MOVE: &str = "M";
    pub const DESTROY: &str = "X";
    pub const DESTROY_THEN_CREATE: &str = "R";
    /// Read and delete a session, returning its state (the first half of a move on a
    /// cluster, where the two ids live in different slots).
    pub const TAKE: &str = "T";
    /// Create a session from a given state (meta fields, data, flash): the second half
    /// of a move on a cluster, or putting a taken session back.
    pub const IMPORT: &str = "I";
}

/// A session read and deleted by [`mode::TAKE`].
struct Taken {
    /// Its meta fields as netstring pairs, opaque here: handed back to [`mode::IMPORT`].
    meta: Vec<u8>,
    data: super::FieldMap,
    flash: super::FieldMap,
}

impl RedisStore {
    /// Build the store from its validated options (see [`crate::config::Storage`]),
    /// the shared `store.key_prefix`, and `store.timeout` (which also bounds the
    /// connections' connects and responses). No I/O besides reading the TLS files:
    /// connections are made on first use, so the sidecar starts while Redis is down.
    ///
    /// # Errors
    /// [`StoreError::Unavailable`] when a TLS file cannot be read or parsed, or the
    /// Redis client refuses the connection settings. Messages never contain the URL or
    /// a password.
    pub fn new(
        options: &RedisOptions,
        key_prefix: &str,
        timeout: Duration,
        lifetimes: Lifetimes,
    ) -> Result<RedisStore, StoreError> {
        let bad = |msg: String| StoreError::Unavailable(msg);
        let template = NodeTemplate::new(options, timeout).map_err(bad)?;
        // The client's errors name no part of the URL, which may hold a password.
        let refused =
            |what: &str, e: RedisError| bad(format!("redis client: {what} refused ({e})"));
        let pool_size = options.max_connections.max(1);
        // For the cache's tracking connections to cluster nodes.
        let node_template = template.clone();
        let resp3 = |info: ConnectionInfo| resp3_client(&template, info);
        let fixed = |client: Client| -> Resolve {
            Arc::new(move || {
                let client = client.clone();
                Box::pin(async move {
                    Ok(Nodes {
                        nodes: vec![Node {
                            client,
                            slots: Vec::new(),
                        }],
                        fingerprint: String::new(),
                    })
                })
            })
        };
        let mut tracking = None;
        let connector = match &options.topology {
            RedisTopology::Url(url) => {
                let info: ConnectionInfo = url
                    .0
                    .as_str()
                    .into_connection_info()
                    .map_err(|e| refused("store.storage.url", e))?;
                // Connections stay on db 0 (the scripts SELECT what they need): a
                // connection that selected a missing db at connect time would never
                // reconnect.
                let settings = info.redis_settings().clone().set_db(0);
                let addr = display_addr(info.addr());
                let info = finish(info.addr().clone(), settings)
                    .map_err(|e| refused("store.storage.url", e))?;
                tracking = Some(fixed(
                    resp3(info.clone()).map_err(|e| refused("store.storage.url", e))?,
                ));
                let client = template
                    .client(info)
                    .map_err(|e| refused("store.storage.url", e))?;
                Connector::Direct(Pool::new(client, &template, pool_size, addr))
            }
            RedisTopology::Server { host, port } => {
                let info = template
                    .info(host, *port)
                    .map_err(|e| refused("store.storage.host", e))?;
                tracking = Some(fixed(
                    resp3(info.clone()).map_err(|e| refused("store.storage.host", e))?,
                ));
                let client = template
                    .client(info)
                    .map_err(|e| refused("store.storage.host", e))?;
                Connector::Direct(Pool::new(
                    client,
                    &template,
                    pool_size,
                    format!("{host}:{port}"),
                ))
            }
            RedisTopology::Sentinel(sentinel) => {
                let sentinel_template = template.with_credentials(
                    sentinel.username.as_deref(),
                    sentinel.password.as_ref().map(|p| p.0.as_str()),
                );
                let mut clients = Vec::new();
                for node in &sentinel.nodes {
                    let (host, port) = host_port(node).map_err(bad)?;
                    let client = sentinel_template
                        .info(&host, port)
                        .and_then(|info| sentinel_template.client(info))
                        .map_err(|e| refused("store.storage.sentinel.nodes", e))?;
                    clients.push((node.clone(), client));
                }
                // A data-node client is built at each resolution: build one now so a
                // setting the client refuses fails here, not at the first request.
                template
                    .info("127.0.0.1", 6379)
                    .and_then(|info| template.client(info))
                    .map_err(|e| refused("store.storage", e))?;
                Connector::Sentinel(Sentinel::new(
                    sentinel.master_name.clone(),
                    clients,
                    &sentinel_template,
                    template,
                    pool_size,
                ))
            }
            RedisTopology::Cluster(cluster) => {
                let mut nodes = Vec::new();
                for node in &cluster.nodes {
                    let (host, port) = host_port(node).map_err(bad)?;
                    nodes.push(
                        template
                            .info(&host, port)
                            .map_err(|e| refused("store.storage.cluster.nodes", e))?,
                    );
                }
                let mut builder = ClusterClient::builder(nodes)
                    .connection_timeout(timeout)
                    .response_timeout(timeout)
                    // Redirects (`MOVED`/`ASK`) and reconnections are retries too;
                    // every call is safe to resend (write tokens).
                    .retries(4)
                    .min_retry_wait(10)
                    .max_retry_wait((timeout.as_millis() as u64 / 4).max(10))
                    .tcp_settings(redis::io::tcp::TcpSettings::default().set_nodelay(true));
                if let Some(certs) = &template.tls {
                    builder = builder.certs(certs.clone());
                }
                let client = builder
                    .build()
                    .map_err(|e| refused("store.storage.cluster", e))?;
                Connector::Cluster(connector::Cluster::new(client))
            }
        };

        if let Some(sentinel) = connector.sentinel() {
            let sentinel = sentinel.clone();
            tracking = Some(Arc::new(move || {
                let sentinel = sentinel.clone();
                Box::pin(async move {
                    let addr = sentinel.master_addr().await?;
                    let template = sentinel.data_template();
                    Ok(Nodes {
                        nodes: vec![Node {
                            client: node_client(template, &addr)?,
                            slots: Vec::new(),
                        }],
                        fingerprint: addr,
                    })
                })
            }));
        }
        if let Some(cluster) = connector.cluster() {
            let client = cluster.client();
            let conn = Arc::new(tokio::sync::OnceCell::new());
            let template = node_template;
            tracking = Some(Arc::new(move || {
                let (client, conn, template) = (client.clone(), conn.clone(), template.clone());
                Box::pin(async move {
                    let mut conn = conn
                        .get_or_try_init(|| client.get_async_connection())
                        .await?
                        .clone();
                    let text: String = redis::cmd("CLUSTER")
                        .arg("NODES")
                        .query_async(&mut conn)
                        .await?;
                    let masters = connector::masters_with_slots(&text);
                    let mut nodes = Vec::with_capacity(masters.len());
                    for (addr, line) in &masters {
                        nodes.push(Node {
                            client: node_client(&template, addr)?,
                            slots: cache::parse_slots(line),
                        });
                    }
                    let lines: Vec<String> = masters.into_iter().map(|(_, line)| line).collect();
                    Ok(Nodes {
                        nodes,
                        fingerprint: lines.join("\n"),
                    })
                })
            }));
        }

        let mut prefix = [0u8; 8];
        getrandom::fill(&mut prefix)
            .map_err(|e| bad(format!("no randomness for write tokens ({e})")))?;
        Ok(RedisStore {
            connector,
            key_prefix: key_prefix.to_owned(),
            db_sessions: i64::from(options.db_sessions),
            db_notifications: i64::from(options.db_notifications),
            lifetimes,
            load_script: Script::new(LOAD_LUA),
            apply_script: Script::new(APPLY_LUA),
            index_script: Script::new(INDEX_LUA),
            sessions_script: Script::new(SESSIONS_LUA),
            check_script: Script::new(CHECK_DBS_LUA),
            token_prefix: u64::from_le_bytes(prefix),
            token_counter: AtomicU64::new(0),
            token_ttl: MIN_TOKEN_TTL.max(timeout * 4),
            cache: None,
            tracking,
            timeout,
        })
    }

    /// Turn on the client-side cache of at most `max_entries` sessions (`store.cache`;
    /// 0 leaves it off).
    #[must_use]
    pub fn with_cache(mut self, max_entries: usize) -> Self {
        self.cache = match (NonZeroUsize::new(max_entries), &self.tracking) {
            (Some(n), Some(_)) => Some(Arc::new(Cache::new(n))),
            _ => None,
        };
        if let (Some(cache), Some(sentinel)) = (&self.cache, self.connector.sentinel()) {
            // A new master (or none): the tracking connection is on the old one.
            let cache = Arc::downgrade(cache);
            sentinel.on_change(Arc::new(move || {
                if let Some(cache) = cache.upgrade() {
                    cache.drop_all();
                }
            }));
        }
        self
    }

    /// The cache's counters (`None` when `store.cache` is off).
    pub fn cache_stats(&self) -> Option<CacheStats> {
        self.cache.as_ref().map(|c| c.stats())
    }

    /// The cache, when on (for the own writes that forget entries).
    fn cache(&self) -> Option<&Cache> {
        self.cache.as_deref()
    }

    /// Failovers this sidecar has seen (metric `session_sidecar_store_master_changes_total`).
    pub fn master_changes(&self) -> u64 {
        self.connector.master_changes()
    }

    /// The topology and its state, for `/readyz` (also checks the databases).
    ///
    /// # Errors
    /// [`StoreError::Unavailable`] with the reason. Not bounded here: run it through
    /// [`super::timed::TimedStore::bounded`].
    pub async fn describe(&self) -> Result<String, StoreError> {
        let line = self
            .connector
            .describe()
            .await
            .map_err(|e| self.store_error(e))?;
        self.check_databases().await?;
        Ok(line)
    }

    /// Can the configured databases be selected? A failing one is reported with the
    /// setting to change (docs/configuration.md#store, `db_sessions`), e.g. on a server
    /// with fewer `databases`, a managed Redis that forbids `SELECT`, or a cluster (db 0
    /// only).
    ///
    /// # Errors
    /// [`StoreError::Unavailable`] naming the setting, or the connection error.
    ///
    /// Not bounded here: run it through [`super::timed::TimedStore::bounded`].
    pub async fn check_databases(&self) -> Result<(), StoreError> {
        // db 0 is never SELECTed by the scripts (connections are on it already).
        let mut probes: Vec<(&str, i64)> = Vec::new();
        for (name, db) in [
            ("db_sessions", self.db_sessions),
            ("db_notifications", self.db_notifications),
        ] {
            if db != 0 && !probes.iter().any(|&(_, d)| d == db) {
                probes.push((name, db));
            }
        }
        if probes.is_empty() {
            return Ok(());
        }
        let mut inv = self.check_script.prepare_invoke();
        for &(_, db) in &probes {
            inv.arg(db);
        }
        let reply = self.run(&inv).await.map_err(|e| self.store_error(e))?;
        let items = as_array(reply)?;
        if items.is_empty() {
            return Ok(());
        }
        let index: usize = text(items.first())?
            .parse()
            .map_err(|_| corrupt("database check"))?;
        let reason = text(items.get(1))?;
        let (name, db) = index
            .checked_sub(1)
            .and_then(|i| probes.get(i))
            .copied()
            .ok_or_else(|| corrupt("database check"))?;
        Err(StoreError::Unavailable(format!(
            "store.storage.{name}: {db} is not available on this Redis ({reason}); use a db \
             below its `databases` setting, or 0 on a managed Redis or a cluster"
        )))
    }

    fn keys(&self, id: &SessionId) -> SessionKeys {
        self.keys_of(&id.store_key())
    }

    /// The keys of the session with store key `sk`.
    fn keys_of(&self, sk: &str) -> SessionKeys {
        let base = format!("{}{{{sk}}}", self.key_prefix);
        SessionKeys {
            flash: format!("{base}:flash"),
            scratch: format!("{base}:tmp"),
            token: format!("{base}:w:"),
            data: base,
        }
    }

    /// The key of an owner's index (see the module docs).
    fn index_key(&self, owner: &OwnerKey) -> String {
        format!("{}{{o.{}}}", self.key_prefix, owner.as_str())
    }

    /// A fresh write token (see the module docs).
    fn token(&self) -> String {
        let n = self.token_counter.fetch_add(1, Ordering::Relaxed);
        format!("{:016x}{n:x}", self.token_prefix)
    }

    /// Run a script (retry rules: [`connector`]).
    async fn run(&self, inv: &ScriptInvocation<'_>) -> Result<Value, RedisError> {
        self.connector.call(Call::Script(inv)).await
    }

    /// Map a driver error. Messages carry the driver's description only (never keys,
    /// ids or values: the scripts' errors do not echo their arguments).
    fn store_error(&self, e: RedisError) -> StoreError {
        if e.is_timeout() {
            return StoreError::Timeout;
        }
        let text = e.to_string();
        if text.contains("DB index") || text.contains("SELECT") {
            return StoreError::Unavailable(format!(
                "redis: {text}; check store.storage.db_sessions ({}) and \
                 store.storage.db_notifications ({})",
                self.db_sessions, self.db_notifications
            ));
        }
        StoreError::Unavailable(format!("redis: {text}"))
    }

    /// One apply-script call: `mode` on `target` (with `source` where the mode reads
    /// another session), the owner change, the client record (creating modes), the
    /// taken state for [`mode::IMPORT`], then `ops`.
    #[allow(clippy::too_many_arguments)]
    async fn apply_script(
        &self,
        mode: &str,
        target: &SessionKeys,
        source: Option<&SessionKeys>,
        max_age: Option<&str>,
        owner: &OwnerChange,
        client: Option<&ClientInfo>,
        prefill: Option<&Taken>,
        ops: &[Op],
        ticket: &mut Option<Ticket<'_>>,
    ) -> Result<Vec<Value>, StoreError> {
        let source = source.unwrap_or(target);
        let token = format!("{}{}", target.token, self.token());
        let mut inv = self.apply_script.prepare_invoke();
        inv.key(&target.data)
            .key(&target.flash)
            .key(&target.scratch)
            .key(&source.data)
            .key(&source.flash)
            .key(&token)
            .arg(mode)
            .arg(self.db_sessions)
            .arg(self.db_notifications)
            .arg(millis(self.lifetimes.ttl))
            .arg(millis(self.lifetimes.absolute_ttl))
            .arg(self.lifetimes.max_size)
            .arg(max_age.unwrap_or_default())
            .arg(millis(self.token_ttl));
        match owner {
            OwnerChange::Keep => inv.arg("").arg("").arg(""),
            OwnerChange::Attach { owner, bound_ms } => {
                inv.arg("A").arg(owner.literal()).arg(bound_ms.to_string())
            }
            OwnerChange::Detach => inv.arg("D").arg("").arg(""),
        };
        match client {
            Some(c) => inv.arg("1").arg(&c.ip).arg(&c.user_agent),
            None => inv.arg("").arg("").arg(""),
        };
        inv.arg(if ticket.is_some() { "1" } else { "" });
        if let Some(taken) = prefill {
            inv.arg(taken.meta.as_slice());
            for (field, value) in &taken.data {
                inv.arg("S").arg(field).arg(value);
            }
            for (field, value) in &taken.flash {
                inv.arg("F").arg(field).arg(value);
            }
        }
        for op in ops {
            match op {
                Op::ClearData => inv.arg("C"),
                Op::Delete(field) => inv.arg("D").arg(field),
                Op::Set(field, value) => inv.arg("S").arg(field).arg(value),
                Op::Incr(field, by) => inv.arg("I").arg(field).arg(by.to_string()),
                Op::FlashSet(field, value) => inv.arg("F").arg(field).arg(value),
            };
        }
        let reply = self.run_tracked(&inv, ticket).await?;
        as_array(reply)
    }

    /// Run a script whose reply the cache may keep: over the ticket's tracking
    /// connection, where Redis orders the reply with the invalidations it sends and
    /// reports no write of that connection's own (`redis/cache.rs`). Without a ticket, or
    /// when that connection fails (the cache is then dropped and the ticket given up: its
    /// reply is not cached), over the pool as [`RedisStore::run`].
    async fn run_tracked(
        &self,
        inv: &ScriptInvocation<'_>,
        ticket: &mut Option<Ticket<'_>>,
    ) -> Result<Value, StoreError> {
        match ticket.as_ref().and_then(Ticket::connection) {
            Some(mut conn) => match Call::Script(inv).run(&mut conn).await {
                Ok(value) => return Ok(value),
                Err(e) if e.is_timeout() => {
                    // Unanswered within `store.timeout`: leave that connection (and the
                    // cache) as the pool leaves one, and answer as the pool would.
                    if let Some(t) = ticket.take() {
                        t.drop_all();
                    }
                    return Err(StoreError::Timeout);
                }
                Err(e) if connector::is_connection_trouble(&e) || connector::is_redirect(&e) => {
                    // Resent over the pool: a write with the same token, so at most once.
                    if let Some(t) = ticket.take() {
                        t.drop_all();
                    }
                }
                Err(e) => return Err(self.store_error(e)),
            },
            None => *ticket = None,
        }
        self.run(inv).await.map_err(|e| self.store_error(e))
    }

    /// The outcome of an apply-script reply.
    fn outcome(&self, items: &[Value]) -> Result<WriteOutcome, StoreError> {
        let status = text(items.first())?;
        let detail = || text(items.get(1));
        let size = || -> Result<usize, StoreError> {
            detail()?.parse().map_err(|_| corrupt("apply reply"))
        };
        let max = self.lifetimes.max_size;
        match status.as_str() {
            "OK" => Ok(WriteOutcome::Applied),
            "GONE" => Ok(WriteOutcome::Gone),
            "NOT_INTEGER" => Err(ApplyError::NotInteger { field: detail()? }.into()),
            "OVERFLOW" => Err(ApplyError::Overflow { field: detail()? }.into()),
            "TOO_LARGE" => Err(ApplyError::TooLarge { size: size()?, max }.into()),
            "FLASH_TOO_LARGE" => Err(ApplyError::FlashTooLarge { size: size()?, max }.into()),
            "CORRUPT" => Err(corrupt("session meta fields")),
            _ => Err(corrupt("apply reply")),
        }
    }

    /// A move on a cluster, where the two ids' keys live in different hash slots and
    /// one script cannot touch both: take the old session (read and delete, atomic),
    /// then create the new one from it with the plan's ops. When the ops are refused
    /// (nothing may be written), the taken session is put back. When the second step
    /// fails on the store, the session is lost: the answer is 503, the old id is
    /// already dead (docs/configuration.md#redis).
    async fn move_across_slots(
        &self,
        from: &SessionId,
        to: &SessionId,
        plan: &WritePlan,
    ) -> Result<WriteOutcome, StoreError> {
        let old = self.keys(from);
        let keep = OwnerChange::Keep;
        let reply = self
            .apply_script(
                mode::TAKE,
                &old,
                None,
                None,
                &keep,
                None,
                None,
                &[],
                &mut None,
            )
            .await?;
        let Some(taken) = decode_taken(&reply)? else {
            return self.outcome(&reply);
        };
        let new = self.keys(to);
        // The taken meta (owner, bound, created, client...) carries max_age too.
        let max_age = plan.max_age.map(|s| s.to_string());
        let reply = self
            .apply_script(
                mode::IMPORT,
                &new,
                None,
                max_age.as_deref(),
                &plan.owner,
                None,
                Some(&taken),
                &plan.ops,
                &mut None,
            )
            .await?;
        match self.outcome(&reply) {
            Err(StoreError::Rejected(e)) => {
                // Refused: nothing was written for the new id; put the old one back.
                let back = self
                    .apply_script(
                        mode::IMPORT,
                        &old,
                        None,
                        None,
                        &keep,
                        None,
                        Some(&taken),
                        &[],
                        &mut None,
                    )
                    .await?;
                self.outcome(&back)?;
                Err(StoreError::Rejected(e))
            }
            other => other,
        }
    }
}

/// A client speaking RESP3 (`HELLO 3`) to `info`: the tracking connection of
/// `store.cache` receives pushes.
fn resp3_client(template: &NodeTemplate, info: ConnectionInfo) -> Result<Client, RedisError> {
    let settings = info
        .redis_settings()
        .clone()
        .set_protocol(ProtocolVersion::RESP3);
    template.client(info.set_redis_settings(settings))
}

/// A RESP3 client for the data node at `host:port`.
fn node_client(template: &NodeTemplate, addr: &str) -> Result<Client, RedisError> {
    let (host, port) = host_port(addr)
        .map_err(|e| RedisError::from((redis::ErrorKind::Client, "node address", e)))?;
    resp3_client(template, template.info(&host, port)?)
}

/// `host:port` of an address, for `/readyz` (a unix socket: its path).
fn display_addr(addr: &redis::ConnectionAddr) -> String {
    match addr {
        redis::ConnectionAddr::Tcp(host, port) => format!("{host}:{port}"),
        redis::ConnectionAddr::TcpTls { host, port, .. } => format!("{host}:{port} (TLS)"),
        redis::ConnectionAddr::Unix(path) => path.display().to_string(),
        _ => "redis".to_owned(),
    }
}

/// The reply of [`mode::TAKE`]: `{'TAKEN', meta pairs, data pairs, flash pairs}`, or
/// another status (`GONE`, `CORRUPT`) for [`RedisStore::outcome`].
fn decode_taken(items: &[Value]) -> Result<Option<Taken>, StoreError> {
    if text(items.first())? != "TAKEN" {
        return Ok(None);
    }
    let bytes = |i: usize| match items.get(i) {
        Some(Value::BulkString(b)) => Ok(b.as_slice()),
        _ => Err(corrupt("take reply")),
    };
    Ok(Some(Taken {
        meta: bytes(1)?.to_vec(),
        data: decode_pairs(bytes(2)?).map_err(corrupt)?,
        flash: decode_pairs(bytes(3)?).map_err(corrupt)?,
    }))
}

impl SessionStore for RedisStore {
    async fn load_touch(
        &self,
        id: &SessionId,
        touch: Touch,
    ) -> Result<Option<LoadedSession>, StoreError> {
        let sk = id.store_key();
        let keys = self.keys_of(&sk);
        let ticket = match (&self.cache, &self.tracking) {
            (Some(cache), Some(resolve)) => {
                cache.ensure_tracking(resolve, &self.key_prefix, self.timeout);
                if let Some(hit) =
                    cache.lookup(&sk, touch, self.lifetimes.touch_after, Instant::now())
                {
                    return Ok(Some(hit));
                }
                cache.begin(&sk)
            }
            _ => None,
        };
        let mut inv = self.load_script.prepare_invoke();
        inv.key(&keys.data)
            .key(&keys.flash)
            .arg(self.db_sessions)
            .arg(self.db_notifications)
            .arg(millis(self.lifetimes.ttl))
            .arg(millis(self.lifetimes.absolute_ttl))
            .arg(if touch == Touch::Refresh { "1" } else { "" })
            .arg(millis(self.lifetimes.touch_after))
            .arg(if ticket.is_some() { "1" } else { "" });
        let mut ticket = ticket;
        let sent = Instant::now();
        let reply = self.run_tracked(&inv, &mut ticket).await?;
        let (loaded, fresh) = decode_load_full(reply)?;
        if let Some(ticket) = ticket {
            let entry = match (&loaded, fresh) {
                (Some(loaded), Some(fresh)) => Entry::from_load(loaded, fresh, sent),
                _ => None,
            };
            ticket.arrived(entry);
        }
        Ok(loaded)
    }

    async fn apply(&self, plan: &WritePlan) -> Result<WriteOutcome, StoreError> {
        // Own writes are read at once (the cache forgets the sessions touched now and
        // when the write ends); other sidecars see them through the invalidation.
        let touched = match &plan.target {
            Target::Existing(id) | Target::Create(id) | Target::Destroy(id) => vec![id],
            Target::Move { from, to } => vec![from, to],
            Target::DestroyThenCreate { old, new } => vec![old, new],
        };
        let mut forgetting = Forgetting::new(
            self.cache(),
            touched.into_iter().map(SessionId::store_key).collect(),
        );
        let max_age = plan.max_age.map(|s| s.to_string());
        let max_age = max_age.as_deref();
        let cluster = self.connector.is_cluster();
        let (mode, target, source) = match &plan.target {
            Target::Existing(id) => (mode::EXISTING, id, None),
            Target::Create(id) => (mode::CREATE, id, None),
            Target::Move { from, to } if cluster => {
                return self.move_across_slots(from, to, plan).await;
            }
            Target::Move { from, to } => (mode::MOVE, to, Some(from)),
            Target::Destroy(id) => (mode::DESTROY, id, None),
            Target::DestroyThenCreate { old, new } if cluster => {
                // Two slots: destroy, then create (each atomic on its own). A create
                // from nothing is refused or not whatever the store holds: check it
                // first, so that a refused plan writes nothing.
                let empty = super::FieldMap::new();
                super::apply_ops(&empty, &empty, &plan.ops, self.lifetimes.max_size)?;
                let reply = self
                    .apply_script(
                        mode::DESTROY,
                        &self.keys(old),
                        None,
                        None,
                        &OwnerChange::Keep,
                        None,
                        None,
                        &[],
                        &mut None,
                    )
                    .await?;
                self.outcome(&reply)?;
                (mode::CREATE, new, None)
            }
            Target::DestroyThenCreate { old, new } => (mode::DESTROY_THEN_CREATE, new, Some(old)),
        };
        let keys = self.keys(target);
        let source = source.map(|id| self.keys(id));
        // The client record is for a session this write creates.
        let client = if matches!(mode, mode::CREATE | mode::DESTROY_THEN_CREATE) {
            plan.client.as_ref()
        } else {
            None
        };
        // With the cache, the write goes over the tracking connection and its reply
        // carries the new state, cached for the next read (one round trip per read +
        // write; taken after the forgetting above, so that loads in flight insert nothing).
        let target_sk = target.store_key();
        let mut ticket = match self.cache() {
            Some(cache) if mode != mode::DESTROY => cache.begin(&target_sk),
            _ => None,
        };
        let sent = Instant::now();
        let reply = self
            .apply_script(
                mode,
                &keys,
                source.as_ref(),
                max_age,
                &plan.owner,
                client,
                None,
                &plan.ops,
                &mut ticket,
            )
            .await?;
        let outcome = self.outcome(&reply)?;
        if let Some(ticket) = ticket {
            // The write is applied whatever its state says: a state that does not decode
            // (a session stored corrupt) is just not cached; its next load reports it.
            let entry = match outcome {
                WriteOutcome::Applied => match decode_written(&reply) {
                    Ok(state) => {
                        state.and_then(|(loaded, fresh)| Entry::from_load(&loaded, fresh, sent))
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "redis cache: a written state did not decode; not cached");
                        None
                    }
                },
                _ => None,
            };
            if ticket.arrived(entry) {
                forgetting.keep(&target_sk);
            }
        }
        Ok(outcome)
    }

    async fn ping(&self) -> Result<(), StoreError> {
        self.describe().await.map(|_| ())
    }

    // Resends (connector.rs: once, on connection trouble) are safe for every owner
    // primitive: index_add keeps the later bound (a resend's later `now` moves it by
    // the resend's delay, well within the index margin), extend_bound keeps the later
    // bound likewise, index_remove and destroy_keys delete what is still there (a resent
    // destroy counts only what the first send left), and the others only read.

    async fn index_add(
        &self,
        owner: &OwnerKey,
        member: &str,
        bound_ms: u64,
    ) -> Result<(), StoreError> {
        let mut inv = self.index_script.prepare_invoke();
        inv.key(self.index_key(owner))
            .arg(self.db_sessions)
            .arg("A")
            .arg(member)
            .arg(with_margin(bound_ms).to_string());
        self.run(&inv).await.map_err(|e| self.store_error(e))?;
        Ok(())
    }

    async fn index_members(&self, owner: &OwnerKey) -> Result<Vec<String>, StoreError> {
        let mut inv = self.index_script.prepare_invoke();
        inv.key(self.index_key(owner))
            .arg(self.db_sessions)
            .arg("M")
            .arg(MAX_INDEX_ENTRIES);
        let reply = self.run(&inv).await.map_err(|e| self.store_error(e))?;
        as_array(reply)?.iter().map(|v| text(Some(v))).collect()
    }

    async fn index_remove(&self, owner: &OwnerKey, members: &[String]) -> Result<(), StoreError> {
        if members.is_empty() {
            return Ok(());
        }
        let mut inv = self.index_script.prepare_invoke();
        inv.key(self.index_key(owner))
            .arg(self.db_sessions)
            .arg("R");
        for m in members {
            inv.arg(m);
        }
        self.run(&inv).await.map_err(|e| self.store_error(e))?;
        Ok(())
    }

    async fn destroy_keys(&self, keys: &[String]) -> Result<u64, StoreError> {
        let _forgetting = Forgetting::new(self.cache(), keys.to_vec());
        let replies = self
            .per_sessions(keys, "X", true, |reply| match reply {
                Value::Int(n) => u64::try_from(n).map_err(|_| corrupt("destroy reply")),
                _ => Err(corrupt("destroy reply")),
            })
            .await?;
        Ok(replies.into_iter().sum())
    }

    async fn session_info(&self, keys: &[String]) -> Result<Vec<Option<SessionInfo>>, StoreError> {
        let chunks: Vec<Vec<Option<Shown>>> = self
            .per_sessions(keys, "S", false, |reply| match reply {
                Value::Array(items) => items.iter().map(decode_info).collect(),
                _ => Err(corrupt("session meta fields")),
            })
            .await?;
        // Keys that are no store key answer None, in their place.
        let mut found = chunks.into_iter().flatten();
        let mut out = Vec::with_capacity(keys.len());
        for key in keys {
            out.push(if is_handle(key) {
                found
                    .next()
                    .ok_or_else(|| corrupt("show reply"))?
                    .map(|shown| shown.into_info(key))
            } else {
                None
            });
        }
        Ok(out)
    }

    async fn extend_bound(&self, key: &str, bound_ms: u64) -> Result<bool, StoreError> {
        if !is_handle(key) {
            return Ok(false);
        }
        let _forgetting = Forgetting::new(self.cache(), vec![key.to_owned()]);
        let keys = self.keys_of(key);
        let mut inv = self.sessions_script.prepare_invoke();
        inv.key(&keys.data)
            .arg(self.db_sessions)
            .arg(self.db_notifications)
            .arg(millis(self.lifetimes.absolute_ttl))
            .arg("B")
            .arg(bound_ms.to_string());
        match self.run(&inv).await.map_err(|e| self.store_error(e))? {
            Value::Int(n) => Ok(n == 1),
            _ => Err(corrupt("session meta fields")),
        }
    }
}

impl RedisStore {
    /// Run `redis/sessions.lua` in `mode` over the sessions with these store keys (the
    /// data hash of each, and its flash hash `with_flash`): one session per call on a
    /// cluster, [`SESSIONS_PER_CALL`] elsewhere, [`CALLS_IN_FLIGHT`] calls at once.
    /// Keys that are no store key are skipped. Replies decoded by `decode`, in order.
    async fn per_sessions<T>(
        &self,
        keys: &[String],
        mode: &str,
        with_flash: bool,
        decode: impl Fn(Value) -> Result<T, StoreError>,
    ) -> Result<Vec<T>, StoreError> {
        let keys: Vec<&String> = keys.iter().filter(|k| is_handle(k)).collect();
        let per_call = if self.connector.is_cluster() {
            1
        } else {
            SESSIONS_PER_CALL
        };
        let call = |chunk: &[&String]| {
            let mut inv = self.sessions_script.prepare_invoke();
            for key in chunk {
                let keys = self.keys_of(key);
                inv.key(keys.data);
                if with_flash {
                    inv.key(keys.flash);
                }
            }
            inv.arg(self.db_sessions)
                .arg(self.db_notifications)
                .arg(millis(self.lifetimes.absolute_ttl))
                .arg(mode);
            async move { self.run(&inv).await }
        };
        let mut out = Vec::new();
        let chunks: Vec<&[&String]> = keys.chunks(per_call).collect();
        for wave in chunks.chunks(CALLS_IN_FLIGHT) {
            for reply in join_all(wave.iter().map(|chunk| call(chunk))).await {
                out.push(decode(reply.map_err(|e| self.store_error(e))?)?);
            }
        }
        Ok(out)
    }
}

/// One live session as `redis/sessions.lua` shows it (times in unix ms).
#[derive(Debug, PartialEq, Eq)]
struct Shown {
    created: u64,
    seen: u64,
    expires: u64,
    owner: Option<Owner>,
    client: Option<ClientInfo>,
}

impl Shown {
    fn into_info(self, key: &str) -> SessionInfo {
        SessionInfo {
            handle: key.to_owned(),
            owner: self.owner,
            created: self.created / 1000,
            last_seen: self.seen / 1000,
            expires: self.expires / 1000,
            client: self.client,
        }
    }
}

/// One entry of a show reply: `{}` (not live) or `{created, seen, expires, owner or '',
/// '1' or '', ip, user agent}`.
fn decode_info(v: &Value) -> Result<Option<Shown>, StoreError> {
    let Value::Array(items) = v else {
        return Err(corrupt("session meta fields"));
    };
    if items.is_empty() {
        return Ok(None);
    }
    if items.len() != 7 {
        return Err(corrupt("show reply"));
    }
    let number = |i: usize| -> Result<u64, StoreError> {
        text(items.get(i))?
            .parse()
            .map_err(|_| corrupt("session meta fields"))
    };
    let owner = Some(text(items.get(3))?)
        .filter(|o| !o.is_empty())
        .map(Owner::from_literal);
    let client = if text(items.get(4))? == "1" {
        Some(ClientInfo {
            ip: text(items.get(5))?,
            user_agent: text(items.get(6))?,
        })
    } else {
        None
    };
    Ok(Some(Shown {
        created: number(0)?,
        seen: number(1)?,
        expires: number(2)?,
        owner,
        client,
    }))
}

/// Milliseconds as the decimal text the scripts read (exact, no float on our side).
fn millis(d: Duration) -> String {
    d.as_millis().to_string()
}

fn corrupt(what: &str) -> StoreError {
    StoreError::Corrupt(format!("unexpected {what} from the Redis scripts"))
}

fn as_array(v: Value) -> Result<Vec<Value>, StoreError> {
    match v {
        Value::Array(items) => Ok(items),
        _ => Err(corrupt("reply type")),
    }
}

fn text(v: Option<&Value>) -> Result<String, StoreError> {
    match v {
        Some(Value::BulkString(bytes)) => {
            String::from_utf8(bytes.clone()).map_err(|_| corrupt("non-UTF-8 text"))
        }
        Some(Value::SimpleString(s)) => Ok(s.clone()),
        Some(Value::Int(n)) => Ok(n.to_string()),
        _ => Err(corrupt("reply item")),
    }
}

/// The load script's reply as the client library hands it over: one bulk string.
#[cfg(feature = "fuzzing")]
fn decode_load_value(reply: Value) -> Result<Option<LoadedSession>, StoreError> {
    decode_load_full(reply).map(|(loaded, _)| loaded)
}

/// [`decode_load_value`] with the freshness token of a load sent for the cache.
fn decode_load_full(
    reply: Value,
) -> Result<(Option<LoadedSession>, Option<Freshness>), StoreError> {
    match reply {
        Value::BulkString(bytes) => decode_load_parts(&bytes),
        _ => Err(corrupt("reply type")),
    }
}

/// The freshness token (`redis/load.lua`, ARGV[7]):
/// `<0|1>,<ms since seen or ->,<PTTL ms or ->,<ms to the absolute limit>`.
fn decode_freshness(token: &str) -> Result<Freshness, StoreError> {
    let bad = || corrupt("freshness");
    let mut parts = token.split(',');
    let mut next = || parts.next().ok_or_else(bad);
    let refreshed = match next()? {
        "0" => false,
        "1" => true,
        _ => return Err(bad()),
    };
    let optional = |t: &str| -> Result<Option<u64>, StoreError> {
        match t {
            "-" => Ok(None),
            t => t.parse().map(Some).map_err(|_| bad()),
        }
    };
    let since_seen_ms = optional(next()?)?;
    let ttl_ms = optional(next()?)?;
    let remaining_ms = next()?.parse().map_err(|_| bad())?;
    if parts.next().is_some() {
        return Err(bad());
    }
    Ok(Freshness {
        refreshed,
        since_seen_ms,
        ttl_ms,
        remaining_ms,
    })
}

/// The load script's reply (see `redis/load.lua`): `N`, `C`, or
/// `F <max_age or -> <seconds left> <data bytes> <owner bytes or -> <bound check or ->\n`
/// then the owner literal, data pairs and flash pairs ([`super::pairs`]). The bound
/// check, `<now>,<idle>,<bound>,<deadline>` (ms), is what [`index_due`] decides on.
#[cfg(test)]
fn decode_load_reply(bytes: &[u8]) -> Result<Option<LoadedSession>, StoreError> {
    decode_load_parts(bytes).map(|(loaded, _)| loaded)
}

/// The load reply and, when the load was sent for the cache, its freshness token.
fn decode_load_parts(
    bytes: &[u8],
) -> Result<(Option<LoadedSession>, Option<Freshness>), StoreError> {
    match bytes {
        b"N" => return Ok((None, None)),
        b"C" => return Err(corrupt("session meta fields")),
        _ => {}
    }
    let newline = bytes
        .iter()
        .position(|&b| b == b'\n')
        .ok_or_else(|| corrupt("load reply"))?;
    let header = std::str::from_utf8(&bytes[..newline]).map_err(|_| corrupt("load reply"))?;
    let mut parts = header.split(' ');
    if parts.next() != Some("F") {
        return Err(corrupt("load reply"));
    }
    let number = |t: Option<&str>, what: &str| -> Result<u64, StoreError> {
        t.and_then(|t| t.parse().ok()).ok_or_else(|| corrupt(what))
    };
    let max_age = match parts.next() {
        Some("-") => None,
        t => Some(number(t, "max_age")?),
    };
    let remaining = number(parts.next(), "remaining lifetime")?;
    let data_len =
        usize::try_from(number(parts.next(), "load reply")?).map_err(|_| corrupt("load reply"))?;
    let owner_len = match parts.next() {
        Some("-") => None,
        t => Some(usize::try_from(number(t, "load reply")?).map_err(|_| corrupt("load reply"))?),
    };
    let check = match parts.next() {
        Some("-") => None,
        Some(t) => {
            let mut n = t.split(',');
            let mut next = || number(n.next(), "bound check");
            let check = [next()?, next()?, next()?, next()?];
            if n.next().is_some() {
                return Err(corrupt("bound check"));
            }
            Some(check)
        }
        None => return Err(corrupt("load reply")),
    };
    let fresh = parts.next().map(decode_freshness).transpose()?;
    if parts.next().is_some() {
        return Err(corrupt("load reply"));
    }
    let body = &bytes[newline + 1..];
    let (owner, body) = match owner_len {
        None => (None, body),
        Some(n) if n <= body.len() => {
            let (owner, rest) = body.split_at(n);
            (Some(decode_owner(owner)?), rest)
        }
        Some(_) => return Err(corrupt("load reply")),
    };
    if data_len > body.len() || (check.is_some() && owner.is_none()) {
        return Err(corrupt("load reply"));
    }
    let (data, flash) = body.split_at(data_len);
    let pairs = |b| decode_pairs(b).map_err(corrupt);
    let loaded = LoadedSession {
        data: pairs(data)?,
        flash: pairs(flash)?,
        max_age,
        remaining,
        revision: None,
        owner,
        index_due: check
            .and_then(|[now, idle, bound, deadline]| index_due(now, idle, bound, deadline)),
    };
    Ok((Some(loaded), fresh))
}

/// A stored owner: a JSON string literal as `field_literal` writes it, printable ASCII,
/// so it is a valid `X-Session-Owner` value (the memcached item checks the same).
fn decode_owner(bytes: &[u8]) -> Result<Owner, StoreError> {
    let owner = std::str::from_utf8(bytes)
        .ok()
        .filter(|o| o.bytes().all(|b| (0x20..0x7f).contains(&b)))
        .ok_or_else(|| corrupt("owner"))?;
    if owner.len() < 2 || !owner.starts_with('"') || !owner.ends_with('"') {
        return Err(corrupt("owner"));
    }
    Ok(Owner::from_literal(owner.to_owned()))
}

/// The new state an apply sent for the cache returns (`redis/apply.lua`, ARGV[15]):
/// `{'OK', '<max_age or -> <ms to the absolute limit> <TTL ms>', <owner literal or ''>,
/// <data pairs>}`, as a load of it would have read it right after (no flash: the script
/// returns no state when flash is pending). `None` for a plain `{'OK'}`.
fn decode_written(items: &[Value]) -> Result<Option<(LoadedSession, Freshness)>, StoreError> {
    let [_, header, owner, data] = items else {
        return match items.len() {
            1 => Ok(None),
            _ => Err(corrupt("apply reply")),
        };
    };
    fn bytes(v: &Value) -> Result<&[u8], StoreError> {
        match v {
            Value::BulkString(b) => Ok(b.as_slice()),
            _ => Err(corrupt("apply reply")),
        }
    }
    let header = std::str::from_utf8(bytes(header)?).map_err(|_| corrupt("apply reply"))?;
    let mut parts = header.split(' ');
    let mut next = || parts.next().ok_or_else(|| corrupt("apply reply"));
    let number = |t: &str, what: &str| t.parse::<u64>().map_err(|_| corrupt(what));
    let max_age = match next()? {
        "-" => None,
        t => Some(number(t, "max_age")?),
    };
    let remaining_ms = number(next()?, "remaining lifetime")?;
    let ttl_ms = number(next()?, "ttl")?;
    if next().is_ok() {
        return Err(corrupt("apply reply"));
    }
    let owner = match bytes(owner)? {
        [] => None,
        owner => Some(decode_owner(owner)?),
    };
    let loaded = LoadedSession {
        data: decode_pairs(bytes(data)?).map_err(corrupt)?,
        flash: super::FieldMap::new(),
        max_age,
        remaining: remaining_ms / 1000,
        revision: None,
        owner,
        index_due: None,
    };
    let fresh = Freshness {
        refreshed: true,
        since_seen_ms: Some(0),
        ttl_ms: Some(ttl_ms),
        remaining_ms,
    };
    Ok(Some((loaded, fresh)))
}

/// Hooks for the fuzz targets (the `fuzzing` feature, docs/fuzzing.md): the script
/// reply decoders, reachable from [`crate::fuzz_api`] only.
#[cfg(feature = "fuzzing")]
pub(crate) mod fuzzing {
    use redis::Value;

    use super::{as_array, decode_load_value, decode_taken, decode_written};
    use crate::store::{FieldMap, LoadedSession, StoreError};

    /// What `load_touch` makes of the load script's reply.
    pub(crate) fn load_reply(reply: Value) -> Result<Option<LoadedSession>, StoreError> {
        decode_load_value(reply)
    }

    /// What `move_across_slots` makes of the take script's reply: `(meta, data, flash)`.
    pub(crate) type TakenParts = (Vec<u8>, FieldMap, FieldMap);

    /// What `apply` makes of a write's reply sent for the cache (after its `OK`): the
    /// state it caches.
    pub(crate) fn written_reply(reply: Value) -> Result<Option<LoadedSession>, StoreError> {
        let items = as_array(reply)?;
        Ok(decode_written(&items)?.map(|(loaded, _)| loaded))
    }

    pub(crate) fn take_reply(reply: Value) -> Result<Option<TakenParts>, StoreError> {
        let items = as_array(reply)?;
        Ok(decode_taken(&items)?.map(|t| (t.meta, t.data, t.flash)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::FieldMap;

    fn fields(pairs: &[(&str, &str)]) -> FieldMap {
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect()
    }

    #[test]
    fn load_replies_decode() {
        assert_eq!(decode_load_reply(b"N").unwrap(), None);
        let found =
            decode_load_reply(b"F 600 2591999 17 - -\n6:\"user\",5:\"ann\",5:\"msg\",4:\"hi\",")
                .unwrap()
                .expect("found");
        assert_eq!(found.data, fields(&[("\"user\"", "\"ann\"")]));
        assert_eq!(found.flash, fields(&[("\"msg\"", "\"hi\"")]));
        assert_eq!((found.max_age, found.remaining), (Some(600), 2_591_999));
        assert_eq!((found.owner, found.index_due), (None, None));
        let empty = decode_load_reply(b"F - 5 0 - -\n").unwrap().expect("found");
        assert!(empty.data.is_empty() && empty.flash.is_empty());
        assert_eq!((empty.max_age, empty.remaining), (None, 5));
    }

    #[test]
    fn owned_load_replies_decode() {
        // Owned, not refreshed (touch_after, or a no-touch route): no bound check.
        let kept = decode_load_reply(b"F - 9 10 11 -\n\"ann smith\"3:\"a\",1:1,")
            .unwrap()
            .expect("found");
        assert_eq!(
            kept.owner,
            Some(Owner::from_literal("\"ann smith\"".into()))
        );
        assert_eq!(kept.data, fields(&[("\"a\"", "1")]));
        assert_eq!(kept.index_due, None);
        // Refreshed, far from its bound (owners::index_due: not due).
        let far = decode_load_reply(b"F - 9 0 5 9100,1000,10500,1000000\n\"bob\"")
            .unwrap()
            .expect("found");
        assert_eq!(far.owner, Some(Owner::from_literal("\"bob\"".into())));
        assert_eq!(far.index_due, None);
        // Refreshed close to it: due, with the new bound from now.
        let due = decode_load_reply(b"F - 9 0 5 9400,1000,10500,1000000\n\"bob\"3:\"f\",1:1,")
            .unwrap()
            .expect("found");
        assert_eq!(due.index_due, Some(1500));
        assert_eq!(due.flash, fields(&[("\"f\"", "1")]));
        // The bound is the absolute deadline: never due.
        let last = decode_load_reply(b"F - 9 0 5 9400,1000,10000,10000\n\"bob\"")
            .unwrap()
            .expect("found");
        assert_eq!(last.index_due, None);
    }

    #[test]
    fn freshness_tokens_decode() {
        let (loaded, fresh) =
            decode_load_parts(b"F - 9 10 - - 0,1500,58500,9000\n3:\"a\",1:1,").unwrap();
        assert_eq!(loaded.expect("found").data, fields(&[("\"a\"", "1")]));
        assert_eq!(
            fresh,
            Some(Freshness {
                refreshed: false,
                since_seen_ms: Some(1500),
                ttl_ms: Some(58_500),
                remaining_ms: 9000,
            })
        );
        let (_, fresh) = decode_load_parts(b"F - 9 0 - - 1,-,-,9000\n").unwrap();
        let fresh = fresh.expect("token");
        assert!(fresh.refreshed);
        assert_eq!((fresh.since_seen_ms, fresh.ttl_ms), (None, None));
        // Without ARGV[7] there is none.
        assert_eq!(decode_load_parts(b"F - 9 0 - -\n").unwrap().1, None);
        for bad in [
            &b"F - 9 0 - - 2,1,1,1\n"[..],
            b"F - 9 0 - - 0,1,1\n",
            b"F - 9 0 - - 0,1,1,1,1\n",
            b"F - 9 0 - - 0,x,1,1\n",
            b"F - 9 0 - - 0,1,1,-\n",
            b"F - 9 0 - - 0,1,1,1 extra\n",
        ] {
            assert!(
                matches!(decode_load_parts(bad), Err(StoreError::Corrupt(_))),
                "{:?}",
                String::from_utf8_lossy(bad)
            );
        }
    }

    #[test]
    fn malformed_load_replies_are_corrupt() {
        for bad in [
            &b"C"[..],
            b"",
            b"X",
            b"F - 5 0 - -",
            b"F x 5 0 - -\n",
            b"F - -5 0 - -\n",
            b"F - 5 - -\n",
            b"F - 5 0 -\n",
            b"F - 5 0 - - extra\n",
            b"F - 5 99 - -\n3:\"a\",1:1,",
            b"F - 5 3 - -\n3:\"a\",1:1,",
            b"F - 5 0 - -\n3:\"a\",0:,",
            // Owners: past the body, not a literal, a check without an owner, bad checks.
            b"F - 5 0 9 -\n\"bob\"",
            b"F - 5 0 3 -\nbob",
            b"F - 5 0 - 1,2,3,4\n",
            b"F - 5 0 5 1,2,3\n\"bob\"",
            b"F - 5 0 5 1,2,3,4,5\n\"bob\"",
            b"F - 5 0 5 1,2,x,4\n\"bob\"",
        ] {
            assert!(
                matches!(decode_load_reply(bad), Err(StoreError::Corrupt(_))),
                "{:?}",
                String::from_utf8_lossy(bad)
            );
        }
    }

    /// Found by fuzzing (fuzz/fuzz_targets/redis_reply.rs): an owner with control
    /// characters or raw UTF-8 was accepted (only its quotes were checked), although
    /// `field_literal` writes printable ASCII and the memcached item refuses the same
    /// bytes; it would have reached the app as a raw `X-Session-Owner`.
    #[test]
    fn owners_that_no_writer_produces_are_corrupt() {
        for bad in [
            &b"F - 5 0 3 -\n\"\x07\""[..],
            b"F - 5 0 4 -\n\"\r\n\"",
            b"F - 5 0 3 -\n\"\x7f\"",
            "F - 5 0 4 -\n\"\u{e9}\"".as_bytes(),
        ] {
            assert!(
                matches!(decode_load_reply(bad), Err(StoreError::Corrupt(_))),
                "{:?}",
                String::from_utf8_lossy(bad)
            );
        }
        let ok = decode_load_reply(b"F - 5 0 10 -\n\"\\u00e9 x\"")
            .unwrap()
            .unwrap();
        assert_eq!(ok.owner.unwrap().literal(), "\"\\u00e9 x\"");
    }

    fn bulk(s: &str) -> Value {
        Value::BulkString(s.as_bytes().to_vec())
    }

    #[test]
    fn written_states_decode() {
        let ok = |items: &[&str]| -> Vec<Value> { items.iter().map(|s| bulk(s)).collect() };
        assert!(decode_written(&ok(&["OK"])).unwrap().is_none());
        let (loaded, fresh) = decode_written(&ok(&["OK", "- 5500 3000", "", "3:\"n\",1:1,"]))
            .unwrap()
            .unwrap();
        assert_eq!(loaded.data, fields(&[("\"n\"", "1")]));
        assert_eq!(
            (loaded.max_age, loaded.remaining, loaded.owner),
            (None, 5, None)
        );
        assert!(loaded.flash.is_empty());
        assert_eq!(
            fresh,
            Freshness {
                refreshed: true,
                since_seen_ms: Some(0),
                ttl_ms: Some(3000),
                remaining_ms: 5500,
            }
        );
        let (loaded, _) = decode_written(&ok(&["OK", "60 9000 8000", "\"ann\"", ""]))
            .unwrap()
            .unwrap();
        assert_eq!(loaded.max_age, Some(60));
        assert_eq!(
            loaded.owner.map(|o| o.literal().to_owned()),
            Some("\"ann\"".into())
        );
        for bad in [
            ok(&["OK", "- 1"]),
            ok(&["OK", "- 1 2 3", "", ""]),
            ok(&["OK", "x 1 2", "", ""]),
            ok(&["OK", "- 1 2", "ann", ""]),
            ok(&["OK", "- 1 2", "", "3:abc"]),
        ] {
            assert!(decode_written(&bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn show_replies_decode() {
        assert_eq!(decode_info(&Value::Array(vec![])).unwrap(), None);
        let shown = decode_info(&Value::Array(
            [
                "1700000000123",
                "1700000005999",
                "1700000065999",
                "\"ann\"",
                "1",
                "192.0.2.7",
                "",
            ]
            .map(bulk)
            .to_vec(),
        ))
        .unwrap()
        .expect("live");
        let info = shown.into_info("k");
        assert_eq!(
            (info.created, info.last_seen, info.expires),
            (1_700_000_000, 1_700_000_005, 1_700_000_065)
        );
        assert_eq!(info.owner, Some(Owner::from_literal("\"ann\"".into())));
        assert_eq!(
            info.client,
            Some(ClientInfo {
                ip: "192.0.2.7".into(),
                user_agent: String::new()
            })
        );
        let plain = decode_info(&Value::Array(
            ["1", "2", "3", "", "", "", ""].map(bulk).to_vec(),
        ))
        .unwrap()
        .expect("live");
        assert_eq!((plain.owner, plain.client), (None, None));
        for bad in [
            bulk("C"),
            Value::Array(vec![bulk("1")]),
            Value::Array(["x", "2", "3", "", "", "", ""].map(bulk).to_vec()),
        ] {
            assert!(matches!(decode_info(&bad), Err(StoreError::Corrupt(_))));
        }
    }
}
