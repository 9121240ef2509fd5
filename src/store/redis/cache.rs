//! `store.cache`: the Redis engine's client-side session cache (docs/configuration.md,
//! "store.cache"; the design in docs/decisions.md, "A client-side session cache").
//!
//! A load may be answered from this sidecar's memory only while Redis guarantees to
//! report every change of the session: RESP3 client tracking. One dedicated connection
//! per data node (the *tracking connection*) sends `HELLO 3` and `CLIENT TRACKING ON
//! NOLOOP`, and while tracking is on, the loads and writes of sessions whose replies
//! may be cached are sent over it ([`Ticket::connection`]). Redis remembers the keys
//! that connection read and pushes an `invalidate` message to it when any other client
//! modifies one (Lua scripts included), and a `null` one on a flush; the connection's
//! own writes are not reported (`NOLOOP`), and its scripts read a session's keys again
//! after writing them, so Redis goes on tracking them. Pushes and replies come on the
//! one connection in the order Redis ran the commands, and the pushes are handled on the
//! connection's driver task before the replies after them are delivered.
//!
//! # The rules
//!
//! - An invalidation of a session's data key `<p>{<sk>}` or flash key `<p>{<sk>}:flash`
//!   drops that session's entry; a flush drops all. Other keys (write tokens, scratch,
//!   owner indexes) are ignored: every change of a session's state writes its data or
//!   flash key (the owner revocation and the admin API delete the data key).
//! - *Epoch.* Entries are inserted only while tracking is confirmed on. Whenever the
//!   tracking connection is lost (or replaced, or stops answering its pings), the whole
//!   cache is dropped and the epoch is bumped; nothing is inserted again until `CLIENT
//!   TRACKING` has answered OK on a new connection.
//! - *Pending generation.* A reply and an invalidation of its key may be handled in
//!   either order (the invalidation on the driver task, the reply by the caller), and a
//!   write sent over the pool before tracking came on may run after a load sent over
//!   the tracking connection. A load or write takes a [`Ticket`] (the epoch and the
//!   key's pending generation) before it is sent; every invalidation of the key (and
//!   every own write, and every reply of another call of it) bumps the generation of a
//!   key with calls in flight. The reply is inserted only when neither changed;
//!   otherwise the key's entry is dropped. So of overlapping calls none leaves an older
//!   state in place of a newer one already answered.
//! - Flash is never answered from here: a load that delivered flash, or a write that
//!   left flash pending, inserts nothing; an entry therefore records "no flash
//!   pending", and a flash written by any other client invalidates it through the
//!   flash key.
//! - A hit never skips a due refresh: on a refreshing route it is allowed only while the
//!   last refresh (`seen`) is younger than `session.touch_after`. An entry never outlives
//!   the session: its expiry is the key's TTL as the load read it, counted on the local
//!   monotonic clock from when the load was *sent* (so early, never late).
//! - Own writes (every apply, destroy by store key, bound extension) forget the entries
//!   they touch before they are sent and again when they end (or are cancelled); an
//!   apply sent over the tracking connection then inserts the state it wrote, with a
//!   ticket taken after that first forgetting.
//! - With Sentinel the tracking connection goes to the master in use ([`Resolve`]);
//!   the connector calls back when it replaces or leaves that master, which drops
//!   everything and makes the tracking task reconnect (to the new one). On a cluster
//!   there is one tracking connection per master serving slots, and a session's calls
//!   go to the one serving its hash slot ([`key_slot`]); the set of masters
//!   with their slots ([`Nodes::fingerprint`]) must be the same before and after
//!   tracking was turned on everywhere, and is compared again every [`PING_EVERY`]:
//!   any change drops everything and starts over.

