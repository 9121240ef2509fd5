//! The memcached engine (docs/protocol.md §9.7): N servers, consistent hashing, CAS merges.
//!
//! # Client
//!
//! A small in-house async client for the meta protocol (`client`): `mg`/`ms`/`md`
//! on `tokio::net::TcpStream`, a bounded pool per server, several commands per write.
//! Not the `memcache` crate: its async client (`exp`) is experimental (API may change in
//! any minor release), cannot route a session's two items by the *session's* key, has
//! no CAS-conditional delete in its high-level API and no pipelining of two reads; its
//! stable client does blocking socket I/O, which would stall a runtime thread.
//!
//! # Key layout
//!
//! For a session id `id`, `sk = id.store_key()` (base64url of SHA-256 of the id, 43
//! characters) and `p = store.key_prefix`:
//!
//! | item | content |
//! |---|---|
//! | `<p><sk>` | the session: creation, refresh time, max-age, owner, bound, client, data |
//! | `<p><sk>:flash` | pending flash (notifications); absent when there is none |
//! | `<p>o.<ok>` | owner index (`ok` = [`OwnerKey`], 43 characters): store key → bound |
//!
//! Both items of a session are on the same server: the server is chosen from `sk`, not
//! from the item key (`ring`: rendezvous hashing over SHA-256, stable across builds). An
//! owner index is placed by `o.<ok>`, wherever that lands; its `.` keeps it apart from
//! every session key (base64url has none). Keys are checked against memcached's rules
//! (≤ 250 bytes, no spaces or control characters) at construction, for the longest key
//! the prefix can produce; store keys handed to the owner primitives are checked to be
//! 43 base64url characters before they go into a command.
//!
//! # Value encoding (`item`)
//!
//! ASCII text, never a language-specific serialization, never empty (memcached clients
//! reserve empty values as lease placeholders):
//!
//! ```text
//! session: "S2 <created ms> <max_age s|-> <refreshed ms|-> <bound ms|-> <parts>\n"
//!          [owner netstring] [ip netstring, user agent netstring] then pairs
//! flash:   "F1\n" then pairs
//! index:   "I1\n" then "<store key> <bound ms>\n" per entry
//! pairs:   <field netstring><value netstring>...   netstring = "<len>:<bytes>,"
//! ```
//!
//! Times are the sidecar's unix clock in ms (memcached has none to share). `<parts>` says
//! what follows the header: `o` (owner: its JSON string literal), `c` (client record),
//! `oc`, or `-`. A field is the JSON string literal of the user key (quotes included), a
//! value its JSON text, exactly as in [`crate::store`]'s field maps: e.g.
//! `S2 1700000000000 - 1700000000000 - -\n6:"user",5:"ann",`. Items written before owners
//! (`S1 <created ms> <max_age s|->\n` then pairs) are still read: no owner, no client,
//! refresh time unknown (a refresh is due); the next write stores them as `S2`. Length
//! prefixes make decoding exact without a JSON parser, and bytes read from the store are
//! validated as untrusted input (docs/security.md §2).
//!
//! # Lifetimes
//!
//! Every item carries exptime = ⌈min(idle, time left to `absolute_ttl`, time left to the
//! bound)⌉ + 1 s, where idle is `max_age` or `session.ttl` and the bound is an owned
//! session's ([`owners::capped_expiry`]). memcached's clock ticks once a second, so a TTL of n
//! ends between n − 1 and n seconds later; the extra second makes an item never expire
//! before its logical TTL (so an idle session may live up to ~1 s longer). The absolute
//! limit and an owned session's bound are enforced exactly on every access from the
//! stored times (the sidecar's clock: sidecars sharing the servers need synchronised
//! clocks), so a TTL a touch set too long never lets a session outlive its index entry. memcached reads
//! exptime > 30 days (2 592 000 s) as a Unix time: larger TTLs are sent as `now + ttl`.
//!
//! A load is one round trip: `mg <p><sk> v c t T<exp>` (read + refresh with
//! `session.ttl`) and `mg <p><sk>:flash v c t`, pipelined. When the session has its own
//! `max_age` or is closer to its absolute limit or its bound than `session.ttl` (the right
//! TTL is only known after reading the item), a correcting touch is sent without waiting
//! for its reply (the connection's next exchange reads and discards it): still one round
//! trip. A second round trip follows only to consume pending flash (the CAS-conditional
//! delete must be answered before the flash may be delivered).
//!
//! # Touch and the refresh time (`session.touch_after`, `Touch::Keep`)
//!
//! Recording the refresh time needs a write of the item (a touch changes only the TTL),
//! and a write on every load would double the default read path's cost and change the
//! item's CAS under the request's own write. So the time is written only where it
//! decides something:
//!
//! - `touch_after` 0 (the default): every load refreshes with the touch above, as before,
//!   and writes nothing. The refresh time the admin API shows (`last_seen`) is derived
//!   from the TTL left: a refresh set ⌈idle⌉ + 1 s, so it happened at now + TTL left −
//!   that (never before the refresh time the item records from its last write; ±1 s, and
//!   earlier than the truth when the refresh was capped by a deadline).
//! - `touch_after` > 0: loads read without touching (`mg <p><sk> v c t`) and compare the
//!   item's refresh time with it. Not due (most loads): nothing is written, one round
//!   trip. Due (at most once per `touch_after` and session, or an item without the time):
//!   `ms <p><sk> … T<exp> C<cas>` with the new refresh time, followed by `mg <p><sk>
//!   T<exp>` (the refresh stands even if a concurrent write won the CAS), both sent
//!   without waiting: still one round trip (merged into the flash delete when there is
//!   one). Its CAS changed, so such a load hands no revision to the request's write,
//!   which reads again. `last_seen` is the recorded time (lags by up to `touch_after`).
//! - `Touch::Keep`: `mg` without `T`, no write; flash is still consumed.
//!
//! An owned session's load reports [`LoadedSession::index_due`] when it refreshed, from
//! the item's bound ([`owners::index_due`]): no extra round trip.
//!
//! # Owners (`owners`)
//!
//! A write records the owner change (`Attach`: owner and bound = now + `bound_ms`;
//! `Detach` clears both) and the client (creating targets only) in the session item it
//! writes anyway: an attach costs no extra command. Move carries owner, bound, creation
//! time and client. The index item is a CAS loop of its own (see `owners`); its TTL is
//! its latest entry's bound, so an index whose sessions are all gone expires by itself.
//!
//! # Atomicity (no server-side scripts; `write`)
//!
//! - **Existing**: `mg` (value + CAS) → [`apply_ops`](super::apply_ops) in Rust →
//!   `ms … C<cas>`; on `EX` (someone else wrote) retry from the read, at most
//!   [`MAX_CAS_ATTEMPTS`] times with a small jittered backoff, then
//!   `Unavailable("too much contention")` (503). A miss on read or `NF` on write is
//!   [`WriteOutcome::Gone`]: a destroyed session is never revived. Flash set by the
//!   plan is merged afterwards into the flash item with its own CAS loop (`ms … C<cas>`,
//!   or `ME` add when absent): the session item is the commit point, so a rejected or
//!   `Gone` write changes nothing; if the store fails between the two steps the data
//!   change stands and the call reports the error.
//! - **Create**: `ms … ME` (add).
//! - **Destroy**: `md` of both items, unconditionally: destroy wins; a concurrent writer's
//!   CAS then fails with `NF` and it answers `Gone`.
//! - **Move** (regenerate): read the old session, `ME`-add the new items, then `md old
//!   C<cas>`. If the old session changed meanwhile (`EX`) the new items are deleted and
//!   the move retries from the read; if it is gone (`NF`) they are deleted and the move is
//!   `Gone`. Then the old flash is deleted with CAS: if a concurrent load of the old id
//!   consumed it first, it is removed from the new session (no double delivery); if flash
//!   was added to the old id meanwhile it is carried over. Window: between the add and
//!   the delete (one round trip) both ids answer a load.
//! - **Flash delivery**: `md <p><sk>:flash C<cas>` of the version read; only the request
//!   whose delete succeeds delivers it (exactly once). If flash was added meanwhile (`EX`)
//!   this load delivers nothing and the next one delivers everything.

