//! One connection, from accept to close: its PROXY header, its open and close records, the
//! banner, and the echo loop.
//!
//! Each `read` (through a `BufReader`) is echoed before the next one, in vectored writes:
//! without a prefix the bytes leave straight from the read buffer; with one, long lines leave
//! from the read buffer after their prefix, and short ones are copied with theirs into a
//! staging buffer of nine sixteenths of the read buffer's size ([`stage_cap`], see
//! [`crate::echo`]). A write that blocks
//! (the client is not reading) holds up the next read, so a client that stops reading stops
//! being read, and a connection never holds more than its read buffer, its staging buffer and
//! their slices.

use std::fmt;
use std::io::{self, BufRead, BufReader, ErrorKind, IoSlice, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpStream};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use log::{info, log_enabled, warn, Level};
use uuid::Uuid;

use crate::banner::{self, BannerMode};
use crate::drain::{self, Drained};
use crate::echo::{self, Framer};
use crate::fault::{CloseAfter, Drawn, Rng, Spec};
use crate::log_budget::{ConnectionBudget, ReceivedLog, DATA_TARGET};
use crate::metrics::{Close, Refusal};
use crate::registry::{Ended, Registry, Ticket};
use crate::server::Context;
use crate::{proxy, socket};

/// Initial size of a connection's read buffer: an idle or interactive connection stays small.
pub(crate) const READ_BUFFER_MIN: usize = 2 * 1024;
/// Largest read buffer: a streaming connection grows to it within three reads. (32 KiB reads
/// cost 20% of streaming throughput against 64 KiB: twice the syscalls.)
pub(crate) const READ_BUFFER_MAX: usize = 64 * 1024;
/// The most slices one vectored write takes (an eighth of Linux's `IOV_MAX`): with a prefix,
/// lines of [`echo::COPY_BELOW`] bytes or more take two slices each (the others share one);
/// their arrays grow only while the connection streams with a prefix.
pub(crate) const MAX_SLICES: usize = 128;

/// The largest read buffer of a connection whose socket buffers are `socket_buffer` bytes
/// (`None`: the kernel's autotuning): twice the value, as the kernel doubles it for the receive
/// queue, which never holds more (at a 24 KiB socket buffer, 48 KiB reads stream 64-byte lines
/// 1.5 times as fast as 24 KiB reads, `make bench`).
pub(crate) fn read_buffer_max(socket_buffer: Option<usize>) -> usize {
    socket_buffer.map_or(READ_BUFFER_MAX, |b| {
        (2 * b).clamp(READ_BUFFER_MIN, READ_BUFFER_MAX)
    })
}

/// The most bytes staged for one prefixed write, for reads of at most `read_max` bytes: nine
/// sixteenths of a read, so that a full read of lines whose prefix adds at most an eighth to
/// them (64-byte lines with `one `: a sixteenth) leaves in two writes, each within one
/// loopback segment (64 KiB), past which a pacing congestion control (BBR without the fq
/// qdisc) lets the tail out only on its timer. At half a read such a read took three writes:
/// nine sixteenths streamed 64-byte lines over 16 connections 1.06x as fast, over one 1.19x,
/// and 4 KiB lines over one 1.10x (`make bench` A/B, medians of 5 to 8 rounds, bbr).
pub(crate) fn stage_cap(read_max: usize) -> usize {
    (read_max / 16 * 9).max(echo::MIN_STAGE)
}

/// How long a connection with a grown read buffer may read nothing before it gives the
/// buffer back (with the staging buffer and slice lists): a connection that streamed and went
/// quiet holds no streaming-sized buffer after this. Not at once when the socket is found
/// empty: 16 streaming clients on a busy core empty their sockets on most reads, and giving
/// back and growing again at each (a `munmap`, an `mmap`, 16 page faults and a 64 KiB
/// `memset`) cost 12% of the server's CPU (`perf`, stream 4096B x16).
pub(crate) const QUIET_AFTER: Duration = Duration::from_secs(1);

/// The read buffer size after a read of `n` bytes into a buffer of `capacity`, with `queued`
/// bytes still waiting in the socket, growing to at most `max`: a full read with more waiting
/// means the client streams (grow); otherwise the size stays. The buffer shrinks back to
/// [`READ_BUFFER_MIN`] once no input came for [`QUIET_AFTER`].
pub(crate) fn next_read_capacity(capacity: usize, n: usize, queued: u64, max: usize) -> usize {
    if n == capacity && queued > 0 {
        (capacity * 4).min(max)
    } else {
        capacity
    }
}

