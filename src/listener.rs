//! Listening sockets and the accept loop.
//!
//! Sockets are built with `socket2` so that the listen backlog is the kernel's maximum (std asks
//! for 128, which a burst of connects overflows) and `::` is dual-stack. The accept loop never
//! blocks on a full pool: a connection over `--max-connections` is told `busy` and closed right
//! there, without waiting for anything. Accept errors (EMFILE, ECONNABORTED, ...) are logged and
//! retried after a short, growing pause, never a spin and never the end of the loop.
//!
//! Stopping wakes each blocked `accept` with a connection to the listener itself (portable:
//! shutting a listening socket wakes `accept` only on Linux, and there it resets the
//! connections still queued), takes what the accept queue holds, and closes the listener.

use std::io::{self, ErrorKind, Read, Write};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use log::{debug, info, warn};
use socket2::{Domain, Protocol, Socket, Type};

use crate::config::Config;
use crate::connection::{self, canonical, Job, Shared};
use crate::error::Error;
use crate::pool::{Pool, Refused};

/// First pause after a failed accept; it doubles up to [`ACCEPT_BACKOFF_MAX`].
const ACCEPT_BACKOFF_MIN: Duration = Duration::from_millis(1);
/// Longest pause between accept attempts while accept keeps failing.
pub const ACCEPT_BACKOFF_MAX: Duration = Duration::from_millis(100);
/// While accept keeps failing, at most one log line per this interval.
const ACCEPT_LOG_EVERY: Duration = Duration::from_secs(1);

/// Binds one listener per port of `config` on its address. With `bind_fallback`, an
/// unavailable IPv6 (`::`) falls back to `0.0.0.0`. Sockets accepted from them get
/// `--socket-buffer` send and receive buffers.
pub fn bind_all(config: &Config) -> Result<Vec<TcpListener>, Error> {
    config
        .ports
        .iter()
        .map(|&port| bind_one(SocketAddr::new(config.bind, port), config))
        .collect()
}

fn bind_one(addr: SocketAddr, config: &Config) -> Result<TcpListener, Error> {
    bind_with(addr, config.bind_fallback, config.socket_buffer)
}

/// Binds one listener on `addr`; with `fallback`, an unavailable IPv6 `::` falls back to
/// `0.0.0.0`. Accepted sockets get `socket_buffer` (`None`: the kernel's autotuning).
pub fn bind_with(
    addr: SocketAddr,
    fallback: bool,
    buffer: Option<usize>,
) -> Result<TcpListener, Error> {
    match listen(addr, buffer) {
        Err(e) if fallback && addr.is_ipv6() && ipv6_unavailable(&e) => {
            let v4 = SocketAddr::new(IpAddr::V4(Ipv4Addr::UNSPECIFIED), addr.port());
            info!("IPv6 is unavailable ({e}); listening on {v4} instead of {addr}");
            listen(v4, buffer).map_err(|source| Error::Bind { addr: v4, source })
        }
        result => result.map_err(|source| Error::Bind { addr, source }),
    }
}

fn ipv6_unavailable(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        ErrorKind::AddrNotAvailable | ErrorKind::Unsupported
    ) || e.raw_os_error() == Some(libc::EAFNOSUPPORT)
        || e.raw_os_error() == Some(libc::EPROTONOSUPPORT)
}

fn listen(addr: SocketAddr, socket_buffer: Option<usize>) -> io::Result<TcpListener> {
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    if addr.is_ipv6() && addr.ip().is_unspecified() {
        socket.set_only_v6(false)?;
    }
    socket.set_reuse_address(true)?;
    // Accepted sockets inherit these: fixed buffers instead of autotuning, which grows a
    // non-reading client's send queue to megabytes.
    if let Some(size) = socket_buffer {
        socket.set_recv_buffer_size(size)?;
        socket.set_send_buffer_size(size)?;
    }
    socket.bind(&addr.into())?;
    // The kernel caps this at net.core.somaxconn: ask for the maximum, as Go does.
    socket.listen(libc::c_int::MAX)?;
    Ok(socket.into())
}

