//! Test support: run the real `tcp-echo` binary on port 0, read its log, talk to it.
//!
//! Every wait has a deadline; nothing sleeps to synchronise.
#![allow(dead_code)]

use std::io::{BufRead, BufReader, ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Condvar, Mutex};
use std::thread;
use std::time::{Duration, Instant};

/// Default deadline of a wait that should succeed.
pub const DEADLINE: Duration = Duration::from_secs(15);

/// Variables the server reads; tests start from none of them set.
pub const SERVER_VARS: [&str; 32] = [
    "ECHO_SHUTDOWN_DELAY",
    "ECHO_FAULT",
    "ECHO_ADMIN_CONTROL",
    "ECHO_UDP",
    "ECHO_TLS_PORT",
    "ECHO_TLS_CERT",
    "ECHO_TLS_KEY",
    "ECHO_TLS_NAMES",
    "ECHO_TLS_CLIENT_CA",
    "ECHO_TLS_CLIENT_AUTH",
    "ECHO_TLS_ALPN",
    "ECHO_TLS_HANDSHAKE_TIMEOUT",
    "TCP_PORT",
    "ECHO_PREFIX",
    "ECHO_BIND",
    "ECHO_MAX_CONNECTIONS",
    "ECHO_IDLE_TIMEOUT",
    "ECHO_MAX_LINE",
    "ECHO_MAX_DURATION",
    "ECHO_DRAIN_TIMEOUT",
    "ECHO_SOCKET_BUFFER",
    "ECHO_PROXY_PROTOCOL",
    "ECHO_BANNER_CLIENT",
    "ECHO_ADMIN_PORT",
    "ECHO_BANNER",
    "NODE_NAME",
    "POD_NAME",
    "POD_NAMESPACE",
    "POD_IP",
    "SERVICE_ACCOUNT",
    "RUST_LOG",
    "RUST_BACKTRACE",
];

/// The binary under test.
pub fn binary() -> &'static str {
    env!("CARGO_BIN_EXE_tcp-echo")
}

/// A command for the binary with a clean environment for the server's variables.
pub fn command(args: &[&str], envs: &[(&str, &str)]) -> Command {
    let mut cmd = Command::new(binary());
    for var in SERVER_VARS {
        cmd.env_remove(var);
    }
    cmd.args(args);
    for (k, v) in envs {
        cmd.env(k, v);
    }
    cmd
}

/// The log lines a process wrote to stderr, with a condition variable for waiters.
#[derive(Default)]
pub struct Log {
    lines: Mutex<Vec<String>>,
    changed: Condvar,
    closed: Mutex<bool>,
}

impl Log {
    /// Reads `source` line by line into a new log (in a thread).
    pub fn collect(source: impl Read + Send + 'static) -> Arc<Log> {
        let log = Arc::new(Log::default());
        let writer = Arc::clone(&log);
        thread::spawn(move || {
            let mut reader = BufReader::new(source);
            let mut line = Vec::new();
            loop {
                line.clear();
                match reader.read_until(b'\n', &mut line) {
                    Ok(0) | Err(_) => break,
                    Ok(_) => {
                        let text = String::from_utf8_lossy(&line)
                            .trim_end_matches('\n')
                            .to_string();
                        writer.lines.lock().unwrap().push(text);
                        writer.changed.notify_all();
                    }
                }
            }
            *writer.closed.lock().unwrap() = true;
            writer.changed.notify_all();
        });
        log
    }

    /// All lines so far.
    pub fn lines(&self) -> Vec<String> {
        self.lines.lock().unwrap().clone()
    }

    /// Lines containing `needle`.
    pub fn matching(&self, needle: &str) -> Vec<String> {
        self.lines()
            .into_iter()
            .filter(|l| l.contains(needle))
            .collect()
    }

