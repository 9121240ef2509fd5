//! The real `session-sidecar` binary as a child process, for tests that need signals,
//! the process environment or the process's own log.
//!
//! The configuration is written to a temp dir and should say `listen: 127.0.0.1:0`: the
//! address is read from the child's own startup line (`session-sidecar listening
//! addr=…`, text or JSON), so another process on a port can never be mistaken for it.
//! When the config's log filter hides that line, [`Spawn::quiet`] finds the child's
//! listening socket in `/proc` instead (again only the child's own sockets).
//!
//! stdout and stderr are collected by reader threads; every wait polls with
//! `tokio::time::sleep` and is bounded. The child is killed when the [`Binary`] is
//! dropped (a failing assertion never leaves a sidecar running). Signals go to the
//! child's pid only.

use std::{
    collections::HashSet,
    ffi::OsString,
    io::{BufRead, BufReader, Read},
    net::{Ipv4Addr, SocketAddr},
    path::{Path, PathBuf},
    process::{Child, Command, ExitStatus, Stdio},
    sync::{Arc, Mutex},
    thread::JoinHandle,
    time::{Duration, Instant},
};

pub const BIN: &str = env!("CARGO_BIN_EXE_session-sidecar");
/// Generous: the machine is slow and shared.
pub const WAIT: Duration = Duration::from_secs(20);
/// The message of the startup line that carries the bound address.
pub const LISTENING: &str = "session-sidecar listening";
/// Output kept per stream; a runaway child cannot exhaust the test's memory.
const MAX_OUTPUT: usize = 64 * 1024 * 1024;

/// A whole config file: an ephemeral port, no admin listener, [`super::SECRET_A`], then
/// `rest` (at least `upstream:`).
pub fn config(rest: &str) -> String {
    format!(
        "listen: 127.0.0.1:0\nsecrets: [\"{}\"]\nadmin: {{ listen: null }}\n{rest}",
        super::SECRET_A
    )
}

/// Write `yaml` as `sidecar.yaml` in `dir`; returns its path.
pub fn write_config(dir: &Path, yaml: &str) -> PathBuf {
    let path = dir.join("sidecar.yaml");
    std::fs::write(&path, yaml).expect("write the config");
    path
}

/// The binary as a one-shot command (`gen-secret`, `check`, a start that must fail), in
/// the environment the test decides, not the shell's that runs `cargo test`.
pub fn command() -> Command {
    let mut cmd = Command::new(BIN);
    cmd.env_remove("RUST_LOG")
        .env_remove("SIDECAR_CONFIG")
        .env_remove("SSL_CERT_FILE")
        .env_remove("SSL_CERT_DIR")
        .stdin(Stdio::null());
    cmd
}

/// How to start the binary; see [`Binary::with_config`].
pub struct Spawn {
    yaml: String,
    envs: Vec<(OsString, OsString)>,
    quiet: bool,
}

impl Spawn {
    /// Set an environment variable for the child.
    pub fn env(mut self, key: &str, value: impl Into<OsString>) -> Spawn {
        self.envs.push((key.into(), value.into()));
        self
    }

    /// The config's log filter hides the `session-sidecar listening` line: find the
    /// child's only listening TCP socket through `/proc/<pid>` instead (Linux).
    pub fn quiet(mut self) -> Spawn {
        self.quiet = true;
        self
    }

    /// Start the child and wait (bounded) until it listens.
    pub async fn spawn(self) -> Binary {
        let dir = tempfile::tempdir().expect("temp dir");
        let config = write_config(dir.path(), &self.yaml);
        let mut cmd = command();
        cmd.arg("--config")
            .arg(&config)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        for (k, v) in &self.envs {
            cmd.env(k, v);
        }
        let mut child = cmd.spawn().expect("spawn the binary");
        let stdout = Arc::new(Mutex::new(String::new()));
        let stderr = Arc::new(Mutex::new(String::new()));
        let readers = vec![
            collect(child.stdout.take().expect("piped stdout"), stdout.clone()),
            collect(child.stderr.take().expect("piped stderr"), stderr.clone()),
        ];
        // From here on a panic kills the child (Drop).
        let mut bin = Binary {
            child,
            addr: SocketAddr::from(([0, 0, 0, 0], 0)),
            config,
            stdout,
            stderr,
            readers,
            _dir: dir,
        };
        let deadline = Instant::now() + WAIT;
        bin.addr = loop {
            let found = if self.quiet {
                listening_socket(bin.pid())
            } else {
                listening_addr(&bin.log())
            };
            if let Some(addr) = found {
                break addr;
            }
            if !bin.is_running() {
                bin.drain_output().await;
                panic!("the sidecar exited at start\n{}", bin.log());
            }
            assert!(
                Instant::now() < deadline,
                "the sidecar did not listen within {WAIT:?}\n{}",
                bin.log()
            );
            tokio::time::sleep(Duration::from_millis(25)).await;
        };
        bin
    }
}

