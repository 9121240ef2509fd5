//! Helpers shared by the unit tests of the config modules.

pub(super) use std::{
    net::SocketAddr,
    path::{Path, PathBuf},
    time::Duration,
};

pub(super) use super::{Config, ConfigError, Secret, types::*};
pub(super) use crate::cookie::SameSite;

pub(super) const SECRET_VALUE: &str = "0123456789abcdefghijklmnopqrstuvwxyzABCDEFG";

pub(super) fn env(name: &str) -> Option<String> {
    match name {
        "SESSION_SECRET" => Some(SECRET_VALUE.to_owned()),
        "OLD_SECRET" => Some("old-secret-old-secret-old-secret-0".to_owned()),
        "PORT" => Some("6380".to_owned()),
        "EMPTY" => Some(String::new()),
        "REDIS_PASSWORD" => Some("hunter2-redis-password".to_owned()),
        "TRICKY" => Some("a: b # c ${SESSION_SECRET} $${".to_owned()),
        _ => None,
    }
}

pub(super) const BASE: &str = "upstream: http://127.0.0.1:8000\nsecrets: [\"${SESSION_SECRET}\"]\n";

pub(super) fn parse(yaml: &str) -> Result<Config, ConfigError> {
    Config::from_yaml_str_with_env(yaml, Path::new("conf/t.yaml"), &env)
}

pub(super) fn ok(extra: &str) -> Config {
    match parse(&format!("{BASE}{extra}")) {
        Ok(c) => c,
        Err(e) => panic!("expected valid config, got:\n{e}"),
    }
}

pub(super) fn err(extra: &str) -> ConfigError {
    parse(&format!("{BASE}{extra}")).expect_err("expected an error")
}

/// Asserts an error at `line:col` (lines counted in the whole document, BASE is
/// 2 lines) whose message contains `needle`.
pub(super) fn assert_err(extra: &str, line: u64, col: u64, needle: &str) -> ConfigError {
    let e = err(extra);
    assert_eq!(e.position(), Some((line, col)), "position of: {e}");
    assert!(e.message().contains(needle), "{needle:?} not in: {e}");
    e
}

/// The Redis options of `c` (panics for another engine).
pub(super) fn redis(c: &Config) -> &RedisOptions {
    match &c.store.storage {
        Storage::Redis(o) => o,
        other => panic!("expected redis, got {other:?}"),
    }
}

/// The memcached options of `c` (panics for another engine).
pub(super) fn memcached(c: &Config) -> &MemcachedOptions {
    match &c.store.storage {
        Storage::Memcached(o) => o,
        other => panic!("expected memcached, got {other:?}"),
    }
}