/// An accepted connection on its way to a worker.
#[derive(Debug)]
pub(crate) struct Job {
    /// Registration in the open-connection set; the socket lives inside.
    pub(crate) ticket: Ticket,
    /// The client's address.
    pub(crate) peer: SocketAddr,
    /// When the acceptor accepted it.
    pub(crate) accepted: Instant,
    /// Whether it came in on a TLS port.
    #[cfg_attr(not(feature = "tls"), allow(dead_code))]
    pub(crate) tls: bool,
}

/// Why a connection ended, as its close record says it.
#[derive(Debug)]
pub(crate) struct Reason {
    /// What ended it.
    pub(crate) close: Close,
    /// The error, for [`Close::Error`].
    pub(crate) error: Option<io::Error>,
}

impl From<Close> for Reason {
    fn from(close: Close) -> Reason {
        Reason { close, error: None }
    }
}

impl fmt::Display for Reason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.error {
            Some(e) => write!(f, "error: {e}"),
            None => f.write_str(self.close.text()),
        }
    }
}

/// What a finished connection did.
#[derive(Debug)]
pub(crate) struct Outcome {
    /// Why it ended.
    pub(crate) reason: Reason,
    /// Bytes received (every one of them echoed unless the reason is an error).
    pub(crate) bytes: u64,
    /// Lines echoed (a last line without `\n` counts).
    pub(crate) lines: u64,
    /// Pieces the log budget kept out of the log.
    pub(crate) unlogged: u64,
}

/// Shows an IPv4 client of a dual-stack listener as `1.2.3.4:5`, not `[::ffff:1.2.3.4]:5`.
pub(crate) fn canonical(addr: SocketAddr) -> SocketAddr {
    SocketAddr::new(addr.ip().to_canonical(), addr.port())
}

/// A connection's byte stream, for reading (through a `BufReader`) and writing (through a
/// copy): both work on a shared reference, as `&TcpStream` does.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Stream<'a> {
    /// The socket itself.
    Plain(&'a TcpStream),
    /// TLS over the socket.
    #[cfg(feature = "tls")]
    Tls(&'a crate::tls::Session<'a>),
}

impl<'a> Stream<'a> {
    fn socket(self) -> &'a TcpStream {
        match self {
            Stream::Plain(s) => s,
            #[cfg(feature = "tls")]
            Stream::Tls(t) => t.socket(),
        }
    }

    /// Bytes that have arrived and are not read yet (with TLS: records not yet decrypted,
    /// and plaintext decrypted and not yet read).
    fn queued(self) -> u64 {
        let socket = socket::queued_input(self.socket()).unwrap_or(0);
        match self {
            Stream::Plain(_) => socket,
            #[cfg(feature = "tls")]
            Stream::Tls(t) => socket + t.buffered(),
        }
    }

    /// Ends the stream from the server's side: with TLS, `close_notify` first; then FIN.
    fn finish(self) {
        #[cfg(feature = "tls")]
        if let Stream::Tls(t) = self {
            t.close_notify();
        }
        let _ = self.socket().shutdown(Shutdown::Write);
    }
}

impl Read for Stream<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self {
            Stream::Plain(s) => socket::recv(s, buf),
            #[cfg(feature = "tls")]
            Stream::Tls(t) => t.read(buf),
        }
    }
}

