//! The set of open connections: admission against `--max-connections`, the time limits
//! (`--idle-timeout`, `--max-duration`), and the hooks shutdown needs (wake every reader, wait
//! until all are closed, force-close the stragglers).
//!
//! The lock is taken once when a connection is admitted, once when it ends, and by the watch
//! once per tick; never per line. A worker marks progress with one relaxed store per read or
//! write. The watch (run by the thread that runs the server, between its waits) ends a
//! connection that made no progress for the idle timeout, or that has been open for the
//! maximum duration, by shutting its read side, which wakes the worker's blocked `read`. (A receive timeout on the socket would do the idle part, but arms
//! and cancels a kernel timer on every blocking read.) A connection ended for its maximum
//! duration gets `--drain-timeout` to deliver what it had received; if it is still open then
//! (a client that reads a little every few minutes keeps a write going), the watch shuts
//! both directions, which ends any blocked write.

use std::cell::Cell;
use std::collections::HashMap;
use std::net::{Shutdown, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicU8, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use log::debug;

use crate::threads;

/// Open connections, shared by the acceptors, the workers and the shutdown sequence.
#[derive(Debug)]
pub(crate) struct Registry {
    max: usize,
    inner: Mutex<Inner>,
    emptied: Condvar,
    shutting_down: AtomicBool,
}

#[derive(Debug, Default)]
struct Inner {
    open: HashMap<u64, Entry>,
    next_key: u64,
    drain_deadline: Option<Instant>,
}

/// An open connection as the registry sees it.
#[derive(Debug)]
struct Entry {
    conn: Arc<Conn>,
    /// When it was admitted.
    admitted: Instant,
    /// `conn.progress` when the watch last saw it change...
    seen: u64,
    /// ...and when that was (or when the connection was admitted).
    quiet_since: Instant,
    /// When the watch ended it for its maximum duration, and whether it has since shut both
    /// directions because the drain that follows took too long.
    ended_at: Option<(Instant, bool)>,
}

/// Why the server ended a connection (its read side, or at the drain deadline both sides).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Ended {
    /// It moved no data for `--idle-timeout`.
    Idle,
    /// It was open for `--max-duration`.
    MaxDuration,
    /// It was still open at the drain deadline and closed by force.
    Forced,
}

impl Ended {
    #[inline(always)]
    fn from_u8(v: u8) -> Option<Ended> {
        match v {
            1 => Some(Ended::Idle),
            2 => Some(Ended::MaxDuration),
            3 => Some(Ended::Forced),
            _ => None,
        }
    }
}

/// What the worker and the registry share of one connection.
#[derive(Debug)]
struct Conn {
    stream: TcpStream,
    /// The worker, once it pauses (a fault's sleep): woken when the server ends the
    /// connection or begins shutdown.
    worker: std::sync::OnceLock<std::thread::Thread>,
    /// Bumped by the worker after each read and write that moved data.
    progress: AtomicU64,
    /// Why the server ended it (0: it did not), set before the socket is shut.
    ended: AtomicU8,
}

impl Conn {
    /// Records why the connection is ended, unless it already was; true if this call did.
    fn end(&self, why: Ended) -> bool {
        let first = self
            .ended
            .compare_exchange(0, why as u8 + 1, Ordering::AcqRel, Ordering::Acquire)
            .is_ok();
        self.wake();
        first
    }

    /// Wakes the worker if it pauses.
    fn wake(&self) {
        if let Some(worker) = self.worker.get() {
            worker.unpark();
        }
    }
}

/// Proof that a connection was admitted; dropping it removes the connection from the registry.
/// The socket closes when both the ticket and the registry have let go of it.
#[derive(Debug)]
pub(crate) struct Ticket {
    registry: Arc<Registry>,
    key: u64,
    admitted: Instant,
    conn: Arc<Conn>,
    progress: Cell<u64>,
}

impl Ticket {
    /// The connection's socket.
    pub(crate) fn stream(&self) -> &TcpStream {
        &self.conn.stream
    }

