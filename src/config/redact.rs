//! The redacted printout of `session-sidecar check`.

use std::path::Path;

use serde::Serialize;

use super::{expand::escape_vars, store::engine_name, types::*, values::*};
use crate::cookie::SameSite;

pub(super) const REDACTED: &str = "<redacted>";

#[derive(Serialize)]
pub(super) struct View {
    pub(super) listen: String,
    pub(super) tls: Option<ViewTls>,
    pub(super) upstream: String,
    pub(super) upstream_tls: Option<ViewUpstreamTls>,
    pub(super) secrets: Vec<&'static str>,
    pub(super) store: ViewStore,
    pub(super) session: ViewSession,
    pub(super) cookies: ViewCookies,
    pub(super) headers: ViewHeaders,
    pub(super) bypass: Vec<String>,
    pub(super) trusted_proxies: Vec<String>,
    pub(super) timeouts: ViewTimeouts,
    pub(super) limits: ViewLimits,
    pub(super) admin: ViewAdmin,
    pub(super) log: ViewLog,
}

#[derive(Serialize)]
pub(super) struct ViewTls {
    pub(super) cert: String,
    pub(super) key: String,
}

#[derive(Serialize)]
pub(super) struct ViewUpstreamTls {
    pub(super) ca: Option<String>,
}

#[derive(Serialize)]
pub(super) struct ViewStore {
    pub(super) engine: &'static str,
    /// Only the chosen engine's settings: the others would be rejected on read-back.
    pub(super) storage: ViewStorage,
    pub(super) key_prefix: String,
    pub(super) timeout: String,
    pub(super) on_error: &'static str,
}

#[derive(Serialize, Default)]
pub(super) struct ViewStorage {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(super) url: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(super) host: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(super) port: Option<u16>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(super) username: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(super) password: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(super) db_sessions: Option<i64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(super) db_notifications: Option<i64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(super) max_connections: Option<usize>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(super) tls: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(super) servers: Option<Vec<String>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(super) max_entries: Option<usize>,
}

#[derive(Serialize)]
pub(super) struct ViewSession {
    pub(super) ttl: String,
    pub(super) absolute_ttl: String,
    pub(super) max_size: String,
}

#[derive(Serialize)]
pub(super) struct ViewCookies {
    pub(super) name: String,
    pub(super) path: String,
    pub(super) domain: Option<String>,
    pub(super) secure: bool,
    pub(super) http_only: bool,
    pub(super) same_site: SameSite,
    /// `expires_days` is shown as its equivalent `max_age`.
    pub(super) max_age: Option<String>,
    pub(super) rolling: bool,
    pub(super) forward: bool,
}

#[derive(Serialize)]
pub(super) struct ViewHeaders {
    pub(super) prefix: String,
    pub(super) expose_id: bool,
}

#[derive(Serialize)]
pub(super) struct ViewTimeouts {
    pub(super) header_read: String,
    pub(super) upstream_connect: String,
    pub(super) upstream_response: String,
    pub(super) idle: String,
    pub(super) shutdown: String,
}

#[derive(Serialize)]
pub(super) struct ViewLimits {
    pub(super) max_header_size: String,
    pub(super) max_connections: usize,
    /// `null` when there is no per-address cap.
    pub(super) max_connections_per_ip: Option<usize>,
}

#[derive(Serialize)]
pub(super) struct ViewAdmin {
    pub(super) listen: Option<String>,
}

#[derive(Serialize)]
pub(super) struct ViewLog {
    pub(super) format: &'static str,
    pub(super) level: String,
}

pub(super) fn path_text(p: &Path) -> String {
    escape_vars(&p.to_string_lossy())
}

