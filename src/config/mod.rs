//! The YAML configuration (docs/configuration.md): schema, defaults, `${VAR}` expansion,
//! validation with `FILE:LINE:COLUMN` errors and hints, and the redacted printout of
//! `session-sidecar check`.
//!
//! Loading goes in three steps:
//! 1. serde-saphyr parses the text into private `Raw*` structs (`deny_unknown_fields`,
//!    every key optional, values wrapped in [`serde_saphyr::Spanned`] so that later checks
//!    can point at the offending value). Duplicate keys and oversized/alias-bomb documents
//!    are rejected by the parser.
//! 2. `${VAR}` references are expanded in string scalars *after* parsing, so a value
//!    from the environment can never change the document structure.
//! 3. Defaults are applied and every rule is checked while building [`Config`]; the
//!    first problem becomes a [`ConfigError`] (`FILE:LINE:COLUMN: message` + hint).
//!
//! Value syntax accepted everywhere:
//! - durations: `500ms`, `10s`, `5m`, `2h`, `1d`, or a bare integer meaning seconds
//!   (`30` = `30s`); at most `3650d`, so that time arithmetic downstream cannot overflow;
//! - sizes: `512B`, `8KB` (= 8000), `8KiB` (= 8192), `1MB`, `1MiB`, `1GB`, `1GiB` (units
//!   case-insensitive), or a bare integer meaning bytes.
//!
//! Numbers and booleans may also be written as strings (`port: "${REDIS_PORT}"`),
//! which is what makes `${VAR}` usable for them.

//! The code is split by job: `types` (the public types and their defaults), `raw`
//! (the position-tagged serde structs), `reader` (scalar readers and error
//! construction), `sections` and `store` (one builder per section), `values` (pure
//! value parsers), `expand` (`${VAR}`), `suggest` (did-you-mean) and `redact` (the
//! printout of `session-sidecar check`).

mod expand;
mod raw;
mod reader;
mod redact;
mod sections;
mod store;
mod suggest;
#[cfg(test)]
mod testutil;
mod types;
mod values;

use std::path::Path;

use raw::RawConfig;
pub use reader::ConfigError;
use reader::Ctx;
pub use types::*;

/// The largest file `load` reads: a config is a few KiB; this bounds memory before the
/// parser's own budgets apply.
const MAX_FILE_BYTES: u64 = 1024 * 1024;

/// Looks up an environment variable for `${VAR}` expansion.
pub type EnvLookup<'a> = &'a dyn Fn(&str) -> Option<String>;

fn process_env(name: &str) -> Option<String> {
    std::env::var(name).ok()
}