mod client;
mod item;
mod owners_index;
mod ring;
mod write;

use std::{
    sync::atomic::{AtomicU64, Ordering},
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use self::{
    client::{ClientError, Cmd, Lease, Mode, Reply, Server, valid_key},
    item::{Stored, decode_flash, decode_session, encode_session},
    ring::Ring,
};
use super::{
    FieldMap, Lifetimes, LoadedSession, OwnerKey, Revision, SessionInfo, SessionStore, StoreError,
    Touch, WriteOutcome, WritePlan,
    owners::{self, capped_expiry},
};
use crate::{config::MemcachedOptions, cookie::SessionId};

/// CAS attempts per write before giving up with 503.
pub const MAX_CAS_ATTEMPTS: u64 = 32;
/// memcached reads an exptime above this (30 days) as an absolute Unix time.
pub const MAX_RELATIVE_EXPTIME: u64 = 2_592_000;
/// Length of `SessionId::store_key()`: base64url without padding of 32 bytes.
const STORE_KEY_LEN: usize = 43;
const FLASH_SUFFIX: &str = ":flash";
// Every prefix the configuration accepts (printable ASCII without spaces, at most
// `MAX_KEY_PREFIX_LEN` bytes) makes valid memcached keys.
const _: () = assert!(
    crate::config::MAX_KEY_PREFIX_LEN + STORE_KEY_LEN + FLASH_SUFFIX.len() <= client::MAX_KEY_LEN
);
/// Owner index items are `<prefix>o.<owner key>`: shorter than a flash key.
const INDEX_INFIX: &str = "o.";
const _: () = assert!(INDEX_INFIX.len() <= FLASH_SUFFIX.len());

/// CAS retry counters (conflicts that forced a re-read), for tests and metrics.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CasStats {
    /// Writes that went through a CAS loop (updates and moves).
    pub writes: u64,
    /// Conflicts over all of them.
    pub retries: u64,
    /// Most conflicts a single write met.
    pub max_retries: u64,
}

