//! The backing server sets themselves (`tests/backing`): each starts, has the
//! properties the other tests rely on, and its start time is printed.

mod backing;

use std::time::{Duration, Instant};

use backing::{RedisCluster, SentinelSet, TlsRedis};

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

#[test]
fn sentinel_set_fails_over_after_the_master_is_killed() {
    let t = Instant::now();
    let mut set = SentinelSet::start();
    eprintln!("SentinelSet::start: {:?}", t.elapsed());
    assert_eq!(set.master_name(), "mymaster");
    assert_eq!(set.sentinel_nodes().len(), 3);
    let replica = set.replica_port();
    let old = set.kill_master();
    let killed = Instant::now();
    let (new, at) = set.wait_failover(old);
    eprintln!("sentinel failover: {:?}", at - killed);
    assert_eq!(new, replica);
    let t = Instant::now();
    set.wait_all_report(new);
    eprintln!("all sentinels agree after: {:?}", t.elapsed());
    assert_eq!(set.master_port(), new);
}

#[test]
fn cluster_has_three_masters_migrates_and_fails_over() {
    let t = Instant::now();
    let mut cluster = RedisCluster::start();
    eprintln!("RedisCluster::start: {:?}", t.elapsed());
    let masters = cluster.masters();
    assert_eq!(masters.len(), 3);
    assert_eq!(cluster.nodes().len(), 3);
    assert_eq!(cluster.all_nodes().len(), 6);
    for m in &masters {
        assert_ne!(cluster.replica_of(*m), *m);
    }
    // a {tag} pins keys to one slot
    let slot = cluster.key_slot("{user1}.a");
    assert_eq!(cluster.key_slot("{user1}.b"), slot);
    let from = cluster.master_for_slot(slot);
    let _: () = cluster
        .client_for_key("{user1}.a")
        .cmd(&["SET", "{user1}.a", "v1"]);
    let _: () = cluster
        .client_for_key("{user1}.b")
        .cmd(&["SET", "{user1}.b", "v2"]);
    let to = *masters.iter().find(|m| **m != from).unwrap();

    let t = Instant::now();
    cluster.migrate_slot(slot, from, to);
    eprintln!("migrate_slot: {:?}", t.elapsed());
    assert_eq!(cluster.master_for_slot(slot), to);
    assert_eq!(cluster.cli_c(from, &["GET", "{user1}.a"]), "v1");
    let counts = cluster.count_keys_per_master();
    assert_eq!(counts.iter().find(|(p, _)| *p == to).unwrap().1, 2);

    let victim = to;
    let replica = cluster.replica_of(victim);
    // the replica has the keys before its master dies
    cluster.wait_replicated(victim);
    cluster.kill_master(victim);
    let killed = Instant::now();
    let (new, at) = cluster.wait_promoted(victim);
    eprintln!("cluster promotion: {:?}", at - killed);
    assert_eq!(new, replica);
    assert!(at - killed < Duration::from_secs(15));
    assert_eq!(cluster.master_for_slot(slot), new);
    let on_new: Option<String> = cluster.cmd_on(new, &["GET", "{user1}.b"]);
    eprintln!(
        "on new master: {on_new:?}; keys {:?}",
        cluster.count_keys_per_master()
    );
    assert_eq!(cluster.cli_c(from, &["GET", "{user1}.b"]), "v2");
}
