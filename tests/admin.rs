//! The admin port (`--admin-port`): health, readiness, metrics, and its bounds.
//!
//! These tests speak HTTP with a few lines of their own; the ones that use the real clients
//! users meet (`curl`, and `prometheus_client`'s parser of the text format) need the
//! `clients-test` feature and the paths `make test` passes (`METRICS_PYTHON`).

mod support;

use std::collections::BTreeMap;
use std::io::{ErrorKind, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use support::{
    connect, exchange, read_exactly, read_to_eof, stuck_client, wait_until, Server, DEADLINE,
};

/// A response: its status, its headers (names in lower case), its body.
#[derive(Debug)]
struct Response {
    status: u16,
    headers: BTreeMap<String, String>,
    body: String,
}

/// Sends `raw` and reads the response up to the server's close.
fn request(addr: SocketAddr, raw: &[u8]) -> Response {
    let mut s = connect(addr);
    s.write_all(raw).unwrap();
    parse_response(&read_to_eof(&mut s))
}

fn parse_response(raw: &[u8]) -> Response {
    parse(raw, false)
}

/// A response; after a `HEAD` (`after_head`), its Content-Length is of the body not sent.
fn parse(raw: &[u8], after_head: bool) -> Response {
    let text = String::from_utf8(raw.to_vec()).expect("a UTF-8 response");
    let (head, body) = text
        .split_once("\r\n\r\n")
        .unwrap_or_else(|| panic!("no end of headers in {text:?}"));
    let mut lines = head.split("\r\n");
    let status_line = lines.next().unwrap();
    let mut parts = status_line.splitn(3, ' ');
    assert_eq!(parts.next(), Some("HTTP/1.1"), "{status_line}");
    let status = parts.next().unwrap().parse().unwrap();
    let headers: BTreeMap<String, String> = lines
        .map(|l| {
            let (k, v) = l.split_once(':').unwrap_or_else(|| panic!("header {l:?}"));
            (k.trim().to_ascii_lowercase(), v.trim().to_string())
        })
        .collect();
    let length: usize = headers["content-length"].parse().unwrap();
    let sent = if after_head { 0 } else { length };
    assert_eq!(sent, body.len(), "Content-Length of {text:?}");
    Response {
        status,
        headers,
        body: body.to_string(),
    }
}

fn get(addr: SocketAddr, path: &str) -> Response {
    request(
        addr,
        format!("GET {path} HTTP/1.1\r\nHost: tcp-echo\r\nUser-Agent: test\r\n\r\n").as_bytes(),
    )
}

/// `/metrics` as `name{labels}` -> value, read with a few lines of our own (the real parser
/// is used by the `clients-test` tests below).
fn metrics(admin: SocketAddr) -> BTreeMap<String, f64> {
    let r = get(admin, "/metrics");
    assert_eq!(r.status, 200);
    r.body
        .lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
        .map(|l| {
            let (k, v) = l.rsplit_once(' ').unwrap();
            (k.to_string(), v.parse().unwrap())
        })
        .collect()
}

/// The counters of a known workload, as the metrics must show them.
struct Workload {
    connections: u64,
    bytes: u64,
    busy: u64,
}

/// With `--max-connections 3`: 5 connections that echo known bytes and close, then 3 held
/// open while 4 more are refused as busy, then the 3 close. Waits until none is open.
fn run_workload(
    server: &Server,
    admin: SocketAddr,
    read: &dyn Fn() -> BTreeMap<String, f64>,
) -> Workload {
    let addr = server.addrs[0];
    let mut bytes = 0;
    for i in 0..5 {
        let data: Vec<u8> = (0..i * 1000 + 7).map(|j| b'a' + (j % 26) as u8).collect();
        assert_eq!(exchange(addr, &data), data);
        bytes += data.len() as u64;
    }
    // The server releases a closed connection's slot after the client sees its echo: under
    // load a held connection could otherwise find the last slot still taken.
    wait_until("the 5 connections released", DEADLINE, || {
        read()["tcp_echo_connections_open"] == 0.0
    });
    let mut held: Vec<TcpStream> = (0..3)
        .map(|_| {
            let mut s = connect(addr);
            s.write_all(b"hold\n").unwrap();
            assert_eq!(read_exactly(&mut s, 5), b"hold\n");
            bytes += 5;
            s
        })
        .collect();
    for _ in 0..4 {
        let mut s = connect(addr);
        let said = String::from_utf8(read_to_eof(&mut s)).unwrap();
        assert!(said.contains("busy"), "{said:?}");
    }
    let now = read();
    assert_eq!(now["tcp_echo_connections_open"], 3.0);
    for s in &mut held {
        s.shutdown(Shutdown::Write).unwrap();
        assert_eq!(read_to_eof(s), b"");
    }
    drop(held);
    let _ = admin;
    wait_until("no connection open", DEADLINE, || {
        read()["tcp_echo_connections_open"] == 0.0
    });
    Workload {
        connections: 8,
        bytes,
        busy: 4,
    }
}

/// Checks every sample against the workload: exact counts, every other reason zero.
fn assert_counts(m: &BTreeMap<String, f64>, w: &Workload, suppressed: u64) {
    let reasons = [
        "eof",
        "idle_timeout",
        "max_duration",
        "write_timeout",
        "shutdown",
        "drain_deadline",
        "reset",
        "error",
    ];
    let want: Vec<(String, f64)> = [
        (
            "tcp_echo_connections_accepted_total".to_string(),
            w.connections as f64,
        ),
        (
            "tcp_echo_connections_refused_total{reason=\"busy\"}".into(),
            w.busy as f64,
        ),
        (
            "tcp_echo_connections_refused_total{reason=\"no_worker\"}".into(),
            0.0,
        ),
        (
            "tcp_echo_connections_refused_total{reason=\"proxy_protocol\"}".into(),
            0.0,
        ),
        ("tcp_echo_connections_open".into(), 0.0),
        ("tcp_echo_bytes_echoed_total".into(), w.bytes as f64),
        (
            "tcp_echo_log_records_suppressed_total".into(),
            suppressed as f64,
        ),
        ("tcp_echo_max_connections".into(), 3.0),
        ("tcp_echo_build_info{version=\"1.0.0\"}".into(), 1.0),
    ]
    .into_iter()
    .chain(reasons.iter().map(|r| {
        let n = if *r == "eof" { w.connections } else { 0 };
        (
            format!("tcp_echo_connections_closed_total{{reason=\"{r}\"}}"),
            n as f64,
        )
    }))
    .collect();
    for (name, value) in want {
        assert_eq!(m.get(&name), Some(&value), "{name} in {m:#?}");
    }
    let workers = m["tcp_echo_worker_threads"];
    assert!((1.0..=3.0).contains(&workers), "{workers} workers");
    let started = m["tcp_echo_start_time_seconds"];
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs_f64();
    assert!(
        started <= now && now - started < 600.0,
        "start time {started}, now {now}"
    );
}

/// The sum of the close records' `unlogged=` counts.
fn unlogged_in_log(server: &Server) -> u64 {
    server
        .log
        .matching("TCP connection closed.")
        .iter()
        .map(|l| {
            let n = l.rsplit("unlogged=").next().unwrap();
            n.trim().parse::<u64>().unwrap()
        })
        .sum()
}

#[test]
fn the_counters_equal_a_known_workload_exactly() {
    let server = Server::with(&["--max-connections", "3", "--admin-port", "0"]);
    let admin = server.admin();
    let before = metrics(admin);
    assert_eq!(before["tcp_echo_connections_accepted_total"], 0.0);
    // One worker waits for the first connection from the start.
    assert_eq!(before["tcp_echo_worker_threads"], 1.0);
    let w = run_workload(&server, admin, &|| metrics(admin));
    let m = metrics(admin);
    assert_counts(&m, &w, 0);
    assert_eq!(unlogged_in_log(&server), 0);

    // Past its log budget (1,000 pieces), a client's records are suppressed and counted:
    // the metric is the sum of what the close records say.
    let flood = b"x\n".repeat(1500);
    assert_eq!(exchange(server.addrs[0], &flood), flood);
    wait_until("the flood's close", DEADLINE, || {
        metrics(admin)["tcp_echo_connections_closed_total{reason=\"eof\"}"] == 9.0
    });
    let m = metrics(admin);
    let suppressed = m["tcp_echo_log_records_suppressed_total"];
    assert!(suppressed >= 500.0, "{suppressed}");
    // The close record is logged before the close is counted, but the test reads the log
    // through a pipe: it may not have arrived yet.
    wait_until(
        "the close records to sum the suppressed count",
        DEADLINE,
        || unlogged_in_log(&server) as f64 == suppressed,
    );
    assert_eq!(m["tcp_echo_bytes_echoed_total"], (w.bytes + 3000) as f64);
}

#[test]
fn every_family_has_help_and_type_and_counters_end_in_total() {
    let server = Server::with(&["--admin-port", "0"]);
    let r = get(server.admin(), "/metrics");
    assert_eq!(r.status, 200);
    assert_eq!(
        r.headers["content-type"],
        "text/plain; version=0.0.4; charset=utf-8"
    );
    let mut families = 0;
    let lines: Vec<&str> = r.body.lines().collect();
    for (i, line) in lines.iter().enumerate() {
        if let Some(rest) = line.strip_prefix("# HELP ") {
            families += 1;
            let name = rest.split(' ').next().unwrap();
            let kind = lines[i + 1]
                .strip_prefix(&format!("# TYPE {name} "))
                .unwrap_or_else(|| panic!("no TYPE after HELP of {name}"));
            assert!(["counter", "gauge"].contains(&kind), "{name}: {kind}");
            assert_eq!(
                kind == "counter",
                name.ends_with("_total"),
                "{name}: {kind}"
            );
            assert!(name.starts_with("tcp_echo_"), "{name}");
            assert!(lines[i + 2].starts_with(name), "{name} has no sample");
        }
    }
    assert_eq!(families, 16, "{}", r.body);
}

#[test]
fn readyz_turns_503_during_the_drain_while_healthz_stays_200() {
    let mut server = Server::with(&["--admin-port", "0", "--drain-timeout", "30"]);
    let admin = server.admin();
    assert_eq!(get(admin, "/readyz").status, 200);
    assert_eq!(get(admin, "/healthz").status, 200);
    // A client that sends and never reads keeps the drain going (its echo cannot be written)
    // until it leaves.
    let stuck = stuck_client(&server);

    server.signal(libc::SIGTERM);
    server.log.wait_for("drain", DEADLINE, |l| {
        l.contains("shutting down: stopped accepting")
    });
    let ready = get(admin, "/readyz");
    assert_eq!((ready.status, ready.body.as_str()), (503, "draining\n"));
    assert_eq!(get(admin, "/healthz").status, 200);
    assert_eq!(metrics(admin)["tcp_echo_connections_open"], 1.0);
    assert!(server.running());
    drop(stuck);

    let status = server.wait_exit(DEADLINE);
    assert_eq!(status.code(), Some(0));
    // The admin port closed with the server.
    assert!(TcpStream::connect_timeout(&admin, Duration::from_secs(1)).is_err());
}

#[test]
fn other_paths_404_other_methods_405_and_malformed_requests_400() {
    let server = Server::with(&["--admin-port", "0"]);
    let admin = server.admin();
    assert_eq!(get(admin, "/").status, 404);
    assert_eq!(get(admin, "/metricsx").status, 404);
    assert_eq!(get(admin, "/healthz?verbose=1").status, 200);
    let post = request(
        admin,
        b"POST /metrics HTTP/1.1\r\nContent-Length: 0\r\n\r\n",
    );
    assert_eq!(post.status, 405);
    assert_eq!(post.headers["allow"], "GET, HEAD");
    assert_eq!(
        request(admin, b"DELETE /healthz HTTP/1.1\r\n\r\n").status,
        405
    );
    let mut s = connect(admin);
    s.write_all(b"HEAD /healthz HTTP/1.1\r\n\r\n").unwrap();
    let head = parse(&read_to_eof(&mut s), true);
    assert_eq!(
        (head.status, head.headers["content-length"].as_str()),
        (200, "3")
    );
    assert_eq!(request(admin, b"GET /healthz\r\n\r\n").status, 400);
    assert_eq!(
        request(admin, b"\x16\x03\x01\x02\x00\x01\r\n\r\n").status,
        400
    );
    // A client that half-closes after its request still gets the answer.
    let half = parse_response(&exchange(admin, b"GET /healthz HTTP/1.1\r\n\r\n"));
    assert_eq!(half.status, 200);
    for r in [get(admin, "/"), get(admin, "/healthz")] {
        assert_eq!(r.headers["connection"], "close");
    }
}

#[test]
fn a_response_reaches_a_client_whose_extra_bytes_the_server_never_reads() {
    // The client reads slowly (a small window) and sent more than its request: closing with
    // that input unread would reset the connection and throw away the rest of the response.
    let server = Server::with(&["--admin-port", "0"]);
    let admin = server.admin();
    for extra in [
        // A second, pipelined request after the first.
        b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\nGET /healthz HTTP/1.1\r\n\r\n".to_vec(),
        // A request far over the limit: answered 431, the rest never read.
        [
            b"GET /metrics HTTP/1.1\r\nX-Big: ".to_vec(),
            vec![b'a'; 20_000],
            b"\r\n\r\n".to_vec(),
        ]
        .concat(),
    ] {
        let mut s = support::connect_small_window(admin, 1024);
        s.write_all(&extra).unwrap();
        std::thread::sleep(Duration::from_millis(300)); // the slow client's pace
        let mut got = Vec::new();
        let result = s.read_to_end(&mut got);
        assert!(result.is_ok(), "{result:?} after {} bytes", got.len());
        let r = parse_response(&got);
        assert!([200, 431].contains(&r.status), "{}", r.status);
    }
}

#[test]
fn requests_with_bare_line_feeds_are_answered_at_once() {
    let server = Server::with(&["--admin-port", "0"]);
    let admin = server.admin();
    let start = Instant::now();
    let mut s = connect(admin);
    s.write_all(b"GET /healthz HTTP/1.1\nHost: x\n\n").unwrap();
    let r = parse(&read_to_eof(&mut s), false);
    assert_eq!((r.status, r.body.as_str()), (200, "ok\n"));
    assert!(
        start.elapsed() < Duration::from_millis(500),
        "answered after {:?}",
        start.elapsed()
    );
}

#[test]
fn oversized_and_slow_requests_are_cut_off() {
    let server = Server::with(&["--admin-port", "0"]);
    let admin = server.admin();
    // Headers past 8 KiB: 431, without waiting for their end.
    let mut s = connect(admin);
    let big = format!("GET /healthz HTTP/1.1\r\nX-Big: {}\r\n", "a".repeat(9000));
    s.write_all(big.as_bytes()).unwrap();
    let mut got = Vec::new();
    let _ = s.read_to_end(&mut got);
    assert!(
        got.starts_with(b"HTTP/1.1 431 "),
        "{:?}",
        String::from_utf8_lossy(&got)
    );

    // A request that never ends is closed at its deadline (1 s), unanswered.
    let mut s = connect(admin);
    let start = Instant::now();
    s.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n")
        .unwrap();
    let mut buf = [0u8; 64];
    let n = match s.read(&mut buf) {
        Ok(n) => n,
        Err(e) if e.kind() == ErrorKind::ConnectionReset => 0,
        Err(e) => panic!("{e}"),
    };
    let took = start.elapsed();
    assert_eq!(n, 0, "{:?}", String::from_utf8_lossy(&buf[..n]));
    assert!(
        took >= Duration::from_millis(900) && took < Duration::from_secs(5),
        "{took:?}"
    );
    // The server answers the next one as before.
    assert_eq!(get(admin, "/healthz").status, 200);
}

/// Keeps `n` connections to `addr` open, reconnecting each as soon as the server closes it;
/// slow ones send a request a byte at a time and never finish it. Returns the connections made.
fn attackers(
    addr: SocketAddr,
    n: usize,
    slow: bool,
    stop: Arc<AtomicBool>,
) -> thread::JoinHandle<u64> {
    thread::spawn(move || {
        let request = b"GET /metrics HTTP/1.1\r\nHost: x\r\nX-Slow: yes\r\n";
        let mut conns: Vec<Option<(TcpStream, usize)>> = (0..n).map(|_| None).collect();
        let mut made = 0u64;
        while !stop.load(Ordering::Relaxed) {
            for slot in conns.iter_mut() {
                let alive = match slot {
                    None => false,
                    Some((s, sent)) if slow => {
                        let b = request[*sent % request.len()];
                        *sent += 1;
                        s.write(&[b]).is_ok_and(|n| n == 1)
                    }
                    Some((s, _)) => {
                        let mut b = [0u8; 16];
                        matches!(s.read(&mut b), Err(e) if e.kind() == ErrorKind::WouldBlock)
                    }
                };
                if !alive {
                    *slot = TcpStream::connect_timeout(&addr, Duration::from_secs(1))
                        .ok()
                        .and_then(|s| s.set_nonblocking(true).ok().map(|()| (s, 0)));
                    made += 1;
                }
            }
            // The pace of a slow client: each sends a byte about every 20 ms.
            thread::sleep(Duration::from_millis(20));
        }
        made
    })
}

#[test]
fn probes_are_answered_within_a_second_under_500_idle_and_500_slow_connections() {
    let server = Server::with(&["--admin-port", "0"]);
    let admin = server.admin();
    let stop = Arc::new(AtomicBool::new(false));
    let threads: Vec<_> = (0..4)
        .map(|i| attackers(admin, 125, i % 2 == 1, Arc::clone(&stop)))
        .chain((0..4).map(|i| attackers(admin, 125, i % 2 == 0, Arc::clone(&stop))))
        .collect();

    // Echo traffic meanwhile, on a connection of its own.
    let echoed = Arc::new(AtomicU64::new(0));
    let echo_worst = {
        let (stop, echoed) = (Arc::clone(&stop), Arc::clone(&echoed));
        let mut s = server.connect();
        thread::spawn(move || {
            let mut worst = Duration::ZERO;
            let line: Vec<u8> = (0..1023u32)
                .map(|i| b'a' + (i % 26) as u8)
                .chain([b'\n'])
                .collect();
            while !stop.load(Ordering::Relaxed) {
                let t = Instant::now();
                s.write_all(&line).unwrap();
                assert_eq!(read_exactly(&mut s, line.len()), line);
                worst = worst.max(t.elapsed());
                echoed.fetch_add(line.len() as u64, Ordering::Relaxed);
                thread::sleep(Duration::from_millis(10));
            }
            (worst, s)
        })
    };

    // Let the attack build up, then probe as the kubelet would, every 50 ms for 3 s.
    thread::sleep(Duration::from_millis(500));
    let mut latencies = Vec::new();
    let until = Instant::now() + Duration::from_secs(3);
    while Instant::now() < until {
        let t = Instant::now();
        let mut s =
            TcpStream::connect_timeout(&admin, Duration::from_secs(1)).expect("probe connect");
        s.set_read_timeout(Some(Duration::from_secs(1))).unwrap();
        s.write_all(b"GET /readyz HTTP/1.1\r\nHost: pod\r\nUser-Agent: kube-probe/1.34\r\n\r\n")
            .unwrap();
        let mut got = Vec::new();
        let r = s.read_to_end(&mut got);
        let took = t.elapsed();
        assert!(r.is_ok(), "probe read: {r:?} after {took:?}");
        assert!(
            got.starts_with(b"HTTP/1.1 200 "),
            "{:?}",
            String::from_utf8_lossy(&got)
        );
        latencies.push(took);
        thread::sleep(Duration::from_millis(50));
    }
    stop.store(true, Ordering::Relaxed);
    let made: u64 = threads.into_iter().map(|t| t.join().unwrap()).sum();
    let (echo_worst, _echo) = echo_worst.join().unwrap();

    latencies.sort();
    let worst = *latencies.last().unwrap();
    eprintln!(
        "{} probes: median {:?}, worst {worst:?}; {made} attacking connections made; echo: {} bytes, worst round trip {echo_worst:?}",
        latencies.len(),
        latencies[latencies.len() / 2],
        echoed.load(Ordering::Relaxed),
    );
    assert!(latencies.len() >= 20, "{} probes", latencies.len());
    assert!(worst < Duration::from_secs(1), "a probe took {worst:?}");
    assert!(made > 1000, "the attack made only {made} connections");
    assert!(echoed.load(Ordering::Relaxed) > 0);
    assert!(
        echo_worst < Duration::from_secs(1),
        "an echo round trip took {echo_worst:?}"
    );
    // No admin connection reached the echo side or its log.
    assert_eq!(server.log.matching("TCP connection open").len(), 1);
    let m = metrics(admin);
    assert_eq!(m["tcp_echo_connections_accepted_total"], 1.0);
    assert_eq!(m["tcp_echo_connections_open"], 1.0);
}

/// With the real clients: `curl` for every endpoint, the metrics read by `prometheus_client`.
#[cfg(feature = "clients-test")]
mod real_clients {
    use super::*;
    use std::process::Command;

    /// `curl` with `args`: (HTTP status, content type, body).
    fn curl(args: &[&str]) -> (u16, String, String) {
        let out = Command::new("curl")
            .args([
                "-sS",
                "--max-time",
                "5",
                "-o",
                "-",
                "-w",
                "\n%{http_code} %{content_type}",
            ])
            .args(args)
            .output()
            .expect("curl is installed by `make deps`");
        assert!(
            out.status.success(),
            "curl {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let text = String::from_utf8(out.stdout).unwrap();
        let (body, tail) = text.rsplit_once('\n').unwrap();
        let (status, kind) = tail.split_once(' ').unwrap();
        (status.parse().unwrap(), kind.to_string(), body.to_string())
    }

    /// `/metrics` fetched by curl and parsed by `prometheus_client.parser`: every sample as
    /// `name{labels}` (labels sorted) -> value, and every family's (type, help).
    fn parsed(admin: SocketAddr) -> (BTreeMap<String, f64>, BTreeMap<String, (String, String)>) {
        let python = std::env::var("METRICS_PYTHON")
            .expect("METRICS_PYTHON is not set: run `make test` (it installs prometheus-client)");
        let script = r#"
import json, subprocess, sys
from prometheus_client.parser import text_string_to_metric_families
text = subprocess.run(["curl", "-sS", "--max-time", "5", sys.argv[1]], check=True,
                      capture_output=True, text=True).stdout
out = {"samples": {}, "families": {}}
for f in text_string_to_metric_families(text):
    out["families"][f.name] = [f.type, f.documentation]
    for s in f.samples:
        labels = ",".join('%s="%s"' % kv for kv in sorted(s.labels.items()))
        out["samples"][s.name + ("{%s}" % labels if labels else "")] = s.value
print(json.dumps(out))
"#;
        let out = Command::new(&python)
            .args(["-c", script, &format!("http://{admin}/metrics")])
            .output()
            .unwrap_or_else(|e| panic!("{python}: {e}"));
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        let samples = v["samples"]
            .as_object()
            .unwrap()
            .iter()
            .map(|(k, v)| (k.clone(), v.as_f64().unwrap()))
            .collect();
        let families = v["families"]
            .as_object()
            .unwrap()
            .iter()
            .map(|(k, v)| {
                let t = v[0].as_str().unwrap().to_string();
                (k.clone(), (t, v[1].as_str().unwrap().to_string()))
            })
            .collect();
        (samples, families)
    }

    #[test]
    fn curl_reads_every_endpoint() {
        let server = Server::with(&["--admin-port", "0"]);
        let url = |p: &str| format!("http://{}{p}", server.admin());
        assert_eq!(
            curl(&[&url("/healthz")]),
            (200, "text/plain".into(), "ok\n".into())
        );
        assert_eq!(
            curl(&[&url("/readyz")]),
            (200, "text/plain".into(), "ready\n".into())
        );
        let (status, kind, body) = curl(&[&url("/metrics")]);
        assert_eq!(
            (status, kind.as_str()),
            (200, "text/plain; version=0.0.4; charset=utf-8")
        );
        assert!(body.contains("\ntcp_echo_connections_open 0\n"), "{body}");
        assert_eq!(curl(&[&url("/nope")]).0, 404);
        assert_eq!(curl(&["-X", "POST", &url("/metrics")]).0, 405);
        assert_eq!(curl(&["-I", &url("/healthz")]).0, 200);
        // HTTP/1.0, as some probes speak it.
        assert_eq!(curl(&["-0", &url("/healthz")]).0, 200);
    }

    #[test]
    fn prometheus_client_parses_the_metrics_and_they_equal_a_known_workload() {
        let server = Server::with(&["--max-connections", "3", "--admin-port", "0"]);
        let admin = server.admin();
        let read = || parsed(admin).0;
        let w = run_workload(&server, admin, &read);
        let (samples, families) = parsed(admin);
        assert_counts(&samples, &w, 0);
        // The parser names a counter's family without `_total`.
        let want = [
            ("tcp_echo_connections_accepted", "counter"),
            ("tcp_echo_connections_refused", "counter"),
            ("tcp_echo_connections_open", "gauge"),
            ("tcp_echo_connections_closed", "counter"),
            ("tcp_echo_bytes_echoed", "counter"),
            ("tcp_echo_udp_datagrams_received", "counter"),
            ("tcp_echo_udp_datagrams", "counter"),
            ("tcp_echo_udp_bytes", "counter"),
            ("tcp_echo_tls_handshakes", "counter"),
            ("tcp_echo_connections_faulted", "counter"),
            ("tcp_echo_fault_refusing", "gauge"),
            ("tcp_echo_log_records_suppressed", "counter"),
            ("tcp_echo_worker_threads", "gauge"),
            ("tcp_echo_max_connections", "gauge"),
            ("tcp_echo_start_time_seconds", "gauge"),
            ("tcp_echo_build_info", "gauge"),
        ];
        assert_eq!(families.len(), want.len(), "{families:#?}");
        for (name, kind) in want {
            let (t, help) = &families[name];
            assert_eq!(t, kind, "{name}");
            assert!(!help.is_empty(), "{name} has no HELP");
        }
    }
}
