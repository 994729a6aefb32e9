//! One connection, from banner to close: the echo loop.
//!
//! Each `read` (through a `BufReader`) is echoed before the next one: without a prefix the
//! bytes leave straight from the read buffer, with one they are framed into an output buffer
//! of bounded size. A write that blocks (the client is not reading) holds up the next read, so
//! a client that stops reading stops being read, and the memory a connection holds never
//! exceeds its two buffers.

use std::borrow::Cow;
use std::fmt;
use std::io::{self, BufRead, BufReader, ErrorKind, Write};
use std::net::{Shutdown, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use log::{info, log_enabled, warn, Level};
use uuid::Uuid;

use crate::banner::BannerMode;
use crate::config::Config;
use crate::drain::{self, Drained};
use crate::echo::{self, Framer};
use crate::log_budget::{self, ConnectionBudget, ServerBudget, Verdict};
use crate::logging::{EscapedText, RawBytes};
use crate::registry::{Ended, Registry, Ticket};
use crate::{proxy, socket};

/// Initial size of a connection's read buffer: an idle or interactive connection stays small.
pub const READ_BUFFER_MIN: usize = 2 * 1024;
/// Largest read buffer: a streaming connection grows to it within three reads. (32 KiB reads
/// cost 20% of streaming throughput against 64 KiB: twice the syscalls.)
pub const READ_BUFFER_MAX: usize = 64 * 1024;
/// Largest output buffer (prefixed echo only): room for a full read of lines of 32 bytes or
/// more with a 4-byte prefix, so that a read's echo leaves in one write; a read whose prefixes
/// add more (empty lines grow five-fold with `one `) leaves in several writes of this size.
pub const OUTPUT_BUFFER_MAX: usize = 72 * 1024;

// A full read of 64-byte lines with the prefix `one ` leaves in one write.
const _: () = assert!(READ_BUFFER_MAX + READ_BUFFER_MAX / 64 * 4 <= OUTPUT_BUFFER_MAX);

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

/// Log target of the per-piece `Received ...` records, so that they can be filtered apart
/// from the connection records: `RUST_LOG=info,tcp_echo::data=off`.
pub const DATA_TARGET: &str = "tcp_echo::data";

/// Why a connection was refused, for the counters.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// `--max-connections` were open.
    Busy,
    /// No worker thread could be started.
    NoWorker,
    /// No valid PROXY header.
    ProxyProtocol,
}

impl Refusal {
    /// Every refusal, in counter order, with its metric label.
    pub const ALL: [(Refusal, &'static str); 3] = [
        (Refusal::Busy, "busy"),
        (Refusal::NoWorker, "no_worker"),
        (Refusal::ProxyProtocol, "proxy_protocol"),
    ];
}

/// The close reasons' metric labels, in the order of [`Reason::index`].
pub const CLOSE_REASONS: [&str; 8] = [
    "eof",
    "idle_timeout",
    "max_duration",
    "write_timeout",
    "shutdown",
    "drain_deadline",
    "reset",
    "error",
];

/// What the server has done, for the exit summary and the metrics. Bytes are counted per
/// read (one relaxed add), the rest once per connection.
#[derive(Debug, Default)]
pub struct Stats {
    /// Connections admitted.
    pub accepted: AtomicU64,
    /// Connections served to their end.
    pub served: AtomicU64,
    /// Connections refused, by [`Refusal`] (in [`Refusal::ALL`]'s order).
    pub refused: [AtomicU64; 3],
    /// Connections closed, by [`CLOSE_REASONS`].
    pub closed: [AtomicU64; 8],
    /// Bytes received and echoed.
    pub bytes: AtomicU64,
}

impl Stats {
    /// Counts a refusal.
    pub fn refuse(&self, why: Refusal) {
        let i = Refusal::ALL
            .iter()
            .position(|(r, _)| *r == why)
            .unwrap_or(0);
        self.refused[i].fetch_add(1, Ordering::Relaxed);
    }

