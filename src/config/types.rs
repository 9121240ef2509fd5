//! The public configuration types, with the default of every key next to it.
//!
//! Every type derives `PartialEq` (`SIGHUP` compares sections with `==`, see
//! [`crate::reload`]) and `Serialize`: serializing a [`Config`] is the redacted printout
//! of `session-sidecar check` ([`Config::redacted_yaml`]), in the YAML shape the file
//! is written in (durations and sizes in their config spelling, secrets and URL
//! passwords as `<redacted>`, a literal `${` as `$${`).

use std::{
    fmt,
    net::{IpAddr, SocketAddr},
    path::PathBuf,
    time::Duration,
};

use serde::{Serialize, Serializer};

use super::redact as ser;
use crate::cookie::SameSite;

/// The whole effective configuration, defaults applied and validated.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Config {
    /// Where the file came from (for messages and SIGHUP re-reads).
    #[serde(skip)]
    pub path: PathBuf,
    pub listen: SocketAddr,
    /// Proxy workers (docs/performance.md#a-runtime-per-core).
    pub workers: Workers,
    pub tls: Option<TlsConfig>,
    pub upstream: Upstream,
    pub upstream_tls: Option<UpstreamTls>,
    /// Secret strings (≥ 32 bytes each); the first signs, all verify.
    pub secrets: Vec<Secret>,
    pub store: StoreConfig,
    pub session: SessionConfig,
    pub cookies: CookieConfig,
    pub headers: HeadersConfig,
    /// Path prefixes without session handling.
    #[serde(serialize_with = "ser::escaped_list")]
    pub bypass: Vec<String>,
    /// Peers whose `X-Forwarded-*` are kept.
    pub trusted_proxies: Vec<IpNet>,
    pub timeouts: Timeouts,
    pub limits: Limits,
    pub admin: AdminConfig,
    pub log: LogConfig,
}

/// `workers`: how many proxy workers serve the listener, each a thread with its own
/// single-threaded runtime, listener (`SO_REUSEPORT`), upstream pool and store
/// connections.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Workers {
    /// One per CPU the process may run on (the default).
    #[default]
    Auto,
    /// Exactly this many (1 to [`MAX_WORKERS`]).
    Count(usize),
}

/// The most `workers`.
pub const MAX_WORKERS: usize = 1024;

impl Workers {
    /// The number of workers to start.
    pub fn count(self) -> usize {
        match self {
            Workers::Auto => std::thread::available_parallelism().map_or(1, usize::from),
            Workers::Count(n) => n,
        }
    }
}

impl Serialize for Workers {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            Workers::Auto => s.serialize_str("auto"),
            Workers::Count(n) => s.serialize_u64(*n as u64),
        }
    }
}

/// `listen` when absent.
pub const DEFAULT_LISTEN: SocketAddr =
    SocketAddr::new(IpAddr::V4(std::net::Ipv4Addr::LOCALHOST), 8080);

/// A secret. Equality compares the values; `Debug` and `Serialize` never show them.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(pub String);

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(<redacted>)")
    }
}

impl Serialize for Secret {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(ser::REDACTED)
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct TlsConfig {
    #[serde(serialize_with = "ser::path")]
    pub cert: PathBuf,
    #[serde(serialize_with = "ser::path")]
    pub key: PathBuf,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct UpstreamTls {
    #[serde(serialize_with = "ser::opt_path")]
    pub ca: Option<PathBuf>,
}

/// `upstream`: `http://host:port`, `https://host:port` or `unix:/path`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Upstream {
    /// Scheme `http` or `https` and the authority (`host:port`, port defaulted).
    Tcp {
        https: bool,
        authority: String,
    },
    Unix(PathBuf),
}

impl Serialize for Upstream {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let text = match self {
            Upstream::Tcp { https, authority } => {
                format!("{}://{authority}", if *https { "https" } else { "http" })
            }
            Upstream::Unix(p) => format!("unix:{}", p.to_string_lossy()),
        };
        ser::escaped(&text, s)
    }
}

/// `store`: the engine with its own options, and the settings every engine shares.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct StoreConfig {
    /// `store.engine` and `store.storage`, written as those two keys.
    #[serde(flatten)]
    pub storage: Storage,
    /// Prefix of every store key.
    #[serde(serialize_with = "ser::escaped")]
    pub key_prefix: String,
    /// Bound on each store call.
    #[serde(serialize_with = "ser::duration")]
    pub timeout: Duration,
    pub on_error: OnError,
    /// `store.cache`: the Redis engine's client-side cache; printed only when on.
    #[serde(skip_serializing_if = "CacheConfig::is_off")]
    pub cache: CacheConfig,
}

