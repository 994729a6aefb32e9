//! Shutdown on SIGTERM and SIGINT (behaviour 7) and the exit summary, against the binary.

mod support;

use std::io::{ErrorKind, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use support::{field, read_exactly, read_to_eof, stuck_client, Server, DEADLINE};

#[test]
fn sigterm_with_no_connections_exits_0_with_a_summary() {
    let mut s = Server::with(&[]);
    support::exchange(s.addrs[0], b"abc\n");
    s.log
        .wait_for("close", DEADLINE, |l| l.contains("TCP connection closed."));
    s.signal(libc::SIGTERM);
    let status = s.wait_exit(DEADLINE);
    assert_eq!(status.code(), Some(0));
    let summary = s
        .log
        .wait_for("summary", DEADLINE, |l| l.contains("tcp-echo stopped"));
    assert!(
        summary.contains("served=1") && summary.contains("bytes echoed=4"),
        "{summary}"
    );
}

#[test]
fn sigint_works_too() {
    let mut s = Server::with(&[]);
    s.signal(libc::SIGINT);
    assert_eq!(s.wait_exit(DEADLINE).code(), Some(0));
}

#[test]
fn an_idle_session_does_not_delay_the_exit() {
    let mut s = Server::with(&["--drain-timeout", "30"]);
    let mut c = s.connect();
    c.write_all(b"hi\n").unwrap();
    assert_eq!(read_exactly(&mut c, 3), b"hi\n");
    let start = Instant::now();
    s.signal(libc::SIGTERM);
    assert_eq!(s.wait_exit(DEADLINE).code(), Some(0));
    assert!(
        start.elapsed() < Duration::from_secs(2),
        "took {:?}",
        start.elapsed()
    );
    assert_eq!(
        read_to_eof(&mut c),
        b"",
        "the client sees the connection closed"
    );
    let line = s
        .log
        .wait_for("close", DEADLINE, |l| l.contains("TCP connection closed."));
    assert!(line.contains("reason=shutdown"), "{line}");
}

#[test]
fn bytes_received_before_the_signal_are_echoed_including_a_partial_line() {
    let mut s = Server::with(&["--prefix", "one", "--drain-timeout", "10"]);
    let mut c = s.connect();
    let lines: Vec<u8> = (0..1000)
        .flat_map(|i| format!("line {i}\n").into_bytes())
        .collect();
    c.write_all(&lines).unwrap();
    c.write_all(b"no newline yet").unwrap();
    // The server has at least begun reading (the first reply is here) when the signal comes;
    // whatever it has not read yet is in its socket's receive queue.
    let first = read_exactly(&mut c, 11);
    assert_eq!(first, b"one line 0\n");
    s.signal(libc::SIGTERM);
    let rest = read_to_eof(&mut c);
    let mut got = first;
    got.extend_from_slice(&rest);
    let mut input = lines.clone();
    input.extend_from_slice(b"no newline yet");
    assert_eq!(
        String::from_utf8_lossy(&got),
        String::from_utf8_lossy(&support::expected_echo(&input, Some("one")))
    );
    assert_eq!(s.wait_exit(DEADLINE).code(), Some(0));
}

#[test]
fn a_client_that_stopped_reading_cannot_hold_the_exit_past_the_drain_timeout() {
    let mut s = Server::with(&["--drain-timeout", "1", "--idle-timeout", "600"]);
    let _stuck = stuck_client(&s);
    let start = Instant::now();
    s.signal(libc::SIGTERM);
    assert_eq!(s.wait_exit(DEADLINE).code(), Some(0));
    let took = start.elapsed();
    assert!(
        took >= Duration::from_millis(900),
        "exited before the drain timeout: {took:?}"
    );
    assert!(took < Duration::from_secs(3), "took {took:?}");
    s.log.wait_for("force close", DEADLINE, |l| {
        l.contains("drain timeout: closing 1")
    });
    // The worker's write failed because the server closed the socket, not the client.
    let closed = s
        .log
        .wait_for("close", DEADLINE, |l| l.contains("TCP connection closed."));
    assert!(
        closed.contains("reason=shutdown (closed at the drain deadline)"),
        "{closed}"
    );
}

#[test]
fn no_new_connection_is_accepted_after_the_signal() {
    let mut s = Server::with(&["--drain-timeout", "5", "--idle-timeout", "600"]);
    let _stuck = stuck_client(&s);
    s.signal(libc::SIGTERM);
    s.log.wait_for("stopped accepting", DEADLINE, |l| {
        l.contains("stopped accepting")
    });
    // The listener is closed while the drain goes on: connecting fails, or the connection
    // (queued before the listener closed) is closed at once. A listener left open with
    // nothing accepting would queue the connection and never answer: a read that times out
    // fails the test.
    match TcpStream::connect(s.addrs[0]) {
        Err(e) => assert_eq!(e.kind(), ErrorKind::ConnectionRefused, "{e}"),
        Ok(mut c) => {
            c.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
            let _ = c.write_all(b"x\n");
            let mut buf = Vec::new();
            match std::io::Read::read_to_end(&mut c, &mut buf) {
                Ok(_) => {}
                Err(e) if e.kind() == ErrorKind::ConnectionReset => {}
                Err(e) => panic!("the connection was left hanging: {e}"),
            }
            assert!(
                buf.is_empty(),
                "a connection was served after the signal: {buf:?}"
            );
        }
    }
    assert!(s.running(), "still draining");
}

#[test]
fn with_a_shutdown_delay_readiness_turns_503_at_once_and_it_keeps_accepting_until_the_delay_ends() {
    let mut s = Server::with(&[
        "--admin-port",
        "0",
        "--shutdown-delay",
        "2",
        "--prefix",
        "d",
    ]);
    let admin = s.admin();
    assert_eq!(support::http_get(admin, "/readyz").map(|r| r.0), Some(200));
    let signalled = Instant::now();
    s.signal(libc::SIGTERM);
    support::wait_until("/readyz to answer 503", DEADLINE, || {
        support::http_get(admin, "/readyz") == Some((503, "draining\n".to_string()))
    });
    assert_eq!(support::http_get(admin, "/healthz").map(|r| r.0), Some(200));
    // Readiness is off, and new connections are still served: the endpoints have the delay
    // to drop this server before it stops accepting.
    for i in 0..3 {
        let line = format!("late {i}\n");
        assert_eq!(
            support::exchange(s.addrs[0], line.as_bytes()),
            format!("d {line}").into_bytes()
        );
    }
    let late = signalled.elapsed();
    assert!(
        late < Duration::from_millis(1500),
        "the checks above took {late:?}: too slow to show anything"
    );
    s.log.wait_for("stopped accepting", DEADLINE, |l| {
        l.contains("stopped accepting")
    });
    let stopped = signalled.elapsed();
    assert!(
        stopped >= Duration::from_millis(1900),
        "stopped accepting after {stopped:?}, before the 2 s delay"
    );
    assert_eq!(s.wait_exit(DEADLINE).code(), Some(0));
    assert!(TcpStream::connect_timeout(&s.addrs[0], Duration::from_secs(1)).is_err());
}

#[test]
fn during_the_shutdown_delay_refusals_are_logged_and_time_limits_enforced() {
    // The main thread does the server's upkeep while it waits out the delay too.
    let mut s = Server::with(&[
        "--max-connections",
        "1",
        "--idle-timeout",
        "1.5",
        "--shutdown-delay",
        "6",
    ]);
    let mut quiet = s.connect();
    quiet.write_all(b"q\n").unwrap();
    assert_eq!(read_exactly(&mut quiet, 2), b"q\n");
    s.signal(libc::SIGTERM);
    s.log
        .wait_for("the delay", DEADLINE, |l| l.contains("shutdown requested"));
    // Still accepting, and full: the next client is told busy, and the refusal is logged.
    let mut refused = s.connect();
    let reply = String::from_utf8(read_to_eof(&mut refused)).unwrap();
    assert!(reply.contains("busy"), "{reply:?}");
    s.log
        .wait_for("busy warning", DEADLINE, |l| l.contains("server busy"));
    // The silent client is ended at its idle timeout, well before the delay is over.
    s.log.wait_for("the idle timeout", DEADLINE, |l| {
        l.contains("reason=idle timeout")
    });
    assert!(
        s.log.matching("stopped accepting").is_empty(),
        "the delay ended first"
    );
    assert_eq!(s.wait_exit(DEADLINE).code(), Some(0));
}

#[test]
fn a_second_signal_during_the_shutdown_delay_exits_at_once() {
    let mut s = Server::with(&["--shutdown-delay", "30"]);
    s.signal(libc::SIGTERM);
    s.log.wait_for("delay", DEADLINE, |l| {
        l.contains("still accepting for 30.0s")
    });
    let start = Instant::now();
    s.signal(libc::SIGTERM);
    assert_eq!(s.wait_exit(DEADLINE).code(), Some(130));
    assert!(start.elapsed() < Duration::from_secs(2));
}

#[test]
fn a_second_signal_exits_at_once() {
    let mut s = Server::with(&["--drain-timeout", "60", "--idle-timeout", "600"]);
    let _stuck = stuck_client(&s);
    s.signal(libc::SIGTERM);
    s.log.wait_for("stopped accepting", DEADLINE, |l| {
        l.contains("stopped accepting")
    });
    let start = Instant::now();
    s.signal(libc::SIGTERM);
    let status = s.wait_exit(DEADLINE);
    assert!(start.elapsed() < Duration::from_secs(2));
    assert_eq!(status.code(), Some(130));
}

#[test]
fn every_byte_read_before_the_signal_reaches_the_client_even_when_it_keeps_sending() {
    use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
    use std::sync::Arc;

    let mut s = Server::start(
        &[
            "--port",
            "0",
            "--drain-timeout",
            "10",
            "--idle-timeout",
            "600",
        ],
        &[("RUST_LOG", "info,tcp_echo::data=off")],
    );
    let c = s.connect();
    let input: Arc<Vec<u8>> = Arc::new(
        (0..8_000_000u32)
            .flat_map(|i| format!("{i:07}\n").into_bytes())
            .collect(),
    );
    let written = Arc::new(AtomicUsize::new(0));
    let reading = Arc::new(AtomicBool::new(true));

    // The client streams its input the whole time, also during the drain.
    let writer = {
        let (mut w, input, written) = (
            c.try_clone().unwrap(),
            Arc::clone(&input),
            Arc::clone(&written),
        );
        std::thread::spawn(move || {
            w.set_write_timeout(Some(Duration::from_millis(50)))
                .unwrap();
            let deadline = Instant::now() + Duration::from_secs(30);
            let mut off = 0;
            while off < input.len() && Instant::now() < deadline {
                match w.write(&input[off..(off + 65536).min(input.len())]) {
                    Ok(n) => {
                        off += n;
                        written.store(off, Ordering::SeqCst);
                    }
                    Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
                    Err(_) => break,
                }
            }
        })
    };
    // Phase 1: read at full speed, so that the socket buffers grow to their working size.
    // Phase 2 (`reading` false): stop reading; replies pile up in the server's socket.
    // Phase 3: after the signal, read slowly, so that replies are still queued when it closes.
    let reader = {
        let (mut r, reading) = (c.try_clone().unwrap(), Arc::clone(&reading));
        std::thread::spawn(move || {
            let mut got = Vec::new();
            let mut buf = vec![0u8; 1 << 16];
            let mut slow = false;
            loop {
                if !reading.load(Ordering::SeqCst) {
                    slow = true;
                    std::thread::sleep(Duration::from_millis(2));
                    continue;
                }
                let n = if slow {
                    std::thread::sleep(Duration::from_millis(1)); // the slow reader's pace
                    8192
                } else {
                    buf.len()
                };
                match std::io::Read::read(&mut r, &mut buf[..n]) {
                    Ok(0) => break,
                    Ok(n) => got.extend_from_slice(&buf[..n]),
                    // Input that arrived after the signal is not read; closing on it resets
                    // the connection, which is fine once every reply was acknowledged.
                    Err(e) if e.kind() == ErrorKind::ConnectionReset => break,
                    Err(e) => panic!("read: {e} after {} bytes", got.len()),
                }
            }
            got
        })
    };
    support::wait_until("10 MB streamed", DEADLINE, || {
        written.load(Ordering::SeqCst) > 10_000_000
    });
    reading.store(false, Ordering::SeqCst);
    // Wait until the client's writes stall: every buffer on the way is full.
    let mut last = (written.load(Ordering::SeqCst), Instant::now());
    support::wait_until("writes to stall", DEADLINE, || {
        let now = written.load(Ordering::SeqCst);
        if now != last.0 {
            last = (now, Instant::now());
        }
        last.1.elapsed() > Duration::from_millis(300)
    });
    s.signal(libc::SIGTERM);
    s.log.wait_for("stopped accepting", DEADLINE, |l| {
        l.contains("stopped accepting")
    });
    reading.store(true, Ordering::SeqCst);
    let got = reader.join().unwrap();
    writer.join().unwrap();
    assert_eq!(s.wait_exit(DEADLINE).code(), Some(0));
    assert!(
        input.starts_with(&got),
        "the echo is not the input's prefix"
    );
    // Count both ends: the client got every byte the server says it read.
    let closed = s
        .log
        .wait_for("close", DEADLINE, |l| l.contains("TCP connection closed."));
    assert!(closed.contains("reason=shutdown"), "{closed}");
    let echoed: usize = field(&closed, "bytes=").parse().unwrap();
    assert_eq!(
        got.len(),
        echoed,
        "server read {echoed} bytes, client got {}\nlog:\n{}",
        got.len(),
        s.log.lines().join("\n")
    );
}

#[test]
fn connections_waiting_in_the_accept_queue_at_the_signal_are_served_not_reset() {
    let mut s = Server::with(&["--prefix", "q", "--drain-timeout", "5"]);
    // Frozen, the server accepts nothing: the kernel completes the handshakes and queues
    // them, with each client's line in its receive queue.
    s.signal(libc::SIGSTOP);
    let mut clients: Vec<(TcpStream, String)> = (0..40)
        .map(|i| {
            let mut c = s.connect();
            let line = format!("queued {i}\n");
            c.write_all(line.as_bytes()).unwrap();
            (c, line)
        })
        .collect();
    s.signal(libc::SIGTERM);
    s.signal(libc::SIGCONT);
    for (c, line) in clients.iter_mut() {
        let mut got = Vec::new();
        let result = std::io::Read::read_to_end(c, &mut got);
        assert!(
            result.is_ok(),
            "{line:?}: {result:?} after {:?}\nlog:\n{}",
            String::from_utf8_lossy(&got),
            s.log.lines().join("\n")
        );
        assert_eq!(String::from_utf8_lossy(&got), format!("q {line}"));
    }
    assert_eq!(s.wait_exit(DEADLINE).code(), Some(0));
    let stopped = s.log.wait_for("stopped accepting", DEADLINE, |l| {
        l.contains("stopped accepting")
    });
    let served = s.log.matching("TCP connection open.").len();
    assert_eq!(served, 40, "{stopped}");
}

#[test]
fn sighup_drains_and_exits_like_sigterm() {
    // ctrlc (built with `termination`) routes SIGHUP to the same handler: closing the terminal
    // of `make run` stops the server gracefully.
    let mut s = Server::with(&["--prefix", "one"]);
    let mut c = s.connect();
    c.write_all(b"before\npartial").unwrap();
    assert_eq!(read_exactly(&mut c, 11 + 11), b"one before\none partial");
    s.signal(libc::SIGHUP);
    assert_eq!(read_to_eof(&mut c), b"");
    assert_eq!(s.wait_exit(DEADLINE).code(), Some(0));
    let closed = s
        .log
        .wait_for("close", DEADLINE, |l| l.contains("TCP connection closed."));
    assert!(closed.contains("reason=shutdown"), "{closed}");
    assert!(!s.log.matching("tcp-echo stopped").is_empty());
}

#[test]
fn a_client_that_resets_during_the_drain_ends_its_wait_at_once() {
    let mut s = Server::with(&["--drain-timeout", "10", "--idle-timeout", "600"]);
    // A tiny receive window and no reading: most replies stay unacknowledged in the server's
    // send queue, while the worker, done writing, waits for more input.
    let sock = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
    sock.set_recv_buffer_size(2048).unwrap();
    sock.connect_timeout(&s.addrs[0].into(), DEADLINE).unwrap();
    let mut c: TcpStream = sock.into();
    let mut lines: Vec<u8> = "x".repeat(63).into_bytes();
    lines.push(b'\n');
    c.write_all(&lines.repeat(500)).unwrap();
    c.write_all(b"END\n").unwrap();
    s.log.wait_for("the last line read", DEADLINE, |l| {
        l.ends_with("converted to string): END")
    });
    s.signal(libc::SIGTERM);
    s.log.wait_for("stopped accepting", DEADLINE, |l| {
        l.contains("stopped accepting")
    });
    // Killed with its replies unread: a reset.
    socket2::SockRef::from(&c)
        .set_linger(Some(Duration::ZERO))
        .unwrap();
    let reset = Instant::now();
    drop(c);
    assert_eq!(s.wait_exit(DEADLINE).code(), Some(0));
    let took = reset.elapsed();
    assert!(
        took < Duration::from_secs(2),
        "exit {took:?} after the reset"
    );
    let closed = s
        .log
        .wait_for("close", DEADLINE, |l| l.contains("TCP connection closed."));
    assert!(closed.contains("reason=reset by peer"), "{closed}");
    let summary = s
        .log
        .wait_for("summary", DEADLINE, |l| l.contains("tcp-echo stopped"));
    assert!(
        summary.contains("closed by force at the drain deadline=0"),
        "{summary}"
    );
}
