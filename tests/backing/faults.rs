//! A fault-injecting TCP proxy between a sidecar and a real `redis-server` or
//! `memcached` (never a mock: the store behind it is real). It runs on a runtime of its
//! own, on its own thread, so its tasks never show in the test runtime's task count and
//! its timers are not slowed down by the test's load.
//!
//! Each direction (`ToServer`: sidecar → store, `ToClient`: store → sidecar) has a
//! [`Fault`], switchable at any time:
//!
//! - `Pass`: bytes go through as they come;
//! - `Delay(d)`: every chunk is forwarded `d` after it was read (a long link: the delay
//!   does not add up over chunks, and order is kept);
//! - `DropAfter(n)` / `ResetAfter(n)`: each connection forwards `n` more bytes in that
//!   direction (counted from its first chunk under this fault), then the proxy closes
//!   both sides of it, with a FIN or an RST (`SO_LINGER` 0): a connection cut mid-reply;
//!   `DropOnceAfter(n)` cuts the first connection that reaches `n` (FIN), then the
//!   direction is back to `Pass`: one reply lost, deterministically;
//! - `BlackHole`: bytes are read and thrown away, nothing is answered. A connection that
//!   lost a byte this way never forwards anything again in that direction, even after
//!   the fault is cleared (a path that forgot the connection, as a NAT or firewall
//!   does: TCP never resumes a stream with a hole in it). A connection accepted while
//!   either direction is a black hole is never connected to the store: it is read from
//!   and never answered, for good. Closes still go through, so a peer that gives up on
//!   a connection is not kept open by the proxy;
//! - `Flap(p)`: `BlackHole` for `p`, then `Pass` for `p`, and so on, starting with the
//!   black hole when it is set.
//!
//! Besides: [`FaultProxy::refuse`] closes the listening socket (new connections are
//! refused by the kernel, as when nothing listens) until it is called again with
//! `false`, and [`FaultProxy::cut_all`] closes (or resets) every open connection.
//! [`FaultProxy::open`] counts the connections open now (closed by neither side yet),
//! [`FaultProxy::total`] all accepted so far.

use std::{
    net::{SocketAddr, TcpListener as StdListener},
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicUsize, Ordering},
    },
    time::{Duration, Instant},
};

use bytes::Bytes;
use tokio::{
    io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt},
    net::{TcpListener, TcpSocket, TcpStream},
    sync::{mpsc, oneshot, watch},
};

/// Which way bytes flow.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dir {
    /// Sidecar → store (requests).
    ToServer,
    /// Store → sidecar (replies).
    ToClient,
}

/// What happens to the bytes of one direction (see the module docs).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    Pass,
    Delay(Duration),
    DropAfter(usize),
    ResetAfter(usize),
    DropOnceAfter(usize),
    BlackHole,
    Flap(Duration),
}

/// How [`FaultProxy::cut_all`] and the `…After` faults close a connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Cut {
    Fin,
    Reset,
}

/// One direction's fault, when it was set, and a counter that tells connections a new
/// fault was set (the byte budgets of `DropAfter`/`ResetAfter` start over).
#[derive(Debug, Clone, Copy)]
struct Setting {
    fault: Fault,
    since: Instant,
    generation: u64,
}

impl Setting {
    /// The fault in force at `now` (`Flap` resolved to its phase).
    fn at(&self, now: Instant) -> Fault {
        match self.fault {
            Fault::Flap(period) => {
                let phase =
                    now.saturating_duration_since(self.since).as_nanos() / period.as_nanos().max(1);
                if phase.is_multiple_of(2) {
                    Fault::BlackHole
                } else {
                    Fault::Pass
                }
            }
            other => other,
        }
    }
}

#[derive(Debug, Clone, Copy)]
struct Modes {
    to_server: Setting,
    to_client: Setting,
    refuse: bool,
    /// Bumped by [`FaultProxy::cut_all`], with how to cut.
    cut_all: (u64, Cut),
}

impl Modes {
    fn of(&self, dir: Dir) -> Setting {
        match dir {
            Dir::ToServer => self.to_server,
            Dir::ToClient => self.to_client,
        }
    }

