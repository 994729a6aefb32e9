//! A person with `nc`: the real netcat-openbsd against the binary. `make test` installs `nc`;
//! without it these tests fail, they never pass by skipping.

mod support;

use std::io::Write;
use std::process::{Command, Stdio};

use support::{wait_until, Screen, Server, DEADLINE};

fn nc() -> Command {
    let found = Command::new("sh")
        .args(["-c", "command -v nc"])
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false);
    assert!(
        found,
        "nc is not installed: run `make deps` (Debian package netcat-openbsd)"
    );
    Command::new("nc")
}

#[test]
fn printf_into_nc_with_half_close_prints_both_lines() {
    let _ = nc();
    let s = Server::with(&["--banner", "off"]);
    let port = s.addrs[0].port().to_string();
    let out = Command::new("sh")
        .args(["-c", &format!("printf 'a\\nb' | nc -N 127.0.0.1 {port}")])
        .output()
        .expect("run nc");
    assert!(
        out.status.success(),
        "nc failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(String::from_utf8_lossy(&out.stdout), "a\nb");
}

#[test]
fn an_nc_session_shows_the_banner_then_echoes_each_typed_line() {
    let s = Server::start(
        &["--port", "0", "--prefix", "one"],
        &[("NODE_NAME", "EchoNode"), ("POD_NAME", "tcp-echo-v1-abc")],
    );
    let mut child = nc()
        .args(["-N", "127.0.0.1", &s.addrs[0].port().to_string()])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("start nc");
    let mut stdin = child.stdin.take().unwrap();
    let mut screen = Screen::of(child.stdout.take().unwrap());
    let mut expect = |want: &str| screen.expect(want);
    expect("Welcome, you are connected to node EchoNode.\nRunning on Pod tcp-echo-v1-abc.\n");
    stdin.write_all(b"hello\n").unwrap();
    expect("one hello\n");
    stdin.write_all(b"world\n").unwrap();
    expect("one world\n");
    drop(stdin); // Ctrl-D: nc -N half-closes, the server closes, nc exits
    let mut status = None;
    wait_until("nc to exit", DEADLINE, || {
        status = child.try_wait().unwrap();
        status.is_some()
    });
    assert!(status.unwrap().success());
    let closed = s
        .log
        .wait_for("close", DEADLINE, |l| l.contains("TCP connection closed."));
    assert!(
        closed.contains("reason=EOF") && closed.contains("lines=2"),
        "{closed}"
    );
}
