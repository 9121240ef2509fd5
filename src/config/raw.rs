//! The configuration as written: private serde structs whose values carry their
//! position in the file, and the key list of each section.

use std::fmt;

use serde::Deserialize;
use serde_saphyr::Spanned;

pub(super) type Str = Spanned<String>;
pub(super) type Val = Spanned<Scalar>;

/// A scalar of any YAML type. Numeric and boolean keys are read through this (not as
/// `u64`/`bool`) so that `"${PORT}"` can be expanded first and so that type errors get
/// our message and the key's name.
#[derive(Debug, Clone)]
pub(super) enum Scalar {
    Int(i128),
    Float(f64),
    Bool(bool),
    Str(String),
}

impl<'de> Deserialize<'de> for Scalar {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> serde::de::Visitor<'de> for V {
            type Value = Scalar;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a single value")
            }
            fn visit_bool<E>(self, v: bool) -> Result<Scalar, E> {
                Ok(Scalar::Bool(v))
            }
            fn visit_i64<E>(self, v: i64) -> Result<Scalar, E> {
                Ok(Scalar::Int(v.into()))
            }
            fn visit_u64<E>(self, v: u64) -> Result<Scalar, E> {
                Ok(Scalar::Int(v.into()))
            }
            fn visit_i128<E>(self, v: i128) -> Result<Scalar, E> {
                Ok(Scalar::Int(v))
            }
            fn visit_u128<E: serde::de::Error>(self, v: u128) -> Result<Scalar, E> {
                i128::try_from(v)
                    .map(Scalar::Int)
                    .map_err(|_| E::custom("number too large"))
            }
            fn visit_f64<E>(self, v: f64) -> Result<Scalar, E> {
                Ok(Scalar::Float(v))
            }
            fn visit_str<E>(self, v: &str) -> Result<Scalar, E> {
                Ok(Scalar::Str(v.to_owned()))
            }
            // Without these, serde reports "invalid type" without a usable location.
            fn visit_seq<A: serde::de::SeqAccess<'de>>(self, _: A) -> Result<Scalar, A::Error> {
                Err(serde::de::Error::custom(
                    "expected a single value, found a list",
                ))
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(self, _: A) -> Result<Scalar, A::Error> {
                Err(serde::de::Error::custom(
                    "expected a single value, found a mapping",
                ))
            }
        }
        d.deserialize_any(V)
    }
}

/// A key whose explicit `null` differs from its absence (`admin.listen: null`
/// disables the admin listener; leaving the key out keeps the default).
#[derive(Debug, Default)]
pub(super) enum Nullable<T> {
    #[default]
    Absent,
    Null,
    Value(T),
}

