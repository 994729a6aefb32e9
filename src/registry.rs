//! The set of open connections: admission against `--max-connections`, the idle timeout, and
//! the hooks shutdown needs (wake every reader, wait until all are closed, force-close the
//! stragglers).
//!
//! The lock is taken once when a connection is admitted, once when it ends, and by the idle
//! watch once per tick; never per line. A worker marks progress with one relaxed store per
//! read or write, and the idle watch ends a connection that made none for the idle timeout by
//! shutting its read side, which wakes the worker's blocked `read`. (A receive timeout on the
//! socket would do the same, but arms and cancels a kernel timer on every blocking read.)

use std::cell::Cell;
use std::collections::HashMap;
use std::net::{Shutdown, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, RecvTimeoutError};
use log::debug;

/// Open connections, shared by the acceptors, the workers and the shutdown sequence.
#[derive(Debug)]
pub struct Registry {
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
    /// `conn.progress` when the idle watch last saw it change...
    seen: u64,
    /// ...and when that was (or when the connection was admitted).
    quiet_since: Instant,
}

/// What the worker and the registry share of one connection.
#[derive(Debug)]
struct Conn {
    stream: TcpStream,
    /// Bumped by the worker after each read and write that moved data.
    progress: AtomicU64,
    /// Set by the idle watch before it shuts the read side.
    timed_out: AtomicBool,
}

/// Proof that a connection was admitted; dropping it removes the connection from the registry.
/// The socket closes when both the ticket and the registry have let go of it.
#[derive(Debug)]
pub struct Ticket {
    registry: Arc<Registry>,
    key: u64,
    conn: Arc<Conn>,
    progress: Cell<u64>,
}

impl Ticket {
    /// The connection's socket.
    pub fn stream(&self) -> &TcpStream {
        &self.conn.stream
    }

    /// Records that the connection moved data (called by its worker after a read or a write;
    /// one relaxed store).
    pub fn made_progress(&self) {
        let n = self.progress.get().wrapping_add(1);
        self.progress.set(n);
        self.conn.progress.store(n, Ordering::Relaxed);
    }

    /// Whether the idle watch ended this connection (its read side is shut).
    pub fn timed_out(&self) -> bool {
        self.conn.timed_out.load(Ordering::Acquire)
    }
}

impl Drop for Ticket {
    fn drop(&mut self) {
        let mut inner = self.registry.lock();
        inner.open.remove(&self.key);
        if inner.open.is_empty() {
            self.registry.emptied.notify_all();
        }
    }
}

