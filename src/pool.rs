//! A bounded pool of named worker threads fed by a `crossbeam-channel`.
//!
//! * Threads are created as load needs them, never more than `max_threads`, and a thread that
//!   has been idle for `idle_exit` ends, so a past flood does not keep its threads forever.
//! * [`Pool::execute`] never blocks: it hands the job to an idle worker, starts a new one, or
//!   queues the job for a worker that is about to finish.
//! * Dropping the pool drops the only `Sender`: workers finish the queued jobs, see the channel
//!   disconnected and end. That is the pool's whole shutdown protocol.
//! * A panicking job is caught; its worker lives on.

use std::io;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use crossbeam_channel::{Receiver, RecvTimeoutError, Sender};
use log::warn;

use crate::error::Error;
use crate::threads;

/// A pool running `handler` on each job.
pub(crate) struct Pool<J: Send + 'static> {
    tx: Sender<J>,
    shared: Arc<Inner<J>>,
}

struct Inner<J> {
    rx: Receiver<J>,
    state: Mutex<State>,
    handler: Box<dyn Fn(J) + Send + Sync>,
    max_threads: usize,
    idle_exit: Duration,
    name: String,
}

#[derive(Debug, Default)]
struct State {
    /// Worker threads alive.
    threads: usize,
    /// Workers waiting for a job minus jobs sent but not yet taken. Negative when jobs were
    /// queued for workers that are about to finish their current job.
    available: isize,
    /// Threads ever started (for names).
    started: usize,
}

impl<J: Send + 'static> Pool<J> {
    /// A pool of at most `max_threads` threads named `{name}-{n}`, each ending after `idle_exit`
    /// without work.
    pub(crate) fn new(
        name: &str,
        max_threads: usize,
        idle_exit: Duration,
        handler: impl Fn(J) + Send + Sync + 'static,
    ) -> Pool<J> {
        let max_threads = max_threads.max(1);
        // A list of blocks that grows with the jobs queued, bounded in `execute`: a channel
        // of `max_threads` slots would be allocated and written whole at start (the server's
        // 1,024 slots: 20 pages of its idle memory, and their page faults in its start-up).
        let (tx, rx) = crossbeam_channel::unbounded();
        Pool {
            tx,
            shared: Arc::new(Inner {
                rx,
                state: Mutex::new(State::default()),
                handler: Box::new(handler),
                max_threads,
                idle_exit,
                name: name.to_string(),
            }),
        }
    }

    /// Runs `job` on a worker without blocking. Gives the job back, with the reason, when no
    /// worker can take it: no thread could be started and none is idle. Callers keep at most
    /// `max_threads` jobs outstanding (the server's registry does), so the queue, bounded
    /// by that number, never fills; if it did, the job would be given back too.
    pub(crate) fn execute(&self, job: J) -> Result<(), (J, io::Error)> {
        let mut state = self.shared.lock();
        // Only `execute` sends, under the lock: the queue cannot grow between this check and
        // the send.
        if self.tx.len() >= self.shared.max_threads {
            return Err((job, io::Error::other("the job queue is full")));
        }
        if state.available <= 0 && state.threads < self.shared.max_threads {
            match self.spawn(&mut state) {
                // The new worker takes this job: it is not counted as available.
                Ok(()) => state.available += 1,
                Err(e) => return Err((job, e)),
            }
        }
        match self.tx.send(job) {
            Ok(()) => {
                state.available -= 1;
                Ok(())
            }
            // Unreachable: the pool holds a receiver as long as it holds the sender.
            Err(e) => Err((e.into_inner(), io::Error::other("the job queue is closed"))),
        }
    }

    /// Starts a worker to wait for the first job, so that the first job does not wait for a
    /// thread to be created; like any worker, it ends after `idle_exit` without work. Does
    /// nothing if a worker is already waiting.
    pub(crate) fn start_worker(&self) -> io::Result<()> {
        let mut state = self.shared.lock();
        if state.available <= 0 && state.threads < self.shared.max_threads {
            self.spawn(&mut state)?;
            state.available += 1;
        }
        Ok(())
    }

    /// Worker threads alive now.
    #[cfg(test)]
    fn threads(&self) -> usize {
        self.shared.lock().threads
    }

    /// A gauge of the worker threads alive, for the metrics. It does not keep the pool open.
    pub(crate) fn gauge(&self) -> Gauge<J> {
        Gauge(Arc::clone(&self.shared))
    }

    fn spawn(&self, state: &mut State) -> io::Result<()> {
        let shared = Arc::clone(&self.shared);
        let name = format!("{}-{}", self.shared.name, state.started);
        threads::spawn(name, move || shared.work()).map_err(|e| match e {
            Error::Thread { source, .. } => source,
            other => io::Error::other(other.to_string()),
        })?;
        state.threads += 1;
        state.started += 1;
        Ok(())
    }
}

/// Reads how many worker threads a pool has alive; see [`Pool::gauge`].
pub(crate) struct Gauge<J>(Arc<Inner<J>>);

impl<J> Gauge<J> {
    /// Worker threads alive now.
    pub(crate) fn threads(&self) -> usize {
        self.0.lock().threads
    }
}

