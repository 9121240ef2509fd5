//! The YAML configuration (SPEC §9, §10): schema, defaults, `${VAR}` expansion,
//! validation with `FILE:LINE:COLUMN` errors and hints, and the redacted printout of
//! `session-sidecar check`.
//!
//! Loading goes in three steps:
//! 1. serde-saphyr parses the text into private `Raw*` structs (`deny_unknown_fields`,
//!    every key optional, values wrapped in [`Spanned`] so that later checks can point
//!    at the offending value). Duplicate keys and oversized/alias-bomb documents are
//!    rejected by the parser.
//! 2. `${VAR}` references are expanded in string scalars *after* parsing, so a value
//!    from the environment can never change the document structure.
//! 3. Defaults are applied and every rule is checked while building [`Config`]; the
//!    first problem becomes a [`ConfigError`] (`FILE:LINE:COLUMN: message` + hint).
//!
//! Value syntax accepted everywhere:
//! - durations: `500ms`, `10s`, `5m`, `2h`, `1d`, or a bare integer meaning seconds
//!   (`30` = `30s`); at most `3650d`, so that time arithmetic downstream cannot overflow;
//! - sizes: `512B`, `8KB` (= 8000), `8KiB` (= 8192), `1MB`, `1MiB`, `1GB`, `1GiB` (units
//!   case-insensitive), or a bare integer meaning bytes.
//!
//! Numbers and booleans may also be written as strings (`port: "${REDIS_PORT}"`),
//! which is what makes `${VAR}` usable for them.

use std::{
    fmt,
    net::{IpAddr, Ipv6Addr, SocketAddr},
    path::{Path, PathBuf},
    time::Duration,
};

use serde::{Deserialize, Serialize};
use serde_saphyr::{Location, Spanned};

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

// ---------------------------------------------------------------------------------
// Errors
// ---------------------------------------------------------------------------------

/// Why a configuration could not be loaded. `Display` is the message shown to the
/// operator: `FILE:LINE:COLUMN: message`, then `  hint: ...` on its own line when
/// there is something useful to suggest. Messages never contain secret values.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read (missing, permissions, too large, not UTF-8 is
    /// reported as [`ConfigError::Invalid`]).
    #[error("{}: cannot read: {error}", .path.display())]
    Io {
        path: PathBuf,
        // Not `#[source]`: the message already includes it, and error chains printed
        // by callers would repeat it otherwise.
        error: std::io::Error,
    },
    /// The file was read but is not a valid configuration.
    #[error("{}:{}:{}: {}{}", .path.display(), .line, .column, .message, HintSuffix(.hint.as_deref()))]
    Invalid {
        path: PathBuf,
        /// 1-based line of the offending key or value.
        line: u64,
        /// 1-based column, in characters.
        column: u64,
        message: String,
        hint: Option<String>,
    },
}

impl ConfigError {
    /// `(line, column)` of the problem, when it is in the file's content.
    pub fn position(&self) -> Option<(u64, u64)> {
        match self {
            ConfigError::Io { .. } => None,
            ConfigError::Invalid { line, column, .. } => Some((*line, *column)),
        }
    }

    /// The message without location and hint.
    pub fn message(&self) -> String {
        match self {
            ConfigError::Io { error, .. } => format!("cannot read: {error}"),
            ConfigError::Invalid { message, .. } => message.clone(),
        }
    }

    pub fn hint(&self) -> Option<&str> {
        match self {
            ConfigError::Io { .. } => None,
            ConfigError::Invalid { hint, .. } => hint.as_deref(),
        }
    }
}

struct HintSuffix<'a>(Option<&'a str>);

impl fmt::Display for HintSuffix<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0 {
            Some(h) => write!(f, "\n  hint: {h}"),
            None => Ok(()),
        }
    }
}

const GEN_SECRET_HINT: &str =
    "run `session-sidecar gen-secret` and pass it as secrets: [\"${SESSION_SECRET}\"]";
const DURATION_HINT: &str =
    "durations are written like 500ms, 10s, 5m, 2h, 1d (a bare integer means seconds)";
const SIZE_HINT: &str =
    "sizes are written like 512B, 8KiB (8192), 8KB (8000), 1MiB (a bare integer means bytes)";

/// The largest file `load` reads: a config is a few KiB; this bounds memory before the
/// parser's own budgets apply.
const MAX_FILE_BYTES: u64 = 1024 * 1024;
/// Upper bound of every duration, so `Instant + d` and TTL arithmetic cannot overflow.
const MAX_DURATION: Duration = Duration::from_secs(3650 * 86_400);
/// Default `store.storage.max_connections` with `engine: redis` (multiplexed
/// connections); memcached's pool of exclusive connections keeps 16.
pub const REDIS_DEFAULT_CONNECTIONS: usize = 2;

/// Upper bound of `limits.max_connections` and `limits.max_connections_per_ip`: about
/// Linux's ceiling on open file descriptors per process (`fs.nr_open`, 1048576).
const MAX_CONNECTIONS_LIMIT: i128 = 1_000_000;
const MAX_CONNECTIONS_HINT: &str = "a whole number of connections from 1 to 1000000, \
     for example `max_connections: 10000`";
const MAX_CONNECTIONS_PER_IP_HINT: &str = "a whole number of connections from 1 to 1000000, \
     or `null` for no per-address cap; behind a load balancer or reverse proxy every \
     connection comes from its address, so raise it or use `null` there";

// ---------------------------------------------------------------------------------
// Raw (as written) configuration
// ---------------------------------------------------------------------------------

type Str = Spanned<String>;
type Val = Spanned<Scalar>;

/// A scalar of any YAML type. Numeric and boolean keys are read through this (not as
/// `u64`/`bool`) so that `"${PORT}"` can be expanded first and so that type errors get
/// our message and the key's name.
#[derive(Debug, Clone)]
enum Scalar {
    Int(i128),
    Float(f64),
    Bool(bool),
    Str(String),
}

impl<'de> Deserialize<'de> for Scalar {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> serde::de::Visitor<'de> for V {
            type Value = Scalar;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a single value")
            }
            fn visit_bool<E>(self, v: bool) -> Result<Scalar, E> {
                Ok(Scalar::Bool(v))
            }
            fn visit_i64<E>(self, v: i64) -> Result<Scalar, E> {
                Ok(Scalar::Int(v.into()))
            }
            fn visit_u64<E>(self, v: u64) -> Result<Scalar, E> {
                Ok(Scalar::Int(v.into()))
            }
            fn visit_i128<E>(self, v: i128) -> Result<Scalar, E> {
                Ok(Scalar::Int(v))
            }
            fn visit_u128<E: serde::de::Error>(self, v: u128) -> Result<Scalar, E> {
                i128::try_from(v)
                    .map(Scalar::Int)
                    .map_err(|_| E::custom("number too large"))
            }
            fn visit_f64<E>(self, v: f64) -> Result<Scalar, E> {
                Ok(Scalar::Float(v))
            }
            fn visit_str<E>(self, v: &str) -> Result<Scalar, E> {
                Ok(Scalar::Str(v.to_owned()))
            }
            // Without these, serde reports "invalid type" without a usable location.
            fn visit_seq<A: serde::de::SeqAccess<'de>>(self, _: A) -> Result<Scalar, A::Error> {
                Err(serde::de::Error::custom(
                    "expected a single value, found a list",
                ))
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(self, _: A) -> Result<Scalar, A::Error> {
                Err(serde::de::Error::custom(
                    "expected a single value, found a mapping",
                ))
            }
        }
        d.deserialize_any(V)
    }
}

/// A key whose explicit `null` differs from its absence (`admin.listen: null`
/// disables the admin listener; leaving the key out keeps the default).
#[derive(Debug, Default)]
enum Nullable<T> {
    #[default]
    Absent,
    Null,
    Value(T),
}

