//! Process limits the server depends on.
//!
//! Every connection holds a descriptor. Container runtimes (containerd 2.x) start processes
//! with a soft `RLIMIT_NOFILE` of 1024 and a much higher hard limit; Go's runtime raises the
//! soft limit to the hard one at start, and so does tcp-echo. If even the hard limit is too low
//! for `--max-connections`, the server says so once at start: the connections beyond it would
//! wait in the listen queue while the acceptor reports `EMFILE`.

use log::{info, warn};

use crate::config::Config;

/// What the process needs besides its connections, in bytes: the idle server (about 1 MiB of
/// RSS), its listeners, and slack for the kernel's bookkeeping.
pub(crate) const MEMORY_BASE: u64 = 8 * 1024 * 1024;

/// User space and the thread of one connection at worst, besides its read buffer: the staging
/// buffer (nine sixteenths of the read buffer) and the slices of a prefixed write, the worker's touched
/// stack and its heap, the thread's 16 KiB kernel stack and task, the socket's own structures.
/// Measured, the read buffer included: see ARCHITECTURE.md ("Bounded memory per connection"),
/// `make stress` case 9.
pub(crate) const CONNECTION_BASE: u64 = 64 * 1024;

/// The socket's two kernel queues, as a multiple of `--socket-buffer`: each holds up to twice
/// the value (the kernel doubles it for its bookkeeping), and the memory cgroup charges whole
/// pages and each packet's overhead beyond that. Measured: 4.0 times at 24 KiB and 4.9 times
/// at 32 KiB for non-reading clients (the container test's peak charge).
pub(crate) const SOCKET_QUEUES: u64 = 5;

/// What TLS adds to a connection at worst: rustls' record buffers (one record in, at most
/// 16 KiB of plaintext decrypted, one record's worth of encrypted output) and its state.
/// Measured (`make stress`, case 12): 148.2 kB of RSS per TLS connection for clients that
/// flood and never read, 73.9 kB more than a plain one (case 9), and within the user-space share
/// of the ceiling ([`CONNECTION_BASE`], the read buffer and this: 176 KiB at 24 KiB); 41.5 kB
/// for an idle TLS connection. The whole ceiling, 296 KiB, against 259 kB measured.
pub(crate) const TLS_EXTRA: u64 = 64 * 1024;

/// Memory one connection may hold at worst, counted as a memory cgroup charges it, for a
/// `--socket-buffer` of `socket_buffer` bytes (`tls`: on a TLS port); `None` when the buffers
/// autotune (no bound): [`CONNECTION_BASE`] (and [`TLS_EXTRA`]), the read buffer (at most the
/// socket buffer, see `connection::read_buffer_max`), and the socket's kernel queues
/// ([`SOCKET_QUEUES`] times `socket_buffer`). The container test measures it as the memory
/// cgroup charges it, and `make stress` its parts, for the worst a client can do: flood empty
/// lines with a prefix set and never read.
pub(crate) fn memory_per_connection(socket_buffer: Option<usize>, tls: bool) -> Option<u64> {
    let tls = if tls { TLS_EXTRA } else { 0 };
    let b = socket_buffer?;
    let read = crate::connection::read_buffer_max(Some(b)) as u64;
    Some(CONNECTION_BASE + tls + read + SOCKET_QUEUES * b as u64)
}

/// Memory the server may need at its fullest: [`MEMORY_BASE`] plus `max_connections` times
/// [`memory_per_connection`].
pub(crate) fn memory_needed(
    max_connections: usize,
    socket_buffer: Option<usize>,
    tls: bool,
) -> Option<u64> {
    memory_per_connection(socket_buffer, tls).map(|c| MEMORY_BASE + max_connections as u64 * c)
}

/// Descriptors the server needs besides one per connection: stdin/stdout/stderr, the socket
/// of a connection being refused as busy, and slack for the runtime.
pub(crate) const SPARE_DESCRIPTORS: u64 = 16;

/// Sockets bound for the echo: a listener per plain and TLS port, and a UDP socket per plain
/// port with `--udp`.
fn echo_sockets(config: &Config) -> u64 {
    let plain = config.ports.len() as u64;
    plain + config.tls_ports.len() as u64 + if config.udp { plain } else { 0 }
}

