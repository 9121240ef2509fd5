//! One builder per section (the store's is in `store`), applying defaults and
//! checking every rule.

use std::time::Duration;

use serde_saphyr::{Location, Spanned};

use super::{raw::*, reader::*, types::*, values::*};
use crate::cookie::SameSite;

const WORKERS_HINT: &str =
    "`auto` (one per CPU, the default) or a number of workers, e.g. `workers: 2`";

impl Ctx<'_> {
    pub(super) fn build(&self, raw: RawConfig) -> Result<Config, ConfigError> {
        let listen = match &raw.listen {
            Some(v) => self.socket_addr(v, "listen")?,
            None => DEFAULT_LISTEN,
        };
        let workers = match &raw.workers {
            None => Workers::Auto,
            Some(v) if matches!(&v.value, Scalar::Str(s) if s == "auto") => Workers::Auto,
            Some(v) => Workers::Count(
                usize::try_from(self.int_with_hint(
                    v,
                    "workers",
                    1,
                    MAX_WORKERS as i128,
                    WORKERS_HINT,
                )?)
                .unwrap_or(1),
            ),
        };

        let tls = match &raw.tls {
            None => None,
            Some(t) => match (&t.value.cert, &t.value.key) {
                (None, None) => None,
                (Some(c), Some(k)) => Some(TlsConfig {
                    cert: self.file_path(c, "tls.cert")?,
                    key: self.file_path(k, "tls.key")?,
                }),
                (Some(_), None) | (None, Some(_)) => {
                    return Err(self.err(
                        &t.referenced,
                        "`tls` needs both `cert` and `key`",
                        Some("give both PEM files, or remove the `tls` section".to_owned()),
                    ));
                }
            },
        };

        let Some(up) = &raw.upstream else {
            return Err(self.err(
                &file_start(),
                "missing required key `upstream`",
                Some("add the address of the app, e.g. `upstream: http://127.0.0.1:8000`".into()),
            ));
        };
        let upstream_text = self.string(up, "upstream")?;
        let upstream = parse_upstream(&upstream_text)
            .map_err(|(m, h)| self.err(&up.referenced, format!("`upstream`: {m}"), Some(h)))?;
        let is_https = matches!(upstream, Upstream::Tcp { https: true, .. });

        let upstream_tls = match &raw.upstream_tls {
            Some(t) if !is_https && t.value.ca.is_some() => {
                return Err(self.err(
                    &t.referenced,
                    "`upstream_tls` applies only to an `https://` upstream",
                    Some("remove `upstream_tls`, or use `upstream: https://...`".to_owned()),
                ));
            }
            Some(t) if is_https => Some(UpstreamTls {
                ca: t
                    .value
                    .ca
                    .as_ref()
                    .map(|c| self.file_path(c, "upstream_tls.ca"))
                    .transpose()?,
            }),
            _ if is_https => Some(UpstreamTls { ca: None }),
            _ => None,
        };

        let secrets = self.secrets(&raw.secrets)?;
        let store = self.store(raw.store.as_ref())?;
        let session = self.session(raw.session.as_ref())?;
        if !store.cache.is_off() && session.touch_after.is_zero() {
            // Every refreshing load is due at once: the cache could answer no-touch
            // routes only, which is rarely what was meant.
            let at = raw
                .store
                .as_ref()
                .and_then(|s| s.value.cache.as_ref())
                .map_or(Location::UNKNOWN, |c| c.referenced);
            return Err(self.err(
                &at,
                "`store.cache` needs `session.touch_after` > 0",
                Some(
                    "with touch_after 0 every load refreshes the idle lifetime in Redis, so \
                     the cache could never answer it; set e.g. `session.touch_after: 1m` \
                     (loads within a minute of the last refresh are then answered from the \
                     cache), or remove `store.cache`"
                        .to_owned(),
                ),
            ));
        }
        let cookies = self.cookies(raw.cookies.as_ref())?;
        let headers = self.headers(raw.headers.as_ref())?;

        let bypass = self.path_prefixes(raw.bypass.as_ref(), "bypass")?;

        let mut trusted_proxies = Vec::new();
        for v in raw.trusted_proxies.iter().flat_map(|b| b.value.iter()) {
            let text = self.string(v, "trusted_proxies")?;
            let net = text.parse::<IpNet>().map_err(|why| {
                self.err(
                    &v.referenced,
                    format!("`trusted_proxies`: {}", sanitize(&why)),
                    Some("for example 10.0.0.0/8, 192.168.1.10 or fd00::/8".to_owned()),
                )
            })?;
            trusted_proxies.push(net);
        }

        let timeouts = self.timeouts(raw.timeouts.as_ref())?;

        let mut limits = Limits::default();
        if let Some(l) = raw.limits.as_ref().map(|l| &l.value) {
            if let Some(v) = &l.max_header_size {
                // hyper refuses a read buffer below 8 KiB.
                limits.max_header_size =
                    self.size(v, "limits.max_header_size", MAX_HEADER_SIZE_RANGE)?;
            }
            if let Some(v) = &l.max_connections {
                limits.max_connections =
                    self.connection_count(v, "limits.max_connections", MAX_CONNECTIONS_HINT)?;
            }
            match &l.max_connections_per_ip {
                Nullable::Absent => {}
                Nullable::Null => limits.max_connections_per_ip = None,
                Nullable::Value(v) => {
                    limits.max_connections_per_ip = Some(self.connection_count(
                        v,
                        "limits.max_connections_per_ip",
                        MAX_CONNECTIONS_PER_IP_HINT,
                    )?);
                }
            }
        }

        let admin_listen = match raw.admin.as_ref().map(|a| &a.value.listen) {
            None | Some(Nullable::Absent) => {
                let default = DEFAULT_ADMIN_LISTEN;
                if let Some(v) = &raw.listen
                    && listen == default
                {
                    return Err(self.err(
                        &v.referenced,
                        format!("`listen` is the default address of `admin.listen` ({DEFAULT_ADMIN_LISTEN})"),
                        Some(
                            "choose another port, or move the admin listener with `admin.listen`"
                                .into(),
                        ),
                    ));
                }
                Some(default)
            }
            Some(Nullable::Null) => None,
            Some(Nullable::Value(v)) => {
                let addr = self.socket_addr(v, "admin.listen")?;
                if addr == listen && addr.port() != 0 {
                    return Err(self.err(
                        &v.referenced,
                        "`admin.listen` is the same address as `listen`",
                        Some(
                            "give the admin listener its own port, or `null` to disable it".into(),
                        ),
                    ));
                }
                Some(addr)
            }
        };

        let log = self.log(raw.log.as_ref())?;

        Ok(Config {
            path: self.path.to_path_buf(),
            listen,
            workers,
            tls,
            upstream,
            upstream_tls,
            secrets,
            store,
            session,
            cookies,
            headers,
            bypass,
            trusted_proxies,
            timeouts,
            limits,
            admin: AdminConfig {
                listen: admin_listen,
                token: self.admin_token(raw.admin.as_ref())?,
            },
            log,
        })
    }

    /// `admin.token`: at least 32 bytes, like a cookie secret (it guards the power to
    /// list and revoke every session).
    fn admin_token(&self, raw: Option<&Spanned<RawAdmin>>) -> Result<Option<Secret>, ConfigError> {
        let Some(Nullable::Value(v)) = raw.map(|a| &a.value.token) else {
            return Ok(None);
        };
        if raw.is_some_and(|a| matches!(a.value.listen, Nullable::Null)) {
            return Err(self.err(
                &v.referenced,
                "`admin.token` is set but `admin.listen` is null: the session admin API would be unreachable",
                Some("give the admin listener an address, or remove `admin.token`".to_owned()),
            ));
        }
        let token = self.string(v, "admin.token")?;
        if token.len() < 32 || token.bytes().any(|b| !(0x21..0x7f).contains(&b)) {
            return Err(self.err(
                &v.referenced,
                format!(
                    "`admin.token` must be at least 32 printable ASCII characters without \
                     spaces ({} bytes given)",
                    token.len()
                ),
                Some("generate one with `openssl rand -hex 32`, or use ${ENV_VAR}".to_owned()),
            ));
        }
        Ok(Some(Secret(token)))
    }

    pub(super) fn secrets(
        &self,
        raw: &Option<Spanned<Vec<Str>>>,
    ) -> Result<Vec<Secret>, ConfigError> {
        let list = match raw {
            None => {
                return Err(self.err(
                    &file_start(),
                    "missing required key `secrets`",
                    Some(GEN_SECRET_HINT.to_owned()),
                ));
            }
            Some(l) if l.value.is_empty() => {
                return Err(self.err(
                    &l.referenced,
                    "`secrets` needs at least one secret",
                    Some(GEN_SECRET_HINT.to_owned()),
                ));
            }
            Some(l) => l,
        };
        let mut out = Vec::with_capacity(list.value.len());
        for (i, v) in list.value.iter().enumerate() {
            let s = self.string(v, "secrets")?;
            if s.len() < 32 {
                // The length is not a useful leak; the value itself is never shown.
                return Err(self.err(
                    &v.referenced,
                    format!(
                        "`secrets[{i}]` is {} bytes long; each secret needs at least 32",
                        s.len()
                    ),
                    Some(GEN_SECRET_HINT.to_owned()),
                ));
            }
            out.push(Secret(s));
        }
        Ok(out)
    }

    pub(super) fn session(
        &self,
        raw: Option<&Spanned<RawSession>>,
    ) -> Result<SessionConfig, ConfigError> {
        let mut s = SessionConfig::default();
        let Some(raw) = raw.map(|r| &r.value) else {
            return Ok(s);
        };
        if let Some(v) = &raw.ttl {
            s.ttl = self.duration(v, "session.ttl", false)?;
        }
        if let Some(v) = &raw.absolute_ttl {
            s.absolute_ttl = self.duration(v, "session.absolute_ttl", false)?;
        }
        if s.absolute_ttl < s.ttl {
            let at = raw
                .absolute_ttl
                .as_ref()
                .or(raw.ttl.as_ref())
                .map_or(Location::UNKNOWN, |v| v.referenced);
            return Err(self.err(
                &at,
                format!(
                    "`session.absolute_ttl` ({}) is shorter than `session.ttl` ({})",
                    format_duration(s.absolute_ttl),
                    format_duration(s.ttl)
                ),
                Some("the absolute lifetime must be at least the idle lifetime".to_owned()),
            ));
        }
        if let Some(v) = &raw.max_size {
            s.max_size = self.size(v, "session.max_size", SESSION_MAX_SIZE_RANGE)?;
        }
        if let Some(v) = &raw.touch_after {
            s.touch_after = self.duration(v, "session.touch_after", true)?;
            if s.touch_after >= s.ttl {
                return Err(self.err(
                    &v.referenced,
                    format!(
                        "`session.touch_after` ({}) is not shorter than `session.ttl` ({})",
                        format_duration(s.touch_after),
                        format_duration(s.ttl)
                    ),
                    Some(
                        "a session idle for `ttl` must still be refreshed by its next use: \
                         keep touch_after well below ttl, e.g. a tenth of it"
                            .to_owned(),
                    ),
                ));
            }
        }
        s.no_touch = self.path_prefixes(raw.no_touch.as_ref(), "session.no_touch")?;
        match &raw.max_per_owner {
            Nullable::Absent | Nullable::Null => {}
            Nullable::Value(v) => {
                s.max_per_owner = Some(self.int_with_hint(
                    v,
                    "session.max_per_owner",
                    1,
                    i128::from(MAX_PER_OWNER),
                    "the most live sessions one owner may have, or null for no limit",
                )? as u32);
            }
        }
        if let Some(v) = &raw.record_client {
            s.record_client = self.bool(v, "session.record_client")?;
        }
        Ok(s)
    }

    /// A list of path prefixes (`bypass`, `session.no_touch`): each starts with `/`.
    pub(super) fn path_prefixes(
        &self,
        raw: Option<&Spanned<Vec<Str>>>,
        key: &str,
    ) -> Result<Vec<String>, ConfigError> {
        let mut out = Vec::new();
        for v in raw.iter().flat_map(|b| b.value.iter()) {
            let p = self.string(v, key)?;
            if !p.starts_with('/') || p.chars().any(|c| c.is_control() || c.is_whitespace()) {
                return Err(self.err(
                    &v.referenced,
                    format!("`{key}`: {:?} is not a path prefix", sanitize(&p)),
                    Some("each entry starts with `/`, e.g. `/static/`".to_owned()),
                ));
            }
            out.push(p);
        }
        Ok(out)
    }

    pub(super) fn cookies(
        &self,
        raw: Option<&Spanned<RawCookies>>,
    ) -> Result<CookieConfig, ConfigError> {
        let mut c = CookieConfig::default();
        let Some(section) = raw else {
            return Ok(c);
        };
        let raw = &section.value;
        if let Some(v) = &raw.name {
            let n = self.string(v, "cookies.name")?;
            if !is_token(&n) {
                return Err(self.err(
                    &v.referenced,
                    format!(
                        "`cookies.name`: {:?} is not a valid cookie name",
                        sanitize(&n)
                    ),
                    Some(
                        "use letters, digits and !#$%&'*+-.^_`|~ only (no spaces, `=`, `;`, \
                         quotes or brackets)"
                            .to_owned(),
                    ),
                ));
            }
            c.name = n;
        }
        if let Some(v) = &raw.path {
            let p = self.string(v, "cookies.path")?;
            if !p.starts_with('/') || p.chars().any(|ch| ch == ';' || !(' '..='~').contains(&ch)) {
                return Err(self.err(
                    &v.referenced,
                    format!(
                        "`cookies.path`: {:?} is not a valid cookie path",
                        sanitize(&p)
                    ),
                    Some("start with `/`; no `;`, control or non-ASCII characters".to_owned()),
                ));
            }
            c.path = p;
        }
        if let Some(v) = &raw.domain {
            let d = self.string(v, "cookies.domain")?;
            if !is_domain(&d) {
                return Err(self.err(
                    &v.referenced,
                    format!("`cookies.domain`: {:?} is not a domain name", sanitize(&d)),
                    Some("for example example.com (no scheme, port or path)".to_owned()),
                ));
            }
            c.domain = Some(d);
        }
        if let Some(v) = &raw.secure {
            c.secure = self.bool(v, "cookies.secure")?;
        }
        if let Some(v) = &raw.http_only {
            c.http_only = self.bool(v, "cookies.http_only")?;
        }
        if let Some(v) = &raw.same_site {
            c.same_site = self.choice(
                v,
                "cookies.same_site",
                &[
                    ("lax", SameSite::Lax),
                    ("strict", SameSite::Strict),
                    ("none", SameSite::None),
                ],
            )?;
            if c.same_site == SameSite::None && !c.secure {
                return Err(self.err(
                    &v.referenced,
                    "`cookies.same_site: none` requires `cookies.secure: true`",
                    Some("browsers drop SameSite=None cookies that are not Secure".to_owned()),
                ));
            }
        }
        match (&raw.expires_days, &raw.max_age) {
            (Some(_), Some(m)) => {
                return Err(self.err(
                    &m.referenced,
                    "`cookies.expires_days` and `cookies.max_age` are alternatives",
                    Some("keep only one of them".to_owned()),
                ));
            }
            (Some(v), None) => {
                let days = self.int(v, "cookies.expires_days", 1, MAX_EXPIRES_DAYS)?;
                c.lifetime = Some(Duration::from_secs(days as u64 * 86_400));
            }
            (None, Some(v)) => c.lifetime = Some(self.duration(v, "cookies.max_age", false)?),
            (None, None) => {}
        }
        if let Some(v) = &raw.rolling {
            c.rolling = self.bool(v, "cookies.rolling")?;
        }
        if let Some(v) = &raw.forward {
            c.forward = self.bool(v, "cookies.forward")?;
        }

        // Cookie prefixes (RFC 6265bis §4.1.3): browsers reject a prefixed cookie that
        // breaks the rules, so the sidecar would silently never get its session back.
        let lower = c.name.to_ascii_lowercase();
        let at = raw
            .name
            .as_ref()
            .map_or(section.referenced, |v| v.referenced);
        if lower.starts_with("__host-") && (!c.secure || c.path != "/" || c.domain.is_some()) {
            return Err(self.err(
                &at,
                "a `__Host-` cookie requires `secure: true`, `path: /` and no `domain`",
                Some("fix those settings, or choose a name without the prefix".to_owned()),
            ));
        }
        if lower.starts_with("__secure-") && !c.secure {
            return Err(self.err(
                &at,
                "a `__Secure-` cookie requires `secure: true`",
                Some("set `cookies.secure: true`, or choose a name without the prefix".into()),
            ));
        }
        Ok(c)
    }

    pub(super) fn headers(
        &self,
        raw: Option<&Spanned<RawHeaders>>,
    ) -> Result<HeadersConfig, ConfigError> {
        let mut h = HeadersConfig::default();
        let Some(raw) = raw.map(|r| &r.value) else {
            return Ok(h);
        };
        if let Some(v) = &raw.prefix {
            let p = self.string(v, "headers.prefix")?;
            if !is_token(&p) || p.ends_with('-') {
                return Err(self.err(
                    &v.referenced,
                    format!(
                        "`headers.prefix`: {:?} is not a header-name prefix",
                        sanitize(&p)
                    ),
                    Some(
                        "use a header-name token without a trailing `-`, e.g. X-Session".to_owned(),
                    ),
                ));
            }
            h.prefix = p;
        }
        if let Some(v) = &raw.expose_id {
            h.expose_id = self.bool(v, "headers.expose_id")?;
        }
        Ok(h)
    }

    pub(super) fn timeouts(
        &self,
        raw: Option<&Spanned<RawTimeouts>>,
    ) -> Result<Timeouts, ConfigError> {
        let mut t = Timeouts::default();
        let Some(raw) = raw.map(|r| &r.value) else {
            return Ok(t);
        };
        for (v, key, slot) in [
            (&raw.header_read, "timeouts.header_read", &mut t.header_read),
            (&raw.body_read, "timeouts.body_read", &mut t.body_read),
            (
                &raw.upstream_connect,
                "timeouts.upstream_connect",
                &mut t.upstream_connect,
            ),
            (
                &raw.upstream_response,
                "timeouts.upstream_response",
                &mut t.upstream_response,
            ),
            (&raw.idle, "timeouts.idle", &mut t.idle),
        ] {
            if let Some(v) = v {
                *slot = self.duration(v, key, false)?;
            }
        }
        // Zero is meaningful here: stop at once without draining.
        if let Some(v) = &raw.shutdown {
            t.shutdown = self.duration(v, "timeouts.shutdown", true)?;
        }
        Ok(t)
    }

    pub(super) fn log(&self, raw: Option<&Spanned<RawLog>>) -> Result<LogConfig, ConfigError> {
        let mut l = LogConfig::default();
        let Some(raw) = raw.map(|r| &r.value) else {
            return Ok(l);
        };
        if let Some(v) = &raw.format {
            l.format = self.choice(
                v,
                "log.format",
                &[("text", LogFormat::Text), ("json", LogFormat::Json)],
            )?;
        }
        if let Some(v) = &raw.level {
            let level = self.string(v, "log.level")?;
            if level.trim().is_empty() || tracing_subscriber::EnvFilter::try_new(&level).is_err() {
                return Err(self.err(
                    &v.referenced,
                    format!("`log.level`: {:?} is not a log filter", sanitize(&level)),
                    Some(
                        "one of error, warn, info, debug, trace, or directives like \
                         `info,session_sidecar=debug`"
                            .to_owned(),
                    ),
                ));
            }
            l.level = level;
        }
        if let Some(v) = &raw.owner {
            l.owner = self.bool(v, "log.owner")?;
        }
        Ok(l)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::testutil::*;

    #[test]
    fn owner_and_touch_keys() {
        let c = ok(
            "session:\n  touch_after: 5m\n  no_touch: [/poll, /api/status]\n  \
                    max_per_owner: 3\n  record_client: true\nlog: {owner: true}\n",
        );
        assert_eq!(c.session.touch_after, Duration::from_secs(300));
        assert_eq!(c.session.no_touch, vec!["/poll", "/api/status"]);
        assert_eq!(c.session.max_per_owner, Some(3));
        assert!(c.session.record_client && c.log.owner);
        let d = ok("");
        assert_eq!(d.session.touch_after, Duration::ZERO);
        assert!(d.session.no_touch.is_empty() && d.session.max_per_owner.is_none());
        assert!(!d.session.record_client && !d.log.owner && d.admin.token.is_none());
        assert!(
            ok("session: {max_per_owner: null}\n")
                .session
                .max_per_owner
                .is_none()
        );
        assert_err(
            "session: {ttl: 1h, touch_after: 1h}\n",
            3,
            33,
            "not shorter than `session.ttl`",
        );
        assert_err(
            "session: {max_per_owner: 0}\n",
            3,
            26,
            "session.max_per_owner",
        );
        assert_err(
            "session: {max_per_owner: 10001}\n",
            3,
            26,
            "between 1 and 10000",
        );
        assert_err("session: {no_touch: [poll]}\n", 3, 22, "not a path prefix");
        assert_err("log: {owner: maybe}\n", 3, 14, "log.owner");
    }

    #[test]
    fn admin_token_rules() {
        let c = ok("admin: {token: \"0123456789abcdef0123456789abcdef\"}\n");
        assert_eq!(
            c.admin.token.as_ref().map(|t| t.0.as_str()),
            Some("0123456789abcdef0123456789abcdef")
        );
        assert!(ok("admin: {token: null}\n").admin.token.is_none());
        assert_err(
            "admin: {listen: null, token: \"0123456789abcdef0123456789abcdef\"}\n",
            3,
            30,
            "would be unreachable",
        );
        let e = assert_err("admin: {token: short}\n", 3, 16, "at least 32");
        assert!(!e.to_string().contains("short"), "{e}");
        assert_err(
            "admin: {token: \"0123456789abcdef 0123456789abcdef\"}\n",
            3,
            16,
            "without spaces",
        );
    }

    #[test]
    fn upstream_is_required_and_validated() {
        let e = parse("secrets: [\"${SESSION_SECRET}\"]\n").expect_err("missing upstream");
        assert_eq!(e.position(), Some((1, 1)));
        assert!(e.message().contains("`upstream`"));
        let up = |u: &str| {
            parse(&format!(
                "upstream: {u}\nsecrets: [\"${{SESSION_SECRET}}\"]\n"
            ))
        };
        let tcp = |https: bool, a: &str| Upstream::Tcp {
            https,
            authority: a.into(),
        };
        for (input, want) in [
            ("http://app", tcp(false, "app:80")),
            ("https://app", tcp(true, "app:443")),
            ("http://app:8000/", tcp(false, "app:8000")),
            ("HTTP://10.0.0.1:81", tcp(false, "10.0.0.1:81")),
            ("http://[::1]:8000", tcp(false, "[::1]:8000")),
            ("unix:/run/app.sock", Upstream::Unix("/run/app.sock".into())),
        ] {
            let c = up(input).unwrap_or_else(|e| panic!("{input}: {e}"));
            assert_eq!(c.upstream, want, "{input}");
        }
        assert!(up("https://app").unwrap().upstream_tls.is_some());
        for bad in [
            "http://app/api",
            "http://app?x=1",
            "http://app#f",
            "ftp://app",
            "app:8000",
            "http://",
            "http://user:pw@app",
            "http://app:0",
            "http://app:70000",
            "http://app:x",
            "http://::1:80",
            "http://a b",
            "unix:run/app.sock",
            "unix://run/app.sock",
        ] {
            let e = up(bad).expect_err(bad);
            assert_eq!(e.position(), Some((1, 11)), "{bad}: {e}");
            assert!(e.hint().is_some(), "{bad}");
        }
    }

    #[test]
    fn upstream_tls_only_for_https() {
        assert_err("upstream_tls: {ca: ca.pem}\n", 3, 15, "https");
        let c = parse(
            "upstream: https://app\nsecrets: [\"${SESSION_SECRET}\"]\nupstream_tls: {ca: ca.pem}\n",
        )
        .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(
            c.upstream_tls,
            Some(UpstreamTls {
                ca: Some("conf/ca.pem".into())
            })
        );
    }

    #[test]
    fn secrets_rules() {
        let missing = parse("upstream: http://a\n").expect_err("missing");
        assert_eq!(missing.position(), Some((1, 1)));
        assert!(missing.hint().unwrap_or_default().contains("gen-secret"));
        let e = parse("upstream: http://a\nsecrets: []\n").expect_err("empty");
        assert_eq!(e.position(), Some((2, 10)));
        assert!(e.hint().unwrap_or_default().contains("gen-secret"));
        let e = parse("upstream: http://a\nsecrets:\n  - \"${SESSION_SECRET}\"\n  - short\n")
            .expect_err("short");
        assert_eq!(e.position(), Some((4, 5)));
        assert!(e.message().contains("secrets[1]"), "{e}");
        assert!(
            !e.to_string().contains("short"),
            "value must not be echoed: {e}"
        );
        assert!(
            e.hint()
                .unwrap_or_default()
                .contains("session-sidecar gen-secret")
        );
        let e = parse("upstream: http://a\nsecrets: [\"${EMPTY}\"]\n").expect_err("empty var");
        assert!(e.message().contains("0 bytes"), "{e}");
        let c = parse("upstream: http://a\nsecrets: [\"${SESSION_SECRET}\", \"${OLD_SECRET}\"]\n")
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(c.secrets.len(), 2);
        assert!(!format!("{c:?}").contains(SECRET_VALUE), "Debug leaks");
    }

    #[test]
    fn duration_and_size_keys() {
        let c = ok("session: {ttl: 3600, absolute_ttl: 2h, max_size: 64}\nstore: {timeout: 1s}\n");
        assert_eq!(c.session.ttl, Duration::from_secs(3600));
        assert_eq!(c.session.max_size, 64);
        assert_eq!(c.store.timeout, Duration::from_secs(1));
        assert_err("store: {timeout: 0s}\n", 3, 18, "greater than zero");
        assert_err("store: {timeout: 0}\n", 3, 18, "greater than zero");
        assert_err("store: {timeout: 1.5}\n", 3, 18, "must be a duration");
        assert_err("store: {timeout: true}\n", 3, 18, "must be a duration");
        assert_err("session: {max_size: 63}\n", 3, 21, "between 64B and 1MiB");
        assert_err("session: {max_size: 2MiB}\n", 3, 21, "between");
        assert_err("session: {max_size: big}\n", 3, 21, "not a size");
        assert_err(
            "session: {ttl: 2d, absolute_ttl: 1d}\n",
            3,
            34,
            "shorter than `session.ttl`",
        );
        assert_err("session: {ttl: 31d}\n", 3, 16, "shorter");
    }

    #[test]
    fn timeouts_and_limits() {
        let c = ok(
            "timeouts: {header_read: 2s, body_read: 45s, upstream_connect: 1s, upstream_response: 5m, idle: 90, shutdown: 0s}\n",
        );
        assert_eq!(c.timeouts.header_read, Duration::from_secs(2));
        assert_eq!(c.timeouts.body_read, Duration::from_secs(45));
        assert_eq!(c.timeouts.upstream_response, Duration::from_secs(300));
        assert_eq!(c.timeouts.idle, Duration::from_secs(90));
        assert_eq!(c.timeouts.shutdown, Duration::ZERO);
        for key in [
            "header_read",
            "body_read",
            "upstream_connect",
            "upstream_response",
            "idle",
        ] {
            let e = err(&format!("timeouts: {{{key}: 0ms}}\n"));
            assert!(e.message().contains(&format!("timeouts.{key}")), "{e}");
        }
        assert_eq!(
            ok("limits: {max_header_size: 8KiB}\n")
                .limits
                .max_header_size,
            8192
        );
        assert_err("limits: {max_header_size: 4KiB}\n", 3, 27, "between 8KiB");
    }

    #[test]
    fn connection_limits_default_and_explicit() {
        let l = ok("limits: {}\n").limits;
        assert_eq!(
            (l.max_connections, l.max_connections_per_ip),
            (10_000, Some(1024))
        );
        let l = ok("limits:\n  max_connections: 500\n  max_connections_per_ip: 20\n").limits;
        assert_eq!(
            (l.max_connections, l.max_connections_per_ip),
            (500, Some(20))
        );
        // The extremes of the range are accepted.
        let l = ok("limits: {max_connections: 1, max_connections_per_ip: 1000000}\n").limits;
        assert_eq!(
            (l.max_connections, l.max_connections_per_ip),
            (1, Some(1_000_000))
        );
        // `null` lifts the per-address cap (`~` is YAML's other spelling of null) and
        // leaves the global one alone.
        for null in ["null", "~"] {
            let l = ok(&format!("limits: {{max_connections_per_ip: {null}}}\n")).limits;
            assert_eq!(
                (l.max_connections, l.max_connections_per_ip),
                (10_000, None)
            );
        }
        // The per-address cap may exceed the global one (it then never binds).
        let l = ok("limits: {max_connections: 10, max_connections_per_ip: 100}\n").limits;
        assert_eq!(
            (l.max_connections, l.max_connections_per_ip),
            (10, Some(100))
        );
        // `${VAR}` works as for every numeric key.
        assert_eq!(
            ok("limits: {max_connections: \"${PORT}\"}\n")
                .limits
                .max_connections,
            6380
        );
    }

    #[test]
    fn connection_limits_reject_zero_negative_and_non_integers() {
        let e = assert_err(
            "limits: {max_connections: 0}\n",
            3,
            27,
            "`limits.max_connections` must be between 1 and 1000000, found 0",
        );
        assert!(
            e.hint().unwrap_or_default().contains("from 1 to 1000000"),
            "{e}"
        );
        assert!(e.to_string().starts_with("conf/t.yaml:3:27: "), "{e}");
        assert_err(
            "limits:\n  max_connections: -5\n",
            4,
            20,
            "must be between 1 and 1000000, found -5",
        );
        assert_err(
            "limits: {max_connections: 1000001}\n",
            3,
            27,
            "found 1000001",
        );
        let e = assert_err(
            "limits: {max_connections: many}\n",
            3,
            27,
            "`limits.max_connections` must be an integer",
        );
        assert!(
            e.hint()
                .unwrap_or_default()
                .contains("max_connections: 10000"),
            "{e}"
        );
        assert_err(
            "limits: {max_connections: 2.5}\n",
            3,
            27,
            "must be an integer",
        );
        assert_err(
            "limits: {max_connections: true}\n",
            3,
            27,
            "must be an integer",
        );
        let e = assert_err(
            "limits: {max_connections_per_ip: 0}\n",
            3,
            34,
            "`limits.max_connections_per_ip` must be between 1 and 1000000, found 0",
        );
        let hint = e.hint().unwrap_or_default();
        assert!(
            hint.contains("`null`") && hint.contains("load balancer"),
            "{hint}"
        );
        assert_err("limits:\n  max_connections_per_ip: -1\n", 4, 27, "found -1");
        assert_err(
            "limits: {max_connections_per_ip: \"none\"}\n",
            3,
            34,
            "`limits.max_connections_per_ip` must be an integer",
        );
        assert_err(
            "limits: {max_connections_per_ip: [1]}\n",
            3,
            34,
            "found a list",
        );
    }

    #[test]
    fn workers() {
        assert_eq!(ok("").workers, Workers::Auto);
        assert!(Workers::Auto.count() >= 1);
        assert_eq!(ok("workers: auto\n").workers, Workers::Auto);
        assert_eq!(ok("workers: 3\n").workers, Workers::Count(3));
        assert_eq!(ok("workers: \"2\"\n").workers.count(), 2);
        for bad in ["0", "1025", "many", "-1", "1.5"] {
            let e = assert_err(&format!("workers: {bad}\n"), 3, 10, "`workers`");
            assert!(e.hint().unwrap_or_default().contains("auto"), "{e}");
        }
        let printed = ok("workers: 3\n").redacted_yaml();
        assert!(printed.contains("\nworkers: 3\n"), "{printed}");
        assert!(ok("").redacted_yaml().contains("\nworkers: auto\n"));
    }

    #[test]
    fn listen_and_admin() {
        let c = ok("listen: \"[::]:80\"\nadmin:\n  listen: null\n");
        assert_eq!(c.listen, "[::]:80".parse().unwrap());
        assert!(c.admin.listen.is_none());
        assert_eq!(ok("admin: {}\n").admin.listen.map(|a| a.port()), Some(9090));
        assert_eq!(
            ok("admin: {listen: 0.0.0.0:9100}\n")
                .admin
                .listen
                .map(|a| a.port()),
            Some(9100)
        );
        let e = assert_err("listen: localhost:80\n", 3, 9, "not an IP address and port");
        assert!(e.hint().unwrap_or_default().contains("127.0.0.1:8080"));
        // The default admin address counts too: both listeners cannot bind it.
        let e = assert_err("listen: 127.0.0.1:9090\n", 3, 9, "`admin.listen`");
        assert!(e.hint().unwrap_or_default().contains("admin"));
    }

    #[test]
    fn admin_listen_must_differ_from_listen() {
        assert_err(
            "listen: 127.0.0.1:7000\nadmin: {listen: 127.0.0.1:7000}\n",
            4,
            17,
            "same address",
        );
    }

    #[test]
    fn cookie_rules() {
        let c = ok(
            "cookies:\n  name: sid\n  path: /app\n  domain: example.com\n  same_site: Strict\n  \
             expires_days: 120\n  rolling: true\n  forward: true\n  http_only: false\n",
        );
        let k = &c.cookies;
        assert_eq!((k.name.as_str(), k.path.as_str()), ("sid", "/app"));
        assert_eq!(k.domain.as_deref(), Some("example.com"));
        assert_eq!(k.same_site, SameSite::Strict);
        assert_eq!(k.lifetime, Some(Duration::from_secs(120 * 86_400)));
        assert!(k.rolling && k.forward && !k.http_only);
        assert_eq!(
            ok("cookies: {max_age: 2h}\n").cookies.lifetime,
            Some(Duration::from_secs(7200))
        );

        for bad in ["\"a b\"", "a=b", "\"a;b\"", "\"\"", "\"(x)\""] {
            let e = err(&format!("cookies: {{name: {bad}}}\n"));
            assert!(e.message().contains("cookies.name"), "{bad}: {e}");
        }
        assert_err("cookies: {path: app}\n", 3, 17, "cookies.path");
        assert_err("cookies: {path: \"/a;b\"}\n", 3, 17, "cookies.path");
        assert_err("cookies: {path: \"/a\\tb\"}\n", 3, 17, "cookies.path");
        for bad in [
            "\"https://example.com\"",
            "\"example.com:80\"",
            "\"a..b\"",
            "\"-a.com\"",
            "\"a b\"",
        ] {
            let e = err(&format!("cookies: {{domain: {bad}}}\n"));
            assert!(e.message().contains("cookies.domain"), "{bad}: {e}");
        }
        let e = assert_err(
            "cookies: {secure: false, same_site: none}\n",
            3,
            37,
            "requires `cookies.secure: true`",
        );
        assert!(e.hint().is_some());
        assert!(
            parse(&format!(
                "{BASE}cookies: {{secure: false, same_site: lax}}\n"
            ))
            .is_ok()
        );
        assert_err(
            "cookies: {expires_days: 1, max_age: 1d}\n",
            3,
            37,
            "alternatives",
        );
        assert_err("cookies: {expires_days: 0}\n", 3, 25, "between 1");
        assert_err("cookies: {expires_days: 1d}\n", 3, 25, "integer");
        assert_err("cookies: {max_age: 0s}\n", 3, 20, "greater than zero");
        assert_err("cookies: {secure: yes please}\n", 3, 19, "true or false");
    }

    #[test]
    fn cookie_prefix_rules() {
        assert!(parse(&format!("{BASE}cookies: {{name: __Host-sid}}\n")).is_ok());
        for bad in [
            "{name: __Host-sid, secure: false}",
            "{name: __Host-sid, path: /app}",
            "{name: __host-sid, domain: example.com}",
        ] {
            let e = err(&format!("cookies: {bad}\n"));
            assert!(e.message().contains("__Host-"), "{bad}: {e}");
            assert_eq!(e.position(), Some((3, 17)), "{bad}");
        }
        assert!(
            parse(&format!(
                "{BASE}cookies: {{name: __Secure-sid, domain: example.com}}\n"
            ))
            .is_ok()
        );
        assert_err(
            "cookies: {name: __Secure-sid, secure: false}\n",
            3,
            17,
            "__Secure-",
        );
    }

    #[test]
    fn headers_bypass_proxies_log() {
        let c = ok("headers: {prefix: X-App-Session, expose_id: true}\n");
        assert_eq!(c.headers.prefix, "X-App-Session");
        assert!(c.headers.expose_id);
        for bad in ["\"X Session\"", "\"X-Session-\"", "\"X:S\"", "\"\""] {
            let e = err(&format!("headers: {{prefix: {bad}}}\n"));
            assert!(e.message().contains("headers.prefix"), "{bad}: {e}");
        }
        assert_err("bypass: [/static/, static/]\n", 3, 20, "not a path prefix");

        let c = ok("trusted_proxies: [10.0.0.0/8, 192.168.1.7, \"::1\", \"fd00::/8\"]\n");
        assert_eq!(
            c.trusted_proxies
                .iter()
                .map(IpNet::to_string)
                .collect::<Vec<_>>(),
            ["10.0.0.0/8", "192.168.1.7/32", "::1/128", "fd00::/8"]
        );
        assert!(c.trusted_proxies[0].contains("10.1.2.3".parse().unwrap()));
        assert_err("trusted_proxies: [10.0.0.0/33]\n", 3, 19, "prefix length");
        assert_err("trusted_proxies: [\"::/129\"]\n", 3, 19, "prefix length");
        assert_err("trusted_proxies: [example.com]\n", 3, 19, "not an IP");
        assert_err("trusted_proxies: [10.0.0.0/+8]\n", 3, 19, "prefix length");

        let c = ok("log: {format: json, level: \"info,session_sidecar=debug\"}\n");
        assert_eq!(c.log.format, LogFormat::Json);
        assert_eq!(c.log.level, "info,session_sidecar=debug");
        assert_err("log: {format: xml}\n", 3, 15, "log.format");
        assert_err("log: {level: \"info,[\"}\n", 3, 14, "not a log filter");
    }

    #[test]
    fn tls_needs_both_files() {
        let c = ok("tls:\n  cert: /c.pem\n  key: k.pem\n");
        let tls = c.tls.expect("tls");
        assert_eq!(tls.cert, PathBuf::from("/c.pem"));
        assert_eq!(tls.key, PathBuf::from("conf/k.pem"));
        assert_err("tls:\n  cert: /c.pem\n", 4, 3, "needs both");
        assert!(ok("tls: {}\n").tls.is_none());
    }
}
