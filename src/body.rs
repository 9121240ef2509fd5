//! The body type every response and forwarded request uses: streamed, never buffered
//! whole (docs/protocol.md §10.1), with reserved trailers stripped on the way
//! (docs/protocol.md §3.2), and the bound on a client's request body that stops
//! arriving ([`ReadTimeout`], `timeouts.body_read`).

use std::{
    pin::Pin,
    sync::Arc,
    task::{Context, Poll},
    time::Duration,
};

use bytes::Bytes;
use http_body::Frame;
use http_body_util::{BodyExt, Full, combinators::UnsyncBoxBody};
use tokio::time::{Instant, Sleep};

use crate::protocol::ReservedPrefix;

pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// A streamed body of any origin (the peer's `Incoming` or our own text).
pub type Body = UnsyncBoxBody<Bytes, BoxError>;

/// A complete in-memory body (error pages, admin answers).
pub fn full(data: impl Into<Bytes>) -> Body {
    Full::new(data.into())
        .map_err(|never| match never {})
        .boxed_unsync()
}

/// Stream `body` through, removing reserved names from its trailers: a client cannot
/// smuggle `X-Session` to the app in a trailer (Traefik CVE-2026-88004), and an app
/// cannot send instructions (or leak them to the client) that way.
pub fn strip_reserved_trailers<B>(body: B, prefix: Arc<ReservedPrefix>) -> Body
where
    B: http_body::Body<Data = Bytes> + Send + 'static,
    B::Error: Into<BoxError>,
{
    body.map_frame(move |frame: Frame<Bytes>| match frame.into_trailers() {
        Ok(mut trailers) => {
            prefix.strip(&mut trailers);
            Frame::trailers(trailers)
        }
        Err(frame) => frame,
    })
    .map_err(Into::into)
    .boxed_unsync()
}

/// A request body that stopped arriving: the sidecar waited `timeouts.body_read` for its
/// next bytes. The body ends with this error; the pipeline answers 408
/// (docs/protocol.md §10.8).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("no request body bytes within timeouts.body_read")]
pub struct BodyTimeout;

/// A client's request body whose every wait for the client is bounded by `limit`: while
/// its reader waits for the next frame (a poll returned `Pending`), a timer runs; a frame
/// stops it. When it expires the body fails with [`BodyTimeout`] (slowloris on the body,
/// docs/security.md §13).
///
/// Only waits count: a reader that takes its time between frames (an app reading slowly,
/// so the upstream connection pushes back) never trips it, and a slow but steady upload
/// goes through however long it takes in total.
#[derive(Debug)]
pub struct ReadTimeout<B> {
    body: B,
    limit: Duration,
    /// Allocated on the first wait and reset for each next one.
    timer: Option<Pin<Box<Sleep>>>,
    /// A wait is running: the last poll returned `Pending`.
    waiting: bool,
}

impl<B> ReadTimeout<B> {
    pub fn new(body: B, limit: Duration) -> Self {
        ReadTimeout {
            body,
            limit,
            timer: None,
            waiting: false,
        }
    }
}

