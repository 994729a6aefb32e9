//! The command line contract: --help, --version, precedence, positional form, and operator
//! mistakes (behaviour 9).

mod support;

use std::net::TcpListener;

use support::{exchange, run_to_exit, Server};

#[test]
fn help_lists_every_flag_with_its_variable_and_default() {
    let (code, out, _) = run_to_exit(&["--help"], &[]);
    assert_eq!(code, Some(0));
    for (flag, var, default) in [
        ("--port", "TCP_PORT", "3333"),
        ("--prefix", "ECHO_PREFIX", ""),
        ("--bind", "ECHO_BIND", "::"),
        ("--max-connections", "ECHO_MAX_CONNECTIONS", "1024"),
        ("--idle-timeout", "ECHO_IDLE_TIMEOUT", "300"),
        ("--max-line", "ECHO_MAX_LINE", ""),
        ("--drain-timeout", "ECHO_DRAIN_TIMEOUT", "5"),
        ("--socket-buffer", "ECHO_SOCKET_BUFFER", "65536"),
        ("--max-duration", "ECHO_MAX_DURATION", "0"),
        ("--banner", "ECHO_BANNER", "connect"),
    ] {
        let line = out
            .lines()
            .find(|l| l.contains(&format!("{flag} ")))
            .unwrap_or_else(|| panic!("{flag} missing from --help:\n{out}"));
        assert!(
            line.contains(&format!("[env: {var}")),
            "{flag}: no {var} in {line:?}"
        );
        if !default.is_empty() {
            assert!(
                line.contains(&format!("[default: {default}]")),
                "{flag}: no default in {line:?}"
            );
        }
    }
    assert!(out.contains("[PORTS] [PREFIX]"), "{out}");
    assert!(out.contains("RUST_LOG"), "{out}");
    let max_line = out
        .lines()
        .skip_while(|l| !l.contains("--max-line "))
        .take(3)
        .collect::<String>();
    assert!(max_line.contains("No effect"), "{max_line}");
}

#[test]
fn max_line_is_still_accepted_with_one_warning_and_no_effect() {
    for (args, envs) in [
        (
            &["--port", "0", "--max-line", "4", "--prefix", "one"][..],
            &[][..],
        ),
        (
            &["--port", "0", "--prefix", "one"][..],
            &[("ECHO_MAX_LINE", "4")][..],
        ),
    ] {
        let s = Server::start(args, envs);
        let warnings = s.log.matching("has no effect");
        assert_eq!(warnings.len(), 1, "{:#?}", s.log.lines());
        assert!(
            warnings[0].contains(" WARN ") && warnings[0].contains("--max-line/ECHO_MAX_LINE"),
            "{}",
            warnings[0]
        );
        // Longer than 4 bytes and without a newline: echoed whole, at once.
        let mut c = s.connect();
        std::io::Write::write_all(&mut c, b"no newline here").unwrap();
        assert_eq!(support::read_exactly(&mut c, 19), b"one no newline here");
    }
}

#[test]
fn a_prefix_up_to_256_bytes_is_accepted() {
    let prefix = "p".repeat(256);
    let s = Server::start(&["--port", "0", "--prefix", &prefix], &[]);
    assert_eq!(
        exchange(s.addrs[0], b"x\n"),
        format!("{prefix} x\n").into_bytes()
    );
}

#[test]
fn version_prints_the_crate_version() {
    let (code, out, _) = run_to_exit(&["--version"], &[]);
    assert_eq!(code, Some(0));
    assert_eq!(
        out.trim(),
        format!("tcp-echo {}", env!("CARGO_PKG_VERSION"))
    );
}

/// Arguments, environment, expected flag, expected variable.
type Case<'a> = (&'a [&'a str], &'a [(&'a str, &'a str)], &'a str, &'a str);

/// Each invalid value: exit 2, one line on stderr naming the flag and its variable, no panic.
#[test]
fn invalid_settings_exit_2_with_one_line_naming_flag_and_variable() {
    let ports_65 = vec!["0"; 65].join(",");
    let cases: &[Case] = &[
        (&["--port", "70000"], &[], "--port", "TCP_PORT"),
        (&["70000"], &[], "--port", "TCP_PORT"),
        (&[], &[("TCP_PORT", "notaport")], "--port", "TCP_PORT"),
        (&["--port", "9000,9000"], &[], "--port", "TCP_PORT"),
        (
            &["--max-connections", "0"],
            &[],
            "--max-connections",
            "ECHO_MAX_CONNECTIONS",
        ),
        (
            &[],
            &[("ECHO_MAX_CONNECTIONS", "lots")],
            "--max-connections",
            "ECHO_MAX_CONNECTIONS",
        ),
        (&["--banner", "sometimes"], &[], "--banner", "ECHO_BANNER"),
        (
            &["--idle-timeout", "-1"],
            &[],
            "--idle-timeout",
            "ECHO_IDLE_TIMEOUT",
        ),
        (
            &["--drain-timeout=-0.5"],
            &[],
            "--drain-timeout",
            "ECHO_DRAIN_TIMEOUT",
        ),
        (&["--max-line", "0"], &[], "--max-line", "ECHO_MAX_LINE"),
        (
            &["--prefix", &"p".repeat(257)],
            &[],
            "--prefix",
            "ECHO_PREFIX",
        ),
        (
            &[],
            &[("ECHO_PREFIX", &"p".repeat(300))],
            "--prefix",
            "ECHO_PREFIX",
        ),
        (
            &["--socket-buffer", "100"],
            &[],
            "--socket-buffer",
            "ECHO_SOCKET_BUFFER",
        ),
        (&["--bind", "not-an-ip"], &[], "--bind", "ECHO_BIND"),
        // Rounds to zero, which would mean "never".
        (
            &["--idle-timeout", "1e-10"],
            &[],
            "--idle-timeout",
            "ECHO_IDLE_TIMEOUT",
        ),
        (
            &["--max-duration", "-3"],
            &[],
            "--max-duration",
            "ECHO_MAX_DURATION",
        ),
        (&[], &[("TCP_PORT", &ports_65)], "--port", "TCP_PORT"),
    ];
    for (args, envs, flag, var) in cases {
        let (code, out, err) = run_to_exit(args, envs);
        assert_eq!(code, Some(2), "{args:?} {envs:?}: {err}");
        assert!(out.is_empty(), "{args:?}: stdout {out:?}");
        assert_eq!(
            err.lines().count(),
            1,
            "{args:?} {envs:?}: not one line: {err:?}"
        );
        assert!(
            err.contains(flag) && err.contains(var),
            "{args:?} {envs:?}: {err:?}"
        );
        assert!(
            !err.contains("panicked") && !err.contains("RUST_BACKTRACE"),
            "{err}"
        );
    }
}

