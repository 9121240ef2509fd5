//! What a response's instructions mean for the session, pure: which store write to make
//! and which `Set-Cookie` to send (docs/protocol.md §5; docs/protocol.md §6.5 for when a
//! Set-Cookie is sent). The pipeline executes the [`Decision`]; every branch is unit-tested
//! here.

use http::StatusCode;

use crate::{
    cookie::SessionId,
    protocol::{ChangeSet, Op, SessionStatus},
    store::{Owner, OwnerChange, Target, WritePlan, owners::bound_for},
};

/// What the request brought: the cookie's state and, when active, the loaded session's
/// lifetime facts.
#[derive(Debug, Clone)]
pub struct SessionView {
    pub status: SessionStatus,
    /// The active session's id (`status == Active` only).
    pub id: Option<SessionId>,
    /// The cookie verified with an older secret: re-sign on this response.
    pub needs_resign: bool,
    /// The session's own lifetime (`X-Session-Max-Age`), seconds.
    pub max_age: Option<u64>,
    /// Seconds left to the absolute lifetime.
    pub remaining: u64,
    /// The loaded session's owner (docs/protocol.md §11).
    pub owner: Option<Owner>,
}

/// Cookie settings that shape the decision.
#[derive(Debug, Clone, Copy)]
pub struct CookiePolicy {
    /// Configured persistent lifetime (`expires_days` / `max_age`), seconds.
    pub lifetime: Option<u64>,
    /// `cookies.rolling`.
    pub rolling: bool,
    /// `session.absolute_ttl` in seconds (the cap of a new session's cookie).
    pub absolute_ttl: u64,
    /// `session.ttl` in seconds (an owned session's index bound is derived from its idle
    /// lifetime).
    pub ttl: u64,
}

/// The `Set-Cookie` a response carries.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CookieAction {
    None,
    /// Send a cookie for `id`, with `Max-Age` when it has a lifetime.
    Issue {
        id: SessionId,
        max_age: Option<u64>,
    },
    /// Remove the cookie.
    Clear,
}

/// How the upstream's response went, as far as its session changes are concerned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ResponseClass {
    /// Below 500 (a 4xx included): the changes apply.
    Handled,
    /// A 5xx: the changes are dropped, except a Destroy.
    ServerError,
}