/// How long waking an acceptor with a connection to its own listener may take before the
/// listener is shut instead.
const WAKE_TIMEOUT: Duration = Duration::from_millis(500);

/// After the stop, how long an acceptor keeps taking connections already in its accept queue.
const QUEUE_DRAIN_MAX: Duration = Duration::from_millis(500);

/// The acceptor threads, one per listener. Stopping them, or dropping them (a failed start),
/// stops accepting on every listener and joins every thread: nothing is left behind.
pub struct Acceptors {
    stop: Arc<Stop>,
    running: Vec<Running>,
}

struct Running {
    addr: SocketAddr,
    /// A second handle on the listening socket, to shut it if the acceptor cannot be woken.
    fallback: TcpListener,
    join: JoinHandle<()>,
}

/// What stopping shares with the acceptors.
#[derive(Default)]
struct Stop {
    requested: AtomicBool,
    /// Local addresses of the connections that woke the acceptors (not clients).
    wakers: Mutex<Vec<SocketAddr>>,
    /// Connections taken from the accept queues after the stop.
    taken: AtomicU64,
}

impl Stop {
    fn requested(&self) -> bool {
        self.requested.load(Ordering::Acquire)
    }

    fn is_waker(&self, peer: SocketAddr) -> bool {
        self.wakers
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .contains(&canonical(peer))
    }
}

impl Acceptors {
    /// Starts one acceptor thread (`tcp-echo-accept-PORT`) per listener; `addrs` are their
    /// bound addresses, in the same order.
    pub fn start(
        listeners: Vec<TcpListener>,
        addrs: &[SocketAddr],
        shared: &Arc<Shared>,
        pool: &Arc<Pool<Job>>,
    ) -> Result<Acceptors, Error> {
        let mut acceptors = Acceptors {
            stop: Arc::default(),
            running: Vec::with_capacity(listeners.len()),
        };
        for (listener, &addr) in listeners.into_iter().zip(addrs) {
            let fallback = listener
                .try_clone()
                .map_err(|source| Error::Bind { addr, source })?;
            let acceptor = Acceptor {
                shared: Arc::clone(shared),
                pool: Arc::clone(pool),
                stop: Arc::clone(&acceptors.stop),
            };
            let name = format!("tcp-echo-accept-{}", addr.port());
            let join = thread::Builder::new()
                .name(name.clone())
                .stack_size(crate::pool::WORKER_STACK)
                .spawn(move || acceptor.run(listener))
                .map_err(|source| Error::Thread { name, source })?;
            acceptors.running.push(Running {
                addr,
                fallback,
                join,
            });
        }
        Ok(acceptors)
    }

    /// Stops accepting. Each acceptor is woken, takes the connections already waiting in its
    /// accept queue (they are served like any other, or told `busy`), and closes its
    /// listener, so that later connects are refused. Returns how many queued connections
    /// were taken.
    pub fn stop(mut self) -> u64 {
        self.stop_all();
        self.stop.taken.load(Ordering::Relaxed)
    }

    fn stop_all(&mut self) {
        self.stop.requested.store(true, Ordering::Release);
        for r in &self.running {
            if let Err(e) = wake(r.addr, &self.stop) {
                // The acceptor cannot be reached through the network: shut the listener,
                // which wakes `accept` on Linux (connections still queued are reset).
                warn!(
                    "cannot wake the acceptor on {}: {e}; shutting its listener",
                    r.addr
                );
                let _ = socket2::SockRef::from(&r.fallback).shutdown(Shutdown::Read);
            }
        }
        for r in self.running.drain(..) {
            let _ = r.join.join();
            // Only now does the listening socket close: its last handle goes here.
            drop(r.fallback);
        }
    }
}

impl Drop for Acceptors {
    fn drop(&mut self) {
        self.stop_all();
    }
}

