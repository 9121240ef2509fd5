//! `session-sidecar check` is authoritative: every configuration it accepts starts, and
//! every one it refuses would not (docs/configuration.md#check-is-authoritative).
//!
//! Each row goes through both the real binary's `check --config FILE` (exit status) and
//! an in-process start (`Config::load` then `server::start`, which builds the store
//! without I/O that could fail it); the two must agree. `expect_valid` documents what
//! the row is about and catches a row that stopped testing what it says.

use std::process::Command;

use session_sidecar::{config::Config, server};

const BIN: &str = env!("CARGO_BIN_EXE_session-sidecar");
const SECRET: &str = "check-agrees-secret-0123456789abcdefghijklmnopqrstuvwxyz";

/// A configuration fragment (the `store:` section) and whether it is valid.
struct Row {
    name: &'static str,
    store: &'static str,
    expect_valid: bool,
}

const fn row(name: &'static str, store: &'static str, expect_valid: bool) -> Row {
    Row {
        name,
        store,
        expect_valid,
    }
}

/// Nothing listens on port 1 of the loopback: a Redis or memcached store pointed there
/// is built, and fails only when used.
const ROWS: &[Row] = &[
    row("memory defaults", "store: {engine: memory}", true),
    row(
        "memory max_entries",
        "store: {engine: memory, storage: {max_entries: 10}}",
        true,
    ),
    row(
        "memory with a redis key",
        "store: {engine: memory, storage: {host: r}}",
        false,
    ),
    row(
        "redis host and port",
        "store: {engine: redis, storage: {host: 127.0.0.1, port: 1}}",
        true,
    ),
    row(
        "redis url with db",
        "store: {engine: redis, storage: {url: \"redis://u:pw@127.0.0.1:1/2\"}}",
        true,
    ),
    row(
        "redis unix url",
        "store: {engine: redis, storage: {url: \"redis+unix:///tmp/no-such.sock\"}}",
        true,
    ),
    row(
        "redis tls: true",
        "store: {engine: redis, storage: {host: 127.0.0.1, port: 1, tls: true}}",
        true,
    ),
    row(
        "redis rediss:// url",
        "store: {engine: redis, storage: {url: \"rediss://127.0.0.1:1\"}}",
        true,
    ),
    row(
        "redis rediss:// url with tls: true",
        "store: {engine: redis, storage: {url: \"rediss://127.0.0.1:1\", tls: true}}",
        true,
    ),
    row(
        "redis rediss:// url with tls: false",
        "store: {engine: redis, storage: {url: \"rediss://127.0.0.1:1\", tls: false}}",
        false,
    ),
    row(
        "redis tls_cert without tls_key",
        "store: {engine: redis, storage: {tls: true, tls_cert: /c.pem}}",
        false,
    ),
    row(
        "redis tls_ca with TLS off",
        "store: {engine: redis, storage: {tls_ca: /ca.pem}}",
        false,
    ),
    row(
        "redis unix url selecting a db by query",
        "store: {engine: redis, storage: {url: \"redis+unix:///tmp/r.sock?db=3\"}}",
        false,
    ),
    row(
        "redis unix url selecting the db_sessions db by query",
        "store: {engine: redis, storage: {url: \"redis+unix:///tmp/r.sock?db=3\", db_sessions: 3}}",
        true,
    ),
    row(
        "redis url with a stray percent sign (the client takes it as is)",
        "store: {engine: redis, storage: {url: \"redis://:%zz@127.0.0.1:1\"}}",
        true,
    ),
    row(
        "redis url the client refuses",
        "store: {engine: redis, storage: {url: \"redis://:pw@127.0.0.1:1/0?protocol=bogus\"}}",
        false,
    ),
    row(
        "redis url with a query parameter the client ignores",
        "store: {engine: redis, storage: {url: \"redis://127.0.0.1:1/0?password=pw\"}}",
        false,
    ),
    row(
        "redis url with a fragment",
        "store: {engine: redis, storage: {url: \"rediss://127.0.0.1:1/0#insecure\"}}",
        false,
    ),
    row(
        "redis unix url with user and pass",
        "store: {engine: redis, storage: {url: \"redis+unix:///tmp/r.sock?user=u&pass=pw\"}}",
        true,
    ),
    row(
        "redis unix url with a bad db query",
        "store: {engine: redis, storage: {url: \"redis+unix:///tmp/r.sock?db=x\"}}",
        false,
    ),
    row(
        "redis negative db_sessions",
        "store: {engine: redis, storage: {db_sessions: -1}}",
        false,
    ),
    row(
        "redis negative db_notifications",
        "store: {engine: redis, storage: {db_notifications: -1}}",
        false,
    ),
    row(
        "redis large db numbers",
        "store: {engine: redis, storage: {db_sessions: 15, db_notifications: 2147483647}}",
        true,
    ),
    row(
        "redis url and host",
        "store: {engine: redis, storage: {url: \"redis://127.0.0.1:1\", host: h}}",
        false,
    ),
    row(
        "redis url db and db_sessions",
        "store: {engine: redis, storage: {url: \"redis://127.0.0.1:1/2\", db_sessions: 2}}",
        false,
    ),
    row(
        "redis sentinel without nodes",
        "store: {engine: redis, storage: {sentinel: {master_name: m}}}",
        false,
    ),
    row(
        "redis sentinel",
        "store: {engine: redis, storage: {sentinel: {master_name: m, nodes: [\"127.0.0.1:1\"]}, \
         password: pw}}",
        true,
    ),
    row(
        "redis sentinel with TLS",
        "store: {engine: redis, storage: {sentinel: {master_name: m, nodes: [\"127.0.0.1:1\"]}, \
         tls: true}}",
        true,
    ),
    row(
        "redis cluster",
        "store: {engine: redis, storage: {cluster: {nodes: [\"127.0.0.1:1\", \"127.0.0.1:2\"]}}}",
        true,
    ),
    row(
        "redis cluster with db_notifications 1",
        "store: {engine: redis, storage: {cluster: {nodes: [\"127.0.0.1:1\"]}, db_notifications: 1}}",
        false,
    ),
    row(
        "redis sentinel and cluster",
        "store: {engine: redis, storage: {sentinel: {master_name: m, nodes: [\"127.0.0.1:1\"]}, \
         cluster: {nodes: [\"127.0.0.1:1\"]}}}",
        false,
    ),
    row(
        "memcached with a cluster",
        "store: {engine: memcached, storage: {cluster: {nodes: [\"127.0.0.1:1\"]}}}",
        false,
    ),
    row("memcached defaults", "store: {engine: memcached}", true),
    row(
        "memcached two servers",
        "store: {engine: memcached, storage: {servers: [\"127.0.0.1:1\", \"[::1]:1\"]}}",
        true,
    ),
    row(
        "memcached no servers",
        "store: {engine: memcached, storage: {servers: []}}",
        false,
    ),
    row(
        "memcached server without port",
        "store: {engine: memcached, storage: {servers: [\"127.0.0.1\"]}}",
        false,
    ),
    row(
        "memcached server port 0",
        "store: {engine: memcached, storage: {servers: [\"127.0.0.1:0\"]}}",
        false,
    ),
    row(
        "memcached longest key_prefix",
        "store: {engine: memcached, key_prefix: \
         kkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkk}",
        true,
    ),
    row(
        "memcached key_prefix one too long",
        "store: {engine: memcached, key_prefix: \
         kkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkk}",
        false,
    ),
];

