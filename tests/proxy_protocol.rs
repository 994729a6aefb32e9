//! `--proxy-protocol` and `--banner-client`, against the binary, with headers written by hand
//! (tests/clients.rs puts real proxies in front: HAProxy and Envoy).

mod support;

use std::io::Write;
use std::net::{Shutdown, SocketAddr};
use std::time::{Duration, Instant};

use support::{connect, field, read_exactly, read_to_eof, Server, DEADLINE};

/// A v1 header for a client at `client` talking to `to`.
fn v1(client: SocketAddr, to: SocketAddr) -> Vec<u8> {
    format!(
        "PROXY TCP4 {} {} {} {}\r\n",
        client.ip(),
        to.ip(),
        client.port(),
        to.port()
    )
    .into_bytes()
}

/// A v2 header: `command` 1 (PROXY) or 0 (LOCAL), TCP over IPv4 from `client` to `to`, with
/// a NOOP TLV.
fn v2(command: u8, client: SocketAddr, to: SocketAddr) -> Vec<u8> {
    let (SocketAddr::V4(c), SocketAddr::V4(t)) = (client, to) else {
        panic!("IPv4 only here")
    };
    let mut body = c.ip().octets().to_vec();
    body.extend_from_slice(&t.ip().octets());
    body.extend_from_slice(&c.port().to_be_bytes());
    body.extend_from_slice(&t.port().to_be_bytes());
    body.extend_from_slice(&[0x04, 0, 2, b'h', b'i']);
    let mut h = b"\r\n\r\n\0\r\nQUIT\n".to_vec();
    h.push(0x20 | command);
    h.push(0x11);
    h.extend_from_slice(&(body.len() as u16).to_be_bytes());
    h.extend_from_slice(&body);
    h
}

const CLIENT: &str = "192.0.2.7:56324";

fn client() -> SocketAddr {
    CLIENT.parse().unwrap()
}

/// Sends `data` and half-closes; returns all that comes back.
fn exchange(s: &Server, data: &[u8]) -> Vec<u8> {
    support::exchange(s.addrs[0], data)
}

#[test]
fn off_echoes_a_header_as_data() {
    let s = Server::with(&["--banner", "off"]);
    let header = v1(client(), s.addrs[0]);
    let input = [header.clone(), b"hello\n".to_vec()].concat();
    assert_eq!(exchange(&s, &input), input);
}

#[test]
fn v1_and_v2_headers_are_consumed_and_name_the_client() {
    for (mode, version) in [
        ("optional", 1),
        ("required", 1),
        ("optional", 2),
        ("required", 2),
    ] {
        let s = Server::start(
            &[
                "--port",
                "0",
                "--proxy-protocol",
                mode,
                "--banner-client",
                "--prefix",
                "one",
            ],
            &[("POD_NAME", "pp-pod")],
        );
        let header = match version {
            1 => v1(client(), s.addrs[0]),
            _ => v2(1, client(), s.addrs[0]),
        };
        let got = exchange(&s, &[header, b"hello\nlast".to_vec()].concat());
        assert_eq!(
            String::from_utf8_lossy(&got),
            format!("Running on Pod pp-pod.\nYour address is {CLIENT}.\none hello\none last"),
            "{mode} v{version}"
        );
        let open = s
            .log
            .wait_for("open", DEADLINE, |l| l.contains("TCP connection open."));
        assert_eq!(field(&open, "client="), CLIENT, "{open}");
        assert!(field(&open, "peer=").starts_with("127.0.0.1:"), "{open}");
        assert_eq!(field(&open, "proxy="), format!("v{version}"), "{open}");
        // The header is not data: the close record counts the echoed bytes only.
        let closed = s
            .log
            .wait_for("close", DEADLINE, |l| l.contains("TCP connection closed."));
        assert_eq!(field(&closed, "bytes="), "10", "{closed}");
    }
}

#[test]
fn optional_serves_a_client_without_a_header_as_usual() {
    let s = Server::with(&[
        "--proxy-protocol",
        "optional",
        "--banner-client",
        "--prefix",
        "one",
    ]);
    let mut c = connect(s.addrs[0]);
    let me = c.local_addr().unwrap();
    // The banner comes once the server knows there is no header: the first byte decides.
    c.write_all(b"hello\n").unwrap();
    let want = format!("Your address is {me}.\none hello\n");
    assert_eq!(read_exactly(&mut c, want.len()), want.as_bytes());
}

#[test]
fn required_refuses_a_client_without_a_header_and_echoes_nothing() {
    let s = Server::with(&["--proxy-protocol", "required", "--banner", "off"]);
    let got = exchange(&s, b"hello\n");
    assert!(got.is_empty(), "{got:?}");
    let refused = s.log.wait_for("refusal", DEADLINE, |l| {
        l.contains("TCP connection refused:")
    });
    assert!(
        refused.contains("no PROXY header, and one is required"),
        "{refused}"
    );
    assert!(refused.contains(" WARN "), "{refused}");
}