    /// Waits until some line satisfies `pred`; panics with the log after `timeout`.
    pub fn wait_for(&self, what: &str, timeout: Duration, pred: impl Fn(&str) -> bool) -> String {
        let deadline = Instant::now() + timeout;
        let mut lines = self.lines.lock().unwrap();
        loop {
            if let Some(l) = lines.iter().find(|l| pred(l)) {
                return l.clone();
            }
            let now = Instant::now();
            assert!(
                now < deadline,
                "timed out waiting for log line: {what}\nlog:\n{}",
                lines.join("\n")
            );
            lines = self
                .changed
                .wait_timeout(lines, (deadline - now).min(Duration::from_millis(100)))
                .unwrap()
                .0;
        }
    }

    /// Waits until the process's end of the pipe is closed and every line has been read;
    /// panics after `timeout`.
    pub fn wait_closed(&self, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        let mut closed = self.closed.lock().unwrap();
        while !*closed {
            let now = Instant::now();
            assert!(now < deadline, "the server's log was not closed in time");
            closed = self
                .changed
                .wait_timeout(closed, (deadline - now).min(Duration::from_millis(50)))
                .unwrap()
                .0;
        }
    }

    /// Waits until at least `n` lines contain `needle`.
    pub fn wait_count(&self, needle: &str, n: usize, timeout: Duration) -> Vec<String> {
        let deadline = Instant::now() + timeout;
        loop {
            let found = self.matching(needle);
            if found.len() >= n {
                return found;
            }
            assert!(
                Instant::now() < deadline,
                "timed out waiting for {n} lines with {needle:?} (have {})\nlog:\n{}",
                found.len(),
                self.lines().join("\n")
            );
            let lines = self.lines.lock().unwrap();
            let _ = self
                .changed
                .wait_timeout(lines, Duration::from_millis(50))
                .unwrap();
        }
    }
}

/// A running server process; killed when dropped.
pub struct Server {
    child: Child,
    /// Where it listens (from its `listening on` lines, port 0 resolved), in `--port` order.
    pub addrs: Vec<SocketAddr>,
    /// Where its TLS ports listen (`listening on ADDR (TLS)`), in `--tls-port` order.
    pub tls_addrs: Vec<SocketAddr>,
    /// Where it echoes UDP (`listening on ADDR (UDP)`), in `--port` order.
    pub udp_addrs: Vec<SocketAddr>,
    /// Its stderr.
    pub log: Arc<Log>,
}

impl Server {
    /// Starts the binary with `args` and `envs` and waits until it listens.
    pub fn start(args: &[&str], envs: &[(&str, &str)]) -> Server {
        Server::spawn(command(args, envs))
    }

    /// Starts `cmd` (a tcp-echo, however it is wrapped) and waits until it listens.
    pub fn spawn(mut cmd: Command) -> Server {
        let mut child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start tcp-echo");
        let log = Log::collect(child.stderr.take().expect("stderr"));
        log.wait_for("settings line", DEADLINE, |l| l.contains("settings:"));
        let (mut addrs, mut tls_addrs, mut udp_addrs) = (Vec::new(), Vec::new(), Vec::new());
        for l in log.matching("listening on ") {
            let text = l.rsplit("listening on ").next().unwrap().trim();
            let (text, list) = if let Some(t) = text.strip_suffix(" (TLS)") {
                (t, &mut tls_addrs)
            } else if let Some(t) = text.strip_suffix(" (UDP)") {
                (t, &mut udp_addrs)
            } else {
                (text, &mut addrs)
            };
            let addr: SocketAddr = text
                .parse()
                .unwrap_or_else(|_| panic!("bad address in {l:?}"));
            list.push(SocketAddr::new("127.0.0.1".parse().unwrap(), addr.port()));
        }
        Server {
            child,
            addrs,
            tls_addrs,
            udp_addrs,
            log,
        }
    }

    /// Starts on one free port with these extra arguments.
    pub fn with(args: &[&str]) -> Server {
        let mut all = vec!["--port", "0"];
        all.extend_from_slice(args);
        Server::start(&all, &[])
    }

