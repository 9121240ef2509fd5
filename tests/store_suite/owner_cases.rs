//! The owner and touch cases of the shared behavioural suite (docs/protocol.md §11–§12),
//! generic over the engine: the store primitives the pipeline's owner logic is built on.
//! The end-to-end behaviour (revoke through a response, limits, the admin API) is in
//! tests/owners.rs.

use super::*;
use session_sidecar::store::{
    ClientInfo, Owner, OwnerChange, SessionInfo, Touch,
    owners::{bound_for, with_margin},
};

fn owner(name: &str) -> Owner {
    Owner::from_literal(format!("\"{name}\""))
}

fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock after 1970")
        .as_secs()
}

/// Create a session attached to `o` the way the pipeline does: index first, then the
/// session, with the same bound.
async fn create_owned<S: SessionStore>(
    s: &S,
    o: &Owner,
    bound_ms: u64,
    client: Option<ClientInfo>,
) -> SessionId {
    let id = new_id();
    s.index_add(&o.key(), &id.store_key(), bound_ms)
        .await
        .expect("index_add");
    let p = WritePlan {
        owner: OwnerChange::Attach {
            owner: o.clone(),
            bound_ms,
        },
        client,
        ..plan(Target::Create(id.clone()), vec![set("a", "1")])
    };
    assert_eq!(apply(s, p).await, WriteOutcome::Applied);
    id
}

async fn members<S: SessionStore>(s: &S, o: &Owner) -> Vec<String> {
    let mut m = s.index_members(&o.key()).await.expect("index_members");
    m.sort();
    m
}

async fn info<S: SessionStore>(s: &S, id: &SessionId) -> Option<SessionInfo> {
    let mut v = s
        .session_info(&[id.store_key()])
        .await
        .expect("session_info");
    assert_eq!(v.len(), 1);
    v.pop().expect("one answer")
}

fn sorted(mut v: Vec<String>) -> Vec<String> {
    v.sort();
    v
}

pub async fn owner_is_recorded_and_loaded<S: SessionStore>(make: Make<S>) {
    let fx = make(lifetimes());
    let s = &*fx.store;
    let alice = owner("alice");
    let client = ClientInfo::new("192.0.2.7".into(), b"curl/8.0");
    let before = unix_now();
    let id = create_owned(
        s,
        &alice,
        bound_for(60_000, 3_600_000),
        Some(client.clone()),
    )
    .await;
    let got = load(s, &id).await.expect("exists");
    assert_eq!(got.owner, Some(alice.clone()));
    assert_eq!(got.data, fields(&[("a", "1")]));
    assert_eq!(members(s, &alice).await, vec![id.store_key()]);
    let i = info(s, &id).await.expect("live");
    assert_eq!(i.handle, id.store_key());
    assert_eq!(i.owner, Some(alice.clone()));
    assert_eq!(i.client, Some(client));
    assert!(i.created >= before && i.created <= unix_now() + 1, "{i:?}");
    assert!(i.last_seen >= i.created, "{i:?}");
    // Idle lifetime 60 s from the last use.
    assert!(
        (i.last_seen + 55..=i.last_seen + 61).contains(&i.expires),
        "{i:?}"
    );
    // An unowned session loads without an owner and records no client.
    let plain = create(s, vec![set("b", "1")]).await;
    let got = load(s, &plain).await.expect("exists");
    assert_eq!((got.owner, got.index_due), (None, None));
    let i = info(s, &plain).await.expect("live");
    assert_eq!((i.owner, i.client), (None, None));
    // Unknown keys are None, in order.
    let answers = s
        .session_info(&[new_id().store_key(), id.store_key()])
        .await
        .expect("session_info");
    assert!(answers[0].is_none() && answers[1].is_some());
}

