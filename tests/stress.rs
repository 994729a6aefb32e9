//! The reliability suite (`make stress`): attacks on the real, release-built binary. Every case
//! asserts its outcome and records the load, the limits seen and the outcome in
//! `target/stress/*.json`, from which `make stress` renders RELIABILITY.md.
//!
//! Loads go to loopback only and every loop is bounded in count and time.

mod support;

use std::collections::HashMap;
use std::io::{ErrorKind, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use support::{connect, field, read_exactly, Monitor, Sample, Server, Usage, DEADLINE};

const QUIET: (&str, &str) = ("RUST_LOG", "info,tcp_echo::data=off");
const SAMPLE_EVERY: Duration = Duration::from_millis(20);

/// Records a case for RELIABILITY.md.
fn record(order: u32, case: &str, load: &str, usage: &Usage, outcome: &str) {
    let row = serde_json::json!({
        "order": order,
        "case": case,
        "load": load,
        "peak_rss_kb": usage.peak_rss_kb(),
        "peak_threads": usage.peak_threads(),
        "peak_fds": usage.peak_fds(),
        "cpu_s": usage.cpu.as_secs_f64(),
        "outcome": outcome,
    });
    let path = support::results_dir().join(format!("{order:02}.json"));
    std::fs::write(path, serde_json::to_string_pretty(&row).unwrap()).expect("write result");
    println!("{case}: {outcome}");
}

/// Threads the server may have: workers up to `max_connections`, plus main, one acceptor per
/// port and the signal handler.
fn thread_bound(max_connections: usize, ports: usize) -> usize {
    max_connections + ports + 2
}

/// xorshift64*: a reproducible byte stream.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    fn fill(&mut self, buf: &mut [u8]) {
        for chunk in buf.chunks_mut(8) {
            let v = self.next().to_le_bytes();
            chunk.copy_from_slice(&v[..chunk.len()]);
        }
    }
}

