//! Randomised robustness of the parsers that see network input (a seeded generator, so
//! every run checks the same cases and a failure reproduces): they never panic, the
//! reserved family never survives stripping in any spelling, and whatever the protocol
//! accepts comes out as ASCII-only, valid JSON that means the same thing.

use http::{HeaderMap, HeaderName, HeaderValue};
use serde_json::{Value, json};
use session_sidecar::{
    config::Config,
    cookie::{CookieSigner, CookieState, SessionId, read_session_cookie},
    protocol::{Op, ReservedPrefix},
};

/// xorshift64*: small, deterministic, good enough to spread cases.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }

    fn pick<'a, T>(&mut self, items: &'a [T]) -> &'a T {
        &items[self.below(items.len())]
    }
}

const NAME_PARTS: &[&str] = &[
    "x-session",
    "X-Session",
    "X_SESSION",
    "x.session",
    "x-sessio",
    "-set",
    "_set",
    ".set",
    "-Delete",
    "-incr",
    "-replace",
    "-flash-set",
    "-FLASH_SET",
    "-regenerate",
    "-destroy",
    "-max-age",
    "-id",
    "-status",
    "-foo",
    "content-type",
    "x-other",
    "set",
    "cookie",
];

fn random_name(rng: &mut Rng) -> HeaderName {
    loop {
        let parts = 1 + rng.below(3);
        let name: String = (0..parts).map(|_| *rng.pick(NAME_PARTS)).collect();
        if let Ok(n) = HeaderName::from_bytes(name.as_bytes()) {
            return n;
        }
    }
}

const VALUE_BYTES: &[u8] = b"{}[]\":,0123456789.-+eE tnrufals\\/abc\t";

fn random_value(rng: &mut Rng) -> HeaderValue {
    let templates: &[&str] = &[
        r#"{"a":1}"#,
        r#"["a","b"]"#,
        r#"{"n":-3}"#,
        r#"{"a":{"b":[1,2,{"c":null}]}}"#,
        "1",
        r#"{"a":1,"a":2}"#,
        r#"{"":1}"#,
        "3600",
        "0",
        r#"{"k":"\u00e9\ud83d\ude00"}"#,
    ];
    let mut bytes: Vec<u8> = if rng.below(2) == 0 {
        rng.pick(templates).as_bytes().to_vec()
    } else {
        (0..rng.below(40)).map(|_| *rng.pick(VALUE_BYTES)).collect()
    };
    // Mutate: flip, insert or cut a few bytes, sometimes a non-ASCII byte.
    for _ in 0..rng.below(3) {
        let pos = if bytes.is_empty() {
            0
        } else {
            rng.below(bytes.len())
        };
        match rng.below(4) {
            0 if !bytes.is_empty() => {
                bytes.remove(pos);
            }
            1 => bytes.insert(pos, 0x80 + rng.below(0x7f) as u8),
            _ => bytes.insert(pos, *rng.pick(VALUE_BYTES)),
        }
    }
    HeaderValue::from_bytes(&bytes).unwrap_or_else(|_| HeaderValue::from_static("x"))
}

fn is_printable_ascii(s: &str) -> bool {
    s.bytes().all(|b| (0x20..0x7f).contains(&b))
}

#[test]
fn instruction_parsing_never_panics_and_always_strips() {
    let prefix = ReservedPrefix::new("X-Session").unwrap();
    let mut rng = Rng(0x5eed_0001);
    for _ in 0..20_000 {
        let mut headers = HeaderMap::new();
        for _ in 0..1 + rng.below(6) {
            headers.append(random_name(&mut rng), random_value(&mut rng));
        }
        let result = prefix.take_instructions(&mut headers);
        assert!(
            headers.keys().all(|k| !prefix.is_reserved(k.as_str())),
            "reserved header survived: {headers:?}"
        );
        let Ok(changes) = result else { continue };
        for op in &changes.ops {
            let (field, value) = match op {
                Op::Set(f, v) | Op::FlashSet(f, v) => (f.as_str(), Some(v.as_str())),
                Op::Delete(f) => (f.as_str(), None),
                Op::Incr(f, _) => (f.as_str(), None),
                Op::ClearData => continue,
            };
            assert!(is_printable_ascii(field), "{field:?}");
            let key: Value = serde_json::from_str(field).expect("field is a JSON string");
            assert!(
                key.as_str()
                    .is_some_and(|k| !k.is_empty() && k.len() <= 256)
            );
            if let Some(v) = value {
                assert!(is_printable_ascii(v), "{v:?}");
                serde_json::from_str::<Value>(v).expect("value is JSON");
            }
        }
    }
}

#[test]
fn strip_removes_every_spelling_from_requests() {
    let prefix = ReservedPrefix::new("X-Session").unwrap();
    let mut rng = Rng(0x5eed_0002);
    for _ in 0..20_000 {
        let mut headers = HeaderMap::new();
        for _ in 0..1 + rng.below(8) {
            headers.append(random_name(&mut rng), random_value(&mut rng));
        }
        let kept_before: usize = headers
            .keys()
            .filter(|k| !prefix.is_reserved(k.as_str()))
            .map(|k| headers.get_all(k).iter().count())
            .sum();
        prefix.strip(&mut headers);
        for k in headers.keys() {
            let norm = k.as_str().to_ascii_lowercase().replace(['_', '.'], "-");
            assert!(!norm.starts_with("x-session"), "{k}");
        }
        assert_eq!(
            headers.len(),
            kept_before,
            "only reserved names are removed"
        );
    }
}

