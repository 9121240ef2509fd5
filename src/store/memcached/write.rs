//! The write paths: create, update (CAS merge), destroy, move (see the parent module's
//! "Atomicity").

use std::{hash::BuildHasher, time::Duration};

use super::{
    FlashRead, Keys, MAX_CAS_ATTEMPTS, MemcachedStore,
    client::{Cmd, Lease, Mode, Reply},
    flash_read,
    item::{Stored, decode_session, encode_flash, encode_session},
    now_ms, one, unavailable, unexpected,
};
use crate::{
    cookie::SessionId,
    protocol::Op,
    store::{FieldMap, OwnerChange, StoreError, Target, WriteOutcome, WritePlan, apply_ops},
};

impl MemcachedStore {
    /// The session (and pending flash) after `plan`'s ops and owner change, refreshed
    /// now, and its memcached expiry. Both maps are validated here, before anything is
    /// written. `None` when the session passed its absolute limit or its bound since it
    /// was read.
    fn next_state(
        &self,
        stored: &Stored,
        flash: Option<&FieldMap>,
        plan: &WritePlan,
    ) -> Result<Option<(Stored, FieldMap, u64)>, StoreError> {
        let now = now_ms();
        if !self.is_live(stored, now) {
            return Ok(None);
        }
        let empty = FieldMap::new();
        let (data, flash) = apply_ops(
            &stored.data,
            flash.unwrap_or(&empty),
            &plan.ops,
            self.lifetimes.max_size,
        )?;
        let mut next = Stored {
            created_ms: stored.created_ms,
            max_age: plan.max_age.or(stored.max_age),
            // A write refreshes like a load.
            refreshed_ms: Some(now),
            owner: stored.owner.clone(),
            bound_ms: stored.bound_ms,
            client: stored.client.clone(),
            data,
        };
        change_owner(&mut next, &plan.owner, now);
        let exp = self.exptime_of(&next, now);
        Ok(Some((next, flash, exp)))
    }

    /// A brand-new session after `plan`'s ops and owner change (created and refreshed
    /// now, with the plan's client record), validated, and its pending flash.
    fn fresh_state(&self, plan: &WritePlan) -> Result<(Stored, FieldMap), StoreError> {
        let empty = FieldMap::new();
        let (data, flash) = apply_ops(&empty, &empty, &plan.ops, self.lifetimes.max_size)?;
        let now = now_ms();
        let mut stored = Stored {
            data,
            ..Stored::new(now, plan.max_age, plan.client.clone())
        };
        change_owner(&mut stored, &plan.owner, now);
        Ok((stored, flash))
    }

    pub(super) async fn apply_plan(&self, plan: &WritePlan) -> Result<WriteOutcome, StoreError> {
        match &plan.target {
            Target::Existing(id) => self.update(id, plan).await,
            Target::Create(id) => {
                let (stored, flash) = self.fresh_state(plan)?;
                self.create(id, &stored, &flash).await?;
                Ok(WriteOutcome::Applied)
            }
            Target::Destroy(id) => {
                self.destroy(id).await?;
                Ok(WriteOutcome::Applied)
            }
            Target::DestroyThenCreate { old, new } => {
                // Validate first: a rejected change set leaves the old session untouched.
                let (stored, flash) = self.fresh_state(plan)?;
                self.destroy(old).await?;
                self.create(new, &stored, &flash).await?;
                Ok(WriteOutcome::Applied)
            }
            Target::Move { from, to } => self.move_session(from, to, plan).await,
        }
    }

    /// Write a brand-new session (add: never overwrites).
    async fn create(
        &self,
        id: &SessionId,
        stored: &Stored,
        flash: &FieldMap,
    ) -> Result<(), StoreError> {
        let exp = self.exptime_of(stored, now_ms());
        let keys = self.keys(id);
        self.add_items(&keys, stored, flash, exp).await
    }

