//! The redacted printout of `session-sidecar check`: the serialization of [`Config`]
//! itself. The types choose their spelling with the `serialize_with` helpers here
//! (durations and sizes as written in a config file, `${` escaped as `$${`); secrets
//! and the password of a Redis URL are `<redacted>`.

use std::{path::Path, time::Duration};

use serde::{Serialize, Serializer, ser::SerializeMap};

use super::{
    expand::escape_vars,
    types::{Config, RedisOptions, RedisTopology},
    values::{format_duration, format_size, parse_redis_url, redact_url},
};

/// What a secret is printed as.
pub(super) const REDACTED: &str = "<redacted>";

/// A string value, `${` written as `$${` so that reading it back gives it unchanged.
pub(super) fn escaped<S: Serializer>(v: &str, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&escape_vars(v))
}

pub(super) fn escaped_list<S: Serializer>(v: &[String], s: S) -> Result<S::Ok, S::Error> {
    s.collect_seq(v.iter().map(|e| escape_vars(e)))
}

pub(super) fn path<S: Serializer>(v: &Path, s: S) -> Result<S::Ok, S::Error> {
    escaped(&v.to_string_lossy(), s)
}

pub(super) fn opt_path<S: Serializer>(
    v: &Option<impl AsRef<Path>>,
    s: S,
) -> Result<S::Ok, S::Error> {
    match v {
        Some(p) => path(p.as_ref(), s),
        None => s.serialize_none(),
    }
}

pub(super) fn duration<S: Serializer>(v: &Duration, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&format_duration(*v))
}

pub(super) fn opt_duration<S: Serializer>(v: &Option<Duration>, s: S) -> Result<S::Ok, S::Error> {
    match v {
        Some(d) => duration(d, s),
        None => s.serialize_none(),
    }
}

pub(super) fn size<S: Serializer>(v: &usize, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&format_size(*v as u64))
}

/// Hand-written: which keys appear depends on `url` (a URL carries the server and
/// credentials, and maybe the database), and the URL's password is redacted.
impl Serialize for RedisOptions {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut map = s.serialize_map(None)?;
        match &self.topology {
            RedisTopology::Url(url) => {
                map.serialize_entry("url", &escape_vars(&redact_url(&url.0)))?;
                // Written only when the URL does not already carry the number.
                let url_db = parse_redis_url(&url.0).ok().and_then(|i| i.db);
                if url_db.is_none() {
                    map.serialize_entry("db_sessions", &self.db_sessions)?;
                }
            }
            RedisTopology::Server { host, port } => {
                map.serialize_entry("host", &escape_vars(host))?;
                map.serialize_entry("port", port)?;
            }
            RedisTopology::Sentinel(sentinel) => {
                map.serialize_entry("sentinel", sentinel)?;
            }
            RedisTopology::Cluster(cluster) => {
                map.serialize_entry("cluster", cluster)?;
            }
        }
        if !matches!(self.topology, RedisTopology::Url(_)) {
            if let Some(u) = &self.username {
                map.serialize_entry("username", &escape_vars(u))?;
            }
            if let Some(p) = &self.password {
                map.serialize_entry("password", p)?;
            }
            map.serialize_entry("db_sessions", &self.db_sessions)?;
        }
        map.serialize_entry("db_notifications", &self.db_notifications)?;
        map.serialize_entry("max_connections", &self.max_connections)?;
        // Written only when on (a `rediss://` URL says TLS already; `tls: true` with it
        // is accepted too).
        if let Some(tls) = &self.tls {
            map.serialize_entry("tls", &true)?;
            for (key, v) in [
                ("tls_ca", &tls.ca),
                ("tls_cert", &tls.cert),
                ("tls_key", &tls.key),
            ] {
                if let Some(p) = v {
                    map.serialize_entry(key, &escape_vars(&p.to_string_lossy()))?;
                }
            }
        }
        map.end()
    }
}

impl Config {
    /// The effective configuration as YAML, every key present with its default filled
    /// in, secrets (and the password of a Redis URL) replaced by `<redacted>`. Apart
    /// from the secrets, [`Config::from_yaml_str`] reads it back to the same config
    /// (literal `${` in values is written as `$${`).
    pub fn redacted_yaml(&self) -> String {
        // Serializing plain strings, numbers and bools cannot fail; should the
        // serializer still refuse, say so in a YAML comment rather than panic.
        serde_saphyr::to_string(self)
            .unwrap_or_else(|e| format!("# cannot render the configuration: {e}\n"))
    }
}

