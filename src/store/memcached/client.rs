//! A small async memcached client: the meta-protocol subset the store needs, over
//! `tokio::net::TcpStream`, with a bounded connection pool per server.
//!
//! Commands (memcached `doc/protocol.txt`, "Meta Commands"; verified on 1.6.18):
//! - `mg <key> v c t [T<exp>]` — value, CAS and the seconds left to its expiry *before*
//!   the optional touch in the same command (flags apply in order; a touch does not
//!   change the CAS); `mg <key> T<exp>` — touch only;
//! - `ms <key> <len> T<exp> [C<cas>] [ME]` — store with a TTL, conditional on the CAS
//!   (`EX` when it changed, `NF` when the item is gone) or only when absent (`ME`, add
//!   mode: `NS` when it exists);
//! - `md <key> [C<cas>]` — delete, optionally only if unchanged (the text protocol's
//!   `delete` has no CAS; this is what makes flash consumption exactly-once);
//! - `version` — liveness.
//!
//! Several commands are written in one `write` and their replies read in order
//! (memcached answers a connection's commands in order): one round trip per batch.
//!
//! # Cancel safety
//!
//! A connection is returned to its pool only after a batch's replies were read
//! completely. A future dropped mid-batch (e.g. by `store.timeout`) drops its connection,
//! so no later caller can read a stale reply meant for someone else.
//!
//! # Dead servers
//!
//! There is no ejection: every checkout that finds no idle connection connects anew, so
//! a server that comes back is used by the next request. A refused connection fails
//! at once; an unreachable host is bounded by the caller's `store.timeout`. After an I/O
//! error the server's idle connections are dropped (they are most likely dead too), and
//! a batch marked retry-safe (reads and touches only) that failed on a reused connection
//! is retried once on a fresh one: a restarted server does not cost a failed request.

use std::{
    fmt,
    sync::{Mutex, MutexGuard},
};

use tokio::{
    io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader},
    net::TcpStream,
    sync::{Semaphore, SemaphorePermit},
};

/// memcached's key rules: at most 250 bytes, no whitespace or control characters.
pub(crate) const MAX_KEY_LEN: usize = 250;

/// Replies longer than this are not ours (sessions are bounded by `session.max_size`,
/// far below memcached's 1 MiB item limit): treat as a protocol error, do not allocate.
const MAX_VALUE_LEN: usize = 4 * 1024 * 1024;
/// Longest reply header line we accept.
const MAX_LINE_LEN: usize = 1024;

/// Is `key` acceptable to memcached as is?
pub(crate) fn valid_key(key: &str) -> bool {
    !key.is_empty() && key.len() <= MAX_KEY_LEN && key.bytes().all(|b| b.is_ascii_graphic())
}

/// How `ms` stores.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Mode {
    /// Store unconditionally (or conditionally on `cas`).
    Set,
    /// Store only if absent (`ME`).
    Add,
}

