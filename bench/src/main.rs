//! tcp-echo-bench: measures tcp-echo against peer servers in the same run.
//!
//! * `tcp-echo-bench run [--rounds N] [--secs S] [--tcp-echo PATH]`: the benchmark; writes
//!   `BENCHMARKS.md`, `bench/results.json` and `bench/plot.svg`.
//! * `tcp-echo-bench naive|tokio --port P [--prefix X]`: the peer servers.
//!
//! The load generator is pinned to core 0 and each server to core 1. The machine's speed
//! changes within seconds to minutes, so servers are compared only within a round: ping-pong
//! and the open-loop (paced) run start every server of a round at once and measure them in
//! alternating 250 ms windows; start-up launches them in turns; the other scenarios run the
//! servers one after another (in an order that rotates every round), a fresh process each
//! time. Ratios are taken per round and their median reported.

mod load;
mod peers;
mod proc;
mod report;
mod tls;
mod udp;

use std::collections::BTreeMap;
use std::net::{SocketAddr, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// One measurement: a server in a scenario in a round.
#[derive(Debug, Clone)]
pub struct Record {
    pub round: usize,
    pub scenario: String,
    pub server: String,
    pub metrics: BTreeMap<String, f64>,
}

/// How to start a server.
#[derive(Debug, Clone)]
pub struct Spec {
    pub name: String,
    pub program: PathBuf,
    pub args: Vec<String>,
    pub env: Vec<(String, String)>,
    pub prefix: String,
}

struct Running {
    child: Child,
    addr: SocketAddr,
}

impl Running {
    fn pid(&self) -> u32 {
        self.child.id()
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The command that starts `spec` on a port the OS chooses (the benchmark reads it back from
/// /proc), pinned to core 1 when `pin`.
fn command(spec: &Spec, pin: bool) -> Command {
    let mut cmd = if pin && proc::cores() >= 2 {
        let mut c = Command::new("taskset");
        c.args(["-c", "1"]).arg(&spec.program);
        c
    } else {
        Command::new(&spec.program)
    };
    cmd.args(&spec.args);
    if !spec.args.iter().any(|a| a == "--port") {
        cmd.args(["--port", "0"]);
    }
    // Nothing of the caller's environment reaches a server's settings: every ECHO_* variable,
    // the port, the log filter and the banner's variables are cleared.
    let settings = std::env::vars_os()
        .filter_map(|(k, _)| k.into_string().ok())
        .filter(|k| k.starts_with("ECHO_"));
    for var in settings.chain(
        [
            "RUST_LOG",
            "TCP_PORT",
            "NODE_NAME",
            "POD_NAME",
            "POD_NAMESPACE",
            "POD_IP",
            "SERVICE_ACCOUNT",
        ]
        .map(String::from),
    ) {
        cmd.env_remove(var);
    }
    cmd.envs(spec.env.iter().map(|(k, v)| (k, v)));
    // Logs go to /dev/null: their cost in the server is measured, a reader's is not.
    cmd.stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    cmd
}

fn start(spec: &Spec) -> Running {
    let mut child = command(spec, true)
        .spawn()
        .unwrap_or_else(|e| panic!("start {}: {e}", spec.name));
    let deadline = Instant::now() + Duration::from_secs(10);
    let addr: SocketAddr = loop {
        if let Some(port) = proc::listening_port(child.id()) {
            let addr = ([127, 0, 0, 1], port).into();
            if TcpStream::connect(addr).is_ok() {
                break addr;
            }
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            panic!("{} did not start", spec.name);
        }
        std::thread::sleep(Duration::from_millis(2));
    };
    // Guard the method itself: once the load generator is pinned to core 0, a server that
    // shares it measures the scheduler, not the server.
    let own = proc::allowed_cores(std::process::id());
    let server = proc::allowed_cores(child.id());
    assert!(
        own.as_deref() != Some("0") || server.as_deref() == Some("1"),
        "{}: load generator on cores {own:?}, server on {server:?}; expected 0 and 1",
        spec.name
    );
    Running { child, addr }
}

/// What the benchmark reads of a server process: CPU time, write syscalls (its log),
/// context switches of its live threads, and user and system clock ticks.
#[derive(Debug, Default, Clone, Copy)]
struct Usage {
    cpu: Duration,
    writes: u64,
    switches: u64,
    user_ticks: u64,
    system_ticks: u64,
}

impl Usage {
    /// `pid`'s counters now (a counter that cannot be read counts as 0).
    fn of(pid: u32) -> Usage {
        let (user_ticks, system_ticks) = proc::user_system_ticks(pid).unwrap_or_default();
        Usage {
            cpu: proc::cpu_time(pid).unwrap_or_default(),
            writes: proc::write_syscalls(pid).unwrap_or(0),
            switches: proc::context_switches(pid),
            user_ticks,
            system_ticks,
        }
    }

    /// What happened between `earlier` and `self`.
    fn since(self, earlier: Usage) -> Usage {
        Usage {
            cpu: self.cpu.saturating_sub(earlier.cpu),
            writes: self.writes.saturating_sub(earlier.writes),
            switches: self.switches.saturating_sub(earlier.switches),
            user_ticks: self.user_ticks.saturating_sub(earlier.user_ticks),
            system_ticks: self.system_ticks.saturating_sub(earlier.system_ticks),
        }
    }

    fn add(&mut self, other: Usage) {
        self.cpu += other.cpu;
        self.writes += other.writes;
        self.switches += other.switches;
        self.user_ticks += other.user_ticks;
        self.system_ticks += other.system_ticks;
    }

    /// Adds the server's CPU time and log writes per operation to `m`, and the share of its CPU
    /// spent in user space. (Context switches only count threads alive at both readings, so
    /// only ping-pong, whose connections outlive its windows, reports them.)
    fn per_op(&self, m: &mut BTreeMap<String, f64>, ops: f64) {
        if ops > 0.0 {
            m.insert(
                "server_us_per_op".into(),
                self.cpu.as_secs_f64() * 1e6 / ops,
            );
            m.insert("log_writes_per_op".into(), self.writes as f64 / ops);
        }
        let ticks = self.user_ticks + self.system_ticks;
        if ticks > 0 {
            m.insert("user_share".into(), self.user_ticks as f64 / ticks as f64);
        }
        m.insert("server_cpu_s".into(), self.cpu.as_secs_f64());
    }
}

/// Runs `f` against a fresh instance of `spec`, adding the server's CPU time per operation
/// (`f` returns its metrics and the operation count).
fn measure(
    spec: &Spec,
    f: impl FnOnce(&Running) -> (BTreeMap<String, f64>, f64),
) -> BTreeMap<String, f64> {
    let server = start(spec);
    let before = Usage::of(server.pid());
    let (mut m, ops) = f(&server);
    Usage::of(server.pid()).since(before).per_op(&mut m, ops);
    m
}

/// Round trips/s, latency quantiles and errors of a ping-pong result, and its operation count.
fn latency_metrics(r: &load::PingPong) -> (BTreeMap<String, f64>, f64) {
    let q = |p: f64| r.latency.value_at_quantile(p) as f64 / 1000.0;
    let m = BTreeMap::from([
        (
            "rt_per_s".to_string(),
            r.round_trips as f64 / r.elapsed.as_secs_f64(),
        ),
        ("p50_us".to_string(), q(0.5)),
        ("p99_us".to_string(), q(0.99)),
        ("p999_us".to_string(), q(0.999)),
        ("errors".to_string(), r.errors as f64),
    ]);
    (m, r.round_trips as f64)
}

/// Length of one timed window of ping-pong.
const WINDOW: Duration = Duration::from_millis(250);

/// How the clients of a latency scenario load their server.
#[derive(Debug, Clone, Copy)]
enum Pace {
    /// Closed loop: each client sends its next message as soon as the last echo is in.
    PingPong,
    /// Open loop, below saturation: each client sends once per this period.
    Every(Duration),
}

/// A latency scenario with `conns` clients against every server of `specs`: all are started
/// and connected first, then measured in short windows taken in turns (A B C, B C A, ...), so
/// that the machine's changes of speed, which come within seconds here, fall on all of them
/// alike. Each server is measured for about `secs` in all.
fn ping_pong(
    specs: &[&Spec],
    conns: usize,
    secs: Duration,
    message: load::Message,
    pace: Pace,
) -> Vec<BTreeMap<String, f64>> {
    let rt = load::runtime();
    let servers: Vec<Running> = specs.iter().map(|s| start(s)).collect();
    let mut clients: Vec<load::Clients> = servers
        .iter()
        .zip(specs)
        .map(|(server, spec)| {
            load::Clients::connect(&rt, server.addr, conns, &spec.prefix, message)
        })
        .collect();
    let n = specs.len();
    let windows = (secs.as_secs_f64() / WINDOW.as_secs_f64()).round().max(1.0) as usize;
    let mut results: Vec<Option<load::PingPong>> = (0..n).map(|_| None).collect();
    let mut usage = vec![Usage::default(); n];
    // The load generator's own CPU time and the wall time of each server's windows.
    let mut own_cpu = vec![Duration::ZERO; n];
    let mut wall = vec![Duration::ZERO; n];
    let me = std::process::id();
    for w in 0..windows {
        for k in 0..n {
            let i = (k + w) % n;
            let pid = servers[i].pid();
            let before = Usage::of(pid);
            // The load generator's CPU and the wall time cover the window alone, not the
            // /proc reads around it (a scan of every server thread for context switches).
            let own0 = proc::cpu_time(me).unwrap_or_default();
            let t = Instant::now();
            let r = match pace {
                Pace::PingPong => clients[i].ping_pong(&rt, WINDOW),
                Pace::Every(period) => clients[i].paced(&rt, period, WINDOW),
            };
            wall[i] += t.elapsed();
            own_cpu[i] += proc::cpu_time(me).unwrap_or_default().saturating_sub(own0);
            usage[i].add(Usage::of(pid).since(before));
            match &mut results[i] {
                Some(total) => total.merge(&r),
                slot => *slot = Some(r),
            }
        }
    }
    drop(clients);
    (0..n)
        .map(|i| {
            let r = results[i].take().expect("at least one window");
            let (mut m, ops) = latency_metrics(&r);
            usage[i].per_op(&mut m, ops);
            m.insert(
                "switches_per_op".into(),
                usage[i].switches as f64 / ops.max(1.0),
            );
            // How busy each core was: which side limits the round trips.
            let t = wall[i].as_secs_f64();
            m.insert("server_core_busy".into(), usage[i].cpu.as_secs_f64() / t);
            m.insert("client_core_busy".into(), own_cpu[i].as_secs_f64() / t);
            m
        })
        .collect()
}

fn streaming(spec: &Spec, conns: usize, line_len: usize, secs: Duration) -> BTreeMap<String, f64> {
    measure(spec, |s| {
        let r = load::streaming(s.addr, conns, line_len, secs, &spec.prefix);
        let t = r.elapsed.as_secs_f64();
        let m = BTreeMap::from([
            ("mb_per_s".to_string(), r.bytes as f64 / 1e6 / t),
            ("lines_per_s".to_string(), r.lines as f64 / t),
            ("errors".to_string(), r.errors as f64),
        ]);
        (m, r.lines as f64)
    })
}

/// Streaming through two servers in turns, `first` `second` `second` `first` `second` `first`
/// `first` `second`, each for half of `secs` at a time, and each server's four parts combined:
/// a change of the machine's speed during the pair (they come within seconds here) falls on
/// both alike, and a burst of another tenant's load on one part weighs a quarter.
fn streaming_pair(
    [first, second]: [&Spec; 2],
    conns: usize,
    line_len: usize,
    secs: Duration,
) -> [BTreeMap<String, f64>; 2] {
    let half = secs / 2;
    let run = |s: &Spec| streaming(s, conns, line_len, half);
    let (a, b, b2, a2) = (run(first), run(second), run(second), run(first));
    let (b3, a3, a4, b4) = (run(second), run(first), run(first), run(second));
    [
        combine(&combine(&a, &a2), &combine(&a3, &a4)),
        combine(&combine(&b, &b2), &combine(&b3, &b4)),
    ]
}

/// Two streaming measurements of equal length as one: per-line figures weighted by each run's
/// lines, errors and CPU seconds added, rates and shares averaged.
fn combine(x: &BTreeMap<String, f64>, y: &BTreeMap<String, f64>) -> BTreeMap<String, f64> {
    let lines = |m: &BTreeMap<String, f64>| m.get("lines_per_s").copied().unwrap_or(0.0);
    let (wx, wy) = (lines(x), lines(y));
    x.iter()
        .filter_map(|(k, &vx)| {
            let vy = *y.get(k)?;
            let v = match k.as_str() {
                "errors" | "server_cpu_s" => vx + vy,
                k if k.ends_with("_per_op") && wx + wy > 0.0 => (vx * wx + vy * wy) / (wx + wy),
                _ => (vx + vy) / 2.0,
            };
            Some((k.clone(), v))
        })
        .collect()
}

fn churn(spec: &Spec, secs: Duration) -> BTreeMap<String, f64> {
    measure(spec, |s| {
        let (n, errors, took) = load::churn(s.addr, 4, secs, &spec.prefix);
        let m = BTreeMap::from([
            ("conn_per_s".to_string(), n as f64 / took.as_secs_f64()),
            ("errors".to_string(), errors as f64),
        ]);
        (m, n as f64)
    })
}

fn memory(spec: &Spec) -> BTreeMap<String, f64> {
    let s = start(spec);
    std::thread::sleep(Duration::from_millis(200)); // settle after start-up
    let idle_rss = proc::status(s.pid(), "VmRSS:").unwrap_or(0) as f64;
    let idle_anon = proc::status(s.pid(), "RssAnon:").unwrap_or(0) as f64;
    let idle_threads = proc::status(s.pid(), "Threads:").unwrap_or(0) as f64;
    let ks0 = proc::kernel_stack_kb().unwrap_or(0) as f64;
    let ((rss, threads, ks), errors) = load::hold_idle(s.addr, 1000, &spec.prefix, || {
        std::thread::sleep(Duration::from_millis(300)); // let every worker settle
        (
            proc::status(s.pid(), "VmRSS:").unwrap_or(0) as f64,
            proc::status(s.pid(), "Threads:").unwrap_or(0) as f64,
            proc::kernel_stack_kb().unwrap_or(0) as f64,
        )
    });
    BTreeMap::from([
        ("idle_rss_kb".to_string(), idle_rss),
        ("idle_rss_anon_kb".to_string(), idle_anon),
        ("rss_1000_kb".to_string(), rss),
        ("rss_per_conn_kb".to_string(), (rss - idle_rss) / 1000.0),
        ("kernel_stack_per_conn_kb".to_string(), (ks - ks0) / 1000.0),
        ("idle_threads".to_string(), idle_threads),
        ("threads_1000".to_string(), threads),
        ("errors".to_string(), errors as f64),
    ])
}

/// Clients of the instruction count, and their round trips in the short and the long run.
const COUNTED_CONNS: usize = 16;
const COUNTED_ROUNDS: [usize; 2] = [200, 2200];

/// User-space instructions per round trip of 64-byte ping-pong with 16 clients, counted by
/// callgrind: a count, not a time, so the same for the same binary whatever the machine is
/// doing (what the kernel does is not counted). The server runs twice under callgrind, with
/// 200 and with 2,200 round trips per client; the difference over the 32,000 extra round trips
/// leaves out start-up, connects and shutdown.
fn instructions(spec: &Spec) -> BTreeMap<String, f64> {
    let mut totals = Vec::new();
    let mut errors = 0;
    for rounds in COUNTED_ROUNDS {
        let out = std::env::temp_dir().join(format!(
            "tcp-echo-bench-callgrind-{}-{rounds}.out",
            std::process::id()
        ));
        let _ = std::fs::remove_file(&out);
        let mut args = vec![
            "-q".to_string(),
            "--tool=callgrind".into(),
            format!("--callgrind-out-file={}", out.display()),
            spec.program.display().to_string(),
        ];
        args.extend(spec.args.iter().cloned());
        args.extend(["--port".into(), "0".into()]);
        let counted = Spec {
            program: "valgrind".into(),
            args,
            ..spec.clone()
        };
        let server = start(&counted);
        errors += load::lockstep(server.addr, COUNTED_CONNS, rounds, &spec.prefix);
        // callgrind writes its counts as the process ends: by a signal's default action (the
        // peers) or by tcp-echo's own shutdown on SIGINT.
        // SAFETY: kill(2) on the server's own pid.
        unsafe { libc::kill(server.pid() as i32, libc::SIGINT) };
        let mut server = server;
        let deadline = Instant::now() + Duration::from_secs(60);
        while matches!(server.child.try_wait(), Ok(None)) && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
        }
        drop(server);
        let text = std::fs::read_to_string(&out)
            .unwrap_or_else(|e| panic!("{}: callgrind's output {}: {e}", spec.name, out.display()));
        let _ = std::fs::remove_file(&out);
        let total: f64 = text
            .lines()
            .find_map(|l| {
                l.strip_prefix("summary:")
                    .or_else(|| l.strip_prefix("totals:"))
            })
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or_else(|| panic!("{}: no total in callgrind's output", spec.name));
        totals.push(total);
    }
    let extra = (COUNTED_ROUNDS[1] - COUNTED_ROUNDS[0]) * COUNTED_CONNS;
    BTreeMap::from([
        (
            "user_instructions_per_rt".into(),
            (totals[1] - totals[0]) / extra as f64,
        ),
        ("errors".into(), errors as f64),
    ])
}

/// `n` clients that flood empty lines and never read (the worst a client can do to a server's
/// memory): per connection, the server's RSS growth and its kernel socket memory once every
/// client is stalled.
fn flooders(spec: &Spec, n: usize) -> BTreeMap<String, f64> {
    let s = start(spec);
    std::thread::sleep(Duration::from_millis(200)); // settle after start-up
    let rss0 = proc::status(s.pid(), "VmRSS:").unwrap_or(0) as f64;
    let mut clients: Vec<TcpStream> = (0..n)
        .map(|_| {
            let c = TcpStream::connect(s.addr).expect("connect");
            c.set_nonblocking(true).expect("non-blocking");
            c
        })
        .collect();
    let chunk = vec![b'\n'; 64 * 1024];
    let (mut quiet, deadline) = (0, Instant::now() + Duration::from_secs(30));
    while quiet < 2 && Instant::now() < deadline {
        let mut moved = 0;
        for c in clients.iter_mut() {
            while let Ok(k) = std::io::Write::write(c, &chunk) {
                moved += k;
            }
        }
        quiet = if moved == 0 { quiet + 1 } else { 0 };
        std::thread::sleep(Duration::from_millis(50)); // let the server catch up
    }
    let rss = proc::status(s.pid(), "VmRSS:").unwrap_or(0) as f64;
    let (sockets, bytes) = proc::socket_memory(s.addr.port());
    BTreeMap::from([
        ("rss_per_conn_kb".to_string(), (rss - rss0) / n as f64),
        (
            "socket_per_conn_kb".to_string(),
            bytes as f64 / 1024.0 / sockets.max(1) as f64,
        ),
        ("errors".to_string(), n.abs_diff(sockets) as f64),
    ])
}

/// Start-up to the first echo of each server, the median of 11 launches each, the servers
/// launched in turns (A B C, A B C, ...) so that a change of the machine's speed, or the
/// scenario before, falls on all alike.
fn startup(specs: &[&Spec]) -> Vec<BTreeMap<String, f64>> {
    let mut times: Vec<Vec<f64>> = vec![Vec::new(); specs.len()];
    for _ in 0..11 {
        for (spec, times) in specs.iter().zip(&mut times) {
            times.push(first_echo_ms(spec));
        }
    }
    times
        .into_iter()
        .map(|mut t| {
            t.sort_by(f64::total_cmp);
            BTreeMap::from([("startup_ms".to_string(), t[t.len() / 2])])
        })
        .collect()
}

/// Launches `spec` and times it from the spawn to its first echo, in milliseconds.
fn first_echo_ms(spec: &Spec) -> f64 {
    let mut child = None;
    // No taskset here: its own exec would be counted. The server's log says where it
    // listens (tcp-echo says it at `info`).
    let t = load::time_to_first_echo(|| {
        let mut c = command(spec, false)
            .env("RUST_LOG", "info")
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn");
        let stderr = c.stderr.take().expect("stderr");
        child = Some(c);
        stderr
    });
    if let Some(mut c) = child {
        let _ = c.kill();
        let _ = c.wait();
    }
    t.as_secs_f64() * 1000.0
}

fn burst(spec: &Spec) -> BTreeMap<String, f64> {
    let s = start(spec);
    let o0 = proc::tcp_ext("ListenOverflows").unwrap_or(0);
    let r = load::burst(s.addr, 1000, &spec.prefix);
    let o1 = proc::tcp_ext("ListenOverflows").unwrap_or(0);
    BTreeMap::from([
        ("slow_connects".to_string(), r.slow_connects as f64),
        (
            "slowest_connect_ms".to_string(),
            r.slowest.as_secs_f64() * 1000.0,
        ),
        ("listen_overflows".to_string(), o1.saturating_sub(o0) as f64),
        ("served".to_string(), r.served as f64),
        ("errors".to_string(), r.errors as f64),
    ])
}

/// Write-type syscalls per echoed line while streaming 64-byte lines on one connection, counted
/// by `strace -c` attached to the server (its own overhead does not change the count).
/// Write syscalls per line streamed (64-byte lines, one connection), and all syscalls per
/// round trip in ping-pong (16 connections), counted by `strace -c` attached to the server.
fn syscalls(spec: &Spec) -> BTreeMap<String, f64> {
    let writes = strace_count(spec, Some("write,writev,sendto,sendmsg"), |addr, prefix| {
        let r = load::streaming(addr, 1, 64, Duration::from_millis(500), prefix);
        (r.lines as f64, r.errors as f64)
    });
    let all = strace_count(spec, None, |addr, prefix| {
        let rt = load::runtime();
        let mut clients = load::Clients::connect(&rt, addr, 16, prefix, load::Message::Line);
        let r = clients.ping_pong(&rt, Duration::from_millis(500));
        (r.round_trips as f64, r.errors as f64)
    });
    BTreeMap::from([
        ("writes_per_line".to_string(), writes.0),
        ("syscalls_per_rt".to_string(), all.0),
        ("errors".to_string(), writes.1 + all.1),
    ])
}

/// Runs `work` against a fresh instance of `spec` while `strace -f -c` (limited to `trace`
/// when given) counts the server's syscalls; returns the calls per operation and the errors
/// `work` reported (`work` returns the operation count and the error count).
fn strace_count(
    spec: &Spec,
    trace: Option<&str>,
    work: impl FnOnce(SocketAddr, &str) -> (f64, f64),
) -> (f64, f64) {
    let s = start(spec);
    let out = std::env::temp_dir().join(format!("tcp-echo-bench-strace-{}", std::process::id()));
    let mut cmd = Command::new("strace");
    cmd.args(["-f", "-c", "-qq"]);
    if let Some(t) = trace {
        cmd.args(["-e", &format!("trace={t}")]);
    }
    let mut strace = cmd
        .arg("-o")
        .arg(&out)
        .args(["-p", &s.pid().to_string()])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("strace (make bench installs it)");
    let deadline = Instant::now() + Duration::from_secs(10);
    while proc::status(s.pid(), "TracerPid:").unwrap_or(0) == 0 {
        assert!(Instant::now() < deadline, "strace did not attach");
        std::thread::sleep(Duration::from_millis(5));
    }
    let (ops, errors) = work(s.addr, &spec.prefix);
    // SAFETY: signalling our own child.
    unsafe { libc::kill(strace.id() as i32, libc::SIGINT) };
    let _ = strace.wait();
    let text = std::fs::read_to_string(&out).unwrap_or_default();
    let _ = std::fs::remove_file(&out);
    // Rows: % time, seconds, usecs/call, calls, [errors], syscall; then a "total" row.
    let calls: f64 = text
        .lines()
        .filter(|l| !l.trim_end().ends_with("total"))
        .filter_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            f.first()?.parse::<f64>().ok()?;
            f.get(3)?.parse::<f64>().ok()
        })
        .sum();
    let per_op = if ops > 0.0 { calls / ops } else { f64::NAN };
    (per_op, errors)
}

/// Datagram ping-pong with `clients` client sockets.
fn udp_ping_pong(spec: &Spec, clients: usize, secs: Duration) -> BTreeMap<String, f64> {
    measure(spec, |s| {
        let r = udp::ping_pong(s.addr, clients, secs, &spec.prefix);
        let q = |p: f64| r.latency.value_at_quantile(p) as f64 / 1000.0;
        let m = BTreeMap::from([
            (
                "dgram_per_s".to_string(),
                r.datagrams as f64 / r.elapsed.as_secs_f64(),
            ),
            ("p50_us".to_string(), q(0.5)),
            ("p99_us".to_string(), q(0.99)),
            ("errors".to_string(), r.errors as f64),
        ]);
        (m, r.datagrams as f64)
    })
}

/// Full TLS handshakes (each with one line echoed) by 4 clients.
fn tls_handshakes(spec: &Spec, cert: &std::path::Path, secs: Duration) -> BTreeMap<String, f64> {
    measure(spec, |s| {
        let (n, errors, took) = tls::handshakes(s.addr, cert, 4, secs);
        let m = BTreeMap::from([
            (
                "handshakes_per_s".to_string(),
                n as f64 / took.as_secs_f64(),
            ),
            ("errors".to_string(), errors as f64),
        ]);
        (m, n as f64)
    })
}

/// Streaming inside TLS (a copy echo: no prefix).
fn tls_streaming(
    spec: &Spec,
    cert: &std::path::Path,
    conns: usize,
    line_len: usize,
    secs: Duration,
) -> BTreeMap<String, f64> {
    measure(spec, |s| {
        let r = tls::streaming(s.addr, cert, conns, line_len, secs);
        let t = r.elapsed.as_secs_f64();
        let m = BTreeMap::from([
            ("mb_per_s".to_string(), r.bytes as f64 / 1e6 / t),
            ("lines_per_s".to_string(), r.lines as f64 / t),
            ("errors".to_string(), r.errors as f64),
        ]);
        (m, r.lines as f64)
    })
}

fn arg(args: &[String], name: &str) -> Option<String> {
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1))
        .cloned()
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    match args.get(1).map(String::as_str) {
        Some("naive") => peers::naive(
            arg(&args, "--port").map_or(0, |p| p.parse().expect("port")),
            &arg(&args, "--prefix").unwrap_or_default(),
        ),
        Some("tokio") => peers::tokio_batched(
            arg(&args, "--port").map_or(0, |p| p.parse().expect("port")),
            &arg(&args, "--prefix").unwrap_or_default(),
        ),
        Some("naive-copy") => {
            peers::naive_copy(arg(&args, "--port").map_or(0, |p| p.parse().expect("port")))
        }
        Some("tokio-copy") => {
            peers::tokio_copy(arg(&args, "--port").map_or(0, |p| p.parse().expect("port")))
        }
        Some("udp") => udp::peer(
            arg(&args, "--port").map_or(0, |p| p.parse().expect("port")),
            &arg(&args, "--prefix").unwrap_or_default(),
        ),
        Some("tokio-tls") => tls::peer(
            arg(&args, "--port").map_or(0, |p| p.parse().expect("port")),
            &PathBuf::from(arg(&args, "--cert").expect("--cert")),
            &PathBuf::from(arg(&args, "--key").expect("--key")),
        ),
        Some("run") => run(&args),
        _ => {
            eprintln!("usage: tcp-echo-bench run [--rounds N] [--secs S] [--tcp-echo PATH] [--tcp-echo-glibc PATH] [--tcp-echo-baseline PATH] [--only TEXT] | naive|tokio|udp --port P [--prefix X] | naive-copy|tokio-copy --port P | tokio-tls --port P --cert C --key K");
            std::process::exit(2);
        }
    }
}

