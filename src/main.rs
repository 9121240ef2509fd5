//! `session-sidecar`: run the proxy, check a configuration, or make a secret.

use std::{path::PathBuf, process::ExitCode};

use anyhow::Context as _;
use base64::{Engine as _, engine::general_purpose::URL_SAFE_NO_PAD};
use clap::{Parser, Subcommand};
use session_sidecar::{config::Config, logging, server};

/// Exit status for a configuration or usage problem (clap uses 2 for usage too).
const EXIT_CONFIG: u8 = 2;

#[derive(Debug, Parser)]
#[command(
    name = "session-sidecar",
    version,
    about = "A reverse proxy that gives server-side sessions to unmodified web apps \
             through HTTP headers",
    long_about = "A reverse proxy that gives server-side sessions to unmodified web apps \
                  through HTTP headers.\n\n\
                  Without a subcommand it runs the proxy with the given configuration:\n\n  \
                  session-sidecar --config sidecar.yaml\n\n\
                  The configuration reference is docs/configuration.md; values may use \
                  ${VAR} to read environment variables (e.g. secrets)."
)]
struct Cli {
    /// The YAML configuration file (e.g. sidecar.yaml).
    #[arg(
        short,
        long,
        value_name = "FILE",
        env = "SIDECAR_CONFIG",
        global = true
    )]
    config: Option<PathBuf>,

    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Validate the configuration and print the effective config (defaults filled in,
    /// secrets redacted). Exit status 0 when valid, 2 otherwise.
    Check,
    /// Print a fresh random secret for `secrets:` (32 random bytes, base64url).
    GenSecret,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Some(Command::GenSecret) => gen_secret(),
        Some(Command::Check) => check(cli.config),
        None => run(cli.config),
    }
}

fn gen_secret() -> ExitCode {
    let mut bytes = [0u8; 32];
    match getrandom::fill(&mut bytes) {
        Ok(()) => {
            println!("{}", URL_SAFE_NO_PAD.encode(bytes));
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("error: the OS random source failed: {e}");
            ExitCode::FAILURE
        }
    }
}

/// Loads the configuration named by `--config` / `SIDECAR_CONFIG`, printing the problem
/// on failure.
fn load(path: Option<PathBuf>) -> Result<Config, ExitCode> {
    let Some(path) = path else {
        eprintln!(
            "error: no configuration file given\n  hint: pass it with `--config sidecar.yaml` \
             (or set SIDECAR_CONFIG=sidecar.yaml); the repository has a commented sample \
             sidecar.yaml"
        );
        return Err(ExitCode::from(EXIT_CONFIG));
    };
    Config::load(&path).map_err(|e| {
        eprintln!("{e}");
        ExitCode::from(EXIT_CONFIG)
    })
}

fn check(path: Option<PathBuf>) -> ExitCode {
    let config = match load(path) {
        Ok(config) => config,
        Err(code) => return code,
    };
    // Build what `run` builds before it binds (certificates, store, upstream client) and
    // drop it: what `check` accepts, `run` starts.
    let prepared = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start the tokio runtime")
        .and_then(|runtime| runtime.block_on(async { server::prepare(&config).map(drop) }));
    if let Err(e) = prepared {
        eprintln!("{}: {e:#}", config.path.display());
        return ExitCode::from(EXIT_CONFIG);
    }
    // stdout gets only YAML, so the output can be piped or diffed.
    print!("{}", config.redacted_yaml());
    eprintln!("{}: OK", config.path.display());
    ExitCode::SUCCESS
}

fn run(path: Option<PathBuf>) -> ExitCode {
    let config = match load(path) {
        Ok(c) => c,
        Err(code) => return code,
    };
    logging::init(&config.log);
    match serve(config) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!(error = format!("{e:#}"), "session-sidecar stopped");
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// The control plane (signals, reloads, the admin listener) on this thread's runtime;
/// the proxy listener on `workers` threads of their own (docs/performance.md#a-runtime-per-core).
fn serve(config: Config) -> anyhow::Result<()> {
    let workers = config.workers.count();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start the tokio runtime")?;
    let result = runtime.block_on(server::run(config, workers));
    // The drain already had `timeouts.shutdown`; dropping the runtime would wait without
    // bound for blocking work (a DNS lookup to a hung resolver, say).
    runtime.shutdown_timeout(std::time::Duration::from_secs(1));
    result
}