/// `store.cache` (Redis only): answer loads from memory while Redis client tracking
/// guarantees to report every change (docs/configuration.md#store-cache).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct CacheConfig {
    /// The most sessions cached; 0: off (the default).
    pub max_entries: usize,
}

impl CacheConfig {
    pub fn is_off(&self) -> bool {
        self.max_entries == 0
    }
}

/// The largest `store.cache.max_entries`.
pub const MAX_CACHE_ENTRIES: i128 = 10_000_000;

/// `store.key_prefix` when absent.
pub const DEFAULT_KEY_PREFIX: &str = "session:";
/// The longest `store.key_prefix` (every engine's keys stay within their limits with
/// it; memcached's 250 bytes is the tightest).
pub const MAX_KEY_PREFIX_LEN: usize = 64;
/// `store.timeout` when absent.
pub const DEFAULT_STORE_TIMEOUT: Duration = Duration::from_millis(500);

/// `store.engine` with its `store.storage` options: each engine has its own keys, and a
/// key of another engine is an error at load.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "engine", content = "storage", rename_all = "lowercase")]
pub enum Storage {
    Memory(MemoryOptions),
    Redis(RedisOptions),
    Memcached(MemcachedOptions),
}

impl Storage {
    /// The engine's name as `store.engine` spells it.
    pub fn engine_name(&self) -> &'static str {
        match self {
            Storage::Memory(_) => "memory",
            Storage::Redis(_) => "redis",
            Storage::Memcached(_) => "memcached",
        }
    }
}

impl Default for Storage {
    fn default() -> Self {
        Storage::Memory(MemoryOptions::default())
    }
}

/// `store.storage` with `engine: memory`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct MemoryOptions {
    /// The most sessions kept.
    pub max_entries: usize,
}

/// `store.storage.max_entries` when absent.
pub const DEFAULT_MAX_ENTRIES: usize = 100_000;
/// The largest `store.storage.max_entries`.
pub const MAX_MAX_ENTRIES: i128 = u32::MAX as i128;

impl Default for MemoryOptions {
    fn default() -> Self {
        MemoryOptions {
            max_entries: DEFAULT_MAX_ENTRIES,
        }
    }
}

/// `store.storage` with `engine: redis` (pycket's names; docs/configuration.md#redis).
/// Exactly one topology; TLS and the data-node credentials apply to every topology.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RedisOptions {
    /// Where the data lives: one server, a Sentinel-managed master, or a cluster.
    pub topology: RedisTopology,
    /// Data-node credentials (with `url`: `None`, the URL carries them).
    pub username: Option<String>,
    pub password: Option<Secret>,
    pub db_sessions: u32,
    pub db_notifications: u32,
    /// Multiplexed connections (per master for Sentinel; a cluster keeps one
    /// multiplexed connection per node).
    pub max_connections: usize,
    /// TLS to every Redis node (and to the sentinels): `tls: true` or a `rediss://` URL.
    /// `None` is plain TCP.
    pub tls: Option<RedisTls>,
}

/// `store.storage`: which Redis topology (docs/configuration.md#redis).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RedisTopology {
    /// `url`: `redis://`, `rediss://` or `redis+unix://`; the server, username and
    /// password come from it, and a database number in its path is `db_sessions`.
    Url(Secret),
    /// `host` and `port` (the default: 127.0.0.1:6379).
    Server { host: String, port: u16 },
    /// `sentinel: {master_name, nodes, username, password}`.
    Sentinel(SentinelOptions),
    /// `cluster: {nodes}`.
    Cluster(ClusterOptions),
}

/// `store.storage.sentinel`: the master is asked of these sentinels and followed
/// across failovers.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct SentinelOptions {
    #[serde(serialize_with = "ser::escaped")]
    pub master_name: String,
    /// `host:port` of each sentinel.
    #[serde(serialize_with = "ser::escaped_list")]
    pub nodes: Vec<String>,
    /// Credentials of the sentinels themselves (the data nodes use
    /// `store.storage.username`/`password`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub username: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub password: Option<Secret>,
}

/// `store.storage.cluster`: seed nodes of a Redis Cluster; the rest is discovered.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ClusterOptions {
    /// `host:port` of each seed node.
    #[serde(serialize_with = "ser::escaped_list")]
    pub nodes: Vec<String>,
}

