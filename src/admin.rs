//! The admin port (`--admin-port`): liveness, readiness and Prometheus metrics over as much
//! HTTP/1.1 as probes and scrapers need.
//!
//! One thread serves it with a `poll(2)` loop over the listener and its connections, so that a
//! slow or idle client holds no thread: it holds one of at most [`MAX_CONNECTIONS`] slots, for
//! at most [`REQUEST_DEADLINE`], with at most [`MAX_REQUEST`] bytes. When the slots are full,
//! a new connection takes the oldest one's: scanners cannot lock the probes out. The echo
//! workers are never involved.
//!
//! * `GET /healthz`: 200 while the process serves;
//! * `GET /readyz`: 200 while the server accepts, 503 from the moment shutdown begins;
//! * `GET /metrics`: the Prometheus text format (version 0.0.4);
//! * any other path 404, any other method 405; every response closes the connection.

use std::fmt::Write as _;
use std::io::{ErrorKind, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use crate::connection::{Job, Refusal, Shared, CLOSE_REASONS};
use crate::error::Error;
use crate::pool::Gauge;

/// Admin connections open at once; a new one beyond takes the oldest one's place.
pub const MAX_CONNECTIONS: usize = 128;
/// The longest request (request line and headers) read.
pub const MAX_REQUEST: usize = 8 * 1024;
/// The time a connection has, from accept to its response written.
pub const REQUEST_DEADLINE: Duration = Duration::from_secs(1);
/// How often the loop looks at the stop flag when nothing happens.
const TICK: Duration = Duration::from_millis(100);

/// What the endpoints report on.
pub struct Sources {
    /// Settings, counters, open connections, log budget.
    pub shared: Arc<Shared>,
    /// The worker pool's threads.
    pub workers: Gauge<Job>,
    /// False from the moment shutdown begins.
    pub ready: Arc<AtomicBool>,
    /// When the server started, in seconds since the Unix epoch.
    pub started: f64,
}

/// The running admin endpoint; dropping it stops and joins its thread.
pub struct Admin {
    stop: Arc<AtomicBool>,
    join: Option<JoinHandle<()>>,
}

impl Admin {
    /// Serves `listener` on a thread of its own (`tcp-echo-admin`).
    pub fn start(listener: TcpListener, sources: Sources) -> Result<Admin, Error> {
        let stop = Arc::new(AtomicBool::new(false));
        let flag = Arc::clone(&stop);
        let name = "tcp-echo-admin".to_string();
        let join = thread::Builder::new()
            .name(name.clone())
            .stack_size(crate::pool::WORKER_STACK)
            .spawn(move || serve(&listener, &sources, &flag))
            .map_err(|source| Error::Thread { name, source })?;
        Ok(Admin {
            stop,
            join: Some(join),
        })
    }
}

impl Drop for Admin {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Release);
        if let Some(join) = self.join.take() {
            let _ = join.join();
        }
    }
}

/// One admin connection.
struct Conn {
    stream: TcpStream,
    deadline: Instant,
    /// The request so far.
    request: Vec<u8>,
    /// The response, once there is one, and how much of it is written.
    response: Option<(Vec<u8>, usize)>,
}

impl Conn {
    /// Whether its response is written whole.
    fn done(&self) -> bool {
        self.response.as_ref().is_some_and(|(r, n)| *n == r.len())
    }
}

fn serve(listener: &TcpListener, sources: &Sources, stop: &AtomicBool) {
    if listener.set_nonblocking(true).is_err() {
        log::error!("admin endpoint: cannot make its listener non-blocking");
        return;
    }
    defer_accept(listener);
    let mut conns: Vec<Conn> = Vec::new();
    while !stop.load(Ordering::Acquire) {
        let now = Instant::now();
        let wait = conns
            .iter()
            .map(|c| c.deadline.saturating_duration_since(now))
            .min()
            .unwrap_or(TICK)
            .min(TICK);
        let mut fds: Vec<libc::pollfd> = std::iter::once(libc::pollfd {
            fd: listener.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        })
        .chain(conns.iter().map(|c| libc::pollfd {
            fd: c.stream.as_raw_fd(),
            events: if c.response.is_some() {
                libc::POLLOUT
            } else {
                libc::POLLIN
            },
            revents: 0,
        }))
        .collect();
        // SAFETY: `fds` is a valid array of `fds.len()` pollfd structures.
        let ready = unsafe {
            libc::poll(
                fds.as_mut_ptr(),
                fds.len() as libc::nfds_t,
                wait.as_millis().max(1) as libc::c_int,
            )
        };
        if ready < 0 {
            if std::io::Error::last_os_error().kind() != ErrorKind::Interrupted {
                thread::sleep(TICK); // ENOMEM and the like: no busy loop
            }
            continue;
        }
        // Existing connections first (their indices match `fds[1..]`), then new ones.
        for (c, fd) in conns.iter_mut().zip(&fds[1..]) {
            if fd.revents != 0 {
                step(c, sources);
            }
        }
        if fds[0].revents != 0 {
            accept(listener, &mut conns, sources);
        }
        let now = Instant::now();
        conns.retain(|c| !c.done() && now < c.deadline);
    }
}