    /// Connections refused, for every reason.
    pub fn refused_total(&self) -> u64 {
        self.refused.iter().map(|r| r.load(Ordering::Relaxed)).sum()
    }
}

/// What every connection shares: settings, the open-connection set, counters, log budget.
#[derive(Debug)]
pub struct Shared {
    /// The settings.
    pub config: Config,
    /// Open connections.
    pub registry: std::sync::Arc<Registry>,
    /// Counters.
    pub stats: Stats,
    /// The server-wide limit on `Received` records.
    pub log_budget: ServerBudget,
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
    /// The connection was open for `--max-duration`.
    MaxDuration,
    /// The client did not take its replies for the write timeout.
    WriteTimeout,
    /// The server is shutting down.
    Shutdown,
    /// The server closed it at the drain deadline.
    DrainDeadline,
    /// The client reset the connection.
    Reset,
    /// Another I/O error.
    Error(io::Error),
}

impl Reason {
    /// Its place in [`CLOSE_REASONS`].
    pub fn index(&self) -> usize {
        match self {
            Reason::Eof => 0,
            Reason::IdleTimeout => 1,
            Reason::MaxDuration => 2,
            Reason::WriteTimeout => 3,
            Reason::Shutdown => 4,
            Reason::DrainDeadline => 5,
            Reason::Reset => 6,
            Reason::Error(_) => 7,
        }
    }
}

impl fmt::Display for Reason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Reason::Eof => f.write_str("EOF"),
            Reason::IdleTimeout => f.write_str("idle timeout"),
            Reason::MaxDuration => f.write_str("max duration"),
            Reason::WriteTimeout => f.write_str("write timeout (client not reading)"),
            Reason::Shutdown => f.write_str("shutdown"),
            Reason::DrainDeadline => f.write_str("shutdown (closed at the drain deadline)"),
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
    /// Bytes received (every one of them echoed unless the reason is an error).
    pub bytes: u64,
    /// Lines echoed (a last line without `\n` counts).
    pub lines: u64,
    /// Pieces the log budget kept out of the log.
    pub unlogged: u64,
}

/// Shows an IPv4 client of a dual-stack listener as `1.2.3.4:5`, not `[::ffff:1.2.3.4]:5`.
pub fn canonical(addr: SocketAddr) -> SocketAddr {
    SocketAddr::new(addr.ip().to_canonical(), addr.port())
}

/// Serves one connection to its end and logs it (the worker pool's job handler).
pub fn serve(job: Job, shared: &Shared) {
    let id = Uuid::new_v4();
    let stream = job.ticket.stream();
    let peer = canonical(job.peer);
    let local = stream
        .local_addr()
        .map_or_else(|_| "?".to_string(), |a| canonical(a).to_string());
    let mode = shared.config.proxy_protocol;
    let start = match mode {
        proxy::Mode::Off => proxy::Start {
            header: None,
            client: None,
            rest: Vec::new(),
        },
        mode => {
            let until = Instant::now() + proxy::HEADER_DEADLINE;
            let start = proxy::read_start(&mut proxy::Deadline { stream, until }, mode);
            let _ = stream.set_read_timeout(None);
            match start {
                Ok(start) => start,
                Err(reason) => {
                    warn!("{id} - TCP connection refused: {reason}. peer={peer} local={local}");
                    shared.stats.refuse(Refusal::ProxyProtocol);
                    let _ = stream.shutdown(Shutdown::Both);
                    return;
                }
            }
        }
    };
    let client = start.client.map_or(peer, canonical);
    if mode == proxy::Mode::Off {
        info!("{id} - TCP connection open. peer={peer} local={local}");
    } else {
        info!(
            "{id} - TCP connection open. client={client} peer={peer} local={local} proxy={}",
            start.header.unwrap_or("none")
        );
    }
    let outcome = echo_connection(&job.ticket, shared, &id, client, &start.rest);
    info!(
        "{id} - TCP connection closed. reason={} bytes={} lines={} duration={:.3}s unlogged={}",
        outcome.reason,
        outcome.bytes,
        outcome.lines,
        job.accepted.elapsed().as_secs_f64(),
        outcome.unlogged,
    );
    shared.stats.served.fetch_add(1, Ordering::Relaxed);
    shared.stats.closed[outcome.reason.index()].fetch_add(1, Ordering::Relaxed);
    // `job.ticket` drops here: the connection leaves the registry, the socket closes.
}