impl<'de, T: Deserialize<'de>> Deserialize<'de> for Nullable<T> {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        // Only called when the key is present (`#[serde(default)]` covers absence).
        Ok(match Option::<T>::deserialize(d)? {
            None => Nullable::Null,
            Some(v) => Nullable::Value(v),
        })
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    listen: Option<Str>,
    tls: Option<Spanned<RawTls>>,
    upstream: Option<Str>,
    upstream_tls: Option<Spanned<RawUpstreamTls>>,
    secrets: Option<Spanned<Vec<Str>>>,
    store: Option<Spanned<RawStore>>,
    session: Option<Spanned<RawSession>>,
    cookies: Option<Spanned<RawCookies>>,
    headers: Option<Spanned<RawHeaders>>,
    bypass: Option<Spanned<Vec<Str>>>,
    trusted_proxies: Option<Spanned<Vec<Str>>>,
    timeouts: Option<Spanned<RawTimeouts>>,
    limits: Option<Spanned<RawLimits>>,
    admin: Option<Spanned<RawAdmin>>,
    log: Option<Spanned<RawLog>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawTls {
    cert: Option<Str>,
    key: Option<Str>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawUpstreamTls {
    ca: Option<Str>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawStore {
    engine: Option<Str>,
    storage: Option<Spanned<RawStorage>>,
    key_prefix: Option<Str>,
    timeout: Option<Val>,
    on_error: Option<Str>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawStorage {
    url: Option<Str>,
    host: Option<Str>,
    port: Option<Val>,
    username: Option<Str>,
    password: Option<Str>,
    db_sessions: Option<Val>,
    db_notifications: Option<Val>,
    max_connections: Option<Val>,
    tls: Option<Val>,
    // Named by SPEC §7 but planned (§11): recognised so the error says so.
    sentinel: Option<Spanned<serde::de::IgnoredAny>>,
    cluster: Option<Spanned<serde::de::IgnoredAny>>,
    servers: Option<Spanned<Vec<Str>>>,
    max_entries: Option<Val>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawSession {
    ttl: Option<Val>,
    absolute_ttl: Option<Val>,
    max_size: Option<Val>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawCookies {
    name: Option<Str>,
    path: Option<Str>,
    domain: Option<Str>,
    secure: Option<Val>,
    http_only: Option<Val>,
    same_site: Option<Str>,
    expires_days: Option<Val>,
    max_age: Option<Val>,
    rolling: Option<Val>,
    forward: Option<Val>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawHeaders {
    prefix: Option<Str>,
    expose_id: Option<Val>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawTimeouts {
    header_read: Option<Val>,
    upstream_connect: Option<Val>,
    upstream_response: Option<Val>,
    idle: Option<Val>,
    shutdown: Option<Val>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawLimits {
    max_header_size: Option<Val>,
    max_connections: Option<Val>,
    #[serde(default)]
    max_connections_per_ip: Nullable<Val>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawAdmin {
    #[serde(default)]
    listen: Nullable<Str>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawLog {
    format: Option<Str>,
    level: Option<Str>,
}

/// The keys of each section, for "unknown key" hints. serde reports the expected field
/// list of the struct that rejected the key; matching it against these sets tells which
/// section it was (a unit test checks each set against its struct).
const SECTIONS: &[(&str, &[&str])] = &[
    (
        "",
        &[
            "listen",
            "tls",
            "upstream",
            "upstream_tls",
            "secrets",
            "store",
            "session",
            "cookies",
            "headers",
            "bypass",
            "trusted_proxies",
            "timeouts",
            "limits",
            "admin",
            "log",
        ],
    ),
    ("tls", &["cert", "key"]),
    ("upstream_tls", &["ca"]),
    (
        "store",
        &["engine", "storage", "key_prefix", "timeout", "on_error"],
    ),
    (
        "store.storage",
        &[
            "url",
            "host",
            "port",
            "username",
            "password",
            "db_sessions",
            "db_notifications",
            "max_connections",
            "tls",
            "sentinel",
            "cluster",
            "servers",
            "max_entries",
        ],
    ),
    ("session", &["ttl", "absolute_ttl", "max_size"]),
    (
        "cookies",
        &[
            "name",
            "path",
            "domain",
            "secure",
            "http_only",
            "same_site",
            "expires_days",
            "max_age",
            "rolling",
            "forward",
        ],
    ),
    ("headers", &["prefix", "expose_id"]),
    (
        "timeouts",
        &[
            "header_read",
            "upstream_connect",
            "upstream_response",
            "idle",
            "shutdown",
        ],
    ),
    (
        "limits",
        &[
            "max_header_size",
            "max_connections",
            "max_connections_per_ip",
        ],
    ),
    ("admin", &["listen"]),
    ("log", &["format", "level"]),
];

// ---------------------------------------------------------------------------------
// Loading
// ---------------------------------------------------------------------------------

/// Looks up an environment variable for `${VAR}` expansion.
pub type EnvLookup<'a> = &'a dyn Fn(&str) -> Option<String>;

fn process_env(name: &str) -> Option<String> {
    std::env::var(name).ok()
}

impl Config {
    /// Reads, expands, validates the file at `path`.
    ///
    /// # Errors
    /// [`ConfigError::Io`] when the file cannot be read (or exceeds 1 MiB),
    /// [`ConfigError::Invalid`] for any syntax or validation problem.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        use std::io::Read;
        let io = |error| ConfigError::Io {
            path: path.to_path_buf(),
            error,
        };
        let file = std::fs::File::open(path).map_err(io)?;
        let mut bytes = Vec::new();
        file.take(MAX_FILE_BYTES + 1)
            .read_to_end(&mut bytes)
            .map_err(io)?;
        if bytes.len() as u64 > MAX_FILE_BYTES {
            return Err(io(std::io::Error::other(
                "file is larger than 1 MiB; this is not a configuration file",
            )));
        }
        let text = match String::from_utf8(bytes) {
            Ok(t) => t,
            Err(e) => {
                let valid = &e.as_bytes()[..e.utf8_error().valid_up_to()];
                let line = 1 + valid.iter().filter(|&&b| b == b'\n').count() as u64;
                let col_start = valid.iter().rposition(|&b| b == b'\n').map_or(0, |i| i + 1);
                let column =
                    1 + String::from_utf8_lossy(&valid[col_start..]).chars().count() as u64;
                return Err(ConfigError::Invalid {
                    path: path.to_path_buf(),
                    line,
                    column,
                    message: "the file is not valid UTF-8".into(),
                    hint: Some("save the configuration as UTF-8 text".into()),
                });
            }
        };
        Self::from_yaml_str(&text, path)
    }

    /// Parses `text` as if read from `path` (used for messages and to resolve relative
    /// TLS file paths), expanding `${VAR}` from the process environment.
    ///
    /// # Errors
    /// [`ConfigError::Invalid`] for any syntax or validation problem.
    pub fn from_yaml_str(text: &str, path: &Path) -> Result<Config, ConfigError> {
        Self::from_yaml_str_with_env(text, path, &process_env)
    }

    /// As [`Config::from_yaml_str`], with `${VAR}` looked up through `env` instead of
    /// the process environment (tests: no global state to mutate).
    ///
    /// # Errors
    /// [`ConfigError::Invalid`] for any syntax or validation problem.
    pub fn from_yaml_str_with_env(
        text: &str,
        path: &Path,
        env: EnvLookup<'_>,
    ) -> Result<Config, ConfigError> {
        let ctx = Ctx { path, env };
        let options = serde_saphyr::options! {
            // We render locations ourselves as FILE:LINE:COLUMN.
            with_snippet: false,
            // A config is small: a tight budget turns hostile or broken input into an
            // error quickly.
            budget: serde_saphyr::budget! {
                max_nodes: 20_000,
                max_depth: 16,
                max_documents: 1,
                max_total_scalar_bytes: 1024 * 1024,
            },
            // An unknown `!tag` is a mistake in a config, never something to ignore.
            reject_unsupported_tags: true,
        };
        let raw: RawConfig =
            serde_saphyr::from_str_with_options(text, options).map_err(|e| ctx.yaml_error(&e))?;
        ctx.build(raw)
    }
}

/// Everything validation needs besides the raw values.
struct Ctx<'a> {
    path: &'a Path,
    env: EnvLookup<'a>,
}

/// Where to point when a required key is missing and there is no better place.
fn file_start() -> Location {
    Location::UNKNOWN
}

fn line_col(loc: &Location) -> (u64, u64) {
    if loc.line() == 0 {
        (1, 1)
    } else {
        (loc.line(), loc.column().max(1))
    }
}

/// Control characters from the file or from the parser must not reach the terminal.
fn sanitize(s: &str) -> String {
    s.chars()
        .map(|c| if c.is_control() { '?' } else { c })
        .collect()
}

fn key_path(section: &str, key: &str) -> String {
    if section.is_empty() {
        key.to_owned()
    } else {
        format!("{section}.{key}")
    }
}

impl Ctx<'_> {
    fn err(&self, at: &Location, message: impl Into<String>, hint: Option<String>) -> ConfigError {
        let (line, column) = line_col(at);
        ConfigError::Invalid {
            path: self.path.to_path_buf(),
            line,
            column,
            message: message.into(),
            hint,
        }
    }

    fn yaml_error(&self, err: &serde_saphyr::Error) -> ConfigError {
        use serde_saphyr::{Error as E, MessageFormatter, UserMessageFormatter};
        let at = err.location().unwrap_or(Location::UNKNOWN);
        // Look through wrappers to the error that says what went wrong.
        let mut inner = err;
        while let E::WithSnippet { error, .. } | E::AliasError { error, .. } = inner {
            inner = error;
        }
        let (message, hint) = match inner {
            E::SerdeUnknownField {
                field, expected, ..
            } => unknown_key(&sanitize(field), expected),
            E::DuplicateMappingKey { key, .. } => (
                match key {
                    Some(k) => format!("duplicate key `{}`", sanitize(k)),
                    None => "duplicate key".to_owned(),
                },
                Some("each key may appear once per section; remove one of them".to_owned()),
            ),
            E::Unexpected { expected, .. } => match *expected {
                "mapping start" => (
                    "expected a section (indented `key: value` lines or `{ key: value }`)"
                        .to_owned(),
                    Some("see docs/configuration.md for the keys of each section".to_owned()),
                ),
                "sequence start" => (
                    "expected a list".to_owned(),
                    Some("write a list as `[a, b]` or as one `- item` line per entry".to_owned()),
                ),
                "string scalar" => (
                    "expected a single value, found a list or mapping".to_owned(),
                    None,
                ),
                other => (format!("expected {}", sanitize(other)), None),
            },
            E::Budget { .. } => (
                "the document is too large or too deeply nested for a configuration".to_owned(),
                None,
            ),
            E::MultipleDocuments { .. } => (
                "only one YAML document is allowed".to_owned(),
                Some("remove the `---` separator".to_owned()),
            ),
            E::UnsupportedTag { tag, .. } => (
                format!("unsupported YAML tag `{}`", sanitize(tag)),
                Some("remove the tag; values are typed by their key".to_owned()),
            ),
            other => (sanitize(&UserMessageFormatter.format_message(other)), None),
        };
        self.err(&at, message, hint)
    }

    // ---- scalar conversions ----------------------------------------------------

    /// Expands `${VAR}` in a string value.
    fn expand(&self, value: &str, at: &Location, key: &str) -> Result<String, ConfigError> {
        expand_vars(value, self.env).map_err(|e| match e {
            ExpandError::Unset(name) => self.err(
                at,
                format!("`{key}`: environment variable `{name}` is not set"),
                Some(if key == "secrets" {
                    format!("export {name}=<secret>; to create one, {GEN_SECRET_HINT}")
                } else {
                    format!("export {name}, or write `$${{` for a literal `${{`")
                }),
            ),
            ExpandError::Invalid => self.err(
                at,
                format!("`{key}`: malformed `${{...}}` reference"),
                Some(
                    "write `${NAME}` with NAME made of letters, digits and `_` (no defaults \
                     like `${NAME:-x}`); write `$${` for a literal `${`"
                        .to_owned(),
                ),
            ),
        })
    }

    fn string(&self, v: &Str, key: &str) -> Result<String, ConfigError> {
        self.expand(&v.value, &v.referenced, key)
    }

    fn opt_string(&self, v: &Option<Str>, key: &str) -> Result<Option<String>, ConfigError> {
        v.as_ref().map(|v| self.string(v, key)).transpose()
    }

    /// The scalar as text (after expansion) for keys that parse text themselves.
    fn scalar_text(&self, v: &Val, key: &str) -> Result<String, ConfigError> {
        Ok(match &v.value {
            Scalar::Str(s) => self.expand(s, &v.referenced, key)?,
            Scalar::Int(i) => i.to_string(),
            Scalar::Float(f) => f.to_string(),
            Scalar::Bool(b) => b.to_string(),
        })
    }

    fn int(&self, v: &Val, key: &str, min: i128, max: i128) -> Result<i128, ConfigError> {
        let n = match &v.value {
            Scalar::Int(i) => Some(*i),
            Scalar::Str(_) => {
                let text = self.scalar_text(v, key)?;
                text.parse::<i128>().ok()
            }
            Scalar::Float(_) | Scalar::Bool(_) => None,
        };
        match n {
            Some(n) if (min..=max).contains(&n) => Ok(n),
            Some(n) => Err(self.err(
                &v.referenced,
                format!("`{key}` must be between {min} and {max}, found {n}"),
                None,
            )),
            None => Err(self.err(
                &v.referenced,
                format!("`{key}` must be an integer"),
                Some(format!("for example `{key}: {min}`")),
            )),
        }
    }

    /// A connection limit: an integer from 1 to [`MAX_CONNECTIONS_LIMIT`]; every
    /// rejection carries `hint`.
    fn connection_count(&self, v: &Val, key: &str, hint: &str) -> Result<usize, ConfigError> {
        match self.int(v, key, 1, MAX_CONNECTIONS_LIMIT) {
            Ok(n) => usize::try_from(n)
                .map_err(|_| self.err(&v.referenced, format!("`{key}` is too large"), None)),
            Err(ConfigError::Invalid {
                path,
                line,
                column,
                message,
                ..
            }) => Err(ConfigError::Invalid {
                path,
                line,
                column,
                message,
                hint: Some(hint.to_owned()),
            }),
            Err(e) => Err(e),
        }
    }

    fn bool(&self, v: &Val, key: &str) -> Result<bool, ConfigError> {
        let b = match &v.value {
            Scalar::Bool(b) => Some(*b),
            Scalar::Str(_) => match self.scalar_text(v, key)?.as_str() {
                "true" | "True" | "TRUE" => Some(true),
                "false" | "False" | "FALSE" => Some(false),
                _ => None,
            },
            _ => None,
        };
        b.ok_or_else(|| {
            self.err(
                &v.referenced,
                format!("`{key}` must be true or false"),
                None,
            )
        })
    }

    fn duration(&self, v: &Val, key: &str, allow_zero: bool) -> Result<Duration, ConfigError> {
        let text = match &v.value {
            Scalar::Float(_) | Scalar::Bool(_) => None,
            _ => Some(self.scalar_text(v, key)?),
        };
        let d = text.as_deref().map(parse_duration);
        match d {
            Some(Ok(d)) if d.is_zero() && !allow_zero => Err(self.err(
                &v.referenced,
                format!("`{key}` must be greater than zero"),
                Some(DURATION_HINT.to_owned()),
            )),
            Some(Ok(d)) => Ok(d),
            Some(Err(why)) => Err(self.err(
                &v.referenced,
                format!("`{key}`: {why}"),
                Some(DURATION_HINT.to_owned()),
            )),
            None => Err(self.err(
                &v.referenced,
                format!("`{key}` must be a duration"),
                Some(DURATION_HINT.to_owned()),
            )),
        }
    }

    fn size(&self, v: &Val, key: &str, min: u64, max: u64) -> Result<usize, ConfigError> {
        let text = match &v.value {
            Scalar::Float(_) | Scalar::Bool(_) => None,
            _ => Some(self.scalar_text(v, key)?),
        };
        match text.as_deref().map(parse_size) {
            Some(Ok(n)) if (min..=max).contains(&n) => usize::try_from(n)
                .map_err(|_| self.err(&v.referenced, format!("`{key}` is too large"), None)),
            Some(Ok(n)) => Err(self.err(
                &v.referenced,
                format!(
                    "`{key}` must be between {} and {}, found {}",
                    format_size(min),
                    format_size(max),
                    format_size(n)
                ),
                None,
            )),
            Some(Err(why)) => Err(self.err(
                &v.referenced,
                format!("`{key}`: {why}"),
                Some(SIZE_HINT.to_owned()),
            )),
            None => Err(self.err(
                &v.referenced,
                format!("`{key}` must be a size"),
                Some(SIZE_HINT.to_owned()),
            )),
        }
    }

    /// One of `choices`, case-insensitively.
    fn choice<T: Copy>(&self, v: &Str, key: &str, choices: &[(&str, T)]) -> Result<T, ConfigError> {
        let text = self.string(v, key)?;
        choices
            .iter()
            .find(|(name, _)| name.eq_ignore_ascii_case(&text))
            .map(|(_, t)| *t)
            .ok_or_else(|| {
                let names: Vec<&str> = choices.iter().map(|(n, _)| *n).collect();
                self.err(
                    &v.referenced,
                    format!("`{key}`: unknown value {:?}", sanitize(&text)),
                    Some(format!("one of: {}", names.join(", "))),
                )
            })
    }

    fn socket_addr(&self, v: &Str, key: &str) -> Result<SocketAddr, ConfigError> {
        let text = self.string(v, key)?;
        text.parse().map_err(|_| {
            self.err(
                &v.referenced,
                format!(
                    "`{key}`: {:?} is not an IP address and port",
                    sanitize(&text)
                ),
                Some(
                    "for example 127.0.0.1:8080, 0.0.0.0:8080 or [::1]:8080 (host names are \
                     not accepted here)"
                        .to_owned(),
                ),
            )
        })
    }

    /// A file path; relative paths are taken relative to the config file's directory,
    /// so that the config works whatever the working directory of the process is.
    fn file_path(&self, v: &Str, key: &str) -> Result<PathBuf, ConfigError> {
        let text = self.string(v, key)?;
        if text.is_empty() {
            return Err(self.err(&v.referenced, format!("`{key}` must not be empty"), None));
        }
        let p = PathBuf::from(text);
        Ok(match self.path.parent() {
            Some(dir) if p.is_relative() => dir.join(p),
            _ => p,
        })
    }

    // ---- building ------------------------------------------------------------------

    fn build(&self, raw: RawConfig) -> Result<Config, ConfigError> {
        let listen = match &raw.listen {
            Some(v) => self.socket_addr(v, "listen")?,
            None => SocketAddr::from(([127, 0, 0, 1], 8080)),
        };

        let tls = match &raw.tls {
            None => None,
            Some(t) => match (&t.value.cert, &t.value.key) {
                (None, None) => None,
                (Some(c), Some(k)) => Some(TlsConfig {
                    cert: self.file_path(c, "tls.cert")?,
                    key: self.file_path(k, "tls.key")?,
                }),
                (Some(_), None) | (None, Some(_)) => {
                    return Err(self.err(
                        &t.referenced,
                        "`tls` needs both `cert` and `key`",
                        Some("give both PEM files, or remove the `tls` section".to_owned()),
                    ));
                }
            },
        };

        let Some(up) = &raw.upstream else {
            return Err(self.err(
                &file_start(),
                "missing required key `upstream`",
                Some("add the address of the app, e.g. `upstream: http://127.0.0.1:8000`".into()),
            ));
        };
        let upstream_text = self.string(up, "upstream")?;
        let upstream = parse_upstream(&upstream_text)
            .map_err(|(m, h)| self.err(&up.referenced, format!("`upstream`: {m}"), Some(h)))?;
        let is_https = matches!(upstream, Upstream::Tcp { https: true, .. });

        let upstream_tls = match &raw.upstream_tls {
            Some(t) if !is_https && t.value.ca.is_some() => {
                return Err(self.err(
                    &t.referenced,
                    "`upstream_tls` applies only to an `https://` upstream",
                    Some("remove `upstream_tls`, or use `upstream: https://...`".to_owned()),
                ));
            }
            Some(t) if is_https => Some(UpstreamTls {
                ca: t
                    .value
                    .ca
                    .as_ref()
                    .map(|c| self.file_path(c, "upstream_tls.ca"))
                    .transpose()?,
            }),
            _ if is_https => Some(UpstreamTls { ca: None }),
            _ => None,
        };

        let secrets = self.secrets(&raw.secrets)?;
        let store = self.store(raw.store.as_ref())?;
        let session = self.session(raw.session.as_ref())?;
        let cookies = self.cookies(raw.cookies.as_ref())?;
        let headers = self.headers(raw.headers.as_ref())?;

        let mut bypass = Vec::new();
        for v in raw.bypass.iter().flat_map(|b| b.value.iter()) {
            let p = self.string(v, "bypass")?;
            if !p.starts_with('/') || p.chars().any(|c| c.is_control() || c.is_whitespace()) {
                return Err(self.err(
                    &v.referenced,
                    format!("`bypass`: {:?} is not a path prefix", sanitize(&p)),
                    Some("each entry starts with `/`, e.g. `/static/`".to_owned()),
                ));
            }
            bypass.push(p);
        }

        let mut trusted_proxies = Vec::new();
        for v in raw.trusted_proxies.iter().flat_map(|b| b.value.iter()) {
            let text = self.string(v, "trusted_proxies")?;
            let net = text.parse::<IpNet>().map_err(|why| {
                self.err(
                    &v.referenced,
                    format!("`trusted_proxies`: {}", sanitize(&why)),
                    Some("for example 10.0.0.0/8, 192.168.1.10 or fd00::/8".to_owned()),
                )
            })?;
            trusted_proxies.push(net);
        }

        let timeouts = self.timeouts(raw.timeouts.as_ref())?;

        let mut limits = Limits {
            max_header_size: 32 * 1024,
            max_connections: 10_000,
            max_connections_per_ip: Some(1024),
        };
        if let Some(l) = raw.limits.as_ref().map(|l| &l.value) {
            if let Some(v) = &l.max_header_size {
                // hyper refuses a read buffer below 8 KiB.
                limits.max_header_size =
                    self.size(v, "limits.max_header_size", 8 * 1024, 16 * 1024 * 1024)?;
            }
            if let Some(v) = &l.max_connections {
                limits.max_connections =
                    self.connection_count(v, "limits.max_connections", MAX_CONNECTIONS_HINT)?;
            }
            match &l.max_connections_per_ip {
                Nullable::Absent => {}
                Nullable::Null => limits.max_connections_per_ip = None,
                Nullable::Value(v) => {
                    limits.max_connections_per_ip = Some(self.connection_count(
                        v,
                        "limits.max_connections_per_ip",
                        MAX_CONNECTIONS_PER_IP_HINT,
                    )?);
                }
            }
        }

        let admin_listen = match raw.admin.as_ref().map(|a| &a.value.listen) {
            None | Some(Nullable::Absent) => {
                let default = SocketAddr::from(([127, 0, 0, 1], 9090));
                if let Some(v) = &raw.listen
                    && listen == default
                {
                    return Err(self.err(
                        &v.referenced,
                        "`listen` is the default address of `admin.listen` (127.0.0.1:9090)",
                        Some(
                            "choose another port, or move the admin listener with `admin.listen`"
                                .into(),
                        ),
                    ));
                }
                Some(default)
            }
            Some(Nullable::Null) => None,
            Some(Nullable::Value(v)) => {
                let addr = self.socket_addr(v, "admin.listen")?;
                if addr == listen && addr.port() != 0 {
                    return Err(self.err(
                        &v.referenced,
                        "`admin.listen` is the same address as `listen`",
                        Some(
                            "give the admin listener its own port, or `null` to disable it".into(),
                        ),
                    ));
                }
                Some(addr)
            }
        };

        let log = self.log(raw.log.as_ref())?;

        Ok(Config {
            path: self.path.to_path_buf(),
            listen,
            tls,
            upstream,
            upstream_tls,
            secrets,
            store,
            session,
            cookies,
            headers,
            bypass,
            trusted_proxies,
            timeouts,
            limits,
            admin: AdminConfig {
                listen: admin_listen,
            },
            log,
        })
    }

    fn secrets(&self, raw: &Option<Spanned<Vec<Str>>>) -> Result<Vec<Secret>, ConfigError> {
        let list = match raw {
            None => {
                return Err(self.err(
                    &file_start(),
                    "missing required key `secrets`",
                    Some(GEN_SECRET_HINT.to_owned()),
                ));
            }
            Some(l) if l.value.is_empty() => {
                return Err(self.err(
                    &l.referenced,
                    "`secrets` needs at least one secret",
                    Some(GEN_SECRET_HINT.to_owned()),
                ));
            }
            Some(l) => l,
        };
        let mut out = Vec::with_capacity(list.value.len());
        for (i, v) in list.value.iter().enumerate() {
            let s = self.string(v, "secrets")?;
            if s.len() < 32 {
                // The length is not a useful leak; the value itself is never shown.
                return Err(self.err(
                    &v.referenced,
                    format!(
                        "`secrets[{i}]` is {} bytes long; each secret needs at least 32",
                        s.len()
                    ),
                    Some(GEN_SECRET_HINT.to_owned()),
                ));
            }
            out.push(Secret(s));
        }
        Ok(out)
    }

    fn store(&self, raw: Option<&Spanned<RawStore>>) -> Result<StoreConfig, ConfigError> {
        let mut store = StoreConfig {
            engine: Engine::Memory,
            storage: StorageConfig {
                url: None,
                host: "127.0.0.1".to_owned(),
                port: 6379,
                username: None,
                password: None,
                db_sessions: 0,
                db_notifications: 1,
                max_connections: 16,
                tls: false,
                servers: vec!["127.0.0.1:11211".to_owned()],
                max_entries: 100_000,
            },
            key_prefix: "session:".to_owned(),
            timeout: Duration::from_millis(500),
            on_error: OnError::Reject,
        };
        let Some(raw) = raw.map(|r| &r.value) else {
            return Ok(store);
        };
        if let Some(v) = &raw.engine {
            store.engine = self.choice(
                v,
                "store.engine",
                &[
                    ("memory", Engine::Memory),
                    ("redis", Engine::Redis),
                    ("memcached", Engine::Memcached),
                ],
            )?;
        }
        if store.engine == Engine::Redis {
            // Redis connections are multiplexed: each carries every concurrent request,
            // and fewer connections batch more commands per write (issue 5 measured
            // 16 against 1 and 2). Two keep one working while the other reconnects.
            store.storage.max_connections = REDIS_DEFAULT_CONNECTIONS;
        }
        if let Some(v) = &raw.key_prefix {
            let p = self.string(v, "store.key_prefix")?;
            let ok = !p.is_empty()
                && p.len() <= 64
                && p.bytes()
                    .all(|b| b.is_ascii_graphic() && b != b'{' && b != b'}');
            if !ok {
                return Err(self.err(
                    &v.referenced,
                    format!(
                        "`store.key_prefix`: {:?} is not a valid prefix",
                        sanitize(&p)
                    ),
                    Some(
                        "use 1 to 64 printable ASCII characters without spaces, `{` or `}` \
                         (braces would break the Redis cluster hash tag of the key layout)"
                            .to_owned(),
                    ),
                ));
            }
            store.key_prefix = p;
        }
        if let Some(v) = &raw.timeout {
            store.timeout = self.duration(v, "store.timeout", false)?;
        }
        if let Some(v) = &raw.on_error {
            store.on_error = self.choice(
                v,
                "store.on_error",
                &[
                    ("reject", OnError::Reject),
                    ("anonymous", OnError::Anonymous),
                ],
            )?;
        }
        if let Some(s) = &raw.storage {
            self.storage(&s.value, store.engine, &mut store.storage)?;
        }
        Ok(store)
    }

    fn storage(
        &self,
        raw: &RawStorage,
        engine: Engine,
        out: &mut StorageConfig,
    ) -> Result<(), ConfigError> {
        // Which engine each present key belongs to, with where it was written.
        let present: [(&str, Engine, Option<&Location>); 10] = [
            (
                "url",
                Engine::Redis,
                raw.url.as_ref().map(|v| &v.referenced),
            ),
            (
                "host",
                Engine::Redis,
                raw.host.as_ref().map(|v| &v.referenced),
            ),
            (
                "port",
                Engine::Redis,
                raw.port.as_ref().map(|v| &v.referenced),
            ),
            (
                "username",
                Engine::Redis,
                raw.username.as_ref().map(|v| &v.referenced),
            ),
            (
                "password",
                Engine::Redis,
                raw.password.as_ref().map(|v| &v.referenced),
            ),
            (
                "db_sessions",
                Engine::Redis,
                raw.db_sessions.as_ref().map(|v| &v.referenced),
            ),
            (
                "db_notifications",
                Engine::Redis,
                raw.db_notifications.as_ref().map(|v| &v.referenced),
            ),
            (
                "tls",
                Engine::Redis,
                raw.tls.as_ref().map(|v| &v.referenced),
            ),
            (
                "servers",
                Engine::Memcached,
                raw.servers.as_ref().map(|v| &v.referenced),
            ),
            (
                "max_entries",
                Engine::Memory,
                raw.max_entries.as_ref().map(|v| &v.referenced),
            ),
        ];
        for (key, owner, at) in present {
            if let Some(at) = at
                && owner != engine
            {
                return Err(self.err(
                    at,
                    format!(
                        "`store.storage.{key}` is a {} setting, but `store.engine` is {}",
                        engine_name(owner),
                        engine_name(engine)
                    ),
                    Some(format!(
                        "remove it, or set `store.engine: {}`",
                        engine_name(owner)
                    )),
                ));
            }
        }
        // Both network engines pool connections (per Redis, per memcached server).
        if let Some(v) = &raw.max_connections
            && engine == Engine::Memory
        {
            return Err(self.err(
                &v.referenced,
                "`store.storage.max_connections` is a redis or memcached setting, but \
                 `store.engine` is memory"
                    .to_owned(),
                Some("remove it, or set `store.engine: redis` or `memcached`".to_owned()),
            ));
        }
        for (key, v) in [("sentinel", &raw.sentinel), ("cluster", &raw.cluster)] {
            if let Some(v) = v {
                return Err(self.err(
                    &v.referenced,
                    format!("`store.storage.{key}` is not supported yet (planned, SPEC §11)"),
                    Some("use a single Redis server through `url` or `host`/`port`".to_owned()),
                ));
            }
        }

        if let Some(u) = &raw.url {
            for (key, at) in [
                ("host", raw.host.as_ref().map(|v| &v.referenced)),
                ("port", raw.port.as_ref().map(|v| &v.referenced)),
                ("username", raw.username.as_ref().map(|v| &v.referenced)),
                ("password", raw.password.as_ref().map(|v| &v.referenced)),
            ] {
                if let Some(at) = at {
                    return Err(self.err(
                        at,
                        format!("`store.storage.{key}` cannot be combined with `url`"),
                        Some(format!(
                            "put the {key} into the URL (redis://user:password@host:port/db), \
                             or remove `url`"
                        )),
                    ));
                }
            }
            let url = self.string(u, "store.storage.url")?;
            // The URL may hold a password: messages describe it, never echo it.
            let info = parse_redis_url(&url).map_err(|why| {
                self.err(
                    &u.referenced,
                    format!("`store.storage.url`: {why}"),
                    Some(
                        "for example redis://127.0.0.1:6379/0, rediss://user:pass@host:6380 \
                         or redis+unix:///run/redis.sock"
                            .to_owned(),
                    ),
                )
            })?;
            if let Some(db) = info.db {
                if let Some(v) = &raw.db_sessions {
                    return Err(self.err(
                        &v.referenced,
                        "`store.storage.db_sessions` conflicts with the database number in `url`",
                        Some("keep only one of them".to_owned()),
                    ));
                }
                out.db_sessions = db;
            }
            if let Some(v) = &raw.tls
                && let Some(url_tls) = info.tls
                && self.bool(v, "store.storage.tls")? != url_tls
            {
                return Err(self.err(
                    &v.referenced,
                    "`store.storage.tls` contradicts the scheme of `url`",
                    Some("`rediss://` means TLS, `redis://` means plain TCP".to_owned()),
                ));
            }
            out.tls = info.tls.unwrap_or(false);
            out.url = Some(Secret(url));
        }
        if let Some(v) = &raw.host {
            let h = self.string(v, "store.storage.host")?;
            if h.is_empty() || h.chars().any(|c| c.is_control() || c.is_whitespace()) {
                return Err(self.err(
                    &v.referenced,
                    "`store.storage.host` must be a host name or IP address",
                    None,
                ));
            }
            out.host = h;
        }
        if let Some(v) = &raw.port {
            out.port = self.int(v, "store.storage.port", 1, 65_535)? as u16;
        }
        out.username = self.opt_string(&raw.username, "store.storage.username")?;
        if let Some(v) = &raw.password {
            out.password = Some(Secret(self.string(v, "store.storage.password")?));
        }
        if let Some(v) = &raw.db_sessions {
            out.db_sessions = self.int(v, "store.storage.db_sessions", 0, i32::MAX.into())? as i64;
        }
        if let Some(v) = &raw.db_notifications {
            out.db_notifications =
                self.int(v, "store.storage.db_notifications", 0, i32::MAX.into())? as i64;
        }
        if let Some(v) = &raw.max_connections {
            out.max_connections = self.int(v, "store.storage.max_connections", 1, 65_535)? as usize;
        }
        if let Some(v) = &raw.tls
            && raw.url.is_none()
        {
            out.tls = self.bool(v, "store.storage.tls")?;
        }
        if let Some(list) = &raw.servers {
            if list.value.is_empty() {
                return Err(self.err(
                    &list.referenced,
                    "`store.storage.servers` needs at least one server",
                    Some("for example servers: [\"127.0.0.1:11211\"]".to_owned()),
                ));
            }
            let mut servers = Vec::new();
            for v in &list.value {
                let s = self.string(v, "store.storage.servers")?;
                if !is_host_port(&s) {
                    return Err(self.err(
                        &v.referenced,
                        format!(
                            "`store.storage.servers`: {:?} is not host:port",
                            sanitize(&s)
                        ),
                        Some("for example 10.0.0.5:11211".to_owned()),
                    ));
                }
                servers.push(s);
            }
            out.servers = servers;
        }
        if let Some(v) = &raw.max_entries {
            out.max_entries =
                self.int(v, "store.storage.max_entries", 1, u32::MAX.into())? as usize;
        }
        Ok(())
    }

    fn session(&self, raw: Option<&Spanned<RawSession>>) -> Result<SessionConfig, ConfigError> {
        let mut s = SessionConfig {
            ttl: Duration::from_secs(86_400),
            absolute_ttl: Duration::from_secs(30 * 86_400),
            max_size: 8 * 1024,
        };
        let Some(raw) = raw.map(|r| &r.value) else {
            return Ok(s);
        };
        if let Some(v) = &raw.ttl {
            s.ttl = self.duration(v, "session.ttl", false)?;
        }
        if let Some(v) = &raw.absolute_ttl {
            s.absolute_ttl = self.duration(v, "session.absolute_ttl", false)?;
        }
        if s.absolute_ttl < s.ttl {
            let at = raw
                .absolute_ttl
                .as_ref()
                .or(raw.ttl.as_ref())
                .map_or(Location::UNKNOWN, |v| v.referenced);
            return Err(self.err(
                &at,
                format!(
                    "`session.absolute_ttl` ({}) is shorter than `session.ttl` ({})",
                    format_duration(s.absolute_ttl),
                    format_duration(s.ttl)
                ),
                Some("the absolute lifetime must be at least the idle lifetime".to_owned()),
            ));
        }
        if let Some(v) = &raw.max_size {
            s.max_size = self.size(v, "session.max_size", 64, 1024 * 1024)?;
        }
        Ok(s)
    }

    fn cookies(&self, raw: Option<&Spanned<RawCookies>>) -> Result<CookieConfig, ConfigError> {
        let mut c = CookieConfig {
            name: "session".to_owned(),
            path: "/".to_owned(),
            domain: None,
            secure: true,
            http_only: true,
            same_site: SameSite::Lax,
            lifetime: None,
            rolling: false,
            forward: false,
        };
        let Some(section) = raw else {
            return Ok(c);
        };
        let raw = &section.value;
        if let Some(v) = &raw.name {
            let n = self.string(v, "cookies.name")?;
            if !is_token(&n) {
                return Err(self.err(
                    &v.referenced,
                    format!(
                        "`cookies.name`: {:?} is not a valid cookie name",
                        sanitize(&n)
                    ),
                    Some(
                        "use letters, digits and !#$%&'*+-.^_`|~ only (no spaces, `=`, `;`, \
                         quotes or brackets)"
                            .to_owned(),
                    ),
                ));
            }
            c.name = n;
        }
        if let Some(v) = &raw.path {
            let p = self.string(v, "cookies.path")?;
            if !p.starts_with('/') || p.chars().any(|ch| ch == ';' || !(' '..='~').contains(&ch)) {
                return Err(self.err(
                    &v.referenced,
                    format!(
                        "`cookies.path`: {:?} is not a valid cookie path",
                        sanitize(&p)
                    ),
                    Some("start with `/`; no `;`, control or non-ASCII characters".to_owned()),
                ));
            }
            c.path = p;
        }
        if let Some(v) = &raw.domain {
            let d = self.string(v, "cookies.domain")?;
            if !is_domain(&d) {
                return Err(self.err(
                    &v.referenced,
                    format!("`cookies.domain`: {:?} is not a domain name", sanitize(&d)),
                    Some("for example example.com (no scheme, port or path)".to_owned()),
                ));
            }
            c.domain = Some(d);
        }
        if let Some(v) = &raw.secure {
            c.secure = self.bool(v, "cookies.secure")?;
        }
        if let Some(v) = &raw.http_only {
            c.http_only = self.bool(v, "cookies.http_only")?;
        }
        if let Some(v) = &raw.same_site {
            c.same_site = self.choice(
                v,
                "cookies.same_site",
                &[
                    ("lax", SameSite::Lax),
                    ("strict", SameSite::Strict),
                    ("none", SameSite::None),
                ],
            )?;
            if c.same_site == SameSite::None && !c.secure {
                return Err(self.err(
                    &v.referenced,
                    "`cookies.same_site: none` requires `cookies.secure: true`",
                    Some("browsers drop SameSite=None cookies that are not Secure".to_owned()),
                ));
            }
        }
        match (&raw.expires_days, &raw.max_age) {
            (Some(_), Some(m)) => {
                return Err(self.err(
                    &m.referenced,
                    "`cookies.expires_days` and `cookies.max_age` are alternatives",
                    Some("keep only one of them".to_owned()),
                ));
            }
            (Some(v), None) => {
                let days = self.int(v, "cookies.expires_days", 1, 3650)?;
                c.lifetime = Some(Duration::from_secs(days as u64 * 86_400));
            }
            (None, Some(v)) => c.lifetime = Some(self.duration(v, "cookies.max_age", false)?),
            (None, None) => {}
        }
        if let Some(v) = &raw.rolling {
            c.rolling = self.bool(v, "cookies.rolling")?;
        }
        if let Some(v) = &raw.forward {
            c.forward = self.bool(v, "cookies.forward")?;
        }

        // Cookie prefixes (RFC 6265bis §4.1.3): browsers reject a prefixed cookie that
        // breaks the rules, so the sidecar would silently never get its session back.
        let lower = c.name.to_ascii_lowercase();
        let at = raw
            .name
            .as_ref()
            .map_or(section.referenced, |v| v.referenced);
        if lower.starts_with("__host-") && (!c.secure || c.path != "/" || c.domain.is_some()) {
            return Err(self.err(
                &at,
                "a `__Host-` cookie requires `secure: true`, `path: /` and no `domain`",
                Some("fix those settings, or choose a name without the prefix".to_owned()),
            ));
        }
        if lower.starts_with("__secure-") && !c.secure {
            return Err(self.err(
                &at,
                "a `__Secure-` cookie requires `secure: true`",
                Some("set `cookies.secure: true`, or choose a name without the prefix".into()),
            ));
        }
        Ok(c)
    }

    fn headers(&self, raw: Option<&Spanned<RawHeaders>>) -> Result<HeadersConfig, ConfigError> {
        let mut h = HeadersConfig {
            prefix: "X-Session".to_owned(),
            expose_id: false,
        };
        let Some(raw) = raw.map(|r| &r.value) else {
            return Ok(h);
        };
        if let Some(v) = &raw.prefix {
            let p = self.string(v, "headers.prefix")?;
            if !is_token(&p) || p.ends_with('-') {
                return Err(self.err(
                    &v.referenced,
                    format!(
                        "`headers.prefix`: {:?} is not a header-name prefix",
                        sanitize(&p)
                    ),
                    Some(
                        "use a header-name token without a trailing `-`, e.g. X-Session".to_owned(),
                    ),
                ));
            }
            h.prefix = p;
        }
        if let Some(v) = &raw.expose_id {
            h.expose_id = self.bool(v, "headers.expose_id")?;
        }
        Ok(h)
    }

    fn timeouts(&self, raw: Option<&Spanned<RawTimeouts>>) -> Result<Timeouts, ConfigError> {
        let mut t = Timeouts {
            header_read: Duration::from_secs(10),
            upstream_connect: Duration::from_secs(5),
            upstream_response: Duration::from_secs(60),
            idle: Duration::from_secs(60),
            shutdown: Duration::from_secs(30),
        };
        let Some(raw) = raw.map(|r| &r.value) else {
            return Ok(t);
        };
        for (v, key, slot) in [
            (&raw.header_read, "timeouts.header_read", &mut t.header_read),
            (
                &raw.upstream_connect,
                "timeouts.upstream_connect",
                &mut t.upstream_connect,
            ),
            (
                &raw.upstream_response,
                "timeouts.upstream_response",
                &mut t.upstream_response,
            ),
            (&raw.idle, "timeouts.idle", &mut t.idle),
        ] {
            if let Some(v) = v {
                *slot = self.duration(v, key, false)?;
            }
        }
        // Zero is meaningful here: stop at once without draining.
        if let Some(v) = &raw.shutdown {
            t.shutdown = self.duration(v, "timeouts.shutdown", true)?;
        }
        Ok(t)
    }

    fn log(&self, raw: Option<&Spanned<RawLog>>) -> Result<LogConfig, ConfigError> {
        let mut l = LogConfig {
            format: LogFormat::Text,
            level: "info".to_owned(),
        };
        let Some(raw) = raw.map(|r| &r.value) else {
            return Ok(l);
        };
        if let Some(v) = &raw.format {
            l.format = self.choice(
                v,
                "log.format",
                &[("text", LogFormat::Text), ("json", LogFormat::Json)],
            )?;
        }
        if let Some(v) = &raw.level {
            let level = self.string(v, "log.level")?;
            if level.trim().is_empty() || tracing_subscriber::EnvFilter::try_new(&level).is_err() {
                return Err(self.err(
                    &v.referenced,
                    format!("`log.level`: {:?} is not a log filter", sanitize(&level)),
                    Some(
                        "one of error, warn, info, debug, trace, or directives like \
                         `info,session_sidecar=debug`"
                            .to_owned(),
                    ),
                ));
            }
            l.level = level;
        }
        Ok(l)
    }
}

fn engine_name(e: Engine) -> &'static str {
    match e {
        Engine::Memory => "memory",
        Engine::Redis => "redis",
        Engine::Memcached => "memcached",
    }
}

fn unknown_key(field: &str, expected: &[&str]) -> (String, Option<String>) {
    let mut sorted: Vec<&str> = expected.to_vec();
    sorted.sort_unstable();
    let section = SECTIONS.iter().find(|(_, keys)| {
        let mut k: Vec<&str> = keys.to_vec();
        k.sort_unstable();
        k == sorted
    });
    let (name, keys) = match section {
        Some((name, keys)) => (*name, *keys),
        None => ("", expected),
    };
    let message = if name.is_empty() {
        format!("unknown top-level key `{field}`")
    } else {
        format!("unknown key `{field}` in `{name}`")
    };
    let mut hint = String::new();
    // A key that exists verbatim in another section was most likely misplaced; that
    // beats a spelling suggestion (`ttl` at the top level is `session.ttl`, not `tls`).
    // Some keys live in several sections (`max_connections`); name them all.
    let others: Vec<&str> = SECTIONS
        .iter()
        .filter(|(s, keys)| *s != name && keys.contains(&field))
        .map(|(s, _)| *s)
        .collect();
    if let [other] = others.as_slice()
        && other.is_empty()
    {
        hint.push_str(&format!("`{field}` is a top-level key; "));
    } else if !others.is_empty() {
        let paths: Vec<String> = others
            .iter()
            .map(|s| format!("`{}`", key_path(s, field)))
            .collect();
        hint.push_str(&format!("did you mean {}? ", paths.join(" or ")));
    } else if let Some((_, best)) = keys
        .iter()
        .map(|k| (edit_distance(field, k), *k))
        .filter(|(d, k)| *d <= 2 && *d < k.len())
        .min()
    {
        hint.push_str(&format!("did you mean `{best}`? "));
    }
    let where_ = if name.is_empty() {
        "at the top level".to_owned()
    } else {
        format!("in `{name}`")
    };
    hint.push_str(&format!("valid keys {where_}: {}", keys.join(", ")));
    (message, Some(hint))
}

/// Levenshtein distance, for "did you mean" (key names are short).
fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut prev: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut cur = vec![i + 1; b.len() + 1];
        for (j, cb) in b.iter().enumerate() {
            let cost = usize::from(ca != *cb);
            cur[j + 1] = (prev[j] + cost).min(prev[j + 1] + 1).min(cur[j] + 1);
        }
        prev = cur;
    }
    prev[b.len()]
}

// ---------------------------------------------------------------------------------
// `${VAR}` expansion
// ---------------------------------------------------------------------------------

#[derive(Debug, PartialEq, Eq)]
enum ExpandError {
    Unset(String),
    Invalid,
}

/// Replaces `${NAME}` with the variable's value and `$${` with a literal `${`. Other
/// `$` are literal. Values are inserted verbatim (not expanded again), so a secret may
/// contain anything.
fn expand_vars(input: &str, env: EnvLookup<'_>) -> Result<String, ExpandError> {
    let mut out = String::with_capacity(input.len());
    let mut rest = input;
    while let Some(i) = rest.find('$') {
        out.push_str(&rest[..i]);
        let tail = &rest[i..];
        if let Some(after) = tail.strip_prefix("$${") {
            out.push_str("${");
            rest = after;
        } else if let Some(after) = tail.strip_prefix("${") {
            let end = after.find('}').ok_or(ExpandError::Invalid)?;
            let name = &after[..end];
            let valid = name
                .chars()
                .next()
                .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
                && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
            if !valid {
                return Err(ExpandError::Invalid);
            }
            let value = env(name).ok_or_else(|| ExpandError::Unset(name.to_owned()))?;
            out.push_str(&value);
            rest = &after[end + 1..];
        } else {
            out.push('$');
            rest = &tail[1..];
        }
    }
    out.push_str(rest);
    Ok(out)
}

/// The inverse of [`expand_vars`] for a literal: `${` → `$${`.
fn escape_vars(s: &str) -> String {
    s.replace("${", "$${")
}

// ---------------------------------------------------------------------------------
// Value syntax
// ---------------------------------------------------------------------------------

/// `500ms`, `10s`, `5m`, `2h`, `1d`, or bare seconds.
fn parse_duration(s: &str) -> Result<Duration, String> {
    let digits = s.bytes().take_while(u8::is_ascii_digit).count();
    let (num, unit) = s.split_at(digits);
    let bad = || format!("{:?} is not a duration", sanitize(s));
    if num.is_empty() {
        return Err(bad());
    }
    let n: u64 = num.parse().map_err(|_| bad())?;
    let ms_per_unit: u64 = match unit {
        "ms" => 1,
        "" | "s" => 1_000,
        "m" => 60_000,
        "h" => 3_600_000,
        "d" => 86_400_000,
        _ => return Err(bad()),
    };
    let d = n
        .checked_mul(ms_per_unit)
        .map(Duration::from_millis)
        .filter(|d| *d <= MAX_DURATION)
        .ok_or_else(|| format!("{:?} is longer than the maximum of 3650d", sanitize(s)))?;
    Ok(d)
}

/// `512B`, `8KB`, `8KiB`, `1MB`, `1MiB`, `1GB`, `1GiB`, or bare bytes.
fn parse_size(s: &str) -> Result<u64, String> {
    let digits = s.bytes().take_while(u8::is_ascii_digit).count();
    let (num, unit) = s.split_at(digits);
    let bad = || format!("{:?} is not a size", sanitize(s));
    if num.is_empty() {
        return Err(bad());
    }
    let n: u64 = num.parse().map_err(|_| bad())?;
    let mult: u64 = match unit.to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "kb" => 1_000,
        "kib" => 1 << 10,
        "mb" => 1_000_000,
        "mib" => 1 << 20,
        "gb" => 1_000_000_000,
        "gib" => 1 << 30,
        _ => return Err(bad()),
    };
    n.checked_mul(mult)
        .ok_or_else(|| format!("{:?} is too large", sanitize(s)))
}

/// The shortest exact spelling in the config syntax.
fn format_duration(d: Duration) -> String {
    let ms = d.as_millis();
    if ms == 0 {
        return "0s".to_owned();
    }
    for (unit, per) in [
        ("d", 86_400_000),
        ("h", 3_600_000),
        ("m", 60_000),
        ("s", 1_000),
    ] {
        if ms.is_multiple_of(per) {
            return format!("{}{unit}", ms / per);
        }
    }
    format!("{ms}ms")
}

fn format_size(n: u64) -> String {
    if n > 0 && n.is_multiple_of(1 << 20) {
        format!("{}MiB", n >> 20)
    } else if n > 0 && n.is_multiple_of(1 << 10) {
        format!("{}KiB", n >> 10)
    } else {
        format!("{n}B")
    }
}

/// RFC 9110 `token` (= RFC 6265 cookie-name).
fn is_token(s: &str) -> bool {
    !s.is_empty()
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b))
}

fn is_domain(s: &str) -> bool {
    let s = s.strip_prefix('.').unwrap_or(s);
    !s.is_empty()
        && s.len() <= 253
        && s.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && !label.starts_with('-')
                && !label.ends_with('-')
                && label
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-')
        })
}

