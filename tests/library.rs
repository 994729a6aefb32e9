//! tcp-echo as a library: `Server::run` serves until a shutdown is requested, whether or not
//! the caller keeps a handle, and stops when one is requested.

mod support;

use std::time::Duration;

use support::{exchange, wait_until, DEADLINE};
use tcp_echo::{Config, Server};

fn server() -> Server {
    let config = Config::new(&[0])
        .and_then(|c| c.with_prefix("lib"))
        .expect("settings");
    Server::bind(config).expect("bind")
}

#[test]
fn run_serves_without_a_handle_kept_by_the_caller() {
    let server = server();
    let addr = server.local_addrs()[0];
    // The caller takes a handle and lets it go: nothing can stop the server, so it serves.
    drop(server.shutdown_handle());
    let running = std::thread::spawn(move || server.run());
    for i in 0..3 {
        let line = format!("{i}\n");
        assert_eq!(
            exchange(addr, line.as_bytes()),
            format!("lib {line}").as_bytes()
        );
    }
    assert!(
        !running.is_finished(),
        "run returned without a shutdown request"
    );
}

#[test]
fn run_returns_its_summary_once_a_shutdown_is_requested() {
    let server = server();
    let addr = server.local_addrs()[0];
    let stop = server.shutdown_handle();
    let running = std::thread::spawn(move || server.run());
    assert_eq!(exchange(addr, b"hello\n"), b"lib hello\n");
    stop.shutdown();
    wait_until("run to return", DEADLINE, || running.is_finished());
    let summary = running.join().unwrap().expect("run");
    assert_eq!((summary.served, summary.bytes, summary.forced), (1, 6, 0));
    // The listener is closed with it.
    assert!(std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(2)).is_err());
}