    fn black_hole_now(&self, now: Instant) -> bool {
        self.to_server.at(now) == Fault::BlackHole || self.to_client.at(now) == Fault::BlackHole
    }
}

struct Shared {
    target: SocketAddr,
    modes: watch::Sender<Modes>,
    open: AtomicUsize,
    total: AtomicUsize,
    swallowed: AtomicUsize,
    cuts: AtomicUsize,
    /// The listening socket is open (see [`FaultProxy::refuse`]).
    listening: AtomicBool,
}

/// Counts a connection as open until dropped.
struct OpenGuard(Arc<Shared>);

impl Drop for OpenGuard {
    fn drop(&mut self) {
        self.0.open.fetch_sub(1, Ordering::SeqCst);
    }
}

/// The proxy; stopped (every connection closed) when dropped.
pub struct FaultProxy {
    addr: SocketAddr,
    shared: Arc<Shared>,
    stop: Option<oneshot::Sender<()>>,
}

impl FaultProxy {
    /// Listen on a free loopback port and forward to `127.0.0.1:target_port`.
    pub fn start(target_port: u16) -> FaultProxy {
        let target = SocketAddr::from(([127, 0, 0, 1], target_port));
        let std_listener = StdListener::bind("127.0.0.1:0").expect("bind the fault proxy");
        std_listener.set_nonblocking(true).expect("nonblocking");
        let addr = std_listener.local_addr().expect("fault proxy address");
        let now = Instant::now();
        let pass = Setting {
            fault: Fault::Pass,
            since: now,
            generation: 0,
        };
        let (modes, _) = watch::channel(Modes {
            to_server: pass,
            to_client: pass,
            refuse: false,
            cut_all: (0, Cut::Fin),
        });
        let shared = Arc::new(Shared {
            target,
            modes,
            open: AtomicUsize::new(0),
            total: AtomicUsize::new(0),
            swallowed: AtomicUsize::new(0),
            cuts: AtomicUsize::new(0),
            listening: AtomicBool::new(true),
        });
        let (stop, stopped) = oneshot::channel();
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        let state = shared.clone();
        std::thread::Builder::new()
            .name(format!("fault-proxy-{}", addr.port()))
            .spawn(move || {
                let runtime = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .expect("fault proxy runtime");
                runtime.block_on(async move {
                    let listener = TcpListener::from_std(std_listener).expect("tokio listener");
                    let _ = ready_tx.send(());
                    tokio::select! {
                        _ = accept_loop(listener, addr, state) => {}
                        _ = stopped => {}
                    }
                });
                // Dropping the runtime cancels every connection task: all sockets close.
            })
            .expect("spawn the fault proxy thread");
        ready_rx.recv().expect("fault proxy started");
        FaultProxy {
            addr,
            shared,
            stop: Some(stop),
        }
    }

    pub fn port(&self) -> u16 {
        self.addr.port()
    }

    /// Set the fault of one direction.
    pub fn set(&self, dir: Dir, fault: Fault) {
        self.shared.modes.send_modify(|m| {
            let now = Instant::now();
            let slot = match dir {
                Dir::ToServer => &mut m.to_server,
                Dir::ToClient => &mut m.to_client,
            };
            *slot = Setting {
                fault,
                since: now,
                generation: slot.generation + 1,
            };
        });
    }

    /// Set the same fault on both directions (one flap clock for both).
    pub fn set_both(&self, fault: Fault) {
        self.shared.modes.send_modify(|m| {
            let now = Instant::now();
            for slot in [&mut m.to_server, &mut m.to_client] {
                *slot = Setting {
                    fault,
                    since: now,
                    generation: slot.generation + 1,
                };
            }
        });
    }

    /// Both directions back to `Pass`, connections accepted again. Connections that
    /// lost bytes to a black hole stay dead (see the module docs).
    pub fn clear(&self) {
        self.set_both(Fault::Pass);
        self.refuse(false);
    }

