//! Session ids and the signed cookie (docs/protocol.md §6), pure.
//!
//! Value: `<id>.<mac>`; `id` = 16 bytes from the OS CSPRNG, base64url without padding;
//! `mac` = base64url without padding of HMAC-SHA256(key = secret bytes,
//! message = cookie_name ‖ "|" ‖ id). Binding the cookie *name* stops a value signed for
//! another cookie from being replayed as the session cookie (docs/security.md §5).

use std::fmt;

use base64::{Engine, engine::general_purpose::URL_SAFE_NO_PAD};
use hmac::{Hmac, KeyInit, Mac};
use http::{HeaderMap, HeaderValue, header};
use sha2::{Digest, Sha256};

type HmacSha256 = Hmac<Sha256>;

/// Length of an id in its base64url form (16 bytes → 22 characters).
const ID_LEN: usize = 22;
/// Length of a MAC in its base64url form (32 bytes → 43 characters).
const MAC_LEN: usize = 43;

/// A session id as issued by this sidecar. `Debug` never prints it: ids are bearer
/// secrets and must not reach logs (docs/security.md §16).
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct SessionId(String);

impl SessionId {
    /// A fresh id: 128 bits from the OS CSPRNG (docs/security.md §6).
    ///
    /// # Errors
    /// When the OS random source fails; callers answer 503 rather than issue a weak id.
    pub fn generate() -> Result<Self, getrandom::Error> {
        let mut raw = [0u8; 16];
        getrandom::fill(&mut raw)?;
        Ok(SessionId(URL_SAFE_NO_PAD.encode(raw)))
    }

    /// The id as sent in the cookie and in `X-Session-Id`.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The name under which stores keep this session: base64url(SHA-256(id)). Store
    /// dumps, `MONITOR` and slow logs then reveal nothing a client could present
    /// (docs/security.md §7).
    pub fn store_key(&self) -> String {
        URL_SAFE_NO_PAD.encode(Sha256::digest(self.0.as_bytes()))
    }

    #[cfg(test)]
    pub(crate) fn from_trusted(s: &str) -> Self {
        SessionId(s.to_owned())
    }
}

impl fmt::Debug for SessionId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("SessionId(<redacted>)")
    }
}

/// Signs and verifies cookie values with a list of secrets: the first signs, all verify.
#[derive(Clone)]
pub struct CookieSigner {
    cookie_name: String,
    macs: Vec<HmacSha256>,
}

impl fmt::Debug for CookieSigner {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CookieSigner")
            .field("cookie_name", &self.cookie_name)
            .field("secrets", &self.macs.len())
            .finish()
    }
}

/// A cookie value that verified.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VerifiedCookie {
    pub id: SessionId,
    /// Verified by an older secret: re-sign with the first one on this response.
    pub needs_resign: bool,
}

impl CookieSigner {
    /// # Panics
    /// Never: HMAC accepts keys of any length. `secrets` must not be empty (the config
    /// check refuses that); with no secret nothing verifies and signing yields no MAC.
    pub fn new<S: AsRef<[u8]>>(cookie_name: &str, secrets: &[S]) -> Self {
        let macs = secrets
            .iter()
            .filter_map(|s| HmacSha256::new_from_slice(s.as_ref()).ok())
            .collect();
        CookieSigner {
            cookie_name: cookie_name.to_owned(),
            macs,
        }
    }

    pub fn cookie_name(&self) -> &str {
        &self.cookie_name
    }

    fn mac_for(&self, mac: &HmacSha256, id: &str) -> HmacSha256 {
        let mut mac = mac.clone();
        mac.update(self.cookie_name.as_bytes());
        mac.update(b"|");
        mac.update(id.as_bytes());
        mac
    }

    /// `<id>.<mac>` signed with the first secret.
    pub fn sign(&self, id: &SessionId) -> String {
        let Some(first) = self.macs.first() else {
            return id.0.clone();
        };
        let tag = self.mac_for(first, &id.0).finalize().into_bytes();
        let mut out = String::with_capacity(ID_LEN + 1 + MAC_LEN);
        out.push_str(&id.0);
        out.push('.');
        URL_SAFE_NO_PAD.encode_string(tag, &mut out);
        out
    }