fn is_host(s: &str) -> bool {
    if let Some(inner) = s.strip_prefix('[').and_then(|r| r.strip_suffix(']')) {
        return inner.parse::<Ipv6Addr>().is_ok();
    }
    !s.is_empty()
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'.' || b == b'-' || b == b'_')
}

/// Splits `host[:port]` (IPv6 in brackets).
fn split_host_port(s: &str) -> Option<(&str, Option<&str>)> {
    if s.starts_with('[') {
        let end = s.find(']')?;
        let (host, rest) = s.split_at(end + 1);
        match rest {
            "" => Some((host, None)),
            _ => rest.strip_prefix(':').map(|p| (host, Some(p))),
        }
    } else {
        match s.split_once(':') {
            Some((h, p)) if !p.contains(':') => Some((h, Some(p))),
            Some(_) => None,
            None => Some((s, None)),
        }
    }
}

fn parse_port(p: &str) -> Option<u16> {
    if p.is_empty() || !p.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    p.parse::<u16>().ok().filter(|p| *p != 0)
}

fn is_host_port(s: &str) -> bool {
    matches!(split_host_port(s), Some((h, Some(p))) if is_host(h) && parse_port(p).is_some())
}

fn strip_prefix_ci<'a>(s: &'a str, prefix: &str) -> Option<&'a str> {
    let head = s.get(..prefix.len())?;
    head.eq_ignore_ascii_case(prefix)
        .then(|| &s[prefix.len()..])
}

