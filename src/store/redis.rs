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
//!
//! The literal braces around the store key are a Redis Cluster hash tag: every key of one
//! session hashes to the same slot, so one script may touch them all.
//!
//! Hash fields of the data and flash hashes are in the wire form of [`crate::store`]:
//! a user key is stored as its JSON string literal *with the quotes* (field `"user"`,
//! value `"ann"` as JSON text), so `X-Session` is built by concatenation. The data hash
//! also holds meta fields, which never start with `"`:
//! - `created`: creation time in unix milliseconds, by the Redis server's clock
//!   (`TIME`): many sidecars share one store, so the store's clock is the one clock;
//! - `max_age`: the per-session idle lifetime in seconds (`X-Session-Max-Age`); absent
//!   by default, and then `session.ttl` applies.
//!
//! Every key always carries a TTL = min(idle lifetime, time left to `absolute_ttl` since
//! `created`); nothing is ever left without an expiry. A session always has `created`,
//! so its data hash exists for as long as the session does, even with no user keys.
//!
//! # Round trips
//!
//! A load is one Lua script (`redis/load.lua`): read the data, check the absolute
//! lifetime, refresh the TTL, and read-and-delete the flash atomically (delivered exactly
//! once). A write is one Lua script (`redis/apply.lua`) that computes and validates the
//! new state first and writes only when it is valid, because Redis does not roll back a
//! script that fails halfway. Scripts are sent with EVALSHA ([`redis::Script`] falls back
//! to loading the script on `NOSCRIPT`).
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
//! `max_connections` [`ConnectionManager`]s (each one multiplexed connection), used
//! round-robin and created lazily on first use: the sidecar starts while Redis is down,
//! a failed connection attempt is retried by the next call, and a manager reconnects by
//! itself after Redis restarts. Every call is bounded by `store.timeout` by the wrapper
//! the engine runs behind ([`super::timed::TimedStore`]), not here.

use std::{
    fmt,
    sync::atomic::{AtomicUsize, Ordering},
    time::Duration,
};

use redis::{
    Client, ConnectionInfo, IntoConnectionInfo, RedisError, Script, ScriptInvocation, Value,
    aio::{ConnectionManager, ConnectionManagerConfig},
    io::tcp::TcpSettings,
};
use tokio::sync::OnceCell;

use super::{
    ApplyError, Lifetimes, LoadedSession, SessionStore, StoreError, Target, WriteOutcome,
    WritePlan, pairs::decode_pairs,
};
use crate::{
    config::{RedisOptions, RedisTopology},
    cookie::SessionId,
    protocol::Op,
};

const LOAD_LUA: &str = concat!(
    include_str!("redis/common.lua"),
    include_str!("redis/load.lua")
);
const APPLY_LUA: &str = concat!(
    include_str!("redis/common.lua"),
    include_str!("redis/apply.lua")
);
const CHECK_DBS_LUA: &str = include_str!("redis/check_dbs.lua");

/// The Redis engine.
pub struct RedisStore {
    client: Client,
    /// Connection and response timeouts of `store.timeout` and a quick give-up for the
    /// managers' (re)connection attempts. They govern reconnecting, not the bound of a
    /// call: that is [`super::timed::TimedStore`]'s, which every engine runs behind.
    manager_config: ConnectionManagerConfig,
    /// One lazily connected manager per slot; an empty cell means "connect on next use".
    slots: Box<[OnceCell<ConnectionManager>]>,
    next: AtomicUsize,
    key_prefix: String,
    db_sessions: i64,
    db_notifications: i64,
    lifetimes: Lifetimes,
    load_script: Script,
    apply_script: Script,
    check_script: Script,
}

impl fmt::Debug for RedisStore {
    // Hand-written: the client's connection info holds the password.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedisStore")
            .field("key_prefix", &self.key_prefix)
            .field("db_sessions", &self.db_sessions)
            .field("db_notifications", &self.db_notifications)
            .field("connections", &self.slots.len())
            .finish_non_exhaustive()
    }
}

/// The three keys of one session (see the module docs).
struct SessionKeys {
    data: String,
    flash: String,
    scratch: String,
}

/// Apply-script modes (ARGV[1] of `apply.lua`).
mod mode {
    pub const EXISTING: &str = "E";
    pub const CREATE: &str = "C";
    pub const MOVE: &str = "M";
    pub const DESTROY: &str = "X";
    pub const DESTROY_THEN_CREATE: &str = "R";
}