impl CasStats {
    /// Mean conflicts per write.
    pub fn mean(&self) -> f64 {
        if self.writes == 0 {
            0.0
        } else {
            self.retries as f64 / self.writes as f64
        }
    }
}

#[derive(Debug, Default)]
struct Counters {
    writes: AtomicU64,
    retries: AtomicU64,
    max_retries: AtomicU64,
}

impl Counters {
    fn record(&self, retries: u64) {
        self.writes.fetch_add(1, Ordering::Relaxed);
        self.retries.fetch_add(retries, Ordering::Relaxed);
        self.max_retries.fetch_max(retries, Ordering::Relaxed);
    }
}

/// The memcached engine.
#[derive(Debug)]
pub struct MemcachedStore {
    servers: Box<[Server]>,
    ring: Ring,
    key_prefix: String,
    lifetimes: Lifetimes,
    counters: Counters,
}

/// The items of one session and the server that holds them.
struct Keys {
    server: usize,
    data: String,
    flash: String,
}

impl Keys {
    /// Unconditional deletes of the session item and its flash (destroy, expiry).
    fn delete_both(&self) -> [Cmd<'_>; 2] {
        [
            Cmd::Delete {
                key: &self.data,
                cas: None,
            },
            Cmd::Delete {
                key: &self.flash,
                cas: None,
            },
        ]
    }
}

/// The flash item as read: its CAS and content.
type FlashRead = Option<(u64, FieldMap)>;

