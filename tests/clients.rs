//! Real third-party clients that send no newline, as users meet them (`make test` installs
//! them and passes their paths: `ENVOY_BIN`, `HAPROXY_BIN`):
//! * Envoy's active TCP health check (a hex payload on a connection it keeps open, the reply
//!   searched for the expected bytes), read from Envoy's admin `/clusters` and `/stats`;
//! * HAProxy's `tcp-check send-binary` / `expect binary`, read from its stats socket;
//! * fortio's `tcp://` load client's protocol: 24-byte messages `Fortio\n%04d\n%012d` on a
//!   kept-open connection, each wanted back exactly.
//!
//! Each checker also watches a server that accepts and never answers, which must fail: the
//! harness itself is checked, not only tcp-echo.

mod support;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener};
use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use support::{read_exactly, Server, DEADLINE};

fn bin(var: &str) -> String {
    let path = std::env::var(var).unwrap_or_else(|_| panic!("{var} is not set: run `make test`"));
    assert!(
        std::path::Path::new(&path).is_file(),
        "{var}={path} does not exist"
    );
    path
}

/// A child process killed when dropped.
struct Proc(Child);

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A TCP server that accepts and reads but never answers: what a health check must fail.
fn silent_server() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    std::thread::spawn(move || {
        for conn in listener.incoming().flatten() {
            std::thread::spawn(move || {
                let mut conn = conn;
                let mut sink = [0u8; 1024];
                while matches!(conn.read(&mut sink), Ok(n) if n > 0) {}
            });
        }
    });
    addr
}

/// A scratch file for a config, unique to this process and `tag`.
fn scratch(tag: &str) -> PathBuf {
    std::env::temp_dir().join(format!("tcp-echo-clients-{}-{tag}", std::process::id()))
}