    /// The admin port's address (from the `admin endpoint on http://ADDR:` line), on loopback.
    pub fn admin(&self) -> SocketAddr {
        let line = self.log.wait_for("admin endpoint line", DEADLINE, |l| {
            l.contains("admin endpoint on http://")
        });
        let addr = line.rsplit("http://").next().unwrap();
        let addr = addr.split_once(": ").map_or(addr, |(a, _)| a).trim();
        let addr: SocketAddr = addr
            .parse()
            .unwrap_or_else(|_| panic!("bad admin address in {line:?}"));
        SocketAddr::new("127.0.0.1".parse().unwrap(), addr.port())
    }

    /// The process id.
    pub fn pid(&self) -> i32 {
        self.child.id() as i32
    }

    /// Connects to the first listener.
    pub fn connect(&self) -> TcpStream {
        connect(self.addrs[0])
    }

    /// Sends a signal (`libc::SIGTERM`, ...).
    pub fn signal(&self, sig: i32) {
        // SAFETY: kill(2) on our own child's pid.
        let rc = unsafe { libc::kill(self.pid(), sig) };
        assert_eq!(rc, 0, "kill failed");
    }

    /// Waits for the process to exit; panics after `timeout`.
    pub fn wait_exit(&mut self, timeout: Duration) -> ExitStatus {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.child.try_wait().expect("try_wait") {
                // Every record is in the pipe; wait until the log has read them all.
                self.log
                    .wait_closed(deadline.saturating_duration_since(Instant::now()));
                return status;
            }
            assert!(
                Instant::now() < deadline,
                "server did not exit within {timeout:?}\nlog:\n{}",
                self.log.lines().join("\n")
            );
            thread::sleep(Duration::from_millis(5));
        }
    }

    /// Whether the process is still running.
    pub fn running(&mut self) -> bool {
        self.child.try_wait().expect("try_wait").is_none()
    }

    /// `Threads:` from /proc/PID/status.
    pub fn threads(&self) -> usize {
        proc_status(self.pid(), "Threads:")
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A field of /proc/PID/status as a number (`VmRSS:` in kB, `Threads:`).
pub fn proc_status(pid: i32, field: &str) -> usize {
    try_proc_status(pid, field).unwrap_or_else(|| panic!("no {field} in /proc/{pid}/status"))
}

/// [`proc_status`], or `None` once the process is gone (a zombie has no `VmRSS:`).
pub fn try_proc_status(pid: i32, field: &str) -> Option<usize> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find(|l| l.starts_with(field))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
}

/// A client that sends and never reads, so that the server is blocked writing to it.
pub fn stuck_client(s: &Server) -> TcpStream {
    let mut stuck = s.connect();
    stuck
        .set_write_timeout(Some(Duration::from_millis(200)))
        .unwrap();
    let chunk = [b'q'; 65536];
    let deadline = Instant::now() + DEADLINE;
    loop {
        match stuck.write(&chunk) {
            Ok(_) => assert!(Instant::now() < deadline, "buffers never filled"),
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => break,
            Err(e) => panic!("stuck client write: {e}"),
        }
    }
    stuck
}

/// Connects a socket with a small receive buffer (set before connecting, so the window stays
/// small): the server's writes to it block early.
pub fn connect_small_window(addr: SocketAddr, rcvbuf: usize) -> TcpStream {
    let sock = socket2::Socket::new(
        socket2::Domain::for_address(addr),
        socket2::Type::STREAM,
        None,
    )
    .unwrap();
    sock.set_recv_buffer_size(rcvbuf).unwrap();
    sock.connect_timeout(&addr.into(), DEADLINE).unwrap();
    let s: TcpStream = sock.into();
    s.set_read_timeout(Some(DEADLINE)).unwrap();
    s.set_write_timeout(Some(DEADLINE)).unwrap();
    s
}

/// Connects with read and write timeouts of [`DEADLINE`].
pub fn connect(addr: SocketAddr) -> TcpStream {
    let s = TcpStream::connect_timeout(&addr, DEADLINE)
        .unwrap_or_else(|e| panic!("connect {addr}: {e}"));
    s.set_read_timeout(Some(DEADLINE)).unwrap();
    s.set_write_timeout(Some(DEADLINE)).unwrap();
    s
}

