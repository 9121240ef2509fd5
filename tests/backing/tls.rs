//! A `redis-server` that speaks TLS only (`--port 0 --tls-port P`), with a test CA
//! generated in the test (the `harness` certificates: `tests/harness/certs.rs`), a
//! second unrelated CA for "wrong CA" tests, and a client certificate for mTLS.

use std::{
    path::{Path, PathBuf},
    process::{Child, Command, Output},
};

use super::{REDIS_MISSING, certs::TestPki, free_port, kill_child, spawn_until_ours};

/// The message a `redis-cli` missing from PATH fails with.
pub const REDIS_CLI_MISSING: &str =
    "redis-cli not found on PATH: install it with `apt-get install -y redis-tools`";

/// A TLS-only `redis-server` on 127.0.0.1, its PEM files in its temp dir. Killed on
/// drop.
pub struct TlsRedis {
    port: u16,
    /// The CA, the server leaf (SAN `localhost`, `127.0.0.1`, `::1`), the client
    /// certificate; its dir is the server's dir (PEMs, log).
    pki: TestPki,
    wrong_ca: PathBuf,
    client_cert: PathBuf,
    client_key: PathBuf,
    require_client_cert: bool,
    child: Option<Child>,
}

impl TlsRedis {
    /// Start with `--tls-auth-clients optional` (a client certificate is checked when
    /// one is sent, not required) and wait until it answers PING over TLS.
    pub fn start() -> Self {
        Self::start_inner(false)
    }

    /// Start with `--tls-auth-clients yes`: a client must present a certificate signed
    /// by [`TlsRedis::ca_path`] ([`TlsRedis::client_cert_path`] is one).
    pub fn start_requiring_client_cert() -> Self {
        Self::start_inner(true)
    }

    fn start_inner(require_client_cert: bool) -> Self {
        let pki = TestPki::new("redis-tls");
        let wrong_pem = TestPki::new("unrelated").ca_pem;
        let wrong_ca = pki.dir().join("wrong-ca.pem");
        std::fs::write(&wrong_ca, wrong_pem).expect("write wrong CA");
        let (client_cert, client_key) = pki.client_cert("redis-client");
        let mut server = TlsRedis {
            port: free_port(),
            pki,
            wrong_ca,
            client_cert,
            client_key,
            require_client_cert,
            child: None,
        };
        server.spawn();
        server
    }

    /// The TLS port.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// `rediss://127.0.0.1:<port>`
    pub fn url(&self) -> String {
        format!("rediss://127.0.0.1:{}", self.port)
    }

    /// The CA that signed the server (and client) certificates.
    pub fn ca_path(&self) -> &Path {
        &self.pki.ca_file
    }

    /// A CA that signed nothing here: verifying the server against it must fail.
    pub fn wrong_ca_path(&self) -> &Path {
        &self.wrong_ca
    }

    /// A client certificate signed by [`TlsRedis::ca_path`] (clientAuth).
    pub fn client_cert_path(&self) -> &Path {
        &self.client_cert
    }

    /// The client certificate's private key (PEM, PKCS#8).
    pub fn client_key_path(&self) -> &Path {
        &self.client_key
    }

    /// The server's temp dir (PEMs and `redis.log`).
    pub fn dir(&self) -> &Path {
        self.pki.dir()
    }

    /// Kill the server (SIGKILL) and reap it.
    pub fn kill(&mut self) {
        kill_child(&mut self.child);
    }

    /// `redis-cli --tls -h 127.0.0.1 -p <port> --cacert <ca> [--cert c --key k] args…`
    /// (its output; see [`TlsRedis::cli_ok`] for the usual case).
    pub fn cli(&self, ca: &Path, client: Option<(&Path, &Path)>, args: &[&str]) -> Output {
        tls_cli(self.port, ca, client, args)
    }

    /// Run `args` over TLS with the right CA and the client certificate; the trimmed
    /// stdout. Panics when redis-cli fails.
    pub fn cli_ok(&self, args: &[&str]) -> String {
        let out = self.cli(
            self.ca_path(),
            Some((self.client_cert_path(), self.client_key_path())),
            args,
        );
        assert!(
            out.status.success(),
            "redis-cli {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).trim().to_owned()
    }

    fn spawn(&mut self) {
        let port = self.port;
        let dir = self.pki.dir().to_owned();
        let log = dir.join("redis.log");
        let ca = self.pki.ca_file.clone();
        let client = (self.client_cert.clone(), self.client_key.clone());
        let auth = if self.require_client_cert {
            "yes"
        } else {
            "optional"
        };
        let child = spawn_until_ours(
            "redis-server (TLS)",
            REDIS_MISSING,
            port,
            || {
                let mut cmd = Command::new("redis-server");
                cmd.args(["--port", "0", "--tls-port"])
                    .arg(port.to_string())
                    .args(["--bind", "127.0.0.1", "--save", "", "--appendonly", "no"])
                    .arg("--tls-cert-file")
                    .arg(&self.pki.cert_file)
                    .arg("--tls-key-file")
                    .arg(&self.pki.key_file)
                    .arg("--tls-ca-cert-file")
                    .arg(&self.pki.ca_file)
                    .args(["--tls-auth-clients", auth])
                    .arg("--dir")
                    .arg(&dir)
                    .arg("--logfile")
                    .arg(&log);
                cmd
            },
            // The sync client does not speak TLS here: ask redis-cli for the pid.
            |pid| {
                let out = tls_cli(port, &ca, Some((&client.0, &client.1)), &["INFO", "server"]);
                String::from_utf8_lossy(&out.stdout).contains(&format!("process_id:{pid}\r\n"))
                    || String::from_utf8_lossy(&out.stdout)
                        .lines()
                        .any(|l| l.trim() == format!("process_id:{pid}"))
            },
            || std::fs::read_to_string(&log).unwrap_or_default(),
        );
        self.child = Some(child);
    }
}

impl Drop for TlsRedis {
    fn drop(&mut self) {
        self.kill();
    }
}

/// `redis-cli --tls` against 127.0.0.1:`port`, verifying the server with `ca`, with an
/// optional client certificate and key.
pub fn tls_cli(port: u16, ca: &Path, client: Option<(&Path, &Path)>, args: &[&str]) -> Output {
    let mut cmd = Command::new("redis-cli");
    cmd.args(["--tls", "-h", "127.0.0.1", "-p"])
        .arg(port.to_string())
        .arg("--cacert")
        .arg(ca);
    if let Some((cert, key)) = client {
        cmd.arg("--cert").arg(cert).arg("--key").arg(key);
    }
    match cmd.args(args).output() {
        Ok(out) => out,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => panic!("{REDIS_CLI_MISSING}"),
        Err(e) => panic!("cannot run redis-cli: {e}"),
    }
}