impl MemcachedStore {
    /// Build the store from its validated options (see [`crate::config::Storage`]),
    /// and the shared `store.key_prefix` (calls are bounded by `store.timeout` in
    /// [`super::timed::TimedStore`]). No I/O: connections are opened
    /// on first use, so the sidecar starts while memcached is down. Infallible: the
    /// configuration checked every server and the prefix
    /// (docs/configuration.md#check-is-authoritative).
    pub fn new(
        options: &MemcachedOptions,
        key_prefix: &str,
        lifetimes: Lifetimes,
    ) -> MemcachedStore {
        debug_assert!(
            valid_key(&format!(
                "{key_prefix}{}{FLASH_SUFFIX}",
                "x".repeat(STORE_KEY_LEN)
            )),
            "store.key_prefix makes invalid memcached keys; the configuration refuses it"
        );
        MemcachedStore {
            servers: options
                .servers
                .iter()
                .map(|s| Server::new(s.clone(), options.max_connections))
                .collect(),
            ring: Ring::new(options.servers.clone()),
            key_prefix: key_prefix.to_owned(),
            lifetimes,
            counters: Counters::default(),
        }
    }

    /// CAS conflicts met by writes so far.
    pub fn cas_retries(&self) -> CasStats {
        CasStats {
            writes: self.counters.writes.load(Ordering::Relaxed),
            retries: self.counters.retries.load(Ordering::Relaxed),
            max_retries: self.counters.max_retries.load(Ordering::Relaxed),
        }
    }

    /// Start counting CAS conflicts from zero.
    pub fn reset_cas_retries(&self) {
        self.counters.writes.store(0, Ordering::Relaxed);
        self.counters.retries.store(0, Ordering::Relaxed);
        self.counters.max_retries.store(0, Ordering::Relaxed);
    }

    /// Index of the server (in `store.storage.servers`) that holds `id`'s items.
    pub fn server_for(&self, id: &SessionId) -> usize {
        self.ring.pick(&id.store_key())
    }

    fn keys(&self, id: &SessionId) -> Keys {
        self.keys_of(&id.store_key())
    }

    /// The items of the session with store key `sk` (checked by the caller when it comes
    /// from outside: [`owners::is_handle`]).
    fn keys_of(&self, sk: &str) -> Keys {
        Keys {
            server: self.ring.pick(sk),
            flash: format!("{}{sk}{FLASH_SUFFIX}", self.key_prefix),
            data: format!("{}{sk}", self.key_prefix),
        }
    }

