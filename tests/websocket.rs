//! WebSocket through the sidecar (docs/protocol.md §10.5), with a real
//! WebSocket server as the upstream and a real WebSocket client, both `tungstenite`
//! (the protocol engine of the `tokio-tungstenite` dev-dependency, used through its
//! blocking API in threads: its async streams need `futures` traits this crate does not
//! depend on).
//!
//! The upstream serves both plain HTTP (answering with the `X-Session` it received) and
//! WebSocket handshakes (`accept_hdr`, recording the handshake request and adding an
//! `X-Session-Set` to its `101`), then echoes every message.

mod harness;

use std::{
    io::{Read, Write},
    net::{SocketAddr, TcpStream},
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use harness::{Client, SECRET_A, SetCookie, header_pairs, start_config};
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::{
    self, ClientRequestBuilder, Message, WebSocket,
    handshake::server::{ErrorResponse, Request as WsRequest, Response as WsResponse},
    http::{HeaderValue, Uri},
};

/// Generous bounds: the machine is slow and shared.
const WAIT: Duration = Duration::from_secs(20);

// ---------------------------------------------------------------------------------------
// the upstream
// ---------------------------------------------------------------------------------------

type Headers = Vec<(String, String)>;

struct WsUpstream {
    addr: SocketAddr,
    /// The request headers of every WebSocket handshake, in order.
    handshakes: Arc<Mutex<Vec<Headers>>>,
}

impl WsUpstream {
    fn start() -> WsUpstream {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let handshakes = Arc::new(Mutex::new(Vec::new()));
        let seen = handshakes.clone();
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(stream) = stream else { continue };
                let seen = seen.clone();
                std::thread::spawn(move || serve(stream, seen));
            }
        });
        WsUpstream { addr, handshakes }
    }

    fn handshakes(&self) -> Vec<Headers> {
        self.handshakes.lock().unwrap().clone()
    }
}

/// Peek at the request head (without consuming it) to route: a WebSocket handshake goes
/// to `tungstenite::accept_hdr`, anything else gets a one-shot plain answer.
fn serve(stream: TcpStream, seen: Arc<Mutex<Vec<Headers>>>) {
    stream.set_read_timeout(Some(WAIT)).unwrap();
    let mut buf = vec![0u8; 64 * 1024];
    let deadline = Instant::now() + WAIT;
    let head = loop {
        let n = match stream.peek(&mut buf) {
            Ok(0) | Err(_) => return,
            Ok(n) => n,
        };
        if let Some(end) = buf[..n].windows(4).position(|w| w == b"\r\n\r\n") {
            break String::from_utf8_lossy(&buf[..end]).to_ascii_lowercase();
        }
        if Instant::now() > deadline || n == buf.len() {
            return;
        }
        std::thread::sleep(Duration::from_millis(5));
    };
    if head.contains("\r\nupgrade: websocket") {
        websocket(stream, seen);
    } else {
        plain(stream, &head);
    }
}

// The callback's error type is tungstenite's.
#[allow(clippy::result_large_err)]
fn websocket(stream: TcpStream, seen: Arc<Mutex<Vec<Headers>>>) {
    let callback = |req: &WsRequest, mut resp: WsResponse| -> Result<WsResponse, ErrorResponse> {
        seen.lock().unwrap().push(header_pairs(req.headers()));
        resp.headers_mut().insert(
            "x-session-set",
            HeaderValue::from_static(r#"{"ws":"joined"}"#),
        );
        Ok(resp)
    };
    let Ok(mut ws) = tungstenite::accept_hdr(stream, callback) else {
        return;
    };
    // Echo until the client closes (tungstenite answers the close frame itself).
    loop {
        match ws.read() {
            Ok(msg @ (Message::Text(_) | Message::Binary(_))) => {
                if ws.send(msg).is_err() {
                    return;
                }
            }
            Ok(_) => {}
            Err(_) => return,
        }
    }
}

/// A plain request: consume the head, answer with the session the sidecar injected.
fn plain(mut stream: TcpStream, head: &str) {
    let mut consumed = vec![0u8; head.len() + 4];
    if stream.read_exact(&mut consumed).is_err() {
        return;
    }
    let header = |name: &str| {
        head.lines()
            .find_map(|l| l.strip_prefix(&format!("{name}: ")))
            .map(str::to_owned)
    };
    let body = json!({
        "session": header("x-session"),
        "status": header("x-session-status"),
    })
    .to_string();
    let _ = write!(
        stream,
        "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\
         Connection: close\r\n\r\n{body}",
        body.len()
    );
}

// ---------------------------------------------------------------------------------------
// the client
// ---------------------------------------------------------------------------------------

/// Open a WebSocket through the sidecar at `addr`, sending `extra` headers on the
/// handshake. Returns the socket and the `101` response's headers.
fn connect(addr: SocketAddr, extra: &[(&str, &str)]) -> (WebSocket<TcpStream>, Headers) {
    let stream = TcpStream::connect(addr).unwrap();
    stream.set_read_timeout(Some(WAIT)).unwrap();
    stream.set_write_timeout(Some(WAIT)).unwrap();
    let uri: Uri = format!("ws://{addr}/chat").parse().unwrap();
    let mut req = ClientRequestBuilder::new(uri);
    for (k, v) in extra {
        req = req.with_header(*k, *v);
    }
    let (ws, resp) = tungstenite::client(req, stream)
        .unwrap_or_else(|e| panic!("WebSocket handshake through the sidecar failed: {e}"));
    assert_eq!(resp.status().as_u16(), 101);
    (ws, header_pairs(resp.headers()))
}

fn round_trip(ws: &mut WebSocket<TcpStream>, msg: Message) {
    ws.send(msg.clone()).unwrap();
    loop {
        match ws.read().unwrap() {
            Message::Ping(_) | Message::Pong(_) => continue,
            got => {
                assert_eq!(got, msg);
                return;
            }
        }
    }
}

/// Close from the client side and wait for the close handshake to finish.
fn close(mut ws: WebSocket<TcpStream>) {
    ws.close(None).unwrap();
    loop {
        match ws.read() {
            Ok(_) => continue,
            Err(tungstenite::Error::ConnectionClosed) => return,
            Err(e) => panic!("close handshake: {e}"),
        }
    }
}

fn all<'a>(headers: &'a Headers, name: &str) -> Vec<&'a str> {
    headers
        .iter()
        .filter(|(k, _)| k.eq_ignore_ascii_case(name))
        .map(|(_, v)| v.as_str())
        .collect()
}

