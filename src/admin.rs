//! The admin port (`--admin-port`): `/healthz`, `/readyz` and `/metrics` over HTTP/1.1, on a
//! port of its own, so that probes and scrapes never become echo connections.
//!
//! One thread serves it with `poll(2)`: it never blocks on a client and holds no thread per
//! connection. Everything is bounded: at most [`MAX_CONNECTIONS`] connections at once (a new
//! one beyond takes the place of the oldest), [`MAX_REQUEST`] bytes of request, and
//! [`REQUEST_DEADLINE`] from accept to the end of the connection. Requests are parsed with
//! `httparse` (bare `\n` line endings included). After its response, a connection is shut for
//! writing and what the client still sends is read and thrown away until it closes or the
//! deadline passes: closing with unread input would reset the connection and could destroy
//! the response on its way.

use std::io::{ErrorKind, Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use crate::connection::Job;
use crate::error::Error;
use crate::metrics::Gauges;
use crate::pool::Gauge;
use crate::server::Context;
use crate::threads::{Background, Stop};

/// Admin connections open at once; a new one beyond takes the oldest one's place.
pub(crate) const MAX_CONNECTIONS: usize = 128;
/// The longest request (request line, headers and body) read.
const MAX_REQUEST: usize = 8 * 1024;
/// The time a connection has, from accept to its end.
const REQUEST_DEADLINE: Duration = Duration::from_secs(1);
/// How often the loop looks at the stop request when nothing happens.
const TICK: Duration = Duration::from_millis(100);
/// Headers parsed at most.
const MAX_HEADERS: usize = 32;

/// What the endpoints report on.
pub(crate) struct Sources {
    /// Settings, counters, open connections, log budget.
    pub(crate) ctx: Arc<Context>,
    /// The worker pool's threads.
    pub(crate) workers: Gauge<Job>,
    /// False from the moment shutdown begins.
    pub(crate) ready: Arc<AtomicBool>,
    /// When the server started, in seconds since the Unix epoch.
    pub(crate) started: f64,
}

/// The running admin endpoint (`tcp-echo-admin`); dropping it stops and joins its thread.
pub(crate) struct Admin {
    _thread: Background,
}

impl Admin {
    /// Serves `listener` on a thread of its own.
    pub(crate) fn start(listener: TcpListener, sources: Sources) -> Result<Admin, Error> {
        Background::start("tcp-echo-admin", move |stop| {
            serve(&listener, &sources, &stop)
        })
        .map(|thread| Admin { _thread: thread })
    }
}

/// Where one admin connection is.
enum State {
    /// Reading its request.
    Reading,
    /// Writing its response: the bytes, and how many are written.
    Writing(Vec<u8>, usize),
    /// Response written, write side shut: reading and discarding until the client closes.
    Lingering,
}

/// One admin connection: a request and its response.
struct Exchange {
    stream: TcpStream,
    deadline: Instant,
    request: Vec<u8>,
    state: State,
}

impl Exchange {
    /// Whether it is over (the client closed after its response, or failed).
    fn over(&self, now: Instant) -> bool {
        now >= self.deadline
    }
}

fn serve(listener: &TcpListener, sources: &Sources, stop: &Stop) {
    if listener.set_nonblocking(true).is_err() {
        log::error!("admin endpoint: cannot make its listener non-blocking");
        return;
    }
    defer_accept(listener);
    let mut conns: Vec<Exchange> = Vec::new();
    while !stop.requested() {
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
            events: match c.state {
                State::Writing(..) => libc::POLLOUT,
                State::Reading | State::Lingering => libc::POLLIN,
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
        conns.retain(|c| !c.over(now));
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
fn accept(listener: &TcpListener, conns: &mut Vec<Exchange>, sources: &Sources) {
    loop {
        match listener.accept() {
            Ok((stream, _)) => {
                if stream.set_nonblocking(true).is_err() {
                    continue;
                }
                let mut conn = Exchange {
                    stream,
                    deadline: Instant::now() + REQUEST_DEADLINE,
                    request: Vec::new(),
                    state: State::Reading,
                };
                step(&mut conn, sources);
                if !conn.over(Instant::now()) {
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

/// What reading a connection's input found.
enum Input {
    /// Everything available was read.
    Drained,
    /// The client has sent all it will (it may still read: a half-close).
    Ended,
    /// The connection failed.
    Failed,
}

/// Reads what is available into `into` (at most `limit` bytes in all; more is discarded).
fn read_available(stream: &mut TcpStream, into: &mut Vec<u8>, limit: usize) -> Input {
    let mut buf = [0u8; 1024];
    loop {
        match stream.read(&mut buf) {
            Ok(0) => return Input::Ended,
            Ok(n) => {
                let room = limit.saturating_sub(into.len()).min(n);
                into.extend_from_slice(&buf[..room]);
                if into.len() >= limit {
                    return Input::Drained;
                }
            }
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(e) if e.kind() == ErrorKind::WouldBlock => return Input::Drained,
            Err(_) => return Input::Failed,
        }
    }
}

/// Moves one connection on: reads its request and answers it, writes more of the answer, or
/// reads and discards what comes after it.
fn step(c: &mut Exchange, sources: &Sources) {
    if let State::Reading = c.state {
        // One byte past the limit tells an oversized request from one that fits exactly.
        let input = read_available(&mut c.stream, &mut c.request, MAX_REQUEST + 1);
        let response = match parse(&c.request) {
            Parse::Complete(request) => Some(answer(&request, sources)),
            Parse::Invalid => Some(respond(400, "text/plain", b"bad request\n", false)),
            Parse::Partial if c.request.len() > MAX_REQUEST => {
                Some(respond(431, "text/plain", b"request too large\n", false))
            }
            Parse::Partial => None,
        };
        match (response, input) {
            (_, Input::Failed) => {
                c.deadline = Instant::now();
                return;
            }
            (Some(r), _) => c.state = State::Writing(r, 0),
            // The client left without a whole request.
            (None, Input::Ended) => {
                c.deadline = Instant::now();
                return;
            }
            (None, Input::Drained) => return,
        }
    }
    if let State::Writing(r, n) = &mut c.state {
        while *n < r.len() {
            match c.stream.write(&r[*n..]) {
                Ok(k) if k > 0 => *n += k,
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(e) if e.kind() == ErrorKind::WouldBlock => return,
                // The client is gone: drop the connection now rather than poll it again.
                _ => {
                    c.deadline = Instant::now();
                    return;
                }
            }
        }
        let _ = c.stream.shutdown(Shutdown::Write);
        c.state = State::Lingering;
    }
    if let State::Lingering = c.state {
        let mut sink = Vec::new();
        match read_available(&mut c.stream, &mut sink, 0) {
            Input::Drained => {}
            Input::Ended | Input::Failed => c.deadline = Instant::now(),
        }
    }
}

/// A request, as far as the endpoints care.
struct Request<'a> {
    method: &'a str,
    path: &'a str,
    body: &'a [u8],
}

/// What the bytes of a request so far are.
enum Parse<'a> {
    /// A whole request (head, and the body its `Content-Length` announces).
    Complete(Request<'a>),
    /// Not whole yet.
    Partial,
    /// Not HTTP/1.x.
    Invalid,
}

/// Parses `raw` with `httparse`.
fn parse(raw: &[u8]) -> Parse<'_> {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut req = httparse::Request::new(&mut headers);
    let head = match req.parse(raw) {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) => return Parse::Partial,
        Err(_) => return Parse::Invalid,
    };
    let length = req
        .headers
        .iter()
        .find(|h| h.name.eq_ignore_ascii_case("content-length"))
        .map(|h| {
            std::str::from_utf8(h.value)
                .ok()
                .and_then(|v| v.trim().parse::<usize>().ok())
        });
    let body = match length {
        None => 0,
        Some(Some(n)) => n,
        Some(None) => return Parse::Invalid,
    };
    if raw.len() < head + body {
        return Parse::Partial;
    }
    match (req.method, req.path) {
        (Some(method), Some(target)) => Parse::Complete(Request {
            method,
            path: target.split('?').next().unwrap_or_default(),
            body: &raw[head..head + body],
        }),
        _ => Parse::Invalid,
    }
}

/// The response to a complete request.
fn answer(request: &Request<'_>, sources: &Sources) -> Vec<u8> {
    if request.path == "/fault" {
        return fault(request, sources);
    }
    let head = request.method == "HEAD";
    if request.method != "GET" && !head {
        return method_not_allowed("GET, HEAD");
    }
    match request.path {
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

/// `/fault`: `GET` shows the SPEC set now (empty when none); with `--admin-control`, `PUT`
/// sets the SPEC in the body and `DELETE` clears it (without it, both answer 403).
fn fault(request: &Request<'_>, sources: &Sources) -> Vec<u8> {
    let ctx = &sources.ctx;
    let current = || {
        ctx.faults
            .current()
            .map_or_else(String::new, |s| format!("{s}\n"))
    };
    match request.method {
        "GET" | "HEAD" => respond(
            200,
            "text/plain",
            current().as_bytes(),
            request.method == "HEAD",
        ),
        "PUT" | "DELETE" if !ctx.config.admin_control => respond(
            403,
            "text/plain",
            b"changing faults needs --admin-control (ECHO_ADMIN_CONTROL=true)\n",
            false,
        ),
        "PUT" => {
            let text = String::from_utf8_lossy(request.body);
            match text.trim().parse::<crate::fault::Spec>() {
                Ok(spec) => {
                    ctx.set_fault(Some(spec));
                    respond(200, "text/plain", current().as_bytes(), false)
                }
                Err(e) => respond(400, "text/plain", format!("{e}\n").as_bytes(), false),
            }
        }
        "DELETE" => {
            ctx.set_fault(None);
            respond(200, "text/plain", b"", false)
        }
        _ => method_not_allowed("GET, HEAD, PUT, DELETE"),
    }
}

/// A 405 that names the methods allowed.
fn method_not_allowed(allow: &str) -> Vec<u8> {
    response(
        405,
        "text/plain",
        b"method not allowed\n",
        false,
        &format!("Allow: {allow}\r\n"),
    )
}

fn respond(status: u16, content_type: &str, body: &[u8], head: bool) -> Vec<u8> {
    response(status, content_type, body, head, "")
}

/// A response with `extra` headers (each ending in CRLF).
fn response(status: u16, content_type: &str, body: &[u8], head: bool, extra: &str) -> Vec<u8> {
    let reason = match status {
        200 => "OK",
        400 => "Bad Request",
        403 => "Forbidden",
        404 => "Not Found",
        405 => "Method Not Allowed",
        431 => "Request Header Fields Too Large",
        _ => "Service Unavailable",
    };
    let mut out = format!(
        "HTTP/1.1 {status} {reason}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\n\
         {extra}Connection: close\r\n\r\n",
        body.len()
    )
    .into_bytes();
    if !head {
        out.extend_from_slice(body);
    }
    out
}

/// The metrics in Prometheus's text format.
fn metrics(sources: &Sources) -> String {
    let ctx = &sources.ctx;
    ctx.metrics.render(&Gauges {
        open: ctx.registry.len() as u64,
        workers: sources.workers.threads() as u64,
        max_connections: ctx.config.max_connections as u64,
        log_suppressed: ctx.log_budget.suppressed(),
        started: sources.started,
        refusing: ctx.gate.refusing(),
    })
}

/// Now, in seconds since the Unix epoch.
pub(crate) fn now_unix() -> f64 {
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
        let r = String::from_utf8(method_not_allowed("GET, HEAD")).unwrap();
        assert!(
            r.starts_with("HTTP/1.1 405 ") && r.contains("Allow: GET, HEAD\r\n"),
            "{r}"
        );
    }

    #[test]
    fn requests_are_whole_with_bare_line_feeds_and_with_their_body() {
        let whole = |raw: &[u8]| matches!(parse(raw), Parse::Complete(_));
        assert!(whole(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n"));
        assert!(whole(b"GET /healthz HTTP/1.1\nHost: x\n\n"));
        assert!(!whole(b"GET /healthz HTTP/1.1\r\nHost: x\r\n"));
        assert!(!whole(
            b"PUT /fault HTTP/1.1\r\nContent-Length: 5\r\n\r\nabc"
        ));
        assert!(whole(
            b"PUT /fault HTTP/1.1\r\nContent-Length: 5\r\n\r\nabcde"
        ));
        assert!(matches!(
            parse(b"\x16\x03\x01 garbage\r\n\r\n"),
            Parse::Invalid
        ));
        assert!(matches!(
            parse(b"GET / HTTP/1.1\r\nContent-Length: lots\r\n\r\n"),
            Parse::Invalid
        ));
        match parse(b"GET /metrics?x=1 HTTP/1.0\r\n\r\n") {
            Parse::Complete(r) => assert_eq!((r.method, r.path), ("GET", "/metrics")),
            _ => panic!("not parsed"),
        }
    }
}
