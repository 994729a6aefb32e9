//! Shutdown requests: a handle anything can trigger, and the SIGINT/SIGTERM handler.
//!
//! The first signal asks the server to drain and stop; a second one exits at once. `ctrlc` is
//! built with its `termination` feature, so SIGTERM is caught: as PID 1 in a container an
//! unhandled SIGTERM is ignored and the pod waits its whole grace period for SIGKILL.

use std::sync::atomic::{AtomicUsize, Ordering};

use crossbeam_channel::{Receiver, Sender};

use crate::error::Error;

/// Exit code of a second signal's immediate exit.
pub(crate) const FORCED_EXIT_CODE: i32 = 130;

/// Asks a running server to shut down. Cheap to clone; triggering twice is harmless.
#[derive(Debug, Clone)]
pub struct ShutdownHandle {
    tx: Sender<()>,
}

/// The server's end of the shutdown request.
#[derive(Debug)]
pub(crate) struct ShutdownSignal {
    rx: Receiver<()>,
}

/// A connected handle and signal.
pub(crate) fn channel() -> (ShutdownHandle, ShutdownSignal) {
    let (tx, rx) = crossbeam_channel::bounded(1);
    (ShutdownHandle { tx }, ShutdownSignal { rx })
}

impl ShutdownHandle {
    /// Requests shutdown (does not wait for it).
    pub fn shutdown(&self) {
        let _ = self.tx.try_send(());
    }
}

impl ShutdownSignal {
    /// The channel a shutdown request arrives on, to wait on with `select!`: a message is a
    /// request; a disconnection means every handle is gone.
    pub(crate) fn receiver(&self) -> &Receiver<()> {
        &self.rx
    }
}

/// Routes SIGINT and SIGTERM to `handle`; a second signal logs and exits the process at once
/// with [`FORCED_EXIT_CODE`].
pub(crate) fn install_signal_handler(handle: ShutdownHandle) -> Result<(), Error> {
    let received = AtomicUsize::new(0);
    ctrlc::set_handler(move || {
        if received.fetch_add(1, Ordering::SeqCst) == 0 {
            log::info!("signal received: shutting down (a second signal exits at once)");
            handle.shutdown();
        } else {
            log::warn!("second signal received: exiting now");
            std::process::exit(FORCED_EXIT_CODE);
        }
    })
    .map_err(Error::Signal)
}
