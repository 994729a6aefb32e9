//! Capacity and timeouts (behaviours 5 and 6), against the binary.

mod support;

use std::io::{ErrorKind, Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use support::{read_exactly, read_to_eof, wait_until, Server, DEADLINE};

fn served(c: &mut TcpStream, line: &str) {
    c.write_all(line.as_bytes()).unwrap();
    assert_eq!(read_exactly(c, line.len()), line.as_bytes());
}

/// A new connection on which `line` is echoed, once the server has a free slot. A slot is
/// released just after the connection's close record is written (the record comes first, so
/// that a drained server has logged every close), so a client that has read the record can be
/// a few microseconds early: it is told busy, and tries again. Panics if no slot frees.
fn served_when_free(s: &Server, line: &str) -> TcpStream {
    const BUSY: &str = "ERROR: server busy";
    let deadline = Instant::now() + DEADLINE;
    loop {
        let mut c = s.connect();
        let _ = c.write_all(line.as_bytes());
        let mut got = Vec::new();
        let _ = (&mut c).take(line.len() as u64).read_to_end(&mut got);
        if got == line.as_bytes() {
            return c;
        }
        // Told busy: the message, or as much of it as came before the reset of `line`.
        let _ = c.read_to_end(&mut got);
        let got = String::from_utf8_lossy(&got);
        assert!(
            got.starts_with(BUSY) || BUSY.starts_with(&*got),
            "neither the echo nor busy: {got:?}"
        );
        assert!(Instant::now() < deadline, "no slot was freed");
        std::thread::sleep(Duration::from_millis(5));
    }
}

#[test]
fn one_connection_over_capacity_is_told_busy_and_the_others_are_unaffected() {
    let s = Server::with(&["--max-connections", "2"]);
    let mut a = s.connect();
    let mut b = s.connect();
    served(&mut a, "a\n");
    served(&mut b, "b\n");

    let mut c = s.connect();
    let reply = String::from_utf8(read_to_eof(&mut c)).unwrap();
    assert_eq!(reply.lines().count(), 1, "{reply:?}");
    assert!(
        reply.contains("busy") && reply.contains("2 connections"),
        "{reply:?}"
    );
    let warn = s
        .log
        .wait_for("busy warning", DEADLINE, |l| l.contains("server busy"));
    assert!(warn.contains(" WARN "), "{warn}");

    served(&mut a, "still a\n");
    served(&mut b, "still b\n");

    // A freed slot is usable again.
    drop(a);
    s.log.wait_count("TCP connection closed.", 1, DEADLINE);
    let mut d = served_when_free(&s, "d\n");
    served(&mut d, "still d\n");
}

#[test]
fn a_full_server_answers_each_newcomer_busy_at_once() {
    let s = Server::with(&["--max-connections", "3"]);
    let mut held: Vec<TcpStream> = (0..3).map(|_| s.connect()).collect();
    for (i, c) in held.iter_mut().enumerate() {
        served(c, &format!("{i}\n"));
    }
    // The holders never send again: every slot is taken. Each newcomer is told busy without
    // waiting for a slot (the acceptor never waits for a worker).
    let mut slowest = Duration::ZERO;
    for _ in 0..100 {
        let start = Instant::now();
        let mut c = s.connect();
        let reply = read_to_eof(&mut c);
        slowest = slowest.max(start.elapsed());
        assert!(String::from_utf8_lossy(&reply).contains("busy"));
    }
    assert!(
        slowest < Duration::from_millis(500),
        "a busy answer took {slowest:?}"
    );
    for (i, c) in held.iter_mut().enumerate() {
        served(c, &format!("again {i}\n"));
    }
}

#[test]
fn busy_line_arrives_even_when_the_client_already_sent_data() {
    let s = Server::with(&["--max-connections", "1"]);
    let mut a = s.connect();
    served(&mut a, "a\n");
    for _ in 0..20 {
        let mut c = s.connect();
        // The refused client speaks first: closing must not turn into a reset that eats the
        // busy line.
        let _ = c.write_all(b"hello there\n");
        let mut reply = Vec::new();
        let _ = c.read_to_end(&mut reply);
        assert!(
            String::from_utf8_lossy(&reply).contains("busy"),
            "{reply:?}"
        );
    }
}

#[test]
fn a_silent_connection_is_closed_after_the_idle_timeout() {
    let s = Server::with(&["--idle-timeout", "0.3"]);
    let mut c = s.connect();
    served(&mut c, "x\n");
    let start = Instant::now();
    assert_eq!(read_to_eof(&mut c), b"");
    assert!(
        start.elapsed() >= Duration::from_millis(250),
        "closed too early: {:?}",
        start.elapsed()
    );
    let line = s
        .log
        .wait_for("close", DEADLINE, |l| l.contains("TCP connection closed."));
    assert!(line.contains("reason=idle timeout"), "{line}");
}

#[test]
fn activity_keeps_a_connection_open_past_the_idle_timeout() {
    let s = Server::with(&["--idle-timeout", "0.5"]);
    let mut c = s.connect();
    let start = Instant::now();
    let mut i = 0;
    while start.elapsed() < Duration::from_millis(1500) {
        served(&mut c, &format!("{i}\n"));
        i += 1;
        std::thread::sleep(Duration::from_millis(100)); // the client's pace, not a synchronisation
    }
    served(&mut c, "still here\n");
}

#[test]
fn idle_timeout_zero_means_never() {
    // Side by side: a short timeout ends its silent client; 0 runs no watch at all.
    let short = Server::with(&["--idle-timeout", "0.3"]);
    let never = Server::with(&["--idle-timeout", "0"]);
    let settings = never
        .log
        .wait_for("settings", DEADLINE, |l| l.contains("settings:"));
    assert!(settings.contains("idle_timeout=never"), "{settings}");
    let mut a = short.connect();
    let mut b = never.connect();
    served(&mut a, "x\n");
    served(&mut b, "x\n");
    short.log.wait_for("the short timeout", DEADLINE, |l| {
        l.contains("reason=idle timeout")
    });
    // Ten times the short timeout later, the silent client of the other is still served.
    support::assert_silent(&mut b, Duration::from_secs(3));
    served(&mut b, "y\n");
    assert!(never.log.matching("TCP connection closed.").is_empty());
}

#[test]
fn the_upkeep_has_no_thread_of_its_own() {
    // The watch over the time limits and the logging of refusals are done by the main thread
    // while it waits for the shutdown request: idle, the server runs the main thread, the
    // signal handler's, an acceptor per port and the worker that waits for the first
    // connection, nothing else.
    let s = Server::with(&["--idle-timeout", "0.3", "--max-connections", "1"]);
    s.log
        .wait_for("settings", DEADLINE, |l| l.contains("settings:"));
    let mut names: Vec<String> = std::fs::read_dir(format!("/proc/{}/task", s.pid()))
        .unwrap()
        .filter_map(|t| std::fs::read_to_string(t.ok()?.path().join("comm")).ok())
        .map(|n| n.trim().to_string())
        .collect();
    names.sort();
    assert_eq!(
        names,
        ["ctrl-c", "tcp-echo", "tcp-echo-accept", "tcp-echo-worker"]
    );
    // And both are done: a silent client is ended, a refusal is logged.
    let mut quiet = s.connect();
    served(&mut quiet, "q\n");
    let mut refused = s.connect();
    let reply = String::from_utf8(read_to_eof(&mut refused)).unwrap();
    assert!(reply.contains("busy"), "{reply:?}");
    s.log
        .wait_for("busy warning", DEADLINE, |l| l.contains("server busy"));
    s.log.wait_for("the idle timeout", DEADLINE, |l| {
        l.contains("reason=idle timeout")
    });
}

#[test]
fn a_client_that_never_reads_is_disconnected_and_others_are_served() {
    let s = Server::with(&["--idle-timeout", "1"]);
    let mut stuck = s.connect();
    stuck
        .set_write_timeout(Some(Duration::from_millis(200)))
        .unwrap();
    // Fill both directions' buffers: the server blocks writing replies nobody reads.
    let chunk = vec![b'z'; 64 * 1024];
    let mut chunk_line = chunk.clone();
    chunk_line.push(b'\n');
    let deadline = Instant::now() + DEADLINE;
    loop {
        match stuck.write(&chunk_line) {
            Ok(_) => {}
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => break,
            Err(e) => panic!("the server dropped the client before its buffers filled: {e}"),
        }
        assert!(Instant::now() < deadline, "the server kept reading forever");
    }
    let stalled = Instant::now();
    // Meanwhile another client is served at once.
    let mut other = s.connect();
    served(&mut other, "hello\n");
    let line = s.log.wait_for("write timeout close", DEADLINE, |l| {
        l.contains("reason=write timeout")
    });
    assert!(line.contains("TCP connection closed."), "{line}");
    // Not at once (the server's write blocked at most 200 ms before the client noticed, and
    // times out after 1 s), and soon after the timeout.
    let took = stalled.elapsed();
    assert!(
        took >= Duration::from_millis(500) && took < Duration::from_secs(4),
        "closed {took:?} after the client stalled"
    );
    let mut later = s.connect();
    served(&mut later, "still served\n");
}

#[test]
fn slots_freed_by_timeouts_are_reused() {
    let s = Server::with(&["--max-connections", "2", "--idle-timeout", "0.3"]);
    let _a = s.connect();
    let _b = s.connect();
    s.log.wait_count("TCP connection open.", 2, DEADLINE);
    s.log.wait_count("reason=idle timeout", 2, DEADLINE);
    let mut c = served_when_free(&s, "after\n");
    served(&mut c, "still after\n");
    wait_until("two closes logged", DEADLINE, || {
        s.log.matching("TCP connection closed.").len() == 2
    });
}

#[test]
fn out_of_file_descriptors_the_acceptor_backs_off_and_recovers() {
    let s = Server::spawn(support::command_with_fd_limit(
        &["--port", "0", "--banner", "off", "--idle-timeout", "60"],
        &[("RUST_LOG", "info,tcp_echo::data=off")],
        24,
    ));
    // More clients than descriptors: the kernel completes their handshakes, the server cannot
    // accept them all (EMFILE).
    let mut clients: Vec<TcpStream> = (0..60).map(|_| s.connect()).collect();
    s.log.wait_for("accept failure logged", DEADLINE, |l| {
        l.contains("accept failed")
    });
    let served_now = s.log.matching("TCP connection open.").len();
    assert!(served_now < 60, "the limit was not hit");
    // While the limit holds, the acceptor sleeps between attempts instead of spinning.
    let before = support::cpu_time(s.pid());
    std::thread::sleep(Duration::from_secs(1)); // the measurement window
    let used = support::cpu_time(s.pid()) - before;
    assert!(
        used < Duration::from_millis(150),
        "{used:?} of CPU in 1 s while out of descriptors"
    );
    // At most one warning a second, not one per attempt.
    assert!(
        s.log.matching("accept failed").len() <= 4,
        "{:#?}",
        s.log.matching("accept failed")
    );
    // Clients that were served leave; everybody else is served now.
    for c in clients.iter_mut() {
        c.write_all(b"ping\n").unwrap();
    }
    // The listen queue is FIFO: the first clients are the ones accepted.
    for c in clients[..served_now].iter_mut() {
        assert_eq!(read_exactly(c, 5), b"ping\n");
    }
    clients.drain(..served_now);
    // Each served client leaves in turn, making room for the next.
    for mut c in clients.drain(..) {
        assert_eq!(read_exactly(&mut c, 5), b"ping\n");
    }
}

#[test]
fn a_low_soft_descriptor_limit_is_raised_and_a_thousand_clients_are_served() {
    let hard = support::raise_fd_limit();
    assert!(
        hard >= 4096 + 1100,
        "the test needs a hard limit of 5,200 (have {hard})"
    );
    // As containerd 2.x starts containers: a low soft limit under a high hard one.
    let s = Server::spawn(support::command_with_fd_limits(
        &["--port", "0", "--banner", "off"],
        &[("RUST_LOG", "info,tcp_echo::data=off")],
        256,
        4096,
    ));
    s.log.wait_for("raised", DEADLINE, |l| {
        l.contains("open-file limit raised from 256 to 4096")
    });
    assert_eq!(support::soft_fd_limit(s.pid()), 4096);
    assert!(
        s.log.matching("below what").is_empty(),
        "no warning expected"
    );
    let mut clients: Vec<TcpStream> = (0..1000).map(|_| s.connect()).collect();
    for (i, c) in clients.iter_mut().enumerate() {
        c.write_all(format!("{i}\n").as_bytes()).unwrap();
    }
    // All 1,000 open at once, every one answered.
    for (i, c) in clients.iter_mut().enumerate() {
        let line = format!("{i}\n");
        assert_eq!(read_exactly(c, line.len()), line.as_bytes());
    }
    // Each open record was written before its echo; the log reader may still be behind.
    let opened = s.log.wait_count("TCP connection open.", 1000, DEADLINE);
    assert_eq!(opened.len(), 1000);
    assert!(s.log.matching("accept failed").is_empty());
}

#[test]
fn a_hard_descriptor_limit_too_low_is_named_at_start() {
    let s = Server::spawn(support::command_with_fd_limits(
        &["--port", "0", "--max-connections", "1024"],
        &[],
        256,
        512,
    ));
    let warning = s
        .log
        .wait_for("warning", DEADLINE, |l| l.contains("open-file limit (512)"));
    assert!(
        warning.contains(" WARN ") && warning.contains("--max-connections 1024"),
        "{warning}"
    );
    // Said once, and the server still serves.
    assert_eq!(s.log.matching("open-file limit (512)").len(), 1);
    let mut c = s.connect();
    served(&mut c, "still\n");
}

#[test]
fn max_duration_ends_a_slow_client_after_echoing_all_it_sent() {
    let s = Server::with(&[
        "--max-duration",
        "1",
        "--idle-timeout",
        "0.5",
        "--prefix",
        "one",
    ]);
    let mut c = s.connect();
    let mut w = c.try_clone().unwrap();
    let start = Instant::now();
    // A byte every 100 ms: well inside the idle timeout, so only the maximum duration can end
    // it. The client's pace, not a synchronisation.
    let writer = std::thread::spawn(move || {
        let mut sent = Vec::new();
        while start.elapsed() < Duration::from_secs(5) && w.write_all(b"s").is_ok() {
            sent.push(b's');
            std::thread::sleep(Duration::from_millis(100));
        }
        sent
    });
    let got = read_to_eof(&mut c);
    let ended = start.elapsed();
    drop(c);
    writer.join().unwrap();
    let closed = s
        .log
        .wait_for("close", DEADLINE, |l| l.contains("TCP connection closed."));
    assert!(closed.contains("reason=max duration"), "{closed}");
    // Ended at the limit, at most a tick (100 ms) and scheduling later.
    assert!(
        ended >= Duration::from_secs(1) && ended < Duration::from_millis(1600),
        "ended after {ended:?}"
    );
    // Every byte the server read came back.
    let read: usize = support::field(&closed, "bytes=").parse().unwrap();
    assert!(read >= 8, "{closed}");
    let mut want = b"one ".to_vec();
    want.extend(std::iter::repeat_n(b's', read));
    assert_eq!(
        String::from_utf8_lossy(&got),
        String::from_utf8_lossy(&want)
    );
}

#[test]
fn max_duration_ends_a_streaming_client_without_losing_replies() {
    let s = Server::with(&["--max-duration", "0.5"]);
    let mut c = s.connect();
    let mut w = c.try_clone().unwrap();
    let writer = std::thread::spawn(move || {
        let block = "stream line of some length\n".repeat(1000);
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline && w.write_all(block.as_bytes()).is_ok() {}
    });
    let mut got = Vec::new();
    let result = c.read_to_end(&mut got);
    assert!(result.is_ok(), "{result:?} after {} bytes", got.len());
    writer.join().unwrap();
    let closed = s
        .log
        .wait_for("close", DEADLINE, |l| l.contains("TCP connection closed."));
    assert!(closed.contains("reason=max duration"), "{closed}");
    let read: usize = support::field(&closed, "bytes=").parse().unwrap();
    assert_eq!(got.len(), read, "the client got every byte the server read");
}

#[test]
fn max_duration_closes_a_slow_reader_within_the_drain_timeout() {
    // A client that reads a little every 300 ms: every write of the server's makes some
    // progress, so neither the idle timeout nor the write timeout ever fires. The maximum
    // duration must still end it: what it sent is echoed for at most --drain-timeout, then
    // the connection closes.
    let s = Server::with(&[
        "--max-duration",
        "2",
        "--drain-timeout",
        "1",
        "--idle-timeout",
        "600",
        "--socket-buffer",
        "4096",
    ]);
    let mut c = s.connect();
    let opened = Instant::now();
    c.set_write_timeout(Some(Duration::from_millis(200)))
        .unwrap();
    let block = vec![b'w'; 64 * 1024];
    loop {
        match c.write(&block) {
            Ok(_) => assert!(opened.elapsed() < DEADLINE, "buffers never filled"),
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => break,
            Err(e) => panic!("write: {e}"),
        }
    }
    c.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
    let mut buf = vec![0u8; 512];
    while opened.elapsed() < Duration::from_millis(4500) {
        std::thread::sleep(Duration::from_millis(300)); // the slow reader's pace
        match c.read(&mut buf) {
            Ok(n) if n > 0 => {}
            other => panic!("{other:?} while replies were still due"),
        }
    }
    // What the client's own receive buffer holds still comes, then the end.
    buf.resize(1 << 16, 0);
    loop {
        match c.read(&mut buf) {
            Ok(0) => break,
            Ok(_) => {}
            Err(e) if e.kind() == ErrorKind::ConnectionReset => break,
            Err(e) => panic!("the connection was not closed: {e}"),
        }
    }
    let closed = s
        .log
        .wait_for("close", DEADLINE, |l| l.contains("TCP connection closed."));
    assert!(closed.contains("reason=max duration"), "{closed}");
    // 2 s of maximum duration, 1 s of drain, and a tick of the watch (0.2 s).
    let held: f64 = support::field(&closed, "duration=")
        .trim_end_matches('s')
        .parse()
        .unwrap();
    assert!(held < 3.5, "the slow reader held its slot {held} s");
}

#[test]
fn the_acceptor_answers_busy_while_the_log_is_blocked() {
    // stderr is a pipe nobody reads once the server has started: when it fills, every log
    // record blocks its writer. Refusals must not be written by the acceptor, or one
    // refusal would stop all accepting.
    let mut child = support::command(
        &["--port", "0", "--max-connections", "1", "--banner", "off"],
        &[],
    )
    .stdin(std::process::Stdio::null())
    .stdout(std::process::Stdio::null())
    .stderr(std::process::Stdio::piped())
    .spawn()
    .expect("start tcp-echo");
    let mut stderr = std::io::BufReader::new(child.stderr.take().unwrap());
    let mut port = None;
    loop {
        let mut line = String::new();
        assert!(
            std::io::BufRead::read_line(&mut stderr, &mut line).unwrap() > 0,
            "exited"
        );
        if let Some(a) = line
            .trim()
            .rsplit("listening on ")
            .next()
            .filter(|_| line.contains("listening on "))
        {
            port = a.rsplit(':').next().and_then(|p| p.parse::<u16>().ok());
        }
        if line.contains("settings:") {
            break;
        }
    }
    let addr = std::net::SocketAddr::from(([127, 0, 0, 1], port.expect("a listening line")));
    // Fill the pipe: 3,000 lines make 2,000 records of about 90 bytes, past its 64 KiB, and
    // the worker serving them blocks on the log with its connection (the only slot) open.
    let mut filler = support::connect(addr);
    let lines: Vec<u8> = (0..3000)
        .flat_map(|i| format!("{i}\n").into_bytes())
        .collect();
    filler.write_all(&lines).unwrap();
    std::thread::sleep(Duration::from_millis(300)); // let the worker reach its blocked write
                                                    // Every newcomer is told busy at once, although the log cannot take a single record.
    for i in 0..20 {
        let mut c = support::connect(addr);
        c.set_read_timeout(Some(Duration::from_secs(3))).unwrap();
        let mut got = Vec::new();
        let result = c.read_to_end(&mut got);
        assert!(
            String::from_utf8_lossy(&got).starts_with("ERROR: server busy"),
            "newcomer {i}: {result:?} {:?}",
            String::from_utf8_lossy(&got)
        );
    }
    let _ = child.kill();
    let _ = child.wait();
}
