//! The local rehearsal (`make mesh-test`): tcp-echo v1 and v2 on loopback, started with the
//! settings of their Deployments, behind a real Envoy playing Istio's ingress gateway, whose
//! listeners, backends and weights are derived from the manifests (`routes`). Needs
//! `TCP_ECHO_BIN` and `ENVOY_BIN`, which `make mesh-test` provides.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, ErrorKind, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tcp_echo_k8s::{check, routes, Backend, Protocol, Route};

const DEADLINE: Duration = Duration::from_secs(15);

fn env(name: &str) -> String {
    std::env::var(name).unwrap_or_else(|_| panic!("{name} is not set: run `make mesh-test`"))
}

/// A child process killed when dropped.
struct Proc(Child);

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// The banner a backend started by [`start_backend`] sends.
fn banner(b: &Backend) -> String {
    format!(
        "Welcome, you are connected to node rehearsal-node.\nRunning on Pod {}-rehearsal.\n\
         In namespace default.\nWith IP address 127.0.0.1.\nService {}.\n",
        b.deployment, b.service_account
    )
}

/// A backend running as its pod would.
struct Running {
    proc: Proc,
    /// Its echo port.
    addr: SocketAddr,
    /// Its TLS port, if it has one.
    tls: Option<SocketAddr>,
    /// Its UDP echo, if it has one.
    udp: Option<SocketAddr>,
    /// Its admin port, where the kubelet probes it.
    admin: SocketAddr,
    /// Its log, line by line.
    log: Arc<Mutex<Vec<String>>>,
}

impl Running {
    /// Connections the echo log shows opened.
    fn echo_connections(&self) -> usize {
        let log = self.log.lock().unwrap();
        log.iter()
            .filter(|l| l.contains("TCP connection open"))
            .count()
    }
}

/// Starts one backend as its Deployment would run it: its literal environment, the downward-API
/// values a pod would get, on free loopback ports instead of TCP_PORT, ECHO_TLS_PORT and
/// ECHO_ADMIN_PORT, with the rehearsal's certificate where the Secret would be mounted.
fn start_backend(b: &Backend) -> Running {
    let mut cmd = Command::new(env("TCP_ECHO_BIN"));
    for var in ["RUST_LOG", "ECHO_BANNER", "ECHO_MAX_CONNECTIONS"] {
        cmd.env_remove(var);
    }
    cmd.envs(&b.env);
    if b.env.contains_key("ECHO_TLS_PORT") {
        let pki = pki();
        cmd.env("ECHO_TLS_PORT", "0")
            .env("ECHO_TLS_CERT", &pki.server.0)
            .env("ECHO_TLS_KEY", &pki.server.1);
    }
    cmd.env("TCP_PORT", "0")
        .env("ECHO_ADMIN_PORT", "0")
        .env("ECHO_BIND", "127.0.0.1")
        .env("NODE_NAME", "rehearsal-node")
        .env("POD_NAME", format!("{}-rehearsal", b.deployment))
        .env("POD_NAMESPACE", "default")
        .env("POD_IP", "127.0.0.1")
        .env("SERVICE_ACCOUNT", &b.service_account)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    let mut child = cmd.spawn().expect("start tcp-echo");
    let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
    let log = Arc::new(Mutex::new(Vec::new()));
    let (mut addr, mut tls, mut udp, mut admin) = (None, None, None, None);
    loop {
        let line = lines.next().expect("tcp-echo exited").expect("read log");
        if let Some(a) = line.split("listening on ").nth(1) {
            let a = a.trim();
            if let Some(a) = a.strip_suffix(" (TLS)") {
                tls = Some(a.parse().expect("TLS address"));
            } else if let Some(a) = a.strip_suffix(" (UDP)") {
                udp = Some(a.parse().expect("UDP address"));
            } else {
                addr = Some(a.parse().expect("address"));
            }
        }
        if let Some(a) = line.split("admin endpoint on http://").nth(1) {
            let a = a.split(": ").next().unwrap();
            admin = Some(a.parse().expect("admin address"));
        }
        let done = line.contains("settings:");
        log.lock().unwrap().push(line);
        if done {
            break;
        }
    }
    // Keep reading the log, so the backend never blocks on it and the tests can count records.
    let writer = Arc::clone(&log);
    std::thread::spawn(move || {
        for line in lines.map_while(Result::ok) {
            writer.lock().unwrap().push(line);
        }
    });
    Running {
        proc: Proc(child),
        addr: addr.expect("a plain port"),
        tls,
        udp,
        admin: admin.expect("an admin port"),
        log,
    }
}

/// The rehearsal's certificates, made once by openssl: a CA; the backends' certificate (what
/// the Secret tcp-echo-tls would hold) for every name the walkthroughs route and the name
/// Envoy sends when it re-encrypts; and Envoy's own, for the clients that reach it.
struct Pki {
    ca: PathBuf,
    server: (PathBuf, PathBuf),
    envoy: (PathBuf, PathBuf),
}