use std::{
    collections::HashMap,
    future::Future,
    num::NonZeroUsize,
    pin::Pin,
    sync::{
        Arc, Mutex, MutexGuard, Weak,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use lru::LruCache;
use redis::{
    AsyncConnectionConfig, Client, PushInfo, PushKind, RedisError, Value,
    aio::MultiplexedConnection,
};
use tokio::sync::Notify;

use crate::store::{FieldMap, LoadedSession, Owner, Touch};

/// How often the tracking connection is pinged: a connection that stops answering (a
/// black hole) is left within this plus `store.timeout`, and the cache dropped.
const PING_EVERY: Duration = Duration::from_secs(1);
/// Waits between attempts to connect the tracking connection.
const MIN_BACKOFF: Duration = Duration::from_millis(50);
const MAX_BACKOFF: Duration = Duration::from_secs(2);

/// Where the tracking connections go, asked before they connect and again every
/// [`PING_EVERY`]: one server's client, a client for the master the sentinels name now,
/// or one per master of a cluster.
pub(super) type Resolve =
    Arc<dyn Fn() -> Pin<Box<dyn Future<Output = Result<Nodes, RedisError>> + Send>> + Send + Sync>;

/// The data nodes to track, and what identifies that set: when the fingerprint changes
/// (another master, a slot moved) everything is dropped and tracked anew.
pub(super) struct Nodes {
    pub(super) nodes: Vec<Node>,
    pub(super) fingerprint: String,
}

/// One data node: a RESP3 client for it, and the hash slots it serves (empty: every
/// key, one server or the Sentinel master).
pub(super) struct Node {
    pub(super) client: Client,
    pub(super) slots: Vec<(u16, u16)>,
}

/// A tracking connection as the loads and writes of the sessions it serves use it.
#[derive(Clone)]
pub(super) struct Route {
    slots: Vec<(u16, u16)>,
    conn: MultiplexedConnection,
}

impl Route {
    fn serves(&self, slot: u16) -> bool {
        self.slots.is_empty() || self.slots.iter().any(|&(a, b)| a <= slot && slot <= b)
    }
}

/// The cluster hash slot of a session's keys (`<p>{<sk>}`: the hash tag is the store
/// key): CRC-16/XMODEM of the tag, modulo 16384 (Redis Cluster specification).
pub(super) fn key_slot(tag: &[u8]) -> u16 {
    let mut crc: u16 = 0;
    for &byte in tag {
        crc ^= u16::from(byte) << 8;
        for _ in 0..8 {
            crc = if crc & 0x8000 != 0 {
                (crc << 1) ^ 0x1021
            } else {
                crc << 1
            };
        }
    }
    crc & 0x3fff
}

/// The slot ranges of one `CLUSTER NODES` master line as [`super::connector::masters_with_slots`]
/// gives it (`<addr> <slot or a-b>...`); importing/migrating markers (`[...]`) are not served.
pub(super) fn parse_slots(line: &str) -> Vec<(u16, u16)> {
    line.split_whitespace()
        .skip(1)
        .filter(|t| !t.starts_with('['))
        .filter_map(|t| match t.split_once('-') {
            Some((a, b)) => Some((a.parse().ok()?, b.parse().ok()?)),
            None => t.parse().ok().map(|n| (n, n)),
        })
        .collect()
}

/// What the load script reports for the cache (`redis/load.lua`, ARGV[7]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Freshness {
    /// This load refreshed the idle lifetime (wrote `seen` and the TTL).
    pub(super) refreshed: bool,
    /// Milliseconds since the last refresh (`seen`), by the Redis clock; `None` when the
    /// session has no `seen` (its next refreshing load refreshes).
    pub(super) since_seen_ms: Option<u64>,
    /// The data key's TTL in ms after the load (`PTTL`); `None` when it has none.
    pub(super) ttl_ms: Option<u64>,
    /// Milliseconds left to the absolute lifetime.
    pub(super) remaining_ms: u64,
}

/// One cached session: what a load without flash and without a refresh returned.
#[derive(Debug, Clone)]
pub(super) struct Entry {
    data: FieldMap,
    max_age: Option<u64>,
    owner: Option<Owner>,
    /// The session's expiry (TTL and absolute lifetime), local clock, early.
    expires: Instant,
    /// Its absolute deadline (for [`LoadedSession::remaining`]), local clock, early.
    deadline: Instant,
    /// Its last refresh, local clock, early; `None`: unknown (always due).
    seen: Option<Instant>,
}

impl Entry {
    /// The entry for a load sent at `sent`; `None` when its reply may not be cached (it
    /// delivered flash). A load that refreshed the idle lifetime may be cached: its own
    /// write is not reported to the connection that made it (`NOLOOP`), and its script
    /// read the key again after writing it, so the key stays tracked.
    pub(super) fn from_load(
        loaded: &LoadedSession,
        fresh: Freshness,
        sent: Instant,
    ) -> Option<Entry> {
        if !loaded.flash.is_empty() {
            return None;
        }
        let life = fresh
            .ttl_ms
            .map_or(fresh.remaining_ms, |t| t.min(fresh.remaining_ms));
        let expires = sent.checked_add(Duration::from_millis(life))?;
        let deadline = sent.checked_add(Duration::from_millis(fresh.remaining_ms))?;
        let seen = if fresh.refreshed {
            Some(sent)
        } else {
            fresh
                .since_seen_ms
                .and_then(|ms| sent.checked_sub(Duration::from_millis(ms)))
        };
        Some(Entry {
            data: loaded.data.clone(),
            max_age: loaded.max_age,
            owner: loaded.owner.clone(),
            expires,
            deadline,
            seen,
        })
    }

    /// The load this entry answers at `now`, or `None` when it may not (expired, or a
    /// refresh is due on a refreshing route).
    fn answer(&self, touch: Touch, touch_after: Duration, now: Instant) -> Option<LoadedSession> {
        if now >= self.expires {
            return None;
        }
        if touch == Touch::Refresh {
            let seen = self.seen?;
            if now.saturating_duration_since(seen) >= touch_after {
                return None;
            }
        }
        Some(LoadedSession {
            data: self.data.clone(),
            flash: FieldMap::new(),
            max_age: self.max_age,
            remaining: self.deadline.saturating_duration_since(now).as_secs(),
            revision: None,
            owner: self.owner.clone(),
            index_due: None,
        })
    }
}

/// What an `invalidate` push asks.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Invalidation {
    /// A flush (`null`): drop everything.
    All,
    /// These sessions' store keys (possibly none: only other keys changed).
    Sessions(Vec<String>),
}

