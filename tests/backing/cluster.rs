//! A Redis Cluster: 6 `redis-server --cluster-enabled yes` nodes on free ports (3
//! masters, 1 replica each), created with `redis-cli --cluster create`, plus helpers
//! for failover and live slot migration.

use std::{
    collections::BTreeMap,
    process::Command,
    time::{Duration, Instant},
};

use super::{RawClient, RedisServer, free_port, tls::REDIS_CLI_MISSING};

const WAIT: Duration = Duration::from_secs(30);

/// One line of `CLUSTER NODES`.
#[derive(Debug, Clone)]
pub struct NodeLine {
    pub id: String,
    pub port: u16,
    pub flags: Vec<String>,
    /// The master's id for a replica, `-` for a master.
    pub master_id: String,
    /// Owned slot ranges (inclusive); `[slot->-id]` migration markers are left out.
    pub slots: Vec<(u16, u16)>,
}

impl NodeLine {
    pub fn is_master(&self) -> bool {
        self.flags.iter().any(|f| f == "master")
    }
    pub fn is_failed(&self) -> bool {
        self.flags.iter().any(|f| f == "fail" || f == "fail?")
    }
}

/// Six cluster nodes. Killed on drop.
pub struct RedisCluster {
    dir: tempfile::TempDir,
    servers: Vec<RedisServer>,
    /// port → node id (fixed for the life of a node).
    ids: BTreeMap<u16, String>,
    /// killed master → its replica at the time.
    former_replica: BTreeMap<u16, u16>,
}