#[test]
fn malformed_headers_close_the_connection_with_a_reason_and_echo_nothing() {
    let s = Server::with(&["--proxy-protocol", "optional", "--banner", "off"]);
    let too_long = [b"PROXY TCP4 ".to_vec(), vec![b'9'; 120], b"\r\n".to_vec()].concat();
    let mut oversized = v2(1, client(), s.addrs[0]);
    oversized[14..16].copy_from_slice(&1000u16.to_be_bytes());
    for (input, reason) in [
        (
            b"PROXY TCP9 1.2.3.4 5.6.7.8 1 2\r\nhello\n".to_vec(),
            "malformed PROXY v1",
        ),
        (too_long, "without CRLF within 107 bytes"),
        (oversized, "beyond 536"),
    ] {
        let got = exchange(&s, &input);
        assert!(got.is_empty(), "{reason}: echoed {got:?}");
        s.log.wait_for(reason, DEADLINE, |l| {
            l.contains("TCP connection refused:") && l.contains(reason)
        });
    }
}

#[test]
fn bytes_that_only_begin_a_signature_are_echoed_without_waiting_for_the_header_deadline() {
    // An empty CRLF line and a lone `P` could be the start of a v2 or v1 signature: a proxy
    // sends its signature whole, so a pause after them means data (optional mode).
    let s = Server::with(&["--proxy-protocol", "optional", "--banner", "off"]);
    for first in [&b"\r\n"[..], b"P", b"PRO"] {
        let mut c = connect(s.addrs[0]);
        let start = Instant::now();
        c.write_all(first).unwrap();
        assert_eq!(read_exactly(&mut c, first.len()), first);
        let took = start.elapsed();
        assert!(
            took < Duration::from_secs(1),
            "{first:?} echoed after {took:?} (the header deadline is 3 s)"
        );
        // The connection goes on as any other.
        c.write_all(b"OXY\n").unwrap();
        assert_eq!(read_exactly(&mut c, 4), b"OXY\n");
    }
}

#[test]
fn a_v2_local_header_is_served_with_the_peer_address() {
    let s = Server::with(&["--proxy-protocol", "required", "--banner-client"]);
    let mut c = connect(s.addrs[0]);
    let me = c.local_addr().unwrap();
    c.write_all(&v2(0, client(), s.addrs[0])).unwrap();
    c.write_all(b"health\n").unwrap();
    c.shutdown(Shutdown::Write).unwrap();
    let got = read_to_eof(&mut c);
    assert_eq!(
        String::from_utf8_lossy(&got),
        format!("Your address is {me}.\nhealth\n")
    );
    let open = s
        .log
        .wait_for("open", DEADLINE, |l| l.contains("TCP connection open."));
    assert_eq!(field(&open, "proxy="), "v2 LOCAL", "{open}");
    assert_eq!(field(&open, "client="), me.to_string());
}

#[test]
fn a_header_split_byte_by_byte_within_the_deadline_is_read_whole() {
    let s = Server::with(&[
        "--proxy-protocol",
        "required",
        "--banner-client",
        "--prefix",
        "p",
    ]);
    let mut c = connect(s.addrs[0]);
    c.set_nodelay(true).unwrap();
    for b in v2(1, client(), s.addrs[0]) {
        c.write_all(&[b]).unwrap();
        std::thread::sleep(Duration::from_millis(5)); // the client's pace
    }
    c.write_all(b"x\n").unwrap();
    let want = format!("Your address is {CLIENT}.\np x\n");
    assert_eq!(read_exactly(&mut c, want.len()), want.as_bytes());
}

#[test]
fn a_slow_header_is_cut_off_at_the_deadline() {
    let s = Server::with(&["--proxy-protocol", "optional"]);
    let mut c = connect(s.addrs[0]);
    let start = Instant::now();
    c.write_all(b"PROXY TCP4 192.0.2.7 ").unwrap();
    // ...and never the rest: the server closes the connection, echoing nothing.
    let got = read_to_eof(&mut c);
    let took = start.elapsed();
    assert!(got.is_empty(), "{got:?}");
    assert!(
        took >= Duration::from_millis(2900) && took < Duration::from_secs(5),
        "closed after {took:?}"
    );
    let refused = s.log.wait_for("refusal", DEADLINE, |l| {
        l.contains("TCP connection refused:")
    });
    assert!(refused.contains("did not arrive within 3s"), "{refused}");
}

#[test]
fn invalid_settings_are_usage_errors() {
    for (args, flag) in [
        (&["--proxy-protocol", "maybe"][..], "--proxy-protocol"),
        (&["--banner-client=perhaps"][..], "--banner-client"),
    ] {
        let (code, _, err) = support::run_to_exit(args, &[]);
        assert_eq!(code, Some(2), "{err}");
        assert!(err.contains(flag), "{err}");
    }
    let (code, _, err) = support::run_to_exit(&[], &[("ECHO_PROXY_PROTOCOL", "sometimes")]);
    assert_eq!(code, Some(2), "{err}");
    assert!(err.contains("ECHO_PROXY_PROTOCOL"), "{err}");
}

#[test]
fn optional_serves_a_silent_client_after_the_header_deadline() {
    // An `nc` user waits for the banner: with a PROXY header possible, the server first waits
    // for one, then serves the client without.
    let s = Server::start(
        &["--port", "0", "--proxy-protocol", "optional"],
        &[("POD_NAME", "pp-pod")],
    );
    let mut c = connect(s.addrs[0]);
    let start = Instant::now();
    let banner = "Running on Pod pp-pod.\n";
    assert_eq!(read_exactly(&mut c, banner.len()), banner.as_bytes());
    let waited = start.elapsed();
    assert!(waited >= Duration::from_millis(2900), "{waited:?}");
    c.write_all(b"hi\n").unwrap();
    assert_eq!(read_exactly(&mut c, 3), b"hi\n");
}