/// Reads until `want` bytes have arrived; panics on EOF or timeout with what came.
pub fn read_exactly(s: &mut TcpStream, want: usize) -> Vec<u8> {
    let mut buf = vec![0u8; want];
    let mut got = 0;
    while got < want {
        match s.read(&mut buf[got..]) {
            Ok(0) => panic!(
                "EOF after {got} of {want} bytes: {:?}",
                String::from_utf8_lossy(&buf[..got])
            ),
            Ok(n) => got += n,
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(e) => panic!(
                "read failed after {got} of {want} bytes: {e}: {:?}",
                String::from_utf8_lossy(&buf[..got])
            ),
        }
    }
    buf
}

/// Reads until EOF (within the socket's read timeout).
pub fn read_to_eof(s: &mut TcpStream) -> Vec<u8> {
    let mut out = Vec::new();
    s.read_to_end(&mut out)
        .unwrap_or_else(|e| panic!("read to EOF: {e}; got {:?}", String::from_utf8_lossy(&out)));
    out
}

/// Sends `data`, half-closes, and returns everything until the server closes.
pub fn exchange(addr: SocketAddr, data: &[u8]) -> Vec<u8> {
    let mut s = connect(addr);
    s.write_all(data).unwrap();
    s.shutdown(std::net::Shutdown::Write).unwrap();
    read_to_eof(&mut s)
}

/// `GET path` over HTTP/1.1 as a probe sends it; the status and body, or `None` when the
/// request fails (refused, reset, no answer within a second).
pub fn http_get(addr: SocketAddr, path: &str) -> Option<(u16, String)> {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(1)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(1))).ok()?;
    let request = format!("GET {path} HTTP/1.1\r\nHost: tcp-echo\r\nConnection: close\r\n\r\n");
    s.write_all(request.as_bytes()).ok()?;
    let mut raw = Vec::new();
    s.read_to_end(&mut raw).ok()?;
    let text = String::from_utf8_lossy(&raw);
    let status = text.split(' ').nth(1)?.parse().ok()?;
    let body = text.split_once("\r\n\r\n")?.1.to_string();
    Some((status, body))
}

/// Asserts that nothing arrives on `s` within `quiet` (used to check that the server does NOT
/// speak, e.g. no banner before the client does).
pub fn assert_silent(s: &mut TcpStream, quiet: Duration) {
    s.set_read_timeout(Some(quiet)).unwrap();
    let mut b = [0u8; 256];
    match s.read(&mut b) {
        Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
        Ok(n) => panic!(
            "expected silence, got {:?}",
            String::from_utf8_lossy(&b[..n])
        ),
        Err(e) => panic!("expected silence, got error {e}"),
    }
    s.set_read_timeout(Some(DEADLINE)).unwrap();
}

/// Polls `cond` every few milliseconds until it holds; panics after `timeout`.
pub fn wait_until(what: &str, timeout: Duration, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !cond() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        thread::sleep(Duration::from_millis(5));
    }
}

/// Runs the binary to completion; returns (exit code, stdout, stderr).
pub fn run_to_exit(args: &[&str], envs: &[(&str, &str)]) -> (Option<i32>, String, String) {
    let mut child = command(args, envs)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start tcp-echo");
    let deadline = Instant::now() + DEADLINE;
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            panic!("tcp-echo {args:?} did not exit");
        }
        thread::sleep(Duration::from_millis(5));
    };
    let mut out = String::new();
    let mut err = String::new();
    child
        .stdout
        .take()
        .unwrap()
        .read_to_string(&mut out)
        .unwrap();
    child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut err)
        .unwrap();
    (status.code(), out, err)
}

/// Writes `data` without waiting for anything (helper for flooding tests).
pub fn send(s: &mut TcpStream, data: &[u8]) {
    s.write_all(data).unwrap_or_else(|e| panic!("write: {e}"));
}