    /// Refuse new connections (the listening socket is closed) or accept them again.
    /// Returns once the socket is closed (or listening again).
    pub fn refuse(&self, on: bool) {
        self.shared.modes.send_modify(|m| m.refuse = on);
        let deadline = Instant::now() + Duration::from_secs(5);
        while self.shared.listening.load(Ordering::SeqCst) == on {
            assert!(Instant::now() < deadline, "the fault proxy did not follow");
            std::thread::sleep(Duration::from_millis(1));
        }
    }

    /// Close every open connection now, with an RST when `reset`.
    pub fn cut_all(&self, reset: bool) {
        let how = if reset { Cut::Reset } else { Cut::Fin };
        self.shared
            .modes
            .send_modify(|m| m.cut_all = (m.cut_all.0 + 1, how));
    }

    /// Connections open now (accepted, and closed by neither the proxy nor the peer).
    pub fn open(&self) -> usize {
        self.shared.open.load(Ordering::SeqCst)
    }

    /// Connections accepted so far.
    pub fn total(&self) -> usize {
        self.shared.total.load(Ordering::SeqCst)
    }

    /// Connections accepted during a black hole and never answered.
    pub fn swallowed(&self) -> usize {
        self.shared.swallowed.load(Ordering::SeqCst)
    }

    /// Connections cut by a `…After` fault so far.
    pub fn cuts(&self) -> usize {
        self.shared.cuts.load(Ordering::SeqCst)
    }
}

impl Drop for FaultProxy {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }
}

/// A listening socket on `addr` again (after [`FaultProxy::refuse`]); `SO_REUSEADDR`
/// so the port's connections in `TIME_WAIT` do not stand in the way.
fn rebind(addr: SocketAddr) -> std::io::Result<TcpListener> {
    let socket = TcpSocket::new_v4()?;
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(1024)
}

async fn accept_loop(listener: TcpListener, addr: SocketAddr, shared: Arc<Shared>) {
    let mut changes = shared.modes.subscribe();
    let mut listener = Some(listener);
    loop {
        let refuse = changes.borrow_and_update().refuse;
        if refuse {
            listener = None; // closed: connects are refused by the kernel
            shared.listening.store(false, Ordering::SeqCst);
        } else if listener.is_none() {
            // Another process could take the port meanwhile; retry briefly.
            let mut attempts = 0;
            listener = loop {
                match rebind(addr) {
                    Ok(l) => break Some(l),
                    Err(_) if attempts < 100 => {
                        attempts += 1;
                        tokio::time::sleep(Duration::from_millis(20)).await;
                    }
                    Err(e) => panic!("fault proxy cannot listen on {addr} again: {e}"),
                }
            };
            shared.listening.store(true, Ordering::SeqCst);
        }
        let Some(l) = listener.as_ref() else {
            if changes.changed().await.is_err() {
                return;
            }
            continue;
        };
        tokio::select! {
            accepted = l.accept() => {
                let Ok((client, _)) = accepted else { continue };
                shared.total.fetch_add(1, Ordering::SeqCst);
                shared.open.fetch_add(1, Ordering::SeqCst);
                let guard = OpenGuard(shared.clone());
                let swallow = shared.modes.borrow().black_hole_now(Instant::now());
                if swallow {
                    shared.swallowed.fetch_add(1, Ordering::SeqCst);
                    tokio::spawn(swallow_forever(client, guard));
                } else {
                    tokio::spawn(serve(client, shared.clone(), guard));
                }
            }
            changed = changes.changed() => {
                if changed.is_err() {
                    return;
                }
            }
        }
    }
}

/// Read and discard until the peer closes; never answer.
async fn swallow_forever(mut client: TcpStream, _open: OpenGuard) {
    let mut buf = vec![0u8; 16 * 1024];
    while let Ok(n) = client.read(&mut buf).await {
        if n == 0 {
            break;
        }
    }
}

