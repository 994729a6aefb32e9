//! The server: bound listeners ([`Server`]), the threads that serve them while it runs
//! ([`Running`]), and its shutdown.

use std::fmt;
use std::net::{SocketAddr, TcpListener, UdpSocket};
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
use crate::udp::{self, Udp};

/// A worker with nothing to do for this long ends (the pool starts another when needed).
const WORKER_IDLE_EXIT: Duration = Duration::from_secs(30);

/// How long after the start [`Server::drop_once_started`] frees what it was given.
const LEFTOVERS_FREED: Duration = Duration::from_millis(100);

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
    /// The TLS side, with TLS ports.
    #[cfg(feature = "tls")]
    pub(crate) tls: Option<crate::tls::Tls>,
    /// The faults set now.
    pub(crate) faults: crate::fault::Faults,
    /// The echo listeners, closed while the fault `refuse` holds.
    pub(crate) gate: crate::listener::Gate,
}

impl Context {
    /// A fresh context for `config` (without TLS).
    pub(crate) fn new(config: Config) -> Context {
        Context {
            prefix: echo::line_prefix(config.prefix.as_deref()),
            registry: Registry::new(config.max_connections),
            config,
            metrics: Metrics::default(),
            log_budget: ServerBudget::default(),
            #[cfg(feature = "tls")]
            tls: None,
            faults: crate::fault::Faults::default(),
            gate: crate::listener::Gate::default(),
        }
    }

    /// Sets (or clears) the faults: new connections draw from `spec`, and the listeners close
    /// or open as `refuse` says, at once.
    pub(crate) fn set_fault(&self, spec: Option<crate::fault::Spec>) {
        let refuse = spec.as_ref().is_some_and(|s| s.refuse);
        match &spec {
            Some(s) => info!("fault set: {s}"),
            None => info!("fault cleared"),
        }
        self.faults.set(spec);
        self.gate.set(refuse);
    }
}

/// A bound server, ready to [`run`](Server::run).
pub struct Server {
    config: Config,
    /// The plain ports' listeners, then the TLS ports'.
    listeners: Vec<TcpListener>,
    /// Their addresses, in the same order.
    addrs: Vec<SocketAddr>,
    /// The TLS side, with TLS ports.
    #[cfg(feature = "tls")]
    tls: Option<crate::tls::Tls>,
    /// The UDP sockets, one per plain port, with `--udp`.
    udp: Vec<UdpSocket>,
    /// The admin port's listener and address, with `--admin-port`.
    admin: Option<(TcpListener, SocketAddr)>,
    handle: ShutdownHandle,
    signal: ShutdownSignal,
    /// What the start needed and the server does not: freed once it serves.
    leftovers: Vec<Box<dyn Send>>,
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
        // The certificate first: a bad file is a setting to fix, found before any port is
        // taken.
        #[cfg(feature = "tls")]
        let tls = match &config.tls {
            None => None,
            Some(settings) => Some(crate::tls::Tls::new(settings).map_err(|e| {
                Error::Setting(crate::config::ConfigError::new(
                    e.setting, e.value, e.reason,
                ))
            })?),
        };
        let listeners = listener::bind_all(&config)?;
        let addrs = listeners
            .iter()
            .zip(config.ports.iter().chain(&config.tls_ports))
            .map(|(l, &port)| {
                l.local_addr().map_err(|source| Error::Bind {
                    addr: SocketAddr::new(config.bind, port),
                    source,
                })
            })
            .collect::<Result<Vec<_>, _>>()?;
        // UDP on each plain port's number and address, as bound (the same port number when
        // the OS chose it).
        let udp = if config.udp {
            addrs[..config.ports.len()]
                .iter()
                .map(|&addr| udp::bind(addr, false))
                .collect::<Result<Vec<_>, _>>()?
        } else {
            Vec::new()
        };
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
            #[cfg(feature = "tls")]
            tls,
            udp,
            admin,
            handle,
            signal,
            leftovers: Vec::new(),
        })
    }

    /// Frees `what` shortly after the server has started ([`LEFTOVERS_FREED`] after), rather
    /// than on the way to its first echo.
    pub(crate) fn drop_once_started(&mut self, what: impl Send + 'static) {
        self.leftovers.push(Box::new(what));
    }

    /// The plain ports' addresses actually bound (with port 0, the port the OS chose), in
    /// `--port` order.
    pub fn local_addrs(&self) -> &[SocketAddr] {
        &self.addrs[..self.config.ports.len()]
    }

    /// The TLS ports' addresses actually bound, in `--tls-port` order.
    pub fn tls_addrs(&self) -> &[SocketAddr] {
        &self.addrs[self.config.ports.len()..]
    }

    /// The UDP sockets' addresses, in `--port` order (with `--udp`; else none).
    pub fn udp_addrs(&self) -> Vec<SocketAddr> {
        self.udp
            .iter()
            .filter_map(|s| s.local_addr().ok())
            .collect()
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
    ///
    /// The calling thread does the server's upkeep meanwhile: it logs the refusals and ends
    /// the connections over their time limits.
    pub fn run(self) -> Result<Summary, Error> {
        let mut running = Running::start(self)?;
        running.supervise(None);
        Ok(running.shut_down())
    }
}

