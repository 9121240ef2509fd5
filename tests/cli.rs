//! The binary's command line (SPEC §9): `gen-secret`, `check`, config errors with
//! `FILE:LINE:COLUMN`, and a real run of the binary that serves a request and stops on
//! SIGTERM.

use std::{
    io::{Read, Write},
    net::TcpStream,
    process::{Command, Stdio},
    time::{Duration, Instant},
};

const BIN: &str = env!("CARGO_BIN_EXE_session-sidecar");
const SECRET: &str = "acceptance-secret-A-0123456789abcdefghijklmnopqrstuvwxyz";

fn write_config(dir: &tempfile::TempDir, text: &str) -> std::path::PathBuf {
    let path = dir.path().join("sidecar.yaml");
    std::fs::write(&path, text).unwrap();
    path
}

#[test]
fn gen_secret_prints_a_fresh_43_char_secret() {
    let a = Command::new(BIN).arg("gen-secret").output().unwrap();
    let b = Command::new(BIN).arg("gen-secret").output().unwrap();
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
    let path = write_config(
        &dir,
        "upstream: http://127.0.0.1:8000\nsecrets: [\"${TEST_SIDECAR_SECRET}\"]\nstore:\n  engine: redis\n  storage:\n    password: \"${TEST_SIDECAR_SECRET}\"\n",
    );
    let out = Command::new(BIN)
        .args(["check", "--config"])
        .arg(&path)
        .env("TEST_SIDECAR_SECRET", SECRET)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8(out.stdout).unwrap();
    assert!(!text.contains(SECRET), "{text}");
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
    let path = write_config(
        &dir,
        &format!(
            "upstream: http://127.0.0.1:8000\nsecrets: [\"{SECRET}\"]\ncookies:\n  nmae: sid\n"
        ),
    );
    let out = Command::new(BIN)
        .args(["check", "--config"])
        .arg(&path)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8(out.stderr).unwrap();
    assert!(err.contains(&format!("{}:4:3:", path.display())), "{err}");
    assert!(err.contains("hint:"), "{err}");

    let path = write_config(&dir, "upstream: http://127.0.0.1:8000\n");
    let out = Command::new(BIN)
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

    let out = Command::new(BIN)
        .env_remove("SIDECAR_CONFIG")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("--config"));
}

#[test]
fn binary_serves_and_stops_on_sigterm() {
    // An upstream that answers one fixed response per connection.
    let upstream = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let up_port = upstream.local_addr().unwrap().port();
    std::thread::spawn(move || {
        for stream in upstream.incoming().flatten() {
            let mut s = stream;
            let mut buf = [0u8; 4096];
            let _ = s.read(&mut buf);
            let seen = String::from_utf8_lossy(&buf).to_string();
            let status = seen
                .lines()
                .find(|l| l.to_ascii_lowercase().starts_with("x-session-status:"))
                .unwrap_or("none")
                .to_owned();
            let body = format!("saw {status}");
            let _ = write!(
                s,
                "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                body.len()
            );
        }
    });
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let dir = tempfile::tempdir().unwrap();
    let path = write_config(
        &dir,
        &format!(
            "listen: 127.0.0.1:{port}\nupstream: http://127.0.0.1:{up_port}\nsecrets: [\"{SECRET}\"]\nadmin: {{ listen: null }}\nlog: {{ format: json }}\n"
        ),
    );
    let mut child = Command::new(BIN)
        .arg("--config")
        .arg(&path)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut stream = loop {
        match TcpStream::connect(("127.0.0.1", port)) {
            Ok(s) => break s,
            Err(_) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(50)),
            Err(e) => panic!("sidecar did not listen: {e}"),
        }
    };
    stream
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    stream.write_all(b"GET /x?token=secret HTTP/1.1\r\nHost: a\r\nConnection: close\r\nCookie: session=abc.def\r\n\r\n").unwrap();
    let mut resp = String::new();
    stream.read_to_string(&mut resp).unwrap();
    assert!(resp.starts_with("HTTP/1.1 200"), "{resp}");
    assert!(resp.contains("saw x-session-status: invalid"), "{resp}");

    let kill = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(kill.success());
    let status = child.wait().unwrap();
    assert!(status.success(), "exit status after SIGTERM: {status}");
    let mut log = String::new();
    child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut log)
        .unwrap();
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
