//! Raw HTTP/1.1 on both sides of the sidecar, for framing tests (request smuggling, slow
//! clients): a counting upstream that parses what the sidecar sends with its own strict
//! parser and records every message exactly (method, path, body bytes, trailers, and how
//! the message ended), and a raw client that writes arbitrary bytes and reads framed
//! responses one at a time. Every wait is bounded.
//!
//! The upstream answers by path:
//!
//! - anything: read the whole message, then `200` with `Content-Length`;
//! - `/early…`: answer as soon as the head is read, then read (and record) the body;
//! - `/early-close…`: answer as soon as the head is read and close without reading the body.

use std::{
    net::SocketAddr,
    sync::{
        Arc, Mutex,
        atomic::{AtomicUsize, Ordering},
    },
    time::Duration,
};

use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::{TcpListener, TcpStream},
    time::{Instant, timeout},
};

/// How a message the upstream started to receive ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum End {
    /// Framed exactly and read whole.
    Complete,
    /// The connection ended (or the upstream stopped reading) before the message did.
    Incomplete,
    /// Not a valid HTTP/1.1 message by the upstream's strict parser (the reason).
    Malformed(String),
    /// Still being received when the snapshot was taken.
    Pending,
}

/// One message as the upstream received it.
#[derive(Debug, Clone)]
pub struct Exchange {
    /// The upstream connection it arrived on (0, 1, … in accept order).
    pub conn: usize,
    /// Its position on that connection (0 for the first message).
    pub index: usize,
    pub method: String,
    pub path: String,
    /// Names lower-cased, in order.
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
    pub trailers: Vec<(String, String)>,
    pub end: End,
}

impl Exchange {
    /// `(method, path, body, end)`: what a test compares.
    pub fn summary(&self) -> (String, String, String, End) {
        (
            self.method.clone(),
            self.path.clone(),
            String::from_utf8_lossy(&self.body).into_owned(),
            self.end.clone(),
        )
    }
}

/// A complete message, for comparing with [`Exchange::summary`].
pub fn complete(method: &str, path: &str, body: &str) -> (String, String, String, End) {
    (method.into(), path.into(), body.into(), End::Complete)
}

/// The counting upstream; its tasks end with the test runtime.
pub struct RawUpstream {
    pub addr: SocketAddr,
    log: Arc<Mutex<Vec<Exchange>>>,
    /// Messages being received (head started, end not seen yet).
    busy: Arc<AtomicUsize>,
    connections: Arc<AtomicUsize>,
}

impl RawUpstream {
    pub async fn start() -> RawUpstream {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind raw upstream");
        let addr = listener.local_addr().expect("raw upstream addr");
        let log = Arc::new(Mutex::new(Vec::new()));
        let busy = Arc::new(AtomicUsize::new(0));
        let connections = Arc::new(AtomicUsize::new(0));
        let (l, b, c) = (log.clone(), busy.clone(), connections.clone());
        tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                let conn = c.fetch_add(1, Ordering::SeqCst);
                tokio::spawn(serve(stream, conn, l.clone(), b.clone()));
            }
        });
        RawUpstream {
            addr,
            log,
            busy,
            connections,
        }
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Connections accepted so far.
    pub fn connections(&self) -> usize {
        self.connections.load(Ordering::SeqCst)
    }

    /// Wait (at most 5 s) until no message is half-received and nothing new arrived for
    /// 200 ms, then take the log (it starts empty again). A message still arriving
    /// after 5 s is in the result as an [`End::Pending`] placeholder.
    pub async fn take(&self) -> Vec<Exchange> {
        let deadline = Instant::now() + Duration::from_secs(5);
        let mut last = usize::MAX;
        let mut quiet_since = Instant::now();
        loop {
            let n = self.log.lock().unwrap().len();
            let busy = self.busy.load(Ordering::SeqCst);
            if n != last {
                last = n;
                quiet_since = Instant::now();
            }
            let now = Instant::now();
            if (busy == 0 && now - quiet_since >= Duration::from_millis(200)) || now >= deadline {
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let mut log = std::mem::take(&mut *self.log.lock().unwrap());
        for _ in 0..self.busy.load(Ordering::SeqCst) {
            log.push(Exchange {
                conn: usize::MAX,
                index: 0,
                method: "?".into(),
                path: "?".into(),
                headers: Vec::new(),
                body: Vec::new(),
                trailers: Vec::new(),
                end: End::Pending,
            });
        }
        log
    }
}

/// Marks one message as being received until dropped.
struct Busy<'a>(&'a AtomicUsize);

