//! Header operations of the pipeline, one concern each: message framing, HTTP/2 → 1.1
//! (`Host`, cookie crumbs), hop-by-hop fields, `X-Forwarded-*`. Pure functions over `HeaderMap`s, unit-tested below.

use std::net::IpAddr;

use http::{HeaderMap, HeaderName, HeaderValue, header};

use crate::{error::ProxyError, protocol::ReservedPrefix};

/// Refuse ambiguous framing before anything else (request smuggling, docs/security.md §12).
/// hyper itself accepts `Content-Length` with `Transfer-Encoding` (it ignores the length),
/// `Transfer-Encoding: gzip, chunked` and repeated `Transfer-Encoding` lines; a front
/// proxy must not, because the app or another hop may frame the same bytes differently.
pub fn check_framing(headers: &HeaderMap) -> Result<(), ProxyError> {
    let mut te = headers.get_all(header::TRANSFER_ENCODING).iter();
    let Some(first) = te.next() else {
        return Ok(());
    };
    if te.next().is_some() {
        return Err(ProxyError::BadFraming(
            "Transfer-Encoding given more than once",
        ));
    }
    if headers.contains_key(header::CONTENT_LENGTH) {
        return Err(ProxyError::BadFraming(
            "Content-Length together with Transfer-Encoding",
        ));
    }
    let value = first.to_str().unwrap_or("");
    if !value.trim().eq_ignore_ascii_case("chunked") {
        return Err(ProxyError::UnsupportedTransferCoding);
    }
    Ok(())
}

/// Refuse a request whose `Host` the app and the sidecar could read differently (RFC
/// 9112 §3.2: more than one `Host` field, or an invalid value, is a 400): the app would
/// pick one field or split a list, while `X-Forwarded-Host` and the access log name
/// another. A valid value is `uri-host [":" port]` (RFC 3986 characters, no userinfo,
/// no whitespace), or empty. Runs after [`normalize_h2`], so an HTTP/2 request is
/// checked with the `Host` its `:authority` gave it. A missing `Host` is left to the
/// upstream client (it sends the upstream's authority).
pub fn check_host(headers: &HeaderMap) -> Result<(), ProxyError> {
    let mut hosts = headers.get_all(header::HOST).iter();
    let Some(host) = hosts.next() else {
        return Ok(());
    };
    if hosts.next().is_some() {
        return Err(ProxyError::Malformed("more than one Host field"));
    }
    if !host.as_bytes().iter().all(|&b| is_host_char(b)) {
        return Err(ProxyError::Malformed("invalid Host"));
    }
    Ok(())
}

/// The characters of `uri-host [":" port]` (RFC 3986 §3.2.2: unreserved, pct-encoded,
/// sub-delims, and `:`, `[`, `]` for ports and IP literals).
fn is_host_char(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"-._~%!$&'()*+,;=:[]".contains(&b)
}

/// Fields that describe one connection, never forwarded (RFC 9110 §7.6.1). `Trailer`
/// is end-to-end (hyper only sends trailer fields a message declares in it); its
/// reserved names are filtered by [`filter_trailer_declaration`]. `HTTP2-Settings`
/// belongs to the (h2c) upgrade of one connection (RFC 9113 §3.1 retired it).
const HOP_BY_HOP: [HeaderName; 8] = [
    HeaderName::from_static("http2-settings"),
    header::CONNECTION,
    HeaderName::from_static("keep-alive"),
    HeaderName::from_static("proxy-connection"),
    header::TE,
    header::TRANSFER_ENCODING,
    header::PROXY_AUTHENTICATE,
    header::PROXY_AUTHORIZATION,
];