/// Decode a push: `None` when it is no invalidation (or a malformed one, which is
/// treated as [`Invalidation::All`]: never guess that a change can be ignored).
pub(super) fn decode_invalidation(info: &PushInfo, prefix: &str) -> Option<Invalidation> {
    if info.kind != PushKind::Invalidate {
        return None;
    }
    Some(match info.data.first() {
        Some(Value::Array(keys)) => {
            let mut sessions = Vec::new();
            for key in keys {
                match key {
                    Value::BulkString(b) => {
                        if let Some(sk) = session_of_key(b, prefix) {
                            sessions.push(sk);
                        }
                    }
                    Value::SimpleString(s) => {
                        if let Some(sk) = session_of_key(s.as_bytes(), prefix) {
                            sessions.push(sk);
                        }
                    }
                    _ => return Some(Invalidation::All),
                }
            }
            Invalidation::Sessions(sessions)
        }
        _ => Invalidation::All,
    })
}

/// The store key of a session's data key `<p>{<sk>}` or flash key `<p>{<sk>}:flash`;
/// `None` for every other key.
fn session_of_key(key: &[u8], prefix: &str) -> Option<String> {
    let rest = key.strip_prefix(prefix.as_bytes())?;
    let rest = rest.strip_prefix(b"{")?;
    let close = rest.iter().position(|&b| b == b'}')?;
    let (sk, tail) = rest.split_at(close);
    let tail = &tail[1..];
    if !(tail.is_empty() || tail == b":flash") || sk.is_empty() {
        return None;
    }
    // Store keys are base64url (an owner index `{o.<ok>}` has a dot).
    if !sk
        .iter()
        .all(|b| b.is_ascii_alphanumeric() || *b == b'-' || *b == b'_')
    {
        return None;
    }
    std::str::from_utf8(sk).ok().map(str::to_owned)
}

/// The cache's counters, read at scrape time (metrics `store_cache_*`).
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct CacheStats {
    pub hits: u64,
    pub misses: u64,
    /// Sessions invalidated by Redis (a key of a session in an `invalidate` push).
    pub invalidations: u64,
    /// Whole-cache drops: the tracking connection was lost, or a flush.
    pub drops: u64,
    /// Entries now.
    pub entries: u64,
}

struct State {
    /// Bumped by every whole drop.
    epoch: u64,
    /// Tracking confirmed on for `epoch`.
    on: bool,
    entries: LruCache<String, Entry>,
    /// Keys with loads in flight: their count and generation.
    pending: HashMap<String, Pending>,
    /// The tracking connections of `epoch`, while `on` (none in unit tests).
    routes: Vec<Route>,
}

struct Pending {
    loads: usize,
    generation: u64,
}

/// The cache of one [`super::RedisStore`].
pub(super) struct Cache {
    state: Mutex<State>,
    hits: AtomicU64,
    misses: AtomicU64,
    invalidations: AtomicU64,
    drops: AtomicU64,
    /// The tracking task was started (on the first load: a runtime is there then).
    started: AtomicBool,
    /// Notified by every whole drop: the tracking task leaves a connection whose
    /// epoch is over (a Sentinel failover).
    dropped: Notify,
}

impl Cache {
    pub(super) fn new(max_entries: NonZeroUsize) -> Self {
        Cache {
            state: Mutex::new(State {
                epoch: 0,
                on: false,
                entries: LruCache::new(max_entries),
                pending: HashMap::new(),
                routes: Vec::new(),
            }),
            hits: AtomicU64::new(0),
            misses: AtomicU64::new(0),
            invalidations: AtomicU64::new(0),
            drops: AtomicU64::new(0),
            started: AtomicBool::new(false),
            dropped: Notify::new(),
        }
    }