impl<'a> Busy<'a> {
    fn start(counter: &'a AtomicUsize) -> Self {
        counter.fetch_add(1, Ordering::SeqCst);
        Busy(counter)
    }
}

impl Drop for Busy<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

/// The bytes of one upstream connection, read on demand.
struct Wire {
    stream: TcpStream,
    buf: Vec<u8>,
    eof: bool,
}

impl Wire {
    /// Read more; false at EOF or error (the sidecar is never slower than this).
    async fn fill(&mut self) -> bool {
        if self.eof {
            return false;
        }
        let mut chunk = [0u8; 16 * 1024];
        match timeout(Duration::from_secs(30), self.stream.read(&mut chunk)).await {
            Ok(Ok(n)) if n > 0 => {
                self.buf.extend_from_slice(&chunk[..n]);
                true
            }
            _ => {
                self.eof = true;
                false
            }
        }
    }

    /// One CRLF-terminated line (without the CRLF). `Err` on a bare LF or CR.
    async fn line(&mut self) -> Result<Option<Vec<u8>>, String> {
        loop {
            if let Some(i) = self.buf.iter().position(|&b| b == b'\n') {
                if i == 0 || self.buf[i - 1] != b'\r' {
                    return Err("bare LF".into());
                }
                let line: Vec<u8> = self.buf.drain(..=i).take(i - 1).collect();
                if line.contains(&b'\r') {
                    return Err("bare CR".into());
                }
                return Ok(Some(line));
            }
            if self.buf.len() > 256 * 1024 {
                return Err("line too long".into());
            }
            if !self.fill().await {
                return Ok(None);
            }
        }
    }

    /// Exactly `n` bytes, or what there was before EOF (`false`).
    async fn take(&mut self, n: usize, out: &mut Vec<u8>) -> bool {
        let mut left = n;
        loop {
            let k = left.min(self.buf.len());
            out.extend(self.buf.drain(..k));
            left -= k;
            if left == 0 {
                return true;
            }
            if !self.fill().await {
                return false;
            }
        }
    }
}

