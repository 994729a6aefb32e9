//! The image as its Deployment runs it (`make image-test`): the Deployment's environment and
//! memory limit, read from the manifests, a Docker container with that memory limit (no swap)
//! and containerd's low soft descriptor limit, and as many clients as its
//! `ECHO_MAX_CONNECTIONS` doing the worst a client can: flood empty lines and never read; and
//! on the admin port, every slot holding an unfinished request of almost 8 KiB.
//!
//! The memory counted is what a pod is charged for. On cgroup v2 that is `memory.peak`, which
//! includes the kernel's socket buffers. On cgroup v1 socket buffers are kept apart, in
//! `memory.kmem.tcp`, and only once that counter is switched on (by writing its limit), so the
//! test switches it on and adds its peak to `memory.max_usage_in_bytes`.

use std::io::{ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use tcp_echo_k8s::{check, pods};

const DEADLINE: Duration = Duration::from_secs(30);

/// Connections the admin port holds at once (docs/admin-and-health-checks.md: 128).
const ADMIN_SLOTS: usize = 128;

fn docker(args: &[&str]) -> Output {
    let out = Command::new("docker")
        .args(args)
        .output()
        .expect("run docker");
    assert!(
        out.status.success(),
        "docker {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

fn docker_text(args: &[&str]) -> String {
    String::from_utf8_lossy(&docker(args).stdout)
        .trim()
        .to_string()
}

/// A container removed when dropped.
struct Container(String);

impl Container {
    fn inspect(&self, format: &str) -> String {
        docker_text(&["inspect", "-f", format, &self.0])
    }

    fn logs(&self) -> String {
        let out = docker(&["logs", &self.0]);
        String::from_utf8_lossy(&out.stderr).into_owned()
    }
}

impl Drop for Container {
    fn drop(&mut self) {
        let _ = Command::new("docker").args(["rm", "-f", &self.0]).output();
    }
}

fn wait_until(what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + DEADLINE;
    while !cond() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// The container's memory cgroup and how to read its peak charge.
enum Memory {
    V1(PathBuf),
    V2(PathBuf),
}

impl Memory {
    /// The memory cgroup of process `pid`; on v1, switches on socket-buffer accounting.
    fn of(pid: &str, limit: u64) -> Memory {
        let cgroups = std::fs::read_to_string(format!("/proc/{pid}/cgroup")).expect("cgroup");
        let memory = if let Some(line) = cgroups.lines().find(|l| l.contains(":memory:")) {
            let path = line.splitn(3, ':').nth(2).unwrap();
            let dir = Path::new("/sys/fs/cgroup/memory").join(path.trim_start_matches('/'));
            let tcp = dir.join("memory.kmem.tcp.limit_in_bytes");
            std::fs::write(&tcp, limit.to_string()).unwrap_or_else(|e| {
                panic!(
                    "cannot switch on socket memory accounting ({}): {e}",
                    tcp.display()
                )
            });
            Memory::V1(dir)
        } else {
            let line = cgroups
                .lines()
                .find(|l| l.starts_with("0::"))
                .expect("a cgroup v1 memory or v2 line");
            Memory::V2(Path::new("/sys/fs/cgroup").join(line[3..].trim_start_matches('/')))
        };
        memory
    }

    fn read(dir: &Path, file: &str) -> u64 {
        std::fs::read_to_string(dir.join(file))
            .unwrap_or_else(|e| panic!("{}: {e}", dir.join(file).display()))
            .trim()
            .parse()
            .unwrap()
    }

    /// (peak charge, of which socket buffers where told apart), bytes.
    fn peak(&self) -> (u64, Option<u64>) {
        match self {
            Memory::V1(dir) => {
                let tcp = Memory::read(dir, "memory.kmem.tcp.max_usage_in_bytes");
                (
                    Memory::read(dir, "memory.max_usage_in_bytes") + tcp,
                    Some(tcp),
                )
            }
            Memory::V2(dir) => (Memory::read(dir, "memory.peak"), None),
        }
    }
}

/// Writes empty lines to every non-blocking client until none of them can write any more for
/// two rounds in a row (the server stopped reading them).
fn flood_until_stalled(clients: &mut [TcpStream]) -> u64 {
    let chunk = [b'\n'; 64 * 1024];
    let mut sent = 0u64;
    let mut quiet = 0;
    let deadline = Instant::now() + Duration::from_secs(60);
    while quiet < 2 {
        assert!(Instant::now() < deadline, "the server kept reading");
        let mut moved = 0;
        for c in clients.iter_mut() {
            while let Ok(n) = c.write(&chunk) {
                moved += n as u64;
            }
        }
        sent += moved;
        quiet = if moved == 0 { quiet + 1 } else { 0 };
        std::thread::sleep(Duration::from_millis(100)); // let the server catch up
    }
    sent
}

/// `GET path`, as the kubelet or a scraper sends it: (status, body).
fn http_get(addr: SocketAddr, path: &str) -> (u16, String) {
    let request =
        format!("GET {path} HTTP/1.1\r\nHost: pod\r\nUser-Agent: kube-probe/1.34\r\n\r\n");
    let out = String::from_utf8(read_until_eof(addr, request.as_bytes())).unwrap();
    let status = out.get(9..12).and_then(|s| s.parse().ok()).unwrap_or(0);
    let body = out
        .split_once("\r\n\r\n")
        .map_or("", |(_, b)| b)
        .to_string();
    (status, body)
}

fn read_until_eof(addr: SocketAddr, send: &[u8]) -> Vec<u8> {
    let mut c = TcpStream::connect_timeout(&addr, DEADLINE).expect("connect");
    c.set_read_timeout(Some(DEADLINE)).unwrap();
    c.write_all(send).unwrap();
    // A refusal may already be complete: the server wrote its message, closed, and answered
    // `send` (arriving after the close) with a reset. The message stays readable.
    match c.shutdown(std::net::Shutdown::Write) {
        Ok(()) => {}
        Err(e) if e.kind() == ErrorKind::NotConnected => {}
        Err(e) => panic!("shutdown: {e}"),
    }
    let mut out = Vec::new();
    match c.read_to_end(&mut out) {
        Ok(_) => out,
        Err(e) if e.kind() == ErrorKind::ConnectionReset => out,
        Err(e) => panic!("read: {e}"),
    }
}

#[test]
fn the_image_under_its_deployment_limits_survives_as_many_flooders_as_it_admits() {
    let image = std::env::var("TCP_ECHO_IMAGE").expect("TCP_ECHO_IMAGE: run `make image-test`");
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..");
    let set = check(&dir).unwrap_or_else(|e| panic!("{e:#?}"));
    let pod = pods(&set)
        .into_iter()
        .find(|p| p.deployment == "tcp-echo-v1")
        .expect("Deployment tcp-echo-v1");
    let limit = pod.memory_limit.expect("a memory limit");
    let n = pod.config.max_connections();
    let name = format!("tcp-echo-pod-test-{}", std::process::id());
    let mut args: Vec<String> = [
        "run",
        "-d",
        "--name",
        &name,
        "--memory",
        &limit.to_string(),
        "--memory-swap",
        &limit.to_string(),
        // containerd 2.x: a soft limit of 1024 under a high hard limit.
        "--ulimit",
        "nofile=1024:8192",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    for (k, v) in &pod.env {
        args.extend(["-e".into(), format!("{k}={v}")]);
    }
    // What the downward API would give the pod.
    for (k, v) in [
        ("NODE_NAME", "pod-test-node"),
        ("POD_NAME", "tcp-echo-v1-pod-test"),
        ("POD_NAMESPACE", "default"),
        ("POD_IP", "10.0.0.1"),
        ("SERVICE_ACCOUNT", "tcp-echo"),
    ] {
        args.extend(["-e".into(), format!("{k}={v}")]);
    }
    args.push(image);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    docker(&args);
    let c = Container(name);
    wait_until("the server to listen", || c.logs().contains("listening on"));
    let ip = c.inspect("{{.NetworkSettings.IPAddress}}");
    let port: u16 = pod.env["TCP_PORT"].parse().unwrap();
    let addr: SocketAddr = format!("{ip}:{port}").parse().expect("container address");
    let memory = Memory::of(&c.inspect("{{.State.Pid}}"), limit);
    let (idle, _) = memory.peak();

    // As many clients as it admits, each flooding empty lines (five output bytes per input
    // byte with the prefix) and never reading.
    let mut clients: Vec<TcpStream> = (0..n)
        .map(|_| {
            let s = TcpStream::connect_timeout(&addr, DEADLINE).expect("connect");
            s.set_nonblocking(true).unwrap();
            s
        })
        .collect();
    let sent = flood_until_stalled(&mut clients);
    // A newcomer still gets an answer: every slot is taken, so it is told busy.
    let reply = String::from_utf8_lossy(&read_until_eof(addr, b"hello\n")).into_owned();
    assert!(reply.contains("busy"), "newcomer got {reply:?}");

    // Meanwhile the admin port at its worst: every one of its slots holding a request of
    // almost 8 KiB that never ends. The kubelet's probes and a scrape are still answered, and
    // the scrape shows the flood.
    let admin_port: u16 = pod.env["ECHO_ADMIN_PORT"].parse().unwrap();
    let admin: SocketAddr = format!("{ip}:{admin_port}").parse().unwrap();
    let hog = format!("GET /metrics HTTP/1.1\r\nX-Hog: {}\r\n", "h".repeat(8000));
    let hogs: Vec<TcpStream> = (0..ADMIN_SLOTS)
        .map(|_| {
            let mut s = TcpStream::connect_timeout(&admin, DEADLINE).expect("admin connect");
            s.write_all(hog.as_bytes()).unwrap();
            s
        })
        .collect();
    for (port, path) in &pod.http_probes {
        assert_eq!(*port, admin_port, "a probe off the admin port");
        let t = Instant::now();
        let (status, _) = http_get(admin, path);
        assert_eq!(status, 200, "{path}");
        assert!(
            t.elapsed() < Duration::from_secs(1),
            "{path} took {:?}",
            t.elapsed()
        );
    }
    let (status, metrics) = http_get(admin, "/metrics");
    assert_eq!(status, 200);
    assert!(
        metrics.contains(&format!("\ntcp_echo_connections_open {n}\n"))
            && metrics.contains("\ntcp_echo_connections_refused_total{reason=\"busy\"} 1\n"),
        "{metrics}"
    );
    let (peak, sockets) = memory.peak();
    drop(hogs);
    assert_eq!(c.inspect("{{.State.OOMKilled}}"), "false");
    assert_eq!(c.inspect("{{.State.Running}}"), "true");
    println!(
        "{n} flooders ({:.0} MB sent): peak {:.1} MiB of the {:.0} MiB limit (idle {:.1} MiB{}); {:.0} KiB per connection",
        sent as f64 / 1e6,
        peak as f64 / 1048576.0,
        limit as f64 / 1048576.0,
        idle as f64 / 1048576.0,
        sockets.map_or(String::new(), |s| format!(
            ", socket buffers {:.1} MiB",
            s as f64 / 1048576.0
        )),
        (peak - idle) as f64 / 1024.0 / n as f64,
    );
    // Each connection within tcp-echo's stated ceiling, and the whole well under the limit.
    let per_connection = (peak - idle) / n as u64;
    let ceiling = pod.config.memory_per_connection().expect("a ceiling");
    assert!(
        per_connection <= ceiling,
        "{per_connection} bytes per connection, over the stated {ceiling}"
    );
    assert!(
        peak < limit * 9 / 10,
        "peak {peak} bytes is within 10% of the {limit}-byte limit"
    );

    // The flood ends: the server serves as before.
    drop(clients);
    wait_until("every flooder closed", || {
        c.logs().matches("TCP connection closed.").count() >= n
    });
    let reply = String::from_utf8_lossy(&read_until_eof(addr, b"hello\n")).into_owned();
    assert!(
        reply.starts_with("Welcome, you are connected to node pod-test-node.\n")
            && reply.ends_with("one hello\n"),
        "{reply:?}"
    );
    assert!(c
        .logs()
        .contains("open-file limit raised from 1024 to 8192"));
}