    fn state(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The cached answer for `sk`, counted as a hit or a miss.
    pub(super) fn lookup(
        &self,
        sk: &str,
        touch: Touch,
        touch_after: Duration,
        now: Instant,
    ) -> Option<LoadedSession> {
        let mut state = self.state();
        let answer = if state.on {
            state
                .entries
                .get(sk)
                .and_then(|e| e.answer(touch, touch_after, now))
        } else {
            None
        };
        drop(state);
        let counter = if answer.is_some() {
            &self.hits
        } else {
            &self.misses
        };
        counter.fetch_add(1, Ordering::Relaxed);
        answer
    }

    /// Before a load or write of `sk` is sent: its ticket, with the tracking connection it
    /// must be sent on for its reply to be cached; `None` while tracking is not on (or no
    /// tracking connection serves the key's slot).
    pub(super) fn begin(&self, sk: &str) -> Option<Ticket<'_>> {
        let mut state = self.state();
        if !state.on {
            return None;
        }
        let conn = if state.routes.is_empty() {
            None
        } else {
            let slot = key_slot(sk.as_bytes());
            Some(state.routes.iter().find(|r| r.serves(slot))?.conn.clone())
        };
        let epoch = state.epoch;
        let pending = state.pending.entry(sk.to_owned()).or_insert(Pending {
            loads: 0,
            generation: 0,
        });
        pending.loads += 1;
        let generation = pending.generation;
        Some(Ticket {
            cache: self,
            key: sk.to_owned(),
            epoch,
            generation,
            conn,
        })
    }

    /// Drop `sk`'s entry, and make the loads of it in flight insert nothing.
    #[cfg(test)]
    pub(super) fn forget(&self, sk: &str) {
        forget(&mut self.state(), sk);
    }

    /// An invalidation from Redis.
    pub(super) fn invalidated(&self, what: Invalidation) {
        match what {
            Invalidation::All => {
                // A flush: everything may be gone, and tracking itself stays on.
                let mut state = self.state();
                state.entries.clear();
                for p in state.pending.values_mut() {
                    p.generation += 1;
                }
                drop(state);
                self.drops.fetch_add(1, Ordering::Relaxed);
            }
            Invalidation::Sessions(keys) => {
                if keys.is_empty() {
                    return;
                }
                let mut state = self.state();
                for sk in &keys {
                    forget(&mut state, sk);
                }
                drop(state);
                self.invalidations
                    .fetch_add(keys.len() as u64, Ordering::Relaxed);
            }
        }
    }

    /// Tracking is lost (or not yet on): drop everything, bump the epoch, and insert
    /// nothing until [`Cache::confirm`] with the epoch returned.
    pub(super) fn drop_all(&self) -> u64 {
        let mut state = self.state();
        let had = state.on || !state.entries.is_empty();
        state.epoch += 1;
        state.on = false;
        state.entries.clear();
        state.routes.clear();
        let epoch = state.epoch;
        drop(state);
        if had {
            self.drops.fetch_add(1, Ordering::Relaxed);
        }
        self.dropped.notify_one();
        epoch
    }

    /// Is tracking on for `epoch` still?
    fn is_current(&self, epoch: u64) -> bool {
        let state = self.state();
        state.on && state.epoch == epoch
    }

    /// Tracking is on again since [`Cache::drop_all`] returned `epoch`, on `routes`;
    /// `false` when another drop came in between (then it stays off).
    pub(super) fn confirm(&self, epoch: u64, routes: Vec<Route>) -> bool {
        let mut state = self.state();
        if state.epoch == epoch {
            state.on = true;
            state.routes = routes;
        }
        state.on && state.epoch == epoch
    }

    pub(super) fn stats(&self) -> CacheStats {
        let entries = self.state().entries.len() as u64;
        CacheStats {
            hits: self.hits.load(Ordering::Relaxed),
            misses: self.misses.load(Ordering::Relaxed),
            invalidations: self.invalidations.load(Ordering::Relaxed),
            drops: self.drops.load(Ordering::Relaxed),
            entries,
        }
    }

    /// Start the tracking task once (on the first load, from the runtime).
    pub(super) fn ensure_tracking(
        self: &Arc<Self>,
        resolve: &Resolve,
        prefix: &str,
        timeout: Duration,
    ) {
        if self.started.load(Ordering::Acquire) || self.started.swap(true, Ordering::AcqRel) {
            return;
        }
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            self.started.store(false, Ordering::Release);
            return;
        };
        runtime.spawn(track(
            Arc::downgrade(self),
            resolve.clone(),
            prefix.to_owned(),
            timeout,
        ));
    }
}

fn forget(state: &mut State, sk: &str) {
    state.entries.pop(sk);
    if let Some(p) = state.pending.get_mut(sk) {
        p.generation += 1;
    }
}

/// A load or write in flight, taken before it is sent: its reply may be inserted only if
/// it came over the ticket's tracking connection and nothing happened to the key (or
/// to tracking) since.
pub(super) struct Ticket<'a> {
    cache: &'a Cache,
    key: String,
    epoch: u64,
    generation: u64,
    conn: Option<MultiplexedConnection>,
}

