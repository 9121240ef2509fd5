//! Shared integration-test harness: a real `redis-server` per test (never mocked) and a
//! tiny synchronous client for assertions on what the sidecar stored.
//!
//! Every test binary compiles this module and uses only part of it.
#![allow(dead_code)]

use std::{
    io::{ErrorKind, Read, Write},
    net::{TcpListener, TcpStream},
    path::PathBuf,
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

/// The message a missing binary fails with: these tests must never be skipped silently.
pub const REDIS_MISSING: &str =
    "redis-server not found on PATH: install it with `apt-get install -y redis-server`";

/// A port that was free a moment ago (bind to :0, read it, release it).
pub fn free_port() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0");
    listener.local_addr().expect("local addr").port()
}

/// A `redis-server` child on 127.0.0.1 with no persistence, in its own temp dir.
/// Killed on drop.
pub struct RedisServer {
    port: u16,
    dir: tempfile::TempDir,
    extra_args: Vec<String>,
    child: Option<Child>,
}

impl RedisServer {
    /// Start a server on a free port and wait until it answers PING.
    pub fn start() -> Self {
        Self::start_with(&[])
    }

    /// Start with extra `redis-server` arguments, e.g. `["--databases", "2"]`.
    pub fn start_with(extra_args: &[&str]) -> Self {
        Self::start_on(free_port(), extra_args)
    }

    /// Start on a given port (e.g. one a store was configured with while nothing ran).
    pub fn start_on(port: u16, extra_args: &[&str]) -> Self {
        let mut server = RedisServer {
            port,
            dir: tempfile::tempdir().expect("temp dir for redis-server"),
            extra_args: extra_args.iter().map(|s| s.to_string()).collect(),
            child: None,
        };
        server.spawn();
        server
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// `redis://127.0.0.1:<port>`
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    pub fn is_running(&self) -> bool {
        self.child.is_some()
    }

    /// Kill the server (SIGKILL: an outage, not a clean shutdown) and reap it.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Freeze the server (SIGSTOP): connections stay open but nothing answers, the
    /// worst case for timeouts.
    pub fn pause(&self) {
        self.signal("-STOP");
    }

    /// Undo [`RedisServer::pause`] (SIGCONT).
    pub fn resume(&self) {
        self.signal("-CONT");
    }

    fn signal(&self, sig: &str) {
        let child = self.child.as_ref().expect("redis-server is running");
        let status = Command::new("kill")
            .arg(sig)
            .arg(child.id().to_string())
            .status()
            .expect("run kill");
        assert!(status.success(), "kill {sig} failed");
    }

    /// Same as [`RedisServer::kill`].
    pub fn stop(&mut self) {
        self.kill();
    }

    /// Start again on the same port (data is gone: no persistence).
    pub fn restart(&mut self) {
        self.kill();
        self.spawn();
    }

    fn log_path(&self) -> PathBuf {
        self.dir.path().join("redis.log")
    }

    fn spawn(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let child = Command::new("redis-server")
                .arg("--port")
                .arg(self.port.to_string())
                .args(["--bind", "127.0.0.1", "--save", "", "--appendonly", "no"])
                .arg("--dir")
                .arg(self.dir.path())
                .arg("--logfile")
                .arg(self.log_path())
                .args(&self.extra_args)
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn();
            let mut child = match child {
                Ok(child) => child,
                Err(e) if e.kind() == ErrorKind::NotFound => panic!("{REDIS_MISSING}"),
                Err(e) => panic!("cannot start redis-server: {e}"),
            };
            loop {
                // Check it is *our* child answering: another test may have grabbed the
                // same free port a moment earlier.
                if serves_pid(self.port, child.id()) {
                    self.child = Some(child);
                    return;
                }
                if let Ok(Some(status)) = child.try_wait() {
                    // Typically the port is still held (TIME_WAIT of a restart, or a
                    // race with another test's free_port): retry until the deadline.
                    if Instant::now() > deadline {
                        let log = std::fs::read_to_string(self.log_path()).unwrap_or_default();
                        panic!(
                            "redis-server exited ({status}) on port {}:\n{log}",
                            self.port
                        );
                    }
                    std::thread::sleep(Duration::from_millis(50));
                    break;
                }
                if Instant::now() > deadline {
                    let _ = child.kill();
                    let _ = child.wait();
                    panic!("redis-server on port {} did not answer PING", self.port);
                }
                std::thread::sleep(Duration::from_millis(10));
            }
        }
    }