/// Polls `read` until `done` holds for what it returns; panics with the last reading after
/// the deadline.
fn poll<T: std::fmt::Debug>(
    what: &str,
    mut read: impl FnMut() -> T,
    done: impl Fn(&T) -> bool,
) -> T {
    let deadline = Instant::now() + DEADLINE;
    loop {
        let value = read();
        if done(&value) {
            return value;
        }
        assert!(
            Instant::now() < deadline,
            "timed out waiting for {what}; last reading: {value:?}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Servers as the checkers meet them: with go-echo's banner and Istio's prefix, and bare.
fn servers() -> Vec<(&'static str, Server)> {
    vec![
        (
            "banner and prefix",
            Server::start(
                &["--port", "0", "--prefix", "one"],
                &[("NODE_NAME", "hc-node"), ("POD_NAME", "hc-pod")],
            ),
        ),
        ("bare", Server::with(&["--banner", "off"])),
    ]
}

// ---- Envoy -------------------------------------------------------------------------------

struct Envoy {
    _proc: Proc,
    admin: SocketAddr,
}

impl Envoy {
    /// Envoy with one cluster per `(name, address)`, each with an active TCP health check
    /// sending `PING` (hex `50494E47`) and expecting it back, every 200 ms.
    fn health_checking(clusters: &[(String, SocketAddr)]) -> Envoy {
        let mut y = String::from(
            "admin:\n  address: { socket_address: { address: 127.0.0.1, port_value: 0 } }\n\
             static_resources:\n  clusters:\n",
        );
        for (name, addr) in clusters {
            y += &format!(
                "  - name: {name}\n    type: STATIC\n    connect_timeout: 1s\n    \
                 load_assignment:\n      cluster_name: {name}\n      endpoints:\n      \
                 - lb_endpoints:\n        - endpoint: {{ address: {{ socket_address: {{ address: \
                 127.0.0.1, port_value: {} }} }} }}\n    health_checks:\n    - timeout: 1s\n      \
                 interval: 0.2s\n      no_traffic_interval: 0.2s\n      unhealthy_threshold: 1\n      \
                 healthy_threshold: 1\n      tcp_health_check:\n        send: {{ text: \"50494E47\" }}\n        \
                 receive: [ {{ text: \"50494E47\" }} ]\n",
                addr.port()
            );
        }
        let config = scratch("envoy.yaml");
        let admin_file = scratch("envoy-admin");
        let _ = std::fs::remove_file(&admin_file);
        std::fs::write(&config, y).unwrap();
        let child = Command::new(bin("ENVOY_BIN"))
            .arg("-c")
            .arg(&config)
            .arg("--admin-address-path")
            .arg(&admin_file)
            .args([
                "--use-dynamic-base-id",
                "--concurrency",
                "1",
                "--log-level",
                "warn",
            ])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start envoy");
        let proc = Proc(child);
        let admin = poll(
            "Envoy's admin address",
            || {
                std::fs::read_to_string(&admin_file)
                    .ok()
                    .and_then(|t| t.trim().parse::<SocketAddr>().ok())
            },
            Option::is_some,
        );
        Envoy {
            _proc: proc,
            admin: admin.unwrap(),
        }
    }

    /// The body of an admin request (empty on failure); curl speaks the HTTP/1.1, chunked,
    /// that Envoy's admin answers with.
    fn get(&self, path: &str) -> String {
        let out = Command::new("curl")
            .args(["-sf", "--max-time", "5"])
            .arg(format!("http://{}{path}", self.admin))
            .output()
            .expect("curl (make test installs it)");
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// The `health_flags` of the one host of `cluster`, and its passed checks.
    fn health(&self, cluster: &str) -> (String, u64) {
        let clusters = self.get("/clusters");
        let flags = clusters
            .lines()
            .find(|l| l.starts_with(&format!("{cluster}::")) && l.contains("::health_flags::"))
            .and_then(|l| l.rsplit("::").next())
            .unwrap_or_default()
            .to_string();
        let stats = self.get(&format!(
            "/stats?filter=^cluster\\.{cluster}\\.health_check\\.success$"
        ));
        let passed = stats
            .lines()
            .find_map(|l| l.split(": ").nth(1)?.trim().parse().ok())
            .unwrap_or(0);
        (flags, passed)
    }
}

#[test]
fn envoy_active_tcp_health_checks_mark_tcp_echo_healthy() {
    let servers = servers();
    let mut clusters: Vec<(String, SocketAddr)> = servers
        .iter()
        .enumerate()
        .map(|(i, (_, s))| (format!("echo{i}"), s.addrs[0]))
        .collect();
    clusters.push(("silent".into(), silent_server()));
    let envoy = Envoy::health_checking(&clusters);
    for (i, (what, _)) in servers.iter().enumerate() {
        let cluster = format!("echo{i}");
        // Healthy, and staying so over several checks on the connection Envoy keeps open.
        poll(
            &format!("Envoy to pass tcp-echo ({what}) three times"),
            || envoy.health(&cluster),
            |(flags, passed)| flags == "healthy" && *passed >= 3,
        );
    }
    poll(
        "Envoy to fail the silent server",
        || envoy.health("silent").0,
        |flags| flags.contains("failed_active_hc"),
    );
    for (what, s) in &servers {
        // Envoy keeps its connection open: one connection, many checks.
        let opened = s.log.matching("TCP connection open.").len();
        assert!(opened >= 1, "{what}: Envoy never connected");
    }
}

// ---- HAProxy -----------------------------------------------------------------------------

struct Haproxy {
    _proc: Proc,
    socket: PathBuf,
}

impl Haproxy {
    /// HAProxy with one backend per `(name, address)`, each with `option tcp-check`,
    /// `tcp-check send-binary 50494e47` and `tcp-check expect binary 50494e47`, every 200 ms.
    fn checking(backends: &[(String, SocketAddr)]) -> Haproxy {
        let socket = scratch("haproxy.sock");
        let _ = std::fs::remove_file(&socket);
        let mut cfg = format!(
            "global\n    stats socket {} mode 600 level admin\n\
             defaults\n    mode tcp\n    timeout connect 1s\n    timeout client 10s\n    \
             timeout server 10s\n    timeout check 1s\n",
            socket.display()
        );
        for (name, addr) in backends {
            cfg += &format!(
                "backend {name}\n    option tcp-check\n    tcp-check send-binary 50494e47\n    \
                 tcp-check expect binary 50494e47\n    server s1 {addr} check inter 200ms rise 2 fall 1\n"
            );
        }
        let config = scratch("haproxy.cfg");
        std::fs::write(&config, cfg).unwrap();
        let mut child = Command::new(bin("HAPROXY_BIN"))
            .arg("-db")
            .arg("-f")
            .arg(&config)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start haproxy");
        // Keep draining its log (check results) so that it never blocks on it.
        let log = child.stderr.take().unwrap();
        std::thread::spawn(move || for _ in BufReader::new(log).lines() {});
        Haproxy {
            _proc: Proc(child),
            socket,
        }
    }

    /// `(status, check_status)` of server `s1` of `backend`, from `show stat` (without the
    /// `* ` HAProxy puts before the status of a check in progress).
    fn status(&self, backend: &str) -> (String, String) {
        let Ok(mut s) = UnixStream::connect(&self.socket) else {
            return Default::default();
        };
        let _ = s.write_all(b"show stat\n");
        let mut csv = String::new();
        let _ = s.read_to_string(&mut csv);
        let mut lines = csv.lines();
        let header: Vec<&str> = lines
            .next()
            .unwrap_or_default()
            .trim_start_matches("# ")
            .split(',')
            .collect();
        let col = |name: &str| header.iter().position(|h| *h == name);
        for line in lines {
            let f: Vec<&str> = line.split(',').collect();
            if f.first() == Some(&backend) && f.get(1) == Some(&"s1") {
                let get = |name| col(name).and_then(|i| f.get(i)).unwrap_or(&"").to_string();
                let check = get("check_status").trim_start_matches("* ").to_string();
                return (get("status"), check);
            }
        }
        Default::default()
    }
}

#[test]
fn haproxy_tcp_checks_mark_tcp_echo_up_with_l7ok() {
    let servers = servers();
    let mut backends: Vec<(String, SocketAddr)> = servers
        .iter()
        .enumerate()
        .map(|(i, (_, s))| (format!("echo{i}"), s.addrs[0]))
        .collect();
    backends.push(("silent".into(), silent_server()));
    let haproxy = Haproxy::checking(&backends);
    for (i, (what, _)) in servers.iter().enumerate() {
        let backend = format!("echo{i}");
        poll(
            &format!("HAProxy to mark tcp-echo ({what}) UP with L7OK"),
            || haproxy.status(&backend),
            |(status, check)| status == "UP" && check == "L7OK",
        );
    }
    poll(
        "HAProxy to mark the silent server DOWN",
        || haproxy.status("silent"),
        |(status, check)| status == "DOWN" && check == "L7TOUT",
    );
}

// ---- fortio's tcp:// client --------------------------------------------------------------

#[test]
fn fortio_shaped_messages_come_back_exactly_on_a_kept_open_connection() {
    let s = Server::with(&["--banner", "off"]);
    let mut c = s.connect();
    for i in 0..200u64 {
        // fortio's payload: "Fortio\n%04d\n%012d" (24 bytes, no trailing newline).
        let msg = format!("Fortio\n{:04}\n{:012}", i % 10_000, 170_000_000_000 + i);
        assert_eq!(msg.len(), 24);
        c.write_all(msg.as_bytes()).unwrap();
        assert_eq!(read_exactly(&mut c, 24), msg.as_bytes(), "message {i}");
    }
    support::assert_silent(&mut c, Duration::from_millis(200));
}