    async fn lease(&self, server: usize) -> Result<Lease<'_>, StoreError> {
        let server = self
            .servers
            .get(server)
            .ok_or_else(|| StoreError::Unavailable("memcached: no server configured".into()))?;
        server.lease().await.map_err(unavailable)
    }

    fn idle_ms(&self, max_age: Option<u64>) -> u64 {
        max_age.map_or_else(
            || millis(self.lifetimes.ttl),
            |secs| secs.saturating_mul(1000),
        )
    }

    /// Milliseconds left to the absolute limit, `None` when it has passed.
    fn remaining_ms(&self, created_ms: u64, now_ms: u64) -> Option<u64> {
        let deadline = created_ms.saturating_add(millis(self.lifetimes.absolute_ttl));
        deadline.checked_sub(now_ms).filter(|&left| left > 0)
    }

    /// The absolute deadline (unix ms) of a session.
    fn deadline_ms(&self, s: &Stored) -> u64 {
        s.created_ms
            .saturating_add(millis(self.lifetimes.absolute_ttl))
    }

    /// Alive at `now`: before its absolute deadline and before its bound, if it has one.
    fn is_live(&self, s: &Stored, now_ms: u64) -> bool {
        self.remaining_ms(s.created_ms, now_ms).is_some() && s.bound_ms.is_none_or(|b| b > now_ms)
    }

    /// How long a refresh at `now` lets the session live (ms): its idle lifetime, never
    /// past its absolute deadline nor its bound.
    fn refresh_ms(&self, s: &Stored, now_ms: u64) -> u64 {
        let wanted = now_ms
            .saturating_add(self.idle_ms(s.max_age))
            .min(self.deadline_ms(s));
        capped_expiry(wanted, s.bound_ms).saturating_sub(now_ms)
    }

    /// The exptime every item of a session refreshed (or written) now gets.
    fn exptime_of(&self, s: &Stored, now_ms: u64) -> u64 {
        exptime(self.refresh_ms(s, now_ms), now_ms / 1000)
    }

    /// An owned session refreshed now: the new bound to ask for, when it is due.
    fn index_due(&self, s: &Stored, now_ms: u64) -> Option<u64> {
        let bound = s.bound_ms.filter(|_| s.owner.is_some())?;
        owners::index_due(now_ms, self.idle_ms(s.max_age), bound, self.deadline_ms(s))
    }

    /// The session's last refresh (unix ms), for `last_seen`; `ttl_left` is the item's
    /// remaining TTL as read (see "Touch and the refresh time" above).
    fn last_refresh_ms(&self, s: &Stored, ttl_left: Option<i64>, now_ms: u64) -> u64 {
        let recorded = s.refreshed_ms.unwrap_or(s.created_ms);
        if !self.lifetimes.touch_after.is_zero() {
            return recorded;
        }
        let derived = match ttl_left.and_then(|t| u64::try_from(t).ok()) {
            Some(left) => {
                let set = self
                    .idle_ms(s.max_age)
                    .div_ceil(1000)
                    .saturating_add(1)
                    .saturating_mul(1000);
                now_ms
                    .saturating_add(left.saturating_mul(1000))
                    .saturating_sub(set)
                    .min(now_ms)
            }
            None => 0,
        };
        recorded.max(derived)
    }

    async fn load_session(
        &self,
        id: &SessionId,
        touch: Touch,
    ) -> Result<Option<LoadedSession>, StoreError> {
        let keys = self.keys(id);
        let mut lease = self.lease(keys.server).await?;
        let now = now_ms();
        let touch_after = millis(self.lifetimes.touch_after);
        // The usual refresh, sent with the read when every load refreshes (touch_after
        // 0); corrected below when this session needs another TTL. With touch_after the
        // read touches nothing: whether a refresh is due is known only from the item.
        let guess = (touch == Touch::Refresh && touch_after == 0)
            .then(|| exptime(millis(self.lifetimes.ttl), now / 1000));
        let replies = lease
            .run(
                &[
                    Cmd::Get {
                        key: &keys.data,
                        touch: guess,
                    },
                    Cmd::Get {
                        key: &keys.flash,
                        touch: None,
                    },
                ],
                true,
            )
            .await
            .map_err(unavailable)?;
        let [session, flash] = two(replies)?;
        let (cas, item, stored) = match session {
            Reply::Value { cas, data, .. } => {
                let stored = decode_session(&data)?;
                (cas, data, stored)
            }
            Reply::Miss => return Ok(None),
            _ => return Err(unexpected("session read")),
        };
        if !self.is_live(&stored, now) {
            // Past the absolute limit or its bound: memcached may keep it up to a tick
            // longer (or longer still, after a touch raced an attach); make sure it is
            // gone.
            lease
                .run(&keys.delete_both(), false)
                .await
                .map_err(unavailable)?;
            return Ok(None);
        }
        let remaining = self.remaining_ms(stored.created_ms, now).unwrap_or(0);

        let due = touch == Touch::Refresh
            && (touch_after == 0
                || stored
                    .refreshed_ms
                    .is_none_or(|at| now.saturating_sub(at) >= touch_after));
        let right = self.exptime_of(&stored, now);
        // touch_after > 0 and due: the item with its new refresh time.
        let refreshed = (due && touch_after > 0).then(|| {
            encode_session(&Stored {
                refreshed_ms: Some(now),
                ..stored.clone()
            })
        });
        let mut cmds = Vec::new();
        if let Some(value) = &refreshed {
            cmds.push(Cmd::Set {
                key: &keys.data,
                value,
                exp: right,
                cas: Some(cas),
                mode: Mode::Set,
            });
            cmds.push(Cmd::Touch {
                key: &keys.data,
                exp: right,
            });
        } else if due && Some(right) != guess {
            cmds.push(Cmd::Touch {
                key: &keys.data,
                exp: right,
            });
        }
        let index_due = if due {
            self.index_due(&stored, now)
        } else {
            None
        };
        // A refresh write changes the CAS: the request's write then reads again.
        let revision = refreshed.is_none().then(|| Revision::new(cas, item));
        let pending = match flash {
            Reply::Value { cas, data, .. } => {
                cmds.push(Cmd::Delete {
                    key: &keys.flash,
                    cas: Some(cas),
                });
                Some(decode_flash(&data)?)
            }
            Reply::Miss => None,
            _ => return Err(unexpected("flash read")),
        };
        let mut delivered = FieldMap::new();
        if pending.is_none() && !cmds.is_empty() {
            // Only the refresh (a TTL correction, or a due refresh with touch_after):
            // sent without waiting, so the load stays one round trip. Should it fail,
            // the next load refreshes again.
            if let Err(e) = lease.send(&cmds).await {
                tracing::debug!(error = %e, "memcached refresh not sent");
            }
        } else if !cmds.is_empty() {
            let replies = lease.run(&cmds, false).await.map_err(unavailable)?;
            if let (Some(flash), Some(reply)) = (pending, replies.last()) {
                match reply {
                    // This request consumed exactly the version it read.
                    Reply::Done => delivered = flash,
                    // Consumed by a concurrent load (NF), or more flash was added (EX):
                    // deliver nothing now; the next load gets the current set.
                    Reply::NotFound | Reply::Exists => {}
                    _ => return Err(unexpected("flash delete")),
                }
            }
        }
        Ok(Some(LoadedSession {
            data: stored.data,
            flash: delivered,
            max_age: stored.max_age,
            remaining: remaining / 1000,
            // A touch leaves the CAS as it was; a refresh write does not (then `None`).
            revision,
            owner: stored.owner,
            index_due,
        }))
    }

    async fn ping_servers(&self) -> Result<(), StoreError> {
        for (i, _) in self.servers.iter().enumerate() {
            let mut lease = self.lease(i).await?;
            let reply = lease
                .run(&[Cmd::Version], true)
                .await
                .map_err(unavailable)?;
            if !matches!(one(reply)?, Reply::Version(_)) {
                return Err(unexpected("version reply"));
            }
        }
        Ok(())
    }
}