/// Remove hop-by-hop fields, including every name listed in any `Connection` header
/// (all of them, not just the first: rpxy's pitfall). Runs *before* the sidecar injects
/// anything, so a client listing `X-Session` in `Connection` cannot make the proxy drop
/// an injected header (Go httputil #50580, Traefik CVE-2024-45410).
///
/// Returns the `Upgrade` value when the message asks for a protocol upgrade
/// (`Connection: upgrade` plus `Upgrade`); the caller re-adds both on that path only.
/// An upgrade that offers `h2c` is never passed on: behind a `101` the client would
/// speak HTTP/2 straight to the app, where no reserved header is stripped any more
/// (h2c smuggling, Bishop Fox 2020). The request is forwarded as a plain one.
pub fn remove_hop_by_hop(headers: &mut HeaderMap) -> Option<HeaderValue> {
    // One pass over the names present decides what goes: most messages carry none of
    // these or only `Connection`, and a `remove` per fixed name (hashing each) was a
    // visible share of the request path (docs/performance.md#what-the-profile-showed).
    let mut listed: Vec<HeaderName> = Vec::new();
    let mut wants_upgrade = false;
    for value in headers.get_all(header::CONNECTION) {
        let Ok(value) = value.to_str() else { continue };
        for token in value.split(',') {
            let token = token.trim();
            if token.eq_ignore_ascii_case("upgrade") {
                wants_upgrade = true;
            } else if !token.eq_ignore_ascii_case("host") // Host frames the request for the app
                // Only names that are there (`keep-alive` usually is not): no allocation.
                && headers.contains_key(token)
                && let Ok(name) = HeaderName::from_bytes(token.as_bytes())
            {
                listed.push(name);
            }
        }
    }
    let doomed: Vec<HeaderName> = headers
        .keys()
        .filter(|name| HOP_BY_HOP.contains(name))
        .cloned()
        .collect();
    for name in listed.into_iter().chain(doomed) {
        headers.remove(name);
    }
    let upgrade = headers.remove(header::UPGRADE);
    match upgrade {
        Some(value) if wants_upgrade && !offers_h2c(&value) => Some(value),
        _ => None,
    }
}

/// Whether the protocol the upstream `chosen` in its `101` is one the client `asked`
/// for (`Upgrade` token lists, compared case-insensitively, version included).
pub fn upgrade_offers(asked: &HeaderValue, chosen: &HeaderValue) -> bool {
    let (Ok(asked), Ok(chosen)) = (asked.to_str(), chosen.to_str()) else {
        return false;
    };
    let chosen = chosen.trim();
    !chosen.is_empty()
        && !chosen.contains(',')
        && asked
            .split(',')
            .any(|p| p.trim().eq_ignore_ascii_case(chosen))
}

/// Whether an `Upgrade` value names `h2c` among its protocols (any case, any version
/// suffix such as `h2c/1`); an unreadable value counts as offering it.
fn offers_h2c(value: &HeaderValue) -> bool {
    let Ok(text) = value.to_str() else {
        return true;
    };
    text.split(',').any(|p| {
        let name = p.trim().split('/').next().unwrap_or("").trim();
        name.eq_ignore_ascii_case("h2c")
    })
}

/// Remove reserved names from `Trailer` declarations: the trailers themselves are
/// stripped as they stream by, so declaring them would promise fields that never come.
pub fn filter_trailer_declaration(headers: &mut HeaderMap, prefix: &ReservedPrefix) {
    if !headers.contains_key(header::TRAILER) {
        return;
    }
    let kept: Vec<String> = headers
        .get_all(header::TRAILER)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(str::trim)
        .filter(|n| !n.is_empty() && !prefix.is_reserved(n))
        .map(str::to_owned)
        .collect();
    headers.remove(header::TRAILER);
    if !kept.is_empty()
        && let Ok(v) = HeaderValue::try_from(kept.join(", "))
    {
        headers.insert(header::TRAILER, v);
    }
}

/// Re-add the upgrade fields on the upgrade path.
pub fn restore_upgrade(headers: &mut HeaderMap, upgrade: HeaderValue) {
    headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
    headers.insert(header::UPGRADE, upgrade);
}

static X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
static X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
static X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");

/// A peer address as an `X-Forwarded-For` value (computed once per connection).
pub fn peer_value(peer: IpAddr) -> HeaderValue {
    HeaderValue::try_from(peer.to_string()).unwrap_or_else(|_| HeaderValue::from_static("unknown"))
}