impl Config {
    /// Reads, expands, validates the file at `path`.
    ///
    /// # Errors
    /// [`ConfigError::Io`] when the file cannot be read (or exceeds 1 MiB),
    /// [`ConfigError::Invalid`] for any syntax or validation problem.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        use std::io::Read;
        let io = |error| ConfigError::Io {
            path: path.to_path_buf(),
            error,
        };
        let file = std::fs::File::open(path).map_err(io)?;
        let mut bytes = Vec::new();
        file.take(MAX_FILE_BYTES + 1)
            .read_to_end(&mut bytes)
            .map_err(io)?;
        if bytes.len() as u64 > MAX_FILE_BYTES {
            return Err(io(std::io::Error::other(
                "file is larger than 1 MiB; this is not a configuration file",
            )));
        }
        let text = match String::from_utf8(bytes) {
            Ok(t) => t,
            Err(e) => {
                let valid = &e.as_bytes()[..e.utf8_error().valid_up_to()];
                let line = 1 + valid.iter().filter(|&&b| b == b'\n').count() as u64;
                let col_start = valid.iter().rposition(|&b| b == b'\n').map_or(0, |i| i + 1);
                let column =
                    1 + String::from_utf8_lossy(&valid[col_start..]).chars().count() as u64;
                return Err(ConfigError::Invalid {
                    path: path.to_path_buf(),
                    line,
                    column,
                    message: "the file is not valid UTF-8".into(),
                    hint: Some("save the configuration as UTF-8 text".into()),
                });
            }
        };
        Self::from_yaml_str(&text, path)
    }

    /// Parses `text` as if read from `path` (used for messages and to resolve relative
    /// TLS file paths), expanding `${VAR}` from the process environment.
    ///
    /// # Errors
    /// [`ConfigError::Invalid`] for any syntax or validation problem.
    pub fn from_yaml_str(text: &str, path: &Path) -> Result<Config, ConfigError> {
        Self::from_yaml_str_with_env(text, path, &process_env)
    }

    /// As [`Config::from_yaml_str`], with `${VAR}` looked up through `env` instead of
    /// the process environment (tests: no global state to mutate).
    ///
    /// # Errors
    /// [`ConfigError::Invalid`] for any syntax or validation problem.
    pub fn from_yaml_str_with_env(
        text: &str,
        path: &Path,
        env: EnvLookup<'_>,
    ) -> Result<Config, ConfigError> {
        let ctx = Ctx { path, env };
        let options = serde_saphyr::options! {
            // We render locations ourselves as FILE:LINE:COLUMN.
            with_snippet: false,
            // A config is small: a tight budget turns hostile or broken input into an
            // error quickly.
            budget: serde_saphyr::budget! {
                max_nodes: 20_000,
                max_depth: 16,
                max_documents: 1,
                max_total_scalar_bytes: 1024 * 1024,
            },
            // An unknown `!tag` is a mistake in a config, never something to ignore.
            reject_unsupported_tags: true,
        };
        let raw: RawConfig =
            serde_saphyr::from_str_with_options(text, options).map_err(|e| ctx.yaml_error(&e))?;
        ctx.build(raw)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::testutil::*;

    #[test]
    fn minimal_config_gets_every_default() {
        let c = ok("");
        assert_eq!(c.path, PathBuf::from("conf/t.yaml"));
        assert_eq!(c.listen, "127.0.0.1:8080".parse::<SocketAddr>().unwrap());
        assert!(c.tls.is_none());
        assert_eq!(
            c.upstream,
            Upstream::Tcp {
                https: false,
                authority: "127.0.0.1:8000".into()
            }
        );
        assert!(c.upstream_tls.is_none());
        assert_eq!(c.secrets, vec![Secret(SECRET_VALUE.into())]);
        assert_eq!(
            c.store.storage,
            Storage::Memory(MemoryOptions {
                max_entries: 100_000
            })
        );
        let r = ok("store: {engine: redis}\n");
        let s = redis(&r);
        assert_eq!(
            s.topology,
            RedisTopology::Server {
                host: "127.0.0.1".into(),
                port: 6379
            }
        );
        assert!(s.tls.is_none());
        assert!(s.username.is_none() && s.password.is_none());
        assert_eq!((s.db_sessions, s.db_notifications), (0, 1));
        assert_eq!(s.max_connections, 2);
        let m = ok("store: {engine: memcached}\n");
        assert_eq!(
            memcached(&m),
            &MemcachedOptions {
                servers: vec!["127.0.0.1:11211".to_owned()],
                max_connections: 16,
            }
        );
        assert_eq!(c.store.key_prefix, "session:");
        assert_eq!(c.store.timeout, Duration::from_millis(500));
        assert_eq!(c.store.on_error, OnError::Reject);
        assert_eq!(c.session.ttl, Duration::from_secs(86_400));
        assert_eq!(c.session.absolute_ttl, Duration::from_secs(30 * 86_400));
        assert_eq!(c.session.max_size, 8192);
        let k = &c.cookies;
        assert_eq!((k.name.as_str(), k.path.as_str()), ("session", "/"));
        assert!(k.domain.is_none());
        assert!(k.secure && k.http_only && !k.rolling && !k.forward);
        assert_eq!(k.same_site, SameSite::Lax);
        assert!(k.lifetime.is_none());
        assert_eq!(c.headers.prefix, "X-Session");
        assert!(!c.headers.expose_id);
        assert!(c.bypass.is_empty() && c.trusted_proxies.is_empty());
        let t = &c.timeouts;
        assert_eq!(t.header_read, Duration::from_secs(10));
        assert_eq!(t.body_read, Duration::from_secs(30));
        assert_eq!(t.upstream_connect, Duration::from_secs(5));
        assert_eq!(t.upstream_response, Duration::from_secs(60));
        assert_eq!(t.idle, Duration::from_secs(60));
        assert_eq!(t.shutdown, Duration::from_secs(30));
        assert_eq!(c.limits.max_header_size, 32 * 1024);
        assert_eq!(c.limits.max_connections, 10_000);
        assert_eq!(c.limits.max_connections_per_ip, Some(1024));
        assert_eq!(c.admin.listen, Some("127.0.0.1:9090".parse().unwrap()));
        assert_eq!(c.log.format, LogFormat::Text);
        assert_eq!(c.log.level, "info");
    }

    #[test]
    fn empty_sections_and_nulls_mean_defaults() {
        let c = ok("store:\nsession: {}\ncookies: {domain: null}\nlisten: ~\n");
        assert_eq!(c.store.storage.engine_name(), "memory");
        assert_eq!(c.listen.port(), 8080);
        assert!(c.cookies.domain.is_none());
    }

    #[test]
    fn sample_sidecar_yaml_is_valid() {
        let text = include_str!("../../sidecar.yaml");
        let c = Config::from_yaml_str_with_env(text, Path::new("sidecar.yaml"), &env)
            .unwrap_or_else(|e| panic!("sidecar.yaml:\n{e}"));
        assert_eq!(c.secrets, vec![Secret(SECRET_VALUE.into())]);
        assert_eq!(c.bypass, vec!["/static/", "/favicon.ico"]);
        // Without the variable it must fail, naming it.
        let e = Config::from_yaml_str_with_env(text, Path::new("sidecar.yaml"), &|_| None)
            .expect_err("needs SESSION_SECRET");
        assert!(e.message().contains("SESSION_SECRET"), "{e}");
    }

    #[test]
    fn display_is_file_line_column_message_hint() {
        let e = err("session:\n  ttl: 5x\n");
        assert_eq!(
            e.to_string(),
            "conf/t.yaml:4:8: `session.ttl`: \"5x\" is not a duration\n  hint: durations are \
             written like 500ms, 10s, 5m, 2h, 1d (a bare integer means seconds)"
        );
    }

    #[test]
    fn duplicate_keys_are_errors() {
        assert_err(
            "session:\n  ttl: 1h\n  ttl: 2h\n",
            5,
            3,
            "duplicate key `ttl`",
        );
        assert_err(
            "listen: 127.0.0.1:1\nlisten: 127.0.0.1:2\n",
            4,
            1,
            "duplicate",
        );
    }

    #[test]
    fn structural_errors_point_at_the_value() {
        let e = assert_err("session: 5\n", 3, 10, "expected a section");
        assert!(e.hint().is_some());
        assert_err("bypass: /static/\n", 3, 9, "expected a list");
        assert_err("listen: [a]\n", 3, 9, "single value");
        assert_err("session:\n  ttl: [1]\n", 4, 8, "found a list");
        assert_err("---\na: 1\n---\nb: 2\n", 3, 1, "");
        assert!(err("listen: !custom 1.2.3.4:5\n").message().contains("tag"));
    }

    #[test]
    fn alias_bombs_are_refused() {
        // No key takes an arbitrary nested structure: a bomb is refused by type at its
        // first element, before it expands (and the parser's budget stays as a
        // second line of defence).
        let mut yaml =
            String::from("store:\n  engine: redis\n  storage:\n    sentinel:\n      nodes:\n");
        yaml.push_str("        - &a0 [x, x, x, x, x, x, x, x, x, x]\n");
        for i in 1..9 {
            let p = i - 1;
            yaml.push_str(&format!(
                "        - &a{i} [*a{p}, *a{p}, *a{p}, *a{p}, *a{p}, *a{p}, *a{p}, *a{p}, *a{p}, *a{p}]\n"
            ));
        }
        let started = std::time::Instant::now();
        let e = parse(&yaml).expect_err("bomb");
        assert!(
            e.message().contains("too large") || e.message().contains("found a list"),
            "{e}"
        );
        assert!(
            started.elapsed() < std::time::Duration::from_secs(5),
            "not expanded"
        );
    }

    #[test]
    fn io_errors_and_non_utf8_files() {
        let e = Config::load(Path::new("/nonexistent/sidecar.yaml")).expect_err("missing");
        assert!(
            e.to_string()
                .starts_with("/nonexistent/sidecar.yaml: cannot read: "),
            "{e}"
        );
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("bad.yaml");
        std::fs::write(&path, b"listen: 1\nupstream: \"ab\xff\"\n").expect("write");
        let e = Config::load(&path).expect_err("not utf-8");
        assert_eq!(e.position(), Some((2, 14)), "{e}");
    }

    #[test]
    fn load_reads_a_file() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("s.yaml");
        let secret = "x".repeat(40);
        std::fs::write(
            &path,
            format!("upstream: unix:/run/app.sock\nsecrets: [{secret}]\ntls: {{cert: c.pem, key: /k.pem}}\n"),
        )
        .expect("write");
        let c = Config::load(&path).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(c.upstream, Upstream::Unix("/run/app.sock".into()));
        let tls = c.tls.expect("tls");
        assert_eq!(tls.cert, dir.path().join("c.pem"));
        assert_eq!(tls.key, PathBuf::from("/k.pem"));
    }
}