/// A server while it serves: every thread it started, and the upkeep that the thread running
/// it does between its waits ([`supervise`](Running::supervise)). Dropping it (a failed
/// start) stops and joins the threads.
struct Running {
    ctx: Arc<Context>,
    acceptors: Acceptors,
    /// The acceptors' refusals, to log.
    reports: Reports,
    /// The time limits, to enforce.
    watch: Watch,
    /// What [`Server::drop_once_started`] was given, and when to free it.
    leftovers: Option<(Instant, Vec<Box<dyn Send>>)>,
    /// Serves `/readyz` and friends until the server returns.
    _admin: Option<Admin>,
    /// The UDP echo's threads.
    udp: Udp,
    /// Reloads the certificate files when they change.
    #[cfg(feature = "tls")]
    _certificates: Option<crate::threads::Background>,
    /// False from the moment shutdown begins: `/readyz` answers 503.
    ready: Arc<AtomicBool>,
    signal: ShutdownSignal,
    /// Kept so that `run` serves until a shutdown is requested, whether or not the caller
    /// took a handle.
    _own_handle: ShutdownHandle,
}

impl Running {
    /// Starts the pool, the admin endpoint and the acceptors.
    fn start(server: Server) -> Result<Running, Error> {
        let Server {
            config,
            listeners,
            addrs,
            #[cfg(feature = "tls")]
            tls,
            udp,
            admin,
            handle,
            signal,
            leftovers,
        } = server;
        let limits = Limits {
            idle: config.idle_timeout,
            max_duration: config.max_duration,
            drain: config.drain_timeout,
        };
        let plain = config.ports.len();
        #[cfg_attr(not(feature = "tls"), allow(unused_mut))]
        let mut ctx = Context::new(config);
        #[cfg(feature = "tls")]
        {
            ctx.tls = tls;
        }
        let fault = ctx.config.fault.clone();
        if fault.is_some() {
            ctx.set_fault(fault);
        }
        let ctx = Arc::new(ctx);
        let pool = {
            let ctx = Arc::clone(&ctx);
            Arc::new(Pool::new(
                "tcp-echo-worker",
                ctx.config.max_connections,
                WORKER_IDLE_EXIT,
                move |job: Job| connection::serve(job, &ctx),
            ))
        };
        let watch = Watch::new(&ctx.registry, limits);
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
        let udp_addrs: Vec<SocketAddr> = udp.iter().filter_map(|s| s.local_addr().ok()).collect();
        let udp = Udp::start(udp, &ctx)?;
        #[cfg(feature = "tls")]
        let certificates = match &ctx.tls {
            None => None,
            Some(tls) => {
                if tls.self_signed() {
                    warn!(
                        "TLS: no --tls-cert given; serving a self-signed certificate made at \
                         start: {}",
                        tls.describe()
                    );
                } else {
                    info!("TLS certificate: {}", tls.describe());
                }
                (!tls.self_signed())
                    .then(|| {
                        crate::threads::Background::start("tcp-echo-certs", {
                            let ctx = Arc::clone(&ctx);
                            move |stop| reload_certificates(&ctx, &stop)
                        })
                    })
                    .transpose()?
            }
        };
        let reports = Reports::new();
        let acceptors = match Acceptors::start(listeners, &addrs, plain, &ctx, &pool, &reports) {
            Ok(acceptors) => acceptors,
            Err(e) => {
                // The acceptors already started are stopped and joined (dropped); close what
                // they admitted, so that no worker outlives the failed start for long.
                ctx.registry.force_close();
                return Err(e);
            }
        };
        // A worker waits for the first connection. If it cannot be started now, the first
        // connection tries again, and is told why if that fails too.
        let _ = pool.start_worker();
        // From here on the acceptors hold the only references to the pool (and its Sender).
        drop(pool);
        // The first echo would detect the CPU's features (for the SIMD newline search): about
        // 45 µs where a hypervisor traps `cpuid`.
        #[cfg(target_arch = "x86_64")]
        std::hint::black_box(std::arch::is_x86_feature_detected!("avx2"));
        // Each port is announced once it is served: a client that connects as soon as it
        // reads the line finds an acceptor and a worker waiting, and the cores free.
        for (i, addr) in addrs.iter().enumerate() {
            if i < plain {
                info!("listening on {addr}");
            } else {
                info!("listening on {addr} (TLS)");
            }
        }
        for addr in &udp_addrs {
            info!("listening on {addr} (UDP)");
        }
        // The last line of the start: everything is open and every thread runs (tests and
        // scripts wait for it).
        info!("settings: {}", ctx.config);
        Ok(Running {
            ctx,
            acceptors,
            reports,
            watch,
            leftovers: (!leftovers.is_empty())
                .then(|| (Instant::now() + LEFTOVERS_FREED, leftovers)),
            _admin: admin,
            udp,
            #[cfg(feature = "tls")]
            _certificates: certificates,
            ready,
            signal,
            _own_handle: handle,
        })
    }

