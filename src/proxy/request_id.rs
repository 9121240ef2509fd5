//! Request ids: one per request, in the access log line, in error bodies, and sent
//! upstream as `X-Request-Id` (always overwriting what the client sent).
//!
//! A client's own `X-Request-Id` is kept only when the peer is a trusted proxy
//! (`trusted_proxies`, the same rule as `X-Forwarded-*`) and the value is sane
//! ([`is_sane`]); anything else gets a fresh id, so an untrusted client can neither
//! forge log correlation nor smuggle odd bytes into logs and error bodies.

use std::sync::atomic::{AtomicU64, Ordering};

use http::{HeaderMap, HeaderName};

/// `X-Request-Id`.
pub const X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

/// The longest client-supplied id that is kept.
pub const MAX_LEN: usize = 200;

/// A usable id: 1..=[`MAX_LEN`] bytes of visible ASCII without `,` (a list separator:
/// a second header merged in), `"` and `\` (quoting in text logs).
pub fn is_sane(value: &[u8]) -> bool {
    !value.is_empty()
        && value.len() <= MAX_LEN
        && value
            .iter()
            .all(|&b| b.is_ascii_graphic() && !matches!(b, b',' | b'"' | b'\\'))
}

/// The id a trusted proxy sent, if there is exactly one and it is sane.
pub fn from_trusted(headers: &HeaderMap) -> Option<&str> {
    let mut values = headers.get_all(&X_REQUEST_ID).iter();
    let first = values.next()?;
    if values.next().is_some() || !is_sane(first.as_bytes()) {
        return None;
    }
    first.to_str().ok()
}

/// Generated ids: a random per-process prefix and a counter (16 hex digits). Unique
/// enough to find one request in the logs, free of syscalls on the request path.
#[derive(Debug)]
pub struct RequestIds {
    prefix: u32,
    counter: AtomicU64,
}

impl Default for RequestIds {
    fn default() -> Self {
        Self::new()
    }
}

impl RequestIds {
    pub fn new() -> Self {
        let mut raw = [0u8; 4];
        // A failed random source only makes ids less unique across restarts.
        let _ = getrandom::fill(&mut raw);
        RequestIds {
            prefix: u32::from_le_bytes(raw),
            counter: AtomicU64::new(0),
        }
    }

    pub fn next(&self) -> String {
        let n = self.counter.fetch_add(1, Ordering::Relaxed);
        // `format!("{:08x}{:08x}", prefix, n)` by hand: this runs on every request, and
        // the formatting machinery was a visible share of its instructions
        // (docs/performance.md#what-the-profile-showed).
        match u32::try_from(n) {
            Ok(low) => {
                let mut id = String::with_capacity(16);
                push_hex8(&mut id, self.prefix);
                push_hex8(&mut id, low);
                id
            }
            // Past 2^32 requests `{:08x}` is wider than eight digits anyway.
            Err(_) => format!("{:08x}{n:x}", self.prefix),
        }
    }

    /// The id of a request: the trusted proxy's when `trusted` and sane, else a new one.
    pub fn for_request(&self, headers: &HeaderMap, trusted: bool) -> String {
        match trusted.then(|| from_trusted(headers)).flatten() {
            Some(id) => id.to_owned(),
            None => self.next(),
        }
    }
}

/// Eight lowercase hex digits, zero-padded (`{:08x}`).
fn push_hex8(out: &mut String, value: u32) {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    for shift in (0..8).rev() {
        out.push(char::from(DIGITS[((value >> (shift * 4)) & 0xf) as usize]));
    }
}

#[cfg(test)]
mod tests {
    use http::HeaderValue;

    use super::*;

    #[test]
    fn sane_values() {
        assert!(is_sane(b"abc-123"));
        assert!(is_sane(b"f47ac10b-58cc-4372-a567-0e02b2c3d479"));
        assert!(is_sane(
            b"Root=1-67891233-abcdef012345678912345678;Parent=53995c3f"
        ));
        assert!(is_sane(&[b'a'; MAX_LEN]));
        assert!(!is_sane(&[b'a'; MAX_LEN + 1]));
        assert!(!is_sane(b""));
        assert!(!is_sane(b"a b"));
        assert!(!is_sane(b"a,b"));
        assert!(!is_sane(b"a\"b"));
        assert!(!is_sane(b"a\\b"));
        assert!(!is_sane(b"a\tb"));
        assert!(!is_sane(b"a\x7fb"));
        assert!(!is_sane("é".as_bytes()));
    }

    #[test]
    fn trusted_ids_are_kept_only_when_single_and_sane() {
        let ids = RequestIds::new();
        let mut h = HeaderMap::new();
        h.insert(X_REQUEST_ID, HeaderValue::from_static("upstream-lb-42"));
        assert_eq!(ids.for_request(&h, true), "upstream-lb-42");
        assert_ne!(ids.for_request(&h, false), "upstream-lb-42");

        h.append(X_REQUEST_ID, HeaderValue::from_static("second"));
        assert_ne!(ids.for_request(&h, true), "upstream-lb-42");

        h.insert(X_REQUEST_ID, HeaderValue::from_static("has space"));
        let generated = ids.for_request(&h, true);
        assert_eq!(generated.len(), 16);
        assert!(generated.bytes().all(|b| b.is_ascii_hexdigit()));
        assert!(is_sane(generated.as_bytes()));
    }

    #[test]
    fn generated_ids_differ() {
        let ids = RequestIds::new();
        assert_ne!(ids.next(), ids.next());
    }

    #[test]
    fn generated_ids_are_prefix_then_counter_in_hex() {
        let ids = RequestIds {
            prefix: 0x0a1b_2c3d,
            counter: AtomicU64::new(0xbeef),
        };
        assert_eq!(ids.next(), "0a1b2c3d0000beef");
        assert_eq!(ids.next(), format!("{:08x}{:08x}", 0x0a1b_2c3d, 0xbef0));
        ids.counter.store(u64::from(u32::MAX), Ordering::Relaxed);
        assert_eq!(ids.next(), "0a1b2c3dffffffff");
        assert_eq!(ids.next(), "0a1b2c3d100000000");
    }
}