fn is_tchar(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

/// A strict field line: token, `:`, OWS, visible characters, SP, HTAB or obs-text
/// (RFC 9110 §5.5), OWS.
fn field(line: &[u8]) -> Result<(String, String), String> {
    let colon = line
        .iter()
        .position(|&b| b == b':')
        .ok_or("field without colon")?;
    let (name, value) = (&line[..colon], &line[colon + 1..]);
    if name.is_empty() || !name.iter().all(|&b| is_tchar(b)) {
        return Err(format!(
            "bad field name {:?}",
            String::from_utf8_lossy(name)
        ));
    }
    if !value
        .iter()
        .all(|&b| b == b'\t' || (0x20..0x7f).contains(&b) || b >= 0x80)
    {
        return Err(format!(
            "bad field value {:?}",
            String::from_utf8_lossy(value)
        ));
    }
    Ok((
        String::from_utf8_lossy(name).to_ascii_lowercase(),
        String::from_utf8_lossy(value.trim_ascii()).into_owned(),
    ))
}

enum Framing {
    None,
    Length(usize),
    Chunked,
}

fn framing(headers: &[(String, String)]) -> Result<Framing, String> {
    let cl: Vec<&String> = headers
        .iter()
        .filter(|(k, _)| k == "content-length")
        .map(|(_, v)| v)
        .collect();
    let te: Vec<&String> = headers
        .iter()
        .filter(|(k, _)| k == "transfer-encoding")
        .map(|(_, v)| v)
        .collect();
    match (cl.as_slice(), te.as_slice()) {
        ([], []) => Ok(Framing::None),
        ([v], []) if !v.is_empty() && v.bytes().all(|b| b.is_ascii_digit()) && v.len() < 16 => {
            Ok(Framing::Length(v.parse().map_err(|_| "bad length")?))
        }
        ([], [v]) if v.eq_ignore_ascii_case("chunked") => Ok(Framing::Chunked),
        _ => Err(format!("ambiguous framing: CL {cl:?} TE {te:?}")),
    }
}

const REPLY_OK: &[u8] =
    b"HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\ncontent-length: 2\r\n\r\nok";

async fn serve(
    stream: TcpStream,
    conn: usize,
    log: Arc<Mutex<Vec<Exchange>>>,
    busy: Arc<AtomicUsize>,
) {
    let mut wire = Wire {
        stream,
        buf: Vec::new(),
        eof: false,
    };
    for index in 0.. {
        // Wait for the first byte of a message without counting it as busy.
        if wire.buf.is_empty() && !wire.fill().await {
            return;
        }
        let mark = Busy::start(&busy);
        let mut ex = Exchange {
            conn,
            index,
            method: String::new(),
            path: String::new(),
            headers: Vec::new(),
            body: Vec::new(),
            trailers: Vec::new(),
            end: End::Pending,
        };
        let keep_going = receive(&mut wire, &mut ex).await;
        log.lock().unwrap().push(ex);
        drop(mark);
        if !keep_going {
            let _ = wire.stream.shutdown().await;
            return;
        }
    }
}

/// Receive one message into `ex` (answering it); whether the connection goes on.
async fn receive(wire: &mut Wire, ex: &mut Exchange) -> bool {
    let request_line = match wire.line().await {
        Ok(Some(l)) => l,
        Ok(None) => {
            ex.end = End::Incomplete;
            return false;
        }
        Err(e) => {
            ex.end = End::Malformed(e);
            return false;
        }
    };
    let text = String::from_utf8_lossy(&request_line).into_owned();
    let parts: Vec<&str> = text.split(' ').collect();
    if parts.len() != 3 || parts[2] != "HTTP/1.1" || !parts[0].bytes().all(is_tchar) {
        ex.end = End::Malformed(format!("request line {text:?}"));
        return false;
    }
    ex.method = parts[0].to_owned();
    ex.path = parts[1].to_owned();
    loop {
        match wire.line().await {
            Ok(Some(l)) if l.is_empty() => break,
            Ok(Some(l)) => match field(&l) {
                Ok(f) => ex.headers.push(f),
                Err(e) => {
                    ex.end = End::Malformed(e);
                    return false;
                }
            },
            Ok(None) => {
                ex.end = End::Incomplete;
                return false;
            }
            Err(e) => {
                ex.end = End::Malformed(e);
                return false;
            }
        }
    }
    let framing = match framing(&ex.headers) {
        Ok(f) => f,
        Err(e) => {
            ex.end = End::Malformed(e);
            return false;
        }
    };
    let early = ex.path.starts_with("/early");
    if early {
        if wire.stream.write_all(REPLY_OK).await.is_err() {
            ex.end = End::Incomplete;
            return false;
        }
        if ex.path.starts_with("/early-close") {
            // FIN first and a moment before the socket is dropped with unread bytes
            // (which sends a reset that could overtake the response).
            let _ = wire.stream.shutdown().await;
            tokio::time::sleep(Duration::from_millis(100)).await;
            ex.end = End::Incomplete;
            return false;
        }
    }
    let body_ok = match framing {
        Framing::None => Ok(true),
        Framing::Length(n) => Ok(wire.take(n, &mut ex.body).await),
        Framing::Chunked => chunked(wire, ex).await,
    };
    match body_ok {
        Ok(true) => ex.end = End::Complete,
        Ok(false) => {
            ex.end = End::Incomplete;
            return false;
        }
        Err(e) => {
            ex.end = End::Malformed(e);
            return false;
        }
    }
    if !early && wire.stream.write_all(REPLY_OK).await.is_err() {
        return false;
    }
    true
}

/// A strict chunked body: hex sizes without extensions (the sidecar writes none),
/// CRLF after each chunk, trailers, the final CRLF.
async fn chunked(wire: &mut Wire, ex: &mut Exchange) -> Result<bool, String> {
    loop {
        let Some(line) = wire.line().await? else {
            return Ok(false);
        };
        let text = String::from_utf8_lossy(&line).into_owned();
        if text.is_empty() || text.len() > 15 || !text.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(format!("chunk size {text:?}"));
        }
        let size = usize::from_str_radix(&text, 16).map_err(|e| e.to_string())?;
        if size == 0 {
            break;
        }
        if !wire.take(size, &mut ex.body).await {
            return Ok(false);
        }
        match wire.line().await? {
            Some(l) if l.is_empty() => {}
            Some(_) => return Err("chunk data longer than its size".into()),
            None => return Ok(false),
        }
    }
    loop {
        match wire.line().await? {
            Some(l) if l.is_empty() => return Ok(true),
            Some(l) => ex.trailers.push(field(&l)?),
            None => return Ok(false),
        }
    }
}

// ---------------------------------------------------------------------------------------
// the raw client
// ---------------------------------------------------------------------------------------