    async fn add_items(
        &self,
        keys: &Keys,
        stored: &Stored,
        flash: &FieldMap,
        exp: u64,
    ) -> Result<(), StoreError> {
        let value = encode_session(stored);
        let flash_value = encode_flash(flash);
        let mut cmds = vec![Cmd::Set {
            key: &keys.data,
            value: &value,
            exp,
            cas: None,
            mode: Mode::Add,
        }];
        if !flash.is_empty() {
            cmds.push(Cmd::Set {
                key: &keys.flash,
                value: &flash_value,
                exp,
                cas: None,
                mode: Mode::Set,
            });
        }
        let mut lease = self.lease(keys.server).await?;
        let replies = lease.run(&cmds, false).await.map_err(unavailable)?;
        for (i, reply) in replies.iter().enumerate() {
            match reply {
                Reply::Done => {}
                // Ids are 128 random bits: this is a bug or a replayed write, never a
                // reason to overwrite someone's session.
                Reply::NotStored if i == 0 => {
                    return Err(StoreError::Unavailable(
                        "memcached: a new session id is already in use".into(),
                    ));
                }
                _ => return Err(unexpected("store reply")),
            }
        }
        Ok(())
    }

    async fn destroy(&self, id: &SessionId) -> Result<(), StoreError> {
        self.destroy_keys_of(&self.keys(id)).await
    }

    /// Unconditional delete of a session's items (destroy wins over every writer).
    pub(super) async fn destroy_keys_of(&self, keys: &Keys) -> Result<(), StoreError> {
        let mut lease = self.lease(keys.server).await?;
        let replies = lease
            .run(&keys.delete_both(), false)
            .await
            .map_err(unavailable)?;
        if replies
            .iter()
            .all(|r| matches!(r, Reply::Done | Reply::NotFound))
        {
            Ok(())
        } else {
            Err(unexpected("delete reply"))
        }
    }

    /// Read the session (and its flash when `with_flash`): `None` when gone or past its
    /// absolute limit or bound.
    async fn read(
        &self,
        lease: &mut Lease<'_>,
        keys: &Keys,
        with_flash: bool,
    ) -> Result<Option<(u64, Stored, FlashRead)>, StoreError> {
        let mut cmds = vec![Cmd::Get {
            key: &keys.data,
            touch: None,
        }];
        if with_flash {
            cmds.push(Cmd::Get {
                key: &keys.flash,
                touch: None,
            });
        }
        let mut replies = lease
            .run(&cmds, true)
            .await
            .map_err(unavailable)?
            .into_iter();
        let (cas, stored) = match replies.next() {
            Some(Reply::Value { cas, data, .. }) => (cas, decode_session(&data)?),
            Some(Reply::Miss) => return Ok(None),
            _ => return Err(unexpected("session read")),
        };
        if !self.is_live(&stored, now_ms()) {
            return Ok(None);
        }
        let flash = match replies.next() {
            None => None,
            Some(reply) => flash_read(reply)?,
        };
        Ok(Some((cas, stored, flash)))
    }