impl Write for Stream<'_> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self {
            Stream::Plain(s) => socket::send(s, buf),
            #[cfg(feature = "tls")]
            Stream::Tls(t) => t.write_vectored(&[IoSlice::new(buf)]),
        }
    }

    fn write_vectored(&mut self, bufs: &[IoSlice<'_>]) -> io::Result<usize> {
        match self {
            Stream::Plain(s) => socket::send_vectored(s, bufs),
            #[cfg(feature = "tls")]
            Stream::Tls(t) => t.write_vectored(bufs),
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// Serves one connection to its end and logs it (the worker pool's job handler).
pub(crate) fn serve(job: Job, ctx: &Context) {
    let id = Uuid::new_v4();
    let socket = job.ticket.stream();
    let peer = canonical(job.peer);
    let local = socket
        .local_addr()
        .map_or_else(|_| "?".to_string(), |a| canonical(a).to_string());
    let mut fault = ctx.faults.draw(Rng::new(id.as_u128()));
    if let Some(f) = &fault {
        for kind in f.spec.kinds() {
            ctx.metrics.faulted.add(kind);
        }
        // Nothing is read or sent (the banner included) for the connect delay.
        if let Some(d) = f.spec.connect_delay {
            job.ticket.pause(Some(d));
        }
    }
    let mode = ctx.config.proxy_protocol;
    let start = match mode {
        proxy::Mode::Off => proxy::Start::default(),
        mode => match proxy::read_start(socket, mode) {
            Ok(start) => start,
            Err(reason) => {
                warn!("{id} - TCP connection refused: {reason}. peer={peer} local={local}");
                ctx.metrics.refused.add(Refusal::ProxyProtocol);
                let _ = socket.shutdown(Shutdown::Both);
                return;
            }
        },
    };
    let client = start.client.map_or(peer, canonical);
    log_open(&id, mode, client, peer, &local, start.header);
    let outcome = match fault.as_ref().map(|f| Arc::clone(&f.spec)) {
        // Accepted, then never read and never answered, until a time limit or the shutdown.
        Some(spec) if spec.hang => {
            job.ticket.pause(None);
            let close = match job.ticket.ended() {
                Some(Ended::MaxDuration) => Close::MaxDuration,
                Some(Ended::Idle) => Close::IdleTimeout,
                Some(Ended::Forced) => Close::DrainDeadline,
                None => Close::Shutdown,
            };
            Some(ended_by_fault(socket, &spec, close))
        }
        // Reset alone: accepted, then reset at once.
        Some(spec) if spec.reset && spec.kinds().len() == 1 => {
            Some(ended_by_fault(socket, &spec, Close::FaultReset))
        }
        _ => None,
    };
    let outcome = match outcome {
        Some(outcome) => outcome,
        None => serve_stream(&job, ctx, &id, client, &start.rest, fault.as_mut()),
    };
    log_close(&id, &outcome, job.accepted, fault.as_ref());
    ctx.metrics.served.fetch_add(1, Ordering::Relaxed);
    ctx.metrics.closed.add(outcome.reason.close);
    // `job.ticket` drops here: the connection leaves the registry, the socket closes.
}

// The connection's records are written by functions of their own, never inlined: their
// formatting state must not sit in the frame below which the connection is served (an idle
// connection pays for every stack page its thread has touched; ARCHITECTURE.md).

#[inline(never)]
fn log_open(
    id: &Uuid,
    mode: proxy::Mode,
    client: SocketAddr,
    peer: SocketAddr,
    local: &str,
    header: Option<&str>,
) {
    if mode == proxy::Mode::Off {
        info!("{id} - TCP connection open. peer={peer} local={local}");
    } else {
        info!(
            "{id} - TCP connection open. client={client} peer={peer} local={local} proxy=\"{}\"",
            header.unwrap_or("none")
        );
    }
}

#[inline(never)]
fn log_close(id: &Uuid, outcome: &Outcome, accepted: Instant, fault: Option<&Drawn>) {
    let fault_field = fault.map_or_else(String::new, |f| format!(" fault=\"{}\"", f.spec));
    info!(
        "{id} - TCP connection closed. reason={} bytes={} lines={} duration={:.3}s unlogged={}{fault_field}",
        outcome.reason,
        outcome.bytes,
        outcome.lines,
        accepted.elapsed().as_secs_f64(),
        outcome.unlogged,
    );
}

/// The outcome of a connection a fault ended before any echo (`hang`, `reset` alone): with
/// `reset`, the socket closes with a reset instead of FIN.
fn ended_by_fault(socket: &TcpStream, spec: &Spec, close: Close) -> Outcome {
    if spec.reset {
        reset_on_close(socket);
    } else {
        // What the client sent was never read: discarded, so that closing sends FIN (closing
        // with unread input would reset the connection).
        let _ = socket.set_nonblocking(true);
        let mut sink = [0u8; 4096];
        for _ in 0..64 {
            match (&mut &*socket).read(&mut sink) {
                Ok(n) if n > 0 => {}
                _ => break,
            }
        }
        let _ = socket.shutdown(Shutdown::Write);
    }
    Outcome {
        reason: close.into(),
        bytes: 0,
        lines: 0,
        unlogged: 0,
    }
}

/// Makes closing `socket` send a reset (`SO_LINGER` 0), not FIN.
fn reset_on_close(socket: &TcpStream) {
    let _ = socket2::SockRef::from(socket).set_linger(Some(Duration::ZERO));
}

/// Serves the connection's stream: TLS first on a TLS port, then the echo.
fn serve_stream(
    job: &Job,
    ctx: &Context,
    id: &Uuid,
    client: SocketAddr,
    first: &[u8],
    fault: Option<&mut Drawn>,
) -> Outcome {
    #[cfg(feature = "tls")]
    if let (Some(tls), true) = (&ctx.tls, job.tls) {
        return serve_tls(tls, job, ctx, id, client, first, fault);
    }
    echo_connection(
        &job.ticket,
        ctx,
        Opening {
            id,
            client,
            first,
            banner_end: None,
        },
        Stream::Plain(job.ticket.stream()),
        fault,
    )
}

/// The handshake, then the echo inside TLS. Never inlined: the TLS session (rustls' state,
/// kilobytes) stays out of the stack frame of plain connections, whose every page an idle
/// connection pays for.
#[cfg(feature = "tls")]
#[inline(never)]
fn serve_tls(
    tls: &crate::tls::Tls,
    job: &Job,
    ctx: &Context,
    id: &Uuid,
    client: SocketAddr,
    first: &[u8],
    fault: Option<&mut Drawn>,
) -> Outcome {
    let socket = job.ticket.stream();
    match tls.handshake(socket, first, job.accepted) {
        Ok((session, seen)) => {
            ctx.metrics.handshakes.add(crate::tls::Handshake::Ok);
            info!("{id} - TLS handshake done. {seen}");
            let banner_end = format!("TLS: {seen}\n");
            let outcome = echo_connection(
                &job.ticket,
                ctx,
                Opening {
                    id,
                    client,
                    first: &[],
                    banner_end: Some(banner_end.as_bytes()),
                },
                Stream::Tls(&session),
                fault,
            );
            // The session drops before the ticket: the socket closes after its last record.
            drop(session);
            outcome
        }
        Err(failure) => {
            ctx.metrics.handshakes.add(failure.kind);
            let peer = canonical(job.peer);
            let local = socket
                .local_addr()
                .map_or_else(|_| "?".to_string(), |a| canonical(a).to_string());
            warn!(
                "{id} - TLS handshake failed: {}. peer={peer} local={local}",
                failure.reason
            );
            let _ = socket.shutdown(Shutdown::Both);
            Outcome {
                reason: Close::Handshake.into(),
                bytes: 0,
                lines: 0,
                unlogged: 0,
            }
        }
    }
}

/// Why a read failed. Reads have no timeout (the watch ends idle connections), so a timeout
/// here is the kernel giving up on a dead peer: an error, not an idle client.
fn classify_read(e: io::Error) -> Reason {
    match e.kind() {
        ErrorKind::ConnectionReset | ErrorKind::ConnectionAborted => Close::Reset.into(),
        _ => Reason {
            close: Close::Error,
            error: Some(e),
        },
    }
}

/// Why a write failed: `EAGAIN` is the send timeout (the client stopped reading); `ETIMEDOUT`
/// is the kernel giving up on a dead peer.
fn classify_write(e: io::Error) -> Reason {
    match e.kind() {
        ErrorKind::WouldBlock => Close::WriteTimeout.into(),
        ErrorKind::ConnectionReset | ErrorKind::ConnectionAborted | ErrorKind::BrokenPipe => {
            Close::Reset.into()
        }
        _ => Reason {
            close: Close::Error,
            error: Some(e),
        },
    }
}

/// A failure on a socket the server itself closed (at the drain deadline, or at the end of
/// the drain that follows `--max-duration`) is the server's doing, not the client's.
fn failed(ticket: &Ticket, reason: Reason) -> Reason {
    match ticket.ended() {
        Some(Ended::Forced) => Close::DrainDeadline.into(),
        Some(Ended::MaxDuration) => Close::MaxDuration.into(),
        _ => reason,
    }
}

/// Writes all of `bytes`. Every write that moves data counts as progress, so a slow reader is
/// not taken for an idle one.
fn send(ticket: &Ticket, mut out: Stream<'_>, mut bytes: &[u8]) -> Result<(), Reason> {
    while !bytes.is_empty() {
        match out.write(bytes) {
            Ok(0) => return Err(classify_write(ErrorKind::WriteZero.into())),
            Ok(n) => {
                ticket.made_progress();
                // The usual case, all of it at once, returns without slicing what is left.
                match bytes.get(n..) {
                    Some(rest) if !rest.is_empty() => bytes = rest,
                    _ => return Ok(()),
                }
            }
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(e) => return Err(failed(ticket, classify_write(e))),
        }
    }
    Ok(())
}

/// Writes all of `slices` with vectored writes; a short write may end inside a slice, and the
/// rest follows. With `more`, another part of the same reply is written right after, and the
/// kernel may hold the end of this one back to send them together (plain sockets only).
fn send_slices(
    ticket: &Ticket,
    mut out: Stream<'_>,
    mut slices: &mut [IoSlice<'_>],
    more: bool,
) -> Result<(), Reason> {
    while !slices.is_empty() {
        let written = match out {
            Stream::Plain(socket) if more => socket::send_vectored_more(socket, slices),
            _ => out.write_vectored(slices),
        };
        match written {
            Ok(0) => return Err(classify_write(ErrorKind::WriteZero.into())),
            Ok(n) => {
                IoSlice::advance_slices(&mut slices, n);
                ticket.made_progress();
            }
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(e) => return Err(failed(ticket, classify_write(e))),
        }
    }
    Ok(())
}

/// What the echo of one connection keeps between reads.
struct Echo<'a> {
    ticket: &'a Ticket,
    ctx: &'a Context,
    out: Stream<'a>,
    framer: Framer,
    /// The parts of one prefixed write, their slices, and the lines it copies (given back
    /// when the read buffer shrinks).
    parts: Vec<echo::Part>,
    slices: Vec<IoSlice<'static>>,
    stage: Vec<u8>,
    /// The most bytes staged for one write ([`stage_cap`]).
    stage_cap: usize,
    /// Whether a read's parts but the last are sent with `MSG_MORE` (asked of the socket the
    /// first time a read takes several writes).
    hold_back: Option<bool>,
    log: Option<ReceivedLog<'a>>,
    /// The banner, while it is still to be sent before the first echo (`first-read`).
    banner_due: Option<Vec<u8>>,
    /// Bytes received.
    bytes: u64,
    /// The faults this connection drew.
    fault: Option<&'a mut Drawn>,
    /// Output bytes the fault `close-after=SIZE` still allows.
    output_left: Option<u64>,
    /// The fault `rate`: (bytes a second, since when, bytes sent since).
    pace: Option<(u64, Instant, u64)>,
}

impl Echo<'_> {
    /// Echoes `data`, one read's worth (the banner first, if it is due), and logs it: once
    /// echoed, so that the reply does not wait for the log's writes (a faulted connection's
    /// before its echo, which the fault may hold back).
    fn data(&mut self, data: &[u8]) -> Result<(), Reason> {
        if let Some(banner) = self.banner_due.take() {
            send(self.ticket, self.out, &banner)?;
        }
        self.bytes += data.len() as u64;
        self.ctx
            .metrics
            .bytes
            .fetch_add(data.len() as u64, Ordering::Relaxed);
        if self.fault.is_some() {
            self.record(data);
            return self.faulted(data);
        }
        let result = self.echo(data);
        self.record(data);
        result
    }

    /// Logs `data` as `Received` records, within the log budget.
    #[inline(always)]
    fn record(&mut self, data: &[u8]) {
        if let Some(log) = self.log.as_mut() {
            log.record(data);
        }
    }

    /// Echoes `data` on an unfaulted connection: as it came, or framed with the prefix.
    fn echo(&mut self, data: &[u8]) -> Result<(), Reason> {
        let Some(prefix) = &self.ctx.prefix else {
            self.framer.pass(data);
            return send(self.ticket, self.out, data);
        };
        // A read of one line, or of a piece of one: one write, no list of parts.
        if let Some(part) = self.framer.frame_piece(prefix, data, &mut self.stage) {
            return send(self.ticket, self.out, part.bytes(&self.stage, data));
        }
        // The lists and the staging buffer grow with the reads (up to their bounds) and are
        // kept while the connection streams: a connection that sent a line holds a few bytes.
        let mut rest = data;
        let mut result = Ok(());
        while !rest.is_empty() && result.is_ok() {
            self.parts.clear();
            self.stage.clear();
            let n = self.framer.frame(
                prefix,
                rest,
                &mut self.stage,
                self.stage_cap,
                &mut self.parts,
                MAX_SLICES,
            );
            // The parts of one read leave as one reply: segments are not cut at the steps
            // (unless the socket is paced, see `socket::paces`).
            let more = n < rest.len()
                && *self
                    .hold_back
                    .get_or_insert_with(|| socket::holds_back_parts(self.out.socket()));
            result = match self.parts[..] {
                // One part (a line, or a run of short lines staged whole): a plain write,
                // with no list of slices to build.
                [part] if !more => send(self.ticket, self.out, part.bytes(&self.stage, rest)),
                _ => {
                    let mut slices = echo::recycle(std::mem::take(&mut self.slices));
                    slices.extend(
                        self.parts
                            .iter()
                            .map(|p| IoSlice::new(p.bytes(&self.stage, rest))),
                    );
                    let sent = send_slices(self.ticket, self.out, &mut slices, more);
                    self.slices = echo::recycle(slices);
                    sent
                }
            };
            rest = &rest[n..];
        }
        result
    }

    /// The echo of a faulted connection: delayed, paced, cut after a number of bytes. Its
    /// output is framed into one buffer first (a copy that unfaulted connections never make).
    fn faulted(&mut self, data: &[u8]) -> Result<(), Reason> {
        let mut out = Vec::with_capacity(data.len());
        match self.ctx.prefix.as_deref() {
            None => {
                self.framer.pass(data);
                out.extend_from_slice(data);
            }
            Some(prefix) => {
                let mut rest = data;
                while !rest.is_empty() {
                    let (mut stage, mut parts) = (Vec::new(), Vec::new());
                    let n = self.framer.frame(
                        prefix,
                        rest,
                        &mut stage,
                        echo::MIN_STAGE,
                        &mut parts,
                        MAX_SLICES,
                    );
                    for part in &parts {
                        out.extend_from_slice(part.bytes(&stage, rest));
                    }
                    rest = &rest[n..];
                }
            }
        }
        if let Some(delay) = self.fault.as_mut().and_then(|f| f.echo_delay()) {
            self.ticket.pause(Some(delay));
        }
        let mut cut = false;
        if let Some(left) = self.output_left.as_mut() {
            if out.len() as u64 >= *left {
                out.truncate(*left as usize);
                cut = true;
            }
            *left -= out.len() as u64;
        }
        match self.pace.as_mut() {
            None => send(self.ticket, self.out, &out)?,
            Some((rate, since, sent)) => {
                // A twentieth of a second's worth at a time, each when its time has come.
                let chunk = (*rate / 20).max(1) as usize;
                for piece in out.chunks(chunk) {
                    let due = *since + Duration::from_secs_f64(*sent as f64 / *rate as f64);
                    let wait = due.saturating_duration_since(Instant::now());
                    if !wait.is_zero() && !self.ticket.pause(Some(wait)) {
                        break;
                    }
                    send(self.ticket, self.out, piece)?;
                    *sent += piece.len() as u64;
                }
            }
        }
        if cut {
            return Err(Close::FaultCloseAfter.into());
        }
        Ok(())
    }

    /// Gives back what only a streaming connection needs.
    fn shrink(&mut self) {
        self.parts = Vec::new();
        self.slices = Vec::new();
        self.stage = Vec::new();
    }

    fn outcome(&self, reason: Reason) -> Outcome {
        Outcome {
            reason,
            bytes: self.bytes,
            lines: self.framer.lines(),
            unlogged: self.log.as_ref().map_or(0, |l| l.unlogged()),
        }
    }
}

/// Why the server is ending this connection, if it is: the read side is shut, and what the
/// client sent until then is still echoed. (Checked at every read: always inlined.)
#[inline(always)]
fn ending(ticket: &Ticket, registry: &Registry) -> Option<Close> {
    match ticket.ended() {
        Some(Ended::MaxDuration) => Some(Close::MaxDuration),
        Some(Ended::Idle) => Some(Close::IdleTimeout),
        Some(Ended::Forced) => Some(Close::DrainDeadline),
        None => registry.is_shutting_down().then_some(Close::Shutdown),
    }
}

/// What a connection's echo starts from.
struct Opening<'a> {
    /// The connection's id, for its records.
    id: &'a Uuid,
    /// The client (the PROXY header's, else the peer).
    client: SocketAddr,
    /// The first bytes, read with a PROXY header.
    first: &'a [u8],
    /// What the banner ends with (on a TLS port, what the handshake agreed).
    banner_end: Option<&'a [u8]>,
}

/// The echo loop over an admitted connection, whose client is `client` and whose first bytes,
/// read with its PROXY header, are `first`; the banner ends with `banner_end` (what the TLS
/// handshake agreed). Returns once the connection is finished (replies written, write side
/// shut, and when the server ended it, acknowledged or out of time).
fn echo_connection(
    ticket: &Ticket,
    ctx: &Context,
    start: Opening<'_>,
    stream: Stream<'_>,
    fault: Option<&mut Drawn>,
) -> Outcome {
    let Opening {
        id,
        client,
        first,
        banner_end,
    } = start;
    let config = &ctx.config;
    let registry = &ctx.registry;
    let read_max = read_buffer_max(config.socket_buffer);
    let spec = fault.as_ref().map(|f| Arc::clone(&f.spec));
    let close_after = spec.as_ref().and_then(|s| s.close_after);
    // The fault `close-after=DUR`: reads wait at most until then.
    let cut_at = match close_after {
        Some(CloseAfter::Time(d)) => ticket.accepted().checked_add(d),
        _ => None,
    };
    let reset = spec.as_ref().is_some_and(|s| s.reset);
    let mut echo = Echo {
        ticket,
        ctx,
        out: stream,
        framer: Framer::default(),
        parts: Vec::new(),
        slices: Vec::new(),
        stage: Vec::new(),
        stage_cap: stage_cap(read_max),
        hold_back: None,
        log: log_enabled!(target: DATA_TARGET, Level::Info)
            .then(|| ReceivedLog::new(id, ConnectionBudget::new(&ctx.log_budget))),
        banner_due: None,
        bytes: 0,
        output_left: match close_after {
            Some(CloseAfter::Bytes(n)) => Some(n),
            _ => None,
        },
        pace: spec
            .as_ref()
            .and_then(|s| s.rate)
            .map(|r| (r, Instant::now(), 0)),
        fault,
    };

    let socket = stream.socket();
    // The time limits are the registry's watch, not a receive timeout (see registry.rs).
    let setup = socket
        .set_nodelay(true)
        .and_then(|()| socket.set_write_timeout(Some(config.write_timeout())));
    if let Err(e) = setup {
        return echo.outcome(classify_read(e));
    }

    let banner = banner::for_client(config, client, banner_end);
    if config.banner_mode == BannerMode::FirstRead {
        echo.banner_due = banner;
    } else if let Some(banner) = banner {
        if let Err(reason) = send(ticket, stream, &banner) {
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
    // Once ending, read only what had arrived by then: at most this many more bytes.
    let mut drain_budget: Option<u64> = None;
    let close = loop {
        if drain_budget.is_none() && ending(ticket, registry).is_some() {
            drain_budget = Some(stream.queued() + reader.buffer().len() as u64);
        }
        if drain_budget == Some(0) {
            break ending(ticket, registry).unwrap_or(Close::Shutdown);
        }
        if let Some(at) = cut_at {
            let left = at.saturating_duration_since(Instant::now());
            if left.is_zero() && reader.buffer().is_empty() {
                break Close::FaultCloseAfter;
            }
            let _ = socket.set_read_timeout(Some(left.max(Duration::from_millis(1))));
        }
        let grown = reader.capacity() > READ_BUFFER_MIN;
        let data = match reader.fill_buf() {
            Ok([]) => break ending(ticket, registry).unwrap_or(Close::Eof),
            Ok(data) => data,
            Err(e) if e.kind() == ErrorKind::Interrupted => continue,
            // Quiet for `QUIET_AFTER` with a grown buffer: give it back, wait without a limit.
            Err(e)
                if grown
                    && cut_at.is_none()
                    && matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) =>
            {
                reader = BufReader::with_capacity(READ_BUFFER_MIN, reader.into_inner());
                echo.shrink();
                let _ = socket.set_read_timeout(None);
                continue;
            }
            Err(e)
                if cut_at.is_some()
                    && matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) =>
            {
                continue
            }
            Err(e) => return echo.outcome(failed(ticket, classify_read(e))),
        };
        ticket.made_progress();
        let n = match drain_budget {
            Some(budget) => data.len().min(budget as usize),
            None => data.len(),
        };
        match echo.data(&data[..n]) {
            Ok(()) => {}
            Err(reason) if reason.close == Close::FaultCloseAfter => {
                reader.consume(n);
                break Close::FaultCloseAfter;
            }
            Err(reason) => return echo.outcome(reason),
        }
        reader.consume(n);
        if let Some(budget) = drain_budget.as_mut() {
            *budget -= n as u64;
        }
        let capacity = reader.capacity();
        if reader.buffer().is_empty() && n == capacity && capacity < read_max {
            let next = next_read_capacity(capacity, n, stream.queued(), read_max);
            if next != capacity {
                // From now on a quiet spell gives the grown buffer back (a faulted connection
                // with `close-after=DUR` sets its own receive timeout at each read).
                if capacity == READ_BUFFER_MIN && cut_at.is_none() {
                    let _ = socket.set_read_timeout(Some(QUIET_AFTER));
                }
                reader = BufReader::with_capacity(next, reader.into_inner());
            }
        }
    };

    // A client ended by the server may still be sending: its replies must be acknowledged
    // before FIN (see drain.rs), within the drain deadline.
    let deadline = match close {
        Close::Shutdown => registry.drain_deadline(),
        Close::MaxDuration | Close::FaultCloseAfter => Some(Instant::now() + config.drain_timeout),
        _ => None,
    };
    let mut reason = Reason::from(close);
    if let Some(deadline) = deadline {
        if let Drained::Failed(kind) = drain::wait_acknowledged(ticket, &mut reader, deadline) {
            reason = failed(ticket, classify_read(kind.into()));
        }
    }
    if reset {
        reset_on_close(socket);
    } else {
        stream.finish();
    }
    echo.outcome(reason)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_dead_peer_is_an_error_and_a_stalled_reader_a_write_timeout() {
        let kind = |k: ErrorKind| io::Error::from(k);
        assert_eq!(classify_read(kind(ErrorKind::TimedOut)).close, Close::Error);
        assert_eq!(
            classify_write(kind(ErrorKind::TimedOut)).close,
            Close::Error
        );
        assert_eq!(
            classify_write(kind(ErrorKind::WouldBlock)).close,
            Close::WriteTimeout
        );
        assert_eq!(
            classify_read(kind(ErrorKind::ConnectionReset)).close,
            Close::Reset
        );
        assert_eq!(
            classify_write(kind(ErrorKind::BrokenPipe)).close,
            Close::Reset
        );
        assert_eq!(
            classify_read(io::Error::from_raw_os_error(libc::ETIMEDOUT)).to_string(),
            format!("error: {}", io::Error::from_raw_os_error(libc::ETIMEDOUT))
        );
    }

    #[test]
    fn the_read_buffer_grows_while_input_waits_and_keeps_its_size_otherwise() {
        let mut cap = READ_BUFFER_MIN;
        let mut steps = 0;
        const MAX: usize = READ_BUFFER_MAX;
        while cap < MAX {
            cap = next_read_capacity(cap, cap, 1, MAX);
            steps += 1;
        }
        assert_eq!(cap, MAX);
        assert!(steps <= 3);
        assert_eq!(next_read_capacity(MAX, MAX, 1, MAX), MAX);
        assert_eq!(
            next_read_capacity(MAX, 5000, 100, MAX),
            MAX,
            "a medium read with more waiting keeps it"
        );
        assert_eq!(
            next_read_capacity(MAX, MAX, 0, MAX),
            MAX,
            "the size stays when nothing waits (a quiet spell gives it back)"
        );
        assert_eq!(
            next_read_capacity(READ_BUFFER_MIN, 64, 0, MAX),
            READ_BUFFER_MIN
        );
        // Small socket buffers: never more than the receive queue holds.
        assert_eq!(
            next_read_capacity(8192, 8192, 1, read_buffer_max(Some(8192))),
            16384
        );
        assert_eq!(
            next_read_capacity(16384, 16384, 1, read_buffer_max(Some(8192))),
            16384
        );
    }

    /// The writes (staged bytes each) that echo `input` with `prefix` at `cap`.
    fn writes(prefix: &[u8], input: &[u8], cap: usize) -> Vec<usize> {
        let (mut framer, mut stage, mut parts) = (Framer::default(), Vec::new(), Vec::new());
        let mut rest = input;
        let mut writes = Vec::new();
        while !rest.is_empty() {
            stage.clear();
            parts.clear();
            let n = framer.frame(prefix, rest, &mut stage, cap, &mut parts, MAX_SLICES);
            writes.push(stage.len());
            rest = &rest[n..];
        }
        writes
    }

    #[test]
    fn a_full_read_of_short_lines_leaves_in_two_writes_each_within_a_loopback_segment() {
        let lines = |len: usize, n: usize| -> Vec<u8> {
            (0..n)
                .flat_map(|_| [vec![b'x'; len - 1], vec![b'\n']].concat())
                .collect()
        };
        for read_max in [READ_BUFFER_MAX, read_buffer_max(Some(24576))] {
            let cap = stage_cap(read_max);
            for (prefix, len) in [(&b"one "[..], 64), (b"one ", 32), (b"v1 ", 4096)] {
                let input = lines(len, read_max / len);
                let w = writes(prefix, &input, cap);
                assert_eq!(w.len(), 2, "{len}-byte lines, {read_max}-byte read: {w:?}");
                assert!(w.iter().all(|&n| n < 64 * 1024), "{w:?}");
            }
        }
        // One-byte lines (the worst a client can send) stay within the cap.
        let w = writes(
            b"one ",
            &[b'\n'; READ_BUFFER_MAX],
            stage_cap(READ_BUFFER_MAX),
        );
        assert!(w.iter().all(|&n| n <= stage_cap(READ_BUFFER_MAX)), "{w:?}");
        assert_eq!(stage_cap(read_buffer_max(Some(4096))), echo::MIN_STAGE);
    }

    #[test]
    fn the_read_buffer_is_at_most_what_the_receive_queue_holds() {
        assert_eq!(read_buffer_max(None), READ_BUFFER_MAX);
        assert_eq!(read_buffer_max(Some(24576)), 49152);
        assert_eq!(read_buffer_max(Some(32768)), READ_BUFFER_MAX);
        assert_eq!(read_buffer_max(Some(1 << 20)), READ_BUFFER_MAX);
        assert_eq!(read_buffer_max(Some(1024)), READ_BUFFER_MIN);
    }
}