/// One meta command.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Cmd<'a> {
    /// `mg key v c t [T<exp>]`.
    Get { key: &'a str, touch: Option<u64> },
    /// `mg key T<exp>`.
    Touch { key: &'a str, exp: u64 },
    /// `ms key len T<exp> [C<cas>] [ME]`.
    Set {
        key: &'a str,
        value: &'a [u8],
        exp: u64,
        cas: Option<u64>,
        mode: Mode,
    },
    /// `md key [C<cas>]`.
    Delete { key: &'a str, cas: Option<u64> },
    /// `version`.
    Version,
}

/// One reply.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Reply {
    /// `VA`: a value, its CAS and the seconds left to its expiry as the read found it
    /// (`-1`: none; `None` when the server did not say).
    Value {
        cas: u64,
        data: Vec<u8>,
        ttl: Option<i64>,
    },
    /// `HD`: success without a value (stored, deleted, touched).
    Done,
    /// `EN`: miss (`mg`).
    Miss,
    /// `NS`: not stored (`ms` in add mode on an existing item).
    NotStored,
    /// `EX`: the CAS did not match.
    Exists,
    /// `NF`: not found (`ms` with CAS, `md`).
    NotFound,
    /// `VERSION x`.
    Version(String),
}

/// Why a batch failed. Messages name the server address and the protocol's words only,
/// never keys or values.
#[derive(Debug, thiserror::Error)]
pub(crate) enum ClientError {
    #[error("memcached {addr}: {source}")]
    Io {
        addr: String,
        source: std::io::Error,
    },
    #[error("memcached {addr}: {message}")]
    Server { addr: String, message: String },
    #[error("memcached {addr}: unexpected reply ({what})")]
    Protocol { addr: String, what: &'static str },
}

/// Append the wire form of `cmd` to `out`. Keys were checked by the store at
/// construction (prefix) and are built from base64url, so they are valid here.
pub(crate) fn encode(cmd: &Cmd<'_>, out: &mut Vec<u8>) {
    use std::io::Write as _;
    // Writing into a Vec cannot fail.
    let _ = match cmd {
        // `t` before `T`: the TTL left before this command's touch.
        Cmd::Get { key, touch: None } => write!(out, "mg {key} v c t\r\n"),
        Cmd::Get {
            key,
            touch: Some(exp),
        } => write!(out, "mg {key} v c t T{exp}\r\n"),
        Cmd::Touch { key, exp } => write!(out, "mg {key} T{exp}\r\n"),
        Cmd::Set {
            key,
            value,
            exp,
            cas,
            mode,
        } => {
            let _ = write!(out, "ms {key} {} T{exp}", value.len());
            if let Some(cas) = cas {
                let _ = write!(out, " C{cas}");
            }
            if *mode == Mode::Add {
                out.extend_from_slice(b" ME");
            }
            out.extend_from_slice(b"\r\n");
            out.extend_from_slice(value);
            out.extend_from_slice(b"\r\n");
            Ok(())
        }
        Cmd::Delete { key, cas: None } => write!(out, "md {key}\r\n"),
        Cmd::Delete {
            key,
            cas: Some(cas),
        } => write!(out, "md {key} C{cas}\r\n"),
        Cmd::Version => write!(out, "version\r\n"),
    };
}

/// A parsed reply header line (without its data block).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Header {
    /// `VA <len> <flags>`: `len` data bytes plus `\r\n` follow.
    Value {
        len: usize,
        cas: Option<u64>,
        ttl: Option<i64>,
    },
    Other(Reply),
    /// `ERROR`, `CLIENT_ERROR …`, `SERVER_ERROR …` (e.g. out of memory).
    Error(String),
}

/// Parse one reply line (with or without its trailing `\r\n`).
pub(crate) fn parse_header(line: &[u8]) -> Result<Header, &'static str> {
    let line = line
        .strip_suffix(b"\r\n")
        .or_else(|| line.strip_suffix(b"\n"))
        .unwrap_or(line);
    let text = std::str::from_utf8(line).map_err(|_| "non-UTF-8 reply line")?;
    if text.starts_with("SERVER_ERROR") || text.starts_with("CLIENT_ERROR") || text == "ERROR" {
        // The server's own words; they never echo keys or values.
        return Ok(Header::Error(text.chars().take(200).collect()));
    }
    if let Some(version) = text.strip_prefix("VERSION ") {
        return Ok(Header::Other(Reply::Version(version.to_owned())));
    }
    let mut tokens = text.split(' ');
    let code = tokens.next().unwrap_or_default();
    match code {
        "VA" => {
            let len: usize = tokens
                .next()
                .and_then(|t| t.parse().ok())
                .ok_or("VA without a length")?;
            if len > MAX_VALUE_LEN {
                return Err("value too large");
            }
            let mut cas = None;
            let mut ttl = None;
            for flag in tokens {
                if let Some(v) = flag.strip_prefix('c') {
                    cas = Some(v.parse().map_err(|_| "bad CAS flag")?);
                } else if let Some(v) = flag.strip_prefix('t') {
                    ttl = Some(
                        v.parse::<i64>()
                            .ok()
                            .filter(|&t| t >= -1)
                            .ok_or("bad TTL flag")?,
                    );
                }
            }
            Ok(Header::Value { len, cas, ttl })
        }
        // Return flags after HD (e.g. `t`) are not used by the store.
        "HD" => Ok(Header::Other(Reply::Done)),
        "EN" => Ok(Header::Other(Reply::Miss)),
        "NS" => Ok(Header::Other(Reply::NotStored)),
        "EX" => Ok(Header::Other(Reply::Exists)),
        "NF" => Ok(Header::Other(Reply::NotFound)),
        _ => Err("unknown reply code"),
    }
}

