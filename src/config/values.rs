//! Pure parsers and printers of value syntax: durations, sizes, hosts and ports,
//! the upstream, Redis URLs.

use std::{net::Ipv6Addr, path::PathBuf, time::Duration};

use super::{reader::sanitize, types::Upstream};

/// Upper bound of every duration, so `Instant + d` and TTL arithmetic cannot overflow.
pub(super) const MAX_DURATION: Duration = Duration::from_secs(3650 * 86_400);

/// `500ms`, `10s`, `5m`, `2h`, `1d`, or bare seconds.
pub(super) fn parse_duration(s: &str) -> Result<Duration, String> {
    let digits = s.bytes().take_while(u8::is_ascii_digit).count();
    let (num, unit) = s.split_at(digits);
    let bad = || format!("{:?} is not a duration", sanitize(s));
    if num.is_empty() {
        return Err(bad());
    }
    let n: u64 = num.parse().map_err(|_| bad())?;
    let ms_per_unit: u64 = match unit {
        "ms" => 1,
        "" | "s" => 1_000,
        "m" => 60_000,
        "h" => 3_600_000,
        "d" => 86_400_000,
        _ => return Err(bad()),
    };
    let d = n
        .checked_mul(ms_per_unit)
        .map(Duration::from_millis)
        .filter(|d| *d <= MAX_DURATION)
        .ok_or_else(|| format!("{:?} is longer than the maximum of 3650d", sanitize(s)))?;
    Ok(d)
}

/// `512B`, `8KB`, `8KiB`, `1MB`, `1MiB`, `1GB`, `1GiB`, or bare bytes.
pub(super) fn parse_size(s: &str) -> Result<u64, String> {
    let digits = s.bytes().take_while(u8::is_ascii_digit).count();
    let (num, unit) = s.split_at(digits);
    let bad = || format!("{:?} is not a size", sanitize(s));
    if num.is_empty() {
        return Err(bad());
    }
    let n: u64 = num.parse().map_err(|_| bad())?;
    let mult: u64 = match unit.to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "kb" => 1_000,
        "kib" => 1 << 10,
        "mb" => 1_000_000,
        "mib" => 1 << 20,
        "gb" => 1_000_000_000,
        "gib" => 1 << 30,
        _ => return Err(bad()),
    };
    n.checked_mul(mult)
        .ok_or_else(|| format!("{:?} is too large", sanitize(s)))
}

/// The shortest exact spelling in the config syntax.
pub(super) fn format_duration(d: Duration) -> String {
    let ms = d.as_millis();
    if ms == 0 {
        return "0s".to_owned();
    }
    for (unit, per) in [
        ("d", 86_400_000),
        ("h", 3_600_000),
        ("m", 60_000),
        ("s", 1_000),
    ] {
        if ms.is_multiple_of(per) {
            return format!("{}{unit}", ms / per);
        }
    }
    format!("{ms}ms")
}

pub(super) fn format_size(n: u64) -> String {
    if n > 0 && n.is_multiple_of(1 << 20) {
        format!("{}MiB", n >> 20)
    } else if n > 0 && n.is_multiple_of(1 << 10) {
        format!("{}KiB", n >> 10)
    } else {
        format!("{n}B")
    }
}

/// RFC 9110 `token` (= RFC 6265 cookie-name).
pub(super) fn is_token(s: &str) -> bool {
    !s.is_empty()
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b))
}

pub(super) fn is_domain(s: &str) -> bool {
    let s = s.strip_prefix('.').unwrap_or(s);
    !s.is_empty()
        && s.len() <= 253
        && s.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && !label.starts_with('-')
                && !label.ends_with('-')
                && label
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-')
        })
}

pub(super) fn is_host(s: &str) -> bool {
    if let Some(inner) = s.strip_prefix('[').and_then(|r| r.strip_suffix(']')) {
        return inner.parse::<Ipv6Addr>().is_ok();
    }
    !s.is_empty()
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'.' || b == b'-' || b == b'_')
}

/// Splits `host[:port]` (IPv6 in brackets).
pub(super) fn split_host_port(s: &str) -> Option<(&str, Option<&str>)> {
    if s.starts_with('[') {
        let end = s.find(']')?;
        let (host, rest) = s.split_at(end + 1);
        match rest {
            "" => Some((host, None)),
            _ => rest.strip_prefix(':').map(|p| (host, Some(p))),
        }
    } else {
        match s.split_once(':') {
            Some((h, p)) if !p.contains(':') => Some((h, Some(p))),
            Some(_) => None,
            None => Some((s, None)),
        }
    }
}

