//! The public configuration types, with the default of every key next to it.

use std::{
    fmt,
    net::{IpAddr, SocketAddr},
    path::PathBuf,
    time::Duration,
};

use crate::cookie::SameSite;

/// The whole effective configuration, defaults applied and validated.
#[derive(Debug, Clone)]
pub struct Config {
    /// Where the file came from (for messages and SIGHUP re-reads).
    pub path: PathBuf,
    pub listen: SocketAddr,
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
    pub bypass: Vec<String>,
    /// Peers whose `X-Forwarded-*` are kept.
    pub trusted_proxies: Vec<IpNet>,
    pub timeouts: Timeouts,
    pub limits: Limits,
    pub admin: AdminConfig,
    pub log: LogConfig,
}

/// A secret; `Debug` never shows it.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(pub String);

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Secret(<redacted>)")
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsConfig {
    pub cert: PathBuf,
    pub key: PathBuf,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UpstreamTls {
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

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Engine {
    Memory,
    Redis,
    Memcached,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OnError {
    Reject,
    Anonymous,
}

#[derive(Debug, Clone)]
pub struct StoreConfig {
    pub engine: Engine,
    pub storage: StorageConfig,
    /// Prefix of every store key (default `session:`).
    pub key_prefix: String,
    /// Bound on each store call (default 500ms).
    pub timeout: Duration,
    pub on_error: OnError,
}

/// `store.storage`: the union of every engine's settings (pycket's names); each engine
/// reads its own and validation rejects settings of another engine.
#[derive(Debug, Clone)]
pub struct StorageConfig {
    /// `redis://…` URL; when set, host/port/username/password/db come from it unless
    /// also given explicitly (validation rejects giving both).
    pub url: Option<Secret>,
    pub host: String,
    pub port: u16,
    pub username: Option<String>,
    pub password: Option<Secret>,
    pub db_sessions: i64,
    pub db_notifications: i64,
    pub max_connections: usize,
    pub tls: bool,
    /// memcached servers (`host:port`), default `["127.0.0.1:11211"]`.
    pub servers: Vec<String>,
    /// memory engine bound (default 100_000).
    pub max_entries: usize,
}

#[derive(Debug, Clone)]
pub struct SessionConfig {
    pub ttl: Duration,
    pub absolute_ttl: Duration,
    pub max_size: usize,
}

#[derive(Debug, Clone)]
pub struct CookieConfig {
    pub name: String,
    pub path: String,
    pub domain: Option<String>,
    pub secure: bool,
    pub http_only: bool,
    pub same_site: SameSite,
    /// Persistent cookie lifetime: `expires_days` or `max_age`, as one duration.
    pub lifetime: Option<Duration>,
    pub rolling: bool,
    pub forward: bool,
}

#[derive(Debug, Clone)]
pub struct HeadersConfig {
    pub prefix: String,
    pub expose_id: bool,
}

#[derive(Debug, Clone)]
pub struct Timeouts {
    pub header_read: Duration,
    pub upstream_connect: Duration,
    pub upstream_response: Duration,
    pub idle: Duration,
    pub shutdown: Duration,
}

#[derive(Debug, Clone)]
pub struct Limits {
    pub max_header_size: usize,
    /// The most client connections the proxy listener holds at once (SECURITY.md G6).
    pub max_connections: usize,
    /// The most client connections from one peer IP address; `None` when
    /// `limits.max_connections_per_ip: null` (no per-address cap).
    pub max_connections_per_ip: Option<usize>,
}

#[derive(Debug, Clone)]
pub struct AdminConfig {
    /// `None` when `admin.listen: null`.
    pub listen: Option<SocketAddr>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    Text,
    Json,
}

#[derive(Debug, Clone)]
pub struct LogConfig {
    pub format: LogFormat,
    /// A `tracing` filter directive such as `info` or `session_sidecar=debug`.
    pub level: String,
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

/// Default `store.storage.max_connections` with `engine: redis` (multiplexed
/// connections); memcached's pool of exclusive connections keeps 16.
pub const REDIS_DEFAULT_CONNECTIONS: usize = 2;