fn pki() -> &'static Pki {
    static PKI: std::sync::OnceLock<Pki> = std::sync::OnceLock::new();
    PKI.get_or_init(|| {
        let dir = std::env::temp_dir().join(format!("tcp-echo-mesh-pki-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let run = |args: &[&str]| {
            let out = Command::new("openssl")
                .args(args)
                .current_dir(&dir)
                .output()
                .expect("openssl (make test installs it)");
            assert!(
                out.status.success(),
                "openssl {args:?}: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        };
        run(&[
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
            "-keyout",
            "ca.key",
            "-out",
            "ca.pem",
            "-days",
            "2",
            "-subj",
            "/CN=rehearsal CA",
        ]);
        let issue = |name: &str, sans: &str| {
            let (key, csr, ext, pem) = (
                format!("{name}.key"),
                format!("{name}.csr"),
                format!("{name}.ext"),
                format!("{name}.pem"),
            );
            run(&[
                "genpkey",
                "-algorithm",
                "EC",
                "-pkeyopt",
                "ec_paramgen_curve:P-256",
                "-out",
                &key,
            ]);
            run(&[
                "req",
                "-new",
                "-key",
                &key,
                "-out",
                &csr,
                "-subj",
                &format!("/CN={name}"),
            ]);
            std::fs::write(
                dir.join(&ext),
                format!("subjectAltName={sans}\nbasicConstraints=CA:FALSE\n"),
            )
            .unwrap();
            run(&[
                "x509",
                "-req",
                "-in",
                &csr,
                "-CA",
                "ca.pem",
                "-CAkey",
                "ca.key",
                "-CAcreateserial",
                "-out",
                &pem,
                "-days",
                "2",
                "-extfile",
                &ext,
            ]);
            (dir.join(pem), dir.join(key))
        };
        Pki {
            ca: dir.join("ca.pem"),
            server: issue(
                "tcp-echo",
                "DNS:v1.example.com,DNS:v2.example.com,DNS:echo.example.com,DNS:backend.internal",
            ),
            envoy: issue("envoy", "DNS:front.example.com"),
        }
    })
}

/// What the kubelet would do for each backend: its manifest's HTTP probes (the paths, on the
/// admin port), here every 100 ms rather than every 5 to 10 s. Counts the answers by backend.
struct Kubelet {
    stop: Arc<AtomicBool>,
    /// Deployment -> (probes answered 200, probes that failed).
    results: Arc<Mutex<BTreeMap<String, (usize, usize)>>>,
    join: Option<std::thread::JoinHandle<()>>,
}

impl Kubelet {
    fn start(targets: Vec<(String, SocketAddr, Vec<String>)>) -> Kubelet {
        let stop = Arc::new(AtomicBool::new(false));
        let results = Arc::new(Mutex::new(BTreeMap::new()));
        let (flag, out) = (Arc::clone(&stop), Arc::clone(&results));
        let join = std::thread::spawn(move || {
            while !flag.load(Ordering::Relaxed) {
                for (name, admin, paths) in &targets {
                    for path in paths {
                        let ok = http_status(*admin, path) == Some(200);
                        let mut r = out.lock().unwrap();
                        let e = r.entry(name.clone()).or_insert((0, 0));
                        if ok {
                            e.0 += 1
                        } else {
                            e.1 += 1
                        }
                    }
                }
                std::thread::sleep(Duration::from_millis(100));
            }
        });
        Kubelet {
            stop,
            results,
            join: Some(join),
        }
    }

    /// Probes `deployment` has answered so far; panics on a failed one.
    fn answered(&self, deployment: &str) -> usize {
        let (ok, failed) = self
            .results
            .lock()
            .unwrap()
            .get(deployment)
            .copied()
            .unwrap_or_default();
        assert_eq!(failed, 0, "{deployment}: {failed} probes failed");
        ok
    }

    /// Waits until `deployment` has answered `n` probes; panics on a failed one.
    fn wait_answered(&self, deployment: &str, n: usize) {
        let deadline = Instant::now() + DEADLINE;
        loop {
            let ok = self.answered(deployment);
            if ok >= n {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "{deployment}: {ok} of {n} probes answered"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Kubelet {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(j) = self.join.take() {
            let _ = j.join();
        }
    }
}

/// `GET path` as the kubelet sends it, within a second; the status, if any.
fn http_status(addr: SocketAddr, path: &str) -> Option<u16> {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(1)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(1))).ok()?;
    let request = format!(
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nUser-Agent: kube-probe/1.34\r\n\
         Accept: */*\r\nConnection: close\r\n\r\n"
    );
    s.write_all(request.as_bytes()).ok()?;
    let mut out = Vec::new();
    s.read_to_end(&mut out).ok()?;
    let text = String::from_utf8_lossy(&out);
    text.strip_prefix("HTTP/1.1 ")?.get(..3)?.parse().ok()
}

/// The cluster name of `backend` reached on a port of `protocol`.
fn cluster(backend: &Backend, protocol: Protocol) -> String {
    match protocol {
        Protocol::Tls => format!("{}_tls", backend.deployment),
        Protocol::Udp => format!("{}_udp", backend.deployment),
        Protocol::Tcp => backend.deployment.clone(),
    }
}

/// A UDP listener's `udp_proxy` to the cluster of `r`: its one backend's, or the route's own
/// cluster whose endpoints carry the weights (`udp_proxy` routes to one cluster, and Envoy
/// Gateway programs UDPRoute weights as endpoint weights).
fn udp_proxy(r: &Route, stat: &str) -> String {
    let cluster = if r.backends.len() == 1 {
        cluster(&r.backends[0], Protocol::Udp)
    } else {
        format!("{stat}_weighted")
    };
    format!(
        "    listener_filters:\n    - name: envoy.filters.udp_listener.udp_proxy\n      typed_config:\n        \"@type\": type.googleapis.com/envoy.extensions.filters.udp.udp_proxy.v3.UdpProxyConfig\n        stat_prefix: {stat}\n        matcher:\n          on_no_match:\n            action:\n              name: route\n              typed_config:\n                \"@type\": type.googleapis.com/envoy.extensions.filters.udp.udp_proxy.v3.Route\n                cluster: {cluster}\n"
    )
}

/// A TCP proxy to the cluster(s) of `r`: one, or `weighted_clusters` (how Istio programs TCP
/// and TLS weights).
fn tcp_proxy(r: &Route, stat: &str) -> String {
    let mut y = format!(
        "      - name: envoy.filters.network.tcp_proxy\n        typed_config:\n          \"@type\": type.googleapis.com/envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy\n          stat_prefix: {stat}\n"
    );
    if r.backends.len() == 1 {
        y += &format!(
            "          cluster: {}\n",
            cluster(&r.backends[0], r.protocol)
        );
    } else {
        y += "          weighted_clusters:\n            clusters:\n";
        for b in &r.backends {
            y += &format!(
                "            - {{ name: {}, weight: {} }}\n",
                cluster(b, r.protocol),
                b.weight
            );
        }
    }
    y
}

/// Envoy's bootstrap: an admin endpoint, and per gateway port a loopback listener (on a port
/// the OS chooses, read back from the admin endpoint). A TCP port proxies to its cluster(s);
/// a TLS port reads the ClientHello (`tls_inspector`) and picks a filter chain by SNI
/// (`server_names`), passing TLS through, as Istio programs PASSTHROUGH. One STATIC cluster
/// per backend and port kind.
fn envoy_config(routes: &[Route], backends: &BTreeMap<String, Running>) -> String {
    let mut y = String::from(
        "admin:\n  address: { socket_address: { address: 127.0.0.1, port_value: 0 } }\n\
         static_resources:\n  listeners:\n",
    );
    let mut ports: Vec<u16> = routes.iter().map(|r| r.gateway_port).collect();
    ports.sort_unstable();
    ports.dedup();
    for port in ports {
        let name = format!("gateway_{port}");
        let here: Vec<&Route> = routes.iter().filter(|r| r.gateway_port == port).collect();
        if here[0].protocol == Protocol::Udp {
            y += &format!(
                "  - name: {name}\n    address: {{ socket_address: {{ protocol: UDP, address: 127.0.0.1, port_value: 0 }} }}\n"
            );
            y += &udp_proxy(here[0], &name);
            continue;
        }
        y += &format!(
            "  - name: {name}\n    address: {{ socket_address: {{ address: 127.0.0.1, port_value: 0 }} }}\n"
        );
        if here[0].protocol == Protocol::Tls {
            y += "    listener_filters:\n    - name: envoy.filters.listener.tls_inspector\n      typed_config: { \"@type\": type.googleapis.com/envoy.extensions.filters.listener.tls_inspector.v3.TlsInspector }\n";
        }
        y += "    filter_chains:\n";
        for r in here {
            y += "    - ";
            if let Some(sni) = &r.sni {
                y += &format!("filter_chain_match: {{ server_names: [\"{sni}\"] }}\n      ");
            }
            y += "filters:\n";
            y += &tcp_proxy(r, &name);
        }
    }
    y += "  clusters:\n";
    for (name, b) in backends {
        for (cluster, addr) in [
            (name.clone(), Some(b.addr)),
            (format!("{name}_tls"), b.tls),
            (format!("{name}_udp"), b.udp),
        ] {
            let Some(addr) = addr else { continue };
            y += &static_cluster(&cluster, addr);
        }
    }
    for r in routes
        .iter()
        .filter(|r| r.protocol == Protocol::Udp && r.backends.len() > 1)
    {
        let endpoints: Vec<(SocketAddr, u32)> = r
            .backends
            .iter()
            .map(|b| (backends[&b.deployment].udp.expect("a UDP echo"), b.weight))
            .collect();
        y += &weighted_cluster(&format!("gateway_{}_weighted", r.gateway_port), &endpoints);
    }
    y
}

/// A STATIC cluster of weighted endpoints.
fn weighted_cluster(name: &str, endpoints: &[(SocketAddr, u32)]) -> String {
    let mut y = format!(
        "  - name: {name}\n    type: STATIC\n    connect_timeout: 1s\n    load_assignment:\n      cluster_name: {name}\n      endpoints:\n      - lb_endpoints:\n"
    );
    for (addr, weight) in endpoints {
        y += &format!(
            "        - endpoint: {{ address: {{ socket_address: {{ address: 127.0.0.1, port_value: {} }} }} }}\n          load_balancing_weight: {weight}\n",
            addr.port()
        );
    }
    y
}

/// A STATIC cluster of one endpoint.
fn static_cluster(name: &str, addr: SocketAddr) -> String {
    format!(
        "  - name: {name}\n    type: STATIC\n    connect_timeout: 1s\n    load_assignment:\n      cluster_name: {name}\n      endpoints:\n      - lb_endpoints:\n        - endpoint: {{ address: {{ socket_address: {{ address: 127.0.0.1, port_value: {} }} }} }}\n",
        addr.port()
    )
}

/// Starts Envoy with the bootstrap `config`; it writes its admin address to `admin_file`.
fn start_envoy(config: &Path, admin_file: &Path) -> Proc {
    let envoy = Command::new(env("ENVOY_BIN"))
        .arg("-c")
        .arg(config)
        .arg("--admin-address-path")
        .arg(admin_file)
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
    Proc(envoy)
}

/// Where Envoy's gateway listeners are: from its admin endpoint (whose address Envoy writes to
/// `admin_file`), `GET /listeners?format=json`, once every gateway port is listed.
fn listener_addresses(admin_file: &Path, routes: &[Route]) -> BTreeMap<u16, SocketAddr> {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let found = std::fs::read_to_string(admin_file)
            .ok()
            .and_then(|a| a.trim().parse::<SocketAddr>().ok())
            .and_then(|admin| {
                // curl speaks the HTTP/1.1 (chunked) that Envoy's admin answers with.
                let out = Command::new("curl")
                    .args(["-sf", "--max-time", "5"])
                    .arg(format!("http://{admin}/listeners?format=json"))
                    .output()
                    .expect("curl (make mesh-test installs it)");
                let json: serde_json::Value = serde_json::from_slice(&out.stdout).ok()?;
                let mut out = BTreeMap::new();
                for l in json["listener_statuses"].as_array()? {
                    let gateway: u16 =
                        l["name"].as_str()?.strip_prefix("gateway_")?.parse().ok()?;
                    let port = l["local_address"]["socket_address"]["port_value"].as_u64()?;
                    out.insert(gateway, SocketAddr::from(([127, 0, 0, 1], port as u16)));
                }
                routes
                    .iter()
                    .all(|r| out.contains_key(&r.gateway_port))
                    .then_some(out)
            });
        if let Some(found) = found {
            return found;
        }
        assert!(
            Instant::now() < deadline,
            "envoy did not report its listeners"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// The rehearsal of one walkthrough: backends and Envoy running.
struct Rehearsal {
    routes: Vec<Route>,
    backends: BTreeMap<String, Running>,
    /// Probing every backend, as the manifests say.
    kubelet: Kubelet,
    /// Gateway port -> Envoy's loopback address for it.
    gateway: BTreeMap<u16, SocketAddr>,
    _envoy: Proc,
    _config: PathBuf,
}

impl Rehearsal {
    fn start(dir: &str) -> Rehearsal {
        let set = check(
            &PathBuf::from(env!("CARGO_MANIFEST_DIR"))
                .join("..")
                .join(dir),
        )
        .unwrap_or_else(|e| panic!("{e:#?}"));
        let routes = routes(&set);
        assert!(!routes.is_empty());
        let mut backends = BTreeMap::new();
        for b in routes.iter().flat_map(|r| &r.backends) {
            if !backends.contains_key(&b.deployment) {
                backends.insert(b.deployment.clone(), start_backend(b));
            }
        }
        // The probes of each backend's manifest, sent to the port it actually has.
        let mut targets = Vec::new();
        for b in routes.iter().flat_map(|r| &r.backends) {
            if targets.iter().any(|(name, _, _)| name == &b.deployment) {
                continue;
            }
            let declared: u16 = b.env["ECHO_ADMIN_PORT"].parse().unwrap();
            assert_eq!(
                b.http_probes.len(),
                2,
                "{}: {:?}",
                b.deployment,
                b.http_probes
            );
            for (port, _) in &b.http_probes {
                assert_eq!(
                    *port, declared,
                    "{}: a probe off the admin port",
                    b.deployment
                );
            }
            let paths = b.http_probes.iter().map(|(_, p)| p.clone()).collect();
            targets.push((b.deployment.clone(), backends[&b.deployment].admin, paths));
        }
        let kubelet = Kubelet::start(targets);
        // Rehearsals run in parallel, each with its own Envoy and files.
        static NEXT: AtomicUsize = AtomicUsize::new(0);
        let config = std::env::temp_dir().join(format!(
            "tcp-echo-envoy-{}-{}.yaml",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::SeqCst)
        ));
        let admin_file = config.with_extension("admin");
        let _ = std::fs::remove_file(&admin_file);
        std::fs::write(&config, envoy_config(&routes, &backends)).unwrap();
        let envoy = start_envoy(&config, &admin_file);
        let gateway = listener_addresses(&admin_file, &routes);
        // Envoy reports a listener once it is bound, so it queues connections from here on.
        // (No test connection here: it would reach a backend and show in its echo log.)
        Rehearsal {
            routes,
            backends,
            kubelet,
            gateway,
            _envoy: envoy,
            _config: config,
        }
    }

    fn backend(&self, port: u16, version: &str) -> Backend {
        self.routes
            .iter()
            .filter(|r| r.gateway_port == port)
            .find_map(|r| r.backends.iter().find(|b| b.version == version))
            .cloned()
            .unwrap_or_else(|| panic!("no {version} behind {port}"))
    }

    /// The echo logs of `deployments` show exactly `connections` connections between them, and
    /// still do after the kubelet has had six more answers from each: the probes are not among
    /// them. The logs are read by other threads, so this first waits (with a deadline) for them
    /// to catch up.
    fn assert_probes_unlogged(&self, deployments: &[&str], connections: usize) {
        let seen = || -> usize {
            deployments
                .iter()
                .map(|d| self.backends[*d].echo_connections())
                .sum()
        };
        let logs = || {
            deployments
                .iter()
                .map(|d| format!("{d}:\n{}", self.backends[*d].log.lock().unwrap().join("\n")))
                .collect::<Vec<_>>()
                .join("\n")
        };
        let deadline = Instant::now() + DEADLINE;
        while seen() < connections {
            assert!(
                Instant::now() < deadline,
                "the echo logs show {} of {connections} connections:\n{}",
                seen(),
                logs()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        for d in deployments {
            let before = self.kubelet.answered(d);
            self.kubelet.wait_answered(d, before + 6);
        }
        assert_eq!(
            seen(),
            connections,
            "the echo logs show connections that were not the clients':\n{}",
            logs()
        );
    }
}

fn connect(addr: SocketAddr) -> TcpStream {
    let s = TcpStream::connect(addr).expect("connect to envoy");
    s.set_read_timeout(Some(DEADLINE)).unwrap();
    s
}

/// Sends `data`, half-closes, reads until the other side closes.
fn exchange(addr: SocketAddr, data: &[u8]) -> String {
    let mut s = connect(addr);
    s.write_all(data).unwrap();
    s.shutdown(Shutdown::Write).unwrap();
    let mut out = Vec::new();
    s.read_to_end(&mut out).expect("read through envoy");
    String::from_utf8(out).unwrap()
}

/// Walkthrough (a): each gateway port reaches its version and echoes every byte, the last
/// line without a newline included.
fn port_routing(dir: &str) {
    let r = Rehearsal::start(dir);
    for (port, version, prefix) in [(31400, "v1", "one"), (31401, "v2", "two")] {
        let b = r.backend(port, version);
        let got = exchange(r.gateway[&port], b"hello\nlast line without newline");
        assert_eq!(
            got,
            format!(
                "{}{prefix} hello\n{prefix} last line without newline",
                banner(&b)
            ),
            "through gateway port {port}"
        );
    }
    r.assert_probes_unlogged(&["tcp-echo-v1"], 1);
    r.assert_probes_unlogged(&["tcp-echo-v2"], 1);
}

#[test]
fn port_routing_sends_each_gateway_port_to_its_version() {
    port_routing("");
}

#[test]
fn gateway_api_port_routing_sends_each_gateway_port_to_its_version() {
    port_routing("gateway-api");
}

/// `tcp-echo probe ARGS` (the server's own client mode): its exit code and its JSON.
fn probe(args: &[&str]) -> (Option<i32>, String) {
    let out = Command::new(env("TCP_ECHO_BIN"))
        .arg("probe")
        .args(args)
        .arg("--json")
        .output()
        .expect("run tcp-echo probe");
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
    )
}

/// Walkthrough (b): 200 one-shot connections split 80/20 between the versions, as
/// `tcp-echo probe --expect one=80,two=20` judges it (Pearson's chi-square; it fails a
/// correct split about once in a million runs, and an even split of 200 with p < 1e-20);
/// a wrong expectation fails.
fn weighted_routing(dir: &str) {
    let r = Rehearsal::start(dir);
    let (v1, v2) = (r.backend(31400, "v1"), r.backend(31400, "v2"));
    let gateway = r.gateway[&31400].to_string();
    let (code, json) = probe(&[
        &gateway,
        "--connections",
        "200",
        "--expect",
        "one=80,two=20",
    ]);
    println!("{dir}: {json}");
    assert_eq!(code, Some(0), "{json}");
    assert!(json.contains("\"ok\":200,\"failed\":0"), "{json}");
    assert!(json.contains("\"expect_ok\":true"), "{json}");
    // Each answer came from the pod of its version (the banner's pod line).
    for b in [&v1, &v2] {
        assert!(
            json.contains(&format!("\"{}-rehearsal\":", b.deployment)),
            "{json}"
        );
    }
    let (code, json) = probe(&[
        &gateway,
        "--connections",
        "200",
        "--expect",
        "one=50,two=50",
    ]);
    assert_eq!(code, Some(1), "a wrong expectation must fail: {json}");
    assert!(json.contains("\"expect_ok\":false"), "{json}");
    r.assert_probes_unlogged(&[&v1.deployment, &v2.deployment], 400);
}

#[test]
fn weighted_routing_splits_connections_80_20() {
    weighted_routing("weighted");
}

#[test]
fn gateway_api_weighted_routing_splits_connections_80_20() {
    weighted_routing("gateway-api/weighted");
}

/// A backend that stops shows as a closed connection, for a client connected at the time and
/// for a new one, not as a hang; the other version is unaffected.
fn stopped_backend(dir: &str) {
    let mut r = Rehearsal::start(dir);
    let v2 = r.backend(31401, "v2");
    // A client connected through the gateway, banner read, when v2 stops.
    let mut open = connect(r.gateway[&31401]);
    let want = banner(&v2);
    let mut got = vec![0u8; want.len()];
    open.read_exact(&mut got).unwrap();
    assert_eq!(String::from_utf8(got).unwrap(), want);
    // The Deployment's shutdown delay: the pod keeps serving that long after SIGTERM, so
    // that the endpoints drop it first; then its idle connections close at once.
    let delay: f64 = v2
        .env
        .get("ECHO_SHUTDOWN_DELAY")
        .map_or(0.0, |d| d.parse().expect("a number of seconds"));
    let proc = r.backends.remove("tcp-echo-v2").unwrap().proc;
    // SAFETY: signalling our own child.
    unsafe { libc_kill(proc.0.id() as i32) };
    let t = Instant::now();
    let mut rest = Vec::new();
    match open.read_to_end(&mut rest) {
        Ok(_) => {}
        Err(e) => assert_eq!(e.kind(), ErrorKind::ConnectionReset, "{e}"),
    }
    let took = t.elapsed().as_secs_f64();
    assert!(
        took >= delay - 0.5 && took < delay + 5.0,
        "the open connection closed {took:.1}s after SIGTERM (shutdown delay {delay}s)"
    );
    drop(proc);
    // A new client: Envoy cannot reach v2 and closes the connection.
    let t = Instant::now();
    let mut fresh = connect(r.gateway[&31401]);
    let _ = fresh.write_all(b"anyone there?\n");
    let mut buf = Vec::new();
    match fresh.read_to_end(&mut buf) {
        Ok(_) => assert!(buf.is_empty(), "got {buf:?} from a stopped backend"),
        Err(e) => assert_eq!(e.kind(), ErrorKind::ConnectionReset, "{e}"),
    }
    assert!(
        t.elapsed() < Duration::from_secs(5),
        "the new connection hung for {:?}",
        t.elapsed()
    );
    // v1 is unaffected.
    let v1 = r.backend(31400, "v1");
    assert_eq!(
        exchange(r.gateway[&31400], b"still\n"),
        format!("{}one still\n", banner(&v1))
    );
    r.assert_probes_unlogged(&["tcp-echo-v1"], 1);
}

#[test]
fn a_stopped_backend_is_a_closed_connection_not_a_hang() {
    stopped_backend("");
}

#[test]
fn gateway_api_a_stopped_backend_is_a_closed_connection_not_a_hang() {
    stopped_backend("gateway-api");
}

/// SIGTERM, as Kubernetes stops a pod.
unsafe fn libc_kill(pid: i32) {
    extern "C" {
        fn kill(pid: i32, sig: i32) -> i32;
    }
    kill(pid, 15);
}

// ---- TLS -----------------------------------------------------------------------------------

fn ca() -> &'static str {
    pki().ca.to_str().unwrap()
}

/// The value of `"key":` in a one-line JSON object (a number, a string or an object).
fn json_field<'a>(json: &'a str, key: &str) -> &'a str {
    let start = json
        .find(&format!("\"{key}\":"))
        .unwrap_or_else(|| panic!("no {key} in {json}"))
        + key.len()
        + 3;
    let rest = &json[start..];
    let end = if rest.starts_with('{') {
        let mut depth = 0;
        rest.char_indices()
            .find(|&(_, c)| {
                depth += i32::from(c == '{') - i32::from(c == '}');
                depth == 0
            })
            .map_or(rest.len(), |(i, _)| i + 1)
    } else {
        rest.find([',', '}']).unwrap()
    };
    &rest[..end]
}

/// TLS passed through, routed by SNI: each name reaches its version, whose banner reports the
/// SNI the client sent; a name no route has is refused by the gateway.
fn tls_sni_routing(dir: &str) {
    let r = Rehearsal::start(dir);
    let gateway = r.gateway[&31443].to_string();
    for (sni, version) in [("v1.example.com", "one"), ("v2.example.com", "two")] {
        let (code, json) = probe(&[
            &gateway,
            "--tls",
            "--sni",
            sni,
            "--ca",
            ca(),
            "--connections",
            "5",
        ]);
        println!("{dir} {sni}: {json}");
        assert_eq!(code, Some(0), "{json}");
        assert_eq!(
            json_field(&json, "versions"),
            format!("{{\"{version}\":5}}")
        );
        let tls = json_field(&json, "tls");
        assert!(
            tls.contains(&format!(
                "\"{version}\":{{\"version\":\"TLSv1.3\",\"sni\":\"{sni}\""
            )),
            "{tls}"
        );
    }
    let (code, json) = probe(&[
        &gateway,
        "--tls",
        "--sni",
        "v3.example.com",
        "--ca",
        ca(),
        "--connections",
        "2",
    ]);
    assert_eq!(code, Some(1), "an unrouted name was served: {json}");
    assert_eq!(json_field(&json, "ok"), "0");
}

#[test]
fn istio_tls_passthrough_routes_each_sni_name_to_its_version() {
    tls_sni_routing("tls");
}

#[test]
fn gateway_api_tlsroutes_route_each_hostname_to_its_version() {
    tls_sni_routing("gateway-api/tls");
}

/// TLS passed through, by weight: 200 connections with one SNI name split 80/20.
fn tls_weighted(dir: &str) {
    let r = Rehearsal::start(dir);
    let gateway = r.gateway[&31443].to_string();
    let (code, json) = probe(&[
        &gateway,
        "--tls",
        "--sni",
        "echo.example.com",
        "--ca",
        ca(),
        "--connections",
        "200",
        "--expect",
        "one=80,two=20",
    ]);
    println!("{dir}: {json}");
    assert_eq!(code, Some(0), "{json}");
    assert!(json.contains("\"expect_ok\":true"), "{json}");
    let tls = json_field(&json, "tls");
    for v in ["one", "two"] {
        assert!(
            tls.contains(&format!(
                "\"{v}\":{{\"version\":\"TLSv1.3\",\"sni\":\"echo.example.com\""
            )),
            "{tls}"
        );
    }
}

#[test]
fn istio_tls_weighted_routing_splits_connections_80_20() {
    tls_weighted("tls/weighted");
}

#[test]
fn gateway_api_tls_weighted_routing_splits_connections_80_20() {
    tls_weighted("gateway-api/tls/weighted");
}

/// Envoy terminates the client's TLS (its own certificate, for front.example.com) and opens
/// TLS to the backend with an SNI of its own: the backend reports Envoy's SNI, not the
/// client's, and the ALPN Envoy offered.
#[test]
fn envoy_terminating_and_re_encrypting_shows_its_own_sni_to_the_backend() {
    let set = check(&PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../tls"))
        .unwrap_or_else(|e| panic!("{e:#?}"));
    let v1 = routes(&set)
        .into_iter()
        .flat_map(|r| r.backends)
        .find(|b| b.version == "v1")
        .expect("v1");
    let backend = start_backend(&v1);
    let pki = pki();
    let dir = std::env::temp_dir().join(format!("tcp-echo-envoy-reencrypt-{}", std::process::id()));
    let config = dir.with_extension("yaml");
    let admin_file = dir.with_extension("admin");
    let _ = std::fs::remove_file(&admin_file);
    let y = format!(
        "admin:\n  address: {{ socket_address: {{ address: 127.0.0.1, port_value: 0 }} }}\n\
         static_resources:\n  listeners:\n  - name: gateway_31443\n    address: {{ socket_address: {{ address: 127.0.0.1, port_value: 0 }} }}\n    \
         filter_chains:\n    - transport_socket:\n        name: envoy.transport_sockets.tls\n        typed_config:\n          \
         \"@type\": type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.DownstreamTlsContext\n          \
         common_tls_context:\n            tls_certificates:\n            - certificate_chain: {{ filename: {} }}\n              private_key: {{ filename: {} }}\n      \
         filters:\n      - name: envoy.filters.network.tcp_proxy\n        typed_config:\n          \
         \"@type\": type.googleapis.com/envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy\n          stat_prefix: reencrypt\n          cluster: backend\n  \
         clusters:\n{}    transport_socket:\n      name: envoy.transport_sockets.tls\n      typed_config:\n        \
         \"@type\": type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.UpstreamTlsContext\n        sni: backend.internal\n        \
         common_tls_context:\n          alpn_protocols: [\"envoy-upstream\"]\n          validation_context:\n            trusted_ca: {{ filename: {} }}\n",
        pki.envoy.0.display(),
        pki.envoy.1.display(),
        static_cluster("backend", backend.tls.expect("a TLS port")),
        pki.ca.display(),
    );
    std::fs::write(&config, y).unwrap();
    let _envoy = start_envoy(&config, &admin_file);
    let front = listener_addresses(
        &admin_file,
        &[Route {
            gateway_port: 31443,
            protocol: Protocol::Tls,
            sni: None,
            target_port: 8443,
            backends: vec![],
        }],
    )[&31443];
    let (code, json) = probe(&[
        &front.to_string(),
        "--tls",
        "--sni",
        "front.example.com",
        "--ca",
        ca(),
        "--alpn",
        "h2",
        "--connections",
        "3",
    ]);
    println!("re-encrypted: {json}");
    assert_eq!(code, Some(0), "{json}");
    // TLS 1.2: Envoy's upstream TLS defaults to it at most (its downstream side, to the
    // probe, is 1.3); the backend reports what it was offered.
    assert_eq!(
        json_field(&json, "tls"),
        "{\"one\":{\"version\":\"TLSv1.2\",\"sni\":\"backend.internal\",\"alpn\":\"envoy-upstream\"}}"
    );
    let log = backend.log.lock().unwrap().join("\n");
    assert!(
        log.contains("sni=backend.internal alpn=envoy-upstream"),
        "{log}"
    );
    assert!(!log.contains("front.example.com"), "{log}");
}

/// Each datagram sent to `gateway` is answered by one datagram.
fn udp_exchange(gateway: SocketAddr, data: &[u8]) -> Vec<u8> {
    let socket = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    socket.connect(gateway).unwrap();
    socket.set_read_timeout(Some(DEADLINE)).unwrap();
    socket.send(data).unwrap();
    let mut buf = vec![0u8; 65_536];
    let n = socket.recv(&mut buf).expect("an answer through envoy");
    buf.truncate(n);
    buf
}

/// Datagrams the log of `backend` shows echoed.
fn datagrams(backend: &Running) -> usize {
    let log = backend.log.lock().unwrap();
    log.iter()
        .filter(|l| l.contains("UDP datagram echoed."))
        .count()
}

/// UDP routed by port through Envoy's `udp_proxy`: each gateway port reaches its version's
/// UDP echo (no TCP connection is made), and the probe over UDP tallies only that version.
#[test]
fn gateway_api_udproutes_send_each_gateway_port_to_its_version() {
    let r = Rehearsal::start("gateway-api/udp");
    for (port, version, prefix) in [(31500, "v1", "one"), (31501, "v2", "two")] {
        let b = r.backend(port, version);
        let gateway = r.gateway[&port];
        assert_eq!(
            udp_exchange(gateway, b"hello\n"),
            format!("{prefix} hello\n").as_bytes(),
            "through gateway port {port}"
        );
        let (code, json) = probe(&[
            &gateway.to_string(),
            "--udp",
            "--connections",
            "20",
            "--expect",
            &format!("{prefix}=1"),
        ]);
        println!("gateway-api/udp {port}: {json}");
        assert_eq!(code, Some(0), "{json}");
        assert_eq!(
            json_field(&json, "versions"),
            format!("{{\"{prefix}\":20}}")
        );
        let running = &r.backends[&b.deployment];
        let deadline = Instant::now() + DEADLINE;
        while datagrams(running) < 21 {
            assert!(
                Instant::now() < deadline,
                "{} datagrams logged",
                datagrams(running)
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        assert_eq!(datagrams(running), 21);
        assert_eq!(running.echo_connections(), 0, "no TCP connection");
    }
}

/// UDP by weight: 200 datagrams, each from a port of its own (a flow of its own), split 80/20
/// as `tcp-echo probe --udp --expect one=80,two=20` judges it; a wrong expectation fails.
#[test]
fn gateway_api_udp_weighted_routing_splits_flows_80_20() {
    let r = Rehearsal::start("gateway-api/udp/weighted");
    let gateway = r.gateway[&31500].to_string();
    let (code, json) = probe(&[
        &gateway,
        "--udp",
        "--connections",
        "200",
        "--concurrency",
        "4",
        "--expect",
        "one=80,two=20",
    ]);
    println!("gateway-api/udp/weighted: {json}");
    assert_eq!(code, Some(0), "{json}");
    assert!(json.contains("\"ok\":200,\"failed\":0"), "{json}");
    assert!(json.contains("\"expect_ok\":true"), "{json}");
    let (code, json) = probe(&[
        &gateway,
        "--udp",
        "--connections",
        "200",
        "--expect",
        "one=50,two=50",
    ]);
    assert_eq!(code, Some(1), "a wrong expectation must fail: {json}");
    assert!(json.contains("\"expect_ok\":false"), "{json}");
}