fn random_json(rng: &mut Rng, depth: usize) -> Value {
    match rng.below(if depth > 3 { 5 } else { 7 }) {
        0 => Value::Null,
        1 => json!(rng.below(2) == 0),
        2 => json!(rng.next() as i64),
        3 => json!((rng.below(1_000_000) as f64) / 64.0),
        4 => {
            let alphabet = [
                'a', 'é', '日', '😀', '"', '\\', '\n', '\u{0}', '\u{7f}', '\u{2028}', ' ',
            ];
            json!(
                (0..rng.below(8))
                    .map(|_| *rng.pick(&alphabet))
                    .collect::<String>()
            )
        }
        5 => Value::Array(
            (0..rng.below(4))
                .map(|_| random_json(rng, depth + 1))
                .collect(),
        ),
        _ => {
            let mut m = serde_json::Map::new();
            for i in 0..rng.below(4) {
                m.insert(format!("k{i}é"), random_json(rng, depth + 1));
            }
            Value::Object(m)
        }
    }
}

#[test]
fn accepted_values_round_trip_to_the_same_json() {
    let prefix = ReservedPrefix::new("X-Session").unwrap();
    let mut rng = Rng(0x5eed_0003);
    for _ in 0..5_000 {
        let value = random_json(&mut rng, 0);
        let object = json!({ "key": value });
        // What an app would send: JSON text with raw UTF-8 (DEL escaped: a header
        // value cannot hold it).
        let text = object.to_string().replace('\u{7f}', "\\u007f");
        let mut headers = HeaderMap::new();
        headers.insert(
            "x-session-set",
            HeaderValue::from_bytes(text.as_bytes()).unwrap(),
        );
        let changes = prefix
            .take_instructions(&mut headers)
            .expect("valid JSON accepted");
        let [Op::Set(field, stored)] = changes.ops.as_slice() else {
            panic!("{:?}", changes.ops)
        };
        assert_eq!(field, "\"key\"");
        assert!(is_printable_ascii(stored), "{stored:?}");
        let back: Value = serde_json::from_str(stored).unwrap();
        assert_eq!(back, value, "{stored}");
    }
}

#[test]
fn cookie_reading_never_panics_and_only_accepts_signed_ids() {
    let signer = CookieSigner::new("session", &["robustness-secret-0123456789abcdefghijklmnop"]);
    let good = signer.sign(&SessionId::generate().unwrap());
    let mut rng = Rng(0x5eed_0004);
    let alphabet: &[u8] = b"session=;. _-abcAB0123456789\t";
    for _ in 0..20_000 {
        let mut bytes: Vec<u8> = (0..rng.below(120)).map(|_| *rng.pick(alphabet)).collect();
        if rng.below(4) == 0 {
            let at = rng.below(bytes.len() + 1);
            bytes.splice(at..at, format!("session={good}").bytes());
        }
        let Ok(value) = HeaderValue::from_bytes(&bytes) else {
            continue;
        };
        let mut headers = HeaderMap::new();
        headers.insert(http::header::COOKIE, value);
        if let CookieState::Valid(v) = read_session_cookie(&headers, &signer) {
            assert_eq!(signer.sign(&v.id), good, "only the signed id verifies");
        }
    }
}

#[test]
fn config_parsing_never_panics_on_mangled_files() {
    let base = "listen: 127.0.0.1:8080\nupstream: http://127.0.0.1:8000\nsecrets: [\"0123456789abcdef0123456789abcdef\"]\nstore:\n  engine: redis\n  storage: {host: h, port: 1, db_sessions: 2}\nsession: {ttl: 1d, max_size: 8KiB}\ncookies: {name: __Host-s, same_site: none}\nbypass: [/static/]\n";
    let mut rng = Rng(0x5eed_0005);
    let noise: &[u8] = b" :-[]{}\n\"'#&*!|>%@`,?0123456789abcdefghijklmnopqrstuvwxyz${}";
    for _ in 0..3_000 {
        let mut bytes = base.as_bytes().to_vec();
        for _ in 0..1 + rng.below(4) {
            let pos = rng.below(bytes.len());
            match rng.below(3) {
                0 => {
                    bytes.remove(pos);
                }
                1 => bytes.insert(pos, *rng.pick(noise)),
                _ => bytes[pos] = *rng.pick(noise),
            }
        }
        let text = String::from_utf8_lossy(&bytes);
        match Config::from_yaml_str(&text, std::path::Path::new("fuzz.yaml")) {
            Ok(_) => {}
            Err(e) => {
                let msg = e.to_string();
                assert!(msg.starts_with("fuzz.yaml:"), "{msg}");
                assert!(
                    !msg.contains("0123456789abcdef0123456789abcdef"),
                    "secret leaked: {msg}"
                );
            }
        }
    }
}
