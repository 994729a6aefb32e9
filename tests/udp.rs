//! UDP echo (`--udp`) with real UDP clients: std sockets, `nc -u` and `tcp-echo probe --udp`,
//! against the binary. The prefix once per datagram, large datagrams intact up to the largest
//! that fits, never a reply larger than the request and the prefix, TCP and UDP on one port at
//! once, the log budget, the counters, and shutdown.

mod support;

use std::io::{ErrorKind, Read, Write};
use std::net::{SocketAddr, UdpSocket};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use support::{http_get, read_exactly, run_to_exit, Screen, Server, DEADLINE};

/// The largest UDP payload over IPv4.
const MAX_DATAGRAM: usize = 65_507;

/// A client socket connected to `server` (so that only its datagrams are received).
fn client(server: SocketAddr) -> UdpSocket {
    let socket = UdpSocket::bind("127.0.0.1:0").unwrap();
    socket.connect(server).unwrap();
    socket
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    socket
}

/// Sends `data` and returns the one datagram that answers it.
fn echo(socket: &UdpSocket, data: &[u8]) -> Vec<u8> {
    socket.send(data).unwrap();
    let mut buf = vec![0u8; 65_536];
    let n = socket.recv(&mut buf).expect("an answer");
    buf.truncate(n);
    buf
}

/// Sends `data` and expects no answer within `quiet`.
fn no_answer(socket: &UdpSocket, data: &[u8], quiet: Duration) {
    socket.send(data).unwrap();
    socket.set_read_timeout(Some(quiet)).unwrap();
    let mut buf = vec![0u8; 65_536];
    match socket.recv(&mut buf) {
        Ok(n) => panic!("answered {n} bytes to {} bytes", data.len()),
        Err(e) => assert!(
            matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut),
            "{e}"
        ),
    }
    socket
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
}

/// The value of a sample in the admin port's `/metrics`.
fn metric(s: &Server, sample: &str) -> f64 {
    let (status, body) = http_get(s.admin(), "/metrics").expect("/metrics");
    assert_eq!(status, 200);
    body.lines()
        .find_map(|l| l.strip_prefix(sample)?.strip_prefix(' ')?.parse().ok())
        .unwrap_or_else(|| panic!("no {sample} in\n{body}"))
}

#[test]
fn each_datagram_is_answered_with_the_prefix_once_then_its_data() {
    let s = Server::with(&["--udp", "--prefix", "one"]);
    assert_eq!(s.udp_addrs.len(), 1);
    assert_eq!(s.udp_addrs[0].port(), s.addrs[0].port(), "same port number");
    let c = client(s.udp_addrs[0]);
    assert_eq!(echo(&c, b"hello\n"), b"one hello\n");
    // One prefix per datagram, whatever newlines it holds; no newline is added.
    assert_eq!(echo(&c, b"a\nb\n"), b"one a\nb\n");
    assert_eq!(echo(&c, b"no newline"), b"one no newline");
    assert_eq!(echo(&c, b""), b"one ");

    let plain = Server::with(&["--udp"]);
    let c = client(plain.udp_addrs[0]);
    assert_eq!(echo(&c, b"hello\n"), b"hello\n");
    assert_eq!(echo(&c, &[0, 255, 10, 13]), [0, 255, 10, 13]);
    assert_eq!(echo(&c, b""), b"");

    // IPv6 clients too: the socket is dual-stack like the TCP listener.
    let v6 = UdpSocket::bind("[::1]:0").unwrap();
    v6.connect(("::1", plain.udp_addrs[0].port())).unwrap();
    v6.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    assert_eq!(echo(&v6, b"six\n"), b"six\n");
}

#[test]
fn large_datagrams_come_back_intact_up_to_the_largest_that_fits() {
    let s = Server::with(&["--udp", "--prefix", "one", "--admin-port", "0"]);
    let c = client(s.udp_addrs[0]);
    let pattern = |len: usize| -> Vec<u8> { (0..len).map(|i| (i * 7 % 251) as u8).collect() };
    for len in [1472, 8192, 32_768, MAX_DATAGRAM - 4] {
        let data = pattern(len);
        let got = echo(&c, &data);
        assert_eq!(got.len(), len + 4, "{len}");
        assert_eq!(&got[..4], b"one ");
        assert!(got[4..] == data[..], "{len} bytes not intact");
    }
    // One byte more and the reply would not fit in a datagram: no answer, counted.
    no_answer(&c, &pattern(MAX_DATAGRAM - 3), Duration::from_millis(500));
    no_answer(&c, &pattern(MAX_DATAGRAM), Duration::from_millis(300));
    support::wait_until("the drops counted", DEADLINE, || {
        metric(&s, "tcp_echo_udp_datagrams_total{result=\"too_large\"}") == 2.0
    });
    assert_eq!(
        metric(&s, "tcp_echo_udp_datagrams_total{result=\"answered\"}"),
        4.0
    );
    assert_eq!(metric(&s, "tcp_echo_udp_datagrams_received_total"), 6.0);
    let bytes = 1472 + 8192 + 32_768 + (MAX_DATAGRAM - 4) + (MAX_DATAGRAM - 3) + MAX_DATAGRAM;
    assert_eq!(metric(&s, "tcp_echo_udp_bytes_total"), bytes as f64);
    assert_eq!(s.log.matching("its reply would not fit").len(), 2);
}

