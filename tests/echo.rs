//! Echo, last line, long lines, banner and logs (behaviours 1-4 and 8), against the binary.

mod support;

use std::fs::OpenOptions;
use std::io::{BufRead, BufReader, ErrorKind, Write};
use std::net::{Shutdown, SocketAddr};
use std::os::unix::fs::OpenOptionsExt;
use std::process::Stdio;
use std::time::Duration;

use support::{assert_silent, connect, exchange, read_exactly, read_to_eof, Server, DEADLINE};

const BANNER_ENV: [(&str, &str); 5] = [
    ("NODE_NAME", "EchoNode"),
    ("POD_NAME", "tcp-echo-v1-7d9"),
    ("POD_NAMESPACE", "demo"),
    ("POD_IP", "10.0.0.7"),
    ("SERVICE_ACCOUNT", "tcp-echo"),
];
const BANNER: &str = "Welcome, you are connected to node EchoNode.\n\
                      Running on Pod tcp-echo-v1-7d9.\n\
                      In namespace demo.\n\
                      With IP address 10.0.0.7.\n\
                      Service tcp-echo.\n";

#[test]
fn echoes_each_line_with_the_prefix_byte_for_byte() {
    let s = Server::with(&["--prefix", "one"]);
    let input: &[u8] = b"hello\nwin\r\n\0nul\n\xff\xfe invalid utf-8\n\n";
    let expected: &[u8] = b"one hello\none win\r\none \0nul\none \xff\xfe invalid utf-8\none \n";
    assert_eq!(exchange(s.addrs[0], input), expected);
}

#[test]
fn lines_sent_together_come_back_in_order() {
    let s = Server::with(&["--prefix", "two"]);
    let input: Vec<u8> = (0..20_000)
        .flat_map(|i| format!("{i}\n").into_bytes())
        .collect();
    let expected = support::expected_echo(&input, Some("two"));
    assert_eq!(exchange(s.addrs[0], &input), expected);
}

#[test]
fn interactive_lines_are_echoed_one_at_a_time() {
    let s = Server::with(&["--prefix", "one"]);
    let mut c = s.connect();
    for i in 0..50 {
        let line = format!("line {i}\n");
        c.write_all(line.as_bytes()).unwrap();
        let want = format!("one {line}");
        assert_eq!(read_exactly(&mut c, want.len()), want.as_bytes());
    }
}

#[test]
fn final_line_without_newline_is_echoed_after_half_close() {
    let s = Server::with(&["--prefix", "one"]);
    assert_eq!(exchange(s.addrs[0], b"a\nb"), b"one a\none b");
    let s = Server::with(&[]);
    assert_eq!(exchange(s.addrs[0], b"only"), b"only");
}

#[test]
fn bytes_without_a_newline_come_back_at_once_on_an_open_connection() {
    // A health checker's payload: no newline, connection kept open, reply awaited.
    let s = Server::with(&["--prefix", "one"]);
    let mut c = s.connect();
    c.write_all(b"PING").unwrap();
    assert_eq!(read_exactly(&mut c, 8), b"one PING");
    // The rest of the line follows without a second prefix; the next line gets its own.
    c.write_all(b"PONG\nx").unwrap();
    assert_eq!(read_exactly(&mut c, 10), b"PONG\none x");
    let s = Server::with(&[]);
    let mut c = s.connect();
    c.write_all(b"50494E47").unwrap();
    assert_eq!(read_exactly(&mut c, 8), b"50494E47");
}