#[test]
fn s1_flood_beyond_capacity() {
    support::raise_fd_limit();
    let max = 50;
    let s = Server::start(
        &["--port", "0", "--max-connections", "50", "--banner", "off"],
        &[QUIET],
    );
    let addr = s.addrs[0];
    let monitor = Monitor::start(s.pid(), SAMPLE_EVERY);
    let (served, busy, failed) = (
        Arc::new(AtomicUsize::new(0)),
        Arc::new(AtomicUsize::new(0)),
        Arc::new(AtomicUsize::new(0)),
    );
    let start = Instant::now();
    let threads: Vec<_> = (0..16)
        .map(|t| {
            let (served, busy, failed) =
                (Arc::clone(&served), Arc::clone(&busy), Arc::clone(&failed));
            thread::spawn(move || {
                // Each thread keeps its last few served connections open, so that the server
                // stays full while new connects keep coming.
                let mut held: Vec<TcpStream> = Vec::new();
                for i in 0..125 {
                    let outcome = (|| -> std::io::Result<bool> {
                        let mut c = TcpStream::connect_timeout(&addr, DEADLINE)?;
                        c.set_read_timeout(Some(Duration::from_secs(10)))?;
                        let line = format!("flood {t} {i}\n");
                        let _ = c.write_all(line.as_bytes());
                        let mut got = Vec::new();
                        let mut byte = [0u8; 1];
                        while !got.ends_with(b"\n") {
                            match c.read(&mut byte)? {
                                0 => break,
                                _ => got.push(byte[0]),
                            }
                        }
                        if got == line.as_bytes() {
                            held.push(c);
                            if held.len() > 4 {
                                held.remove(0);
                            }
                            Ok(true)
                        } else if String::from_utf8_lossy(&got).contains("busy") {
                            Ok(false)
                        } else {
                            Err(std::io::Error::other(format!("unexpected reply {got:?}")))
                        }
                    })();
                    match outcome {
                        Ok(true) => served.fetch_add(1, Ordering::SeqCst),
                        Ok(false) => busy.fetch_add(1, Ordering::SeqCst),
                        Err(e) => {
                            eprintln!("flood client: {e}");
                            failed.fetch_add(1, Ordering::SeqCst)
                        }
                    };
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    let took = start.elapsed();
    let (served, busy, failed) = (
        served.load(Ordering::SeqCst),
        busy.load(Ordering::SeqCst),
        failed.load(Ordering::SeqCst),
    );
    // Afterwards: normal service, and the thread count within the pool's bound.
    assert_eq!(support::exchange(addr, b"after\n"), b"after\n");
    let usage = monitor.stop();
    let threads_after = s.threads();
    record(
        1,
        "A flood beyond capacity",
        "2,000 connects as fast as 16 client threads can, each sending a line; `--max-connections 50`",
        &usage,
        &format!(
            "{served} served + {busy} told busy + {failed} failed/hung in {:.1}s; threads after: {threads_after} (bound {})",
            took.as_secs_f64(),
            thread_bound(max, 1)
        ),
    );
    assert_eq!(failed, 0, "connections neither served nor told busy");
    assert_eq!(served + busy, 2000);
    assert!(served >= max && busy > 0, "served {served}, busy {busy}");
    assert!(
        usage.peak_threads() <= thread_bound(max, 1),
        "peak threads {}",
        usage.peak_threads()
    );
    assert!(threads_after <= thread_bound(max, 1));
}

#[test]
fn s2_slow_silent_and_non_reading_clients() {
    support::raise_fd_limit();
    let idle = Duration::from_secs(2);
    let max_duration = Duration::from_secs(6);
    let tick = Duration::from_millis(200); // a tenth of the idle timeout
    let s = Server::start(
        &[
            "--port",
            "0",
            "--idle-timeout",
            "2",
            "--max-duration",
            "6",
            "--banner",
            "off",
        ],
        &[QUIET],
    );
    let addr = s.addrs[0];
    let baseline = support::sample(s.pid(), Duration::ZERO);
    let monitor = Monitor::start(s.pid(), SAMPLE_EVERY);
    let stop = Arc::new(AtomicBool::new(false));

    // The well-behaved: one ping-pong every 20 ms on connections renewed within the maximum
    // duration, and a fresh one-shot connection every 100 ms.
    let worst = Arc::new(AtomicU64::new(0));
    let worst_fresh = Arc::new(AtomicU64::new(0));
    let probes = {
        let (stop, worst, worst_fresh) = (
            Arc::clone(&stop),
            Arc::clone(&worst),
            Arc::clone(&worst_fresh),
        );
        thread::spawn(move || {
            let mut c = connect(addr);
            let mut since = Instant::now();
            let mut n = 0u64;
            while !stop.load(Ordering::SeqCst) {
                if since.elapsed() > Duration::from_secs(4) {
                    c = connect(addr);
                    since = Instant::now();
                }
                let t = Instant::now();
                let line = format!("probe {n}\n");
                c.write_all(line.as_bytes()).unwrap();
                assert_eq!(read_exactly(&mut c, line.len()), line.as_bytes());
                worst.fetch_max(t.elapsed().as_micros() as u64, Ordering::SeqCst);
                if n.is_multiple_of(5) {
                    let t = Instant::now();
                    assert_eq!(support::exchange(addr, b"fresh\n"), b"fresh\n");
                    worst_fresh.fetch_max(t.elapsed().as_micros() as u64, Ordering::SeqCst);
                }
                n += 1;
                thread::sleep(Duration::from_millis(20)); // the probe's pace
            }
            n
        })
    };

    // 300 slow clients: a byte every 0.5 s, well inside the idle timeout, until half a second
    // before their maximum duration (so that no byte is in flight when the server ends them,
    // and each must come back); 200 silent ones; 100 that send and never read (a 4 KiB
    // receive window). Each slow client: its socket, when it connected, bytes sent, bytes
    // echoed, and whether it has ended.
    let last_byte = max_duration - Duration::from_millis(500);
    let mut slow: Vec<(TcpStream, Instant, usize, usize, bool)> = (0..300)
        .map(|_| {
            let connected = Instant::now();
            let c = connect(addr);
            c.set_nonblocking(true).unwrap();
            (c, connected, 0, 0, false)
        })
        .collect();
    let mut silent: Vec<(TcpStream, Instant, Option<Duration>)> = (0..200)
        .map(|_| {
            let c = connect(addr);
            c.set_nonblocking(true).unwrap();
            (c, Instant::now(), None)
        })
        .collect();
    let mut stuck: Vec<TcpStream> = (0..100)
        .map(|_| support::connect_small_window(addr, 4096))
        .collect();
    for c in stuck.iter_mut() {
        c.set_nonblocking(true).unwrap();
    }
    let chunk = vec![b'w'; 16 * 1024];
    let start = Instant::now();
    let mut next_byte = start;
    let deadline = start + Duration::from_secs(30);
    loop {
        let now = Instant::now();
        // The slow clients' echo, then their next byte (never after their end).
        for (c, _, _, echoed, ended) in slow.iter_mut().filter(|x| !x.4) {
            let mut buf = [0u8; 64];
            match c.read(&mut buf) {
                Ok(0) => *ended = true,
                Ok(n) => {
                    assert!(buf[..n].iter().all(|&b| b == b's'));
                    *echoed += n;
                }
                Err(e) if e.kind() == ErrorKind::WouldBlock => {}
                Err(e) => panic!("a slow client: {e}"),
            }
        }
        if now >= next_byte {
            let sending = slow
                .iter_mut()
                .filter(|x| !x.4 && x.1.elapsed() < last_byte);
            for (c, _, sent, _, _) in sending {
                c.write_all(b"s").unwrap();
                *sent += 1;
            }
            next_byte += Duration::from_millis(500);
        }
        // The silent ones: when did each see its end?
        for (c, since, ended) in silent.iter_mut().filter(|x| x.2.is_none()) {
            let mut b = [0u8; 1];
            if let Ok(0) = c.read(&mut b) {
                *ended = Some(since.elapsed());
            }
        }
        // The non-reading ones keep sending until the server stops reading them.
        for c in stuck.iter_mut() {
            for _ in 0..8 {
                if c.write(&chunk).is_err() {
                    break;
                }
            }
        }
        let reaped = silent.iter().filter(|x| x.2.is_some()).count();
        let stalled = s.log.matching("reason=write timeout").len();
        let expired = slow.iter().filter(|x| x.4).count();
        if reaped == 200 && stalled >= 100 && expired == 300 {
            break;
        }
        assert!(
            now < deadline,
            "{reaped} silent, {stalled} non-reading and {expired} slow clients ended"
        );
        thread::sleep(Duration::from_millis(10)); // the clients' pace
    }
    let all_done = start.elapsed();
    stop.store(true, Ordering::SeqCst);
    let pings = probes.join().expect("probe client failed");
    let usage = monitor.stop();
    let worst = Duration::from_micros(worst.load(Ordering::SeqCst));
    let worst_fresh = Duration::from_micros(worst_fresh.load(Ordering::SeqCst));
    // Slow clients: never taken for idle, every byte echoed, ended at the maximum duration.
    let idle_ends = s.log.matching("reason=idle timeout").len();
    let slow_sent: usize = slow.iter().map(|x| x.2).sum();
    let slow_echoed: usize = slow.iter().map(|x| x.3).sum();
    let silent_ends: Vec<Duration> = silent.iter().filter_map(|x| x.2).collect();
    let (earliest, latest) = (
        silent_ends.iter().min().copied().unwrap(),
        silent_ends.iter().max().copied().unwrap(),
    );
    drop((slow, silent, stuck));
    support::wait_until("descriptors released", DEADLINE, || {
        support::open_fds(s.pid()) <= baseline.fds + 2
    });
    let after = support::sample(s.pid(), Duration::ZERO);
    record(
        2,
        "Slow, silent and non-reading clients",
        "300 clients sending a byte every 0.5 s (until 0.5 s before their maximum duration), 200 silent ones, 100 sending without reading (4 KiB receive window); `--idle-timeout 2 --max-duration 6`; meanwhile a probe ping-pongs every 20 ms and opens a fresh connection every 100 ms",
        &usage,
        &format!(
            "slow clients: none taken for idle, {slow_echoed} of {slow_sent} bytes sent echoed, all ended at the maximum duration; silent clients closed {:.2}-{:.2} s after connecting (timeout 2 s, tick 0.2 s); 100 write timeouts; all done in {:.1} s; {pings} probe round trips, worst {:.1} ms; worst fresh connection {:.1} ms; fds {} -> {} after",
            earliest.as_secs_f64(),
            latest.as_secs_f64(),
            all_done.as_secs_f64(),
            worst.as_secs_f64() * 1000.0,
            worst_fresh.as_secs_f64() * 1000.0,
            baseline.fds,
            after.fds
        ),
    );
    assert_eq!(idle_ends, 200, "only the silent clients end idle");
    assert_eq!(
        slow_echoed, slow_sent,
        "every byte of the slow clients echoed"
    );
    // The server's close records, one per slow client. A client sees its EOF just before the
    // server writes the record: wait for the log to have them all.
    let slow_ends = s.log.wait_count("reason=max duration", 300, DEADLINE);
    // The server's own count agrees.
    let received: usize = slow_ends
        .iter()
        .map(|l| field(l, "bytes=").parse::<usize>().unwrap())
        .sum();
    assert_eq!(
        slow_echoed, received,
        "every byte the server received from the slow clients echoed"
    );
    assert!(
        earliest >= idle,
        "a silent client closed after {earliest:?}"
    );
    assert!(
        latest <= idle + tick + Duration::from_millis(300),
        "a silent client closed only after {latest:?}"
    );
    // The slow clients' ends, by the server's own clock (accept to close).
    for l in &slow_ends {
        let open: f64 = field(l, "duration=").trim_end_matches('s').parse().unwrap();
        let open = Duration::from_secs_f64(open);
        assert!(
            open >= max_duration && open <= max_duration + tick + Duration::from_millis(500),
            "{l}"
        );
    }
    assert_eq!(s.log.matching("reason=max duration").len(), 300);
    assert!(
        worst < Duration::from_millis(500),
        "a well-behaved client stalled for {worst:?}"
    );
}

#[test]
fn s3_giant_line() {
    const TOTAL: usize = 200 * 1000 * 1000;
    let s = Server::start(
        &["--port", "0", "--prefix", "p", "--banner", "off"],
        &[QUIET],
    );
    let idle = support::sample(s.pid(), Duration::ZERO);
    let monitor = Monitor::start(s.pid(), Duration::from_millis(10));
    let mut c = connect(s.addrs[0]);
    let mut w = c.try_clone().unwrap();
    let start = Instant::now();
    let writer = thread::spawn(move || {
        let mut rng = Rng(42);
        let mut buf = vec![0u8; 1 << 16];
        let mut sent = 0;
        while sent < TOTAL {
            let n = buf.len().min(TOTAL - sent);
            rng.fill(&mut buf[..n]);
            for b in &mut buf[..n] {
                if *b == b'\n' {
                    *b = b'N';
                }
            }
            w.write_all(&buf[..n]).unwrap();
            sent += n;
        }
        w.shutdown(Shutdown::Write).unwrap();
    });
    assert_eq!(read_exactly(&mut c, 2), b"p ", "the prefix, once");
    let mut rng = Rng(42);
    let mut want = vec![0u8; 1 << 16];
    let mut got = vec![0u8; 1 << 16];
    let mut checked = 0;
    while checked < TOTAL {
        let n = want.len().min(TOTAL - checked);
        rng.fill(&mut want[..n]);
        for b in &mut want[..n] {
            if *b == b'\n' {
                *b = b'N';
            }
        }
        c.read_exact(&mut got[..n])
            .unwrap_or_else(|e| panic!("read after {checked} bytes: {e}"));
        assert!(got[..n] == want[..n], "bytes differ after offset {checked}");
        checked += n;
    }
    assert_eq!(c.read(&mut got).unwrap(), 0, "nothing after the line");
    writer.join().unwrap();
    let took = start.elapsed();
    let usage = monitor.stop();
    let growth_kb = usage.peak_rss_kb().saturating_sub(idle.rss_kb);
    record(
        3,
        "A giant line",
        "200 MB without a newline on one connection (prefix `p`)",
        &usage,
        &format!(
            "every byte back in order, prefix once, in {:.1}s ({:.0} MB/s); RSS {} kB idle, peak {} kB (+{} kB; bound +4096 kB)",
            took.as_secs_f64(),
            TOTAL as f64 / 1e6 / took.as_secs_f64(),
            idle.rss_kb,
            usage.peak_rss_kb(),
            growth_kb
        ),
    );
    assert!(growth_kb < 4096, "RSS grew {growth_kb} kB over idle");
}

#[test]
fn s4_binary_noise() {
    let s = Server::start(&["--port", "0", "--prefix", "n", "--banner", "off"], &[]);
    let monitor = Monitor::start(s.pid(), SAMPLE_EVERY);
    let mut rng = Rng(7);
    // The forged line and the escapes first, so that they fall within the log budget.
    let mut input = b"x\r2026-01-01T00:00:00.000Z INFO  forged - TCP connection closed.\n".to_vec();
    input.extend_from_slice(b"\0\0\r\r\n\xff\xfe\xc3\x28 lone\rcr\n\x1b[2J\x1b[31mred\n");
    let mut noise = vec![0u8; 200_000];
    rng.fill(&mut noise);
    input.extend_from_slice(&noise);
    input.extend(std::iter::repeat_n(b'\n', 10_000));
    input.extend_from_slice(b"tail without newline \x00\x01\x02");
    let expected = support::expected_echo(&input, Some("n"));
    let got = support::exchange(s.addrs[0], &input);
    assert!(
        got == expected,
        "echo differs ({} vs {} bytes)",
        got.len(),
        expected.len()
    );
    s.log
        .wait_for("close", DEADLINE, |l| l.contains("TCP connection closed."));
    let usage = monitor.stop();
    let lines = s.log.lines();
    let records = lines.len();
    let stamp = |l: &str| {
        l.len() > 25
            && l.as_bytes()[4] == b'-'
            && l.as_bytes()[10] == b'T'
            && l[..24].ends_with('Z')
    };
    let bad: Vec<&String> = lines
        .iter()
        .filter(|l| !stamp(l) || l.chars().any(|c| c.is_control()))
        .collect();
    let forged: Vec<&String> = lines.iter().filter(|l| l.contains("forged")).collect();
    let input_lines = input.split_inclusive(|&b| b == b'\n').count();
    let text_records = s.log.matching("Received Data (converted to string)").len();
    let closed = s.log.matching("TCP connection closed. reason=");
    let unlogged: usize = field(&closed[0], "unlogged=").parse().unwrap();
    record(
        4,
        "Binary noise",
        "A forged log line, NUL, lone `\\r`, invalid UTF-8, terminal escapes, 200 kB of random bytes and 10,000 empty lines on one connection",
        &usage,
        &format!(
            "echoed exactly ({} bytes); {records} log lines, every one a whole record with no raw control character; the forged line stays inside 1 escaped record; {text_records} text records and {unlogged} pieces counted unlogged for {input_lines} lines (log budget: 1,000 pieces)",
            got.len()
        ),
    );
    assert!(
        bad.is_empty(),
        "log lines that are not clean records: {:?}",
        &bad[..bad.len().min(5)]
    );
    // Only the text record shows the words (the raw record is numbers), escaped, in one line.
    assert_eq!(forged.len(), 1, "forged text: {forged:#?}");
    assert!(
        forged[0].contains("Received Data (converted to string): x\\r2026-01-01"),
        "{}",
        forged[0]
    );
    // The budget: at most 1,000 pieces logged, every other one counted.
    assert!(text_records <= 1000, "{text_records} text records");
    assert!(
        text_records + unlogged >= input_lines,
        "{text_records} logged + {unlogged} unlogged for {input_lines} lines"
    );
}

#[test]
fn s5_file_descriptors_run_out() {
    support::raise_fd_limit();
    let s = Server::spawn(support::command_with_fd_limit(
        &["--port", "0", "--banner", "off"],
        &[QUIET],
        64,
    ));
    let addr = s.addrs[0];
    let inherited = std::fs::read_dir(format!("/proc/{}/fd", s.pid()))
        .unwrap()
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter(|&fd| fd >= 64)
        .count();
    let monitor = Monitor::start(s.pid(), SAMPLE_EVERY);
    let mut clients: Vec<TcpStream> = (0..300).map(|_| connect(addr)).collect();
    for c in clients.iter_mut() {
        c.write_all(b"fd\n").unwrap();
    }
    s.log
        .wait_for("accept failure", DEADLINE, |l| l.contains("accept failed"));
    let accepted = s.log.matching("TCP connection open.").len();
    // At the limit for 2 s: how much CPU does the server burn?
    let before = support::cpu_time(s.pid());
    thread::sleep(Duration::from_secs(2)); // the measurement window
    let at_limit = support::cpu_time(s.pid()) - before;
    // Clients leave one by one; every one of the 300 is served in turn.
    let start = Instant::now();
    for mut c in clients.drain(..) {
        assert_eq!(read_exactly(&mut c, 3), b"fd\n");
    }
    let recovered = start.elapsed();
    assert_eq!(support::exchange(addr, b"after\n"), b"after\n");
    let usage = monitor.stop();
    let warnings = s.log.matching("accept failed").len();
    record(
        5,
        "File descriptors run out",
        "`ulimit -n 64`, 300 clients connected at once, each waiting for its echo",
        &usage,
        &format!(
            "{accepted} accepted at first; CPU while at the limit: {:.0} ms over 2 s; {warnings} warnings logged; all 300 served as others left, in {:.1}s; no crash",
            at_limit.as_secs_f64() * 1000.0,
            recovered.as_secs_f64()
        ),
    );
    assert!(accepted < 300, "the limit was not reached");
    assert!(
        at_limit < Duration::from_millis(200),
        "{at_limit:?} of CPU in 2 s at the limit"
    );
    // Descriptors inherited from whatever started the test may sit above the limit.
    assert!(
        usage.peak_fds() <= 64 + inherited,
        "peak fds {}",
        usage.peak_fds()
    );
}

#[test]
fn s6_shutdown_under_load() {
    support::raise_fd_limit();
    let mut s = Server::start(
        &["--port", "0", "--banner", "off", "--drain-timeout", "5"],
        &[QUIET],
    );
    let addr = s.addrs[0];
    let monitor = Monitor::start(s.pid(), SAMPLE_EVERY);
    let stop = Arc::new(AtomicBool::new(false));
    let mut clients = Vec::new();
    for i in 0..50 {
        let c = connect(addr);
        let port = c.local_addr().unwrap().port();
        let mut w = c.try_clone().unwrap();
        let stop_w = Arc::clone(&stop);
        let writer = thread::spawn(move || {
            let line = format!("stream {i:02} {}\n", "x".repeat(100));
            let block = line.repeat(64);
            w.set_write_timeout(Some(Duration::from_millis(100)))
                .unwrap();
            let deadline = Instant::now() + Duration::from_secs(20);
            while Instant::now() < deadline {
                match w.write(block.as_bytes()) {
                    Ok(_) => {}
                    Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
                        if stop_w.load(Ordering::SeqCst) {
                            break;
                        }
                    }
                    Err(_) => break,
                }
            }
        });
        let mut r = c;
        let reader = thread::spawn(move || {
            let mut total = 0usize;
            let mut buf = vec![0u8; 1 << 16];
            loop {
                match r.read(&mut buf) {
                    Ok(0) => break,
                    Ok(n) => total += n,
                    Err(e) if e.kind() == ErrorKind::ConnectionReset => break,
                    Err(e) => panic!("client {i}: {e} after {total} bytes"),
                }
            }
            total
        });
        clients.push((port, writer, reader));
    }
    s.log.wait_count("TCP connection open.", 50, DEADLINE);
    thread::sleep(Duration::from_millis(500)); // let the streams run
    let start = Instant::now();
    s.signal(libc::SIGTERM);
    let status = s.wait_exit(Duration::from_secs(15));
    let exit_after = start.elapsed();
    stop.store(true, Ordering::SeqCst);
    let usage = monitor.stop();
    // Count both ends: the server's bytes= per connection against what each client received.
    let mut by_port: HashMap<u16, String> = HashMap::new();
    for l in s.log.matching("TCP connection open.") {
        let id = support::connection_id(&l);
        let port: u16 = field(&l, "peer=")
            .rsplit(':')
            .next()
            .unwrap()
            .parse()
            .unwrap();
        by_port.insert(port, id);
    }
    let mut mismatches = Vec::new();
    let mut total = 0usize;
    for (port, writer, reader) in clients {
        let got = reader.join().expect("client reader");
        writer.join().unwrap();
        let id = &by_port[&port];
        let closed = s.log.wait_for("close", DEADLINE, |l| {
            l.contains(id.as_str()) && l.contains("TCP connection closed.")
        });
        let read: usize = field(&closed, "bytes=").parse().unwrap();
        total += got;
        if got != read {
            mismatches.push(format!(
                "{port}: server read {read}, client got {got} ({})",
                field(&closed, "reason=")
            ));
        }
    }
    record(
        6,
        "Shutdown under load",
        "SIGTERM while 50 connections stream 7 kB blocks both ways (clients keep sending), `--drain-timeout 5`",
        &usage,
        &format!(
            "exit code {:?} after {:.2}s; {} MB echoed; every client received exactly the bytes the server read ({} mismatches); no client hung",
            status.code(),
            exit_after.as_secs_f64(),
            total / 1_000_000,
            mismatches.len()
        ),
    );
    assert_eq!(status.code(), Some(0));
    assert!(
        exit_after < Duration::from_secs(6),
        "exit took {exit_after:?}"
    );
    assert!(mismatches.is_empty(), "{mismatches:#?}");
}

#[test]
fn s7_soak() {
    support::raise_fd_limit();
    let secs: u64 = std::env::var("STRESS_SOAK_SECS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(180);
    let s = Server::start(
        &["--port", "0", "--banner", "off", "--idle-timeout", "600"],
        &[QUIET],
    );
    let addr = s.addrs[0];
    let monitor = Monitor::start(s.pid(), Duration::from_secs(1));
    let stop = Arc::new(AtomicBool::new(false));
    let ops = Arc::new(AtomicU64::new(0));
    let mut load = Vec::new();
    // 4 ping-pong clients.
    for i in 0..4 {
        let (stop, ops) = (Arc::clone(&stop), Arc::clone(&ops));
        load.push(thread::spawn(move || {
            let mut c = connect(addr);
            let line = format!("ping {i}\n");
            while !stop.load(Ordering::SeqCst) {
                c.write_all(line.as_bytes()).unwrap();
                assert_eq!(read_exactly(&mut c, line.len()), line.as_bytes());
                ops.fetch_add(1, Ordering::Relaxed);
            }
        }));
    }
    // 2 streaming clients, reconnecting every 8 MB. A failure names the client's port, what
    // each side had moved, and what the kernel showed of the connection at that moment.
    let pid = s.pid();
    let mut streams = Vec::new();
    for i in 0..2 {
        let (stop, ops) = (Arc::clone(&stop), Arc::clone(&ops));
        streams.push(thread::spawn(move || -> Result<(), (u16, String)> {
            let block = format!("stream {i} {}\n", "s".repeat(1000)).repeat(8);
            while !stop.load(Ordering::SeqCst) {
                let mut c = connect(addr);
                let port = c.local_addr().map_or(0, |a| a.port());
                let mut r = c.try_clone().unwrap();
                let n = block.len() * 1000;
                let read = Arc::new(AtomicU64::new(0));
                let reader = {
                    let read = Arc::clone(&read);
                    thread::spawn(move || -> Result<(), String> {
                        let mut buf = vec![0u8; 64 * 1024];
                        let mut got = 0;
                        while got < n {
                            match r.read(&mut buf) {
                                Ok(0) => return Err(format!("EOF after {got} of {n} bytes")),
                                Ok(k) => got += k,
                                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                                Err(e) => return Err(format!("{e} after {got} of {n} bytes")),
                            }
                            read.store(got as u64, Ordering::Relaxed);
                        }
                        Ok(())
                    })
                };
                let started = Instant::now();
                let mut written = 0;
                let mut failure = None;
                for _ in 0..1000 {
                    if let Err(e) = c.write_all(block.as_bytes()) {
                        failure = Some(format!(
                            "the writer got {e} after {written} of {n} bytes in {:?}, the reader \
                             had {} bytes",
                            started.elapsed(),
                            read.load(Ordering::Relaxed)
                        ));
                        break;
                    }
                    written += block.len();
                }
                // The moment of the failure: what the kernel and the server's threads show.
                let snapshot = failure.as_ref().map(|_| support::stall_snapshot(pid, port));
                if failure.is_some() {
                    // The reader would wait its whole timeout for the rest.
                    let _ = c.shutdown(Shutdown::Both);
                }
                let reading = reader.join().expect("reader thread");
                if failure.is_some() || reading.is_err() {
                    let what = format!(
                        "{}; the reader: {}; at the writer's failure:\n{}",
                        failure.unwrap_or_else(|| "the writer wrote everything".into()),
                        reading.err().unwrap_or_else(|| "read everything".into()),
                        snapshot.unwrap_or_else(|| support::stall_snapshot(pid, port))
                    );
                    return Err((port, what));
                }
                ops.fetch_add(1000, Ordering::Relaxed);
            }
            Ok(())
        }));
    }
    // Churn: connect, one line, close. A failure names the client's port, so that the
    // server's records of that connection can be shown with it.
    let churn = {
        let (stop, ops) = (Arc::clone(&stop), Arc::clone(&ops));
        thread::spawn(move || -> Result<(), (u16, String)> {
            while !stop.load(Ordering::SeqCst) {
                let mut c = connect(addr);
                let port = c.local_addr().map_or(0, |a| a.port());
                let started = Instant::now();
                let got = (|| {
                    c.write_all(b"churn\n")?;
                    c.shutdown(std::net::Shutdown::Write)?;
                    let mut out = Vec::new();
                    c.read_to_end(&mut out).map(|_| out)
                })();
                match got {
                    Ok(reply) if reply == b"churn\n" => {
                        ops.fetch_add(1, Ordering::Relaxed);
                    }
                    other => {
                        let what = format!("{other:?} after {:?}", started.elapsed());
                        return Err((port, what));
                    }
                }
            }
            Ok(())
        })
    };
    // 100 idle connections held for the whole run.
    let idle: Vec<TcpStream> = (0..100).map(|_| connect(addr)).collect();
    thread::sleep(Duration::from_secs(secs)); // the soak's duration
    stop.store(true, Ordering::SeqCst);
    for t in load {
        t.join().expect("load thread");
    }
    let failures = streams
        .into_iter()
        .map(|t| ("streaming", t))
        .chain([("churn", churn)])
        .filter_map(|(kind, t)| t.join().expect("client thread").err().map(|e| (kind, e)))
        .collect::<Vec<_>>();
    let usage = monitor.stop();
    if let Some((kind, (port, what))) = failures.into_iter().next() {
        let peer = format!("peer=127.0.0.1:{port} ");
        let records: Vec<String> = match s.log.matching(&peer).first() {
            Some(open) => s.log.matching(&support::connection_id(open)),
            None => vec![format!("no record of a connection from port {port}")],
        };
        // The monitor samples every second: a much longer gap means the whole machine (or this
        // test process) stalled, not one connection.
        let gap = usage
            .samples
            .windows(2)
            .map(|w| (w[1].at - w[0].at, w[0].at))
            .max()
            .unwrap_or_default();
        panic!(
            "a {kind} client on port {port}: {what}\nthe server's records:\n{}\nthe longest gap \
             between the monitor's 1 s samples: {:?}, from {:?} into the run",
            records.join("\n"),
            gap.0,
            gap.1
        );
    }
    drop(idle);
    // Compare the last third with the middle third (the first third is warm-up).
    let n = usage.samples.len();
    let third = |k: usize| &usage.samples[n * k / 3..n * (k + 1) / 3];
    let peak = |xs: &[Sample], f: fn(&Sample) -> usize| xs.iter().map(f).max().unwrap_or(0);
    let (mid, last) = (third(1), third(2));
    let rss = (peak(mid, |s| s.rss_kb), peak(last, |s| s.rss_kb));
    let threads = (peak(mid, |s| s.threads), peak(last, |s| s.threads));
    let fds = (peak(mid, |s| s.fds), peak(last, |s| s.fds));
    record(
        7,
        "Soak",
        &format!("{secs} s of mixed load: 4 ping-pong clients, 2 streaming 8 MB per connection, 1 connect-line-close loop, 100 idle connections"),
        &usage,
        &format!(
            "{} operations; peak RSS middle/last third {}/{} kB, threads {}/{}, fds {}/{}: no growth",
            ops.load(Ordering::SeqCst),
            rss.0,
            rss.1,
            threads.0,
            threads.1,
            fds.0,
            fds.1
        ),
    );
    assert!(n >= 9, "too few samples");
    assert!(rss.1 <= rss.0 + rss.0 / 10 + 256, "RSS grew: {rss:?}");
    assert!(threads.1 <= threads.0 + 2, "threads grew: {threads:?}");
    assert!(fds.1 <= fds.0 + 2, "fds grew: {fds:?}");
}

#[test]
fn s8_resets() {
    let s = Server::start(
        &["--port", "0"],
        &[
            QUIET,
            ("NODE_NAME", "reset-node"),
            ("POD_NAME", "reset-pod"),
        ],
    );
    let addr = s.addrs[0];
    let baseline = support::sample(s.pid(), Duration::ZERO);
    let monitor = Monitor::start(s.pid(), SAMPLE_EVERY);
    let reset = |c: TcpStream| {
        socket2::SockRef::from(&c)
            .set_linger(Some(Duration::ZERO))
            .unwrap();
        drop(c); // SO_LINGER 0: close sends RST
    };
    for i in 0..200 {
        let mut c = connect(addr);
        if i % 2 == 0 {
            // Mid-banner: reset before reading anything.
            reset(c);
        } else {
            // Mid-write: a stream of lines and a partial one, replies unread, then reset.
            let _ = c.write_all(&format!("line {i}\n").repeat(2000).into_bytes());
            let _ = c.write_all(b"partial");
            reset(c);
        }
    }
    s.log.wait_count("TCP connection open.", 200, DEADLINE);
    // Every connection is accounted for: closed, whatever it was doing.
    let closed = {
        let deadline = Instant::now() + DEADLINE;
        loop {
            let closed = s.log.matching("TCP connection closed.").len();
            if closed >= 200 || Instant::now() > deadline {
                break closed;
            }
            thread::sleep(Duration::from_millis(20));
        }
    };
    // No leaked worker or socket: descriptors return to the baseline and the server serves.
    support::wait_until("descriptors back to baseline", DEADLINE, || {
        support::open_fds(s.pid()) <= baseline.fds
    });
    assert_eq!(
        support::exchange(addr, b"after\n"),
        b"Welcome, you are connected to node reset-node.\nRunning on Pod reset-pod.\nafter\n"
    );
    let usage = monitor.stop();
    let panics = s.log.lines().iter().filter(|l| l.contains("panic")).count();
    let opens = s.log.matching("TCP connection open.").len();
    record(
        8,
        "Resets",
        "200 clients closing with SO_LINGER 0 (RST): 100 right after connect (mid-banner), 100 after 22 kB of lines and a partial line with the replies unread (mid-write)",
        &usage,
        &format!(
            "{opens} opened, {closed} logged closed; descriptors back to {} (baseline {}); {panics} panics; still serving",
            support::open_fds(s.pid()),
            baseline.fds
        ),
    );
    assert_eq!(panics, 0);
    assert!(s.log.matching("TCP connection closed.").len() >= 200);
}

/// The Deployments' `--socket-buffer` (k8s/base/deployment.yml), at which the memory cases
/// measure.
const DEPLOYMENT_SOCKET_BUFFER: usize = 24 * 1024;

/// The per-connection memory ceiling stated in ARCHITECTURE.md, in kB, at the Deployments'
/// `--socket-buffer` (`tls`: on a TLS port): user-space buffers and stack, the thread's kernel
/// stack, and the kernel's socket buffers, for the worst a client can do (flood empty lines
/// with a prefix, never read).
fn ceiling_kb_per_connection(tls: bool) -> u64 {
    let config = tcp_echo::Config::new(&[0])
        .and_then(|c| c.with_socket_buffer(DEPLOYMENT_SOCKET_BUFFER))
        .expect("the settings");
    let config = if tls {
        config.with_tls_ports(&[0]).expect("a TLS port")
    } else {
        config
    };
    config.memory_per_connection().expect("a bounded ceiling") / 1024
}

/// Writes `chunk` to each non-blocking client until every one of them blocks for two rounds
/// in a row (the server, blocked on replies nobody reads, stopped reading), or 30 s pass.
fn flood_until_stalled(clients: &mut [TcpStream], chunk: &[u8]) -> u64 {
    let mut sent = 0u64;
    let mut quiet_rounds = 0;
    let deadline = Instant::now() + Duration::from_secs(30);
    while quiet_rounds < 2 {
        assert!(Instant::now() < deadline, "the server kept reading");
        let mut moved = 0;
        for c in clients.iter_mut() {
            while let Ok(n) = c.write(chunk) {
                moved += n as u64;
            }
        }
        sent += moved;
        quiet_rounds = if moved == 0 { quiet_rounds + 1 } else { 0 };
        thread::sleep(Duration::from_millis(50)); // let the server catch up between rounds
    }
    sent
}

#[test]
fn s9_non_reading_clients_flooding_empty_lines() {
    support::raise_fd_limit();
    let n = 256;
    let s = Server::start(
        &[
            "--port",
            "0",
            "--prefix",
            "one",
            "--banner",
            "off",
            "--max-connections",
            "257",
            "--idle-timeout",
            "120",
            "--socket-buffer",
            &DEPLOYMENT_SOCKET_BUFFER.to_string(),
        ],
        &[QUIET],
    );
    let addr = s.addrs[0];
    let base = support::sample(s.pid(), Duration::ZERO);
    let stack0 = support::kernel_stack_kb();
    let monitor = Monitor::start(s.pid(), Duration::from_millis(50));
    let mut clients: Vec<TcpStream> = (0..n).map(|_| connect(addr)).collect();
    for c in &clients {
        c.set_nonblocking(true).unwrap();
    }
    // Empty lines: with the prefix `one `, each input byte asks for five output bytes.
    let sent = flood_until_stalled(&mut clients, &[b'\n'; 64 * 1024]);
    let at = support::sample(s.pid(), Duration::ZERO);
    let stack = support::kernel_stack_kb().saturating_sub(stack0);
    let (sockets, socket_bytes) = support::socket_memory(addr.port());
    assert_eq!(sockets, n, "server-side sockets seen by ss");
    let rss_kb = at.rss_kb.saturating_sub(base.rss_kb) as u64;
    let per_conn = |kb: u64| kb as f64 / n as f64;
    let socket_kb = socket_bytes / 1024;
    let total = per_conn(rss_kb + stack + socket_kb);
    // Meanwhile the one free slot serves a newcomer, and the next one is told busy.
    let mut fresh = connect(addr);
    fresh.write_all(b"fresh\n").unwrap();
    assert_eq!(read_exactly(&mut fresh, 10), b"one fresh\n");
    let busy = support::read_to_eof(&mut connect(addr));
    assert!(String::from_utf8_lossy(&busy).contains("busy"), "{busy:?}");
    drop(fresh);
    // The flood ends: every slot comes back and the server serves normally.
    drop(clients);
    support::wait_until("flooders closed", DEADLINE, || {
        s.log.matching("TCP connection closed.").len() > n
    });
    assert_eq!(
        support::exchange(addr, b"after\n"),
        b"one after\n",
        "served after the flood"
    );
    let usage = monitor.stop();
    record(
        9,
        "Non-reading clients flooding empty lines",
        &format!("{n} clients send empty lines as fast as they can and never read (each input byte asks for 5 output bytes with the prefix `one `), `--max-connections 257`, the Deployments' `--socket-buffer 24576`"),
        &usage,
        &format!(
            "{:.0} MB sent before every flooder stalled; per connection: {:.1} kB RSS + {:.1} kB kernel stack + {:.1} kB kernel socket memory = {total:.0} kB (ceiling {} kB); a newcomer was echoed and the next told busy; served normally after",
            sent as f64 / 1e6,
            per_conn(rss_kb),
            per_conn(stack),
            per_conn(socket_kb),
            ceiling_kb_per_connection(false),
        ),
    );
    assert!(
        total <= ceiling_kb_per_connection(false) as f64,
        "{total:.0} kB per connection"
    );
}

/// Bytes of log the server wrote so far (its stderr, as collected).
fn log_bytes(s: &Server) -> usize {
    s.log.lines().iter().map(|l| l.len() + 1).sum()
}

/// Streams `mb` MB of `line`s on each of `conns` connections, reading the echo concurrently;
/// returns the seconds it took.
fn stream_lines(addr: SocketAddr, conns: usize, mb: usize, line: &[u8], prefix: &str) -> f64 {
    let start = Instant::now();
    let threads: Vec<_> = (0..conns)
        .map(|_| {
            let line = line.to_vec();
            let expect = [prefix.as_bytes(), &line].concat();
            thread::spawn(move || {
                let mut c = connect(addr);
                let mut w = c.try_clone().unwrap();
                let per_block = (64 * 1024 / line.len()).max(1);
                let block = line.repeat(per_block);
                let blocks = mb * 1_000_000 / block.len();
                let writer = thread::spawn(move || {
                    for _ in 0..blocks {
                        w.write_all(&block).unwrap();
                    }
                    w.shutdown(Shutdown::Write).unwrap();
                });
                let want = expect.repeat(per_block * blocks);
                let got = support::read_to_eof(&mut c);
                writer.join().unwrap();
                assert!(
                    got == want,
                    "echo differs ({} of {} bytes)",
                    got.len(),
                    want.len()
                );
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    start.elapsed().as_secs_f64()
}

#[test]
fn s10_a_log_flood() {
    support::raise_fd_limit();
    let conns = 8;
    let mb = 8;
    // Half the clients send empty lines (the most records), half 1 KiB lines of bytes that
    // escape to four characters each (the longest records).
    let long_line = {
        let mut l = vec![0xffu8; 1023];
        l.push(b'\n');
        l
    };
    // At the default level (info), against the same flood with the records filtered out.
    let mut timings: HashMap<&str, Vec<f64>> = HashMap::new();
    let mut logged = Vec::new();
    let mut usage = None;
    for round in 0..2 {
        for (name, log) in [("info", "info"), ("off", "info,tcp_echo::data=off")] {
            let s = Server::start(
                &["--port", "0", "--prefix", "one", "--banner", "off"],
                &[("RUST_LOG", log)],
            );
            let monitor = Monitor::start(s.pid(), SAMPLE_EVERY);
            let addr = s.addrs[0];
            let a = thread::spawn(move || stream_lines(addr, conns / 2, mb, b"\n", "one "));
            let b = {
                let line = long_line.clone();
                thread::spawn(move || stream_lines(addr, conns / 2, mb, &line, "one "))
            };
            let took = a.join().unwrap().max(b.join().unwrap());
            s.log.wait_count("TCP connection closed.", conns, DEADLINE);
            timings.entry(name).or_default().push(took);
            if name == "info" {
                logged.push(log_bytes(&s));
                if round == 0 {
                    usage = Some(monitor.stop());
                    // Each budget says once that it holds records back: the connection's own
                    // (at most once per connection) or the server-wide one (at most once here).
                    let own = s.log.matching("Received records stop here").len();
                    let server = s.log.matching("Received records are being held back").len();
                    assert!(own <= conns && server <= 1 && own + server >= 1);
                    let pieces = s.log.matching("Received Raw Data").len();
                    assert!(pieces <= conns * 1000, "{pieces} pieces logged");
                }
            }
        }
    }
    let best = |k: &str| timings[k].iter().cloned().fold(f64::INFINITY, f64::min);
    let sent = (conns * mb) as f64;
    let (info, off) = (sent / best("info"), sent / best("off"));
    let worst_log = *logged.iter().max().unwrap();
    // Per connection: 1,000 pieces or 64 KiB of client data, each record capped.
    let bound = conns * 600 * 1024;
    record(
        10,
        "A log flood",
        &format!("{conns} clients stream {mb} MB each at the default log level (`info`): half send empty lines, half 1 KiB lines of 0xff bytes (each escapes to 4 characters); compared with the same flood with the `Received` records filtered out (`tcp_echo::data=off`)"),
        usage.as_ref().unwrap(),
        &format!(
            "{} MB in, {:.0} kB of log at most ({:.2} kB per MB received; bound {} kB); echo {info:.0} MB/s at `info` against {off:.0} MB/s with the records filtered out (best of 2 each)",
            conns * mb,
            worst_log as f64 / 1024.0,
            worst_log as f64 / 1024.0 / sent,
            bound / 1024
        ),
    );
    assert!(worst_log <= bound, "{worst_log} bytes of log");
    assert!(
        info >= off * 0.7,
        "logging slowed the echo: {info:.0} against {off:.0} MB/s"
    );
}

/// A v2 PROXY header for TCP over IPv4 from `client` to 10.0.0.1:3333.
fn proxy_v2(client: SocketAddr) -> Vec<u8> {
    let SocketAddr::V4(c) = client else {
        panic!("IPv4 only here")
    };
    let mut h = b"\r\n\r\n\0\r\nQUIT\n\x21\x11\x00\x0c".to_vec();
    h.extend_from_slice(&c.ip().octets());
    h.extend_from_slice(&[10, 0, 0, 1]);
    h.extend_from_slice(&c.port().to_be_bytes());
    h.extend_from_slice(&3333u16.to_be_bytes());
    h
}

#[test]
fn s11_hostile_proxy_headers() {
    support::raise_fd_limit();
    let s = Server::start(
        &[
            "--port",
            "0",
            "--proxy-protocol",
            "optional",
            "--banner",
            "off",
            "--max-connections",
            "1100",
        ],
        &[QUIET],
    );
    let addr = s.addrs[0];
    let baseline = support::sample(s.pid(), Duration::ZERO);
    let monitor = Monitor::start(s.pid(), SAMPLE_EVERY);
    let real: SocketAddr = "192.0.2.7:4242".parse().unwrap();
    // A well-behaved client through a proxy, every 50 ms, all along: header, a line, its echo.
    let stop = Arc::new(AtomicBool::new(false));
    let worst = Arc::new(AtomicU64::new(0));
    let probe = {
        let (stop, worst) = (Arc::clone(&stop), Arc::clone(&worst));
        thread::spawn(move || {
            let mut n = 0u64;
            while !stop.load(Ordering::SeqCst) {
                let t = Instant::now();
                let line = format!("probe {n}\n");
                let got =
                    support::exchange(addr, &[proxy_v2(real), line.clone().into_bytes()].concat());
                assert_eq!(got, line.as_bytes());
                worst.fetch_max(t.elapsed().as_micros() as u64, Ordering::SeqCst);
                n += 1;
                thread::sleep(Duration::from_millis(50)); // the probe's pace
            }
            n
        })
    };
    let mut rng = Rng(11);
    let echoed_nothing = |input: &[u8]| {
        let got = support::exchange(addr, input);
        assert!(
            got.is_empty(),
            "echoed {got:?} for {:?}",
            &input[..input.len().min(40)]
        );
    };
    // Garbage after a signature: refused, nothing echoed. Garbage without one: it is data.
    for _ in 0..100 {
        let mut tail = vec![0u8; 200];
        rng.fill(&mut tail);
        echoed_nothing(&[b"PROXY ".to_vec(), tail.clone()].concat());
        let mut data = tail.clone();
        data[0] = b'x';
        assert_eq!(support::exchange(addr, &data), data);
    }
    // An oversized v2 length: refused at once.
    let mut oversized = proxy_v2(real);
    oversized[14..16].copy_from_slice(&60000u16.to_be_bytes());
    for _ in 0..50 {
        echoed_nothing(&oversized);
    }
    // A header byte by byte, well within the deadline: read whole.
    for _ in 0..10 {
        let mut c = connect(addr);
        c.set_nodelay(true).unwrap();
        for b in proxy_v2(real) {
            c.write_all(&[b]).unwrap();
            thread::sleep(Duration::from_millis(10)); // the client's pace
        }
        c.write_all(b"slow but fine\n").unwrap();
        assert_eq!(read_exactly(&mut c, 14), b"slow but fine\n");
    }
    // 1,000 connections send half a header and stall: each is cut off at the deadline.
    let half = &proxy_v2(real)[..20];
    let start = Instant::now();
    let mut stalled: Vec<TcpStream> = (0..1000)
        .map(|_| {
            let mut c = connect(addr);
            c.write_all(half).unwrap();
            c
        })
        .collect();
    let mut slowest = Duration::ZERO;
    for c in stalled.iter_mut() {
        let got = support::read_to_eof(c);
        assert!(got.is_empty(), "a half header was echoed: {got:?}");
        slowest = slowest.max(start.elapsed());
    }
    drop(stalled);
    stop.store(true, Ordering::SeqCst);
    let probes = probe.join().expect("probe client failed");
    support::wait_until("descriptors released", DEADLINE, || {
        support::open_fds(s.pid()) <= baseline.fds + 2
    });
    let usage = monitor.stop();
    let worst = Duration::from_micros(worst.load(Ordering::SeqCst));
    let refused = s.log.matching("TCP connection refused:").len();
    record(
        11,
        "Hostile PROXY headers",
        "`--proxy-protocol optional`: 100 signatures followed by garbage (and 100 garbage without one), 50 v2 headers claiming 60,000 bytes, 10 headers sent a byte every 10 ms, 1,000 connections sending half a header and stalling; meanwhile a client through a proxy every 50 ms",
        &usage,
        &format!(
            "nothing of a header echoed; garbage without a signature echoed as data; {refused} connections refused with a reason; the byte-by-byte headers read whole; the 1,000 stalled headers all cut off {:.1} s after they began (deadline 3 s); {probes} proxied clients served, worst {:.1} ms; fds back to {} after",
            slowest.as_secs_f64(),
            worst.as_secs_f64() * 1000.0,
            support::open_fds(s.pid())
        ),
    );
    assert!(
        slowest >= Duration::from_secs(3) && slowest < Duration::from_secs(6),
        "{slowest:?}"
    );
    assert!(refused >= 1150, "{refused} refused");
    assert!(
        worst < Duration::from_secs(1),
        "a proxied client waited {worst:?}"
    );
    assert!(usage.peak_threads() <= thread_bound(1100, 1));
}

/// A TLS client of the stress cases: its handshake done (blocking), then non-blocking.
struct TlsFlooder {
    conn: rustls::ClientConnection,
    sock: TcpStream,
}

impl TlsFlooder {
    fn connect(addr: SocketAddr, config: &std::sync::Arc<rustls::ClientConfig>) -> TlsFlooder {
        let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
        let mut conn = rustls::ClientConnection::new(std::sync::Arc::clone(config), name).unwrap();
        let mut sock = connect(addr);
        while conn.is_handshaking() {
            conn.complete_io(&mut sock).expect("handshake");
        }
        TlsFlooder { conn, sock }
    }

    /// Encrypts and writes `chunk` until the socket would block; the plaintext bytes taken.
    fn flood(&mut self, chunk: &[u8]) -> u64 {
        let mut moved = 0;
        loop {
            while self.conn.wants_write() {
                match self.conn.write_tls(&mut self.sock) {
                    Ok(_) => {}
                    Err(_) => return moved,
                }
            }
            match std::io::Write::write(&mut self.conn.writer(), chunk) {
                Ok(0) | Err(_) => return moved,
                Ok(n) => moved += n as u64,
            }
        }
    }
}

/// A client configuration that accepts the server's self-signed certificate.
fn accept_any() -> std::sync::Arc<rustls::ClientConfig> {
    #[derive(Debug)]
    struct Any(std::sync::Arc<rustls::crypto::CryptoProvider>);
    impl rustls::client::danger::ServerCertVerifier for Any {
        fn verify_server_cert(
            &self,
            _: &rustls::pki_types::CertificateDer<'_>,
            _: &[rustls::pki_types::CertificateDer<'_>],
            _: &rustls::pki_types::ServerName<'_>,
            _: &[u8],
            _: rustls::pki_types::UnixTime,
        ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
            Ok(rustls::client::danger::ServerCertVerified::assertion())
        }
        fn verify_tls12_signature(
            &self,
            m: &[u8],
            c: &rustls::pki_types::CertificateDer<'_>,
            d: &rustls::DigitallySignedStruct,
        ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
            rustls::crypto::verify_tls12_signature(
                m,
                c,
                d,
                &self.0.signature_verification_algorithms,
            )
        }
        fn verify_tls13_signature(
            &self,
            m: &[u8],
            c: &rustls::pki_types::CertificateDer<'_>,
            d: &rustls::DigitallySignedStruct,
        ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
            rustls::crypto::verify_tls13_signature(
                m,
                c,
                d,
                &self.0.signature_verification_algorithms,
            )
        }
        fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
            self.0.signature_verification_algorithms.supported_schemes()
        }
    }
    let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
    std::sync::Arc::new(
        rustls::ClientConfig::builder_with_provider(std::sync::Arc::clone(&provider))
            .with_safe_default_protocol_versions()
            .unwrap()
            .dangerous()
            .with_custom_certificate_verifier(std::sync::Arc::new(Any(provider)))
            .with_no_client_auth(),
    )
}

#[test]
fn s12_idle_and_flooding_tls_clients() {
    support::raise_fd_limit();
    let n = 200;
    let s = Server::start(
        &[
            "--port",
            "none",
            "--tls-port",
            "0",
            "--prefix",
            "one",
            "--banner",
            "off",
            "--max-connections",
            "201",
            "--idle-timeout",
            "120",
            "--socket-buffer",
            &DEPLOYMENT_SOCKET_BUFFER.to_string(),
        ],
        &[QUIET],
    );
    let addr = s.tls_addrs[0];
    let config = accept_any();
    let base = support::sample(s.pid(), Duration::ZERO);
    let stack0 = support::kernel_stack_kb();
    let monitor = Monitor::start(s.pid(), Duration::from_millis(50));
    // Idle: each client completes its handshake and has one line echoed, then says nothing.
    let mut clients: Vec<TlsFlooder> = (0..n).map(|_| TlsFlooder::connect(addr, &config)).collect();
    for c in clients.iter_mut() {
        let mut stream = rustls::Stream::new(&mut c.conn, &mut c.sock);
        stream.write_all(b"hi\n").unwrap();
        let mut got = [0u8; 7];
        std::io::Read::read_exact(&mut stream, &mut got).unwrap();
        assert_eq!(&got, b"one hi\n");
    }
    let idle = support::sample(s.pid(), Duration::ZERO);
    let idle_kb = idle.rss_kb.saturating_sub(base.rss_kb) as f64 / n as f64;
    // Flooding: every client sends empty lines as fast as it can and never reads.
    for c in &clients {
        c.sock.set_nonblocking(true).unwrap();
    }
    let chunk = [b'\n'; 16 * 1024];
    let mut sent = 0u64;
    let mut quiet_rounds = 0;
    let deadline = Instant::now() + Duration::from_secs(30);
    while quiet_rounds < 2 {
        assert!(Instant::now() < deadline, "the server kept reading");
        let moved: u64 = clients.iter_mut().map(|c| c.flood(&chunk)).sum();
        sent += moved;
        quiet_rounds = if moved == 0 { quiet_rounds + 1 } else { 0 };
        thread::sleep(Duration::from_millis(50)); // let the server catch up between rounds
    }
    let at = support::sample(s.pid(), Duration::ZERO);
    let stack = support::kernel_stack_kb().saturating_sub(stack0);
    let (sockets, socket_bytes) = support::socket_memory(addr.port());
    assert_eq!(sockets, n, "server-side sockets seen by ss");
    let per_conn = |kb: u64| kb as f64 / n as f64;
    let rss_kb = at.rss_kb.saturating_sub(base.rss_kb) as u64;
    let socket_kb = socket_bytes / 1024;
    let total = per_conn(rss_kb + stack + socket_kb);
    // The one free slot still serves a newcomer's TLS.
    let mut fresh = TlsFlooder::connect(addr, &config);
    let mut stream = rustls::Stream::new(&mut fresh.conn, &mut fresh.sock);
    stream.write_all(b"fresh\n").unwrap();
    let mut got = [0u8; 10];
    std::io::Read::read_exact(&mut stream, &mut got).unwrap();
    assert_eq!(&got, b"one fresh\n");
    drop(clients);
    let usage = monitor.stop();
    let ceiling = ceiling_kb_per_connection(true);
    record(
        12,
        "Idle and flooding TLS clients",
        &format!("{n} TLS clients (TLS 1.3) complete their handshake and have a line echoed, then stay idle; then all of them send empty lines as fast as they can and never read; prefix `one`, the Deployments' `--socket-buffer 24576`"),
        &usage,
        &format!(
            "idle: {idle_kb:.1} kB RSS per TLS connection; flooding ({:.0} MB sent before every client stalled): {:.1} kB RSS + {:.1} kB kernel stack + {:.1} kB kernel socket memory = {total:.0} kB per connection (ceiling {ceiling} kB); a newcomer's TLS was served meanwhile",
            sent as f64 / 1e6,
            per_conn(rss_kb),
            per_conn(stack),
            per_conn(socket_kb),
        ),
    );
    assert!(total <= ceiling as f64, "{total:.0} kB per TLS connection");
}
