//! The owner primitives on memcached (docs/protocol.md §11; the design is in
//! [`crate::store::owners`]).
//!
//! # The index item
//!
//! `<prefix>o.<owner key>` holds `I1\n` and one `<store key> <bound unix ms>\n` line per
//! entry (`item`), on the server the ring picks for `o.<owner key>`. Its TTL is its
//! latest bound (rounded up, plus memcached's tick; above 30 days sent as a unix time, as
//! every TTL: [`super::exptime`]): an index whose entries all passed their bound expires by
//! itself. At most [`MAX_INDEX_ENTRIES`] entries of at most [`MAX_INDEX_ENTRY_LEN`] bytes
//! keep the item far below memcached's default 1 MiB item size (checked at compile time).
//!
//! # Atomicity
//!
//! - `index_add`, `index_remove`: a CAS loop on the index item: `mg` (value + CAS), the
//!   change in Rust (entries whose bound passed are dropped on the way), then `ms … C<cas>`
//!   (or `ms … ME`, add, when there was none; `md … C<cas>` when nothing is left). A
//!   conflict (`EX`, `NF`, `NS`) re-reads and retries after a jittered pause, at most
//!   [`INDEX_CAS_ATTEMPTS`] times, then `Unavailable`. A write that would change nothing is
//!   not sent.
//! - `extend_bound`: the same loop on the session item (`ms … C<cas>` with the TTL the
//!   read found: the bound grows, the expiry does not); `NF` is `false`.
//! - `destroy_keys`: per session `mg` (to tell a live one), `md` of both items,
//!   unconditionally, as `Target::Destroy`; pipelined per server in chunks.
//! - `session_info`, `index_members`: reads only.

use std::collections::HashSet;

use super::{
    INDEX_INFIX, MAX_CAS_ATTEMPTS, MAX_RELATIVE_EXPTIME, MemcachedStore,
    client::{Cmd, Lease, Mode, Reply},
    exptime,
    item::{
        Index, MAX_INDEX_ENTRY_LEN, decode_index, decode_session, encode_index, encode_session,
    },
    now_ms, one, unavailable, unexpected,
    write::backoff,
};
use crate::store::{
    OwnerKey, SessionInfo, StoreError,
    owners::{MAX_INDEX_ENTRIES, capped_expiry, is_handle, with_margin},
};

/// CAS attempts of an index update before it gives up with 503.
pub const INDEX_CAS_ATTEMPTS: u64 = 16;

/// Sessions per pipelined batch of `destroy_keys` and `session_info`: the commands of a
/// batch (about 100 bytes a session) always fit the socket buffers, so sending a whole
/// batch before reading its replies cannot stall on a server waiting for us to read.
const BATCH: usize = 100;

/// memcached's default largest item (`-I 1m`), less room for its key and header.
const MAX_ITEM: usize = 1024 * 1024 - 1024;
const _: () = assert!(3 + MAX_INDEX_ENTRIES * MAX_INDEX_ENTRY_LEN <= MAX_ITEM);

fn not_a_store_key() -> StoreError {
    StoreError::Unavailable("memcached: an owner index member must be a session store key".into())
}

fn contention() -> StoreError {
    StoreError::Unavailable(format!(
        "memcached: owner index contention (gave up after {INDEX_CAS_ATTEMPTS} attempts)"
    ))
}

/// The latest bound of an index, for its TTL.
fn latest(index: &Index) -> Option<u64> {
    index.values().max().copied()
}

/// The exptime that keeps an item's current expiry (`ttl_left` seconds, as `mg … t`
/// read it), at Unix time `now_secs`. `None` when the item has none (`-1`) or it is
/// unknown.
fn keep_exptime(ttl_left: Option<i64>, now_secs: u64) -> Option<u64> {
    let left = u64::try_from(ttl_left?).ok()?;
    // 0 would mean "never expires": it ends within this tick anyway.
    let left = left.max(1);
    Some(if left > MAX_RELATIVE_EXPTIME {
        now_secs.saturating_add(left)
    } else {
        left
    })
}

