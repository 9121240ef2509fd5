//! Cookie verification and the `Cookie` header reader (src/cookie.rs,
//! docs/protocol.md §6).
//!
//! Input: text (first byte < 0x80) is one `Cookie` header value per line, read as the
//! cookie `session` with two fixed secrets ([`TEXT_SECRETS`]); other inputs build names,
//! secrets, oracle-signed and mutated values and `Cookie` headers with `arbitrary`.
//!
//! Properties:
//! - `verify` accepts a value exactly when it is `<id>.<mac>` with a canonical 16-byte
//!   id and the MAC of an independent HMAC-SHA256 over `name|id` with one of the secrets;
//!   `needs_resign` is set exactly when the first secret does not verify it;
//! - a value the signer produced verifies to its id, and a verified id re-signs to the
//!   same value (first secret); a mutated signed value verifies only if unchanged;
//! - `read_session_cookie` agrees with an independent reading of the `Cookie` headers
//!   (split on `;`, trim SP/HTAB, exact name, first that verifies);
//! - after `strip_session_cookie` no cookie of the session's name is left and every
//!   other pair is kept, in order.
#![no_main]

use arbitrary::Arbitrary;
use base64::{Engine, engine::general_purpose::URL_SAFE_NO_PAD};
use hmac::{Hmac, KeyInit, Mac};
use http::{HeaderMap, HeaderValue, header};
use libfuzzer_sys::fuzz_target;
use session_sidecar::cookie::{
    CookieSigner, CookieState, read_session_cookie, strip_session_cookie,
};
use sidecar_fuzz::{Mode, mode};

#[derive(Arbitrary, Debug)]
struct Input {
    name: Name,
    secrets: Vec<Vec<u8>>,
    /// An id to sign with the oracle, then mutate.
    id: [u8; 16],
    signer_index: u8,
    mutation: Mutation,
    /// A free-form value to verify.
    value: String,
    cookies: Vec<CookieHeader>,
}

#[derive(Arbitrary, Debug)]
enum Name {
    Session,
    HostPrefixed,
    Other(String),
}

impl Name {
    fn text(&self) -> String {
        match self {
            Name::Session => "session".to_owned(),
            Name::HostPrefixed => "__Host-sid".to_owned(),
            Name::Other(s) => s.clone(),
        }
    }
}

#[derive(Arbitrary, Debug)]
enum Mutation {
    None,
    Flip { at: u16, bit: u8 },
    Replace { at: u16, with: u8 },
    Insert { at: u16, byte: u8 },
    Remove { at: u16 },
    Truncate { at: u16 },
    Append(String),
}

#[derive(Arbitrary, Debug)]
enum CookieHeader {
    Raw(Vec<u8>),
    /// `pairs` joined with `;` and the given padding.
    Pairs(Vec<(Part, Part)>, u8),
}

#[derive(Arbitrary, Debug)]
enum Part {
    TheName,
    Signed(u8),
    Mutated,
    Text(String),
}

fn oracle_mac(secret: &[u8], name: &str, id: &str) -> String {
    let mut mac = <Hmac<sha2::Sha256> as KeyInit>::new_from_slice(secret).expect("any key length");
    mac.update(name.as_bytes());
    mac.update(b"|");
    mac.update(id.as_bytes());
    URL_SAFE_NO_PAD.encode(mac.finalize().into_bytes())
}

/// docs/protocol.md §6.1: which secret (index) signed `value`, if any.
fn oracle_verify(secrets: &[Vec<u8>], name: &str, value: &str) -> Option<(String, usize)> {
    let (id, mac) = value.split_once('.')?;
    let raw = URL_SAFE_NO_PAD.decode(id).ok()?;
    if raw.len() != 16 || URL_SAFE_NO_PAD.encode(&raw) != id {
        return None;
    }
    secrets
        .iter()
        .position(|s| oracle_mac(s, name, id) == mac)
        .map(|i| (id.to_owned(), i))
}

