//! The upstream connection pool (`src/proxy/pool.rs`) against a hand-written HTTP/1.1
//! upstream whose connections are counted and whose closing is under the test's control:
//! reuse, no reuse of a connection whose response was abandoned, requests that arrive
//! after the app closed an idle connection, and the idle bound.

mod harness;

use std::{
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    },
    time::Duration,
};

use harness::{SECRET_A, start_config};
use serde_json::json;
use session_sidecar::proxy::forward::POOL_IDLE_TIMEOUT;
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::{TcpListener, TcpStream},
};

/// How the raw upstream treats a connection after each response.
#[derive(Clone, Copy)]
enum AfterResponse {
    KeepOpen,
    /// Close it this long after the response, as an app whose keep-alive timeout is
    /// shorter than the sidecar's idle bound.
    CloseAfter(Duration),
}

/// Counters of the raw upstream.
#[derive(Default)]
struct Counts {
    opened: AtomicUsize,
    /// Connections that ended (closed by either side).
    ended: AtomicUsize,
    requests: AtomicUsize,
}

/// An HTTP/1.1 upstream on a free port: `/big` answers 1 MiB, `/empty` a `204`, anything
/// else `ok`.
async fn raw_upstream(after: AfterResponse) -> (String, Arc<Counts>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let url = format!("http://{}", listener.local_addr().expect("addr"));
    let counts = Arc::new(Counts::default());
    let c = counts.clone();
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                return;
            };
            c.opened.fetch_add(1, Ordering::SeqCst);
            let c = c.clone();
            tokio::spawn(async move {
                serve(stream, after, &c).await;
                c.ended.fetch_add(1, Ordering::SeqCst);
            });
        }
    });
    (url, counts)
}

async fn serve(mut stream: TcpStream, after: AfterResponse, counts: &Counts) {
    let mut buf = Vec::new();
    loop {
        // One request head (these tests send no bodies).
        let head_end = loop {
            if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                break i + 4;
            }
            let mut chunk = [0u8; 4096];
            match stream.read(&mut chunk).await {
                Ok(0) | Err(_) => return,
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
            }
        };
        let head = String::from_utf8_lossy(&buf[..head_end]).to_string();
        buf.drain(..head_end);
        // A body to skip after answering (`/upload` answers before reading it).
        let mut body_left: usize = head
            .lines()
            .find_map(|l| {
                l.to_ascii_lowercase()
                    .strip_prefix("content-length:")
                    .map(|v| v.trim().to_owned())
            })
            .and_then(|v| v.parse().ok())
            .unwrap_or(0);
        counts.requests.fetch_add(1, Ordering::SeqCst);
        let path = head.split(' ').nth(1).unwrap_or("/").to_owned();
        let response: Vec<u8> = match path.as_str() {
            "/big" => {
                let mut r = b"HTTP/1.1 200 OK\r\nContent-Length: 1048576\r\n\r\n".to_vec();
                r.extend(std::iter::repeat_n(b'x', 1 << 20));
                r
            }
            "/empty" => b"HTTP/1.1 204 No Content\r\n\r\n".to_vec(),
            _ => b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok".to_vec(),
        };
        if stream.write_all(&response).await.is_err() {
            return;
        }
        while body_left > 0 {
            let take = body_left.min(buf.len());
            buf.drain(..take);
            body_left -= take;
            if body_left > 0 {
                let mut chunk = [0u8; 4096];
                match stream.read(&mut chunk).await {
                    Ok(0) | Err(_) => return,
                    Ok(n) => buf.extend_from_slice(&chunk[..n]),
                }
            }
        }
        if let AfterResponse::CloseAfter(delay) = after {
            tokio::time::sleep(delay).await;
            return;
        }
    }
}

async fn sidecar(url: &str) -> session_sidecar::server::Running {
    start_config(&json!({
        "listen": "127.0.0.1:0",
        "upstream": url,
        "secrets": [SECRET_A],
        "store": {"engine": "memory"},
        "admin": {"listen": null},
    }))
    .await
}

/// One request on a fresh client connection; the status.
async fn get(addr: std::net::SocketAddr, path: &str) -> u16 {
    let mut s = TcpStream::connect(addr).await.expect("connect");
    s.write_all(format!("GET {path} HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n").as_bytes())
        .await
        .expect("send");
    let mut out = Vec::new();
    s.read_to_end(&mut out).await.expect("read");
    let text = String::from_utf8_lossy(&out);
    text.split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no status in {text:.80}"))
}

/// Let a finished exchange settle (the connection goes back to the pool when the
/// response body has been read, on the sidecar's side).
async fn settle() {
    tokio::time::sleep(Duration::from_millis(50)).await;
}

