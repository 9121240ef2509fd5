//! The stores the HTTP-level suites run on, as `store:` config sections with the servers
//! that keep them alive (session_suite, owners). The Redis Cluster and the Sentinel set
//! are started once per test binary: starting them takes seconds, and every test uses
//! fresh random session ids (and owners).

use serde_json::{Value, json};

/// A store under test: the `store:` config section plus whatever keeps it alive.
pub struct Store {
    pub section: Value,
    pub redis: Option<super::RedisServer>,
    pub memcached: Option<super::MemcachedServer>,
}

pub fn memory() -> Store {
    Store {
        section: json!({"engine": "memory"}),
        redis: None,
        memcached: None,
    }
}

pub fn redis() -> Store {
    let server = super::RedisServer::start();
    Store {
        section: json!({"engine": "redis", "storage": {"host": "127.0.0.1", "port": server.port()}}),
        redis: Some(server),
        memcached: None,
    }
}

/// One Redis Cluster and one Sentinel set for the whole binary (starting them takes
/// seconds; every test uses fresh random session ids).
pub fn cluster() -> Store {
    static CLUSTER: std::sync::OnceLock<super::RedisCluster> = std::sync::OnceLock::new();
    let cluster = CLUSTER.get_or_init(super::RedisCluster::start);
    Store {
        section: json!({"engine": "redis", "storage": {"cluster": {"nodes": cluster.nodes()}}}),
        redis: None,
        memcached: None,
    }
}

pub fn sentinel() -> Store {
    static SET: std::sync::OnceLock<super::SentinelSet> = std::sync::OnceLock::new();
    let set = SET.get_or_init(super::SentinelSet::start);
    Store {
        section: json!({"engine": "redis", "storage": {"sentinel": {
            "master_name": set.master_name(),
            "nodes": set.sentinel_nodes(),
        }}}),
        redis: None,
        memcached: None,
    }
}

pub fn memcached() -> Store {
    let server = super::MemcachedServer::start();
    Store {
        section: json!({"engine": "memcached", "storage": {"servers": [server.addr()]}}),
        redis: None,
        memcached: Some(server),
    }
}
