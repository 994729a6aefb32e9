//! Threads and locks, the way every part of the server uses them: named threads with small
//! stacks, background threads stopped and joined when their handle drops, and locks that
//! survive a panic elsewhere.

use std::sync::{Mutex, MutexGuard, RwLock, RwLockReadGuard, RwLockWriteGuard};
use std::thread::{self, JoinHandle};
use std::time::Duration;

use crossbeam_channel::{Receiver, RecvTimeoutError, Sender};

use crate::error::Error;

/// Stack size of every thread the server starts: the echo path needs little, and each
/// connection may hold a worker.
pub(crate) const STACK_SIZE: usize = 256 * 1024;

/// Starts a thread named `name` with a [`STACK_SIZE`] stack.
pub(crate) fn spawn<T: Send + 'static>(
    name: String,
    f: impl FnOnce() -> T + Send + 'static,
) -> Result<JoinHandle<T>, Error> {
    thread::Builder::new()
        .name(name.clone())
        .stack_size(STACK_SIZE)
        .spawn(f)
        .map_err(|source| Error::Thread { name, source })
}

/// Locks `m`, also after a panic in another holder: every lock here guards data that a
/// panic leaves consistent (maps, counters), and one failed connection must not stop the
/// server.
pub(crate) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// Reads `l`, also after a panic in a writer (see [`lock`]).
#[cfg_attr(not(feature = "tls"), allow(dead_code))]
pub(crate) fn read<T>(l: &RwLock<T>) -> RwLockReadGuard<'_, T> {
    l.read().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// Writes `l`, also after a panic in another holder (see [`lock`]).
#[cfg_attr(not(feature = "tls"), allow(dead_code))]
pub(crate) fn write<T>(l: &RwLock<T>) -> RwLockWriteGuard<'_, T> {
    l.write().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// What a background thread sees of its stop request.
pub(crate) struct Stop(Receiver<()>);

impl Stop {
    /// Waits up to `d`; true once the thread is asked to stop.
    pub(crate) fn wait(&self, d: Duration) -> bool {
        !matches!(self.0.recv_timeout(d), Err(RecvTimeoutError::Timeout))
    }

    /// True once the thread is asked to stop (does not wait).
    pub(crate) fn requested(&self) -> bool {
        self.wait(Duration::ZERO)
    }
}

/// A background thread; dropping this handle asks it to stop (its [`Stop`] disconnects) and
/// joins it.
pub(crate) struct Background {
    stop: Option<Sender<()>>,
    join: Option<JoinHandle<()>>,
}

impl Background {
    /// Starts `f` on a thread named `name`; `f` returns when its [`Stop`] says so.
    pub(crate) fn start(
        name: &str,
        f: impl FnOnce(Stop) + Send + 'static,
    ) -> Result<Background, Error> {
        let (stop, stopped) = crossbeam_channel::bounded::<()>(0);
        let join = spawn(name.to_string(), move || f(Stop(stopped)))?;
        Ok(Background {
            stop: Some(stop),
            join: Some(join),
        })
    }
}

impl Background {
    /// Asks the thread to stop without waiting for it; dropping the handle then joins it.
    pub(crate) fn request_stop(&mut self) {
        drop(self.stop.take());
    }
}

impl Drop for Background {
    fn drop(&mut self) {
        drop(self.stop.take());
        if let Some(join) = self.join.take() {
            let _ = join.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;

    #[test]
    fn a_background_thread_stops_and_is_joined_when_dropped() {
        let rounds = Arc::new(AtomicUsize::new(0));
        let seen = Arc::clone(&rounds);
        let bg = Background::start("t-bg", move |stop| {
            while !stop.wait(Duration::from_millis(1)) {
                seen.fetch_add(1, Ordering::SeqCst);
            }
            seen.store(usize::MAX, Ordering::SeqCst);
        })
        .unwrap();
        drop(bg);
        // Joined: the thread's last store happened before drop returned.
        assert_eq!(rounds.load(Ordering::SeqCst), usize::MAX);
    }

    #[test]
    fn a_poisoned_lock_still_opens() {
        let m = Arc::new(Mutex::new(5));
        let m2 = Arc::clone(&m);
        let _ = thread::spawn(move || {
            let _g = m2.lock().unwrap();
            panic!("poison it");
        })
        .join();
        assert!(m.is_poisoned());
        assert_eq!(*lock(&m), 5);
    }
}