/// One open connection.
struct Conn {
    stream: BufReader<TcpStream>,
    /// Replies still owed by commands sent without waiting ([`Lease::send`]); the next
    /// batch on this connection reads and discards them before its own.
    unread: usize,
}

impl Conn {
    async fn connect(addr: &str) -> std::io::Result<Conn> {
        let stream = TcpStream::connect(addr).await?;
        // Every exchange is a small request and a small reply: Nagle would only delay.
        stream.set_nodelay(true)?;
        Ok(Conn {
            stream: BufReader::new(stream),
            unread: 0,
        })
    }

    async fn read_reply(&mut self, addr: &str) -> Result<Reply, ClientError> {
        let io = |source| ClientError::Io {
            addr: addr.to_owned(),
            source,
        };
        let proto = |what| ClientError::Protocol {
            addr: addr.to_owned(),
            what,
        };
        let mut line = Vec::with_capacity(64);
        let n = (&mut self.stream)
            .take(MAX_LINE_LEN as u64)
            .read_until(b'\n', &mut line)
            .await
            .map_err(io)?;
        if n == 0 {
            return Err(io(std::io::ErrorKind::UnexpectedEof.into()));
        }
        if !line.ends_with(b"\n") {
            return Err(proto("reply line too long or cut"));
        }
        match parse_header(&line).map_err(proto)? {
            Header::Value { len, cas, ttl } => {
                let mut data = vec![0u8; len + 2];
                self.stream.read_exact(&mut data).await.map_err(io)?;
                if !data.ends_with(b"\r\n") {
                    return Err(proto("value not terminated"));
                }
                data.truncate(len);
                Ok(Reply::Value {
                    cas: cas.ok_or_else(|| proto("value without CAS"))?,
                    data,
                    ttl,
                })
            }
            Header::Other(reply) => Ok(reply),
            Header::Error(message) => Err(ClientError::Server {
                addr: addr.to_owned(),
                message,
            }),
        }
    }
}

/// One configured server: its address and a bounded pool.
pub(crate) struct Server {
    addr: String,
    idle: Mutex<Vec<Conn>>,
    /// Bounds open connections to this server (`store.storage.max_connections`).
    permits: Semaphore,
}

impl fmt::Debug for Server {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Server")
            .field("addr", &self.addr)
            .field("max_connections", &self.permits.available_permits())
            .finish_non_exhaustive()
    }
}

impl Server {
    pub(crate) fn new(addr: String, max_connections: usize) -> Server {
        Server {
            addr,
            idle: Mutex::new(Vec::new()),
            permits: Semaphore::new(max_connections.max(1)),
        }
    }

    fn idle(&self) -> MutexGuard<'_, Vec<Conn>> {
        // Only Vec push/pop happen under the lock; a poisoned lock holds a usable Vec.
        self.idle.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Wait for a free connection slot. No I/O: the connection is opened (or taken
    /// from the idle list) by the first batch.
    pub(crate) async fn lease(&self) -> Result<Lease<'_>, ClientError> {
        let permit = self
            .permits
            .acquire()
            .await
            .map_err(|_| ClientError::Protocol {
                addr: self.addr.clone(),
                what: "connection pool closed",
            })?;
        Ok(Lease {
            server: self,
            _permit: permit,
            conn: None,
        })
    }
}