/// Descriptors the server needs for `config` at its fullest: its connections, its listeners
/// and UDP sockets, the admin port's listener and connections (with `--admin-port`), and the
/// spares.
pub(crate) fn descriptors_needed(config: &Config) -> u64 {
    let admin = match config.admin_port {
        Some(_) => 1 + crate::admin::MAX_CONNECTIONS as u64,
        None => 0,
    };
    config.max_connections as u64 + echo_sockets(config) + admin + SPARE_DESCRIPTORS
}

/// What to do with the open-file limit: the soft limit to set (if it changes), and a warning
/// when the hard limit is below what is needed.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct Plan {
    /// The new soft limit, when it is raised.
    pub(crate) raise_to: Option<u64>,
    /// Said once at start when even the hard limit is too low.
    pub(crate) warning: Option<String>,
}

/// Decides about the open-file limit given its `soft` and `hard` values and what is `needed`.
pub(crate) fn plan(soft: u64, hard: u64, needed: u64, max_connections: usize) -> Plan {
    let raise_to = (hard > soft).then_some(hard);
    let limit = soft.max(hard);
    let warning = (limit < needed).then(|| {
        format!(
            "the open-file limit ({limit}) is below what --max-connections {max_connections} \
             needs ({needed}, with the listeners and {SPARE_DESCRIPTORS} spare): connections \
             beyond about {} wait in the listen queue; raise the hard limit (ulimit -Hn, the \
             container runtime's nofile) or lower --max-connections",
            limit.saturating_sub(needed - max_connections as u64)
        )
    });
    Plan { raise_to, warning }
}

/// Raises the soft open-file limit to the hard one (on macOS, to what the kernel allows a
/// process when the hard limit is unlimited) and warns if that is still too low for `config`.
/// Logs what it did.
pub(crate) fn raise_open_files(config: &Config) {
    use rlimit::Resource;
    let Ok((soft, hard)) = Resource::NOFILE.get() else {
        return;
    };
    let needed = descriptors_needed(config);
    let plan = plan(soft, hard, needed, config.max_connections);
    if plan.raise_to.is_some() {
        match rlimit::increase_nofile_limit(u64::MAX) {
            Ok(to) if to != soft => info!("open-file limit raised from {soft} to {to}"),
            Ok(_) => {}
            Err(e) => warn!("cannot raise the open-file limit from {soft}: {e}"),
        }
    }
    if let Some(w) = plan.warning {
        warn!("{w}");
    }
}

/// Threads the server needs at its fullest: a worker per connection, an acceptor per TCP port
/// and a thread per UDP socket, the main thread (which also logs the refusals and enforces the
/// time limits), the signal handler, the admin port's thread and the certificate watcher.
pub(crate) fn threads_needed(config: &Config) -> u64 {
    let admin = u64::from(config.admin_port.is_some());
    let certificates = u64::from(!config.tls_ports.is_empty());
    config.max_connections as u64 + echo_sockets(config) + 2 + admin + certificates
}

/// The warning when a thread limit (`limit`, named `name`) is below what is `needed`.
fn thread_warning(limit: u64, name: &str, needed: u64, max_connections: usize) -> Option<String> {
    (limit < needed).then(|| {
        format!(
            "the thread limit ({name} {limit}) is below what --max-connections {max_connections} \
             needs ({needed} threads, a worker per connection): connections beyond it are \
             refused as no worker can be started; raise the limit or lower --max-connections"
        )
    })
}

/// Warns once if a limit on this process's threads (the pids cgroup's `pids.max`, or
/// `RLIMIT_NPROC` for a user other than root) is below what `config` needs.
pub(crate) fn check_threads(config: &Config) {
    let needed = threads_needed(config);
    let limits = [
        imp::pids_max().map(|n| (n, "pids.max")),
        imp::nproc().map(|n| (n, "RLIMIT_NPROC")),
    ];
    for (limit, name) in limits.into_iter().flatten() {
        if let Some(w) = thread_warning(limit, name, needed, config.max_connections) {
            warn!("{w}");
        }
    }
}

mod imp {
    use rlimit::Resource;

    /// `RLIMIT_NPROC`, which binds users other than root (threads count as processes).
    pub fn nproc() -> Option<u64> {
        // SAFETY: geteuid has no preconditions.
        if unsafe { libc::geteuid() } == 0 {
            return None;
        }
        let (soft, _) = Resource::NPROC.get().ok()?;
        (soft != rlimit::INFINITY).then_some(soft)
    }