impl SessionStore for MemcachedStore {
    async fn load_touch(
        &self,
        id: &SessionId,
        touch: Touch,
    ) -> Result<Option<LoadedSession>, StoreError> {
        self.load_session(id, touch).await
    }

    async fn apply(&self, plan: &WritePlan) -> Result<WriteOutcome, StoreError> {
        self.apply_plan(plan).await
    }

    async fn ping(&self) -> Result<(), StoreError> {
        self.ping_servers().await
    }

    async fn index_add(
        &self,
        owner: &OwnerKey,
        member: &str,
        bound_ms: u64,
    ) -> Result<(), StoreError> {
        self.add_to_index(owner, member, bound_ms).await
    }

    async fn index_members(&self, owner: &OwnerKey) -> Result<Vec<String>, StoreError> {
        self.live_index_members(owner).await
    }

    async fn index_remove(&self, owner: &OwnerKey, members: &[String]) -> Result<(), StoreError> {
        self.remove_from_index(owner, members).await
    }

    async fn destroy_keys(&self, keys: &[String]) -> Result<u64, StoreError> {
        self.destroy_store_keys(keys).await
    }

    async fn session_info(&self, keys: &[String]) -> Result<Vec<Option<SessionInfo>>, StoreError> {
        self.infos(keys).await
    }