fn mutate(value: &str, m: &Mutation) -> String {
    let mut b = value.as_bytes().to_vec();
    let at = |i: u16, len: usize| if len == 0 { 0 } else { usize::from(i) % len };
    match m {
        Mutation::None => {}
        Mutation::Flip { at: i, bit } => {
            let i = at(*i, b.len());
            if let Some(x) = b.get_mut(i) {
                *x ^= 1 << (bit % 8);
            }
        }
        Mutation::Replace { at: i, with } => {
            let i = at(*i, b.len());
            if let Some(x) = b.get_mut(i) {
                *x = *with;
            }
        }
        Mutation::Insert { at: i, byte } => {
            let i = at(*i, b.len() + 1);
            b.insert(i, *byte);
        }
        Mutation::Remove { at: i } => {
            let i = at(*i, b.len());
            if i < b.len() {
                b.remove(i);
            }
        }
        Mutation::Truncate { at: i } => {
            let i = at(*i, b.len() + 1);
            b.truncate(i);
        }
        Mutation::Append(s) => b.extend_from_slice(s.as_bytes()),
    }
    String::from_utf8_lossy(&b).into_owned()
}

fn check_verify(signer: &CookieSigner, secrets: &[Vec<u8>], name: &str, value: &str) {
    let got = signer.verify(value);
    let want = oracle_verify(secrets, name, value);
    match (&got, &want) {
        (None, None) => {}
        (Some(v), Some((id, i))) => {
            assert_eq!(v.id.as_str(), id);
            assert_eq!(v.needs_resign, *i > 0, "needs_resign for secret #{i}");
            if *i == 0 {
                assert_eq!(signer.sign(&v.id), value, "re-signing changes the value");
            }
            // Re-signed with the first secret, it verifies without a resign.
            let resigned = signer.sign(&v.id);
            let again = signer.verify(&resigned).expect("own signature verifies");
            assert_eq!(again.id, v.id);
            assert!(!again.needs_resign);
        }
        _ => panic!("verify({value:?}) = {got:?}, oracle says {want:?}"),
    }
}

/// The pairs of every `Cookie` header as docs/protocol.md §6.4 reads them.
fn oracle_pairs(headers: &HeaderMap) -> Vec<(Vec<u8>, Vec<u8>)> {
    let trim = |s: &[u8]| -> Vec<u8> {
        let start = s.iter().position(|b| *b != b' ' && *b != b'\t');
        let end = s.iter().rposition(|b| *b != b' ' && *b != b'\t');
        match (start, end) {
            (Some(a), Some(z)) => s[a..=z].to_vec(),
            _ => Vec::new(),
        }
    };
    let mut out = Vec::new();
    for v in headers.get_all(header::COOKIE) {
        for pair in v.as_bytes().split(|b| *b == b';') {
            let pair = trim(pair);
            if let Some(eq) = pair.iter().position(|b| *b == b'=') {
                out.push((trim(&pair[..eq]), trim(&pair[eq + 1..])));
            }
        }
    }
    out
}

/// The signer of text inputs (and of the seed cookies in `fuzz/corpus/cookie/`).
const TEXT_NAME: &str = "session";
const TEXT_SECRETS: [&[u8]; 2] = [
    b"fuzz-secret-one-0123456789abcdef0123",
    b"fuzz-secret-two-0123456789abcdef0123",
];

