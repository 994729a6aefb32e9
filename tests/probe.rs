//! `tcp-echo probe` against tcp-echo (with and without banner and prefix) and against servers
//! that answer wrongly, close without answering, or never answer; and its usage errors. The
//! split against a weighted proxy is in tests/clients.rs (it needs HAProxy).

mod support;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener};
use std::process::Stdio;
use std::time::{Duration, Instant};

use support::{command, Server, DEADLINE};

/// Runs `tcp-echo probe ARGS`; returns (exit code, stdout, stderr, how long it took).
fn probe(args: &[&str]) -> (Option<i32>, String, String, Duration) {
    let start = Instant::now();
    let mut all = vec!["probe"];
    all.extend_from_slice(args);
    let out = command(&all, &[])
        .stdin(Stdio::null())
        .output()
        .expect("run tcp-echo probe");
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
        start.elapsed(),
    )
}

/// The value of `"key":` in a one-line JSON object (numbers, booleans, or an object).
fn json_field<'a>(json: &'a str, key: &str) -> &'a str {
    let start = json
        .find(&format!("\"{key}\":"))
        .unwrap_or_else(|| panic!("no {key} in {json}"))
        + key.len()
        + 3;
    let rest = &json[start..];
    let end = if rest.starts_with('{') {
        rest.find('}').unwrap() + 1
    } else {
        rest.find([',', '}']).unwrap()
    };
    &rest[..end]
}

fn addr(s: &Server) -> String {
    s.addrs[0].to_string()
}

#[test]
fn counts_versions_and_pods_from_banner_and_prefix() {
    let s = Server::start(
        &["--port", "0", "--prefix", "one"],
        &[("NODE_NAME", "node-a"), ("POD_NAME", "tcp-echo-v1-abc")],
    );
    let (code, out, err, _) = probe(&[&addr(&s), "--connections", "10", "--json"]);
    assert_eq!(code, Some(0), "{out}{err}");
    assert_eq!(json_field(&out, "connections"), "10");
    assert_eq!(json_field(&out, "ok"), "10");
    assert_eq!(json_field(&out, "failed"), "0");
    assert_eq!(json_field(&out, "versions"), "{\"one\":10}");
    assert_eq!(json_field(&out, "pods"), "{\"tcp-echo-v1-abc\":10}");
    // Nothing on stderr when it is not a terminal.
    assert!(err.is_empty(), "{err}");
    // Every connection echoed its line, half-closed and saw the end.
    s.log.wait_count("reason=EOF", 10, DEADLINE);
}

#[test]
fn without_banner_or_prefix_the_version_is_empty() {
    let s = Server::with(&["--banner", "off"]);
    let (code, out, err, _) = probe(&[&addr(&s), "--connections", "5", "--json"]);
    assert_eq!(code, Some(0), "{out}{err}");
    assert_eq!(json_field(&out, "versions"), "{\"\":5}");
    assert_eq!(json_field(&out, "pods"), "{}");
}

#[test]
fn a_first_read_banner_is_read_before_the_echo() {
    let s = Server::start(
        &["--port", "0", "--prefix", "two", "--banner", "first-read"],
        &[("POD_NAME", "tcp-echo-v2-xyz"), ("POD_NAMESPACE", "demo")],
    );
    let (code, out, err, _) = probe(&[
        &addr(&s),
        "--connections",
        "6",
        "--concurrency",
        "3",
        "--send",
        "hello there",
    ]);
    assert_eq!(code, Some(0), "{out}{err}");
    // The table: a header, one row for the version and pod.
    let lines: Vec<&str> = out.lines().collect();
    assert!(lines[0].ends_with("6 connections, 6 ok, 0 failed"), "{out}");
    assert!(
        lines[1].starts_with("VERSION") && lines[1].contains("95% INTERVAL"),
        "{out}"
    );
    let row: Vec<&str> = lines[2].split_whitespace().collect();
    assert_eq!(
        &row[..4],
        ["two", "tcp-echo-v2-xyz", "6", "100.0%"],
        "{out}"
    );
}

#[test]
fn the_default_line_is_todays_date() {
    let s = Server::with(&[]);
    let (code, out, err, _) = probe(&[&addr(&s), "--connections", "1"]);
    assert_eq!(code, Some(0), "{out}{err}");
    let received = s
        .log
        .wait_for("text", DEADLINE, |l| l.contains("converted to string):"));
    let text = received.rsplit("): ").next().unwrap();
    // `Mon Nov 30 10:12:01 UTC 2026`
    let words: Vec<&str> = text.split_whitespace().collect();
    assert_eq!(words.len(), 6, "{text}");
    assert_eq!(words[4], "UTC", "{text}");
    assert!(words[5].parse::<u32>().is_ok_and(|y| y >= 2026), "{text}");
}

/// A server that accepts and then does `handle` with each connection, on a free port.
fn fake_server(handle: fn(std::net::TcpStream)) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let a = listener.local_addr().unwrap();
    std::thread::spawn(move || {
        for c in listener.incoming().flatten() {
            std::thread::spawn(move || handle(c));
        }
    });
    a
}

