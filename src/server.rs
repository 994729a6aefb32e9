//! The server: bound listeners ([`Server`]), the threads that serve them while it runs
//! ([`Running`]), and its shutdown.

use std::fmt;
use std::net::{SocketAddr, TcpListener};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use log::{info, warn};

use crate::admin::{self, Admin, Sources};
use crate::config::Config;
use crate::connection::{self, Job};
use crate::echo;
use crate::error::Error;
use crate::listener::{self, Acceptors, Reports};
use crate::log_budget::ServerBudget;
use crate::metrics::Metrics;
use crate::pool::Pool;
use crate::registry::{Limits, Registry, Watch};
use crate::shutdown::{self, ShutdownHandle, ShutdownSignal};

/// A worker with nothing to do for this long ends (the pool starts another when needed).
const WORKER_IDLE_EXIT: Duration = Duration::from_secs(30);

/// How long force-closed connections get to log their end before the process exits.
const FORCE_GRACE: Duration = Duration::from_millis(200);

/// What every connection shares: settings, the open-connection set, counters, log budget.
#[derive(Debug)]
pub(crate) struct Context {
    /// The settings.
    pub(crate) config: Config,
    /// The prefix and its space, as it goes before each line (`None`: no prefix).
    pub(crate) prefix: Option<Vec<u8>>,
    /// Open connections.
    pub(crate) registry: Arc<Registry>,
    /// Counters.
    pub(crate) metrics: Metrics,
    /// The server-wide limit on `Received` records.
    pub(crate) log_budget: ServerBudget,
}

impl Context {
    /// A fresh context for `config`.
    pub(crate) fn new(config: Config) -> Context {
        Context {
            prefix: echo::line_prefix(config.prefix.as_deref()),
            registry: Registry::new(config.max_connections),
            config,
            metrics: Metrics::default(),
            log_budget: ServerBudget::default(),
        }
    }
}

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
    /// Connections refused (server full, no worker, no valid PROXY header).
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

    /// A handle that makes [`run`](Server::run) shut down and return (a second request cuts
    /// the shutdown delay short).
    pub fn shutdown_handle(&self) -> ShutdownHandle {
        self.handle.clone()
    }

    /// Serves until shutdown is requested; then turns readiness off, keeps accepting for the
    /// shutdown delay, stops accepting, lets open connections finish (every byte received is
    /// echoed) for at most the drain timeout, closes the rest, and returns what was done.
    pub fn run(self) -> Result<Summary, Error> {
        let running = Running::start(self)?;
        running.signal.wait();
        Ok(running.shut_down())
    }
}

/// A server while it serves: every thread it started. Dropping it (a failed start) stops and
/// joins them all.
struct Running {
    ctx: Arc<Context>,
    acceptors: Acceptors,
    /// Logs the acceptors' refusals; after them, so that it outlives their senders.
    _reports: Reports,
    watch: Watch,
    /// Serves `/readyz` and friends until the server returns.
    _admin: Option<Admin>,
    /// False from the moment shutdown begins: `/readyz` answers 503.
    ready: Arc<AtomicBool>,
    signal: ShutdownSignal,
    /// Kept so that `run` serves until a shutdown is requested, whether or not the caller
    /// took a handle.
    _own_handle: ShutdownHandle,
}

impl Running {
    /// Starts the watch, the pool, the admin endpoint, the reporter and the acceptors.
    fn start(server: Server) -> Result<Running, Error> {
        let Server {
            config,
            listeners,
            addrs,
            admin,
            handle,
            signal,
        } = server;
        let limits = Limits {
            idle: config.idle_timeout,
            max_duration: config.max_duration,
            drain: config.drain_timeout,
        };
        let ctx = Arc::new(Context::new(config));
        let pool = {
            let ctx = Arc::clone(&ctx);
            Arc::new(Pool::new(
                "tcp-echo-worker",
                ctx.config.max_connections,
                WORKER_IDLE_EXIT,
                move |job: Job| connection::serve(job, &ctx),
            ))
        };
        let watch = Watch::start(&ctx.registry, limits)?;
        let ready = Arc::new(AtomicBool::new(true));
        let admin = match admin {
            None => None,
            Some((listener, addr)) => {
                let sources = Sources {
                    ctx: Arc::clone(&ctx),
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
        info!("settings: {}", ctx.config);
        let reports = Reports::start()?;
        let acceptors = match Acceptors::start(listeners, &addrs, &ctx, &pool, &reports) {
            Ok(acceptors) => acceptors,
            Err(e) => {
                // The acceptors already started are stopped and joined (dropped); close what
                // they admitted, so that no worker outlives the failed start for long.
                ctx.registry.force_close();
                return Err(e);
            }
        };
        // From here on the acceptors hold the only references to the pool (and its Sender).
        drop(pool);
        Ok(Running {
            ctx,
            acceptors,
            _reports: reports,
            watch,
            _admin: admin,
            ready,
            signal,
            _own_handle: handle,
        })
    }

    /// The shutdown, once it is requested: readiness off, the delay, stop accepting, drain,
    /// force-close what is left at the deadline.
    fn shut_down(self) -> Summary {
        let Running {
            ctx,
            acceptors,
            _reports,
            watch,
            _admin,
            ready,
            signal,
            _own_handle,
        } = self;
        let config = &ctx.config;
        let registry = &ctx.registry;
        ready.store(false, Ordering::Release);
        let delay = config.shutdown_delay;
        if !delay.is_zero() {
            info!(
                "shutdown requested: /readyz answers 503; still accepting for {:.1}s so that \
                 the endpoints drop this server first (a second request stops at once)",
                delay.as_secs_f64()
            );
            signal.wait_timeout(delay);
        }
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
        let metrics = &ctx.metrics;
        Summary {
            served: metrics.served.load(Ordering::Relaxed),
            refused: metrics.refused.total(),
            bytes: metrics.bytes.load(Ordering::Relaxed),
            forced,
        }
    }
}
