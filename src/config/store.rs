//! The `store` section: the engine with its `store.storage` options, and the settings
//! every engine shares.
//!
//! Every rule an engine has about its options is checked here, with the position of
//! the value, so that what `session-sidecar check` accepts, the engines build without
//! a configuration error (docs/configuration.md#check-is-authoritative).

use serde_saphyr::{Location, Spanned};

use super::{raw::*, reader::*, types::*, values::*};

/// `store.engine`, before its options are read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Engine {
    Memory,
    Redis,
    Memcached,
}

const ENGINES: &[(&str, Engine)] = &[
    ("memory", Engine::Memory),
    ("redis", Engine::Redis),
    ("memcached", Engine::Memcached),
];

impl Engine {
    fn name(self) -> &'static str {
        ENGINES
            .iter()
            .find(|(_, e)| *e == self)
            .map_or("memory", |(n, _)| n)
    }
}

const REDIS_URL_HINT: &str = "for example redis://127.0.0.1:6379/0, redis://user:pass@host:6380 \
     or redis+unix:///run/redis.sock";
const DB_NUMBER_HINT: &str = "a Redis database number, 0 or more (a default Redis has 16: 0 to 15)";
const TOPOLOGY_HINT: &str = "use exactly one of: `url: redis://host:6379` (or `host`/`port`), \
     `sentinel: {master_name: mymaster, nodes: [\"10.0.0.1:26379\"]}`, \
     `cluster: {nodes: [\"10.0.0.1:7000\"]}`";
const NODES_HINT: &str =
    "a list of host:port, for example [\"10.0.0.1:26379\", \"10.0.0.2:26379\"]";

/// Where a key was written, when it was.
fn at<T>(v: &Option<Spanned<T>>) -> Option<&Location> {
    v.as_ref().map(|v| &v.referenced)
}