pub async fn regenerate_keeps_owner_and_detach_drops_it<S: SessionStore>(make: Make<S>) {
    let fx = make(lifetimes());
    let s = &*fx.store;
    let bob = owner("bob");
    let client = ClientInfo::new("2001:db8::1".into(), b"Firefox");
    let from = create_owned(s, &bob, bound_for(60_000, 3_600_000), Some(client.clone())).await;
    let created = info(s, &from).await.expect("live").created;
    let to = new_id();
    let p = plan(
        Target::Move {
            from: from.clone(),
            to: to.clone(),
        },
        vec![],
    );
    assert_eq!(apply(s, p).await, WriteOutcome::Applied);
    assert_eq!(load(s, &from).await, None);
    let moved = info(s, &to).await.expect("moved");
    assert_eq!(moved.owner, Some(bob.clone()));
    assert_eq!((moved.created, moved.client), (created, Some(client)));
    assert_eq!(load(s, &to).await.expect("live").owner, Some(bob.clone()));
    // Detach.
    let p = WritePlan {
        owner: OwnerChange::Detach,
        ..plan(Target::Existing(to.clone()), vec![])
    };
    assert_eq!(apply(s, p).await, WriteOutcome::Applied);
    assert_eq!(load(s, &to).await.expect("live").owner, None);
    assert_eq!(info(s, &to).await.expect("live").owner, None);
}

pub async fn index_add_remove_and_members<S: SessionStore>(make: Make<S>) {
    let fx = make(lifetimes());
    let s = &*fx.store;
    let o = owner("carol");
    let other = owner("dave");
    let (a, b) = (new_id().store_key(), new_id().store_key());
    s.index_add(&o.key(), &a, 60_000).await.expect("add");
    s.index_add(&o.key(), &b, 60_000).await.expect("add");
    s.index_add(&o.key(), &b, 1_000).await.expect("add again");
    s.index_add(&other.key(), &a, 60_000).await.expect("add");
    assert_eq!(members(s, &o).await, sorted(vec![a.clone(), b.clone()]));
    s.index_remove(&o.key(), std::slice::from_ref(&a))
        .await
        .expect("remove");
    assert_eq!(members(s, &o).await, vec![b.clone()]);
    // Removing what is not there is a no-op; the other owner is untouched.
    s.index_remove(&o.key(), &[new_id().store_key()])
        .await
        .expect("remove unknown");
    assert_eq!(members(s, &other).await, vec![a.clone()]);
    s.index_remove(&o.key(), &[b]).await.expect("remove last");
    assert!(members(s, &o).await.is_empty());
    assert!(members(s, &owner("nobody")).await.is_empty());
}

pub async fn index_entries_expire_with_their_bound<S: SessionStore>(make: Make<S>) {
    let fx = make(lifetimes());
    let s = &*fx.store;
    let o = owner("erin");
    let (short, long) = (new_id().store_key(), new_id().store_key());
    s.index_add(&o.key(), &short, 800).await.expect("add");
    s.index_add(&o.key(), &long, 60_000).await.expect("add");
    // A later, shorter add never shortens an entry.
    s.index_add(&o.key(), &long, 10).await.expect("add");
    // 800 ms + a quarter: gone after 1 s (plus the engine's expiry resolution).
    tokio::time::sleep(
        Duration::from_millis(with_margin(800)) + fx.expiry_slack + Duration::from_millis(400),
    )
    .await;
    assert_eq!(members(s, &o).await, vec![long]);
}

pub async fn destroy_keys_is_destroy<S: SessionStore>(make: Make<S>) {
    let fx = make(lifetimes());
    let s = &*fx.store;
    let o = owner("frank");
    let a = create_owned(s, &o, 90_000, None).await;
    let b = create(s, vec![flash("f", "1")]).await;
    let keep = create(s, vec![set("k", "1")]).await;
    let n = s
        .destroy_keys(&[a.store_key(), b.store_key(), new_id().store_key()])
        .await
        .expect("destroy_keys");
    assert_eq!(n, 2);
    assert_eq!(load(s, &a).await, None);
    assert_eq!(load(s, &b).await, None);
    // Strict ids: a write to a destroyed session never brings it back.
    let p = plan(Target::Existing(a.clone()), vec![set("a", "2")]);
    assert_eq!(apply(s, p).await, WriteOutcome::Gone);
    assert_eq!(load(s, &a).await, None);
    assert!(load(s, &keep).await.is_some());
    assert_eq!(s.destroy_keys(&[]).await.expect("nothing"), 0);
}