/// The process's CPU time (user + system) from /proc/PID/stat.
pub fn cpu_time(pid: i32) -> Duration {
    try_cpu_time(pid).expect("read /proc/PID/stat")
}

/// The process's CPU time, or `None` when it has exited.
pub fn try_cpu_time(pid: i32) -> Option<Duration> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the command name (which is in parentheses and may contain spaces).
    let rest = &stat[stat.rfind(')').expect("stat format") + 2..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks: u64 = fields[11].parse::<u64>().unwrap() + fields[12].parse::<u64>().unwrap();
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as u64;
    Some(Duration::from_millis(ticks * 1000 / hz))
}

/// Open file descriptors of a process.
pub fn open_fds(pid: i32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .map(|d| d.count())
        .unwrap_or(0)
}

/// A command for the binary whose open-file limit (soft and hard) is `limit`.
pub fn command_with_fd_limit(args: &[&str], envs: &[(&str, &str)], limit: u64) -> Command {
    command_with_fd_limits(args, envs, limit, limit)
}

/// A command for the binary started with these soft and hard open-file limits.
pub fn command_with_fd_limits(
    args: &[&str],
    envs: &[(&str, &str)],
    soft: u64,
    hard: u64,
) -> Command {
    use std::os::unix::process::CommandExt;
    let mut cmd = command(args, envs);
    // SAFETY: setrlimit is async-signal-safe; nothing else runs between fork and exec.
    unsafe {
        cmd.pre_exec(move || {
            let rl = libc::rlimit {
                rlim_cur: soft,
                rlim_max: hard,
            };
            if libc::setrlimit(libc::RLIMIT_NOFILE, &rl) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    cmd
}

/// One reading of a process's resources.
#[derive(Debug, Clone, Copy, Default)]
pub struct Sample {
    /// Time since monitoring began.
    pub at: Duration,
    /// Resident set size, kB.
    pub rss_kb: usize,
    /// Threads.
    pub threads: usize,
    /// Open file descriptors.
    pub fds: usize,
}

/// Samples a process every `every` in a thread until stopped.
pub struct Monitor {
    pid: i32,
    stop: Arc<std::sync::atomic::AtomicBool>,
    handle: thread::JoinHandle<Vec<Sample>>,
    cpu_start: Duration,
}

/// What a [`Monitor`] saw.
#[derive(Debug, Clone)]
pub struct Usage {
    /// Every sample, in order.
    pub samples: Vec<Sample>,
    /// CPU time the process used while monitored.
    pub cpu: Duration,
}

impl Usage {
    /// Largest RSS seen, kB.
    pub fn peak_rss_kb(&self) -> usize {
        self.samples.iter().map(|s| s.rss_kb).max().unwrap_or(0)
    }
    /// Most threads seen.
    pub fn peak_threads(&self) -> usize {
        self.samples.iter().map(|s| s.threads).max().unwrap_or(0)
    }
    /// Most descriptors seen.
    pub fn peak_fds(&self) -> usize {
        self.samples.iter().map(|s| s.fds).max().unwrap_or(0)
    }
    /// The last sample.
    pub fn last(&self) -> Sample {
        self.samples.last().copied().unwrap_or_default()
    }
}

/// Reads one sample of `pid` now.
pub fn sample(pid: i32, at: Duration) -> Sample {
    try_sample(pid, at).unwrap_or_else(|| panic!("process {pid} is gone"))
}

/// [`sample`], or `None` once the process has exited.
pub fn try_sample(pid: i32, at: Duration) -> Option<Sample> {
    Some(Sample {
        at,
        rss_kb: try_proc_status(pid, "VmRSS:")?,
        threads: try_proc_status(pid, "Threads:")?,
        fds: open_fds(pid),
    })
}

impl Monitor {
    /// Starts sampling `pid` every `every`.
    pub fn start(pid: i32, every: Duration) -> Monitor {
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let flag = Arc::clone(&stop);
        let cpu_start = cpu_time(pid);
        let handle = thread::spawn(move || {
            let start = Instant::now();
            let mut samples = Vec::new();
            while !flag.load(std::sync::atomic::Ordering::SeqCst) {
                // The process may exit while monitored (shutdown cases): stop there.
                let Some(s) = try_sample(pid, start.elapsed()) else {
                    break;
                };
                samples.push(s);
                thread::sleep(every);
            }
            samples
        });
        Monitor {
            pid,
            stop,
            handle,
            cpu_start,
        }
    }

    /// Stops sampling and returns what was seen (CPU time is 0 if the process has exited).
    pub fn stop(self) -> Usage {
        let cpu =
            try_cpu_time(self.pid).map_or(Duration::ZERO, |t| t.saturating_sub(self.cpu_start));
        self.stop.store(true, std::sync::atomic::Ordering::SeqCst);
        let samples = self.handle.join().expect("monitor thread");
        Usage { samples, cpu }
    }
}

/// The soft open-file limit of a running process, from /proc/PID/limits.
pub fn soft_fd_limit(pid: i32) -> u64 {
    let limits = std::fs::read_to_string(format!("/proc/{pid}/limits")).expect("limits");
    let line = limits
        .lines()
        .find(|l| l.starts_with("Max open files"))
        .expect("Max open files");
    line.split_whitespace().nth(3).unwrap().parse().unwrap()
}

/// Raises this process's open-file soft limit to its hard limit (clients need many sockets).
pub fn raise_fd_limit() -> u64 {
    let mut rl = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit with a valid struct.
    unsafe {
        libc::getrlimit(libc::RLIMIT_NOFILE, &mut rl);
        rl.rlim_cur = rl.rlim_max;
        libc::setrlimit(libc::RLIMIT_NOFILE, &rl);
    }
    rl.rlim_cur
}

/// Where the stress suite writes one JSON file per case, rendered into RELIABILITY.md.
pub fn results_dir() -> std::path::PathBuf {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("target/stress");
    std::fs::create_dir_all(&dir).expect("create target/stress");
    dir
}

/// The value of `name` (e.g. `bytes=`) in a log line: up to the next space, or a whole
/// double-quoted value (`proxy="v2 LOCAL"`), without its quotes.
pub fn field<'a>(line: &'a str, name: &str) -> &'a str {
    let start = line
        .find(name)
        .unwrap_or_else(|| panic!("no {name} in {line}"))
        + name.len();
    let rest = &line[start..];
    match rest.strip_prefix('"') {
        Some(quoted) => quoted.split('"').next().unwrap_or_default(),
        None => rest.split_whitespace().next().unwrap_or_default(),
    }
}

/// The echo a client should get for `input`, per the specification: every line (the final
/// one may lack `\n`) preceded by the prefix and one space. Written here, apart from the
/// server's code, so that the tests do not share its mistakes.
pub fn expected_echo(input: &[u8], prefix: Option<&str>) -> Vec<u8> {
    let mut out = Vec::with_capacity(input.len());
    for line in input.split_inclusive(|&b| b == b'\n') {
        if let Some(p) = prefix.filter(|p| !p.is_empty()) {
            out.extend_from_slice(p.as_bytes());
            out.push(b' ');
        }
        out.extend_from_slice(line);
    }
    out
}

/// The connection id (uuid) of a `<uuid> - ...` log line.
pub fn connection_id(line: &str) -> String {
    let head = line.split(" - ").next().unwrap_or_default();
    head.rsplit(' ').next().unwrap_or_default().to_string()
}

/// Kernel memory of the established TCP sockets whose local port is `port` (the server's side
/// of its connections), from `ss -tm`: (sockets, bytes). Counts what a memory cgroup is charged
/// for them: receive queue, send queue and forward allocation (`r + w + f` of `skmem`).
pub fn socket_memory(port: u16) -> (usize, u64) {
    let out = Command::new("ss")
        .args([
            "-tmnH",
            "state",
            "established",
            &format!("( sport = :{port} )"),
        ])
        .output()
        .expect("ss (make stress installs iproute2)");
    assert!(out.status.success(), "ss failed");
    let text = String::from_utf8_lossy(&out.stdout);
    let mut sockets = 0;
    let mut bytes = 0;
    for skmem in text.split("skmem:(").skip(1) {
        let fields = skmem.split(')').next().unwrap_or_default();
        let value = |key: char| -> u64 {
            fields
                .split(',')
                .find(|f| f.starts_with(key) && f[1..].chars().all(|c| c.is_ascii_digit()))
                .and_then(|f| f[1..].parse().ok())
                .unwrap_or(0)
        };
        sockets += 1;
        bytes += value('r') + value('w') + value('f');
    }
    (sockets, bytes)
}

/// What the kernel shows of a stalled connection, for a failure message: both ends of the TCP
/// connection whose client port is `client_port` (`ss -tnmi`: queues, windows, retransmits),
/// and each of the server's threads with its state and the kernel function it waits in.
pub fn stall_snapshot(pid: i32, client_port: u16) -> String {
    let ss = Command::new("ss")
        .args([
            "-tnmiaH",
            &format!("( sport = :{client_port} or dport = :{client_port} )"),
        ])
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
        .unwrap_or_else(|e| format!("ss: {e}"));
    // Threads grouped by (name, state, kernel wait), with a count: 100 idle workers are one line.
    let mut threads: std::collections::BTreeMap<String, usize> = Default::default();
    if let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) {
        for task in tasks.flatten() {
            let dir = task.path();
            let read = |f: &str| {
                std::fs::read_to_string(dir.join(f))
                    .unwrap_or_default()
                    .trim()
                    .to_string()
            };
            // stat: "tid (comm) S ...": the state follows the comm's closing parenthesis.
            let stat = read("stat");
            let state = stat
                .rsplit(')')
                .next()
                .unwrap_or("")
                .split_whitespace()
                .next();
            let key = format!(
                "{} {} {}",
                read("comm"),
                state.unwrap_or("?"),
                read("wchan")
            );
            *threads.entry(key).or_default() += 1;
        }
    }
    let threads: Vec<String> = threads.iter().map(|(k, n)| format!("{n} x {k}")).collect();
    format!(
        "sockets (ss -tnmi):\n{ss}\nserver threads (count x name state wchan):\n{}",
        threads.join("\n")
    )
}