impl Ctx<'_> {
    pub(super) fn store(
        &self,
        raw: Option<&Spanned<RawStore>>,
    ) -> Result<StoreConfig, ConfigError> {
        let mut store = StoreConfig::default();
        let Some(raw) = raw.map(|r| &r.value) else {
            return Ok(store);
        };
        let engine = match &raw.engine {
            Some(v) => self.choice(v, "store.engine", ENGINES)?,
            None => Engine::Memory,
        };
        if let Some(v) = &raw.key_prefix {
            let p = self.string(v, "store.key_prefix")?;
            let ok = !p.is_empty()
                && p.len() <= MAX_KEY_PREFIX_LEN
                && p.bytes()
                    .all(|b| b.is_ascii_graphic() && b != b'{' && b != b'}');
            if !ok {
                return Err(self.err(
                    &v.referenced,
                    format!(
                        "`store.key_prefix`: {:?} is not a valid prefix",
                        sanitize(&p)
                    ),
                    Some(format!(
                        "use 1 to {MAX_KEY_PREFIX_LEN} printable ASCII characters without \
                         spaces, `{{` or `}}` (braces would break the Redis cluster hash tag \
                         of the key layout)"
                    )),
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
        let none = RawStorage::default();
        let storage = raw.storage.as_ref().map_or(&none, |s| &s.value);
        store.storage = self.storage(storage, engine)?;
        if let Some(cache) = &raw.cache {
            store.cache = self.cache(cache, &store.storage)?;
        }
        Ok(store)
    }

    /// `store.cache`: Redis only (any topology).
    fn cache(
        &self,
        raw: &Spanned<RawCache>,
        storage: &Storage,
    ) -> Result<CacheConfig, ConfigError> {
        let mut out = CacheConfig::default();
        match storage {
            Storage::Redis(_) => {}
            other => {
                return Err(self.err(
                    &raw.referenced,
                    format!(
                        "`store.cache` is a redis setting, but `store.engine` is {}",
                        other.engine_name()
                    ),
                    Some(
                        "remove it: only the Redis engine can cache sessions (it is told of \
                         every change by Redis client tracking)"
                            .to_owned(),
                    ),
                ));
            }
        }
        if let Some(v) = &raw.value.max_entries {
            out.max_entries =
                self.int(v, "store.cache.max_entries", 0, MAX_CACHE_ENTRIES)? as usize;
        }
        Ok(out)
    }

    fn storage(&self, raw: &RawStorage, engine: Engine) -> Result<Storage, ConfigError> {
        // Which engine each present key belongs to, with where it was written.
        let present = [
            ("url", Engine::Redis, at(&raw.url)),
            ("host", Engine::Redis, at(&raw.host)),
            ("port", Engine::Redis, at(&raw.port)),
            ("username", Engine::Redis, at(&raw.username)),
            ("password", Engine::Redis, at(&raw.password)),
            ("db_sessions", Engine::Redis, at(&raw.db_sessions)),
            ("db_notifications", Engine::Redis, at(&raw.db_notifications)),
            ("tls", Engine::Redis, at(&raw.tls)),
            ("tls_ca", Engine::Redis, at(&raw.tls_ca)),
            ("tls_cert", Engine::Redis, at(&raw.tls_cert)),
            ("tls_key", Engine::Redis, at(&raw.tls_key)),
            ("sentinel", Engine::Redis, at(&raw.sentinel)),
            ("cluster", Engine::Redis, at(&raw.cluster)),
            ("servers", Engine::Memcached, at(&raw.servers)),
            ("max_entries", Engine::Memory, at(&raw.max_entries)),
        ];
        for (key, owner, at) in present {
            if let Some(at) = at
                && owner != engine
            {
                return Err(self.err(
                    at,
                    format!(
                        "`store.storage.{key}` is a {} setting, but `store.engine` is {}",
                        owner.name(),
                        engine.name()
                    ),
                    Some(format!(
                        "remove it, or set `store.engine: {}`",
                        owner.name()
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
        Ok(match engine {
            Engine::Memory => Storage::Memory(self.memory(raw)?),
            Engine::Redis => Storage::Redis(self.redis(raw)?),
            Engine::Memcached => Storage::Memcached(self.memcached(raw)?),
        })
    }

    fn memory(&self, raw: &RawStorage) -> Result<MemoryOptions, ConfigError> {
        let mut out = MemoryOptions::default();
        if let Some(v) = &raw.max_entries {
            out.max_entries =
                self.int(v, "store.storage.max_entries", 1, MAX_MAX_ENTRIES)? as usize;
        }
        Ok(out)
    }

    fn redis(&self, raw: &RawStorage) -> Result<RedisOptions, ConfigError> {
        let mut out = RedisOptions::default();
        // The database the Redis client would select from the URL, and where the URL is.
        let mut url_client_db = None;
        // The URL's scheme: `Some(true)` for rediss://, `None` for a unix socket.
        let mut url_tls = Some(false);
        if let Some(u) = &raw.url {
            for (key, at) in [
                ("host", at(&raw.host)),
                ("port", at(&raw.port)),
                ("username", at(&raw.username)),
                ("password", at(&raw.password)),
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
            let bad_url = |why: String| {
                self.err(
                    &u.referenced,
                    format!("`store.storage.url`: {why}"),
                    Some(REDIS_URL_HINT.to_owned()),
                )
            };
            let info = parse_redis_url(&url).map_err(bad_url)?;
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
            url_tls = info.tls;
            url_client_db = Some((redis_client_db(&url).map_err(bad_url)?, u.referenced));
            out.topology = RedisTopology::Url(Secret(url));
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
            if let RedisTopology::Server { host, .. } = &mut out.topology {
                *host = h;
            }
        }
        if let Some(v) = &raw.port {
            let p = self.int(v, "store.storage.port", 1, MAX_PORT)? as u16;
            if let RedisTopology::Server { port, .. } = &mut out.topology {
                *port = p;
            }
        }
        out.username = self.opt_string(&raw.username, "store.storage.username")?;
        if let Some(v) = &raw.password {
            out.password = Some(Secret(self.string(v, "store.storage.password")?));
        }
        if let Some(v) = &raw.db_sessions {
            out.db_sessions = self.db_number(v, "store.storage.db_sessions")?;
        }
        if let Some(v) = &raw.db_notifications {
            out.db_notifications = self.db_number(v, "store.storage.db_notifications")?;
        }
        if let Some(v) = &raw.max_connections {
            out.max_connections = self.connections(v)?;
        }
        out.tls = self.redis_tls(raw, url_tls, raw.url.as_ref())?;
        self.redis_topology(raw, &mut out)?;
        // The client selects a database given in the URL (`/2`, or `?db=2` on a unix
        // socket URL); the store keeps every connection on the numbers set here.
        if let Some((db, at)) = url_client_db
            && db != 0
            && db != i64::from(out.db_sessions)
        {
            return Err(self.err(
                &at,
                format!(
                    "`store.storage.url` selects database {db}, but `store.storage.db_sessions` \
                     is {}",
                    out.db_sessions
                ),
                Some(
                    "remove the database from the URL and set `store.storage.db_sessions` \
                     instead"
                        .to_owned(),
                ),
            ));
        }
        Ok(out)
    }

    /// `tls`, `tls_ca`, `tls_cert`, `tls_key` (docs/configuration.md#redis). With a
    /// URL its scheme decides, and `tls` must agree with it (checked above).
    fn redis_tls(
        &self,
        raw: &RawStorage,
        url_tls: Option<bool>,
        url: Option<&Str>,
    ) -> Result<Option<RedisTls>, ConfigError> {
        let flag = match &raw.tls {
            Some(v) => Some((self.bool(v, "store.storage.tls")?, v)),
            None => None,
        };
        let on = match (url, url_tls, flag) {
            (Some(_), None, Some((true, v))) => {
                return Err(self.err(
                    &v.referenced,
                    "`store.storage.tls: true`: a unix socket has no TLS",
                    Some("remove `tls`, or connect over TCP with rediss://".to_owned()),
                ));
            }
            (Some(_), Some(scheme), _) => scheme,
            (Some(_), None, _) => false,
            (None, _, Some((on, _))) => on,
            (None, _, None) => false,
        };
        let files = [
            ("tls_ca", &raw.tls_ca),
            ("tls_cert", &raw.tls_cert),
            ("tls_key", &raw.tls_key),
        ];
        if !on {
            if let Some((key, Some(v))) = files.iter().find(|(_, v)| v.is_some()) {
                return Err(self.err(
                    &v.referenced,
                    format!("`store.storage.{key}` needs TLS, which is off"),
                    Some("set `tls: true`, or use a rediss:// URL".to_owned()),
                ));
            }
            return Ok(None);
        }
        if let (Some(v), None) | (None, Some(v)) = (&raw.tls_cert, &raw.tls_key) {
            return Err(self.err(
                &v.referenced,
                "`store.storage.tls_cert` and `tls_key` go together",
                Some("give the client certificate chain and its key, or neither".to_owned()),
            ));
        }
        let path = |v: &Option<Str>, key: &str| -> Result<_, ConfigError> {
            v.as_ref()
                .map(|v| self.file_path(v, &format!("store.storage.{key}")))
                .transpose()
        };
        Ok(Some(RedisTls {
            ca: path(&raw.tls_ca, "tls_ca")?,
            cert: path(&raw.tls_cert, "tls_cert")?,
            key: path(&raw.tls_key, "tls_key")?,
        }))
    }

    /// Exactly one topology: `url`, `host`/`port`, `sentinel` or `cluster`.
    fn redis_topology(&self, raw: &RawStorage, out: &mut RedisOptions) -> Result<(), ConfigError> {
        let present = [
            ("url", "url", at(&raw.url)),
            ("host", "host/port", at(&raw.host)),
            ("port", "host/port", at(&raw.port)),
            ("sentinel", "sentinel", at(&raw.sentinel)),
            ("cluster", "cluster", at(&raw.cluster)),
        ];
        let mut first: Option<(&str, &str)> = None;
        for (key, group, at) in present {
            let Some(at) = at else { continue };
            match first {
                None => first = Some((key, group)),
                Some((_, g)) if g == group => {}
                Some((other, _)) => {
                    return Err(self.err(
                        at,
                        format!("`store.storage.{key}` cannot be combined with `{other}`"),
                        Some(TOPOLOGY_HINT.to_owned()),
                    ));
                }
            }
        }
        if let Some(v) = &raw.sentinel {
            out.topology = RedisTopology::Sentinel(self.sentinel(v)?);
        }
        if let Some(v) = &raw.cluster {
            let nodes = self.nodes(&v.value.nodes, &v.referenced, "store.storage.cluster.nodes")?;
            out.topology = RedisTopology::Cluster(ClusterOptions { nodes });
            // A cluster has db 0 only (both default to 0 there).
            for (key, v) in [
                ("db_sessions", &raw.db_sessions),
                ("db_notifications", &raw.db_notifications),
            ] {
                if let Some(v) = v
                    && self.db_number(v, &format!("store.storage.{key}"))? != 0
                {
                    return Err(self.err(
                        &v.referenced,
                        format!("`store.storage.{key}`: a Redis Cluster has database 0 only"),
                        Some(
                            "remove it: on a cluster, sessions and notifications share db 0 \
                             under distinct keys"
                                .to_owned(),
                        ),
                    ));
                }
            }
            out.db_sessions = 0;
            out.db_notifications = 0;
        }
        Ok(())
    }

    fn sentinel(&self, v: &Spanned<RawSentinel>) -> Result<SentinelOptions, ConfigError> {
        let raw = &v.value;
        let Some(name) = &raw.master_name else {
            return Err(self.err(
                &v.referenced,
                "`store.storage.sentinel.master_name` is required",
                Some(
                    "the name the sentinels monitor, for example master_name: mymaster".to_owned(),
                ),
            ));
        };
        let master_name = self.string(name, "store.storage.sentinel.master_name")?;
        if master_name.is_empty()
            || master_name
                .chars()
                .any(|c| c.is_control() || c.is_whitespace())
        {
            return Err(self.err(
                &name.referenced,
                "`store.storage.sentinel.master_name` must be a name without spaces",
                Some("for example master_name: mymaster".to_owned()),
            ));
        }
        let nodes = self.nodes(&raw.nodes, &v.referenced, "store.storage.sentinel.nodes")?;
        let username = self.opt_string(&raw.username, "store.storage.sentinel.username")?;
        let password = match &raw.password {
            Some(p) => Some(Secret(self.string(p, "store.storage.sentinel.password")?)),
            None => None,
        };
        Ok(SentinelOptions {
            master_name,
            nodes,
            username,
            password,
        })
    }

    /// A required, non-empty list of `host:port`.
    fn nodes(
        &self,
        list: &Option<Spanned<Vec<Str>>>,
        parent: &Location,
        key: &str,
    ) -> Result<Vec<String>, ConfigError> {
        let Some(list) = list else {
            return Err(self.err(
                parent,
                format!("`{key}` is required"),
                Some(NODES_HINT.to_owned()),
            ));
        };
        if list.value.is_empty() {
            return Err(self.err(
                &list.referenced,
                format!("`{key}` needs at least one node"),
                Some(NODES_HINT.to_owned()),
            ));
        }
        let mut nodes = Vec::new();
        for v in &list.value {
            let s = self.string(v, key)?;
            if !is_host_port(&s) {
                return Err(self.err(
                    &v.referenced,
                    format!("`{key}`: {:?} is not host:port", sanitize(&s)),
                    Some(NODES_HINT.to_owned()),
                ));
            }
            nodes.push(s);
        }
        Ok(nodes)
    }

    /// A Redis database number (the server decides how many it has; see
    /// `check_databases` at start).
    fn db_number(&self, v: &Val, key: &str) -> Result<u32, ConfigError> {
        let n = self.int_with_hint(v, key, 0, MAX_DB_NUMBER, DB_NUMBER_HINT)?;
        u32::try_from(n).map_err(|_| self.err(&v.referenced, format!("`{key}` is too large"), None))
    }

    /// `store.storage.max_connections` of either network engine.
    fn connections(&self, v: &Val) -> Result<usize, ConfigError> {
        let (min, max) = STORE_CONNECTIONS_RANGE;
        Ok(self.int(v, "store.storage.max_connections", min, max)? as usize)
    }

    fn memcached(&self, raw: &RawStorage) -> Result<MemcachedOptions, ConfigError> {
        let mut out = MemcachedOptions::default();
        if let Some(v) = &raw.max_connections {
            out.max_connections = self.connections(v)?;
        }
        if let Some(list) = &raw.servers {
            if list.value.is_empty() {
                return Err(self.err(
                    &list.referenced,
                    "`store.storage.servers` needs at least one server",
                    Some(format!(
                        "for example servers: [\"{DEFAULT_MEMCACHED_SERVER}\"]"
                    )),
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
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::testutil::*;

    #[test]
    fn store_cache() {
        let on =
            "store:\n  engine: redis\n  cache: {max_entries: 1000}\nsession: {touch_after: 1m}\n";
        assert_eq!(ok(on).store.cache.max_entries, 1000);
        assert!(ok("store: {engine: redis}\n").store.cache.is_off());
        assert!(
            ok("store: {engine: redis, cache: {max_entries: 0}}\n")
                .store
                .cache
                .is_off()
        );
        let e = assert_err(
            "store:\n  engine: memory\n  cache: {max_entries: 10}\n",
            5,
            10,
            "`store.cache` is a redis setting",
        );
        assert!(e.hint().unwrap_or_default().contains("Redis"));
        assert_err(
            "store: {engine: memcached, cache: {}}\n",
            3,
            35,
            "`store.cache` is a redis setting",
        );
        assert_err(
            "store: {engine: redis, cache: {max_entries: 10000001}}\nsession: {touch_after: 1m}\n",
            3,
            45,
            "store.cache.max_entries",
        );
        assert_err(
            "store: {engine: redis, cache: {max_entries: -1}}\n",
            3,
            45,
            "store.cache.max_entries",
        );
        assert_err("store: {engine: redis, cache: {size: 1}}\n", 3, 32, "size");
        let e = assert_err(
            "store: {engine: redis, cache: {max_entries: 10}}\n",
            3,
            31,
            "needs `session.touch_after` > 0",
        );
        assert!(e.hint().unwrap_or_default().contains("touch_after: 1m"));
        let sentinel = "store: {engine: redis, storage: {sentinel: {master_name: m, nodes: \
             [\"a:1\"]}}, cache: {max_entries: 5}}\nsession: {touch_after: 1m}\n";
        assert_eq!(ok(sentinel).store.cache.max_entries, 5);
        let cluster = "store: {engine: redis, storage: {cluster: {nodes: [\"a:1\"]}}, \
             cache: {max_entries: 5}}\nsession: {touch_after: 1m}\n";
        assert_eq!(ok(cluster).store.cache.max_entries, 5);
    }

    #[test]
    fn store_engine_and_storage() {
        assert_eq!(
            ok("store: {engine: redis}\n").store.storage.engine_name(),
            "redis"
        );
        assert_eq!(
            ok("store: {engine: Memcached}\n")
                .store
                .storage
                .engine_name(),
            "memcached"
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
             max_connections: 4\n    tls: false\n",
        );
        let s = redis(&c);
        assert_eq!(
            s.topology,
            RedisTopology::Server {
                host: "redis.internal".into(),
                port: 6380
            }
        );
        assert_eq!(s.username.as_deref(), Some("app"));
        assert_eq!(s.password, Some(Secret("pw".into())));
        assert_eq!(
            (s.db_sessions, s.db_notifications, s.max_connections),
            (10, 11, 4)
        );
        let s = redis(&ok("store: {engine: redis, storage: {tls: true}}\n")).clone();
        assert_eq!(
            s.tls,
            Some(RedisTls::default()),
            "system roots, no client certificate"
        );

        let c = ok(
            "store:\n  engine: memcached\n  storage: {servers: [\"10.0.0.1:11211\", \"[::1]:11211\"]}\n",
        );
        assert_eq!(memcached(&c).servers.len(), 2);
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
            ok("store: {storage: {max_entries: 10}}\n").store.storage,
            Storage::Memory(MemoryOptions { max_entries: 10 })
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
            "store: {engine: memcached, storage: {cluster: {nodes: [\"a:1\"]}}}\n",
            3,
            47,
            "redis setting",
        );
        assert_err(
            "store: {engine: memory, storage: {tls_ca: ca.pem}}\n",
            3,
            43,
            "redis setting",
        );
    }

    #[test]
    fn redis_url() {
        let c = ok(
            "store:\n  engine: redis\n  storage:\n    url: \"redis://u:${REDIS_PASSWORD}@r:6380/3\"\n",
        );
        let s = redis(&c);
        assert_eq!(
            s.topology,
            RedisTopology::Url(Secret("redis://u:hunter2-redis-password@r:6380/3".into()))
        );
        assert_eq!(s.db_sessions, 3);
        assert_eq!(
            redis(&ok(
                "store: {engine: redis, storage: {url: \"redis+unix:///run/r.sock\"}}\n"
            ))
            .topology
            .clone(),
            RedisTopology::Url(Secret("redis+unix:///run/r.sock".into()))
        );
        // rediss:// is TLS; `tls` must agree with the scheme, and the message does not
        // echo the URL.
        let s = redis(&ok(
            "store: {engine: redis, storage: {url: \"rediss://u:pw@r:6380\", tls_ca: ca.pem}}\n",
        ))
        .clone();
        // Relative to the config file's directory.
        assert_eq!(
            s.tls.and_then(|t| t.ca),
            Some(std::path::PathBuf::from("conf/ca.pem"))
        );
        let e = assert_err(
            "store:\n  engine: redis\n  storage:\n    url: \"rediss://u:${REDIS_PASSWORD}@r\"\n    tls: false\n",
            7,
            10,
            "contradicts the scheme",
        );
        assert!(!e.to_string().contains("hunter2"), "{e}");
        assert_err(
            "store: {engine: redis, storage: {url: \"redis+unix:///r.sock\", tls: true}}\n",
            3,
            68,
            "a unix socket has no TLS",
        );
        // A database the client would select from the URL must be `db_sessions`.
        let e = assert_err(
            "store: {engine: redis, storage: {url: \"redis+unix:///r.sock?db=3\"}}\n",
            3,
            39,
            "`store.storage.url` selects database 3, but `store.storage.db_sessions` is 0",
        );
        assert!(e.hint().unwrap_or_default().contains("db_sessions"), "{e}");
        let c = ok(
            "store: {engine: redis, storage: {url: \"redis+unix:///r.sock?db=3\", db_sessions: 3}}\n",
        );
        assert_eq!(redis(&c).db_sessions, 3);
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

    /// Found by the config fuzz target (fuzz/corpus/config/crash-0873abf2): the Redis
    /// client ignores query parameters it does not know, and `check` printed them as
    /// written — a password given as `?pasword=` (or any other key) was both unused
    /// and shown. Such URLs are refused, and the message quotes no part of them.
    #[test]
    fn redis_url_query_and_fragment() {
        for url in [
            "redis://r/0?password=${REDIS_PASSWORD}",
            "redis://r/0?pasword=${REDIS_PASSWORD}",
            "redis://r?x${REDIS_PASSWORD}",
            "redis://r/0?protocol=resp3",
            "rediss://r/0#insecure",
            "redis://r/0#${REDIS_PASSWORD}",
            "redis+unix:///r.sock?db=0&password=${REDIS_PASSWORD}",
            "redis+unix:///r.sock#${REDIS_PASSWORD}",
        ] {
            let e = err(&format!(
                "store: {{engine: redis, storage: {{url: \"{url}\"}}}}\n"
            ));
            assert!(e.message().contains("store.storage.url"), "{url}: {e}");
            assert!(
                e.message().contains("query parameter") || e.message().contains("fragment"),
                "{url}: {e}"
            );
            assert!(!e.to_string().contains("hunter2"), "{url}: {e}");
            assert!(!e.to_string().contains("asword"), "{url}: {e}");
        }
        let c = ok(
            "store: {engine: redis, storage: {url: \"redis+unix:///r.sock?user=u&pass=${REDIS_PASSWORD}&\"}}\n",
        );
        let printed = c.redacted_yaml();
        assert!(!printed.contains("hunter2"), "{printed}");
        assert!(printed.contains("user=u&pass=<redacted>"), "{printed}");
        ok("store: {engine: redis, storage: {url: \"redis://r:1/0?\"}}\n");
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
    fn max_connections_belongs_to_both_network_engines() {
        let c = ok("store: {engine: memcached, storage: {max_connections: 4}}\n");
        assert_eq!(memcached(&c).max_connections, 4);
        assert!(c.redacted_yaml().contains("max_connections: 4"));
        let c = ok("store: {engine: redis, storage: {max_connections: 3}}\n");
        assert_eq!(redis(&c).max_connections, 3);
        // Defaults differ: Redis connections are multiplexed, memcached's are leased.
        let c = ok("store: {engine: redis}\n");
        assert_eq!(redis(&c).max_connections, REDIS_DEFAULT_CONNECTIONS);
        let c = ok("store: {engine: memcached}\n");
        assert_eq!(memcached(&c).max_connections, DEFAULT_MEMCACHED_CONNECTIONS);
        assert_err(
            "store: {engine: memory, storage: {max_connections: 4}}\n",
            3,
            52,
            "redis or memcached setting",
        );
    }

    const STORAGE: &str = "store:\n  engine: redis\n  storage:\n";

    #[test]
    fn redis_topologies() {
        let c = ok(&format!(
            "{STORAGE}    sentinel:\n      master_name: mymaster\n      nodes: [\"10.0.0.1:26379\", \"s2:26379\"]\n      \
             password: spw\n    password: dpw\n"
        ));
        let s = redis(&c);
        assert_eq!(
            s.topology,
            RedisTopology::Sentinel(SentinelOptions {
                master_name: "mymaster".into(),
                nodes: vec!["10.0.0.1:26379".into(), "s2:26379".into()],
                username: None,
                password: Some(Secret("spw".into())),
            })
        );
        assert_eq!(s.password, Some(Secret("dpw".into())));
        assert_eq!((s.db_sessions, s.db_notifications), (0, 1));

        let c = ok(&format!(
            "{STORAGE}    cluster: {{nodes: [\"10.0.0.1:7000\"]}}\n    tls: true\n"
        ));
        let s = redis(&c);
        assert_eq!(
            s.topology,
            RedisTopology::Cluster(ClusterOptions {
                nodes: vec!["10.0.0.1:7000".into()]
            })
        );
        assert_eq!((s.db_sessions, s.db_notifications), (0, 0), "db 0 only");
        assert!(s.tls.is_some());
        ok(&format!(
            "{STORAGE}    cluster: {{nodes: [\"a:1\"]}}\n    db_notifications: 0\n"
        ));
    }

    #[test]
    fn redis_topology_rules() {
        let e = assert_err(
            &format!("{STORAGE}    url: redis://r\n    cluster: {{nodes: [\"a:1\"]}}\n"),
            7,
            14,
            "`store.storage.cluster` cannot be combined with `url`",
        );
        assert!(e.hint().unwrap_or_default().contains("sentinel:"), "{e}");
        assert_err(
            &format!("{STORAGE}    host: r\n    sentinel: {{master_name: m, nodes: [\"a:1\"]}}\n"),
            7,
            15,
            "cannot be combined with `host`",
        );
        assert_err(
            &format!(
                "{STORAGE}    sentinel: {{master_name: m, nodes: [\"a:1\"]}}\n    cluster: {{nodes: [\"a:1\"]}}\n"
            ),
            7,
            14,
            "cannot be combined with `sentinel`",
        );
        let e = assert_err(
            &format!("{STORAGE}    cluster: {{nodes: [\"a:1\"]}}\n    db_notifications: 1\n"),
            7,
            23,
            "a Redis Cluster has database 0 only",
        );
        assert!(e.hint().is_some());
        assert_err(
            &format!("{STORAGE}    cluster: {{nodes: []}}\n"),
            6,
            22,
            "needs at least one node",
        );
        assert_err(
            &format!("{STORAGE}    cluster: {{nodes: [\"nohost\"]}}\n"),
            6,
            23,
            "is not host:port",
        );
        assert_err(
            &format!("{STORAGE}    sentinel: {{nodes: [\"a:1\"]}}\n"),
            6,
            15,
            "`store.storage.sentinel.master_name` is required",
        );
        assert_err(
            &format!("{STORAGE}    sentinel: {{master_name: m}}\n"),
            6,
            15,
            "`store.storage.sentinel.nodes` is required",
        );
        let e = assert_err(
            &format!("{STORAGE}    sentinel: {{master_name: m, nodes: [\"a:1\"], master: x}}\n"),
            6,
            48,
            "unknown key `master` in `store.storage.sentinel`",
        );
        assert!(e.hint().unwrap_or_default().contains("master_name"), "{e}");
    }

    #[test]
    fn redis_tls_rules() {
        let c = ok(&format!(
            "{STORAGE}    host: r\n    tls: true\n    tls_ca: certs/ca.pem\n    tls_cert: /c.pem\n    tls_key: /k.pem\n"
        ));
        let tls = redis(&c).tls.clone().expect("tls");
        assert_eq!(tls.ca, Some(std::path::PathBuf::from("conf/certs/ca.pem")));
        assert_eq!(tls.cert, Some(std::path::PathBuf::from("/c.pem")));
        assert_err(
            &format!("{STORAGE}    tls_ca: ca.pem\n"),
            6,
            13,
            "`store.storage.tls_ca` needs TLS, which is off",
        );
        assert_err(
            &format!("{STORAGE}    url: redis://r\n    tls_ca: ca.pem\n"),
            7,
            13,
            "needs TLS",
        );
        assert_err(
            &format!("{STORAGE}    tls: true\n    tls_cert: c.pem\n"),
            7,
            15,
            "`store.storage.tls_cert` and `tls_key` go together",
        );
        assert_err(
            &format!("{STORAGE}    url: redis://r\n    tls: true\n"),
            7,
            10,
            "contradicts the scheme",
        );
    }
}