/// `store.storage.tls_ca`, `tls_cert`, `tls_key` (with `tls: true` or `rediss://`).
/// The server name checked is the host the sidecar connects to.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct RedisTls {
    /// PEM bundle of the CAs to trust; `None`: the system roots.
    #[serde(serialize_with = "ser::opt_path")]
    pub ca: Option<PathBuf>,
    /// Client certificate chain and its key (PEM), both or neither.
    #[serde(serialize_with = "ser::opt_path")]
    pub cert: Option<PathBuf>,
    #[serde(serialize_with = "ser::opt_path")]
    pub key: Option<PathBuf>,
}

/// `store.storage.host` when absent (Redis).
pub const DEFAULT_REDIS_HOST: &str = "127.0.0.1";
/// `store.storage.port` when absent (Redis).
pub const DEFAULT_REDIS_PORT: u16 = 6379;
/// The largest `store.storage.port`.
pub const MAX_PORT: i128 = 65_535;
/// The range of `store.storage.max_connections` (both network engines).
pub const STORE_CONNECTIONS_RANGE: (i128, i128) = (1, 65_535);
/// The largest `store.storage.db_sessions` and `db_notifications`.
pub const MAX_DB_NUMBER: i128 = i32::MAX as i128;
/// `store.storage.db_sessions` when absent.
pub const DEFAULT_DB_SESSIONS: u32 = 0;
/// `store.storage.db_notifications` when absent.
pub const DEFAULT_DB_NOTIFICATIONS: u32 = 1;
/// Default `store.storage.max_connections` with `engine: redis`. Redis connections are
/// multiplexed: each carries every concurrent request, and fewer connections batch more
/// commands per write (docs/performance.md); two keep one working while the other
/// reconnects. memcached's pool of exclusive connections keeps
/// [`DEFAULT_MEMCACHED_CONNECTIONS`].
pub const REDIS_DEFAULT_CONNECTIONS: usize = 2;

impl Default for RedisOptions {
    fn default() -> Self {
        RedisOptions {
            topology: RedisTopology::Server {
                host: DEFAULT_REDIS_HOST.to_owned(),
                port: DEFAULT_REDIS_PORT,
            },
            username: None,
            password: None,
            db_sessions: DEFAULT_DB_SESSIONS,
            db_notifications: DEFAULT_DB_NOTIFICATIONS,
            max_connections: REDIS_DEFAULT_CONNECTIONS,
            tls: None,
        }
    }
}

/// `store.storage` with `engine: memcached`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct MemcachedOptions {
    /// `host:port` of each server.
    #[serde(serialize_with = "ser::escaped_list")]
    pub servers: Vec<String>,
    /// Exclusive connections per server.
    pub max_connections: usize,
}

/// `store.storage.servers` when absent (memcached).
pub const DEFAULT_MEMCACHED_SERVER: &str = "127.0.0.1:11211";
/// `store.storage.max_connections` when absent with `engine: memcached`.
pub const DEFAULT_MEMCACHED_CONNECTIONS: usize = 16;

