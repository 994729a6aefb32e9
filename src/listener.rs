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
//!
//! The acceptors write no log record themselves: a refusal or an accept error becomes a
//! [`Report`] on a bounded channel, which the thread that runs the server logs while it waits
//! for the shutdown request. A log that cannot be written (stderr blocked) holds up that
//! thread, never the accepting.

use std::io::{self, ErrorKind, Read, Write};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, Sender};
use log::{info, warn};
use socket2::{Domain, Protocol, Socket, Type};

use crate::config::Config;
use crate::connection::{canonical, Job};
use crate::error::Error;
use crate::metrics::Refusal;
use crate::pool::Pool;
use crate::server::Context;
use crate::threads;

/// First pause after a failed accept; it doubles up to [`ACCEPT_BACKOFF_MAX`].
const ACCEPT_BACKOFF_MIN: Duration = Duration::from_millis(1);
/// Longest pause between accept attempts while accept keeps failing.
const ACCEPT_BACKOFF_MAX: Duration = Duration::from_millis(100);
/// While accept keeps failing, at most one log line per this interval.
const ACCEPT_LOG_EVERY: Duration = Duration::from_secs(1);

/// Binds one listener per port of `config` on its address, the plain ports' then the TLS
/// ports'. With `bind_fallback`, an unavailable IPv6 (`::`) falls back to `0.0.0.0`. Sockets
/// accepted from them get `--socket-buffer` send and receive buffers.
pub(crate) fn bind_all(config: &Config) -> Result<Vec<TcpListener>, Error> {
    config
        .ports
        .iter()
        .chain(&config.tls_ports)
        .map(|&port| bind_one(SocketAddr::new(config.bind, port), config))
        .collect()
}

fn bind_one(addr: SocketAddr, config: &Config) -> Result<TcpListener, Error> {
    bind_with(addr, config.bind_fallback, config.socket_buffer)
}

/// Binds one listener on `addr`; with `fallback`, an unavailable IPv6 `::` falls back to
/// `0.0.0.0`. Accepted sockets get `socket_buffer` (`None`: the kernel's autotuning).
pub(crate) fn bind_with(
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
pub(crate) struct Acceptors {
    stop: Arc<Stop>,
    running: Vec<Running>,
}

struct Running {
    addr: SocketAddr,
    /// A second handle on the listening socket, to shut it if the acceptor cannot be woken.
    fallback: Handle,
    join: JoinHandle<()>,
}

/// A second handle on an acceptor's listening socket (`None` while the fault `refuse` holds it
/// closed); the acceptor replaces it when it listens again.
type Handle = Arc<Mutex<Option<TcpListener>>>;

/// The echo listeners under the fault `refuse`: while it holds, they are closed, so that the
/// kernel answers new connections with a reset ("connection refused"); open connections are
/// served on. Setting it shuts each listening socket for reading, which on Linux wakes its
/// acceptor's `accept` (elsewhere the acceptor notices at its next connection).
#[derive(Debug, Default)]
pub(crate) struct Gate {
    refusing: Mutex<bool>,
    changed: Condvar,
    sockets: Mutex<Vec<Handle>>,
}

impl Gate {
    /// Closes (`true`) or opens the listeners.
    pub(crate) fn set(&self, refusing: bool) {
        *threads::lock(&self.refusing) = refusing;
        self.changed.notify_all();
        if refusing {
            for socket in threads::lock(&self.sockets).iter() {
                if let Some(l) = threads::lock(socket).as_ref() {
                    let _ = socket2::SockRef::from(l).shutdown(Shutdown::Read);
                }
            }
        }
    }

    /// Whether the listeners are to be closed.
    pub(crate) fn refusing(&self) -> bool {
        *threads::lock(&self.refusing)
    }

    /// Waits until the listeners may open again (true) or `stop` is requested (false).
    fn wait_open(&self, stop: &Stop) -> bool {
        let mut refusing = threads::lock(&self.refusing);
        while *refusing {
            if stop.requested() {
                return false;
            }
            refusing = match self
                .changed
                .wait_timeout(refusing, Duration::from_millis(100))
            {
                Ok((guard, _)) => guard,
                Err(poisoned) => poisoned.into_inner().0,
            };
        }
        !stop.requested()
    }
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
        threads::lock(&self.wakers).contains(&canonical(peer))
    }
}