#[test]
fn a_read_echoed_in_several_writes_arrives_whole_while_the_connection_stays_open() {
    // At the smallest socket buffer the staging buffer holds its minimum, 8.25 KiB: a read of
    // 2,048 empty lines (10 KiB with the prefix) leaves in several writes, all but the last
    // sent with `MSG_MORE` (unless the congestion control is BBR). The last one must send everything: nothing may wait for a next read. (Had
    // it `MSG_MORE` too, the kernel would hold the end back for 200 ms each time: 2 s here.)
    let s = Server::with(&["--prefix", "one", "--socket-buffer", "4096"]);
    let mut c = s.connect();
    let start = std::time::Instant::now();
    for _ in 0..10 {
        c.write_all(&[b'\n'; 2048]).unwrap();
        assert_eq!(read_exactly(&mut c, 5 * 2048), b"one \n".repeat(2048));
    }
    let took = start.elapsed();
    assert!(
        took < Duration::from_secs(1),
        "10 echoes took {took:?}: held back"
    );
}

#[test]
fn a_line_typed_byte_by_byte_is_echoed_byte_by_byte() {
    let s = Server::with(&["--prefix", "one"]);
    let mut c = s.connect();
    c.write_all(b"h").unwrap();
    assert_eq!(read_exactly(&mut c, 5), b"one h");
    for &b in b"ello\n" {
        c.write_all(&[b]).unwrap();
        assert_eq!(read_exactly(&mut c, 1), [b]);
    }
    c.write_all(b"w").unwrap();
    assert_eq!(read_exactly(&mut c, 5), b"one w");
}

#[test]
fn a_long_line_keeps_every_byte_in_order() {
    let s = Server::with(&["--prefix", "p"]);
    let input: Vec<u8> = (0..2_000_000u32)
        .map(|i| (i % 251) as u8)
        .filter(|&b| b != b'\n')
        .collect();
    let mut expected = b"p ".to_vec();
    expected.extend_from_slice(&input);
    let addr = s.addrs[0];
    // Write and read concurrently: the echo does not wait for the end of the line.
    let mut c = connect(addr);
    let mut w = c.try_clone().unwrap();
    let writer = std::thread::spawn(move || {
        w.write_all(&input).unwrap();
        w.shutdown(Shutdown::Write).unwrap();
    });
    let got = read_to_eof(&mut c);
    writer.join().unwrap();
    assert_eq!(got.len(), expected.len());
    assert!(got == expected, "bytes differ");
}

#[test]
fn banner_on_connect_comes_first_word_for_word() {
    let s = Server::start(&["--port", "0", "--prefix", "one"], &BANNER_ENV);
    let mut c = s.connect();
    // Server-first: the banner arrives before the client says anything.
    assert_eq!(read_exactly(&mut c, BANNER.len()), BANNER.as_bytes());
    c.write_all(b"hi\n").unwrap();
    assert_eq!(read_exactly(&mut c, 7), b"one hi\n");
}

#[test]
fn banner_has_one_line_per_set_variable_and_nothing_without_them() {
    let s = Server::start(
        &["--port", "0"],
        &[("POD_NAME", "p"), ("POD_IP", ""), ("SERVICE_ACCOUNT", "sa")],
    );
    assert_eq!(
        exchange(s.addrs[0], b"x\n"),
        b"Running on Pod p.\nService sa.\nx\n"
    );
    let s = Server::start(&["--port", "0"], &[]);
    assert_eq!(exchange(s.addrs[0], b"x\n"), b"x\n");
}

#[test]
fn banner_first_read_waits_for_the_client_to_speak() {
    let s = Server::start(
        &["--port", "0", "--banner", "first-read", "--prefix", "one"],
        &BANNER_ENV,
    );
    let mut c = s.connect();
    assert_silent(&mut c, Duration::from_millis(300));
    c.write_all(b"hello\n").unwrap();
    let want = format!("{BANNER}one hello\n");
    assert_eq!(read_exactly(&mut c, want.len()), want.as_bytes());
    // Only once.
    c.write_all(b"again\n").unwrap();
    assert_eq!(read_exactly(&mut c, 10), b"one again\n");
}

#[test]
fn banner_off_never_sends_it() {
    let s = Server::start(&["--port", "0", "--banner", "off"], &BANNER_ENV);
    let mut c = s.connect();
    assert_silent(&mut c, Duration::from_millis(300));
    c.write_all(b"hello\n").unwrap();
    c.shutdown(Shutdown::Write).unwrap();
    assert_eq!(read_to_eof(&mut c), b"hello\n");
}