pub(super) fn parse_port(p: &str) -> Option<u16> {
    if p.is_empty() || !p.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    p.parse::<u16>().ok().filter(|p| *p != 0)
}

pub(super) fn is_host_port(s: &str) -> bool {
    matches!(split_host_port(s), Some((h, Some(p))) if is_host(h) && parse_port(p).is_some())
}

pub(super) fn strip_prefix_ci<'a>(s: &'a str, prefix: &str) -> Option<&'a str> {
    let head = s.get(..prefix.len())?;
    head.eq_ignore_ascii_case(prefix)
        .then(|| &s[prefix.len()..])
}

/// `http://host[:port]`, `https://host[:port]` (a single trailing `/` allowed) or
/// `unix:/absolute/path`. Error: (message, hint).
pub(super) fn parse_upstream(s: &str) -> Result<Upstream, (String, String)> {
    const FORMS: &str = "write http://host:port, https://host:port or unix:/absolute/path/to.sock";
    if let Some(path) = strip_prefix_ci(s, "unix:") {
        if path.starts_with("//") || !path.starts_with('/') || path.chars().any(char::is_control) {
            return Err((
                "a unix socket upstream needs an absolute path".into(),
                "write unix:/run/app.sock (one slash after `unix:`)".into(),
            ));
        }
        return Ok(Upstream::Unix(PathBuf::from(path)));
    }
    let (https, rest) = if let Some(r) = strip_prefix_ci(s, "http://") {
        (false, r)
    } else if let Some(r) = strip_prefix_ci(s, "https://") {
        (true, r)
    } else {
        return Err((
            format!("{:?} has an unsupported scheme", sanitize(s)),
            FORMS.into(),
        ));
    };
    let authority = rest.strip_suffix('/').unwrap_or(rest);
    if authority.contains(['/', '?', '#']) {
        return Err((
            "the upstream must not have a path, query or fragment".into(),
            "request paths are forwarded unchanged; give only scheme, host and port".into(),
        ));
    }
    if authority.contains('@') {
        return Err((
            "credentials in the upstream URL are not supported".into(),
            FORMS.into(),
        ));
    }
    let bad = || {
        (
            format!("{:?} is not a valid host[:port]", sanitize(s)),
            FORMS.to_owned(),
        )
    };
    let (host, port) = split_host_port(authority).ok_or_else(bad)?;
    if !is_host(host) {
        return Err(bad());
    }
    let port = match port {
        None => {
            if https {
                443
            } else {
                80
            }
        }
        Some(p) => parse_port(p).ok_or_else(bad)?,
    };
    Ok(Upstream::Tcp {
        https,
        authority: format!("{host}:{port}"),
    })
}

pub(super) struct RedisUrlInfo {
    /// `Some(true)` for `rediss://`; `None` for unix sockets (no TLS setting applies).
    pub(super) tls: Option<bool>,
    pub(super) db: Option<u32>,
}

/// The query parameters a unix socket URL may carry: those the Redis client reads
/// (docs/configuration.md#redis). A TCP URL takes none.
const UNIX_URL_PARAMETERS: [&str; 3] = ["db", "user", "pass"];

/// Refuse a `#fragment` and any query parameter the client does not read: the client
/// would ignore it silently (a misspelt `?pasword=` connects without a password), and
/// `check` could not know which of its values to redact. Messages count parameters,
/// never quote them: a parameter's text may be a password.
fn check_url_tail(tail: &str, unix: bool) -> Result<(), String> {
    if tail.contains('#') {
        return Err("a `#fragment` is not supported in a Redis URL".into());
    }
    let Some((_, query)) = tail.split_once('?') else {
        return Ok(());
    };
    for (i, pair) in query.split('&').filter(|p| !p.is_empty()).enumerate() {
        let key = pair.split_once('=').map_or(pair, |(k, _)| k);
        if !(unix && UNIX_URL_PARAMETERS.contains(&key)) {
            return Err(format!(
                "query parameter {} is not one the sidecar passes to Redis (a TCP URL takes \
                 none; a unix socket URL takes only `db`, `user` and `pass`)",
                i + 1
            ));
        }
    }
    Ok(())
}

