//! The backing servers of the integration tests: a real `redis-server` and a real
//! `memcached` per test (never mocked), spawned on free ports, and tiny synchronous
//! clients for assertions on what the sidecar stored; [`faults`] is a fault-injecting
//! proxy to put between a sidecar and them. The HTTP side is in `harness`.
//!
//! Every test binary compiles this module and uses only part of it.
#![allow(dead_code)]

// The harness' certificates (binaries that compile `harness` too hold two copies).
#[allow(clippy::duplicate_mod)]
#[path = "../harness/certs.rs"]
pub mod certs;
pub mod cluster;
pub mod faults;
pub mod sentinel;
pub mod stores;
pub mod tls;

#[allow(unused_imports)]
pub use cluster::RedisCluster;
#[allow(unused_imports)]
pub use sentinel::SentinelSet;
#[allow(unused_imports)]
pub use tls::TlsRedis;

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
        kill_child(&mut self.child);
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
        let port = self.port;
        let log_path = self.log_path();
        let child = spawn_until_ours(
            "redis-server",
            REDIS_MISSING,
            port,
            || {
                let mut cmd = Command::new("redis-server");
                cmd.arg("--port")
                    .arg(port.to_string())
                    .args(["--bind", "127.0.0.1", "--save", "", "--appendonly", "no"])
                    .arg("--dir")
                    .arg(self.dir.path())
                    .arg("--logfile")
                    .arg(&log_path)
                    .args(&self.extra_args);
                cmd
            },
            |pid| serves_pid(port, pid),
            || std::fs::read_to_string(&log_path).unwrap_or_default(),
        );
        self.child = Some(child);
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