impl<J> Inner<J> {
    fn lock(&self) -> MutexGuard<'_, State> {
        threads::lock(&self.state)
    }

    /// The next job, or why there is none. Never inlined: the channel's wait needs a large
    /// frame, which must not stay below the connection that the worker then serves (an idle
    /// connection pays for every stack page its thread has touched).
    #[inline(never)]
    fn next_job(&self) -> Result<J, RecvTimeoutError> {
        self.rx.recv_timeout(self.idle_exit)
    }

    fn work(&self) {
        loop {
            match self.next_job() {
                Ok(job) => {
                    if catch_unwind(AssertUnwindSafe(|| (self.handler)(job))).is_err() {
                        warn!("a worker caught a panic; its connection was closed");
                    }
                    self.lock().available += 1;
                }
                Err(RecvTimeoutError::Timeout) => {
                    let mut state = self.lock();
                    // Leave only if no job is on its way to a waiting worker.
                    if state.available > 0 {
                        state.available -= 1;
                        state.threads -= 1;
                        return;
                    }
                }
                Err(RecvTimeoutError::Disconnected) => {
                    let mut state = self.lock();
                    state.available -= 1;
                    state.threads -= 1;
                    return;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::mpsc;
    use std::thread;
    use std::time::Instant;

    fn wait_for(what: &str, mut cond: impl FnMut() -> bool) {
        let deadline = Instant::now() + Duration::from_secs(10);
        while !cond() {
            assert!(Instant::now() < deadline, "timed out waiting for {what}");
            thread::sleep(Duration::from_millis(2));
        }
    }

    #[test]
    fn runs_jobs_concurrently_up_to_the_bound() {
        let (done_tx, done_rx) = mpsc::channel::<u32>();
        let (gate_tx, gate_rx) = crossbeam_channel::unbounded::<()>();
        let pool = Pool::new("t", 3, Duration::from_secs(60), move |n: u32| {
            let _ = gate_rx.recv();
            let _ = done_tx.send(n);
        });
        for n in 0..3 {
            assert!(pool.execute(n).is_ok());
        }
        assert_eq!(pool.threads(), 3, "one thread per concurrent job");
        gate_tx.send(()).unwrap();
        let first = done_rx.recv_timeout(Duration::from_secs(10)).unwrap();
        // A fourth job goes to the freed worker (or waits for it): no fourth thread.
        assert!(pool.execute(3).is_ok());
        assert_eq!(pool.threads(), 3);
        for _ in 0..3 {
            gate_tx.send(()).unwrap();
        }
        let mut got: Vec<u32> = (0..3)
            .map(|_| done_rx.recv_timeout(Duration::from_secs(10)).unwrap())
            .collect();
        got.push(first);
        got.sort();
        assert_eq!(got, vec![0, 1, 2, 3]);
    }

    #[test]
    fn reuses_idle_threads() {
        let (done_tx, done_rx) = mpsc::channel::<()>();
        let pool = Pool::new("t", 8, Duration::from_secs(60), move |_: ()| {
            let _ = done_tx.send(());
        });
        for _ in 0..50 {
            pool.execute(()).unwrap();
            done_rx.recv_timeout(Duration::from_secs(10)).unwrap();
            // Wait until the worker is back in the pool before the next job.
            wait_for("worker idle", || pool.shared.lock().available > 0);
        }
        assert_eq!(pool.threads(), 1);
    }

    #[test]
    fn idle_threads_exit_and_the_pool_still_works() {
        let (done_tx, done_rx) = mpsc::channel::<()>();
        let pool = Pool::new("t", 4, Duration::from_millis(20), move |_: ()| {
            let _ = done_tx.send(());
        });
        pool.execute(()).unwrap();
        done_rx.recv_timeout(Duration::from_secs(10)).unwrap();
        wait_for("idle worker exit", || pool.threads() == 0);
        pool.execute(()).unwrap();
        done_rx.recv_timeout(Duration::from_secs(10)).unwrap();
    }

    #[test]
    fn a_panicking_job_does_not_kill_its_worker() {
        let (done_tx, done_rx) = mpsc::channel::<bool>();
        let pool = Pool::new("t", 1, Duration::from_secs(60), move |fail: bool| {
            if fail {
                panic!("job failed on purpose");
            }
            let _ = done_tx.send(true);
        });
        pool.execute(true).unwrap();
        wait_for("worker back after the panic", || {
            pool.shared.lock().available > 0
        });
        pool.execute(false).unwrap();
        assert!(done_rx.recv_timeout(Duration::from_secs(10)).unwrap());
        assert_eq!(pool.threads(), 1);
    }

    #[test]
    fn dropping_the_pool_ends_workers_after_queued_jobs() {
        let (done_tx, done_rx) = mpsc::channel::<u32>();
        let (gate_tx, gate_rx) = crossbeam_channel::unbounded::<()>();
        let pool = Pool::new("t", 5, Duration::from_secs(60), move |n: u32| {
            let _ = gate_rx.recv();
            let _ = done_tx.send(n);
        });
        for n in 0..5 {
            pool.execute(n).unwrap();
        }
        let shared = Arc::clone(&pool.shared);
        drop(pool);
        for _ in 0..5 {
            gate_tx.send(()).unwrap();
        }
        let mut got: Vec<u32> = (0..5)
            .map(|_| done_rx.recv_timeout(Duration::from_secs(10)).unwrap())
            .collect();
        got.sort();
        assert_eq!(got, vec![0, 1, 2, 3, 4]);
        wait_for("workers to end", || shared.lock().threads == 0);
    }
}
