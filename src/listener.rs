//! Listening sockets and the accept loop.
//!
//! Sockets are built with `socket2` so that the listen backlog is the kernel's maximum (std asks
//! for 128, which a burst of connects overflows) and `::` is dual-stack. The accept loop never
//! blocks on a full pool: a connection over `--max-connections` is told `busy` and closed right
//! there, without waiting for anything. Accept errors (EMFILE, ECONNABORTED, ...) are logged and
//! retried after a short, growing pause, never a spin and never the end of the loop.

use std::io::{self, ErrorKind, Read, Write};
use std::net::{IpAddr, Ipv4Addr, Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use log::{debug, info, warn};
use socket2::{Domain, Protocol, Socket, Type};

use crate::connection::{canonical, Job, Stats};
use crate::error::Error;
use crate::pool::Pool;
use crate::registry::Registry;

/// First pause after a failed accept; it doubles up to [`ACCEPT_BACKOFF_MAX`].
const ACCEPT_BACKOFF_MIN: Duration = Duration::from_millis(1);
/// Longest pause between accept attempts while accept keeps failing.
pub const ACCEPT_BACKOFF_MAX: Duration = Duration::from_millis(100);
/// While accept keeps failing, at most one log line per this interval.
const ACCEPT_LOG_EVERY: Duration = Duration::from_secs(1);

/// Binds one listener per port on `addr`. With `fallback`, an unavailable IPv6 (`::`) falls back
/// to `0.0.0.0`.
pub fn bind_all(addr: IpAddr, ports: &[u16], fallback: bool) -> Result<Vec<TcpListener>, Error> {
    ports
        .iter()
        .map(|&port| bind_one(SocketAddr::new(addr, port), fallback))
        .collect()
}

fn bind_one(addr: SocketAddr, fallback: bool) -> Result<TcpListener, Error> {
    match listen(addr) {
        Err(e) if fallback && addr.is_ipv6() && ipv6_unavailable(&e) => {
            let v4 = SocketAddr::new(IpAddr::V4(Ipv4Addr::UNSPECIFIED), addr.port());
            info!("IPv6 is unavailable ({e}); listening on {v4} instead of {addr}");
            listen(v4).map_err(|source| Error::Bind { addr: v4, source })
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

fn listen(addr: SocketAddr) -> io::Result<TcpListener> {
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    if addr.is_ipv6() && addr.ip().is_unspecified() {
        socket.set_only_v6(false)?;
    }
    socket.set_reuse_address(true)?;
    socket.bind(&addr.into())?;
    // The kernel caps this at net.core.somaxconn: ask for the maximum, as Go does.
    socket.listen(libc::c_int::MAX)?;
    Ok(socket.into())
}

/// Makes a blocked `accept` on `listener` return, and refuses further connects (Linux: shutting
/// the read side of a listening socket wakes its acceptors with `EINVAL`).
pub fn stop_accepting(listener: &TcpListener) {
    let _ = socket2::SockRef::from(listener).shutdown(Shutdown::Read);
}

/// What an acceptor shares with the rest of the server.
pub struct Acceptor {
    /// Open connections (admission and shutdown).
    pub registry: Arc<Registry>,
    /// The worker pool.
    pub pool: Arc<Pool<Job>>,
    /// Counters.
    pub stats: Arc<Stats>,
}

impl Acceptor {
    /// Accepts until shutdown. Returns when [`stop_accepting`] was called on the listener.
    pub fn run(&self, listener: TcpListener) {
        let mut backoff = ACCEPT_BACKOFF_MIN;
        let mut last_log: Option<Instant> = None;
        let mut failures = 0u64;
        loop {
            match listener.accept() {
                Ok((stream, peer)) => {
                    backoff = ACCEPT_BACKOFF_MIN;
                    failures = 0;
                    self.admit(stream, peer);
                }
                Err(_) if self.registry.is_shutting_down() => return,
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
    }

    fn admit(&self, stream: TcpStream, peer: SocketAddr) {
        let accepted = Instant::now();
        match self.registry.admit(stream) {
            Ok(ticket) => {
                if let Err(job) = self.pool.execute(Job {
                    ticket,
                    peer,
                    accepted,
                }) {
                    // No worker could take it (no thread could be started): refuse politely.
                    let stream = job.ticket.stream().try_clone();
                    drop(job);
                    if let Ok(stream) = stream {
                        self.refuse(stream, peer);
                    }
                }
            }
            Err(stream) => self.refuse(stream, peer),
        }
    }

    /// Tells the client the server is full and closes, without ever blocking the acceptor.
    fn refuse(&self, stream: TcpStream, peer: SocketAddr) {
        let max = self.registry.max();
        self.stats.refused.fetch_add(1, Ordering::Relaxed);
        warn!(
            "TCP connection refused: server busy ({max} connections). peer={}",
            canonical(peer)
        );
        let _ = stream.set_nonblocking(true);
        let _ = (&stream).write_all(busy_message(max).as_bytes());
        let _ = stream.shutdown(Shutdown::Write);
        // Read what the client already sent, so that closing sends FIN, not a reset that could
        // discard the busy line before the client reads it.
        let mut sink = [0u8; 4096];
        for _ in 0..16 {
            match (&stream).read(&mut sink) {
                Ok(n) if n > 0 => {}
                _ => break,
            }
        }
    }
}

/// The line a client over capacity gets.
pub fn busy_message(max: usize) -> String {
    format!("ERROR: server busy ({max} connections), try again later\n")
}