    /// The `pids.max` of this process's pids cgroup (v1 or v2), `None` when unlimited or
    /// unknown. Inside a container the cgroup is usually mounted at the hierarchy's root.
    pub fn pids_max() -> Option<u64> {
        let cgroups = std::fs::read_to_string("/proc/self/cgroup").ok()?;
        let mut dirs = Vec::new();
        for line in cgroups.lines() {
            let mut parts = line.splitn(3, ':');
            let (_, controllers, path) = (parts.next()?, parts.next()?, parts.next()?);
            let path = path.trim_end_matches('/');
            if controllers.split(',').any(|c| c == "pids") {
                dirs.push(format!("/sys/fs/cgroup/pids{path}"));
                dirs.push("/sys/fs/cgroup/pids".to_string());
            } else if controllers.is_empty() {
                dirs.push(format!("/sys/fs/cgroup{path}"));
                dirs.push("/sys/fs/cgroup".to_string());
            }
        }
        // At the hierarchy's root, a cgroup's directory and the root are one (each lookup
        // is a few µs of the start).
        dirs.dedup();
        let text = dirs
            .iter()
            .find_map(|d| std::fs::read_to_string(format!("{d}/pids.max")).ok())?;
        text.trim().parse().ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_soft_limit_is_raised_to_the_hard_one() {
        let p = plan(1024, 1_048_576, 1041, 1024);
        assert_eq!(p.raise_to, Some(1_048_576));
        assert_eq!(p.warning, None);
    }

    #[test]
    fn nothing_changes_when_soft_equals_hard_and_suffices() {
        assert_eq!(
            plan(4096, 4096, 1041, 1024),
            Plan {
                raise_to: None,
                warning: None
            }
        );
    }

    #[test]
    fn a_hard_limit_too_low_is_named_with_what_is_needed() {
        let p = plan(256, 512, 1041, 1024);
        assert_eq!(p.raise_to, Some(512));
        let w = p.warning.expect("a warning");
        assert!(
            w.contains("(512)") && w.contains("1041") && w.contains("1024"),
            "{w}"
        );
        assert!(w.contains("about 495"), "{w}");
    }

    #[test]
    fn the_deployments_socket_buffer_bounds_a_connection_at_232_kib() {
        let deployment = Some(24 * 1024);
        assert_eq!(memory_per_connection(deployment, false), Some(232 * 1024));
        assert_eq!(memory_per_connection(deployment, true), Some(296 * 1024));
        assert_eq!(memory_per_connection(None, false), None);
        // 1,024 connections fit 256 MiB (and 320 MiB with TLS).
        assert!(memory_needed(1024, deployment, false).unwrap() <= 256 << 20);
        assert!(memory_needed(1024, deployment, true).unwrap() <= 320 << 20);
        // The default 64 KiB: 448 KiB.
        assert_eq!(memory_per_connection(Some(65536), false), Some(448 * 1024));
    }

    #[test]
    fn a_thread_limit_below_the_need_is_named() {
        let w = thread_warning(64, "pids.max", 1028, 1024).expect("a warning");
        assert!(
            w.contains("pids.max 64") && w.contains("1028") && w.contains("1024"),
            "{w}"
        );
        assert_eq!(thread_warning(4096, "pids.max", 1028, 1024), None);
    }

    #[test]
    fn descriptors_needed_count_connections_listeners_and_spares() {
        let c = Config::new(&[0, 0])
            .unwrap()
            .with_max_connections(100)
            .unwrap();
        assert_eq!(descriptors_needed(&c), 100 + 2 + SPARE_DESCRIPTORS);
        let c = c.with_admin_port(0).unwrap();
        assert_eq!(descriptors_needed(&c), 100 + 2 + 129 + SPARE_DESCRIPTORS);
        assert_eq!(threads_needed(&c), 100 + 2 + 2 + 1);
        // With --udp, a socket and a thread per plain port besides each listener.
        let c = c.with_udp(true);
        assert_eq!(descriptors_needed(&c), 100 + 4 + 129 + SPARE_DESCRIPTORS);
        assert_eq!(threads_needed(&c), 100 + 4 + 2 + 1);
    }
}