    async fn extend_bound(&self, key: &str, bound_ms: u64) -> Result<bool, StoreError> {
        self.extend_session_bound(key, bound_ms).await
    }
}

/// The exptime to send for a logical TTL of `ttl_ms`, at Unix time `now_secs`.
///
/// Rounded up to whole seconds plus one tick of slack (memcached's clock ticks once a
/// second: a TTL of n ends n − 1 to n seconds later, and 0 would mean "never expires");
/// above 30 days memcached reads the number as a Unix time, so it is sent as one.
pub fn exptime(ttl_ms: u64, now_secs: u64) -> u64 {
    let secs = ttl_ms.div_ceil(1000).saturating_add(1);
    if secs > MAX_RELATIVE_EXPTIME {
        now_secs.saturating_add(secs)
    } else {
        secs
    }
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

fn unavailable(e: ClientError) -> StoreError {
    StoreError::Unavailable(e.to_string())
}

fn unexpected(what: &str) -> StoreError {
    StoreError::Unavailable(format!("memcached: unexpected {what}"))
}

fn one(replies: Vec<Reply>) -> Result<Reply, StoreError> {
    replies
        .into_iter()
        .next()
        .ok_or_else(|| unexpected("empty reply"))
}

fn two(replies: Vec<Reply>) -> Result<[Reply; 2], StoreError> {
    <[Reply; 2]>::try_from(replies).map_err(|_| unexpected("reply count"))
}

fn flash_read(reply: Reply) -> Result<FlashRead, StoreError> {
    match reply {
        Reply::Value { cas, data, .. } => Ok(Some((cas, decode_flash(&data)?))),
        Reply::Miss => Ok(None),
        _ => Err(unexpected("flash read")),
    }
}

/// Hooks for the fuzz targets (the `fuzzing` feature, docs/fuzzing.md): the reply-line
/// parser and the item decoders, reachable from [`crate::fuzz_api`] only.
#[cfg(feature = "fuzzing")]
pub(crate) mod fuzzing {
    pub(crate) use super::client::{Header, Reply, parse_header};
    use super::item;
    use crate::store::StoreError;

    /// `encode_session(decode_session(bytes))`.
    pub(crate) fn reencode_session(bytes: &[u8]) -> Result<Vec<u8>, StoreError> {
        item::decode_session(bytes).map(|s| item::encode_session(&s))
    }

    /// `encode_flash(decode_flash(bytes))`.
    pub(crate) fn reencode_flash(bytes: &[u8]) -> Result<Vec<u8>, StoreError> {
        item::decode_flash(bytes).map(|f| item::encode_flash(&f))
    }

    /// `encode_index(decode_index(bytes))`.
    pub(crate) fn reencode_index(bytes: &[u8]) -> Result<Vec<u8>, StoreError> {
        item::decode_index(bytes).map(|i| item::encode_index(&i))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exptime_is_relative_up_to_30_days_then_absolute() {
        let now = 1_700_000_000;
        assert_eq!(exptime(0, now), 1, "never 0: that would mean no expiry");
        assert_eq!(exptime(1, now), 2);
        assert_eq!(exptime(1_000, now), 2);
        assert_eq!(exptime(1_001, now), 3);
        assert_eq!(exptime(86_400_000, now), 86_401);
        // 30 days minus the slack second is the largest relative value.
        assert_eq!(exptime(2_591_999_000, now), 2_592_000);
        assert_eq!(exptime(2_592_000_000, now), now + 2_592_001);
        let forty_five_days = 45 * 86_400;
        assert_eq!(
            exptime(forty_five_days * 1000, now),
            now + forty_five_days + 1
        );
        // Absurd lifetimes saturate instead of overflowing.
        assert!(exptime(u64::MAX, now) > now);
    }
}