impl<B> http_body::Body for ReadTimeout<B>
where
    B: http_body::Body + Unpin,
    B::Error: Into<BoxError>,
{
    type Data = B::Data;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<B::Data>, BoxError>>> {
        let this = self.get_mut();
        match Pin::new(&mut this.body).poll_frame(cx) {
            Poll::Ready(frame) => {
                this.waiting = false;
                Poll::Ready(frame.map(|f| f.map_err(Into::into)))
            }
            Poll::Pending => {
                let limit = this.limit;
                let timer = this
                    .timer
                    .get_or_insert_with(|| Box::pin(tokio::time::sleep(limit)));
                if !this.waiting {
                    // A new wait starts now.
                    this.waiting = true;
                    timer.as_mut().reset(Instant::now() + limit);
                }
                if timer.as_mut().poll(cx).is_ready() {
                    this.waiting = false;
                    return Poll::Ready(Some(Err(BodyTimeout.into())));
                }
                Poll::Pending
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.body.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use std::future::poll_fn;

    use http_body::Body as _;
    use tokio::sync::mpsc;

    use super::*;

    /// A body fed by a channel: each message is one data frame; a closed channel ends it.
    struct Fed(mpsc::Receiver<Bytes>);

    impl http_body::Body for Fed {
        type Data = Bytes;
        type Error = std::convert::Infallible;

        fn poll_frame(
            mut self: Pin<&mut Self>,
            cx: &mut Context<'_>,
        ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
            self.0.poll_recv(cx).map(|d| d.map(|d| Ok(Frame::data(d))))
        }
    }

    const LIMIT: Duration = Duration::from_secs(10);

    async fn next(body: &mut ReadTimeout<Fed>) -> Option<Result<Frame<Bytes>, BoxError>> {
        poll_fn(|cx| Pin::new(&mut *body).poll_frame(cx)).await
    }

    /// Virtual time (the clock is paused): the timer fired at its deadline.
    fn assert_waited(since: Instant, limit: Duration) {
        let waited = since.elapsed();
        assert!(
            waited >= limit && waited < limit + Duration::from_secs(1),
            "{waited:?}"
        );
    }

    fn is_timeout(r: &Option<Result<Frame<Bytes>, BoxError>>) -> bool {
        matches!(r, Some(Err(e)) if e.is::<BodyTimeout>())
    }

    #[tokio::test(start_paused = true)]
    async fn a_body_that_stops_arriving_fails_after_the_limit() {
        let (tx, rx) = mpsc::channel(4);
        let mut body = ReadTimeout::new(Fed(rx), LIMIT);
        tx.send(Bytes::from_static(b"abc")).await.unwrap();
        assert!(matches!(next(&mut body).await, Some(Ok(_))));
        let started = Instant::now();
        let r = next(&mut body).await;
        assert!(is_timeout(&r), "{r:?}");
        assert_waited(started, LIMIT);
        drop(tx);
    }

    #[tokio::test(start_paused = true)]
    async fn each_wait_is_bounded_not_the_whole_body() {
        let (tx, rx) = mpsc::channel(4);
        let mut body = ReadTimeout::new(Fed(rx), LIMIT);
        tokio::spawn(async move {
            // Six pieces, 9 s apart: 54 s in total, each wait under the limit.
            for _ in 0..6 {
                tokio::time::sleep(Duration::from_secs(9)).await;
                if tx.send(Bytes::from_static(b"x")).await.is_err() {
                    return;
                }
            }
        });
        let mut got = 0;
        loop {
            match next(&mut body).await {
                Some(Ok(_)) => got += 1,
                None => break,
                Some(Err(e)) => panic!("cut after {got} pieces: {e}"),
            }
        }
        assert_eq!(got, 6);
    }

    #[tokio::test(start_paused = true)]
    async fn time_the_reader_spends_between_polls_does_not_count() {
        let (tx, rx) = mpsc::channel(4);
        let mut body = ReadTimeout::new(Fed(rx), LIMIT);
        tx.send(Bytes::from_static(b"a")).await.unwrap();
        assert!(matches!(next(&mut body).await, Some(Ok(_))));
        // The reader is busy elsewhere (the app pushes back) for far longer than the
        // limit; then the next piece takes 9 s to come: not a timeout.
        tokio::time::sleep(LIMIT * 3).await;
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_secs(9)).await;
            let _ = tx.send(Bytes::from_static(b"b")).await;
            // Keep the body open (not ended) well past the next wait.
            tokio::time::sleep(LIMIT * 10).await;
        });
        assert!(matches!(next(&mut body).await, Some(Ok(_))));
        // And the wait after that one starts from zero again.
        let started = Instant::now();
        assert!(is_timeout(&next(&mut body).await));
        assert_waited(started, LIMIT);
    }
}