    /// Waits until shutdown is requested, or until `until` passes (`None`: no end). Meanwhile
    /// it logs the acceptors' refusals as they come, ends the connections over their time
    /// limits at each tick of the watch, and frees the start's leftovers when they are due:
    /// the server's upkeep, done by the thread that would otherwise only wait, so that no
    /// thread of its own has to be started for it.
    fn supervise(&mut self, until: Option<Instant>) {
        loop {
            let now = Instant::now();
            self.watch.run_due(now);
            if self.leftovers.as_ref().is_some_and(|(at, _)| now >= *at) {
                self.leftovers = None;
            }
            if until.is_some_and(|until| now >= until) {
                return;
            }
            let wake = [
                until,
                self.watch.due(),
                self.leftovers.as_ref().map(|(at, _)| *at),
            ]
            .into_iter()
            .flatten()
            .min();
            let timer = wake.map_or_else(crossbeam_channel::never, crossbeam_channel::at);
            crossbeam_channel::select! {
                recv(self.signal.receiver()) -> _ => return,
                recv(self.reports.receiver()) -> report => {
                    if let Ok(report) = report {
                        self.reports.log(report);
                    }
                }
                recv(timer) -> _ => {}
            }
        }
    }

    /// The shutdown, once it is requested: readiness off, the delay, stop accepting, drain,
    /// force-close what is left at the deadline.
    fn shut_down(mut self) -> Summary {
        self.ready.store(false, Ordering::Release);
        let delay = self.ctx.config.shutdown_delay;
        if !delay.is_zero() {
            info!(
                "shutdown requested: /readyz answers 503; still accepting for {:.1}s so that \
                 the endpoints drop this server first (a second request stops at once)",
                delay.as_secs_f64()
            );
            // Still accepting: the upkeep goes on.
            self.supervise(Some(Instant::now() + delay));
        }
        let Running {
            ctx,
            acceptors,
            reports,
            // Every reader is woken at shutdown: the watch has nothing left to do.
            watch: _,
            leftovers: _,
            _admin,
            udp,
            #[cfg(feature = "tls")]
            _certificates,
            ready: _,
            signal: _,
            _own_handle,
        } = self;
        let config = &ctx.config;
        let registry = &ctx.registry;
        let deadline = Instant::now() + config.drain_timeout;
        // Stop accepting first: after this, no connection is admitted, and the ones that were
        // waiting in the accept queues have been taken.
        let taken = acceptors.stop();
        // The acceptors are gone: what is queued is every refusal there will be.
        reports.log_queued();
        // A datagram is answered at once: nothing of UDP to drain.
        drop(udp);
        info!(
            "shutting down: stopped accepting ({taken} waiting connections taken); draining {} \
             open for at most {:.1}s",
            registry.len(),
            config.drain_timeout.as_secs_f64()
        );
        registry.begin_shutdown(deadline);

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

/// How often the certificate files are looked at.
#[cfg(feature = "tls")]
const CERTIFICATE_POLL: Duration = Duration::from_secs(1);

/// The certificate watcher (`tcp-echo-certs`): loads the certificate files again when they
/// change, for new connections; a bad new version is logged and the old certificate stays.
#[cfg(feature = "tls")]
fn reload_certificates(ctx: &Context, stop: &crate::threads::Stop) {
    let Some(tls) = &ctx.tls else { return };
    while !stop.wait(CERTIFICATE_POLL) {
        match tls.reload_if_changed() {
            Ok(None) => {}
            Ok(Some(loaded)) => info!("TLS certificate reloaded: {loaded}"),
            Err(why) => {
                log::error!("TLS certificate not reloaded, the previous one stays in use: {why}")
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicBool;

    /// Sets its flag when dropped.
    struct Freed(Arc<AtomicBool>);

    impl Drop for Freed {
        fn drop(&mut self) {
            self.0.store(true, Ordering::SeqCst);
        }
    }

    #[test]
    fn the_start_s_leftovers_are_freed_once_it_serves_without_idle_timeouts() {
        // No time limit to watch, so no tick wakes the main thread: the leftovers' own
        // deadline does.
        let config = Config::new(&[0])
            .unwrap()
            .with_bind("127.0.0.1".parse().unwrap())
            .with_idle_timeout(Duration::ZERO)
            .unwrap();
        let mut server = Server::bind(config).expect("bind");
        let freed = Arc::new(AtomicBool::new(false));
        server.drop_once_started(Freed(Arc::clone(&freed)));
        let handle = server.shutdown_handle();
        let started = Instant::now();
        let run = std::thread::spawn(move || server.run());
        while !freed.load(Ordering::SeqCst) {
            assert!(started.elapsed() < Duration::from_secs(10), "never freed");
            std::thread::sleep(Duration::from_millis(5));
        }
        // Not on the way to the first echo: at least the delay after the start began.
        assert!(started.elapsed() >= LEFTOVERS_FREED);
        handle.shutdown();
        run.join().unwrap().expect("served");
    }
}