impl<'de, T: Deserialize<'de>> Deserialize<'de> for Nullable<T> {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        // Only called when the key is present (`#[serde(default)]` covers absence).
        Ok(match Option::<T>::deserialize(d)? {
            None => Nullable::Null,
            Some(v) => Nullable::Value(v),
        })
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawConfig {
    pub(super) listen: Option<Str>,
    pub(super) workers: Option<Val>,
    pub(super) tls: Option<Spanned<RawTls>>,
    pub(super) upstream: Option<Str>,
    pub(super) upstream_tls: Option<Spanned<RawUpstreamTls>>,
    pub(super) secrets: Option<Spanned<Vec<Str>>>,
    pub(super) store: Option<Spanned<RawStore>>,
    pub(super) session: Option<Spanned<RawSession>>,
    pub(super) cookies: Option<Spanned<RawCookies>>,
    pub(super) headers: Option<Spanned<RawHeaders>>,
    pub(super) bypass: Option<Spanned<Vec<Str>>>,
    pub(super) trusted_proxies: Option<Spanned<Vec<Str>>>,
    pub(super) timeouts: Option<Spanned<RawTimeouts>>,
    pub(super) limits: Option<Spanned<RawLimits>>,
    pub(super) admin: Option<Spanned<RawAdmin>>,
    pub(super) log: Option<Spanned<RawLog>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawTls {
    pub(super) cert: Option<Str>,
    pub(super) key: Option<Str>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawUpstreamTls {
    pub(super) ca: Option<Str>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawStore {
    pub(super) engine: Option<Str>,
    pub(super) storage: Option<Spanned<RawStorage>>,
    pub(super) key_prefix: Option<Str>,
    pub(super) timeout: Option<Val>,
    pub(super) on_error: Option<Str>,
    pub(super) cache: Option<Spanned<RawCache>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawCache {
    pub(super) max_entries: Option<Val>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawStorage {
    pub(super) url: Option<Str>,
    pub(super) host: Option<Str>,
    pub(super) port: Option<Val>,
    pub(super) username: Option<Str>,
    pub(super) password: Option<Str>,
    pub(super) db_sessions: Option<Val>,
    pub(super) db_notifications: Option<Val>,
    pub(super) max_connections: Option<Val>,
    pub(super) tls: Option<Val>,
    pub(super) tls_ca: Option<Str>,
    pub(super) tls_cert: Option<Str>,
    pub(super) tls_key: Option<Str>,
    pub(super) sentinel: Option<Spanned<RawSentinel>>,
    pub(super) cluster: Option<Spanned<RawCluster>>,
    pub(super) servers: Option<Spanned<Vec<Str>>>,
    pub(super) max_entries: Option<Val>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawSentinel {
    pub(super) master_name: Option<Str>,
    pub(super) nodes: Option<Spanned<Vec<Str>>>,
    pub(super) username: Option<Str>,
    pub(super) password: Option<Str>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawCluster {
    pub(super) nodes: Option<Spanned<Vec<Str>>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawSession {
    pub(super) ttl: Option<Val>,
    pub(super) absolute_ttl: Option<Val>,
    pub(super) max_size: Option<Val>,
    pub(super) touch_after: Option<Val>,
    pub(super) no_touch: Option<Spanned<Vec<Str>>>,
    #[serde(default)]
    pub(super) max_per_owner: Nullable<Val>,
    pub(super) record_client: Option<Val>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawCookies {
    pub(super) name: Option<Str>,
    pub(super) path: Option<Str>,
    pub(super) domain: Option<Str>,
    pub(super) secure: Option<Val>,
    pub(super) http_only: Option<Val>,
    pub(super) same_site: Option<Str>,
    pub(super) expires_days: Option<Val>,
    pub(super) max_age: Option<Val>,
    pub(super) rolling: Option<Val>,
    pub(super) forward: Option<Val>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawHeaders {
    pub(super) prefix: Option<Str>,
    pub(super) expose_id: Option<Val>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawTimeouts {
    pub(super) header_read: Option<Val>,
    pub(super) body_read: Option<Val>,
    pub(super) upstream_connect: Option<Val>,
    pub(super) upstream_response: Option<Val>,
    pub(super) idle: Option<Val>,
    pub(super) shutdown: Option<Val>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawLimits {
    pub(super) max_header_size: Option<Val>,
    pub(super) max_connections: Option<Val>,
    #[serde(default)]
    pub(super) max_connections_per_ip: Nullable<Val>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawAdmin {
    #[serde(default)]
    pub(super) listen: Nullable<Str>,
    #[serde(default)]
    pub(super) token: Nullable<Str>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawLog {
    pub(super) format: Option<Str>,
    pub(super) level: Option<Str>,
    pub(super) owner: Option<Val>,
}

/// The keys of each section, for "unknown key" hints. serde reports the expected field
/// list of the struct that rejected the key; matching it against these sets tells which
/// section it was (a unit test checks each set against its struct).
pub(super) const SECTIONS: &[(&str, &[&str])] = &[
    (
        "",
        &[
            "listen",
            "workers",
            "tls",
            "upstream",
            "upstream_tls",
            "secrets",
            "store",
            "session",
            "cookies",
            "headers",
            "bypass",
            "trusted_proxies",
            "timeouts",
            "limits",
            "admin",
            "log",
        ],
    ),
    ("tls", &["cert", "key"]),
    ("upstream_tls", &["ca"]),
    (
        "store",
        &[
            "engine",
            "storage",
            "key_prefix",
            "timeout",
            "on_error",
            "cache",
        ],
    ),
    ("store.cache", &["max_entries"]),
    (
        "store.storage",
        &[
            "url",
            "host",
            "port",
            "username",
            "password",
            "db_sessions",
            "db_notifications",
            "max_connections",
            "tls",
            "tls_ca",
            "tls_cert",
            "tls_key",
            "sentinel",
            "cluster",
            "servers",
            "max_entries",
        ],
    ),
    (
        "store.storage.sentinel",
        &["master_name", "nodes", "username", "password"],
    ),
    ("store.storage.cluster", &["nodes"]),
    (
        "session",
        &[
            "ttl",
            "absolute_ttl",
            "max_size",
            "touch_after",
            "no_touch",
            "max_per_owner",
            "record_client",
        ],
    ),
    (
        "cookies",
        &[
            "name",
            "path",
            "domain",
            "secure",
            "http_only",
            "same_site",
            "expires_days",
            "max_age",
            "rolling",
            "forward",
        ],
    ),
    ("headers", &["prefix", "expose_id"]),
    (
        "timeouts",
        &[
            "header_read",
            "body_read",
            "upstream_connect",
            "upstream_response",
            "idle",
            "shutdown",
        ],
    ),
    (
        "limits",
        &[
            "max_header_size",
            "max_connections",
            "max_connections_per_ip",
        ],
    ),
    ("admin", &["listen", "token"]),
    ("log", &["format", "level", "owner"]),
];