impl ResponseClass {
    pub fn of(status: StatusCode) -> Self {
        if status.is_server_error() {
            ResponseClass::ServerError
        } else {
            ResponseClass::Handled
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decision {
    pub plan: Option<WritePlan>,
    pub cookie: CookieAction,
    /// Writes or a Regenerate that a 5xx response asked for and that are not applied
    /// ([`ResponseClass::ServerError`]); the pipeline logs and counts them.
    pub dropped: bool,
}

/// A write was wanted while the store is unavailable (`on_error: anonymous`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StoreUnavailable {
    /// As [`Decision::dropped`]: what a 5xx response asked for beyond the Destroy that
    /// still needed the store.
    pub dropped: bool,
}

fn cookie_max_age(
    policy: &CookiePolicy,
    session_max_age: Option<u64>,
    remaining: u64,
) -> Option<u64> {
    session_max_age
        .or(policy.lifetime)
        .map(|secs| secs.min(remaining))
}

/// Decide the store write and cookie for one response. `new_id` is called only when a
/// new session id is needed.
///
/// On a 5xx response only a Destroy is applied: as Django, a failed request's session
/// changes are not saved, but a logout that fails halfway must not leave the session
/// alive. What is left out is reported in [`Decision::dropped`] (or
/// [`StoreUnavailable::dropped`]).
pub fn decide<E>(
    view: &SessionView,
    changes: &ChangeSet,
    response: ResponseClass,
    policy: &CookiePolicy,
    new_id: impl FnOnce() -> Result<SessionId, E>,
) -> Result<Result<Decision, StoreUnavailable>, E> {
    let destroy_only;
    let (changes, dropped) = match response {
        ResponseClass::Handled => (changes, false),
        // Revocations only remove sessions and are applied like a Destroy.
        ResponseClass::ServerError => {
            destroy_only = ChangeSet {
                destroy: changes.destroy,
                revoke_owners: changes.revoke_owners.clone(),
                revoke_others: changes.revoke_others,
                ..ChangeSet::default()
            };
            (
                &destroy_only,
                changes.writes() || changes.regenerate || changes.owner.is_some(),
            )
        }
    };
    Ok(decide_changes(view, changes, policy, new_id)?
        .map(|d| Decision { dropped, ..d })
        .map_err(|_| StoreUnavailable { dropped }))
}

/// [`decide`] for the changes that apply.
fn decide_changes<E>(
    view: &SessionView,
    changes: &ChangeSet,
    policy: &CookiePolicy,
    new_id: impl FnOnce() -> Result<SessionId, E>,
) -> Result<Result<Decision, StoreUnavailable>, E> {
    // Detaching changes an existing session but creates none.
    let writes = changes.writes() || changes.owner.is_some();
    // Deleting keys of a session that does not exist is a no-op, not a reason to create
    // an empty session; every other write creates one (docs/protocol.md §5.4), attaching
    // an owner included.
    let creates = changes.max_age.is_some()
        || changes.ops.iter().any(|op| !matches!(op, Op::Delete(_)))
        || matches!(changes.owner, Some(Some(_)));
    if view.status == SessionStatus::Unavailable
        && (writes || changes.destroy || changes.regenerate || changes.revokes())
    {
        return Ok(Err(StoreUnavailable { dropped: false }));
    }
    let active = view
        .id
        .clone()
        .filter(|_| view.status == SessionStatus::Active);
    // Revoking the current session's own owner destroys it too; later writes then start
    // a fresh session, as after a Destroy (docs/protocol.md §11).
    let revoked_self = active.is_some()
        && view
            .owner
            .as_ref()
            .is_some_and(|o| changes.revoke_owners.iter().any(|r| r == o.literal()));
    let destroy = changes.destroy || revoked_self;
    let fresh = Lifespan {
        idle: changes.max_age.unwrap_or(policy.ttl),
        remaining: policy.absolute_ttl,
    };
    let current = Lifespan {
        idle: changes.max_age.or(view.max_age).unwrap_or(policy.ttl),
        remaining: view.remaining,
    };
    let had_cookie = view.status != SessionStatus::None;
    let new_session = |id: SessionId| CookieAction::Issue {
        max_age: cookie_max_age(policy, changes.max_age, policy.absolute_ttl),
        id,
    };

    let decision = if destroy {
        let new = if creates { Some(new_id()?) } else { None };
        let target = match (active, new.clone()) {
            (Some(old), Some(new)) => Some(Target::DestroyThenCreate { old, new }),
            (Some(old), None) => Some(Target::Destroy(old)),
            (None, Some(new)) => Some(Target::Create(new)),
            (None, None) => None,
        };
        let cookie = match new {
            Some(id) => new_session(id),
            None if had_cookie => CookieAction::Clear,
            None => CookieAction::None,
        };
        Decision {
            plan: target.map(|t| {
                let owner = match &t {
                    Target::Destroy(_) => OwnerChange::Keep,
                    _ => owner_change(changes, fresh),
                };
                plan(t, changes, owner)
            }),
            cookie,
            dropped: false,
        }
    } else if let (true, Some(from)) = (changes.regenerate, active.clone()) {
        let to = new_id()?;
        Decision {
            plan: Some(plan(
                Target::Move {
                    from,
                    to: to.clone(),
                },
                changes,
                moved_owner(changes, view, current),
            )),
            cookie: CookieAction::Issue {
                id: to,
                max_age: cookie_max_age(policy, changes.max_age.or(view.max_age), view.remaining),
            },
            dropped: false,
        }
    } else if writes && (active.is_some() || creates) {
        match active {
            Some(id) => {
                let session_max_age = changes.max_age.or(view.max_age);
                let reissue = changes.max_age.is_some()
                    || view.needs_resign
                    || (policy.rolling && session_max_age.or(policy.lifetime).is_some());
                Decision {
                    plan: Some(plan(
                        Target::Existing(id.clone()),
                        changes,
                        owner_change(changes, current),
                    )),
                    cookie: if reissue {
                        CookieAction::Issue {
                            id,
                            max_age: cookie_max_age(policy, session_max_age, view.remaining),
                        }
                    } else {
                        CookieAction::None
                    },
                    dropped: false,
                }
            }
            None => {
                let id = new_id()?;
                Decision {
                    plan: Some(plan(
                        Target::Create(id.clone()),
                        changes,
                        owner_change(changes, fresh),
                    )),
                    cookie: new_session(id),
                    dropped: false,
                }
            }
        }
    } else {
        let cookie = match (&active, view.status) {
            (Some(id), _)
                if view.needs_resign
                    || (policy.rolling && view.max_age.or(policy.lifetime).is_some()) =>
            {
                CookieAction::Issue {
                    id: id.clone(),
                    max_age: cookie_max_age(policy, view.max_age, view.remaining),
                }
            }
            (None, SessionStatus::Invalid | SessionStatus::Expired) => CookieAction::Clear,
            _ => CookieAction::None,
        };
        Decision {
            plan: None,
            cookie,
            dropped: false,
        }
    };
    Ok(Ok(decision))
}

/// A session's idle lifetime and what is left of its absolute one, in seconds.
#[derive(Debug, Clone, Copy)]
struct Lifespan {
    idle: u64,
    remaining: u64,
}

/// The plan's owner change; an attach carries the bound of the session it attaches
/// ([`bound_for`]).
fn owner_change(changes: &ChangeSet, life: Lifespan) -> OwnerChange {
    match &changes.owner {
        None => OwnerChange::Keep,
        Some(None) => OwnerChange::Detach,
        Some(Some(literal)) => OwnerChange::Attach {
            owner: Owner::from_literal(literal.clone()),
            bound_ms: bound_for(
                life.idle.saturating_mul(1000),
                life.remaining.saturating_mul(1000),
            ),
        },
    }
}

/// Regenerate keeps the owner: the new id is attached to it afresh (a new index entry
/// and bound for the new store key), unless the response changes the owner itself.
fn moved_owner(changes: &ChangeSet, view: &SessionView, life: Lifespan) -> OwnerChange {
    match (owner_change(changes, life), &view.owner) {
        (OwnerChange::Keep, Some(owner)) => OwnerChange::Attach {
            owner: owner.clone(),
            bound_ms: bound_for(
                life.idle.saturating_mul(1000),
                life.remaining.saturating_mul(1000),
            ),
        },
        (change, _) => change,
    }
}

fn plan(target: Target, changes: &ChangeSet, owner: OwnerChange) -> WritePlan {
    WritePlan {
        target,
        ops: changes.ops.clone(),
        max_age: changes.max_age,
        revision: None,
        owner,
        client: None,
    }
}

/// The session a plan meant to update (or move) is gone: strict ids forbid writing it
/// under its old id, so the same ops go to a brand-new session (docs/protocol.md §9.3).
pub fn retry_as_new(previous: &WritePlan, id: SessionId, policy: &CookiePolicy) -> Decision {
    Decision {
        plan: Some(WritePlan {
            target: Target::Create(id.clone()),
            ops: previous.ops.clone(),
            max_age: previous.max_age,
            revision: None,
            // An attach goes to the new session (its bound, computed for the old one,
            // is only shorter); a kept owner belonged to the session that is gone.
            owner: match &previous.owner {
                OwnerChange::Attach { .. } => previous.owner.clone(),
                _ => OwnerChange::Keep,
            },
            client: previous.client.clone(),
        }),
        cookie: CookieAction::Issue {
            id,
            max_age: cookie_max_age(policy, previous.max_age, policy.absolute_ttl),
        },
        dropped: false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const POLICY: CookiePolicy = CookiePolicy {
        lifetime: None,
        rolling: false,
        absolute_ttl: 1000,
        ttl: 100,
    };

    fn view(status: SessionStatus) -> SessionView {
        SessionView {
            id: (status == SessionStatus::Active).then(|| SessionId::from_trusted("old")),
            status,
            needs_resign: false,
            max_age: None,
            remaining: 500,
            owner: None,
        }
    }

    fn changes(f: impl FnOnce(&mut ChangeSet)) -> ChangeSet {
        let mut c = ChangeSet::default();
        f(&mut c);
        c
    }

    fn set() -> ChangeSet {
        changes(|c| c.ops.push(Op::Set("\"a\"".into(), "1".into())))
    }

    fn run(v: &SessionView, c: &ChangeSet) -> Decision {
        run_on(ResponseClass::Handled, v, c)
    }

    fn run_on(response: ResponseClass, v: &SessionView, c: &ChangeSet) -> Decision {
        try_on(response, v, c).unwrap()
    }

    fn try_on(
        response: ResponseClass,
        v: &SessionView,
        c: &ChangeSet,
    ) -> Result<Decision, StoreUnavailable> {
        decide(v, c, response, &POLICY, || {
            Ok::<_, ()>(SessionId::from_trusted("new"))
        })
        .unwrap()
    }

    fn new_cookie() -> CookieAction {
        CookieAction::Issue {
            id: SessionId::from_trusted("new"),
            max_age: None,
        }
    }

    #[test]
    fn nothing_written_nothing_created() {
        let d = run(&view(SessionStatus::None), &ChangeSet::default());
        assert_eq!(
            d,
            Decision {
                plan: None,
                cookie: CookieAction::None,
                dropped: false,
            }
        );
        let d = run(&view(SessionStatus::Active), &ChangeSet::default());
        assert_eq!(d.cookie, CookieAction::None);
    }

    #[test]
    fn first_write_creates() {
        let d = run(&view(SessionStatus::None), &set());
        assert_eq!(
            d.plan.unwrap().target,
            Target::Create(SessionId::from_trusted("new"))
        );
        assert_eq!(d.cookie, new_cookie());
    }

    #[test]
    fn expired_or_invalid_cookie_is_cleared_or_replaced() {
        for s in [SessionStatus::Expired, SessionStatus::Invalid] {
            assert_eq!(
                run(&view(s), &ChangeSet::default()).cookie,
                CookieAction::Clear
            );
            let d = run(&view(s), &set());
            assert_eq!(d.cookie, new_cookie());
        }
    }

    #[test]
    fn write_to_active_updates_in_place_without_cookie() {
        let d = run(&view(SessionStatus::Active), &set());
        assert_eq!(
            d.plan.unwrap().target,
            Target::Existing(SessionId::from_trusted("old"))
        );
        assert_eq!(d.cookie, CookieAction::None);
    }

    #[test]
    fn destroy_variants() {
        let destroy = changes(|c| c.destroy = true);
        let d = run(&view(SessionStatus::Active), &destroy);
        assert_eq!(
            d.plan.unwrap().target,
            Target::Destroy(SessionId::from_trusted("old"))
        );
        assert_eq!(d.cookie, CookieAction::Clear);
        let mut both = set();
        both.destroy = true;
        let d = run(&view(SessionStatus::Active), &both);
        assert!(matches!(
            d.plan.unwrap().target,
            Target::DestroyThenCreate { .. }
        ));
        assert_eq!(d.cookie, new_cookie());
        let d = run(&view(SessionStatus::None), &destroy);
        assert_eq!(
            d,
            Decision {
                plan: None,
                cookie: CookieAction::None,
                dropped: false,
            }
        );
    }

    #[test]
    fn regenerate_moves_and_keeps_session_lifetime() {
        let regen = changes(|c| c.regenerate = true);
        let mut v = view(SessionStatus::Active);
        v.max_age = Some(3600);
        let d = run(&v, &regen);
        assert!(matches!(d.plan.unwrap().target, Target::Move { .. }));
        assert_eq!(
            d.cookie,
            CookieAction::Issue {
                id: SessionId::from_trusted("new"),
                max_age: Some(500)
            }
        );
        // without a session, Regenerate alone is nothing
        assert_eq!(run(&view(SessionStatus::None), &regen).plan, None);
    }

    #[test]
    fn max_age_and_resign_reissue() {
        let ma = changes(|c| c.max_age = Some(100));
        let d = run(&view(SessionStatus::Active), &ma);
        assert_eq!(
            d.cookie,
            CookieAction::Issue {
                id: SessionId::from_trusted("old"),
                max_age: Some(100)
            }
        );
        let mut v = view(SessionStatus::Active);
        v.needs_resign = true;
        let d = run(&v, &ChangeSet::default());
        assert_eq!(
            d.cookie,
            CookieAction::Issue {
                id: SessionId::from_trusted("old"),
                max_age: None
            }
        );
    }

    #[test]
    fn delete_alone_creates_nothing() {
        let del = changes(|c| c.ops.push(Op::Delete("\"a\"".into())));
        assert_eq!(run(&view(SessionStatus::None), &del).plan, None);
        assert_eq!(
            run(&view(SessionStatus::Expired), &del).cookie,
            CookieAction::Clear
        );
        let d = run(&view(SessionStatus::Active), &del);
        assert_eq!(
            d.plan.unwrap().target,
            Target::Existing(SessionId::from_trusted("old"))
        );
    }

    #[test]
    fn unavailable_store_refuses_writes_only() {
        let v = view(SessionStatus::Unavailable);
        let r = decide(&v, &set(), ResponseClass::Handled, &POLICY, || {
            Ok::<_, ()>(SessionId::from_trusted("n"))
        })
        .unwrap();
        assert_eq!(r, Err(StoreUnavailable { dropped: false }));
        let r = decide(
            &v,
            &ChangeSet::default(),
            ResponseClass::Handled,
            &POLICY,
            || Ok::<_, ()>(SessionId::from_trusted("n")),
        );
        assert_eq!(r.unwrap().unwrap().plan, None);
    }

    #[test]
    fn response_class_is_5xx_or_not() {
        for (status, class) in [
            (200, ResponseClass::Handled),
            (404, ResponseClass::Handled),
            (499, ResponseClass::Handled),
            (500, ResponseClass::ServerError),
            (503, ResponseClass::ServerError),
        ] {
            let status = StatusCode::from_u16(status).unwrap();
            assert_eq!(ResponseClass::of(status), class, "{status}");
        }
    }

    #[test]
    fn a_5xx_drops_writes_and_regenerate() {
        let on_5xx = |v: &SessionView, c: &ChangeSet| run_on(ResponseClass::ServerError, v, c);
        let active = view(SessionStatus::Active);
        let nothing = Decision {
            plan: None,
            cookie: CookieAction::None,
            dropped: true,
        };
        assert_eq!(on_5xx(&active, &set()), nothing);
        assert_eq!(on_5xx(&view(SessionStatus::None), &set()), nothing);
        assert_eq!(on_5xx(&active, &changes(|c| c.max_age = Some(5))), nothing);
        assert_eq!(on_5xx(&active, &changes(|c| c.regenerate = true)), nothing);
        // Nothing to drop, nothing reported.
        let d = on_5xx(&active, &ChangeSet::default());
        assert_eq!((d.plan, d.dropped), (None, false));
        // On a 4xx the same writes apply.
        let d = run_on(ResponseClass::of(StatusCode::NOT_FOUND), &active, &set());
        assert!(d.plan.is_some() && !d.dropped);
    }

    #[test]
    fn a_5xx_still_destroys() {
        let on_5xx =
            |c: &ChangeSet| run_on(ResponseClass::ServerError, &view(SessionStatus::Active), c);
        let old = SessionId::from_trusted("old");
        let d = on_5xx(&changes(|c| c.destroy = true));
        assert_eq!(d.plan.unwrap().target, Target::Destroy(old.clone()));
        assert_eq!((d.cookie, d.dropped), (CookieAction::Clear, false));
        // Destroy with writes: the session is destroyed and no new one is created.
        let mut both = set();
        both.destroy = true;
        both.regenerate = true;
        let d = on_5xx(&both);
        assert_eq!(d.plan.unwrap().target, Target::Destroy(old));
        assert_eq!((d.cookie, d.dropped), (CookieAction::Clear, true));
    }

    fn owned(name: &str) -> SessionView {
        SessionView {
            owner: Some(Owner::from_literal(format!("\"{name}\""))),
            ..view(SessionStatus::Active)
        }
    }

    #[test]
    fn attaching_an_owner_creates_or_updates() {
        let attach = changes(|c| c.owner = Some(Some("\"ann\"".into())));
        let d = run(&view(SessionStatus::None), &attach);
        let p = d.plan.unwrap();
        assert_eq!(p.target, Target::Create(SessionId::from_trusted("new")));
        // A new session: idle 100 s, absolute 1000 s: bound 150 s.
        assert_eq!(
            p.owner,
            OwnerChange::Attach {
                owner: Owner::from_literal("\"ann\"".into()),
                bound_ms: 150_000
            }
        );
        assert_eq!(d.cookie, new_cookie());
        let p = run(&view(SessionStatus::Active), &attach).plan.unwrap();
        assert_eq!(p.target, Target::Existing(SessionId::from_trusted("old")));
        // Detach changes an active session, and creates nothing without one.
        let detach = changes(|c| c.owner = Some(None));
        let p = run(&owned("ann"), &detach).plan.unwrap();
        assert_eq!(p.owner, OwnerChange::Detach);
        assert_eq!(run(&view(SessionStatus::None), &detach).plan, None);
    }

    #[test]
    fn regenerate_reattaches_the_new_id_to_the_owner() {
        let regen = changes(|c| c.regenerate = true);
        let p = run(&owned("ann"), &regen).plan.unwrap();
        assert!(matches!(p.target, Target::Move { .. }));
        // Idle 100 s, 500 s left: bound 150 s.
        assert_eq!(
            p.owner,
            OwnerChange::Attach {
                owner: Owner::from_literal("\"ann\"".into()),
                bound_ms: 150_000
            }
        );
        let p = run(&view(SessionStatus::Active), &regen).plan.unwrap();
        assert_eq!(p.owner, OwnerChange::Keep);
    }

    #[test]
    fn revoking_the_own_owner_destroys_the_session() {
        let revoke = changes(|c| c.revoke_owners.push("\"ann\"".into()));
        let d = run(&owned("ann"), &revoke);
        assert_eq!(
            d.plan.unwrap().target,
            Target::Destroy(SessionId::from_trusted("old"))
        );
        assert_eq!(d.cookie, CookieAction::Clear);
        // Another owner: this session is untouched.
        let d = run(&owned("bob"), &revoke);
        assert_eq!((d.plan, d.cookie), (None, CookieAction::None));
        // Revoke then attach in one response: the old session dies, a new one is owned.
        let mut both = revoke.clone();
        both.owner = Some(Some("\"ann\"".into()));
        let d = run(&owned("ann"), &both);
        let p = d.plan.unwrap();
        assert!(matches!(p.target, Target::DestroyThenCreate { .. }));
        assert!(matches!(p.owner, OwnerChange::Attach { .. }));
        assert_eq!(d.cookie, new_cookie());
        // Revocations still apply on a 5xx, the attach does not.
        let d = run_on(ResponseClass::ServerError, &owned("ann"), &both);
        assert_eq!(
            d.plan.unwrap().target,
            Target::Destroy(SessionId::from_trusted("old"))
        );
        assert!(d.dropped);
        // Revocations need the store.
        let r = try_on(
            ResponseClass::Handled,
            &view(SessionStatus::Unavailable),
            &revoke,
        );
        assert_eq!(r, Err(StoreUnavailable { dropped: false }));
    }

    #[test]
    fn a_5xx_without_a_store_is_not_a_refused_write() {
        // The writes are dropped before the store's absence matters: no 503.
        let v = view(SessionStatus::Unavailable);
        let d = try_on(ResponseClass::ServerError, &v, &set()).expect("not a refused write");
        assert_eq!((d.plan, d.dropped), (None, true));
        let destroy = changes(|c| c.destroy = true);
        assert_eq!(
            try_on(ResponseClass::ServerError, &v, &destroy),
            Err(StoreUnavailable { dropped: false })
        );
        // A Destroy still needs the store; the dropped writes are reported with it.
        let mut both = set();
        both.destroy = true;
        assert_eq!(
            try_on(ResponseClass::ServerError, &v, &both),
            Err(StoreUnavailable { dropped: true })
        );
    }
}