impl Config {
    /// The effective configuration as YAML, every key present with its default filled
    /// in, secrets (and the password of a Redis URL) replaced by `<redacted>`. Apart
    /// from the secrets, [`Config::from_yaml_str`] reads it back to the same config
    /// (literal `${` in values is written as `$${`).
    pub fn redacted_yaml(&self) -> String {
        let s = &self.store.storage;
        let storage = match self.store.engine {
            Engine::Memory => ViewStorage {
                max_entries: Some(s.max_entries),
                ..ViewStorage::default()
            },
            Engine::Memcached => ViewStorage {
                servers: Some(s.servers.iter().map(|v| escape_vars(v)).collect()),
                max_connections: Some(s.max_connections),
                ..ViewStorage::default()
            },
            Engine::Redis => {
                let url_db = s
                    .url
                    .as_ref()
                    .and_then(|u| parse_redis_url(&u.0).ok())
                    .and_then(|i| i.db);
                let url_tls = s
                    .url
                    .as_ref()
                    .and_then(|u| parse_redis_url(&u.0).ok())
                    .and_then(|i| i.tls);
                let has_url = s.url.is_some();
                ViewStorage {
                    url: s.url.as_ref().map(|u| escape_vars(&redact_url(&u.0))),
                    host: (!has_url).then(|| escape_vars(&s.host)),
                    port: (!has_url).then_some(s.port),
                    username: if has_url {
                        None
                    } else {
                        s.username.as_deref().map(escape_vars)
                    },
                    password: (!has_url && s.password.is_some()).then_some(REDACTED),
                    // Written only when the URL does not already carry the number.
                    db_sessions: url_db.is_none().then_some(s.db_sessions),
                    db_notifications: Some(s.db_notifications),
                    max_connections: Some(s.max_connections),
                    // A unix-socket URL has no TLS setting to show.
                    tls: (!has_url || url_tls.is_some()).then_some(s.tls),
                    ..ViewStorage::default()
                }
            }
        };
        let view = View {
            listen: self.listen.to_string(),
            tls: self.tls.as_ref().map(|t| ViewTls {
                cert: path_text(&t.cert),
                key: path_text(&t.key),
            }),
            upstream: match &self.upstream {
                Upstream::Tcp { https, authority } => format!(
                    "{}://{}",
                    if *https { "https" } else { "http" },
                    escape_vars(authority)
                ),
                Upstream::Unix(p) => format!("unix:{}", path_text(p)),
            },
            upstream_tls: self.upstream_tls.as_ref().map(|t| ViewUpstreamTls {
                ca: t.ca.as_deref().map(path_text),
            }),
            secrets: self.secrets.iter().map(|_| REDACTED).collect(),
            store: ViewStore {
                engine: engine_name(self.store.engine),
                storage,
                key_prefix: escape_vars(&self.store.key_prefix),
                timeout: format_duration(self.store.timeout),
                on_error: match self.store.on_error {
                    OnError::Reject => "reject",
                    OnError::Anonymous => "anonymous",
                },
            },
            session: ViewSession {
                ttl: format_duration(self.session.ttl),
                absolute_ttl: format_duration(self.session.absolute_ttl),
                max_size: format_size(self.session.max_size as u64),
            },
            cookies: ViewCookies {
                name: escape_vars(&self.cookies.name),
                path: escape_vars(&self.cookies.path),
                domain: self.cookies.domain.clone(),
                secure: self.cookies.secure,
                http_only: self.cookies.http_only,
                same_site: self.cookies.same_site,
                max_age: self.cookies.lifetime.map(format_duration),
                rolling: self.cookies.rolling,
                forward: self.cookies.forward,
            },
            headers: ViewHeaders {
                prefix: escape_vars(&self.headers.prefix),
                expose_id: self.headers.expose_id,
            },
            bypass: self.bypass.iter().map(|b| escape_vars(b)).collect(),
            trusted_proxies: self.trusted_proxies.iter().map(IpNet::to_string).collect(),
            timeouts: ViewTimeouts {
                header_read: format_duration(self.timeouts.header_read),
                upstream_connect: format_duration(self.timeouts.upstream_connect),
                upstream_response: format_duration(self.timeouts.upstream_response),
                idle: format_duration(self.timeouts.idle),
                shutdown: format_duration(self.timeouts.shutdown),
            },
            limits: ViewLimits {
                max_header_size: format_size(self.limits.max_header_size as u64),
                max_connections: self.limits.max_connections,
                max_connections_per_ip: self.limits.max_connections_per_ip,
            },
            admin: ViewAdmin {
                listen: self.admin.listen.map(|a| a.to_string()),
            },
            log: ViewLog {
                format: match self.log.format {
                    LogFormat::Text => "text",
                    LogFormat::Json => "json",
                },
                level: escape_vars(&self.log.level),
            },
        };
        // Serializing plain strings, numbers and bools cannot fail; should the
        // serializer still refuse, say so in a YAML comment rather than panic.
        serde_saphyr::to_string(&view)
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
    fn redacted_yaml_round_trips() {
        let redis_fields = format!(
            "{BASE}store:\n  engine: redis\n  storage: {{host: r, port: 1, username: u, password: p, tls: true}}\n"
        );
        let memcached =
            format!("{BASE}store: {{engine: memcached, storage: {{servers: [\"a:1\"]}}}}\n");
        let unix_url =
            format!("{BASE}store: {{engine: redis, storage: {{url: \"unix:///r.sock\"}}}}\n");
        for yaml in [
            RICH.to_owned(),
            BASE.to_owned(),
            redis_fields,
            memcached,
            unix_url,
        ] {
            let first = parse(&yaml)
                .unwrap_or_else(|e| panic!("{e}"))
                .redacted_yaml();
            // Secrets cannot come back; give the reader valid ones in their place.
            let again = first.replace("<redacted>", "${SESSION_SECRET}");
            let second = parse(&again)
                .unwrap_or_else(|e| panic!("re-reading:\n{first}\n{e}"))
                .redacted_yaml();
            assert_eq!(first, second);
        }
        let c = parse(RICH).unwrap_or_else(|e| panic!("{e}"));
        let back = parse(&c.redacted_yaml().replace("<redacted>", "${SESSION_SECRET}"))
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(back.bypass, c.bypass);
        assert_eq!(back.bypass[1], "/odd${x}");
        assert_eq!(back.store.storage.db_sessions, 4);
        assert_eq!(back.store.key_prefix, "s6380:");
        assert!(back.admin.listen.is_none());
        assert_eq!(back.cookies.lifetime, c.cookies.lifetime);
        assert_eq!(back.limits.max_connections, 500);
        assert_eq!(back.limits.max_connections_per_ip, None);
    }
}
