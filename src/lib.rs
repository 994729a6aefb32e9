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
//! let config = Config::new(&[0]).and_then(|c| c.with_prefix("one")).expect("settings");
//! let server = Server::bind(config).expect("bind");
//! println!("listening on {:?}", server.local_addrs());
//! let stop = server.shutdown_handle();
//! # stop.shutdown();
//! let summary = server.run().expect("run");
//! println!("{summary}");
//! ```

#[cfg(not(unix))]
compile_error!("tcp-echo runs on Unix-like systems: Linux, macOS and the BSDs");

mod admin;
pub mod banner;
pub mod cli;
pub mod config;
mod connection;
mod drain;
pub mod echo;
mod error;
pub mod limits;
mod listener;
pub mod log_budget;
mod logging;
mod pool;
pub mod proxy;
mod registry;
mod shutdown;
mod socket;

use std::fmt;
use std::net::{SocketAddr, TcpListener};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use log::{info, warn};

use crate::admin::{Admin, Sources};

/// Connections the admin port (`--admin-port`) holds at once; a new one beyond takes the
/// place of the oldest.
pub use crate::admin::MAX_CONNECTIONS as ADMIN_MAX_CONNECTIONS;
pub use crate::config::Config;
use crate::connection::{Job, Shared, Stats};
pub use crate::error::Error;
use crate::listener::Acceptors;
use crate::log_budget::ServerBudget;
use crate::pool::Pool;
use crate::registry::{Limits, Registry, Watch};
use crate::shutdown::ShutdownSignal;
pub use crate::shutdown::{ShutdownHandle, FORCED_EXIT_CODE};

/// A worker with nothing to do for this long ends (the pool starts another when needed).
pub const WORKER_IDLE_EXIT: Duration = Duration::from_secs(30);

/// How long force-closed connections get to log their end before the process exits.
const FORCE_GRACE: Duration = Duration::from_millis(200);

/// A bound server, ready to [`run`](Server::run).
pub struct Server {
    config: Config,
    listeners: Vec<TcpListener>,
    addrs: Vec<SocketAddr>,
    /// The admin port's listener and address, with `--admin-port`.
    admin: Option<(TcpListener, SocketAddr)>,
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
        let admin = match config.admin_port {
            None => None,
            Some(port) => {
                let addr = SocketAddr::new(config.bind, port);
                let listener = listener::bind_with(addr, config.bind_fallback, None)?;
                let bound = listener
                    .local_addr()
                    .map_err(|source| Error::Bind { addr, source })?;
                Some((listener, bound))
            }
        };
        let (handle, signal) = shutdown::channel();
        Ok(Server {
            config,
            listeners,
            addrs,
            admin,
            handle,
            signal,
        })
    }

    /// The addresses actually bound (with port 0, the port the OS chose), in `--port` order.
    pub fn local_addrs(&self) -> &[SocketAddr] {
        &self.addrs
    }

    /// The admin port's address (with port 0, the port the OS chose), with `--admin-port`.
    pub fn admin_addr(&self) -> Option<SocketAddr> {
        self.admin.as_ref().map(|(_, addr)| *addr)
    }

    /// A handle that makes [`run`](Server::run) drain and return.
    pub fn shutdown_handle(&self) -> ShutdownHandle {
        self.handle.clone()
    }

    /// Serves until shutdown is requested, then stops accepting, lets open connections finish
    /// (every byte received is echoed) for at most the drain timeout, closes the rest, and
    /// returns what was done.
    pub fn run(self) -> Result<Summary, Error> {
        // The server keeps a handle of its own until it stops: `run` serves until a shutdown
        // is requested, whether or not the caller took a handle.
        let Server {
            config,
            listeners,
            addrs,
            admin,
            handle: _own_handle,
            signal,
        } = self;
        let registry = Registry::new(config.max_connections);
        let limits = Limits {
            idle: config.idle_timeout,
            max_duration: config.max_duration,
        };
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
        // Dropped on any early return: the thread is stopped and joined.
        let watch = Watch::start(&registry, limits)?;
        // False from the moment shutdown begins: `/readyz` answers 503.
        let ready = Arc::new(AtomicBool::new(true));
        // Dropped (stopped and joined) when `run` returns, after the drain.
        let _admin = match admin {
            None => None,
            Some((listener, addr)) => {
                let sources = Sources {
                    shared: Arc::clone(&shared),
                    workers: pool.gauge(),
                    ready: Arc::clone(&ready),
                    started: admin::now_unix(),
                };
                let admin = Admin::start(listener, sources)?;
                info!("admin endpoint on http://{addr}: /healthz, /readyz, /metrics");
                Some(admin)
            }
        };

        for addr in &addrs {
            info!("listening on {addr}");
        }
        info!("settings: {config}");

        let acceptors = match Acceptors::start(listeners, &addrs, &shared, &pool) {
            Ok(acceptors) => acceptors,
            Err(e) => {
                // The acceptors already started are stopped and joined (dropped); close what
                // they admitted, so that no worker outlives the failed start for long.
                registry.force_close();
                return Err(e);
            }
        };
        // From here on the acceptors hold the only references to the pool (and its Sender).
        drop(pool);

        signal.wait();
        ready.store(false, Ordering::Release);
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
        // Every reader is awake now; the watch has nothing left to do.
        drop(watch);

        let mut forced = registry.wait_until_empty(deadline);
        if forced > 0 {
            forced = registry.force_close();
            warn!("drain timeout: closing {forced} connections still open");
            registry.wait_until_empty(Instant::now() + FORCE_GRACE);
        }
        let stats = &shared.stats;
        Ok(Summary {
            served: stats.served.load(Ordering::Relaxed),
            refused: stats.refused_total(),
            bytes: stats.bytes.load(Ordering::Relaxed),
            forced,
        })
    }
}
