//! tcp-echo: a small, fast and hardened TCP echo server for testing TCP routing in Kubernetes
//! and Istio.
//!
//! A [`Server`] binds one listener per port; an acceptor thread per listener admits connections
//! (at most `--max-connections`, one more is told `busy`) and hands them over a
//! `crossbeam-channel` to a bounded pool of worker threads, each serving one connection at a
//! time. See `ARCHITECTURE.md` for the map and the invariants.
//!
//! ```no_run
//! use tcp_echo::{Config, Server};
//! let server = Server::bind(Config::new(vec![0])).expect("bind");
//! println!("listening on {:?}", server.local_addrs());
//! let stop = server.shutdown_handle();
//! # stop.shutdown();
//! let summary = server.run().expect("run");
//! println!("{summary}");
//! ```

pub mod banner;
pub mod cli;
pub mod config;
pub mod connection;
pub mod drain;
pub mod echo;
pub mod error;
pub mod limits;
pub mod listener;
pub mod log_budget;
pub mod logging;
pub mod pool;
pub mod registry;
pub mod shutdown;
pub mod socket;

use std::fmt;
use std::net::{SocketAddr, TcpListener};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use log::{info, warn};

pub use crate::config::Config;
use crate::connection::{Job, Shared, Stats};
pub use crate::error::Error;
use crate::listener::Acceptors;
use crate::log_budget::ServerBudget;
use crate::pool::Pool;
use crate::registry::Registry;
pub use crate::shutdown::ShutdownHandle;
use crate::shutdown::ShutdownSignal;

/// A worker with nothing to do for this long ends (the pool starts another when needed).
pub const WORKER_IDLE_EXIT: Duration = Duration::from_secs(30);

/// How long force-closed connections get to log their end before the process exits.
const FORCE_GRACE: Duration = Duration::from_millis(200);

/// A bound server, ready to [`run`](Server::run).
pub struct Server {
    config: Config,
    listeners: Vec<TcpListener>,
    addrs: Vec<SocketAddr>,
    handle: ShutdownHandle,
    signal: ShutdownSignal,
}

/// What a server did, reported when it stops.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Summary {
    /// Connections served.
    pub served: u64,
    /// Connections refused because the server was full.
    pub refused: u64,
    /// Bytes received and echoed.
    pub bytes: u64,
    /// Connections still open at the drain deadline, closed by force.
    pub forced: usize,
}

impl fmt::Display for Summary {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "connections served={} refused={} bytes echoed={} closed by force at the drain deadline={}",
            self.served, self.refused, self.bytes, self.forced
        )
    }
}

impl Server {
    /// Binds every listener. Fails, naming the address, if any port cannot be bound.
    pub fn bind(config: Config) -> Result<Server, Error> {
        let listeners = listener::bind_all(&config)?;
        let addrs = listeners
            .iter()
            .zip(&config.ports)
            .map(|(l, &port)| {
                l.local_addr().map_err(|source| Error::Bind {
                    addr: SocketAddr::new(config.bind, port),
                    source,
                })
            })
            .collect::<Result<Vec<_>, _>>()?;
        let (handle, signal) = shutdown::channel();
        Ok(Server {
            config,
            listeners,
            addrs,
            handle,
            signal,
        })
    }

    /// The addresses actually bound (with port 0, the port the OS chose), in `--port` order.
    pub fn local_addrs(&self) -> &[SocketAddr] {
        &self.addrs
    }

    /// A handle that makes [`run`](Server::run) drain and return.
    pub fn shutdown_handle(&self) -> ShutdownHandle {
        self.handle.clone()
    }

    /// Serves until shutdown is requested, then stops accepting, lets open connections finish
    /// (every byte received is echoed) for at most the drain timeout, closes the rest, and
    /// returns what was done.
    pub fn run(self) -> Result<Summary, Error> {
        let Server {
            config,
            listeners,
            addrs,
            handle,
            signal,
        } = self;
        drop(handle);
        let registry = Registry::new(config.max_connections);
        let shared = Arc::new(Shared {
            config,
            registry: Arc::clone(&registry),
            stats: Stats::default(),
            log_budget: ServerBudget::default(),
        });
        let config = &shared.config;
        let pool = {
            let shared = Arc::clone(&shared);
            Arc::new(Pool::new(
                "tcp-echo-worker",
                config.max_connections,
                WORKER_IDLE_EXIT,
                move |job: Job| connection::serve(job, &shared),
            ))
        };

        // The idle watch; dropping `stop_idle` ends it.
        let (stop_idle, idle_stopped) = crossbeam_channel::bounded::<()>(0);
        let idle_watch = match config.idle_timeout {
            Some(timeout) => {
                let name = "tcp-echo-idle".to_string();
                let registry = Arc::clone(&registry);
                let spawned = thread::Builder::new()
                    .name(name.clone())
                    .stack_size(pool::WORKER_STACK)
                    .spawn(move || registry::watch_idle(&registry, timeout, &idle_stopped));
                Some(spawned.map_err(|source| Error::Thread { name, source })?)
            }
            None => None,
        };

        for addr in &addrs {
            info!("listening on {addr}");
        }
        info!("settings: {config}");

        let acceptors = Acceptors::start(listeners, &addrs, &shared, &pool)?;
        // From here on the acceptors hold the only references to the pool (and its Sender).
        drop(pool);

        signal.wait();
        let deadline = Instant::now() + config.drain_timeout;
        // Stop accepting first: after this, no connection is admitted, and the ones that were
        // waiting in the accept queues have been taken.
        let taken = acceptors.stop();
        info!(
            "shutting down: stopped accepting ({taken} waiting connections taken); draining {} \
             open for at most {:.1}s",
            registry.len(),
            config.drain_timeout.as_secs_f64()
        );
        registry.begin_shutdown(deadline);
        // Every reader is awake now; the idle watch has nothing left to do.
        drop(stop_idle);
        if let Some(join) = idle_watch {
            let _ = join.join();
        }

        let mut forced = registry.wait_until_empty(deadline);
        if forced > 0 {
            forced = registry.force_close();
            warn!("drain timeout: closing {forced} connections still open");
            registry.wait_until_empty(Instant::now() + FORCE_GRACE);
        }
        let stats = &shared.stats;
        Ok(Summary {
            served: stats.served.load(Ordering::Relaxed),
            refused: stats.refused.load(Ordering::Relaxed),
            bytes: stats.bytes.load(Ordering::Relaxed),
            forced,
        })
    }
}