/// On Linux, the kernel hands a connection over only once its first bytes have arrived
/// (`TCP_DEFER_ACCEPT`): a client that connects and says nothing never takes a slot, and a
/// probe is accepted with its request, answered at once. Elsewhere the slots alone bound them.
fn defer_accept(listener: &TcpListener) {
    #[cfg(any(target_os = "linux", target_os = "android"))]
    {
        let seconds: libc::c_int = REQUEST_DEADLINE.as_secs().max(1) as libc::c_int;
        // SAFETY: setsockopt on a socket we own, with a pointer to a c_int and its size.
        let rc = unsafe {
            libc::setsockopt(
                listener.as_raw_fd(),
                libc::IPPROTO_TCP,
                libc::TCP_DEFER_ACCEPT,
                (&seconds as *const libc::c_int).cast(),
                std::mem::size_of::<libc::c_int>() as libc::socklen_t,
            )
        };
        if rc != 0 {
            log::debug!(
                "admin endpoint: TCP_DEFER_ACCEPT: {}",
                std::io::Error::last_os_error()
            );
        }
    }
    #[cfg(not(any(target_os = "linux", target_os = "android")))]
    let _ = listener;
}

/// Takes every connection waiting on the listener, making room by dropping the oldest, and
/// answers at once the ones whose request is already there (a probe's usually is).
fn accept(listener: &TcpListener, conns: &mut Vec<Conn>, sources: &Sources) {
    loop {
        match listener.accept() {
            Ok((stream, _)) => {
                if stream.set_nonblocking(true).is_err() {
                    continue;
                }
                let mut conn = Conn {
                    stream,
                    deadline: Instant::now() + REQUEST_DEADLINE,
                    request: Vec::new(),
                    response: None,
                };
                step(&mut conn, sources);
                if !conn.done() {
                    if conns.len() >= MAX_CONNECTIONS {
                        conns.remove(0);
                    }
                    conns.push(conn);
                }
            }
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(e) if e.kind() == ErrorKind::WouldBlock => return,
            // EMFILE and the like: the next round tries again, after a pause, not at once.
            Err(_) => {
                thread::sleep(Duration::from_millis(10));
                return;
            }
        }
    }
}

/// Moves one connection on: reads its request and answers it, or writes more of the answer.
fn step(c: &mut Conn, sources: &Sources) {
    if c.response.is_none() {
        let mut buf = [0u8; 1024];
        let mut ended = false;
        loop {
            // Never more than one byte past the limit: a request buffer stays under 16 KiB.
            let room = (MAX_REQUEST + 1 - c.request.len()).min(buf.len());
            match c.stream.read(&mut buf[..room]) {
                // The client has sent all it will: it may still read (a half-close).
                Ok(0) => {
                    ended = true;
                    break;
                }
                Ok(n) => c.request.extend_from_slice(&buf[..n]),
                Err(e) if e.kind() == ErrorKind::Interrupted => continue,
                Err(e) if e.kind() == ErrorKind::WouldBlock => break,
                Err(_) => {
                    c.deadline = Instant::now();
                    return;
                }
            }
            if c.request.len() > MAX_REQUEST {
                break;
            }
        }
        let response = if c.request.len() > MAX_REQUEST {
            Some(respond(431, "text/plain", b"request too large\n", false))
        } else {
            memchr::memmem::find(&c.request, b"\r\n\r\n").map(|_| answer(&c.request, sources))
        };
        match response {
            Some(r) => c.response = Some((r, 0)),
            None if ended => {
                c.deadline = Instant::now(); // the client left without a whole request
                return;
            }
            None => return,
        }
    }
    if let Some((r, n)) = c.response.as_mut() {
        while *n < r.len() {
            match c.stream.write(&r[*n..]) {
                Ok(k) if k > 0 => *n += k,
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(e) if e.kind() == ErrorKind::WouldBlock => break,
                // The client is gone: drop the connection now rather than poll it again.
                _ => {
                    c.deadline = Instant::now();
                    break;
                }
            }
        }
    }
}

/// The response to a complete request.
fn answer(request: &[u8], sources: &Sources) -> Vec<u8> {
    let line = request.split(|&b| b == b'\r').next().unwrap_or_default();
    let line = String::from_utf8_lossy(line);
    let mut parts = line.split(' ');
    let (Some(method), Some(target), Some(version)) = (parts.next(), parts.next(), parts.next())
    else {
        return respond(400, "text/plain", b"bad request\n", false);
    };
    if !version.starts_with("HTTP/1.") || parts.next().is_some() {
        return respond(400, "text/plain", b"bad request\n", false);
    }
    let head = method == "HEAD";
    if method != "GET" && !head {
        return respond(405, "text/plain", b"method not allowed\n", false);
    }
    let path = target.split('?').next().unwrap_or_default();
    match path {
        "/healthz" => respond(200, "text/plain", b"ok\n", head),
        "/readyz" if sources.ready.load(Ordering::Acquire) => {
            respond(200, "text/plain", b"ready\n", head)
        }
        "/readyz" => respond(503, "text/plain", b"draining\n", head),
        "/metrics" => respond(
            200,
            "text/plain; version=0.0.4; charset=utf-8",
            metrics(sources).as_bytes(),
            head,
        ),
        _ => respond(404, "text/plain", b"not found\n", head),
    }
}