impl Acceptors {
    /// Starts one acceptor thread (`tcp-echo-accept-PORT`) per listener; `addrs` are their
    /// bound addresses, in the same order, the first `plain` of them plain, the others TLS.
    /// Their refusals go to `reports`.
    pub(crate) fn start(
        listeners: Vec<TcpListener>,
        addrs: &[SocketAddr],
        plain: usize,
        ctx: &Arc<Context>,
        pool: &Arc<Pool<Job>>,
        reports: &Reports,
    ) -> Result<Acceptors, Error> {
        let mut acceptors = Acceptors {
            stop: Arc::default(),
            running: Vec::with_capacity(listeners.len()),
        };
        for (i, (listener, &addr)) in listeners.into_iter().zip(addrs).enumerate() {
            let fallback: Handle = Arc::new(Mutex::new(Some(
                listener
                    .try_clone()
                    .map_err(|source| Error::Bind { addr, source })?,
            )));
            threads::lock(&ctx.gate.sockets).push(Arc::clone(&fallback));
            let acceptor = Acceptor {
                addr,
                handle: Arc::clone(&fallback),
                ctx: Arc::clone(ctx),
                pool: Arc::clone(pool),
                stop: Arc::clone(&acceptors.stop),
                reports: reports.sender(),
                port: addr.port(),
                tls: i >= plain,
            };
            let name = format!("tcp-echo-accept-{}", addr.port());
            let join = threads::spawn(name, move || acceptor.run(listener))?;
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
    pub(crate) fn stop(mut self) -> u64 {
        self.stop_all();
        self.stop.taken.load(Ordering::Relaxed)
    }

    fn stop_all(&mut self) {
        self.stop.requested.store(true, Ordering::Release);
        for r in &self.running {
            let Some(listener) = threads::lock(&r.fallback)
                .as_ref()
                .and_then(|l| l.try_clone().ok())
            else {
                // Closed by the fault `refuse`: its acceptor waits for the gate, and sees the
                // stop within its tick.
                continue;
            };
            if let Err(e) = wake(r.addr, &self.stop) {
                // The acceptor cannot be reached through the network: shut the listener,
                // which wakes `accept` on Linux (connections still queued are reset).
                warn!(
                    "cannot wake the acceptor on {}: {e}; shutting its listener",
                    r.addr
                );
                let _ = socket2::SockRef::from(&listener).shutdown(Shutdown::Read);
            }
        }
        for r in self.running.drain(..) {
            let _ = r.join.join();
            // Only now does the listening socket close: its last handle goes here.
            threads::lock(&r.fallback).take();
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
    threads::lock(&stop.wakers).push(canonical(local));
    socket.connect_timeout(&target.into(), WAKE_TIMEOUT)
}

/// What an acceptor does after `accept` failed.
#[derive(Debug, PartialEq, Eq)]
enum AfterError {
    /// Accept again at once: the error was one connection's (it left, or a network error of
    /// its own that Linux passes on through `accept`, as accept(2) says to treat like
    /// `EAGAIN`).
    Retry,
    /// Pause before the next try (out of descriptors or memory: trying at once would spin).
    Pause,
}

/// How the accept loop treats `e`.
fn after_accept_error(e: &io::Error) -> AfterError {
    if matches!(
        e.kind(),
        ErrorKind::Interrupted | ErrorKind::ConnectionAborted | ErrorKind::WouldBlock
    ) {
        return AfterError::Retry;
    }
    let network = [
        libc::ENETDOWN,
        libc::EPROTO,
        libc::ENOPROTOOPT,
        libc::EHOSTDOWN,
        libc::EHOSTUNREACH,
        libc::EOPNOTSUPP,
        libc::ENETUNREACH,
        #[cfg(target_os = "linux")]
        libc::ENONET,
    ];
    match e.raw_os_error() {
        Some(code) if network.contains(&code) => AfterError::Retry,
        _ => AfterError::Pause,
    }
}

/// What an acceptor reports, for the thread that runs the server to log.
#[derive(Debug)]
pub(crate) enum Report {
    /// A client was told the server is full.
    Busy {
        /// The client.
        peer: SocketAddr,
        /// `--max-connections`.
        max: usize,
    },
    /// A client was refused because no worker thread could be started.
    NoWorker {
        /// The client.
        peer: SocketAddr,
        /// Connections open at the time.
        open: usize,
        /// `--max-connections`.
        max: usize,
        /// Why the thread could not be started.
        error: io::Error,
    },
    /// Accept keeps failing.
    AcceptFailed {
        /// The listener's port.
        port: u16,
        /// Failures in a row.
        failures: u64,
        /// The last error.
        error: io::Error,
    },
}

/// Reports not logged yet, at most.
const REPORTS_QUEUED: usize = 1024;

/// The acceptors' reports, queued until the thread that runs the server logs them (between
/// its waits: see `server::Running::supervise`).
pub(crate) struct Reports {
    tx: Sender<Report>,
    rx: Receiver<Report>,
    /// Reports dropped because the queue was full.
    dropped: Arc<AtomicU64>,
}

impl Reports {
    /// An empty queue. Bounded in `ReportSender::send`: a list of blocks that grows with the
    /// reports queued, where a channel of `REPORTS_QUEUED` slots would be allocated and
    /// written whole at start (16 pages of the idle server's memory).
    pub(crate) fn new() -> Reports {
        let (tx, rx) = crossbeam_channel::unbounded();
        Reports {
            tx,
            rx,
            dropped: Arc::new(AtomicU64::new(0)),
        }
    }

    fn sender(&self) -> ReportSender {
        ReportSender {
            tx: self.tx.clone(),
            dropped: Arc::clone(&self.dropped),
        }
    }

    /// The queue's receiving end, to wait on with `select!`; pass what it yields to
    /// [`log`](Reports::log).
    pub(crate) fn receiver(&self) -> &Receiver<Report> {
        &self.rx
    }

    /// Logs `report`, then how many reports the full queue dropped since the last time.
    pub(crate) fn log(&self, report: Report) {
        match report {
            Report::Busy { peer, max } => {
                warn!("TCP connection refused: server busy ({max} connections). peer={peer}")
            }
            Report::NoWorker {
                peer,
                open,
                max,
                error,
            } => warn!(
                "TCP connection refused: no worker thread could be started ({error}) with \
                 {open} connections open, below --max-connections {max}: a thread or pid limit \
                 is lower than --max-connections. peer={peer}"
            ),
            Report::AcceptFailed {
                port,
                failures,
                error,
            } => warn!(
                "accept failed on port {port} ({failures} in a row): {error}; retrying in up to \
                 {} ms",
                ACCEPT_BACKOFF_MAX.as_millis()
            ),
        }
        let n = self.dropped.swap(0, Ordering::Relaxed);
        if n > 0 {
            warn!("{n} refusal or accept-error records were not logged (the log is behind)");
        }
    }

    /// Logs every report queued now (once the acceptors have stopped: all there will be).
    pub(crate) fn log_queued(&self) {
        while let Ok(r) = self.rx.try_recv() {
            self.log(r);
        }
    }
}

/// An acceptor's end of the reports: sending never blocks; a full queue drops and counts.
struct ReportSender {
    tx: Sender<Report>,
    dropped: Arc<AtomicU64>,
}

impl ReportSender {
    fn send(&self, r: Report) {
        // Several acceptors may pass the check at once: the queue holds at most one report
        // per acceptor beyond the bound.
        if self.tx.len() >= REPORTS_QUEUED || self.tx.try_send(r).is_err() {
            self.dropped.fetch_add(1, Ordering::Relaxed);
        }
    }
}

/// One acceptor: what it shares with the rest of the server.
struct Acceptor {
    /// Its listener's address (the port bound).
    addr: SocketAddr,
    /// The second handle on its listener, replaced when it listens again after `refuse`.
    handle: Handle,
    /// Settings, open connections and counters.
    ctx: Arc<Context>,
    /// The worker pool.
    pool: Arc<Pool<Job>>,
    /// Set when the server stops accepting.
    stop: Arc<Stop>,
    /// Where refusals and accept errors are reported.
    reports: ReportSender,
    /// The listener's port.
    port: u16,
    /// Whether its connections speak TLS.
    tls: bool,
}

impl Acceptor {
    /// Closes the listener while the fault `refuse` holds, and binds it again after; `None`
    /// when the stop comes first.
    fn refuse(&self, listener: TcpListener) -> Option<TcpListener> {
        drop(listener);
        threads::lock(&self.handle).take();
        info!("refusing connections on {} (fault refuse)", self.addr);
        loop {
            if !self.ctx.gate.wait_open(&self.stop) {
                return None;
            }
            match bind_with(self.addr, false, self.ctx.config.socket_buffer) {
                Ok(listener) => {
                    *threads::lock(&self.handle) = listener.try_clone().ok();
                    info!("accepting connections on {} again", self.addr);
                    return Some(listener);
                }
                Err(e) => {
                    warn!("cannot listen again on {}: {e}; retrying", self.addr);
                    thread::sleep(Duration::from_secs(1));
                }
            }
        }
    }

    /// Accepts until the stop; then takes what the accept queue holds and returns, closing
    /// the listener.
    fn run(&self, listener: TcpListener) {
        let mut listener = listener;
        let mut backoff = ACCEPT_BACKOFF_MIN;
        let mut last_report: Option<Instant> = None;
        let mut failures = 0u64;
        loop {
            if self.ctx.gate.refusing() && !self.stop.requested() {
                match self.refuse(listener) {
                    Some(l) => listener = l,
                    None => return,
                }
                continue;
            }
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
                // The fault `refuse` shut the listener: the loop closes it.
                Err(_) if self.ctx.gate.refusing() => {}
                Err(e) if after_accept_error(&e) == AfterError::Retry => {}
                Err(error) => {
                    failures += 1;
                    if last_report.is_none_or(|t| t.elapsed() >= ACCEPT_LOG_EVERY) {
                        self.reports.send(Report::AcceptFailed {
                            port: self.port,
                            failures,
                            error,
                        });
                        last_report = Some(Instant::now());
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
                    Err(e) if e.kind() == ErrorKind::WouldBlock => break,
                    Err(e) if after_accept_error(&e) == AfterError::Retry => {}
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
        let registry = &self.ctx.registry;
        match registry.admit(stream) {
            Ok(ticket) => {
                let job = Job {
                    ticket,
                    peer,
                    accepted,
                    tls: self.tls,
                };
                match self.pool.execute(job) {
                    Ok(()) => {
                        self.ctx.metrics.accepted.fetch_add(1, Ordering::Relaxed);
                    }
                    Err((job, error)) => {
                        let stream = job.ticket.stream().try_clone();
                        // Unregistered here, so that the count below is of the others.
                        drop(job);
                        if let Ok(stream) = stream {
                            self.ctx.metrics.refused.add(Refusal::NoWorker);
                            refuse(stream, NO_WORKER_MESSAGE.as_bytes());
                            self.reports.send(Report::NoWorker {
                                peer: canonical(peer),
                                open: registry.len(),
                                max: registry.max(),
                                error,
                            });
                        }
                    }
                }
            }
            Err(stream) => {
                self.ctx.metrics.refused.add(Refusal::Busy);
                refuse(stream, busy_message(registry.max()).as_bytes());
                self.reports.send(Report::Busy {
                    peer: canonical(peer),
                    max: registry.max(),
                });
            }
        }
    }
}

/// Tells the client why it is not served and closes, without ever blocking.
fn refuse(stream: TcpStream, message: &[u8]) {
    let _ = stream.set_nonblocking(true);
    let _ = (&stream).write_all(message);
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

/// The line a client gets when no worker thread could be started for it.
pub(crate) const NO_WORKER_MESSAGE: &str =
    "ERROR: server cannot start a worker for this connection (thread limit), try again later\n";

/// The line a client over capacity gets.
pub(crate) fn busy_message(max: usize) -> String {
    format!("ERROR: server busy ({max} connections), try again later\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn network_errors_of_one_connection_are_retried_at_once_and_resource_errors_pause() {
        let os = io::Error::from_raw_os_error;
        for code in [
            libc::ENETDOWN,
            libc::EPROTO,
            libc::EHOSTUNREACH,
            libc::ECONNABORTED,
        ] {
            assert_eq!(after_accept_error(&os(code)), AfterError::Retry, "{code}");
        }
        for code in [libc::EMFILE, libc::ENFILE, libc::ENOBUFS, libc::ENOMEM] {
            assert_eq!(after_accept_error(&os(code)), AfterError::Pause, "{code}");
        }
    }

    #[test]
    fn dropping_the_acceptors_stops_and_joins_them_and_closes_the_listeners() {
        let config = Config::new(&[0, 0]).unwrap();
        let listeners = bind_all(&config).unwrap();
        let addrs: Vec<SocketAddr> = listeners.iter().map(|l| l.local_addr().unwrap()).collect();
        let ctx = Arc::new(Context::new(config));
        let pool = Arc::new(Pool::new("t", 4, Duration::from_secs(1), |_job: Job| {}));
        let reports = Reports::new();
        let acceptors = Acceptors::start(listeners, &addrs, 2, &ctx, &pool, &reports).unwrap();
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