/// `read_session_cookie` and `strip_session_cookie` against the oracle, and `verify` of
/// every pair's value.
fn check_cookies(signer: &CookieSigner, secrets: &[Vec<u8>], name: &str, headers: &HeaderMap) {
    let pairs = oracle_pairs(headers);
    for (_, v) in &pairs {
        if let Ok(v) = std::str::from_utf8(v) {
            check_verify(signer, secrets, name, v);
        }
    }
    let mut want = CookieState::Absent;
    for (n, v) in &pairs {
        if n.as_slice() != name.as_bytes() {
            continue;
        }
        let value = std::str::from_utf8(v).ok();
        if let Some((id, i)) = value.and_then(|v| oracle_verify(secrets, name, v)) {
            let v = signer.verify(value.unwrap()).expect("checked above");
            assert_eq!(v.id.as_str(), id);
            assert_eq!(v.needs_resign, i > 0);
            want = CookieState::Valid(v);
            break;
        }
        want = CookieState::Invalid;
    }
    assert_eq!(read_session_cookie(headers, signer), want);

    let mut stripped = headers.clone();
    strip_session_cookie(&mut stripped, name);
    assert!(stripped.get_all(header::COOKIE).iter().count() <= 1);
    assert_eq!(read_session_cookie(&stripped, signer), CookieState::Absent);
    let kept: Vec<_> = pairs
        .into_iter()
        .filter(|(n, _)| n.as_slice() != name.as_bytes())
        .collect();
    assert_eq!(
        oracle_pairs(&stripped),
        kept,
        "other cookies must survive, in order"
    );
}

/// Text: one `Cookie` header value per line, read with [`TEXT_NAME`] and
/// [`TEXT_SECRETS`]; each line is also verified as a cookie value.
fn text(data: &[u8]) {
    let secrets: Vec<Vec<u8>> = TEXT_SECRETS.iter().map(|s| s.to_vec()).collect();
    let signer = CookieSigner::new(TEXT_NAME, &secrets);
    let mut headers = HeaderMap::new();
    for line in data.split(|b| *b == b'\n') {
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        if let Ok(v) = std::str::from_utf8(line) {
            check_verify(&signer, &secrets, TEXT_NAME, v);
        }
        if let Ok(v) = HeaderValue::from_bytes(line) {
            headers.append(header::COOKIE, v);
        }
    }
    check_cookies(&signer, &secrets, TEXT_NAME, &headers);
}

fn structured(input: Input) {
    let name = input.name.text();
    let secrets: Vec<Vec<u8>> = input.secrets.into_iter().take(3).collect();
    let signer = CookieSigner::new(&name, &secrets);

    // A value signed by the oracle, and its mutation.
    let id = URL_SAFE_NO_PAD.encode(input.id);
    let signed: Vec<String> = secrets
        .iter()
        .map(|s| format!("{id}.{}", oracle_mac(s, &name, &id)))
        .collect();
    let chosen = if signed.is_empty() {
        id.clone()
    } else {
        signed[usize::from(input.signer_index) % signed.len()].clone()
    };
    check_verify(&signer, &secrets, &name, &chosen);
    if let Some(first) = signed.first() {
        assert!(
            signer.verify(first).is_some(),
            "a value signed with the first secret"
        );
    }
    let mutated = mutate(&chosen, &input.mutation);
    check_verify(&signer, &secrets, &name, &mutated);
    check_verify(&signer, &secrets, &name, &input.value);

    // The Cookie header reader.
    let mut headers = HeaderMap::new();
    for h in &input.cookies {
        let bytes = match h {
            CookieHeader::Raw(b) => b.clone(),
            CookieHeader::Pairs(pairs, pad) => {
                let pad = [";", "; ", ";\t", " ; "][usize::from(*pad % 4)];
                let part = |p: &Part| match p {
                    Part::TheName => name.clone(),
                    Part::Signed(i) if !signed.is_empty() => {
                        signed[usize::from(*i) % signed.len()].clone()
                    }
                    Part::Signed(_) => chosen.clone(),
                    Part::Mutated => mutated.clone(),
                    Part::Text(t) => t.clone(),
                };
                pairs
                    .iter()
                    .map(|(n, v)| format!("{}={}", part(n), part(v)))
                    .collect::<Vec<_>>()
                    .join(pad)
                    .into_bytes()
            }
        };
        if let Ok(v) = HeaderValue::from_bytes(&bytes) {
            headers.append(header::COOKIE, v);
        }
    }
    check_cookies(&signer, &secrets, &name, &headers);
}

fuzz_target!(|data: &[u8]| match mode(data) {
    Mode::Text(t) => text(t),
    Mode::Structured(u) => {
        if let Ok(input) = Input::arbitrary_take_rest(u) {
            structured(input);
        }
    }
});
