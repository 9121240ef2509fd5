//! Owners end to end (docs/protocol.md §11–§12): "log out everywhere", the owner limit,
//! the session admin API and routes that do not keep a session alive, through the real
//! proxy, a real upstream and every store engine (memory, Redis standalone, Cluster and
//! Sentinel, memcached; real servers started by the tests).

mod backing;
mod harness;

use std::time::Duration;

use backing::stores::*;
use base64::{Engine, engine::general_purpose::URL_SAFE_NO_PAD};
use harness::{Client, Resp, Sidecar};
use serde_json::{Value, json};
use session_sidecar::store::any::AnyStore;
use sha2::{Digest, Sha256};

const TOKEN: &str = "admin-token-0123456789abcdef-0123456789";

/// Every owner in this binary is unique: the cluster and sentinel stores are shared by
/// the tests running in parallel.
fn unique(name: &str) -> String {
    let mut raw = [0u8; 6];
    getrandom::fill(&mut raw).expect("random");
    format!("{name}-{}", URL_SAFE_NO_PAD.encode(raw))
}

fn literal(owner: &str) -> String {
    serde_json::to_string(owner).expect("a JSON string")
}

/// Log `c` in as `owner` the recommended way: Regenerate + Owner + Set.
async fn login(c: &mut Client, owner: &str) -> Resp {
    let r = c
        .write(&[
            ("x-session-regenerate", "1"),
            ("x-session-owner", &literal(owner)),
            ("x-session-set", &json!({"user": owner}).to_string()),
        ])
        .await;
    assert_eq!(r.status, 200, "{r:?}");
    r
}

/// The session status the app sees on this client's next request.
async fn status(c: &mut Client) -> String {
    c.get("/").await.sstatus()
}

fn handle(sid: &str) -> String {
    URL_SAFE_NO_PAD.encode(Sha256::digest(sid.as_bytes()))
}

/// An admin API call with the bearer token (or `auth`).
async fn admin(addr: std::net::SocketAddr, method: &str, path: &str, auth: Option<&str>) -> Resp {
    let mut c = Client::new(addr);
    let bearer = format!("Bearer {}", auth.unwrap_or(TOKEN));
    c.request(method, path, &[("authorization", bearer.as_str())], None)
        .await
}

fn body_json(r: &Resp) -> Value {
    serde_json::from_slice(&r.body).unwrap_or_else(|e| panic!("{e}: {:?}", r.body))
}

fn admin_config(extra: Value) -> Value {
    let mut cfg = json!({"admin": {"listen": "127.0.0.1:0", "token": TOKEN}});
    harness::merge(&mut cfg, extra);
    cfg
}

fn admin_addr(sc: &Sidecar) -> std::net::SocketAddr {
    sc.running
        .as_ref()
        .and_then(|r| r.admin_addr)
        .expect("admin listener")
}

