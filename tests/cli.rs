//! The binary's command line (docs/configuration.md#session-sidecar-check): `gen-secret`,
//! `check`, config errors with `FILE:LINE:COLUMN`, and a real run of the binary that serves
//! a request and stops on SIGTERM.

mod harness;

use std::time::Duration;

use harness::{
    SECRET_A, Upstream,
    binary::{self, Binary},
    raw_exchange,
};

#[test]
fn gen_secret_prints_a_fresh_43_char_secret() {
    let a = binary::command().arg("gen-secret").output().unwrap();
    let b = binary::command().arg("gen-secret").output().unwrap();
    assert!(a.status.success());
    let a = String::from_utf8(a.stdout).unwrap();
    let b = String::from_utf8(b.stdout).unwrap();
    assert_eq!(a.trim().len(), 43);
    assert!(
        a.trim()
            .bytes()
            .all(|c| c.is_ascii_alphanumeric() || c == b'-' || c == b'_')
    );
    assert_ne!(a, b);
}

#[test]
fn check_prints_the_effective_config_with_secrets_redacted() {
    let dir = tempfile::tempdir().unwrap();
    let path = binary::write_config(
        dir.path(),
        "upstream: http://127.0.0.1:8000\nsecrets: [\"${TEST_SIDECAR_SECRET}\"]\nstore:\n  engine: redis\n  storage:\n    password: \"${TEST_SIDECAR_SECRET}\"\n",
    );
    let out = binary::command()
        .args(["check", "--config"])
        .arg(&path)
        .env("TEST_SIDECAR_SECRET", SECRET_A)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8(out.stdout).unwrap();
    assert!(!text.contains(SECRET_A), "{text}");
    for expected in [
        "on_error: reject",
        "key_prefix: \"session:\"",
        "db_notifications: 1",
        "<redacted>",
        "ttl: 1d",
    ] {
        assert!(text.contains(expected), "missing {expected:?} in\n{text}");
    }
}

#[test]
fn config_errors_name_file_line_column_and_exit_2() {
    let dir = tempfile::tempdir().unwrap();
    let path = binary::write_config(
        dir.path(),
        &format!(
            "upstream: http://127.0.0.1:8000\nsecrets: [\"{SECRET_A}\"]\ncookies:\n  nmae: sid\n"
        ),
    );
    let out = binary::command()
        .args(["check", "--config"])
        .arg(&path)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8(out.stderr).unwrap();
    assert!(err.contains(&format!("{}:4:3:", path.display())), "{err}");
    assert!(err.contains("hint:"), "{err}");

    let path = binary::write_config(dir.path(), "upstream: http://127.0.0.1:8000\n");
    let out = binary::command()
        .arg("--config")
        .arg(&path)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8(out.stderr).unwrap();
    assert!(
        err.contains("secrets") && err.contains("gen-secret"),
        "{err}"
    );

    // No `--config` and no `SIDECAR_CONFIG` (the helper removes it).
    let out = binary::command().output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("--config"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn binary_serves_and_stops_on_sigterm() {
    let upstream = Upstream::start().await;
    let bin = Binary::spawn(&binary::config(&format!(
        "upstream: {}\nlog: {{ format: json }}\n",
        upstream.url()
    )))
    .await;
    let (resp, _) = raw_exchange(
        bin.addr,
        b"GET /x?token=secret HTTP/1.1\r\nHost: a\r\nConnection: close\r\nCookie: session=abc.def\r\n\r\n",
        Duration::from_secs(5),
    );
    assert!(resp.starts_with("HTTP/1.1 200"), "{resp}");
    let seen = upstream.requests();
    let status: Vec<_> = seen[0]
        .headers
        .iter()
        .filter(|(name, _)| name == "x-session-status")
        .map(|(_, value)| value.as_str())
        .collect();
    assert_eq!(status, ["invalid"], "{seen:?}");

    // SIGTERM, then a clean exit (status 0).
    let log = bin.stop().await;
    let access = log
        .lines()
        .find(|l| l.contains("\"status\":200"))
        .unwrap_or_else(|| panic!("no access line in {log}"));
    assert!(access.contains("\"path\":\"/x\""), "{access}");
    assert!(access.contains("\"session\":\"invalid\""), "{access}");
    assert!(
        !log.contains("token=secret") && !log.contains("abc.def"),
        "query strings and cookies stay out of logs: {log}"
    );
}