/// A response as read off the wire.
#[derive(Debug, Clone)]
pub struct RawResponse {
    pub status: u16,
    /// Names lower-cased.
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl RawResponse {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }
}

/// A client connection that writes raw bytes and reads framed responses.
pub struct RawClient {
    stream: TcpStream,
    buf: Vec<u8>,
    eof: bool,
}

impl RawClient {
    pub async fn connect(addr: SocketAddr) -> RawClient {
        let stream = timeout(Duration::from_secs(5), TcpStream::connect(addr))
            .await
            .expect("connect within 5 s")
            .expect("connect to the sidecar");
        let _ = stream.set_nodelay(true);
        RawClient {
            stream,
            buf: Vec::new(),
            eof: false,
        }
    }

    /// Write bytes; false when the peer has gone away.
    pub async fn send(&mut self, bytes: &[u8]) -> bool {
        matches!(
            timeout(Duration::from_secs(5), self.stream.write_all(bytes)).await,
            Ok(Ok(()))
        )
    }

    async fn fill(&mut self, wait: Duration) -> bool {
        if self.eof {
            return false;
        }
        let mut chunk = [0u8; 16 * 1024];
        match timeout(wait, self.stream.read(&mut chunk)).await {
            Ok(Ok(n)) if n > 0 => {
                self.buf.extend_from_slice(&chunk[..n]);
                true
            }
            Ok(_) => {
                // EOF or reset.
                self.eof = true;
                false
            }
            Err(_) => false,
        }
    }

    async fn line(&mut self, wait: Duration) -> Option<String> {
        loop {
            if let Some(i) = self.buf.windows(2).position(|w| w == b"\r\n") {
                let line: Vec<u8> = self.buf.drain(..i + 2).take(i).collect();
                return Some(String::from_utf8_lossy(&line).into_owned());
            }
            if !self.fill(wait).await {
                return None;
            }
        }
    }

    async fn exact(&mut self, n: usize, wait: Duration) -> Option<Vec<u8>> {
        while self.buf.len() < n {
            if !self.fill(wait).await {
                return None;
            }
        }
        Some(self.buf.drain(..n).collect())
    }

    /// The next response, read whole (5 s at most per read); `None` when the
    /// connection ended (or stayed silent) first.
    pub async fn response(&mut self) -> Option<RawResponse> {
        self.response_within(Duration::from_secs(5)).await
    }

    pub async fn response_within(&mut self, wait: Duration) -> Option<RawResponse> {
        let status_line = self.line(wait).await?;
        let status: u16 = status_line
            .strip_prefix("HTTP/1.1 ")
            .or_else(|| status_line.strip_prefix("HTTP/1.0 "))
            .and_then(|r| r.get(..3))
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| panic!("not a status line: {status_line:?}"));
        let mut headers = Vec::new();
        loop {
            let line = self.line(wait).await?;
            if line.is_empty() {
                break;
            }
            let (k, v) = line.split_once(':').expect("response field");
            headers.push((k.to_ascii_lowercase(), v.trim().to_owned()));
        }
        let mut resp = RawResponse {
            status,
            headers,
            body: Vec::new(),
        };
        if let Some(len) = resp.header("content-length") {
            let len: usize = len.parse().expect("response length");
            resp.body = self.exact(len, wait).await?;
        } else if resp
            .header("transfer-encoding")
            .is_some_and(|v| v.eq_ignore_ascii_case("chunked"))
        {
            loop {
                let size = self.line(wait).await?;
                let size = usize::from_str_radix(size.split(';').next()?.trim(), 16).ok()?;
                if size == 0 {
                    while !self.line(wait).await?.is_empty() {}
                    break;
                }
                resp.body.extend(self.exact(size, wait).await?);
                self.exact(2, wait).await?;
            }
        } else if status >= 200 && status != 204 && status != 304 {
            // Delimited by the close.
            while self.fill(wait).await {}
            resp.body = std::mem::take(&mut self.buf);
        }
        Some(resp)
    }

    /// Whether the sidecar closes the connection (EOF or reset) within `wait` without
    /// sending anything more. Unread bytes count as "not closed".
    pub async fn closed_within(&mut self, wait: Duration) -> bool {
        if !self.buf.is_empty() {
            return false;
        }
        let deadline = Instant::now() + wait;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return self.eof && self.buf.is_empty();
            }
            if !self.fill(left).await {
                return self.eof && self.buf.is_empty();
            }
            if !self.buf.is_empty() {
                return false;
            }
        }
    }
}
