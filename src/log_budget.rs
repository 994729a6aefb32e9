//! The log budget: however much a client sends, the `Received ...` records it causes are
//! bounded.
//!
//! * Per connection, only the first [`PIECES_PER_CONNECTION`] pieces (lines, or the open end
//!   of a read), holding at most [`BYTES_PER_CONNECTION`] bytes of client data, may be logged;
//!   past that one record says the records stop, and the close record counts the pieces not
//!   logged (`unlogged=`). An interactive `nc` session of hundreds of lines logs every line.
//! * Server-wide, a rate limit ([`SERVER_RATE`] pieces a second, bursts of [`SERVER_BURST`])
//!   keeps a thousand clients from multiplying the per-connection budget. It is a GCRA (one
//!   atomic "theoretical arrival time", one compare-and-swap per logged piece): no lock, and
//!   nothing at all once a connection's own budget is spent.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use log::{info, warn};
use uuid::Uuid;

use crate::echo;
use crate::logging::{EscapedText, RawBytes};

/// Log target of the per-piece `Received ...` records, so that they can be filtered apart
/// from the connection records: `RUST_LOG=info,tcp_echo::data=off`.
pub(crate) const DATA_TARGET: &str = "tcp_echo::data";

/// Pieces logged per connection at most.
pub(crate) const PIECES_PER_CONNECTION: u64 = 1000;
/// Bytes of client data logged per connection at most (each record shows at most 1 KiB).
pub(crate) const BYTES_PER_CONNECTION: u64 = 64 * 1024;
/// Pieces logged per second, server-wide, in the long run.
pub(crate) const SERVER_RATE: u64 = 100;
/// Pieces the server may log at once before the rate applies.
pub(crate) const SERVER_BURST: u64 = 1000;
/// At most one notice per this interval that the server-wide limit is suppressing records.
const NOTICE_EVERY: Duration = Duration::from_secs(10);

/// The server-wide rate limit on `Received` records.
#[derive(Debug)]
pub(crate) struct ServerBudget {
    start: Instant,
    /// Nanoseconds between two pieces at the sustained rate.
    interval: u64,
    /// How far ahead of now the theoretical arrival time may run (the burst).
    tolerance: u64,
    /// The GCRA's theoretical arrival time, in nanoseconds since `start`.
    tat: AtomicU64,
    /// Pieces not logged, server-wide, for either budget.
    suppressed: AtomicU64,
    /// When the last notice about suppression was logged (ns since `start`, 0: never).
    last_notice: AtomicU64,
}

impl Default for ServerBudget {
    fn default() -> Self {
        ServerBudget::new(SERVER_RATE, SERVER_BURST)
    }
}

impl ServerBudget {
    /// A limit of `rate` pieces a second with bursts of `burst` (both at least 1).
    pub(crate) fn new(rate: u64, burst: u64) -> ServerBudget {
        let interval = 1_000_000_000 / rate.max(1);
        ServerBudget {
            start: Instant::now(),
            interval,
            tolerance: interval * (burst.max(1) - 1),
            tat: AtomicU64::new(0),
            suppressed: AtomicU64::new(0),
            last_notice: AtomicU64::new(0),
        }
    }

    fn now(&self) -> u64 {
        self.start.elapsed().as_nanos() as u64
    }

    /// Takes one piece from the server-wide budget at `now` (ns since start).
    fn take_at(&self, now: u64) -> bool {
        let mut tat = self.tat.load(Ordering::Relaxed);
        loop {
            let from = tat.max(now);
            if from - now > self.tolerance {
                return false;
            }
            match self.tat.compare_exchange_weak(
                tat,
                from + self.interval,
                Ordering::Relaxed,
                Ordering::Relaxed,
            ) {
                Ok(_) => return true,
                Err(current) => tat = current,
            }
        }
    }

    /// Pieces not logged so far, server-wide.
    pub(crate) fn suppressed(&self) -> u64 {
        self.suppressed.load(Ordering::Relaxed)
    }