impl MemcachedStore {
    /// Server and item key of an owner's index.
    fn index_item(&self, owner: &OwnerKey) -> (usize, String) {
        let name = format!("{INDEX_INFIX}{}", owner.as_str());
        let key = format!("{}{name}", self.key_prefix);
        (self.ring.pick(&name), key)
    }

    async fn read_index(
        &self,
        lease: &mut Lease<'_>,
        key: &str,
    ) -> Result<Option<(u64, Index)>, StoreError> {
        let reply = lease
            .run(&[Cmd::Get { key, touch: None }], true)
            .await
            .map_err(unavailable)?;
        match one(reply)? {
            Reply::Value { cas, data, .. } => Ok(Some((cas, decode_index(&data)?))),
            Reply::Miss => Ok(None),
            _ => Err(unexpected("owner index read")),
        }
    }

    /// [`crate::store::SessionStore::index_add`].
    pub(super) async fn add_to_index(
        &self,
        owner: &OwnerKey,
        member: &str,
        bound_ms: u64,
    ) -> Result<(), StoreError> {
        if !is_handle(member) {
            return Err(not_a_store_key());
        }
        let (server, key) = self.index_item(owner);
        let mut lease = self.lease(server).await?;
        let mut current = self.read_index(&mut lease, &key).await?;
        for attempt in 1..=INDEX_CAS_ATTEMPTS {
            let now = now_ms();
            let (cas, mut index) = match current.take() {
                Some((cas, index)) => (Some(cas), index),
                None => (None, Index::new()),
            };
            let before = index.len();
            index.retain(|_, bound| *bound > now);
            let expired = index.len() != before;
            let wanted = now.saturating_add(with_margin(bound_ms));
            let grows = match index.get_mut(member) {
                Some(at) if *at >= wanted => false,
                Some(at) => {
                    *at = wanted;
                    true
                }
                None => {
                    if index.len() >= MAX_INDEX_ENTRIES {
                        return Err(StoreError::Unavailable(format!(
                            "owner index full ({MAX_INDEX_ENTRIES} live sessions): \
                             nothing added"
                        )));
                    }
                    index.insert(member.to_owned(), wanted);
                    true
                }
            };
            if cas.is_some() && !grows && !expired {
                // Already covered: the item's TTL is its latest bound, at least this one.
                return Ok(());
            }
            let value = encode_index(&index);
            let exp = exptime(
                latest(&index).unwrap_or(wanted).saturating_sub(now),
                now / 1000,
            );
            let mode = if cas.is_some() { Mode::Set } else { Mode::Add };
            let reply = lease
                .run(
                    &[Cmd::Set {
                        key: &key,
                        value: &value,
                        exp,
                        cas,
                        mode,
                    }],
                    false,
                )
                .await
                .map_err(unavailable)?;
            match one(reply)? {
                Reply::Done => return Ok(()),
                // Changed (EX), expired or removed (NF), created meanwhile (NS).
                Reply::Exists | Reply::NotFound | Reply::NotStored => {
                    backoff(attempt).await;
                    current = self.read_index(&mut lease, &key).await?;
                }
                _ => return Err(unexpected("owner index store reply")),
            }
        }
        Err(contention())
    }

    /// [`crate::store::SessionStore::index_members`].
    pub(super) async fn live_index_members(
        &self,
        owner: &OwnerKey,
    ) -> Result<Vec<String>, StoreError> {
        let (server, key) = self.index_item(owner);
        let mut lease = self.lease(server).await?;
        let now = now_ms();
        Ok(match self.read_index(&mut lease, &key).await? {
            None => Vec::new(),
            Some((_, index)) => index
                .into_iter()
                .filter(|(_, bound)| *bound > now)
                .map(|(member, _)| member)
                .take(MAX_INDEX_ENTRIES)
                .collect(),
        })
    }