impl Ticket<'_> {
    /// The tracking connection to send the call on (`None` in unit tests).
    pub(super) fn connection(&self) -> Option<MultiplexedConnection> {
        self.conn.clone()
    }

    /// Every whole drop: the call failed on the tracking connection.
    pub(super) fn drop_all(&self) {
        self.cache.drop_all();
    }

    /// The reply arrived; [`Ticket::arrived`] with what it may cache.
    #[cfg(test)]
    pub(super) fn insert(self, entry: Entry) -> bool {
        self.arrived(Some(entry))
    }

    /// The load's reply arrived, with the entry it may cache (`None`: nothing, e.g. it
    /// delivered flash or found no session). The entry is inserted unless the key was
    /// invalidated, written, or its other loads answered, or tracking was lost, since
    /// the ticket was taken; otherwise the key's entry is dropped. Every arrival moves
    /// the key's generation on, so of loads that overlap (whose replies may arrive in
    /// another order than Redis ran them, on different connections) at most the first
    /// to arrive inserts, and a later one drops it: no older state replaces a newer one
    /// already answered. `true` when inserted.
    pub(super) fn arrived(self, entry: Option<Entry>) -> bool {
        let mut state = self.cache.state();
        let (on, epoch) = (state.on, state.epoch);
        let current = match state.pending.get_mut(&self.key) {
            Some(p) => {
                let same = p.generation == self.generation;
                p.generation += 1;
                same
            }
            None => false,
        };
        match entry {
            Some(entry) if current && on && epoch == self.epoch => {
                state.entries.put(self.key.clone(), entry);
                true
            }
            _ => {
                state.entries.pop(&self.key);
                false
            }
        }
    }
}

impl Drop for Ticket<'_> {
    fn drop(&mut self) {
        let mut state = self.cache.state();
        if let Some(p) = state.pending.get_mut(&self.key) {
            p.loads = p.loads.saturating_sub(1);
            if p.loads == 0 {
                state.pending.remove(&self.key);
            }
        }
    }
}

/// Drops the entries of the sessions a write touches when it ends, however it ends
/// (a call cancelled at `store.timeout` may still have been applied).
pub(super) struct Forgetting<'a> {
    pub(super) cache: Option<&'a Cache>,
    pub(super) keys: Vec<String>,
}

impl<'a> Forgetting<'a> {
    /// The write's reply was inserted for `sk` (its outcome is known): do not forget it
    /// again when dropped.
    pub(super) fn keep(&mut self, sk: &str) {
        self.keys.retain(|k| k != sk);
    }

    /// Forget `keys` now and again when dropped.
    pub(super) fn new(cache: Option<&'a Cache>, keys: Vec<String>) -> Self {
        if let Some(cache) = cache {
            let mut state = cache.state();
            for sk in &keys {
                forget(&mut state, sk);
            }
        }
        Forgetting { cache, keys }
    }
}

impl Drop for Forgetting<'_> {
    fn drop(&mut self) {
        if let Some(cache) = self.cache {
            let mut state = cache.state();
            for sk in &self.keys {
                forget(&mut state, sk);
            }
        }
    }
}

// ---------------------------------------------------------------------------------------
// the tracking connection (I/O)
// ---------------------------------------------------------------------------------------

/// The tracking task: connect, enable tracking, confirm; on any loss drop the cache and
/// start over. Ends when the store (and so the cache) is gone.
async fn track(cache: Weak<Cache>, resolve: Resolve, prefix: String, timeout: Duration) {
    let mut backoff = MIN_BACKOFF;
    loop {
        let Some(epoch) = cache.upgrade().map(|c| c.drop_all()) else {
            return;
        };
        let result = track_once(&cache, &resolve, &prefix, timeout, epoch).await;
        if cache.upgrade().map(|c| c.drop_all()).is_none() {
            return;
        }
        match result {
            Ok(true) => {
                tracing::warn!(
                    "redis cache: a tracking connection closed, or the nodes changed; cache dropped, reconnecting"
                );
                backoff = MIN_BACKOFF;
            }
            Ok(false) => {}
            Err(e) => {
                tracing::warn!(error = %e, "redis cache: tracking connection lost or refused; cache dropped, reconnecting");
            }
        }
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(MAX_BACKOFF);
    }
}

fn lost(what: &'static str) -> RedisError {
    RedisError::from((redis::ErrorKind::Io, what))
}

/// The data nodes to track now, bounded by `timeout`.
async fn resolve_nodes(resolve: &Resolve, timeout: Duration) -> Result<Nodes, RedisError> {
    tokio::time::timeout(timeout * 2, resolve())
        .await
        .map_err(|_| lost("tracking: the data nodes not known within the timeout"))?
}

