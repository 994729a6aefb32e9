//! One connection, from banner to close: read through a `BufReader`, frame, write the replies
//! of each read in one `write`, log, time out, and close without losing replies.

use std::fmt;
use std::io::{self, BufRead, BufReader, ErrorKind, Write};
use std::net::{Shutdown, SocketAddr, TcpStream};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use log::{info, log_enabled, Level};
use uuid::Uuid;

use crate::banner::BannerMode;
use crate::config::Config;
use crate::echo::{Framer, Piece};
use crate::logging::{EscapedText, RawBytes};
use crate::registry::{Registry, Ticket};

/// Initial size of a connection's read buffer: an idle or interactive connection stays small.
pub const READ_BUFFER_MIN: usize = 2 * 1024;
/// Largest read buffer: a streaming connection grows to it within three reads. The replies
/// to one read leave in one write.
pub const READ_BUFFER_MAX: usize = 64 * 1024;

/// The read buffer size after a read of `n` bytes into a buffer of `capacity`: a full read
/// means more is waiting (grow), a small one means the peer is interactive (shrink back).
pub fn next_read_capacity(capacity: usize, n: usize) -> usize {
    if n == capacity && capacity < READ_BUFFER_MAX {
        (capacity * 4).min(READ_BUFFER_MAX)
    } else if n <= READ_BUFFER_MIN / 2 && capacity > READ_BUFFER_MIN {
        READ_BUFFER_MIN
    } else {
        capacity
    }
}

/// How often a closing connection checks whether the peer has acknowledged every reply.
const ACK_POLL: Duration = Duration::from_millis(2);

/// Log target of the per-line `Received ...` records, so that they can be filtered apart from
/// the connection records: `RUST_LOG=info,tcp_echo::data=off`.
pub const DATA_TARGET: &str = "tcp_echo::data";

/// Counters for the exit summary, updated once per connection.
#[derive(Debug, Default)]
pub struct Stats {
    /// Connections served (admitted and closed).
    pub served: AtomicU64,
    /// Connections refused because the server was full.
    pub refused: AtomicU64,
    /// Bytes received and echoed.
    pub bytes: AtomicU64,
}

/// An accepted connection on its way to a worker.
#[derive(Debug)]
pub struct Job {
    /// Registration in the open-connection set; the socket lives inside.
    pub ticket: Ticket,
    /// The client's address.
    pub peer: SocketAddr,
    /// When the acceptor accepted it.
    pub accepted: Instant,
}

/// Why a connection ended, as the close log line says it.
#[derive(Debug)]
pub enum Reason {
    /// The client closed its side (EOF).
    Eof,
    /// The client sent nothing for `--idle-timeout`.
    IdleTimeout,
    /// The client did not take its replies for the write timeout.
    WriteTimeout,
    /// The server is shutting down.
    Shutdown,
    /// The client reset the connection.
    Reset,
    /// Another I/O error.
    Error(io::Error),
}

impl fmt::Display for Reason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Reason::Eof => f.write_str("EOF"),
            Reason::IdleTimeout => f.write_str("idle timeout"),
            Reason::WriteTimeout => f.write_str("write timeout (client not reading)"),
            Reason::Shutdown => f.write_str("shutdown"),
            Reason::Reset => f.write_str("reset by peer"),
            Reason::Error(e) => write!(f, "error: {e}"),
        }
    }
}

/// What a finished connection did.
#[derive(Debug)]
pub struct Outcome {
    /// Why it ended.
    pub reason: Reason,
    /// Bytes received (all of which were echoed unless the reason is an error).
    pub bytes: u64,
    /// Lines echoed.
    pub lines: u64,
}

/// Shows an IPv4 client of a dual-stack listener as `1.2.3.4:5`, not `[::ffff:1.2.3.4]:5`.
pub fn canonical(addr: SocketAddr) -> SocketAddr {
    SocketAddr::new(addr.ip().to_canonical(), addr.port())
}

/// Serves one connection to its end and logs it (the worker pool's job handler).
pub fn serve(job: Job, config: &Config, registry: &Registry, stats: &Stats) {
    let id = Uuid::new_v4();
    let local = job.ticket.stream().local_addr().map(canonical);
    info!(
        "{id} - TCP connection open. peer={} local={}",
        canonical(job.peer),
        local.map_or_else(|_| "?".to_string(), |a| a.to_string())
    );
    let outcome = echo_connection(&job.ticket, config, registry, &id);
    info!(
        "{id} - TCP connection closed. reason={} bytes={} lines={} duration={:.3}s",
        outcome.reason,
        outcome.bytes,
        outcome.lines,
        job.accepted.elapsed().as_secs_f64()
    );
    stats.served.fetch_add(1, Ordering::Relaxed);
    stats.bytes.fetch_add(outcome.bytes, Ordering::Relaxed);
    // `job.ticket` drops here: the connection leaves the registry, the socket closes.
}