/// A light check of a Redis URL (the store parses it for real). The error text never
/// contains the URL: it may hold a password.
pub(super) fn parse_redis_url(s: &str) -> Result<RedisUrlInfo, String> {
    let (scheme, rest) = s
        .split_once("://")
        .ok_or("not a URL (expected redis://...)")?;
    match scheme.to_ascii_lowercase().as_str() {
        "redis+unix" | "unix" => {
            if !rest.starts_with('/') {
                return Err("a unix socket URL needs an absolute path".into());
            }
            check_url_tail(rest, true)?;
            return Ok(RedisUrlInfo {
                tls: None,
                db: None,
            });
        }
        "redis" | "rediss" => {}
        _ => return Err("unsupported scheme (use redis://, rediss:// or redis+unix://)".into()),
    }
    let tls = Some(scheme.eq_ignore_ascii_case("rediss"));
    let end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let (authority, tail) = rest.split_at(end);
    check_url_tail(tail, false)?;
    let hostport = authority.rsplit_once('@').map_or(authority, |(_, h)| h);
    match split_host_port(hostport) {
        Some((h, p)) if is_host(h) && p.is_none_or(|p| parse_port(p).is_some()) => {}
        _ => return Err("the host or port is not valid".into()),
    }
    let path = tail.split(['?', '#']).next().unwrap_or("");
    let db = match path.trim_start_matches('/') {
        "" => None,
        n => Some(
            n.parse::<u32>()
                .ok()
                .filter(|d| i32::try_from(*d).is_ok())
                .ok_or("the path must be a database number, e.g. /0")?,
        ),
    };
    Ok(RedisUrlInfo { tls, db })
}

/// The database the Redis client selects for `url` (its path, or `?db=` of a unix socket
/// URL; 0 when none), or why the client refuses the URL. The error text never contains
/// the URL.
pub(super) fn redis_client_db(url: &str) -> Result<i64, String> {
    use redis::IntoConnectionInfo as _;
    url.into_connection_info()
        .map(|info| info.redis_settings().db())
        .map_err(|e| format!("not a valid Redis URL ({})", sanitize(&e.to_string())))
}

/// The URL with its password (userinfo, or `pass=`/`password=` query values) replaced.
pub(super) fn redact_url(s: &str) -> String {
    let Some((scheme, rest)) = s.split_once("://") else {
        return "<redacted>".to_owned();
    };
    let end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let (authority, tail) = rest.split_at(end);
    let authority = match authority.rsplit_once('@') {
        Some((user, host)) => match user.split_once(':') {
            Some((name, _)) => format!("{name}:<redacted>@{host}"),
            // A lone userinfo may be a password (redis://secret@host): hide it too.
            None => format!("<redacted>@{host}"),
        },
        None => authority.to_owned(),
    };
    let tail = match tail.split_once('?') {
        Some((path, query)) => {
            let q: Vec<String> = query
                .split('&')
                .map(|kv| match kv.split_once('=') {
                    Some((k, _))
                        if k.eq_ignore_ascii_case("pass") || k.eq_ignore_ascii_case("password") =>
                    {
                        format!("{k}=<redacted>")
                    }
                    _ => kv.to_owned(),
                })
                .collect();
            format!("{path}?{}", q.join("&"))
        }
        None => tail.to_owned(),
    };
    format!("{scheme}://{authority}{tail}")
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn durations_and_sizes() {
        let d = |s| parse_duration(s);
        assert_eq!(d("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(d("10s"), Ok(Duration::from_secs(10)));
        assert_eq!(d("10"), Ok(Duration::from_secs(10)));
        assert_eq!(d("5m"), Ok(Duration::from_secs(300)));
        assert_eq!(d("2h"), Ok(Duration::from_secs(7200)));
        assert_eq!(d("1d"), Ok(Duration::from_secs(86_400)));
        assert_eq!(d("3650d"), Ok(MAX_DURATION));
        for bad in [
            "",
            "s",
            "1.5s",
            "-1s",
            "1 s",
            "1w",
            "10S",
            "3651d",
            "99999999999999999999d",
        ] {
            assert!(d(bad).is_err(), "{bad:?}");
        }
        let z = |s| parse_size(s);
        assert_eq!(z("512B"), Ok(512));
        assert_eq!(z("512"), Ok(512));
        assert_eq!(z("8KiB"), Ok(8192));
        assert_eq!(z("8kib"), Ok(8192));
        assert_eq!(z("8KB"), Ok(8000));
        assert_eq!(z("1MiB"), Ok(1 << 20));
        assert_eq!(z("1MB"), Ok(1_000_000));
        assert_eq!(z("1GiB"), Ok(1 << 30));
        for bad in ["", "KiB", "8 KiB", "8.5KiB", "8XB", "-1"] {
            assert!(z(bad).is_err(), "{bad:?}");
        }
        assert_eq!(format_duration(Duration::from_millis(1500)), "1500ms");
        assert_eq!(format_duration(Duration::from_secs(90)), "90s");
        assert_eq!(format_duration(Duration::from_secs(7200)), "2h");
        assert_eq!(format_size(8000), "8000B");
        assert_eq!(format_size(8192), "8KiB");
    }
}