/// Why a read failed. Reads have no timeout (the watch ends idle connections), so a timeout
/// here is the kernel giving up on a dead peer: an error, not an idle client.
fn classify_read(e: io::Error) -> Reason {
    match e.kind() {
        ErrorKind::ConnectionReset | ErrorKind::ConnectionAborted => Reason::Reset,
        _ => Reason::Error(e),
    }
}

/// Why a write failed: `EAGAIN` is the send timeout (the client stopped reading); `ETIMEDOUT`
/// is the kernel giving up on a dead peer.
fn classify_write(e: io::Error) -> Reason {
    match e.kind() {
        ErrorKind::WouldBlock => Reason::WriteTimeout,
        ErrorKind::ConnectionReset | ErrorKind::ConnectionAborted | ErrorKind::BrokenPipe => {
            Reason::Reset
        }
        _ => Reason::Error(e),
    }
}

/// A failure on a socket the server itself closed at the drain deadline is the shutdown, not
/// the client's doing.
fn failed(ticket: &Ticket, reason: Reason) -> Reason {
    match ticket.ended() {
        Some(Ended::Forced) => Reason::DrainDeadline,
        _ => reason,
    }
}

/// Writes all of `bytes`. Every write that moves data counts as progress, so a slow reader is
/// not taken for an idle one.
fn send(ticket: &Ticket, mut bytes: &[u8]) -> Result<(), Reason> {
    let mut stream = ticket.stream();
    while !bytes.is_empty() {
        match stream.write(bytes) {
            Ok(0) => return Err(Reason::Error(ErrorKind::WriteZero.into())),
            Ok(n) => {
                bytes = &bytes[n..];
                ticket.made_progress();
            }
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(e) => return Err(failed(ticket, classify_write(e))),
        }
    }
    Ok(())
}

/// The `Received` records of one read, within the log budget.
struct DataLog<'a> {
    id: &'a Uuid,
    budget: ConnectionBudget<'a>,
}

impl DataLog<'_> {
    fn record(&mut self, data: &[u8]) {
        let id = self.id;
        let mut rest = data;
        while !rest.is_empty() && !self.budget.is_spent() {
            let piece = echo::first_piece(rest);
            rest = &rest[piece.len()..];
            match self.budget.admit(piece.len()) {
                Verdict::Log => {
                    info!(target: DATA_TARGET, "{id} - Received Raw Data: {}", RawBytes(piece));
                    info!(
                        target: DATA_TARGET,
                        "{id} - Received Data (converted to string): {}",
                        EscapedText(piece)
                    );
                }
                Verdict::ConnectionSpent => info!(
                    target: DATA_TARGET,
                    "{id} - Received records stop here: this connection's log budget ({} pieces \
                     or {} KiB) is spent; its close record counts the pieces not logged",
                    log_budget::PIECES_PER_CONNECTION,
                    log_budget::BYTES_PER_CONNECTION / 1024
                ),
                Verdict::ServerNotice => warn!(
                    target: DATA_TARGET,
                    "Received records are being held back: more than {} pieces a second \
                     server-wide; each connection's close record counts its own",
                    log_budget::SERVER_RATE
                ),
                Verdict::Quiet => {}
            }
        }
        // Once the budget is spent, pieces are only counted.
        self.budget.skip(echo::count_pieces(rest));
    }
}