#[test]
fn a_wrong_answer_fails_with_a_clear_line() {
    let a = fake_server(|mut c| {
        let mut b = [0u8; 256];
        let _ = c.read(&mut b);
        let _ = c.write_all(b"not what you sent\n");
    });
    let (code, out, _, _) = probe(&[&a.to_string(), "--connections", "3", "--send", "ping"]);
    assert_eq!(code, Some(1), "{out}");
    assert!(
        out.contains("failed: 3 x wrong echo: \"not what you sent\" for \"ping\""),
        "{out}"
    );
}

#[test]
fn a_server_closing_without_an_answer_fails_with_a_clear_line() {
    let a = fake_server(drop);
    let (code, out, _, took) = probe(&[&a.to_string(), "--connections", "2", "--json"]);
    assert_eq!(code, Some(1), "{out}");
    assert_eq!(json_field(&out, "failed"), "2");
    assert!(
        out.contains("closed the connection without echoing the line")
            || out.contains("connection reset"),
        "{out}"
    );
    let kinds = json_field(&out, "failure_kinds");
    assert!(
        kinds.contains("\"closed_early\":") || kinds.contains("\"reset\":"),
        "{kinds}"
    );
    assert!(took < Duration::from_secs(5), "{took:?}");
}

#[test]
fn a_server_that_never_answers_fails_within_the_timeout() {
    let a = fake_server(|mut c| {
        let mut b = [0u8; 256];
        while matches!(c.read(&mut b), Ok(n) if n > 0) {}
    });
    let (code, out, _, took) = probe(&[
        &a.to_string(),
        "--connections",
        "2",
        "--concurrency",
        "2",
        "--timeout",
        "0.5",
    ]);
    assert_eq!(code, Some(1), "{out}");
    assert!(
        out.contains("failed: 2 x timed out after 0.5s waiting for the echo"),
        "{out}"
    );
    assert!(
        took < Duration::from_secs(3),
        "a hung server held the probe {took:?}"
    );
}

#[test]
fn a_server_that_trickles_bytes_cannot_stretch_the_timeout() {
    // A byte every 100 ms, never a newline: each read returns well within the timeout, so a
    // timeout armed per line (not per connection) never fires.
    let a = fake_server(|mut c| {
        let mut b = [0u8; 256];
        let _ = c.read(&mut b);
        for _ in 0..200 {
            if c.write_all(b"o").is_err() {
                return;
            }
            std::thread::sleep(Duration::from_millis(100)); // the trickle's pace
        }
    });
    let (code, out, _, took) = probe(&[&a.to_string(), "--connections", "1", "--timeout", "1"]);
    assert_eq!(code, Some(1), "{out}");
    assert!(out.contains("timed out after 1.0s"), "{out}");
    assert!(took < Duration::from_secs(3), "the probe took {took:?}");
}

#[test]
fn nothing_listening_fails_with_a_clear_line() {
    let free = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let (code, out, _, _) = probe(&[&free.to_string(), "--connections", "1"]);
    assert_eq!(code, Some(1), "{out}");
    assert!(out.contains(&format!("connect to {free}")), "{out}");
}

#[test]
fn usage_errors_exit_2_with_one_line() {
    for args in [
        &[][..],
        &["127.0.0.1"][..],
        &["127.0.0.1:1", "--connections", "0"][..],
        &["127.0.0.1:1", "--concurrency", "x"][..],
        &["127.0.0.1:1", "--expect", "one"][..],
        &["127.0.0.1:1", "--expect", "one=0"][..],
        &["127.0.0.1:1", "--timeout", "0"][..],
        &["127.0.0.1:1", "--send", ""][..],
        &["127.0.0.1:1", "--no-such-flag"][..],
    ] {
        let (code, out, err, _) = probe(args);
        assert_eq!(code, Some(2), "{args:?}: {out}{err}");
        assert!(out.is_empty(), "{args:?}: {out}");
        assert_eq!(err.lines().count(), 1, "{args:?}: {err}");
        assert!(err.starts_with("tcp-echo probe: "), "{args:?}: {err}");
    }
    let (code, out, _, _) = probe(&["--help"]);
    assert_eq!(code, Some(0));
    for flag in [
        "--connections",
        "--concurrency",
        "--send",
        "--expect",
        "--json",
        "--timeout",
    ] {
        assert!(out.contains(flag), "{flag}: {out}");
    }
}

#[test]
fn a_name_that_does_not_resolve_fails_with_a_clear_line() {
    let (code, out, err, _) = probe(&["no-such-host.invalid:3333", "--connections", "1"]);
    assert_eq!(code, Some(1), "{out}{err}");
    assert!(
        err.contains("cannot resolve no-such-host.invalid:3333"),
        "{err}"
    );
}

#[test]
fn progress_goes_to_a_terminal_only() {
    // `script` runs the probe with a terminal for its output.
    let s = Server::with(&[]);
    let line = format!(
        "{} probe {} --connections 3 --json",
        support::binary(),
        addr(&s)
    );
    let out = std::process::Command::new("script")
        .args(["-qec", &line, "/dev/null"])
        .stdin(Stdio::null())
        .output()
        .expect("script (util-linux; make test installs it)");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}");
    assert!(text.contains("\r3/3 connections"), "{text:?}");
}