/// Wakes the acceptor blocked on the listener bound to `listening` by connecting to it.
fn wake(listening: SocketAddr, stop: &Stop) -> io::Result<()> {
    let port = listening.port();
    let targets: Vec<SocketAddr> = match listening.ip() {
        IpAddr::V4(ip) if ip.is_unspecified() => vec![(Ipv4Addr::LOCALHOST, port).into()],
        IpAddr::V6(ip) if ip.is_unspecified() => vec![
            (Ipv6Addr::LOCALHOST, port).into(),
            (Ipv4Addr::LOCALHOST, port).into(),
        ],
        _ => vec![listening],
    };
    let mut last = io::Error::other("no address to connect to");
    for target in targets {
        match connect_known(target, stop) {
            Ok(()) => return Ok(()),
            Err(e) => last = e,
        }
    }
    Err(last)
}

/// Connects to `target` from an address recorded first, so that the acceptor can tell this
/// connection from a client's.
fn connect_known(target: SocketAddr, stop: &Stop) -> io::Result<()> {
    let socket = Socket::new(
        Domain::for_address(target),
        Type::STREAM,
        Some(Protocol::TCP),
    )?;
    socket.bind(&SocketAddr::new(target.ip(), 0).into())?;
    let local = socket
        .local_addr()?
        .as_socket()
        .ok_or_else(|| io::Error::other("not an IP socket"))?;
    stop.wakers
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
        .push(canonical(local));
    socket.connect_timeout(&target.into(), WAKE_TIMEOUT)
}

/// One acceptor: what it shares with the rest of the server.
struct Acceptor {
    /// Settings, open connections and counters.
    shared: Arc<Shared>,
    /// The worker pool.
    pool: Arc<Pool<Job>>,
    /// Set when the server stops accepting.
    stop: Arc<Stop>,
}

impl Acceptor {
    /// Accepts until the stop; then takes what the accept queue holds and returns, closing
    /// the listener.
    fn run(&self, listener: TcpListener) {
        let mut backoff = ACCEPT_BACKOFF_MIN;
        let mut last_log: Option<Instant> = None;
        let mut failures = 0u64;
        loop {
            match listener.accept() {
                Ok((stream, peer)) if self.stop.requested() => {
                    self.take(stream, peer);
                    break;
                }
                Ok((stream, peer)) => {
                    backoff = ACCEPT_BACKOFF_MIN;
                    failures = 0;
                    self.admit(stream, peer);
                }
                Err(_) if self.stop.requested() => break,
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(e) if e.kind() == ErrorKind::ConnectionAborted => {
                    debug!("accept: a client left before it was accepted: {e}");
                }
                Err(e) => {
                    failures += 1;
                    if last_log.is_none_or(|t| t.elapsed() >= ACCEPT_LOG_EVERY) {
                        warn!(
                            "accept failed ({failures} in a row): {e}; retrying in up to {} ms",
                            ACCEPT_BACKOFF_MAX.as_millis()
                        );
                        last_log = Some(Instant::now());
                    }
                    thread::sleep(backoff);
                    backoff = (backoff * 2).min(ACCEPT_BACKOFF_MAX);
                }
            }
        }
        // Connections that completed their handshake before the stop are served too (closing
        // the listener would reset them), within a bounded time.
        let until = Instant::now() + QUEUE_DRAIN_MAX;
        if listener.set_nonblocking(true).is_ok() {
            while Instant::now() < until {
                match listener.accept() {
                    Ok((stream, peer)) => self.take(stream, peer),
                    Err(e) if e.kind() == ErrorKind::Interrupted => {}
                    Err(e) if e.kind() == ErrorKind::ConnectionAborted => {}
                    Err(_) => break,
                }
            }
        }
    }

    /// A connection accepted after the stop: the waker is dropped, a client is served.
    fn take(&self, stream: TcpStream, peer: SocketAddr) {
        if self.stop.is_waker(peer) {
            return;
        }
        self.stop.taken.fetch_add(1, Ordering::Relaxed);
        // Accepted from a non-blocking listener: make sure the socket itself blocks.
        let _ = stream.set_nonblocking(false);
        self.admit(stream, peer);
    }

