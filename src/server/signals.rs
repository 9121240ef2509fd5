//! Process signals: `SIGTERM`/`SIGINT` ask for a graceful shutdown, `SIGHUP` for a
//! configuration reload.
//!
//! The handlers are installed once, before the listeners are bound, so a `SIGHUP` that
//! arrives while the sidecar starts is queued instead of killing it (the default action
//! of `SIGHUP`). They stay installed until the process exits: a `SIGHUP` during
//! shutdown is received and ignored.

/// What a signal asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Request {
    /// `SIGHUP`: re-read the configuration.
    Reload,
    /// `SIGTERM` or `SIGINT`: stop gracefully. The name is for the log.
    Shutdown(&'static str),
}

/// The installed handlers. Signals of one kind that arrive while the previous one is
/// being handled are coalesced by the OS and tokio (several `SIGHUP`s → one reload).
#[derive(Debug)]
pub struct Signals {
    #[cfg(unix)]
    hup: tokio::signal::unix::Signal,
    #[cfg(unix)]
    term: tokio::signal::unix::Signal,
    #[cfg(unix)]
    int: tokio::signal::unix::Signal,
}

impl Signals {
    /// Install the handlers.
    ///
    /// # Errors
    /// When the OS refuses a handler (practically never); the caller should not start
    /// without them, or `SIGTERM` would kill it without draining.
    pub fn install() -> std::io::Result<Signals> {
        #[cfg(unix)]
        {
            use tokio::signal::unix::{SignalKind, signal};
            Ok(Signals {
                hup: signal(SignalKind::hangup())?,
                term: signal(SignalKind::terminate())?,
                int: signal(SignalKind::interrupt())?,
            })
        }
        #[cfg(not(unix))]
        {
            Ok(Signals {})
        }
    }

    /// The next request. Reload requests are only delivered by this call, so a caller
    /// that stopped asking (shutting down) ignores `SIGHUP`.
    pub async fn recv(&mut self) -> Request {
        #[cfg(unix)]
        {
            // `recv` yields `None` only if the driver is gone (runtime shutting down):
            // treat that as a shutdown request rather than spinning.
            tokio::select! {
                r = self.hup.recv() => match r {
                    Some(()) => Request::Reload,
                    None => Request::Shutdown("signal driver closed"),
                },
                _ = self.term.recv() => Request::Shutdown("SIGTERM"),
                _ = self.int.recv() => Request::Shutdown("SIGINT"),
            }
        }
        #[cfg(not(unix))]
        {
            let _ = tokio::signal::ctrl_c().await;
            Request::Shutdown("Ctrl-C")
        }
    }

    /// Resolves on the next `SIGTERM` or `SIGINT`, ignoring `SIGHUP` (used while
    /// draining: a second stop signal ends the drain early).
    pub async fn next_shutdown(&mut self) -> &'static str {
        loop {
            if let Request::Shutdown(name) = self.recv().await {
                return name;
            }
        }
    }
}
