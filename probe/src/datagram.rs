//! One probe datagram (`--udp`): from a socket of its own (a new source port, so that a load
//! balancer that hashes the flow may pick another backend), send the line, wait for the one
//! datagram that answers it. A datagram, or its answer, that does not come within
//! `--timeout` is lost ([`Kind::Lost`]); an ICMP "port unreachable" is a refusal.

use std::io::ErrorKind;
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr, UdpSocket};
use std::time::{Duration, Instant};

use crate::exchange::{echo_version, Answer, Failure, Kind, Target};

/// Room for the largest datagram and one byte more, to tell a truncated one.
const BUFFER: usize = 65_536;

/// Sends one datagram to `target` and reads its answer.
pub(crate) fn exchange(target: &Target<'_>) -> Result<Answer, Failure> {
    let timeout = target.timeout;
    let addr = *target
        .addrs
        .first()
        .ok_or_else(|| Failure::new(Kind::Error, "no address"))?;
    let start = Instant::now();
    let local: SocketAddr = match addr {
        SocketAddr::V4(_) => (Ipv4Addr::UNSPECIFIED, 0).into(),
        SocketAddr::V6(_) => (Ipv6Addr::UNSPECIFIED, 0).into(),
    };
    let error = |what: &str, e: std::io::Error| Failure::new(Kind::Error, format!("{what}: {e}"));
    let socket = UdpSocket::bind(local).map_err(|e| error("binding a UDP socket", e))?;
    // Connected: only datagrams from `addr` are received, and an ICMP error is reported.
    socket
        .connect(addr)
        .map_err(|e| error(&format!("UDP to {addr}"), e))?;
    let connect = start.elapsed();
    let line = format!("{}\n", target.text);
    let sent = Instant::now();
    socket
        .send(line.as_bytes())
        .map_err(|e| failure(&e, addr, timeout))?;
    let deadline = sent + timeout;
    let mut buf = vec![0u8; BUFFER];
    let n = loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(lost(timeout));
        }
        socket
            .set_read_timeout(Some(left))
            .map_err(|e| error("setting the timeout", e))?;
        match socket.recv(&mut buf) {
            Ok(n) => break n,
            Err(e) if e.kind() == ErrorKind::Interrupted => continue,
            Err(e) => return Err(failure(&e, addr, timeout)),
        }
    };
    let round_trip = sent.elapsed();
    let answer = String::from_utf8_lossy(&buf[..n]);
    let version = answer
        .strip_suffix('\n')
        .and_then(|l| echo_version(l, target.text))
        .ok_or_else(|| {
            Failure::new(
                Kind::WrongEcho,
                format!("wrong echo: {answer:?} for {:?}", target.text),
            )
        })?;
    Ok(Answer {
        version: version.to_string(),
        pod: None,
        connect,
        round_trip,
        tls: None,
    })
}

fn lost(timeout: Duration) -> Failure {
    Failure::new(
        Kind::Lost,
        format!(
            "no answer within {:.1}s: the datagram or its answer was lost",
            timeout.as_secs_f64()
        ),
    )
}

/// The kind of a failure to send or receive.
fn failure(e: &std::io::Error, addr: SocketAddr, timeout: Duration) -> Failure {
    match e.kind() {
        ErrorKind::WouldBlock | ErrorKind::TimedOut => lost(timeout),
        ErrorKind::ConnectionRefused => Failure::new(
            Kind::Refused,
            format!("nothing listens on UDP {addr} (port unreachable)"),
        ),
        _ => Failure::new(Kind::Error, format!("UDP to {addr}: {e}")),
    }
}
