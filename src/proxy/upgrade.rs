//! Protocol upgrades (WebSocket and any `Upgrade`, docs/protocol.md §10.5): after the
//! upstream answers `101`, both upgraded connections are joined byte for byte.
//!
//! Tunnels outlive the HTTP connection that started them (hyper's connection future ends
//! at the `101`), so they are tracked here: shutdown closes the set, waits for the open
//! ones up to `timeouts.shutdown`, then cuts whatever is left.

use hyper::upgrade::OnUpgrade;
use hyper_util::rt::TokioIo;
use tokio_util::{sync::CancellationToken, task::TaskTracker};

/// The open upgraded tunnels of one sidecar.
#[derive(Debug, Default)]
pub struct Tunnels {
    tracker: TaskTracker,
    cut: CancellationToken,
}

impl Tunnels {
    pub fn new() -> Self {
        Self::default()
    }

    /// Join the client's and the upstream's upgraded connections in a background task.
    /// Session headers were injected on the handshake request and the `101` response's
    /// instructions applied like any other; from here on bytes are opaque.
    pub fn spawn(&self, client: OnUpgrade, upstream: OnUpgrade) {
        let cut = self.cut.clone();
        self.tracker.spawn(async move {
            tokio::select! {
                () = join(client, upstream) => {}
                () = cut.cancelled() => tracing::debug!("tunnel cut at the shutdown deadline"),
            }
        });
    }

    /// How many tunnels are open (or still completing their upgrade).
    pub fn len(&self) -> usize {
        self.tracker.len()
    }

    pub fn is_empty(&self) -> bool {
        self.tracker.is_empty()
    }

    /// No more tunnels will be added; [`Tunnels::wait`] can now finish.
    pub fn close(&self) {
        self.tracker.close();
    }

    /// Resolves once the set is closed and every tunnel has ended.
    pub async fn wait(&self) {
        self.tracker.wait().await;
    }

    /// End every open tunnel now (the shutdown deadline passed).
    pub fn cut_all(&self) {
        self.cut.cancel();
    }
}

async fn join(client: OnUpgrade, upstream: OnUpgrade) {
    let (client, upstream) = match tokio::try_join!(client, upstream) {
        Ok(pair) => pair,
        Err(e) => {
            tracing::debug!(error = %e, "upgrade failed");
            return;
        }
    };
    let mut client = TokioIo::new(client);
    let mut upstream = TokioIo::new(upstream);
    if let Err(e) = tokio::io::copy_bidirectional(&mut client, &mut upstream).await {
        tracing::debug!(error = %e, "tunnel closed with an error");
    }
}