fn classify_read(e: io::Error) -> Reason {
    match e.kind() {
        ErrorKind::WouldBlock | ErrorKind::TimedOut => Reason::IdleTimeout,
        ErrorKind::ConnectionReset | ErrorKind::ConnectionAborted => Reason::Reset,
        _ => Reason::Error(e),
    }
}

fn classify_write(e: io::Error) -> Reason {
    match e.kind() {
        ErrorKind::WouldBlock | ErrorKind::TimedOut => Reason::WriteTimeout,
        ErrorKind::ConnectionReset | ErrorKind::ConnectionAborted | ErrorKind::BrokenPipe => {
            Reason::Reset
        }
        _ => Reason::Error(e),
    }
}

/// Writes all of `out`, if anything, and clears it (keeping its capacity). Every write that
/// moves data counts as progress, so a slow reader is not taken for an idle one.
fn send(ticket: &Ticket, out: &mut Vec<u8>) -> Result<(), Reason> {
    let mut stream = ticket.stream();
    let mut rest = &out[..];
    let mut result = Ok(());
    while !rest.is_empty() {
        match stream.write(rest) {
            Ok(0) => {
                result = Err(Reason::Error(ErrorKind::WriteZero.into()));
                break;
            }
            Ok(n) => {
                rest = &rest[n..];
                ticket.made_progress();
            }
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(e) => {
                result = Err(classify_write(e));
                break;
            }
        }
    }
    out.clear();
    result
}

/// The echo loop over an admitted connection. Returns once the connection is finished
/// (replies flushed, write side shut, and at shutdown, acknowledged or out of time).
pub fn echo_connection(
    ticket: &Ticket,
    config: &Config,
    registry: &Registry,
    id: &Uuid,
) -> Outcome {
    let mut framer = Framer::new(config.prefix.as_deref(), config.max_line);
    let mut out: Vec<u8> = Vec::new();
    let mut bytes = 0u64;
    let log_data = log_enabled!(target: DATA_TARGET, Level::Info);
    let mut observe = |piece: Piece<'_>| {
        if log_data {
            info!(target: DATA_TARGET, "{id} - Received Raw Data: {}", RawBytes(piece.bytes));
            info!(
                target: DATA_TARGET,
                "{id} - Received Data (converted to string): {}",
                EscapedText(piece.bytes)
            );
        }
    };

    let stream = ticket.stream();
    // The idle timeout is the registry's idle watch, not a receive timeout (see registry.rs).
    let setup = stream
        .set_nodelay(true)
        .and_then(|()| stream.set_write_timeout(Some(config.write_timeout())));
    if let Err(e) = setup {
        return Outcome {
            reason: classify_read(e),
            bytes,
            lines: 0,
        };
    }

    let mut banner_due = !config.banner.is_empty() && config.banner_mode == BannerMode::FirstRead;
    if config.banner_mode == BannerMode::Connect && !config.banner.is_empty() {
        out.extend_from_slice(&config.banner);
        if let Err(reason) = send(ticket, &mut out) {
            return Outcome {
                reason,
                bytes,
                lines: 0,
            };
        }
    }

    let mut reader = BufReader::with_capacity(READ_BUFFER_MIN, stream);
    // At shutdown, read only what had arrived by then: at most this many more bytes.
    let mut drain_budget: Option<u64> = None;
    let reason = loop {
        if drain_budget.is_none() && registry.is_shutting_down() {
            drain_budget = Some(queued_input(stream).unwrap_or(0) + reader.buffer().len() as u64);
        }
        if drain_budget == Some(0) {
            break Reason::Shutdown;
        }
        let n = match reader.fill_buf() {
            Ok([]) if registry.is_shutting_down() => break Reason::Shutdown,
            Ok([]) if ticket.timed_out() => break Reason::IdleTimeout,
            Ok([]) => break Reason::Eof,
            Ok(data) => {
                ticket.made_progress();
                let n = match drain_budget {
                    Some(budget) => data.len().min(budget as usize),
                    None => data.len(),
                };
                if banner_due {
                    out.extend_from_slice(&config.banner);
                    banner_due = false;
                }
                framer.feed(&data[..n], &mut out, &mut observe);
                n
            }
            Err(e) if e.kind() == ErrorKind::Interrupted => continue,
            Err(e) => break classify_read(e),
        };
        reader.consume(n);
        bytes += n as u64;
        let capacity = next_read_capacity(reader.capacity(), n);
        if capacity != reader.capacity() && reader.buffer().is_empty() {
            reader = BufReader::with_capacity(capacity, reader.into_inner());
            if capacity == READ_BUFFER_MIN {
                // The connection went interactive: release the streaming-sized output too.
                out.shrink_to(READ_BUFFER_MIN);
            }
        }
        if let Some(budget) = drain_budget.as_mut() {
            *budget -= n as u64;
        }
        if let Err(reason) = send(ticket, &mut out) {
            return Outcome {
                reason,
                bytes,
                lines: framer.lines(),
            };
        }
    };

    // Whatever partial line was held is echoed too (the Go samples drop it).
    if matches!(reason, Reason::Eof | Reason::Shutdown | Reason::IdleTimeout) {
        framer.finish(&mut out, &mut observe);
        if let Err(reason) = send(ticket, &mut out) {
            return Outcome {
                reason,
                bytes,
                lines: framer.lines(),
            };
        }
    }
    if matches!(reason, Reason::Shutdown) {
        // The client may still be sending. Closing with unread input answers with a reset that
        // discards replies not yet delivered, and so does the kernel when input arrives after
        // our FIN on a socket whose read side is shut (RFC 1122). So: wait until the client
        // has acknowledged every reply, discarding its new input, and only then send FIN.
        let deadline = registry.drain_deadline().unwrap_or_else(Instant::now);
        wait_acknowledged(&mut reader, deadline);
    }
    let _ = stream.shutdown(Shutdown::Write);
    Outcome {
        reason,
        bytes,
        lines: framer.lines(),
    }
}

