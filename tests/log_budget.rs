//! The log budget, against the binary: however much clients send, the `Received` records they
//! cause are bounded, per connection and server-wide, and every piece is accounted for.

mod support;

use std::io::Write;
use std::time::Instant;

use support::{exchange, field, read_exactly, Server, DEADLINE};
/// The budget as docs/settings.md states it: each connection's first 1,000 pieces, then 100 pieces
/// a second server-wide after a burst of 1,000.
const PIECES_PER_CONNECTION: u64 = 1000;
const SERVER_RATE: u64 = 100;
const SERVER_BURST: u64 = 1000;

/// The `unlogged=` counts of every close record, summed.
fn unlogged(s: &Server) -> u64 {
    s.log
        .matching("TCP connection closed.")
        .iter()
        .map(|l| field(l, "unlogged=").parse::<u64>().unwrap())
        .sum()
}

#[test]
fn an_interactive_session_of_hundreds_of_lines_logs_every_line() {
    let s = Server::with(&["--prefix", "one"]);
    let mut c = s.connect();
    for i in 0..300 {
        let line = format!("typed line {i}\n");
        c.write_all(line.as_bytes()).unwrap();
        assert_eq!(
            read_exactly(&mut c, line.len() + 4),
            format!("one {line}").as_bytes()
        );
    }
    drop(c);
    let closed = s
        .log
        .wait_for("close", DEADLINE, |l| l.contains("TCP connection closed."));
    assert_eq!(field(&closed, "unlogged="), "0", "{closed}");
    assert_eq!(s.log.matching("Received Raw Data").len(), 300);
    assert_eq!(
        s.log.matching("converted to string): typed line").len(),
        300
    );
    assert!(s.log.matching("Received records stop here").is_empty());
}

#[test]
fn one_connection_logs_its_budget_then_one_notice_and_counts_the_rest() {
    let s = Server::with(&[]);
    let input: Vec<u8> = (0..5000)
        .flat_map(|i| format!("{i}\n").into_bytes())
        .collect();
    assert_eq!(exchange(s.addrs[0], &input), input);
    let closed = s
        .log
        .wait_for("close", DEADLINE, |l| l.contains("TCP connection closed."));
    let logged = s.log.matching("Received Raw Data").len() as u64;
    assert_eq!(logged, PIECES_PER_CONNECTION);
    assert_eq!(s.log.matching("Received records stop here").len(), 1);
    // A line split between two reads is two pieces: at least 5,000 in all.
    let skipped: u64 = field(&closed, "unlogged=").parse().unwrap();
    assert!(logged + skipped >= 5000, "{closed}");
}

#[test]
fn many_connections_share_a_server_wide_limit_with_one_notice() {
    let s = Server::with(&[]);
    let start = Instant::now();
    let clients: Vec<_> = (0..20)
        .map(|t| {
            let addr = s.addrs[0];
            std::thread::spawn(move || {
                let input: Vec<u8> = (0..300)
                    .flat_map(|i| format!("c{t} {i}\n").into_bytes())
                    .collect();
                assert_eq!(exchange(addr, &input), input);
            })
        })
        .collect();
    for c in clients {
        c.join().unwrap();
    }
    let took = start.elapsed().as_secs_f64();
    s.log.wait_count("TCP connection closed.", 20, DEADLINE);
    let logged = s.log.matching("Received Raw Data").len() as u64;
    // 20 x 300 = 6,000 pieces at least, far below each connection's own budget: only the
    // server-wide limit (a burst, then a rate) holds them back.
    let bound = SERVER_BURST + (SERVER_RATE as f64 * (took + 1.0)) as u64;
    assert!(
        logged >= SERVER_BURST && logged <= bound,
        "{logged} pieces logged in {took:.2}s"
    );
    assert!(logged + unlogged(&s) >= 6000);
    let notices = s.log.matching("Received records are being held back");
    assert_eq!(notices.len(), 1, "{notices:#?}");
    assert!(notices[0].contains(" WARN "), "{}", notices[0]);
}