    /// Decides about one record that no connection budget covers (a UDP datagram's): [`Log`],
    /// or held back by the server-wide limit ([`ServerNotice`] when a notice is due).
    ///
    /// [`Log`]: Verdict::Log
    /// [`ServerNotice`]: Verdict::ServerNotice
    pub(crate) fn admit_one(&self) -> Verdict {
        if self.take_at(self.now()) {
            Verdict::Log
        } else if self.suppress(1, true) {
            Verdict::ServerNotice
        } else {
            Verdict::Quiet
        }
    }

    /// Counts `n` suppressed pieces; true when a notice about server-wide suppression is due
    /// (at most one per ten seconds).
    fn suppress(&self, n: u64, server_wide: bool) -> bool {
        self.suppressed.fetch_add(n, Ordering::Relaxed);
        if !server_wide {
            return false;
        }
        self.notice_due_at(self.now().max(1))
    }

    /// Whether a notice is due at `now` (ns since start); claims it if so. Another thread may
    /// have claimed one at a later time than `now` in between: then none is due.
    fn notice_due_at(&self, now: u64) -> bool {
        let last = self.last_notice.load(Ordering::Relaxed);
        (last == 0 || now.saturating_sub(last) >= NOTICE_EVERY.as_nanos() as u64)
            && self
                .last_notice
                .compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
    }
}

/// What the budget says about one piece.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Verdict {
    /// Log it.
    Log,
    /// Do not log it; the connection's own budget just ran out (say so, once).
    ConnectionSpent,
    /// Do not log it; the server-wide limit holds it back, and a notice is due.
    ServerNotice,
    /// Do not log it.
    Quiet,
}

/// One connection's log budget.
#[derive(Debug)]
pub(crate) struct ConnectionBudget<'a> {
    server: &'a ServerBudget,
    pieces: u64,
    bytes: u64,
    spent: bool,
    unlogged: u64,
}

impl<'a> ConnectionBudget<'a> {
    /// A fresh budget drawing on `server`.
    pub(crate) fn new(server: &'a ServerBudget) -> ConnectionBudget<'a> {
        ConnectionBudget {
            server,
            pieces: 0,
            bytes: 0,
            spent: false,
            unlogged: 0,
        }
    }

    /// Whether this connection's own budget is spent: nothing it sends is logged any more.
    pub(crate) fn is_spent(&self) -> bool {
        self.spent
    }

    /// Decides about a piece of `len` bytes. The connection's budget counts every piece it
    /// is asked about, logged or held back by the server-wide limit, so that a connection
    /// stops asking (and costs nothing more) after its first pieces whatever the limit says.
    pub(crate) fn admit(&mut self, len: usize) -> Verdict {
        if self.spent {
            self.skip(1);
            return Verdict::Quiet;
        }
        let counted = (len as u64).min(1024);
        if self.pieces >= PIECES_PER_CONNECTION || self.bytes + counted > BYTES_PER_CONNECTION {
            self.spent = true;
            self.skip(1);
            return Verdict::ConnectionSpent;
        }
        self.pieces += 1;
        self.bytes += counted;
        if self.server.take_at(self.server.now()) {
            return Verdict::Log;
        }
        self.unlogged += 1;
        if self.server.suppress(1, true) {
            Verdict::ServerNotice
        } else {
            Verdict::Quiet
        }
    }

    /// Counts `n` pieces not logged (once the budget is spent the caller only counts).
    pub(crate) fn skip(&mut self, n: u64) {
        self.unlogged += n;
        self.server.suppress(n, false);
    }

    /// Pieces not logged on this connection.
    pub(crate) fn unlogged(&self) -> u64 {
        self.unlogged
    }
}

/// The `Received` records of one connection, within its budget: go-echo's two records per
/// piece (`Received Raw Data` and `Received Data (converted to string)`).
pub(crate) struct ReceivedLog<'a> {
    id: &'a Uuid,
    budget: ConnectionBudget<'a>,
}