    /// [`crate::store::SessionStore::index_remove`].
    pub(super) async fn remove_from_index(
        &self,
        owner: &OwnerKey,
        members: &[String],
    ) -> Result<(), StoreError> {
        let gone: HashSet<&str> = members.iter().map(String::as_str).collect();
        let (server, key) = self.index_item(owner);
        let mut lease = self.lease(server).await?;
        let mut current = self.read_index(&mut lease, &key).await?;
        for attempt in 1..=INDEX_CAS_ATTEMPTS {
            let Some((cas, mut index)) = current.take() else {
                return Ok(());
            };
            let now = now_ms();
            let before = index.len();
            index.retain(|member, bound| *bound > now && !gone.contains(member.as_str()));
            if index.len() == before {
                return Ok(());
            }
            let value = encode_index(&index);
            let cmd = match latest(&index) {
                None => Cmd::Delete {
                    key: &key,
                    cas: Some(cas),
                },
                Some(at) => Cmd::Set {
                    key: &key,
                    value: &value,
                    exp: exptime(at.saturating_sub(now), now / 1000),
                    cas: Some(cas),
                    mode: Mode::Set,
                },
            };
            let reply = lease.run(&[cmd], false).await.map_err(unavailable)?;
            match one(reply)? {
                // Done, or the index is gone altogether (nothing left to remove).
                Reply::Done | Reply::NotFound => return Ok(()),
                Reply::Exists => {
                    backoff(attempt).await;
                    current = self.read_index(&mut lease, &key).await?;
                }
                _ => return Err(unexpected("owner index store reply")),
            }
        }
        Err(contention())
    }

