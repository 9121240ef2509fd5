//! Configuration parsing (`Config::from_yaml_str_with_env`, src/config/,
//! docs/configuration.md).
//!
//! Properties:
//! - no panic, whatever the text;
//! - every error points into the text: line ≥ 1 and at most the number of lines (YAML
//!   line breaks: `\r\n`, `\r`, `\n`), column ≥ 1 and at most one past that line's
//!   length in characters; its message is non-empty; message and hint contain no
//!   control characters (they reach the operator's terminal) and never a secret
//!   (`${SESSION_SECRET}` in `secrets`, `${REDIS_PASSWORD}` in `password` or anywhere
//!   in `url` but its host, `${ADMIN_TOKEN}` in `token`);
//! - a configuration that loads prints (`session-sidecar check`) without its secrets.
#![no_main]

use libfuzzer_sys::fuzz_target;
use serde_json::Value;
use session_sidecar::config::{Config, ConfigError};

/// Secret-bearing variables: name, value, and the keys (paths) whose values may
/// reference it.
const SECRETS: [(&str, &str, &[&[&str]]); 3] = [
    (
        "SESSION_SECRET",
        "fuzz-secret-0123456789abcdefghijklmnopqrstuvwxyz",
        &[&["secrets"]],
    ),
    (
        "REDIS_PASSWORD",
        "fuzz-redis-password-9f8e7d6c",
        &[
            &["store", "storage", "password"],
            &["store", "storage", "url"],
        ],
    ),
    (
        "ADMIN_TOKEN",
        "fuzz-admin-token-0123456789abcdefghijkl",
        &[&["admin", "token"]],
    ),
];

fn env(name: &str) -> Option<String> {
    if let Some((_, value, _)) = SECRETS.iter().find(|(n, ..)| *n == name) {
        return Some((*value).to_owned());
    }
    match name {
        "PORT" => Some("6379".to_owned()),
        "UPSTREAM" => Some("http://127.0.0.1:8000".to_owned()),
        "EMPTY" => Some(String::new()),
        _ => None,
    }
}

/// The scalars (and keys) whose text mentions `needle`: path and text.
type Found = Vec<(Vec<String>, String)>;

fn paths_with(v: &Value, needle: &str, path: &mut Vec<String>, out: &mut Found) {
    match v {
        Value::String(s) if s.contains(needle) => out.push((path.clone(), s.clone())),
        Value::Array(items) => {
            for (i, item) in items.iter().enumerate() {
                path.push(i.to_string());
                paths_with(item, needle, path, out);
                path.pop();
            }
        }
        Value::Object(map) => {
            for (k, item) in map {
                path.push(k.clone());
                if k.contains(needle) {
                    out.push((path.clone(), k.clone()));
                }
                paths_with(item, needle, path, out);
                path.pop();
            }
        }
        _ => {}
    }
}

/// Whether `name` is mentioned in the host part of a URL (`redis://${NAME}:6379`): a
/// host is printed as written, so a secret used as a host name is not a secret there.
/// Elsewhere (user info, path, query, fragment) the printout must hide it.
fn in_url_host(url: &str, name: &str) -> bool {
    let rest = url.split_once("://").map_or(url, |(_, r)| r);
    let authority = &rest[..rest.find(['/', '?', '#']).unwrap_or(rest.len())];
    let host = authority.rsplit_once('@').map_or(authority, |(_, h)| h);
    host.contains(name)
}

/// The secrets that must not show: those the text references only from their own keys
/// (`secrets`, `store.storage.password`, `store.storage.url` outside its host,
/// `admin.token`; read with a generic YAML parse) and never writes out itself. A secret
/// variable referenced from another key (`upstream: "${SESSION_SECRET}"`) is that key's
/// value, which messages may quote.
fn guarded(text: &str) -> Vec<&'static str> {
    let options = serde_saphyr::options! {
        budget: serde_saphyr::budget! {
            max_nodes: 20_000,
            max_depth: 16,
            max_documents: 1,
            max_total_scalar_bytes: 1024 * 1024,
        },
    };
    let Ok(tree) = serde_saphyr::from_str_with_options::<Value>(text, options) else {
        return Vec::new();
    };
    SECRETS
        .iter()
        .filter(|(name, value, keys)| {
            let mut found = Vec::new();
            paths_with(&tree, name, &mut Vec::new(), &mut found);
            !text.contains(value)
                && found.iter().all(|(p, scalar)| {
                    let under_key = keys
                        .iter()
                        .any(|k| p.len() >= k.len() && p[..k.len()] == **k);
                    let url = p.last().is_some_and(|k| k == "url");
                    under_key && !(url && in_url_host(scalar, name))
                })
        })
        .map(|(_, value, _)| *value)
        .collect()
}

/// The lines of `text` as YAML counts them, each as its characters.
fn lines(text: &str) -> Vec<usize> {
    let mut out = Vec::new();
    let mut chars = 0;
    let mut it = text.chars().peekable();
    while let Some(c) = it.next() {
        match c {
            '\r' => {
                if it.peek() == Some(&'\n') {
                    it.next();
                }
                out.push(chars);
                chars = 0;
            }
            '\n' => {
                out.push(chars);
                chars = 0;
            }
            _ => chars += 1,
        }
    }
    out.push(chars);
    out
}

fuzz_target!(|text: &str| {
    let path = std::path::Path::new("fuzz.yaml");
    match Config::from_yaml_str_with_env(text, path, &env) {
        Ok(config) => {
            let printed = config.redacted_yaml();
            for secret in guarded(text) {
                assert!(
                    !printed.contains(secret),
                    "the printout shows a secret:\n{printed}"
                );
            }
        }
        Err(e @ ConfigError::Invalid { .. }) => {
            let (line, column) = e.position().expect("a position");
            let lines = lines(text);
            assert!(line >= 1 && column >= 1, "{e}");
            let idx = usize::try_from(line - 1).unwrap();
            assert!(
                idx < lines.len(),
                "line {line} of {} lines: {e}",
                lines.len()
            );
            assert!(
                column <= lines[idx] as u64 + 1,
                "column {column} of a line of {} characters: {e}",
                lines[idx]
            );
            let message = e.message();
            assert!(!message.trim().is_empty(), "empty message");
            let hint = e.hint().unwrap_or("");
            for part in [message.as_str(), hint] {
                assert!(
                    !part.chars().any(char::is_control),
                    "control character: {part:?}"
                );
                for secret in guarded(text) {
                    assert!(!part.contains(secret), "a secret in a message: {e}");
                }
            }
            let shown = e.to_string();
            assert!(
                shown.starts_with(&format!("fuzz.yaml:{line}:{column}: ")),
                "{shown}"
            );
        }
        Err(e @ ConfigError::Io { .. }) => panic!("I/O error from text: {e}"),
    }
});