impl RedisStore {
    /// Build the store from its validated options (see [`crate::config::Storage`]),
    /// the shared `store.key_prefix`, and `store.timeout` (which also bounds the
    /// connection manager's connects and responses). No I/O: connections are made on
    /// first use, so the sidecar starts while Redis is down.
    ///
    /// The configuration checked every rule (no TLS, a URL the client parses, database
    /// numbers that agree with it: docs/configuration.md#check-is-authoritative).
    ///
    /// # Errors
    /// [`StoreError::Unavailable`] when the Redis client refuses the connection settings
    /// (not expected for a loaded configuration). Messages never contain the URL or
    /// the password.
    pub fn new(
        options: &RedisOptions,
        key_prefix: &str,
        timeout: Duration,
        lifetimes: Lifetimes,
    ) -> Result<RedisStore, StoreError> {
        let bad = |msg: String| StoreError::Unavailable(msg);
        // The client's errors name no part of the URL, which may hold a password.
        let mut info: ConnectionInfo = match &options.topology {
            RedisTopology::Url(url) => url
                .0
                .as_str()
                .into_connection_info()
                .map_err(|e| bad(format!("redis client: store.storage.url refused ({e})")))?,
            RedisTopology::Server { host, port } => (host.clone(), *port)
                .into_connection_info()
                .map_err(|e| bad(format!("redis client: store.storage.host refused ({e})")))?,
            RedisTopology::Sentinel(_) | RedisTopology::Cluster(_) => {
                return Err(bad("redis: this topology is not built yet".to_owned()));
            }
        };
        let mut redis_settings = info.redis_settings().clone().set_db(0);
        if let Some(username) = &options.username {
            redis_settings = redis_settings.set_username(username);
        }
        if let Some(password) = &options.password {
            redis_settings = redis_settings.set_password(&password.0);
        }
        // Connections stay on db 0 (the scripts SELECT what they need): a connection
        // that selected a missing db at connect time would never reconnect.
        info = info
            .set_redis_settings(redis_settings)
            // redis 1.x leaves Nagle on; every call is one small request/response.
            .set_tcp_settings(TcpSettings::default().set_nodelay(true));
        let client = Client::open(info)
            .map_err(|e| bad(format!("store.storage: invalid Redis settings ({e})")))?;

        // A dead Redis must cost at most `store.timeout` per call: connection attempts
        // and responses time out after it, and the background reconnection gives up
        // quickly (each later call starts a new attempt anyway).
        let manager_config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(timeout))
            .set_response_timeout(Some(timeout))
            .set_number_of_retries(1)
            .set_min_delay(Duration::from_millis(10).min(timeout))
            .set_max_delay((timeout / 2).max(Duration::from_millis(1)));

        let slots = (0..options.max_connections.max(1))
            .map(|_| OnceCell::new())
            .collect();

        Ok(RedisStore {
            client,
            manager_config,
            slots,
            next: AtomicUsize::new(0),
            key_prefix: key_prefix.to_owned(),
            db_sessions: i64::from(options.db_sessions),
            db_notifications: i64::from(options.db_notifications),
            lifetimes,
            load_script: Script::new(LOAD_LUA),
            apply_script: Script::new(APPLY_LUA),
            check_script: Script::new(CHECK_DBS_LUA),
        })
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
        let reply = self
            .run(&inv, true)
            .await
            .map_err(|e| self.store_error(e))?;
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
        let base = format!("{}{{{}}}", self.key_prefix, id.store_key());
        SessionKeys {
            flash: format!("{base}:flash"),
            scratch: format!("{base}:tmp"),
            data: base,
        }
    }

    /// The manager of `slot`, connecting it if it is not yet. A failed (or cancelled)
    /// attempt leaves the cell empty, so the next call tries again.
    async fn manager(&self, slot: usize) -> Result<ConnectionManager, RedisError> {
        let Some(cell) = self.slots.get(slot) else {
            return Err(RedisError::from((
                redis::ErrorKind::Client,
                "no connection slot",
            )));
        };
        cell.get_or_try_init(|| {
            ConnectionManager::new_with_config(self.client.clone(), self.manager_config.clone())
        })
        .await
        .cloned()
    }

    /// Run a script on the next connection. Retried once on the same connection (which
    /// reconnects meanwhile) when the first attempt certainly did not reach Redis
    /// (connection refused) or, for `idempotent` calls, when the connection dropped.
    /// A write whose outcome is unknown is never retried: an `Incr` could apply twice.
    async fn run(&self, inv: &ScriptInvocation<'_>, idempotent: bool) -> Result<Value, RedisError> {
        let slot = self.next.fetch_add(1, Ordering::Relaxed) % self.slots.len().max(1);
        let first = match self.manager(slot).await {
            Ok(mut conn) => inv.invoke_async::<Value>(&mut conn).await,
            Err(e) => Err(e),
        };
        match first {
            Err(e)
                if e.is_connection_refusal()
                    || (idempotent && (e.is_connection_dropped() || e.is_io_error())) =>
            {
                let mut conn = self.manager(slot).await?;
                inv.invoke_async::<Value>(&mut conn).await
            }
            other => other,
        }
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
}

impl SessionStore for RedisStore {
    async fn load(&self, id: &SessionId) -> Result<Option<LoadedSession>, StoreError> {
        let keys = self.keys(id);
        let mut inv = self.load_script.prepare_invoke();
        inv.key(&keys.data)
            .key(&keys.flash)
            .arg(self.db_sessions)
            .arg(self.db_notifications)
            .arg(millis(self.lifetimes.ttl))
            .arg(millis(self.lifetimes.absolute_ttl));
        let reply = self
            .run(&inv, true)
            .await
            .map_err(|e| self.store_error(e))?;
        match reply {
            Value::BulkString(bytes) => decode_load_reply(&bytes),
            _ => Err(corrupt("reply type")),
        }
    }