#[test]
fn logs_keep_go_echo_lines_under_one_uuid() {
    let s = Server::with(&[]);
    assert_eq!(exchange(s.addrs[0], b"hello\n"), b"hello\n");
    let log = &s.log;
    let closed = log.wait_for("close line", DEADLINE, |l| {
        l.contains("TCP connection closed.")
    });
    let id = support::connection_id(&closed);
    assert!(
        uuid::Uuid::parse_str(&id).is_ok(),
        "not a uuid: {id:?} in {closed}"
    );
    let mine: Vec<String> = log.matching(&format!("{id} - "));
    let open = mine
        .iter()
        .find(|l| l.contains("TCP connection open."))
        .expect("open line");
    assert!(open.contains("peer=127.0.0.1:"), "{open}");
    assert!(
        mine.iter().any(|l| l.ends_with(&format!(
            "{id} - Received Raw Data: [104 101 108 108 111 10]"
        ))),
        "{mine:#?}"
    );
    assert!(
        mine.iter().any(|l| l.ends_with(&format!(
            "{id} - Received Data (converted to string): hello"
        ))),
        "{mine:#?}"
    );
    for field in ["reason=EOF", "bytes=6", "lines=1", "duration="] {
        assert!(closed.contains(field), "{field} missing: {closed}");
    }
}

#[test]
fn a_reply_does_not_wait_for_its_log_records() {
    // stderr is a pipe that this test stops reading once the connection's open record is
    // in, and then fills to the last byte: from then on every log record blocks its writer.
    // The echo of what the worker read must leave before that read's `Received` records.
    let mut child = support::command(&["--port", "0", "--prefix", "one", "--banner", "off"], &[])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start tcp-echo");
    let mut log = BufReader::new(child.stderr.take().expect("stderr"));
    let mut next_line = || {
        let mut line = String::new();
        assert!(
            log.read_line(&mut line).expect("read the log") > 0,
            "exited"
        );
        line
    };
    let port = loop {
        let line = next_line();
        if let Some((_, addr)) = line.trim().split_once("listening on ") {
            break addr.rsplit(':').next().unwrap().parse::<u16>().unwrap();
        }
    };
    let mut c = connect(SocketAddr::from(([127, 0, 0, 1], port)));
    while !next_line().contains("TCP connection open.") {}
    // A file description of the pipe of its own, non-blocking (the server's stays blocking):
    // 4 KiB writes, then single bytes, until not one more fits.
    let mut filler = OpenOptions::new()
        .write(true)
        .custom_flags(libc::O_NONBLOCK)
        .open(format!("/proc/{}/fd/2", child.id()))
        .expect("open the server's stderr pipe");
    let chunk = [b'#'; 4096];
    for size in [chunk.len(), 1] {
        loop {
            match filler.write(&chunk[..size]) {
                Ok(_) => {}
                Err(e) if e.kind() == ErrorKind::WouldBlock => break,
                Err(e) => panic!("fill the pipe: {e}"),
            }
        }
    }
    c.set_read_timeout(Some(DEADLINE)).unwrap();
    c.write_all(b"hello\n").unwrap();
    assert_eq!(read_exactly(&mut c, 10), b"one hello\n");
    // Once the log is read again, the records follow.
    while !next_line().contains("Received Data (converted to string): hello") {}
    let _ = child.kill();
    let _ = child.wait();
}