    /// Verify a cookie value in constant time against every secret (docs/security.md §5).
    /// Anything malformed is simply not verified.
    pub fn verify(&self, value: &str) -> Option<VerifiedCookie> {
        let (id, mac) = value.split_once('.')?;
        if id.len() != ID_LEN || mac.len() != MAC_LEN {
            return None;
        }
        let raw_id = URL_SAFE_NO_PAD.decode(id).ok()?;
        if raw_id.len() != 16 || URL_SAFE_NO_PAD.encode(&raw_id) != id {
            return None; // non-canonical encodings would alias one id under two spellings
        }
        let tag = URL_SAFE_NO_PAD.decode(mac).ok()?;
        for (i, key) in self.macs.iter().enumerate() {
            if self.mac_for(key, id).verify_slice(&tag).is_ok() {
                return Some(VerifiedCookie {
                    id: SessionId(id.to_owned()),
                    needs_resign: i > 0,
                });
            }
        }
        None
    }
}

/// What the request's `Cookie` headers say about the session.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CookieState {
    /// No cookie with the session's name.
    Absent,
    /// The first cookie with the session's name that verifies (cookie tossing: a
    /// planted, unverifiable cookie in front of the real one is skipped).
    Valid(VerifiedCookie),
    /// Cookies with the session's name, none of which verifies.
    Invalid,
}

/// Iterate the `name=value` pairs of every `Cookie` header (h2 may split them in
/// crumbs). Names match byte for byte; only SP and HTAB around pairs are trimmed
/// (docs/security.md §5: no decoding, no Unicode trimming).
fn cookie_pairs(headers: &HeaderMap) -> impl Iterator<Item = (&[u8], &[u8])> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .flat_map(|v| v.as_bytes().split(|b| *b == b';'))
        .filter_map(|pair| {
            let pair = trim_ows(pair);
            let eq = pair.iter().position(|b| *b == b'=')?;
            Some((trim_ows(&pair[..eq]), trim_ows(&pair[eq + 1..])))
        })
}

fn trim_ows(mut s: &[u8]) -> &[u8] {
    while let [b' ' | b'\t', rest @ ..] = s {
        s = rest;
    }
    while let [rest @ .., b' ' | b'\t'] = s {
        s = rest;
    }
    s
}

/// Find the session cookie and verify it.
pub fn read_session_cookie(headers: &HeaderMap, signer: &CookieSigner) -> CookieState {
    let name = signer.cookie_name.as_bytes();
    let mut seen = false;
    for (n, v) in cookie_pairs(headers) {
        if n != name {
            continue;
        }
        seen = true;
        let verified = std::str::from_utf8(v).ok().and_then(|v| signer.verify(v));
        if let Some(verified) = verified {
            return CookieState::Valid(verified);
        }
    }
    if seen {
        CookieState::Invalid
    } else {
        CookieState::Absent
    }
}

/// Remove every cookie named `name` from the request's `Cookie` headers and join what is
/// left into one header (RFC 9113 §8.2.3 for h2 crumbs), so the session cookie never
/// reaches the app or its logs.
pub fn strip_session_cookie(headers: &mut HeaderMap, name: &str) {
    if !headers.contains_key(header::COOKIE) {
        return;
    }
    let mut kept: Vec<u8> = Vec::new();
    for (n, v) in cookie_pairs(headers) {
        if n == name.as_bytes() {
            continue;
        }
        if !kept.is_empty() {
            kept.extend_from_slice(b"; ");
        }
        kept.extend_from_slice(n);
        kept.push(b'=');
        kept.extend_from_slice(v);
    }
    headers.remove(header::COOKIE);
    if !kept.is_empty()
        && let Ok(v) = HeaderValue::from_bytes(&kept)
    {
        headers.insert(header::COOKIE, v);
    }
}

/// Remove `Set-Cookie` fields from the upstream's response that would overwrite the
/// sidecar's own cookie (an app framework with its own cookie called `session`, as
/// Flask's default, would otherwise log every user out on each response). Returns how
/// many were removed.
pub fn strip_upstream_session_cookie(headers: &mut HeaderMap, name: &str) -> usize {
    let is_ours = |v: &HeaderValue| {
        let bytes = v.as_bytes();
        let end = bytes.iter().position(|b| *b == b'=').unwrap_or(bytes.len());
        trim_ows(&bytes[..end]) == name.as_bytes()
    };
    // Runs on every response: look before copying anything.
    let removed = headers
        .get_all(header::SET_COOKIE)
        .iter()
        .filter(|v| is_ours(v))
        .count();
    if removed > 0 {
        let kept: Vec<HeaderValue> = headers
            .get_all(header::SET_COOKIE)
            .iter()
            .filter(|v| !is_ours(v))
            .cloned()
            .collect();
        headers.remove(header::SET_COOKIE);
        for v in kept {
            headers.append(header::SET_COOKIE, v);
        }
    }
    removed
}