    /// Records that the connection moved data (called by its worker after a read or a write;
    /// one relaxed store).
    #[inline(always)]
    pub(crate) fn made_progress(&self) {
        let n = self.progress.get().wrapping_add(1);
        self.progress.set(n);
        self.conn.progress.store(n, Ordering::Relaxed);
    }

    /// When the connection was admitted.
    pub(crate) fn accepted(&self) -> Instant {
        self.admitted
    }

    /// Why the server ended this connection, if it did.
    #[inline(always)]
    pub(crate) fn ended(&self) -> Option<Ended> {
        Ended::from_u8(self.conn.ended.load(Ordering::Acquire))
    }

    /// Sleeps for `d` (`None`: until woken), unless the server ends the connection (a time
    /// limit, the drain deadline) or begins shutdown first; true when all of `d` passed.
    pub(crate) fn pause(&self, d: Option<Duration>) -> bool {
        let _ = self.conn.worker.set(std::thread::current());
        let until = d.and_then(|d| Instant::now().checked_add(d));
        loop {
            if self.ended().is_some() || self.registry.is_shutting_down() {
                return false;
            }
            let now = Instant::now();
            match until {
                Some(until) if now >= until => return true,
                Some(until) => std::thread::park_timeout(until - now),
                None => std::thread::park(),
            }
        }
    }
}

impl Drop for Ticket {
    fn drop(&mut self) {
        let mut inner = threads::lock(&self.registry.inner);
        inner.open.remove(&self.key);
        if inner.open.is_empty() {
            self.registry.emptied.notify_all();
        }
    }
}

/// The time limits the watch enforces.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Limits {
    /// `--idle-timeout` (`None`: never).
    pub(crate) idle: Option<Duration>,
    /// `--max-duration` (`None`: never).
    pub(crate) max_duration: Option<Duration>,
    /// `--drain-timeout`: how long a connection ended for its maximum duration has to
    /// deliver its replies.
    pub(crate) drain: Duration,
}

impl Limits {
    /// How often the watch looks: a tenth of the shorter limit, between 10 ms and 1 s (`None`
    /// when there is no limit to watch). A connection is ended between its limit and its
    /// limit plus one tick.
    pub(crate) fn tick(&self) -> Option<Duration> {
        let shortest = match (self.idle, self.max_duration) {
            (Some(a), Some(b)) => a.min(b),
            (a, b) => a.or(b)?,
        };
        Some((shortest / 10).clamp(Duration::from_millis(10), Duration::from_secs(1)))
    }
}

impl Registry {
    /// A registry admitting at most `max` connections at once.
    pub(crate) fn new(max: usize) -> Arc<Registry> {
        Arc::new(Registry {
            max,
            inner: Mutex::new(Inner::default()),
            emptied: Condvar::new(),
            shutting_down: AtomicBool::new(false),
        })
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        threads::lock(&self.inner)
    }

    /// Admits `stream` if fewer than `max` connections are open; gives it back otherwise.
    /// A connection admitted during shutdown has its read side shut at once, so that whatever
    /// it already sent is echoed and it is closed without waiting for more.
    pub(crate) fn admit(self: &Arc<Self>, stream: TcpStream) -> Result<Ticket, TcpStream> {
        let mut inner = self.lock();
        if inner.open.len() >= self.max {
            return Err(stream);
        }
        if self.is_shutting_down() {
            let _ = stream.shutdown(Shutdown::Read);
        }
        let key = inner.next_key;
        inner.next_key += 1;
        let conn = Arc::new(Conn {
            stream,
            worker: std::sync::OnceLock::new(),
            progress: AtomicU64::new(0),
            ended: AtomicU8::new(0),
        });
        let now = Instant::now();
        let entry = Entry {
            conn: Arc::clone(&conn),
            admitted: now,
            seen: 0,
            quiet_since: now,
            ended_at: None,
        };
        inner.open.insert(key, entry);
        Ok(Ticket {
            registry: Arc::clone(self),
            key,
            admitted: now,
            conn,
            progress: Cell::new(0),
        })
    }

