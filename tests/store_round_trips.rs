//! The design budget, counted by a real `redis-server` (`INFO commandstats`): a request
//! with a valid cookie costs exactly one store command before forwarding, a write one
//! more, and a request without a cookie none.

mod backing;
mod harness;

use harness::Sidecar;
use serde_json::json;

/// Total calls of every command since the last `CONFIG RESETSTAT`, by command name.
fn command_calls(redis: &backing::RedisServer) -> std::collections::BTreeMap<String, u64> {
    let info: String = redis.client(0).cmd(&["INFO", "commandstats"]);
    info.lines()
        .filter_map(|l| {
            let (name, rest) = l.strip_prefix("cmdstat_")?.split_once(':')?;
            let calls = rest.split(',').find_map(|kv| kv.strip_prefix("calls="))?;
            Some((name.to_owned(), calls.parse().ok()?))
        })
        .collect()
}

fn reset(redis: &backing::RedisServer) {
    let _: String = redis.client(0).cmd(&["CONFIG", "RESETSTAT"]);
}

/// Script calls: each is one round trip. (`commandstats` also counts the commands a
/// script runs inside Redis, which cost no round trip; the scripts are the only top-level
/// commands the sidecar sends on the request path.)
fn sidecar_calls(redis: &backing::RedisServer) -> u64 {
    let calls = command_calls(redis);
    calls.get("evalsha").copied().unwrap_or(0) + calls.get("eval").copied().unwrap_or(0)
}

#[tokio::test]
async fn one_store_command_per_read_and_one_more_per_write() {
    let redis = backing::RedisServer::start();
    let sc = Sidecar::start(
        json!({"engine": "redis", "storage": {"host": "127.0.0.1", "port": redis.port(), "max_connections": 1}}),
        json!({}),
    )
    .await;
    let mut c = sc.client();
    c.write(&[("x-session-set", r#"{"a":1}"#)]).await;
    c.get("/").await; // warm the connection and the script cache

    reset(&redis);
    for _ in 0..10 {
        assert_eq!(c.get("/").await.sstatus(), "active");
    }
    assert_eq!(sidecar_calls(&redis), 10, "{:?}", command_calls(&redis));

    reset(&redis);
    for _ in 0..10 {
        assert_eq!(
            c.write(&[("x-session-incr", r#"{"n":1}"#)]).await.status,
            200
        );
    }
    assert_eq!(sidecar_calls(&redis), 20, "{:?}", command_calls(&redis));

    reset(&redis);
    let mut anonymous = sc.client();
    for _ in 0..10 {
        assert_eq!(anonymous.get("/").await.sstatus(), "none");
    }
    assert_eq!(sidecar_calls(&redis), 0, "{:?}", command_calls(&redis));
}

/// memcached `cmd_get`, `cmd_touch`, `cmd_set` since the server started. A load is one
/// round trip of two commands: the session `mg` that refreshes its TTL (a touch) and the
/// flash `mg` (a get), pipelined.
fn memcached_counts(server: &backing::MemcachedServer) -> [u64; 3] {
    server.counters(["cmd_get", "cmd_touch", "cmd_set"])
}

/// The same budget on memcached: a read is one round trip, and a write is one more
/// because the pipeline hands the version it loaded to the write, so the session is not
/// read again
/// (docs/performance.md#what-changed-each-measured-side-by-side-before-it-landed): per
/// write request one touch, one get (the flash) and one set.
#[tokio::test]
async fn memcached_write_requests_do_not_read_the_session_twice() {
    let server = backing::MemcachedServer::start();
    let sc = Sidecar::start(
        json!({"engine": "memcached", "storage": {"servers": [server.addr()]}}),
        json!({}),
    )
    .await;
    let mut c = sc.client();
    c.write(&[("x-session-set", r#"{"a":1}"#)]).await;

    let before = memcached_counts(&server);
    for _ in 0..10 {
        assert_eq!(c.get("/").await.sstatus(), "active");
    }
    let after = memcached_counts(&server);
    assert_eq!([0, 1, 2].map(|i| after[i] - before[i]), [10, 10, 0]);

    let before = after;
    for _ in 0..10 {
        assert_eq!(
            c.write(&[("x-session-incr", r#"{"n":1}"#)]).await.status,
            200
        );
    }
    let after = memcached_counts(&server);
    assert_eq!([0, 1, 2].map(|i| after[i] - before[i]), [10, 10, 10]);
    assert_eq!(c.get("/").await.session()["n"], 10);
}