#[cfg(test)]
mod tests {
    use crate::config::testutil::*;

    const RICH: &str = "listen: 0.0.0.0:8443\n\
        tls: {cert: /etc/c.pem, key: /etc/k.pem}\n\
        upstream: https://app.internal\n\
        upstream_tls: {ca: /etc/ca.pem}\n\
        secrets: [\"${SESSION_SECRET}\", \"${OLD_SECRET}\"]\n\
        store:\n  engine: redis\n  storage:\n    url: \"redis://app:${REDIS_PASSWORD}@r:6379/4\"\n    \
        db_notifications: 5\n  key_prefix: \"s${PORT}:\"\n  on_error: anonymous\n\
        session: {ttl: 90m, absolute_ttl: 7d, max_size: 4000}\n\
        cookies: {name: __Host-sid, same_site: strict, expires_days: 14, rolling: true}\n\
        headers: {prefix: X-Sess, expose_id: true}\n\
        bypass: [/static/, \"/odd$${x}\"]\n\
        trusted_proxies: [10.0.0.0/8]\n\
        timeouts: {shutdown: 0s}\n\
        limits: {max_connections: 500, max_connections_per_ip: null}\n\
        admin: {listen: null}\n\
        log: {format: json, level: debug}\n";

    #[test]
    fn redacted_yaml_has_every_key_and_no_secret() {
        for yaml in [RICH.to_owned(), BASE.to_owned()] {
            let c = parse(&yaml).unwrap_or_else(|e| panic!("{e}"));
            let out = c.redacted_yaml();
            assert!(!out.contains(SECRET_VALUE), "{out}");
            assert!(!out.contains("old-secret"), "{out}");
            assert!(!out.contains("hunter2"), "{out}");
            assert!(out.contains("<redacted>"));
            for key in [
                "listen:",
                "tls:",
                "upstream:",
                "upstream_tls:",
                "secrets:",
                "engine:",
                "storage:",
                "key_prefix:",
                "timeout:",
                "on_error:",
                "ttl:",
                "absolute_ttl:",
                "max_size:",
                "name:",
                "path:",
                "domain:",
                "secure:",
                "http_only:",
                "same_site:",
                "max_age:",
                "rolling:",
                "forward:",
                "prefix:",
                "expose_id:",
                "bypass:",
                "trusted_proxies:",
                "header_read:",
                "body_read:",
                "upstream_connect:",
                "upstream_response:",
                "idle:",
                "shutdown:",
                "max_header_size:",
                "max_connections:",
                "max_connections_per_ip:",
                "admin:",
                "format:",
                "level:",
            ] {
                assert!(out.contains(key), "{key} missing in:\n{out}");
            }
        }
        let out = ok("").redacted_yaml();
        assert!(out.contains("on_error: reject"), "{out}");
        assert!(out.contains("key_prefix: \"session:\""), "{out}");
        assert!(out.contains("max_entries: 100000"), "{out}");
        assert!(out.contains("  max_connections: 10000\n"), "{out}");
        assert!(out.contains("  max_connections_per_ip: 1024\n"), "{out}");
        assert!(!out.contains("servers"), "other engines' settings: {out}");
        let rich = parse(RICH)
            .unwrap_or_else(|e| panic!("{e}"))
            .redacted_yaml();
        assert!(rich.contains("redis://app:<redacted>@r:6379/4"), "{rich}");
        assert!(rich.contains("max_age: 14d"), "{rich}");
        assert!(rich.contains("  max_connections: 500\n"), "{rich}");
        assert!(rich.contains("  max_connections_per_ip: null\n"), "{rich}");
    }

    #[test]
    fn the_cache_is_printed_when_on() {
        let on =
            ok("store: {engine: redis, cache: {max_entries: 250}}\nsession: {touch_after: 1m}\n")
                .redacted_yaml();
        assert!(on.contains("  cache:\n    max_entries: 250\n"), "{on}");
        let off = ok("store: {engine: redis, cache: {max_entries: 0}}\n").redacted_yaml();
        assert!(!off.contains("cache"), "{off}");
    }

