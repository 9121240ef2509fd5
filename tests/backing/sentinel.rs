//! A Sentinel set: one master, one replica and three sentinels (quorum 2) on free
//! ports, each in its own temp dir (sentinels rewrite their config file).

use std::{
    process::{Child, Command},
    time::{Duration, Instant},
};

use super::{REDIS_MISSING, RedisServer, free_port, kill_child, serves_pid, spawn_until_ours};

const MASTER_NAME: &str = "mymaster";
const WAIT: Duration = Duration::from_secs(30);

/// One sentinel process.
struct Sentinel {
    port: u16,
    dir: tempfile::TempDir,
    child: Option<Child>,
}

/// Master + replica + 3 sentinels monitoring `mymaster` (down after 1 s, failover
/// timeout 5 s). Everything is killed on drop.
pub struct SentinelSet {
    /// The two data servers; either may be master after a failover.
    servers: Vec<RedisServer>,
    sentinels: Vec<Sentinel>,
}

impl SentinelSet {
    /// Start master, replica (waits for `master_link_status:up`), then 3 sentinels,
    /// and wait until each reports the master, ≥1 replica and 2 other sentinels.
    /// Panics with diagnostics after ~30 s.
    pub fn start() -> Self {
        // the replica's initial sync starts at once (default: a 5 s delay); the
        // replica gets the same setting for when it is promoted
        let fast_sync = ["--repl-diskless-sync-delay", "0"];
        let master = RedisServer::start_with(&fast_sync);
        let mport = master.port().to_string();
        let replica = RedisServer::start_with(&[
            "--replicaof",
            "127.0.0.1",
            &mport,
            fast_sync[0],
            fast_sync[1],
        ]);
        let deadline = Instant::now() + WAIT;
        loop {
            let info = info(replica.port(), "replication").unwrap_or_default();
            if info.contains("master_link_status:up") {
                break;
            }
            assert!(Instant::now() < deadline, "replica never synced:\n{info}");
            std::thread::sleep(Duration::from_millis(50));
        }
        let sentinels = (0..3).map(|_| Sentinel::start(master.port())).collect();
        let set = SentinelSet {
            servers: vec![master, replica],
            sentinels,
        };
        set.wait_ready(deadline);
        set
    }

    fn wait_ready(&self, deadline: Instant) {
        let master = self.servers[0].port();
        for s in &self.sentinels {
            loop {
                let fields = sentinel_master(s.port).unwrap_or_default();
                let get = |k: &str| fields.iter().find(|(f, _)| f == k).map(|(_, v)| v.clone());
                let slaves: u32 = get("num-slaves").and_then(|n| n.parse().ok()).unwrap_or(0);
                let others: u32 = get("num-other-sentinels")
                    .and_then(|n| n.parse().ok())
                    .unwrap_or(0);
                if get_master_addr(s.port) == Some(master) && slaves >= 1 && others >= 2 {
                    break;
                }
                assert!(
                    Instant::now() < deadline,
                    "sentinel {} not ready: {fields:?}",
                    s.port
                );
                std::thread::sleep(Duration::from_millis(100));
            }
        }
    }

