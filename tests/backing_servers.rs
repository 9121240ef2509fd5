//! The backing server sets themselves (`tests/backing`): each starts, has the
//! properties the other tests rely on, and its start time is printed.

mod backing;

use std::time::Instant;

use backing::TlsRedis;

#[test]
fn tls_redis_verifies_with_its_ca_and_rejects_a_wrong_one() {
    let t = Instant::now();
    let tls = TlsRedis::start();
    eprintln!("TlsRedis::start: {:?}", t.elapsed());
    assert!(tls.url().starts_with("rediss://127.0.0.1:"));
    let ok = tls.cli(tls.ca_path(), None, &["PING"]);
    assert_eq!(String::from_utf8_lossy(&ok.stdout).trim(), "PONG");
    let wrong = tls.cli(tls.wrong_ca_path(), None, &["PING"]);
    assert_ne!(String::from_utf8_lossy(&wrong.stdout).trim(), "PONG");

    let t = Instant::now();
    let mtls = TlsRedis::start_requiring_client_cert();
    eprintln!("TlsRedis::start_requiring_client_cert: {:?}", t.elapsed());
    assert_eq!(mtls.cli_ok(&["PING"]), "PONG");
    let no_cert = mtls.cli(mtls.ca_path(), None, &["PING"]);
    assert_ne!(String::from_utf8_lossy(&no_cert.stdout).trim(), "PONG");
}