/// `http://host[:port]`, `https://host[:port]` (a single trailing `/` allowed) or
/// `unix:/absolute/path`. Error: (message, hint).
fn parse_upstream(s: &str) -> Result<Upstream, (String, String)> {
    const FORMS: &str = "write http://host:port, https://host:port or unix:/absolute/path/to.sock";
    if let Some(path) = strip_prefix_ci(s, "unix:") {
        if path.starts_with("//") || !path.starts_with('/') || path.chars().any(char::is_control) {
            return Err((
                "a unix socket upstream needs an absolute path".into(),
                "write unix:/run/app.sock (one slash after `unix:`)".into(),
            ));
        }
        return Ok(Upstream::Unix(PathBuf::from(path)));
    }
    let (https, rest) = if let Some(r) = strip_prefix_ci(s, "http://") {
        (false, r)
    } else if let Some(r) = strip_prefix_ci(s, "https://") {
        (true, r)
    } else {
        return Err((
            format!("{:?} has an unsupported scheme", sanitize(s)),
            FORMS.into(),
        ));
    };
    let authority = rest.strip_suffix('/').unwrap_or(rest);
    if authority.contains(['/', '?', '#']) {
        return Err((
            "the upstream must not have a path, query or fragment".into(),
            "request paths are forwarded unchanged; give only scheme, host and port".into(),
        ));
    }
    if authority.contains('@') {
        return Err((
            "credentials in the upstream URL are not supported".into(),
            FORMS.into(),
        ));
    }
    let bad = || {
        (
            format!("{:?} is not a valid host[:port]", sanitize(s)),
            FORMS.to_owned(),
        )
    };
    let (host, port) = split_host_port(authority).ok_or_else(bad)?;
    if !is_host(host) {
        return Err(bad());
    }
    let port = match port {
        None => {
            if https {
                443
            } else {
                80
            }
        }
        Some(p) => parse_port(p).ok_or_else(bad)?,
    };
    Ok(Upstream::Tcp {
        https,
        authority: format!("{host}:{port}"),
    })
}

