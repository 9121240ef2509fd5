//! The upstream connection pool: HTTP/1.1 keep-alive connections made with hyper's
//! low-level client (`hyper::client::conn::http1`), reused last-in first-out.
//!
//! Why not hyper-util's pooled client: on the request path it was the largest single
//! cost after hyper's own parsing
//! (docs/performance.md#what-changed-each-measured-side-by-side-before-it-landed;
//! callgrind: 16 % of a pass-through request's instructions: a `HashMap` keyed by scheme
//! and authority hashed with SipHash on every checkout and return, an absolute URI rebuilt
//! and converted back, and a spawned task per request to wait for the connection to become
//! idle again). One upstream needs none of that: a `Vec` of idle senders behind a mutex
//! held for a push or a pop.
//!
//! What it keeps from hyper-util's pool (docs/decisions.md#upstreams):
//! - an idle connection is reused for at most [`super::forward::POOL_IDLE_TIMEOUT`]
//!   after it went idle, and closed by a background sweep after that;
//! - at most [`super::forward::POOL_MAX_IDLE`] idle connections are kept;
//! - a request that could not be sent on a reused connection (the app closed it) is
//!   sent again on another one; one already sent is never repeated.
//!
//! A connection goes back to the pool when the response body has been read to its end
//! (or had none) and the request has been sent whole (an app may answer before it has
//! read an upload); a response dropped before its end, and a `101` (the connection
//! becomes a tunnel), never come back.

use std::{
    pin::Pin,
    sync::{
        Arc, Mutex, MutexGuard, Weak,
        atomic::{AtomicBool, Ordering},
    },
    task::{Context, Poll},
    time::Duration,
};

use bytes::Bytes;
use http::{Request, Response, StatusCode, Uri};
use http_body::{Body as HttpBody, Frame, SizeHint};
use hyper::{
    body::Incoming,
    client::conn::http1::{self, SendRequest},
    rt::{Read, Write},
};
use tokio::time::Instant;

use crate::body::{Body, BoxError};

/// Why a request could not be forwarded.
#[derive(Debug, thiserror::Error)]
pub enum SendError {
    #[error("connect: {0}")]
    Connect(BoxError),
    #[error("handshake: {0}")]
    Handshake(hyper::Error),
    #[error("{0}")]
    Send(hyper::Error),
}

/// A pool of connections to one upstream, made by `connector`.
#[derive(Debug)]
pub struct Pool<C> {
    connector: C,
    /// Where the connector connects (the configured upstream).
    target: Uri,
    idle: Arc<Idle>,
}

/// The idle connections, most recently used last.
#[derive(Debug)]
struct Idle {
    senders: Mutex<Vec<Parked>>,
    max: usize,
    timeout: Duration,
    sweeping: AtomicBool,
}

#[derive(Debug)]
struct Parked {
    sender: SendRequest<Body>,
    since: Instant,
}

impl Idle {
    fn lock(&self) -> MutexGuard<'_, Vec<Parked>> {
        // Only pushes and pops happen under the lock: nothing can be left half-done.
        self.senders.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The most recently parked connection that is still fresh. Older ones go: the ones
    /// below it in the stack are older still.
    fn take(&self) -> Option<SendRequest<Body>> {
        let now = Instant::now();
        let mut senders = self.lock();
        while let Some(parked) = senders.pop() {
            if now.duration_since(parked.since) >= self.timeout {
                senders.clear();
                return None;
            }
            if !parked.sender.is_closed() {
                return Some(parked.sender);
            }
        }
        None
    }

    fn put(self: &Arc<Self>, sender: SendRequest<Body>) {
        if sender.is_closed() {
            return;
        }
        {
            let mut senders = self.lock();
            if senders.len() >= self.max {
                // The oldest goes; the newest has the longest reuse ahead of it.
                senders.remove(0);
            }
            senders.push(Parked {
                sender,
                since: Instant::now(),
            });
        }
        if !self.sweeping.swap(true, Ordering::AcqRel) {
            tokio::spawn(sweep(Arc::downgrade(self), self.timeout));
        }
    }

    /// Close the connections idle for longer than the timeout.
    fn expire(&self) {
        let now = Instant::now();
        self.lock()
            .retain(|p| now.duration_since(p.since) < self.timeout && !p.sender.is_closed());
    }
}

