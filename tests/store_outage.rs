//! A real `redis-server` killed and restarted under a running sidecar: requests that need
//! the store get 503 (or pass anonymously with `store.on_error: anonymous`), writes are
//! never silently dropped, and service resumes without restarting the sidecar.

mod backing;
mod harness;

use std::time::Duration;

use harness::Sidecar;
use serde_json::json;

fn redis_store(port: u16) -> serde_json::Value {
    json!({"engine": "redis", "timeout": "300ms", "storage": {"host": "127.0.0.1", "port": port}})
}

async fn wait_until_active(c: &mut harness::Client) -> harness::Resp {
    for _ in 0..50 {
        let r = c.get("/").await;
        if r.status == 200 && r.sstatus() == "active" {
            return r;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("the session did not come back after the store restarted");
}

#[tokio::test]
async fn store_down_gives_503_and_recovers_after_restart() {
    let mut redis = backing::RedisServer::start();
    let sc = Sidecar::start(redis_store(redis.port()), json!({})).await;
    let mut c = sc.client();
    c.write(&[("x-session-set", r#"{"user":"ann"}"#)]).await;
    assert_eq!(c.get("/").await.sstatus(), "active");

    redis.kill();
    let r = c.get("/").await;
    assert_eq!(r.status, 503, "{r:?}");
    assert!(String::from_utf8_lossy(&r.body).contains("request id"));
    let before = sc.upstream.requests().len();
    let r = c.write(&[("x-session-set", r#"{"lost":1}"#)]).await;
    assert_eq!(r.status, 503);
    assert_eq!(
        sc.upstream.requests().len(),
        before,
        "nothing is forwarded without its session"
    );
    // An anonymous request needs no store.
    assert_eq!(harness::Client::new(sc.addr).get("/").await.status, 200);

    // Data lives in Redis memory only (--save ""): after a restart the old session is
    // gone, so the client's cookie now reads as expired; what matters is that the
    // sidecar serves sessions again without being restarted.
    redis.restart();
    let mut fresh = sc.client();
    for _ in 0..50 {
        let r = fresh.write(&[("x-session-set", r#"{"back":1}"#)]).await;
        if r.status == 200 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let r = wait_until_active(&mut fresh).await;
    assert_eq!(r.session(), json!({"back": 1}));
}

#[tokio::test]
async fn anonymous_mode_forwards_without_a_session_but_refuses_writes() {
    let mut redis = backing::RedisServer::start();
    let sc = Sidecar::start(
        redis_store(redis.port()),
        json!({"store": {"on_error": "anonymous"}}),
    )
    .await;
    let mut c = sc.client();
    c.write(&[("x-session-set", r#"{"user":"ann"}"#)]).await;
    redis.kill();
    let r = c.get("/").await;
    assert_eq!(r.status, 200);
    assert_eq!(r.sstatus(), "unavailable");
    assert_eq!(r.session(), json!({}));
    assert!(
        r.cookie("session").is_none(),
        "the cookie is kept for when the store is back"
    );
    let r = c.write(&[("x-session-set", r#"{"x":1}"#)]).await;
    assert_eq!(r.status, 503, "a write is never silently dropped");
    assert!(r.reserved_in_response().is_empty());
}

#[tokio::test]
async fn sidecar_starts_while_the_store_is_down() {
    let port = backing::free_port();
    let sc = Sidecar::start(redis_store(port), json!({})).await;
    let mut c = sc.client();
    assert_eq!(c.get("/").await.status, 200, "no cookie: no store needed");
    assert_eq!(
        c.write(&[("x-session-set", r#"{"a":1}"#)]).await.status,
        503
    );
    let _redis = backing::RedisServer::start_on(port, &[]);
    for _ in 0..50 {
        if c.write(&[("x-session-set", r#"{"a":1}"#)]).await.status == 200 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(wait_until_active(&mut c).await.session(), json!({"a": 1}));
}

#[tokio::test]
async fn readyz_follows_the_store() {
    let mut redis = backing::RedisServer::start();
    let sc = Sidecar::start(
        redis_store(redis.port()),
        json!({"admin": {"listen": "127.0.0.1:0"}}),
    )
    .await;
    let mut probe = harness::Client::new(sc.admin_addr());
    assert_eq!(probe.get("/healthz").await.status, 200);
    assert_eq!(probe.get("/readyz").await.status, 200);
    redis.kill();
    assert_eq!(probe.get("/readyz").await.status, 503);
    assert_eq!(probe.get("/healthz").await.status, 200);
    redis.restart();
    let mut ready = false;
    for _ in 0..50 {
        if probe.get("/readyz").await.status == 200 {
            ready = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(ready);
    drop(sc);
}

#[tokio::test]
async fn missing_redis_database_is_reported_by_readyz() {
    let redis = backing::RedisServer::start_with(&["--databases", "2"]);
    let mut store = redis_store(redis.port());
    store["storage"]["db_notifications"] = json!(5);
    let sc = Sidecar::start(store, json!({"admin": {"listen": "127.0.0.1:0"}})).await;
    let mut probe = harness::Client::new(sc.admin_addr());
    let r = probe.get("/readyz").await;
    assert_eq!(r.status, 503);
    let body = String::from_utf8_lossy(&r.body);
    assert!(body.contains("db_notifications"), "{body}");
    drop(sc);
}

#[tokio::test]
async fn memcached_down_gives_503_and_recovers_after_restart() {
    let mut mc = backing::MemcachedServer::start();
    let sc = Sidecar::start(
        json!({"engine": "memcached", "timeout": "300ms", "storage": {"servers": [mc.addr()]}}),
        json!({}),
    )
    .await;
    let mut c = sc.client();
    c.write(&[("x-session-set", r#"{"user":"ann"}"#)]).await;
    assert_eq!(c.get("/").await.sstatus(), "active");
    mc.kill();
    assert_eq!(c.get("/").await.status, 503);
    assert_eq!(
        c.write(&[("x-session-set", r#"{"x":1}"#)]).await.status,
        503
    );
    mc.restart();
    let mut fresh = sc.client();
    for _ in 0..50 {
        if fresh
            .write(&[("x-session-set", r#"{"back":1}"#)])
            .await
            .status
            == 200
        {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(
        wait_until_active(&mut fresh).await.session(),
        json!({"back": 1})
    );
}

/// `/readyz` pings through the same bound as every store call: a frozen Redis (it
/// accepts connections but answers nothing) makes it answer 503 within about
/// `store.timeout`, not hang.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readyz_is_bounded_by_the_store_timeout() {
    let redis = backing::RedisServer::start();
    let sc = Sidecar::start(
        redis_store(redis.port()),
        json!({"admin": {"listen": "127.0.0.1:0"}}),
    )
    .await;
    let mut probe = harness::Client::new(sc.admin_addr());
    assert_eq!(probe.get("/readyz").await.status, 200);
    redis.pause();
    for _ in 0..3 {
        let started = std::time::Instant::now();
        assert_eq!(probe.get("/readyz").await.status, 503);
        assert!(
            started.elapsed() < Duration::from_millis(1500),
            "{:?}",
            started.elapsed()
        );
    }
    redis.resume();
    drop(sc);
}