/// Set `X-Forwarded-For/-Proto/-Host` (docs/protocol.md §10.3); `peer` is [`peer_value`]. A
/// client's own values are kept (and `For` extended) only when the peer is a trusted proxy;
/// otherwise they are replaced, so an app never trusts an address the client made up
/// (oauth2-proxy GHSA-7x63-xv5r-3p2x). An untrusted `Forwarded` header is removed for the
/// same reason.
pub fn set_forwarded(
    headers: &mut HeaderMap,
    peer: &HeaderValue,
    trusted: bool,
    scheme: &'static str,
) {
    let prior: Vec<&str> = if trusted {
        headers
            .get_all(&X_FORWARDED_FOR)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .collect()
    } else {
        Vec::new()
    };
    let xff = if prior.is_empty() {
        // The common case: the peer's address, rendered once per connection.
        Ok(peer.clone())
    } else {
        let peer = peer.to_str().unwrap_or_default();
        HeaderValue::try_from(format!("{}, {peer}", prior.join(", ")))
    };
    if let Ok(v) = xff {
        headers.insert(&X_FORWARDED_FOR, v);
    }
    if !(trusted && headers.contains_key(&X_FORWARDED_PROTO)) {
        headers.insert(&X_FORWARDED_PROTO, HeaderValue::from_static(scheme));
    }
    if !(trusted && headers.contains_key(&X_FORWARDED_HOST)) {
        match headers.get(header::HOST).cloned() {
            Some(host) => {
                headers.insert(&X_FORWARDED_HOST, host);
            }
            None => {
                headers.remove(&X_FORWARDED_HOST);
            }
        }
    }
    if !trusted {
        headers.remove(header::FORWARDED);
    }
}

/// Make an HTTP/2 request forwardable to an HTTP/1.1 upstream; other versions are left
/// alone. The version itself is reset by [`super::forward`].
///
/// - `Host` from `:authority` (RFC 9113 §8.3.1: an intermediary that generates `Host`
///   for HTTP/1.1 MUST use `:authority`). h2 clients usually send only `:authority`,
///   and the upstream client would otherwise invent the upstream's own address; a
///   client's own `Host` field is replaced by it, so the app and `X-Forwarded-Host` see
///   one authority, the one the h2 layer used. Userinfo in `:authority` (forbidden by
///   RFC 9113) is a 400. Without `:authority`, one `Host` field is kept as it is.
/// - `cookie` crumbs (h2 lets a client split `Cookie` into several fields for
///   compression) joined into one field with `"; "` (RFC 9113 §8.2.3), so the cookie
///   is read and the session cookie stripped exactly as on HTTP/1.1.
pub fn normalize_h2<B>(req: &mut http::Request<B>) -> Result<(), ProxyError> {
    if req.version() != http::Version::HTTP_2 {
        return Ok(());
    }
    let authority = req.uri().authority().map(|a| a.as_str().to_owned());
    set_host_from_authority(req.headers_mut(), authority.as_deref())?;
    join_cookie_crumbs(req.headers_mut());
    Ok(())
}

fn set_host_from_authority(
    headers: &mut HeaderMap,
    authority: Option<&str>,
) -> Result<(), ProxyError> {
    let Some(authority) = authority else {
        if headers.get_all(header::HOST).iter().count() > 1 {
            return Err(ProxyError::Malformed("more than one Host field"));
        }
        return Ok(());
    };
    if authority.contains('@') {
        return Err(ProxyError::Malformed("userinfo in :authority"));
    }
    let value = HeaderValue::from_str(authority)
        .map_err(|_| ProxyError::Malformed("invalid :authority"))?;
    // `insert` replaces every Host field the client sent.
    headers.insert(header::HOST, value);
    Ok(())
}

/// Join several `Cookie` fields into one, `"; "`-separated, in order; empty crumbs are
/// dropped. One field (or none) is left as it is.
pub fn join_cookie_crumbs(headers: &mut HeaderMap) {
    let mut crumbs = headers.get_all(header::COOKIE).iter();
    if crumbs.next().is_none() || crumbs.next().is_none() {
        return;
    }
    let mut joined: Vec<u8> = Vec::with_capacity(cookie_bytes(headers));
    for crumb in headers.get_all(header::COOKIE) {
        let crumb = crumb.as_bytes().trim_ascii();
        if crumb.is_empty() {
            continue;
        }
        if !joined.is_empty() {
            joined.extend_from_slice(b"; ");
        }
        joined.extend_from_slice(crumb);
    }
    headers.remove(header::COOKIE);
    // Valid field values joined by "; " are a valid field value.
    if let Ok(value) = HeaderValue::from_bytes(&joined)
        && !joined.is_empty()
    {
        headers.insert(header::COOKIE, value);
    }
}