/// Waits until the peer has acknowledged every byte written, or `deadline` passes. Input that
/// arrives meanwhile is read and discarded (it came after the shutdown began): left unread, it
/// would close the receive window and stall the very acknowledgements being waited for.
fn wait_acknowledged(reader: &mut BufReader<&TcpStream>, deadline: Instant) {
    let stream = *reader.get_ref();
    let _ = stream.set_nonblocking(true);
    while Instant::now() < deadline {
        // At most 64 reads per round, so a fast sender cannot keep this loop from checking.
        for _ in 0..64 {
            match reader.fill_buf() {
                Ok(data) if !data.is_empty() => {
                    let n = data.len();
                    reader.consume(n);
                }
                _ => break,
            }
        }
        match unacknowledged_output(stream) {
            Some(0) | None => return,
            Some(_) => std::thread::sleep(ACK_POLL),
        }
    }
}

#[cfg(target_os = "linux")]
fn socket_queue(stream: &TcpStream, request: libc::Ioctl) -> Option<u64> {
    use std::os::fd::AsRawFd;
    let mut n: libc::c_int = 0;
    // SAFETY: a valid socket descriptor and a pointer to an int, as SIOCINQ/SIOCOUTQ expect.
    let rc = unsafe { libc::ioctl(stream.as_raw_fd(), request, &mut n) };
    (rc == 0 && n >= 0).then_some(n as u64)
}

/// Bytes received by the kernel and not yet read (SIOCINQ).
#[cfg(target_os = "linux")]
fn queued_input(stream: &TcpStream) -> Option<u64> {
    socket_queue(stream, libc::FIONREAD)
}

/// Bytes written and not yet acknowledged by the peer (SIOCOUTQ).
#[cfg(target_os = "linux")]
fn unacknowledged_output(stream: &TcpStream) -> Option<u64> {
    socket_queue(stream, libc::TIOCOUTQ)
}

#[cfg(not(target_os = "linux"))]
fn queued_input(_: &TcpStream) -> Option<u64> {
    None
}

#[cfg(not(target_os = "linux"))]
fn unacknowledged_output(_: &TcpStream) -> Option<u64> {
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn read_buffer_grows_on_full_reads_and_shrinks_on_small_ones() {
        let mut cap = READ_BUFFER_MIN;
        let mut steps = 0;
        while cap < READ_BUFFER_MAX {
            cap = next_read_capacity(cap, cap);
            steps += 1;
        }
        assert_eq!(cap, READ_BUFFER_MAX);
        assert!(steps <= 3);
        assert_eq!(
            next_read_capacity(READ_BUFFER_MAX, READ_BUFFER_MAX),
            READ_BUFFER_MAX
        );
        assert_eq!(
            next_read_capacity(READ_BUFFER_MAX, 5000),
            READ_BUFFER_MAX,
            "a medium read keeps it"
        );
        assert_eq!(
            next_read_capacity(READ_BUFFER_MAX, 64),
            READ_BUFFER_MIN,
            "an interactive read shrinks it"
        );
        assert_eq!(next_read_capacity(READ_BUFFER_MIN, 64), READ_BUFFER_MIN);
    }
}