/// The flags `run` takes, each with a value.
const RUN_FLAGS: [&str; 6] = [
    "--rounds",
    "--secs",
    "--tcp-echo",
    "--tcp-echo-glibc",
    "--tcp-echo-baseline",
    "--only",
];

fn run(args: &[String]) {
    // A mistyped flag (or `--help`) must not start a quarter of an hour of measurements.
    let mut rest = args.iter().skip(2);
    while let Some(flag) = rest.next() {
        if !RUN_FLAGS.contains(&flag.as_str()) || rest.next().is_none() {
            eprintln!(
                "tcp-echo-bench run: unexpected {flag:?}; flags (each with a value): {}",
                RUN_FLAGS.join(" ")
            );
            std::process::exit(2);
        }
    }
    let rounds: usize = arg(args, "--rounds").map_or(5, |v| v.parse().expect("--rounds"));
    let secs =
        Duration::from_secs_f64(arg(args, "--secs").map_or(1.5, |v| v.parse().expect("--secs")));
    // The static musl binary is what the image ships, so it is what is measured.
    let tcp_echo = PathBuf::from(
        arg(args, "--tcp-echo")
            .unwrap_or_else(|| "target/x86_64-unknown-linux-musl/release/tcp-echo".into()),
    );
    let me = std::env::current_exe().expect("own path");
    assert!(
        tcp_echo.is_file(),
        "{} not found: build it with `make static`",
        tcp_echo.display()
    );
    if proc::cores() >= 2 {
        proc::pin_self(0);
    }

    let echo = |name: &str, log: &str, prefix: &str| Spec {
        name: name.into(),
        program: tcp_echo.clone(),
        args: {
            let mut a = vec![
                "--banner".to_string(),
                "off".into(),
                "--bind".into(),
                "127.0.0.1".into(),
            ];
            if !prefix.is_empty() {
                a.extend(["--prefix".to_string(), prefix.into()]);
            }
            a
        },
        env: vec![("RUST_LOG".into(), log.into())],
        prefix: prefix.into(),
    };
    let peer = |name: &str, sub: &str| Spec {
        name: name.into(),
        program: me.clone(),
        args: vec![sub.into(), "--prefix".into(), "one".into()],
        env: vec![],
        prefix: "one".into(),
    };
    let main_servers = [
        echo("tcp-echo", "warn", "one"),
        peer("naive threads", "naive"),
        peer("tokio batched", "tokio"),
    ];
    let variants = vec![
        echo("tcp-echo info", "info", "one"),
        echo("tcp-echo no prefix", "warn", ""),
    ];
    // fortio's tcp:// client wants its bytes back exactly: no prefix, no banner; its peers are
    // the prompt-echo designs (a line server never answers a message without a newline).
    let copy_peer = |name: &str, sub: &str| Spec {
        name: name.into(),
        program: me.clone(),
        args: vec![sub.into()],
        env: vec![],
        prefix: String::new(),
    };
    let fortio_servers = [
        echo("tcp-echo", "warn", ""),
        copy_peer("naive copy", "naive-copy"),
        copy_peer("tokio copy", "tokio-copy"),
    ];
    // The socket buffer cap: the Deployments' 24 KiB and the default 64 KiB against the
    // kernel's autotuning (`--socket-buffer 0`).
    let with_buffer = |name: &str, bytes: &str| {
        let mut s = echo(name, "warn", "one");
        s.args.extend(["--socket-buffer".to_string(), bytes.into()]);
        s
    };
    let caps = [
        with_buffer("tcp-echo 24 KiB", "24576"),
        echo("tcp-echo", "warn", "one"),
        with_buffer("tcp-echo autotuned", "0"),
    ];
    // The same code built for glibc (`cargo build --release`), to separate the build from the
    // design where they differ.
    let glibc = arg(args, "--tcp-echo-glibc")
        .map(PathBuf::from)
        .filter(|p| p.is_file())
        .map(|program| Spec {
            name: "tcp-echo glibc".into(),
            program,
            ..echo("tcp-echo glibc", "warn", "one")
        });
    // The build before this work, measured in the same run (`--tcp-echo-baseline`): with the
    // prefix where tcp-echo runs with it, without for fortio's shape.
    let baseline_path = arg(args, "--tcp-echo-baseline")
        .map(PathBuf::from)
        .filter(|p| p.is_file());
    let before = |prefix: &str| {
        baseline_path.clone().map(|program| Spec {
            name: report::BEFORE.into(),
            program,
            ..echo(report::BEFORE, "warn", prefix)
        })
    };
    let (baseline, baseline_copy) = (before("one"), before(""));
    // UDP: tcp-echo's `--udp` against a std `UdpSocket` echo, both with the prefix.
    let udp_servers = [
        {
            let mut s = echo("tcp-echo", "warn", "one");
            s.args.push("--udp".into());
            s
        },
        Spec {
            name: "std UdpSocket".into(),
            program: me.clone(),
            args: vec!["udp".into(), "--prefix".into(), "one".into()],
            env: vec![],
            prefix: "one".into(),
        },
    ];
    // TLS: tcp-echo's TLS port against tokio-rustls, both copy echoes with one certificate.
    let pki = std::env::temp_dir().join(format!("tcp-echo-bench-tls-{}", std::process::id()));
    let (cert, key) = tls::certificate(&pki);
    let tls_echo = |name: &str, program: PathBuf| Spec {
        name: name.into(),
        program,
        args: [
            "--banner",
            "off",
            "--bind",
            "127.0.0.1",
            "--port",
            "none",
            "--tls-port",
            "0",
        ]
        .map(String::from)
        .into_iter()
        .chain([
            "--tls-cert".to_string(),
            cert.display().to_string(),
            "--tls-key".into(),
            key.display().to_string(),
        ])
        .collect(),
        env: vec![("RUST_LOG".into(), "warn".into())],
        prefix: String::new(),
    };
    let mut tls_servers = vec![
        tls_echo("tcp-echo", tcp_echo.clone()),
        Spec {
            name: "tokio-rustls".into(),
            program: me.clone(),
            args: vec![
                "tokio-tls".into(),
                "--cert".into(),
                cert.display().to_string(),
                "--key".into(),
                key.display().to_string(),
            ],
            env: vec![],
            prefix: String::new(),
        },
    ];
    // The same code built for glibc: the static build's musl `memcpy` and `memmove` weigh on
    // TLS, which copies the plaintext in and out of rustls.
    if let Some(g) = &glibc {
        tls_servers.push(tls_echo("tcp-echo glibc", g.program.clone()));
    }

    // `--only TEXT` runs only the scenarios whose name contains TEXT (for quick checks).
    let only = arg(args, "--only");
    let wanted = |scenario: &str| only.as_ref().is_none_or(|o| scenario.contains(o.as_str()));
    let mut records: Vec<Record> = Vec::new();
    let started = Instant::now();
    for round in 0..rounds {
        eprintln!(
            "round {}/{rounds} ({:.0}s so far)",
            round + 1,
            started.elapsed().as_secs_f64()
        );
        let mut add = |scenario: &str, server: &Spec, metrics: BTreeMap<String, f64>| {
            eprintln!(
                "  {scenario:<24} {:<20} {}",
                server.name,
                report::brief(&metrics)
            );
            records.push(Record {
                round,
                scenario: scenario.into(),
                server: server.name.clone(),
                metrics,
            });
        };
        // Rotate the order each round, so that no server always runs first.
        let order: Vec<&Spec> = (0..main_servers.len())
            .map(|i| &main_servers[(i + round) % main_servers.len()])
            .collect();
        for conns in [1, 16, 256, 1000] {
            let sc = format!("ping-pong {conns}");
            if wanted(&sc) {
                let mut specs = order.clone();
                // The same code built for glibc, beside them at 256 connections.
                specs.extend(glibc.iter().filter(|_| conns == 256));
                specs.extend(baseline.iter());
                for (s, m) in specs.iter().zip(ping_pong(
                    &specs,
                    conns,
                    secs,
                    load::Message::Line,
                    Pace::PingPong,
                )) {
                    add(&sc, s, m);
                }
            }
        }
        for conns in [1, 16, 256] {
            let sc = format!("fortio {conns}");
            if wanted(&sc) {
                let specs: Vec<&Spec> = (0..fortio_servers.len())
                    .map(|i| &fortio_servers[(i + round) % fortio_servers.len()])
                    .chain(baseline_copy.iter())
                    .collect();
                for (s, m) in specs.iter().zip(ping_pong(
                    &specs,
                    conns,
                    secs,
                    load::Message::Fortio,
                    Pace::PingPong,
                )) {
                    add(&sc, s, m);
                }
            }
        }
        // The main servers, and the build before this work.
        // The build before rotates with the others: a server that runs first in a round
        // runs right after the previous scenario, which a later one does not.
        let with_before: Vec<&Spec> = {
            let all: Vec<&Spec> = main_servers.iter().chain(baseline.iter()).collect();
            (0..all.len())
                .map(|i| all[(i + round) % all.len()])
                .collect()
        };
        let sc = "paced 256";
        if wanted(sc) {
            let paced = Pace::Every(Duration::from_millis(20));
            for (s, m) in with_before.iter().zip(ping_pong(
                &with_before,
                256,
                secs,
                load::Message::Line,
                paced,
            )) {
                add(sc, s, m);
            }
        }
        for (line_len, conns) in [(64, 1), (64, 16), (4096, 1), (4096, 16)] {
            let sc = format!("stream {line_len}B x{conns}");
            for s in with_before.iter().filter(|_| wanted(&sc)) {
                add(&sc, s, streaming(s, conns, line_len, secs));
            }
        }
        type Once = fn(&Spec, Duration) -> BTreeMap<String, f64>;
        let once: [(&str, Once); 2] = [
            ("churn", |s, secs| churn(s, secs)),
            ("memory", |s, _| memory(s)),
        ];
        for (sc, f) in once {
            for s in with_before.iter().filter(|_| wanted(sc)) {
                add(sc, s, f(s, secs));
            }
        }
        // Before the burst, as always: its thousands of closed connections keep the kernel
        // busy for a while, which a server started in a pod of its own does not meet.
        if wanted("startup") {
            for (s, m) in with_before.iter().zip(startup(&with_before)) {
                add("startup", s, m);
            }
        }
        for s in with_before.iter().filter(|_| wanted("burst 1000")) {
            add("burst 1000", s, burst(s));
        }
        // Memory against the copy peer too (tokio's smallest per-connection state).
        if wanted("memory") {
            add("memory", &fortio_servers[2], memory(&fortio_servers[2]));
        }
        // Instructions per round trip: a count, the same in every round, so taken once.
        if round == 0 && wanted("instructions") {
            for s in [&main_servers[0], &main_servers[1], &main_servers[2]]
                .into_iter()
                .chain(baseline.iter())
            {
                add("instructions 16", s, instructions(s));
            }
        }
        // The worst a client can do to memory: flood and never read; against the peers, once.
        if round == 0 && wanted("flooders") {
            for s in [&main_servers[0], &main_servers[1], &fortio_servers[2]]
                .into_iter()
                .chain(baseline.iter())
            {
                add("flooders 64", s, flooders(s, 64));
            }
        }
        // The prefixed stream against the plain one (tcp-echo against itself, in turns).
        let plain = &variants[1];
        let pair = if round % 2 == 0 {
            [&main_servers[0], plain]
        } else {
            [plain, &main_servers[0]]
        };
        for (line_len, conns) in [(64, 1), (4096, 1), (64, 16)] {
            let sc = format!("prefix stream {line_len}B x{conns}");
            if wanted(&sc) {
                let [a, b] = streaming_pair(pair, conns, line_len, secs);
                add(&sc, pair[0], a);
                add(&sc, pair[1], b);
            }
        }
        // The prefixed stream, this build against the build before, in turns.
        if let Some(before) = baseline.as_ref() {
            let pair = if round % 2 == 0 {
                [&main_servers[0], before]
            } else {
                [before, &main_servers[0]]
            };
            for (line_len, conns) in [(64, 1), (4096, 1), (64, 16)] {
                let sc = format!("ab stream {line_len}B x{conns}");
                if wanted(&sc) {
                    let [a, b] = streaming_pair(pair, conns, line_len, secs);
                    add(&sc, pair[0], a);
                    add(&sc, pair[1], b);
                }
            }
        }
        // UDP datagrams.
        for clients in [1, 16] {
            let sc = format!("udp {clients}");
            for i in 0..udp_servers.len() {
                let s = &udp_servers[(i + round) % udp_servers.len()];
                if wanted(&sc) {
                    add(&sc, s, udp_ping_pong(s, clients, secs));
                }
            }
        }
        // TLS.
        for i in 0..tls_servers.len() {
            let s = &tls_servers[(i + round) % tls_servers.len()];
            if wanted("tls handshakes") {
                add("tls handshakes", s, tls_handshakes(s, &cert, secs));
            }
            for (line_len, conns) in [(64, 1), (4096, 1), (4096, 16)] {
                let sc = format!("tls stream {line_len}B x{conns}");
                if wanted(&sc) {
                    add(&sc, s, tls_streaming(s, &cert, conns, line_len, secs));
                }
            }
        }
        if round == 0 {
            for s in order.iter().filter(|_| wanted("writes")) {
                add("writes", s, syscalls(s));
            }
        }
        // Logging and prefix costs: tcp-echo against itself.
        let selves: Vec<&Spec> = std::iter::once(&main_servers[0]).chain(&variants).collect();
        if wanted("log ping-pong 16") {
            for (s, m) in selves.iter().zip(ping_pong(
                &selves,
                16,
                secs,
                load::Message::Line,
                Pace::PingPong,
            )) {
                add("log ping-pong 16", s, m);
            }
        }
        // The socket buffer cap: tcp-echo against itself at the Deployments' and the default
        // buffer and with the kernel's autotuning, in rotating order.
        let trio: Vec<&Spec> = (0..caps.len())
            .map(|i| &caps[(i + round) % caps.len()])
            .collect();
        for (line_len, conns) in [(64, 1), (4096, 1), (4096, 16)] {
            let sc = format!("cap stream {line_len}B x{conns}");
            for s in trio.iter().filter(|_| wanted(&sc)) {
                add(&sc, s, streaming(s, conns, line_len, secs));
            }
        }
        for s in trio.iter().filter(|_| round == 0 && wanted("cap flooders")) {
            add("cap flooders", s, flooders(s, 64));
        }
        for s in selves {
            if wanted("log stream 64B x1") {
                add("log stream 64B x1", s, streaming(s, 1, 64, secs));
            }
        }
    }
    let _ = std::fs::remove_dir_all(&pki);
    let command = std::env::args().collect::<Vec<_>>().join(" ");
    report::write(&records, rounds, secs, &command, started.elapsed());
}