async fn serve(mut client: TcpStream, shared: Arc<Shared>, _open: OpenGuard) {
    let Ok(mut server) = TcpStream::connect(shared.target).await else {
        return; // the store is down: the client sees its connection closed
    };
    let _ = client.set_nodelay(true);
    let _ = server.set_nodelay(true);
    let (kill_tx, mut kill_rx) = watch::channel(None::<Cut>);
    let mut changes = shared.modes.subscribe();
    let cut_seen = changes.borrow_and_update().cut_all.0;
    let cut = {
        let (cr, cw) = client.split();
        let (sr, sw) = server.split();
        let up = pump(Dir::ToServer, cr, sw, &shared, &kill_tx);
        let down = pump(Dir::ToClient, sr, cw, &shared, &kill_tx);
        let killed = async {
            loop {
                tokio::select! {
                    k = kill_rx.changed() => {
                        if k.is_err() { return None; }
                        if let Some(how) = *kill_rx.borrow() { return Some(how); }
                    }
                    c = changes.changed() => {
                        if c.is_err() { return None; }
                        let (n, how) = changes.borrow_and_update().cut_all;
                        if n != cut_seen { return Some(how); }
                    }
                }
            }
        };
        tokio::select! {
            _ = async { tokio::join!(up, down) } => None,
            how = killed => how,
        }
    };
    if cut == Some(Cut::Reset) {
        // Closing a socket with SO_LINGER 0 sends an RST instead of a FIN. (Deprecated
        // because a non-zero linger blocks the thread on drop; zero never does.)
        #[allow(deprecated)]
        for socket in [&client, &server] {
            let _ = socket.set_linger(Some(Duration::ZERO));
        }
    }
    drop(client);
    drop(server);
}

/// One direction of one connection: a reader that applies the fault at read time
/// (black hole, delay) and a writer that delivers in order and enforces the byte
/// budgets. Ends when the source closed and everything was delivered (the close is
/// passed on), or when the destination fails.
async fn pump<R, W>(
    dir: Dir,
    mut from: R,
    mut to: W,
    shared: &Shared,
    kill: &watch::Sender<Option<Cut>>,
) where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let (tx, mut rx) = mpsc::unbounded_channel::<(Instant, Bytes)>();
    let reader = async move {
        let mut buf = vec![0u8; 16 * 1024];
        let mut wedged = false;
        loop {
            let n = match from.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => n,
            };
            let now = Instant::now();
            let fault = shared.modes.borrow().of(dir).at(now);
            if wedged || fault == Fault::BlackHole {
                wedged = true;
                continue;
            }
            let due = match fault {
                Fault::Delay(d) => now + d,
                _ => now,
            };
            // A writer that failed is gone: keep reading (and dropping) until the close.
            let _ = tx.send((due, Bytes::copy_from_slice(&buf[..n])));
        }
        // Dropping `tx` lets the writer pass the close on once it delivered the rest.
    };
    let writer = async move {
        let mut budget: Option<(u64, usize)> = None;
        while let Some((due, chunk)) = rx.recv().await {
            tokio::time::sleep_until(due.into()).await;
            let setting = shared.modes.borrow().of(dir);
            let fault = setting.at(Instant::now());
            let cut = match fault {
                Fault::DropAfter(n) | Fault::DropOnceAfter(n) => Some((n, Cut::Fin)),
                Fault::ResetAfter(n) => Some((n, Cut::Reset)),
                _ => None,
            };
            let Some((limit, how)) = cut else {
                if to.write_all(&chunk).await.is_err() {
                    return;
                }
                continue;
            };
            let sent = match budget {
                Some((generation, sent)) if generation == setting.generation => sent,
                _ => 0,
            };
            let room = limit.saturating_sub(sent);
            if chunk.len() < room {
                if to.write_all(&chunk).await.is_err() {
                    return;
                }
                budget = Some((setting.generation, sent + chunk.len()));
                continue;
            }
            let _ = to.write_all(&chunk[..room]).await;
            let _ = to.flush().await;
            if matches!(fault, Fault::DropOnceAfter(_)) {
                shared.modes.send_modify(|m| {
                    let slot = match dir {
                        Dir::ToServer => &mut m.to_server,
                        Dir::ToClient => &mut m.to_client,
                    };
                    if slot.generation == setting.generation {
                        slot.fault = Fault::Pass;
                        slot.generation += 1;
                    }
                });
            }
            shared.cuts.fetch_add(1, Ordering::SeqCst);
            let _ = kill.send(Some(how));
            return;
        }
        let _ = to.shutdown().await;
    };
    tokio::join!(reader, writer);
}