/// What the echo of one connection keeps between reads.
struct Echo<'a> {
    ticket: &'a Ticket,
    stats: &'a Stats,
    framer: Framer,
    /// The output buffer of the prefixed echo.
    out: Vec<u8>,
    log: Option<DataLog<'a>>,
    /// The banner, while it is still to be sent before the first echo (`first-read`).
    banner_due: Option<Cow<'a, [u8]>>,
    /// Bytes received.
    bytes: u64,
}

impl Echo<'_> {
    /// Echoes `data`, one read's worth (the banner first, if it is due), and logs it.
    fn data(&mut self, data: &[u8]) -> Result<(), Reason> {
        if let Some(banner) = self.banner_due.take() {
            send(self.ticket, &banner)?;
        }
        if let Some(log) = self.log.as_mut() {
            log.record(data);
        }
        self.bytes += data.len() as u64;
        self.stats
            .bytes
            .fetch_add(data.len() as u64, Ordering::Relaxed);
        if self.framer.is_identity() {
            self.framer.pass(data);
            send(self.ticket, data)
        } else {
            send_framed(self.ticket, &mut self.framer, data, &mut self.out)
        }
    }

    fn outcome(&self, reason: Reason) -> Outcome {
        Outcome {
            reason,
            bytes: self.bytes,
            lines: self.framer.lines(),
            unlogged: self.log.as_ref().map_or(0, |l| l.budget.unlogged()),
        }
    }
}

/// The banner `client` gets: go-echo's lines, and with `--banner-client` its address.
fn banner_for(config: &Config, client: SocketAddr) -> Option<Cow<'_, [u8]>> {
    if config.banner_mode == BannerMode::Off {
        return None;
    }
    let banner: Cow<[u8]> = if config.banner_client {
        let mut b = config.banner.clone();
        b.extend_from_slice(crate::banner::client_line(client).as_bytes());
        Cow::Owned(b)
    } else {
        Cow::Borrowed(&config.banner)
    };
    (!banner.is_empty()).then_some(banner)
}