#[test]
fn no_reply_is_ever_larger_than_its_request_and_the_prefix() {
    // The reflection bound, at every size class a spoofing client could pick.
    let prefix = "v2-canary";
    let s = Server::with(&["--udp", "--prefix", prefix, "--banner", "connect"]);
    let c = client(s.udp_addrs[0]);
    let bound = prefix.len() + 1;
    for len in (0..64).chain([100, 511, 512, 1000, 1500, 4096, 9000, 60_000]) {
        let data = vec![b'x'; len];
        let got = echo(&c, &data);
        assert_eq!(got.len(), len + bound, "{len}");
        assert!(got.len() <= len + bound);
    }
    // No banner over UDP: the banner is per connection, and a datagram is not one.
    assert_eq!(echo(&c, b"q\n"), format!("{prefix} q\n").as_bytes());
}

#[test]
fn tcp_and_udp_on_the_same_port_at_once() {
    let s = Server::with(&["--udp", "--prefix", "one", "--banner", "off"]);
    let port = s.addrs[0].port();
    let mut tcp = s.connect();
    let udp = client(SocketAddr::from(([127, 0, 0, 1], port)));
    for i in 0..50 {
        let line = format!("tcp {i}\n");
        tcp.write_all(line.as_bytes()).unwrap();
        let got = echo(&udp, format!("udp {i}\n").as_bytes());
        assert_eq!(got, format!("one udp {i}\n").as_bytes());
        assert_eq!(
            read_exactly(&mut tcp, line.len() + 4),
            format!("one {line}").as_bytes()
        );
    }
    // A TCP connection flooding does not hold the UDP echo back.
    let flood = std::thread::spawn({
        let mut tcp = s.connect();
        move || {
            let chunk = vec![b'z'; 64 * 1024];
            let mut reader = tcp.try_clone().unwrap();
            let drain = std::thread::spawn(move || {
                let mut buf = vec![0u8; 64 * 1024];
                let mut total = 0;
                while total < 32 * chunk_len() {
                    match reader.read(&mut buf) {
                        Ok(0) | Err(_) => break,
                        Ok(n) => total += n,
                    }
                }
                total
            });
            for _ in 0..32 {
                tcp.write_all(&chunk).unwrap();
            }
            drain.join().unwrap()
        }
    });
    for i in 0..20 {
        assert_eq!(
            echo(&udp, format!("{i}").as_bytes()),
            format!("one {i}").as_bytes()
        );
    }
    assert!(flood.join().unwrap() >= 32 * chunk_len());
}

fn chunk_len() -> usize {
    64 * 1024
}

#[test]
fn nc_u_sends_a_datagram_per_line_and_prints_each_answer() {
    let s = Server::with(&["--udp", "--prefix", "one"]);
    let port = s.udp_addrs[0].port().to_string();
    let mut child = Command::new("nc")
        .args(["-u", "127.0.0.1", &port])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("nc is not installed: run `make deps` (Debian package netcat-openbsd)");
    let mut stdin = child.stdin.take().unwrap();
    let mut screen = Screen::of(child.stdout.take().unwrap());
    for line in ["hello", "world"] {
        stdin.write_all(format!("{line}\n").as_bytes()).unwrap();
        screen.expect(&format!("one {line}\n"));
    }
    assert_eq!(screen.text(), "one hello\none world\n");
    let _ = child.kill();
    let _ = child.wait();
    // One record per datagram, with the peer and the data.
    let records = s.log.wait_count("UDP datagram echoed.", 2, DEADLINE);
    assert!(records[0].contains("bytes=6 data=hello"), "{}", records[0]);
    assert!(records[0].contains("peer=127.0.0.1:"), "{}", records[0]);
}

#[test]
fn datagram_records_stay_within_the_server_wide_log_budget() {
    let s = Server::with(&["--udp", "--admin-port", "0"]);
    let c = client(s.udp_addrs[0]);
    let start = Instant::now();
    let n = 3000;
    for i in 0..n {
        assert_eq!(
            echo(&c, format!("{i}\n").as_bytes()),
            format!("{i}\n").as_bytes()
        );
    }
    let took = start.elapsed().as_secs_f64();
    support::wait_until("every datagram counted", DEADLINE, || {
        metric(&s, "tcp_echo_udp_datagrams_received_total") == n as f64
    });
    let records = s.log.matching("UDP datagram echoed.").len();
    // The burst, and the rate for as long as it ran (and a little slack for the clock).
    let allowed = 1000.0 + 100.0 * (took + 1.0);
    assert!(
        (records as f64) <= allowed && records >= 1000,
        "{records} records for {n} datagrams in {took:.1}s"
    );
    assert_eq!(s.log.matching("records are being held back").len(), 1);
    assert!(metric(&s, "tcp_echo_log_records_suppressed_total") >= (n - records) as f64);
}