impl Default for MemcachedOptions {
    fn default() -> Self {
        MemcachedOptions {
            servers: vec![DEFAULT_MEMCACHED_SERVER.to_owned()],
            max_connections: DEFAULT_MEMCACHED_CONNECTIONS,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum OnError {
    Reject,
    Anonymous,
}

impl Default for StoreConfig {
    fn default() -> Self {
        StoreConfig {
            storage: Storage::default(),
            key_prefix: DEFAULT_KEY_PREFIX.to_owned(),
            timeout: DEFAULT_STORE_TIMEOUT,
            on_error: OnError::Reject,
            cache: CacheConfig::default(),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct SessionConfig {
    #[serde(serialize_with = "ser::duration")]
    pub ttl: Duration,
    #[serde(serialize_with = "ser::duration")]
    pub absolute_ttl: Duration,
    #[serde(serialize_with = "ser::size")]
    pub max_size: usize,
    /// Lazy touch (docs/protocol.md §12): refresh the idle lifetime only when the last
    /// refresh is older than this; zero refreshes on every request.
    #[serde(serialize_with = "ser::duration")]
    pub touch_after: Duration,
    /// Path prefixes whose requests never extend a session's idle lifetime.
    #[serde(serialize_with = "ser::escaped_list")]
    pub no_touch: Vec<String>,
    /// Most live sessions per owner (`None`: unlimited); the least recently used go.
    pub max_per_owner: Option<u32>,
    /// Record the client's IP and `User-Agent` when a session is created.
    pub record_client: bool,
}

/// `session.ttl` when absent.
pub const DEFAULT_SESSION_TTL: Duration = Duration::from_secs(86_400);
/// `session.absolute_ttl` when absent.
pub const DEFAULT_ABSOLUTE_TTL: Duration = Duration::from_secs(30 * 86_400);
/// `session.max_size` when absent.
pub const DEFAULT_SESSION_MAX_SIZE: usize = 8 * 1024;
/// Largest `session.max_per_owner`: beyond it an owner's index is no longer bounded by
/// what one store call handles (docs/protocol.md §11).
pub const MAX_PER_OWNER: u32 = 10_000;
/// The range of `session.max_size`.
pub const SESSION_MAX_SIZE_RANGE: (u64, u64) = (64, 1024 * 1024);

impl Default for SessionConfig {
    fn default() -> Self {
        SessionConfig {
            ttl: DEFAULT_SESSION_TTL,
            absolute_ttl: DEFAULT_ABSOLUTE_TTL,
            max_size: DEFAULT_SESSION_MAX_SIZE,
            touch_after: Duration::ZERO,
            no_touch: Vec::new(),
            max_per_owner: None,
            record_client: false,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct CookieConfig {
    #[serde(serialize_with = "ser::escaped")]
    pub name: String,
    #[serde(serialize_with = "ser::escaped")]
    pub path: String,
    pub domain: Option<String>,
    pub secure: bool,
    pub http_only: bool,
    pub same_site: SameSite,
    /// Persistent cookie lifetime: `expires_days` or `max_age`, as one duration (shown
    /// as `max_age`).
    #[serde(rename = "max_age", serialize_with = "ser::opt_duration")]
    pub lifetime: Option<Duration>,
    pub rolling: bool,
    pub forward: bool,
}

/// `cookies.name` when absent.
pub const DEFAULT_COOKIE_NAME: &str = "session";
/// `cookies.path` when absent.
pub const DEFAULT_COOKIE_PATH: &str = "/";
/// The largest `cookies.expires_days`.
pub const MAX_EXPIRES_DAYS: i128 = 3650;

impl Default for CookieConfig {
    fn default() -> Self {
        CookieConfig {
            name: DEFAULT_COOKIE_NAME.to_owned(),
            path: DEFAULT_COOKIE_PATH.to_owned(),
            domain: None,
            secure: true,
            http_only: true,
            same_site: SameSite::Lax,
            lifetime: None,
            rolling: false,
            forward: false,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct HeadersConfig {
    #[serde(serialize_with = "ser::escaped")]
    pub prefix: String,
    pub expose_id: bool,
}

/// `headers.prefix` when absent.
pub const DEFAULT_HEADER_PREFIX: &str = "X-Session";

impl Default for HeadersConfig {
    fn default() -> Self {
        HeadersConfig {
            prefix: DEFAULT_HEADER_PREFIX.to_owned(),
            expose_id: false,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Timeouts {
    #[serde(serialize_with = "ser::duration")]
    pub header_read: Duration,
    #[serde(serialize_with = "ser::duration")]
    pub body_read: Duration,
    #[serde(serialize_with = "ser::duration")]
    pub upstream_connect: Duration,
    #[serde(serialize_with = "ser::duration")]
    pub upstream_response: Duration,
    #[serde(serialize_with = "ser::duration")]
    pub idle: Duration,
    #[serde(serialize_with = "ser::duration")]
    pub shutdown: Duration,
}

/// `timeouts.header_read` when absent.
pub const DEFAULT_HEADER_READ: Duration = Duration::from_secs(10);
/// `timeouts.body_read` when absent.
pub const DEFAULT_BODY_READ: Duration = Duration::from_secs(30);
/// `timeouts.upstream_connect` when absent.
pub const DEFAULT_UPSTREAM_CONNECT: Duration = Duration::from_secs(5);
/// `timeouts.upstream_response` when absent.
pub const DEFAULT_UPSTREAM_RESPONSE: Duration = Duration::from_secs(60);
/// `timeouts.idle` when absent.
pub const DEFAULT_IDLE: Duration = Duration::from_secs(60);
/// `timeouts.shutdown` when absent.
pub const DEFAULT_SHUTDOWN: Duration = Duration::from_secs(30);

impl Default for Timeouts {
    fn default() -> Self {
        Timeouts {
            header_read: DEFAULT_HEADER_READ,
            body_read: DEFAULT_BODY_READ,
            upstream_connect: DEFAULT_UPSTREAM_CONNECT,
            upstream_response: DEFAULT_UPSTREAM_RESPONSE,
            idle: DEFAULT_IDLE,
            shutdown: DEFAULT_SHUTDOWN,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Limits {
    #[serde(serialize_with = "ser::size")]
    pub max_header_size: usize,
    /// The most client connections the proxy listener holds at once (docs/security.md §14).
    pub max_connections: usize,
    /// The most client connections from one peer IP address; `None` when
    /// `limits.max_connections_per_ip: null` (no per-address cap).
    pub max_connections_per_ip: Option<usize>,
}

/// `limits.max_header_size` when absent.
pub const DEFAULT_MAX_HEADER_SIZE: usize = 32 * 1024;
/// The range of `limits.max_header_size` (hyper refuses a read buffer below 8 KiB).
pub const MAX_HEADER_SIZE_RANGE: (u64, u64) = (8 * 1024, 16 * 1024 * 1024);
/// `limits.max_connections` when absent.
pub const DEFAULT_MAX_CONNECTIONS: usize = 10_000;
/// `limits.max_connections_per_ip` when absent.
pub const DEFAULT_MAX_CONNECTIONS_PER_IP: usize = 1024;

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_header_size: DEFAULT_MAX_HEADER_SIZE,
            max_connections: DEFAULT_MAX_CONNECTIONS,
            max_connections_per_ip: Some(DEFAULT_MAX_CONNECTIONS_PER_IP),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct AdminConfig {
    /// `None` when `admin.listen: null`.
    pub listen: Option<SocketAddr>,
    /// The session admin API's bearer token (docs/protocol.md §11); the API is off
    /// without one.
    pub token: Option<Secret>,
}

/// `admin.listen` when absent.
pub const DEFAULT_ADMIN_LISTEN: SocketAddr =
    SocketAddr::new(IpAddr::V4(std::net::Ipv4Addr::LOCALHOST), 9090);

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    Text,
    Json,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct LogConfig {
    pub format: LogFormat,
    /// A `tracing` filter directive such as `info` or `session_sidecar=debug`.
    #[serde(serialize_with = "ser::escaped")]
    pub level: String,
    /// Write the owner id in clear in log lines (default: only its hash).
    pub owner: bool,
}

/// `log.level` when absent.
pub const DEFAULT_LOG_LEVEL: &str = "info";

impl Default for LogConfig {
    fn default() -> Self {
        LogConfig {
            format: LogFormat::Text,
            level: DEFAULT_LOG_LEVEL.to_owned(),
            owner: false,
        }
    }
}

/// An IPv4 or IPv6 network in CIDR form (`10.0.0.0/8`, `::1/128`; a bare address is
/// a /32 or /128).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IpNet {
    pub addr: std::net::IpAddr,
    pub prefix_len: u8,
}

impl IpNet {
    /// Does this network contain `ip`? (An IPv4-mapped IPv6 peer matches IPv4 nets.)
    pub fn contains(&self, ip: std::net::IpAddr) -> bool {
        use std::net::IpAddr;
        let ip = match ip {
            IpAddr::V6(v6) => v6.to_ipv4_mapped().map(IpAddr::V4).unwrap_or(ip),
            v4 => v4,
        };
        match (self.addr, ip) {
            (IpAddr::V4(net), IpAddr::V4(ip)) => {
                let bits = u32::from(self.prefix_len.min(32));
                let mask = if bits == 0 {
                    0
                } else {
                    u32::MAX << (32 - bits)
                };
                u32::from(net) & mask == u32::from(ip) & mask
            }
            (IpAddr::V6(net), IpAddr::V6(ip)) => {
                let bits = u32::from(self.prefix_len.min(128));
                let mask = if bits == 0 {
                    0
                } else {
                    u128::MAX << (128 - bits)
                };
                u128::from(net) & mask == u128::from(ip) & mask
            }
            _ => false,
        }
    }
}

impl fmt::Display for IpNet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.addr, self.prefix_len)
    }
}

impl std::str::FromStr for IpNet {
    type Err = String;

    /// `10.0.0.0/8`, `fd00::/8`, or a bare address (a /32 or /128 network).
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let (addr, len) = match s.split_once('/') {
            Some((a, l)) => (a, Some(l)),
            None => (s, None),
        };
        let addr: IpAddr = addr
            .parse()
            .map_err(|_| format!("{s:?} is not an IP address or CIDR network"))?;
        let max = if addr.is_ipv4() { 32 } else { 128 };
        let prefix_len = match len {
            None => max,
            Some(l) => match l.parse::<u8>() {
                Ok(n) if n <= max && l.bytes().all(|b| b.is_ascii_digit()) => n,
                _ => return Err(format!("{s:?}: the prefix length must be 0..={max}")),
            },
        };
        Ok(IpNet { addr, prefix_len })
    }
}

impl Serialize for IpNet {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}