    /// A synchronous client on `db` for assertions.
    pub fn client(&self, db: i64) -> RawClient {
        RawClient::connect(self.port, db)
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        // A paused server would not die from SIGKILL any later, but resume first anyway
        // so nothing lingers stopped if kill fails.
        if self.child.is_some() {
            self.resume();
        }
        self.kill();
    }
}

/// Does the redis-server with process id `pid` answer on `port`?
fn serves_pid(port: u16, pid: u32) -> bool {
    let Ok(mut s) = TcpStream::connect(("127.0.0.1", port)) else {
        return false;
    };
    let _ = s.set_read_timeout(Some(Duration::from_millis(500)));
    if s.write_all(b"*2\r\n$4\r\nINFO\r\n$6\r\nserver\r\n")
        .is_err()
    {
        return false;
    }
    // The reply is one bulk string; read until its `process_id:` line has arrived.
    let mut reply = Vec::new();
    let mut buf = [0u8; 4096];
    let needle = format!("process_id:{pid}\r\n");
    while let Ok(n) = s.read(&mut buf) {
        if n == 0 {
            break;
        }
        reply.extend_from_slice(&buf[..n]);
        let text = String::from_utf8_lossy(&reply);
        if text.contains(&needle) {
            return true;
        }
        if text.contains("process_id:") && text.contains("run_id:") {
            return false;
        }
    }
    false
}

/// A tiny synchronous client (redis-rs' blocking connection) bound to one db.
pub struct RawClient {
    conn: redis::Connection,
}

impl RawClient {
    pub fn connect(port: u16, db: i64) -> Self {
        let client =
            redis::Client::open(format!("redis://127.0.0.1:{port}/{db}")).expect("redis client");
        let conn = client
            .get_connection_with_timeout(Duration::from_secs(5))
            .expect("connect to test redis-server");
        RawClient { conn }
    }

    /// Run any command.
    pub fn cmd<T: redis::FromRedisValue>(&mut self, args: &[&str]) -> T {
        let mut cmd = redis::cmd(args[0]);
        for a in &args[1..] {
            cmd.arg(*a);
        }
        cmd.query(&mut self.conn).expect("redis command")
    }

    /// `KEYS pattern`, sorted.
    pub fn keys(&mut self, pattern: &str) -> Vec<String> {
        let mut keys: Vec<String> = self.cmd(&["KEYS", pattern]);
        keys.sort();
        keys
    }

    /// `PTTL key`: -2 missing, -1 no expiry, else milliseconds.
    pub fn pttl(&mut self, key: &str) -> i64 {
        self.cmd(&["PTTL", key])
    }

    /// `HGETALL key` as a sorted map.
    pub fn hgetall(&mut self, key: &str) -> std::collections::BTreeMap<String, String> {
        self.cmd(&["HGETALL", key])
    }

    pub fn exists(&mut self, key: &str) -> bool {
        self.cmd::<i64>(&["EXISTS", key]) == 1
    }
}

/// `KEYS pattern` in `db` of the server on `port`.
pub fn keys(port: u16, db: i64, pattern: &str) -> Vec<String> {
    RawClient::connect(port, db).keys(pattern)
}

/// `PTTL key` in `db` of the server on `port`.
pub fn pttl(port: u16, db: i64, key: &str) -> i64 {
    RawClient::connect(port, db).pttl(key)
}