impl<'a> ReceivedLog<'a> {
    /// The records of connection `id`, drawing on `budget`.
    pub(crate) fn new(id: &'a Uuid, budget: ConnectionBudget<'a>) -> ReceivedLog<'a> {
        ReceivedLog { id, budget }
    }

    /// Logs the pieces of one read, as far as the budget allows; counts the rest.
    pub(crate) fn record(&mut self, data: &[u8]) {
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
                    PIECES_PER_CONNECTION,
                    BYTES_PER_CONNECTION / 1024
                ),
                Verdict::ServerNotice => warn!(
                    target: DATA_TARGET,
                    "Received records are being held back: more than {} pieces a second \
                     server-wide; each connection's close record counts its own",
                    SERVER_RATE
                ),
                Verdict::Quiet => {}
            }
        }
        // Once the budget is spent, pieces are only counted.
        self.budget.skip(echo::count_pieces(rest));
    }

    /// Pieces not logged on this connection.
    pub(crate) fn unlogged(&self) -> u64 {
        self.budget.unlogged()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_server_limit_allows_its_burst_then_its_rate() {
        let b = ServerBudget::new(100, 10);
        let t0 = 5_000_000_000;
        let taken = (0..50).filter(|_| b.take_at(t0)).count();
        assert_eq!(taken, 10, "the burst");
        // 100 pieces a second: one more every 10 ms.
        assert!(!b.take_at(t0 + 5_000_000));
        assert!(b.take_at(t0 + 10_000_000));
        assert!(!b.take_at(t0 + 10_000_000));
        // After a long pause the burst is back, not more.
        let later = t0 + 60_000_000_000;
        assert_eq!((0..50).filter(|_| b.take_at(later)).count(), 10);
    }

    #[test]
    fn a_notice_claimed_by_another_thread_at_a_later_time_is_not_repeated() {
        let b = ServerBudget::new(1, 1);
        let ten = NOTICE_EVERY.as_nanos() as u64;
        assert!(b.notice_due_at(5 * ten));
        // Another thread claims the next notice at a later time than this thread's `now`:
        // the difference would be negative (a panic in debug builds before the fix, and a
        // duplicate notice in release).
        b.last_notice.store(7 * ten, Ordering::Relaxed);
        assert!(!b.notice_due_at(6 * ten + 1));
        assert!(b.notice_due_at(8 * ten));
    }

    #[test]
    fn a_connection_logs_its_budget_of_pieces_then_stops() {
        let server = ServerBudget::new(1_000_000, 1_000_000);
        let mut c = ConnectionBudget::new(&server);
        let logged = (0..PIECES_PER_CONNECTION)
            .filter(|_| c.admit(6) == Verdict::Log)
            .count() as u64;
        assert_eq!(logged, PIECES_PER_CONNECTION);
        assert_eq!(c.admit(6), Verdict::ConnectionSpent);
        assert!(c.is_spent());
        assert_eq!(c.admit(6), Verdict::Quiet);
        c.skip(10);
        assert_eq!(c.unlogged(), 12);
        assert_eq!(server.suppressed(), 12);
    }

    #[test]
    fn a_connection_logs_at_most_its_budget_of_bytes() {
        let server = ServerBudget::new(1_000_000, 1_000_000);
        let mut c = ConnectionBudget::new(&server);
        // Records show at most 1 KiB of a piece: a piece counts as at most 1 KiB.
        let logged = (0..200)
            .take_while(|_| c.admit(1 << 20) == Verdict::Log)
            .count() as u64;
        assert_eq!(logged, BYTES_PER_CONNECTION / 1024);
        assert!(c.is_spent());
    }

    #[test]
    fn the_server_limit_holds_back_pieces_of_fresh_connections_with_one_notice() {
        let server = ServerBudget::new(1, 5);
        let mut verdicts = Vec::new();
        for _ in 0..4 {
            let mut c = ConnectionBudget::new(&server);
            for _ in 0..3 {
                verdicts.push(c.admit(6));
            }
        }
        let logged = verdicts.iter().filter(|v| **v == Verdict::Log).count();
        let notices = verdicts
            .iter()
            .filter(|v| **v == Verdict::ServerNotice)
            .count();
        assert_eq!(logged, 5);
        assert_eq!(notices, 1, "{verdicts:?}");
        assert_eq!(server.suppressed(), 7);
    }
}
