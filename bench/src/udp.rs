//! UDP: the std `UdpSocket` peer and the load (ping-pong of datagrams).

use std::net::{SocketAddr, TcpListener, UdpSocket};
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;

/// The peer: one thread, `recv_from` then `send_to` of the prefix and the datagram. It also
/// listens on TCP on the same port (accepting nothing), as tcp-echo does with `--udp`, so that
/// the benchmark finds its port the same way.
pub fn peer(port: u16, prefix: &str) {
    let listener = TcpListener::bind(("127.0.0.1", port)).expect("bind TCP");
    let addr = listener.local_addr().expect("addr");
    let socket = UdpSocket::bind(addr).expect("bind UDP on the same port");
    eprintln!("listening on {addr}");
    let prefix = if prefix.is_empty() {
        Vec::new()
    } else {
        format!("{prefix} ").into_bytes()
    };
    let mut buf = vec![0u8; 65_536];
    let mut out = Vec::with_capacity(65_536);
    loop {
        let Ok((n, from)) = socket.recv_from(&mut buf) else {
            continue;
        };
        out.clear();
        out.extend_from_slice(&prefix);
        out.extend_from_slice(&buf[..n]);
        let _ = socket.send_to(&out, from);
    }
}

/// The result of a UDP ping-pong run.
pub struct PingPong {
    pub datagrams: u64,
    pub errors: u64,
    pub elapsed: Duration,
    pub latency: Histogram<u64>,
}

/// `clients` threads, each with a socket of its own, send a 64-byte datagram and wait for its
/// answer (at most 1 s; a lost or wrong answer is an error), for `dur`.
pub fn ping_pong(addr: SocketAddr, clients: usize, dur: Duration, prefix: &str) -> PingPong {
    let start = Instant::now();
    let deadline = start + dur;
    let handles: Vec<_> = (0..clients)
        .map(|i| {
            let prefix = prefix.to_string();
            std::thread::spawn(move || {
                let socket = UdpSocket::bind("127.0.0.1:0").expect("bind");
                socket.connect(addr).expect("connect");
                socket
                    .set_read_timeout(Some(Duration::from_secs(1)))
                    .expect("timeout");
                let line = crate::load::line(i, 64);
                let mut want = if prefix.is_empty() {
                    Vec::new()
                } else {
                    format!("{prefix} ").into_bytes()
                };
                want.extend_from_slice(&line);
                let mut buf = vec![0u8; 2048];
                let mut h =
                    Histogram::<u64>::new_with_bounds(1_000, 60_000_000_000, 3).expect("histogram");
                let (mut n, mut errors) = (0u64, 0u64);
                while Instant::now() < deadline {
                    let t = Instant::now();
                    if socket.send(&line).is_err() {
                        errors += 1;
                        continue;
                    }
                    match socket.recv(&mut buf) {
                        Ok(k) if buf[..k] == want[..] => {
                            n += 1;
                            let _ = h.record(t.elapsed().as_nanos() as u64);
                        }
                        _ => errors += 1,
                    }
                }
                (n, errors, h)
            })
        })
        .collect();
    let mut out = PingPong {
        datagrams: 0,
        errors: 0,
        elapsed: Duration::ZERO,
        latency: Histogram::new_with_bounds(1_000, 60_000_000_000, 3).expect("histogram"),
    };
    for h in handles {
        let (n, e, hist) = h.join().expect("client thread");
        out.datagrams += n;
        out.errors += e;
        let _ = out.latency.add(&hist);
    }
    out.elapsed = start.elapsed();
    out
}