pub async fn owned_expiry_is_capped_by_its_bound<S: SessionStore>(make: Make<S>) {
    let fx = make(lifetimes());
    let s = &*fx.store;
    let o = owner("gina");
    // A bound of 1.5 s on a 60 s idle lifetime: every load is due to extend it, and
    // without an extension the session dies with its bound.
    let capped = create_owned(s, &o, 1500, None).await;
    let extended = create_owned(s, &o, 1500, None).await;
    let got = load(s, &capped).await.expect("live");
    let due = got
        .index_due
        .expect("a load close to the bound asks for a new one");
    assert_eq!(due, bound_for(60_000, 3_600_000));
    s.index_add(&o.key(), &extended.store_key(), due)
        .await
        .expect("index_add");
    assert!(
        s.extend_bound(&extended.store_key(), due)
            .await
            .expect("extend")
    );
    // Extending a session that is not owned (or not there) says so.
    let plain = create(s, vec![]).await;
    assert!(
        !s.extend_bound(&plain.store_key(), due)
            .await
            .expect("extend")
    );
    assert!(
        !s.extend_bound(&new_id().store_key(), due)
            .await
            .expect("extend")
    );
    // The extended one's next load refreshes past the old bound.
    assert!(load(s, &extended).await.expect("live").index_due.is_none());
    tokio::time::sleep(Duration::from_millis(2500) + fx.expiry_slack).await;
    assert_eq!(load(s, &capped).await, None, "died with its bound");
    assert!(load(s, &extended).await.is_some(), "lives on its new bound");
}

pub async fn no_touch_loads_do_not_extend<S: SessionStore>(make: Make<S>) {
    let fx = make(Lifetimes {
        ttl: Duration::from_secs(2),
        ..lifetimes()
    });
    let s = &*fx.store;
    let kept = create(s, vec![set("a", "1"), flash("f", "1")]).await;
    let touched = create(s, vec![set("a", "1")]).await;
    // The first Keep load still delivers (and consumes) the flash.
    let got = s
        .load_touch(&kept, Touch::Keep)
        .await
        .expect("load")
        .expect("live");
    assert_eq!(got.flash, fields(&[("f", "1")]));
    for _ in 0..5 {
        tokio::time::sleep(Duration::from_millis(500)).await;
        assert!(
            s.load_touch(&touched, Touch::Refresh)
                .await
                .expect("load")
                .is_some()
        );
        let _ = s.load_touch(&kept, Touch::Keep).await.expect("load");
    }
    // 2.5 s after creation: only the refreshed one is alive.
    tokio::time::sleep(fx.expiry_slack + Duration::from_millis(200)).await;
    assert!(load(s, &touched).await.is_some());
    assert_eq!(load(s, &kept).await, None);
}

pub async fn touch_after_skips_early_refreshes<S: SessionStore>(make: Make<S>) {
    let fx = make(Lifetimes {
        ttl: Duration::from_secs(3),
        touch_after: Duration::from_secs(2),
        ..lifetimes()
    });
    let s = &*fx.store;
    let id = create(s, vec![set("a", "1")]).await;
    let seen = info(s, &id).await.expect("live").last_seen;
    // Loads within touch_after of the last refresh change nothing: the session still
    // dies 3 s after its creation, however often it is read in between.
    tokio::time::sleep(Duration::from_millis(1000)).await;
    assert!(load(s, &id).await.is_some());
    assert_eq!(info(s, &id).await.expect("live").last_seen, seen);
    tokio::time::sleep(Duration::from_millis(2300) + fx.expiry_slack).await;
    assert_eq!(load(s, &id).await, None, "the early load did not refresh");
    // A load after touch_after refreshes: 2.2 s in, read, then alive at 4 s.
    let id = create(s, vec![set("a", "1")]).await;
    tokio::time::sleep(Duration::from_millis(2200)).await;
    assert!(load(s, &id).await.is_some());
    tokio::time::sleep(Duration::from_millis(1800)).await;
    assert!(load(s, &id).await.is_some(), "refreshed at 2.2 s");
}