struct RedisUrlInfo {
    /// `Some(true)` for `rediss://`; `None` for unix sockets (no TLS setting applies).
    tls: Option<bool>,
    db: Option<i64>,
}

/// A light check of a Redis URL (the store parses it for real). The error text never
/// contains the URL: it may hold a password.
fn parse_redis_url(s: &str) -> Result<RedisUrlInfo, String> {
    let (scheme, rest) = s
        .split_once("://")
        .ok_or("not a URL (expected redis://...)")?;
    match scheme.to_ascii_lowercase().as_str() {
        "redis+unix" | "unix" => {
            if !rest.starts_with('/') {
                return Err("a unix socket URL needs an absolute path".into());
            }
            return Ok(RedisUrlInfo {
                tls: None,
                db: None,
            });
        }
        "redis" | "rediss" => {}
        _ => return Err("unsupported scheme (use redis://, rediss:// or redis+unix://)".into()),
    }
    let tls = Some(scheme.eq_ignore_ascii_case("rediss"));
    let end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let (authority, tail) = rest.split_at(end);
    let hostport = authority.rsplit_once('@').map_or(authority, |(_, h)| h);
    match split_host_port(hostport) {
        Some((h, p)) if is_host(h) && p.is_none_or(|p| parse_port(p).is_some()) => {}
        _ => return Err("the host or port is not valid".into()),
    }
    let path = tail.split(['?', '#']).next().unwrap_or("");
    let db = match path.trim_start_matches('/') {
        "" => None,
        n => Some(
            n.parse::<i64>()
                .ok()
                .filter(|d| (0..=i64::from(i32::MAX)).contains(d))
                .ok_or("the path must be a database number, e.g. /0")?,
        ),
    };
    Ok(RedisUrlInfo { tls, db })
}

/// The URL with its password (userinfo, or `pass=`/`password=` query values) replaced.
fn redact_url(s: &str) -> String {
    let Some((scheme, rest)) = s.split_once("://") else {
        return "<redacted>".to_owned();
    };
    let end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let (authority, tail) = rest.split_at(end);
    let authority = match authority.rsplit_once('@') {
        Some((user, host)) => match user.split_once(':') {
            Some((name, _)) => format!("{name}:<redacted>@{host}"),
            // A lone userinfo may be a password (redis://secret@host): hide it too.
            None => format!("<redacted>@{host}"),
        },
        None => authority.to_owned(),
    };
    let tail = match tail.split_once('?') {
        Some((path, query)) => {
            let q: Vec<String> = query
                .split('&')
                .map(|kv| match kv.split_once('=') {
                    Some((k, _))
                        if k.eq_ignore_ascii_case("pass") || k.eq_ignore_ascii_case("password") =>
                    {
                        format!("{k}=<redacted>")
                    }
                    _ => kv.to_owned(),
                })
                .collect();
            format!("{path}?{}", q.join("&"))
        }
        None => tail.to_owned(),
    };
    format!("{scheme}://{authority}{tail}")
}

// ---------------------------------------------------------------------------------
// Redacted printout
// ---------------------------------------------------------------------------------

const REDACTED: &str = "<redacted>";

#[derive(Serialize)]
struct View {
    listen: String,
    tls: Option<ViewTls>,
    upstream: String,
    upstream_tls: Option<ViewUpstreamTls>,
    secrets: Vec<&'static str>,
    store: ViewStore,
    session: ViewSession,
    cookies: ViewCookies,
    headers: ViewHeaders,
    bypass: Vec<String>,
    trusted_proxies: Vec<String>,
    timeouts: ViewTimeouts,
    limits: ViewLimits,
    admin: ViewAdmin,
    log: ViewLog,
}

#[derive(Serialize)]
struct ViewTls {
    cert: String,
    key: String,
}

#[derive(Serialize)]
struct ViewUpstreamTls {
    ca: Option<String>,
}

#[derive(Serialize)]
struct ViewStore {
    engine: &'static str,
    /// Only the chosen engine's settings: the others would be rejected on read-back.
    storage: ViewStorage,
    key_prefix: String,
    timeout: String,
    on_error: &'static str,
}

#[derive(Serialize, Default)]
struct ViewStorage {
    #[serde(skip_serializing_if = "Option::is_none")]
    url: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    host: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    port: Option<u16>,
    #[serde(skip_serializing_if = "Option::is_none")]
    username: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    password: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    db_sessions: Option<i64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    db_notifications: Option<i64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    max_connections: Option<usize>,
    #[serde(skip_serializing_if = "Option::is_none")]
    tls: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    servers: Option<Vec<String>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    max_entries: Option<usize>,
}

#[derive(Serialize)]
struct ViewSession {
    ttl: String,
    absolute_ttl: String,
    max_size: String,
}

#[derive(Serialize)]
struct ViewCookies {
    name: String,
    path: String,
    domain: Option<String>,
    secure: bool,
    http_only: bool,
    same_site: SameSite,
    /// `expires_days` is shown as its equivalent `max_age`.
    max_age: Option<String>,
    rolling: bool,
    forward: bool,
}

#[derive(Serialize)]
struct ViewHeaders {
    prefix: String,
    expose_id: bool,
}

#[derive(Serialize)]
struct ViewTimeouts {
    header_read: String,
    upstream_connect: String,
    upstream_response: String,
    idle: String,
    shutdown: String,
}

#[derive(Serialize)]
struct ViewLimits {
    max_header_size: String,
    max_connections: usize,
    /// `null` when there is no per-address cap.
    max_connections_per_ip: Option<usize>,
}

#[derive(Serialize)]
struct ViewAdmin {
    listen: Option<String>,
}

#[derive(Serialize)]
struct ViewLog {
    format: &'static str,
    level: String,
}

fn path_text(p: &Path) -> String {
    escape_vars(&p.to_string_lossy())
}