/// `SameSite` attribute values.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Deserialize, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum SameSite {
    Lax,
    Strict,
    None,
}

/// Cookie attributes from `cookies.*`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CookieAttributes {
    pub name: String,
    pub path: String,
    pub domain: Option<String>,
    pub secure: bool,
    pub http_only: bool,
    pub same_site: SameSite,
    /// Lifetime of a persistent cookie in seconds; `None` = browser-session cookie.
    pub max_age: Option<u64>,
}

impl CookieAttributes {
    fn render(&self, value: &str, max_age: Option<u64>, clearing: bool) -> HeaderValue {
        let mut c = cookie::Cookie::new(self.name.as_str(), value);
        c.set_path(self.path.as_str());
        if let Some(d) = &self.domain {
            c.set_domain(d.as_str());
        }
        c.set_secure(self.secure);
        c.set_http_only(self.http_only);
        c.set_same_site(match self.same_site {
            SameSite::Lax => cookie::SameSite::Lax,
            SameSite::Strict => cookie::SameSite::Strict,
            SameSite::None => cookie::SameSite::None,
        });
        let mut out = c.to_string();
        if clearing {
            out.push_str("; Max-Age=0; Expires=Thu, 01 Jan 1970 00:00:00 GMT");
        } else if let Some(secs) = max_age {
            out.push_str("; Max-Age=");
            out.push_str(&secs.to_string());
        }
        // Names and values are validated at config time and ids are base64url, so the
        // rendered string is always a valid header value; fall back to an empty clear.
        HeaderValue::try_from(out).unwrap_or_else(|_| HeaderValue::from_static(""))
    }

    /// `Set-Cookie` carrying a session: `max_age` is the session's own lifetime
    /// (`X-Session-Max-Age`) when set, else the configured one.
    pub fn issue(&self, value: &str, session_max_age: Option<u64>) -> HeaderValue {
        self.render(value, session_max_age.or(self.max_age), false)
    }

    /// `Set-Cookie` that removes the cookie, with the same scope (docs/security.md §9).
    pub fn clear(&self) -> HeaderValue {
        self.render("", None, true)
    }
}