fn respond(status: u16, content_type: &str, body: &[u8], head: bool) -> Vec<u8> {
    let reason = match status {
        200 => "OK",
        400 => "Bad Request",
        404 => "Not Found",
        405 => "Method Not Allowed",
        431 => "Request Header Fields Too Large",
        _ => "Service Unavailable",
    };
    let allow = if status == 405 {
        "Allow: GET, HEAD\r\n"
    } else {
        ""
    };
    let mut out = format!(
        "HTTP/1.1 {status} {reason}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\n\
         {allow}Connection: close\r\n\r\n",
        body.len()
    )
    .into_bytes();
    if !head {
        out.extend_from_slice(body);
    }
    out
}

/// The metrics in Prometheus's text format.
pub fn metrics(sources: &Sources) -> String {
    let shared = &sources.shared;
    let stats = &shared.stats;
    let load = |a: &std::sync::atomic::AtomicU64| a.load(Ordering::Relaxed);
    let mut out = String::new();
    let mut family = |name: &str, kind: &str, help: &str, samples: &[(String, f64)]| {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
        for (labels, value) in samples {
            let _ = writeln!(out, "{name}{labels} {value}");
        }
    };
    let one = |v: u64| vec![(String::new(), v as f64)];
    family(
        "tcp_echo_connections_accepted_total",
        "counter",
        "Connections handed to a worker (those then refused for their PROXY header included).",
        &one(load(&stats.accepted)),
    );
    let refused: Vec<(String, f64)> = Refusal::ALL
        .iter()
        .enumerate()
        .map(|(i, (_, label))| {
            (
                format!("{{reason=\"{label}\"}}"),
                load(&stats.refused[i]) as f64,
            )
        })
        .collect();
    family(
        "tcp_echo_connections_refused_total",
        "counter",
        "Connections refused: busy (--max-connections open), no_worker (no thread could be started), proxy_protocol (no valid PROXY header).",
        &refused,
    );
    family(
        "tcp_echo_connections_open",
        "gauge",
        "Connections open now.",
        &one(shared.registry.len() as u64),
    );
    let closed: Vec<(String, f64)> = CLOSE_REASONS
        .iter()
        .enumerate()
        .map(|(i, label)| {
            (
                format!("{{reason=\"{label}\"}}"),
                load(&stats.closed[i]) as f64,
            )
        })
        .collect();
    family(
        "tcp_echo_connections_closed_total",
        "counter",
        "Connections served to their end, by why they ended.",
        &closed,
    );
    family(
        "tcp_echo_bytes_echoed_total",
        "counter",
        "Bytes received and echoed.",
        &one(load(&stats.bytes)),
    );
    family(
        "tcp_echo_log_records_suppressed_total",
        "counter",
        "Received records (pieces) the log budget kept out of the log.",
        &one(shared.log_budget.suppressed()),
    );
    family(
        "tcp_echo_worker_threads",
        "gauge",
        "Worker threads alive.",
        &one(sources.workers.threads() as u64),
    );
    family(
        "tcp_echo_max_connections",
        "gauge",
        "The --max-connections setting.",
        &one(shared.config.max_connections as u64),
    );
    family(
        "tcp_echo_start_time_seconds",
        "gauge",
        "When the server started, in seconds since the Unix epoch.",
        &[(String::new(), sources.started)],
    );
    family(
        "tcp_echo_build_info",
        "gauge",
        "The version of tcp-echo, as a label.",
        &[(
            format!("{{version=\"{}\"}}", env!("CARGO_PKG_VERSION")),
            1.0,
        )],
    );
    out
}

/// Now, in seconds since the Unix epoch.
pub fn now_unix() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn responses_close_and_say_their_length() {
        let r = String::from_utf8(respond(200, "text/plain", b"ok\n", false)).unwrap();
        assert!(r.starts_with("HTTP/1.1 200 OK\r\n"), "{r}");
        assert!(r.contains("Content-Length: 3\r\n") && r.contains("Connection: close\r\n"));
        assert!(r.ends_with("\r\n\r\nok\n"));
        let r = String::from_utf8(respond(405, "text/plain", b"x", true)).unwrap();
        assert!(
            r.contains("Allow: GET, HEAD\r\n") && r.ends_with("\r\n\r\n"),
            "{r}"
        );
    }
}