    /// `Target::Existing`: CAS merge of the session, then of its flash.
    async fn update(&self, id: &SessionId, plan: &WritePlan) -> Result<WriteOutcome, StoreError> {
        let keys = self.keys(id);
        let with_flash = plan.ops.iter().any(|op| matches!(op, Op::FlashSet(..)));
        let mut lease = self.lease(keys.server).await?;
        let mut retries = 0;
        // The item this request loaded, if the pipeline handed it back: the first
        // attempt writes against it without reading again (a flash merge reads the flash
        // item anyway, so it reads both as before).
        let mut base = match plan.revision.as_ref().filter(|_| !with_flash) {
            Some(r) => Some((r.version(), decode_session(r.item())?, None)),
            None => None,
        };
        let (flash_seen, exp) = loop {
            let read = match base.take() {
                Some(loaded) => Some(loaded),
                None => self.read(&mut lease, &keys, with_flash).await?,
            };
            let Some((cas, stored, flash_seen)) = read else {
                return Ok(WriteOutcome::Gone);
            };
            let current_flash = flash_seen.as_ref().map(|(_, f)| f);
            let Some((next, _, exp)) = self.next_state(&stored, current_flash, plan)? else {
                return Ok(WriteOutcome::Gone);
            };
            let value = encode_session(&next);
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
                Reply::Done => break (flash_seen, exp),
                // Deleted since the read (destroyed, moved, evicted): never revive.
                Reply::NotFound => return Ok(WriteOutcome::Gone),
                Reply::Exists => self.conflict(&mut retries).await?,
                _ => return Err(unexpected("store reply")),
            }
        };
        if with_flash {
            self.merge_flash(
                &mut lease,
                &keys.flash,
                flash_seen,
                &plan.ops,
                exp,
                &mut retries,
            )
            .await?;
        }
        self.counters.record(retries);
        Ok(WriteOutcome::Applied)
    }

    /// Count a CAS conflict and back off, or give up after [`MAX_CAS_ATTEMPTS`].
    async fn conflict(&self, retries: &mut u64) -> Result<(), StoreError> {
        *retries += 1;
        if *retries >= MAX_CAS_ATTEMPTS {
            self.counters.record(*retries);
            return Err(StoreError::Unavailable("too much contention".into()));
        }
        backoff(*retries).await;
        Ok(())
    }

    /// Add the plan's flash to the flash item at `key` (CAS loop; `add` when absent).
    async fn merge_flash(
        &self,
        lease: &mut Lease<'_>,
        key: &str,
        mut current: FlashRead,
        ops: &[Op],
        exp: u64,
        retries: &mut u64,
    ) -> Result<(), StoreError> {
        let flash_ops: Vec<Op> = ops
            .iter()
            .filter(|op| matches!(op, Op::FlashSet(..)))
            .cloned()
            .collect();
        let empty = FieldMap::new();
        loop {
            let base = current.as_ref().map_or(&empty, |(_, f)| f);
            // Flash ops depend on the flash only: same result as the full apply_ops.
            let (_, merged) = apply_ops(&empty, base, &flash_ops, self.lifetimes.max_size)?;
            let value = encode_flash(&merged);
            let (cas, mode) = match &current {
                Some((cas, _)) => (Some(*cas), Mode::Set),
                None => (None, Mode::Add),
            };
            let reply = lease
                .run(
                    &[Cmd::Set {
                        key,
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
                // Changed, consumed or created meanwhile: merge into what is there now.
                Reply::Exists | Reply::NotFound | Reply::NotStored => {
                    self.conflict(retries).await?;
                    let reply = lease
                        .run(&[Cmd::Get { key, touch: None }], true)
                        .await
                        .map_err(unavailable)?;
                    current = flash_read(one(reply)?)?;
                }
                _ => return Err(unexpected("flash store reply")),
            }
        }
    }

    /// `Target::Move` (regenerate); see the module docs.
    async fn move_session(
        &self,
        from: &SessionId,
        to: &SessionId,
        plan: &WritePlan,
    ) -> Result<WriteOutcome, StoreError> {
        let old = self.keys(from);
        let new = self.keys(to);
        let mut retries = 0;
        let (seen, flash) = loop {
            let mut lease = self.lease(old.server).await?;
            let Some((cas, stored, seen)) = self.read(&mut lease, &old, true).await? else {
                return Ok(WriteOutcome::Gone);
            };
            // One connection at a time: holding one per server while waiting for another
            // could deadlock two moves between the same two servers.
            drop(lease);
            let current_flash = seen.as_ref().map(|(_, f)| f);
            let Some((moved, flash, exp)) = self.next_state(&stored, current_flash, plan)? else {
                return Ok(WriteOutcome::Gone);
            };
            self.add_items(&new, &moved, &flash, exp).await?;

            let mut lease = self.lease(old.server).await?;
            let reply = lease
                .run(
                    &[Cmd::Delete {
                        key: &old.data,
                        cas: Some(cas),
                    }],
                    false,
                )
                .await
                .map_err(unavailable)?;
            drop(lease);
            match one(reply)? {
                Reply::Done => break (seen, (flash, exp)),
                Reply::NotFound => {
                    self.destroy(to).await?;
                    return Ok(WriteOutcome::Gone);
                }
                Reply::Exists => {
                    // Written meanwhile: start over so that write is carried along.
                    self.destroy(to).await?;
                    self.conflict(&mut retries).await?;
                }
                _ => return Err(unexpected("delete reply")),
            }
        };
        self.carry_old_flash(&old, &new, seen, plan, flash).await?;
        self.counters.record(retries);
        Ok(WriteOutcome::Applied)
    }

    /// After a move committed: delete the old flash item, keeping the new session's flash
    /// equal to what was pending on the old id and not delivered, plus the plan's flash.
    async fn carry_old_flash(
        &self,
        old: &Keys,
        new: &Keys,
        seen: FlashRead,
        plan: &WritePlan,
        (mut written, exp): (FieldMap, u64),
    ) -> Result<(), StoreError> {
        let flash_ops: Vec<Op> = plan
            .ops
            .iter()
            .filter(|op| matches!(op, Op::FlashSet(..)))
            .cloned()
            .collect();
        let empty = FieldMap::new();
        let (_, own) = apply_ops(&empty, &empty, &flash_ops, self.lifetimes.max_size)?;
        let mut carried = seen.as_ref().map(|(_, f)| f.clone()).unwrap_or_default();
        let mut expected = seen;
        // Bounded: each round needs another concurrent writer of the dead id's flash.
        for _ in 0..MAX_CAS_ATTEMPTS {
            let mut lease = self.lease(old.server).await?;
            match expected.take() {
                Some((cas, version)) => {
                    let reply = lease
                        .run(
                            &[Cmd::Delete {
                                key: &old.flash,
                                cas: Some(cas),
                            }],
                            false,
                        )
                        .await
                        .map_err(unavailable)?;
                    match one(reply)? {
                        Reply::Done => break,
                        Reply::NotFound => {
                            // A load of the old id delivered it: do not deliver it again.
                            carried.retain(|field, _| !version.contains_key(field));
                            break;
                        }
                        Reply::Exists => {} // more flash arrived: read it next round
                        _ => return Err(unexpected("flash delete reply")),
                    }
                }
                None => {
                    let reply = lease
                        .run(
                            &[Cmd::Get {
                                key: &old.flash,
                                touch: None,
                            }],
                            true,
                        )
                        .await
                        .map_err(unavailable)?;
                    match flash_read(one(reply)?)? {
                        None => break,
                        Some((cas, version)) => {
                            carried.extend(version.iter().map(|(k, v)| (k.clone(), v.clone())));
                            expected = Some((cas, version));
                        }
                    }
                }
            }
        }
        let mut wanted = carried;
        wanted.extend(own);
        if wanted != written {
            written = wanted;
            let value = encode_flash(&written);
            let cmd = if written.is_empty() {
                Cmd::Delete {
                    key: &new.flash,
                    cas: None,
                }
            } else {
                Cmd::Set {
                    key: &new.flash,
                    value: &value,
                    exp,
                    cas: None,
                    mode: Mode::Set,
                }
            };
            // The new id is not known to any client yet: nobody else writes its flash.
            let mut lease = self.lease(new.server).await?;
            lease.run(&[cmd], false).await.map_err(unavailable)?;
        }
        Ok(())
    }
}

/// How a write changes the owner: `Attach` records it with its bound (now + `bound_ms`),
/// `Detach` clears both.
fn change_owner(s: &mut Stored, change: &OwnerChange, now_ms: u64) {
    match change {
        OwnerChange::Keep => {}
        OwnerChange::Attach { owner, bound_ms } => {
            s.owner = Some(owner.clone());
            s.bound_ms = Some(now_ms.saturating_add(*bound_ms));
        }
        OwnerChange::Detach => {
            s.owner = None;
            s.bound_ms = None;
        }
    }
}

/// A short random pause before retrying a CAS conflict, growing with the attempt: the
/// writers that collided spread out instead of colliding again in lockstep.
pub(super) async fn backoff(attempt: u64) {
    // A per-call random value without a dependency: RandomState keys are random.
    let random = std::collections::hash_map::RandomState::new().hash_one(attempt);
    let max_us = 250u64 << attempt.min(4); // 0.5 ms .. 4 ms
    let pause = random % max_us;
    if pause < 1_000 {
        // Below the timer's 1 ms resolution: let the others run instead.
        tokio::task::yield_now().await;
    } else {
        tokio::time::sleep(Duration::from_micros(pause)).await;
    }
}