    /// One tick of the watch: ends (shuts the read side of) every connection that has made no
    /// progress for the idle timeout, or has been open for the maximum duration, as of `now`,
    /// and shuts both directions of one still open the drain timeout after its maximum
    /// duration; returns how many it ended. A connection is never ended early: its quiet time
    /// is counted from the tick that last saw it move.
    pub(crate) fn end_overdue(&self, limits: Limits, now: Instant) -> usize {
        let mut inner = self.lock();
        let mut ended = 0;
        for entry in inner.open.values_mut() {
            if let Some((at, false)) = entry.ended_at {
                if now.saturating_duration_since(at) >= limits.drain {
                    let _ = entry.conn.stream.shutdown(Shutdown::Both);
                    entry.ended_at = Some((at, true));
                }
                continue;
            }
            let progress = entry.conn.progress.load(Ordering::Relaxed);
            if progress != entry.seen {
                entry.seen = progress;
                entry.quiet_since = now;
            }
            let over = |limit: Option<Duration>, since: Instant| {
                limit.is_some_and(|l| now.saturating_duration_since(since) >= l)
            };
            let why = if over(limits.max_duration, entry.admitted) {
                Ended::MaxDuration
            } else if over(limits.idle, entry.quiet_since) {
                Ended::Idle
            } else {
                continue;
            };
            if entry.conn.end(why) {
                let _ = entry.conn.stream.shutdown(Shutdown::Read);
                if why == Ended::MaxDuration {
                    entry.ended_at = Some((now, false));
                }
                ended += 1;
            }
        }
        ended
    }

    /// Connections open now.
    pub(crate) fn len(&self) -> usize {
        self.lock().open.len()
    }

    /// The configured maximum.
    pub(crate) fn max(&self) -> usize {
        self.max
    }

    /// Whether shutdown has begun (a cheap check, made once per read by the workers).
    #[inline(always)]
    pub(crate) fn is_shutting_down(&self) -> bool {
        self.shutting_down.load(Ordering::Acquire)
    }

    /// When shutdown gives up on open connections (`None` before shutdown).
    pub(crate) fn drain_deadline(&self) -> Option<Instant> {
        self.lock().drain_deadline
    }

    /// Begins shutdown: every open connection's read side is shut, which wakes a worker
    /// blocked in `read`. What the client already sent can still be read and echoed.
    pub(crate) fn begin_shutdown(&self, deadline: Instant) {
        let mut inner = self.lock();
        inner.drain_deadline = Some(deadline);
        self.shutting_down.store(true, Ordering::Release);
        for entry in inner.open.values() {
            let _ = entry.conn.stream.shutdown(Shutdown::Read);
            entry.conn.wake();
        }
    }

    /// Waits until no connection is open or `deadline` passes; returns how many remain open.
    pub(crate) fn wait_until_empty(&self, deadline: Instant) -> usize {
        let mut inner = self.lock();
        loop {
            let now = Instant::now();
            if inner.open.is_empty() || now >= deadline {
                return inner.open.len();
            }
            inner = match self.emptied.wait_timeout(inner, deadline - now) {
                Ok((guard, _)) => guard,
                Err(poisoned) => poisoned.into_inner().0,
            };
        }
    }

    /// Shuts both directions of every open connection, ending any blocked read or write; each
    /// is marked [`Ended::Forced`] first, so that its worker reports the shutdown, not a reset.
    pub(crate) fn force_close(&self) -> usize {
        let inner = self.lock();
        for entry in inner.open.values() {
            entry.conn.end(Ended::Forced);
            let _ = entry.conn.stream.shutdown(Shutdown::Both);
        }
        inner.open.len()
    }
}