/// Rows beyond the store: files that `start` reads before it binds (certificates, a CA
/// bundle), and an upstream the TLS client cannot verify. `check` reads them too.
/// `{dir}` is the row's temporary directory, which holds `garbage.pem` (not PEM).
const FILE_ROWS: &[Row] = &[
    row(
        "tls with missing certificate files",
        "tls: {cert: \"{dir}/no-cert.pem\", key: \"{dir}/no-key.pem\"}",
        false,
    ),
    row(
        "tls with files that hold no certificate",
        "tls: {cert: \"{dir}/garbage.pem\", key: \"{dir}/garbage.pem\"}",
        false,
    ),
    row(
        "https upstream with a missing CA bundle",
        "upstream_tls: {ca: \"{dir}/no-ca.pem\"}",
        false,
    ),
    row(
        "https upstream with a CA bundle without certificates",
        "upstream_tls: {ca: \"{dir}/garbage.pem\"}",
        false,
    ),
    row("https upstream with the system roots", "", true),
    row(
        "redis TLS with a missing CA bundle",
        "store: {engine: redis, storage: {port: 1, tls: true, tls_ca: \"{dir}/no-ca.pem\"}}",
        false,
    ),
    row(
        "redis TLS with a CA bundle without certificates",
        "store: {engine: redis, storage: {port: 1, tls: true, tls_ca: \"{dir}/garbage.pem\"}}",
        false,
    ),
    row(
        "redis TLS with a client certificate and key that are not PEM",
        "store: {engine: redis, storage: {port: 1, tls: true, tls_cert: \"{dir}/garbage.pem\", \
         tls_key: \"{dir}/garbage.pem\"}}",
        false,
    ),
];

