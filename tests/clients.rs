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

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
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

/// Scratch files, removed when dropped.
struct Files(Vec<PathBuf>);

impl Drop for Files {
    fn drop(&mut self) {
        for f in &self.0 {
            let _ = std::fs::remove_file(f);
        }
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

/// The health-checked targets: `echo{i}` for each of `servers`, and `silent`, which must fail.
fn targets(servers: &[(&str, Server)]) -> Vec<(String, SocketAddr)> {
    let mut targets: Vec<(String, SocketAddr)> = servers
        .iter()
        .enumerate()
        .map(|(i, (_, s))| (format!("echo{i}"), s.addrs[0]))
        .collect();
    targets.push(("silent".into(), silent_server()));
    targets
}

// ---- Envoy -------------------------------------------------------------------------------

struct Envoy {
    _proc: Proc,
    admin: SocketAddr,
    _files: Files,
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
        Envoy::with_config("envoy-hc", &y)
    }

    /// Envoy running the bootstrap `yaml` (with an admin endpoint on port 0).
    fn with_config(tag: &str, yaml: &str) -> Envoy {
        let config = scratch(&format!("{tag}.yaml"));
        let admin_file = scratch(&format!("{tag}-admin"));
        let _ = std::fs::remove_file(&admin_file);
        std::fs::write(&config, yaml).unwrap();
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
            _files: Files(vec![config, admin_file]),
        }
    }