/// The watch over the time limits: ends the connections over them once per tick. It has no
/// thread of its own; the thread that runs the server calls [`Watch::run_due`] between its
/// waits (see `server::Running::supervise`).
pub(crate) struct Watch {
    registry: Arc<Registry>,
    limits: Limits,
    /// The tick and when it next falls due; `None` when there is no limit to watch.
    next: Option<(Duration, Instant)>,
}

impl Watch {
    /// A watch over `registry`, due one tick from now (never if `limits` has nothing to
    /// watch).
    pub(crate) fn new(registry: &Arc<Registry>, limits: Limits) -> Watch {
        Watch {
            registry: Arc::clone(registry),
            next: limits.tick().map(|tick| (tick, Instant::now() + tick)),
            limits,
        }
    }

    /// When the next look is due (`None`: never).
    pub(crate) fn due(&self) -> Option<Instant> {
        self.next.map(|(_, at)| at)
    }

    /// Ends the connections over a limit if a look is due at `now`, and schedules the next.
    pub(crate) fn run_due(&mut self, now: Instant) {
        let Some((tick, at)) = self.next else { return };
        if now < at {
            return;
        }
        let ended = self.registry.end_overdue(self.limits, now);
        if ended > 0 {
            debug!("time limits: ended {ended} connections");
        }
        self.next = Some((tick, now + tick));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;
    use std::net::TcpListener;

    /// An admitted connection (the server's end) and the client's end.
    fn admitted(registry: &Arc<Registry>) -> (Ticket, TcpStream) {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
        let client = TcpStream::connect(listener.local_addr().expect("addr")).expect("connect");
        let (server, _) = listener.accept().expect("accept");
        let ticket = registry.admit(server).expect("admitted");
        (ticket, client)
    }

    const IDLE: Limits = Limits {
        idle: Some(Duration::from_secs(10)),
        max_duration: None,
        drain: Duration::from_secs(5),
    };

    #[test]
    fn a_quiet_connection_is_ended_after_the_timeout_and_not_before() {
        let registry = Registry::new(4);
        let (ticket, _client) = admitted(&registry);
        let t = Duration::from_secs(10);
        let now = Instant::now();
        assert_eq!(registry.end_overdue(IDLE, now + t / 2), 0);
        assert_eq!(ticket.ended(), None);
        assert_eq!(registry.end_overdue(IDLE, now + t * 2), 1);
        assert_eq!(ticket.ended(), Some(Ended::Idle));
        // Its read side is shut: the worker's blocked read returns end-of-file.
        let mut buf = [0u8; 8];
        let mut stream = ticket.stream();
        assert_eq!(stream.read(&mut buf).expect("read"), 0);
        // Ended once only.
        assert_eq!(registry.end_overdue(IDLE, now + t * 3), 0);
    }

    #[test]
    fn the_watch_looks_once_a_tick_is_due_and_schedules_the_next() {
        let registry = Registry::new(4);
        let (ticket, _client) = admitted(&registry);
        let mut watch = Watch::new(&registry, IDLE);
        // IDLE's tick: a tenth of 10 s, capped at 1 s.
        let tick = Duration::from_secs(1);
        let due = watch.due().expect("a limit to watch");
        // Not due yet: no look, and the schedule stands.
        watch.run_due(due - Duration::from_millis(1));
        assert_eq!(ticket.ended(), None);
        assert_eq!(watch.due(), Some(due));
        // Due, and long past the timeout: the connection is ended; the next look is a tick on.
        let late = due + Duration::from_secs(20);
        watch.run_due(late);
        assert_eq!(ticket.ended(), Some(Ended::Idle));
        assert_eq!(watch.due(), Some(late + tick));
        // Nothing to watch, never due.
        let none = Limits {
            idle: None,
            max_duration: None,
            ..IDLE
        };
        assert_eq!(Watch::new(&registry, none).due(), None);
    }

    #[test]
    fn progress_restarts_the_quiet_time_from_the_tick_that_saw_it() {
        let registry = Registry::new(4);
        let (ticket, _client) = admitted(&registry);
        let (_other, _other_client) = admitted(&registry);
        let t = Duration::from_secs(10);
        let now = Instant::now();
        ticket.made_progress();
        // The other connection was quiet all along; this one moved.
        assert_eq!(registry.end_overdue(IDLE, now + t * 2), 1);
        assert_eq!(ticket.ended(), None);
        assert_eq!(registry.end_overdue(IDLE, now + t * 2 + t / 2), 0);
        assert_eq!(registry.end_overdue(IDLE, now + t * 3), 1);
        assert_eq!(ticket.ended(), Some(Ended::Idle));
    }

    #[test]
    fn a_busy_connection_is_ended_at_the_maximum_duration() {
        let registry = Registry::new(4);
        let (ticket, _client) = admitted(&registry);
        let limits = Limits {
            idle: Some(Duration::from_secs(10)),
            max_duration: Some(Duration::from_secs(15)),
            drain: Duration::from_secs(5),
        };
        let now = Instant::now();
        for s in [5, 10, 14] {
            ticket.made_progress();
            assert_eq!(
                registry.end_overdue(limits, now + Duration::from_secs(s)),
                0
            );
        }
        ticket.made_progress();
        assert_eq!(
            registry.end_overdue(limits, now + Duration::from_secs(16)),
            1
        );
        assert_eq!(ticket.ended(), Some(Ended::MaxDuration));
    }

    #[test]
    fn a_connection_still_open_a_drain_after_its_maximum_duration_is_shut_both_ways() {
        let registry = Registry::new(4);
        let (ticket, mut client) = admitted(&registry);
        let limits = Limits {
            idle: None,
            max_duration: Some(Duration::from_secs(2)),
            drain: Duration::from_secs(1),
        };
        let now = Instant::now();
        assert_eq!(
            registry.end_overdue(limits, now + Duration::from_secs(2)),
            1
        );
        // The write side is still open for the drain: the server can still send.
        let mut stream = ticket.stream();
        std::io::Write::write_all(&mut stream, b"x").expect("write during the drain");
        let mut b = [0u8; 1];
        assert_eq!(client.read(&mut b).unwrap(), 1);
        registry.end_overdue(limits, now + Duration::from_millis(2500));
        std::io::Write::write_all(&mut stream, b"y").expect("still within the drain");
        registry.end_overdue(limits, now + Duration::from_secs(3));
        // Past the drain: both directions are shut, so a blocked write would fail now.
        assert!(std::io::Write::write_all(&mut stream, b"z").is_err());
    }

    #[test]
    fn a_forced_close_is_told_apart_and_not_overwritten() {
        let registry = Registry::new(4);
        let (ticket, _client) = admitted(&registry);
        assert_eq!(registry.force_close(), 1);
        assert_eq!(ticket.ended(), Some(Ended::Forced));
        assert_eq!(
            registry.end_overdue(IDLE, Instant::now() + IDLE.idle.unwrap() * 2),
            0
        );
        assert_eq!(ticket.ended(), Some(Ended::Forced));
    }

    #[test]
    fn the_tick_is_a_tenth_of_the_shorter_limit_within_bounds() {
        let tick = |idle: Option<u64>, max: Option<u64>| {
            Limits {
                idle: idle.map(Duration::from_millis),
                max_duration: max.map(Duration::from_millis),
                drain: Duration::from_secs(5),
            }
            .tick()
        };
        assert_eq!(tick(Some(300_000), None), Some(Duration::from_secs(1)));
        assert_eq!(tick(Some(2_000), None), Some(Duration::from_millis(200)));
        assert_eq!(tick(Some(50), None), Some(Duration::from_millis(10)));
        assert_eq!(
            tick(Some(300_000), Some(2_000)),
            Some(Duration::from_millis(200))
        );
        assert_eq!(tick(None, Some(15_000)), Some(Duration::from_secs(1)));
        assert_eq!(tick(None, None), None);
    }
}