/// Close expired idle connections every `period`, for as long as the pool exists.
async fn sweep(idle: Weak<Idle>, period: Duration) {
    loop {
        tokio::time::sleep(period).await;
        match idle.upgrade() {
            Some(idle) => idle.expire(),
            None => return,
        }
    }
}

impl<C> Pool<C>
where
    C: tower_service::Service<Uri, Error = BoxError> + Clone + Send + Sync + 'static,
    C::Response: Read + Write + Unpin + Send + 'static,
    C::Future: Send,
{
    /// A pool for the upstream at `target` (scheme and authority; what the connector
    /// connects to and verifies).
    pub fn new(connector: C, target: Uri, max_idle: usize, idle_timeout: Duration) -> Self {
        Pool {
            connector,
            target,
            idle: Arc::new(Idle {
                senders: Mutex::new(Vec::new()),
                max: max_idle,
                timeout: idle_timeout,
                sweeping: AtomicBool::new(false),
            }),
        }
    }

    /// Send `req` (origin-form URI, `Host` set) and wait for the response head.
    pub async fn send(&self, mut req: Request<Body>) -> Result<Response<PooledBody>, SendError> {
        loop {
            let (mut sender, reused) = match self.idle.take() {
                Some(sender) => (sender, true),
                None => (self.connect().await?, false),
            };
            if let Err(e) = sender.ready().await {
                if reused {
                    continue; // closed while parked: try the next one
                }
                return Err(SendError::Send(e));
            }
            match sender.try_send_request(req).await {
                Ok(resp) => {
                    let home = (resp.status() != StatusCode::SWITCHING_PROTOCOLS)
                        .then(|| (sender, self.idle.clone()));
                    return Ok(resp.map(|body| PooledBody::new(body, home)));
                }
                Err(mut e) => match e.take_message() {
                    // Not sent: the connection closed under us. Only a reused one may
                    // have been closed by the app's keep-alive timeout; a fresh one
                    // failing is the answer.
                    Some(unsent) if reused => req = unsent,
                    _ => return Err(SendError::Send(e.into_error())),
                },
            }
        }
    }

    async fn connect(&self) -> Result<SendRequest<Body>, SendError> {
        let mut connector = self.connector.clone();
        std::future::poll_fn(|cx| tower_service::Service::<Uri>::poll_ready(&mut connector, cx))
            .await
            .map_err(SendError::Connect)?;
        let io = tower_service::Service::call(&mut connector, self.target.clone())
            .await
            .map_err(SendError::Connect)?;
        let (sender, conn) = http1::Builder::new()
            .handshake(io)
            .await
            .map_err(SendError::Handshake)?;
        tokio::spawn(async move {
            // Upgrades: a `101` hands the connection to a tunnel (see `super::upgrade`).
            if let Err(e) = conn.with_upgrades().await {
                tracing::debug!(error = %e, "upstream connection ended with an error");
            }
        });
        Ok(sender)
    }
}

/// A response body that returns its connection to the pool once read to the end.
pub struct PooledBody {
    body: Incoming,
    home: Option<(SendRequest<Body>, Arc<Idle>)>,
}

impl std::fmt::Debug for PooledBody {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PooledBody").finish_non_exhaustive()
    }
}

impl PooledBody {
    fn new(body: Incoming, home: Option<(SendRequest<Body>, Arc<Idle>)>) -> Self {
        PooledBody { body, home }
    }

    fn go_home(&mut self) {
        let Some((mut sender, idle)) = self.home.take() else {
            return;
        };
        if sender.is_ready() {
            idle.put(sender);
        } else {
            // The response ended before the request did (an app that answered before
            // reading an upload): parked now, the connection would make the next
            // request wait for the rest of the upload. It is parked when it is free.
            tokio::spawn(async move {
                if sender.ready().await.is_ok() {
                    idle.put(sender);
                }
            });
        }
    }
}

impl HttpBody for PooledBody {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        let polled = Pin::new(&mut self.body).poll_frame(cx);
        match &polled {
            Poll::Ready(None) => self.go_home(),
            // A broken body means a broken connection.
            Poll::Ready(Some(Err(_))) => self.home = None,
            _ => {}
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}

impl Drop for PooledBody {
    fn drop(&mut self) {
        // A body with nothing left (none at all, e.g. `HEAD` or `204`, which hyper's
        // server never polls) still frees its connection; one dropped halfway does not
        // (the connection cannot be reused and closes with its sender).
        if self.body.is_end_stream() {
            self.go_home();
        }
    }
}