impl Registry {
    /// A registry admitting at most `max` connections at once.
    pub fn new(max: usize) -> Arc<Registry> {
        Arc::new(Registry {
            max,
            inner: Mutex::new(Inner::default()),
            emptied: Condvar::new(),
            shutting_down: AtomicBool::new(false),
        })
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        // A panic while holding this lock leaves the map consistent; keep serving.
        self.inner
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Admits `stream` if fewer than `max` connections are open; gives it back otherwise.
    /// A connection admitted during shutdown has its read side shut at once, so that whatever
    /// it already sent is echoed and it is closed without waiting for more.
    pub fn admit(self: &Arc<Self>, stream: TcpStream) -> Result<Ticket, TcpStream> {
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
            progress: AtomicU64::new(0),
            timed_out: AtomicBool::new(false),
        });
        let entry = Entry {
            conn: Arc::clone(&conn),
            seen: 0,
            quiet_since: Instant::now(),
        };
        inner.open.insert(key, entry);
        Ok(Ticket {
            registry: Arc::clone(self),
            key,
            conn,
            progress: Cell::new(0),
        })
    }

    /// One tick of the idle watch: ends (shuts the read side of) every connection that has
    /// made no progress for `timeout` as of `now`; returns how many it ended. A connection is
    /// never ended early: its quiet time is counted from the tick that last saw it move.
    pub fn end_idle(&self, timeout: Duration, now: Instant) -> usize {
        let mut inner = self.lock();
        let mut ended = 0;
        for entry in inner.open.values_mut() {
            let progress = entry.conn.progress.load(Ordering::Relaxed);
            if progress != entry.seen {
                entry.seen = progress;
                entry.quiet_since = now;
            } else if now.saturating_duration_since(entry.quiet_since) >= timeout
                && !entry.conn.timed_out.swap(true, Ordering::AcqRel)
            {
                let _ = entry.conn.stream.shutdown(Shutdown::Read);
                ended += 1;
            }
        }
        ended
    }

    /// Connections open now.
    pub fn len(&self) -> usize {
        self.lock().open.len()
    }

    /// Whether no connection is open.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The configured maximum.
    pub fn max(&self) -> usize {
        self.max
    }

    /// Whether shutdown has begun (a cheap check, made once per read by the workers).
    pub fn is_shutting_down(&self) -> bool {
        self.shutting_down.load(Ordering::Acquire)
    }

    /// When shutdown gives up on open connections (`None` before shutdown).
    pub fn drain_deadline(&self) -> Option<Instant> {
        self.lock().drain_deadline
    }

    /// Begins shutdown: every open connection's read side is shut, which wakes a worker
    /// blocked in `read`. What the client already sent can still be read and echoed.
    pub fn begin_shutdown(&self, deadline: Instant) {
        let mut inner = self.lock();
        inner.drain_deadline = Some(deadline);
        self.shutting_down.store(true, Ordering::Release);
        for entry in inner.open.values() {
            let _ = entry.conn.stream.shutdown(Shutdown::Read);
        }
    }

    /// Waits until no connection is open or `deadline` passes; returns how many remain open.
    pub fn wait_until_empty(&self, deadline: Instant) -> usize {
        let mut inner = self.lock();
        loop {
            let now = Instant::now();
            if inner.open.is_empty() || now >= deadline {
                return inner.open.len();
            }
            inner = self
                .emptied
                .wait_timeout(inner, deadline - now)
                .unwrap_or_else(|poisoned| poisoned.into_inner())
                .0;
        }
    }

    /// Shuts both directions of every open connection, ending any blocked read or write.
    pub fn force_close(&self) -> usize {
        let inner = self.lock();
        for entry in inner.open.values() {
            let _ = entry.conn.stream.shutdown(Shutdown::Both);
        }
        inner.open.len()
    }
}

/// How often the idle watch looks: a tenth of the timeout, between 10 ms and 1 s. A connection
/// is ended between `timeout` and `timeout` plus one tick after its last progress.
pub fn idle_tick(timeout: Duration) -> Duration {
    (timeout / 10).clamp(Duration::from_millis(10), Duration::from_secs(1))
}

/// The idle watch (its own thread): ends connections idle for `timeout`, once per tick, until
/// `stop` receives or is dropped.
pub fn watch_idle(registry: &Registry, timeout: Duration, stop: &Receiver<()>) {
    let tick = idle_tick(timeout);
    while let Err(RecvTimeoutError::Timeout) = stop.recv_timeout(tick) {
        let ended = registry.end_idle(timeout, Instant::now());
        if ended > 0 {
            debug!("idle timeout: ended {ended} connections");
        }
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

    #[test]
    fn a_quiet_connection_is_ended_after_the_timeout_and_not_before() {
        let registry = Registry::new(4);
        let (ticket, _client) = admitted(&registry);
        let t = Duration::from_secs(10);
        let now = Instant::now();
        assert_eq!(registry.end_idle(t, now + t / 2), 0);
        assert!(!ticket.timed_out());
        assert_eq!(registry.end_idle(t, now + t * 2), 1);
        assert!(ticket.timed_out());
        // Its read side is shut: the worker's blocked read returns end-of-file.
        let mut buf = [0u8; 8];
        let mut stream = ticket.stream();
        assert_eq!(stream.read(&mut buf).expect("read"), 0);
        // Ended once only.
        assert_eq!(registry.end_idle(t, now + t * 3), 0);
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
        assert_eq!(registry.end_idle(t, now + t * 2), 1);
        assert!(!ticket.timed_out());
        assert_eq!(registry.end_idle(t, now + t * 2 + t / 2), 0);
        assert_eq!(registry.end_idle(t, now + t * 3), 1);
        assert!(ticket.timed_out());
    }

    #[test]
    fn the_tick_is_a_tenth_of_the_timeout_within_bounds() {
        assert_eq!(idle_tick(Duration::from_secs(300)), Duration::from_secs(1));
        assert_eq!(
            idle_tick(Duration::from_secs(2)),
            Duration::from_millis(200)
        );
        assert_eq!(
            idle_tick(Duration::from_millis(50)),
            Duration::from_millis(10)
        );
    }
}
