//! Faults on demand (`--fault`, and `PUT /fault` with `--admin-control`), each measured by a
//! real client against the binary: the delay within a tolerance, exactly N bytes then EOF, a
//! reset, a refused connection, a connection that stays open and silent, a rate within 20 %,
//! a share of connections within binomial bounds.

mod support;

use std::io::{ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use support::{assert_silent, connect, read_exactly, run_to_exit, Server, DEADLINE};

/// `METHOD /fault` with `body` on the admin port: (status, body).
fn control(admin: SocketAddr, method: &str, body: &str) -> (u16, String) {
    let mut s = connect(admin);
    let request = format!(
        "{method} /fault HTTP/1.1\r\nHost: pod\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    s.write_all(request.as_bytes()).unwrap();
    let raw = support::read_to_eof(&mut s);
    let text = String::from_utf8_lossy(&raw).into_owned();
    let status = text.split(' ').nth(1).unwrap().parse().unwrap();
    (status, text.split_once("\r\n\r\n").unwrap().1.to_string())
}

/// Reads what comes until the end; the bytes, and how the end came (Ok: EOF).
fn read_until_end(s: &mut TcpStream) -> (Vec<u8>, std::io::Result<()>) {
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        match s.read(&mut buf) {
            Ok(0) => return (got, Ok(())),
            Ok(n) => got.extend_from_slice(&buf[..n]),
            Err(e) => return (got, Err(e)),
        }
    }
}

#[test]
fn delay_holds_each_echo_back_and_jitter_adds_to_it() {
    let s = Server::with(&["--banner", "off", "--fault", "delay=300ms"]);
    let mut c = s.connect();
    for i in 0..3 {
        let start = Instant::now();
        c.write_all(format!("line {i}\n").as_bytes()).unwrap();
        assert_eq!(read_exactly(&mut c, 7), format!("line {i}\n").as_bytes());
        let took = start.elapsed();
        assert!(
            took >= Duration::from_millis(300) && took < Duration::from_millis(600),
            "echo after {took:?}"
        );
    }
    let s = Server::with(&["--banner", "off", "--fault", "delay=100ms,jitter=200ms"]);
    let mut c = s.connect();
    let mut seen = Vec::new();
    for _ in 0..8 {
        let start = Instant::now();
        c.write_all(b"j\n").unwrap();
        read_exactly(&mut c, 2);
        seen.push(start.elapsed());
    }
    assert!(
        seen.iter()
            .all(|t| *t >= Duration::from_millis(100) && *t < Duration::from_millis(550)),
        "{seen:?}"
    );
    let spread = seen
        .iter()
        .max()
        .unwrap()
        .saturating_sub(*seen.iter().min().unwrap());
    assert!(spread >= Duration::from_millis(20), "no jitter: {seen:?}");
}

#[test]
fn connect_delay_holds_back_even_the_banner() {
    let s = Server::start(
        &["--port", "0", "--fault", "connect-delay=500ms"],
        &[("POD_NAME", "tcp-echo-v1-x")],
    );
    let start = Instant::now();
    let mut c = s.connect();
    assert_silent(&mut c, Duration::from_millis(350));
    let banner = read_exactly(&mut c, "Running on Pod tcp-echo-v1-x.\n".len());
    let took = start.elapsed();
    assert_eq!(banner, b"Running on Pod tcp-echo-v1-x.\n");
    assert!(
        took >= Duration::from_millis(500) && took < Duration::from_millis(900),
        "banner after {took:?}"
    );
}

#[test]
fn rate_paces_the_echo_within_20_percent() {
    let s = Server::with(&["--banner", "off", "--fault", "rate=64KiB"]);
    let mut c = s.connect();
    let input = vec![b'r'; 192 * 1024];
    let writer = {
        let mut w = c.try_clone().unwrap();
        let input = input.clone();
        std::thread::spawn(move || w.write_all(&input).unwrap())
    };
    let first = read_exactly(&mut c, 1);
    let start = Instant::now();
    let rest = read_exactly(&mut c, input.len() - 1);
    let took = start.elapsed().as_secs_f64();
    writer.join().unwrap();
    assert_eq!([first, rest].concat(), input);
    let rate = (input.len() - 1) as f64 / took;
    assert!(
        (0.8 * 65536.0..=1.2 * 65536.0).contains(&rate),
        "{rate:.0} bytes/s for 65536"
    );
}

#[test]
fn close_after_a_size_echoes_exactly_that_many_bytes_then_ends() {
    let s = Server::with(&[
        "--banner",
        "off",
        "--prefix",
        "one",
        "--fault",
        "close-after=10",
    ]);
    let mut c = s.connect();
    c.write_all(b"hello world, more than ten\nand more\n")
        .unwrap();
    let (got, end) = read_until_end(&mut c);
    assert_eq!(got, b"one hello ");
    assert!(end.is_ok(), "{end:?}: a FIN, not a reset");
    let closed = s
        .log
        .wait_for("close", DEADLINE, |l| l.contains("TCP connection closed."));
    assert!(closed.contains("reason=fault close-after"), "{closed}");
    assert!(closed.contains("fault=\"close-after=10\""), "{closed}");
}

#[test]
fn close_after_a_duration_ends_the_connection_then() {
    let s = Server::with(&["--banner", "off", "--fault", "close-after=1s"]);
    let mut c = s.connect();
    let start = Instant::now();
    c.write_all(b"before\n").unwrap();
    assert_eq!(read_exactly(&mut c, 7), b"before\n");
    let (got, end) = read_until_end(&mut c);
    let took = start.elapsed();
    assert!(got.is_empty() && end.is_ok(), "{got:?} {end:?}");
    assert!(
        took >= Duration::from_millis(950) && took < Duration::from_millis(1500),
        "ended after {took:?}"
    );
}

#[test]
fn reset_alone_resets_at_once_and_with_close_after_after_the_bytes() {
    let s = Server::with(&["--banner", "off", "--fault", "reset"]);
    let mut c = s.connect();
    let _ = c.write_all(b"anyone?\n");
    let (got, end) = read_until_end(&mut c);
    assert!(got.is_empty(), "{got:?}");
    assert_eq!(end.unwrap_err().kind(), ErrorKind::ConnectionReset);
    let closed = s
        .log
        .wait_for("close", DEADLINE, |l| l.contains("TCP connection closed."));
    assert!(closed.contains("reason=fault reset"), "{closed}");

    let s = Server::with(&["--banner", "off", "--fault", "reset,close-after=5"]);
    let mut c = s.connect();
    c.write_all(b"0123456789\n").unwrap();
    let (got, end) = read_until_end(&mut c);
    assert_eq!(got, b"01234");
    assert_eq!(end.unwrap_err().kind(), ErrorKind::ConnectionReset);
}

#[test]
fn hang_keeps_the_connection_open_and_silent_until_a_time_limit() {
    let s = Server::with(&[
        "--prefix",
        "one",
        "--idle-timeout",
        "1.5",
        "--fault",
        "hang",
    ]);
    let start = Instant::now();
    let mut c = s.connect();
    c.write_all(b"hello?\n").unwrap();
    assert_silent(&mut c, Duration::from_millis(1000));
    let (got, end) = read_until_end(&mut c);
    let took = start.elapsed();
    assert!(got.is_empty() && end.is_ok(), "{got:?} {end:?}");
    assert!(
        took >= Duration::from_millis(1400) && took < Duration::from_millis(2500),
        "closed after {took:?}"
    );
    let closed = s
        .log
        .wait_for("close", DEADLINE, |l| l.contains("TCP connection closed."));
    assert!(
        closed.contains("reason=idle timeout") && closed.contains("fault=\"hang\""),
        "{closed}"
    );
    // At shutdown a hanging connection closes at once, and the server exits 0.
    let mut s = Server::with(&["--fault", "hang", "--drain-timeout", "10"]);
    let mut c = s.connect();
    s.log
        .wait_for("open", DEADLINE, |l| l.contains("TCP connection open."));
    let start = Instant::now();
    s.signal(libc::SIGTERM);
    let (_, end) = read_until_end(&mut c);
    assert!(end.is_ok(), "{end:?}");
    assert_eq!(s.wait_exit(DEADLINE).code(), Some(0));
    assert!(
        start.elapsed() < Duration::from_secs(2),
        "{:?}",
        start.elapsed()
    );
}

#[test]
fn refuse_closes_the_listeners_and_open_connections_carry_on() {
    let s = Server::with(&["--banner", "off", "--admin-port", "0", "--admin-control"]);
    let admin = s.admin();
    let mut open = s.connect();
    open.write_all(b"before\n").unwrap();
    assert_eq!(read_exactly(&mut open, 7), b"before\n");
    assert_eq!(
        control(admin, "PUT", "refuse"),
        (200, "refuse\n".to_string())
    );
    // At once: the kernel refuses new connections.
    support::wait_until("connections refused", DEADLINE, || {
        matches!(
            TcpStream::connect(s.addrs[0]),
            Err(e) if e.kind() == ErrorKind::ConnectionRefused
        )
    });
    let (_, metrics) = support::http_get(admin, "/metrics").unwrap();
    assert!(metrics.contains("tcp_echo_fault_refusing 1"), "{metrics}");
    open.write_all(b"during\n").unwrap();
    assert_eq!(read_exactly(&mut open, 7), b"during\n");
    assert_eq!(control(admin, "DELETE", ""), (200, String::new()));
    support::wait_until("accepting again", DEADLINE, || {
        TcpStream::connect(s.addrs[0]).is_ok()
    });
    assert_eq!(support::exchange(s.addrs[0], b"after\n"), b"after\n");
}

#[test]
fn percent_faults_a_share_of_connections_within_binomial_bounds() {
    let s = Server::with(&[
        "--banner",
        "off",
        "--fault",
        "close-after=3,percent=30",
        "--admin-port",
        "0",
    ]);
    let n = 300;
    let cut = (0..n)
        .filter(|_| {
            let got = support::exchange(s.addrs[0], b"hello\n");
            assert!(got == b"hello\n" || got == b"hel", "{got:?}");
            got == b"hel"
        })
        .count();
    // 30% of 300: 90, standard deviation 7.9; five of them either side.
    assert!((50..=130).contains(&cut), "{cut} of {n} cut");
    let (_, metrics) = support::http_get(s.admin(), "/metrics").unwrap();
    assert!(
        metrics.contains(&format!(
            "tcp_echo_connections_faulted_total{{fault=\"close_after\"}} {cut}"
        )),
        "{metrics}"
    );
}

#[test]
fn runtime_control_needs_admin_control_and_applies_to_new_connections() {
    // Without --admin-control: GET shows, PUT and DELETE are refused and change nothing.
    let s = Server::with(&[
        "--banner",
        "off",
        "--admin-port",
        "0",
        "--fault",
        "delay=50ms",
    ]);
    let admin = s.admin();
    assert_eq!(control(admin, "GET", ""), (200, "delay=50ms\n".to_string()));
    assert_eq!(control(admin, "PUT", "refuse").0, 403);
    assert_eq!(control(admin, "DELETE", "").0, 403);
    assert_eq!(control(admin, "GET", ""), (200, "delay=50ms\n".to_string()));
    assert_eq!(support::exchange(s.addrs[0], b"x\n"), b"x\n");

    // With it: a new SPEC reaches new connections; an open one keeps what it drew.
    let s = Server::with(&["--banner", "off", "--admin-port", "0", "--admin-control"]);
    let admin = s.admin();
    assert_eq!(control(admin, "GET", ""), (200, String::new()));
    let mut before = s.connect();
    before.write_all(b"a\n").unwrap();
    assert_eq!(read_exactly(&mut before, 2), b"a\n");
    assert_eq!(
        control(admin, "PUT", "delay=400ms"),
        (200, "delay=400ms\n".to_string())
    );
    let start = Instant::now();
    before.write_all(b"b\n").unwrap();
    assert_eq!(read_exactly(&mut before, 2), b"b\n");
    assert!(
        start.elapsed() < Duration::from_millis(300),
        "the open connection was delayed"
    );
    let mut after = s.connect();
    let start = Instant::now();
    after.write_all(b"c\n").unwrap();
    assert_eq!(read_exactly(&mut after, 2), b"c\n");
    assert!(
        start.elapsed() >= Duration::from_millis(400),
        "the new connection was not"
    );
    // A bad SPEC is a 400 naming the item; the SPEC set stays.
    let (status, body) = control(admin, "PUT", "delay=400ms,dealy=1s");
    assert_eq!(status, 400);
    assert!(body.contains("dealy=1s: not a fault"), "{body}");
    assert_eq!(
        control(admin, "GET", ""),
        (200, "delay=400ms\n".to_string())
    );
    assert_eq!(control(admin, "POST", "").0, 405);
    assert_eq!(control(admin, "DELETE", ""), (200, String::new()));
    let start = Instant::now();
    assert_eq!(support::exchange(s.addrs[0], b"d\n"), b"d\n");
    assert!(start.elapsed() < Duration::from_millis(300));
}

#[test]
fn a_bad_spec_at_start_exits_2_naming_the_item() {
    for (args, envs, needle) in [
        (&["--fault", "delay=fast"][..], &[][..], "delay=fast"),
        (
            &[][..],
            &[("ECHO_FAULT", "reset,explode")][..],
            "explode: not a fault",
        ),
        (&["--admin-control"][..], &[][..], "--admin-port"),
    ] {
        let (code, _, err) = run_to_exit(args, envs);
        assert_eq!(code, Some(2), "{args:?} {envs:?}: {err}");
        assert_eq!(err.lines().count(), 1, "{err}");
        assert!(err.contains(needle), "{err}");
    }
}
