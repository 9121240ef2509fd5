//! Entry points for the fuzz targets in `fuzz/` (docs/fuzzing.md), compiled only with the
//! `fuzzing` feature. Thin wrappers over crate-private parsers; nothing here is part of
//! the library's API, and a normal build does not contain this module.
//!
//! The public parsers (`cookie`, `protocol`, `proxy::headers`, `config`, `store::pairs`)
//! are used by the targets directly; this module adds only what is not public.

use crate::{
    server::head_scan,
    store::{FieldMap, LoadedSession, StoreError, memcached, redis},
};

pub use crate::server::head_scan::HeadFraming;
/// The client library's reply type, so the targets build replies without depending on
/// the `redis` crate themselves (one version, the one the sidecar links).
pub use ::redis::Value as RedisValue;

/// The raw HTTP/1 request-head scan ([`crate::server::head_scan`]).
#[derive(Debug, Default)]
pub struct HeadScan(head_scan::HeadScan);

impl HeadScan {
    pub fn new() -> Self {
        Self::default()
    }

    /// Feed the next bytes read from the connection.
    pub fn feed(&mut self, bytes: &[u8]) {
        self.0.feed(bytes);
    }

    pub fn result(&self) -> HeadFraming {
        self.0.result()
    }
}

/// A memcached meta-protocol reply line as `store::memcached::client::parse_header`
/// reads it (a mirror of its crate-private `Header`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MemcachedHeader {
    /// `VA <len> <flags>`.
    Value {
        len: usize,
        cas: Option<u64>,
        ttl: Option<i64>,
    },
    Done,
    Miss,
    NotStored,
    Exists,
    NotFound,
    Version(String),
    /// `ERROR`, `CLIENT_ERROR …`, `SERVER_ERROR …`.
    Error(String),
}

/// Parse one memcached reply line.
///
/// # Errors
/// What the client reports as a protocol error.
pub fn memcached_parse_header(line: &[u8]) -> Result<MemcachedHeader, &'static str> {
    use memcached::fuzzing::{Header, Reply};
    Ok(match memcached::fuzzing::parse_header(line)? {
        Header::Value { len, cas, ttl } => MemcachedHeader::Value { len, cas, ttl },
        Header::Error(message) => MemcachedHeader::Error(message),
        Header::Other(reply) => match reply {
            Reply::Done => MemcachedHeader::Done,
            Reply::Miss => MemcachedHeader::Miss,
            Reply::NotStored => MemcachedHeader::NotStored,
            Reply::Exists => MemcachedHeader::Exists,
            Reply::NotFound => MemcachedHeader::NotFound,
            Reply::Version(v) => MemcachedHeader::Version(v),
            // `parse_header` never builds a value reply (its data block follows the line).
            Reply::Value { .. } => unreachable!("parse_header returns Header::Value"),
        },
    })
}

/// Decode a memcached session item and encode it again.
///
/// # Errors
/// The item is corrupt.
pub fn memcached_reencode_session(bytes: &[u8]) -> Result<Vec<u8>, StoreError> {
    memcached::fuzzing::reencode_session(bytes)
}

/// Decode a memcached flash item and encode it again.
///
/// # Errors
/// The item is corrupt.
pub fn memcached_reencode_flash(bytes: &[u8]) -> Result<Vec<u8>, StoreError> {
    memcached::fuzzing::reencode_flash(bytes)
}

/// Decode a memcached owner-index item and encode it again.
///
/// # Errors
/// The item is corrupt.
pub fn memcached_reencode_index(bytes: &[u8]) -> Result<Vec<u8>, StoreError> {
    memcached::fuzzing::reencode_index(bytes)
}

/// What the Redis store makes of the load script's reply.
///
/// # Errors
/// The reply is malformed (corruption).
pub fn redis_load_reply(reply: RedisValue) -> Result<Option<LoadedSession>, StoreError> {
    redis::fuzzing::load_reply(reply)
}

/// What the Redis store caches from the reply of a write sent for the cache
/// (`{'OK', header, owner, data pairs}`); `None` for a plain `{'OK'}`.
///
/// # Errors
/// The reply is malformed (corruption).
pub fn redis_written_reply(reply: RedisValue) -> Result<Option<LoadedSession>, StoreError> {
    redis::fuzzing::written_reply(reply)
}

/// What the Redis store makes of the take script's reply (a move on a cluster):
/// `Some((meta, data, flash))` for `TAKEN`, `None` for another status.
///
/// # Errors
/// The reply is malformed (corruption).
pub fn redis_take_reply(
    reply: RedisValue,
) -> Result<Option<(Vec<u8>, FieldMap, FieldMap)>, StoreError> {
    redis::fuzzing::take_reply(reply)
}

/// Parse RESP bytes into a reply with the client library's own parser.
///
/// # Errors
/// The bytes are not one complete RESP value.
pub fn parse_resp(bytes: &[u8]) -> Result<RedisValue, String> {
    ::redis::parse_redis_value(bytes).map_err(|e| e.to_string())
}
