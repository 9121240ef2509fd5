//! The behavioural suite: docs/protocol.md §3–§9 as a client and an app see them, written
//! once and run against every store engine (`memory`, `redis` standalone, on a cluster
//! and under Sentinel, `memcached`) through the
//! real proxy, a real upstream HTTP server and, for Redis and memcached, a real server per
//! test.

mod backing;
mod harness;

use std::time::Duration;

use backing::stores::*;
use harness::{Client, Sidecar};
use serde_json::{Value, json};

async fn start(store: &Store, extra: Value) -> Sidecar {
    Sidecar::start(store.section.clone(), extra).await
}

fn set(v: Value) -> (&'static str, String) {
    ("x-session-set", v.to_string())
}

async fn write(c: &mut Client, pairs: &[(&str, String)]) -> harness::Resp {
    let pairs: Vec<(&str, &str)> = pairs.iter().map(|(k, v)| (*k, v.as_str())).collect();
    c.write(&pairs).await
}

macro_rules! session_suite {
    ($engine:ident) => {
        mod $engine {
            use super::*;

            fn store() -> Store {
                super::$engine()
            }

            #[tokio::test]
            async fn no_cookie_gets_empty_session_and_no_cookie() {
                let s = store();
                let sc = start(&s, json!({})).await;
                let r = sc.client().get("/hello?x=1").await;
                assert_eq!(r.status, 200);
                assert_eq!(r.up_one("x-session"), "{}");
                assert_eq!(r.up_one("x-session-flash"), "{}");
                assert_eq!(r.sstatus(), "none");
                assert!(r.up_all("x-session-id").is_empty());
                assert!(r.all("set-cookie").is_empty());
            }

            #[tokio::test]
            async fn read_only_requests_never_create_a_session() {
                let s = store();
                let sc = start(&s, json!({})).await;
                let mut c = sc.client();
                for status in ["200", "404", "500", "302"] {
                    let r = c.get_with("/", &[("x-test-status", status)]).await;
                    assert!(r.all("set-cookie").is_empty(), "{r:?}");
                }
                assert!(c.cookie.is_none());
                if let Some(redis) = &s.redis {
                    assert!(backing::keys(redis.port(), 0, "*").is_empty());
                    assert!(backing::keys(redis.port(), 1, "*").is_empty());
                }
                if let Some(memcached) = &s.memcached {
                    assert_eq!(memcached.items(), 0);
                }
            }

            #[tokio::test]
            async fn first_write_creates_session_with_default_cookie() {
                let s = store();
                let sc = start(&s, json!({})).await;
                let mut c = sc.client();
                let r = write(&mut c, &[set(json!({"user": "ann", "n": 1}))]).await;
                assert_eq!(r.status, 200);
                assert!(r.reserved_in_response().is_empty(), "{:?}", r.headers);
                let ck = r.cookie("session").expect("Set-Cookie");
                assert_eq!(ck.get("path").as_deref(), Some("/"));
                assert!(ck.has("secure") && ck.has("httponly"));
                assert_eq!(ck.get("samesite").as_deref(), Some("Lax"));
                assert!(!ck.has("max-age") && !ck.has("expires") && !ck.has("domain"));
                assert!(r.header("cache-control").unwrap().contains("private"));
                let r = c.get("/").await;
                assert_eq!(r.sstatus(), "active");
                assert_eq!(r.session(), json!({"user": "ann", "n": 1}));
                assert!(r.all("set-cookie").is_empty(), "a plain read sends no cookie");
            }

            #[tokio::test]
            async fn set_delete_replace_incr() {
                let s = store();
                let sc = start(&s, json!({})).await;
                let mut c = sc.client();
                write(&mut c, &[set(json!({"a": 1, "b": 2, "c": {"x": 1}}))]).await;
                write(&mut c, &[set(json!({"b": 3, "c": {"y": 2}}))]).await;
                assert_eq!(c.get("/").await.session(), json!({"a": 1, "b": 3, "c": {"y": 2}}));
                write(&mut c, &[("x-session-delete", r#"["a","missing"]"#.into())]).await;
                assert_eq!(c.get("/").await.session(), json!({"b": 3, "c": {"y": 2}}));
                write(&mut c, &[("x-session-incr", r#"{"n":5,"m":-1}"#.into())]).await;
                write(&mut c, &[("x-session-incr", r#"{"n":-7}"#.into())]).await;
                assert_eq!(c.get("/").await.session(), json!({"b": 3, "c": {"y": 2}, "n": -2, "m": -1}));
                write(&mut c, &[("x-session-replace", r#"{"z":[9]}"#.into())]).await;
                assert_eq!(c.get("/").await.session(), json!({"z": [9]}));
                write(&mut c, &[("x-session-replace", "{}".into())]).await;
                let r = c.get("/").await;
                assert_eq!((r.session(), r.sstatus()), (json!({}), "active".to_string()));
            }

            #[tokio::test]
            async fn effects_apply_in_spec_order_whatever_the_header_order() {
                let s = store();
                let sc = start(&s, json!({})).await;
                let mut c = sc.client();
                write(&mut c, &[set(json!({"old": 1}))]).await;
                write(&mut c, &[
                    ("x-session-incr", r#"{"n":2}"#.into()),
                    set(json!({"n": 5, "s": 1})),
                    ("x-session-delete", r#"["x"]"#.into()),
                    ("x-session-replace", r#"{"x":1,"y":2}"#.into()),
                ]).await;
                assert_eq!(c.get("/").await.session(), json!({"y": 2, "n": 7, "s": 1}));
                write(&mut c, &[set(json!({"a": 1})), set(json!({"a": 2})),
                    ("x-session-incr", r#"{"k":1}"#.into()), ("x-session-incr", r#"{"k":2}"#.into())]).await;
                let got = c.get("/").await.session();
                assert_eq!((got["a"].clone(), got["k"].clone()), (json!(2), json!(3)));
            }

            #[tokio::test]
            async fn values_round_trip_with_escaping() {
                let s = store();
                let sc = start(&s, json!({})).await;
                let mut c = sc.client();
                let value = json!({"s": "Zoë ✓ 日本 😀", "ctl": "a\u{0}b\r\n\u{7f}\u{2028}", "f": 1.5,
                    "big": 9007199254740991_i64, "nil": null, "arr": [1, "two", {"x": []}], "clé": true});
                // DEL is not allowed raw in a header value: the app escapes it.
                let text = value.to_string().replace('\u{7f}', "\\u007f");
                write(&mut c, &[("x-session-set", text)]).await;
                let r = c.get("/").await;
                let raw = r.up_one("x-session");
                assert!(raw.bytes().all(|b| (0x20..0x7f).contains(&b)), "{raw}");
                assert_eq!(serde_json::from_str::<Value>(&raw).unwrap(), value);
            }

            #[tokio::test]
            async fn destroy_expires_cookie_and_kills_the_id() {
                let s = store();
                let sc = start(&s, json!({})).await;
                let mut c = sc.client();
                write(&mut c, &[set(json!({"user": "ann"}))]).await;
                let mut old = c.clone();
                let r = write(&mut c, &[("x-session-destroy", "1".into())]).await;
                let ck = r.cookie("session").expect("clearing cookie");
                assert!(ck.is_clearing() && ck.get("path").as_deref() == Some("/"));
                assert!(c.cookie.is_none());
                let r = old.get("/").await;
                assert_eq!((r.sstatus(), r.session()), ("expired".to_string(), json!({})));
                assert!(r.cookie("session").unwrap().is_clearing(), "expired cookie is cleared");
            }

            #[tokio::test]
            async fn destroy_plus_writes_starts_a_fresh_session() {
                let s = store();
                let sc = start(&s, json!({})).await;
                let mut c = sc.client();
                write(&mut c, &[set(json!({"user": "ann"}))]).await;
                let mut old = c.clone();
                write(&mut c, &[("x-session-destroy", "1".into()),
                    ("x-session-flash-set", r#"{"notice":"logged out"}"#.into())]).await;
                assert!(c.sid().is_some() && c.sid() != old.sid());
                let r = c.get("/").await;
                assert_eq!((r.session(), r.flash()), (json!({}), json!({"notice": "logged out"})));
                assert_eq!(old.get("/").await.sstatus(), "expired");
            }

            #[tokio::test]
            async fn regenerate_moves_data_to_a_new_id() {
                let s = store();
                let sc = start(&s, json!({"headers": {"expose_id": true}})).await;
                let mut c = sc.client();
                write(&mut c, &[set(json!({"user": "ann"}))]).await;
                let mut old = c.clone();
                write(&mut c, &[set(json!({"n": 1})), ("x-session-flash-set", r#"{"f":1}"#.into())]).await;
                let r = write(&mut c, &[("x-session-regenerate", "1".into())]).await;
                assert_eq!(r.flash(), json!({"f": 1}));
                assert!(r.cookie("session").is_some() && c.sid() != old.sid());
                let r = c.get("/").await;
                assert_eq!(r.session(), json!({"user": "ann", "n": 1}));
                assert_eq!(Some(r.up_one("x-session-id")), c.sid());
                assert_eq!(old.get("/").await.sstatus(), "expired");
            }

            #[tokio::test]
            async fn max_age_makes_a_persistent_cookie() {
                let s = store();
                let sc = start(&s, json!({})).await;
                let mut c = sc.client();
                let r = write(&mut c, &[set(json!({"a": 1})), ("x-session-max-age", "3600".into())]).await;
                assert_eq!(r.cookie("session").unwrap().get("max-age").as_deref(), Some("3600"));
                let r = write(&mut c, &[("x-session-max-age", "7200".into())]).await;
                assert_eq!(r.cookie("session").unwrap().get("max-age").as_deref(), Some("7200"));
                let r = write(&mut c, &[("x-session-regenerate", "1".into())]).await;
                assert_eq!(r.cookie("session").unwrap().get("max-age").as_deref(), Some("7200"),
                    "the session's own lifetime survives regeneration");
                assert_eq!(c.get("/").await.session(), json!({"a": 1}));
            }

            #[tokio::test]
            async fn flash_is_delivered_once_and_new_flash_waits_for_the_next_request() {
                let s = store();
                let sc = start(&s, json!({})).await;
                let mut c = sc.client();
                let r = write(&mut c, &[("x-session-flash-set", r#"{"first":1}"#.into())]).await;
                assert!(r.cookie("session").is_some(), "a flash creates the session");
                let r = write(&mut c, &[("x-session-flash-set", r#"{"second":2}"#.into())]).await;
                assert_eq!(r.flash(), json!({"first": 1}));
                assert_eq!(c.get("/").await.flash(), json!({"second": 2}));
                assert_eq!(c.get("/").await.flash(), json!({}));
            }

            #[tokio::test]
            async fn writes_on_5xx_are_dropped_and_on_4xx_applied() {
                let s = store();
                let sc = start(&s, json!({})).await;
                let mut c = sc.client();
                write(&mut c, &[set(json!({"a": 1}))]).await;
                let r = c.write_with(&[("x-session-set", r#"{"a":2}"#)], &[("x-test-status", "503")]).await;
                assert_eq!(r.status, 503);
                assert!(r.reserved_in_response().is_empty() && r.cookie("session").is_none());
                assert_eq!(c.get("/").await.session(), json!({"a": 1}));
                // A logout is honoured even when the app then fails (docs/security.md §9).
                let mut other = sc.client();
                write(&mut other, &[set(json!({"u": 1}))]).await;
                let mut stale = other.clone();
                let r = other.write_with(&[("x-session-destroy", "1"), ("x-session-set", r#"{"x":1}"#)],
                    &[("x-test-status", "500")]).await;
                assert_eq!(r.status, 500);
                assert!(r.cookie("session").unwrap().is_clearing());
                assert_eq!(stale.get("/").await.sstatus(), "expired");
                let r = c.write_with(&[("x-session-flash-set", r#"{"err":"bad"}"#)], &[("x-test-status", "422")]).await;
                assert_eq!(r.status, 422);
                assert_eq!(c.get("/").await.flash(), json!({"err": "bad"}));
            }

            #[tokio::test]
            async fn malformed_instructions_give_502_and_write_nothing() {
                let s = store();
                let sc = start(&s, json!({"session": {"max_size": "64B"}})).await;
                let mut c = sc.client();
                write(&mut c, &[set(json!({"s": "text", "n": 1}))]).await;
                let bad: Vec<Vec<(&str, String)>> = vec![
                    vec![("x-session-set", "{not json".into())],
                    vec![("x-session-set", "[1]".into())],
                    vec![("x-session-set", r#"{"a":1,"a":2}"#.into())],
                    vec![("x-session-set", r#"{"":1}"#.into())],
                    vec![("x-session-delete", r#"{"a":1}"#.into())],
                    vec![("x-session-incr", r#"{"n":1.5}"#.into())],
                    vec![set(json!({"ok": 1})), ("x-session-incr", r#"{"s":1}"#.into())],
                    vec![set(json!({"big": "x".repeat(80)}))],
                    vec![("x-session-max-age", "soon".into())],
                    // I-JSON: beyond a double's range, in a value or nested (protocol §5.2)
                    vec![("x-session-set", r#"{"s":1e400}"#.into())],
                    vec![set(json!({"ok": 1})), ("x-session-set", r#"{"t":[-1e400]}"#.into())],
                ];
                for pairs in bad {
                    let r = write(&mut c, &pairs).await;
                    assert_eq!(r.status, 502, "{pairs:?} -> {r:?}");
                    assert!(String::from_utf8_lossy(&r.body).contains("request id"));
                    assert!(r.reserved_in_response().is_empty());
                    assert!(r.cookie("session").is_none());
                }
                assert_eq!(c.get("/").await.session(), json!({"s": "text", "n": 1}));
                // a value of exactly max_size bytes is allowed: {"s":"text","n":1} is 18 bytes
                let exact = "x".repeat(64 - 18 - r#","p":"""#.len());
                let r = write(&mut c, &[set(json!({"p": exact}))]).await;
                assert_eq!(r.status, 200, "{r:?}");
                assert_eq!(c.get("/").await.up_one("x-session").len(), 64);
            }

            #[tokio::test]
            async fn expired_session_is_never_revived() {
                let s = store();
                let sc = start(&s, json!({"session": {"ttl": "1s", "absolute_ttl": "2s"}})).await;
                let mut c = sc.client();
                write(&mut c, &[set(json!({"a": 1}))]).await;
                let old_sid = c.sid();
                let mut stale = c.clone();
                tokio::time::sleep(Duration::from_millis(2200)).await;
                let r = write(&mut stale, &[set(json!({"b": 2}))]).await;
                assert_eq!(r.sstatus(), "expired");
                assert!(stale.sid().is_some() && stale.sid() != old_sid, "new id on write");
                assert_eq!(stale.get("/").await.session(), json!({"b": 2}));
                if let Some(redis) = &s.redis {
                    for db in [0, 1] {
                        for key in backing::keys(redis.port(), db, "*") {
                            let ttl = backing::pttl(redis.port(), db, &key);
                            assert!(ttl > 0 && ttl <= 2000, "{key} has ttl {ttl}");
                        }
                    }
                }
            }

            #[tokio::test]
            async fn concurrent_destroy_wins_over_a_slow_write() {
                let s = store();
                let sc = start(&s, json!({})).await;
                let mut c = sc.client();
                write(&mut c, &[set(json!({"user": "ann"}))]).await;
                let mut slow = c.clone();
                let slow_write = tokio::spawn(async move {
                    let r = slow.write_with(&[("x-session-set", r#"{"late":1}"#)], &[("x-test-delay-ms", "500")]).await;
                    (r, slow)
                });
                tokio::time::sleep(Duration::from_millis(150)).await;
                let mut logout = c.clone();
                write(&mut logout, &[("x-session-destroy", "1".into())]).await;
                let (r, slow) = slow_write.await.unwrap();
                assert_eq!(r.status, 200);
                assert_ne!(slow.sid(), c.sid(), "the late write got a new id");
                assert_eq!(c.get("/").await.sstatus(), "expired", "logout is not undone");
            }

            #[tokio::test]
            async fn parallel_writers_of_distinct_keys_all_persist() {
                let s = store();
                let sc = start(&s, json!({})).await;
                let mut c = sc.client();
                write(&mut c, &[set(json!({"seed": 0}))]).await;
                let tasks: Vec<_> = (0..50).map(|i| {
                    let mut c = c.clone();
                    tokio::spawn(async move {
                        let v = json!({ format!("k{i}"): i }).to_string();
                        c.write(&[("x-session-set", v.as_str())]).await.status
                    })
                }).collect();
                for t in tasks {
                    assert_eq!(t.await.unwrap(), 200);
                }
                let got = c.get("/").await.session();
                assert_eq!(got.as_object().unwrap().len(), 51, "{got}");
            }

            #[tokio::test]
            async fn parallel_increments_are_never_lost() {
                let s = store();
                let sc = start(&s, json!({})).await;
                let mut c = sc.client();
                write(&mut c, &[set(json!({"n": 0}))]).await;
                let tasks: Vec<_> = (0..200).map(|_| {
                    let mut c = c.clone();
                    tokio::spawn(async move { c.write(&[("x-session-incr", r#"{"n":1}"#)]).await.status })
                }).collect();
                for t in tasks {
                    assert_eq!(t.await.unwrap(), 200);
                }
                assert_eq!(c.get("/").await.session(), json!({"n": 200}));
            }

            #[tokio::test]
            async fn one_flash_reaches_exactly_one_of_twenty_parallel_readers() {
                let s = store();
                let sc = start(&s, json!({})).await;
                let mut c = sc.client();
                write(&mut c, &[("x-session-flash-set", r#"{"once":true}"#.into())]).await;
                let tasks: Vec<_> = (0..20).map(|_| {
                    let mut c = c.clone();
                    tokio::spawn(async move { c.get("/").await.flash() })
                }).collect();
                let mut delivered = 0;
                for t in tasks {
                    if t.await.unwrap() == json!({"once": true}) {
                        delivered += 1;
                    }
                }
                assert_eq!(delivered, 1);
            }
        }
    };
}

session_suite!(memory);
session_suite!(redis);
session_suite!(memcached);
session_suite!(cluster);
session_suite!(sentinel);