fn config(upstream: &WsUpstream, shutdown: &str) -> Value {
    json!({
        "listen": "127.0.0.1:0",
        "upstream": format!("http://{}", upstream.addr),
        "secrets": [SECRET_A],
        "store": {"engine": "memory"},
        "admin": {"listen": null},
        "timeouts": {"shutdown": shutdown},
    })
}

/// Run blocking client code off the runtime, bounded.
async fn blocking<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> T {
    tokio::time::timeout(WAIT * 2, tokio::task::spawn_blocking(f))
        .await
        .expect("client finished in time")
        .expect("client thread")
}

// ---------------------------------------------------------------------------------------
// tests
// ---------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn websocket_round_trip_with_session_headers_on_the_handshake() {
    let upstream = WsUpstream::start();
    let running = start_config(&config(&upstream, "30s")).await;
    let addr = running.addr;

    let (cookie, resp_headers) = blocking(move || {
        let (mut ws, headers) = connect(
            addr,
            &[
                // A client trying to forge its session on the handshake.
                ("X-Session", r#"{"user":"admin"}"#),
                ("X-Session-Status", "active"),
                ("x_session-flash", r#"{"notice":"forged"}"#),
                ("X-Session-Set", r#"{"user":"admin"}"#),
            ],
        );
        round_trip(&mut ws, Message::text("hello through the sidecar"));
        round_trip(&mut ws, Message::binary(vec![0u8, 1, 2, 255]));
        let big: Vec<u8> = (0..1024 * 1024).map(|i| (i * 7 % 251) as u8).collect();
        round_trip(&mut ws, Message::binary(big));
        let big_text = "ü".repeat(512 * 1024);
        round_trip(&mut ws, Message::text(big_text));
        round_trip(&mut ws, Message::text("still open after 2 MiB"));
        close(ws);
        let cookie = all(&headers, "set-cookie")
            .iter()
            .map(|v| SetCookie::parse(v))
            .find(|c| c.name == "session")
            .unwrap_or_else(|| panic!("no session cookie on the 101: {headers:?}"));
        (cookie, headers)
    })
    .await;

    // The handshake the upstream saw: injected session headers only.
    let handshakes = upstream.handshakes();
    assert_eq!(handshakes.len(), 1);
    let seen = &handshakes[0];
    assert_eq!(all(seen, "x-session"), ["{}"], "{seen:?}");
    assert_eq!(all(seen, "x-session-status"), ["none"]);
    assert_eq!(all(seen, "x-session-flash"), ["{}"]);
    let reserved: Vec<&str> = seen
        .iter()
        .map(|(k, _)| k.as_str())
        .filter(|k| harness::is_reserved(k))
        .collect();
    assert_eq!(
        reserved.len(),
        3,
        "only the injected reserved headers: {seen:?}"
    );
    assert!(
        !seen
            .iter()
            .any(|(_, v)| v.contains("admin") || v.contains("forged"))
    );
    assert_eq!(all(seen, "upgrade"), ["websocket"]);

    // The 101 the client got: the session cookie, no instruction header.
    assert!(
        resp_headers.iter().all(|(k, _)| !harness::is_reserved(k)),
        "{resp_headers:?}"
    );
    assert!(cookie.has("httponly"));
    assert_eq!(all(&resp_headers, "cache-control"), ["private"]);

    // The write on the 101 is in the session for the next plain request.
    let mut client = Client::new(addr);
    client.cookie = Some(cookie.value.clone());
    let r = client.get("/after").await;
    assert_eq!(r.status, 200);
    let body: Value = serde_json::from_slice(&r.body).unwrap();
    assert_eq!(body["status"], "active", "{body}");
    let session: Value = serde_json::from_str(body["session"].as_str().unwrap()).unwrap();
    assert_eq!(session, json!({"ws": "joined"}));

    // A second handshake with the cookie sees the session, and no new cookie is set.
    let value = cookie.value.clone();
    let resp_headers = blocking(move || {
        let cookie = format!("session={value}");
        let (mut ws, headers) = connect(addr, &[("Cookie", &cookie)]);
        round_trip(&mut ws, Message::text("again"));
        close(ws);
        headers
    })
    .await;
    let second = &upstream.handshakes()[1];
    assert_eq!(all(second, "x-session-status"), ["active"]);
    assert_eq!(all(second, "x-session"), [r#"{"ws":"joined"}"#]);
    assert!(
        all(second, "cookie")
            .iter()
            .all(|c| !c.contains("session=")),
        "the session cookie is not forwarded: {second:?}"
    );
    assert!(
        all(&resp_headers, "set-cookie").is_empty(),
        "{resp_headers:?}"
    );

    running.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_waits_for_an_open_tunnel_until_the_client_closes_it() {
    let upstream = WsUpstream::start();
    // A drain deadline far beyond the bounds below: returning within them means the
    // shutdown followed the tunnel, not the deadline.
    let running = start_config(&config(&upstream, "120s")).await;
    let addr = running.addr;
    let (to_client, mut from_test) = tokio::sync::mpsc::channel::<&'static str>(1);
    let (to_test, mut from_client) = tokio::sync::mpsc::channel::<&'static str>(1);

    let client = tokio::task::spawn_blocking(move || {
        let (mut ws, _) = connect(addr, &[]);
        round_trip(&mut ws, Message::text("before shutdown"));
        to_test.blocking_send("open").unwrap();
        // Wait until the test has asked the sidecar to shut down.
        assert_eq!(from_test.blocking_recv(), Some("draining"));
        round_trip(&mut ws, Message::text("during the drain"));
        round_trip(&mut ws, Message::binary(vec![7u8; 256 * 1024]));
        to_test.blocking_send("still works").unwrap();
        assert_eq!(from_test.blocking_recv(), Some("close"));
        close(ws);
    });

    assert_eq!(
        tokio::time::timeout(WAIT, from_client.recv())
            .await
            .unwrap(),
        Some("open")
    );
    let shutdown = tokio::spawn(running.shutdown());
    // The listener is closed promptly …
    let deadline = Instant::now() + WAIT;
    while TcpStream::connect(addr).is_ok() {
        assert!(Instant::now() < deadline, "still accepting during shutdown");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // … while the tunnel keeps working.
    to_client.send("draining").await.unwrap();
    assert_eq!(
        tokio::time::timeout(WAIT, from_client.recv())
            .await
            .unwrap(),
        Some("still works")
    );
    assert!(
        !shutdown.is_finished(),
        "shutdown waits for the open tunnel"
    );

    to_client.send("close").await.unwrap();
    tokio::time::timeout(WAIT, client)
        .await
        .expect("client closed in time")
        .unwrap();
    tokio::time::timeout(WAIT, shutdown)
        .await
        .expect("shutdown returns once the tunnel is closed")
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_returns_at_the_deadline_with_a_tunnel_left_open() {
    let upstream = WsUpstream::start();
    let running = start_config(&config(&upstream, "1s")).await;
    let addr = running.addr;
    let (ws, _) = blocking(move || {
        let (mut ws, h) = connect(addr, &[]);
        round_trip(&mut ws, Message::text("open"));
        (ws, h)
    })
    .await;
    // The client never closes: shutdown still returns (at `timeouts.shutdown`).
    tokio::time::timeout(WAIT, running.shutdown())
        .await
        .expect("shutdown returns at the drain deadline");
    // ... and the tunnel was cut then, not left running in this process: the client
    // sees its connection end (a read error or EOF, never an echo).
    let ended = blocking(move || {
        let mut ws = ws;
        if ws.send(Message::text("after the deadline")).is_err() {
            return true;
        }
        loop {
            match ws.read() {
                Ok(Message::Ping(_) | Message::Pong(_)) => continue,
                Ok(Message::Close(_)) => continue,
                Ok(other) => panic!("the tunnel still echoes after shutdown: {other:?}"),
                Err(e) => return !matches!(e, tungstenite::Error::Io(ref io) if io.kind() == std::io::ErrorKind::WouldBlock || io.kind() == std::io::ErrorKind::TimedOut),
            }
        }
    })
    .await;
    assert!(
        ended,
        "the client's tunnel was still open after shutdown returned"
    );
}
