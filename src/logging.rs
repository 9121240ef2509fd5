//! Logging setup (SPEC §9): `tracing` events to stderr, as text or JSON lines.
//!
//! The filter is `log.level` from the config; a non-empty `RUST_LOG` overrides it so
//! an operator can raise verbosity for one run without editing the file.

use tracing_subscriber::EnvFilter;

use crate::config::{LogConfig, LogFormat};

/// Installs the global subscriber. Calling it again (tests, a second init) is a no-op:
/// the first subscriber stays, which is the only sensible outcome for a process-wide
/// setting.
pub fn init(cfg: &LogConfig) {
    let filter = filter(cfg);
    // stderr keeps stdout free for command output (`check` prints YAML there).
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_target(true);
    let result = match cfg.format {
        LogFormat::Text => builder.try_init(),
        LogFormat::Json => builder.json().flatten_event(true).try_init(),
    };
    // Err only means a subscriber is already installed; keep that one.
    let _ = result;
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