/// Total bytes of the request's `Cookie` fields (h2 may split them in crumbs).
pub fn cookie_bytes(headers: &HeaderMap) -> usize {
    headers
        .get_all(header::COOKIE)
        .iter()
        .map(|v| v.len() + 2)
        .sum()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn map(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(
                HeaderName::from_bytes(k.as_bytes()).unwrap(),
                HeaderValue::from_str(v).unwrap(),
            );
        }
        h
    }

    #[test]
    fn framing_rules() {
        assert!(check_framing(&map(&[("content-length", "3")])).is_ok());
        assert!(check_framing(&map(&[("transfer-encoding", "chunked")])).is_ok());
        assert!(check_framing(&map(&[("transfer-encoding", " Chunked ")])).is_ok());
        assert!(matches!(
            check_framing(&map(&[
                ("transfer-encoding", "chunked"),
                ("content-length", "3")
            ])),
            Err(ProxyError::BadFraming(_))
        ));
        assert!(matches!(
            check_framing(&map(&[
                ("transfer-encoding", "chunked"),
                ("transfer-encoding", "chunked")
            ])),
            Err(ProxyError::BadFraming(_))
        ));
        assert!(matches!(
            check_framing(&map(&[("transfer-encoding", "gzip, chunked")])),
            Err(ProxyError::UnsupportedTransferCoding)
        ));
    }

    #[test]
    fn host_must_be_one_valid_authority() {
        for ok in [
            "app.test",
            "app.test:8443",
            "127.0.0.1:80",
            "[::1]:8080",
            "xn--bcher-kva.example",
            "",
        ] {
            assert!(check_host(&map(&[("host", ok)])).is_ok(), "{ok:?}");
        }
        assert!(
            check_host(&map(&[])).is_ok(),
            "a missing Host is not refused here"
        );
        for bad in [
            "a b",
            "a, b",
            "user@app.test",
            "app.test/path",
            "app.test\\x",
            "app.test?q",
            "app.test#f",
            "\"app.test\"",
            "\tapp.test",
        ] {
            assert!(
                matches!(
                    check_host(&map(&[("host", bad)])),
                    Err(ProxyError::Malformed(_))
                ),
                "{bad:?}"
            );
        }
        let two = map(&[("host", "a.test"), ("host", "b.test")]);
        assert!(matches!(check_host(&two), Err(ProxyError::Malformed(_))));
        let same = map(&[("host", "a.test"), ("host", "a.test")]);
        assert!(check_host(&same).is_err(), "even when equal");
        let obs = HeaderValue::from_bytes(b"app\xe9.test").unwrap();
        let mut h = HeaderMap::new();
        h.insert(header::HOST, obs);
        assert!(check_host(&h).is_err(), "non-ASCII");
    }

    #[test]
    fn removes_listed_and_standard_hop_by_hop_from_every_connection_header() {
        let mut h = map(&[
            ("connection", "keep-alive, x-a"),
            ("connection", "X-B"),
            ("x-a", "1"),
            ("x-b", "2"),
            ("x-c", "3"),
            ("keep-alive", "timeout=5"),
            ("te", "trailers"),
            ("trailer", "x-d"),
            ("proxy-authorization", "secret"),
            ("upgrade", "websocket"),
            ("host", "h"),
        ]);
        let up = remove_hop_by_hop(&mut h);
        assert!(up.is_none(), "no `Connection: upgrade`, so no upgrade");
        let mut names: Vec<_> = h.keys().map(|k| k.as_str()).collect();
        names.sort();
        assert_eq!(names, ["host", "trailer", "x-c"]);
    }

    #[test]
    fn trailer_declaration_loses_reserved_names() {
        let prefix = ReservedPrefix::new("X-Session").unwrap();
        let mut h = map(&[
            ("trailer", "X-Session, x-other"),
            ("trailer", "x_session_set"),
        ]);
        filter_trailer_declaration(&mut h, &prefix);
        assert_eq!(h["trailer"], "x-other");
        let mut h = map(&[("trailer", "X-Session")]);
        filter_trailer_declaration(&mut h, &prefix);
        assert!(h.get("trailer").is_none());
    }

    #[test]
    fn upgrade_is_reported_only_when_connection_says_so() {
        let mut h = map(&[("connection", "Upgrade"), ("upgrade", "websocket")]);
        assert_eq!(remove_hop_by_hop(&mut h).unwrap(), "websocket");
        assert!(h.is_empty());
    }

    fn h2_request(authority: Option<&str>, pairs: &[(&str, &str)]) -> http::Request<()> {
        let uri = match authority {
            Some(a) => format!("https://{a}/path?q=1"),
            None => "/path?q=1".to_owned(),
        };
        let mut req = http::Request::builder()
            .version(http::Version::HTTP_2)
            .uri(uri)
            .body(())
            .unwrap();
        *req.headers_mut() = map(pairs);
        req
    }

    #[test]
    fn h2_host_comes_from_the_authority() {
        let mut req = h2_request(Some("app.test:8443"), &[("accept", "*/*")]);
        normalize_h2(&mut req).unwrap();
        assert_eq!(req.headers()["host"], "app.test:8443");
        assert_eq!(req.headers().get_all("host").iter().count(), 1);

        // A client's own Host fields give way to :authority.
        let mut req = h2_request(
            Some("app.test"),
            &[("host", "evil.test"), ("host", "app.test")],
        );
        normalize_h2(&mut req).unwrap();
        let hosts: Vec<_> = req.headers().get_all("host").iter().collect();
        assert_eq!(hosts, ["app.test"]);

        let mut req = h2_request(Some("user:pw@app.test"), &[]);
        assert!(matches!(
            normalize_h2(&mut req),
            Err(ProxyError::Malformed(_))
        ));
        assert_eq!(ProxyError::Malformed("x").status(), 400);

        // No :authority: one Host field is what there is; two are ambiguous.
        let mut req = h2_request(None, &[("host", "app.test")]);
        normalize_h2(&mut req).unwrap();
        assert_eq!(req.headers()["host"], "app.test");
        let mut req = h2_request(None, &[("host", "a.test"), ("host", "b.test")]);
        assert!(matches!(
            normalize_h2(&mut req),
            Err(ProxyError::Malformed(_))
        ));
    }

    #[test]
    fn h2_cookie_crumbs_are_joined_in_order() {
        let mut req = h2_request(
            Some("app.test"),
            &[
                ("cookie", "a=1"),
                ("x-other", "y"),
                ("cookie", "session=abc.def"),
                ("cookie", ""),
                ("cookie", "b=2; c=3"),
            ],
        );
        normalize_h2(&mut req).unwrap();
        let all: Vec<_> = req.headers().get_all("cookie").iter().collect();
        assert_eq!(all, ["a=1; session=abc.def; b=2; c=3"]);
        // One field is untouched; only empty crumbs leave no field.
        let mut h = map(&[("cookie", "a=1;b=2")]);
        join_cookie_crumbs(&mut h);
        assert_eq!(h["cookie"], "a=1;b=2");
        let mut h = map(&[("cookie", ""), ("cookie", " ")]);
        join_cookie_crumbs(&mut h);
        assert!(h.get("cookie").is_none());
    }

    #[test]
    fn http1_requests_are_not_touched() {
        let mut req = h2_request(None, &[("cookie", "a=1"), ("cookie", "b=2")]);
        *req.version_mut() = http::Version::HTTP_11;
        normalize_h2(&mut req).unwrap();
        assert_eq!(req.headers().get_all("cookie").iter().count(), 2);
        assert!(req.headers().get("host").is_none());
    }

    #[test]
    fn h2_spellings_of_reserved_names_are_stripped_and_session_cookie_found_in_crumbs() {
        // h2 field names are lowercase; `_` and `.` are still legal token characters.
        let prefix = ReservedPrefix::new("X-Session").unwrap();
        let mut req = h2_request(
            Some("app.test"),
            &[
                ("x-session", "{\"user\":\"forged\"}"),
                ("x_session", "1"),
                ("x.session-flash", "1"),
                ("x-session_status", "active"),
                ("x-session-set", "{}"),
                ("x-sessionx", "1"),
                ("cookie", "a=1"),
                ("cookie", "session=abc.def"),
                ("accept", "*/*"),
            ],
        );
        normalize_h2(&mut req).unwrap();
        prefix.strip(req.headers_mut());
        let mut names: Vec<_> = req.headers().keys().map(|k| k.as_str()).collect();
        names.sort();
        assert_eq!(names, ["accept", "cookie", "host"]);
        crate::cookie::strip_session_cookie(req.headers_mut(), "session");
        assert_eq!(req.headers()["cookie"], "a=1");
    }

    #[test]
    fn forwarded_headers_untrusted_replace_trusted_extend() {
        let peer: IpAddr = "10.0.0.7".parse().unwrap();
        let mut h = map(&[
            ("host", "app.test"),
            ("x-forwarded-for", "6.6.6.6"),
            ("x-forwarded-host", "evil"),
            ("x-forwarded-proto", "https"),
            ("forwarded", "for=6.6.6.6"),
        ]);
        set_forwarded(&mut h, &peer_value(peer), false, "http");
        assert_eq!(h["x-forwarded-for"], "10.0.0.7");
        assert_eq!(h["x-forwarded-host"], "app.test");
        assert_eq!(h["x-forwarded-proto"], "http");
        assert!(h.get("forwarded").is_none());

        let mut h = map(&[
            ("x-forwarded-for", "6.6.6.6"),
            ("x-forwarded-proto", "https"),
        ]);
        set_forwarded(&mut h, &peer_value(peer), true, "http");
        assert_eq!(h["x-forwarded-for"], "6.6.6.6, 10.0.0.7");
        assert_eq!(h["x-forwarded-proto"], "https");
    }

    #[test]
    fn an_h2c_upgrade_is_never_passed_on() {
        for offer in ["h2c", "H2C", "websocket, h2c", " h2c/1 ", "foo, h2c"] {
            let mut h = HeaderMap::new();
            h.insert(
                header::CONNECTION,
                HeaderValue::from_static("Upgrade, HTTP2-Settings"),
            );
            h.insert(header::UPGRADE, HeaderValue::from_str(offer).unwrap());
            h.insert(
                "http2-settings",
                HeaderValue::from_static("AAMAAABkAAQAoAAAAAIAAAAA"),
            );
            assert_eq!(remove_hop_by_hop(&mut h), None, "{offer}");
            assert!(h.is_empty(), "{offer}: {h:?}");
        }
        // HTTP2-Settings goes even when Connection does not list it.
        let mut h = HeaderMap::new();
        h.insert("http2-settings", HeaderValue::from_static("AAMAAABk"));
        h.insert(header::UPGRADE, HeaderValue::from_static("h2c"));
        assert_eq!(remove_hop_by_hop(&mut h), None);
        assert!(h.is_empty(), "{h:?}");
        assert!(upgrade_offers(
            &HeaderValue::from_static("websocket, foo/2"),
            &HeaderValue::from_static("WebSocket")
        ));
        assert!(upgrade_offers(
            &HeaderValue::from_static("websocket, foo/2"),
            &HeaderValue::from_static("foo/2")
        ));
        for chosen in ["foo", "h2c", "", "websocket, foo/2"] {
            assert!(
                !upgrade_offers(
                    &HeaderValue::from_static("websocket, foo/2"),
                    &HeaderValue::from_str(chosen).unwrap()
                ),
                "{chosen}"
            );
        }
        // WebSocket still passes.
        let mut h = HeaderMap::new();
        h.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
        h.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
        assert_eq!(
            remove_hop_by_hop(&mut h),
            Some(HeaderValue::from_static("websocket"))
        );
    }
}
