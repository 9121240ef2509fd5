//! Header operations of the pipeline, one concern each: message framing, hop-by-hop
//! fields, `X-Forwarded-*`. Pure functions over `HeaderMap`s, unit-tested below.

use std::net::IpAddr;

use http::{HeaderMap, HeaderName, HeaderValue, header};

use crate::{error::ProxyError, protocol::ReservedPrefix};

/// Refuse ambiguous framing before anything else (request smuggling, SPEC §8.6).
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

/// Fields that describe one connection, never forwarded (RFC 9110 §7.6.1). `Trailer`
/// is end-to-end (hyper only sends trailer fields a message declares in it); its
/// reserved names are filtered by [`filter_trailer_declaration`].
const HOP_BY_HOP: [HeaderName; 7] = [
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
pub fn remove_hop_by_hop(headers: &mut HeaderMap) -> Option<HeaderValue> {
    let mut listed: Vec<HeaderName> = Vec::new();
    let mut wants_upgrade = false;
    for value in headers.get_all(header::CONNECTION) {
        let Ok(value) = value.to_str() else { continue };
        for token in value.split(',') {
            let token = token.trim();
            if token.eq_ignore_ascii_case("upgrade") {
                wants_upgrade = true;
            } else if let Ok(name) = HeaderName::from_bytes(token.as_bytes())
                // Host frames the request for the app; listing it must not drop it.
                && name != header::HOST
            {
                listed.push(name);
            }
        }
    }
    for name in listed {
        headers.remove(name);
    }
    for name in &HOP_BY_HOP {
        headers.remove(name);
    }
    let upgrade = headers.remove(header::UPGRADE);
    if wants_upgrade { upgrade } else { None }
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

/// Set `X-Forwarded-For/-Proto/-Host` (SPEC §8.3). A client's own values are kept
/// (and `For` extended) only when the peer is a trusted proxy; otherwise they are
/// replaced, so an app never trusts an address the client made up (oauth2-proxy
/// GHSA-7x63-xv5r-3p2x). An untrusted `Forwarded` header is removed for the same reason.
pub fn set_forwarded(headers: &mut HeaderMap, peer: IpAddr, trusted: bool, scheme: &'static str) {
    let peer_text = peer.to_string();
    let xff = if trusted {
        let prior: Vec<&str> = headers
            .get_all(&X_FORWARDED_FOR)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .collect();
        if prior.is_empty() {
            peer_text
        } else {
            format!("{}, {peer_text}", prior.join(", "))
        }
    } else {
        peer_text
    };
    if let Ok(v) = HeaderValue::try_from(xff) {
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
        set_forwarded(&mut h, peer, false, "http");
        assert_eq!(h["x-forwarded-for"], "10.0.0.7");
        assert_eq!(h["x-forwarded-host"], "app.test");
        assert_eq!(h["x-forwarded-proto"], "http");
        assert!(h.get("forwarded").is_none());

        let mut h = map(&[
            ("x-forwarded-for", "6.6.6.6"),
            ("x-forwarded-proto", "https"),
        ]);
        set_forwarded(&mut h, peer, true, "http");
        assert_eq!(h["x-forwarded-for"], "6.6.6.6, 10.0.0.7");
        assert_eq!(h["x-forwarded-proto"], "https");
    }
}