#[tokio::test]
async fn sequential_requests_share_one_connection_also_without_bodies() {
    let (url, counts) = raw_upstream(AfterResponse::KeepOpen).await;
    let running = sidecar(&url).await;
    for path in ["/", "/empty", "/", "/empty", "/"] {
        let expected = if path == "/empty" { 204 } else { 200 };
        assert_eq!(get(running.addr, path).await, expected, "{path}");
        settle().await;
    }
    assert_eq!(counts.requests.load(Ordering::SeqCst), 5);
    assert_eq!(
        counts.opened.load(Ordering::SeqCst),
        1,
        "a 204 (no body, never polled) must give its connection back too"
    );
    running.shutdown().await;
}

#[tokio::test]
async fn a_connection_whose_response_was_abandoned_is_not_reused() {
    let (url, counts) = raw_upstream(AfterResponse::KeepOpen).await;
    let running = sidecar(&url).await;
    assert_eq!(get(running.addr, "/").await, 200);
    settle().await;
    // A client that reads the head of a 1 MiB response and leaves.
    let mut s = TcpStream::connect(running.addr).await.expect("connect");
    s.write_all(b"GET /big HTTP/1.1\r\nHost: t\r\n\r\n")
        .await
        .expect("send");
    let mut head = [0u8; 64];
    let n = s.read(&mut head).await.expect("read");
    assert!(head[..n].starts_with(b"HTTP/1.1 200"), "{:?}", &head[..n]);
    drop(s);
    settle().await;
    // The next requests work, on a new connection: the abandoned one had unread body.
    for _ in 0..3 {
        assert_eq!(get(running.addr, "/").await, 200);
        settle().await;
    }
    assert_eq!(counts.opened.load(Ordering::SeqCst), 2);
    running.shutdown().await;
}

#[tokio::test]
async fn requests_after_the_app_closed_its_idle_connection_succeed() {
    // The app closes every connection 20 ms after answering: shorter than the pool's
    // idle bound, so each parked connection is closed under the pool.
    let (url, counts) = raw_upstream(AfterResponse::CloseAfter(Duration::from_millis(20))).await;
    let running = sidecar(&url).await;
    for i in 0..5 {
        assert_eq!(get(running.addr, "/").await, 200, "request {i}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(counts.requests.load(Ordering::SeqCst), 5);
    assert_eq!(counts.opened.load(Ordering::SeqCst), 5);
    running.shutdown().await;
}

#[tokio::test]
async fn idle_connections_are_closed_after_the_idle_bound() {
    let (url, counts) = raw_upstream(AfterResponse::KeepOpen).await;
    let running = sidecar(&url).await;
    assert_eq!(get(running.addr, "/").await, 200);
    settle().await;
    assert_eq!(counts.ended.load(Ordering::SeqCst), 0, "parked, still open");
    // The sweep runs every idle bound: after two of them the connection is closed.
    tokio::time::sleep(POOL_IDLE_TIMEOUT * 2 + Duration::from_millis(300)).await;
    assert_eq!(
        counts.ended.load(Ordering::SeqCst),
        1,
        "closed by the sweep"
    );
    assert_eq!(get(running.addr, "/").await, 200);
    assert_eq!(counts.opened.load(Ordering::SeqCst), 2);
    running.shutdown().await;
}

/// An app may answer before it has read an upload. Its connection must not be handed to
/// the next request while the upload still streams: that request would wait for it.
#[tokio::test]
async fn a_connection_still_receiving_an_upload_is_not_handed_out() {
    let (url, counts) = raw_upstream(AfterResponse::KeepOpen).await;
    let running = sidecar(&url).await;
    let mut uploader = TcpStream::connect(running.addr).await.expect("connect");
    uploader
        .write_all(b"POST /upload HTTP/1.1\r\nHost: t\r\nContent-Length: 100000\r\n\r\n")
        .await
        .expect("send");
    uploader.write_all(&[b'u'; 1000]).await.expect("send");
    let mut head = [0u8; 64];
    let n = uploader.read(&mut head).await.expect("early response");
    assert!(head[..n].starts_with(b"HTTP/1.1 200"), "{:?}", &head[..n]);
    settle().await;
    // The upload is still open (99,000 bytes to go): another request gets its own
    // connection instead of waiting behind it.
    let status = tokio::time::timeout(Duration::from_secs(5), get(running.addr, "/"))
        .await
        .expect("a request waited for another request's upload");
    assert_eq!(status, 200);
    assert_eq!(counts.opened.load(Ordering::SeqCst), 2);
    drop(uploader);
    running.shutdown().await;
}