    #[test]
    fn the_printed_engine_is_the_engine_name() {
        for engine in ["memory", "redis", "memcached"] {
            let c = ok(&format!("store: {{engine: {engine}}}\n"));
            assert_eq!(c.store.storage.engine_name(), engine);
            let out = c.redacted_yaml();
            assert!(out.contains(&format!("\n  engine: {engine}\n")), "{out}");
        }
    }

    #[test]
    fn redacted_yaml_round_trips() {
        let redis_fields = format!(
            "{BASE}store:\n  engine: redis\n  storage: {{host: r, port: 1, username: u, password: p, tls: false}}\n"
        );
        let memcached =
            format!("{BASE}store: {{engine: memcached, storage: {{servers: [\"a:1\"]}}}}\n");
        let unix_url =
            format!("{BASE}store: {{engine: redis, storage: {{url: \"unix:///r.sock\"}}}}\n");
        let sentinel = format!(
            "{BASE}store: {{engine: redis, storage: {{sentinel: {{master_name: m, nodes: [\"a:1\"], \
             password: spw}}, password: dpw}}}}\n"
        );
        for yaml in [
            RICH.to_owned(),
            BASE.to_owned(),
            redis_fields,
            memcached,
            unix_url,
            sentinel,
        ] {
            let first = parse(&yaml)
                .unwrap_or_else(|e| panic!("{e}"))
                .redacted_yaml();
            assert!(!first.contains("spw") && !first.contains("dpw"), "{first}");
            // Secrets cannot come back; give the reader valid ones in their place.
            let again = first.replace("<redacted>", "${SESSION_SECRET}");
            let second = parse(&again)
                .unwrap_or_else(|e| panic!("re-reading:\n{first}\n{e}"))
                .redacted_yaml();
            assert_eq!(first, second);
        }
        // Without secrets other than `${SESSION_SECRET}`, the printout reads back to an
        // equal config (`Config: PartialEq`).
        for yaml in [
            BASE.to_owned(),
            format!("{BASE}store: {{engine: memcached, storage: {{servers: [\"a:1\"]}}}}\n"),
            format!("{BASE}store: {{engine: redis, storage: {{url: \"redis://r/3\"}}}}\n"),
            format!(
                "{BASE}store: {{engine: redis, storage: {{url: \"rediss://r:6380\", tls_ca: /ca.pem, \
                 tls_cert: /c.pem, tls_key: /k.pem}}}}\n"
            ),
            format!("{BASE}store: {{engine: redis, storage: {{host: r, tls: true}}}}\n"),
            format!(
                "{BASE}store: {{engine: redis, storage: {{sentinel: {{master_name: m, nodes: [\"a:1\", \"b:2\"], \
                 username: su}}, username: u, db_notifications: 3}}}}\n"
            ),
            format!("{BASE}store: {{engine: redis, storage: {{cluster: {{nodes: [\"a:1\"]}}}}}}\n"),
            format!("{BASE}store: {{engine: redis, storage: {{host: r, db_sessions: 2}}}}\n"),
            format!(
                "{BASE}store: {{engine: redis, storage: {{host: r}}, cache: {{max_entries: 100}}}}\n\
                 session: {{touch_after: 1m}}\n"
            ),
            format!(
                "{BASE}session: {{touch_after: 1m, no_touch: [/poll, \"/api/status\"], max_per_owner: 3, \
                 record_client: true}}\nadmin: {{token: \"${{SESSION_SECRET}}\"}}\nlog: {{owner: true}}\n"
            ),
        ] {
            let c = parse(&yaml).unwrap_or_else(|e| panic!("{e}"));
            let back = parse(&c.redacted_yaml().replace("<redacted>", "${SESSION_SECRET}"))
                .unwrap_or_else(|e| panic!("{e}"));
            assert_eq!(back, c, "{yaml}");
        }
        let c = parse(RICH).unwrap_or_else(|e| panic!("{e}"));
        let back = parse(&c.redacted_yaml().replace("<redacted>", "${SESSION_SECRET}"))
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(back.bypass, c.bypass);
        assert_eq!(back.bypass[1], "/odd${x}");
        assert_eq!(redis(&back).db_sessions, 4);
        assert_eq!(back.store.key_prefix, "s6380:");
        assert!(back.admin.listen.is_none());
        assert_eq!(back.cookies.lifetime, c.cookies.lifetime);
        assert_eq!(back.limits.max_connections, 500);
        assert_eq!(back.limits.max_connections_per_ip, None);
    }
}