/// `KernelStack:` of /proc/meminfo, kB (machine-wide: thread stacks RSS does not show).
pub fn kernel_stack_kb() -> u64 {
    std::fs::read_to_string("/proc/meminfo")
        .expect("meminfo")
        .lines()
        .find(|l| l.starts_with("KernelStack:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .expect("KernelStack")
}

/// What an interactive client (`nc`) has printed so far, read by a thread of its own.
pub struct Screen {
    text: Vec<u8>,
    chunks: std::sync::mpsc::Receiver<Vec<u8>>,
}

impl Screen {
    /// Starts reading `out` (a child's stdout) into the screen.
    pub fn of(mut out: impl Read + Send + 'static) -> Screen {
        let (tx, chunks) = std::sync::mpsc::channel::<Vec<u8>>();
        thread::spawn(move || {
            let mut buf = [0u8; 4096];
            while let Ok(n) = out.read(&mut buf) {
                if n == 0 || tx.send(buf[..n].to_vec()).is_err() {
                    break;
                }
            }
        });
        Screen {
            text: Vec::new(),
            chunks,
        }
    }

    /// Waits (within [`DEADLINE`]) until the screen ends with `want`; panics with what it shows.
    pub fn expect(&mut self, want: &str) {
        let deadline = Instant::now() + DEADLINE;
        while !String::from_utf8_lossy(&self.text).ends_with(want) {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.chunks.recv_timeout(left.max(Duration::from_millis(1))) {
                Ok(chunk) => self.text.extend_from_slice(&chunk),
                Err(_) => panic!(
                    "the client showed {:?}, expected it to end with {want:?}",
                    String::from_utf8_lossy(&self.text)
                ),
            }
        }
    }

    /// Everything shown so far.
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.text).into_owned()
    }
}