#[test]
fn unknown_flags_exit_2_in_one_line() {
    let (code, _, err) = run_to_exit(&["--no-such-flag"], &[]);
    assert_eq!(code, Some(2));
    assert_eq!(err.lines().count(), 1, "{err:?}");
    assert!(err.contains("--no-such-flag"), "{err}");
}

#[test]
fn port_in_use_exits_1_naming_the_address() {
    let taken = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = taken.local_addr().unwrap().port().to_string();
    let (code, _, err) = run_to_exit(&["--bind", "127.0.0.1", "--port", &port], &[]);
    assert_eq!(code, Some(1), "{err}");
    let lines: Vec<&str> = err.lines().filter(|l| !l.contains(" INFO ")).collect();
    assert_eq!(lines.len(), 1, "{err:?}");
    assert!(lines[0].contains(&format!("127.0.0.1:{port}")), "{err}");
    assert!(!err.contains("panicked"), "{err}");
}

#[test]
fn nothing_binds_when_a_setting_is_invalid() {
    // The first port is free, the second value is invalid: the first must not have been bound
    // (the process exits 2 before binding anything, so the port is free for us afterwards).
    let probe = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = probe.local_addr().unwrap().port();
    drop(probe);
    let ports = format!("{port},70000");
    let (code, _, err) = run_to_exit(&["--bind", "127.0.0.1", "--port", &ports], &[]);
    assert_eq!(code, Some(2), "{err}");
    assert!(
        err.contains("70000 is not a port") && err.contains("--port"),
        "{err}"
    );
    assert!(!err.contains("listening"), "{err}");
    // Nothing was bound: the first port is still free.
    TcpListener::bind(("127.0.0.1", port)).expect("the first port was left free");
}

#[test]
fn flag_beats_variable_beats_default() {
    // Variable only: the prefix comes from ECHO_PREFIX.
    let s = Server::start(
        &["--port", "0", "--banner", "off"],
        &[("ECHO_PREFIX", "env")],
    );
    assert_eq!(exchange(s.addrs[0], b"x\n"), b"env x\n");
    // Flag and variable: the flag wins.
    let s = Server::start(
        &["--port", "0", "--prefix", "flag", "--banner", "off"],
        &[("ECHO_PREFIX", "env")],
    );
    assert_eq!(exchange(s.addrs[0], b"x\n"), b"flag x\n");
    // Neither: no prefix.
    let s = Server::start(&["--port", "0", "--banner", "off"], &[]);
    assert_eq!(exchange(s.addrs[0], b"x\n"), b"x\n");
    // TCP_PORT is read (two listeners: ignored, it would be one on 3333); the positional form
    // beats it.
    let s = Server::start(&[], &[("TCP_PORT", "0,0"), ("ECHO_BANNER", "off")]);
    assert_eq!(s.addrs.len(), 2);
    assert!(s.addrs.iter().all(|a| a.port() != 3333));
    let s = Server::start(
        &["0,0", "pos"],
        &[("TCP_PORT", "1"), ("ECHO_BANNER", "off")],
    );
    assert_eq!(s.addrs.len(), 2);
    assert_eq!(exchange(s.addrs[1], b"x\n"), b"pos x\n");
}

#[test]
fn istio_sample_invocation_serves_every_port_with_the_prefix() {
    // `tcp-echo 9000,9001 one`, with free ports instead of fixed ones.
    let s = Server::start(&["0,0", "one"], &[]);
    assert_eq!(s.addrs.len(), 2);
    assert_ne!(s.addrs[0].port(), s.addrs[1].port());
    for addr in &s.addrs {
        assert_eq!(exchange(*addr, b"hello\n"), b"one hello\n");
    }
}

#[test]
fn positional_and_flag_for_the_same_setting_is_an_error() {
    let (code, _, err) = run_to_exit(&["--port", "0", "0"], &[]);
    assert_eq!(code, Some(2));
    assert!(err.contains("--port") && err.contains("TCP_PORT"), "{err}");
}

#[test]
fn startup_logs_each_listener_with_the_port_chosen_and_the_settings() {
    let s = Server::start(&["0,0", "one", "--max-connections", "7"], &[]);
    let listening = s.log.matching("listening on ");
    assert_eq!(listening.len(), 2);
    for (line, addr) in listening.iter().zip(&s.addrs) {
        assert!(line.ends_with(&format!(":{}", addr.port())), "{line}");
        assert!(!line.ends_with(":0"), "{line}");
    }
    let settings = s
        .log
        .wait_for("settings", support::DEADLINE, |l| l.contains("settings:"));
    assert!(
        settings.contains("max_connections=7") && settings.contains("prefix=\"one\""),
        "{settings}"
    );
}
