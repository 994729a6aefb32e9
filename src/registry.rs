//! The set of open connections: admission against `--max-connections`, and the hooks shutdown
//! needs (wake every reader, wait until all are closed, force-close the stragglers).
//!
//! The lock is taken once when a connection is admitted and once when it ends, never per line.

use std::collections::HashMap;
use std::net::{Shutdown, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::Instant;

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
    open: HashMap<u64, Arc<TcpStream>>,
    next_key: u64,
    drain_deadline: Option<Instant>,
}

/// Proof that a connection was admitted; dropping it removes the connection from the registry.
/// The socket closes when both the ticket and the registry have let go of it.
#[derive(Debug)]
pub struct Ticket {
    registry: Arc<Registry>,
    key: u64,
    stream: Arc<TcpStream>,
}

impl Ticket {
    /// The connection's socket.
    pub fn stream(&self) -> &TcpStream {
        &self.stream
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
        let stream = Arc::new(stream);
        inner.open.insert(key, Arc::clone(&stream));
        Ok(Ticket {
            registry: Arc::clone(self),
            key,
            stream,
        })
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
        for stream in inner.open.values() {
            let _ = stream.shutdown(Shutdown::Read);
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
        for stream in inner.open.values() {
            let _ = stream.shutdown(Shutdown::Both);
        }
        inner.open.len()
    }
}