#[test]
fn shutdown_with_udp_on_exits_0_and_stops_answering() {
    let mut s = Server::with(&["--udp", "--drain-timeout", "2"]);
    let c = client(s.udp_addrs[0]);
    assert_eq!(echo(&c, b"before\n"), b"before\n");
    let threads = s.threads();
    assert!(
        s.log.lines().iter().any(|l| l.contains("(UDP)")),
        "the UDP socket is announced"
    );
    let started = Instant::now();
    s.signal(libc::SIGTERM);
    let status = s.wait_exit(DEADLINE);
    assert_eq!(status.code(), Some(0), "{}", s.log.lines().join("\n"));
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "within the drain deadline"
    );
    assert!(threads >= 2);
    // Nothing answers any more: the port is closed (ICMP port unreachable).
    c.send(b"after\n").unwrap();
    let mut buf = [0u8; 64];
    let err = c.recv(&mut buf).expect_err("no answer after shutdown");
    assert!(
        matches!(
            err.kind(),
            ErrorKind::ConnectionRefused | ErrorKind::WouldBlock | ErrorKind::TimedOut
        ),
        "{err}"
    );
}

#[test]
fn udp_needs_a_plain_port_and_is_in_the_help() {
    let (code, _, err) = run_to_exit(&["--port", "none", "--tls-port", "0", "--udp"], &[]);
    assert_eq!(code, Some(2), "{err}");
    assert!(
        err.contains("--udp") && err.contains("plain ports"),
        "{err}"
    );
    let (code, out, _) = run_to_exit(&["--help"], &[]);
    assert_eq!(code, Some(0));
    assert!(out.contains("--udp") && out.contains("ECHO_UDP"), "{out}");
    // Off by default: no UDP socket.
    let s = Server::with(&[]);
    assert!(s.udp_addrs.is_empty());
    let c = client(s.addrs[0]);
    c.set_read_timeout(Some(Duration::from_millis(300)))
        .unwrap();
    c.send(b"x").unwrap();
    let err = c.recv(&mut [0u8; 16]).expect_err("no answer without --udp");
    assert_eq!(err.kind(), ErrorKind::ConnectionRefused, "{err}");
}

#[test]
fn the_probe_tallies_versions_over_udp_and_counts_lost_datagrams() {
    let one = Server::with(&["--udp", "--prefix", "one"]);
    let out = support::command(
        &[
            "probe",
            &one.udp_addrs[0].to_string(),
            "--udp",
            "--connections",
            "40",
            "--concurrency",
            "4",
            "--expect",
            "one=1",
            "--json",
        ],
        &[],
    )
    .output()
    .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "{text}");
    assert!(text.contains("\"protocol\":\"udp\""), "{text}");
    assert!(
        text.contains("\"ok\":40") && text.contains("\"versions\":{\"one\":40}"),
        "{text}"
    );
    assert!(text.contains("\"expect_ok\":true"), "{text}");

    // A socket that never answers: every datagram is lost, within the timeout.
    let silent = UdpSocket::bind("127.0.0.1:0").unwrap();
    let start = Instant::now();
    let out = support::command(
        &[
            "probe",
            &silent.local_addr().unwrap().to_string(),
            "--udp",
            "--connections",
            "3",
            "--concurrency",
            "3",
            "--timeout",
            "0.5",
        ],
        &[],
    )
    .output()
    .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{text}");
    assert!(text.contains("3 UDP datagrams, 0 ok, 3 failed"), "{text}");
    assert!(text.contains("3 lost"), "{text}");
    assert!(start.elapsed() < Duration::from_secs(3));
    drop(silent);
    // Nothing bound: refused (port unreachable), not lost. The port is one just freed, which
    // a test running beside this one may bind meanwhile: only then is another port tried.
    for attempt in 1.. {
        let free = UdpSocket::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap();
        let out = support::command(
            &["probe", &free.to_string(), "--udp", "--connections", "2"],
            &[],
        )
        .output()
        .unwrap();
        let text = String::from_utf8_lossy(&out.stdout);
        let refused = out.status.code() == Some(1) && text.contains("2 refused");
        let taken = || UdpSocket::bind(free).is_err();
        if refused {
            break;
        }
        assert!(attempt < 5 && taken(), "{free} was free: {text}");
    }
    // A wrong answer is a wrong echo.
    let liar = UdpSocket::bind("127.0.0.1:0").unwrap();
    let liar_addr = liar.local_addr().unwrap();
    std::thread::spawn(move || {
        let mut buf = [0u8; 1500];
        while let Ok((_, from)) = liar.recv_from(&mut buf) {
            let _ = liar.send_to(b"something else\n", from);
        }
    });
    let out = support::command(
        &[
            "probe",
            &liar_addr.to_string(),
            "--udp",
            "--connections",
            "2",
        ],
        &[],
    )
    .output()
    .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{text}");
    assert!(text.contains("2 wrong_echo"), "{text}");
}
