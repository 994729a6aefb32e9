//! Errors that stop the server from starting, each carrying what it was doing.

use std::fmt;
use std::io;
use std::net::SocketAddr;

/// A failure to start serving.
#[derive(Debug)]
pub enum Error {
    /// A listener could not be bound (address in use, permission, ...).
    Bind {
        /// The address that was asked for.
        addr: SocketAddr,
        /// Why it failed.
        source: io::Error,
    },
    /// A thread could not be started.
    Thread {
        /// The thread's name.
        name: String,
        /// Why it failed.
        source: io::Error,
    },
    /// The signal handler could not be installed.
    Signal(ctrlc::Error),
    /// A setting that could be read, but not used (a certificate file that is bad).
    Setting(crate::config::ConfigError),
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::Bind { addr, source } => write!(f, "cannot listen on {addr}: {source}"),
            Error::Thread { name, source } => write!(f, "cannot start thread {name}: {source}"),
            Error::Signal(e) => write!(f, "cannot install the SIGINT/SIGTERM handler: {e}"),
            Error::Setting(e) => write!(f, "{e}"),
        }
    }
}

impl std::error::Error for Error {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            Error::Bind { source, .. } | Error::Thread { source, .. } => Some(source),
            Error::Signal(e) => Some(e),
            Error::Setting(e) => Some(e),
        }
    }
}