fn config_text(store: &str) -> String {
    // A short store timeout: the Redis database check at start fails fast.
    let store = match store.strip_suffix('}') {
        Some(open) => format!("{open}, timeout: 100ms}}"),
        None => store.to_owned(),
    };
    format!(
        "listen: 127.0.0.1:0\nadmin: {{listen: null}}\nupstream: http://127.0.0.1:1\n\
         secrets: [\"{SECRET}\"]\n{store}\n"
    )
}

fn check_accepts(path: &std::path::Path) -> (bool, String) {
    let out = Command::new(BIN)
        .args(["check", "--config"])
        .arg(path)
        .output()
        .expect("run the binary");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

async fn starts(path: &std::path::Path) -> Result<(), String> {
    let config = Config::load(path).map_err(|e| e.to_string())?;
    let running = server::start(config).await.map_err(|e| format!("{e:#}"))?;
    running.shutdown().await;
    Ok(())
}

/// A file row: an https upstream (so `upstream_tls` applies) and the row's text.
fn file_config_text(extra: &str, dir: &std::path::Path) -> String {
    let extra = extra.replace("{dir}", &dir.display().to_string());
    format!(
        "listen: 127.0.0.1:0\nadmin: {{listen: null}}\nupstream: https://localhost:1\n\
         secrets: [\"{SECRET}\"]\n{extra}\n"
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn check_accepts_exactly_what_starts() {
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::write(dir.path().join("garbage.pem"), "not a PEM file\n").expect("write");
    let texts = ROWS.iter().map(|row| (row, config_text(row.store))).chain(
        FILE_ROWS
            .iter()
            .map(|row| (row, file_config_text(row.store, dir.path()))),
    );
    let mut problems = Vec::new();
    for (i, (row, text)) in texts.enumerate() {
        let path = dir.path().join(format!("row{i}.yaml"));
        std::fs::write(&path, text).expect("write");
        let (checked, check_stderr) = check_accepts(&path);
        let started = starts(&path).await;
        if checked != started.is_ok() {
            problems.push(format!(
                "{}: check {} but start {}\n  check: {}",
                row.name,
                if checked { "accepts" } else { "refuses" },
                match &started {
                    Ok(()) => "succeeds".to_owned(),
                    Err(e) => format!("fails: {e}"),
                },
                check_stderr.trim(),
            ));
        } else if checked != row.expect_valid {
            problems.push(format!(
                "{}: expected {}, both {}: {}",
                row.name,
                if row.expect_valid { "valid" } else { "invalid" },
                if checked { "accept" } else { "refuse" },
                check_stderr.trim(),
            ));
        }
    }
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}

/// Every refusal is a `FILE:LINE:COLUMN: message` with a hint, and the URL password
/// never appears in it.
#[test]
fn refusals_point_at_the_value_with_a_hint() {
    let dir = tempfile::tempdir().expect("tempdir");
    for (i, row) in ROWS.iter().enumerate().filter(|(_, r)| !r.expect_valid) {
        let path = dir.path().join(format!("row{i}.yaml"));
        std::fs::write(&path, config_text(row.store)).expect("write");
        let (checked, stderr) = check_accepts(&path);
        assert!(!checked, "{}", row.name);
        let prefix = format!("{}:5:", path.display());
        assert!(stderr.starts_with(&prefix), "{}: {stderr}", row.name);
        assert!(stderr.contains("\n  hint: "), "{}: {stderr}", row.name);
        assert!(!stderr.contains("pw@"), "{}: {stderr}", row.name);
    }
}