impl RedisCluster {
    /// Start 6 nodes, create the cluster (3 masters with 1 replica each) and wait
    /// until every node says `cluster_state:ok` and all agree on the 16384 slots and
    /// on each master having a replica. Panics with diagnostics after ~30 s.
    pub fn start() -> Self {
        let dir = tempfile::tempdir().expect("cluster temp dir");
        let servers: Vec<RedisServer> = (0..6)
            .map(|_| {
                let port = free_port();
                // the cluster bus port (default port + 10000 may be past 65535)
                let bus = std::iter::repeat_with(free_port)
                    .find(|b| *b != port)
                    .expect("a free port");
                let conf = dir.path().join(format!("nodes-{port}.conf"));
                RedisServer::start_on(
                    port,
                    &[
                        "--cluster-enabled",
                        "yes",
                        "--cluster-config-file",
                        conf.to_str().expect("utf-8 temp path"),
                        "--cluster-port",
                        &bus.to_string(),
                        "--cluster-node-timeout",
                        "1000",
                        // a replica is promoted however long its link was down
                        "--cluster-replica-validity-factor",
                        "0",
                        // replicas stay with the master they were given
                        "--cluster-allow-replica-migration",
                        "no",
                        // the initial sync starts at once (default: 5 s delay)
                        "--repl-diskless-sync-delay",
                        "0",
                    ],
                )
            })
            .collect();
        let addrs: Vec<String> = servers
            .iter()
            .map(|s| format!("127.0.0.1:{}", s.port()))
            .collect();
        let out = match Command::new("redis-cli")
            .args(["--cluster", "create"])
            .args(&addrs)
            .args(["--cluster-replicas", "1", "--cluster-yes"])
            .output()
        {
            Ok(out) => out,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => panic!("{REDIS_CLI_MISSING}"),
            Err(e) => panic!("cannot run redis-cli: {e}"),
        };
        assert!(
            out.status.success(),
            "redis-cli --cluster create failed:\n{}\n{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        let ids = servers
            .iter()
            .map(|s| {
                let id: String = RawClient::connect(s.port(), 0).cmd(&["CLUSTER", "MYID"]);
                (s.port(), id)
            })
            .collect();
        let cluster = RedisCluster {
            dir,
            servers,
            ids,
            former_replica: BTreeMap::new(),
        };
        cluster.wait_converged(Instant::now() + WAIT);
        cluster
    }

    /// Wait until every running node says `cluster_state:ok`, every node's view has 3
    /// live masters covering all 16384 slots each with a live replica, and all views
    /// agree.
    pub fn wait_converged(&self, deadline: Instant) {
        loop {
            let views: Vec<(u16, Option<String>, Option<Vec<NodeLine>>)> = self
                .running_ports()
                .into_iter()
                .map(|p| (p, cluster_info(p), cluster_nodes(p)))
                .collect();
            let summaries: Vec<Option<Summary>> = views
                .iter()
                .map(|(_, info, nodes)| {
                    if !info.as_deref()?.contains("cluster_state:ok") {
                        return None;
                    }
                    summarize(nodes.as_ref()?)
                })
                .collect();
            // every master with slots sees its replica online (initial sync done)
            let synced = views.iter().all(|(p, _, nodes)| {
                let master = nodes.as_ref().is_some_and(|nodes| {
                    nodes
                        .iter()
                        .any(|n| n.port == *p && n.is_master() && !n.slots.is_empty())
                });
                !master || info_replication(*p).is_some_and(|i| i.contains("state=online"))
            });
            if synced
                && summaries.iter().all(|s| s.is_some())
                && summaries.windows(2).all(|w| w[0] == w[1])
            {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "cluster did not converge: {views:#?}"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    fn running_ports(&self) -> Vec<u16> {
        self.servers
            .iter()
            .filter(|s| s.is_running())
            .map(|s| s.port())
            .collect()
    }

    /// `"127.0.0.1:<port>"` of the current masters (for `cluster: {nodes: [...]}`).
    pub fn nodes(&self) -> Vec<String> {
        self.masters()
            .iter()
            .map(|p| format!("127.0.0.1:{p}"))
            .collect()
    }

    /// `"127.0.0.1:<port>"` of all six nodes.
    pub fn all_nodes(&self) -> Vec<String> {
        self.servers
            .iter()
            .map(|s| format!("127.0.0.1:{}", s.port()))
            .collect()
    }

    /// `CLUSTER NODES` as the first answering node sees it.
    pub fn topology(&self) -> Vec<NodeLine> {
        self.running_ports()
            .into_iter()
            .find_map(cluster_nodes)
            .expect("a cluster node answers")
    }

    /// Ports of the current live masters that own slots, sorted.
    pub fn masters(&self) -> Vec<u16> {
        let mut m: Vec<u16> = self
            .topology()
            .into_iter()
            .filter(|n| n.is_master() && !n.is_failed() && !n.slots.is_empty())
            .map(|n| n.port)
            .collect();
        m.sort();
        m
    }

    /// The port of the master serving `slot`.
    pub fn master_for_slot(&self, slot: u16) -> u16 {
        self.topology()
            .into_iter()
            .find(|n| {
                n.is_master()
                    && !n.is_failed()
                    && n.slots.iter().any(|r| r.0 <= slot && slot <= r.1)
            })
            .unwrap_or_else(|| panic!("no master for slot {slot}"))
            .port
    }

    /// `CLUSTER KEYSLOT key`.
    pub fn key_slot(&self, key: &str) -> u16 {
        let slot: i64 = self.cmd_on(self.running_ports()[0], &["CLUSTER", "KEYSLOT", key]);
        slot as u16
    }

    /// The port of the (first) replica of the master on `master_port`.
    pub fn replica_of(&self, master_port: u16) -> u16 {
        let id = &self.ids[&master_port];
        self.topology()
            .into_iter()
            .find(|n| &n.master_id == id)
            .unwrap_or_else(|| panic!("no replica of {master_port}"))
            .port
    }

    /// Wait (≤30 s) until the replica of the master on `master_port` has everything
    /// that master had written ([`super::wait_replicated`]).
    pub fn wait_replicated(&self, master_port: u16) {
        super::wait_replicated(master_port, self.replica_of(master_port));
    }

    /// SIGKILL the master on `port` (its replica is remembered for
    /// [`RedisCluster::wait_promoted`]).
    pub fn kill_master(&mut self, port: u16) {
        let replica = self.replica_of(port);
        self.former_replica.insert(port, replica);
        self.servers
            .iter_mut()
            .find(|s| s.port() == port)
            .unwrap_or_else(|| panic!("{port} is not a node"))
            .kill();
    }

    /// Poll the surviving nodes (≤30 s) until each says `cluster_state:ok`, sees all
    /// 16384 slots on live masters, none on `old_master`, and sees its former replica
    /// as a master with slots: that replica's port and when this was observed.
    pub fn wait_promoted(&self, old_master: u16) -> (u16, Instant) {
        let replica = *self
            .former_replica
            .get(&old_master)
            .expect("kill_master(old_master) first");
        let deadline = Instant::now() + WAIT;
        loop {
            let ports = self.running_ports();
            let done = ports.iter().all(|p| {
                let ok = cluster_info(*p).is_some_and(|i| i.contains("cluster_state:ok"));
                ok && cluster_nodes(*p).is_some_and(|nodes| {
                    summarize_slots(&nodes) == 16384
                        && !nodes
                            .iter()
                            .any(|n| n.port == old_master && n.is_master() && !n.slots.is_empty())
                        && nodes
                            .iter()
                            .any(|n| n.port == replica && n.is_master() && !n.slots.is_empty())
                })
            });
            if done {
                return (replica, Instant::now());
            }
            assert!(
                Instant::now() < deadline,
                "no promotion after killing {old_master}: {:#?}",
                ports.iter().map(|p| cluster_nodes(*p)).collect::<Vec<_>>()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Move `slot` live from `from_port` to `to_port`: [`RedisCluster::begin_migration`],
    /// [`RedisCluster::move_keys`], [`RedisCluster::finish_migration`].
    pub fn migrate_slot(&self, slot: u16, from_port: u16, to_port: u16) {
        self.begin_migration(slot, from_port, to_port);
        self.move_keys(slot, from_port, to_port);
        self.finish_migration(slot, from_port, to_port);
    }

    /// `CLUSTER SETSLOT slot IMPORTING <from-id>` on the target, then `MIGRATING
    /// <to-id>` on the source: the slot is half-migrated (ASK redirections).
    pub fn begin_migration(&self, slot: u16, from_port: u16, to_port: u16) {
        let s = slot.to_string();
        let _: String = self.cmd_on(
            to_port,
            &["CLUSTER", "SETSLOT", &s, "IMPORTING", &self.ids[&from_port]],
        );
        let _: String = self.cmd_on(
            from_port,
            &["CLUSTER", "SETSLOT", &s, "MIGRATING", &self.ids[&to_port]],
        );
    }

    /// `MIGRATE` the keys of `slot` from source to target, 100 at a time, until
    /// `CLUSTER GETKEYSINSLOT` is empty; the number of keys moved.
    pub fn move_keys(&self, slot: u16, from_port: u16, to_port: u16) -> usize {
        let mut moved = 0;
        loop {
            let keys: Vec<String> = self.cmd_on(
                from_port,
                &["CLUSTER", "GETKEYSINSLOT", &slot.to_string(), "100"],
            );
            if keys.is_empty() {
                return moved;
            }
            let port = to_port.to_string();
            let mut args = vec!["MIGRATE", "127.0.0.1", &port, "", "0", "5000", "KEYS"];
            args.extend(keys.iter().map(String::as_str));
            let _: String = self.cmd_on(from_port, &args);
            moved += keys.len();
        }
    }

    /// `CLUSTER SETSLOT slot NODE <to-id>` on the target, the source and every other
    /// master, then wait until every running node's view has `slot` on `to_port`.
    pub fn finish_migration(&self, slot: u16, from_port: u16, to_port: u16) {
        let s = slot.to_string();
        let to_id = &self.ids[&to_port];
        let mut order = vec![to_port, from_port];
        order.extend(
            self.masters()
                .into_iter()
                .filter(|p| *p != to_port && *p != from_port),
        );
        for p in order {
            let _: String = self.cmd_on(p, &["CLUSTER", "SETSLOT", &s, "NODE", to_id]);
        }
        let deadline = Instant::now() + WAIT;
        loop {
            let agreed = self.running_ports().into_iter().all(|p| {
                cluster_nodes(p).is_some_and(|nodes| {
                    nodes.iter().any(|n| {
                        n.port == to_port && n.slots.iter().any(|r| r.0 <= slot && slot <= r.1)
                    })
                })
            });
            if agreed {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "slot {slot} not seen on {to_port} by every node"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// `DBSIZE` of each current master: (port, keys).
    pub fn count_keys_per_master(&self) -> Vec<(u16, usize)> {
        self.masters()
            .into_iter()
            .map(|p| (p, self.cmd_on::<i64>(p, &["DBSIZE"]) as usize))
            .collect()
    }

    /// A sync client on the master serving `key`'s slot.
    pub fn client_for_key(&self, key: &str) -> RawClient {
        RawClient::connect(self.master_for_slot(self.key_slot(key)), 0)
    }

    /// Run `args` on the node on `port` (no redirections followed). Panics on error.
    pub fn cmd_on<T: redis::FromRedisValue>(&self, port: u16, args: &[&str]) -> T {
        RawClient::connect(port, 0).cmd(args)
    }

    /// `redis-cli -c -p <port> args…` (follows MOVED/ASK): trimmed stdout.
    pub fn cli_c(&self, port: u16, args: &[&str]) -> String {
        let out = Command::new("redis-cli")
            .args(["-c", "-h", "127.0.0.1", "-p", &port.to_string()])
            .args(args)
            .output()
            .unwrap_or_else(|e| panic!("{REDIS_CLI_MISSING}: {e}"));
        String::from_utf8_lossy(&out.stdout).trim().to_owned()
    }
}

/// Per view: sorted (master port, slot ranges, live replicas) when 16384 slots are
/// covered and every master has a live replica; else `None`.
/// A view's masters: (port, slot ranges, live replicas), sorted.
type Summary = Vec<(u16, Vec<(u16, u16)>, usize)>;

fn summarize(nodes: &[NodeLine]) -> Option<Summary> {
    if summarize_slots(nodes) != 16384 {
        return None;
    }
    let mut out = Vec::new();
    for m in nodes
        .iter()
        .filter(|n| n.is_master() && !n.slots.is_empty())
    {
        if m.is_failed() {
            return None;
        }
        let replicas = nodes
            .iter()
            .filter(|n| n.master_id == m.id && !n.is_failed())
            .count();
        if replicas == 0 {
            return None;
        }
        out.push((m.port, m.slots.clone(), replicas));
    }
    out.sort();
    Some(out)
}

/// Slots owned by live masters.
fn summarize_slots(nodes: &[NodeLine]) -> usize {
    nodes
        .iter()
        .filter(|n| n.is_master() && !n.is_failed())
        .flat_map(|n| n.slots.iter())
        .map(|r| (r.1 - r.0) as usize + 1)
        .sum()
}

fn try_conn(port: u16) -> Option<redis::Connection> {
    let c = redis::Client::open(format!("redis://127.0.0.1:{port}")).ok()?;
    let conn = c.get_connection_with_timeout(Duration::from_secs(1)).ok()?;
    conn.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
    Some(conn)
}

fn info_replication(port: u16) -> Option<String> {
    redis::cmd("INFO")
        .arg("replication")
        .query(&mut try_conn(port)?)
        .ok()
}

fn cluster_info(port: u16) -> Option<String> {
    redis::cmd("CLUSTER")
        .arg("INFO")
        .query(&mut try_conn(port)?)
        .ok()
}

/// `CLUSTER NODES` of the node on `port`, parsed; `None` when it does not answer.
pub fn cluster_nodes(port: u16) -> Option<Vec<NodeLine>> {
    let text: String = redis::cmd("CLUSTER")
        .arg("NODES")
        .query(&mut try_conn(port)?)
        .ok()?;
    Some(text.lines().filter_map(parse_node_line).collect())
}

fn parse_node_line(line: &str) -> Option<NodeLine> {
    let f: Vec<&str> = line.split_whitespace().collect();
    if f.len() < 8 {
        return None;
    }
    // 127.0.0.1:port@cport[,hostname]
    let addr = f[1].split('@').next()?;
    let port = addr.rsplit(':').next()?.parse().ok()?;
    let slots = f[8..]
        .iter()
        .filter(|s| !s.starts_with('['))
        .filter_map(|s| match s.split_once('-') {
            Some((a, b)) => Some((a.parse().ok()?, b.parse().ok()?)),
            None => {
                let n = s.parse().ok()?;
                Some((n, n))
            }
        })
        .collect();
    Some(NodeLine {
        id: f[0].to_owned(),
        port,
        flags: f[2]
            .split(',')
            .map(|s| s.trim_start_matches("myself").to_owned())
            .collect(),
        master_id: f[3].to_owned(),
        slots,
    })
}