    fn admit(&self, stream: TcpStream, peer: SocketAddr) {
        let accepted = Instant::now();
        match self.shared.registry.admit(stream) {
            Ok(ticket) => {
                let job = Job {
                    ticket,
                    peer,
                    accepted,
                };
                match self.pool.execute(job) {
                    Ok(()) => {
                        self.shared.stats.accepted.fetch_add(1, Ordering::Relaxed);
                    }
                    Err((job, why)) => {
                        let stream = job.ticket.stream().try_clone();
                        // Unregistered here, so that the count below is of the others.
                        drop(job);
                        if let Ok(stream) = stream {
                            self.refuse(stream, peer, Refusal::NoWorker(why));
                        }
                    }
                }
            }
            Err(stream) => self.refuse(stream, peer, Refusal::Busy),
        }
    }

    /// Tells the client why it is not served and closes, without ever blocking the acceptor.
    fn refuse(&self, stream: TcpStream, peer: SocketAddr, why: Refusal) {
        let max = self.shared.registry.max();
        let open = self.shared.registry.len();
        self.shared.stats.refuse(match why {
            Refusal::Busy => connection::Refusal::Busy,
            Refusal::NoWorker(_) => connection::Refusal::NoWorker,
        });
        let peer = canonical(peer);
        let message = match &why {
            Refusal::Busy => {
                warn!("TCP connection refused: server busy ({max} connections). peer={peer}");
                busy_message(max)
            }
            Refusal::NoWorker(e) => {
                warn!(
                    "TCP connection refused: no worker thread could be started ({e}) with \
                     {open} connections open, below --max-connections {max}: a thread or pid \
                     limit is lower than --max-connections. peer={peer}"
                );
                NO_WORKER_MESSAGE.to_string()
            }
        };
        let _ = stream.set_nonblocking(true);
        let _ = (&stream).write_all(message.as_bytes());
        let _ = stream.shutdown(Shutdown::Write);
        // Read what the client already sent, so that closing sends FIN, not a reset that could
        // discard the message before the client reads it.
        let mut sink = [0u8; 4096];
        for _ in 0..16 {
            match (&stream).read(&mut sink) {
                Ok(n) if n > 0 => {}
                _ => break,
            }
        }
    }
}

/// Why a connection is refused.
enum Refusal {
    /// `--max-connections` are open.
    Busy,
    /// Fewer are open, but no worker thread could be started for this one.
    NoWorker(Refused),
}

/// The line a client gets when no worker thread could be started for it.
pub const NO_WORKER_MESSAGE: &str =
    "ERROR: server cannot start a worker for this connection (thread limit), try again later\n";

/// The line a client over capacity gets.
pub fn busy_message(max: usize) -> String {
    format!("ERROR: server busy ({max} connections), try again later\n")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::log_budget::ServerBudget;
    use crate::registry::Registry;

    #[test]
    fn dropping_the_acceptors_stops_and_joins_them_and_closes_the_listeners() {
        let config = Config::new(&[0, 0]).unwrap();
        let listeners = bind_all(&config).unwrap();
        let addrs: Vec<SocketAddr> = listeners.iter().map(|l| l.local_addr().unwrap()).collect();
        let registry = Registry::new(4);
        let shared = Arc::new(Shared {
            config,
            registry,
            stats: Default::default(),
            log_budget: ServerBudget::default(),
        });
        let pool = Arc::new(Pool::new("t", 4, Duration::from_secs(1), |_job: Job| {}));
        let acceptors = Acceptors::start(listeners, &addrs, &shared, &pool).unwrap();
        for addr in &addrs {
            TcpStream::connect(addr).expect("accepting");
        }
        // What a failed start does with the acceptors it had started.
        drop(acceptors);
        for addr in &addrs {
            let refused = TcpStream::connect_timeout(addr, Duration::from_secs(2));
            assert!(refused.is_err(), "{addr} still accepts");
        }
        // Nothing else holds the pool: every acceptor thread has ended.
        assert_eq!(Arc::strong_count(&pool), 1);
    }
}