    fn get(&self, path: &str) -> String {
        let out = Command::new("curl")
            .args(["-sf", "--max-time", "5"])
            .arg(format!("http://{}{path}", self.admin))
            .output()
            .expect("curl (make test installs it)");
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// The address of listener `name`, once Envoy has bound it.
    fn listener(&self, name: &str) -> Option<SocketAddr> {
        let json = self.get("/listeners?format=json");
        let rest = &json[json.find(&format!("\"{name}\""))?..];
        let p = rest.find("\"port_value\":")? + 13;
        let port = rest[p..]
            .trim_start()
            .split(|c: char| !c.is_ascii_digit())
            .next()?
            .parse::<u16>()
            .ok()?;
        Some(SocketAddr::from(([127, 0, 0, 1], port)))
    }

    /// The `health_flags` of the host of `cluster` at `port` (the only one when `None`).
    fn host_health(&self, cluster: &str, port: Option<u16>) -> String {
        let prefix = match port {
            Some(port) => format!("{cluster}::127.0.0.1:{port}::health_flags::"),
            None => format!("{cluster}::"),
        };
        self.get("/clusters")
            .lines()
            .find(|l| l.starts_with(&prefix) && l.contains("::health_flags::"))
            .and_then(|l| l.rsplit("::").next())
            .unwrap_or_default()
            .to_string()
    }

    /// The `health_flags` of the one host of `cluster`, and its passed checks.
    fn health(&self, cluster: &str) -> (String, u64) {
        let flags = self.host_health(cluster, None);
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
    let clusters = targets(&servers);
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
    _files: Files,
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
            _files: Files(vec![config, socket.clone()]),
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
    let backends = targets(&servers);
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

// ---- PROXY protocol through real proxies ------------------------------------------------

/// A connection from `source` (another loopback address than the proxy's) to `to`.
fn connect_from(source: &str, to: SocketAddr) -> std::net::TcpStream {
    let sock = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
    let from: SocketAddr = format!("{source}:0").parse().unwrap();
    sock.bind(&from.into()).unwrap();
    sock.connect_timeout(&to.into(), DEADLINE).unwrap();
    let s: std::net::TcpStream = sock.into();
    s.set_read_timeout(Some(DEADLINE)).unwrap();
    s
}

/// Sends `data` from 127.0.0.2 through `front`, half-closes; (what came back, our address).
fn through(front: SocketAddr, data: &[u8]) -> (String, SocketAddr) {
    let mut c = connect_from("127.0.0.2", front);
    let me = c.local_addr().unwrap();
    c.write_all(data).unwrap();
    c.shutdown(std::net::Shutdown::Write).unwrap();
    (
        String::from_utf8_lossy(&support::read_to_eof(&mut c)).into_owned(),
        me,
    )
}

/// HAProxy forwarding to `backend` with `send` (`send-proxy` or `send-proxy-v2`), listening on
/// a socket this test bound to a free port and handed over as descriptor 3 (`bind fd@3`).
fn haproxy_sending_proxy(backend: SocketAddr, send: &str) -> (Proc, SocketAddr) {
    use std::os::fd::AsRawFd;
    use std::os::unix::process::CommandExt;
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let front = listener.local_addr().unwrap();
    let config = scratch(&format!("haproxy-{send}.cfg"));
    std::fs::write(
        &config,
        format!(
            "defaults\n    mode tcp\n    timeout connect 2s\n    timeout client 10s\n    \
             timeout server 10s\nfrontend front\n    bind fd@3\n    default_backend echo\n\
             backend echo\n    server s1 {backend} {send}\n"
        ),
    )
    .unwrap();
    let fd = listener.as_raw_fd();
    let mut cmd = Command::new(bin("HAPROXY_BIN"));
    cmd.arg("-db")
        .arg("-f")
        .arg(&config)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    // SAFETY: dup2 and fcntl are async-signal-safe; nothing else runs before exec.
    unsafe {
        cmd.pre_exec(move || {
            if libc::dup2(fd, 3) < 0 || libc::fcntl(3, libc::F_SETFD, 0) < 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let proc = Proc(cmd.spawn().expect("start haproxy"));
    drop(listener);
    (proc, front)
}

/// Envoy with a listener per PROXY protocol version (`V1`, `V2`), each forwarding to
/// `backend` through the `proxy_protocol` upstream transport socket; their addresses.
fn envoy_sending_proxy(backend: SocketAddr) -> (Envoy, BTreeMap<String, SocketAddr>) {
    let mut y = String::from(
        "admin:\n  address: { socket_address: { address: 127.0.0.1, port_value: 0 } }\n\
         static_resources:\n  listeners:\n",
    );
    for v in ["V1", "V2"] {
        y += &format!(
            "  - name: pp_{v}\n    address: {{ socket_address: {{ address: 127.0.0.1, port_value: 0 }} }}\n    \
             filter_chains:\n    - filters:\n      - name: envoy.filters.network.tcp_proxy\n        \
             typed_config:\n          \"@type\": type.googleapis.com/envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy\n          \
             stat_prefix: pp_{v}\n          cluster: echo_{v}\n"
        );
    }
    y += "  clusters:\n";
    for v in ["V1", "V2"] {
        y += &format!(
            "  - name: echo_{v}\n    type: STATIC\n    connect_timeout: 1s\n    load_assignment:\n      \
             cluster_name: echo_{v}\n      endpoints:\n      - lb_endpoints:\n        - endpoint: \
             {{ address: {{ socket_address: {{ address: 127.0.0.1, port_value: {} }} }} }}\n    \
             transport_socket:\n      name: envoy.transport_sockets.upstream_proxy_protocol\n      \
             typed_config:\n        \"@type\": type.googleapis.com/envoy.extensions.transport_sockets.proxy_protocol.v3.ProxyProtocolUpstreamTransport\n        \
             config: {{ version: {v} }}\n        transport_socket:\n          name: envoy.transport_sockets.raw_buffer\n          \
             typed_config: {{ \"@type\": type.googleapis.com/envoy.extensions.transport_sockets.raw_buffer.v3.RawBuffer }}\n",
            backend.port()
        );
    }
    let envoy = Envoy::with_config("envoy-pp", &y);
    let listeners = poll(
        "Envoy's listeners",
        || {
            ["V1", "V2"]
                .iter()
                .filter_map(|v| Some((v.to_string(), envoy.listener(&format!("pp_{v}"))?)))
                .collect::<BTreeMap<_, _>>()
        },
        |m| m.len() == 2,
    );
    (envoy, listeners)
}

/// Checks the answer and the log of one connection through a proxy sending `version`.
fn assert_client_shown(s: &Server, got: &str, me: SocketAddr, version: &str, proxy: &str) {
    assert_eq!(
        got,
        format!("Your address is {me}.\none hello\none last"),
        "{proxy}"
    );
    let open = s.log.wait_for("open", DEADLINE, |l| {
        l.contains("TCP connection open.") && l.contains(&format!("client={me} "))
    });
    assert!(
        support::field(&open, "peer=").starts_with("127.0.0.1:"),
        "{proxy}: {open}"
    );
    assert_eq!(support::field(&open, "proxy="), version, "{proxy}: {open}");
}

#[test]
fn haproxy_send_proxy_v1_and_v2_show_the_real_client() {
    for (send, version) in [("send-proxy", "v1"), ("send-proxy-v2", "v2")] {
        let s = Server::with(&[
            "--proxy-protocol",
            "required",
            "--banner-client",
            "--prefix",
            "one",
        ]);
        let (_haproxy, front) = haproxy_sending_proxy(s.addrs[0], send);
        let (got, me) = through(front, b"hello\nlast");
        assert_client_shown(&s, &got, me, version, send);
    }
}

#[test]
fn envoy_proxy_protocol_v1_and_v2_show_the_real_client() {
    let s = Server::with(&[
        "--proxy-protocol",
        "required",
        "--banner-client",
        "--prefix",
        "one",
    ]);
    let (_envoy, listeners) = envoy_sending_proxy(s.addrs[0]);
    for (v, version) in [("V1", "v1"), ("V2", "v2")] {
        let (got, me) = through(listeners[v], b"hello\nlast");
        assert_client_shown(&s, &got, me, version, &format!("envoy {v}"));
    }
}

#[test]
fn with_proxy_protocol_off_the_proxys_header_comes_back_as_data() {
    let s = Server::with(&["--banner", "off"]);
    let (_haproxy, front) = haproxy_sending_proxy(s.addrs[0], "send-proxy");
    let (got, me) = through(front, b"hello\n");
    let header = format!(
        "PROXY TCP4 127.0.0.2 127.0.0.1 {} {}\r\n",
        me.port(),
        front.port()
    );
    assert_eq!(got, format!("{header}hello\n"));
}

// ---- A rolling update through Envoy --------------------------------------------------------

/// What the client of the rollout rehearsal saw: connections answered, and the failures.
#[derive(Debug, Default)]
struct Traffic {
    answered: BTreeMap<String, usize>,
    failures: Vec<String>,
}

/// One connection through `front`: a line, its echo, the half-close, the end.
fn one_connection(front: SocketAddr, i: usize) -> Result<String, String> {
    let mut c = std::net::TcpStream::connect_timeout(&front, Duration::from_secs(2))
        .map_err(|e| format!("connect: {e}"))?;
    c.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
    let line = format!("rollout {i}\n");
    c.write_all(line.as_bytes())
        .map_err(|e| format!("send: {e}"))?;
    c.shutdown(std::net::Shutdown::Write)
        .map_err(|e| format!("half-close: {e}"))?;
    let mut got = Vec::new();
    c.read_to_end(&mut got)
        .map_err(|e| format!("read: {e} after {:?}", String::from_utf8_lossy(&got)))?;
    let got = String::from_utf8_lossy(&got).into_owned();
    match got.strip_suffix(&line) {
        Some(version) if !version.is_empty() => Ok(version.trim().to_string()),
        _ => Err(format!("no echo: {got:?}")),
    }
}

/// Two tcp-echo backends (`one`, `two`) with `--shutdown-delay delay`, behind an Envoy that
/// health-checks `/readyz` on their admin ports (every second, as a kubelet would every few);
/// a client opens connections through Envoy without pause while `one` gets SIGTERM. Returns
/// what the client saw and `one`'s exit code.
fn rollout(delay: &str) -> (Traffic, Option<i32>) {
    let backend = |prefix: &str| {
        Server::start(
            &[
                "--port",
                "0",
                "--admin-port",
                "0",
                "--prefix",
                prefix,
                "--banner",
                "off",
                "--shutdown-delay",
                delay,
                "--drain-timeout",
                "5",
            ],
            &[("RUST_LOG", "info,tcp_echo::data=off")],
        )
    };
    let (mut one, two) = (backend("one"), backend("two"));
    let endpoint = |s: &Server| {
        format!(
            "        - endpoint: {{ address: {{ socket_address: {{ address: 127.0.0.1, port_value: {} }} }}, \
             health_check_config: {{ port_value: {} }} }}\n",
            s.addrs[0].port(),
            s.admin().port()
        )
    };
    let y = format!(
        "admin:\n  address: {{ socket_address: {{ address: 127.0.0.1, port_value: 0 }} }}\n\
         static_resources:\n  listeners:\n  - name: rollout\n    address: {{ socket_address: {{ address: 127.0.0.1, port_value: 0 }} }}\n    \
         filter_chains:\n    - filters:\n      - name: envoy.filters.network.tcp_proxy\n        \
         typed_config:\n          \"@type\": type.googleapis.com/envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy\n          \
         stat_prefix: rollout\n          cluster: echo\n  clusters:\n  - name: echo\n    type: STATIC\n    \
         connect_timeout: 1s\n    common_lb_config: {{ healthy_panic_threshold: {{ value: 0 }} }}\n    \
         load_assignment:\n      cluster_name: echo\n      endpoints:\n      - lb_endpoints:\n{}{}    \
         health_checks:\n    - timeout: 1s\n      interval: 1s\n      no_traffic_interval: 1s\n      \
         unhealthy_threshold: 1\n      healthy_threshold: 1\n      http_health_check: {{ path: /readyz }}\n",
        endpoint(&one),
        endpoint(&two)
    );
    let envoy = Envoy::with_config(&format!("envoy-rollout-{delay}"), &y);
    for s in [&one, &two] {
        poll(
            "Envoy to find both backends ready",
            || envoy.host_health("echo", Some(s.addrs[0].port())),
            |flags| flags == "healthy",
        );
    }
    let front = poll(
        "the rollout listener",
        || envoy.listener("rollout"),
        Option::is_some,
    )
    .unwrap();

    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let client = {
        let stop = std::sync::Arc::clone(&stop);
        std::thread::spawn(move || {
            let mut t = Traffic::default();
            let mut i = 0;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                match one_connection(front, i) {
                    Ok(version) => *t.answered.entry(version).or_default() += 1,
                    Err(e) => t.failures.push(e),
                }
                i += 1;
                std::thread::sleep(Duration::from_millis(5)); // a steady stream, not a flood
            }
            t
        })
    };
    std::thread::sleep(Duration::from_millis(500)); // traffic to both before the rollout
    one.signal(libc::SIGTERM);
    let code = one.wait_exit(Duration::from_secs(30)).code();
    std::thread::sleep(Duration::from_millis(500)); // and to the survivor after it
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    (client.join().unwrap(), code)
}

#[test]
fn a_rolling_update_with_a_shutdown_delay_refuses_no_connection() {
    let (traffic, code) = rollout("3");
    assert_eq!(code, Some(0), "the stopped backend's exit");
    assert!(
        traffic.failures.is_empty(),
        "{} connections failed, e.g. {:?}; answered {:?}",
        traffic.failures.len(),
        traffic.failures.first(),
        traffic.answered
    );
    assert!(
        traffic.answered.get("one").copied().unwrap_or(0) > 10
            && traffic.answered.get("two").copied().unwrap_or(0) > 10,
        "both backends answered before the rollout: {:?}",
        traffic.answered
    );
}

#[test]
fn without_the_delay_the_same_rollout_loses_connections() {
    // The rehearsal's own check: with --shutdown-delay 0 the stopped backend closes its
    // listener while Envoy still routes to it (until its next health check).
    let (traffic, code) = rollout("0");
    assert_eq!(code, Some(0));
    assert!(
        !traffic.failures.is_empty(),
        "no connection failed without a delay: the rehearsal cannot tell; answered {:?}",
        traffic.answered
    );
}

// ---- Faults, as a proxy sees them ------------------------------------------------------------

/// A counter or gauge from Envoy's `/stats` (0 when absent).
fn envoy_stat(envoy: &Envoy, name: &str) -> u64 {
    envoy
        .get(&format!("/stats?filter=^{}$", name.replace('.', "\\.")))
        .lines()
        .find_map(|l| l.split(": ").nth(1)?.trim().parse().ok())
        .unwrap_or(0)
}

/// Envoy with one TCP proxy listener `front` to a cluster `echo` of `backends`, with `proxy`
/// and `cluster` added to the tcp_proxy and the cluster.
fn envoy_in_front(
    tag: &str,
    backends: &[SocketAddr],
    proxy: &str,
    cluster: &str,
) -> (Envoy, SocketAddr) {
    let endpoints: String = backends
        .iter()
        .map(|a| {
            format!(
                "        - endpoint: {{ address: {{ socket_address: {{ address: 127.0.0.1, port_value: {} }} }} }}\n",
                a.port()
            )
        })
        .collect();
    let y = format!(
        "admin:\n  address: {{ socket_address: {{ address: 127.0.0.1, port_value: 0 }} }}\n\
         static_resources:\n  listeners:\n  - name: front\n    address: {{ socket_address: {{ address: 127.0.0.1, port_value: 0 }} }}\n    \
         filter_chains:\n    - filters:\n      - name: envoy.filters.network.tcp_proxy\n        typed_config:\n          \
         \"@type\": type.googleapis.com/envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy\n          stat_prefix: front\n          cluster: echo\n{proxy}  \
         clusters:\n  - name: echo\n    type: STATIC\n    connect_timeout: 1s\n    load_assignment:\n      cluster_name: echo\n      endpoints:\n      - lb_endpoints:\n{endpoints}{cluster}"
    );
    let envoy = Envoy::with_config(tag, &y);
    let front = poll(
        "the front listener",
        || envoy.listener("front"),
        Option::is_some,
    )
    .unwrap();
    (envoy, front)
}

#[test]
fn envoys_tcp_idle_timeout_ends_a_hanging_backend_connection() {
    let s = Server::with(&["--fault", "hang", "--idle-timeout", "60"]);
    let (envoy, front) = envoy_in_front(
        "envoy-idle",
        &[s.addrs[0]],
        "          idle_timeout: 1s\n",
        "",
    );
    let mut c = support::connect(front);
    let start = Instant::now();
    c.write_all(b"anyone there?\n").unwrap();
    let mut got = Vec::new();
    let _ = c.read_to_end(&mut got);
    let took = start.elapsed();
    assert!(got.is_empty(), "{got:?}");
    assert!(
        took >= Duration::from_millis(900) && took < Duration::from_secs(4),
        "Envoy closed after {took:?}"
    );
    poll(
        "Envoy's idle_timeout counter",
        || envoy_stat(&envoy, "tcp.front.idle_timeout"),
        |n| *n == 1,
    );
    // Envoy ended it, not a time limit of tcp-echo's: the hanging backend, which reads
    // nothing, holds its side until its own idle timeout (60 s here).
    s.log
        .wait_for("open", DEADLINE, |l| l.contains("TCP connection open."));
    assert!(s.log.matching("TCP connection closed.").is_empty());
}

#[test]
fn envoys_outlier_detection_ejects_a_backend_switched_to_refuse() {
    let a = Server::with(&[
        "--prefix",
        "a",
        "--banner",
        "off",
        "--admin-port",
        "0",
        "--admin-control",
    ]);
    let b = Server::with(&["--prefix", "b", "--banner", "off"]);
    let (envoy, front) = envoy_in_front(
        "envoy-outlier",
        &[a.addrs[0], b.addrs[0]],
        "",
        "    outlier_detection:\n      consecutive_5xx: 3\n      interval: 1s\n      base_ejection_time: 30s\n      max_ejection_percent: 100\n",
    );
    let answer = || -> Option<String> {
        let mut c = TcpStream::connect(front).ok()?;
        c.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
        c.write_all(b"x\n").ok()?;
        c.shutdown(std::net::Shutdown::Write).ok()?;
        let mut got = Vec::new();
        c.read_to_end(&mut got).ok()?;
        let got = String::from_utf8_lossy(&got).into_owned();
        got.strip_suffix(" x\n").map(str::to_string)
    };
    let before: Vec<Option<String>> = (0..20).map(|_| answer()).collect();
    assert!(
        before.contains(&Some("a".into())) && before.contains(&Some("b".into())),
        "{before:?}"
    );
    // Switch `a` to refuse at runtime, as `curl -X PUT .../fault -d refuse` does.
    let mut put = support::connect(a.admin());
    put.write_all(b"PUT /fault HTTP/1.1\r\nHost: a\r\nContent-Length: 6\r\n\r\nrefuse")
        .unwrap();
    assert!(String::from_utf8_lossy(&support::read_to_eof(&mut put)).starts_with("HTTP/1.1 200"));
    poll(
        "Envoy to eject the refusing backend",
        || {
            answer();
            envoy_stat(&envoy, "cluster.echo.outlier_detection.ejections_active")
        },
        |n| *n == 1,
    );
    // Traffic keeps flowing, all of it to the other backend.
    let after: Vec<Option<String>> = (0..30).map(|_| answer()).collect();
    assert!(after.iter().all(|v| v.as_deref() == Some("b")), "{after:?}");
    assert!(
        envoy_stat(
            &envoy,
            "cluster.echo.outlier_detection.ejections_enforced_consecutive_5xx"
        ) >= 1
    );
}

#[test]
fn a_delay_shows_in_the_round_trips_through_envoy() {
    let s = Server::with(&["--prefix", "one", "--fault", "delay=300ms"]);
    let (_envoy, front) = envoy_in_front("envoy-delay", &[s.addrs[0]], "", "");
    let out = support::command(
        &["probe", &front.to_string(), "--connections", "5", "--json"],
        &[],
    )
    .output()
    .expect("tcp-echo probe");
    let json = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "{json}");
    let p50: f64 = json
        .split("\"rtt_ms_p50\":")
        .nth(1)
        .and_then(|r| r.split(',').next())
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("{json}"));
    assert!(
        (300.0..500.0).contains(&p50),
        "round trip p50 {p50} ms through Envoy"
    );
}