    async fn apply(&self, plan: &WritePlan) -> Result<WriteOutcome, StoreError> {
        let (mode, target, source) = match &plan.target {
            Target::Existing(id) => (mode::EXISTING, id, None),
            Target::Create(id) => (mode::CREATE, id, None),
            Target::Move { from, to } => (mode::MOVE, to, Some(from)),
            Target::Destroy(id) => (mode::DESTROY, id, None),
            Target::DestroyThenCreate { old, new } => (mode::DESTROY_THEN_CREATE, new, Some(old)),
        };
        let keys = self.keys(target);
        let source = source.map(|id| self.keys(id));
        let source = source.as_ref().unwrap_or(&keys);

        let mut inv = self.apply_script.prepare_invoke();
        inv.key(&keys.data)
            .key(&keys.flash)
            .key(&keys.scratch)
            .key(&source.data)
            .key(&source.flash)
            .arg(mode)
            .arg(self.db_sessions)
            .arg(self.db_notifications)
            .arg(millis(self.lifetimes.ttl))
            .arg(millis(self.lifetimes.absolute_ttl))
            .arg(self.lifetimes.max_size)
            .arg(plan.max_age.map(|s| s.to_string()).unwrap_or_default());
        for op in &plan.ops {
            match op {
                Op::ClearData => inv.arg("C"),
                Op::Delete(field) => inv.arg("D").arg(field),
                Op::Set(field, value) => inv.arg("S").arg(field).arg(value),
                Op::Incr(field, by) => inv.arg("I").arg(field).arg(by.to_string()),
                Op::FlashSet(field, value) => inv.arg("F").arg(field).arg(value),
            };
        }

        let reply = self
            .run(&inv, false)
            .await
            .map_err(|e| self.store_error(e))?;
        let items = as_array(reply)?;
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

    async fn ping(&self) -> Result<(), StoreError> {
        let slot = self.next.fetch_add(1, Ordering::Relaxed) % self.slots.len().max(1);
        let mut conn = self.manager(slot).await.map_err(|e| self.store_error(e))?;
        redis::cmd("PING")
            .query_async::<()>(&mut conn)
            .await
            .map_err(|e| self.store_error(e))?;
        self.check_databases().await
    }
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

/// The load script's reply (see `redis/load.lua`): `N`, `C`, or
/// `F <max_age or -> <seconds left> <data bytes>\n` then data pairs and flash pairs
/// ([`super::pairs`]).
fn decode_load_reply(bytes: &[u8]) -> Result<Option<LoadedSession>, StoreError> {
    match bytes {
        b"N" => return Ok(None),
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
    let max_age = match parts.next() {
        Some("-") => None,
        Some(t) => Some(t.parse().map_err(|_| corrupt("max_age"))?),
        None => return Err(corrupt("max_age")),
    };
    let remaining = parts
        .next()
        .and_then(|t| t.parse().ok())
        .ok_or_else(|| corrupt("remaining lifetime"))?;
    let data_len: usize = parts
        .next()
        .and_then(|t| t.parse().ok())
        .ok_or_else(|| corrupt("load reply"))?;
    let body = &bytes[newline + 1..];
    if parts.next().is_some() || data_len > body.len() {
        return Err(corrupt("load reply"));
    }
    let (data, flash) = body.split_at(data_len);
    let pairs = |b| decode_pairs(b).map_err(corrupt);
    Ok(Some(LoadedSession {
        data: pairs(data)?,
        flash: pairs(flash)?,
        max_age,
        remaining,
        revision: None,
    }))
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
            decode_load_reply(b"F 600 2591999 17\n6:\"user\",5:\"ann\",5:\"msg\",4:\"hi\",")
                .unwrap()
                .expect("found");
        assert_eq!(found.data, fields(&[("\"user\"", "\"ann\"")]));
        assert_eq!(found.flash, fields(&[("\"msg\"", "\"hi\"")]));
        assert_eq!((found.max_age, found.remaining), (Some(600), 2_591_999));
        let empty = decode_load_reply(b"F - 5 0\n").unwrap().expect("found");
        assert!(empty.data.is_empty() && empty.flash.is_empty());
        assert_eq!((empty.max_age, empty.remaining), (None, 5));
    }

    #[test]
    fn malformed_load_replies_are_corrupt() {
        for bad in [
            &b"C"[..],
            b"",
            b"X",
            b"F - 5 0",
            b"F x 5 0\n",
            b"F - -5 0\n",
            b"F - 5\n",
            b"F - 5 0 extra\n",
            b"F - 5 99\n3:\"a\",1:1,",
            b"F - 5 3\n3:\"a\",1:1,",
            b"F - 5 0\n3:\"a\",0:,",
        ] {
            assert!(
                matches!(decode_load_reply(bad), Err(StoreError::Corrupt(_))),
                "{:?}",
                String::from_utf8_lossy(bad)
            );
        }
    }
}