macro_rules! owner_suite {
    ($engine:ident) => {
        mod $engine {
            use super::*;

            fn store() -> Store {
                super::$engine()
            }

            #[tokio::test]
            async fn the_app_sees_the_owner_and_a_client_cannot_forge_it() {
                let s = store();
                let sc = Sidecar::start(s.section.clone(), json!({})).await;
                let ann = unique("ann");
                let mut c = sc.client();
                let r = login(&mut c, &ann).await;
                assert!(r.reserved_in_response().is_empty(), "{:?}", r.headers);
                let r = c.get_with("/", &[("x-session-owner", "\"mallory\""), ("X_Session_Owner", "\"m\"")]).await;
                assert_eq!(r.up_one("x-session-owner"), literal(&ann));
                assert_eq!(r.session(), json!({"user": ann}));
                // Detach: no owner header any more, the session stays.
                c.write(&[("x-session-owner", "null")]).await;
                let r = c.get("/").await;
                assert!(r.up_all("x-session-owner").is_empty(), "{:?}", r.up_headers());
                assert_eq!(r.sstatus(), "active");
                // A forged owner header on a client without a session reaches nobody.
                let mut anon = sc.client();
                let r = anon.get_with("/", &[("x-session-owner", "\"ann\"")]).await;
                assert!(r.up_all("x-session-owner").is_empty());
                // A malformed owner is a 502 and writes nothing.
                let mut d = sc.client();
                let r = d.write(&[("x-session-owner", "ann"), ("x-session-set", "{\"a\":1}")]).await;
                assert_eq!(r.status, 502);
                assert!(d.cookie.is_none());
            }

            #[tokio::test]
            async fn revoke_owner_from_another_session_logs_out_everywhere() {
                let s = store();
                let sc = Sidecar::start(s.section.clone(), json!({})).await;
                let ann = unique("ann");
                let bob = unique("bob");
                let (mut a1, mut a2, mut b) = (sc.client(), sc.client(), sc.client());
                login(&mut a1, &ann).await;
                login(&mut a2, &ann).await;
                login(&mut b, &bob).await;
                // An unowned session (an admin console, say) revokes ann.
                let mut console = sc.client();
                let r = console.write(&[("x-session-revoke-owner", &literal(&ann))]).await;
                assert_eq!(r.status, 200);
                assert!(console.cookie.is_none(), "revoking creates no session");
                assert_eq!(status(&mut a1).await, "expired");
                assert_eq!(status(&mut a2).await, "expired");
                assert_eq!(status(&mut b).await, "active");
                // Revoking an owner without sessions is fine.
                let r = console.write(&[("x-session-revoke-owner", &literal(&unique("nobody")))]).await;
                assert_eq!(r.status, 200);
            }

            #[tokio::test]
            async fn revoking_the_own_owner_clears_the_cookie_and_revoke_then_attach_logs_in_again() {
                let s = store();
                let sc = Sidecar::start(s.section.clone(), json!({})).await;
                let ann = unique("ann");
                let (mut a1, mut a2, mut a3) = (sc.client(), sc.client(), sc.client());
                login(&mut a1, &ann).await;
                login(&mut a2, &ann).await;
                login(&mut a3, &ann).await;
                let r = a1.write(&[("x-session-revoke-owner", &literal(&ann))]).await;
                assert!(r.cookie("session").expect("Set-Cookie").is_clearing(), "{r:?}");
                assert!(a1.cookie.is_none());
                assert_eq!(status(&mut a2).await, "expired");
                // Revoke then attach in one response: every old session dies, this client
                // gets a fresh one, owned.
                let old = a3.sid().expect("cookie");
                let r = a3.write(&[
                    ("x-session-revoke-owner", &literal(&ann)),
                    ("x-session-owner", &literal(&ann)),
                    ("x-session-flash-set", "{\"msg\":\"signed in; other devices signed out\"}"),
                ]).await;
                assert_eq!(r.status, 200);
                let new = a3.sid().expect("a new cookie");
                assert_ne!(old, new);
                let r = a3.get("/").await;
                assert_eq!((r.sstatus(), r.up_one("x-session-owner")), ("active".to_string(), literal(&ann)));
                assert_eq!(r.flash(), json!({"msg": "signed in; other devices signed out"}));
                // The old id stays dead.
                let mut stale = sc.client();
                stale.cookie = a2.cookie.clone();
                assert!(matches!(status(&mut stale).await.as_str(), "expired" | "none"));
            }

            #[tokio::test]
            async fn revoke_others_keeps_the_current_session() {
                let s = store();
                let sc = Sidecar::start(s.section.clone(), json!({})).await;
                let ann = unique("ann");
                let mut clients: Vec<Client> = (0..3).map(|_| sc.client()).collect();
                for c in &mut clients {
                    login(c, &ann).await;
                }
                // A password change on the first: Revoke-Others (and a Regenerate, often).
                let before = clients[0].sid();
                let r = clients[0].write(&[("x-session-regenerate", "1"), ("x-session-revoke-others", "1")]).await;
                assert_eq!(r.status, 200);
                assert_ne!(clients[0].sid(), before, "regenerated");
                let r = clients[0].get("/").await;
                assert_eq!((r.sstatus(), r.up_one("x-session-owner")), ("active".to_string(), literal(&ann)));
                for c in &mut clients[1..] {
                    assert_eq!(status(c).await, "expired");
                }
                // Without an owner, Revoke-Others does nothing.
                let mut plain = sc.client();
                plain.write(&[("x-session-set", "{\"a\":1}")]).await;
                let r = plain.write(&[("x-session-revoke-others", "1")]).await;
                assert_eq!(r.status, 200);
                assert_eq!(status(&mut plain).await, "active");
            }

            #[tokio::test]
            async fn a_revoked_session_written_concurrently_stays_dead() {
                let s = store();
                let sc = Sidecar::start(s.section.clone(), json!({})).await;
                let ann = unique("ann");
                let mut a = sc.client();
                login(&mut a, &ann).await;
                let old = a.cookie.clone();
                let slow_addr = sc.addr;
                let slow_cookie = a.cookie.clone();
                // A slow request of the session, loaded before the revoke, writes after it.
                let slow = tokio::spawn(async move {
                    let mut c = Client::new(slow_addr);
                    c.cookie = slow_cookie;
                    let reply = serde_json::to_string(&[("x-session-set", "{\"late\":1}")]).unwrap();
                    let r = c.request("GET", "/", &[("x-test-reply", reply.as_str()), ("x-test-delay-ms", "800")], None).await;
                    (r, c.cookie)
                });
                tokio::time::sleep(Duration::from_millis(200)).await;
                let mut console = sc.client();
                console.write(&[("x-session-revoke-owner", &literal(&ann))]).await;
                let (r, cookie) = slow.await.expect("slow request");
                assert_eq!(r.status, 200);
                // Strict ids: the write went to a brand-new session, without the owner.
                assert_ne!(cookie, old);
                let mut revived = sc.client();
                revived.cookie = old;
                assert_eq!(status(&mut revived).await, "expired");
                let mut fresh = sc.client();
                fresh.cookie = cookie;
                let r = fresh.get("/").await;
                assert_eq!(r.session(), json!({"late": 1}));
                assert!(r.up_all("x-session-owner").is_empty());
            }

            #[tokio::test]
            async fn the_owner_limit_holds_under_parallel_logins() {
                let s = store();
                let sc = Sidecar::start(s.section.clone(), admin_config(json!({"session": {"max_per_owner": 2}}))).await;
                let ann = unique("ann");
                // An old session first: it is the least recently used.
                let mut old = sc.client();
                login(&mut old, &ann).await;
                tokio::time::sleep(Duration::from_millis(1100)).await;
                let addr = sc.addr;
                let logins: Vec<_> = (0..10)
                    .map(|_| {
                        let ann = ann.clone();
                        tokio::spawn(async move {
                            let mut c = Client::new(addr);
                            login(&mut c, &ann).await;
                            c
                        })
                    })
                    .collect();
                let mut clients = Vec::new();
                for l in logins {
                    clients.push(l.await.expect("login"));
                }
                let mut alive = 0;
                for c in &mut clients {
                    if status(c).await == "active" {
                        alive += 1;
                    }
                }
                assert!((1..=2).contains(&alive), "{alive} sessions alive with a limit of 2");
                assert_eq!(status(&mut old).await, "expired", "the least recently used goes first");
                let r = admin(admin_addr(&sc), "GET", &format!("/sessions?owner={ann}"), None).await;
                assert_eq!(body_json(&r)["total"], json!(alive));
                // A sequential login now keeps exactly the limit: the newest and the most
                // recently used other.
                let mut last = sc.client();
                login(&mut last, &ann).await;
                let r = admin(admin_addr(&sc), "GET", &format!("/sessions?owner={ann}"), None).await;
                assert_eq!(body_json(&r)["total"], json!(2));
                assert_eq!(status(&mut last).await, "active");
            }

            #[tokio::test]
            async fn the_index_expires_with_its_sessions() {
                let s = store();
                let sc = Sidecar::start(s.section.clone(), admin_config(json!({"session": {"ttl": "2s"}}))).await;
                let ann = unique("ann");
                let mut a = sc.client();
                login(&mut a, &ann).await;
                let r = admin(admin_addr(&sc), "GET", &format!("/sessions?owner={ann}"), None).await;
                assert_eq!(body_json(&r)["total"], json!(1));
                // Idle 2 s; the index entry's bound is 3 s plus a quarter: gone by 4.5 s.
                tokio::time::sleep(Duration::from_millis(4500)).await;
                assert_eq!(status(&mut a).await, "expired");
                let r = admin(admin_addr(&sc), "GET", &format!("/sessions?owner={ann}"), None).await;
                assert_eq!(body_json(&r), json!({"owner": ann, "sessions": [], "total": 0, "truncated": false}));
                if let Some(redis) = &s.redis {
                    // Nothing at all is left behind in the store.
                    assert_eq!(backing::keys(redis.port(), 0, "*"), Vec::<String>::new());
                    assert_eq!(backing::keys(redis.port(), 1, "*"), Vec::<String>::new());
                }
                if let Some(running) = &sc.running
                    && let AnyStore::Memory(m) = running.proxy.store().engine()
                {
                    assert_eq!((m.owner_indexes(), m.len()), (0, 0));
                }
            }

            #[tokio::test]
            async fn the_admin_api_lists_and_revokes_with_a_token() {
                let s = store();
                let sc = Sidecar::start(s.section.clone(), admin_config(json!({"session": {"record_client": true}}))).await;
                let addr = admin_addr(&sc);
                let ann = unique("ann é");
                let (mut a1, mut a2) = (sc.client(), sc.client());
                a1.get_with("/", &[("user-agent", "phone/1.0")]).await;
                let reply = serde_json::to_string(&[("x-session-owner", literal(&ann))]).unwrap();
                a1.request("GET", "/", &[("x-test-reply", reply.as_str()), ("user-agent", "phone/1.0")], None).await;
                tokio::time::sleep(Duration::from_millis(1100)).await;
                login(&mut a2, &ann).await;
                let query = format!("/sessions?owner={}", ann.replace(' ', "%20").replace('é', "%C3%A9"));
                // Authentication.
                for auth in [None, Some("wrong"), Some("")] {
                    let mut c = Client::new(addr);
                    let headers: Vec<(&str, String)> = auth.map(|a| ("authorization", format!("Bearer {a}"))).into_iter().collect();
                    let h: Vec<(&str, &str)> = headers.iter().map(|(k, v)| (*k, v.as_str())).collect();
                    let r = c.request("GET", &query, &h, None).await;
                    assert_eq!(r.status, 401, "{auth:?}");
                    assert_eq!(r.header("www-authenticate").as_deref(), Some("Bearer"));
                }
                let r = admin(addr, "GET", &query, None).await;
                assert_eq!(r.status, 200, "{r:?}");
                assert_eq!(r.header("content-type").as_deref(), Some("application/json"));
                let body = body_json(&r);
                assert_eq!((body["owner"].clone(), body["total"].clone()), (json!(ann), json!(2)));
                let sessions = body["sessions"].as_array().expect("a list");
                // Most recently used first.
                let (h1, h2) = (handle(&a1.sid().expect("sid")), handle(&a2.sid().expect("sid")));
                assert_eq!(sessions[0]["handle"], json!(h2));
                assert_eq!(sessions[1]["handle"], json!(h1));
                assert_eq!(sessions[1]["ip"], json!("127.0.0.1"));
                assert_eq!(sessions[1]["user_agent"], json!("phone/1.0"));
                for s in sessions {
                    let (created, seen, expires) = (s["created"].as_u64().unwrap(), s["last_seen"].as_u64().unwrap(), s["expires"].as_u64().unwrap());
                    assert!(created <= seen && seen < expires, "{s}");
                }
                // No session id or cookie value anywhere in the answer.
                let text = String::from_utf8_lossy(&r.body).to_string();
                for c in [&a1, &a2] {
                    assert!(!text.contains(&c.sid().unwrap()), "{text}");
                    assert!(!text.contains(c.cookie.as_ref().unwrap().as_str()), "{text}");
                }
                let r = admin(addr, "GET", &format!("{query}&limit=1"), None).await;
                let body = body_json(&r);
                assert_eq!((body["sessions"].as_array().unwrap().len(), body["truncated"].clone()), (1, json!(true)));
                // One session by handle.
                let r = admin(addr, "DELETE", &format!("/sessions/{h1}"), None).await;
                assert_eq!((r.status, body_json(&r)), (200, json!({"revoked": 1})));
                assert_eq!(status(&mut a1).await, "expired");
                assert_eq!(admin(addr, "DELETE", &format!("/sessions/{h1}"), None).await.status, 404);
                assert_eq!(admin(addr, "DELETE", "/sessions/not-a-handle", None).await.status, 400);
                assert_eq!(admin(addr, "GET", "/sessions", None).await.status, 400);
                let r = admin(addr, "POST", &query, None).await;
                assert_eq!((r.status, r.header("allow").as_deref()), (405, Some("GET, DELETE")));
                // Every session of the owner.
                let r = admin(addr, "DELETE", &query, None).await;
                assert_eq!((r.status, body_json(&r)), (200, json!({"revoked": 1})));
                assert_eq!(status(&mut a2).await, "expired");
                // Counted.
                let mut m = Client::new(addr);
                let metrics = String::from_utf8_lossy(&m.get("/metrics").await.body).to_string();
                for line in [
                    "session_sidecar_sessions_revoked_total{cause=\"admin\"} 2",
                    "session_sidecar_admin_api_calls_total{result=\"ok\"} 4",
                    "session_sidecar_admin_api_calls_total{result=\"unauthorized\"} 3",
                    "session_sidecar_admin_api_calls_total{result=\"not_found\"} 1",
                    "session_sidecar_admin_api_calls_total{result=\"bad_request\"} 3",
                ] {
                    assert!(metrics.contains(line), "{line} not in\n{metrics}");
                }
            }

            #[tokio::test]
            async fn no_touch_routes_do_not_keep_a_session_alive() {
                let s = store();
                let sc = Sidecar::start(s.section.clone(), json!({"session": {"ttl": "2s", "no_touch": ["/poll"]}})).await;
                let (mut polled, mut used) = (sc.client(), sc.client());
                polled.write(&[("x-session-set", "{\"a\":1}"), ("x-session-flash-set", "{\"m\":1}")]).await;
                used.write(&[("x-session-set", "{\"a\":1}")]).await;
                // The poll still reads the session and consumes its flash.
                let r = polled.get("/poll/status").await;
                assert_eq!((r.sstatus(), r.flash()), ("active".to_string(), json!({"m": 1})));
                let mut seen = Vec::new();
                for _ in 0..8 {
                    tokio::time::sleep(Duration::from_millis(500)).await;
                    assert_eq!(used.get("/page").await.sstatus(), "active");
                    seen.push(polled.get("/poll/status").await.sstatus());
                }
                // Polled every 0.5 s for 4 s, the session still died 2 s after its last
                // real use (memcached: up to a second later, its clock ticks in seconds);
                // the expired answer also clears the cookie, so `none` follows.
                assert_eq!(seen[0], "active", "{seen:?}");
                let died = seen.iter().position(|s| s == "expired").expect("expired");
                assert!((2..=6).contains(&died), "{seen:?}");
                assert!(seen[..died].iter().all(|s| s == "active"), "{seen:?}");
                assert!(seen[died + 1..].iter().all(|s| s == "none"), "{seen:?}");
                assert_eq!(used.get("/page").await.sstatus(), "active");
            }
        }
    };
}

owner_suite!(memory);
owner_suite!(redis);
owner_suite!(cluster);
owner_suite!(sentinel);
owner_suite!(memcached);

/// Stores many sidecars share (the memory store belongs to one process).
macro_rules! shared_suite {
    ($engine:ident) => {
        mod $engine {
            use super::super::*;

            fn store() -> Store {
                super::super::$engine()
            }

            #[tokio::test]
            async fn two_sidecars_on_one_store_see_one_revocation() {
                let s = store();
                let one = Sidecar::start(s.section.clone(), json!({})).await;
                let two = Sidecar::start(s.section.clone(), json!({})).await;
                let ann = unique("ann");
                let mut a = one.client();
                login(&mut a, &ann).await;
                let mut b = two.client();
                login(&mut b, &ann).await;
                let mut console = two.client();
                console
                    .write(&[("x-session-revoke-owner", &literal(&ann))])
                    .await;
                assert_eq!(status(&mut a).await, "expired");
                assert_eq!(status(&mut b).await, "expired");
            }
        }
    };
}

mod shared {
    shared_suite!(redis);
    shared_suite!(cluster);
    shared_suite!(sentinel);
    shared_suite!(memcached);
}