/// Spawn a server and wait (up to 10 s) until *our* child answers on `port`, as
/// `answers_as(pid)` tells: another test may have grabbed the same free port a moment
/// earlier. A child that exits at once (the port still held, e.g. in TIME_WAIT after a
/// restart) is spawned again until the deadline. A missing binary fails with `missing`.
fn spawn_until_ours(
    name: &str,
    missing: &str,
    port: u16,
    command: impl Fn() -> Command,
    answers_as: impl Fn(u32) -> bool,
    diagnostics: impl Fn() -> String,
) -> Child {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let child = command()
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn();
        let mut child = match child {
            Ok(child) => child,
            Err(e) if e.kind() == ErrorKind::NotFound => panic!("{missing}"),
            Err(e) => panic!("cannot start {name}: {e}"),
        };
        loop {
            if answers_as(child.id()) {
                kill_at_exit(child.id());
                return child;
            }
            if let Ok(Some(status)) = child.try_wait() {
                if Instant::now() > deadline {
                    panic!(
                        "{name} exited ({status}) on port {port}:\n{}",
                        diagnostics()
                    );
                }
                std::thread::sleep(Duration::from_millis(50));
                break;
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                panic!("{name} on port {port} did not answer");
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

/// Kill a child (SIGKILL: an outage, not a clean shutdown) and reap it.
fn kill_child(child: &mut Option<Child>) {
    if let Some(mut child) = child.take() {
        forget_at_exit(child.id());
        let _ = child.kill();
        let _ = child.wait();
    }
}

/// The servers alive now. Servers shared by a whole test binary live in statics, which
/// are never dropped: these are killed when the test process exits, so no server
/// outlives its test run.
static LIVE: std::sync::Mutex<Vec<u32>> = std::sync::Mutex::new(Vec::new());

extern "C" fn kill_live_servers() {
    if let Ok(pids) = LIVE.lock() {
        for &pid in pids.iter() {
            // SAFETY: kill(2) with a pid this process spawned and has not reaped.
            unsafe {
                libc::kill(pid as libc::pid_t, libc::SIGKILL);
            }
        }
    }
}

fn kill_at_exit(pid: u32) {
    static REGISTERED: std::sync::Once = std::sync::Once::new();
    REGISTERED.call_once(|| {
        // SAFETY: registers a plain extern "C" fn that only calls kill(2).
        unsafe {
            libc::atexit(kill_live_servers);
        }
    });
    if let Ok(mut pids) = LIVE.lock() {
        pids.push(pid);
    }
}

fn forget_at_exit(pid: u32) {
    if let Ok(mut pids) = LIVE.lock() {
        pids.retain(|&p| p != pid);
    }
}

/// The message a missing memcached binary fails with (never a silent skip).
pub const MEMCACHED_MISSING: &str =
    "memcached not found on PATH: install it with `apt-get install -y memcached`";

/// A `memcached` child on 127.0.0.1 (UDP off). Killed on drop.
pub struct MemcachedServer {
    port: u16,
    child: Option<Child>,
}

impl MemcachedServer {
    /// Start on a free port and wait until it answers `version`.
    pub fn start() -> Self {
        Self::start_on(free_port())
    }

    /// Start on a given port (e.g. one a store was configured with while nothing ran).
    pub fn start_on(port: u16) -> Self {
        let mut server = MemcachedServer { port, child: None };
        server.spawn();
        server
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// `127.0.0.1:<port>`, as `store.storage.servers` lists it.
    pub fn addr(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    pub fn is_running(&self) -> bool {
        self.child.is_some()
    }

    /// Kill the server (SIGKILL) and reap it.
    pub fn kill(&mut self) {
        kill_child(&mut self.child);
    }

    /// Start again on the same port (data is gone).
    pub fn restart(&mut self) {
        self.kill();
        self.spawn();
    }

    fn spawn(&mut self) {
        let port = self.port;
        let child = spawn_until_ours(
            "memcached",
            MEMCACHED_MISSING,
            port,
            || {
                let mut cmd = Command::new("memcached");
                cmd.args(["-l", "127.0.0.1", "-U", "0", "-p"])
                    .arg(port.to_string());
                // memcached refuses to run as root without a user to switch to.
                if is_root() {
                    cmd.args(["-u", "root"]);
                }
                cmd
            },
            // `stats` names the pid.
            |pid| {
                mc_stats(port)
                    .get("pid")
                    .is_some_and(|p| *p == pid.to_string())
            },
            String::new,
        );
        self.child = Some(child);
    }

    /// `stats` as a map.
    pub fn stats(&self) -> std::collections::BTreeMap<String, String> {
        mc_stats(self.port)
    }

    /// The named numeric `stats` counters, e.g. `["cmd_get", "cmd_touch", "cmd_set"]`
    /// (a meta `mg` that refreshes the TTL counts as a touch).
    pub fn counters<const N: usize>(&self, names: [&str; N]) -> [u64; N] {
        let stats = self.stats();
        names.map(|k| {
            stats
                .get(k)
                .and_then(|n| n.parse().ok())
                .unwrap_or_else(|| panic!("no {k} in stats"))
        })
    }

    /// Items currently stored (`curr_items`).
    pub fn items(&self) -> u64 {
        self.stats()
            .get("curr_items")
            .and_then(|n| n.parse().ok())
            .expect("curr_items in stats")
    }

    /// The raw value of `key` (`mg key v`), `None` on a miss.
    pub fn get(&self, key: &str) -> Option<Vec<u8>> {
        let reply = mc_raw(self.port, &format!("mg {key} v\r\n"), |b| {
            b.starts_with(b"EN\r\n") || value_reply_len(b).is_some_and(|n| b.len() >= n)
        });
        if reply.starts_with(b"EN") {
            return None;
        }
        let header_end = reply
            .windows(2)
            .position(|w| w == b"\r\n")
            .expect("reply header");
        let header = String::from_utf8_lossy(&reply[..header_end]).to_string();
        let len: usize = header
            .split(' ')
            .nth(1)
            .and_then(|n| n.parse().ok())
            .unwrap_or_else(|| panic!("bad reply {header}"));
        Some(reply[header_end + 2..header_end + 2 + len].to_vec())
    }

    /// Seconds left to `key`'s expiry as memcached sees it (`mg key t`): `None` on a
    /// miss, `Some(-1)` for an item that never expires.
    pub fn ttl(&self, key: &str) -> Option<i64> {
        let reply = mc_raw(self.port, &format!("mg {key} t\r\n"), |b| {
            b.ends_with(b"\r\n")
        });
        let text = String::from_utf8_lossy(&reply).trim().to_string();
        if text == "EN" {
            return None;
        }
        let t = text
            .split(' ')
            .find_map(|f| f.strip_prefix('t'))
            .unwrap_or_else(|| panic!("bad reply {text}"));
        Some(t.parse().expect("ttl"))
    }
}

impl Drop for MemcachedServer {
    fn drop(&mut self) {
        self.kill();
    }
}

fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
}

/// Total length of a complete `VA <len> …\r\n<data>\r\n` reply, once its header is in.
fn value_reply_len(b: &[u8]) -> Option<usize> {
    let end = b.windows(2).position(|w| w == b"\r\n")?;
    let header = std::str::from_utf8(&b[..end]).ok()?;
    let len: usize = header
        .strip_prefix("VA ")?
        .split(' ')
        .next()?
        .parse()
        .ok()?;
    Some(end + 2 + len + 2)
}

/// Send `request` to memcached on `port` and read until `done(reply so far)`.
fn mc_raw(port: u16, request: &str, done: impl Fn(&[u8]) -> bool) -> Vec<u8> {
    let mut s = TcpStream::connect(("127.0.0.1", port)).expect("connect to memcached");
    s.set_read_timeout(Some(Duration::from_secs(3)))
        .expect("read timeout");
    s.write_all(request.as_bytes()).expect("write to memcached");
    let mut reply = Vec::new();
    let mut buf = [0u8; 4096];
    while !done(&reply) {
        match s.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => reply.extend_from_slice(&buf[..n]),
        }
    }
    reply
}

/// `stats` of the memcached on `port` (empty when nothing answers).
pub fn mc_stats(port: u16) -> std::collections::BTreeMap<String, String> {
    let Ok(mut s) = TcpStream::connect(("127.0.0.1", port)) else {
        return Default::default();
    };
    let _ = s.set_read_timeout(Some(Duration::from_millis(500)));
    if s.write_all(b"stats\r\n").is_err() {
        return Default::default();
    }
    let mut reply = Vec::new();
    let mut buf = [0u8; 4096];
    while !reply.ends_with(b"END\r\n") {
        match s.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => reply.extend_from_slice(&buf[..n]),
        }
    }
    String::from_utf8_lossy(&reply)
        .lines()
        .filter_map(|line| {
            let mut parts = line.split(' ');
            match (parts.next(), parts.next(), parts.next()) {
                (Some("STAT"), Some(k), Some(v)) => Some((k.to_owned(), v.to_owned())),
                _ => None,
            }
        })
        .collect()
}

/// Wait (≤30 s) until the replica on `replica` has processed everything the master on
/// `master` had written when this was called: its `slave_repl_offset` reaches the
/// master's `master_repl_offset`. (`WAIT` on a new connection waits for nothing: it
/// counts that connection's own writes only.)
pub fn wait_replicated(master: u16, replica: u16) {
    let offset = |text: &str, key: &str| -> Option<i64> {
        text.lines()
            .find_map(|l| l.trim().strip_prefix(key)?.parse().ok())
    };
    let info: String = RawClient::connect(master, 0).cmd(&["INFO", "replication"]);
    let target = offset(&info, "master_repl_offset:")
        .unwrap_or_else(|| panic!("no master_repl_offset from {master}:\n{info}"));
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let rinfo: String = RawClient::connect(replica, 0).cmd(&["INFO", "replication"]);
        if offset(&rinfo, "slave_repl_offset:").is_some_and(|o| o >= target) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "replica {replica} of {master} not at offset {target} within 30 s:\n{rinfo}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}