    /// The store keys among `keys` that may go into a command, grouped by server, each
    /// with its position in `keys`.
    fn by_server<'k>(&self, keys: &'k [String]) -> Vec<Vec<(usize, &'k str)>> {
        let mut groups = vec![Vec::new(); self.servers.len().max(1)];
        for (i, key) in keys.iter().enumerate() {
            // Anything else is not a session of this store (and must never reach the
            // wire: a space would split the command).
            if is_handle(key) {
                let server = self.ring.pick(key);
                if let Some(group) = groups.get_mut(server) {
                    group.push((i, key.as_str()));
                }
            }
        }
        groups
    }

    /// [`crate::store::SessionStore::destroy_keys`].
    pub(super) async fn destroy_store_keys(&self, keys: &[String]) -> Result<u64, StoreError> {
        let mut live = 0;
        for (server, group) in self.by_server(keys).into_iter().enumerate() {
            if group.is_empty() {
                continue;
            }
            let mut lease = self.lease(server).await?;
            for chunk in group.chunks(BATCH) {
                let items: Vec<_> = chunk.iter().map(|(_, sk)| self.keys_of(sk)).collect();
                let mut cmds = Vec::with_capacity(items.len() * 3);
                for keys in &items {
                    cmds.push(Cmd::Get {
                        key: &keys.data,
                        touch: None,
                    });
                    cmds.extend(keys.delete_both());
                }
                let replies = lease.run(&cmds, false).await.map_err(unavailable)?;
                if replies.len() != cmds.len() {
                    return Err(unexpected("reply count"));
                }
                let now = now_ms();
                for triple in replies.chunks(3) {
                    match triple {
                        [read, a, b]
                            if [a, b]
                                .iter()
                                .all(|r| matches!(r, Reply::Done | Reply::NotFound)) =>
                        {
                            match read {
                                // Unreadable, it was still deleted: not counted.
                                Reply::Value { data, .. } => {
                                    if decode_session(data).is_ok_and(|s| self.is_live(&s, now)) {
                                        live += 1;
                                    }
                                }
                                Reply::Miss => {}
                                _ => return Err(unexpected("session read")),
                            }
                        }
                        _ => return Err(unexpected("delete reply")),
                    }
                }
            }
        }
        Ok(live)
    }

    /// [`crate::store::SessionStore::session_info`].
    pub(super) async fn infos(
        &self,
        keys: &[String],
    ) -> Result<Vec<Option<SessionInfo>>, StoreError> {
        let mut out = vec![None; keys.len()];
        for (server, group) in self.by_server(keys).into_iter().enumerate() {
            if group.is_empty() {
                continue;
            }
            let mut lease = self.lease(server).await?;
            for chunk in group.chunks(BATCH) {
                let items: Vec<_> = chunk.iter().map(|(_, sk)| self.keys_of(sk)).collect();
                let cmds: Vec<_> = items
                    .iter()
                    .map(|keys| Cmd::Get {
                        key: &keys.data,
                        touch: None,
                    })
                    .collect();
                let replies = lease.run(&cmds, true).await.map_err(unavailable)?;
                if replies.len() != cmds.len() {
                    return Err(unexpected("reply count"));
                }
                let now = now_ms();
                for ((i, sk), reply) in chunk.iter().zip(replies) {
                    let (data, ttl) = match reply {
                        Reply::Value { data, ttl, .. } => (data, ttl),
                        Reply::Miss => continue,
                        _ => return Err(unexpected("session read")),
                    };
                    let s = decode_session(&data)?;
                    if !self.is_live(&s, now) {
                        continue;
                    }
                    // When the item's TTL ends; never past the deadline or bound
                    // (enforced on every read even if a touch set the TTL longer).
                    let cap = capped_expiry(self.deadline_ms(&s), s.bound_ms).div_ceil(1000);
                    let expires = match ttl.and_then(|t| u64::try_from(t).ok()) {
                        Some(left) => (now / 1000).saturating_add(left).min(cap),
                        None => cap,
                    };
                    let last_seen = self.last_refresh_ms(&s, ttl, now) / 1000;
                    if let Some(slot) = out.get_mut(*i) {
                        *slot = Some(SessionInfo {
                            handle: (*sk).to_owned(),
                            owner: s.owner,
                            created: s.created_ms / 1000,
                            last_seen,
                            expires,
                            client: s.client,
                        });
                    }
                }
            }
        }
        Ok(out)
    }

    /// [`crate::store::SessionStore::extend_bound`].
    pub(super) async fn extend_session_bound(
        &self,
        key: &str,
        bound_ms: u64,
    ) -> Result<bool, StoreError> {
        if !is_handle(key) {
            return Ok(false);
        }
        let keys = self.keys_of(key);
        let mut lease = self.lease(keys.server).await?;
        for attempt in 1..=MAX_CAS_ATTEMPTS {
            let reply = lease
                .run(
                    &[Cmd::Get {
                        key: &keys.data,
                        touch: None,
                    }],
                    true,
                )
                .await
                .map_err(unavailable)?;
            let (cas, data, ttl) = match one(reply)? {
                Reply::Value { cas, data, ttl } => (cas, data, ttl),
                Reply::Miss => return Ok(false),
                _ => return Err(unexpected("session read")),
            };
            let mut s = decode_session(&data)?;
            let now = now_ms();
            if !self.is_live(&s, now) || s.owner.is_none() {
                return Ok(false);
            }
            let wanted = now.saturating_add(bound_ms);
            if s.bound_ms.is_some_and(|b| b >= wanted) {
                return Ok(true);
            }
            // The TTL stays as it is: the next refresh may use the longer bound.
            let exp = keep_exptime(ttl, now / 1000).unwrap_or_else(|| self.exptime_of(&s, now));
            s.bound_ms = Some(wanted);
            let value = encode_session(&s);
            let reply = lease
                .run(
                    &[Cmd::Set {
                        key: &keys.data,
                        value: &value,
                        exp,
                        cas: Some(cas),
                        mode: Mode::Set,
                    }],
                    false,
                )
                .await
                .map_err(unavailable)?;
            match one(reply)? {
                Reply::Done => return Ok(true),
                // Destroyed or moved since the read: never revived.
                Reply::NotFound => return Ok(false),
                Reply::Exists => backoff(attempt).await,
                _ => return Err(unexpected("store reply")),
            }
        }
        Err(StoreError::Unavailable("too much contention".into()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kept_expiry() {
        let now = 1_700_000_000;
        assert_eq!(keep_exptime(Some(30), now), Some(30));
        assert_eq!(keep_exptime(Some(0), now), Some(1), "never 0 (no expiry)");
        assert_eq!(keep_exptime(Some(-1), now), None);
        assert_eq!(keep_exptime(None, now), None);
        let forty_days = 40 * 86_400;
        assert_eq!(keep_exptime(Some(forty_days), now), Some(now + 40 * 86_400));
    }
}