/// One tracking connection to one node, tracking on.
async fn connect_tracking(
    cache: &Weak<Cache>,
    client: &Client,
    prefix: &str,
    timeout: Duration,
    gone: tokio::sync::mpsc::UnboundedSender<()>,
) -> Result<redis::aio::MultiplexedConnection, RedisError> {
    let pushes = cache.clone();
    let push_prefix = prefix.to_owned();
    // Runs on the connection's driver task, in the order Redis sent the pushes: a
    // short lock, no await.
    let on_push = move |info: PushInfo| -> Result<(), ()> {
        if info.kind == PushKind::Disconnection {
            if let Some(c) = pushes.upgrade() {
                c.drop_all();
            }
            let _ = gone.send(());
        } else if let (Some(c), Some(what)) =
            (pushes.upgrade(), decode_invalidation(&info, &push_prefix))
        {
            c.invalidated(what);
        }
        Ok(())
    };
    let config = AsyncConnectionConfig::new()
        .set_connection_timeout(Some(timeout))
        .set_response_timeout(Some(timeout))
        .set_push_sender(on_push);
    let mut conn = tokio::time::timeout(
        timeout * 2,
        client.get_multiplexed_async_connection_with_config(&config),
    )
    .await
    .map_err(|_| lost("tracking connection: connect timed out"))??;
    let on: Value = tokio::time::timeout(
        timeout,
        redis::cmd("CLIENT")
            .arg("TRACKING")
            .arg("ON")
            .arg("NOLOOP")
            .query_async(&mut conn),
    )
    .await
    .map_err(|_| lost("tracking connection: CLIENT TRACKING timed out"))??;
    if !matches!(on, Value::Okay) && on != Value::SimpleString("OK".to_owned()) {
        return Err(lost("tracking connection: CLIENT TRACKING not OK"));
    }
    Ok(conn)
}