impl Config {
    /// The effective configuration as YAML, every key present with its default filled
    /// in, secrets (and the password of a Redis URL) replaced by `<redacted>`. Apart
    /// from the secrets, [`Config::from_yaml_str`] reads it back to the same config
    /// (literal `${` in values is written as `$${`).
    pub fn redacted_yaml(&self) -> String {
        let s = &self.store.storage;
        let storage = match self.store.engine {
            Engine::Memory => ViewStorage {
                max_entries: Some(s.max_entries),
                ..ViewStorage::default()
            },
            Engine::Memcached => ViewStorage {
                servers: Some(s.servers.iter().map(|v| escape_vars(v)).collect()),
                max_connections: Some(s.max_connections),
                ..ViewStorage::default()
            },
            Engine::Redis => {
                let url_db = s
                    .url
                    .as_ref()
                    .and_then(|u| parse_redis_url(&u.0).ok())
                    .and_then(|i| i.db);
                let url_tls = s
                    .url
                    .as_ref()
                    .and_then(|u| parse_redis_url(&u.0).ok())
                    .and_then(|i| i.tls);
                let has_url = s.url.is_some();
                ViewStorage {
                    url: s.url.as_ref().map(|u| escape_vars(&redact_url(&u.0))),
                    host: (!has_url).then(|| escape_vars(&s.host)),
                    port: (!has_url).then_some(s.port),
                    username: if has_url {
                        None
                    } else {
                        s.username.as_deref().map(escape_vars)
                    },
                    password: (!has_url && s.password.is_some()).then_some(REDACTED),
                    // Written only when the URL does not already carry the number.
                    db_sessions: url_db.is_none().then_some(s.db_sessions),
                    db_notifications: Some(s.db_notifications),
                    max_connections: Some(s.max_connections),
                    // A unix-socket URL has no TLS setting to show.
                    tls: (!has_url || url_tls.is_some()).then_some(s.tls),
                    ..ViewStorage::default()
                }
            }
        };
        let view = View {
            listen: self.listen.to_string(),
            tls: self.tls.as_ref().map(|t| ViewTls {
                cert: path_text(&t.cert),
                key: path_text(&t.key),
            }),
            upstream: match &self.upstream {
                Upstream::Tcp { https, authority } => format!(
                    "{}://{}",
                    if *https { "https" } else { "http" },
                    escape_vars(authority)
                ),
                Upstream::Unix(p) => format!("unix:{}", path_text(p)),
            },
            upstream_tls: self.upstream_tls.as_ref().map(|t| ViewUpstreamTls {
                ca: t.ca.as_deref().map(path_text),
            }),
            secrets: self.secrets.iter().map(|_| REDACTED).collect(),
            store: ViewStore {
                engine: engine_name(self.store.engine),
                storage,
                key_prefix: escape_vars(&self.store.key_prefix),
                timeout: format_duration(self.store.timeout),
                on_error: match self.store.on_error {
                    OnError::Reject => "reject",
                    OnError::Anonymous => "anonymous",
                },
            },
            session: ViewSession {
                ttl: format_duration(self.session.ttl),
                absolute_ttl: format_duration(self.session.absolute_ttl),
                max_size: format_size(self.session.max_size as u64),
            },
            cookies: ViewCookies {
                name: escape_vars(&self.cookies.name),
                path: escape_vars(&self.cookies.path),
                domain: self.cookies.domain.clone(),
                secure: self.cookies.secure,
                http_only: self.cookies.http_only,
                same_site: self.cookies.same_site,
                max_age: self.cookies.lifetime.map(format_duration),
                rolling: self.cookies.rolling,
                forward: self.cookies.forward,
            },
            headers: ViewHeaders {
                prefix: escape_vars(&self.headers.prefix),
                expose_id: self.headers.expose_id,
            },
            bypass: self.bypass.iter().map(|b| escape_vars(b)).collect(),
            trusted_proxies: self.trusted_proxies.iter().map(IpNet::to_string).collect(),
            timeouts: ViewTimeouts {
                header_read: format_duration(self.timeouts.header_read),
                upstream_connect: format_duration(self.timeouts.upstream_connect),
                upstream_response: format_duration(self.timeouts.upstream_response),
                idle: format_duration(self.timeouts.idle),
                shutdown: format_duration(self.timeouts.shutdown),
            },
            limits: ViewLimits {
                max_header_size: format_size(self.limits.max_header_size as u64),
                max_connections: self.limits.max_connections,
                max_connections_per_ip: self.limits.max_connections_per_ip,
            },
            admin: ViewAdmin {
                listen: self.admin.listen.map(|a| a.to_string()),
            },
            log: ViewLog {
                format: match self.log.format {
                    LogFormat::Text => "text",
                    LogFormat::Json => "json",
                },
                level: escape_vars(&self.log.level),
            },
        };
        // Serializing plain strings, numbers and bools cannot fail; should the
        // serializer still refuse, say so in a YAML comment rather than panic.
        serde_saphyr::to_string(&view)
            .unwrap_or_else(|e| format!("# cannot render the configuration: {e}\n"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECRET_VALUE: &str = "0123456789abcdefghijklmnopqrstuvwxyzABCDEFG";

    fn env(name: &str) -> Option<String> {
        match name {
            "SESSION_SECRET" => Some(SECRET_VALUE.to_owned()),
            "OLD_SECRET" => Some("old-secret-old-secret-old-secret-0".to_owned()),
            "PORT" => Some("6380".to_owned()),
            "EMPTY" => Some(String::new()),
            "REDIS_PASSWORD" => Some("hunter2-redis-password".to_owned()),
            "TRICKY" => Some("a: b # c ${SESSION_SECRET} $${".to_owned()),
            _ => None,
        }
    }

    const BASE: &str = "upstream: http://127.0.0.1:8000\nsecrets: [\"${SESSION_SECRET}\"]\n";

    fn parse(yaml: &str) -> Result<Config, ConfigError> {
        Config::from_yaml_str_with_env(yaml, Path::new("conf/t.yaml"), &env)
    }

    fn ok(extra: &str) -> Config {
        match parse(&format!("{BASE}{extra}")) {
            Ok(c) => c,
            Err(e) => panic!("expected valid config, got:\n{e}"),
        }
    }

    fn err(extra: &str) -> ConfigError {
        parse(&format!("{BASE}{extra}")).expect_err("expected an error")
    }

    /// Asserts an error at `line:col` (lines counted in the whole document, BASE is
    /// 2 lines) whose message contains `needle`.
    fn assert_err(extra: &str, line: u64, col: u64, needle: &str) -> ConfigError {
        let e = err(extra);
        assert_eq!(e.position(), Some((line, col)), "position of: {e}");
        assert!(e.message().contains(needle), "{needle:?} not in: {e}");
        e
    }

    // ---- defaults ------------------------------------------------------------

    #[test]
    fn minimal_config_gets_every_default() {
        let c = ok("");
        assert_eq!(c.path, PathBuf::from("conf/t.yaml"));
        assert_eq!(c.listen, "127.0.0.1:8080".parse::<SocketAddr>().unwrap());
        assert!(c.tls.is_none());
        assert_eq!(
            c.upstream,
            Upstream::Tcp {
                https: false,
                authority: "127.0.0.1:8000".into()
            }
        );
        assert!(c.upstream_tls.is_none());
        assert_eq!(c.secrets, vec![Secret(SECRET_VALUE.into())]);
        assert_eq!(c.store.engine, Engine::Memory);
        let s = &c.store.storage;
        assert!(s.url.is_none());
        assert_eq!(s.host, "127.0.0.1");
        assert_eq!(s.port, 6379);
        assert!(s.username.is_none() && s.password.is_none());
        assert_eq!((s.db_sessions, s.db_notifications), (0, 1));
        assert_eq!(s.max_connections, 16);
        assert!(!s.tls);
        assert_eq!(s.servers, vec!["127.0.0.1:11211".to_owned()]);
        assert_eq!(s.max_entries, 100_000);
        assert_eq!(c.store.key_prefix, "session:");
        assert_eq!(c.store.timeout, Duration::from_millis(500));
        assert_eq!(c.store.on_error, OnError::Reject);
        assert_eq!(c.session.ttl, Duration::from_secs(86_400));
        assert_eq!(c.session.absolute_ttl, Duration::from_secs(30 * 86_400));
        assert_eq!(c.session.max_size, 8192);
        let k = &c.cookies;
        assert_eq!((k.name.as_str(), k.path.as_str()), ("session", "/"));
        assert!(k.domain.is_none());
        assert!(k.secure && k.http_only && !k.rolling && !k.forward);
        assert_eq!(k.same_site, SameSite::Lax);
        assert!(k.lifetime.is_none());
        assert_eq!(c.headers.prefix, "X-Session");
        assert!(!c.headers.expose_id);
        assert!(c.bypass.is_empty() && c.trusted_proxies.is_empty());
        let t = &c.timeouts;
        assert_eq!(t.header_read, Duration::from_secs(10));
        assert_eq!(t.upstream_connect, Duration::from_secs(5));
        assert_eq!(t.upstream_response, Duration::from_secs(60));
        assert_eq!(t.idle, Duration::from_secs(60));
        assert_eq!(t.shutdown, Duration::from_secs(30));
        assert_eq!(c.limits.max_header_size, 32 * 1024);
        assert_eq!(c.limits.max_connections, 10_000);
        assert_eq!(c.limits.max_connections_per_ip, Some(1024));
        assert_eq!(c.admin.listen, Some("127.0.0.1:9090".parse().unwrap()));
        assert_eq!(c.log.format, LogFormat::Text);
        assert_eq!(c.log.level, "info");
    }

    #[test]
    fn empty_sections_and_nulls_mean_defaults() {
        let c = ok("store:\nsession: {}\ncookies: {domain: null}\nlisten: ~\n");
        assert_eq!(c.store.engine, Engine::Memory);
        assert_eq!(c.listen.port(), 8080);
        assert!(c.cookies.domain.is_none());
    }

    #[test]
    fn sample_sidecar_yaml_is_valid() {
        let text = include_str!("../../sidecar.yaml");
        let c = Config::from_yaml_str_with_env(text, Path::new("sidecar.yaml"), &env)
            .unwrap_or_else(|e| panic!("sidecar.yaml:\n{e}"));
        assert_eq!(c.secrets, vec![Secret(SECRET_VALUE.into())]);
        assert_eq!(c.bypass, vec!["/static/", "/favicon.ico"]);
        // Without the variable it must fail, naming it.
        let e = Config::from_yaml_str_with_env(text, Path::new("sidecar.yaml"), &|_| None)
            .expect_err("needs SESSION_SECRET");
        assert!(e.message().contains("SESSION_SECRET"), "{e}");
    }

    // ---- errors: format and YAML-level problems -----------------------------------

    #[test]
    fn display_is_file_line_column_message_hint() {
        let e = err("session:\n  ttl: 5x\n");
        assert_eq!(
            e.to_string(),
            "conf/t.yaml:4:8: `session.ttl`: \"5x\" is not a duration\n  hint: durations are \
             written like 500ms, 10s, 5m, 2h, 1d (a bare integer means seconds)"
        );
    }

    #[test]
    fn unknown_key_at_a_nested_level() {
        let e = assert_err(
            "cookies:\n  name: sid\n  nmae: x\n",
            5,
            3,
            "unknown key `nmae` in `cookies`",
        );
        let hint = e.hint().unwrap_or_default();
        assert!(hint.contains("did you mean `name`?"), "{hint}");
        assert!(hint.contains("same_site"), "{hint}");
        let e = assert_err(
            "store:\n  storage:\n    max_entires: 5\n",
            5,
            5,
            "in `store.storage`",
        );
        assert!(e.hint().unwrap_or_default().contains("max_entries"));
        // A key written in the wrong section is pointed to its section.
        let e = assert_err("ttl: 5s\n", 3, 1, "unknown top-level key `ttl`");
        assert!(
            e.hint().unwrap_or_default().contains("`session.ttl`"),
            "{e}"
        );
    }

    /// `SECTIONS` must list exactly the fields of each raw struct (serde reports the
    /// struct's field list; a mismatch would mislabel the section).
    #[test]
    fn every_section_is_recognised_for_unknown_keys() {
        for (name, keys) in SECTIONS {
            let yaml = if name.is_empty() {
                "bogus_key: 1\n".to_owned()
            } else {
                let mut yaml = String::new();
                let parts: Vec<&str> = name.split('.').collect();
                for (depth, part) in parts.iter().enumerate() {
                    yaml.push_str(&format!("{}{part}:\n", "  ".repeat(depth)));
                }
                yaml.push_str(&format!("{}bogus_key: 1\n", "  ".repeat(parts.len())));
                yaml
            };
            let e = err(&yaml);
            let want = if name.is_empty() {
                "unknown top-level key `bogus_key`".to_owned()
            } else {
                format!("unknown key `bogus_key` in `{name}`")
            };
            assert_eq!(e.message(), want, "section {name:?}");
            assert!(e.hint().unwrap_or_default().contains(&keys.join(", ")));
        }
    }

    #[test]
    fn duplicate_keys_are_errors() {
        assert_err(
            "session:\n  ttl: 1h\n  ttl: 2h\n",
            5,
            3,
            "duplicate key `ttl`",
        );
        assert_err(
            "listen: 127.0.0.1:1\nlisten: 127.0.0.1:2\n",
            4,
            1,
            "duplicate",
        );
    }

    #[test]
    fn structural_errors_point_at_the_value() {
        let e = assert_err("session: 5\n", 3, 10, "expected a section");
        assert!(e.hint().is_some());
        assert_err("bypass: /static/\n", 3, 9, "expected a list");
        assert_err("listen: [a]\n", 3, 9, "single value");
        assert_err("session:\n  ttl: [1]\n", 4, 8, "found a list");
        assert_err("---\na: 1\n---\nb: 2\n", 3, 1, "");
        assert!(err("listen: !custom 1.2.3.4:5\n").message().contains("tag"));
    }

    #[test]
    fn alias_bombs_hit_the_budget() {
        // The only place a typed config lets a nested structure through unread is an
        // ignored value (`sentinel`), so the bomb sits there.
        let mut yaml = String::from("store:\n  storage:\n    sentinel:\n");
        yaml.push_str("      - &a0 [x, x, x, x, x, x, x, x, x, x]\n");
        for i in 1..9 {
            let p = i - 1;
            yaml.push_str(&format!(
                "      - &a{i} [*a{p}, *a{p}, *a{p}, *a{p}, *a{p}, *a{p}, *a{p}, *a{p}, *a{p}, *a{p}]\n"
            ));
        }
        let e = parse(&yaml).expect_err("bomb");
        assert!(e.message().contains("too large"), "{e}");
    }

    #[test]
    fn io_errors_and_non_utf8_files() {
        let e = Config::load(Path::new("/nonexistent/sidecar.yaml")).expect_err("missing");
        assert!(
            e.to_string()
                .starts_with("/nonexistent/sidecar.yaml: cannot read: "),
            "{e}"
        );
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("bad.yaml");
        std::fs::write(&path, b"listen: 1\nupstream: \"ab\xff\"\n").expect("write");
        let e = Config::load(&path).expect_err("not utf-8");
        assert_eq!(e.position(), Some((2, 14)), "{e}");
    }

    #[test]
    fn load_reads_a_file() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("s.yaml");
        let secret = "x".repeat(40);
        std::fs::write(
            &path,
            format!("upstream: unix:/run/app.sock\nsecrets: [{secret}]\ntls: {{cert: c.pem, key: /k.pem}}\n"),
        )
        .expect("write");
        let c = Config::load(&path).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(c.upstream, Upstream::Unix("/run/app.sock".into()));
        let tls = c.tls.expect("tls");
        assert_eq!(tls.cert, dir.path().join("c.pem"));
        assert_eq!(tls.key, PathBuf::from("/k.pem"));
    }

    // ---- required keys, upstream, secrets ----------------------------------------

    #[test]
    fn upstream_is_required_and_validated() {
        let e = parse("secrets: [\"${SESSION_SECRET}\"]\n").expect_err("missing upstream");
        assert_eq!(e.position(), Some((1, 1)));
        assert!(e.message().contains("`upstream`"));
        let up = |u: &str| {
            parse(&format!(
                "upstream: {u}\nsecrets: [\"${{SESSION_SECRET}}\"]\n"
            ))
        };
        let tcp = |https: bool, a: &str| Upstream::Tcp {
            https,
            authority: a.into(),
        };
        for (input, want) in [
            ("http://app", tcp(false, "app:80")),
            ("https://app", tcp(true, "app:443")),
            ("http://app:8000/", tcp(false, "app:8000")),
            ("HTTP://10.0.0.1:81", tcp(false, "10.0.0.1:81")),
            ("http://[::1]:8000", tcp(false, "[::1]:8000")),
            ("unix:/run/app.sock", Upstream::Unix("/run/app.sock".into())),
        ] {
            let c = up(input).unwrap_or_else(|e| panic!("{input}: {e}"));
            assert_eq!(c.upstream, want, "{input}");
        }
        assert!(up("https://app").unwrap().upstream_tls.is_some());
        for bad in [
            "http://app/api",
            "http://app?x=1",
            "http://app#f",
            "ftp://app",
            "app:8000",
            "http://",
            "http://user:pw@app",
            "http://app:0",
            "http://app:70000",
            "http://app:x",
            "http://::1:80",
            "http://a b",
            "unix:run/app.sock",
            "unix://run/app.sock",
        ] {
            let e = up(bad).expect_err(bad);
            assert_eq!(e.position(), Some((1, 11)), "{bad}: {e}");
            assert!(e.hint().is_some(), "{bad}");
        }
    }

    #[test]
    fn upstream_tls_only_for_https() {
        assert_err("upstream_tls: {ca: ca.pem}\n", 3, 15, "https");
        let c = parse(
            "upstream: https://app\nsecrets: [\"${SESSION_SECRET}\"]\nupstream_tls: {ca: ca.pem}\n",
        )
        .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(
            c.upstream_tls,
            Some(UpstreamTls {
                ca: Some("conf/ca.pem".into())
            })
        );
    }

    #[test]
    fn secrets_rules() {
        let missing = parse("upstream: http://a\n").expect_err("missing");
        assert_eq!(missing.position(), Some((1, 1)));
        assert!(missing.hint().unwrap_or_default().contains("gen-secret"));
        let e = parse("upstream: http://a\nsecrets: []\n").expect_err("empty");
        assert_eq!(e.position(), Some((2, 10)));
        assert!(e.hint().unwrap_or_default().contains("gen-secret"));
        let e = parse("upstream: http://a\nsecrets:\n  - \"${SESSION_SECRET}\"\n  - short\n")
            .expect_err("short");
        assert_eq!(e.position(), Some((4, 5)));
        assert!(e.message().contains("secrets[1]"), "{e}");
        assert!(
            !e.to_string().contains("short"),
            "value must not be echoed: {e}"
        );
        assert!(
            e.hint()
                .unwrap_or_default()
                .contains("session-sidecar gen-secret")
        );
        let e = parse("upstream: http://a\nsecrets: [\"${EMPTY}\"]\n").expect_err("empty var");
        assert!(e.message().contains("0 bytes"), "{e}");
        let c = parse("upstream: http://a\nsecrets: [\"${SESSION_SECRET}\", \"${OLD_SECRET}\"]\n")
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(c.secrets.len(), 2);
        assert!(!format!("{c:?}").contains(SECRET_VALUE), "Debug leaks");
    }

    // ---- ${VAR} -----------------------------------------------------------------

    #[test]
    fn env_expansion() {
        assert_eq!(
            expand_vars("a${PORT}b$${PORT}c$d$$e", &env).as_deref(),
            Ok("a6380b${PORT}c$d$$e")
        );
        // Values are inserted verbatim: YAML syntax and `${` in them mean nothing.
        assert_eq!(
            expand_vars("${TRICKY}", &env).as_deref(),
            Ok("a: b # c ${SESSION_SECRET} $${")
        );
        assert_eq!(
            expand_vars("x${NOPE}", &env),
            Err(ExpandError::Unset("NOPE".into()))
        );
        for bad in ["${", "${}", "${1A}", "${A-B}", "${A:-x}", "${A"] {
            assert_eq!(expand_vars(bad, &env), Err(ExpandError::Invalid), "{bad}");
        }
        assert_eq!(escape_vars("a${b}"), "a$${b}");
        assert_eq!(
            expand_vars(&escape_vars("a${b}$${c}"), &env).as_deref(),
            Ok("a${b}$${c}")
        );
    }

    #[test]
    fn env_expansion_types_and_errors() {
        let c = ok(
            "store:\n  engine: redis\n  key_prefix: \"app${PORT}:\"\n  storage:\n    port: ${PORT}\n    \
             password: \"${TRICKY}\"\n",
        );
        assert_eq!(c.store.storage.port, 6380);
        assert_eq!(c.store.key_prefix, "app6380:");
        assert_eq!(
            c.store.storage.password,
            Some(Secret("a: b # c ${SESSION_SECRET} $${".into()))
        );
        let e = assert_err("listen: \"${NOPE}:80\"\n", 3, 9, "`NOPE` is not set");
        assert!(e.message().contains("`listen`"));
        assert_err("cookies:\n  domain: ${A:-x}\n", 4, 11, "malformed");
        let c = ok("cookies:\n  path: \"/a$${b}\"\n");
        assert_eq!(c.cookies.path, "/a${b}");
    }

    // ---- values ------------------------------------------------------------------

    #[test]
    fn durations_and_sizes() {
        let d = |s| parse_duration(s);
        assert_eq!(d("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(d("10s"), Ok(Duration::from_secs(10)));
        assert_eq!(d("10"), Ok(Duration::from_secs(10)));
        assert_eq!(d("5m"), Ok(Duration::from_secs(300)));
        assert_eq!(d("2h"), Ok(Duration::from_secs(7200)));
        assert_eq!(d("1d"), Ok(Duration::from_secs(86_400)));
        assert_eq!(d("3650d"), Ok(MAX_DURATION));
        for bad in [
            "",
            "s",
            "1.5s",
            "-1s",
            "1 s",
            "1w",
            "10S",
            "3651d",
            "99999999999999999999d",
        ] {
            assert!(d(bad).is_err(), "{bad:?}");
        }
        let z = |s| parse_size(s);
        assert_eq!(z("512B"), Ok(512));
        assert_eq!(z("512"), Ok(512));
        assert_eq!(z("8KiB"), Ok(8192));
        assert_eq!(z("8kib"), Ok(8192));
        assert_eq!(z("8KB"), Ok(8000));
        assert_eq!(z("1MiB"), Ok(1 << 20));
        assert_eq!(z("1MB"), Ok(1_000_000));
        assert_eq!(z("1GiB"), Ok(1 << 30));
        for bad in ["", "KiB", "8 KiB", "8.5KiB", "8XB", "-1"] {
            assert!(z(bad).is_err(), "{bad:?}");
        }
        assert_eq!(format_duration(Duration::from_millis(1500)), "1500ms");
        assert_eq!(format_duration(Duration::from_secs(90)), "90s");
        assert_eq!(format_duration(Duration::from_secs(7200)), "2h");
        assert_eq!(format_size(8000), "8000B");
        assert_eq!(format_size(8192), "8KiB");
    }

    #[test]
    fn duration_and_size_keys() {
        let c = ok("session: {ttl: 3600, absolute_ttl: 2h, max_size: 64}\nstore: {timeout: 1s}\n");
        assert_eq!(c.session.ttl, Duration::from_secs(3600));
        assert_eq!(c.session.max_size, 64);
        assert_eq!(c.store.timeout, Duration::from_secs(1));
        assert_err("store: {timeout: 0s}\n", 3, 18, "greater than zero");
        assert_err("store: {timeout: 0}\n", 3, 18, "greater than zero");
        assert_err("store: {timeout: 1.5}\n", 3, 18, "must be a duration");
        assert_err("store: {timeout: true}\n", 3, 18, "must be a duration");
        assert_err("session: {max_size: 63}\n", 3, 21, "between 64B and 1MiB");
        assert_err("session: {max_size: 2MiB}\n", 3, 21, "between");
        assert_err("session: {max_size: big}\n", 3, 21, "not a size");
        assert_err(
            "session: {ttl: 2d, absolute_ttl: 1d}\n",
            3,
            34,
            "shorter than `session.ttl`",
        );
        assert_err("session: {ttl: 31d}\n", 3, 16, "shorter");
    }

    #[test]
    fn timeouts_and_limits() {
        let c = ok(
            "timeouts: {header_read: 2s, upstream_connect: 1s, upstream_response: 5m, idle: 90, shutdown: 0s}\n",
        );
        assert_eq!(c.timeouts.header_read, Duration::from_secs(2));
        assert_eq!(c.timeouts.upstream_response, Duration::from_secs(300));
        assert_eq!(c.timeouts.idle, Duration::from_secs(90));
        assert_eq!(c.timeouts.shutdown, Duration::ZERO);
        for key in [
            "header_read",
            "upstream_connect",
            "upstream_response",
            "idle",
        ] {
            let e = err(&format!("timeouts: {{{key}: 0ms}}\n"));
            assert!(e.message().contains(&format!("timeouts.{key}")), "{e}");
        }
        assert_eq!(
            ok("limits: {max_header_size: 8KiB}\n")
                .limits
                .max_header_size,
            8192
        );
        assert_err("limits: {max_header_size: 4KiB}\n", 3, 27, "between 8KiB");
    }

    #[test]
    fn connection_limits_default_and_explicit() {
        let l = ok("limits: {}\n").limits;
        assert_eq!(
            (l.max_connections, l.max_connections_per_ip),
            (10_000, Some(1024))
        );
        let l = ok("limits:\n  max_connections: 500\n  max_connections_per_ip: 20\n").limits;
        assert_eq!(
            (l.max_connections, l.max_connections_per_ip),
            (500, Some(20))
        );
        // The extremes of the range are accepted.
        let l = ok("limits: {max_connections: 1, max_connections_per_ip: 1000000}\n").limits;
        assert_eq!(
            (l.max_connections, l.max_connections_per_ip),
            (1, Some(1_000_000))
        );
        // `null` lifts the per-address cap (`~` is YAML's other spelling of null) and
        // leaves the global one alone.
        for null in ["null", "~"] {
            let l = ok(&format!("limits: {{max_connections_per_ip: {null}}}\n")).limits;
            assert_eq!(
                (l.max_connections, l.max_connections_per_ip),
                (10_000, None)
            );
        }
        // The per-address cap may exceed the global one (it then never binds).
        let l = ok("limits: {max_connections: 10, max_connections_per_ip: 100}\n").limits;
        assert_eq!(
            (l.max_connections, l.max_connections_per_ip),
            (10, Some(100))
        );
        // `${VAR}` works as for every numeric key.
        assert_eq!(
            ok("limits: {max_connections: \"${PORT}\"}\n")
                .limits
                .max_connections,
            6380
        );
    }

    #[test]
    fn connection_limits_reject_zero_negative_and_non_integers() {
        let e = assert_err(
            "limits: {max_connections: 0}\n",
            3,
            27,
            "`limits.max_connections` must be between 1 and 1000000, found 0",
        );
        assert!(
            e.hint().unwrap_or_default().contains("from 1 to 1000000"),
            "{e}"
        );
        assert!(e.to_string().starts_with("conf/t.yaml:3:27: "), "{e}");
        assert_err(
            "limits:\n  max_connections: -5\n",
            4,
            20,
            "must be between 1 and 1000000, found -5",
        );
        assert_err(
            "limits: {max_connections: 1000001}\n",
            3,
            27,
            "found 1000001",
        );
        let e = assert_err(
            "limits: {max_connections: many}\n",
            3,
            27,
            "`limits.max_connections` must be an integer",
        );
        assert!(
            e.hint()
                .unwrap_or_default()
                .contains("max_connections: 10000"),
            "{e}"
        );
        assert_err(
            "limits: {max_connections: 2.5}\n",
            3,
            27,
            "must be an integer",
        );
        assert_err(
            "limits: {max_connections: true}\n",
            3,
            27,
            "must be an integer",
        );
        let e = assert_err(
            "limits: {max_connections_per_ip: 0}\n",
            3,
            34,
            "`limits.max_connections_per_ip` must be between 1 and 1000000, found 0",
        );
        let hint = e.hint().unwrap_or_default();
        assert!(
            hint.contains("`null`") && hint.contains("load balancer"),
            "{hint}"
        );
        assert_err("limits:\n  max_connections_per_ip: -1\n", 4, 27, "found -1");
        assert_err(
            "limits: {max_connections_per_ip: \"none\"}\n",
            3,
            34,
            "`limits.max_connections_per_ip` must be an integer",
        );
        assert_err(
            "limits: {max_connections_per_ip: [1]}\n",
            3,
            34,
            "found a list",
        );
    }

    #[test]
    fn misplaced_max_connections_names_both_sections() {
        let e = assert_err(
            "max_connections: 5\n",
            3,
            1,
            "unknown top-level key `max_connections`",
        );
        let hint = e.hint().unwrap_or_default();
        assert!(
            hint.contains("`store.storage.max_connections` or `limits.max_connections`"),
            "{hint}"
        );
        let e = assert_err(
            "limits: {max_conections: 5}\n",
            3,
            10,
            "unknown key `max_conections` in `limits`",
        );
        assert!(
            e.hint()
                .unwrap_or_default()
                .contains("did you mean `max_connections`?"),
            "{e}"
        );
    }

    #[test]
    fn listen_and_admin() {
        let c = ok("listen: \"[::]:80\"\nadmin:\n  listen: null\n");
        assert_eq!(c.listen, "[::]:80".parse().unwrap());
        assert!(c.admin.listen.is_none());
        assert_eq!(ok("admin: {}\n").admin.listen.map(|a| a.port()), Some(9090));
        assert_eq!(
            ok("admin: {listen: 0.0.0.0:9100}\n")
                .admin
                .listen
                .map(|a| a.port()),
            Some(9100)
        );
        let e = assert_err("listen: localhost:80\n", 3, 9, "not an IP address and port");
        assert!(e.hint().unwrap_or_default().contains("127.0.0.1:8080"));
        // The default admin address counts too: both listeners cannot bind it.
        let e = assert_err("listen: 127.0.0.1:9090\n", 3, 9, "`admin.listen`");
        assert!(e.hint().unwrap_or_default().contains("admin"));
    }

    #[test]
    fn admin_listen_must_differ_from_listen() {
        assert_err(
            "listen: 127.0.0.1:7000\nadmin: {listen: 127.0.0.1:7000}\n",
            4,
            17,
            "same address",
        );
    }

    #[test]
    fn store_engine_and_storage() {
        assert_eq!(ok("store: {engine: redis}\n").store.engine, Engine::Redis);
        assert_eq!(
            ok("store: {engine: Memcached}\n").store.engine,
            Engine::Memcached
        );
        let e = assert_err("store: {engine: mysql}\n", 3, 17, "unknown value \"mysql\"");
        assert!(
            e.hint()
                .unwrap_or_default()
                .contains("memory, redis, memcached")
        );
        assert_eq!(
            ok("store: {on_error: anonymous}\n").store.on_error,
            OnError::Anonymous
        );
        assert_err("store: {on_error: ignore}\n", 3, 19, "store.on_error");

        let c = ok(
            "store:\n  engine: redis\n  storage:\n    host: redis.internal\n    port: 6380\n    \
             username: app\n    password: pw\n    db_sessions: 10\n    db_notifications: 11\n    \
             max_connections: 4\n    tls: true\n",
        );
        let s = &c.store.storage;
        assert_eq!((s.host.as_str(), s.port), ("redis.internal", 6380));
        assert_eq!(s.username.as_deref(), Some("app"));
        assert_eq!(s.password, Some(Secret("pw".into())));
        assert_eq!(
            (s.db_sessions, s.db_notifications, s.max_connections),
            (10, 11, 4)
        );
        assert!(s.tls);

        let c = ok(
            "store:\n  engine: memcached\n  storage: {servers: [\"10.0.0.1:11211\", \"[::1]:11211\"]}\n",
        );
        assert_eq!(c.store.storage.servers.len(), 2);
        assert_err(
            "store:\n  engine: memcached\n  storage: {servers: []}\n",
            5,
            22,
            "at least one",
        );
        assert_err(
            "store:\n  engine: memcached\n  storage: {servers: [host]}\n",
            5,
            23,
            "not host:port",
        );
        assert_eq!(
            ok("store: {storage: {max_entries: 10}}\n")
                .store
                .storage
                .max_entries,
            10
        );
        assert_err("store: {storage: {max_entries: 0}}\n", 3, 32, "between 1");

        assert_err(
            "store: {engine: redis, storage: {port: 0}}\n",
            3,
            40,
            "between 1 and 65535",
        );
        assert_err(
            "store: {engine: redis, storage: {port: 1.5}}\n",
            3,
            40,
            "integer",
        );
        assert_err(
            "store: {engine: redis, storage: {db_sessions: -1}}\n",
            3,
            47,
            "between 0",
        );
        assert_err(
            "store: {engine: redis, storage: {max_connections: 0}}\n",
            3,
            51,
            "between 1",
        );
        assert_err(
            "store: {engine: redis, storage: {tls: maybe}}\n",
            3,
            39,
            "true or false",
        );
    }

    #[test]
    fn settings_of_another_engine_are_rejected() {
        let e = assert_err(
            "store:\n  engine: redis\n  storage:\n    servers: [\"a:1\"]\n",
            6,
            14,
            "`store.storage.servers` is a memcached setting, but `store.engine` is redis",
        );
        assert!(
            e.hint()
                .unwrap_or_default()
                .contains("store.engine: memcached")
        );
        assert_err("store:\n  storage:\n    host: x\n", 5, 11, "redis setting");
        assert_err(
            "store: {engine: memcached, storage: {max_entries: 5}}\n",
            3,
            51,
            "memory setting",
        );
        assert_err(
            "store: {engine: redis, storage: {sentinel: {master_name: m}}}\n",
            3,
            44,
            "not supported yet",
        );
    }

    #[test]
    fn redis_url() {
        let c = ok(
            "store:\n  engine: redis\n  storage:\n    url: \"rediss://u:${REDIS_PASSWORD}@r:6380/3\"\n",
        );
        let s = &c.store.storage;
        assert_eq!(
            s.url,
            Some(Secret("rediss://u:hunter2-redis-password@r:6380/3".into()))
        );
        assert_eq!(s.db_sessions, 3);
        assert!(s.tls);
        assert!(
            ok("store: {engine: redis, storage: {url: \"redis+unix:///run/r.sock\"}}\n")
                .store
                .storage
                .url
                .is_some()
        );
        let e = assert_err(
            "store:\n  engine: redis\n  storage:\n    url: redis://:pw@r\n    host: r\n",
            7,
            11,
            "cannot be combined with `url`",
        );
        assert!(e.hint().is_some());
        assert_err(
            "store: {engine: redis, storage: {url: \"redis://r/2\", db_sessions: 1}}\n",
            3,
            67,
            "conflicts",
        );
        assert_err(
            "store: {engine: redis, storage: {url: \"redis://r\", tls: true}}\n",
            3,
            57,
            "contradicts",
        );
        // Messages about a bad URL never echo it (it may hold a password).
        for bad in [
            "http://:secretpw@r",
            "redis://:secretpw@",
            "redis://:secretpw@r/x",
            "secretpw",
        ] {
            let e = err(&format!(
                "store: {{engine: redis, storage: {{url: \"{bad}\"}}}}\n"
            ));
            assert!(!e.to_string().contains("secretpw"), "{e}");
            assert!(e.message().contains("store.storage.url"), "{e}");
        }
        assert_eq!(
            redact_url("redis://u:p@h:1/0"),
            "redis://u:<redacted>@h:1/0"
        );
        assert_eq!(redact_url("redis://p@h"), "redis://<redacted>@h");
        assert_eq!(redact_url("redis://h:1/0"), "redis://h:1/0");
        assert_eq!(
            redact_url("redis+unix:///s.sock?db=1&pass=x"),
            "redis+unix:///s.sock?db=1&pass=<redacted>"
        );
    }

    #[test]
    fn key_prefix_rules() {
        assert_eq!(
            ok("store: {key_prefix: \"app:sess:\"}\n").store.key_prefix,
            "app:sess:"
        );
        for bad in ["\"\"", "\"a b\"", "\"{tag}\"", "\"a}\"", "\"é\""] {
            let e = err(&format!("store: {{key_prefix: {bad}}}\n"));
            assert!(e.message().contains("key_prefix"), "{bad}: {e}");
            assert!(e.hint().unwrap_or_default().contains("hash tag"), "{bad}");
        }
        let long = "k".repeat(65);
        assert!(
            err(&format!("store: {{key_prefix: {long}}}\n"))
                .message()
                .contains("key_prefix")
        );
        assert!(
            parse(&format!(
                "{BASE}store: {{key_prefix: {}}}\n",
                "k".repeat(64)
            ))
            .is_ok()
        );
    }

    #[test]
    fn cookie_rules() {
        let c = ok(
            "cookies:\n  name: sid\n  path: /app\n  domain: example.com\n  same_site: Strict\n  \
             expires_days: 120\n  rolling: true\n  forward: true\n  http_only: false\n",
        );
        let k = &c.cookies;
        assert_eq!((k.name.as_str(), k.path.as_str()), ("sid", "/app"));
        assert_eq!(k.domain.as_deref(), Some("example.com"));
        assert_eq!(k.same_site, SameSite::Strict);
        assert_eq!(k.lifetime, Some(Duration::from_secs(120 * 86_400)));
        assert!(k.rolling && k.forward && !k.http_only);
        assert_eq!(
            ok("cookies: {max_age: 2h}\n").cookies.lifetime,
            Some(Duration::from_secs(7200))
        );

        for bad in ["\"a b\"", "a=b", "\"a;b\"", "\"\"", "\"(x)\""] {
            let e = err(&format!("cookies: {{name: {bad}}}\n"));
            assert!(e.message().contains("cookies.name"), "{bad}: {e}");
        }
        assert_err("cookies: {path: app}\n", 3, 17, "cookies.path");
        assert_err("cookies: {path: \"/a;b\"}\n", 3, 17, "cookies.path");
        assert_err("cookies: {path: \"/a\\tb\"}\n", 3, 17, "cookies.path");
        for bad in [
            "\"https://example.com\"",
            "\"example.com:80\"",
            "\"a..b\"",
            "\"-a.com\"",
            "\"a b\"",
        ] {
            let e = err(&format!("cookies: {{domain: {bad}}}\n"));
            assert!(e.message().contains("cookies.domain"), "{bad}: {e}");
        }
        let e = assert_err(
            "cookies: {secure: false, same_site: none}\n",
            3,
            37,
            "requires `cookies.secure: true`",
        );
        assert!(e.hint().is_some());
        assert!(
            parse(&format!(
                "{BASE}cookies: {{secure: false, same_site: lax}}\n"
            ))
            .is_ok()
        );
        assert_err(
            "cookies: {expires_days: 1, max_age: 1d}\n",
            3,
            37,
            "alternatives",
        );
        assert_err("cookies: {expires_days: 0}\n", 3, 25, "between 1");
        assert_err("cookies: {expires_days: 1d}\n", 3, 25, "integer");
        assert_err("cookies: {max_age: 0s}\n", 3, 20, "greater than zero");
        assert_err("cookies: {secure: yes please}\n", 3, 19, "true or false");
    }

    #[test]
    fn cookie_prefix_rules() {
        assert!(parse(&format!("{BASE}cookies: {{name: __Host-sid}}\n")).is_ok());
        for bad in [
            "{name: __Host-sid, secure: false}",
            "{name: __Host-sid, path: /app}",
            "{name: __host-sid, domain: example.com}",
        ] {
            let e = err(&format!("cookies: {bad}\n"));
            assert!(e.message().contains("__Host-"), "{bad}: {e}");
            assert_eq!(e.position(), Some((3, 17)), "{bad}");
        }
        assert!(
            parse(&format!(
                "{BASE}cookies: {{name: __Secure-sid, domain: example.com}}\n"
            ))
            .is_ok()
        );
        assert_err(
            "cookies: {name: __Secure-sid, secure: false}\n",
            3,
            17,
            "__Secure-",
        );
    }

    #[test]
    fn headers_bypass_proxies_log() {
        let c = ok("headers: {prefix: X-App-Session, expose_id: true}\n");
        assert_eq!(c.headers.prefix, "X-App-Session");
        assert!(c.headers.expose_id);
        for bad in ["\"X Session\"", "\"X-Session-\"", "\"X:S\"", "\"\""] {
            let e = err(&format!("headers: {{prefix: {bad}}}\n"));
            assert!(e.message().contains("headers.prefix"), "{bad}: {e}");
        }
        assert_err("bypass: [/static/, static/]\n", 3, 20, "not a path prefix");

        let c = ok("trusted_proxies: [10.0.0.0/8, 192.168.1.7, \"::1\", \"fd00::/8\"]\n");
        assert_eq!(
            c.trusted_proxies
                .iter()
                .map(IpNet::to_string)
                .collect::<Vec<_>>(),
            ["10.0.0.0/8", "192.168.1.7/32", "::1/128", "fd00::/8"]
        );
        assert!(c.trusted_proxies[0].contains("10.1.2.3".parse().unwrap()));
        assert_err("trusted_proxies: [10.0.0.0/33]\n", 3, 19, "prefix length");
        assert_err("trusted_proxies: [\"::/129\"]\n", 3, 19, "prefix length");
        assert_err("trusted_proxies: [example.com]\n", 3, 19, "not an IP");
        assert_err("trusted_proxies: [10.0.0.0/+8]\n", 3, 19, "prefix length");

        let c = ok("log: {format: json, level: \"info,session_sidecar=debug\"}\n");
        assert_eq!(c.log.format, LogFormat::Json);
        assert_eq!(c.log.level, "info,session_sidecar=debug");
        assert_err("log: {format: xml}\n", 3, 15, "log.format");
        assert_err("log: {level: \"info,[\"}\n", 3, 14, "not a log filter");
    }

    #[test]
    fn tls_needs_both_files() {
        let c = ok("tls:\n  cert: /c.pem\n  key: k.pem\n");
        let tls = c.tls.expect("tls");
        assert_eq!(tls.cert, PathBuf::from("/c.pem"));
        assert_eq!(tls.key, PathBuf::from("conf/k.pem"));
        assert_err("tls:\n  cert: /c.pem\n", 4, 3, "needs both");
        assert!(ok("tls: {}\n").tls.is_none());
    }

    // ---- redacted output ----------------------------------------------------------

    const RICH: &str = "listen: 0.0.0.0:8443\n\
        tls: {cert: /etc/c.pem, key: /etc/k.pem}\n\
        upstream: https://app.internal\n\
        upstream_tls: {ca: /etc/ca.pem}\n\
        secrets: [\"${SESSION_SECRET}\", \"${OLD_SECRET}\"]\n\
        store:\n  engine: redis\n  storage:\n    url: \"redis://app:${REDIS_PASSWORD}@r:6379/4\"\n    \
        db_notifications: 5\n  key_prefix: \"s${PORT}:\"\n  on_error: anonymous\n\
        session: {ttl: 90m, absolute_ttl: 7d, max_size: 4000}\n\
        cookies: {name: __Host-sid, same_site: strict, expires_days: 14, rolling: true}\n\
        headers: {prefix: X-Sess, expose_id: true}\n\
        bypass: [/static/, \"/odd$${x}\"]\n\
        trusted_proxies: [10.0.0.0/8]\n\
        timeouts: {shutdown: 0s}\n\
        limits: {max_connections: 500, max_connections_per_ip: null}\n\
        admin: {listen: null}\n\
        log: {format: json, level: debug}\n";

    #[test]
    fn redacted_yaml_has_every_key_and_no_secret() {
        for yaml in [RICH.to_owned(), BASE.to_owned()] {
            let c = parse(&yaml).unwrap_or_else(|e| panic!("{e}"));
            let out = c.redacted_yaml();
            assert!(!out.contains(SECRET_VALUE), "{out}");
            assert!(!out.contains("old-secret"), "{out}");
            assert!(!out.contains("hunter2"), "{out}");
            assert!(out.contains("<redacted>"));
            for key in [
                "listen:",
                "tls:",
                "upstream:",
                "upstream_tls:",
                "secrets:",
                "engine:",
                "storage:",
                "key_prefix:",
                "timeout:",
                "on_error:",
                "ttl:",
                "absolute_ttl:",
                "max_size:",
                "name:",
                "path:",
                "domain:",
                "secure:",
                "http_only:",
                "same_site:",
                "max_age:",
                "rolling:",
                "forward:",
                "prefix:",
                "expose_id:",
                "bypass:",
                "trusted_proxies:",
                "header_read:",
                "upstream_connect:",
                "upstream_response:",
                "idle:",
                "shutdown:",
                "max_header_size:",
                "max_connections:",
                "max_connections_per_ip:",
                "admin:",
                "format:",
                "level:",
            ] {
                assert!(out.contains(key), "{key} missing in:\n{out}");
            }
        }
        let out = ok("").redacted_yaml();
        assert!(out.contains("on_error: reject"), "{out}");
        assert!(out.contains("key_prefix: \"session:\""), "{out}");
        assert!(out.contains("max_entries: 100000"), "{out}");
        assert!(out.contains("  max_connections: 10000\n"), "{out}");
        assert!(out.contains("  max_connections_per_ip: 1024\n"), "{out}");
        assert!(!out.contains("servers"), "other engines' settings: {out}");
        let rich = parse(RICH)
            .unwrap_or_else(|e| panic!("{e}"))
            .redacted_yaml();
        assert!(rich.contains("redis://app:<redacted>@r:6379/4"), "{rich}");
        assert!(rich.contains("max_age: 14d"), "{rich}");
        assert!(rich.contains("  max_connections: 500\n"), "{rich}");
        assert!(rich.contains("  max_connections_per_ip: null\n"), "{rich}");
    }

    #[test]
    fn redacted_yaml_round_trips() {
        let redis_fields = format!(
            "{BASE}store:\n  engine: redis\n  storage: {{host: r, port: 1, username: u, password: p, tls: true}}\n"
        );
        let memcached =
            format!("{BASE}store: {{engine: memcached, storage: {{servers: [\"a:1\"]}}}}\n");
        let unix_url =
            format!("{BASE}store: {{engine: redis, storage: {{url: \"unix:///r.sock\"}}}}\n");
        for yaml in [
            RICH.to_owned(),
            BASE.to_owned(),
            redis_fields,
            memcached,
            unix_url,
        ] {
            let first = parse(&yaml)
                .unwrap_or_else(|e| panic!("{e}"))
                .redacted_yaml();
            // Secrets cannot come back; give the reader valid ones in their place.
            let again = first.replace("<redacted>", "${SESSION_SECRET}");
            let second = parse(&again)
                .unwrap_or_else(|e| panic!("re-reading:\n{first}\n{e}"))
                .redacted_yaml();
            assert_eq!(first, second);
        }
        let c = parse(RICH).unwrap_or_else(|e| panic!("{e}"));
        let back = parse(&c.redacted_yaml().replace("<redacted>", "${SESSION_SECRET}"))
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(back.bypass, c.bypass);
        assert_eq!(back.bypass[1], "/odd${x}");
        assert_eq!(back.store.storage.db_sessions, 4);
        assert_eq!(back.store.key_prefix, "s6380:");
        assert!(back.admin.listen.is_none());
        assert_eq!(back.cookies.lifetime, c.cookies.lifetime);
        assert_eq!(back.limits.max_connections, 500);
        assert_eq!(back.limits.max_connections_per_ip, None);
    }

    #[test]
    fn max_connections_belongs_to_both_network_engines() {
        let c = ok("store: {engine: memcached, storage: {max_connections: 4}}\n");
        assert_eq!(c.store.storage.max_connections, 4);
        assert!(c.redacted_yaml().contains("max_connections: 4"));
        let c = ok("store: {engine: redis, storage: {max_connections: 3}}\n");
        assert_eq!(c.store.storage.max_connections, 3);
        // Defaults differ: Redis connections are multiplexed, memcached's are leased.
        let c = ok("store: {engine: redis}\n");
        assert_eq!(c.store.storage.max_connections, REDIS_DEFAULT_CONNECTIONS);
        let c = ok("store: {engine: memcached}\n");
        assert_eq!(c.store.storage.max_connections, 16);
        assert_err(
            "store: {engine: memory, storage: {max_connections: 4}}\n",
            3,
            52,
            "redis or memcached setting",
        );
    }
}