#[test]
fn logged_text_is_escaped_and_capped() {
    let s = Server::with(&[]);
    let forged = b"x\r2026-01-01T00:00:00.000Z INFO  fake - TCP connection closed.\x1b[2J\n";
    exchange(s.addrs[0], forged);
    let mut big = vec![b'a'; 5000];
    big.push(b'\n');
    exchange(s.addrs[0], &big);
    // The forged text holds "TCP connection closed." too: wait for the two real close
    // records (with their fields), which are written after each connection's data records.
    s.log
        .wait_count("TCP connection closed. reason=", 2, DEADLINE);
    for line in s.log.lines() {
        assert!(
            !line.contains('\r') && !line.contains('\x1b'),
            "raw control character logged: {line:?}"
        );
    }
    // The forged text stays inside one escaped record.
    assert_eq!(s.log.matching("fake - TCP connection closed.").len(), 1);
    assert!(s.log.matching("x\\r2026-01-01").len() == 1);
    // The 5,001 bytes arrive in one or more reads, each logged as a piece: every record is
    // capped at 1 KiB and says how much it leaves out, and together they account for it all.
    let count = |marker: &str, shown: fn(&str) -> usize| -> (usize, usize) {
        let mut total = 0;
        let mut capped = 0;
        for l in s.log.matching(marker) {
            let body = &l[l.find(marker).unwrap() + marker.len()..];
            let (head, hidden) = match body.rsplit_once(" ... (") {
                Some((head, tail)) => {
                    capped += 1;
                    (
                        head,
                        tail.trim_end_matches(" more bytes)")
                            .parse::<usize>()
                            .unwrap(),
                    )
                }
                None => (body, 0),
            };
            assert!(l.len() < 5000, "record not capped: {} bytes", l.len());
            total += shown(head) + hidden;
        }
        (total, capped)
    };
    let (text, capped) = count("converted to string): aaa", |h| h.len() + 3);
    assert_eq!(text, 5000, "text records");
    assert!(capped >= 1);
    let (raw, capped) = count("Received Raw Data: [97 97", |h| {
        h.trim_end_matches(']').split_whitespace().count() + 2
    });
    assert_eq!(raw, 5001, "raw records");
    assert!(capped >= 1);
}

#[test]
fn received_lines_are_not_logged_nor_budgeted_when_the_filter_drops_them() {
    let s = Server::start(
        &["--port", "0"],
        &[("RUST_LOG", "info,tcp_echo::data=warn")],
    );
    // Far past the log budget of 1,000 pieces: were the records prepared and only dropped by
    // the logger, the budget would count the pieces past it as not logged.
    let input: Vec<u8> = (0..3000)
        .flat_map(|i| format!("secret {i}\n").into_bytes())
        .collect();
    assert_eq!(exchange(s.addrs[0], &input), input);
    // The close record is written after anything logged for the lines.
    let closed = s
        .log
        .wait_for("close", DEADLINE, |l| l.contains("TCP connection closed."));
    assert!(
        s.log.matching("Received").is_empty(),
        "{:#?}",
        s.log.lines()
    );
    assert_eq!(support::field(&closed, "unlogged="), "0", "{closed}");
    assert_eq!(s.log.matching("TCP connection open.").len(), 1);
}

#[test]
fn dual_stack_by_default() {
    // With the default bind, one listener serves both families: 127.0.0.1 and ::1 reach the
    // same port (the Services are PreferDualStack). This machine must have IPv6 loopback.
    let s = Server::with(&[]);
    let port = s.addrs[0].port();
    let line = s
        .log
        .wait_for("listening", DEADLINE, |l| l.contains("listening on "));
    assert!(
        line.ends_with(&format!("listening on [::]:{port}")),
        "{line}"
    );
    let v4 = std::net::SocketAddr::from(([127, 0, 0, 1], port));
    let v6 = std::net::SocketAddr::from(([0, 0, 0, 0, 0, 0, 0, 1], port));
    assert_eq!(exchange(v4, b"four\n"), b"four\n");
    assert_eq!(exchange(v6, b"six\n"), b"six\n");
    let peers: Vec<String> = s
        .log
        .wait_count("TCP connection open.", 2, DEADLINE)
        .iter()
        .map(|l| support::field(l, "peer=").to_string())
        .collect();
    assert!(peers[0].starts_with("127.0.0.1:"), "{peers:?}");
    assert!(peers[1].starts_with("[::1]:"), "{peers:?}");
}