/// A response that sets the session cookie must not be stored by shared caches: add
/// `private`, remove `public` and `s-maxage` (docs/protocol.md §6.5).
pub fn make_private(headers: &mut HeaderMap) {
    let mut directives: Vec<String> = Vec::new();
    for v in headers.get_all(header::CACHE_CONTROL) {
        let Ok(v) = v.to_str() else { continue };
        for d in v.split(',') {
            let d = d.trim();
            let name = d
                .split('=')
                .next()
                .unwrap_or("")
                .trim()
                .to_ascii_lowercase();
            if d.is_empty() || name == "public" || name == "s-maxage" || name == "private" {
                continue;
            }
            directives.push(d.to_owned());
        }
    }
    directives.insert(0, "private".to_owned());
    headers.remove(header::CACHE_CONTROL);
    if let Ok(v) = HeaderValue::try_from(directives.join(", ")) {
        headers.insert(header::CACHE_CONTROL, v);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const A: &str = "acceptance-secret-A-0123456789abcdefghijklmnopqrstuvwxyz";
    const B: &str = "acceptance-secret-B-0123456789abcdefghijklmnopqrstuvwxyz";

    fn hm(cookies: &[&str]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for c in cookies {
            h.append(header::COOKIE, HeaderValue::from_str(c).unwrap());
        }
        h
    }

    #[test]
    fn known_vector_matches_spec_formula() {
        // Computed with Python: hmac.new(A, b"session|AAAAAAAAAAAAAAAAAAAAAA", sha256)
        let s = CookieSigner::new("session", &[A]);
        let id = SessionId::from_trusted("AAAAAAAAAAAAAAAAAAAAAA");
        let v = s.sign(&id);
        assert!(v.starts_with("AAAAAAAAAAAAAAAAAAAAAA."));
        assert_eq!(v.len(), 22 + 1 + 43);
        let ok = s.verify(&v).unwrap();
        assert_eq!(ok.id, id);
        assert!(!ok.needs_resign);
    }

    #[test]
    fn generated_ids_are_distinct_and_well_formed() {
        let a = SessionId::generate().unwrap();
        let b = SessionId::generate().unwrap();
        assert_ne!(a, b);
        assert_eq!(a.as_str().len(), 22);
        assert_eq!(format!("{a:?}"), "SessionId(<redacted>)");
    }

    #[test]
    fn rotation_verifies_old_and_asks_for_resign() {
        let old = CookieSigner::new("session", &[B]);
        let id = SessionId::generate().unwrap();
        let v = old.sign(&id);
        let rotated = CookieSigner::new("session", &[A, B]);
        let ok = rotated.verify(&v).unwrap();
        assert!(ok.needs_resign);
        assert!(rotated.sign(&id) != v);
        assert!(CookieSigner::new("session", &[A]).verify(&v).is_none());
    }

    #[test]
    fn name_is_bound_and_tampering_fails() {
        let s = CookieSigner::new("session", &[A]);
        let id = SessionId::generate().unwrap();
        let v = s.sign(&id);
        assert!(CookieSigner::new("other", &[A]).verify(&v).is_none());
        let mut bad = v.clone().into_bytes();
        let last = bad.len() - 1;
        bad[last] = if bad[last] == b'A' { b'B' } else { b'A' };
        assert!(s.verify(std::str::from_utf8(&bad).unwrap()).is_none());
        for junk in ["", ".", "abc", "a.b", &format!("{v}x"), &v.replace('.', "")] {
            assert!(s.verify(junk).is_none(), "{junk}");
        }
    }

    #[test]
    fn first_valid_cookie_wins_over_tossed_ones() {
        let s = CookieSigner::new("session", &[A]);
        let id = SessionId::generate().unwrap();
        let good = s.sign(&id);
        let h = hm(&["session=forged; a=1", &format!("session={good}")]);
        assert_eq!(
            read_session_cookie(&h, &s),
            CookieState::Valid(VerifiedCookie {
                id,
                needs_resign: false
            })
        );
        assert_eq!(
            read_session_cookie(&hm(&["session=x"]), &s),
            CookieState::Invalid
        );
        assert_eq!(
            read_session_cookie(&hm(&["sessionx=1"]), &s),
            CookieState::Absent
        );
        assert_eq!(
            read_session_cookie(&HeaderMap::new(), &s),
            CookieState::Absent
        );
    }

    #[test]
    fn strip_keeps_other_cookies_and_joins_crumbs() {
        let mut h = hm(&["a=1; session=xyz", "b=2 ;session=q", "session=z"]);
        strip_session_cookie(&mut h, "session");
        assert_eq!(h.get_all(header::COOKIE).iter().count(), 1);
        assert_eq!(h[header::COOKIE], "a=1; b=2");
        let mut h = hm(&["session=only"]);
        strip_session_cookie(&mut h, "session");
        assert!(h.get(header::COOKIE).is_none());
    }

    #[test]
    fn set_cookie_rendering() {
        let attrs = CookieAttributes {
            name: "session".into(),
            path: "/".into(),
            domain: None,
            secure: true,
            http_only: true,
            same_site: SameSite::Lax,
            max_age: None,
        };
        let v = attrs.issue("abc.def", None);
        let v = v.to_str().unwrap();
        assert!(v.starts_with("session=abc.def"), "{v}");
        for part in ["Path=/", "Secure", "HttpOnly", "SameSite=Lax"] {
            assert!(v.contains(part), "{v}");
        }
        assert!(!v.contains("Max-Age") && !v.contains("Expires"), "{v}");
        assert!(
            attrs
                .issue("x", Some(3600))
                .to_str()
                .unwrap()
                .ends_with("Max-Age=3600")
        );
        let c = attrs.clear();
        assert!(c.to_str().unwrap().contains("Max-Age=0"));
    }

    #[test]
    fn upstream_set_cookie_for_our_name_is_removed() {
        let mut h = HeaderMap::new();
        for v in [
            "theme=dark; Path=/",
            "session=app-owned; Path=/",
            "sessionx=1",
            " session =x",
        ] {
            h.append(header::SET_COOKIE, HeaderValue::from_static(v));
        }
        assert_eq!(strip_upstream_session_cookie(&mut h, "session"), 2);
        let left: Vec<_> = h.get_all(header::SET_COOKIE).iter().collect();
        assert_eq!(left, ["theme=dark; Path=/", "sessionx=1"]);
    }

    #[test]
    fn private_replaces_public_and_s_maxage() {
        let mut h = HeaderMap::new();
        h.insert(
            header::CACHE_CONTROL,
            HeaderValue::from_static("public, max-age=60, s-maxage=300"),
        );
        make_private(&mut h);
        assert_eq!(h[header::CACHE_CONTROL], "private, max-age=60");
        let mut h = HeaderMap::new();
        make_private(&mut h);
        assert_eq!(h[header::CACHE_CONTROL], "private");
    }
}
