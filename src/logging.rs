//! Logging setup (docs/configuration.md#admin-and-logging): `tracing` events to stderr, as
//! text or JSON lines.
//!
//! The filter is `log.level` from the config; a non-empty `RUST_LOG` overrides it so
//! an operator can raise verbosity for one run without editing the file.
//!
//! One access line per request is logged at `info` with the target
//! `session_sidecar::access` (see `proxy::Proxy::handle`): `method`, `path` (never the
//! query), `status`, `duration_ms`, `session` (the `X-Session-Status` value),
//! `request_id`, `protocol`. Cookie values, session data and secrets are never logged.
//! Filter it on its own, e.g. `warn,session_sidecar::access=info` (access lines only) or
//! `info,session_sidecar::access=off` (everything but access lines).

use tracing_subscriber::EnvFilter;

use crate::config::{LogConfig, LogFormat};

/// Installs the global subscriber. Calling it again (tests, a second init) is a no-op:
/// the first subscriber stays, which is the only sensible outcome for a process-wide
/// setting.
pub fn init(cfg: &LogConfig) {
    let filter = filter(cfg);
    // stderr keeps stdout free for command output (`check` prints YAML there). Colours
    // only on a terminal: a file, a pipe or a log collector gets plain text.
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(use_ansi())
        .with_target(true);
    let result = match cfg.format {
        LogFormat::Text => builder.try_init(),
        LogFormat::Json => builder.json().flatten_event(true).try_init(),
    };
    // Err only means a subscriber is already installed; keep that one.
    let _ = result;
}

/// ANSI colours when stderr is a terminal and `NO_COLOR` is unset (no-color.org).
fn use_ansi() -> bool {
    use std::io::IsTerminal as _;
    std::io::stderr().is_terminal() && std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty())
}

fn filter(cfg: &LogConfig) -> EnvFilter {
    if let Ok(env) = std::env::var(EnvFilter::DEFAULT_ENV)
        && !env.trim().is_empty()
    {
        match EnvFilter::try_new(&env) {
            Ok(f) => return f,
            Err(e) => {
                // No subscriber yet, so stderr is the only channel for this warning.
                eprintln!(
                    "warning: ignoring invalid {}: {e}; using log.level",
                    EnvFilter::DEFAULT_ENV
                );
            }
        }
    }
    // `log.level` was validated when the config was loaded; "info" is only a fallback.
    EnvFilter::try_new(&cfg.level).unwrap_or_else(|_| EnvFilter::new("info"))
}