/// One life of the tracking connections (one per data node). `Ok(true)` when tracking
/// was on and then a connection closed or the nodes changed, `Ok(false)` when it never
/// came on (the nodes changed meanwhile) or the store is gone.
async fn track_once(
    cache: &Weak<Cache>,
    resolve: &Resolve,
    prefix: &str,
    timeout: Duration,
    epoch: u64,
) -> Result<bool, RedisError> {
    let nodes = resolve_nodes(resolve, timeout).await?;
    if nodes.nodes.is_empty() {
        return Err(lost("tracking: no data node"));
    }
    let (gone_tx, mut gone_rx) = tokio::sync::mpsc::unbounded_channel::<()>();
    let mut conns = Vec::with_capacity(nodes.nodes.len());
    let mut routes = Vec::with_capacity(nodes.nodes.len());
    for node in &nodes.nodes {
        let conn = connect_tracking(cache, &node.client, prefix, timeout, gone_tx.clone()).await?;
        routes.push(Route {
            slots: node.slots.clone(),
            conn: conn.clone(),
        });
        conns.push(conn);
    }
    drop(gone_tx);
    // Every node is tracked since before this check: if the nodes are still the same,
    // every change from now on is reported.
    if resolve_nodes(resolve, timeout).await?.fingerprint != nodes.fingerprint {
        return Ok(false);
    }
    match cache.upgrade() {
        Some(c) if c.confirm(epoch, routes) => {}
        _ => return Ok(false),
    }
    tracing::info!(nodes = conns.len(), "redis cache: tracking on");
    let current = || cache.upgrade().is_some_and(|c| c.is_current(epoch));
    loop {
        let Some(strong) = cache.upgrade() else {
            return Ok(false);
        };
        tokio::select! {
            _ = gone_rx.recv() => return Ok(true),
            () = strong.dropped.notified() => {
                if !current() {
                    return Ok(true);
                }
            }
            () = tokio::time::sleep(PING_EVERY) => {
                drop(strong);
                for conn in &mut conns {
                    let _: Value = tokio::time::timeout(timeout, redis::cmd("PING").query_async(conn))
                        .await
                        .map_err(|_| lost("tracking connection: PING unanswered"))??;
                }
                if resolve_nodes(resolve, timeout).await?.fingerprint != nodes.fingerprint {
                    return Ok(true);
                }
                if !current() {
                    return Ok(true);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const P: &str = "session:";

    fn nz(n: usize) -> NonZeroUsize {
        NonZeroUsize::new(n).unwrap()
    }

    fn loaded(user: &str) -> LoadedSession {
        let mut data = FieldMap::new();
        data.insert("\"user\"".into(), format!("\"{user}\""));
        LoadedSession {
            data,
            remaining: 100,
            ..LoadedSession::default()
        }
    }

    fn fresh() -> Freshness {
        Freshness {
            refreshed: false,
            since_seen_ms: Some(0),
            ttl_ms: Some(60_000),
            remaining_ms: 100_000,
        }
    }

    fn entry(user: &str, sent: Instant) -> Entry {
        Entry::from_load(&loaded(user), fresh(), sent).unwrap()
    }

    const AFTER: Duration = Duration::from_secs(10);

    fn on(cache: &Cache) {
        let epoch = cache.drop_all();
        assert!(cache.confirm(epoch, Vec::new()));
    }

    fn user(l: Option<LoadedSession>) -> Option<String> {
        l.map(|l| l.data["\"user\""].trim_matches('"').to_owned())
    }

    fn push(kind: PushKind, data: Vec<Value>) -> PushInfo {
        PushInfo { kind, data }
    }

    fn bulk(s: &str) -> Value {
        Value::BulkString(s.as_bytes().to_vec())
    }

    #[test]
    fn invalidations_decode() {
        let keys = push(
            PushKind::Invalidate,
            vec![Value::Array(vec![
                bulk("session:{abc-_9}"),
                bulk("session:{def}:flash"),
                bulk("session:{abc}:w:0123"),
                bulk("session:{abc}:tmp"),
                bulk("session:{o.xyz}"),
                bulk("other:{abc}"),
                bulk("session:abc"),
                bulk("session:{}"),
            ])],
        );
        assert_eq!(
            decode_invalidation(&keys, P),
            Some(Invalidation::Sessions(vec!["abc-_9".into(), "def".into()]))
        );
        let flush = push(PushKind::Invalidate, vec![Value::Nil]);
        assert_eq!(decode_invalidation(&flush, P), Some(Invalidation::All));
        let odd = push(
            PushKind::Invalidate,
            vec![Value::Array(vec![Value::Int(1)])],
        );
        assert_eq!(decode_invalidation(&odd, P), Some(Invalidation::All));
        let empty = push(PushKind::Invalidate, vec![]);
        assert_eq!(decode_invalidation(&empty, P), Some(Invalidation::All));
        let other = push(PushKind::Message, vec![bulk("session:{abc}")]);
        assert_eq!(decode_invalidation(&other, P), None);
    }

    #[test]
    fn nothing_is_inserted_or_answered_before_tracking_is_confirmed() {
        let cache = Cache::new(nz(10));
        assert!(cache.begin("a").is_none());
        let epoch = cache.drop_all();
        assert!(cache.begin("a").is_none());
        assert!(cache.confirm(epoch, Vec::new()));
        let now = Instant::now();
        let t = cache.begin("a").unwrap();
        assert!(t.insert(entry("ann", now)));
        assert_eq!(
            user(cache.lookup("a", Touch::Keep, AFTER, now)),
            Some("ann".into())
        );
        // A confirmation of an older epoch does not turn tracking on.
        let old = cache.drop_all();
        let _newer = cache.drop_all();
        assert!(!cache.confirm(old, Vec::new()));
        assert!(cache.begin("a").is_none());
        assert_eq!(cache.lookup("a", Touch::Keep, AFTER, now), None);
    }

    #[test]
    fn an_invalidation_before_the_reply_supersedes_it() {
        let cache = Cache::new(nz(10));
        on(&cache);
        let now = Instant::now();
        let t = cache.begin("a").unwrap();
        cache.invalidated(Invalidation::Sessions(vec!["a".into()]));
        assert!(!t.insert(entry("old", now)));
        assert_eq!(cache.lookup("a", Touch::Keep, AFTER, now), None);
        // Another key's invalidation does not matter; a later load inserts.
        let t = cache.begin("a").unwrap();
        cache.invalidated(Invalidation::Sessions(vec!["b".into()]));
        assert!(t.insert(entry("new", now)));
        // Two loads in flight: an invalidation between them stops both (the second
        // was sent before it, too), and a third that overlapped their replies too.
        cache.forget("a");
        let t1 = cache.begin("a").unwrap();
        let t2 = cache.begin("a").unwrap();
        cache.forget("a");
        let t3 = cache.begin("a").unwrap();
        assert!(!t1.insert(entry("x", now)));
        assert!(!t2.insert(entry("x", now)));
        assert!(!t3.insert(entry("y", now)));
        let t4 = cache.begin("a").unwrap();
        assert!(t4.insert(entry("y", now)));
        assert!(
            cache.state().pending.is_empty(),
            "tickets leave nothing behind"
        );
        // A drop of the whole cache stops a ticket too, and a flush.
        let t = cache.begin("a").unwrap();
        on(&cache);
        assert!(!t.insert(entry("z", now)));
        let t = cache.begin("a").unwrap();
        cache.invalidated(Invalidation::All);
        assert!(!t.insert(entry("z", now)));
        let s = cache.stats();
        assert_eq!((s.invalidations, s.entries), (2, 0));
    }

    /// Replies of overlapping loads may arrive in another order than Redis ran them
    /// (different pool connections): the first to arrive inserts, a later one drops it,
    /// so an older state never replaces a newer one already answered.
    #[test]
    fn overlapping_loads_leave_no_entry_behind() {
        let cache = Cache::new(nz(10));
        on(&cache);
        let now = Instant::now();
        let older = cache.begin("a").unwrap();
        let newer = cache.begin("a").unwrap();
        assert!(newer.insert(entry("new", now)));
        assert_eq!(
            user(cache.lookup("a", Touch::Keep, AFTER, now)),
            Some("new".into())
        );
        assert!(!older.insert(entry("old", now)));
        assert_eq!(cache.lookup("a", Touch::Keep, AFTER, now), None);
        // An arrival with nothing to cache (flash delivered, no session) drops it too.
        assert!(cache.begin("a").unwrap().insert(entry("x", now)));
        assert!(!cache.begin("a").unwrap().arrived(None));
        assert_eq!(cache.lookup("a", Touch::Keep, AFTER, now), None);
    }

    #[test]
    fn own_writes_forget_at_once_and_when_done() {
        let cache = Cache::new(nz(10));
        on(&cache);
        let now = Instant::now();
        assert!(cache.begin("a").unwrap().insert(entry("ann", now)));
        let t = cache.begin("a").unwrap();
        let w = Forgetting::new(Some(&cache), vec!["a".into()]);
        assert_eq!(cache.lookup("a", Touch::Keep, AFTER, now), None);
        // A load sent while the write is in flight may read either state.
        let during = cache.begin("a").unwrap();
        drop(w);
        assert!(!t.insert(entry("old", now)));
        assert!(!during.insert(entry("old", now)));
    }

    #[test]
    fn hits_respect_touch_after_and_expiry() {
        let cache = Cache::new(nz(10));
        on(&cache);
        let sent = Instant::now();
        let mut f = fresh();
        f.since_seen_ms = Some(4_000);
        f.ttl_ms = Some(30_000);
        f.remaining_ms = 20_000;
        let e = Entry::from_load(&loaded("ann"), f, sent).unwrap();
        assert!(cache.begin("a").unwrap().insert(e));
        let at = |s: u64| sent + Duration::from_secs(s);
        // seen 4 s before the send; touch_after 10 s: due from 6 s after it.
        assert!(cache.lookup("a", Touch::Refresh, AFTER, at(5)).is_some());
        assert!(cache.lookup("a", Touch::Refresh, AFTER, at(6)).is_none());
        // A no-touch route may use it until the session's expiry (the absolute limit
        // here, 20 s, before the TTL).
        let hit = cache.lookup("a", Touch::Keep, AFTER, at(12)).unwrap();
        assert_eq!(hit.remaining, 8);
        assert!(hit.flash.is_empty() && hit.index_due.is_none());
        assert!(cache.lookup("a", Touch::Keep, AFTER, at(20)).is_none());
        // No `seen`: a refreshing route always goes to the store.
        f.since_seen_ms = None;
        let e = Entry::from_load(&loaded("bob"), f, sent).unwrap();
        assert!(cache.begin("b").unwrap().insert(e));
        assert!(cache.lookup("b", Touch::Refresh, AFTER, sent).is_none());
        assert!(cache.lookup("b", Touch::Keep, AFTER, sent).is_some());
        let s = cache.stats();
        assert_eq!((s.hits, s.misses), (3, 3));
    }

    #[test]
    fn loads_with_flash_are_not_cached_and_refreshing_ones_are() {
        let now = Instant::now();
        let mut with_flash = loaded("ann");
        with_flash.flash.insert("\"m\"".into(), "1".into());
        assert!(Entry::from_load(&with_flash, fresh(), now).is_none());
        let f = Freshness {
            refreshed: true,
            since_seen_ms: None,
            ..fresh()
        };
        let e = Entry::from_load(&loaded("ann"), f, now).unwrap();
        // Refreshed at the load: not due again before touch_after.
        assert!(e.answer(Touch::Refresh, AFTER, now).is_some());
        assert!(e.answer(Touch::Refresh, AFTER, now + AFTER).is_none());
    }

    #[test]
    fn key_slots_follow_the_cluster_specification() {
        // The specification's check value, and slots `CLUSTER KEYSLOT` gives.
        assert_eq!(key_slot(b"123456789"), 0x31c3);
        assert_eq!(key_slot(b"foo"), 12182);
        assert_eq!(key_slot(b""), 0);
    }

    #[test]
    fn slot_ranges_parse() {
        assert_eq!(
            parse_slots("127.0.0.1:7000 0-5460 5462 [5461->-abc] 10923-16383"),
            vec![(0, 5460), (5462, 5462), (10923, 16383)]
        );
        assert!(parse_slots("127.0.0.1:7000").is_empty());
    }

    #[test]
    fn the_bound_holds_least_recently_used_first() {
        let cache = Cache::new(nz(2));
        on(&cache);
        let now = Instant::now();
        for k in ["a", "b"] {
            assert!(cache.begin(k).unwrap().insert(entry(k, now)));
        }
        assert!(cache.lookup("a", Touch::Keep, AFTER, now).is_some());
        assert!(cache.begin("c").unwrap().insert(entry("c", now)));
        assert_eq!(cache.stats().entries, 2);
        assert!(cache.lookup("b", Touch::Keep, AFTER, now).is_none());
        assert!(cache.lookup("a", Touch::Keep, AFTER, now).is_some());
        assert!(cache.lookup("c", Touch::Keep, AFTER, now).is_some());
    }
}