/// The echo loop over an admitted connection, whose client is `client` and whose first bytes,
/// read with its PROXY header, are `first`. Returns once the connection is finished (replies
/// written, write side shut, and at shutdown, acknowledged or out of time).
pub fn echo_connection(
    ticket: &Ticket,
    shared: &Shared,
    id: &Uuid,
    client: SocketAddr,
    first: &[u8],
) -> Outcome {
    let config = &shared.config;
    let registry = &shared.registry;
    let mut echo = Echo {
        ticket,
        stats: &shared.stats,
        framer: Framer::new(config.prefix.as_deref()),
        out: Vec::new(),
        log: log_enabled!(target: DATA_TARGET, Level::Info).then(|| DataLog {
            id,
            budget: ConnectionBudget::new(&shared.log_budget),
        }),
        banner_due: None,
        bytes: 0,
    };

    let stream = ticket.stream();
    // The time limits are the registry's watch, not a receive timeout (see registry.rs).
    let setup = stream
        .set_nodelay(true)
        .and_then(|()| stream.set_write_timeout(Some(config.write_timeout())));
    if let Err(e) = setup {
        return echo.outcome(classify_read(e));
    }

    let banner = banner_for(config, client);
    if config.banner_mode == BannerMode::FirstRead {
        echo.banner_due = banner;
    } else if let Some(banner) = banner {
        if let Err(reason) = send(ticket, &banner) {
            return echo.outcome(reason);
        }
    }
    if !first.is_empty() {
        ticket.made_progress();
        if let Err(reason) = echo.data(first) {
            return echo.outcome(reason);
        }
    }

    let mut reader = BufReader::with_capacity(READ_BUFFER_MIN, stream);
    // Why the server is ending this connection, if it is: the read side is shut, and what the
    // client sent until then is still echoed.
    let ending = || match ticket.ended() {
        Some(Ended::MaxDuration) => Some(Reason::MaxDuration),
        Some(Ended::Idle) => Some(Reason::IdleTimeout),
        Some(Ended::Forced) => Some(Reason::DrainDeadline),
        None => registry.is_shutting_down().then_some(Reason::Shutdown),
    };
    // Once ending, read only what had arrived by then: at most this many more bytes.
    let mut drain_budget: Option<u64> = None;
    let reason = loop {
        if drain_budget.is_none() && ending().is_some() {
            drain_budget =
                Some(socket::queued_input(stream).unwrap_or(0) + reader.buffer().len() as u64);
        }
        if drain_budget == Some(0) {
            break ending().unwrap_or(Reason::Shutdown);
        }
        let data = match reader.fill_buf() {
            Ok([]) => break ending().unwrap_or(Reason::Eof),
            Ok(data) => data,
            Err(e) if e.kind() == ErrorKind::Interrupted => continue,
            Err(e) => break failed(ticket, classify_read(e)),
        };
        ticket.made_progress();
        let n = match drain_budget {
            Some(budget) => data.len().min(budget as usize),
            None => data.len(),
        };
        if let Err(reason) = echo.data(&data[..n]) {
            return echo.outcome(reason);
        }
        reader.consume(n);
        let capacity = next_read_capacity(reader.capacity(), n);
        if capacity != reader.capacity() && reader.buffer().is_empty() {
            reader = BufReader::with_capacity(capacity, reader.into_inner());
            if capacity == READ_BUFFER_MIN {
                // The connection went interactive: release the streaming-sized output too.
                echo.out = Vec::new();
            }
        }
        if let Some(budget) = drain_budget.as_mut() {
            *budget -= n as u64;
        }
    };

    // A client ended by the server may still be sending: its replies must be acknowledged
    // before FIN (see drain.rs), within the drain deadline.
    let deadline = match reason {
        Reason::Shutdown => registry.drain_deadline(),
        Reason::MaxDuration => Some(Instant::now() + config.drain_timeout),
        _ => None,
    };
    let mut reason = reason;
    if let Some(deadline) = deadline {
        if let Drained::Failed(kind) = drain::wait_acknowledged(&mut reader, deadline) {
            reason = failed(ticket, classify_read(kind.into()));
        }
    }
    let _ = stream.shutdown(Shutdown::Write);
    echo.outcome(reason)
}

/// Sends the prefixed echo of `data`, framed into `out` at most [`OUTPUT_BUFFER_MAX`] bytes
/// at a time.
fn send_framed(
    ticket: &Ticket,
    framer: &mut Framer,
    mut data: &[u8],
    out: &mut Vec<u8>,
) -> Result<(), Reason> {
    while !data.is_empty() {
        out.clear();
        let n = framer.feed(data, out, OUTPUT_BUFFER_MAX);
        data = &data[n..];
        send(ticket, out)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_dead_peer_is_an_error_and_a_stalled_reader_a_write_timeout() {
        let kind = |k: ErrorKind| io::Error::from(k);
        assert!(matches!(
            classify_read(kind(ErrorKind::TimedOut)),
            Reason::Error(_)
        ));
        assert!(matches!(
            classify_write(kind(ErrorKind::TimedOut)),
            Reason::Error(_)
        ));
        assert!(matches!(
            classify_write(kind(ErrorKind::WouldBlock)),
            Reason::WriteTimeout
        ));
        assert!(matches!(
            classify_read(kind(ErrorKind::ConnectionReset)),
            Reason::Reset
        ));
        assert!(matches!(
            classify_write(kind(ErrorKind::BrokenPipe)),
            Reason::Reset
        ));
        assert_eq!(
            classify_read(io::Error::from_raw_os_error(libc::ETIMEDOUT)).to_string(),
            format!("error: {}", io::Error::from_raw_os_error(libc::ETIMEDOUT))
        );
    }

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