    /// `"mymaster"`
    pub fn master_name(&self) -> &'static str {
        MASTER_NAME
    }

    /// `"127.0.0.1:<port>"` of each sentinel.
    pub fn sentinel_nodes(&self) -> Vec<String> {
        self.sentinels
            .iter()
            .map(|s| format!("127.0.0.1:{}", s.port))
            .collect()
    }

    /// The master's port as the first answering sentinel currently reports it.
    pub fn master_port(&self) -> u16 {
        self.sentinels
            .iter()
            .find_map(|s| get_master_addr(s.port))
            .expect("a sentinel reports the master")
    }

    /// The port of the data server that is not [`SentinelSet::master_port`].
    pub fn replica_port(&self) -> u16 {
        let m = self.master_port();
        self.servers
            .iter()
            .map(|s| s.port())
            .find(|p| *p != m)
            .expect("two servers")
    }

    /// SIGKILL the current master; returns its port.
    pub fn kill_master(&mut self) -> u16 {
        let m = self.master_port();
        let server = self
            .servers
            .iter_mut()
            .find(|s| s.port() == m)
            .expect("master is ours");
        server.kill();
        m
    }

    /// Poll the sentinels (≤30 s) until one reports a master other than `old_master`
    /// whose `ROLE` is master; the new port and when that was observed.
    pub fn wait_failover(&self, old_master: u16) -> (u16, Instant) {
        let deadline = Instant::now() + WAIT;
        loop {
            for s in &self.sentinels {
                if let Some(p) = get_master_addr(s.port)
                    && p != old_master
                    && role(p).as_deref() == Some("master")
                {
                    return (p, Instant::now());
                }
            }
            assert!(
                Instant::now() < deadline,
                "no failover from {old_master}: {:?}",
                self.sentinels
                    .iter()
                    .map(|s| sentinel_master(s.port))
                    .collect::<Vec<_>>()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Wait (≤30 s) until every sentinel reports `master` as the master (after
    /// [`SentinelSet::wait_failover`] the others follow within a hello period or so).
    pub fn wait_all_report(&self, master: u16) {
        let deadline = Instant::now() + WAIT;
        while !self
            .sentinels
            .iter()
            .all(|s| get_master_addr(s.port) == Some(master))
        {
            assert!(
                Instant::now() < deadline,
                "sentinels disagree on the master: {:?}",
                self.sentinels
                    .iter()
                    .map(|s| get_master_addr(s.port))
                    .collect::<Vec<_>>()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Start the killed server again as a replica of the current master.
    pub fn restart_old_master_as_replica(&mut self) {
        let m = self.master_port();
        let server = self
            .servers
            .iter()
            .position(|s| !s.is_running())
            .expect("a killed server");
        let port = self.servers[server].port();
        self.servers[server] =
            RedisServer::start_on(port, &["--replicaof", "127.0.0.1", &m.to_string()]);
    }
}

impl Sentinel {
    fn start(master: u16) -> Sentinel {
        let port = free_port();
        let dir = tempfile::tempdir().expect("sentinel temp dir");
        let conf = dir.path().join(format!("sentinel-{port}.conf"));
        let log = dir.path().join("sentinel.log");
        std::fs::write(
            &conf,
            format!(
                "port {port}\nbind 127.0.0.1\ndir {dir}\nlogfile {log}\n\
                 sentinel monitor {MASTER_NAME} 127.0.0.1 {master} 2\n\
                 sentinel down-after-milliseconds {MASTER_NAME} 1000\n\
                 sentinel failover-timeout {MASTER_NAME} 5000\n\
                 sentinel parallel-syncs {MASTER_NAME} 1\n",
                dir = dir.path().display(),
                log = log.display(),
            ),
        )
        .expect("write sentinel config");
        let child = spawn_until_ours(
            "redis-server --sentinel",
            REDIS_MISSING,
            port,
            || {
                let mut cmd = Command::new("redis-server");
                cmd.arg(&conf).arg("--sentinel");
                cmd
            },
            |pid| serves_pid(port, pid),
            || std::fs::read_to_string(&log).unwrap_or_default(),
        );
        Sentinel {
            port,
            dir,
            child: Some(child),
        }
    }
}

impl Drop for Sentinel {
    fn drop(&mut self) {
        kill_child(&mut self.child);
    }
}

fn conn(port: u16) -> redis::RedisResult<redis::Connection> {
    let c = redis::Client::open(format!("redis://127.0.0.1:{port}"))?;
    let conn = c.get_connection_with_timeout(Duration::from_secs(1))?;
    conn.set_read_timeout(Some(Duration::from_secs(2)))?;
    Ok(conn)
}

fn info(port: u16, section: &str) -> Option<String> {
    redis::cmd("INFO")
        .arg(section)
        .query(&mut conn(port).ok()?)
        .ok()
}

fn get_master_addr(sentinel: u16) -> Option<u16> {
    let addr: Option<(String, String)> = redis::cmd("SENTINEL")
        .arg("get-master-addr-by-name")
        .arg(MASTER_NAME)
        .query(&mut conn(sentinel).ok()?)
        .ok()?;
    addr?.1.parse().ok()
}

fn sentinel_master(sentinel: u16) -> Option<Vec<(String, String)>> {
    let flat: Vec<String> = redis::cmd("SENTINEL")
        .arg("master")
        .arg(MASTER_NAME)
        .query(&mut conn(sentinel).ok()?)
        .ok()?;
    Some(
        flat.chunks(2)
            .filter(|c| c.len() == 2)
            .map(|c| (c[0].clone(), c[1].clone()))
            .collect(),
    )
}

/// The first element of `ROLE` ("master", "slave"), `None` when nothing answers.
fn role(port: u16) -> Option<String> {
    let v: redis::Value = redis::cmd("ROLE").query(&mut conn(port).ok()?).ok()?;
    match v {
        redis::Value::Array(items) => match items.first()? {
            redis::Value::BulkString(b) => Some(String::from_utf8_lossy(b).into_owned()),
            redis::Value::SimpleString(s) => Some(s.clone()),
            _ => None,
        },
        _ => None,
    }
}