/// The right to use one connection to one server, for as many batches as the caller
/// needs. Dropping it returns a cleanly used connection to the pool.
pub(crate) struct Lease<'a> {
    server: &'a Server,
    _permit: SemaphorePermit<'a>,
    /// `Some` only between complete batches: a batch takes it out and puts it back
    /// when every reply was read, so a cancelled batch leaves `None` here.
    conn: Option<Conn>,
}

impl Lease<'_> {
    /// Send `cmds` in one write and read one reply per command.
    ///
    /// `retry_safe`: the batch only reads or touches, so running it twice is harmless; it
    /// is then retried once on a fresh connection when it failed on a reused one.
    pub(crate) async fn run(
        &mut self,
        cmds: &[Cmd<'_>],
        retry_safe: bool,
    ) -> Result<Vec<Reply>, ClientError> {
        let mut wire = Vec::with_capacity(256);
        for cmd in cmds {
            encode(cmd, &mut wire);
        }
        let (conn, reused) = match self.conn.take() {
            Some(conn) => (Some(conn), true),
            None => match self.server.idle().pop() {
                Some(conn) => (Some(conn), true),
                None => (None, false),
            },
        };
        let mut conn = match conn {
            Some(conn) => conn,
            None => self.connect().await?,
        };
        match self.exchange(&mut conn, &wire, cmds.len()).await {
            Ok(replies) => {
                self.conn = Some(conn);
                Ok(replies)
            }
            Err(e) => {
                drop(conn);
                if matches!(e, ClientError::Io { .. }) {
                    // The server probably restarted or died: its other idle
                    // connections are stale too.
                    self.server.idle().clear();
                    if retry_safe && reused {
                        let mut fresh = self.connect().await?;
                        let replies = self.exchange(&mut fresh, &wire, cmds.len()).await?;
                        self.conn = Some(fresh);
                        return Ok(replies);
                    }
                }
                Err(e)
            }
        }
    }

    /// Send `cmds` without waiting for their replies (the next batch on this connection
    /// reads and discards them): for commands whose outcome does not matter to the
    /// caller, such as correcting a TTL, so they cost no round trip.
    pub(crate) async fn send(&mut self, cmds: &[Cmd<'_>]) -> Result<(), ClientError> {
        let mut wire = Vec::with_capacity(128);
        for cmd in cmds {
            encode(cmd, &mut wire);
        }
        let conn = match self.conn.take() {
            Some(conn) => Some(conn),
            None => self.server.idle().pop(),
        };
        let mut conn = match conn {
            Some(conn) => conn,
            None => self.connect().await?,
        };
        let addr = &self.server.addr;
        conn.stream
            .get_mut()
            .write_all(&wire)
            .await
            .map_err(|source| ClientError::Io {
                addr: addr.clone(),
                source,
            })?;
        conn.unread += cmds.len();
        self.conn = Some(conn);
        Ok(())
    }

    async fn connect(&self) -> Result<Conn, ClientError> {
        Conn::connect(&self.server.addr)
            .await
            .map_err(|source| ClientError::Io {
                addr: self.server.addr.clone(),
                source,
            })
    }

    async fn exchange(
        &self,
        conn: &mut Conn,
        wire: &[u8],
        count: usize,
    ) -> Result<Vec<Reply>, ClientError> {
        let addr = &self.server.addr;
        conn.stream
            .get_mut()
            .write_all(wire)
            .await
            .map_err(|source| ClientError::Io {
                addr: addr.clone(),
                source,
            })?;
        // Replies owed by earlier fire-and-forget commands come first; their outcome is
        // of no interest (a server error among them is not this batch's).
        while conn.unread > 0 {
            match conn.read_reply(addr).await {
                Ok(_) | Err(ClientError::Server { .. }) => conn.unread -= 1,
                Err(e) => return Err(e),
            }
        }
        let mut replies = Vec::with_capacity(count);
        for _ in 0..count {
            replies.push(conn.read_reply(addr).await?);
        }
        Ok(replies)
    }
}

impl Drop for Lease<'_> {
    fn drop(&mut self) {
        if let Some(conn) = self.conn.take() {
            self.server.idle().push(conn);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn wire(cmd: Cmd<'_>) -> String {
        let mut out = Vec::new();
        encode(&cmd, &mut out);
        String::from_utf8(out).unwrap()
    }

    #[test]
    fn encodes_meta_commands() {
        assert_eq!(
            wire(Cmd::Get {
                key: "k",
                touch: None
            }),
            "mg k v c t\r\n"
        );
        assert_eq!(
            wire(Cmd::Get {
                key: "k",
                touch: Some(61)
            }),
            "mg k v c t T61\r\n"
        );
        assert_eq!(wire(Cmd::Touch { key: "k", exp: 5 }), "mg k T5\r\n");
        assert_eq!(
            wire(Cmd::Set {
                key: "k",
                value: b"ab",
                exp: 9,
                cas: Some(7),
                mode: Mode::Set
            }),
            "ms k 2 T9 C7\r\nab\r\n"
        );
        assert_eq!(
            wire(Cmd::Set {
                key: "k",
                value: b"x",
                exp: 9,
                cas: None,
                mode: Mode::Add
            }),
            "ms k 1 T9 ME\r\nx\r\n"
        );
        assert_eq!(
            wire(Cmd::Delete {
                key: "k",
                cas: None
            }),
            "md k\r\n"
        );
        assert_eq!(
            wire(Cmd::Delete {
                key: "k",
                cas: Some(3)
            }),
            "md k C3\r\n"
        );
        assert_eq!(wire(Cmd::Version), "version\r\n");
    }

    #[test]
    fn parses_reply_lines() {
        assert_eq!(
            parse_header(b"VA 3 c12 t9\r\n"),
            Ok(Header::Value {
                len: 3,
                cas: Some(12),
                ttl: Some(9)
            })
        );
        assert_eq!(
            parse_header(b"VA 0 t-1\r\n"),
            Ok(Header::Value {
                len: 0,
                cas: None,
                ttl: Some(-1)
            })
        );
        assert_eq!(
            parse_header(b"VA 0\r\n"),
            Ok(Header::Value {
                len: 0,
                cas: None,
                ttl: None
            })
        );
        assert!(parse_header(b"VA 3 c1 tX\r\n").is_err());
        assert!(parse_header(b"VA 3 c1 t-2\r\n").is_err());
        for (line, reply) in [
            (&b"HD\r\n"[..], Reply::Done),
            (b"HD c1 t100\r\n", Reply::Done),
            (b"EN\r\n", Reply::Miss),
            (b"NS\r\n", Reply::NotStored),
            (b"EX\r\n", Reply::Exists),
            (b"NF\r\n", Reply::NotFound),
            (b"VERSION 1.6.18\r\n", Reply::Version("1.6.18".into())),
        ] {
            assert_eq!(parse_header(line), Ok(Header::Other(reply)));
        }
        assert_eq!(
            parse_header(b"SERVER_ERROR out of memory storing object\r\n"),
            Ok(Header::Error(
                "SERVER_ERROR out of memory storing object".into()
            ))
        );
        assert_eq!(
            parse_header(b"ERROR\r\n"),
            Ok(Header::Error("ERROR".into()))
        );
        assert!(parse_header(b"VA x\r\n").is_err());
        assert!(parse_header(b"VA 3 cX\r\n").is_err());
        assert!(parse_header(b"VA 99999999999\r\n").is_err());
        assert!(parse_header(b"WAT\r\n").is_err());
        assert!(parse_header(b"\xff\r\n").is_err());
    }

    #[test]
    fn key_rules() {
        assert!(valid_key("session:abc_-:flash"));
        assert!(valid_key(&"k".repeat(250)));
        assert!(!valid_key(&"k".repeat(251)));
        assert!(!valid_key(""));
        assert!(!valid_key("a b"));
        assert!(!valid_key("a\tb"));
        assert!(!valid_key("a\u{7f}"));
        assert!(!valid_key("clé"));
    }
}