/// A running `session-sidecar` child; killed on drop if still running.
pub struct Binary {
    child: Child,
    /// The proxy listener's address, as the child itself reported it.
    pub addr: SocketAddr,
    /// The config file (rewrite it and SIGHUP to reload).
    pub config: PathBuf,
    stdout: Arc<Mutex<String>>,
    stderr: Arc<Mutex<String>>,
    readers: Vec<JoinHandle<()>>,
    _dir: tempfile::TempDir,
}

impl Binary {
    /// Prepare a child with `yaml` as its whole config file.
    pub fn with_config(yaml: impl Into<String>) -> Spawn {
        Spawn {
            yaml: yaml.into(),
            envs: Vec::new(),
            quiet: false,
        }
    }

    /// Start with `yaml` and the default environment.
    pub async fn spawn(yaml: &str) -> Binary {
        Binary::with_config(yaml).spawn().await
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Everything the child wrote to stderr (its log) so far.
    pub fn log(&self) -> String {
        self.stderr.lock().expect("log lock").clone()
    }

    /// Everything the child wrote to stdout so far.
    pub fn stdout(&self) -> String {
        self.stdout.lock().expect("stdout lock").clone()
    }

    pub fn is_running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    /// Send `SIG<name>` (e.g. "TERM", "HUP") to the child's pid.
    pub fn signal(&self, name: &str) {
        let ok = Command::new("kill")
            .args([&format!("-{name}"), &self.pid().to_string()])
            .status()
            .expect("run kill(1)")
            .success();
        assert!(ok, "kill -{name} {} failed", self.pid());
    }

    /// Replace the config file atomically (write, then rename), as a deployment would:
    /// a reader never sees half a file.
    pub fn rewrite(&self, yaml: &str) {
        let tmp = self.config.with_extension("tmp");
        std::fs::write(&tmp, yaml).expect("write the new config");
        std::fs::rename(&tmp, &self.config).expect("rename the new config");
    }

    /// Wait (bounded) until the log contains `needle` `count` times.
    pub async fn wait_log(&self, needle: &str, count: usize) {
        let deadline = Instant::now() + WAIT;
        while self.log().matches(needle).count() < count {
            assert!(
                Instant::now() < deadline,
                "no {count}× {needle:?} in the log:\n{}",
                self.log()
            );
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    }

    /// SIGHUP, then wait until its outcome (applied or rejected) is logged.
    pub async fn reload(&self) {
        let done = |log: &str| {
            log.matches("configuration reloaded;").count()
                + log.matches("configuration reload rejected").count()
        };
        let before = done(&self.log());
        self.signal("HUP");
        let deadline = Instant::now() + WAIT;
        while done(&self.log()) <= before {
            assert!(
                Instant::now() < deadline,
                "SIGHUP not handled:\n{}",
                self.log()
            );
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    }

    /// Wait up to `bound` for the child to exit; its output is then complete.
    pub async fn wait_exit(&mut self, bound: Duration) -> ExitStatus {
        let deadline = Instant::now() + bound;
        let status = loop {
            if let Some(status) = self.child.try_wait().expect("try_wait") {
                break status;
            }
            assert!(
                Instant::now() < deadline,
                "the sidecar still runs {bound:?} later\n{}",
                self.log()
            );
            tokio::time::sleep(Duration::from_millis(25)).await;
        };
        self.drain_output().await;
        status
    }

    /// Wait up to `bound` for the child to exit, and assert it exited with status 0.
    pub async fn wait_exit_0(&mut self, bound: Duration) {
        let status = self.wait_exit(bound).await;
        assert!(status.success(), "exit status {status}\n{}", self.log());
    }

    /// SIGTERM, wait for a clean exit (status 0), return the whole log.
    pub async fn stop(mut self) -> String {
        self.signal("TERM");
        self.wait_exit_0(WAIT).await;
        self.log()
    }

    /// After the exit: wait (bounded) for the reader threads to reach end of file.
    async fn drain_output(&mut self) {
        let deadline = Instant::now() + WAIT;
        while !self.readers.iter().all(JoinHandle::is_finished) {
            assert!(Instant::now() < deadline, "the child's output did not end");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
}

impl Drop for Binary {
    fn drop(&mut self) {
        // Only our own child, by its handle.
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// A thread appending everything `from` writes to `into`, line by line (lossy UTF-8).
fn collect(from: impl Read + Send + 'static, into: Arc<Mutex<String>>) -> JoinHandle<()> {
    std::thread::spawn(move || {
        let mut reader = BufReader::new(from);
        let mut line = Vec::new();
        loop {
            line.clear();
            match reader.read_until(b'\n', &mut line) {
                Ok(0) | Err(_) => return,
                Ok(_) => {
                    let Ok(mut out) = into.lock() else { return };
                    if out.len() + line.len() <= MAX_OUTPUT {
                        out.push_str(&String::from_utf8_lossy(&line));
                    }
                }
            }
        }
    })
}

/// The address in the child's `session-sidecar listening` line, text or JSON format:
/// `… session-sidecar listening addr=127.0.0.1:PORT tls=…` or
/// `{…,"message":"session-sidecar listening","addr":"127.0.0.1:PORT",…}`.
pub fn listening_addr(log: &str) -> Option<SocketAddr> {
    log.lines()
        .filter(|l| l.contains(LISTENING))
        .find_map(|line| {
            if let Ok(json) = serde_json::from_str::<serde_json::Value>(line) {
                return json["addr"].as_str()?.parse().ok();
            }
            line.split_whitespace()
                .find_map(|w| w.strip_prefix("addr="))?
                .parse()
                .ok()
        })
}

/// The one IPv4 TCP socket in LISTEN state among `pid`'s file descriptors, from
/// `/proc/<pid>/fd` and `/proc/<pid>/net/tcp`. `None` while there is none yet; panics if
/// there are several (a quiet spawn cannot tell the proxy listener from the admin one).
fn listening_socket(pid: u32) -> Option<SocketAddr> {
    let mut inodes = HashSet::new();
    for entry in std::fs::read_dir(format!("/proc/{pid}/fd")).ok()?.flatten() {
        // An fd may close between the listing and the readlink: skip it.
        let Ok(target) = std::fs::read_link(entry.path()) else {
            continue;
        };
        if let Some(inode) = target
            .to_str()
            .and_then(|t| t.strip_prefix("socket:["))
            .and_then(|t| t.strip_suffix(']'))
        {
            inodes.insert(inode.to_owned());
        }
    }
    let table = std::fs::read_to_string(format!("/proc/{pid}/net/tcp")).ok()?;
    // sl local_address rem_address st tx_queue:rx_queue tr:tm->when retrnsmt uid timeout inode
    let listening: Vec<SocketAddr> = table
        .lines()
        .skip(1)
        .filter_map(|row| {
            let f: Vec<&str> = row.split_whitespace().collect();
            if f.len() > 9 && f[3] == "0A" && inodes.contains(f[9]) {
                let (ip, port) = f[1].split_once(':')?;
                // The address is the raw network-order u32 printed as hex.
                let ip = u32::from_str_radix(ip, 16).ok()?.to_ne_bytes();
                let port = u16::from_str_radix(port, 16).ok()?;
                Some(SocketAddr::from((Ipv4Addr::from(ip), port)))
            } else {
                None
            }
        })
        .collect();
    // Every proxy worker has its own socket on the one address (SO_REUSEPORT).
    let mut listening = listening;
    listening.sort();
    listening.dedup();
    assert!(
        listening.len() <= 1,
        "pid {pid} listens on {listening:?}: a quiet spawn needs exactly one listener"
    );
    listening.first().copied()
}
