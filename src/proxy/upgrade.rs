//! Protocol upgrades (WebSocket and any `Upgrade`, SPEC §8.2): after the upstream
//! answers `101`, both upgraded connections are joined byte for byte.

use hyper::upgrade::OnUpgrade;
use hyper_util::rt::TokioIo;
use tokio_util::task::TaskTracker;

/// Join the client's and the upstream's upgraded connections in a background task.
/// Session headers were injected on the handshake request and the `101` response's
/// instructions applied like any other; from here on bytes are opaque. The task runs on
/// `tunnels`, so graceful shutdown can wait for it (hyper's does not see tunnels).
pub fn spawn_tunnel(tunnels: &TaskTracker, client: OnUpgrade, upstream: OnUpgrade) {
    tunnels.spawn(async move {
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
    });
}
